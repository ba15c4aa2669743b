//! In-flight accounting for the strategies that balance on load.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::Instant,
};

use crate::endpoints::EndpointState;

/// Counts one request against an endpoint and its set until it is dropped, so that a completed,
/// failed or cancelled request releases its count alike.
///
/// Public only to appear in the sealed strategy trait; it cannot be reached from outside the crate.
#[derive(Debug)]
#[allow(unreachable_pub)]
pub struct InFlight {
    endpoint: Arc<EndpointState>,
    total: Arc<AtomicUsize>,
    /// With latency tracking: when the request was reserved, and the estimate's decay period.
    latency: Option<(u64, f64)>,
}

impl InFlight {
    /// Counts a request against `endpoint` if that leaves it at most `capacity` requests in
    /// flight; `None` if it is full.
    pub(crate) fn try_acquire(
        endpoint: &Arc<EndpointState>,
        total: &Arc<AtomicUsize>,
        capacity: usize,
    ) -> Option<Self> {
        endpoint
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()?;
        total.fetch_add(1, Ordering::AcqRel);
        Some(Self {
            endpoint: Arc::clone(endpoint),
            total: Arc::clone(total),
            latency: None,
        })
    }

    /// Counts a request against `endpoint` whatever its load.
    pub(crate) fn acquire(endpoint: &Arc<EndpointState>, total: &Arc<AtomicUsize>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
        total.fetch_add(1, Ordering::AcqRel);
        Self {
            endpoint: Arc::clone(endpoint),
            total: Arc::clone(total),
            latency: None,
        }
    }

    /// Also measures the request's round trip, from now to [`InFlight::complete`], into the
    /// endpoint's peak-EWMA estimate with decay period `decay_ns`.
    pub(crate) fn timed(mut self, decay_ns: f64) -> Self {
        self.latency = Some((now(), decay_ns));
        self
    }

    /// The response arrived: records its round trip if timed, then releases the count.
    pub(crate) fn complete(self) {
        if let Some((sent, decay_ns)) = self.latency {
            let at = now();
            record_rtt(&self.endpoint, at.saturating_sub(sent) as f64, at, decay_ns);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Nanoseconds on a monotonic clock shared by the whole process, starting near 1.
pub(crate) fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64 + 1
}

/// Folds a round trip into the endpoint's peak-EWMA estimate, as Finagle's and tower's `PeakEwma`
/// do: a slower sample replaces the estimate at once, a faster one pulls it down in proportion
/// to the time elapsed since the last update. Concurrent updates may overwrite each other; the
/// estimate stays one of the samples' results, which is all a load estimate needs.
pub(crate) fn record_rtt(endpoint: &EndpointState, rtt_ns: f64, at: u64, decay_ns: f64) {
    let previous = f64::from_bits(endpoint.rtt.load(Ordering::Relaxed));
    let estimate = if previous == 0.0 || rtt_ns > previous {
        rtt_ns
    } else {
        let elapsed = at.saturating_sub(endpoint.rtt_at.load(Ordering::Relaxed)) as f64;
        let weight = (-elapsed / decay_ns).exp();
        previous * weight + rtt_ns * (1.0 - weight)
    };
    endpoint
        .rtt
        .store(estimate.max(1.0).to_bits(), Ordering::Relaxed);
    endpoint.rtt_at.store(at, Ordering::Relaxed);
}

/// The endpoint's round-trip estimate at `at`: `default_ns` before its first sample, then the
/// last estimate decayed towards zero with the time since, so that an endpoint that has been
/// avoided for a while gets tried again.
pub(crate) fn rtt_estimate(
    endpoint: &EndpointState,
    at: u64,
    default_ns: f64,
    decay_ns: f64,
) -> f64 {
    let estimate = f64::from_bits(endpoint.rtt.load(Ordering::Relaxed));
    if estimate == 0.0 {
        return default_ns;
    }
    let elapsed = at.saturating_sub(endpoint.rtt_at.load(Ordering::Relaxed)) as f64;
    estimate * (-elapsed / decay_ns).exp()
}

/// The most requests one of `endpoints` endpoints may have in flight, with `total` in flight over
/// the set before this one, under consistent hashing with bounded loads (Mirrokni, Thorup and
/// Zadimoghaddam): `ceil(factor * (total + 1) / endpoints)`.
pub(crate) fn capacity(factor: f64, total: usize, endpoints: usize) -> usize {
    let mean = (total as f64 + 1.0) / endpoints.max(1) as f64;
    (factor * mean).ceil().max(1.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_the_ceiling_of_factor_times_mean() {
        assert_eq!(capacity(1.25, 0, 4), 1);
        assert_eq!(capacity(1.25, 7, 4), 3);
        assert_eq!(capacity(1.25, 15, 4), 5);
        assert_eq!(capacity(2.0, 99, 100), 2);
    }

    #[test]
    fn guard_counts_until_dropped_and_respects_capacity() {
        let endpoint = Arc::new(EndpointState::default());
        let total = Arc::new(AtomicUsize::new(0));
        let a = InFlight::try_acquire(&endpoint, &total, 2).unwrap();
        let b = InFlight::try_acquire(&endpoint, &total, 2).unwrap();
        assert!(InFlight::try_acquire(&endpoint, &total, 2).is_none());
        assert_eq!(endpoint.in_flight.load(Ordering::SeqCst), 2);
        assert_eq!(total.load(Ordering::SeqCst), 2);
        drop((a, b));
        assert_eq!(endpoint.in_flight.load(Ordering::SeqCst), 0);
        assert_eq!(total.load(Ordering::SeqCst), 0);
        drop(InFlight::acquire(&endpoint, &total));
        assert_eq!(total.load(Ordering::SeqCst), 0);
    }
}
