//! HTTP and gRPC glue: endpoints bound to one backend, and the balancer's errors as HTTP statuses
//! and gRPC statuses.
//!
//! - [`Origin`] wraps an HTTP client (any `Service<http::Request<B>>`) and sends every request to
//!   one backend, rewriting the scheme and authority of its URI and keeping the rest; [`origins`]
//!   (`hyper-util` feature) builds a whole [`Endpoints`](crate::Endpoints) set from one shared
//!   hyper-util client and a list of backend URLs.
//! - [`status_code`] maps a request's error to the HTTP status a gateway should answer, and
//!   [`handle_error`] is a ready-made handler for axum's `HandleErrorLayer`; [`grpc_status`]
//!   (`tonic` feature) maps it to a `tonic::Status`.
//!
//! The retry policy that goes with them is in [`retry`](crate::retry).
//!
//! # Examples
//!
//! A client for three backends on loopback, one shared hyper-util client for all of them:
//!
//! ```
//! use std::convert::Infallible;
//! use http_body_util::{BodyExt, Empty};
//! use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response};
//! use hyper_util::{client::legacy::Client, rt::{TokioExecutor, TokioIo}};
//! use tokio::net::TcpListener;
//! use tower::{Layer, ServiceExt};
//! use tower_lb::{http::Origin, strategy::RoundRobin, BalanceLayer, BoxError, Endpoints};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), BoxError> {
//!     let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
//!     let mut set = Vec::new();
//!     for name in ["a", "b", "c"] {
//!         let listener = TcpListener::bind("127.0.0.1:0").await?;
//!         let url = format!("http://{}", listener.local_addr()?);
//!         tokio::spawn(async move {
//!             while let Ok((stream, _)) = listener.accept().await {
//!                 let answer = service_fn(move |request: Request<_>| async move {
//!                     Ok::<_, Infallible>(Response::new(format!("{name}: {}", request.uri())))
//!                 });
//!                 tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), answer));
//!             }
//!         });
//!         set.push((url.clone(), Origin::try_new(client.clone(), &url)?));
//!     }
//!     let balance = BalanceLayer::new(RoundRobin::new()).layer(Endpoints::from_iter(set));
//!
//!     for expected in ["a: /x?y=1", "b: /x?y=1", "c: /x?y=1"] {
//!         let request = Request::get("/x?y=1").body(Empty::new())?;
//!         let response = balance.clone().oneshot(request).await?;
//!         assert_eq!(response.into_body().collect().await?.to_bytes(), expected);
//!     }
//!     Ok(())
//! }
//! ```

#[cfg(feature = "hyper-util")]
mod client;
mod origin;
mod status;

#[cfg(feature = "hyper-util")]
pub use self::client::origins;
#[cfg(feature = "tonic")]
pub use self::status::grpc_status;
pub use self::{
    origin::{HostHeader, InvalidOrigin, Origin},
    status::{handle_error, status_code},
};
