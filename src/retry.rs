//! Retries that know the balancer: a retry policy for HTTP requests, and retries that skip the
//! endpoints a request already tried.
//!
//! # The policy
//!
//! [`Policy`] implements [`tower::retry::Policy`] for `http::Request<B>` with a body that can be
//! cloned. It retries a failed attempt at once, up to [`Policy::retries`] times (2 by default),
//! while a shared retry budget allows it:
//!
//! | the attempt | idempotent method (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) | other methods (`POST`, `PATCH`, ...) |
//! |---|---|---|
//! | never reached an endpoint: [`Unavailable`](crate::error::Unavailable) (nothing ready), a refused connection, a connect error (hyper-util's with the `hyper-util` feature, tonic's with `tonic`) | retried | retried |
//! | failed its exchange: the endpoint's error (reset, broken connection, protocol error), a timeout between the retry and the balancer | retried | not retried |
//! | answered with a retried status: 502, 503, 504 by default ([`Policy::statuses`]) | retried | not retried |
//! | answered otherwise (2xx, 3xx, 4xx, 500, ...) | not retried | not retried |
//! | [`NoEndpoints`](crate::error::NoEndpoints), [`MissingKey`](crate::error::MissingKey), [`InvalidConfig`](crate::error::InvalidConfig), [`NotReady`](crate::error::NotReady), or [`Unavailable`](crate::error::Unavailable) because every endpoint is ejected and the balancer was told to fail fast | not retried: a retry would fail alike | not retried |
//!
//! The idempotent methods are those of RFC 9110 and can be replaced with
//! [`Policy::idempotent_methods`] (gRPC sends every call as `POST`: a client whose methods are
//! all safe to repeat may list `POST`).
//!
//! **Budget.** Every request deposits into a [`TpsBudget`] shared by the clones of the policy,
//! and every retry withdraws from it: by default retries may add 20% to the requests of the last
//! 10 seconds, plus 10 per second, so that in an outage retries cannot multiply the load on the
//! backends that are left. When the budget is spent, failures are returned as they are.
//! [`Policy::budget`] sets another one, or shares one between several clients.
//!
//! **Bodies.** `tower::retry` keeps a clone of each request to send it again, so the policy
//! applies to requests whose body is `Clone`: `Full<Bytes>`, `Bytes`, `String`, `()`,
//! `Empty<Bytes>`. A streaming body (`hyper::body::Incoming`, `tonic::body::Body`) cannot be
//! cloned, and such a stack does not compile: read the body into `Bytes` first (bounded, with
//! `http_body_util::Limited`), the way a proxy buffers a request it may have to send twice, or
//! leave that route without retries.
//!
//! # Skipping the endpoints already tried
//!
//! A retry wrapped by [`RetryLayer`] (tower's retry, plus an [`Attempts`] record in the request's
//! extensions, shared by every attempt's copy of the request) goes to an endpoint the request has
//! not tried yet, when the balancer is told to look with
//! [`BalanceLayer::skip_tried_endpoints`](crate::BalanceLayer::skip_tried_endpoints). The
//! balancer notes in the record each endpoint an attempt is sent to, and walks the next attempt
//! over its usual candidates passing those over, as it passes over ejected ones:
//!
//! | strategy | a retry goes to |
//! |---|---|
//! | `ConsistentHash` | the key's next endpoint on the ring that it has not tried |
//! | `Maglev` | the owner of the key's next table entry that it has not tried |
//! | `Hash` | the key's next endpoint in key-byte order that it has not tried |
//! | `RoundRobin`, `WeightedRoundRobin` | the rotation's next turn; if that turn is an endpoint it tried, the reservation is released and the turns after it are walked |
//! | `PowerOfTwoChoices`, `Random` | a new pick; if that is an endpoint it tried, the next draws |
//!
//! If every eligible endpoint was tried, the retry goes where a first attempt would. Healthy
//! endpoints' keys never move: only a request that failed is routed past its key's endpoint, and
//! only for that request.
//!
//! The record lives in the request's extensions, and the balancer reads it only when asked:
//! `Balance` is a `Service` of any request type, and only `http::Request` has extensions. For
//! another request type, implement [`ReadAttempts`] for it and pass it to
//! [`BalanceLayer::attempts`](crate::BalanceLayer::attempts).
//!
//! With tower's own `ServiceBuilder::retry`, the policy works the same but nothing records the
//! attempts (tower's `Policy::clone_request` sees the request only by reference, so it cannot
//! give the first attempt a record): keyless strategies then route a retry like a new request,
//! usually to another endpoint, and keyed strategies send it to the key's endpoint again until
//! outlier detection ejects that.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};
//! use tower_lb::{key, retry, strategy::ConsistentHash, BalanceLayer, BoxError, Endpoints};
//!
//! # tokio_test::block_on(async {
//! let backend = |name: &'static str| {
//!     tower::util::BoxCloneSyncService::new(service_fn(move |_req: Request<String>| async move {
//!         match name {
//!             "down" => Err::<Response<&str>, BoxError>("connection reset".into()),
//!             _ => Ok(Response::new(name)),
//!         }
//!     }))
//! };
//! let set = Endpoints::from_iter([("down", backend("down")), ("a", backend("a")), ("b", backend("b"))]);
//! let balance = BalanceLayer::new(ConsistentHash::new(key::query("key")))
//!     .skip_tried_endpoints()
//!     .layer(set);
//! // A key whose endpoint is the failing one.
//! let key = (0..).map(|i| format!("k{i}")).find(|k| balance.endpoint_for_key(k) == Some("down")).unwrap();
//!
//! let client = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(2))
//!     .layer(retry::RetryLayer::new(retry::Policy::new()))
//!     .service(balance.clone());
//! let request = Request::get(format!("/?key={key}")).body(String::new())?;
//! let response = client.oneshot(request).await?;
//! // The retry went to the key's next endpoint on the ring.
//! assert_ne!(*response.body(), "down");
//! # Ok::<(), BoxError>(())
//! # }).unwrap();
//! ```

use std::{
    fmt,
    future::{ready, Ready},
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use ::http::{Method, Request, Response, StatusCode};
use tower::retry::budget::{Budget, TpsBudget};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    failure::{failure, Failure},
    state::EndpointState,
    BoxError,
};

/// Which endpoints a request was sent to, shared by every attempt's copy of the request.
///
/// [`RetryLayer`] puts one in each request's extensions; a balancer told to
/// [skip tried endpoints](crate::BalanceLayer::skip_tried_endpoints) notes in it each endpoint an
/// attempt goes to, and routes the next attempt elsewhere. Clones share the record.
#[derive(Clone)]
pub struct Attempts {
    sent: Arc<Mutex<Vec<Arc<EndpointState>>>>,
}

impl Attempts {
    /// An empty record, with room for a few attempts: noting one allocates nothing on the
    /// request path.
    pub fn new() -> Self {
        Self {
            sent: Arc::new(Mutex::new(Vec::with_capacity(4))),
        }
    }

    /// How many times a balancer sent the request to an endpoint.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no balancer has sent the request yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<EndpointState>>> {
        // The list stays valid whatever a panicking holder did.
        self.sent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request is sent to the endpoint whose counters are `state`.
    pub(crate) fn record(&self, state: &Arc<EndpointState>) {
        self.lock().push(Arc::clone(state));
    }

    /// Whether the request was sent to the endpoint whose counters are `state`.
    pub(crate) fn contains(&self, state: &Arc<EndpointState>) -> bool {
        self.lock().iter().any(|s| Arc::ptr_eq(s, state))
    }

    /// The endpoints the request was sent to, each once.
    pub(crate) fn tried(&self) -> Vec<Arc<EndpointState>> {
        let sent = self.lock();
        let mut tried: Vec<Arc<EndpointState>> = Vec::with_capacity(sent.len());
        for state in sent.iter() {
            if !tried.iter().any(|s| Arc::ptr_eq(s, state)) {
                tried.push(Arc::clone(state));
            }
        }
        tried
    }
}

impl Default for Attempts {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempts")
            .field("sent", &self.len())
            .finish()
    }
}

/// Finds a request's [`Attempts`] record, for a balancer that skips the endpoints a request
/// already tried (see the [module docs](self)).
///
/// Implement it for a request type other than `http::Request` that carries a record, and pass
/// it to [`BalanceLayer::attempts`](crate::BalanceLayer::attempts).
///
/// # Examples
///
/// Queries to database replicas, each carrying its record:
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{
///     retry::{Attempts, ReadAttempts},
///     strategy::RoundRobin,
///     BalanceLayer, Endpoints,
/// };
///
/// #[derive(Clone)]
/// struct Query {
///     sql: String,
///     attempts: Attempts,
/// }
///
/// #[derive(Clone, Copy, Debug)]
/// struct QueryAttempts;
///
/// impl ReadAttempts<Query> for QueryAttempts {
///     fn attempts<'a>(&self, request: &'a Query) -> Option<&'a Attempts> {
///         Some(&request.attempts)
///     }
/// }
///
/// # tokio_test::block_on(async {
/// let replica = |name: &'static str| service_fn(move |query: Query| async move {
///     Ok::<_, std::convert::Infallible>(format!("{name}: {}", query.sql))
/// });
/// let set = Endpoints::from_iter([("a", replica("a")), ("b", replica("b"))]);
/// let layer = BalanceLayer::new(RoundRobin::new()).attempts(QueryAttempts);
///
/// let query = Query { sql: "select 1".into(), attempts: Attempts::new() };
/// let answer = layer.layer(set.clone()).oneshot(query.clone()).await.unwrap();
/// assert_eq!(answer, "a: select 1");
/// // Sent again, through a balancer whose turn is a's: it goes to b, which it has not tried.
/// let answer = layer.layer(set).oneshot(query.clone()).await.unwrap();
/// assert_eq!(answer, "b: select 1");
/// assert_eq!(query.attempts.len(), 2);
/// # });
/// ```
pub trait ReadAttempts<Req> {
    /// Whether this reader can find anything: `false` lets the balancer drop its bookkeeping at
    /// compile time.
    const READS: bool = true;

    /// The request's record, if it has one.
    fn attempts<'a>(&self, request: &'a Req) -> Option<&'a Attempts>;
}

/// Reads no record: every attempt is routed like a new request. The balancer's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Untracked;

impl<Req> ReadAttempts<Req> for Untracked {
    const READS: bool = false;

    #[inline]
    fn attempts<'a>(&self, _request: &'a Req) -> Option<&'a Attempts> {
        None
    }
}

/// Reads the record from an `http::Request`'s extensions, where [`RetryLayer`] puts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct FromExtensions;

impl<B> ReadAttempts<Request<B>> for FromExtensions {
    #[inline]
    fn attempts<'a>(&self, request: &'a Request<B>) -> Option<&'a Attempts> {
        request.extensions().get::<Attempts>()
    }
}

/// The methods RFC 9110 defines as idempotent.
const IDEMPOTENT: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::PUT,
    Method::DELETE,
];

/// A retry policy for HTTP requests through the balancer: what it retries, for which methods, and
/// how often; see the [module docs](self).
///
/// tower's retry clones the policy for each request, so the count of retries is per request;
/// the budget is shared by all the clones.
///
/// # Examples
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use http::{Method, StatusCode};
/// use tower::retry::budget::TpsBudget;
/// use tower_lb::retry::Policy;
///
/// let policy = Policy::new()
///     .retries(3)
///     .statuses([StatusCode::SERVICE_UNAVAILABLE])
///     .idempotent_methods([Method::GET, Method::POST])
///     .budget(Arc::new(TpsBudget::new(Duration::from_secs(10), 5, 0.1)));
/// # let _ = policy;
/// ```
#[derive(Clone)]
pub struct Policy {
    config: Arc<Config>,
    /// The retries this request may still make.
    left: usize,
    /// Whether this request has deposited into the budget.
    deposited: bool,
}

#[derive(Clone)]
struct Config {
    retries: usize,
    statuses: Vec<StatusCode>,
    methods: Vec<Method>,
    budget: Arc<dyn Budget + Send + Sync>,
}

impl Policy {
    /// Up to 2 retries of what the [module docs](self) list, for the idempotent methods of RFC
    /// 9110, with a `TpsBudget::default()` (retries add at most 20% to the last 10 s of requests,
    /// plus 10 per second).
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                retries: 2,
                statuses: vec![
                    StatusCode::BAD_GATEWAY,
                    StatusCode::SERVICE_UNAVAILABLE,
                    StatusCode::GATEWAY_TIMEOUT,
                ],
                methods: IDEMPOTENT.to_vec(),
                budget: Arc::new(TpsBudget::default()),
            }),
            left: 2,
            deposited: false,
        }
    }

    /// Retries a request at most `retries` times: it is sent at most `retries + 1` times.
    pub fn retries(mut self, retries: usize) -> Self {
        Arc::make_mut(&mut self.config).retries = retries;
        self.left = retries;
        self
    }

    /// The response statuses retried for idempotent methods (default 502, 503, 504), replacing
    /// the current ones. An empty list retries no response.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        Arc::make_mut(&mut self.config).statuses = statuses.into_iter().collect();
        self
    }

    /// The methods whose failed exchanges and retried statuses are retried, replacing RFC 9110's
    /// idempotent methods. Requests that never reached an endpoint are retried whatever their
    /// method.
    pub fn idempotent_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        Arc::make_mut(&mut self.config).methods = methods.into_iter().collect();
        self
    }

    /// The retry budget, shared by every clone of this policy, and by any other policy given the
    /// same `Arc`.
    pub fn budget<B>(mut self, budget: Arc<B>) -> Self
    where
        B: Budget + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.config).budget = budget;
        self
    }

    /// Whether an attempt of a `method` request that ended with `result` is worth another one,
    /// budget and count aside.
    fn retryable<R>(&self, method: &Method, result: &Result<Response<R>, BoxError>) -> bool {
        let idempotent = self.config.methods.contains(method);
        match result {
            Ok(response) => idempotent && self.config.statuses.contains(&response.status()),
            Err(error) => match failure(&**error) {
                Failure::Unavailable | Failure::Connect { .. } => true,
                Failure::Exchange { .. } | Failure::Elapsed => idempotent,
                Failure::Empty
                | Failure::AllEjected
                | Failure::MissingKey
                | Failure::Config
                | Failure::NotReady => false,
            },
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("retries", &self.config.retries)
            .field("left", &self.left)
            .field("statuses", &self.config.statuses)
            .field("idempotent_methods", &self.config.methods)
            .finish_non_exhaustive()
    }
}

impl<B, R> tower::retry::Policy<Request<B>, Response<R>, BoxError> for Policy
where
    B: Clone,
{
    type Future = Ready<()>;

    fn retry(
        &mut self,
        request: &mut Request<B>,
        result: &mut Result<Response<R>, BoxError>,
    ) -> Option<Self::Future> {
        if !self.deposited {
            self.deposited = true;
            self.config.budget.deposit();
        }
        if self.left == 0 || !self.retryable(request.method(), result) {
            return None;
        }
        if !self.config.budget.withdraw() {
            tracing::debug!("retry budget spent: not retrying");
            return None;
        }
        self.left -= 1;
        Some(ready(()))
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        // No retry left: no copy to keep.
        (self.left > 0).then(|| request.clone())
    }
}

/// tower's [`Retry`](tower::retry::Retry) that also gives each request an [`Attempts`] record, so
/// that a balancer below it can route each retry to an endpoint the request has not tried.
///
/// It takes any retry policy; [`Policy`] is the one for HTTP through the balancer.
#[derive(Clone, Debug)]
pub struct Retry<P, S> {
    inner: tower::retry::Retry<P, S>,
}

impl<P, S> Retry<P, S> {
    /// Retries requests to `service` as `policy` says.
    pub fn new(policy: P, service: S) -> Self {
        Self {
            inner: tower::retry::Retry::new(policy, service),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

impl<P, S, B> Service<Request<B>> for Retry<P, S>
where
    P: tower::retry::Policy<Request<B>, S::Response, S::Error> + Clone,
    S: Service<Request<B>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tower::retry::future::ResponseFuture<P, S, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Before tower's retry copies the request: the copies share the record.
        if request.extensions().get::<Attempts>().is_none() {
            request.extensions_mut().insert(Attempts::new());
        }
        self.inner.call(request)
    }
}

/// Makes [`Retry`].
#[derive(Clone, Debug)]
pub struct RetryLayer<P> {
    policy: P,
}

impl<P> RetryLayer<P> {
    /// Retries as `policy` says.
    pub fn new(policy: P) -> Self {
        Self { policy }
    }
}

impl<P: Clone, S> Layer<S> for RetryLayer<P> {
    type Service = Retry<P, S>;

    fn layer(&self, service: S) -> Self::Service {
        Retry::new(self.policy.clone(), service)
    }
}
