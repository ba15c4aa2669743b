//! The tonic example, end to end over loopback gRPC: three tonic servers on ephemeral ports of
//! 127.0.0.1, one tonic `Channel` per server in the endpoint set, and the example's client stack
//! (timeout, retry, balancer) under a hand-written gRPC client.

// The example's module, compiled into this test.
#[path = "../../tonic_client/app.rs"]
mod app;

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    time::{Duration, Instant},
};

use app::{keyed_request, source_of, ClientConfig, Server, WhoamiRequest, KEY_HEADER};
use http::HeaderName;
use tonic::Code;
use tower::{timeout::error::Elapsed, ServiceExt};
use tower_lb::{
    error::{MissingKey, NoEndpoints},
    key::{self, RequestKey},
    strategy::{ConsistentHash, RoundRobin},
    Balance, Endpoints,
};

/// Every test finishes well within this, or fails instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(30);

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test took too long")
}

const NAMES: [&str; 3] = ["server-1", "server-2", "server-3"];

/// Starts `server-1` .. `server-3`.
async fn start_servers() -> Vec<Server> {
    let mut servers = Vec::new();
    for name in NAMES {
        servers.push(app::spawn_server(name).await.expect("a server starts"));
    }
    servers
}

async fn stop_all(servers: Vec<Server>) {
    for server in servers {
        let name = server.name().to_owned();
        server
            .stop()
            .await
            .unwrap_or_else(|e| panic!("{name} stops cleanly: {e}"));
    }
}

/// The settings of most tests: a timeout generous enough for a loaded machine.
fn config() -> ClientConfig {
    ClientConfig {
        timeout: Duration::from_secs(10),
        retries: 2,
    }
}

fn x_key() -> key::Header {
    key::header(HeaderName::from_static(KEY_HEADER))
}

/// The server that answered a `Whoami` call carrying `key`.
async fn server_for(client: &mut app::EchoClient, key: &str) -> String {
    let reply = client
        .whoami(keyed_request(key).unwrap())
        .await
        .unwrap_or_else(|status| panic!("the call with key {key} fails: {status:?}"))
        .into_inner();
    assert_eq!(reply.key, key, "the server sees the key as metadata");
    reply.server
}

fn keys() -> Vec<String> {
    (0..60).map(|i| format!("user-{i}")).collect()
}

#[tokio::test]
async fn round_robin_rotates_exactly_over_the_three_servers() {
    bounded(async {
        let servers = start_servers().await;
        let channels = app::channels(&servers).unwrap();
        let mut client = app::balanced(RoundRobin::new(), &channels, &config()).client;

        let mut answers = Vec::new();
        for i in 0..12 {
            // Clones share the rotation, as the balancer's clones do.
            let mut clone = client.clone();
            let caller = if i % 2 == 0 { &mut client } else { &mut clone };
            let reply = caller.whoami(WhoamiRequest::default()).await.unwrap();
            answers.push(reply.into_inner().server);
        }
        let expected: Vec<&str> = NAMES.iter().copied().cycle().take(12).collect();
        assert_eq!(answers, expected);
        stop_all(servers).await;
    })
    .await
}

#[tokio::test]
async fn consistent_hash_sends_each_key_to_the_server_endpoint_for_key_names() {
    bounded(async {
        let servers = start_servers().await;
        let channels = app::channels(&servers).unwrap();
        let balanced = app::balanced(ConsistentHash::new(x_key()), &channels, &config());
        let mut client = balanced.client.clone();

        let mut served = BTreeSet::new();
        for round in 0..3 {
            for key in keys() {
                let expected = balanced.balance.endpoint_for_key(&key).unwrap();
                let server = server_for(&mut client, &key).await;
                assert_eq!(server, expected, "key {key}, round {round}");
                served.insert(server);
            }
        }
        assert_eq!(served.len(), 3, "60 keys reach every server: {served:?}");
        stop_all(servers).await;
    })
    .await
}

#[tokio::test]
async fn a_stopped_servers_keys_move_to_their_ring_successors_and_no_other_key_moves() {
    bounded(async {
        let mut servers = start_servers().await;
        let channels = app::channels(&servers).unwrap();
        let balanced = app::balanced(ConsistentHash::new(x_key()), &channels, &config());
        let mut client = balanced.client.clone();

        // Every channel is connected before the stop, so that its connection breaks.
        let before: HashMap<String, String> = keys()
            .into_iter()
            .map(|key| {
                (
                    key.clone(),
                    balanced.balance.endpoint_for_key(&key).unwrap(),
                )
            })
            .collect();
        for key in keys() {
            assert_eq!(server_for(&mut client, &key).await, before[&key]);
        }

        let stopped = servers.remove(1);
        let stopped_name = stopped.name().to_owned();
        stopped.stop().await.unwrap();

        // Where the ring sends each key without the stopped server: its keys' successors.
        let rest = Endpoints::from_iter(
            NAMES
                .iter()
                .filter(|name| **name != stopped_name)
                .map(|name| (name.to_string(), ())),
        );
        let without = Balance::new(ConsistentHash::new(x_key()), rest);

        let mut moved = 0;
        for round in 0..3 {
            for key in keys() {
                let server = server_for(&mut client, &key).await;
                if before[&key] == stopped_name {
                    assert_eq!(
                        Some(&server),
                        without.endpoint_for_key(&key).as_ref(),
                        "key {key} of the stopped server, round {round}"
                    );
                    moved += 1;
                } else {
                    assert_eq!(server, before[&key], "key {key} stays, round {round}");
                }
            }
        }
        assert!(moved > 0, "some keys were on {stopped_name}");

        let stats = balanced.balance.stats();
        let stopped_stats = stats.iter().find(|s| s.key == stopped_name).unwrap();
        assert!(stopped_stats.failures >= 1, "{stopped_stats:?}");
        for live in stats.iter().filter(|s| s.key != stopped_name) {
            assert_eq!(live.failures, 0, "{live:?}");
        }
        stop_all(servers).await;
    })
    .await
}

#[tokio::test]
async fn round_robin_passes_over_a_stopped_server() {
    bounded(async {
        let mut servers = start_servers().await;
        let channels = app::channels(&servers).unwrap();
        let mut client = app::balanced(RoundRobin::new(), &channels, &config()).client;
        for _ in 0..3 {
            client.whoami(WhoamiRequest::default()).await.unwrap();
        }

        let stopped = servers.remove(0);
        let stopped_name = stopped.name().to_owned();
        stopped.stop().await.unwrap();

        let mut served = BTreeSet::new();
        for _ in 0..12 {
            let reply = client.whoami(WhoamiRequest::default()).await.unwrap();
            served.insert(reply.into_inner().server);
        }
        let live: BTreeSet<String> = servers.iter().map(|s| s.name().to_owned()).collect();
        assert_eq!(
            served, live,
            "every call is answered, never by {stopped_name}"
        );
        stop_all(servers).await;
    })
    .await
}

#[tokio::test]
async fn a_call_without_a_key_fails_with_missing_key_through_the_stack() {
    bounded(async {
        let servers = start_servers().await;
        let channels = app::channels(&servers).unwrap();
        let balanced = app::balanced(ConsistentHash::new(x_key()), &channels, &config());

        // Through the gRPC client: a status whose source is the balancer's typed error.
        let status = balanced
            .client
            .clone()
            .whoami(WhoamiRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(source_of::<MissingKey>(&status).is_some(), "{status:?}");

        // The balancer itself, over `http::Request<tonic::body::Body>`.
        let request = http::Request::builder()
            .uri("http://server/echo.Echo/Whoami")
            .body(tonic::body::Body::empty())
            .unwrap();
        let error = balanced.balance.clone().oneshot(request).await.unwrap_err();
        assert!(error.is::<MissingKey>(), "{error:?}");

        // No server was called, and none counts a failure.
        assert!(balanced.balance.stats().iter().all(|s| s.picks == 0));
        stop_all(servers).await;
    })
    .await
}

#[tokio::test]
async fn a_closure_over_the_grpc_request_keys_calls_and_or_gives_a_default() {
    bounded(async {
        let servers = start_servers().await;
        let channels = app::channels(&servers).unwrap();
        // The key is the `x-key` metadata, read from the HTTP/2 request by a closure.
        let tenant = |request: &http::Request<tonic::body::Body>| {
            request
                .headers()
                .get(KEY_HEADER)
                .map(|value| value.as_bytes().to_vec())
        };
        let balanced = app::balanced(
            ConsistentHash::new(tenant.or("anonymous")),
            &channels,
            &config(),
        );
        let mut client = balanced.client.clone();

        for key in keys().iter().take(12) {
            let expected = balanced.balance.endpoint_for_key(key).unwrap();
            assert_eq!(server_for(&mut client, key).await, expected);
        }
        let reply = client.whoami(WhoamiRequest::default()).await.unwrap();
        assert_eq!(
            Some(reply.into_inner().server),
            balanced.balance.endpoint_for_key("anonymous")
        );
        stop_all(servers).await;
    })
    .await
}

#[tokio::test]
async fn a_call_slower_than_the_timeout_fails_with_deadline_exceeded() {
    bounded(async {
        let servers = start_servers().await;
        let channels = app::channels(&servers).unwrap();
        let config = ClientConfig {
            timeout: Duration::from_millis(200),
            retries: 2,
        };
        let balanced = app::balanced(RoundRobin::new(), &channels, &config);
        let mut client = balanced.client.clone();

        let started = Instant::now();
        let status = client
            .whoami(WhoamiRequest { delay_ms: 20_000 })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(source_of::<Elapsed>(&status).is_some(), "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(10));

        // A call cut short by the client is not the server's failure: nothing is ejected.
        assert!(balanced
            .balance
            .stats()
            .iter()
            .all(|s| s.failures == 0 && s.ejected_for.is_none()));
        // The servers stop although the slow call was still waiting: it was cancelled.
        stop_all(servers).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_complete_over_channels_whose_buffer_is_full() {
    bounded(async {
        let servers = start_servers().await;
        // A one-request buffer: a channel's `poll_ready` is pending while its worker is busy.
        let channels: app::Channels = Endpoints::from_iter(servers.iter().map(|server| {
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr()))
                    .unwrap()
                    .buffer_size(1);
            (server.name().to_owned(), endpoint.connect_lazy())
        }));
        let round_robin = app::balanced(RoundRobin::new(), &channels, &config()).client;
        let consistent = app::balanced(ConsistentHash::new(x_key()), &channels, &config()).client;

        let mut calls = tokio::task::JoinSet::new();
        for i in 0..100 {
            let mut round_robin = round_robin.clone();
            let mut consistent = consistent.clone();
            calls.spawn(async move {
                if i % 2 == 0 {
                    round_robin.whoami(WhoamiRequest::default()).await
                } else {
                    consistent
                        .whoami(keyed_request(&format!("user-{i}")).unwrap())
                        .await
                }
            });
        }
        while let Some(call) = calls.join_next().await {
            let reply = call.unwrap().unwrap().into_inner();
            assert!(NAMES.contains(&reply.server.as_str()), "{reply:?}");
        }
        stop_all(servers).await;
    })
    .await
}

#[tokio::test]
async fn an_empty_set_fails_calls_with_unavailable() {
    bounded(async {
        let channels: app::Channels = Endpoints::from_iter(Vec::new());
        let mut client = app::balanced(RoundRobin::new(), &channels, &config()).client;
        let status = client.whoami(WhoamiRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(source_of::<NoEndpoints>(&status).is_some(), "{status:?}");
    })
    .await
}

#[tokio::test]
async fn an_unknown_method_is_unimplemented() {
    bounded(async {
        let servers = start_servers().await;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", servers[0].addr()))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                tonic::Request::new(WhoamiRequest::default()),
                http::uri::PathAndQuery::from_static("/echo.Echo/Nope"),
                tonic_prost::ProstCodec::<WhoamiRequest, app::WhoamiReply>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
        stop_all(servers).await;
    })
    .await
}
