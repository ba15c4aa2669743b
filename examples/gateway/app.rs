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
//! | a request body stalled for [`GatewayConfig::body_timeout`] | 408 Request Timeout |
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
//! methods only), at most [`GatewayConfig::retries`] times, and the balancer routes every retry to
//! an endpoint the request has not tried: a keyed request goes to its key's next endpoint. A
//! backend failing [`GatewayConfig::eject_after`] times in a row (an error, or a 502, 503 or 504)
//! is ejected for `EJECT_FIRST` (250 ms), doubling up to `EJECT_MAX` (8 s); with every backend
//! ejected, the balancer routes over all of them (panic mode).
//!
//! Request bodies up to `REPLAY_BYTES` (64 KiB) with a declared length are read whole first, so
//! that any retry can resend them; longer ones are streamed to the backend as they arrive
//! ([`SharedBody`]), and a retry can resend such a body only if the failed attempt never started
//! to send it: a refused connection, the one failure retried for every method.

use std::{error::Error, fmt, net::SocketAddr, sync::Arc, time::Duration};

use axum::body::Body;
use bytes::Bytes;
use http::{
    header::{self, HeaderName, HeaderValue},
    uri::Authority,
    HeaderMap, Method, Request, Response, StatusCode, Version,
};
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
    http::{status_code, HostHeader, Origin},
    key,
    retry::{Policy, RetryLayer},
    strategy::{
        ConsistentHash, Hash, Maglev, PowerOfTwoChoices, Random, RoundRobin, Route,
        WeightedRoundRobin,
    },
    BalanceLayer, BoxError, EndpointStats, Endpoints,
};

use crate::{
    body::SharedBody,
    config::{Balancer, ConfigError, GatewayConfig, KeySource, StrategyKind, Target, DEFAULT_KEY},
};

/// The response header naming the endpoint (its key) that served the request; the demo counts by
/// it. It reveals the backend topology, which a public gateway might rather hide.
pub const UPSTREAM_HEADER: &str = "x-upstream";

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
            // A streamed body over the cap, or stalled, surfaces as the backend client's error;
            // the fault is the client's, as nginx's 413 and 408 say.
            let status = if chain(&*error).any(|e| e.is::<LengthLimitError>()) {
                StatusCode::PAYLOAD_TOO_LARGE
            } else if chain(&*error).any(|e| e.is::<tower_http::timeout::TimeoutError>()) {
                StatusCode::REQUEST_TIMEOUT
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
        .filter_map(|token| HeaderName::try_from(token.trim()).ok())
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
