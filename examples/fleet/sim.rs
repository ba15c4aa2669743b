//! The fleet simulation: thousands of clients, each a real `tower_lb::Balance`, over in-process
//! backends that count the requests they receive and the clients that call them ("connections":
//! the backends a client ever called). Four scenarios:
//!
//! - **subsets**: every client balances with round robin over a subset of the backends
//!   (`Subset::deterministic`, then `Subset::random` with a stable seed per client); the
//!   connections and requests per backend, and how many clients' subsets change when one backend
//!   leaves, 1% leave, 1% join, and 10% of the clients restart. Beside them, the subsets that
//!   Finagle's deterministic aperture and the SRE book's deterministic subsetting would choose for
//!   the same fleet, computed from their published rules (not through a balancer);
//! - **zones**: clients spread 40/40/20% over three zones holding 50/30/20% of the backends, each
//!   balancing with `ZoneAware` round robin; every backend's load, and the share of requests that
//!   stay in their client's zone against the most Envoy's rule allows;
//! - **tiers**: clients balancing with `Tiers` round robin over the backends (tier 0) and backups
//!   (tier 1, a tenth as many): what the backups take while tier 0 is healthy, and once half of
//!   tier 0 is ejected by outlier detection, against the share the overprovisioning rule gives.
//!
//! Requests are driven by hand (a no-op waker; the backends are always ready and answer at once),
//! one client after another, so every run gives the same figures.

use std::{
    borrow::Cow,
    collections::BTreeSet,
    fmt,
    future::{ready, Future, Ready},
    pin::pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use tower::Service;
use tower_lb::{
    discover::Update,
    health::OutlierDetection,
    strategy::{RoundRobin, Route, Subset, Tiers, ZoneAware},
    Balance, BalanceLayer, BoxError, EndpointKey, Endpoints, Locality,
};

/// The size of a run.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub clients: usize,
    pub backends: usize,
    pub subset: usize,
    /// Requests per client in the subset scenarios (a multiple of `subset`, so that round robin
    /// completes its rotations).
    pub subset_requests: usize,
    /// Requests per client in the zone scenario: a multiple of every zone's size and of what
    /// the split sends each zone, so that the rotations complete.
    pub zone_requests: usize,
    /// Requests per client in each phase of the tier scenario.
    pub tier_requests: usize,
}

impl Scale {
    /// 10,000 clients, 1,000 backends, subsets of 16.
    pub const FULL: Scale = Scale {
        clients: 10_000,
        backends: 1_000,
        subset: 16,
        subset_requests: 16 * 8,
        zone_requests: 2_000,
        tier_requests: 1_000,
    };

    /// 1,000 clients, 100 backends, subsets of 16: the same ratios, for the test.
    pub const REDUCED: Scale = Scale {
        clients: 1_000,
        backends: 100,
        subset: 16,
        subset_requests: 16 * 4,
        zone_requests: 200,
        tier_requests: 100,
    };
}

/// The zones, and the shares of the clients and of the backends in each.
pub const ZONES: [(&str, f64, f64); 3] = [("a", 0.4, 0.5), ("b", 0.4, 0.3), ("c", 0.2, 0.2)];

/// The zone (index into [`ZONES`]) of item `i` of `n` when the zones hold `share(zone)` of them,
/// in order.
fn zone_of(i: usize, n: usize, share: impl Fn(usize) -> f64) -> usize {
    let mut end = 0.0;
    for z in 0..ZONES.len() {
        end += share(z) * n as f64;
        if (i as f64) < end.round() {
            return z;
        }
    }
    ZONES.len() - 1
}

/// One in-process backend: what it received, and from whom.
#[derive(Debug)]
pub struct Backend {
    zone: usize,
    requests: AtomicU64,
    /// Requests from clients of each zone.
    from_zone: [AtomicU64; 3],
    /// One bit per client that called it.
    callers: Box<[AtomicU64]>,
    failing: AtomicBool,
}

/// A backend's key: its number, and the address its subsets and rings are placed by.
#[derive(Debug, Clone)]
pub struct Address {
    id: u32,
    text: Arc<str>,
}

impl Address {
    fn new(id: u32) -> Self {
        let text = format!("10.{}.{}.{}:8080", id >> 16 & 255, id >> 8 & 255, id & 255);
        Self {
            id,
            text: text.into(),
        }
    }
}

impl PartialEq for Address {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl EndpointKey for Address {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.text.as_bytes())
    }
}

/// A request: who sends it.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    client: u32,
    zone: u8,
}

/// A client's handle on a backend, as a connection pool would be: clones share the backend.
#[derive(Debug, Clone)]
pub struct Endpoint(Arc<Backend>);

impl Service<Request> for Endpoint {
    type Response = ();
    type Error = BoxError;
    type Future = Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let backend = &self.0;
        backend.requests.fetch_add(1, Ordering::Relaxed);
        backend.from_zone[usize::from(request.zone)].fetch_add(1, Ordering::Relaxed);
        let client = request.client as usize;
        backend.callers[client / 64].fetch_or(1 << (client % 64), Ordering::Relaxed);
        if backend.failing.load(Ordering::Relaxed) {
            return ready(Err("failing".into()));
        }
        ready(Ok(()))
    }
}

/// The backends of a run, `0..n`, and room for `extra` more that join later.
struct Fleet {
    backends: Vec<Arc<Backend>>,
}

impl Fleet {
    fn new(clients: usize, n: usize, extra: usize) -> Self {
        let backends = (0..n + extra)
            .map(|i| {
                Arc::new(Backend {
                    zone: zone_of(i, n, |z| ZONES[z].2),
                    requests: AtomicU64::new(0),
                    from_zone: Default::default(),
                    callers: (0..clients.div_ceil(64))
                        .map(|_| AtomicU64::new(0))
                        .collect(),
                    failing: AtomicBool::new(false),
                })
            })
            .collect();
        Self { backends }
    }

    fn endpoint(&self, id: u32) -> Endpoint {
        Endpoint(Arc::clone(&self.backends[id as usize]))
    }

    fn reset(&self) {
        for backend in &self.backends {
            backend.requests.store(0, Ordering::Relaxed);
            backend
                .from_zone
                .iter()
                .for_each(|c| c.store(0, Ordering::Relaxed));
            backend
                .callers
                .iter()
                .for_each(|c| c.store(0, Ordering::Relaxed));
        }
    }

    fn requests(&self, ids: impl Iterator<Item = u32>) -> Vec<u64> {
        ids.map(|id| self.backends[id as usize].requests.load(Ordering::Relaxed))
            .collect()
    }

    fn connections(&self, ids: impl Iterator<Item = u32>) -> Vec<u64> {
        ids.map(|id| {
            self.backends[id as usize]
                .callers
                .iter()
                .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
                .sum()
        })
        .collect()
    }

    /// The most backends any one client called.
    fn most_called(&self, clients: usize) -> usize {
        let mut called = vec![0usize; clients];
        for backend in &self.backends {
            for (w, word) in backend.callers.iter().enumerate() {
                let mut bits = word.load(Ordering::Relaxed);
                while bits != 0 {
                    called[w * 64 + bits.trailing_zeros() as usize] += 1;
                    bits &= bits - 1;
                }
            }
        }
        called.into_iter().max().unwrap_or(0)
    }
}

/// The most and the least of `values`, over their mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub max: f64,
    pub min: f64,
    pub mean: f64,
}

fn spread(values: &[u64]) -> Spread {
    let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
    let max = *values.iter().max().unwrap_or(&0) as f64;
    let min = *values.iter().min().unwrap_or(&0) as f64;
    Spread {
        max: max / mean,
        min: min / mean,
        mean,
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max/mean {:.3}, min/mean {:.3} (mean {:.1})",
            self.max, self.min, self.mean
        )
    }
}

/// Sends one request through `balance`, by hand.
fn send<St>(balance: &mut Balance<St, Address, Endpoint>, request: Request) -> Result<(), BoxError>
where
    St: Route<Address, Request>,
{
    let mut cx = Context::from_waker(Waker::noop());
    match balance.poll_ready(&mut cx) {
        Poll::Ready(result) => result?,
        Poll::Pending => return Err("the balancer is pending".into()),
    }
    let future = pin!(balance.call(request));
    match future.poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => Err("the response is pending".into()),
    }
}

/// The set of backends `ids`, in `locality(id)`.
fn insert(set: &Endpoints<Address, Endpoint>, fleet: &Fleet, ids: impl Iterator<Item = u32>) {
    set.apply(ids.map(|id| {
        let zone = ZONES[fleet.backends[id as usize].zone].0;
        Update::InsertLocated(
            Address::new(id),
            fleet.endpoint(id),
            1,
            Locality::new().with_zone(zone),
        )
    }));
}

/// What a change of the fleet did to the clients' subsets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moved {
    /// Clients whose subset changed.
    pub clients: usize,
    /// Connections to open: backends that entered a client's subset.
    pub connections: usize,
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} clients, {} new connections",
            self.clients, self.connections
        )
    }
}

fn moved(before: &[BTreeSet<u32>], after: &[BTreeSet<u32>]) -> Moved {
    let mut result = Moved::default();
    for (old, new) in before.iter().zip(after) {
        if old != new {
            result.clients += 1;
            result.connections += new.difference(old).count();
        }
    }
    result
}

/// The subset scenario's figures.
#[derive(Debug, Clone)]
pub struct SubsetReport {
    pub name: &'static str,
    /// The most backends one client called.
    pub most_called: usize,
    pub connections: Spread,
    pub requests: Spread,
    pub one_leaves: Moved,
    /// The bar for one leaving: twice the clients that held it, on average.
    pub one_leaves_bar: usize,
    /// Whether putting the backend back restored every subset.
    pub restored: bool,
    pub leave_1pct: Moved,
    pub join_1pct: Moved,
    pub restart_10pct: Moved,
}

/// Runs the subset scenario with the strategy `make(client)` for every client.
fn subsets<St>(scale: &Scale, name: &'static str, make: impl Fn(usize) -> St) -> SubsetReport
where
    St: Route<Address, Request>,
{
    let (n, c) = (scale.backends, scale.clients);
    let percent = (n / 100).max(1);
    let fleet = Fleet::new(c, n, percent);
    let set = Endpoints::new();
    insert(&set, &fleet, 0..n as u32);
    let mut clients: Vec<_> = (0..c).map(|i| Balance::new(make(i), set.clone())).collect();

    for (i, client) in clients.iter_mut().enumerate() {
        for _ in 0..scale.subset_requests {
            send(
                client,
                Request {
                    client: i as u32,
                    zone: 0,
                },
            )
            .expect("request failed");
        }
    }
    let ids = || 0..n as u32;
    let connections = spread(&fleet.connections(ids()));
    let requests = spread(&fleet.requests(ids()));
    let most_called = fleet.most_called(c);

    let current = |clients: &[Balance<St, Address, Endpoint>]| -> Vec<BTreeSet<u32>> {
        clients
            .iter()
            .map(|b| b.stats().iter().map(|s| s.key.id).collect())
            .collect()
    };
    let before = current(&clients);

    // One backend leaves, and comes back.
    let leaving = (n / 2) as u32;
    set.remove(&Address::new(leaving));
    let one_leaves = moved(&before, &current(&clients));
    insert(&set, &fleet, [leaving].into_iter());
    let restored = current(&clients) == before;

    // 1% leave together, and come back.
    let leavers: Vec<u32> = (0..percent)
        .map(|k| (k * n / percent + n / (2 * percent)) as u32)
        .collect();
    set.apply(leavers.iter().map(|&id| Update::Remove(Address::new(id))));
    let leave_1pct = moved(&before, &current(&clients));
    insert(&set, &fleet, leavers.iter().copied());

    // 1% join together, and leave again.
    let joiners = n as u32..(n + percent) as u32;
    insert(&set, &fleet, joiners.clone());
    let join_1pct = moved(&before, &current(&clients));
    set.apply(joiners.map(|id| Update::Remove(Address::new(id))));

    // 10% of the clients restart, with the same identity.
    for i in (0..c).step_by(10) {
        clients[i] = Balance::new(make(i), set.clone());
    }
    let restart_10pct = moved(&before, &current(&clients));

    SubsetReport {
        name,
        most_called,
        connections,
        requests,
        one_leaves,
        one_leaves_bar: 2 * c * scale.subset / n,
        restored,
        leave_1pct,
        join_1pct,
        restart_10pct,
    }
}

/// A subset rule applied to a list of backends, for the published algorithms.
type Rule = fn(&[u32], usize, usize, usize) -> Vec<u32>;

/// What the published subsetting algorithms would do to the same fleet.
#[derive(Debug, Clone)]
pub struct AnchorReport {
    pub name: &'static str,
    pub largest_subset: usize,
    pub connections: Spread,
    pub one_leaves: Moved,
    pub leave_1pct: Moved,
    pub join_1pct: Moved,
}

fn anchor(scale: &Scale, name: &'static str, rule: Rule) -> AnchorReport {
    let (n, c, k) = (scale.backends, scale.clients, scale.subset);
    let percent = (n / 100).max(1);
    let all: Vec<u32> = (0..n as u32).collect();
    let subsets = |backends: &[u32]| -> Vec<BTreeSet<u32>> {
        (0..c)
            .map(|i| rule(backends, i, c, k).into_iter().collect())
            .collect()
    };
    let before = subsets(&all);
    let mut counts = vec![0u64; n];
    for subset in &before {
        for &b in subset {
            counts[b as usize] += 1;
        }
    }
    let without =
        |gone: &[u32]| -> Vec<u32> { all.iter().copied().filter(|b| !gone.contains(b)).collect() };
    let leavers: Vec<u32> = (0..percent)
        .map(|k| (k * n / percent + n / (2 * percent)) as u32)
        .collect();
    let mut joined = all.clone();
    joined.extend(n as u32..(n + percent) as u32);
    AnchorReport {
        name,
        largest_subset: before.iter().map(BTreeSet::len).max().unwrap_or(0),
        connections: spread(&counts),
        one_leaves: moved(&before, &subsets(&without(&[(n / 2) as u32]))),
        leave_1pct: moved(&before, &subsets(&without(&leavers))),
        join_1pct: moved(&before, &subsets(&joined)),
    }
}

/// A backend's place on the published algorithms' rings: a hash of its key.
fn backend_hash(id: u32) -> u64 {
    let mut x = u64::from(id).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn by_hash(backends: &[u32]) -> Vec<u32> {
    let mut ring = backends.to_vec();
    ring.sort_by_key(|&b| backend_hash(b));
    ring
}

/// Finagle's deterministic aperture: the backends evenly spaced on a ring by rank, client `i` of
/// `c` covering `[i / c, i / c + width)`, the width the least multiple of `1 / c` that holds `k`
/// backends (Finagle's `dApertureWidth`), every backend the arc touches in its subset.
fn aperture(backends: &[u32], i: usize, c: usize, k: usize) -> Vec<u32> {
    let ring = by_hash(backends);
    let n = ring.len();
    let units = (k * c).div_ceil(n);
    let width = (units as f64 / c as f64).min(1.0);
    let offset = i as f64 / c as f64;
    let first = (offset * n as f64).floor() as usize;
    // The arc's end, exclusive: the last backend it touches.
    let end = ((offset + width) * n as f64 * (1.0 - 1e-9)).floor() as usize;
    let touched = (end - first + 1).min(n);
    (0..touched).map(|j| ring[(first + j) % n]).collect()
}

/// The SRE book's deterministic subsetting: clients in rounds of `n / k`, each round a shuffle
/// of the backends seeded with the round number, client `i` taking the `i % (n / k)`-th run of
/// `k`.
fn rounds(backends: &[u32], i: usize, _c: usize, k: usize) -> Vec<u32> {
    let mut list = by_hash(backends);
    let count = (list.len() / k).max(1);
    let round = (i / count) as u64;
    // Fisher-Yates with splitmix64 seeded by the round.
    let mut state = round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for j in (1..list.len()).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let r = backend_hash(state as u32 ^ (state >> 32) as u32) % (j as u64 + 1);
        list.swap(j, r as usize);
    }
    let id = i % count;
    list.iter().skip(id * k).take(k).copied().collect()
}

/// The zone scenario's figures.
#[derive(Debug, Clone)]
pub struct ZoneReport {
    pub loads: Spread,
    /// The share of requests served in their client's zone.
    pub in_zone: f64,
    /// The most any routing that loads every backend evenly can keep: the sum over zones of the
    /// lesser of the clients' and the backends' shares.
    pub allowed: f64,
    /// Per zone: the clients' share, the backends' share, the share of its clients' requests
    /// kept in it.
    pub zones: Vec<(&'static str, f64, f64, f64)>,
}

fn zones(scale: &Scale) -> ZoneReport {
    let (n, c) = (scale.backends, scale.clients);
    let fleet = Fleet::new(c, n, 0);
    let set = Endpoints::new();
    insert(&set, &fleet, 0..n as u32);
    let shares = ZONES.map(|(zone, clients, _)| (zone, clients));
    let client_zone = |i: usize| zone_of(i, c, |z| ZONES[z].1);
    let mut clients: Vec<_> = (0..c)
        .map(|i| {
            let strategy = ZoneAware::new(RoundRobin::new(), ZONES[client_zone(i)].0)
                .client_shares(shares)
                .expect("valid client shares");
            Balance::new(strategy, set.clone())
        })
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let request = Request {
            client: i as u32,
            zone: client_zone(i) as u8,
        };
        for _ in 0..scale.zone_requests {
            send(client, request).expect("request failed");
        }
    }
    let total: u64 = fleet.requests(0..n as u32).iter().sum();
    let mut in_zone = 0;
    let mut per_zone = Vec::new();
    for (z, &(name, clients_share, backends_share)) in ZONES.iter().enumerate() {
        let from = |inside: bool| -> u64 {
            fleet
                .backends
                .iter()
                .filter(|b| (b.zone == z) == inside)
                .map(|b| b.from_zone[z].load(Ordering::Relaxed))
                .sum()
        };
        let (kept, away) = (from(true), from(false));
        in_zone += kept;
        per_zone.push((
            name,
            clients_share,
            backends_share,
            kept as f64 / (kept + away) as f64,
        ));
    }
    ZoneReport {
        loads: spread(&fleet.requests(0..n as u32)),
        in_zone: in_zone as f64 / total as f64,
        allowed: ZONES.iter().map(|&(_, c, b)| c.min(b)).sum(),
        zones: per_zone,
    }
}

/// Requests each client sends after the ejections before the tier scenario counts again.
const WARM_UP: usize = 10;

/// The tier scenario's figures.
#[derive(Debug, Clone)]
pub struct TierReport {
    pub backups: usize,
    /// Requests the backups took while tier 0 was healthy.
    pub healthy_backup_requests: u64,
    pub healthy_loads: Spread,
    /// The backups' share of requests with half of tier 0 ejected.
    pub spill: f64,
    /// The overprovisioning rule's share: `1 - min(1, 1.4 × 0.5)`.
    pub expected_spill: f64,
    /// The loads of tier 0's survivors and of the backups, with half of tier 0 ejected.
    pub survivor_loads: Spread,
    pub backup_loads: Spread,
}

fn tiers(scale: &Scale) -> TierReport {
    let (n, c) = (scale.backends, scale.clients);
    let backups = n / 10;
    let fleet = Fleet::new(c, n + backups, 0);
    let set = Endpoints::new();
    set.apply((0..(n + backups) as u32).map(|id| {
        let locality = if (id as usize) < n {
            Locality::new()
        } else {
            Locality::backup()
        };
        Update::InsertLocated(Address::new(id), fleet.endpoint(id), 1, locality)
    }));
    let detection = OutlierDetection::builder()
        .consecutive_failures(1)
        .base_ejection_time(Duration::from_secs(3600))
        .max_ejection_time(Duration::from_secs(3600))
        .build()
        .expect("valid outlier detection");
    let layer = BalanceLayer::new(Tiers::new(RoundRobin::new())).outlier_detection(detection);
    let mut clients: Vec<_> = (0..c)
        .map(|_| tower::Layer::layer(&layer, set.clone()))
        .collect();
    let run = |clients: &mut Vec<Balance<Tiers<RoundRobin>, Address, Endpoint>>| {
        for (i, client) in clients.iter_mut().enumerate() {
            for _ in 0..scale.tier_requests {
                send(
                    client,
                    Request {
                        client: i as u32,
                        zone: 0,
                    },
                )
                .expect("request failed");
            }
        }
    };
    let primary = || 0..n as u32;
    let backup = || n as u32..(n + backups) as u32;

    run(&mut clients);
    let healthy_backup_requests = fleet.requests(backup()).iter().sum();
    let healthy_loads = spread(&fleet.requests(primary()));

    // Half of tier 0 fails, until the first client's outlier detection has ejected it; the
    // ejections are the set's, so every client sees them.
    let failing: Vec<u32> = primary().filter(|id| id % 2 == 0).collect();
    failing.iter().for_each(|&id| {
        fleet.backends[id as usize]
            .failing
            .store(true, Ordering::Relaxed)
    });
    let driver = &mut clients[0];
    for _ in 0..100 * n {
        let ejected = driver
            .stats()
            .iter()
            .filter(|s| s.ejected_for.is_some())
            .count();
        if ejected == failing.len() {
            break;
        }
        let _ = send(driver, Request { client: 0, zone: 0 });
    }
    failing.iter().for_each(|&id| {
        fleet.backends[id as usize]
            .failing
            .store(false, Ordering::Relaxed)
    });
    // A client's split follows the ejections as soon as one of its requests meets an ejected
    // backend: its first request or two here may still route as before.
    for (i, client) in clients.iter_mut().enumerate() {
        for _ in 0..WARM_UP {
            let request = Request {
                client: i as u32,
                zone: 0,
            };
            send(client, request).expect("request failed");
        }
    }
    fleet.reset();

    run(&mut clients);
    let tier0: u64 = fleet.requests(primary()).iter().sum();
    let spare: u64 = fleet.requests(backup()).iter().sum();
    let survivors: Vec<u32> = primary().filter(|id| id % 2 == 1).collect();
    TierReport {
        backups,
        healthy_backup_requests,
        healthy_loads,
        spill: spare as f64 / (tier0 + spare) as f64,
        expected_spill: 1.0 - (1.4f64 * 0.5).min(1.0),
        survivor_loads: spread(&fleet.requests(survivors.into_iter())),
        backup_loads: spread(&fleet.requests(backup())),
    }
}

/// Every scenario's figures.
#[derive(Debug, Clone)]
pub struct Report {
    pub scale: Scale,
    pub deterministic: SubsetReport,
    pub random: SubsetReport,
    pub anchors: Vec<AnchorReport>,
    pub zones: ZoneReport,
    pub tiers: TierReport,
    /// How long each scenario took.
    pub timings: Vec<(&'static str, Duration)>,
}

/// Runs every scenario at `scale`.
pub fn run(scale: &Scale) -> Report {
    let (size, count) = (scale.subset, scale.clients);
    let mut timings = Vec::new();
    let mut timed = |name: &'static str, started: Instant| timings.push((name, started.elapsed()));
    let started = Instant::now();
    let deterministic = subsets(scale, "deterministic (Subset::deterministic)", |i| {
        Subset::deterministic(RoundRobin::new(), size, i, count).expect("valid subset")
    });
    timed("deterministic subsets", started);
    let started = Instant::now();
    let random = subsets(scale, "random, stable seeds (Subset::random)", |i| {
        Subset::random(RoundRobin::new(), size, backend_hash(i as u32)).expect("valid subset")
    });
    timed("random subsets", started);
    let started = Instant::now();
    let anchors = vec![
        anchor(scale, "Finagle's deterministic aperture", aperture),
        anchor(scale, "SRE book's deterministic subsetting", rounds),
    ];
    timed("published algorithms", started);
    let started = Instant::now();
    let zones = zones(scale);
    timed("zones", started);
    let started = Instant::now();
    let tiers = tiers(scale);
    timed("tiers", started);
    Report {
        scale: *scale,
        deterministic,
        random,
        anchors,
        zones,
        tiers,
        timings,
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.scale;
        writeln!(
            f,
            "{} clients, {} backends, subsets of {}\n",
            s.clients, s.backends, s.subset
        )?;
        writeln!(
            f,
            "== subsets ({} requests per client, round robin within the subset)",
            s.subset_requests
        )?;
        for r in [&self.deterministic, &self.random] {
            writeln!(f, "{}:", r.name)?;
            writeln!(f, "  most backends one client called: {}", r.most_called)?;
            writeln!(f, "  connections per backend: {}", r.connections)?;
            writeln!(f, "  requests per backend:    {}", r.requests)?;
            writeln!(
                f,
                "  one backend leaves:  {} (bar: at most {} clients); back: {}",
                r.one_leaves,
                r.one_leaves_bar,
                if r.restored {
                    "every subset restored"
                } else {
                    "subsets differ"
                }
            )?;
            writeln!(f, "  1% of backends leave: {}", r.leave_1pct)?;
            writeln!(f, "  1% of backends join:  {}", r.join_1pct)?;
            writeln!(f, "  10% of clients restart: {}", r.restart_10pct)?;
        }
        writeln!(
            f,
            "the published algorithms on the same fleet (their rules computed directly):"
        )?;
        for a in &self.anchors {
            writeln!(f, "{}:", a.name)?;
            writeln!(f, "  largest subset: {}", a.largest_subset)?;
            writeln!(f, "  connections per backend: {}", a.connections)?;
            writeln!(f, "  one backend leaves:   {}", a.one_leaves)?;
            writeln!(f, "  1% of backends leave: {}", a.leave_1pct)?;
            writeln!(f, "  1% of backends join:  {}", a.join_1pct)?;
        }
        let z = &self.zones;
        writeln!(
            f,
            "\n== zones ({} requests per client, ZoneAware round robin)",
            s.zone_requests
        )?;
        for (name, clients, backends, kept) in &z.zones {
            writeln!(
                f,
                "  zone {name}: {:.0}% of clients, {:.0}% of backends, keeps {:.2}% of its clients' requests",
                clients * 100.0,
                backends * 100.0,
                kept * 100.0
            )?;
        }
        writeln!(f, "  load per backend: {}", z.loads)?;
        writeln!(
            f,
            "  in-zone share: {:.3}% (the most an even load allows: {:.3}%)",
            z.in_zone * 100.0,
            z.allowed * 100.0
        )?;
        let t = &self.tiers;
        writeln!(
            f,
            "\n== tiers ({} backups in tier 1, {} requests per client and phase, Tiers round robin)",
            t.backups, s.tier_requests
        )?;
        writeln!(
            f,
            "  tier 0 healthy: backups took {} requests; tier 0 load {}",
            t.healthy_backup_requests, t.healthy_loads
        )?;
        writeln!(
            f,
            "  half of tier 0 ejected: backups took {:.3}% (the rule: {:.3}%)",
            t.spill * 100.0,
            t.expected_spill * 100.0
        )?;
        writeln!(f, "    tier 0 survivors' load {}", t.survivor_loads)?;
        writeln!(f, "    backups' load {}", t.backup_loads)?;
        let timings: Vec<String> = self
            .timings
            .iter()
            .map(|(name, time)| format!("{name} {:.1} s", time.as_secs_f64()))
            .collect();
        writeln!(f, "\n(simulated in: {})", timings.join(", "))
    }
}
