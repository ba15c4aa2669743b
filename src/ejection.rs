//! The runtime side of outlier detection: per-endpoint health state and the ejection logic.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crate::{health::OutlierDetection, rng::Rng};

/// The health state of one endpoint, kept beside its other counters.
#[derive(Debug, Default)]
pub(crate) struct EndpointHealth {
    /// Failures in a row.
    consecutive: AtomicU32,
    /// Failures in all.
    pub(crate) failures: AtomicU64,
    /// Ejections in a row, for the doubling.
    ejections: AtomicU32,
    /// When the current ejection ends, in nanoseconds since `Health::epoch` (plus one); 0 when
    /// the endpoint was never ejected or has succeeded since.
    ejected_until: AtomicU64,
    /// When the endpoint joined the set or last returned from ejection (plus one); 0 if unknown.
    pub(crate) since: AtomicU64,
}

/// Outlier detection as a balancer runs it: the settings and the epoch of its clock.
#[derive(Debug)]
pub struct Health {
    config: OutlierDetection,
    epoch: Instant,
}

impl Health {
    pub(crate) fn new(config: OutlierDetection) -> Self {
        Self {
            epoch: (config.clock)(),
            config,
        }
    }

    /// Now, on the configured clock, in nanoseconds since the epoch plus one (never 0).
    pub(crate) fn now(&self) -> u64 {
        (self.config.clock)()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
            + 1
    }

    /// When a request is sent, for abandoned requests: now, or 0 if they do not count.
    #[inline]
    pub(crate) fn sent_at(&self) -> u64 {
        if self.config.abandoned_after.is_some() {
            self.now()
        } else {
            0
        }
    }

    /// Whether a request sent at `sent_at` (see [`Health::sent_at`]) and dropped now, before its
    /// response, was abandoned after its deadline.
    pub(crate) fn is_abandoned(&self, sent_at: u64) -> bool {
        self.config.abandoned_after.is_some_and(|deadline| {
            self.now().saturating_sub(sent_at) >= deadline.as_nanos() as u64
        })
    }

    pub(crate) fn slow_starts(&self) -> bool {
        self.config.slow_start.is_some()
    }

    pub(crate) fn panics(&self) -> bool {
        self.config.panic
    }

    /// Whether `endpoint` is ejected at `now`. Reads the clock only for endpoints that have been
    /// ejected, so healthy sets pay one atomic load.
    #[inline]
    pub(crate) fn is_ejected(&self, endpoint: &EndpointHealth) -> bool {
        let until = endpoint.ejected_until.load(Ordering::Acquire);
        until != 0 && self.now() < until
    }

    /// Records a request's outcome on `endpoint`, one of `set`, ejecting it if this failure
    /// makes `k` in a row and the ejected share of the set allows.
    pub(crate) fn record<'a>(
        &self,
        endpoint: &EndpointHealth,
        failed: bool,
        set: impl Iterator<Item = &'a EndpointHealth> + Clone,
    ) {
        let health = endpoint;
        if !failed {
            health.consecutive.store(0, Ordering::Relaxed);
            if health.ejected_until.load(Ordering::Acquire) != 0 {
                // A success after returning: the next ejection starts from the base time again.
                health.ejections.store(0, Ordering::Relaxed);
                health.ejected_until.store(0, Ordering::Release);
            }
            return;
        }
        health.failures.fetch_add(1, Ordering::Relaxed);
        let in_a_row = health.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if in_a_row < self.config.consecutive_failures || self.is_ejected(endpoint) {
            return;
        }
        let now = self.now();
        let total = set.clone().count();
        let ejected = set
            .filter(|e| {
                let until = e.ejected_until.load(Ordering::Acquire);
                until != 0 && now < until
            })
            .count();
        let allowed = ((self.config.max_ejected * total as f64).floor() as usize).max(1);
        if ejected >= allowed {
            return;
        }
        let repeats = health.ejections.fetch_add(1, Ordering::AcqRel).min(31);
        let time = self
            .config
            .base
            .saturating_mul(1u32 << repeats.min(20))
            .min(self.config.max);
        health.consecutive.store(0, Ordering::Relaxed);
        let until = now + time.as_nanos() as u64;
        health.ejected_until.store(until, Ordering::Release);
        health.since.store(until, Ordering::Relaxed);
        tracing::info!(
            ejection_time = ?time,
            consecutive_failures = in_a_row,
            "ejecting an endpoint"
        );
    }

    /// The weight factor of slow start at `now`: from a small share up to 1 over the window after
    /// the endpoint's last return.
    pub(crate) fn slow_start_factor(&self, endpoint: &EndpointHealth) -> f64 {
        let Some(window) = self.config.slow_start else {
            return 1.0;
        };
        let since = endpoint.since.load(Ordering::Relaxed);
        if since == 0 {
            return 1.0;
        }
        let elapsed = self.now().saturating_sub(since) as f64;
        (elapsed / window.as_nanos() as f64).clamp(0.05, 1.0)
    }

    /// Slow start for the strategies that pick without looking at load: whether `endpoint`, the
    /// strategy's choice, takes this request. During its window an endpoint takes each of its
    /// turns with a probability equal to its slow-start factor; a turn it passes goes to the
    /// strategy's next choice, as if it were not ready.
    #[inline]
    pub(crate) fn admits(&self, endpoint: &EndpointHealth) -> bool {
        if self.config.slow_start.is_none() {
            return true;
        }
        let factor = self.slow_start_factor(endpoint);
        let draw = (Rng::per_thread().next() >> 11) as f64 / (1u64 << 53) as f64;
        factor >= 1.0 || draw < factor
    }

    /// Marks an endpoint as joining now, for slow start.
    pub(crate) fn joined(&self, endpoint: &EndpointHealth) {
        if self.config.slow_start.is_some() {
            let _ = endpoint.since.compare_exchange(
                0,
                self.now(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// How long the endpoint stays ejected from now, if it is.
    pub(crate) fn ejected_for(&self, endpoint: &EndpointHealth) -> Option<Duration> {
        let until = endpoint.ejected_until.load(Ordering::Acquire);
        let now = self.now();
        (until != 0 && now < until).then(|| Duration::from_nanos(until - now))
    }
}
