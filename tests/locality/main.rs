//! Subsets, priority tiers and zone-aware routing over real balancers: which endpoints a client
//! calls, how requests split between tiers and zones, and how the split follows ejections,
//! returns, membership and configuration changes.

use std::{
    collections::{BTreeSet, HashMap},
    future::{ready, Ready},
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tower::{discover::Change, Layer, Service, ServiceExt};
use tower_lb::{
    discover::Update,
    health::OutlierDetection,
    strategy::{PowerOfTwoChoices, RoundRobin, Route, Subset, Tiers, ZoneAware},
    Balance, BalanceLayer, BoxError, Endpoints, Locality,
};

/// A fleet of in-process backends that count their requests and can be made to fail.
#[derive(Clone, Default)]
struct Fleet {
    hits: Arc<Mutex<HashMap<usize, usize>>>,
    failing: Arc<Mutex<BTreeSet<usize>>>,
}

#[derive(Clone)]
struct Backend {
    id: usize,
    fleet: Fleet,
}

impl Service<()> for Backend {
    type Response = usize;
    type Error = BoxError;
    type Future = Ready<Result<usize, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: ()) -> Self::Future {
        *self.fleet.hits.lock().unwrap().entry(self.id).or_default() += 1;
        if self.fleet.failing.lock().unwrap().contains(&self.id) {
            return ready(Err(format!("backend {} failed", self.id).into()));
        }
        ready(Ok(self.id))
    }
}

impl Fleet {
    fn backend(&self, id: usize) -> Backend {
        Backend {
            id,
            fleet: self.clone(),
        }
    }

    /// Forgets the counts so far.
    fn reset(&self) -> HashMap<usize, usize> {
        std::mem::take(&mut *self.hits.lock().unwrap())
    }

    fn fail(&self, ids: impl IntoIterator<Item = usize>) {
        self.failing.lock().unwrap().extend(ids);
    }

    fn heal(&self) {
        self.failing.lock().unwrap().clear();
    }
}

/// Sends `count` requests, each through a fresh clone, ignoring failures.
async fn send<S>(svc: &S, count: usize)
where
    S: Service<(), Response = usize, Error = BoxError> + Clone,
{
    for _ in 0..count {
        let _ = svc.clone().oneshot(()).await;
    }
}

/// Ejects after one failure for an hour, on tokio's clock (paused in the tests that need it).
fn eject_at_once() -> OutlierDetection {
    OutlierDetection::builder()
        .consecutive_failures(1)
        .base_ejection_time(Duration::from_secs(3600))
        .max_ejection_time(Duration::from_secs(7200))
        .clock(|| tokio::time::Instant::now().into_std())
        .build()
        .unwrap()
}

/// Makes `ids` fail until `svc` has ejected all of them, then lets them answer again, so that only
/// the ejection keeps them out.
async fn eject<St>(fleet: &Fleet, svc: &Balance<St, usize, Backend>, ids: &[usize])
where
    St: Route<usize, ()>,
{
    fleet.fail(ids.iter().copied());
    for _ in 0..100_000 {
        let ejected: Vec<usize> = svc
            .stats()
            .iter()
            .filter(|s| s.ejected_for.is_some())
            .map(|s| s.key)
            .collect();
        if ids.iter().all(|id| ejected.contains(id)) {
            fleet.heal();
            fleet.reset();
            return;
        }
        let _ = svc.clone().oneshot(()).await;
    }
    panic!("{ids:?} were not all ejected");
}

fn zone_of(id: usize) -> &'static str {
    // 5 in a, 3 in b, 2 in c, of every 10.
    match id % 10 {
        0..=4 => "a",
        5..=7 => "b",
        _ => "c",
    }
}

/// `n` backends, `ids` 0..n, in zones a, b and c (50/30/20%).
fn zoned(fleet: &Fleet, n: usize) -> Endpoints<usize, Backend> {
    let set = Endpoints::new();
    set.apply((0..n).map(|id| {
        let locality = Locality::new().with_zone(zone_of(id));
        Update::InsertLocated(id, fleet.backend(id), 1, locality)
    }));
    set
}

/// `primary` backends in tier 0 (ids from 0) and `backup` in tier 1 (ids from 1000).
fn tiered(fleet: &Fleet, primary: usize, backup: usize) -> Endpoints<usize, Backend> {
    let set = Endpoints::new();
    set.apply(
        (0..primary)
            .map(|id| Update::InsertLocated(id, fleet.backend(id), 1, Locality::new()))
            .chain(
                (1000..1000 + backup)
                    .map(|id| Update::InsertLocated(id, fleet.backend(id), 1, Locality::backup())),
            ),
    );
    set
}

fn share(hits: &HashMap<usize, usize>, pick: impl Fn(usize) -> bool) -> f64 {
    let total: usize = hits.values().sum();
    let picked: usize = hits
        .iter()
        .filter(|(&id, _)| pick(id))
        .map(|(_, c)| c)
        .sum();
    picked as f64 / total as f64
}

#[tokio::test]
async fn a_subset_balancer_calls_only_its_subset_and_each_member_evenly() {
    let fleet = Fleet::default();
    let set = Endpoints::from_iter((0..100).map(|id| (id, fleet.backend(id))));
    let strategy = Subset::deterministic(RoundRobin::new(), 8, 3, 50).unwrap();
    let svc = BalanceLayer::new(strategy).layer(set);

    send(&svc, 800).await;
    let hits = fleet.reset();
    assert_eq!(hits.len(), 8, "{hits:?}");
    assert!(hits.values().all(|&c| c == 100), "{hits:?}");
    let stats: BTreeSet<usize> = svc.stats().iter().map(|s| s.key).collect();
    assert_eq!(stats, hits.keys().copied().collect());
}

#[tokio::test]
async fn a_subset_changes_only_where_membership_changes_it() {
    let fleet = Fleet::default();
    let set = Endpoints::from_iter((0..100).map(|id| (id, fleet.backend(id))));
    let svc = BalanceLayer::new(Subset::deterministic(RoundRobin::new(), 8, 11, 50).unwrap())
        .layer(set.clone());
    let subset = |svc: &Balance<_, usize, Backend>| -> BTreeSet<usize> {
        svc.stats().iter().map(|s| s.key).collect()
    };
    let before = subset(&svc);

    // An endpoint outside the subset leaves, another joins far away: nothing changes or, at
    // most, the arc gains the newcomer.
    let outside = (0..100).find(|id| !before.contains(id)).unwrap();
    set.remove(&outside);
    assert_eq!(subset(&svc), before);

    // One inside leaves: the arc takes the next endpoint of the ring instead, or the client is
    // dealt anew; either way it keeps 8 endpoints, none of them the one that left.
    let inside = *before.iter().next().unwrap();
    set.remove(&inside);
    let after = subset(&svc);
    assert_eq!(after.len(), 8);
    assert!(!after.contains(&inside));

    // It comes back: the subset is what it was, since subsets depend on membership alone.
    set.insert(inside, fleet.backend(inside));
    set.insert(outside, fleet.backend(outside));
    assert_eq!(subset(&svc), before);
}

#[tokio::test]
async fn a_restarted_client_gets_the_same_subset_and_so_does_any_insertion_order() {
    let fleet = Fleet::default();
    let forward = Endpoints::from_iter((0..60).map(|id| (id, fleet.backend(id))));
    let backward = Endpoints::from_iter((0..60).rev().map(|id| (id, fleet.backend(id))));
    for strategy in [
        Subset::deterministic(RoundRobin::new(), 5, 7, 30).unwrap(),
        Subset::random(RoundRobin::new(), 5, 42).unwrap(),
    ] {
        let subset = |set: &Endpoints<usize, Backend>| -> BTreeSet<usize> {
            let svc = BalanceLayer::new(strategy.clone()).layer(set.clone());
            svc.stats().iter().map(|s| s.key).collect()
        };
        let first = subset(&forward);
        assert_eq!(first.len(), 5);
        assert_eq!(subset(&forward), first);
        assert_eq!(subset(&backward), first);
    }
}

#[tokio::test]
async fn a_subset_with_ejected_members_spreads_over_the_rest_of_the_subset_only() {
    let fleet = Fleet::default();
    let set = Endpoints::from_iter((0..50).map(|id| (id, fleet.backend(id))));
    let svc = BalanceLayer::new(Subset::deterministic(RoundRobin::new(), 6, 0, 10).unwrap())
        .outlier_detection(eject_at_once())
        .layer(set);
    let members: Vec<usize> = svc.stats().iter().map(|s| s.key).collect();
    eject(&fleet, &svc, &members[..2]).await;

    send(&svc, 400).await;
    let hits = fleet.reset();
    let expected: BTreeSet<usize> = members[2..].iter().copied().collect();
    assert_eq!(hits.keys().copied().collect::<BTreeSet<_>>(), expected);
    assert!(hits.values().all(|&c| c == 100), "{hits:?}");
}

#[tokio::test]
async fn backups_take_nothing_while_tier_0_is_healthy() {
    let fleet = Fleet::default();
    let svc = BalanceLayer::new(Tiers::new(RoundRobin::new()))
        .outlier_detection(eject_at_once())
        .layer(tiered(&fleet, 10, 2));

    send(&svc, 1000).await;
    let hits = fleet.reset();
    assert_eq!(hits.len(), 10, "{hits:?}");
    assert!(hits.values().all(|&c| c == 100), "{hits:?}");

    // 3 of 10 lost: 70% left, 98% of capacity at factor 1.4; tier 1 takes the 2% short.
    eject(&fleet, &svc, &[0, 1, 2]).await;
    send(&svc, 10_000).await;
    let spill = share(&fleet.reset(), |id| id >= 1000);
    assert!((spill - 0.02).abs() < 0.001, "{spill}");
}

#[tokio::test(start_paused = true)]
async fn tiers_spill_by_the_overprovisioning_rule_and_take_traffic_back_on_return() {
    let fleet = Fleet::default();
    let svc = BalanceLayer::new(Tiers::new(RoundRobin::new()))
        .outlier_detection(eject_at_once())
        .layer(tiered(&fleet, 20, 4));

    // Half of tier 0 ejected: it carries min(1, 1.4 × 0.5) = 70%.
    eject(&fleet, &svc, &(0..10).collect::<Vec<_>>()).await;
    send(&svc, 20_000).await;
    let hits = fleet.reset();
    let spill = share(&hits, |id| id >= 1000);
    assert!((spill - 0.3).abs() < 0.003, "{spill}");
    // Within each tier, the survivors share evenly.
    for (id, &count) in &hits {
        let expected = if *id >= 1000 { 1500 } else { 1400 };
        assert!(count.abs_diff(expected) <= 2, "{id}: {count}: {hits:?}");
    }
    assert!(hits.keys().all(|&id| id >= 10));

    // The ejections end: tier 0 is whole again and takes everything back.
    tokio::time::advance(Duration::from_secs(3601)).await;
    send(&svc, 2_000).await;
    fleet.reset();
    send(&svc, 2_000).await;
    let hits = fleet.reset();
    assert_eq!(share(&hits, |id| id >= 1000), 0.0, "{hits:?}");
    assert_eq!(hits.len(), 20);
}

#[tokio::test]
async fn the_overprovisioning_factor_is_configurable() {
    let fleet = Fleet::default();
    let strategy = Tiers::new(RoundRobin::new()).overprovisioning(1.0).unwrap();
    let svc = BalanceLayer::new(strategy)
        .outlier_detection(eject_at_once())
        .layer(tiered(&fleet, 10, 2));
    // Factor 1: one endpoint of ten lost, 10% spills.
    eject(&fleet, &svc, &[4]).await;
    send(&svc, 10_000).await;
    let spill = share(&fleet.reset(), |id| id >= 1000);
    assert!((spill - 0.1).abs() < 0.001, "{spill}");
}

#[tokio::test]
async fn a_locality_set_by_discovery_or_the_handle_moves_an_endpoint_between_tiers() {
    let fleet = Fleet::default();
    let set = Endpoints::new();
    set.apply([
        Update::from(Change::Insert(1, fleet.backend(1))),
        Update::InsertLocated(2, fleet.backend(2), 1, Locality::backup()),
    ]);
    let svc = BalanceLayer::new(Tiers::new(RoundRobin::new())).layer(set.clone());
    send(&svc, 10).await;
    assert_eq!(fleet.reset(), HashMap::from([(1, 10)]));

    set.apply([Update::SetLocality(2, Locality::new())]);
    set.set_locality(&1, Locality::backup().with_tier(3));
    send(&svc, 10).await;
    assert_eq!(fleet.reset(), HashMap::from([(2, 10)]));
    assert_eq!(set.locality(&1).unwrap().tier(), 3);

    // Replacing the service or the weight keeps the locality.
    set.insert(1, fleet.backend(1));
    set.insert_weighted(2, fleet.backend(2), 5).unwrap();
    assert_eq!(set.locality(&1).unwrap().tier(), 3);
    assert_eq!(set.locality(&2).unwrap(), Locality::new());
}

#[tokio::test]
async fn zone_aware_clients_keep_what_envoys_rule_allows_in_their_zone() {
    let fleet = Fleet::default();
    let set = zoned(&fleet, 100);
    let shares = [("a", 40.0), ("b", 40.0), ("c", 20.0)];
    let mut local = HashMap::new();
    for zone in ["a", "b", "c"] {
        let strategy = ZoneAware::new(RoundRobin::new(), zone)
            .client_shares(shares)
            .unwrap();
        let svc = BalanceLayer::new(strategy).layer(set.clone());
        send(&svc, 10_000).await;
        let hits = fleet.reset();
        local.insert(zone, share(&hits, |id| zone_of(id) == zone));
        if zone == "b" {
            // Its 25% cross-zone goes to a, the only zone with capacity to spare.
            assert_eq!(share(&hits, |id| zone_of(id) == "c"), 0.0);
        }
    }
    assert_eq!(local["a"], 1.0);
    assert!((local["b"] - 0.75).abs() < 0.001, "{local:?}");
    assert_eq!(local["c"], 1.0);
}

#[tokio::test]
async fn without_client_shares_clients_are_taken_to_be_spread_as_the_endpoints() {
    let fleet = Fleet::default();
    let svc = BalanceLayer::new(ZoneAware::new(RoundRobin::new(), "b")).layer(zoned(&fleet, 20));
    send(&svc, 600).await;
    let hits = fleet.reset();
    assert_eq!(share(&hits, |id| zone_of(id) == "b"), 1.0);
    assert!(hits.values().all(|&c| c == 100), "{hits:?}");
}

#[tokio::test]
async fn a_zone_losing_capacity_spills_and_below_the_threshold_zones_are_ignored() {
    let fleet = Fleet::default();
    let set = zoned(&fleet, 100);
    let strategy = ZoneAware::new(RoundRobin::new(), "a")
        .client_shares([("a", 50.0), ("b", 30.0), ("c", 20.0)])
        .unwrap();
    let svc = BalanceLayer::new(strategy)
        .outlier_detection(eject_at_once())
        .layer(set);
    send(&svc, 1000).await;
    assert_eq!(share(&fleet.reset(), |id| zone_of(id) == "a"), 1.0);

    // 10 of a's 50 lost: a has 40 of 90 eligible (44.4%) for 50% of the clients, so it keeps
    // 44.4 / 50 = 88.9% and spills the rest to b and c, by their spare capacity (b 33.3 - 30,
    // c 22.2 - 20: 3.33 to 2.22).
    let lost: Vec<usize> = (0..100).filter(|&id| zone_of(id) == "a").take(10).collect();
    eject(&fleet, &svc, &lost).await;
    send(&svc, 20_000).await;
    let hits = fleet.reset();
    let kept = share(&hits, |id| zone_of(id) == "a");
    assert!((kept - 0.8889).abs() < 0.002, "{kept}");
    let to_b = share(&hits, |id| zone_of(id) == "b");
    assert!((to_b - 0.0667).abs() < 0.002, "{to_b}");

    // 30 of 50 lost: a's eligible share (40%) is below the 50% threshold: every eligible
    // endpoint takes the same share, wherever it is.
    let more: Vec<usize> = (0..100)
        .filter(|&id| zone_of(id) == "a")
        .skip(10)
        .take(20)
        .collect();
    eject(&fleet, &svc, &more).await;
    send(&svc, 14_000).await;
    let hits = fleet.reset();
    let kept = share(&hits, |id| zone_of(id) == "a");
    let mut by_id: Vec<_> = hits.iter().collect();
    by_id.sort();
    assert!((kept - 20.0 / 70.0).abs() < 0.002, "{kept} {by_id:?}");
    assert_eq!(hits.len(), 70);
}

#[tokio::test]
async fn client_shares_change_at_runtime() {
    let fleet = Fleet::default();
    let svc = BalanceLayer::new(ZoneAware::new(RoundRobin::new(), "c")).layer(zoned(&fleet, 50));
    send(&svc, 100).await;
    assert_eq!(share(&fleet.reset(), |id| zone_of(id) == "c"), 1.0);

    // Now 40% of the clients are said to be in c, which has 20% of the endpoints: half stays.
    svc.strategy()
        .set_client_shares([("a", 30.0), ("b", 30.0), ("c", 40.0)])
        .unwrap();
    send(&svc, 10_000).await;
    let kept = share(&fleet.reset(), |id| zone_of(id) == "c");
    assert!((kept - 0.5).abs() < 0.002, "{kept}");
    assert!(svc.strategy().set_client_shares([("a", -1.0)]).is_err());
    assert!(svc.strategy().set_client_shares([("a", 0.0)]).is_err());
}

#[tokio::test]
async fn a_random_strategy_inside_a_zone_stays_in_the_zone() {
    let fleet = Fleet::default();
    let svc = BalanceLayer::new(ZoneAware::new(PowerOfTwoChoices::seeded(3), "a"))
        .layer(zoned(&fleet, 30));
    send(&svc, 3000).await;
    let hits = fleet.reset();
    assert_eq!(share(&hits, |id| zone_of(id) == "a"), 1.0);
    assert_eq!(hits.len(), 15);
}

#[tokio::test]
async fn tiers_of_zones_split_by_tier_then_by_zone() {
    let fleet = Fleet::default();
    let set = Endpoints::new();
    set.apply((0..20).map(|id| {
        let locality = Locality::new()
            .with_zone(if id % 2 == 0 { "a" } else { "b" })
            .with_tier(u8::from(id >= 10));
        Update::InsertLocated(id, fleet.backend(id), 1, locality)
    }));
    let strategy = Tiers::new(ZoneAware::new(RoundRobin::new(), "b"));
    let svc = BalanceLayer::new(strategy).layer(set);
    send(&svc, 500).await;
    let hits = fleet.reset();
    // Tier 0 only, zone b only (its share of the endpoints equals its share of the clients).
    let expected: BTreeSet<usize> = (0..10).filter(|id| id % 2 == 1).collect();
    assert_eq!(hits.keys().copied().collect::<BTreeSet<_>>(), expected);
    assert!(hits.values().all(|&c| c == 100), "{hits:?}");
}

#[test]
fn settings_out_of_range_are_refused() {
    assert_eq!(
        ZoneAware::new((), "a")
            .fallback_below(1.5)
            .unwrap_err()
            .option(),
        "fallback share"
    );
    assert!(ZoneAware::new((), "a").fallback_below(0.0).is_ok());
    assert_eq!(
        ZoneAware::new((), "a")
            .client_shares([("a", f64::NAN)])
            .unwrap_err()
            .option(),
        "client share"
    );
    assert_eq!(
        Subset::random((), 0, 1).unwrap_err().to_string(),
        "invalid subset size: must be at least 1, got 0"
    );
}
