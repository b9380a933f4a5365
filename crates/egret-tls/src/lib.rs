//! Egret's TLS originator and terminator. This crate owns the rustls configurations built from
//! the compiled TLS descriptions in `egret_core::tls`: client configs for upstream origination
//! (CA file, Secret folder or system roots; client certificates; SNI; SAN name checks;
//! ALPN; session resumption), server configs for Gateway servers chosen by SNI, PEM loading,
//! credential files that rotate under it, and the Envoy/BoringSSL texts for TLS failures.
//! It must not parse Istio resources, open or pool connections, or decide HTTP responses:
//! callers get configs, streams and error values and turn errors into 503s and log lines.
//! It never panics on file or network input, and builds every config with the aws-lc-rs
//! provider explicitly (no process-wide default is assumed).

mod der;
mod downstream;
mod error;
mod files;
mod roots;
mod upstream;
mod verify;
mod xfcc;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use downstream::{Accepted, DownstreamTlsAcceptor, DownstreamTlsOptions};
pub use error::{
    io_transport_failure_reason, rustls_transport_failure_reason, AcceptError, TlsConnectError,
    TlsSetupError, VerifyFailure, VerifyFailureKind,
};
pub use upstream::{
    connect_tls, CloseNotifyOptional, SystemRoots, UpstreamTlsContext, UpstreamTlsContexts,
    UpstreamTlsOptions,
};

/// The ALPN list offered by default: h2 first, then HTTP/1.1.
pub const ALPN_H2_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];
/// HTTP/1.1 only.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// The crypto provider every config here uses (aws-lc-rs), created once — when the first
/// TLS setting is loaded. aws-lc sets itself up (its random generator, the key-exchange
/// groups) on first use, which took ~20 ms: done here, at load, rather than inside the first
/// handshake (an audit against Envoy 1.40 saw it on every first request to a TLS host).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let provider = rustls::crypto::aws_lc_rs::default_provider();
            let _ = provider.secure_random.fill(&mut [0u8; 32]);
            for group in &provider.kx_groups {
                let _ = group.start();
            }
            Arc::new(provider)
        })
        .clone()
}

/// A session's version and cipher as Envoy (BoringSSL) names them for
/// `%DOWNSTREAM_TLS_VERSION%` / `%DOWNSTREAM_TLS_CIPHER%`: `TLSv1.3`, and the IANA name of a
/// TLS 1.3 suite or the OpenSSL name of a TLS 1.2 one. None before the handshake is done.
pub fn session_names(
    version: Option<rustls::ProtocolVersion>,
    suite: Option<rustls::SupportedCipherSuite>,
) -> Option<egret_core::TlsSession> {
    use rustls::CipherSuite as C;
    let version = match version? {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "unknown",
    };
    let cipher = match suite?.suite() {
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "unknown",
    };
    Some(egret_core::TlsSession { version, cipher })
}

/// What the access log prints about an originated TLS session: version, cipher, and the
/// upstream's certificate (subject and issuer as RFC 2253, URI SANs).
pub fn upstream_tls_info(conn: &rustls::ClientConnection) -> egret_core::UpstreamTlsInfo {
    let der = conn.peer_certificates().and_then(|certs| certs.first());
    let info = der.and_then(|d| der::CertInfo::parse(d));
    egret_core::UpstreamTlsInfo {
        session: session_names(conn.protocol_version(), conn.negotiated_cipher_suite()),
        peer: der
            .zip(info.as_ref())
            .map(|(d, i)| egret_core::PeerCertInfo {
                subject: i.subject_rfc2253(),
                issuer: i.issuer_rfc2253(),
                fingerprint_256: xfcc::sha256_hex(d),
            }),
        peer_uri_san: info
            .as_ref()
            .map(|i| i.uri_sans().join(","))
            .filter(|s| !s.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>(_: &T) {}

    /// The listener and the pool run these on multi-threaded runtimes.
    #[test]
    fn types_and_futures_are_send() {
        let ctxs = UpstreamTlsContexts::new(UpstreamTlsOptions::default());
        send_sync(&ctxs);
        let acceptor = DownstreamTlsAcceptor::new(&[], None, None).expect("empty acceptor");
        send_sync(&acceptor);
        fn is_send<F: std::future::Future + Send>(_: F) {}
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let (a, _b) = tokio::io::duplex(64);
            is_send(acceptor.accept(a));
            let (a, _b) = tokio::io::duplex(64);
            let cfg = Arc::new(
                rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .expect("versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            );
            is_send(connect_tls(
                a,
                cfg,
                "example.com",
                std::time::Duration::from_secs(1),
            ));
        });
    }
}
