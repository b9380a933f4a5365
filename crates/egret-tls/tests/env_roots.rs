//! `SSL_CERT_FILE` is honoured for the system trust store. Its own test binary with a single
//! test, so setting the variable races with nothing.

mod common;

use std::time::Duration;

use common::{read_hello, tls_server, Scratch};
use egret_core::{CertSource, TlsMode, UpstreamTls};
use egret_test_support::certs::{server_config, ClientAuth, TestCa};
use egret_tls::{connect_tls, UpstreamTlsContexts, UpstreamTlsOptions, ALPN_H2_HTTP1};
use tokio::net::TcpStream;

#[tokio::test]
async fn ssl_cert_file_adds_a_private_ca_to_the_system_store() {
    let ca = TestCa::new("lab-ca");
    let cert = ca.server_cert(&["lab.example.com"], None);
    let (addr, _seen) =
        tls_server(server_config(&cert, &ClientAuth::None, ALPN_H2_HTTP1).expect("cfg")).await;
    let dir = Scratch::new("envroots");
    let bundle = dir.write("bundle.pem", ca.cert_pem());
    std::env::set_var("SSL_CERT_FILE", &bundle);
    std::env::remove_var("SSL_CERT_DIR");

    let ctxs = UpstreamTlsContexts::new(UpstreamTlsOptions::default());
    let spec = UpstreamTls {
        mode: TlsMode::Simple,
        sni: "lab.example.com".into(),
        auto_sni: true,
        subject_alt_names: Vec::new(),
        source: CertSource::default(),
        insecure_skip_verify: false,
        origin: "DestinationRule default/lab".into(),
    };
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let (mut s, _) = connect_tls(
        tcp,
        ctxs.client_config(&spec).expect("config"),
        &spec.sni,
        Duration::from_secs(10),
    )
    .await
    .expect("verified through SSL_CERT_FILE");
    read_hello(&mut s).await.expect("hello");
}
