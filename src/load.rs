//! In-flight accounting for the strategies that balance on load.

use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc, OnceLock,
};

use crate::state::{EndpointState, Latency};

/// Counts one request against an endpoint (and maybe its set) until it is dropped, so that a
/// completed, failed or cancelled request releases its count alike.
///
/// Public only to appear in the strategies' internal trait; it cannot be reached from outside the
/// crate.
#[derive(Debug)]
pub struct InFlight(Count);

#[derive(Debug)]
enum Count {
    /// An exact count, for capacity checks: the endpoint's counter and the set's.
    Exact {
        endpoint: Arc<EndpointState>,
        total: Option<Arc<AtomicUsize>>,
    },
    /// A count by reference: holding the endpoint's latency cell is being counted. With timing,
    /// the estimate's decay rate and when the request was sent (0 until it is).
    Held {
        latency: Arc<Latency>,
        timing: Option<(f64, u64)>,
    },
}

impl InFlight {
    /// Counts a request against `endpoint` if that leaves it at most `capacity` requests in
    /// flight, and against its set; `None` if the endpoint is full.
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
        Some(Self(Count::Exact {
            endpoint: Arc::clone(endpoint),
            total: Some(Arc::clone(total)),
        }))
    }

    /// Counts a request against `endpoint` and its set whatever their loads.
    pub(crate) fn acquire_with_total(
        endpoint: &Arc<EndpointState>,
        total: &Arc<AtomicUsize>,
    ) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
        total.fetch_add(1, Ordering::AcqRel);
        Self(Count::Exact {
            endpoint: Arc::clone(endpoint),
            total: Some(Arc::clone(total)),
        })
    }

    /// Counts a request against `endpoint` by holding its latency cell: one reference-count
    /// update each way.
    pub(crate) fn hold(endpoint: &EndpointState) -> Self {
        Self(Count::Held {
            latency: Arc::clone(&endpoint.load),
            timing: None,
        })
    }

    /// Also measures the request's round trip, from [`InFlight::sent`] to its end, into the
    /// endpoint's peak-EWMA estimate with decay rate `rate` (the inverse of the decay period in
    /// nanoseconds). Only for held counts.
    pub(crate) fn timed(mut self, rate: f64) -> Self {
        if let Count::Held { timing, .. } = &mut self.0 {
            *timing = Some((rate, 0));
        }
        self
    }

    /// The response arrived: records its round trip if timed, then releases the count, as
    /// dropping it does. Out of line, so that the release stays out of the caller's fast path.
    #[inline(never)]
    pub(crate) fn complete(self) {
        drop(self);
    }

    /// The request was sent to the endpoint: a timed count starts its clock. A reservation
    /// dropped before its request was sent records nothing.
    #[inline]
    pub(crate) fn sent(mut self) -> Self {
        if let Count::Held {
            timing: Some((_, sent)),
            ..
        } = &mut self.0
        {
            *sent = now();
        }
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        match &self.0 {
            Count::Exact { endpoint, total } => {
                endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
                if let Some(total) = total {
                    total.fetch_sub(1, Ordering::AcqRel);
                }
            }
            // Completed or cancelled alike: a request dropped before its response (by a timeout
            // in front of the balancer, say) still waited this long, and an endpoint that stops
            // answering must look slow to peak EWMA rather than unmeasured.
            Count::Held {
                latency,
                timing: Some((rate, sent)),
            } if *sent != 0 => {
                let at = now();
                record_rtt(latency, at.saturating_sub(*sent) as f64, at, *rate);
            }
            Count::Held { .. } => {}
        }
    }
}

/// The latest reading of [`now`], for reads that can do with a recent time rather than the
/// current one.
static RECENT: AtomicU64 = AtomicU64::new(1);

/// Nanoseconds on a monotonic clock shared by the whole process, starting near 1.
///
/// The clock is quanta's: the CPU's time-stamp counter where it is invariant, scaled to
/// nanoseconds, and the operating system's monotonic clock elsewhere. Timing a request takes two
/// readings, and a counter read costs about half of a `std::time::Instant::now` through the vDSO;
/// measured, that is most of peak EWMA's cost over counting in-flight requests.
pub(crate) fn now() -> u64 {
    let (clock, epoch) = clock();
    let now = clock.delta_as_nanos(*epoch, clock.raw()) + 1;
    // A plain store: concurrent readings may land out of order, which only makes `recent` a
    // little older than it could be.
    RECENT.store(now, Ordering::Relaxed);
    now
}

/// The process's clock and its raw reading at the start. Calibrating the counter takes a few
/// milliseconds the first time, so peak-EWMA configuration calls this before any request does.
pub(crate) fn clock() -> &'static (quanta::Clock, u64) {
    static CLOCK: OnceLock<(quanta::Clock, u64)> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let clock = quanta::Clock::new();
        let epoch = clock.raw();
        (clock, epoch)
    })
}

/// The latest time any request was timed at: a clock reading without reading the clock, behind
/// the current time by at most the gap between two timed requests. Good enough to decay a
/// latency estimate whose decay period is seconds.
pub(crate) fn recent() -> u64 {
    RECENT.load(Ordering::Relaxed)
}

/// `e^(-elapsed * rate)`, with a cheap series for the common case of an elapsed time far below
/// the decay period `1 / rate` (relative error below 10⁻¹⁰ there). A rate rather than a period
/// keeps divisions off the request path.
fn decay_factor(elapsed: f64, rate: f64) -> f64 {
    let x = elapsed * rate;
    if x < 1e-3 {
        1.0 - x + 0.5 * x * x
    } else {
        (-x).exp()
    }
}

/// Folds a round trip into the endpoint's peak-EWMA estimate, as Finagle's and tower's `PeakEwma`
/// do: a slower sample replaces the estimate at once, a faster one pulls it down in proportion
/// to the time elapsed since the last update. Concurrent updates may overwrite each other; the
/// estimate stays one of the samples' results, which is all a load estimate needs.
pub(crate) fn record_rtt(endpoint: &Latency, rtt_ns: f64, at: u64, rate: f64) {
    let previous = f64::from_bits(endpoint.rtt.load(Ordering::Relaxed));
    let estimate = if previous == 0.0 || rtt_ns > previous {
        rtt_ns
    } else {
        let elapsed = at.saturating_sub(endpoint.rtt_at.load(Ordering::Relaxed)) as f64;
        let weight = decay_factor(elapsed, rate);
        previous * weight + rtt_ns * (1.0 - weight)
    };
    endpoint
        .rtt
        .store(estimate.max(1.0).to_bits(), Ordering::Relaxed);
    endpoint.rtt_at.store(at, Ordering::Relaxed);
}

/// The endpoint's round-trip estimate at `at`: `default_ns` before its first sample, then the
/// last estimate decayed towards zero (at `rate` per nanosecond) with the time since, so that an
/// endpoint that has been avoided for a while gets tried again.
pub(crate) fn rtt_estimate(endpoint: &Latency, at: u64, default_ns: f64, rate: f64) -> f64 {
    let estimate = f64::from_bits(endpoint.rtt.load(Ordering::Relaxed));
    if estimate == 0.0 {
        return default_ns;
    }
    let elapsed = at.saturating_sub(endpoint.rtt_at.load(Ordering::Relaxed)) as f64;
    estimate * decay_factor(elapsed, rate)
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
    fn decay_factor_matches_exp() {
        for x in [0.0f64, 1e-9, 1e-5, 9.99e-4, 1e-3, 0.5, 3.0, 50.0] {
            let exact = (-x).exp();
            assert!(
                (decay_factor(x * 1e9, 1e-9) - exact).abs() <= 1e-9 * exact.max(1e-300),
                "{x}"
            );
        }
    }

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays_towards_faster_samples() {
        let endpoint = Latency::default();
        assert_eq!(rtt_estimate(&endpoint, 10, 5e6, 1e-9), 5e6);
        record_rtt(&endpoint, 1e6, 100, 1e-9);
        record_rtt(&endpoint, 4e6, 200, 1e-9);
        assert_eq!(rtt_estimate(&endpoint, 200, 5e6, 1e-9), 4e6);
        // A faster sample one decay period later pulls the estimate most of the way down.
        record_rtt(&endpoint, 1e6, 200 + 1_000_000_000, 1e-9);
        let estimate = rtt_estimate(&endpoint, 200 + 1_000_000_000, 5e6, 1e-9);
        let expected = 4e6 * (-1.0f64).exp() + 1e6 * (1.0 - (-1.0f64).exp());
        assert!(
            (estimate - expected).abs() < 1.0,
            "{estimate} vs {expected}"
        );
        // An estimate left alone decays towards zero: by e^-10 over ten decay periods.
        let later = rtt_estimate(&endpoint, 200 + 11_000_000_000, 5e6, 1e-9);
        assert!(
            (later - estimate * (-10.0f64).exp()).abs() < 1e-3,
            "{later}"
        );
    }

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
        let unbounded = InFlight::acquire_with_total(&endpoint, &total);
        assert_eq!(total.load(Ordering::SeqCst), 1);
        drop(unbounded);
        assert_eq!(total.load(Ordering::SeqCst), 0);
        let held = [
            InFlight::hold(&endpoint),
            InFlight::hold(&endpoint).timed(1e-9).sent(),
        ];
        assert_eq!(endpoint.requests(), 2);
        let [first, second] = held;
        drop(first);
        second.complete();
        assert_eq!(endpoint.requests(), 0);
        assert!(f64::from_bits(endpoint.load.rtt.load(Ordering::SeqCst)) > 0.0);
    }

    #[test]
    fn a_cancelled_request_records_how_long_it_waited_and_an_unsent_one_nothing() {
        let endpoint = Arc::new(EndpointState::default());
        // A reservation dropped before its request was sent measures nothing.
        drop(InFlight::hold(&endpoint).timed(1e-9));
        assert_eq!(
            f64::from_bits(endpoint.load.rtt.load(Ordering::SeqCst)),
            0.0
        );

        let held = InFlight::hold(&endpoint).timed(1e-9).sent();
        let waited = std::time::Instant::now();
        while waited.elapsed() < std::time::Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        // Dropped without a response, as a timeout drops a response future.
        drop(held);
        assert_eq!(endpoint.requests(), 0);
        let rtt = f64::from_bits(endpoint.load.rtt.load(Ordering::SeqCst));
        assert!(rtt >= 1.5e6, "recorded {rtt} ns");
    }
}
