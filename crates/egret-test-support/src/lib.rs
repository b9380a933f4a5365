//! Dev-only support for Egret's tests. It makes certificates at test time (`certs`), runs
//! in-process upstreams on 127.0.0.1 — HTTP/1.1 + HTTP/2 with or without TLS, and raw TCP —
//! (`upstream`), serves DNS records the test controls (`dns`), spawns the real gateway binary
//! and reads its access log (`process`), and drives it with small HTTP clients (`client`).
//! Every server binds port 0, exposes its address and stops when its handle is dropped.

pub mod certs;
pub mod client;
pub mod dns;
pub mod process;
pub mod upstream;

mod sockets;

pub use certs::{ClientAuth, TestCa, TestCert};
pub use client::{h2c_get, http1_get, H2Conn, Http1Conn, TestResponse};
pub use dns::{DnsAnswer, DnsServer};
pub use process::{free_addr, free_port, EgretProcess};
pub use upstream::{closed_port, Behavior, HttpUpstream, RecordedRequest, TcpUpstream, TlsOptions};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning: one panicking test thread must not cascade.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh directory under the system temp dir, removed with its contents when dropped.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates `<tmp>/egret-test-<pid>-<n>-<label>`.
    pub fn new(label: &str) -> std::io::Result<TestDir> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("egret-test-{}-{n}-{label}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(TestDir { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Writes `contents` to `path/rel`, creating parent folders.
    pub fn write(
        &self,
        rel: impl AsRef<Path>,
        contents: impl AsRef<[u8]>,
    ) -> std::io::Result<PathBuf> {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, contents)?;
        Ok(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
