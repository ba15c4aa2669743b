//! DNS discovery against a real DNS server on loopback: hickory-server with an in-memory zone
//! `svc.test.`, whose records the tests change while the discovery runs. The addresses in the
//! records are only names: nothing connects to them.

use std::{
    convert::Infallible,
    error::Error,
    future::{ready, Ready},
    net::{Ipv4Addr, SocketAddr},
    str::FromStr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use hickory_server::{
    net::runtime::{Time, TokioRuntimeProvider},
    proto::rr::{
        rdata::{A, SOA, SRV},
        LowerName, Name, RData, Record, RecordSet, RecordType, RrKey,
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType},
    Server,
};
use tokio::net::{TcpListener, UdpSocket};
use tower::{discover::Change, Layer, Service, ServiceExt};
use tower_lb::{
    dns::{DnsDiscover, DnsDiscoverBuilder, DnsError, Transport},
    strategy::RoundRobin,
    BalanceLayer, Endpoints,
};

/// The longest any expected change may take to show up.
const DEADLINE: Duration = Duration::from_secs(10);

/// A DNS server for the zone `svc.test.` on 127.0.0.1, over UDP and TCP on one port.
struct TestDns {
    zone: Arc<InMemoryZoneHandler>,
    addr: SocketAddr,
    /// `A` queries answered so far.
    a_queries: Arc<AtomicUsize>,
    server: Server<Counting>,
}

/// The catalog, counting `A` queries on the way.
struct Counting {
    catalog: Catalog,
    a_queries: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RequestHandler for Counting {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        if let Ok(info) = request.request_info() {
            if info.query.query_type() == RecordType::A {
                self.a_queries.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

impl TestDns {
    async fn start() -> Self {
        let origin = name("svc.test.");
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        // The SOA minimum is the negative TTL: 1 s, the shortest wait the discovery allows.
        let soa = SOA::new(
            name("ns.svc.test."),
            name("admin.svc.test."),
            1,
            60,
            60,
            60,
            1,
        );
        assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1));
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        let a_queries = Arc::new(AtomicUsize::new(0));
        let mut server = Server::new(Counting {
            catalog,
            a_queries: a_queries.clone(),
        });
        let (udp, tcp) = bind_udp_and_tcp().await;
        let addr = udp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        Self {
            zone,
            addr,
            a_queries,
            server,
        }
    }

    /// Replaces the records of one name and type at once, as one change of the zone; no
    /// records removes them.
    async fn set(&self, owner: &str, ttl: u32, records: impl IntoIterator<Item = RData>) {
        let owner = name(owner);
        let mut records = records.into_iter().peekable();
        let Some(record_type) = records.peek().map(RData::record_type) else {
            panic!("use `remove` to remove records");
        };
        let mut set = RecordSet::with_ttl(owner.clone(), record_type, ttl);
        for record in records {
            assert!(set.add_rdata(record));
        }
        let key = RrKey::new(LowerName::new(&owner), record_type);
        self.zone.records_mut().await.insert(key, Arc::new(set));
    }

    async fn remove(&self, owner: &str, record_type: RecordType) {
        let key = RrKey::new(LowerName::new(&name(owner)), record_type);
        self.zone.records_mut().await.remove(&key);
    }

    fn discover(&self, builder: DnsDiscoverBuilder) -> DnsDiscoverBuilder {
        builder
            .nameserver(self.addr, Transport::UdpAndTcp)
            .interval(Duration::from_millis(100))
            .timeout(Duration::from_millis(200))
    }

    fn a_queries(&self) -> usize {
        self.a_queries.load(Ordering::Relaxed)
    }
}

/// A UDP socket and a TCP listener on the same free loopback port.
async fn bind_udp_and_tcp() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

fn name(text: &str) -> Name {
    Name::from_str(text).unwrap()
}

fn a(last: u8) -> RData {
    RData::A(A(Ipv4Addr::new(127, 0, 0, last)))
}

fn srv(priority: u16, weight: u16, port: u16, target: &str) -> RData {
    RData::SRV(SRV::new(priority, weight, port, name(target)))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// An endpoint bound to one address; it answers every request with that address.
#[derive(Debug, Clone)]
struct Backend(SocketAddr);

impl Service<()> for Backend {
    type Response = SocketAddr;
    type Error = Infallible;
    type Future = Ready<Result<SocketAddr, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        ready(Ok(self.0))
    }
}

/// Follows `discover` into a new set, on a spawned task.
fn follow(builder: DnsDiscoverBuilder) -> Endpoints<SocketAddr, Backend> {
    let discover = builder.build(Backend).unwrap();
    let endpoints = Endpoints::new();
    tokio::spawn(endpoints.follow(discover));
    endpoints
}

/// Waits until `done` holds, checking every 10 ms, for at most [`DEADLINE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let wait = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(DEADLINE, wait).await.is_err() {
        panic!("timed out waiting until {what}");
    }
}

/// The stream's next item, waiting at most [`DEADLINE`].
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    match tokio::time::timeout(DEADLINE, stream.next()).await {
        Ok(item) => item,
        Err(_) => panic!("timed out waiting for the next item"),
    }
}

fn sorted_keys(endpoints: &Endpoints<SocketAddr, Backend>) -> Vec<SocketAddr> {
    let mut keys = endpoints.keys();
    keys.sort();
    keys
}

fn addrs(texts: &[&str]) -> Vec<SocketAddr> {
    texts.iter().map(|text| addr(text)).collect()
}

#[tokio::test]
async fn a_records_become_endpoints_and_follow_changes() {
    let dns = TestDns::start().await;
    dns.set("api.svc.test.", 60, [a(2), a(3)]).await;
    let endpoints = follow(dns.discover(DnsDiscover::host("api.svc.test.", 8080)));

    let initial = addrs(&["127.0.0.2:8080", "127.0.0.3:8080"]);
    eventually("the A records are endpoints", || {
        sorted_keys(&endpoints) == initial
    })
    .await;
    assert_eq!(endpoints.weight(&addr("127.0.0.2:8080")), Some(1));

    // Each endpoint's service was made for its own address.
    let balance = BalanceLayer::new(RoundRobin::new()).layer(endpoints.clone());
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(balance.clone().oneshot(()).await.unwrap());
    }
    answers.sort();
    assert_eq!(answers, initial);

    dns.set("api.svc.test.", 60, [a(2), a(3), a(4)]).await;
    let grown = addrs(&["127.0.0.2:8080", "127.0.0.3:8080", "127.0.0.4:8080"]);
    eventually("an added record is inserted", || {
        sorted_keys(&endpoints) == grown
    })
    .await;

    dns.set("api.svc.test.", 60, [a(3), a(4)]).await;
    let shrunk = addrs(&["127.0.0.3:8080", "127.0.0.4:8080"]);
    eventually("a removed record is removed", || {
        sorted_keys(&endpoints) == shrunk
    })
    .await;

    assert_eq!(endpoints.discovery_errors(), (0, None));
}

#[tokio::test]
async fn a_name_that_stops_existing_empties_the_set() {
    let dns = TestDns::start().await;
    dns.set("gone.svc.test.", 60, [a(2)]).await;
    let endpoints = follow(dns.discover(DnsDiscover::host("gone.svc.test.", 80)));
    eventually("the A record is an endpoint", || endpoints.len() == 1).await;

    // NXDOMAIN is what DNS says: no endpoints, and no error.
    dns.remove("gone.svc.test.", RecordType::A).await;
    eventually("NXDOMAIN empties the set", || endpoints.is_empty()).await;
    assert_eq!(endpoints.discovery_errors(), (0, None));

    dns.set("gone.svc.test.", 60, [a(5)]).await;
    eventually("the name comes back", || {
        endpoints.keys() == [addr("127.0.0.5:80")]
    })
    .await;
}

#[tokio::test]
async fn srv_records_give_weighted_endpoints() {
    let dns = TestDns::start().await;
    dns.set("a.svc.test.", 60, [a(2)]).await;
    dns.set("b.svc.test.", 60, [a(3), a(4)]).await;
    dns.set("c.svc.test.", 60, [a(5)]).await;
    dns.set("backup.svc.test.", 60, [a(9)]).await;
    dns.set(
        "_http._tcp.api.svc.test.",
        60,
        [
            srv(10, 10, 8080, "a.svc.test."),
            srv(10, 30, 9090, "b.svc.test."),
            // Weight 0: the least weight, 1.
            srv(10, 0, 7070, "c.svc.test."),
            // A higher priority value is a backup, not used.
            srv(20, 50, 6060, "backup.svc.test."),
        ],
    )
    .await;
    let endpoints = follow(dns.discover(DnsDiscover::srv("_http._tcp.api.svc.test.")));

    let expected = addrs(&[
        "127.0.0.2:8080",
        "127.0.0.3:9090",
        "127.0.0.4:9090",
        "127.0.0.5:7070",
    ]);
    eventually("the SRV targets are endpoints", || {
        sorted_keys(&endpoints) == expected
    })
    .await;
    let weights: Vec<_> = expected.iter().map(|a| endpoints.weight(a)).collect();
    assert_eq!(weights, [Some(10), Some(30), Some(30), Some(1)]);

    // A weight change alone changes the weight.
    dns.set(
        "_http._tcp.api.svc.test.",
        60,
        [
            srv(10, 25, 8080, "a.svc.test."),
            srv(10, 30, 9090, "b.svc.test."),
            srv(10, 0, 7070, "c.svc.test."),
        ],
    )
    .await;
    eventually("the new weight shows", || {
        endpoints.weight(&addr("127.0.0.2:8080")) == Some(25)
    })
    .await;
    assert_eq!(sorted_keys(&endpoints), expected);

    // A target's addresses follow its A records; a new port is a new endpoint.
    dns.set("b.svc.test.", 60, [a(3)]).await;
    dns.set(
        "_http._tcp.api.svc.test.",
        60,
        [
            srv(10, 25, 8081, "a.svc.test."),
            srv(10, 30, 9090, "b.svc.test."),
        ],
    )
    .await;
    let expected = addrs(&["127.0.0.2:8081", "127.0.0.3:9090"]);
    eventually("SRV changes show", || sorted_keys(&endpoints) == expected).await;
    assert_eq!(endpoints.weight(&addr("127.0.0.2:8081")), Some(25));
    assert_eq!(endpoints.discovery_errors(), (0, None));
}

#[tokio::test]
async fn lookup_failure_is_counted_and_keeps_the_last_membership() {
    let mut dns = TestDns::start().await;
    dns.set("api.svc.test.", 60, [a(2), a(3)]).await;
    let endpoints = follow(dns.discover(DnsDiscover::host("api.svc.test.", 8080)));
    let initial = addrs(&["127.0.0.2:8080", "127.0.0.3:8080"]);
    eventually("the A records are endpoints", || {
        sorted_keys(&endpoints) == initial
    })
    .await;

    dns.server.shutdown_gracefully().await.unwrap();
    // Two errors: the stream goes on resolving after a failure.
    eventually("lookups fail", || endpoints.discovery_errors().0 >= 2).await;
    let (_, last) = endpoints.discovery_errors();
    let last = last.unwrap();
    assert!(
        last.starts_with("dns lookup of A records for `api.svc.test.`")
            || last.starts_with("dns lookup of AAAA records for `api.svc.test.`"),
        "{last}"
    );
    assert_eq!(sorted_keys(&endpoints), initial);
}

#[tokio::test]
async fn a_lookup_failure_is_an_error_item_with_a_source() {
    let mut dns = TestDns::start().await;
    dns.server.shutdown_gracefully().await.unwrap();
    let mut discover = dns
        .discover(DnsDiscover::host("api.svc.test.", 8080))
        .build(Backend)
        .unwrap();
    let error: DnsError = match next(&mut discover).await {
        Some(Err(error)) => error,
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(error.to_string().starts_with("dns lookup of "), "{error}");
    assert!(error.source().is_some());
}

#[tokio::test]
async fn short_ttl_brings_the_next_lookup_forward() {
    let dns = TestDns::start().await;
    dns.set("api.svc.test.", 1, [a(2)]).await;
    // An interval of an hour: only the TTL of 1 s can bring the change in time.
    let endpoints = follow(
        dns.discover(DnsDiscover::host("api.svc.test.", 80))
            .interval(Duration::from_secs(3600)),
    );
    eventually("the A record is an endpoint", || endpoints.len() == 1).await;
    dns.set("api.svc.test.", 1, [a(3)]).await;
    eventually("the TTL runs out and the name is resolved again", || {
        endpoints.keys() == [addr("127.0.0.3:80")]
    })
    .await;
}

#[tokio::test]
async fn zero_ttl_waits_at_least_a_second() {
    let dns = TestDns::start().await;
    dns.set("api.svc.test.", 0, [a(2)]).await;
    let endpoints = follow(
        dns.discover(DnsDiscover::host("api.svc.test.", 80))
            .interval(Duration::from_secs(3600)),
    );
    eventually("the A record is an endpoint", || endpoints.len() == 1).await;
    let before = dns.a_queries();
    // Measures the lookup rate over a fixed span: about one lookup a second, not a spin.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let lookups = dns.a_queries() - before;
    assert!((1..=3).contains(&lookups), "{lookups} lookups in 2.5 s");
}

#[tokio::test]
async fn changes_is_a_tower_discover() {
    fn discover<D>(d: D) -> D
    where
        D: tower::discover::Discover<Key = SocketAddr, Service = Backend, Error = DnsError>,
    {
        d
    }

    let dns = TestDns::start().await;
    dns.set("a.svc.test.", 60, [a(2)]).await;
    dns.set("_x._tcp.svc.test.", 60, [srv(0, 5, 8080, "a.svc.test.")])
        .await;
    let mut changes = discover(
        dns.discover(DnsDiscover::srv("_x._tcp.svc.test."))
            .build(Backend)
            .unwrap()
            .changes(),
    );
    match next(&mut changes).await {
        Some(Ok(Change::Insert(key, Backend(bound)))) => {
            assert_eq!(key, addr("127.0.0.2:8080"));
            assert_eq!(bound, key);
        }
        other => panic!("expected an insert, got {other:?}"),
    }

    // A weight change alone is not a change for `Discover`; the removal is.
    dns.set("_x._tcp.svc.test.", 60, [srv(0, 7, 8080, "a.svc.test.")])
        .await;
    dns.remove("_x._tcp.svc.test.", RecordType::SRV).await;
    match next(&mut changes).await {
        Some(Ok(Change::Remove(key))) => assert_eq!(key, addr("127.0.0.2:8080")),
        other => panic!("expected a removal, got {other:?}"),
    }
}

#[test]
fn invalid_configuration_is_an_error() {
    let loopback = addr("127.0.0.1:53");
    let err = DnsDiscover::host("a..b.", 80)
        .nameserver(loopback, Transport::Udp)
        .build(Backend)
        .unwrap_err();
    assert_eq!(err.to_string(), "invalid dns name `a..b.`");
    assert!(err.source().is_some());

    let err = DnsDiscover::srv("_x._tcp.svc.test.")
        .nameserver(loopback, Transport::Tcp)
        .interval(Duration::ZERO)
        .build(Backend)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "dns discovery interval must be greater than zero"
    );

    let err = DnsDiscover::srv("_x._tcp.svc.test.")
        .nameserver(loopback, Transport::Tcp)
        .timeout(Duration::ZERO)
        .build(Backend)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "dns lookup timeout must be greater than zero"
    );
}

#[test]
fn discovery_types_are_send() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync + 'static>() {}
    send::<DnsDiscover<fn(SocketAddr) -> Backend>>();
    send::<tower_lb::dns::Changes<fn(SocketAddr) -> Backend>>();
    send_sync::<DnsError>();
    // What `tokio::spawn(endpoints.follow(discover))` needs.
    send::<tower_lb::discover::Follow<DnsDiscover<fn(SocketAddr) -> Backend>, SocketAddr, Backend>>(
    );
}
