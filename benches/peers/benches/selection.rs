//! Backend selection of tower-lb side by side with pingora-load-balancing's `LoadBalancer`, in one
//! run, for N = 3, 100 and 1000 backends.
//!
//! # Running
//!
//! ```text
//! cargo bench --manifest-path benches/peers/Cargo.toml
//! ```
//!
//! or `scripts/bench-peers.sh`, which first installs what the build needs. This package is kept
//! out of the main package (it has a `[workspace]` of its own), so that the main package's tests
//! and benches never build pingora. Building pingora-load-balancing 0.9 needs, besides a Rust
//! toolchain:
//!
//! - **cmake**: its `pingora-core` enables `flate2`'s `zlib-ng` backend, whose `libz-ng-sys` builds
//!   zlib-ng with cmake (on Debian: `apt-get install cmake`);
//! - **a C compiler** (gcc, through the `cc` crate): `zstd-sys` compiles zstd's C sources.
//!
//! No TLS library is needed: pingora-load-balancing's default features are empty, and it is used
//! here with `default-features = false`.
//!
//! Criterion options follow `--`, e.g. a quicker run, or one group only:
//!
//! ```text
//! cargo bench --manifest-path benches/peers/Cargo.toml -- --warm-up-time 1 --measurement-time 2
//! cargo bench --manifest-path benches/peers/Cargo.toml -- 'N=1000'
//! ```
//!
//! # What is measured
//!
//! One criterion group per backend count N, `selection/N=…`. The backends are `127.0.0.1:20000`,
//! `127.0.0.1:20001`, … on both sides: `127.0.0.1:port` strings given to pingora's
//! `LoadBalancer::try_from_iter` (a static discovery, no health check, so every backend is
//! healthy), and `SocketAddr` endpoint keys in a `tower_lb::Endpoints` set, all of weight 1.
//! Nothing connects to them: selection is in memory and no network traffic is made.
//!
//! One selection per iteration:
//!
//! - `pingora_round_robin`: `LoadBalancer<selection::RoundRobin>::select(b"", 256)`;
//! - `tower_lb_round_robin`: `poll_ready` + `call` + the response future polled to completion
//!   through a `tower_lb::Balance` with `RoundRobin`, over always-ready endpoints that answer at
//!   once without allocating (`benches/support`, shared with the main package's benches),
//!   polled by hand with a no-op waker;
//! - `pingora_random`: `LoadBalancer<selection::Random>::select(b"", 256)` (it draws from
//!   `rand::thread_rng`);
//! - `tower_lb_random`: the same request as `tower_lb_round_robin`, with `Random::new()` (its
//!   per-thread generator);
//! - `pingora_consistent`: `LoadBalancer<selection::Consistent>::select(key, 256)`, pingora's
//!   ketama ring (160 points per unit of weight);
//! - `tower_lb_consistent_hash`: `KeyMap::endpoint_for_key(key)` of a `Balance` with
//!   `ConsistentHash` (160 points per unit of weight), the `KeyMap` taken once outside the timed
//!   loop, as the workspace's `benches/ketama/benches/keyed.rs` measures it against
//!   `pingora-ketama`;
//! - `pingora_fnv_hash`: `LoadBalancer<selection::FNVHash>::select(key, 256)`, FNV-1a of the key
//!   modulo N;
//! - `tower_lb_hash`: `KeyMap::endpoint_for_key(key)` with `strategy::Hash`, crc32 of the key
//!   modulo N.
//!
//! The keys are 1024 precomputed strings `user-0` … `user-1023`, cycled by an index and passed
//! through `black_box`; the keyless selections get the empty key, which they ignore.
//!
//! # What each side does per iteration
//!
//! The two sides do not do the same work, and the figures should be read with that in mind:
//!
//! - pingora's `select` loads the current selector (`ArcSwap`), makes an iterator of candidates
//!   (an `Arc` clone of the selector), wraps it in a `UniqueIterator` (a `HashSet` of the
//!   candidates seen, which allocates on its first insert), hashes the candidate `Backend`
//!   (`DefaultHasher`, SipHash) both for that set and to look its readiness up in a `HashMap`, and
//!   returns a clone of the `Backend` (a socket address, a weight, an empty `http::Extensions`).
//!   The keyed selections hash the key first (FNV-1a, or ketama's CRC32 and a binary search of the
//!   ring, then a `HashMap` lookup from the ring's address to its `Backend`). It does not call the
//!   backend: a pingora proxy connects to the returned address afterwards.
//! - tower-lb's keyless entries route a whole request: `poll_ready` loads the membership snapshot,
//!   picks (an atomic cursor, or a random draw) and drives the chosen endpoint's `poll_ready`;
//!   `call` calls it, with the in-flight accounting; the response future is polled to completion.
//!   That is more than a pick: the pick alone costs less than these tower-lb times.
//! - tower-lb's keyed entries are the pick alone, as the workspace's
//!   `benches/ketama/benches/keyed.rs` measures it: hash the key and look the endpoint up in a snapshot taken before the loop,
//!   returning a reference to its key (`Option<&SocketAddr>`). They do not check health
//!   (pingora's do, with a `HashMap` lookup) nor clone anything.
//!
//! # Ratios
//!
//! After the groups, the run prints a table, a row per N and pair: the tower-lb and pingora times,
//! as criterion reports them (its slope estimate, or its mean where there is no slope), and the
//! ratio tower-lb / pingora. Only benchmarks measured by this run are shown: the table reads the
//! `estimates.json` files criterion wrote during the run, in its output directory
//! (`CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else `target/criterion` in this package).
//!
//! Absolute times vary with the machine and its load; only ratios measured in the same run are
//! meaningful, and on a busy machine they too vary from run to run, so compare more than one run.
//!
//! # Sanity checks
//!
//! Before measuring each N, the run checks that both round robins visit every backend once per
//! period (pingora's in order of its sorted set, tower-lb's in insertion order), that the random
//! selections return backends of the set, that both keyed selections return backends of the set
//! and reach most of it, that tower-lb's `Hash` maps a key to `crc32(key) % N` over the endpoints
//! sorted by key bytes, and that every pingora selection returns a backend (all are healthy).

#[path = "../../support/mod.rs"]
mod support;

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    hint::black_box,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use criterion::{measurement::WallTime, BenchmarkGroup, Criterion};
use pingora_load_balancing::{
    selection::{BackendIter, BackendSelection, Consistent, FNVHash, Random, RoundRobin},
    Backend, LoadBalancer,
};
use support::{request, Endpoint};
use tower_layer::Layer;
use tower_lb::{
    key::{self, Path},
    strategy::{self, ConsistentHash, Hash, Strategy},
    Balance, BalanceLayer, EndpointKey, Endpoints,
};

/// Backend counts, one criterion group each.
const SIZES: [usize; 3] = [3, 100, 1000];
/// The port of the first backend.
const FIRST_PORT: u16 = 20_000;
/// How many distinct request keys the keyed selections cycle through; a power of two.
const KEYS: usize = 1024;
/// pingora's bound on the candidates a selection looks at, as in its documentation's examples.
const MAX_ITERATIONS: usize = 256;

type Wall<'a> = BenchmarkGroup<'a, WallTime>;

/// The pairs compared: a label, tower-lb's benchmark, pingora's.
const PAIRS: [(&str, &str, &str); 4] = [
    ("round robin", "tower_lb_round_robin", "pingora_round_robin"),
    ("random", "tower_lb_random", "pingora_random"),
    (
        "consistent hash",
        "tower_lb_consistent_hash",
        "pingora_consistent",
    ),
    ("hash mod N", "tower_lb_hash", "pingora_fnv_hash"),
];

/// The benchmarks that ran in this process, by group and name: the ratio table shows only these.
static RAN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The address of backend `i`: 127.0.0.1:20000, 127.0.0.1:20001, …
fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, FIRST_PORT + i as u16))
}

/// The set of `n` endpoints, keyed by their addresses.
fn set(n: usize) -> Endpoints<SocketAddr, Endpoint> {
    Endpoints::from_iter((0..n).map(|i| (addr(i), Endpoint { id: i as u64 })))
}

fn balance<St: Strategy<SocketAddr> + Clone>(
    strategy: St,
    n: usize,
) -> Balance<St, SocketAddr, Endpoint> {
    BalanceLayer::new(strategy).layer(set(n))
}

/// A pingora load balancer over `n` static backends, all healthy.
fn pingora<S>(n: usize) -> LoadBalancer<S>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    LoadBalancer::try_from_iter((0..n).map(|i| addr(i).to_string()))
        .expect("loopback addresses parse")
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("user-{i}")).collect()
}

/// The address of a selected pingora backend.
fn backend_addr(backend: &Backend) -> SocketAddr {
    *backend.as_inet().expect("an inet backend")
}

/// Times `select` on the keys in turn, one per iteration, and records that `name` ran.
fn bench_keyed<R>(
    group: &mut Wall<'_>,
    n: usize,
    name: &str,
    keys: &[String],
    select: impl Fn(&[u8]) -> R,
) {
    group.bench_function(name, |b| {
        ran(n, name);
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (KEYS - 1);
            black_box(select(black_box(keys[i].as_bytes())))
        })
    });
}

/// Times `select`, one per iteration, and records that `name` ran.
fn bench_keyless<R>(group: &mut Wall<'_>, n: usize, name: &str, mut select: impl FnMut() -> R) {
    group.bench_function(name, |b| {
        ran(n, name);
        b.iter(&mut select)
    });
}

fn group_name(n: usize) -> String {
    format!("selection/N={n}")
}

fn ran(n: usize, name: &str) {
    let entry = (group_name(n), name.to_owned());
    let mut ran = RAN.lock().expect("not poisoned");
    if !ran.contains(&entry) {
        ran.push(entry);
    }
}

/// Checks both sides' selections before they are measured.
fn sanity_check(n: usize, keys: &[String]) {
    let all: Vec<SocketAddr> = (0..n).map(addr).collect();
    let members: HashSet<SocketAddr> = all.iter().copied().collect();
    let reached = n.min(KEYS) / 2;

    // Round robin: pingora walks its sorted set, tower-lb its insertion order; both visit each
    // backend once per period.
    let lb = pingora::<RoundRobin>(n);
    let mut sorted = all.clone();
    sorted.sort();
    let start = backend_addr(&lb.select(b"", MAX_ITERATIONS).expect("a healthy backend"));
    let offset = sorted.iter().position(|a| *a == start).expect("a member");
    for k in 1..=2 * n {
        let got = backend_addr(&lb.select(b"", MAX_ITERATIONS).expect("a healthy backend"));
        assert_eq!(got, sorted[(offset + k) % n], "pingora round robin order");
    }
    let mut ours = balance(strategy::RoundRobin::new(), n);
    let ids: Vec<u64> = (0..n).map(|_| request(&mut ours, 0)).collect();
    assert_eq!(
        ids,
        (0..n as u64).collect::<Vec<_>>(),
        "tower-lb round robin order"
    );

    // Random: members of the set, most of it reached.
    let lb = pingora::<Random>(n);
    let mut ours = balance(strategy::Random::new(), n);
    let (mut theirs_seen, mut ours_seen) = (HashSet::new(), HashSet::new());
    for _ in 0..4 * n.max(64) {
        let got = backend_addr(&lb.select(b"", MAX_ITERATIONS).expect("a healthy backend"));
        assert!(members.contains(&got), "pingora random: {got}");
        theirs_seen.insert(got);
        let id = request(&mut ours, 0);
        assert!(id < n as u64, "tower-lb random: {id}");
        ours_seen.insert(id);
    }
    assert!(theirs_seen.len() >= n.div_ceil(2) && ours_seen.len() >= n.div_ceil(2));

    // Keyed: members of the set, most of it reached by the sample keys.
    let consistent = pingora::<Consistent>(n);
    let fnv = pingora::<FNVHash>(n);
    let ring = balance(ConsistentHash::new(key::path()), n).key_map();
    let modulo = balance(Hash::new(key::path()), n).key_map();
    let mut by_key_bytes = all.clone();
    by_key_bytes.sort_by(|a, b| a.key_bytes().cmp(&b.key_bytes()));
    let mut seen = [(); 4].map(|()| HashSet::new());
    for key in keys {
        let picks = [
            backend_addr(
                &consistent
                    .select(key.as_bytes(), MAX_ITERATIONS)
                    .expect("healthy"),
            ),
            backend_addr(&fnv.select(key.as_bytes(), MAX_ITERATIONS).expect("healthy")),
            *ring.endpoint_for_key(key).expect("a nonempty ring"),
            *modulo.endpoint_for_key(key).expect("a nonempty set"),
        ];
        for (pick, seen) in picks.iter().zip(&mut seen) {
            assert!(members.contains(pick), "{key}: {pick}");
            seen.insert(*pick);
        }
        let expected = by_key_bytes[crc32fast::hash(key.as_bytes()) as usize % n];
        assert_eq!(picks[3], expected, "tower-lb Hash of {key}");
    }
    assert!(seen.iter().all(|s| s.len() >= reached), "keyed reach");
}

fn selection(c: &mut Criterion) {
    let keys = keys();
    for n in SIZES {
        sanity_check(n, &keys);

        let mut group = c.benchmark_group(group_name(n));

        let lb = pingora::<RoundRobin>(n);
        bench_keyless(&mut group, n, "pingora_round_robin", || {
            lb.select(black_box(b""), MAX_ITERATIONS)
        });
        let mut ours = balance(strategy::RoundRobin::new(), n);
        bench_keyless(&mut group, n, "tower_lb_round_robin", || {
            request(&mut ours, black_box(7))
        });

        let lb = pingora::<Random>(n);
        bench_keyless(&mut group, n, "pingora_random", || {
            lb.select(black_box(b""), MAX_ITERATIONS)
        });
        let mut ours = balance(strategy::Random::new(), n);
        bench_keyless(&mut group, n, "tower_lb_random", || {
            request(&mut ours, black_box(7))
        });

        let lb = pingora::<Consistent>(n);
        bench_keyed(&mut group, n, "pingora_consistent", &keys, |key| {
            lb.select(key, MAX_ITERATIONS)
        });
        let ours: Balance<ConsistentHash<Path>, _, _> =
            balance(ConsistentHash::new(key::path()), n);
        let map = ours.key_map();
        bench_keyed(&mut group, n, "tower_lb_consistent_hash", &keys, |key| {
            map.endpoint_for_key(key)
        });

        let lb = pingora::<FNVHash>(n);
        bench_keyed(&mut group, n, "pingora_fnv_hash", &keys, |key| {
            lb.select(key, MAX_ITERATIONS)
        });
        let ours: Balance<Hash<Path>, _, _> = balance(Hash::new(key::path()), n);
        let map = ours.key_map();
        bench_keyed(&mut group, n, "tower_lb_hash", &keys, |key| {
            map.endpoint_for_key(key)
        });

        group.finish();
    }
}

/// Where criterion writes its results, found as criterion finds it.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        PathBuf::from(home)
    } else if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(target).join("criterion")
    } else {
        PathBuf::from("target/criterion")
    }
}

/// The time criterion reports for `group`/`name` (its slope estimate, else its mean), in
/// nanoseconds, if this run wrote it (the file is newer than `since`).
fn estimate(group: &str, name: &str, since: SystemTime) -> Option<f64> {
    let safe = |s: &str| s.replace(['?', '"', '/', '\\', '*', '<', '>', ':', '|', '^'], "_");
    let path = criterion_dir()
        .join(safe(group))
        .join(safe(name))
        .join("new/estimates.json");
    if fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).ok()?).ok()?;
    let point = |field: &str| json.get(field)?.get("point_estimate")?.as_f64();
    point("slope").or_else(|| point("mean"))
}

/// Prints the ratios tower-lb / pingora of this run, per N.
fn print_ratios(since: SystemTime) {
    let ran = RAN.lock().expect("not poisoned").clone();
    let mut rows: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for n in SIZES {
        let group = group_name(n);
        for (label, ours, theirs) in PAIRS {
            let measured = |name: &str| {
                ran.contains(&(group.clone(), name.to_owned()))
                    .then(|| estimate(&group, name, since))
                    .flatten()
            };
            if let (Some(a), Some(b)) = (measured(ours), measured(theirs)) {
                rows.entry(n).or_default().push(format!(
                    "{n:>5}  {label:<16} {a:>10.1} ns {b:>10.1} ns {:>8.3}",
                    a / b
                ));
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    println!("\ntower-lb / pingora-load-balancing, this run (criterion's estimates):");
    println!(
        "{:>5}  {:<16} {:>13} {:>13} {:>8}",
        "N", "selection", "tower-lb", "pingora", "ratio"
    );
    for row in rows.into_values().flatten() {
        println!("{row}");
    }
}

fn main() {
    // A second back, so that a file system's coarse timestamps cannot hide this run's files.
    let since = SystemTime::now() - Duration::from_secs(1);
    let mut criterion = Criterion::default()
        // Modest times, so that the whole run stays short; command-line options override them.
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    selection(&mut criterion);
    criterion.final_summary();
    print_ratios(since);
}
