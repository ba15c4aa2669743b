//! gRPC health probes against three tonic servers running the real `grpc.health.v1` service
//! (tonic-health): one server goes `NOT_SERVING`, is stopped, and is restarted on its port, while
//! 10,000 calls flow through consistent hashing. With active checks no call fails; without them
//! some do, in the same sequence. (Beside the tonic example rather than in tower-lb's
//! `health_check` test, so that tower-lb's own tests never build tonic.)

// The tonic example's echo service and client, compiled into this test.
#[allow(dead_code)]
#[path = "../../tonic_client/app.rs"]
mod app;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use app::{keyed_request, EchoClient, EchoService};
use http::HeaderName;
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tonic::transport::{server::TcpIncoming, Channel, Endpoint};
use tonic_health::{server::HealthReporter, ServingStatus};
use tower::{util::BoxCloneSyncService, Layer, ServiceBuilder};
use tower_lb::{
    health::{probe::Grpc, HealthCheck, OutlierDetection},
    key,
    strategy::ConsistentHash,
    Balance, BalanceLayer, Endpoints,
};

const NAMES: [&str; 3] = ["server-1", "server-2", "server-3"];
const CALLS: usize = 10_000;
const CALLERS: usize = 4;

/// A tonic server running the echo service and the standard health service.
struct HealthyServer {
    name: &'static str,
    addr: SocketAddr,
    reporter: HealthReporter,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Starts `name` on `addr` (a free port if `None`), serving and saying so.
async fn start(name: &'static str, addr: Option<SocketAddr>) -> HealthyServer {
    let listener = TcpListener::bind(addr.unwrap_or((Ipv4Addr::LOCALHOST, 0).into()))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<EchoService>().await;
    let (shutdown, signal) = oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(EchoService::new(name))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = signal.await;
        });
    HealthyServer {
        name,
        addr,
        reporter,
        shutdown,
        task: tokio::spawn(serve),
    }
}

impl HealthyServer {
    async fn set_status(&self, status: ServingStatus) {
        self.reporter.set_service_status(app::SERVICE, status).await;
    }

    /// Stops accepting, lets calls in progress finish, closes the connections.
    async fn stop(self) -> SocketAddr {
        let _ = self.shutdown.send(());
        self.task.await.unwrap().unwrap();
        self.addr
    }
}

fn x_key() -> key::Header {
    key::header(HeaderName::from_static(app::KEY_HEADER))
}

/// What one run of the sequence saw.
struct Run {
    failed: usize,
    /// Calls answered by a server other than the key's, outside of server-2's keys moving to
    /// their successor while server-2 could not take them.
    misrouted: Vec<String>,
    /// How many of server-2's keys' calls went to their successor.
    moved: usize,
    elapsed: Duration,
}

/// Runs 10,000 calls over `server-1` .. `server-3` while server-2 goes `NOT_SERVING` (after 2,000
/// calls), is stopped (after 4,000) and restarted on its port (after 6,000, and after at least
/// 1,000 calls made while it was stopped), with or without an
/// active gRPC health check. Each step starts when the calls reach its mark, and the calls wait at
/// the next mark until it is done: with active checks, until the checker has taken server-2 out
/// (or let it back in).
async fn sequence(active: bool) -> Run {
    let mut servers = Vec::new();
    for name in NAMES {
        servers.push(start(name, None).await);
    }
    let channels: Endpoints<String, Channel> = Endpoints::from_iter(servers.iter().map(|s| {
        let endpoint = Endpoint::from_shared(format!("http://{}", s.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(1));
        (s.name.to_owned(), endpoint.connect_lazy())
    }));
    // The same passive health in both runs: three failures in a row eject for a second.
    let detection = OutlierDetection::builder()
        .consecutive_failures(3)
        .base_ejection_time(Duration::from_secs(1))
        .build()
        .unwrap();
    let balance = BalanceLayer::new(ConsistentHash::new(x_key()))
        .outlier_detection(detection)
        .layer(channels.clone());
    // No retry: every failed call counts.
    let stack = ServiceBuilder::new()
        .map_err(tower_lb::http::grpc_status)
        .service(balance.clone());
    let client = EchoClient::new(BoxCloneSyncService::new(stack));

    let keys: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
    let owners: HashMap<String, String> = keys
        .iter()
        .map(|k| (k.clone(), balance.endpoint_for_key(k).unwrap()))
        .collect();
    let without_2 = Balance::new(
        ConsistentHash::new(x_key()),
        Endpoints::from_iter(["server-1", "server-3"].map(|n| (n.to_owned(), ()))),
    );
    let successors: HashMap<String, String> = keys
        .iter()
        .map(|k| (k.clone(), without_2.endpoint_for_key(k).unwrap()))
        .collect();
    assert!(owners.values().filter(|o| *o == "server-2").count() > 50);

    let server_2_in = |balance: &Balance<_, String, Channel>, healthy: bool| {
        balance.stats()[1]
            .probe
            .as_ref()
            .is_some_and(|p| p.healthy == healthy)
    };
    let checker = active.then(|| {
        let check = HealthCheck::builder(Grpc::new(app::SERVICE))
            .interval(Duration::from_millis(25))
            .timeout(Duration::from_millis(500))
            .unhealthy_threshold(2)
            .healthy_threshold(2)
            .build()
            .unwrap();
        tokio::spawn(channels.check_health(check))
    });
    if active {
        until("every server in", || {
            balance
                .stats()
                .iter()
                .all(|s| s.probe.as_ref().is_some_and(|p| p.healthy))
        })
        .await;
    }

    // The callers: each takes the next call number, waits at a mark until its step is done.
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let answers: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (steps_done, steps) = watch::channel(0usize);
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (next, failed, answers) =
            (Arc::clone(&next), Arc::clone(&failed), Arc::clone(&answers));
        let (mut client, mut steps, keys) = (client.clone(), steps.clone(), keys.clone());
        callers.push(tokio::spawn(async move {
            loop {
                let call = next.fetch_add(1, Ordering::SeqCst);
                if call >= CALLS {
                    return;
                }
                // Calls from mark 2,000 × (n + 1) on wait for step n.
                let step_needed = (call / 2_000).saturating_sub(1).min(3);
                steps.wait_for(|done| *done >= step_needed).await.unwrap();
                let key = &keys[call % keys.len()];
                match client.whoami(keyed_request(key).unwrap()).await {
                    Ok(reply) => answers
                        .lock()
                        .unwrap()
                        .push((key.clone(), reply.into_inner().server)),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }

    // The steps.
    let reached = |mark: usize| {
        let next = Arc::clone(&next);
        async move { until("the calls' mark", || next.load(Ordering::SeqCst) >= mark).await }
    };
    reached(2_000).await;
    let server_2 = servers.remove(1);
    server_2.set_status(ServingStatus::NotServing).await;
    if active {
        until("server-2 out", || server_2_in(&balance, false)).await;
    }
    steps_done.send_replace(1);

    reached(4_000).await;
    let addr = server_2.stop().await;
    let stopped_at = next.load(Ordering::SeqCst);
    steps_done.send_replace(2);

    // At least 1,000 calls while server-2 is down (the callers wait at 6,000 only until the stop
    // is done, so this is before 7,100).
    reached(6_000.max(stopped_at + 1_000)).await;
    let server_2 = start("server-2", Some(addr)).await;
    if active {
        until("server-2 back in", || server_2_in(&balance, true)).await;
    }
    steps_done.send_replace(3);

    for caller in callers {
        caller.await.unwrap();
    }
    let elapsed = started.elapsed();

    let answers = answers.lock().unwrap().clone();
    let mut misrouted = Vec::new();
    let mut moved = 0;
    for (key, server) in &answers {
        if *server == owners[key] {
            continue;
        }
        if owners[key] == "server-2" && *server == successors[key] {
            moved += 1;
        } else {
            misrouted.push(format!("{key}: {server}, owner {}", owners[key]));
        }
    }
    let failed = failed.load(Ordering::SeqCst);
    assert_eq!(answers.len() + failed, CALLS);

    if let Some(checker) = checker {
        checker.abort();
    }
    server_2.stop().await;
    for server in servers {
        server.stop().await;
    }
    Run {
        failed,
        misrouted,
        moved,
        elapsed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_grpc_health_checks_no_call_fails_while_a_server_goes_not_serving_stops_and_restarts()
{
    let run = sequence(true).await;
    println!(
        "with active gRPC health checks: {} failed calls of {CALLS}, {} moved to their ring \
         successor, in {:?}",
        run.failed, run.moved, run.elapsed
    );
    assert_eq!(run.failed, 0);
    assert!(run.misrouted.is_empty(), "{:?}", run.misrouted);
    assert!(run.moved > 0, "server-2's keys moved while it was out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_health_checks_calls_fail_in_the_same_sequence() {
    let run = sequence(false).await;
    println!(
        "without active health checks: {} failed calls of {CALLS}, {} moved to their ring \
         successor, in {:?}",
        run.failed, run.moved, run.elapsed
    );
    assert!(run.failed > 0, "the stopped server failed some calls");
    assert!(run.misrouted.is_empty(), "{:?}", run.misrouted);
}

/// Every wait on a condition ends by then, or fails the test instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `done` holds, checking every millisecond, failing the test after [`DEADLINE`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(DEADLINE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}: not within {DEADLINE:?}");
}
