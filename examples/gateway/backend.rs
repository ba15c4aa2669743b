//! The embedded backends: small HTTP servers on 127.0.0.1 that stand in for the instances of an
//! image-processing service.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    pin::pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::{JoinHandle, JoinSet},
};
use tower::ServiceExt;

use crate::config::{Target, MAX_BODY_BYTES};

/// The request header that a backend copies into its answer, so that a client can match answers
/// to requests.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How an embedded backend behaves.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Rounds of crc32 over the request body for every request: the simulated image processing.
    pub work_rounds: u32,
    /// Extra time taken by every request, to play a slow or overloaded instance. It can be
    /// changed while the backend runs, with [`Backend::set_delay`].
    pub delay: Duration,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            work_rounds: 256,
            delay: Duration::ZERO,
        }
    }
}

/// A running embedded backend.
///
/// Dropping it starts a graceful shutdown in the background; [`Backend::stop`] waits for it, and
/// [`Backend::kill`] stops it abruptly instead, as a crash would.
#[derive(Debug)]
pub struct Backend {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    command: watch::Sender<Command>,
    task: JoinHandle<Ended>,
}

/// What [`Backend::kill`] cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Killed {
    /// Connections that were open, or made and waiting to be accepted, when the backend stopped
    /// accepting: all closed by the kill. Each carried at most one request (HTTP/1.1, without
    /// pipelining): no more requests than this can have been lost.
    pub connections: usize,
    /// Requests that the backend had started to handle and never answered.
    pub requests: usize,
}

impl Backend {
    /// The backend's name, which it puts in every answer (`Request handled by: backend-1`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gateway's view of this backend: its name is its endpoint key.
    ///
    /// Names, not addresses, key the embedded backends so that the hash strategies map request
    /// keys the same way in every run, whatever ephemeral ports the backends got.
    pub fn target(&self) -> Target {
        Target::new(self.name.clone(), self.addr())
    }

    /// Makes every request that starts from now on take `delay` longer (replacing the delay of
    /// [`BackendOptions::delay`]); requests already waiting keep their delay.
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Stops accepting connections, closes the idle ones, and waits for the requests in flight.
    ///
    /// Once this returns, connecting to the backend's address is refused.
    pub async fn stop(self) -> io::Result<()> {
        // A send fails only if the task has ended, which it does only when told to.
        let _ = self.command.send(Command::Stop);
        self.task.await.map(drop).map_err(io::Error::other)
    }
}

/// Fault injection and counters, for tests that play a failing or slow instance; the example
/// itself never kills a backend.
#[allow(dead_code)]
impl Backend {
    /// The extra time every request takes now.
    pub fn delay(&self) -> Duration {
        self.shared.delay()
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Stops the backend as a crash would: the listener and every connection are closed at once,
    /// requests in flight are dropped unanswered. Returns what was cut short.
    ///
    /// Once this returns, connecting to the backend's address is refused, and the address can be
    /// bound again with [`spawn_backend_on`].
    pub async fn kill(self) -> io::Result<Killed> {
        let _ = self.command.send(Command::Kill);
        match self.task.await.map_err(io::Error::other)? {
            Ended::Killed(killed) => Ok(killed),
            Ended::Stopped => unreachable!("a backend stops only when told to"),
        }
    }
}

/// Starts a backend named `name` on an ephemeral port of 127.0.0.1.
///
/// It answers every path with the result of "resizing" the request body, except `/headers`,
/// which lists the request headers it received (as httpbin's `/headers` does) and answers with a
/// few hop-by-hop headers that a proxy must not pass on. Answers carry the request's
/// [`REQUEST_ID_HEADER`], if it has one.
pub async fn spawn_backend(name: &str, options: BackendOptions) -> io::Result<Backend> {
    spawn_backend_on(name, options, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
}

/// Starts a backend named `name` on `addr` (port 0 picks a free port), as [`spawn_backend`] does.
///
/// The address may be one that a backend just stopped or was killed on, such as a backend's
/// [`addr`](Backend::addr), to restart it where its clients expect it: the listener is bound
/// with `SO_REUSEADDR`, so the closed connections lingering in `TIME_WAIT` do not hold the port.
pub async fn spawn_backend_on(
    name: &str,
    options: BackendOptions,
    addr: SocketAddr,
) -> io::Result<Backend> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        name: name.to_owned(),
        work_rounds: options.work_rounds,
        delay_nanos: AtomicU64::new(0),
        served: AtomicU64::new(0),
        open_connections: AtomicUsize::new(0),
        abandoned: AtomicUsize::new(0),
    });
    let router = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&shared));
    let (command, commands) = watch::channel(Command::Serve);
    let task = tokio::spawn(serve(listener, router, commands, Arc::clone(&shared)));
    let backend = Backend {
        name: name.to_owned(),
        addr,
        shared,
        command,
        task,
    };
    backend.set_delay(options.delay);
    Ok(backend)
}

/// What the serving task is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Serve,
    /// Graceful: stop accepting, let the requests in flight finish.
    Stop,
    /// Abrupt: stop accepting, close every connection now.
    Kill,
}

/// How the serving task ended.
#[derive(Debug)]
enum Ended {
    Stopped,
    Killed(Killed),
}

/// State shared by the backend handle, its serving task and its request handler.
#[derive(Debug)]
struct Shared {
    name: String,
    work_rounds: u32,
    delay_nanos: AtomicU64,
    served: AtomicU64,
    open_connections: AtomicUsize,
    /// Requests whose handling started and was dropped before an answer.
    abandoned: AtomicUsize,
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed))
    }
}

/// Accepts connections and serves each on its own task until told to stop or to die. A dropped
/// [`Backend`] stops gracefully.
async fn serve(
    listener: TcpListener,
    router: Router,
    mut commands: watch::Receiver<Command>,
    shared: Arc<Shared>,
) -> Ended {
    let mut connections = JoinSet::new();
    let command = loop {
        tokio::select! {
            changed = commands.changed() => {
                let command = match changed {
                    Ok(()) => *commands.borrow_and_update(),
                    Err(_) => Command::Stop,
                };
                if command != Command::Serve {
                    break command;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let open = Open::new(&shared);
                    let connection = serve_connection(stream, router.clone(), commands.clone());
                    connections.spawn(async move {
                        let _open = open;
                        connection.await;
                    });
                }
                // Such as too many open files: wait for connections to close rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    if command == Command::Kill {
        // Connections made but not yet accepted are closed and counted with the others.
        let waiting = close_listener(listener);
        let open = shared.open_connections.load(Ordering::SeqCst) + waiting;
        let abandoned_before = shared.abandoned.load(Ordering::SeqCst);
        // Aborting a connection's task drops its socket and the handler of its request.
        connections.shutdown().await;
        return Ended::Killed(Killed {
            connections: open,
            requests: shared.abandoned.load(Ordering::SeqCst) - abandoned_before,
        });
    }
    // Closing the listener refuses new connections from now on.
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ended::Stopped
}

/// Closes `listener` after accepting, and closing at once, the connections waiting in its
/// queue; returns how many there were.
fn close_listener(listener: TcpListener) -> usize {
    // The std listener is non-blocking: `accept` fails once the queue is empty.
    match listener.into_std() {
        Ok(listener) => std::iter::from_fn(|| listener.accept().ok()).count(),
        Err(_) => 0,
    }
}

/// Serves HTTP/1.1 or h2c on one connection until the client closes it, or until a graceful stop is
/// commanded (or the [`Backend`] dropped), after which it finishes the request in flight.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    mut commands: watch::Receiver<Command>,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        router.clone().oneshot(request.map(Body::new))
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No timer is given, so no header timeout (hyper's default of 30 s would warn without one).
    builder.http1().header_read_timeout(None);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = commands.wait_for(|command| *command == Command::Stop) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Counts an open connection until dropped.
struct Open(Arc<Shared>);

impl Open {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.open_connections.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(shared))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a request as abandoned if dropped before [`Handling::answered`].
struct Handling<'a>(Option<&'a Shared>);

impl Handling<'_> {
    fn answered(mut self) {
        if let Some(shared) = self.0.take() {
            shared.served.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0 {
            shared.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn handle(State(state): State<Arc<Shared>>, request: Request) -> Response {
    let handling = Handling(Some(&state));
    let request_id = request.headers().get(REQUEST_ID_HEADER).cloned();
    let mut response = answer(&state, request).await;
    if let Some(id) = request_id {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    handling.answered();
    response
}

async fn answer(state: &Shared, request: Request) -> Response {
    let delay = state.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if request.uri().path() == "/headers" {
        return echo_headers(&state.name, request.headers());
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    };
    let rounds = state.work_rounds;
    // CPU-bound work goes to the blocking pool, as real image processing should, so that it
    // does not hold up the other connections served by this worker thread.
    let digest = {
        let body = body.clone();
        tokio::task::spawn_blocking(move || work(&body, rounds))
            .await
            .unwrap_or_default()
    };
    // A 4:1 "thumbnail"; only its size is reported.
    let thumbnail = body.len().div_ceil(4);
    format!(
        "Request handled by: {}\nresized {} bytes to {thumbnail} bytes, crc32 {digest:08x} after {} rounds\n",
        state.name,
        body.len(),
        rounds,
    )
    .into_response()
}

/// The simulated processing: `rounds` chained crc32s of the body.
fn work(body: &[u8], rounds: u32) -> u32 {
    (0..rounds).fold(0, |digest, _| {
        let mut hasher = crc32fast::Hasher::new_with_initial(digest);
        hasher.update(body);
        hasher.finalize()
    })
}

/// Lists the headers received, one `name: value` a line, and answers with hop-by-hop headers
/// (`Connection` naming `x-backend-hop`, `Keep-Alive`, `Proxy-Authenticate`) beside an
/// end-to-end one (`x-backend-kept`), so that tests can check what a proxy passes on.
fn echo_headers(name: &str, headers: &HeaderMap) -> Response {
    let mut listing = format!("Request handled by: {name}\n");
    for (header, value) in headers {
        listing += &format!("{header}: {}\n", String::from_utf8_lossy(value.as_bytes()));
    }
    let mut response = Response::new(Body::from(listing));
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        HeaderValue::from_static("x-backend-hop"),
    );
    headers.insert("x-backend-hop", HeaderValue::from_static("1"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"backend\""),
    );
    headers.insert("x-backend-kept", HeaderValue::from_static("1"));
    response
}
