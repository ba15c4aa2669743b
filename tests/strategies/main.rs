//! Load-aware and table strategies: `Maglev`, `PowerOfTwoChoices`, `Random`.

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;

use http::{header::HeaderName, Request};
use support::{mocks, Mock, Readiness};
use tower::{Layer, ServiceExt};
use tower_lb::{
    error::InvalidConfig,
    key::{self, RequestKey},
    strategy::Maglev,
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
    // loads lands near 1 + 2.5%. Measured: 1.0211. The bound asserted is that statistical one.
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
