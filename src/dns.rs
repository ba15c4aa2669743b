//! DNS discovery: an endpoint set that follows a DNS name, such as a Kubernetes headless service,
//! a Consul DNS name or any fleet published in DNS (cargo feature `dns`).
//!
//! A [`DnsDiscover`] resolves a name on an interval and yields the changes of its answer as
//! [`Update`]s keyed by [`SocketAddr`], making each new endpoint's service with a function you
//! give. Drive it with [`Endpoints::follow`](crate::Endpoints::follow); for `tower::balance` and
//! other consumers of `tower::discover::Discover`, use [`DnsDiscover::changes`].
//!
//! - [`DnsDiscover::host`] looks up the `A` and `AAAA` records of a name and gives every address
//!   the same port; the endpoints keep their weight (1 unless set otherwise).
//! - [`DnsDiscover::srv`] looks up `SRV` records, then the `A` and `AAAA` records of each target,
//!   and gives every address its record's port and weight. Only the records of the lowest
//!   priority value are used: higher values are backups in RFC 2782, and an endpoint set has no
//!   notion of backup. A weight of 0 becomes 1: RFC 2782 gives such records "a very small chance"
//!   of being selected, and the set needs weights of at least 1. Two records that name the same
//!   address and port add their weights. A weight change alone yields [`Update::SetWeight`].
//!
//! # Resolving, caching and failures
//!
//! The name is resolved when the stream is first polled, then again after the interval (5 s by
//! default) or when the shortest TTL of the answer runs out, whichever comes first, but never
//! sooner than [`MIN_TTL`] after a short TTL, so that records with a TTL of 0 do not make it spin.
//! Every round asks the nameservers afresh: the resolver's cache is cleared first.
//!
//! - An answer that says the name does not exist (`NXDOMAIN`) or has no records of the type asked
//!   (an empty `NOERROR` answer) is an empty set: every endpoint is removed. This is what DNS
//!   says, as when a Kubernetes service is scaled to zero.
//! - Any other failure (a timeout, a refused connection, `SERVFAIL`, `REFUSED`), for the name or
//!   for one of its `SRV` targets, yields an `Err(`[`DnsError`]`)` item and keeps the last answer:
//!   [`Endpoints::follow`](crate::Endpoints::follow) counts and logs the error and the set keeps
//!   its members. The stream resolves again after the interval.
//!
//! The stream never ends; drop it (or the endpoint set that follows it) to stop. It must be polled
//! within a tokio runtime with the time driver enabled.
//!
//! # Examples
//!
//! ```no_run
//! use std::{net::SocketAddr, time::Duration};
//! use tower::{service_fn, Layer};
//! use tower_lb::{dns::{DnsDiscover, Transport}, strategy::WeightedRoundRobin, BalanceLayer, Endpoints};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In a real client, each endpoint would be a connection pool bound to its address.
//! let connect = |addr: SocketAddr| service_fn(move |path: &'static str| async move {
//!     Ok::<_, std::convert::Infallible>(format!("{addr} served {path}"))
//! });
//!
//! // Follow the SRV records of a service through the cluster's DNS server.
//! let discover = DnsDiscover::srv("_http._tcp.api.default.svc.cluster.local.")
//!     .nameserver("10.96.0.10:53".parse()?, Transport::UdpAndTcp)
//!     .interval(Duration::from_secs(10))
//!     .build(connect)?;
//!
//! let endpoints = Endpoints::new();
//! let balance = BalanceLayer::new(WeightedRoundRobin::new()).layer(endpoints.clone());
//! tokio::spawn(endpoints.follow(discover));
//!
//! // Or the A and AAAA records of a name, with the system's DNS configuration.
//! let discover = DnsDiscover::host("api.example.com.", 8080).build(connect)?;
//! # drop((balance, discover));
//! # Ok(())
//! # }
//! ```

use std::{
    collections::{BTreeMap, VecDeque},
    error::Error,
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    str::FromStr,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use futures_core::Stream;
use futures_util::future::{join, join_all};
use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig},
    net::{runtime::TokioRuntimeProvider, DnsError as ResolveError, NetError},
    proto::rr::{Name, RData, Record, RecordType},
    TokioResolver,
};
use tokio::time::{Instant, Sleep};

use crate::{discover::Update, error::BoxError};

/// The shortest wait between two lookups that a short TTL can ask for.
///
/// The interval set with [`DnsDiscoverBuilder::interval`] may be shorter: it is your choice.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// The interval between two lookups when none is set.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// A discovery stream that follows a DNS name. See the [module docs](crate::dns).
///
/// Built by [`DnsDiscover::host`] or [`DnsDiscover::srv`] and [`DnsDiscoverBuilder::build`]; `F`
/// makes the service of each new endpoint from its address. It is a
/// `Stream<Item = Result<Update<SocketAddr, S>, DnsError>>`, for
/// [`Endpoints::follow`](crate::Endpoints::follow).
pub struct DnsDiscover<F> {
    resolver: TokioResolver,
    target: Arc<Target>,
    make: F,
    interval: Duration,
    /// The last answer: each address with its SRV weight (`None` for A/AAAA lookups).
    current: BTreeMap<SocketAddr, Option<u32>>,
    /// Changes found by the last lookup and not yet yielded.
    pending: VecDeque<Diff>,
    lookup: Option<LookupFuture>,
    /// Created on the first wait, inside the runtime, then reset for every later one.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// No field is structurally pinned: the lookup and the timer are boxed.
impl<F> Unpin for DnsDiscover<F> {}

type LookupFuture = Pin<Box<dyn Future<Output = Result<Answer, DnsError>> + Send>>;

/// What a [`DnsDiscover`] looks up.
#[derive(Debug)]
enum Target {
    Host { name: Name, port: u16 },
    Srv { name: Name },
}

/// One lookup's result: the addresses, with their SRV weights, and the shortest TTL seen.
#[derive(Debug)]
struct Answer {
    addrs: BTreeMap<SocketAddr, Option<u32>>,
    ttl: Option<u32>,
}

/// One change found by diffing two answers; the service is made when it is yielded.
#[derive(Debug)]
enum Diff {
    Insert(SocketAddr, Option<u32>),
    SetWeight(SocketAddr, u32),
    Remove(SocketAddr),
}

impl DnsDiscover<()> {
    /// Starts building a stream that follows the `A` and `AAAA` records of `name`, giving every
    /// address `port`.
    ///
    /// End `name` with a dot (`api.example.com.`) for a fully-qualified name; otherwise the
    /// search domains of the system configuration apply.
    pub fn host(name: impl Into<String>, port: u16) -> DnsDiscoverBuilder {
        DnsDiscoverBuilder::new(name.into(), Some(port))
    }

    /// Starts building a stream that follows the `SRV` records of `name`
    /// (`_http._tcp.api.example.com.`), giving every address of every target the record's port
    /// and weight.
    pub fn srv(name: impl Into<String>) -> DnsDiscoverBuilder {
        DnsDiscoverBuilder::new(name.into(), None)
    }
}

impl<F> DnsDiscover<F> {
    /// The stream as a `tower::discover::Discover`: inserts and removals as
    /// `tower::discover::Change`s, with weights dropped.
    pub fn changes(self) -> Changes<F> {
        Changes::new(self)
    }

    /// The addresses of the last successful answer, in address order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.current.keys().copied().collect()
    }

    fn start_lookup(&mut self) {
        let resolver = self.resolver.clone();
        let target = self.target.clone();
        self.lookup = Some(Box::pin(async move {
            // Each round asks the nameservers, not the answers of the previous rounds.
            resolver.clear_cache();
            resolve(&resolver, &target).await
        }));
    }

    fn wait(&mut self, delay: Duration) {
        let deadline = Instant::now() + delay;
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// When to look up again after an answer whose shortest TTL is `ttl` seconds.
    fn delay_after(&self, ttl: Option<u32>) -> Duration {
        match ttl {
            Some(ttl) => self
                .interval
                .min(Duration::from_secs(u64::from(ttl)).max(MIN_TTL)),
            None => self.interval,
        }
    }

    /// Queues the changes from the current answer to `next`, which becomes current.
    fn diff(&mut self, next: BTreeMap<SocketAddr, Option<u32>>) {
        for addr in self.current.keys() {
            if !next.contains_key(addr) {
                self.pending.push_back(Diff::Remove(*addr));
            }
        }
        for (&addr, &weight) in &next {
            match (self.current.get(&addr), weight) {
                (None, _) => self.pending.push_back(Diff::Insert(addr, weight)),
                (Some(&old), Some(weight)) if old != Some(weight) => {
                    self.pending.push_back(Diff::SetWeight(addr, weight))
                }
                _ => {}
            }
        }
        self.current = next;
    }
}

impl<F, S> Stream for DnsDiscover<F>
where
    F: Fn(SocketAddr) -> S,
{
    type Item = Result<Update<SocketAddr, S>, DnsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(diff) = this.pending.pop_front() {
                let update = match diff {
                    Diff::Insert(addr, None) => Update::Insert(addr, (this.make)(addr)),
                    Diff::Insert(addr, Some(weight)) => {
                        Update::InsertWeighted(addr, (this.make)(addr), weight)
                    }
                    Diff::SetWeight(addr, weight) => Update::SetWeight(addr, weight),
                    Diff::Remove(addr) => Update::Remove(addr),
                };
                return Poll::Ready(Some(Ok(update)));
            }
            if let Some(lookup) = &mut this.lookup {
                let result = ready!(lookup.as_mut().poll(cx));
                this.lookup = None;
                match result {
                    Ok(answer) => {
                        let delay = this.delay_after(answer.ttl);
                        this.wait(delay);
                        this.diff(answer.addrs);
                        // Yields the changes, if any, then polls the timer to register a wake-up.
                        continue;
                    }
                    Err(error) => {
                        this.wait(this.interval);
                        return Poll::Ready(Some(Err(error)));
                    }
                }
            }
            match &mut this.sleep {
                // Not waiting yet: this is the first poll.
                None => this.start_lookup(),
                Some(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    this.start_lookup();
                }
            }
        }
    }
}

impl<F> fmt::Debug for DnsDiscover<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsDiscover")
            .field("target", &self.target)
            .field("interval", &self.interval)
            .field("addrs", &self.current.keys().collect::<Vec<_>>())
            .field("resolving", &self.lookup.is_some())
            .finish()
    }
}

/// A [`DnsDiscover`] as a `tower::discover::Discover`, from [`DnsDiscover::changes`]: yields
/// `Change::Insert` for every new address and `Change::Remove` for every address gone; weight
/// changes are dropped.
pub type Changes<F> = crate::discover::Changes<DnsDiscover<F>>;

/// How [`DnsDiscoverBuilder::nameserver`] talks to a nameserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP only.
    Udp,
    /// TCP only.
    Tcp,
    /// UDP, and TCP when an answer is too long for UDP.
    UdpAndTcp,
}

/// Configures a [`DnsDiscover`]; from [`DnsDiscover::host`] or [`DnsDiscover::srv`].
#[derive(Debug, Clone)]
pub struct DnsDiscoverBuilder {
    name: String,
    /// `Some` for A/AAAA lookups, `None` for SRV.
    port: Option<u16>,
    nameservers: Vec<(SocketAddr, Transport)>,
    interval: Duration,
    timeout: Option<Duration>,
}

impl DnsDiscoverBuilder {
    fn new(name: String, port: Option<u16>) -> Self {
        Self {
            name,
            port,
            nameservers: Vec::new(),
            interval: DEFAULT_INTERVAL,
            timeout: None,
        }
    }

    /// Asks this nameserver instead of those of the system configuration. Call it again to add
    /// more nameservers; the system's hosts file is then not read either.
    pub fn nameserver(mut self, addr: SocketAddr, transport: Transport) -> Self {
        self.nameservers.push((addr, transport));
        self
    }

    /// The longest wait between two lookups ([`DEFAULT_INTERVAL`] unless set). A shorter TTL in
    /// the answer makes the next lookup come sooner, down to [`MIN_TTL`]. Must not be zero.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long to wait for one nameserver's answer before trying again or failing (the
    /// resolver's default, 5 s, unless set). Must not be zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Builds the stream; `make` makes the service of each new endpoint from its address.
    ///
    /// Nothing is looked up until the stream is first polled.
    ///
    /// # Errors
    ///
    /// When the name is not a valid DNS name, the interval or the timeout is zero, or, without
    /// a [nameserver](Self::nameserver), the system's DNS configuration cannot be read.
    pub fn build<F, S>(self, make: F) -> Result<DnsDiscover<F>, DnsError>
    where
        F: Fn(SocketAddr) -> S,
    {
        let name = Name::from_str(&self.name).map_err(|e| {
            DnsError::new(format!("invalid dns name `{}`", self.name), Some(e.into()))
        })?;
        if self.interval.is_zero() {
            return Err(DnsError::new(
                "dns discovery interval must be greater than zero",
                None,
            ));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(DnsError::new(
                "dns lookup timeout must be greater than zero",
                None,
            ));
        }
        let mut builder = if self.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| {
                DnsError::new("cannot read the system dns configuration", Some(e.into()))
            })?
        } else {
            let servers = self
                .nameservers
                .iter()
                .map(|&(addr, transport)| nameserver_config(addr, transport))
                .collect();
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            );
            // The nameservers given are the source of truth, not the local hosts file.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        };
        if let Some(timeout) = self.timeout {
            builder.options_mut().timeout = timeout;
        }
        let resolver = builder
            .build()
            .map_err(|e| DnsError::new("cannot build the dns resolver", Some(e.into())))?;
        let target = match self.port {
            Some(port) => Target::Host { name, port },
            None => Target::Srv { name },
        };
        Ok(DnsDiscover {
            resolver,
            target: Arc::new(target),
            make,
            interval: self.interval,
            current: BTreeMap::new(),
            pending: VecDeque::new(),
            lookup: None,
            sleep: None,
        })
    }
}

fn nameserver_config(addr: SocketAddr, transport: Transport) -> NameServerConfig {
    let connections = match transport {
        Transport::Udp => vec![ConnectionConfig::udp()],
        Transport::Tcp => vec![ConnectionConfig::tcp()],
        Transport::UdpAndTcp => vec![ConnectionConfig::udp(), ConnectionConfig::tcp()],
    };
    let connections = connections
        .into_iter()
        .map(|mut connection| {
            connection.port = addr.port();
            connection
        })
        .collect();
    NameServerConfig::new(addr.ip(), true, connections)
}

/// A DNS discovery failure: a lookup that failed (the set keeps its last members), or a
/// configuration that cannot be built. [`source`](Error::source) gives the resolver's error.
#[derive(Debug)]
pub struct DnsError {
    message: String,
    source: Option<BoxError>,
}

impl DnsError {
    fn new(message: impl Into<String>, source: Option<BoxError>) -> Self {
        Self {
            message: message.into(),
            source,
        }
    }

    fn lookup(name: &Name, record_type: RecordType, error: NetError) -> Self {
        let outcome = match error {
            NetError::Timeout => "timed out",
            _ => "failed",
        };
        Self::new(
            format!("dns lookup of {record_type} records for `{name}` {outcome}"),
            Some(error.into()),
        )
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for DnsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

async fn resolve(resolver: &TokioResolver, target: &Target) -> Result<Answer, DnsError> {
    match target {
        Target::Host { name, port } => {
            let (ips, ttl) = lookup_ips(resolver, name).await?;
            let addrs = ips
                .into_iter()
                .map(|ip| (SocketAddr::new(ip, *port), None))
                .collect();
            Ok(Answer { addrs, ttl })
        }
        Target::Srv { name } => resolve_srv(resolver, name).await,
    }
}

async fn resolve_srv(resolver: &TokioResolver, name: &Name) -> Result<Answer, DnsError> {
    let (records, mut ttl) = lookup(resolver, name, RecordType::SRV).await?;
    let records: Vec<_> = records
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv),
            _ => None,
        })
        .collect();
    let priority = records.iter().map(|srv| srv.priority).min();
    // A target of "." says the service is not available at this name (RFC 2782).
    let records: Vec<_> = records
        .into_iter()
        .filter(|srv| Some(srv.priority) == priority && !srv.target.is_root())
        .collect();
    let mut targets: Vec<&Name> = records.iter().map(|srv| &srv.target).collect();
    targets.sort();
    targets.dedup();
    let resolved = join_all(targets.iter().map(|target| lookup_ips(resolver, target))).await;
    let mut ips = BTreeMap::new();
    for (target, result) in targets.into_iter().zip(resolved) {
        let (addrs, target_ttl) = result?;
        ttl = min_ttl(ttl, target_ttl);
        ips.insert(target, addrs);
    }
    let mut addrs = BTreeMap::new();
    for srv in records {
        // Weight 0 has "a very small chance" of being picked (RFC 2782): the least weight, 1.
        let weight = u32::from(srv.weight.max(1));
        for &ip in ips.get(&srv.target).into_iter().flatten() {
            let slot = addrs
                .entry(SocketAddr::new(ip, srv.port))
                .or_insert(Some(0));
            *slot = slot.map(|sum: u32| sum.saturating_add(weight));
        }
    }
    Ok(Answer { addrs, ttl })
}

/// The `A` and `AAAA` addresses of `name`, and the shortest TTL seen.
async fn lookup_ips(
    resolver: &TokioResolver,
    name: &Name,
) -> Result<(Vec<IpAddr>, Option<u32>), DnsError> {
    let (v4, v6) = join(
        lookup(resolver, name, RecordType::A),
        lookup(resolver, name, RecordType::AAAA),
    )
    .await;
    // Either failing fails the whole: half an answer would remove the other half's endpoints.
    let ((v4, v4_ttl), (v6, v6_ttl)) = (v4?, v6?);
    let ips = v4
        .iter()
        .chain(&v6)
        .filter_map(|record| record.data.ip_addr())
        .collect();
    Ok((ips, min_ttl(v4_ttl, v6_ttl)))
}

/// The answer records of one query and their shortest TTL; no records (`NXDOMAIN`, or no
/// records of this type) is an empty answer, with the negative TTL if the server gave one.
async fn lookup(
    resolver: &TokioResolver,
    name: &Name,
    record_type: RecordType,
) -> Result<(Vec<Record>, Option<u32>), DnsError> {
    match resolver.lookup(name.clone(), record_type).await {
        Ok(lookup) => {
            let records = lookup.answers().to_vec();
            let ttl = records.iter().map(|record| record.ttl).min();
            Ok((records, ttl))
        }
        Err(NetError::Dns(ResolveError::NoRecordsFound(no_records))) => {
            Ok((Vec::new(), no_records.negative_ttl))
        }
        Err(error) => Err(DnsError::lookup(name, record_type, error)),
    }
}

fn min_ttl(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
