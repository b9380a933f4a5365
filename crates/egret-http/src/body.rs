//! The response body sent downstream. It owns the request's access-log record and hands it
//! to the log when the body ends — or when it is dropped because the client went away —
//! so `%BYTES_SENT%` and `%DURATION%` cover the whole response, as in Envoy.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use egret_core::{LogGuard, ResponseFlags};
use egret_upstream::body::RequestEnd;
use egret_upstream::{PooledConn, UpstreamError, UpstreamResponseBody};
use http_body::{Body, Frame, SizeHint};

use crate::local_reply::reset_details;

pub struct ResponseBody {
    kind: Kind,
    log: Option<LogState>,
    /// The route timeout, which covers the body too (boxed: most routes have none).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Envoy's `stream_idle_timeout` for the body; zero: none.
    idle: Duration,
    /// Armed the first time the body is seen waiting: a body that never waits (most short
    /// responses) costs no timer and no clock read.
    idle_watch: Option<IdleWatch>,
}

/// The stream idle timer of a response body under way.
struct IdleWatch {
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The last movement: a body frame from the upstream, or request body bytes seen.
    since: tokio::time::Instant,
    /// The request body's byte count when last looked at.
    received: u64,
}

/// Why a response body ended early: the upstream's error, or the route timeout.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The route timeout expired while the body was on its way.
#[derive(Debug)]
struct RouteTimeout;

impl std::fmt::Display for RouteTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("route timeout expired during the response body")
    }
}

impl std::error::Error for RouteTimeout {}

/// The stream idle timeout expired while the body was on its way.
#[derive(Debug)]
struct StreamIdle;

impl std::fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream idle timeout expired during the response body")
    }
}

impl std::error::Error for StreamIdle {}

enum Kind {
    Full(Option<Bytes>),
    /// Boxed: most responses are local or short, and the upstream parts are ~200 bytes.
    Upstream(Box<Upstream>),
}

struct Upstream {
    inner: UpstreamResponseBody,
    conn: Option<PooledConn>,
}

/// Set once a downstream HTTP/2 connection has ended (its socket's end or first error).
/// The listener puts it in the connection's context: a stream given up while it is unset
/// was reset by the client (`DR http2.remote_reset`), not left with the connection (`DC`).
#[derive(Clone, Debug, Default)]
pub struct H2ConnectionEnd(pub Arc<AtomicBool>);

impl H2ConnectionEnd {
    /// Whether a stream given up now was reset by the client, the connection living on.
    pub fn stream_reset(&self) -> bool {
        !self.0.load(Ordering::Relaxed)
    }
}

struct LogState {
    guard: LogGuard,
    sent: u64,
    received: Option<Arc<AtomicU64>>,
    /// On a downstream HTTP/2 connection: set once the connection has ended. A body given up
    /// while it is still open was given up by its stream: the client reset it.
    h2_connection_ended: Option<Arc<AtomicBool>>,
    /// The request body's end, when it had not come with the response's start.
    request_end: Option<Arc<RequestEnd>>,
}

impl ResponseBody {
    pub fn full(b: Option<Bytes>) -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(b.filter(|b| !b.is_empty())),
            log: None,
            deadline: None,
            idle: Duration::ZERO,
            idle_watch: None,
        }
    }

    pub fn upstream(inner: UpstreamResponseBody, conn: PooledConn) -> ResponseBody {
        ResponseBody {
            kind: Kind::Upstream(Box::new(Upstream {
                inner,
                conn: Some(conn),
            })),
            log: None,
            deadline: None,
            idle: Duration::ZERO,
            idle_watch: None,
        }
    }

    /// Attach the request's log record; it is written when this body ends or is dropped.
    pub fn with_log(mut self, guard: LogGuard, received: Option<Arc<AtomicU64>>) -> ResponseBody {
        self.log = Some(LogState {
            guard,
            sent: 0,
            received,
            h2_connection_ended: None,
            request_end: None,
        });
        self
    }

    /// The request's body was still arriving: its end is recorded when the response ends
    /// (`%REQUEST_DURATION%`), if it came by then.
    pub fn with_request_end(mut self, end: Option<Arc<RequestEnd>>) -> ResponseBody {
        if let Some(l) = &mut self.log {
            l.request_end = end;
        }
        self
    }

    /// The body goes out on a stream of a downstream HTTP/2 connection, whose end `ended`
    /// marks: given up while the connection lives, it is logged as Envoy logs a client's
    /// `RST_STREAM` (`DR http2.remote_reset`, checked with Envoy 1.40), not as the client
    /// leaving (`DC`).
    pub fn on_h2_connection(mut self, ended: &H2ConnectionEnd) -> ResponseBody {
        if let Some(l) = &mut self.log {
            l.h2_connection_ended = Some(ended.0.clone());
        }
        self
    }

    /// Ends the body at `deadline` (the route timeout): Envoy 1.40 resets the stream then —
    /// the client's connection closes mid-body — and logs `UT response_timeout` with the
    /// status already sent.
    pub fn set_deadline(&mut self, deadline: tokio::time::Instant) {
        self.deadline = Some(Box::pin(tokio::time::sleep_until(deadline)));
    }

    /// Ends the body once nothing has moved for `idle` (Envoy's `stream_idle_timeout`, which
    /// covers a response under way too): Envoy 1.40 resets the stream then — the client's
    /// connection closes mid-body, an HTTP/2 stream gets `RST_STREAM INTERNAL_ERROR` — and
    /// logs `SI stream_idle_timeout` with the status already sent. Zero: never.
    pub fn set_stream_idle_timeout(&mut self, idle: Duration) {
        self.idle = idle;
    }

    fn count(&mut self, n: usize) {
        if let Some(l) = &mut self.log {
            l.sent += n as u64;
        }
        if let Some(w) = &mut self.idle_watch {
            w.since = tokio::time::Instant::now();
        }
    }

    /// Request body bytes received so far (movement for the stream idle timeout).
    fn received(&self) -> u64 {
        self.log
            .as_ref()
            .and_then(|l| l.received.as_ref())
            .map_or(0, |r| r.load(Ordering::Relaxed))
    }

    /// The body's timers, while it waits — for its upstream, or (polled by an HTTP/1.1
    /// writer) for the client's socket: ready, the record completed, once the route timeout
    /// passed (`UT response_timeout`) or nothing moved for the stream idle timeout (`SI
    /// stream_idle_timeout`). A client that stops reading is timed out too: Envoy's timers
    /// run then, as it stops reading the upstream (checked with 1.40). Neither runs once the
    /// upstream's body is complete: what is left only has to be written.
    pub fn poll_timeouts(&mut self, cx: &mut Context<'_>) -> Poll<BodyError> {
        if self.log.is_none() || self.is_end_stream() {
            self.idle_watch = None;
            return Poll::Pending;
        }
        if let Some(d) = &mut self.deadline {
            if d.as_mut().poll(cx).is_ready() {
                self.deadline = None;
                self.timed_out();
                return Poll::Ready(Box::new(RouteTimeout));
            }
        }
        if self.poll_stream_idle(cx).is_ready() {
            return Poll::Ready(Box::new(StreamIdle));
        }
        Poll::Pending
    }

    /// Ready, the record completed as `SI stream_idle_timeout`, once the body waited for the
    /// stream idle timeout with nothing moving: no frame from the upstream, no request body
    /// byte from the client.
    fn poll_stream_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.idle.is_zero() {
            return Poll::Pending;
        }
        let received = self.received();
        let idle = self.idle;
        let w = self.idle_watch.get_or_insert_with(|| {
            let since = tokio::time::Instant::now();
            IdleWatch {
                timer: Box::pin(tokio::time::sleep_until(later(since, idle))),
                since,
                received,
            }
        });
        loop {
            if w.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Due; moved since it was set: from the last movement on.
            let now = tokio::time::Instant::now();
            if received != w.received {
                w.received = received;
                w.since = now;
            }
            let due = later(w.since, idle);
            if due <= now {
                break;
            }
            w.timer.as_mut().reset(due);
        }
        self.idle_watch = None;
        if let Some(l) = &mut self.log {
            let rec = l.guard.record();
            rec.set_flag(ResponseFlags::STREAM_IDLE_TIMEOUT);
            rec.response_code_details = Some("stream_idle_timeout".into());
        }
        if let Kind::Upstream(up) = &mut self.kind {
            up.conn.take(); // mid-response: not reusable
        }
        self.finish(false);
        Poll::Ready(())
    }

    /// Completes the record. `complete` = the whole body was delivered.
    fn finish(&mut self, complete: bool) {
        self.idle_watch = None;
        if let Kind::Upstream(up) = &mut self.kind {
            if let Some(c) = up.conn.take() {
                if complete {
                    c.release(&mut up.inner);
                }
            }
        }
        if let Some(mut l) = self.log.take() {
            let rec = l.guard.record();
            rec.bytes_sent = l.sent;
            if let Some(r) = &l.received {
                rec.bytes_received = r.load(Ordering::Relaxed);
            }
            if rec.request_complete.is_none() {
                let end = l.request_end.as_ref().and_then(|e| e.at());
                rec.request_complete = end.map(tokio::time::Instant::into_std);
            }
            if !complete && rec.response_flags.is_empty() {
                let stream_reset = l
                    .h2_connection_ended
                    .as_ref()
                    .is_some_and(|ended| !ended.load(Ordering::Relaxed));
                if stream_reset {
                    rec.set_flag(ResponseFlags::DOWNSTREAM_REMOTE_RESET);
                    rec.response_code_details = Some("http2.remote_reset".into());
                } else {
                    // Envoy: the client went away before the response was delivered.
                    rec.set_flag(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
                    rec.response_code_details = Some("downstream_remote_disconnect".into());
                }
            }
            l.guard.finish();
        }
    }

    fn timed_out(&mut self) {
        if let Some(l) = &mut self.log {
            let rec = l.guard.record();
            rec.set_flag(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
            rec.response_code_details = Some("response_timeout".into());
        }
        if let Kind::Upstream(up) = &mut self.kind {
            up.conn.take(); // mid-response: not reusable
        }
        self.finish(false);
    }

    fn upstream_failed(&mut self, e: &UpstreamError) {
        // After headers, an HTTP/1.1 body cut short (the peer closed early) is a protocol error
        // to Envoy (checked with Envoy 1.40: `UPE upstream_reset_after_response_started{protocol_error}`);
        // an HTTP/2 stream reset stays a remote reset.
        let reason = match e.reset_reason() {
            "remote reset" => "remote reset",
            _ => "protocol error",
        };
        let flag = match reason {
            "protocol error" => ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            "remote reset" => ResponseFlags::UPSTREAM_REMOTE_RESET,
            _ => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
        };
        if let Some(l) = &mut self.log {
            let rec = l.guard.record();
            rec.set_flag(flag);
            rec.response_code_details = Some(reset_details(true, reason, None).into());
        }
        if let Kind::Upstream(up) = &mut self.kind {
            up.conn.take();
        }
        self.finish(false);
    }
}

/// `at + d`, or a time too far to matter when that does not fit (a huge timeout).
fn later(at: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(up) => Pin::new(&mut up.inner).poll_frame(cx),
        };
        // Only while the upstream keeps the body waiting: what it has already sent is
        // delivered however slowly the client reads (Envoy's timer stops when the upstream
        // response is complete).
        if polled.is_pending() {
            if let Poll::Ready(e) = this.poll_timeouts(cx) {
                return Poll::Ready(Some(Err(e)));
            }
        }
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len();
                    this.count(n);
                } else if f.is_trailers() {
                    // Trailers end the body, and hyper drops a body once it has yielded
                    // them, without polling it to its end. Only an HTTP/2 upstream's come
                    // this far (gRPC's status is in them); the HTTP/1.1 codec drops them, as
                    // Envoy's does by default (checked with 1.40).
                    this.finish(true);
                }
            }
            Poll::Ready(Some(Err(e))) => this.upstream_failed(e),
            Poll::Ready(None) => this.finish(true),
            Poll::Pending => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(up) => up.inner.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body already at its end is never polled (no content, HEAD, 204/304).
        let complete = self.is_end_stream();
        self.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egret_core::{AccessLogSink, LogRecord};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Keep(Mutex<Vec<LogRecord>>);

    impl AccessLogSink for Keep {
        fn log(&self, record: Box<LogRecord>) {
            self.0.lock().unwrap().push(*record);
        }
    }

    /// A body whose last frame is out is complete: a writer still waiting for the client's
    /// socket does not time it out (Envoy's stream ends with the upstream's end), and its
    /// record has no flag. An unfinished one is cut `SI` (the e2e tests cover that).
    #[tokio::test]
    async fn a_complete_body_waiting_for_its_writer_is_not_timed_out() {
        let sink = Arc::new(Keep::default());
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let guard = LogGuard::new(LogRecord::new(addr, addr, Arc::from("v")), sink.clone());
        let mut body = ResponseBody::full(Some(Bytes::from_static(b"hello"))).with_log(guard, None);
        body.set_stream_idle_timeout(Duration::from_millis(5));
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(frame.is_some_and(|f| f.is_ok()));
        assert!(body.is_end_stream());
        // The writer, blocked on the socket, keeps asking for well past the timeout.
        let waited = tokio::time::timeout(
            Duration::from_millis(100),
            std::future::poll_fn(|cx| body.poll_timeouts(cx)),
        )
        .await;
        assert!(waited.is_err(), "a complete body timed out");
        drop(body);
        let records = sink.0.lock().unwrap();
        assert_eq!(records.len(), 1);
        assert!(
            records[0].response_flags.is_empty(),
            "{:?}",
            records[0].response_flags
        );
    }
}
