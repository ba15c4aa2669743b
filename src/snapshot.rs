//! The state a balancer's clones share: the strategy, the settings, and the current membership
//! snapshot with the strategy's table for it, replaced whenever the set changes.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Arc,
};

use arc_swap::{ArcSwap, Guard};

use crate::{
    ejection::Health,
    endpoints::{Endpoints, Members, Watch},
    error::{BoxError, NoEndpoints},
    health::OutlierDetection,
    state::EndpointState,
    strategy::{
        internal::{Build, Table},
        Strategy,
    },
    waiters::Waiters,
    walker::{Candidates, Membership, Set},
};

/// What every clone of a balancer shares.
pub(crate) struct Shared<St, K, S>
where
    St: Strategy<K>,
{
    pub(crate) strategy: St,
    pub(crate) max_tries: usize,
    /// Outlier detection, when configured.
    pub(crate) health: Option<Arc<Health>>,
    snapshot: ArcSwap<Snapshot<St::Table, K, S>>,
    /// The version of the newest snapshot, stored after it is published.
    version: AtomicU64,
    /// Counts the changes that make waiting requests route again: membership changes, and
    /// endpoints taken out or let back by active health checks. A request notes it before it
    /// polls its candidates, and does not wait if it moved by the time it registers its waker.
    generation: AtomicU64,
    /// Whether the set has announced its first membership to this balancer.
    announced: AtomicBool,
    /// Keeps the set alive for the `Balance::endpoints` handle.
    pub(crate) endpoints: Endpoints<K, S>,
    /// The balancers and requests waiting for an endpoint: a membership change wakes them, so
    /// that they route over the new set.
    pub(crate) waiters: Waiters,
}

/// A membership snapshot with the strategy's table for it.
pub(crate) struct Snapshot<T, K, S> {
    pub(crate) members: Arc<Members<K, S>>,
    pub(crate) table: T,
}

impl<T: Table, K, S> Snapshot<T, K, S> {
    /// The table position of a walk that starts at `value`, or what its request fails with: an
    /// empty set, or a table that could not be built for it.
    #[inline]
    pub(crate) fn position(&self, value: u64) -> Result<u64, BoxError> {
        if self.members.len() == 0 {
            return Err(NoEndpoints::new().into());
        }
        if let Some(error) = self.table.error() {
            return Err(error.clone().into());
        }
        Ok(self.table.position(value))
    }
}

impl<St, K, S> Shared<St, K, S>
where
    St: Strategy<K>,
    K: PartialEq + Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    /// The shared state of a new balancer over `endpoints`, following the set from now on.
    pub(crate) fn new(
        strategy: St,
        endpoints: Endpoints<K, S>,
        max_tries: usize,
        health: Option<OutlierDetection>,
    ) -> Arc<Self> {
        let empty = Arc::new(Members {
            list: Box::new([]),
            version: 0,
            in_flight: Arc::default(),
        });
        let table = strategy.build(&empty.list);
        let shared = Arc::new(Self {
            strategy,
            max_tries: max_tries.max(1),
            health: health.map(|config| Arc::new(Health::new(config))),
            snapshot: ArcSwap::from_pointee(Snapshot {
                members: empty,
                table,
            }),
            version: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            announced: AtomicBool::new(false),
            endpoints: endpoints.clone(),
            waiters: Waiters::default(),
        });
        // Announces the current membership before any change can slip in.
        let weak: std::sync::Weak<dyn Watch<K, S>> = Arc::downgrade(&shared) as _;
        endpoints.watch(weak);
        shared
    }
}

impl<St, K, S> Shared<St, K, S>
where
    St: Strategy<K>,
{
    /// The newest snapshot, held for as long as the caller keeps it.
    pub(crate) fn load_full(&self) -> Arc<Snapshot<St::Table, K, S>> {
        self.snapshot.load_full()
    }

    /// The newest snapshot, borrowed.
    pub(crate) fn load(&self) -> Guard<Arc<Snapshot<St::Table, K, S>>> {
        self.snapshot.load()
    }

    /// The version of the newest snapshot.
    #[inline]
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// How many changes could have made a waiting request route again (see `generation`).
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
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
                        health.joined(&member.state.health);
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
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.waiters.wake_all();
    }

    fn eligibility_changed(&self) {
        // A request waiting on a candidate that was just taken out routes again; one waiting
        // because nothing was eligible finds the endpoint that came back.
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.waiters.wake_all();
    }
}

impl<St, K, S> Membership<S> for Shared<St, K, S>
where
    St: Strategy<K>,
    K: Send + Sync + 'static,
    S: Send + Sync + 'static,
{
    fn version(&self) -> u64 {
        Shared::version(self)
    }

    fn generation(&self) -> u64 {
        Shared::generation(self)
    }

    fn reroute(&self, hash: u64) -> Result<(Arc<dyn Candidates<S>>, u64), BoxError> {
        let snapshot = self.snapshot.load_full();
        let position = snapshot.position(hash)?;
        Ok((snapshot, position))
    }

    fn waiters(&self) -> &Waiters {
        &self.waiters
    }
}

impl<T, K, S> Set for Snapshot<T, K, S>
where
    T: Send + Sync,
    K: Send + Sync,
    S: Send + Sync,
{
    fn len(&self) -> usize {
        self.members.len()
    }

    #[inline]
    fn state(&self, index: usize) -> &Arc<EndpointState> {
        &self.members.list[index].state
    }
}

impl<T, K, S> Candidates<S> for Snapshot<T, K, S>
where
    T: Table,
    K: Send + Sync + 'static,
    S: Send + Sync + 'static,
{
    #[inline]
    fn span(&self) -> usize {
        self.table.span(self.members.len())
    }

    #[inline]
    fn candidate(&self, health: Option<&Health>, position: u64, step: usize) -> usize {
        self.table
            .candidate(&self.members.list, health, position, step)
    }

    #[inline]
    fn ramps(&self) -> bool {
        self.table.ramps()
    }

    #[inline]
    fn service(&self, index: usize) -> &S {
        &self.members.list[index].service
    }

    fn total(&self) -> &Arc<AtomicUsize> {
        &self.members.in_flight
    }

    fn version(&self) -> u64 {
        self.members.version
    }

    fn into_set(self: Arc<Self>) -> Arc<dyn Set> {
        self
    }
}

/// The snapshot a clone of a balancer routes with.
///
/// A reused clone keeps the snapshot it last routed with and checks it against the shared
/// version: one plain load instead of an `ArcSwap` guard. A clone only fills it once it has routed
/// a request, so that a clone made for one request (as axum makes them) pays for a guard only,
/// and a clone that is never polled (a router's template) pins no snapshot.
pub(crate) struct Cache<T, K, S> {
    cached: Option<Arc<Snapshot<T, K, S>>>,
    /// Whether this clone has routed a request.
    reused: bool,
}

impl<T, K, S> Cache<T, K, S> {
    pub(crate) fn new() -> Self {
        Self {
            cached: None,
            reused: false,
        }
    }

    /// Notes that the clone routed a request: from the next one on, it keeps its snapshot.
    /// Returns whether this is the first.
    #[inline]
    pub(crate) fn used(&mut self) -> bool {
        !std::mem::replace(&mut self.reused, true)
    }

    /// Whether the clone has routed a request before.
    #[inline]
    pub(crate) fn is_reused(&self) -> bool {
        self.reused
    }

    /// The snapshot to route with: the cached one if the clone is reused (refreshed if the set
    /// moved on), a guard on the shared one otherwise.
    #[inline]
    pub(crate) fn current<'a, St>(
        &'a mut self,
        shared: &'a Shared<St, K, S>,
        reused: bool,
    ) -> Current<'a, T, K, S>
    where
        St: Build<K, Table = T>,
    {
        if !reused {
            return Current::Loaded(shared.load());
        }
        let version = shared.version();
        if !matches!(&self.cached, Some(c) if c.members.version == version) {
            self.cached = Some(shared.load_full());
        }
        match &self.cached {
            Some(cached) => Current::Cached(cached),
            None => Current::Loaded(shared.load()),
        }
    }
}

/// The snapshot a request routes with: the clone's cached copy, or a guard on the shared one.
pub(crate) enum Current<'a, T, K, S> {
    Cached(&'a Arc<Snapshot<T, K, S>>),
    Loaded(Guard<Arc<Snapshot<T, K, S>>>),
}

impl<T, K, S> std::ops::Deref for Current<'_, T, K, S> {
    type Target = Snapshot<T, K, S>;

    #[inline]
    fn deref(&self) -> &Self::Target {
        match self {
            Self::Cached(snapshot) => snapshot,
            Self::Loaded(guard) => guard,
        }
    }
}

impl<T, K, S> Current<'_, T, K, S> {
    /// An owned handle on the snapshot, for a request that must outlive this borrow.
    pub(crate) fn to_arc(&self) -> Arc<Snapshot<T, K, S>> {
        match self {
            Self::Cached(cached) => Arc::clone(cached),
            Self::Loaded(guard) => Arc::clone(guard),
        }
    }
}
