//! Cost of routing by request key: tower-lb's `Hash` and `ConsistentHash` (on each of its
//! placements) side by side with a bare crc32, a bare md5 and pingora-ketama's ring.
//!
//! One criterion group per endpoint count N (10, 100, 1000), named `key_pick/N=…`. The endpoints
//! are `10.0.0.1:8080`, `10.0.0.2:8080`, … (`SocketAddr` keys, whose key bytes are that text), all
//! of weight 1. Request keys are 1024 precomputed strings `user-0` … `user-1023`, cycled by an index
//! and passed through `black_box`, so nothing is constant-folded and the lookups see varied keys.
//!
//! Lookups, one key per iteration:
//!
//! - `crc32`: `crc32fast::hash(key)` alone, the floor for `Hash`;
//! - `md5`: the md5 of the key alone (RustCrypto's `md-5`, as tower-lb uses it), the floor for the
//!   libketama placement, whose request keys are hashed by md5 as memcached clients hash them;
//! - `tower_lb_hash`: `KeyMap::endpoint_for_key` of a `Balance` with `strategy::Hash` (crc32 of the
//!   key modulo N), the `KeyMap` taken once outside the timed loop;
//! - `tower_lb_consistent_hash`: the same with `strategy::ConsistentHash` (160 points per unit of
//!   weight, the default placement);
//! - `tower_lb_consistent_hash_nginx`, `…_pingora_ketama`, `…_libketama`: the same with
//!   `ConsistentHash::placement` set to `Placement::Nginx`, `PingoraKetama` and `Libketama`
//!   (nginx's and pingora-ketama's 32-bit crc32 points and crc32 key hash; libketama's md5 points
//!   and md5 key hash), looked up through the same bucket index;
//! - `tower_lb_maglev`: the same with `strategy::Maglev` (a 65,537-entry table);
//! - `pingora_ketama`: `pingora_ketama::Continuum::node(key)` over `Bucket::new(addr, 1)` for the
//!   same addresses (weight 1 is 160 points there too: `DEFAULT_POINT_MULTIPLE`). `node` returns
//!   the chosen address, as `endpoint_for_key` returns the chosen endpoint's key; `node_idx` stops
//!   at the index of the ring point, one lookup short of that.
//!
//! Each lookup's result is passed to `black_box` as its API returns it: `Option<&SocketAddr>` for
//! `endpoint_for_key`, `Option<SocketAddr>` for `node`. (Copying the `SocketAddr` out of
//! `endpoint_for_key` too, with `.copied()`, adds some 6 to 8 ns per lookup here, measured on one
//! machine; perf puts that time on storing the 32-byte value for `black_box`, a cost of the
//! harness more than of routing.)
//!
//! Whole requests, one per iteration: `poll_ready` + `call` + the response future polled to
//! completion with a no-op waker, through a `Balance` over always-ready endpoints that answer at
//! once without allocating. The key travels in an `x-user` header, read by `key::header`:
//!
//! - `direct_request`: one endpoint called directly, the floor;
//! - `tower_lb_hash_request`: a `Balance` with `strategy::Hash`;
//! - `tower_lb_consistent_hash_request`: a `Balance` with `strategy::ConsistentHash`;
//! - `tower_lb_maglev_request`: a `Balance` with `strategy::Maglev`.
//!
//! A last group, `maglev_build`, times building a Maglev table of 65,537 entries for N = 100 and
//! 1000 endpoints: the work a membership change does off the request path.
//!
//! `http::Request<()>` is neither `Clone` nor free to build (its header map allocates), and `call`
//! consumes it. The request benchmarks therefore use criterion's `iter_batched` with batches of
//! 1024 requests: the requests are built before each batch and out of the timing, and the
//! endpoints hand each request back in their response, which criterion drops after the timing. What
//! is timed is the routing alone (key extraction, hashing, lookup, readiness, call), not building
//! or freeing requests.
//!
//! Before measuring each N, the run checks that `Hash` maps sample keys to
//! `crc32(key) % N` over the endpoints sorted by key bytes, that the consistent hash rings return
//! endpoints of the set, that the `PingoraKetama` placement maps every sample key to the node
//! pingora-ketama returns, and that a request reaches the endpoint `KeyMap` names for its key.
//!
//! Run it with:
//!
//! ```text
//! cargo bench --bench keyed
//! ```
//!
//! Criterion options follow `--`, e.g. a quicker run, or one group only:
//!
//! ```text
//! cargo bench --bench keyed -- --warm-up-time 1 --measurement-time 2
//! cargo bench --bench keyed -- 'N=1000'
//! ```
//!
//! The figures are read against three bars: at N = 1000, `tower_lb_consistent_hash` takes at most a
//! third of `pingora_ketama`'s time (a bucket index, O(1) expected, against a binary search over
//! 160 000 points); `tower_lb_hash` takes at most 5 ns more than `crc32`; and the compatible
//! placements look keys up no slower than the default placement, once their key hash is counted
//! apart (crc32 for nginx and pingora-ketama, as the default; md5 for libketama, whose figure is
//! read as its time over `md5`'s beside the default's over `crc32`'s).

#[path = "../../support/mod.rs"]
mod support;

use std::{
    collections::HashSet,
    fmt::Debug,
    hint::black_box,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion};
use http::{header::HeaderName, Request};
use pingora_ketama::{Bucket, Continuum};
use support::{request, Endpoint};
use tower_layer::Layer;
use tower_lb::{
    key::{self, Header},
    strategy::{ConsistentHash, Hash, Maglev, Placement, Strategy},
    Balance, BalanceLayer, EndpointKey, Endpoints,
};
use tower_service::Service;

/// Endpoint counts, one criterion group each.
const SIZES: [usize; 3] = [10, 100, 1000];
/// How many distinct request keys the lookups cycle through; a power of two.
const KEYS: usize = 1024;
/// Requests built ahead of each timed batch of the request benchmarks.
const BATCH: u64 = 1024;
/// The header carrying the request key.
const KEY_HEADER: &str = "x-user";

type Wall<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// The address of endpoint `i`: 10.0.0.1:8080, 10.0.0.2:8080, …
fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(0x0A00_0001 + i as u32), 8080))
}

fn endpoints(n: usize) -> Endpoints<SocketAddr, Endpoint> {
    Endpoints::from_iter((0..n).map(|i| (addr(i), Endpoint { id: i as u64 })))
}

fn key_header() -> Header {
    key::header(HeaderName::from_static(KEY_HEADER))
}

fn hash(n: usize) -> Balance<Hash<Header>, SocketAddr, Endpoint> {
    BalanceLayer::new(Hash::new(key_header())).layer(endpoints(n))
}

fn consistent_hash(n: usize) -> Balance<ConsistentHash<Header>, SocketAddr, Endpoint> {
    placed(n, Placement::Native)
}

fn placed(n: usize, placement: Placement) -> Balance<ConsistentHash<Header>, SocketAddr, Endpoint> {
    BalanceLayer::new(ConsistentHash::new(key_header()).placement(placement)).layer(endpoints(n))
}

/// md5 of `bytes`, as the libketama placement hashes request keys.
fn md5(bytes: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(bytes).into()
}

fn maglev(n: usize) -> Balance<Maglev<Header>, SocketAddr, Endpoint> {
    BalanceLayer::new(Maglev::new(key_header())).layer(endpoints(n))
}

fn ketama(n: usize) -> Continuum {
    let buckets: Vec<Bucket> = (0..n).map(|i| Bucket::new(addr(i), 1)).collect();
    Continuum::new(&buckets)
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("user-{i}")).collect()
}

fn keyed_request(key: &str) -> Request<()> {
    Request::builder()
        .header(KEY_HEADER, key)
        .body(())
        .expect("a valid request")
}

/// Times `lookup` on the keys in turn, one per iteration.
fn bench_lookup<R>(group: &mut Wall<'_>, name: &str, keys: &[String], lookup: impl Fn(&[u8]) -> R) {
    group.bench_function(name, |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (KEYS - 1);
            black_box(lookup(black_box(keys[i].as_bytes())))
        })
    });
}

/// Times whole requests through `service`, their keys cycling through `keys`; the requests are
/// built before each batch, out of the timing.
///
/// Each bench file keeps its own copy: the same function shared through `benches/support` (with
/// the key's request maker passed in, as a closure or a function pointer) timed the same library
/// 5 to 9% slower.
fn bench_requests<S>(group: &mut Wall<'_>, name: &str, keys: &[String], mut service: S)
where
    S: Service<Request<()>>,
    S::Error: Debug,
{
    group.bench_function(name, |b| {
        let mut i = 0;
        b.iter_batched(
            || {
                i = (i + 1) & (KEYS - 1);
                keyed_request(&keys[i])
            },
            |req| request(&mut service, req),
            BatchSize::NumIterations(BATCH),
        )
    });
}

/// Checks the mappings before they are measured.
fn sanity_check(n: usize, keys: &[String]) {
    let set: HashSet<SocketAddr> = (0..n).map(addr).collect();

    // Hash: crc32 modulo N over the endpoints in key-byte order.
    let mut sorted: Vec<SocketAddr> = set.iter().copied().collect();
    sorted.sort_by(|a, b| a.key_bytes().cmp(&b.key_bytes()));
    let mut hash = hash(n);
    let map = hash.key_map();
    assert_eq!(map.len(), n);
    for key in keys.iter().step_by(7) {
        let expected = sorted[crc32fast::hash(key.as_bytes()) as usize % n];
        assert_eq!(map.endpoint_for_key(key), Some(&expected), "Hash of {key}");
    }

    // Both rings: endpoints of the set, and most of the set reached by the sample keys.
    let mut consistent = consistent_hash(n);
    let ring = consistent.key_map();
    let continuum = ketama(n);
    let (mut ours, mut theirs) = (HashSet::new(), HashSet::new());
    for key in keys {
        let a = *ring.endpoint_for_key(key).expect("a nonempty ring");
        let b = continuum
            .node(key.as_bytes())
            .expect("a nonempty continuum");
        assert!(set.contains(&a) && set.contains(&b), "{key}: {a} {b}");
        ours.insert(a);
        theirs.insert(b);
    }
    let reached = n.min(KEYS) / 2;
    assert!(ours.len() >= reached && theirs.len() >= reached);

    // The compatible placements: endpoints of the set, and pingora-ketama's node for every key on
    // its own placement.
    for placement in [
        Placement::Nginx,
        Placement::PingoraKetama,
        Placement::Libketama,
    ] {
        let balance = placed(n, placement);
        let map = balance.key_map();
        for key in keys {
            let ours = *map.endpoint_for_key(key).expect("a nonempty ring");
            assert!(set.contains(&ours), "{placement:?} {key}: {ours}");
            if placement == Placement::PingoraKetama {
                assert_eq!(Some(ours), continuum.node(key.as_bytes()), "{key}");
            }
        }
    }

    // Requests reach the endpoint that the key map names.
    fn check<St>(balance: &mut Balance<St, SocketAddr, Endpoint>, keys: &[String])
    where
        St: Strategy<SocketAddr> + tower_lb::strategy::Route<SocketAddr, Request<()>>,
    {
        let map = balance.key_map();
        for key in keys.iter().step_by(13) {
            let (id, _) = request(balance, keyed_request(key));
            assert_eq!(Some(&addr(id as usize)), map.endpoint_for_key(key), "{key}");
        }
    }
    check(&mut hash, keys);
    check(&mut consistent, keys);
}

fn keyed(c: &mut Criterion) {
    let keys = keys();
    for n in SIZES {
        sanity_check(n, &keys);

        let mut group = c.benchmark_group(format!("key_pick/N={n}"));

        bench_lookup(&mut group, "crc32", &keys, crc32fast::hash);
        bench_lookup(&mut group, "md5", &keys, md5);

        let balance = hash(n);
        let map = balance.key_map();
        bench_lookup(&mut group, "tower_lb_hash", &keys, |key| {
            map.endpoint_for_key(key)
        });

        let balance = consistent_hash(n);
        let map = balance.key_map();
        bench_lookup(&mut group, "tower_lb_consistent_hash", &keys, |key| {
            map.endpoint_for_key(key)
        });

        for (name, placement) in [
            ("tower_lb_consistent_hash_nginx", Placement::Nginx),
            (
                "tower_lb_consistent_hash_pingora_ketama",
                Placement::PingoraKetama,
            ),
            ("tower_lb_consistent_hash_libketama", Placement::Libketama),
        ] {
            let balance = placed(n, placement);
            let map = balance.key_map();
            bench_lookup(&mut group, name, &keys, |key| map.endpoint_for_key(key));
        }

        let balance = maglev(n);
        let map = balance.key_map();
        bench_lookup(&mut group, "tower_lb_maglev", &keys, |key| {
            map.endpoint_for_key(key)
        });

        let continuum = ketama(n);
        bench_lookup(&mut group, "pingora_ketama", &keys, |key| {
            continuum.node(key)
        });

        bench_requests(&mut group, "direct_request", &keys, Endpoint { id: 0 });
        bench_requests(&mut group, "tower_lb_hash_request", &keys, hash(n));
        bench_requests(
            &mut group,
            "tower_lb_consistent_hash_request",
            &keys,
            consistent_hash(n),
        );

        bench_requests(&mut group, "tower_lb_maglev_request", &keys, maglev(n));

        group.finish();
    }

    // Building the Maglev table (65,537 entries) when the membership changes, off the request
    // path: one `Balance` over a fresh set per iteration.
    let mut group = c.benchmark_group("maglev_build");
    group.sample_size(10);
    for n in [100, 1000] {
        group.bench_function(format!("N={n}"), |b| {
            b.iter_batched(
                || endpoints(n),
                |set| black_box(BalanceLayer::new(Maglev::new(key_header())).layer(set)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Modest times, so that the whole run stays short; command-line options override them.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = keyed
}
criterion_main!(benches);
