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

/// When the downstream request ended (the last byte of its body arrived): Envoy starts a
/// route's timeout then, not when the request began (checked with 1.40). Also how its body
/// failed, if it did: hyper's HTTP/2 client does not pass a body's error on, so the request
/// side says whether a failed exchange was the client's doing.
#[derive(Default)]
pub struct RequestEnd {
    at: std::sync::OnceLock<tokio::time::Instant>,
    notify: tokio::sync::Notify,
    /// 0: not failed; else a [`BodyFailed`] + 1.
    failure: std::sync::atomic::AtomicU8,
}

/// How a request body failed, when that was the client's doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFailed {
    /// The client went away mid-body.
    Gone,
    /// It reset its HTTP/2 stream mid-body (`RST_STREAM`).
    Reset,
    /// Its framing broke (a malformed chunk).
    Malformed,
    /// Its trailer section passed the headers' size limit (Envoy: `431`).
    TooLarge,
}

/// The error a request body fails with when its trailers pass the headers' size limit.
#[derive(Debug)]
pub struct TrailersTooLarge;

impl std::fmt::Display for TrailersTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request trailers too large")
    }
}

impl std::error::Error for TrailersTooLarge {}

/// Tells what a request body's error says about the client (egret-http's classifier).
pub type ClassifyBodyError = fn(&(dyn std::error::Error + 'static)) -> Option<BodyFailed>;

impl RequestEnd {
    /// The body failed this way (only the first call counts).
    pub fn fail(&self, how: BodyFailed) {
        let code = match how {
            BodyFailed::Gone => 1,
            BodyFailed::Reset => 2,
            BodyFailed::Malformed => 3,
            BodyFailed::TooLarge => 4,
        };
        let _ = self
            .failure
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn failure(&self) -> Option<BodyFailed> {
        match self.failure.load(Ordering::Acquire) {
            1 => Some(BodyFailed::Gone),
            2 => Some(BodyFailed::Reset),
            3 => Some(BodyFailed::Malformed),
            4 => Some(BodyFailed::TooLarge),
            _ => None,
        }
    }

    /// The body has ended (only the first call counts).
    pub fn mark(&self) {
        if self.at.set(tokio::time::Instant::now()).is_ok() {
            self.notify.notify_waiters();
        }
    }

    pub fn at(&self) -> Option<tokio::time::Instant> {
        self.at.get().copied()
    }

    /// Waits for [`Self::mark`]; when it happened.
    pub async fn wait(&self) -> tokio::time::Instant {
        loop {
            // Registered before the check: a mark in between still wakes it.
            let notified = self.notify.notified();
            if let Some(at) = self.at() {
                return at;
            }
            notified.await;
        }
    }
}

/// A request body as the client sends it: an HTTP/2 stream's, read by hyper's server, or an
/// HTTP/1.1 one, read by egret-listener's own codec (boxed: that type is generic over the
/// listener's socket, and only requests with a body have one).
pub enum ClientBody {
    Empty,
    Http2(Incoming),
    Http1(Pin<Box<dyn Body<Data = Bytes, Error = BodyError> + Send + Sync + 'static>>),
}

impl ClientBody {
    pub fn http2(incoming: Incoming) -> ClientBody {
        ClientBody::Http2(incoming)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Http1(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Http2(b) => b.is_end_stream(),
            ClientBody::Http1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Http2(b) => b.size_hint(),
            ClientBody::Http1(b) => b.size_hint(),
        }
    }
}

pub enum UpstreamBody {
    Empty,
    Full(Option<Bytes>),
    Streaming {
        inner: ClientBody,
        received: Arc<AtomicU64>,
        /// Marked when `inner` ends, if someone waits for that, or how it failed.
        end: Option<Arc<RequestEnd>>,
        classify: ClassifyBodyError,
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
            UpstreamBody::Streaming {
                inner,
                received,
                end,
                classify,
            } => {
                let mut inner = Pin::new(inner);
                let r = inner.as_mut().poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            received.fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                        // hyper stops polling a body that says it has ended, or that has
                        // yielded its trailers (its last frame).
                        if inner.is_end_stream() || f.is_trailers() {
                            if let Some(e) = end {
                                e.mark();
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(e) = end {
                            e.mark();
                        }
                    }
                    Poll::Ready(Some(Err(err))) => {
                        if let (Some(e), Some(how)) = (end, classify(&**err)) {
                            e.fail(how);
                        }
                    }
                    Poll::Pending => {}
                }
                r
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
