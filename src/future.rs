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
        loop {
            if let KindProj::Called { future, accounting } = self.as_mut().project().kind.project()
            {
                let output = std::task::ready!(future.poll(cx));
                accounting.complete(&output);
                return Poll::Ready(output.map_err(Into::into));
            }
            if let Err(error) = std::task::ready!(self.as_mut().poll_routing(cx)) {
                return Poll::Ready(Err(error));
            }
        }
    }
}

impl<S, Req, C> ResponseFuture<S, Req, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
{
    /// Drives a future that is still routing its request until it is called (`Ok`: poll it as
    /// called), or gives the reason it failed. Not called on a future already called.
    #[inline(never)]
    fn poll_routing(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let routed = match self.as_mut().project().kind.project() {
            KindProj::Routing { routing } => std::task::ready!(routing.poll(cx)),
            KindProj::Failed { error } => {
                return Poll::Ready(Err(error
                    .take()
                    .expect("ResponseFuture polled after completion")))
            }
            KindProj::Called { .. } => return Poll::Ready(Ok(())),
        };
        match routed {
            Routed::Called(future, accounting) => {
                self.set(Self::called(future, accounting));
                Poll::Ready(Ok(()))
            }
            Routed::Failed(error) => {
                // Completed: a later poll is a poll after completion.
                self.set(Self {
                    kind: Kind::Failed { error: None },
                });
                Poll::Ready(Err(error))
            }
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
