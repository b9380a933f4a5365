//! Certificates made at test time with `rcgen`: a CA, server and client leaves signed by it,
//! the odd shapes the user's scenarios contain (CN-only server certificate, as `openssl x509
//! -req` makes it; an expired one), rustls configs built from them, and writers that lay them
//! out as Kubernetes Secret or Istio proxy files.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The ALPN list an HTTP server or client offers by default: h2 first, then HTTP/1.1.
pub const ALPN_H2_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The crypto provider every config in this crate uses (aws-lc-rs, like the data path).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn rcgen_err(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("rcgen: {e}"))
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::other(format!("rustls: {e}"))
}

/// A certificate authority that signs test certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("subject_cn", &subject_cn(&self.cert_der))
            .finish()
    }
}

impl TestCa {
    /// A self-signed CA with subject `CN=<common_name>`.
    pub fn new(common_name: &str) -> TestCa {
        Self::build(None, common_name)
    }

    /// A self-signed CA with subject `O=<org>, CN=<common_name>` (the user's
    /// `O=example Inc./CN=example.com`).
    pub fn with_org(org: &str, common_name: &str) -> TestCa {
        Self::build(Some(org), common_name)
    }

    fn build(org: Option<&str>, common_name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(org) = org {
            dn.push(DnType::OrganizationName, org);
        }
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // Test setup: key generation and self-signing with fixed, valid parameters only fail
        // if the crypto library is broken.
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        let key_pem = key.serialize_pem();
        TestCa {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        // A certificate this crate just made always parses.
        roots
            .add(self.cert_der())
            .expect("add test CA to root store");
        roots
    }

    /// Signs a certificate for arbitrary parameters (escape hatch for odd shapes).
    pub fn issue(&self, params: &CertificateParams) -> io::Result<TestCert> {
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_err)?;
        Ok(TestCert {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pkcs8: key.serialize_der(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
        })
    }

    fn leaf_params(
        cn: Option<&str>,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
    ) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        params
    }

    fn dns_sans(names: &[&str]) -> Vec<SanType> {
        names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName((*n).to_string().try_into().expect("DNS SAN must be ASCII"))
                }
            })
            .collect()
    }

    /// A server certificate with these DNS (or IP, if the string parses as one) SANs and an
    /// optional subject CN.
    pub fn server_cert(&self, dns_names: &[&str], cn: Option<&str>) -> TestCert {
        let params = Self::leaf_params(
            cn,
            Self::dns_sans(dns_names),
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        self.issue(&params).expect("issue server certificate")
    }

    /// A client certificate `CN=<cn>`, optionally with one URI SAN (a SPIFFE id such as
    /// `spiffe://cluster.local/ns/default/sa/sleep`).
    pub fn client_cert(&self, cn: &str, uri_san: Option<&str>) -> TestCert {
        let sans = uri_san
            .map(|u| {
                vec![SanType::URI(
                    u.to_string().try_into().expect("URI SAN must be ASCII"),
                )]
            })
            .unwrap_or_default();
        let params = Self::leaf_params(Some(cn), sans, ExtendedKeyUsagePurpose::ClientAuth);
        self.issue(&params).expect("issue client certificate")
    }

    /// A mesh workload certificate: URI SAN only (the SPIFFE id), usable both as client and
    /// server, like Istio's `cert-chain.pem`.
    pub fn workload_cert(&self, spiffe_id: &str) -> TestCert {
        let mut params = Self::leaf_params(
            None,
            vec![SanType::URI(
                spiffe_id
                    .to_string()
                    .try_into()
                    .expect("URI SAN must be ASCII"),
            )],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
        self.issue(&params).expect("issue workload certificate")
    }

    /// A server certificate as `openssl x509 -req` makes it from a CSR: subject `CN=<cn>`, no
    /// subjectAltName, no extensions at all.
    pub fn server_cert_cn_only(&self, cn: &str) -> TestCert {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        self.issue(&params).expect("issue CN-only certificate")
    }

    /// A server certificate for these names whose validity ended in 2001.
    pub fn expired_server_cert(&self, dns_names: &[&str]) -> TestCert {
        let mut params = Self::leaf_params(
            dns_names.first().copied(),
            Self::dns_sans(dns_names),
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.issue(&params).expect("issue expired certificate")
    }

    /// Writes the CA certificate to `dir/<file_name>` (creating `dir`).
    pub fn write_cert(&self, dir: &Path, file_name: &str) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(file_name), &self.cert_pem)
    }
}

/// A leaf certificate, its private key, and the PEM of the CA that signed it.
#[derive(Clone)]
pub struct TestCert {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pkcs8: Vec<u8>,
    key_pem: String,
    ca_pem: String,
}

impl TestCert {
    /// A certificate that signed itself, for `dns_name`: as `openssl req -x509` makes one
    /// (`CA:TRUE`, no keyUsage) when `ca`, else a leaf whose keyUsage does not allow signing
    /// certificates (`CA:FALSE`, digitalSignature only).
    pub fn self_signed(dns_name: &str, ca: bool) -> TestCert {
        let mut params =
            CertificateParams::new(vec![dns_name.to_string()]).expect("self-signed params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns_name);
        params.distinguished_name = dn;
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        TestCert {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pkcs8: key.serialize_der(),
            key_pem: key.serialize_pem(),
            ca_pem: cert.pem(),
        }
    }
}

impl std::fmt::Debug for TestCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCert")
            .field("subject_cn", &subject_cn(&self.cert_der))
            .field("sans", &subject_alt_names(&self.cert_der))
            .finish()
    }
}

impl TestCert {
    /// The leaf certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The signing CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The leaf certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The chain to present: just the leaf (the CA is the trust anchor).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone()]
    }

    /// The private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// Subject CN, if any.
    pub fn subject_cn(&self) -> Option<String> {
        subject_cn(&self.cert_der)
    }

    /// Writes `cert`, `key` and (if named) the CA certificate into `dir` (creating it).
    pub fn write_files(
        &self,
        dir: &Path,
        cert_name: &str,
        key_name: &str,
        ca_name: Option<&str>,
    ) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(cert_name), &self.cert_pem)?;
        std::fs::write(dir.join(key_name), &self.key_pem)?;
        if let Some(ca_name) = ca_name {
            std::fs::write(dir.join(ca_name), &self.ca_pem)?;
        }
        Ok(())
    }

    /// The layout of a mounted Kubernetes TLS Secret (`credentialName`): `tls.crt`,
    /// `tls.key`, `ca.crt`.
    pub fn write_secret_dir(&self, dir: &Path) -> io::Result<()> {
        self.write_files(dir, "tls.crt", "tls.key", Some("ca.crt"))
    }

    /// The files Istio mounts for proxies: `cert-chain.pem`, `key.pem`, `root-cert.pem`.
    pub fn write_istio_dir(&self, dir: &Path) -> io::Result<()> {
        self.write_files(dir, "cert-chain.pem", "key.pem", Some("root-cert.pem"))
    }
}

/// Who must present a client certificate to a test TLS server.
#[derive(Clone, Debug, Default)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A certificate signed by this CA is required; the handshake fails without one.
    Required(CertificateDer<'static>),
    /// A certificate is asked for and verified against this CA if sent, but may be absent
    /// (like nginx's `ssl_verify_client optional`).
    Optional(CertificateDer<'static>),
}

/// A rustls server config presenting `cert`, with the given client auth and ALPN list.
pub fn server_config(
    cert: &TestCert,
    client_auth: &ClientAuth,
    alpn: &[&[u8]],
) -> io::Result<ServerConfig> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required(ca) | ClientAuth::Optional(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone()).map_err(tls_err)?;
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if matches!(client_auth, ClientAuth::Optional(_)) {
                v = v.allow_unauthenticated();
            }
            let verifier = v.build().map_err(|e| io::Error::other(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(cert.chain(), cert.key_der())
        .map_err(tls_err)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A rustls client config trusting `roots`, optionally presenting `client_cert`.
pub fn client_config(
    roots: RootCertStore,
    client_cert: Option<&TestCert>,
    alpn: &[&[u8]],
) -> io::Result<ClientConfig> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_webpki_verifier(verifier);
    let mut config = match client_cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain(), c.key_der())
            .map_err(tls_err)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

// ---- a tiny DER reader: enough to pull the subject CN and SANs out of a certificate ----

/// Reads one DER TLV: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if input.len() < end {
        return None;
    }
    Some((tag, &input[header..end], &input[end..]))
}

/// The fields of TBSCertificate after the serial: (subject, extensions contents).
fn tbs_parts(cert_der: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (_, cert, _) = tlv(cert_der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    let (_, _, r) = tlv(rest)?; // serial
    let (_, _, r) = tlv(r)?; // signature algorithm
    let (_, _, r) = tlv(r)?; // issuer
    let (_, _, r) = tlv(r)?; // validity
    let (_, subject, mut r) = tlv(r)?;
    let (_, _, after_spki) = tlv(r)?; // subjectPublicKeyInfo
    r = after_spki;
    let mut extensions = None;
    while !r.is_empty() {
        let (tag, contents, next) = tlv(r)?;
        if tag == 0xa3 {
            extensions = Some(tlv(contents)?.1);
        }
        r = next;
    }
    Some((subject, extensions))
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// The subject common name of a DER certificate, if it has one.
pub fn subject_cn(cert_der: &[u8]) -> Option<String> {
    let (subject, _) = tbs_parts(cert_der)?;
    let mut sets = subject;
    while !sets.is_empty() {
        let (_, set, next) = tlv(sets)?;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (_, atv, next_atv) = tlv(atvs)?;
            let (_, oid, value) = tlv(atv)?;
            if oid == OID_CN {
                let (_, text, _) = tlv(value)?;
                return Some(String::from_utf8_lossy(text).into_owned());
            }
            atvs = next_atv;
        }
        sets = next;
    }
    None
}

/// Subject alternative names of a certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sans {
    /// dNSName entries.
    pub dns: Vec<String>,
    /// uniformResourceIdentifier entries (SPIFFE ids).
    pub uri: Vec<String>,
    /// iPAddress entries.
    pub ip: Vec<std::net::IpAddr>,
}

/// The subjectAltName entries of a DER certificate (empty if it has none).
pub fn subject_alt_names(cert_der: &[u8]) -> Sans {
    let mut sans = Sans::default();
    let Some((_, Some(mut exts))) = tbs_parts(cert_der) else {
        return sans;
    };
    while let Some((_, ext, next)) = tlv(exts) {
        exts = next;
        let Some((_, oid, mut rest)) = tlv(ext) else {
            continue;
        };
        if oid != OID_SAN {
            continue;
        }
        // optional `critical BOOLEAN`, then OCTET STRING
        if let Some((0x01, _, r)) = tlv(rest) {
            rest = r;
        }
        let Some((_, octets, _)) = tlv(rest) else {
            continue;
        };
        let Some((_, mut names, _)) = tlv(octets) else {
            continue;
        };
        while let Some((tag, value, next_name)) = tlv(names) {
            names = next_name;
            match tag {
                0x82 => sans.dns.push(String::from_utf8_lossy(value).into_owned()),
                0x86 => sans.uri.push(String::from_utf8_lossy(value).into_owned()),
                0x87 => {
                    if let Ok(v4) = <[u8; 4]>::try_from(value) {
                        sans.ip.push(v4.into());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(value) {
                        sans.ip.push(v6.into());
                    }
                }
                _ => {}
            }
        }
    }
    sans
}
