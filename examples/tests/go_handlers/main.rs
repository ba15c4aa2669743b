//! The `go_handlers` example's router, served on loopback and queried over real HTTP/1.1: every
//! route answers exactly as the Go tutorial's handlers do (or, for weighted round robin, as they
//! were meant to).

#[path = "../../go_handlers/app.rs"]
mod app;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use axum::Router;
use bytes::Bytes;
use http::{header, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::net::TcpListener;
use tower_lb::{
    key,
    strategy::{Hash, RoundRobin},
    Balance, Endpoints,
};

/// Bounds every request, so that a broken server fails the test instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer, as the client received it.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    content_length: Option<String>,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("the body is UTF-8")
    }
}

/// A router served on `127.0.0.1:<free port>`, with a client for it.
struct TestServer {
    addr: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl TestServer {
    /// Binds first, so the port accepts connections before the server task runs: no waiting.
    async fn start(router: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn example() -> Self {
        Self::start(app::app()).await
    }

    async fn get(&self, path_and_query: &str) -> Answer {
        let uri = format!("http://{}{path_and_query}", self.addr);
        let exchange = async {
            let response = self.client.get(uri.parse().expect("uri")).await?;
            let status = response.status();
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .map(|value: &http::HeaderValue| value.to_str().expect("ASCII").to_owned())
            };
            let content_type = header(header::CONTENT_TYPE);
            let content_length = header(header::CONTENT_LENGTH);
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Answer {
                status,
                content_type,
                content_length,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("GET {uri} timed out"))
            .unwrap_or_else(|err| panic!("GET {uri} failed: {err}"))
    }

    /// The body of a `200 OK` answer.
    async fn body(&self, path_and_query: &str) -> String {
        let answer = self.get(path_and_query).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "GET {path_and_query}: {answer:?}"
        );
        answer.text().to_owned()
    }

    async fn bodies(&self, path_and_query: &str, count: usize) -> Vec<String> {
        let mut bodies = Vec::with_capacity(count);
        for _ in 0..count {
            bodies.push(self.body(path_and_query).await);
        }
        bodies
    }
}

/// What the Go handlers write for `server`.
fn handled_by(server: &str) -> String {
    format!("Request handled by: {server}")
}

fn handled_by_all(servers: &[&str]) -> Vec<String> {
    servers.iter().map(|server| handled_by(server)).collect()
}

#[tokio::test]
async fn round_robin_route_answers_server1_server2_server3_in_turn() {
    let server = TestServer::example().await;
    assert_eq!(
        server.bodies("/round-robin", 6).await,
        handled_by_all(&["server1", "server2", "server3", "server1", "server2", "server3"])
    );
}

#[tokio::test]
async fn root_route_answers_server1_server2_server3_in_turn() {
    let server = TestServer::example().await;
    assert_eq!(
        server.bodies("/", 6).await,
        handled_by_all(&["server1", "server2", "server3", "server1", "server2", "server3"])
    );
}

#[tokio::test]
async fn root_and_round_robin_routes_share_one_rotation() {
    let server = TestServer::example().await;
    let mut bodies = Vec::new();
    for path in [
        "/",
        "/round-robin",
        "/",
        "/round-robin",
        "/round-robin",
        "/",
    ] {
        bodies.push(server.body(path).await);
    }
    assert_eq!(
        bodies,
        handled_by_all(&["server1", "server2", "server3", "server1", "server2", "server3"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_counts_are_exact_under_concurrent_requests() {
    let server = std::sync::Arc::new(TestServer::example().await);
    let requests: Vec<_> = (0..60)
        .map(|_| {
            let server = std::sync::Arc::clone(&server);
            tokio::spawn(async move { server.body("/round-robin").await })
        })
        .collect();
    let mut counts = HashMap::new();
    for request in requests {
        *counts
            .entry(request.await.expect("request task"))
            .or_insert(0) += 1;
    }
    let expected: HashMap<String, usize> = ["server1", "server2", "server3"]
        .iter()
        .map(|server| (handled_by(server), 20))
        .collect();
    assert_eq!(counts, expected);
}

#[tokio::test]
async fn weighted_route_serves_weights_1_2_3_in_smooth_order_every_period() {
    let server = TestServer::example().await;
    let period = handled_by_all(&[
        "server3", "server2", "server1", "server3", "server2", "server3",
    ]);
    for round in 0..4 {
        let bodies = server.bodies("/weighted", 6).await;
        assert_eq!(bodies, period, "period {round}");
        let count = |name| {
            bodies
                .iter()
                .filter(|body| **body == handled_by(name))
                .count()
        };
        assert_eq!(
            [count("server1"), count("server2"), count("server3")],
            [1, 2, 3],
            "period {round}"
        );
    }
}

#[tokio::test]
async fn hash_route_maps_keys_as_the_go_handler() {
    let server = TestServer::example().await;
    for (path, expected) in [
        ("/hash?key=a", "server1"),
        ("/hash?key=b", "server3"),
        ("/hash?key=c", "server1"),
        ("/hash", "server1"),
        ("/hash?key=", "server1"),
        ("/hash?key=default_key", "server1"),
    ] {
        assert_eq!(server.body(path).await, handled_by(expected), "GET {path}");
    }
}

#[tokio::test]
async fn hash_route_maps_100_keys_as_crc32_mod_3() {
    let server = TestServer::example().await;
    let servers = ["server1", "server2", "server3"];
    let mut seen = [0; 3];
    for i in 0..100 {
        let key = format!("key-{i}");
        let slot = (crc32fast::hash(key.as_bytes()) % 3) as usize;
        seen[slot] += 1;
        assert_eq!(
            server.body(&format!("/hash?key={key}")).await,
            handled_by(servers[slot]),
            "key {key}"
        );
    }
    assert!(
        seen.iter().all(|&n| n > 0),
        "the keys cover every server: {seen:?}"
    );
}

#[tokio::test]
async fn consistent_route_keeps_every_key_on_one_server() {
    let server = TestServer::example().await;
    let keys: Vec<String> = (0..30).map(|i| format!("key-{i}")).collect();
    let mut owner = HashMap::new();
    // Interleave the keys, so that each key's requests are apart.
    for round in 0..3 {
        for key in &keys {
            let body = server.body(&format!("/consistent?key={key}")).await;
            let first = owner.entry(key.clone()).or_insert_with(|| body.clone());
            assert_eq!(*first, body, "key {key}, round {round}");
        }
    }
    // No key and an empty key both route as `default_key`.
    let default = server.body("/consistent?key=default_key").await;
    assert_eq!(server.body("/consistent").await, default);
    assert_eq!(server.body("/consistent?key=").await, default);
}

#[tokio::test]
async fn consistent_route_spreads_keys_over_all_servers() {
    let server = TestServer::example().await;
    let mut counts = HashMap::new();
    for i in 0..100 {
        let body = server.body(&format!("/consistent?key=key-{i}")).await;
        *counts.entry(body).or_insert(0) += 1;
    }
    let mut servers: Vec<_> = counts.keys().cloned().collect();
    servers.sort();
    assert_eq!(
        servers,
        handled_by_all(&["server1", "server2", "server3"]),
        "{counts:?}"
    );
}

#[tokio::test]
async fn every_route_answers_the_go_handlers_bytes() {
    let server = TestServer::example().await;
    for path in [
        "/round-robin",
        "/",
        "/weighted",
        "/hash?key=b",
        "/consistent?key=a",
    ] {
        let answer = server.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "GET {path}");
        assert_eq!(
            answer.content_type.as_deref(),
            Some("text/plain; charset=utf-8"),
            "GET {path}"
        );
        let expected = ["server1", "server2", "server3"]
            .iter()
            .map(|server| format!("Request handled by: {server}").into_bytes())
            .find(|bytes| answer.body == bytes[..]);
        assert!(expected.is_some(), "GET {path}: {:?}", answer.body);
        assert_eq!(
            answer.content_length.as_deref(),
            Some("27"),
            "GET {path}: exact length, no trailing newline"
        );
    }
    assert_eq!(
        server.get("/hash?key=b").await.body,
        Bytes::from_static(b"Request handled by: server3")
    );
}

#[tokio::test]
async fn unknown_paths_are_not_found() {
    let server = TestServer::example().await;
    assert_eq!(
        server.get("/least-connections").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn balancer_errors_answer_503_with_the_error_text() {
    let empty: Endpoints<&'static str, app::Server> = Endpoints::new();
    let keyed = Endpoints::from_iter([("server1", app::Server::new("server1"))]);
    let router = Router::new()
        .route_service(
            "/empty",
            app::BalancedRoute::new(Balance::new(RoundRobin::new(), empty)),
        )
        .route_service(
            "/no-default",
            app::BalancedRoute::new(Balance::new(Hash::new(key::query("key")), keyed)),
        );
    let server = TestServer::start(router).await;

    let answer = server.get("/empty").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.text(), "the endpoint set is empty");

    let answer = server.get("/no-default").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.text(),
        "the request has no routing key and no default key is configured"
    );
    assert_eq!(
        server.body("/no-default?key=a").await,
        handled_by("server1")
    );
}
