//! etcd discovery and registration in gRPC's naming format (cargo feature `etcd`).
//!
//! Services that register themselves in etcd usually follow the convention of etcd's gRPC naming
//! package (`go.etcd.io/etcd/client/v3/naming`), which grpc-go's etcd resolver and the Java etcd
//! name resolvers read: every instance of a service puts a key under the service's prefix,
//! `<prefix>/<id>`, whose value is JSON,
//!
//! ```text
//! my-service/10.0.0.7:50051  {"Op":0,"Addr":"10.0.0.7:50051","Metadata":{"weight":3}}
//! ```
//!
//! usually attached to a lease that the instance keeps alive, so that a crashed instance's key
//! disappears when its lease expires. This module reads and writes that format, so a Rust client
//! over this crate and a Go client of the same service see the same endpoints.
//!
//! - [`EtcdDiscover`] follows a prefix: one range read, then a watch from the next revision. It
//!   yields the membership changes as [`Update`]s keyed by the address, making each new
//!   endpoint's service with a function you give. Drive it with
//!   [`Endpoints::follow`](crate::Endpoints::follow); for `tower::balance` and other consumers
//!   of `tower::discover::Discover`, use [`EtcdDiscover::changes`].
//! - [`EtcdRegistration`] is the other side: it puts this process's own endpoint under the
//!   prefix with a lease, keeps the lease alive, registers again if the lease expired, and
//!   deletes the key on [`deregister`](EtcdRegistration::deregister).
//!
//! # The values
//!
//! A value names an endpoint when it is a JSON object whose `Addr` member is a string
//! `host:port` (`10.0.0.7:50051`, `api-3.internal:8080`, `[::1]:50051`). Member names are
//! matched as Go's `encoding/json` matches them: exactly, or else ignoring ASCII case.
//!
//! - `Metadata` may be any JSON value. When it is an object with a `weight` member, that member
//!   is the endpoint's weight, an integer from 1 to 2<sup>32</sup>-1; otherwise the weight is 1.
//!   Go and Java clients carry the metadata along without reading it.
//! - `Op` is ignored, as Go's resolver ignores it: a key that exists is an endpoint, a deleted key
//!   is not.
//! - Several keys may name the same address (an instance that registered again under a new id
//!   before its old lease expired): the address is one endpoint, present while any key names it,
//!   with the weight of the most recently written key.
//!
//! A value that does not name an endpoint this way (not JSON, not an object, no `Addr` or an
//! `Addr` that is not `host:port`, a weight that is 0 or not an integer) is *malformed*: it is
//! skipped, counted ([`EtcdStats::malformed`]) and yielded as an `Err(`[`EtcdError`]`)` item,
//! which [`Endpoints::follow`](crate::Endpoints::follow) logs and counts. It never removes an
//! endpoint: when a key that held a valid value is overwritten with a malformed one, its endpoint
//! stays as it was until the key is deleted or holds a valid value again, as in Go's resolver.
//! Go's resolver would also accept an object without `Addr` and dial the empty address; here
//! it names no endpoint.
//!
//! The prefix read is the one given followed by `/`: `my-service` reads the keys
//! `my-service/...`. Go's resolver reads the bare prefix, so it would also see the keys of a
//! service whose name starts with this one's (`my-service-canary/...`); give services names
//! that are not prefixes of one another and both read the same keys.
//!
//! # Failures
//!
//! - When the connection or the watch breaks, the stream yields an `Err(`[`EtcdError`]`)` item,
//!   keeps its membership, and connects again after a backoff that doubles from 100 ms up to
//!   5 s (with jitter; see [`EtcdDiscoverBuilder::backoff`]). The new watch starts after the
//!   last revision seen, so no change is applied twice or lost.
//! - When that revision has been compacted meanwhile, etcd cancels the watch; the stream reads
//!   the prefix again and yields the difference between what it had and what etcd holds, all at
//!   once, so [`Endpoints::follow`](crate::Endpoints::follow) applies it as one change (as it
//!   does with the events of one watch response, such as a transaction's puts; only very large
//!   bursts are cut into batches). [`EtcdStats::resyncs`] counts these re-reads.
//! - While etcd is unreachable the set keeps its last membership: nothing is removed because
//!   the registry cannot be read. [`EtcdStats::failing_for`] says for how long discovery has
//!   been failing.
//!
//! With the default connection options (used when you give endpoints and no
//! [`ConnectOptions`]), requests carry etcd's require-leader flag, so that a member cut off
//! from its cluster cancels the watch rather than serving a stale view, and HTTP/2 keep-alive
//! pings find a dead connection within 15 s.
//!
//! The stream never ends; drop it (or the endpoint set that follows it) to stop. It must be polled
//! within a tokio runtime with the time driver enabled.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::{service_fn, Layer};
//! use tower_lb::{
//!     etcd::{EtcdDiscover, EtcdRegistration},
//!     strategy::WeightedRoundRobin,
//!     BalanceLayer, Endpoints,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A client: follow the instances of `my-service`. In a real client, each endpoint would be a
//! // connection pool or a tonic `Channel` bound to its address.
//! let connect = |addr: &str| {
//!     let addr = addr.to_owned();
//!     service_fn(move |path: &'static str| {
//!         let addr = addr.clone();
//!         async move { Ok::<_, std::convert::Infallible>(format!("{addr} served {path}")) }
//!     })
//! };
//! let discover = EtcdDiscover::prefix("my-service")
//!     .endpoints(["http://127.0.0.1:2379"])
//!     .build(connect)?;
//! let stats = discover.stats();
//!
//! let endpoints = Endpoints::new();
//! let balance = BalanceLayer::new(WeightedRoundRobin::new()).layer(endpoints.clone());
//! tokio::spawn(endpoints.follow(discover));
//!
//! // A server: register this instance, with weight 2, for as long as it runs.
//! let registration = EtcdRegistration::builder("my-service", "10.0.0.7:50051")
//!     .endpoints(["http://127.0.0.1:2379"])
//!     .weight(2)
//!     .ttl(Duration::from_secs(10))
//!     .register()
//!     .await?;
//! // ... serve ...
//! registration.deregister().await?;
//!
//! if let Some(failing) = stats.failing_for() {
//!     eprintln!("etcd unreachable for {failing:?}; serving from the last membership");
//! }
//! # drop(balance);
//! # Ok(())
//! # }
//! ```

use std::{
    collections::{hash_map::RandomState, BTreeMap, BTreeSet, HashMap, VecDeque},
    error::Error,
    fmt,
    future::Future,
    hash::{BuildHasher, Hasher},
    pin::Pin,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

/// The etcd client crate this module uses, for [`EtcdDiscoverBuilder::client`] and
/// [`EtcdDiscoverBuilder::connect_options`] (with TLS or authentication, say) and to write to the
/// registry yourself.
pub use etcd_client;
use etcd_client::{Client, ConnectOptions};
use etcd_client::{
    Compare, CompareOp, Error as ClientError, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchResponse, WatchStream,
};
use futures_core::Stream;
use serde_json::{Map, Value};

use crate::{discover::Update, error::BoxError};

/// The first wait before connecting again after a failure, when none is set.
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between two connection attempts, when none is set.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long one request to etcd (a range read, opening a watch, a lease call) may take, when
/// no timeout is set.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The time to live of a registration's lease, when none is set.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// A discovery stream that follows a key prefix in etcd. See the [module docs](crate::etcd).
///
/// Built by [`EtcdDiscover::prefix`] and [`EtcdDiscoverBuilder::build`]; `F` makes the service of
/// each new endpoint from its address. It is a
/// `Stream<Item = Result<Update<String, S>, EtcdError>>`, for
/// [`Endpoints::follow`](crate::Endpoints::follow).
pub struct EtcdDiscover<F> {
    make: F,
    /// Between steps; `None` while a step owns it.
    session: Option<Box<Session>>,
    step: Option<StepFuture>,
    /// Items found by the last step and not yet yielded.
    pending: VecDeque<Result<Diff, EtcdError>>,
    stats: EtcdStats,
    prefix: Arc<str>,
}

/// No field is structurally pinned: the step future is boxed.
impl<F> Unpin for EtcdDiscover<F> {}

type StepFuture =
    Pin<Box<dyn Future<Output = (Box<Session>, Vec<Result<Diff, EtcdError>>)> + Send>>;

impl EtcdDiscover<()> {
    /// Starts building a stream that follows the endpoints registered under `prefix`: the keys
    /// `<prefix>/<id>`.
    ///
    /// `prefix` is the service's name in the registry, as a Go client would give it to
    /// `endpoints.NewManager` or dial it (`etcd:///my-service`); a trailing `/` is allowed.
    pub fn prefix(prefix: impl Into<String>) -> EtcdDiscoverBuilder {
        EtcdDiscoverBuilder {
            prefix: prefix.into(),
            connection: ConnectionBuilder::default(),
        }
    }
}

impl<F> EtcdDiscover<F> {
    /// A handle on this stream's figures: how long it has been failing, malformed values,
    /// re-reads, the revision reached. It stays valid after the stream is moved into
    /// [`Endpoints::follow`](crate::Endpoints::follow).
    pub fn stats(&self) -> EtcdStats {
        self.stats.clone()
    }

    /// The stream as a `tower::discover::Discover`: inserts and removals as
    /// `tower::discover::Change`s, with weights dropped.
    pub fn changes(self) -> Changes<F> {
        Changes::new(self)
    }
}

impl<F, S> Stream for EtcdDiscover<F>
where
    F: Fn(&str) -> S,
{
    type Item = Result<Update<String, S>, EtcdError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.pending.pop_front() {
                let update = item.map(|diff| match diff {
                    Diff::Insert(addr, weight) => {
                        let service = (this.make)(&addr);
                        Update::InsertWeighted(addr, service, weight)
                    }
                    Diff::SetWeight(addr, weight) => Update::SetWeight(addr, weight),
                    Diff::Remove(addr) => Update::Remove(addr),
                });
                return Poll::Ready(Some(update));
            }
            if let Some(step) = &mut this.step {
                let (session, items) = ready!(step.as_mut().poll(cx));
                this.step = None;
                this.session = Some(session);
                this.pending.extend(items);
                continue;
            }
            match this.session.take() {
                Some(session) => this.step = Some(Box::pin(session.step())),
                // A step panicked and took the session with it; nothing more can come.
                None => return Poll::Ready(None),
            }
        }
    }
}

impl<F> fmt::Debug for EtcdDiscover<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdDiscover")
            .field("prefix", &self.prefix)
            .field("stats", &self.stats)
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// An [`EtcdDiscover`] as a `tower::discover::Discover`, from [`EtcdDiscover::changes`]: yields
/// `Change::Insert` for every new address and `Change::Remove` for every address gone; weight
/// changes are dropped.
pub type Changes<F> = crate::discover::Changes<EtcdDiscover<F>>;

/// Configures an [`EtcdDiscover`]; from [`EtcdDiscover::prefix`].
#[derive(Debug, Clone)]
pub struct EtcdDiscoverBuilder {
    prefix: String,
    connection: ConnectionBuilder,
}

impl EtcdDiscoverBuilder {
    /// The etcd members to connect to (`http://127.0.0.1:2379`, or `127.0.0.1:2379`); requests
    /// are spread over them and go to the others when one is down. Call it again to add more.
    pub fn endpoints<I>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.connection.endpoints(endpoints);
        self
    }

    /// Uses this client instead of connecting to [`endpoints`](Self::endpoints): for TLS,
    /// authentication, or to share one client. Its own options apply, not this module's
    /// defaults.
    pub fn client(mut self, client: Client) -> Self {
        self.connection.client = Some(client);
        self
    }

    /// The options of the client connected to [`endpoints`](Self::endpoints), instead of this
    /// module's defaults (require-leader on, HTTP/2 keep-alive pings every 10 s with a 5 s
    /// timeout, a connect timeout of the [request timeout](Self::request_timeout)).
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.connection.options = Some(options);
        self
    }

    /// The wait before connecting again after a failure: `min` first, doubled after every
    /// failure up to `max`, and back to `min` once a watch is established. Each wait is drawn
    /// at random between half its value and its value, so that many clients do not reconnect
    /// in step. [`DEFAULT_MIN_BACKOFF`] and [`DEFAULT_MAX_BACKOFF`] unless set; `min` must not be
    /// zero or greater than `max`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.connection.backoff = (min, max);
        self
    }

    /// How long a range read or the opening of a watch may take before it counts as a failure
    /// ([`DEFAULT_REQUEST_TIMEOUT`] unless set). An open watch has no timeout: it is quiet while
    /// nothing changes. Must not be zero.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.connection.request_timeout = timeout;
        self
    }

    /// Builds the stream; `make` makes the service of each new endpoint from its address.
    ///
    /// Nothing is read until the stream is first polled.
    ///
    /// # Errors
    ///
    /// When the prefix is empty, no endpoint or client was given, an endpoint is not a valid
    /// URL, or the backoff or the timeout is invalid.
    pub fn build<F, S>(self, make: F) -> Result<EtcdDiscover<F>, EtcdError>
    where
        F: Fn(&str) -> S,
    {
        let prefix = key_prefix(&self.prefix)?;
        let connection = self.connection.check()?;
        let stats = EtcdStats::default();
        let backoff = connection.backoff();
        let session = Session {
            connection,
            prefix: prefix.clone(),
            client: None,
            watch: None,
            revision: 0,
            resync: true,
            retry_in: None,
            backoff,
            registry: Registry::default(),
            stats: stats.clone(),
        };
        Ok(EtcdDiscover {
            make,
            session: Some(Box::new(session)),
            step: None,
            pending: VecDeque::new(),
            stats,
            prefix: prefix.into(),
        })
    }
}

/// The prefix of the keys of `name`: `name/`.
fn key_prefix(name: &str) -> Result<String, EtcdError> {
    let name = name.strip_suffix('/').unwrap_or(name);
    if name.is_empty() {
        return Err(EtcdError::new("etcd key prefix must not be empty", None));
    }
    Ok(format!("{name}/"))
}

/// Where to connect and how to retry; shared by discovery and registration.
#[derive(Clone)]
struct ConnectionBuilder {
    endpoints: Vec<String>,
    options: Option<ConnectOptions>,
    client: Option<Client>,
    backoff: (Duration, Duration),
    request_timeout: Duration,
}

impl Default for ConnectionBuilder {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            options: None,
            client: None,
            backoff: (DEFAULT_MIN_BACKOFF, DEFAULT_MAX_BACKOFF),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl fmt::Debug for ConnectionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("endpoints", &self.endpoints)
            .field("options", &self.options)
            .field("client", &self.client.as_ref().map(|_| ".."))
            .field("backoff", &self.backoff)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl ConnectionBuilder {
    fn endpoints<I>(&mut self, endpoints: I)
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.endpoints.extend(endpoints.into_iter().map(Into::into));
    }

    fn check(self) -> Result<Self, EtcdError> {
        if self.client.is_none() {
            if self.endpoints.is_empty() {
                return Err(EtcdError::new(
                    "no etcd endpoints: give endpoints or a client",
                    None,
                ));
            }
            for endpoint in &self.endpoints {
                let url = if endpoint.contains("://") {
                    endpoint.clone()
                } else {
                    format!("http://{endpoint}")
                };
                let valid = url.parse::<http::Uri>().map_err(|e| {
                    EtcdError::new(
                        format!("invalid etcd endpoint `{endpoint}`"),
                        Some(e.into()),
                    )
                })?;
                if valid.host().is_none() {
                    return Err(EtcdError::new(
                        format!("invalid etcd endpoint `{endpoint}`"),
                        None,
                    ));
                }
            }
        }
        let (min, max) = self.backoff;
        if min.is_zero() || min > max {
            return Err(EtcdError::new(
                "etcd backoff must be greater than zero, and its minimum at most its maximum",
                None,
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(EtcdError::new(
                "etcd request timeout must be greater than zero",
                None,
            ));
        }
        Ok(self)
    }

    /// The client: the one given, or a new one connected to the endpoints.
    async fn connect(&self) -> Result<Client, EtcdError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let options = self.options.clone().unwrap_or_else(|| {
            ConnectOptions::new()
                .with_require_leader(true)
                .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
                .with_connect_timeout(self.request_timeout)
        });
        let connect = Client::connect(&self.endpoints, Some(options));
        self.timed("connecting to etcd", connect).await
    }

    /// Runs one etcd request with the request timeout.
    async fn timed<T>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(EtcdError::new(format!("{what} failed"), Some(error.into()))),
            Err(_) => Err(EtcdError::new(
                format!("{what} timed out after {:?}", self.request_timeout),
                None,
            )),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            min: self.backoff.0,
            max: self.backoff.1,
            next: self.backoff.0,
        }
    }
}

/// Doubling waits between attempts, each drawn between half its value and its value.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.max);
        // A fresh `RandomState` is randomly keyed: a cheap source of jitter.
        let draw = RandomState::new().build_hasher().finish();
        let half = wait / 2;
        half + half.mul_f64((draw >> 11) as f64 / (1u64 << 53) as f64)
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The part of a discovery stream that talks to etcd; moved into each step and back.
struct Session {
    connection: ConnectionBuilder,
    prefix: String,
    client: Option<Client>,
    watch: Option<WatchStream>,
    /// Every change up to this revision has been read.
    revision: i64,
    /// The prefix must be read (again) before watching: at the start and after a compaction.
    resync: bool,
    /// The wait before the next attempt, after a failure.
    retry_in: Option<Duration>,
    backoff: Backoff,
    registry: Registry,
    stats: EtcdStats,
}

impl Session {
    /// Reads or watches until there is something to yield: changes, malformed values, or the
    /// error of a failed attempt (after which the next step waits for the backoff first).
    async fn step(mut self: Box<Self>) -> (Box<Self>, Vec<Result<Diff, EtcdError>>) {
        loop {
            if let Some(wait) = self.retry_in.take() {
                tokio::time::sleep(wait).await;
            }
            match self.advance().await {
                Ok(items) if items.is_empty() => continue,
                Ok(items) => return (self, items),
                Err(error) => {
                    self.watch = None;
                    self.stats.failed();
                    self.retry_in = Some(self.backoff.next());
                    return (self, vec![Err(error)]);
                }
            }
        }
    }

    async fn advance(&mut self) -> Result<Vec<Result<Diff, EtcdError>>, EtcdError> {
        if self.resync {
            return self.read_prefix().await;
        }
        let watch = match &mut self.watch {
            Some(watch) => watch,
            None => {
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(self.revision + 1)
                    .with_progress_notify();
                let mut client = self.client().await?;
                let open = client.watch(self.prefix.as_bytes(), Some(options));
                let what = format!("watching the etcd prefix `{}`", self.prefix);
                let watch = self.connection.timed(&what, open).await?;
                self.watch.insert(watch)
            }
        };
        let response = match watch.message().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                return Err(EtcdError::new(
                    format!("etcd closed the watch of `{}`", self.prefix),
                    None,
                ))
            }
            Err(error) => {
                return Err(EtcdError::new(
                    format!("the etcd watch of `{}` failed", self.prefix),
                    Some(error.into()),
                ))
            }
        };
        self.watched(response)
    }

    /// Reads the whole prefix again, and yields the difference from the membership known.
    async fn read_prefix(&mut self) -> Result<Vec<Result<Diff, EtcdError>>, EtcdError> {
        let mut client = self.client().await?;
        let read = client.get(
            self.prefix.as_bytes(),
            Some(GetOptions::new().with_prefix()),
        );
        let what = format!("reading the etcd prefix `{}`", self.prefix);
        let response = self.connection.timed(&what, read).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let malformed = self.registry.reset(
            response
                .kvs()
                .iter()
                .map(|kv| (kv.key(), kv.value(), kv.mod_revision())),
        );
        self.resync = false;
        self.revision = revision;
        self.stats.recovered(revision);
        Ok(self.yield_changes(malformed))
    }

    /// Applies one message of the watch: its events, a progress notification, the watch's
    /// creation, or its cancellation (when etcd compacted past the watch's revision, the prefix
    /// is read again).
    fn watched(
        &mut self,
        response: WatchResponse,
    ) -> Result<Vec<Result<Diff, EtcdError>>, EtcdError> {
        if response.canceled() {
            self.watch = None;
            if response.compact_revision() > 0 {
                // The changes since our revision are gone: read the whole prefix again.
                tracing::info!(
                    prefix = %self.prefix,
                    revision = self.revision,
                    compacted = response.compact_revision(),
                    "etcd compacted past the watch's revision; reading the prefix again"
                );
                self.resync = true;
                self.stats.inner.resyncs.fetch_add(1, Ordering::Relaxed);
                return Ok(Vec::new());
            }
            return Err(EtcdError::new(
                format!(
                    "etcd canceled the watch of `{}`: {}",
                    self.prefix,
                    response.cancel_reason()
                ),
                None,
            ));
        }
        if response.created() {
            self.backoff.reset();
            self.stats.recovered(self.revision);
            return Ok(Vec::new());
        }
        let mut malformed = Vec::new();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    if let Err(e) = self.registry.put(kv.key(), kv.value(), kv.mod_revision()) {
                        malformed.push(e);
                    }
                }
                EventType::Delete => self.registry.delete(kv.key()),
            }
            self.revision = self.revision.max(kv.mod_revision());
        }
        if response.events().is_empty() {
            // A progress notification: every change up to the header's revision was sent.
            if let Some(header) = response.header() {
                self.revision = self.revision.max(header.revision());
            }
        }
        self.stats
            .inner
            .revision
            .store(self.revision, Ordering::Relaxed);
        Ok(self.yield_changes(malformed))
    }

    /// The client: connected on first use, then shared by every request.
    async fn client(&mut self) -> Result<Client, EtcdError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = self.connection.connect().await?;
        self.client = Some(client.clone());
        Ok(client)
    }

    fn yield_changes(&mut self, malformed: Vec<Malformed>) -> Vec<Result<Diff, EtcdError>> {
        let mut items: Vec<_> = malformed
            .into_iter()
            .map(|bad| {
                self.stats.inner.malformed.fetch_add(1, Ordering::Relaxed);
                Err(EtcdError::new(
                    format!(
                        "skipped the malformed endpoint at etcd key `{}`: {}",
                        bad.key, bad.reason
                    ),
                    None,
                ))
            })
            .collect();
        items.extend(self.registry.changes().into_iter().map(Ok));
        items
    }
}

/// One change of membership, from the registry; the service is made when it is yielded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Diff {
    Insert(String, u32),
    SetWeight(String, u32),
    Remove(String),
}

/// A value that names no endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Malformed {
    key: String,
    reason: String,
}

/// The endpoints named by the keys under a prefix, and the membership yielded so far.
#[derive(Debug, Default)]
struct Registry {
    /// The valid endpoint of each key.
    keys: HashMap<Vec<u8>, Entry>,
    /// The keys that name each address.
    holders: HashMap<String, BTreeSet<Vec<u8>>>,
    /// The membership yielded: each address and its weight.
    members: BTreeMap<String, u32>,
    /// Addresses whose keys changed since the last [`Registry::changes`].
    touched: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    addr: String,
    weight: u32,
    /// The revision of the key's last write: the latest write gives a shared address its weight.
    revision: i64,
}

impl Registry {
    /// A key was written. A malformed value leaves the key's endpoint, if any, as it was.
    fn put(&mut self, key: &[u8], value: &[u8], revision: i64) -> Result<(), Malformed> {
        let (addr, weight) = parse_endpoint(value).map_err(|reason| Malformed {
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        })?;
        let entry = Entry {
            addr,
            weight,
            revision,
        };
        self.hold(key.to_vec(), entry);
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) {
        if let Some(old) = self.keys.remove(key) {
            self.release(key, &old.addr);
        }
    }

    /// The prefix holds exactly `kvs` now; returns the malformed values among them. A key whose
    /// value is malformed keeps the endpoint it had.
    fn reset<'a>(
        &mut self,
        kvs: impl Iterator<Item = (&'a [u8], &'a [u8], i64)>,
    ) -> Vec<Malformed> {
        let mut malformed = Vec::new();
        let mut keys = HashMap::new();
        for (key, value, revision) in kvs {
            match parse_endpoint(value) {
                Ok((addr, weight)) => {
                    keys.insert(
                        key.to_vec(),
                        Entry {
                            addr,
                            weight,
                            revision,
                        },
                    );
                }
                Err(reason) => {
                    if let Some(old) = self.keys.get(key) {
                        keys.insert(key.to_vec(), old.clone());
                    }
                    malformed.push(Malformed {
                        key: String::from_utf8_lossy(key).into_owned(),
                        reason,
                    });
                }
            }
        }
        let old = std::mem::take(&mut self.keys);
        self.touched
            .extend(old.into_values().map(|entry| entry.addr));
        self.holders.clear();
        for (key, entry) in keys {
            self.hold(key, entry);
        }
        malformed
    }

    fn hold(&mut self, key: Vec<u8>, entry: Entry) {
        let addr = entry.addr.clone();
        if let Some(old) = self.keys.insert(key.clone(), entry) {
            self.release(&key, &old.addr);
        }
        self.holders.entry(addr.clone()).or_default().insert(key);
        self.touched.insert(addr);
    }

    fn release(&mut self, key: &[u8], addr: &str) {
        if let Some(holders) = self.holders.get_mut(addr) {
            holders.remove(key);
            if holders.is_empty() {
                self.holders.remove(addr);
            }
        }
        self.touched.insert(addr.to_owned());
    }

    /// The membership changes since the last call, in address order.
    fn changes(&mut self) -> Vec<Diff> {
        let mut diffs = Vec::new();
        for addr in std::mem::take(&mut self.touched) {
            let weight = self.holders.get(&addr).and_then(|keys| {
                keys.iter()
                    .filter_map(|key| self.keys.get(key))
                    .max_by_key(|entry| entry.revision)
                    .map(|entry| entry.weight)
            });
            match (self.members.get(&addr).copied(), weight) {
                (None, Some(weight)) => {
                    diffs.push(Diff::Insert(addr.clone(), weight));
                    self.members.insert(addr, weight);
                }
                (Some(old), Some(weight)) if old != weight => {
                    diffs.push(Diff::SetWeight(addr.clone(), weight));
                    self.members.insert(addr, weight);
                }
                (Some(_), None) => {
                    self.members.remove(&addr);
                    diffs.push(Diff::Remove(addr));
                }
                _ => {}
            }
        }
        diffs
    }
}

/// The address and weight a value names, or why it names none.
fn parse_endpoint(value: &[u8]) -> Result<(String, u32), String> {
    let value: Value =
        serde_json::from_slice(value).map_err(|e| format!("the value is not JSON ({e})"))?;
    let Value::Object(object) = value else {
        return Err("the value is not a JSON object".to_owned());
    };
    let addr = match member(&object, "Addr") {
        Some(Value::String(addr)) => addr,
        Some(_) => return Err("`Addr` is not a string".to_owned()),
        None => return Err("the value has no `Addr`".to_owned()),
    };
    if !is_host_port(addr) {
        return Err(format!("`Addr` {addr:?} is not host:port"));
    }
    let weight = match member(&object, "Metadata") {
        Some(Value::Object(metadata)) => match metadata.get("weight") {
            None => 1,
            Some(weight) => weight
                .as_u64()
                .and_then(|w| u32::try_from(w).ok())
                .filter(|&w| w >= 1)
                .ok_or_else(|| {
                    format!("weight {weight} is not an integer from 1 to {}", u32::MAX)
                })?,
        },
        _ => 1,
    };
    Ok((addr.clone(), weight))
}

/// A member of a JSON object by name, as Go's `encoding/json` finds a struct field: the exact
/// name, or else the first name equal to it ignoring ASCII case.
fn member<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).or_else(|| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// `host:port`, with an IPv6 host in brackets.
fn is_host_port(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => !host.is_empty() && !host.contains([':', '/', ' ']),
    };
    host_ok && port.parse::<u16>().is_ok()
}

/// The figures of an [`EtcdDiscover`], from [`EtcdDiscover::stats`]; clones share them.
#[derive(Clone, Default)]
pub struct EtcdStats {
    inner: Arc<StatsInner>,
}

#[derive(Default)]
struct StatsInner {
    failing_since: Mutex<Option<Instant>>,
    failures: AtomicU64,
    malformed: AtomicU64,
    resyncs: AtomicU64,
    revision: AtomicI64,
}

impl EtcdStats {
    /// Since when discovery has been failing: the first failure since it last read or watched
    /// successfully, or `None` while it is healthy. The set keeps its last membership meanwhile.
    pub fn failing_since(&self) -> Option<Instant> {
        *self.failing()
    }

    /// How long discovery has been failing, or `None` while it is healthy.
    pub fn failing_for(&self) -> Option<Duration> {
        self.failing_since().map(|since| since.elapsed())
    }

    /// How many connection, read and watch failures there were.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// How many malformed values were skipped.
    pub fn malformed(&self) -> u64 {
        self.inner.malformed.load(Ordering::Relaxed)
    }

    /// How many times the prefix was read again because etcd had compacted the revision the
    /// watch was to resume from.
    pub fn resyncs(&self) -> u64 {
        self.inner.resyncs.load(Ordering::Relaxed)
    }

    /// The etcd revision up to which the membership reflects the prefix (0 before the first
    /// read).
    pub fn revision(&self) -> i64 {
        self.inner.revision.load(Ordering::Relaxed)
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.inner
            .failing_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failed(&self) {
        self.inner.failures.fetch_add(1, Ordering::Relaxed);
        self.failing().get_or_insert_with(Instant::now);
    }

    fn recovered(&self, revision: i64) {
        *self.failing() = None;
        self.inner.revision.store(revision, Ordering::Relaxed);
    }
}

impl fmt::Debug for EtcdStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStats")
            .field("failing_for", &self.failing_for())
            .field("failures", &self.failures())
            .field("malformed", &self.malformed())
            .field("resyncs", &self.resyncs())
            .field("revision", &self.revision())
            .finish()
    }
}

/// This process's endpoint, registered under a prefix with a lease that a background task keeps
/// alive. See the [module docs](crate::etcd).
///
/// Built by [`EtcdRegistration::builder`] and [`EtcdRegistrationBuilder::register`].
///
/// - The task renews the lease every third of its time to live. When etcd is unreachable it
///   tries again with a backoff; when the lease has expired meanwhile (etcd deleted the key),
///   it grants a new lease and puts the key again.
/// - [`deregister`](Self::deregister) is the graceful leave: it stops the task and deletes the
///   key, so clients remove the endpoint at once.
/// - Dropping the registration stops the task without deleting the key, as a crash would: the
///   key disappears when its lease expires, within the time to live.
///
/// The task does not watch the key: a key deleted by someone else while the lease lives is not
/// put again until the lease expires.
pub struct EtcdRegistration {
    key: String,
    connection: ConnectionBuilder,
    client: Client,
    state: Arc<RegistrationState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct RegistrationState {
    lease: AtomicI64,
    registrations: AtomicU64,
}

impl EtcdRegistration {
    /// Starts building the registration of the endpoint `addr` (`host:port`) under `prefix`,
    /// at the key `<prefix>/<addr>` unless [another id](EtcdRegistrationBuilder::id) is given.
    pub fn builder(prefix: impl Into<String>, addr: impl Into<String>) -> EtcdRegistrationBuilder {
        EtcdRegistrationBuilder {
            prefix: prefix.into(),
            addr: addr.into(),
            id: None,
            metadata: Value::Null,
            weight: None,
            ttl: DEFAULT_TTL,
            connection: ConnectionBuilder::default(),
        }
    }

    /// The key this endpoint is registered at.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease the key is attached to now.
    pub fn lease_id(&self) -> i64 {
        self.state.lease.load(Ordering::Relaxed)
    }

    /// How many times the key was put: 1 after [`register`](EtcdRegistrationBuilder::register),
    /// and one more each time it was registered again after its lease expired.
    pub fn registrations(&self) -> u64 {
        self.state.registrations.load(Ordering::Relaxed)
    }

    /// Leaves the registry gracefully: stops renewing the lease, deletes the key (if it is
    /// still attached to this registration's lease) and revokes the lease.
    ///
    /// # Errors
    ///
    /// When etcd cannot be reached; the key then disappears when its lease expires.
    pub async fn deregister(mut self) -> Result<(), EtcdError> {
        self.task.abort();
        // Wait until the task is gone, so that it cannot put the key again after the delete.
        let _ = (&mut self.task).await;
        let lease = self.lease_id();
        let delete = Txn::new()
            .when([Compare::lease(self.key.as_bytes(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(self.key.as_bytes(), None)]);
        let what = format!("deleting the etcd key `{}`", self.key);
        self.connection
            .timed(&what, self.client.txn(delete))
            .await?;
        let what = format!("revoking the etcd lease {lease:x}");
        match self
            .connection
            .timed(&what, self.client.lease_revoke(lease))
            .await
        {
            Ok(_) => Ok(()),
            // Already expired: nothing left to revoke.
            Err(error) if is_lease_not_found(&error) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

impl Drop for EtcdRegistration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for EtcdRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistration")
            .field("key", &self.key)
            .field("lease_id", &self.lease_id())
            .field("registrations", &self.registrations())
            .finish()
    }
}

fn is_lease_not_found(error: &EtcdError) -> bool {
    match error.source() {
        Some(source) => match source.downcast_ref::<ClientError>() {
            Some(ClientError::GRpcStatus(status)) => status.message().contains("lease not found"),
            _ => false,
        },
        None => false,
    }
}

/// Configures an [`EtcdRegistration`]; from [`EtcdRegistration::builder`].
#[derive(Debug, Clone)]
pub struct EtcdRegistrationBuilder {
    prefix: String,
    addr: String,
    id: Option<String>,
    metadata: Value,
    weight: Option<u32>,
    ttl: Duration,
    connection: ConnectionBuilder,
}

impl EtcdRegistrationBuilder {
    /// The etcd members to connect to, as in [`EtcdDiscoverBuilder::endpoints`].
    pub fn endpoints<I>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.connection.endpoints(endpoints);
        self
    }

    /// Uses this client instead of connecting to [`endpoints`](Self::endpoints).
    pub fn client(mut self, client: Client) -> Self {
        self.connection.client = Some(client);
        self
    }

    /// The options of the client connected to [`endpoints`](Self::endpoints), as in
    /// [`EtcdDiscoverBuilder::connect_options`].
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.connection.options = Some(options);
        self
    }

    /// The key's last part, `<prefix>/<id>` (the address unless set). Each instance needs its
    /// own.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The value's `Metadata`: any JSON value (`null` unless set).
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// Puts `weight` in the metadata, which must then be an object or unset: the weight that
    /// [`EtcdDiscover`] gives the endpoint. At least 1.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }

    /// The lease's time to live, in whole seconds ([`DEFAULT_TTL`] unless set): how long the key
    /// outlives a crash of this process. At least one second; etcd may raise a shorter one to
    /// its minimum, about one and a half election timeouts.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The wait between attempts while etcd is unreachable, as in
    /// [`EtcdDiscoverBuilder::backoff`].
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.connection.backoff = (min, max);
        self
    }

    /// How long one request to etcd may take ([`DEFAULT_REQUEST_TIMEOUT`] unless set).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.connection.request_timeout = timeout;
        self
    }

    /// The value put at the key, in the format Go's `endpoints.Manager` writes.
    fn value(&self) -> Result<String, EtcdError> {
        let mut metadata = self.metadata.clone();
        if let Some(weight) = self.weight {
            if weight == 0 {
                return Err(EtcdError::new(
                    "registration weight must be at least 1",
                    None,
                ));
            }
            if metadata.is_null() {
                metadata = Value::Object(Map::new());
            }
            let Value::Object(object) = &mut metadata else {
                return Err(EtcdError::new(
                    "registration metadata must be a JSON object to carry a weight",
                    None,
                ));
            };
            object.insert("weight".to_owned(), Value::from(weight));
        }
        if let Value::Object(object) = &metadata {
            if let Some(weight) = object.get("weight") {
                if !weight
                    .as_u64()
                    .is_some_and(|w| (1..=u64::from(u32::MAX)).contains(&w))
                {
                    return Err(EtcdError::new(
                        format!(
                            "registration weight {weight} is not an integer from 1 to {}",
                            u32::MAX
                        ),
                        None,
                    ));
                }
            }
        }
        // Field for field what Go's `json.Marshal` of its update struct gives.
        Ok(format!(
            r#"{{"Op":0,"Addr":{},"Metadata":{}}}"#,
            Value::String(self.addr.clone()),
            metadata
        ))
    }

    /// Registers the endpoint: grants a lease, puts the key with it, and spawns the task that
    /// keeps the lease alive. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// When the configuration is invalid (an empty prefix, an address that is not `host:port`,
    /// a weight of 0, a time to live under a second or not in whole seconds, no endpoints), or
    /// when etcd cannot be reached for this first registration.
    pub async fn register(self) -> Result<EtcdRegistration, EtcdError> {
        let prefix = key_prefix(&self.prefix)?;
        if !is_host_port(&self.addr) {
            return Err(EtcdError::new(
                format!("registration address {:?} is not host:port", self.addr),
                None,
            ));
        }
        let id = self.id.clone().unwrap_or_else(|| self.addr.clone());
        if id.is_empty() {
            return Err(EtcdError::new("registration id must not be empty", None));
        }
        if self.ttl < Duration::from_secs(1) || self.ttl.subsec_nanos() != 0 {
            return Err(EtcdError::new(
                "registration ttl must be a whole number of seconds, at least one",
                None,
            ));
        }
        let ttl = i64::try_from(self.ttl.as_secs())
            .map_err(|_| EtcdError::new("registration ttl is too long", None))?;
        let value = self.value()?;
        let connection = self.connection.check()?;
        let client = connection.connect().await?;
        let lease = Lease {
            key: format!("{prefix}{id}"),
            value,
            ttl,
        };
        let state = Arc::new(RegistrationState {
            lease: AtomicI64::new(0),
            registrations: AtomicU64::new(0),
        });
        lease
            .register(&connection, &mut client.clone(), &state)
            .await?;
        let task = tokio::spawn(lease.clone().keep(
            connection.clone(),
            client.clone(),
            state.clone(),
        ));
        Ok(EtcdRegistration {
            key: lease.key,
            connection,
            client,
            state,
            task,
        })
    }
}

/// What a registration puts, and how long its lease lives.
#[derive(Debug, Clone)]
struct Lease {
    key: String,
    value: String,
    /// In seconds.
    ttl: i64,
}

/// Why a lease stopped being renewed.
enum Lost {
    Expired,
    Failed(EtcdError),
}

impl Lease {
    /// Grants a lease and puts the key with it.
    async fn register(
        &self,
        connection: &ConnectionBuilder,
        client: &mut Client,
        state: &RegistrationState,
    ) -> Result<(), EtcdError> {
        let grant = client.lease_grant(self.ttl, None);
        let lease = connection
            .timed("granting an etcd lease", grant)
            .await?
            .id();
        // Stored before the put, so that a deregistration racing with it revokes this lease.
        state.lease.store(lease, Ordering::Relaxed);
        let put = client.put(
            self.key.as_bytes(),
            self.value.as_bytes(),
            Some(PutOptions::new().with_lease(lease)),
        );
        let what = format!("putting the etcd key `{}`", self.key);
        connection.timed(&what, put).await?;
        state.registrations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The background task: renews the lease, and registers again when it expired.
    async fn keep(
        self,
        connection: ConnectionBuilder,
        mut client: Client,
        state: Arc<RegistrationState>,
    ) {
        let mut backoff = connection.backoff();
        let mut expired = false;
        loop {
            if expired {
                // Until this succeeds the key is not in etcd, whatever lease was granted.
                match self.register(&connection, &mut client, &state).await {
                    Ok(()) => {
                        expired = false;
                        backoff.reset();
                    }
                    Err(error) => {
                        tracing::warn!(key = %self.key, %error, "etcd registration failed");
                        tokio::time::sleep(backoff.next()).await;
                        continue;
                    }
                }
            }
            let lease = state.lease.load(Ordering::Relaxed);
            match self
                .renew(&connection, &mut client, lease, &mut backoff)
                .await
            {
                Lost::Expired => {
                    tracing::warn!(key = %self.key, "etcd lease expired; registering again");
                    expired = true;
                }
                Lost::Failed(error) => {
                    tracing::warn!(key = %self.key, %error, "etcd lease renewal failed");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    /// Renews `lease` every third of its time to live until it expires or a request fails.
    async fn renew(
        &self,
        connection: &ConnectionBuilder,
        client: &mut Client,
        lease: i64,
        backoff: &mut Backoff,
    ) -> Lost {
        // A lease that expired while etcd was unreachable has a time to live of -1 (0 is a
        // live lease with less than a second left).
        let alive = connection.timed(
            "reading an etcd lease's time to live",
            client.lease_time_to_live(lease, None),
        );
        match alive.await {
            Ok(response) if response.ttl() < 0 => return Lost::Expired,
            Ok(_) => {}
            Err(error) => return Lost::Failed(error),
        }
        let open = connection.timed(
            "opening an etcd lease keep-alive stream",
            client.lease_keep_alive(lease),
        );
        let (mut keeper, mut responses) = match open.await {
            Ok(stream) => stream,
            Err(error) => return Lost::Failed(error),
        };
        backoff.reset();
        let period = Duration::from_secs(u64::try_from(self.ttl).unwrap_or(1)) / 3;
        loop {
            tokio::time::sleep(period).await;
            if let Err(error) = keeper.keep_alive().await {
                return Lost::Failed(EtcdError::new(
                    "sending an etcd lease keep-alive failed",
                    Some(error.into()),
                ));
            }
            match connection
                .timed("renewing an etcd lease", responses.message())
                .await
            {
                Ok(Some(response)) if response.ttl() <= 0 => return Lost::Expired,
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Lost::Failed(EtcdError::new(
                        "etcd closed the lease keep-alive stream",
                        None,
                    ))
                }
                Err(error) => return Lost::Failed(error),
            }
        }
    }
}

/// An etcd discovery or registration failure: a request that failed (discovery keeps its last
/// membership), a malformed value that was skipped, or a configuration that cannot be built.
/// [`source`](Error::source) gives the etcd client's error.
#[derive(Debug)]
pub struct EtcdError {
    message: String,
    source: Option<BoxError>,
}

impl EtcdError {
    fn new(message: impl Into<String>, source: Option<BoxError>) -> Self {
        Self {
            message: message.into(),
            source,
        }
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for EtcdError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(
        registry: &mut Registry,
        key: &str,
        value: &str,
        revision: i64,
    ) -> Result<(), Malformed> {
        registry.put(key.as_bytes(), value.as_bytes(), revision)
    }

    #[test]
    fn values_in_gos_format_name_endpoints() {
        let ok = |value: &str| parse_endpoint(value.as_bytes());
        assert_eq!(
            ok(r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":null}"#),
            Ok(("10.0.0.1:80".to_owned(), 1))
        );
        assert_eq!(
            ok(r#"{"Addr":"api-1.internal:8080","Metadata":{"weight":7,"zone":"a"}}"#),
            Ok(("api-1.internal:8080".to_owned(), 7))
        );
        // Go's encoding/json matches member names ignoring case.
        assert_eq!(
            ok(r#"{"addr":"[::1]:50051","metadata":{"weight":2}}"#),
            Ok(("[::1]:50051".to_owned(), 2))
        );
        // Metadata that is not an object carries no weight.
        assert_eq!(
            ok(r#"{"Addr":"h:1","Metadata":"..."}"#),
            Ok(("h:1".to_owned(), 1))
        );
        for bad in [
            "not json",
            "[1]",
            "null",
            r#"{"Metadata":{}}"#,
            r#"{"Addr":7}"#,
            r#"{"Addr":""}"#,
            r#"{"Addr":"no-port"}"#,
            r#"{"Addr":"h:99999"}"#,
            r#"{"Addr":"::1:80"}"#,
            r#"{"Addr":"h:1","Metadata":{"weight":0}}"#,
            r#"{"Addr":"h:1","Metadata":{"weight":-2}}"#,
            r#"{"Addr":"h:1","Metadata":{"weight":1.5}}"#,
            r#"{"Addr":"h:1","Metadata":{"weight":"3"}}"#,
            r#"{"Addr":"h:1","Metadata":{"weight":4294967296}}"#,
        ] {
            assert!(ok(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_malformed_value_never_removes_an_endpoint() {
        let mut registry = Registry::default();
        put(&mut registry, "s/a", r#"{"Addr":"h:1"}"#, 2).unwrap();
        assert_eq!(registry.changes(), [Diff::Insert("h:1".into(), 1)]);
        assert!(put(&mut registry, "s/a", "garbage", 3).is_err());
        assert_eq!(registry.changes(), []);
        // A re-read that finds the same garbage keeps the endpoint too.
        let malformed = registry.reset([(&b"s/a"[..], &b"garbage"[..], 3)].into_iter());
        assert_eq!(malformed.len(), 1);
        assert_eq!(registry.changes(), []);
        registry.delete(b"s/a");
        assert_eq!(registry.changes(), [Diff::Remove("h:1".into())]);
    }

    #[test]
    fn an_address_held_by_two_keys_stays_until_both_are_gone() {
        let mut registry = Registry::default();
        put(
            &mut registry,
            "s/old",
            r#"{"Addr":"h:1","Metadata":{"weight":2}}"#,
            2,
        )
        .unwrap();
        put(
            &mut registry,
            "s/new",
            r#"{"Addr":"h:1","Metadata":{"weight":5}}"#,
            3,
        )
        .unwrap();
        // One endpoint, with the latest write's weight.
        assert_eq!(registry.changes(), [Diff::Insert("h:1".into(), 5)]);
        registry.delete(b"s/new");
        assert_eq!(registry.changes(), [Diff::SetWeight("h:1".into(), 2)]);
        registry.delete(b"s/old");
        assert_eq!(registry.changes(), [Diff::Remove("h:1".into())]);
    }

    #[test]
    fn a_key_that_moves_to_another_address_moves_its_endpoint() {
        let mut registry = Registry::default();
        put(&mut registry, "s/a", r#"{"Addr":"h:1"}"#, 2).unwrap();
        registry.changes();
        put(&mut registry, "s/a", r#"{"Addr":"h:2"}"#, 3).unwrap();
        assert_eq!(
            registry.changes(),
            [Diff::Remove("h:1".into()), Diff::Insert("h:2".into(), 1)]
        );
    }

    #[test]
    fn a_reread_yields_the_difference() {
        let mut registry = Registry::default();
        put(&mut registry, "s/a", r#"{"Addr":"h:1"}"#, 2).unwrap();
        put(&mut registry, "s/b", r#"{"Addr":"h:2"}"#, 3).unwrap();
        registry.changes();
        let kvs: [(&[u8], &[u8], i64); 2] = [
            (b"s/b", br#"{"Addr":"h:2","Metadata":{"weight":3}}"#, 9),
            (b"s/c", br#"{"Addr":"h:3"}"#, 10),
        ];
        assert!(registry.reset(kvs.into_iter()).is_empty());
        assert_eq!(
            registry.changes(),
            [
                Diff::Remove("h:1".into()),
                Diff::SetWeight("h:2".into(), 3),
                Diff::Insert("h:3".into(), 1),
            ]
        );
    }

    #[test]
    fn registration_values_are_what_go_writes() {
        let builder = EtcdRegistration::builder("svc", "10.0.0.1:80");
        assert_eq!(
            builder.value().unwrap(),
            r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":null}"#
        );
        let value = builder.clone().weight(3).value().unwrap();
        assert_eq!(
            value,
            r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"weight":3}}"#
        );
        assert_eq!(
            parse_endpoint(value.as_bytes()),
            Ok(("10.0.0.1:80".into(), 3))
        );
        assert!(builder
            .clone()
            .metadata(Value::from("text"))
            .weight(3)
            .value()
            .is_err());
        assert!(builder.weight(0).value().is_err());
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum_with_jitter() {
        let mut backoff = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(400),
            next: Duration::from_millis(100),
        };
        for expected in [100, 200, 400, 400] {
            let wait = backoff.next();
            let expected = Duration::from_millis(expected);
            assert!(wait >= expected / 2 && wait <= expected, "{wait:?}");
        }
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(100));
    }
}
