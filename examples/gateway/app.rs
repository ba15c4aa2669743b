//! The gateway: an axum router that forwards every request to one backend, picked by tower-lb,
//! through `tower::timeout` and `tower::retry`.
//!
//! # Errors, as the client sees them
//!
//! | what happened | status |
//! |---|---|
//! | a `CONNECT` request (this is not a forward proxy) | 405 Method Not Allowed |
//! | the request body is larger than the cap ([`MAX_BODY_BYTES`] by default) | 413 Payload Too Large |
//! | the request has no routing key and no default ([`MissingKey`]; cannot happen with the default key) | 400 Bad Request |
//! | the endpoint set is empty ([`NoEndpoints`]) | 503 Service Unavailable |
//! | the last attempt could not connect to its backend ([`NoBackendReachable`]) | 503 Service Unavailable |
//! | the last attempt connected, then the backend failed (reset, closed early, bad response) | 502 Bad Gateway |
//! | no response head within the timeout, retries included ([`Elapsed`]) | 504 Gateway Timeout |
//!
//! A connection that fails (refused, or not made within the connect timeout) never reached a
//! backend, so it is always retried, whatever the method, and the retry goes through the balancer
//! again to the next endpoint. A backend that accepted the connection and then failed is retried
//! only for idempotent methods, as nginx's `proxy_next_upstream error` does, since it may have
//! acted on the request. Retries are bounded ([`GatewayConfig::retries`], default 2).
//!
//! When no attempt succeeded, the status describes the **last attempt**: 503 when it could not
//! connect, 502 when a backend took the connection and then failed. A refused connection is thus
//! never answered 502: it is retried, and ends in 503 only if the last retry cannot connect
//! either, which (with failed backends ejected, below) means that no backend is up: the answer
//! for an empty set too. With every backend gone, every request gets 503.
//!
//! # Passive health
//!
//! The balancer ejects failing backends itself, with tower-lb's
//! [outlier detection](tower_lb::health) ([`GatewayConfig::outlier_detection`]): after
//! [`GatewayConfig::eject_after`] failures in a row (default 1), a backend is ejected for 250 ms,
//! doubling with every ejection in a row up to 8 s, and no request is routed to it meanwhile, so
//! that concurrent requests and retries stop trying it. Once its time is over, requests try it
//! again; a success clears its backoff. A failure is an error from the backend (a failed
//! connection, or a failed exchange) or a 502, 503 or 504 answer ([`is_backend_failure`]); a
//! request cut short by the gateway's timeout is not counted either way.
//!
//! Any number of backends may be ejected at once. When every one is, the balancer is in *panic
//! mode*: it routes over all of them as if none were ejected, so that a wrong ejection never
//! costs the service, and a backend that came back serves at once. With every backend really
//! gone, those connections fail too, and the request gets 503 as above.
//!
//! With the hash strategies, a retry goes to the key's own backend again until that backend is
//! ejected, and only then to the key's next one: with `eject_after` above 1, requests whose key
//! maps to a backend that is down can use up their retries on it and get 503.
//!
//! The balancer's per-endpoint statistics (picks, failures, ejections) are read through
//! [`Gateway::stats`].

use std::{
    error::Error,
    fmt,
    future::{ready, Ready},
    io,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request as AxumRequest, State},
    http::{
        header::{self, HeaderName},
        uri::{Authority, PathAndQuery},
        HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri,
    },
    Router,
};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower::{
    retry::Policy, timeout::error::Elapsed, util::BoxCloneSyncService, Layer, Service,
    ServiceBuilder, ServiceExt,
};
use tower_lb::{
    error::{InvalidConfig, InvalidWeight, MissingKey, NoEndpoints, Unavailable},
    health::OutlierDetection,
    key,
    strategy::{ConsistentHash, Hash, RoundRobin, Route, WeightedRoundRobin},
    BalanceLayer, BoxError, EndpointStats, Endpoints,
};

/// The largest request body the gateway accepts by default: bodies are buffered so that a retry
/// can send them again, so they must be bounded.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// The key used by the hash strategies for a request without one.
pub const DEFAULT_KEY: &str = "default_key";

/// The response header naming the endpoint (its key) that served the request; the demo counts by
/// it. It reveals the backend topology, which a public gateway might rather hide.
pub const UPSTREAM_HEADER: &str = "x-upstream";

/// The first ejection of a failing backend; doubled for every further ejection in a row.
pub const EJECT_FIRST: Duration = Duration::from_millis(250);
/// The longest ejection: an ejected backend is tried again at least this often.
pub const EJECT_MAX: Duration = Duration::from_secs(8);

/// How the gateway picks a backend for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StrategyKind {
    /// [`RoundRobin`]: each backend in turn.
    #[default]
    RoundRobin,
    /// [`WeightedRoundRobin`]: each backend its weight's share, interleaved.
    Weighted,
    /// [`Hash`]: crc32 of the request key mod N.
    Hash,
    /// [`ConsistentHash`]: a ketama ring keyed by the request key.
    Consistent,
}

impl StrategyKind {
    /// Whether the strategy routes by a request key.
    pub fn is_keyed(self) -> bool {
        matches!(self, Self::Hash | Self::Consistent)
    }

    /// Whether the strategy uses endpoint weights.
    pub fn uses_weights(self) -> bool {
        self != Self::RoundRobin
    }
}

impl FromStr for StrategyKind {
    type Err = ConfigError;

    fn from_str(name: &str) -> Result<Self, ConfigError> {
        match name {
            "round-robin" => Ok(Self::RoundRobin),
            "weighted" => Ok(Self::Weighted),
            "hash" => Ok(Self::Hash),
            "consistent" => Ok(Self::Consistent),
            other => Err(ConfigError::UnknownStrategy(other.to_owned())),
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RoundRobin => "round-robin",
            Self::Weighted => "weighted",
            Self::Hash => "hash",
            Self::Consistent => "consistent",
        })
    }
}

/// Where the hash strategies find a request's key: `query:NAME` or `header:NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The first value of a query parameter.
    Query(String),
    /// The first value of a header.
    Header(HeaderName),
}

impl Default for KeySource {
    fn default() -> Self {
        Self::Query("key".to_owned())
    }
}

impl FromStr for KeySource {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadKey(spec.to_owned());
        match spec.split_once(':') {
            Some(("query", name)) if !name.is_empty() => Ok(Self::Query(name.to_owned())),
            Some(("header", name)) => HeaderName::from_str(name)
                .map(Self::Header)
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Query(name) => write!(f, "query:{name}"),
            Self::Header(name) => write!(f, "header:{name}"),
        }
    }
}

/// A backend the gateway forwards to: its endpoint key and its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The endpoint's key in the set: what the hash strategies hash, and what [`UPSTREAM_HEADER`]
    /// shows.
    pub key: String,
    /// The backend's `host:port`.
    pub authority: Authority,
}

impl Target {
    /// A backend at `addr`, keyed by `key`.
    pub fn new(key: impl Into<String>, addr: SocketAddr) -> Self {
        let authority =
            Authority::from_str(&addr.to_string()).expect("a socket address is a valid authority");
        Self {
            key: key.into(),
            authority,
        }
    }

    /// A backend given as `http://host:port` (a trailing `/` is allowed), keyed by its
    /// `host:port`, so that gateways configured with the same URLs hash keys alike.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let bad = |why: &'static str| ConfigError::BadBackend(url.to_owned(), why);
        let uri = Uri::from_str(url).map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(bad("only http:// is supported")),
            None => return Err(bad("expected http://host:port")),
        }
        if !matches!(
            uri.path_and_query().map(PathAndQuery::as_str),
            None | Some("/")
        ) {
            return Err(bad("a path prefix is not supported"));
        }
        let authority = uri.authority().cloned().ok_or(bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials are not supported"));
        }
        Ok(Self {
            key: authority.to_string(),
            authority,
        })
    }

    /// The backend's base URL, `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// The gateway's settings, apart from its backends.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// How backends are picked.
    pub strategy: StrategyKind,
    /// One weight (at least 1) per backend, in order; `None` gives every backend weight 1.
    /// Used by the weighted and hash strategies.
    pub weights: Option<Vec<u32>>,
    /// Where the hash strategies find the request key; requests without one use [`DEFAULT_KEY`].
    pub key: KeySource,
    /// The time limit for a response head, retries included.
    pub timeout: Duration,
    /// How many times a failed request may be sent again (see the [module docs](self)).
    pub retries: usize,
    /// Failures in a row after which a backend is ejected (at least 1); see the
    /// [module docs](self#passive-health).
    pub eject_after: u32,
    /// The largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// The worker threads that will serve the gateway ([`Workers`]); each gets its own pool of
    /// backend connections. 0 when it is served by a tokio runtime of the caller's instead.
    pub workers: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            strategy: StrategyKind::RoundRobin,
            weights: None,
            key: KeySource::default(),
            timeout: Duration::from_millis(2000),
            retries: 2,
            eject_after: 1,
            max_body_bytes: MAX_BODY_BYTES,
            workers: 0,
        }
    }
}

impl GatewayConfig {
    /// Checks the settings against the number of backends, before anything is started.
    pub fn check(&self, backends: usize) -> Result<(), ConfigError> {
        if backends == 0 {
            return Err(ConfigError::NoBackends);
        }
        if let Some(weights) = &self.weights {
            if !self.strategy.uses_weights() {
                return Err(ConfigError::WeightsUnused(self.strategy));
            }
            if weights.len() != backends {
                return Err(ConfigError::WeightCount {
                    weights: weights.len(),
                    backends,
                });
            }
            if let Some(position) = weights.iter().position(|&w| w == 0) {
                return Err(ConfigError::ZeroWeight {
                    backend: position + 1,
                });
            }
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        self.outlier_detection()
            .map_err(ConfigError::OutlierDetection)?;
        Ok(())
    }

    /// The balancer's passive health settings: ejection after [`eject_after`](Self::eject_after)
    /// failures in a row, for [`EJECT_FIRST`] doubling up to [`EJECT_MAX`], any share of the
    /// backends at once, and panic mode when all are ejected.
    ///
    /// Any share, rather than tower-lb's default of half, because a refused connection is cheap
    /// to detect but each one costs a retry (and an unanswered one a connect timeout): with two
    /// of three backends down, the second should be passed over as well. Panic mode keeps
    /// serving if that was wrong.
    pub fn outlier_detection(&self) -> Result<OutlierDetection, InvalidConfig> {
        OutlierDetection::new()
            .consecutive_failures(self.eject_after)?
            // Base first: the maximum may not be set below the current base (10 s by default).
            .base_ejection_time(EJECT_FIRST)?
            .max_ejection_time(EJECT_MAX)?
            .max_ejected_share(1.0)
    }
}

/// A configuration the gateway cannot run with.
#[derive(Debug)]
pub enum ConfigError {
    /// No backend to forward to.
    NoBackends,
    /// Two backends with the same endpoint key.
    DuplicateBackend(String),
    /// A `--backend` URL that is not `http://host:port`, and why.
    BadBackend(String, &'static str),
    /// A strategy name that is not one of `round-robin`, `weighted`, `hash`, `consistent`.
    UnknownStrategy(String),
    /// A key source that is not `query:NAME` or `header:NAME`.
    BadKey(String),
    /// Weights given to a strategy that ignores them.
    WeightsUnused(StrategyKind),
    /// Not one weight per backend.
    WeightCount {
        /// Weights given.
        weights: usize,
        /// Backends configured.
        backends: usize,
    },
    /// A weight of 0, for the `backend`-th backend (from 1).
    ZeroWeight {
        /// The backend's position, from 1.
        backend: usize,
    },
    /// A weight the endpoint set rejected.
    Weight(InvalidWeight),
    /// A zero timeout, which would fail every request.
    ZeroTimeout,
    /// Passive health settings the balancer rejected, such as ejection after 0 failures.
    OutlierDetection(InvalidConfig),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoBackends => f.write_str("no backends to balance"),
            Self::DuplicateBackend(key) => write!(f, "backend {key} is given twice"),
            Self::BadBackend(url, why) => write!(f, "bad backend URL {url:?}: {why}"),
            Self::UnknownStrategy(name) => write!(
                f,
                "unknown strategy {name:?}: expected round-robin, weighted, hash or consistent"
            ),
            Self::BadKey(spec) => write!(
                f,
                "bad key source {spec:?}: expected query:NAME or header:NAME"
            ),
            Self::WeightsUnused(strategy) => write!(
                f,
                "weights have no effect with the {strategy} strategy: use weighted, hash or consistent"
            ),
            Self::WeightCount { weights, backends } => write!(
                f,
                "{weights} weights for {backends} backends: give one weight per backend"
            ),
            Self::ZeroWeight { backend } => write!(
                f,
                "backend {backend} has weight 0: weights must be at least 1 (remove a backend instead)"
            ),
            Self::Weight(error) => error.fmt(f),
            Self::ZeroTimeout => f.write_str("the timeout must be at least 1 ms"),
            Self::OutlierDetection(error) => error.fmt(f),
        }
    }
}

impl Error for ConfigError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Weight(error) => Some(error),
            Self::OutlierDetection(error) => Some(error),
            _ => None,
        }
    }
}

/// The balanced stack behind the router, the same type for every strategy.
pub type GatewayService = BoxCloneSyncService<Request<Bytes>, Response<Incoming>, BoxError>;

/// A built gateway: see [`gateway`].
#[derive(Debug)]
pub struct Gateway {
    /// Forwards every request. Serve it with [`Server`] (or with axum's connect info, which gives
    /// `x-forwarded-for`).
    pub router: Router,
    /// The endpoint set balanced over (keyed by [`Target::key`]): its handle inserts or removes
    /// backends at runtime.
    pub endpoints: Endpoints<String, HttpEndpoint>,
    /// The balancer's per-endpoint statistics.
    pub stats: Stats,
}

/// Builds the gateway for `targets`: the router, the endpoint set and the balancer's statistics.
pub fn gateway(targets: &[Target], config: &GatewayConfig) -> Result<Gateway, ConfigError> {
    config.check(targets.len())?;
    for (i, target) in targets.iter().enumerate() {
        if targets[..i].iter().any(|t| t.key == target.key) {
            return Err(ConfigError::DuplicateBackend(target.key.clone()));
        }
    }
    // The connect timeout leaves room for every attempt within the overall timeout, so that a
    // backend that does not answer SYNs is failed over instead of using up the whole budget.
    let attempts = u32::try_from(config.retries.saturating_add(1)).unwrap_or(u32::MAX);
    let connect_timeout = (config.timeout / attempts).max(Duration::from_millis(1));
    let weights = config
        .weights
        .clone()
        .unwrap_or_else(|| vec![1; targets.len()]);
    let endpoints = Endpoints::try_from_weighted(targets.iter().zip(weights).map(|(t, w)| {
        let endpoint = HttpEndpoint::new(t, connect_timeout, config.workers);
        (t.key.clone(), endpoint, w)
    }))
    .map_err(ConfigError::Weight)?;
    let detection = config
        .outlier_detection()
        .map_err(ConfigError::OutlierDetection)?;

    let (service, stats) = match (&config.strategy, &config.key) {
        (StrategyKind::RoundRobin, _) => stack(RoundRobin::new(), &endpoints, &detection, config),
        (StrategyKind::Weighted, _) => {
            stack(WeightedRoundRobin::new(), &endpoints, &detection, config)
        }
        (StrategyKind::Hash, KeySource::Query(name)) => stack(
            Hash::new(key::query(name).or(DEFAULT_KEY)),
            &endpoints,
            &detection,
            config,
        ),
        (StrategyKind::Hash, KeySource::Header(name)) => stack(
            Hash::new(key::header(name.clone()).or(DEFAULT_KEY)),
            &endpoints,
            &detection,
            config,
        ),
        (StrategyKind::Consistent, KeySource::Query(name)) => stack(
            ConsistentHash::new(key::query(name).or(DEFAULT_KEY)),
            &endpoints,
            &detection,
            config,
        ),
        (StrategyKind::Consistent, KeySource::Header(name)) => stack(
            ConsistentHash::new(key::header(name.clone()).or(DEFAULT_KEY)),
            &endpoints,
            &detection,
            config,
        ),
    };
    let state = GatewayState {
        service,
        max_body_bytes: config.max_body_bytes,
    };
    let router = Router::new().fallback(forward).with_state(state);
    Ok(Gateway {
        router,
        endpoints,
        stats,
    })
}

/// timeout(retry(balance(endpoints))): the timeout bounds the whole request, retries included,
/// and every retry goes through the balancer again, which passes over the backends ejected by
/// then (the one that just failed, with the default [`GatewayConfig::eject_after`]).
///
/// Also returns a handle on the balancer's statistics, taken before the balancer disappears
/// into the boxed stack.
fn stack<St>(
    strategy: St,
    endpoints: &Endpoints<String, HttpEndpoint>,
    detection: &OutlierDetection,
    config: &GatewayConfig,
) -> (GatewayService, Stats)
where
    St: Route<String, Request<Bytes>> + Clone,
{
    let balance = BalanceLayer::new(strategy)
        .outlier_detection(detection.clone())
        .classify(is_backend_failure::<Incoming>)
        .layer(endpoints.clone());
    // A clone shares the counts and the ejections; one that is never polled pins nothing.
    let observed = balance.clone();
    let stats = Stats(Arc::new(move || observed.stats()));
    let service = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .timeout(config.timeout)
            .retry(RetryPolicy::new(config.retries))
            .service(balance),
    );
    (service, stats)
}

/// Whether a backend's answer counts as its failure for outlier detection (errors always do):
/// 502, 503 and 504, with which a backend says that it, or what it depends on, cannot serve now.
///
/// Not every 5xx, as tower-lb's [`ServerErrors`](tower_lb::health::ServerErrors) would: a 500
/// more often comes from one request (a malformed image) than from the backend, and with ejection
/// after one failure a client could then eject healthy backends at will.
pub fn is_backend_failure<B>(response: &Response<B>) -> bool {
    matches!(
        response.status(),
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The balancer's per-endpoint statistics, whatever the strategy: a cheap handle on the balancer
/// behind the router.
#[derive(Clone)]
pub struct Stats(Arc<dyn Fn() -> Vec<EndpointStats<String>> + Send + Sync>);

impl Stats {
    /// Every endpoint's statistics now, in set order: see [`tower_lb::Balance::stats`].
    pub fn snapshot(&self) -> Vec<EndpointStats<String>> {
        (self.0)()
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Stats").field(&self.snapshot()).finish()
    }
}

/// One backend as an endpoint of the set: hyper-util clients (each with its own connection
/// pool) and the backend's address. Cheap to clone: clones share the pools.
///
/// A gateway served by [`Workers`] gives each worker thread a pool of its own, so that a request
/// goes out on a connection driven by the thread that serves it, instead of waking another
/// thread that drives that connection. Other threads share one more pool.
#[derive(Clone)]
pub struct HttpEndpoint {
    key: Arc<str>,
    /// The key as a header value, made once rather than per response.
    key_header: HeaderValue,
    authority: Authority,
    clients: Arc<[Client<HttpConnector, Full<Bytes>>]>,
}

impl HttpEndpoint {
    /// An endpoint for `target`, whose connections must be made within `connect_timeout`, with a
    /// connection pool for each of `workers` worker threads and one for other threads.
    pub fn new(target: &Target, connect_timeout: Duration, workers: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let clients = (0..=workers)
            .map(|_| Client::builder(TokioExecutor::new()).build(connector.clone()))
            .collect();
        Self {
            key: target.key.as_str().into(),
            key_header: HeaderValue::from_str(&target.key)
                .unwrap_or_else(|_| HeaderValue::from_static("?")),
            authority: target.authority.clone(),
            clients,
        }
    }

    /// The pool of the calling thread.
    fn client(&self) -> &Client<HttpConnector, Full<Bytes>> {
        let worker = WORKER.with(std::cell::Cell::get);
        self.clients.get(worker).unwrap_or(&self.clients[0])
    }
}

thread_local! {
    /// The number of the [`Workers`] thread this is (from 1), 0 on other threads.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl fmt::Debug for HttpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("key", &self.key)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Service<Request<Bytes>> for HttpEndpoint {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The client is always ready: its pool queues requests. Failing backends are the
        // balancer's to eject, from the outcomes of the requests.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        // Only the configured backend's address goes into the URI: the request's own Host or
        // absolute URI never chooses where it goes.
        let mut uri = parts.uri.into_parts();
        uri.scheme = Some(axum::http::uri::Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        parts.uri = Uri::from_parts(uri).expect("scheme, authority and path make a valid URI");
        let sent = self
            .client()
            .request(Request::from_parts(parts, Full::new(body)));

        let key = Arc::clone(&self.key);
        let key_header = self.key_header.clone();
        Box::pin(async move {
            match sent.await {
                Ok(mut response) => {
                    let name = HeaderName::from_static(UPSTREAM_HEADER);
                    response.headers_mut().insert(name, key_header);
                    Ok(response)
                }
                Err(error) if error.is_connect() => {
                    Err(BackendError::new(&key, Failure::Connect, error.into()).into())
                }
                Err(error) => Err(BackendError::new(&key, Failure::Exchange, error.into()).into()),
            }
        })
    }
}

/// How a request to one backend failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made: the request never reached the backend.
    Connect,
    /// The connection was made (or reused), then the exchange failed before a response head.
    Exchange,
}

/// A request to one backend failed.
#[derive(Debug)]
pub struct BackendError {
    backend: Arc<str>,
    failure: Failure,
    source: BoxError,
}

impl BackendError {
    fn new(backend: &Arc<str>, failure: Failure, source: BoxError) -> Self {
        Self {
            backend: Arc::clone(backend),
            failure,
            source,
        }
    }

    /// How it failed.
    pub fn failure(&self) -> Failure {
        self.failure
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.failure {
            Failure::Connect => write!(f, "could not connect to {}", self.backend),
            Failure::Exchange => write!(f, "{} failed the request", self.backend),
        }
    }
}

impl Error for BackendError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// Every attempt the retry budget allowed ended with the last one unable to connect: the request
/// reached no backend that could serve it.
#[derive(Debug)]
pub struct NoBackendReachable {
    attempts: usize,
    source: BoxError,
}

impl fmt::Display for NoBackendReachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no backend could be reached ({} attempts)",
            self.attempts
        )
    }
}

impl Error for NoBackendReachable {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// The retry policy: failed connections are retried for every method, failed exchanges only
/// for idempotent ones; at most `retries` times. See the [module docs](self).
///
/// tower's `Retry` clones the policy for every request, so the attempt count is per request.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    retries: usize,
    attempts: usize,
}

impl RetryPolicy {
    /// Allows `retries` retries per request.
    pub fn new(retries: usize) -> Self {
        Self {
            retries,
            attempts: 0,
        }
    }
}

impl Policy<Request<Bytes>, Response<Incoming>, BoxError> for RetryPolicy {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        request: &mut Request<Bytes>,
        result: &mut Result<Response<Incoming>, BoxError>,
    ) -> Option<Ready<()>> {
        self.attempts += 1;
        let Err(error) = result else {
            return None;
        };
        let failure = error.downcast_ref::<BackendError>()?.failure();
        let retryable = match failure {
            Failure::Connect => true,
            Failure::Exchange => is_idempotent(request.method()),
        };
        if retryable && self.attempts <= self.retries {
            return Some(ready(()));
        }
        if failure == Failure::Connect {
            let source = std::mem::replace(error, "".into());
            *error = Box::new(NoBackendReachable {
                attempts: self.attempts,
                source,
            });
        }
        None
    }

    fn clone_request(&mut self, request: &Request<Bytes>) -> Option<Request<Bytes>> {
        // The body is `Bytes`: cloning it is a reference count, not a copy.
        (self.retries > 0).then(|| request.clone())
    }
}

/// Methods that a server may receive twice with the effect of once (RFC 9110, 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The status the gateway answers for a failed request: see the [module docs](self).
pub fn status_for(error: &BoxError) -> StatusCode {
    if error.is::<Elapsed>() {
        StatusCode::GATEWAY_TIMEOUT
    } else if error.is::<NoEndpoints>()
        // No endpoint could take the request. Not produced by this stack (the endpoints are
        // always ready, and panic mode routes when every one is ejected), but it would mean 503.
        || error.is::<Unavailable>()
        || error.is::<NoBackendReachable>()
    {
        StatusCode::SERVICE_UNAVAILABLE
    } else if error.is::<MissingKey>() {
        StatusCode::BAD_REQUEST
    } else if let Some(error) = error.downcast_ref::<BackendError>() {
        match error.failure() {
            Failure::Exchange => StatusCode::BAD_GATEWAY,
            Failure::Connect => StatusCode::SERVICE_UNAVAILABLE,
        }
    } else {
        // Nothing else is produced by this stack: it would be a bug in the gateway.
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// Hop-by-hop headers (RFC 9110, 7.6.1), plus the non-standard `Proxy-Connection`: they describe
/// one connection, not the message, so a proxy drops them.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, and the headers that `Connection` names, from `headers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_str(name.trim()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

#[derive(Clone)]
struct GatewayState {
    service: GatewayService,
    max_body_bytes: usize,
}

/// The one handler: buffer the body (bounded), rewrite the headers, send through the balanced
/// stack, and pass the response back (streamed) or map the error to a status.
async fn forward(State(state): State<GatewayState>, request: AxumRequest) -> Response<Body> {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let (parts, body) = request.into_parts();
    if parts.method == Method::CONNECT {
        // A reverse proxy for its own backends does not open tunnels to anywhere.
        let message = "CONNECT is not supported: this gateway is not a forward proxy";
        return error_response(StatusCode::METHOD_NOT_ALLOWED, message);
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body_bytes as u64) {
        return too_large(state.max_body_bytes);
    }
    let body = match Limited::new(body, state.max_body_bytes).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => return too_large(state.max_body_bytes),
        Err(error) => {
            let message = format!("could not read the request body: {error}");
            return error_response(StatusCode::BAD_REQUEST, &message);
        }
    };

    let mut headers = parts.headers;
    let host = headers.remove(header::HOST);
    strip_hop_by_hop(&mut headers);
    // The body is buffered: hyper sets the length from it.
    headers.remove(header::CONTENT_LENGTH);
    add_forwarded(&mut headers, client, host);
    let mut outbound = Request::new(body);
    *outbound.method_mut() = parts.method;
    // Origin form: path and query only (the endpoint adds its own address).
    *outbound.uri_mut() = match parts.uri.path_and_query() {
        Some(path) => Uri::from(path.clone()),
        None => Uri::from_static("/"),
    };
    *outbound.headers_mut() = headers;

    match state.service.oneshot(outbound).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) => error_response(status_for(&error), &error_chain(&*error)),
    }
}

/// `x-forwarded-for` (the client appended to any earlier proxies), `x-forwarded-host` (the Host
/// the client asked for, since the backend gets its own) and `x-forwarded-proto`.
fn add_forwarded(headers: &mut HeaderMap, client: Option<IpAddr>, host: Option<HeaderValue>) {
    if let Some(client) = client {
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {client}"),
            None => client.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert("x-forwarded-for", value);
        }
    }
    if let Some(host) = host {
        headers.entry("x-forwarded-host").or_insert(host);
    }
    headers
        .entry("x-forwarded-proto")
        .or_insert(HeaderValue::from_static("http"));
}

fn too_large(limit: usize) -> Response<Body> {
    let message = format!("the request body is larger than {limit} bytes");
    error_response(StatusCode::PAYLOAD_TOO_LARGE, &message)
}

fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{status}: {message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The error and its sources, `outer: inner: innermost`.
fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text += &format!(": {error}");
        source = error.source();
    }
    text
}

/// A running HTTP server with graceful shutdown, on the caller's tokio runtime: the tests serve
/// the gateway with it (the example serves with [`Workers`]).
///
/// Dropping it starts the shutdown in the background; [`Server::stop`] waits for it.
#[derive(Debug)]
#[allow(dead_code)] // Used by the tests only.
pub struct Server {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

#[allow(dead_code)] // Used by the tests only.
impl Server {
    /// Binds `addr` (port 0 picks a free port) and serves `router` on it.
    pub async fn bind(addr: SocketAddr, router: Router) -> io::Result<Self> {
        Self::start(TcpListener::bind(addr).await?, router)
    }

    /// Serves `router` on `listener`, with the client's address available to handlers (for
    /// `x-forwarded-for`).
    pub fn start(listener: TcpListener, router: Router) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let (shutdown, signal) = oneshot::channel::<()>();
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            axum::serve(listener, service)
                // A dropped sender is a signal too: dropping the `Server` shuts it down.
                .with_graceful_shutdown(async {
                    let _ = signal.await;
                })
                .await
        });
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
    /// closes idle connections and waits for the requests in flight to complete.
    pub async fn stop(self) -> io::Result<()> {
        drop(self.shutdown);
        self.task.await.map_err(io::Error::other)?
    }
}

/// The gateway served by worker threads, each with a single-threaded tokio runtime and a
/// listening socket of its own on the same address (`SO_REUSEPORT`: the kernel spreads the
/// connections over them), the way nginx's worker processes serve: a connection is read,
/// forwarded and answered on one thread, with its own backend connections
/// ([`GatewayConfig::workers`]), so that no task moves between threads and no thread wakes
/// another. The balancer is one for all: the round-robin cursor, the ejections and the
/// statistics are shared.
///
/// Dropping it starts the shutdown in the background; [`Workers::stop`] waits for it.
#[derive(Debug)]
pub struct Workers {
    addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<io::Result<()>>>,
}

impl Workers {
    /// Binds `addr` (port 0 picks a free port) once per worker and serves `router` on
    /// `workers` threads (at least 1). Must be called within a tokio runtime, which binds the
    /// sockets.
    pub fn start(addr: SocketAddr, router: Router, workers: usize) -> io::Result<Self> {
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
        let (shutdown, signal) = tokio::sync::watch::channel(false);
        let mut threads = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let router = router.clone();
            let mut signal = signal.clone();
            let thread = std::thread::Builder::new()
                .name(format!("gateway-worker-{}", i + 1))
                .spawn(move || {
                    WORKER.with(|worker| worker.set(i + 1));
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        let service = router.into_make_service_with_connect_info::<SocketAddr>();
                        axum::serve(listener, service)
                            .with_graceful_shutdown(async move {
                                // A dropped sender is a signal too.
                                let _ = signal.wait_for(|stop| *stop).await;
                            })
                            .await
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
    /// flight to complete, on every worker.
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
