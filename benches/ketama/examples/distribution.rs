//! Run with
//!
//! ```not_rust
//! cargo run --release --example distribution
//! ```
//!
//! Prints how evenly consistent hashing spreads keys over endpoints, and how many keys move when
//! an endpoint joins or leaves, for tower-lb's `ConsistentHash` on each of its placements (its
//! own ring, and the rings of nginx, pingora-ketama and libketama that it reproduces) and for
//! pingora-ketama's `Continuum`, all of 160 points per unit of weight (libketama: 160 per server
//! of mean weight, give or take single-precision rounding), with tower-lb's `Hash` (crc32 modulo
//! N) for contrast.
//!
//! For N = 10, 100 and 1000 endpoints `10.0.0.1:8080`, `10.0.0.2:8080`, … of weight 1, the
//! 1,000,000 keys `key-0` … `key-999999` are mapped, and the table shows:
//!
//! - `max/mean`, `min/mean`: the most and the fewest keys an endpoint gets, over the mean `1e6 / N`;
//! - `CV`: the coefficient of variation of the endpoints' key counts (standard deviation / mean);
//! - `add`: the share of keys that move when endpoint N + 1 joins, the ideal `1 / (N + 1)` in
//!   parentheses, and whether every moved key went to the new endpoint (if not, how many did
//!   not);
//! - `remove`: the share of keys that move when one endpoint (the middle one) leaves, its own
//!   share of the keys in parentheses (the least that must move), and whether only its keys moved
//!   (if not, how many others did).
//!
//! The mappings come from the public lookups: `Balance::key_map` for tower-lb, `Continuum::node`
//! for pingora-ketama.
//!
//! At N = 1000, a few pingora-ketama keys move between two old endpoints: its points are 32-bit
//! crc32s, two pairs of endpoints here have a point at the same hash, and it keeps one point of
//! each pair after an unstable sort by hash alone, so which endpoint keeps it can change with the
//! rest of the set. The `PingoraKetama` placement reproduces that sort, and so those moves; the
//! `Nginx` placement keeps the endpoint listed first, as nginx does, which a change elsewhere in
//! the set does not alter. tower-lb's own points are 64-bit and break ties by endpoint key bytes.
//!
//! libketama's point counts come from single-precision arithmetic over the whole set (N servers
//! of weight 1 get 160 points each for most N, 156 at N = 100 and 1001): where adding or removing
//! a server changes the others' counts, keys move between servers that stayed, in twemproxy and
//! libmemcached as here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use pingora_ketama::{Bucket, Continuum};
use tower_lb::{
    key,
    strategy::{ConsistentHash, Hash, Placement},
    Balance, Endpoints,
};

/// Endpoint counts, one row each per strategy.
const SIZES: [usize; 3] = [10, 100, 1000];
/// The number of keys mapped.
const KEYS: usize = 1_000_000;

/// The address of endpoint `i`: 10.0.0.1:8080, 10.0.0.2:8080, …
fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(0x0A00_0001 + i as u32), 8080))
}

/// The number of the endpoint at `addr`, the inverse of [`addr`].
fn number(addr: SocketAddr) -> u32 {
    match addr.ip() {
        IpAddr::V4(ip) => u32::from(ip) - 0x0A00_0001,
        IpAddr::V6(_) => unreachable!("every endpoint is IPv4"),
    }
}

/// Maps every key to the number of its endpoint, over the endpoints numbered `members`.
type Mapping = fn(&[usize], &[String]) -> Vec<u32>;

/// tower-lb's `ConsistentHash` on `placement`.
fn consistent_hash(placement: Placement, members: &[usize], keys: &[String]) -> Vec<u32> {
    let set = Endpoints::from_iter(members.iter().map(|&i| (addr(i), ())));
    let strategy = ConsistentHash::new(key::path()).placement(placement);
    let balance = Balance::new(strategy, set);
    let map = balance.key_map();
    keys.iter()
        .map(|key| number(*map.endpoint_for_key(key).expect("a nonempty set")))
        .collect()
}

fn tower_lb_consistent_hash(members: &[usize], keys: &[String]) -> Vec<u32> {
    consistent_hash(Placement::Native, members, keys)
}

fn tower_lb_nginx(members: &[usize], keys: &[String]) -> Vec<u32> {
    consistent_hash(Placement::Nginx, members, keys)
}

fn tower_lb_pingora_ketama(members: &[usize], keys: &[String]) -> Vec<u32> {
    consistent_hash(Placement::PingoraKetama, members, keys)
}

fn tower_lb_libketama(members: &[usize], keys: &[String]) -> Vec<u32> {
    consistent_hash(Placement::Libketama, members, keys)
}

fn tower_lb_hash(members: &[usize], keys: &[String]) -> Vec<u32> {
    let set = Endpoints::from_iter(members.iter().map(|&i| (addr(i), ())));
    let balance = Balance::new(Hash::new(key::path()), set);
    let map = balance.key_map();
    keys.iter()
        .map(|key| number(*map.endpoint_for_key(key).expect("a nonempty set")))
        .collect()
}

fn pingora_ketama(members: &[usize], keys: &[String]) -> Vec<u32> {
    let buckets: Vec<Bucket> = members.iter().map(|&i| Bucket::new(addr(i), 1)).collect();
    let continuum = Continuum::new(&buckets);
    keys.iter()
        .map(|key| {
            number(
                continuum
                    .node(key.as_bytes())
                    .expect("a nonempty continuum"),
            )
        })
        .collect()
}

/// One row of the table.
struct Row {
    max: f64,
    min: f64,
    cv: f64,
    added_moved: f64,
    /// Moved keys that did not go to the new endpoint.
    added_stray: usize,
    removed_moved: f64,
    removed_share: f64,
    /// Moved keys that were not on the removed endpoint.
    removed_stray: usize,
}

fn measure(n: usize, mapping: Mapping, keys: &[String]) -> Row {
    let members: Vec<usize> = (0..n).collect();
    let before = mapping(&members, keys);

    let mut counts = vec![0u64; n];
    for &e in &before {
        counts[e as usize] += 1;
    }
    let mean = keys.len() as f64 / n as f64;
    let variance = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / n as f64;

    // Endpoint n joins.
    let grown: Vec<usize> = (0..=n).collect();
    let after = mapping(&grown, keys);
    let moved: Vec<usize> = (0..keys.len()).filter(|&k| before[k] != after[k]).collect();
    let added_moved = moved.len() as f64 / keys.len() as f64;
    let added_stray = moved.iter().filter(|&&k| after[k] as usize != n).count();

    // The middle endpoint leaves.
    let gone = n / 2;
    let shrunk: Vec<usize> = (0..n).filter(|&i| i != gone).collect();
    let after = mapping(&shrunk, keys);
    let moved: Vec<usize> = (0..keys.len()).filter(|&k| before[k] != after[k]).collect();
    let removed_moved = moved.len() as f64 / keys.len() as f64;
    let removed_stray = moved
        .iter()
        .filter(|&&k| before[k] as usize != gone)
        .count();

    Row {
        max: *counts.iter().max().expect("n > 0") as f64 / mean,
        min: *counts.iter().min().expect("n > 0") as f64 / mean,
        cv: variance.sqrt() / mean,
        added_moved,
        added_stray,
        removed_moved,
        removed_share: counts[gone] as f64 / keys.len() as f64,
        removed_stray,
    }
}

/// "yes" when no key strayed, else "no" and how many did.
fn none_strayed(stray: usize) -> String {
    if stray == 0 {
        "yes".to_owned()
    } else {
        format!("no ({stray})")
    }
}

fn main() {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i}")).collect();
    let strategies: [(&str, Mapping); 6] = [
        ("ConsistentHash Native", tower_lb_consistent_hash),
        ("ConsistentHash Nginx", tower_lb_nginx),
        ("ConsistentHash PingoraKetama", tower_lb_pingora_ketama),
        ("ConsistentHash Libketama", tower_lb_libketama),
        ("pingora-ketama Continuum", pingora_ketama),
        ("Hash (crc32 % N)", tower_lb_hash),
    ];

    println!(
        "{KEYS} keys \"key-0\"..\"key-{}\", endpoints of weight 1",
        KEYS - 1
    );
    println!(
        "{:<28} {:>5} {:>8} {:>8} {:>7}  {:>18} {:>12}  {:>19} {:>12}",
        "strategy",
        "N",
        "max/mean",
        "min/mean",
        "CV",
        "add: moved (1/N+1)",
        "to new",
        "remove: moved (its)",
        "only its"
    );
    for n in SIZES {
        for (name, mapping) in strategies {
            let row = measure(n, mapping, &keys);
            println!(
                "{:<28} {:>5} {:>8.3} {:>8.3} {:>7.4}  {:>8.3}% ({:>5.2}%) {:>12}  {:>9.3}% ({:>5.2}%) {:>12}",
                name,
                n,
                row.max,
                row.min,
                row.cv,
                100.0 * row.added_moved,
                100.0 / (n + 1) as f64,
                none_strayed(row.added_stray),
                100.0 * row.removed_moved,
                100.0 * row.removed_share,
                none_strayed(row.removed_stray),
            );
        }
    }
}
