//! Where [`ConsistentHash`](super::ConsistentHash) puts its ring points and how it hashes request
//! keys onto the ring: tower-lb's own placement, or one that reproduces a peer's ring exactly.

use std::{borrow::Cow, io::Write as _, net::SocketAddr};

use md5::{Digest as _, Md5};

use super::ring::{Crc32, Ring, MAX_POINTS};
use crate::error::InvalidConfig;

/// nginx's and pingora-ketama's points per unit of weight, and libketama's per server of mean
/// weight.
const KETAMA_POINTS: u32 = 160;
/// The suffix that libmemcached and twemproxy leave out of a server's name: memcached's default
/// port.
const DEFAULT_MEMCACHED_PORT: &[u8] = b":11211";

/// Where [`ConsistentHash`](super::ConsistentHash) places each endpoint's ring points, and how it
/// hashes request keys onto the ring.
///
/// The default, [`Native`](Placement::Native), is tower-lb's own ring. **It is not
/// interchangeable with nginx, pingora or memcached clients**: given the same servers, it sends a
/// key to the same server as they do only by chance, about one key in N. The other placements
/// rebuild a peer's ring point for point and hash keys as the peer does, so that every key goes to
/// the server the peer picks:
///
/// | placement | maps keys exactly as | points of an endpoint | request key position |
/// |---|---|---|---|
/// | [`Native`](Placement::Native) | tower-lb only | 160 per unit of weight (configurable), 64-bit | crc32, spread over 64 bits |
/// | [`Nginx`](Placement::Nginx) | nginx's `hash $key consistent;` | 160 per unit of weight: crc32 of `host \0 port`, each point chained to the previous one | crc32 |
/// | [`PingoraKetama`](Placement::PingoraKetama) | pingora-ketama's `Continuum` | as nginx's | crc32 |
/// | [`Libketama`](Placement::Libketama) | twemproxy (`distribution: ketama`, `hash: md5`), libmemcached's weighted ketama | md5 of `name-0`, `name-1`, …, four points per digest, 160 × N × weight ÷ total weight, rounded down to a multiple of 4 | the first 4 bytes of md5 |
///
/// # Which to pick
///
/// - [`Native`](Placement::Native), the default, when tower-lb routes the key space by itself, or
///   every router of it is tower-lb. Its ring does not depend on the order in which endpoints are
///   given, breaks ties between points by endpoint key, and takes any number of points per weight.
/// - [`Nginx`](Placement::Nginx) to take over, or route beside, an nginx `upstream` that uses
///   `hash ... consistent`: a caching tier keeps its warm caches when the traffic moves.
/// - [`PingoraKetama`](Placement::PingoraKetama) to route beside a service that uses
///   pingora-ketama's `Continuum`.
/// - [`Libketama`](Placement::Libketama) to share a memcached pool with twemproxy or with clients
///   on libmemcached's weighted ketama (`MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED`, which also sets md5
///   as the key hash; PHP's `memcached` extension sets it with
///   `Memcached::OPT_LIBKETAMA_COMPATIBLE`): a key written by one is found by the other.
///
/// The compatible placements keep what the default ring has: O(1) lookups through a bucket index,
/// the walk to the next distinct endpoints past unavailable ones, bounded loads and
/// [`KeyMap`](crate::KeyMap). They ignore
/// [`points_per_weight`](super::ConsistentHash::points_per_weight): their counts are the peer's.
///
/// # Endpoint keys are the peer's server names
///
/// A compatible placement hashes each endpoint's [key bytes](crate::EndpointKey) as the peer
/// hashes the server's name, so the keys must spell the servers as the peer's configuration does,
/// and the endpoints must be in the same order when two servers' points may collide (see Ties),
/// with the same weights.
///
/// **nginx** hashes a `server` line's address as written, split at its last `:` when digits follow
/// it (`unix:` paths are hashed without the `unix:`):
///
/// | nginx `server` line | endpoint key |
/// |---|---|
/// | `server 10.0.0.1:8080;` | `SocketAddr` `10.0.0.1:8080`, or the string `"10.0.0.1:8080"` |
/// | `server [::1]:8080;` | `SocketAddr` `[::1]:8080` (whose text is `[::1]:8080`) |
/// | `server cache-a.internal:8080;` | `"cache-a.internal:8080"` |
/// | `server 10.0.0.1;` (default port 80) | `"10.0.0.1"`: not `SocketAddr` `10.0.0.1:80`, whose text has a port that nginx never hashed |
/// | `server 10.0.0.1:8080 weight=3;` | `"10.0.0.1:8080"` inserted with weight 3 |
///
/// **pingora-ketama** hashes a `SocketAddr`'s IP and port (an IPv6 address without brackets or
/// zone): with [`PingoraKetama`](Placement::PingoraKetama), a key whose text is a socket address
/// (`SocketAddr`, or strings like `"[::1]:8080"`) is hashed that way, and any other key as nginx
/// splits it. The two crc32 placements differ only there, for IPv6 addresses, and in ties.
///
/// **twemproxy** names a server `host:port`, or just `host` when the port is 11211 (as
/// libmemcached does), unless the server entry gives a name:
///
/// | twemproxy `servers:` entry | endpoint key |
/// |---|---|
/// | `- 10.0.0.1:11212:1` | `SocketAddr` `10.0.0.1:11212`, or `"10.0.0.1:11212"` |
/// | `- 10.0.0.1:11211:1` | `SocketAddr` `10.0.0.1:11211`, `"10.0.0.1:11211"` or `"10.0.0.1"`: a trailing `:11211` is left out of the name |
/// | `- cache-a.internal:11212:2` | `"cache-a.internal:11212"` inserted with weight 2 |
/// | `- 10.0.0.1:11211:1 cache-a` | `"cache-a"`, the entry's name |
///
/// libmemcached names its servers by the host name or address it was given, with `:port` unless
/// the port is 11211, as twemproxy does without names. spymemcached's `KetamaNodeLocator` computes
/// the same points, but its default names keep the port (`10.0.0.1:11211`): give such keys
/// literally only with a port other than 11211, or configure spymemcached's `LIBMEMCACHED` key
/// format.
///
/// Weights are the peer's: nginx's `weight=`, twemproxy's `:weight`. libketama gives a server
/// `160 × N × weight ÷ total weight` points rounded down to a multiple of 4, computed in single
/// precision as libmemcached and twemproxy compute it: N servers of equal weight get 160 points
/// each, but 156 for about one N in ten (N = 100 and 1001 among them), there as here. Counts that
/// depend on the whole set mean that adding a server, or changing a weight, can move keys between
/// servers that stayed, in tower-lb as in the peer. A server whose weight is below 1/40 of the
/// mean gets no points, and no keys.
///
/// # Ties
///
/// Two servers' 32-bit points can share a hash (at 1000 servers of weight 1, a few pairs do); the
/// peers keep one of them, and the keys that reach that point go to its server. The compatible
/// placements keep the same one:
///
/// - nginx (with glibc's `qsort`, a stable sort) and twemproxy and libmemcached (sort, then the
///   first point at or after the key's hash) keep the server listed first: tower-lb keeps the
///   endpoint first in the set's order.
/// - pingora-ketama keeps the point that Rust's unstable sort by hash alone leaves first;
///   [`PingoraKetama`](Placement::PingoraKetama) sorts the same points the same way, so it agrees
///   with pingora-ketama built with the same Rust release.
/// - spymemcached keeps the server listed last.
///
/// # Other differences
///
/// - When a key's endpoint is unavailable, tower-lb walks the ring to the next distinct endpoint,
///   as nginx does (after 20 points nginx falls back to round robin). twemproxy with
///   `auto_eject_hosts` instead rebuilds its ring without the ejected server, which with unequal
///   weights changes the other servers' counts.
/// - nginx sends a request whose key is empty round robin; tower-lb hashes the empty key like any
///   other (give the extractor a default with [`RequestKey::or`](crate::key::RequestKey::or)).
/// - The compatible rings are not scaled down: a set that needs more than 2<sup>22</sup> points
///   (a total weight above 26,214 with nginx's 160 per unit) fails its requests with
///   [`InvalidConfig`] rather than map keys differently from the peer.
///
/// # Examples
///
/// Route beside an nginx whose upstream reads
/// `server 10.0.0.1:8080; server 10.0.0.2:8080 weight=2; hash $arg_user consistent;`:
///
/// ```
/// use tower::{service_fn, Layer};
/// use tower_lb::{
///     key,
///     strategy::{ConsistentHash, Placement},
///     BalanceLayer, Endpoints,
/// };
///
/// let server = |name: &'static str| service_fn(move |_req: http::Request<()>| async move {
///     Ok::<_, std::convert::Infallible>(name)
/// });
/// let set = Endpoints::try_from_weighted([
///     ("10.0.0.1:8080", server("a"), 1),
///     ("10.0.0.2:8080", server("b"), 2),
/// ])
/// .unwrap();
/// let strategy = ConsistentHash::new(key::query("user")).placement(Placement::Nginx);
/// let balance = BalanceLayer::new(strategy).layer(set);
///
/// // The servers that nginx picks for `?user=alice` and `?user=carol`.
/// assert_eq!(balance.endpoint_for_key("alice"), Some("10.0.0.1:8080"));
/// assert_eq!(balance.endpoint_for_key("carol"), Some("10.0.0.2:8080"));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Placement {
    /// tower-lb's own ring: 64-bit points placed by the endpoint key bytes only, any number per
    /// unit of weight; request keys at crc32 spread over 64 bits. Not interchangeable with any
    /// other implementation.
    #[default]
    Native,
    /// nginx's `hash $key consistent;`: 160 points per unit of weight at crc32 of the server's
    /// host, a zero byte, its port and the previous point; request keys at their crc32. Ties go
    /// to the endpoint first in the set's order.
    Nginx,
    /// pingora-ketama's `Continuum`: nginx's points, with socket addresses hashed by their IP and
    /// port as pingora-ketama does (IPv6 without brackets), and ties resolved by the same
    /// unstable sort.
    PingoraKetama,
    /// libketama as libmemcached (weighted ketama) and twemproxy (`distribution: ketama`,
    /// `hash: md5`) compute it: points from the md5 of `name-i`, four per digest, in proportion
    /// to weight; request keys at the first 4 bytes of their md5, little-endian. Ties go to the
    /// endpoint first in the set's order.
    Libketama,
}

impl Placement {
    /// Builds the ring for endpoints given as (key bytes, weight), in set order.
    /// `points_per_weight` counts for [`Placement::Native`] only.
    pub(crate) fn ring(
        self,
        endpoints: &[(&[u8], u32)],
        points_per_weight: u32,
    ) -> Result<Ring, InvalidConfig> {
        match self {
            Self::Native => Ok(Ring::new(endpoints.iter().copied(), points_per_weight)),
            Self::Nginx => crc32_ring(endpoints, nginx_server, Ties::FirstEndpoint),
            Self::PingoraKetama => crc32_ring(endpoints, pingora_server, Ties::PingoraSort),
            Self::Libketama => libketama_ring(endpoints),
        }
    }

    /// The ring position of a request key. Linear in the key's length; no allocation.
    #[inline]
    pub(crate) fn key_hash(self, crc: &Crc32, key: &[u8]) -> u64 {
        match self {
            Self::Native => crc.key_hash(key),
            Self::Nginx | Self::PingoraKetama => position(crc.hash(key)),
            Self::Libketama => position(md5_prefix(key)),
        }
    }
}

/// The ring position of a peer's 32-bit point or key hash: the hash in the high half. Positions
/// then order as the hashes do, so "the first point at or after the key's position, wrapping" is
/// the peer's "first point at or after the key's hash", and the ring's bucket index, keyed by the
/// top bits, spreads them as it spreads 64-bit points.
#[inline]
fn position(hash: u32) -> u64 {
    u64::from(hash) << 32
}

/// The first 4 bytes of the md5 of `bytes`, little-endian: libketama's hash of a request key, and
/// of the first of a digest's four points. Out of line, so that the other placements' key hash
/// stays small enough to inline.
#[inline(never)]
fn md5_prefix(bytes: &[u8]) -> u32 {
    let digest = Md5::digest(bytes);
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A server's host and port, as the crc32 placements hash them.
type HostPort<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// A point before it goes on the ring: its owner (an index in set order) and its 32-bit hash.
///
/// Deliberately not `Copy`, and of the size and alignment of pingora-ketama's own point (two
/// `u32`s, compared by hash alone): the standard library's unstable sort picks its algorithm by
/// those properties, so [`Ties::PingoraSort`] runs exactly the sort that pingora-ketama runs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Point {
    owner: u32,
    hash: u32,
}

/// Which of the points that share a hash stays on the ring.
#[derive(Clone, Copy, Debug)]
enum Ties {
    /// The point of the endpoint first in set order: what a stable sort by hash followed by
    /// "keep the first of equals" (nginx) or "the first point at or after the hash" (twemproxy,
    /// libmemcached) keeps.
    FirstEndpoint,
    /// The point that an unstable sort by hash alone leaves first, as pingora-ketama's
    /// `Continuum::new` sorts and deduplicates its points.
    PingoraSort,
}

/// Sorts `points` (given in set order, each endpoint's in the order they were computed), keeps
/// one point per hash as `ties` says, and builds the ring.
fn place(mut points: Vec<Point>, ties: Ties, endpoints: usize) -> Ring {
    match ties {
        // Each endpoint's points were pushed in set order, so sorting by (hash, owner) orders
        // equal hashes as a stable sort by hash would.
        Ties::FirstEndpoint => points.sort_unstable_by_key(|p| (p.hash, p.owner)),
        Ties::PingoraSort => points.sort_unstable_by_key(|p| p.hash),
    }
    points.dedup_by_key(|p| p.hash);
    Ring::from_sorted(
        points.into_iter().map(|p| (position(p.hash), p.owner)),
        endpoints,
    )
}

/// The error of a compatible ring that would exceed the size cap: such rings are never scaled
/// down, since scaled counts would map keys differently from the peer.
fn too_many_points(requirement: &'static str, points: u64) -> InvalidConfig {
    InvalidConfig::new("ring points", requirement, points)
}

/// The ring of nginx's and pingora-ketama's placement: `weight × 160` points per endpoint, each
/// the crc32 of the server's host, a zero byte, its port and the previous point's hash
/// (little-endian; 0 before the first). `server` splits an endpoint's key bytes into host and
/// port.
fn crc32_ring(
    endpoints: &[(&[u8], u32)],
    server: fn(&[u8]) -> HostPort<'_>,
    ties: Ties,
) -> Result<Ring, InvalidConfig> {
    let mut total: u64 = 0;
    for &(_, weight) in endpoints {
        total += u64::from(weight.max(1)) * u64::from(KETAMA_POINTS);
        if total > MAX_POINTS {
            return Err(too_many_points(
                "at most 4194304 (a total weight of 26214) for the nginx and pingora-ketama placements",
                total,
            ));
        }
    }
    let mut points = Vec::with_capacity(total as usize);
    for (owner, &(key, weight)) in endpoints.iter().enumerate() {
        let (host, port) = server(key);
        let mut base = crc32fast::Hasher::new();
        base.update(&host);
        base.update(&[0]);
        base.update(&port);
        let mut previous: u32 = 0;
        // At most MAX_POINTS, checked above.
        for _ in 0..weight.max(1) * KETAMA_POINTS {
            let mut hasher = base.clone();
            hasher.update(&previous.to_le_bytes());
            previous = hasher.finalize();
            points.push(Point {
                owner: owner as u32,
                hash: previous,
            });
        }
    }
    Ok(place(points, ties, endpoints.len()))
}

/// nginx's host and port of a `server` address, as `ngx_http_upstream_init_chash` splits it: a
/// `unix:` path is all host (without the prefix); otherwise the host is what precedes the last
/// `:` if only digits follow it, else the whole address, with an empty port.
fn nginx_server(key: &[u8]) -> HostPort<'_> {
    if key.len() >= 5 && key[..5].eq_ignore_ascii_case(b"unix:") {
        return (Cow::Borrowed(&key[5..]), Cow::Borrowed(&[]));
    }
    let digits = key.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    match key.len().checked_sub(digits + 1) {
        Some(colon) if key[colon] == b':' => (
            Cow::Borrowed(&key[..colon]),
            Cow::Borrowed(&key[colon + 1..]),
        ),
        _ => (Cow::Borrowed(key), Cow::Borrowed(&[])),
    }
}

/// pingora-ketama's host and port: the IP and port of a key that is a socket address, printed
/// as `SocketAddr::ip` and `SocketAddr::port` print them (IPv6 without brackets or zone, in its
/// canonical form); any other key as nginx splits it.
fn pingora_server(key: &[u8]) -> HostPort<'_> {
    match std::str::from_utf8(key)
        .ok()
        .and_then(|s| s.parse::<SocketAddr>().ok())
    {
        Some(addr) => (
            Cow::Owned(addr.ip().to_string().into_bytes()),
            Cow::Owned(addr.port().to_string().into_bytes()),
        ),
        None => nginx_server(key),
    }
}

/// libketama's name of a server: its key bytes, without a trailing `:11211`.
fn libketama_name(key: &[u8]) -> &[u8] {
    match key.strip_suffix(DEFAULT_MEMCACHED_PORT) {
        Some(host) if !host.is_empty() => host,
        _ => key,
    }
}

/// libketama's point count of a server of `weight` among `servers` of `total_weight`:
/// `floor(weight / total × 160 / 4 × servers) × 4`, in single precision as libmemcached and
/// twemproxy compute it. (Their `+ 0.0000000001`, added in double precision and rounded back to
/// single, changes no count; it stays so that the arithmetic is theirs step for step.)
fn libketama_points(weight: u32, total_weight: u64, servers: usize) -> u64 {
    let share = weight as f32 / total_weight as f32;
    let count = share * KETAMA_POINTS as f32 / 4.0 * servers as f32;
    let count = (f64::from(count) + 0.000_000_000_1) as f32;
    count.floor() as u64 * 4
}

/// The ring of libketama's placement: for server `s` with `c` points, the md5 digests of
/// `name-0` … `name-{c/4 - 1}`, each giving four points (its bytes 0–3, 4–7, 8–11, 12–15,
/// little-endian).
fn libketama_ring(endpoints: &[(&[u8], u32)]) -> Result<Ring, InvalidConfig> {
    let total_weight: u64 = endpoints.iter().map(|&(_, w)| u64::from(w.max(1))).sum();
    let counts: Vec<u64> = endpoints
        .iter()
        .map(|&(_, w)| libketama_points(w.max(1), total_weight, endpoints.len()))
        .collect();
    let total: u64 = counts.iter().sum();
    if total > MAX_POINTS {
        return Err(too_many_points(
            "at most 4194304 for the libketama placement",
            total,
        ));
    }
    let mut points = Vec::with_capacity(total as usize);
    let mut input = Vec::new();
    for (owner, (&(key, _), &count)) in endpoints.iter().zip(&counts).enumerate() {
        let name = libketama_name(key);
        for i in 0..count / 4 {
            input.clear();
            input.extend_from_slice(name);
            write!(input, "-{i}").expect("writing to a Vec cannot fail");
            let digest = Md5::digest(&input);
            for word in digest.chunks_exact(4) {
                points.push(Point {
                    owner: owner as u32,
                    hash: u32::from_le_bytes([word[0], word[1], word[2], word[3]]),
                });
            }
        }
    }
    Ok(place(points, Ties::FirstEndpoint, endpoints.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(key: &str) -> (String, String) {
        let (host, port) = nginx_server(key.as_bytes());
        (
            String::from_utf8(host.into_owned()).unwrap(),
            String::from_utf8(port.into_owned()).unwrap(),
        )
    }

    #[test]
    fn nginx_splits_server_addresses_at_the_last_colon_before_digits() {
        let pair = |h: &str, p: &str| (h.to_owned(), p.to_owned());
        assert_eq!(split("10.0.0.1:8080"), pair("10.0.0.1", "8080"));
        assert_eq!(split("[::1]:8080"), pair("[::1]", "8080"));
        assert_eq!(split("cache-a.internal:80"), pair("cache-a.internal", "80"));
        assert_eq!(split("10.0.0.1"), pair("10.0.0.1", ""));
        assert_eq!(split("cache-a"), pair("cache-a", ""));
        assert_eq!(split("host:"), pair("host", ""));
        assert_eq!(split("8080"), pair("8080", ""));
        assert_eq!(split(":8080"), pair("", "8080"));
        assert_eq!(split("::1"), pair(":", "1"));
        assert_eq!(split("host:80a"), pair("host:80a", ""));
        assert_eq!(split("unix:/run/app.sock"), pair("/run/app.sock", ""));
        assert_eq!(split("UNIX:/run/a:1"), pair("/run/a:1", ""));
        assert_eq!(split(""), pair("", ""));
    }

    #[test]
    fn pingora_hashes_socket_addresses_by_ip_and_port() {
        let server = |key: &str| {
            let (host, port) = pingora_server(key.as_bytes());
            (host.into_owned(), port.into_owned())
        };
        assert_eq!(server("[::1]:8080"), (b"::1".to_vec(), b"8080".to_vec()));
        assert_eq!(
            server("[0:0:0:0:0:0:0:1%3]:80"),
            (b"::1".to_vec(), b"80".to_vec())
        );
        assert_eq!(
            server("10.0.0.1:80"),
            (b"10.0.0.1".to_vec(), b"80".to_vec())
        );
        assert_eq!(server("cache-a:80"), (b"cache-a".to_vec(), b"80".to_vec()));
    }

    #[test]
    fn libketama_names_leave_out_the_default_port() {
        assert_eq!(libketama_name(b"10.0.0.1:11211"), b"10.0.0.1");
        assert_eq!(libketama_name(b"10.0.0.1:11212"), b"10.0.0.1:11212");
        assert_eq!(libketama_name(b"cache-a"), b"cache-a");
        assert_eq!(libketama_name(b":11211"), b":11211");
        assert_eq!(libketama_name(b"10.0.0.1:111211"), b"10.0.0.1:111211");
    }

    #[test]
    fn libketama_point_counts_follow_single_precision() {
        // Equal weights: 160 each, except where single precision lands just below 40 slots, as
        // at N = 100 (1/100 × 160 / 4 × 100 = 39.999996): 156, there as in the peers.
        for n in [1, 2, 3, 5, 7, 10, 1000] {
            assert_eq!(libketama_points(1, n as u64, n), 160, "n {n}");
        }
        assert_eq!(libketama_points(1, 100, 100), 156);
        // Below 1/40 of the mean weight: no points.
        assert_eq!(libketama_points(1, 201, 3), 0);
        // Rounded down to a multiple of 4: 1/7 × 40 × 2 = 11.43 slots.
        assert_eq!(libketama_points(1, 7, 2), 44);
    }

    #[test]
    fn libketama_key_hash_is_the_first_word_of_md5() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(md5_prefix(b""), 0xd98c_1dd4);
        let crc = Crc32::default();
        assert_eq!(
            Placement::Libketama.key_hash(&crc, b""),
            0xd98c_1dd4_u64 << 32
        );
        assert_eq!(
            Placement::Nginx.key_hash(&crc, b"key"),
            u64::from(crc32fast::hash(b"key")) << 32
        );
    }

    #[test]
    fn ties_go_to_the_first_endpoint_or_as_pingora_sorts() {
        // Two endpoints with the same server name get the same points: the first keeps them.
        let endpoints = [(&b"10.0.0.1:80"[..], 1), (&b"10.0.0.1:80"[..], 1)];
        for placement in [Placement::Nginx, Placement::Libketama] {
            let ring = placement.ring(&endpoints, 160).unwrap();
            assert_eq!(ring.len(), 160, "{placement:?}");
            assert!((0..ring.len()).all(|p| ring.owner(p) == 0), "{placement:?}");
        }
        let ring = Placement::PingoraKetama.ring(&endpoints, 160).unwrap();
        assert_eq!(ring.len(), 160);
    }

    #[test]
    fn compatible_rings_are_not_scaled_down() {
        let heavy = [(&b"a:1"[..], 20_000), (&b"b:1"[..], 6_214)];
        assert!(Placement::Nginx.ring(&heavy, 160).is_ok());
        let heavier = [(&b"a:1"[..], 20_000), (&b"b:1"[..], 6_215)];
        let error = Placement::PingoraKetama.ring(&heavier, 160).unwrap_err();
        assert_eq!(error.option(), "ring points");
        assert!(Placement::Native.ring(&heavier, 160).is_ok());
    }
}
