//! HTTP backends on loopback for the tests: each answers with what it received, in headers and
//! body, over HTTP/1.1 or HTTP/2 with prior knowledge (h2c); it can stall (accept requests and
//! never answer) and be killed (its listener and every connection closed at once).
#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming,
    header::{HeaderValue, HOST},
    service::service_fn,
    Request, Response,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::TcpListener,
    task::{JoinHandle, JoinSet},
};

/// The HTTP version a backend speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 over cleartext TCP, with prior knowledge.
    H2c,
}

/// What a backend does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers at once with what it received.
    Echo,
    /// Reads the request and never answers.
    Stall,
}

/// A backend on 127.0.0.1. Its answer carries:
///
/// - `x-backend`: its name;
/// - `x-method`, `x-uri` (as the server saw it), `x-version`, `x-host` (the `Host` header, or
///   `-`), `x-test` (echoed);
/// - the request's body as its body.
#[derive(Debug)]
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Backend {
    /// Starts a backend on a port picked by the system.
    pub async fn spawn(name: &'static str, protocol: Protocol, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        let accept = tokio::spawn(async move {
            // Owned by the accept loop: aborting it drops the set, which aborts every
            // connection.
            let mut connections = JoinSet::new();
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                };
                let _ = stream.set_nodelay(true);
                let counter = Arc::clone(&counter);
                let service = service_fn(move |request: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    answer(name, behaviour, request)
                });
                let io = TokioIo::new(stream);
                match protocol {
                    Protocol::Http1 => {
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service);
                        connections.spawn(async move {
                            let _ = conn.await;
                        });
                    }
                    Protocol::H2c => {
                        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service);
                        connections.spawn(async move {
                            let _ = conn.await;
                        });
                    }
                }
                // Reaps finished connections as it goes.
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            name,
            addr,
            requests,
            accept: Mutex::new(Some(accept)),
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:port`: the endpoint key `http::origins` gives it.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Requests it received.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Closes its listener and every connection, in flight or idle.
    pub async fn kill(&self) {
        let accept = self.accept.lock().unwrap().take();
        if let Some(accept) = accept {
            accept.abort();
            // The accept loop's future, with the listener and the connections, is dropped
            // once the handle resolves.
            let _ = accept.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
    }
}

async fn answer(
    name: &'static str,
    behaviour: Behaviour,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if behaviour == Behaviour::Stall {
        std::future::pending::<()>().await;
    }
    let host = parts
        .headers
        .get(HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static("-"));
    let mut response = Response::builder()
        .header("x-backend", name)
        .header("x-method", parts.method.as_str())
        .header("x-uri", parts.uri.to_string())
        .header("x-version", format!("{:?}", parts.version))
        .header("x-host", host);
    if let Some(test) = parts.headers.get("x-test") {
        response = response.header("x-test", test);
    }
    Ok(response.body(Full::new(body)).expect("a valid response"))
}

/// A response header as a string.
pub fn header<B>(response: &Response<B>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("visible ASCII").to_owned())
        .unwrap_or_default()
}
