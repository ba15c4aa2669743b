//! The checker beside its set: it follows insertions, removals and replaced services, holds no
//! endpoint that left the set, and ends with the set, leaving no task behind.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tower::Layer;
use tower_lb::{
    health::{probe, HealthCheck},
    strategy::RoundRobin,
    BalanceLayer, Endpoints,
};

use crate::{
    clock::{Answer, Script},
    support::{mocks, send, Mock},
    until, within,
};

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn at(start: Instant, ms: u64) {
    tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_endpoint_is_not_probed_again_and_its_probe_in_progress_is_dropped_at_once() {
    let [a, b, c]: [Mock; 3] = mocks(["a", "b", "c"]);
    let set = Endpoints::from_iter([("a", a.clone()), ("b", b.clone()), ("c", c.clone())]);
    let script = Script::new();
    // b's probe hangs (with a clone of b's service) until a 60 s timeout; c's are quick.
    script.set("b", Answer::Hang);
    let check = HealthCheck::builder(script.probe())
        .interval(Duration::from_secs(1))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));

    at(start, 500).await;
    assert_eq!(b.handles(), 3, "the test's, the set's and the probe's");
    set.remove("b");
    // The checker drops b's probe as soon as it sees the change: no interval, no timeout.
    tokio::task::yield_now().await;
    assert_eq!(b.handles(), 1, "nothing holds b but the test");

    // c, between two probes, is removed: it is never probed again.
    set.remove("c");
    at(start, 10_500).await;
    assert_eq!(script.starts("b", start), [0]);
    assert_eq!(script.starts("c", start), [0]);
    assert_eq!(c.handles(), 1);
    assert_eq!(script.starts("a", start).len(), 11);
}

#[tokio::test(start_paused = true)]
async fn an_inserted_endpoint_is_probed_and_a_replaced_service_is_probed_from_the_next_probe_on() {
    let [a, a2, b]: [Mock; 3] = mocks(["a", "a2", "b"]);
    let set = Endpoints::from_iter([("a", a.clone())]);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    // Logs which service each probe went through.
    let seen: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let log = Arc::clone(&seen);
    let probe = probe::from_fn(move |_key: &&'static str, endpoint: &Mock| {
        log.lock().unwrap().push(endpoint.name());
        async { true }
    });
    let check = HealthCheck::builder(probe)
        .interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));

    at(start, 1_500).await;
    set.insert("b", b.clone());
    tokio::task::yield_now().await;
    // The key a keeps its place and its counts; its next probe goes through the new service.
    set.insert("a", a2.clone());
    at(start, 2_200).await;
    assert_eq!(*seen.lock().unwrap(), ["a", "a", "b", "a2"]);
    let stats = balance.stats();
    assert_eq!(stats[0].probe.as_ref().unwrap().probes, 3);
    assert_eq!(stats[1].probe.as_ref().unwrap().probes, 1);
    assert_eq!(a.handles(), 1, "the replaced service is not held");
}

#[tokio::test]
async fn the_checker_ends_when_the_set_and_every_balancer_are_gone_and_holds_nothing() {
    let [a, b]: [Mock; 2] = mocks(["a", "b"]);
    let set = Endpoints::from_iter([("a", a.clone()), ("b", b.clone())]);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let script = Script::new();
    // b's probe is in progress when the set goes.
    script.set("b", Answer::Hang);
    let check = HealthCheck::builder(script.probe())
        .interval(Duration::from_millis(10))
        .timeout(Duration::from_secs(60))
        .start_healthy()
        .build()
        .unwrap();
    let checker = tokio::spawn(set.check_health(check));
    assert_eq!(alive_tasks(), 1);
    until("a few probes of a", || {
        script.starts("a", Instant::now()).len() >= 3
    })
    .await;
    assert_eq!(b.handles(), 3);

    // The handle goes; the balancer keeps the set alive, and the checker keeps probing.
    drop(set);
    let probes = script.starts("a", Instant::now()).len();
    until("another probe of a", || {
        script.starts("a", Instant::now()).len() > probes
    })
    .await;
    assert!(!checker.is_finished());
    assert_eq!(send(&balance, 2).await, ["a", "b"]);

    drop(balance);
    within("the checker's end", checker).await.unwrap();
    assert_eq!(alive_tasks(), 0, "no task outlives the set");
    assert_eq!(
        (a.handles(), b.handles()),
        (1, 1),
        "nothing holds the endpoints"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_checker_stops_probing_and_lets_back_the_endpoints_it_took_out() {
    let [a, b]: [Mock; 2] = mocks(["a", "b"]);
    let set = Endpoints::from_iter([("a", a.clone()), ("b", b.clone())]);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let script = Script::new();
    script.set("b", Answer::Fail);
    let check = HealthCheck::builder(script.probe())
        .interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let checker = tokio::spawn(set.check_health(check));
    at(start, 500).await;
    assert_eq!(send(&balance, 2).await, ["a", "a"]);

    checker.abort();
    let _ = checker.await;
    let mut answers = send(&balance, 2).await;
    answers.sort_unstable();
    assert_eq!(answers, ["a", "b"]);
    at(start, 10_000).await;
    assert_eq!(script.starts("b", start), [0]);
    assert_eq!(b.handles(), 1 + 1, "the test's and the set's");
}
