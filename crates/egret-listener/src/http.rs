//! Serving one downstream connection as HTTP/1.1 or cleartext HTTP/2 (prior knowledge, as
//! Istio sidecars talk to the gateway), detected from the first bytes.
//!
//! An HTTP/1.1 connection holds hyper's state — an 8 KB read buffer and an 8 KB write buffer
//! among it — only while it is in use. The client speaks first, so until its first bytes
//! arrive the connection is its socket and a small task. After a response, once the
//! connection has been idle for the release delay (100 ms by default), hyper's connection is
//! ended without closing the socket ([`http1::Connection`]'s parts: the socket and any bytes
//! read ahead) and rebuilt when the next request arrives. Keep-alive connections that wait
//! between requests — the common case at an egress gateway fed by sidecars — then cost ~3.6 KB
//! instead of ~21 KB each (benches/RESULTS.md, item 10); a connection under
//! load never waits that long and keeps its buffers.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use egret_core::limits::MAX_REQUEST_HEADERS_BYTES;
use egret_http::body::{DoneHook, ResponseBody};
use egret_http::headers::connection_has;
use egret_http::refusal;
use egret_http::service::{handle, ClientGone};
use egret_http::{ConnContext, HttpShared};
use egret_upstream::body::RequestEnd;

/// The connection preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a downstream HTTP connection is served.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// How long a connection may wait for a request (Envoy's idle timeout, 1 h); zero
    /// disables it.
    pub idle_timeout: Duration,
    /// How long an HTTP/1.1 connection stays idle after a response before hyper's buffers
    /// are released.
    pub release_delay: Duration,
    /// Counts releases (`egret_downstream_http1_buffer_releases_total`).
    pub releases: Arc<AtomicU64>,
    /// Woken once when the gateway starts draining (with `drain` turned true): what an idle
    /// connection waits on, a 64-byte `Notified` where the watch's own wait takes 160.
    pub drain_started: Arc<tokio::sync::Notify>,
}

/// Serves until the client is done — or, once `drain` turns true, until in-flight requests
/// have finished (hyper's graceful shutdown: `connection: close` on HTTP/1.1, GOAWAY on h2).
/// An idle connection is closed by a drain at once. Until the client's first bytes arrive
/// the connection holds only its socket and this future: `ctx` is called once they have.
///
/// A plain function returning the future rather than an `async fn`: an `async fn` keeps its
/// arguments twice (as passed, and moved into its body), and this future is what every idle
/// connection holds (`-Zprint-type-sizes`: 720 → 488 bytes, with `next_bytes`).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub fn serve_http<S>(
    mut io: S,
    shared: Arc<HttpShared>,
    ctx: impl FnOnce() -> Arc<ConnContext>,
    mut drain: watch::Receiver<bool>,
    options: HttpOptions,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let mut read_ahead = Bytes::new();
        // Enough bytes to tell the HTTP/2 preface from an HTTP/1.1 request line.
        while read_ahead.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&read_ahead) {
            let wait = next_bytes(
                &mut io,
                options.idle_timeout,
                &drain,
                &options.drain_started,
            );
            let Some(more) = wait.await else {
                return close(io).await;
            };
            let mut joined = BytesMut::from(&read_ahead[..]);
            joined.extend_from_slice(&more);
            read_ahead = joined.freeze();
        }
        let ctx = ctx();
        if read_ahead.starts_with(H2_PREFACE) {
            let io = ReadAhead::new(read_ahead, io, None);
            return Box::pin(serve_h2(io, shared, ctx, drain)).await;
        }
        let idle = Arc::new(IdleState::default());
        loop {
            let io_ahead = ReadAhead::new(read_ahead, io, Some(idle.clone()));
            let session = serve_h1(io_ahead, &shared, &ctx, &idle, &mut drain, &options);
            // Boxed: hyper's connection lives on the heap only while the session does.
            match Box::pin(session).await {
                Some((back, rest)) => {
                    io = back;
                    read_ahead = rest;
                }
                None => return,
            }
            if read_ahead.is_empty() {
                let wait = next_bytes(
                    &mut io,
                    options.idle_timeout,
                    &drain,
                    &options.drain_started,
                );
                match wait.await {
                    Some(bytes) => read_ahead = bytes,
                    None => return close(io).await,
                }
            }
        }
    }
}

/// Waits for the client's next bytes with no buffer held across the wait (the read's buffer
/// lives on the stack of one poll). None when the client ended the stream, the idle timeout
/// passed, or the gateway drains. Polled by hand, not a `select!` over a timeout and the
/// drain watch, and a plain function returning the future: this is the state every idle
/// connection waits in.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
fn next_bytes<'a, S: AsyncRead + Unpin>(
    io: &'a mut S,
    idle_timeout: Duration,
    drain: &'a watch::Receiver<bool>,
    drain_started: &'a tokio::sync::Notify,
) -> impl std::future::Future<Output = Option<Bytes>> + 'a {
    async move {
        let mut started = std::pin::pin!(drain_started.notified());
        // Registered before the look at the flag: a drain starting in between still wakes it.
        started.as_mut().enable();
        if *drain.borrow() {
            return None;
        }
        // 0 disables the idle timeout, as in Envoy.
        let mut idle =
            std::pin::pin!((!idle_timeout.is_zero()).then(|| tokio::time::sleep(idle_timeout)));
        poll_fn(|cx| {
            let mut buf = [0u8; 4096];
            let mut buf = ReadBuf::new(&mut buf);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let got = buf.filled();
                    return Poll::Ready((!got.is_empty()).then(|| Bytes::copy_from_slice(got)));
                }
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            if let Some(sleep) = idle.as_mut().as_pin_mut() {
                if sleep.poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            if started.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

/// Closes a connection that holds no request (TLS: with a close_notify), bounded so a client
/// that reads nothing cannot hold the task.
async fn close<S: AsyncWrite + Unpin>(mut io: S) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

async fn serve_h2<S>(
    io: ReadAhead<S>,
    shared: Arc<HttpShared>,
    ctx: Arc<ConnContext>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .max_header_list_size(MAX_REQUEST_HEADERS_BYTES as u32)
        // RFC 8441 `SETTINGS_ENABLE_CONNECT_PROTOCOL`: WebSockets over HTTP/2 (extended
        // CONNECT), as Envoy offers with `allow_connect` and websocket upgrades enabled.
        .enable_connect_protocol()
        .timer(TokioTimer::new());
    // Boxed per request: see `serve_h1`.
    let svc = service_fn(move |req| Box::pin(handle(shared.clone(), ctx.clone(), req)));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = drained(&mut drain) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream HTTP/2 connection ended with an error");
    }
}

/// One hyper HTTP/1.1 connection on the socket, until the client or a drain ends it (None)
/// or it has been idle for the release delay (the socket and the bytes read ahead).
async fn serve_h1<S>(
    io: ReadAhead<S>,
    shared: &Arc<HttpShared>,
    ctx: &Arc<ConnContext>,
    idle: &Arc<IdleState>,
    drain: &mut watch::Receiver<bool>,
    options: &HttpOptions,
) -> Option<(S, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Built per session, not held while the connection waits between sessions.
    let mut builder = http1::Builder::new();
    builder
        // Read past the 60 KiB header limit so the handler can answer it as Envoy does (431
        // with a log line); hyper's own 431 only beyond this.
        .max_buf_size(MAX_REQUEST_HEADERS_BYTES * 4)
        // Envoy's idle timeout also bounds a request head that stalls half-way; hyper's
        // header-read timer runs while it waits for a head (its own default, 30 s, closed
        // slow clients that Envoy keeps).
        .header_read_timeout((!options.idle_timeout.is_zero()).then_some(options.idle_timeout))
        .timer(TokioTimer::new());
    idle.release.store(false, Ordering::Relaxed);
    // Released only after an exchange of this session: bytes carried over from the last one
    // (a request head cut short) must not be released again and again before the head is
    // complete — that would also restart hyper's header-read timer each time.
    idle.last_keeps_alive.store(false, Ordering::Relaxed);
    idle.upgrade_offered.store(false, Ordering::Relaxed);
    let (svc_shared, svc_ctx, state) = (shared.clone(), ctx.clone(), idle.clone());
    let done: DoneHook = {
        let state = idle.clone();
        Arc::new(move |keeps_alive| {
            state.last_keeps_alive.store(keeps_alive, Ordering::Relaxed);
            state.ended.fetch_add(1, Ordering::Relaxed);
        })
    };
    let svc = service_fn(move |mut req: Request<Incoming>| {
        // Only a bodiless HTTP/1.1 keep-alive exchange may end with the connection released:
        // anything else either closes (hyper decides) or may leave request bytes unread.
        let keeps_alive = req.version() == Version::HTTP_11
            && req.body().is_end_stream()
            && !connection_has(req.headers(), "close");
        // A request with a body: marked when the body has been read to its end. A response
        // that starts before then closes the connection, with `connection: close` (Envoy
        // 1.40, for local replies at routing and for upstreams that answer early).
        let body_end = (!req.body().is_end_stream()).then(|| {
            let end = Arc::new(RequestEnd::default());
            req.extensions_mut().insert(end.clone());
            end
        });
        if req
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some()
        {
            state.upgrade_offered.store(true, Ordering::Relaxed);
        }
        state.started.fetch_add(1, Ordering::Relaxed);
        // Boxed: hyper's HTTP/1 dispatcher reserves room for the service future for the
        // whole life of the connection, and ours is ~10 KB; boxing moves that to the
        // requests in flight. (A plain struct around the box, not an `async` block: that
        // copied the 10 KB future into its own state on every request.)
        TrackedResponse {
            handling: Box::pin(handle(svc_shared.clone(), svc_ctx.clone(), req)),
            done: Some(done.clone()),
            keeps_alive,
            body_end,
        }
    });
    // With upgrades: a WebSocket `101` hands the connection to the request (egret-http).
    let mut conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    // One timer per session, not one per request: it is set when the connection is first
    // seen idle, and when it fires the connection is released if no exchange has finished
    // since it was set (so after one to two delays of idleness); a busy connection touches
    // the timer once per delay, not once per request.
    let release_timer = tokio::time::sleep(options.release_delay);
    tokio::pin!(release_timer);
    // The count of finished exchanges when the timer was set; None: not set.
    let mut armed_at = None;
    let drive = poll_fn(|cx| loop {
        if let Poll::Ready(r) = Pin::new(&mut conn).poll(cx) {
            return Poll::Ready(r);
        }
        if idle.release.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let Some(ended) = idle.idle_after() else {
            return Poll::Pending;
        };
        if !options.release_delay.is_zero() {
            if armed_at.is_some() && release_timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if armed_at != Some(ended) {
                // First seen idle, or busy since the timer was set: another period.
                let deadline = tokio::time::Instant::now() + options.release_delay;
                release_timer.as_mut().reset(deadline);
                armed_at = Some(ended);
                if release_timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        // Idle for a whole period, nothing in flight: end hyper's connection; the socket
        // stays open (`ReadAhead` ignores the shutdown).
        idle.release.store(true, Ordering::Relaxed);
        Pin::new(&mut conn).graceful_shutdown();
    });
    let result = tokio::select! {
        // hyper first: bytes carried into this session are a request it must still parse
        // (and answer, with `connection: close`) when the gateway is already draining.
        biased;
        r = drive => r,
        _ = drained(drain) => {
            idle.release.store(false, Ordering::Relaxed);
            Pin::new(&mut conn).graceful_shutdown();
            (&mut conn).await
        }
    };
    if let Err(e) = result {
        if e.is_parse() {
            if let Some(parts) = conn.into_parts() {
                let (io, held, _) = parts.io.into_inner().into_parts();
                refuse_unparsed(io, held.is_some(), &e, &parts.read_buf, shared, ctx).await;
            }
        } else {
            tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
            let in_flight =
                idle.started.load(Ordering::Relaxed) != idle.ended.load(Ordering::Relaxed);
            if e.is_incomplete_message() && !in_flight {
                refusal::log_abandoned_head(shared, ctx);
            }
            if let Some(parts) = conn.into_parts() {
                send_held(parts.io.into_inner()).await;
            }
        }
        return None;
    }
    if !idle.release.load(Ordering::Relaxed) {
        // Ended by hyper (a close): a write held back was not its answer to a bad head.
        if let Some(parts) = conn.into_parts() {
            send_held(parts.io.into_inner()).await;
        }
        return None;
    }
    // None: the connection was upgraded and belongs to its tunnel now.
    let Some(parts) = conn.into_parts() else {
        tracing::debug!("downstream HTTP connection upgraded while being released");
        return None;
    };
    options.releases.fetch_add(1, Ordering::Relaxed);
    let (mut io, held, ahead) = parts.io.into_inner().into_parts();
    if let Some(held) = held {
        // Not reached in practice: a held write is sent before hyper reads again.
        if io.write_all(&held).await.is_err() {
            return None;
        }
    }
    // A copy of what was read ahead (a pipelined request, usually nothing): keeping hyper's
    // buffer would keep all of its 8 KB.
    let mut rest = BytesMut::with_capacity(parts.read_buf.len() + ahead.len());
    rest.extend_from_slice(&parts.read_buf);
    rest.extend_from_slice(&ahead);
    Some((io, rest.freeze()))
}

/// hyper could not parse a request head: answers and logs it as Envoy's codec does (the
/// status, body and details of [`egret_http::refusal::for_parse_error`]), then closes. hyper's
/// own answer (a bare `400`, `414` or `431`) was held back by [`ReadAhead`]; if it went out
/// anyway (behind a response in the same write), the record says what hyper sent.
async fn refuse_unparsed<S: AsyncWrite + Unpin>(
    mut io: S,
    held_back: bool,
    error: &hyper::Error,
    head: &[u8],
    shared: &HttpShared,
    ctx: &ConnContext,
) {
    let refusal = refusal::for_parse_error(&error.to_string(), head);
    tracing::debug!(%error, status = refusal.status, "downstream request head refused");
    let (wire, mut guard) = refusal::unparsed_refusal(shared, ctx, refusal);
    // An HTTP/2 preface where a request was due: hyper ends without answering.
    if held_back || error.is_parse_version_h2() {
        // Small: it fits the socket's buffer; bounded all the same.
        let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(&wire)).await;
    } else {
        let rec = guard.record();
        rec.response_code = if error.is_parse_too_large() {
            431
        } else if error.to_string().starts_with("URI too long") {
            414
        } else {
            400
        };
        rec.bytes_sent = 0;
    }
    guard.finish();
    close(io).await;
}

/// A session that ended other than on a bad head: what [`ReadAhead`] still held goes out (it
/// was not hyper's answer to one), then the connection is closed.
async fn send_held<S: AsyncWrite + Unpin>(io: ReadAhead<S>) {
    let (mut io, held, _) = io.into_parts();
    if let Some(held) = held {
        let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(&held)).await;
        close(io).await;
    }
}

/// hyper's own answer to a head it could not parse: `HTTP/1.1 4xx|5xx <reason>`, then exactly
/// `connection: close`, `content-length: 0` and `date`, and nothing after (hyper 1.x's
/// `Server::on_error`). Every response head the gateway sends carries `server`; a body chunk
/// that happens to look like this is held, not lost ([`ReadAhead`]).
fn is_hyper_error_reply(buf: &[u8]) -> bool {
    let Some(rest) = buf.strip_prefix(b"HTTP/1.1 ") else {
        return false;
    };
    if !matches!(rest.first(), Some(b'4' | b'5')) {
        return false;
    }
    let Some(head) = buf.strip_suffix(b"\r\n\r\n") else {
        return false;
    };
    let mut seen = 0u8;
    for line in head.split(|&b| b == b'\n').skip(1) {
        match line.strip_suffix(b"\r").unwrap_or(line) {
            b"connection: close" => seen |= 1,
            b"content-length: 0" => seen |= 2,
            l if l.starts_with(b"date: ") => seen |= 4,
            _ => return false,
        }
    }
    seen == 7
}

/// Ready once the gateway drains.
async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

/// What a connection's requests tell its task about whether it is idle.
#[derive(Default)]
struct IdleState {
    /// Requests handed to the service, and responses whose body hyper has finished with.
    started: AtomicU64,
    ended: AtomicU64,
    /// Whether the last finished exchange left the connection reusable.
    last_keeps_alive: AtomicBool,
    /// Set when hyper's connection is being ended for a release: the socket is not shut.
    release: AtomicBool,
    /// A request of this session offered an upgrade (any `Upgrade:` header, or CONNECT):
    /// hyper then holds a pending upgrade until its connection ends — even after a
    /// response that was not a 101 — and ending it would hand the socket to that upgrade
    /// instead of back to us. Such a session is never released.
    upgrade_offered: AtomicBool,
}

impl IdleState {
    /// Some(count of finished exchanges) when nothing is in flight and the last exchange
    /// kept the connection alive.
    fn idle_after(&self) -> Option<u64> {
        let ended = self.ended.load(Ordering::Relaxed);
        (self.started.load(Ordering::Relaxed) == ended
            && self.last_keeps_alive.load(Ordering::Relaxed)
            && !self.upgrade_offered.load(Ordering::Relaxed))
        .then_some(ended)
    }
}

/// The service's future: the response, its body set to report when hyper is done with it.
/// (Set in place: wrapping the body in another type, or taking the response out of the
/// inner poll, copied the ~1 KB response once or twice more per request.)
struct TrackedResponse<F> {
    handling: Pin<Box<F>>,
    done: Option<DoneHook>,
    keeps_alive: bool,
    /// The request's body end, when it has a body.
    body_end: Option<Arc<RequestEnd>>,
}

impl<F> Future for TrackedResponse<F>
where
    F: Future<Output = Result<Response<ResponseBody>, ClientGone>>,
{
    type Output = Result<Response<ResponseBody>, ClientGone>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Changed in place and returned as polled: no extra copy of the response.
        let mut polled = self.handling.as_mut().poll(cx);
        if let Poll::Ready(Ok(resp)) = &mut polled {
            let body_unread = self.body_end.as_ref().is_some_and(|e| e.at().is_none());
            if body_unread && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            let keeps_alive = self.keeps_alive
                && resp.status() != StatusCode::SWITCHING_PROTOCOLS
                && !connection_has(resp.headers(), "close");
            if let Some(done) = self.done.take() {
                resp.body_mut().on_done(done, keeps_alive);
            }
        }
        polled
    }
}

/// The socket with bytes already read from it in front; a shutdown is skipped while the
/// connection is being released, so the socket outlives hyper's connection.
/// On HTTP/1.1 it also holds back a write that looks like hyper's own answer to a head it
/// could not parse ([`is_hyper_error_reply`]), so that Envoy's can be sent instead
/// ([`refuse_unparsed`]). Held, not dropped: if the session does not end on that parse error
/// (a body chunk that happened to look like it), the bytes go out before anything is read or
/// written next, or when the session ends.
struct ReadAhead<S> {
    ahead: Bytes,
    io: S,
    idle: Option<Arc<IdleState>>,
    held: Option<Bytes>,
}

impl<S> ReadAhead<S> {
    fn new(ahead: Bytes, io: S, idle: Option<Arc<IdleState>>) -> ReadAhead<S> {
        ReadAhead {
            ahead,
            io,
            idle,
            held: None,
        }
    }

    /// The socket, a write still held back, and the bytes read ahead.
    fn into_parts(self) -> (S, Option<Bytes>, Bytes) {
        (self.io, self.held, self.ahead)
    }

    /// Holds `buf` back if it is hyper's answer to an unparsable head, on HTTP/1.1.
    fn hold_back(&mut self, buf: &[u8]) -> bool {
        if self.idle.is_some() && is_hyper_error_reply(buf) {
            self.held = Some(Bytes::copy_from_slice(buf));
            return true;
        }
        false
    }
}

impl<S: AsyncWrite + Unpin> ReadAhead<S> {
    /// Sends what is held back, before the next read or write.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(held) = self.held.as_mut() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = held.split_to(n);
            if held.is_empty() {
                self.held = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // hyper reads on after a response but never after its answer to a bad head.
        if self.held.is_some() {
            ready!(self.poll_send_held(cx))?;
        }
        if !self.ahead.is_empty() {
            if buf.remaining() >= self.ahead.len() {
                // Taken whole: an empty remainder split off would keep the allocation alive.
                buf.put_slice(&std::mem::take(&mut self.ahead));
            } else {
                let n = buf.remaining();
                buf.put_slice(&self.ahead.split_to(n));
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.held.is_some() {
            ready!(self.poll_send_held(cx))?;
        }
        if self.hold_back(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.held.is_some() {
            ready!(self.poll_send_held(cx))?;
        }
        let mut written = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (written.next(), written.next()) {
            if self.hold_back(only) {
                return Poll::Ready(Ok(only.len()));
            }
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let releasing = self
            .idle
            .as_ref()
            .is_some_and(|s| s.release.load(Ordering::Relaxed));
        // hyper shuts the socket after its answer to an unparsable head; ours is still to be
        // written (`refuse_unparsed`, or `send_held` when it was not that, closes after it).
        if releasing || self.held.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::is_hyper_error_reply;

    #[test]
    fn only_hypers_bare_answers_are_held_back() {
        // What hyper 1.x writes for an unparsable head (captured from the wire).
        for held in [
            &b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 26 Nov 2026 21:04:16 GMT\r\n\r\n"[..],
            b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 26 Nov 2026 21:04:16 GMT\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: x\r\n\r\n",
        ] {
            assert!(is_hyper_error_reply(held), "{}", String::from_utf8_lossy(held));
        }
        for sent in [
            // The gateway's own replies carry `server`.
            &b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\nserver: istio-envoy\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\ndate: x\r\nserver: istio-envoy\r\nconnection: close\r\n\r\nBad Request",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            // A response's tail followed by hyper's answer in one write: not held back.
            b"okHTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            // Part of a head.
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
        ] {
            assert!(!is_hyper_error_reply(sent), "{}", String::from_utf8_lossy(sent));
        }
    }
}
