//! When endpoints are ejected or not ready, the keyless strategies spread their share over the
//! endpoints that remain, in proportion to their weights: the endpoint after an unavailable one in
//! set order does not take its share on top of its own.

#[path = "../support/mod.rs"]
mod support;

use std::{collections::HashMap, time::Duration};

use support::{send, tally, Mock, Readiness};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt};
use tower_lb::{
    health::OutlierDetection,
    strategy::{PowerOfTwoChoices, Random, RoundRobin, Route, WeightedRoundRobin},
    Balance, BalanceLayer, BoxError, Endpoints,
};

const NAMES: [&str; 10] = ["e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"];

/// Ejects after one failure, for an hour: long enough for any test.
fn eject_at_once() -> OutlierDetection {
    OutlierDetection::builder()
        .consecutive_failures(1)
        .base_ejection_time(Duration::from_secs(3600))
        .max_ejection_time(Duration::from_secs(7200))
        .build()
        .unwrap()
}

fn weighted_set(mocks: &[Mock], weights: &[u32]) -> Endpoints<&'static str, Mock> {
    Endpoints::try_from_weighted(
        mocks
            .iter()
            .zip(weights)
            .map(|(m, &w)| (m.name(), m.clone(), w)),
    )
    .unwrap()
}

/// A balancer with `strategy` and immediate ejection over `mocks` with `weights`, in which the
/// endpoints at `ejected` fail once and are ejected; they answer again afterwards, so that only
/// the ejection keeps them out.
async fn with_ejected<St>(
    strategy: St,
    mocks: &[Mock],
    weights: &[u32],
    ejected: &[usize],
) -> Balance<St, &'static str, Mock>
where
    St: Route<&'static str, ()> + Clone,
{
    let svc = BalanceLayer::new(strategy)
        .outlier_detection(eject_at_once())
        .layer(weighted_set(mocks, weights));
    for &i in ejected {
        mocks[i].fail_calls(true);
    }
    // Every endpoint is met within a few hundred requests, by every strategy here.
    for _ in 0..2_000 {
        let stats = svc.stats();
        if ejected.iter().all(|&i| stats[i].ejected_for.is_some()) {
            break;
        }
        let _ = svc.clone().oneshot(()).await;
    }
    for &i in ejected {
        assert!(
            svc.stats()[i].ejected_for.is_some(),
            "{} not ejected",
            NAMES[i]
        );
        mocks[i].fail_calls(false);
    }
    svc
}

fn mocks(n: usize) -> Vec<Mock> {
    NAMES[..n].iter().map(|&name| Mock::new(name)).collect()
}

#[tokio::test]
async fn round_robin_gives_each_survivor_exactly_its_share_with_one_ejected() {
    let mocks = mocks(10);
    let svc = with_ejected(RoundRobin::new(), &mocks, &[1; 10], &[3]).await;

    let counts = tally(&send(&svc, 9_000).await);
    assert_eq!(counts.get("e3"), None);
    for name in NAMES.iter().filter(|&&n| n != "e3") {
        assert_eq!(counts[name], 1_000, "{name}: {counts:?}");
    }
}

#[tokio::test]
async fn round_robin_gives_each_survivor_exactly_its_share_with_two_ejected() {
    let mocks = mocks(10);
    // Two neighbours: the endpoint after both would have taken three shares.
    let svc = with_ejected(RoundRobin::new(), &mocks, &[1; 10], &[4, 5]).await;

    let counts = tally(&send(&svc, 8_000).await);
    assert_eq!(counts.len(), 8, "{counts:?}");
    assert!(counts.values().all(|&c| c == 1_000), "{counts:?}");
}

#[tokio::test]
async fn weighted_round_robin_keeps_the_survivors_proportions_in_every_period() {
    let mocks = mocks(5);
    let weights = [1, 2, 3, 4, 5];
    let svc = with_ejected(WeightedRoundRobin::new(), &mocks, &weights, &[2]).await;

    // The survivors' period: 1 + 2 + 4 + 5 requests.
    let names = send(&svc, 12 * 500).await;
    let expected = HashMap::from([("e0", 1), ("e1", 2), ("e3", 4), ("e4", 5)]);
    for (i, period) in names.chunks(12).enumerate() {
        assert_eq!(tally(period), expected, "period {i}: {period:?}");
    }
}

/// Shares of a seeded random strategy among the survivors: `tolerance` is the largest relative
/// deviation from the expected share accepted (a binomial's standard deviation is under 1.3%
/// of these expected counts).
fn assert_shares(counts: &HashMap<&str, usize>, expected: &[(&str, f64)], tolerance: f64) {
    let total: usize = counts.values().sum();
    for &(name, share) in expected {
        let got = *counts.get(name).unwrap_or(&0) as f64 / total as f64;
        assert!(
            (got - share).abs() <= share * tolerance,
            "{name}: {got:.4} against {share:.4}: {counts:?}"
        );
    }
}

#[tokio::test]
async fn random_draws_among_the_survivors_only_in_proportion_to_their_weights() {
    let mocks = mocks(5);
    let weights = [1, 2, 3, 4, 5];
    let svc = with_ejected(Random::seeded(11), &mocks, &weights, &[2]).await;

    let counts = tally(&send(&svc, 24_000).await);
    assert_eq!(counts.get("e2"), None);
    let expected = [
        ("e0", 1.0 / 12.0),
        ("e1", 2.0 / 12.0),
        ("e3", 4.0 / 12.0),
        ("e4", 5.0 / 12.0),
    ];
    assert_shares(&counts, &expected, 0.06);
}

#[tokio::test]
async fn power_of_two_choices_draws_among_the_survivors_only() {
    let mocks = mocks(5);
    // Requests complete at once, so every load is zero and every survivor is as good as another.
    // Two neighbours ejected: one pair in ten draws both of them.
    let svc = with_ejected(PowerOfTwoChoices::seeded(5), &mocks, &[1; 5], &[1, 2]).await;

    let counts = tally(&send(&svc, 21_000).await);
    assert_eq!((counts.get("e1"), counts.get("e2")), (None, None));
    let third = 1.0 / 3.0;
    assert_shares(
        &counts,
        &[("e0", third), ("e3", third), ("e4", third)],
        0.06,
    );
}

#[tokio::test]
async fn an_endpoint_pending_for_every_request_does_not_favour_its_successor() {
    let mocks = mocks(5);
    mocks[2].set_readiness(Readiness::Pending);
    let svc = BalanceLayer::new(RoundRobin::new()).layer(weighted_set(&mocks, &[1; 5]));

    // Every request passes e2 over for e3, and spends the turn it takes there: the four others
    // stay exactly even, the bound asserted being no difference at all.
    let counts = tally(&send(&svc, 10_000).await);
    assert_eq!(counts.get("e2"), None);
    assert!(counts.values().all(|&c| c == 2_500), "{counts:?}");
}

#[tokio::test]
async fn an_endpoint_failing_readiness_does_not_favour_its_successor() {
    let mocks = mocks(5);
    mocks[2].set_readiness(Readiness::Fail);
    let set = weighted_set(&mocks, &[1, 1, 1, 1, 1]);
    let svc = BalanceLayer::new(WeightedRoundRobin::new()).layer(set);

    let counts = tally(&send(&svc, 10_000).await);
    assert_eq!(counts.get("e2"), None);
    assert!(counts.values().all(|&c| c == 2_500), "{counts:?}");
}

/// A kept candidate whose readiness then fails is a failure for outlier detection, on the keyless
/// path as on the keyed one.
#[tokio::test]
async fn a_kept_candidate_that_fails_readiness_counts_towards_ejection() {
    let [a, b] = support::mocks(["a", "b"]);
    a.set_readiness(Readiness::Pending);
    b.set_readiness(Readiness::Pending);
    let set = Endpoints::from_iter([("a", a.clone()), ("b", b.clone())]);
    let mut svc = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(eject_at_once())
        .layer(set);

    let mut ready = task::spawn(());
    assert_pending!(ready.enter(|cx, _| svc.poll_ready(cx)));
    a.set_readiness(Readiness::Fail);
    assert!(ready.is_woken());
    // b is still pending: the caller waits, and a's failure was recorded.
    assert_pending!(ready.enter(|cx, _| svc.poll_ready(cx)));
    let stats = svc.stats();
    assert_eq!((stats[0].failures, stats[1].failures), (1, 0));
    assert!(stats[0].ejected_for.is_some());

    b.set_readiness(Readiness::Ready);
    assert!(ready.is_woken());
    assert_ready_ok!(ready.enter(|cx, _| svc.poll_ready(cx)));
    let answer: Result<_, BoxError> = svc.call(()).await;
    assert_eq!(answer.unwrap(), "b");
}
