//! Certificate verifiers.
//!
//! Upstream ([`ServerVerifier`]): the chain is always verified (webpki, or for a v1 leaf that
//! webpki cannot parse, a direct signature check against a trust anchor); then the name: the
//! configured `subjectAltNames` if any, else the SNI (except ISTIO_MUTUAL without SANs, which
//! trusts the mesh root alone, as Istio configures Envoy). The name is matched against the
//! certificate's SANs only: one without a SAN extension (an X.509 v1 certificate, or a CN
//! alone) fails a name check, as in Envoy, which never falls back to the subject CN.
//!
//! Downstream ([`ClientVerifier`]): webpki's client verifier (or the same v1 path), plus an
//! optional `subjectAltNames` check.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};

use crate::der::{spki_parts, CertInfo, GeneralName};
use crate::error::{VerifyFailure, VerifyFailureKind};

/// Which name the server certificate must carry.
#[derive(Clone, Debug)]
pub(crate) enum NameCheck {
    /// One of these (DNS, URI or IP SAN) — `subjectAltNames` from the DestinationRule.
    AnyOf(Vec<String>),
    /// The server name the connection was opened with (the SNI; Envoy's auto SAN validation).
    ServerName,
    /// Chain only (ISTIO_MUTUAL, or `sni` set, without `subjectAltNames`).
    ChainOnly,
}

#[derive(Debug)]
pub(crate) struct ServerVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    names: NameCheck,
    /// `insecureSkipVerify`: neither chain nor name is checked (handshake signatures still are).
    skip: bool,
}

impl ServerVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        algs: WebPkiSupportedAlgorithms,
        names: NameCheck,
        skip: bool,
    ) -> ServerVerifier {
        ServerVerifier {
            roots,
            algs,
            names,
            skip,
        }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), VerifyFailure> {
        let info = CertInfo::parse(end_entity);
        let parsed = verify_chain(
            &self.roots,
            &self.algs,
            end_entity,
            info.as_ref(),
            intermediates,
            now,
            Usage::Server,
        )?;
        let expected: Vec<String> = match &self.names {
            NameCheck::ChainOnly => return Ok(()),
            NameCheck::AnyOf(names) => names.clone(),
            NameCheck::ServerName => {
                // A certificate with SANs: webpki's own matching (wildcards, IP addresses).
                let expected = server_name_text(server_name);
                if let (Some(parsed), Some(CertInfo { san: Some(_), .. })) = (&parsed, &info) {
                    return rustls::client::verify_server_name(parsed, server_name).map_err(|_| {
                        VerifyFailure::san_list(&expected, &san_strings(info.as_ref()))
                    });
                }
                vec![expected]
            }
        };
        // Envoy words a failed auto SAN validation differently from a failed SAN matcher.
        let mismatch = |sans: &[String]| match &self.names {
            NameCheck::ServerName => VerifyFailure::san_list(&expected[0], sans),
            _ => VerifyFailure::san(sans),
        };
        let Some(info) = info else {
            return Err(mismatch(&[]));
        };
        match &info.san {
            Some(sans) => {
                if expected
                    .iter()
                    .any(|e| sans.iter().any(|s| san_matches(s, e)))
                {
                    Ok(())
                } else {
                    Err(mismatch(&san_strings(Some(&info))))
                }
            }
            // No SAN extension: Envoy does not look at the CN (checked with Envoy 1.40).
            None => Err(mismatch(&[])),
        }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.skip {
            return Ok(ServerCertVerified::assertion());
        }
        self.check(end_entity, intermediates, server_name, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(VerifyFailure::into_rustls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Downstream client-certificate verifier: mandatory certificate from `roots`, optional SANs.
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    webpki: Arc<dyn ClientCertVerifier>,
    subject_alt_names: Vec<String>,
}

impl ClientVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<rustls::crypto::CryptoProvider>,
        subject_alt_names: Vec<String>,
    ) -> Result<ClientVerifier, rustls::server::VerifierBuilderError> {
        let algs = provider.signature_verification_algorithms;
        let webpki =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                .build()?;
        Ok(ClientVerifier {
            roots,
            algs,
            webpki,
            subject_alt_names,
        })
    }
}

/// A client certificate's chain failure as the error whose alert BoringSSL (Envoy) sends
/// for it: `unknown_ca` for an unknown or self-signed issuer, `certificate_expired`,
/// `bad_certificate` for one not valid yet, `decrypt_error` for a bad signature (rustls
/// maps these errors to those alerts); `certificate_unknown` otherwise. Only the alert
/// matters here: the client's side has no failure text to log.
fn client_alert(failure: VerifyFailure) -> rustls::Error {
    let error = match failure.kind {
        VerifyFailureKind::UnknownIssuer | VerifyFailureKind::SelfSigned => {
            CertificateError::UnknownIssuer
        }
        VerifyFailureKind::Expired => CertificateError::Expired,
        // rustls sends `bad_certificate` for this one.
        VerifyFailureKind::NotYetValid => CertificateError::NotValidForName,
        VerifyFailureKind::BadSignature => CertificateError::BadSignature,
        VerifyFailureKind::NameMismatch | VerifyFailureKind::Other => return failure.into_rustls(),
    };
    tracing::debug!(failure = %failure, "client certificate refused");
    rustls::Error::InvalidCertificate(error)
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let info = CertInfo::parse(end_entity);
        verify_chain(
            &self.roots,
            &self.algs,
            end_entity,
            info.as_ref(),
            intermediates,
            now,
            Usage::Client(&*self.webpki),
        )
        .map_err(client_alert)?;
        if !self.subject_alt_names.is_empty() {
            let ok = info
                .as_ref()
                .and_then(|i| i.san.as_ref())
                .is_some_and(|sans| {
                    self.subject_alt_names
                        .iter()
                        .any(|e| sans.iter().any(|s| san_matches(s, e)))
                });
            if !ok {
                return Err(VerifyFailure::san(&san_strings(info.as_ref())).into_rustls());
            }
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[derive(Clone, Copy)]
enum Usage<'v> {
    Server,
    /// webpki's client verifier (chain + clientAuth usage), built once per config.
    Client(&'v dyn ClientCertVerifier),
}

/// Verifies that `end_entity` chains to `roots` and is valid now. Returns webpki's parse of
/// the leaf when webpki could parse it (v3), `None` for a v1 leaf verified directly.
fn verify_chain<'a>(
    roots: &RootCertStore,
    algs: &WebPkiSupportedAlgorithms,
    end_entity: &'a CertificateDer<'a>,
    info: Option<&CertInfo<'_>>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage<'_>,
) -> Result<Option<ParsedCertificate<'a>>, VerifyFailure> {
    if let Some(info) = info.filter(|i| i.version == 0) {
        verify_v1_leaf(roots, algs, info, intermediates, now)?;
        return Ok(None);
    }
    let parsed = ParsedCertificate::try_from(end_entity)
        .map_err(|e| describe_chain_error(&e, info, intermediates, now))?;
    let result = match usage {
        Usage::Server => rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            intermediates,
            now,
            algs.all,
        ),
        Usage::Client(webpki) => webpki
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ()),
    };
    result.map_err(|e| describe_chain_error(&e, info, intermediates, now))?;
    Ok(Some(parsed))
}

/// A v1 leaf (no extensions: `openssl x509 -req` without `-extfile`) issued directly by a trust
/// anchor: validity window, then the anchor's signature over the TBSCertificate. v1 leaves under
/// intermediates and anchors with name constraints are refused.
fn verify_v1_leaf(
    roots: &RootCertStore,
    algs: &WebPkiSupportedAlgorithms,
    info: &CertInfo<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), VerifyFailure> {
    let mut issuer_found = false;
    for anchor in roots
        .roots
        .iter()
        .filter(|a| a.subject.as_ref() == info.issuer)
    {
        issuer_found = true;
        if anchor.name_constraints.is_some() {
            continue;
        }
        let Some((key_alg, key)) = spki_parts(anchor.subject_public_key_info.as_ref()) else {
            continue;
        };
        if verify_raw(
            algs.all,
            info.signature_alg,
            key_alg,
            key,
            info.tbs,
            info.signature,
        ) {
            return check_validity(info, 0, now);
        }
        return Err(VerifyFailure::x509(
            VerifyFailureKind::BadSignature,
            0,
            "certificate signature failure",
        ));
    }
    if !issuer_found {
        return Err(unknown_issuer(Some(info), intermediates));
    }
    Err(VerifyFailure::x509(
        VerifyFailureKind::Other,
        0,
        "unknown certificate verification error",
    ))
}

fn check_validity(info: &CertInfo<'_>, depth: usize, now: UnixTime) -> Result<(), VerifyFailure> {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now < info.not_before {
        return Err(VerifyFailure::x509(
            VerifyFailureKind::NotYetValid,
            depth,
            "certificate is not yet valid",
        ));
    }
    if now > info.not_after {
        return Err(VerifyFailure::x509(
            VerifyFailureKind::Expired,
            depth,
            "certificate has expired",
        ));
    }
    Ok(())
}

/// Checks `signature` over `message` with any algorithm matching both the signature algorithm
/// identifier and the key's algorithm identifier.
fn verify_raw(
    all: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm],
    signature_alg: &[u8],
    key_alg: &[u8],
    key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    all.iter()
        .filter(|a| {
            a.signature_alg_id().as_ref() == signature_alg
                && a.public_key_alg_id().as_ref() == key_alg
        })
        .any(|a| a.verify_signature(key, message, signature).is_ok())
}

/// Re-describes a webpki chain error the way BoringSSL's `X509_verify_cert` words it,
/// including the depth in the presented chain.
fn describe_chain_error(
    err: &rustls::Error,
    info: Option<&CertInfo<'_>>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> VerifyFailure {
    use VerifyFailureKind as K;
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            unknown_issuer(info, intermediates)
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => {
            // BoringSSL checks times from the top of the chain down and reports the first
            // failure; find the highest presented certificate that is out of its window.
            let chain = presented_chain(info, intermediates);
            for (depth, cert) in chain.iter().enumerate().rev() {
                if let Err(f) = check_validity(cert, depth, now) {
                    return f;
                }
            }
            crate::error::generic_verify_failure(err)
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            let text = other.0.to_string();
            // A self-signed CA certificate as the leaf (`openssl req -x509`): BoringSSL
            // looks for its issuer first and finds none but itself.
            if text.contains("CaUsedAsEndEntity")
                && intermediates.is_empty()
                && info.is_some_and(self_signed)
            {
                unknown_issuer(info, intermediates)
            } else if text.contains("CaUsedAsEndEntity") || text.contains("EndEntityUsedAsCa") {
                VerifyFailure::x509(K::Other, 0, "invalid CA certificate")
            } else {
                VerifyFailure::x509(K::Other, 0, "unknown certificate verification error")
            }
        }
        other => crate::error::generic_verify_failure(other),
    }
}

/// The chain as presented: the leaf, then each intermediate whose subject is the previous
/// certificate's issuer.
fn presented_chain<'a>(
    info: Option<&CertInfo<'a>>,
    intermediates: &'a [CertificateDer<'a>],
) -> Vec<CertInfo<'a>> {
    let Some(leaf) = info else { return Vec::new() };
    let parsed: Vec<CertInfo<'a>> = intermediates
        .iter()
        .filter_map(|c| CertInfo::parse(c))
        .collect();
    let mut chain = vec![leaf.clone()];
    let mut used = vec![false; parsed.len()];
    while let Some(last) = chain.last() {
        if self_signed(last) {
            break;
        }
        let next = parsed
            .iter()
            .enumerate()
            .find(|(i, c)| !used[*i] && c.subject == last.issuer);
        match next {
            Some((i, c)) => {
                used[i] = true;
                chain.push(c.clone());
            }
            None => break,
        }
    }
    chain
}

/// Self-signed as BoringSSL's `X509_check_issued` decides it: its own issuer by name, and
/// allowed to sign certificates if it says what it may do (a leaf whose keyUsage lacks
/// keyCertSign is an unknown issuer's, checked with Envoy 1.40).
fn self_signed(cert: &CertInfo<'_>) -> bool {
    cert.self_issued() && cert.may_sign_certs
}

fn unknown_issuer(
    info: Option<&CertInfo<'_>>,
    intermediates: &[CertificateDer<'_>],
) -> VerifyFailure {
    let chain = presented_chain(info, intermediates);
    let depth = chain.len().saturating_sub(1);
    match chain.last() {
        Some(top) if self_signed(top) && depth == 0 => {
            VerifyFailure::x509(VerifyFailureKind::SelfSigned, 0, "self signed certificate")
        }
        Some(top) if self_signed(top) => VerifyFailure::x509(
            VerifyFailureKind::SelfSigned,
            depth,
            "self signed certificate in certificate chain",
        ),
        _ => VerifyFailure::x509(
            VerifyFailureKind::UnknownIssuer,
            depth,
            "unable to get local issuer certificate",
        ),
    }
}

fn tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let info = CertInfo::parse(cert).filter(|i| i.version == 0);
    let Some(info) = info else {
        return rustls::crypto::verify_tls12_signature(message, cert, dss, algs);
    };
    // A v1 certificate (webpki cannot read it): every algorithm mapped to the scheme whose key
    // type matches, as webpki does for TLS 1.2.
    let (key_alg, key) = info.public_key().ok_or_else(bad_signature)?;
    let ok = algs
        .mapping
        .iter()
        .filter(|(scheme, _)| *scheme == dss.scheme)
        .flat_map(|(_, list)| list.iter())
        .filter(|a| a.public_key_alg_id().as_ref() == key_alg)
        .any(|a| a.verify_signature(key, message, dss.signature()).is_ok());
    if ok {
        Ok(HandshakeSignatureValid::assertion())
    } else {
        Err(bad_signature())
    }
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    match CertInfo::parse(cert).filter(|i| i.version == 0) {
        None => rustls::crypto::verify_tls13_signature(message, cert, dss, algs),
        Some(info) => {
            let spki = SubjectPublicKeyInfoDer::from(info.spki);
            rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algs)
        }
    }
}

fn bad_signature() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::BadSignature)
}

/// SAN entries as text, in certificate order, for Envoy's `certificate SANs are [...]`.
fn san_strings(info: Option<&CertInfo<'_>>) -> Vec<String> {
    info.and_then(|i| i.san.as_ref())
        .map(|sans| sans.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        _ => String::new(),
    }
}

/// Does a SAN entry satisfy an expected name? DNS names compare case-insensitively and allow
/// a wildcard in the certificate's left-most label; URIs compare exactly; IPs by value.
fn san_matches(san: &GeneralName, expected: &str) -> bool {
    match san {
        GeneralName::Dns(d) => dns_matches(d, expected),
        GeneralName::Uri(u) => u == expected,
        GeneralName::Ip(ip) => expected.parse::<IpAddr>().is_ok_and(|e| e == *ip),
        GeneralName::Email(_) => false,
    }
}

/// `presented` (from the certificate, may be `*.example.com`) against `expected` (a host name).
pub(crate) fn dns_matches(presented: &str, expected: &str) -> bool {
    let p = presented.trim_end_matches('.');
    let e = expected.trim_end_matches('.');
    if p.is_empty() || e.is_empty() {
        return false;
    }
    if let Some(suffix) = p.strip_prefix("*.") {
        // The wildcard stands for exactly one non-empty label.
        return match e.split_once('.') {
            Some((label, rest)) => {
                !label.is_empty() && !suffix.is_empty() && rest.eq_ignore_ascii_case(suffix)
            }
            None => false,
        };
    }
    p.eq_ignore_ascii_case(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_matching() {
        assert!(dns_matches("a.example.com", "A.Example.com"));
        assert!(dns_matches("*.example.com", "a.example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("a.example.com", "b.example.com"));
        assert!(!dns_matches("", ""));
        assert!(dns_matches("a.example.com.", "a.example.com"));
    }
}
