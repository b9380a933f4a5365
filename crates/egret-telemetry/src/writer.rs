//! The access-log writer: a bounded queue in front of one dedicated OS thread.
//!
//! The data path only moves a boxed record into the queue (`send`); formatting and I/O
//! happen on the writer thread, so a slow disk or a blocked stdout pipe can never stall a
//! request. When the queue is full the record is dropped and counted, never waited for.
//! Control messages (flush, new format, reopen, shutdown) travel through the same queue, so
//! they act after every record logged before them.
//!
//! The queue is std's unbounded (linked-block) channel with the bound kept by a counter of
//! records in it: a preallocated ring of `ACCESS_LOG_QUEUE` slots is written in full when
//! created (512 KiB of resident memory in an idle gateway), while blocks of 31 slots are
//! allocated as records arrive and freed as they are written.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use egret_core::{AccessLogSink, LogHeaders, LogRecord};

use crate::LogFormat;

/// Formatted bytes are handed to the destination once the queue is empty or this much
/// has accumulated.
const BATCH_BYTES: usize = 64 * 1024;
/// After the queue runs dry the writer naps this long before looking again, and only blocks
/// (so that the next record has to wake it) when the nap brought nothing. Under load a whole
/// tick of records is then formatted and written with one `write(2)` and no futex wake-ups:
/// waking the thread per record cost ~26 % of the proxy's CPU at 16k req/s (see
/// benches/RESULTS.md). Envoy buffers access logs for up to 1 s; a line here is visible
/// within about one tick.
const BATCH_TICK: Duration = Duration::from_millis(10);
/// At most one warning per this interval for write errors and for dropped records.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

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

enum Msg {
    Record(Box<LogRecord>),
    Flush(mpsc::Sender<()>),
    SetFormat(Box<LogFormat>),
    Reopen,
    Shutdown,
}

#[derive(Default)]
struct Stats {
    /// Records in the queue now (the bound is checked against it).
    depth: AtomicUsize,
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
}

/// An [`AccessLogSink`] that formats and writes on its own thread.
pub struct AccessLogWriter {
    tx: Sender<Msg>,
    capacity: usize,
    stats: Arc<Stats>,
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
    /// Opens `dest` and starts the writer thread with the default queue
    /// ([`egret_core::limits::ACCESS_LOG_QUEUE`]).
    pub fn open(dest: &Destination, format: LogFormat) -> io::Result<AccessLogWriter> {
        Self::with_capacity(dest, format, egret_core::limits::ACCESS_LOG_QUEUE)
    }

    /// As [`open`](Self::open) with a queue of `capacity` records (at least 1).
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
        let stats = Arc::new(Stats::default());
        let mut worker = Worker {
            rx,
            out,
            dest,
            format,
            stats: stats.clone(),
            batch: Vec::with_capacity(BATCH_BYTES),
            batch_lines: 0,
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
            stats,
            thread: Mutex::new(Some((handle, done_rx))),
            headers,
        })
    }

    /// Records waiting in the queue now.
    pub fn depth(&self) -> u64 {
        self.stats.depth.load(Ordering::Relaxed) as u64
    }
    /// Records accepted into the queue.
    pub fn queued(&self) -> u64 {
        self.stats.queued.load(Ordering::Relaxed)
    }
    /// Lines handed to the destination without error.
    pub fn written(&self) -> u64 {
        self.stats.written.load(Ordering::Relaxed)
    }
    /// Records refused because the queue was full (or the writer had shut down).
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }
    /// Lines lost to write errors (disk full, closed pipe).
    pub fn write_errors(&self) -> u64 {
        self.stats.write_errors.load(Ordering::Relaxed)
    }

    /// Switches the format for records logged from now on (a configuration reload).
    /// `false` once the writer has shut down.
    ///
    /// Records of requests already in flight were captured with the old format's headers: a
    /// header only the new format prints is `-` in their lines.
    pub fn set_format(&self, format: LogFormat) -> bool {
        let format_headers = format.headers();
        // Under the lock: two changes at once reach the writer in the order their headers
        // are kept. Sent first: a record captured with the new headers is logged after the
        // new format.
        let mut kept = self.headers.write().unwrap_or_else(PoisonError::into_inner);
        let sent = self.send_control(Msg::SetFormat(Box::new(format)));
        *kept = KeptHeaders::new(format_headers, kept.also.clone());
        sent
    }

    /// Reopens the destination file (after log rotation), like Envoy on SIGUSR1. `false`
    /// once the writer has shut down.
    pub fn reopen(&self) -> bool {
        self.send_control(Msg::Reopen)
    }

    /// Waits until every record logged before this call has been written and flushed.
    /// `false` if that did not happen within `timeout` (queue stuck behind a blocked writer).
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

    /// Drains the queue, flushes, and stops the thread (call at process exit). Records logged
    /// afterwards are counted as dropped. `false` if the thread did not finish within
    /// `timeout`. Calling it again is harmless.
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

    /// Control messages are not subject to the record bound, so a full queue never loses
    /// one; only a writer that has stopped refuses them.
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

    /// Never blocks: a full queue drops the record and counts it.
    fn log(&self, record: Box<LogRecord>) {
        let depth = &self.stats.depth;
        if depth.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            depth.fetch_sub(1, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.send(Msg::Record(record)) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                depth.fetch_sub(1, Ordering::Relaxed);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
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
    format: LogFormat,
    stats: Arc<Stats>,
    /// Formatted lines not yet handed to `out`.
    batch: Vec<u8>,
    batch_lines: u64,
    last_error_warn: Option<Instant>,
    errors_since_warn: u64,
    last_drop_warn: Option<Instant>,
    dropped_reported: u64,
}

impl Worker {
    fn run(&mut self) {
        loop {
            let msg = match self.rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => {
                    // The queue ran dry: make what we have visible now, nap for a tick so
                    // records pile up without waking us, and block only if none came.
                    self.flush();
                    std::thread::sleep(BATCH_TICK);
                    match self.rx.try_recv() {
                        Ok(m) => m,
                        Err(TryRecvError::Disconnected) => break,
                        Err(TryRecvError::Empty) => match self.rx.recv() {
                            Ok(m) => m,
                            Err(_) => break,
                        },
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            if matches!(msg, Msg::Shutdown) {
                break;
            }
            self.handle(msg);
        }
        // Shutting down: write whatever is already queued so no accepted line is lost.
        while let Ok(msg) = self.rx.try_recv() {
            if !matches!(msg, Msg::Shutdown | Msg::Reopen) {
                self.handle(msg);
            }
        }
        self.flush();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Record(rec) => {
                self.stats.depth.fetch_sub(1, Ordering::Relaxed);
                self.format.write(&rec, &mut self.batch);
                self.batch_lines += 1;
                if self.batch.len() >= BATCH_BYTES {
                    self.write_batch();
                }
            }
            Msg::Flush(ack) => {
                self.flush();
                // The caller may have given up waiting; nothing to do then.
                let _ = ack.send(());
            }
            Msg::SetFormat(f) => self.format = *f,
            Msg::Reopen => {
                self.flush();
                self.reopen();
            }
            Msg::Shutdown => {}
        }
    }

    fn flush(&mut self) {
        self.write_batch();
        if let Err(e) = self.out.flush() {
            self.report_error(&e, 0);
        }
        self.report_drops();
    }

    fn write_batch(&mut self) {
        if self.batch_lines == 0 {
            self.batch.clear();
            return;
        }
        let lines = std::mem::take(&mut self.batch_lines);
        match self.out.write_all(&self.batch) {
            Ok(()) => {
                self.stats.written.fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(lines, Ordering::Relaxed);
                self.report_error(&e, lines);
            }
        }
        self.batch.clear();
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
        let dropped = self.stats.dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_reported && due(&mut self.last_drop_warn) {
            tracing::warn!(
                dropped = dropped - self.dropped_reported,
                "access log: queue full, records dropped"
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
