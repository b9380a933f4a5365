//! The whole passthrough path in miniature: a rustls client talks TLS to a rustls server
//! through read_client_hello + forward_with_prefix. The client verifies the *server's*
//! certificate and gets the ALPN the server chose, which only works if the gateway replayed
//! the ClientHello byte for byte and never terminated TLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::socket_pair;
use egret_sni::{
    forward_with_prefix, read_client_hello, ForwardEnd, Side, DEFAULT_CLIENT_HELLO_TIMEOUT,
    DEFAULT_MAX_CLIENT_HELLO_READ,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[tokio::test]
async fn tls_passes_through_untouched() {
    let certified = rcgen::generate_simple_self_signed(vec!["pass.example".to_string()]).unwrap();
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));

    let mut server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server_config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));

    // The TLS upstream: answers "pong:<what it got>" and closes.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = upstream.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut got = [0u8; 4];
        tls.read_exact(&mut got).await.unwrap();
        tls.write_all(b"pong:").await.unwrap();
        tls.write_all(&got).await.unwrap();
        tls.shutdown().await.unwrap();
        // Wait for the client's close_notify and FIN so both directions end cleanly.
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    });

    // The gateway: peek the hello, check the SNI, connect, replay, splice.
    let (client_tcp, mut downstream) = socket_pair().await;
    let gateway = tokio::spawn(async move {
        let (bytes, hello) = read_client_hello(
            &mut downstream,
            DEFAULT_CLIENT_HELLO_TIMEOUT,
            DEFAULT_MAX_CLIENT_HELLO_READ,
        )
        .await
        .unwrap();
        assert_eq!(hello.sni.as_deref(), Some("pass.example"));
        assert!(hello.offers_alpn(b"h2"));
        let upstream = tokio::net::TcpStream::connect(upstream_addr).await.unwrap();
        forward_with_prefix(downstream, upstream, bytes, Duration::from_secs(3600)).await
    });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client_config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let name = ServerName::try_from("pass.example").unwrap();
    let mut tls = connector.connect(name, client_tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"ping").await.unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"pong:ping");
    tls.shutdown().await.unwrap();
    drop(tls);

    server.await.unwrap();
    let r = gateway.await.unwrap();
    assert!(
        matches!(
            r.end,
            ForwardEnd::Closed {
                first: Side::Upstream
            }
        ),
        "{:?}",
        r.end
    );
    assert!(r.bytes_from_downstream > 100 && r.bytes_from_upstream > 100);
}
