//! The tonic example's parts: a unary `Echo/Whoami` gRPC service written by hand (messages derived
//! with prost, no protoc), servers that run it on loopback, and a client that balances its calls
//! over one tonic `Channel` per server, through `tower::timeout` and tower-lb's retry policy.
//!
//! # The client stack
//!
//! `EchoClient` (tonic's `Grpc` with the prost codec) sends an HTTP/2 request for each call to a
//! tower stack, outermost first:
//!
//! | layer | what it does |
//! |---|---|
//! | `tower_lb::http::grpc_status` | turns the stack's errors into gRPC statuses (`DEADLINE_EXCEEDED`, `INVALID_ARGUMENT`, `UNAVAILABLE`, ...), keeping the typed error as the source |
//! | `tower::timeout` | bounds the whole call, retries included ([`ClientConfig::timeout`]) |
//! | [`CollectBody`] | reads the encoded message into `Bytes`, so that a retry can send it again |
//! | `tower_lb::retry` | sends the call again when the channel failed (connection refused or broken), to a server the call has not tried |
//! | `tower_lb::Balance` | picks a server: round robin, or consistent hashing on the `x-key` metadata; ejects a server after one failure |
//! | `tonic::transport::Channel`, one per server | the HTTP/2 connection, made on first use |
//!
//! gRPC metadata travels as HTTP/2 headers, so the balancer reads the key with
//! `key::header("x-key")`; a closure over `http::Request<tonic::body::Body>` works as well.
//!
//! With consistent hashing, a key whose server is down moves to the key's next server on the ring
//! (the retry after the failed call goes there, and so do later calls while the server is
//! ejected); no other key moves.

use std::{
    convert::Infallible,
    error::Error,
    fmt, io,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    body::Body,
    server::{NamedService, UnaryService},
    transport::{server::TcpIncoming, Channel, Endpoint},
    GrpcMethod, Status,
};
use tonic_prost::ProstCodec;
use tower::{util::BoxCloneSyncService, Layer, Service, ServiceBuilder};
use tower_lb::{
    health::{Errors, OutlierDetection},
    http::grpc_status,
    retry::{self, FromExtensions},
    strategy::{Route, Strategy},
    Balance, BalanceLayer, BoxError, Endpoints,
};

/// The gRPC service's name, as a `.proto` file would declare it (`package echo; service Echo`).
pub const SERVICE: &str = "echo.Echo";
/// The path of the `Whoami` method.
pub const WHOAMI_PATH: &str = "/echo.Echo/Whoami";
/// The metadata key (an HTTP/2 header) that consistent hashing routes by.
pub const KEY_HEADER: &str = "x-key";

/// The request of `Whoami`; in a `.proto` file: `message WhoamiRequest { uint32 delay_ms = 1; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoamiRequest {
    /// How long the server waits before answering, to show the client's timeout.
    #[prost(uint32, tag = "1")]
    pub delay_ms: u32,
}

/// The reply of `Whoami`: `message WhoamiReply { string server = 1; string key = 2; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoamiReply {
    /// The name of the server that answered.
    #[prost(string, tag = "1")]
    pub server: String,
    /// The `x-key` metadata the server received, empty if none.
    #[prost(string, tag = "2")]
    pub key: String,
}

/// A `Whoami` request carrying `key` in its `x-key` metadata.
pub fn keyed_request(key: &str) -> Result<tonic::Request<WhoamiRequest>, BoxError> {
    let mut request = tonic::Request::new(WhoamiRequest::default());
    request.metadata_mut().insert(KEY_HEADER, key.parse()?);
    Ok(request)
}

// ---- server side ----

/// The `Echo` service of one server: what tonic-build would generate as `EchoServer`, written
/// by hand. Answers `Whoami` with the server's name, and any other method with `UNIMPLEMENTED`.
#[derive(Clone, Debug)]
pub struct EchoService {
    name: Arc<str>,
}

impl EchoService {
    /// The service of the server called `name`.
    pub fn new(name: &str) -> Self {
        Self { name: name.into() }
    }
}

impl NamedService for EchoService {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<Body>> for EchoService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != WHOAMI_PATH {
            let path = request.uri().path().to_owned();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!("no method {path}")).into_http())
            });
        }
        let whoami = Whoami {
            name: Arc::clone(&self.name),
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(grpc.unary(whoami, request).await)
        })
    }
}

/// The `Whoami` handler.
struct Whoami {
    name: Arc<str>,
}

impl UnaryService<WhoamiRequest> for Whoami {
    type Response = WhoamiReply;
    type Future = BoxFuture<'static, Result<tonic::Response<WhoamiReply>, Status>>;

    fn call(&mut self, request: tonic::Request<WhoamiRequest>) -> Self::Future {
        let key = request
            .metadata()
            .get(KEY_HEADER)
            .and_then(|key| key.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let delay = Duration::from_millis(request.get_ref().delay_ms.into());
        let server = self.name.to_string();
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(tonic::Response::new(WhoamiReply { server, key }))
        })
    }
}

/// A gRPC server running [`EchoService`] on 127.0.0.1.
#[derive(Debug)]
pub struct Server {
    name: String,
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Starts the server called `name` on a port of 127.0.0.1 picked by the system.
pub async fn spawn_server(name: &str) -> io::Result<Server> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let (shutdown, signal) = oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .add_service(EchoService::new(name))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            // A dropped sender stops the server too.
            let _ = signal.await;
        });
    Ok(Server {
        name: name.to_owned(),
        addr,
        shutdown,
        task: tokio::spawn(serve),
    })
}

impl Server {
    /// The server's name, which its replies carry and which keys its endpoint.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets the calls in progress finish, closes the connections,
    /// and returns when all that is done.
    pub async fn stop(self) -> Result<(), BoxError> {
        let _ = self.shutdown.send(());
        self.task.await??;
        Ok(())
    }
}

// ---- client side ----

/// The endpoint set: one lazily connected `Channel` per server, keyed by the server's name, so
/// that consistent hashing maps keys alike in every run, whatever ports the servers got.
pub type Channels = Endpoints<String, Channel>;

/// One `Channel` per server. Nothing is connected yet: each channel connects on its first call,
/// and again after its connection is lost.
pub fn channels<'a>(servers: impl IntoIterator<Item = &'a Server>) -> Result<Channels, BoxError> {
    let mut set = Vec::new();
    for server in servers {
        let endpoint = Endpoint::from_shared(format!("http://{}", server.addr()))?
            .connect_timeout(Duration::from_secs(1));
        set.push((server.name().to_owned(), endpoint.connect_lazy()));
    }
    Ok(Endpoints::from_iter(set))
}

/// The client stack's settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The time limit of a call, retries included.
    pub timeout: Duration,
    /// How many times a call whose channel failed is sent again.
    pub retries: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            retries: 2,
        }
    }
}

/// What the gRPC client sends its HTTP/2 requests to: the balancer under timeout and retry.
pub type GrpcStack = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Status>;

/// A balanced client, and the balancer itself, to see where keys go and how the servers fare.
pub struct Balanced<St: Strategy<String>> {
    /// The gRPC client.
    pub client: EchoClient,
    /// A clone of the balancer inside the client's stack: it shares the strategy's state, the
    /// endpoint set and the health counts.
    pub balance: Balance<St, String, Channel, Errors, FromExtensions>,
}

/// A gRPC client whose calls `strategy` spreads over `channels`, with the module's stack.
pub fn balanced<St>(strategy: St, channels: &Channels, config: &ClientConfig) -> Balanced<St>
where
    St: Route<String, http::Request<Body>> + Clone,
{
    // One failure ejects a server for a second (doubling while it keeps failing, up to 30 s):
    // a refused connection is cheap to detect, and the retry then goes to another server.
    let detection = OutlierDetection::builder()
        .consecutive_failures(1)
        .base_ejection_time(Duration::from_secs(1))
        .max_ejection_time(Duration::from_secs(30))
        .build()
        .expect("valid outlier detection settings");
    let balance = BalanceLayer::new(strategy)
        .outlier_detection(detection)
        .skip_tried_endpoints()
        .layer(channels.clone());
    // gRPC sends every call as POST; `Whoami` has no side effects, so a call that may have
    // reached its server before the connection broke can be sent again too.
    let policy = retry::Policy::new()
        .retries(config.retries)
        .idempotent_methods([http::Method::POST]);
    let stack = ServiceBuilder::new()
        .map_err(grpc_status)
        .timeout(config.timeout)
        .layer(CollectBodyLayer)
        .layer(retry::RetryLayer::new(policy))
        .map_request(|request: http::Request<Bytes>| {
            request.map(|bytes| Body::new(Full::new(bytes)))
        })
        .service(balance.clone());
    Balanced {
        client: EchoClient::new(BoxCloneSyncService::new(stack)),
        balance,
    }
}

/// The `Echo` client: what tonic-build would generate as `EchoClient`, written by hand.
#[derive(Clone, Debug)]
pub struct EchoClient {
    inner: tonic::client::Grpc<GrpcStack>,
}

impl EchoClient {
    /// A client sending its calls to `stack`.
    pub fn new(stack: GrpcStack) -> Self {
        Self {
            inner: tonic::client::Grpc::new(stack),
        }
    }

    /// Calls `Whoami`.
    pub async fn whoami(
        &mut self,
        request: impl tonic::IntoRequest<WhoamiRequest>,
    ) -> Result<tonic::Response<WhoamiReply>, Status> {
        self.inner.ready().await?;
        let mut request = request.into_request();
        request
            .extensions_mut()
            .insert(GrpcMethod::new(SERVICE, "Whoami"));
        let codec = ProstCodec::<WhoamiRequest, WhoamiReply>::default();
        self.inner
            .unary(request, PathAndQuery::from_static(WHOAMI_PATH), codec)
            .await
    }
}

/// The typed error behind a status made by tower-lb's `grpc_status`, if it is an `E`.
pub fn source_of<E: Error + 'static>(status: &Status) -> Option<&E> {
    status.source()?.downcast_ref::<E>()
}

/// Makes [`CollectBody`].
#[derive(Clone, Copy, Debug)]
pub struct CollectBodyLayer;

impl<S> Layer<S> for CollectBodyLayer {
    type Service = CollectBody<S>;

    fn layer(&self, inner: S) -> CollectBody<S> {
        CollectBody { inner }
    }
}

/// Reads a request's body into `Bytes` before sending it on: tonic's request bodies are streams,
/// which `tower::retry` cannot clone. A unary call's body is one encoded message.
#[derive(Clone, Debug)]
pub struct CollectBody<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for CollectBody<S>
where
    S: Service<http::Request<Bytes>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The service that was made ready goes with the request; a clone stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await?.to_bytes();
            inner.call(http::Request::from_parts(parts, bytes)).await
        })
    }
}

impl<St: Strategy<String>> fmt::Debug for Balanced<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balanced")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}
