//! In-flight accounting for the strategies that balance on load.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use crate::endpoints::EndpointState;

/// Counts one request against an endpoint and its set until it is dropped, so that a completed,
/// failed or cancelled request releases its count alike.
#[derive(Debug)]
pub(crate) struct InFlight {
    endpoint: Arc<EndpointState>,
    total: Arc<AtomicUsize>,
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
        })
    }

    /// Counts a request against `endpoint` whatever its load.
    pub(crate) fn acquire(endpoint: &Arc<EndpointState>, total: &Arc<AtomicUsize>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
        total.fetch_add(1, Ordering::AcqRel);
        Self {
            endpoint: Arc::clone(endpoint),
            total: Arc::clone(total),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
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
