//! TCP connect probes against loopback listeners, and a backend that accepts connections and never
//! answers: its HTTP probes time out and take it out, and no connection or task of the checker
//! outlives the set.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{io::AsyncReadExt, net::TcpListener};
use tower::Layer;
use tower_lb::{
    health::{probe, HealthCheck},
    strategy::RoundRobin,
    BalanceLayer, Endpoints,
};

use crate::{
    http::{client, spawn_backend},
    support::{mocks, send, Mock},
    until, within,
};

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Accepts connections on `listener` and counts them: every one accepted, and those still open
/// (the peer has not closed it). Never writes a byte.
fn silent(listener: TcpListener) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let counts = (Arc::clone(&accepted), Arc::clone(&open));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            open.fetch_add(1, Ordering::SeqCst);
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                // Reads (and ignores) until the peer closes the connection.
                let mut buffer = [0; 1024];
                while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    counts
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

#[tokio::test]
async fn a_tcp_probe_passes_while_the_port_accepts_and_fails_while_connections_are_refused() {
    let (live, live_addr) = listener().await;
    let (gone, gone_addr) = listener().await;
    let (accepted, _) = silent(live);
    drop(gone);
    let [a, b]: [Mock; 2] = mocks(["live", "gone"]);
    let set = Endpoints::from_iter([(live_addr, a), (gone_addr, b)]);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let check = HealthCheck::builder(probe::Tcp::new())
        .interval(Duration::from_millis(20))
        .unhealthy_threshold(2)
        .build()
        .unwrap();
    let _checker = tokio::spawn(set.check_health(check));

    until("three probes of each", || {
        balance
            .stats()
            .iter()
            .all(|s| s.probe.as_ref().unwrap().probes >= 3)
    })
    .await;
    let stats = balance.stats();
    let (live, gone) = (
        stats[0].probe.clone().unwrap(),
        stats[1].probe.clone().unwrap(),
    );
    assert!(live.healthy && live.failed_probes == 0, "{live:?}");
    assert!(
        !gone.healthy && gone.failed_probes == gone.probes,
        "{gone:?}"
    );
    assert!(
        gone.last_error.as_deref().unwrap().contains("refused"),
        "{gone:?}"
    );
    assert!(accepted.load(Ordering::SeqCst) >= 3);
    assert_eq!(send(&balance, 4).await, ["live"; 4]);

    // The port listens again: its probes pass, and it takes its share.
    let (listening, _) = silent(TcpListener::bind(gone_addr).await.unwrap());
    until("the port back in", || {
        balance.stats()[1].probe.as_ref().unwrap().healthy
    })
    .await;
    assert!(listening.load(Ordering::SeqCst) >= 2, "healthy threshold 2");
    let mut answers = send(&balance, 4).await;
    answers.sort_unstable();
    assert_eq!(answers, ["gone", "gone", "live", "live"]);
}

#[tokio::test]
async fn a_tcp_probe_can_connect_to_an_address_derived_from_the_key() {
    let (health, health_addr) = listener().await;
    let (accepted, _) = silent(health);
    let set = Endpoints::from_iter([("backend-1", ())]);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let probe = probe::Tcp::with_address(move |name: &&str| {
        assert_eq!(*name, "backend-1");
        health_addr
    });
    let _checker = tokio::spawn(set.check_health(HealthCheck::new(probe)));
    until("the first probe", || {
        balance.stats()[0].probe.as_ref().unwrap().healthy
    })
    .await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_accepts_and_never_answers_is_taken_out_by_probe_timeouts_and_leaves_nothing_open(
) {
    let (quiet, quiet_addr) = listener().await;
    let (accepted, open) = silent(quiet);
    let [a, b]: [Mock; 2] = mocks(["answers", "silent"]);
    // The other endpoint's probes reach an axum backend, which answers them.
    let live_addr = spawn_backend("answers", false).await.addr;
    let tasks_before = alive_tasks();

    let set = Endpoints::from_iter([(live_addr, a.clone()), (quiet_addr, b.clone())]);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    // HTTP probes through a hyper-util client: the silent backend never sends a status line.
    let probe = probe::Http::with_client(client(), "/health").unwrap();
    let check = HealthCheck::builder(probe)
        .interval(Duration::from_millis(20))
        .timeout(Duration::from_millis(200))
        .unhealthy_threshold(2)
        .start_healthy()
        .build()
        .unwrap();
    let checker = tokio::spawn(set.check_health(check));

    until("the silent backend out", || {
        !balance.stats()[1].probe.as_ref().unwrap().healthy
    })
    .await;
    let silent_stats = balance.stats()[1].probe.clone().unwrap();
    assert_eq!(silent_stats.consecutive_failures, 2);
    assert_eq!(
        silent_stats.last_error.as_deref(),
        Some("the probe timed out after 200ms")
    );
    assert_eq!(send(&balance, 4).await, ["answers"; 4]);
    assert_eq!(b.calls(), 0);
    // A timed-out probe drops its request, and its connection closes: at most the probe in
    // progress holds one.
    until("a few more probes", || accepted.load(Ordering::SeqCst) >= 4).await;
    assert!(
        open.load(Ordering::SeqCst) <= 1,
        "{} open",
        open.load(Ordering::SeqCst)
    );

    // The owner goes: the checker ends, and with it every probe, connection and task.
    drop(set);
    drop(balance);
    within("the checker's end", checker).await.unwrap();
    until("the silent backend's connections closed", || {
        open.load(Ordering::SeqCst) == 0
    })
    .await;
    // The servers' own tasks: the axum backend's connection tasks end when the client's
    // connections close.
    until("only the servers' tasks left", || {
        alive_tasks() == tasks_before
    })
    .await;
    assert_eq!((a.handles(), b.handles()), (1, 1));
}
