//! The gateway's server side: HTTP/1.1 connections from clients, each served by one task that
//! reads a request, sends it through the balanced stack, and writes the answer back, streaming
//! the backend's body as it comes.
//!
//! The request body is read whole before the request is forwarded (bounded by
//! [`GatewayConfig::max_body_bytes`](crate::app::GatewayConfig::max_body_bytes)), so that a retry
//! can send it again; the response body is passed on as it arrives, with its length when the
//! backend gave one, and chunked otherwise (or until the connection closes, for HTTP/1.0
//! clients). Requests pipelined on a connection are answered in order, each answer written before
//! the next request is forwarded.
//!
//! There is no idle timeout on client connections: like `axum::serve`, a connection stays open
//! until its client closes it or the server stops. The gateway's timeout runs until the response
//! head; a backend that stalls in the middle of a body holds its client's connection until one
//! of them closes it.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::pin,
    time::Duration,
};

use axum::http::{HeaderName, Method, Request, Response, StatusCode, Version};
use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tower::{Service, ServiceExt};

use crate::{
    app::{error_chain, status_for, GatewayService},
    http1::{
        self, put_content_length, Chunk, ChunkedDecoder, RequestBody, RequestContext,
        COPY_BODY_BELOW, READ_ROOM,
    },
    upstream::{set_worker, Outbound, Upstream, UpstreamBody},
};

/// After an answer that closes the connection early, how long the rest of the request is read
/// and dropped, so that the client reads the answer instead of a reset.
const LINGER: Duration = Duration::from_secs(1);
/// The most a lingering close reads.
const LINGER_BYTES: usize = 1 << 20;

/// The gateway's request handling, for [`Server`] and [`Workers`]: cheap to clone.
#[derive(Clone, Debug)]
pub struct Proxy {
    service: GatewayService,
    max_body_bytes: usize,
    /// The header holding the routing key, when the key is read from one.
    key_header: Option<HeaderName>,
}

impl Proxy {
    /// Forwards every request through `service`, refusing request bodies larger than
    /// `max_body_bytes`; `key_header` names the header that the balancer reads the routing key
    /// from, if it does.
    pub fn new(
        service: GatewayService,
        max_body_bytes: usize,
        key_header: Option<HeaderName>,
    ) -> Self {
        Self {
            service,
            max_body_bytes,
            key_header,
        }
    }
}

/// Why a connection ends early.
enum Stop {
    /// The client went away, or the connection failed: nothing more can be written.
    Gone,
    /// Answer with this status and message, then close.
    Answer(StatusCode, String),
}

impl From<io::Error> for Stop {
    fn from(_: io::Error) -> Self {
        Self::Gone
    }
}

/// One client connection.
struct Connection {
    stream: TcpStream,
    client_ip: String,
    proxy: Proxy,
    /// Signals the server's shutdown: idle connections close at once, busy ones after their
    /// answer.
    stop: watch::Receiver<bool>,
    read: BytesMut,
    write: Vec<u8>,
    /// The rewritten head of the request being forwarded.
    head: BytesMut,
}

impl Connection {
    fn new(stream: TcpStream, client: IpAddr, proxy: Proxy, stop: watch::Receiver<bool>) -> Self {
        Self {
            stream,
            client_ip: client.to_canonical().to_string(),
            proxy,
            stop,
            read: BytesMut::with_capacity(READ_ROOM),
            write: Vec::with_capacity(READ_ROOM),
            head: BytesMut::with_capacity(1024),
        }
    }

    fn stopping(&self) -> bool {
        // Changed means told to stop; an error, that the server is gone.
        self.stop.has_changed().unwrap_or(true)
    }

    async fn run(mut self) {
        let mut stopped = pin!({
            let mut stop = self.stop.clone();
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            }
        });
        loop {
            match self.serve_one(stopped.as_mut()).await {
                Ok(true) => {}
                Ok(false) | Err(Stop::Gone) => break,
                Err(Stop::Answer(status, message)) => {
                    self.write_error(status, &message, false);
                    if self.flush().await.is_ok() {
                        self.linger().await;
                    }
                    return;
                }
            }
        }
        if self.flush().await.is_ok() {
            let _ = self.stream.shutdown().await;
        }
    }

    /// Reads, forwards and answers one request: whether the connection goes on.
    async fn serve_one(
        &mut self,
        stopped: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<bool, Stop> {
        let Some(head) = self.read_head(stopped).await? else {
            return Ok(false);
        };
        if head.method == Method::CONNECT {
            // A reverse proxy for its own backends does not open tunnels to anywhere.
            let message = "CONNECT is not supported: this gateway is not a forward proxy";
            return Err(Stop::Answer(StatusCode::METHOD_NOT_ALLOWED, message.into()));
        }
        let body = self.read_body(&head).await?;
        let keep_alive = head.keep_alive;
        // The answer to a pipelined request before this one goes out now, not after this one's.
        self.flush().await?;

        if !matches!(head.body, RequestBody::None) {
            put_content_length(&mut self.head, body.len() as u64);
        }
        self.head.extend_from_slice(b"\r\n");
        let mut request = Request::new(Outbound {
            headers: self.head.split().freeze(),
            body,
        });
        *request.method_mut() = head.method;
        *request.uri_mut() = head.uri;
        if let (Some(name), Some(value)) = (&self.proxy.key_header, head.key) {
            request.headers_mut().insert(name.clone(), value);
        }

        let service = &mut self.proxy.service;
        let result = match service.ready().await {
            Ok(service) => service.call(request).await,
            Err(error) => Err(error),
        };
        let keep_alive = keep_alive && !self.stopping();
        match result {
            Ok(response) => {
                self.write_response(response, head.version, keep_alive)
                    .await
            }
            Err(error) => {
                self.write_error(status_for(&error), &error_chain(&*error), keep_alive);
                Ok(keep_alive)
            }
        }
    }

    /// The next request head: `None` when the client closed the connection between requests,
    /// or the server is stopping and the connection is idle.
    async fn read_head(
        &mut self,
        mut stopped: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<Option<http1::RequestHead>, Stop> {
        loop {
            if !self.read.is_empty() {
                let context = RequestContext {
                    client_ip: &self.client_ip,
                    key_header: self.proxy.key_header.as_ref(),
                };
                match http1::read_request_head(&mut self.read, &mut self.head, &context) {
                    Ok(Some(head)) => return Ok(Some(head)),
                    Ok(None) => {}
                    Err(error) => return Err(Stop::Answer(error.status, error.reason.into())),
                }
            }
            // Answers to pipelined requests go out before waiting for more.
            self.flush().await?;
            let idle = self.read.is_empty();
            if idle && self.stopping() {
                return Ok(None);
            }
            let read = http1::read_some(&self.stream, &mut self.read);
            let read = if idle {
                tokio::select! {
                    biased;
                    read = read => read?,
                    () = stopped.as_mut() => return Ok(None),
                }
            } else {
                read.await?
            };
            if read == 0 {
                // Closed between requests, or in the middle of a head: nothing to answer.
                return Ok(None);
            }
        }
    }

    async fn read_more(&mut self) -> Result<(), Stop> {
        match http1::read_some(&self.stream, &mut self.read).await? {
            0 => Err(Stop::Gone),
            _ => Ok(()),
        }
    }

    /// Reads the request's body whole, up to the limit.
    async fn read_body(&mut self, head: &http1::RequestHead) -> Result<Bytes, Stop> {
        let limit = self.proxy.max_body_bytes;
        let too_large = || {
            let message = format!("the request body is larger than {limit} bytes");
            Stop::Answer(StatusCode::PAYLOAD_TOO_LARGE, message)
        };
        let length = match head.body {
            RequestBody::None => return Ok(Bytes::new()),
            RequestBody::Length(length) if length > limit as u64 => return Err(too_large()),
            RequestBody::Length(length) => Some(length as usize),
            RequestBody::Chunked => None,
        };
        let mut continued = false;
        let mut send_continue = |connection: &mut Self| {
            if head.expect_continue && head.version == Version::HTTP_11 && !continued {
                continued = true;
                connection
                    .write
                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
        };
        if let Some(length) = length {
            if self.read.len() < length {
                send_continue(self);
                self.flush().await?;
                self.read.reserve(length - self.read.len());
                while self.read.len() < length {
                    self.read_more().await?;
                }
            }
            return Ok(self.read.split_to(length).freeze());
        }
        let mut decoder = ChunkedDecoder::default();
        let mut body = BytesMut::new();
        loop {
            let chunk = decoder
                .decode(&mut self.read)
                .map_err(|error| Stop::Answer(StatusCode::BAD_REQUEST, error.to_string()))?;
            match chunk {
                Some(Chunk::Data(data)) if body.len() + data.len() > limit => {
                    return Err(too_large())
                }
                Some(Chunk::Data(data)) => body.extend_from_slice(&data),
                Some(Chunk::End) => return Ok(body.freeze()),
                None => {
                    send_continue(self);
                    self.flush().await?;
                    self.read_more().await?;
                }
            }
        }
    }

    /// Writes a backend's answer, streaming its body: whether the connection goes on.
    async fn write_response(
        &mut self,
        response: Response<Upstream>,
        client: Version,
        mut keep_alive: bool,
    ) -> Result<bool, Stop> {
        let Upstream { head, body } = response.into_body();
        self.write.extend_from_slice(&head);
        let mut reader = match body {
            UpstreamBody::Empty => {
                self.end_head(keep_alive, client);
                return Ok(keep_alive);
            }
            UpstreamBody::Full(body) => {
                put_content_length(&mut self.write, body.len() as u64);
                self.end_head(keep_alive, client);
                if body.len() < COPY_BODY_BELOW {
                    self.write.extend_from_slice(&body);
                } else {
                    self.flush().await?;
                    self.stream.write_all(&body).await?;
                }
                return Ok(keep_alive);
            }
            UpstreamBody::Streaming(reader) => reader,
        };
        let chunked = match reader.length() {
            Some(length) => {
                put_content_length(&mut self.write, length);
                false
            }
            None if client == Version::HTTP_11 => {
                self.write
                    .extend_from_slice(b"transfer-encoding: chunked\r\n");
                true
            }
            None => {
                // An HTTP/1.0 client reads to the end of the connection.
                keep_alive = false;
                false
            }
        };
        self.end_head(keep_alive, client);
        loop {
            match reader.next().await {
                Ok(Some(data)) if chunked => http1::put_chunk(&mut self.write, &data),
                Ok(Some(data)) => self.write.extend_from_slice(&data),
                Ok(None) => break,
                // Cut short: closing without the end of the body tells the client so.
                Err(_) => {
                    self.flush().await?;
                    return Err(Stop::Gone);
                }
            }
            self.flush().await?;
        }
        if chunked {
            self.write.extend_from_slice(http1::LAST_CHUNK);
        }
        Ok(keep_alive)
    }

    /// Ends a response head with the connection's fate.
    fn end_head(&mut self, keep_alive: bool, client: Version) {
        if !keep_alive {
            self.write.extend_from_slice(b"connection: close\r\n");
        } else if client == Version::HTTP_10 {
            self.write.extend_from_slice(b"connection: keep-alive\r\n");
        }
        self.write.extend_from_slice(b"\r\n");
    }

    /// The gateway's own answer: `status: message`, as plain text.
    fn write_error(&mut self, status: StatusCode, message: &str, keep_alive: bool) {
        let body = format!("{status}: {message}\n");
        self.write.extend_from_slice(b"HTTP/1.1 ");
        self.write.extend_from_slice(status.as_str().as_bytes());
        self.write.push(b' ');
        self.write
            .extend_from_slice(status.canonical_reason().unwrap_or_default().as_bytes());
        self.write
            .extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\n");
        put_content_length(&mut self.write, body.len() as u64);
        self.end_head(keep_alive, Version::HTTP_11);
        self.write.extend_from_slice(body.as_bytes());
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.write.is_empty() {
            self.stream.write_all(&self.write).await?;
            self.write.clear();
        }
        Ok(())
    }

    /// Closes after an early answer: the write side first, then what the client still sends is
    /// read and dropped for a while, so that its unread bytes do not reset the connection before
    /// the client has read the answer.
    async fn linger(&mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let drain = async {
            let mut drained = 0;
            let mut scrap = [0; 8192];
            while drained < LINGER_BYTES {
                match self.stream.read(&mut scrap).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

/// Accepts connections on `listener` and serves each on a task of its own until `stop` says
/// so (or its sender is dropped); then closes the listener and waits for the connections to end.
async fn serve(listener: TcpListener, proxy: Proxy, stop: watch::Receiver<bool>) -> io::Result<()> {
    // Every connection task holds a sender: when all are dropped, every connection has ended.
    let (running, mut ended) = mpsc::channel::<()>(1);
    let mut stopped = stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let connection = Connection::new(stream, peer.ip(), proxy.clone(), stop.clone());
                let running = running.clone();
                tokio::spawn(async move {
                    connection.run().await;
                    drop(running);
                });
            }
            // Such as too many open files: wait for connections to close rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    drop(listener);
    drop(running);
    let _ = ended.recv().await;
    Ok(())
}

/// A running gateway server on the caller's tokio runtime, with graceful shutdown: the tests
/// serve the gateway with it (the example serves with [`Workers`]).
///
/// Dropping it starts the shutdown in the background; [`Server::stop`] waits for it.
#[derive(Debug)]
#[allow(dead_code)] // Used by the tests only.
pub struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
}

#[allow(dead_code)] // Used by the tests only.
impl Server {
    /// Binds `addr` (port 0 picks a free port) and serves `proxy` on it.
    pub async fn bind(addr: SocketAddr, proxy: Proxy) -> io::Result<Self> {
        Self::start(TcpListener::bind(addr).await?, proxy)
    }

    /// Serves `proxy` on `listener`.
    pub fn start(listener: TcpListener, proxy: Proxy) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(serve(listener, proxy, stop));
        Ok(Self {
            addr,
            shutdown,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections (the listener is closed, so new connections are refused),
    /// closes idle connections and waits for the requests in flight to be answered.
    pub async fn stop(self) -> io::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.map_err(io::Error::other)?
    }
}

/// The gateway served by worker threads, each with a single-threaded tokio runtime and a
/// listening socket of its own on the same address (`SO_REUSEPORT`: the kernel spreads the
/// connections over them), the way nginx's worker processes serve: a connection is read,
/// forwarded and answered on one thread, with that thread's own backend connections
/// ([`GatewayConfig::workers`](crate::app::GatewayConfig::workers)), so that no task moves
/// between threads and no thread wakes another. The balancer is one for all: the round-robin
/// cursor, the ejections and the statistics are shared.
///
/// Dropping it starts the shutdown in the background; [`Workers::stop`] waits for it.
#[derive(Debug)]
pub struct Workers {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<io::Result<()>>>,
}

impl Workers {
    /// Binds `addr` (port 0 picks a free port) once per worker and serves `proxy` on `workers`
    /// threads (at least 1). Must be called within a tokio runtime, which binds the sockets.
    pub fn start(addr: SocketAddr, proxy: Proxy, workers: usize) -> io::Result<Self> {
        let mut addr = addr;
        let mut listeners = Vec::new();
        for _ in 0..workers.max(1) {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseport(true)?;
            socket.set_nodelay(true)?;
            socket.bind(addr)?;
            let listener = socket.listen(1024)?;
            // The others bind the port the first one got.
            addr = listener.local_addr()?;
            listeners.push(listener.into_std()?);
        }
        let (shutdown, stop) = watch::channel(false);
        let mut threads = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let proxy = proxy.clone();
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("gateway-worker-{}", i + 1))
                .spawn(move || {
                    set_worker(i + 1);
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        serve(TcpListener::from_std(listener)?, proxy, stop).await
                    })
                })?;
            threads.push(thread);
        }
        Ok(Self {
            addr,
            shutdown,
            threads,
        })
    }

    /// The address they listen on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, closes idle connections and waits for the requests in
    /// flight to be answered, on every worker.
    pub async fn stop(self) -> io::Result<()> {
        let _ = self.shutdown.send(true);
        let threads = self.threads;
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                thread
                    .join()
                    .map_err(|_| io::Error::other("a gateway worker panicked"))??;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }
}
