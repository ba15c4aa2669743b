use std::fmt;

use super::{
    internal::{wrap, Build, Table},
    ring::Crc32,
};
use crate::{ejection::Health, endpoints::Member, EndpointKey};

/// Routes each request by the crc32 (IEEE) of its key, modulo the number of endpoints: the same
/// key always reaches the same endpoint while the membership stays the same.
///
/// The endpoints are taken in the order of their [key bytes](EndpointKey) (byte-wise), not in
/// insertion order, so that every process with the same membership maps keys alike. With
/// endpoints `server1`, `server2`, `server3` the mapping is exactly that of the Go handler
///
/// ```go
/// h := crc32.NewIEEE()
/// h.Write([]byte(key))
/// server := servers[h.Sum32() % uint32(len(servers))]
/// ```
///
/// (`a` → server1, `b` → server3, `c` → server1, `default_key` → server1).
///
/// # Weights
///
/// An endpoint of weight `w` owns `w` consecutive slots, and a key goes to slot
/// `crc32(key) % total weight`. With every weight 1 (the default) this is the plain modulo above.
///
/// # Unavailable endpoints
///
/// When a key's endpoint is not ready (pending, or its readiness fails), the request goes to the
/// endpoints after it in key-byte order, wrapping around, up to
/// [`max_tries`](crate::BalanceLayer::max_tries) endpoints: only that endpoint's keys move, all
/// to the same places, and they come back as soon as it is ready again.
///
/// Adding or removing an endpoint changes `N` and so moves most keys: use
/// [`ConsistentHash`](super::ConsistentHash) when membership changes.
///
/// # Examples
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{key, strategy::Hash, BalanceLayer, Endpoints};
///
/// # tokio_test::block_on(async {
/// let server = |name: &'static str| service_fn(move |_req: http::Request<()>| async move {
///     Ok::<_, std::convert::Infallible>(name)
/// });
/// let set = Endpoints::from_iter([
///     ("server1", server("server1")),
///     ("server2", server("server2")),
///     ("server3", server("server3")),
/// ]);
/// let balance = BalanceLayer::new(Hash::new(key::query("key").or("default_key"))).layer(set);
///
/// for (uri, expected) in [("/?key=a", "server1"), ("/?key=b", "server3"), ("/", "server1")] {
///     let request = http::Request::builder().uri(uri).body(()).unwrap();
///     assert_eq!(balance.clone().oneshot(request).await.unwrap(), expected);
/// }
/// assert_eq!(balance.endpoint_for_key("c"), Some("server1"));
/// # });
/// ```
#[derive(Clone)]
pub struct Hash<E> {
    key: E,
    crc: Crc32,
}

impl<E> Hash<E> {
    /// Routes requests by the key that `key` extracts from them (see [`key`](crate::key)).
    ///
    /// A request without a key fails with [`MissingKey`](crate::error::MissingKey) unless the
    /// extractor has a default ([`RequestKey::or`](crate::key::RequestKey::or)).
    pub fn new(key: E) -> Self {
        Self {
            key,
            crc: Crc32::default(),
        }
    }
}

impl<E> Hash<E> {
    /// The start of a key's walk: its crc32.
    #[inline]
    fn hash_key(&self, key: &[u8]) -> u64 {
        u64::from(self.crc.hash(key))
    }
}

impl<E: fmt::Debug> fmt::Debug for Hash<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hash").field("key", &self.key).finish()
    }
}

/// The endpoints in key-byte order, with their weighted slots. Public only to name it as the
/// strategy's table; it cannot be reached from outside the crate.
#[derive(Debug)]
pub struct HashTable {
    /// Set indices, in key-byte order.
    order: Box<[u32]>,
    /// `ends[p]`: the weights of the endpoints at positions `0..=p`; empty when every weight is 1.
    ends: Box<[u64]>,
    total: u64,
}

impl Table for HashTable {
    #[inline]
    fn position(&self, hash: u64) -> u64 {
        let slot = hash % self.total.max(1);
        if self.ends.is_empty() {
            slot
        } else {
            self.ends.partition_point(|&end| end <= slot) as u64
        }
    }

    fn span(&self, _endpoints: usize) -> usize {
        self.order.len()
    }

    #[inline]
    fn candidate<K, S>(
        &self,
        _members: &[Member<K, S>],
        _health: Option<&Health>,
        position: u64,
        step: usize,
    ) -> usize {
        self.order[wrap(position, step, self.order.len())] as usize
    }

    #[inline]
    fn first_candidate<K, S>(&self, _members: &[Member<K, S>], position: u64) -> usize {
        self.order[position as usize] as usize
    }

    fn ramps(&self) -> bool {
        false
    }
}

impl<K, E> Build<K> for Hash<E>
where
    K: EndpointKey,
    E: Send + Sync + 'static,
{
    type Table = HashTable;

    fn build<S>(&self, members: &[Member<K, S>]) -> HashTable {
        let keys = super::key_bytes(members);
        let mut order: Vec<u32> = (0..members.len() as u32).collect();
        order.sort_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]).then(a.cmp(&b)));
        let total = members.iter().map(|m| u64::from(m.weight)).sum();
        let ends = if total == members.len() as u64 {
            Box::default()
        } else {
            let mut sum = 0;
            order
                .iter()
                .map(|&i| {
                    sum += u64::from(members[i as usize].weight);
                    sum
                })
                .collect()
        };
        HashTable {
            order: order.into_boxed_slice(),
            ends,
            total,
        }
    }

    fn key_hash(&self, key: &[u8]) -> Option<u64> {
        Some(self.hash_key(key))
    }
}

super::keyed_start!(Hash);
