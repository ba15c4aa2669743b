//! Property tests over random sequences of operations, for every strategy: membership changes
//! (insert, remove, re-weight, replace), readiness (pending, failing), failing calls and the
//! outlier ejection they cause, held responses, requests dropped at every stage, and time moving
//! on. A model of the endpoints predicts, before every request, which endpoints may take it and,
//! for the keyed strategies, which one must.
//!
//! Every request is driven by hand on the test thread with a waker that records its wake-ups:
//! no runtime, no sleeps. Ejection times run on a clock the test advances.

#[path = "../support/mod.rs"]
mod support;

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, HashSet},
    error::Error as _,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    task::{Context, Poll, Wake, Waker},
    time::{Duration, Instant},
};

use http::{header::HeaderName, Request};
use proptest::{prelude::*, test_runner::FileFailurePersistence};
use support::{Mock, Readiness};
use tower::{Layer, Service};
use tower_lb::{
    error::{AllEjected, NoEndpoints, Unavailable},
    future::ResponseFuture,
    health::OutlierDetection,
    key,
    strategy::{
        ConsistentHash, Hash, Maglev, PowerOfTwoChoices, Random, RoundRobin,
        Strategy as LbStrategy, Subset, Tiers, WeightedRoundRobin, ZoneAware,
    },
    Balance, BalanceLayer, BoxError, Endpoints,
};

type Req = Request<()>;
type Lb<St> = Balance<St, &'static str, Mock<Req>>;
type Fut = ResponseFuture<Mock<Req>, Req>;

/// The endpoints a sequence draws from: at most 6, so that the default `max_tries` (8) lets a
/// request try every one of them and "an eligible endpoint exists" means "the request gets one".
const NAMES: [&str; 6] = [
    "10.0.0.1:8080",
    "10.0.0.2:8080",
    "10.0.0.3:8080",
    "10.0.0.4:8080",
    "10.0.0.5:8080",
    "10.0.0.6:8080",
];
const SLOTS: usize = NAMES.len();

fn user_key() -> key::Header {
    key::header(HeaderName::from_static("x-key"))
}

/// Consistent hashing with 40 points per unit of weight rather than 160: the ring is rebuilt at
/// every membership change of a sequence, and its walk past unavailable endpoints does not depend
/// on the number of points.
fn ring() -> ConsistentHash<key::Header> {
    ConsistentHash::new(user_key())
        .points_per_weight(40)
        .unwrap()
}

fn request(key: &str) -> Req {
    Request::builder().header("x-key", key).body(()).unwrap()
}

/// Proptest settings: `cases` cases, failing cases saved beside this file
/// (tests/properties/main.proptest-regressions), not in a folder shared with the other test
/// targets, which are all named main.rs too.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---- a clock the test moves, and a waker that records wake-ups ------------------------------

thread_local! {
    static ELAPSED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Outlier detection's clock: a fixed origin plus what the test advanced on this thread (proptest
/// runs a property's cases on the thread of its test).
fn test_clock() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now) + ELAPSED.with(Cell::get)
}

fn advance(by: Duration) {
    ELAPSED.with(|e| e.set(e.get() + by));
}

/// A waker that remembers whether it was woken since it was last reset.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Flag {
    fn woken(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs `f` with a context whose waker is `flag`, reset first.
fn with_flag<T>(flag: &Arc<Flag>, f: impl FnOnce(&mut Context<'_>) -> T) -> T {
    flag.0.store(false, Ordering::SeqCst);
    let waker = Waker::from(Arc::clone(flag));
    f(&mut Context::from_waker(&waker))
}

/// Sends one request through a fresh clone of `lb`, expecting an answer at once.
fn send_now<St, K>(lb: &Balance<St, K, Mock<Req>>, key: &str) -> Result<&'static str, BoxError>
where
    St: LbStrategy<K>,
    Balance<St, K, Mock<Req>>: Service<Req, Response = &'static str, Error = BoxError> + Clone,
    <Balance<St, K, Mock<Req>> as Service<Req>>::Future: Unpin,
{
    let flag = Arc::new(Flag::default());
    let mut svc = lb.clone();
    match with_flag(&flag, |cx| svc.poll_ready(cx)) {
        Poll::Ready(Ok(())) => {}
        other => panic!("poll_ready should be ready at once, got {other:?}"),
    }
    let mut fut = svc.call(request(key));
    match with_flag(&flag, |cx| Pin::new(&mut fut).poll(cx)) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the response should be ready at once"),
    }
}

// ---- operations -------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    /// Poll until it answers or waits; a waiting request is kept.
    Complete,
    /// Drop the balancer clone after `poll_ready`, without calling it.
    DropBeforeCall,
    /// Drop the response future right after `call`, without polling it.
    DropAfterCall,
}

#[derive(Clone, Debug)]
enum Op {
    /// Inserts the slot's endpoint (a new service, replacing the old one if present).
    Insert(usize, u32),
    Remove(usize),
    Reweight(usize, u32),
    Readiness(usize, Readiness),
    FailCalls(usize, bool),
    /// Holds responses (true) or releases the held ones (false).
    Hold(usize, bool),
    Send(u8, How),
    /// Polls every kept request once.
    PollKept,
    /// Drops one kept request, whatever its stage.
    DropKept(usize),
    /// Moves the ejection clock on by this many seconds.
    Advance(u64),
}

fn readiness() -> impl Strategy<Value = Readiness> {
    prop_oneof![
        Just(Readiness::Ready),
        Just(Readiness::Pending),
        Just(Readiness::Fail),
    ]
}

fn how() -> impl Strategy<Value = How> {
    prop_oneof![
        6 => Just(How::Complete),
        1 => Just(How::DropBeforeCall),
        1 => Just(How::DropAfterCall),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        2 => (slot.clone(), 1u32..=4).prop_map(|(s, w)| Op::Insert(s, w)),
        2 => slot.clone().prop_map(Op::Remove),
        1 => (slot.clone(), 1u32..=4).prop_map(|(s, w)| Op::Reweight(s, w)),
        6 => (slot.clone(), readiness()).prop_map(|(s, r)| Op::Readiness(s, r)),
        3 => (slot.clone(), any::<bool>()).prop_map(|(s, f)| Op::FailCalls(s, f)),
        2 => (slot, any::<bool>()).prop_map(|(s, h)| Op::Hold(s, h)),
        16 => (0u8..24, how()).prop_map(|(k, h)| Op::Send(k, h)),
        2 => Just(Op::PollKept),
        1 => (0usize..8).prop_map(Op::DropKept),
        1 => (1u64..=50).prop_map(Op::Advance),
    ]
}

/// One sequence: the starting membership (present or not, weight), the outlier detection
/// settings, and the operations.
#[derive(Clone, Debug)]
struct Case {
    initial: Vec<(bool, u32)>,
    consecutive_failures: u32,
    max_ejected_share: f64,
    panic_mode: bool,
    ops: Vec<Op>,
}

fn case(max_ops: usize) -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((any::<bool>(), 1u32..=4), SLOTS),
        1u32..=3,
        prop_oneof![Just(0.5), Just(1.0)],
        any::<bool>(),
        prop::collection::vec(op(), 1..=max_ops),
    )
        .prop_map(
            |(initial, consecutive_failures, max_ejected_share, panic_mode, ops)| Case {
                initial,
                consecutive_failures,
                max_ejected_share,
                panic_mode,
                ops,
            },
        )
}

// ---- the model --------------------------------------------------------------------------------

/// What the keyed checks know about a strategy.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Keyless,
    /// crc32 of the key over weighted slots in key-byte order; fallbacks in that order.
    Hash,
    /// A ketama ring: a key whose endpoints are unavailable goes where it would go on the ring
    /// of the available endpoints alone.
    Ring,
    /// A ring with bounded loads at this factor.
    BoundedRing(f64),
    /// A Maglev table: fallbacks are deterministic per key but not predictable from outside.
    Maglev,
}

/// One endpoint service ever created, with what the test set it to.
struct Model {
    mock: Mock<Req>,
    readiness: Readiness,
    failing: bool,
    held: bool,
}

enum Stage<St: LbStrategy<&'static str>> {
    /// A keyless balancer clone whose `poll_ready` returned `Pending`, with its request.
    Ready(Box<(Lb<St>, Req)>),
    /// A response future that returned `Pending`.
    Future(Pin<Box<Fut>>),
}

struct Kept<St: LbStrategy<&'static str>> {
    stage: Stage<St>,
    flag: Arc<Flag>,
    /// The service it was sent to, once called.
    called: Option<usize>,
}

/// What the model predicts for a request sent now.
#[derive(Debug)]
struct Expect {
    /// Endpoints in the set.
    n: usize,
    /// The services a request may go to now: present, ready and not ejected (or, when every
    /// endpoint is ejected in panic mode, present and ready).
    eligible: Vec<usize>,
    /// Whether some endpoint it may wait for is pending.
    waiting: bool,
    /// Every endpoint of the set is ejected.
    all_ejected: bool,
    /// In-flight counts per endpoint name before the request, and their sum.
    loads: HashMap<&'static str, usize>,
    total: usize,
}

struct World<St: LbStrategy<&'static str>> {
    kind: Kind,
    panic_mode: bool,
    set: Endpoints<&'static str, Mock<Req>>,
    lb: Lb<St>,
    models: Vec<Model>,
    /// The service of each slot while it is in the set.
    current: [Option<usize>; SLOTS],
    kept: Vec<Kept<St>>,
    /// Maglev: where a key went when its own endpoint was unavailable, per availability state.
    fallbacks: RefCell<HashMap<(u8, String), &'static str>>,
    /// Rings of the available endpoints alone, by their names and weights.
    rings: RefCell<HashMap<Vec<(&'static str, u32)>, UnitRing>>,
}

type UnitBalance<St> = Balance<St, &'static str, ()>;
type UnitRing = UnitBalance<ConsistentHash<key::Header>>;

fn slot_of(name: &str) -> usize {
    NAMES.iter().position(|n| *n == name).unwrap()
}

impl<St> World<St>
where
    St: LbStrategy<&'static str> + Clone,
    Lb<St>: Service<Req, Response = &'static str, Error = BoxError, Future = Fut> + Clone,
{
    fn new(strategy: St, kind: Kind, case: &Case) -> Self {
        let mut models = Vec::new();
        let mut current = [None; SLOTS];
        let mut initial = Vec::new();
        for (slot, &(present, weight)) in case.initial.iter().enumerate() {
            if present {
                let mock = Mock::new(NAMES[slot]);
                initial.push((NAMES[slot], mock.clone(), weight));
                current[slot] = Some(models.len());
                models.push(Model {
                    mock,
                    readiness: Readiness::Ready,
                    failing: false,
                    held: false,
                });
            }
        }
        let set = Endpoints::try_from_weighted(initial).unwrap();
        let mut detection = OutlierDetection::builder()
            .consecutive_failures(case.consecutive_failures)
            .base_ejection_time(Duration::from_secs(10))
            .max_ejection_time(Duration::from_secs(40))
            .max_ejected_share(case.max_ejected_share)
            .clock(test_clock);
        if !case.panic_mode {
            detection = detection.fail_when_all_ejected();
        }
        let lb = BalanceLayer::new(strategy)
            .outlier_detection(detection.build().unwrap())
            .layer(set.clone());
        Self {
            kind,
            panic_mode: case.panic_mode,
            set,
            lb,
            models,
            current,
            kept: Vec::new(),
            fallbacks: RefCell::default(),
            rings: RefCell::default(),
        }
    }

    fn name(&self, id: usize) -> &'static str {
        self.models[id].mock.name()
    }

    /// The services in the set, in set order.
    fn present(&self) -> Vec<usize> {
        self.set
            .keys()
            .iter()
            .map(|name| self.current[slot_of(name)].expect("the model lost an endpoint"))
            .collect()
    }

    fn expect(&self) -> Expect {
        let present = self.present();
        let stats = self.lb.stats();
        let ejected: HashSet<&'static str> = stats
            .iter()
            .filter(|s| s.ejected_for.is_some())
            .map(|s| s.key)
            .collect();
        let loads: HashMap<&'static str, usize> =
            stats.iter().map(|s| (s.key, s.in_flight)).collect();
        let mut considered: Vec<usize> = present
            .iter()
            .copied()
            .filter(|&id| !ejected.contains(self.name(id)))
            .collect();
        let all_ejected = !present.is_empty() && considered.is_empty();
        if all_ejected && self.panic_mode {
            considered = present.clone();
        }
        Expect {
            n: present.len(),
            eligible: considered
                .iter()
                .copied()
                .filter(|&id| self.models[id].readiness == Readiness::Ready)
                .collect(),
            waiting: considered
                .iter()
                .any(|&id| self.models[id].readiness == Readiness::Pending),
            all_ejected,
            total: loads.values().sum(),
            loads,
        }
    }

    fn calls(&self) -> Vec<usize> {
        self.models.iter().map(|m| m.mock.calls()).collect()
    }

    /// The service called since `before`, if any: never more than one.
    fn called_since(&self, before: &[usize]) -> Result<Option<usize>, TestCaseError> {
        let mut called = None;
        for (id, &was) in before.iter().enumerate() {
            let now = self.models[id].mock.calls();
            prop_assert!(
                now - was <= 1,
                "{} called {} times",
                self.name(id),
                now - was
            );
            if now > was {
                prop_assert!(called.is_none(), "one request called two endpoints");
                called = Some(id);
            }
        }
        Ok(called)
    }

    /// The endpoint a keyed request must reach, when the model can tell.
    fn placement(&self, exp: &Expect, key: &str, chosen: usize) -> Result<(), TestCaseError> {
        let chosen_name = self.name(chosen);
        let owner = self.lb.endpoint_for_key(key);
        let eligible: Vec<&'static str> = exp.eligible.iter().map(|&id| self.name(id)).collect();
        let owner_eligible = owner.is_some_and(|o| eligible.contains(&o));
        match self.kind {
            Kind::Keyless => return Ok(()),
            Kind::Hash => {
                // Weighted slots in key-byte order; fallbacks are the next endpoints in that order.
                let mut order: Vec<(&'static str, u32)> = self
                    .present()
                    .iter()
                    .map(|&id| {
                        let name = self.name(id);
                        (name, self.set.weight(name).unwrap())
                    })
                    .collect();
                order.sort();
                let total: u64 = order.iter().map(|&(_, w)| u64::from(w)).sum();
                let slot = u64::from(crc32fast::hash(key.as_bytes())) % total;
                let mut end = 0;
                let first = order
                    .iter()
                    .position(|&(_, w)| {
                        end += u64::from(w);
                        slot < end
                    })
                    .unwrap();
                prop_assert_eq!(owner, Some(order[first].0), "crc32 owner of {}", key);
                let expected = (0..order.len())
                    .map(|step| order[(first + step) % order.len()].0)
                    .find(|name| eligible.contains(name));
                prop_assert_eq!(Some(chosen_name), expected, "key {}", key);
            }
            Kind::Ring => {
                // Walking past unavailable endpoints is the ring of the available ones alone.
                let mut available: Vec<(&'static str, u32)> = eligible
                    .iter()
                    .map(|&name| (name, self.set.weight(name).unwrap()))
                    .collect();
                available.sort();
                let expected = self
                    .rings
                    .borrow_mut()
                    .entry(available)
                    .or_insert_with_key(|available| unit_balance(ring(), available))
                    .endpoint_for_key(key);
                prop_assert_eq!(Some(chosen_name), expected, "key {}", key);
            }
            Kind::BoundedRing(factor) => {
                // The in-flight counts seen are at most the set's total, so this capacity is at
                // most the balancer's: an owner below it has room.
                let owner_load = owner.map_or(0, |o| exp.loads[o]);
                if owner_eligible && owner_load < capacity(factor, exp.total, exp.n) {
                    prop_assert_eq!(Some(chosen_name), owner, "key {}", key);
                }
            }
            Kind::Maglev => {
                if owner_eligible {
                    prop_assert_eq!(Some(chosen_name), owner, "key {}", key);
                } else {
                    prop_assert_ne!(Some(chosen_name), owner, "key {}", key);
                    // The same key, membership and availability always fall back alike.
                    let mut state: Vec<String> = self
                        .present()
                        .iter()
                        .map(|&id| {
                            let name = self.name(id);
                            let w = self.set.weight(name).unwrap();
                            format!("{name}/{w}/{}", eligible.contains(&name))
                        })
                        .collect();
                    state.sort();
                    let key_index: u8 = key.trim_start_matches("user-").parse().unwrap();
                    let seen = *self
                        .fallbacks
                        .borrow_mut()
                        .entry((key_index, state.join(",")))
                        .or_insert(chosen_name);
                    prop_assert_eq!(chosen_name, seen, "key {} fell back elsewhere", key);
                }
            }
        }
        if owner_eligible && !matches!(self.kind, Kind::BoundedRing(_)) {
            prop_assert_eq!(Some(chosen_name), owner);
        }
        Ok(())
    }

    /// Checks a request sent just now, polled once: `called` is the service it reached.
    fn check_routed(
        &self,
        exp: &Expect,
        key: &str,
        called: Option<usize>,
        result: &Poll<Result<&'static str, BoxError>>,
    ) -> Result<(), TestCaseError> {
        match called {
            Some(id) => {
                prop_assert!(
                    exp.eligible.contains(&id),
                    "{} got a request but was not eligible: {:?}",
                    self.name(id),
                    exp
                );
                self.placement(exp, key, id)?;
                self.check_answer(id, result)?;
            }
            None => {
                prop_assert!(
                    exp.eligible.is_empty(),
                    "a request was not routed although {:?} were eligible",
                    exp.eligible
                );
                check_unrouted(exp, result, self.panic_mode)?;
            }
        }
        Ok(())
    }

    /// The answer of service `id`, just called: its name, its error, or pending if it holds.
    fn check_answer(
        &self,
        id: usize,
        result: &Poll<Result<&'static str, BoxError>>,
    ) -> Result<(), TestCaseError> {
        let model = &self.models[id];
        match result {
            Poll::Pending => prop_assert!(model.held, "{} does not hold", self.name(id)),
            Poll::Ready(Ok(name)) => {
                prop_assert!(!model.held && !model.failing);
                prop_assert_eq!(*name, self.name(id));
            }
            Poll::Ready(Err(e)) => {
                prop_assert!(!model.held && model.failing, "unexpected error {}", e);
                prop_assert_eq!(e.to_string(), format!("{} failed", self.name(id)));
            }
        }
        Ok(())
    }

    fn send(&mut self, key_index: u8, how: How) -> Result<(), TestCaseError> {
        let key = format!("user-{key_index}");
        let exp = self.expect();
        let before = self.calls();
        let flag = Arc::new(Flag::default());
        let mut svc = self.lb.clone();
        match with_flag(&flag, |cx| svc.poll_ready(cx)) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => prop_assert!(false, "a balancer's poll_ready failed: {}", e),
            Poll::Pending => {
                prop_assert!(
                    matches!(self.kind, Kind::Keyless),
                    "keyed poll_ready waited"
                );
                prop_assert!(
                    exp.n > 0 && exp.eligible.is_empty() && exp.waiting,
                    "poll_ready waited: {:?}",
                    exp
                );
                prop_assert_eq!(self.called_since(&before)?, None);
                if how == How::Complete {
                    self.kept.push(Kept {
                        stage: Stage::Ready(Box::new((svc, request(&key)))),
                        flag,
                        called: None,
                    });
                }
                return Ok(());
            }
        }
        if how == How::DropBeforeCall {
            drop(svc);
            prop_assert_eq!(self.called_since(&before)?, None);
            return Ok(());
        }
        let mut fut = Box::pin(svc.call(request(&key)));
        drop(svc);
        if how == How::DropAfterCall {
            if let Some(id) = self.called_since(&before)? {
                prop_assert!(exp.eligible.contains(&id), "{} not eligible", self.name(id));
                self.placement(&exp, &key, id)?;
            }
            return Ok(());
        }
        let result = with_flag(&flag, |cx| fut.as_mut().poll(cx));
        let called = self.called_since(&before)?;
        self.check_routed(&exp, &key, called, &result)?;
        if result.is_pending() {
            self.kept.push(Kept {
                stage: Stage::Future(fut),
                flag,
                called,
            });
        }
        Ok(())
    }

    /// Polls kept request `i` once; returns whether it finished.
    fn poll_kept(&mut self, i: usize) -> Result<bool, TestCaseError> {
        let exp = self.expect();
        let before = self.calls();
        let present = self.present();
        let kept = &mut self.kept[i];
        let flag = Arc::clone(&kept.flag);
        if let Stage::Ready(waiting) = &mut kept.stage {
            let svc = &mut waiting.0;
            match with_flag(&flag, |cx| svc.poll_ready(cx)) {
                Poll::Pending => {
                    // It waits for the candidates it kept, which are still pending.
                    let some_pending = self
                        .models
                        .iter()
                        .any(|m| m.readiness == Readiness::Pending);
                    prop_assert!(some_pending, "poll_ready waits with nothing pending");
                    return Ok(false);
                }
                Poll::Ready(Err(e)) => prop_assert!(false, "poll_ready failed: {}", e),
                Poll::Ready(Ok(())) => {
                    let Stage::Ready(waiting) =
                        std::mem::replace(&mut kept.stage, Stage::Future(Box::pin(dummy())))
                    else {
                        unreachable!()
                    };
                    let (mut svc, req) = *waiting;
                    kept.stage = Stage::Future(Box::pin(svc.call(req)));
                    // A keyless request picks now: only an eligible endpoint may take it, not
                    // one ejected while the request waited.
                    let called = self.called_since(&before)?;
                    if let Some(id) = called {
                        prop_assert!(
                            exp.eligible.contains(&id),
                            "a request that waited went to {}, not eligible: {:?}",
                            self.name(id),
                            exp
                        );
                    }
                    self.kept[i].called = called;
                }
            }
        }
        let before = self.calls();
        let Stage::Future(fut) = &mut self.kept[i].stage else {
            unreachable!()
        };
        let result = with_flag(&flag, |cx| fut.as_mut().poll(cx));
        let called = self.called_since(&before)?;
        if let Some(id) = called {
            let kept = &self.kept[i];
            prop_assert!(kept.called.is_none(), "a request called twice");
            // A waiting request routes over the set as it is when it is polled: a membership
            // change wakes it and it routes again.
            prop_assert!(
                present.contains(&id),
                "{} was not in the set when the request was routed",
                self.name(id)
            );
            self.kept[i].called = Some(id);
        }
        let kept = &self.kept[i];
        match (&result, kept.called) {
            (Poll::Pending, _) => Ok(false),
            (Poll::Ready(Ok(name)), Some(id)) => {
                prop_assert_eq!(*name, self.name(id));
                Ok(true)
            }
            (Poll::Ready(Err(e)), Some(id)) => {
                prop_assert_eq!(e.to_string(), format!("{} failed", self.name(id)));
                Ok(true)
            }
            (Poll::Ready(Ok(name)), None) => {
                prop_assert!(false, "{} answered without a call", name);
                Ok(true)
            }
            (Poll::Ready(Err(e)), None) => {
                prop_assert!(
                    e.is::<Unavailable>() || e.is::<NoEndpoints>(),
                    "untyped routing error: {}",
                    e
                );
                Ok(true)
            }
        }
    }

    fn poll_all_kept(&mut self) -> Result<(), TestCaseError> {
        let mut i = 0;
        while i < self.kept.len() {
            if self.poll_kept(i)? {
                self.kept.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Insert(slot, weight) => {
                let mock = Mock::new(NAMES[slot]);
                let was = self.current[slot].is_some();
                let is_new = self
                    .set
                    .insert_weighted(NAMES[slot], mock.clone(), weight)
                    .unwrap();
                prop_assert_eq!(is_new, !was);
                self.current[slot] = Some(self.models.len());
                self.models.push(Model {
                    mock,
                    readiness: Readiness::Ready,
                    failing: false,
                    held: false,
                });
            }
            Op::Remove(slot) => {
                prop_assert_eq!(self.set.remove(NAMES[slot]), self.current[slot].is_some());
                self.current[slot] = None;
            }
            Op::Reweight(slot, weight) => {
                let found = self.set.set_weight(NAMES[slot], weight).unwrap();
                prop_assert_eq!(found, self.current[slot].is_some());
            }
            Op::Readiness(slot, readiness) => {
                if let Some(id) = self.current[slot] {
                    self.models[id].mock.set_readiness(readiness);
                    self.models[id].readiness = readiness;
                }
            }
            Op::FailCalls(slot, fail) => {
                if let Some(id) = self.current[slot] {
                    self.models[id].mock.fail_calls(fail);
                    self.models[id].failing = fail;
                }
            }
            Op::Hold(slot, hold) => {
                if let Some(id) = self.current[slot] {
                    let model = &mut self.models[id];
                    if hold {
                        model.mock.hold(true);
                    } else {
                        model.mock.release();
                    }
                    model.held = hold;
                }
            }
            Op::Send(key, how) => self.send(key, how)?,
            Op::PollKept => self.poll_all_kept()?,
            Op::DropKept(i) => {
                if !self.kept.is_empty() {
                    let i = i % self.kept.len();
                    self.kept.remove(i);
                }
            }
            Op::Advance(secs) => advance(Duration::from_secs(secs)),
        }
        if self.kept.is_empty() {
            self.check_nothing_in_flight()?;
        }
        Ok(())
    }

    /// With no request alive, every in-flight count is back to zero.
    fn check_nothing_in_flight(&self) -> Result<(), TestCaseError> {
        for stats in self.lb.stats() {
            prop_assert_eq!(stats.in_flight, 0, "{} in flight per stats", stats.key);
            prop_assert_eq!(self.set.in_flight(stats.key), Some(0));
        }
        for model in &self.models {
            prop_assert_eq!(model.mock.in_flight(), 0, "{} in flight", model.mock.name());
        }
        Ok(())
    }

    /// Makes every service ready and releases everything: each kept request must have been woken
    /// and must now finish; then every count is back to zero.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        for model in &mut self.models {
            model.mock.fail_calls(false);
            model.failing = false;
            model.mock.release();
            model.held = false;
            model.mock.set_readiness(Readiness::Ready);
            model.readiness = Readiness::Ready;
        }
        while !self.kept.is_empty() {
            prop_assert!(
                self.kept[0].flag.woken(),
                "a waiting request was never woken although everything is ready"
            );
            prop_assert!(
                self.poll_kept(0)?,
                "a request still waits once everything is ready"
            );
            self.kept.remove(0);
        }
        self.check_nothing_in_flight()
    }
}

/// A request that reached no endpoint: it fails with a typed error, or waits for a pending one.
fn check_unrouted(
    exp: &Expect,
    result: &Poll<Result<&'static str, BoxError>>,
    panic_mode: bool,
) -> Result<(), TestCaseError> {
    match result {
        Poll::Ready(Ok(name)) => prop_assert!(false, "{} answered without a call", name),
        Poll::Pending => prop_assert!(
            exp.n > 0 && exp.waiting,
            "a request waits with nothing to wait for: {:?}",
            exp
        ),
        Poll::Ready(Err(e)) if exp.n == 0 => {
            prop_assert!(e.is::<NoEndpoints>(), "expected NoEndpoints, got {}", e)
        }
        Poll::Ready(Err(e)) => {
            prop_assert!(
                !exp.waiting,
                "failed although an endpoint is pending: {}",
                e
            );
            let unavailable = e.downcast_ref::<Unavailable>();
            prop_assert!(unavailable.is_some(), "expected Unavailable, got {}", e);
            if exp.all_ejected && !panic_mode {
                let source = unavailable.unwrap().source();
                prop_assert!(
                    source.is_some_and(|s| s.is::<AllEjected>()),
                    "expected AllEjected as the source, got {:?}",
                    source
                );
            }
        }
    }
    Ok(())
}

/// `ceil(factor × (total + 1) / n)`, at least 1: bounded loads' capacity.
fn capacity(factor: f64, total: usize, n: usize) -> usize {
    (factor * (total as f64 + 1.0) / n.max(1) as f64)
        .ceil()
        .max(1.0) as usize
}

/// A balancer over endpoints without services, for its key map.
fn unit_balance<St>(strategy: St, members: &[(&'static str, u32)]) -> UnitBalance<St>
where
    St: LbStrategy<&'static str>,
{
    let set = Endpoints::try_from_weighted(members.iter().map(|&(name, w)| (name, (), w)));
    Balance::new(strategy, set.unwrap())
}

/// Never polled: a placeholder while a kept request changes stage.
fn dummy() -> Fut {
    let set: Endpoints<&'static str, Mock<Req>> = Endpoints::new();
    Balance::new(RoundRobin::new(), set).call(request(""))
}

fn run<St>(strategy: St, kind: Kind, case: &Case) -> Result<(), TestCaseError>
where
    St: LbStrategy<&'static str> + Clone,
    Lb<St>: Service<Req, Response = &'static str, Error = BoxError, Future = Fut> + Clone,
{
    run_with(strategy, kind, case)
}

fn run_with<St>(strategy: St, kind: Kind, case: &Case) -> Result<(), TestCaseError>
where
    St: LbStrategy<&'static str> + Clone,
    Lb<St>: Service<Req, Response = &'static str, Error = BoxError, Future = Fut> + Clone,
{
    let mut world = World::new(strategy, kind, case);
    for op in &case.ops {
        world.apply(op)?;
    }
    world.drain()
}

// ---- every strategy, random sequences ---------------------------------------------------------

macro_rules! sequences {
    ($($(#[doc = $doc:literal])* $name:ident: $cases:expr, $strategy:expr, $kind:expr;)*) => {$(
        proptest! {
            #![proptest_config(config($cases))]
            $(#[doc = $doc])*
            #[test]
            fn $name(case in case(60)) {
                run($strategy, $kind, &case)?;
            }
        }
    )*};
}

sequences! {
    /// Round robin sends every request to an eligible endpoint (in the set, ready, not ejected)
    /// when there is one, waits when only pending ones remain, fails with a typed error
    /// otherwise, wakes every waiting request, and releases every in-flight count.
    round_robin_routes_only_to_eligible_endpoints_and_releases_counts:
        256, RoundRobin::new(), Kind::Keyless;
    /// The same for weighted round robin.
    weighted_round_robin_routes_only_to_eligible_endpoints_and_releases_counts:
        256, WeightedRoundRobin::new(), Kind::Keyless;
    /// The same for weighted random picks.
    random_routes_only_to_eligible_endpoints_and_releases_counts:
        256, Random::seeded(7), Kind::Keyless;
    /// The same for power of two choices, whose in-flight counts must also return to zero.
    power_of_two_choices_routes_only_to_eligible_endpoints_and_releases_counts:
        256, PowerOfTwoChoices::seeded(7), Kind::Keyless;
    /// Hash sends each key to its crc32 endpoint when that is eligible, otherwise to the next
    /// eligible endpoint in key-byte order; fails typed or waits as the keyless strategies do.
    hash_routes_keys_to_their_crc32_endpoint_or_its_next_eligible_one:
        256, Hash::new(user_key()), Kind::Hash;
    /// Consistent hashing sends each key to its ring endpoint when that is eligible, otherwise
    /// to where the ring of the eligible endpoints alone would send it: only the keys of
    /// unavailable endpoints move, and they come back.
    consistent_hash_moves_only_keys_of_unavailable_endpoints:
        256, ring(), Kind::Ring;
    /// With bounded loads, a key goes to its own eligible endpoint whenever that has room, and
    /// only ever to an eligible endpoint.
    bounded_consistent_hash_routes_only_to_eligible_endpoints:
        192, ring().bounded_load(1.25).unwrap(), Kind::BoundedRing(1.25);
    /// Maglev sends each key to its table endpoint when that is eligible, otherwise to the same
    /// fallback for the same availability, never the unavailable owner.
    maglev_moves_only_keys_of_unavailable_endpoints:
        256, Maglev::new(user_key()).table_size(1021).unwrap(), Kind::Maglev;
    /// The wrappers keep the walk's guarantees: priority tiers over round robin, zone-aware
    /// routing over random picks, and a subset as large as the set over power of two choices
    /// (the endpoints here carry no locality, so each wrapper sees one group).
    tiers_route_only_to_eligible_endpoints_and_release_counts:
        128, Tiers::new(RoundRobin::new()), Kind::Keyless;
    zone_aware_routes_only_to_eligible_endpoints_and_releases_counts:
        128, ZoneAware::new(Random::seeded(7), "a"), Kind::Keyless;
    subset_routes_only_to_eligible_endpoints_and_releases_counts:
        128,
        Subset::deterministic(PowerOfTwoChoices::seeded(7), SLOTS, 0, 1).unwrap(),
        Kind::Keyless;
}

// ---- exact rotations between membership changes ----------------------------------------------

#[derive(Clone, Debug)]
enum RotationOp {
    Insert(usize, u32),
    Remove(usize),
    Reweight(usize, u32),
    /// Sends requests while the slot's endpoint is pending or failing (the rotation passes over
    /// it), then makes it ready again.
    Detour(usize, Readiness, usize),
    /// Sends this many full periods of requests, through fresh clones or through one reused
    /// clone.
    Burst(usize, bool),
}

fn rotation_ops() -> impl Strategy<Value = Vec<RotationOp>> {
    let slot = 0..SLOTS;
    let op = prop_oneof![
        2 => (slot.clone(), 1u32..=6).prop_map(|(s, w)| RotationOp::Insert(s, w)),
        1 => slot.clone().prop_map(RotationOp::Remove),
        1 => (slot.clone(), 1u32..=6).prop_map(|(s, w)| RotationOp::Reweight(s, w)),
        1 => (slot, prop_oneof![Just(Readiness::Pending), Just(Readiness::Fail)], 1usize..=5)
            .prop_map(|(s, r, n)| RotationOp::Detour(s, r, n)),
        3 => (1usize..=3, any::<bool>()).prop_map(|(k, reuse)| RotationOp::Burst(k, reuse)),
    ];
    prop::collection::vec(op, 1..=24)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Polls `svc` ready and calls it, expecting an answer at once.
fn send_through<St>(svc: &mut Lb<St>) -> Result<&'static str, BoxError>
where
    St: LbStrategy<&'static str>,
    Lb<St>: Service<Req, Response = &'static str, Error = BoxError, Future = Fut>,
{
    let flag = Arc::new(Flag::default());
    match with_flag(&flag, |cx| svc.poll_ready(cx)) {
        Poll::Ready(Ok(())) => {}
        other => panic!("poll_ready should be ready at once, got {other:?}"),
    }
    let mut fut = svc.call(request("any"));
    match with_flag(&flag, |cx| Pin::new(&mut fut).poll(cx)) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the response should be ready at once"),
    }
}

/// Runs `ops` over a round robin (`weighted` false: every weight counts as 1) or weighted round
/// robin balancer; every burst over the all-ready set must give each endpoint exactly its share.
fn rotation<St>(strategy: St, weighted: bool, ops: &[RotationOp]) -> Result<(), TestCaseError>
where
    St: LbStrategy<&'static str> + Clone,
    Lb<St>: Service<Req, Response = &'static str, Error = BoxError, Future = Fut> + Clone,
{
    let mocks: Vec<Mock<Req>> = NAMES.iter().map(|&n| Mock::new(n)).collect();
    let set = Endpoints::new();
    let lb = Balance::new(strategy, set.clone());
    for op in ops {
        match *op {
            RotationOp::Insert(slot, w) => {
                set.insert_weighted(NAMES[slot], mocks[slot].clone(), w)
                    .unwrap();
            }
            RotationOp::Remove(slot) => {
                set.remove(NAMES[slot]);
            }
            RotationOp::Reweight(slot, w) => {
                set.set_weight(NAMES[slot], w).unwrap();
            }
            RotationOp::Detour(slot, readiness, count) => {
                if !set.contains(NAMES[slot]) || set.len() < 2 {
                    continue;
                }
                mocks[slot].set_readiness(readiness);
                for _ in 0..count {
                    let name =
                        send_now(&lb, "any").map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_ne!(name, NAMES[slot], "the rotation did not pass over it");
                }
                mocks[slot].set_readiness(Readiness::Ready);
            }
            RotationOp::Burst(periods, reuse) => {
                let keys = set.keys();
                if keys.is_empty() {
                    let err = send_now(&lb, "any").unwrap_err();
                    prop_assert!(err.is::<NoEndpoints>());
                    continue;
                }
                let weights: Vec<u32> = keys
                    .iter()
                    .map(|k| if weighted { set.weight(k).unwrap() } else { 1 })
                    .collect();
                let g = weights.iter().fold(0, |g, &w| gcd(g, w));
                let shares: Vec<usize> = weights.iter().map(|&w| (w / g) as usize).collect();
                let period: usize = shares.iter().sum();
                let mut reused = lb.clone();
                let mut picks = Vec::new();
                for _ in 0..periods * period {
                    let answer = if reuse {
                        send_through(&mut reused)
                    } else {
                        send_through(&mut lb.clone())
                    };
                    picks.push(answer.map_err(|e| TestCaseError::fail(e.to_string()))?);
                }
                for (key, share) in keys.iter().zip(&shares) {
                    let count = picks.iter().filter(|p| *p == key).count();
                    prop_assert_eq!(count, periods * share, "{} in {:?}", key, picks);
                }
                // The sequence repeats with the period; round robin follows set order.
                for i in period..picks.len() {
                    prop_assert_eq!(picks[i], picks[i - period]);
                }
                if !weighted {
                    for pair in picks.windows(2) {
                        let at = keys.iter().position(|k| *k == pair[0]).unwrap();
                        prop_assert_eq!(pair[1], keys[(at + 1) % keys.len()]);
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Between membership changes, and after requests that passed over a pending or failing
    /// endpoint, R requests over the all-ready set of N endpoints give each exactly R/N, in set
    /// order, through fresh clones or one reused clone.
    #[test]
    fn round_robin_counts_stay_exact_between_membership_changes(ops in rotation_ops()) {
        rotation(RoundRobin::new(), false, &ops)?;
    }

    /// Between membership and weight changes, every period of weighted round robin (the sum of
    /// the weights divided by their gcd) gives each endpoint exactly its weight divided by the
    /// gcd, and the sequence repeats with that period.
    #[test]
    fn weighted_round_robin_counts_stay_exact_per_period_between_changes(ops in rotation_ops()) {
        rotation(WeightedRoundRobin::new(), true, &ops)?;
    }
}

// ---- key maps across membership changes --------------------------------------------------------

#[derive(Clone, Debug)]
enum MemberOp {
    /// Inserts the slot's endpoint, or replaces it (with this weight) if present.
    Insert(usize, u32),
    Remove(usize),
    Reweight(usize, u32),
}

fn member_ops(max: usize) -> impl Strategy<Value = (Vec<(bool, u32)>, Vec<MemberOp>)> {
    let slot = 0..SLOTS;
    let op = prop_oneof![
        (slot.clone(), 1u32..=3).prop_map(|(s, w)| MemberOp::Insert(s, w)),
        slot.clone().prop_map(MemberOp::Remove),
        (slot, 1u32..=3).prop_map(|(s, w)| MemberOp::Reweight(s, w)),
    ];
    (
        prop::collection::vec((any::<bool>(), 1u32..=3), SLOTS),
        prop::collection::vec(op, 1..=max),
    )
}

/// The keys' endpoints under the set's current membership.
fn key_map<St>(lb: &UnitBalance<St>, keys: &[String]) -> Vec<Option<&'static str>>
where
    St: LbStrategy<&'static str>,
{
    let map = lb.key_map();
    keys.iter()
        .map(|k| map.endpoint_for_key(k).copied())
        .collect()
}

/// What a membership change did to one endpoint's weight: `None` when it was absent.
struct Change {
    endpoint: &'static str,
    before: Option<u32>,
    after: Option<u32>,
}

/// Applies `op` to `set`, returning what changed.
fn apply_member_op(set: &Endpoints<&'static str, ()>, op: &MemberOp) -> Change {
    let (slot, endpoint) = match *op {
        MemberOp::Insert(s, _) | MemberOp::Remove(s) | MemberOp::Reweight(s, _) => (s, NAMES[s]),
    };
    let before = set.weight(NAMES[slot]);
    match *op {
        MemberOp::Insert(_, w) => {
            set.insert_weighted(endpoint, (), w).unwrap();
        }
        MemberOp::Remove(_) => {
            set.remove(endpoint);
        }
        MemberOp::Reweight(_, w) => {
            set.set_weight(endpoint, w).unwrap();
        }
    }
    Change {
        endpoint,
        before,
        after: set.weight(endpoint),
    }
}

fn initial_set(initial: &[(bool, u32)]) -> Endpoints<&'static str, ()> {
    Endpoints::try_from_weighted(
        initial
            .iter()
            .zip(NAMES)
            .filter(|((present, _), _)| *present)
            .map(|(&(_, w), name)| (name, (), w)),
    )
    .unwrap()
}

/// The members of `set` in reverse order, with their weights.
fn reversed(set: &Endpoints<&'static str, ()>) -> Vec<(&'static str, u32)> {
    let mut members: Vec<_> = set
        .keys()
        .into_iter()
        .map(|k| (k, set.weight(k).unwrap()))
        .collect();
    members.reverse();
    members
}

fn user_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

proptest! {
    #![proptest_config(config(128))]

    /// On a consistent hash ring, removing an endpoint moves exactly its keys; inserting one, or
    /// raising its weight, moves keys only to it; lowering its weight moves only its own keys;
    /// replacing its service moves nothing. The mapping is the same whatever the insertion
    /// order.
    #[test]
    fn consistent_hash_membership_changes_move_only_the_keys_they_must(
        (initial, ops) in member_ops(8)
    ) {
        let keys = user_keys(400);
        let set = initial_set(&initial);
        let lb = Balance::new(ConsistentHash::new(user_key()), set.clone());
        let mut before = key_map(&lb, &keys);
        for op in &ops {
            let change = apply_member_op(&set, op);
            let after = key_map(&lb, &keys);
            let x = Some(change.endpoint);
            for (b, a) in before.iter().zip(&after) {
                match (change.before, change.after) {
                    (Some(_), None) => prop_assert_eq!(b == a, *b != x, "removal moved {:?}", b),
                    (None, Some(_)) => prop_assert!(b == a || *a == x, "insertion moved {:?} to {:?}", b, a),
                    (Some(old), Some(new)) if new > old => prop_assert!(b == a || *a == x),
                    (Some(old), Some(new)) if new < old => prop_assert!(b == a || *b == x),
                    _ => prop_assert_eq!(b, a),
                }
            }
            let fresh = unit_balance(ConsistentHash::new(user_key()), &reversed(&set));
            prop_assert_eq!(&key_map(&fresh, &keys), &after, "depends on insertion order");
            before = after;
        }
    }

    /// Hash maps every key to the endpoint that owns slot crc32(key) mod the total weight, the
    /// endpoints' slots laid out in key-byte order, after every membership change.
    #[test]
    fn hash_maps_every_key_by_crc32_after_every_membership_change(
        (initial, ops) in member_ops(12)
    ) {
        let keys = user_keys(300);
        let set = initial_set(&initial);
        let lb = Balance::new(Hash::new(user_key()), set.clone());
        for op in &ops {
            apply_member_op(&set, op);
            let mut order: Vec<(&'static str, u32)> = reversed(&set);
            order.sort();
            let total: u64 = order.iter().map(|&(_, w)| u64::from(w)).sum();
            for (key, got) in keys.iter().zip(key_map(&lb, &keys)) {
                let expected = (total > 0).then(|| {
                    let slot = u64::from(crc32fast::hash(key.as_bytes())) % total;
                    let mut end = 0;
                    order.iter().find(|&&(_, w)| { end += u64::from(w); slot < end }).unwrap().0
                });
                prop_assert_eq!(got, expected, "key {}", key);
            }
        }
    }
}

/// Maglev's documented disruption: removing one endpoint of 100 from the default table moves at
/// most 2% of all keys (design bar; the rustdoc measures well under 1% besides its own keys).
/// Applied here to the keys of the other endpoints alone, on sets of 1 to 6 endpoints.
const MAGLEV_MAX_EXTRA_MOVES: f64 = 0.02;

proptest! {
    #![proptest_config(config(32))]

    /// On the default Maglev table, removing an endpoint moves all its keys and at most 2% of
    /// the others'; inserting one moves keys to it and at most 2% of the keys elsewhere;
    /// replacing a service with the same weight moves nothing; the table is the same whatever
    /// the insertion order.
    #[test]
    fn maglev_membership_changes_move_few_keys_besides_their_own(
        (initial, ops) in member_ops(5)
    ) {
        let keys = user_keys(2000);
        let set = initial_set(&initial);
        let lb = Balance::new(Maglev::new(user_key()), set.clone());
        let mut before = key_map(&lb, &keys);
        let bound = (MAGLEV_MAX_EXTRA_MOVES * keys.len() as f64) as usize;
        for op in &ops {
            let change = apply_member_op(&set, op);
            let after = key_map(&lb, &keys);
            let x = Some(change.endpoint);
            let moved = |own: &dyn Fn(&Option<&str>, &Option<&str>) -> bool| {
                before.iter().zip(&after).filter(|(b, a)| b != a && !own(b, a)).count()
            };
            match (change.before, change.after) {
                (Some(_), None) => {
                    prop_assert!(after.iter().all(|a| *a != x), "a key stayed on a removed endpoint");
                    let others = moved(&|b, _| *b == x);
                    prop_assert!(others <= bound, "removal moved {} other keys", others);
                }
                (None, Some(_)) if before.iter().any(Option::is_some) => {
                    let others = moved(&|_, a| *a == x);
                    prop_assert!(others <= bound, "insertion moved {} keys elsewhere", others);
                }
                (Some(old), Some(new)) if old == new => prop_assert_eq!(&before, &after),
                _ => {}
            }
            before = after;
        }
        let fresh = unit_balance(Maglev::new(user_key()), &reversed(&set));
        prop_assert_eq!(&key_map(&fresh, &keys), &before, "depends on insertion order");
    }
}

// ---- bounded loads -----------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum LoadOp {
    /// Sends a request with this key; every endpoint holds its responses.
    Send(u8),
    /// Releases the held responses of the slot's endpoint, and holds again.
    Release(usize),
    DropKept(usize),
}

fn load_ops() -> impl Strategy<Value = Vec<LoadOp>> {
    let op = prop_oneof![
        // Mostly a few hot keys, so that endpoints fill up and keys spill over.
        6 => prop_oneof![3 => 0u8..3, 1 => 0u8..60].prop_map(LoadOp::Send),
        1 => (0..SLOTS).prop_map(LoadOp::Release),
        1 => (0usize..16).prop_map(LoadOp::DropKept),
    ];
    prop::collection::vec(op, 1..=60)
}

proptest! {
    #![proptest_config(config(160))]

    /// With bounded loads at factor c, no request makes its endpoint hold more than
    /// ceil(c × (m + 1) / N) requests in flight, m being the set's in-flight requests before it;
    /// the set's count is always the number of live requests, and returns to zero.
    #[test]
    fn bounded_load_never_exceeds_its_capacity(
        n in 2usize..=SLOTS,
        factor in prop_oneof![Just(1.25), Just(1.5), Just(2.0)],
        ops in load_ops(),
    ) {
        let mocks: Vec<Mock<Req>> = NAMES[..n].iter().map(|&name| Mock::new(name)).collect();
        for mock in &mocks {
            mock.hold(true);
        }
        let set = Endpoints::from_iter(mocks.iter().map(|m| (m.name(), m.clone())));
        let strategy = ConsistentHash::new(user_key()).bounded_load(factor).unwrap();
        let lb = Balance::new(strategy, set.clone());
        let in_flight = || lb.stats().iter().map(|s| s.in_flight).collect::<Vec<_>>();
        let mut kept: Vec<(Pin<Box<Fut>>, Arc<Flag>)> = Vec::new();
        let poll_kept = |kept: &mut Vec<(Pin<Box<Fut>>, Arc<Flag>)>| {
            kept.retain_mut(|(fut, flag)| with_flag(flag, |cx| fut.as_mut().poll(cx)).is_pending());
        };
        for op in &ops {
            match *op {
                LoadOp::Send(key) => {
                    let total: usize = in_flight().iter().sum();
                    let before: Vec<usize> = mocks.iter().map(Mock::calls).collect();
                    let flag = Arc::new(Flag::default());
                    let mut svc = lb.clone();
                    prop_assert!(with_flag(&flag, |cx| svc.poll_ready(cx)).is_ready());
                    let mut fut = Box::pin(svc.call(request(&format!("user-{key}"))));
                    prop_assert!(with_flag(&flag, |cx| fut.as_mut().poll(cx)).is_pending());
                    let chosen = (0..n).find(|&i| mocks[i].calls() > before[i]).unwrap();
                    let load = in_flight()[chosen];
                    let cap = capacity(factor, total, n);
                    prop_assert!(load <= cap, "{} holds {} > {}", NAMES[chosen], load, cap);
                    kept.push((fut, flag));
                }
                LoadOp::Release(slot) => {
                    if slot < n {
                        mocks[slot].release();
                        poll_kept(&mut kept);
                        mocks[slot].hold(true);
                    }
                }
                LoadOp::DropKept(i) => {
                    if !kept.is_empty() {
                        let i = i % kept.len();
                        kept.remove(i);
                    }
                }
            }
            prop_assert_eq!(in_flight().iter().sum::<usize>(), kept.len());
        }
        for mock in &mocks {
            mock.release();
        }
        poll_kept(&mut kept);
        prop_assert!(kept.is_empty(), "released requests still wait");
        prop_assert!(in_flight().iter().all(|&c| c == 0));
        prop_assert!(mocks.iter().all(|m| m.in_flight() == 0));
    }
}

// ---- waiting requests and changes under them -------------------------------------------------

/// Sequences that make a request wait for pending endpoints, then eject one of those while it
/// waits (failing calls from other requests, one failure ejects).
fn waiting_case() -> impl Strategy<Value = Case> {
    let slot = 0..2usize;
    let op = prop_oneof![
        3 => (slot.clone(), prop_oneof![Just(Readiness::Ready), Just(Readiness::Pending)])
            .prop_map(|(s, r)| Op::Readiness(s, r)),
        2 => (slot, any::<bool>()).prop_map(|(s, f)| Op::FailCalls(s, f)),
        4 => (0u8..24).prop_map(|k| Op::Send(k, How::Complete)),
        2 => Just(Op::PollKept),
    ];
    (any::<bool>(), prop::collection::vec(op, 1..=30)).prop_map(|(panic_mode, ops)| Case {
        initial: vec![
            (true, 1),
            (true, 1),
            (false, 1),
            (false, 1),
            (false, 1),
            (false, 1),
        ],
        consecutive_failures: 1,
        max_ejected_share: 0.5,
        panic_mode,
        ops,
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// A request that waited for pending endpoints goes, once one is ready, only to an eligible
    /// endpoint: not to one ejected while it waited.
    #[test]
    fn waiting_request_never_goes_to_an_endpoint_ejected_meanwhile(case in waiting_case()) {
        run_with(RoundRobin::new(), Kind::Keyless, &case)?;
    }
}

/// A request waiting for a pending endpoint is woken when the set changes under it, and then
/// routed over the new set: here its only endpoint is replaced by a ready one.
#[test]
fn waiting_request_is_woken_and_rerouted_when_the_set_changes() {
    let gone: Mock<Req> = Mock::new("gone");
    gone.set_readiness(Readiness::Pending);

    let set = Endpoints::from_iter([("gone", gone.clone())]);
    let lb = Balance::new(RoundRobin::new(), set.clone());
    let flag = Arc::new(Flag::default());
    let mut svc = lb.clone();
    assert!(with_flag(&flag, |cx| svc.poll_ready(cx)).is_pending());
    set.remove("gone");
    set.insert("new", Mock::new("new"));
    assert!(flag.woken(), "keyless: not woken by the change");

    let set = Endpoints::from_iter([("gone", gone.clone())]);
    let lb = Balance::new(ConsistentHash::new(user_key()), set.clone());
    let mut svc = lb.clone();
    assert!(with_flag(&flag, |cx| svc.poll_ready(cx)).is_ready());
    let mut fut = Box::pin(svc.call(request("user-1")));
    assert!(with_flag(&flag, |cx| fut.as_mut().poll(cx)).is_pending());
    set.remove("gone");
    set.insert("new", Mock::new("new"));
    assert!(flag.woken(), "keyed: not woken by the change");
    let answer = with_flag(&flag, |cx| fut.as_mut().poll(cx));
    assert!(
        matches!(answer, Poll::Ready(Ok("new"))),
        "keyed: {answer:?}"
    );
}
