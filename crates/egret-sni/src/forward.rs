//! The passthrough splice: copy bytes both ways between the downstream (client) and upstream
//! connections until both directions are finished, passing half-closes on, with an idle
//! timeout and exact byte counters.
//!
//! One task drives both directions from a single `poll_fn`, each direction with a buffer
//! it holds only while it moves data; a read is issued only when that direction's buffer has
//! been fully written, so a slow receiver back-pressures its sender through TCP instead of
//! growing memory.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

/// One of the two connections of a forwarded stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client's connection to the gateway.
    Downstream,
    /// The gateway's connection to the destination.
    Upstream,
}

/// How the forwarding ended.
#[derive(Debug)]
pub enum ForwardEnd {
    /// Both sides closed their sending direction (EOF) and each FIN was passed on: a clean
    /// end. `first` is the side that closed first.
    Closed { first: Side },
    /// Reading from, writing to or shutting down `side`'s connection failed (reset by peer,
    /// broken pipe, ...). Forwarding stopped at once; both connections are dropped.
    Error { side: Side, error: io::Error },
    /// No byte moved in either direction for the idle timeout. Both connections are dropped.
    IdleTimeout,
    /// The caller's `stop` future completed (the gateway shuts down). Both connections are
    /// dropped; the counters hold what moved until then.
    Stopped,
}

/// What [`forward`] did.
#[derive(Debug)]
pub struct ForwardResult {
    /// Bytes read from the downstream connection (Envoy's `%BYTES_RECEIVED%` for TCP),
    /// including the replayed prefix of [`forward_with_prefix`]. Counted as they are read,
    /// so they are exact even when forwarding ends in an error or a timeout.
    pub bytes_from_downstream: u64,
    /// Bytes read from the upstream connection (Envoy's `%BYTES_SENT%` for TCP).
    pub bytes_from_upstream: u64,
    /// The first side whose sending direction reached EOF, if any did (also set when the end
    /// was an error or a timeout that came later).
    pub first_eof: Option<Side>,
    pub end: ForwardEnd,
}

impl ForwardResult {
    /// The upstream connection failed (Envoy flags this `UC`).
    pub fn upstream_failed(&self) -> bool {
        matches!(
            self.end,
            ForwardEnd::Error {
                side: Side::Upstream,
                ..
            }
        )
    }

    /// The downstream connection failed (Envoy flags this `DC`).
    pub fn downstream_failed(&self) -> bool {
        matches!(
            self.end,
            ForwardEnd::Error {
                side: Side::Downstream,
                ..
            }
        )
    }

    pub fn idle_timed_out(&self) -> bool {
        matches!(self.end, ForwardEnd::IdleTimeout)
    }
}

/// Copies `downstream` → `upstream` and `upstream` → `downstream` concurrently until both
/// directions have ended.
///
/// - Half-close: when one side's read reaches EOF, everything read from it is written to the
///   other side and then the other side's write half is shut down (FIN); the opposite
///   direction keeps flowing until it ends too.
/// - Idle timeout: when no byte is read or written in either direction for `idle_timeout`,
///   forwarding stops with [`ForwardEnd::IdleTimeout`]. `Duration::ZERO` disables it (as
///   Istio's `idleTimeout: 0s` does).
/// - Errors: the first I/O error on either connection stops both directions; it is reported
///   with the side whose connection failed. A `NotConnected` error from shutting down a write
///   half counts as done (the peer is already gone, there is nothing left to tell it).
///
/// The connections are dropped (closed) when this returns. Pass `&mut stream` to keep them.
pub async fn forward<D, U>(downstream: D, upstream: U, idle_timeout: Duration) -> ForwardResult
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    forward_with_prefix(downstream, upstream, BytesMut::new(), idle_timeout).await
}

/// Like [`forward`], but first writes `prefix` — bytes already read from the downstream, such
/// as the ClientHello returned by [`crate::read_client_hello`] — to the upstream, as part of
/// the downstream → upstream direction (so its errors and the idle timer apply to it, and it
/// is counted in `bytes_from_downstream`). Given owned (a `Vec<u8>`, `Bytes` or `BytesMut`),
/// the prefix is freed once written instead of living as long as the connection.
pub async fn forward_with_prefix<D, U>(
    downstream: D,
    upstream: U,
    prefix: impl Into<Bytes>,
    idle_timeout: Duration,
) -> ForwardResult
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    forward_with_prefix_until(
        downstream,
        upstream,
        prefix,
        idle_timeout,
        std::future::pending(),
    )
    .await
}

/// [`forward_with_prefix`] that also ends, with [`ForwardEnd::Stopped`], when `stop`
/// completes.
pub async fn forward_with_prefix_until<D, U>(
    mut downstream: D,
    mut upstream: U,
    prefix: impl Into<Bytes>,
    idle_timeout: Duration,
    stop: impl Future<Output = ()>,
) -> ForwardResult
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut stop = std::pin::pin!(stop);
    // Unique, so taken over without a copy.
    let prefix = prefix
        .into()
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    let mut to_upstream = Pipe::with_prefix(prefix);
    let mut to_downstream = Pipe::with_prefix(BytesMut::new());
    let mut first_eof = None;
    let mut idle = (!idle_timeout.is_zero()).then(|| Box::pin(tokio::time::sleep(idle_timeout)));
    let mut last_activity = Instant::now();

    let end = poll_fn(|cx| {
        let mut active = false;
        if let Poll::Ready(Err(e)) =
            to_upstream.poll_pump(cx, &mut downstream, &mut upstream, &mut active)
        {
            return Poll::Ready(e.into_end(Side::Downstream, Side::Upstream));
        }
        if let Poll::Ready(Err(e)) =
            to_downstream.poll_pump(cx, &mut upstream, &mut downstream, &mut active)
        {
            return Poll::Ready(e.into_end(Side::Upstream, Side::Downstream));
        }
        if first_eof.is_none() {
            if to_upstream.read_eof {
                first_eof = Some(Side::Downstream);
            } else if to_downstream.read_eof {
                first_eof = Some(Side::Upstream);
            }
        }
        if to_upstream.done && to_downstream.done {
            return Poll::Ready(ForwardEnd::Closed {
                first: first_eof.unwrap_or(Side::Downstream),
            });
        }
        if active {
            last_activity = Instant::now();
        }
        if let Some(sleep) = idle.as_mut() {
            if poll_idle(cx, sleep.as_mut(), last_activity, idle_timeout) {
                return Poll::Ready(ForwardEnd::IdleTimeout);
            }
        }
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(ForwardEnd::Stopped);
        }
        Poll::Pending
    })
    .await;

    ForwardResult {
        bytes_from_downstream: to_upstream.bytes,
        bytes_from_upstream: to_downstream.bytes,
        first_eof,
        end,
    }
}

/// The timer is re-armed lazily: activity only records an instant, and when the sleep fires
/// early (there was activity since it was armed) it is pushed to `last_activity + idle`.
/// Returns true when the connection has really been idle for `idle`.
fn poll_idle(
    cx: &mut Context<'_>,
    mut sleep: Pin<&mut Sleep>,
    last_activity: Instant,
    idle: Duration,
) -> bool {
    loop {
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        let deadline = last_activity + idle;
        if Instant::now() >= deadline {
            return true;
        }
        sleep.as_mut().reset(deadline);
    }
}

enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

impl PumpError {
    fn into_end(self, reader: Side, writer: Side) -> ForwardEnd {
        match self {
            PumpError::Read(error) => ForwardEnd::Error {
                side: reader,
                error,
            },
            PumpError::Write(error) => ForwardEnd::Error {
                side: writer,
                error,
            },
        }
    }
}

/// Bytes buffered per direction while it moves data.
///
/// 32 KiB holds two full-size TLS records; `cargo bench -p egret-benches --bench
/// passthrough` measured a 1 GiB stream at 385 ms of proxy CPU per GiB with it, 545 with
/// 16 KiB and 712 with 64 KiB. A direction holds its buffer only while it is busy: when its
/// source has nothing more to read and everything read has been written, the buffer goes back
/// to the worker thread's spares — so an idle connection holds none, where two fixed buffers
/// would cost 10,000 idle passthrough connections 640 MiB.
pub const FORWARD_BUFFER_BYTES: usize = 32 * 1024;

/// Idle buffers each worker thread keeps for the next busy direction, so a direction that
/// keeps going idle and busy again (a bulk transfer faster than its source) does not free and
/// allocate a buffer each time.
const SPARE_BUFFERS: usize = 4;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_buffer() -> BytesMut {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(FORWARD_BUFFER_BYTES))
}

fn give_back(mut buf: BytesMut) {
    if buf.capacity() != FORWARD_BUFFER_BYTES {
        return;
    }
    buf.clear();
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    });
}

/// One direction: read into the buffer, write all of it, repeat; on EOF shut the writer
/// down. A read is issued only once the buffer has been fully written, so a slow receiver
/// back-pressures its sender through TCP instead of growing memory.
struct Pipe {
    /// Read, not yet written: `buf[start..]`. None while the direction is idle; its
    /// capacity is not initialised before a read fills it.
    buf: Option<BytesMut>,
    start: usize,
    read_eof: bool,
    /// EOF reached, everything written and the writer shut down.
    done: bool,
    /// Bytes were written since the last flush.
    unflushed: bool,
    /// Bytes read from the source (plus the prefix).
    bytes: u64,
}

impl Pipe {
    fn with_prefix(prefix: BytesMut) -> Self {
        let bytes = prefix.len() as u64;
        // Its own size: freed once written, replaced by a full buffer for the first read.
        let buf = (!prefix.is_empty()).then_some(prefix);
        Pipe {
            buf,
            start: 0,
            read_eof: false,
            done: false,
            unflushed: false,
            bytes,
        }
    }

    /// Read, not yet written.
    fn pending(&self) -> &[u8] {
        self.buf
            .as_deref()
            .and_then(|b| b.get(self.start..))
            .unwrap_or_default()
    }

    /// Moves as many bytes as are ready. `Ready(Ok)` once the direction is finished;
    /// `Pending` with wakers registered otherwise. Sets `active` when a byte moved.
    fn poll_pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        active: &mut bool,
    ) -> Poll<Result<(), PumpError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pending().is_empty() && !self.read_eof {
                if self
                    .buf
                    .as_ref()
                    .is_some_and(|b| b.capacity() < FORWARD_BUFFER_BYTES)
                {
                    self.buf = None;
                }
                let buf = self.buf.get_or_insert_with(take_buffer);
                buf.clear();
                self.start = 0;
                match tokio_util::io::poll_read_buf(Pin::new(&mut *src), cx, buf) {
                    Poll::Ready(Ok(0)) => {
                        self.read_eof = true;
                        if let Some(buf) = self.buf.take() {
                            give_back(buf);
                        }
                    }
                    Poll::Ready(Ok(n)) => {
                        self.bytes += n as u64;
                        *active = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Read(e))),
                    Poll::Pending => {
                        // Idle: the buffer goes back until the source has more.
                        if let Some(buf) = self.buf.take() {
                            give_back(buf);
                        }
                        // Nothing more to send for now: push out what a buffering writer holds.
                        if self.unflushed {
                            match Pin::new(&mut *dst).poll_flush(cx) {
                                Poll::Ready(Ok(())) => self.unflushed = false,
                                Poll::Ready(Err(e)) => {
                                    return Poll::Ready(Err(PumpError::Write(e)))
                                }
                                Poll::Pending => {}
                            }
                        }
                        return Poll::Pending;
                    }
                }
            }
            if !self.pending().is_empty() {
                match Pin::new(&mut *dst).poll_write(cx, self.pending()) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        self.unflushed = true;
                        *active = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            if self.read_eof {
                // Everything read has been written: pass the FIN on (shutdown implies flush).
                match Pin::new(&mut *dst).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::NotConnected => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
                self.done = true;
            }
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_back(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn duplex_round_trip_with_prefix() {
        let (client, proxy_down) = tokio::io::duplex(64);
        let (proxy_up, server) = tokio::io::duplex(64);
        let fwd = tokio::spawn(forward_with_prefix(
            proxy_down,
            proxy_up,
            &b"hello "[..],
            Duration::ZERO,
        ));

        let (mut client, mut server) = (client, server);
        client.write_all(b"world").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye");

        let r = fwd.await.unwrap();
        assert_eq!(r.bytes_from_downstream, 11);
        assert_eq!(r.bytes_from_upstream, 3);
        assert_eq!(r.first_eof, Some(Side::Downstream));
        assert!(matches!(
            r.end,
            ForwardEnd::Closed {
                first: Side::Downstream
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_on_duplex() {
        let (mut client, proxy_down) = tokio::io::duplex(64);
        let (proxy_up, mut server) = tokio::io::duplex(64);
        let fwd = tokio::spawn(forward(proxy_down, proxy_up, Duration::from_secs(3600)));
        client.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        server.read_exact(&mut four).await.unwrap();
        let r = fwd.await.unwrap();
        assert!(r.idle_timed_out());
        assert_eq!(r.bytes_from_downstream, 4);
        assert_eq!(r.bytes_from_upstream, 0);
        assert_eq!(r.first_eof, None);
    }

    /// A direction holds a buffer only while it moves data: after the source runs dry with
    /// everything written, the buffer has gone back to the thread's spares.
    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let (mut client, mut src) = tokio::io::duplex(1 << 16);
        let (mut dst, mut server) = tokio::io::duplex(1 << 16);
        let mut pipe = Pipe::with_prefix(BytesMut::from(&b"hello "[..]));
        assert!(pipe.buf.is_some(), "the prefix waits in a buffer");
        client.write_all(b"world").await.unwrap();
        let mut active = false;
        let polled = std::future::poll_fn(|cx| {
            Poll::Ready(pipe.poll_pump(cx, &mut src, &mut dst, &mut active))
        })
        .await;
        assert!(polled.is_pending(), "the source has nothing more");
        assert!(active);
        assert!(pipe.buf.is_none(), "idle: no buffer kept");
        assert_eq!(pipe.bytes, 11);
        let mut got = [0u8; 11];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        SPARE.with(|s| assert!(!s.borrow().is_empty(), "the buffer went to the spares"));
    }
}
