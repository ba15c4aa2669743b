//! The gateway example, end to end over loopback HTTP: embedded backends and the gateway on
//! ephemeral ports of 127.0.0.1, requests sent by a hyper client (or raw TCP where the test needs
//! to control the bytes).

// The example's modules, compiled into this test; each test uses only part of them.
#[allow(dead_code)]
#[path = "../../gateway/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "../../gateway/backend.rs"]
mod backend;
#[allow(dead_code)]
#[path = "../../gateway/body.rs"]
mod body;
#[allow(dead_code)]
#[path = "../../gateway/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../../gateway/demo.rs"]
mod demo;
#[allow(dead_code)]
#[path = "../../gateway/server.rs"]
mod server;

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::http::{HeaderName, Method, Request, StatusCode};
use backend::{spawn_backend, Backend, BackendOptions};
use bytes::Bytes;
use config::{ConfigError, GatewayConfig, KeySource, StrategyKind, Target};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use server::{Limits, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_lb::{key, strategy::ConsistentHash, Balance, EndpointStats};

/// Every test finishes well within this, or fails instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(30);

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test took too long")
}

/// Embedded backends behind a gateway.
struct Fixture {
    backends: Vec<Backend>,
    gateway: Server,
    endpoints: tower_lb::Endpoints<String, app::Upstream>,
    stats: app::Stats,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Starts `n` backends `backend-1` .. `backend-n` with `options`, and a gateway over them.
async fn start_with(n: usize, options: BackendOptions, config: GatewayConfig) -> Fixture {
    let mut backends = Vec::new();
    for i in 1..=n {
        let backend = spawn_backend(&format!("backend-{i}"), options.clone())
            .await
            .expect("a backend starts");
        backends.push(backend);
    }
    let targets: Vec<Target> = backends.iter().map(Backend::target).collect();
    let app::Gateway {
        service,
        endpoints,
        stats,
    } = app::gateway(&targets, &config).expect("a valid configuration");
    let gateway = serve(service).await;
    Fixture {
        backends,
        gateway,
        endpoints: endpoints.expect("tower-lb's endpoint set"),
        stats,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

/// Serves the gateway on a free port of 127.0.0.1 with the default limits.
async fn serve(service: app::GatewayService) -> Server {
    Server::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        service,
        Limits::default(),
    )
    .await
    .expect("the gateway starts")
}

async fn start(n: usize, config: GatewayConfig) -> Fixture {
    start_with(n, BackendOptions::default(), config).await
}

/// A gateway answer.
struct Answer {
    status: StatusCode,
    upstream: Option<String>,
    body: String,
}

impl Answer {
    /// The backend that wrote the answer, from its first line.
    fn handled_by(&self) -> &str {
        self.body
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("Request handled by: "))
            .unwrap_or_else(|| panic!("not a backend's answer: {} {}", self.status, self.body))
    }
}

impl Fixture {
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway.addr()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from_static(b"an image")))
            .unwrap();
        let response = self
            .client
            .request(request)
            .await
            .expect("the gateway answers");
        let status = response.status();
        let upstream = response
            .headers()
            .get(app::UPSTREAM_HEADER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            upstream,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, &[]).await
    }

    /// The balancer's statistics of the endpoint keyed `key`.
    fn stats_of(&self, key: &str) -> EndpointStats<String> {
        self.stats
            .snapshot()
            .into_iter()
            .find(|stats| stats.key == key)
            .unwrap_or_else(|| panic!("no endpoint {key}"))
    }

    /// Picks of every endpoint, summed.
    fn total_picks(&self) -> u64 {
        self.stats.snapshot().iter().map(|stats| stats.picks).sum()
    }

    /// Sends `count` requests one after the other and counts the answers by backend.
    async fn count(&self, count: usize, path: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..count {
            let answer = self.get(path).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            assert_eq!(answer.upstream.as_deref(), Some(answer.handled_by()));
            *counts.entry(answer.handled_by().to_owned()).or_default() += 1;
        }
        counts
    }
}

/// Checks that an endpoint whose first failure came after `sent` is still ejected, for the first
/// ejection time less at most the time since. On a machine so loaded that the ejection may have
/// run out already, there is nothing to check: the callers also check the endpoint's picks, which
/// tell that it was ejected.
fn assert_ejected_since(stats: &EndpointStats<String>, sent: Instant) {
    let elapsed = sent.elapsed();
    if elapsed < config::EJECT_FIRST {
        let left = stats.ejected_for.expect("ejected after its first failure");
        // A millisecond of slack for the two clocks' rounding.
        let least = (config::EJECT_FIRST - elapsed).saturating_sub(Duration::from_millis(1));
        assert!(least <= left && left <= config::EJECT_FIRST, "{stats:?}");
    }
}

fn counts(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs.iter().map(|&(k, n)| (k.to_owned(), n)).collect()
}

fn config(strategy: StrategyKind) -> GatewayConfig {
    GatewayConfig {
        strategy,
        ..GatewayConfig::default()
    }
}

#[tokio::test]
async fn round_robin_sends_each_of_three_backends_a_third_of_the_requests() {
    bounded(async {
        let fixture = start(3, config(StrategyKind::RoundRobin)).await;
        let seen = fixture.count(30, "/resize").await;
        assert_eq!(
            seen,
            counts(&[("backend-1", 10), ("backend-2", 10), ("backend-3", 10)])
        );
    })
    .await;
}

/// HTTP/2 on both sides: a client speaking h2c (prior knowledge) to the gateway, and the gateway
/// speaking h2c to the backends. Requests multiplexed on one client connection still share one
/// rotation, and the server stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_and_h2c_backends_share_one_rotation_and_the_server_stops_cleanly() {
    bounded(async {
        let config = GatewayConfig {
            backend_http2: true,
            ..config(StrategyKind::RoundRobin)
        };
        let fixture = start(3, config).await;
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut answers = tokio::task::JoinSet::new();
        for _ in 0..30 {
            let request = Request::builder()
                .uri(format!("http://{}/resize", fixture.gateway.addr()))
                .body(Full::new(Bytes::from_static(b"an image")))
                .unwrap();
            let response = client.request(request);
            answers.spawn(async move {
                let response = response.await.expect("the gateway answers");
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.version(), http::Version::HTTP_2);
                let upstream = response.headers()[app::UPSTREAM_HEADER]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let body = String::from_utf8_lossy(&body).into_owned();
                assert!(
                    body.starts_with(&format!("Request handled by: {upstream}")),
                    "{body}"
                );
                upstream
            });
        }
        while let Some(upstream) = answers.join_next().await {
            *seen.entry(upstream.unwrap()).or_default() += 1;
        }
        assert_eq!(
            seen,
            counts(&[("backend-1", 10), ("backend-2", 10), ("backend-3", 10)])
        );
        assert_eq!(fixture.total_picks(), 30);
        fixture.gateway.stop().await.expect("the gateway stops");
    })
    .await;
}

#[tokio::test]
async fn weighted_round_robin_gives_each_backend_its_weights_share() {
    bounded(async {
        let config = GatewayConfig {
            weights: Some(vec![1, 2, 3]),
            ..config(StrategyKind::Weighted)
        };
        let fixture = start(3, config).await;
        let seen = fixture.count(60, "/resize").await;
        assert_eq!(
            seen,
            counts(&[("backend-1", 10), ("backend-2", 20), ("backend-3", 30)])
        );
    })
    .await;
}

#[tokio::test]
async fn hash_sends_each_query_key_to_the_backend_that_crc32_mod_n_predicts() {
    bounded(async {
        let fixture = start(3, config(StrategyKind::Hash)).await;
        // The embedded backends are keyed by their names, `backend-1` .. `backend-3` (not by
        // their ephemeral addresses, which change every run). `Hash` orders endpoints by their
        // key bytes, which for these names is 1, 2, 3: key k goes to the endpoint at position
        // crc32(k) % 3 in that order.
        let mut order: Vec<&str> = fixture.backends.iter().map(Backend::name).collect();
        order.sort_unstable();
        let mut used = HashMap::<String, usize>::new();
        for i in 0..50 {
            let key = format!("user-{i}");
            let expected = order[crc32fast::hash(key.as_bytes()) as usize % 3];
            for _ in 0..2 {
                let answer = fixture.get(&format!("/resize?key={key}")).await;
                assert_eq!(answer.status, StatusCode::OK);
                assert_eq!(answer.handled_by(), expected, "key {key}");
            }
            *used.entry(expected.to_owned()).or_default() += 1;
        }
        assert_eq!(used.len(), 3, "50 keys reach every backend: {used:?}");
        // A request without a key uses the default key.
        let expected = order[crc32fast::hash(config::DEFAULT_KEY.as_bytes()) as usize % 3];
        assert_eq!(fixture.get("/resize").await.handled_by(), expected);
        assert_eq!(fixture.get("/resize?key=").await.handled_by(), expected);
    })
    .await;
}

#[tokio::test]
async fn consistent_hash_keeps_each_header_key_on_one_backend_and_spreads_the_keys() {
    bounded(async {
        let name = HeaderName::from_static("x-key");
        let config = GatewayConfig {
            key: KeySource::Header(name.clone()),
            ..config(StrategyKind::Consistent)
        };
        let fixture = start(3, config).await;
        // The ring the gateway routes with, as the crate's key map reports it.
        let ring = Balance::new(
            ConsistentHash::new(key::header(name)),
            fixture.endpoints.clone(),
        );
        let mut spread = HashMap::<String, usize>::new();
        for i in 0..50 {
            let key = format!("user-{i}");
            let mut reached = Vec::new();
            for _ in 0..3 {
                let answer = fixture
                    .send(Method::POST, "/resize", &[("x-key", &key)])
                    .await;
                assert_eq!(answer.status, StatusCode::OK);
                reached.push(answer.handled_by().to_owned());
            }
            assert!(
                reached.iter().all(|b| *b == reached[0]),
                "{key}: {reached:?}"
            );
            assert_eq!(ring.endpoint_for_key(&key).as_ref(), Some(&reached[0]));
            *spread.entry(reached[0].clone()).or_default() += 1;
        }
        assert_eq!(spread.len(), 3, "50 keys reach every backend: {spread:?}");
        assert!(spread.values().all(|&n| n >= 5), "{spread:?}");
    })
    .await;
}

#[tokio::test]
async fn a_stopped_backend_is_failed_over_and_every_request_succeeds() {
    bounded(async {
        let mut fixture = start(3, config(StrategyKind::RoundRobin)).await;
        // Pooled connections to every backend first, as in a gateway that has been serving.
        fixture.count(3, "/resize").await;
        let stopped = fixture.backends.remove(1);
        assert_eq!(stopped.name(), "backend-2");
        stopped.stop().await.unwrap();
        let before = fixture.stats_of("backend-2");
        assert_eq!((before.picks, before.failures), (1, 0));
        assert_eq!(fixture.total_picks(), 3);

        let mut seen = HashMap::<String, usize>::new();
        let mut first_failure_seen = false;
        for _ in 0..30 {
            let sent = Instant::now();
            for (backend, n) in fixture.count(1, "/resize").await {
                *seen.entry(backend).or_default() += n;
            }
            let stopped = fixture.stats_of("backend-2");
            if !first_failure_seen && stopped.failures > 0 {
                first_failure_seen = true;
                assert_ejected_since(&stopped, sent);
            }
        }
        assert!(first_failure_seen, "backend-2 was never tried");
        assert_eq!(seen.values().sum::<usize>(), 30);
        assert_eq!(seen.get("backend-2"), None, "{seen:?}");
        assert!(
            seen["backend-1"] >= 10 && seen["backend-3"] >= 10,
            "{seen:?}"
        );

        // Every attempt on backend-2 failed and was retried on another backend. Ejected, it was
        // tried once, then once more per ejection that ran out: without ejection, round robin
        // would have tried it with a third of the attempts, at least 15 times.
        let after = fixture.stats_of("backend-2");
        let failures = after.failures;
        assert_eq!(after.picks - before.picks, failures, "{after:?}");
        assert!((1..10).contains(&failures), "{after:?}");
        assert_eq!(fixture.total_picks(), 3 + 30 + failures);
        for backend in ["backend-1", "backend-3"] {
            let stats = fixture.stats_of(backend);
            assert_eq!((stats.failures, stats.ejected_for), (0, None), "{stats:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn no_backend_left_is_answered_502_and_an_empty_set_503() {
    bounded(async {
        let mut fixture = start(3, config(StrategyKind::RoundRobin)).await;
        fixture.count(3, "/resize").await;
        for backend in fixture.backends.drain(..) {
            backend.stop().await.unwrap();
        }
        // The first request finds every connection refused, one per attempt (each retry goes to
        // a backend it has not tried), and each backend is ejected in turn. With all of them
        // ejected, panic mode routes over them anyway: the connections are refused again. A
        // backend that cannot be connected to is 502 in tower-lb's status mapping, as in nginx's.
        for (i, method) in [Method::POST, Method::GET, Method::POST]
            .into_iter()
            .enumerate()
        {
            let answer = fixture.send(method, "/resize", &[]).await;
            assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
            assert!(
                answer.body.contains("Connection refused"),
                "{}",
                answer.body
            );
            if i == 0 {
                for stats in fixture.stats.snapshot() {
                    assert_eq!(stats.failures, 1, "{stats:?}");
                }
            }
        }
        assert_eq!(fixture.total_picks(), 3 + 3 * 3);
        // And when the set is empty.
        for key in ["backend-1", "backend-2", "backend-3"] {
            assert!(fixture.endpoints.remove(key));
        }
        let answer = fixture.get("/resize").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            answer.body.contains("the endpoint set is empty"),
            "{}",
            answer.body
        );
    })
    .await;
}

#[tokio::test]
async fn a_backend_that_drops_the_request_is_answered_502_and_only_idempotent_requests_are_retried()
{
    bounded(async {
        // A "backend" that accepts a connection, reads the request head and closes.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            }
        });
        let built =
            app::gateway(&[Target::new("broken", addr)], &GatewayConfig::default()).unwrap();
        let gateway = serve(built.service).await;
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let send = |method: Method| {
            let request = Request::builder()
                .method(method)
                .uri(format!("http://{}/resize", gateway.addr()))
                .body(Full::new(Bytes::from_static(b"an image")))
                .unwrap();
            client.request(request)
        };

        // POST may have been acted on: sent once.
        let response = send(Method::POST).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(accepted.swap(0, Ordering::SeqCst), 1);
        // GET is idempotent: sent again, twice (the default retries), then 502. The backend is
        // ejected after the first failure, but as the only one: panic mode still routes to it.
        let response = send(Method::GET).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // Four attempts, four picks, four failures: a reservation that a retry released because
        // the request had tried that endpoint already (before falling back to it as the only
        // one) takes its pick back.
        let stats = &built.stats.snapshot()[0];
        assert_eq!((stats.picks, stats.failures), (4, 4), "{stats:?}");
    })
    .await;
}

#[tokio::test]
async fn a_backend_answering_503_is_ejected_and_retried_elsewhere_and_one_answering_500_is_not() {
    bounded(async {
        let healthy = spawn_backend("healthy", BackendOptions::default())
            .await
            .unwrap();
        let mut servers = Vec::new();
        let mut targets = vec![healthy.target()];
        for (name, status) in [
            ("overloaded", StatusCode::SERVICE_UNAVAILABLE),
            ("buggy", StatusCode::INTERNAL_SERVER_ERROR),
        ] {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .unwrap();
            let router = axum::Router::new().fallback(move || async move { status });
            targets.push(Target::new(name, listener.local_addr().unwrap()));
            servers.push(tokio::spawn(
                async move { axum::serve(listener, router).await },
            ));
        }
        let built = app::gateway(&targets, &config(StrategyKind::RoundRobin)).unwrap();
        let fixture = Fixture {
            backends: vec![healthy],
            gateway: serve(built.service).await,
            endpoints: built.endpoints.unwrap(),
            stats: built.stats,
            client: Client::builder(TokioExecutor::new()).build_http(),
        };

        let mut first_failure_seen = false;
        for _ in 0..30 {
            let sent = Instant::now();
            let answer = fixture.get("/resize").await;
            // A 503 to a GET is retried on another backend; a 500 is passed on as it is.
            let expected = match answer.upstream.as_deref() {
                Some("healthy") => StatusCode::OK,
                Some("buggy") => StatusCode::INTERNAL_SERVER_ERROR,
                other => panic!("answered by {other:?}: {}", answer.body),
            };
            assert_eq!(answer.status, expected);
            let overloaded = fixture.stats_of("overloaded");
            if !first_failure_seen && overloaded.failures > 0 {
                first_failure_seen = true;
                assert_ejected_since(&overloaded, sent);
            }
        }
        assert!(first_failure_seen, "overloaded was never tried");
        // 503 is a failure: ejected, overloaded got one request, then one per ejection that ran
        // out, while round robin would give it 10 of 30.
        let overloaded = fixture.stats_of("overloaded");
        assert_eq!(overloaded.picks, overloaded.failures, "{overloaded:?}");
        assert!((1..10).contains(&overloaded.failures), "{overloaded:?}");
        // 500 is not: buggy stays in the rotation, with half the requests.
        let buggy = fixture.stats_of("buggy");
        assert_eq!((buggy.failures, buggy.ejected_for), (0, None), "{buggy:?}");
        assert!(buggy.picks >= 10, "{buggy:?}");
        // Each 503 was followed by one retry.
        assert_eq!(fixture.total_picks(), 30 + overloaded.picks);
    })
    .await;
}

#[tokio::test]
async fn a_backend_slower_than_the_timeout_is_answered_504() {
    bounded(async {
        let slow = BackendOptions {
            delay: Duration::from_secs(5),
            ..BackendOptions::default()
        };
        let config = GatewayConfig {
            timeout: Duration::from_millis(200),
            ..config(StrategyKind::RoundRobin)
        };
        let fixture = start_with(1, slow, config).await;
        let started = Instant::now();
        let answer = fixture.get("/resize").await;
        assert_eq!(
            answer.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            answer.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "answered at the timeout"
        );
    })
    .await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    bounded(async {
        let fixture = start(1, config(StrategyKind::RoundRobin)).await;
        // Raw bytes: hop-by-hop headers, `Connection` naming another one, and a Host and
        // absolute URI pointing elsewhere, which must not choose the destination.
        let request = "POST http://elsewhere.example:9/headers HTTP/1.1\r\n\
            Host: elsewhere.example:9\r\n\
            Connection: close, X-Hop\r\n\
            X-Hop: secret\r\n\
            Keep-Alive: timeout=5\r\n\
            Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
            Proxy-Connection: keep-alive\r\n\
            TE: trailers\r\n\
            Trailer: X-Checksum\r\n\
            Upgrade: websocket\r\n\
            X-End-To-End: kept\r\n\
            Content-Length: 5\r\n\
            \r\n\
            hello";
        let response = raw_exchange(fixture.gateway.addr(), request).await;
        let (head, body) = response.split_once("\r\n\r\n").expect("a response");
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");

        // What the backend received, one `name: value` a line.
        let received: HashMap<&str, &str> = body
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(": "))
            .collect();
        for name in [
            "connection",
            "x-hop",
            "keep-alive",
            "proxy-authorization",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "transfer-encoding",
        ] {
            assert!(!received.contains_key(name), "{name} was forwarded: {body}");
        }
        assert_eq!(received.get("x-end-to-end"), Some(&"kept"), "{body}");
        assert_eq!(received.get("content-length"), Some(&"5"), "{body}");
        let backend = fixture.backends[0].addr().to_string();
        assert_eq!(received.get("host"), Some(&backend.as_str()), "{body}");
        assert_eq!(
            received.get("x-forwarded-for"),
            Some(&"127.0.0.1"),
            "{body}"
        );
        assert_eq!(
            received.get("x-forwarded-host"),
            Some(&"elsewhere.example:9"),
            "{body}"
        );

        // What the backend answered with: hop-by-hop headers, and one end-to-end header.
        for name in ["x-backend-hop", "keep-alive", "proxy-authenticate"] {
            assert!(
                !head.contains(&format!("\n{name}:")),
                "{name} came back: {head}"
            );
        }
        assert!(head.contains("\nx-backend-kept: 1"), "{head}");
        assert!(head.contains("\nx-upstream: backend-1"), "{head}");
    })
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_answered_413() {
    bounded(async {
        let config = GatewayConfig {
            max_body_bytes: 1024,
            ..config(StrategyKind::RoundRobin)
        };
        let fixture = start(1, config).await;
        // Declared by Content-Length: refused before reading.
        let request = Request::post(format!("http://{}/resize", fixture.gateway.addr()))
            .body(Full::new(Bytes::from(vec![7; 2048])))
            .unwrap();
        let response = fixture.client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Chunked, without a length: refused once the limit is crossed.
        let chunk = "x".repeat(2000);
        let request = format!(
            "POST /resize HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        );
        let response = raw_exchange(fixture.gateway.addr(), &request).await;
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        // A body within the limit goes through.
        assert_eq!(fixture.get("/resize").await.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn connect_requests_are_refused_not_tunnelled() {
    bounded(async {
        let fixture = start(1, config(StrategyKind::RoundRobin)).await;
        let request = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\
                       Connection: close\r\n\r\n";
        let response = raw_exchange(fixture.gateway.addr(), request).await;
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    })
    .await;
}

#[tokio::test]
async fn demo_report_counts_every_request_by_backend() {
    bounded(async {
        let fixture = start(3, config(StrategyKind::RoundRobin)).await;
        let targets: Vec<Target> = fixture.backends.iter().map(Backend::target).collect();
        let demo = demo::DemoConfig {
            requests: 60,
            concurrency: 8,
            ..demo::DemoConfig::default()
        };
        let mut progress = Vec::new();
        let report = demo::demo(fixture.gateway.addr(), &targets, &demo, |done, total| {
            progress.push((done, total))
        })
        .await;

        assert_eq!(report.total(), 60);
        assert_eq!(report.failed(), 0, "{:?}", report.failures);
        let rows: Vec<(&str, usize)> = report
            .rows
            .iter()
            .map(|row| (row.backend.as_str(), row.requests))
            .collect();
        // Round robin is exact even with 8 requests in flight.
        assert_eq!(
            rows,
            [("backend-1", 20), ("backend-2", 20), ("backend-3", 20)]
        );
        for row in &report.rows {
            assert!((report.share(row) - 1.0 / 3.0).abs() < 1e-9);
        }
        assert_eq!(progress.len(), 60);
        assert_eq!(progress.last(), Some(&(60, 60)));

        let table = report.to_string();
        assert!(table.contains("backend-1"), "{table}");
        assert!(table.contains("33.3%"), "{table}");
        assert!(table.contains('█'), "{table}");

        // The balancer saw the same: one pick per request, nothing left in flight, no failure.
        let stats = fixture.stats.snapshot();
        assert_eq!(stats.iter().map(|s| s.picks).sum::<u64>(), 60, "{stats:?}");
        assert_eq!(
            stats.iter().map(|s| s.in_flight).sum::<usize>(),
            0,
            "{stats:?}"
        );
        for (stats, row) in stats.iter().zip(&report.rows) {
            assert_eq!(stats.key, row.backend);
            assert_eq!(stats.picks, row.requests as u64, "{stats:?}");
            assert_eq!(stats.weight, 1);
            assert_eq!((stats.failures, stats.ejected_for), (0, None), "{stats:?}");
        }
        let table = demo::StatsTable(&stats).to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].contains("picks") && lines[0].contains("ejected"),
            "{table}"
        );
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(row, ["backend-1", "1", "20", "0", "0", "-"], "{table}");
    })
    .await;
}

#[test]
fn bad_configuration_is_an_error_not_a_panic() {
    let target = |port| Target::new(format!("backend-{port}"), ([127, 0, 0, 1], port).into());
    let two = [target(1), target(2)];
    let weighted = |weights: Vec<u32>| GatewayConfig {
        weights: Some(weights),
        ..config(StrategyKind::Weighted)
    };

    let error = |targets: &[Target], config: &GatewayConfig| {
        app::gateway(targets, config).expect_err("rejected")
    };
    assert!(matches!(
        error(&two, &weighted(vec![1, 2, 3])),
        ConfigError::WeightCount {
            weights: 3,
            backends: 2
        }
    ));
    assert!(matches!(
        error(&two, &weighted(vec![1, 0])),
        ConfigError::ZeroWeight { backend: 2 }
    ));
    assert!(matches!(
        error(&[target(1), target(1)], &GatewayConfig::default()),
        ConfigError::DuplicateBackend(_)
    ));
    assert!(matches!(
        error(&[], &GatewayConfig::default()),
        ConfigError::NoBackends
    ));
    let never_eject = GatewayConfig {
        eject_after: 0,
        ..GatewayConfig::default()
    };
    assert!(matches!(
        error(&two, &never_eject),
        ConfigError::OutlierDetection(_)
    ));
    assert!(matches!(
        error(
            &two,
            &GatewayConfig {
                weights: Some(vec![1, 2]),
                ..GatewayConfig::default()
            }
        ),
        ConfigError::WeightsUnused(StrategyKind::RoundRobin)
    ));

    assert!("fastest".parse::<StrategyKind>().is_err());
    assert_eq!(
        "consistent".parse::<StrategyKind>().unwrap(),
        StrategyKind::Consistent
    );
    assert!("cookie:x".parse::<KeySource>().is_err());
    assert!("query:".parse::<KeySource>().is_err());
    assert_eq!(
        "header:x-key".parse::<KeySource>().unwrap(),
        KeySource::Header(HeaderName::from_static("x-key"))
    );
    assert!(Target::from_url("https://127.0.0.1:1").is_err());
    assert!(Target::from_url("http://127.0.0.1:1/api").is_err());
    assert_eq!(
        Target::from_url("http://127.0.0.1:9000/").unwrap().key,
        "127.0.0.1:9000"
    );
}

/// Writes `request` on a new connection to `addr` and reads until the server closes it.
async fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}
