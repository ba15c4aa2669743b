//! Chaos under load: the gateway example over three loopback backends, 20,000 requests from many
//! concurrent clients while one backend is killed and later restarted on the same address, and
//! another turns slow.
//!
//! The request mix alternates GET (idempotent: retried after any failure) and POST (retried only
//! when the connection could not be made). What each test asserts:
//!
//! - Every request gets exactly one answer, and a successful answer is the one for its request
//!   (the backends echo the request id).
//! - Every GET succeeds. The only failures are POSTs answered 502 around the kill, and there are
//!   at most as many as the killed backend had connections open when it died: a POST fails only
//!   if it was sent on such a connection (in flight when the backend died, or written on a
//!   pooled connection before the gateway saw it close), since after the kill connections are
//!   refused, and refused connections are always retried. HTTP/1.1 without pipelining carries
//!   one request at a time per connection, and a connection is gone after its first failure.
//! - The killed backend is ejected (its backoff doubles as the gateway keeps trying it), gets no
//!   request while it is down beyond the gateway's tries when an ejection runs out, and serves
//!   again once it is back.
//! - The slow backend is slow, not failing: it is never ejected and keeps its share.
//!
//! The balancer's statistics count requests in flight only for the strategies that balance on
//! load (`EndpointStats::in_flight` is 0 under round robin and plain consistent hashing), so what
//! was in flight at the kill is counted by the killed backend itself ([`backend::Killed`]) and
//! by the clients (requests sent before the kill and answered after it).

// The example's modules, compiled into this test; it uses only part of them.
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
#[path = "../../gateway/server.rs"]
mod server;

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::http::{Method, Request, StatusCode};
use backend::{spawn_backend, spawn_backend_on, Backend, BackendOptions, Killed};
use bytes::Bytes;
use config::{GatewayConfig, KeySource, StrategyKind, Target};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use server::{Limits, Server};
use tower_lb::{key, strategy::ConsistentHash, Balance, EndpointStats, Endpoints};

/// Every test finishes well within this, or fails instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// The longest wait for one step of the scenario: a condition that has not come true by then
/// never will. Longer than the gateway's longest ejection.
const STEP_LIMIT: Duration = Duration::from_secs(15);

const REQUESTS: usize = 20_000;
/// Concurrent clients, each with one request in flight at a time.
const CLIENTS: usize = 64;
/// Distinct request keys, `user-0` .. `user-63`, used in turn.
const KEYS: usize = 64;
/// The slow backend's added delay: slow, yet far within the gateway's timeout.
const SLOW: Duration = Duration::from_millis(20);

/// Answered requests before the slow backend turns slow, and before the kill.
const SLOW_AT: usize = 2_000;
const KILL_AT: usize = 4_000;
/// Requests answered while the killed backend is down, at least.
const DOWN_FOR: usize = 1_000;

const KILLED: &str = "backend-2";
const SLOWED: &str = "backend-3";
const HEALTHY: &str = "backend-1";

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test took too long")
}

/// Polls `condition` every millisecond until it holds; panics after [`STEP_LIMIT`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < STEP_LIMIT,
            "still waiting after {STEP_LIMIT:?} until {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn is_get(id: usize) -> bool {
    id.is_multiple_of(2)
}

fn key_of(id: usize) -> String {
    format!("user-{}", id % KEYS)
}

/// One request as its client saw it.
#[derive(Debug)]
struct Record {
    id: usize,
    sent: Instant,
    answered: Instant,
    /// `None` if the gateway gave no answer at all.
    status: Option<StatusCode>,
    /// The gateway's upstream header: the backend that answered.
    upstream: Option<String>,
    /// The request id that the backend echoed.
    echoed: Option<String>,
    body: String,
}

impl Record {
    fn is_get(&self) -> bool {
        is_get(self.id)
    }

    fn ok(&self) -> bool {
        self.status == Some(StatusCode::OK)
    }

    /// The backend that answered, if the request succeeded.
    fn served_by(&self) -> Option<&str> {
        self.ok().then_some(self.upstream.as_deref()).flatten()
    }
}

/// Sends requests `0..REQUESTS`, drawn by `clients` tasks from a shared counter, each one after
/// the previous one's answer, and records them; `answered` counts the answers.
async fn load(gateway: SocketAddr, answered: Arc<AtomicUsize>) -> Vec<Record> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, next, answered) = (client.clone(), Arc::clone(&next), Arc::clone(&answered));
        tasks.spawn(async move {
            let mut records = Vec::new();
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= REQUESTS {
                    break records;
                }
                let (method, body) = if is_get(id) {
                    (Method::GET, Bytes::new())
                } else {
                    (Method::POST, Bytes::from(format!("image {id}")))
                };
                let request = Request::builder()
                    .method(method)
                    .uri(format!(
                        "http://{gateway}/resize?key={}&id={id}",
                        key_of(id)
                    ))
                    .header(backend::REQUEST_ID_HEADER, id.to_string())
                    .body(Full::new(body))
                    .unwrap();
                let sent = Instant::now();
                let mut record = Record {
                    id,
                    sent,
                    answered: sent,
                    status: None,
                    upstream: None,
                    echoed: None,
                    body: String::new(),
                };
                match client.request(request).await {
                    Ok(response) => {
                        let header = |name: &str| {
                            let value = response.headers().get(name)?;
                            Some(value.to_str().ok()?.to_owned())
                        };
                        record.status = Some(response.status());
                        record.upstream = header(app::UPSTREAM_HEADER);
                        record.echoed = header(backend::REQUEST_ID_HEADER);
                        match response.into_body().collect().await {
                            Ok(body) => {
                                record.body = String::from_utf8_lossy(&body.to_bytes()).into()
                            }
                            Err(error) => record.body = format!("body lost: {error}"),
                        }
                    }
                    Err(error) => record.body = format!("no answer: {error}"),
                }
                record.answered = Instant::now();
                answered.fetch_add(1, Ordering::Relaxed);
                records.push(record);
            }
        });
    }
    let mut records = Vec::with_capacity(REQUESTS);
    while let Some(done) = tasks.join_next().await {
        records.extend(done.expect("a client task ends normally"));
    }
    records
}

/// What happened, as the scenario saw it.
struct Run {
    records: Vec<Record>,
    /// The kill began (before it, the backend was up) and ended (after it, connections were
    /// refused).
    kill_started: Instant,
    kill_done: Instant,
    killed: Killed,
    /// The gateway's statistics of the killed backend right after the kill, and right before
    /// the restart.
    at_kill: EndpointStats<String>,
    at_restart: EndpointStats<String>,
    /// The ejection backoff had doubled: the gateway had tried the dead backend again.
    ejected_again: Instant,
    /// The restart began: until then, connections to the killed backend were refused.
    restarted: Instant,
    /// The restarted backend had answered its first request.
    returned: Instant,
    /// Requests answered by the restarted backend, by its own count.
    served_after_restart: u64,
    /// Every endpoint's statistics at the end.
    stats: Vec<EndpointStats<String>>,
}

impl Run {
    fn stats_of(&self, key: &str) -> &EndpointStats<String> {
        self.stats.iter().find(|s| s.key == key).unwrap()
    }

    /// The assertions common to every strategy; returns the failed requests.
    fn check_common(&self) -> Vec<&Record> {
        // Exactly one answer per request, and successful answers are the right ones.
        let mut answers = vec![0_u32; REQUESTS];
        for record in &self.records {
            answers[record.id] += 1;
        }
        let lost: Vec<usize> = (0..REQUESTS).filter(|&id| answers[id] == 0).collect();
        let doubled: Vec<usize> = (0..REQUESTS).filter(|&id| answers[id] > 1).collect();
        assert!(lost.is_empty(), "requests without an answer: {lost:?}");
        assert!(doubled.is_empty(), "requests answered twice: {doubled:?}");
        assert_eq!(self.records.len(), REQUESTS);
        for record in self.records.iter().filter(|r| r.ok()) {
            assert_eq!(
                record.echoed.as_deref(),
                Some(record.id.to_string().as_str()),
                "{record:?}"
            );
            let handled_by = record
                .body
                .lines()
                .next()
                .and_then(|line| line.strip_prefix("Request handled by: "));
            assert_eq!(record.upstream.as_deref(), handled_by, "{record:?}");
        }

        // Failures: POSTs answered 502 around the kill, no more than the connections it closed.
        let failed: Vec<&Record> = self.records.iter().filter(|r| !r.ok()).collect();
        for record in &failed {
            assert!(!record.is_get(), "a GET failed: {record:?}");
            assert_eq!(record.status, Some(StatusCode::BAD_GATEWAY), "{record:?}");
            // In flight at the client when the backend died. A request sent after the kill
            // cannot fail: the gateway's client reads the close of a pooled connection before it
            // writes on it, and retries on a new connection, which is refused.
            assert!(
                record.sent < self.kill_done && self.kill_started <= record.answered,
                "a request failed away from the kill: {record:?}"
            );
        }
        assert!(
            failed.len() <= self.killed.connections,
            "{} requests failed, more than the {} connections the kill closed: {failed:#?}",
            failed.len(),
            self.killed.connections
        );

        // Ejected while down: it was tried only when an ejection ran out (every try failing, at
        // most one per client then, since each client has one request in flight), or on the
        // gateway's pooled connections that the kill closed (at most one request each).
        // Every try of it that did not succeed before the kill failed: its successes in the
        // gateway's statistics are the answers that clients got from it.
        let down_picks = self.at_restart.picks - self.at_kill.picks;
        let answered_before = self
            .records
            .iter()
            .filter(|r| r.served_by() == Some(KILLED) && r.answered < self.restarted)
            .count();
        assert_eq!(
            self.at_restart.picks - self.at_restart.failures,
            answered_before as u64,
            "{:?}",
            self.at_restart
        );
        // From the start of the kill: the first failure, which starts the first ejection, may
        // come before the kill is done.
        let down_for = self.restarted - self.kill_started;
        let expiries = ejections_run_out(down_for);
        let bound = CLIENTS * (expiries + 1) + self.killed.connections;
        assert!(
            down_picks as usize <= bound,
            "{down_picks} tries while down for {down_for:?}, above {bound}"
        );
        let answered_while_down = self
            .records
            .iter()
            .filter(|r| self.kill_done < r.sent && r.answered < self.restarted)
            .count();
        assert!(
            answered_while_down >= DOWN_FOR,
            "only {answered_while_down} requests answered while down"
        );
        // Without ejection it would have been tried with a third of them.
        assert!(
            down_picks as usize * 10 <= answered_while_down,
            "{down_picks} tries of {KILLED} while down, for {answered_while_down} requests"
        );
        assert!(
            self.records
                .iter()
                .filter(|r| self.kill_done < r.sent && r.answered < self.restarted)
                .all(|r| r.served_by() != Some(KILLED)),
            "answered by {KILLED} while it was down"
        );

        // Back: it serves again, and its backoff was cleared by its first success.
        assert!(self.served_after_restart > 0);
        let killed = self.stats_of(KILLED);
        assert_eq!(killed.ejected_for, None, "{killed:?}");
        // The slow backend and the healthy one never failed.
        for key in [HEALTHY, SLOWED] {
            let stats = self.stats_of(key);
            assert_eq!((stats.failures, stats.ejected_for), (0, None), "{stats:?}");
        }
        failed
    }

    fn summary(&self, failed: usize) -> String {
        let in_flight_at_kill = self
            .records
            .iter()
            .filter(|r| r.sent < self.kill_started && self.kill_done < r.answered)
            .count();
        format!(
            "{REQUESTS} requests, {failed} failed; kill closed {} connections, cut short {} \
             requests; {in_flight_at_kill} requests in flight at the client across the kill; \
             {} tries of the dead backend in {:?} down; \
             re-ejected {:?} after the kill; back {:?} after the restart; restarted backend \
             served {}",
            self.killed.connections,
            self.killed.requests,
            self.at_restart.picks - self.at_kill.picks,
            self.restarted - self.kill_done,
            self.ejected_again - self.kill_done,
            self.returned - self.restarted,
            self.served_after_restart,
        )
    }
}

/// How many times an ejection runs out within `down` of a first one, with the gateway's backoff
/// (doubling from [`config::EJECT_FIRST`]), counting the times as if each new ejection began the
/// moment the last one ran out (the earliest it can).
fn ejections_run_out(down: Duration) -> usize {
    let (mut ends, mut length, mut count) = (config::EJECT_FIRST, config::EJECT_FIRST, 0);
    while ends <= down {
        count += 1;
        length = (length * 2).min(config::EJECT_MAX);
        ends += length;
    }
    count
}

/// Runs the scenario with `config` over backends `backend-1` .. `backend-3`: the load, with
/// [`SLOWED`] turning slow, then [`KILLED`] killed, and restarted on its address once the
/// gateway has ejected it twice.
async fn run(config: GatewayConfig) -> Run {
    let options = BackendOptions {
        work_rounds: 1,
        ..BackendOptions::default()
    };
    let mut backends = HashMap::new();
    for name in [HEALTHY, KILLED, SLOWED] {
        let backend = spawn_backend(name, options.clone()).await.unwrap();
        backends.insert(name, backend);
    }
    let mut targets: Vec<Target> = backends.values().map(Backend::target).collect();
    targets.sort_by(|a, b| a.key.cmp(&b.key));
    let built = app::gateway(&targets, &config).expect("a valid configuration");
    let stats = built.stats;
    let stats_of = |key: &str| stats.snapshot().into_iter().find(|s| s.key == key).unwrap();
    let gateway = Server::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        built.service,
        Limits::default(),
    )
    .await
    .unwrap();

    let answered = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(load(gateway.addr(), Arc::clone(&answered)));
    let answered_now = || answered.load(Ordering::Relaxed);
    let progress = |n: usize| move || answered_now() >= n;

    wait_until("the slow backend's turn", progress(SLOW_AT)).await;
    backends[SLOWED].set_delay(SLOW);

    wait_until("the kill", progress(KILL_AT)).await;
    let doomed = backends.remove(KILLED).unwrap();
    let addr = doomed.addr();
    let kill_started = Instant::now();
    let killed = doomed.kill().await.unwrap();
    let kill_done = Instant::now();
    let at_kill = stats_of(KILLED);

    // Ejected, tried again when the ejection ran out, and ejected for longer: the backoff
    // doubled. And enough requests went by meanwhile to see where they went.
    let answered_at_kill = answered_now();
    wait_until(&format!("{KILLED} is ejected for the second time"), || {
        stats_of(KILLED)
            .ejected_for
            .is_some_and(|left| left > config::EJECT_FIRST)
    })
    .await;
    let ejected_again = Instant::now();
    wait_until(
        "enough requests are answered while down",
        // The first answers may be for requests sent before the kill, one per client at most.
        progress(answered_at_kill + CLIENTS + DOWN_FOR),
    )
    .await;

    let at_restart = stats_of(KILLED);
    let restarted_at = Instant::now();
    let restarted = restart(KILLED, options, addr).await;
    wait_until(&format!("{KILLED} serves again"), || restarted.served() > 0).await;
    let returned = Instant::now();

    let records = load.await.expect("the load ends normally");
    let served_after_restart = restarted.served();
    let stats = stats.snapshot();
    gateway.stop().await.unwrap();
    restarted.stop().await.unwrap();
    for (_, backend) in backends {
        backend.stop().await.unwrap();
    }
    Run {
        records,
        kill_started,
        kill_done,
        killed,
        at_kill,
        at_restart,
        ejected_again,
        restarted: restarted_at,
        returned,
        served_after_restart,
        stats,
    }
}

/// Starts the backend `name` again on `addr`. The port was just freed by the kill; binding it
/// can only fail while something else holds it, such as a client connection that happened to
/// get it as its own port, so it is tried until [`STEP_LIMIT`].
async fn restart(name: &str, options: BackendOptions, addr: SocketAddr) -> Backend {
    let started = Instant::now();
    loop {
        match spawn_backend_on(name, options.clone(), addr).await {
            Ok(backend) => return backend,
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                assert!(started.elapsed() < STEP_LIMIT, "{addr} stays in use");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("cannot bind {addr} again: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_under_load_survives_a_killed_and_a_slow_backend() {
    bounded(async {
        let config = GatewayConfig {
            strategy: StrategyKind::RoundRobin,
            ..GatewayConfig::default()
        };
        let run = run(config).await;
        let failed = run.check_common();
        println!("round robin: {}", run.summary(failed.len()));

        // Back under load: round robin gives it its third again (a quarter at least, for the
        // rotation's turns taken around its return).
        let after: Vec<&Record> = run
            .records
            .iter()
            .filter(|r| r.sent > run.returned)
            .collect();
        let back = after
            .iter()
            .filter(|r| r.served_by() == Some(KILLED))
            .count();
        assert!(
            after.len() >= 1_000 && back * 4 >= after.len(),
            "{back} of the {} requests sent after its return went to {KILLED}",
            after.len()
        );
        // The slow backend kept its turn too: a third of the picks while all were up.
        let slowed = run.stats_of(SLOWED).picks as f64;
        let total: u64 = run.stats.iter().map(|s| s.picks).sum();
        assert!(slowed / total as f64 > 0.3, "{:?}", run.stats);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_under_load_moves_only_the_killed_backends_keys_and_brings_them_back() {
    bounded(async {
        let config = GatewayConfig {
            strategy: StrategyKind::Consistent,
            key: KeySource::Query("key".to_owned()),
            ..GatewayConfig::default()
        };
        // Where each key belongs with every backend up, and where it goes without KILLED: the
        // ring successor. Keyed by name, the ring is the same in every run.
        let ring = |names: &[&str]| {
            let set = Endpoints::from_iter(names.iter().map(|name| (name.to_string(), ())));
            Balance::new(ConsistentHash::new(key::query("key")), set)
        };
        let all = ring(&[HEALTHY, KILLED, SLOWED]);
        let without = ring(&[HEALTHY, SLOWED]);
        let home: HashMap<String, String> = (0..KEYS)
            .map(|id| (key_of(id), all.endpoint_for_key(key_of(id)).unwrap()))
            .collect();
        for name in [HEALTHY, KILLED, SLOWED] {
            let keys = home.values().filter(|&b| b == name).count();
            assert!(keys >= 8, "{name} has {keys} of the {KEYS} keys");
        }

        let run = run(config).await;
        let failed = run.check_common();
        println!("consistent hash: {}", run.summary(failed.len()));

        let mut moved = 0;
        let mut served_home_after_return = 0;
        for record in &run.records {
            let Some(by) = record.served_by() else {
                continue;
            };
            let key = key_of(record.id);
            let own = home[&key].as_str();
            if own != KILLED {
                // A healthy backend's keys never move, slow or not.
                assert_eq!(by, own, "key {key} moved: {record:?}");
                continue;
            }
            let successor = without.endpoint_for_key(&key).unwrap();
            if record.sent > run.returned {
                // Back home once it is back.
                assert_eq!(by, own, "key {key} did not come back: {record:?}");
                served_home_after_return += 1;
            } else if by != own {
                // Moved while it was down (or in flight when it died), to its ring successor
                // only.
                assert_eq!(by, successor, "key {key}: {record:?}");
                assert!(record.answered > run.kill_started, "{record:?}");
                moved += 1;
            } else {
                // Served at home: before the kill, or after the restart.
                assert!(
                    record.sent < run.kill_started || record.answered > run.restarted,
                    "{record:?}"
                );
            }
        }
        assert!(
            moved >= 100,
            "only {moved} requests of {KILLED}'s keys were served elsewhere while it was down"
        );
        assert!(
            served_home_after_return >= 100,
            "only {served_home_after_return} requests of {KILLED}'s keys came back"
        );
    })
    .await;
}
