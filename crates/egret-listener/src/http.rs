//! Serving one downstream connection as HTTP/1.1 or cleartext HTTP/2 (prior knowledge, as
//! Istio sidecars talk to the gateway), detected from the first bytes.
//!
//! HTTP/1.1 is Egret's own codec ([`crate::h1`]): the connection's task parses a head, runs
//! the request's handler (which reads the body from the same socket as it forwards it), and
//! writes the response, one exchange after another. A connection holds a read buffer only
//! while it is in use: once it has been idle for the release delay (100 ms by default) the
//! buffer is freed and the connection waits as its socket and a small task until the client
//! speaks again. Keep-alive connections that wait between requests — the common case at an
//! egress gateway fed by sidecars — then cost little more than their socket
//! (benches/RESULTS.md, memory per idle connection). HTTP/2 is hyper's server.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use http::{Method, Request, StatusCode, Version};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use egret_core::limits::MAX_REQUEST_HEADERS_BYTES;
use egret_http::body::H2ConnectionEnd;
use egret_http::headers::{self, connection_has};
use egret_http::refusal;
use egret_http::service::{handle, quiet_for};
use egret_http::upgrade::{PendingUpgrade, UpgradedClient};
use egret_http::{ConnContext, HttpShared};
use egret_upstream::ClientBody;

use crate::h1::{
    self, lock, BodyOut, ConnIo, Framing, ParseScratch, ParsedHead, RequestBodyReader,
    RequestFacts, ResponseWriter, SharedIo, WriteFailed,
};

/// The connection preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a connection the gateway closes on its own account stays open after the response,
/// reading (and dropping) what the client still sends (Envoy's delayed close, 1 s by
/// default; checked with 1.40).
const LINGER: Duration = Duration::from_secs(1);

/// How a downstream HTTP connection is served.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// How long a connection may wait for a request (Envoy's idle timeout, 1 h); zero
    /// disables it.
    pub idle_timeout: Duration,
    /// How long an HTTP/1.1 connection stays idle after a response before its read buffer
    /// is released.
    pub release_delay: Duration,
    /// Counts releases (`egret_downstream_http1_buffer_releases_total`).
    pub releases: Arc<AtomicU64>,
    /// Woken once when the gateway starts draining (with `drain` turned true): what an idle
    /// connection waits on, a 64-byte `Notified` where the watch's own wait takes 160.
    pub drain_started: Arc<tokio::sync::Notify>,
    /// True once the gateway drains.
    pub drain: watch::Receiver<bool>,
}

/// Where a connection's requests find the configuration: each request takes the one in force
/// when its head arrives — a reload reaches the next request of a kept-alive connection (as
/// Envoy applies a route update) without cutting the connection.
pub trait Contexts: Send + Sync + 'static {
    /// The configuration's generation now ([`crate::ActiveConfig::generation`]); read before
    /// [`Contexts::context`].
    fn generation(&self) -> u64;
    /// The context for a request arriving now; None when a reload removed the connection's
    /// listener, or changed what it is.
    fn context(&self) -> Option<Arc<ConnContext>>;
    /// The context of the configuration the connection was accepted with, for requests that
    /// arrive once its listener is gone: answered on it, and the connection closed after
    /// (as Envoy's drain of a removed listener does). None only if that configuration had
    /// no such listener, which the dispatch by it rules out.
    fn accepted_with(&self) -> Option<Arc<ConnContext>>;
}

/// The context for the next request: `current` while the configuration has not changed since
/// `generation`; otherwise a new one and `generation` moved on — or Err when the listener is
/// gone (`current`, the last context the connection had, stays for this request).
fn refresh<C: Contexts + ?Sized>(
    contexts: &C,
    current: &mut Arc<ConnContext>,
    generation: &mut u64,
) -> Result<(), ListenerGone> {
    let now = contexts.generation();
    if now == *generation {
        return Ok(());
    }
    *generation = now;
    *current = contexts.context().ok_or(ListenerGone)?;
    Ok(())
}

/// A reload removed the connection's listener.
struct ListenerGone;

/// Serves until the client is done — or, once `drain` turns true, until in-flight requests
/// have finished (`connection: close` on HTTP/1.1, GOAWAY on h2). An idle connection is
/// closed by a drain at once. Until the client's first bytes arrive the connection holds
/// only its socket and this future: `ctx` is called once they have, and again for each
/// session of HTTP/1.1 exchanges after an idle period.
///
/// A plain function returning the future rather than an `async fn`: an `async fn` keeps its
/// arguments twice (as passed, and moved into its body), and this future is what every idle
/// connection holds: it is the connection's task (`-Zprint-type-sizes`, release build: 392
/// bytes with `next_bytes`; the task's cell 512, which a future over 408 bytes makes 640). `held` is used in place for the same
/// reason: moved into a local, it would be stored twice.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub fn serve_http<S>(
    mut held: Held<S>,
    shared: Arc<HttpShared>,
    contexts: impl Contexts,
    options: Arc<HttpOptions>,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        // Enough bytes to tell the HTTP/2 preface from an HTTP/1.1 request line.
        while held.with_read(|b| b.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(b)) {
            let Some(more) = next_bytes(&mut held, &options).await else {
                return close(&mut held).await;
            };
            held.append(more);
        }
        if held.with_read(|b| b.starts_with(H2_PREFACE)) {
            let io = Rewind {
                ahead: held.take_read().freeze(),
                io: held,
                ended: Arc::new(AtomicBool::new(false)),
                moved: Arc::new(AtomicU64::new(0)),
            };
            return Box::pin(serve_h2(io, shared, contexts, &options)).await;
        }
        loop {
            if held.with_read(BytesMut::is_empty) {
                // Idle between sessions: the next bytes are read into the stack.
                let Some(bytes) = next_bytes(&mut held, &options).await else {
                    return close(&mut held).await;
                };
                held.append(bytes);
            }
            // Made per session, like the session's state: an idle connection does not hold it.
            let generation = contexts.generation();
            let (ctx, gone) = match contexts.context() {
                Some(ctx) => (ctx, false),
                // A reload removed the listener while the connection was idle.
                None => match contexts.accepted_with() {
                    Some(ctx) => (ctx, true),
                    None => return close(&mut held).await,
                },
            };
            let conn = held.into_shared();
            // Boxed: the exchange's state lives on the heap only while the session does.
            let session = Box::pin(serve_h1(
                &conn,
                &shared,
                (ctx, generation, gone),
                &contexts,
                &options,
            ));
            if session.await == SessionEnd::Over {
                return;
            }
            // Released: what it holds of a request head cut short is parsed on at once.
            held = Held::after_session(conn);
        }
    }
}

/// What an HTTP/1.1 connection holds between sessions: its socket and what has been read
/// from it — taken back out of the shared connection when nothing else holds that (a request
/// body's reader kept by an HTTP/2 upstream may, for a while), so an idle connection is its
/// socket and the task's future.
pub enum Held<S> {
    Own(S, BytesMut),
    Shared(h1::Stream<S>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Held<S> {
    /// A connection just accepted: nothing read yet.
    pub fn new(io: S) -> Held<S> {
        Held::Own(io, BytesMut::new())
    }

    fn after_session(conn: SharedIo<S>) -> Held<S> {
        match Arc::try_unwrap(conn) {
            Ok(m) => {
                let (io, buf) = m
                    .into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .into_parts();
                Held::Own(io, buf)
            }
            Err(conn) => Held::Shared(h1::Stream(conn)),
        }
    }

    /// Looks at what has been read and not consumed.
    fn with_read<R>(&self, f: impl FnOnce(&BytesMut) -> R) -> R {
        match self {
            Held::Own(_, buf) => f(buf),
            Held::Shared(s) => f(&lock(&s.0).buf),
        }
    }

    fn append(&mut self, more: BytesMut) {
        let append = |buf: &mut BytesMut| {
            if buf.is_empty() {
                *buf = more;
            } else {
                buf.extend_from_slice(&more);
            }
        };
        match self {
            Held::Own(_, buf) => append(buf),
            Held::Shared(s) => append(&mut lock(&s.0).buf),
        }
    }

    fn take_read(&mut self) -> BytesMut {
        match self {
            Held::Own(_, buf) => std::mem::take(buf),
            Held::Shared(s) => std::mem::take(&mut lock(&s.0).buf),
        }
    }

    fn into_shared(self) -> SharedIo<S> {
        match self {
            Held::Own(io, buf) => Arc::new(Mutex::new(ConnIo::new(io, buf))),
            Held::Shared(s) => s.0,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Held<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Held::Own(io, _) => Pin::new(io).poll_read(cx, buf),
            Held::Shared(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Held<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Held::Own(io, _) => Pin::new(io).poll_write(cx, buf),
            Held::Shared(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Held::Own(io, _) => Pin::new(io).poll_write_vectored(cx, bufs),
            Held::Shared(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    /// As the socket: HTTP/2 (over [`Rewind`]) writes a frame's head and payload together.
    fn is_write_vectored(&self) -> bool {
        match self {
            Held::Own(io, _) => io.is_write_vectored(),
            Held::Shared(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Held::Own(io, _) => Pin::new(io).poll_flush(cx),
            Held::Shared(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Held::Own(io, _) => Pin::new(io).poll_shutdown(cx),
            Held::Shared(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Waits for an idle connection's next bytes and returns them, read into the stack and
/// copied to a buffer of their size; `None` when the client closed, the idle timeout passed
/// or the gateway started draining.
///
/// A hand-written future rather than an `async` block: this is what every idle connection's
/// task holds, and the block kept pinning references and a copy of the timeout beside the
/// `Notified` and the `Sleep` (256 bytes against 200).
fn next_bytes<'a, S: AsyncRead + Unpin>(
    io: &'a mut S,
    options: &'a HttpOptions,
) -> NextBytes<'a, S> {
    NextBytes {
        io,
        options,
        started: options.drain_started.notified(),
        idle: (!options.idle_timeout.is_zero()).then(|| tokio::time::sleep(options.idle_timeout)),
        enabled: false,
    }
}

pin_project_lite::pin_project! {
    struct NextBytes<'a, S> {
        io: &'a mut S,
        options: &'a HttpOptions,
        #[pin]
        started: tokio::sync::futures::Notified<'a>,
        // 0 disables the idle timeout, as in Envoy.
        #[pin]
        idle: Option<tokio::time::Sleep>,
        enabled: bool,
    }
}

impl<S: AsyncRead + Unpin> Future for NextBytes<'_, S> {
    type Output = Option<BytesMut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BytesMut>> {
        let mut this = self.project();
        if !*this.enabled {
            // Registered before the look at the flag: a drain starting in between still
            // wakes it.
            this.started.as_mut().enable();
            *this.enabled = true;
            if *this.options.drain.borrow() {
                return Poll::Ready(None);
            }
        }
        let mut buf = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut buf);
        match Pin::new(&mut **this.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let got = buf.filled();
                return Poll::Ready((!got.is_empty()).then(|| BytesMut::from(got)));
            }
            Poll::Ready(Err(_)) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if let Some(sleep) = this.idle.as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        if this.started.poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// Closes a connection that holds no request (TLS: with a close_notify), bounded so a client
/// that reads nothing cannot hold the task.
/// Takes the connection by reference: by value, an idle connection's future would keep room
/// for it twice.
async fn close<S: AsyncWrite + Unpin>(io: &mut S) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

/// Closes a connection the gateway refused something on, as Envoy's delayed close does: what
/// the client still sends is read and dropped for up to [`LINGER`] (unread bytes would make
/// the kernel reset the connection under the response), then the write side is shut.
async fn close_delayed<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    close(&mut io).await;
}

async fn serve_h2<S>(
    io: Rewind<S>,
    shared: Arc<HttpShared>,
    contexts: impl Contexts,
    options: &HttpOptions,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        // Envoy 1.40's SETTINGS (checked with it: 1,024 streams, a 16 MiB stream window;
        // hyper's are 200 and 1 MiB). The connection's window stays at hyper's 1 MiB where
        // Envoy raises it to 24 MiB: it bounds what a connection's request bodies can have
        // buffered while their upstreams do not read (Envoy stops reading the socket past
        // its buffer limit; hyper's server would hold up to the window).
        .max_concurrent_streams(1024)
        // Streams the client resets before they were accepted: past h2's default of 20 in
        // one read the connection got a GOAWAY, cutting its other streams and logging none
        // of the reset ones (a client cancelling a batch of calls; Envoy 1.40 keeps the
        // connection and logs each `0 DR`). Still bounded, as the Rapid Reset guard it is
        // (CVE-2023-44487): Envoy's own closes a connection once half of 500+ streams were
        // reset early.
        .max_pending_accept_reset_streams(100)
        .initial_stream_window_size(16 << 20)
        .max_header_list_size(MAX_REQUEST_HEADERS_BYTES as u32)
        // RFC 8441 `SETTINGS_ENABLE_CONNECT_PROTOCOL`: WebSockets over HTTP/2 (extended
        // CONNECT), as Envoy offers with `allow_connect` and websocket upgrades enabled.
        .enable_connect_protocol()
        .timer(TokioTimer::new());
    // Set as the connection ends (by the socket, at its end or first error, before the
    // connection's streams hear of it; and when the connection is over): a response body
    // given up while it is unset was given up by its stream's reset.
    let ended = io.ended.clone();
    let moved = io.moved.clone();
    let mut drain = options.drain.clone();
    let ended_for_streams = H2ConnectionEnd(ended.clone());
    // The requests' handlers see it through the connection's context (made once per
    // connection and reload, not an extension per request).
    let for_h2 = {
        let ended = ended_for_streams.clone();
        move |ctx: &ConnContext| {
            Arc::new(ConnContext {
                h2_connection: Some(ended.clone()),
                ..ctx.clone()
            })
        }
    };
    // The context requests take, renewed on the first request after a reload; when the
    // reload removed the listener, the connection is drained (GOAWAY) instead.
    let gone = Arc::new(tokio::sync::Notify::new());
    let gone_seen = gone.clone();
    let generation = contexts.generation();
    let first = match contexts.context() {
        Some(ctx) => ctx,
        None => {
            gone.notify_one();
            let Some(ctx) = contexts.accepted_with() else {
                return;
            };
            ctx
        }
    };
    let current = Mutex::new((for_h2(&first), generation));
    // Boxed per request: the handler's future is ~10 KB.
    let svc = service_fn(move |req: Request<Incoming>| {
        let ctx = {
            let mut current = current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = contexts.generation();
            if now != current.1 {
                current.1 = now;
                match contexts.context() {
                    Some(fresh) => current.0 = for_h2(&fresh),
                    None => gone.notify_one(),
                }
            }
            current.0.clone()
        };
        let handling = handle(shared.clone(), ctx, req.map(ClientBody::http2));
        let ended = ended_for_streams.clone();
        Box::pin(async move {
            handling
                .await
                .map(|resp| resp.map(|body| body.on_h2_connection(&ended)))
        })
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = drained(&mut drain) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = gone_seen.notified() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        // Envoy's idle timeout closes an HTTP/2 connection too (hyper's server has none): no
        // byte either way for that long. A stream silent that long is past the stream idle
        // timeout already, so only connections without a live stream qualify.
        () = quiet_for(|| moved.load(Ordering::Relaxed), options.idle_timeout) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    ended.store(true, Ordering::Relaxed);
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream HTTP/2 connection ended with an error");
    }
}

/// Ready once the gateway drains.
async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

/// How an HTTP/1.1 session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionEnd {
    /// Idle for the release delay: the read buffer was released (what it held of a head cut
    /// short is kept).
    Released,
    /// The connection is closed, or belongs to an upgrade now.
    Over,
}

/// What waiting for a request head came to.
#[expect(
    clippy::large_enum_variant,
    reason = "a value of the moment; boxing the head would allocate per request"
)]
enum HeadRead {
    Head(ParsedHead),
    Refused(refusal::Refusal),
    Released,
    /// The client closed (or the idle timeout passed, or the gateway drains) between requests.
    Closed,
    /// The client closed part-way through a head.
    Abandoned,
}

/// What an exchange left the connection fit for.
enum Next {
    KeepAlive,
    Over,
}

/// HTTP/1.1 exchanges on the connection, one after another, until it closes or has been idle
/// for the release delay.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
fn serve_h1<'a, S, C: Contexts>(
    conn: &'a SharedIo<S>,
    shared: &'a Arc<HttpShared>,
    (mut ctx, mut generation, gone): (Arc<ConnContext>, u64, bool),
    contexts: &'a C,
    options: &'a HttpOptions,
) -> impl Future<Output = SessionEnd> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let drain = &options.drain;
        let mut scratch = ParseScratch::default();
        let mut started = std::pin::pin!(options.drain_started.notified());
        started.as_mut().enable();
        // One release timer per session, not one per request: set when the connection is
        // first seen idle; when it fires the buffer is released if no exchange has finished
        // since it was set (so after one to two delays of idleness). A busy connection
        // touches it once per delay, not once per request.
        let mut release_timer = std::pin::pin!(tokio::time::sleep(options.release_delay));
        let mut armed_at: Option<u64> = None;
        // A head cut short is given the idle timeout to complete (created when one is).
        let mut head_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // When a head was first seen unfinished: an abandoned head is logged with the time
        // since (Envoy 1.40 logs the time the stream waited). Read only on that slow path.
        let mut head_since: Option<std::time::Instant> = None;
        let mut exchanges: u64 = 0;
        loop {
            let read = poll_fn(|cx| {
                let mut c = lock(conn);
                loop {
                    if !c.buf.is_empty() {
                        match h1::parse_head(&mut c.buf, &mut scratch) {
                            Ok(Some(head)) => return Poll::Ready(HeadRead::Head(head)),
                            Ok(None) => {}
                            Err(e) => {
                                return Poll::Ready(HeadRead::Refused(refusal::for_head_error(
                                    e, &c.buf,
                                )))
                            }
                        }
                    }
                    match c.poll_fill(cx) {
                        Poll::Ready(Ok(n)) if n > 0 => {}
                        Poll::Ready(_) if c.buf.is_empty() => return Poll::Ready(HeadRead::Closed),
                        Poll::Ready(_) => return Poll::Ready(HeadRead::Abandoned),
                        Poll::Pending => break,
                    }
                }
                if c.buf.is_empty() && (*drain.borrow() || started.as_mut().poll(cx).is_ready()) {
                    return Poll::Ready(HeadRead::Closed);
                }
                if !c.buf.is_empty() && head_since.is_none() {
                    head_since = Some(std::time::Instant::now());
                }
                if !c.buf.is_empty() && !options.idle_timeout.is_zero() {
                    let timer = head_timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(options.idle_timeout)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(HeadRead::Closed);
                    }
                }
                // Released only after an exchange of this session: a head cut short that was
                // carried over from the last one is not released again and again.
                if exchanges == 0 {
                    return Poll::Pending;
                }
                if !options.release_delay.is_zero() {
                    if armed_at.is_some() && release_timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if armed_at != Some(exchanges) {
                        // First seen idle, or busy since the timer was set: another period.
                        let deadline = tokio::time::Instant::now() + options.release_delay;
                        release_timer.as_mut().reset(deadline);
                        armed_at = Some(exchanges);
                        if release_timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                }
                c.release();
                options.releases.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(HeadRead::Released)
            })
            .await;
            head_timer = None;
            let waited_since = head_since.take();
            let head = match read {
                HeadRead::Head(head) => head,
                HeadRead::Released => return SessionEnd::Released,
                HeadRead::Closed => {
                    close(&mut h1::Stream(conn.clone())).await;
                    return SessionEnd::Over;
                }
                HeadRead::Abandoned => {
                    refusal::log_abandoned_head(shared, &ctx, waited_since);
                    return SessionEnd::Over;
                }
                HeadRead::Refused(r) => {
                    refuse(conn, r, shared, &ctx).await;
                    return SessionEnd::Over;
                }
            };
            exchanges += 1;
            // A reload since the last request: this one takes the new configuration; with
            // its listener gone, it is served on the old one and the connection closes.
            let closing = gone || refresh(contexts, &mut ctx, &mut generation).is_err();
            match exchange(conn, head, &mut scratch, shared, &ctx, drain, closing).await {
                Next::KeepAlive => {}
                Next::Over => return SessionEnd::Over,
            }
        }
    }
}

/// Answers and logs a head the codec could not take as Envoy's codec does (the status, body
/// and details of [`egret_http::refusal::for_head_error`]), then closes.
async fn refuse<S>(
    conn: &SharedIo<S>,
    refusal: refusal::Refusal,
    shared: &HttpShared,
    ctx: &ConnContext,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::debug!(
        status = refusal.status,
        details = refusal.details,
        "request head refused"
    );
    let (wire, guard) = refusal::unparsed_refusal(shared, ctx, refusal);
    let mut stream = h1::Stream(conn.clone());
    // Small: it fits the socket's buffer; bounded all the same.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&wire).await?;
        stream.flush().await
    })
    .await;
    guard.finish();
    close_delayed(stream).await;
}

/// Whether the client has closed its connection, looked at while its request is served:
/// once the request's body has been read to its end (until then its reader sees the client
/// leave; the task is woken when it ends) and while nothing is buffered (bytes of a
/// pipelined request stop the watch, as in hyper).
fn client_left<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &Mutex<ConnIo<S>>,
    cx: &mut Context<'_>,
) -> bool {
    let mut c = lock(conn);
    if !c.watchable(cx) || !c.buf.is_empty() {
        return false;
    }
    matches!(c.poll_fill(cx), Poll::Ready(Ok(0) | Err(_)))
}

/// One request and its response.
async fn exchange<S>(
    conn: &SharedIo<S>,
    head: ParsedHead,
    scratch: &mut ParseScratch,
    shared: &Arc<HttpShared>,
    ctx: &Arc<ConnContext>,
    drain: &watch::Receiver<bool>,
    closing: bool,
) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ParsedHead {
        request,
        framing,
        keep_alive,
        expect_continue,
        wants_upgrade,
    } = head;
    let facts = RequestFacts {
        head: request.method() == Method::HEAD,
        connect: request.method() == Method::CONNECT,
        http10: request.version() == Version::HTTP_10,
    };
    let generation = h1::start_request(conn, framing);
    // Envoy answers `Expect: 100-continue` as soon as it has the head, before routing (Istio
    // leaves `proxy_100_continue` off; checked with 1.40) — unless its codec refuses the head.
    // Whatever the body's framing: Envoy sends the `100` to a request without a body too.
    let mut request = request;
    if expect_continue
        && refusal::codec_refusal(&request).is_none()
        && headers::request_headers_size(&request) <= MAX_REQUEST_HEADERS_BYTES
    {
        let mut stream = h1::Stream(conn.clone());
        let sent = async {
            stream.write_all(h1::CONTINUE).await?;
            stream.flush().await
        };
        if sent.await.is_err() {
            return Next::Over;
        }
        request.extensions_mut().insert(refusal::ContinueSent);
    }
    let mut request = request.map(|()| match framing {
        Framing::None => ClientBody::Empty,
        _ => ClientBody::Http1(Box::pin(RequestBodyReader::new(
            conn.clone(),
            framing,
            generation,
        ))),
    });
    let upgrade = wants_upgrade.then(|| {
        let (tx, rx) = tokio::sync::oneshot::channel::<UpgradedClient>();
        request.extensions_mut().insert(PendingUpgrade::new(rx));
        tx
    });
    // Boxed per request: the handler's future is ~10 KB. (One box kept for a session's
    // requests saved 1.5 % of the instructions but left 0.17 KB more per idle connection
    // after a request: benches/RESULTS.md, item 22.)
    let mut handling = Box::pin(handle(shared.clone(), ctx.clone(), request));
    let answered = poll_fn(|cx| {
        // The client's leaving first: a FIN that came with the head (or with the upstream's
        // answer) ends the request before it is forwarded (or answered), as Envoy takes a
        // downstream half-close for an abort (checked with 1.40).
        if client_left(conn, cx) {
            return Poll::Ready(None);
        }
        handling.as_mut().poll(cx).map(Some)
    })
    .await;
    // Dropped unfinished, the handler logs the request as Envoy does (`0 DC`).
    drop(handling);
    let Some(Ok(mut resp)) = answered else {
        // Gone, or the handler found it gone: closed without an answer.
        lock(conn).abandon_body();
        return Next::Over;
    };
    let body_unread = !lock(conn).body_done();
    let upgrading = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    // The gateway's own decision to close (a refusal), not the client's or a drain's.
    let refused = connection_has(resp.headers(), "close");
    // A response that starts before the request's body has been read closes the connection,
    // with `connection: close` (Envoy 1.40, for local replies at routing and for upstreams
    // that answer early).
    if body_unread && !upgrading {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    let facts = if resp.extensions().get::<refusal::CodecReply>().is_some() {
        // The codec's refusal: `HTTP/1.1` and its body, for a HEAD or HTTP/1.0 too.
        RequestFacts {
            head: false,
            connect: false,
            http10: false,
        }
    } else {
        facts
    };
    let mut wire = BytesMut::new();
    let (framing_out, closes) = h1::encode_head(
        &resp,
        facts,
        !keep_alive || closing || *drain.borrow(),
        &mut wire,
    );
    let closes = closes || body_unread || upgrading;
    let (mut parts, mut body) = resp.into_parts();
    // The header map is reused for the next request's head.
    scratch.headers = Some(std::mem::take(&mut parts.headers));
    drop(parts);
    let mut writer = ResponseWriter::new(wire.freeze(), framing_out);
    let written = poll_fn(|cx| {
        if let Poll::Ready(r) = writer.poll(&mut body, conn, cx) {
            return Poll::Ready(Some(r));
        }
        if client_left(conn, cx) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    // The record goes to the log when the body is dropped: complete, or cut short.
    drop(body);
    if written.is_none() || body_unread {
        // Whatever still holds the request's body stops reading the socket.
        lock(conn).abandon_body();
    }
    match written {
        Some(Ok(())) => {}
        // The body failed (the record says how): the head and what came of the body are
        // out; the connection closes as Envoy closes it then (delayed).
        Some(Err(WriteFailed::Body)) => {
            close_delayed(h1::Stream(conn.clone())).await;
            return Next::Over;
        }
        // The client is gone: closed at once.
        Some(Err(WriteFailed::Io)) | None => return Next::Over,
    }
    if upgrading {
        if let Some(tx) = upgrade {
            // The tunnel reads what the client sent after its head first; the rest of the
            // read buffer is not kept for the tunnel's life.
            lock(conn).release();
            let _ = tx.send(Box::new(h1::Stream(conn.clone())));
            return Next::Over;
        }
    }
    if closes || framing_out == BodyOut::UntilClose {
        if body_unread || refused {
            close_delayed(h1::Stream(conn.clone())).await;
        } else {
            close(&mut h1::Stream(conn.clone())).await;
        }
        return Next::Over;
    }
    Next::KeepAlive
}

/// The socket with bytes already read from it in front (the HTTP/2 preface). `ended` is
/// set as soon as a read finds the stream's end or a read or write fails, and when the
/// connection is dropped: the HTTP/2 connection is over before its streams hear of it.
struct Rewind<S> {
    ahead: Bytes,
    io: S,
    ended: Arc<AtomicBool>,
    /// Counts reads and writes that moved bytes: the connection's idle timeout watches it.
    moved: Arc<AtomicU64>,
}

impl<S> Rewind<S> {
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Err(_)) => self.ended.store(true, Ordering::Relaxed),
            Poll::Ready(Ok(_)) => {
                self.moved.fetch_add(1, Ordering::Relaxed);
            }
            Poll::Pending => {}
        }
    }
}

impl<S> Drop for Rewind<S> {
    fn drop(&mut self) {
        // Dropped unfinished (the gateway exits after its drain timeout): the streams' tasks
        // dropped after this one log their bodies as the connection's end, not as resets.
        self.ended.store(true, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead[..n]);
            self.ahead.advance(n);
            if self.ahead.is_empty() {
                // Not kept: an empty remainder would hold the allocation.
                self.ahead = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.ended.store(true, Ordering::Relaxed);
            }
            Poll::Ready(Ok(())) => {
                self.moved.fetch_add(1, Ordering::Relaxed);
            }
            Poll::Ready(Err(_)) => self.ended.store(true, Ordering::Relaxed),
            _ => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
