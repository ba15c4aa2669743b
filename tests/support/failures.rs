//! Stacks that fail every request in one way, each through a real balancer (and, for transport
//! failures, a real hyper-util client on loopback): what the status mappings and the retry
//! policy are tested against.
#![allow(dead_code, unreachable_pub)]

use std::{
    io,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Body;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::{io::AsyncReadExt, net::TcpListener};
use tower::{service_fn, util::BoxCloneSyncService, Layer, Service, ServiceBuilder, ServiceExt};
use tower_lb::{
    health::OutlierDetection,
    http::Origin,
    key,
    strategy::{ConsistentHash, Maglev, RoundRobin},
    BalanceLayer, BoxError, Endpoints,
};

/// One way a request fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failing {
    /// The endpoint set is empty: `NoEndpoints`.
    Empty,
    /// The only endpoint fails its readiness: `Unavailable`.
    Unavailable,
    /// Every endpoint is ejected and the balancer fails fast: `Unavailable` from `AllEjected`.
    AllEjected,
    /// A keyed strategy and a request without its key: `MissingKey`.
    MissingKey,
    /// A Maglev table smaller than the set: `InvalidConfig`.
    Config,
    /// The balancer called without `poll_ready`: `NotReady`.
    NotReady,
    /// `tower::timeout` above a balancer whose endpoint never answers: `Elapsed`.
    Elapsed,
    /// A hyper-util client to a closed port: a refused connection.
    Refused,
    /// A backend that closes the connection once it has read the request: a broken exchange.
    Reset,
    /// An endpoint failing with an I/O timeout.
    IoTimeout,
    /// An endpoint failing with an error of its own.
    Other,
}

impl Failing {
    pub const ALL: [Failing; 11] = [
        Failing::Empty,
        Failing::Unavailable,
        Failing::AllEjected,
        Failing::MissingKey,
        Failing::Config,
        Failing::NotReady,
        Failing::Elapsed,
        Failing::Refused,
        Failing::Reset,
        Failing::IoTimeout,
        Failing::Other,
    ];
}

/// What the stacks are: a service of `http::Request<B>` that fails.
pub type Stack<B> = BoxCloneSyncService<Request<B>, Response<B>, BoxError>;

/// An endpoint answering an empty response.
fn ok<B: Default + Send + 'static>() -> Stack<B> {
    BoxCloneSyncService::new(service_fn(|_req: Request<B>| async {
        Ok::<_, BoxError>(Response::new(B::default()))
    }))
}

/// An endpoint failing with `error`.
fn failing_with<B: Default + Send + 'static>(error: fn() -> BoxError) -> Stack<B> {
    BoxCloneSyncService::new(service_fn(move |_req: Request<B>| async move {
        Err::<Response<B>, _>(error())
    }))
}

/// An endpoint whose readiness always fails.
#[derive(Clone)]
struct NeverReady;

impl<B> Service<Request<B>> for NeverReady {
    type Response = Response<B>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<B>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err("not ready".into()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        unreachable!("never ready")
    }
}

/// Calls a fresh clone of its service without making it ready first: a bug `NotReady` reports.
#[derive(Clone)]
struct Unpolled<S>(S);

impl<S: Service<R> + Clone, R> Service<R> for Unpolled<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> S::Future {
        self.0.clone().call(req)
    }
}

/// A port of 127.0.0.1 with nothing listening on it.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A backend that reads a request and closes the connection without answering.
async fn hanging_up() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    port
}

/// A stack over a hyper-util client bound to 127.0.0.1:`port`.
fn client_to<B>(port: u16) -> Stack<B>
where
    B: Body<Data = Bytes> + Default + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let client = Client::builder(TokioExecutor::new()).build_http::<B>();
    let origin = Origin::try_new(client, &format!("http://127.0.0.1:{port}")).unwrap();
    let origin = ServiceBuilder::new()
        .map_response(|response: Response<hyper::body::Incoming>| response.map(|_| B::default()))
        .map_err(BoxError::from)
        .service(origin);
    BoxCloneSyncService::new(origin)
}

/// The header the keyed stacks route by.
pub const KEY: &str = "x-key";

/// A request for `path`, with an `x-key` header unless the failure is its absence.
pub fn request_for<B: Default>(failing: Failing, path: &str) -> Request<B> {
    let mut request = Request::get(path).body(B::default()).unwrap();
    if failing != Failing::MissingKey {
        request.headers_mut().insert(KEY, "k".parse().unwrap());
    }
    request
}

/// A request for `/`, with an `x-key` header unless the failure is its absence.
pub fn request<B: Default>(failing: Failing) -> Request<B> {
    request_for(failing, "/")
}

fn by_key() -> key::Header {
    key::header(http::HeaderName::from_static(KEY))
}

/// A stack that fails the [`request`] for `failing` that way.
pub async fn stack<B>(failing: Failing) -> Stack<B>
where
    B: Body<Data = Bytes> + Default + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let round_robin = |set: Endpoints<String, Stack<B>>| {
        BoxCloneSyncService::new(BalanceLayer::new(RoundRobin::new()).layer(set))
    };
    let one = |endpoint: Stack<B>| Endpoints::from_iter([("127.0.0.1:1".to_string(), endpoint)]);
    match failing {
        Failing::Empty => round_robin(Endpoints::new()),
        Failing::Unavailable => one(BoxCloneSyncService::new(NeverReady)).pipe(round_robin),
        Failing::AllEjected => {
            let detection = OutlierDetection::builder()
                .consecutive_failures(1)
                .fail_when_all_ejected()
                .build()
                .unwrap();
            let balance = BalanceLayer::new(RoundRobin::new())
                .outlier_detection(detection)
                .layer(one(failing_with(|| "down".into())));
            // The first failure ejects the only endpoint.
            let first = balance.clone().oneshot(request::<B>(failing)).await;
            assert!(first.is_err());
            BoxCloneSyncService::new(balance)
        }
        Failing::MissingKey => {
            let balance = BalanceLayer::new(ConsistentHash::new(by_key())).layer(one(ok()));
            BoxCloneSyncService::new(balance)
        }
        Failing::Config => {
            let set = Endpoints::from_iter((0..3).map(|i| (format!("127.0.0.1:{i}"), ok())));
            let maglev = Maglev::new(by_key()).table_size(2).unwrap();
            BoxCloneSyncService::new(BalanceLayer::new(maglev).layer(set))
        }
        Failing::NotReady => {
            let balance = BalanceLayer::new(RoundRobin::new()).layer(one(ok()));
            BoxCloneSyncService::new(Unpolled(balance))
        }
        Failing::Elapsed => {
            let stalled = BoxCloneSyncService::new(service_fn(|_req: Request<B>| async {
                std::future::pending::<Result<Response<B>, BoxError>>().await
            }));
            let balance = BalanceLayer::new(RoundRobin::new()).layer(one(stalled));
            let timeout = ServiceBuilder::new()
                .timeout(Duration::from_millis(20))
                .service(balance);
            BoxCloneSyncService::new(timeout)
        }
        Failing::Refused => one(client_to(closed_port().await)).pipe(round_robin),
        Failing::Reset => one(client_to(hanging_up().await)).pipe(round_robin),
        Failing::IoTimeout => one(failing_with(|| {
            io::Error::from(io::ErrorKind::TimedOut).into()
        }))
        .pipe(round_robin),
        Failing::Other => one(failing_with(|| "the backend's own error".into())).pipe(round_robin),
    }
}

/// The error the stack for `failing` fails its request with.
pub async fn error_of<B>(failing: Failing) -> BoxError
where
    B: Body<Data = Bytes> + Default + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let stack = stack::<B>(failing).await;
    match stack.oneshot(request(failing)).await {
        Ok(_) => panic!("{failing:?}: the request succeeded"),
        Err(error) => error,
    }
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}

impl<T> Pipe for T {}
