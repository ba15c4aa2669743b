use std::fmt;

use super::{
    internal::{Access, Begin, Build, Start, Table},
    DRAWS,
};
use crate::{
    ejection::Health,
    endpoints::Member,
    rng::{below, redraw, Rng},
};

/// Sends each request to a random endpoint, in proportion to the weights.
///
/// Picks draw from a fast generator (splitmix64, per thread: no lock, no shared state, no
/// SipHash). [`Random::seeded`] draws from one sequence shared by the clones instead, which
/// replays the same picks, for reproducible tests.
///
/// An endpoint that is ejected or not ready is passed over for a new draw (after 16 draws that
/// all missed, the endpoints that follow in set order): requests are drawn among the eligible
/// endpoints only, in proportion to their weights.
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

    /// An endpoint index drawn in proportion to weight from 64 random bits.
    #[inline]
    pub(crate) fn draw(&self, bits: u64, len: usize) -> usize {
        match self.ends.last() {
            None => below(bits, len),
            Some(&total) => {
                let point = ((u128::from(bits) * u128::from(total)) >> 64) as u64;
                self.ends.partition_point(|&end| end <= point)
            }
        }
    }
}

impl Table for Weights {
    #[inline]
    fn position(&self, bits: u64) -> u64 {
        bits
    }

    fn span(&self, endpoints: usize) -> usize {
        DRAWS + endpoints
    }

    #[inline]
    fn candidate<K, S>(
        &self,
        members: &[Member<K, S>],
        _health: Option<&Health>,
        bits: u64,
        step: usize,
    ) -> usize {
        let n = members.len();
        match step {
            0 => self.draw(bits, n),
            step if step < DRAWS => self.draw(redraw(bits, step), n),
            // Every draw missed: set order from the first, which meets every endpoint.
            step => (self.draw(bits, n) + step - DRAWS) % n,
        }
    }

    fn ramps(&self) -> bool {
        true
    }
}

impl<K> Build<K> for Random {
    type Table = Weights;

    fn build<S>(&self, members: &[Member<K, S>]) -> Weights {
        Weights::new(members)
    }

    fn key_hash(&self, _key: &[u8]) -> Option<u64> {
        None
    }
}

impl<K, Req> Start<K, Req> for Random {
    #[inline]
    fn start(&self, _request: Option<&Req>, _access: Access) -> Begin {
        Begin::At(self.rng.next())
    }
}
