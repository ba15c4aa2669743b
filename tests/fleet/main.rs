//! The fleet simulation of `examples/fleet` at reduced scale (1,000 clients, 100 backends in
//! three zones, subsets of 16: the full run's ratios), with the bars it must meet asserted. The
//! figures are deterministic: the clients are real balancers driven one request at a time, and
//! what varies between runs (where a rotation starts) cancels out over whole rotations.

#[allow(dead_code)]
#[path = "../../examples/fleet/sim.rs"]
mod sim;

use sim::{Report, Scale};

fn report() -> &'static Report {
    static REPORT: std::sync::OnceLock<Report> = std::sync::OnceLock::new();
    REPORT.get_or_init(|| sim::run(&Scale::REDUCED))
}

#[test]
fn deterministic_subsets_load_every_backend_alike_and_each_client_calls_at_most_its_subset() {
    let r = &report().deterministic;
    assert!(r.most_called <= Scale::REDUCED.subset, "{r:?}");
    assert!(r.connections.max <= 1.02, "{r:?}");
    assert!(r.requests.max <= 1.05, "{r:?}");
    // Beside them, random subsets of the same size band: some backends in far more subsets.
    let random = &report().random;
    assert!(random.most_called <= Scale::REDUCED.subset, "{random:?}");
    assert!(random.connections.max > 1.1, "{random:?}");
}

#[test]
fn one_backend_leaving_moves_at_most_twice_the_clients_that_held_it() {
    let r = &report().deterministic;
    // clients × subset / backends hold a given backend; twice that may change.
    assert_eq!(r.one_leaves_bar, 2 * 1_000 * 16 / 100);
    assert!(r.one_leaves.clients <= r.one_leaves_bar, "{r:?}");
    // Subsets are a function of membership: the backend coming back restores them all.
    assert!(r.restored, "{r:?}");
    // And of the client's identity: restarted clients get the subsets they had.
    assert_eq!(r.restart_10pct.clients, 0, "{r:?}");
    assert!(r.join_1pct.clients <= r.one_leaves_bar, "{r:?}");
}

#[test]
fn zone_aware_clients_load_every_backend_alike_and_keep_the_most_the_rule_allows_local() {
    let z = &report().zones;
    assert!(z.loads.max <= 1.05, "{z:?}");
    // 40/40/20% of clients over 50/30/20% of backends: min(40, 50) + min(40, 30) + min(20, 20).
    assert!((z.allowed - 0.9).abs() < 1e-9);
    assert!((z.in_zone - z.allowed).abs() < 0.002, "{z:?}");
}

#[test]
fn backups_take_nothing_from_a_healthy_tier_0_and_the_overprovisioning_share_from_half_of_one() {
    let t = &report().tiers;
    assert_eq!(t.healthy_backup_requests, 0, "{t:?}");
    assert!((t.expected_spill - 0.3).abs() < 1e-9);
    // Within 1% of the rule's share.
    assert!(
        (t.spill - t.expected_spill).abs() <= 0.01 * t.expected_spill,
        "{t:?}"
    );
}
