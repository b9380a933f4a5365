//! The passthrough forwarder on Linux: the same contract as [`forward_with_prefix`] (prefix
//! first, both directions at once, half-close passed on, idle timeout, exact byte counters),
//! but the bytes never enter user space. Each direction owns a pipe and moves data
//! socket → pipe → socket with `splice(2)`, so the kernel hands socket buffers through the pipe
//! instead of copying them into and out of a user buffer.
//!
//! Readiness comes from tokio (`readable()`/`writable()` and `try_io`), so the sockets stay
//! registered with the runtime and no thread ever blocks. A direction fills its pipe only when
//! the pipe is empty: then an `EAGAIN` from the fill can only mean "the socket has nothing"
//! (never "the pipe is full"), and an `EAGAIN` from the drain can only mean "the socket's send
//! buffer is full" — so each `WouldBlock` clears the readiness of the right socket, and a slow
//! receiver back-pressures its sender through TCP, as in the user-space copy.
//!
//! No `unsafe` here: `nix` wraps `pipe2`, `splice` and `fcntl`, `socket2` wraps `shutdown`.
//! On other systems [`forward_spliced`] is the user-space copy.

#[cfg(not(target_os = "linux"))]
pub use fallback::{forward_spliced, forward_spliced_until};
#[cfg(target_os = "linux")]
pub use linux::{
    forward_spliced, forward_spliced_until, forward_spliced_with_pipe_size, SPLICE_CHUNK_BYTES,
};

#[cfg(not(target_os = "linux"))]
mod fallback {
    use std::time::Duration;

    use tokio::net::TcpStream;

    use crate::forward::{forward_with_prefix, forward_with_prefix_until, ForwardResult};

    /// Without `splice(2)` this is [`forward_with_prefix`].
    pub async fn forward_spliced(
        downstream: &mut TcpStream,
        upstream: TcpStream,
        prefix: &[u8],
        idle_timeout: Duration,
    ) -> ForwardResult {
        forward_with_prefix(downstream, upstream, prefix.to_vec(), idle_timeout).await
    }

    /// Without `splice(2)` this is [`forward_with_prefix_until`].
    pub async fn forward_spliced_until(
        downstream: &mut TcpStream,
        upstream: TcpStream,
        prefix: &[u8],
        idle_timeout: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> ForwardResult {
        forward_with_prefix_until(downstream, upstream, prefix.to_vec(), idle_timeout, stop).await
    }
}

#[cfg(target_os = "linux")]
pub(crate) mod linux {
    use std::io;
    use std::net::Shutdown;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
    use std::sync::OnceLock;
    use std::time::Duration;

    use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
    use nix::unistd::pipe2;
    use tokio::io::Interest;
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use crate::forward::{forward_with_prefix_until, ForwardEnd, ForwardResult, Side};

    /// Bytes asked of one `splice(2)` call: the kernel's default pipe capacity (16 pages).
    /// A larger request is harmless (the kernel moves what fits), a smaller one would waste
    /// pipe slots.
    pub const SPLICE_CHUNK_BYTES: usize = 64 * 1024;

    /// Copies both directions between `downstream` and `upstream` through a pipe each with
    /// `splice(2)`, after writing `prefix` to `upstream`; the contract of
    /// [`forward_with_prefix`], same result type, same meaning of every field.
    ///
    /// The pipes start at the kernel's default capacity, 64 KiB; a direction that fills its
    /// pipe (a bulk transfer) has it grown to 1 MiB while a process-wide budget lasts (see
    /// `GROWN_PIPE_BYTES`). Each connection holds four more
    /// file descriptors while it is forwarded. If the pipes cannot be made (`EMFILE`, ...) or
    /// the kernel hands out reduced pipes (an unprivileged user past
    /// `/proc/sys/fs/pipe-user-pages-soft`), this falls back to the user-space copy
    /// ([`forward_with_prefix`]) instead of failing or slowing the connection.
    ///
    /// `SIGPIPE`: writing into a socket whose peer is gone raises it; Rust programs ignore it
    /// from start-up, so the write fails with `EPIPE` and is reported as an error of that side.
    pub async fn forward_spliced(
        downstream: &mut TcpStream,
        upstream: TcpStream,
        prefix: &[u8],
        idle_timeout: Duration,
    ) -> ForwardResult {
        forward_spliced_until(
            downstream,
            upstream,
            prefix,
            idle_timeout,
            std::future::pending(),
        )
        .await
    }

    /// [`forward_spliced`] that also ends, with [`ForwardEnd::Stopped`], when `stop` completes.
    pub async fn forward_spliced_until(
        downstream: &mut TcpStream,
        upstream: TcpStream,
        prefix: &[u8],
        idle_timeout: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> ForwardResult {
        forward_spliced_pipes(downstream, upstream, prefix, idle_timeout, None, stop).await
    }

    /// [`forward_spliced`] with each pipe resized to `pipe_bytes` (`F_SETPIPE_SZ`; the kernel
    /// rounds up to a power-of-two number of pages and refuses more than
    /// `/proc/sys/fs/pipe-max-size` to unprivileged users — then the default size is kept).
    /// `None` keeps the default. For the benchmark; the data path uses [`forward_spliced`].
    pub async fn forward_spliced_with_pipe_size(
        downstream: &mut TcpStream,
        upstream: TcpStream,
        prefix: &[u8],
        idle_timeout: Duration,
        pipe_bytes: Option<usize>,
    ) -> ForwardResult {
        let stop = std::future::pending();
        forward_spliced_pipes(downstream, upstream, prefix, idle_timeout, pipe_bytes, stop).await
    }

    async fn forward_spliced_pipes(
        downstream: &mut TcpStream,
        upstream: TcpStream,
        prefix: &[u8],
        idle_timeout: Duration,
        pipe_bytes: Option<usize>,
        stop: impl std::future::Future<Output = ()>,
    ) -> ForwardResult {
        let pipes = Pipe::new(pipe_bytes).and_then(|a| Ok((a, Pipe::new(pipe_bytes)?)));
        let (to_upstream_pipe, to_downstream_pipe) = match pipes {
            Ok(p) => p,
            Err(error) => {
                tracing::debug!(%error, "no pipe for splice(2), copying in user space");
                return forward_with_prefix_until(
                    downstream,
                    upstream,
                    prefix.to_vec(),
                    idle_timeout,
                    stop,
                )
                .await;
            }
        };

        let state = State::new();
        let down: &TcpStream = downstream;
        let up = &upstream;
        let to_upstream = Direction {
            src: down,
            dst: up,
            from: Side::Downstream,
            to: Side::Upstream,
            pipe: to_upstream_pipe,
            bytes: &state.bytes_from_downstream,
            state: &state,
        }
        .run(prefix);
        let to_downstream = Direction {
            src: up,
            dst: down,
            from: Side::Upstream,
            to: Side::Downstream,
            pipe: to_downstream_pipe,
            bytes: &state.bytes_from_upstream,
            state: &state,
        }
        .run(&[]);
        // try_join: the first error ends both directions at once, as in the user-space copy.
        let both = async { tokio::try_join!(to_upstream, to_downstream) };
        let idle = async {
            if idle_timeout.is_zero() {
                std::future::pending().await
            } else {
                state.idle(idle_timeout).await
            }
        };
        let end = tokio::select! {
            biased;
            r = both => match r {
                Ok(((), ())) => ForwardEnd::Closed {
                    first: state.first_eof().unwrap_or(Side::Downstream),
                },
                Err(end) => end,
            },
            () = idle => ForwardEnd::IdleTimeout,
            () = stop => ForwardEnd::Stopped,
        };
        ForwardResult {
            bytes_from_downstream: state.bytes_from_downstream.load(Relaxed),
            bytes_from_upstream: state.bytes_from_upstream.load(Relaxed),
            first_eof: state.first_eof(),
            end,
        }
    }

    /// What both directions share. Both run in the caller's task (one `try_join!`), so there
    /// is never contention; atomics (all `Relaxed`) only make the future `Send`. The counters
    /// live here so they survive the directions being dropped on an error or a timeout.
    struct State {
        bytes_from_downstream: AtomicU64,
        bytes_from_upstream: AtomicU64,
        /// 0: none yet, 1: downstream, 2: upstream.
        first_eof: AtomicU8,
        origin: Instant,
        /// Nanoseconds after `origin` of the last byte moved.
        last_activity: AtomicU64,
    }

    impl State {
        fn new() -> State {
            State {
                bytes_from_downstream: AtomicU64::new(0),
                bytes_from_upstream: AtomicU64::new(0),
                first_eof: AtomicU8::new(0),
                origin: Instant::now(),
                last_activity: AtomicU64::new(0),
            }
        }

        fn touch(&self) {
            let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.last_activity.store(nanos, Relaxed);
        }

        fn saw_eof(&self, side: Side) {
            let code = match side {
                Side::Downstream => 1,
                Side::Upstream => 2,
            };
            let _ = self.first_eof.compare_exchange(0, code, Relaxed, Relaxed);
        }

        fn first_eof(&self) -> Option<Side> {
            match self.first_eof.load(Relaxed) {
                1 => Some(Side::Downstream),
                2 => Some(Side::Upstream),
                _ => None,
            }
        }

        /// Resolves once no byte has moved for `idle`. The deadline is re-read after each
        /// sleep, so activity costs one clock read and never re-arms a timer.
        async fn idle(&self, idle: Duration) {
            loop {
                let last = Duration::from_nanos(self.last_activity.load(Relaxed));
                let deadline = self.origin + last + idle;
                if Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep_until(deadline).await;
            }
        }
    }

    pub(super) struct Pipe {
        pub(super) write: OwnedFd,
        read: OwnedFd,
        pub(super) chunk: usize,
        /// Bytes of [`GROWN_PIPE_BYTES`] this pipe holds (returned on drop); 0 until grown.
        pub(super) budget_held: usize,
        /// A growth was tried (it is tried once).
        grow_tried: bool,
    }

    impl Pipe {
        pub(super) fn new(bytes: Option<usize>) -> io::Result<Pipe> {
            let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            let mut chunk = SPLICE_CHUNK_BYTES;
            match bytes {
                Some(size) => {
                    // Refused past pipe-max-size without CAP_SYS_RESOURCE: keep the default.
                    if let Ok(granted) = fcntl(&write, FcntlArg::F_SETPIPE_SZ(clamp_i32(size))) {
                        chunk = usize::try_from(granted).unwrap_or(SPLICE_CHUNK_BYTES);
                    }
                }
                None => {
                    // An unprivileged user past /proc/sys/fs/pipe-user-pages-soft (16384
                    // pages: ~512 spliced connections of one uid) gets 2-page pipes, and
                    // splicing 8 KiB at a time costs twice the CPU of the user-space copy
                    // (benches/passthrough.rs). Refuse such a pipe: the caller copies instead.
                    let capacity = fcntl(&write, FcntlArg::F_GETPIPE_SZ)?;
                    if usize::try_from(capacity).unwrap_or(0) < SPLICE_CHUNK_BYTES {
                        return Err(io::Error::other(format!(
                            "pipe capacity {capacity} bytes, below {SPLICE_CHUNK_BYTES} \
                             (pipe-user-pages-soft reached)"
                        )));
                    }
                }
            }
            Ok(Pipe {
                read,
                write,
                chunk,
                budget_held: 0,
                // A pipe sized by the caller stays as it is.
                grow_tried: bytes.is_some(),
            })
        }

        /// Resizes a default pipe to [`BULK_PIPE_BYTES`], once, if the process-wide budget
        /// allows. Why: one `splice(2)` pair per 64 KiB makes a long transfer cost about twice
        /// the CPU per GiB of one per MiB (`cargo bench -p egret-benches --bench passthrough`),
        /// while short connections pay nothing as long as they never fill the pipe.
        pub(super) fn grow(&mut self) {
            if self.grow_tried {
                return;
            }
            self.grow_tried = true;
            if !GROWN_PIPE_BYTES.take(BULK_PIPE_BYTES) {
                return;
            }
            match fcntl(
                &self.write,
                FcntlArg::F_SETPIPE_SZ(clamp_i32(BULK_PIPE_BYTES)),
            ) {
                Ok(granted) => {
                    self.chunk = usize::try_from(granted).unwrap_or(self.chunk);
                    self.budget_held = BULK_PIPE_BYTES;
                }
                // Past pipe-max-size or the user's pipe pages: the default pipe stays.
                Err(_) => GROWN_PIPE_BYTES.give_back(BULK_PIPE_BYTES),
            }
        }
    }

    impl Drop for Pipe {
        fn drop(&mut self) {
            GROWN_PIPE_BYTES.give_back(self.budget_held);
        }
    }

    /// The size a pipe grows to once its direction has filled it (a bulk transfer).
    pub(super) const BULK_PIPE_BYTES: usize = 1024 * 1024;

    /// Pipe capacity grown past the default, process-wide. An unprivileged user's pipes share
    /// `/proc/sys/fs/pipe-user-pages-soft` (16,384 pages, 64 MiB, by default); past it new
    /// pipes get 2 pages and the forwarder falls back to copying. Grown pipes may take a quarter
    /// of that limit (16 MiB: 16 bulk directions at once), so most of it stays for the default
    /// pipes of new connections.
    static GROWN_PIPE_BYTES: PipeBudget = PipeBudget {
        used: AtomicUsize::new(0),
        limit: OnceLock::new(),
    };

    pub(super) struct PipeBudget {
        used: AtomicUsize,
        limit: OnceLock<usize>,
    }

    impl PipeBudget {
        #[cfg(test)]
        pub(super) fn with_limit(limit: usize) -> PipeBudget {
            PipeBudget {
                used: AtomicUsize::new(0),
                limit: OnceLock::from(limit),
            }
        }

        fn limit(&self) -> usize {
            *self.limit.get_or_init(|| {
                let soft_pages = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .unwrap_or(16_384);
                if soft_pages == 0 {
                    // No soft limit: bound the kernel memory grown pipes may pin anyway.
                    256 * BULK_PIPE_BYTES
                } else {
                    soft_pages.saturating_mul(4096) / 4
                }
            })
        }

        pub(super) fn take(&self, bytes: usize) -> bool {
            let limit = self.limit();
            self.used
                .fetch_update(Relaxed, Relaxed, |used| {
                    used.checked_add(bytes).filter(|&after| after <= limit)
                })
                .is_ok()
        }

        pub(super) fn give_back(&self, bytes: usize) {
            if bytes > 0 {
                self.used.fetch_sub(bytes, Relaxed);
            }
        }
    }

    fn clamp_i32(n: usize) -> i32 {
        i32::try_from(n).unwrap_or(i32::MAX)
    }

    const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

    /// One direction: `src` → pipe → `dst`.
    struct Direction<'a> {
        src: &'a TcpStream,
        dst: &'a TcpStream,
        from: Side,
        to: Side,
        pipe: Pipe,
        bytes: &'a AtomicU64,
        state: &'a State,
    }

    impl Direction<'_> {
        async fn run(mut self, prefix: &[u8]) -> Result<(), ForwardEnd> {
            // The prefix counts as read from the source (it was, by the ClientHello reader).
            self.bytes.fetch_add(prefix.len() as u64, Relaxed);
            self.write_prefix(prefix)
                .await
                .map_err(|e| error(self.to, e))?;
            loop {
                // The pipe is empty here, so the fill can only wait on the socket.
                let n = self.fill().await.map_err(|e| error(self.from, e))?;
                if n == 0 {
                    self.state.saw_eof(self.from);
                    break;
                }
                self.bytes.fetch_add(n as u64, Relaxed);
                self.state.touch();
                self.drain(n).await.map_err(|e| error(self.to, e))?;
                if n == self.pipe.chunk {
                    // The source had at least a full pipe waiting: a bulk transfer.
                    self.pipe.grow();
                }
            }
            // Everything read has been written: pass the FIN on. NotConnected: the peer is
            // already gone and there is nobody left to tell.
            match socket2::SockRef::from(self.dst).shutdown(Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(error(self.to, e)),
                _ => Ok(()),
            }
        }

        async fn write_prefix(&self, mut prefix: &[u8]) -> io::Result<()> {
            while !prefix.is_empty() {
                self.dst.writable().await?;
                match self.dst.try_write(prefix) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        prefix = prefix.get(n..).unwrap_or_default();
                        self.state.touch();
                    }
                    Err(e) if retry(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }

        /// Socket → pipe. `Ok(0)` is EOF.
        async fn fill(&self) -> io::Result<usize> {
            loop {
                self.src.readable().await?;
                let moved = self.src.try_io(Interest::READABLE, || {
                    Ok(splice(
                        self.src,
                        None,
                        &self.pipe.write,
                        None,
                        self.pipe.chunk,
                        FLAGS,
                    )?)
                });
                match moved {
                    Err(e) if retry(&e) => {}
                    r => return r,
                }
            }
        }

        /// Pipe → socket, all `n` bytes the pipe holds.
        async fn drain(&self, mut n: usize) -> io::Result<()> {
            while n > 0 {
                self.dst.writable().await?;
                let moved = self.dst.try_io(Interest::WRITABLE, || {
                    Ok(splice(&self.pipe.read, None, self.dst, None, n, FLAGS)?)
                });
                match moved {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(m) => {
                        n = n.saturating_sub(m);
                        self.state.touch();
                    }
                    Err(e) if retry(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }

    /// `WouldBlock` (try_io has cleared the readiness; wait for the next edge) or `EINTR`.
    fn retry(e: &io::Error) -> bool {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
    }

    fn error(side: Side, error: io::Error) -> ForwardEnd {
        ForwardEnd::Error { side, error }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::forward::{ForwardEnd, ForwardResult, Side};

    /// client ⇄ [forward_spliced] ⇄ server, over real loopback sockets.
    async fn proxied(
        prefix: &[u8],
        idle: Duration,
        pipe_bytes: Option<usize>,
    ) -> (TcpStream, TcpStream, JoinHandle<ForwardResult>) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (mut down, _) = front.accept().await.unwrap();
        let up = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = back.accept().await.unwrap();
        let prefix = prefix.to_vec();
        let fwd = tokio::spawn(async move {
            forward_spliced_with_pipe_size(&mut down, up, &prefix, idle, pipe_bytes).await
        });
        (client, server, fwd)
    }

    /// Deterministic, non-repeating-looking bytes (xorshift), so a reordered or dropped chunk
    /// changes the checksum.
    fn payload(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// FNV-1a over the stream: cheap, order-sensitive.
    fn checksum(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    async fn ten_mb_each_way(pipe_bytes: Option<usize>) {
        const LEN: usize = 10 * 1000 * 1000;
        let prefix = b"\x16\x03\x01 not really a ClientHello";
        let (client, server, fwd) = proxied(prefix, Duration::from_secs(3600), pipe_bytes).await;
        let up_data = payload(LEN, 1);
        let down_data = payload(LEN, 2);
        let mut want_at_server = prefix.to_vec();
        want_at_server.extend_from_slice(&up_data);
        let (want_up, want_down) = (checksum(&want_at_server), checksum(&down_data));

        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let client_write = tokio::spawn(async move {
            for chunk in up_data.chunks(64 * 1024) {
                cw.write_all(chunk).await.unwrap();
            }
            cw.shutdown().await.unwrap();
        });
        let server_write = tokio::spawn(async move {
            for chunk in down_data.chunks(50_000) {
                sw.write_all(chunk).await.unwrap();
            }
            sw.shutdown().await.unwrap();
        });
        let client_read = tokio::spawn(async move {
            let mut got = Vec::new();
            cr.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut at_server = Vec::new();
        sr.read_to_end(&mut at_server).await.unwrap();
        let at_client = client_read.await.unwrap();
        client_write.await.unwrap();
        server_write.await.unwrap();

        assert_eq!(at_server.len(), want_at_server.len());
        assert_eq!(checksum(&at_server), want_up);
        assert_eq!(at_client.len(), LEN);
        assert_eq!(checksum(&at_client), want_down);
        let r = fwd.await.unwrap();
        assert!(matches!(r.end, ForwardEnd::Closed { .. }), "{:?}", r.end);
        assert_eq!(r.bytes_from_downstream, (LEN + prefix.len()) as u64);
        assert_eq!(r.bytes_from_upstream, LEN as u64);
        assert!(r.first_eof.is_some());
    }

    #[tokio::test]
    async fn ten_megabytes_each_way_arrive_intact() {
        ten_mb_each_way(None).await;
    }

    #[tokio::test]
    async fn ten_megabytes_each_way_with_one_mebibyte_pipes() {
        ten_mb_each_way(Some(1 << 20)).await;
    }

    #[tokio::test]
    async fn prefix_is_replayed_before_the_stream_and_counted() {
        let (mut client, mut server, fwd) = proxied(b"hello ", Duration::ZERO, None).await;
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

    #[tokio::test]
    async fn upstream_half_close_is_passed_on_while_the_client_keeps_sending() {
        let (mut client, mut server, fwd) = proxied(b"", Duration::ZERO, None).await;
        server.write_all(b"all from me").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        // EOF reaches the client while its own direction is still open...
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"all from me");
        // ...and the client can still send.
        client.write_all(b"still talking").await.unwrap();
        client.shutdown().await.unwrap();
        let mut at_server = Vec::new();
        server.read_to_end(&mut at_server).await.unwrap();
        assert_eq!(at_server, b"still talking");

        let r = fwd.await.unwrap();
        assert_eq!(r.bytes_from_downstream, 13);
        assert_eq!(r.bytes_from_upstream, 11);
        assert_eq!(r.first_eof, Some(Side::Upstream));
        assert!(matches!(
            r.end,
            ForwardEnd::Closed {
                first: Side::Upstream
            }
        ));
    }

    #[tokio::test]
    async fn upstream_reset_is_an_upstream_error() {
        let (mut client, mut server, fwd) = proxied(b"", Duration::ZERO, None).await;
        client.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        server.read_exact(&mut four).await.unwrap();
        // Linger 0: close sends RST instead of FIN.
        socket2::SockRef::from(&server)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(server);
        let r = fwd.await.unwrap();
        assert!(r.upstream_failed(), "{:?}", r.end);
        assert_eq!(r.bytes_from_downstream, 4);
        assert_eq!(r.bytes_from_upstream, 0);
    }

    #[tokio::test]
    async fn downstream_reset_is_a_downstream_error() {
        let (client, mut server, fwd) = proxied(b"", Duration::ZERO, None).await;
        server.write_all(b"hi").await.unwrap();
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        let r = fwd.await.unwrap();
        assert!(r.downstream_failed(), "{:?}", r.end);
    }

    #[tokio::test]
    async fn idle_connection_times_out() {
        let (mut client, mut server, fwd) = proxied(b"", Duration::from_millis(200), None).await;
        client.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        server.read_exact(&mut four).await.unwrap();
        let r = fwd.await.unwrap();
        assert!(r.idle_timed_out(), "{:?}", r.end);
        assert_eq!(r.bytes_from_downstream, 4);
        assert_eq!(r.bytes_from_upstream, 0);
        assert_eq!(r.first_eof, None);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod pipe_growth_tests {
    use nix::fcntl::{fcntl, FcntlArg};

    use super::linux::{Pipe, PipeBudget, BULK_PIPE_BYTES};
    use super::SPLICE_CHUNK_BYTES;

    fn capacity(pipe: &Pipe) -> usize {
        usize::try_from(fcntl(&pipe.write, FcntlArg::F_GETPIPE_SZ).unwrap()).unwrap()
    }

    #[test]
    fn a_default_pipe_grows_once_to_the_bulk_size() {
        let mut pipe = Pipe::new(None).unwrap();
        assert_eq!(capacity(&pipe), SPLICE_CHUNK_BYTES);
        assert_eq!(pipe.chunk, SPLICE_CHUNK_BYTES);
        pipe.grow();
        // pipe-max-size is 1 MiB by default, so even an unprivileged test may grow it.
        assert_eq!(capacity(&pipe), BULK_PIPE_BYTES);
        assert_eq!(pipe.chunk, BULK_PIPE_BYTES);
        assert_eq!(pipe.budget_held, BULK_PIPE_BYTES);
    }

    #[test]
    fn a_pipe_sized_by_the_caller_does_not_grow() {
        let mut pipe = Pipe::new(Some(128 * 1024)).unwrap();
        pipe.grow();
        assert_eq!(capacity(&pipe), 128 * 1024);
        assert_eq!(pipe.budget_held, 0);
    }

    #[test]
    fn the_budget_refuses_past_its_limit_and_takes_back_what_is_returned() {
        let budget = PipeBudget::with_limit(3 * BULK_PIPE_BYTES);
        assert!(budget.take(BULK_PIPE_BYTES));
        assert!(budget.take(BULK_PIPE_BYTES));
        assert!(budget.take(BULK_PIPE_BYTES));
        assert!(!budget.take(BULK_PIPE_BYTES), "a fourth is past the limit");
        budget.give_back(BULK_PIPE_BYTES);
        assert!(
            budget.take(BULK_PIPE_BYTES),
            "one given back can be taken again"
        );
    }
}
