//! The gateway's server side: hyper-util's automatic connection builder (HTTP/1.1, and HTTP/2
//! with prior knowledge, h2c), with the limits nginx holds a client to, and graceful shutdown.
//!
//! | limit | default | how |
//! |---|---|---|
//! | a request head must arrive within | 60 s (nginx's `client_header_timeout`) | hyper's `header_read_timeout`; it also runs while an HTTP/1.1 connection waits for its next request |
//! | a connection with no request in flight is closed after | 75 s (nginx's `keepalive_timeout`) | a timer per connection, then hyper's graceful shutdown; also covers HTTP/2 and a client that sends nothing |
//! | a write to a client that stops reading fails after | 60 s (nginx's `send_timeout`) | `tokio-io-timeout`'s write timeout on the socket; the response, and the backend connection it holds, are dropped |
//! | open client connections | half the descriptor limit (the other half for backend connections) | at the cap, each new connection closes the oldest idle one (the oldest one, if none is idle), gracefully, as nginx reuses keep-alive connections when it runs short |
//! | request bodies, a backend's response bodies | 8 MiB, 60 s between pieces | tower-http's body limit and body timeouts, in [`crate::app`] |
//! | request head | 100 headers, 64 KiB | hyper's header count and read buffer size: 431 beyond |
//!
//! A descriptor shortage at `accept` closes the oldest idle connection too, and waits a moment
//! instead of spinning.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    pin::pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, Notify},
    task::{JoinHandle, JoinSet},
};
use tokio_io_timeout::TimeoutStream;
use tower::{service_fn, ServiceExt};

use crate::app::{ClientAddr, GatewayService};

/// What the server holds its clients to; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Limits {
    /// The longest wait for a whole request head.
    pub header_timeout: Duration,
    /// How long a connection may stay with no request in flight.
    pub idle_timeout: Duration,
    /// How long a write to a client may wait.
    pub send_timeout: Duration,
    /// Open client connections at most.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(),
        }
    }
}

/// Half the process's descriptor limit, leaving the other half for backend connections,
/// listeners and files.
pub fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024);
    usize::try_from(limit / 2).unwrap_or(usize::MAX).max(1)
}

/// A running gateway server, on the caller's tokio runtime.
///
/// Dropping it shuts down in the background; [`Server::stop`] waits for the shutdown.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    registry: Arc<Registry>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and serves `service` on it.
    pub async fn bind(
        addr: SocketAddr,
        service: GatewayService,
        limits: Limits,
    ) -> io::Result<Self> {
        Self::start(TcpListener::bind(addr).await?, service, limits)
    }

    /// Serves `service` on `listener`.
    pub fn start(
        listener: TcpListener,
        service: GatewayService,
        limits: Limits,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        let registry = Arc::new(Registry::default());
        let task = tokio::spawn(serve(
            listener,
            service,
            limits,
            stop,
            Arc::clone(&registry),
        ));
        Ok(Self {
            addr,
            shutdown,
            registry,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Client connections open now.
    #[allow(dead_code)] // Used by the tests.
    pub fn connections(&self) -> usize {
        self.registry.open.load(Ordering::Relaxed)
    }

    /// Stops accepting (new connections are refused), closes idle connections, and waits for
    /// the requests in flight to be answered.
    pub async fn stop(self) -> io::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.map_err(io::Error::other)
    }
}

async fn serve(
    listener: TcpListener,
    service: GatewayService,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    registry: Arc<Registry>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // A connection's read buffer, which bounds a request head too: 64 KiB rather than
        // hyper's 400 KiB, as nginx reads heads into 32 KiB and bodies into 16 KiB.
        .max_buf_size(64 << 10);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut connections = JoinSet::new();
    let stopping = stop.clone();
    loop {
        tokio::select! {
            // Told to stop, or the handle is gone.
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if registry.open.load(Ordering::Relaxed) >= limits.max_connections {
                        registry.close_oldest();
                    }
                    let connection = registry.open();
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        service.clone(),
                        Arc::clone(&builder),
                        connection,
                        limits.clone(),
                        stopping.clone(),
                    ));
                }
                // Out of descriptors, most likely: make room rather than spin.
                Err(_) => {
                    registry.close_oldest();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Closing the listener refuses new connections from now on.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until it ends, closing it gracefully when it has been idle too long,
/// when the registry makes room, or when the server stops.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: GatewayService,
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<Connection>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(limits.send_timeout));
    let io = TokioIo::new(Box::pin(stream));
    let per_request = Arc::clone(&state);
    let service = service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ClientAddr(peer));
        // Counted until the response body is done or dropped.
        let busy = Busy::new(&per_request);
        let response = service.clone().oneshot(request);
        async move {
            let response = response.await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _busy = &busy;
                    frame
                }))
            }))
        }
    });
    let mut connection = pin!(builder.serve_connection(io, TowerToHyperService::new(service)));
    let (mut closing, mut shut) = (false, false);
    // A connection told to close gets the send timeout to finish: a peer that never lets it
    // (an HTTP/2 client that does not answer the shutdown's ping) is dropped then.
    let mut grace = pin!(tokio::time::sleep(limits.send_timeout));
    loop {
        // Idle long enough: no request in flight for the whole timeout.
        let idle = async {
            if state.in_flight.load(Ordering::Acquire) > 0 {
                state.went_idle.notified().await;
                return false;
            }
            let until = state.idle_until(limits.idle_timeout);
            tokio::time::sleep_until(until.into()).await;
            state.in_flight.load(Ordering::Acquire) == 0
                && state.idle_until(limits.idle_timeout) <= Instant::now()
        };
        tokio::select! {
            _ = connection.as_mut() => break,
            _ = grace.as_mut(), if closing => break,
            _ = state.close.notified(), if !closing => closing = true,
            _ = stop.wait_for(|stop| *stop), if !closing => closing = true,
            idle = idle, if !closing => closing = idle,
        }
        if closing && !shut {
            shut = true;
            connection.as_mut().graceful_shutdown();
            grace
                .as_mut()
                .reset((Instant::now() + limits.send_timeout).into());
        }
    }
    state.closed();
}

/// The open connections, oldest first, for the cap.
#[derive(Debug, Default)]
struct Registry {
    next_id: AtomicU64,
    open: AtomicUsize,
    connections: Mutex<BTreeMap<u64, Arc<Connection>>>,
}

impl Registry {
    fn open(self: &Arc<Self>) -> Arc<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            id,
            registry: Arc::clone(self),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            closing: AtomicBool::new(false),
            close: Notify::new(),
            went_idle: Notify::new(),
        });
        self.lock().insert(id, Arc::clone(&connection));
        self.open.fetch_add(1, Ordering::Relaxed);
        connection
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the oldest idle connection (or the oldest, if none is idle) to close, gracefully.
    fn close_oldest(&self) {
        let connections = self.lock();
        let open = || {
            connections
                .values()
                .filter(|c| !c.closing.load(Ordering::Relaxed))
        };
        let oldest = open()
            .find(|c| c.in_flight.load(Ordering::Acquire) == 0)
            .or_else(|| open().next());
        if let Some(connection) = oldest {
            connection.closing.store(true, Ordering::Relaxed);
            // Stored if the task is not waiting yet.
            connection.close.notify_one();
        }
    }
}

/// One open connection's state.
#[derive(Debug)]
struct Connection {
    id: u64,
    registry: Arc<Registry>,
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    closing: AtomicBool,
    close: Notify,
    /// The last request in flight ended.
    went_idle: Notify,
}

impl Connection {
    /// When the connection will have been idle for `timeout`, if nothing starts meanwhile.
    fn idle_until(&self, timeout: Duration) -> Instant {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            + timeout
    }

    fn closed(&self) {
        self.registry.lock().remove(&self.id);
        self.registry.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight on a connection, until dropped.
struct Busy(Arc<Connection>);

impl Busy {
    fn new(connection: &Arc<Connection>) -> Self {
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(connection))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
            self.0.went_idle.notify_one();
        }
    }
}
