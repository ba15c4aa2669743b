//! What a balancer tells about its endpoints: per-endpoint statistics and the key map of the keyed
//! strategies.

use std::{
    fmt,
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use crate::{
    snapshot::{Shared, Snapshot},
    state::ProbeState,
    strategy::{internal::Table, Strategy},
};

/// One endpoint's statistics: see [`Balance::stats`](crate::Balance::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats<K> {
    /// The endpoint's key.
    pub key: K,
    /// Its weight.
    pub weight: u32,
    /// Requests routed to it.
    pub picks: u64,
    /// Requests in flight on it, as the load-aware strategies count them (0 under the others).
    pub in_flight: usize,
    /// Failures recorded by outlier detection (0 without it).
    pub failures: u64,
    /// How much longer it stays ejected, if it is.
    pub ejected_for: Option<Duration>,
    /// What its active health checks found, if a [health checker](crate::health::HealthCheck)
    /// probes it (or did).
    pub probe: Option<ProbeStats>,
}

/// What the active health checks found of one endpoint: see
/// [`HealthCheck`](crate::health::HealthCheck).
///
/// The counts are kept with the endpoint, so they last across the checker's restarts; with several
/// checkers over one set, they count every checker's probes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeStats {
    /// Whether the probes let the endpoint take requests: no checker finds it down. Outlier
    /// detection may still eject it ([`EndpointStats::ejected_for`]).
    pub healthy: bool,
    /// Probes finished: passed, failed, timed out or panicked.
    pub probes: u64,
    /// Probes that did not pass.
    pub failed_probes: u64,
    /// When the last probe finished, on the system clock; `None` before the first.
    pub last_probe_at: Option<SystemTime>,
    /// Whether the last probe passed; `None` before the first.
    pub last_passed: Option<bool>,
    /// Why the last probe did not pass (the probe's error, a timeout, a panic); `None` if it
    /// passed.
    pub last_error: Option<String>,
    /// The current run of passed probes (0 after a failure).
    pub consecutive_passes: u32,
    /// The current run of failed probes (0 after a pass).
    pub consecutive_failures: u32,
}

impl ProbeStats {
    fn of(probe: &ProbeState) -> Option<Self> {
        let record = probe.record()?;
        Some(Self {
            healthy: probe.down.load(Ordering::Relaxed) == 0,
            probes: record.probes,
            failed_probes: record.failed,
            last_probe_at: record.last_at,
            last_passed: record.last_at.map(|_| record.last_error.is_none()),
            last_error: record.last_error,
            consecutive_passes: record.consecutive_passes,
            consecutive_failures: record.consecutive_failures,
        })
    }
}

/// Every endpoint's statistics in the current snapshot of `shared`, in set order.
pub(crate) fn stats<St, K, S>(shared: &Shared<St, K, S>) -> Vec<EndpointStats<K>>
where
    St: Strategy<K>,
    K: Clone,
{
    let snapshot = shared.load();
    snapshot
        .members
        .list
        .iter()
        .map(|m| EndpointStats {
            key: m.key.clone(),
            weight: m.weight,
            picks: m.state.picks.get(),
            in_flight: m.state.requests(),
            failures: m.state.health.failures.load(Ordering::Relaxed),
            ejected_for: shared
                .health
                .as_ref()
                .and_then(|health| health.ejected_for(&m.state.health)),
            probe: ProbeStats::of(&m.state.probe),
        })
        .collect()
}

/// How a keyed strategy maps request keys to endpoints, for one membership snapshot: see
/// [`Balance::key_map`](crate::Balance::key_map).
pub struct KeyMap<St, K, S>
where
    St: Strategy<K>,
{
    shared: Arc<Shared<St, K, S>>,
    snapshot: Arc<Snapshot<St::Table, K, S>>,
}

impl<St, K, S> KeyMap<St, K, S>
where
    St: Strategy<K>,
{
    /// The key map of the current snapshot of `shared`.
    pub(crate) fn new(shared: Arc<Shared<St, K, S>>) -> Self {
        let snapshot = shared.load_full();
        Self { shared, snapshot }
    }

    /// The key of the endpoint that `key` is routed to when every endpoint is available (and,
    /// with bounded loads, none is full). `None` for keyless strategies and empty sets.
    ///
    /// Costs a hash of the key and one table lookup: no lock, no allocation.
    #[inline]
    pub fn endpoint_for_key(&self, key: impl AsRef<[u8]>) -> Option<&K> {
        let hash = self.shared.strategy.key_hash(key.as_ref())?;
        let (members, table) = (&self.snapshot.members.list, &self.snapshot.table);
        // A keyed table has no positions for an empty set, nor when it could not be built.
        if table.span(members.len()) == 0 {
            return None;
        }
        let index = table.first_candidate(members, table.position(hash));
        Some(&members[index].key)
    }

    /// The number of endpoints in the snapshot.
    pub fn len(&self) -> usize {
        self.snapshot.members.len()
    }

    /// Whether the snapshot has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<St, K, S> fmt::Debug for KeyMap<St, K, S>
where
    St: Strategy<K> + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMap")
            .field("strategy", &self.shared.strategy)
            .field("endpoints", &self.len())
            .finish()
    }
}
