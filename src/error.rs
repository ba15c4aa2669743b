//! Errors returned by the balancer and by endpoint set construction.
//!
//! Requests that the balancer cannot route fail in their response future with one of the request
//! errors below, boxed into a [`BoxError`]; the endpoint's own errors pass through
//! unchanged. Use `is` or `downcast_ref` on the boxed error to tell them apart.
//!
//! Configuration mistakes, such as a weight of zero, are reported when the endpoint set is built or
//! changed, never later on the request path.
//!
//! # Examples
//!
//! ```
//! use tower::{Layer, ServiceExt};
//! use tower_lb::{error::NoEndpoints, strategy::RoundRobin, BalanceLayer, Endpoints};
//!
//! # tokio_test::block_on(async {
//! let set: Endpoints<&str, tower::util::BoxCloneSyncService<(), (), tower_lb::BoxError>> =
//!     Endpoints::new();
//! let balance = BalanceLayer::new(RoundRobin::new()).layer(set);
//!
//! let err = balance.oneshot(()).await.unwrap_err();
//! assert!(err.is::<NoEndpoints>());
//! assert_eq!(err.to_string(), "the endpoint set is empty");
//! # });
//! ```

use std::{error::Error, fmt};

/// A type-erased error, as returned by [`Balance`](crate::Balance).
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The endpoint set was empty when the request was routed.
///
/// The request fails at once; it does not wait for an endpoint to be inserted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoEndpoints {
    _priv: (),
}

impl NoEndpoints {
    pub(crate) const fn new() -> Self {
        Self { _priv: () }
    }
}

impl fmt::Display for NoEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the endpoint set is empty")
    }
}

impl Error for NoEndpoints {}

/// Every endpoint the balancer tried failed its readiness check.
///
/// The endpoints stay in the set: they are tried again by the next request. [`source`] returns the
/// readiness error of the last endpoint tried.
///
/// [`source`]: Error::source
#[derive(Debug)]
pub struct Unavailable {
    tried: usize,
    source: Option<BoxError>,
}

impl Unavailable {
    pub(crate) fn new(tried: usize, source: Option<BoxError>) -> Self {
        Self { tried, source }
    }

    /// How many endpoints were tried before giving up.
    pub fn tried(&self) -> usize {
        self.tried
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no endpoint is available: {} tried, all failed their readiness check",
            self.tried
        )
    }
}

impl Error for Unavailable {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// An endpoint weight was outside the accepted range.
///
/// Weights are integers of at least 1; a weight of 0 is rejected rather than silently treated as
/// "never pick" or as 1. Remove an endpoint to stop sending it traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidWeight {
    weight: u32,
}

impl InvalidWeight {
    pub(crate) const fn new(weight: u32) -> Self {
        Self { weight }
    }

    /// The rejected weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

impl fmt::Display for InvalidWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "endpoint weight must be at least 1, got {}", self.weight)
    }
}

impl Error for InvalidWeight {}

/// `call` was invoked on a [`Balance`](crate::Balance) without a successful `poll_ready` first.
///
/// tower requires `poll_ready` to return `Ready(Ok(()))` before each `call`. A clone of a balancer
/// does not inherit the reservation of the original, so it must be made ready itself. The
/// balancer fails the request with this error instead of panicking.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotReady {
    _priv: (),
}

impl NotReady {
    pub(crate) const fn new() -> Self {
        Self { _priv: () }
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the balancer was called before `poll_ready` returned ready")
    }
}

impl Error for NotReady {}

/// A keyed strategy found no routing key in the request, and no default was configured.
///
/// Give the key extractor a default with [`RequestKey::or`](crate::key::RequestKey::or) to route
/// such requests instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MissingKey {
    _priv: (),
}

impl MissingKey {
    pub(crate) const fn new() -> Self {
        Self { _priv: () }
    }
}

impl fmt::Display for MissingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request has no routing key and no default key is configured")
    }
}

impl Error for MissingKey {}

/// A strategy option was outside its accepted range.
///
/// Returned by the strategies' builder methods, such as
/// [`ConsistentHash::bounded_load`](crate::strategy::ConsistentHash::bounded_load), when the
/// strategy is configured: never later, on the request path.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidConfig {
    option: &'static str,
    requirement: &'static str,
    value: String,
}

impl InvalidConfig {
    pub(crate) fn new(
        option: &'static str,
        requirement: &'static str,
        value: impl fmt::Display,
    ) -> Self {
        Self {
            option,
            requirement,
            value: value.to_string(),
        }
    }

    /// The name of the rejected option.
    pub fn option(&self) -> &str {
        self.option
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}: must be {}, got {}",
            self.option, self.requirement, self.value
        )
    }
}

impl Error for InvalidConfig {}

/// Every endpoint of the set is ejected by outlier detection, and the balancer was configured
/// to fail rather than route over them ([`OutlierDetectionBuilder::fail_when_all_ejected`]). The source
/// of an [`Unavailable`] error.
///
/// [`OutlierDetectionBuilder::fail_when_all_ejected`]: crate::health::OutlierDetectionBuilder::fail_when_all_ejected
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllEjected {
    endpoints: usize,
}

impl AllEjected {
    pub(crate) const fn new(endpoints: usize) -> Self {
        Self { endpoints }
    }
}

impl fmt::Display for AllEjected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "all {} endpoints are ejected by outlier detection",
            self.endpoints
        )
    }
}

impl Error for AllEjected {}
