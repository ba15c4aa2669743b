//! The checker's schedule and thresholds, on tokio's paused clock: every probe is a scripted
//! closure, and time moves only when every task waits, so probe times are exact.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::Request;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_lb::{
    error::InvalidConfig,
    health::{
        probe::{self, Probe},
        HealthCheck, OutlierDetection,
    },
    key,
    strategy::{ConsistentHash, RoundRobin},
    BalanceLayer, Endpoints, ProbeStats,
};

use crate::support::{mocks, send, tally, Mock, Readiness};

/// What a scripted probe does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Pass,
    Fail,
    /// Never finishes: only the timeout ends it.
    Hang,
    /// Panics in the probe's future.
    Panic,
    /// Panics in the closure, before it returns a future.
    PanicAtOnce,
    /// Passes after this many milliseconds.
    PassAfter(u64),
}

/// Scripted probes: each endpoint answers what the test set for it (passing by default), and
/// every probe's start is logged with its time.
#[derive(Clone)]
pub struct Script {
    answers: Arc<Mutex<HashMap<&'static str, Answer>>>,
    log: Arc<Mutex<Vec<(&'static str, Instant)>>>,
}

impl Script {
    pub fn new() -> Self {
        Self {
            answers: Arc::default(),
            log: Arc::default(),
        }
    }

    pub fn set(&self, endpoint: &'static str, answer: Answer) {
        self.answers.lock().unwrap().insert(endpoint, answer);
    }

    /// When `endpoint`'s probes started, since `start`, in milliseconds.
    pub fn starts(&self, endpoint: &str, start: Instant) -> Vec<u64> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, _)| *name == endpoint)
            .map(|(_, at)| (*at - start).as_millis() as u64)
            .collect()
    }

    /// The probe: its future holds a clone of the endpoint's service while it runs, as a real
    /// probe holds a connection.
    pub fn probe<S>(&self) -> impl Probe<&'static str, S> + Send + Sync + 'static
    where
        S: Clone + Send + 'static,
    {
        let script = self.clone();
        probe::from_fn(move |key: &&'static str, endpoint: &S| {
            let held = endpoint.clone();
            let key = *key;
            script.log.lock().unwrap().push((key, Instant::now()));
            let answer = script
                .answers
                .lock()
                .unwrap()
                .get(key)
                .copied()
                .unwrap_or(Answer::Pass);
            if answer == Answer::PanicAtOnce {
                panic!("{key}'s probe is broken");
            }
            async move {
                let _held = held;
                match answer {
                    Answer::Pass => Ok(()),
                    Answer::Fail => Err(format!("{key} is down")),
                    Answer::Hang => std::future::pending().await,
                    Answer::Panic => panic!("{key}'s probe is broken too"),
                    Answer::PanicAtOnce => unreachable!(),
                    Answer::PassAfter(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(())
                    }
                }
            }
        })
    }
}

type Set = Endpoints<&'static str, Mock>;

fn set_of(endpoints: &[Mock]) -> Set {
    Endpoints::from_iter(endpoints.iter().map(|m| (m.name(), m.clone())))
}

/// Sleeps on the paused clock until `ms` milliseconds after `start`.
async fn at(start: Instant, ms: u64) {
    tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The probe figures of `key` in a balancer's statistics.
fn probe_stats<B>(stats: B, key: &str) -> ProbeStats
where
    B: IntoIterator<Item = tower_lb::EndpointStats<&'static str>>,
{
    stats
        .into_iter()
        .find(|s| s.key == key)
        .and_then(|s| s.probe)
        .unwrap_or_else(|| panic!("{key} has no probe figures"))
}

#[tokio::test(start_paused = true)]
async fn probes_start_at_once_then_run_an_interval_after_the_end_of_the_previous_one() {
    let endpoints = mocks(["a", "b"]);
    let set = set_of(&endpoints);
    let script = Script::new();
    script.set("b", Answer::Hang);
    let check = HealthCheck::builder(script.probe())
        .interval(secs(3))
        .timeout(secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));

    at(start, 13_500).await;
    // a answers at once: every 3 s. b hangs: each probe ends by its 1 s timeout, and the next
    // starts 3 s after that.
    assert_eq!(script.starts("a", start), [0, 3_000, 6_000, 9_000, 12_000]);
    assert_eq!(script.starts("b", start), [0, 4_000, 8_000, 12_000]);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_is_out_is_probed_at_the_unhealthy_interval() {
    let endpoints = mocks(["a"]);
    let set = set_of(&endpoints);
    let script = Script::new();
    script.set("a", Answer::Fail);
    let check = HealthCheck::builder(script.probe())
        .interval(secs(10))
        .unhealthy_interval(secs(2))
        .unhealthy_threshold(2)
        .healthy_threshold(2)
        .start_healthy()
        .build()
        .unwrap();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));

    // Two failures (at 0 and 10 s) take it out; from then on, every 2 s.
    at(start, 15_000).await;
    script.set("a", Answer::Pass);
    // Passes at 16 and 18 s let it back; then every 10 s again.
    at(start, 40_000).await;
    assert_eq!(
        script.starts("a", start),
        [0, 10_000, 12_000, 14_000, 16_000, 18_000, 28_000, 38_000]
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_adds_from_zero_to_the_configured_jitter_to_every_interval() {
    let endpoints = mocks(["a"]);
    let set = set_of(&endpoints);
    let script = Script::new();
    let check = HealthCheck::builder(script.probe())
        .interval(secs(1))
        .jitter(Duration::from_millis(250))
        .build()
        .unwrap();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));

    at(start, 200_000).await;
    let starts = script.starts("a", start);
    assert!(starts.len() > 150, "{} probes", starts.len());
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // The timer wheel counts whole milliseconds: a wait ends on the millisecond at or after it.
    for gap in &gaps {
        assert!((1_000..=1_251).contains(gap), "a gap of {gap} ms: {gaps:?}");
    }
    let mut distinct = gaps.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() > 50, "the jitter varies: {distinct:?}");
}

#[tokio::test(start_paused = true)]
async fn exactly_the_unhealthy_threshold_takes_an_endpoint_out_and_the_healthy_threshold_lets_it_back(
) {
    let endpoints = mocks(["a", "b", "c"]);
    let set = set_of(&endpoints);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let script = Script::new();
    script.set("b", Answer::Fail);
    let check = HealthCheck::builder(script.probe())
        .interval(secs(10))
        .unhealthy_threshold(3)
        .healthy_threshold(2)
        .start_healthy()
        .build()
        .unwrap();
    let events = crate::tracing_events::capture();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));

    // Probes at 0, 10, 20 s fail; b takes its share until the third.
    for (t, failures) in [(5_000, 1), (15_000, 2)] {
        at(start, t).await;
        let b = probe_stats(balance.stats(), "b");
        assert_eq!((b.healthy, b.consecutive_failures), (true, failures));
        assert_eq!(b.last_error.as_deref(), Some("b is down"));
        let counts = tally(&send(&balance, 300).await);
        assert_eq!(counts, HashMap::from([("a", 100), ("b", 100), ("c", 100)]));
    }
    at(start, 25_000).await;
    let b = probe_stats(balance.stats(), "b");
    assert_eq!((b.healthy, b.consecutive_failures), (false, 3));
    let counts = tally(&send(&balance, 300).await);
    assert_eq!(counts, HashMap::from([("a", 150), ("c", 150)]));

    // Passes at 30 and 40 s: b is back after the second.
    script.set("b", Answer::Pass);
    at(start, 35_000).await;
    let b = probe_stats(balance.stats(), "b");
    assert_eq!((b.healthy, b.consecutive_passes), (false, 1));
    assert_eq!(b.last_passed, Some(true));
    assert_eq!(endpoints[1].calls(), 200);
    assert_eq!(
        tally(&send(&balance, 300).await),
        HashMap::from([("a", 150), ("c", 150)])
    );
    at(start, 45_000).await;
    let b = probe_stats(balance.stats(), "b");
    assert_eq!((b.healthy, b.consecutive_passes), (true, 2));
    assert_eq!((b.probes, b.failed_probes), (5, 3));
    assert!(b.last_probe_at.is_some());
    let counts = tally(&send(&balance, 300).await);
    assert_eq!(counts, HashMap::from([("a", 100), ("b", 100), ("c", 100)]));

    // a and c were never out.
    for key in ["a", "c"] {
        let s = probe_stats(balance.stats(), key);
        assert_eq!((s.healthy, s.probes, s.failed_probes), (true, 5, 0));
    }
    // One event when b went out, one when it came back.
    let events = events.take();
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.level == tracing::Level::WARN)
        .collect();
    let infos: Vec<_> = events
        .iter()
        .filter(|e| e.level == tracing::Level::INFO)
        .collect();
    assert_eq!(warnings.len(), 1, "{events:#?}");
    assert!(
        warnings[0].text.contains("taking the endpoint out"),
        "{events:#?}"
    );
    assert!(warnings[0].text.contains("endpoint=\"b\""), "{events:#?}");
    assert!(
        warnings[0].text.contains("consecutive_failures=3"),
        "{events:#?}"
    );
    assert_eq!(infos.len(), 1, "{events:#?}");
    assert!(
        infos[0].text.contains("takes requests again"),
        "{events:#?}"
    );
    assert!(
        infos[0].text.contains("consecutive_passes=2"),
        "{events:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_that_are_not_in_a_row_never_take_an_endpoint_out() {
    let endpoints = mocks(["a"]);
    let set = set_of(&endpoints);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let script = Script::new();
    let check = HealthCheck::builder(script.probe())
        .interval(secs(1))
        .unhealthy_threshold(3)
        .start_healthy()
        .build()
        .unwrap();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));
    // fail, fail, pass, fail, fail, pass, ...
    for second in 0..30u64 {
        let answer = if second % 3 == 2 {
            Answer::Pass
        } else {
            Answer::Fail
        };
        script.set("a", answer);
        at(start, second * 1_000 + 500).await;
        let a = probe_stats(balance.stats(), "a");
        assert!(a.healthy, "after probe {second}: {a:?}");
    }
    let a = probe_stats(balance.stats(), "a");
    assert_eq!((a.probes, a.failed_probes), (30, 20));
}

#[tokio::test(start_paused = true)]
async fn a_new_endpoint_waits_for_its_first_probe_and_one_pass_lets_it_in() {
    let endpoints = mocks(["a", "b", "c"]);
    let set = set_of(&endpoints[..1]);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let script = Script::new();
    // b's first probe takes 500 ms and passes; c's fails.
    script.set("b", Answer::PassAfter(500));
    script.set("c", Answer::Fail);
    let check = HealthCheck::builder(script.probe())
        .interval(secs(10))
        .healthy_threshold(3)
        .build()
        .unwrap();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));
    at(start, 100).await;

    // Inserted endpoints are out from the moment the set publishes them, before any probe ran.
    set.insert("b", endpoints[1].clone());
    set.insert("c", endpoints[2].clone());
    assert_eq!(send(&balance, 10).await, ["a"; 10]);
    at(start, 500).await;
    assert_eq!(script.starts("b", start), [100]);
    assert_eq!(send(&balance, 10).await, ["a"; 10]);
    // b's first probe passed at 600 ms: one pass lets it in.
    at(start, 700).await;
    assert!(probe_stats(balance.stats(), "b").healthy);
    assert_eq!(
        tally(&send(&balance, 10).await),
        HashMap::from([("a", 5), ("b", 5)])
    );
    // c's first probe failed: it needs the healthy threshold, 3 passes in a row, as any endpoint
    // that is out does.
    script.set("c", Answer::Pass);
    for t in [10_200, 20_200] {
        at(start, t).await;
        assert!(!probe_stats(balance.stats(), "c").healthy, "at {t} ms");
    }
    at(start, 30_200).await;
    assert!(probe_stats(balance.stats(), "c").healthy);
    assert_eq!(script.starts("c", start), [100, 10_100, 20_100, 30_100]);
    assert_eq!(endpoints[2].calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn with_start_healthy_a_new_endpoint_takes_requests_before_its_first_probe() {
    let endpoints = mocks(["a", "b"]);
    let set = set_of(&endpoints[..1]);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let script = Script::new();
    script.set("b", Answer::Hang);
    let check = HealthCheck::builder(script.probe())
        .timeout(secs(1))
        .start_healthy()
        .build()
        .unwrap();
    let _checker = tokio::spawn(set.check_health(check));
    tokio::task::yield_now().await;
    set.insert("b", endpoints[1].clone());
    tokio::task::yield_now().await;
    assert_eq!(
        tally(&send(&balance, 10).await),
        HashMap::from([("a", 5), ("b", 5)])
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_probe_is_cut_by_the_timeout_and_counts_as_a_failure() {
    let endpoints = mocks(["a"]);
    let set = set_of(&endpoints);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let script = Script::new();
    script.set("a", Answer::Hang);
    let check = HealthCheck::builder(script.probe())
        .interval(secs(5))
        .timeout(Duration::from_millis(1_500))
        .unhealthy_threshold(2)
        .start_healthy()
        .build()
        .unwrap();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));

    at(start, 1_400).await;
    let a = probe_stats(balance.stats(), "a");
    assert_eq!((a.probes, a.healthy), (0, true), "still waiting: {a:?}");
    at(start, 1_600).await;
    let a = probe_stats(balance.stats(), "a");
    assert_eq!((a.probes, a.failed_probes, a.healthy), (1, 1, true));
    assert_eq!(
        a.last_error.as_deref(),
        Some("the probe timed out after 1.5s")
    );
    // The second probe starts at 6.5 s and times out at 8 s.
    at(start, 8_100).await;
    let a = probe_stats(balance.stats(), "a");
    assert_eq!((a.probes, a.healthy), (2, false));
    assert_eq!(script.starts("a", start), [0, 6_500]);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_probe_counts_as_a_failure_and_the_checker_goes_on() {
    let endpoints = mocks(["a", "b", "c"]);
    let set = set_of(&endpoints);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let script = Script::new();
    script.set("a", Answer::Panic);
    script.set("b", Answer::PanicAtOnce);
    let check = HealthCheck::builder(script.probe())
        .interval(secs(1))
        .unhealthy_threshold(2)
        .start_healthy()
        .build()
        .unwrap();
    let start = Instant::now();
    let checker = tokio::spawn(set.check_health(check));

    at(start, 2_500).await;
    assert!(!checker.is_finished());
    for key in ["a", "b"] {
        let s = probe_stats(balance.stats(), key);
        assert_eq!(
            (s.probes, s.failed_probes, s.healthy),
            (3, 3, false),
            "{key}"
        );
        let error = s.last_error.unwrap();
        assert!(error.starts_with("the probe panicked: "), "{error}");
        assert!(error.contains("probe is broken"), "{error}");
    }
    assert_eq!(send(&balance, 4).await, ["c"; 4]);
    // The panicking probes are probed again and come back when they pass.
    script.set("a", Answer::Pass);
    script.set("b", Answer::Pass);
    at(start, 4_500).await;
    assert_eq!(
        tally(&send(&balance, 6).await),
        HashMap::from([("a", 2), ("b", 2), ("c", 2)])
    );
    assert_eq!(probe_stats(balance.stats(), "c").probes, 5);
}

#[test]
fn zero_intervals_timeouts_and_thresholds_are_typed_errors() {
    let check = || HealthCheck::builder(Script::new().probe::<Mock>());
    let errors: Vec<InvalidConfig> = vec![
        check().interval(Duration::ZERO).build().unwrap_err(),
        check()
            .unhealthy_interval(Duration::ZERO)
            .build()
            .unwrap_err(),
        check().timeout(Duration::ZERO).build().unwrap_err(),
        check().unhealthy_threshold(0).build().unwrap_err(),
        check().healthy_threshold(0).build().unwrap_err(),
    ];
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "invalid health check interval: must be more than zero, got 0s",
            "invalid unhealthy health check interval: must be more than zero, got 0s",
            "invalid health check timeout: must be more than zero, got 0s",
            "invalid unhealthy threshold: must be at least 1, got 0",
            "invalid healthy threshold: must be at least 1, got 0",
        ]
    );
    // Checked together, whatever the order they were set in.
    let late = check()
        .healthy_threshold(0)
        .interval(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(late.option(), "healthy threshold");
    assert!(check()
        .interval(Duration::from_nanos(1))
        .timeout(Duration::from_nanos(1))
        .unhealthy_threshold(1)
        .healthy_threshold(1)
        .build()
        .is_ok());

    let http = |path| probe::Http::<()>::new(path);
    assert_eq!(
        http("health").unwrap_err().to_string(),
        "invalid health check path: must be a path starting with /, got health"
    );
    assert!(http("/health?full=1").is_ok());
    #[allow(clippy::reversed_empty_ranges)]
    let statuses = http("/").unwrap().expected_statuses([300..=200]);
    assert_eq!(statuses.unwrap_err().option(), "expected statuses");
    assert!(http("/").unwrap().expected_statuses([]).is_err());
    assert!(http("/").unwrap().expected_statuses([200..=600]).is_err());
    assert_eq!(
        http("/").unwrap().host("a\nb").unwrap_err().option(),
        "health check host"
    );
}

#[tokio::test(start_paused = true)]
async fn keys_of_an_endpoint_that_is_out_move_to_their_next_candidates_and_come_back() {
    type Req = Request<()>;
    let servers: [Mock<Req>; 4] = mocks(["a", "b", "c", "d"]);
    let set = Endpoints::from_iter(servers.iter().map(|m| (m.name(), m.clone())));
    let balance = BalanceLayer::new(ConsistentHash::new(key::header(
        http::HeaderName::from_static("x-key"),
    )))
    .layer(set.clone());
    let request = |k: &str| Request::builder().header("x-key", k).body(()).unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let owners: Vec<&str> = keys
        .iter()
        .map(|k| balance.endpoint_for_key(k).unwrap())
        .collect();
    let without_c = tower_lb::Balance::new(
        ConsistentHash::new(key::header(http::HeaderName::from_static("x-key"))),
        Endpoints::from_iter(["a", "b", "d"].map(|name| (name, ()))),
    );
    let script = Script::new();
    let check = HealthCheck::builder(script.probe())
        .interval(secs(1))
        .unhealthy_threshold(1)
        .healthy_threshold(1)
        .build()
        .unwrap();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));
    at(start, 500).await;

    script.set("c", Answer::Fail);
    at(start, 1_500).await;
    let mut moved = 0;
    for (key, owner) in keys.iter().zip(&owners) {
        let got = balance.clone().oneshot(request(key)).await.unwrap();
        if *owner == "c" {
            assert_eq!(Some(got), without_c.endpoint_for_key(key), "key {key}");
            moved += 1;
        } else {
            assert_eq!(got, *owner, "key {key} moved");
        }
    }
    assert!(moved > 30, "{moved} keys were c's");

    script.set("c", Answer::Pass);
    at(start, 2_500).await;
    for (key, owner) in keys.iter().zip(&owners) {
        let got = balance.clone().oneshot(request(key)).await.unwrap();
        assert_eq!(got, *owner, "key {key} is back");
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_on_an_endpoint_routes_again_when_probes_take_it_out() {
    type Req = Request<()>;
    let servers: [Mock<Req>; 3] = mocks(["a", "b", "c"]);
    let set = Endpoints::from_iter(servers.iter().map(|m| (m.name(), m.clone())));
    let header = || key::header(http::HeaderName::from_static("x-key"));
    // One try: a request whose endpoint is pending waits for it rather than walking on.
    let balance = BalanceLayer::new(ConsistentHash::new(header()))
        .max_tries(1)
        .layer(set.clone());
    let key = (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| balance.endpoint_for_key(k) == Some("b"))
        .unwrap();
    let script = Script::new();
    let check = HealthCheck::builder(script.probe())
        .interval(secs(10))
        .unhealthy_threshold(1)
        .start_healthy()
        .build()
        .unwrap();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));

    servers[1].set_readiness(Readiness::Pending);
    let request = Request::builder().header("x-key", &key).body(()).unwrap();
    let waiting = tokio::spawn(balance.clone().oneshot(request));
    at(start, 5_000).await;
    assert!(!waiting.is_finished(), "it waits for b");
    // The probe at 10 s takes b out; the request routes again and goes to b's successor.
    script.set("b", Answer::Fail);
    let answer = crate::within("the waiting request", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(answer, "b");
    assert_eq!(Instant::now() - start, secs(10));
    assert_eq!(servers[1].calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_is_out_while_any_checker_finds_it_down_and_a_dropped_checker_lets_it_back() {
    let endpoints = mocks(["a", "b"]);
    let set = set_of(&endpoints);
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let passing = Script::new();
    let failing = Script::new();
    failing.set("b", Answer::Fail);
    let check = |script: &Script| {
        HealthCheck::builder(script.probe())
            .interval(secs(1))
            .unhealthy_threshold(1)
            .start_healthy()
            .build()
            .unwrap()
    };
    let start = Instant::now();
    let _first = tokio::spawn(set.check_health(check(&passing)));
    let second = tokio::spawn(set.check_health(check(&failing)));
    at(start, 2_500).await;
    assert_eq!(send(&balance, 4).await, ["a"; 4]);
    assert!(!probe_stats(balance.stats(), "b").healthy);

    // The checker that finds b down goes: b is back, although no probe changed its mind.
    second.abort();
    let _ = second.await;
    assert!(probe_stats(balance.stats(), "b").healthy);
    assert_eq!(
        tally(&send(&balance, 4).await),
        HashMap::from([("a", 2), ("b", 2)])
    );
}

#[tokio::test(start_paused = true)]
async fn passing_probes_do_not_end_an_outlier_ejection_and_failing_ones_keep_out_an_endpoint_back_from_one(
) {
    let endpoints = mocks(["a", "b"]);
    let set = set_of(&endpoints);
    let detection = OutlierDetection::builder()
        .consecutive_failures(1)
        .base_ejection_time(secs(30))
        .clock(|| Instant::now().into_std())
        .build()
        .unwrap();
    let balance = BalanceLayer::new(RoundRobin::new())
        .outlier_detection(detection)
        .layer(set.clone());
    let script = Script::new();
    let check = HealthCheck::builder(script.probe())
        .interval(secs(1))
        .unhealthy_threshold(1)
        .healthy_threshold(1)
        .start_healthy()
        .build()
        .unwrap();
    let start = Instant::now();
    let _checker = tokio::spawn(set.check_health(check));

    // b fails a request: ejected for 30 s, while its probes pass.
    endpoints[1].fail_calls(true);
    let _ = send_any(&balance, 2).await;
    endpoints[1].fail_calls(false);
    at(start, 20_000).await;
    let b = balance.stats()[1].clone();
    assert!(
        b.ejected_for.is_some() && b.probe.as_ref().unwrap().healthy,
        "{b:?}"
    );
    assert_eq!(send(&balance, 4).await, ["a"; 4]);

    // Before the ejection ends, its probes find it down: it stays out when the ejection ends.
    script.set("b", Answer::Fail);
    at(start, 31_000).await;
    let b = balance.stats()[1].clone();
    assert!(
        b.ejected_for.is_none() && !b.probe.as_ref().unwrap().healthy,
        "{b:?}"
    );
    assert_eq!(send(&balance, 4).await, ["a"; 4]);
    script.set("b", Answer::Pass);
    at(start, 32_500).await;
    assert_eq!(
        tally(&send(&balance, 4).await),
        HashMap::from([("a", 2), ("b", 2)])
    );
}

async fn send_any<S>(svc: &S, count: usize)
where
    S: tower::Service<(), Response = &'static str, Error = tower_lb::BoxError> + Clone,
{
    for _ in 0..count {
        let _ = svc.clone().oneshot(()).await;
    }
}
