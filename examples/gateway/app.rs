//! The gateway: forwards every request to one backend, picked by tower-lb, through
//! `tower::timeout` and `tower::retry`, on an HTTP/1.1 engine of its own ([`crate::proxy`] for
//! clients, [`crate::upstream`] for backends).
//!
//! # Errors, as the client sees them
//!
//! | what happened | status |
//! |---|---|
//! | a request head that is not HTTP/1.x, or whose body length is ambiguous (two different `Content-Length`s, or one beside `Transfer-Encoding`) | 400 Bad Request |
//! | a request head over 64 KiB or with more than 100 header lines | 431 Request Header Fields Too Large |
//! | a request body in a transfer coding other than chunked | 501 Not Implemented |
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
//! request cut short by the gateway's timeout counts as a failure when it had been with its
//! backend for a second or more (tower-lb's abandoned requests), and not at all otherwise.
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
    net::SocketAddr,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use axum::http::{
    header::HeaderName,
    uri::{Authority, PathAndQuery},
    Method, Request, Response, StatusCode, Uri,
};
use tower::{
    retry::Policy, timeout::error::Elapsed, util::BoxCloneSyncService, Layer, ServiceBuilder,
};
use tower_lb::{
    error::{InvalidConfig, InvalidWeight, MissingKey, NoEndpoints, Unavailable},
    health::OutlierDetection,
    key,
    strategy::{ConsistentHash, Hash, RoundRobin, Route, WeightedRoundRobin},
    BalanceLayer, BoxError, EndpointStats, Endpoints,
};

pub use crate::upstream::HttpEndpoint;
use crate::{
    proxy::Proxy,
    upstream::{Outbound, Upstream},
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
        OutlierDetection::builder()
            .consecutive_failures(self.eject_after)
            .base_ejection_time(EJECT_FIRST)
            .max_ejection_time(EJECT_MAX)
            .max_ejected_share(1.0)
            .build()
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

/// The balanced stack behind the [`Proxy`], the same type for every strategy.
pub type GatewayService = BoxCloneSyncService<Request<Outbound>, Response<Upstream>, BoxError>;

/// A built gateway: see [`gateway`].
#[derive(Debug)]
pub struct Gateway {
    /// Forwards every request: serve it with [`Workers`](crate::proxy::Workers) or
    /// [`Server`](crate::proxy::Server).
    pub proxy: Proxy,
    /// The endpoint set balanced over (keyed by [`Target::key`]): its handle inserts or removes
    /// backends at runtime.
    pub endpoints: Endpoints<String, HttpEndpoint>,
    /// The balancer's per-endpoint statistics.
    pub stats: Stats,
}

/// Builds the gateway for `targets`: the proxy, the endpoint set and the balancer's statistics.
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
    let key_header = match (&config.strategy.is_keyed(), &config.key) {
        (true, KeySource::Header(name)) => Some(name.clone()),
        _ => None,
    };
    Ok(Gateway {
        proxy: Proxy::new(service, config.max_body_bytes, key_header),
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
    St: Route<String, Request<Outbound>> + Clone,
{
    let balance = BalanceLayer::new(strategy)
        .outlier_detection(detection.clone())
        .classify(is_backend_failure::<Upstream>)
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
/// behind the proxy.
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
    /// A failure of `backend` (its key).
    pub fn new(backend: &Arc<str>, failure: Failure, source: BoxError) -> Self {
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

impl Policy<Request<Outbound>, Response<Upstream>, BoxError> for RetryPolicy {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        request: &mut Request<Outbound>,
        result: &mut Result<Response<Upstream>, BoxError>,
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

    fn clone_request(&mut self, request: &Request<Outbound>) -> Option<Request<Outbound>> {
        // The head and body are `Bytes`: cloning them is a reference count, not a copy.
        (self.retries > 0).then(|| request.clone())
    }
}

/// Methods that a server may receive twice with the effect of once (RFC 9110, 9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
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

/// The error and its sources, `outer: inner: innermost`.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text += &format!(": {error}");
        source = error.source();
    }
    text
}
