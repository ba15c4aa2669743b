//! The endpoint set: services keyed by `K`, each with a weight, changeable at runtime.

use std::{
    borrow::{Borrow, Cow},
    fmt,
    iter::FromIterator,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    sync::{
        atomic::{AtomicU64, AtomicUsize},
        Arc, Mutex, MutexGuard, Weak,
    },
};

use arc_swap::ArcSwap;

use crate::{error::InvalidWeight, locality::Locality, state::EndpointState, waiters::Waiters};

/// A set of endpoints, each a service identified by a key `K` and carrying a weight.
///
/// `Endpoints` is a cheap handle: clones share one set. Hand one clone to
/// [`BalanceLayer`](crate::BalanceLayer) and keep another to change the set at runtime, from any
/// thread, while requests flow. Every change publishes a new immutable snapshot; requests already
/// routed keep the snapshot (and the endpoint clone) they were routed with, so a removed endpoint
/// finishes the requests it has in flight.
///
/// Endpoints keep the order in which their keys were first inserted; replacing the service or the
/// weight of an existing key keeps its place. Keys are unique: inserting a key that is already in
/// the set replaces its service (as `tower::discover::Change::Insert` does), and building a set
/// from an iterator with repeated keys keeps the last service given for each key, in the place of
/// the first.
///
/// Weights are integers of at least 1 (the default). Strategies that ignore weights, such as
/// [`RoundRobin`](crate::strategy::RoundRobin), still accept them.
///
/// Endpoint services must be `Clone`, and their clones should be cheap and share the underlying
/// connection pool, as `hyper_util` clients and tonic `Channel`s do: the balancer clones the chosen
/// endpoint for each request. Wrap other services in `tower::buffer::Buffer`.
///
/// # Examples
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{strategy::RoundRobin, BalanceLayer, Endpoints};
///
/// # tokio_test::block_on(async {
/// let backend = |name: &'static str| service_fn(move |_req: ()| async move {
///     Ok::<_, std::convert::Infallible>(name)
/// });
///
/// let set = Endpoints::from_iter([("a", backend("a")), ("b", backend("b"))]);
/// let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
///
/// // Change the set at runtime through the handle kept aside.
/// set.remove("a");
/// set.insert("c", backend("c"));
/// assert_eq!(set.keys(), ["b", "c"]);
///
/// assert_eq!(balance.clone().oneshot(()).await.unwrap(), "b");
/// assert_eq!(balance.clone().oneshot(()).await.unwrap(), "c");
/// # });
/// ```
pub struct Endpoints<K, S> {
    pub(crate) inner: Arc<Inner<K, S>>,
}

pub(crate) struct Inner<K, S> {
    current: ArcSwap<Members<K, S>>,
    /// Serialises writers, and holds the balancers that follow this set so that every change is
    /// announced to them in order.
    writer: Mutex<Vec<Weak<dyn Watch<K, S>>>>,
    /// Errors from the discovery streams that feed this set, and the last one's text.
    pub(crate) discovery_errors: AtomicU64,
    pub(crate) last_discovery_error: Mutex<Option<String>>,
    /// The discovery drivers feeding this set ([`Endpoints::follow`]), woken when it is dropped
    /// so that they end without waiting for their stream's next item.
    pub(crate) followers: Waiters,
}

// Used by the active health checks only.
#[cfg_attr(not(feature = "health-check"), allow(dead_code))]
impl<K, S> Inner<K, S> {
    /// The current membership snapshot.
    pub(crate) fn members(&self) -> Arc<Members<K, S>> {
        self.current.load_full()
    }

    /// Tells every balancer following this set that an endpoint became eligible or ineligible
    /// without a membership change (an active health check took it out or let it back), so that
    /// the requests waiting for a candidate route again.
    pub(crate) fn eligibility_changed(&self) {
        let watchers: Vec<Arc<dyn Watch<K, S>>> = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        // Outside the lock: waking may run code that changes the set.
        for watch in watchers {
            watch.eligibility_changed();
        }
    }
}

impl<K, S> Drop for Inner<K, S> {
    fn drop(&mut self) {
        self.followers.wake_all();
    }
}

/// One immutable membership snapshot.
pub(crate) struct Members<K, S> {
    pub(crate) list: Box<[Member<K, S>]>,
    /// Increases with every change of the set.
    pub(crate) version: u64,
    /// Requests in flight over the whole set, counted as [`EndpointState::in_flight`] is; shared
    /// by every snapshot of the set.
    pub(crate) in_flight: Arc<AtomicUsize>,
}

/// One endpoint of a snapshot. Public only to appear in the strategies' internal trait; it cannot
/// be reached from outside the crate.
#[derive(Debug)]
pub struct Member<K, S> {
    pub(crate) key: K,
    pub(crate) service: S,
    pub(crate) weight: u32,
    /// Its zone and priority tier.
    pub(crate) locality: Locality,
    /// Per-endpoint counters, kept across snapshots and across a replacement of the service.
    pub(crate) state: Arc<EndpointState>,
}

impl<K, S> Member<K, S> {
    pub(crate) fn new(key: K, service: S, weight: u32) -> Self {
        Self {
            key,
            service,
            weight,
            locality: Locality::new(),
            state: Arc::default(),
        }
    }

    /// The same endpoint in `locality`.
    pub(crate) fn located(mut self, locality: Locality) -> Self {
        self.locality = locality;
        self
    }
}

/// Something that must see every new snapshot of a set, such as a balancer's precomputed tables.
pub(crate) trait Watch<K, S>: Send + Sync {
    fn changed(&self, members: &Arc<Members<K, S>>);

    /// An endpoint became eligible or ineligible in the current membership.
    #[cfg_attr(not(feature = "health-check"), allow(dead_code))]
    fn eligibility_changed(&self) {}
}

impl<K, S> Members<K, S> {
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}

impl<K: Clone, S: Clone> Clone for Member<K, S> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            service: self.service.clone(),
            weight: self.weight,
            locality: self.locality.clone(),
            state: Arc::clone(&self.state),
        }
    }
}

pub(crate) fn check_weight(weight: u32) -> Result<u32, InvalidWeight> {
    if weight == 0 {
        Err(InvalidWeight::new(weight))
    } else {
        Ok(weight)
    }
}

/// Inserts or replaces `key` in `list`, keeping the place (and the locality) of an existing key.
pub(crate) fn upsert<K: PartialEq, S>(list: &mut Vec<Member<K, S>>, member: Member<K, S>) {
    match list.iter_mut().find(|m| m.key == member.key) {
        Some(slot) => {
            slot.service = member.service;
            slot.weight = member.weight;
        }
        None => list.push(member),
    }
}

/// Inserts `key` with `service` in `locality`, or replaces the service and locality of an
/// existing key in its place; a new key gets `weight`, or weight 1 if none is given, an existing
/// key keeps its weight unless one is given.
pub(crate) fn upsert_located<K: PartialEq, S>(
    list: &mut Vec<Member<K, S>>,
    key: K,
    service: S,
    weight: Option<u32>,
    locality: Locality,
) {
    match list.iter_mut().find(|m| m.key == key) {
        Some(slot) => {
            slot.service = service;
            slot.weight = weight.unwrap_or(slot.weight);
            slot.locality = locality;
        }
        None => list.push(Member::new(key, service, weight.unwrap_or(1)).located(locality)),
    }
}

impl<K, S> Endpoints<K, S>
where
    K: PartialEq + Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    /// Creates an empty set.
    ///
    /// A balancer over an empty set fails requests at once with
    /// [`NoEndpoints`](crate::error::NoEndpoints) until endpoints are inserted.
    pub fn new() -> Self {
        Self::from_members(Vec::new())
    }

    /// Builds a set from `(key, service, weight)` triples.
    ///
    /// Repeated keys keep the last service and weight given, in the place of the first.
    ///
    /// # Errors
    ///
    /// [`InvalidWeight`] if any weight is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_lb::Endpoints;
    ///
    /// let set = Endpoints::try_from_weighted([("a", (), 5), ("b", (), 1)]).unwrap();
    /// assert_eq!(set.weight("a"), Some(5));
    ///
    /// let err = Endpoints::try_from_weighted([("a", (), 0)]).unwrap_err();
    /// assert_eq!(err.to_string(), "endpoint weight must be at least 1, got 0");
    /// ```
    pub fn try_from_weighted<I>(endpoints: I) -> Result<Self, InvalidWeight>
    where
        I: IntoIterator<Item = (K, S, u32)>,
    {
        let mut list = Vec::new();
        for (key, service, weight) in endpoints {
            let weight = check_weight(weight)?;
            upsert(&mut list, Member::new(key, service, weight));
        }
        Ok(Self::from_members(list))
    }

    fn from_members(list: Vec<Member<K, S>>) -> Self {
        let members = Members {
            list: list.into_boxed_slice(),
            version: 0,
            in_flight: Arc::default(),
        };
        Self {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(members),
                writer: Mutex::new(Vec::new()),
                discovery_errors: AtomicU64::new(0),
                last_discovery_error: Mutex::new(None),
                followers: Waiters::default(),
            }),
        }
    }

    /// Inserts an endpoint with weight 1, or replaces the service of an existing key (keeping its
    /// weight). Returns `true` if the key is new.
    ///
    /// Requests already routed to a replaced service complete on it.
    pub fn insert(&self, key: K, service: S) -> bool {
        let mut is_new = true;
        self.update(|list| match list.iter_mut().find(|m| m.key == key) {
            Some(slot) => {
                is_new = false;
                slot.service = service;
            }
            None => list.push(Member::new(key, service, 1)),
        });
        is_new
    }

    /// Inserts an endpoint with the given weight, or replaces the service and weight of an existing
    /// key. Returns `true` if the key is new.
    ///
    /// # Errors
    ///
    /// [`InvalidWeight`] if `weight` is 0; the set is left unchanged.
    pub fn insert_weighted(&self, key: K, service: S, weight: u32) -> Result<bool, InvalidWeight> {
        let weight = check_weight(weight)?;
        let mut is_new = true;
        self.update(|list| {
            is_new = !list.iter().any(|m| m.key == key);
            upsert(list, Member::new(key, service, weight));
        });
        Ok(is_new)
    }

    /// Removes the endpoint with this key. Returns `true` if it was in the set.
    ///
    /// Requests already routed to it are not cancelled: they complete on the removed endpoint.
    pub fn remove<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        if !self.contains(key) {
            return false;
        }
        let mut removed = false;
        self.update(|list| {
            let before = list.len();
            list.retain(|m| m.key.borrow() != key);
            removed = list.len() != before;
        });
        removed
    }

    /// Changes the weight of the endpoint with this key. Returns `true` if it was in the set.
    ///
    /// # Errors
    ///
    /// [`InvalidWeight`] if `weight` is 0; the set is left unchanged.
    pub fn set_weight<Q>(&self, key: &Q, weight: u32) -> Result<bool, InvalidWeight>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        let weight = check_weight(weight)?;
        if self.weight(key) == Some(weight) {
            return Ok(true);
        }
        Ok(self.update_member(key, |m| m.weight = weight))
    }

    /// Inserts an endpoint with weight 1 in `locality`, or replaces the service and the locality
    /// of an existing key (keeping its weight). Returns `true` if the key is new.
    ///
    /// Requests already routed to a replaced service complete on it.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_lb::{Endpoints, Locality};
    ///
    /// let set = Endpoints::new();
    /// assert!(set.insert_located("10.0.0.1:80", (), Locality::new().with_zone("a")));
    /// assert!(!set.insert_located("10.0.0.1:80", (), Locality::backup()));
    /// assert_eq!(set.locality("10.0.0.1:80"), Some(Locality::backup()));
    /// ```
    pub fn insert_located(&self, key: K, service: S, locality: Locality) -> bool {
        let mut is_new = true;
        self.update(|list| {
            is_new = !list.iter().any(|m| m.key == key);
            upsert_located(list, key, service, None, locality);
        });
        is_new
    }

    /// Changes the locality (zone and tier) of the endpoint with this key. Returns `true` if it
    /// was in the set.
    pub fn set_locality<Q>(&self, key: &Q, locality: Locality) -> bool
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        if !self.contains(key) {
            return false;
        }
        self.update_member(key, |m| m.locality = locality)
    }

    /// Applies `change` to the endpoint with this key, through [`update`](Self::update). Returns
    /// `true` if it was in the set.
    fn update_member<Q>(&self, key: &Q, change: impl FnOnce(&mut Member<K, S>)) -> bool
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        let mut found = false;
        self.update(|list| {
            if let Some(member) = list.iter_mut().find(|m| m.key.borrow() == key) {
                change(member);
                found = true;
            }
        });
        found
    }

    /// Applies `change` to a copy of the member list, publishes it as the new snapshot and
    /// announces it to every balancer following this set, all under the writer lock so that
    /// concurrent changes are neither lost nor announced out of order.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Vec<Member<K, S>>)) {
        let mut watchers = self.lock_writer();
        let old = self.inner.current.load_full();
        let mut list = old.list.to_vec();
        change(&mut list);
        let members = Arc::new(Members {
            list: list.into_boxed_slice(),
            version: old.version + 1,
            in_flight: Arc::clone(&old.in_flight),
        });
        self.inner.current.store(Arc::clone(&members));
        watchers.retain(|w| match w.upgrade() {
            Some(watch) => {
                watch.changed(&members);
                true
            }
            None => false,
        });
    }

    /// Registers a follower and announces the current snapshot to it, atomically with respect to
    /// changes, so it cannot miss one.
    pub(crate) fn watch(&self, watch: Weak<dyn Watch<K, S>>) {
        let mut watchers = self.lock_writer();
        if let Some(w) = watch.upgrade() {
            w.changed(&self.inner.current.load_full());
            watchers.push(watch);
        }
    }

    fn lock_writer(&self) -> MutexGuard<'_, Vec<Weak<dyn Watch<K, S>>>> {
        // A panic in another writer leaves the published snapshot intact; keep going.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<K, S> Endpoints<K, S>
where
    K: PartialEq,
{
    /// The number of endpoints in the set.
    pub fn len(&self) -> usize {
        self.inner.current.load().len()
    }

    /// Whether the set has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an endpoint with this key is in the set.
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.weight(key).is_some()
    }

    /// The weight of the endpoint with this key, if it is in the set.
    pub fn weight<Q>(&self, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.read_member(key, |m| m.weight)
    }

    /// The locality (zone and tier) of the endpoint with this key, if it is in the set.
    pub fn locality<Q>(&self, key: &Q) -> Option<Locality>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.read_member(key, |m| m.locality.clone())
    }

    /// The requests in flight on the endpoint with this key, as counted by the strategies that
    /// balance on load ([`PowerOfTwoChoices`](crate::strategy::PowerOfTwoChoices), and
    /// [`ConsistentHash`](crate::strategy::ConsistentHash) with bounded loads): from the moment
    /// the request is routed to it until its response completes or is dropped. Always 0 under
    /// the other strategies.
    pub fn in_flight<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.read_member(key, |m| m.state.requests())
    }

    /// What `read` takes from the endpoint with this key in the current snapshot, if it is in
    /// the set.
    fn read_member<Q, R>(&self, key: &Q, read: impl FnOnce(&Member<K, S>) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        let current = self.inner.current.load();
        current
            .list
            .iter()
            .find(|m| m.key.borrow() == key)
            .map(read)
    }

    /// The keys of the endpoints, in set order.
    pub fn keys(&self) -> Vec<K>
    where
        K: Clone,
    {
        self.inner
            .current
            .load()
            .list
            .iter()
            .map(|m| m.key.clone())
            .collect()
    }
}

impl<K, S> Clone for Endpoints<K, S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, S> Default for Endpoints<K, S>
where
    K: PartialEq + Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

/// Builds a set of weight-1 endpoints from `(key, service)` pairs.
///
/// Repeated keys keep the last service given, in the place of the first.
impl<K, S> FromIterator<(K, S)> for Endpoints<K, S>
where
    K: PartialEq + Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    fn from_iter<I: IntoIterator<Item = (K, S)>>(iter: I) -> Self {
        let mut list = Vec::new();
        for (key, service) in iter {
            upsert(&mut list, Member::new(key, service, 1));
        }
        Self::from_members(list)
    }
}

impl<K: fmt::Debug, S> fmt::Debug for Endpoints<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members = self.inner.current.load();
        f.debug_map()
            .entries(members.list.iter().map(|m| (&m.key, m.weight)))
            .finish()
    }
}

/// The bytes that identify an endpoint to the hash-based strategies.
///
/// [`ConsistentHash`](crate::strategy::ConsistentHash) places an endpoint on its ring, and
/// [`Hash`](crate::strategy::Hash) orders the endpoints, by these bytes only, never by the order
/// in which endpoints were inserted: two processes with the same membership route every request
/// key the same way.
///
/// Text keys use their UTF-8 bytes; addresses and numbers use the bytes of their usual text form
/// (`127.0.0.1:8080`, `[::1]:80`, `42`), so a `SocketAddr` key and the equivalent string key place
/// an endpoint identically.
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use tower_lb::EndpointKey;
///
/// let addr: SocketAddr = "127.0.0.1:8081".parse().unwrap();
/// assert_eq!(addr.key_bytes(), "127.0.0.1:8081".key_bytes());
/// assert_eq!(7u16.key_bytes().as_ref(), b"7");
/// ```
pub trait EndpointKey {
    /// The endpoint's identifying bytes.
    fn key_bytes(&self) -> Cow<'_, [u8]>;
}

impl<T: EndpointKey + ?Sized> EndpointKey for &T {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        (**self).key_bytes()
    }
}

impl<T: EndpointKey + ?Sized> EndpointKey for Box<T> {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        (**self).key_bytes()
    }
}

impl<T: EndpointKey + ?Sized> EndpointKey for Arc<T> {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        (**self).key_bytes()
    }
}

impl EndpointKey for str {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl EndpointKey for String {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl EndpointKey for [u8] {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl EndpointKey for Vec<u8> {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl EndpointKey for Cow<'_, str> {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

macro_rules! key_bytes_from_display {
    ($($t:ty),* $(,)?) => {
        $(
            impl EndpointKey for $t {
                fn key_bytes(&self) -> Cow<'_, [u8]> {
                    Cow::Owned(self.to_string().into_bytes())
                }
            }
        )*
    };
}

key_bytes_from_display!(
    SocketAddr,
    SocketAddrV4,
    SocketAddrV6,
    IpAddr,
    Ipv4Addr,
    Ipv6Addr,
    http::Uri,
    http::uri::Authority,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
);
