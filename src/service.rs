use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Weak,
    },
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use tower_service::Service;

use crate::{
    ejection::Health,
    endpoints::{EndpointState, Members, Watch},
    error::{AllEjected, MissingKey, NoEndpoints, NotReady, Unavailable},
    future::ResponseFuture,
    health::{Classify, Errors, OutlierDetection},
    load::InFlight,
    route::{pick, Candidates, Membership, Outcome, Routing, Walker},
    strategy::{Route, Strategy, Walk},
    waiters::Waiters,
    BoxError, Endpoints,
};

/// How many endpoints a request tries by default before the balancer waits or fails.
pub(crate) const DEFAULT_MAX_TRIES: usize = 8;

/// A load balancer over a set of endpoints: a [`Service`] that sends each request to one endpoint
/// chosen by the strategy `St`.
///
/// Build one with [`BalanceLayer`](crate::BalanceLayer) or [`Balance::new`]. Clones are cheap (one
/// `Arc` clone) and share everything but a pending reservation: the strategy's state (a round robin
/// cursor keeps rotating across clones), the endpoint set and its precomputed tables.
///
/// # Readiness
///
/// `poll_ready` picks the endpoint and drives its readiness: the strategy's choice first, then the
/// endpoints after it in set order, up to [`max_tries`](crate::BalanceLayer::max_tries)
/// candidates.
///
/// - The first candidate that is ready is reserved for the next `call`, which sends the request to
///   it. An endpoint is never called before its own `poll_ready` returned `Ready(Ok(()))`.
/// - A candidate that is not ready is passed over. If no candidate is ready but some are pending,
///   `poll_ready` returns `Pending` and keeps the pending candidates, so their wake-ups reach the
///   caller; the next `poll_ready` polls them again. A membership change wakes the caller too,
///   and it then picks anew over the new set, as it does when a kept candidate was ejected
///   meanwhile. Keyed requests waiting in their response future do the same, from the key's
///   position in the new table.
/// - A candidate whose `poll_ready` fails is passed over for this request only: it stays in the
///   set and is tried again by later requests.
/// - When the set is empty, or every candidate failed, `poll_ready` still returns `Ready(Ok(()))`
///   (tower treats an error there as a dead service) and the request fails at once in its response
///   future with [`NoEndpoints`](crate::error::NoEndpoints) or
///   [`Unavailable`](crate::error::Unavailable). The balancer never waits for endpoints to appear.
///
/// A clone starts without a reservation, so `poll_ready` must be called on the clone itself before
/// `call`, as tower requires. Calling `call` without a successful `poll_ready` fails the request
/// with [`NotReady`](crate::error::NotReady) rather than panicking.
///
/// # Errors
///
/// The endpoints' errors are passed through, boxed into [`BoxError`].
///
/// # Examples
///
/// ```
/// use tower::{service_fn, ServiceExt};
/// use tower_lb::{strategy::RoundRobin, Balance, Endpoints};
///
/// # tokio_test::block_on(async {
/// let set = Endpoints::from_iter((0..3).map(|i| {
///     (i, service_fn(move |_req: ()| async move { Ok::<_, std::convert::Infallible>(i) }))
/// }));
/// let balance = Balance::new(RoundRobin::new(), set);
///
/// let mut seen = Vec::new();
/// for _ in 0..6 {
///     seen.push(balance.clone().oneshot(()).await.unwrap());
/// }
/// assert_eq!(seen, [0, 1, 2, 0, 1, 2]);
/// # });
/// ```
pub struct Balance<St, K, S, C = Errors>
where
    St: Strategy<K>,
{
    shared: Arc<Shared<St, K, S>>,
    /// Which responses count as failures, for outlier detection.
    classify: C,
    /// The snapshot a reused clone routes with, refreshed when the shared version moves on:
    /// checking it costs one plain load instead of an `ArcSwap` guard. A clone only fills it once
    /// it has routed a request, so that a clone made for one request (as axum makes them) pays
    /// for a guard only, and a clone that is never polled (a router's template) pins no snapshot.
    cache: Option<Arc<Snapshot<St::Table, K, S>>>,
    /// Whether this clone has routed a request.
    reused: bool,
    /// What the next `call` does; set by `poll_ready`.
    reserved: Reserved<S>,
    /// Candidates that returned `Pending` (with their index in the snapshot), kept so that their
    /// wakers stay registered, and the membership version they belong to.
    pending: Vec<(usize, S)>,
    pending_version: u64,
    /// This clone's slot among the tasks woken by a membership change, while it waits.
    waiter: Option<usize>,
}

enum Reserved<S> {
    None,
    /// The endpoint the next `call` goes to, counted in flight if the strategy balances on load,
    /// with what outlier detection needs to record the outcome.
    Endpoint(S, Option<InFlight>, Option<Outcome<S>>),
    /// A keyed strategy is ready; `call` picks by the request's key.
    Keyed,
    NoEndpoints,
    Unavailable {
        tried: usize,
        error: Option<BoxError>,
    },
}

struct Shared<St, K, S>
where
    St: Strategy<K>,
{
    strategy: St,
    max_tries: usize,
    /// Outlier detection, when configured.
    health: Option<Arc<Health>>,
    snapshot: ArcSwap<Snapshot<St::Table, K, S>>,
    /// The version of the newest snapshot, stored after it is published.
    version: AtomicU64,
    /// Whether the set has announced its first membership to this balancer.
    announced: std::sync::atomic::AtomicBool,
    /// Keeps the set alive for the [`Balance::endpoints`] handle.
    endpoints: Endpoints<K, S>,
    /// The balancers and requests waiting for an endpoint: a membership change wakes them, so
    /// that they route over the new set.
    waiters: Waiters,
}

/// A membership snapshot with the strategy's table for it.
struct Snapshot<T, K, S> {
    members: Arc<Members<K, S>>,
    table: T,
}

impl<T: Walk, K, S> Snapshot<T, K, S> {
    /// Where the walk of a key hashed to `hash` starts, or what its request fails with: an empty
    /// set, or a table that could not be built for it.
    fn start(&self, hash: u64) -> Result<usize, BoxError> {
        if self.members.len() == 0 {
            return Err(NoEndpoints::new().into());
        }
        if let Some(error) = self.table.error() {
            return Err(error.clone().into());
        }
        Ok(self.table.start(hash))
    }
}

impl<St, K, S> Watch<K, S> for Shared<St, K, S>
where
    St: Strategy<K>,
    K: Send + Sync,
    S: Send + Sync,
{
    fn changed(&self, members: &Arc<Members<K, S>>) {
        if let Some(health) = &self.health {
            // Slow start counts from when an endpoint first appears in a change of the set,
            // after the membership the balancer started with.
            let previous = self.snapshot.load();
            if self.announced.swap(true, Ordering::AcqRel) && health.slow_starts() {
                for member in members.list.iter() {
                    let known = previous
                        .members
                        .list
                        .iter()
                        .any(|m| Arc::ptr_eq(&m.state, &member.state));
                    if !known {
                        health.joined(&member.state);
                    }
                }
            }
        }
        let table = self.strategy.build(&members.list);
        self.snapshot.store(Arc::new(Snapshot {
            members: Arc::clone(members),
            table,
        }));
        self.version.store(members.version, Ordering::Release);
        self.waiters.wake_all();
    }
}

impl<St, K, S> Balance<St, K, S>
where
    St: Strategy<K>,
    K: PartialEq + Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    /// Creates a balancer over `endpoints` that picks with `strategy`.
    ///
    /// The balancer follows later changes of the set made through any clone of the
    /// [`Endpoints`] handle.
    pub fn new(strategy: St, endpoints: Endpoints<K, S>) -> Self {
        Self::with_config(strategy, endpoints, DEFAULT_MAX_TRIES, None, Errors)
    }
}

impl<St, K, S, C> Balance<St, K, S, C>
where
    St: Strategy<K>,
    K: PartialEq + Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    pub(crate) fn with_config(
        strategy: St,
        endpoints: Endpoints<K, S>,
        max_tries: usize,
        health: Option<OutlierDetection>,
        classify: C,
    ) -> Self {
        let empty = Arc::new(Members {
            list: Box::new([]),
            version: 0,
            in_flight: Arc::default(),
        });
        let table = strategy.build(&empty.list);
        let shared = Arc::new(Shared {
            strategy,
            max_tries: max_tries.max(1),
            health: health.map(|config| Arc::new(Health::new(config))),
            snapshot: ArcSwap::from_pointee(Snapshot {
                members: empty,
                table,
            }),
            version: AtomicU64::new(0),
            announced: std::sync::atomic::AtomicBool::new(false),
            endpoints: endpoints.clone(),
            waiters: Waiters::default(),
        });
        let weak: Weak<Shared<St, K, S>> = Arc::downgrade(&shared);
        // Announces the current membership before any change can slip in.
        endpoints.watch(weak);
        Self::from_shared(shared, classify)
    }
}

impl<St, K, S, C> Balance<St, K, S, C>
where
    St: Strategy<K>,
{
    fn from_shared(shared: Arc<Shared<St, K, S>>, classify: C) -> Self {
        Self {
            shared,
            classify,
            cache: None,
            reused: false,
            reserved: Reserved::None,
            pending: Vec::new(),
            pending_version: 0,
            waiter: None,
        }
    }

    /// The endpoint set this balancer follows: changes made through it apply to every clone.
    pub fn endpoints(&self) -> &Endpoints<K, S> {
        &self.shared.endpoints
    }

    /// A snapshot of every endpoint's statistics, in set order: cheap (a few atomic loads per
    /// endpoint), for metrics and dashboards.
    ///
    /// The counts belong to the endpoint set, so they include the requests of every balancer over
    /// it; `ejected_for` reflects this balancer's outlier detection clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tower_lb::{strategy::RoundRobin, BalanceLayer, Endpoints};
    ///
    /// # tokio_test::block_on(async {
    /// let echo = service_fn(|_req: ()| async { Ok::<_, std::convert::Infallible>(()) });
    /// let balance = BalanceLayer::new(RoundRobin::new())
    ///     .layer(Endpoints::from_iter([("a", echo), ("b", echo)]));
    /// for _ in 0..3 {
    ///     balance.clone().oneshot(()).await.unwrap();
    /// }
    /// let stats = balance.stats();
    /// assert_eq!((stats[0].key, stats[0].picks), ("a", 2));
    /// assert_eq!((stats[1].key, stats[1].picks), ("b", 1));
    /// # });
    /// ```
    pub fn stats(&self) -> Vec<EndpointStats<K>>
    where
        K: Clone,
    {
        let snapshot = self.shared.snapshot.load();
        snapshot
            .members
            .list
            .iter()
            .map(|m| EndpointStats {
                key: m.key.clone(),
                weight: m.weight,
                picks: m.state.picks.load(Ordering::Relaxed),
                in_flight: m.state.requests(),
                failures: m.state.health.failures.load(Ordering::Relaxed),
                ejected_for: self
                    .shared
                    .health
                    .as_ref()
                    .and_then(|health| health.ejected_for(&m.state)),
            })
            .collect()
    }

    /// The strategy, with its shared state.
    pub fn strategy(&self) -> &St {
        &self.shared.strategy
    }
}

impl<St, K, S, C> Clone for Balance<St, K, S, C>
where
    St: Strategy<K>,
    C: Clone,
{
    /// Shares the strategy state and the endpoint set; the clone has no reservation of its own.
    fn clone(&self) -> Self {
        Self::from_shared(Arc::clone(&self.shared), self.classify.clone())
    }
}

/// Registers the task in `waiter` among those woken by a membership change, as it starts
/// waiting on the candidates of membership `version`.
fn wait<St, K, S>(
    shared: &Shared<St, K, S>,
    waiter: &mut Option<usize>,
    version: u64,
    cx: &Context<'_>,
) where
    St: Strategy<K>,
{
    let changed = || shared.version.load(Ordering::Acquire) != version;
    shared.waiters.wait(waiter, cx.waker(), changed);
}

impl<St, K, S, C> Drop for Balance<St, K, S, C>
where
    St: Strategy<K>,
{
    fn drop(&mut self) {
        self.shared.waiters.deregister(&mut self.waiter);
    }
}

/// The snapshot a request routes with: the clone's cached copy, or a guard on the shared one.
enum Current<'a, T, K, S> {
    Cached(&'a Arc<Snapshot<T, K, S>>),
    Loaded(arc_swap::Guard<Arc<Snapshot<T, K, S>>>),
}

impl<T, K, S> std::ops::Deref for Current<'_, T, K, S> {
    type Target = Snapshot<T, K, S>;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Cached(snapshot) => snapshot,
            Self::Loaded(guard) => guard,
        }
    }
}

impl<T, K, S> Current<'_, T, K, S> {
    /// An owned handle on the snapshot, for a request that must outlive this borrow.
    fn to_arc(&self) -> Arc<Snapshot<T, K, S>> {
        match self {
            Self::Cached(cached) => Arc::clone(cached),
            Self::Loaded(guard) => Arc::clone(guard),
        }
    }
}

/// The snapshot to route with. A clone fills its cache once it has routed a request (`reused`),
/// so that a clone made for one request pays for a guard only, and one that is never used pins no
/// snapshot.
fn current<'a, St, K, S>(
    shared: &'a Shared<St, K, S>,
    cache: &'a mut Option<Arc<Snapshot<St::Table, K, S>>>,
    reused: bool,
) -> Current<'a, St::Table, K, S>
where
    St: Strategy<K>,
{
    if !reused {
        return Current::Loaded(shared.snapshot.load());
    }
    let version = shared.version.load(Ordering::Acquire);
    if !matches!(cache, Some(c) if c.members.version == version) {
        *cache = Some(shared.snapshot.load_full());
    }
    match cache {
        Some(cached) => Current::Cached(cached),
        None => Current::Loaded(shared.snapshot.load()),
    }
}

impl<T, K, S> Candidates<S> for Snapshot<T, K, S>
where
    T: Walk + Send + Sync,
    K: Send + Sync,
    S: Send + Sync,
{
    fn len(&self) -> usize {
        self.members.len()
    }

    fn positions(&self) -> usize {
        self.table.positions()
    }

    fn owner(&self, position: usize) -> usize {
        self.table.owner(position)
    }

    fn service(&self, index: usize) -> &S {
        &self.members.list[index].service
    }

    fn state(&self, index: usize) -> &Arc<EndpointState> {
        &self.members.list[index].state
    }

    fn total(&self) -> &Arc<AtomicUsize> {
        &self.members.in_flight
    }

    fn version(&self) -> u64 {
        self.members.version
    }
}

impl<St, K, S> Membership<S> for Shared<St, K, S>
where
    St: Strategy<K>,
    K: Send + Sync + 'static,
    S: Send + Sync + 'static,
{
    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn reroute(&self, hash: u64) -> Result<(Arc<dyn Candidates<S>>, usize), BoxError> {
        let snapshot = self.snapshot.load_full();
        let start = snapshot.start(hash)?;
        Ok((snapshot, start))
    }

    fn waiters(&self) -> &Waiters {
        &self.waiters
    }
}

impl<St, K, S, C, Req> Service<Req> for Balance<St, K, S, C>
where
    St: Route<K, Req>,
    K: Send + Sync + 'static,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C>;

    // Inlined: for an always-ready endpoint the whole request then folds into the caller.
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !matches!(self.reserved, Reserved::None) {
            return Poll::Ready(Ok(()));
        }
        if St::KEYED {
            // The endpoint depends on the request: `call` picks it (or fails the request if the
            // set is empty), and the response future drives its readiness.
            self.reserved = Reserved::Keyed;
            return Poll::Ready(Ok(()));
        }
        let snapshot = current(&self.shared, &mut self.cache, self.reused);
        let members = &snapshot.members;
        let len = members.len();
        if len == 0 {
            self.pending.clear();
            self.shared.waiters.deregister(&mut self.waiter);
            self.reserved = Reserved::NoEndpoints;
            return Poll::Ready(Ok(()));
        }

        let health = self.shared.health.as_deref();
        if !self.pending.is_empty() {
            // Kept candidates are still worth waiting for if the set is the same and none of
            // them was ejected meanwhile; otherwise pick anew over what is eligible now.
            let current = self.pending_version == members.version
                && !health.is_some_and(|health| {
                    self.pending
                        .iter()
                        .any(|(index, _)| health.is_ejected(&members.list[*index].state))
                });
            if current {
                match poll_pending(&mut self.pending, cx) {
                    Some(Poll::Ready((index, service))) => {
                        self.shared.waiters.deregister(&mut self.waiter);
                        self.reserved = reserve(&self.shared, &snapshot, index, service);
                        return Poll::Ready(Ok(()));
                    }
                    Some(Poll::Pending) => {
                        wait(&self.shared, &mut self.waiter, members.version, cx);
                        return Poll::Pending;
                    }
                    // Every kept candidate failed: pick anew.
                    None => {}
                }
            } else {
                self.pending.clear();
            }
            self.shared.waiters.deregister(&mut self.waiter);
        }

        let first = self
            .shared
            .strategy
            .first(&snapshot.table, &members.list, health);
        let max_tries = self.shared.max_tries;
        let mut tried = 0;
        let mut error = None;
        let mut eligible_seen = false;
        // The strategy's choice, then the endpoints after it in set order: eligible ones first;
        // if every endpoint is ejected, panic mode decides whether to route over all of them
        // anyway or to fail.
        let passes: &[bool] = match health {
            Some(health) if health.panics() => &[true, false],
            _ => &[true],
        };
        for &skip_ejected in passes {
            if !skip_ejected && eligible_seen {
                break;
            }
            for step in 0..len {
                if tried == max_tries {
                    break;
                }
                let mut index = first + step;
                if index >= len {
                    index -= len;
                }
                let member = &members.list[index];
                if skip_ejected {
                    if health.is_some_and(|health| health.is_ejected(&member.state)) {
                        continue;
                    }
                    eligible_seen = true;
                    // In slow start, the strategy's choice may pass its turn to the endpoints
                    // after it.
                    if step == 0 && health.is_some_and(|health| !health.admits(member)) {
                        continue;
                    }
                }
                tried += 1;
                let mut service = member.service.clone();
                match service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        self.pending.clear();
                        self.reserved = reserve(&self.shared, &snapshot, index, service);
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Pending => self.pending.push((index, service)),
                    Poll::Ready(Err(e)) => {
                        if let Some(health) = health {
                            health.record(&member.state, true, members.states());
                        }
                        error = Some(e.into());
                    }
                }
            }
        }
        if !self.pending.is_empty() {
            self.pending_version = members.version;
            wait(&self.shared, &mut self.waiter, members.version, cx);
            return Poll::Pending;
        }
        self.reserved = if tried == 0 {
            Reserved::Unavailable {
                tried,
                error: Some(AllEjected::new(len).into()),
            }
        } else {
            Reserved::Unavailable { tried, error }
        };
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let reserved = std::mem::replace(&mut self.reserved, Reserved::None);
        // From the next request on, this balancer is reused: cache the snapshot.
        let first_use = !std::mem::replace(&mut self.reused, true);
        match reserved {
            Reserved::Endpoint(mut service, in_flight, outcome) => {
                let outcome = outcome.map(|o| (o, self.classify.clone()));
                ResponseFuture::called(service.call(request), in_flight, outcome)
            }
            Reserved::Keyed => self.call_keyed(request, first_use),
            Reserved::NoEndpoints => ResponseFuture::failed(NoEndpoints::new().into()),
            Reserved::Unavailable { tried, error } => {
                ResponseFuture::failed(Unavailable::new(tried, error).into())
            }
            Reserved::None => ResponseFuture::failed(NotReady::new().into()),
        }
    }
}

impl<St, K, S, C> Balance<St, K, S, C>
where
    St: Strategy<K>,
    K: Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
    C: Clone,
{
    /// Routes a request by its key: the key's own endpoint when it is ready at once (the common
    /// case, with no allocation), otherwise a [`Routing`] that walks the fallbacks.
    fn call_keyed<Req>(&mut self, request: Req, first_use: bool) -> ResponseFuture<S, Req, C>
    where
        St: Route<K, Req>,
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        let strategy = &self.shared.strategy;
        let hash = match strategy.request_key(&request) {
            Some(key) => strategy.hash_key(&key),
            None => return ResponseFuture::failed(MissingKey::new().into()),
        };
        let snapshot = current(&self.shared, &mut self.cache, !first_use);
        let start = match snapshot.start(hash) {
            Ok(start) => start,
            Err(error) => return ResponseFuture::failed(error),
        };
        let health = self.shared.health.as_deref();
        let mut walker = Walker::new(start, strategy.load_factor());
        let Some((index, in_flight)) = walker.next::<S, _>(&*snapshot, &[], health) else {
            let error = AllEjected::new(snapshot.members.len());
            return ResponseFuture::failed(Unavailable::new(0, Some(error.into())).into());
        };
        let member = &snapshot.members.list[index];
        let mut service = member.service.clone();
        // Poll without the task's waker: if the endpoint is not ready at once, the routing
        // future polls it again with the real one before anything waits on it.
        let mut noop = Context::from_waker(std::task::Waker::noop());
        let mut pending = Vec::new();
        let mut error = None;
        match service.poll_ready(&mut noop) {
            Poll::Ready(Ok(())) => {
                let health = self.shared.health.as_ref();
                let outcome = pick(health, &member.state, index, || snapshot.to_arc())
                    .map(|outcome| (outcome, self.classify.clone()));
                return ResponseFuture::called(service.call(request), in_flight, outcome);
            }
            Poll::Pending => pending.push((index, service, walker.admission(in_flight))),
            Poll::Ready(Err(e)) => {
                if let Some(health) = health {
                    health.record(&member.state, true, snapshot.members.states());
                }
                error = Some(e.into());
            }
        }
        let candidates: Arc<dyn Candidates<S>> = snapshot.to_arc();
        ResponseFuture::routing(Routing {
            candidates,
            walker,
            request: Some(request),
            pending,
            tried: vec![index as u32],
            max_tries: self.shared.max_tries,
            error,
            health: self.shared.health.clone(),
            classify: self.classify.clone(),
            membership: Arc::clone(&self.shared) as Arc<dyn Membership<S>>,
            hash,
            waiter: None,
        })
    }
}

impl<St, K, S, C> Balance<St, K, S, C>
where
    St: Strategy<K>,
{
    /// The endpoint a keyed strategy routes `key` to when every endpoint is available (and, with
    /// bounded loads, none is full): the key's own endpoint. `None` for keyless strategies and
    /// empty sets.
    ///
    /// To look up many keys, take a [`KeyMap`] once with [`Balance::key_map`].
    pub fn endpoint_for_key(&self, key: impl AsRef<[u8]>) -> Option<K>
    where
        K: Clone,
    {
        self.key_map().endpoint_for_key(key).cloned()
    }

    /// A snapshot of how the strategy maps request keys to endpoints, for looking up many keys
    /// cheaply: which shard holds a key, how a batch of keys splits over the endpoints, or what a
    /// membership change would move. Later membership changes do not affect a map already taken.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_lb::{key, strategy::ConsistentHash, Balance, Endpoints};
    ///
    /// let set = Endpoints::from_iter([("cache-a", ()), ("cache-b", ()), ("cache-c", ())]);
    /// let balance = Balance::new(ConsistentHash::new(key::query("key")), set);
    ///
    /// let map = balance.key_map();
    /// let mut batches = std::collections::HashMap::<&str, Vec<&str>>::new();
    /// for key in ["user:1", "user:2", "user:3", "user:4"] {
    ///     batches.entry(map.endpoint_for_key(key).unwrap()).or_default().push(key);
    /// }
    /// assert_eq!(batches.values().map(Vec::len).sum::<usize>(), 4);
    /// ```
    pub fn key_map(&self) -> KeyMap<St, K, S> {
        KeyMap {
            shared: Arc::clone(&self.shared),
            snapshot: self.shared.snapshot.load_full(),
        }
    }
}

/// One endpoint's statistics: see [`Balance::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats<K> {
    /// The endpoint's key.
    pub key: K,
    /// Its weight.
    pub weight: u32,
    /// Requests routed to it.
    pub picks: u64,
    /// Requests in flight on it, as the load-aware strategies count them (0 under the others).
    pub in_flight: usize,
    /// Failures recorded by outlier detection (0 without it).
    pub failures: u64,
    /// How much longer it stays ejected, if it is.
    pub ejected_for: Option<Duration>,
}

/// How a keyed strategy maps request keys to endpoints, for one membership snapshot: see
/// [`Balance::key_map`].
pub struct KeyMap<St, K, S>
where
    St: Strategy<K>,
{
    shared: Arc<Shared<St, K, S>>,
    snapshot: Arc<Snapshot<St::Table, K, S>>,
}

impl<St, K, S> KeyMap<St, K, S>
where
    St: Strategy<K>,
{
    /// The key of the endpoint that `key` is routed to when every endpoint is available (and,
    /// with bounded loads, none is full). `None` for keyless strategies and empty sets.
    ///
    /// Costs a hash of the key and one table lookup: no lock, no allocation.
    #[inline]
    pub fn endpoint_for_key(&self, key: impl AsRef<[u8]>) -> Option<&K> {
        if !St::KEYED || self.snapshot.members.len() == 0 {
            return None;
        }
        let table = &self.snapshot.table;
        if table.error().is_some() {
            return None;
        }
        let hash = self.shared.strategy.hash_key(key.as_ref());
        Some(&self.snapshot.members.list[table.owner(table.start(hash))].key)
    }

    /// The number of endpoints in the snapshot.
    pub fn len(&self) -> usize {
        self.snapshot.members.len()
    }

    /// Whether the snapshot has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<St, K, S> fmt::Debug for KeyMap<St, K, S>
where
    St: Strategy<K> + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMap")
            .field("strategy", &self.shared.strategy)
            .field("endpoints", &self.len())
            .finish()
    }
}

/// The reservation of a ready keyless candidate: counted in flight if the strategy balances on
/// load, with what outlier detection needs, and one more pick in its statistics.
#[inline]
fn reserve<St, K, S>(
    shared: &Shared<St, K, S>,
    snapshot: &Current<'_, St::Table, K, S>,
    index: usize,
    service: S,
) -> Reserved<S>
where
    St: Strategy<K>,
    K: Send + Sync + 'static,
    S: Send + Sync + 'static,
{
    let member = &snapshot.members.list[index];
    let in_flight = shared.strategy.track(member, &snapshot.members.in_flight);
    let outcome = pick(shared.health.as_ref(), &member.state, index, || {
        snapshot.to_arc()
    });
    Reserved::Endpoint(service, in_flight, outcome)
}

/// Polls the kept candidates: `Some(Ready(candidate))` for the first that is ready, `Some(Pending)`
/// if the others are all still pending, `None` if every one failed. Failed ones are dropped.
fn poll_pending<S, Req>(
    pending: &mut Vec<(usize, S)>,
    cx: &mut Context<'_>,
) -> Option<Poll<(usize, S)>>
where
    S: Service<Req>,
{
    let mut i = 0;
    while i < pending.len() {
        match pending[i].1.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                let candidate = pending.swap_remove(i);
                pending.clear();
                return Some(Poll::Ready(candidate));
            }
            Poll::Ready(Err(_)) => {
                pending.remove(i);
            }
            Poll::Pending => i += 1,
        }
    }
    if pending.is_empty() {
        None
    } else {
        Some(Poll::Pending)
    }
}

impl<St, K, S, C> fmt::Debug for Balance<St, K, S, C>
where
    St: Strategy<K> + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("strategy", &self.shared.strategy)
            .field("endpoints", &self.shared.snapshot.load().members.len())
            .field("max_tries", &self.shared.max_tries)
            .field("reserved", &!matches!(self.reserved, Reserved::None))
            .field("pending", &self.pending.len())
            .finish()
    }
}
