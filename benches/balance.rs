//! Per-request overhead of the balancer, side by side with a direct call and with tower's p2c.
//!
//! Each benchmark measures one `poll_ready` + `call` + polling the response future to completion,
//! over always-ready endpoints that answer at once without allocating, so that what is left is the
//! cost of the routing itself. Futures are polled by hand with a no-op waker: no executor is
//! measured. One criterion group per endpoint count N (3, 100, 1000), each holding:
//!
//! - `direct`: one endpoint called directly, the floor;
//! - `tower_lb_round_robin`: a `tower_lb::Balance` with `RoundRobin`;
//! - `tower_lb_weighted_round_robin`: a `tower_lb::Balance` with `WeightedRoundRobin`, over weights
//!   `1 + i % 5`;
//! - `tower_lb_round_robin_clone_per_request`: a fresh clone of the round robin balancer for every
//!   request, as axum's router does, then `poll_ready` + `call` on the clone;
//! - `tower_p2c_constant`: `tower::balance::p2c::Balance` over a `ServiceList` of the endpoints
//!   wrapped in `tower::load::Constant`, the peer;
//! - `tower_lb_p2c_in_flight` and `tower_p2c_pending_requests`: power of two choices on requests
//!   in flight, tower-lb's `PowerOfTwoChoices` against tower's p2c over `PendingRequests`;
//! - `tower_lb_p2c_peak_ewma` and `tower_p2c_peak_ewma`: the same on peak-EWMA latency (1 ms
//!   default round trip, 10 s decay) against tower's `PeakEwma`.
//!
//! Run it with:
//!
//! ```text
//! cargo bench --bench balance
//! ```
//!
//! Criterion options follow `--`, e.g. a quicker run, or one group only:
//!
//! ```text
//! cargo bench --bench balance -- --warm-up-time 1 --measurement-time 2
//! cargo bench --bench balance -- 'N=1000'
//! ```

use std::{
    convert::Infallible,
    fmt::Debug,
    future::{ready, Future, Ready},
    hint::black_box,
    pin::pin,
    task::{Context, Poll},
    time::Duration,
};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use futures_util::task::noop_waker_ref;
use tower::{
    balance::p2c,
    discover::ServiceList,
    load::{CompleteOnResponse, Constant, PeakEwma, PendingRequests},
};
use tower_layer::Layer;
use tower_lb::{
    strategy::{PowerOfTwoChoices, RoundRobin, WeightedRoundRobin},
    Balance, BalanceLayer, Endpoints,
};
use tower_service::Service;

/// Endpoint counts, one criterion group each.
const SIZES: [usize; 3] = [3, 100, 1000];

/// An always-ready endpoint that answers with its id at once, without allocating.
#[derive(Clone, Copy, Debug)]
struct Endpoint {
    id: u64,
}

impl Service<u64> for Endpoint {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        black_box(request);
        ready(Ok(self.id))
    }
}

fn endpoints(n: usize) -> impl Iterator<Item = Endpoint> {
    (0..n as u64).map(|id| Endpoint { id })
}

/// One request: `poll_ready`, `call`, and the response future polled to completion, all with a
/// no-op waker. Panics if anything is pending or fails, which always-ready endpoints never do.
#[inline(always)]
fn request<S>(service: &mut S, request: u64) -> S::Response
where
    S: Service<u64>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => panic!("poll_ready failed: {e:?}"),
        Poll::Pending => panic!("poll_ready is pending"),
    }
    let future = pin!(service.call(request));
    match future.poll(&mut cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(e)) => panic!("request failed: {e:?}"),
        Poll::Pending => panic!("response is pending"),
    }
}

/// Benchmarks `service` under `name`, one request per iteration.
fn bench_service<S>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut service: S,
) where
    S: Service<u64>,
    S::Error: Debug,
{
    group.bench_function(name, |b| {
        b.iter(|| black_box(request(&mut service, black_box(7))))
    });
}

fn round_robin(n: usize) -> Balance<RoundRobin, usize, Endpoint> {
    let set = Endpoints::from_iter(endpoints(n).enumerate());
    BalanceLayer::new(RoundRobin::new()).layer(set)
}

fn weighted_round_robin(n: usize) -> Balance<WeightedRoundRobin, usize, Endpoint> {
    let set = Endpoints::try_from_weighted(
        endpoints(n)
            .enumerate()
            .map(|(i, endpoint)| (i, endpoint, 1 + (i % 5) as u32)),
    )
    .expect("weights are at least 1");
    BalanceLayer::new(WeightedRoundRobin::new()).layer(set)
}

fn power_of_two_choices(n: usize, peak_ewma: bool) -> Balance<PowerOfTwoChoices, usize, Endpoint> {
    let set = Endpoints::from_iter(endpoints(n).enumerate());
    let mut strategy = PowerOfTwoChoices::seeded(1);
    if peak_ewma {
        strategy = strategy
            .peak_ewma(Duration::from_millis(1), Duration::from_secs(10))
            .expect("valid peak EWMA settings");
    }
    BalanceLayer::new(strategy).layer(set)
}

/// tower's p2c balancer over `n` endpoints wrapped by `wrap`, its discovery fully processed so
/// that it tracks all of them.
fn tower_p2c<L>(n: usize, wrap: impl Fn(Endpoint) -> L) -> p2c::Balance<ServiceList<Vec<L>>, u64>
where
    L: Service<u64> + tower::load::Load,
    L::Metric: std::fmt::Debug,
    L::Error: Into<tower::BoxError>,
{
    let services: Vec<L> = endpoints(n).map(wrap).collect();
    let mut balance = p2c::Balance::new(ServiceList::new::<u64>(services));
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(balance.poll_ready(&mut cx).is_ready());
    assert_eq!(balance.len(), n, "p2c has not discovered every endpoint");
    balance
}

type P2c = p2c::Balance<ServiceList<Vec<Constant<Endpoint, u32>>>, u64>;

fn p2c_constant(n: usize) -> P2c {
    tower_p2c(n, |e| Constant::new(e, 1))
}

/// Checks that the balancers spread requests over the whole set before measuring them.
fn sanity_check(n: usize) {
    let mut rr = round_robin(n);
    let ids: Vec<u64> = (0..n).map(|_| request(&mut rr, 0)).collect();
    assert_eq!(ids, (0..n as u64).collect::<Vec<_>>(), "round robin order");

    let mut wrr = weighted_round_robin(n);
    let period: usize = (0..n).map(|i| 1 + i % 5).sum();
    let mut counts = vec![0usize; n];
    for _ in 0..period {
        counts[request(&mut wrr, 0) as usize] += 1;
    }
    assert!(
        counts.iter().enumerate().all(|(i, &c)| c == 1 + i % 5),
        "weighted round robin counts"
    );

    let mut p2c = p2c_constant(n);
    for _ in 0..n {
        assert!(request(&mut p2c, 0) < n as u64);
    }
}

fn balance(c: &mut Criterion) {
    for n in SIZES {
        sanity_check(n);

        let mut group = c.benchmark_group(format!("poll_ready_call/N={n}"));

        bench_service(&mut group, "direct", Endpoint { id: 0 });
        bench_service(&mut group, "tower_lb_round_robin", round_robin(n));
        bench_service(
            &mut group,
            "tower_lb_weighted_round_robin",
            weighted_round_robin(n),
        );

        let shared = round_robin(n);
        group.bench_function("tower_lb_round_robin_clone_per_request", |b| {
            b.iter(|| {
                let mut balance = shared.clone();
                black_box(request(&mut balance, black_box(7)))
            })
        });

        bench_service(&mut group, "tower_p2c_constant", p2c_constant(n));

        bench_service(
            &mut group,
            "tower_lb_p2c_in_flight",
            power_of_two_choices(n, false),
        );
        bench_service(
            &mut group,
            "tower_p2c_pending_requests",
            tower_p2c(n, |e| {
                PendingRequests::new(e, CompleteOnResponse::default())
            }),
        );
        bench_service(
            &mut group,
            "tower_lb_p2c_peak_ewma",
            power_of_two_choices(n, true),
        );
        bench_service(
            &mut group,
            "tower_p2c_peak_ewma",
            tower_p2c(n, |e| {
                PeakEwma::new(
                    e,
                    Duration::from_millis(1),
                    Duration::from_secs(10).as_nanos() as f64,
                    CompleteOnResponse::default(),
                )
            }),
        );

        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Modest times, so that the whole run stays short; command-line options override them.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = balance
}
criterion_main!(benches);
