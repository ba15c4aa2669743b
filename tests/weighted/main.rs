#[path = "../support/mod.rs"]
mod support;

use std::task::{Context, Poll};

use proptest::prelude::*;
use support::{mocks, send, tally, Mock};
use tower::{Layer, Service};
use tower_lb::{error::InvalidWeight, strategy::WeightedRoundRobin, BalanceLayer, Endpoints};

/// An always-ready endpoint answering its index, cheap enough for long runs.
#[derive(Clone)]
struct Index(usize);

impl Service<()> for Index {
    type Response = usize;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<usize, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(self.0))
    }
}

/// Routes `count` requests through a weighted round robin over endpoints with these weights and
/// returns the index of the endpoint that answered each.
fn route(weights: &[u32], count: usize) -> Vec<usize> {
    let set =
        Endpoints::try_from_weighted(weights.iter().enumerate().map(|(i, &w)| (i, Index(i), w)))
            .unwrap();
    let mut svc = BalanceLayer::new(WeightedRoundRobin::new()).layer(set);
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    (0..count)
        .map(|_| {
            assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            let mut fut = std::pin::pin!(svc.call(()));
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(i)) => i,
                other => panic!("unexpected {other:?}"),
            }
        })
        .collect()
}

use std::future::Future;

/// nginx's smooth weighted round robin, written out plainly as the reference: every pick adds each
/// weight to its peer's current weight, takes the first peer with the largest current weight and
/// subtracts the total from it.
fn nginx(weights: &[u32], count: usize) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..count)
        .map(|_| {
            let mut best: Option<usize> = None;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += i64::from(w);
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let best = best.unwrap();
            current[best] -= total;
            best
        })
        .collect()
}

fn letters(picks: &[usize]) -> String {
    picks.iter().map(|&i| (b'a' + i as u8) as char).collect()
}

#[test]
fn weights_5_1_1_give_nginx_order() {
    assert_eq!(letters(&route(&[5, 1, 1], 14)), "aabacaaaabacaa");
}

#[test]
fn weights_1_2_3_give_nginx_order() {
    assert_eq!(letters(&route(&[1, 2, 3], 12)), "cbacbccbacbc");
}

#[test]
fn weights_with_common_divisor_behave_as_reduced() {
    assert_eq!(route(&[10, 20, 30], 60), route(&[1, 2, 3], 60));
    assert_eq!(route(&[4, 4, 4], 6), [0, 1, 2, 0, 1, 2]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Over any weight vector the balancer produces nginx's sequence, and so every period holds
    /// each endpoint exactly its (reduced) weight's number of times.
    #[test]
    fn any_weights_give_nginx_sequence_and_exact_counts_per_period(
        weights in prop::collection::vec(1u32..=40, 1..=12)
    ) {
        let g = weights.iter().fold(0, |g, &w| gcd(g, w));
        let reduced: Vec<u32> = weights.iter().map(|&w| w / g).collect();
        let period: usize = reduced.iter().map(|&w| w as usize).sum();

        let picks = route(&weights, 3 * period);
        prop_assert_eq!(&picks, &nginx(&reduced, 3 * period));
        for chunk in picks.chunks(period) {
            let mut counts = vec![0u32; weights.len()];
            for &i in chunk {
                counts[i] += 1;
            }
            prop_assert_eq!(&counts, &reduced);
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[test]
fn long_periods_keep_exact_counts_and_stay_interleaved() {
    // The sum is beyond the precomputed schedule's cap, so the stride schedule is used.
    let weights = [40_000, 30_001, 2, 7];
    let period = 70_010;
    let picks = route(&weights, period);
    let mut counts = [0u32; 4];
    for &i in &picks {
        counts[i] += 1;
    }
    assert_eq!(counts, weights);

    // Interleaved, not in blocks: no endpoint gets a long run.
    let longest_run = picks
        .chunk_by(|a, b| a == b)
        .map(<[usize]>::len)
        .max()
        .unwrap();
    assert!(longest_run <= 4, "longest run {longest_run}");
    // The two light endpoints are spread out over the period, not next to each other.
    let light: Vec<usize> = (0..period).filter(|&p| picks[p] == 2).collect();
    assert!(light[1] - light[0] > period / 4, "{light:?}");
}

#[test]
fn huge_weights_do_not_blow_up_memory() {
    // Weight sums of about 2^33: a stored schedule would need 32 GiB.
    let picks = route(&[u32::MAX, u32::MAX - 2, u32::MAX / 2], 10_000);
    let mut counts = [0u32; 3];
    for &i in &picks {
        counts[i] += 1;
    }
    // 2 : 2 : 1, to within the rounding of a partial period.
    assert!((3_950..=4_050).contains(&counts[0]), "{counts:?}");
    assert!((3_950..=4_050).contains(&counts[1]), "{counts:?}");
    assert!((1_950..=2_050).contains(&counts[2]), "{counts:?}");
}

#[test]
fn zero_weight_is_rejected_when_the_set_is_built_or_changed() {
    let err =
        Endpoints::try_from_weighted([("a", Mock::<()>::new("a"), 1), ("b", Mock::new("b"), 0)])
            .unwrap_err();
    assert_eq!(err, err.clone());
    assert_eq!(err.weight(), 0);

    let set = Endpoints::try_from_weighted([("a", Mock::<()>::new("a"), 1)]).unwrap();
    assert!(set
        .insert_weighted("b", Mock::new("b"), 0)
        .unwrap_err()
        .to_string()
        .contains("at least 1"));
    assert!(matches!(set.set_weight("a", 0), Err(InvalidWeight { .. })));
    assert_eq!(set.keys(), ["a"]);
    assert_eq!(set.weight("a"), Some(1));
}

#[tokio::test]
async fn reweighting_at_runtime_changes_the_shares() {
    let [a, b] = mocks(["a", "b"]);
    let set = Endpoints::try_from_weighted([("a", a.clone(), 1), ("b", b.clone(), 1)]).unwrap();
    let svc = BalanceLayer::new(WeightedRoundRobin::new()).layer(set.clone());
    assert_eq!(send(&svc, 4).await, ["a", "b", "a", "b"]);

    assert_eq!(set.set_weight("b", 3), Ok(true));
    assert_eq!(set.set_weight("missing", 3), Ok(false));
    let counts = tally(&send(&svc, 400).await);
    assert_eq!(counts["a"], 100);
    assert_eq!(counts["b"], 300);
}

#[tokio::test]
async fn inserted_weighted_endpoint_takes_its_share() {
    let [a, b] = mocks(["a", "b"]);
    let set = Endpoints::try_from_weighted([("a", a.clone(), 1)]).unwrap();
    let svc = BalanceLayer::new(WeightedRoundRobin::new()).layer(set.clone());
    assert_eq!(set.insert_weighted("b", b.clone(), 2), Ok(true));
    let counts = tally(&send(&svc, 300).await);
    assert_eq!((counts["a"], counts["b"]), (100, 200));
}
