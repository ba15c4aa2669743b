//! Health checks: passive (outlier ejection, panic mode, slow start) and active (probes).
//!
//! # Passive health
//!
//! With [`BalanceLayer::outlier_detection`](crate::BalanceLayer::outlier_detection), the balancer
//! watches every request's outcome. A failure is an error from the endpoint (its response future
//! or its `poll_ready`), or a response that the [classifier](Classify) calls one, such as an HTTP
//! 5xx with [`ServerErrors`]. After `k` consecutive failures (default 5) an endpoint is ejected:
//! no strategy routes to it for a base time (default 10 s) that doubles with every ejection in a
//! row, up to a cap (default 300 s). A success after its return clears both counts. At most a
//! share of the set (default 50%, and always at least one endpoint) is ejected at once.
//!
//! Every strategy skips ejected endpoints the way it skips unavailable ones: keyless strategies go
//! to their next choice, spreading the ejected endpoint's share over the others, keyed strategies
//! to the key's next candidates, so only the ejected endpoint's keys move, and they come back when
//! the ejection ends.
//!
//! # Abandoned requests
//!
//! A timeout above the balancer (`tower::timeout`, a deadline in the caller) gives up on a
//! request by dropping its response future: the endpoint never answered, yet it returned no
//! error either. Such a request counts as a failure when it was dropped at least
//! [`abandoned_after`](OutlierDetectionBuilder::abandoned_after) (default 1 s) after it was sent
//! to its endpoint, as Envoy counts its own request timeouts against the host. So a backend
//! that accepts requests and never answers is ejected after `k` timeouts in a row, and its keys
//! move to their next candidates, instead of taking every request for its keys forever.
//!
//! The default is on, at 1 s, because the two ways of getting it wrong cost very differently. A
//! stalled backend that is never counted keeps its keys, or its turns, for as long as it stalls;
//! a healthy one whose callers cancel requests (a client going away, a lost race) is ejected
//! only when `k` of its requests in a row are dropped after the deadline with no answer in
//! between, since any success clears the count, and then only for the ejection time and within
//! the ejected share. 1 s is beyond what most requests take and below the timeouts commonly put
//! above a balancer (1 to 30 s). Set it just below your own timeout when that is shorter, longer
//! for endpoints whose answers normally take seconds (long polls), or turn it off with
//! [`ignore_abandoned`](OutlierDetectionBuilder::ignore_abandoned). Dropping a request before
//! it was sent (while it waits for a ready endpoint) never counts, and nor does dropping a
//! response's body: the response future is done once the response's head arrives.
//!
//! # Panic mode
//!
//! When no endpoint is eligible, the balancer is in *panic mode*: by default it routes over all of
//! them as if none were ejected (a likely-wrong ejection is better than no service); with
//! [`OutlierDetectionBuilder::fail_when_all_ejected`] requests fail at once with
//! [`Unavailable`](crate::error::Unavailable) instead.
//!
//! With [`OutlierDetectionBuilder::slow_start`], an endpoint returning from ejection (or newly
//! inserted) gets its share ramped up linearly over a window: the load-aware strategies
//! ([`PowerOfTwoChoices`](crate::strategy::PowerOfTwoChoices)) scale its weight, the other keyless
//! strategies let it take each of its turns with the same probability (a turn it passes goes to
//! the strategy's next choice). Keyed strategies do not ramp: a key's endpoint is its endpoint.
//!
//! The counts, the ejection state and the per-endpoint statistics live beside the endpoint set:
//! every clone of a balancer, and every balancer over the same set, sees and feeds the same ones.
//! See [`Balance::stats`](crate::Balance::stats).
//!
//! # Active health
//!
//! Passive health learns from requests, so some requests always pay for what it learns, and an
//! endpoint without traffic (a new one, one whose keys are cold, one just back from ejection) is
//! assumed healthy. With the `health-check` feature, a [`HealthCheck`] probes every endpoint of a
//! set from a task you spawn ([`Endpoints::check_health`](crate::Endpoints::check_health)),
//! without request traffic, and takes out the endpoints its [probes](probe) find down: HTTP
//! requests, the gRPC health protocol (feature `tonic`), TCP connects, or any closure. An
//! endpoint takes requests only while both agree: its probes find it up, and outlier detection
//! has not ejected it. Probe results show in [`Balance::stats`](crate::Balance::stats)
//! ([`ProbeStats`](crate::ProbeStats)) and in `tracing` events when an endpoint goes out or
//! comes back.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_lb::{health::OutlierDetection, strategy::RoundRobin, BalanceLayer, Endpoints};
//!
//! # tokio_test::block_on(async {
//! let healthy = service_fn(|_req: ()| async { Ok::<_, tower_lb::BoxError>("healthy") });
//! let broken = service_fn(|_req: ()| async { Err::<&str, _>(tower_lb::BoxError::from("down")) });
//! let set = Endpoints::from_iter([
//!     ("a", tower::util::BoxCloneSyncService::new(healthy)),
//!     ("b", tower::util::BoxCloneSyncService::new(broken)),
//! ]);
//! let detection = OutlierDetection::builder()
//!     .consecutive_failures(2)
//!     .base_ejection_time(Duration::from_secs(30))
//!     .build()
//!     .unwrap();
//! let balance = BalanceLayer::new(RoundRobin::new())
//!     .outlier_detection(detection)
//!     .layer(set.clone());
//!
//! for _ in 0..4 {
//!     let _ = balance.clone().oneshot(()).await;
//! }
//! // After two failures in a row, b is ejected: every request now goes to a.
//! for _ in 0..4 {
//!     assert_eq!(balance.clone().oneshot(()).await.unwrap(), "healthy");
//! }
//! let stats = balance.stats();
//! assert!(stats[1].ejected_for.is_some());
//! assert_eq!(stats[1].failures, 2);
//! # });
//! ```

use std::{
    fmt,
    time::{Duration, Instant},
};

use crate::error::InvalidConfig;

#[cfg(feature = "health-check")]
mod active;
#[cfg(feature = "health-check")]
#[cfg_attr(docsrs, doc(cfg(feature = "health-check")))]
pub mod probe;

#[cfg(feature = "health-check")]
#[cfg_attr(docsrs, doc(cfg(feature = "health-check")))]
pub use self::active::{Checker, HealthCheck, HealthCheckBuilder};

/// Tells which responses count as failures for outlier detection. Errors always do.
pub trait Classify<Res> {
    /// Whether this (successful) response is a failure of the endpoint.
    fn is_failure(&self, response: &Res) -> bool;
}

/// Counts only errors as failures: every response is a success. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Errors;

impl<Res> Classify<Res> for Errors {
    fn is_failure(&self, _response: &Res) -> bool {
        false
    }
}

/// Counts HTTP responses with a 5xx status as failures, besides errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrors;

impl<B> Classify<http::Response<B>> for ServerErrors {
    fn is_failure(&self, response: &http::Response<B>) -> bool {
        response.status().is_server_error()
    }
}

impl<F, Res> Classify<Res> for F
where
    F: Fn(&Res) -> bool,
{
    fn is_failure(&self, response: &Res) -> bool {
        self(response)
    }
}

/// Settings of passive health checking; see the [module docs](self).
///
/// [`OutlierDetection::new`] gives the defaults; [`OutlierDetection::builder`] changes them, and
/// checks them together when it builds.
#[derive(Clone)]
pub struct OutlierDetection {
    pub(crate) consecutive_failures: u32,
    pub(crate) base: Duration,
    pub(crate) max: Duration,
    pub(crate) max_ejected: f64,
    pub(crate) panic: bool,
    pub(crate) slow_start: Option<Duration>,
    pub(crate) abandoned_after: Option<Duration>,
    pub(crate) clock: fn() -> Instant,
}

impl OutlierDetection {
    /// Ejects after 5 consecutive failures, for 10 s doubling up to 300 s, at most 50% of the
    /// set; counts requests abandoned 1 s or more after they were sent as failures; routes over
    /// every endpoint when all are ejected; no slow start.
    pub fn new() -> Self {
        Self {
            consecutive_failures: 5,
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            max_ejected: 0.5,
            panic: true,
            slow_start: None,
            abandoned_after: Some(Duration::from_secs(1)),
            clock: Instant::now,
        }
    }

    /// Settings that start from the defaults of [`OutlierDetection::new`].
    pub fn builder() -> OutlierDetectionBuilder {
        OutlierDetectionBuilder {
            settings: Self::new(),
        }
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self::new()
    }
}

/// Changes the settings of [`OutlierDetection`] from their defaults; [`build`] checks them all at
/// once.
///
/// [`build`]: OutlierDetectionBuilder::build
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::OutlierDetection;
///
/// let detection = OutlierDetection::builder()
///     .consecutive_failures(3)
///     .base_ejection_time(Duration::from_secs(30))
///     .max_ejection_time(Duration::from_secs(600))
///     .build()
///     .unwrap();
/// # let _ = detection;
///
/// let error = OutlierDetection::builder()
///     .base_ejection_time(Duration::from_secs(60))
///     .max_ejection_time(Duration::from_secs(30))
///     .build()
///     .unwrap_err();
/// assert_eq!(error.option(), "max ejection time");
/// ```
#[derive(Clone, Debug)]
pub struct OutlierDetectionBuilder {
    settings: OutlierDetection,
}

impl OutlierDetectionBuilder {
    /// Ejects an endpoint after `k` consecutive failures (at least 1; default 5).
    pub fn consecutive_failures(mut self, k: u32) -> Self {
        self.settings.consecutive_failures = k;
        self
    }

    /// The first ejection lasts `base` (more than zero, at most the maximum; default 10 s); each
    /// further ejection in a row doubles it.
    pub fn base_ejection_time(mut self, base: Duration) -> Self {
        self.settings.base = base;
        self
    }

    /// Caps the ejection time (at least the base; default 300 s).
    pub fn max_ejection_time(mut self, max: Duration) -> Self {
        self.settings.max = max;
        self
    }

    /// The largest share of the set ejected at once, from 0 to 1 (default 0.5). At least one
    /// endpoint may always be ejected.
    pub fn max_ejected_share(mut self, share: f64) -> Self {
        self.settings.max_ejected = share;
        self
    }

    /// When every endpoint is ejected, fail requests with
    /// [`Unavailable`](crate::error::Unavailable) instead of routing over all of them.
    pub fn fail_when_all_ejected(mut self) -> Self {
        self.settings.panic = false;
        self
    }

    /// Ramps an endpoint's share up linearly over `window` (more than zero; from 5%) after it
    /// returns from ejection or joins the set, for the keyless strategies; see the
    /// [module docs](self).
    pub fn slow_start(mut self, window: Duration) -> Self {
        self.settings.slow_start = Some(window);
        self
    }

    /// Counts a request as a failure when its response future is dropped at least `deadline`
    /// after the request was sent to its endpoint, before the response arrived (default 1 s):
    /// a timeout above the balancer gave up on it. See [abandoned requests](self#abandoned-requests).
    /// A deadline of zero counts every request dropped after it was sent.
    pub fn abandoned_after(mut self, deadline: Duration) -> Self {
        self.settings.abandoned_after = Some(deadline);
        self
    }

    /// Does not count abandoned requests: only errors and the responses the classifier calls
    /// failures count.
    pub fn ignore_abandoned(mut self) -> Self {
        self.settings.abandoned_after = None;
        self
    }

    /// The clock ejection times and abandoned requests' deadlines are measured on (default
    /// `Instant::now`). Tests that run on
    /// tokio's paused clock pass `|| tokio::time::Instant::now().into_std()`.
    pub fn clock(mut self, clock: fn() -> Instant) -> Self {
        self.settings.clock = clock;
        self
    }

    /// Checks the settings together.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`], naming the first setting out of its range: consecutive failures of 0, a
    /// zero base ejection time, a maximum below the base, a share outside 0 to 1 (or not a
    /// number), a zero slow start window.
    pub fn build(self) -> Result<OutlierDetection, InvalidConfig> {
        let s = self.settings;
        if s.consecutive_failures == 0 {
            return Err(InvalidConfig::new("consecutive failures", "at least 1", 0));
        }
        if s.base.is_zero() {
            return Err(InvalidConfig::new(
                "base ejection time",
                "more than zero",
                "0s",
            ));
        }
        if s.max < s.base {
            return Err(InvalidConfig::new(
                "max ejection time",
                "at least the base ejection time",
                format_args!("{:?} (base {:?})", s.max, s.base),
            ));
        }
        if !(0.0..=1.0).contains(&s.max_ejected) {
            return Err(InvalidConfig::new(
                "max ejected share",
                "between 0 and 1",
                s.max_ejected,
            ));
        }
        if s.slow_start.is_some_and(|window| window.is_zero()) {
            return Err(InvalidConfig::new(
                "slow start window",
                "more than zero",
                "0s",
            ));
        }
        Ok(s)
    }
}

impl fmt::Debug for OutlierDetection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutlierDetection")
            .field("consecutive_failures", &self.consecutive_failures)
            .field("base", &self.base)
            .field("max", &self.max)
            .field("max_ejected", &self.max_ejected)
            .field("panic", &self.panic)
            .field("slow_start", &self.slow_start)
            .field("abandoned_after", &self.abandoned_after)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_together_in_any_order() {
        let long = Duration::from_secs(600);
        // The maximum first, then a base below it: fine, whatever the order.
        let ok = OutlierDetection::builder()
            .max_ejection_time(long)
            .base_ejection_time(Duration::from_secs(30))
            .build()
            .unwrap();
        assert_eq!((ok.base, ok.max), (Duration::from_secs(30), long));

        let cases = [
            (
                OutlierDetection::builder().consecutive_failures(0),
                "consecutive failures",
            ),
            (
                OutlierDetection::builder().base_ejection_time(Duration::ZERO),
                "base ejection time",
            ),
            (
                OutlierDetection::builder().max_ejection_time(Duration::from_secs(1)),
                "max ejection time",
            ),
            (
                OutlierDetection::builder().max_ejected_share(1.5),
                "max ejected share",
            ),
            (
                OutlierDetection::builder().max_ejected_share(f64::NAN),
                "max ejected share",
            ),
            (
                OutlierDetection::builder().slow_start(Duration::ZERO),
                "slow start window",
            ),
        ];
        for (builder, option) in cases {
            assert_eq!(builder.build().unwrap_err().option(), option);
        }
    }
}
