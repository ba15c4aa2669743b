//! Load-balancing strategies: how the balancer picks an endpoint for a request.
//!
//! | strategy | pick | weights | notes |
//! |---|---|---|---|
//! | [`RoundRobin`] | atomic cursor | ignored | exact rotation across clones and threads |
//! | [`WeightedRoundRobin`] | precomputed smooth schedule + atomic cursor | yes | nginx's smooth sequence, exact counts per period |
//!
//! A strategy is configuration plus shared state (a cursor). [`BalanceLayer`](crate::BalanceLayer)
//! clones the strategy for every balancer it builds, and a fresh clone starts with fresh state; the
//! clones of one [`Balance`](crate::Balance) share that state, so a balancer that is cloned for
//! every request, as axum's router does, still rotates.
//!
//! Every membership change precomputes the strategy's tables (a weighted schedule, ...) once, off
//! the request path; picking is then O(1) or O(log n), without locks or allocation.
//!
//! # Readiness
//!
//! The strategies here pick in `poll_ready`: the chosen endpoint is polled to readiness there, so
//! its backpressure reaches the caller. When it is not ready, the balancer passes over it to the
//! endpoints that follow it in set order, up to [`BalanceLayer::max_tries`](crate::BalanceLayer::max_tries)
//! candidates, before returning `Pending` itself.
//!
//! # Examples
//!
//! ```
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_lb::{strategy::WeightedRoundRobin, BalanceLayer, Endpoints};
//!
//! # tokio_test::block_on(async {
//! let backend = |name: &'static str| service_fn(move |_req: ()| async move {
//!     Ok::<_, std::convert::Infallible>(name)
//! });
//! let set = Endpoints::try_from_weighted([
//!     ("a", backend("a"), 5),
//!     ("b", backend("b"), 1),
//!     ("c", backend("c"), 1),
//! ])
//! .unwrap();
//! let balance = BalanceLayer::new(WeightedRoundRobin::new()).layer(set);
//!
//! let mut order = String::new();
//! for _ in 0..7 {
//!     order += balance.clone().oneshot(()).await.unwrap();
//! }
//! assert_eq!(order, "aabacaa");
//! # });
//! ```

pub(crate) mod ring;
mod round_robin;
mod weighted_round_robin;

pub use self::round_robin::RoundRobin;
pub use self::weighted_round_robin::WeightedRoundRobin;

use crate::endpoints::Member;

/// A load-balancing strategy, usable with [`BalanceLayer`](crate::BalanceLayer) over endpoints
/// keyed by `K`.
///
/// This trait is sealed: the strategies of this crate implement it, and its methods are not part
/// of the public API.
pub trait Strategy<K>: sealed::Sealed + Send + Sync + 'static {
    /// What the strategy precomputes for each membership snapshot.
    #[doc(hidden)]
    type Table: Send + Sync + 'static;

    /// Precomputes the table for a new membership snapshot. Runs off the request path.
    #[doc(hidden)]
    fn build<S>(&self, members: &[Member<K, S>]) -> Self::Table;

    /// The first candidate for the next request, an index below `len`, the number of endpoints
    /// (at least 1). Called on the request path: no locks, no allocation.
    #[doc(hidden)]
    fn first(&self, table: &Self::Table, len: usize) -> usize;
}

mod sealed {
    pub trait Sealed {}
}

/// A cursor on its own cache line, so that requests bumping it do not slow down readers of the
/// data beside it.
#[repr(align(64))]
#[derive(Debug, Default)]
pub(crate) struct Cursor(std::sync::atomic::AtomicUsize);

impl Cursor {
    /// Returns the current position and moves to the next.
    #[inline]
    pub(crate) fn next(&self) -> usize {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
