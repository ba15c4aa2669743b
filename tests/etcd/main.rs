//! etcd discovery and registration against real etcd servers on loopback (`cluster.rs`): one
//! member, or a three-member cluster whose members the tests stop and restart. Keys are written
//! with `etcdctl`, as another registry client would. The addresses in the values are only
//! names: each endpoint is an in-process service that answers with its address.

mod cluster;

use std::{
    convert::Infallible,
    future::{ready, Ready},
    pin::Pin,
    process::Child,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::Stream;
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tower::{Layer, Service, ServiceExt};
use tower_lb::{
    discover::Update,
    etcd::{
        etcd_client::{GetOptions, PutOptions, Txn, TxnOp},
        EtcdDiscover, EtcdDiscoverBuilder, EtcdError, EtcdRegistration, EtcdStats,
    },
    strategy::{RoundRobin, WeightedRoundRobin},
    BalanceLayer, Endpoints,
};

use cluster::Cluster;

/// The longest any expected change may take to show up.
const DEADLINE: Duration = Duration::from_secs(20);

/// An endpoint bound to one address; it answers every request with that address.
#[derive(Debug, Clone)]
struct Backend(String);

impl Service<()> for Backend {
    type Response = String;
    type Error = Infallible;
    type Future = Ready<Result<String, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        ready(Ok(self.0.clone()))
    }
}

fn make(addr: &str) -> Backend {
    Backend(addr.to_owned())
}

/// Discovery of `prefix` through `urls`, retrying quickly.
fn discover(prefix: &str, urls: Vec<String>) -> EtcdDiscoverBuilder {
    EtcdDiscover::prefix(prefix)
        .endpoints(urls)
        .backoff(Duration::from_millis(20), Duration::from_millis(300))
        .request_timeout(Duration::from_secs(2))
}

/// What the set saw: every update in order, and how many batches they came in.
#[derive(Debug, Default)]
struct Seen {
    updates: Mutex<Vec<String>>,
    batches: AtomicUsize,
}

impl Seen {
    fn updates(&self) -> Vec<String> {
        self.updates.lock().unwrap().clone()
    }

    fn batches(&self) -> usize {
        self.batches.load(Ordering::Relaxed)
    }
}

/// Records what passes from a discovery stream to `Endpoints::follow`. The follower applies the
/// items that are ready together as one change, so a run of ready items between two `Pending`s
/// is one change of the set.
struct Recording<D> {
    inner: D,
    seen: Arc<Seen>,
    in_batch: bool,
}

impl<D> Stream for Recording<D>
where
    D: Stream<Item = Result<Update<String, Backend>, EtcdError>> + Unpin,
{
    type Item = D::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<D::Item>> {
        let item = Pin::new(&mut self.inner).poll_next(cx);
        match &item {
            Poll::Ready(Some(Ok(update))) => {
                if !self.in_batch {
                    self.in_batch = true;
                    self.seen.batches.fetch_add(1, Ordering::Relaxed);
                }
                let text = match update {
                    Update::Insert(addr, _) => format!("+{addr}"),
                    Update::InsertWeighted(addr, _, weight) => format!("+{addr} w{weight}"),
                    Update::SetWeight(addr, weight) => format!("~{addr} w{weight}"),
                    Update::Remove(addr) => format!("-{addr}"),
                    Update::InsertLocated(addr, _, weight, locality) => {
                        format!("+{addr} w{weight} {locality:?}")
                    }
                    Update::SetLocality(addr, locality) => format!("~{addr} {locality:?}"),
                    _ => format!("?{update:?}"),
                };
                self.seen.updates.lock().unwrap().push(text);
            }
            Poll::Pending => self.in_batch = false,
            _ => {}
        }
        item
    }
}

/// A set following `builder`'s stream on a spawned task, with its stats and what it saw.
fn follow(builder: EtcdDiscoverBuilder) -> (Endpoints<String, Backend>, EtcdStats, Arc<Seen>) {
    let discover = builder.build(make).unwrap();
    let stats = discover.stats();
    let seen = Arc::new(Seen::default());
    let recording = Recording {
        inner: discover,
        seen: seen.clone(),
        in_batch: false,
    };
    let endpoints = Endpoints::new();
    tokio::spawn(endpoints.follow(recording));
    (endpoints, stats, seen)
}

/// Waits until `done` holds, checking every 5 ms, for at most [`DEADLINE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let wait = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(DEADLINE, wait).await.is_err() {
        panic!("timed out waiting until {what}");
    }
}

fn sorted_keys(endpoints: &Endpoints<String, Backend>) -> Vec<String> {
    let mut keys = endpoints.keys();
    keys.sort();
    keys
}

fn strings(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|text| text.to_string()).collect()
}

/// A value in the format Go's `endpoints.Manager` writes.
fn value(addr: &str, weight: Option<u32>) -> String {
    match weight {
        Some(weight) => {
            format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":{{"weight":{weight},"zone":"a"}}}}"#)
        }
        None => format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":null}}"#),
    }
}

/// The endpoints the prefix holds, read straight from etcd: what a Go client would see.
async fn prefix_contents(cluster: &Cluster, prefix: &str) -> Vec<String> {
    let mut client = cluster.client().await;
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut addrs: Vec<String> = response
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice::<serde_json::Value>(kv.value()).ok())
        .filter_map(|v| v.get("Addr").and_then(|a| a.as_str()).map(str::to_owned))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Answers from `requests` requests through a round-robin balancer over the set.
async fn send(endpoints: &Endpoints<String, Backend>, requests: usize) -> Vec<String> {
    let balance = BalanceLayer::new(RoundRobin::new()).layer(endpoints.clone());
    let mut answers = Vec::new();
    for _ in 0..requests {
        answers.push(balance.clone().oneshot(()).await.unwrap());
    }
    answers
}

/// A child process killed by PID when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_put_and_del_in_the_naming_format_add_and_remove_endpoints() {
    let etcd = Cluster::single().await;
    let (endpoints, stats, _) = follow(discover("svc", etcd.urls()));

    etcd.etcdctl(&["put", "svc/a", &value("127.0.0.1:7001", None)]);
    eventually("the put key is an endpoint", || {
        endpoints.keys() == ["127.0.0.1:7001"]
    })
    .await;
    assert_eq!(endpoints.weight("127.0.0.1:7001"), Some(1));

    // Metadata with a weight gives that weight; keys of other prefixes are not read.
    etcd.etcdctl(&["put", "svc/b", &value("127.0.0.1:7002", Some(3))]);
    etcd.etcdctl(&["put", "svc-canary/c", &value("127.0.0.1:7009", None)]);
    etcd.etcdctl(&["put", "svcx", &value("127.0.0.1:7010", None)]);
    eventually("the weighted key is an endpoint", || endpoints.len() == 2).await;
    assert_eq!(endpoints.weight("127.0.0.1:7002"), Some(3));
    assert_eq!(
        sorted_keys(&endpoints),
        strings(&["127.0.0.1:7001", "127.0.0.1:7002"])
    );

    // Each endpoint's service was made for its own address, and requests reach it by weight.
    let balance = BalanceLayer::new(WeightedRoundRobin::new()).layer(endpoints.clone());
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(balance.clone().oneshot(()).await.unwrap());
    }
    answers.sort();
    let mut expected = vec!["127.0.0.1:7001".to_owned(); 2];
    expected.extend(vec!["127.0.0.1:7002".to_owned(); 6]);
    assert_eq!(answers, expected);

    // A new weight is a weight change.
    etcd.etcdctl(&["put", "svc/b", &value("127.0.0.1:7002", Some(5))]);
    eventually("the new weight shows", || {
        endpoints.weight("127.0.0.1:7002") == Some(5)
    })
    .await;

    etcd.etcdctl(&["del", "svc/a"]);
    eventually("the deleted key is removed", || {
        endpoints.keys() == ["127.0.0.1:7002"]
    })
    .await;
    assert_eq!(stats.malformed(), 0);
    assert_eq!(endpoints.discovery_errors(), (0, None));
    assert_eq!(stats.failing_for(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_skipped_counted_and_never_remove_an_endpoint() {
    let etcd = Cluster::single().await;
    etcd.etcdctl(&["put", "svc/good", &value("127.0.0.1:7001", Some(2))]);
    // Read by the initial range read.
    etcd.etcdctl(&["put", "svc/text", "not json"]);
    let (endpoints, stats, _) = follow(discover("svc", etcd.urls()));
    eventually("the valid key is an endpoint", || endpoints.len() == 1).await;
    eventually("the malformed value is counted", || stats.malformed() == 1).await;

    // Seen by the watch: no Addr, a weight of 0, an address without a port.
    etcd.etcdctl(&["put", "svc/no-addr", r#"{"Metadata":{"weight":2}}"#]);
    etcd.etcdctl(&[
        "put",
        "svc/zero",
        r#"{"Addr":"127.0.0.1:7003","Metadata":{"weight":0}}"#,
    ]);
    etcd.etcdctl(&["put", "svc/no-port", r#"{"Addr":"127.0.0.1"}"#]);
    // A valid key overwritten with garbage keeps its endpoint.
    etcd.etcdctl(&["put", "svc/good", "{"]);
    etcd.etcdctl(&["put", "svc/later", &value("127.0.0.1:7004", None)]);
    eventually("the key after the malformed ones is an endpoint", || {
        endpoints.len() == 2
    })
    .await;
    assert_eq!(stats.malformed(), 5);
    assert_eq!(
        sorted_keys(&endpoints),
        strings(&["127.0.0.1:7001", "127.0.0.1:7004"])
    );
    assert_eq!(endpoints.weight("127.0.0.1:7001"), Some(2));

    // Logged and counted by the follower too, with the key named.
    let (errors, last) = endpoints.discovery_errors();
    assert_eq!(errors, 5);
    let last = last.unwrap();
    assert!(
        last.starts_with("skipped the malformed endpoint at etcd key `svc/good`"),
        "{last}"
    );

    // Deleting the key removes the endpoint it held.
    etcd.etcdctl(&["del", "svc/good"]);
    eventually("the deleted key's endpoint is removed", || {
        endpoints.keys() == ["127.0.0.1:7004"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_registrant_disappears_within_its_lease_ttl_plus_a_watch_round_trip() {
    const TTL: Duration = Duration::from_secs(2);
    let etcd = Cluster::single().await;
    let (endpoints, _, _) = follow(discover("svc", etcd.urls()));

    // A registrant in another process: a lease, a key on it, and `etcdctl lease keep-alive`.
    let granted = etcd.etcdctl(&["lease", "grant", &TTL.as_secs().to_string()]);
    let lease = granted.split_whitespace().nth(1).unwrap().to_owned();
    etcd.etcdctl(&[
        "put",
        "--lease",
        &lease,
        "svc/proc",
        &value("127.0.0.1:7001", None),
    ]);
    let keeper = Process(
        etcd.etcdctl_command(&["lease", "keep-alive", &lease])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("the registrant is an endpoint", || endpoints.len() == 1).await;

    drop(keeper);
    let killed = Instant::now();
    eventually("the killed registrant's key expires", || {
        endpoints.is_empty()
    })
    .await;
    let gone = killed.elapsed();

    // The same through a registration of this crate dropped without deregistering.
    let registration = EtcdRegistration::builder("svc", "127.0.0.1:7002")
        .endpoints(etcd.urls())
        .ttl(TTL)
        .register()
        .await
        .unwrap();
    eventually("the registration is an endpoint", || endpoints.len() == 1).await;
    drop(registration);
    let dropped = Instant::now();
    eventually("the dropped registration's key expires", || {
        endpoints.is_empty()
    })
    .await;
    let gone_registration = dropped.elapsed();

    println!(
        "removal after the registrant stopped renewing a {TTL:?} lease: etcdctl keep-alive \
         killed {gone:?}, registration dropped {gone_registration:?}"
    );
    // etcd checks for expired leases twice a second; the bound leaves room for a busy machine.
    let bound = TTL + Duration::from_secs(5);
    assert!(gone < bound, "{gone:?}");
    assert!(gone_registration < bound, "{gone_registration:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_renews_registers_again_after_expiry_and_deletes_its_key_on_deregister() {
    let etcd = Cluster::single().await;
    let (endpoints, _, _) = follow(discover("svc", etcd.urls()));
    let registration = EtcdRegistration::builder("svc", "127.0.0.1:7001")
        .id("instance-1")
        .endpoints(etcd.urls())
        .weight(4)
        .ttl(Duration::from_secs(1))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .register()
        .await
        .unwrap();
    assert_eq!(registration.key(), "svc/instance-1");
    assert_eq!(registration.registrations(), 1);
    eventually("the registration is an endpoint", || endpoints.len() == 1).await;
    assert_eq!(endpoints.weight("127.0.0.1:7001"), Some(4));

    // Renewed: the key outlives three of its lease's lifetimes, on the same lease.
    let lease = registration.lease_id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(endpoints.keys(), ["127.0.0.1:7001"]);
    assert_eq!(registration.lease_id(), lease);
    assert_eq!(registration.registrations(), 1);

    // The lease ends under it (as after a long partition): the key goes, then comes back on a
    // new lease.
    etcd.etcdctl(&["lease", "revoke", &format!("{lease:x}")]);
    eventually("the registration is put again", || {
        registration.registrations() == 2
    })
    .await;
    assert_ne!(registration.lease_id(), lease);
    eventually("the endpoint is back", || endpoints.len() == 1).await;
    assert_eq!(
        etcd.etcdctl(&["get", "svc/instance-1", "--print-value-only"])
            .trim(),
        r#"{"Op":0,"Addr":"127.0.0.1:7001","Metadata":{"weight":4}}"#
    );

    // A graceful leave deletes the key at once, without waiting for the lease.
    let leaving = Instant::now();
    registration.deregister().await.unwrap();
    assert_eq!(etcd.etcdctl(&["get", "svc/instance-1"]), "");
    eventually("the endpoint is removed", || endpoints.is_empty()).await;
    assert!(leaving.elapsed() < Duration::from_secs(1) + DEADLINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_keeps_membership_and_updates_resume_after_re_election() {
    let mut etcd = Cluster::three().await;
    let (endpoints, stats, seen) = follow(discover("svc", etcd.urls()));
    etcd.etcdctl(&["put", "svc/a", &value("127.0.0.1:7001", None)]);
    etcd.etcdctl(&["put", "svc/b", &value("127.0.0.1:7002", None)]);
    eventually("both keys are endpoints", || endpoints.len() == 2).await;

    // The member that serves the watch becomes the leader, so that stopping the leader breaks
    // the watch too: discovery must reconnect to a survivor and resume.
    let deadline = Instant::now() + DEADLINE;
    let leader = 'found: loop {
        for member in 0..3 {
            if etcd.watchers(member).await == 1 {
                break 'found member;
            }
        }
        assert!(Instant::now() < deadline, "no member serves the watch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    etcd.move_leader(leader).await;
    etcd.stop(leader);
    assert_eq!(endpoints.len(), 2);

    // A write through the survivors succeeds once they elected a new leader, and shows up.
    etcd.etcdctl_retrying(&["put", "svc/c", &value("127.0.0.1:7003", None)])
        .await;
    eventually("the write after the re-election shows", || {
        endpoints.len() == 3
    })
    .await;
    etcd.etcdctl_retrying(&["del", "svc/a"]).await;
    eventually("the delete after the re-election shows", || {
        sorted_keys(&endpoints) == strings(&["127.0.0.1:7002", "127.0.0.1:7003"])
    })
    .await;
    // Nothing was removed but the deleted key, and nothing applied twice.
    assert_eq!(
        seen.updates(),
        [
            "+127.0.0.1:7001 w1",
            "+127.0.0.1:7002 w1",
            "+127.0.0.1:7003 w1",
            "-127.0.0.1:7001",
        ]
    );
    // The watch broke with the leader, and discovery said so.
    assert!(stats.failures() >= 1);
    assert!(stats.failing_for().is_none());
    println!(
        "leader stopped: membership kept (2 of 2), {} discovery failures while re-electing",
        stats.failures()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_down_keeps_membership_and_requests_then_its_restart_resumes_the_watch_exactly() {
    let mut etcd = Cluster::three().await;
    let (endpoints, stats, seen) = follow(discover("svc", etcd.urls()));
    etcd.etcdctl(&["put", "svc/a", &value("127.0.0.1:7001", None)]);
    etcd.etcdctl(&["put", "svc/b", &value("127.0.0.1:7002", None)]);
    etcd.etcdctl(&["put", "svc/c", &value("127.0.0.1:7003", None)]);
    etcd.etcdctl(&["del", "svc/c"]);
    let before = strings(&["127.0.0.1:7001", "127.0.0.1:7002"]);
    eventually("the changes before the outage show", || {
        sorted_keys(&endpoints) == before && seen.updates().len() == 4
    })
    .await;

    for member in 0..3 {
        etcd.stop(member);
    }
    eventually("discovery notices the outage", || {
        stats.failing_for().is_some()
    })
    .await;
    let failing_since = stats.failing_since().unwrap();

    // Requests keep flowing over the last membership, exactly as before.
    let mut answers = send(&endpoints, 100).await;
    answers.sort();
    let mut expected = vec!["127.0.0.1:7001".to_owned(); 50];
    expected.extend(vec!["127.0.0.1:7002".to_owned(); 50]);
    assert_eq!(answers, expected);
    eventually("discovery has failed several times", || {
        stats.failures() >= 3
    })
    .await;
    assert_eq!(sorted_keys(&endpoints), before);
    assert_eq!(stats.failing_since(), Some(failing_since));
    let outage = failing_since.elapsed();

    for member in 0..3 {
        etcd.restart(member);
    }
    etcd.wait_ready().await.unwrap();
    etcd.etcdctl_retrying(&["put", "svc/d", &value("127.0.0.1:7004", None)])
        .await;
    etcd.etcdctl_retrying(&["del", "svc/a"]).await;
    eventually("the changes after the restart show", || {
        sorted_keys(&endpoints) == strings(&["127.0.0.1:7002", "127.0.0.1:7004"])
    })
    .await;
    eventually("discovery is healthy again", || {
        stats.failing_for().is_none()
    })
    .await;
    // Every change once: none repeated after the restart, none lost. The two changes made
    // after it may come in one batch, applied together, in address order.
    let updates = seen.updates();
    assert_eq!(updates.len(), 6, "{updates:?}");
    let mut after = updates[4..].to_vec();
    after.sort();
    assert_eq!(after, ["+127.0.0.1:7004 w1", "-127.0.0.1:7001"]);
    assert_eq!(stats.resyncs(), 0);
    println!(
        "all members stopped: membership kept (2 of 2) and 100 of 100 requests served through \
         an outage of at least {outage:?}, {} discovery failures",
        stats.failures()
    );
}

/// A TCP proxy to etcd that the test can cut: while cut, it drops every connection.
struct Proxy {
    addr: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let cut = cut.clone();
            let connections = connections.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue;
                    }
                    let target = target.clone();
                    let connection = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap().push(connection);
                }
            }
        });
        Self {
            addr,
            cut,
            connections,
            accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_past_the_watch_revision_ends_with_the_set_equal_to_the_prefix() {
    let etcd = Cluster::single().await;
    let target = etcd.urls()[0].trim_start_matches("http://").to_owned();
    let proxy = Proxy::start(target).await;
    let (endpoints, stats, seen) = follow(discover("svc", vec![proxy.addr.clone()]));
    for (key, port) in [("a", 7001), ("b", 7002), ("c", 7003)] {
        etcd.etcdctl(&[
            "put",
            &format!("svc/{key}"),
            &value(&format!("127.0.0.1:{port}"), None),
        ]);
    }
    eventually("the first keys are endpoints", || endpoints.len() == 3).await;

    // Cut off, the watch misses changes that etcd then compacts away.
    proxy.cut();
    eventually("discovery notices the cut", || {
        stats.failing_for().is_some()
    })
    .await;
    etcd.etcdctl(&["del", "svc/a"]);
    etcd.etcdctl(&["put", "svc/b", &value("127.0.0.1:7002", Some(4))]);
    etcd.etcdctl(&["put", "svc/d", &value("127.0.0.1:7004", None)]);
    etcd.etcdctl(&["put", "svc/e", &value("127.0.0.1:7005", None)]);
    etcd.etcdctl(&["del", "svc/e"]);
    let mut client = etcd.client().await;
    let revision = client
        .get("svc/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(revision, None).await.unwrap();
    let batches_before = seen.batches();
    assert_eq!(sorted_keys(&endpoints).len(), 3, "kept while cut off");

    proxy.heal();
    let expected = prefix_contents(&etcd, "svc/").await;
    assert_eq!(
        expected,
        strings(&["127.0.0.1:7002", "127.0.0.1:7003", "127.0.0.1:7004"])
    );
    eventually("the set equals the prefix", || {
        sorted_keys(&endpoints) == expected
    })
    .await;
    assert_eq!(endpoints.weight("127.0.0.1:7002"), Some(4));
    assert_eq!(stats.resyncs(), 1);
    // The difference came as one change of the set.
    assert_eq!(seen.batches(), batches_before + 1);
    assert_eq!(
        seen.updates()[3..],
        [
            "-127.0.0.1:7001",
            "~127.0.0.1:7002 w4",
            "+127.0.0.1:7004 w1",
        ]
    );
    eventually("discovery is healthy again", || {
        stats.failing_for().is_none()
    })
    .await;

    // The watch goes on from the re-read's revision.
    etcd.etcdctl(&["del", "svc/c"]);
    eventually("a change after the re-read shows", || endpoints.len() == 2).await;
    assert_eq!(
        sorted_keys(&endpoints),
        prefix_contents(&etcd, "svc/").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_endpoints_registered_at_once_arrive_as_one_change_and_match_the_prefix() {
    let etcd = Cluster::single().await;
    let (endpoints, _, seen) = follow(discover("svc", etcd.urls()));
    let mut client = etcd.client().await;
    // Watching before the burst: an unrelated key has come through.
    etcd.etcdctl(&["put", "svc/first", &value("127.0.0.1:1", None)]);
    eventually("the first key is an endpoint", || endpoints.len() == 1).await;
    assert_eq!(seen.batches(), 1);

    // A thousand instances, put in one transaction on one lease.
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let puts: Vec<TxnOp> = (0..1000)
        .map(|i| {
            TxnOp::put(
                format!("svc/{i}"),
                value(&format!("127.0.0.{}:{}", i % 250 + 2, 8000 + i), None),
                Some(PutOptions::new().with_lease(lease)),
            )
        })
        .collect();
    client.txn(Txn::new().and_then(puts)).await.unwrap();
    eventually("the thousand are endpoints", || endpoints.len() == 1001).await;
    assert_eq!(seen.batches(), 2, "one change for the thousand");
    assert_eq!(
        sorted_keys(&endpoints),
        prefix_contents(&etcd, "svc/").await
    );

    // Their lease revoked, they all go at once too.
    client.lease_revoke(lease).await.unwrap();
    eventually("the thousand are removed", || endpoints.len() == 1).await;
    assert_eq!(seen.batches(), 3, "one change for the removal");

    // A thousand separate puts, as many instances starting together: fewer changes than puts.
    let puts = (0..1000).map(|i| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let addr = format!("127.0.1.{}:{}", i % 250 + 2, 9000 + i);
            client
                .put(format!("svc/p{i}"), value(&addr, None), None)
                .await
                .unwrap();
        })
    });
    let before = seen.batches();
    futures_util::future::join_all(puts).await;
    eventually("the thousand are endpoints", || endpoints.len() == 1001).await;
    assert_eq!(
        sorted_keys(&endpoints),
        prefix_contents(&etcd, "svc/").await
    );
    let changes = seen.batches() - before;
    println!("1000 separate puts arrived as {changes} changes of the set");
    assert!(changes < 1000, "{changes} changes");
}

/// Sends requests through `balance` until one lands on `addr`; returns when it did.
async fn first_request_on<B>(balance: &B, addr: &str) -> Instant
where
    B: Service<(), Response = String> + Clone,
    B::Error: std::fmt::Debug,
{
    let served = async {
        loop {
            if balance.clone().oneshot(()).await.unwrap() == addr {
                return Instant::now();
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("the new endpoint takes requests")
}

fn median_and_p99(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (pick(0.5), pick(0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_put_endpoint_takes_requests_and_the_latency_is_reported() {
    const CHANGES: usize = 100;
    let etcd = Cluster::single().await;
    let (endpoints, _, _) = follow(discover("svc", etcd.urls()));
    etcd.etcdctl(&["put", "svc/base", &value("127.0.0.1:7000", None)]);
    eventually("the base endpoint is in", || endpoints.len() == 1).await;
    let balance = BalanceLayer::new(RoundRobin::new()).layer(endpoints.clone());

    // With etcdctl, as an operator or a script would register an instance.
    let mut from_etcdctl = Vec::new();
    for i in 0..CHANGES {
        let addr = format!("127.0.0.2:{}", 8000 + i);
        let started = Instant::now();
        etcd.etcdctl(&["put", &format!("svc/{i}"), &value(&addr, None)]);
        from_etcdctl.push(first_request_on(&balance, &addr).await - started);
        etcd.etcdctl(&["del", &format!("svc/{i}")]);
        eventually("the endpoint is removed", || endpoints.len() == 1).await;
    }

    // With a client in this process, as a registering service would: no process start-up.
    let mut client = etcd.client().await;
    let mut from_put = Vec::new();
    for i in 0..CHANGES {
        let addr = format!("127.0.0.3:{}", 8000 + i);
        let started = Instant::now();
        client
            .put(format!("svc/{i}"), value(&addr, None), None)
            .await
            .unwrap();
        from_put.push(first_request_on(&balance, &addr).await - started);
        client.delete(format!("svc/{i}"), None).await.unwrap();
        eventually("the endpoint is removed", || endpoints.len() == 1).await;
    }

    let (etcdctl_median, etcdctl_p99) = median_and_p99(from_etcdctl);
    let (put_median, put_p99) = median_and_p99(from_put);
    println!(
        "put -> new endpoint taking requests, over {CHANGES} changes each: \
         from starting `etcdctl put`: median {etcdctl_median:?}, p99 {etcdctl_p99:?}; \
         from an in-process put: median {put_median:?}, p99 {put_p99:?}"
    );
}

#[test]
fn invalid_configuration_is_an_error() {
    let err = EtcdDiscover::prefix("/")
        .endpoints(["127.0.0.1:2379"])
        .build(make)
        .unwrap_err();
    assert_eq!(err.to_string(), "etcd key prefix must not be empty");

    let err = EtcdDiscover::prefix("svc").build(make).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no etcd endpoints: give endpoints or a client"
    );

    let err = EtcdDiscover::prefix("svc")
        .endpoints(["http://bad host:2379"])
        .build(make)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid etcd endpoint `http://bad host:2379`"
    );

    let err = EtcdDiscover::prefix("svc")
        .endpoints(["127.0.0.1:2379"])
        .backoff(Duration::from_secs(2), Duration::from_secs(1))
        .build(make)
        .unwrap_err();
    assert!(err.to_string().starts_with("etcd backoff must be"), "{err}");
}

#[tokio::test]
async fn invalid_registration_is_an_error() {
    let register = |builder: tower_lb::etcd::EtcdRegistrationBuilder| async move {
        builder
            .endpoints(["127.0.0.1:1"])
            .register()
            .await
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        register(EtcdRegistration::builder("svc", "no-port")).await,
        r#"registration address "no-port" is not host:port"#
    );
    assert_eq!(
        register(EtcdRegistration::builder("svc", "h:1").weight(0)).await,
        "registration weight must be at least 1"
    );
    assert_eq!(
        register(EtcdRegistration::builder("svc", "h:1").ttl(Duration::from_millis(1500))).await,
        "registration ttl must be a whole number of seconds, at least one"
    );
}

#[test]
fn discovery_types_are_send() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync + 'static>() {}
    send::<EtcdDiscover<fn(&str) -> Backend>>();
    send::<tower_lb::etcd::Changes<fn(&str) -> Backend>>();
    send_sync::<EtcdError>();
    send_sync::<EtcdStats>();
    send_sync::<EtcdRegistration>();
    // What `tokio::spawn(endpoints.follow(discover))` needs.
    send::<tower_lb::discover::Follow<EtcdDiscover<fn(&str) -> Backend>, String, Backend>>();
}
