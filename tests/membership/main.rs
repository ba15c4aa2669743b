#[path = "../support/mod.rs"]
mod support;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
};

use support::{mocks, send, tally, Mock};
use tower::{Layer, Service, ServiceExt};
use tower_lb::{strategy::RoundRobin, Balance, BalanceLayer, Endpoints};

fn balance(set: &Endpoints<&'static str, Mock>) -> Balance<RoundRobin, &'static str, Mock> {
    BalanceLayer::new(RoundRobin::new()).layer(set.clone())
}

fn set_of(endpoints: &[Mock]) -> Endpoints<&'static str, Mock> {
    Endpoints::from_iter(endpoints.iter().map(|m| (m.name(), m.clone())))
}

#[tokio::test]
async fn removed_endpoint_keeps_its_in_flight_request() {
    let [a, b, c] = mocks(["a", "b", "c"]);
    let set = set_of(&[a.clone(), b.clone(), c.clone()]);
    let svc = balance(&set);
    assert_eq!(send(&svc, 1).await, ["a"]);

    b.hold(true);
    let in_flight = tokio::spawn(svc.clone().oneshot(()));
    while b.in_flight() == 0 {
        tokio::task::yield_now().await;
    }

    assert!(set.remove("b"));
    assert!(!set.remove("b"));
    b.release();
    assert_eq!(in_flight.await.unwrap().unwrap(), "b");

    let names = send(&svc, 10).await;
    assert!(!names.contains(&"b"), "{names:?}");
    assert_eq!(b.calls(), 1);
}

#[tokio::test]
async fn inserted_endpoint_enters_the_rotation() {
    let [a, b] = mocks(["a", "b"]);
    let set = set_of(std::slice::from_ref(&a));
    let svc = balance(&set);
    assert_eq!(send(&svc, 2).await, ["a", "a"]);

    assert!(set.insert("b", b.clone()));
    assert_eq!(send(&svc, 4).await, ["a", "b", "a", "b"]);
}

#[tokio::test]
async fn replacing_a_service_keeps_its_place_and_in_flight_requests() {
    let [a, b] = mocks(["a", "b"]);
    let set = set_of(&[a.clone(), b.clone()]);
    let svc = balance(&set);

    a.hold(true);
    let in_flight = tokio::spawn(svc.clone().oneshot(()));
    while a.in_flight() == 0 {
        tokio::task::yield_now().await;
    }

    let replacement = Mock::new("a2");
    assert!(!set.insert("a", replacement.clone()));
    assert_eq!(set.keys(), ["a", "b"]);
    a.release();
    assert_eq!(in_flight.await.unwrap().unwrap(), "a");

    assert_eq!(send(&svc, 3).await, ["b", "a2", "b"]);
    assert_eq!(a.calls(), 1);
}

#[test]
fn repeated_keys_keep_the_last_service_in_the_first_place() {
    let set = Endpoints::from_iter([("a", 1), ("b", 2), ("a", 3)]);
    assert_eq!(set.keys(), ["a", "b"]);
    assert_eq!(set.len(), 2);

    let set = Endpoints::try_from_weighted([("a", 1, 1), ("b", 2, 1), ("a", 3, 7)]).unwrap();
    assert_eq!(set.keys(), ["a", "b"]);
    assert_eq!(set.weight("a"), Some(7));
    assert!(set.contains("b"));
    assert!(!set.contains("c"));
    assert_eq!(format!("{set:?}"), r#"{"a": 7, "b": 1}"#);
}

#[tokio::test]
async fn repeated_keys_route_to_the_last_service() {
    let [first, last] = mocks(["first", "last"]);
    let set = Endpoints::from_iter([("a", first.clone()), ("a", last.clone())]);
    assert_eq!(send(&balance(&set), 2).await, ["last", "last"]);
}

#[tokio::test]
async fn every_balancer_over_a_set_follows_its_changes() {
    let [a, b] = mocks(["a", "b"]);
    let set = set_of(std::slice::from_ref(&a));
    let first = balance(&set);
    let second = balance(&set);
    set.insert("b", b.clone());
    assert_eq!(send(&first, 2).await, ["a", "b"]);
    assert_eq!(send(&second, 2).await, ["a", "b"]);
    assert_eq!(first.endpoints().len(), 2);
}

#[tokio::test]
async fn dropped_balancers_stop_following_the_set() {
    let set = set_of(&mocks(["a"]));
    drop(balance(&set));
    // A change after the balancer is gone must not fail or keep it alive.
    set.insert("b", Mock::new("b"));
    let svc = balance(&set);
    assert_eq!(send(&svc, 2).await, ["a", "b"]);
}

#[test]
fn changes_from_many_threads_while_requests_flow() {
    let base = mocks(["a", "b", "c"]);
    let set = set_of(&base);
    let svc = balance(&set);
    let churn: Vec<Mock> = mocks(["x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7"]).into();
    let stop = AtomicBool::new(false);

    let answered = thread::scope(|scope| {
        let writers: Vec<_> = churn
            .chunks(4)
            .map(|chunk| {
                let set = set.clone();
                scope.spawn(move || {
                    for round in 0..200u32 {
                        for m in chunk {
                            set.insert(m.name(), m.clone());
                            set.set_weight(m.name(), 1 + round % 3).unwrap();
                        }
                        for m in chunk {
                            assert!(set.remove(m.name()));
                        }
                    }
                })
            })
            .collect();
        let reader = scope.spawn(|| {
            tokio_test::block_on(async {
                let mut names = Vec::new();
                while !stop.load(Ordering::Relaxed) || names.len() < 3000 {
                    names.push(svc.clone().oneshot(()).await.unwrap());
                }
                names
            })
        });
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    });

    // Every request was answered by an endpoint that was a member at some point.
    let known: Vec<&str> = base.iter().chain(&churn).map(Mock::name).collect();
    assert!(answered.iter().all(|n| known.contains(n)));
    // The churn is over: the set is back to its base members, and so is the rotation.
    assert_eq!(set.keys(), ["a", "b", "c"]);
    let after = tokio_test::block_on(send(&svc, 300));
    assert!(
        tally(&after).values().all(|&n| n == 100),
        "{:?}",
        tally(&after)
    );
}

#[tokio::test]
async fn removed_endpoint_is_released_once_its_requests_finish() {
    let [a, b] = mocks(["a", "b"]);
    let set = set_of(&[a.clone(), b.clone()]);
    // A template that is only cloned, as a router does, and a balancer that is reused.
    let template = balance(&set);
    let mut reused = balance(&set);
    for _ in 0..2 {
        send(&template, 2).await;
        reused.ready().await.unwrap().call(()).await.unwrap();
    }

    assert!(set.remove("b"));
    send(&template, 1).await;
    reused.ready().await.unwrap().call(()).await.unwrap();
    // Nothing in the balancers holds the removed endpoint any more: only this test does.
    assert_eq!(b.handles(), 1);
    assert!(a.handles() > 1);
}
