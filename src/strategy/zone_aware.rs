use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use super::{
    internal::{Access, Build},
    split::{arrange_groups, check_ratio, Rule, Split},
};
use crate::{endpoints::Member, error::InvalidConfig};

/// Envoy's `min_cluster_size`: fewer eligible endpoints than this, and zones are ignored.
const DEFAULT_MIN_ENDPOINTS: usize = 6;
/// Below this eligible share of its own endpoints, the local zone is not preferred.
const DEFAULT_FALLBACK_BELOW: f64 = 0.5;

/// Zone-aware routing: requests stay in the client's own zone as far as that zone can take them
/// without loading its endpoints more than the others, and the rest spill to the zones with
/// capacity to spare, following Envoy's rule; any keyless strategy balances within a zone.
///
/// An endpoint's zone is its [`Locality`](crate::Locality)'s, set when it is inserted or by
/// discovery; endpoints without one form a zone of their own that is never local. The client
/// gives its own zone and how the client fleet is spread over the zones
/// ([`ZoneAware::client_shares`]); without that, the clients are taken to be spread as the
/// endpoints are.
///
/// # The rule
///
/// With `c(z)` the share of clients in zone `z` and `e(z)` the share of the eligible endpoint
/// weight in zone `z` (eligible: not ejected, not found down by probes), a client in zone `L`:
///
/// - sends everything to `L` if `e(L) >= c(L)`: its zone has at least its clients' share of the
///   capacity;
/// - otherwise keeps `e(L) / c(L)` of its requests in `L`, and sends the rest to the other zones
///   in proportion to their spare capacity `e(z) - c(z)` (those with none get nothing; if no zone
///   has any, in proportion to `e(z)`).
///
/// If every client follows it, every endpoint receives the same load, and the share of requests
/// that stay in their zone is `Σ min(c(z), e(z))`, the most any routing that keeps the endpoints
/// evenly loaded can keep. With 40/40/20% of the clients and 50/30/20% of the endpoints in zones
/// a, b and c, clients in a and c keep everything local, clients in b keep 75% and send 25% to
/// a, and 90% of all requests stay in their zone. The fleet simulation (`examples/fleet`: 10,000
/// clients, 1,000 backends) measures 90.000%, every backend's load within 0.1% of the mean.
///
/// Zones are ignored (every eligible endpoint is used, in proportion to its weight) when:
///
/// - the client's zone has no eligible endpoint, or there is only one zone;
/// - fewer endpoints than [`min_endpoints`](ZoneAware::min_endpoints) (default 6, Envoy's
///   `min_cluster_size`) are eligible;
/// - the eligible share of the client's own zone has fallen below
///   [`fallback_below`](ZoneAware::fallback_below) (default 50%): a zone that lost half its
///   endpoints is likely in trouble, and spreading its clients' requests over every zone protects
///   them from what comes next.
///
/// Envoy computes the shares in hundredths of a percent and from host counts; here they are
/// exact (to 2<sup>-32</sup>) and count endpoint weights. The split follows ejections, returns
/// and probe results as requests meet them, with no scan per request, and a change of the
/// client shares ([`ZoneAware::set_client_shares`]) within the next few thousand requests.
///
/// # Examples
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{strategy::{RoundRobin, ZoneAware}, BalanceLayer, Endpoints, Locality};
///
/// # tokio_test::block_on(async {
/// let backend = |zone: &'static str| service_fn(move |_req: ()| async move {
///     Ok::<_, std::convert::Infallible>(zone)
/// });
/// let set = Endpoints::new();
/// for (i, zone) in ["a", "a", "a", "a", "a", "b", "b", "b", "c", "c"].into_iter().enumerate() {
///     set.insert_located(i, backend(zone), Locality::new().with_zone(zone));
/// }
///
/// // A client in zone b, where 40% of the clients but 30% of the endpoints are.
/// let strategy = ZoneAware::new(RoundRobin::new(), "b")
///     .client_shares([("a", 40.0), ("b", 40.0), ("c", 20.0)])
///     .unwrap();
/// let balance = BalanceLayer::new(strategy).layer(set);
///
/// let mut local = 0;
/// for _ in 0..1000 {
///     if balance.clone().oneshot(()).await.unwrap() == "b" {
///         local += 1;
///     }
/// }
/// // 30 / 40 of its requests stay in b; the rest go to a, which has capacity to spare.
/// assert!((745..=755).contains(&local), "{local}");
/// # });
/// ```
#[derive(Clone)]
pub struct ZoneAware<St> {
    inner: St,
    config: Arc<Config>,
}

/// The clients' shares per zone, normalized.
type Spread = Vec<(Arc<str>, f64)>;

/// What a zone-aware client knows; shared by its balancer's tables.
#[derive(Debug)]
struct Config {
    local: Arc<str>,
    min_endpoints: usize,
    fallback_below: f64,
    /// The clients' shares per zone, normalized; `None`: spread as the endpoints are.
    clients: RwLock<Option<Spread>>,
    /// Bumped by every change of `clients`.
    version: AtomicU64,
}

impl Clone for Config {
    fn clone(&self) -> Self {
        Self {
            local: Arc::clone(&self.local),
            min_endpoints: self.min_endpoints,
            fallback_below: self.fallback_below,
            clients: RwLock::new(self.clients()),
            version: AtomicU64::new(0),
        }
    }
}

impl Config {
    fn clients(&self) -> Option<Spread> {
        self.clients
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl<St> ZoneAware<St> {
    /// A client in zone `zone` balancing with `inner` within zones; the client fleet is taken to
    /// be spread over the zones as the endpoints are until [`ZoneAware::client_shares`] says
    /// otherwise.
    pub fn new(inner: St, zone: impl Into<Arc<str>>) -> Self {
        Self {
            inner,
            config: Arc::new(Config {
                local: zone.into(),
                min_endpoints: DEFAULT_MIN_ENDPOINTS,
                fallback_below: DEFAULT_FALLBACK_BELOW,
                clients: RwLock::new(None),
                version: AtomicU64::new(0),
            }),
        }
    }

    /// How the clients of this service are spread over the zones: each zone's number of clients,
    /// or any weight proportional to it (an estimate will do). Zones left out have no clients.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if a weight is negative or not finite, or none is positive.
    pub fn client_shares<I, Z>(self, shares: I) -> Result<Self, InvalidConfig>
    where
        I: IntoIterator<Item = (Z, f64)>,
        Z: Into<Arc<str>>,
    {
        self.set_client_shares(shares)?;
        Ok(self)
    }

    /// Changes how the clients are spread over the zones, for the balancer whose strategy this
    /// is (see [`Balance::strategy`](crate::Balance::strategy)): its split follows within a few
    /// thousand requests. As [`ZoneAware::client_shares`].
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if a weight is negative or not finite, or none is positive; the shares
    /// are left unchanged.
    pub fn set_client_shares<I, Z>(&self, shares: I) -> Result<(), InvalidConfig>
    where
        I: IntoIterator<Item = (Z, f64)>,
        Z: Into<Arc<str>>,
    {
        let mut merged: Spread = Vec::new();
        for (zone, weight) in shares {
            let weight = check_ratio(
                "client share",
                "a finite number of at least 0",
                weight,
                |w| w >= 0.0,
            )?;
            let zone = zone.into();
            match merged.iter_mut().find(|(z, _)| *z == zone) {
                Some((_, w)) => *w += weight,
                None => merged.push((zone, weight)),
            }
        }
        let sum: f64 = merged.iter().map(|(_, w)| w).sum();
        if !(sum > 0.0 && sum.is_finite()) {
            return Err(InvalidConfig::new(
                "client shares",
                "weights with a positive, finite sum",
                sum,
            ));
        }
        merged.iter_mut().for_each(|(_, w)| *w /= sum);
        *self
            .config
            .clients
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(merged);
        self.config.version.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Ignores zones when fewer than `min` endpoints are eligible (default 6, Envoy's
    /// `min_cluster_size`).
    pub fn min_endpoints(mut self, min: usize) -> Self {
        Arc::make_mut(&mut self.config).min_endpoints = min;
        self
    }

    /// Ignores zones when the eligible share of the client's own zone (its eligible endpoint
    /// weight over all its endpoint weight) falls below `share` (default 0.5); 0 never does.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] unless `share` is between 0 and 1.
    pub fn fallback_below(mut self, share: f64) -> Result<Self, InvalidConfig> {
        let share = check_ratio("fallback share", "between 0 and 1", share, |s| {
            (0.0..=1.0).contains(&s)
        })?;
        Arc::make_mut(&mut self.config).fallback_below = share;
        Ok(self)
    }

    /// The client's zone.
    pub fn zone(&self) -> &str {
        &self.config.local
    }

    /// The strategy that balances within a zone.
    pub fn inner(&self) -> &St {
        &self.inner
    }
}

impl<St: fmt::Debug> fmt::Debug for ZoneAware<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZoneAware")
            .field("zone", &self.config.local)
            .field("client_shares", &self.config.clients())
            .field("min_endpoints", &self.config.min_endpoints)
            .field("fallback_below", &self.config.fallback_below)
            .field("inner", &self.inner)
            .finish()
    }
}

/// Envoy's zone-aware split for one snapshot's zones. Public only to name it in a strategy's
/// table; it cannot be reached from outside the crate.
#[derive(Debug)]
pub struct LocalFirst {
    config: Arc<Config>,
    /// Each group's zone.
    zones: Box<[Option<Arc<str>>]>,
    /// The group of the client's zone.
    local: Option<usize>,
}

impl Rule for LocalFirst {
    fn shares(&self, eligible: &[u64], total: &[u64], shares: &mut [f64]) {
        // Nothing eligible: split as a healthy set would, and let panic mode decide.
        let eligible = if eligible.iter().all(|&e| e == 0) {
            total
        } else {
            eligible
        };
        let sum = eligible.iter().sum::<u64>() as f64;
        let endpoints = |z: usize| eligible[z] as f64 / sum;
        for (z, share) in shares.iter_mut().enumerate() {
            *share = endpoints(z);
        }
        let config = &self.config;
        let Some(local) = self.local else {
            return;
        };
        let healthy = eligible[local] as f64 / total[local] as f64;
        if shares.len() < 2
            || eligible[local] == 0
            || sum < config.min_endpoints as f64
            || healthy < config.fallback_below
        {
            return;
        }
        // Looked up per zone rather than collected: the request that recomputes the split must
        // not allocate.
        let spread = config
            .clients
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let all = total.iter().sum::<u64>() as f64;
        let clients = |z: usize| match &*spread {
            Some(spread) => self.zones[z].as_ref().map_or(0.0, |name| {
                spread
                    .iter()
                    .find(|(zone, _)| zone == name)
                    .map_or(0.0, |s| s.1)
            }),
            None => total[z] as f64 / all,
        };
        if endpoints(local) >= clients(local) {
            shares.iter_mut().for_each(|s| *s = 0.0);
            shares[local] = 1.0;
            return;
        }
        let kept = endpoints(local) / clients(local);
        let spare = |z: usize| {
            if z == local {
                0.0
            } else {
                (endpoints(z) - clients(z)).max(0.0)
            }
        };
        let spare_sum: f64 = (0..shares.len()).map(spare).sum();
        let others = 1.0 - endpoints(local);
        for (z, share) in shares.iter_mut().enumerate() {
            *share = if z == local {
                kept
            } else if spare_sum > 0.0 {
                (1.0 - kept) * spare(z) / spare_sum
            } else {
                (1.0 - kept) * endpoints(z) / others
            };
        }
    }

    fn version(&self) -> u64 {
        self.config.version.load(Ordering::Acquire)
    }
}

/// The order of zones in a snapshot: by name, endpoints without a zone last.
fn zone_order<K, S>(a: &Member<K, S>, b: &Member<K, S>) -> std::cmp::Ordering {
    let (a, b) = (a.locality.zone(), b.locality.zone());
    (a.is_none(), a).cmp(&(b.is_none(), b))
}

impl<K, St: Build<K>> Build<K> for ZoneAware<St> {
    type Table = Split<St::Table, LocalFirst>;

    fn build<S>(&self, members: &[Member<K, S>]) -> Self::Table {
        let mut zones: Vec<Option<Arc<str>>> = Vec::new();
        for member in members {
            let zone = member.locality.zone();
            if zones.is_empty() || zones.last().map(Option::as_deref) != Some(zone) {
                zones.push(zone.map(Arc::from));
            }
        }
        let local = zones
            .iter()
            .position(|zone| zone.as_deref() == Some(&*self.config.local));
        Split::new(
            members,
            |a, b| a.locality.zone() == b.locality.zone(),
            |range| self.inner.build(range),
            // A walk falls through to the local zone first, then to the others.
            |groups| {
                let mut order: Vec<usize> = local.into_iter().collect();
                order.extend((0..groups).filter(|&g| Some(g) != local));
                order
            },
            LocalFirst {
                config: Arc::clone(&self.config),
                zones: zones.into_boxed_slice(),
                local,
            },
        )
    }

    fn arrange<S>(&self, members: &[Member<K, S>], order: &mut Vec<u32>) {
        arrange_groups(members, order, zone_order, |members, run| {
            self.inner.arrange(members, run)
        });
    }

    #[inline]
    fn settled(&self, steps: usize, access: Access) {
        // The inner strategy's cursor only chooses zones: each zone counts its own turns (see
        // the split's docs), so passed-over turns are spent there.
        let _ = (steps, access);
    }

    super::inner_build_methods!();
}

super::inner_start!(ZoneAware);

#[cfg(test)]
mod tests {
    use super::*;

    /// The split of a client in `local` among zones a, b, c (and one without a name).
    fn split(
        strategy: &ZoneAware<()>,
        zones: &[Option<&str>],
        eligible: &[u64],
        total: &[u64],
    ) -> Vec<f64> {
        let zones: Vec<Option<Arc<str>>> = zones.iter().map(|z| z.map(Arc::from)).collect();
        let local = zones
            .iter()
            .position(|z| z.as_deref() == Some(strategy.zone()));
        let rule = LocalFirst {
            config: Arc::clone(&strategy.config),
            zones: zones.into_boxed_slice(),
            local,
        };
        let mut shares = vec![0.0; total.len()];
        rule.shares(eligible, total, &mut shares);
        shares
            .iter()
            .map(|s| (s * 10_000.0).round() / 10_000.0)
            .collect()
    }

    const ABC: [Option<&str>; 3] = [Some("a"), Some("b"), Some("c")];

    #[test]
    fn envoys_rule_keeps_what_the_local_capacity_allows_and_spills_by_spare_capacity() {
        let b = ZoneAware::new((), "b")
            .client_shares([("a", 40.0), ("b", 40.0), ("c", 20.0)])
            .unwrap();
        let all = [50, 30, 20];
        assert_eq!(split(&b, &ABC, &all, &all), [0.25, 0.75, 0.0]);
        // Envoy's documented example: 40/40/20 clients over 25/50/25 endpoints, from a.
        let a = ZoneAware::new((), "a")
            .client_shares([("a", 40.0), ("b", 40.0), ("c", 20.0)])
            .unwrap();
        let quarters = [25, 50, 25];
        assert_eq!(split(&a, &ABC, &quarters, &quarters), [0.625, 0.25, 0.125]);
        // Enough capacity at home: everything stays.
        assert_eq!(split(&a, &ABC, &all, &all), [1.0, 0.0, 0.0]);
    }

    #[test]
    fn zones_are_ignored_when_the_rule_cannot_apply() {
        let a = ZoneAware::new((), "a");
        // The client's zone is not among the endpoints' (or has no name): by eligible weight.
        let x = ZoneAware::new((), "x");
        assert_eq!(split(&x, &ABC, &[5, 3, 2], &[5, 3, 2]), [0.5, 0.3, 0.2]);
        // Nothing eligible at home.
        assert_eq!(split(&a, &ABC, &[0, 6, 4], &[5, 6, 4]), [0.0, 0.6, 0.4]);
        // Fewer than 6 eligible endpoints; with 5 allowed, a has capacity for its clients.
        assert_eq!(split(&a, &ABC, &[3, 1, 1], &[5, 3, 2]), [0.6, 0.2, 0.2]);
        assert_eq!(
            split(&a.clone().min_endpoints(5), &ABC, &[3, 1, 1], &[5, 3, 2]),
            [1.0, 0.0, 0.0]
        );
        // Below half of the local zone eligible; at exactly half, the rule applies.
        assert_eq!(
            split(&a, &ABC, &[24, 30, 20], &[50, 30, 20]),
            [0.3243, 0.4054, 0.2703]
        );
        assert_eq!(
            split(&a, &ABC, &[25, 30, 20], &[50, 30, 20]),
            [0.6667, 0.2, 0.1333]
        );
        // Nothing eligible anywhere: split as if all were.
        assert_eq!(split(&a, &ABC, &[0, 0, 0], &[50, 30, 20]), [1.0, 0.0, 0.0]);
        // Endpoints without a zone count as a zone with no clients.
        let zones = [Some("a"), None];
        assert_eq!(split(&a, &zones, &[5, 5], &[5, 5]), [1.0, 0.0]);
    }
}
