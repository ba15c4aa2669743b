//! Routing a keyed request: walking the strategy's table from the key's position to the first
//! endpoint that is available (and, with bounded loads, under its capacity).

use std::{
    sync::{atomic::AtomicUsize, Arc},
    task::{Context, Poll},
};

use tower_service::Service;

use crate::{
    endpoints::EndpointState,
    error::Unavailable,
    load::{self, InFlight},
    BoxError,
};

/// A membership snapshot as the routing of a keyed request sees it.
pub(crate) trait Candidates<S>: Send + Sync {
    /// The number of endpoints.
    fn len(&self) -> usize;
    /// The number of positions in the strategy's cycle.
    fn positions(&self) -> usize;
    /// The endpoint owning `position`.
    fn owner(&self, position: usize) -> usize;
    fn service(&self, index: usize) -> &S;
    fn state(&self, index: usize) -> &Arc<EndpointState>;
    /// Requests in flight over the set.
    fn total(&self) -> &Arc<AtomicUsize>;
}

/// Where a keyed request is in its walk over the strategy's cycle.
#[derive(Debug)]
pub(crate) struct Walker {
    start: usize,
    position: usize,
    steps: usize,
    /// With bounded loads: whether the walk still skips endpoints at capacity. A walk that found
    /// every remaining endpoint full goes round once more without the bound.
    bounded: bool,
    factor: Option<f64>,
}

impl Walker {
    pub(crate) fn new(start: usize, factor: Option<f64>) -> Self {
        Self {
            start,
            position: start,
            steps: 0,
            bounded: factor.is_some(),
            factor,
        }
    }

    /// The next candidate not in `tried`, with its in-flight count when loads are bounded.
    pub(crate) fn next<S, C>(
        &mut self,
        candidates: &C,
        tried: &[u32],
    ) -> Option<(usize, Option<InFlight>)>
    where
        C: Candidates<S> + ?Sized,
    {
        let positions = candidates.positions();
        loop {
            if self.steps == positions {
                if !self.bounded {
                    return None;
                }
                // Every untried endpoint is at capacity: go round again, ignoring it.
                self.bounded = false;
                self.steps = 0;
                self.position = self.start;
            }
            let owner = candidates.owner(self.position);
            self.steps += 1;
            self.position += 1;
            if self.position == positions {
                self.position = 0;
            }
            if tried.contains(&(owner as u32)) {
                continue;
            }
            let guard = match self.factor {
                None => None,
                Some(factor) => {
                    let state = candidates.state(owner);
                    let total = candidates.total();
                    if self.bounded {
                        let current = total.load(std::sync::atomic::Ordering::Acquire);
                        let capacity = load::capacity(factor, current, candidates.len());
                        match InFlight::try_acquire(state, total, capacity) {
                            Some(guard) => Some(guard),
                            None => continue,
                        }
                    } else {
                        Some(InFlight::acquire_with_total(state, total))
                    }
                }
            };
            return Some((owner, guard));
        }
    }
}

/// A keyed request whose first choice was not ready at once: it polls its candidates, first
/// choice first, until one is ready, keeping the pending ones so their wake-ups reach the task.
pub(crate) struct Routing<S, Req> {
    pub(crate) candidates: Arc<dyn Candidates<S>>,
    pub(crate) walker: Walker,
    pub(crate) request: Option<Req>,
    pub(crate) pending: Vec<(S, Option<InFlight>)>,
    pub(crate) tried: Vec<u32>,
    pub(crate) max_tries: usize,
    pub(crate) error: Option<BoxError>,
}

/// What polling a [`Routing`] gave.
pub(crate) enum Routed<S: Service<Req>, Req> {
    Called(S::Future, Option<InFlight>),
    Failed(BoxError),
}

impl<S, Req> Routing<S, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Routed<S, Req>> {
        // The candidates already waiting, in order of preference.
        let mut i = 0;
        while i < self.pending.len() {
            match self.pending[i].0.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let (service, guard) = self.pending.swap_remove(i);
                    return Poll::Ready(self.call(service, guard));
                }
                Poll::Ready(Err(e)) => {
                    self.error = Some(e.into());
                    self.pending.remove(i);
                }
                Poll::Pending => i += 1,
            }
        }
        // Further candidates, up to the bound on tries.
        while self.tried.len() < self.max_tries {
            let Some((index, guard)) = self.walker.next(&*self.candidates, &self.tried) else {
                break;
            };
            self.tried.push(index as u32);
            let mut service = self.candidates.service(index).clone();
            match service.poll_ready(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(self.call(service, guard)),
                Poll::Ready(Err(e)) => self.error = Some(e.into()),
                Poll::Pending => self.pending.push((service, guard)),
            }
        }
        if self.pending.is_empty() {
            let error = Unavailable::new(self.tried.len(), self.error.take());
            Poll::Ready(Routed::Failed(error.into()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, mut service: S, guard: Option<InFlight>) -> Routed<S, Req> {
        self.pending.clear();
        match self.request.take() {
            Some(request) => Routed::Called(service.call(request), guard),
            // Unreachable: a routing that called its endpoint is replaced by the call's future.
            None => Routed::Failed(crate::error::NotReady::new().into()),
        }
    }
}
