//! The counters of one endpoint, shared by every snapshot and balancer of its set.

use std::{
    cell::Cell,
    sync::{
        atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::SystemTime,
};

use crate::ejection::{EndpointHealth, Health};

/// Counters of one endpoint, kept across snapshots and across a replacement of its service.
#[derive(Debug, Default)]
pub(crate) struct EndpointState {
    /// Requests counted by the strategies that must cap an endpoint's load exactly (bounded
    /// loads), from routing until the response completes or is dropped.
    pub(crate) in_flight: AtomicUsize,
    /// Held by every request in flight that the load-comparing strategies count: its strong
    /// count less one is their number, so counting a request costs one reference-count update
    /// each way. Also holds the latency estimate those requests feed.
    pub(crate) load: Arc<Latency>,
    /// Requests routed to the endpoint.
    pub(crate) picks: Counter,
    /// Passive health: see [`crate::health`].
    pub(crate) health: EndpointHealth,
    /// Active health: what the endpoint's probes find.
    pub(crate) probe: ProbeState,
}

impl EndpointState {
    /// Whether the endpoint may take requests: its probes, if any, do not find it down, and
    /// outlier detection, if on, has not ejected it.
    #[inline]
    pub(crate) fn is_eligible(&self, health: Option<&Health>) -> bool {
        self.probe.down.load(Ordering::Relaxed) == 0
            && health.is_none_or(|health| !health.is_ejected(&self.health))
    }

    /// All the requests in flight on the endpoint that any strategy counts.
    pub(crate) fn requests(&self) -> usize {
        self.in_flight.load(Ordering::Acquire) + Arc::strong_count(&self.load) - 1
    }
}

/// What the active health checks of an endpoint find: see [`crate::health::HealthCheck`].
#[derive(Debug, Default)]
pub(crate) struct ProbeState {
    /// How many health checkers find the endpoint down: it may take requests only at 0. Each
    /// checker adds one when it takes the endpoint out and takes it back when the endpoint passes
    /// again or the checker ends, so an endpoint is never left out by a checker that is gone.
    pub(crate) down: AtomicU32,
    /// The figures of the statistics, written by the checkers after each probe; `None` until a
    /// checker takes the endpoint up.
    record: Mutex<Option<ProbeRecord>>,
}

impl ProbeState {
    /// Changes the figures of the statistics.
    #[cfg_attr(not(feature = "health-check"), allow(dead_code))]
    pub(crate) fn update(&self, change: impl FnOnce(&mut ProbeRecord)) {
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        change(record.get_or_insert_with(ProbeRecord::default));
    }

    /// The figures of the statistics, if a checker probes the endpoint.
    pub(crate) fn record(&self) -> Option<ProbeRecord> {
        self.record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// An endpoint's probe figures, as the statistics show them.
#[derive(Debug, Default, Clone)]
pub(crate) struct ProbeRecord {
    /// Probes finished (passed, failed, timed out or panicked).
    pub(crate) probes: u64,
    /// Probes that did not pass.
    pub(crate) failed: u64,
    /// When the last probe finished, on the system clock.
    pub(crate) last_at: Option<SystemTime>,
    /// Why the last probe did not pass; `None` if it passed.
    pub(crate) last_error: Option<String>,
    /// The current run of passed probes.
    pub(crate) consecutive_passes: u32,
    /// The current run of failed probes.
    pub(crate) consecutive_failures: u32,
}

/// An endpoint's peak-EWMA round-trip estimate.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// The estimate in nanoseconds, as `f64` bits; 0 before the first sample.
    pub(crate) rtt: AtomicU64,
    /// When `rtt` was last updated, on the clock of [`crate::load::now`].
    pub(crate) rtt_at: AtomicU64,
}

/// The number of stripes of a [`Counter`]: stripe 0 is shared, the others each belong to one
/// thread at a time.
const STRIPES: usize = 16;

/// An exact counter that threads bump without a read-modify-write instruction.
///
/// Each thread owns one stripe while it lives and adds to it with a plain load and store, which
/// is exact because no other thread writes that stripe; a read sums the stripes. Threads beyond
/// the fifteen that own a stripe share stripe 0 and add to it atomically. Counting a pick this
/// way costs about a nanosecond where an atomic add costs several, and it never makes two
/// threads contend for one counter.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    stripes: [AtomicU64; STRIPES],
}

impl Counter {
    /// Adds one.
    #[inline]
    pub(crate) fn add_one(&self) {
        self.add(1);
    }

    /// Takes one back: a pick whose reservation was released before its request was sent.
    #[inline]
    pub(crate) fn sub_one(&self) {
        // The stripes may go below zero on their own; their sum, taken wrapping, does not.
        self.add(1u64.wrapping_neg());
    }

    /// Adds `delta`, wrapping.
    #[inline]
    fn add(&self, delta: u64) {
        let stripe = stripe();
        let cell = &self.stripes[stripe];
        if stripe == SHARED {
            cell.fetch_add(delta, Ordering::Relaxed);
        } else {
            // Only this thread writes this stripe while it owns it.
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(delta),
                Ordering::Relaxed,
            );
        }
    }

    /// The count: every addition that happened before this call, and maybe some concurrent ones.
    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.load(Ordering::Relaxed)))
    }
}

/// The stripe of threads that own none.
const SHARED: usize = 0;

/// Which stripes are owned, one bit per stripe.
static OWNED: AtomicU16 = AtomicU16::new(1 << SHARED);

/// What a thread that has not asked for a stripe yet holds.
const UNCLAIMED: usize = usize::MAX;

thread_local! {
    /// This thread's stripe. A plain cell without a destructor, so that reading it costs one
    /// load; the stripe is given back by [`Release`] when the thread ends.
    static STRIPE: Cell<usize> = const { Cell::new(UNCLAIMED) };
    /// Gives this thread's stripe back when the thread ends.
    static RELEASE: Release = const { Release };
}

/// Gives the thread's stripe back, so that a later thread can own it, and leaves the thread on
/// the shared stripe for whatever it still counts while it is torn down.
struct Release;

impl Drop for Release {
    fn drop(&mut self) {
        let stripe = STRIPE.with(|s| s.replace(SHARED));
        if stripe != SHARED && stripe != UNCLAIMED {
            // Release: this thread's last additions happen before the next owner's.
            OWNED.fetch_and(!(1 << stripe), Ordering::Release);
        }
    }
}

/// This thread's stripe.
#[inline]
fn stripe() -> usize {
    let stripe = STRIPE.with(Cell::get);
    if stripe == UNCLAIMED {
        return claim();
    }
    stripe
}

/// Claims a free stripe for this thread, or the shared one if none is free or the thread is
/// being torn down.
#[cold]
fn claim() -> usize {
    // Registers the release first: a thread that cannot release a stripe must not own one.
    if RELEASE.try_with(|_| ()).is_err() {
        STRIPE.with(|s| s.set(SHARED));
        return SHARED;
    }
    let mut owned = OWNED.load(Ordering::Relaxed);
    let stripe = loop {
        let free = !owned;
        if free == 0 {
            break SHARED;
        }
        let stripe = free.trailing_zeros() as usize;
        // Acquire: the counts its last owner stored are visible to this thread's additions.
        match OWNED.compare_exchange_weak(
            owned,
            owned | 1 << stripe,
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => break stripe,
            Err(now) => owned = now,
        }
    };
    STRIPE.with(|s| s.set(stripe));
    stripe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_across_many_threads_and_stripe_reuse() {
        let counter = Arc::new(Counter::default());
        // More threads than stripes, some at once and some after others ended.
        for _ in 0..3 {
            let threads: Vec<_> = (0..24)
                .map(|_| {
                    let counter = Arc::clone(&counter);
                    std::thread::spawn(move || {
                        for _ in 0..10_000 {
                            counter.add_one();
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
        }
        assert_eq!(counter.get(), 3 * 24 * 10_000);
    }
}
