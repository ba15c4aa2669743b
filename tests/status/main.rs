//! Every way a request through the balancer fails, as an HTTP status through axum's
//! `HandleErrorLayer` with `tower_lb::http::handle_error`, and as a gRPC status through a tonic
//! client with `tower_lb::http::grpc_status`.

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

#[cfg(feature = "tonic")]
mod grpc {
    use std::error::Error;

    use http::uri::PathAndQuery;
    use tonic::{client::Grpc, Code, Status};
    use tonic_prost::ProstCodec;
    use tower::util::BoxCloneSyncService;
    use tower_lb::http::grpc_status;

    use super::*;

    type GrpcStack = BoxCloneSyncService<
        http::Request<tonic::body::Body>,
        http::Response<tonic::body::Body>,
        Status,
    >;

    /// Calls a method with an empty message through `stack`, with the `x-key` metadata unless
    /// the failure is its absence.
    async fn call(failing: Failing, stack: GrpcStack) -> Status {
        let mut grpc = Grpc::new(stack);
        grpc.ready().await.unwrap();
        let mut request = tonic::Request::new(());
        if failing != Failing::MissingKey {
            request
                .metadata_mut()
                .insert(failures::KEY, "k".parse().unwrap());
        }
        let path = PathAndQuery::from_static("/test.Test/Call");
        let codec = ProstCodec::<(), ()>::default();
        grpc.unary(request, path, codec).await.unwrap_err()
    }

    fn expected_code(failing: Failing) -> Code {
        match failing {
            Failing::Empty | Failing::Unavailable | Failing::AllEjected => Code::Unavailable,
            Failing::MissingKey => Code::InvalidArgument,
            Failing::Config | Failing::NotReady => Code::Internal,
            Failing::Elapsed => Code::DeadlineExceeded,
            Failing::Refused | Failing::Reset | Failing::IoTimeout | Failing::Other => {
                Code::Unavailable
            }
        }
    }

    #[tokio::test]
    async fn every_failure_has_its_grpc_status_through_tonic() {
        for failing in Failing::ALL {
            let stack = ServiceBuilder::new()
                .map_err(grpc_status)
                .service(stack::<tonic::body::Body>(failing).await);
            let status = call(failing, BoxCloneSyncService::new(stack)).await;
            assert_eq!(
                status.code(),
                expected_code(failing),
                "{failing:?}: {status:?}"
            );
            // The error stays reachable as the status's source.
            let source = status.source().expect("the error as the source");
            let mut chain = source.to_string();
            let mut cause = source.source();
            while let Some(error) = cause {
                chain += &format!(": {error}");
                cause = error.source();
            }
            let message = super::expected(failing).1;
            assert!(chain.contains(message), "{failing:?}: {chain}");
        }
    }

    #[tokio::test]
    async fn an_endpoints_own_status_reaches_the_caller() {
        let denied = BoxCloneSyncService::new(tower::service_fn(
            |_req: http::Request<tonic::body::Body>| async {
                Err::<http::Response<tonic::body::Body>, tower_lb::BoxError>(
                    Status::permission_denied("no").into(),
                )
            },
        ));
        let set = tower_lb::Endpoints::from_iter([("a", denied)]);
        let balance = tower::Layer::layer(
            &tower_lb::BalanceLayer::new(tower_lb::strategy::RoundRobin::new()),
            set,
        );
        let stack = ServiceBuilder::new().map_err(grpc_status).service(balance);
        let status = call(Failing::Other, BoxCloneSyncService::new(stack)).await;
        assert_eq!(
            (status.code(), status.message()),
            (Code::PermissionDenied, "no")
        );
    }
}
