//! The request body sent upstream: empty, a buffered copy, or the downstream body streamed
//! through while counting its bytes for `%BYTES_RECEIVED%`.

/// The error of a request body: the downstream body's, or one of egret-http's shared
/// bodies (a retired attempt, a failed request).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub enum UpstreamBody {
    Empty,
    Full(Option<Bytes>),
    Streaming {
        inner: Incoming,
        received: Arc<AtomicU64>,
    },
    /// Any other body (egret-http's shared body for retries and mirrors).
    Boxed(Pin<Box<dyn Body<Data = Bytes, Error = BodyError> + Send + Sync + 'static>>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Streaming { inner, received } => {
                let r = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &r {
                    if let Some(d) = f.data_ref() {
                        received.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                r.map_err(Into::into)
            }
            UpstreamBody::Boxed(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(b) => b.is_none(),
            UpstreamBody::Streaming { inner, .. } => inner.is_end_stream(),
            UpstreamBody::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpstreamBody::Streaming { inner, .. } => inner.size_hint(),
            UpstreamBody::Boxed(b) => b.size_hint(),
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamBody::Empty => f.write_str("UpstreamBody::Empty"),
            UpstreamBody::Full(b) => write!(
                f,
                "UpstreamBody::Full({:?} bytes)",
                b.as_ref().map(|b| b.len())
            ),
            UpstreamBody::Streaming { .. } => f.write_str("UpstreamBody::Streaming"),
            UpstreamBody::Boxed(_) => f.write_str("UpstreamBody::Boxed"),
        }
    }
}
