//! Certificates verify (or fail to) with rustls the way the data path will see them.

use std::sync::Arc;

use egret_test_support::certs::{self, subject_alt_names, subject_cn};
use egret_test_support::{TestCa, TestDir};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, Error};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

fn verify_server(ca: &TestCa, cert: &CertificateDer<'_>, name: &str) -> Result<(), Error> {
    let v =
        WebPkiServerVerifier::builder_with_provider(Arc::new(ca.root_store()), certs::provider())
            .build()
            .unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn server_cert_verifies_for_its_names_only() {
    let ca = TestCa::new("Test CA");
    let cert = ca.server_cert(&["edition.cnn.com", "127.0.0.1"], Some("edition.cnn.com"));
    verify_server(&ca, &cert.cert_der(), "edition.cnn.com").unwrap();
    verify_server(&ca, &cert.cert_der(), "127.0.0.1").unwrap();
    let err = verify_server(&ca, &cert.cert_der(), "other.com").unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
                | Error::InvalidCertificate(CertificateError::NotValidForName)
        ),
        "{err:?}"
    );
    let other_ca = TestCa::new("Other");
    let err = verify_server(&other_ca, &cert.cert_der(), "edition.cnn.com").unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{err:?}"
    );
    assert_eq!(
        subject_cn(&cert.cert_der()).as_deref(),
        Some("edition.cnn.com")
    );
    let sans = subject_alt_names(&cert.cert_der());
    assert_eq!(sans.dns, vec!["edition.cnn.com"]);
    assert_eq!(sans.ip, vec![std::net::IpAddr::from([127, 0, 0, 1])]);
}

#[test]
fn cn_only_cert_has_no_san_and_fails_hostname_checks_but_chains() {
    let ca = TestCa::with_org("example Inc.", "example.com");
    let cert = ca.server_cert_cn_only("my-nginx.mesh-external.svc.cluster.local");
    assert_eq!(
        cert.subject_cn().as_deref(),
        Some("my-nginx.mesh-external.svc.cluster.local")
    );
    assert_eq!(subject_alt_names(&cert.cert_der()), certs::Sans::default());
    let err = verify_server(
        &ca,
        &cert.cert_der(),
        "my-nginx.mesh-external.svc.cluster.local",
    )
    .unwrap_err();
    // The chain is fine; only the name check fails (webpki ignores the CN).
    assert!(
        matches!(
            err,
            Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
                | Error::InvalidCertificate(CertificateError::NotValidForName)
        ),
        "{err:?}"
    );
    assert_eq!(subject_cn(&ca.cert_der()).as_deref(), Some("example.com"));
}

#[test]
fn expired_cert_is_rejected_as_expired() {
    let ca = TestCa::new("Test CA");
    let cert = ca.expired_server_cert(&["old.test"]);
    let err = verify_server(&ca, &cert.cert_der(), "old.test").unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidCertificate(CertificateError::Expired)
                | Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn client_cert_verifies_and_carries_spiffe_id() {
    let ca = TestCa::new("mesh root");
    let cert = ca.client_cert("sleep", Some("spiffe://cluster.local/ns/default/sa/sleep"));
    let v =
        WebPkiClientVerifier::builder_with_provider(Arc::new(ca.root_store()), certs::provider())
            .build()
            .unwrap();
    v.verify_client_cert(&cert.cert_der(), &[], UnixTime::now())
        .unwrap();
    assert_eq!(
        subject_alt_names(&cert.cert_der()).uri,
        vec!["spiffe://cluster.local/ns/default/sa/sleep"]
    );
    let w = ca.workload_cert(
        "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account",
    );
    v.verify_client_cert(&w.cert_der(), &[], UnixTime::now())
        .unwrap();
    assert_eq!(w.subject_cn(), None);
}

#[test]
fn writes_secret_and_istio_layouts() {
    let dir = TestDir::new("certs").unwrap();
    let ca = TestCa::new("ca");
    let client = ca.client_cert("client.example.com", None);
    client
        .write_secret_dir(&dir.join("credentials/client-credential"))
        .unwrap();
    client.write_istio_dir(&dir.join("istio")).unwrap();
    ca.write_cert(dir.path(), "ca-only.pem").unwrap();

    let base = dir.join("credentials/client-credential");
    let crt = CertificateDer::from_pem_file(base.join("tls.crt")).unwrap();
    assert_eq!(crt, client.cert_der());
    PrivateKeyDer::from_pem_file(base.join("tls.key")).unwrap();
    assert_eq!(
        CertificateDer::from_pem_file(base.join("ca.crt")).unwrap(),
        ca.cert_der()
    );
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        assert!(dir.join("istio").join(f).is_file(), "{f}");
    }
    assert_eq!(
        CertificateDer::from_pem_file(dir.join("ca-only.pem")).unwrap(),
        ca.cert_der()
    );
    let path = dir.path().to_path_buf();
    drop(dir);
    assert!(!path.exists());
}

#[test]
fn server_config_builds_with_each_client_auth() {
    let ca = TestCa::new("ca");
    let cert = ca.server_cert(&["a.test"], None);
    for auth in [
        certs::ClientAuth::None,
        certs::ClientAuth::Required(ca.cert_der()),
        certs::ClientAuth::Optional(ca.cert_der()),
    ] {
        let cfg = certs::server_config(&cert, &auth, certs::ALPN_H2_HTTP1).unwrap();
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
