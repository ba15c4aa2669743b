//! Active health checks: the settings, and the checker that probes every endpoint of a set.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError, Weak,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use futures_util::{
    future::{AbortHandle, Abortable},
    stream::FuturesUnordered,
    task::AtomicWaker,
    FutureExt, StreamExt,
};

use super::probe::Probe;
use crate::{
    endpoints::{Endpoints, Inner, Members, Watch},
    error::InvalidConfig,
    rng::Rng,
    state::EndpointState,
};

/// Settings of active health checking: a [`Probe`] and how often, how patiently and after how
/// many results in a row it changes its mind. Build them with [`HealthCheck::builder`] and run
/// them over a set with [`Endpoints::check_health`].
///
/// A checker probes every endpoint of the set on its own schedule, without request traffic:
///
/// - An endpoint's first probe runs as soon as the checker sees it (when the checker starts, or
///   when the endpoint is inserted). The next one starts [`interval`](HealthCheckBuilder::interval)
///   after it finished, plus a random [`jitter`](HealthCheckBuilder::jitter); while the endpoint
///   is out, [`unhealthy_interval`](HealthCheckBuilder::unhealthy_interval) after it finished
///   instead. Probes of one endpoint never overlap.
/// - A probe that does not finish within [`timeout`](HealthCheckBuilder::timeout) is dropped and
///   counts as a failure; so does a probe that panics (the checker goes on).
/// - [`unhealthy_threshold`](HealthCheckBuilder::unhealthy_threshold) failures in a row take an
///   endpoint out: no strategy routes to it.
///   [`healthy_threshold`](HealthCheckBuilder::healthy_threshold) passes in a row let it back.
/// - A new endpoint waits for its first probe: it is out until that probe passes (one pass is
///   enough, as in Envoy), and if the probe fails it needs the healthy threshold like any other.
///   With [`start_healthy`](HealthCheckBuilder::start_healthy) it takes requests at once instead,
///   and only the unhealthy threshold takes it out.
///
/// | setting | default | Envoy | HAProxy |
/// |---|---|---|---|
/// | [`interval`](HealthCheckBuilder::interval) | 5 s | `interval` | `inter` |
/// | [`unhealthy_interval`](HealthCheckBuilder::unhealthy_interval) | the interval | `unhealthy_interval` | `downinter` |
/// | [`jitter`](HealthCheckBuilder::jitter) | 0 | `interval_jitter` | `spread-checks` (a share) |
/// | [`timeout`](HealthCheckBuilder::timeout) | 1 s | `timeout` | `timeout check` |
/// | [`unhealthy_threshold`](HealthCheckBuilder::unhealthy_threshold) | 3 | `unhealthy_threshold` | `fall` |
/// | [`healthy_threshold`](HealthCheckBuilder::healthy_threshold) | 2 | `healthy_threshold` | `rise` |
/// | [`start_healthy`](HealthCheckBuilder::start_healthy) | off: wait for the first probe | (waits) | `init-state` |
///
/// Active and passive health combine as in Envoy: an endpoint takes requests only while its probes
/// find it up **and** outlier detection has not ejected it. A passing probe does not end an
/// ejection, nor does the end of an ejection let in an endpoint its probes find down. When no
/// endpoint is eligible, the balancer routes over all of them (panic mode) unless outlier
/// detection was told to [fail instead](super::OutlierDetectionBuilder::fail_when_all_ejected).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{
///     health::{probe, HealthCheck},
///     strategy::RoundRobin,
///     BalanceLayer, Endpoints,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_lb::BoxError> {
/// let backend = |name: &'static str| service_fn(move |_req: ()| async move {
///     Ok::<_, tower_lb::BoxError>(name)
/// });
/// let set = Endpoints::from_iter([("a", backend("a")), ("b", backend("b"))]);
/// let balance = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
///
/// // Any check: here b's health endpoint says it is down.
/// let probe = probe::from_fn(|key: &&'static str, _endpoint: &_| {
///     let up = *key != "b";
///     async move { up }
/// });
/// let check = HealthCheck::builder(probe)
///     .interval(Duration::from_secs(2))
///     .timeout(Duration::from_millis(500))
///     .unhealthy_threshold(3)
///     .healthy_threshold(2)
///     .build()?;
/// // The checker runs beside the balancer; it ends when the set and its balancers are gone.
/// tokio::spawn(set.check_health(check));
///
/// // Each endpoint waits for its first probe; a's passes, b's fails.
/// while balance.stats()[0].probe.as_ref().is_none_or(|p| !p.healthy) {
///     tokio::time::sleep(Duration::from_millis(1)).await;
/// }
/// for _ in 0..4 {
///     assert_eq!(balance.clone().oneshot(()).await?, "a");
/// }
/// let b = balance.stats()[1].probe.clone().unwrap();
/// assert!(!b.healthy);
/// assert_eq!(b.last_passed, Some(false));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HealthCheck<P> {
    probe: P,
    interval: Duration,
    unhealthy_interval: Option<Duration>,
    jitter: Duration,
    timeout: Duration,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    start_healthy: bool,
}

impl<P> HealthCheck<P> {
    /// Checks with `probe` every 5 s (no jitter), waiting 1 s for each probe; 3 failures in a row
    /// take an endpoint out, 2 passes in a row let it back; new endpoints wait for their first
    /// probe.
    pub fn new(probe: P) -> Self {
        Self {
            probe,
            interval: Duration::from_secs(5),
            unhealthy_interval: None,
            jitter: Duration::ZERO,
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            start_healthy: false,
        }
    }

    /// Settings for `probe` that start from the defaults of [`HealthCheck::new`].
    pub fn builder(probe: P) -> HealthCheckBuilder<P> {
        HealthCheckBuilder {
            settings: Self::new(probe),
        }
    }

    /// The probe.
    pub fn probe(&self) -> &P {
        &self.probe
    }

    /// The wait after a probe: the interval for the endpoint's state, plus jitter.
    fn wait(&self, down: bool) -> Duration {
        let base = match self.unhealthy_interval {
            Some(interval) if down => interval,
            _ => self.interval,
        };
        if self.jitter.is_zero() {
            return base;
        }
        let span = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        let draw = match span.checked_add(1) {
            Some(bound) => Rng::per_thread().next() % bound,
            None => Rng::per_thread().next(),
        };
        base.saturating_add(Duration::from_nanos(draw))
    }
}

/// Changes the settings of a [`HealthCheck`] from their defaults; [`build`] checks them all at
/// once.
///
/// [`build`]: HealthCheckBuilder::build
///
/// # Examples
///
/// ```
/// use std::{net::SocketAddr, time::Duration};
/// use tower_lb::health::{probe::Tcp, HealthCheck};
///
/// let check = HealthCheck::builder(Tcp::new())
///     .interval(Duration::from_secs(10))
///     .unhealthy_interval(Duration::from_secs(2))
///     .jitter(Duration::from_secs(1))
///     .build()
///     .unwrap();
/// # let _ = check;
///
/// let error = HealthCheck::builder(Tcp::new())
///     .unhealthy_threshold(0)
///     .build()
///     .unwrap_err();
/// assert_eq!(error.to_string(), "invalid unhealthy threshold: must be at least 1, got 0");
/// ```
#[derive(Clone)]
pub struct HealthCheckBuilder<P> {
    settings: HealthCheck<P>,
}

impl<P> HealthCheckBuilder<P> {
    /// The time from the end of one probe of an endpoint to the start of the next, before jitter
    /// (more than zero; default 5 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.settings.interval = interval;
        self
    }

    /// The interval while an endpoint is out, usually shorter so that it returns sooner (more
    /// than zero; default: the interval).
    pub fn unhealthy_interval(mut self, interval: Duration) -> Self {
        self.settings.unhealthy_interval = Some(interval);
        self
    }

    /// A random time from 0 to `jitter` added to every interval, drawn anew each time, so that
    /// the probes of many endpoints (and of many clients) do not fall into step. Zero (the
    /// default) probes at the exact interval.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.settings.jitter = jitter;
        self
    }

    /// How long a probe may take (more than zero; default 1 s): one that has not finished by then
    /// is dropped, cancelling whatever it was waiting for, and counts as a failure.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// How many failed probes in a row take an endpoint out (at least 1; default 3).
    pub fn unhealthy_threshold(mut self, threshold: u32) -> Self {
        self.settings.unhealthy_threshold = threshold;
        self
    }

    /// How many passed probes in a row let an endpoint that is out back in (at least 1; default
    /// 2).
    pub fn healthy_threshold(mut self, threshold: u32) -> Self {
        self.settings.healthy_threshold = threshold;
        self
    }

    /// New endpoints (and those present when the checker starts) take requests at once, before
    /// their first probe, instead of waiting for it to pass.
    pub fn start_healthy(mut self) -> Self {
        self.settings.start_healthy = true;
        self
    }

    /// Checks the settings together.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if an interval or the timeout is zero, or a threshold is 0.
    pub fn build(self) -> Result<HealthCheck<P>, InvalidConfig> {
        let s = self.settings;
        positive("health check interval", s.interval)?;
        if let Some(interval) = s.unhealthy_interval {
            positive("unhealthy health check interval", interval)?;
        }
        positive("health check timeout", s.timeout)?;
        at_least_one("unhealthy threshold", s.unhealthy_threshold)?;
        at_least_one("healthy threshold", s.healthy_threshold)?;
        Ok(s)
    }
}

impl<P> fmt::Debug for HealthCheckBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheckBuilder")
            .field("settings", &self.settings)
            .finish()
    }
}

fn positive(option: &'static str, value: Duration) -> Result<(), InvalidConfig> {
    if value.is_zero() {
        return Err(InvalidConfig::new(option, "more than zero", "0s"));
    }
    Ok(())
}

fn at_least_one(option: &'static str, value: u32) -> Result<(), InvalidConfig> {
    if value == 0 {
        return Err(InvalidConfig::new(option, "at least 1", value));
    }
    Ok(())
}

impl<P> fmt::Debug for HealthCheck<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheck")
            .field("probe", &std::any::type_name::<P>())
            .field("interval", &self.interval)
            .field("unhealthy_interval", &self.unhealthy_interval)
            .field("jitter", &self.jitter)
            .field("timeout", &self.timeout)
            .field("unhealthy_threshold", &self.unhealthy_threshold)
            .field("healthy_threshold", &self.healthy_threshold)
            .field("start_healthy", &self.start_healthy)
            .finish()
    }
}

impl<K, S> Endpoints<K, S>
where
    K: PartialEq + Clone + fmt::Debug + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    /// A future that probes every endpoint of this set with `check` until the set is dropped:
    /// spawn it on a tokio runtime. See [`HealthCheck`].
    ///
    /// The checker follows the set's membership: it starts probing an endpoint when it is
    /// inserted, stops at once when it is removed (dropping a probe in progress, and with it the
    /// clone of the endpoint's service the probe held), and probes a replaced service from its
    /// next probe on, keeping the endpoint's counts. Unless the settings
    /// [start them healthy](HealthCheckBuilder::start_healthy), the endpoints present now and those
    /// inserted later are out from the moment the checker sees them (for an insertion, as the set
    /// publishes it) until their first probe passes.
    ///
    /// It holds the set weakly: when the set and every balancer over it are gone, it completes at
    /// once, holding nothing. Dropping the checker stops its probes and lets back every endpoint
    /// it had taken out.
    ///
    /// Several checkers may run over one set (say, a TCP probe and an HTTP probe): an endpoint is
    /// out while any of them finds it down.
    pub fn check_health<P>(&self, check: HealthCheck<P>) -> Checker<K, S, P>
    where
        P: Probe<K, S> + Send + Sync + 'static,
    {
        let signal = Arc::new(Signal {
            changed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            take_out: !check.start_healthy,
            new: Mutex::default(),
        });
        let watch: Weak<dyn Watch<K, S>> = Arc::downgrade(&signal) as _;
        // Announces the current membership to the signal at once.
        self.watch(watch);
        Checker {
            set: Arc::downgrade(&self.inner),
            slot: None,
            signal,
            check: Arc::new(check),
            probed: HashMap::new(),
            running: FuturesUnordered::new(),
        }
    }
}

/// Tells a checker that the membership changed, and takes the endpoints that join it out at once
/// (when new endpoints wait for their first probe), before the checker's task next runs.
struct Signal {
    changed: AtomicBool,
    waker: AtomicWaker,
    /// Whether new endpoints are out until their first probe passes.
    take_out: bool,
    /// The endpoints announced since the checker last followed the set, by the address of their
    /// state, with their vote.
    new: Mutex<New>,
}

#[derive(Default)]
struct New {
    /// Every endpoint of the last membership announced.
    known: HashSet<usize>,
    votes: HashMap<usize, Vote>,
}

impl<K, S> Watch<K, S> for Signal {
    fn changed(&self, members: &Arc<Members<K, S>>) {
        {
            let mut new = self.new.lock().unwrap_or_else(PoisonError::into_inner);
            let mut known = HashSet::with_capacity(members.len());
            for member in members.list.iter() {
                let id = Arc::as_ptr(&member.state) as usize;
                if !new.known.contains(&id) {
                    // The statistics show the endpoint as probed from now on.
                    member.state.probe.update(|_| {});
                    let mut vote = Vote::new(Arc::clone(&member.state));
                    if self.take_out {
                        vote.take_out();
                    }
                    new.votes.insert(id, vote);
                }
                known.insert(id);
            }
            new.known = known;
        }
        self.changed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// The future of [`Endpoints::check_health`]: probes every endpoint of a set.
///
/// It completes when the set and every balancer over it are dropped; until then it is pending,
/// waking for its probes' timers and answers and for membership changes. It needs a tokio runtime
/// with the time driver (and the I/O driver for network probes).
#[must_use = "endpoints are probed only while this future is polled: spawn it"]
pub struct Checker<K, S, P> {
    set: Weak<Inner<K, S>>,
    /// Its slot among the set's followers, woken when the set is dropped.
    slot: Option<usize>,
    signal: Arc<Signal>,
    check: Arc<HealthCheck<P>>,
    /// The endpoints probed, by the address of their state, with what stops their probing.
    probed: HashMap<usize, AbortHandle>,
    /// One probing loop per endpoint.
    running: FuturesUnordered<Abortable<Pin<Box<dyn Future<Output = ()> + Send>>>>,
}

impl<K, S, P> Checker<K, S, P>
where
    K: PartialEq + Clone + fmt::Debug + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
    P: Probe<K, S> + Send + Sync + 'static,
{
    /// Starts probing the endpoints new in `members` and stops probing those that left it.
    fn follow(&mut self, members: &Members<K, S>) {
        let mut votes = std::mem::take(
            &mut self
                .signal
                .new
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .votes,
        );
        let mut probed = HashMap::with_capacity(members.len());
        for member in members.list.iter() {
            let id = Arc::as_ptr(&member.state) as usize;
            let abort = match self.probed.remove(&id) {
                Some(abort) => abort,
                None => {
                    let vote = votes
                        .remove(&id)
                        .unwrap_or_else(|| Vote::new(Arc::clone(&member.state)));
                    let (abort, registration) = AbortHandle::new_pair();
                    let probing = probe_endpoint(
                        Weak::clone(&self.set),
                        vote,
                        member.key.clone(),
                        Arc::clone(&self.check),
                    );
                    let probing: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(probing);
                    self.running.push(Abortable::new(probing, registration));
                    abort
                }
            };
            probed.insert(id, abort);
        }
        // Removed endpoints: their loops are dropped when `running` is next polled, right below,
        // and the votes of endpoints removed before they were probed go now.
        for abort in self.probed.values() {
            abort.abort();
        }
        self.probed = probed;
        drop(votes);
    }
}

impl<K, S, P> Future for Checker<K, S, P>
where
    K: PartialEq + Clone + fmt::Debug + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
    P: Probe<K, S> + Send + Sync + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(inner) = this.set.upgrade() else {
            // Nothing is probed any more: the loops go now, not when the future is dropped.
            this.running = FuturesUnordered::new();
            this.probed.clear();
            return Poll::Ready(());
        };
        // The set's drop wakes this task, so that the checker ends without waiting for a timer.
        inner.followers.register(&mut this.slot, cx.waker());
        // Registered before the flag is read: a change announced after the read wakes the task.
        this.signal.waker.register(cx.waker());
        if this.signal.changed.swap(false, Ordering::AcqRel) {
            this.follow(&inner.members());
        }
        drop(inner);
        // The loops never end on their own but when their endpoint left the set.
        while let Poll::Ready(Some(_)) = this.running.poll_next_unpin(cx) {}
        Poll::Pending
    }
}

impl<K, S, P> Drop for Checker<K, S, P> {
    fn drop(&mut self) {
        if let Some(inner) = self.set.upgrade() {
            inner.followers.deregister(&mut self.slot);
        }
    }
}

impl<K, S, P> fmt::Debug for Checker<K, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checker")
            .field("set_alive", &(self.set.strong_count() > 0))
            .field("endpoints", &self.probed.len())
            .field("check", &self.check)
            .finish()
    }
}

/// One checker's hold on an endpoint it takes out: let back when the checker finds it up again,
/// and when the checker stops probing it.
struct Vote {
    state: Arc<EndpointState>,
    out: bool,
}

impl Vote {
    fn new(state: Arc<EndpointState>) -> Self {
        Self { state, out: false }
    }

    fn take_out(&mut self) {
        if !self.out {
            self.out = true;
            self.state.probe.down.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn let_in(&mut self) {
        if self.out {
            self.out = false;
            self.state.probe.down.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Vote {
    fn drop(&mut self) {
        self.let_in();
    }
}

/// Probes one endpoint until it leaves the set (or the loop is dropped). `vote` holds the
/// endpoint's state, out if it waits for its first probe.
async fn probe_endpoint<K, S, P>(
    set: Weak<Inner<K, S>>,
    mut vote: Vote,
    key: K,
    check: Arc<HealthCheck<P>>,
) where
    K: fmt::Debug + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
    P: Probe<K, S> + Send + Sync + 'static,
{
    let state = Arc::clone(&vote.state);
    // Out until its first probe passes: one pass is enough then.
    let mut streak = Streak {
        first: vote.out,
        passes: 0,
        failures: 0,
    };
    state.probe.update(|_| {});
    // Where the endpoint was in the last snapshot it was looked up in.
    let mut index = 0;
    loop {
        let Some(service) = service_of(&set, &state, &mut index) else {
            return;
        };
        let result = probe_once(&check, &key, service).await;
        let was_out = vote.out;
        streak.judge(&result, &mut vote, &check, &key);
        state.probe.update(|record| {
            record.probes += 1;
            record.failed += u64::from(result.is_err());
            record.last_at = Some(SystemTime::now());
            record.last_error = result.err();
            record.consecutive_passes = streak.passes;
            record.consecutive_failures = streak.failures;
        });
        if vote.out != was_out {
            notify(&set);
        }
        tokio::time::sleep(check.wait(vote.out)).await;
    }
}

/// The probes of one endpoint in a row, against the thresholds.
struct Streak {
    /// Whether no probe has been judged yet.
    first: bool,
    passes: u32,
    failures: u32,
}

impl Streak {
    /// Counts a probe's result, and takes the endpoint out or lets it back in when a threshold is
    /// reached (the first probe of an endpoint that waits for it lets it in at once).
    fn judge<K: fmt::Debug, P>(
        &mut self,
        result: &Result<(), String>,
        vote: &mut Vote,
        check: &HealthCheck<P>,
        key: &K,
    ) {
        match result {
            Ok(()) => {
                self.passes = self.passes.saturating_add(1);
                self.failures = 0;
                if self.first {
                    vote.let_in();
                    tracing::debug!(endpoint = ?key, "first health probe passed");
                } else if vote.out && self.passes >= check.healthy_threshold {
                    vote.let_in();
                    tracing::info!(
                        endpoint = ?key,
                        consecutive_passes = self.passes,
                        "active health check passed: the endpoint takes requests again"
                    );
                }
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                self.passes = 0;
                tracing::debug!(endpoint = ?key, %error, consecutive_failures = self.failures, "health probe failed");
                if !vote.out && self.failures >= check.unhealthy_threshold {
                    vote.take_out();
                    tracing::warn!(
                        endpoint = ?key,
                        %error,
                        consecutive_failures = self.failures,
                        "active health check failed: taking the endpoint out"
                    );
                }
            }
        }
        self.first = false;
    }
}

/// Wakes the requests of every balancer over the set, after an endpoint went out or came back.
fn notify<K, S>(set: &Weak<Inner<K, S>>) {
    if let Some(inner) = set.upgrade() {
        inner.eligibility_changed();
    }
}

/// A clone of the current service of the endpoint whose state is `state`, if it is still in the
/// set. `index` is where it was last found, tried first.
fn service_of<K, S: Clone>(
    set: &Weak<Inner<K, S>>,
    state: &Arc<EndpointState>,
    index: &mut usize,
) -> Option<S> {
    let members = set.upgrade()?.members();
    let list = &members.list;
    if !list
        .get(*index)
        .is_some_and(|m| Arc::ptr_eq(&m.state, state))
    {
        *index = list.iter().position(|m| Arc::ptr_eq(&m.state, state))?;
    }
    Some(list[*index].service.clone())
}

/// Runs one probe: its error, a timeout or a panic is a failure, described for the statistics.
async fn probe_once<K, S, P>(check: &HealthCheck<P>, key: &K, service: S) -> Result<(), String>
where
    P: Probe<K, S>,
{
    let started = catch_unwind(AssertUnwindSafe(|| check.probe.probe(key, &service)));
    // The probe holds what it needs of the service; the loop keeps no clone while it runs.
    drop(service);
    let probe = started.map_err(|panic| panicked(&*panic))?;
    match tokio::time::timeout(check.timeout, AssertUnwindSafe(probe).catch_unwind()).await {
        Err(_) => Err(format!("the probe timed out after {:?}", check.timeout)),
        Ok(Err(panic)) => Err(panicked(&*panic)),
        Ok(Ok(Err(error))) => Err(error.to_string()),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string payload");
    format!("the probe panicked: {message}")
}
