//! Following a discovery stream: applying `tower::discover::Change`s (or weighted [`Update`]s) to
//! an [`Endpoints`] set as they arrive, whether or not requests are flowing.
//!
//! [`Endpoints::follow`] turns any stream of changes, such as a `tower::discover::Discover`, into a
//! future that drives it: spawn it on your runtime, and every balancer over the set sees each
//! change as soon as the stream yields it. Changes that arrive together are applied as one new
//! snapshot, so a burst of inserts rebuilds the strategies' tables once.
//!
//! - An error from the stream is logged (`tracing`, at warn level), counted
//!   ([`Endpoints::discovery_errors`]), and does not stop the driver: the set keeps its last
//!   membership and the stream is polled again.
//! - When the stream ends, the driver completes and the set keeps its last membership.
//! - When the set and every balancer over it are gone, the driver completes at once, without
//!   waiting for the stream's next item, and drops the stream: it holds the set weakly and never
//!   keeps it alive.
//! - Re-inserting a key replaces its service (keeping its weight unless the update gives one);
//!   requests in flight on the old service complete on it.
//!
//! # Examples
//!
//! ```
//! use tower::discover::Change;
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_lb::{strategy::RoundRobin, BalanceLayer, Endpoints};
//!
//! # tokio_test::block_on(async {
//! let backend = |name: &'static str| service_fn(move |_req: ()| async move {
//!     Ok::<_, std::convert::Infallible>(name)
//! });
//! let set = Endpoints::new();
//! let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
//!
//! // Any stream of `Result<Change<K, S>, E>` is a `Discover`; here, a fixed list.
//! let changes = futures_util::stream::iter([
//!     Ok::<_, std::convert::Infallible>(Change::Insert("a", backend("a"))),
//!     Ok(Change::Insert("b", backend("b"))),
//!     Ok(Change::Remove("a")),
//! ]);
//! // Usually `tokio::spawn(set.follow(discover))`; the driver needs no request traffic.
//! set.follow(changes).await;
//!
//! assert_eq!(set.keys(), ["b"]);
//! assert_eq!(balance.oneshot(()).await.unwrap(), "b");
//! # });
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering, Weak},
    task::{Context, Poll},
};

use futures_core::Stream;
use pin_project_lite::pin_project;
use tower::discover::Change;

use crate::{
    endpoints::{check_weight, upsert, upsert_located, Endpoints, Inner, Member},
    error::BoxError,
    locality::Locality,
};

/// One change to an endpoint set, as [`Endpoints::follow`] applies it.
///
/// `tower::discover::Change` converts into it (an insert keeps the weight of a key already in the
/// set, and gives a new key weight 1); discovery sources that know weights, such as DNS SRV
/// records, use [`Update::InsertWeighted`] and [`Update::SetWeight`]; sources that know where
/// endpoints run (their zone, or their priority tier) use [`Update::InsertLocated`] and
/// [`Update::SetLocality`], so that an endpoint never appears in the set without its locality.
///
/// More kinds of change may be added: a `match` on updates needs a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Update<K, S> {
    /// Inserts an endpoint, or replaces the service of an existing key, keeping its weight.
    Insert(K, S),
    /// Inserts an endpoint with a weight, or replaces the service and weight of an existing key.
    InsertWeighted(K, S, u32),
    /// Changes the weight of an endpoint in the set.
    SetWeight(K, u32),
    /// Inserts an endpoint with a weight and a [`Locality`] (zone and priority tier), or replaces
    /// the service, weight and locality of an existing key.
    InsertLocated(K, S, u32, Locality),
    /// Changes the locality of an endpoint in the set.
    SetLocality(K, Locality),
    /// Removes an endpoint.
    Remove(K),
}

impl<K, S> From<Change<K, S>> for Update<K, S> {
    fn from(change: Change<K, S>) -> Self {
        match change {
            Change::Insert(key, service) => Self::Insert(key, service),
            Change::Remove(key) => Self::Remove(key),
        }
    }
}

impl<K, S> Endpoints<K, S>
where
    K: PartialEq + Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    /// Applies `updates` as one change of the set: one new snapshot, one rebuild of the
    /// strategies' tables.
    ///
    /// An update with a weight of 0 is skipped and counted as a discovery error; the others apply.
    pub fn apply<I>(&self, updates: I)
    where
        I: IntoIterator<Item = Update<K, S>>,
    {
        let mut invalid = Vec::new();
        self.update(|list| {
            for update in updates {
                match update {
                    Update::Insert(key, service) => match list.iter_mut().find(|m| m.key == key) {
                        Some(slot) => slot.service = service,
                        None => list.push(Member::new(key, service, 1)),
                    },
                    Update::InsertWeighted(key, service, weight) => match check_weight(weight) {
                        Ok(weight) => upsert(list, Member::new(key, service, weight)),
                        Err(e) => invalid.push(e),
                    },
                    Update::SetWeight(key, weight) => match check_weight(weight) {
                        Ok(weight) => {
                            if let Some(slot) = list.iter_mut().find(|m| m.key == key) {
                                slot.weight = weight;
                            }
                        }
                        Err(e) => invalid.push(e),
                    },
                    Update::InsertLocated(key, service, weight, locality) => {
                        match check_weight(weight) {
                            Ok(weight) => {
                                upsert_located(list, key, service, Some(weight), locality)
                            }
                            Err(e) => invalid.push(e),
                        }
                    }
                    Update::SetLocality(key, locality) => {
                        if let Some(slot) = list.iter_mut().find(|m| m.key == key) {
                            slot.locality = locality;
                        }
                    }
                    Update::Remove(key) => list.retain(|m| m.key != key),
                }
            }
        });
        for error in invalid {
            record_error(&self.inner, &error);
        }
    }

    /// A future that applies every change `discover` yields to this set, until the stream ends
    /// or the set is dropped. See the [module docs](crate::discover).
    ///
    /// `discover` is any stream of `Result<U, E>` where `U` converts into an [`Update`]: a
    /// `tower::discover::Discover` (whose items are `Change`s), a channel of updates, a DNS
    /// watcher.
    pub fn follow<D, U, E>(&self, discover: D) -> Follow<D, K, S>
    where
        D: Stream<Item = Result<U, E>>,
        U: Into<Update<K, S>>,
        E: Into<BoxError>,
    {
        Follow {
            discover,
            set: std::sync::Arc::downgrade(&self.inner),
            slot: None,
        }
    }

    /// How many errors the discovery streams feeding this set have reported, and the last one's
    /// message.
    pub fn discovery_errors(&self) -> (u64, Option<String>) {
        let last = self
            .inner
            .last_discovery_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        (self.inner.discovery_errors.load(Ordering::Relaxed), last)
    }
}

fn record_error<K, S>(inner: &Inner<K, S>, error: &dyn fmt::Display) {
    tracing::warn!(%error, "endpoint discovery failed; keeping the current endpoints");
    inner.discovery_errors.fetch_add(1, Ordering::Relaxed);
    *inner
        .last_discovery_error
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error.to_string());
}

pin_project! {
    /// The future of [`Endpoints::follow`]: drives a discovery stream into an endpoint set.
    #[must_use = "the changes are applied only while this future is polled: spawn it"]
    pub struct Follow<D, K, S> {
        #[pin]
        discover: D,
        set: Weak<Inner<K, S>>,
        // Its slot among the set's followers, woken when the set is dropped.
        slot: Option<usize>,
    }

    impl<D, K, S> PinnedDrop for Follow<D, K, S> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(inner) = this.set.upgrade() {
                inner.followers.deregister(this.slot);
            }
        }
    }
}

impl<D, U, E, K, S> Future for Follow<D, K, S>
where
    D: Stream<Item = Result<U, E>>,
    U: Into<Update<K, S>>,
    E: Into<BoxError>,
    K: PartialEq + Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // The set's drop wakes this task, so that a quiet stream does not keep it alive.
        match this.set.upgrade() {
            Some(inner) => inner.followers.register(this.slot, cx.waker()),
            None => return Poll::Ready(()),
        }
        // Gather what is ready now, to apply it as one change; a stream that never stops being
        // ready is cut into batches, and the task yields between them.
        let mut updates = Vec::new();
        let mut outcome = Poll::Pending;
        let mut more = true;
        for _ in 0..MAX_BATCH {
            match this.discover.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(update))) => updates.push(update.into()),
                Poll::Ready(Some(Err(error))) => match this.set.upgrade() {
                    Some(inner) => record_error(&inner, &error.into()),
                    None => return Poll::Ready(()),
                },
                Poll::Ready(None) => {
                    outcome = Poll::Ready(());
                    more = false;
                    break;
                }
                Poll::Pending => {
                    more = false;
                    break;
                }
            }
        }
        let Some(inner) = this.set.upgrade() else {
            return Poll::Ready(());
        };
        if !updates.is_empty() {
            Endpoints { inner }.apply(updates);
        }
        if more {
            // Still ready after a full batch: come back after other tasks had a turn.
            cx.waker().wake_by_ref();
        }
        outcome
    }
}

/// The most stream items taken in one poll (and so applied as one change).
const MAX_BATCH: usize = 1024;

impl<D, K, S> fmt::Debug for Follow<D, K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follow")
            .field("set_alive", &(self.set.strong_count() > 0))
            .finish()
    }
}

/// A stream of [`Update`]s as a `tower::discover::Discover`: inserts and removals become
/// `tower::discover::Change`s, and weight and locality changes are dropped (a `Change` carries
/// neither). The
/// `changes` method of the discovery sources (DNS, etcd) returns one.
#[derive(Debug)]
pub struct Changes<D> {
    inner: D,
}

impl<D> Changes<D> {
    /// Adapts `updates`.
    pub fn new(updates: D) -> Self {
        Self { inner: updates }
    }

    /// The adapted stream.
    pub fn get_ref(&self) -> &D {
        &self.inner
    }
}

impl<D, K, S, E> Stream for Changes<D>
where
    D: Stream<Item = Result<Update<K, S>, E>> + Unpin,
{
    type Item = Result<Change<K, S>, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let change = match std::task::ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(
                    Update::Insert(key, service)
                    | Update::InsertWeighted(key, service, _)
                    | Update::InsertLocated(key, service, ..),
                )) => Ok(Change::Insert(key, service)),
                Some(Ok(Update::Remove(key))) => Ok(Change::Remove(key)),
                Some(Ok(Update::SetWeight(..) | Update::SetLocality(..))) => continue,
                Some(Err(error)) => Err(error),
                None => return Poll::Ready(None),
            };
            return Poll::Ready(Some(change));
        }
    }
}
