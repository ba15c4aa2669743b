#[path = "../support/mod.rs"]
mod support;

use std::{error::Error as _, future::Future, pin::pin, task::Poll};

use support::{mocks, send, Mock, Readiness};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt};
use tower_lb::{
    error::{NoEndpoints, Unavailable},
    strategy::{RoundRobin, WeightedRoundRobin},
    Balance, BalanceLayer, Endpoints,
};

fn set_of(endpoints: &[Mock]) -> Endpoints<&'static str, Mock> {
    Endpoints::from_iter(endpoints.iter().map(|m| (m.name(), m.clone())))
}

fn balance(endpoints: &[Mock]) -> Balance<RoundRobin, &'static str, Mock> {
    BalanceLayer::new(RoundRobin::new()).layer(set_of(endpoints))
}

#[tokio::test]
async fn pending_endpoint_is_passed_over_and_gets_no_call() {
    let [a, b, c] = mocks(["a", "b", "c"]);
    b.set_readiness(Readiness::Pending);
    let svc = balance(&[a.clone(), b.clone(), c.clone()]);

    // b's turn goes to the endpoint after it, and the turn it takes there is spent: c does not
    // get b's share on top of its own.
    assert_eq!(send(&svc, 6).await, ["a", "c", "a", "c", "a", "c"]);
    assert_eq!(b.calls(), 0);

    b.set_readiness(Readiness::Ready);
    assert_eq!(send(&svc, 3).await, ["a", "b", "c"]);
}

#[tokio::test]
async fn all_pending_returns_pending_and_wakes_when_one_becomes_ready() {
    let endpoints = mocks(["a", "b", "c"]);
    for m in &endpoints {
        m.set_readiness(Readiness::Pending);
    }
    let mut svc = balance(&endpoints);

    let mut ready = task::spawn(());
    assert_pending!(ready.enter(|cx, _| svc.poll_ready(cx)));
    // Every candidate's wake-up was kept: none was lost by dropping its clone.
    assert!(endpoints.iter().all(|m| m.waiting_wakers() == 1));

    // Polling again without a change registers no duplicate candidates and stays pending.
    assert_pending!(ready.enter(|cx, _| svc.poll_ready(cx)));
    assert!(!ready.is_woken());

    endpoints[1].set_readiness(Readiness::Ready);
    assert!(ready.is_woken());
    assert_ready_ok!(ready.enter(|cx, _| svc.poll_ready(cx)));
    assert_eq!(svc.call(()).await.unwrap(), "b");
    assert_eq!(endpoints[0].calls() + endpoints[2].calls(), 0);
}

#[tokio::test]
async fn pending_balancer_is_woken_and_picks_anew_when_the_set_changes() {
    let [a] = mocks(["a"]);
    a.set_readiness(Readiness::Pending);
    let mut svc = balance(std::slice::from_ref(&a));

    let mut ready = task::spawn(());
    assert_pending!(ready.enter(|cx, _| svc.poll_ready(cx)));

    let b = Mock::new("b");
    svc.endpoints().insert("b", b.clone());
    // The change wakes the waiting caller: nothing else would, since `a` stays pending.
    assert!(ready.is_woken());
    assert_ready_ok!(ready.enter(|cx, _| svc.poll_ready(cx)));
    assert_eq!(svc.call(()).await.unwrap(), "b");
    assert_eq!(a.calls(), 0);
}

/// A caller waiting on the only endpoint when it is removed is woken, and its request fails fast
/// with `NoEndpoints` rather than waiting on an endpoint that is gone.
#[tokio::test]
async fn waiting_caller_fails_fast_when_the_set_empties() {
    let [a] = mocks(["a"]);
    a.set_readiness(Readiness::Pending);
    let mut svc = balance(std::slice::from_ref(&a));

    let mut ready = task::spawn(());
    assert_pending!(ready.enter(|cx, _| svc.poll_ready(cx)));
    svc.endpoints().remove("a");
    assert!(ready.is_woken());
    assert_ready_ok!(ready.enter(|cx, _| svc.poll_ready(cx)));
    let err = svc.call(()).await.unwrap_err();
    assert!(err.is::<NoEndpoints>(), "{err}");
    assert_eq!(a.calls(), 0);
}

#[tokio::test]
async fn max_tries_bounds_the_candidates_polled() {
    let [a, b] = mocks(["a", "b"]);
    a.set_readiness(Readiness::Pending);
    let set = set_of(&[a.clone(), b.clone()]);
    let mut svc = BalanceLayer::new(RoundRobin::new()).max_tries(1).layer(set);

    // Only the strategy's own choice is tried: the balancer waits for it.
    let mut ready = task::spawn(());
    assert_pending!(ready.enter(|cx, _| svc.poll_ready(cx)));
    assert_eq!(b.waiting_wakers(), 0);

    a.set_readiness(Readiness::Ready);
    assert!(ready.is_woken());
    assert_ready_ok!(ready.enter(|cx, _| svc.poll_ready(cx)));
    assert_eq!(svc.call(()).await.unwrap(), "a");
}

#[tokio::test]
async fn failing_readiness_is_skipped_without_poisoning_the_balancer() {
    let [a, b, c] = mocks(["a", "b", "c"]);
    b.set_readiness(Readiness::Fail);
    let svc = balance(&[a.clone(), b.clone(), c.clone()]);

    assert_eq!(send(&svc, 6).await, ["a", "c", "a", "c", "a", "c"]);
    assert_eq!(b.calls(), 0);
    // The failing endpoint stays in the set and comes back when it recovers.
    assert_eq!(svc.endpoints().len(), 3);

    b.set_readiness(Readiness::Ready);
    assert_eq!(send(&svc, 3).await, ["a", "b", "c"]);
}

#[tokio::test]
async fn every_endpoint_failing_fails_the_request_with_unavailable() {
    let endpoints = mocks(["a", "b"]);
    for m in &endpoints {
        m.set_readiness(Readiness::Fail);
    }
    let svc = balance(&endpoints);

    let err = svc.clone().oneshot(()).await.unwrap_err();
    let unavailable = err
        .downcast_ref::<Unavailable>()
        .expect("an Unavailable error");
    assert_eq!(unavailable.tried(), 2);
    assert_eq!(unavailable.source().unwrap().to_string(), "b is not ready");
    assert_eq!(
        err.to_string(),
        "no endpoint is available: 2 tried, all failed their readiness check"
    );

    endpoints[0].set_readiness(Readiness::Ready);
    assert_eq!(send(&svc, 2).await, ["a", "a"]);
}

#[tokio::test]
async fn empty_set_fails_at_once_with_no_endpoints() {
    let mut svc = balance(&[]);

    let mut ready = task::spawn(());
    assert_ready_ok!(ready.enter(|cx, _| svc.poll_ready(cx)));
    let mut response = task::spawn(svc.call(()));
    let err = assert_ready!(response.poll()).unwrap_err();
    assert!(err.is::<NoEndpoints>(), "{err}");
    assert_eq!(err.to_string(), "the endpoint set is empty");
}

#[tokio::test]
async fn empty_set_recovers_when_endpoints_are_inserted() {
    let svc = balance(&[]);
    assert!(svc
        .clone()
        .oneshot(())
        .await
        .unwrap_err()
        .is::<NoEndpoints>());
    svc.endpoints().insert("a", Mock::new("a"));
    assert_eq!(send(&svc, 1).await, ["a"]);
}

#[tokio::test]
async fn weighted_round_robin_passes_over_pending_endpoints_too() {
    let [a, b, c] = mocks(["a", "b", "c"]);
    a.set_readiness(Readiness::Pending);
    let set = Endpoints::try_from_weighted([
        ("a", a.clone(), 5),
        ("b", b.clone(), 1),
        ("c", c.clone(), 1),
    ])
    .unwrap();
    let svc = BalanceLayer::new(WeightedRoundRobin::new()).layer(set);

    // a a b a c a a: a's turns are passed over for the next turns of the schedule that belong to
    // others, and spent, so b and c keep their 1:1 proportion.
    assert_eq!(send(&svc, 7).await, ["b", "c", "b", "c", "b", "c", "b"]);
    assert_eq!(a.calls(), 0);
}

#[tokio::test]
async fn response_future_without_ready_endpoint_is_not_a_hang() {
    // A request routed while every endpoint fails resolves on its first poll.
    let [a] = mocks(["a"]);
    a.set_readiness(Readiness::Fail);
    let mut svc = balance(&[a]);
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let fut = pin!(svc.call(()));
    assert!(matches!(fut.poll(&mut cx), Poll::Ready(Err(_))));
}
