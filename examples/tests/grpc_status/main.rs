//! Every way a request through the balancer fails, as a gRPC status through a tonic client with
//! `tower_lb::http::grpc_status` (`tonic` feature). The same failures as HTTP statuses are
//! tested in tower-lb's `status` test; this one lives here, beside the tonic example, so that
//! tower-lb's own tests never build tonic.

#[path = "../../../tests/support/failures.rs"]
mod failures;

use failures::{stack, Failing};
use tower::ServiceBuilder;

/// A piece of the message of each failure's error.
fn expected_message(failing: Failing) -> &'static str {
    match failing {
        Failing::Empty => "the endpoint set is empty",
        Failing::Unavailable => "no endpoint is available",
        Failing::AllEjected => "are ejected",
        Failing::MissingKey => "no routing key",
        Failing::Config => "invalid table size",
        Failing::NotReady => "before `poll_ready`",
        Failing::Elapsed => "request timed out",
        Failing::Refused => "client error (Connect)",
        Failing::Reset => "client error",
        Failing::IoTimeout => "timed out",
        Failing::Other => "the backend's own error",
    }
}

use std::error::Error;

use http::uri::PathAndQuery;
use tonic::{client::Grpc, Code, Status};
use tonic_prost::ProstCodec;
use tower::util::BoxCloneSyncService;
use tower_lb::http::grpc_status;

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
        let message = expected_message(failing);
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
