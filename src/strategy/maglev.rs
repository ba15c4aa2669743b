use std::fmt;

use super::{
    internal::{wrap, Build, Table},
    ring::{fnv1a64, Crc32},
};
use crate::{ejection::Health, endpoints::Member, error::InvalidConfig, rng::fmix64, EndpointKey};

/// The lookup table size unless configured: the prime the Maglev paper uses for small clusters.
const DEFAULT_TABLE_SIZE: usize = 65_537;
/// The largest table size accepted: 64 MiB of entries.
const MAX_TABLE_SIZE: usize = 1 << 24;

/// Maglev hashing (Eisenbud et al., NSDI 2016): each request key indexes a prime-sized lookup
/// table in which every endpoint holds a near-equal share of the entries (in proportion to its
/// weight), so load is spread almost perfectly and a membership change remaps few keys.
///
/// Every endpoint fills table entries in the order of its own permutation of the table, derived
/// from two hashes of its [key bytes](EndpointKey) (an offset and a skip); endpoints take turns in
/// the order of their key bytes, each turn granted in proportion to weight. The table is therefore
/// a pure function of membership and weights: every process builds the same one, whatever the
/// insertion order. It is rebuilt off the request path when the set changes; a lookup is one hash
/// of the request key (crc32, spread over 64 bits) and one table read.
///
/// With 100 endpoints and the default 65,537 entries each endpoint holds 655 or 656 entries;
/// removing one endpoint remaps its own keys and well under 1% of the others.
///
/// # Unavailable endpoints
///
/// When a key's endpoint is not ready (pending, or its readiness fails), the request goes to the
/// owners of the table entries that follow the key's entry, skipping endpoints already tried, up
/// to [`max_tries`](crate::BalanceLayer::max_tries) endpoints: that is the key's next preference,
/// deterministic per key, so only that endpoint's keys move, spread over the others, and they come
/// back when it is ready again.
///
/// # Errors
///
/// A table smaller than the number of endpoints cannot give every endpoint an entry: while the
/// set is that large, requests fail with [`InvalidConfig`] (and
/// [`Balance::endpoint_for_key`](crate::Balance::endpoint_for_key) answers `None`).
///
/// # Examples
///
/// ```
/// use tower_lb::{key, strategy::Maglev, Balance, Endpoints};
///
/// let set = Endpoints::from_iter((1..=5).map(|i| (format!("10.0.0.{i}:80"), ())));
/// let balance = Balance::new(Maglev::new(key::query("key")).table_size(251).unwrap(), set.clone());
///
/// let owner = balance.endpoint_for_key("user:7").unwrap();
/// // Removing another endpoint does not move this key...
/// let other = set.keys().into_iter().find(|k| *k != owner).unwrap();
/// set.remove(&other);
/// assert_eq!(balance.endpoint_for_key("user:7").unwrap(), owner);
///
/// // ...and table sizes must be prime.
/// assert!(Maglev::new(key::query("key")).table_size(1000).is_err());
/// ```
#[derive(Clone)]
pub struct Maglev<E> {
    key: E,
    table_size: usize,
    crc: Crc32,
}

impl<E> Maglev<E> {
    /// Routes requests by the key that `key` extracts from them (see [`key`](crate::key)), with a
    /// table of 65,537 entries.
    ///
    /// A request without a key fails with [`MissingKey`](crate::error::MissingKey) unless the
    /// extractor has a default ([`RequestKey::or`](crate::key::RequestKey::or)).
    pub fn new(key: E) -> Self {
        Self {
            key,
            table_size: DEFAULT_TABLE_SIZE,
            crc: Crc32::default(),
        }
    }

    /// Sets the table size: a prime, ideally well over 100 times the number of endpoints (the
    /// balance is within about `N / size` of perfect). Each entry takes 4 bytes.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] unless `size` is a prime between 2 and 2<sup>24</sup>.
    pub fn table_size(mut self, size: usize) -> Result<Self, InvalidConfig> {
        if !(2..=MAX_TABLE_SIZE).contains(&size) || !is_prime(size) {
            return Err(InvalidConfig::new(
                "table size",
                "a prime between 2 and 16777216",
                size,
            ));
        }
        self.table_size = size;
        Ok(self)
    }
}

impl<E: fmt::Debug> fmt::Debug for Maglev<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("key", &self.key)
            .field("table_size", &self.table_size)
            .finish()
    }
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// The lookup table of a membership snapshot. Public only to name it as the strategy's table; it
/// cannot be reached from outside the crate.
pub struct MaglevTable {
    /// `entries[i]`: the set index of the endpoint owning entry `i`.
    entries: Box<[u32]>,
    error: Option<InvalidConfig>,
}

impl fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevTable")
            .field("entries", &self.entries.len())
            .field("error", &self.error)
            .finish()
    }
}

impl MaglevTable {
    /// Populates a table of `size` entries (a prime) for endpoints given as (key bytes, weight), in
    /// set order. Endpoints take turns in key-byte order; on each turn an endpoint earns its
    /// weight, and claims its next free preferred entry for every heaviest weight earned.
    pub(crate) fn build(endpoints: &[(&[u8], u32)], size: usize) -> Self {
        let n = endpoints.len();
        if n == 0 {
            return Self {
                entries: Box::default(),
                error: None,
            };
        }
        if n > size {
            return Self {
                entries: Box::default(),
                error: Some(InvalidConfig::new(
                    "table size",
                    "at least the number of endpoints",
                    format_args!("{size} for {n} endpoints"),
                )),
            };
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| endpoints[a].0.cmp(endpoints[b].0).then(a.cmp(&b)));
        let m = size as u64;
        // (offset, skip, next) per endpoint: its permutation is offset + j * skip mod m.
        let mut cursors: Vec<(u64, u64, u64)> = order
            .iter()
            .map(|&i| {
                let seed = fnv1a64(endpoints[i].0);
                let offset = fmix64(seed) % m;
                let skip = fmix64(seed ^ 0x9e37_79b9_7f4a_7c15) % (m - 1).max(1) + 1;
                (offset, skip, 0)
            })
            .collect();
        let heaviest = u64::from(endpoints.iter().map(|e| e.1).max().unwrap_or(1).max(1));
        let mut earned = vec![0u64; n];
        let mut entries = vec![u32::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for (turn, &index) in order.iter().enumerate() {
                earned[turn] += u64::from(endpoints[index].1.max(1));
                while earned[turn] >= heaviest {
                    earned[turn] -= heaviest;
                    let (offset, skip, next) = &mut cursors[turn];
                    let slot = loop {
                        let slot = ((*offset + *next * *skip) % m) as usize;
                        *next += 1;
                        if entries[slot] == u32::MAX {
                            break slot;
                        }
                    };
                    entries[slot] = index as u32;
                    filled += 1;
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Self {
            entries: entries.into_boxed_slice(),
            error: None,
        }
    }
}

impl Table for MaglevTable {
    #[inline]
    fn position(&self, hash: u64) -> u64 {
        hash % self.entries.len().max(1) as u64
    }

    fn span(&self, _endpoints: usize) -> usize {
        self.entries.len()
    }

    #[inline]
    fn candidate<K, S>(
        &self,
        _members: &[Member<K, S>],
        _health: Option<&Health>,
        position: u64,
        step: usize,
    ) -> usize {
        self.entries[wrap(position, step, self.entries.len())] as usize
    }

    #[inline]
    fn first_candidate<K, S>(&self, _members: &[Member<K, S>], position: u64) -> usize {
        self.entries[position as usize] as usize
    }

    fn ramps(&self) -> bool {
        false
    }

    fn error(&self) -> Option<&InvalidConfig> {
        self.error.as_ref()
    }
}

impl<E> Maglev<E> {
    /// The start of a key's walk: its crc32, spread over 64 bits.
    #[inline]
    fn hash_key(&self, key: &[u8]) -> u64 {
        self.crc.key_hash(key)
    }
}

impl<K, E> Build<K> for Maglev<E>
where
    K: EndpointKey,
    E: Send + Sync + 'static,
{
    type Table = MaglevTable;

    fn build<S>(&self, members: &[Member<K, S>]) -> MaglevTable {
        let keys = super::key_bytes(members);
        let endpoints: Vec<(&[u8], u32)> = keys
            .iter()
            .zip(members)
            .map(|(key, m)| (key.as_ref(), m.weight))
            .collect();
        MaglevTable::build(&endpoints, self.table_size)
    }

    fn key_hash(&self, key: &[u8]) -> Option<u64> {
        Some(self.hash_key(key))
    }
}

super::keyed_start!(Maglev);

#[cfg(test)]
mod tests {
    use super::*;

    fn table(names: &[String], weights: impl Fn(usize) -> u32, size: usize) -> MaglevTable {
        let endpoints: Vec<(&[u8], u32)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_bytes(), weights(i)))
            .collect();
        MaglevTable::build(&endpoints, size)
    }

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
            .collect()
    }

    #[test]
    fn every_endpoint_holds_a_near_equal_share_of_entries() {
        let t = table(&names(100), |_| 1, DEFAULT_TABLE_SIZE);
        let mut counts = vec![0usize; 100];
        for &e in t.entries.iter() {
            counts[e as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), DEFAULT_TABLE_SIZE);
        assert!(counts.iter().all(|&c| c == 655 || c == 656), "{counts:?}");
    }

    #[test]
    fn primes_are_told_apart() {
        let primes: Vec<usize> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_535));
    }

    #[test]
    fn too_small_a_table_is_an_error_not_a_panic() {
        let t = table(&names(10), |_| 1, 7);
        assert!(t.error().is_some());
        assert_eq!(t.span(10), 0);
        let t = table(&names(7), |_| 1, 7);
        assert!(t.error().is_none());
        let mut owners: Vec<u32> = t.entries.to_vec();
        owners.sort_unstable();
        assert_eq!(owners, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn huge_weight_ratios_build_without_blowing_up() {
        let t = table(&names(3), |i| if i == 0 { u32::MAX } else { 1 }, 251);
        assert!(t.error().is_none());
        assert!(t.entries.iter().all(|&e| e < 3));
    }
}
