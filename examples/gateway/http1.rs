//! HTTP/1.1 on the wire, for the gateway's own engine: request and response heads read with
//! httparse and rewritten for the next hop in the same pass, and the chunked transfer coding.
//!
//! Heads are not turned into header maps: a proxy passes most headers on untouched, so they are
//! copied as lines (in their order, with their case), and only the few a proxy must act on are
//! looked at: the message's framing, `Connection` and the headers it names, the other hop-by-hop
//! headers, `Host`, `Expect` and the `x-forwarded-*` headers.

use std::{io, mem::MaybeUninit, ops::Range};

use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::{io::Interest, net::TcpStream};

/// Reads what `stream` has into `buf`, with at least half of [`READ_ROOM`] free for it: 0 at the
/// end of the stream.
///
/// A read that leaves room in the buffer has taken everything the socket held, so the socket is
/// then marked not readable, as nginx does: the next read waits for the event loop to say that
/// more came, instead of trying a read that would only find the socket empty (one system call
/// saved per read, two per proxied request). The mark is dropped if the event loop saw new data
/// since the read began, so no wake-up is lost.
pub async fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_ROOM / 2 {
        buf.reserve(READ_ROOM / 2);
    }
    loop {
        std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
        let mut read = 0;
        let result = stream.try_io(Interest::READABLE, || {
            let room = buf.capacity() - buf.len();
            read = stream.try_read_buf(buf)?;
            if read > 0 && read < room {
                // Drained: clears the readiness seen before the read, and only that.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(read)
            }
        });
        match result {
            Ok(read) => return Ok(read),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock && read > 0 => return Ok(read),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
}

/// The room a connection's read buffer starts with.
pub const READ_ROOM: usize = 8 * 1024;
/// Bodies below this size are copied beside their head and written with it in one go; larger
/// ones are written apart, without a copy.
pub const COPY_BODY_BELOW: usize = 16 * 1024;

/// The most header lines a head may have; more is answered 431.
pub const MAX_HEADERS: usize = 100;
/// The largest head accepted, request or response; larger is answered 431 (or fails the
/// exchange, for a response).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// No body.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request head read off a client connection, its headers already rewritten for the backend.
#[derive(Debug)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The request target in origin form (`/path?query`), whatever form the client used.
    pub uri: Uri,
    /// The client's HTTP version.
    pub version: Version,
    /// How the body that follows is delimited.
    pub body: RequestBody,
    /// Whether the client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
    /// The value of the routing key's header, when the key is read from one.
    pub key: Option<HeaderValue>,
}

/// A request head that cannot be served, with the status that says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadError {
    /// 400, 431 or 501.
    pub status: StatusCode,
    /// What was wrong, for the answer's body.
    pub reason: &'static str,
}

impl HeadError {
    const fn bad(reason: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason,
        }
    }
}

/// What [`read_request_head`] needs besides the bytes.
#[derive(Debug)]
pub struct RequestContext<'a> {
    /// The client's address, as appended to `x-forwarded-for`.
    pub client_ip: &'a str,
    /// The header holding the routing key, if the key is read from a header.
    pub key_header: Option<&'a HeaderName>,
}

/// The headers a proxy acts on, by what it does with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    ContentLength,
    TransferEncoding,
    Connection,
    Host,
    Expect,
    ForwardedFor,
    ForwardedHost,
    ForwardedProto,
    /// Hop-by-hop (RFC 9110, 7.6.1), plus the non-standard `Proxy-Connection`: dropped.
    HopByHop,
    Other,
}

/// Sorts a header name, by its length first so that most names cost one comparison or none.
fn classify(name: &[u8]) -> Name {
    let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
    match name.len() {
        2 if is("te") => Name::HopByHop,
        4 if is("host") => Name::Host,
        6 if is("expect") => Name::Expect,
        7 if is("trailer") || is("upgrade") => Name::HopByHop,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::HopByHop,
        14 if is("content-length") => Name::ContentLength,
        15 if is("x-forwarded-for") => Name::ForwardedFor,
        16 if is("x-forwarded-host") => Name::ForwardedHost,
        16 if is("proxy-connection") => Name::HopByHop,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        17 if is("x-forwarded-proto") => Name::ForwardedProto,
        18 if is("proxy-authenticate") => Name::HopByHop,
        19 if is("proxy-authorization") => Name::HopByHop,
        _ => Name::Other,
    }
}

/// The comma-separated elements of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&c| c == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// `Content-Length`: decimal digits only (no sign, no spaces inside), at most 18 of them.
fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 {
        return None;
    }
    value.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

/// What a `Connection` header says: `close`, `keep-alive`, and the other headers it names,
/// which are hop-by-hop for this message.
#[derive(Default)]
struct ConnectionTokens<'a> {
    close: bool,
    keep_alive: bool,
    named: Vec<&'a [u8]>,
}

impl<'a> ConnectionTokens<'a> {
    fn add(&mut self, value: &'a [u8]) {
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                self.named.push(token);
            }
        }
    }

    fn names(&self, name: &[u8]) -> bool {
        !self.named.is_empty() && self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// What a head's headers say about how its body is framed and whether its connection lasts.
#[derive(Default)]
struct Framing<'a> {
    length: Option<u64>,
    /// Whether the last transfer coding is chunked, if there is one.
    chunked: Option<bool>,
    connection: ConnectionTokens<'a>,
}

impl<'a> Framing<'a> {
    /// Takes in a header of the kind `name`; an error says what is wrong with its value.
    fn add(&mut self, name: Name, value: &'a [u8]) -> Result<(), &'static str> {
        match name {
            Name::ContentLength => {
                let len = parse_length(value).ok_or("Content-Length is not a number")?;
                if self.length.is_some_and(|earlier| earlier != len) {
                    return Err("two different Content-Length headers");
                }
                self.length = Some(len);
            }
            Name::TransferEncoding => {
                // Only the last coding counts, and it must be chunked.
                let last = tokens(value).last().unwrap_or_default();
                self.chunked =
                    Some(self.chunked.unwrap_or(true) && last.eq_ignore_ascii_case(b"chunked"));
            }
            Name::Connection => self.connection.add(value),
            _ => {}
        }
        Ok(())
    }

    /// Whether the connection may carry another message after this one, in `version`.
    fn keep_alive(&self, version: Version) -> bool {
        match version {
            Version::HTTP_10 => self.connection.keep_alive && !self.connection.close,
            _ => !self.connection.close,
        }
    }
}

/// Appends `name: value\r\n`.
fn put_line(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Appends a `content-length` line for `length`.
pub fn put_content_length(out: &mut impl BufMut, length: u64) {
    out.put_slice(b"content-length: ");
    put_decimal(out, length);
    out.put_slice(b"\r\n");
}

/// Appends `n` in decimal.
fn put_decimal(out: &mut impl BufMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

/// Where `part` (a slice of `whole`) lies in it.
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

fn version(minor: Option<u8>) -> Version {
    if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    }
}

/// Reads a request head off the front of `buf`: `Ok(None)` while it is incomplete, else the head,
/// removed from `buf`, with the header lines to forward appended to `out`.
///
/// What goes to `out`: every header but the hop-by-hop ones (and those `Connection` names),
/// `Host` (the backend gets its own), the framing headers (the body is sent with a length of its
/// own) and `Expect` (the body is read before forwarding); then `x-forwarded-for` with the client
/// appended, and `x-forwarded-host` (the client's `Host`) and `x-forwarded-proto` unless the
/// client sent them. The caller adds the length and the blank line that ends the head.
///
/// Rejected, with the status to answer: what httparse cannot read (400), too many headers (431),
/// a bad or ambiguous length (400: two different `Content-Length`s, or one beside
/// `Transfer-Encoding`, the request smuggling cases) and a transfer coding other than chunked
/// (501).
pub fn read_request_head(
    buf: &mut BytesMut,
    out: &mut BytesMut,
    context: &RequestContext<'_>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let too_large = HeadError {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        reason: "the request head is too large",
    };
    let head_len = match request.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => return Err(too_large),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                reason: "too many header lines",
            })
        }
        Err(_) => return Err(HeadError::bad("not an HTTP/1.x request head")),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(too_large);
    }
    let method = match request.method.unwrap_or_default() {
        "GET" => Method::GET,
        "POST" => Method::POST,
        other => Method::from_bytes(other.as_bytes())
            .map_err(|_| HeadError::bad("not a valid method"))?,
    };
    let target = range_in(buf, request.path.unwrap_or_default().as_bytes());
    let version = version(request.version);

    // First pass: what the message says about itself.
    let mut names = [Name::Other; MAX_HEADERS];
    let mut framing = Framing::default();
    let mut expect_continue = false;
    let mut host = None;
    let mut forwarded_for: Option<&[u8]> = None;
    let mut forwarded_host = false;
    let mut forwarded_proto = false;
    let mut key = None;
    for (header, kind) in request.headers.iter().zip(&mut names) {
        let name = header.name.as_bytes();
        *kind = classify(name);
        framing.add(*kind, header.value).map_err(HeadError::bad)?;
        match *kind {
            Name::Expect => {
                expect_continue |= header
                    .value
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue")
            }
            Name::Host => host = host.or(Some(header.value)),
            // Several lines are one list; only the first is kept, with the client appended.
            Name::ForwardedFor => forwarded_for = forwarded_for.or(Some(header.value)),
            Name::ForwardedHost => forwarded_host = true,
            Name::ForwardedProto => forwarded_proto = true,
            _ => {}
        }
        if key.is_none()
            && context
                .key_header
                .is_some_and(|k| k.as_str().as_bytes().eq_ignore_ascii_case(name))
        {
            key = Some(range_in(buf, header.value));
        }
    }
    let body = match (framing.chunked, framing.length) {
        (Some(_), Some(_)) => {
            return Err(HeadError::bad(
                "both Content-Length and Transfer-Encoding: the length is ambiguous",
            ))
        }
        (Some(true), None) => RequestBody::Chunked,
        (Some(false), None) => {
            return Err(HeadError {
                status: StatusCode::NOT_IMPLEMENTED,
                reason: "only the chunked transfer coding is supported",
            })
        }
        (None, Some(len)) => RequestBody::Length(len),
        (None, None) => RequestBody::None,
    };
    let keep_alive = framing.keep_alive(version);

    // Second pass: the lines to forward.
    for (header, kind) in request.headers.iter().zip(names) {
        let name = header.name.as_bytes();
        let forward = matches!(
            kind,
            Name::Other | Name::ForwardedHost | Name::ForwardedProto
        );
        if forward && !framing.connection.names(name) {
            put_line(out, name, header.value);
        }
    }
    match forwarded_for {
        Some(earlier) if !earlier.trim_ascii().is_empty() => {
            out.reserve(earlier.len() + context.client_ip.len() + 24);
            out.put_slice(b"x-forwarded-for: ");
            out.put_slice(earlier.trim_ascii());
            out.put_slice(b", ");
            out.put_slice(context.client_ip.as_bytes());
            out.put_slice(b"\r\n");
        }
        _ => put_line(out, b"x-forwarded-for", context.client_ip.as_bytes()),
    }
    if let (Some(host), false) = (host, forwarded_host) {
        put_line(out, b"x-forwarded-host", host);
    }
    if !forwarded_proto {
        out.put_slice(b"x-forwarded-proto: http\r\n");
    }

    let head = buf.split_to(head_len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target))
        .map_err(|_| HeadError::bad("not a valid request target"))?;
    // Absolute form (`GET http://host/path`): only the path and query go on; the backend is the
    // gateway's choice, never the request's.
    let uri = if uri.scheme().is_some() {
        match uri.path_and_query() {
            Some(path) if !path.as_str().is_empty() => Uri::from(path.clone()),
            _ => Uri::from_static("/"),
        }
    } else {
        uri
    };
    let key = key
        .map(|range| HeaderValue::from_maybe_shared(head.slice(range)))
        .transpose()
        .map_err(|_| HeadError::bad("the key header's value is not valid"))?;
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        body,
        keep_alive,
        expect_continue,
        key,
    }))
}

/// How a response's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// None: an answer to HEAD, a 204 or a 304.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the backend closes the connection.
    Close,
}

/// A response head read off a backend connection.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status.
    pub status: StatusCode,
    /// How the body that follows is delimited.
    pub body: ResponseBody,
    /// Whether the connection may carry another request after this response's body.
    pub keep_alive: bool,
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Reads a response head off the front of `buf`: `Ok(None)` while it is incomplete, else the head,
/// removed from `buf`, with the status line and the header lines for the client appended to
/// `out`. Interim (1xx) responses are removed from `buf` and skipped; `101 Switching Protocols`
/// is an error, since the gateway never asks for an upgrade.
///
/// What goes to `out`: `HTTP/1.1`, the status and reason; every header but the hop-by-hop ones
/// (and those `Connection` names) and, for a response with a body, the framing headers (the
/// caller frames the body for its client). The caller adds its own headers and the blank line.
pub fn read_response_head(
    buf: &mut BytesMut,
    out: &mut BytesMut,
    head_request: bool,
) -> io::Result<Option<ResponseHead>> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(invalid("the response head is too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(invalid("not an HTTP/1.x response head")),
        };
        if head_len > MAX_HEAD_BYTES {
            return Err(invalid("the response head is too large"));
        }
        let code = response.code.unwrap_or_default();
        if code == 101 {
            return Err(invalid("the backend switched protocols unasked"));
        }
        if (100..200).contains(&code) {
            buf.advance(head_len);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| invalid("not a valid status"))?;

        let mut names = [Name::Other; MAX_HEADERS];
        let mut framing = Framing::default();
        for (header, kind) in response.headers.iter().zip(&mut names) {
            *kind = classify(header.name.as_bytes());
            framing.add(*kind, header.value).map_err(invalid)?;
        }
        let bodiless =
            head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let body = match (bodiless, framing.chunked, framing.length) {
            (true, ..) => ResponseBody::Empty,
            // Transfer-Encoding overrides Content-Length (RFC 9112, 6.3).
            (false, Some(true), _) => ResponseBody::Chunked,
            (false, Some(false), _) => ResponseBody::Close,
            (false, None, Some(len)) => ResponseBody::Length(len),
            (false, None, None) => ResponseBody::Close,
        };
        let keep_alive =
            body != ResponseBody::Close && framing.keep_alive(version(response.version));

        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(status.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(response.reason.unwrap_or_default().as_bytes());
        out.put_slice(b"\r\n");
        for (header, kind) in response.headers.iter().zip(names) {
            let name = header.name.as_bytes();
            let forward = match kind {
                Name::HopByHop | Name::Connection | Name::TransferEncoding => false,
                // The length of a HEAD answer or a 304 tells about the resource: kept.
                Name::ContentLength => body == ResponseBody::Empty,
                _ => true,
            };
            if forward && !framing.connection.names(name) {
                put_line(out, name, header.value);
            }
        }
        buf.advance(head_len);
        return Ok(Some(ResponseHead {
            status,
            body,
            keep_alive,
        }));
    }
}

/// Decodes the chunked transfer coding, incrementally, from the front of a buffer. Chunk
/// extensions and trailers are read and dropped.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// The size being read, then what is left of the chunk's data.
    remaining: u64,
    /// Bytes of the current size line's extension, or of the trailers: bounded.
    skipped: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk size, at least one.
    #[default]
    Size,
    /// More hex digits, or the end of the size.
    SizeMore,
    /// A chunk extension, up to the line's end.
    Extension,
    /// The LF of the size line.
    SizeLf,
    Data,
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// The start of a trailer line, or the blank line that ends the body.
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

/// A piece of a chunked body.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Data, in the order sent.
    Data(Bytes),
    /// The end of the body: the buffer now holds whatever follows it.
    End,
}

/// The longest chunk extension or trailer section read before the body is rejected.
const MAX_SKIPPED: usize = 16 * 1024;

impl ChunkedDecoder {
    /// Decodes from the front of `buf`, removing what it reads: `Ok(None)` when `buf` holds
    /// nothing more to decode, so more must be read into it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Chunk>> {
        use ChunkState::*;
        let bad = || invalid("bad chunked coding");
        while !buf.is_empty() || self.state == Done {
            if self.state == Data {
                let take = buf
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = DataCr;
                }
                return Ok(Some(Chunk::Data(buf.split_to(take).freeze())));
            }
            if self.state == Done {
                return Ok(Some(Chunk::End));
            }
            let byte = buf[0];
            buf.advance(1);
            self.state = match (self.state, byte) {
                (Size | SizeMore, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    if self.remaining >> 56 != 0 {
                        return Err(invalid("chunk size too large"));
                    }
                    let digit = (byte as char).to_digit(16).unwrap_or_default();
                    self.remaining = self.remaining << 4 | u64::from(digit);
                    SizeMore
                }
                (SizeMore, b';' | b' ' | b'\t') => {
                    self.skipped = 0;
                    Extension
                }
                (SizeMore | Extension, b'\r') => SizeLf,
                (SizeMore | Extension | SizeLf, b'\n') => {
                    if self.remaining == 0 {
                        self.skipped = 0;
                        TrailerStart
                    } else {
                        Data
                    }
                }
                (Extension, _) => {
                    self.skipped += 1;
                    if self.skipped > MAX_SKIPPED {
                        return Err(bad());
                    }
                    Extension
                }
                (DataCr, b'\r') => DataLf,
                (DataCr | DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | EndLf, b'\n') => Done,
                (TrailerStart | TrailerLine, other) => {
                    self.skipped += 1;
                    if self.skipped > MAX_SKIPPED {
                        return Err(bad());
                    }
                    if other == b'\n' {
                        TrailerStart
                    } else {
                        TrailerLine
                    }
                }
                _ => return Err(bad()),
            };
        }
        Ok(None)
    }
}

/// Appends `data` as one chunk of the chunked coding (nothing for empty data, which would end
/// the body).
pub fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut size = [0u8; 16];
    let mut at = size.len();
    let mut n = data.len();
    loop {
        at -= 1;
        size[at] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&size[at..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body, without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> RequestContext<'static> {
        RequestContext {
            client_ip: "192.0.2.7",
            key_header: None,
        }
    }

    fn read(head: &str) -> Result<Option<(RequestHead, String)>, HeadError> {
        let mut buf = BytesMut::from(head);
        let mut out = BytesMut::new();
        let read = read_request_head(&mut buf, &mut out, &context())?;
        Ok(read.map(|head| (head, String::from_utf8(out.to_vec()).unwrap())))
    }

    #[test]
    fn a_request_head_is_rewritten_for_the_backend() {
        let (head, lines) = read(
            "GET http://elsewhere:9/a?key=cat HTTP/1.1\r\nHost: elsewhere:9\r\n\
             Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nX-Kept: yes\r\n\
             X-Forwarded-For: 203.0.113.1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.uri, "/a?key=cat");
        assert_eq!(head.body, RequestBody::None);
        assert!(head.keep_alive);
        assert_eq!(
            lines,
            "X-Kept: yes\r\nx-forwarded-for: 203.0.113.1, 192.0.2.7\r\n\
             x-forwarded-host: elsewhere:9\r\nx-forwarded-proto: http\r\n"
        );
    }

    #[test]
    fn ambiguous_or_unsupported_framing_is_rejected() {
        let status = |head: &str| read(head).unwrap_err().status;
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(status("NOT HTTP\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert!(read("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn http_1_0_keeps_the_connection_only_when_asked() {
        let (head, _) = read("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!head.keep_alive);
        let (head, _) = read("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.keep_alive);
        let (head, _) = read("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!head.keep_alive);
    }

    #[test]
    fn a_response_head_drops_framing_and_hop_by_hop_headers() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 Fine\r\nContent-Length: 5\r\n\
             Keep-Alive: timeout=5\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhello",
        );
        let mut out = BytesMut::new();
        let head = read_response_head(&mut buf, &mut out, false)
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.body, ResponseBody::Length(5));
        assert!(head.keep_alive);
        assert_eq!(&out[..], b"HTTP/1.1 200 Fine\r\nX-A: 1\r\n");
        assert_eq!(&buf[..], b"hello");

        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        let mut out = BytesMut::new();
        let head = read_response_head(&mut buf, &mut out, true)
            .unwrap()
            .unwrap();
        assert_eq!(head.body, ResponseBody::Empty);
        assert_eq!(&out[..], b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n");

        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\n\r\nuntil the end");
        let head = read_response_head(&mut buf, &mut BytesMut::new(), false)
            .unwrap()
            .unwrap();
        assert_eq!((head.body, head.keep_alive), (ResponseBody::Close, false));
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n0006\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for split in 0..wire.len() {
            let mut decoder = ChunkedDecoder::default();
            let mut buf = BytesMut::from(&wire[..split]);
            let mut rest = &wire[split..];
            let mut data = Vec::new();
            loop {
                match decoder.decode(&mut buf).unwrap() {
                    Some(Chunk::Data(bytes)) => data.extend_from_slice(&bytes),
                    Some(Chunk::End) => break,
                    None => {
                        assert!(!rest.is_empty(), "split at {split}: no end");
                        buf.extend_from_slice(rest);
                        rest = &[];
                    }
                }
            }
            buf.extend_from_slice(rest);
            assert_eq!(data, b"hello world", "split at {split}");
            assert_eq!(&buf[..], b"NEXT", "split at {split}");
        }
    }

    #[test]
    fn bad_chunked_bodies_are_errors() {
        for wire in ["x\r\n", "5\r\nhelloXX", "\r\n", "fffffffffffffffff\r\n"] {
            let mut buf = BytesMut::from(wire);
            let mut decoder = ChunkedDecoder::default();
            let result =
                std::iter::from_fn(|| decoder.decode(&mut buf).transpose()).find(Result::is_err);
            assert!(result.is_some(), "{wire:?} was accepted");
        }
    }

    #[test]
    fn chunks_are_encoded_in_hex() {
        let mut out = Vec::new();
        put_chunk(&mut out, &[b'x'; 26]);
        put_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(
            out,
            [&b"1a\r\n"[..], &[b'x'; 26], b"\r\n0\r\n\r\n"].concat()
        );
    }
}
