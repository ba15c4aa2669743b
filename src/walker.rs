//! The walk of one request over its candidates, for every strategy.
//!
//! A strategy orders the endpoints for a request (see [`Table`](crate::strategy::internal::Table)):
//! a cursor's turn and the turns after it, random draws, or a key's position in a ring and the
//! positions after it. The walk takes that order and owns everything else: it passes over ejected
//! endpoints (and, in panic mode, routes over them anyway), lets slow start pass an endpoint's
//! turn, keeps loads under their bound, polls at most `max_tries` candidates, keeps the pending
//! ones so that their wake-ups reach the caller, polls them again first, records failed readiness
//! for outlier detection, and starts over when a kept candidate is ejected. Keyless strategies
//! walk in the balancer's `poll_ready`, keyed ones when the request is called, in its response
//! future if their first choice is not ready at once.

use std::{
    sync::{atomic::AtomicUsize, Arc},
    task::{Context, Poll},
};

use tower_service::Service;

use crate::{
    ejection::{EndpointHealth, Health},
    error::{AllEjected, BoxError, NotReady, Unavailable},
    health::Classify,
    load::{self, InFlight},
    retry::Attempts,
    state::EndpointState,
    waiters::Waiters,
};

/// The endpoints of a membership snapshot, as outlier detection sees them.
pub(crate) trait Set: Send + Sync {
    /// The number of endpoints.
    fn len(&self) -> usize;
    /// The counters of the endpoint at `index`, in set order.
    fn state(&self, index: usize) -> &Arc<EndpointState>;
}

/// A membership snapshot with its strategy's table, as a walk sees it.
pub(crate) trait Candidates<S>: Set {
    /// The steps of one pass of a walk: enough to meet every endpoint.
    fn span(&self) -> usize;
    /// The endpoint met at `step` of the walk from `position`.
    fn candidate(&self, health: Option<&Health>, position: u64, step: usize) -> usize;
    /// Whether slow start may pass the strategy's choice over.
    fn ramps(&self) -> bool;
    fn service(&self, index: usize) -> &S;
    /// Requests in flight over the set, for bounded loads.
    fn total(&self) -> &Arc<AtomicUsize>;
    /// The membership version of the snapshot.
    fn version(&self) -> u64;
    /// The same snapshot, as outlier detection sees it.
    fn into_set(self: Arc<Self>) -> Arc<dyn Set>;
}

/// The balancer's current membership, as a waiting keyed request sees it: when the set changes
/// while the request waits for readiness, it routes again over the new set.
pub(crate) trait Membership<S>: Send + Sync {
    /// The version of the newest snapshot.
    fn version(&self) -> u64;
    /// How many changes could have made a waiting request route again: membership changes and
    /// endpoints taken out or let back.
    fn generation(&self) -> u64;
    /// The newest snapshot and the position in it of a key that hashes to `hash`, or the error a
    /// new request would get (an empty set, a table that could not be built).
    fn reroute(&self, hash: u64) -> Result<(Arc<dyn Candidates<S>>, u64), BoxError>;
    /// The tasks a membership change wakes.
    fn waiters(&self) -> &Waiters;
}

/// The health of every endpoint of `set`, for outlier detection's ejected share.
fn healths<C: Set + ?Sized>(set: &C) -> impl Iterator<Item = &EndpointHealth> + Clone {
    (0..set.len()).map(move |i| &set.state(i).health)
}

/// The passes of a walk over its order, most demanding first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Not ejected, and under the load bound.
    Bounded,
    /// Not ejected.
    Eligible,
    /// Any endpoint: panic mode, when nothing is eligible.
    Panic,
}

/// Where a walk is in its order.
#[derive(Debug, Clone, Copy)]
struct Position {
    start: u64,
    steps: usize,
    pass: Pass,
    /// Whether the current pass met an endpoint that is not ejected, tried or not.
    eligible_seen: bool,
    /// The strategy's choice, when slow start passed its turn: taken at the end of the pass if
    /// nothing else was.
    deferred: Option<usize>,
}

impl Position {
    fn new(start: u64, bounded: bool) -> Self {
        Self {
            start,
            steps: 0,
            pass: if bounded {
                Pass::Bounded
            } else {
                Pass::Eligible
            },
            eligible_seen: false,
            deferred: None,
        }
    }
}

/// A candidate the request waits for.
#[derive(Debug)]
struct Kept<S> {
    index: usize,
    service: S,
    admission: Admission,
    /// The step of the walk that met it.
    step: usize,
}

/// How a candidate the request waits for is counted once it is ready, when loads are bounded: a
/// waiting request is in flight nowhere yet, so it holds no count on the candidates it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Met under the load bound: counted only if it is still under the bound once ready.
    UnderBound,
    /// Met when every candidate was full (or in panic mode), or loads are not bounded: counted
    /// whatever its load.
    Counted,
}

/// The candidate a walk found ready. Its in-flight count, when loads are bounded, stays with the
/// walk until [`Walk::take_in_flight`]: kept out of this small value, which the request path moves
/// around.
#[derive(Debug)]
pub(crate) struct Found<S> {
    /// Its index in the snapshot.
    pub(crate) index: usize,
    /// Its clone, made ready.
    pub(crate) service: S,
    /// How many steps after the walk's start it was met.
    pub(crate) steps: usize,
}

/// One request's walk over its candidates.
#[derive(Debug)]
pub(crate) struct Walk<S> {
    position: Position,
    /// The load bound's factor, when loads are bounded.
    factor: Option<f64>,
    /// The candidates that were pending, in the order they were met.
    kept: Vec<Kept<S>>,
    /// The candidates polled and not taken (pending or failed): never polled again as new ones.
    tried: Vec<u32>,
    /// The endpoints earlier attempts of the request were sent to: passed over as long as
    /// anything else can be found. Kept by restarts (they are named by their counters, which
    /// outlive snapshots).
    avoid: Vec<Arc<EndpointState>>,
    /// How many candidates were polled.
    probes: usize,
    /// The last readiness error.
    error: Option<BoxError>,
    /// The membership version of the snapshot walked.
    version: u64,
    /// The in-flight count of the candidate found, when loads are bounded.
    in_flight: Option<InFlight>,
}

impl<S> Walk<S> {
    /// A walk from `start` over the snapshot of `version`, with loads bounded by `factor` if
    /// given. Allocates nothing until a candidate is not ready.
    pub(crate) fn new(start: u64, version: u64, factor: Option<f64>) -> Self {
        Self {
            position: Position::new(start, factor.is_some()),
            factor,
            kept: Vec::new(),
            tried: Vec::new(),
            avoid: Vec::new(),
            probes: 0,
            error: None,
            version,
            in_flight: None,
        }
    }

    /// The in-flight count of the candidate just found, when loads are bounded.
    #[inline]
    pub(crate) fn take_in_flight(&mut self) -> Option<InFlight> {
        // Checked first: moving the empty value out costs more than looking at it.
        if self.in_flight.is_some() {
            self.in_flight.take()
        } else {
            None
        }
    }

    /// The error the request fails with, once `poll` found nothing.
    pub(crate) fn take_error(&mut self) -> BoxError {
        self.error.take().unwrap_or_else(|| NotReady::new().into())
    }

    /// Where the walk started, in its table (once it has gone past its first step).
    pub(crate) fn start(&self) -> u64 {
        self.position.start
    }

    /// Starts over from `start` over the snapshot of `version`: nothing tried, nothing kept.
    pub(crate) fn restart(&mut self, start: u64, version: u64) {
        self.position = Position::new(start, self.factor.is_some());
        self.kept.clear();
        self.tried.clear();
        self.probes = 0;
        self.error = None;
        self.in_flight = None;
        self.version = version;
    }

    /// Whether the walk waits for pending candidates.
    #[inline]
    pub(crate) fn is_waiting(&self) -> bool {
        !self.kept.is_empty()
    }

    /// Stops waiting: drops the kept candidates.
    pub(crate) fn clear(&mut self) {
        self.kept.clear();
    }

    /// The membership version of the snapshot walked.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// How many candidates were polled, and how many are still waited for.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.probes, self.kept.len())
    }

    /// Starts over from `start` over the snapshot of `version` after its [`first`] step, knowing
    /// what that step's probe learnt, and walks on: further candidates, up to `max_tries` polled in
    /// all, as [`Walk::poll`].
    pub(crate) fn go_on<Req, C>(
        &mut self,
        cx: &mut Context<'_>,
        set: &C,
        health: Option<&Health>,
        (start, version): (u64, u64),
        max_tries: usize,
        probed: Option<Probed<S>>,
    ) -> Poll<Option<Found<S>>>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
        C: Candidates<S> + ?Sized,
    {
        self.restart(start, version);
        if let Some(Probed {
            index,
            service,
            error,
        }) = probed
        {
            self.position.steps = 1;
            self.position.eligible_seen = true;
            self.probes = 1;
            match error {
                Some(error) => self.refused(set, None, index, error),
                None => self.keep(index, service, None, 0),
            }
        }
        self.walk_on(cx, set, health, max_tries)
    }

    /// A new walk as [`Walk::go_on`], for a request that earlier attempts sent to the endpoints
    /// whose counters are in `avoid`: they are passed over as long as anything else can be
    /// found, through restarts too (they are named by their counters, which outlive snapshots).
    pub(crate) fn begin_avoiding<Req, C>(
        &mut self,
        cx: &mut Context<'_>,
        set: &C,
        health: Option<&Health>,
        (start, version): (u64, u64),
        max_tries: usize,
        avoid: Vec<Arc<EndpointState>>,
    ) -> Poll<Option<Found<S>>>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
        C: Candidates<S> + ?Sized,
    {
        self.avoid = avoid;
        self.restart(start, version);
        self.walk_on(cx, set, health, max_tries)
    }

    /// Polls the kept candidates, first met first, then further candidates, up to `max_tries`
    /// polled in all: the first that is ready is found. `Pending` while some are pending and
    /// none is ready (their wake-ups reach `cx`); `Ready(None)` when every one failed or none was
    /// eligible, with an [`Unavailable`] error to [take](Walk::take_error).
    pub(crate) fn poll<Req, C>(
        &mut self,
        cx: &mut Context<'_>,
        set: &C,
        health: Option<&Health>,
        max_tries: usize,
    ) -> Poll<Option<Found<S>>>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
        C: Candidates<S> + ?Sized,
    {
        if let Some(found) = self.poll_kept(cx, set, health) {
            return Poll::Ready(Some(found));
        }
        self.walk_on(cx, set, health, max_tries)
    }

    /// Polls further candidates, up to `max_tries` polled in all, without polling the kept ones
    /// again: as [`Walk::poll`], right after [`Walk::first`].
    fn walk_on<Req, C>(
        &mut self,
        cx: &mut Context<'_>,
        set: &C,
        health: Option<&Health>,
        max_tries: usize,
    ) -> Poll<Option<Found<S>>>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
        C: Candidates<S> + ?Sized,
    {
        loop {
            while self.probes < max_tries {
                let Some((index, in_flight, step)) = self.next(set, health) else {
                    break;
                };
                self.probes += 1;
                let mut service = set.service(index).clone();
                match service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        self.kept.clear();
                        self.in_flight = in_flight;
                        return Poll::Ready(Some(Found {
                            index,
                            service,
                            steps: step,
                        }));
                    }
                    Poll::Ready(Err(error)) => self.refused(set, health, index, error.into()),
                    Poll::Pending => self.keep(index, service, in_flight, step),
                }
            }
            if self.kept.is_empty() && !self.avoid.is_empty() {
                // Nothing but the endpoints the request tried could take it: it goes where a
                // first attempt would.
                self.avoid.clear();
                self.restart(self.position.start, self.version);
                continue;
            }
            return self.unfound(set);
        }
    }

    /// Keeps a pending candidate, so that its wake-up reaches the caller; a waiting request holds
    /// no count on it.
    #[inline(never)]
    fn keep(&mut self, index: usize, service: S, in_flight: Option<InFlight>, step: usize) {
        self.tried.push(index as u32);
        let admission = if self.position.pass == Pass::Bounded {
            Admission::UnderBound
        } else {
            Admission::Counted
        };
        drop(in_flight);
        self.kept.push(Kept {
            index,
            service,
            admission,
            step,
        });
    }

    /// Nothing was found: `Pending` while candidates are kept, `Ready(None)` with the request's
    /// error otherwise.
    #[inline(never)]
    fn unfound<C: Set + ?Sized>(&mut self, set: &C) -> Poll<Option<Found<S>>> {
        if !self.kept.is_empty() {
            return Poll::Pending;
        }
        let error = self
            .error
            .take()
            .unwrap_or_else(|| AllEjected::new(set.len()).into());
        self.error = Some(Unavailable::new(self.probes, Some(error)).into());
        Poll::Ready(None)
    }

    /// Polls the kept candidates in the order they were met: the first that is ready (and, when
    /// loads are bounded, still has room) is found; failed ones are recorded and dropped. If they
    /// are stale (see [`Walk::kept_are_stale`]), the walk starts over over what is eligible now.
    fn poll_kept<Req, C>(
        &mut self,
        cx: &mut Context<'_>,
        set: &C,
        health: Option<&Health>,
    ) -> Option<Found<S>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
        C: Candidates<S> + ?Sized,
    {
        if self.kept_are_stale(set, health) {
            self.restart(self.position.start, self.version);
            return None;
        }
        let mut i = 0;
        while i < self.kept.len() {
            match self.kept[i].service.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let kept = self.kept.remove(i);
                    let bounded = kept.admission == Admission::UnderBound;
                    // Full by now: passed over, as the walk passes over full endpoints.
                    let Some(in_flight) = count(set, kept.index, self.factor, bounded) else {
                        continue;
                    };
                    self.kept.clear();
                    self.in_flight = in_flight;
                    return Some(Found {
                        index: kept.index,
                        service: kept.service,
                        steps: kept.step,
                    });
                }
                Poll::Ready(Err(error)) => {
                    // Already in `tried`: it was when it was kept.
                    let kept = self.kept.remove(i);
                    self.failed(set, health, kept.index, error.into());
                }
                Poll::Pending => i += 1,
            }
        }
        None
    }

    /// Whether the kept candidates are no longer worth waiting for: one of them may not take
    /// requests any more (ejected, or found down, while the request waited), or they were kept in
    /// panic mode and some endpoint may take requests again.
    fn kept_are_stale<C>(&self, set: &C, health: Option<&Health>) -> bool
    where
        C: Set + ?Sized,
    {
        if self.position.pass == Pass::Panic {
            return (0..set.len()).any(|index| set.state(index).is_eligible(health));
        }
        self.kept
            .iter()
            .any(|kept| !set.state(kept.index).is_eligible(health))
    }

    /// A candidate's readiness failed: a failure for outlier detection, and the error the request
    /// fails with if no candidate is found.
    fn failed<C>(&mut self, set: &C, health: Option<&Health>, index: usize, error: BoxError)
    where
        C: Set + ?Sized,
    {
        if let Some(health) = health {
            health.record(&set.state(index).health, true, healths(set));
        }
        self.error = Some(error);
    }

    /// A new candidate's readiness failed: it is tried, and failed.
    #[inline(never)]
    fn refused<C>(&mut self, set: &C, health: Option<&Health>, index: usize, error: BoxError)
    where
        C: Set + ?Sized,
    {
        self.tried.push(index as u32);
        self.failed(set, health, index, error);
    }

    /// The next candidate of the walk that is not tried: its index, its in-flight count when
    /// loads are bounded, and the step that met it. `None` when the walk has met everything it
    /// may.
    #[inline]
    fn next<C>(
        &mut self,
        set: &C,
        health: Option<&Health>,
    ) -> Option<(usize, Option<InFlight>, usize)>
    where
        C: Candidates<S> + ?Sized,
    {
        let span = set.span();
        let position = &mut self.position;
        loop {
            if position.steps == span {
                if let Some(index) = position.deferred.take() {
                    // Slow start passed the strategy's choice, and nothing else could be taken.
                    if let Some(in_flight) = count(set, index, self.factor, false) {
                        return Some((index, in_flight, 0));
                    }
                }
                position.pass = match position.pass {
                    // Every untried endpoint is at capacity: go round again, ignoring it.
                    Pass::Bounded => Pass::Eligible,
                    // Nothing eligible at all: panic mode, if allowed, routes over everything.
                    Pass::Eligible
                        if !position.eligible_seen && health.is_none_or(Health::panics) =>
                    {
                        Pass::Panic
                    }
                    _ => return None,
                };
                position.steps = 0;
            }
            let step = position.steps;
            position.steps += 1;
            let index = set.candidate(health, position.start, step);
            if position.pass != Pass::Panic {
                let state = set.state(index);
                if !state.is_eligible(health) {
                    continue;
                }
                position.eligible_seen = true;
                let passes = health.is_some_and(|health| !health.admits(&state.health));
                if step == 0 && set.ramps() && passes {
                    position.deferred = Some(index);
                    continue;
                }
            }
            if self.tried.contains(&(index as u32)) || position.deferred == Some(index) {
                continue;
            }
            if !self.avoid.is_empty() && self.avoid.iter().any(|s| Arc::ptr_eq(s, set.state(index)))
            {
                continue;
            }
            let bounded = position.pass == Pass::Bounded;
            let Some(in_flight) = count(set, index, self.factor, bounded) else {
                continue;
            };
            return Some((index, in_flight, step));
        }
    }
}

/// What the first step of a walk found.
pub(crate) enum First<S> {
    /// The strategy's own choice, eligible and ready.
    Found(Found<S>),
    /// The walk must go on, knowing what the first step's probe learnt if it polled one.
    WalkOn(Option<Probed<S>>),
}

/// The strategy's own choice, polled by the first step and not ready: pending (`error` is
/// `None`), or failed.
pub(crate) struct Probed<S> {
    index: usize,
    service: S,
    error: Option<BoxError>,
}

/// The first step of a walk from `start` over `set`: the one most requests take alone, and which
/// needs no walk state. Without outlier detection or a load bound, every endpoint that its probes
/// do not find down is eligible, so the strategy's own choice is polled at once and found if it
/// is ready. Otherwise the walk goes on (see [`Walk::go_on`]).
#[inline]
pub(crate) fn first<S, Req, C>(
    cx: &mut Context<'_>,
    set: &C,
    health: Option<&Health>,
    factor: Option<f64>,
    start: u64,
) -> First<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Candidates<S> + ?Sized,
{
    if health.is_some() || factor.is_some() {
        return First::WalkOn(None);
    }
    let index = set.candidate(None, start, 0);
    if !set.state(index).is_eligible(None) {
        // Found down by its probes: the walk passes it over.
        return First::WalkOn(None);
    }
    let mut service = set.service(index).clone();
    let error = match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => {
            return First::Found(Found {
                index,
                service,
                steps: 0,
            })
        }
        Poll::Ready(Err(error)) => Some(error.into()),
        Poll::Pending => None,
    };
    First::WalkOn(Some(Probed {
        index,
        service,
        error,
    }))
}

/// Counts a request against endpoint `index` of `set` when loads are bounded by `factor`: under
/// the bound if `bounded` (`None` when the endpoint is full), whatever its load otherwise.
/// `Some(None)` when loads are not bounded.
fn count<C: Candidates<S> + ?Sized, S>(
    set: &C,
    index: usize,
    factor: Option<f64>,
    bounded: bool,
) -> Option<Option<InFlight>> {
    let Some(factor) = factor else {
        return Some(None);
    };
    let state = set.state(index);
    let total = set.total();
    if !bounded {
        return Some(Some(InFlight::acquire_with_total(state, total)));
    }
    let current = total.load(std::sync::atomic::Ordering::Acquire);
    let capacity = load::capacity(factor, current, set.len());
    InFlight::try_acquire(state, total, capacity).map(Some)
}

/// What outlier detection needs to record a request's outcome: the endpoint, by its index in the
/// snapshot it was routed with, and that snapshot, for the ejected share.
pub(crate) struct Outcome {
    health: Arc<Health>,
    set: Arc<dyn Set>,
    index: usize,
    /// When the request was sent, on outlier detection's clock, if abandoned requests count; 0
    /// otherwise.
    sent_at: u64,
}

impl Outcome {
    /// Records a failure or a success of the request.
    fn record(&self, failed: bool) {
        let state = &self.set.state(self.index).health;
        self.health.record(state, failed, healths(&*self.set));
    }
}

/// What a request counts from the moment it is routed: its in-flight count, released when its
/// response completes or its future is dropped, and, with outlier detection, its outcome as the
/// classifier judges it.
pub(crate) struct Accounting<C> {
    in_flight: Option<InFlight>,
    outcome: Option<(Outcome, C)>,
}

impl<C> Accounting<C> {
    /// Counts nothing.
    pub(crate) fn new() -> Self {
        Self {
            in_flight: None,
            outcome: None,
        }
    }

    /// A request is routed to endpoint `index` of a set: one more pick in the endpoint's
    /// statistics, its in-flight count if it has one, and with outlier detection what recording
    /// its outcome needs (`set` gives the set, and is called only then). Fills `self` in place,
    /// which must count nothing yet.
    #[inline]
    pub(crate) fn route(
        &mut self,
        state: &EndpointState,
        index: usize,
        in_flight: Option<InFlight>,
        health: Option<&Arc<Health>>,
        set: impl FnOnce() -> Arc<dyn Set>,
        classify: &C,
    ) where
        C: Clone,
    {
        state.picks.add_one();
        if in_flight.is_some() {
            self.in_flight = in_flight;
        }
        if let Some(health) = health {
            let outcome = Outcome {
                health: Arc::clone(health),
                set: set(),
                index,
                sent_at: 0,
            };
            self.outcome = Some((outcome, classify.clone()));
        }
    }

    /// The request was sent to its endpoint: a timed count starts its clock. Returns the
    /// accounting, leaving one that counts nothing.
    #[inline]
    pub(crate) fn sent(&mut self) -> Self {
        // Each part checked first: moving an empty value out costs more than looking at it.
        let in_flight = match &mut self.in_flight {
            Some(in_flight) => {
                in_flight.sent();
                self.in_flight.take()
            }
            None => None,
        };
        let outcome = match &mut self.outcome {
            Some((outcome, _)) => {
                outcome.sent_at = outcome.health.sent_at();
                self.outcome.take()
            }
            None => None,
        };
        Self { in_flight, outcome }
    }

    /// The response arrived: records its outcome and releases the in-flight count.
    #[inline]
    pub(crate) fn complete<T, E>(&mut self, result: &Result<T, E>)
    where
        C: Classify<T>,
    {
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.complete();
        }
        if let Some((outcome, classify)) = self.outcome.take() {
            let failed = match result {
                Ok(response) => classify.is_failure(response),
                Err(_) => true,
            };
            outcome.record(failed);
        }
    }
}

impl<C> Drop for Accounting<C> {
    /// A request sent and dropped before its response, its deadline for abandoned requests
    /// past, failed: a timeout above the balancer gave up on it (see
    /// [`OutlierDetectionBuilder::abandoned_after`](crate::health::OutlierDetectionBuilder::abandoned_after)).
    #[inline]
    fn drop(&mut self) {
        if let Some((outcome, _)) = &self.outcome {
            if outcome.sent_at != 0 && outcome.health.is_abandoned(outcome.sent_at) {
                outcome.record(true);
            }
        }
    }
}

/// A keyed request whose first choice was not ready at once: it walks on in its response future,
/// keeping the pending candidates so that their wake-ups reach the task.
pub(crate) struct Routing<S, Req, C> {
    pub(crate) set: Arc<dyn Candidates<S>>,
    pub(crate) walk: Walk<S>,
    pub(crate) request: Option<Req>,
    pub(crate) max_tries: usize,
    pub(crate) health: Option<Arc<Health>>,
    pub(crate) classify: C,
    /// The balancer's membership, and the request's key hash, for routing again after a change.
    pub(crate) membership: Arc<dyn Membership<S>>,
    pub(crate) hash: u64,
    /// The request's slot among the tasks a membership change wakes, while it waits.
    pub(crate) waiter: Option<usize>,
    /// The request's record of the endpoints its attempts went to, if it carries one: the walk
    /// passes over those, and the endpoint found is noted in it.
    pub(crate) attempts: Option<Attempts>,
}

/// What polling a [`Routing`] gave.
pub(crate) enum Routed<S: Service<Req>, Req, C> {
    Called(S::Future, Accounting<C>),
    Failed(BoxError),
}

impl<S, Req, C> Routing<S, Req, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Clone,
{
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Routed<S, Req, C>> {
        // Noted before the candidates are polled: a change after this point wakes the request
        // even if it comes before the request registers its waker.
        let generation = self.membership.generation();
        let routed = self.route(cx);
        let membership = &self.membership;
        if routed.is_pending() {
            membership.waiters().wait(&mut self.waiter, cx.waker(), || {
                membership.generation() != generation
            });
        } else {
            membership.waiters().deregister(&mut self.waiter);
        }
        routed
    }

    fn route(&mut self, cx: &mut Context<'_>) -> Poll<Routed<S, Req, C>> {
        if self.membership.version() != self.walk.version() {
            // The set changed while the request waited: route it over the new one, from the
            // key's position there.
            match self.membership.reroute(self.hash) {
                Ok((set, position)) => {
                    self.walk.restart(position, set.version());
                    self.set = set;
                }
                Err(error) => {
                    self.walk.clear();
                    return Poll::Ready(Routed::Failed(error));
                }
            }
        }
        let health = self.health.as_deref();
        let found = match self.walk.poll(cx, &*self.set, health, self.max_tries) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(Routed::Failed(self.walk.take_error())),
            Poll::Ready(Some(found)) => found,
        };
        let Found {
            index, mut service, ..
        } = found;
        if let Some(attempts) = &self.attempts {
            attempts.record(self.set.state(index));
        }
        let in_flight = self.walk.take_in_flight();
        let mut accounting = Accounting::new();
        accounting.route(
            self.set.state(index),
            index,
            in_flight,
            self.health.as_ref(),
            || Arc::clone(&self.set).into_set(),
            &self.classify,
        );
        Poll::Ready(match self.request.take() {
            Some(request) => Routed::Called(service.call(request), accounting.sent()),
            // Unreachable: a routing that called its endpoint is replaced by the call's future.
            None => Routed::Failed(NotReady::new().into()),
        })
    }
}

impl<S, Req, C> Drop for Routing<S, Req, C> {
    fn drop(&mut self) {
        self.membership.waiters().deregister(&mut self.waiter);
    }
}
