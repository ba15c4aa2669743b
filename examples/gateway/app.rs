//! The gateway's request path: every request goes through a tower stack, `timeout(retry(balance(
//! endpoints)))`, to one backend, each endpoint a hyper-util client bound to its backend by
//! [`Origin`].
//!
//! # What a client sees
//!
//! | what happened | status |
//! |---|---|
//! | an HTTP/1.1 request without a valid `Host`; an HTTP/1.0 request with `Transfer-Encoding` | 400 Bad Request |
//! | a `Transfer-Encoding` other than `chunked` (`gzip, chunked`, ...) | 501 Not Implemented |
//! | a `CONNECT` request: this is not a forward proxy | 405 Method Not Allowed |
//! | a body over [`GatewayConfig::max_body_bytes`] (declared, or once crossed) | 413 Payload Too Large |
//! | no routing key, the set empty, a backend failing: tower-lb's [status mapping](status_code) | 400, 503, 502 |
//! | no response head within [`GatewayConfig::timeout`], retries included | 504 Gateway Timeout |
//!
//! Requests are passed on with their hop-by-hop headers removed (`Connection` and the headers it
//! names, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-*`), `Host` set
//! to the backend's address, `X-Forwarded-For` extended with the client's address, and
//! `X-Forwarded-Host` and `X-Forwarded-Proto` set by the gateway, whatever the client sent.
//! Responses lose their hop-by-hop headers too and gain [`UPSTREAM_HEADER`].
//!
//! # Retries and passive health
//!
//! tower-lb's [retry policy](tower_lb::retry) sends a request again when it never reached a
//! backend (any method) or when its exchange failed or was answered 502, 503 or 504 (idempotent
//! methods only), at most [`GatewayConfig::retries`] times, and the balancer routes every retry
//! to an endpoint the request has not tried: a keyed request goes to its key's next endpoint.
//! A backend failing [`GatewayConfig::eject_after`] times in a row (an error, or a 502, 503 or
//! 504) is ejected for [`EJECT_FIRST`], doubling up to [`EJECT_MAX`]; with every backend
//! ejected, the balancer routes over all of them (panic mode).
//!
//! Request bodies up to [`REPLAY_BYTES`] with a declared length are read whole first, so that
//! any retry can resend them; longer ones are streamed to the backend as they arrive
//! ([`SharedBody`]), and a retry can resend such a body only if the failed attempt never started
//! to send it: a refused connection, the one failure retried for every method.

use std::{
    error::Error,
    fmt,
    net::SocketAddr,
    pin::Pin,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http::{
    header::{self, HeaderName, HeaderValue},
    uri::Authority,
    HeaderMap, Method, Request, Response, StatusCode, Version,
};
use http_body::{Frame, SizeHint};
use http_body_util::LengthLimitError;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use tower::{
    balance::p2c,
    buffer::Buffer,
    discover::ServiceList,
    load::{CompleteOnResponse, PendingRequestsDiscover},
    util::BoxCloneSyncService,
    Layer, ServiceBuilder, ServiceExt,
};
use tower_http::{
    set_header::{SetResponseHeader, SetResponseHeaderLayer},
    timeout::{ResponseBodyTimeout, ResponseBodyTimeoutLayer, TimeoutBody},
};
use tower_lb::{
    error::{InvalidConfig, InvalidWeight},
    health::OutlierDetection,
    http::{status_code, HostHeader, Origin},
    key,
    retry::{Policy, RetryLayer},
    strategy::{
        ConsistentHash, Hash, Maglev, PowerOfTwoChoices, Random, RoundRobin, Route,
        WeightedRoundRobin,
    },
    BalanceLayer, BoxError, EndpointStats, Endpoints,
};

/// The largest request body the gateway accepts by default (nginx's `client_max_body_size` is
/// 1 MiB; images are larger).
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// Request bodies of at most this many bytes, declared by `Content-Length`, are read whole before
/// they are forwarded, so that a retry can send them again (nginx's `client_body_buffer_size`
/// plays the same part); longer ones are streamed.
pub const REPLAY_BYTES: u64 = 64 << 10;

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
    /// [`Maglev`]: Maglev's lookup table keyed by the request key.
    Maglev,
    /// [`PowerOfTwoChoices`]: the less loaded of two random backends.
    P2c,
    /// [`Random`]: a weighted random backend.
    Random,
}

impl StrategyKind {
    /// Every strategy, in the order `--help` lists them.
    pub const ALL: [Self; 7] = [
        Self::RoundRobin,
        Self::Weighted,
        Self::Hash,
        Self::Consistent,
        Self::Maglev,
        Self::P2c,
        Self::Random,
    ];

    /// Whether the strategy routes by a request key.
    pub fn is_keyed(self) -> bool {
        matches!(self, Self::Hash | Self::Consistent | Self::Maglev)
    }

    /// Whether the strategy uses endpoint weights.
    pub fn uses_weights(self) -> bool {
        !matches!(self, Self::RoundRobin | Self::P2c)
    }
}

impl FromStr for StrategyKind {
    type Err = ConfigError;

    fn from_str(name: &str) -> Result<Self, ConfigError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.to_string() == name)
            .ok_or_else(|| ConfigError::UnknownStrategy(name.to_owned()))
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RoundRobin => "round-robin",
            Self::Weighted => "weighted",
            Self::Hash => "hash",
            Self::Consistent => "consistent",
            Self::Maglev => "maglev",
            Self::P2c => "p2c",
            Self::Random => "random",
        })
    }
}

/// Which balancer the gateway runs: tower-lb, or tower's own for comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balancer {
    /// tower-lb's [`BalanceLayer`] with the configured strategy and outlier detection.
    #[default]
    TowerLb,
    /// `tower::balance::p2c::Balance` over pending-request load, behind `tower::buffer::Buffer`
    /// (the way a tower user shares it between connections): the end-to-end benchmark's peer.
    /// No strategy, weights or outlier detection; everything else is the same.
    TowerP2c,
}

impl FromStr for Balancer {
    type Err = ConfigError;

    fn from_str(name: &str) -> Result<Self, ConfigError> {
        match name {
            "tower-lb" => Ok(Self::TowerLb),
            "tower-p2c" => Ok(Self::TowerP2c),
            other => Err(ConfigError::UnknownBalancer(other.to_owned())),
        }
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
    /// `host:port` as nginx keys `server host:port;`, so that gateways configured with the same
    /// URLs hash keys alike. tower-lb's [`Origin`] checks the URL.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let origin =
            Origin::try_new((), url).map_err(|e| ConfigError::BadBackend(e.to_string()))?;
        if origin.scheme() != &http::uri::Scheme::HTTP {
            return Err(ConfigError::BadBackend(format!(
                "{url}: only http:// backends are supported"
            )));
        }
        let authority = origin.authority().clone();
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

/// The gateway's settings, apart from its backends and its server's limits.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// How backends are picked.
    pub strategy: StrategyKind,
    /// tower-lb, or tower's p2c behind a buffer for comparison.
    pub balancer: Balancer,
    /// One weight (at least 1) per backend, in order; `None` gives every backend weight 1.
    pub weights: Option<Vec<u32>>,
    /// Where the keyed strategies find the request key; requests without one use [`DEFAULT_KEY`].
    pub key: KeySource,
    /// The time limit for a response head, retries included.
    pub timeout: Duration,
    /// How many times a failed request may be sent again (see the [module docs](self)).
    pub retries: usize,
    /// Failures in a row after which a backend is ejected (at least 1).
    pub eject_after: u32,
    /// The largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// The longest wait for the next piece of a body, in either direction: a client that stalls
    /// its request body, or a backend that stalls its response body, is cut off after it.
    pub body_timeout: Duration,
    /// Speak HTTP/2 to the backends (h2c, prior knowledge) instead of HTTP/1.1.
    pub backend_http2: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            strategy: StrategyKind::RoundRobin,
            balancer: Balancer::TowerLb,
            weights: None,
            key: KeySource::default(),
            timeout: Duration::from_millis(2000),
            retries: 2,
            eject_after: 1,
            max_body_bytes: MAX_BODY_BYTES,
            body_timeout: Duration::from_secs(60),
            backend_http2: false,
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
            if !self.strategy.uses_weights() || self.balancer == Balancer::TowerP2c {
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
        if self.timeout.is_zero() || self.body_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        self.outlier_detection()
            .map_err(ConfigError::OutlierDetection)?;
        Ok(())
    }

    /// The balancer's passive health settings: ejection after [`eject_after`](Self::eject_after)
    /// failures in a row, for [`EJECT_FIRST`] doubling up to [`EJECT_MAX`], any share of the
    /// backends at once (a refused connection is cheap to detect, but each costs a retry), and
    /// panic mode when all are ejected.
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
    BadBackend(String),
    /// A strategy name that is not one of [`StrategyKind::ALL`].
    UnknownStrategy(String),
    /// A balancer that is not `tower-lb` or `tower-p2c`.
    UnknownBalancer(String),
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
            Self::BadBackend(why) => f.write_str(why),
            Self::UnknownStrategy(name) => {
                let names: Vec<String> = StrategyKind::ALL.iter().map(|s| s.to_string()).collect();
                write!(f, "unknown strategy {name:?}: expected one of {}", names.join(", "))
            }
            Self::UnknownBalancer(name) => {
                write!(f, "unknown balancer {name:?}: expected tower-lb or tower-p2c")
            }
            Self::BadKey(spec) => write!(
                f,
                "bad key source {spec:?}: expected query:NAME or header:NAME"
            ),
            Self::WeightsUnused(strategy) => write!(
                f,
                "weights have no effect with the {strategy} strategy or tower's balancer"
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
            Self::ZeroTimeout => f.write_str("timeouts must be at least 1 ms"),
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

/// The hyper-util client every endpoint shares: one connection pool, per backend address.
pub type HttpClient = Client<HttpConnector, SharedBody>;

/// One endpoint: the shared client bound to one backend by tower-lb's [`Origin`], with tower-http's
/// response body timeout, naming itself in [`UPSTREAM_HEADER`].
pub type Upstream = SetResponseHeader<ResponseBodyTimeout<Origin<HttpClient>>, HeaderValue>;

/// A backend's response as the balanced stack returns it.
pub type UpstreamResponse = Response<TimeoutBody<Incoming>>;

/// The balanced stack, the same type for every strategy and balancer.
type Forward = BoxCloneSyncService<Request<SharedBody>, UpstreamResponse, BoxError>;

/// The gateway's service for one client request: it never fails, errors become statuses.
pub type GatewayService =
    BoxCloneSyncService<Request<Incoming>, Response<Body>, std::convert::Infallible>;

/// The client's address, put in each request's extensions by the server.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// A built gateway: see [`gateway`].
#[derive(Debug)]
pub struct Gateway {
    /// Forwards every request: serve it with [`crate::server::Server`].
    pub service: GatewayService,
    /// The endpoint set balanced over (keyed by [`Target::key`]); its handle inserts or removes
    /// backends at runtime. `None` with tower's balancer, whose set is fixed here.
    pub endpoints: Option<Endpoints<String, Upstream>>,
    /// The balancer's per-endpoint statistics (none with tower's balancer).
    pub stats: Stats,
}

/// Builds the gateway for `targets`: the service, the endpoint set and the statistics.
pub fn gateway(targets: &[Target], config: &GatewayConfig) -> Result<Gateway, ConfigError> {
    config.check(targets.len())?;
    for (i, target) in targets.iter().enumerate() {
        if targets[..i].iter().any(|t| t.key == target.key) {
            return Err(ConfigError::DuplicateBackend(target.key.clone()));
        }
    }
    let client = client(config);
    let upstreams = targets.iter().map(|t| {
        let origin = Origin::new(client.clone(), http::uri::Scheme::HTTP, t.authority.clone())
            .host(HostHeader::Backend);
        let name = HeaderValue::from_str(&t.key).unwrap_or(HeaderValue::from_static("?"));
        let endpoint = ServiceBuilder::new()
            .layer(SetResponseHeaderLayer::overriding(
                HeaderName::from_static(UPSTREAM_HEADER),
                name,
            ))
            .layer(ResponseBodyTimeoutLayer::new(config.body_timeout))
            .service(origin);
        (t.key.clone(), endpoint)
    });
    let (forward, endpoints, stats) = match config.balancer {
        Balancer::TowerLb => {
            let weights = config
                .weights
                .clone()
                .unwrap_or_else(|| vec![1; targets.len()]);
            let endpoints =
                Endpoints::try_from_weighted(upstreams.zip(weights).map(|((k, e), w)| (k, e, w)))
                    .map_err(ConfigError::Weight)?;
            let (forward, stats) = balanced(&endpoints, config)?;
            (forward, Some(endpoints), stats)
        }
        Balancer::TowerP2c => {
            let list = ServiceList::new(upstreams.map(|(_, e)| e).collect::<Vec<_>>());
            let balance = p2c::Balance::new(PendingRequestsDiscover::new(
                list,
                CompleteOnResponse::default(),
            ));
            let shared = Buffer::new(balance, 1024);
            let forward = Forward::new(
                ServiceBuilder::new()
                    .timeout(config.timeout)
                    .layer(RetryLayer::new(Policy::new().retries(config.retries)))
                    .service(shared),
            );
            (forward, None, Stats(Arc::new(Vec::new)))
        }
    };
    let max_body = config.max_body_bytes;
    let body_timeout = config.body_timeout;
    let version = if config.backend_http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let service = ServiceBuilder::new()
        // 413 at once for a declared length over the cap, and an error once a body crosses it.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .service_fn(move |request: Request<_>| {
            let forward = forward.clone();
            async move { Ok(proxy(forward, request, body_timeout, version).await) }
        })
        .map_response(|response: Response<_>| response.map(Body::new));
    Ok(Gateway {
        service: GatewayService::new(service),
        endpoints,
        stats,
    })
}

/// The shared backend client: keep-alive pooled, HTTP/1.1 or h2c, a connect timeout that leaves
/// room for every attempt within the overall timeout (so a backend that drops SYNs is failed
/// over), and room for responses with many headers (150 `Set-Cookie`s).
fn client(config: &GatewayConfig) -> HttpClient {
    let attempts = u32::try_from(config.retries.saturating_add(1)).unwrap_or(u32::MAX);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(
        (config.timeout / attempts).max(Duration::from_millis(1)),
    ));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http1_max_headers(1000)
        .http2_only(config.backend_http2)
        .build(connector)
}

/// tower-lb's balancer with the configured strategy under the retry policy and the timeout; and a
/// handle on its statistics, taken before it disappears into the boxed stack.
fn balanced(
    endpoints: &Endpoints<String, Upstream>,
    config: &GatewayConfig,
) -> Result<(Forward, Stats), ConfigError> {
    fn stack<St>(
        strategy: St,
        endpoints: &Endpoints<String, Upstream>,
        config: &GatewayConfig,
    ) -> Result<(Forward, Stats), ConfigError>
    where
        St: Route<String, Request<SharedBody>> + Clone + Send + Sync + 'static,
    {
        let detection = config
            .outlier_detection()
            .map_err(ConfigError::OutlierDetection)?;
        let balance = BalanceLayer::new(strategy)
            .outlier_detection(detection)
            .classify(is_backend_failure::<TimeoutBody<Incoming>>)
            .skip_tried_endpoints()
            .layer(endpoints.clone());
        // A clone shares the counts and the ejections.
        let observed = balance.clone();
        let forward = Forward::new(
            ServiceBuilder::new()
                .timeout(config.timeout)
                .layer(RetryLayer::new(Policy::new().retries(config.retries)))
                .service(balance),
        );
        Ok((forward, Stats(Arc::new(move || observed.stats()))))
    }
    let keyed = |name: &str| key::query(name).or(DEFAULT_KEY);
    match (config.strategy, &config.key) {
        (StrategyKind::RoundRobin, _) => stack(RoundRobin::new(), endpoints, config),
        (StrategyKind::Weighted, _) => stack(WeightedRoundRobin::new(), endpoints, config),
        (StrategyKind::P2c, _) => stack(PowerOfTwoChoices::new(), endpoints, config),
        (StrategyKind::Random, _) => stack(Random::new(), endpoints, config),
        (StrategyKind::Hash, KeySource::Query(q)) => stack(Hash::new(keyed(q)), endpoints, config),
        (StrategyKind::Consistent, KeySource::Query(q)) => {
            stack(ConsistentHash::new(keyed(q)), endpoints, config)
        }
        (StrategyKind::Maglev, KeySource::Query(q)) => {
            stack(Maglev::new(keyed(q)), endpoints, config)
        }
        (kind, KeySource::Header(h)) => {
            let by_header = key::header(h.clone()).or(DEFAULT_KEY);
            match kind {
                StrategyKind::Hash => stack(Hash::new(by_header), endpoints, config),
                StrategyKind::Consistent => {
                    stack(ConsistentHash::new(by_header), endpoints, config)
                }
                _ => stack(Maglev::new(by_header), endpoints, config),
            }
        }
    }
}

/// Forwards one request: checks it as nginx does, rewrites its headers, streams its body, and
/// turns a failure into a status.
async fn proxy<B>(
    forward: Forward,
    request: Request<B>,
    body_timeout: Duration,
    version: Version,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if let Err((status, why)) = check(&request) {
        return answer(status, why);
    }
    let (mut parts, body) = request.into_parts();
    let client = parts.extensions.get::<ClientAddr>().map(|c| c.0.ip());
    forwarded_headers(&mut parts.headers, client);
    parts.version = version;
    let body = match SharedBody::new(body, body_timeout).await {
        Ok(body) => body,
        Err(error) => {
            let status = if chain(&*error).any(|e| e.is::<tower_http::timeout::TimeoutError>()) {
                StatusCode::REQUEST_TIMEOUT
            } else if chain(&*error).any(|e| e.is::<LengthLimitError>()) {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return answer(status, error_chain(&*error));
        }
    };
    let request = Request::from_parts(parts, body);
    match forward.oneshot(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            remove_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) => {
            // A body over the cap surfaces as the backend client's error; it is the client's.
            let status = if chain(&*error).any(|e| e.is::<LengthLimitError>()) {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                status_code(&*error)
            };
            answer(status, error_chain(&*error))
        }
    }
}

/// What nginx refuses before proxying, with its statuses.
fn check<B>(request: &Request<B>) -> Result<(), (StatusCode, String)> {
    let bad = |why: &str| Err((StatusCode::BAD_REQUEST, why.to_owned()));
    if request.method() == Method::CONNECT {
        let why = "CONNECT is not supported: this gateway is not a forward proxy";
        return Err((StatusCode::METHOD_NOT_ALLOWED, why.to_owned()));
    }
    let headers = request.headers();
    if request.version() == Version::HTTP_11 {
        let mut hosts = headers.get_all(header::HOST).iter();
        let valid = match (hosts.next(), hosts.next()) {
            (Some(host), None) => Authority::try_from(host.as_bytes()).is_ok(),
            _ => false,
        };
        if !valid {
            return bad("an HTTP/1.1 request needs exactly one valid Host header");
        }
    }
    if let Some(coding) = headers.get(header::TRANSFER_ENCODING) {
        if request.version() < Version::HTTP_11 {
            return bad("an HTTP/1.0 request cannot have a Transfer-Encoding");
        }
        if !coding.as_bytes().eq_ignore_ascii_case(b"chunked")
            || headers.get_all(header::TRANSFER_ENCODING).iter().count() > 1
        {
            let why = "only the chunked transfer coding is supported";
            return Err((StatusCode::NOT_IMPLEMENTED, why.to_owned()));
        }
    }
    Ok(())
}

/// Headers that describe one connection, not the message (RFC 9110, 7.6.1), and those a proxy
/// consumes.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Removes the hop-by-hop headers, those `Connection` names included, and `Transfer-Encoding`
/// (the outgoing connection frames the body itself).
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_str(token.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// The request headers a reverse proxy owns: hop-by-hop ones removed, `X-Forwarded-For`
/// extended with the client's address (nginx's `$proxy_add_x_forwarded_for`), `X-Forwarded-Host`
/// and `X-Forwarded-Proto` replaced, so that a client cannot pass off its own values.
fn forwarded_headers(headers: &mut HeaderMap, client: Option<std::net::IpAddr>) {
    remove_hop_by_hop(headers);
    let host = headers.get(header::HOST).cloned();
    headers.remove("x-forwarded-host");
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(ip) = client {
        let ip = ip.to_canonical().to_string();
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip,
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert("x-forwarded-for", value);
        }
    }
}

fn answer(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Body::from(message + "\n"));
    *response.status_mut() = status;
    response
}

/// Whether a backend's answer counts as its failure for outlier detection (errors always do):
/// 502, 503 and 504, with which a backend says that it cannot serve now.
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
/// behind the gateway.
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

/// The error and its sources, outermost first.
fn chain<'a>(error: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |e| (*e).source())
}

/// The error and its sources, `outer: inner: innermost`.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    chain(error)
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

type BoxedBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A request body that the retry policy can clone: either read whole (at most [`REPLAY_BYTES`]),
/// or streamed. The clones of a streamed body share it, and the first clone polled takes it; a
/// retry's clone gets it only if the failed attempt never started sending it (a refused
/// connection), and otherwise fails its attempt with [`BodyAlreadySent`].
///
/// Each wait for the next piece of a body is bounded by tower-http's [`TimeoutBody`].
pub struct SharedBody {
    kind: Kind,
    size_hint: SizeHint,
}

enum Kind {
    /// Read whole: every clone sends all of it.
    Whole { bytes: Bytes, sent: bool },
    /// Streamed: the clones share one body.
    Streamed {
        shared: Arc<Mutex<Option<BoxedBody>>>,
        taken: Option<BoxedBody>,
        empty: bool,
    },
}

impl SharedBody {
    async fn new<B>(body: B, timeout: Duration) -> Result<Self, BoxError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        // Read before the timeout wrapper, which reports neither.
        let (size_hint, empty) = (body.size_hint(), body.is_end_stream());
        let body = TimeoutBody::new(timeout, body);
        let kind = match size_hint.exact() {
            Some(length) if length <= REPLAY_BYTES => Kind::Whole {
                bytes: body.collect().await?.to_bytes(),
                sent: false,
            },
            _ => Kind::Streamed {
                shared: Arc::new(Mutex::new(Some(body.boxed_unsync()))),
                taken: None,
                empty,
            },
        };
        Ok(Self { kind, size_hint })
    }
}

impl Clone for SharedBody {
    fn clone(&self) -> Self {
        let kind = match &self.kind {
            Kind::Whole { bytes, .. } => Kind::Whole {
                bytes: bytes.clone(),
                sent: false,
            },
            Kind::Streamed { shared, empty, .. } => Kind::Streamed {
                shared: Arc::clone(shared),
                taken: None,
                empty: *empty,
            },
        };
        Self {
            kind,
            size_hint: self.size_hint,
        }
    }
}

impl fmt::Debug for SharedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBody")
            .field("size_hint", &self.size_hint)
            .finish_non_exhaustive()
    }
}

/// A retry needed a request body that an earlier attempt had already started to send.
#[derive(Debug)]
pub struct BodyAlreadySent;

impl fmt::Display for BodyAlreadySent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body was already sent to another backend")
    }
}

impl Error for BodyAlreadySent {}

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Whole { sent: true, .. } => Poll::Ready(None),
            Kind::Whole { bytes, sent } => {
                *sent = true;
                match bytes.is_empty() {
                    true => Poll::Ready(None),
                    false => Poll::Ready(Some(Ok(Frame::data(bytes.clone())))),
                }
            }
            Kind::Streamed {
                shared,
                taken,
                empty,
            } => {
                if taken.is_none() {
                    let body = shared.lock().unwrap_or_else(PoisonError::into_inner).take();
                    match body {
                        Some(body) => *taken = Some(body),
                        None if *empty => return Poll::Ready(None),
                        None => return Poll::Ready(Some(Err(BodyAlreadySent.into()))),
                    }
                }
                let body = taken.as_mut().expect("taken above");
                Pin::new(body).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Whole { bytes, sent } => *sent || bytes.is_empty(),
            Kind::Streamed {
                taken: Some(body), ..
            } => body.is_end_stream(),
            Kind::Streamed { empty, .. } => *empty,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}
