//! Client-side load balancing as [tower] middleware.
//!
//! `tower-lb` spreads requests across the instances of a backend. Each instance is an endpoint:
//! any [`Service`](tower_service::Service) that is cheap to clone, such as a `hyper_util` client
//! bound to one address or a tonic `Channel`. A [`Balance`] sends each request to one endpoint,
//! picked by a [strategy], and is itself a `Service`, so timeouts, retries and the rest
//! of the tower ecosystem compose with it.
//!
//! - **Exact distributions**: [`RoundRobin`](strategy::RoundRobin) rotates exactly, across clones
//!   and threads; [`WeightedRoundRobin`](strategy::WeightedRoundRobin) gives every endpoint its
//!   weight's share of every period, interleaved as nginx does.
//! - **Key affinity**: [`Hash`](strategy::Hash) maps request keys exactly as crc32 mod N does (the
//!   classic Go handler); [`ConsistentHash`](strategy::ConsistentHash) keeps keys in place across
//!   membership changes on a ketama ring, with optional bounded loads. Keys come from a query
//!   parameter, a header, the path, the client address or a closure ([`key`]).
//!   [`Maglev`](strategy::Maglev) spreads keys almost perfectly with a prime-sized table.
//! - **Load awareness**: [`PowerOfTwoChoices`](strategy::PowerOfTwoChoices) sends each request to
//!   the less loaded of two random endpoints, by requests in flight or peak-EWMA latency, with
//!   counts shared by every clone; [`Random`](strategy::Random) draws by weight.
//! - **Honest readiness**: the chosen endpoint's `poll_ready` is driven before it is called; busy
//!   endpoints are passed over, failing ones skipped without being dropped from the set.
//! - **Runtime membership**: an [`Endpoints`] handle inserts, removes and re-weights endpoints from
//!   any thread while requests flow; requests in flight on a removed endpoint complete.
//!   [`Endpoints::follow`] drives a `tower::discover::Discover` into the set without request
//!   traffic ([`discover`]).
//! - **Passive health**: outlier ejection with a doubling backoff, a cap on the ejected share,
//!   panic mode and slow start ([`health`]); per-endpoint [`Balance::stats`].
//! - **Active health** (feature `health-check`): a checker you spawn probes every endpoint over
//!   HTTP, the gRPC health protocol (feature `tonic`), TCP or a closure, and takes out those it
//!   finds down, with Envoy's and HAProxy's settings ([`health`]).
//! - **Cheap per request**: picking reads a lock-free snapshot and bumps an atomic cursor; no
//!   mutex and no heap allocation on the request path (when the chosen endpoint is ready).
//!   Cloning a `Balance` (as axum does for every request) costs one `Arc` clone.
//! - **Typed failures**: an empty set or a set where nothing is ready fails the request at once
//!   with an [`error`] you can downcast, never a hang or a panic.
//! - **HTTP and gRPC**: [`http::Origin`] binds an HTTP client to one backend, and
//!   `http::origins` (`hyper-util` feature) builds a set from one client and a list of URLs;
//!   [`retry::Policy`] retries what is worth retrying within a budget, and retries skip the
//!   endpoints a request already tried ([`BalanceLayer::skip_tried_endpoints`]);
//!   [`http::status_code`], [`http::handle_error`] and `http::grpc_status` (`tonic` feature) turn
//!   failures into HTTP and gRPC statuses.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_lb::{strategy::RoundRobin, BalanceLayer, Endpoints};
//!
//! # tokio_test::block_on(async {
//! // Three endpoints; in a real client each would be a connection to one backend instance.
//! let backend = |name: &'static str| service_fn(move |path: &'static str| async move {
//!     Ok::<_, std::convert::Infallible>(format!("{name} served {path}"))
//! });
//! let endpoints = Endpoints::from_iter([
//!     ("127.0.0.1:8081", backend("server1")),
//!     ("127.0.0.1:8082", backend("server2")),
//!     ("127.0.0.1:8083", backend("server3")),
//! ]);
//!
//! let client = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(2))
//!     .layer(BalanceLayer::new(RoundRobin::new()))
//!     .service(endpoints.clone());
//!
//! for expected in ["server1", "server2", "server3", "server1"] {
//!     let answer = client.clone().oneshot("/image").await.unwrap();
//!     assert_eq!(answer, format!("{expected} served /image"));
//! }
//!
//! // Membership changes at runtime, through any clone of the handle.
//! endpoints.remove("127.0.0.1:8082");
//! assert_eq!(endpoints.len(), 2);
//! # });
//! ```
//!
//! [tower]: https://docs.rs/tower

#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod discover;
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub mod dns;
pub mod error;
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub mod etcd;
pub mod future;
pub mod health;
pub mod http;
pub mod key;
pub mod retry;
pub mod strategy;

mod ejection;
mod endpoints;
mod failure;
mod layer;
mod load;
mod rng;
mod service;
mod snapshot;
mod state;
mod stats;
mod waiters;
mod walker;

pub use self::{
    endpoints::{EndpointKey, Endpoints},
    error::BoxError,
    layer::BalanceLayer,
    service::Balance,
    stats::{EndpointStats, KeyMap, ProbeStats},
};

/// Compiles the README's examples as doctests. They use the features the README documents
/// (`tonic` implies `health-check`), and show no hidden lines, so they run with those features
/// on, as `cargo test --all-features --doc` runs them.
#[cfg(all(doctest, feature = "tonic"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
