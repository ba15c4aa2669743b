//! What routing costs per request, side by side with a direct call and with what one would use
//! instead: tower's p2c balancer, alone and behind `tower::buffer::Buffer` as axum and tonic users
//! must share it.
//!
//! The endpoints are always ready and answer at once without allocating, so that what is left is
//! the cost of the routing itself. Unless said otherwise, a benchmark measures one `poll_ready` +
//! `call` + polling the response future to completion, polled by hand with a no-op waker: no
//! executor is measured.
//!
//! # `poll_ready_call/N=…`
//!
//! One criterion group per endpoint count N (3, 100, 1000), each holding:
//!
//! - `direct`: one endpoint called directly, the floor;
//! - `tower_lb_round_robin`: a `tower_lb::Balance` with `RoundRobin`, the only handle on its set,
//!   so that it moves the cursor with a plain load and store;
//! - `tower_lb_round_robin_cloned`: the same while a clone of it lives (as in a server that clones
//!   the balancer per connection), so that it moves the cursor with an atomic add;
//! - `tower_lb_weighted_round_robin`: a `tower_lb::Balance` with `WeightedRoundRobin`, over weights
//!   `1 + i % 5`;
//! - `tower_lb_subset_round_robin`: `Subset::deterministic(RoundRobin::new(), 16, 7, 100)`, round
//!   robin over client 7's subset of 16 (of all N when N < 16): the subset is chosen when the set
//!   changes, so a request costs what round robin over 16 endpoints costs;
//! - `tower_lb_zone_aware_round_robin`: `ZoneAware` round robin for a client in zone b, the
//!   endpoints 50/30/20% in zones a, b and c and the clients 40/40/20%, so that a quarter of the
//!   requests cross to zone a: a request's zone is drawn from its turn, and its endpoint from the
//!   zone's own rotation;
//! - `tower_lb_tiers_round_robin`: `Tiers` round robin over the endpoints, a tenth of them backups
//!   (tier 1), all healthy;
//! - `tower_lb_round_robin_clone_per_request`: a fresh clone of the round robin balancer for every
//!   request, as axum's router does, then `poll_ready` + `call` on the clone;
//! - `arc_clone`: cloning and dropping an `Arc`, and `snapshot_load`: taking and dropping an
//!   `arc_swap` guard on a snapshot, the references for what a clone may add (a fresh clone
//!   holds the shared state by an `Arc` and reads the current snapshot through a guard);
//! - `tower_p2c_constant`: `tower::balance::p2c::Balance` over a `ServiceList` of the endpoints
//!   wrapped in `tower::load::Constant`, the peer;
//! - `tower_lb_p2c_in_flight` and `tower_p2c_pending_requests`: power of two choices on requests
//!   in flight, tower-lb's `PowerOfTwoChoices` (seeded) against tower's p2c over
//!   `PendingRequests`;
//! - `tower_lb_p2c_peak_ewma` and `tower_p2c_peak_ewma`: the same on peak-EWMA latency (1 ms
//!   default round trip, 10 s decay) against tower's `PeakEwma`;
//! - `tower_lb_random`: a `tower_lb::Balance` with `Random::new()` (its default per-thread
//!   generator).
//!
//! Keyed strategies, through the whole request path: the request is an `http::Request<()>` whose
//! key, one of 1024 strings `user-0` … `user-1023` taken in turn, travels in an `x-user` header
//! read by `key::header`. The endpoints hand the request back in their response.
//!
//! - `direct_request`: one endpoint called directly with the same requests, the floor of these;
//! - `tower_lb_hash`, `tower_lb_consistent_hash`, `tower_lb_maglev`: a `Balance` with
//!   `strategy::Hash`, `ConsistentHash` (160 points per unit of weight) and `Maglev` (65,537
//!   entries).
//!
//! `http::Request` is not `Clone` and `call` consumes it, so these five use criterion's
//! `iter_batched` with batches of 1024 requests (`BatchSize::NumIterations`), as
//! `benches/ketama/benches/keyed.rs` does: each batch is built before it is timed and the responses (holding the requests) are
//! dropped after, so building and freeing requests is not measured. Their figures compare with one
//! another; against the `u64` entries above, the difference between `direct_request` and `direct`
//! is the price of the bigger request type and of the batching. Building and dropping the requests
//! is not timed but takes wall time: these entries run about half as long again as the others.
//!
//! Clone per request on an executor, the way axum or tonic serve a shared client:
//!
//! - `tower_p2c_buffered_clone_per_request`: tower's p2c (constant load, as `tower_p2c_constant`)
//!   behind a `tower::buffer::Buffer` (bound 1024), which is how a tower balancer, `!Clone`, is
//!   shared; the buffer is cloned for every request and driven with `ServiceExt::oneshot`. Each
//!   request goes through the buffer's channel to its worker task and back through a oneshot;
//! - `tower_lb_round_robin_clone_per_request_async`: the tower-lb equivalent, the round robin
//!   balancer cloned for every request and driven with `oneshot` in the same loop.
//!
//! Both run on a tokio current-thread runtime (the buffer's worker is a task of it): each timed
//! sample is one `rt.block_on` of a loop of `iters` requests, timed inside the block (criterion's
//! `iter_custom`), so the runtime's cost is shared by both sides and the ratio is fair.
//!
//! # `two_threads/N=100`
//!
//! Two OS threads each send half of the requests, concurrently, through their own clone of ONE
//! shared balancer over 100 endpoints; the figure is the wall time of both halves, reported as
//! throughput too (`Throughput::Elements`, one request per iteration). It shows whether the shared
//! state (cursor, in-flight counts, channel) collapses under contention:
//!
//! - `tower_lb_round_robin`: `RoundRobin`, both threads bumping one cursor;
//! - `tower_lb_p2c_in_flight`: `PowerOfTwoChoices::new()` (per-thread generators), both threads
//!   updating the same in-flight counts.
//!
//! These two use `iter_custom` with two scoped threads, released together by a barrier (thread
//! creation is not timed), each doing `iters / 2` requests polled by hand, no runtime involved.
//!
//! - `tower_p2c_buffered`: tower's p2c (constant load) behind one `Buffer`, both senders sending
//!   into it and awaiting their responses;
//! - `tower_lb_round_robin_tasks`: the round robin balancer of `tower_lb_round_robin`, measured the
//!   same way as `tower_p2c_buffered`, so that their ratio compares like with like.
//!
//! The buffer's worker is a tokio task, so these two run as two tasks (each `iters / 2` requests)
//! on a tokio multi-thread runtime of two worker threads, the buffer's worker a task among them,
//! as in an axum or tonic server: `iter_custom` times one `block_on` that spawns both and awaits
//! them. (Sending from two scoped threads instead, with the worker on a runtime of its own, makes
//! every request cross threads twice through park and unpark: some 10 times slower here, a cost
//! of that arrangement rather than of the buffer.)
//!
//! # Sanity checks
//!
//! Before measuring each N, the run checks that round robin visits every endpoint in order, that
//! weighted round robin serves each its weight per period, that the random balancers return
//! endpoints of the set, that a keyed request reaches the endpoint `KeyMap` names for its key, that
//! the buffered p2c answers, and, for `two_threads`, that round robin stays exact across two
//! threads (each endpoint served exactly twice by `2 × N` concurrent requests).
//!
//! # Elsewhere
//!
//! `pingora-load-balancing` needs cmake and C code to build (through `pingora-core`), so its
//! comparison lives in a package of its own, `benches/peers`, which the main package's builds and
//! CI never compile: see `scripts/bench-peers.sh`.
//!
//! # Running
//!
//! ```text
//! cargo bench --bench balance
//! ```
//!
//! Criterion options follow `--`, e.g. a quicker run, or one group only:
//!
//! ```text
//! cargo bench --bench balance -- --warm-up-time 1 --measurement-time 2
//! cargo bench --bench balance -- 'N=1000'
//! cargo bench --bench balance -- two_threads
//! ```

#[path = "support/mod.rs"]
mod support;

use std::{
    collections::HashSet,
    fmt::Debug,
    hint::black_box,
    sync::Barrier,
    task::Context,
    time::{Duration, Instant},
};

use criterion::{
    criterion_group, criterion_main, measurement::WallTime, BatchSize, BenchmarkGroup, Criterion,
    Throughput,
};
use futures_util::task::noop_waker_ref;
use http::{
    header::{HeaderName, HeaderValue},
    Request,
};
use support::{request, Endpoint};
use tokio::runtime::{Builder, Runtime};
use tower::{
    balance::p2c,
    buffer::Buffer,
    discover::ServiceList,
    load::{CompleteOnResponse, Constant, PeakEwma, PendingRequests},
    ServiceExt,
};
use tower_layer::Layer;
use tower_lb::{
    discover::Update,
    key::{self, Header},
    strategy::{
        ConsistentHash, Hash, Maglev, PowerOfTwoChoices, Random, RoundRobin, Route, Strategy,
        Subset, Tiers, WeightedRoundRobin, ZoneAware,
    },
    Balance, BalanceLayer, Endpoints, Locality,
};
use tower_service::Service;

/// Endpoint counts, one criterion group each.
const SIZES: [usize; 3] = [3, 100, 1000];
/// The endpoint count of the `two_threads` group.
const THREADS_N: usize = 100;
/// How many distinct request keys the keyed benchmarks cycle through; a power of two.
const KEYS: usize = 1024;
/// Requests built ahead of each timed batch of the keyed benchmarks.
const BATCH: u64 = 1024;
/// The header carrying the request key.
const KEY_HEADER: HeaderName = HeaderName::from_static("x-user");
/// The bound of tower's `Buffer`: requests queued before callers see backpressure.
const BUFFER_BOUND: usize = 1024;

type Wall<'a> = BenchmarkGroup<'a, WallTime>;

fn endpoints(n: usize) -> impl Iterator<Item = Endpoint> {
    (0..n as u64).map(|id| Endpoint { id })
}

/// The set of `n` endpoints, keyed by their index.
fn set(n: usize) -> Endpoints<usize, Endpoint> {
    Endpoints::from_iter(endpoints(n).enumerate())
}

/// Benchmarks `service` under `name`, one request per iteration.
fn bench_service<S>(group: &mut Wall<'_>, name: &str, mut service: S)
where
    S: Service<u64>,
    S::Error: Debug,
{
    group.bench_function(name, |b| {
        b.iter(|| black_box(request(&mut service, black_box(7u64))))
    });
}

fn round_robin(n: usize) -> Balance<RoundRobin, usize, Endpoint> {
    BalanceLayer::new(RoundRobin::new()).layer(set(n))
}

fn weighted_round_robin(n: usize) -> Balance<WeightedRoundRobin, usize, Endpoint> {
    let set = Endpoints::try_from_weighted(
        endpoints(n)
            .enumerate()
            .map(|(i, endpoint)| (i, endpoint, 1 + (i % 5) as u32)),
    )
    .expect("weights are at least 1");
    BalanceLayer::new(WeightedRoundRobin::new()).layer(set)
}

fn subset(n: usize) -> Balance<Subset<RoundRobin>, usize, Endpoint> {
    let strategy = Subset::deterministic(RoundRobin::new(), 16, 7, 100).expect("a valid subset");
    BalanceLayer::new(strategy).layer(set(n))
}

/// The set of `n` endpoints, endpoint `i` in `locality(i)`.
fn located(n: usize, locality: impl Fn(usize) -> Locality) -> Endpoints<usize, Endpoint> {
    let set = Endpoints::new();
    set.apply(
        endpoints(n)
            .enumerate()
            .map(|(i, endpoint)| Update::InsertLocated(i, endpoint, 1, locality(i))),
    );
    set
}

/// The zone of endpoint `i` of `n`: the first half in a, the next 30% in b, the rest in c.
fn zone(i: usize, n: usize) -> &'static str {
    match i * 10 / n {
        0..=4 => "a",
        5..=7 => "b",
        _ => "c",
    }
}

fn zone_aware(n: usize) -> Balance<ZoneAware<RoundRobin>, usize, Endpoint> {
    let strategy = ZoneAware::new(RoundRobin::new(), "b")
        .min_endpoints(1)
        .client_shares([("a", 40.0), ("b", 40.0), ("c", 20.0)])
        .expect("valid client shares");
    let set = located(n, |i| Locality::new().with_zone(zone(i, n)));
    BalanceLayer::new(strategy).layer(set)
}

fn tiers(n: usize) -> Balance<Tiers<RoundRobin>, usize, Endpoint> {
    let set = located(n, |i| Locality::new().with_tier(u8::from(i * 10 >= n * 9)));
    BalanceLayer::new(Tiers::new(RoundRobin::new())).layer(set)
}

fn power_of_two_choices(n: usize, peak_ewma: bool) -> Balance<PowerOfTwoChoices, usize, Endpoint> {
    let mut strategy = PowerOfTwoChoices::seeded(1);
    if peak_ewma {
        strategy = strategy
            .peak_ewma(Duration::from_millis(1), Duration::from_secs(10))
            .expect("valid peak EWMA settings");
    }
    BalanceLayer::new(strategy).layer(set(n))
}

fn random(n: usize) -> Balance<Random, usize, Endpoint> {
    BalanceLayer::new(Random::new()).layer(set(n))
}

/// A balancer with the keyed strategy `strategy` over `n` endpoints.
fn keyed<St: Strategy<usize> + Clone>(strategy: St, n: usize) -> Balance<St, usize, Endpoint> {
    BalanceLayer::new(strategy).layer(set(n))
}

fn key_header() -> Header {
    key::header(KEY_HEADER)
}

/// The request keys, `user-0` … `user-1023`, as header values (cloning one costs a reference
/// count, not an allocation).
fn keys() -> Vec<HeaderValue> {
    (0..KEYS)
        .map(|i| HeaderValue::from_str(&format!("user-{i}")).expect("a valid header value"))
        .collect()
}

fn keyed_request(key: &HeaderValue) -> Request<()> {
    let mut request = Request::new(());
    request.headers_mut().insert(KEY_HEADER, key.clone());
    request
}

/// Times whole requests through `service`, their keys cycling through `keys`; the requests are
/// built before each batch, out of the timing, and dropped after it with the responses.
///
/// Each bench file keeps its own copy: the same function shared through `benches/support` (with
/// the key's request maker passed in, as a closure or a function pointer) timed the same library
/// 5 to 9% slower.
fn bench_requests<S>(group: &mut Wall<'_>, name: &str, keys: &[HeaderValue], mut service: S)
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

/// tower's p2c balancer over `n` endpoints wrapped by `wrap`, its discovery fully processed so
/// that it tracks all of them.
fn tower_p2c<L>(n: usize, wrap: impl Fn(Endpoint) -> L) -> p2c::Balance<ServiceList<Vec<L>>, u64>
where
    L: Service<u64> + tower::load::Load,
    L::Metric: std::fmt::Debug,
    L::Error: Into<tower::BoxError>,
{
    let services: Vec<L> = endpoints(n).map(wrap).collect();
    let mut balance = p2c::Balance::new(ServiceList::new::<u64>(services));
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(balance.poll_ready(&mut cx).is_ready());
    assert_eq!(balance.len(), n, "p2c has not discovered every endpoint");
    balance
}

type P2c = p2c::Balance<ServiceList<Vec<Constant<Endpoint, u32>>>, u64>;
type Buffered = Buffer<u64, <P2c as Service<u64>>::Future>;

fn p2c_constant(n: usize) -> P2c {
    tower_p2c(n, |e| Constant::new(e, 1))
}

/// tower's p2c (constant load) behind a `Buffer`, its worker spawned on `rt`.
fn p2c_buffered(n: usize, rt: &tokio::runtime::Handle) -> Buffered {
    let _entered = rt.enter();
    Buffer::new(p2c_constant(n), BUFFER_BOUND)
}

/// Times `iters` requests, each through a fresh clone of `shared` driven with `oneshot`, in one
/// `block_on` of the current-thread runtime `rt`.
fn bench_clone_per_request_async<S>(group: &mut Wall<'_>, name: &str, rt: &Runtime, shared: &S)
where
    S: Service<u64> + Clone,
    S::Error: Debug,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let response = shared.clone().oneshot(black_box(7u64)).await;
                    black_box(response.expect("request failed"));
                }
                start.elapsed()
            })
        })
    });
}

/// Runs `work` on two scoped threads at once, each with its own clone of `shared`, the first doing
/// `iters / 2` requests and the second the rest; returns the wall time from their joint release to
/// the end of the last.
fn two_threads<S, W>(shared: &S, iters: u64, work: W) -> Duration
where
    S: Clone + Send,
    W: Fn(S, u64) + Sync,
{
    let barrier = Barrier::new(3);
    std::thread::scope(|scope| {
        let halves = [iters / 2, iters - iters / 2];
        let threads = halves.map(|count| {
            let service = shared.clone();
            let (barrier, work) = (&barrier, &work);
            scope.spawn(move || {
                barrier.wait();
                work(service, count);
            })
        });
        barrier.wait();
        let start = Instant::now();
        for thread in threads {
            thread.join().expect("a benchmark thread panicked");
        }
        start.elapsed()
    })
}

/// Sends `count` requests through `service`, polled by hand.
fn send<S: Service<u64>>(mut service: S, count: u64)
where
    S::Error: Debug,
{
    for _ in 0..count {
        black_box(request(&mut service, black_box(7u64)));
    }
}

/// Runs two tasks at once on the multi-thread runtime `rt` (two workers), each sending requests
/// through its own clone of `shared` and awaiting each response, the first `iters / 2` of them and
/// the second the rest; returns the wall time from spawning them to the end of the last.
fn two_tasks<S>(rt: &Runtime, shared: &S, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        let tasks = [iters / 2, iters - iters / 2].map(|count| {
            let mut service = shared.clone();
            tokio::spawn(async move {
                for _ in 0..count {
                    let ready = service.ready().await.expect("poll_ready failed");
                    black_box(ready.call(black_box(7u64)).await.expect("request failed"));
                }
            })
        });
        for task in tasks {
            task.await.expect("a benchmark task panicked");
        }
        start.elapsed()
    })
}

/// Checks that the balancers spread requests over the whole set before measuring them.
fn sanity_check(n: usize, keys: &[HeaderValue], rt: &Runtime) {
    let mut rr = round_robin(n);
    let ids: Vec<u64> = (0..n).map(|_| request(&mut rr, 0u64)).collect();
    assert_eq!(ids, (0..n as u64).collect::<Vec<_>>(), "round robin order");

    let mut wrr = weighted_round_robin(n);
    let period: usize = (0..n).map(|i| 1 + i % 5).sum();
    let mut counts = vec![0usize; n];
    for _ in 0..period {
        counts[request(&mut wrr, 0u64) as usize] += 1;
    }
    assert!(
        counts.iter().enumerate().all(|(i, &c)| c == 1 + i % 5),
        "weighted round robin counts"
    );

    // The subset: 16 endpoints (all of them when fewer), each in turn.
    let mut sub = subset(n);
    let reached: HashSet<u64> = (0..32).map(|_| request(&mut sub, 0u64)).collect();
    assert_eq!(reached.len(), n.min(16), "subset size");

    // A client in zone b keeps three quarters of its requests there (with at least two endpoints
    // per zone), the backups take nothing.
    if n >= 10 {
        let mut zoned = zone_aware(n);
        let local = (0..4000)
            .filter(|_| zone(request(&mut zoned, 0u64) as usize, n) == "b")
            .count();
        assert!(
            (2990..=3010).contains(&local),
            "zone-aware local share {local}"
        );
    }
    let mut tiered = tiers(n);
    let backups = (0..4 * n)
        .filter(|_| request(&mut tiered, 0u64) as usize * 10 >= n * 9)
        .count();
    assert_eq!(backups, 0, "backups took requests");

    let mut p2c = p2c_constant(n);
    for _ in 0..n {
        assert!(request(&mut p2c, 0u64) < n as u64);
    }

    let mut random = random(n);
    let reached: HashSet<u64> = (0..10 * n).map(|_| request(&mut random, 0u64)).collect();
    assert!(
        reached.iter().all(|&id| id < n as u64),
        "random out of the set"
    );
    assert!(reached.len() >= n.div_ceil(2), "random reaches {reached:?}");

    // Keyed requests reach the endpoint that the key map names.
    fn check<St>(mut balance: Balance<St, usize, Endpoint>, keys: &[HeaderValue])
    where
        St: Strategy<usize> + Route<usize, Request<()>>,
    {
        let map = balance.key_map();
        for key in keys.iter().step_by(13) {
            let (id, _) = request(&mut balance, keyed_request(key));
            let expected = map.endpoint_for_key(key.as_bytes());
            assert_eq!(Some(&(id as usize)), expected, "{key:?}");
        }
    }
    check(keyed(Hash::new(key_header()), n), keys);
    check(keyed(ConsistentHash::new(key_header()), n), keys);
    check(keyed(Maglev::new(key_header()), n), keys);

    let buffered = p2c_buffered(n, rt.handle());
    rt.block_on(async {
        for _ in 0..n {
            let id = buffered.clone().oneshot(0u64).await.expect("buffered p2c");
            assert!(id < n as u64);
        }
    });
}

/// Checks that round robin stays exact when two threads share one balancer.
fn sanity_check_two_threads(n: usize) {
    let rr = round_robin(n);
    let ids = std::thread::scope(|scope| {
        let threads = [0, 1].map(|_| {
            let mut rr = rr.clone();
            scope.spawn(move || (0..n).map(|_| request(&mut rr, 0u64)).collect::<Vec<_>>())
        });
        threads.map(|thread| thread.join().expect("a sanity thread panicked"))
    });
    let mut counts = vec![0usize; n];
    for id in ids.iter().flatten() {
        counts[*id as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c == 2), "round robin across threads");
}

fn balance(c: &mut Criterion) {
    let keys = keys();
    let rt = Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");

    for n in SIZES {
        sanity_check(n, &keys, &rt);

        let mut group = c.benchmark_group(format!("poll_ready_call/N={n}"));

        bench_service(&mut group, "direct", Endpoint { id: 0 });
        bench_service(&mut group, "tower_lb_round_robin", round_robin(n));
        // The same balancer while a clone of it lives (as in a server that clones it per
        // connection): its cursor then moves with an atomic add.
        let alone = round_robin(n);
        let _clone = alone.clone();
        bench_service(&mut group, "tower_lb_round_robin_cloned", alone);
        bench_service(
            &mut group,
            "tower_lb_weighted_round_robin",
            weighted_round_robin(n),
        );

        bench_service(&mut group, "tower_lb_subset_round_robin", subset(n));
        bench_service(&mut group, "tower_lb_zone_aware_round_robin", zone_aware(n));
        bench_service(&mut group, "tower_lb_tiers_round_robin", tiers(n));

        let shared = round_robin(n);
        group.bench_function("tower_lb_round_robin_clone_per_request", |b| {
            b.iter(|| {
                let mut balance = shared.clone();
                black_box(request(&mut balance, black_box(7u64)))
            })
        });

        let arc = std::sync::Arc::new(n);
        group.bench_function("arc_clone", |b| {
            b.iter(|| drop(black_box(std::sync::Arc::clone(black_box(&arc)))))
        });
        // What reading a membership snapshot costs a balancer that has no cached copy: the other
        // reference for a clone.
        let snapshot = arc_swap::ArcSwap::from_pointee(n);
        group.bench_function("snapshot_load", |b| {
            b.iter(|| drop(black_box(black_box(&snapshot).load())))
        });

        bench_service(&mut group, "tower_p2c_constant", p2c_constant(n));

        bench_service(
            &mut group,
            "tower_lb_p2c_in_flight",
            power_of_two_choices(n, false),
        );
        bench_service(
            &mut group,
            "tower_p2c_pending_requests",
            tower_p2c(n, |e| {
                PendingRequests::new(e, CompleteOnResponse::default())
            }),
        );
        bench_service(
            &mut group,
            "tower_lb_p2c_peak_ewma",
            power_of_two_choices(n, true),
        );
        bench_service(
            &mut group,
            "tower_p2c_peak_ewma",
            tower_p2c(n, |e| {
                PeakEwma::new(
                    e,
                    Duration::from_millis(1),
                    Duration::from_secs(10).as_nanos() as f64,
                    CompleteOnResponse::default(),
                )
            }),
        );

        bench_service(&mut group, "tower_lb_random", random(n));

        bench_requests(&mut group, "direct_request", &keys, Endpoint { id: 0 });
        bench_requests(
            &mut group,
            "tower_lb_hash",
            &keys,
            keyed(Hash::new(key_header()), n),
        );
        bench_requests(
            &mut group,
            "tower_lb_consistent_hash",
            &keys,
            keyed(ConsistentHash::new(key_header()), n),
        );
        bench_requests(
            &mut group,
            "tower_lb_maglev",
            &keys,
            keyed(Maglev::new(key_header()), n),
        );

        let buffered = p2c_buffered(n, rt.handle());
        bench_clone_per_request_async(
            &mut group,
            "tower_p2c_buffered_clone_per_request",
            &rt,
            &buffered,
        );
        bench_clone_per_request_async(
            &mut group,
            "tower_lb_round_robin_clone_per_request_async",
            &rt,
            &round_robin(n),
        );

        group.finish();
    }

    // Two threads sharing one balancer.
    sanity_check_two_threads(THREADS_N);
    let mut group = c.benchmark_group(format!("two_threads/N={THREADS_N}"));
    group.throughput(Throughput::Elements(1));

    let rr = round_robin(THREADS_N);
    group.bench_function("tower_lb_round_robin", |b| {
        b.iter_custom(|iters| two_threads(&rr, iters, send))
    });

    let p2c = BalanceLayer::new(PowerOfTwoChoices::new()).layer(set(THREADS_N));
    group.bench_function("tower_lb_p2c_in_flight", |b| {
        b.iter_custom(|iters| two_threads(&p2c, iters, send))
    });

    // The buffer's worker is a task: the two senders are tasks too, on a runtime of two workers.
    let workers = Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a two-worker runtime");
    let buffered = p2c_buffered(THREADS_N, workers.handle());
    group.bench_function("tower_p2c_buffered", |b| {
        b.iter_custom(|iters| two_tasks(&workers, &buffered, iters))
    });
    group.bench_function("tower_lb_round_robin_tasks", |b| {
        b.iter_custom(|iters| two_tasks(&workers, &rr, iters))
    });

    group.finish();
}

criterion_group! {
    name = benches;
    // Modest times, so that the whole run stays short; command-line options override them.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = balance
}
criterion_main!(benches);
