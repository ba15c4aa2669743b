//! The gateway's HTTP/1.1 engine on the wire: raw clients whose bytes the tests choose, and
//! scripted backends that answer with fixed bytes, both read with a decoder of this module's own
//! (not the engine's), so that the engine's framing is checked from outside.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

use super::{
    app::{self, GatewayConfig, Target},
    backend::{spawn_backend, BackendOptions},
    bounded,
    proxy::Server,
};

/// How a message's body was delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body: an answer to HEAD, a 1xx, 204 or 304, or a request without a length.
    None,
    /// `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closed.
    Close,
}

/// A message read off the wire.
#[derive(Debug)]
struct Message {
    /// The status line or the request line.
    start: String,
    /// Header names lower-cased, values trimmed, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
    /// Trailer lines of a chunked body.
    trailers: Vec<String>,
}

impl Message {
    fn parse_head(head: &[u8]) -> Self {
        let head = std::str::from_utf8(head).expect("a head in ASCII");
        let mut lines = head.trim_end_matches("\r\n").split("\r\n");
        let start = lines.next().unwrap_or_default().to_owned();
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("not a header line: {line:?} in {head:?}"));
                (name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        Self {
            start,
            headers,
            body: Vec::new(),
            framing: Framing::None,
            trailers: Vec::new(),
        }
    }

    /// The status code of a response.
    fn status(&self) -> u16 {
        let mut parts = self.start.split(' ');
        let version = parts.next().unwrap_or_default();
        assert!(
            version.starts_with("HTTP/1."),
            "not a status line: {self:?}"
        );
        let status = parts.next().unwrap_or_default();
        status
            .parse()
            .unwrap_or_else(|_| panic!("not a status line: {self:?}"))
    }

    /// The method of a request.
    fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or_default()
    }

    /// Every value of header `name`.
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of header `name`, which must appear at most once.
    fn header(&self, name: &str) -> Option<&str> {
        match self.values(name)[..] {
            [] => None,
            [value] => Some(value),
            _ => panic!("{name} appears more than once: {self:?}"),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether `connection` lists `token`.
    fn connection_has(&self, token: &str) -> bool {
        self.values("connection")
            .iter()
            .flat_map(|value| value.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// One end of a raw HTTP/1.1 connection: writes the bytes it is given, reads messages with its
/// own decoder.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn connect(addr: SocketAddr) -> Self {
        Self::new(TcpStream::connect(addr).await.expect("the gateway accepts"))
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .await
            .expect("the peer reads");
    }

    /// Reads what the peer sent next: 0 at the end of the stream.
    async fn fill(&mut self) -> usize {
        self.buf.reserve(64 * 1024);
        self.stream
            .read_buf(&mut self.buf)
            .await
            .expect("the connection is not reset")
    }

    /// The bytes of the buffer up to `delimiter`, removed with it, after reading until it comes.
    async fn until(&mut self, delimiter: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = find(&self.buf, delimiter) {
                let mut taken: Vec<u8> = self.buf.drain(..at + delimiter.len()).collect();
                taken.truncate(at);
                return Some(taken);
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// The next message head; `None` if the peer closed the connection before sending a byte of
    /// it.
    async fn head(&mut self) -> Option<Message> {
        match self.until(b"\r\n\r\n").await {
            Some(head) => Some(Message::parse_head(&head)),
            None if self.buf.is_empty() => None,
            None => panic!(
                "the connection closed in the middle of a head: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    async fn line(&mut self) -> Vec<u8> {
        self.until(b"\r\n")
            .await
            .expect("the connection closed in the middle of a line")
    }

    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            if self.fill().await == 0 {
                panic!("closed after {} of {n} bytes", self.buf.len());
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Everything until the peer closes the connection.
    async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// A chunked body: its data and its trailer lines.
    async fn chunked(&mut self) -> (Vec<u8>, Vec<String>) {
        let mut body = Vec::new();
        loop {
            let line = self.line().await;
            let line = String::from_utf8(line).expect("a chunk size line in ASCII");
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .unwrap_or_else(|_| panic!("not a chunk size line: {line:?}"));
            if size == 0 {
                break;
            }
            body.extend(self.exact(size).await);
            assert_eq!(self.line().await, b"", "chunk data ends with CRLF");
        }
        let mut trailers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return (body, trailers);
            }
            trailers.push(String::from_utf8(line).expect("a trailer line in ASCII"));
        }
    }

    /// The next response, whole; `head_request` if it answers HEAD.
    async fn response(&mut self, head_request: bool) -> Message {
        let mut message = self
            .head()
            .await
            .expect("an answer before the connection closed");
        let status = message.status();
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return message;
        }
        if let Some(coding) = message.header("transfer-encoding") {
            assert!(
                coding.eq_ignore_ascii_case("chunked"),
                "not chunked: {message:?}"
            );
            assert_eq!(message.header("content-length"), None, "{message:?}");
            (message.body, message.trailers) = self.chunked().await;
            message.framing = Framing::Chunked;
        } else if let Some(length) = message.header("content-length") {
            let length = length.parse().expect("a decimal Content-Length");
            message.body = self.exact(length).await;
            message.framing = Framing::Length;
        } else {
            message.body = self.rest().await;
            message.framing = Framing::Close;
        }
        message
    }

    /// The next request head, and its body when it has a length; `None` once the peer closed
    /// the connection.
    async fn request(&mut self) -> Option<Message> {
        let mut message = self.head().await?;
        if let Some(length) = message.header("content-length") {
            let length = length.parse().expect("a decimal Content-Length");
            message.body = self.exact(length).await;
            message.framing = Framing::Length;
        }
        Some(message)
    }

    /// Whether the peer has closed the connection, with nothing more sent.
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill().await == 0
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A scripted backend on an ephemeral port of 127.0.0.1: each connection it accepts is served by
/// `serve`, on a task of its own, with the connection's number (from 1).
async fn scripted<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(Wire, usize) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for n in 1.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(Wire::new(stream), n));
        }
    });
    addr
}

/// Answers every request on `wire` with the pieces `answer` gives for it, each written apart,
/// until the gateway closes the connection.
async fn answer_each(mut wire: Wire, answer: impl Fn(&Message) -> Vec<Vec<u8>>) {
    while let Some(request) = wire.request().await {
        for piece in answer(&request) {
            wire.send(piece).await;
        }
    }
}

/// The gateway with the default configuration, over the one backend at `addr`, named `backend`.
async fn gateway_to(addr: SocketAddr) -> (Server, app::Stats) {
    let built = app::gateway(&[Target::new("backend", addr)], &GatewayConfig::default())
        .expect("a valid configuration");
    let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), built.proxy)
        .await
        .expect("the gateway starts");
    (server, built.stats)
}

/// The gateway over an embedded backend, `backend-1`.
async fn gateway_to_embedded() -> (Server, app::Stats, super::backend::Backend) {
    let backend = spawn_backend("backend-1", BackendOptions::default())
        .await
        .expect("a backend starts");
    let (server, stats) = gateway_to(backend.addr()).await;
    (server, stats, backend)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n")
}

/// `len` bytes in a pattern that shows a lost, repeated or misplaced piece.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_chunked_answer_with_an_extension_and_a_trailer_is_relayed_whole_and_the_connection_stays_usable(
) {
    bounded(async {
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&requests);
        let backend = scripted(move |wire, _| {
            let seen = Arc::clone(&seen);
            answer_each(wire, move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
                vec![
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
                      Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                        .to_vec(),
                    b"5;name=\"a value\"\r\nhello\r\n".to_vec(),
                    b"7\r\n, world\r\n".to_vec(),
                    [&b"1A;flag\r\n"[..], b"abcdefghijklmnopqrstuvwxyz\r\n"].concat(),
                    b"0\r\nX-Checksum: 1234\r\n\r\n".to_vec(),
                ]
            })
        })
        .await;
        let (gateway, _stats) = gateway_to(backend).await;

        let mut client = Wire::connect(gateway.addr()).await;
        for i in 1..=2 {
            client.send(get("/chunked")).await;
            let answer = client.response(false).await;
            assert_eq!(answer.status(), 200, "request {i}: {answer:?}");
            assert_eq!(answer.framing, Framing::Chunked, "request {i}: {answer:?}");
            assert_eq!(
                answer.text(),
                "hello, worldabcdefghijklmnopqrstuvwxyz",
                "request {i}"
            );
            assert_eq!(answer.header("content-type"), Some("text/plain"));
            assert_eq!(answer.header("x-upstream"), Some("backend"));
            assert!(!answer.connection_has("close"), "request {i}: {answer:?}");
        }
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    })
    .await;
}

#[tokio::test]
async fn a_close_delimited_answer_is_chunked_for_http_1_1_and_delimited_by_close_for_http_1_0() {
    bounded(async {
        const BODY: &str = "first part, second part, last part";
        let backend = scripted(|mut wire, _| async move {
            if wire.request().await.is_none() {
                return;
            }
            // No length and no chunked coding: the body ends where the connection does.
            for piece in [
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
                "first part, ",
                "second part, ",
                "last part",
            ] {
                wire.send(piece).await;
            }
        })
        .await;
        let (gateway, _stats) = gateway_to(backend).await;

        // HTTP/1.1: chunked by the gateway, and the connection goes on.
        let mut client = Wire::connect(gateway.addr()).await;
        for i in 1..=2 {
            client.send(get("/until-close")).await;
            let answer = client.response(false).await;
            assert_eq!(answer.status(), 200, "request {i}: {answer:?}");
            assert_eq!(answer.framing, Framing::Chunked, "request {i}: {answer:?}");
            assert_eq!(answer.text(), BODY, "request {i}");
            assert!(!answer.connection_has("close"), "request {i}: {answer:?}");
        }

        // HTTP/1.0, with or without keep-alive: no chunked coding for it, so the body ends with
        // the connection.
        for request in [
            "GET /until-close HTTP/1.0\r\nHost: gateway\r\n\r\n",
            "GET /until-close HTTP/1.0\r\nHost: gateway\r\nConnection: keep-alive\r\n\r\n",
        ] {
            let mut client = Wire::connect(gateway.addr()).await;
            client.send(request).await;
            let answer = client.response(false).await;
            assert_eq!(answer.status(), 200, "{request:?}: {answer:?}");
            assert_eq!(answer.framing, Framing::Close, "{request:?}: {answer:?}");
            assert!(answer.connection_has("close"), "{request:?}: {answer:?}");
            assert_eq!(answer.text(), BODY, "{request:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_large_answer_arrives_intact_with_its_length_or_chunked() {
    bounded(async {
        const LEN: usize = 3 << 20;
        const PIECE: usize = 48 * 1024;
        let backend = scripted(|wire, _| {
            answer_each(wire, |request| {
                let body = pattern(LEN);
                let mut pieces = Vec::new();
                if request.start.starts_with("GET /length ") {
                    pieces.push(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n").into_bytes(),
                    );
                    pieces.extend(body.chunks(PIECE).map(<[u8]>::to_vec));
                } else {
                    pieces.push(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec());
                    // Chunks of a size that does not divide the body, each written apart.
                    for chunk in body.chunks(PIECE + 1) {
                        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
                        piece.extend_from_slice(chunk);
                        piece.extend_from_slice(b"\r\n");
                        pieces.push(piece);
                    }
                    pieces.push(b"0\r\n\r\n".to_vec());
                }
                pieces
            })
        })
        .await;
        let (gateway, _stats) = gateway_to(backend).await;
        let expected = pattern(LEN);

        let mut client = Wire::connect(gateway.addr()).await;
        for (path, framing) in [("/length", Framing::Length), ("/chunked", Framing::Chunked)] {
            client.send(get(path)).await;
            let answer = client.response(false).await;
            assert_eq!(answer.status(), 200, "{path}");
            assert_eq!(answer.framing, framing, "{path}: {:?}", answer.headers);
            if framing == Framing::Length {
                assert_eq!(answer.header("content-length"), Some("3145728"));
            }
            assert_eq!(answer.body.len(), LEN, "{path}");
            let first_difference = answer.body.iter().zip(&expected).position(|(a, b)| a != b);
            assert_eq!(first_difference, None, "{path}: the bytes differ");
        }
    })
    .await;
}

#[tokio::test]
async fn an_answer_to_head_keeps_its_length_without_a_body_and_the_next_request_is_answered() {
    bounded(async {
        let backend = scripted(|wire, _| {
            answer_each(wire, |request| {
                let answer: &[u8] = if request.method() == "HEAD" {
                    b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1234\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                };
                vec![answer.to_vec()]
            })
        })
        .await;
        let (gateway, _stats) = gateway_to(backend).await;
        let head = "HEAD /image HTTP/1.1\r\nHost: gateway\r\n\r\n";

        let check_head = |answer: &Message| {
            assert_eq!(answer.status(), 200, "{answer:?}");
            assert_eq!(answer.header("content-length"), Some("1234"), "{answer:?}");
            assert_eq!(answer.header("transfer-encoding"), None, "{answer:?}");
            assert_eq!(answer.header("content-type"), Some("image/png"));
        };
        // A body after the HEAD answer would be read as the next answer's head.
        let check_get = |answer: &Message| {
            assert_eq!(answer.status(), 200, "{answer:?}");
            assert_eq!(answer.text(), "hello");
        };
        let mut client = Wire::connect(gateway.addr()).await;
        // One after the other, then pipelined.
        client.send(head).await;
        check_head(&client.response(true).await);
        client.send(get("/image")).await;
        check_get(&client.response(false).await);
        client.send(format!("{head}{}{head}", get("/image"))).await;
        check_head(&client.response(true).await);
        check_get(&client.response(false).await);
        check_head(&client.response(true).await);
        client.send(get("/image")).await;
        check_get(&client.response(false).await);
    })
    .await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    bounded(async {
        let (gateway, _stats, _backend) = gateway_to_embedded().await;
        let mut client = Wire::connect(gateway.addr()).await;
        // Four requests in one write, two of them with bodies (framed both ways) that end right
        // where the next head starts.
        client
            .send(
                "GET /a HTTP/1.1\r\nHost: gateway\r\nX-Request-Id: one\r\n\r\n\
                 POST /b HTTP/1.1\r\nHost: gateway\r\nX-Request-Id: two\r\n\
                 Content-Length: 8\r\n\r\n12345678\
                 POST /c HTTP/1.1\r\nHost: gateway\r\nX-Request-Id: three\r\n\
                 Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
                 GET /d HTTP/1.1\r\nHost: gateway\r\nX-Request-Id: four\r\n\r\n",
            )
            .await;
        let mut ids = Vec::new();
        for sent in [0, 8, 5, 0] {
            let answer = client.response(false).await;
            assert_eq!(answer.status(), 200, "{answer:?}");
            assert!(
                answer
                    .text()
                    .contains(&format!("\nresized {sent} bytes to ")),
                "{sent} bytes: {}",
                answer.text()
            );
            ids.push(answer.header("x-request-id").unwrap_or_default().to_owned());
        }
        assert_eq!(ids, ["one", "two", "three", "four"]);
    })
    .await;
}

#[tokio::test]
async fn expect_100_continue_is_answered_100_before_the_body_then_with_the_answer() {
    bounded(async {
        let (gateway, _stats, _backend) = gateway_to_embedded().await;
        let mut client = Wire::connect(gateway.addr()).await;

        // The body is sent only once the gateway says to.
        client
            .send(
                "POST /resize HTTP/1.1\r\nHost: gateway\r\nExpect: 100-continue\r\n\
                 Content-Length: 11\r\nX-Request-Id: expecting\r\n\r\n",
            )
            .await;
        let interim = tokio::time::timeout(Duration::from_secs(10), client.response(false))
            .await
            .expect("100 Continue before the body is sent");
        assert_eq!(interim.start, "HTTP/1.1 100 Continue", "{interim:?}");
        assert!(interim.headers.is_empty(), "{interim:?}");
        client.send("hello world").await;
        let answer = client.response(false).await;
        assert_eq!(answer.status(), 200, "{answer:?}");
        assert_eq!(answer.header("x-request-id"), Some("expecting"));
        assert!(
            answer.text().contains("\nresized 11 bytes to 3 bytes"),
            "{}",
            answer.text()
        );

        // Again on the same connection, to see what the backend got: the body, and no Expect
        // (the gateway has read the body already).
        client
            .send(
                "POST /headers HTTP/1.1\r\nHost: gateway\r\nExpect: 100-continue\r\n\
                 Content-Length: 3\r\n\r\n",
            )
            .await;
        assert_eq!(client.response(false).await.status(), 100);
        client.send("abc").await;
        let answer = client.response(false).await;
        assert_eq!(answer.status(), 200, "{answer:?}");
        let received = answer.text().to_ascii_lowercase();
        assert!(!received.contains("\nexpect:"), "{received}");
        assert!(received.contains("\ncontent-length: 3\n"), "{received}");

        // A client that sends its body without waiting: answered once, whether or not a
        // 100 Continue comes first.
        client
            .send(
                "POST /resize HTTP/1.1\r\nHost: gateway\r\nExpect: 100-continue\r\n\
                 Content-Length: 4\r\n\r\nabcd",
            )
            .await;
        let mut answer = client.response(false).await;
        if answer.status() == 100 {
            answer = client.response(false).await;
        }
        assert_eq!(answer.status(), 200, "{answer:?}");
        assert!(answer.text().contains("\nresized 4 bytes"), "{answer:?}");
        client.send(get("/resize")).await;
        assert_eq!(client.response(false).await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn a_malformed_request_head_is_answered_400_and_the_connection_closed() {
    bounded(async {
        let (gateway, _stats, _backend) = gateway_to_embedded().await;
        for garbage in [
            &b"this is not http\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            // The start of a TLS handshake.
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ] {
            // After a good request, on the same connection.
            let mut client = Wire::connect(gateway.addr()).await;
            client
                .send([get("/resize").as_bytes(), garbage].concat())
                .await;
            let garbage = format!("{:?}", String::from_utf8_lossy(garbage));
            assert_eq!(client.response(false).await.status(), 200, "{garbage}");
            assert_refused(&mut client, 400, &garbage).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_request_head_over_64_kib_is_answered_431() {
    bounded(async {
        let (gateway, _stats, _backend) = gateway_to_embedded().await;
        let big = "a".repeat(70 * 1024);
        let many: String = (0..200).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
        for (what, request) in [
            (
                "a complete head with a 70 KiB header",
                format!("GET / HTTP/1.1\r\nHost: gateway\r\nX-Big: {big}\r\n\r\n"),
            ),
            (
                "a head that is still not over at 70 KiB",
                format!("GET / HTTP/1.1\r\nHost: gateway\r\nX-Big: {big}"),
            ),
            (
                "a head with 200 header lines",
                format!("GET / HTTP/1.1\r\nHost: gateway\r\n{many}\r\n"),
            ),
        ] {
            let mut client = Wire::connect(gateway.addr()).await;
            client.send(&request).await;
            assert_refused(&mut client, 431, what).await;
        }
    })
    .await;
}

/// The limit holds however the head arrives: here in one read, into a buffer that an earlier
/// request's large body left with room for all of it.
#[tokio::test]
async fn a_request_head_over_64_kib_is_answered_431_even_when_it_arrives_in_one_read() {
    bounded(async {
        let (gateway, _stats, _backend) = gateway_to_embedded().await;
        let mut client = Wire::connect(gateway.addr()).await;
        let body = "b".repeat(256 * 1024);
        client
            .send(format!(
                "POST /resize HTTP/1.1\r\nHost: gateway\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ))
            .await;
        assert_eq!(client.response(false).await.status(), 200);
        let head = format!(
            "GET /headers HTTP/1.1\r\nHost: gateway\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100 * 1024)
        );
        client.send(&head).await;
        assert_refused(&mut client, 431, &format!("a {} byte head", head.len())).await;
    })
    .await;
}

#[tokio::test]
async fn a_pooled_connection_that_the_backend_closed_while_idle_is_not_used_again() {
    bounded(async {
        let (closed_tx, closed) = oneshot::channel::<()>();
        let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&requests);
        let backend = scripted(move |mut wire, n| {
            let closed_tx = Arc::clone(&closed_tx);
            let seen = Arc::clone(&seen);
            async move {
                while wire.request().await.is_some() {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let body = format!("connection {n}");
                    wire.send(format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    ))
                    .await;
                    if n == 1 {
                        // Kept alive, then closed while idle, as a backend's idle timeout does.
                        drop(wire);
                        let sender = closed_tx.lock().unwrap().take();
                        let _ = sender.expect("the first connection closes once").send(());
                        return;
                    }
                }
            }
        })
        .await;
        let (gateway, stats) = gateway_to(backend).await;

        let mut client = Wire::connect(gateway.addr()).await;
        client.send(get("/first")).await;
        let answer = client.response(false).await;
        assert_eq!(
            (answer.status(), answer.text().as_str()),
            (200, "connection 1")
        );
        closed
            .await
            .expect("the backend closes its first connection");

        // The gateway sees the close before taking the connection, or the request fails on it
        // before any answer and, as a GET, goes again on a new one: either way, a success.
        client.send(get("/second")).await;
        let answer = client.response(false).await;
        assert_eq!(
            (answer.status(), answer.text().as_str()),
            (200, "connection 2"),
            "{answer:?}"
        );
        let stats = &stats.snapshot()[0];
        assert_eq!((stats.picks, stats.failures), (2, 0), "{stats:?}");
        assert_eq!(stats.ejected_for, None, "{stats:?}");
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    })
    .await;
}

#[tokio::test]
async fn an_http_1_0_request_without_keep_alive_gets_a_whole_answer_and_a_close() {
    bounded(async {
        let (gateway, _stats, _backend) = gateway_to_embedded().await;
        let mut client = Wire::connect(gateway.addr()).await;
        client
            .send("GET /resize HTTP/1.0\r\nHost: gateway\r\n\r\n")
            .await;
        let answer = client.response(false).await;
        assert_eq!(answer.status(), 200, "{answer:?}");
        assert_eq!(answer.framing, Framing::Length, "{answer:?}");
        assert!(answer.connection_has("close"), "{answer:?}");
        let text = answer.text();
        assert!(
            text.starts_with("Request handled by: backend-1\nresized 0 bytes")
                && text.ends_with('\n'),
            "{text}"
        );
        assert!(client.closed().await, "still open after the answer");
    })
    .await;
}

#[tokio::test]
async fn an_http_1_0_request_with_keep_alive_keeps_the_connection() {
    bounded(async {
        let (gateway, _stats, _backend) = gateway_to_embedded().await;
        let mut client = Wire::connect(gateway.addr()).await;
        for i in 1..=2 {
            client
                .send("GET /resize HTTP/1.0\r\nHost: gateway\r\nConnection: keep-alive\r\n\r\n")
                .await;
            let answer = client.response(false).await;
            assert_eq!(answer.status(), 200, "request {i}: {answer:?}");
            assert_eq!(answer.framing, Framing::Length, "request {i}: {answer:?}");
            assert!(
                answer.connection_has("keep-alive"),
                "request {i}: {answer:?}"
            );
            assert!(
                answer.text().starts_with("Request handled by: backend-1\n"),
                "request {i}: {answer:?}"
            );
        }
    })
    .await;
}

/// Reads the gateway's answer on `client`: `status`, and the connection closed after it.
async fn assert_refused(client: &mut Wire, status: u16, what: &str) {
    let answer = client.response(false).await;
    assert_eq!(answer.status(), status, "{what}: {answer:?}");
    assert!(answer.connection_has("close"), "{what}: {answer:?}");
    assert!(client.closed().await, "{what}: still open");
}
