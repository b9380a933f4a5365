//! TLS settings as compiled from Istio resources. Only descriptions (file paths, names,
//! modes): the TLS crate turns them into rustls configurations and watches the files.

use std::path::PathBuf;

/// Istio `ClientTLSSettings.mode` / `ServerTLSSettings.mode` values Egret acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// One-way TLS: verify the peer (upstream) or present a certificate (downstream).
    Simple,
    /// Mutual TLS with user-provided certificates.
    Mutual,
    /// Mutual TLS with the mesh's certificates (`--mesh-certs`).
    IstioMutual,
}

/// Where certificate material comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct CertSource {
    /// `credentialName`: a folder `<credentials-dir>/<name>/` with `tls.crt`, `tls.key`,
    /// `ca.crt` (a mounted Kubernetes Secret); `ca.crt` may instead live in
    /// `<credentials-dir>/<name>-cacert/`.
    pub credential_name: Option<String>,
    /// Explicit files (`clientCertificate`/`serverCertificate`, `privateKey`, `caCertificates`).
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub ca_certificates: Option<PathBuf>,
}

/// How Egret originates TLS toward an upstream (DestinationRule `trafficPolicy.tls`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub mode: TlsMode,
    /// SNI to send; Istio's default is the destination host.
    pub sni: String,
    /// The DestinationRule left `sni` unset (Istio's `auto_sni`): with no `subjectAltNames`,
    /// the certificate must then carry the SNI name (`auto_san_validation`). With `sni` set
    /// and no `subjectAltNames`, Istio has Envoy check the chain only.
    pub auto_sni: bool,
    /// `subjectAltNames`: when non-empty, the certificate must carry one of these instead of
    /// the SNI name.
    pub subject_alt_names: Vec<String>,
    pub source: CertSource,
    /// `insecureSkipVerify`: chain and name are not checked.
    pub insecure_skip_verify: bool,
    /// Where this came from, for error messages: `DestinationRule ns/name`.
    pub origin: String,
}

/// How a Gateway server terminates TLS from downstream (`servers[].tls`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DownstreamTls {
    pub mode: TlsMode,
    pub source: CertSource,
    /// `subjectAltNames` a client certificate must carry (MUTUAL), empty = any from the CA.
    pub subject_alt_names: Vec<String>,
    /// Where this came from, for error messages: `Gateway ns/name servers[i]`.
    pub origin: String,
}

/// One terminated-TLS server on a listener: which SNI names it answers and with what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsServer {
    /// Server hosts (SNI patterns); `*` catches clients without SNI too.
    pub hosts: Vec<crate::HostPattern>,
    pub tls: DownstreamTls,
}
