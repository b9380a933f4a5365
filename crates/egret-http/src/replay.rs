//! The downstream request body on its way upstream, and the copy kept so it can be sent
//! again (a retry) or once more elsewhere (a mirror).
//!
//! Like Envoy's router, the body streams to the first attempt while a copy is kept, up to
//! [`REQUEST_REPLAY_BUFFER_BYTES`]; past that the copy is dropped and the request can no
//! longer be replayed. A copy is only kept when the route could use it (retries or mirrors).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use egret_core::limits::REQUEST_REPLAY_BUFFER_BYTES;
use egret_upstream::UpstreamBody;

#[derive(Default)]
struct CopyState {
    chunks: Vec<Bytes>,
    len: usize,
    /// The downstream body has been read to its end.
    complete: bool,
    /// Too large (or had trailers): the copy was dropped.
    dropped: bool,
}

/// The copy of a request body, filled as the body streams to the first attempt.
#[derive(Default)]
pub struct BodyCopy {
    state: Mutex<CopyState>,
}

impl BodyCopy {
    fn lock(&self) -> std::sync::MutexGuard<'_, CopyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, data: &Bytes) {
        let mut s = self.lock();
        if s.dropped {
            return;
        }
        if s.len + data.len() > REQUEST_REPLAY_BUFFER_BYTES {
            s.dropped = true;
            s.chunks = Vec::new();
            s.len = 0;
            return;
        }
        s.len += data.len();
        s.chunks.push(data.clone());
    }

    fn drop_copy(&self) {
        let mut s = self.lock();
        s.dropped = true;
        s.chunks = Vec::new();
    }

    fn complete(&self) {
        self.lock().complete = true;
    }

    /// The whole body, if it was read to its end and fit the buffer.
    pub fn bytes(&self) -> Option<Bytes> {
        let mut s = self.lock();
        if !s.complete || s.dropped {
            return None;
        }
        if s.chunks.len() > 1 {
            let mut all = BytesMut::with_capacity(s.len);
            for c in &s.chunks {
                all.extend_from_slice(c);
            }
            s.chunks = vec![all.freeze()];
        }
        Some(s.chunks.first().cloned().unwrap_or_default())
    }
}

/// The downstream body, counted for `%BYTES_RECEIVED%` and copied into a [`BodyCopy`].
pub struct TeeBody {
    inner: Incoming,
    received: Arc<AtomicU64>,
    copy: Arc<BodyCopy>,
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.received.fetch_add(d.len() as u64, Ordering::Relaxed);
                    this.copy.push(d);
                } else {
                    // Trailers are not replayed: a request with them is sent once.
                    this.copy.drop_copy();
                }
                // hyper stops polling a body that says it has ended.
                if this.inner.is_end_stream() {
                    this.copy.complete();
                }
            }
            Poll::Ready(None) => this.copy.complete(),
            Poll::Ready(Some(Err(_))) => this.copy.drop_copy(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body for the attempts of one request.
pub enum RequestBody {
    /// No body: every attempt and mirror sends none.
    Empty,
    /// Streamed to the first attempt only; no copy is kept.
    Once {
        body: Option<UpstreamBody>,
        received: Arc<AtomicU64>,
    },
    /// Streamed to the first attempt while a copy is kept for later ones.
    Copied {
        first: Option<UpstreamBody>,
        copy: Arc<BodyCopy>,
        received: Arc<AtomicU64>,
    },
}

impl RequestBody {
    /// Wraps the downstream body; `keep_copy` when the route may retry or mirror.
    pub fn new(incoming: Incoming, keep_copy: bool) -> RequestBody {
        if incoming.is_end_stream() {
            return RequestBody::Empty;
        }
        let received = Arc::new(AtomicU64::new(0));
        if keep_copy {
            let copy = Arc::new(BodyCopy::default());
            let tee = TeeBody {
                inner: incoming,
                received: received.clone(),
                copy: copy.clone(),
            };
            RequestBody::Copied {
                first: Some(UpstreamBody::Boxed(Box::pin(tee))),
                copy,
                received,
            }
        } else {
            RequestBody::Once {
                body: Some(UpstreamBody::Streaming {
                    inner: incoming,
                    received: received.clone(),
                }),
                received,
            }
        }
    }

    /// The `%BYTES_RECEIVED%` counter (None for no body).
    pub fn received(&self) -> Option<Arc<AtomicU64>> {
        match self {
            RequestBody::Empty => None,
            RequestBody::Once { received, .. } | RequestBody::Copied { received, .. } => {
                Some(received.clone())
            }
        }
    }

    /// Can another attempt be sent with the whole body?
    pub fn replayable(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Once { body, .. } => body.is_some(),
            RequestBody::Copied { first, copy, .. } => first.is_some() || copy.bytes().is_some(),
        }
    }

    /// The body for the next attempt, or None when it cannot be sent (again).
    pub fn next_attempt(&mut self) -> Option<UpstreamBody> {
        match self {
            RequestBody::Empty => Some(UpstreamBody::Empty),
            RequestBody::Once { body, .. } => body.take(),
            RequestBody::Copied { first, copy, .. } => first
                .take()
                .or_else(|| copy.bytes().map(|b| UpstreamBody::Full(Some(b)))),
        }
    }

    /// A body that never left (a stale pooled connection handed it back) goes out again.
    pub fn put_back(&mut self, b: UpstreamBody) {
        match self {
            RequestBody::Empty => {}
            RequestBody::Once { body, .. } => *body = Some(b),
            RequestBody::Copied { first, .. } => *first = Some(b),
        }
    }

    /// A copy for a mirror, once the whole body has been read (None before, or when it did
    /// not fit the buffer).
    pub fn mirror_copy(&self) -> Option<UpstreamBody> {
        match self {
            RequestBody::Empty => Some(UpstreamBody::Empty),
            RequestBody::Once { .. } => None,
            RequestBody::Copied { copy, .. } => copy.bytes().map(|b| UpstreamBody::Full(Some(b))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_a_complete_body_within_the_limit() {
        let c = BodyCopy::default();
        c.push(&Bytes::from_static(b"hello "));
        assert_eq!(c.bytes(), None, "not complete yet");
        c.push(&Bytes::from_static(b"world"));
        c.complete();
        assert_eq!(c.bytes().as_deref(), Some(&b"hello world"[..]));
        assert_eq!(c.bytes().as_deref(), Some(&b"hello world"[..]));
    }

    #[test]
    fn copy_is_dropped_past_the_limit() {
        let c = BodyCopy::default();
        let big = Bytes::from(vec![0u8; REQUEST_REPLAY_BUFFER_BYTES]);
        c.push(&big);
        c.push(&Bytes::from_static(b"x"));
        c.complete();
        assert_eq!(c.bytes(), None);
        assert!(c.lock().chunks.is_empty(), "memory is released");
    }
}
