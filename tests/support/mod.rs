//! Shared helpers for the integration tests: a controllable endpoint that records its calls and
//! checks the readiness contract.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll, Waker},
};

use tokio::sync::Notify;
use tower::{Service, ServiceExt};
use tower_lb::BoxError;

/// What a mock endpoint's `poll_ready` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Pending,
    Fail,
}

#[derive(Debug)]
struct State {
    name: &'static str,
    readiness: Mutex<Readiness>,
    wakers: Mutex<Vec<Waker>>,
    calls: AtomicUsize,
    fail_calls: AtomicBool,
    /// When set, responses wait for `release`.
    hold: AtomicBool,
    release: Notify,
    in_flight: AtomicUsize,
}

/// An endpoint answering its name. Clones share its state but, as with real services, each clone
/// must be made ready itself before it is called: calling a clone whose `poll_ready` has not
/// returned `Ready(Ok(()))` panics, which fails the test.
///
/// `R` is the request type it takes: `()` by default, `http::Request<()>` for keyed strategies.
#[derive(Debug)]
pub struct Mock<R = ()> {
    state: Arc<State>,
    ready: bool,
    _request: PhantomData<fn(R)>,
}

impl<R> Clone for Mock<R> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            ready: false,
            _request: PhantomData,
        }
    }
}

impl<R> Mock<R> {
    pub fn new(name: &'static str) -> Self {
        Self {
            state: Arc::new(State {
                name,
                readiness: Mutex::new(Readiness::Ready),
                wakers: Mutex::new(Vec::new()),
                calls: AtomicUsize::new(0),
                fail_calls: AtomicBool::new(false),
                hold: AtomicBool::new(false),
                release: Notify::new(),
                in_flight: AtomicUsize::new(0),
            }),
            ready: false,
            _request: PhantomData,
        }
    }

    pub fn name(&self) -> &'static str {
        self.state.name
    }

    /// Changes what `poll_ready` answers, waking the tasks that saw it pending.
    pub fn set_readiness(&self, readiness: Readiness) {
        *self.state.readiness.lock().unwrap() = readiness;
        for waker in self.state.wakers.lock().unwrap().drain(..) {
            waker.wake();
        }
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Makes calls fail with an error (readiness is unaffected).
    pub fn fail_calls(&self, fail: bool) {
        self.state.fail_calls.store(fail, Ordering::SeqCst);
    }

    /// Holds responses until [`Mock::release`].
    pub fn hold(&self, hold: bool) {
        self.state.hold.store(hold, Ordering::SeqCst);
    }

    /// Lets every held response complete.
    pub fn release(&self) {
        self.state.hold.store(false, Ordering::SeqCst);
        self.state.release.notify_waiters();
    }

    /// How many handles to this endpoint exist, this one included: what keeps its connections
    /// (here, its state) alive.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.state)
    }

    pub fn waiting_wakers(&self) -> usize {
        self.state.wakers.lock().unwrap().len()
    }
}

impl<R> Service<R> for Mock<R> {
    type Response = &'static str;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match *self.state.readiness.lock().unwrap() {
            Readiness::Ready => {
                self.ready = true;
                Poll::Ready(Ok(()))
            }
            Readiness::Pending => {
                self.ready = false;
                self.state.wakers.lock().unwrap().push(cx.waker().clone());
                Poll::Pending
            }
            Readiness::Fail => {
                self.ready = false;
                Poll::Ready(Err(format!("{} is not ready", self.state.name).into()))
            }
        }
    }

    fn call(&mut self, _req: R) -> Self::Future {
        assert!(
            std::mem::take(&mut self.ready),
            "{} was called before its poll_ready returned Ready(Ok)",
            self.state.name
        );
        self.state.calls.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            state.in_flight.fetch_add(1, Ordering::SeqCst);
            let _in_flight = InFlight(Arc::clone(&state));
            if state.hold.load(Ordering::SeqCst) {
                let released = state.release.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if state.hold.load(Ordering::SeqCst) {
                    released.await;
                }
            }
            if state.fail_calls.load(Ordering::SeqCst) {
                Err(format!("{} failed", state.name).into())
            } else {
                Ok(state.name)
            }
        })
    }
}

/// Counts a response as in flight until it completes or is dropped.
struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Mocks named by the given names.
pub fn mocks<R, const N: usize>(names: [&'static str; N]) -> [Mock<R>; N] {
    names.map(Mock::new)
}

/// Sends `count` requests, each through a fresh clone of `svc` (as axum does), and returns the
/// names of the endpoints that answered, in order.
pub async fn send<S>(svc: &S, count: usize) -> Vec<&'static str>
where
    S: Service<(), Response = &'static str, Error = BoxError> + Clone,
{
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        names.push(svc.clone().oneshot(()).await.expect("request failed"));
    }
    names
}

/// How many times each name appears.
pub fn tally(names: &[&'static str]) -> HashMap<&'static str, usize> {
    let mut counts = HashMap::new();
    for name in names {
        *counts.entry(*name).or_insert(0) += 1;
    }
    counts
}
