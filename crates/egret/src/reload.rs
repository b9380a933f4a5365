//! Configuration reload: poll the `--config` files for changes (or take SIGHUP), rebuild the
//! Snapshot, swap it in atomically. A broken configuration keeps the old one serving.
//!
//! Polling (size + mtime of every YAML file, symlinks followed) rather than inotify: a
//! Kubernetes ConfigMap update swaps a `..data` symlink in the parent folder, which inotify
//! only sees with a watch on the right directory level and re-arming after each swap;
//! stat-ing a handful of files once a second is simpler and catches every form of update.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use egret_listener::Gateway;

use crate::cli::ConfigArgs;

/// Reload outcomes, counted here and in the metrics (`egret_config_reloads_total`).
#[derive(Default)]
pub struct ReloadStats {
    pub success: AtomicU64,
    pub failure: AtomicU64,
    pub metrics: Option<Arc<egret_admin::Metrics>>,
}

impl ReloadStats {
    pub(crate) fn count(&self, ok: bool) {
        if ok { &self.success } else { &self.failure }.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.record_config_reload(ok);
        }
    }
}

/// What the YAML files under the `--config` paths look like: (path, length, mtime), sorted.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Tells when the files changed and then stayed unchanged for one more look (so a
/// half-written set of files is not loaded).
#[derive(Debug)]
pub struct ChangeDetector {
    seen: Fingerprint,
    pending: Option<Fingerprint>,
}

impl ChangeDetector {
    /// `seen`: the files as they were when the configuration in force was read (take it
    /// before reading, so a change made meanwhile is not missed).
    pub fn new(seen: Fingerprint) -> ChangeDetector {
        ChangeDetector {
            seen,
            pending: None,
        }
    }

    /// Looks at the files once; true when they differ from what was last loaded and were
    /// the same at the previous look (the caller then loads them).
    pub fn settled_change(&mut self, paths: &[PathBuf]) -> bool {
        // A look that could not list a folder (out of file descriptors) tells nothing: the
        // entries it missed are not a change.
        let Some(now) = look(paths) else {
            return false;
        };
        if now == self.seen {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() == Some(&now) {
            self.seen = now;
            self.pending = None;
            true
        } else {
            self.pending = Some(now);
            false
        }
    }
}

/// What the YAML files look like now: (path, length, mtime) sorted.
pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    look(paths).unwrap_or_default()
}

/// [`fingerprint`], or None when a folder could not be listed for want of file
/// descriptors or memory.
fn look(paths: &[PathBuf]) -> Option<Fingerprint> {
    let mut out = Vec::new();
    for p in paths {
        collect(p, &mut out, 0)?;
    }
    out.sort();
    Some(out)
}

fn collect(
    p: &Path,
    out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>,
    depth: usize,
) -> Option<()> {
    if depth > 16 {
        return Some(());
    }
    let Ok(meta) = std::fs::metadata(p) else {
        out.push((p.to_path_buf(), u64::MAX, None));
        return Some(());
    };
    if meta.is_dir() {
        let rd = match std::fs::read_dir(p) {
            Ok(rd) => Some(rd),
            // Out of file descriptors or memory (ENOMEM 12, ENFILE 23, EMFILE 24): the look
            // tells nothing. Any other error (gone, a `lost+found` this user cannot read) is
            // what the folder looks like: nothing listed, as before.
            Err(e) if matches!(e.raw_os_error(), Some(12 | 23 | 24)) => return None,
            Err(_) => None,
        };
        if let Some(rd) = rd {
            for e in rd.flatten() {
                let path = e.path();
                let hidden = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                if !hidden {
                    collect(&path, out, depth + 1)?;
                }
            }
        }
    } else if depth == 0
        || p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml")
    {
        out.push((p.to_path_buf(), meta.len(), meta.modified().ok()));
    }
    Some(())
}

/// Rebuilds and installs the configuration. Returns Ok(true) when a new version went live,
/// Ok(false) when nothing changed, Err with the errors when the new files do not compile.
pub fn reload(
    args: &ConfigArgs,
    gateway: &Arc<Gateway>,
    stats: &ReloadStats,
) -> Result<bool, Vec<String>> {
    let compiled = match args.build() {
        Ok(c) => c,
        Err(errors) => {
            stats.count(false);
            for e in &errors {
                tracing::error!("reload: {e}");
            }
            tracing::error!(
                errors = errors.len(),
                "reload failed; the previous configuration keeps serving"
            );
            return Err(errors);
        }
    };
    let current = gateway.snapshot();
    if current.version == compiled.snapshot.version {
        return Ok(false);
    }
    for w in &compiled.warnings {
        tracing::warn!("{w}");
    }
    let version = compiled.snapshot.version.clone();
    gateway.config.store(Arc::new(compiled.snapshot));
    // New TLS settings are prepared off the workers (the first reload that needs the system
    // trust store reads it).
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let gateway = gateway.clone();
        runtime.spawn_blocking(move || gateway.prepare_upstream_tls());
    }
    if let Err(e) = gateway.sync_listeners() {
        tracing::error!(error = %e, "reload: a new listener could not be bound");
    }
    stats.count(true);
    tracing::info!(from = %current.version, to = %version, "configuration reloaded");
    Ok(true)
}
