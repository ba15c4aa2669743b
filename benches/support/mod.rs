//! What the benches share: an always-ready endpoint, and one request driven to completion by hand.

use std::{
    convert::Infallible,
    fmt::Debug,
    future::{ready, Future, Ready},
    hint::black_box,
    pin::pin,
    task::{Context, Poll},
};

use futures_util::task::noop_waker_ref;
use http::Request;
use tower_service::Service;

/// An always-ready endpoint that answers at once, without allocating: with its id to a `u64`
/// request, and with its id and the request itself to an `http::Request<()>`, so that the request
/// is freed after the timing rather than inside it.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    pub id: u64,
}

impl Service<u64> for Endpoint {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        black_box(request);
        ready(Ok(self.id))
    }
}

impl Service<Request<()>> for Endpoint {
    type Response = (u64, Request<()>);
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        ready(Ok((self.id, request)))
    }
}

/// One request: `poll_ready`, `call`, and the response future polled to completion, all with a
/// no-op waker. Panics if anything is pending or fails, which always-ready endpoints never do.
#[inline(always)]
pub fn request<S, Req>(service: &mut S, request: Req) -> S::Response
where
    S: Service<Req>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => panic!("poll_ready failed: {e:?}"),
        Poll::Pending => panic!("poll_ready is pending"),
    }
    let future = pin!(service.call(request));
    match future.poll(&mut cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(e)) => panic!("request failed: {e:?}"),
        Poll::Pending => panic!("response is pending"),
    }
}
