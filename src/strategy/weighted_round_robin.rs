use std::fmt;

use super::internal::{Access, Begin, Build, Start, Table};
use crate::{ejection::Health, endpoints::Member, rng::Cursor};

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
/// one atomic cursor shared by all clones of the balancer: picking is O(1), without locks. (A
/// balancer that is the only handle on its set moves the cursor without the atomic add, as
/// [`RoundRobin`](super::RoundRobin) does.)
///
/// # Unavailable endpoints
///
/// An endpoint that is ejected, passes its turn in slow start, or is not ready (pending, or its
/// readiness fails) is passed over for the next turn of the schedule that belongs to another
/// endpoint, and the turns passed over are spent. The survivors keep their proportions: with the
/// weight-3 endpoint of weights 1 to 5 ejected, every 12 requests in a row give the others
/// exactly 1, 2, 4 and 5.
///
/// # Large weights
///
/// A period is as long as the sum of the (reduced) weights. When it exceeds 65,536 picks, or
/// precomputing it would take more than 2<sup>24</sup> steps, the schedule is not stored. Instead,
/// with `W` the total weight and `t` a number near `W / φ` that is coprime with `W`, the `v`-th unit
/// of weight (endpoint `i` owns the units from the sum of the weights before it, up to its own
/// weight more) is served at position `v × t mod W` of the period. Each endpoint still gets exactly
/// its weight per period, evenly spread across it by the golden ratio, in O(log n) per pick and O(n)
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
pub enum Schedule {
    /// nginx's smooth sequence, one endpoint index per position.
    Smooth(Box<[u32]>),
    /// Unit `v` of weight is served at position `v * t % total`, so position `p` maps to the
    /// endpoint whose range in `ends` holds `p * inverse % total`, `inverse` being `t`'s inverse
    /// modulo `total`.
    Stride {
        /// `ends[i]` is the sum of the weights of endpoints `0..=i`.
        ends: Box<[u64]>,
        total: u64,
        inverse: u64,
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
        Self::Stride {
            ends,
            total,
            inverse: inverse_mod(spreading_step(total), total),
        }
    }

    /// The number of picks in one period.
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
                inverse,
            } => {
                let p = position as u64 % total;
                let v = (u128::from(p) * u128::from(*inverse) % u128::from(*total)) as u64;
                ends.partition_point(|&end| end <= v)
            }
        }
    }
}

/// nginx's smooth weighted round robin over one period: at every step each endpoint's current
/// weight grows by its weight, the largest (the first of equals) is picked and loses the total.
fn smooth(weights: &[u32], divisor: u64, total: u64) -> Box<[u32]> {
    let weights: Vec<i64> = weights
        .iter()
        .map(|&w| (u64::from(w) / divisor) as i64)
        .collect();
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

/// A step `t`, coprime with `total`, for serving unit `v` of weight at position `v * t % total`.
///
/// Both `t / total` and `t⁻¹ / total` should have small partial quotients in their continued
/// fractions, as the golden ratio has: the first spreads every endpoint's units evenly over the
/// period, the second keeps the runs of one endpoint at consecutive positions short. Candidates
/// are tried outward from `total / φ` until one scores as well as can be hoped.
fn spreading_step(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    let start = (total as f64 * 0.618_033_988_749_894_9) as u64;
    let mut best = (u64::MAX, 1);
    for distance in 0..4096u64 {
        for t in [
            start.saturating_add(distance),
            start.saturating_sub(distance),
        ] {
            if t == 0 || t >= total || gcd(t, total) != 1 {
                continue;
            }
            let score = largest_partial_quotient(t, total)
                .max(largest_partial_quotient(inverse_mod(t, total), total));
            if score < best.0 {
                best = (score, t);
            }
        }
        if best.0 <= 3 {
            break;
        }
    }
    best.1
}

/// The largest partial quotient of the continued fraction of `a / m` (for `0 < a < m`), past the
/// leading zero.
fn largest_partial_quotient(mut a: u64, mut m: u64) -> u64 {
    let mut largest = 0;
    (a, m) = (m, a);
    while m != 0 {
        largest = largest.max(a / m);
        (a, m) = (m, a % m);
    }
    largest
}

/// The inverse of `a` modulo `m`, for `a` coprime with `m` (extended Euclid).
fn inverse_mod(a: u64, m: u64) -> u64 {
    if m == 1 {
        return 0;
    }
    let (mut old_r, mut r) = (i128::from(a), i128::from(m));
    let (mut old_s, mut s) = (1i128, 0i128);
    while r != 0 {
        let q = old_r / r;
        (old_r, r) = (r, old_r - q * r);
        (old_s, s) = (s, old_s - q * s);
    }
    old_s.rem_euclid(i128::from(m)) as u64
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The most turns of the schedule a walk looks through, per endpoint, before it goes on in set
/// order: a period can be far longer than the set.
const SCAN_PER_ENDPOINT: usize = 4;

impl Schedule {
    /// The turns a walk looks through before going on in set order: a whole period when it is
    /// short enough to meet every endpoint cheaply.
    fn scan(&self, endpoints: usize) -> usize {
        let cap = endpoints.saturating_mul(SCAN_PER_ENDPOINT);
        usize::try_from(self.period()).map_or(cap, |period| period.min(cap))
    }
}

impl Table for Schedule {
    #[inline]
    fn position(&self, turn: u64) -> u64 {
        turn
    }

    fn span(&self, endpoints: usize) -> usize {
        self.scan(endpoints) + endpoints
    }

    #[inline]
    fn candidate<K, S>(
        &self,
        members: &[Member<K, S>],
        _health: Option<&Health>,
        turn: u64,
        step: usize,
    ) -> usize {
        let scan = self.scan(members.len());
        if step < scan {
            return self.at(turn.wrapping_add(step as u64) as usize);
        }
        // Past the scan, set order from the turn's own endpoint: every endpoint is met.
        (self.at(turn as usize) + step - scan) % members.len()
    }

    fn ramps(&self) -> bool {
        true
    }

    fn turns(&self) -> bool {
        true
    }
}

impl<K> Build<K> for WeightedRoundRobin {
    type Table = Schedule;

    fn build<S>(&self, members: &[Member<K, S>]) -> Schedule {
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        Schedule::new(&weights)
    }

    fn key_hash(&self, _key: &[u8]) -> Option<u64> {
        None
    }

    #[inline]
    fn settled(&self, steps: usize, access: Access) {
        if steps != 0 {
            self.cursor.skip(steps, access);
        }
    }
}

impl<K, Req> Start<K, Req> for WeightedRoundRobin {
    #[inline]
    fn start(&self, _request: Option<&Req>, access: Access) -> Begin {
        Begin::At(self.cursor.next(access) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(schedule: &Schedule, n: usize) -> String {
        (0..n)
            .map(|p| (b'a' + schedule.at(p) as u8) as char)
            .collect()
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

        for (a, m) in [(3, 7), (5, 14), (1, 2), (0, 1), (u64::MAX - 1, u64::MAX)] {
            assert_eq!(
                (u128::from(a) * u128::from(inverse_mod(a, m))) % u128::from(m),
                1 % u128::from(m)
            );
        }

        let small = Schedule::stride(&[3, 1, 4, 1, 5], 1, 14);
        let mut counts = [0; 5];
        for p in 0..14 * 3 {
            counts[small.at(p)] += 1;
        }
        assert_eq!(counts, [9, 3, 12, 3, 15]);
    }
}
