use std::{
    fmt,
    sync::{
        atomic::{self, Ordering},
        Arc,
    },
    task::{ready, Context, Poll, Waker},
};

use tower_service::Service;

use crate::{
    ejection::Health,
    endpoints::Endpoints,
    error::{BoxError, MissingKey, NotReady},
    future::ResponseFuture,
    health::{Classify, Errors, OutlierDetection},
    load::InFlight,
    retry::{Attempts, ReadAttempts, Untracked},
    rng::Access,
    snapshot::{Cache, Current, Shared, Snapshot},
    state::EndpointState,
    stats::{self, EndpointStats, KeyMap},
    strategy::{
        internal::{Begin, Start},
        Route, Strategy,
    },
    walker::{self, Accounting, Candidates, First, Found, Membership, Probed, Routing, Set, Walk},
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
/// For keyless strategies, `poll_ready` picks the endpoint and drives its readiness: the
/// strategy's choice first, then its next choices (the next turns of a rotation, new random
/// draws), up to [`max_tries`](crate::BalanceLayer::max_tries) candidates. Keyed strategies pick
/// when they see the request, in `call`, and their response future does the same from the key's
/// endpoint over the key's next candidates.
///
/// - The first candidate that is ready is reserved for the next `call`, which sends the request to
///   it. An endpoint is never called before its own `poll_ready` returned `Ready(Ok(()))`.
/// - A candidate that is not ready, or ejected by outlier detection, is passed over, and the
///   strategy's share of it is spread over the others: a rotation spends the turns passed over,
///   so the endpoint after an unavailable one does not take its share on top of its own.
/// - If no candidate is ready but some are pending,
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
/// # Retries
///
/// A retry from a middleware above the balancer is a new call. By default it is routed like a new
/// request: the next turn or draw of a keyless strategy, and the key's endpoint again for a keyed
/// one. With [`BalanceLayer::skip_tried_endpoints`](crate::BalanceLayer::skip_tried_endpoints)
/// and [`retry::RetryLayer`](crate::retry::RetryLayer) above, the balancer notes each endpoint an
/// attempt goes to in the request's [`Attempts`] record and routes the next attempt past them: the
/// key's next candidates, or the strategy's next choices (a reservation made in `poll_ready` on an
/// endpoint the request tried is released in `call`, and the request walks on from there).
///
/// The last type parameter, `A`, is what reads that record from a request: [`Untracked`] (the
/// default) reads nothing and costs nothing, for every request type;
/// [`FromExtensions`](crate::retry::FromExtensions) reads an `http::Request`'s extensions. It is a
/// type parameter, chosen by the layer, rather than a bound on the request type, so that a
/// `Balance` stays a `Service` of any request type. See [`retry`](crate::retry).
///
/// # Errors
///
/// The endpoints' errors are passed through, boxed into [`BoxError`](crate::BoxError).
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
pub struct Balance<St, K, S, C = Errors, A = Untracked>
where
    St: Strategy<K>,
{
    shared: Arc<Shared<St, K, S>>,
    /// Which responses count as failures, for outlier detection.
    classify: C,
    cache: Cache<St::Table, K, S>,
    /// What the next `call` does; set by `poll_ready`.
    reserved: Reserved<S>,
    /// What the reserved request counts. Kept beside the reservation and filled in place: moving
    /// it around costs more than the request's routing.
    accounting: Accounting<C>,
    /// A keyless strategy's walk, made when a first step does not find its endpoint ready, and
    /// kept (with its allocations) while the caller waits for pending candidates and after.
    walk: Option<Box<Walk<S>>>,
    /// This clone's slot among the tasks woken by a membership change, while it waits.
    waiter: Option<usize>,
    /// Finds a request's record of the endpoints its earlier attempts went to.
    attempts: A,
    /// Where the reservation's walk started, the version of its snapshot and the reserved
    /// endpoint's counters: kept when requests carry attempts, for a retry whose reservation is
    /// an endpoint it tried to walk on from there.
    retry_from: Option<(u64, u64, Arc<EndpointState>)>,
}

enum Reserved<S> {
    None,
    /// The endpoint the next `call` goes to, made ready.
    Endpoint(S),
    /// A keyed strategy is ready; `call` picks by the request's key.
    Keyed,
    /// The next request fails with this error.
    Failed(BoxError),
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
        Self::with_config(
            strategy,
            endpoints,
            DEFAULT_MAX_TRIES,
            None,
            Errors,
            Untracked,
        )
    }
}

impl<St, K, S, C, A> Balance<St, K, S, C, A>
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
        attempts: A,
    ) -> Self {
        let shared = Shared::new(strategy, endpoints, max_tries, health);
        Self::from_shared(shared, classify, attempts)
    }
}

impl<St, K, S, C, A> Balance<St, K, S, C, A>
where
    St: Strategy<K>,
{
    fn from_shared(shared: Arc<Shared<St, K, S>>, classify: C, attempts: A) -> Self {
        Self {
            shared,
            classify,
            cache: Cache::new(),
            reserved: Reserved::None,
            accounting: Accounting::new(),
            walk: None,
            waiter: None,
            attempts,
            retry_from: None,
        }
    }

    /// How this balancer may move its strategy's cursors: alone when it holds the only handle on
    /// the shared state. Clones, key maps and routing response futures are such handles; the
    /// endpoint set's own reference is weak and never moves a cursor. A clone cannot appear
    /// meanwhile, since making one borrows this balancer.
    #[inline]
    fn access(&self) -> Access {
        if Arc::strong_count(&self.shared) == 1 {
            // The count came down to one when the last other handle was dropped, a release: this
            // fence orders that handle's cursor moves before this balancer's.
            atomic::fence(Ordering::Acquire);
            Access::Sole
        } else {
            Access::Shared
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
    /// Under [`Subset`](crate::strategy::Subset), [`Tiers`](crate::strategy::Tiers) and
    /// [`ZoneAware`](crate::strategy::ZoneAware), the list holds the endpoints the balancer routes
    /// over, in its order: the subset, or the tiers and zones one after another.
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
        stats::stats(&self.shared)
    }

    /// The strategy, with its shared state.
    pub fn strategy(&self) -> &St {
        &self.shared.strategy
    }

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
        KeyMap::new(Arc::clone(&self.shared))
    }
}

impl<St, K, S, C, A, Req> Service<Req> for Balance<St, K, S, C, A>
where
    St: Route<K, Req>,
    K: Send + Sync + 'static,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
    A: ReadAttempts<Req>,
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
        let access = self.access();
        let mut start = None;
        if !self.walk.as_ref().is_some_and(|walk| walk.is_waiting()) {
            match self.shared.strategy.start(None::<&Req>, access) {
                Begin::At(value) => start = Some(value),
                // A keyed strategy picks in `call`, by the request's key, and the response
                // future drives the endpoint's readiness.
                Begin::AtCall | Begin::NoKey => {
                    self.reserved = Reserved::Keyed;
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let shared = &*self.shared;
        // Noted before the candidates are polled: a change after this point wakes the caller
        // even if it comes before the caller registers its waker.
        let generation = shared.generation();
        let reused = self.cache.is_reused();
        let snapshot = self.cache.current(shared, reused);
        match walk_keyless(shared, &snapshot, &mut self.walk, (start, access), cx) {
            Poll::Ready(Ok((found, position))) => {
                shared.strategy.settled(found.steps, access);
                if A::READS {
                    let state = &snapshot.members.list[found.index].state;
                    let version = snapshot.members.version;
                    self.retry_from = Some((position, version, Arc::clone(state)));
                }
                let in_flight = self.walk.as_mut().and_then(|walk| walk.take_in_flight());
                let accounting = &mut self.accounting;
                let classify = &self.classify;
                let service = reserve(shared, &snapshot, found, in_flight, accounting, classify);
                self.reserved = Reserved::Endpoint(service);
            }
            Poll::Ready(Err(error)) => self.reserved = Reserved::Failed(error),
            Poll::Pending => {
                let changed = || shared.generation() != generation;
                shared.waiters.wait(&mut self.waiter, cx.waker(), changed);
                return Poll::Pending;
            }
        }
        shared.waiters.deregister(&mut self.waiter);
        Poll::Ready(Ok(()))
    }

    // Always inlined: the call of a reserved endpoint is a few instructions, less than a call.
    #[inline(always)]
    fn call(&mut self, request: Req) -> Self::Future {
        let first = self.cache.used();
        if A::READS && matches!(self.reserved, Reserved::Endpoint(_)) {
            if let Some(attempts) = self.attempts.attempts(&request).cloned() {
                return self.call_reserved_attempt(request, attempts, !first);
            }
        }
        if let Reserved::Endpoint(service) = &mut self.reserved {
            // Called in place: the reservation is not moved out, only its accounting.
            let future = service.call(request);
            self.reserved = Reserved::None;
            return ResponseFuture::called(future, self.accounting.sent());
        }
        match std::mem::replace(&mut self.reserved, Reserved::None) {
            Reserved::Keyed => self.call_keyed(request, !first),
            Reserved::Failed(error) => ResponseFuture::failed(error),
            Reserved::Endpoint(_) | Reserved::None => {
                ResponseFuture::failed(NotReady::new().into())
            }
        }
    }
}

impl<St, K, S, C, A> Balance<St, K, S, C, A>
where
    St: Strategy<K>,
    K: Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
    C: Clone,
{
    /// Routes a request by its key: the walk's first probe runs here, and calls the endpoint at
    /// once when it is ready (the common case, with no allocation); otherwise the response future
    /// walks on.
    fn call_keyed<Req>(&mut self, request: Req, reused: bool) -> ResponseFuture<S, Req, C>
    where
        St: Start<K, Req>,
        S: Service<Req>,
        S::Error: Into<BoxError>,
        A: ReadAttempts<Req>,
    {
        // Keyed strategies move no cursor.
        let hash = match self.shared.strategy.start(Some(&request), Access::Shared) {
            Begin::At(hash) => hash,
            Begin::NoKey => return ResponseFuture::failed(MissingKey::new().into()),
            // Keyed strategies always start from a request they are given.
            Begin::AtCall => return ResponseFuture::failed(NotReady::new().into()),
        };
        let attempts = if A::READS {
            self.attempts.attempts(&request).cloned()
        } else {
            None
        };
        let shared = &self.shared;
        let snapshot = self.cache.current(shared, reused);
        let position = match snapshot.position(hash) {
            Ok(position) => position,
            Err(error) => return ResponseFuture::failed(error),
        };
        route(
            shared,
            &snapshot,
            &self.classify,
            request,
            (position, hash),
            attempts,
        )
    }

    /// Calls the reserved endpoint with a request that carries a record of its attempts: noted
    /// there, unless an earlier attempt went to it. Then the reservation is released and the
    /// request walks on from where the reservation's walk started, passing over every endpoint
    /// it tried.
    #[inline(never)]
    fn call_reserved_attempt<Req>(
        &mut self,
        request: Req,
        attempts: Attempts,
        reused: bool,
    ) -> ResponseFuture<S, Req, C>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        let Reserved::Endpoint(mut service) = std::mem::replace(&mut self.reserved, Reserved::None)
        else {
            return ResponseFuture::failed(NotReady::new().into());
        };
        let retry_from = self.retry_from.take();
        let (position, version) = match retry_from {
            Some((position, version, state)) if attempts.contains(&state) => {
                // The reservation goes unused: its pick is taken back.
                state.picks.sub_one();
                (position, version)
            }
            other => {
                if let Some((_, _, state)) = other {
                    attempts.record(&state);
                }
                return ResponseFuture::called(service.call(request), self.accounting.sent());
            }
        };
        // Released: its readiness and its counts go unused.
        drop(service);
        self.accounting = Accounting::new();
        let shared = &self.shared;
        let snapshot = self.cache.current(shared, reused);
        let position = if snapshot.members.version == version {
            Ok(position)
        } else {
            // The set changed since the reservation: a start in the new table.
            snapshot.position(position)
        };
        let position = match position {
            Ok(position) => position,
            Err(error) => return ResponseFuture::failed(error),
        };
        let attempts = Some(attempts);
        route(
            shared,
            &snapshot,
            &self.classify,
            request,
            (position, position),
            attempts,
        )
    }
}

/// Routes a request from `position` of the current snapshot (where `hash` places it after a
/// membership change), passing over the endpoints in its record of `attempts`: the walk's first
/// probe runs here, and calls the endpoint at once when it is ready; otherwise the response
/// future walks on.
#[inline]
fn route<St, K, S, C, Req>(
    shared: &Arc<Shared<St, K, S>>,
    snapshot: &Current<'_, St::Table, K, S>,
    classify: &C,
    request: Req,
    (position, hash): (u64, u64),
    attempts: Option<Attempts>,
) -> ResponseFuture<S, Req, C>
where
    St: Strategy<K>,
    K: Send + Sync + 'static,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    C: Clone,
{
    let version = snapshot.members.version;
    // Without the task's waker: if nothing is ready at once, the response future polls the
    // kept candidates again with the real one before anything waits on them.
    let mut noop = Context::from_waker(Waker::noop());
    let (health, factor) = (shared.health.as_deref(), shared.strategy.load_factor());
    let start = (position, version);
    let avoid = attempts.as_ref().map(Attempts::tried);
    let probed = match avoid {
        Some(avoid) if !avoid.is_empty() => Err(avoid),
        _ => match walker::first(&mut noop, &**snapshot, health, factor, position) {
            First::Found(found) => {
                return call(shared, snapshot, classify, request, found, None, &attempts)
            }
            First::WalkOn(probed) => Ok(probed),
        },
    };
    let mut walk = Walk::new(position, version, factor);
    let max_tries = shared.max_tries;
    let polled = match probed {
        Err(avoid) => walk.begin_avoiding(&mut noop, &**snapshot, health, start, max_tries, avoid),
        Ok(probed) => walk.go_on(&mut noop, &**snapshot, health, start, max_tries, probed),
    };
    match polled {
        Poll::Ready(Some(found)) => {
            let in_flight = walk.take_in_flight();
            call(
                shared, snapshot, classify, request, found, in_flight, &attempts,
            )
        }
        Poll::Ready(None) => ResponseFuture::failed(walk.take_error()),
        Poll::Pending => ResponseFuture::routing(Routing {
            set: snapshot.to_arc(),
            walk,
            request: Some(request),
            max_tries: shared.max_tries,
            health: shared.health.clone(),
            classify: classify.clone(),
            membership: Arc::clone(shared) as Arc<dyn Membership<S>>,
            hash,
            waiter: None,
            attempts,
        }),
    }
}

/// Sends a keyed request to the candidate its walk found ready, noting it in the request's record
/// of attempts if it has one.
#[inline]
fn call<St, K, S, C, Req>(
    shared: &Shared<St, K, S>,
    snapshot: &Current<'_, St::Table, K, S>,
    classify: &C,
    request: Req,
    found: Found<S>,
    in_flight: Option<InFlight>,
    attempts: &Option<Attempts>,
) -> ResponseFuture<S, Req, C>
where
    St: Strategy<K>,
    K: Send + Sync + 'static,
    S: Service<Req> + Send + Sync + 'static,
    C: Clone,
{
    if let Some(attempts) = attempts {
        attempts.record(&snapshot.members.list[found.index].state);
    }
    let mut accounting = Accounting::new();
    let mut service = reserve(
        shared,
        snapshot,
        found,
        in_flight,
        &mut accounting,
        classify,
    );
    ResponseFuture::called(service.call(request), accounting.sent())
}

/// The walk of a keyless strategy in `poll_ready`: a new walk from `start`, or, without one, the
/// walk that waits for its kept candidates, which starts over from a new pick if the set changed
/// meanwhile.
#[inline]
fn walk_keyless<St, K, S, Req>(
    shared: &Shared<St, K, S>,
    snapshot: &Snapshot<St::Table, K, S>,
    walk: &mut Option<Box<Walk<S>>>,
    (start, access): (Option<u64>, Access),
    cx: &mut Context<'_>,
) -> Poll<Result<(Found<S>, u64), BoxError>>
where
    St: Route<K, Req>,
    K: Send + Sync + 'static,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
{
    let (version, health) = (snapshot.members.version, shared.health.as_deref());
    if let Some(waiting) = walk
        .as_deref_mut()
        .filter(|w| start.is_none() && w.version() == version)
    {
        let found = ready!(waiting.poll(cx, snapshot, health, shared.max_tries));
        let position = waiting.start();
        return Poll::Ready(
            found
                .map(|found| (found, position))
                .ok_or_else(|| waiting.take_error()),
        );
    }
    // A new walk; or the set changed while the caller waited: pick anew over the new one (a
    // keyless strategy always starts from its own state).
    let start = start.unwrap_or_else(|| match shared.strategy.start(None::<&Req>, access) {
        Begin::At(start) => start,
        Begin::AtCall | Begin::NoKey => 0,
    });
    let position = match snapshot.position(start) {
        Ok(position) => position,
        Err(error) => {
            if let Some(walk) = walk {
                walk.clear();
            }
            return Poll::Ready(Err(error));
        }
    };
    match walker::first(cx, snapshot, health, None, position) {
        First::Found(found) => Poll::Ready(Ok((found, position))),
        First::WalkOn(probed) => {
            let start = ((position, version), shared.max_tries);
            walk_on(walk, cx, snapshot, health, start, probed)
                .map(|found| found.map(|found| (found, position)))
        }
    }
}

/// A keyless walk whose first step found nothing ready at once goes on from `start` (position and
/// version, then the bound on tries): in the clone's own walk if it made one already, otherwise
/// on the stack, boxed only if the caller has to wait. Out of line: the common case never walks on.
#[inline(never)]
fn walk_on<S, Req, C>(
    walk: &mut Option<Box<Walk<S>>>,
    cx: &mut Context<'_>,
    set: &C,
    health: Option<&Health>,
    (start, max_tries): ((u64, u64), usize),
    probed: Option<Probed<S>>,
) -> Poll<Result<Found<S>, BoxError>>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Candidates<S> + ?Sized,
{
    let (found, error) = match walk {
        Some(walk) => {
            let found = ready!(walk.go_on(cx, set, health, start, max_tries, probed));
            let error = found.is_none().then(|| walk.take_error());
            (found, error)
        }
        None => {
            let mut local = Walk::new(start.0, start.1, None);
            let Poll::Ready(found) = local.go_on(cx, set, health, start, max_tries, probed) else {
                *walk = Some(Box::new(local));
                return Poll::Pending;
            };
            let error = found.is_none().then(|| local.take_error());
            (found, error)
        }
    };
    Poll::Ready(found.ok_or_else(|| error.unwrap_or_else(|| NotReady::new().into())))
}

/// Reserves a candidate that a walk found ready: its clone, with its accounting filled in
/// `accounting`: counted in flight (`in_flight`, the walk's count when loads are bounded, or by the
/// strategy if it balances on load), one more pick in its statistics, and what outlier detection
/// needs.
#[inline]
fn reserve<St, K, S, C>(
    shared: &Shared<St, K, S>,
    snapshot: &Current<'_, St::Table, K, S>,
    found: Found<S>,
    in_flight: Option<InFlight>,
    accounting: &mut Accounting<C>,
    classify: &C,
) -> S
where
    St: Strategy<K>,
    K: Send + Sync + 'static,
    S: Send + Sync + 'static,
    C: Clone,
{
    let member = &snapshot.members.list[found.index];
    let in_flight = match in_flight {
        Some(in_flight) => Some(in_flight),
        None => shared.strategy.track(member, &snapshot.members.in_flight),
    };
    let set = || snapshot.to_arc() as Arc<dyn Set>;
    let health = shared.health.as_ref();
    accounting.route(&member.state, found.index, in_flight, health, set, classify);
    found.service
}

impl<St, K, S, C, A> Clone for Balance<St, K, S, C, A>
where
    St: Strategy<K>,
    C: Clone,
    A: Clone,
{
    /// Shares the strategy state and the endpoint set; the clone has no reservation of its own.
    fn clone(&self) -> Self {
        let attempts = self.attempts.clone();
        Self::from_shared(Arc::clone(&self.shared), self.classify.clone(), attempts)
    }
}

impl<St, K, S, C, A> Drop for Balance<St, K, S, C, A>
where
    St: Strategy<K>,
{
    fn drop(&mut self) {
        self.shared.waiters.deregister(&mut self.waiter);
    }
}

impl<St, K, S, C, A> fmt::Debug for Balance<St, K, S, C, A>
where
    St: Strategy<K> + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("strategy", &self.shared.strategy)
            .field("endpoints", &self.shared.load().members.len())
            .field("max_tries", &self.shared.max_tries)
            .field("reserved", &!matches!(self.reserved, Reserved::None))
            .field(
                "pending",
                &self.walk.as_ref().map_or(0, |walk| walk.counts().1),
            )
            .finish()
    }
}
