//! The gateway's resource limits, each against a client or a backend that abuses it: slow
//! headers, idle connections, a descriptor limit, a client that never reads, a backend that
//! stalls, forged forwarding headers, requests nginx refuses, and a response with many headers.
//! Request body streaming and memory are in the `body_memory` test.

#[allow(dead_code)]
#[path = "../../gateway/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "../../gateway/backend.rs"]
mod backend;
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
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{body::Body, response::Response, Router};
use backend::{spawn_backend, BackendOptions};
use bytes::Bytes;
use config::{GatewayConfig, Target};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use server::{Limits, Server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Every test finishes well within this, or fails instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(90);

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test took too long")
}

/// Polls `condition` every 10 ms until it holds; panics after 60 s.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A gateway over `targets` with `config` and `limits`, on a free port of 127.0.0.1.
async fn gateway(targets: &[Target], config: GatewayConfig, limits: Limits) -> Server {
    let built = app::gateway(targets, &config).expect("a valid configuration");
    Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), built.service, limits)
        .await
        .expect("the gateway starts")
}

/// An axum router served on a free port of 127.0.0.1, as a backend named `name`.
async fn serve_router(name: &str, router: Router) -> Target {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = Target::new(name, listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    target
}

/// Writes `request` on a new connection and reads until the server closes it.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// Whether the peer has closed `stream` (or reset it): a read returns nothing more.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

/// Raises this process's soft descriptor limit to at least `wanted`, within the hard limit.
fn raise_descriptor_limit(wanted: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|current| current < wanted) {
        let hard = limit.maximum.unwrap_or(u64::MAX);
        assert!(
            hard >= wanted,
            "the hard descriptor limit {hard} is below {wanted}"
        );
        limit.current = Some(wanted);
        setrlimit(Resource::Nofile, limit).expect("the soft descriptor limit can be raised");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_dripping_a_header_are_closed_by_the_header_timeout() {
    bounded(async {
        raise_descriptor_limit(4096);
        let backend = spawn_backend("backend-1", BackendOptions::default())
            .await
            .unwrap();
        let limits = Limits {
            header_timeout: Duration::from_secs(1),
            ..Limits::default()
        };
        let gateway = gateway(&[backend.target()], GatewayConfig::default(), limits).await;
        let addr = gateway.addr();
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            clients.spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.write_all(b"GET /resize HTTP/1.1\r\n").await.unwrap();
                let started = Instant::now();
                // One byte of a header every 250 ms, for as long as the gateway listens.
                let mut buf = [0; 1024];
                loop {
                    tokio::select! {
                        read = stream.read(&mut buf) => match read {
                            Ok(0) | Err(_) => return started.elapsed(),
                            // Only a 408 or 400 may come back, then the close.
                            Ok(_) => {}
                        },
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {
                            if stream.write_all(b"X").await.is_err() {
                                return started.elapsed();
                            }
                        }
                    }
                }
            });
        }
        let mut closed = 0;
        while let Some(held) = clients.join_next().await {
            let held = held.unwrap();
            // Closed by the timeout, not by anything before it.
            assert!(held >= Duration::from_millis(900), "closed after {held:?}");
            closed += 1;
        }
        assert_eq!(closed, 1000);
        wait_until("the gateway holds no connection", || {
            gateway.connections() == 0
        })
        .await;
        // And it still serves.
        let answer = raw_exchange(
            addr,
            b"GET /resize HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    bounded(async {
        let backend = spawn_backend("backend-1", BackendOptions::default())
            .await
            .unwrap();
        let limits = Limits {
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let gateway = gateway(&[backend.target()], GatewayConfig::default(), limits).await;
        let addr = gateway.addr();
        // HTTP/1.1 keep-alive connections, each after one answered request.
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..200 {
            clients.spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream
                    .write_all(b"GET /resize HTTP/1.1\r\nHost: gateway\r\n\r\n")
                    .await
                    .unwrap();
                let mut head = Vec::new();
                let mut byte = [0; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    stream.read_exact(&mut byte).await.unwrap();
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap();
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                let mut body = vec![0; length];
                stream.read_exact(&mut body).await.unwrap();
                let idle = Instant::now();
                assert!(closed(&mut stream).await);
                idle.elapsed()
            });
        }
        // And an HTTP/2 connection, which hyper's header timeout does not cover; the client stays.
        let h2: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let response = h2
            .request(
                http::Request::get(format!("http://{addr}/resize"))
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        response.into_body().collect().await.unwrap();
        while let Some(held) = clients.join_next().await {
            assert!(held.unwrap() >= Duration::from_millis(250));
        }
        wait_until("the gateway holds no connection", || {
            gateway.connections() == 0
        })
        .await;
    })
    .await;
}

/// The child process of the descriptor-limit test: a gateway (default limits, so a connection
/// cap of half its descriptor limit) over the backend at `$LIMITS_CHILD_BACKEND`, serving until
/// its standard input closes. Not a test of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of at_the_descriptor_limit_a_new_request_is_answered_beside_1100_idle_connections"]
async fn descriptor_limited_gateway_child() {
    let Ok(url) = std::env::var("LIMITS_CHILD_BACKEND") else {
        panic!("run by the descriptor-limit test only");
    };
    let target = Target::from_url(&url).unwrap();
    let gateway = gateway(&[target], GatewayConfig::default(), Limits::default()).await;
    println!("listening {}", gateway.addr());
    let mut stdin = tokio::io::stdin();
    let mut buf = [0; 64];
    while !matches!(stdin.read(&mut buf).await, Ok(0) | Err(_)) {}
    gateway.stop().await.unwrap();
}

/// Kills the child process when dropped, so that a failing test leaks nothing.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_a_new_request_is_answered_beside_1100_idle_connections() {
    bounded(async {
        raise_descriptor_limit(4096);
        let backend = spawn_backend("backend-1", BackendOptions::default())
            .await
            .unwrap();
        // This test binary, with its descriptor limit at 1,024, runs the gateway.
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -n 1024 && exec "$0" "$@""#)
            .arg(std::env::current_exe().unwrap())
            .args([
                "descriptor_limited_gateway_child",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("LIMITS_CHILD_BACKEND", backend.target().url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh starts");
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let (found, listening) = tokio::sync::oneshot::channel();
        // Reads the child's output to its end, so that its test harness can write it all.
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening ") {
                    if let Some(found) = found.take() {
                        let _ = found.send(addr.parse::<SocketAddr>().unwrap());
                    }
                }
            }
        });
        let addr = listening.await.expect("the child gateway starts");

        let mut idle = Vec::new();
        for _ in 0..1100 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let answer = raw_exchange(
            addr,
            b"GET /resize HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("Request handled by: backend-1"), "{answer}");
        // The oldest idle connections made room.
        assert!(closed(&mut idle[0]).await);
        drop(idle);
        drop(child.0.stdin.take());
        let status = tokio::task::spawn_blocking(move || child.0.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status}");
    })
    .await;
}

/// A backend whose answer to every request streams `chunk` every 10 ms forever, or stalls after
/// the first one; `dropped` turns true when the gateway drops the stream.
async fn streaming_backend(stall: bool, dropped: Arc<AtomicBool>) -> Target {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let router = Router::new().fallback(move || {
        let flag = Flag(Arc::clone(&dropped));
        async move {
            let chunks = pieces(flag, stall);
            Response::new(Body::from_stream(chunks))
        }
    });
    serve_router("streaming", router).await
}

/// The stream of [`streaming_backend`]: 64 KiB pieces, holding `flag` until dropped.
fn pieces<F: Send + 'static>(
    flag: F,
    stall: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let chunk = Bytes::from(vec![b'x'; 64 << 10]);
    futures_util::stream::unfold((0_u64, flag), move |(sent, flag)| {
        let chunk = chunk.clone();
        async move {
            if sent > 0 {
                if stall {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Some((Ok(chunk), (sent + 1, flag)))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_hold_the_backend_past_the_send_timeout() {
    bounded(async {
        let dropped = Arc::new(AtomicBool::new(false));
        let backend = streaming_backend(false, Arc::clone(&dropped)).await;
        let limits = Limits {
            send_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let gateway = gateway(&[backend], GatewayConfig::default(), limits).await;
        let mut client = TcpStream::connect(gateway.addr()).await.unwrap();
        client
            .write_all(b"GET /stream HTTP/1.1\r\nHost: gateway\r\n\r\n")
            .await
            .unwrap();
        // The client never reads: the socket buffers fill, the gateway's writes wait, and the
        // send timeout closes the connection, dropping the backend's response.
        wait_until("the backend's response is dropped", || {
            dropped.load(Ordering::SeqCst)
        })
        .await;
        wait_until("the gateway holds no connection", || {
            gateway.connections() == 0
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stalls_mid_body_is_cut_by_the_body_timeout() {
    bounded(async {
        let dropped = Arc::new(AtomicBool::new(false));
        let backend = streaming_backend(true, Arc::clone(&dropped)).await;
        let config = GatewayConfig {
            body_timeout: Duration::from_millis(300),
            ..GatewayConfig::default()
        };
        let gateway = gateway(&[backend], config, Limits::default()).await;
        let answer = raw_exchange(
            gateway.addr(),
            b"GET /stream HTTP/1.1\r\nHost: gateway\r\n\r\n",
        )
        .await;
        // The head and the first piece came through, chunked, and then the connection was
        // closed without the last chunk: the client can tell the body is incomplete.
        assert!(answer.starts_with("HTTP/1.1 200"), "{}", &answer[..100]);
        assert!(answer.len() > 64 << 10);
        assert!(!answer.ends_with("0\r\n\r\n"));
        wait_until("the backend's response is dropped", || {
            dropped.load(Ordering::SeqCst)
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_request_body_gets_408_after_the_body_timeout() {
    bounded(async {
        let backend = spawn_backend("backend-1", BackendOptions::default())
            .await
            .unwrap();
        let config = GatewayConfig {
            body_timeout: Duration::from_millis(300),
            ..GatewayConfig::default()
        };
        let gateway = gateway(&[backend.target()], config, Limits::default()).await;
        // A small body, read whole before it is forwarded, and a large one, streamed: each
        // stops short of its length and stalls.
        for (length, sent) in [(10, 3), (1 << 20, 100 << 10)] {
            let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
            let head = format!(
                "POST /resize HTTP/1.1\r\nHost: gateway\r\nContent-Length: {length}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&vec![b'x'; sent]).await.unwrap();
            let mut answer = vec![0; 12];
            stream.read_exact(&mut answer).await.unwrap();
            assert_eq!(answer, b"HTTP/1.1 408", "{length}");
        }
    })
    .await;
}

/// What the embedded backend's `/headers` received, as `name: value` pairs.
fn received_headers(answer: &str) -> HashMap<String, String> {
    let body = answer.split_once("\r\n\r\n").expect("a response").1;
    body.lines()
        .skip(1)
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

#[tokio::test]
async fn forwarding_headers_from_the_client_are_replaced_not_passed_on() {
    bounded(async {
        let backend = spawn_backend("backend-1", BackendOptions::default())
            .await
            .unwrap();
        let gateway = gateway(
            &[backend.target()],
            GatewayConfig::default(),
            Limits::default(),
        )
        .await;
        let answer = raw_exchange(
            gateway.addr(),
            b"GET /headers HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\
              X-Forwarded-Proto: https\r\nX-Forwarded-Host: admin.internal\r\n\
              X-Forwarded-For: 10.9.8.7\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let received = received_headers(&answer);
        assert_eq!(received["x-forwarded-proto"], "http", "{answer}");
        assert_eq!(received["x-forwarded-host"], "shop.example", "{answer}");
        // Extended, as nginx's $proxy_add_x_forwarded_for does: the backend sees who connected.
        assert_eq!(
            received["x-forwarded-for"], "10.9.8.7, 127.0.0.1",
            "{answer}"
        );
        assert_eq!(received["host"], backend.addr().to_string(), "{answer}");
    })
    .await;
}

#[tokio::test]
async fn requests_nginx_refuses_are_refused_with_its_statuses() {
    bounded(async {
        let backend = spawn_backend("backend-1", BackendOptions::default())
            .await
            .unwrap();
        let gateway = gateway(
            &[backend.target()],
            GatewayConfig::default(),
            Limits::default(),
        )
        .await;
        let addr = gateway.addr();
        for (request, status) in [
            // HTTP/1.1 needs exactly one valid Host.
            (
                &b"GET /resize HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
                "400",
            ),
            (
                b"GET /resize HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
                "400",
            ),
            (
                b"GET /resize HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n",
                "400",
            ),
            // Transfer codings other than chunked alone.
            (
                b"POST /resize HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\
                  Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "501",
            ),
            // A chunked body on HTTP/1.0.
            (
                b"POST /resize HTTP/1.0\r\nHost: a\r\n\
                  Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "400",
            ),
        ] {
            let answer = raw_exchange(addr, request).await;
            let text = String::from_utf8_lossy(request);
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}"))
                    || answer.starts_with(&format!("HTTP/1.0 {status}")),
                "{text}\n=> {answer}"
            );
            assert!(
                !answer.contains("Request handled by"),
                "{text}\n=> {answer}"
            );
        }
        // HTTP/1.0 without Host is fine, as is HTTP/1.1 with one.
        for request in [
            &b"GET /resize HTTP/1.0\r\n\r\n"[..],
            b"GET /resize HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ] {
            let answer = raw_exchange(addr, request).await;
            assert!(answer.contains(" 200 OK\r\n"), "{answer}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_response_with_150_set_cookie_headers_is_relayed() {
    bounded(async {
        let router = Router::new().fallback(|| async {
            let mut response = Response::new(Body::from("cookies\n"));
            for i in 0..150 {
                let cookie = format!("c{i}={i}; Path=/").parse().unwrap();
                response
                    .headers_mut()
                    .append(http::header::SET_COOKIE, cookie);
            }
            response
        });
        let backend = serve_router("cookies", router).await;
        let gateway = gateway(&[backend], GatewayConfig::default(), Limits::default()).await;
        let answer = raw_exchange(
            gateway.addr(),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let cookies = answer
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie: "))
            .count();
        assert_eq!(cookies, 150, "{answer}");
    })
    .await;
}
