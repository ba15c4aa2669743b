use std::{error::Error, fmt::Write};

use ::http::StatusCode;

use crate::{
    failure::{chain, failure, Failure},
    BoxError,
};

/// The HTTP status a gateway answers when a request through the balancer failed with `error`.
///
/// The error's source chain is read outermost first, and the first cause that tells decides:
///
/// | error | status |
/// |---|---|
/// | [`NoEndpoints`](crate::error::NoEndpoints): the set is empty | 503 Service Unavailable |
/// | [`Unavailable`](crate::error::Unavailable): no endpoint ready or eligible, all ejected included | 503 Service Unavailable |
/// | [`MissingKey`](crate::error::MissingKey): no routing key in the request | 400 Bad Request |
/// | [`InvalidConfig`](crate::error::InvalidConfig): the balancer cannot route with its configuration | 500 Internal Server Error |
/// | [`NotReady`](crate::error::NotReady): the balancer was called before it was ready | 500 Internal Server Error |
/// | tower's `Elapsed`, tonic's `TimeoutExpired` (`tonic` feature): a timeout fired | 504 Gateway Timeout |
/// | a connection or I/O timeout (`std::io::ErrorKind::TimedOut` among the causes) | 504 Gateway Timeout |
/// | any other error: the endpoint or its connection failed (refused, reset, a protocol error) | 502 Bad Gateway |
///
/// # Examples
///
/// ```
/// use http::StatusCode;
/// use tower::{Layer, ServiceExt};
/// use tower_lb::{http::status_code, strategy::RoundRobin, BalanceLayer, BoxError, Endpoints};
///
/// # tokio_test::block_on(async {
/// let empty: Endpoints<&str, tower::util::BoxCloneSyncService<(), (), BoxError>> =
///     Endpoints::new();
/// let error = BalanceLayer::new(RoundRobin::new()).layer(empty).oneshot(()).await.unwrap_err();
/// assert_eq!(status_code(&*error), StatusCode::SERVICE_UNAVAILABLE);
///
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// assert_eq!(status_code(&refused), StatusCode::BAD_GATEWAY);
/// # });
/// ```
pub fn status_code(error: &(dyn Error + 'static)) -> StatusCode {
    match failure(error) {
        Failure::Empty | Failure::Unavailable | Failure::AllEjected => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Failure::MissingKey => StatusCode::BAD_REQUEST,
        Failure::Config | Failure::NotReady => StatusCode::INTERNAL_SERVER_ERROR,
        Failure::Elapsed
        | Failure::Connect { timed_out: true }
        | Failure::Exchange { timed_out: true } => StatusCode::GATEWAY_TIMEOUT,
        Failure::Connect { timed_out: false } | Failure::Exchange { timed_out: false } => {
            StatusCode::BAD_GATEWAY
        }
    }
}

/// A handler for axum's `HandleErrorLayer`: the [`status_code`] of the error, and its message
/// with its causes (`"client error (Connect): tcp connect error: Connection refused"`) as the
/// body.
///
/// The body tells a client which backend failed and how; a public gateway that should not say
/// that writes its own handler around [`status_code`].
///
/// # Examples
///
/// ```
/// use axum::{body::Body, error_handling::HandleErrorLayer, http::StatusCode, Router};
/// use http::Request;
/// use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
/// use tower_lb::{http::handle_error, strategy::RoundRobin, BalanceLayer, BoxError, Endpoints};
///
/// type Backend = BoxCloneSyncService<Request<Body>, http::Response<Body>, BoxError>;
///
/// # tokio_test::block_on(async {
/// let empty: Endpoints<String, Backend> = Endpoints::new();
/// let api = ServiceBuilder::new()
///     .layer(HandleErrorLayer::new(handle_error))
///     .layer(BalanceLayer::new(RoundRobin::new()))
///     .service(empty);
/// let app: Router = Router::new().route_service("/api", api);
///
/// let response = app.oneshot(Request::get("/api").body(Body::empty())?).await?;
/// assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
/// # Ok::<(), BoxError>(())
/// # }).unwrap();
/// ```
pub async fn handle_error(error: BoxError) -> (StatusCode, String) {
    (status_code(&*error), message(&*error))
}

/// `error`'s message followed by its causes', each once.
pub(crate) fn message(error: &(dyn Error + 'static)) -> String {
    let mut message = String::new();
    for cause in chain(error) {
        let text = cause.to_string();
        // Some errors repeat their source's message in their own.
        if message.ends_with(&text) || text.is_empty() {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        let _ = write!(message, "{text}");
    }
    message
}

/// The gRPC status of a call through the balancer that failed with `error`, keeping `error` as its
/// [`source`](tonic::Status::source) so that callers can still downcast it.
///
/// | error | code |
/// |---|---|
/// | [`NoEndpoints`](crate::error::NoEndpoints), [`Unavailable`](crate::error::Unavailable): no endpoint to send the call to | `UNAVAILABLE` |
/// | [`MissingKey`](crate::error::MissingKey): no routing key in the call's metadata | `INVALID_ARGUMENT` |
/// | [`InvalidConfig`](crate::error::InvalidConfig), [`NotReady`](crate::error::NotReady) | `INTERNAL` |
/// | tower's `Elapsed`, tonic's `TimeoutExpired`: the deadline passed | `DEADLINE_EXCEEDED` |
/// | a `tonic::Status` among the causes (the endpoint failed with one) | that status |
/// | an error tonic maps itself (its `ConnectError`, hyper's errors with tonic's transport) | tonic's mapping |
/// | any other error of an endpoint: a refused or broken connection, a protocol error | `UNAVAILABLE`, as gRPC maps transport failures: a gRPC endpoint's own answers, failures included, come as responses |
///
/// # Examples
///
/// ```
/// use std::error::Error;
/// use tonic::Code;
/// use tower::{Layer, ServiceExt};
/// use tower_lb::{error::NoEndpoints, http::grpc_status, strategy::RoundRobin, BalanceLayer,
///     BoxError, Endpoints};
///
/// # tokio_test::block_on(async {
/// let empty: Endpoints<&str, tower::util::BoxCloneSyncService<(), (), BoxError>> =
///     Endpoints::new();
/// let error = BalanceLayer::new(RoundRobin::new()).layer(empty).oneshot(()).await.unwrap_err();
/// let status = grpc_status(error);
/// assert_eq!(status.code(), Code::Unavailable);
/// assert!(status.source().unwrap().is::<NoEndpoints>());
/// # });
/// ```
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub fn grpc_status(error: BoxError) -> tonic::Status {
    use tonic::{Code, Status};

    let code = match failure(&*error) {
        Failure::Empty | Failure::Unavailable | Failure::AllEjected => Code::Unavailable,
        Failure::MissingKey => Code::InvalidArgument,
        Failure::Config | Failure::NotReady => Code::Internal,
        Failure::Elapsed => Code::DeadlineExceeded,
        Failure::Connect { .. } | Failure::Exchange { .. } => {
            // The endpoint's own status if it failed with one, what tonic makes of the error if
            // it knows it; a transport failure otherwise.
            return Status::try_from_error(error).unwrap_or_else(|error| {
                let mut status = Status::new(Code::Unavailable, message(&*error));
                status.set_source(std::sync::Arc::from(error));
                status
            });
        }
    };
    let mut status = Status::new(code, message(&*error));
    status.set_source(std::sync::Arc::from(error));
    status
}
