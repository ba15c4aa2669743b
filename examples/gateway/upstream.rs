//! The gateway's client side: one backend as an endpoint of the balanced set, speaking HTTP/1.1
//! over keep-alive connections that it keeps in pools of its own.
//!
//! An exchange runs inside the task of the request it serves: it takes an idle connection (or
//! makes one), writes the request, and reads the response head; the body is then read by that
//! same task as it writes the body to its client, and the connection goes back to the pool once
//! the body is over. No task or channel stands between a request and its backend connection.
//!
//! Each [`Workers`](crate::proxy::Workers) thread has a pool per backend of its own (the
//! connections are driven by its runtime); other threads share one more.

use std::{
    fmt, io,
    net::SocketAddr,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, Waker},
    time::Duration,
};

use axum::http::{Method, Request, Response};
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tower::Service;
use tower_lb::BoxError;

use crate::{
    app::{is_idempotent, BackendError, Failure, Target, UPSTREAM_HEADER},
    http1::{self, Chunk, ChunkedDecoder, ResponseBody, COPY_BODY_BELOW, READ_ROOM},
};

/// A request on its way to a backend: its head, less the request line and `Host`, already
/// rewritten (see [`http1::read_request_head`]) and ended by its blank line, and its body, read
/// whole. The method and target travel in the [`Request`] around it, with the routing key's
/// header if the key is read from one; clones share the bytes.
#[derive(Clone, Debug, Default)]
pub struct Outbound {
    /// Header lines, each `name: value\r\n`, then `\r\n`.
    pub headers: Bytes,
    /// The body.
    pub body: Bytes,
}

/// A backend's response, as its head and a body that may still be on its way.
#[derive(Debug)]
pub struct Upstream {
    /// The status line and the header lines for the client, without framing headers and without
    /// the blank line: the server adds those for its own connection.
    pub head: Bytes,
    /// The body.
    pub body: UpstreamBody,
}

/// A response body from a backend.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body: an answer to HEAD, a 204 or a 304.
    Empty,
    /// The whole body, read with the head.
    Full(Bytes),
    /// A body still being read from its connection.
    Streaming(BodyReader),
}

/// The most idle connections kept per backend in each pool; more are closed.
const MAX_IDLE: usize = 512;

/// One backend as an endpoint of the set. Cheap to clone: clones share the pools.
#[derive(Clone)]
pub struct HttpEndpoint {
    inner: Arc<Backend>,
}

struct Backend {
    key: Arc<str>,
    /// The backend's address, if its authority is an IP address and port; a name is resolved at
    /// every new connection.
    addr: Option<SocketAddr>,
    authority: String,
    /// `host: <authority>\r\n`.
    host_line: Bytes,
    /// `x-upstream: <key>\r\n`.
    upstream_line: Bytes,
    connect_timeout: Duration,
    /// Pool 0 for threads that are not workers, then one per worker.
    pools: Box<[Mutex<Vec<Connection>>]>,
}

/// A connection to a backend, with its buffers.
struct Connection {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
    head: BytesMut,
}

thread_local! {
    /// The number of the worker thread this is (from 1), 0 on other threads.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as worker `number` (from 1): its requests use the backend
/// connections of that worker's pools.
pub fn set_worker(number: usize) {
    WORKER.with(|worker| worker.set(number));
}

impl HttpEndpoint {
    /// An endpoint for `target`, whose connections must be made within `connect_timeout`, with a
    /// connection pool for each of `workers` worker threads and one for other threads.
    pub fn new(target: &Target, connect_timeout: Duration, workers: usize) -> Self {
        let authority = target.authority.to_string();
        let line = |name: &str, value: &str| Bytes::from(format!("{name}: {value}\r\n"));
        Self {
            inner: Arc::new(Backend {
                key: target.key.as_str().into(),
                addr: SocketAddr::from_str(&authority).ok(),
                host_line: line("host", &authority),
                upstream_line: line(UPSTREAM_HEADER, &target.key),
                authority,
                connect_timeout,
                pools: (0..=workers).map(|_| Mutex::default()).collect(),
            }),
        }
    }
}

impl fmt::Debug for HttpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("key", &self.inner.key)
            .field("authority", &self.inner.authority)
            .finish_non_exhaustive()
    }
}

impl Service<Request<Outbound>> for HttpEndpoint {
    type Response = Response<Upstream>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Upstream>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Always ready: a request waits for nothing but its own connection. Failing backends
        // are the balancer's to eject, from the outcomes of the requests.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Outbound>) -> Self::Future {
        Box::pin(Arc::clone(&self.inner).exchange(request))
    }
}

/// How an exchange on one connection failed.
struct ExchangeError {
    error: io::Error,
    /// Nothing came back before the failure.
    silent: bool,
}

impl From<io::Error> for ExchangeError {
    fn from(error: io::Error) -> Self {
        Self {
            error,
            silent: false,
        }
    }
}

impl Backend {
    fn pool(&self, slot: usize) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.pools[slot]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The pool of the calling thread.
    fn slot(&self) -> usize {
        let worker = WORKER.with(std::cell::Cell::get);
        if worker < self.pools.len() {
            worker
        } else {
            0
        }
    }

    /// The most recently used idle connection that the backend has not closed meanwhile.
    fn idle(&self, slot: usize) -> Option<Connection> {
        let mut pool = self.pool(slot);
        while let Some(connection) = pool.pop() {
            if !connection.closed_by_peer() {
                return Some(connection);
            }
        }
        None
    }

    fn put_back(&self, slot: usize, connection: Connection) {
        let mut pool = self.pool(slot);
        if pool.len() < MAX_IDLE {
            pool.push(connection);
        }
    }

    async fn connect(&self) -> io::Result<Connection> {
        let connect = async {
            match self.addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect(self.authority.as_str()).await,
            }
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            read: BytesMut::with_capacity(READ_ROOM),
            write: Vec::with_capacity(1024),
            head: BytesMut::with_capacity(1024),
        })
    }

    async fn exchange(
        self: Arc<Self>,
        request: Request<Outbound>,
    ) -> Result<Response<Upstream>, BoxError> {
        let slot = self.slot();
        loop {
            let (mut connection, reused) = match self.idle(slot) {
                Some(connection) => (connection, true),
                None => match self.connect().await {
                    Ok(connection) => (connection, false),
                    Err(error) => {
                        return Err(
                            BackendError::new(&self.key, Failure::Connect, error.into()).into()
                        )
                    }
                },
            };
            match connection.send(&self, &request).await {
                Ok(head) => return Ok(self.response(slot, connection, head)),
                // A kept-alive connection that the backend closed as it was taken, before the
                // request reached it (its close crossed the request): an idempotent request
                // goes again on another, as HTTP clients do. Other requests may have been acted
                // on, and fail.
                Err(failed) if reused && failed.silent && is_idempotent(request.method()) => {}
                Err(failed) => {
                    let error = failed.error.into();
                    return Err(BackendError::new(&self.key, Failure::Exchange, error).into());
                }
            }
        }
    }

    /// The response whose head was just read on `connection`, with its body: taken whole when it
    /// came with the head, in which case the connection goes back to the pool at once.
    fn response(
        self: Arc<Self>,
        slot: usize,
        mut connection: Connection,
        head: http1::ResponseHead,
    ) -> Response<Upstream> {
        connection.head.extend_from_slice(&self.upstream_line);
        let head_bytes = connection.head.split().freeze();
        let body = match head.body {
            ResponseBody::Empty => {
                self.finish(slot, connection, head.keep_alive);
                UpstreamBody::Empty
            }
            ResponseBody::Length(len) if len <= connection.read.len() as u64 => {
                let body = connection.read.split_to(len as usize).freeze();
                self.finish(slot, connection, head.keep_alive);
                UpstreamBody::Full(body)
            }
            framing => UpstreamBody::Streaming(BodyReader {
                connection: Some(connection),
                framing: match framing {
                    ResponseBody::Length(len) => Framing::Length(len),
                    ResponseBody::Chunked => Framing::Chunked(ChunkedDecoder::default()),
                    _ => Framing::Close,
                },
                keep_alive: head.keep_alive,
                backend: self,
                slot,
            }),
        };
        let mut response = Response::new(Upstream {
            head: head_bytes,
            body,
        });
        *response.status_mut() = head.status;
        response
    }

    /// Puts `connection` back in its pool if it can carry another request: kept alive, and with
    /// nothing unread (a backend that sent more than its response is not trusted again).
    fn finish(&self, slot: usize, connection: Connection, keep_alive: bool) {
        if keep_alive && connection.read.is_empty() {
            self.put_back(slot, connection);
        }
    }
}

impl Connection {
    /// Whether the backend closed the connection while it was idle, or sent something unasked:
    /// seen by the runtime's event loop, without a system call. An idle connection is not
    /// readable ([`http1::read_some`] marks it so once its response is read), so readiness means
    /// that the backend wrote or closed meanwhile; either way the connection is not used again.
    fn closed_by_peer(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.stream.poll_read_ready(&mut cx).is_ready()
    }

    /// Writes the request and reads the response head.
    async fn send(
        &mut self,
        backend: &Backend,
        request: &Request<Outbound>,
    ) -> Result<http1::ResponseHead, ExchangeError> {
        let write = &mut self.write;
        write.clear();
        write.extend_from_slice(request.method().as_str().as_bytes());
        write.push(b' ');
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str());
        write.extend_from_slice(target.as_bytes());
        write.extend_from_slice(b" HTTP/1.1\r\n");
        write.extend_from_slice(&backend.host_line);
        let outbound = request.body();
        write.extend_from_slice(&outbound.headers);
        let body_apart = outbound.body.len() >= COPY_BODY_BELOW;
        if !body_apart {
            write.extend_from_slice(&outbound.body);
        }
        let silent = |error| ExchangeError {
            error,
            silent: true,
        };
        self.stream.write_all(write).await.map_err(silent)?;
        if body_apart {
            self.stream
                .write_all(&outbound.body)
                .await
                .map_err(silent)?;
        }

        let head_request = request.method() == Method::HEAD;
        loop {
            if let Some(head) =
                http1::read_response_head(&mut self.read, &mut self.head, head_request)?
            {
                return Ok(head);
            }
            let nothing_yet = self.read.is_empty();
            match self.fill().await {
                Ok(0) => {
                    let error = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection before the response head",
                    );
                    return Err(ExchangeError {
                        error,
                        silent: nothing_yet,
                    });
                }
                Ok(_) => {}
                Err(error) => {
                    return Err(ExchangeError {
                        error,
                        silent: nothing_yet,
                    })
                }
            }
        }
    }

    /// Reads what the backend sent next into the read buffer: 0 at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        http1::read_some(&self.stream, &mut self.read).await
    }
}

/// A response body still being read from its backend connection, which goes back to its pool
/// once the body is over (if it can be kept alive). Dropped before the end, it closes the
/// connection.
pub struct BodyReader {
    connection: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
    backend: Arc<Backend>,
    slot: usize,
}

enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

impl fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyReader")
            .field("backend", &self.backend.key)
            .field("length", &self.length())
            .finish_non_exhaustive()
    }
}

impl BodyReader {
    /// The length of what is left of the body, when the backend said it (`Content-Length`).
    pub fn length(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(len) => Some(len),
            _ => None,
        }
    }

    /// The next piece of the body, as the backend sends it; `None` at its end. An error means
    /// that the body was cut short.
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            let Some(connection) = &mut self.connection else {
                return Ok(None);
            };
            let data = match &mut self.framing {
                Framing::Length(0) => None,
                Framing::Length(left) if !connection.read.is_empty() => {
                    let take = connection
                        .read
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    Some(connection.read.split_to(take).freeze())
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut connection.read)? {
                    Some(Chunk::Data(data)) => Some(data),
                    Some(Chunk::End) => None,
                    None => {
                        self.read_more(false).await?;
                        continue;
                    }
                },
                Framing::Close if !connection.read.is_empty() => {
                    Some(connection.read.split().freeze())
                }
                Framing::Length(_) => {
                    self.read_more(false).await?;
                    continue;
                }
                Framing::Close => {
                    if self.read_more(true).await? {
                        continue;
                    }
                    None
                }
            };
            if data.is_none() {
                if let Some(connection) = self.connection.take() {
                    self.backend.finish(self.slot, connection, self.keep_alive);
                }
            }
            return Ok(data);
        }
    }

    /// Reads more of the body: false at the end of the stream, which is an error unless the
    /// body ends there.
    async fn read_more(&mut self, may_end: bool) -> io::Result<bool> {
        let Some(connection) = &mut self.connection else {
            return Ok(false);
        };
        if connection.fill().await? > 0 {
            return Ok(true);
        }
        self.connection = None;
        if may_end {
            Ok(false)
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backend closed the connection in the middle of the body",
            ))
        }
    }
}
