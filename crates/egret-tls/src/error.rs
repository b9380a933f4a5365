//! Error values and the texts Envoy 1.40 (BoringSSL) prints for the same failures.
//!
//! Verified against Envoy 1.40.0 on loopback (openssl s_server upstreams, Istio's retry
//! policy): `%UPSTREAM_TRANSPORT_FAILURE_REASON%` for certificate verification failures is
//! `TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:<detail>:TLS_error_end`
//! with the detail naming the X.509 error and depth or the SAN matcher; a TLS alert from the
//! server is `TLS_error:|<268435456+1000+alert>:SSL_routines:OPENSSL_internal:<NAME>:TLS_error_end`
//! (no "SSL alert number" suffix); Envoy writes `_` for every space. The reset reason of all
//! of them is `remote connection failure`; a handshake that never completes is
//! `connection timeout` with no transport failure reason.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::{AlertDescription, CertificateError};

/// A credential or trust store that cannot be turned into a TLS configuration. The caller
/// answers the affected requests with 503 and logs this text; it is never a panic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    /// `credential client-credential: missing /creds/client-credential/tls.key`
    #[error("{context}: missing {}", path.display())]
    Missing { context: String, path: PathBuf },
    /// A file that exists but cannot be read.
    #[error("{context}: cannot read {}: {reason}", path.display())]
    Unreadable {
        context: String,
        path: PathBuf,
        reason: String,
    },
    /// A file whose contents are unusable (no PEM certificate, no key, key/cert mismatch, ...).
    #[error("{context}: {}: {reason}", path.display())]
    Invalid {
        context: String,
        path: PathBuf,
        reason: String,
    },
    /// A directory flag the configuration needs was not given.
    #[error("{context}: {flag} is not set")]
    NoDirectory { context: String, flag: &'static str },
    /// The settings themselves are incomplete or contradictory.
    #[error("{context}: {reason}")]
    Config { context: String, reason: String },
    /// The system trust store could not be loaded.
    #[error("system trust store: {reason}")]
    SystemRoots { reason: String },
}

/// Why a peer certificate was refused, with the detail Envoy appends to
/// `CERTIFICATE_VERIFY_FAILED`. Carried inside `rustls::Error` from the verifier to
/// [`TlsConnectError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyFailure {
    pub kind: VerifyFailureKind,
    /// Envoy's detail text, with spaces (e.g. `verify cert failed: X509_verify_cert:
    /// certificate verification error at depth 0: certificate has expired`).
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyFailureKind {
    UnknownIssuer,
    SelfSigned,
    Expired,
    NotYetValid,
    BadSignature,
    NameMismatch,
    Other,
}

impl VerifyFailure {
    /// A chain failure as BoringSSL's `X509_verify_cert` words it.
    pub(crate) fn x509(kind: VerifyFailureKind, depth: usize, text: &str) -> VerifyFailure {
        VerifyFailure {
            kind,
            detail: format!(
                "verify cert failed: X509_verify_cert: certificate verification error at depth {depth}: {text}"
            ),
        }
    }

    /// A name failure as Envoy's SAN matcher words it: `certificate SANs are [a, b]`.
    pub(crate) fn san(sans: &[String]) -> VerifyFailure {
        VerifyFailure {
            kind: VerifyFailureKind::NameMismatch,
            detail: format!(
                "verify cert failed: SAN matcher, certificate SANs are [{}]",
                sans.join(", ")
            ),
        }
    }

    /// A name that is not the expected one under Envoy's auto SAN validation (the
    /// DestinationRule sets neither `sni` nor `subjectAltNames`; checked with Envoy 1.40).
    pub(crate) fn san_list(expected: &str, sans: &[String]) -> VerifyFailure {
        VerifyFailure {
            kind: VerifyFailureKind::NameMismatch,
            detail: format!(
                "verify cert failed: verify SAN list, expected SANs: [{expected}], certificate SANs: [{}]",
                sans.join(", ")
            ),
        }
    }

    /// The rustls error that carries this failure through the handshake.
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            self,
        ))))
    }

    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` for this failure.
    pub fn transport_failure_reason(&self) -> String {
        envoy_text(&format!(
            "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:{}:TLS_error_end",
            self.detail
        ))
    }
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for VerifyFailure {}

/// Envoy replaces spaces in failure reasons by `_` (access log and response-code details).
fn envoy_text(s: &str) -> String {
    s.replace(' ', "_")
}

/// A failed TLS handshake toward an upstream.
#[derive(Debug, thiserror::Error)]
pub enum TlsConnectError {
    /// The handshake did not complete within the time given.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The SNI / expected server name is not a valid DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),
    /// The handshake failed (certificate refused, alert received, connection reset, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
}

impl TlsConnectError {
    /// Envoy's reset reason, as it appears in the local-reply body (`upstream connect error or
    /// disconnect/reset before headers. [retried and the latest ]reset reason: <this>`) and, with
    /// `_` for spaces, in `%RESPONSE_CODE_DETAILS%`
    /// (`upstream_reset_before_response_started{remote_connection_failure|<reason>}`).
    pub fn reset_reason(&self) -> &'static str {
        match self {
            TlsConnectError::Timeout => "connection timeout",
            _ => "remote connection failure",
        }
    }

    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` as Envoy 1.40 logs it, `None` where Envoy logs `-`.
    pub fn transport_failure_reason(&self) -> Option<String> {
        match self {
            TlsConnectError::Timeout | TlsConnectError::InvalidServerName(_) => None,
            TlsConnectError::Handshake(e) => io_transport_failure_reason(e),
        }
    }

    /// The certificate verification failure, if that is what went wrong.
    pub fn verify_failure(&self) -> Option<&VerifyFailure> {
        match self {
            TlsConnectError::Handshake(e) => verify_failure_of(e),
            _ => None,
        }
    }

    /// The rustls error inside, if any.
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        match self {
            TlsConnectError::Handshake(e) => rustls_error_of(e),
            _ => None,
        }
    }
}

pub(crate) fn rustls_error_of(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

fn verify_failure_of(e: &io::Error) -> Option<&VerifyFailure> {
    match rustls_error_of(e)? {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<VerifyFailure>()
        }
        _ => None,
    }
}

/// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` for an I/O error from a TLS stream: use it also for
/// errors on the first read after the handshake (with TLS 1.3 a server refuses the client
/// certificate only after the client's handshake has finished, so the alert arrives there).
pub fn io_transport_failure_reason(e: &io::Error) -> Option<String> {
    if let Some(err) = rustls_error_of(e) {
        return rustls_transport_failure_reason(err);
    }
    // BoringSSL reports socket errors as `system library` errors: ERR_PACK(ERR_LIB_SYS, errno).
    let errno = e.raw_os_error()?;
    let code = (2i64 << 24) | i64::from(errno);
    Some(envoy_text(&format!(
        "TLS_error:|{code}:system library:OPENSSL_internal:{}:TLS_error_end",
        strerror(e)
    )))
}

/// The reason text for a rustls error, in BoringSSL's words where the cause is the same.
pub fn rustls_transport_failure_reason(err: &rustls::Error) -> Option<String> {
    use rustls::Error as E;
    let ssl = |code: u32, name: &str| {
        Some(envoy_text(&format!(
            "TLS_error:|{code}:SSL routines:OPENSSL_internal:{name}:TLS_error_end"
        )))
    };
    match err {
        E::InvalidCertificate(CertificateError::Other(other)) => {
            if let Some(f) = other.0.downcast_ref::<VerifyFailure>() {
                return Some(f.transport_failure_reason());
            }
            Some(generic_verify_failure(err).transport_failure_reason())
        }
        E::InvalidCertificate(_) => Some(generic_verify_failure(err).transport_failure_reason()),
        E::AlertReceived(alert) => {
            let n = u8::from(*alert);
            let name = alert_reason_name(*alert)?;
            ssl(268_435_456 + 1000 + u32::from(n), name)
        }
        // A non-TLS answer (e.g. a plain HTTP server): BoringSSL sees a bad record header.
        E::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
            | rustls::InvalidMessage::UnknownProtocolVersion
            | rustls::InvalidMessage::MessageTooLarge,
        ) => ssl(268_435_703, "WRONG_VERSION_NUMBER"),
        other => Some(envoy_text(&format!("TLS_error:|{other}:TLS_error_end"))),
    }
}

/// A verification failure described only by rustls' classification (used where no
/// [`VerifyFailure`] was produced, e.g. a client certificate refused by webpki).
pub(crate) fn generic_verify_failure(err: &rustls::Error) -> VerifyFailure {
    use VerifyFailureKind as K;
    let ce = match err {
        rustls::Error::InvalidCertificate(ce) => ce,
        _ => return VerifyFailure::x509(K::Other, 0, "unknown certificate verification error"),
    };
    #[allow(deprecated)]
    let (kind, text) = match ce {
        CertificateError::UnknownIssuer => {
            (K::UnknownIssuer, "unable to get local issuer certificate")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            (K::Expired, "certificate has expired")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            (K::NotYetValid, "certificate is not yet valid")
        }
        CertificateError::BadSignature
        | CertificateError::UnsupportedSignatureAlgorithm
        | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            (K::BadSignature, "certificate signature failure")
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            (K::Other, "unsupported certificate purpose")
        }
        CertificateError::UnhandledCriticalExtension => (K::Other, "unhandled critical extension"),
        CertificateError::Revoked => (K::Other, "certificate revoked"),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            return VerifyFailure::san(&[]);
        }
        _ => (K::Other, "unknown certificate verification error"),
    };
    VerifyFailure::x509(kind, 0, text)
}

/// BoringSSL's reason names for received alerts (`SSL_R_SSLV3_ALERT_*` / `SSL_R_TLSV1_ALERT_*`,
/// numbered 1000 + alert).
fn alert_reason_name(alert: AlertDescription) -> Option<&'static str> {
    use AlertDescription as A;
    Some(match alert {
        A::CloseNotify => "SSLV3_ALERT_CLOSE_NOTIFY",
        A::UnexpectedMessage => "SSLV3_ALERT_UNEXPECTED_MESSAGE",
        A::BadRecordMac => "SSLV3_ALERT_BAD_RECORD_MAC",
        A::DecryptionFailed => "TLSV1_ALERT_DECRYPTION_FAILED",
        A::RecordOverflow => "TLSV1_ALERT_RECORD_OVERFLOW",
        A::DecompressionFailure => "SSLV3_ALERT_DECOMPRESSION_FAILURE",
        A::HandshakeFailure => "SSLV3_ALERT_HANDSHAKE_FAILURE",
        A::NoCertificate => "SSLV3_ALERT_NO_CERTIFICATE",
        A::BadCertificate => "SSLV3_ALERT_BAD_CERTIFICATE",
        A::UnsupportedCertificate => "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        A::CertificateRevoked => "SSLV3_ALERT_CERTIFICATE_REVOKED",
        A::CertificateExpired => "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        A::CertificateUnknown => "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        A::IllegalParameter => "SSLV3_ALERT_ILLEGAL_PARAMETER",
        A::UnknownCA => "TLSV1_ALERT_UNKNOWN_CA",
        A::AccessDenied => "TLSV1_ALERT_ACCESS_DENIED",
        A::DecodeError => "TLSV1_ALERT_DECODE_ERROR",
        A::DecryptError => "TLSV1_ALERT_DECRYPT_ERROR",
        A::ExportRestriction => "TLSV1_ALERT_EXPORT_RESTRICTION",
        A::ProtocolVersion => "TLSV1_ALERT_PROTOCOL_VERSION",
        A::InsufficientSecurity => "TLSV1_ALERT_INSUFFICIENT_SECURITY",
        A::InternalError => "TLSV1_ALERT_INTERNAL_ERROR",
        A::InappropriateFallback => "TLSV1_ALERT_INAPPROPRIATE_FALLBACK",
        A::UserCanceled => "TLSV1_ALERT_USER_CANCELLED",
        A::NoRenegotiation => "TLSV1_ALERT_NO_RENEGOTIATION",
        A::UnsupportedExtension => "TLSV1_ALERT_UNSUPPORTED_EXTENSION",
        A::CertificateUnobtainable => "TLSV1_ALERT_CERTIFICATE_UNOBTAINABLE",
        A::UnrecognisedName => "TLSV1_ALERT_UNRECOGNIZED_NAME",
        A::BadCertificateStatusResponse => "TLSV1_ALERT_BAD_CERTIFICATE_STATUS_RESPONSE",
        A::BadCertificateHashValue => "TLSV1_ALERT_BAD_CERTIFICATE_HASH_VALUE",
        A::UnknownPSKIdentity => "TLSV1_ALERT_UNKNOWN_PSK_IDENTITY",
        A::CertificateRequired => "TLSV1_ALERT_CERTIFICATE_REQUIRED",
        A::NoApplicationProtocol => "TLSV1_ALERT_NO_APPLICATION_PROTOCOL",
        A::EncryptedClientHelloRequired => "TLSV1_ALERT_ECH_REQUIRED",
        _ => return None,
    })
}

/// The C library's text for an OS error ("Connection reset by peer"), without Rust's
/// " (os error 104)" suffix.
fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A failed downstream TLS accept.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The connection ended before sending a byte (a TCP health check).
    #[error("the connection ended before sending anything")]
    Silent,
    /// The connection ended or failed before a ClientHello was read.
    #[error("reading ClientHello: {0}")]
    ClientHello(#[source] io::Error),
    /// No server on this port answers this SNI (Envoy: no filter chain match; closed).
    #[error("no TLS server for SNI {}", sni.as_deref().unwrap_or("(none)"))]
    NoMatchingServer { sni: Option<String> },
    /// The matching server's credentials are missing or broken.
    #[error(transparent)]
    Setup(#[from] TlsSetupError),
    /// The handshake failed (client certificate refused, protocol error, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
}

impl AcceptError {
    /// `%DOWNSTREAM_TRANSPORT_FAILURE_REASON%`, in the same BoringSSL style (not verified
    /// against Envoy for the downstream side).
    pub fn transport_failure_reason(&self) -> Option<String> {
        match self {
            AcceptError::Handshake(e) => io_transport_failure_reason(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_match_envoy() {
        let f = VerifyFailure::x509(
            VerifyFailureKind::UnknownIssuer,
            0,
            "unable to get local issuer certificate",
        );
        assert_eq!(
            f.transport_failure_reason(),
            "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:_X509_verify_cert:_certificate_verification_error_at_depth_0:_unable_to_get_local_issuer_certificate:TLS_error_end"
        );
        let f = VerifyFailure::san(&[
            "a.example.com".into(),
            "spiffe://cluster.local/ns/x/sa/y".into(),
        ]);
        assert_eq!(
            f.transport_failure_reason(),
            "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:_SAN_matcher,_certificate_SANs_are_[a.example.com,_spiffe://cluster.local/ns/x/sa/y]:TLS_error_end"
        );
        assert_eq!(
            rustls_transport_failure_reason(&rustls::Error::AlertReceived(AlertDescription::HandshakeFailure)).as_deref(),
            Some("TLS_error:|268436496:SSL_routines:OPENSSL_internal:SSLV3_ALERT_HANDSHAKE_FAILURE:TLS_error_end")
        );
        assert_eq!(
            rustls_transport_failure_reason(&rustls::Error::AlertReceived(AlertDescription::UnknownCA)).as_deref(),
            Some("TLS_error:|268436504:SSL_routines:OPENSSL_internal:TLSV1_ALERT_UNKNOWN_CA:TLS_error_end")
        );
        assert_eq!(
            rustls_transport_failure_reason(&rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)).as_deref(),
            Some("TLS_error:|268436526:SSL_routines:OPENSSL_internal:TLSV1_ALERT_PROTOCOL_VERSION:TLS_error_end")
        );
        let reset = io::Error::from_raw_os_error(104);
        assert_eq!(
            io_transport_failure_reason(&reset).as_deref(),
            Some("TLS_error:|33554536:system_library:OPENSSL_internal:Connection_reset_by_peer:TLS_error_end")
        );
        assert_eq!(
            io_transport_failure_reason(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            None
        );
    }
}
