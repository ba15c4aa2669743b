//! Request bodies are streamed through the gateway, not buffered whole: 64 clients each stalling
//! one byte short of the body cap leave the process's heap flat. A test binary of its own, so
//! that its counting allocator sees this test alone.

#[allow(dead_code)]
#[path = "../../gateway/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "../../gateway/body.rs"]
mod body;
#[allow(dead_code)]
#[path = "../../gateway/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../../gateway/server.rs"]
mod server;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{body::Body, extract::Request, Router};
use config::{GatewayConfig, Target};
use futures_util::StreamExt;
use server::{Limits, Server};
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout goes to the system allocator unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CLIENTS: usize = 64;
/// The gateway's body cap, its default: buffered whole, 64 bodies would take 512 MiB.
const CAP: usize = config::MAX_BODY_BYTES;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_one_byte_short_of_the_cap_leave_the_heap_flat() {
    tokio::time::timeout(Duration::from_secs(120), async {
        // A backend that reads every body as it comes and keeps nothing.
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        let router = Router::new().fallback(move |request: Request| {
            let counter = Arc::clone(&counter);
            async move {
                let mut body = request.into_body().into_data_stream();
                while let Some(Ok(piece)) = body.next().await {
                    counter.fetch_add(piece.len() as u64, Ordering::Relaxed);
                }
                Body::empty()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Target::new("sink", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let built = app::gateway(&[backend], &GatewayConfig::default()).unwrap();
        let gateway = Server::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            built.service,
            Limits::default(),
        )
        .await
        .unwrap();

        let before = LIVE.load(Ordering::Relaxed);
        let piece = vec![b'x'; 64 << 10];
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
            let head =
                format!("POST /upload HTTP/1.1\r\nHost: gateway\r\nContent-Length: {CAP}\r\n\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            let piece = piece.clone();
            clients.push(tokio::spawn(async move {
                let mut left = CAP - 1;
                while left > 0 {
                    let n = left.min(piece.len());
                    stream.write_all(&piece[..n]).await.unwrap();
                    left -= n;
                }
                // Stalled, one byte short: the connection stays open.
                stream
            }));
        }
        let mut streams = Vec::new();
        for client in clients {
            streams.push(client.await.unwrap());
        }
        // Every byte sent reached the backend while the uploads are still open.
        let all = (CLIENTS * (CAP - 1)) as u64;
        let started = Instant::now();
        while received.load(Ordering::Relaxed) < all {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the backend received {} of {all} bytes",
                received.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let grown = LIVE.load(Ordering::Relaxed).saturating_sub(before);
        println!(
            "{CLIENTS} uploads of {} MiB stalled one byte short: heap grew {:.1} MiB",
            CAP >> 20,
            grown as f64 / (1 << 20) as f64
        );
        // Buffers per connection (hyper's, the sockets'), not bodies: a whole body is 8 MiB.
        assert!(
            grown < 64 << 20,
            "the heap grew {grown} bytes for {CLIENTS} stalled uploads"
        );
        drop(streams);
        gateway.stop().await.unwrap();
    })
    .await
    .expect("the test took too long");
}
