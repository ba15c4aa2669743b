//! Failing backends under real HTTP on loopback: a backend killed while 10,000 requests run
//! through retry and the balancer, for every strategy; a backend that stops answering, behind
//! a timeout above the balancer.

#[path = "../support/backend.rs"]
mod backend;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use backend::{header, Backend, Behaviour, Protocol};
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower::{timeout::error::Elapsed, Layer, Service, ServiceBuilder, ServiceExt};
use tower_lb::{
    health::OutlierDetection,
    http::Origin,
    key,
    retry::{Policy, RetryLayer},
    strategy::{
        ConsistentHash, Hash, Maglev, PowerOfTwoChoices, Random, RoundRobin, Route,
        WeightedRoundRobin,
    },
    BalanceLayer, Endpoints,
};

type Body = Empty<Bytes>;
type Endpoint = Origin<Client<HttpConnector, Body>>;

/// Every test finishes well within this, or fails instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(120);

const REQUESTS: usize = 10_000;
/// Requests in flight at once. Few, so that one request's attempts can all meet the dead
/// backend before its failures eject it: without skipping the endpoints a request tried, this
/// load loses a request or two with every keyed strategy.
const CONCURRENCY: usize = 4;
/// Requests answered before the victim is killed.
const KILL_AFTER: usize = 3_000;
const KEYS: usize = 300;

async fn backends(behaviours: [Behaviour; 3]) -> Vec<Backend> {
    let mut backends = Vec::new();
    for (name, behaviour) in ["b1", "b2", "b3"].into_iter().zip(behaviours) {
        backends.push(Backend::spawn(name, Protocol::Http1, behaviour).await);
    }
    backends
}

/// One `Origin` per backend over one shared client, keyed by authority.
fn set_of<'a>(backends: impl IntoIterator<Item = &'a Backend>) -> Endpoints<String, Endpoint> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    Endpoints::from_iter(backends.into_iter().map(|b| {
        let origin = Origin::try_new(client.clone(), &b.url()).unwrap();
        (b.authority(), origin)
    }))
}

fn get(key: &str) -> Request<Body> {
    Request::get(format!("/?key={key}"))
        .body(Body::new())
        .unwrap()
}

/// What one request of the load got: its key, and the backend that answered, or the failure.
type Outcome = (usize, Result<String, String>);

/// 10,000 GET requests over 300 keys through retry (2 retries) and `strategy` with default
/// outlier detection, skipping tried endpoints; `b2` is killed once 3,000 are answered.
/// Returns each request's key index and outcome, the backends' names by authority, and the
/// balancer's statistics of `b2`.
async fn kill_one_of_three<St>(strategy: St) -> KillRun<St>
where
    St: Route<String, Request<Body>> + Clone,
{
    let backends = backends([Behaviour::Echo; 3]).await;
    let balance = BalanceLayer::new(strategy.clone())
        .outlier_detection(OutlierDetection::new())
        .skip_tried_endpoints()
        .layer(set_of(&backends));
    let client = ServiceBuilder::new()
        .timeout(Duration::from_secs(10))
        .layer(RetryLayer::new(Policy::new()))
        .service(balance.clone());
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("key-{i}")).collect());

    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (next, answered, keys) = (next.clone(), answered.clone(), keys.clone());
        let mut client = client.clone();
        workers.push(tokio::spawn(async move {
            let mut outcomes: Vec<Outcome> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= REQUESTS {
                    return outcomes;
                }
                let key = i % KEYS;
                let result = match client.ready().await {
                    Ok(client) => client.call(get(&keys[key])).await,
                    Err(error) => Err(error),
                };
                let outcome = match result {
                    Ok(response) if response.status().is_success() => {
                        Ok(header(&response, "x-backend"))
                    }
                    Ok(response) => Err(format!("status {}", response.status())),
                    Err(error) => Err(error.to_string()),
                };
                outcomes.push((key, outcome));
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Waits for the load to reach the kill, on a condition, with the test's deadline.
    while answered.load(Ordering::Relaxed) < KILL_AFTER {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    backends[1].kill().await;
    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.unwrap());
    }
    assert_eq!(outcomes.len(), REQUESTS);
    let names = backends
        .iter()
        .map(|b| (b.authority(), b.name))
        .collect::<HashMap<_, _>>();
    let victim = balance.stats()[1].clone();
    assert_eq!(names[&victim.key], "b2");
    KillRun {
        outcomes,
        keys: keys.to_vec(),
        names,
        victim_failures: victim.failures,
        balance_strategy: strategy,
        backends,
    }
}

struct KillRun<St> {
    outcomes: Vec<Outcome>,
    keys: Vec<String>,
    names: HashMap<String, &'static str>,
    victim_failures: u64,
    balance_strategy: St,
    backends: Vec<Backend>,
}

impl<St> KillRun<St>
where
    St: Route<String, Request<Body>> + Clone,
{
    /// No request failed, and the kill happened while they ran: the victim failed requests
    /// (enough to be ejected), which were retried elsewhere.
    fn assert_no_request_failed(&self) {
        let failed: Vec<_> = self.outcomes.iter().filter(|(_, o)| o.is_err()).collect();
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(
            self.victim_failures >= 5,
            "{} failures",
            self.victim_failures
        );
        assert!(self.backends[1].requests() > 0);
    }

    /// The backends each key's requests reached.
    fn served(&self) -> HashMap<usize, Vec<&str>> {
        let mut served: HashMap<usize, Vec<&str>> = HashMap::new();
        for (key, outcome) in &self.outcomes {
            served
                .entry(*key)
                .or_default()
                .push(outcome.as_deref().unwrap());
        }
        served
    }

    /// Each key's endpoint over `backends`, by name.
    fn owners<'a>(&self, backends: impl IntoIterator<Item = &'a Backend>) -> Vec<&'static str> {
        let balance = BalanceLayer::new(self.balance_strategy.clone()).layer(set_of(backends));
        let map = balance.key_map();
        self.keys
            .iter()
            .map(|k| self.names[map.endpoint_for_key(k).unwrap()])
            .collect()
    }

    /// Keyed strategies: the healthy backends' keys never moved; each of the victim's keys went
    /// to the victim until the kill, and to one other backend (its next candidate) otherwise.
    /// Returns, for each of the victim's keys, where it went.
    fn assert_only_the_victims_keys_moved(&self) -> HashMap<usize, &str> {
        let owners = self.owners(&self.backends);
        let served = self.served();
        let mut moved = HashMap::new();
        for (key, backends) in &served {
            let owner = owners[*key];
            if owner != "b2" {
                assert!(
                    backends.iter().all(|b| *b == owner),
                    "{}: owned by {owner}, served by {backends:?}",
                    self.keys[*key]
                );
                continue;
            }
            let mut elsewhere = backends.iter().filter(|b| **b != "b2");
            let next = elsewhere.next();
            let next = next.unwrap_or_else(|| panic!("{} never moved", self.keys[*key]));
            assert!(
                elsewhere.all(|b| b == next),
                "{}: {backends:?}",
                self.keys[*key]
            );
            moved.insert(*key, *next);
        }
        assert!(!moved.is_empty());
        moved
    }
}

async fn bounded<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test took too long")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_loses_no_request_when_a_backend_dies() {
    bounded(async {
        let run = kill_one_of_three(ConsistentHash::new(key::query("key"))).await;
        run.assert_no_request_failed();
        let moved = run.assert_only_the_victims_keys_moved();
        // Each moved key went to its next endpoint on the ring: the one that owns it in a ring
        // without the victim.
        let survivors = [&run.backends[0], &run.backends[2]];
        let without = run.owners(survivors);
        for (key, to) in moved {
            assert_eq!(to, without[key], "{}", run.keys[key]);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_loses_no_request_when_a_backend_dies() {
    bounded(async {
        let run = kill_one_of_three(Maglev::new(key::query("key"))).await;
        run.assert_no_request_failed();
        run.assert_only_the_victims_keys_moved();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_loses_no_request_when_a_backend_dies() {
    bounded(async {
        let run = kill_one_of_three(Hash::new(key::query("key"))).await;
        run.assert_no_request_failed();
        run.assert_only_the_victims_keys_moved();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_loses_no_request_when_a_backend_dies() {
    bounded(async {
        let run = kill_one_of_three(RoundRobin::new()).await;
        run.assert_no_request_failed();
        // The survivors took the victim's share.
        let served = run.served();
        let count = |name| served.values().flatten().filter(|b| **b == name).count();
        assert!(count("b1") > REQUESTS / 3 && count("b3") > REQUESTS / 3);
    })
    .await;
}

/// The keyless strategies besides round robin: no request fails either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_power_of_two_choices_and_random_lose_no_request() {
    bounded(async {
        kill_one_of_three(WeightedRoundRobin::new())
            .await
            .assert_no_request_failed();
        kill_one_of_three(PowerOfTwoChoices::new())
            .await
            .assert_no_request_failed();
        kill_one_of_three(Random::new())
            .await
            .assert_no_request_failed();
    })
    .await;
}

// ---- abandoned requests ----

const TIMEOUT: Duration = Duration::from_millis(300);

/// A key whose endpoint is `b1` among `backends`, under consistent hashing on `key`.
fn key_of_first(backends: &[Backend]) -> (String, &'static str) {
    let strategy = ConsistentHash::new(key::query("key"));
    let map = BalanceLayer::new(strategy.clone())
        .layer(set_of(backends))
        .key_map();
    let next = BalanceLayer::new(strategy).layer(set_of(&backends[1..]));
    let key = (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| map.endpoint_for_key(k).unwrap() == &backends[0].authority())
        .unwrap();
    let next = next.endpoint_for_key(&key).unwrap();
    let name = backends
        .iter()
        .find(|b| b.authority() == next)
        .unwrap()
        .name;
    (key, name)
}

#[tokio::test]
async fn a_backend_that_never_answers_is_ejected_after_k_abandoned_requests() {
    bounded(async {
        let backends = backends([Behaviour::Stall, Behaviour::Echo, Behaviour::Echo]).await;
        let (key, next) = key_of_first(&backends);
        let detection = OutlierDetection::builder()
            .consecutive_failures(3)
            .abandoned_after(Duration::from_millis(100))
            .build()
            .unwrap();
        let balance = BalanceLayer::new(ConsistentHash::new(key::query("key")))
            .outlier_detection(detection)
            .layer(set_of(&backends));
        let client = ServiceBuilder::new()
            .timeout(TIMEOUT)
            .service(balance.clone());

        for abandoned in 1..=3 {
            let error = client.clone().oneshot(get(&key)).await.unwrap_err();
            assert!(error.is::<Elapsed>(), "{error}");
            // The timeout dropped the request 300 ms after it was sent, past its 100 ms: a
            // failure, counted as the future was dropped.
            let stalled = &balance.stats()[0];
            assert_eq!(stalled.failures, abandoned);
            assert_eq!(stalled.ejected_for.is_some(), abandoned == 3);
        }
        // Ejected: the key's requests go to its next endpoint on the ring, and succeed.
        for _ in 0..5 {
            let response = client.clone().oneshot(get(&key)).await.unwrap();
            assert_eq!(header(&response, "x-backend"), next);
        }
        assert_eq!(backends[0].requests(), 3);
    })
    .await;
}

#[tokio::test]
async fn a_request_dropped_before_its_deadline_is_not_counted() {
    bounded(async {
        let backends = backends([Behaviour::Stall, Behaviour::Echo, Behaviour::Echo]).await;
        let (key, _) = key_of_first(&backends);
        // A deadline far longer than the timeout: the dropped requests are the caller's choice,
        // not the endpoint's failures.
        let detection = OutlierDetection::builder()
            .consecutive_failures(3)
            .abandoned_after(Duration::from_secs(60))
            .build()
            .unwrap();
        let balance = BalanceLayer::new(ConsistentHash::new(key::query("key")))
            .outlier_detection(detection)
            .layer(set_of(&backends));
        let client = ServiceBuilder::new()
            .timeout(TIMEOUT)
            .service(balance.clone());
        for _ in 0..4 {
            let error = client.clone().oneshot(get(&key)).await.unwrap_err();
            assert!(error.is::<Elapsed>(), "{error}");
        }
        let stalled = &balance.stats()[0];
        assert_eq!((stalled.failures, stalled.ejected_for), (0, None));
    })
    .await;
}
