use std::{
    fmt,
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};

use super::{
    internal::{Access, Begin, Build, Start, Table},
    DRAWS,
};
use crate::{
    ejection::Health,
    endpoints::Member,
    error::InvalidConfig,
    load::{self, InFlight},
    rng::{below, redraw, Rng},
};

/// Power of two choices: each request draws two distinct endpoints at random and goes to the
/// less loaded one (Mitzenmacher), which keeps the busiest endpoint's load close to the mean
/// without a global scan, and steers traffic away from slow endpoints.
///
/// The load is, by default, the endpoint's requests in flight; with
/// [`peak_ewma`](PowerOfTwoChoices::peak_ewma), its peak-EWMA round-trip estimate times its
/// requests in flight plus one, as tower's `PeakEwma` measures it. Either is divided by the
/// endpoint's weight, so an endpoint of weight 2 is chosen until it carries twice the load. The
/// counts and estimates belong to the endpoint set: every clone of the balancer, and every
/// balancer over the same set, sees the same loads. A request counts from the moment its endpoint
/// is reserved in `poll_ready` until its response completes or its future is dropped.
///
/// With a single endpoint, it is used. Ejected endpoints lose every comparison, and a choice that
/// is ejected or not ready is passed over for a new pair of draws (after 16 pairs, the endpoints
/// that follow in set order): requests go to eligible endpoints only, none of them favoured for
/// following an unavailable one.
///
/// Draws come from a fast generator (splitmix64, per thread: no lock, no SipHash);
/// [`PowerOfTwoChoices::seeded`] draws from one sequence shared by the clones instead, which
/// replays the same draws, for reproducible tests.
///
/// # Differences from `tower::balance::p2c`
///
/// tower's balancer needs each endpoint wrapped in a load-measuring service and its balancer
/// behind a `Buffer` to be shared; it drops an endpoint whose readiness fails. Here the loads are
/// kept beside the endpoint set, shared by all clones, and an endpoint that fails its readiness
/// check is skipped for that request only.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{strategy::PowerOfTwoChoices, BalanceLayer, Endpoints};
///
/// # tokio_test::block_on(async {
/// let backend = |name: &'static str| service_fn(move |_req: ()| async move {
///     Ok::<_, std::convert::Infallible>(name)
/// });
/// let set = Endpoints::from_iter([("a", backend("a")), ("b", backend("b")), ("c", backend("c"))]);
///
/// // Least requests in flight:
/// let balance = BalanceLayer::new(PowerOfTwoChoices::new()).layer(set.clone());
/// balance.oneshot(()).await.unwrap();
///
/// // Least latency-weighted load:
/// let strategy = PowerOfTwoChoices::new()
///     .peak_ewma(Duration::from_millis(30), Duration::from_secs(10))
///     .unwrap();
/// let balance = BalanceLayer::new(strategy).layer(set);
/// balance.oneshot(()).await.unwrap();
/// # });
/// ```
pub struct PowerOfTwoChoices {
    rng: Rng,
    seed: Option<u64>,
    /// With latency: the estimate of an endpoint not yet measured, in ns, and the decay rate, per ns.
    peak_ewma: Option<(f64, f64)>,
}

impl PowerOfTwoChoices {
    /// Balances on requests in flight, with a generator seeded differently for every strategy
    /// and run.
    pub fn new() -> Self {
        Self {
            rng: Rng::per_thread(),
            seed: None,
            peak_ewma: None,
        }
    }

    /// Balances on requests in flight, with a generator seeded with `seed`: the same seed
    /// replays the same draws.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: Rng::seeded(seed),
            seed: Some(seed),
            peak_ewma: None,
        }
    }

    /// Balances on the peak-EWMA round-trip estimate times the requests in flight plus one.
    ///
    /// `default_rtt` is the estimate of an endpoint until its first response; `decay` is how
    /// fast the estimate forgets: a faster response pulls it down by `1 - e^(-elapsed / decay)`
    /// of the difference, a slower one replaces it at once, and an estimate not refreshed for a
    /// while decays towards zero so that the endpoint gets tried again. A request cancelled
    /// before its response (its future dropped, by a timeout for instance) counts as a round
    /// trip of the time it waited, so an endpoint that stops answering looks slow, as with
    /// tower's `PeakEwma`.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if `default_rtt` or `decay` is zero.
    pub fn peak_ewma(
        mut self,
        default_rtt: Duration,
        decay: Duration,
    ) -> Result<Self, InvalidConfig> {
        if default_rtt.is_zero() {
            return Err(InvalidConfig::new("default rtt", "more than zero", "0s"));
        }
        if decay.is_zero() {
            return Err(InvalidConfig::new("decay", "more than zero", "0s"));
        }
        // Calibrate the clock now rather than in the first request.
        load::clock();
        // The decay as a rate, so that the request path multiplies instead of dividing.
        self.peak_ewma = Some((default_rtt.as_nanos() as f64, 1.0 / decay.as_nanos() as f64));
        Ok(self)
    }
}

impl Default for PowerOfTwoChoices {
    fn default() -> Self {
        Self::new()
    }
}

/// A clone starts a fresh generator (with the same seed for a seeded strategy); loads live in
/// the endpoint set, not in the strategy.
impl Clone for PowerOfTwoChoices {
    fn clone(&self) -> Self {
        let rng = match self.seed {
            Some(seed) => Rng::seeded(seed),
            None => Rng::per_thread(),
        };
        Self {
            rng,
            seed: self.seed,
            peak_ewma: self.peak_ewma,
        }
    }
}

impl fmt::Debug for PowerOfTwoChoices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerOfTwoChoices")
            .field("seed", &self.seed)
            .field(
                "load",
                &if self.peak_ewma.is_some() {
                    "peak ewma"
                } else {
                    "in flight"
                },
            )
            .finish()
    }
}

/// What a power-of-two-choices walk compares: the strategy's load measure, copied into each
/// snapshot's table. Public only to name it as the strategy's table; it cannot be reached from
/// outside the crate.
#[derive(Debug)]
pub struct Choices {
    /// With latency: the estimate of an endpoint not yet measured, in ns, and the decay rate, per ns.
    peak_ewma: Option<(f64, f64)>,
}

impl Choices {
    /// Whether `x` is no more loaded than `y`, loads divided by weight (times the slow-start
    /// factors `fx` and `fy`, 1 outside slow start).
    #[inline]
    fn lighter<K, S>(&self, x: &Member<K, S>, y: &Member<K, S>, fx: f64, fy: f64) -> bool {
        match self.peak_ewma {
            None if fx == 1.0 && fy == 1.0 => {
                // Integer cross-multiplication: in_flight / weight without division.
                let load_x = x.state.requests() as u128;
                let load_y = y.state.requests() as u128;
                load_x * u128::from(y.weight) <= load_y * u128::from(x.weight)
            }
            None => {
                let load_x = x.state.requests() as f64;
                let load_y = y.state.requests() as f64;
                load_x * f64::from(y.weight) * fy <= load_y * f64::from(x.weight) * fx
            }
            Some((default_ns, rate)) => {
                let now = load::recent();
                Self::cost(x, now, default_ns, rate) * f64::from(y.weight) * fy
                    <= Self::cost(y, now, default_ns, rate) * f64::from(x.weight) * fx
            }
        }
    }

    /// The peak-EWMA load of `member` (not yet divided by its weight) at time `now`.
    #[inline]
    fn cost<K, S>(member: &Member<K, S>, now: u64, default_ns: f64, rate: f64) -> f64 {
        let in_flight = member.state.requests() as f64;
        load::rtt_estimate(&member.state.load, now, default_ns, rate) * (in_flight + 1.0)
    }

    /// The less loaded of two distinct endpoints drawn from `bits`, an endpoint that may not take
    /// requests (ejected, or down by its probes) losing to one that may.
    #[inline]
    fn choose<K, S>(&self, members: &[Member<K, S>], health: Option<&Health>, bits: u64) -> usize {
        let n = members.len();
        if n == 1 {
            return 0;
        }
        let (a, b) = pair(bits, n);
        let (x, y) = (&members[a], &members[b]);
        // An endpoint that may not take requests loses to one that may.
        let a_wins = match (x.state.is_eligible(health), y.state.is_eligible(health)) {
            (false, true) => false,
            (true, false) => true,
            _ => match health {
                None => self.lighter(x, y, 1.0, 1.0),
                Some(health) => self.lighter(
                    x,
                    y,
                    health.slow_start_factor(&x.state.health),
                    health.slow_start_factor(&y.state.health),
                ),
            },
        };
        if a_wins {
            a
        } else {
            b
        }
    }
}

/// Two distinct indices below `n` (at least 2) from one draw: the high and low halves are
/// independent enough for two indices.
#[inline]
fn pair(bits: u64, n: usize) -> (usize, usize) {
    let a = below(bits.rotate_right(32), n);
    let b = (a + 1 + below(bits, n - 1)) % n;
    (a, b)
}

impl Table for Choices {
    #[inline]
    fn position(&self, bits: u64) -> u64 {
        bits
    }

    fn span(&self, endpoints: usize) -> usize {
        DRAWS + endpoints
    }

    #[inline]
    fn candidate<K, S>(
        &self,
        members: &[Member<K, S>],
        health: Option<&Health>,
        bits: u64,
        step: usize,
    ) -> usize {
        match step {
            0 => self.choose(members, health, bits),
            step if step < DRAWS => self.choose(members, health, redraw(bits, step)),
            // Every pair missed: set order, which meets every endpoint.
            step => (below(bits, members.len()) + step - DRAWS) % members.len(),
        }
    }

    fn ramps(&self) -> bool {
        true
    }
}

impl<K> Build<K> for PowerOfTwoChoices {
    type Table = Choices;

    fn build<S>(&self, _members: &[Member<K, S>]) -> Choices {
        Choices {
            peak_ewma: self.peak_ewma,
        }
    }

    fn key_hash(&self, _key: &[u8]) -> Option<u64> {
        None
    }

    #[inline]
    fn track<S>(&self, member: &Member<K, S>, _total: &Arc<AtomicUsize>) -> Option<InFlight> {
        let in_flight = InFlight::hold(&member.state);
        Some(match self.peak_ewma {
            None => in_flight,
            Some((_, rate)) => in_flight.timed(rate),
        })
    }
}

impl<K, Req> Start<K, Req> for PowerOfTwoChoices {
    #[inline]
    fn start(&self, _request: Option<&Req>, _access: Access) -> Begin {
        Begin::At(self.rng.next())
    }
}
