//! Load-balancing strategies: how the balancer picks an endpoint for a request.
//!
//! | strategy | pick | weights | unavailable endpoint | membership change |
//! |---|---|---|---|---|
//! | [`RoundRobin`] | atomic cursor | ignored | the next endpoints in set order | rotation goes on over the new set |
//! | [`WeightedRoundRobin`] | precomputed smooth schedule + atomic cursor | exact share per period | the next endpoints in set order | new schedule |
//! | [`Hash`](struct@Hash) | crc32 of the request key mod N (Go's mapping) | weighted slots | the next endpoints in key-byte order; only its keys move, and come back | most keys move |
//! | [`ConsistentHash`] | ketama ring, bucket index; tower-lb's own, or nginx's, pingora-ketama's or libketama's ([`Placement`]) | points per unit of weight | the next endpoints on the ring; only its keys move, and come back | only the keys it must move |
//! | [`Maglev`] | prime-sized lookup table | entries per unit of weight | the owners of the key's next table entries; only its keys move | few keys besides its own |
//! | [`PowerOfTwoChoices`] | the less loaded of two random endpoints (in flight, or peak-EWMA latency) | load divided by weight | the next endpoints in set order | new draws |
//! | [`Random`] | a random endpoint | drawn in proportion | the next endpoints in set order | new draws |
//!
//! A strategy is configuration plus shared state (a cursor). [`BalanceLayer`](crate::BalanceLayer)
//! clones the strategy for every balancer it builds, and a fresh clone starts with fresh state; the
//! clones of one [`Balance`](crate::Balance) share that state, so a balancer that is cloned for
//! every request, as axum's router does, still rotates.
//!
//! Every membership change precomputes the strategy's tables (a weighted schedule, a ring) once,
//! off the request path; picking is then O(1) or O(log n), without locks or allocation.
//!
//! # Readiness
//!
//! The keyless strategies ([`RoundRobin`], [`WeightedRoundRobin`], [`PowerOfTwoChoices`],
//! [`Random`]) pick in `poll_ready`: the
//! chosen endpoint is polled to readiness there, so its backpressure reaches the caller. When it
//! is not ready, the balancer passes over it to the endpoints that follow it in set order, up to
//! [`BalanceLayer::max_tries`](crate::BalanceLayer::max_tries) candidates, before returning
//! `Pending` itself.
//!
//! The keyed strategies ([`Hash`](struct@Hash), [`ConsistentHash`], [`Maglev`]) cannot pick
//! before they see the request:
//! their `poll_ready` is ready while the set has endpoints, `call` takes the request's key (see
//! [`key`](crate::key)) and picks its endpoint, and the response future drives that endpoint's
//! readiness before calling it. An endpoint that is pending or fails its readiness check is passed
//! over for the key's next candidate, up to `max_tries` of them; if all of those are pending the
//! future waits for the first to become ready, in order of preference.
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

mod consistent_hash;
mod hash;
mod maglev;
mod p2c;
mod placement;
mod random;
pub(crate) mod ring;
mod round_robin;
mod weighted_round_robin;

pub use self::consistent_hash::ConsistentHash;
pub use self::hash::Hash;
pub use self::maglev::Maglev;
pub use self::p2c::PowerOfTwoChoices;
pub use self::placement::Placement;
pub use self::random::Random;
pub use self::round_robin::RoundRobin;
pub use self::weighted_round_robin::WeightedRoundRobin;

use std::{
    borrow::Cow,
    sync::{atomic::AtomicUsize, Arc},
};

use crate::{ejection::Health, endpoints::Member, error::InvalidConfig, load::InFlight};

/// A load-balancing strategy, usable with [`BalanceLayer`](crate::BalanceLayer) over endpoints
/// keyed by `K`.
///
/// This trait is sealed: the strategies of this crate implement it, and its methods are not part
/// of the public API.
pub trait Strategy<K>: sealed::Sealed + Send + Sync + 'static {
    /// What the strategy precomputes for each membership snapshot.
    #[doc(hidden)]
    type Table: Walk + Send + Sync + 'static;

    /// Whether the strategy routes by a request key, in `call`, rather than in `poll_ready`.
    #[doc(hidden)]
    const KEYED: bool = false;

    /// Precomputes the table for a new membership snapshot. Runs off the request path.
    #[doc(hidden)]
    fn build<S>(&self, members: &[Member<K, S>]) -> Self::Table;

    /// Keyless strategies: the first candidate for the next request, an index into `members`
    /// (never empty). Called on the request path: no locks, no allocation.
    #[doc(hidden)]
    fn first<S>(
        &self,
        _table: &Self::Table,
        _members: &[Member<K, S>],
        _health: Option<&Health>,
    ) -> usize {
        0
    }

    /// Keyless strategies that balance on load: counts a request reserved on `member` as in
    /// flight until its response completes or is dropped.
    #[doc(hidden)]
    fn track<S>(&self, _member: &Member<K, S>, _total: &Arc<AtomicUsize>) -> Option<InFlight> {
        None
    }

    /// Keyed strategies: the hash of a request key that [`Walk::start`] takes.
    #[doc(hidden)]
    fn hash_key(&self, _key: &[u8]) -> u64 {
        0
    }

    /// Keyed strategies with bounded loads: the factor `c` that caps an endpoint's in-flight
    /// requests at `ceil(c * mean)`.
    #[doc(hidden)]
    fn load_factor(&self) -> Option<f64> {
        None
    }
}

/// How a strategy finds the routing key of a `Req`. Keyless strategies implement it for every
/// request type and are never asked.
#[doc(hidden)]
pub trait Route<K, Req>: Strategy<K> {
    /// The request's routing key, `None` when it has none.
    fn request_key<'a>(&'a self, request: &'a Req) -> Option<Cow<'a, [u8]>>;
}

/// A keyed table seen as a cycle of positions, each owned by an endpoint: a request key starts at
/// one position, and its fallbacks are the owners of the positions after it. Public only to bound
/// [`Strategy::Table`]; it cannot be reached from outside the crate.
#[allow(unreachable_pub)]
pub trait Walk {
    /// The number of positions in the cycle; 0 for keyless tables, which are never walked.
    fn positions(&self) -> usize;
    /// The position where the key with this hash starts.
    fn start(&self, hash: u64) -> usize;
    /// The index (in set order) of the endpoint owning `position`.
    fn owner(&self, position: usize) -> usize;
    /// Why the table could not be built for its membership, if it could not (its requests fail
    /// with this error).
    fn error(&self) -> Option<&InvalidConfig> {
        None
    }
}

impl Walk for () {
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

/// Implements [`Route`] for a keyless strategy.
macro_rules! keyless_route {
    ($strategy:ty) => {
        impl<K, Req> $crate::strategy::Route<K, Req> for $strategy {
            fn request_key<'a>(&'a self, _request: &'a Req) -> Option<std::borrow::Cow<'a, [u8]>> {
                None
            }
        }
    };
}
pub(crate) use keyless_route;

/// Implements [`Route`] for a keyed strategy whose `key` field is its [`RequestKey`] extractor.
///
/// [`RequestKey`]: crate::key::RequestKey
macro_rules! keyed_route {
    ($strategy:ident) => {
        impl<K, E, Req> $crate::strategy::Route<K, Req> for $strategy<E>
        where
            K: $crate::EndpointKey,
            E: $crate::key::RequestKey<Req> + Send + Sync + 'static,
        {
            #[inline]
            fn request_key<'a>(&'a self, request: &'a Req) -> Option<std::borrow::Cow<'a, [u8]>> {
                self.key.key(request)
            }
        }
    };
}
pub(crate) use keyed_route;

/// The key bytes of every member, in set order, for the tables built from them.
pub(crate) fn key_bytes<K: crate::EndpointKey, S>(members: &[Member<K, S>]) -> Vec<Cow<'_, [u8]>> {
    members.iter().map(|m| m.key.key_bytes()).collect()
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

/// A fast random source for the random strategies, without locks or SipHash.
///
/// Unseeded, each thread draws from its own generator (splitmix64 over a thread-local counter,
/// itself seeded from the OS's per-thread hashing keys), so picks on different threads never touch
/// a shared cache line. Seeded, every clone of the balancer draws from one splitmix64 sequence over
/// a shared atomic counter, so a single-threaded test replays the same picks.
#[derive(Debug)]
pub(crate) enum Rng {
    PerThread,
    Seeded(Cursor64),
}

#[repr(align(64))]
#[derive(Debug)]
pub(crate) struct Cursor64(std::sync::atomic::AtomicU64);

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

thread_local! {
    static THREAD_RNG: std::cell::Cell<u64> = std::cell::Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x5eed);
        hasher.finish()
    });
}

impl Rng {
    pub(crate) fn seeded(seed: u64) -> Self {
        Self::Seeded(Cursor64(std::sync::atomic::AtomicU64::new(seed)))
    }

    pub(crate) fn per_thread() -> Self {
        Self::PerThread
    }

    /// 64 random bits.
    #[inline]
    pub(crate) fn next(&self) -> u64 {
        let state = match self {
            Self::PerThread => THREAD_RNG.with(|state| {
                let next = state.get().wrapping_add(GAMMA);
                state.set(next);
                next
            }),
            Self::Seeded(cursor) => cursor
                .0
                .fetch_add(GAMMA, std::sync::atomic::Ordering::Relaxed)
                .wrapping_add(GAMMA),
        };
        ring::fmix64(state)
    }
}

/// A uniform index below `n` from 64 random bits (Lemire's multiply-shift; `n` at least 1).
#[inline]
pub(crate) fn below(bits: u64, n: usize) -> usize {
    ((u128::from(bits) * n as u128) >> 64) as usize
}
