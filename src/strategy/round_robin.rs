use std::fmt;

use super::internal::{Access, Begin, Build, Start, Table};
use crate::{ejection::Health, endpoints::Member, rng::Cursor};

/// Sends each request to the next endpoint in set order, with one cursor shared by every clone of
/// the balancer and every thread.
///
/// R requests over N always-ready endpoints give each endpoint exactly R / N of them (when N
/// divides R), whatever the number of clones and threads. Weights are ignored; use
/// [`WeightedRoundRobin`](super::WeightedRoundRobin) to honour them.
///
/// When the set changes, the rotation continues from the same cursor over the new set.
///
/// The cursor moves with an atomic add while clones of the balancer exist. A balancer that is the
/// only handle on its set (not cloned, or every clone dropped) moves it with a plain load and
/// store, a few nanoseconds less per request; the rotation is exact either way.
///
/// # Unavailable endpoints
///
/// An endpoint that is ejected, passes its turn in slow start, or is not ready (pending, or its
/// readiness fails) is passed over for the next endpoint in set order, and the turns passed over
/// are spent: the request after goes to the endpoint after that one. The survivors keep an equal
/// share: with one of 10 endpoints ejected, 9,000 requests give each of the other nine exactly
/// 1,000, and no survivor takes the missing endpoint's share on top of its own.
///
/// # Examples
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{strategy::RoundRobin, BalanceLayer, Endpoints};
///
/// # tokio_test::block_on(async {
/// let backend = |name: &'static str| service_fn(move |_req: ()| async move {
///     Ok::<_, std::convert::Infallible>(name)
/// });
/// let set = Endpoints::from_iter([("a", backend("a")), ("b", backend("b")), ("c", backend("c"))]);
/// let balance = BalanceLayer::new(RoundRobin::new()).layer(set);
///
/// let mut order = String::new();
/// for _ in 0..6 {
///     // Every clone shares the cursor.
///     order += balance.clone().oneshot(()).await.unwrap();
/// }
/// assert_eq!(order, "abcabc");
/// # });
/// ```
#[derive(Default)]
pub struct RoundRobin {
    cursor: Cursor,
}

impl RoundRobin {
    /// Creates a round robin strategy whose rotation starts at the first endpoint.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A clone is a new strategy, starting its own rotation at the first endpoint.
impl Clone for RoundRobin {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl fmt::Debug for RoundRobin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoundRobin").finish_non_exhaustive()
    }
}

impl<K> Build<K> for RoundRobin {
    type Table = Rotation;

    fn build<S>(&self, _members: &[Member<K, S>]) -> Rotation {
        Rotation
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

impl<K, Req> Start<K, Req> for RoundRobin {
    #[inline]
    fn start(&self, _request: Option<&Req>, access: Access) -> Begin {
        Begin::At(self.cursor.next(access) as u64)
    }
}

/// The set in its own order, from the cursor's turn. Public only to name it as the strategy's
/// table; it cannot be reached from outside the crate.
#[derive(Debug)]
pub struct Rotation;

impl Table for Rotation {
    #[inline]
    fn position(&self, turn: u64) -> u64 {
        turn
    }

    fn span(&self, endpoints: usize) -> usize {
        endpoints
    }

    #[inline]
    fn candidate<K, S>(
        &self,
        members: &[Member<K, S>],
        _health: Option<&Health>,
        turn: u64,
        step: usize,
    ) -> usize {
        (turn.wrapping_add(step as u64) % members.len() as u64) as usize
    }

    fn ramps(&self) -> bool {
        true
    }

    fn turns(&self) -> bool {
        true
    }
}
