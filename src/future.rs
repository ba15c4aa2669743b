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
//! let fut: ResponseFuture<_> = balance.ready().await.unwrap().call(41);
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

use crate::BoxError;

pin_project! {
    /// The response future of [`Balance`](crate::Balance): the chosen endpoint's response, or the
    /// reason no endpoint could take the request.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F) -> Self {
        Self {
            kind: Kind::Called { future },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => future.poll(cx).map_err(Into::into),
            KindProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Called { .. } => f.write_str("ResponseFuture::Called"),
            Kind::Failed { error } => f
                .debug_tuple("ResponseFuture::Failed")
                .field(error)
                .finish(),
        }
    }
}
