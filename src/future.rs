//! The response future of [`Balance`](crate::Balance).
//!
//! # Examples
//!
//! ```
//! use tower::{service_fn, Layer, Service, ServiceExt};
//! use tower_lb::{future::ResponseFuture, strategy::RoundRobin, BalanceLayer, Endpoints};
//!
//! # tokio_test::block_on(async {
//! let set = Endpoints::from_iter([("a", service_fn(|x: u32| async move {
//!     Ok::<_, std::convert::Infallible>(x + 1)
//! }))]);
//! let mut balance = BalanceLayer::new(RoundRobin::new()).layer(set);
//!
//! let fut: ResponseFuture<_, _> = balance.ready().await.unwrap().call(41);
//! assert_eq!(fut.await.unwrap(), 42);
//! # });
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    error::BoxError,
    health::{Classify, Errors},
    walker::{Accounting, Routed, Routing},
};

pin_project! {
    /// The response future of [`Balance`](crate::Balance): the chosen endpoint's response, or the
    /// reason no endpoint could take the request.
    ///
    /// For keyed strategies whose first choice was not ready at once, it first drives the
    /// candidates' readiness, then calls the first that is ready.
    pub struct ResponseFuture<S, Req, C = Errors>
    where
        S: Service<Req>,
    {
        #[pin]
        kind: Kind<S, Req, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, Req, C>
    where
        S: Service<Req>,
    {
        Called {
            #[pin]
            future: S::Future,
            // Settled when the response completes; a dropped future releases its count.
            accounting: Accounting<C>,
        },
        // Boxed: only requests whose first choice was not ready at once pay for its size.
        Routing {
            routing: Box<Routing<S, Req, C>>,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<S: Service<Req>, Req, C> ResponseFuture<S, Req, C> {
    /// The future of a request sent to its endpoint (its accounting already `sent`).
    #[inline]
    pub(crate) fn called(future: S::Future, accounting: Accounting<C>) -> Self {
        Self {
            kind: Kind::Called { future, accounting },
        }
    }

    pub(crate) fn routing(routing: Routing<S, Req, C>) -> Self {
        Self {
            kind: Kind::Routing {
                routing: Box::new(routing),
            },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<S, Req, C> Future for ResponseFuture<S, Req, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The common case, a request already sent, stays small enough to inline into the
        // caller's poll; routing and failures go out of line.
        if let KindProj::Called { future, accounting } = self.as_mut().project().kind.project() {
            let output = std::task::ready!(future.poll(cx));
            accounting.complete(&output);
            return Poll::Ready(output.map_err(Into::into));
        }
        self.poll_routing(cx)
    }
}

impl<S, Req, C> ResponseFuture<S, Req, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
{
    /// Polls a future that is still routing its request or that failed; it may become one that
    /// is called.
    #[inline(never)]
    fn poll_routing(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        loop {
            let routed = match self.as_mut().project().kind.project() {
                KindProj::Called { future, accounting } => {
                    let output = std::task::ready!(future.poll(cx));
                    accounting.complete(&output);
                    return Poll::Ready(output.map_err(Into::into));
                }
                KindProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .expect("ResponseFuture polled after completion")))
                }
                KindProj::Routing { routing } => match routing.poll(cx) {
                    Poll::Ready(routed) => routed,
                    Poll::Pending => return Poll::Pending,
                },
            };
            let next = match routed {
                Routed::Called(future, accounting) => Self::called(future, accounting),
                Routed::Failed(error) => Self::failed(error),
            };
            self.set(next);
        }
    }
}

impl<S: Service<Req>, Req, C> fmt::Debug for ResponseFuture<S, Req, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Called { .. } => f.write_str("ResponseFuture::Called"),
            Kind::Routing { routing } => {
                let (tried, pending) = routing.walk.counts();
                f.debug_struct("ResponseFuture::Routing")
                    .field("tried", &tried)
                    .field("pending", &pending)
                    .finish()
            }
            Kind::Failed { error } => f
                .debug_tuple("ResponseFuture::Failed")
                .field(error)
                .finish(),
        }
    }
}
