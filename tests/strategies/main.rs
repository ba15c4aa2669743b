//! Load-aware and table strategies: `Maglev`, `PowerOfTwoChoices`, `Random`.

#[path = "../support/mod.rs"]
mod support;

use std::{collections::HashMap, time::Duration};

use http::{header::HeaderName, Request};
use support::{mocks, Mock, Readiness};
use tower::{Layer, Service, ServiceExt};
use tower_lb::{
    error::InvalidConfig,
    key::{self, RequestKey},
    strategy::{Maglev, PowerOfTwoChoices, Random},
    Balance, BalanceLayer, Endpoints, KeyMap,
};

type Req = Request<()>;

fn user_key() -> impl RequestKey<Req> + Clone + Send + Sync + 'static {
    key::header(HeaderName::from_static("x-key"))
}

fn with_key(key: &str) -> Req {
    Request::builder().header("x-key", key).body(()).unwrap()
}

// ---- Maglev ----------------------------------------------------------------------------------

const KEYS: usize = 1_000_000;

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
        .collect()
}

type MaglevBalance = Balance<Maglev<key::Header>, String, ()>;

fn maglev(set: Endpoints<String, ()>) -> MaglevBalance {
    Balance::new(
        Maglev::new(key::header(HeaderName::from_static("x-key"))),
        set,
    )
}

fn owners(map: &KeyMap<Maglev<key::Header>, String, ()>) -> Vec<String> {
    (0..KEYS)
        .map(|i| map.endpoint_for_key(format!("key-{i}")).unwrap().clone())
        .collect()
}

fn loads(owners: &[String]) -> HashMap<&str, usize> {
    let mut load = HashMap::new();
    for owner in owners {
        *load.entry(owner.as_str()).or_insert(0) += 1;
    }
    load
}

#[test]
fn maglev_figures_over_a_million_keys() {
    let hundred = names(100);
    let svc = maglev(Endpoints::from_iter(
        hundred.iter().map(|n| (n.clone(), ())),
    ));
    let before = owners(&svc.key_map());

    let load = loads(&before);
    assert_eq!(load.len(), 100);
    let mean = KEYS as f64 / 100.0;
    let max = *load.values().max().unwrap() as f64;
    println!("maglev N=100 M=65537: key max/mean {:.4}", max / mean);
    // The table itself is balanced to one entry (655 or 656 of 65,537, see the unit tests). What
    // is left is the hashing of keys into entries: 1,000,000 keys over 100 endpoints give each
    // about 10,000 with a standard deviation of 1% whatever the hash, and the largest of 100 such
    // loads lands near 1 + 2.5%: 1,000 simulated runs of perfectly equal shares with a uniform
    // random hash give a median of 1.0245 and stay within 1.02 in only 9% of the runs. Measured
    // here: 1.0211. The bound asserted is that statistical one.
    assert!(max / mean <= 1.025, "max/mean {}", max / mean);

    // Removing one endpoint remaps its keys and at most 2% of all keys in total.
    let gone = hundred[42].clone();
    svc.endpoints().remove(&gone);
    let after = owners(&svc.key_map());
    let moved = (0..KEYS).filter(|&i| before[i] != after[i]).count();
    let moved_others = (0..KEYS)
        .filter(|&i| before[i] != gone && before[i] != after[i])
        .count();
    println!(
        "maglev remove one of 100: {:.3}% of keys moved, {:.3}% of keys of other endpoints",
        100.0 * moved as f64 / KEYS as f64,
        100.0 * moved_others as f64 / KEYS as f64
    );
    assert!(moved as f64 <= 0.02 * KEYS as f64, "moved {moved}");
    assert!((0..KEYS).all(|i| after[i] != gone));
}

#[test]
fn maglev_table_is_the_same_whatever_the_insertion_order() {
    let forward = names(60);
    let mut shuffled = forward.clone();
    shuffled.reverse();
    shuffled.swap(5, 40);
    let a = maglev(Endpoints::from_iter(
        forward.iter().map(|n| (n.clone(), ())),
    ));
    let b = maglev(Endpoints::from_iter(
        shuffled.iter().map(|n| (n.clone(), ())),
    ));
    let (a, b) = (a.key_map(), b.key_map());
    for i in 0..100_000 {
        let key = format!("key-{i}");
        assert_eq!(a.endpoint_for_key(&key), b.endpoint_for_key(&key));
    }
}

#[test]
fn maglev_weights_one_to_two_give_shares_one_to_two() {
    let names = names(10);
    let set = Endpoints::try_from_weighted(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), (), if i % 2 == 0 { 1 } else { 2 })),
    )
    .unwrap();
    let svc = maglev(set);
    let owners = owners(&svc.key_map());
    let load = loads(&owners);
    let light: usize = (0..10).step_by(2).map(|i| load[names[i].as_str()]).sum();
    let heavy: usize = (1..10).step_by(2).map(|i| load[names[i].as_str()]).sum();
    let ratio = heavy as f64 / light as f64;
    assert!((ratio / 2.0 - 1.0).abs() <= 0.02, "heavy/light {ratio}");
}

#[test]
fn maglev_rejects_non_prime_sizes_and_fails_requests_on_too_small_a_table() {
    let err: InvalidConfig = Maglev::new(user_key()).table_size(65_536).err().unwrap();
    assert_eq!(err.option(), "table size");
    assert!(Maglev::new(user_key()).table_size(1).is_err());
    assert!(Maglev::new(user_key()).table_size(1 << 25).is_err());

    let set = Endpoints::from_iter((0..10).map(|i| (format!("e{i}"), Mock::<Req>::new("e"))));
    let svc = BalanceLayer::new(Maglev::new(user_key()).table_size(7).unwrap()).layer(set.clone());
    let err = tokio_test::block_on(svc.clone().oneshot(with_key("a"))).unwrap_err();
    assert!(err.is::<InvalidConfig>(), "{err}");
    assert_eq!(
        err.to_string(),
        "invalid table size: must be at least the number of endpoints, got 7 for 10 endpoints"
    );
    assert_eq!(svc.endpoint_for_key("a"), None);

    // Once the set fits, requests flow again.
    for i in 7..10 {
        set.remove(&format!("e{i}"));
    }
    assert!(tokio_test::block_on(svc.oneshot(with_key("a"))).is_ok());
}

#[tokio::test]
async fn maglev_unavailable_endpoint_keys_move_and_come_back() {
    let servers: [Mock<Req>; 4] = mocks(["a", "b", "c", "d"]);
    let set = Endpoints::from_iter(servers.iter().map(|m| (m.name(), m.clone())));
    let svc = BalanceLayer::new(Maglev::new(user_key()).table_size(251).unwrap()).layer(set);
    let keys: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let own: Vec<&str> = keys
        .iter()
        .map(|k| svc.endpoint_for_key(k).unwrap())
        .collect();

    servers[2].set_readiness(Readiness::Fail);
    let mut moved_to = HashMap::new();
    for (key, owner) in keys.iter().zip(&own) {
        let got = svc.clone().oneshot(with_key(key)).await.unwrap();
        if *owner == "c" {
            assert_ne!(got, "c");
            *moved_to.entry(got).or_insert(0) += 1;
        } else {
            assert_eq!(got, *owner, "key {key}");
        }
    }
    assert!(moved_to.len() >= 2, "{moved_to:?}");

    servers[2].set_readiness(Readiness::Ready);
    for (key, owner) in keys.iter().zip(&own) {
        assert_eq!(svc.clone().oneshot(with_key(key)).await.unwrap(), *owner);
    }
}

// ---- PowerOfTwoChoices -----------------------------------------------------------------------

fn unit_set(endpoints: &[Mock]) -> Endpoints<&'static str, Mock> {
    Endpoints::from_iter(endpoints.iter().map(|m| (m.name(), m.clone())))
}

#[tokio::test]
async fn p2c_sends_far_fewer_requests_to_an_endpoint_that_holds_them() {
    let servers = mocks(["fast1", "slow", "fast2", "fast3"]);
    servers[1].hold(true);
    let set = unit_set(&servers);
    let svc = BalanceLayer::new(PowerOfTwoChoices::seeded(1)).layer(set.clone());

    let mut tasks = Vec::new();
    for _ in 0..1000 {
        tasks.push(tokio::spawn(svc.clone().oneshot(())));
        // Let the fast endpoints' responses complete before the next pick.
        tokio::task::yield_now().await;
    }
    // The slow endpoint holds every request it gets, so its in-flight count only grows, and any
    // draw that pairs it with an idle fast endpoint goes to the fast one: after its first request
    // it is never chosen again. Asserted: at most 1% of the requests.
    let slow = servers[1].calls();
    assert!(slow <= 10, "slow endpoint got {slow} of 1000");
    assert_eq!(set.in_flight("slow"), Some(slow));
    let fast: usize = [0, 2, 3].iter().map(|&i| servers[i].calls()).sum();
    assert_eq!(fast + slow, 1000);

    servers[1].release();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // Every count returned to zero.
    for s in &servers {
        assert_eq!(set.in_flight(s.name()), Some(0));
    }
}

#[tokio::test]
async fn p2c_in_flight_counts_return_to_zero_when_futures_are_dropped() {
    let servers = mocks(["a", "b", "c"]);
    for s in &servers {
        s.hold(true);
    }
    let set = unit_set(&servers);
    let svc = BalanceLayer::new(PowerOfTwoChoices::seeded(2)).layer(set.clone());

    // Dropped while waiting for the response.
    let mut held = Vec::new();
    for _ in 0..30 {
        let mut response = tokio_test::task::spawn(svc.clone().oneshot(()));
        tokio_test::assert_pending!(response.poll());
        held.push(response);
    }
    let total: usize = servers
        .iter()
        .map(|s| set.in_flight(s.name()).unwrap())
        .sum();
    assert_eq!(total, 30);
    // Each draw compares two of the three, so the loads stay close to the mean of 10 without
    // being exactly level.
    for s in &servers {
        let load = set.in_flight(s.name()).unwrap();
        assert!((8..=12).contains(&load), "{}: {load}", s.name());
    }
    drop(held);

    // Reserved in poll_ready but never called.
    let mut reserved = svc.clone();
    reserved.ready().await.unwrap();
    let total: usize = servers
        .iter()
        .map(|s| set.in_flight(s.name()).unwrap())
        .sum();
    assert_eq!(total, 1);
    drop(reserved);

    for s in &servers {
        assert_eq!(set.in_flight(s.name()), Some(0));
    }
}

#[tokio::test]
async fn p2c_weights_shift_the_share() {
    let servers = mocks(["light", "heavy"]);
    for s in &servers {
        s.hold(true);
    }
    let set = Endpoints::try_from_weighted([
        ("light", servers[0].clone(), 1),
        ("heavy", servers[1].clone(), 3),
    ])
    .unwrap();
    let svc = BalanceLayer::new(PowerOfTwoChoices::seeded(9)).layer(set.clone());
    let mut held = Vec::new();
    for _ in 0..400 {
        let mut response = tokio_test::task::spawn(svc.clone().oneshot(()));
        tokio_test::assert_pending!(response.poll());
        held.push(response);
    }
    // With every request held, the loads divided by weight stay level: 100 and 300.
    let light = set.in_flight("light").unwrap();
    let heavy = set.in_flight("heavy").unwrap();
    assert!((99..=101).contains(&light), "light {light}, heavy {heavy}");
    assert_eq!(light + heavy, 400);
}

#[tokio::test]
async fn p2c_peak_ewma_avoids_a_high_latency_endpoint() {
    let servers = mocks(["fast1", "slow", "fast2", "fast3"]);
    let set = unit_set(&servers);
    let strategy = PowerOfTwoChoices::seeded(3)
        .peak_ewma(Duration::from_millis(5), Duration::from_secs(10))
        .unwrap();
    let svc = BalanceLayer::new(strategy).layer(set);
    let slow = servers[1].clone();

    let mut slow_answers = 0;
    for _ in 0..300 {
        let mut ready = svc.clone();
        let ready = ready.ready().await.unwrap();
        let response = ready.call(());
        if slow.calls() > slow_answers {
            // The slow endpoint answers after 25 ms, the others at once.
            slow_answers = slow.calls();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        response.await.unwrap();
    }
    // Once measured at 25 ms against microseconds for the others, the slow endpoint loses every
    // draw: it serves at most its first few requests.
    assert!(slow.calls() <= 3, "slow endpoint got {}", slow.calls());
}

#[test]
fn p2c_seeded_strategies_replay_the_same_picks() {
    let picks = |seed| {
        let servers = mocks(["a", "b", "c", "d"]);
        let svc = BalanceLayer::new(PowerOfTwoChoices::seeded(seed)).layer(unit_set(&servers));
        tokio_test::block_on(support::send(&svc, 50))
    };
    assert_eq!(picks(5), picks(5));
    assert_ne!(picks(5), picks(6));
    assert!(PowerOfTwoChoices::new()
        .peak_ewma(Duration::ZERO, Duration::from_secs(1))
        .is_err());
}

// ---- Random ----------------------------------------------------------------------------------

#[test]
fn random_shares_follow_the_weights() {
    let servers = mocks(["a", "b", "c"]);
    let set = Endpoints::try_from_weighted(
        servers
            .iter()
            .zip([1, 2, 3])
            .map(|(m, w)| (m.name(), m.clone(), w)),
    )
    .unwrap();
    let svc = BalanceLayer::new(Random::seeded(11)).layer(set);
    let names = tokio_test::block_on(support::send(&svc, 60_000));
    let counts = support::tally(&names);
    // Within 3% of the expected 10,000 / 20,000 / 30,000 (each more than 5 standard deviations).
    for (name, expected) in [("a", 10_000.0), ("b", 20_000.0), ("c", 30_000.0)] {
        let got = counts[name] as f64;
        assert!((got / expected - 1.0).abs() <= 0.03, "{name}: {got}");
    }
    let again = tokio_test::block_on(support::send(
        &BalanceLayer::new(Random::seeded(11)).layer(unit_set(&mocks(["a", "b", "c"]))),
        10,
    ));
    assert_eq!(again.len(), 10);
}

#[test]
fn random_unweighted_picks_are_uniform_and_seeded_runs_repeat() {
    let run = |seed| {
        let svc =
            BalanceLayer::new(Random::seeded(seed)).layer(unit_set(&mocks(["a", "b", "c", "d"])));
        tokio_test::block_on(support::send(&svc, 40_000))
    };
    let names = run(4);
    assert_eq!(names, run(4));
    for (_, count) in support::tally(&names) {
        assert!((9_700..=10_300).contains(&count), "{count}");
    }
}
