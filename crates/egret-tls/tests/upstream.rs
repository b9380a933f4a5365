//! TLS origination against real TLS servers on loopback.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{read_hello, tls_server, v1_server_config, Scratch, V1Cert};
use egret_core::{CertSource, TlsMode, UpstreamTls};
use egret_test_support::certs::{server_config, ClientAuth, TestCa};
use egret_tls::{
    connect_tls, io_transport_failure_reason, SystemRoots, TlsConnectError, UpstreamTlsContexts,
    UpstreamTlsOptions, VerifyFailureKind, ALPN_H2_HTTP1, ALPN_HTTP1,
};
use rustls::client::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HS: Duration = Duration::from_secs(10);

fn spec(mode: TlsMode, sni: &str, source: CertSource) -> UpstreamTls {
    UpstreamTls {
        mode,
        sni: sni.to_string(),
        // As when the DestinationRule leaves `sni` unset: the name is checked against it.
        auto_sni: true,
        subject_alt_names: Vec::new(),
        source,
        insecure_skip_verify: false,
        origin: "DestinationRule default/test".to_string(),
    }
}

fn ca_file(path: PathBuf) -> CertSource {
    CertSource {
        ca_certificates: Some(path),
        ..Default::default()
    }
}

fn contexts(opts: UpstreamTlsOptions) -> UpstreamTlsContexts {
    UpstreamTlsContexts::new(UpstreamTlsOptions {
        recheck_interval: Duration::ZERO,
        ..opts
    })
}

async fn dial(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    sni: &str,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>), TlsConnectError> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    connect_tls(tcp, config, sni, HS).await
}

fn reason(e: &TlsConnectError) -> String {
    e.transport_failure_reason().unwrap_or_else(|| "-".into())
}

#[tokio::test]
async fn simple_with_private_ca_file_and_alpn() {
    let ca = TestCa::new("private-ca");
    let cert = ca.server_cert(&["upstream.example.com"], None);
    let (addr, mut seen) =
        tls_server(server_config(&cert, &ClientAuth::None, ALPN_H2_HTTP1).expect("cfg")).await;
    let dir = Scratch::new("simple");
    let ca_path = dir.write("ca.pem", ca.cert_pem());
    let ctxs = contexts(UpstreamTlsOptions::default());
    let s = spec(TlsMode::Simple, "upstream.example.com", ca_file(ca_path));

    let ctx = ctxs.context(&s, ALPN_H2_HTTP1);
    let (mut stream, alpn) = dial(addr, ctx.client_config().expect("config"), ctx.sni())
        .await
        .expect("handshake");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    read_hello(&mut stream).await.expect("hello");
    let seen1 = seen.recv().await.expect("seen").expect("server ok");
    assert_eq!(seen1.sni.as_deref(), Some("upstream.example.com"));

    // Same settings, same context; another ALPN list, another context.
    assert!(Arc::ptr_eq(&ctx, &ctxs.context(&s, ALPN_H2_HTTP1)));
    let h1 = ctxs.context(&s, ALPN_HTTP1);
    let (_, alpn) = dial(addr, h1.client_config().expect("config"), h1.sni())
        .await
        .expect("handshake");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn simple_with_system_roots_from_paths() {
    let ca = TestCa::new("lab-ca");
    let cert = ca.server_cert(&["upstream.example.com"], None);
    let (addr, _seen) =
        tls_server(server_config(&cert, &ClientAuth::None, ALPN_H2_HTTP1).expect("cfg")).await;
    let dir = Scratch::new("sysroots");
    let bundle = dir.write("bundle.pem", ca.cert_pem());
    let ctxs = contexts(UpstreamTlsOptions {
        system_roots: SystemRoots::Paths {
            file: Some(bundle),
            dir: None,
        },
        ..Default::default()
    });
    let s = spec(
        TlsMode::Simple,
        "upstream.example.com",
        CertSource::default(),
    );
    let cfg = ctxs.client_config(&s).expect("config");
    dial(addr, cfg, "upstream.example.com")
        .await
        .expect("verified by the system store");

    // A store without that CA refuses it.
    let other = TestCa::new("other-ca");
    let bundle2 = dir.write("other.pem", other.cert_pem());
    let ctxs2 = contexts(UpstreamTlsOptions {
        system_roots: SystemRoots::Paths {
            file: Some(bundle2),
            dir: None,
        },
        ..Default::default()
    });
    let err = dial(
        addr,
        ctxs2.client_config(&s).expect("config"),
        "upstream.example.com",
    )
    .await
    .expect_err("refused");
    assert_eq!(
        err.verify_failure().map(|f| f.kind),
        Some(VerifyFailureKind::UnknownIssuer)
    );

    // An empty store is a setup error, not a panic.
    let empty = dir.write("empty.pem", "");
    let ctxs3 = contexts(UpstreamTlsOptions {
        system_roots: SystemRoots::Paths {
            file: Some(empty),
            dir: None,
        },
        ..Default::default()
    });
    let e = ctxs3.client_config(&s).expect_err("no roots");
    assert!(
        e.to_string()
            .starts_with("system trust store: no usable CA certificate"),
        "{e}"
    );
}

#[tokio::test]
async fn unknown_ca_is_refused_with_envoy_text() {
    let ca = TestCa::new("trusted");
    let rogue = TestCa::new("rogue");
    let cert = rogue.server_cert(&["upstream.example.com"], None);
    let (addr, _seen) =
        tls_server(server_config(&cert, &ClientAuth::None, ALPN_H2_HTTP1).expect("cfg")).await;
    let dir = Scratch::new("unknownca");
    let ctxs = contexts(UpstreamTlsOptions::default());
    let s = spec(
        TlsMode::Simple,
        "upstream.example.com",
        ca_file(dir.write("ca.pem", ca.cert_pem())),
    );
    let err = dial(
        addr,
        ctxs.client_config(&s).expect("config"),
        "upstream.example.com",
    )
    .await
    .expect_err("refused");
    assert_eq!(err.reset_reason(), "remote connection failure");
    assert_eq!(
        reason(&err),
        "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:_X509_verify_cert:_certificate_verification_error_at_depth_0:_unable_to_get_local_issuer_certificate:TLS_error_end"
    );
}

#[tokio::test]
async fn expired_is_refused_with_envoy_text() {
    let ca = TestCa::new("trusted");
    let cert = ca.expired_server_cert(&["upstream.example.com"]);
    let (addr, _seen) =
        tls_server(server_config(&cert, &ClientAuth::None, ALPN_H2_HTTP1).expect("cfg")).await;
    let dir = Scratch::new("expired");
    let ctxs = contexts(UpstreamTlsOptions::default());
    let s = spec(
        TlsMode::Simple,
        "upstream.example.com",
        ca_file(dir.write("ca.pem", ca.cert_pem())),
    );
    let err = dial(
        addr,
        ctxs.client_config(&s).expect("config"),
        "upstream.example.com",
    )
    .await
    .expect_err("refused");
    assert_eq!(
        reason(&err),
        "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:_X509_verify_cert:_certificate_verification_error_at_depth_0:_certificate_has_expired:TLS_error_end"
    );
}

/// A DestinationRule that sets `sni` but no `subjectAltNames`: Istio configures Envoy with
/// neither auto SAN validation nor a SAN matcher, so only the chain is checked (Envoy 1.40
/// answers 200 for a certificate of another name); without `sni` the name must match.
#[tokio::test]
async fn explicit_sni_without_subject_alt_names_checks_the_chain_only() {
    let ca = TestCa::with_org("example Inc.", "example.com");
    let cert = ca.server_cert(&["other.example.com"], None);
    let (addr, _seen) =
        tls_server(server_config(&cert, &ClientAuth::None, ALPN_H2_HTTP1).expect("cfg")).await;
    let dir = Scratch::new("explicit-sni");
    let ca_path = dir.write("ca.pem", ca.cert_pem());
    let ctxs = contexts(UpstreamTlsOptions::default());
    let mut explicit = spec(TlsMode::Simple, "upstream.example.com", ca_file(ca_path));
    explicit.auto_sni = false;
    dial(
        addr,
        ctxs.client_config(&explicit).expect("config"),
        &explicit.sni,
    )
    .await
    .expect("the chain is enough");
    let auto = UpstreamTls {
        auto_sni: true,
        ..explicit
    };
    let err = dial(addr, ctxs.client_config(&auto).expect("config"), &auto.sni)
        .await
        .expect_err("the name is checked");
    assert!(reason(&err).contains("verify_SAN_list"), "{}", reason(&err));
}

/// A certificate without a SAN extension has no name to match: refused whenever the name is
/// checked, as Envoy 1.40 refuses it (it never falls back to the subject CN); accepted when
/// only the chain is (`sni` set, no `subjectAltNames`, as the document's S4 rule).
#[tokio::test]
async fn cn_only_certificate_passes_only_a_chain_check() {
    let ca = TestCa::with_org("example Inc.", "example.com");
    let cert = ca.server_cert_cn_only("my-nginx.mesh-external.svc.cluster.local");
    let (addr, _seen) =
        tls_server(server_config(&cert, &ClientAuth::None, ALPN_H2_HTTP1).expect("cfg")).await;
    let dir = Scratch::new("cnonly");
    let ca_path = dir.write("ca.pem", ca.cert_pem());
    let ctxs = contexts(UpstreamTlsOptions::default());

    let chain_only = UpstreamTls {
        auto_sni: false,
        ..spec(
            TlsMode::Simple,
            "my-nginx.mesh-external.svc.cluster.local",
            ca_file(ca_path.clone()),
        )
    };
    dial(
        addr,
        ctxs.client_config(&chain_only).expect("config"),
        &chain_only.sni,
    )
    .await
    .expect("the chain is enough");

    for (name, bad) in [
        (
            "my-nginx.mesh-external.svc.cluster.local",
            spec(
                TlsMode::Simple,
                "my-nginx.mesh-external.svc.cluster.local",
                ca_file(ca_path.clone()),
            ),
        ),
        (
            "other.mesh-external.svc.cluster.local",
            spec(
                TlsMode::Simple,
                "other.mesh-external.svc.cluster.local",
                ca_file(ca_path.clone()),
            ),
        ),
    ] {
        let err = dial(addr, ctxs.client_config(&bad).expect("config"), &bad.sni)
            .await
            .expect_err("no SAN to match");
        assert_eq!(
            reason(&err),
            format!("TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:_verify_SAN_list,_expected_SANs:_[{name}],_certificate_SANs:_[]:TLS_error_end")
        );
    }
}

/// Self-signed upstream certificates are described as BoringSSL's `X509_verify_cert` does
/// (checked with Envoy 1.40): one made by `openssl req -x509` (`CA:TRUE`) is `self signed
/// certificate`; a leaf that names itself as issuer but may not sign certificates (keyUsage
/// without keyCertSign) is not self-signed to it: `unable to get local issuer certificate`.
#[tokio::test]
async fn self_signed_certificates_are_described_as_boringssl_does() {
    let ctxs = contexts(UpstreamTlsOptions::default());
    let other = TestCa::new("some other CA");
    let dir = Scratch::new("selfsigned");
    let ca_path = dir.write("ca.pem", other.cert_pem());
    for (ca, text) in [
        (true, "self_signed_certificate"),
        (false, "unable_to_get_local_issuer_certificate"),
    ] {
        let cert = egret_test_support::TestCert::self_signed("edition.cnn.com", ca);
        let (addr, _seen) =
            tls_server(server_config(&cert, &ClientAuth::None, ALPN_H2_HTTP1).expect("cfg")).await;
        let s = spec(TlsMode::Simple, "edition.cnn.com", ca_file(ca_path.clone()));
        let err = dial(addr, ctxs.client_config(&s).expect("config"), &s.sni)
            .await
            .expect_err("not trusted");
        assert_eq!(
            reason(&err),
            format!("TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:_X509_verify_cert:_certificate_verification_error_at_depth_0:_{text}:TLS_error_end"),
            "CA:{ca}"
        );
    }
}

/// The user's openssl commands (OpenSSL 3.0 `x509 -req`) make X.509 v1 certificates, which
/// webpki cannot parse at all.
#[tokio::test]
async fn v1_openssl_style_certificates_work_both_ways() {
    let ca = TestCa::with_org("example Inc.", "example.com");
    let server = V1Cert::new(&ca, "my-nginx.mesh-external.svc.cluster.local");
    let client = V1Cert::new(&ca, "client.example.com");
    let mut cfg = v1_server_config(&server);
    // The server requires a client certificate from the CA (webpki on the server side would
    // refuse a v1 client certificate, so accept any and check it ourselves below).
    cfg = {
        let roots = Arc::new(ca.root_store());
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots,
            egret_test_support::certs::provider(),
        )
        .allow_unauthenticated()
        .build()
        .expect("verifier");
        let mut c =
            rustls::ServerConfig::builder_with_provider(egret_test_support::certs::provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_client_cert_verifier(Arc::new(AcceptAnyClientCert(v)))
                .with_cert_resolver(cfg.cert_resolver.clone());
        c.alpn_protocols = cfg.alpn_protocols.clone();
        c
    };
    let (addr, mut seen) = tls_server(cfg).await;
    let dir = Scratch::new("v1");
    client.write_secret_dir(&dir.path().join("client-credential"));
    let ctxs = contexts(UpstreamTlsOptions {
        credentials_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    });
    // As the document's rule: `sni` set, so the chain alone is checked (a v1 certificate has
    // no SAN to match a name against).
    let s = UpstreamTls {
        auto_sni: false,
        ..spec(
            TlsMode::Mutual,
            "my-nginx.mesh-external.svc.cluster.local",
            CertSource {
                credential_name: Some("client-credential".into()),
                ..Default::default()
            },
        )
    };
    let (mut stream, _) = dial(addr, ctxs.client_config(&s).expect("config"), &s.sni)
        .await
        .expect("v1 accepted");
    read_hello(&mut stream).await.expect("hello");
    let got = seen.recv().await.expect("seen").expect("server ok");
    assert_eq!(
        got.client_cert.as_ref(),
        Some(&client.der),
        "the v1 client certificate was presented"
    );

    // A checked name (no SAN to match it), and a v1 certificate from another CA, are refused.
    let mut wrong = s.clone();
    wrong.auto_sni = true;
    let err = dial(
        addr,
        ctxs.client_config(&wrong).expect("config"),
        &wrong.sni,
    )
    .await
    .expect_err("wrong name");
    assert_eq!(
        err.verify_failure().map(|f| f.kind),
        Some(VerifyFailureKind::NameMismatch)
    );

    let rogue = TestCa::new("rogue");
    let rogue_server = V1Cert::new(&rogue, "my-nginx.mesh-external.svc.cluster.local");
    let (addr3, _s3) = tls_server(v1_server_config(&rogue_server)).await;
    let err = dial(addr3, ctxs.client_config(&s).expect("config"), &s.sni)
        .await
        .expect_err("unknown CA");
    assert_eq!(
        reason(&err),
        "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:_X509_verify_cert:_certificate_verification_error_at_depth_0:_unable_to_get_local_issuer_certificate:TLS_error_end"
    );
}

/// Asks for a client certificate and accepts whatever is sent (the test inspects it).
#[derive(Debug)]
struct AcceptAnyClientCert(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for AcceptAnyClientCert {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[tokio::test]
async fn subject_alt_names_override_the_sni() {
    let ca = TestCa::new("trusted");
    let mut params =
        rcgen::CertificateParams::new(vec!["a.example.com".to_string()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://cluster.local/ns/x/sa/y"
            .to_string()
            .try_into()
            .expect("uri"),
    ));
    let cert = ca.issue(&params).expect("issue");
    let (addr, _seen) =
        tls_server(server_config(&cert, &ClientAuth::None, ALPN_H2_HTTP1).expect("cfg")).await;
    let dir = Scratch::new("sans");
    let ca_path = dir.write("ca.pem", ca.cert_pem());
    let ctxs = contexts(UpstreamTlsOptions::default());

    // SNI does not match the certificate, but a listed SAN does.
    let mut s = spec(TlsMode::Simple, "front.example.com", ca_file(ca_path));
    s.subject_alt_names = vec!["spiffe://cluster.local/ns/x/sa/y".into()];
    dial(addr, ctxs.client_config(&s).expect("config"), &s.sni)
        .await
        .expect("URI SAN matched");

    s.subject_alt_names = vec!["A.EXAMPLE.COM".into()];
    dial(addr, ctxs.client_config(&s).expect("config"), &s.sni)
        .await
        .expect("DNS SAN matched");

    s.subject_alt_names = vec!["nope.example.com".into()];
    let err = dial(addr, ctxs.client_config(&s).expect("config"), &s.sni)
        .await
        .expect_err("no listed SAN");
    assert_eq!(
        reason(&err),
        "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:_SAN_matcher,_certificate_SANs_are_[a.example.com,_spiffe://cluster.local/ns/x/sa/y]:TLS_error_end"
    );

    // Without subjectAltNames the SNI itself must match.
    s.subject_alt_names.clear();
    let err = dial(addr, ctxs.client_config(&s).expect("config"), &s.sni)
        .await
        .expect_err("SNI mismatch");
    assert_eq!(
        err.verify_failure().map(|f| f.kind),
        Some(VerifyFailureKind::NameMismatch)
    );
}

#[tokio::test]
async fn insecure_skip_verify_accepts_anything() {
    let rogue = TestCa::new("rogue");
    let cert = rogue.expired_server_cert(&["whatever.example.com"]);
    let (addr, _seen) =
        tls_server(server_config(&cert, &ClientAuth::None, ALPN_H2_HTTP1).expect("cfg")).await;
    let ctxs = contexts(UpstreamTlsOptions::default());
    let mut s = spec(
        TlsMode::Simple,
        "upstream.example.com",
        CertSource::default(),
    );
    s.insecure_skip_verify = true;
    let (mut stream, _) = dial(addr, ctxs.client_config(&s).expect("config"), &s.sni)
        .await
        .expect("not verified");
    read_hello(&mut stream).await.expect("hello");
}

fn mtls_server_cfg(ca: &TestCa) -> rustls::ServerConfig {
    let cert = ca.server_cert(&["my-nginx.mesh-external.svc.cluster.local"], None);
    server_config(&cert, &ClientAuth::Required(ca.cert_der()), ALPN_H2_HTTP1).expect("cfg")
}

#[tokio::test]
async fn mutual_with_files_and_failures_without_or_with_a_bad_cert() {
    let ca = TestCa::with_org("example Inc.", "example.com");
    let (addr, mut seen) = tls_server(mtls_server_cfg(&ca)).await;
    let dir = Scratch::new("mutual");
    let client = ca.client_cert("client.example.com", None);
    client
        .write_files(dir.path(), "client.pem", "client.key", Some("ca.pem"))
        .expect("write");
    let sni = "my-nginx.mesh-external.svc.cluster.local";
    let files = CertSource {
        certificate: Some(dir.path().join("client.pem")),
        private_key: Some(dir.path().join("client.key")),
        ca_certificates: Some(dir.path().join("ca.pem")),
        credential_name: None,
    };
    // TLS 1.2 only, as Envoy's client default: the refusal happens inside the handshake.
    let tls12 = contexts(UpstreamTlsOptions {
        enable_tls13: false,
        ..Default::default()
    });
    let tls13 = contexts(UpstreamTlsOptions::default());

    let m = spec(TlsMode::Mutual, sni, files.clone());
    let (mut stream, _) = dial(addr, tls13.client_config(&m).expect("config"), sni)
        .await
        .expect("mtls");
    read_hello(&mut stream).await.expect("hello");
    let got = seen.recv().await.expect("seen").expect("server ok");
    assert_eq!(got.client_cert, Some(client.cert_der()));

    // No client certificate (SIMPLE toward a server that requires one).
    let simple = spec(TlsMode::Simple, sni, ca_file(dir.path().join("ca.pem")));
    let err = dial(addr, tls12.client_config(&simple).expect("config"), sni)
        .await
        .expect_err("cert required");
    assert_eq!(err.reset_reason(), "remote connection failure");
    assert_eq!(
        reason(&err),
        "TLS_error:|268436572:SSL_routines:OPENSSL_internal:TLSV1_ALERT_CERTIFICATE_REQUIRED:TLS_error_end"
    );
    // With TLS 1.3 the client's handshake completes; the alert arrives on the first read.
    let (mut stream, _) = dial(addr, tls13.client_config(&simple).expect("config"), sni)
        .await
        .expect("client side done");
    let mut buf = [0u8; 16];
    let read_err = stream.read(&mut buf).await.expect_err("alert");
    assert_eq!(
        io_transport_failure_reason(&read_err).as_deref(),
        Some("TLS_error:|268436572:SSL_routines:OPENSSL_internal:TLSV1_ALERT_CERTIFICATE_REQUIRED:TLS_error_end")
    );

    // A client certificate from a CA the server does not trust.
    let rogue = TestCa::new("rogue");
    let bad_dir = Scratch::new("mutual-bad");
    rogue
        .client_cert("client.example.com", None)
        .write_files(bad_dir.path(), "c.pem", "c.key", None)
        .expect("write");
    let bad = spec(
        TlsMode::Mutual,
        sni,
        CertSource {
            certificate: Some(bad_dir.path().join("c.pem")),
            private_key: Some(bad_dir.path().join("c.key")),
            ..files.clone()
        },
    );
    let err = dial(addr, tls12.client_config(&bad).expect("config"), sni)
        .await
        .expect_err("untrusted client cert");
    assert_eq!(
        reason(&err),
        "TLS_error:|268436504:SSL_routines:OPENSSL_internal:TLSV1_ALERT_UNKNOWN_CA:TLS_error_end"
    );
}

#[tokio::test]
async fn credential_name_layouts_and_missing_files() {
    let ca = TestCa::with_org("example Inc.", "example.com");
    let (addr, mut seen) = tls_server(mtls_server_cfg(&ca)).await;
    let creds = Scratch::new("creds");
    let client = ca.client_cert("client.example.com", None);
    // tls.crt/tls.key in the Secret, ca.crt in the separate `<name>-cacert` Secret.
    client
        .write_files(
            &creds.path().join("client-credential"),
            "tls.crt",
            "tls.key",
            None,
        )
        .expect("write");
    creds.write("client-credential-cacert/ca.crt", ca.cert_pem());
    let ctxs = contexts(UpstreamTlsOptions {
        credentials_dir: Some(creds.path().to_path_buf()),
        ..Default::default()
    });
    let sni = "my-nginx.mesh-external.svc.cluster.local";
    let s = spec(
        TlsMode::Mutual,
        sni,
        CertSource {
            credential_name: Some("client-credential".into()),
            ..Default::default()
        },
    );
    let (mut stream, _) = dial(addr, ctxs.client_config(&s).expect("config"), sni)
        .await
        .expect("mtls");
    read_hello(&mut stream).await.expect("hello");
    assert_eq!(
        seen.recv().await.expect("seen").expect("ok").client_cert,
        Some(client.cert_der())
    );

    // A Secret without its key: an error naming the file, for the routes that need it.
    let missing = spec(
        TlsMode::Mutual,
        sni,
        CertSource {
            credential_name: Some("half-credential".into()),
            ..Default::default()
        },
    );
    creds.write("half-credential/tls.crt", client.cert_pem());
    let e = ctxs.client_config(&missing).expect_err("missing key");
    assert_eq!(
        e.to_string(),
        format!(
            "credential half-credential: missing {}",
            creds.path().join("half-credential/tls.key").display()
        )
    );

    // A broken key file.
    creds.write("half-credential/tls.key", "not a key");
    let e = ctxs.client_config(&missing).expect_err("broken key");
    assert!(
        e.to_string()
            .contains("half-credential/tls.key: no usable PEM private key"),
        "{e}"
    );

    // A key that belongs to another certificate.
    creds.write(
        "half-credential/tls.key",
        ca.client_cert("x", None).key_pem(),
    );
    let e = ctxs.client_config(&missing).expect_err("mismatch");
    assert!(
        e.to_string()
            .contains("private key does not match the certificate"),
        "{e}"
    );

    // Without --credentials-dir.
    let none = contexts(UpstreamTlsOptions::default());
    let e = none.client_config(&s).expect_err("no dir");
    assert_eq!(
        e.to_string(),
        "credential client-credential: --credentials-dir is not set"
    );

    // SIMPLE with credentialName uses the Secret's CA and needs it.
    let simple = spec(
        TlsMode::Simple,
        sni,
        CertSource {
            credential_name: Some("no-ca".into()),
            ..Default::default()
        },
    );
    let e = ctxs.client_config(&simple).expect_err("no CA");
    assert_eq!(
        e.to_string(),
        format!(
            "credential no-ca: missing {}",
            creds.path().join("no-ca/ca.crt").display()
        )
    );
}

#[cfg(unix)]
#[tokio::test]
async fn rotation_by_kubernetes_symlink_swap() {
    use std::os::unix::fs::symlink;

    let ca = TestCa::with_org("example Inc.", "example.com");
    let (addr, mut seen) = tls_server(mtls_server_cfg(&ca)).await;
    let creds = Scratch::new("rotate");
    let secret = creds.path().join("client-credential");
    let first = ca.client_cert("client-1.example.com", None);
    let second = ca.client_cert("client-2.example.com", None);
    first
        .write_secret_dir(&secret.join("..2024_01_01"))
        .expect("write");
    symlink("..2024_01_01", secret.join("..data")).expect("symlink");
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        symlink(format!("..data/{f}"), secret.join(f)).expect("symlink");
    }
    let ctxs = contexts(UpstreamTlsOptions {
        credentials_dir: Some(creds.path().to_path_buf()),
        ..Default::default()
    });
    let sni = "my-nginx.mesh-external.svc.cluster.local";
    let s = spec(
        TlsMode::Mutual,
        sni,
        CertSource {
            credential_name: Some("client-credential".into()),
            ..Default::default()
        },
    );
    let ctx = ctxs.context(&s, ALPN_H2_HTTP1);
    let (mut old_stream, _) = dial(addr, ctx.client_config().expect("config"), sni)
        .await
        .expect("first");
    read_hello(&mut old_stream).await.expect("hello");
    assert_eq!(
        seen.recv().await.expect("seen").expect("ok").client_cert,
        Some(first.cert_der())
    );

    // Kubernetes' update: a new timestamped folder, then an atomic rename of `..data`.
    second
        .write_secret_dir(&secret.join("..2024_02_01"))
        .expect("write");
    symlink("..2024_02_01", secret.join("..data_tmp")).expect("symlink");
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).expect("swap");
    std::fs::remove_dir_all(secret.join("..2024_01_01")).expect("remove old");

    let (mut new_stream, _) = dial(addr, ctx.client_config().expect("config"), sni)
        .await
        .expect("second");
    read_hello(&mut new_stream).await.expect("hello");
    assert_eq!(
        seen.recv().await.expect("seen").expect("ok").client_cert,
        Some(second.cert_der())
    );

    // The connection opened before the swap still works.
    old_stream.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    old_stream.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping");

    // A rotation caught half-way (key of another cert) keeps the previous material.
    std::fs::write(secret.join("..2024_02_01/tls.key"), first.key_pem()).expect("write");
    let (mut s3, _) = dial(addr, ctx.client_config().expect("previous kept"), sni)
        .await
        .expect("third");
    read_hello(&mut s3).await.expect("hello");
    assert_eq!(
        seen.recv().await.expect("seen").expect("ok").client_cert,
        Some(second.cert_der())
    );
}

#[tokio::test]
async fn session_resumption_skips_the_full_handshake() {
    let ca = TestCa::new("trusted");
    let cert = ca.server_cert(&["upstream.example.com"], None);
    let (addr, _seen) =
        tls_server(server_config(&cert, &ClientAuth::None, ALPN_H2_HTTP1).expect("cfg")).await;
    let dir = Scratch::new("resume");
    let ctxs = contexts(UpstreamTlsOptions::default());
    let s = spec(
        TlsMode::Simple,
        "upstream.example.com",
        ca_file(dir.write("ca.pem", ca.cert_pem())),
    );
    for tls13 in [true, false] {
        let ctxs = if tls13 {
            &ctxs
        } else {
            &contexts(UpstreamTlsOptions {
                enable_tls13: false,
                ..Default::default()
            })
        };
        let cfg = ctxs.client_config(&s).expect("config");
        let (mut first, _) = dial(addr, cfg.clone(), &s.sni).await.expect("first");
        // Reading processes the session tickets sent after the handshake.
        read_hello(&mut first).await.expect("hello");
        assert_eq!(
            first.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        drop(first);
        let (mut second, _) = dial(addr, ctxs.client_config(&s).expect("config"), &s.sni)
            .await
            .expect("second");
        read_hello(&mut second).await.expect("hello");
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "tls13={tls13}"
        );
    }
}

#[tokio::test]
async fn istio_mutual_uses_mesh_certificates() {
    let mesh = TestCa::new("mesh-root");
    let gw = mesh.workload_cert("spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway");
    let cfg =
        server_config(&gw, &ClientAuth::Required(mesh.cert_der()), ALPN_H2_HTTP1).expect("cfg");
    let (addr, mut seen) = tls_server(cfg).await;
    let dir = Scratch::new("mesh");
    let me = mesh.workload_cert("spiffe://cluster.local/ns/default/sa/sleep");
    me.write_istio_dir(dir.path()).expect("write");
    let ctxs = contexts(UpstreamTlsOptions {
        mesh_certs_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    });
    let sni = "outbound_.443_.nginx_.istio-egressgateway.istio-system.svc.cluster.local";
    let mut s = spec(TlsMode::IstioMutual, sni, CertSource::default());
    dial(addr, ctxs.client_config(&s).expect("config"), sni)
        .await
        .expect("mesh mtls");
    assert_eq!(
        seen.recv().await.expect("seen").expect("ok").client_cert,
        Some(me.cert_der())
    );

    s.subject_alt_names =
        vec!["spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway".into()];
    dial(addr, ctxs.client_config(&s).expect("config"), sni)
        .await
        .expect("SAN matched");
    s.subject_alt_names = vec!["spiffe://cluster.local/ns/other/sa/x".into()];
    dial(addr, ctxs.client_config(&s).expect("config"), sni)
        .await
        .expect_err("SAN mismatch");

    let e = contexts(UpstreamTlsOptions::default())
        .client_config(&s)
        .expect_err("no mesh dir");
    assert_eq!(e.to_string(), "mesh certificates: --mesh-certs is not set");
}

#[tokio::test]
async fn non_tls_server_and_reset_are_explained() {
    // A plain HTTP server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let ctxs = contexts(UpstreamTlsOptions::default());
    let mut s = spec(
        TlsMode::Simple,
        "upstream.example.com",
        CertSource::default(),
    );
    s.insecure_skip_verify = true;
    let err = dial(addr, ctxs.client_config(&s).expect("config"), &s.sni)
        .await
        .expect_err("not TLS");
    assert_eq!(
        reason(&err),
        "TLS_error:|268435703:SSL_routines:OPENSSL_internal:WRONG_VERSION_NUMBER:TLS_error_end"
    );
    assert_eq!(err.reset_reason(), "remote connection failure");
}

#[tokio::test(start_paused = true)]
async fn handshake_timeout() {
    // A listener that never accepts: the kernel completes TCP, nobody speaks TLS.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ctxs = contexts(UpstreamTlsOptions::default());
    let mut s = spec(
        TlsMode::Simple,
        "upstream.example.com",
        CertSource::default(),
    );
    s.insecure_skip_verify = true;
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let err = connect_tls(
        tcp,
        ctxs.client_config(&s).expect("config"),
        &s.sni,
        Duration::from_secs(5),
    )
    .await
    .expect_err("timeout");
    assert!(matches!(err, TlsConnectError::Timeout));
    assert_eq!(err.reset_reason(), "connection timeout");
    assert_eq!(err.transport_failure_reason(), None);
    drop(listener);
}
