//! Cancellation: a request dropped at any stage (a balancer made ready but never called, a
//! balancer waiting for readiness, a response future waiting for its endpoint, a response in
//! flight) leaks no in-flight count, no endpoint clone, no waker and no task, under every strategy.
//!
//! Each scenario checks the counts directly (the endpoint clones alive, `Endpoints::in_flight`,
//! `Balance::stats`, the mock's own in-flight count) and then routes a probe of held requests
//! through the balancer: it must route them exactly as a balancer over a fresh set does after the
//! same number of picks, which a leaked count would change for the load-aware strategies
//! (power of two choices, bounded loads).
//!
//! Everything here is polled by hand, so a lost wake-up fails an assertion instead of hanging;
//! the few tests that await do so under a deadline.

#[path = "../support/mod.rs"]
mod support;

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{header::HeaderName, Request};
use support::{mocks, Mock, Readiness};
use tokio::sync::mpsc;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{discover::Change, Layer, Service, ServiceExt};
use tower_lb::{
    future::ResponseFuture,
    health::OutlierDetection,
    key,
    strategy::{
        ConsistentHash, Hash, Maglev, PowerOfTwoChoices, Random, RoundRobin, Strategy,
        WeightedRoundRobin,
    },
    Balance, BalanceLayer, BoxError, Endpoints,
};

type Req = Request<()>;
type Key = &'static str;
type Ep = Mock<Req>;
type Set = Endpoints<Key, Ep>;

const NAMES: [Key; 3] = ["a", "b", "c"];
const WEIGHTS: [u32; 3] = [2, 1, 1];
/// The request key every request of these tests carries (keyless strategies ignore it).
const HOT: &str = "hot";
/// Held requests in a probe: enough for the load-aware strategies to spread them.
const PROBES: usize = 12;
/// How long anything awaited may take before the test fails as a lost wake-up.
const DEADLINE: Duration = Duration::from_secs(5);

fn request(key: &str) -> Req {
    Request::builder().header("x-key", key).body(()).unwrap()
}

fn user_key() -> key::Header {
    key::header(HeaderName::from_static("x-key"))
}

/// A balancer under test, over mock endpoints that take `Request<()>`.
trait Subject:
    Service<Req, Response = Key, Error = BoxError, Future = ResponseFuture<Ep, Req>>
    + Clone
    + Send
    + 'static
{
    /// `Balance::stats`'s in-flight count of every endpoint, in set order.
    fn stats_in_flight(&self) -> Vec<usize>;
}

impl<St> Subject for Balance<St, Key, Ep>
where
    St: Strategy<Key>,
    Self: Service<Req, Response = Key, Error = BoxError, Future = ResponseFuture<Ep, Req>>
        + Clone
        + Send
        + 'static,
{
    fn stats_in_flight(&self) -> Vec<usize> {
        self.stats().iter().map(|s| s.in_flight).collect()
    }
}

/// One strategy configuration.
struct Case<B> {
    name: &'static str,
    /// Picks by request key in `call` rather than in `poll_ready`.
    keyed: bool,
    /// Counts requests in flight (power of two choices, bounded loads), so a leak would show in
    /// `Endpoints::in_flight`.
    counts_load: bool,
    /// Learns from how long requests take (peak EWMA): a request sent and then cancelled counts
    /// as a round trip of the time it waited, so it rightly changes later routing.
    measures_latency: bool,
    build: fn(&Set) -> B,
}

/// Runs `$body` with `$case` bound to each strategy configuration in turn.
macro_rules! for_each_case {
    ($case:ident => $body:expr) => {{
        {
            let $case = &Case {
                name: "round robin",
                keyed: false,
                counts_load: false,
                measures_latency: false,
                build: |set| BalanceLayer::new(RoundRobin::new()).layer(set.clone()),
            };
            $body;
        }
        {
            let $case = &Case {
                name: "round robin with outlier detection",
                keyed: false,
                counts_load: false,
                measures_latency: false,
                build: |set| {
                    BalanceLayer::new(RoundRobin::new())
                        .outlier_detection(OutlierDetection::new())
                        .layer(set.clone())
                },
            };
            $body;
        }
        {
            let $case = &Case {
                name: "weighted round robin",
                keyed: false,
                counts_load: false,
                measures_latency: false,
                build: |set| BalanceLayer::new(WeightedRoundRobin::new()).layer(set.clone()),
            };
            $body;
        }
        {
            let $case = &Case {
                name: "random",
                keyed: false,
                counts_load: false,
                measures_latency: false,
                build: |set| BalanceLayer::new(Random::seeded(7)).layer(set.clone()),
            };
            $body;
        }
        {
            let $case = &Case {
                name: "power of two choices, in flight",
                keyed: false,
                counts_load: true,
                measures_latency: false,
                build: |set| BalanceLayer::new(PowerOfTwoChoices::seeded(7)).layer(set.clone()),
            };
            $body;
        }
        {
            let $case = &Case {
                name: "power of two choices, peak EWMA",
                keyed: false,
                counts_load: true,
                measures_latency: true,
                build: |set| {
                    let strategy = PowerOfTwoChoices::seeded(7)
                        .peak_ewma(Duration::from_millis(30), Duration::from_secs(10))
                        .unwrap();
                    BalanceLayer::new(strategy).layer(set.clone())
                },
            };
            $body;
        }
        {
            let $case = &Case {
                name: "hash",
                keyed: true,
                counts_load: false,
                measures_latency: false,
                build: |set| BalanceLayer::new(Hash::new(user_key())).layer(set.clone()),
            };
            $body;
        }
        {
            let $case = &Case {
                name: "consistent hash",
                keyed: true,
                counts_load: false,
                measures_latency: false,
                build: |set| BalanceLayer::new(ConsistentHash::new(user_key())).layer(set.clone()),
            };
            $body;
        }
        {
            let $case = &Case {
                name: "consistent hash, bounded load",
                keyed: true,
                counts_load: true,
                measures_latency: false,
                build: |set| {
                    let strategy = ConsistentHash::new(user_key()).bounded_load(1.25).unwrap();
                    BalanceLayer::new(strategy).layer(set.clone())
                },
            };
            $body;
        }
        {
            let $case = &Case {
                name: "consistent hash, bounded load, outlier detection",
                keyed: true,
                counts_load: true,
                measures_latency: false,
                build: |set| {
                    let strategy = ConsistentHash::new(user_key()).bounded_load(1.25).unwrap();
                    BalanceLayer::new(strategy)
                        .outlier_detection(OutlierDetection::new())
                        .layer(set.clone())
                },
            };
            $body;
        }
        {
            let $case = &Case {
                name: "maglev",
                keyed: true,
                counts_load: false,
                measures_latency: false,
                build: |set| {
                    let strategy = Maglev::new(user_key()).table_size(251).unwrap();
                    BalanceLayer::new(strategy).layer(set.clone())
                },
            };
            $body;
        }
    }};
}

/// Three mock endpoints with weights 2, 1, 1, and how many handles to each exist when nothing
/// but this fixture and the set holds them.
struct Fixture {
    mocks: [Ep; 3],
    set: Set,
    baseline: Vec<usize>,
}

impl Fixture {
    fn new() -> Self {
        let mocks: [Ep; 3] = mocks(NAMES);
        let set = Endpoints::try_from_weighted(
            mocks
                .iter()
                .zip(WEIGHTS)
                .map(|(m, w)| (m.name(), m.clone(), w)),
        )
        .unwrap();
        let baseline = mocks.iter().map(Mock::handles).collect();
        Self {
            mocks,
            set,
            baseline,
        }
    }

    fn handles(&self) -> Vec<usize> {
        self.mocks.iter().map(Mock::handles).collect()
    }

    /// Endpoint clones alive beyond the baseline, per endpoint.
    fn extra_handles(&self) -> Vec<usize> {
        self.handles()
            .iter()
            .zip(&self.baseline)
            .map(|(now, base)| now - base)
            .collect()
    }

    fn calls(&self) -> Vec<usize> {
        self.mocks.iter().map(Mock::calls).collect()
    }

    /// Requests in flight per endpoint, as the set counts them.
    fn set_in_flight(&self) -> Vec<usize> {
        NAMES
            .iter()
            .map(|name| self.set.in_flight(name).unwrap())
            .collect()
    }

    /// Responses in flight per endpoint, as the endpoints count them.
    fn mock_in_flight(&self) -> Vec<usize> {
        self.mocks.iter().map(Mock::in_flight).collect()
    }

    fn set_readiness(&self, readiness: Readiness) {
        for m in &self.mocks {
            m.set_readiness(readiness);
        }
    }

    fn hold(&self) {
        for m in &self.mocks {
            m.hold(true);
        }
    }

    fn release(&self) {
        for m in &self.mocks {
            m.release();
        }
    }

    /// Nothing is left of the cancelled requests: no endpoint clone, no count anywhere.
    #[track_caller]
    fn assert_released(&self, case: &str, stage: &str, svc: &impl Subject) {
        assert_eq!(
            self.handles(),
            self.baseline,
            "{case}: {stage}: endpoint clones are still held"
        );
        assert_eq!(
            self.set_in_flight(),
            [0; 3],
            "{case}: {stage}: Endpoints::in_flight"
        );
        assert_eq!(
            svc.stats_in_flight(),
            [0; 3],
            "{case}: {stage}: Balance::stats in_flight"
        );
        assert_eq!(
            self.mock_in_flight(),
            [0; 3],
            "{case}: {stage}: responses in flight at the endpoints"
        );
    }
}

/// Polls `f` once in the context of `task`.
fn poll_in<F: Future + ?Sized>(task: &mut task::Spawn<()>, f: Pin<&mut F>) -> Poll<F::Output> {
    task.enter(|cx, _| f.poll(cx))
}

fn poll_ready(task: &mut task::Spawn<()>, svc: &mut impl Subject) -> Poll<Result<(), BoxError>> {
    task.enter(|cx: &mut Context<'_>, _| svc.poll_ready(cx))
}

/// Sends [`PROBES`] requests through clones of `svc` while every endpoint holds its responses,
/// and returns where each went; then lets them all complete.
fn probe(case: &str, svc: &impl Subject, fixture: &Fixture) -> Vec<Key> {
    let mut task = task::spawn(());
    fixture.hold();
    let mut held = Vec::new();
    let mut routed = Vec::new();
    for _ in 0..PROBES {
        let before = fixture.calls();
        let mut response = Box::pin(svc.clone().oneshot(request(HOT)));
        assert_pending!(poll_in(&mut task, response.as_mut()), "{case}: probe");
        let after = fixture.calls();
        let called: Vec<usize> = (0..NAMES.len())
            .filter(|&i| after[i] != before[i])
            .collect();
        assert_eq!(called.len(), 1, "{case}: one endpoint called per request");
        routed.push(NAMES[called[0]]);
        held.push(response);
    }
    fixture.release();
    for (response, name) in held.iter_mut().zip(&routed) {
        let answer = assert_ready!(poll_in(&mut task, response.as_mut()), "{case}: probe");
        assert_eq!(answer.unwrap(), *name, "{case}: probe");
    }
    routed
}

/// What the probe gives on a balancer over a fresh set that made `picks` picks (reservations
/// dropped at once) and saw no other traffic.
fn reference<B: Subject>(case: &Case<B>, picks: usize) -> Vec<Key> {
    let fixture = Fixture::new();
    let svc = (case.build)(&fixture.set);
    let mut task = task::spawn(());
    for _ in 0..picks {
        let mut clone = svc.clone();
        assert_ready_ok!(poll_ready(&mut task, &mut clone));
    }
    probe(case.name, &svc, &fixture)
}

/// After cancellations of requests that were sent: as [`assert_routes_as_fresh`], except that a
/// strategy that measures latency has learnt from them, so only the release is checked.
#[track_caller]
fn assert_routes_as_fresh_or_learnt<B: Subject>(
    case: &Case<B>,
    svc: &B,
    fixture: &Fixture,
    picks: usize,
) {
    if case.measures_latency {
        probe(case.name, svc, fixture);
        fixture.assert_released(case.name, "after the probe", svc);
    } else {
        assert_routes_as_fresh(case, svc, fixture, picks);
    }
}

/// After the cancellations, `svc` routes exactly as a balancer that never saw them, and
/// completing the probe leaves nothing in flight.
#[track_caller]
fn assert_routes_as_fresh<B: Subject>(case: &Case<B>, svc: &B, fixture: &Fixture, picks: usize) {
    let routed = probe(case.name, svc, fixture);
    assert_eq!(
        routed,
        reference(case, picks),
        "{}: the cancelled requests changed later routing",
        case.name
    );
    fixture.assert_released(case.name, "after the probe", svc);
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[track_caller]
fn assert_no_tasks() {
    assert_eq!(alive_tasks(), 0, "the balancer spawned a task");
}

/// Awaits `f`, failing the test if it takes longer than [`DEADLINE`].
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {DEADLINE:?} (a lost wake-up?)"))
}

// ---- A balancer dropped with a reservation ----------------------------------------------------

fn ready_balancer_dropped_before_call<B: Subject>(case: &Case<B>) {
    let name = case.name;
    let fixture = Fixture::new();
    let template = (case.build)(&fixture.set);
    let mut task = task::spawn(());
    let mut picks = 0;

    // A clone made ready, twice (the second poll keeps the first reservation), then dropped.
    let mut clone = template.clone();
    assert_ready_ok!(poll_ready(&mut task, &mut clone));
    assert_ready_ok!(poll_ready(&mut task, &mut clone));
    if case.keyed {
        // Keyed strategies reserve nothing before they see the request.
        assert_eq!(fixture.extra_handles(), [0; 3], "{name}");
    } else {
        picks += 1;
        assert_eq!(
            fixture.extra_handles().iter().sum::<usize>(),
            1,
            "{name}: one endpoint reserved"
        );
        if case.counts_load {
            assert_eq!(
                fixture.set_in_flight().iter().sum::<usize>(),
                1,
                "{name}: the reservation counts as in flight"
            );
        }
    }
    drop(clone);
    fixture.assert_released(name, "a ready clone dropped before call", &template);

    // Another balancer over the same set, the only handle to its strategy, made ready and
    // dropped: the counts live in the set, so a leak would show there too.
    let mut other = (case.build)(&fixture.set);
    assert_ready_ok!(poll_ready(&mut task, &mut other));
    drop(other);
    fixture.assert_released(name, "a ready balancer dropped before call", &template);

    assert_eq!(fixture.calls(), [0; 3], "{name}: nothing was called");
    assert!(!task.is_woken(), "{name}");
    assert_routes_as_fresh(case, &template, &fixture, picks);
}

/// A balancer (or a clone of one) dropped after `poll_ready` returned `Ready` but before `call`
/// releases the endpoint it reserved and its in-flight count, under every strategy.
#[tokio::test]
async fn ready_balancer_dropped_before_call_releases_its_reservation() {
    for_each_case!(case => ready_balancer_dropped_before_call(case));
    assert_no_tasks();
}

// ---- A balancer dropped while waiting for readiness -------------------------------------------

fn pending_balancer_dropped<B: Subject>(case: &Case<B>) {
    let name = case.name;
    let fixture = Fixture::new();
    let template = (case.build)(&fixture.set);
    fixture.set_readiness(Readiness::Pending);
    let mut task = task::spawn(());
    let mut picks = 0;

    let mut clone = template.clone();
    if case.keyed {
        // Keyed strategies are ready while the set has endpoints: the response future waits
        // for the key's endpoint (see the next tests). Nothing is held before the call.
        assert_ready_ok!(poll_ready(&mut task, &mut clone));
        assert_eq!(fixture.extra_handles(), [0; 3], "{name}");
    } else {
        assert_pending!(poll_ready(&mut task, &mut clone), "{name}");
        picks += 1;
        // Every candidate is kept, so that its wake-up reaches the task.
        assert_eq!(
            fixture.extra_handles(),
            [1; 3],
            "{name}: pending candidates"
        );
        assert!(task.waker_ref_count() > 1, "{name}: wakers registered");
        // Polling again while nothing changed keeps the same candidates.
        assert_pending!(poll_ready(&mut task, &mut clone), "{name}");
        assert_eq!(
            fixture.extra_handles(),
            [1; 3],
            "{name}: pending candidates"
        );
    }
    drop(clone);
    fixture.assert_released(name, "a pending clone dropped", &template);

    // The same through `oneshot`, the request future a caller drops.
    let mut response = Box::pin(template.clone().oneshot(request(HOT)));
    assert_pending!(poll_in(&mut task, response.as_mut()), "{name}");
    if !case.keyed {
        picks += 1;
    }
    drop(response);
    fixture.assert_released(name, "a pending oneshot dropped", &template);

    // The endpoints become ready and wake what waited on them: nothing of the dropped requests
    // is left to be woken or called, and no waker of the task stays registered.
    fixture.set_readiness(Readiness::Ready);
    assert_eq!(task.waker_ref_count(), 1, "{name}: wakers left behind");
    assert_eq!(
        fixture.calls(),
        [0; 3],
        "{name}: a dropped request was called"
    );
    assert_routes_as_fresh(case, &template, &fixture, picks);
}

/// A balancer dropped while its `poll_ready` is `Pending` (every candidate pending), directly or
/// inside a `oneshot` future, releases the candidates it kept for their wake-ups and counts
/// nothing in flight; the endpoints are never called for it.
#[tokio::test]
async fn pending_balancer_dropped_releases_its_candidates_and_wakers() {
    for_each_case!(case => pending_balancer_dropped(case));
    assert_no_tasks();
}

// ---- A keyed response future dropped while its endpoint is not ready --------------------------

fn routing_response_dropped<B: Subject>(case: &Case<B>) {
    if !case.keyed {
        // Keyless response futures are only made once an endpoint is ready.
        return;
    }
    let name = case.name;
    let fixture = Fixture::new();
    let template = (case.build)(&fixture.set);
    fixture.set_readiness(Readiness::Pending);
    let mut task = task::spawn(());

    for stage in ["the key's endpoint", "every candidate"] {
        let mut clone = template.clone();
        assert_ready_ok!(poll_ready(&mut task, &mut clone));
        let mut response = Box::pin(clone.call(request(HOT)));
        drop(clone);
        if stage == "the key's endpoint" {
            // Dropped before its first poll: only the key's own endpoint was tried.
            drop(response);
            fixture.assert_released(name, "a routing response dropped unpolled", &template);
            continue;
        }
        assert_pending!(poll_in(&mut task, response.as_mut()), "{name}");
        // The three endpoints are candidates in turn, each kept for its wake-up.
        assert_eq!(
            fixture.extra_handles(),
            [1; 3],
            "{name}: pending candidates"
        );
        if case.counts_load {
            // In flight nowhere yet: it is counted only where it goes, once a candidate is ready.
            assert_eq!(
                fixture.set_in_flight().iter().sum::<usize>(),
                0,
                "{name}: a bounded-load request holds no count while it waits"
            );
        }
        drop(response);
        fixture.assert_released(name, "a response waiting for readiness dropped", &template);
    }

    fixture.set_readiness(Readiness::Ready);
    assert_eq!(task.waker_ref_count(), 1, "{name}: wakers left behind");
    assert_eq!(
        fixture.calls(),
        [0; 3],
        "{name}: a dropped request was called"
    );
    assert_routes_as_fresh(case, &template, &fixture, 0);
}

/// A keyed strategy's response future dropped while it waits for its endpoint's readiness (every
/// candidate pending) releases its candidates, their wakers and, with bounded loads, the counts
/// that capacity checks use: bounded loads admit requests as before.
#[tokio::test]
async fn keyed_response_dropped_while_waiting_for_readiness_releases_everything() {
    for_each_case!(case => routing_response_dropped(case));
    assert_no_tasks();
}

// ---- A response future dropped while the response is held --------------------------------------

fn held_responses_dropped<B: Subject>(case: &Case<B>) {
    const HELD: usize = 10;
    let name = case.name;
    let fixture = Fixture::new();
    let template = (case.build)(&fixture.set);
    fixture.hold();
    let mut task = task::spawn(());
    let mut picks = 0;

    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut clone = template.clone();
        assert_ready_ok!(poll_ready(&mut task, &mut clone));
        if !case.keyed {
            picks += 1;
        }
        let mut response = Box::pin(clone.call(request(HOT)));
        drop(clone);
        assert_pending!(poll_in(&mut task, response.as_mut()), "{name}");
        held.push(response);
    }
    assert_eq!(fixture.calls().iter().sum::<usize>(), HELD, "{name}");
    assert_eq!(
        fixture.mock_in_flight().iter().sum::<usize>(),
        HELD,
        "{name}"
    );
    if case.counts_load {
        assert_eq!(
            fixture.set_in_flight().iter().sum::<usize>(),
            HELD,
            "{name}"
        );
        assert_eq!(
            template.stats_in_flight().iter().sum::<usize>(),
            HELD,
            "{name}"
        );
    }
    // Dropped out of order, half before and half after the endpoints answer.
    for response in held.drain(..HELD / 2).rev() {
        drop(response);
    }
    fixture.release();
    drop(held);
    fixture.assert_released(name, "held responses dropped", &template);
    assert_eq!(task.waker_ref_count(), 1, "{name}: wakers left behind");
    assert_routes_as_fresh_or_learnt(case, &template, &fixture, picks);
}

/// A response future dropped after its endpoint was called, while the response is held,
/// releases its in-flight count everywhere (the endpoint's own, `Endpoints::in_flight`,
/// `Balance::stats`, bounded-load capacity, power-of-two-choices load), so the balancer then picks
/// as if those requests had never been sent.
#[tokio::test]
async fn response_dropped_while_held_releases_its_in_flight_count() {
    for_each_case!(case => held_responses_dropped(case));
    assert_no_tasks();
}

// ---- A request cancelled by a timeout ---------------------------------------------------------

async fn timed_out<B: Subject>(case: &Case<B>) {
    const REQUESTS: usize = 6;
    let name = case.name;
    let fixture = Fixture::new();
    let balance = (case.build)(&fixture.set);
    fixture.hold();
    let client =
        tower::timeout::TimeoutLayer::new(Duration::from_millis(100)).layer(balance.clone());

    let requests = (0..REQUESTS).map(|_| client.clone().oneshot(request(HOT)));
    let answers = within(name, futures_util::future::join_all(requests)).await;
    for answer in answers {
        let error = answer.expect_err("the response is held past the timeout");
        assert!(
            error.is::<tower::timeout::error::Elapsed>(),
            "{name}: {error}"
        );
    }
    assert_eq!(fixture.calls().iter().sum::<usize>(), REQUESTS, "{name}");
    fixture.assert_released(name, "requests cancelled by a timeout", &balance);
    fixture.release();
    let picks = if case.keyed { 0 } else { REQUESTS };
    assert_routes_as_fresh_or_learnt(case, &balance, &fixture, picks);
}

/// Requests cancelled by `tower::timeout` while their responses are held release their counts,
/// as a caller's timeout in front of the balancer does in production.
#[tokio::test(start_paused = true)]
async fn requests_cancelled_by_a_timeout_release_their_counts() {
    for_each_case!(case => timed_out(case).await);
    assert_no_tasks();
}

// ---- The discovery driver -----------------------------------------------------------------------

type Discovered = Result<Change<Key, Ep>, &'static str>;

/// A discovery stream fed through a channel.
fn discovery() -> (
    mpsc::UnboundedSender<Discovered>,
    impl futures_core::Stream<Item = Discovered> + Send + 'static,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (tx, stream)
}

/// Yields to the driver task until `done` holds, under the deadline.
async fn until(what: &str, done: impl Fn() -> bool) {
    within(what, async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// The driver of `Endpoints::follow` keeps feeding the set while any balancer over it lives, and
/// ends (dropping its stream) as soon as the set handle and every balancer are gone; nothing then
/// holds the endpoints.
#[tokio::test]
async fn follow_driver_ends_once_the_set_and_every_balancer_are_dropped() {
    let [a, b, c]: [Ep; 3] = mocks(NAMES);
    let (tx, changes) = discovery();
    let set: Set = Endpoints::new();
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let driver = tokio::spawn(set.follow(changes));
    assert_eq!(alive_tasks(), 1);

    tx.send(Ok(Change::Insert("a", a.clone()))).unwrap();
    until("insert a", || set.len() == 1).await;

    // The handle goes; the balancer keeps the set alive, and the driver keeps feeding it.
    drop(set);
    tx.send(Ok(Change::Insert("b", b.clone()))).unwrap();
    until("insert b", || balance.endpoints().len() == 2).await;
    let answer = within("a request", balance.clone().oneshot(request(HOT))).await;
    assert_eq!(answer.unwrap(), "a");
    assert!(!driver.is_finished());

    drop(balance);
    assert_eq!((a.handles(), b.handles()), (1, 1), "the set is gone");
    // The set's drop wakes the driver: it ends without waiting for another item.
    within("the driver", driver).await.unwrap();
    assert!(tx.is_closed(), "the driver dropped its stream");
    assert!(
        tx.send(Ok(Change::Insert("c", c.clone()))).is_err(),
        "nothing left to feed"
    );
    assert_eq!(c.handles(), 1);
    assert_no_tasks();
}

/// A driver whose set is gone ends at once even when its stream stays quiet, as a DNS watcher
/// between two resolutions does.
#[tokio::test]
async fn follow_driver_of_a_dropped_set_ends_without_another_item() {
    let (tx, changes) = discovery();
    let set: Set = Endpoints::new();
    let driver = tokio::spawn(set.follow(changes));
    tokio::task::yield_now().await;
    assert!(!driver.is_finished(), "the driver waits for its stream");
    drop(set);
    within("the driver", driver).await.unwrap();
    assert!(tx.is_closed());
    assert_no_tasks();
}

/// A driver whose stream ends completes, and the set keeps its last membership.
#[tokio::test]
async fn follow_driver_ends_when_its_stream_ends() {
    let [a]: [Ep; 1] = mocks(["a"]);
    let (tx, changes) = discovery();
    let set: Set = Endpoints::new();
    let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
    let driver = tokio::spawn(set.follow(changes));
    tx.send(Ok(Change::Insert("a", a.clone()))).unwrap();
    drop(tx);
    within("the driver", driver).await.unwrap();
    assert_eq!(set.keys(), ["a"]);
    let answer = within("a request", balance.oneshot(request(HOT))).await;
    assert_eq!(answer.unwrap(), "a");
    assert_no_tasks();
}
