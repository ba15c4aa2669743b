use std::fmt;

use super::{sealed::Sealed, Cursor, Strategy};
use crate::{ejection::Health, endpoints::Member};

/// Sends each request to the next endpoint in set order, with one cursor shared by every clone of
/// the balancer and every thread.
///
/// R requests over N always-ready endpoints give each endpoint exactly R / N of them (when N
/// divides R), whatever the number of clones and threads. Weights are ignored; use
/// [`WeightedRoundRobin`](super::WeightedRoundRobin) to honour them.
///
/// When the set changes, the rotation continues from the same cursor over the new set.
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

impl Sealed for RoundRobin {}

super::keyless_route!(RoundRobin);

impl<K> Strategy<K> for RoundRobin {
    type Table = ();

    fn build<S>(&self, _members: &[Member<K, S>]) {}

    #[inline]
    fn first<S>(&self, _table: &(), members: &[Member<K, S>], _: Option<&Health>) -> usize {
        self.cursor.next() % members.len()
    }
}
