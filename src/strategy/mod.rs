//! Load-balancing strategies: how the balancer picks an endpoint for a request.
//!
//! | strategy | pick | weights | unavailable endpoint | membership change |
//! |---|---|---|---|---|
//! | [`RoundRobin`] | atomic cursor | ignored | the next turn; the turns passed over are spent, so the others keep equal shares | rotation goes on over the new set |
//! | [`WeightedRoundRobin`] | precomputed smooth schedule + atomic cursor | exact share per period | the schedule's next turn of another endpoint; turns passed over are spent, so the others keep their proportions | new schedule |
//! | [`Hash`](struct@Hash) | crc32 of the request key mod N (Go's mapping) | weighted slots | the next endpoints in key-byte order; only its keys move, and come back | most keys move |
//! | [`ConsistentHash`] | ketama ring, bucket index; tower-lb's own, or nginx's, pingora-ketama's or libketama's ([`Placement`]) | points per unit of weight | the next endpoints on the ring; only its keys move, and come back | only the keys it must move |
//! | [`Maglev`] | prime-sized lookup table | entries per unit of weight | the owners of the key's next table entries; only its keys move | few keys besides its own |
//! | [`PowerOfTwoChoices`] | the less loaded of two random endpoints (in flight, or peak-EWMA latency) | load divided by weight | loses every comparison; a new pair is drawn | new draws |
//! | [`Random`] | a random endpoint | drawn in proportion | a new draw, among the eligible only | new draws |
//!
//! Past one client, three wrappers shape which endpoints a keyless strategy sees. Each is a
//! strategy over another (`Subset<RoundRobin>`, `Tiers<ZoneAware<PowerOfTwoChoices>>`); the
//! strategy inside balances within what the wrapper gives it, with the same walk over unavailable
//! endpoints:
//!
//! | wrapper | what it does | follows |
//! |---|---|---|
//! | [`Subset`] | each client balances over `size` endpoints of the set: an arc of a ring, dealt so that every endpoint is in as many clients' subsets as every other ([`Subset::deterministic`]), or the endpoints that score highest for a seed ([`Subset::random`]) | membership; changes move few clients |
//! | [`ZoneAware`] | keeps requests in the client's zone as far as that zone's capacity allows, spilling the rest to zones with spare capacity (Envoy's rule) | eligibility, and the client fleet's spread over the zones |
//! | [`Tiers`] | sends everything to tier 0 while it is healthy, spilling to tier 1 (nginx's `backup`), 2, … as its healthy share drops (Envoy's priority load, overprovisioning 1.4) | eligibility |
//!
//! An endpoint's zone and tier are its [`Locality`](crate::Locality). With a wrapper that keeps a
//! subset or groups the endpoints, [`Balance::stats`](crate::Balance::stats) lists the endpoints
//! the balancer routes over, in its order: the subset, or the groups one after another.
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
//! [`Random`]) pick in `poll_ready`: the chosen endpoint is polled to readiness there, so its
//! backpressure reaches the caller. When it is not ready (or is ejected), the balancer passes over
//! it to the strategy's next choice (the next turn, a new draw), up to
//! [`BalanceLayer::max_tries`](crate::BalanceLayer::max_tries) candidates, before returning
//! `Pending` itself. The turns passed over are spent, so the endpoints that are left share the
//! unavailable one's load in proportion to their weights.
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
mod split;
mod subset;
mod tiers;
mod weighted_round_robin;
mod zone_aware;

pub use self::consistent_hash::ConsistentHash;
pub use self::hash::Hash;
pub use self::maglev::Maglev;
pub use self::p2c::PowerOfTwoChoices;
pub use self::placement::Placement;
pub use self::random::Random;
pub use self::round_robin::RoundRobin;
pub use self::subset::Subset;
pub use self::tiers::Tiers;
pub use self::weighted_round_robin::WeightedRoundRobin;
pub use self::zone_aware::ZoneAware;

use std::{
    borrow::Cow,
    sync::{atomic::AtomicUsize, Arc},
};

use crate::{
    ejection::Health, endpoints::Member, error::InvalidConfig, load::InFlight, EndpointKey,
};

/// A load-balancing strategy over endpoints keyed by `K`: the bound under which a
/// [`Balance`](crate::Balance) and a [`BalanceLayer`](crate::BalanceLayer) can be built and
/// stored.
///
/// To send requests through the balancer, generic code needs the strategy to route its request
/// type: write the bound [`Route<K, Req>`](Route), which implies this one.
///
/// # Adding a strategy
///
/// The trait is sealed: the strategies of this module implement it, through an internal trait
/// that a new strategy implements in its own file under `src/strategy/`. A strategy provides:
///
/// - a **table**, precomputed from each membership snapshot off the request path (a schedule, a
///   ring, a lookup table, or nothing);
/// - the **order** in which a request meets the endpoints: where its walk starts (a shared
///   cursor, a random draw, or the position of the request's key in the table) and which
///   endpoint comes at each step after that. Keyless strategies start from their own state and
///   are walked when the caller polls readiness; keyed strategies start from the request's key
///   and are walked when the request is called;
/// - optionally, what it counts per request (requests in flight, round trips) and the load bound
///   of bounded-load hashing.
///
/// Everything else (skipping ejected endpoints, slow start, panic mode, the bound on tries,
/// keeping pending candidates and following membership changes) is the balancer's walk over that
/// order, the same for every strategy.
pub trait Strategy<K>: internal::Build<K> {}

impl<K, T: internal::Build<K>> Strategy<K> for T {}

/// A [`Strategy`] that routes requests of type `Req`: the bound under which a
/// [`Balance`](crate::Balance) is a `Service<Req>`.
///
/// Keyless strategies ([`RoundRobin`], [`WeightedRoundRobin`], [`PowerOfTwoChoices`],
/// [`Random`]) route every request type. Keyed strategies ([`Hash`](struct@Hash),
/// [`ConsistentHash`], [`Maglev`]) route the requests their key extractor reads (see
/// [`RequestKey`](crate::key::RequestKey)), over endpoints whose keys are [`EndpointKey`]s.
///
/// # Examples
///
/// A client constructor generic over the strategy:
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{service_fn, util::BoxCloneSyncService, Layer, ServiceExt};
/// use tower_lb::{
///     key,
///     strategy::{ConsistentHash, Route, RoundRobin},
///     Balance, BalanceLayer, Endpoints,
/// };
///
/// type Backend = BoxCloneSyncService<Request<String>, Response<String>, Infallible>;
///
/// fn client<St>(strategy: St) -> Balance<St, String, Backend>
/// where
///     St: Route<String, Request<String>> + Clone,
/// {
///     let backend = |name: &'static str| -> Backend {
///         BoxCloneSyncService::new(service_fn(move |_req: Request<String>| async move {
///             Ok(Response::new(name.to_string()))
///         }))
///     };
///     let set = Endpoints::from_iter([
///         ("10.0.0.1:80".to_string(), backend("a")),
///         ("10.0.0.2:80".to_string(), backend("b")),
///     ]);
///     BalanceLayer::new(strategy).layer(set)
/// }
///
/// # tokio_test::block_on(async {
/// let request = || Request::builder().uri("/?key=cat").body(String::new()).unwrap();
/// let round_robin = client(RoundRobin::new());
/// assert_eq!(round_robin.clone().oneshot(request()).await.unwrap().body(), "a");
/// assert_eq!(round_robin.clone().oneshot(request()).await.unwrap().body(), "b");
///
/// let by_key = client(ConsistentHash::new(key::query("key")));
/// let first = by_key.clone().oneshot(request()).await.unwrap();
/// assert_eq!(by_key.clone().oneshot(request()).await.unwrap().body(), first.body());
/// # });
/// ```
pub trait Route<K, Req>: Strategy<K> + internal::Start<K, Req> {}

impl<K, Req, T: internal::Start<K, Req>> Route<K, Req> for T {}

/// The internal side of [`Strategy`] and [`Route`]: public only to be named in their bounds; it
/// cannot be reached from outside the crate.
pub(crate) mod internal {
    use super::*;
    pub(crate) use crate::rng::Access;

    /// What every strategy provides.
    pub trait Build<K>: Send + Sync + 'static {
        /// What the strategy precomputes for each membership snapshot.
        type Table: Table;

        /// Precomputes the table for a new membership snapshot. Runs off the request path.
        ///
        /// `members` are the endpoints [`Build::arrange`] left, in its order.
        fn build<S>(&self, members: &[Member<K, S>]) -> Self::Table;

        /// Chooses the endpoints of a new membership snapshot that the strategy routes over, and
        /// their order, before its table is built: `order` holds indices into `members`, all of
        /// them in set order when the balancer asks. A strategy that keeps a subset drops the
        /// others; one that splits requests between groups (zones, tiers) makes each group a
        /// contiguous range. The default keeps every endpoint in set order. Runs off the request
        /// path.
        #[inline]
        fn arrange<S>(&self, members: &[Member<K, S>], order: &mut Vec<u32>) {
            let _ = (members, order);
        }

        /// Where a request whose key is `key` starts its walk, to be placed by
        /// [`Table::position`]; `None` for keyless strategies, which map no keys.
        fn key_hash(&self, key: &[u8]) -> Option<u64>;

        /// The walk of a request met its endpoint `steps` steps after its start: a strategy that
        /// hands out turns spends the turns passed over, so that the endpoint after an
        /// unavailable one is not given that one's share as well.
        #[inline]
        fn settled(&self, steps: usize, access: Access) {
            let _ = (steps, access);
        }

        /// Counts a request sent to `member` as in flight until its response completes or is
        /// dropped, for the strategies that balance on load.
        #[inline]
        fn track<S>(&self, member: &Member<K, S>, total: &Arc<AtomicUsize>) -> Option<InFlight> {
            let _ = (member, total);
            None
        }

        /// The factor `c` of bounded loads: no endpoint takes more than `ceil(c × mean)` requests
        /// in flight.
        fn load_factor(&self) -> Option<f64> {
            None
        }
    }

    /// Where a request's walk starts.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Begin {
        /// From this value, placed in the table by [`Table::position`].
        At(u64),
        /// From the request's key: asked without the request, a keyed strategy waits for it.
        AtCall,
        /// The request carries no key.
        NoKey,
    }

    /// How a strategy starts the walk of a `Req`.
    pub trait Start<K, Req>: Build<K> {
        /// Where the walk starts: keyless strategies answer from their own state (a cursor, a
        /// random draw) whether or not they see the request, keyed ones from the request's key.
        /// Asked once per request, before the request is sent; `None` while the caller polls
        /// readiness. `access` says how the strategy may move its cursors.
        fn start(&self, request: Option<&Req>, access: Access) -> Begin;
    }

    /// A table precomputed for one membership snapshot: the order in which a request meets the
    /// endpoints.
    pub trait Table: Send + Sync + 'static {
        /// The position in this table of a walk that starts at `value` (a cursor's turn, random
        /// bits, a key's hash).
        fn position(&self, value: u64) -> u64;

        /// The number of steps a walk takes to meet every one of `endpoints` endpoints at least
        /// once.
        fn span(&self, endpoints: usize) -> usize;

        /// The endpoint (its index in set order) met at `step` of the walk from `position`. Called
        /// on the request path: no locks, no allocation.
        fn candidate<K, S>(
            &self,
            members: &[Member<K, S>],
            health: Option<&Health>,
            position: u64,
            step: usize,
        ) -> usize;

        /// Whether slow start ramps an endpoint's share by passing some of its turns: true for
        /// keyless strategies; a key's endpoint is its endpoint.
        fn ramps(&self) -> bool;

        /// The endpoint a walk from `position` meets first, whatever the eligibility: its
        /// [`candidate`](Table::candidate) at step 0, which a keyed table answers with one lookup
        /// (`position` came from [`position`](Table::position)).
        #[inline]
        fn first_candidate<K, S>(&self, members: &[Member<K, S>], position: u64) -> usize {
            self.candidate(members, None, position, 0)
        }

        /// An endpoint of the snapshot became eligible or ineligible without a membership change
        /// (an active health check took it out or let it back): tables that keep what they
        /// computed from eligibility recompute it.
        fn eligibility_changed(&self) {}

        /// Whether the table's positions are the consecutive turns of a cursor (a rotation, a
        /// schedule) rather than random bits or key hashes: a strategy that splits requests
        /// between groups of endpoints then gives each group consecutive turns of its own.
        fn turns(&self) -> bool {
            false
        }

        /// Why the table could not be built for its membership, if it could not (its requests fail
        /// with this error).
        fn error(&self) -> Option<&InvalidConfig> {
            None
        }
    }

    /// The walk position `position + step` of a keyed table with `positions` positions, for a
    /// start below `positions` and a step below it.
    #[inline]
    pub(crate) fn wrap(position: u64, step: usize, positions: usize) -> usize {
        let p = position as usize + step;
        if p >= positions {
            p - positions
        } else {
            p
        }
    }
}

/// Implements [`Start`](internal::Start) for a keyed strategy whose `key` field is its
/// [`RequestKey`](crate::key::RequestKey) extractor and whose inherent `hash_key` hashes a key.
macro_rules! keyed_start {
    ($strategy:ident) => {
        impl<K, E, Req> $crate::strategy::internal::Start<K, Req> for $strategy<E>
        where
            K: $crate::EndpointKey,
            E: $crate::key::RequestKey<Req> + Send + Sync + 'static,
        {
            #[inline]
            fn start(
                &self,
                request: Option<&Req>,
                _access: $crate::rng::Access,
            ) -> $crate::strategy::internal::Begin {
                use $crate::strategy::internal::Begin;
                match request {
                    None => Begin::AtCall,
                    Some(request) => match self.key.key(request) {
                        Some(key) => Begin::At(self.hash_key(&key)),
                        None => Begin::NoKey,
                    },
                }
            }
        }
    };
}
pub(crate) use keyed_start;

/// In an `impl Build<K>` of a strategy that wraps another in its `inner` field (a subset, zones,
/// tiers): the methods that are the inner strategy's alone, the key hash, the in-flight count
/// and the load bound.
macro_rules! inner_build_methods {
    () => {
        fn key_hash(&self, key: &[u8]) -> Option<u64> {
            self.inner.key_hash(key)
        }

        #[inline]
        fn track<S>(
            &self,
            member: &$crate::endpoints::Member<K, S>,
            total: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
        ) -> Option<$crate::load::InFlight> {
            self.inner.track(member, total)
        }

        fn load_factor(&self) -> Option<f64> {
            self.inner.load_factor()
        }
    };
}
pub(crate) use inner_build_methods;

/// Implements [`Start`](internal::Start) for a strategy that wraps another in its `inner` field:
/// the walk starts where the inner strategy starts it.
macro_rules! inner_start {
    ($strategy:ident) => {
        impl<K, Req, St> $crate::strategy::internal::Start<K, Req> for $strategy<St>
        where
            Self: $crate::strategy::internal::Build<K>,
            St: $crate::strategy::internal::Start<K, Req>,
        {
            #[inline]
            fn start(
                &self,
                request: Option<&Req>,
                access: $crate::rng::Access,
            ) -> $crate::strategy::internal::Begin {
                self.inner.start(request, access)
            }
        }
    };
}
pub(crate) use inner_start;

/// The key bytes of every member, in set order, for the tables built from them.
pub(crate) fn key_bytes<K: EndpointKey, S>(members: &[Member<K, S>]) -> Vec<Cow<'_, [u8]>> {
    members.iter().map(|m| m.key.key_bytes()).collect()
}

/// How many random draws a random strategy's walk makes before it falls back to set order, which
/// meets every endpoint: with half the set ejected, all of them miss once in 65,536 walks.
pub(crate) const DRAWS: usize = 16;
