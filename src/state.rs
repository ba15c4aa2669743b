//! The counters of one endpoint, shared by every snapshot and balancer of its set.

use std::sync::{
    atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering},
    Arc,
};

use crate::ejection::EndpointHealth;

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
}

impl EndpointState {
    /// All the requests in flight on the endpoint that any strategy counts.
    pub(crate) fn requests(&self) -> usize {
        self.in_flight.load(Ordering::Acquire) + Arc::strong_count(&self.load) - 1
    }
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
        let stripe = stripe();
        let cell = &self.stripes[stripe];
        if stripe == SHARED {
            cell.fetch_add(1, Ordering::Relaxed);
        } else {
            // Only this thread writes this stripe while it owns it.
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(1),
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

/// A thread's stripe, given back when the thread ends so that a later thread can own it.
struct Stripe(usize);

impl Stripe {
    fn claim() -> Self {
        let mut owned = OWNED.load(Ordering::Relaxed);
        loop {
            let free = !owned;
            if free == 0 {
                return Self(SHARED);
            }
            let stripe = free.trailing_zeros() as usize;
            // Acquire: the counts its last owner stored are visible to this thread's additions.
            match OWNED.compare_exchange_weak(
                owned,
                owned | 1 << stripe,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Self(stripe),
                Err(now) => owned = now,
            }
        }
    }
}

impl Drop for Stripe {
    fn drop(&mut self) {
        if self.0 != SHARED {
            // Release: this thread's last additions happen before the next owner's.
            OWNED.fetch_and(!(1 << self.0), Ordering::Release);
        }
    }
}

thread_local! {
    static STRIPE: Stripe = Stripe::claim();
}

/// This thread's stripe; the shared one while the thread is being torn down.
#[inline]
fn stripe() -> usize {
    STRIPE.try_with(|s| s.0).unwrap_or(SHARED)
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
