//! Probes: how an active [health check](super::HealthCheck) asks an endpoint whether it is up.
//!
//! | probe | passes when | endpoint key |
//! |---|---|---|
//! | [`Http`] through the endpoint ([`Http::new`]) | the endpoint's own service answers the request with an expected status | any |
//! | [`Http`] through a client ([`Http::with_client`]) | a client you give answers `http://{key}{path}` with an expected status | an address, as [`EndpointKey`] bytes |
//! | [`Grpc`] (feature `tonic`) | `grpc.health.v1.Health/Check` through the endpoint's channel says `SERVING` | any |
//! | [`Tcp`] | a TCP connection to the key's address (or one derived from the key) opens | an address |
//! | [`from_fn`] | your closure's future gives `true` or `Ok(())` | any |
//!
//! Every probe runs under the check's timeout: a probe that hangs is dropped and counts as a
//! failure. A probe is a future that owns what it needs (a clone of the endpoint's service, its
//! address): the checker holds no clone of a service between probes, and drops a probe in progress
//! when its endpoint leaves the set.
//!
//! Write your own probe by implementing [`Probe`], or with [`from_fn`].
//!
//! # Examples
//!
//! ```
//! use std::{net::SocketAddr, time::Duration};
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use tower::service_fn;
//! use tower_lb::{health::{probe, HealthCheck}, BoxError, Endpoints};
//!
//! # async fn example() -> Result<(), BoxError> {
//! // Endpoints that are HTTP services bound to one backend each (here, stand-ins).
//! let backend = service_fn(|_request: http::Request<Empty<Bytes>>| async {
//!     Ok::<_, BoxError>(http::Response::new(Empty::<Bytes>::new()))
//! });
//! let addr: SocketAddr = "127.0.0.1:8081".parse()?;
//! let set = Endpoints::from_iter([(addr, backend)]);
//!
//! // `GET /healthz` through each endpoint, 2xx or 304 passes, with the backend's Host.
//! let http = probe::Http::new("/healthz")?
//!     .expected_statuses([200..=299, 304..=304])?
//!     .host("api.internal")?;
//! tokio::spawn(set.check_health(HealthCheck::new(http)));
//!
//! // A TCP connect to each key's address, as a second, cheaper check.
//! let tcp = HealthCheck::builder(probe::Tcp::new())
//!     .interval(Duration::from_secs(1))
//!     .build()?;
//! tokio::spawn(set.check_health(tcp));
//!
//! // Anything else: a closure that gets the key and the endpoint's service.
//! let custom = probe::from_fn(|addr: &SocketAddr, _endpoint: &_| {
//!     let port = addr.port();
//!     async move { if port != 0 { Ok(()) } else { Err("no port") } }
//! });
//! tokio::spawn(set.check_health(HealthCheck::new(custom)));
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    future::{poll_fn, Future},
    marker::PhantomData,
    ops::RangeInclusive,
    pin::{pin, Pin},
};

use bytes::Buf;
use futures_util::future::{FutureExt, Map};
use http::{
    header::HOST,
    uri::{Authority, PathAndQuery, Scheme},
    HeaderValue, Method, Request, Response, Uri,
};
use http_body::Body;
use tokio::net::{TcpStream, ToSocketAddrs};
use tower_service::Service;

use crate::{endpoints::EndpointKey, error::InvalidConfig, BoxError};

/// A boxed probe future, as the built-in probes return.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

/// How a health check asks one endpoint whether it is up.
///
/// `probe` is called for every probe with the endpoint's key and current service, and returns a
/// future that owns what it needs: `Ok(())` passes, an error fails (its message shows in the
/// endpoint's [`ProbeStats`](crate::ProbeStats)). The checker bounds the future by the check's
/// timeout, and treats a panic, in `probe` or in the future, as a failure.
pub trait Probe<K, S> {
    /// The probe's future.
    type Future: Future<Output = Result<(), BoxError>> + Send + 'static;

    /// Starts a probe of the endpoint `key`, whose service is `endpoint`.
    fn probe(&self, key: &K, endpoint: &S) -> Self::Future;
}

/// What a closure probe's future gives: a pass or a failure. See [`from_fn`].
pub trait Verdict {
    /// `Ok(())` for a pass.
    fn into_result(self) -> Result<(), BoxError>;
}

impl Verdict for bool {
    fn into_result(self) -> Result<(), BoxError> {
        if self {
            Ok(())
        } else {
            Err("the probe found the endpoint down".into())
        }
    }
}

impl<E: Into<BoxError>> Verdict for Result<(), E> {
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// A probe from a closure: see [`from_fn`].
#[derive(Clone, Copy)]
pub struct FromFn<F> {
    f: F,
}

/// A probe that calls `f` with the endpoint's key and service; the future it returns gives
/// `true` or `Ok(())` for a pass ([`Verdict`]).
///
/// The future must own what it uses (clone the key or the service into it), so that a probe in
/// progress does not borrow the checker. Annotate the closure's argument types.
///
/// # Examples
///
/// ```
/// use tower_lb::health::probe;
///
/// // Up while a file says so; the endpoints are `()` here.
/// let probe = probe::from_fn(|name: &String, _endpoint: &()| {
///     let path = format!("/run/backends/{name}.up");
///     async move { std::path::Path::new(&path).exists() }
/// });
/// # let _ = probe;
/// ```
pub fn from_fn<F>(f: F) -> FromFn<F> {
    FromFn { f }
}

impl<K, S, F, Fut> Probe<K, S> for FromFn<F>
where
    F: Fn(&K, &S) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Verdict,
{
    type Future = Map<Fut, fn(Fut::Output) -> Result<(), BoxError>>;

    fn probe(&self, key: &K, endpoint: &S) -> Self::Future {
        (self.f)(key, endpoint).map(Verdict::into_result as fn(_) -> _)
    }
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFn")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}

/// A TCP connect probe: passes when a connection to the endpoint's address opens within the
/// timeout (the connection is closed at once).
///
/// [`Tcp::new`] connects to the key itself, for keys that are addresses (`SocketAddr`,
/// `"127.0.0.1:8081"`, `"backend:8081"` resolved through the system); [`Tcp::with_address`] derives
/// the address from the key.
#[derive(Clone, Copy)]
pub struct Tcp<F = KeyAddress> {
    address: F,
}

/// The address of a [`Tcp`] probe is the endpoint's key.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyAddress {
    _priv: (),
}

impl Tcp {
    /// Connects to the endpoint's key.
    pub fn new() -> Self {
        Self {
            address: KeyAddress { _priv: () },
        }
    }
}

impl Default for Tcp {
    fn default() -> Self {
        Self::new()
    }
}

impl<F> Tcp<F> {
    /// Connects to the address `address` gives for the endpoint's key, such as a health port
    /// beside the serving one.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use tower_lb::health::probe::Tcp;
    ///
    /// let probe = Tcp::with_address(|addr: &SocketAddr| SocketAddr::new(addr.ip(), 9000));
    /// # let _ = probe;
    /// ```
    pub fn with_address<K, A>(address: F) -> Self
    where
        F: Fn(&K) -> A,
        A: ToSocketAddrs,
    {
        Self { address }
    }
}

impl<K, S> Probe<K, S> for Tcp<KeyAddress>
where
    K: ToSocketAddrs + Clone + Send + 'static,
{
    type Future = ProbeFuture;

    fn probe(&self, key: &K, _endpoint: &S) -> ProbeFuture {
        Box::pin(connect(key.clone()))
    }
}

impl<K, S, F, A> Probe<K, S> for Tcp<F>
where
    F: Fn(&K) -> A,
    A: ToSocketAddrs + Send + 'static,
{
    type Future = ProbeFuture;

    fn probe(&self, key: &K, _endpoint: &S) -> ProbeFuture {
        Box::pin(connect((self.address)(key)))
    }
}

async fn connect<A: ToSocketAddrs>(address: A) -> Result<(), BoxError> {
    let stream = TcpStream::connect(address).await?;
    drop(stream);
    Ok(())
}

impl<F> fmt::Debug for Tcp<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tcp")
            .field("address", &std::any::type_name::<F>())
            .finish()
    }
}

/// Where an [`Http`] probe sends its request: through the endpoint's own service.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThroughEndpoint {
    _priv: (),
}

/// Where an [`Http`] probe sends its request: through a client of its own, to the endpoint's
/// address.
#[derive(Debug, Clone)]
pub struct ThroughClient<C> {
    client: C,
    scheme: Scheme,
}

/// The most of a response body an [`Http`] probe reads; the rest is dropped with the response.
const MAX_BODY: usize = 64 * 1024;

/// An HTTP probe: passes when a request (`GET` by default) gets a response with an expected
/// status (2xx by default) within the timeout.
///
/// - [`Http::new`] sends the request through the endpoint's own service, with a URI of the path
///   only: for endpoints bound to one backend that set the scheme and authority themselves (a
///   `hyper_util` client wrapped to one origin, an axum `Router` in-process).
/// - [`Http::with_client`] sends `http://{key}{path}` through a client you give (a
///   `hyper_util::client::legacy::Client`, say), for keys that are addresses.
///
/// `B` is the request body type the service takes; the probe sends `B::default()` (an empty
/// body). Write it when it cannot be inferred: `Http::<Empty<Bytes>>::new("/health")`. The
/// probe reads up to 64 KiB of the response body, so that the connection may be reused, and a body
/// error fails the probe.
pub struct Http<B, C = ThroughEndpoint> {
    through: C,
    method: Method,
    path: PathAndQuery,
    host: Option<HeaderValue>,
    statuses: Vec<RangeInclusive<u16>>,
    _body: PhantomData<fn() -> B>,
}

impl<B> Http<B> {
    /// `GET path` through the endpoint's own service.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if `path` is not a valid path and query (it must start with `/`).
    pub fn new(path: &str) -> Result<Self, InvalidConfig> {
        Self::build(ThroughEndpoint { _priv: () }, path)
    }
}

impl<B, C> Http<B, ThroughClient<C>> {
    /// `GET http://{key}{path}` through `client`. The key's [`EndpointKey`] bytes are the
    /// authority (`127.0.0.1:8081`, `backend:80`); a key that is not one fails every probe.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if `path` is not a valid path and query (it must start with `/`).
    pub fn with_client(client: C, path: &str) -> Result<Self, InvalidConfig> {
        let through = ThroughClient {
            client,
            scheme: Scheme::HTTP,
        };
        Self::build(through, path)
    }

    /// Sends the request with `https` (the client must support it).
    pub fn https(mut self) -> Self {
        self.through.scheme = Scheme::HTTPS;
        self
    }
}

impl<B, C> Http<B, C> {
    fn build(through: C, path: &str) -> Result<Self, InvalidConfig> {
        let invalid = || InvalidConfig::new("health check path", "a path starting with /", path);
        if !path.starts_with('/') {
            return Err(invalid());
        }
        let path = PathAndQuery::try_from(path).map_err(|_| invalid())?;
        Ok(Self {
            through,
            method: Method::GET,
            path,
            host: None,
            statuses: vec![200..=299],
            _body: PhantomData,
        })
    }

    /// The request method (default `GET`); `HEAD` spares the body.
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Sets the `Host` header of the request, for backends that route by it.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if `host` is not a valid header value.
    pub fn host(mut self, host: &str) -> Result<Self, InvalidConfig> {
        let value = HeaderValue::from_str(host)
            .map_err(|_| InvalidConfig::new("health check host", "a valid header value", host))?;
        self.host = Some(value);
        Ok(self)
    }

    /// The statuses that pass, as inclusive ranges (default `[200..=299]`).
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if there is no range, or a range is empty or outside 100 to 599.
    pub fn expected_statuses(
        mut self,
        statuses: impl IntoIterator<Item = RangeInclusive<u16>>,
    ) -> Result<Self, InvalidConfig> {
        let statuses: Vec<_> = statuses.into_iter().collect();
        let valid =
            |r: &RangeInclusive<u16>| 100 <= *r.start() && r.start() <= r.end() && *r.end() <= 599;
        if statuses.is_empty() || !statuses.iter().all(valid) {
            return Err(InvalidConfig::new(
                "expected statuses",
                "non-empty ranges within 100..=599",
                format_args!("{statuses:?}"),
            ));
        }
        self.statuses = statuses;
        Ok(self)
    }

    fn request(&self, uri: Uri) -> Request<B>
    where
        B: Default,
    {
        let mut request = Request::new(B::default());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        if let Some(host) = &self.host {
            request.headers_mut().insert(HOST, host.clone());
        }
        request
    }
}

impl<B, C: Clone> Clone for Http<B, C> {
    fn clone(&self) -> Self {
        Self {
            through: self.through.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            host: self.host.clone(),
            statuses: self.statuses.clone(),
            _body: PhantomData,
        }
    }
}

impl<B, C: fmt::Debug> fmt::Debug for Http<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("through", &self.through)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("statuses", &self.statuses)
            .finish()
    }
}

impl<K, S, B, RB> Probe<K, S> for Http<B, ThroughEndpoint>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Default + Send + 'static,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Future = ProbeFuture;

    fn probe(&self, _key: &K, endpoint: &S) -> ProbeFuture {
        let request = self.request(Uri::from(self.path.clone()));
        let statuses = self.statuses.clone();
        Box::pin(exchange(endpoint.clone(), request, statuses))
    }
}

impl<K, S, B, C, RB> Probe<K, S> for Http<B, ThroughClient<C>>
where
    K: EndpointKey,
    C: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    B: Default + Send + 'static,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Future = ProbeFuture;

    fn probe(&self, key: &K, _endpoint: &S) -> ProbeFuture {
        let uri = Authority::try_from(key.key_bytes().as_ref())
            .map_err(http::Error::from)
            .and_then(|authority| {
                Uri::builder()
                    .scheme(self.through.scheme.clone())
                    .authority(authority)
                    .path_and_query(self.path.clone())
                    .build()
            });
        let uri = match uri {
            Ok(uri) => uri,
            Err(error) => {
                let error = format!("the endpoint key is not an address: {error}");
                return Box::pin(std::future::ready(Err(error.into())));
            }
        };
        let request = self.request(uri);
        let statuses = self.statuses.clone();
        Box::pin(exchange(self.through.client.clone(), request, statuses))
    }
}

/// Sends `request` through `service` once it is ready, checks the status, reads the body.
async fn exchange<S, B, RB>(
    mut service: S,
    request: Request<B>,
    statuses: Vec<RangeInclusive<u16>>,
) -> Result<(), BoxError>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body,
    RB::Error: Into<BoxError>,
{
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let response = service.call(request).await.map_err(Into::into)?;
    let status = response.status();
    if !statuses.iter().any(|r| r.contains(&status.as_u16())) {
        return Err(format!("unexpected status {status}").into());
    }
    let mut body = pin!(response.into_body());
    let mut read = 0;
    while read < MAX_BODY {
        match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => break,
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Buf::remaining),
            Some(Err(error)) => return Err(error.into()),
        }
    }
    Ok(())
}

#[cfg(feature = "tonic")]
pub use self::grpc::Grpc;

#[cfg(feature = "tonic")]
mod grpc {
    use tonic::{body::Body as GrpcBody, client::GrpcService, codegen::Bytes};
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };

    use super::{Probe, ProbeFuture};
    use crate::BoxError;

    /// A gRPC health probe: the standard `grpc.health.v1.Health/Check` for a service name, sent
    /// through the endpoint's own channel (a tonic `Channel`, or any gRPC service); passes when
    /// the answer is `SERVING`. `NOT_SERVING`, `SERVICE_UNKNOWN`, a status such as `NOT_FOUND`
    /// (the server does not know the name) or `UNIMPLEMENTED` (no health service), and transport
    /// errors fail it.
    ///
    /// Servers built with tonic answer it with `tonic-health`'s `HealthServer`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tonic::transport::{Channel, Endpoint};
    /// use tower_lb::{health::{probe::Grpc, HealthCheck}, BoxError, Endpoints};
    ///
    /// # async fn example() -> Result<(), BoxError> {
    /// let channel = Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
    /// let set: Endpoints<String, Channel> = Endpoints::from_iter([("a".to_owned(), channel)]);
    /// let check = HealthCheck::builder(Grpc::new("echo.Echo"))
    ///     .interval(Duration::from_secs(1))
    ///     .build()?;
    /// tokio::spawn(set.check_health(check));
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Debug, Clone)]
    pub struct Grpc {
        service: String,
    }

    impl Grpc {
        /// Checks the service `service`, by its full name (`package.Service`).
        pub fn new(service: impl Into<String>) -> Self {
            Self {
                service: service.into(),
            }
        }

        /// Checks the server as a whole: the empty service name.
        pub fn server() -> Self {
            Self::new("")
        }
    }

    impl<K, S> Probe<K, S> for Grpc
    where
        S: GrpcService<GrpcBody> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <S::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
    {
        type Future = ProbeFuture;

        fn probe(&self, _key: &K, endpoint: &S) -> ProbeFuture {
            let mut client = HealthClient::new(endpoint.clone());
            let request = HealthCheckRequest {
                service: self.service.clone(),
            };
            Box::pin(async move {
                let answer = client.check(request).await?.into_inner();
                match answer.status() {
                    ServingStatus::Serving => Ok(()),
                    status => Err(format!("the service is {}", status.as_str_name()).into()),
                }
            })
        }
    }
}
