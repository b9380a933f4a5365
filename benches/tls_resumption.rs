//! TLS session resumption toward upstreams (issue 4, item 5): how much a reconnect to the
//! same host saves when the upstream TLS context keeps its session cache.
//!
//!   cargo bench -p egret-benches --bench tls_resumption
//!
//! A loopback rustls server (ECDSA P-256 certificate from a test CA) accepts handshakes; the
//! client connects N times in a row (a) through one `UpstreamTlsContext` — what Egret's pool
//! does, so from the second connection on the handshake is resumed — and (b) with a fresh
//! context per connection (no cache: a full handshake each time, the certificate chain
//! verified each time). Prints connections/s and the share of resumed handshakes.
//! `EGRET_BENCH_QUICK=1` runs a handful of connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use egret_core::{CertSource, TlsMode, UpstreamTls};
use egret_test_support::certs::{server_config, ClientAuth, TestCa};
use egret_tls::{connect_tls, SystemRoots, UpstreamTlsContexts, UpstreamTlsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let n: usize = if std::env::var_os("EGRET_BENCH_QUICK").is_some() {
        10
    } else {
        1000
    };
    let ca = TestCa::new("bench CA");
    let dir = std::env::temp_dir().join(format!("egret-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    ca.write_cert(&dir, "ca.pem").expect("write CA");
    let cert = ca.server_cert(&["api.example.com"], None);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        server_config(&cert, &ClientAuth::None, &[b"http/1.1"]).expect("server config"),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });

    let spec = UpstreamTls {
        mode: TlsMode::Simple,
        sni: "api.example.com".into(),
        auto_sni: true,
        subject_alt_names: vec![],
        source: CertSource {
            ca_certificates: Some(dir.join("ca.pem")),
            ..Default::default()
        },
        insecure_skip_verify: false,
        origin: "bench".into(),
    };
    let options = || UpstreamTlsOptions {
        system_roots: SystemRoots::Paths {
            file: None,
            dir: None,
        },
        ..Default::default()
    };

    // (a) One context, as the pool keeps it: resumption after the first handshake.
    let contexts = UpstreamTlsContexts::new(options());
    let ctx = contexts.context(&spec, &[b"http/1.1"]);
    let (rate_a, resumed_a) = measure(n, addr, || ctx.client_config().expect("config")).await;
    // (b) A fresh context each time: every handshake is a full one.
    let (rate_b, resumed_b) = measure(n, addr, || {
        UpstreamTlsContexts::new(options())
            .context(&spec, &[b"http/1.1"])
            .client_config()
            .expect("config")
    })
    .await;
    println!("| upstream TLS connections ({n} in a row, loopback) | connections/s | resumed |");
    println!("|---|---:|---:|");
    println!("| shared context (Egret's pool) | {rate_a:.0} | {resumed_a}/{n} |");
    println!("| fresh context each time (no session cache) | {rate_b:.0} | {resumed_b}/{n} |");
    println!(
        "speed-up from resumption: {:.2}x",
        rate_a / rate_b.max(1e-9)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn measure(
    n: usize,
    addr: std::net::SocketAddr,
    config: impl Fn() -> Arc<rustls::ClientConfig>,
) -> (f64, usize) {
    let mut resumed = 0;
    let start = Instant::now();
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut tls, _alpn) =
            connect_tls(tcp, config(), "api.example.com", Duration::from_secs(5))
                .await
                .expect("handshake");
        if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            resumed += 1;
        }
        // Read to the server's close: TLS 1.3 session tickets arrive after the handshake, as
        // they do while a pooled connection reads its responses.
        let mut sink = Vec::new();
        let _ = tls.read_to_end(&mut sink).await;
    }
    (n as f64 / start.elapsed().as_secs_f64(), resumed)
}
