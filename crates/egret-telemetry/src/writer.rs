//! The access-log writer: lines are formatted where the request ends, into a buffer of the
//! calling thread's shard, and one dedicated OS thread hands them to the destination.
//!
//! Formatting on the data path, not on the writer thread: a worker pinned to a core shares
//! it with the writer, and a tick's worth of records formatted in one go (a few hundred
//! microseconds at 8k requests/s) delayed the requests that came meanwhile — the p99
//! latency at one connection doubled (benches/RESULTS.md item 19). A line costs the worker
//! the same either way. I/O stays on the writer thread, so a slow disk or a blocked stdout
//! pipe never stalls a request: when the lines waiting reach the bound, a record is dropped
//! and counted, never waited for.
//!
//! The writer wakes when lines arrive after it went to sleep, then naps a tick
//! ([`BATCH_TICK`]) so a tick of lines goes out with one `write(2)` and no further wake-up.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use egret_core::{AccessLogSink, LogHeaders, LogRecord};

use crate::LogFormat;

/// After waking, the writer naps this long so the lines of a whole tick go out with one
/// `write(2)`: waking the thread per record cost ~26 % of the proxy's CPU at 16k req/s (see
/// benches/RESULTS.md). Envoy buffers access logs for up to 1 s; a line here is visible
/// within about one tick.
const BATCH_TICK: Duration = Duration::from_millis(10);
/// At most one warning per this interval for write errors and for dropped records.
const WARN_INTERVAL: Duration = Duration::from_secs(1);
/// Line buffers, one per thread (threads share one when there are more).
const SHARDS: usize = 16;

/// Where access-log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    Stderr,
    /// A file opened for append (created if missing).
    File(PathBuf),
}

impl Destination {
    /// Istio's `accessLogFile`: `-`, `/dev/stdout` → stdout, `/dev/stderr` → stderr, else a file.
    pub fn from_path(path: &str) -> Destination {
        match path {
            "-" | "/dev/stdout" => Destination::Stdout,
            "/dev/stderr" => Destination::Stderr,
            p => Destination::File(PathBuf::from(p)),
        }
    }

    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Destination::Stdout => Box::new(io::stdout()),
            Destination::Stderr => Box::new(io::stderr()),
            Destination::File(p) => Box::new(open_append(p)?),
        })
    }
}

fn open_append(p: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// What the writer thread is told; lines themselves wait in the shards.
enum Msg {
    /// Lines arrived while it slept.
    Wake,
    Flush(mpsc::Sender<()>),
    Reopen(mpsc::Sender<()>),
    Shutdown,
}

#[derive(Default)]
struct Stats {
    /// Lines formatted and not yet taken by the writer (the bound is checked against it).
    depth: AtomicUsize,
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
}

/// The lines one thread (or a few) formatted since the writer last took them. Aligned so
/// two workers' shards never share a cache line.
#[repr(align(64))]
#[derive(Default)]
struct Shard {
    lines: Mutex<Lines>,
}

#[derive(Default)]
struct Lines {
    bytes: Vec<u8>,
    count: u64,
}

/// What the data path and the writer thread share.
struct Shared {
    shards: Box<[Shard]>,
    format: ArcSwap<LogFormat>,
    stats: Stats,
    /// The writer is blocked waiting for a message: the next line must wake it.
    sleeping: AtomicBool,
    /// The writer has shut down: records are dropped.
    closed: AtomicBool,
}

impl Shared {
    /// This thread's shard.
    fn shard(&self) -> &Shard {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        let i = INDEX.with(|i| *i);
        &self.shards[i % self.shards.len()]
    }

    /// Moves every shard's lines into `batch`; how many lines that was.
    fn take_lines(&self, batch: &mut Vec<u8>) -> u64 {
        let mut taken = 0;
        for shard in self.shards.iter() {
            let mut lines = lock(&shard.lines);
            if lines.count == 0 {
                continue;
            }
            batch.extend_from_slice(&lines.bytes);
            lines.bytes.clear();
            taken += std::mem::take(&mut lines.count);
        }
        self.stats.depth.fetch_sub(
            usize::try_from(taken).unwrap_or(usize::MAX),
            Ordering::SeqCst,
        );
        taken
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An [`AccessLogSink`] that formats where the request ends and writes on its own thread.
pub struct AccessLogWriter {
    tx: Sender<Msg>,
    capacity: usize,
    shared: Arc<Shared>,
    thread: Mutex<Option<(JoinHandle<()>, Receiver<()>)>>,
    /// The headers records must keep: the format's, and what readers in front asked for.
    headers: RwLock<KeptHeaders>,
}

struct KeptHeaders {
    format: LogHeaders,
    also: LogHeaders,
    /// `format` ∪ `also`, handed out per request.
    both: LogHeaders,
}

impl KeptHeaders {
    fn new(format: LogHeaders, also: LogHeaders) -> KeptHeaders {
        let both = format.union(&also);
        KeptHeaders { format, also, both }
    }
}

impl AccessLogWriter {
    /// Opens `dest` and starts the writer thread with the default bound
    /// ([`egret_core::limits::ACCESS_LOG_QUEUE`] lines waiting).
    pub fn open(dest: &Destination, format: LogFormat) -> io::Result<AccessLogWriter> {
        Self::with_capacity(dest, format, egret_core::limits::ACCESS_LOG_QUEUE)
    }

    /// As [`open`](Self::open) with at most `capacity` lines waiting (at least 1).
    pub fn with_capacity(
        dest: &Destination,
        format: LogFormat,
        capacity: usize,
    ) -> io::Result<AccessLogWriter> {
        let out = dest.open()?;
        Self::spawn(out, Some(dest.clone()), format, capacity)
    }

    /// Writes to any `Write` (tests, pipes). [`reopen`](Self::reopen) does nothing here.
    pub fn with_writer(
        out: Box<dyn Write + Send>,
        format: LogFormat,
        capacity: usize,
    ) -> io::Result<AccessLogWriter> {
        Self::spawn(out, None, format, capacity)
    }

    fn spawn(
        out: Box<dyn Write + Send>,
        dest: Option<Destination>,
        format: LogFormat,
        capacity: usize,
    ) -> io::Result<AccessLogWriter> {
        let headers = RwLock::new(KeptHeaders::new(format.headers(), LogHeaders::none()));
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            format: ArcSwap::from_pointee(format),
            stats: Stats::default(),
            sleeping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let mut worker = Worker {
            rx,
            out,
            dest,
            shared: shared.clone(),
            batch: Vec::new(),
            last_error_warn: None,
            errors_since_warn: 0,
            last_drop_warn: None,
            dropped_reported: 0,
        };
        let handle = std::thread::Builder::new()
            .name("egret-access-log".into())
            .spawn(move || {
                worker.run();
                // Dropping `done_tx` tells a waiting shutdown the thread has finished.
                drop(done_tx);
            })?;
        Ok(AccessLogWriter {
            tx,
            capacity: capacity.max(1),
            shared,
            thread: Mutex::new(Some((handle, done_rx))),
            headers,
        })
    }

    fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Lines formatted and waiting for the writer now.
    pub fn depth(&self) -> u64 {
        self.stats().depth.load(Ordering::Relaxed) as u64
    }
    /// Records accepted (formatted).
    pub fn queued(&self) -> u64 {
        self.stats().queued.load(Ordering::Relaxed)
    }
    /// Lines handed to the destination without error.
    pub fn written(&self) -> u64 {
        self.stats().written.load(Ordering::Relaxed)
    }
    /// Records refused because too many lines were waiting (or the writer had shut down).
    pub fn dropped(&self) -> u64 {
        self.stats().dropped.load(Ordering::Relaxed)
    }
    /// Lines lost to write errors (disk full, closed pipe).
    pub fn write_errors(&self) -> u64 {
        self.stats().write_errors.load(Ordering::Relaxed)
    }

    /// Switches the format for records logged from now on (a configuration reload).
    /// `false` once the writer has shut down.
    ///
    /// Records of requests already in flight were captured with the old format's headers: a
    /// header only the new format prints is `-` in their lines.
    pub fn set_format(&self, format: LogFormat) -> bool {
        let format_headers = format.headers();
        // Under the lock: two changes at once keep their formats and headers in one order.
        let mut kept = self.headers.write().unwrap_or_else(PoisonError::into_inner);
        self.shared.format.store(Arc::new(format));
        *kept = KeptHeaders::new(format_headers, kept.also.clone());
        !self.shared.closed.load(Ordering::Acquire)
    }

    /// Reopens the destination file (after log rotation), like Envoy on SIGUSR1: lines
    /// logged before the call go to the old file, lines logged after it returns to the new
    /// one (it waits, up to 5 s, for the writer to switch). `false` once the writer has shut
    /// down.
    pub fn reopen(&self) -> bool {
        let (ack_tx, ack_rx) = mpsc::channel();
        self.send_control(Msg::Reopen(ack_tx))
            && ack_rx.recv_timeout(Duration::from_secs(5)).is_ok()
    }

    /// Waits until every record logged before this call has been written and flushed.
    /// `false` if that did not happen within `timeout` (a blocked destination).
    pub fn flush_and_wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = mpsc::channel();
        if !self.send_control(Msg::Flush(ack_tx)) {
            return false;
        }
        ack_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Writes what is waiting, flushes, and stops the thread (call at process exit).
    /// Records logged afterwards are counted as dropped. `false` if the thread did not
    /// finish within `timeout`. Calling it again is harmless.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((_, done_rx)) = guard.as_ref() else {
            return true;
        };
        // A send failure means the thread is already gone; joining below is then immediate.
        self.send_control(Msg::Shutdown);
        match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => false,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some((handle, _)) = guard.take() {
                    if handle.join().is_err() {
                        tracing::warn!("access-log writer thread panicked");
                    }
                }
                true
            }
        }
    }

    /// Only a writer that has stopped refuses a control message.
    fn send_control(&self, msg: Msg) -> bool {
        self.tx.send(msg).is_ok()
    }
}

impl AccessLogSink for AccessLogWriter {
    fn headers(&self) -> LogHeaders {
        let kept = self.headers.read().unwrap_or_else(PoisonError::into_inner);
        kept.both.clone()
    }

    fn keep_headers(&self, also: &LogHeaders) {
        let mut kept = self.headers.write().unwrap_or_else(PoisonError::into_inner);
        *kept = KeptHeaders::new(kept.format.clone(), kept.also.union(also));
    }

    /// Formats the line into this thread's shard. Never blocks on I/O: with too many lines
    /// waiting (or after shutdown) the record is dropped and counted.
    fn log(&self, record: Box<LogRecord>) {
        let shared = &*self.shared;
        let stats = &shared.stats;
        // SeqCst, with the writer's `sleeping` and its look at the depth before it blocks:
        // either it sees this line, or this sees it asleep and wakes it. Counted before
        // `closed` is read: a writer shutting down waits for what is counted.
        if stats.depth.fetch_add(1, Ordering::SeqCst) >= self.capacity
            || shared.closed.load(Ordering::SeqCst)
        {
            stats.depth.fetch_sub(1, Ordering::SeqCst);
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        {
            let mut lines = lock(&shared.shard().lines);
            shared.format.load().write(&record, &mut lines.bytes);
            lines.count += 1;
        }
        stats.queued.fetch_add(1, Ordering::Relaxed);
        if shared.sleeping.load(Ordering::SeqCst) && shared.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.tx.send(Msg::Wake);
        }
    }
}

impl Drop for AccessLogWriter {
    fn drop(&mut self) {
        // Best effort for owners that forget `shutdown`; bounded so exit can't hang.
        self.shutdown(Duration::from_secs(5));
    }
}

impl std::fmt::Debug for AccessLogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogWriter")
            .field("queued", &self.queued())
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .field("write_errors", &self.write_errors())
            .finish()
    }
}

struct Worker {
    rx: Receiver<Msg>,
    out: Box<dyn Write + Send>,
    dest: Option<Destination>,
    shared: Arc<Shared>,
    /// Lines taken from the shards, not yet handed to `out`.
    batch: Vec<u8>,
    last_error_warn: Option<Instant>,
    errors_since_warn: u64,
    last_drop_warn: Option<Instant>,
    dropped_reported: u64,
}

impl Worker {
    fn run(&mut self) {
        loop {
            // Lines waiting: write them, a tick at a time, until a tick brings none.
            if self.shared.stats.depth.load(Ordering::SeqCst) > 0 {
                self.write_lines();
                std::thread::sleep(BATCH_TICK);
                match self.rx.try_recv() {
                    // Already awake, and napping between writes.
                    Ok(Msg::Wake) | Err(_) => {}
                    Ok(msg) => {
                        if !self.handle(msg) {
                            break;
                        }
                    }
                }
                continue;
            }
            self.report_drops();
            // Asleep until a line or a message comes. `sleeping` is set before the depth is
            // looked at again, so a line logged in between is not missed.
            self.shared.sleeping.store(true, Ordering::SeqCst);
            if self.shared.stats.depth.load(Ordering::SeqCst) > 0 {
                self.shared.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            let msg = match self.rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            };
            self.shared.sleeping.store(false, Ordering::SeqCst);
            if !self.handle(msg) {
                break;
            }
        }
        // Shutting down: refuse new records, then write what is waiting, including lines a
        // worker counted before it saw `closed` and is still formatting (bounded).
        self.shared.closed.store(true, Ordering::SeqCst);
        let give_up = Instant::now() + Duration::from_secs(1);
        loop {
            self.write_lines();
            if self.shared.stats.depth.load(Ordering::SeqCst) == 0 || Instant::now() > give_up {
                break;
            }
            std::thread::yield_now();
        }
    }

    /// Acts on a message; `false` for shutdown.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            // A tick's nap first, so the lines of the tick go out together.
            Msg::Wake => std::thread::sleep(BATCH_TICK),
            Msg::Flush(ack) => {
                self.write_lines();
                // The caller may have given up waiting; nothing to do then.
                let _ = ack.send(());
            }
            Msg::Reopen(ack) => {
                self.write_lines();
                self.reopen();
                let _ = ack.send(());
            }
            Msg::Shutdown => return false,
        }
        true
    }

    /// Takes every waiting line and hands them to `out` with one write, then flushes.
    fn write_lines(&mut self) {
        let lines = self.shared.take_lines(&mut self.batch);
        if lines > 0 {
            let stats = &self.shared.stats;
            match self.out.write_all(&self.batch) {
                Ok(()) => {
                    stats.written.fetch_add(lines, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.write_errors.fetch_add(lines, Ordering::Relaxed);
                    self.report_error(&e, lines);
                }
            }
            self.batch.clear();
        }
        if let Err(e) = self.out.flush() {
            self.report_error(&e, 0);
        }
    }

    fn reopen(&mut self) {
        let Some(dest) = self.dest.as_ref() else {
            return;
        };
        match dest.open() {
            Ok(out) => self.out = out,
            Err(e) => {
                tracing::warn!(error = %e, destination = ?dest, "access log: reopen failed, keeping the old file")
            }
        }
    }

    fn report_error(&mut self, e: &io::Error, lost: u64) {
        self.errors_since_warn += lost;
        if due(&mut self.last_error_warn) {
            tracing::warn!(error = %e, lines_lost = self.errors_since_warn, "access log: write failed");
            self.errors_since_warn = 0;
        }
    }

    fn report_drops(&mut self) {
        let dropped = self.shared.stats.dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_reported && due(&mut self.last_drop_warn) {
            tracing::warn!(
                dropped = dropped - self.dropped_reported,
                "access log: too many lines waiting, records dropped"
            );
            self.dropped_reported = dropped;
        }
    }
}

/// True at most once per [`WARN_INTERVAL`].
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < WARN_INTERVAL) {
        return false;
    }
    *last = Some(now);
    true
}

/// An in-memory sink for tests: keeps every record, lets a test wait for a count.
#[derive(Default)]
pub struct MemorySink {
    records: Mutex<Vec<LogRecord>>,
    changed: Condvar,
}

impl MemorySink {
    pub fn new() -> Arc<MemorySink> {
        Arc::new(MemorySink::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LogRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the records so far.
    pub fn records(&self) -> Vec<LogRecord> {
        self.lock().clone()
    }

    /// Removes and returns the records so far.
    pub fn take(&self) -> Vec<LogRecord> {
        std::mem::take(&mut *self.lock())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The records so far, each formatted with `format` (lines keep their `\n`).
    pub fn lines(&self, format: &LogFormat) -> Vec<String> {
        self.lock()
            .iter()
            .map(|r| format.format_to_string(r))
            .collect()
    }

    /// Blocks until at least `n` records arrived; `false` on timeout.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let guard = self.lock();
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |r| r.len() < n)
            .unwrap_or_else(PoisonError::into_inner);
        guard.len() >= n
    }
}

impl AccessLogSink for MemorySink {
    fn log(&self, record: Box<LogRecord>) {
        self.lock().push(*record);
        self.changed.notify_all();
    }
}

impl std::fmt::Debug for MemorySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySink")
            .field("records", &self.len())
            .finish()
    }
}
