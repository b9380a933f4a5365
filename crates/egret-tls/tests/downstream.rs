//! TLS termination for Gateway servers, with real clients on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Scratch, V1Cert};
use egret_core::{CertSource, DownstreamTls, HostPattern, TlsMode, TlsServer};
use egret_test_support::certs::{client_config, TestCa, TestCert};
use egret_tls::{
    AcceptError, Accepted, DownstreamTlsAcceptor, DownstreamTlsOptions, ALPN_H2_HTTP1,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn server(hosts: &[&str], mode: TlsMode, source: CertSource, sans: &[&str]) -> TlsServer {
    TlsServer {
        hosts: hosts.iter().map(|h| HostPattern::parse(h)).collect(),
        tls: DownstreamTls {
            mode,
            source,
            subject_alt_names: sans.iter().map(|s| s.to_string()).collect(),
            origin: format!("Gateway istio-system/gw servers[{}]", hosts.join(",")),
        },
    }
}

fn credential(name: &str) -> CertSource {
    CertSource {
        credential_name: Some(name.to_string()),
        ..Default::default()
    }
}

struct Outcome {
    server: Result<Accepted<TcpStream>, AcceptError>,
    client: std::io::Result<(Option<CertificateDer<'static>>, Option<Vec<u8>>)>,
}

/// One connection: the acceptor on one side, a rustls client (optionally with a certificate)
/// on the other. The client writes `ping` and reads the server's `pong`, so a refusal that
/// TLS 1.3 delivers after the client's handshake is seen by the client too.
async fn connect(
    acceptor: &DownstreamTlsAcceptor,
    roots: RootCertStore,
    client_cert: Option<&TestCert>,
    server_name: &str,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let config = Arc::new(client_config(roots, client_cert, ALPN_H2_HTTP1).expect("client config"));
    let name = ServerName::try_from(server_name.to_string()).expect("name");
    let client = async move {
        let tcp = TcpStream::connect(addr).await?;
        let mut s = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        let (_, conn) = s.get_ref();
        Ok((
            conn.peer_certificates().and_then(|c| c.first().cloned()),
            conn.alpn_protocol().map(<[u8]>::to_vec),
        ))
    };
    let server = async {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut acc = acceptor.accept(tcp).await?;
        let mut buf = [0u8; 4];
        if acc.stream.read_exact(&mut buf).await.is_ok() {
            let _ = acc.stream.write_all(b"pong").await;
            let _ = acc.stream.flush().await;
        }
        Ok(acc)
    };
    let (server, client) = tokio::join!(server, client);
    Outcome { server, client }
}

#[tokio::test]
async fn simple_with_credential_name_and_sni_selection() {
    let ca = TestCa::new("gw-ca");
    let a = ca.server_cert(&["a.example.com"], None);
    let b = ca.server_cert(&["*.b.example.com"], None);
    let any = ca.server_cert(&["127.0.0.1"], None);
    let creds = Scratch::new("dsimple");
    a.write_secret_dir(&creds.path().join("a-cred"))
        .expect("write");
    b.write_secret_dir(&creds.path().join("b-cred"))
        .expect("write");
    any.write_secret_dir(&creds.path().join("any-cred"))
        .expect("write");
    let servers = vec![
        server(
            &["a.example.com"],
            TlsMode::Simple,
            credential("a-cred"),
            &[],
        ),
        server(
            &["*.b.example.com"],
            TlsMode::Simple,
            credential("b-cred"),
            &[],
        ),
    ];
    let acceptor = DownstreamTlsAcceptor::new(&servers, Some(creds.path().to_path_buf()), None)
        .expect("acceptor");

    let o = connect(&acceptor, ca.root_store(), None, "A.example.com").await;
    let acc = o.server.expect("accepted");
    assert_eq!(acc.sni.as_deref(), Some("a.example.com"));
    assert_eq!(acc.server, 0);
    assert_eq!(acc.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(acc.peer_uri_san, None);
    assert_eq!(o.client.expect("client").0, Some(a.cert_der()));

    let o = connect(&acceptor, ca.root_store(), None, "x.b.example.com").await;
    assert_eq!(o.server.expect("accepted").server, 1);
    assert_eq!(o.client.expect("client").0, Some(b.cert_der()));

    // Unknown SNI, and no SNI without a `*` server: refused.
    let o = connect(&acceptor, ca.root_store(), None, "c.example.com").await;
    assert!(
        matches!(&o.server, Err(AcceptError::NoMatchingServer { sni: Some(s) }) if s == "c.example.com"),
        "{:?}",
        o.server.err()
    );
    let o = connect(&acceptor, ca.root_store(), None, "127.0.0.1").await;
    assert!(matches!(
        o.server,
        Err(AcceptError::NoMatchingServer { sni: None })
    ));

    // `*` takes other names and clients that send no SNI (an IP address sends none).
    let mut with_any = servers.clone();
    with_any.push(server(&["*"], TlsMode::Simple, credential("any-cred"), &[]));
    let acceptor = DownstreamTlsAcceptor::new(&with_any, Some(creds.path().to_path_buf()), None)
        .expect("acceptor");
    let o = connect(&acceptor, ca.root_store(), None, "127.0.0.1").await;
    let acc = o.server.expect("accepted");
    assert_eq!((acc.server, acc.sni), (2, None));
    assert_eq!(o.client.expect("client").0, Some(any.cert_der()));
}

#[tokio::test]
async fn mutual_requires_a_client_certificate_from_the_ca() {
    let ca = TestCa::new("gw-ca");
    let clients = TestCa::new("client-ca");
    let srv = ca.server_cert(&["api.example.com"], None);
    let dir = Scratch::new("dmutual");
    srv.write_files(dir.path(), "server.pem", "server.key", None)
        .expect("write");
    clients
        .write_cert(dir.path(), "clients-ca.pem")
        .expect("write");
    let files = CertSource {
        certificate: Some(dir.path().join("server.pem")),
        private_key: Some(dir.path().join("server.key")),
        ca_certificates: Some(dir.path().join("clients-ca.pem")),
        credential_name: None,
    };
    let servers = vec![server(
        &["api.example.com"],
        TlsMode::Mutual,
        files.clone(),
        &[],
    )];
    let acceptor = DownstreamTlsAcceptor::new(&servers, None, None).expect("acceptor");

    let good = clients.client_cert("app.example.com", Some("spiffe://example.org/app"));
    let o = connect(&acceptor, ca.root_store(), Some(&good), "api.example.com").await;
    assert_eq!(
        o.server.expect("accepted").peer_uri_san.as_deref(),
        Some("spiffe://example.org/app")
    );
    o.client.expect("client ok");

    let o = connect(&acceptor, ca.root_store(), None, "api.example.com").await;
    assert!(matches!(o.server, Err(AcceptError::Handshake(_))));
    assert!(o.client.is_err());

    let stranger = TestCa::new("stranger").client_cert("app.example.com", None);
    let o = connect(
        &acceptor,
        ca.root_store(),
        Some(&stranger),
        "api.example.com",
    )
    .await;
    let err = o.server.expect_err("untrusted client");
    assert!(
        err.transport_failure_reason()
            .is_some_and(|r| r.contains("CERTIFICATE_VERIFY_FAILED")),
        "{:?}",
        err.transport_failure_reason()
    );

    // subjectAltNames: the client certificate must carry one of them.
    let servers = vec![server(
        &["api.example.com"],
        TlsMode::Mutual,
        files,
        &["spiffe://example.org/other"],
    )];
    let acceptor = DownstreamTlsAcceptor::new(&servers, None, None).expect("acceptor");
    let o = connect(&acceptor, ca.root_store(), Some(&good), "api.example.com").await;
    assert!(matches!(o.server, Err(AcceptError::Handshake(_))));

    // MUTUAL without any CA is a configuration error.
    let no_ca = CertSource {
        ca_certificates: None,
        ..servers[0].tls.source.clone()
    };
    let e = DownstreamTlsAcceptor::new(&[server(&["x"], TlsMode::Mutual, no_ca, &[])], None, None)
        .expect_err("no CA");
    assert!(
        e.to_string()
            .ends_with("MUTUAL needs caCertificates or credentialName"),
        "{e}"
    );
}

#[tokio::test]
async fn mutual_accepts_a_v1_client_certificate() {
    // The user's openssl-made client certificate (X.509 v1) presented to a MUTUAL server.
    let ca = TestCa::with_org("example Inc.", "example.com");
    let srv = ca.server_cert(&["my-nginx.example.com"], None);
    let creds = Scratch::new("dv1");
    srv.write_secret_dir(&creds.path().join("gw"))
        .expect("write");
    let servers = vec![server(
        &["my-nginx.example.com"],
        TlsMode::Mutual,
        credential("gw"),
        &[],
    )];
    let acceptor = DownstreamTlsAcceptor::new(&servers, Some(creds.path().to_path_buf()), None)
        .expect("acceptor");

    let v1 = V1Cert::new(&ca, "client.example.com");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = rustls::ClientConfig::builder_with_provider(egret_test_support::certs::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ca.root_store())
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            v1.certified_key(),
        )));
    let client = async move {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("my-nginx.example.com").expect("name");
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        std::io::Result::Ok(())
    };
    let server = async {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut acc = acceptor.accept(tcp).await?;
        let mut buf = [0u8; 4];
        acc.stream
            .read_exact(&mut buf)
            .await
            .map_err(AcceptError::Handshake)?;
        acc.stream
            .write_all(b"pong")
            .await
            .map_err(AcceptError::Handshake)?;
        Ok::<_, AcceptError>(acc)
    };
    let (s, c) = tokio::join!(server, client);
    let acc = s.expect("v1 client accepted");
    c.expect("client ok");
    let (_, conn) = acc.stream.get_ref();
    assert_eq!(
        conn.peer_certificates().and_then(|c| c.first().cloned()),
        Some(v1.der.clone())
    );
}

#[tokio::test]
async fn istio_mutual_accepts_mesh_clients_only() {
    let mesh = TestCa::new("mesh-root");
    let other = TestCa::new("other-root");
    let dir = Scratch::new("dmesh");
    mesh.workload_cert("spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway")
        .write_istio_dir(dir.path())
        .expect("write");
    let servers = vec![server(
        &["my-nginx.mesh-external.svc.cluster.local"],
        TlsMode::IstioMutual,
        CertSource::default(),
        &[],
    )];
    let acceptor = DownstreamTlsAcceptor::new(&servers, None, Some(dir.path().to_path_buf()))
        .expect("acceptor");

    // The sidecar presents its workload certificate and verifies the gateway by the mesh root.
    let sleep = mesh.workload_cert("spiffe://cluster.local/ns/default/sa/sleep");
    let o = connect_mesh(&acceptor, &mesh, &sleep).await;
    let acc = o.expect("mesh client accepted");
    assert_eq!(
        acc.peer_uri_san.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/sleep")
    );
    assert_eq!(
        acc.sni.as_deref(),
        Some("my-nginx.mesh-external.svc.cluster.local")
    );

    let impostor = other.workload_cert("spiffe://cluster.local/ns/default/sa/sleep");
    let o = connect_mesh(&acceptor, &mesh, &impostor).await;
    let err = o.expect_err("other root refused");
    assert!(matches!(err, AcceptError::Handshake(_)), "{err}");

    let e = DownstreamTlsAcceptor::new(&servers, None, None).expect_err("no mesh dir");
    assert_eq!(e.to_string(), "mesh certificates: --mesh-certs is not set");
}

/// A mesh client: presents `cert`, verifies the server against the mesh root only (Istio
/// checks the server's SPIFFE identity, which the SNI does not name).
async fn connect_mesh(
    acceptor: &DownstreamTlsAcceptor,
    mesh: &TestCa,
    cert: &TestCert,
) -> Result<Accepted<TcpStream>, AcceptError> {
    let dir = Scratch::new("mesh-client");
    cert.write_istio_dir(dir.path()).expect("write");
    // The client trusts the mesh root, whatever CA signed its own certificate.
    std::fs::write(dir.path().join("root-cert.pem"), mesh.cert_pem()).expect("write");
    // The crate's own ISTIO_MUTUAL origination: chain-only check against the mesh root.
    let ctxs = egret_tls::UpstreamTlsContexts::new(egret_tls::UpstreamTlsOptions {
        mesh_certs_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    });
    let spec = egret_core::UpstreamTls {
        mode: TlsMode::IstioMutual,
        sni: "my-nginx.mesh-external.svc.cluster.local".into(),
        auto_sni: false,
        subject_alt_names: Vec::new(),
        source: CertSource::default(),
        insecure_skip_verify: false,
        origin: "test".into(),
    };
    let config = ctxs.client_config(&spec).expect("client config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = async move {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut s, _) = egret_tls::connect_tls(tcp, config, &spec.sni, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let server = async {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut acc = acceptor.accept(tcp).await?;
        let mut buf = [0u8; 4];
        if acc.stream.read_exact(&mut buf).await.is_ok() {
            let _ = acc.stream.write_all(b"pong").await;
        }
        Ok(acc)
    };
    let (s, _c) = tokio::join!(server, client);
    s
}

#[cfg(unix)]
#[tokio::test]
async fn server_certificate_rotation_and_missing_files() {
    let ca = TestCa::new("gw-ca");
    let first = ca.server_cert(&["a.example.com"], Some("first"));
    let second = ca.server_cert(&["a.example.com"], Some("second"));
    let creds = Scratch::new("drotate");
    let secret = creds.path().join("a-cred");
    first.write_secret_dir(&secret).expect("write");
    let servers = vec![server(
        &["a.example.com"],
        TlsMode::Simple,
        credential("a-cred"),
        &[],
    )];
    let acceptor = DownstreamTlsAcceptor::with_options(
        &servers,
        DownstreamTlsOptions {
            credentials_dir: Some(creds.path().to_path_buf()),
            recheck_interval: Duration::ZERO,
            ..Default::default()
        },
    )
    .expect("acceptor");
    let o = connect(&acceptor, ca.root_store(), None, "a.example.com").await;
    assert_eq!(o.client.expect("client").0, Some(first.cert_der()));

    // Write new files beside, then rename over the old ones (each rename is atomic).
    second
        .write_files(&secret, "tls.crt.new", "tls.key.new", None)
        .expect("write");
    std::fs::rename(secret.join("tls.key.new"), secret.join("tls.key")).expect("rename");
    std::fs::rename(secret.join("tls.crt.new"), secret.join("tls.crt")).expect("rename");
    let o = connect(&acceptor, ca.root_store(), None, "a.example.com").await;
    assert_eq!(o.client.expect("client").0, Some(second.cert_der()));

    // A server whose Secret is missing fails its own handshakes with a clear error, not the
    // acceptor (the other hosts keep working).
    let servers = vec![
        server(
            &["a.example.com"],
            TlsMode::Simple,
            credential("a-cred"),
            &[],
        ),
        server(
            &["b.example.com"],
            TlsMode::Simple,
            credential("missing-cred"),
            &[],
        ),
    ];
    let acceptor = DownstreamTlsAcceptor::new(&servers, Some(creds.path().to_path_buf()), None)
        .expect("acceptor");
    let o = connect(&acceptor, ca.root_store(), None, "b.example.com").await;
    let err = o.server.expect_err("missing");
    assert_eq!(
        err.to_string(),
        format!(
            "credential missing-cred: missing {}",
            creds.path().join("missing-cred/tls.crt").display()
        )
    );
    let o = connect(&acceptor, ca.root_store(), None, "a.example.com").await;
    o.server.expect("other host still served");
}
