//! The request path allocates nothing: with endpoints that do not allocate, routing requests
//! through `Balance` (ready, call, response) performs no heap allocation.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    convert::Infallible,
    future::Future,
    pin::pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{header::HeaderName, Request};
use tower::{Layer, Service};
use tower_lb::{
    health::OutlierDetection,
    key,
    retry::Attempts,
    strategy::{
        ConsistentHash, Hash, Maglev, PowerOfTwoChoices, Random, RoundRobin, WeightedRoundRobin,
    },
    BalanceLayer, Endpoints,
};

/// Counts the allocations made by the current thread while counting is on.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// An always-ready endpoint that does not allocate.
#[derive(Clone)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

impl Service<Request<()>> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        std::future::ready(Ok(req.headers().len() as u64))
    }
}

/// Routes the given requests through `svc`, one clone per request when asked.
fn route_keyed<S>(svc: &mut S, requests: Vec<Request<()>>, clone_per_request: bool)
where
    S: Service<Request<()>, Response = u64> + Clone,
    S::Error: std::fmt::Debug,
{
    // The endpoint answers with the number of headers: one, the key.
    send_all(svc, requests.into_iter().map(|r| (r, 1)), clone_per_request);
}

fn keyed_requests(count: usize) -> Vec<Request<()>> {
    (0..count)
        .map(|i| {
            Request::builder()
                .uri(format!("/item?key=user-{i}"))
                .header("x-key", format!("user-{i}"))
                .body(())
                .unwrap()
        })
        .collect()
}

#[test]
fn keyed_routing_allocates_nothing() {
    let set = Endpoints::from_iter((0..100u32).map(|i| (format!("10.0.0.{i}:80"), Echo)));
    let header = || key::header(HeaderName::from_static("x-key"));
    let mut hash = BalanceLayer::new(Hash::new(key::query("key").or("default"))).layer(set.clone());
    let mut ring = BalanceLayer::new(ConsistentHash::new(header())).layer(set.clone());
    let mut bounded = BalanceLayer::new(ConsistentHash::new(header()).bounded_load(1.25).unwrap())
        .layer(set.clone());
    let mut maglev = BalanceLayer::new(Maglev::new(header())).layer(set.clone());
    let mut ring_with_health = BalanceLayer::new(ConsistentHash::new(header()))
        .outlier_detection(OutlierDetection::new())
        .layer(set.clone());

    for clone_per_request in [false, true] {
        assert_keyed_routing_allocates_nothing(&mut hash, "hash", clone_per_request);
        assert_keyed_routing_allocates_nothing(&mut ring, "consistent hash", clone_per_request);
        assert_keyed_routing_allocates_nothing(&mut bounded, "bounded load", clone_per_request);
        assert_keyed_routing_allocates_nothing(&mut maglev, "maglev", clone_per_request);
        assert_keyed_routing_allocates_nothing(
            &mut ring_with_health,
            "consistent hash with outlier detection",
            clone_per_request,
        );
    }
}

#[test]
fn routing_requests_that_carry_a_record_of_attempts_allocates_nothing() {
    let set = Endpoints::from_iter((0..100u32).map(|i| (format!("10.0.0.{i}:80"), Echo)));
    let header = || key::header(HeaderName::from_static("x-key"));
    let mut ring = BalanceLayer::new(ConsistentHash::new(header()))
        .outlier_detection(OutlierDetection::new())
        .skip_tried_endpoints()
        .layer(set.clone());
    let mut round_robin = BalanceLayer::new(RoundRobin::new())
        .skip_tried_endpoints()
        .layer(set);
    // The records are made with the requests, as `retry::RetryLayer` makes them above the
    // balancer; the balancer notes each request's endpoint in its record.
    let requests = |count| {
        let mut requests = keyed_requests(count);
        for request in &mut requests {
            request.extensions_mut().insert(Attempts::new());
        }
        requests
    };
    fn assert_none<S>(svc: &mut S, requests: impl Fn(usize) -> Vec<Request<()>>, name: &str)
    where
        S: Service<Request<()>, Response = u64> + Clone,
        S::Error: std::fmt::Debug,
    {
        for clone_per_request in [false, true] {
            route_keyed(svc, requests(100), clone_per_request);
            let batch = requests(10_000);
            let allocations = allocations_during(|| route_keyed(svc, batch, clone_per_request));
            assert_eq!(
                allocations, 0,
                "{name}, clone per request: {clone_per_request}"
            );
        }
    }
    assert_none(&mut ring, requests, "consistent hash");
    assert_none(&mut round_robin, requests, "round robin");
}

/// Warms `svc` up, then routes 10,000 keyed requests (built beforehand) counting allocations.
fn assert_keyed_routing_allocates_nothing<S>(svc: &mut S, name: &str, clone_per_request: bool)
where
    S: Service<Request<()>, Response = u64> + Clone,
    S::Error: std::fmt::Debug,
{
    route_keyed(svc, keyed_requests(100), clone_per_request);
    let requests = keyed_requests(10_000);
    let allocations = allocations_during(|| route_keyed(svc, requests, clone_per_request));
    assert_eq!(
        allocations, 0,
        "{name}, clone per request: {clone_per_request}"
    );
}

fn route<S>(svc: &mut S, requests: u64, clone_per_request: bool)
where
    S: Service<u64, Response = u64> + Clone,
    S::Error: std::fmt::Debug,
{
    send_all(svc, (0..requests).map(|i| (i, i)), clone_per_request);
}

/// Sends each request through `svc` (a fresh clone per request when asked) and checks the answer
/// against the one expected with it.
fn send_all<S, R>(svc: &mut S, requests: impl Iterator<Item = (R, u64)>, clone_per_request: bool)
where
    S: Service<R, Response = u64> + Clone,
    S::Error: std::fmt::Debug,
{
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for (request, expected) in requests {
        let mut clone;
        let svc = if clone_per_request {
            clone = svc.clone();
            &mut clone
        } else {
            &mut *svc
        };
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let fut = pin!(svc.call(request));
        match fut.poll(&mut cx) {
            Poll::Ready(Ok(answer)) => assert_eq!(answer, expected),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn routing_requests_allocates_nothing() {
    let set = Endpoints::try_from_weighted((0..100u32).map(|i| (i, Echo, 1 + i % 7))).unwrap();
    let detection = OutlierDetection::builder()
        .slow_start(Duration::from_secs(5))
        .build()
        .unwrap();
    let peak_ewma = PowerOfTwoChoices::new()
        .peak_ewma(Duration::from_millis(1), Duration::from_secs(10))
        .unwrap();

    for clone_per_request in [false, true] {
        let run = |name: &str, svc: &mut dyn FnMut(u64)| {
            // Warm-up: first use of thread-locals, lazily built state.
            svc(100);
            let allocations = allocations_during(|| svc(10_000));
            assert_eq!(
                allocations, 0,
                "{name}, clone per request: {clone_per_request}"
            );
        };
        let mut rr = BalanceLayer::new(RoundRobin::new()).layer(set.clone());
        run("round robin", &mut |n| route(&mut rr, n, clone_per_request));
        let mut wrr = BalanceLayer::new(WeightedRoundRobin::new()).layer(set.clone());
        run("weighted", &mut |n| route(&mut wrr, n, clone_per_request));
        let mut p2c = BalanceLayer::new(PowerOfTwoChoices::new()).layer(set.clone());
        run("p2c", &mut |n| route(&mut p2c, n, clone_per_request));
        let mut ewma = BalanceLayer::new(peak_ewma.clone()).layer(set.clone());
        run("p2c peak ewma", &mut |n| {
            route(&mut ewma, n, clone_per_request)
        });
        let mut random = BalanceLayer::new(Random::new()).layer(set.clone());
        run("random", &mut |n| route(&mut random, n, clone_per_request));
        // Passive health on: outcomes recorded, loads compared, without allocating.
        let mut healthy = BalanceLayer::new(PowerOfTwoChoices::new())
            .outlier_detection(detection.clone())
            .layer(set.clone());
        run("p2c with outlier detection", &mut |n| {
            route(&mut healthy, n, clone_per_request)
        });
    }

    // The counter is live: a change of membership does allocate (a new snapshot), off the
    // request path.
    assert!(
        allocations_during(|| {
            set.insert(1000, Echo);
        }) > 0
    );
}
