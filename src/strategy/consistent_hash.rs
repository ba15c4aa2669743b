use std::fmt;

use super::{
    internal::{wrap, Build, Table},
    placement::Placement,
    ring::{Crc32, Ring},
};
use crate::{ejection::Health, endpoints::Member, error::InvalidConfig, EndpointKey};

/// Ring points per unit of weight unless configured: ketama's and nginx's choice.
const DEFAULT_POINTS_PER_WEIGHT: u32 = 160;
/// The most points per unit of weight accepted.
const MAX_POINTS_PER_WEIGHT: u32 = 1 << 16;

/// Consistent hashing on a ketama ring: each request goes to the endpoint owning the first ring
/// point at or after its key's hash, so that a membership change moves only the keys it must.
///
/// Every endpoint gets 160 points per unit of weight (configurable), placed by hashing its
/// [key bytes](EndpointKey) only: the ring, and so the mapping of every request key, depends
/// only on the membership and the weights, not on insertion order, process or run. A key's
/// position is the crc32 (IEEE) of its bytes, spread over 64 bits. Lookups use a bucket index
/// over the sorted points: O(1) on average, without allocation or locks.
///
/// That ring is tower-lb's own: **it does not map keys as nginx, pingora-ketama or memcached
/// clients do**, even with the same servers. To share a key space with them, pick the peer's
/// [`placement`](ConsistentHash::placement): [`Placement::Nginx`], [`Placement::PingoraKetama`]
/// or [`Placement::Libketama`] rebuild the peer's ring exactly and keep everything below.
///
/// - Adding an endpoint moves to it about `1 / (N + 1)` of the keys, and no other key moves.
/// - Removing an endpoint moves only its keys, each to the next endpoint on the ring.
/// - An endpoint of weight 2 owns about twice the keys of an endpoint of weight 1.
///
/// # Unavailable endpoints
///
/// When a key's endpoint is not ready (pending, or its readiness fails), the request walks the
/// ring to the next distinct endpoints, up to [`max_tries`](crate::BalanceLayer::max_tries) of
/// them: the keys of that endpoint spread over its ring successors, no other key moves, and they
/// all come back when it is ready again.
///
/// # Bounded loads
///
/// With [`bounded_load(c)`](ConsistentHash::bounded_load), an endpoint never takes more than
/// `ceil(c × (m + 1) / N)` requests in flight, `m` being the requests in flight over the set:
/// a request whose endpoint is full walks the ring to the next endpoint with room (consistent
/// hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam, 2018). A hot key then spills
/// over to its ring successors instead of overloading one endpoint. The in-flight counts are
/// shared by every clone of the balancer (and every balancer over the same set), and released
/// when the response completes or its future is dropped.
///
/// # Examples
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{key, strategy::ConsistentHash, BalanceLayer, Endpoints};
///
/// # tokio_test::block_on(async {
/// let server = |name: &'static str| service_fn(move |_req: http::Request<()>| async move {
///     Ok::<_, std::convert::Infallible>(name)
/// });
/// let set = Endpoints::from_iter([
///     ("10.0.0.1:8080", server("a")),
///     ("10.0.0.2:8080", server("b")),
///     ("10.0.0.3:8080", server("c")),
/// ]);
/// let strategy = ConsistentHash::new(key::header(http::header::HeaderName::from_static("x-user")))
///     .bounded_load(1.25)
///     .unwrap();
/// let balance = BalanceLayer::new(strategy).layer(set.clone());
///
/// let request = || http::Request::builder().header("x-user", "alice").body(()).unwrap();
/// let first = balance.clone().oneshot(request()).await.unwrap();
/// // The same key keeps reaching the same endpoint...
/// assert_eq!(balance.clone().oneshot(request()).await.unwrap(), first);
///
/// // ...and an endpoint joining the set takes over only the keys that now fall to it.
/// let before = balance.endpoint_for_key("alice").unwrap();
/// set.insert("10.0.0.4:8080", server("d"));
/// let after = balance.endpoint_for_key("alice").unwrap();
/// assert!(after == before || after == "10.0.0.4:8080");
/// # });
/// ```
#[derive(Clone)]
pub struct ConsistentHash<E> {
    key: E,
    points_per_weight: u32,
    load_factor: Option<f64>,
    placement: Placement,
    crc: Crc32,
}

impl<E> ConsistentHash<E> {
    /// Routes requests by the key that `key` extracts from them (see [`key`](crate::key)), on a
    /// ring of 160 points per unit of weight, without a load bound.
    ///
    /// A request without a key fails with [`MissingKey`](crate::error::MissingKey) unless the
    /// extractor has a default ([`RequestKey::or`](crate::key::RequestKey::or)).
    pub fn new(key: E) -> Self {
        Self {
            key,
            points_per_weight: DEFAULT_POINTS_PER_WEIGHT,
            load_factor: None,
            placement: Placement::Native,
            crc: Crc32::default(),
        }
    }

    /// Places the ring's points, and hashes request keys onto it, as `placement` says: tower-lb's
    /// own ring ([`Placement::Native`], the default), or one that maps every key exactly as nginx,
    /// pingora-ketama or libketama (twemproxy, libmemcached) does. See [`Placement`] for which to
    /// pick and how endpoint keys must name the servers.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_lb::{key, strategy::{ConsistentHash, Placement}};
    ///
    /// // The memcached pool that twemproxy shards with `distribution: ketama` and `hash: md5`.
    /// let strategy = ConsistentHash::new(key::path()).placement(Placement::Libketama);
    /// # let _ = strategy;
    /// ```
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Sets the number of ring points per unit of weight (default 160). More points spread keys
    /// more evenly, at the cost of memory (12 bytes a point) and build time. Only the default
    /// [`Placement::Native`] counts it: the compatible placements use their peer's counts.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] unless `1 <= points <= 65536`.
    pub fn points_per_weight(mut self, points: u32) -> Result<Self, InvalidConfig> {
        if !(1..=MAX_POINTS_PER_WEIGHT).contains(&points) {
            return Err(InvalidConfig::new(
                "points per weight",
                "between 1 and 65536",
                points,
            ));
        }
        self.points_per_weight = points;
        Ok(self)
    }

    /// Bounds every endpoint's in-flight requests to `ceil(factor × mean)`, walking the ring past
    /// full endpoints. Typical factors are 1.25 (tight) to 2 (loose).
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] unless `factor` is finite and greater than 1: with 1 or less some
    /// request would find every endpoint full.
    pub fn bounded_load(mut self, factor: f64) -> Result<Self, InvalidConfig> {
        if !(factor.is_finite() && factor > 1.0) {
            return Err(InvalidConfig::new(
                "load factor",
                "a finite number greater than 1",
                factor,
            ));
        }
        self.load_factor = Some(factor);
        Ok(self)
    }
}

impl<E: fmt::Debug> fmt::Debug for ConsistentHash<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsistentHash")
            .field("key", &self.key)
            .field("points_per_weight", &self.points_per_weight)
            .field("load_factor", &self.load_factor)
            .field("placement", &self.placement)
            .finish()
    }
}

/// The ring of a membership snapshot. Public only to name it as the strategy's table; it cannot
/// be reached from outside the crate.
#[derive(Debug)]
pub struct RingTable {
    ring: Ring,
    /// Why the placement could not build the ring (an empty ring then), if it could not.
    error: Option<InvalidConfig>,
}

impl Table for RingTable {
    #[inline]
    fn position(&self, hash: u64) -> u64 {
        self.ring.position(hash) as u64
    }

    fn span(&self, _endpoints: usize) -> usize {
        self.ring.len()
    }

    #[inline]
    fn candidate<K, S>(
        &self,
        _members: &[Member<K, S>],
        _health: Option<&Health>,
        position: u64,
        step: usize,
    ) -> usize {
        self.ring.owner(wrap(position, step, self.ring.len()))
    }

    #[inline]
    fn first_candidate<K, S>(&self, _members: &[Member<K, S>], position: u64) -> usize {
        self.ring.owner(position as usize)
    }

    fn ramps(&self) -> bool {
        false
    }

    fn error(&self) -> Option<&InvalidConfig> {
        self.error.as_ref()
    }
}

impl<E> ConsistentHash<E> {
    /// The start of a key's walk: its position on the ring's 64-bit circle, as the placement
    /// hashes it.
    #[inline]
    fn hash_key(&self, key: &[u8]) -> u64 {
        self.placement.key_hash(&self.crc, key)
    }
}

impl<K, E> Build<K> for ConsistentHash<E>
where
    K: EndpointKey,
    E: Send + Sync + 'static,
{
    type Table = RingTable;

    fn build<S>(&self, members: &[Member<K, S>]) -> RingTable {
        let keys = super::key_bytes(members);
        let endpoints: Vec<(&[u8], u32)> = keys
            .iter()
            .zip(members)
            .map(|(key, m)| (key.as_ref(), m.weight))
            .collect();
        match self.placement.ring(&endpoints, self.points_per_weight) {
            Ok(ring) => RingTable { ring, error: None },
            Err(error) => RingTable {
                ring: Ring::new(std::iter::empty(), 1),
                error: Some(error),
            },
        }
    }

    fn key_hash(&self, key: &[u8]) -> Option<u64> {
        Some(self.hash_key(key))
    }

    fn load_factor(&self) -> Option<f64> {
        self.load_factor
    }
}

super::keyed_start!(ConsistentHash);
