//! Key-based routing: `Hash` (crc32 mod N, as the Go handler) and `ConsistentHash` (ketama ring,
//! bounded loads), their fallbacks past unavailable endpoints, and their distribution figures.

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;

use http::{header::HeaderName, Request};
use support::{mocks, Mock, Readiness};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service, ServiceExt};
use tower_lb::{
    error::{InvalidConfig, MissingKey, NoEndpoints, Unavailable},
    key::{self, RequestKey},
    strategy::{ConsistentHash, Hash},
    Balance, BalanceLayer, Endpoints,
};

type Req = Request<()>;

fn user_key() -> impl RequestKey<Req> + Clone + Send + Sync + 'static {
    key::header(HeaderName::from_static("x-key"))
}

fn with_key(key: &str) -> Req {
    Request::builder().header("x-key", key).body(()).unwrap()
}

fn set_of(endpoints: &[Mock<Req>]) -> Endpoints<&'static str, Mock<Req>> {
    Endpoints::from_iter(endpoints.iter().map(|m| (m.name(), m.clone())))
}

async fn route<S>(svc: &S, key: &str) -> &'static str
where
    S: Service<Req, Response = &'static str, Error = tower_lb::BoxError> + Clone,
{
    svc.clone()
        .oneshot(with_key(key))
        .await
        .expect("request failed")
}

// ---- Hash ------------------------------------------------------------------------------------

fn go_table() -> Vec<(String, String)> {
    include_str!("go_mapping.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (key, server) = l.split_once(' ').unwrap();
            (key.to_owned(), server.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn hash_maps_every_key_as_the_go_handler() {
    let servers = mocks(["server1", "server2", "server3"]);
    let strategy = Hash::new(key::query("key").or("default_key"));
    let svc = BalanceLayer::new(strategy).layer(set_of(&servers));

    let table = go_table();
    assert!(table.len() >= 1000);
    for (key, server) in &table {
        assert_eq!(svc.endpoint_for_key(key).unwrap(), server, "key {key}");
        let request = Request::builder()
            .uri(format!("/hash?key={key}"))
            .body(())
            .unwrap();
        assert_eq!(
            svc.clone().oneshot(request).await.unwrap(),
            server,
            "key {key}"
        );
    }
    // The Go handler's examples, and its default for a missing or empty key.
    for (uri, server) in [
        ("/?key=a", "server1"),
        ("/?key=b", "server3"),
        ("/?key=c", "server1"),
        ("/", "server1"),
        ("/?key=", "server1"),
    ] {
        let request = Request::builder().uri(uri).body(()).unwrap();
        assert_eq!(svc.clone().oneshot(request).await.unwrap(), server, "{uri}");
    }
}

#[test]
fn hash_orders_endpoints_by_key_not_by_insertion() {
    let forward = Endpoints::from_iter([("server1", ()), ("server2", ()), ("server3", ())]);
    let backward = Endpoints::from_iter([("server3", ()), ("server2", ()), ("server1", ())]);
    let a: Balance<_, _, ()> = Balance::new(Hash::new(user_key()), forward);
    let b: Balance<_, _, ()> = Balance::new(Hash::new(user_key()), backward);
    for (key, server) in go_table() {
        assert_eq!(a.endpoint_for_key(&key).unwrap(), server);
        assert_eq!(b.endpoint_for_key(&key).unwrap(), server);
    }
}

#[tokio::test]
async fn hash_falls_back_to_the_next_endpoint_and_returns() {
    let servers: [Mock<Req>; 3] = mocks(["server1", "server2", "server3"]);
    let svc = BalanceLayer::new(Hash::new(user_key())).layer(set_of(&servers));
    let table = go_table();
    let before: Vec<&str> = table.iter().map(|(k, _)| k.as_str()).collect();

    servers[2].set_readiness(Readiness::Fail);
    for key in &before {
        let own = svc.endpoint_for_key(key).unwrap();
        let expected = if own == "server3" { "server1" } else { own };
        assert_eq!(route(&svc, key).await, expected, "key {key}");
    }
    servers[0].set_readiness(Readiness::Pending);
    // server3's keys now walk past server1 (pending) to server2; server1's keys go to server2.
    for key in before.iter().take(100) {
        let own = svc.endpoint_for_key(key).unwrap();
        assert_eq!(route(&svc, key).await, "server2", "key {key} of {own}");
    }

    servers[0].set_readiness(Readiness::Ready);
    servers[2].set_readiness(Readiness::Ready);
    for key in &before {
        assert_eq!(route(&svc, key).await, svc.endpoint_for_key(key).unwrap());
    }
    assert_eq!(
        servers[2].calls(),
        before
            .iter()
            .filter(|k| svc.endpoint_for_key(k) == Some("server3"))
            .count()
    );
}

#[test]
fn weighted_hash_gives_each_endpoint_its_slots() {
    let set = Endpoints::try_from_weighted([("a", (), 1), ("b", (), 2), ("c", (), 1)]).unwrap();
    let svc: Balance<_, _, ()> = Balance::new(Hash::new(user_key()), set);
    let mut counts = HashMap::new();
    for i in 0..40_000 {
        let key = format!("key-{i}");
        let slot = crc32fast::hash(key.as_bytes()) % 4;
        let expected = ["a", "b", "b", "c"][slot as usize];
        let got = svc.endpoint_for_key(&key).unwrap();
        assert_eq!(got, expected);
        *counts.entry(got).or_insert(0) += 1;
    }
    assert!((19_000..21_000).contains(&counts["b"]), "{counts:?}");
}

#[tokio::test]
async fn request_without_a_key_fails_with_missing_key() {
    let svc = BalanceLayer::new(Hash::new(key::query("key"))).layer(set_of(&mocks(["a"])));
    let request = Request::builder().uri("/no-key").body(()).unwrap();
    let err = svc.clone().oneshot(request).await.unwrap_err();
    assert!(err.is::<MissingKey>(), "{err}");

    let svc = BalanceLayer::new(ConsistentHash::new(user_key())).layer(set_of(&mocks(["a"])));
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is::<MissingKey>(), "{err}");
}

#[tokio::test]
async fn keyed_strategies_fail_fast_on_an_empty_set() {
    let set: Endpoints<&str, Mock<Req>> = Endpoints::new();
    let svc = BalanceLayer::new(Hash::new(user_key())).layer(set.clone());
    assert!(svc
        .clone()
        .oneshot(with_key("a"))
        .await
        .unwrap_err()
        .is::<NoEndpoints>());
    assert_eq!(svc.endpoint_for_key("a"), None);
    let svc = BalanceLayer::new(ConsistentHash::new(user_key())).layer(set);
    assert!(svc
        .oneshot(with_key("a"))
        .await
        .unwrap_err()
        .is::<NoEndpoints>());
}

#[tokio::test]
async fn keyed_request_fails_with_unavailable_when_every_endpoint_fails() {
    let servers = mocks(["a", "b"]);
    for s in &servers {
        s.set_readiness(Readiness::Fail);
    }
    let svc = BalanceLayer::new(ConsistentHash::new(user_key())).layer(set_of(&servers));
    let err = svc.oneshot(with_key("k")).await.unwrap_err();
    let unavailable = err.downcast_ref::<Unavailable>().expect("Unavailable");
    assert_eq!(unavailable.tried(), 2);
    assert_eq!(servers[0].calls() + servers[1].calls(), 0);
}

// ---- ConsistentHash: distribution figures ----------------------------------------------------

const KEYS: usize = 1_000_000;

fn ring(names: &[String]) -> Balance<ConsistentHash<key::Header>, String, ()> {
    let set = Endpoints::from_iter(names.iter().map(|n| (n.clone(), ())));
    Balance::new(
        ConsistentHash::new(key::header(HeaderName::from_static("x-key"))),
        set,
    )
}

fn owners(svc: &Balance<ConsistentHash<key::Header>, String, ()>) -> Vec<String> {
    (0..KEYS)
        .map(|i| svc.endpoint_for_key(format!("key-{i}")).unwrap())
        .collect()
}

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
        .collect()
}

#[test]
fn consistent_hash_figures_over_a_million_keys() {
    let hundred = names(100);
    let svc = ring(&hundred);
    let before = owners(&svc);

    let mut load: HashMap<&str, usize> = HashMap::new();
    for owner in &before {
        *load.entry(owner).or_insert(0) += 1;
    }
    assert_eq!(load.len(), 100);
    let mean = KEYS as f64 / 100.0;
    let max = *load.values().max().unwrap() as f64;
    assert!(max / mean <= 1.30, "max/mean {}", max / mean);

    // Adding a 101st endpoint moves at most 1.2/101 of the keys, all to it.
    let newcomer = "10.0.9.9:8080".to_string();
    svc.endpoints().insert(newcomer.clone(), ());
    let after = owners(&svc);
    let moved: Vec<usize> = (0..KEYS).filter(|&i| before[i] != after[i]).collect();
    assert!(
        moved.len() as f64 <= 1.2 / 101.0 * KEYS as f64,
        "moved {}",
        moved.len()
    );
    assert!(moved.iter().all(|&i| after[i] == newcomer));

    // Removing it again restores every key; removing another moves only that one's keys.
    svc.endpoints().remove(&newcomer);
    assert_eq!(owners(&svc), before);
    let gone = hundred[42].clone();
    svc.endpoints().remove(&gone);
    let without = owners(&svc);
    for i in 0..KEYS {
        if before[i] == gone {
            assert_ne!(without[i], gone);
        } else {
            assert_eq!(without[i], before[i]);
        }
    }
}

#[test]
fn consistent_hash_is_the_same_whatever_the_insertion_order() {
    let forward = names(50);
    let mut shuffled = forward.clone();
    shuffled.reverse();
    shuffled.swap(3, 17);
    let a = ring(&forward);
    let b = ring(&shuffled);
    for i in 0..100_000 {
        let key = format!("key-{i}");
        assert_eq!(a.endpoint_for_key(&key), b.endpoint_for_key(&key));
    }
}

#[test]
fn consistent_hash_weight_two_takes_twice_the_keys() {
    let names = names(20);
    let set = Endpoints::try_from_weighted(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), (), if i == 0 { 2 } else { 1 })),
    )
    .unwrap();
    let svc: Balance<_, _, ()> = Balance::new(ConsistentHash::new(user_key()), set);
    let mut load: HashMap<String, usize> = HashMap::new();
    for i in 0..200_000 {
        *load
            .entry(svc.endpoint_for_key(format!("key-{i}")).unwrap())
            .or_insert(0) += 1;
    }
    let mean_weight_one = (200_000 - load[&names[0]]) as f64 / 19.0;
    let ratio = load[&names[0]] as f64 / mean_weight_one;
    assert!((1.7..=2.3).contains(&ratio), "weight-2 share ratio {ratio}");
}

// ---- ConsistentHash: availability and bounded loads ------------------------------------------

#[tokio::test]
async fn unavailable_endpoint_keys_walk_the_ring_and_come_back() {
    let servers: [Mock<Req>; 4] = mocks(["a", "b", "c", "d"]);
    let svc = BalanceLayer::new(ConsistentHash::new(user_key())).layer(set_of(&servers));
    let keys: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let own: Vec<&str> = keys
        .iter()
        .map(|k| svc.endpoint_for_key(k).unwrap())
        .collect();
    for (key, owner) in keys.iter().zip(&own) {
        assert_eq!(route(&svc, key).await, *owner);
    }

    servers[1].set_readiness(Readiness::Fail);
    let mut moved_to = HashMap::new();
    for (key, owner) in keys.iter().zip(&own) {
        let got = route(&svc, key).await;
        if *owner == "b" {
            assert_ne!(got, "b");
            *moved_to.entry(got).or_insert(0) += 1;
        } else {
            // Other keys never move.
            assert_eq!(got, *owner, "key {key}");
        }
    }
    // b's keys spread over its ring successors rather than all landing on one endpoint.
    assert!(moved_to.len() >= 2, "{moved_to:?}");

    // The same key keeps landing on the same fallback while b is down.
    let b_key = keys.iter().zip(&own).find(|(_, o)| **o == "b").unwrap().0;
    let fallback = route(&svc, b_key).await;
    assert_eq!(route(&svc, b_key).await, fallback);

    servers[1].set_readiness(Readiness::Ready);
    for (key, owner) in keys.iter().zip(&own) {
        assert_eq!(route(&svc, key).await, *owner);
    }
}

#[tokio::test]
async fn pending_endpoint_is_passed_over_and_its_wakeup_kept() {
    let servers: [Mock<Req>; 2] = mocks(["a", "b"]);
    let svc = BalanceLayer::new(ConsistentHash::new(user_key()))
        .max_tries(1)
        .layer(set_of(&servers));
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| svc.endpoint_for_key(k) == Some("a"))
        .unwrap();
    servers[0].set_readiness(Readiness::Pending);

    // With one try, the request waits for its own endpoint...
    let mut response = task::spawn(svc.clone().oneshot(with_key(&key)));
    assert_pending!(response.poll());
    assert_eq!(servers[1].calls(), 0);
    // ...and is woken, and served there, when it becomes ready.
    servers[0].set_readiness(Readiness::Ready);
    assert!(response.is_woken());
    assert_eq!(assert_ready!(response.poll()).unwrap(), "a");

    // With more tries, a pending endpoint is passed over for its ring successor.
    let svc = BalanceLayer::new(ConsistentHash::new(user_key())).layer(set_of(&servers));
    servers[0].set_readiness(Readiness::Pending);
    assert_eq!(route(&svc, &key).await, "b");
    assert_eq!(servers[0].calls(), 1);
}

#[tokio::test]
async fn bounded_load_caps_every_endpoint_at_factor_times_mean() {
    const N: usize = 4;
    let servers: [Mock<Req>; N] = mocks(["a", "b", "c", "d"]);
    for s in &servers {
        s.hold(true);
    }
    let strategy = ConsistentHash::new(user_key()).bounded_load(1.25).unwrap();
    let svc = BalanceLayer::new(strategy).layer(set_of(&servers));

    // One hot key: without a bound, all of it would go to one endpoint.
    let mut held = Vec::new();
    for m in 1..=40usize {
        let mut response = task::spawn(svc.clone().oneshot(with_key("hot")));
        assert_pending!(response.poll());
        held.push(response);
        let cap = (1.25 * m as f64 / N as f64).ceil() as usize;
        for s in &servers {
            assert!(
                s.in_flight() <= cap,
                "{} has {} > {cap} at m={m}",
                s.name(),
                s.in_flight()
            );
        }
    }
    let busiest = servers.iter().map(Mock::in_flight).max().unwrap();
    assert_eq!(busiest, 13, "ceil(1.25 * 40 / 4)");

    for s in &servers {
        s.release();
    }
    for mut response in held {
        assert!(assert_ready!(response.poll()).is_ok());
    }
    // Every completed request released its count: the hot key's own endpoint takes the next
    // requests again.
    let own = svc.endpoint_for_key("hot").unwrap();
    assert_eq!(route(&svc, "hot").await, own);
}

#[tokio::test]
async fn dropped_requests_release_their_in_flight_count() {
    let servers: [Mock<Req>; 2] = mocks(["a", "b"]);
    servers[0].hold(true);
    servers[1].hold(true);
    let strategy = ConsistentHash::new(user_key()).bounded_load(1.5).unwrap();
    let svc = BalanceLayer::new(strategy).layer(set_of(&servers));
    let own = svc.endpoint_for_key("hot").unwrap();

    for _ in 0..10 {
        let mut response = task::spawn(svc.clone().oneshot(with_key("hot")));
        assert_pending!(response.poll());
        drop(response);
    }
    // Had the cancelled requests kept their counts, the bound would now push "hot" away from
    // its own endpoint.
    servers[0].release();
    servers[1].release();
    assert_eq!(route(&svc, "hot").await, own);
}

/// A request waiting for busy endpoints is in flight nowhere yet: with bounded loads it holds no
/// count on the endpoints it waits for, and is counted once, where it goes, when one is ready.
#[tokio::test]
async fn bounded_load_counts_a_waiting_request_only_where_it_goes() {
    let servers: [Mock<Req>; 3] = mocks(["a", "b", "c"]);
    for s in &servers {
        s.set_readiness(Readiness::Pending);
        s.hold(true);
    }
    let strategy = ConsistentHash::new(user_key()).bounded_load(1.25).unwrap();
    let set = set_of(&servers);
    let svc = BalanceLayer::new(strategy).layer(set.clone());

    let mut response = task::spawn(svc.clone().oneshot(with_key("hot")));
    assert_pending!(response.poll());
    for s in &servers {
        assert_eq!(
            set.in_flight(s.name()),
            Some(0),
            "{} while waiting",
            s.name()
        );
    }

    servers[1].set_readiness(Readiness::Ready);
    assert!(response.is_woken());
    assert_pending!(response.poll());
    let counts: Vec<_> = servers.iter().map(|s| set.in_flight(s.name())).collect();
    assert_eq!(counts, [Some(0), Some(1), Some(0)], "counted where it went");
    assert_eq!(servers[1].calls(), 1);

    servers[1].release();
    assert!(assert_ready!(response.poll()).is_ok());
    assert_eq!(set.in_flight("b"), Some(0));
}

#[test]
fn invalid_consistent_hash_options_are_rejected() {
    let err: InvalidConfig = ConsistentHash::new(user_key())
        .bounded_load(1.0)
        .err()
        .unwrap();
    assert_eq!(err.option(), "load factor");
    assert!(ConsistentHash::new(user_key())
        .bounded_load(f64::NAN)
        .is_err());
    assert!(ConsistentHash::new(user_key())
        .points_per_weight(0)
        .is_err());
    assert!(ConsistentHash::new(user_key())
        .points_per_weight(1 << 20)
        .is_err());
    assert!(ConsistentHash::new(user_key())
        .points_per_weight(40)
        .is_ok());
}
