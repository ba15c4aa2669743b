//! HTTP probes against real axum backends on loopback: a backend whose `/health` turns to 503
//! goes out after exactly the unhealthy threshold and comes back after exactly the healthy one,
//! with round robin exact and ring keys in place around it.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU16, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{uri::Authority, HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::{Layer, Service, ServiceExt};
use tower_lb::{
    health::{probe, HealthCheck},
    key,
    strategy::{ConsistentHash, RoundRobin},
    BalanceLayer, BoxError, Endpoints,
};

use crate::until;

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A health request as a backend saw it: method, path and query, `Host`.
type Seen = (Method, String, Option<String>);

/// One axum backend: `/` answers its name, `/health` the status the test sets, after a permit
/// from the gate when the backend is gated.
#[derive(Clone)]
pub struct Backend {
    name: &'static str,
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    health: Arc<AtomicU16>,
    gate: Option<Arc<Semaphore>>,
    /// Every health request.
    seen: Arc<Mutex<Vec<Seen>>>,
}

pub async fn spawn_backend(name: &'static str, gated: bool) -> Backend {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let backend = Backend {
        name,
        addr: listener.local_addr().unwrap(),
        hits: Arc::default(),
        health: Arc::new(AtomicU16::new(200)),
        gate: gated.then(|| Arc::new(Semaphore::new(0))),
        seen: Arc::default(),
    };
    let router = Router::new()
        .route(
            "/",
            get(|State(b): State<Backend>| async move {
                b.hits.fetch_add(1, Ordering::SeqCst);
                b.name
            }),
        )
        .route(
            "/health",
            get(
                |State(b): State<Backend>, method: Method, uri: Uri, headers: HeaderMap| async move {
                    let host = headers
                        .get(http::header::HOST)
                        .map(|h| h.to_str().unwrap().to_owned());
                    b.seen
                        .lock()
                        .unwrap()
                        .push((method, uri.to_string(), host));
                    if let Some(gate) = &b.gate {
                        gate.acquire().await.unwrap().forget();
                    }
                    StatusCode::from_u16(b.health.load(Ordering::SeqCst)).unwrap()
                },
            ),
        )
        .with_state(backend.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    backend
}

/// An endpoint bound to one backend: sends every request to its address through a shared
/// hyper-util client, keeping the path and query.
#[derive(Clone)]
pub struct Origin {
    client: HttpClient,
    authority: Authority,
}

impl Origin {
    pub fn new(client: &HttpClient, addr: SocketAddr) -> Self {
        Self {
            client: client.clone(),
            authority: addr.to_string().parse().unwrap(),
        }
    }
}

impl Service<Request<Empty<Bytes>>> for Origin {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.client.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Empty<Bytes>>) -> Self::Future {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        *request.uri_mut() = Uri::from_parts(parts).unwrap();
        let future = self.client.call(request);
        Box::pin(async move { Ok(future.await?) })
    }
}

/// The body of a `GET path` through `balance`: the name of the backend that answered.
async fn get_name<S>(balance: &S, path: &str) -> String
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = BoxError> + Clone,
{
    let request = Request::get(path).body(Empty::new()).unwrap();
    let response = balance.clone().oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

async fn round_robin_tally<S>(balance: &S, count: usize) -> HashMap<String, usize>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = BoxError> + Clone,
{
    let mut tally = HashMap::new();
    for _ in 0..count {
        *tally.entry(get_name(balance, "/").await).or_insert(0) += 1;
    }
    tally
}

fn counts(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_health_turns_503_is_out_after_the_unhealthy_threshold_and_back_after_the_healthy_threshold(
) {
    let a = spawn_backend("a", false).await;
    let b = spawn_backend("b", true).await;
    let c = spawn_backend("c", false).await;
    let client = client();
    let set = Endpoints::from_iter(
        [&a, &b, &c].map(|backend| (backend.name, Origin::new(&client, backend.addr))),
    );
    let round_robin = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let ring = BalanceLayer::new(ConsistentHash::new(key::query("key"))).layer(set.clone());
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let owners: Vec<&str> = keys
        .iter()
        .map(|k| ring.endpoint_for_key(k).unwrap())
        .collect();
    assert!(owners.iter().filter(|o| **o == "b").count() > 20);

    // Probes through each endpoint; the gate holds each of b's until the test lets it answer.
    let check = HealthCheck::builder(probe::Http::new("/health").unwrap())
        .interval(Duration::from_millis(10))
        .timeout(Duration::from_secs(60))
        .unhealthy_threshold(3)
        .healthy_threshold(2)
        .build()
        .unwrap();
    let _checker = tokio::spawn(set.check_health(check));

    let b_stats = || round_robin.stats()[1].probe.clone().expect("b is probed");
    // Lets b's next probe answer `status`, and waits until the checker has recorded it.
    let answer = |status: u16| {
        let b = b.clone();
        async move {
            let before = b_stats().probes;
            b.health.store(status, Ordering::SeqCst);
            b.gate.as_ref().unwrap().add_permits(1);
            until("b's probe", || b_stats().probes == before + 1).await;
        }
    };
    let ring_routes = |down: bool| {
        let ring = ring.clone();
        let keys = keys.clone();
        let owners = owners.clone();
        async move {
            for (key, owner) in keys.iter().zip(&owners) {
                let got = get_name(&ring, &format!("/?key={key}")).await;
                if down && *owner == "b" {
                    assert_ne!(got, "b", "key {key}");
                } else {
                    assert_eq!(got, *owner, "key {key}");
                }
            }
        }
    };

    // a and c pass their first probes; b waits for its own.
    until("a and c in", || {
        let stats = round_robin.stats();
        [0, 2]
            .iter()
            .all(|&i| stats[i].probe.as_ref().is_some_and(|p| p.healthy))
    })
    .await;
    assert!(!b_stats().healthy);
    assert_eq!(
        round_robin_tally(&round_robin, 10).await,
        counts(&[("a", 5), ("c", 5)])
    );
    answer(200).await;
    assert!(b_stats().healthy);
    let even = counts(&[("a", 100), ("b", 100), ("c", 100)]);
    assert_eq!(round_robin_tally(&round_robin, 300).await, even);
    ring_routes(false).await;

    // Two 503s: b keeps its share.
    for failures in 1..=2 {
        answer(503).await;
        let stats = b_stats();
        assert_eq!(
            (stats.healthy, stats.consecutive_failures),
            (true, failures)
        );
        assert_eq!(round_robin_tally(&round_robin, 300).await, even);
    }
    // The third takes it out: no user request reaches it, and only its keys move.
    answer(503).await;
    let stats = b_stats();
    assert_eq!((stats.healthy, stats.consecutive_failures), (false, 3));
    assert_eq!(
        stats.last_error.as_deref(),
        Some("unexpected status 503 Service Unavailable")
    );
    let hits = b.hits.load(Ordering::SeqCst);
    assert_eq!(
        round_robin_tally(&round_robin, 300).await,
        counts(&[("a", 150), ("c", 150)])
    );
    ring_routes(true).await;
    assert_eq!(b.hits.load(Ordering::SeqCst), hits);

    // One pass is not enough; the second lets it back, exactly as before.
    answer(200).await;
    assert!(!b_stats().healthy);
    assert_eq!(
        round_robin_tally(&round_robin, 30).await,
        counts(&[("a", 15), ("c", 15)])
    );
    answer(200).await;
    assert!(b_stats().healthy);
    assert_eq!(round_robin_tally(&round_robin, 300).await, even);
    ring_routes(false).await;

    let stats = b_stats();
    assert_eq!((stats.probes, stats.failed_probes), (6, 3));
    // Every probe was `GET /health`, without a Host but the client's own.
    let seen = b.seen.lock().unwrap().clone();
    assert!(seen.len() >= 6);
    for (method, path, host) in seen {
        assert_eq!((method, path.as_str()), (Method::GET, "/health"));
        assert_eq!(host, Some(b.addr.to_string()));
    }
}

#[tokio::test]
async fn through_a_client_the_probe_sends_the_configured_request_and_checks_the_status() {
    let backend = spawn_backend("a", false).await;
    backend.health.store(204, Ordering::SeqCst);
    let set = Endpoints::from_iter([(backend.addr, ())]);
    let probe = probe::Http::with_client(client(), "/health?deep=1")
        .unwrap()
        .method(Method::HEAD)
        .host("health.internal")
        .unwrap()
        .expected_statuses([204..=204])
        .unwrap();
    let check = HealthCheck::builder(probe)
        .interval(Duration::from_millis(10))
        .unhealthy_threshold(1)
        .build()
        .unwrap();
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let _checker = tokio::spawn(set.check_health(check));
    let probe_stats = || balance.stats()[0].probe.clone().unwrap();

    until("the first probe", || probe_stats().healthy).await;
    let (method, path, host) = backend.seen.lock().unwrap()[0].clone();
    assert_eq!(method, Method::HEAD);
    assert_eq!(path, "/health?deep=1");
    assert_eq!(host.as_deref(), Some("health.internal"));

    // 200 is not among the expected statuses.
    backend.health.store(200, Ordering::SeqCst);
    until("a failed probe", || !probe_stats().healthy).await;
    assert_eq!(
        probe_stats().last_error.as_deref(),
        Some("unexpected status 200 OK")
    );
}
