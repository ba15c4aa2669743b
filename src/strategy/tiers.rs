use std::fmt;

use super::{
    internal::{Access, Build},
    split::{arrange_groups, check_ratio, Rule, Split},
};
use crate::{endpoints::Member, error::InvalidConfig};

/// Envoy's default overprovisioning factor.
const DEFAULT_OVERPROVISIONING: f64 = 1.4;

/// Priority tiers: endpoints of tier 0 take every request while enough of them are healthy, and
/// requests spill to tier 1 (then 2, …) as tier 0's healthy share drops, with any keyless strategy
/// inside each tier.
///
/// An endpoint's tier is its [`Locality`](crate::Locality)'s (0 unless set); nginx's `backup`
/// servers are tier 1 ([`Locality::backup`](crate::Locality::backup)). Healthy means eligible: not
/// ejected by outlier detection and not found down by probes.
///
/// # The split
///
/// Envoy's priority load, with an overprovisioning factor `f` (default 1.4, as Envoy's): a tier
/// whose eligible share of its weight is `h` can carry `min(1, f × h)` of the traffic, so it is
/// considered fully healthy until fewer than `1 / f` (71.4%) of it are left. Tier 0 takes its
/// capacity, tier 1 the rest up to its own capacity, and so on; when the tiers together cannot
/// carry everything, each takes its capacity in proportion (their capacities are scaled to sum to
/// 1). With tier 1 fully healthy:
///
/// | eligible in tier 0 | tier 0 | tier 1 |
/// |---|---|---|
/// | 100% … 72% | 100% | 0 |
/// | 50% | 70% | 30% |
/// | 25% | 35% | 65% |
/// | 0 | 0 | 100% |
///
/// Envoy rounds each tier's capacity down to a whole percent; the shares here are exact (to
/// 2<sup>-32</sup>), so tier 0 keeps 71.4 % … rather than 71 % at 51 % healthy. Shares count
/// weights: an endpoint of weight 2 is twice the capacity of one of weight 1 (Envoy's
/// `weighted_priority_health`). When no endpoint of any tier is eligible, the split is that of a
/// fully healthy set, and the walk routes over the endpoints anyway (panic mode) or fails, as
/// outlier detection is configured.
///
/// A request's tier is drawn from its walk's start, evenly over consecutive requests (see the
/// module docs), and the inner strategy picks within the tier; a request whose endpoints in its
/// tier are all unavailable goes on to the other tiers in order. The split follows ejections,
/// returns and probe results as requests meet them, with no scan per request.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{
///     health::OutlierDetection, strategy::{RoundRobin, Tiers}, BalanceLayer, BoxError, Endpoints,
///     Locality,
/// };
/// use tower::util::BoxCloneSyncService;
///
/// # tokio_test::block_on(async {
/// type Backend = BoxCloneSyncService<(), &'static str, BoxError>;
/// let primary = |name| -> Backend {
///     BoxCloneSyncService::new(service_fn(move |_req: ()| async move { Ok(name) }))
/// };
/// let broken = || -> Backend {
///     BoxCloneSyncService::new(service_fn(|_req: ()| async { Err(BoxError::from("down")) }))
/// };
/// let set = Endpoints::new();
/// set.insert("a", primary("a"));
/// set.insert("b", broken());
/// set.insert_located("spare", primary("spare"), Locality::backup());
///
/// let detection = OutlierDetection::builder().consecutive_failures(1).build().unwrap();
/// let balance = BalanceLayer::new(Tiers::new(RoundRobin::new()))
///     .outlier_detection(detection)
///     .layer(set);
///
/// // Tier 0 is healthy as far as anyone knows: its rotation takes two requests, the backup none.
/// // b fails its request, and is ejected.
/// let answers = [balance.clone().oneshot(()).await, balance.clone().oneshot(()).await];
/// assert_eq!(answers.iter().filter(|a| a.is_err()).count(), 1);
/// let stats = balance.stats();
/// assert_eq!(stats.iter().find(|s| s.key == "spare").unwrap().picks, 0);
/// assert!(stats.iter().find(|s| s.key == "b").unwrap().ejected_for.is_some());
///
/// // Half of tier 0 is left: it carries 1.4 × 50% = 70% of the requests, the backup 30%.
/// let mut spare = 0;
/// for _ in 0..1000 {
///     if balance.clone().oneshot(()).await.unwrap() == "spare" {
///         spare += 1;
///     }
/// }
/// assert!((295..=305).contains(&spare), "{spare}");
/// # });
/// ```
#[derive(Clone)]
pub struct Tiers<St> {
    inner: St,
    overprovisioning: f64,
}

impl<St> Tiers<St> {
    /// Splits requests between tiers with Envoy's default overprovisioning factor, 1.4, and
    /// balances within each tier with `inner`.
    pub fn new(inner: St) -> Self {
        Self {
            inner,
            overprovisioning: DEFAULT_OVERPROVISIONING,
        }
    }

    /// Sets the overprovisioning factor: a tier keeps all its traffic until fewer than `1 / factor`
    /// of its endpoints are eligible. 1 spills as soon as one endpoint is lost.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] unless `factor` is a finite number of at least 1.
    pub fn overprovisioning(mut self, factor: f64) -> Result<Self, InvalidConfig> {
        self.overprovisioning = check_ratio(
            "overprovisioning factor",
            "a finite number of at least 1",
            factor,
            |f| f >= 1.0,
        )?;
        Ok(self)
    }

    /// The strategy that balances within a tier.
    pub fn inner(&self) -> &St {
        &self.inner
    }
}

impl<St: fmt::Debug> fmt::Debug for Tiers<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tiers")
            .field("overprovisioning", &self.overprovisioning)
            .field("inner", &self.inner)
            .finish()
    }
}

/// Envoy's priority load. Public only to name it in a strategy's table; it cannot be reached from
/// outside the crate.
#[derive(Debug)]
pub struct PriorityLoad {
    factor: f64,
}

impl Rule for PriorityLoad {
    fn shares(&self, eligible: &[u64], total: &[u64], shares: &mut [f64]) {
        let health = |t: usize| (self.factor * eligible[t] as f64 / total[t] as f64).min(1.0);
        let sum: f64 = (0..total.len()).map(health).sum();
        shares.iter_mut().for_each(|s| *s = 0.0);
        if sum <= 0.0 {
            // Nothing eligible: split as a healthy set would, and let panic mode decide.
            shares[0] = 1.0;
            return;
        }
        let normalized = sum.min(1.0);
        let mut left = 1.0;
        for (t, share) in shares.iter_mut().enumerate() {
            *share = (health(t) / normalized).min(left);
            left -= *share;
        }
    }
}

impl<K, St: Build<K>> Build<K> for Tiers<St> {
    type Table = Split<St::Table, PriorityLoad>;

    fn build<S>(&self, members: &[Member<K, S>]) -> Self::Table {
        Split::new(
            members,
            |a, b| a.locality.tier() == b.locality.tier(),
            |range| self.inner.build(range),
            |groups| (0..groups).collect(),
            PriorityLoad {
                factor: self.overprovisioning,
            },
        )
    }

    fn arrange<S>(&self, members: &[Member<K, S>], order: &mut Vec<u32>) {
        arrange_groups(
            members,
            order,
            |a, b| a.locality.tier().cmp(&b.locality.tier()),
            |members, run| self.inner.arrange(members, run),
        );
    }

    #[inline]
    fn settled(&self, steps: usize, access: Access) {
        // The inner strategy's cursor only chooses tiers: each tier counts its own turns (see
        // the split's docs), so passed-over turns are spent there.
        let _ = (steps, access);
    }

    super::inner_build_methods!();
}

super::inner_start!(Tiers);

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(factor: f64, eligible: &[u64], total: &[u64]) -> Vec<f64> {
        let mut out = vec![0.0; total.len()];
        PriorityLoad { factor }.shares(eligible, total, &mut out);
        out.iter().map(|s| (s * 1000.0).round() / 1000.0).collect()
    }

    #[test]
    fn envoys_priority_load_examples() {
        // Envoy's documented table, two tiers, tier 1 fully healthy.
        assert_eq!(shares(1.4, &[100, 10], &[100, 10]), [1.0, 0.0]);
        assert_eq!(shares(1.4, &[72, 10], &[100, 10]), [1.0, 0.0]);
        assert_eq!(shares(1.4, &[71, 10], &[100, 10]), [0.994, 0.006]);
        assert_eq!(shares(1.4, &[50, 10], &[100, 10]), [0.7, 0.3]);
        assert_eq!(shares(1.4, &[25, 10], &[100, 10]), [0.35, 0.65]);
        assert_eq!(shares(1.4, &[0, 10], &[100, 10]), [0.0, 1.0]);
        // Not enough capacity anywhere: scaled to sum to 1 (Envoy: 20/40/40 of 10%/20%/20%
        // healthy at factor 1.4 is 14+28+28 = 70, normalized).
        assert_eq!(
            shares(1.4, &[10, 20, 20], &[100, 100, 100]),
            [0.2, 0.4, 0.4]
        );
        // Nothing eligible: tier 0, as if healthy.
        assert_eq!(shares(1.4, &[0, 0], &[5, 5]), [1.0, 0.0]);
        // Factor 1: any loss spills.
        assert_eq!(shares(1.0, &[9, 10], &[10, 10]), [0.9, 0.1]);
    }

    #[test]
    fn the_factor_is_checked() {
        assert!(Tiers::new(()).overprovisioning(1.0).is_ok());
        for bad in [0.99, f64::NAN, f64::INFINITY, -1.0] {
            assert_eq!(
                Tiers::new(()).overprovisioning(bad).unwrap_err().option(),
                "overprovisioning factor"
            );
        }
    }
}
