//! The system trust store, for SIMPLE/MUTUAL origination without `caCertificates`.

use rustls::RootCertStore;

use crate::error::TlsSetupError;
use crate::upstream::SystemRoots;

/// Loads the trust store. Unreadable entries are logged and skipped; an empty result is an
/// error (nothing could ever be verified).
pub(crate) fn load(source: &SystemRoots) -> Result<RootCertStore, TlsSetupError> {
    let result = match source {
        SystemRoots::Native => rustls_native_certs::load_native_certs(),
        SystemRoots::Paths { file, dir } => {
            rustls_native_certs::load_certs_from_paths(file.as_deref(), dir.as_deref())
        }
    };
    for e in &result.errors {
        tracing::warn!(error = %e, "system trust store: skipped an entry");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(result.certs);
    tracing::debug!(added, ignored, "system trust store loaded");
    if added == 0 {
        let reason = match result.errors.first() {
            Some(e) => format!("no usable CA certificate found ({e})"),
            None => {
                "no usable CA certificate found (set SSL_CERT_FILE or SSL_CERT_DIR)".to_string()
            }
        };
        return Err(TlsSetupError::SystemRoots { reason });
    }
    Ok(roots)
}
