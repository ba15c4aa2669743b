//! The request body as the gateway forwards it: read whole when it is small, so that any retry
//! can send it again, streamed otherwise.

use std::{
    error::Error,
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tower_http::timeout::TimeoutBody;
use tower_lb::BoxError;

/// Request bodies of at most this many bytes, declared by `Content-Length`, are read whole before
/// they are forwarded, so that a retry can send them again (nginx's `client_body_buffer_size`
/// plays the same part); longer ones are streamed.
pub const REPLAY_BYTES: u64 = 64 << 10;

type BoxedBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A request body that the retry policy can clone: either read whole (at most [`REPLAY_BYTES`]),
/// or streamed. The clones of a streamed body share it, and the first clone polled takes it; a
/// retry's clone gets it only if the failed attempt never started sending it (a refused
/// connection), and otherwise fails its attempt with [`BodyAlreadySent`].
///
/// Each wait for the next piece of a body is bounded by tower-http's [`TimeoutBody`].
pub struct SharedBody {
    kind: Kind,
    size_hint: SizeHint,
}

enum Kind {
    /// Read whole: every clone sends all of it.
    Whole { bytes: Bytes, sent: bool },
    /// Streamed: the clones share one body.
    Streamed {
        shared: Arc<Mutex<Option<BoxedBody>>>,
        taken: Option<BoxedBody>,
        empty: bool,
    },
}

impl SharedBody {
    pub(crate) async fn new<B>(body: B, timeout: Duration) -> Result<Self, BoxError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        // Read before the timeout wrapper, which reports neither.
        let (size_hint, empty) = (body.size_hint(), body.is_end_stream());
        let body = TimeoutBody::new(timeout, body);
        let kind = match size_hint.exact() {
            Some(length) if length <= REPLAY_BYTES => Kind::Whole {
                bytes: body.collect().await?.to_bytes(),
                sent: false,
            },
            _ => Kind::Streamed {
                shared: Arc::new(Mutex::new(Some(body.boxed_unsync()))),
                taken: None,
                empty,
            },
        };
        Ok(Self { kind, size_hint })
    }
}

impl Clone for SharedBody {
    fn clone(&self) -> Self {
        let kind = match &self.kind {
            Kind::Whole { bytes, .. } => Kind::Whole {
                bytes: bytes.clone(),
                sent: false,
            },
            Kind::Streamed { shared, empty, .. } => Kind::Streamed {
                shared: Arc::clone(shared),
                taken: None,
                empty: *empty,
            },
        };
        Self {
            kind,
            size_hint: self.size_hint,
        }
    }
}

impl fmt::Debug for SharedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBody")
            .field("size_hint", &self.size_hint)
            .finish_non_exhaustive()
    }
}

/// A retry needed a request body that an earlier attempt had already started to send.
#[derive(Debug)]
pub struct BodyAlreadySent;

impl fmt::Display for BodyAlreadySent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body was already sent to another backend")
    }
}

impl Error for BodyAlreadySent {}

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Whole { sent: true, .. } => Poll::Ready(None),
            Kind::Whole { bytes, sent } => {
                *sent = true;
                match bytes.is_empty() {
                    true => Poll::Ready(None),
                    false => Poll::Ready(Some(Ok(Frame::data(bytes.clone())))),
                }
            }
            Kind::Streamed {
                shared,
                taken,
                empty,
            } => {
                if taken.is_none() {
                    let body = shared.lock().unwrap_or_else(PoisonError::into_inner).take();
                    match body {
                        Some(body) => *taken = Some(body),
                        None if *empty => return Poll::Ready(None),
                        None => return Poll::Ready(Some(Err(BodyAlreadySent.into()))),
                    }
                }
                let body = taken.as_mut().expect("taken above");
                Pin::new(body).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Whole { bytes, sent } => *sent || bytes.is_empty(),
            Kind::Streamed {
                taken: Some(body), ..
            } => body.is_end_stream(),
            Kind::Streamed { empty, .. } => *empty,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}
