//! The embedded backends: small HTTP servers on 127.0.0.1 that stand in for the instances of an
//! image-processing service.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use http_body_util::{BodyExt, Limited};
use tokio::net::TcpListener;

use crate::app::{Server, Target, MAX_BODY_BYTES};

/// How an embedded backend behaves.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Rounds of crc32 over the request body for every request: the simulated image processing.
    pub work_rounds: u32,
    /// Extra time taken by every request, to play a slow or overloaded instance.
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
/// Dropping it starts a graceful shutdown in the background; [`Backend::stop`] waits for it.
#[derive(Debug)]
pub struct Backend {
    name: String,
    server: Server,
}

impl Backend {
    /// The backend's name, which it puts in every answer (`Request handled by: backend-1`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The gateway's view of this backend: its name is its endpoint key.
    ///
    /// Names, not addresses, key the embedded backends so that the hash strategies map request
    /// keys the same way in every run, whatever ephemeral ports the backends got.
    pub fn target(&self) -> Target {
        Target::new(self.name.clone(), self.addr())
    }

    /// Stops accepting connections, closes the idle ones, and waits for the requests in flight.
    ///
    /// Once this returns, connecting to the backend's address is refused.
    pub async fn stop(self) -> io::Result<()> {
        self.server.stop().await
    }
}

/// Starts a backend named `name` on an ephemeral port of 127.0.0.1.
///
/// It answers every path with the result of "resizing" the request body, except `/headers`,
/// which lists the request headers it received (as httpbin's `/headers` does) and answers with a
/// few hop-by-hop headers that a proxy must not pass on.
pub async fn spawn_backend(name: &str, options: BackendOptions) -> io::Result<Backend> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let state = Arc::new(BackendState {
        name: name.to_owned(),
        options,
    });
    let router = Router::new().fallback(handle).with_state(state);
    Ok(Backend {
        name: name.to_owned(),
        server: Server::start(listener, router)?,
    })
}

struct BackendState {
    name: String,
    options: BackendOptions,
}

async fn handle(State(state): State<Arc<BackendState>>, request: Request) -> Response {
    if !state.options.delay.is_zero() {
        tokio::time::sleep(state.options.delay).await;
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
    let rounds = state.options.work_rounds;
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
        state.options.work_rounds,
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
