#[path = "../support/mod.rs"]
mod support;

use std::thread;

use support::{mocks, send, tally, Mock};
use tower::{Layer, Service, ServiceExt};
use tower_lb::{error::NotReady, strategy::RoundRobin, Balance, BalanceLayer, Endpoints};

fn balance(endpoints: &[Mock]) -> Balance<RoundRobin, &'static str, Mock> {
    let set = Endpoints::from_iter(endpoints.iter().map(|m| (m.name(), m.clone())));
    BalanceLayer::new(RoundRobin::new()).layer(set)
}

#[tokio::test]
async fn rotates_through_endpoints_in_set_order() {
    let svc = balance(&mocks(["1", "2", "3"]));
    assert_eq!(send(&svc, 6).await, ["1", "2", "3", "1", "2", "3"]);
}

#[tokio::test]
async fn one_balancer_called_repeatedly_rotates_too() {
    let mut svc = balance(&mocks(["1", "2", "3"]));
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(svc.ready().await.unwrap().call(()).await.unwrap());
    }
    assert_eq!(seen, ["1", "2", "3", "1"]);
}

#[test]
fn thousand_clones_on_two_threads_split_exactly() {
    let endpoints = mocks(["1", "2", "3"]);
    let svc = balance(&endpoints);
    let clones: Vec<_> = (0..1000).map(|_| svc.clone()).collect();
    let (left, right) = clones.split_at(500);

    thread::scope(|scope| {
        for half in [left, right] {
            scope.spawn(move || {
                tokio_test::block_on(async {
                    for clone in half {
                        for _ in 0..3 {
                            clone.clone().oneshot(()).await.unwrap();
                        }
                    }
                })
            });
        }
    });

    let calls: Vec<usize> = endpoints.iter().map(Mock::calls).collect();
    assert_eq!(calls, [1000, 1000, 1000]);
}

/// A balancer alone on its set moves the cursor without an atomic add; once a clone exists, both
/// must add atomically, and after the clone is gone its turns must be seen. Lost or repeated turns
/// would leave the counts unequal.
#[test]
fn rotation_stays_exact_as_a_balancer_gains_and_loses_clones() {
    let endpoints = mocks(["1", "2", "3"]);
    let mut svc = balance(&endpoints);
    let requests = |svc: &mut Balance<RoundRobin, &'static str, Mock>, count: usize| {
        tokio_test::block_on(async {
            for _ in 0..count {
                svc.ready().await.unwrap().call(()).await.unwrap();
            }
        })
    };

    for round in 0..20 {
        // Alone: 3 requests, then one clone on another thread while this one goes on.
        requests(&mut svc, 3);
        let mut clone = svc.clone();
        thread::scope(|scope| {
            scope.spawn(move || requests(&mut clone, 1_500));
            requests(&mut svc, 1_500);
        });
        let calls: Vec<usize> = endpoints.iter().map(Mock::calls).collect();
        assert_eq!(calls, [1_001 * (round + 1); 3], "after round {round}");
    }
}

#[tokio::test]
async fn distinct_balancers_from_one_layer_rotate_independently() {
    let layer = BalanceLayer::new(RoundRobin::new());
    let a = mocks(["a1", "a2"]);
    let b = mocks(["b1", "b2"]);
    let svc_a = layer.layer(Endpoints::from_iter(
        a.iter().map(|m| (m.name(), m.clone())),
    ));
    let svc_b = layer.layer(Endpoints::from_iter(
        b.iter().map(|m| (m.name(), m.clone())),
    ));
    assert_eq!(send(&svc_a, 1).await, ["a1"]);
    assert_eq!(send(&svc_b, 3).await, ["b1", "b2", "b1"]);
    assert_eq!(send(&svc_a, 1).await, ["a2"]);
}

#[tokio::test]
async fn clone_does_not_inherit_a_reservation() {
    let endpoints = mocks(["1", "2"]);
    let mut svc = balance(&endpoints);
    svc.ready().await.unwrap();

    // The clone was never made ready: calling it fails the request instead of using the
    // original's reserved endpoint (or panicking).
    let mut clone = svc.clone();
    let err = clone.call(()).await.unwrap_err();
    assert!(err.is::<NotReady>(), "{err}");

    // The original still holds its reservation on the first endpoint.
    assert_eq!(svc.call(()).await.unwrap(), "1");
    assert_eq!(endpoints[1].calls(), 0);
}

#[tokio::test]
async fn ready_twice_keeps_one_reservation() {
    let mut svc = balance(&mocks(["1", "2"]));
    svc.ready().await.unwrap();
    svc.ready().await.unwrap();
    assert_eq!(svc.call(()).await.unwrap(), "1");
    assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "2");
}

#[tokio::test]
async fn rotation_continues_over_a_changed_set() {
    let endpoints = mocks(["1", "2", "3"]);
    let svc = balance(&endpoints);
    assert_eq!(send(&svc, 2).await, ["1", "2"]);

    let four = Mock::new("4");
    svc.endpoints().insert("4", four.clone());
    assert_eq!(send(&svc, 6).await, ["3", "4", "1", "2", "3", "4"]);

    svc.endpoints().remove("2");
    let names = send(&svc, 300).await;
    assert_eq!(tally(&names).get("2"), None);
    assert_eq!(tally(&names).len(), 3);
    assert!(tally(&names).values().all(|&n| n == 100));
}

#[tokio::test]
async fn weights_do_not_change_round_robin() {
    let endpoints = mocks(["1", "2"]);
    let set = Endpoints::try_from_weighted(
        endpoints
            .iter()
            .zip([10, 1])
            .map(|(m, w)| (m.name(), m.clone(), w)),
    )
    .unwrap();
    let svc = BalanceLayer::new(RoundRobin::new()).layer(set);
    assert_eq!(send(&svc, 4).await, ["1", "2", "1", "2"]);
}
