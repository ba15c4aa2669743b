use std::fmt;

use super::{sealed::Sealed, Cursor, Strategy};
use crate::endpoints::Member;

/// The longest schedule precomputed as nginx's smooth sequence, in entries (4 bytes each).
const MAX_SCHEDULE_LEN: u64 = 1 << 16;
/// The most work (schedule length times endpoint count) spent precomputing one schedule.
const MAX_SCHEDULE_WORK: u64 = 1 << 24;

/// Smooth weighted round robin, as nginx does it: each endpoint gets exactly its weight's share of
/// every period, interleaved rather than in bursts.
///
/// For weights `{a: 5, b: 1, c: 1}` the order is `a a b a c a a`, and for `{a: 1, b: 2, c: 3}` it is
/// `c b a c b c`: the sequences nginx's `ngx_http_upstream_get_peer` produces. Weights are first
/// divided by their greatest common divisor, so `{2, 4, 6}` behaves as `{1, 2, 3}`.
///
/// The sequence is precomputed into a schedule whenever the set changes, and requests walk it with
/// one atomic cursor shared by all clones of the balancer: picking is O(1), without locks.
///
/// # Large weights
///
/// A period is as long as the sum of the (reduced) weights. When it exceeds 65,536 picks, or
/// precomputing it would take more than 2<sup>24</sup> steps, the schedule is not stored: position
/// `p` of the period instead goes to the endpoint whose cumulative weight range holds
/// `p × s mod W`, for a stride `s` near `W / φ` that is coprime with the total `W`. Each endpoint
/// still gets exactly its weight per period, spread across it, in O(log n) per pick and O(n)
/// memory, but the order is no longer nginx's.
///
/// # Examples
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{strategy::WeightedRoundRobin, BalanceLayer, Endpoints};
///
/// # tokio_test::block_on(async {
/// let backend = |name: &'static str| service_fn(move |_req: ()| async move {
///     Ok::<_, std::convert::Infallible>(name)
/// });
/// let set = Endpoints::try_from_weighted([
///     ("a", backend("a"), 1),
///     ("b", backend("b"), 2),
///     ("c", backend("c"), 3),
/// ])
/// .unwrap();
/// let balance = BalanceLayer::new(WeightedRoundRobin::new()).layer(set);
///
/// let mut order = String::new();
/// for _ in 0..6 {
///     order += balance.clone().oneshot(()).await.unwrap();
/// }
/// assert_eq!(order, "cbacbc");
/// # });
/// ```
#[derive(Default)]
pub struct WeightedRoundRobin {
    cursor: Cursor,
}

impl WeightedRoundRobin {
    /// Creates a smooth weighted round robin strategy, starting at the beginning of the period.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A clone is a new strategy, starting at the beginning of the period.
impl Clone for WeightedRoundRobin {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl fmt::Debug for WeightedRoundRobin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightedRoundRobin").finish_non_exhaustive()
    }
}

/// The precomputed period of a weighted round robin. Public only to name it as the strategy's
/// table; it cannot be reached from outside the crate.
#[derive(Debug)]
#[allow(unreachable_pub)]
pub enum Schedule {
    /// nginx's smooth sequence, one endpoint index per position.
    Smooth(Box<[u32]>),
    /// Position `p` maps to the endpoint whose range in `ends` holds `p * stride % total`.
    Stride {
        /// `ends[i]` is the sum of the weights of endpoints `0..=i`.
        ends: Box<[u64]>,
        total: u64,
        stride: u64,
    },
}

impl Schedule {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let divisor = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))).max(1);
        let total: u64 = weights.iter().map(|&w| u64::from(w) / divisor).sum();
        let fits = total <= MAX_SCHEDULE_LEN
            && total.saturating_mul(weights.len() as u64) <= MAX_SCHEDULE_WORK;
        if fits {
            Self::Smooth(smooth(weights, divisor, total))
        } else {
            Self::stride(weights, divisor, total)
        }
    }

    fn stride(weights: &[u32], divisor: u64, total: u64) -> Self {
        let mut sum = 0;
        let ends = weights
            .iter()
            .map(|&w| {
                sum += u64::from(w) / divisor;
                sum
            })
            .collect();
        // 1/φ spreads consecutive positions evenly over [0, total); coprimality makes p -> p*s a
        // permutation of the period, so counts stay exact.
        let mut stride = ((total as f64) * 0.618_033_988_749_894_9) as u64;
        stride = stride.clamp(1, total.saturating_sub(1).max(1));
        while gcd(stride, total) != 1 {
            stride += 1;
        }
        Self::Stride {
            ends,
            total,
            stride,
        }
    }

    /// The number of picks in one period.
    #[cfg(test)]
    fn period(&self) -> u64 {
        match self {
            Self::Smooth(order) => order.len() as u64,
            Self::Stride { total, .. } => *total,
        }
    }

    /// The endpoint at position `position` of the (endless) sequence.
    #[inline]
    pub(crate) fn at(&self, position: usize) -> usize {
        match self {
            Self::Smooth(order) => order[position % order.len()] as usize,
            Self::Stride {
                ends,
                total,
                stride,
            } => {
                let p = position as u64 % total;
                let v = (u128::from(p) * u128::from(*stride) % u128::from(*total)) as u64;
                ends.partition_point(|&end| end <= v)
            }
        }
    }
}

/// nginx's smooth weighted round robin over one period: at every step each endpoint's current
/// weight grows by its weight, the largest (the first of equals) is picked and loses the total.
fn smooth(weights: &[u32], divisor: u64, total: u64) -> Box<[u32]> {
    let weights: Vec<i64> = weights.iter().map(|&w| (u64::from(w) / divisor) as i64).collect();
    let total = total as i64;
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for i in 0..weights.len() {
                current[i] += weights[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best as u32
        })
        .collect()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Sealed for WeightedRoundRobin {}

impl<K> Strategy<K> for WeightedRoundRobin {
    type Table = Schedule;

    fn build<S>(&self, members: &[Member<K, S>]) -> Schedule {
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        Schedule::new(&weights)
    }

    #[inline]
    fn first(&self, schedule: &Schedule, _len: usize) -> usize {
        schedule.at(self.cursor.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(schedule: &Schedule, n: usize) -> String {
        (0..n).map(|p| (b'a' + schedule.at(p) as u8) as char).collect()
    }

    #[test]
    fn nginx_sequences() {
        assert_eq!(names(&Schedule::new(&[5, 1, 1]), 7), "aabacaa");
        assert_eq!(names(&Schedule::new(&[1, 2, 3]), 6), "cbacbc");
        assert_eq!(names(&Schedule::new(&[2, 4, 6]), 6), "cbacbc");
    }

    #[test]
    fn huge_weights_use_the_stride_schedule_with_exact_counts() {
        let weights = [u32::MAX, u32::MAX - 1, 7];
        let schedule = Schedule::new(&weights);
        assert!(matches!(schedule, Schedule::Stride { .. }));
        assert_eq!(schedule.period(), 2 * u64::from(u32::MAX) - 1 + 7);

        let small = Schedule::stride(&[3, 1, 4, 1, 5], 1, 14);
        let mut counts = [0; 5];
        for p in 0..14 * 3 {
            counts[small.at(p)] += 1;
        }
        assert_eq!(counts, [9, 3, 12, 3, 15]);
    }
}
