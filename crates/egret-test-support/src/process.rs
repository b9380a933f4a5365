//! Running the real gateway binary in a test: stdout (the access log) read line by line,
//! stderr (diagnostics) kept for error messages, readiness by polling a TCP port, killed when
//! the handle is dropped.

use std::ffi::OsStr;
use std::io;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::lock;

/// How many times [`EgretProcess::wait_for_port`] tries to connect, and the pause between
/// tries: about 30 s in all, generous for a debug build on a loaded 2-core machine.
pub const PORT_TRIES: usize = 1200;
/// Pause between connection attempts.
pub const PORT_RETRY_PAUSE: Duration = Duration::from_millis(25);

/// A spawned gateway (or any binary). Killed on drop.
pub struct EgretProcess {
    child: Child,
    lines_rx: mpsc::UnboundedReceiver<String>,
    all_lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl std::fmt::Debug for EgretProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgretProcess")
            .field("pid", &self.child.id())
            .finish()
    }
}

impl EgretProcess {
    /// Spawns `bin args...` (e.g. `env!("CARGO_BIN_EXE_egret")`).
    pub fn spawn<S: AsRef<OsStr>>(bin: impl AsRef<OsStr>, args: &[S]) -> io::Result<EgretProcess> {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    /// Spawns a prepared command (for env vars, working directory, ...). Its stdin, stdout
    /// and stderr are replaced.
    pub fn spawn_command(cmd: std::process::Command) -> io::Result<EgretProcess> {
        let mut cmd = Command::from(cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("child stdout not piped"))?;
        let mut stderr_pipe = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("child stderr not piped"))?;

        let (tx, lines_rx) = mpsc::unbounded_channel();
        let all_lines = Arc::new(Mutex::new(Vec::new()));
        let all = all_lines.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                lock(&all).push(line.clone());
                let _ = tx.send(line);
            }
        });

        let stderr = Arc::new(Mutex::new(String::new()));
        let err_buf = stderr.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = stderr_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                lock(&err_buf).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        Ok(EgretProcess {
            child,
            lines_rx,
            all_lines,
            stderr,
        })
    }

    /// The child's process id (None once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Every stdout line so far (whether or not taken by [`Self::next_log_line`]).
    pub fn log_lines(&self) -> Vec<String> {
        lock(&self.all_lines).clone()
    }

    /// The next stdout line not yet taken, waiting up to `timeout`. None on timeout or once
    /// stdout is closed.
    pub async fn next_log_line(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.lines_rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Takes stdout lines until one satisfies `pred`, waiting up to `timeout` overall.
    pub async fn wait_for_log(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines_rx.recv())
                .await
                .ok()
                .flatten()?;
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// Polls a TCP connect to `addr` until it succeeds ([`PORT_TRIES`] tries). Fails at once
    /// if the process exits, and after the last try otherwise; the error carries stderr.
    pub async fn wait_for_port(&mut self, addr: SocketAddr) -> io::Result<()> {
        self.wait_for_port_tries(addr, PORT_TRIES).await
    }

    /// [`Self::wait_for_port`] with an explicit number of tries.
    pub async fn wait_for_port_tries(&mut self, addr: SocketAddr, tries: usize) -> io::Result<()> {
        for _ in 0..tries {
            if let Some(status) = self.child.try_wait()? {
                // Let the stderr reader drain what the process wrote before it died.
                for _ in 0..40 {
                    if !lock(&self.stderr).is_empty() {
                        break;
                    }
                    tokio::time::sleep(PORT_RETRY_PAUSE).await;
                }
                return Err(io::Error::other(format!(
                    "process exited ({status}) before {addr} accepted connections; stderr:\n{}",
                    self.stderr()
                )));
            }
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(PORT_RETRY_PAUSE).await;
        }
        Err(io::Error::other(format!(
            "{addr} did not accept connections after {tries} tries; stderr:\n{}",
            self.stderr()
        )))
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`, ...) with the system's `kill`.
    pub async fn signal(&self, name: &str) -> io::Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| io::Error::other("process already exited"))?;
        let status = Command::new("kill")
            .arg("-s")
            .arg(name)
            .arg(pid.to_string())
            .status()
            .await?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill -s {name} {pid}: {status}")))
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Whether it has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills it now and waits for it.
    pub async fn kill(&mut self) -> io::Result<()> {
        self.child.kill().await
    }
}

/// A port on 127.0.0.1 that was free a moment ago, for a process that must bind it itself.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// Ports handed out by [`free_addr`]: below Linux's default ephemeral range (32768–60999).
/// A port taken from `bind(port 0)` and released lies *inside* that range, so any outgoing
/// connection of a parallel test could get it as its source port before the gateway binds it
/// (seen in CI as `Address already in use`). Outside the range only another explicit bind can
/// take it, and each test process walks the range from its own random start.
const FREE_PORTS: std::ops::Range<u16> = 15_000..32_000;

/// `127.0.0.1:<free_port>`.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(FREE_PORTS.end - FREE_PORTS.start);
    // First use: a random start, so test binaries running at once walk different stretches.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        fastrand::u32(0..span),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = FREE_PORTS.start + u16::try_from(offset).unwrap_or(0);
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("local_addr of a bound listener");
        }
    }
    // Everything below the ephemeral range is taken: fall back to the kernel's choice.
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr of a bound listener")
}
