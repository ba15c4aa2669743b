//! Membership and health: following discovery without traffic, outlier ejection, panic mode,
//! slow start, statistics. Time runs on tokio's paused clock.

#[path = "../support/mod.rs"]
mod support;

use std::{convert::Infallible, time::Duration};

use futures_util::stream;
use http::{header::HeaderName, Request, Response, StatusCode};
use support::{mocks, send, tally, Mock, Readiness};
use tokio::time::advance;
use tower::{discover::Change, service_fn, util::BoxCloneSyncService, Layer, ServiceExt};
use tower_lb::{
    discover::Update,
    error::{AllEjected, Unavailable},
    health::{OutlierDetection, OutlierDetectionBuilder, ServerErrors},
    key,
    strategy::{ConsistentHash, PowerOfTwoChoices, RoundRobin},
    Balance, BalanceLayer, BoxError, Endpoints,
};

fn paused_clock() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Ejects after 3 failures, for 10 s doubling up to 40 s, on tokio's clock.
fn detection() -> OutlierDetectionBuilder {
    OutlierDetection::builder()
        .consecutive_failures(3)
        .base_ejection_time(Duration::from_secs(10))
        .max_ejection_time(Duration::from_secs(40))
        .clock(paused_clock)
}

fn set_of(endpoints: &[Mock]) -> Endpoints<&'static str, Mock> {
    Endpoints::from_iter(endpoints.iter().map(|m| (m.name(), m.clone())))
}

async fn send_any<S>(svc: &S, count: usize) -> Vec<Result<&'static str, BoxError>>
where
    S: tower::Service<(), Response = &'static str, Error = BoxError> + Clone,
{
    let mut results = Vec::new();
    for _ in 0..count {
        results.push(svc.clone().oneshot(()).await);
    }
    results
}

/// Fails `mock` until it has been ejected, then checks it gets nothing for a while.
async fn eject<S>(svc: &S, mock: &Mock)
where
    S: tower::Service<(), Response = &'static str, Error = BoxError> + Clone,
{
    let before = mock.calls();
    let mut sent = 0;
    while mock.calls() < before + 3 {
        let _ = svc.clone().oneshot(()).await;
        sent += 1;
        assert!(sent < 100, "{} never reached 3 failures", mock.name());
    }
    let calls = mock.calls();
    send_any(svc, 20).await;
    assert_eq!(
        mock.calls(),
        calls,
        "{} got traffic while ejected",
        mock.name()
    );
}

#[tokio::test(start_paused = true)]
async fn failing_endpoint_is_ejected_and_returns_after_a_doubling_backoff() {
    let [a, b, c] = mocks(["a", "b", "c"]);
    b.fail_calls(true);
    let svc = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(detection().build().unwrap())
        .layer(set_of(&[a.clone(), b.clone(), c.clone()]));

    // First ejection: 10 s.
    eject(&svc, &b).await;
    let stats = svc.stats();
    assert_eq!(stats[1].failures, 3);
    assert!(stats[1].ejected_for.unwrap() <= Duration::from_secs(10));
    advance(Duration::from_secs(9)).await;
    let calls = b.calls();
    send_any(&svc, 10).await;
    assert_eq!(b.calls(), calls, "returned before its 10 s were over");
    advance(Duration::from_secs(2)).await;

    // Back, still failing: the second ejection lasts 20 s, the third 40 s, the fourth is capped.
    for expected in [20, 40, 40] {
        eject(&svc, &b).await;
        let left = svc.stats()[1].ejected_for.unwrap();
        assert!(
            left > Duration::from_secs(expected - 1) && left <= Duration::from_secs(expected),
            "ejected for {left:?}, expected {expected} s"
        );
        advance(Duration::from_secs(expected + 1)).await;
    }
    // a and c kept serving throughout.
    assert!(a.calls() > 20 && c.calls() > 20);
}

#[tokio::test(start_paused = true)]
async fn a_success_after_return_resets_the_backoff() {
    let [a, b] = mocks(["a", "b"]);
    b.fail_calls(true);
    let svc = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(detection().build().unwrap())
        .layer(set_of(&[a.clone(), b.clone()]));

    eject(&svc, &b).await;
    advance(Duration::from_secs(11)).await;
    b.fail_calls(false);
    send(&svc, 4).await;
    b.fail_calls(true);
    eject(&svc, &b).await;
    // Back to the base time, not doubled.
    assert!(svc.stats()[1].ejected_for.unwrap() <= Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn at_most_the_configured_share_is_ejected() {
    let endpoints = mocks(["a", "b", "c", "d"]);
    for m in &endpoints[1..] {
        m.fail_calls(true);
    }
    let svc = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(detection().max_ejected_share(0.5).build().unwrap())
        .layer(set_of(&endpoints));
    send_any(&svc, 200).await;
    let ejected = svc
        .stats()
        .iter()
        .filter(|s| s.ejected_for.is_some())
        .count();
    assert_eq!(ejected, 2, "{:?}", svc.stats());
}

#[tokio::test(start_paused = true)]
async fn panic_mode_routes_over_all_endpoints_when_all_are_ejected() {
    let [a] = mocks(["a"]);
    a.fail_calls(true);
    let svc = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(detection().build().unwrap())
        .layer(set_of(std::slice::from_ref(&a)));
    send_any(&svc, 3).await;
    assert!(svc.stats()[0].ejected_for.is_some());
    // Ejected, but the only endpoint: requests still reach it.
    send_any(&svc, 5).await;
    assert_eq!(a.calls(), 8);
}

#[tokio::test(start_paused = true)]
async fn fail_mode_fails_fast_when_all_are_ejected() {
    let [a] = mocks(["a"]);
    a.fail_calls(true);
    let svc = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(detection().fail_when_all_ejected().build().unwrap())
        .layer(set_of(std::slice::from_ref(&a)));
    send_any(&svc, 3).await;
    let err = svc.clone().oneshot(()).await.unwrap_err();
    let unavailable = err.downcast_ref::<Unavailable>().expect("Unavailable");
    let source = std::error::Error::source(unavailable).unwrap();
    assert!(source.is::<AllEjected>(), "{source}");
    assert_eq!(a.calls(), 3);
    // The ejection ends and requests flow again.
    advance(Duration::from_secs(11)).await;
    a.fail_calls(false);
    assert_eq!(send(&svc, 1).await, ["a"]);
}

#[tokio::test(start_paused = true)]
async fn failing_readiness_counts_towards_ejection() {
    let [a, b] = mocks(["a", "b"]);
    b.set_readiness(Readiness::Fail);
    let svc = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(detection().build().unwrap())
        .layer(set_of(&[a.clone(), b.clone()]));
    send(&svc, 6).await;
    let stats = svc.stats();
    assert_eq!(stats[1].failures, 3);
    assert!(stats[1].ejected_for.is_some());
    assert_eq!(b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn ejected_endpoint_keys_move_to_their_fallback_and_come_back() {
    type Req = Request<()>;
    let servers: [Mock<Req>; 4] = mocks(["a", "b", "c", "d"]);
    let set = Endpoints::from_iter(servers.iter().map(|m| (m.name(), m.clone())));
    let strategy = ConsistentHash::new(key::header(HeaderName::from_static("x-key")));
    let svc = BalanceLayer::new(strategy)
        .outlier_detection(detection().build().unwrap())
        .layer(set);
    let request = |k: &str| Request::builder().header("x-key", k).body(()).unwrap();
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let own: Vec<&str> = keys
        .iter()
        .map(|k| svc.endpoint_for_key(k).unwrap())
        .collect();

    // Fail c's requests until it is ejected.
    servers[2].fail_calls(true);
    for (key, owner) in keys.iter().zip(&own) {
        if *owner == "c" {
            let _ = svc.clone().oneshot(request(key)).await;
        }
    }
    assert!(svc.stats()[2].ejected_for.is_some());
    servers[2].fail_calls(false);

    let calls = servers[2].calls();
    for (key, owner) in keys.iter().zip(&own) {
        let got = svc.clone().oneshot(request(key)).await.unwrap();
        if *owner == "c" {
            assert_ne!(got, "c");
        } else {
            assert_eq!(got, *owner, "key {key} moved");
        }
    }
    assert_eq!(servers[2].calls(), calls);

    advance(Duration::from_secs(11)).await;
    for (key, owner) in keys.iter().zip(&own) {
        assert_eq!(svc.clone().oneshot(request(key)).await.unwrap(), *owner);
    }
}

#[tokio::test(start_paused = true)]
async fn server_errors_count_as_failures_with_the_http_classifier() {
    type Svc = BoxCloneSyncService<(), Response<&'static str>, Infallible>;
    let answer = |status: StatusCode, body: &'static str| -> Svc {
        BoxCloneSyncService::new(service_fn(move |_req: ()| async move {
            Ok::<_, Infallible>(Response::builder().status(status).body(body).unwrap())
        }))
    };
    let set = Endpoints::from_iter([
        ("ok", answer(StatusCode::OK, "ok")),
        ("broken", answer(StatusCode::BAD_GATEWAY, "broken")),
    ]);
    let svc = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(detection().build().unwrap())
        .classify(ServerErrors)
        .layer(set);
    for _ in 0..6 {
        svc.clone().oneshot(()).await.unwrap();
    }
    assert!(svc.stats()[1].ejected_for.is_some());
    for _ in 0..6 {
        assert_eq!(*svc.clone().oneshot(()).await.unwrap().body(), "ok");
    }

    // Without the classifier, a 5xx response is a success.
    let set = Endpoints::from_iter([("broken", answer(StatusCode::BAD_GATEWAY, "broken"))]);
    let svc = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(detection().build().unwrap())
        .layer(set);
    for _ in 0..6 {
        svc.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(svc.stats()[0].failures, 0);
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_new_endpoints_share() {
    let [a, b, c] = mocks(["a", "b", "c"]);
    for m in [&a, &b, &c] {
        m.hold(true);
    }
    let set = set_of(&[a.clone(), b.clone()]);
    let svc = BalanceLayer::new(PowerOfTwoChoices::seeded(4))
        .outlier_detection(
            detection()
                .slow_start(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .layer(set.clone());
    let mut held = Vec::new();
    let mut send_held = |count: usize| {
        for _ in 0..count {
            let mut response = tokio_test::task::spawn(svc.clone().oneshot(()));
            tokio_test::assert_pending!(response.poll());
            held.push(response);
        }
    };
    send_held(100);
    set.insert("c", c.clone());
    // Just joined: c's weight counts 5%, so it takes a small share of the next requests.
    send_held(90);
    assert!(c.calls() <= 10, "c got {} right after joining", c.calls());
    // Once the window has passed, c is a full member and catches up with the others.
    advance(Duration::from_secs(10)).await;
    send_held(300);
    let (a_load, c_load) = (a.calls() as f64, c.calls() as f64);
    assert!(c_load / a_load > 0.8, "a {a_load}, c {c_load}");
    drop(held);
}

#[tokio::test]
async fn discovery_is_applied_without_request_traffic() {
    let set: Endpoints<&'static str, Mock> = Endpoints::new();
    let svc = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<Change<&str, Mock>, BoxError>>();
    let driver = tokio::spawn(set.follow(stream::poll_fn(move |cx| rx.poll_recv(cx))));

    let [a, b] = mocks(["a", "b"]);
    tx.send(Ok(Change::Insert("a", a.clone()))).unwrap();
    tx.send(Ok(Change::Insert("b", b.clone()))).unwrap();
    wait_until(|| svc.stats().len() == 2).await;
    assert_eq!(
        svc.stats().iter().map(|s| s.key).collect::<Vec<_>>(),
        ["a", "b"]
    );

    // An error is counted, not fatal.
    tx.send(Err("resolver timed out".into())).unwrap();
    tx.send(Ok(Change::Remove("a"))).unwrap();
    wait_until(|| svc.stats().len() == 1).await;
    assert_eq!(
        set.discovery_errors(),
        (1, Some("resolver timed out".to_owned()))
    );

    // Re-inserting a key replaces its service; a request in flight on the old one completes.
    b.hold(true);
    let in_flight = tokio::spawn(svc.clone().oneshot(()));
    while b.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let b2 = Mock::new("b2");
    tx.send(Ok(Change::Insert("b", b2.clone()))).unwrap();
    wait_until(|| b2.calls() == 0 && set.keys() == ["b"] && svc.endpoints().len() == 1).await;
    b.release();
    assert_eq!(in_flight.await.unwrap().unwrap(), "b");
    assert_eq!(send(&svc, 2).await, ["b2", "b2"]);

    // The stream ending keeps the last membership.
    drop(tx);
    driver.await.unwrap();
    assert_eq!(set.keys(), ["b"]);
    assert_eq!(tally(&send(&svc, 2).await)["b2"], 2);
}

#[tokio::test]
async fn weighted_updates_and_batches_apply_as_one_change() {
    let set: Endpoints<&'static str, ()> = Endpoints::new();
    let svc: Balance<RoundRobin, _, ()> = Balance::new(RoundRobin::new(), set.clone());
    set.follow(stream::iter([
        Ok::<_, Infallible>(Update::InsertWeighted("a", (), 3)),
        Ok(Update::Insert("b", ())),
        Ok(Update::SetWeight("b", 2)),
        Ok(Update::InsertWeighted("c", (), 0)),
    ]))
    .await;
    assert_eq!(set.keys(), ["a", "b"]);
    assert_eq!((set.weight("a"), set.weight("b")), (Some(3), Some(2)));
    assert_eq!(set.discovery_errors().0, 1);
    assert_eq!(svc.stats().len(), 2);
}

/// Yields until `condition` holds, for at most 10,000 turns of the scheduler.
async fn wait_until(mut condition: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_new_endpoint_under_round_robin() {
    let [a, b, c] = mocks(["a", "b", "c"]);
    let set = set_of(&[a.clone(), b.clone()]);
    let svc = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(
            detection()
                .slow_start(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .layer(set.clone());
    send(&svc, 10).await;
    set.insert("c", c.clone());

    // Right after joining, c takes each of its turns with a 5% chance: of 3,000 requests, its
    // full share would be 1,000.
    send(&svc, 3000).await;
    assert!(c.calls() < 150, "c got {} right after joining", c.calls());

    // Half-way through the window, about half of its turns.
    advance(Duration::from_secs(5)).await;
    let before = c.calls();
    send(&svc, 3000).await;
    let half = c.calls() - before;
    assert!((350..650).contains(&half), "c got {half} half-way");

    // Once the window has passed, exactly its share.
    advance(Duration::from_secs(6)).await;
    let before = c.calls();
    send(&svc, 3000).await;
    assert_eq!(c.calls() - before, 1000);
}

/// A caller that waits in panic mode (every endpoint ejected, the kept ones pending) does not go to
/// an ejected endpoint once another one may take requests again: it picks anew over those.
#[tokio::test(start_paused = true)]
async fn a_caller_waiting_in_panic_mode_goes_to_an_endpoint_that_returned() {
    let [a, b] = mocks(["a", "b"]);
    let svc = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(detection().max_ejected_share(1.0).build().unwrap())
        .layer(set_of(&[a.clone(), b.clone()]));
    a.fail_calls(true);
    eject(&svc, &a).await;
    advance(Duration::from_secs(5)).await;
    b.fail_calls(true);
    send_any(&svc, 6).await;
    assert!(svc.stats().iter().all(|s| s.ejected_for.is_some()));
    a.fail_calls(false);
    b.fail_calls(false);
    a.set_readiness(Readiness::Pending);
    b.set_readiness(Readiness::Pending);

    use tower::Service;
    let mut caller = svc.clone();
    let mut ready = tokio_test::task::spawn(());
    tokio_test::assert_pending!(ready.enter(|cx, _| caller.poll_ready(cx)));
    // a's ejection ends; b stays ejected and then becomes ready.
    advance(Duration::from_secs(6)).await;
    assert!(svc.stats()[0].ejected_for.is_none() && svc.stats()[1].ejected_for.is_some());
    b.set_readiness(Readiness::Ready);
    assert!(ready.is_woken());
    tokio_test::assert_pending!(ready.enter(|cx, _| caller.poll_ready(cx)));
    a.set_readiness(Readiness::Ready);
    tokio_test::assert_ready_ok!(ready.enter(|cx, _| caller.poll_ready(cx)));
    assert_eq!(caller.call(()).await.unwrap(), "a");
}
