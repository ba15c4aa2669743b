//! Active health checks: the checker's schedule and thresholds on tokio's paused clock, its life
//! beside the set, and probes against real loopback servers (axum backends, TCP listeners). The
//! gRPC probes against tonic servers running the real health service are tested beside the tonic
//! example (`examples/tests/grpc_health`), so that tower-lb's own tests never build tonic.

#[path = "../support/mod.rs"]
mod support;

mod clock;
mod http;
mod lifecycle;
mod tcp;
mod tracing_events;

use std::{future::Future, time::Duration};

/// Every wait on a condition ends by then, or fails the test instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `done` holds, checking every millisecond, failing the test after [`DEADLINE`].
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(DEADLINE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}: not within {DEADLINE:?}");
}

/// Awaits `f`, failing the test after [`DEADLINE`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}
