//! `egret demo`: the user's four scenarios, end to end, on this machine, with nothing to
//! install. In-process stand-ins play the external hosts (certificates made on the spot),
//! one gateway per scenario runs the bundled configuration verbatim, each scenario's request
//! goes through it, and the results and access-log lines are printed. Then it stays up with
//! the curl commands to try; Ctrl-C exits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use egret_core::AccessLogSink;
use egret_listener::GatewayOptions;
use egret_telemetry::{AccessLogWriter, Destination, LogFormat};
use egret_test_support::certs::{client_config, TestCa};
use egret_test_support::client::tls_connect;
use egret_test_support::{
    http1_get, Behavior, ClientAuth, Http1Conn, HttpUpstream, TestDir, TlsOptions,
};
use egret_tls::{SystemRoots, UpstreamTlsOptions};
use egret_upstream::ResolverConfig;

use crate::cli::{ConfigArgs, DemoArgs};

const NGINX: &str = "my-nginx.mesh-external.svc.cluster.local";

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(run(args))
}

struct Scenario {
    name: &'static str,
    folder: &'static str,
    /// Service port → the port we listen on (None: pick a free one).
    service_port: u16,
    preferred: u16,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "S1 HTTP through the egress gateway",
        folder: "s1-http",
        service_port: 80,
        preferred: 8080,
    },
    Scenario {
        name: "S2 TLS passthrough by SNI",
        folder: "s2-passthrough",
        service_port: 443,
        preferred: 8443,
    },
    Scenario {
        name: "S3 TLS origination",
        folder: "s3-tls-origination",
        service_port: 80,
        preferred: 8081,
    },
    Scenario {
        name: "S4 mutual TLS origination (ISTIO_MUTUAL in)",
        folder: "s4-mtls-origination",
        service_port: 443,
        preferred: 8444,
    },
];

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let config_root = find_config_root(args.config_root.as_deref())?;
    let dir = TestDir::new("demo").context("cannot make a temporary folder")?;
    let certs = Certs::make(dir.path())?;

    // The external hosts.
    let cnn_http = HttpUpstream::start(Behavior::Fixed {
        status: 301,
        headers: vec![("location".into(), "https://edition.cnn.com/politics".into())],
        body: Default::default(),
    })
    .await?;
    let cnn_https = HttpUpstream::start_tls(Behavior::Echo, &certs.cnn, None).await?;
    let nginx = HttpUpstream::start_tls_with(
        Behavior::RequireClientCert(Box::new(Behavior::fixed(
            200,
            "<h1>Welcome to nginx!</h1>\n",
        ))),
        &certs.nginx,
        TlsOptions {
            client_auth: ClientAuth::Optional(certs.ca.cert_der()),
            alpn: vec![b"http/1.1".to_vec()],
        },
    )
    .await?;

    let writer = Arc::new(AccessLogWriter::open(
        &Destination::Stdout,
        LogFormat::default(),
    )?);
    let sink: Arc<dyn AccessLogSink> = writer.clone();
    let resolver = ResolverConfig {
        connect_to: [
            (("edition.cnn.com".to_string(), 80), cnn_http.addr()),
            (("edition.cnn.com".to_string(), 443), cnn_https.addr()),
            ((NGINX.to_string(), 443), nginx.addr()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };

    let mut gateways = Vec::new();
    let mut ports = Vec::new();
    for sc in &SCENARIOS {
        let port = if args.ephemeral_ports {
            free_port()
        } else {
            free_or(sc.preferred)
        };
        let cfg = ConfigArgs {
            config: vec![config_root.join(sc.folder)],
            namespace: "istio-system".into(),
            labels: [("istio".to_string(), "egressgateway".to_string())]
                .into_iter()
                .collect(),
            port_map: [(sc.service_port, port)].into_iter().collect(),
            cluster_domain: "cluster.local".into(),
        };
        let compiled = cfg
            .build()
            .map_err(|e| anyhow::anyhow!("{}: {}", sc.folder, e.join("; ")))?;
        let tls = UpstreamTlsOptions {
            credentials_dir: Some(certs.credentials.clone()),
            mesh_certs_dir: Some(certs.mesh_dir.clone()),
            // S3 verifies edition.cnn.com with the system trust store; here that is the
            // demo's CA (as SSL_CERT_FILE would make it).
            system_roots: SystemRoots::Paths {
                file: Some(certs.ca_file.clone()),
                dir: None,
            },
            ..Default::default()
        };
        let options = GatewayOptions::new("127.0.0.1".parse()?);
        let gw = crate::run::assemble(
            Arc::new(compiled.snapshot),
            sink.clone(),
            &resolver,
            tls,
            options,
            Vec::new(),
        )?;
        gw.prepare_upstream_tls();
        gw.sync_listeners()?;
        gateways.push(gw);
        ports.push(port);
    }

    // Listen for Ctrl-C before anything is printed, so a Ctrl-C right after the banner is
    // caught by the handler and not by the default action.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    println!("egret demo: the four scenarios of the egress-gateway walkthrough, on 127.0.0.1\n");
    let mut passed = 0;
    for (i, sc) in SCENARIOS.iter().enumerate() {
        let addr: SocketAddr = ([127, 0, 0, 1], ports[i]).into();
        println!(
            "── {} ({} → 127.0.0.1:{})",
            sc.name, sc.service_port, ports[i]
        );
        let lines_before = writer.written();
        let result = match i {
            0 => http1_get(
                addr,
                "edition.cnn.com",
                "/politics",
                &[("user-agent", "curl/7.81.0-DEV")],
            )
            .await
            .map(|r| {
                let ok = r.status == 301
                    && r.header("location") == Some("https://edition.cnn.com/politics");
                (
                    ok,
                    format!(
                        "HTTP {} location: {}",
                        r.status.as_u16(),
                        r.header("location").unwrap_or("-")
                    ),
                )
            }),
            1 => {
                let cfg = Arc::new(client_config(certs.ca.root_store(), None, &[b"http/1.1"])?);
                async {
                    let tls = tls_connect(addr, "edition.cnn.com", cfg).await?;
                    let mut c = Http1Conn::handshake(tls).await?;
                    c.get("edition.cnn.com", "/politics", &[]).await
                }
                .await
                .map(|r| (r.status == 200, format!("HTTP {} (the client verified edition.cnn.com's own certificate through the gateway)", r.status.as_u16())))
            }
            2 => http1_get(addr, "edition.cnn.com", "/politics", &[])
                .await
                .map(|r| {
                    let sni = r.json()["sni"].as_str().unwrap_or("-").to_string();
                    (
                        r.status == 200 && sni == "edition.cnn.com",
                        format!("HTTP {} (sent as HTTPS, SNI {sni})", r.status.as_u16()),
                    )
                }),
            _ => {
                let cfg = Arc::new(client_config(
                    certs.mesh.root_store(),
                    Some(&certs.sleep),
                    &[b"http/1.1"],
                )?);
                async {
                    let tls = tls_connect(addr, NGINX, cfg).await?;
                    let mut c = Http1Conn::handshake(tls).await?;
                    c.get(NGINX, "/", &[]).await
                }
                .await
                .map(|r| {
                    (
                        r.status == 200,
                        format!("HTTP {} {}", r.status.as_u16(), r.text().trim()),
                    )
                })
            }
        };
        // Show this scenario's access-log line before its verdict (a passthrough connection
        // is logged when it closes, a moment after the client is done).
        for _ in 0..100 {
            writer.flush_and_wait(Duration::from_secs(2));
            if writer.written() > lines_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match result {
            Ok((true, what)) => {
                passed += 1;
                println!("   ✓ {what}\n");
            }
            Ok((false, what)) => println!("   ✗ unexpected: {what}\n"),
            Err(e) => println!("   ✗ failed: {e}\n"),
        }
    }
    println!("{passed}/{} scenarios passed", SCENARIOS.len());
    println!(
        "\negret demo ready — try (certificates in {}):",
        dir.path().display()
    );
    println!(
        "  curl -i -H 'Host: edition.cnn.com' http://127.0.0.1:{}/politics",
        ports[0]
    );
    println!(
        "  curl -i --cacert {} --resolve edition.cnn.com:{p}:127.0.0.1 https://edition.cnn.com:{p}/politics",
        certs.ca_file.display(),
        p = ports[1]
    );
    println!(
        "  curl -i -H 'Host: edition.cnn.com' http://127.0.0.1:{}/politics",
        ports[2]
    );
    println!(
        "  curl -i --cacert {} --cert {} --key {} --resolve {NGINX}:{p}:127.0.0.1 https://{NGINX}:{p}/",
        certs.mesh_dir.join("root-cert.pem").display(),
        certs.sleep_dir.join("cert-chain.pem").display(),
        certs.sleep_dir.join("key.pem").display(),
        p = ports[3]
    );
    println!(
        "  curl -i -H 'Host: www.google.com' http://127.0.0.1:{}/   # refused: 404 NR",
        ports[0]
    );
    println!("Ctrl-C to stop.");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    interrupt.recv().await;
    for gw in &gateways {
        gw.drain(Duration::from_secs(2)).await;
    }
    writer.shutdown(Duration::from_secs(2));
    Ok(())
}

/// The demo's certificates: a CA like the document's (`O=example Inc./CN=example.com`), the
/// external hosts' server certificates, the client credential, and mesh certificates.
struct Certs {
    ca: TestCa,
    ca_file: PathBuf,
    cnn: egret_test_support::TestCert,
    nginx: egret_test_support::TestCert,
    credentials: PathBuf,
    mesh: TestCa,
    mesh_dir: PathBuf,
    sleep: egret_test_support::TestCert,
    sleep_dir: PathBuf,
}

impl Certs {
    fn make(dir: &Path) -> anyhow::Result<Certs> {
        let ca = TestCa::with_org("example Inc.", "example.com");
        ca.write_cert(dir, "ca.pem")?;
        let cnn = ca.server_cert(&["edition.cnn.com"], None);
        // As the document's openssl commands make it: a CN and no subjectAltName.
        let nginx = ca.server_cert_cn_only(NGINX);
        let credentials = dir.join("credentials");
        ca.client_cert("client.example.com", None)
            .write_secret_dir(&credentials.join("client-credential"))?;
        let mesh = TestCa::new("cluster.local");
        let mesh_dir = dir.join("mesh");
        // The gateway's workload certificate carries the host name too, so curl can check it.
        let mut params = rcgen::CertificateParams::new(vec![NGINX.to_string()])?;
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(rcgen::string::Ia5String::try_from(
                "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account",
            )?));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        mesh.issue(&params)?.write_istio_dir(&mesh_dir)?;
        let sleep = mesh.workload_cert("spiffe://cluster.local/ns/default/sa/sleep");
        let sleep_dir = dir.join("sleep");
        sleep.write_istio_dir(&sleep_dir)?;
        Ok(Certs {
            ca_file: dir.join("ca.pem"),
            ca,
            cnn,
            nginx,
            credentials,
            mesh,
            mesh_dir,
            sleep,
            sleep_dir,
        })
    }
}

/// `config/` next to the binary's source tree, the current folder, or `--config-root`.
fn find_config_root(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match given {
        Some(p) => vec![p.to_path_buf()],
        None => vec![
            PathBuf::from("config"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config"),
            PathBuf::from("/etc/egret/examples"),
        ],
    };
    candidates
        .into_iter()
        .find(|p| p.join("s1-http").is_dir())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot find the scenario folders (config/s1-http ...); pass --config-root"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// The preferred port when it is free, else any free one.
fn free_or(preferred: u16) -> u16 {
    match std::net::TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(_) => preferred,
        Err(_) => free_port(),
    }
}
