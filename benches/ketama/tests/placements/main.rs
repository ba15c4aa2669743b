//! `ConsistentHash`'s compatible placements against pingora-ketama: every key on the same server,
//! for IPv4 and IPv6 socket addresses, equal and unequal weights, N = 3 to 100; ties between the
//! points of different servers resolved as pingora-ketama resolves them; host names hashed as
//! nginx hashes them; the fallback walk following the peer's ring and bounded loads on a
//! compatible ring; and a ring too large to build failing its requests rather than mapping keys
//! unlike the peer.
//!
//! pingora-ketama takes only socket addresses, so host-name servers are checked against
//! `nginx_ring` below: nginx's `ngx_http_upstream_init_chash` and `find_chash_point` written out
//! plainly (a linear build, a stable sort, a binary search), which the same tests first check
//! against pingora-ketama on every IPv4 set.

#[path = "../../../../tests/support/mod.rs"]
mod support;

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
};

use http::{header::HeaderName, Request};
use pingora_ketama::{Bucket, Continuum};
use support::{Mock, Readiness};
use tower::{Layer, ServiceExt};
use tower_lb::{
    key::{self, RequestKey},
    strategy::{ConsistentHash, Placement},
    Balance, BalanceLayer, EndpointKey, Endpoints,
};

type Req = Request<()>;

/// The server counts of the agreement tests.
const SIZES: [usize; 4] = [3, 5, 10, 100];
/// The keys each agreement test maps.
const KEYS: usize = 100_000;

/// splitmix64: deterministic pseudo-random numbers for server sets and weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Request keys of varied lengths and bytes: `key-0`, …, with every seventh a random hex string
/// and every eleventh empty-ish.
fn keys(count: usize) -> Vec<String> {
    let mut rng = Rng(0x5eed_0001);
    (0..count)
        .map(|i| match i % 11 {
            0 => format!("{i}"),
            _ if i % 7 == 0 => format!("{:x}/{:x}", rng.next(), rng.next()),
            _ => format!("key-{i}"),
        })
        .collect()
}

/// Weight of server `i`: 1, or seeded random from 1 to 5.
#[derive(Clone, Copy, Debug)]
enum Weights {
    One,
    Random(u64),
}

fn weights(n: usize, weights: Weights) -> Vec<u32> {
    match weights {
        Weights::One => vec![1; n],
        Weights::Random(seed) => {
            let mut rng = Rng(seed);
            (0..n).map(|_| 1 + rng.below(5) as u32).collect()
        }
    }
}

/// `n` distinct IPv4 socket addresses, seeded.
fn ipv4_servers(n: usize, seed: u64) -> Vec<SocketAddr> {
    let mut rng = Rng(seed);
    let mut seen = HashSet::new();
    let mut servers = Vec::new();
    while servers.len() < n {
        let ip = Ipv4Addr::from(0x0A00_0000 | (rng.next() as u32 & 0x00FF_FFFF));
        let port = 1024 + rng.below(60_000) as u16;
        let addr = SocketAddr::from((ip, port));
        if seen.insert(addr) {
            servers.push(addr);
        }
    }
    servers
}

/// `n` IPv6 loopback socket addresses `[::1]:port`, seeded ports.
fn ipv6_servers(n: usize, seed: u64) -> Vec<SocketAddr> {
    let mut rng = Rng(seed);
    let mut seen = HashSet::new();
    let mut servers = Vec::new();
    while servers.len() < n {
        let port = 1024 + rng.below(60_000) as u16;
        if seen.insert(port) {
            servers.push(format!("[::1]:{port}").parse().unwrap());
        }
    }
    servers
}

/// `n` host-name servers as nginx `server` lines write them: with a port, or (every fourth)
/// without one.
fn host_servers(n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| match i % 4 {
            3 => format!("cache-{i}.example.internal"),
            _ => format!("cache-{i}.example.internal:{}", 1024 + rng.below(60_000)),
        })
        .collect()
}

fn balance<K>(
    placement: Placement,
    servers: &[K],
    weights: &[u32],
) -> Balance<ConsistentHash<key::Path>, K, ()>
where
    K: EndpointKey + Clone + PartialEq + Send + Sync + 'static,
{
    let set = Endpoints::try_from_weighted(
        servers
            .iter()
            .zip(weights)
            .map(|(server, &weight)| (server.clone(), (), weight)),
    )
    .expect("weights of at least 1");
    Balance::new(ConsistentHash::new(key::path()).placement(placement), set)
}

/// The server tower-lb maps each key to, as an index into `servers`.
fn tower_lb_owners<K>(
    placement: Placement,
    servers: &[K],
    weights: &[u32],
    keys: &[String],
) -> Vec<usize>
where
    K: EndpointKey + Clone + PartialEq + Send + Sync + 'static,
{
    let balance = balance(placement, servers, weights);
    let map = balance.key_map();
    keys.iter()
        .map(|key| {
            let server = map.endpoint_for_key(key).expect("a nonempty set");
            servers.iter().position(|s| s == server).unwrap()
        })
        .collect()
}

/// The server pingora-ketama maps each key to, as an index into `servers`.
fn pingora_owners(servers: &[SocketAddr], weights: &[u32], keys: &[String]) -> Vec<usize> {
    let buckets: Vec<Bucket> = servers
        .iter()
        .zip(weights)
        .map(|(&addr, &weight)| Bucket::new(addr, weight))
        .collect();
    let continuum = Continuum::new(&buckets);
    keys.iter()
        .map(|key| {
            let addr = continuum
                .node(key.as_bytes())
                .expect("a nonempty continuum");
            servers.iter().position(|&s| s == addr).unwrap()
        })
        .collect()
}

/// nginx's ring for `servers` (`server` addresses as written) and `weights`, as
/// `ngx_http_upstream_init_chash` builds it: each server's host and port split at the last `:`
/// when only digits follow, 160 points per unit of weight at crc32(host, 0, port, previous point
/// little-endian), sorted by hash with a stable sort (glibc's `qsort`), one point kept per hash.
/// Returns (hash, server index) pairs.
fn nginx_ring(servers: &[&str], weights: &[u32]) -> Vec<(u32, usize)> {
    let mut points = Vec::new();
    for (index, (server, &weight)) in servers.iter().zip(weights).enumerate() {
        let (host, port) = match server.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, port),
            _ => (*server, ""),
        };
        let mut previous = 0u32;
        for _ in 0..weight * 160 {
            let mut input = Vec::new();
            input.extend_from_slice(host.as_bytes());
            input.push(0);
            input.extend_from_slice(port.as_bytes());
            input.extend_from_slice(&previous.to_le_bytes());
            previous = crc32fast::hash(&input);
            points.push((previous, index));
        }
    }
    points.sort_by_key(|&(hash, _)| hash);
    points.dedup_by_key(|&mut (hash, _)| hash);
    points
}

/// `find_chash_point`: the first point at or after the key's crc32, wrapping to the first.
fn nginx_owner(ring: &[(u32, usize)], key: &[u8]) -> usize {
    let hash = crc32fast::hash(key);
    let i = ring.partition_point(|&(h, _)| h < hash);
    ring[if i == ring.len() { 0 } else { i }].1
}

fn nginx_owners(servers: &[&str], weights: &[u32], keys: &[String]) -> Vec<usize> {
    let ring = nginx_ring(servers, weights);
    keys.iter()
        .map(|key| nginx_owner(&ring, key.as_bytes()))
        .collect()
}

/// The share of keys mapped alike, and the first key mapped differently.
fn agreement(ours: &[usize], theirs: &[usize], keys: &[String]) -> (f64, Option<String>) {
    let same = ours.iter().zip(theirs).filter(|(a, b)| a == b).count();
    let first = ours
        .iter()
        .zip(theirs)
        .zip(keys)
        .find(|((a, b), _)| a != b)
        .map(|((a, b), key)| format!("{key:?}: ours {a}, theirs {b}"));
    (same as f64 / ours.len() as f64, first)
}

fn weight_cases() -> [Weights; 2] {
    [Weights::One, Weights::Random(0x3e1)]
}

#[test]
fn nginx_and_pingora_placements_map_every_ipv4_key_as_pingora_ketama() {
    let keys = keys(KEYS);
    for n in SIZES {
        for weighting in weight_cases() {
            let servers = ipv4_servers(n, 0x1b4 + n as u64);
            let weights = weights(n, weighting);
            let theirs = pingora_owners(&servers, &weights, &keys);
            // The plain nginx ring is pingora-ketama's too, on IPv4 addresses.
            let names: Vec<String> = servers.iter().map(SocketAddr::to_string).collect();
            let text: Vec<&str> = names.iter().map(String::as_str).collect();
            let (rate, first) = agreement(&nginx_owners(&text, &weights, &keys), &theirs, &keys);
            assert_eq!(rate, 1.0, "reference, N={n} {weighting:?}: first {first:?}");
            for placement in [Placement::PingoraKetama, Placement::Nginx] {
                let ours = tower_lb_owners(placement, &servers, &weights, &keys);
                let (rate, first) = agreement(&ours, &theirs, &keys);
                println!(
                    "{placement:?} IPv4 N={n} {weighting:?}: {:.4}% of {KEYS} keys agree",
                    100.0 * rate
                );
                assert_eq!(
                    rate, 1.0,
                    "{placement:?} N={n} {weighting:?}: first {first:?}"
                );
            }
            // String keys spelling the same addresses map alike.
            let ours = tower_lb_owners(Placement::Nginx, &names, &weights, &keys);
            assert_eq!(agreement(&ours, &theirs, &keys).0, 1.0, "strings, N={n}");
        }
    }
}

#[test]
fn pingora_placement_maps_every_ipv6_key_as_pingora_ketama() {
    let keys = keys(KEYS);
    for n in SIZES {
        for weighting in weight_cases() {
            let servers = ipv6_servers(n, 0x6a6 + n as u64);
            let weights = weights(n, weighting);
            let theirs = pingora_owners(&servers, &weights, &keys);
            let ours = tower_lb_owners(Placement::PingoraKetama, &servers, &weights, &keys);
            let (rate, first) = agreement(&ours, &theirs, &keys);
            println!(
                "PingoraKetama IPv6 N={n} {weighting:?}: {:.4}% of {KEYS} keys agree",
                100.0 * rate
            );
            assert_eq!(rate, 1.0, "N={n} {weighting:?}: first {first:?}");
        }
    }
}

#[test]
fn nginx_placement_hashes_ipv6_and_host_names_as_nginx_writes_them() {
    let keys = keys(KEYS);
    for n in SIZES {
        for weighting in weight_cases() {
            let weights = weights(n, weighting);

            // nginx hashes `server [::1]:port;` with its brackets, unlike pingora-ketama, which
            // hashes the bare address.
            let servers = ipv6_servers(n, 0x6a6 + n as u64);
            let text: Vec<String> = servers.iter().map(SocketAddr::to_string).collect();
            let text: Vec<&str> = text.iter().map(String::as_str).collect();
            let theirs = nginx_owners(&text, &weights, &keys);
            let ours = tower_lb_owners(Placement::Nginx, &servers, &weights, &keys);
            let (rate, first) = agreement(&ours, &theirs, &keys);
            println!(
                "Nginx IPv6 N={n} {weighting:?}: {:.4}% of {KEYS} keys agree",
                100.0 * rate
            );
            assert_eq!(rate, 1.0, "IPv6, N={n} {weighting:?}: first {first:?}");
            let pingora = pingora_owners(&servers, &weights, &keys);
            assert!(agreement(&ours, &pingora, &keys).0 < 1.0, "brackets hashed");

            // Host names, with and without a port. (pingora-ketama takes no host names; its
            // placement splits them as nginx does, but resolves ties its own way.)
            let servers = host_servers(n, 0x4057 + n as u64);
            let text: Vec<&str> = servers.iter().map(String::as_str).collect();
            let theirs = nginx_owners(&text, &weights, &keys);
            let ours = tower_lb_owners(Placement::Nginx, &servers, &weights, &keys);
            let (rate, first) = agreement(&ours, &theirs, &keys);
            println!(
                "Nginx host names N={n} {weighting:?}: {:.4}% of {KEYS} keys agree",
                100.0 * rate
            );
            assert_eq!(
                rate, 1.0,
                "host names, N={n} {weighting:?}: first {first:?}"
            );
        }
    }
}

#[test]
fn ties_between_servers_go_where_pingora_ketama_sends_them() {
    // 1000 servers of weight 1: 160,000 crc32 points, among which a few hashes are shared by two
    // servers. Every key that lands on such a point must reach the server pingora-ketama kept.
    let servers: Vec<SocketAddr> = (0..1000u32)
        .map(|i| SocketAddr::from((Ipv4Addr::from(0x0A00_0001 + i), 8080)))
        .collect();
    let weights = vec![1; servers.len()];
    let text: Vec<String> = servers.iter().map(SocketAddr::to_string).collect();
    let text: Vec<&str> = text.iter().map(String::as_str).collect();

    // The hashes that two servers share, found by building every point.
    let mut all: Vec<(u32, usize)> = Vec::new();
    for (index, server) in text.iter().enumerate() {
        all.extend(
            nginx_ring(&[server], &[1])
                .into_iter()
                .map(|(h, _)| (h, index)),
        );
    }
    all.sort_unstable();
    let shared: Vec<u32> = all
        .windows(2)
        .filter(|w| w[0].0 == w[1].0 && w[0].1 != w[1].1)
        .map(|w| w[0].0)
        .collect();
    assert!(!shared.is_empty(), "the set has ties to test");

    // Keys that land on a shared point: enough candidates to find several per point.
    let ring = nginx_ring(&text, &weights);
    let on_tie = |key: &str| {
        let hash = crc32fast::hash(key.as_bytes());
        let i = ring.partition_point(|&(h, _)| h < hash) % ring.len();
        shared.contains(&ring[i].0)
    };
    let keys: Vec<String> = (0..3_000_000)
        .map(|i| format!("tie-{i}"))
        .filter(|key| on_tie(key))
        .collect();
    assert!(
        keys.len() >= 2 * shared.len(),
        "{} keys on {} ties",
        keys.len(),
        shared.len()
    );

    let theirs = pingora_owners(&servers, &weights, &keys);
    let ours = tower_lb_owners(Placement::PingoraKetama, &servers, &weights, &keys);
    let (rate, first) = agreement(&ours, &theirs, &keys);
    println!(
        "{} shared hashes, {} keys on them: PingoraKetama agrees on {:.2}%",
        shared.len(),
        keys.len(),
        100.0 * rate
    );
    assert_eq!(rate, 1.0, "first {first:?}");

    // The nginx placement keeps the server listed first, as nginx does on glibc.
    let ours = tower_lb_owners(Placement::Nginx, &servers, &weights, &keys);
    let first_listed = nginx_owners(&text, &weights, &keys);
    assert_eq!(ours, first_listed);
    let differ = first_listed
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .count();
    println!("nginx's first-listed rule and pingora-ketama's sort differ on {differ} of them");
    // Here pingora-ketama keeps the later server of a tie: the test tells the two rules apart.
    assert!(differ > 0);
}

// ---- the default ring's behaviour, on a compatible ring ------------------------------------------

fn user_key() -> impl RequestKey<Req> + Clone + Send + Sync + 'static {
    key::header(HeaderName::from_static("x-key"))
}

async fn route<E>(
    svc: &Balance<ConsistentHash<E>, &'static str, Mock<Req>>,
    key: &str,
) -> &'static str
where
    E: RequestKey<Req> + Clone + Send + Sync + 'static,
{
    let request = Request::builder().header("x-key", key).body(()).unwrap();
    svc.clone().oneshot(request).await.expect("a response")
}

#[tokio::test]
async fn unavailable_server_keys_go_to_pingora_ketamas_next_server() {
    const NAMES: [&str; 5] = [
        "10.0.0.1:8080",
        "10.0.0.2:8080",
        "10.0.0.3:8080",
        "10.0.0.4:8080",
        "10.0.0.5:8080",
    ];
    let servers: Vec<Mock<Req>> = NAMES.iter().map(|&name| Mock::new(name)).collect();
    let set = Endpoints::from_iter(servers.iter().map(|m| (m.name(), m.clone())));
    let strategy = ConsistentHash::new(user_key()).placement(Placement::PingoraKetama);
    let svc = BalanceLayer::new(strategy).layer(set);
    let continuum = Continuum::new(
        &NAMES
            .iter()
            .map(|name| Bucket::new(name.parse().unwrap(), 1))
            .collect::<Vec<_>>(),
    );
    let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();

    servers[2].set_readiness(Readiness::Fail);
    let down: SocketAddr = NAMES[2].parse().unwrap();
    let mut moved = 0;
    for key in &keys {
        // pingora-ketama's candidates in ring order, the first one up.
        let expected = continuum
            .node_iter(key.as_bytes())
            .find(|&&addr| addr != down)
            .unwrap()
            .to_string();
        let own = continuum.node(key.as_bytes()).unwrap();
        moved += usize::from(own == down);
        assert_eq!(route(&svc, key).await, expected, "{key}");
    }
    assert!(moved > 100, "{moved} keys had the unavailable server");

    servers[2].set_readiness(Readiness::Ready);
    for key in &keys {
        let own = continuum.node(key.as_bytes()).unwrap().to_string();
        assert_eq!(route(&svc, key).await, own, "{key}");
    }
}

#[tokio::test]
async fn compatible_ring_too_large_to_build_fails_requests_with_invalid_config() {
    // 26,215 units of weight are 4,194,400 points at nginx's 160 per unit: over the 2^22 cap,
    // which the compatible placements do not scale under, since scaled counts would map keys
    // unlike the peer.
    let server: Mock<Req> = Mock::new("10.0.0.1:8080");
    let set = Endpoints::try_from_weighted([(server.name(), server.clone(), 26_215)]).unwrap();
    let strategy = ConsistentHash::new(user_key()).placement(Placement::Nginx);
    let svc = BalanceLayer::new(strategy).layer(set.clone());
    assert_eq!(svc.endpoint_for_key("alice"), None);
    let request = Request::builder()
        .header("x-key", "alice")
        .body(())
        .unwrap();
    let error = svc.clone().oneshot(request).await.unwrap_err();
    let error = error
        .downcast_ref::<tower_lb::error::InvalidConfig>()
        .expect("an InvalidConfig");
    assert_eq!(error.option(), "ring points");
    assert_eq!(server.calls(), 0);

    // One unit less fits, and routes.
    assert!(set.set_weight(server.name(), 26_214).unwrap());
    assert_eq!(route(&svc, "alice").await, "10.0.0.1:8080");
}

#[tokio::test]
async fn bounded_load_caps_every_server_on_a_libketama_ring() {
    const NAMES: [&str; 4] = ["cache-a", "cache-b", "cache-c", "cache-d"];
    let servers: Vec<Mock<Req>> = NAMES.iter().map(|&name| Mock::new(name)).collect();
    for server in &servers {
        server.hold(true);
    }
    let set = Endpoints::from_iter(servers.iter().map(|m| (m.name(), m.clone())));
    let strategy = ConsistentHash::new(user_key())
        .placement(Placement::Libketama)
        .bounded_load(1.25)
        .unwrap();
    let svc = BalanceLayer::new(strategy).layer(set);
    let own = svc.endpoint_for_key("hot").unwrap();

    // One hot key: its own server fills up to the bound, then its ring successors take the rest.
    let mut held = Vec::new();
    for m in 1..=40usize {
        let request = Request::builder().header("x-key", "hot").body(()).unwrap();
        let mut response = tokio_test::task::spawn(svc.clone().oneshot(request));
        tokio_test::assert_pending!(response.poll());
        held.push(response);
        let cap = (1.25 * m as f64 / NAMES.len() as f64).ceil() as usize;
        for server in &servers {
            assert!(
                server.in_flight() <= cap,
                "{} over {cap} at {m}",
                server.name()
            );
        }
    }
    let own = servers.iter().find(|s| s.name() == own).unwrap();
    assert_eq!(own.in_flight(), 13, "ceil(1.25 * 40 / 4)");
    for server in &servers {
        server.release();
    }
    for mut response in held {
        assert!(tokio_test::assert_ready!(response.poll()).is_ok());
    }
}
