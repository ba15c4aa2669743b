//! The router of the `go_handlers` example: the four handlers of a Go load-balancing tutorial,
//! each a [`Balance`] over three in-process servers, mounted on an axum [`Router`].
//!
//! Shared with `tests/go_handlers`, which serves it on loopback and checks every route.

use std::{
    convert::Infallible,
    future::{ready, Ready},
    task::{Context, Poll},
};

use axum::{body::Body, Router};
use bytes::Bytes;
use futures_util::future::{Either, FutureExt, Map};
use http::{header::CONTENT_TYPE, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};
use tower_lb::{
    key,
    strategy::{ConsistentHash, Hash, RoundRobin, WeightedRoundRobin},
    BalanceLayer, BoxError, Endpoints,
};

/// The Go tutorial's servers, in its order.
const SERVERS: [&str; 3] = ["server1", "server2", "server3"];

/// The Go tutorial's weights for `server1`, `server2`, `server3`.
const WEIGHTS: [u32; 3] = [1, 2, 3];

/// Builds the mirror of the Go tutorial's handlers. Every route answers `200 OK` with the body
/// `Request handled by: serverN` (no trailing newline, `text/plain; charset=utf-8`), as the Go
/// handlers' `fmt.Fprintf(w, "Request handled by: %s", server)` does.
///
/// | route | Go handler | picks |
/// |---|---|---|
/// | `/round-robin` | a counter shared by all requests, `servers[counter % 3]` | server1, server2, server3, server1, ... |
/// | `/` | the same handler and counter as `/round-robin` | one rotation with `/round-robin`: the same balancer, cloned |
/// | `/weighted` | weighted round robin, weights 1, 2, 3 | per 6 requests: server3 server2 server1 server3 server2 server3 (nginx's smooth order) |
/// | `/hash` | `crc32.NewIEEE()` of the `key` query parameter (`default_key` when missing or empty) mod 3 | `a`, `c`, `default_key` → server1; `b` → server3 |
/// | `/consistent` | consistent hashing of the same `key` parameter, same default | the key's owner on a ketama ring |
///
/// Go's weighted handler is buggy: its index restarts at 0 on every request, so it always
/// answers server2; `/weighted` gives the true 1:2:3 distribution instead.
///
/// `/consistent` keeps every key on one server and spreads keys over all three, as the Go
/// handler does, but on tower-lb's ring (160 points per server, placed by the server's name),
/// so which server owns a given key may differ from the Go ring's choice.
///
/// Only these five paths are routed (anything else is a 404), and every method is accepted, as
/// Go's `http.HandleFunc` accepts every method.
///
/// Each route holds one balancer; axum clones it for every request, and the clones share the
/// rotation, which is why the counts stay exact.
pub fn app() -> Router {
    let servers = || SERVERS.map(|name| (name, Server::new(name)));

    let round_robin = BalancedRoute::new(
        BalanceLayer::new(RoundRobin::new()).layer(Endpoints::from_iter(servers())),
    );

    let weighted_set = Endpoints::try_from_weighted(
        servers()
            .into_iter()
            .zip(WEIGHTS)
            .map(|((name, server), weight)| (name, server, weight)),
    )
    .expect("the weights 1, 2, 3 are all at least 1");
    let weighted =
        BalancedRoute::new(BalanceLayer::new(WeightedRoundRobin::new()).layer(weighted_set));

    // The endpoint keys `server1` < `server2` < `server3` give `Hash` the Go slice's order.
    let hash = BalancedRoute::new(
        BalanceLayer::new(Hash::new(key::query("key").or("default_key")))
            .layer(Endpoints::from_iter(servers())),
    );

    let consistent = BalancedRoute::new(
        BalanceLayer::new(ConsistentHash::new(key::query("key").or("default_key")))
            .layer(Endpoints::from_iter(servers())),
    );

    Router::new()
        .route_service("/", round_robin.clone())
        .route_service("/round-robin", round_robin)
        .route_service("/weighted", weighted)
        .route_service("/hash", hash)
        .route_service("/consistent", consistent)
}

/// A stand-in for one backend server: answers every request with `Request handled by: <name>`.
///
/// Cheap to clone (the body is shared) and always ready.
#[derive(Clone, Debug)]
pub struct Server {
    body: Bytes,
}

impl Server {
    /// A server answering `Request handled by: <name>`.
    pub fn new(name: &str) -> Self {
        Self {
            body: Bytes::from(format!("Request handled by: {name}")),
        }
    }
}

impl<B> Service<Request<B>> for Server {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        ready(Ok(text(StatusCode::OK, self.body.clone())))
    }
}

/// A balancer adapted to axum's `route_service`, which takes `Request<Body>` and needs a service
/// that never fails.
///
/// The request reaches the balancer without its body (`Request<()>`, keeping method, URI,
/// headers and extensions), since the servers ignore bodies. A failure of the balancer, such as
/// [`NoEndpoints`](tower_lb::error::NoEndpoints) or [`Unavailable`](tower_lb::error::Unavailable),
/// becomes a `503 Service Unavailable` response carrying the error's text.
///
/// `poll_ready` is passed through, so the balancer picks and reserves its endpoint there; a
/// readiness error is kept and answered as a 503 by the next `call`.
pub struct BalancedRoute<S> {
    inner: S,
    failed: Option<BoxError>,
}

impl<S> BalancedRoute<S> {
    /// Wraps a balancer (or any service of `Request<()>` answering `Response<Body>`).
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            failed: None,
        }
    }
}

/// A clone starts without the readiness error of the original, as a clone of a balancer starts
/// without its reservation.
impl<S: Clone> Clone for BalancedRoute<S> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone())
    }
}

type Answer = Result<Response<Body>, Infallible>;

impl<S> Service<Request<Body>> for BalancedRoute<S>
where
    S: Service<Request<()>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        Either<Map<S::Future, fn(Result<Response<Body>, S::Error>) -> Answer>, Ready<Answer>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.failed.is_none() {
            if let Err(error) = std::task::ready!(self.inner.poll_ready(cx)) {
                self.failed = Some(error.into());
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self.failed.take() {
            Some(error) => Either::Right(ready(Ok(unavailable(error)))),
            None => {
                let answer: fn(Result<Response<Body>, S::Error>) -> Answer =
                    |result| Ok(result.unwrap_or_else(|error| unavailable(error.into())));
                Either::Left(self.inner.call(request.map(|_body| ())).map(answer))
            }
        }
    }
}

fn unavailable(error: BoxError) -> Response<Body> {
    text(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
}

/// A `text/plain; charset=utf-8` response, as Go's `net/http` labels the handlers' answers.
fn text(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
