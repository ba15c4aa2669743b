use std::fmt;

use super::{below, sealed::Sealed, Rng, Strategy, Walk};
use crate::{ejection::Health, endpoints::Member};

/// Sends each request to a random endpoint, in proportion to the weights.
///
/// Picks draw from a fast generator (splitmix64, per thread: no lock, no shared state, no
/// SipHash). [`Random::seeded`] draws from one sequence shared by the clones instead, which
/// replays the same picks, for reproducible tests. An endpoint that is not ready is passed over for the endpoints after
/// it in set order, as with the other keyless strategies.
///
/// # Examples
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{strategy::Random, BalanceLayer, Endpoints};
///
/// # tokio_test::block_on(async {
/// let backend = |name: &'static str| service_fn(move |_req: ()| async move {
///     Ok::<_, std::convert::Infallible>(name)
/// });
/// let set = Endpoints::try_from_weighted([("a", backend("a"), 3), ("b", backend("b"), 1)]).unwrap();
/// let balance = BalanceLayer::new(Random::seeded(7)).layer(set);
///
/// let mut a = 0;
/// for _ in 0..4000 {
///     if balance.clone().oneshot(()).await.unwrap() == "a" {
///         a += 1;
///     }
/// }
/// assert!((2800..3200).contains(&a), "{a}");
/// # });
/// ```
pub struct Random {
    rng: Rng,
    seed: Option<u64>,
}

impl Random {
    /// Picks with a generator seeded differently for every strategy and run.
    pub fn new() -> Self {
        Self {
            rng: Rng::per_thread(),
            seed: None,
        }
    }

    /// Picks with a generator seeded with `seed`: the same seed replays the same picks.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: Rng::seeded(seed),
            seed: Some(seed),
        }
    }
}

impl Default for Random {
    fn default() -> Self {
        Self::new()
    }
}

/// A clone starts a fresh generator: with the same seed for a seeded strategy, a new one
/// otherwise.
impl Clone for Random {
    fn clone(&self) -> Self {
        match self.seed {
            Some(seed) => Self::seeded(seed),
            None => Self::new(),
        }
    }
}

impl fmt::Debug for Random {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Random").field("seed", &self.seed).finish()
    }
}

/// The cumulative weights of a snapshot, for weighted draws. Public only to name it as a
/// strategy's table; it cannot be reached from outside the crate.
#[derive(Debug)]
#[allow(unreachable_pub)]
pub struct Weights {
    /// `ends[i]`: the weights of endpoints `0..=i`; empty when every weight is 1.
    ends: Box<[u64]>,
}

impl Weights {
    pub(crate) fn new<K, S>(members: &[Member<K, S>]) -> Self {
        if members.iter().all(|m| m.weight == 1) {
            return Self {
                ends: Box::default(),
            };
        }
        let mut sum = 0;
        Self {
            ends: members
                .iter()
                .map(|m| {
                    sum += u64::from(m.weight);
                    sum
                })
                .collect(),
        }
    }

    /// An endpoint index drawn in proportion to weight.
    #[inline]
    pub(crate) fn draw(&self, rng: &Rng, len: usize) -> usize {
        match self.ends.last() {
            None => below(rng.next(), len),
            Some(&total) => {
                let point = ((u128::from(rng.next()) * u128::from(total)) >> 64) as u64;
                self.ends.partition_point(|&end| end <= point)
            }
        }
    }
}

impl Walk for Weights {
    fn positions(&self) -> usize {
        0
    }
    fn start(&self, _hash: u64) -> usize {
        0
    }
    fn owner(&self, _position: usize) -> usize {
        0
    }
}

impl Sealed for Random {}

super::keyless_route!(Random);

impl<K> Strategy<K> for Random {
    type Table = Weights;

    fn build<S>(&self, members: &[Member<K, S>]) -> Weights {
        Weights::new(members)
    }

    #[inline]
    fn first<S>(&self, weights: &Weights, members: &[Member<K, S>], _: Option<&Health>) -> usize {
        weights.draw(&self.rng, members.len())
    }
}
