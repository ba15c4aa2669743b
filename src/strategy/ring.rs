//! The ketama ring behind `ConsistentHash`.
//!
//! Every endpoint owns `weight × points_per_weight` points on a 64-bit circle, at hashes that
//! depend only on the endpoint's key bytes and the point's number. A request key hashes to a
//! position on the circle and belongs to the first point at or after it, wrapping around past the
//! last point. Since an endpoint's points never depend on the other endpoints, adding an endpoint
//! moves only the keys its new points take over, and removing one moves only its own keys.
//!
//! Looking a key up is O(1) expected: a bucket index maps the top bits of a hash to the first
//! point of that bucket, and the lookup scans forward from there (about one point on average).

use std::fmt;

use crate::rng::fmix64;

/// The most points a ring holds before every endpoint's count is scaled down: 48 MiB at 12 bytes
/// a point (hash and owner), plus a 4 MiB bucket index.
pub(crate) const MAX_POINTS: u64 = 1 << 22;
/// The fewest bits of hash the bucket index is keyed by.
const MIN_BUCKET_BITS: u32 = 4;
/// The most bits of hash the bucket index is keyed by.
const MAX_BUCKET_BITS: u32 = 20;
/// 2⁶⁴ / φ, the step between an endpoint's successive point seeds.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// A ketama-style consistent hash ring over a set of endpoints.
///
/// Built once per membership snapshot (off the request path) with [`Ring::new`]; looked up on the
/// request path with [`Ring::position`] and [`Ring::owner`], which neither lock nor allocate.
///
/// The ring is a pure function of the endpoints' key bytes and weights and of `points_per_weight`:
/// the order in which endpoints are given changes only the owner indices, never which endpoint
/// owns which point, so two processes with the same membership route every key the same way.
///
/// # Size cap
///
/// An endpoint of weight `w` owns `w × points_per_weight` points, unless the ring would then hold
/// more than 2<sup>22</sup> points (about 52 MiB). Beyond that, every endpoint's count is scaled
/// down by the same factor (rounded down, at least one point each), so the shares stay
/// proportional to the weights, but the counts now depend on the total weight of the set: a
/// membership change then moves points of the other endpoints too, and key stability under
/// membership changes is no longer minimal.
pub(crate) struct Ring {
    /// The point hashes, ascending.
    hashes: Box<[u64]>,
    /// `owners[p]` is the endpoint index owning point `p`.
    owners: Box<[u32]>,
    /// `buckets[j]` is the index of the first point whose hash is at least `j << shift`
    /// (`hashes.len()` if there is none).
    buckets: Box<[u32]>,
    /// 64 minus the number of bits the bucket index is keyed by.
    shift: u32,
    /// The number of endpoints. Each owns at least one point on the default placement; a
    /// compatible placement may leave an endpoint without points, as its peer does.
    endpoints: usize,
}

impl Ring {
    /// Builds the ring for endpoints given as (key bytes, weight), in set order; owners are
    /// indices into that order.
    ///
    /// Weights should be at least 1 and `points_per_weight` at least 1 (the caller picks the
    /// default, 160); zeros are treated as 1. Endpoints with the same key bytes get the same
    /// points, which then go to the endpoint given first. Costs O(p log p) for p points.
    ///
    /// # Panics
    ///
    /// Panics only with more than `u32::MAX` endpoints.
    pub(crate) fn new<'a, I>(endpoints: I, points_per_weight: u32) -> Ring
    where
        I: IntoIterator<Item = (&'a [u8], u32)>,
    {
        let endpoints: Vec<(&[u8], u32)> = endpoints.into_iter().collect();
        assert!(
            u32::try_from(endpoints.len()).is_ok(),
            "a ring holds at most u32::MAX endpoints"
        );
        let counts = point_counts(endpoints.iter().map(|&(_, w)| w), points_per_weight);
        let total: u64 = counts.iter().sum();
        let capacity = usize::try_from(total).expect("the point count is capped");

        // (hash, point number, owner)
        let mut points: Vec<(u64, u32, u32)> = Vec::with_capacity(capacity);
        for (owner, (&(key, _), &count)) in endpoints.iter().zip(&counts).enumerate() {
            let seed = fnv1a64(key);
            points.extend((0..count as u32).map(|i| (point_hash(seed, i), i, owner as u32)));
        }
        // By hash, then owner key bytes, then point number (then owner index, for endpoints with
        // the same key bytes), so that the order of the endpoints does not matter. Equal hashes
        // are rare: sort by the tuple, then sort the runs of equal hashes again.
        points.sort_unstable();
        let mut start = 0;
        while start < points.len() {
            let hash = points[start].0;
            let mut end = start + 1;
            while end < points.len() && points[end].0 == hash {
                end += 1;
            }
            if end - start > 1 {
                points[start..end].sort_unstable_by(|a, b| {
                    endpoints[a.2 as usize]
                        .0
                        .cmp(endpoints[b.2 as usize].0)
                        .then_with(|| (a.1, a.2).cmp(&(b.1, b.2)))
                });
            }
            start = end;
        }

        Ring::from_sorted(points.iter().map(|p| (p.0, p.2)), endpoints.len())
    }

    /// Builds the ring of points given in ring order, as (position, owner): positions ascending,
    /// owners indices below `endpoints`. Points of equal positions keep the order given, so that
    /// a lookup landing on them finds the first. For placements that compute their own points.
    ///
    /// # Panics
    ///
    /// Panics only with more than `u32::MAX` points.
    pub(crate) fn from_sorted<I>(points: I, endpoints: usize) -> Ring
    where
        I: IntoIterator<Item = (u64, u32)>,
    {
        let (hashes, owners): (Vec<u64>, Vec<u32>) = points.into_iter().unzip();
        assert!(
            u32::try_from(hashes.len()).is_ok(),
            "a ring holds at most u32::MAX points"
        );
        debug_assert!(hashes.windows(2).all(|w| w[0] <= w[1]));
        debug_assert!(owners.iter().all(|&o| (o as usize) < endpoints));
        let hashes = hashes.into_boxed_slice();
        let (buckets, shift) = bucket_index(&hashes);
        Ring {
            hashes,
            owners: owners.into_boxed_slice(),
            buckets,
            shift,
            endpoints,
        }
    }

    /// The number of points; 0 for an empty ring.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The index of the first point whose hash is at least `hash`, wrapping to 0 past the last
    /// point.
    ///
    /// O(1) expected: starts at the first point of `hash`'s bucket and scans forward. Must not be
    /// called on an empty ring (the result would be 0, which is no point).
    #[inline]
    pub(crate) fn position(&self, hash: u64) -> usize {
        let mut i = self.buckets[(hash >> self.shift) as usize] as usize;
        while let Some(&h) = self.hashes.get(i) {
            if h >= hash {
                return i;
            }
            i += 1;
        }
        0
    }

    /// The index of the endpoint owning point `position` (below [`len`](Ring::len)).
    #[inline]
    pub(crate) fn owner(&self, position: usize) -> usize {
        self.owners[position] as usize
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("points", &self.hashes.len())
            .field("endpoints", &self.endpoints)
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

/// crc32 (IEEE) whose implementation for this CPU is chosen once, when the strategy is made:
/// choosing it for every key, as `crc32fast::hash` does, costs almost a nanosecond, a sixth of
/// hashing a short key.
#[derive(Clone, Default)]
pub(crate) struct Crc32(crc32fast::Hasher);

impl Crc32 {
    /// The crc32 of `bytes`.
    #[inline]
    pub(crate) fn hash(&self, bytes: &[u8]) -> u32 {
        let mut hasher = self.0.clone();
        hasher.update(bytes);
        hasher.finalize()
    }

    /// The 64-bit ring position of a request key: its crc32, spread over 64 bits by murmur3's
    /// 64-bit finalizer. Linear in the key's length.
    #[inline]
    pub(crate) fn key_hash(&self, key: &[u8]) -> u64 {
        fmix64(u64::from(self.hash(key)))
    }
}

/// The number of points of each endpoint: `weight × points_per_weight` (zeros counted as 1),
/// scaled down by a common factor, to at least one each, when the total exceeds [`MAX_POINTS`].
fn point_counts(weights: impl Iterator<Item = u32>, points_per_weight: u32) -> Vec<u64> {
    let per_weight = u64::from(points_per_weight.max(1));
    let mut counts: Vec<u64> = weights.map(|w| u64::from(w.max(1)) * per_weight).collect();
    let total: u128 = counts.iter().map(|&c| u128::from(c)).sum();
    if total > u128::from(MAX_POINTS) {
        for count in &mut counts {
            // < MAX_POINTS, since count <= total
            let scaled = u128::from(*count) * u128::from(MAX_POINTS) / total;
            *count = (scaled as u64).max(1);
        }
    }
    counts
}

/// The bucket index over ascending `hashes` and its shift: 2<sup>b</sup> buckets, about one per
/// point (b from 4 to 20), entry `j` being the first point whose hash is at least `j << (64 - b)`.
fn bucket_index(hashes: &[u64]) -> (Box<[u32]>, u32) {
    let bits = hashes
        .len()
        .next_power_of_two()
        .trailing_zeros()
        .clamp(MIN_BUCKET_BITS, MAX_BUCKET_BITS);
    let shift = 64 - bits;
    let mut i = 0;
    let buckets = (0..1u64 << bits)
        .map(|j| {
            let start = j << shift;
            while i < hashes.len() && hashes[i] < start {
                i += 1;
            }
            i as u32
        })
        .collect();
    (buckets, shift)
}

/// The hash of point `index` of the endpoint whose key bytes hash to `seed`.
#[inline]
fn point_hash(seed: u64, index: u32) -> u64 {
    fmix64(seed.wrapping_add((u64::from(index) + 1).wrapping_mul(GOLDEN)))
}

/// FNV-1a, 64 bits.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys probed by the distribution tests: fewer in debug builds, which are slow.
    #[cfg(debug_assertions)]
    const KEYS: usize = 200_000;
    #[cfg(not(debug_assertions))]
    const KEYS: usize = 1_000_000;

    fn key_hashes() -> Vec<u64> {
        let crc = Crc32::default();
        (0..KEYS)
            .map(|i| crc.key_hash(format!("key-{i}").as_bytes()))
            .collect()
    }

    fn addresses(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn ring(keys: &[String], weights: impl Fn(usize) -> u32) -> Ring {
        Ring::new(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.as_bytes(), weights(i))),
            160,
        )
    }

    /// The key bytes of the endpoint owning each probed key.
    fn owners<'a>(ring: &Ring, keys: &'a [String], hashes: &[u64]) -> Vec<&'a str> {
        hashes
            .iter()
            .map(|&h| keys[ring.owner(ring.position(h))].as_str())
            .collect()
    }

    fn loads(ring: &Ring, n: usize, hashes: &[u64]) -> Vec<usize> {
        let mut loads = vec![0; n];
        for &h in hashes {
            loads[ring.owner(ring.position(h))] += 1;
        }
        loads
    }

    /// splitmix64, for deterministic pseudo-random numbers.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(GOLDEN);
            fmix64(self.0)
        }
    }

    #[test]
    fn balance_with_100_endpoints() {
        let keys = addresses(100);
        let ring = ring(&keys, |_| 1);
        assert_eq!(ring.len(), 16_000);
        let loads = loads(&ring, 100, &key_hashes());
        let mean = KEYS as f64 / 100.0;
        let max = *loads.iter().max().unwrap() as f64;
        let min = *loads.iter().min().unwrap() as f64;
        let variance = loads
            .iter()
            .map(|&l| (l as f64 - mean).powi(2))
            .sum::<f64>()
            / 100.0;
        let cv = variance.sqrt() / mean;
        println!(
            "N=100, {KEYS} keys: max/mean {:.4}, min/mean {:.4}, cv {cv:.4}",
            max / mean,
            min / mean
        );
        assert!(max / mean <= 1.30, "max/mean {}", max / mean);
    }

    #[test]
    fn adding_an_endpoint_moves_keys_only_to_it() {
        let keys = addresses(101);
        let hashes = key_hashes();
        let before = owners(&ring(&keys[..100], |_| 1), &keys, &hashes);
        let after = owners(&ring(&keys, |_| 1), &keys, &hashes);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, keys[100]);
                moved += 1;
            }
        }
        let share = moved as f64 / KEYS as f64;
        println!(
            "add the 101st: moved {share:.5} of keys, {:.4} x 1/101",
            share * 101.0
        );
        assert!(share <= 1.2 / 101.0, "moved {share}");
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let keys = addresses(100);
        let hashes = key_hashes();
        let before = owners(&ring(&keys, |_| 1), &keys, &hashes);
        let mut fewer = keys.clone();
        let removed = fewer.remove(37);
        let after = owners(&ring(&fewer, |_| 1), &fewer, &hashes);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*b, removed);
                moved += 1;
            } else {
                assert_ne!(*b, removed);
            }
        }
        println!(
            "remove one of 100: moved {:.5} of keys, all its own",
            moved as f64 / KEYS as f64
        );
    }

    #[test]
    fn same_ring_whatever_the_insertion_order() {
        let keys: Vec<String> = (0..100).map(|i| format!("server{i}")).collect();
        let weight = |key: &str| 1 + key.len() as u32 % 3;
        let mut shuffled = keys.clone();
        let mut rng = Rng(7);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.next() as usize % (i + 1));
        }
        assert_ne!(keys, shuffled);
        let a = ring(&keys, |i| weight(&keys[i]));
        let b = ring(&shuffled, |i| weight(&shuffled[i]));
        assert_eq!(a.hashes, b.hashes);
        let hashes = key_hashes();
        assert_eq!(owners(&a, &keys, &hashes), owners(&b, &shuffled, &hashes));
        for p in 0..a.len() {
            assert_eq!(keys[a.owner(p)], shuffled[b.owner(p)]);
        }
    }

    #[test]
    fn weight_two_takes_twice_the_mean() {
        let keys: Vec<String> = (0..100).map(|i| format!("server{i}")).collect();
        let ring = ring(&keys, |i| if i == 42 { 2 } else { 1 });
        let loads = loads(&ring, 100, &key_hashes());
        let mean = KEYS as f64 / 101.0; // per unit of weight
        let ratio = loads[42] as f64 / mean;
        println!("weight 2 among 99 of weight 1: {ratio:.4} x the mean per unit of weight");
        assert!((ratio - 2.0).abs() <= 0.3, "ratio {ratio}");
    }

    #[test]
    fn position_agrees_with_binary_search() {
        let naive = |ring: &Ring, hash: u64| {
            let p = ring.hashes.partition_point(|&h| h < hash);
            if p == ring.len() {
                0
            } else {
                p
            }
        };
        let mut rng = Rng(1);
        for n in [1, 2, 3, 10, 100, 1000] {
            let keys = addresses(n);
            let ring = ring(&keys, |i| 1 + i as u32 % 4);
            let (first, last) = (ring.hashes[0], ring.hashes[ring.len() - 1]);
            let mut probes = vec![0, 1, u64::MAX, first, last, last.wrapping_add(1)];
            probes.extend([first.wrapping_sub(1), last.wrapping_sub(1)]);
            probes.extend(
                ring.hashes
                    .iter()
                    .step_by(7)
                    .flat_map(|&h| [h.wrapping_sub(1), h, h.wrapping_add(1)]),
            );
            probes.extend((0..20_000).map(|_| rng.next()));
            probes.extend((0..1000).map(|_| last.saturating_add(rng.next() % 1000)));
            probes.extend((0..1000).map(|_| first.saturating_sub(rng.next() % 1000)));
            for hash in probes {
                assert_eq!(
                    ring.position(hash),
                    naive(&ring, hash),
                    "n {n} hash {hash:#x}"
                );
            }
        }
    }

    #[test]
    fn empty_and_single_endpoint_rings() {
        let empty = Ring::new(std::iter::empty(), 160);
        assert_eq!(empty.len(), 0);

        let single = Ring::new([(&b"only"[..], 3)], 160);
        assert_eq!(single.len(), 480);
        let mut rng = Rng(3);
        for _ in 0..1000 {
            let p = single.position(rng.next());
            assert!(p < single.len());
            assert_eq!(single.owner(p), 0);
        }
    }

    #[test]
    fn endpoints_with_the_same_key_go_to_the_first() {
        let ring = Ring::new([(&b"b"[..], 1), (&b"a"[..], 2), (&b"a"[..], 1)], 160);
        assert_eq!(ring.len(), 640);
        let owned = |o| ring.owners.iter().filter(|&&x| x == o).count();
        assert_eq!((owned(0), owned(1), owned(2)), (160, 320, 160));
        let mut rng = Rng(9);
        for _ in 0..10_000 {
            let owner = ring.owner(ring.position(rng.next()));
            assert!(owner < 2, "owner {owner}");
        }
        let reversed = Ring::new([(&b"a"[..], 1), (&b"a"[..], 2), (&b"b"[..], 1)], 160);
        assert_eq!(ring.hashes, reversed.hashes);
    }

    #[test]
    fn huge_weights_are_capped_without_overflow() {
        let counts = point_counts([u32::MAX, u32::MAX, 1, 0].into_iter(), u32::MAX);
        assert!(counts.iter().sum::<u64>() <= MAX_POINTS + 4);
        assert_eq!(counts[0], counts[1]);
        assert!(counts[0] >= MAX_POINTS / 2 - 1);
        assert_eq!(counts[2..], [1, 1]);

        let counts = point_counts([3, 1].into_iter(), 1 << 21);
        assert_eq!(counts, [3 << 20, 1 << 20]);
        assert_eq!(point_counts([5, 2].into_iter(), 0), [5, 2]);

        let ring = Ring::new([(&b"a"[..], 3), (&b"b"[..], 1)], u32::MAX);
        assert!(ring.len() as u64 <= MAX_POINTS + 2);
        assert_eq!(ring.buckets.len(), 1 << MAX_BUCKET_BITS);
        let share = ring.owners.iter().filter(|&&o| o == 0).count() as f64 / ring.len() as f64;
        assert!((share - 0.75).abs() < 1e-6);
        let mut rng = Rng(5);
        for _ in 0..1000 {
            let hash = rng.next();
            let p = ring.position(hash);
            assert_eq!(p, ring.hashes.partition_point(|&h| h < hash) % ring.len());
        }
    }

    #[test]
    fn key_hash_is_crc32_mixed() {
        let crc = Crc32::default();
        assert_eq!(crc.key_hash(b""), 0);
        assert_eq!(
            crc.key_hash(b"key-1"),
            fmix64(u64::from(crc32fast::hash(b"key-1")))
        );
        assert_ne!(crc.key_hash(b"key-1"), crc.key_hash(b"key-2"));
        // The hasher is cloned, not changed: the same key twice, and a long key (the vector path
        // of the CPU's implementation), hash as crc32fast does.
        assert_eq!(crc.hash(b"key-1"), crc.hash(b"key-1"));
        let long = [7u8; 300];
        assert_eq!(crc.hash(&long), crc32fast::hash(&long));
        assert_eq!(point_hash(fnv1a64(b"x"), 0), point_hash(fnv1a64(b"x"), 0));
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
