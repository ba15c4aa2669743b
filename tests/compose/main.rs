#[path = "../support/mod.rs"]
mod support;

use std::{future::Ready, time::Duration};

use support::{mocks, Mock};
use tower::{retry::Policy, timeout::error::Elapsed, Layer, Service, ServiceBuilder, ServiceExt};
use tower_lb::{strategy::RoundRobin, Balance, BalanceLayer, BoxError, Endpoints};

/// Retries a failed request up to `attempts` more times.
#[derive(Clone)]
struct RetryErrors {
    attempts: usize,
}

impl Policy<(), &'static str, BoxError> for RetryErrors {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut (),
        result: &mut Result<&'static str, BoxError>,
    ) -> Option<Self::Future> {
        if result.is_err() && self.attempts > 0 {
            self.attempts -= 1;
            Some(std::future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, _req: &()) -> Option<()> {
        Some(())
    }
}

fn set_of(endpoints: &[Mock]) -> Endpoints<&'static str, Mock> {
    Endpoints::from_iter(endpoints.iter().map(|m| (m.name(), m.clone())))
}

#[tokio::test]
async fn retry_after_an_endpoint_error_lands_on_the_next_endpoint() {
    let [a, b, c] = mocks(["a", "b", "c"]);
    a.fail_calls(true);
    let svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .retry(RetryErrors { attempts: 2 })
        .layer(BalanceLayer::new(RoundRobin::new()))
        .service(set_of(&[a.clone(), b.clone(), c.clone()]));

    assert_eq!(svc.clone().oneshot(()).await.unwrap(), "b");
    assert_eq!((a.calls(), b.calls(), c.calls()), (1, 1, 0));
    // The rotation went on from where the retry left it.
    assert_eq!(svc.clone().oneshot(()).await.unwrap(), "c");
}

#[tokio::test]
async fn endpoint_errors_pass_through_when_retries_run_out() {
    let endpoints = mocks(["a", "b"]);
    for m in &endpoints {
        m.fail_calls(true);
    }
    let svc = ServiceBuilder::new()
        .retry(RetryErrors { attempts: 1 })
        .layer(BalanceLayer::new(RoundRobin::new()))
        .service(set_of(&endpoints));
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(err.to_string(), "b failed");
}

#[tokio::test(start_paused = true)]
async fn timeout_above_the_balancer_bounds_a_slow_endpoint() {
    let [a] = mocks(["a"]);
    a.hold(true);
    let svc = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .layer(BalanceLayer::new(RoundRobin::new()))
        .service(set_of(std::slice::from_ref(&a)));
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    // The dropped response future released the request.
    assert_eq!(a.in_flight(), 0);
}

#[test]
fn balance_and_its_future_are_send_sync_and_clone() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    fn send<T: Send>(_: &T) {}
    send_sync_clone::<Balance<RoundRobin, &'static str, Mock>>();
    send_sync_clone::<BalanceLayer<RoundRobin>>();
    send_sync_clone::<Endpoints<String, Mock>>();

    let mut svc = BalanceLayer::new(RoundRobin::new()).layer(set_of(&mocks(["a"])));
    send(&svc.call(()));
}

#[tokio::test]
async fn clones_share_one_set_and_one_cursor() {
    let set = set_of(&mocks(["a", "b"]));
    let svc = BalanceLayer::new(RoundRobin::new()).layer(set);
    let clone = svc.clone();
    // The clone sees a change made through the original's handle...
    svc.endpoints().insert("c", Mock::new("c"));
    assert_eq!(clone.endpoints().len(), 3);
    // ...and continues the original's rotation.
    assert_eq!(svc.clone().oneshot(()).await.unwrap(), "a");
    assert_eq!(clone.clone().oneshot(()).await.unwrap(), "b");
    assert_eq!(svc.clone().oneshot(()).await.unwrap(), "c");
}
