//! The retry policy's table, row by row, against the errors real stacks fail with; its budget
//! and its bound; and retries that skip the endpoints a request already tried.

#[path = "../support/failures.rs"]
mod failures;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use failures::{error_of, Failing};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{
    retry::{budget::TpsBudget, Policy as _},
    service_fn,
    timeout::error::Elapsed,
    util::BoxCloneSyncService,
    Layer, ServiceBuilder, ServiceExt,
};
use tower_lb::{
    key,
    retry::{Attempts, Policy, RetryLayer},
    strategy::{ConsistentHash, RoundRobin, WeightedRoundRobin},
    BalanceLayer, BoxError, Endpoints,
};

type Body = Full<Bytes>;

/// Whether a fresh policy retries a `method` request that ended with `result`.
fn retried(method: Method, result: Result<Response<()>, BoxError>) -> bool {
    let mut policy = Policy::new();
    let mut request = Request::builder().method(method).body(()).unwrap();
    let mut result = result;
    policy.retry(&mut request, &mut result).is_some()
}

/// Whether a fresh policy retries a request of each method that failed as `failing` does.
async fn retried_for(failing: Failing, methods: &[Method]) -> Vec<bool> {
    let mut answers = Vec::new();
    for method in methods {
        let error = error_of::<Body>(failing).await;
        answers.push(retried(method.clone(), Err(error)));
    }
    answers
}

const GET_PUT_POST_PATCH: [Method; 4] = [Method::GET, Method::PUT, Method::POST, Method::PATCH];

#[tokio::test]
async fn nothing_ready_is_retried_for_every_method() {
    let answers = retried_for(Failing::Unavailable, &GET_PUT_POST_PATCH).await;
    assert_eq!(answers, [true; 4]);
}

#[tokio::test]
async fn refused_connections_are_retried_for_every_method() {
    let answers = retried_for(Failing::Refused, &GET_PUT_POST_PATCH).await;
    assert_eq!(answers, [true; 4]);
}

#[tokio::test]
async fn broken_exchanges_are_retried_for_idempotent_methods_only() {
    for failing in [Failing::Reset, Failing::IoTimeout, Failing::Other] {
        let answers = retried_for(failing, &GET_PUT_POST_PATCH).await;
        assert_eq!(answers, [true, true, false, false], "{failing:?}");
    }
    for method in [Method::HEAD, Method::OPTIONS, Method::TRACE, Method::DELETE] {
        assert!(retried(method, Err("reset".into())));
    }
}

#[tokio::test]
async fn a_timeout_below_the_retry_is_retried_for_idempotent_methods_only() {
    let elapsed = || Err(BoxError::from(Elapsed::new()));
    assert!(retried(Method::GET, elapsed()));
    assert!(!retried(Method::POST, elapsed()));
}

#[test]
fn retried_statuses_are_retried_for_idempotent_methods_only() {
    for status in [502, 503, 504] {
        let status = StatusCode::from_u16(status).unwrap();
        let response = || {
            let mut response = Response::new(());
            *response.status_mut() = status;
            Ok(response)
        };
        assert!(retried(Method::GET, response()), "{status}");
        assert!(retried(Method::DELETE, response()), "{status}");
        assert!(!retried(Method::POST, response()), "{status}");
    }
}

#[test]
fn other_responses_are_not_retried() {
    for status in [200, 204, 301, 400, 404, 429, 500, 501] {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        assert!(!retried(Method::GET, Ok(response)), "{status}");
    }
}

#[tokio::test]
async fn balancer_and_configuration_errors_are_never_retried() {
    for failing in [
        Failing::Empty,
        Failing::AllEjected,
        Failing::MissingKey,
        Failing::Config,
        Failing::NotReady,
    ] {
        let answers = retried_for(failing, &GET_PUT_POST_PATCH).await;
        assert_eq!(answers, [false; 4], "{failing:?}");
    }
}

#[test]
fn idempotent_methods_and_statuses_can_be_replaced() {
    let policy = Policy::new()
        .idempotent_methods([Method::POST])
        .statuses([StatusCode::TOO_MANY_REQUESTS]);
    let retry = |method: Method, result: Result<Response<()>, BoxError>| {
        let mut request = Request::builder().method(method).body(()).unwrap();
        let mut result = result;
        policy.clone().retry(&mut request, &mut result).is_some()
    };
    assert!(retry(Method::POST, Err("reset".into())));
    assert!(!retry(Method::GET, Err("reset".into())));
    let mut too_many = Response::new(());
    *too_many.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    assert!(retry(Method::POST, Ok(too_many)));
    let mut unavailable = Response::new(());
    *unavailable.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    assert!(!retry(Method::POST, Ok(unavailable)));
}

/// The policy's copy of `request`, kept for a retry.
fn copy(policy: &mut Policy, request: &Request<()>) -> Option<Request<()>> {
    tower::retry::Policy::<_, Response<()>, BoxError>::clone_request(policy, request)
}

#[test]
fn a_request_is_retried_at_most_the_configured_times() {
    let mut policy = Policy::new().retries(3);
    let mut request = Request::get("/").body(()).unwrap();
    let mut retries = 0;
    loop {
        assert!(copy(&mut policy, &request).is_some() || retries == 3);
        let mut result: Result<Response<()>, BoxError> = Err("reset".into());
        if policy.retry(&mut request, &mut result).is_none() {
            break;
        }
        retries += 1;
    }
    assert_eq!(retries, 3);
    // No retry left: no copy of the request is kept for one.
    assert!(copy(&mut policy, &request).is_none());
}

#[test]
fn the_budget_stops_retries_once_spent() {
    // No reserve; every deposit is worth half a retry.
    let budget = Arc::new(TpsBudget::new(Duration::from_secs(60), 0, 0.5));
    let template = Policy::new().budget(budget);
    let mut retries = 0;
    for _ in 0..10 {
        // tower's retry clones the policy for every request.
        let mut policy = template.clone();
        let mut request = Request::get("/").body(()).unwrap();
        let mut result: Result<Response<()>, BoxError> = Err("reset".into());
        if policy.retry(&mut request, &mut result).is_some() {
            retries += 1;
        }
    }
    assert_eq!(retries, 5);

    // A budget with nothing in it allows no retry at all.
    let empty = Arc::new(TpsBudget::new(Duration::from_secs(60), 0, 0.0));
    let mut policy = Policy::new().budget(empty);
    let mut request = Request::get("/").body(()).unwrap();
    let mut result: Result<Response<()>, BoxError> = Err("reset".into());
    assert!(policy.retry(&mut request, &mut result).is_none());
}

// ---- retries skip the endpoints already tried ----

type Endpoint = BoxCloneSyncService<Request<Body>, Response<&'static str>, BoxError>;

/// An endpoint answering its name, or failing while `down` says so; counts its calls.
#[derive(Clone)]
struct Named {
    name: &'static str,
    calls: Arc<AtomicUsize>,
    down: Arc<Mutex<bool>>,
}

impl Named {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            calls: Arc::default(),
            down: Arc::default(),
        }
    }

    fn down(self) -> Self {
        *self.down.lock().unwrap() = true;
        self
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    fn endpoint(&self) -> Endpoint {
        let this = self.clone();
        BoxCloneSyncService::new(service_fn(move |_req: Request<Body>| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::Relaxed);
                if *this.down.lock().unwrap() {
                    Err(BoxError::from(format!(
                        "{} reset the connection",
                        this.name
                    )))
                } else {
                    Ok(Response::new(this.name))
                }
            }
        }))
    }
}

fn set_of(named: &[Named]) -> Endpoints<&'static str, Endpoint> {
    Endpoints::from_iter(named.iter().map(|n| (n.name, n.endpoint())))
}

fn get(key: &str) -> Request<Body> {
    Request::get(format!("/?key={key}"))
        .body(Body::default())
        .unwrap()
}

/// A key that `ConsistentHash` on the `key` parameter routes to `owner` in `set`.
fn key_of(set: &Endpoints<&'static str, Endpoint>, owner: &str) -> String {
    let balance = BalanceLayer::new(ConsistentHash::new(key::query("key"))).layer(set.clone());
    (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| balance.endpoint_for_key(k) == Some(owner))
        .unwrap()
}

#[tokio::test]
async fn a_keyed_retry_goes_to_the_keys_next_endpoints_never_back() {
    let [a, b, c] = [Named::new("a"), Named::new("b"), Named::new("c")];
    let set = set_of(&[a.clone(), b.clone(), c.clone()]);
    let key = key_of(&set, "a");
    let strategy = ConsistentHash::new(key::query("key"));
    let balance = BalanceLayer::new(strategy.clone())
        .skip_tried_endpoints()
        .layer(set.clone());
    // The key's candidates in order: its endpoint, then the one its keys go to without it.
    let without_a = set_of(&[b.clone(), c.clone()]);
    let second = BalanceLayer::new(strategy)
        .layer(without_a)
        .endpoint_for_key(&key)
        .unwrap();
    let client = RetryLayer::new(Policy::new()).layer(balance);

    *a.down.lock().unwrap() = true;
    let response = client.clone().oneshot(get(&key)).await.unwrap();
    assert_eq!(*response.body(), second);
    assert_eq!(a.calls(), 1);

    // With its second endpoint down too, the last attempt goes to the third: each tried once.
    let [second, third] = if second == "b" { [&b, &c] } else { [&c, &b] };
    *second.down.lock().unwrap() = true;
    let response = client.clone().oneshot(get(&key)).await.unwrap();
    assert_eq!(*response.body(), third.name);
    assert_eq!((a.calls(), second.calls(), third.calls()), (2, 2, 1));
}

#[tokio::test]
async fn without_skipping_a_keyed_retry_goes_back_to_the_same_endpoint() {
    let [a, b, c] = [Named::new("a").down(), Named::new("b"), Named::new("c")];
    let set = set_of(&[a.clone(), b.clone(), c.clone()]);
    let key = key_of(&set, "a");
    let balance = BalanceLayer::new(ConsistentHash::new(key::query("key"))).layer(set);
    let client = RetryLayer::new(Policy::new()).layer(balance);

    let error = client.oneshot(get(&key)).await.unwrap_err();
    assert_eq!(error.to_string(), "a reset the connection");
    assert_eq!((a.calls(), b.calls(), c.calls()), (3, 0, 0));
}

#[tokio::test]
async fn a_keyless_retry_whose_turn_it_already_tried_walks_on() {
    // Weights 3 and 1: the rotation hands out a, a, b, a.
    let [a, b] = [Named::new("a").down(), Named::new("b")];
    let set =
        Endpoints::try_from_weighted([("a", a.endpoint(), 3), ("b", b.endpoint(), 1)]).unwrap();
    let balance = BalanceLayer::new(WeightedRoundRobin::new())
        .skip_tried_endpoints()
        .layer(set);
    let client = RetryLayer::new(Policy::new()).layer(balance);

    // The first attempt takes a's turn and fails; the retry's turn is a's again: it is released
    // and the request goes on to b.
    let response = client.clone().oneshot(get("x")).await.unwrap();
    assert_eq!(*response.body(), "b");
    assert_eq!((a.calls(), b.calls()), (1, 1));
}

#[tokio::test]
async fn a_reservation_on_an_endpoint_the_request_tried_is_released() {
    let [a, b, c] = [Named::new("a"), Named::new("b"), Named::new("c")];
    let set = set_of(&[a.clone(), b.clone(), c.clone()]);
    let layer = BalanceLayer::new(RoundRobin::new()).skip_tried_endpoints();

    // One balancer sends a request to a, its first turn, noting a in the request's record.
    let attempts = Attempts::new();
    let mut request = get("x");
    request.extensions_mut().insert(attempts.clone());
    let response = layer.layer(set.clone()).oneshot(request).await.unwrap();
    assert_eq!((*response.body(), attempts.len()), ("a", 1));

    // A fresh balancer over the same set reserves a too, its first turn: the request that tried a
    // goes on to b.
    let mut retry = get("x");
    retry.extensions_mut().insert(attempts.clone());
    let response = layer.layer(set.clone()).oneshot(retry).await.unwrap();
    assert_eq!((*response.body(), attempts.len()), ("b", 2));
    assert_eq!((a.calls(), b.calls(), c.calls()), (1, 1, 0));
    // Without the record, that balancer's next turn is b's, and the one after c's.
    let balance = layer.layer(set);
    assert_eq!(
        *balance.clone().oneshot(get("x")).await.unwrap().body(),
        "a"
    );
    assert_eq!(
        *balance.clone().oneshot(get("x")).await.unwrap().body(),
        "b"
    );
}

#[tokio::test]
async fn when_every_endpoint_was_tried_the_retry_goes_where_a_first_attempt_would() {
    let [a, b] = [Named::new("a").down(), Named::new("b").down()];
    let set = set_of(&[a.clone(), b.clone()]);
    let key = key_of(&set, "a");
    let balance = BalanceLayer::new(ConsistentHash::new(key::query("key")))
        .skip_tried_endpoints()
        .layer(set);
    let client = RetryLayer::new(Policy::new().retries(3)).layer(balance);

    let attempts = Attempts::new();
    let mut request = get(&key);
    request.extensions_mut().insert(attempts.clone());
    let error = client.oneshot(request).await.unwrap_err();
    // a, b, then the key's endpoint again each time.
    assert_eq!(error.to_string(), "a reset the connection");
    assert_eq!((a.calls(), b.calls()), (3, 1));
    assert_eq!(attempts.len(), 4);
}

#[tokio::test]
async fn the_record_survives_a_timeout_between_retry_and_balancer() {
    // A per-attempt timeout below the retry: the retry's copy of the request still shares the
    // record with the attempt that timed out.
    let stalled = BoxCloneSyncService::new(service_fn(|_req: Request<Body>| async {
        std::future::pending::<Result<Response<&'static str>, BoxError>>().await
    }));
    let b = Named::new("b");
    let set = Endpoints::from_iter([("a", stalled), ("b", b.endpoint())]);
    let key = key_of(&set, "a");
    let balance = BalanceLayer::new(ConsistentHash::new(key::query("key")))
        .skip_tried_endpoints()
        .layer(set);
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(Policy::new()))
        .timeout(Duration::from_millis(50))
        .service(balance);
    let response = client.oneshot(get(&key)).await.unwrap();
    assert_eq!(*response.body(), "b");
}
