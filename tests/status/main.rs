//! Every way a request through the balancer fails, as an HTTP status through axum's
//! `HandleErrorLayer` with `tower_lb::http::handle_error`. The same failures as gRPC statuses
//! through a tonic client are tested in the examples package (`grpc_status`), which has tonic.

#[path = "../support/failures.rs"]
mod failures;

use axum::{body::Body, error_handling::HandleErrorLayer, Router};
use failures::{request_for, stack, Failing};
use http::StatusCode;
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::http::handle_error;

/// The HTTP status each failure maps to, and a piece of the body's message.
fn expected(failing: Failing) -> (StatusCode, &'static str) {
    match failing {
        Failing::Empty => (StatusCode::SERVICE_UNAVAILABLE, "the endpoint set is empty"),
        Failing::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "no endpoint is available"),
        Failing::AllEjected => (StatusCode::SERVICE_UNAVAILABLE, "are ejected"),
        Failing::MissingKey => (StatusCode::BAD_REQUEST, "no routing key"),
        Failing::Config => (StatusCode::INTERNAL_SERVER_ERROR, "invalid table size"),
        Failing::NotReady => (StatusCode::INTERNAL_SERVER_ERROR, "before `poll_ready`"),
        Failing::Elapsed => (StatusCode::GATEWAY_TIMEOUT, "request timed out"),
        Failing::Refused => (StatusCode::BAD_GATEWAY, "client error (Connect)"),
        Failing::Reset => (StatusCode::BAD_GATEWAY, "client error"),
        Failing::IoTimeout => (StatusCode::GATEWAY_TIMEOUT, "timed out"),
        Failing::Other => (StatusCode::BAD_GATEWAY, "the backend's own error"),
    }
}

#[tokio::test]
async fn every_failure_has_its_http_status_through_axum() {
    let mut app = Router::new();
    for failing in Failing::ALL {
        let route = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(handle_error))
            .service(stack::<Body>(failing).await);
        app = app.route_service(&format!("/{failing:?}"), route);
    }
    for failing in Failing::ALL {
        let request = request_for::<Body>(failing, &format!("/{failing:?}"));
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        let (code, message) = expected(failing);
        assert_eq!(status, code, "{failing:?}: {body}");
        assert!(body.contains(message), "{failing:?}: {body}");
    }
}
