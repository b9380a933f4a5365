//! The downstream request body on its way upstream: to the first attempt, again to a retry,
//! and to the mirrors — as Envoy 1.40's router does it (checked with the real binary):
//!
//! - The body streams to the attempt while a copy is kept, up to
//!   [`REQUEST_REPLAY_BUFFER_BYTES`] (Envoy's per-request buffer limit). A retry sends the copy
//!   again and then goes on reading the downstream body where the last attempt left it, so a
//!   request is retried even when the upstream answered before the whole body had arrived.
//! - While no attempt is sending (the upstream connection is being set up, or a retry waits
//!   out its back-off) the body is still read into the copy, up to the limit, as Envoy
//!   buffers it.
//! - Once more than the limit has arrived the copy is given up and no further attempt is made:
//!   the attempt in flight (or about to start) still gets every byte, and its answer goes to
//!   the client without `URX`. Going past the limit during a back-off ends the request with
//!   Envoy's `507` (`request_payload_exceeded_retry_buffer_limit`).
//! - Mirrors are streamed too (Envoy's streaming shadows): each gets every byte as it is read
//!   from the client, whatever the body's size. A mirror more than the buffer limit behind
//!   holds the reading back until it catches up (Envoy puts the shadow stream under the
//!   downstream's watermarks); a mirror that failed or finished no longer counts.
//!
//! One reader at a time takes frames from the downstream body: starting a new attempt retires
//! the last one's body (it then fails, so that connection is not left with a truncated
//! request that looks complete).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use egret_core::limits::REQUEST_REPLAY_BUFFER_BYTES;
use egret_upstream::body::{BodyFailed, RequestEnd, TrailersTooLarge};
use egret_upstream::{ClientBody, UpstreamBody};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Inner = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

/// The body outgrew the replay buffer while a retry waited (Envoy: `507`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferOverflow;

/// A retired attempt's body, or a downstream body that failed.
#[derive(Debug)]
struct BodyGone(&'static str);

impl std::fmt::Display for BodyGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BodyGone {}

fn gone(why: &'static str) -> BoxError {
    Box::new(BodyGone(why))
}

/// What the downstream body failed with, as every reader of it sees it afterwards.
const MALFORMED: &str = "request body malformed";
const TOO_LARGE: &str = "request trailers too large";
const FAILED: &str = "request body failed";

/// What a request body's error says about the client: its framing broke (a malformed chunk:
/// hyper's decoder fails with an `InvalidInput`/`InvalidData` I/O error), it went away or
/// reset its HTTP/2 stream mid-body — or None: anything else (its TLS failing, rustls's
/// errors are `InvalidData` too; the body being retired). Reads the error's sources down to
/// the first that tells (an I/O error, hyper's incomplete message, the shared body's own
/// failure, h2's error).
pub fn classify(e: &(dyn std::error::Error + 'static)) -> Option<BodyFailed> {
    use std::io::ErrorKind;
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return None;
            }
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<TrailersTooLarge>())
            {
                return Some(BodyFailed::TooLarge);
            }
            return match io.kind() {
                ErrorKind::InvalidInput | ErrorKind::InvalidData => Some(BodyFailed::Malformed),
                ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe => Some(BodyFailed::Gone),
                _ => None,
            };
        }
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return Some(BodyFailed::Gone);
        }
        if let Some(g) = s.downcast_ref::<BodyGone>() {
            match g.0 {
                MALFORMED => return Some(BodyFailed::Malformed),
                TOO_LARGE => return Some(BodyFailed::TooLarge),
                FAILED => return Some(BodyFailed::Gone),
                _ => {}
            }
        }
        // hyper's HTTP/2 server fails a body with h2's error, known by its text only (h2 is
        // not a dependency of ours): the client's `RST_STREAM`, or its connection ending.
        if s.downcast_ref::<hyper::Error>().is_none() && s.downcast_ref::<BodyGone>().is_none() {
            let text = s.to_string();
            if text.starts_with("stream error received") {
                return Some(BodyFailed::Reset);
            }
            if text.starts_with("connection error received")
                || text.contains("broken pipe")
                || text.contains("connection reset")
            {
                return Some(BodyFailed::Gone);
            }
        }
        src = s.source();
    }
    None
}

/// Whether a request body's error is its framing ([`BodyFailed::Malformed`]).
pub fn is_malformed(e: &(dyn std::error::Error + 'static)) -> bool {
    classify(e) == Some(BodyFailed::Malformed)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A frame of the copy.
#[derive(Clone)]
enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Chunk {
    fn of(frame: &Frame<Bytes>) -> Option<Chunk> {
        if let Some(d) = frame.data_ref() {
            Some(Chunk::Data(d.clone()))
        } else {
            frame.trailers_ref().cloned().map(Chunk::Trailers)
        }
    }

    fn frame(self) -> Frame<Bytes> {
        match self {
            Chunk::Data(d) => Frame::data(d),
            Chunk::Trailers(t) => Frame::trailers(t),
        }
    }

    fn len(&self) -> usize {
        match self {
            Chunk::Data(d) => d.len(),
            Chunk::Trailers(_) => 0,
        }
    }
}

/// The body read so far: what the next attempt sends before reading on.
struct BodyCopy {
    /// Bytes kept for replay: the limit, or 0 when the route does not retry.
    limit: usize,
    chunks: Vec<Chunk>,
    len: usize,
    /// More than `limit` arrived: no attempt after the current one.
    overflowed: bool,
}

impl BodyCopy {
    fn new(limit: usize) -> BodyCopy {
        BodyCopy {
            limit,
            chunks: Vec::new(),
            len: 0,
            overflowed: false,
        }
    }

    /// A frame the current attempt reads live (it has sent every chunk before it).
    fn push_live(&mut self, chunk: Chunk) {
        if self.overflowed {
            return;
        }
        if self.len + chunk.len() > self.limit {
            // Given up: the attempt has the rest, and there is no other.
            self.overflowed = true;
            self.chunks = Vec::new();
            self.len = 0;
            return;
        }
        self.len += chunk.len();
        self.chunks.push(chunk);
    }

    /// A frame read while no attempt sends: kept for the next one in any case.
    fn push_ahead(&mut self, chunk: Chunk) {
        self.len += chunk.len();
        self.chunks.push(chunk);
        if self.len > self.limit {
            self.overflowed = true;
        }
    }
}

/// One mirror's queue of frames not yet sent.
#[derive(Default)]
struct FeedState {
    frames: VecDeque<Frame<Bytes>>,
    /// Bytes of data queued.
    queued: usize,
    /// The body ended (`Some(true)`) or failed (`Some(false)`).
    end: Option<bool>,
    /// The mirror's body was dropped: it no longer takes frames.
    gone: bool,
    /// Wakes the mirror's body when a frame arrives.
    mirror: Option<Waker>,
    /// Wakes the reader waiting for this mirror to catch up.
    reader: Option<Waker>,
}

type Feed = Arc<Mutex<FeedState>>;

/// How a frame was read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// By the attempt that sends it.
    Live,
    /// Ahead of the next attempt.
    Ahead,
}

/// The downstream body, read by one reader at a time, with the copy and the mirror feeds.
struct Source {
    inner: Inner,
    copy: BodyCopy,
    /// The downstream body has been read to its end.
    complete: bool,
    /// The downstream body failed (the client went away, or its framing broke).
    failed: bool,
    /// How the client made it fail, when it did ([`classify`]).
    failed_how: Option<BodyFailed>,
    /// The generation allowed to read `inner`.
    reader: u64,
    feeds: Vec<Feed>,
    received: Arc<AtomicU64>,
    /// Marked when the downstream body ends.
    end: Option<Arc<RequestEnd>>,
}

impl Source {
    fn ended(&mut self) {
        self.complete = true;
        if let Some(e) = &self.end {
            e.mark();
        }
    }

    fn replayable(&self) -> bool {
        !self.copy.overflowed && !self.failed
    }

    /// The error a reader gets once the downstream body has failed.
    fn failure(&self) -> BoxError {
        gone(match self.failed_how {
            Some(BodyFailed::Malformed) => MALFORMED,
            Some(BodyFailed::TooLarge) => TOO_LARGE,
            _ => FAILED,
        })
    }

    /// Pending while a mirror is more than the buffer limit behind; drops finished feeds.
    fn mirrors_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut waiting = false;
        self.feeds.retain(|f| {
            let mut s = lock(f);
            if s.gone {
                return false;
            }
            if s.queued > REQUEST_REPLAY_BUFFER_BYTES {
                s.reader = Some(cx.waker().clone());
                waiting = true;
            }
            true
        });
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    fn feed(&mut self, frame: Option<&Frame<Bytes>>, end: Option<bool>) {
        for f in &self.feeds {
            let mut s = lock(f);
            if let Some(c) = frame.and_then(Chunk::of) {
                s.queued += c.len();
                s.frames.push_back(c.frame());
            }
            if end.is_some() {
                s.end = end;
            }
            if let Some(w) = s.mirror.take() {
                w.wake();
            }
        }
        if end.is_some() {
            self.feeds.clear();
        }
    }

    /// Reads the next frame of the downstream body, keeping the copy and feeding the mirrors.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        mode: Mode,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.complete {
            return Poll::Ready(None);
        }
        if self.failed {
            return Poll::Ready(Some(Err(self.failure())));
        }
        if self.mirrors_ready(cx).is_pending() {
            return Poll::Pending;
        }
        match self.inner.as_mut().poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.received.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                if let Some(c) = Chunk::of(&frame) {
                    match mode {
                        Mode::Live => self.copy.push_live(c),
                        Mode::Ahead => self.copy.push_ahead(c),
                    }
                }
                // hyper stops polling a body that says it has ended, or that has yielded its
                // trailers (its last frame).
                let end = self.inner.is_end_stream() || frame.is_trailers();
                if end {
                    self.ended();
                }
                self.feed(Some(&frame), end.then_some(true));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.ended();
                self.feed(None, Some(true));
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.failed = true;
                self.failed_how = classify(e.as_ref());
                if let (Some(end), Some(how)) = (&self.end, self.failed_how) {
                    end.fail(how);
                }
                self.feed(None, Some(false));
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

/// The body of one attempt: the copy from the start, then the downstream body live.
struct AttemptBody {
    source: Arc<Mutex<Source>>,
    generation: u64,
    /// Chunks of the copy already sent by this attempt.
    pos: usize,
    size: SizeHint,
    /// Polled at least once. The request had a body stream when it arrived (a bodiless one
    /// is `Kind::Empty`), so it does not report its end before it has been asked for a
    /// frame, even when the read ahead found the stream empty: a chunked request with an
    /// empty body goes upstream chunked, with its last chunk, as Envoy 1.40 sends it.
    polled: bool,
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.polled = true;
        let mut s = lock(&this.source);
        if s.reader != this.generation {
            return Poll::Ready(Some(Err(gone("request body moved to a retry"))));
        }
        if let Some(c) = s.copy.chunks.get(this.pos) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(c.clone().frame())));
        }
        if s.copy.overflowed && !s.copy.chunks.is_empty() {
            // Read ahead past the limit and now sent: no other attempt will need it.
            s.copy.chunks = Vec::new();
            s.copy.len = 0;
        }
        let polled = s.poll_read(cx, Mode::Live);
        this.pos = s.copy.chunks.len();
        polled
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.source);
        self.polled && s.reader == self.generation && s.complete && self.pos >= s.copy.chunks.len()
    }

    fn size_hint(&self) -> SizeHint {
        self.size.clone()
    }
}

/// What a mirror sends: the frames fed to it as the downstream body is read.
struct MirrorBody {
    feed: Feed,
    size: SizeHint,
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut s = lock(&self.feed);
        if s.gone {
            // The mirror's task ended first: reset the copy rather than end it short.
            return Poll::Ready(Some(Err(gone("mirror abandoned"))));
        }
        if let Some(frame) = s.frames.pop_front() {
            if let Some(d) = frame.data_ref() {
                s.queued -= d.len();
                if s.queued <= REQUEST_REPLAY_BUFFER_BYTES {
                    if let Some(w) = s.reader.take() {
                        w.wake();
                    }
                }
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        match s.end {
            Some(true) => Poll::Ready(None),
            // The request failed: reset the copy rather than end it short.
            Some(false) => Poll::Ready(Some(Err(gone(FAILED)))),
            None => {
                s.mirror = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.size.clone()
    }
}

impl Drop for MirrorBody {
    fn drop(&mut self) {
        abandon(&self.feed);
    }
}

/// The feed no longer takes frames: its queue is freed and the reader no longer waits for it.
fn abandon(feed: &Feed) {
    let mut s = lock(feed);
    s.gone = true;
    s.frames.clear();
    s.queued = 0;
    if let Some(w) = s.reader.take() {
        w.wake();
    }
    if let Some(w) = s.mirror.take() {
        w.wake();
    }
}

/// Held by the mirror's task: when the task ends (answer read, failure, timeout) the mirror
/// stops taking the body, even if its connection still holds the body (an upstream that
/// answered early), so it never holds the request back (Envoy resets such a shadow stream).
pub struct MirrorHold(Feed);

impl Drop for MirrorHold {
    fn drop(&mut self) {
        abandon(&self.0);
    }
}

/// The request body for the attempts and mirrors of one request.
pub struct RequestBody(Kind);

enum Kind {
    /// No body: every attempt and mirror sends none.
    Empty,
    /// Streamed to the first attempt only; no copy is kept.
    Once {
        body: Option<UpstreamBody>,
        received: Arc<AtomicU64>,
    },
    /// Read by one reader at a time, with a copy for retries and feeds for mirrors.
    Shared {
        source: Arc<Mutex<Source>>,
        /// A body handed back unsent (a stale pooled connection), to send as it is.
        unsent: Option<UpstreamBody>,
        /// Attempt bodies handed out.
        attempts: u32,
        /// Readers so far (attempts and reads ahead).
        generation: u64,
        size: SizeHint,
        received: Arc<AtomicU64>,
    },
}

impl RequestBody {
    /// Wraps the downstream body. `retry`: keep a copy for replays; `mirrors`: the route
    /// mirrors, so the body is shared with [`Self::mirror_body`]s.
    /// `end`, if given, is marked when the downstream body ends (not for a body that has
    /// none: the request ended with its head).
    pub fn new(
        incoming: ClientBody,
        retry: bool,
        mirrors: bool,
        end: Option<Arc<RequestEnd>>,
    ) -> RequestBody {
        if incoming.is_end_stream() {
            return RequestBody(Kind::Empty);
        }
        if !retry && !mirrors {
            let received = Arc::new(AtomicU64::new(0));
            return RequestBody(Kind::Once {
                body: Some(UpstreamBody::Streaming {
                    inner: incoming,
                    received: received.clone(),
                    end,
                    classify,
                }),
                received,
            });
        }
        let size = incoming.size_hint();
        let mut body = Self::shared(Box::pin(incoming), size, retry);
        if let Kind::Shared { source, .. } = &mut body.0 {
            lock(source).end = end;
        }
        body
    }

    /// Whether there is a body to wait for.
    pub fn is_empty(&self) -> bool {
        matches!(self.0, Kind::Empty)
    }

    fn shared(inner: Inner, size: SizeHint, retry: bool) -> RequestBody {
        let received = Arc::new(AtomicU64::new(0));
        let source = Source {
            inner,
            copy: BodyCopy::new(if retry {
                REQUEST_REPLAY_BUFFER_BYTES
            } else {
                0
            }),
            complete: false,
            failed: false,
            failed_how: None,
            reader: 0,
            feeds: Vec::new(),
            received: received.clone(),
            end: None,
        };
        RequestBody(Kind::Shared {
            source: Arc::new(Mutex::new(source)),
            unsent: None,
            attempts: 0,
            generation: 0,
            size,
            received,
        })
    }

    /// The `%BYTES_RECEIVED%` counter (None for no body).
    pub fn received(&self) -> Option<Arc<AtomicU64>> {
        match &self.0 {
            Kind::Empty => None,
            Kind::Once { received, .. } | Kind::Shared { received, .. } => Some(received.clone()),
        }
    }

    /// Can another attempt be sent with the whole body? (What has not arrived yet is read
    /// while that attempt streams.)
    pub fn replayable(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Once { body, .. } => body.is_some(),
            Kind::Shared {
                source,
                attempts,
                unsent,
                ..
            } => *attempts == 0 || unsent.is_some() || lock(source).replayable(),
        }
    }

    /// The body for the next attempt, or None when it cannot be sent (again).
    pub fn next_attempt(&mut self) -> Option<UpstreamBody> {
        let replayable = self.replayable();
        match &mut self.0 {
            Kind::Empty => Some(UpstreamBody::Empty),
            Kind::Once { body, .. } => body.take(),
            Kind::Shared {
                source,
                unsent,
                attempts,
                generation,
                size,
                ..
            } => {
                if let Some(b) = unsent.take() {
                    return Some(b);
                }
                if !replayable {
                    return None;
                }
                *attempts += 1;
                *generation += 1;
                lock(source).reader = *generation;
                Some(UpstreamBody::Boxed(Box::pin(AttemptBody {
                    source: source.clone(),
                    generation: *generation,
                    pos: 0,
                    size: size.clone(),
                    polled: false,
                })))
            }
        }
    }

    /// A body that never left (a stale pooled connection handed it back) goes out again.
    pub fn put_back(&mut self, b: UpstreamBody) {
        match &mut self.0 {
            Kind::Empty => {}
            Kind::Once { body, .. } => *body = Some(b),
            Kind::Shared { unsent, .. } => *unsent = Some(b),
        }
    }

    /// The body of a mirror, fed as the downstream body is read (ask before anything is
    /// read), and the hold its task keeps. None when the body is not shared (no mirrors were
    /// announced) or already read from.
    pub fn mirror_body(&mut self) -> Option<(UpstreamBody, Option<MirrorHold>)> {
        match &mut self.0 {
            Kind::Empty => Some((UpstreamBody::Empty, None)),
            Kind::Once { .. } => None,
            Kind::Shared { source, size, .. } => {
                let mut s = lock(source);
                if s.received.load(Ordering::Relaxed) > 0 || s.complete || s.failed {
                    return None;
                }
                let feed = Feed::default();
                s.feeds.push(feed.clone());
                let body = UpstreamBody::Boxed(Box::pin(MirrorBody {
                    feed: feed.clone(),
                    size: size.clone(),
                }));
                Some((body, Some(MirrorHold(feed))))
            }
        }
    }

    /// Whether [`read_ahead_during`](Self::read_ahead_during) may have a body to read; when
    /// not (no body, or one that is not copied), the caller can await its future directly.
    pub fn may_read_ahead(&self) -> bool {
        matches!(self.0, Kind::Shared { .. })
    }

    /// Runs `fut` (the upstream connection being set up) while reading the body ahead into
    /// the copy, up to the buffer limit, as Envoy buffers it meanwhile.
    pub async fn read_ahead_during<F: Future>(&mut self, fut: F) -> F::Output {
        let Some(source) = self.start_reading_ahead() else {
            return fut.await;
        };
        tokio::pin!(fut);
        let mut reading = true;
        std::future::poll_fn(|cx| {
            if reading && poll_ahead(&source, cx) != Ahead::Reading {
                reading = false;
            }
            fut.as_mut().poll(cx)
        })
        .await
    }

    /// Waits `delay` before a retry while still reading the body into the copy, as Envoy
    /// does; the body outgrowing the buffer meanwhile is a [`BufferOverflow`], at once.
    pub async fn back_off(&mut self, delay: Duration) -> Result<(), BufferOverflow> {
        let sleep = tokio::time::sleep(delay);
        let Some(source) = self.start_reading_ahead() else {
            sleep.await;
            return Ok(());
        };
        tokio::pin!(sleep);
        let mut reading = true;
        std::future::poll_fn(|cx| {
            if reading {
                match poll_ahead(&source, cx) {
                    Ahead::Overflowed => return Poll::Ready(Err(BufferOverflow)),
                    Ahead::Done => reading = false,
                    Ahead::Reading => {}
                }
            }
            sleep.as_mut().poll(cx).map(Ok)
        })
        .await
    }

    /// Makes a reader ahead the one that takes frames (retiring the last attempt's body), or
    /// None when there is nothing to read ahead: no copy to fill (no retries), a body that
    /// never left (it is sent as it is), or one already read or given up.
    fn start_reading_ahead(&mut self) -> Option<Arc<Mutex<Source>>> {
        let Kind::Shared {
            source,
            unsent,
            generation,
            ..
        } = &mut self.0
        else {
            return None;
        };
        let mut s = lock(source);
        if s.copy.limit == 0 || unsent.is_some() || s.complete || s.failed || s.copy.overflowed {
            return None;
        }
        *generation += 1;
        s.reader = *generation;
        drop(s);
        Some(source.clone())
    }
}

/// Where reading ahead stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ahead {
    /// Waiting for more of the body (the context will be woken).
    Reading,
    /// The body ended or failed.
    Done,
    /// Past the buffer limit: reading stops.
    Overflowed,
}

/// Reads what has arrived of the body into the copy.
fn poll_ahead(source: &Mutex<Source>, cx: &mut Context<'_>) -> Ahead {
    let mut s = lock(source);
    loop {
        match s.poll_read(cx, Mode::Ahead) {
            Poll::Ready(Some(Ok(_))) if s.copy.overflowed => return Ahead::Overflowed,
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(_) => return Ahead::Done,
            Poll::Pending => return Ahead::Reading,
        }
    }
}

#[cfg(test)]
mod malformed_tests {
    use super::{gone, is_malformed, MALFORMED};
    use std::io;

    #[test]
    fn only_a_broken_framing_is_the_clients_malformed_body() {
        let chunk = io::Error::new(io::ErrorKind::InvalidInput, "Invalid chunk size line");
        assert!(is_malformed(&chunk));
        let overflow = io::Error::new(io::ErrorKind::InvalidData, "chunk size overflow");
        assert!(is_malformed(&overflow));
        assert!(is_malformed(gone(MALFORMED).as_ref()));
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "early eof");
        assert!(!is_malformed(&eof));
        let tls = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(!is_malformed(&tls));
        assert!(!is_malformed(gone("request body failed").as_ref()));
    }

    #[test]
    fn trailers_past_the_limit_are_told_apart_and_survive_the_copy() {
        use super::{classify, TOO_LARGE};
        use egret_upstream::body::{BodyFailed, TrailersTooLarge};
        let e = io::Error::new(io::ErrorKind::InvalidData, TrailersTooLarge);
        assert_eq!(classify(&e), Some(BodyFailed::TooLarge));
        assert_eq!(
            classify(gone(TOO_LARGE).as_ref()),
            Some(BodyFailed::TooLarge)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_the_body_within_the_limit_and_gives_up_past_it() {
        let data = |s: &'static str| Chunk::Data(Bytes::from_static(s.as_bytes()));
        let mut c = BodyCopy::new(10);
        c.push_live(data("hello "));
        c.push_live(data("worl"));
        assert_eq!((c.len, c.overflowed), (10, false));
        c.push_live(data("d"));
        assert!(c.overflowed);
        assert!(c.chunks.is_empty(), "memory is released");
        c.push_live(data("!"));
        assert_eq!(c.len, 0);

        // Read ahead, past the limit: kept for the attempt that comes next.
        let mut c = BodyCopy::new(4);
        c.push_ahead(data("abc"));
        c.push_ahead(data("de"));
        assert!(c.overflowed);
        assert_eq!(c.len, 5);

        let mut none = BodyCopy::new(0);
        none.push_live(data("x"));
        assert!(none.overflowed, "no copy is kept without retries");
    }

    /// A downstream body fed by the test; it ends when the sender is dropped.
    struct Chan(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

    impl Body for Chan {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    fn shared_body(retry: bool) -> (tokio::sync::mpsc::UnboundedSender<Bytes>, RequestBody) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            tx,
            RequestBody::shared(Box::pin(Chan(rx)), SizeHint::default(), retry),
        )
    }

    fn poll_once(b: &mut UpstreamBody) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let waker = Waker::noop();
        Pin::new(b).poll_frame(&mut Context::from_waker(waker))
    }

    /// The data frames `b` yields until it would wait or ends.
    fn drain(b: &mut UpstreamBody) -> (Vec<Bytes>, bool) {
        let mut out = Vec::new();
        loop {
            match poll_once(b) {
                Poll::Ready(Some(Ok(f))) => out.push(f.into_data().unwrap()),
                Poll::Ready(None) => return (out, true),
                Poll::Ready(Some(Err(e))) => panic!("{e}"),
                Poll::Pending => return (out, false),
            }
        }
    }

    fn kib(n: usize, byte: u8) -> Bytes {
        Bytes::from(vec![byte; n * 1024])
    }

    #[test]
    fn a_retry_replays_what_was_read_then_reads_on() {
        let (tx, mut body) = shared_body(true);
        tx.send(Bytes::from_static(b"one ")).unwrap();
        let mut first = body.next_attempt().unwrap();
        assert_eq!(
            drain(&mut first),
            (vec![Bytes::from_static(b"one ")], false)
        );
        // The upstream answered before the body was complete: a retry is still possible.
        assert!(body.replayable());
        let mut second = body.next_attempt().unwrap();
        assert!(
            matches!(poll_once(&mut first), Poll::Ready(Some(Err(_)))),
            "the retired attempt's body fails"
        );
        tx.send(Bytes::from_static(b"two")).unwrap();
        drop(tx);
        let (frames, ended) = drain(&mut second);
        assert_eq!(frames, [&b"one "[..], b"two"]);
        assert!(ended);
        assert_eq!(body.received().unwrap().load(Ordering::Relaxed), 7);
        // And once more, from the copy alone.
        let mut third = body.next_attempt().unwrap();
        assert_eq!(
            drain(&mut third),
            (
                vec![Bytes::from_static(b"one "), Bytes::from_static(b"two")],
                true
            )
        );
    }

    #[test]
    fn past_the_limit_the_attempt_in_flight_gets_everything_and_no_other_is_made() {
        let (tx, mut body) = shared_body(true);
        let mut first = body.next_attempt().unwrap();
        for i in 0..3 {
            tx.send(kib(600, i)).unwrap();
        }
        drop(tx);
        let (frames, ended) = drain(&mut first);
        assert_eq!((frames.len(), ended), (3, true));
        assert!(!body.replayable());
        assert!(body.next_attempt().is_none());
    }

    #[tokio::test]
    async fn reading_ahead_during_connect_keeps_the_bytes_for_the_attempt() {
        let (tx, mut body) = shared_body(true);
        for i in 0..3 {
            tx.send(kib(600, i)).unwrap();
        }
        // Reading ahead stops past the limit (two frames); the attempt still sends all three.
        body.read_ahead_during(std::future::ready(())).await;
        assert_eq!(
            body.received().unwrap().load(Ordering::Relaxed),
            1200 * 1024
        );
        let mut first = body.next_attempt().expect("the first attempt always goes");
        drop(tx);
        let (frames, ended) = drain(&mut first);
        assert_eq!(frames, [kib(600, 0), kib(600, 1), kib(600, 2)]);
        assert!(ended);
        assert!(body.next_attempt().is_none(), "past the limit: no retry");
    }

    #[tokio::test]
    async fn outgrowing_the_buffer_while_waiting_to_retry_is_an_overflow() {
        let (tx, mut body) = shared_body(true);
        let mut first = body.next_attempt().unwrap();
        tx.send(kib(600, 1)).unwrap();
        assert_eq!(drain(&mut first).0.len(), 1);
        drop(first);
        // Within the limit: the back-off just waits.
        tx.send(kib(100, 2)).unwrap();
        assert_eq!(body.back_off(Duration::from_millis(1)).await, Ok(()));
        // Past it: Envoy's 507, without waiting the back-off out.
        tx.send(kib(600, 3)).unwrap();
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            body.back_off(Duration::from_secs(3600)),
        );
        assert_eq!(waited.await, Ok(Err(BufferOverflow)));
    }

    #[test]
    fn mirrors_get_every_byte_and_hold_the_reading_back_when_far_behind() {
        let (tx, mut body) = shared_body(true);
        let (mut mirror, _hold) = body.mirror_body().unwrap();
        let mut first = body.next_attempt().unwrap();
        for i in 0..4 {
            tx.send(kib(400, i)).unwrap();
        }
        drop(tx);
        // Three frames (1.2 MiB) queue up for the mirror; then the attempt waits for it.
        let (frames, ended) = drain(&mut first);
        assert_eq!((frames.len(), ended), (3, false));
        let (copied, _) = drain(&mut mirror);
        assert_eq!(copied.len(), 3);
        let (frames, ended) = drain(&mut first);
        assert_eq!((frames.len(), ended), (1, true));
        let (copied, ended) = drain(&mut mirror);
        assert_eq!((copied, ended), (vec![kib(400, 3)], true));

        // A mirror whose task ended holds nothing back, even while its connection still has
        // the body (which then fails rather than end short).
        let (tx, mut body) = shared_body(false);
        let (mut mirror, hold) = body.mirror_body().unwrap();
        let mut first = body.next_attempt().unwrap();
        drop(hold);
        for i in 0..4 {
            tx.send(kib(400, i)).unwrap();
        }
        drop(tx);
        assert_eq!(
            drain(&mut first),
            ((0..4).map(|i| kib(400, i)).collect(), true)
        );
        assert!(matches!(poll_once(&mut mirror), Poll::Ready(Some(Err(_)))));
    }
}
