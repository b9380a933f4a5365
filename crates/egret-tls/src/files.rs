//! Credential files: where they are (Istio's layouts), reading PEM, and noticing when they
//! change.
//!
//! Rotation is detected on the lookup path, not by a watcher thread: at most once per
//! `recheck_interval` per context, each file the context depends on is `stat`ed and compared
//! by (canonical path, inode, mtime, length). The canonical path catches Kubernetes' swap of
//! the `..data` symlink even when the new files have the same size and timestamp; mtime and
//! length catch in-place rewrites. This costs a few `stat` calls per second per context and
//! needs no thread, no inotify limits and no cleanup; a `notify` watcher would add all three
//! to save those calls.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::der::CertInfo;
use crate::error::TlsSetupError;

/// What identifies one version of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileStamp {
    canonical: PathBuf,
    inode: u64,
    modified: Option<SystemTime>,
    len: u64,
}

pub(crate) fn stamp(path: &Path) -> Option<FileStamp> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&canonical).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        canonical,
        inode,
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// A file the configuration needs, with the name used in error messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FileRef {
    /// `credential client-credential`, `mesh certificates`, `DestinationRule ns/name`.
    pub context: String,
    /// Candidates in order of preference; the first that exists is used.
    pub candidates: Vec<PathBuf>,
}

impl FileRef {
    pub fn one(context: &str, path: PathBuf) -> FileRef {
        FileRef {
            context: context.to_string(),
            candidates: vec![path],
        }
    }

    /// The first candidate that exists, or `Missing` naming the preferred one.
    pub fn resolve(&self) -> Result<&Path, TlsSetupError> {
        self.find().ok_or_else(|| TlsSetupError::Missing {
            context: self.context.clone(),
            path: self.candidates.first().cloned().unwrap_or_default(),
        })
    }

    pub fn find(&self) -> Option<&Path> {
        self.candidates
            .iter()
            .map(PathBuf::as_path)
            .find(|p| p.is_file())
    }

    fn read(&self) -> Result<(PathBuf, Vec<u8>), TlsSetupError> {
        let path = self.resolve()?.to_path_buf();
        match std::fs::read(&path) {
            Ok(bytes) => Ok((path, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TlsSetupError::Missing {
                context: self.context.clone(),
                path,
            }),
            Err(e) => Err(TlsSetupError::Unreadable {
                context: self.context.clone(),
                path,
                reason: e.to_string(),
            }),
        }
    }

    fn invalid(&self, path: &Path, reason: impl Into<String>) -> TlsSetupError {
        TlsSetupError::Invalid {
            context: self.context.clone(),
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// All certificates in a PEM file (at least one).
    pub fn load_certs(&self) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
        let (path, bytes) = self.read()?;
        let mut certs = Vec::new();
        for c in CertificateDer::pem_slice_iter(&bytes) {
            certs.push(c.map_err(|e| self.invalid(&path, format!("bad PEM: {e}")))?);
        }
        if certs.is_empty() {
            return Err(self.invalid(&path, "no PEM certificate found"));
        }
        for c in &certs {
            if CertInfo::parse(c).is_none() {
                return Err(self.invalid(&path, "certificate is not valid X.509 DER"));
            }
        }
        Ok(certs)
    }

    pub fn load_key(&self) -> Result<(PathBuf, PrivateKeyDer<'static>), TlsSetupError> {
        let (path, bytes) = self.read()?;
        let key = PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| self.invalid(&path, format!("no usable PEM private key ({e})")))?;
        Ok((path, key))
    }

    /// A root store from a PEM bundle; certificates webpki cannot use are skipped, but at least
    /// one must be usable.
    pub fn load_roots(&self) -> Result<RootCertStore, TlsSetupError> {
        let certs = self.load_certs()?;
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            let path = self.resolve()?.to_path_buf();
            return Err(self.invalid(&path, "no usable CA certificate"));
        }
        Ok(roots)
    }
}

/// Loads a certificate chain and its key into a `CertifiedKey`, checking they belong together.
/// Works for v1 certificates too: rustls' `with_single_cert` / `with_client_auth_cert` parse
/// the leaf with webpki, which refuses v1 — the kind `openssl x509 -req` makes, like the
/// user's client certificate in S4.
pub(crate) fn load_certified_key(
    cert: &FileRef,
    key: &FileRef,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let chain = cert.load_certs()?;
    let (key_path, key_der) = key.load_key()?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| key.invalid(&key_path, format!("unsupported private key: {e}")))?;
    if let (Some(public), Some(info)) = (
        signing_key.public_key(),
        chain.first().and_then(|c| CertInfo::parse(c)),
    ) {
        if public.as_ref() != info.spki {
            return Err(key.invalid(
                &key_path,
                format!(
                    "private key does not match the certificate in {}",
                    cert.resolve()?.display()
                ),
            ));
        }
    }
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// A value built from files, rebuilt when they change.
pub(crate) struct Watched<T> {
    paths: Vec<PathBuf>,
    interval: Duration,
    build: Box<dyn Fn() -> Result<Arc<T>, TlsSetupError> + Send + Sync>,
    state: RwLock<State<T>>,
    /// For log lines: what this is.
    what: String,
}

struct State<T> {
    value: Result<Arc<T>, TlsSetupError>,
    stamps: Vec<Option<FileStamp>>,
    checked: Instant,
}

impl<T> Watched<T> {
    /// Builds now (an error is kept and returned by `get` until the files change).
    pub fn new(
        what: String,
        paths: Vec<PathBuf>,
        interval: Duration,
        build: Box<dyn Fn() -> Result<Arc<T>, TlsSetupError> + Send + Sync>,
    ) -> Watched<T> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let value = build();
        if let Err(e) = &value {
            tracing::warn!(what = %what, error = %e, "TLS credentials unusable");
        }
        Watched {
            paths,
            interval,
            build,
            state: RwLock::new(State {
                value,
                stamps,
                checked: Instant::now(),
            }),
            what,
        }
    }

    /// The current value; re-checks the files at most once per interval.
    pub fn get(&self) -> Result<Arc<T>, TlsSetupError> {
        if self.paths.is_empty() {
            return self.read_value();
        }
        {
            let st = self.state.read().unwrap_or_else(|p| p.into_inner());
            if st.checked.elapsed() < self.interval {
                return st.value.clone();
            }
        }
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() < self.interval {
            return st.value.clone(); // another caller checked while we waited for the lock
        }
        st.checked = Instant::now();
        // Stamp before reading: a change racing with the rebuild is seen at the next check.
        let stamps: Vec<Option<FileStamp>> = self.paths.iter().map(|p| stamp(p)).collect();
        if stamps == st.stamps {
            return st.value.clone();
        }
        st.stamps = stamps;
        match (self.build)() {
            Ok(v) => {
                tracing::info!(what = %self.what, "TLS credentials reloaded");
                st.value = Ok(v);
            }
            Err(e) if st.value.is_ok() => {
                // Likely a rotation caught half-way (new certificate, old key): keep serving the
                // previous material; the next change triggers another attempt.
                tracing::warn!(what = %self.what, error = %e, "TLS credentials changed but are unusable; keeping the previous ones");
            }
            Err(e) => {
                tracing::warn!(what = %self.what, error = %e, "TLS credentials unusable");
                st.value = Err(e);
            }
        }
        st.value.clone()
    }

    fn read_value(&self) -> Result<Arc<T>, TlsSetupError> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .value
            .clone()
    }
}

/// Istio's file layouts.
pub(crate) mod layout {
    use super::FileRef;
    use std::path::Path;

    pub fn credential_context(name: &str) -> String {
        format!("credential {name}")
    }

    /// `tls.crt` (Kubernetes TLS Secret) or `cert` (generic Secret).
    pub fn credential_cert(dir: &Path, name: &str) -> FileRef {
        let d = dir.join(name);
        FileRef {
            context: credential_context(name),
            candidates: vec![d.join("tls.crt"), d.join("cert")],
        }
    }

    pub fn credential_key(dir: &Path, name: &str) -> FileRef {
        let d = dir.join(name);
        FileRef {
            context: credential_context(name),
            candidates: vec![d.join("tls.key"), d.join("key")],
        }
    }

    /// `ca.crt` in the Secret, or in the separate `<name>-cacert` Secret (also `cacert` keys).
    pub fn credential_ca(dir: &Path, name: &str) -> FileRef {
        let d = dir.join(name);
        let c = dir.join(format!("{name}-cacert"));
        FileRef {
            context: credential_context(name),
            candidates: vec![
                d.join("ca.crt"),
                d.join("cacert"),
                c.join("ca.crt"),
                c.join("cacert"),
            ],
        }
    }

    pub const MESH: &str = "mesh certificates";

    pub fn mesh_cert(dir: &Path) -> FileRef {
        FileRef::one(MESH, dir.join("cert-chain.pem"))
    }
    pub fn mesh_key(dir: &Path) -> FileRef {
        FileRef::one(MESH, dir.join("key.pem"))
    }
    pub fn mesh_root(dir: &Path) -> FileRef {
        FileRef::one(MESH, dir.join("root-cert.pem"))
    }
}
