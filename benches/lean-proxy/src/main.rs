//! A minimal HTTP/1.1 reverse proxy over tower-lb, the end-to-end reference for the gateway
//! example: what proxying costs per request without hyper's and axum's machinery.
//!
//! Worker threads (`--workers`, default 2), each with a current-thread tokio runtime and its own
//! `SO_REUSEPORT` listener; request heads parsed with httparse; each worker keeps a stack of idle
//! keep-alive connections per backend and drives them inside the connection's task (no task or
//! channel per backend connection). Backends are picked round robin by one shared tower-lb
//! `Balance`. Modes:
//!
//! - `raw`: bytes forwarded as read; the balancer only names the backend;
//! - `timer`: `raw` with a `tokio::time::timeout` around each exchange;
//! - `typed`: an `http::Request<Bytes>` per request through `tower::timeout` and `BalanceLayer`
//!   to an endpoint service that does the exchange (the gateway's shape, without its retries,
//!   header rewriting and outlier detection).
//!
//! It is a measurement tool, not a product: Content-Length request bodies only (chunked ones get
//! 501), no 1xx interim responses, no header rewriting. `scripts/bench-e2e.sh` runs it beside the
//! gateway and nginx with `LEAN=1`; BENCHMARKS.md has the figures.
//!
//! usage: tower-lb-lean-proxy [--workers N] [--mode raw|timer|typed] [--listen ADDR] BACKEND...

use std::{
    cell::RefCell,
    convert::Infallible,
    future::{ready, Future, Ready},
    io,
    net::SocketAddr,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower::{timeout::Timeout, ServiceBuilder, ServiceExt};
use tower_lb::{strategy::RoundRobin, Balance, BalanceLayer, Endpoints};
use tower_service::Service;

const MAX_HEADERS: usize = 64;
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Raw,
    Timer,
    Typed,
}

// ---------------------------------------------------------------- endpoint services

/// Raw modes: an endpoint is just its index.
#[derive(Clone)]
struct Pick(usize);

impl Service<()> for Pick {
    type Response = usize;
    type Error = Infallible;
    type Future = Ready<Result<usize, Infallible>>;
    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    #[inline]
    fn call(&mut self, _: ()) -> Self::Future {
        ready(Ok(self.0))
    }
}

type RawBalance = Balance<RoundRobin, String, Pick>;

/// Typed mode: an endpoint that performs the exchange on the current worker's pool.
#[derive(Clone)]
struct Backend(usize);

type BoxFut<T> = Pin<Box<dyn Future<Output = T>>>;

impl Service<http::Request<Bytes>> for Backend {
    type Response = http::Response<Bytes>;
    type Error = io::Error;
    type Future = BoxFut<io::Result<http::Response<Bytes>>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<Bytes>) -> Self::Future {
        let idx = self.0;
        Box::pin(async move {
            let w = WORKER.with(|w| w.borrow().clone()).expect("worker");
            typed_exchange(&w, idx, req).await
        })
    }
}

type TypedStack = Timeout<Balance<RoundRobin, String, Backend>>;

// ---------------------------------------------------------------- worker state

struct Worker {
    backends: Vec<SocketAddr>,
    idle: Vec<RefCell<Vec<TcpStream>>>,
    mode: Mode,
}

thread_local! {
    static WORKER: RefCell<Option<Rc<Worker>>> = const { RefCell::new(None) };
}

impl Worker {
    async fn take(&self, idx: usize) -> io::Result<(TcpStream, bool)> {
        if let Some(s) = self.idle[idx].borrow_mut().pop() {
            return Ok((s, true));
        }
        let s = TcpStream::connect(self.backends[idx]).await?;
        s.set_nodelay(true)?;
        Ok((s, false))
    }
    fn put(&self, idx: usize, s: TcpStream) {
        let mut v = self.idle[idx].borrow_mut();
        if v.len() < 1024 {
            v.push(s);
        }
    }
}

// ---------------------------------------------------------------- main

fn main() {
    let mut workers = 2usize;
    let mut mode = Mode::Raw;
    let mut listen: SocketAddr = "127.0.0.1:18090".parse().unwrap();
    let mut backends = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workers" => workers = args.next().unwrap().parse().unwrap(),
            "--listen" => listen = args.next().unwrap().parse().unwrap(),
            "--mode" => {
                mode = match args.next().unwrap().as_str() {
                    "raw" => Mode::Raw,
                    "timer" => Mode::Timer,
                    "typed" => Mode::Typed,
                    m => panic!("unknown mode {m}"),
                }
            }
            b => backends.push(
                b.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse::<SocketAddr>()
                    .unwrap(),
            ),
        }
    }
    assert!(!backends.is_empty(), "no backends");
    let raw_eps: Endpoints<String, Pick> = Endpoints::from_iter(
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.to_string(), Pick(i))),
    );
    let typed_eps: Endpoints<String, Backend> = Endpoints::from_iter(
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.to_string(), Backend(i))),
    );
    // One balancer (one shared rotation) for all workers; each worker/connection holds a clone.
    let raw_bal: RawBalance = Balance::new(RoundRobin::new(), raw_eps);
    let typed_stack: TypedStack = ServiceBuilder::new()
        .timeout(TIMEOUT)
        .layer(BalanceLayer::new(RoundRobin::new()))
        .service(typed_eps);

    let mut threads = Vec::new();
    for _ in 0..workers {
        let backends = backends.clone();
        let raw_bal = raw_bal.clone();
        let typed_stack = typed_stack.clone();
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let w = Rc::new(Worker {
                    idle: backends.iter().map(|_| RefCell::new(Vec::new())).collect(),
                    backends,
                    mode,
                });
                WORKER.with(|c| *c.borrow_mut() = Some(w.clone()));
                let listener = bind(listen).unwrap();
                loop {
                    let (c, _) = match listener.accept().await {
                        Ok(x) => x,
                        Err(e) => {
                            eprintln!("accept: {e}");
                            continue;
                        }
                    };
                    let _ = c.set_nodelay(true);
                    let w = w.clone();
                    if mode == Mode::Typed {
                        tokio::task::spawn_local(conn_typed(c, w, typed_stack.clone()));
                    } else {
                        tokio::task::spawn_local(conn_raw(c, w, raw_bal.clone()));
                    }
                }
            });
        }));
    }
    eprintln!(
        "lean-proxy listening on http://{listen} ({workers} workers, {} backends)",
        raw_bal.endpoints().len()
    );
    for t in threads {
        t.join().unwrap();
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

// ---------------------------------------------------------------- request head analysis

struct ReqInfo {
    head_len: usize,
    body_len: usize,
    close: bool,
    head_method: bool,
}

enum Parsed {
    Req(ReqInfo),
    Partial,
    Bad(&'static [u8]),
}

fn eq_ic(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

fn has_token(v: &[u8], tok: &str) -> bool {
    v.split(|&c| c == b',').any(|t| eq_ic(t.trim_ascii(), tok))
}

fn parse_cl(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 {
        return None;
    }
    let mut n = 0usize;
    for &c in v {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (c - b'0') as usize;
    }
    Some(n)
}

fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => {
            return Parsed::Bad(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
        }
    };
    let mut close = req.version == Some(0);
    let mut body_len = 0;
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if eq_ic(n, "content-length") {
            match parse_cl(h.value) {
                Some(l) => body_len = l,
                None => return Parsed::Bad(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                ),
            }
        } else if eq_ic(n, "transfer-encoding") {
            return Parsed::Bad(
                b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        } else if eq_ic(n, "connection") {
            if has_token(h.value, "close") {
                close = true;
            } else if has_token(h.value, "keep-alive") {
                close = false;
            }
        }
    }
    Parsed::Req(ReqInfo {
        head_len,
        body_len,
        close,
        head_method: req.method == Some("HEAD"),
    })
}

// ---------------------------------------------------------------- response reading

struct RespInfo {
    head_len: usize,
    body: RespBody,
    close: bool,
}

enum RespBody {
    Len(usize),
    Chunked,
    Eof,
}

fn parse_response(buf: &[u8], head_method: bool) -> io::Result<Option<RespInfo>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    let code = resp.code.unwrap_or(0);
    let mut close = resp.version == Some(0);
    let mut body = RespBody::Eof;
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        if eq_ic(n, "content-length") {
            if !matches!(body, RespBody::Chunked) {
                body = RespBody::Len(
                    parse_cl(h.value).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?,
                );
            }
        } else if eq_ic(n, "transfer-encoding") {
            if has_token(h.value, "chunked") {
                body = RespBody::Chunked;
            }
        } else if eq_ic(n, "connection") {
            if has_token(h.value, "close") {
                close = true;
            } else if has_token(h.value, "keep-alive") {
                close = false;
            }
        }
    }
    if head_method || code == 204 || code == 304 || (100..200).contains(&code) {
        // 1xx interim responses are not supported here; treat as bodyless.
        body = RespBody::Len(0);
    }
    Ok(Some(RespInfo {
        head_len,
        body,
        close,
    }))
}

/// Scans a chunked body in `b` starting at `pos`; returns the end offset once the terminating
/// chunk and trailers are complete, or the position to resume from.
fn scan_chunked(b: &[u8], mut pos: usize) -> io::Result<Result<usize, usize>> {
    loop {
        let line_end = match b[pos..].windows(2).position(|w| w == b"\r\n") {
            Some(i) => pos + i,
            None => return Ok(Err(pos)),
        };
        let line = &b[pos..line_end];
        let hex = line.split(|&c| c == b';').next().unwrap().trim_ascii();
        let size = usize::from_str_radix(std::str::from_utf8(hex).map_err(|_| bad())?, 16)
            .map_err(|_| bad())?;
        if size == 0 {
            // trailers: lines until an empty one
            let mut p = line_end + 2;
            loop {
                match b[p..].windows(2).position(|w| w == b"\r\n") {
                    Some(0) => return Ok(Ok(p + 2)),
                    Some(i) => p += i + 2,
                    None => return Ok(Err(pos)),
                }
            }
        }
        let next = line_end + 2 + size + 2;
        if b.len() < next {
            return Ok(Err(pos));
        }
        pos = next;
    }
}

fn bad() -> io::Error {
    io::ErrorKind::InvalidData.into()
}

/// Sends `req` (head and body bytes) to backend `idx` and appends the whole response to `out`.
/// Returns the response's `close` flag.
async fn exchange(
    w: &Worker,
    idx: usize,
    req: &[u8],
    head_method: bool,
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    let start = out.len();
    for attempt in 0..2 {
        let (mut s, reused) = w.take(idx).await?;
        out.truncate(start);
        match exchange_on(&mut s, req, head_method, out, start).await {
            Ok((reusable, close)) => {
                if reusable {
                    w.put(idx, s);
                }
                return Ok(close);
            }
            // A pooled connection the backend closed meanwhile: retry once on a new one.
            Err(e) if reused && attempt == 0 && out.len() == start => {
                let _ = e;
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!()
}

async fn exchange_on(
    s: &mut TcpStream,
    req: &[u8],
    head_method: bool,
    out: &mut Vec<u8>,
    start: usize,
) -> io::Result<(bool, bool)> {
    s.write_all(req).await?;
    let info = loop {
        out.reserve(4096);
        if s.read_buf(out).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(i) = parse_response(&out[start..], head_method)? {
            break i;
        }
    };
    let body_start = start + info.head_len;
    match info.body {
        RespBody::Len(n) => {
            let end = body_start + n;
            while out.len() < end {
                out.reserve((end - out.len()).min(65536));
                if s.read_buf(out).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            let extra = out.len() > end;
            out.truncate(end);
            Ok((!info.close && !extra, info.close))
        }
        RespBody::Chunked => {
            let mut pos = body_start;
            loop {
                match scan_chunked(out, pos)? {
                    Ok(end) => {
                        let extra = out.len() > end;
                        out.truncate(end);
                        return Ok((!info.close && !extra, info.close));
                    }
                    Err(p) => pos = p,
                }
                out.reserve(8192);
                if s.read_buf(out).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        RespBody::Eof => {
            // Body delimited by close: read to EOF; the client connection must close too.
            loop {
                out.reserve(8192);
                if s.read_buf(out).await? == 0 {
                    return Ok((false, true));
                }
            }
        }
    }
}

// ---------------------------------------------------------------- raw connection loop

/// What a failed exchange is answered with: 504 if it timed out, 502 otherwise.
fn failure_response(timed_out: bool) -> &'static [u8] {
    if timed_out {
        TIMED_OUT
    } else {
        BAD_GATEWAY
    }
}

/// Writes the responses gathered in `out`, then, unless the connection is `done`, reads more of
/// it into `buf`: false when the connection is over.
async fn flush_and_read(
    c: &mut TcpStream,
    out: &mut Vec<u8>,
    buf: &mut BytesMut,
    done: bool,
) -> bool {
    if !out.is_empty() {
        if c.write_all(out).await.is_err() {
            return false;
        }
        out.clear();
    }
    if done {
        return false;
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(8192);
    }
    matches!(c.read_buf(buf).await, Ok(n) if n > 0)
}

const BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const TIMED_OUT: &[u8] =
    b"HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

async fn conn_raw(mut c: TcpStream, w: Rc<Worker>, mut bal: RawBalance) {
    let mut buf = BytesMut::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // Handle every complete request in the buffer (pipelining), batching the responses.
        let mut done = false;
        loop {
            let info = match parse_request(&buf) {
                Parsed::Req(i) => i,
                Parsed::Partial => break,
                Parsed::Bad(resp) => {
                    out.extend_from_slice(resp);
                    done = true;
                    break;
                }
            };
            let total = info.head_len + info.body_len;
            if buf.len() < total {
                break; // body incomplete
            }
            // Pick the backend through tower-lb.
            let idx = match pick(&mut bal).await {
                Some(i) => i,
                None => {
                    out.extend_from_slice(BAD_GATEWAY);
                    done = true;
                    break;
                }
            };
            let r = if w.mode == Mode::Timer {
                match tokio::time::timeout(
                    TIMEOUT,
                    exchange(&w, idx, &buf[..total], info.head_method, &mut out),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(io::ErrorKind::TimedOut.into()),
                }
            } else {
                exchange(&w, idx, &buf[..total], info.head_method, &mut out).await
            };
            buf.advance(total);
            match r {
                Ok(backend_close) => {
                    if info.close || backend_close {
                        done = true;
                        break;
                    }
                }
                Err(e) => {
                    out.extend_from_slice(failure_response(e.kind() == io::ErrorKind::TimedOut));
                    done = true;
                    break;
                }
            }
        }
        if !flush_and_read(&mut c, &mut out, &mut buf, done).await {
            return;
        }
    }
}

#[inline]
async fn pick(bal: &mut RawBalance) -> Option<usize> {
    std::future::poll_fn(|cx| bal.poll_ready(cx)).await.ok()?;
    bal.call(()).await.ok()
}

// ---------------------------------------------------------------- typed connection loop

async fn conn_typed(mut c: TcpStream, _w: Rc<Worker>, mut svc: TypedStack) {
    let mut buf = BytesMut::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let mut done = false;
        loop {
            let (req, close) = match build_request(&mut buf) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(resp) => {
                    out.extend_from_slice(resp);
                    done = true;
                    break;
                }
            };
            let r = match svc.ready().await {
                Ok(s) => s.call(req).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(resp) => {
                    let backend_close = resp
                        .headers()
                        .get_all(http::header::CONNECTION)
                        .iter()
                        .any(|v| has_token(v.as_bytes(), "close"));
                    write_response(&resp, &mut out);
                    if close || backend_close {
                        done = true;
                        break;
                    }
                }
                Err(e) => {
                    out.extend_from_slice(failure_response(
                        e.is::<tower::timeout::error::Elapsed>(),
                    ));
                    done = true;
                    break;
                }
            }
        }
        if !flush_and_read(&mut c, &mut out, &mut buf, done).await {
            return;
        }
    }
}

/// Parses one complete request off the front of `buf` into an `http::Request<Bytes>`.
fn build_request(
    buf: &mut BytesMut,
) -> Result<Option<(http::Request<Bytes>, bool)>, &'static [u8]> {
    let info = match parse_request(buf) {
        Parsed::Req(i) => i,
        Parsed::Partial => return Ok(None),
        Parsed::Bad(r) => return Err(r),
    };
    if buf.len() < info.head_len + info.body_len {
        return Ok(None);
    }
    let head = buf.split_to(info.head_len).freeze();
    let body = buf.split_to(info.body_len).freeze();
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    const BAD: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    req.parse(&head).map_err(|_| BAD)?;
    let mut b = http::Request::builder()
        .method(http::Method::from_bytes(req.method.unwrap().as_bytes()).map_err(|_| BAD)?)
        .uri(
            http::Uri::from_maybe_shared(head.slice_ref(req.path.unwrap().as_bytes()))
                .map_err(|_| BAD)?,
        )
        .version(version(req.version));
    append_headers(b.headers_mut().unwrap(), req.headers, &head).ok_or(BAD)?;
    let r = b.body(body).map_err(|_| BAD)?;
    Ok(Some((r, info.close)))
}

/// The version httparse read: minor version 0 is HTTP/1.0, anything else HTTP/1.1.
fn version(minor: Option<u8>) -> http::Version {
    if minor == Some(0) {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    }
}

/// Appends the headers httparse read to `map`, their values sharing `src`, the buffer they were
/// parsed from: `None` if a name or value is not valid.
fn append_headers(
    map: &mut http::HeaderMap,
    headers: &[httparse::Header<'_>],
    src: &Bytes,
) -> Option<()> {
    map.reserve(headers.len());
    for h in headers {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_maybe_shared(src.slice_ref(h.value)).ok()?;
        map.append(name, value);
    }
    Some(())
}

/// The header lines, the blank line and the body of a message being written.
fn put_headers_and_body(headers: &http::HeaderMap, body: &[u8], out: &mut Vec<u8>) {
    for (n, v) in headers {
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

fn write_request(req: &http::Request<Bytes>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .as_bytes(),
    );
    out.extend_from_slice(if req.version() == http::Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    put_headers_and_body(req.headers(), req.body(), out);
}

fn write_response(resp: &http::Response<Bytes>, out: &mut Vec<u8>) {
    out.extend_from_slice(if resp.version() == http::Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(resp.status().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.status().canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    put_headers_and_body(resp.headers(), resp.body(), out);
}

/// The typed endpoint's work: serialize, exchange raw bytes, parse into `http::Response<Bytes>`.
async fn typed_exchange(
    w: &Worker,
    idx: usize,
    req: http::Request<Bytes>,
) -> io::Result<http::Response<Bytes>> {
    let head_method = req.method() == http::Method::HEAD;
    let mut wire = Vec::with_capacity(256 + req.body().len());
    write_request(&req, &mut wire);
    drop(req);
    let mut raw = Vec::with_capacity(4096);
    exchange(w, idx, &wire, head_method, &mut raw).await?;
    let raw = Bytes::from(raw);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&raw).map_err(|_| bad())? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Err(bad()),
    };
    let mut b = http::Response::builder()
        .status(resp.code.unwrap_or(502))
        .version(version(resp.version));
    append_headers(b.headers_mut().unwrap(), resp.headers, &raw).ok_or_else(bad)?;
    b.body(raw.slice(head_len..)).map_err(|_| bad())
}
