//! Routing a keyed request: walking the strategy's table from the key's position to the first
//! endpoint that is available (not ejected and, with bounded loads, under its capacity).

use std::{
    sync::{atomic::AtomicUsize, Arc},
    task::{Context, Poll},
};

use tower_service::Service;

use crate::{
    ejection::Health,
    endpoints::EndpointState,
    error::{AllEjected, Unavailable},
    health::Classify,
    load::{self, InFlight},
    waiters::Waiters,
    BoxError,
};

/// A membership snapshot as the routing of a request sees it.
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
    /// The membership version of the snapshot.
    fn version(&self) -> u64;
}

/// The balancer's current membership, as a waiting keyed request sees it: when the set changes
/// while the request waits for readiness, it routes again over the new set.
pub(crate) trait Membership<S>: Send + Sync {
    /// The version of the newest snapshot.
    fn version(&self) -> u64;
    /// The newest snapshot and the position of the key hashed to `hash` in it, or the error a
    /// new request would get (an empty set, a table that could not be built).
    fn reroute(&self, hash: u64) -> Result<(Arc<dyn Candidates<S>>, usize), BoxError>;
    /// The tasks a membership change wakes.
    fn waiters(&self) -> &Waiters;
}

/// The states of every endpoint of `candidates`, for outlier detection's ejected share.
fn states<S, C>(candidates: &C) -> impl Iterator<Item = &EndpointState> + Clone
where
    C: Candidates<S> + ?Sized,
{
    (0..candidates.len()).map(move |i| &**candidates.state(i))
}

/// Where a keyed request is in its walk over the strategy's cycle.
#[derive(Debug)]
pub(crate) struct Walker {
    start: usize,
    position: usize,
    steps: usize,
    /// The passes over the cycle, most demanding first: under the load bound and not ejected,
    /// then not ejected, then (panic mode) any endpoint.
    pass: Pass,
    factor: Option<f64>,
    /// Whether the current pass met an endpoint that is not ejected, tried or not.
    eligible_seen: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Bounded,
    Eligible,
    Panic,
}

impl Walker {
    pub(crate) fn new(start: usize, factor: Option<f64>) -> Self {
        Self {
            start,
            position: start,
            steps: 0,
            pass: if factor.is_some() {
                Pass::Bounded
            } else {
                Pass::Eligible
            },
            factor,
            eligible_seen: false,
        }
    }

    /// A walk from `start` with the same load bound.
    fn restarted(&self, start: usize) -> Self {
        Self::new(start, self.factor)
    }

    /// Whether the walk passes over ejected endpoints: in every pass but panic mode's.
    fn skips_ejected(&self) -> bool {
        self.pass != Pass::Panic
    }

    /// How the candidate just returned with `guard` is to be counted if the request has to wait
    /// for it: the count is given back while it waits and taken again once it is ready.
    pub(crate) fn admission(&self, guard: Option<InFlight>) -> Admission {
        drop(guard);
        if self.pass == Pass::Bounded {
            Admission::UnderBound
        } else {
            Admission::Counted
        }
    }

    /// The next candidate not in `tried`, with its in-flight count when loads are bounded.
    pub(crate) fn next<S, C>(
        &mut self,
        candidates: &C,
        tried: &[u32],
        health: Option<&Health>,
    ) -> Option<(usize, Option<InFlight>)>
    where
        C: Candidates<S> + ?Sized,
    {
        let positions = candidates.positions();
        loop {
            if self.steps == positions {
                self.pass = match self.pass {
                    // Every untried endpoint is at capacity: go round again, ignoring it.
                    Pass::Bounded => Pass::Eligible,
                    // Nothing eligible at all: panic mode, if allowed, routes over everything.
                    Pass::Eligible if !self.eligible_seen && health.is_some_and(Health::panics) => {
                        Pass::Panic
                    }
                    _ => return None,
                };
                self.steps = 0;
                self.position = self.start;
            }
            let owner = candidates.owner(self.position);
            self.steps += 1;
            self.position += 1;
            if self.position == positions {
                self.position = 0;
            }
            let state = candidates.state(owner);
            if self.pass != Pass::Panic {
                if let Some(health) = health {
                    if health.is_ejected(state) {
                        continue;
                    }
                }
                self.eligible_seen = true;
            }
            if tried.contains(&(owner as u32)) {
                continue;
            }
            let Some(guard) = count(candidates, owner, self.factor, self.pass == Pass::Bounded)
            else {
                continue;
            };
            return Some((owner, guard));
        }
    }
}

/// Counts a request against endpoint `index` of `candidates` when loads are bounded by `factor`:
/// under the bound if `bounded` (`None` when the endpoint is full), whatever its load otherwise.
/// `Some(None)` when loads are not bounded.
fn count<S, C>(
    candidates: &C,
    index: usize,
    factor: Option<f64>,
    bounded: bool,
) -> Option<Option<InFlight>>
where
    C: Candidates<S> + ?Sized,
{
    let Some(factor) = factor else {
        return Some(None);
    };
    let state = candidates.state(index);
    let total = candidates.total();
    if !bounded {
        return Some(Some(InFlight::acquire_with_total(state, total)));
    }
    let current = total.load(std::sync::atomic::Ordering::Acquire);
    let capacity = load::capacity(factor, current, candidates.len());
    InFlight::try_acquire(state, total, capacity).map(Some)
}

/// How a candidate the request waits for is counted once it is ready, when loads are bounded: a
/// waiting request is in flight nowhere yet, so it holds no count on the candidates it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Found under the load bound: counted only if it is still under the bound once ready.
    UnderBound,
    /// Found when every candidate was full (or in panic mode): counted whatever its load.
    Counted,
}

/// What outlier detection needs to record a request's outcome: the endpoint (by its index in the
/// snapshot it was routed with) and the set, for the ejected share.
pub(crate) struct Outcome<S> {
    health: Arc<Health>,
    set: Arc<dyn Candidates<S>>,
    index: usize,
}

impl<S> Outcome<S> {
    fn new(health: Arc<Health>, set: Arc<dyn Candidates<S>>, index: usize) -> Self {
        Self { health, set, index }
    }

    /// Records the response: a failure if it is an error or the classifier says so.
    pub(crate) fn record<T, E, C: Classify<T>>(self, result: &Result<T, E>, classify: &C) {
        let failed = match result {
            Ok(response) => classify.is_failure(response),
            Err(_) => true,
        };
        let state = self.set.state(self.index);
        self.health.record(state, failed, states(&*self.set));
    }
}

/// A request goes to endpoint `index` of a set: counts the pick in the endpoint's statistics and,
/// with outlier detection, returns what recording the request's outcome needs (`set` gives the
/// set, and is called only then).
#[inline]
pub(crate) fn pick<S>(
    health: Option<&Arc<Health>>,
    state: &EndpointState,
    index: usize,
    set: impl FnOnce() -> Arc<dyn Candidates<S>>,
) -> Option<Outcome<S>> {
    state
        .picks
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    health.map(|health| Outcome::new(Arc::clone(health), set(), index))
}

/// A keyed request whose first choice was not ready at once: it polls its candidates, first
/// choice first, until one is ready, keeping the pending ones so their wake-ups reach the task.
pub(crate) struct Routing<S, Req, C> {
    pub(crate) candidates: Arc<dyn Candidates<S>>,
    pub(crate) walker: Walker,
    pub(crate) request: Option<Req>,
    /// Candidates waiting for readiness: index, service, and how to count it once ready.
    pub(crate) pending: Vec<(usize, S, Admission)>,
    pub(crate) tried: Vec<u32>,
    pub(crate) max_tries: usize,
    pub(crate) error: Option<BoxError>,
    pub(crate) health: Option<Arc<Health>>,
    pub(crate) classify: C,
    /// The balancer's membership, and the request's key hash, for routing again after a change.
    pub(crate) membership: Arc<dyn Membership<S>>,
    pub(crate) hash: u64,
    /// The request's slot among the tasks a membership change wakes, while it waits.
    pub(crate) waiter: Option<usize>,
}

/// What polling a [`Routing`] gave.
pub(crate) enum Routed<S: Service<Req>, Req, C> {
    Called(S::Future, Option<InFlight>, Option<(Outcome<S>, C)>),
    Failed(BoxError),
}

impl<S, Req, C> Routing<S, Req, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Clone,
{
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Routed<S, Req, C>> {
        let routed = self.route(cx);
        let (membership, candidates) = (&self.membership, &self.candidates);
        if routed.is_pending() {
            membership.waiters().wait(&mut self.waiter, cx.waker(), || {
                membership.version() != candidates.version()
            });
        } else {
            membership.waiters().deregister(&mut self.waiter);
        }
        routed
    }

    fn route(&mut self, cx: &mut Context<'_>) -> Poll<Routed<S, Req, C>> {
        if self.membership.version() != self.candidates.version() {
            // The set changed while the request waited: route it over the new one, from the
            // key's position there.
            match self.membership.reroute(self.hash) {
                Ok((candidates, start)) => {
                    self.candidates = candidates;
                    self.restart(start);
                }
                Err(error) => {
                    self.pending.clear();
                    return Poll::Ready(Routed::Failed(error));
                }
            }
        }
        // The candidates already waiting, in order of preference.
        let mut i = 0;
        while i < self.pending.len() {
            let ejected = self.walker.skips_ejected()
                && self.health.as_deref().is_some_and(|health| {
                    health.is_ejected(self.candidates.state(self.pending[i].0))
                });
            if ejected {
                // Ejected while the request waited for it: walk again over what is eligible now.
                self.restart(self.walker.start);
                break;
            }
            match self.pending[i].1.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let (index, service, admission) = self.pending.remove(i);
                    match self.admit(index, admission) {
                        Some(guard) => return Poll::Ready(self.call(index, service, guard)),
                        // Full by now: passed over, as the walk passes over full endpoints.
                        None => continue,
                    }
                }
                Poll::Ready(Err(e)) => {
                    let (index, ..) = self.pending.remove(i);
                    self.failed_readiness(index, e.into());
                }
                Poll::Pending => i += 1,
            }
        }
        // Further candidates, up to the bound on tries.
        while self.tried.len() < self.max_tries {
            let health = self.health.as_deref();
            let Some((index, guard)) = self.walker.next(&*self.candidates, &self.tried, health)
            else {
                break;
            };
            self.tried.push(index as u32);
            let mut service = self.candidates.service(index).clone();
            match service.poll_ready(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(self.call(index, service, guard)),
                Poll::Ready(Err(e)) => self.failed_readiness(index, e.into()),
                Poll::Pending => {
                    let admission = self.walker.admission(guard);
                    self.pending.push((index, service, admission));
                }
            }
        }
        if self.pending.is_empty() {
            let error = self
                .error
                .take()
                .or_else(|| Some(AllEjected::new(self.candidates.len()).into()));
            let error = Unavailable::new(self.tried.len(), error);
            Poll::Ready(Routed::Failed(error.into()))
        } else {
            Poll::Pending
        }
    }

    /// The count of a request to `index`, a waited-for candidate now ready: `None` if it must
    /// stay under the load bound and is full.
    fn admit(&self, index: usize, admission: Admission) -> Option<Option<InFlight>> {
        let bounded = admission == Admission::UnderBound;
        count(&*self.candidates, index, self.walker.factor, bounded)
    }

    /// Starts the walk over, from `start`: nothing tried, nothing waited for.
    fn restart(&mut self, start: usize) {
        self.walker = self.walker.restarted(start);
        self.tried.clear();
        self.pending.clear();
    }

    fn failed_readiness(&mut self, index: usize, error: BoxError) {
        if let Some(health) = &self.health {
            let state = self.candidates.state(index);
            health.record(state, true, states(&*self.candidates));
        }
        self.error = Some(error);
    }

    fn call(&mut self, index: usize, mut service: S, guard: Option<InFlight>) -> Routed<S, Req, C> {
        self.pending.clear();
        let state = self.candidates.state(index);
        let outcome = pick(self.health.as_ref(), state, index, || {
            Arc::clone(&self.candidates)
        })
        .map(|outcome| (outcome, self.classify.clone()));
        match self.request.take() {
            Some(request) => Routed::Called(service.call(request), guard, outcome),
            // Unreachable: a routing that called its endpoint is replaced by the call's future.
            None => Routed::Failed(crate::error::NotReady::new().into()),
        }
    }
}

impl<S, Req, C> Drop for Routing<S, Req, C> {
    fn drop(&mut self) {
        self.membership.waiters().deregister(&mut self.waiter);
    }
}
