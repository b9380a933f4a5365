//! Shared helpers: write a scenario folder, start the gateway on free loopback ports, parse
//! access-log lines into fields.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use egret_test_support::{free_addr, free_port, EgretProcess, TestDir};

pub const LOG_WAIT: Duration = Duration::from_secs(20);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn scenario(name: &str) -> PathBuf {
    repo_root().join("config").join(name)
}

/// A running gateway and the loopback addresses of its listeners.
pub struct Gateway {
    pub process: EgretProcess,
    pub http: SocketAddr,
    pub tls: SocketAddr,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    pub prometheus: SocketAddr,
}

impl Gateway {
    /// Starts `egret run` on `configs` with ports 80 and 443 mapped to free loopback ports.
    pub async fn start(configs: &[&Path], extra: &[String]) -> Gateway {
        Self::start_env(configs, extra, &[]).await
    }

    /// Like `start`, with extra environment variables for the process (e.g. SSL_CERT_FILE).
    pub async fn start_env(configs: &[&Path], extra: &[String], env: &[(&str, &Path)]) -> Gateway {
        Self::start_until(configs, extra, env, "egret ready").await
    }

    /// Like `start_env`, but returns once `marker` is on stderr (e.g. "waiting for
    /// configuration" when the configuration folder is still empty).
    pub async fn start_until(
        configs: &[&Path],
        extra: &[String],
        env: &[(&str, &Path)],
        marker: &str,
    ) -> Gateway {
        let (p80, p443) = (free_port(), free_port());
        let mut args: Vec<String> = vec!["run".into()];
        for c in configs {
            args.push("--config".into());
            args.push(c.display().to_string());
        }
        args.extend([
            "--bind".into(),
            "127.0.0.1".into(),
            "--port-map".into(),
            format!("80={p80},443={p443}"),
        ]);
        args.extend(["--access-log".into(), "-".into()]);
        if !extra.iter().any(|a| a == "--workers") {
            // 2: two worker threads, connections handed from the accepting one to the other;
            // EGRET_IT_WORKERS=1 runs the suite on a single runtime.
            args.push("--workers".into());
            args.push(std::env::var("EGRET_IT_WORKERS").unwrap_or_else(|_| "2".into()));
        }
        if let Ok(delay) = std::env::var("EGRET_IT_RELEASE_DELAY") {
            // EGRET_IT_RELEASE_DELAY=0s: every HTTP/1.1 connection drops and rebuilds its
            // HTTP state between requests, so the whole suite runs through that path.
            if !extra.iter().any(|a| a == "--http-buffer-release-delay") {
                args.push("--http-buffer-release-delay".into());
                args.push(delay);
            }
        }
        let (admin, health, prometheus) = (free_addr(), free_addr(), free_addr());
        for (flag, addr) in [
            ("--admin", admin),
            ("--health", health),
            ("--prometheus", prometheus),
        ] {
            args.push(flag.into());
            args.push(addr.to_string());
        }
        args.extend(extra.iter().cloned());
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_egret"));
        cmd.args(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut process = EgretProcess::spawn_command(cmd).expect("spawn egret");
        let http: SocketAddr = format!("127.0.0.1:{p80}").parse().unwrap();
        let tls: SocketAddr = format!("127.0.0.1:{p443}").parse().unwrap();
        // Ready once every listener is bound: egret says so on stderr. (No probe connection:
        // it would leave an access-log line of its own.)
        for _ in 0..2400 {
            if process.stderr().contains(marker) {
                break;
            }
            if let Some(status) = process.exited() {
                panic!("egret exited ({status}); stderr:\n{}", process.stderr());
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(
            process.stderr().contains(marker),
            "egret never said {marker:?}; stderr:\n{}",
            process.stderr()
        );
        Gateway {
            process,
            http,
            tls,
            admin,
            health,
            prometheus,
        }
    }

    pub async fn next_line(&mut self) -> LogLine {
        let line = self
            .process
            .next_log_line(LOG_WAIT)
            .await
            .unwrap_or_else(|| panic!("no access-log line; stderr:\n{}", self.process.stderr()));
        LogLine::parse(&line)
    }
}

/// The fields of one line in Istio's default TEXT format.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub raw: String,
    pub start_time: String,
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub code: String,
    pub flags: String,
    pub details: String,
    pub termination: String,
    pub transport_failure: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: String,
    pub upstream_service_time: String,
    pub xff: String,
    pub user_agent: String,
    pub request_id: String,
    pub authority: String,
    pub upstream_host: String,
    pub cluster: String,
    pub upstream_local: String,
    pub downstream_local: String,
    pub downstream_remote: String,
    pub sni: String,
    pub route: String,
}

impl LogLine {
    pub fn parse(line: &str) -> LogLine {
        parse_default_format(line)
            .unwrap_or_else(|| panic!("not an Istio default-format line: {line:?}"))
    }
}

/// A tiny hand parser for the default format (quoted and unquoted fields).
fn parse_default_format(line: &str) -> Option<LogLine> {
    let rest = line.strip_prefix('[')?;
    let (start_time, rest) = rest.split_once("] ")?;
    let rest = rest.strip_prefix('"')?;
    // The request field ends at the `" ` after its protocol: a path may hold quotes itself
    // (a raw query goes into the log as the client sent it).
    let end = rest.match_indices("\" ").map(|(i, _)| i).find(|&i| {
        let req = &rest[..i];
        ["HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3", " -"]
            .iter()
            .any(|p| req.ends_with(p))
    })?;
    let (req, rest) = (&rest[..end], &rest[end + 2..]);
    let mut req_parts = req.splitn(3, ' ');
    let (method, path, protocol) = (req_parts.next()?, req_parts.next()?, req_parts.next()?);
    let mut fields = Vec::new();
    let mut s = rest;
    while !s.is_empty() {
        if let Some(q) = s.strip_prefix('"') {
            let end = q.find('"')?;
            fields.push(q[..end].to_string());
            s = q[end + 1..].trim_start_matches(' ');
        } else {
            let end = s.find(' ').unwrap_or(s.len());
            fields.push(s[..end].to_string());
            s = s[end..].trim_start_matches(' ');
        }
    }
    if fields.len() != 20 {
        return None;
    }
    let f = |i: usize| fields[i].clone();
    Some(LogLine {
        raw: line.to_string(),
        start_time: start_time.to_string(),
        method: method.to_string(),
        path: path.to_string(),
        protocol: protocol.to_string(),
        code: f(0),
        flags: f(1),
        details: f(2),
        termination: f(3),
        transport_failure: f(4),
        bytes_received: f(5).parse().ok()?,
        bytes_sent: f(6).parse().ok()?,
        duration: f(7),
        upstream_service_time: f(8),
        xff: f(9),
        user_agent: f(10),
        request_id: f(11),
        authority: f(12),
        upstream_host: f(13),
        cluster: f(14),
        upstream_local: f(15),
        downstream_local: f(16),
        downstream_remote: f(17),
        sni: f(18),
        route: f(19),
    })
}

/// A scenario folder plus extra YAML, in a temp dir.
pub fn config_dir(label: &str, files: &[(&str, &str)]) -> TestDir {
    let dir = TestDir::new(label).expect("temp dir");
    for (name, text) in files {
        dir.write(name, text.as_bytes()).expect("write config");
    }
    dir
}

/// Reads a request head (through its blank line) from a test upstream's connection; None when
/// the connection ends first. Bytes after the head in the same read are included.
pub async fn read_request_head<S: tokio::io::AsyncRead + Unpin>(c: &mut S) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(got)
}

/// Reads until the peer ends the connection: what arrived, and how it ended — `Ok` for a
/// close (FIN), the error kind for a reset. Panics after 30 s (a hang guard, not a timing
/// assertion).
pub async fn read_until_end<S: tokio::io::AsyncRead + Unpin>(
    c: &mut S,
) -> (Vec<u8>, Result<(), std::io::ErrorKind>) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e.kind()),
            }
        }
    })
    .await
    .expect("the connection ends");
    (got, end)
}
