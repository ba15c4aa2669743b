use std::fmt;

use tower_layer::Layer;

use crate::{
    endpoints::Endpoints,
    health::{Errors, OutlierDetection},
    retry::{FromExtensions, Untracked},
    service::{Balance, DEFAULT_MAX_TRIES},
    strategy::Strategy,
};

/// Builds a [`Balance`] over an endpoint set, for use in a `tower::ServiceBuilder` stack.
///
/// The layer holds the strategy's configuration; each balancer it builds gets its own clone of the
/// strategy, with fresh state. Middleware added above it (timeouts, retries, rate limits) wraps the
/// balancer. A retry is routed like a new request (for a keyed strategy, to the key's endpoint
/// again) unless the balancer is told to [skip the endpoints the request already
/// tried](BalanceLayer::skip_tried_endpoints) and the retries come from
/// [`retry::RetryLayer`](crate::retry::RetryLayer).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_lb::{strategy::RoundRobin, BalanceLayer, Endpoints};
///
/// # tokio_test::block_on(async {
/// let backend = |name: &'static str| service_fn(move |req: String| async move {
///     Ok::<_, std::convert::Infallible>(format!("{name} handled {req}"))
/// });
/// let set = Endpoints::from_iter([("a", backend("a")), ("b", backend("b"))]);
///
/// let svc = ServiceBuilder::new()
///     .timeout(Duration::from_secs(2))
///     .layer(BalanceLayer::new(RoundRobin::new()))
///     .service(set);
///
/// assert_eq!(svc.clone().oneshot("x".into()).await.unwrap(), "a handled x");
/// assert_eq!(svc.clone().oneshot("y".into()).await.unwrap(), "b handled y");
/// # });
/// ```
#[derive(Clone)]
pub struct BalanceLayer<St, C = Errors, A = Untracked> {
    strategy: St,
    max_tries: usize,
    outlier_detection: Option<OutlierDetection>,
    classify: C,
    attempts: A,
}

impl<St> BalanceLayer<St> {
    /// Creates a layer that balances with `strategy`.
    pub fn new(strategy: St) -> Self {
        Self {
            strategy,
            max_tries: DEFAULT_MAX_TRIES,
            outlier_detection: None,
            classify: Errors,
            attempts: Untracked,
        }
    }
}

impl<St, C, A> BalanceLayer<St, C, A> {
    /// Turns on passive health checking: endpoints that fail repeatedly are ejected for a while.
    /// See [`health`](crate::health).
    pub fn outlier_detection(mut self, detection: OutlierDetection) -> Self {
        self.outlier_detection = Some(detection);
        self
    }

    /// Sets which responses count as failures for outlier detection, besides errors: for
    /// example [`ServerErrors`](crate::health::ServerErrors) for HTTP 5xx, or a closure
    /// `|response: &Res| -> bool`.
    pub fn classify<C2>(self, classify: C2) -> BalanceLayer<St, C2, A> {
        BalanceLayer {
            strategy: self.strategy,
            max_tries: self.max_tries,
            outlier_detection: self.outlier_detection,
            classify,
            attempts: self.attempts,
        }
    }

    /// Routes each retry of an `http::Request` to an endpoint the request has not tried yet,
    /// as its record in the request's extensions says (which
    /// [`retry::RetryLayer`](crate::retry::RetryLayer) puts there): for keyed strategies the
    /// key's next candidate, for keyless ones the strategy's next choice. See
    /// [`retry`](crate::retry#skipping-the-endpoints-already-tried).
    ///
    /// The balancer reads the record only when asked to, because a `Balance` serves any request
    /// type and only `http::Request` has extensions: the setting picks the request type's
    /// reader at compile time, and without it the balancer does no bookkeeping at all. For
    /// another request type, see [`BalanceLayer::attempts`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_lb::{health::OutlierDetection, key, strategy::ConsistentHash, BalanceLayer};
    ///
    /// let layer = BalanceLayer::new(ConsistentHash::new(key::query("key")))
    ///     .outlier_detection(OutlierDetection::new())
    ///     .skip_tried_endpoints();
    /// # let _ = layer;
    /// ```
    pub fn skip_tried_endpoints(self) -> BalanceLayer<St, C, FromExtensions> {
        self.attempts(FromExtensions)
    }

    /// Routes each retry to an endpoint the request has not tried yet, as the record that
    /// `reader` finds in the request says: [`skip_tried_endpoints`] for another request type
    /// than `http::Request`.
    ///
    /// [`skip_tried_endpoints`]: BalanceLayer::skip_tried_endpoints
    pub fn attempts<A2>(self, reader: A2) -> BalanceLayer<St, C, A2> {
        BalanceLayer {
            strategy: self.strategy,
            max_tries: self.max_tries,
            outlier_detection: self.outlier_detection,
            classify: self.classify,
            attempts: reader,
        }
    }

    /// Sets how many endpoints one request tries in `poll_ready` before the balancer returns
    /// `Pending` (when some were pending) or fails the request with
    /// [`Unavailable`](crate::error::Unavailable) (when all failed). Default: 8, or the size of
    /// the set if smaller.
    ///
    /// More tries find a ready endpoint in a set where many are saturated, at the cost of polling
    /// more endpoints per request in that case. A value of 0 is treated as 1: the strategy's own
    /// choice is always tried.
    pub fn max_tries(mut self, max_tries: usize) -> Self {
        self.max_tries = max_tries.max(1);
        self
    }
}

impl<St, C, A, K, S> Layer<Endpoints<K, S>> for BalanceLayer<St, C, A>
where
    St: Strategy<K> + Clone,
    C: Clone,
    A: Clone,
    K: PartialEq + Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    type Service = Balance<St, K, S, C, A>;

    fn layer(&self, endpoints: Endpoints<K, S>) -> Self::Service {
        Balance::with_config(
            self.strategy.clone(),
            endpoints,
            self.max_tries,
            self.outlier_detection.clone(),
            self.classify.clone(),
            self.attempts.clone(),
        )
    }
}

impl<St: fmt::Debug, C, A> fmt::Debug for BalanceLayer<St, C, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceLayer")
            .field("strategy", &self.strategy)
            .field("max_tries", &self.max_tries)
            .field("outlier_detection", &self.outlier_detection)
            .finish()
    }
}
