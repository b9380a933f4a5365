//! Scenarios S3 (TLS origination) and S4 (mutual TLS origination, ISTIO_MUTUAL termination)
//! with the user's manifests verbatim. S4 runs against a real nginx with
//! `ssl_verify_client on` and certificates made by the document's own openssl commands.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use egret_test_support::certs::client_config;
use egret_test_support::client::tls_connect;
use egret_test_support::{
    free_addr, http1_get, Behavior, Http1Conn, HttpUpstream, TestCa, TestDir,
};

use crate::common::{scenario, Gateway};

async fn s3(
    upstream_cert_ca: &TestCa,
    trusted_ca: &TestCa,
    names: &[&str],
) -> (HttpUpstream, Gateway, TestDir) {
    let cert = upstream_cert_ca.server_cert(names, None);
    let up = HttpUpstream::start_tls(Behavior::Echo, &cert, None)
        .await
        .unwrap();
    let dir = TestDir::new("s3").unwrap();
    trusted_ca.write_cert(dir.path(), "ca.pem").unwrap();
    let ca_file = dir.join("ca.pem");
    let gw = Gateway::start_env(
        &[&scenario("s3-tls-origination")],
        &[
            "--connect-to".into(),
            format!("edition.cnn.com:443:{}", up.addr()),
        ],
        // SIMPLE without caCertificates verifies against the system trust store, which
        // honours SSL_CERT_FILE as OpenSSL-based tools do.
        &[("SSL_CERT_FILE", ca_file.as_path())],
    )
    .await;
    (up, gw, dir)
}

/// The originated session for custom formats: version, BoringSSL's cipher name, and the
/// upstream certificate's subject and issuer in RFC 2253 form; `-` for a plain upstream.
#[tokio::test]
async fn s3_access_log_prints_the_upstream_tls_session() {
    let ca = TestCa::new("public CA stand-in");
    let cert = ca.server_cert(&["edition.cnn.com"], Some("edition.cnn.com"));
    let up = HttpUpstream::start_tls(Behavior::Echo, &cert, None)
        .await
        .unwrap();
    let dir = TestDir::new("s3-log").unwrap();
    ca.write_cert(dir.path(), "ca.pem").unwrap();
    let ca_file = dir.join("ca.pem");
    let mut gw = Gateway::start_env(
        &[&scenario("s3-tls-origination")],
        &[
            "--connect-to".into(),
            format!("edition.cnn.com:443:{}", up.addr()),
            "--access-log-format".into(),
            "%UPSTREAM_TLS_VERSION% %UPSTREAM_TLS_CIPHER% %UPSTREAM_PEER_SUBJECT% | %UPSTREAM_PEER_ISSUER% %UPSTREAM_PEER_URI_SAN%".into(),
        ],
        &[("SSL_CERT_FILE", ca_file.as_path())],
    )
    .await;
    let r = http1_get(gw.http, "edition.cnn.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let line = gw
        .process
        .next_log_line(Duration::from_secs(20))
        .await
        .unwrap();
    let (head, issuer) = line.split_once(" | ").unwrap();
    let fields: Vec<&str> = head.split(' ').collect();
    assert_eq!(fields[0], "TLSv1.3", "{line}");
    assert!(fields[1].starts_with("TLS_"), "{line}");
    assert_eq!(fields[2], "CN=edition.cnn.com", "{line}");
    assert!(
        issuer.starts_with("CN=public CA stand-in") && issuer.ends_with(" -"),
        "{line}"
    );
}

#[tokio::test]
async fn s3_plain_request_leaves_as_https_with_sni() {
    let ca = TestCa::new("public CA stand-in");
    let (up, mut gw, _dir) = s3(&ca, &ca, &["edition.cnn.com"]).await;
    // One client connection (one worker: upstream connections are pooled per worker).
    let mut client = Http1Conn::connect(gw.http).await.unwrap();
    let r = client
        .get("edition.cnn.com", "/politics", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["sni"], "edition.cnn.com");
    assert_eq!(echo["path"], "/politics");
    // ALPN `http/1.1` offered (the ServiceEntry port is HTTP: Envoy 1.40's HTTP/1.1 pool
    // offers it): the upstream, which would take h2, agrees on HTTP/1.1.
    assert_eq!(echo["alpn"], "http/1.1");
    assert_eq!(echo["version"], "HTTP/1.1");
    let l = gw.next_line().await;
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("200", "-"));
    assert_eq!(l.cluster, "outbound|443||edition.cnn.com");
    assert_eq!(l.upstream_host, up.addr().to_string());
    // A second request reuses the TLS connection.
    assert_eq!(
        client
            .get("edition.cnn.com", "/again", &[])
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn s3_untrusted_certificate_is_503_with_envoys_reason() {
    let trusted = TestCa::new("trusted");
    let other = TestCa::new("someone else");
    let (up, mut gw, _dir) = s3(&other, &trusted, &["edition.cnn.com"]).await;
    let r = http1_get(gw.http, "edition.cnn.com", "/politics", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(
        r.text(),
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"
    );
    let l = gw.next_line().await;
    assert_eq!(l.flags, "URX,UF");
    assert!(
        l.transport_failure.starts_with(
            "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:"
        ),
        "{}",
        l.transport_failure
    );
    assert!(
        l.transport_failure
            .contains("unable_to_get_local_issuer_certificate"),
        "{}",
        l.transport_failure
    );
    assert!(
        l.details.starts_with(
            "upstream_reset_before_response_started{remote_connection_failure|TLS_error:"
        ),
        "{}",
        l.details
    );
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn s3_wrong_name_and_expired_certificates_are_refused() {
    let ca = TestCa::new("ca");
    let (_up, mut gw, _dir) = s3(&ca, &ca, &["www.example.org"]).await;
    assert_eq!(
        http1_get(gw.http, "edition.cnn.com", "/", &[])
            .await
            .unwrap()
            .status,
        503
    );
    let l = gw.next_line().await;
    assert!(
        l.transport_failure.contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        l.transport_failure
    );
    // The DestinationRule sets no `sni` and no `subjectAltNames`: Envoy's auto SAN
    // validation, and its wording (checked with Envoy 1.40).
    assert!(
        l.transport_failure.contains(
            "verify_cert_failed:_verify_SAN_list,_expected_SANs:_[edition.cnn.com],_certificate_SANs:_[www.example.org]"
        ),
        "{}",
        l.transport_failure
    );

    let expired = ca.expired_server_cert(&["edition.cnn.com"]);
    let up = HttpUpstream::start_tls(Behavior::Echo, &expired, None)
        .await
        .unwrap();
    let dir = TestDir::new("s3-expired").unwrap();
    ca.write_cert(dir.path(), "ca.pem").unwrap();
    let mut gw = Gateway::start_env(
        &[&scenario("s3-tls-origination")],
        &[
            "--connect-to".into(),
            format!("edition.cnn.com:443:{}", up.addr()),
        ],
        &[("SSL_CERT_FILE", dir.join("ca.pem").as_path())],
    )
    .await;
    assert_eq!(
        http1_get(gw.http, "edition.cnn.com", "/", &[])
            .await
            .unwrap()
            .status,
        503
    );
    let l = gw.next_line().await;
    assert!(
        l.transport_failure.contains("certificate_has_expired"),
        "{}",
        l.transport_failure
    );
}

/// nginx as in the document: `ssl_verify_client on` with the example.com CA.
struct Nginx {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_nginx(dir: &TestDir, certs: &Path) -> Nginx {
    let addr = free_addr();
    let root = dir.join("html");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "<h1>Welcome to nginx!</h1>\n").unwrap();
    let tmp = dir.join("nginx-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let conf = format!(
        r#"daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen {addr} ssl;
    root {root};
    index index.html;
    server_name my-nginx.mesh-external.svc.cluster.local;
    ssl_certificate {certs}/nginx/tls.crt;
    ssl_certificate_key {certs}/nginx/tls.key;
    ssl_client_certificate {certs}/nginx/example.com.crt;
    ssl_verify_client on;
    # What the gateway sent as x-forwarded-client-cert.
    location = /xfcc {{ return 200 "[$http_x_forwarded_client_cert]"; }}
  }}
}}
"#,
        tmp = tmp.display(),
        root = root.display(),
        certs = certs.display(),
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nginx");
    let child = tokio::process::Command::new(nginx)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("nginx is installed (scripts/test.sh installs it)");
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Nginx { child, addr };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "nginx did not start: {}",
        std::fs::read_to_string(tmp.join("error.log")).unwrap_or_default()
    );
}

fn make_document_certs(out: &Path) {
    let status = std::process::Command::new("bash")
        .arg(scenario("s4-mtls-origination").join("make-certs.sh"))
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .expect("run make-certs.sh");
    assert!(status.success());
}

struct S4 {
    mesh: TestCa,
    gw: Gateway,
    _nginx: Nginx,
    _dir: TestDir,
}

async fn s4(config: &Path) -> S4 {
    s4_with(|_| config.to_path_buf()).await
}

/// `config` gets the folder with the document's certificates and returns the config to run.
async fn s4_with(config: impl FnOnce(&Path) -> std::path::PathBuf) -> S4 {
    let dir = TestDir::new("s4").unwrap();
    let certs = dir.join("certs");
    make_document_certs(&certs);
    let config = config(&certs);
    let config = config.as_path();
    let nginx = start_nginx(&dir, &certs).await;
    // Mesh certificates as Istio mounts them for the gateway.
    let mesh = TestCa::new("cluster.local");
    // The gateway's workload certificate. A real sidecar checks the gateway's SPIFFE identity;
    // the test client checks names, so the certificate carries the host's DNS name as well.
    let mut params =
        rcgen::CertificateParams::new(vec!["my-nginx.mesh-external.svc.cluster.local".to_string()])
            .unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(
            "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account",
        )
        .unwrap(),
    ));
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    mesh.issue(&params)
        .unwrap()
        .write_istio_dir(&dir.join("mesh"))
        .unwrap();
    let gw = Gateway::start(
        &[config],
        &[
            "--credentials-dir".into(),
            certs.join("credentials").display().to_string(),
            "--mesh-certs".into(),
            dir.join("mesh").display().to_string(),
            "--connect-to".into(),
            format!(
                "my-nginx.mesh-external.svc.cluster.local:443:{}",
                nginx.addr
            ),
        ],
    )
    .await;
    S4 {
        mesh,
        gw,
        _nginx: nginx,
        _dir: dir,
    }
}

/// The sidecar's side: mesh mTLS to the gateway, then a plain HTTP request.
async fn sidecar_get(
    s: &S4,
    client_ca: &TestCa,
) -> std::io::Result<egret_test_support::TestResponse> {
    let sleep = client_ca.workload_cert("spiffe://cluster.local/ns/default/sa/sleep");
    let cfg = Arc::new(client_config(s.mesh.root_store(), Some(&sleep), &[b"http/1.1"]).unwrap());
    let tls = tls_connect(s.gw.tls, "my-nginx.mesh-external.svc.cluster.local", cfg).await?;
    let mut conn = Http1Conn::handshake(tls).await?;
    conn.get("my-nginx.mesh-external.svc.cluster.local", "/", &[])
        .await
}

#[tokio::test]
async fn s4_mtls_origination_to_nginx_with_the_documents_certificates() {
    let mut s = s4(&scenario("s4-mtls-origination")).await;
    let r = sidecar_get(&s, &s.mesh).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("Welcome to nginx"), "{}", r.text());
    let l = s.gw.next_line().await;
    assert_eq!(
        (
            l.method.as_str(),
            l.path.as_str(),
            l.protocol.as_str(),
            l.code.as_str()
        ),
        ("GET", "/", "HTTP/1.1", "200")
    );
    assert_eq!(
        l.cluster,
        "outbound|443||my-nginx.mesh-external.svc.cluster.local"
    );
    assert_eq!(l.sni, "my-nginx.mesh-external.svc.cluster.local");
}

/// The clusters' TLS settings are prepared when the configuration is loaded, not by the
/// first request: the trust store read, credentials loaded — so a missing credential is
/// reported at start-up, before any traffic.
#[tokio::test]
async fn origination_tls_is_prepared_at_load() {
    let empty = TestDir::new("no-credentials").unwrap();
    let gw = Gateway::start(
        &[&scenario("s4-mtls-origination")],
        &[
            "--credentials-dir".into(),
            empty.path().display().to_string(),
        ],
    )
    .await;
    let mut stderr = String::new();
    for _ in 0..600 {
        stderr = gw.process.stderr();
        if stderr.contains("TLS credentials unusable") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stderr.contains("TLS credentials unusable") && stderr.contains("client-credential"),
        "no request was sent; stderr:\n{stderr}"
    );
}

/// A client certificate from another root is refused with BoringSSL's alert,
/// `unknown_ca`, as Envoy sends it (it was `certificate_unknown`).
#[tokio::test]
async fn s4_istio_mutual_refuses_a_client_from_another_root() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = s4(&scenario("s4-mtls-origination")).await;
    let stranger = TestCa::new("not the mesh");
    let sleep = stranger.workload_cert("spiffe://cluster.local/ns/default/sa/sleep");
    let cfg = Arc::new(client_config(s.mesh.root_store(), Some(&sleep), &[b"http/1.1"]).unwrap());
    // TLS 1.3: the client's side of the handshake completes before the gateway checks its
    // certificate; the alert comes with the first read.
    let e = match tls_connect(s.gw.tls, NGINX_HOST, cfg).await {
        Err(e) => e,
        Ok(mut tls) => {
            let _ = tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            tls.read(&mut [0u8; 64]).await.expect_err("refused")
        }
    };
    assert!(format!("{e:?}").contains("UnknownCA"), "{e:?}");
}

/// What a connection to the ISTIO_MUTUAL gateway that never becomes a request leaves in the
/// access log, as Envoy 1.40 under Istio (whose listeners log only `NR`; checked with it): a
/// refused client certificate nothing, an SNI no server takes and bytes that are not TLS one
/// `0 NR filter_chain_not_found` record each.
#[tokio::test]
async fn s4_gateway_logs_connections_no_server_takes_but_not_refused_handshakes() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = s4(&scenario("s4-mtls-origination")).await;
    // A client certificate from another root: refused in the handshake, no line.
    let stranger = TestCa::new("not the mesh");
    let r = sidecar_get(&s, &stranger).await;
    assert!(r.is_err(), "{r:?}");
    // A ClientHello for a host no server on the port takes.
    let sleep = s
        .mesh
        .workload_cert("spiffe://cluster.local/ns/default/sa/sleep");
    let cfg = Arc::new(client_config(s.mesh.root_store(), Some(&sleep), &[b"http/1.1"]).unwrap());
    // Closed with a reset, as Envoy closes a connection no filter chain takes.
    let e = tls_connect(s.gw.tls, "other.example", cfg)
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    let l = s.gw.next_line().await;
    assert_eq!(
        (
            l.method.as_str(),
            l.protocol.as_str(),
            l.code.as_str(),
            l.flags.as_str(),
            l.details.as_str()
        ),
        ("-", "-", "0", "NR", "filter_chain_not_found"),
        "{}",
        l.raw
    );
    assert_eq!(l.sni, "other.example");
    assert_eq!((l.bytes_received, l.bytes_sent), (0, 0));
    // Plain HTTP on the TLS port.
    let mut plain = tokio::net::TcpStream::connect(s.gw.tls).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: my-nginx.mesh-external.svc.cluster.local\r\n\r\n")
        .await
        .unwrap();
    let e = plain.read(&mut [0; 64]).await.err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    // A client that sends nothing (a TCP health check) is closed with a FIN, as by Envoy.
    let mut silent = tokio::net::TcpStream::connect(s.gw.tls).await.unwrap();
    silent.shutdown().await.unwrap();
    assert_eq!(silent.read(&mut [0; 64]).await.unwrap(), 0);
    let l = s.gw.next_line().await;
    assert_eq!(
        (
            l.code.as_str(),
            l.flags.as_str(),
            l.details.as_str(),
            l.sni.as_str()
        ),
        ("0", "NR", "filter_chain_not_found", "-"),
        "{}",
        l.raw
    );
    // The refused handshake above left nothing: the next line is this request's.
    let r = sidecar_get(&s, &s.mesh).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.method.as_str(), l.code.as_str()),
        ("GET", "200"),
        "{}",
        l.raw
    );
    // It is counted instead (the unknown SNI and the plain HTTP are not).
    let prom = http1_get(s.gw.prometheus, "localhost", "/stats/prometheus", &[])
        .await
        .unwrap()
        .text();
    assert!(
        prom.lines()
            .any(|l| l == "egret_downstream_tls_handshake_failures_total 1"),
        "{prom}"
    );
}

/// Istio's gateways set `x-forwarded-client-cert` from the client's certificate
/// (`SANITIZE_SET` with subject, cert, URI, DNS) and never pass a client's own: the value
/// Envoy 1.40 sent for the same certificates, byte for byte (checked with it). A forged
/// header reached the upstream, and a real client identity did not.
#[tokio::test]
async fn s4_gateway_sets_x_forwarded_client_cert_and_drops_a_forged_one() {
    let s = s4(&scenario("s4-mtls-origination")).await;
    let sleep = s
        .mesh
        .workload_cert("spiffe://cluster.local/ns/default/sa/sleep");
    let cfg = Arc::new(client_config(s.mesh.root_store(), Some(&sleep), &[b"http/1.1"]).unwrap());
    let tls = tls_connect(s.gw.tls, NGINX_HOST, cfg).await.unwrap();
    let mut conn = Http1Conn::handshake(tls).await.unwrap();
    let forged = [(
        "x-forwarded-client-cert",
        "By=spiffe://forged;URI=spiffe://cluster.local/ns/prod/sa/admin",
    )];
    let r = conn.get(NGINX_HOST, "/xfcc", &forged).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let der = sleep.cert_der();
    let hash: String = {
        use sha2::Digest;
        sha2::Sha256::digest(der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let pem = sleep
        .cert_pem()
        .replace("\r\n", "\n")
        .replace('\n', "%0A")
        .replace(' ', "%20")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let want = format!(
        "[By=spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account;Hash={hash};Cert=\"{pem}\";Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/sleep]"
    );
    assert_eq!(r.text(), want);
}

/// An Istio sidecar offers ALPN `istio-peer-exchange,istio` to the gateway: the handshake
/// goes on without ALPN, as BoringSSL lets it (rustls alone refused it with
/// `no_application_protocol`, so the document's sidecar → gateway hop failed).
#[tokio::test]
async fn s4_gateway_takes_a_sidecars_alpn() {
    let mut s = s4(&scenario("s4-mtls-origination")).await;
    let sleep = s
        .mesh
        .workload_cert("spiffe://cluster.local/ns/default/sa/sleep");
    let alpn: &[&[u8]] = &[b"istio-peer-exchange", b"istio"];
    let cfg = Arc::new(client_config(s.mesh.root_store(), Some(&sleep), alpn).unwrap());
    let tls = tls_connect(s.gw.tls, NGINX_HOST, cfg).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let mut conn = Http1Conn::handshake(tls).await.unwrap();
    let r = conn.get(NGINX_HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.gw.next_line().await.code, "200");
}

/// A ClientHello as a TLS 1.1 client sends it (no signature_algorithms, no
/// supported_versions), with this SNI.
fn tls11_client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut sni_ext = Vec::new();
    let list_len = name.len() + 3;
    sni_ext.extend_from_slice(&[0x00, 0x00]);
    sni_ext.extend_from_slice(&u16::try_from(list_len + 2).unwrap().to_be_bytes());
    sni_ext.extend_from_slice(&u16::try_from(list_len).unwrap().to_be_bytes());
    sni_ext.push(0);
    sni_ext.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    sni_ext.extend_from_slice(name);
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&u16::try_from(sni_ext.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&sni_ext);
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// The SNI is read as the client sent it, as Envoy's TLS inspector reads it: a TLS 1.1
/// hello for the gateway's host gets BoringSSL's `protocol_version` alert and no line (it
/// was taken for non-TLS bytes: a reset and an `NR` line without SNI), and a name with a
/// trailing dot matches no server (`NR` with the dotted name; it was served).
#[tokio::test]
async fn s4_gateway_reads_the_sni_as_sent() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = s4(&scenario("s4-mtls-origination")).await;
    let mut c = tokio::net::TcpStream::connect(s.gw.tls).await.unwrap();
    c.write_all(&tls11_client_hello(NGINX_HOST)).await.unwrap();
    let (got, _) = crate::common::read_until_end(&mut c).await;
    assert_eq!(got, [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46]);

    let dotted = format!("{NGINX_HOST}.");
    let mut c = tokio::net::TcpStream::connect(s.gw.tls).await.unwrap();
    c.write_all(&tls11_client_hello(&dotted)).await.unwrap();
    let e = c.read(&mut [0; 64]).await.err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str(), l.sni.as_str()),
        ("NR", "filter_chain_not_found", dotted.as_str()),
        "{}",
        l.raw
    );
}

#[tokio::test]
async fn s4_without_the_client_credential_nginx_answers_400() {
    // The same scenario, but the DestinationRule originates plain TLS (no client cert).
    let dir = TestDir::new("s4-nocred").unwrap();
    let cfg = dir.join("config");
    let mut s = s4_with(|certs| {
        std::fs::create_dir_all(&cfg).unwrap();
        for e in std::fs::read_dir(scenario("s4-mtls-origination")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            if !name.ends_with(".yaml") {
                continue;
            }
            let mut text = std::fs::read_to_string(e.path()).unwrap();
            if text.contains("originate-mtls-for-nginx") {
                text = text.replace("mode: MUTUAL", "mode: SIMPLE").replace(
                    "credentialName: client-credential",
                    &format!(
                        "caCertificates: {}",
                        certs.join("nginx/example.com.crt").display()
                    ),
                );
            }
            std::fs::write(cfg.join(&name), text).unwrap();
        }
        cfg.clone()
    })
    .await;
    let r = sidecar_get(&s, &s.mesh).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("No required SSL certificate was sent"),
        "{}",
        r.text()
    );
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.details.as_str()),
        ("400", "via_upstream")
    );
}

#[tokio::test]
async fn rotated_client_certificate_is_used_by_the_next_connection() {
    let ca = TestCa::new("rotation CA");
    let server = ca.server_cert(&["api.example.com"], None);
    // Answer with the client certificate's CN and close, so each request needs a new connection.
    let up = HttpUpstream::start_tls_with(
        Behavior::dynamic(|r| Behavior::Fixed {
            status: 200,
            headers: vec![("connection".into(), "close".into())],
            body: r.peer_cert_cn.clone().unwrap_or_default().into(),
        }),
        &server,
        egret_test_support::TlsOptions {
            client_auth: egret_test_support::ClientAuth::Optional(ca.cert_der()),
            alpn: vec![b"http/1.1".to_vec()],
        },
    )
    .await
    .unwrap();
    let dir = TestDir::new("rotation").unwrap();
    let cred = dir.join("creds/api-credential");
    ca.client_cert("first.example.com", None)
        .write_secret_dir(&cred)
        .unwrap();
    let yaml = api_over_tls("{ mode: MUTUAL, credentialName: api-credential }");
    dir.write("config/api.yaml", yaml.as_bytes()).unwrap();
    let gw = Gateway::start(
        &[&dir.join("config")],
        &[
            "--credentials-dir".into(),
            dir.join("creds").display().to_string(),
            "--connect-to".into(),
            format!("api.example.com:443:{}", up.addr()),
        ],
    )
    .await;
    let r = http1_get(gw.http, "api.example.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "first.example.com".to_string())
    );
    // Rotate like Kubernetes: new files in place.
    ca.client_cert("second.example.com", None)
        .write_secret_dir(&cred)
        .unwrap();
    let mut last = String::new();
    for _ in 0..200 {
        let r = http1_get(gw.http, "api.example.com", "/", &[])
            .await
            .unwrap();
        last = r.text();
        if last == "second.example.com" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, "second.example.com");
}

#[tokio::test]
async fn missing_client_credential_is_a_503_naming_the_file_not_a_crash() {
    // S4 with an empty credentials folder: the route needs `client-credential`, absent.
    let dir = TestDir::new("s4-missing").unwrap();
    std::fs::create_dir_all(dir.join("creds")).unwrap();
    let mesh = TestCa::new("cluster.local");
    let mut params = rcgen::CertificateParams::new(vec![NGINX_HOST.to_string()]).unwrap();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    mesh.issue(&params)
        .unwrap()
        .write_istio_dir(&dir.join("mesh"))
        .unwrap();
    let listening = egret_test_support::TcpUpstream::echo().await.unwrap();
    let mut gw = Gateway::start(
        &[&scenario("s4-mtls-origination")],
        &[
            "--credentials-dir".into(),
            dir.join("creds").display().to_string(),
            "--mesh-certs".into(),
            dir.join("mesh").display().to_string(),
            "--connect-to".into(),
            format!("{NGINX_HOST}:443:{}", listening.addr()),
        ],
    )
    .await;
    let sleep = mesh.workload_cert("spiffe://cluster.local/ns/default/sa/sleep");
    let cfg = Arc::new(client_config(mesh.root_store(), Some(&sleep), &[b"http/1.1"]).unwrap());
    let tls = tls_connect(gw.tls, NGINX_HOST, cfg).await.unwrap();
    let mut conn = Http1Conn::handshake(tls).await.unwrap();
    let r = conn.get(NGINX_HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, 503);
    let l = gw.next_line().await;
    assert!(l.flags.contains("UF"), "{}", l.raw);
    assert!(
        l.transport_failure.contains("client-credential"),
        "the log names the credential: {}",
        l.raw
    );
    // Still serving: the process is alive and answers the next request the same way.
    assert!(gw.process.exited().is_none());
    assert_eq!(conn.get(NGINX_HOST, "/", &[]).await.unwrap().status, 503);
}

const NGINX_HOST: &str = "my-nginx.mesh-external.svc.cluster.local";

/// An upstream that closes TCP without a TLS `close_notify` after a body delimited by the
/// connection's end (HTTP/1.0 style; many servers close so): the response is complete, as
/// Envoy 1.40 reads it (`200 -`, the client's response chunked and ended), not truncated.
#[tokio::test]
async fn s3_body_ended_by_a_close_without_close_notify_is_complete() {
    use egret_test_support::certs::{server_config, ClientAuth};
    use tokio::io::AsyncWriteExt;
    let ca = TestCa::new("public CA stand-in");
    let cert = ca.server_cert(&["edition.cnn.com"], None);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        server_config(&cert, &ClientAuth::None, &[b"http/1.1"]).unwrap(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Some(_head) = crate::common::read_request_head(&mut tls).await else {
                    return;
                };
                let _ = tls.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello, closed").await;
                let _ = tls.flush().await;
                // Dropped without `shutdown`: TCP closes, no close_notify is sent.
            });
        }
    });
    let dir = TestDir::new("s3-close").unwrap();
    ca.write_cert(dir.path(), "ca.pem").unwrap();
    let ca_file = dir.join("ca.pem");
    let mut gw = Gateway::start_env(
        &[&scenario("s3-tls-origination")],
        &["--connect-to".into(), format!("edition.cnn.com:443:{up}")],
        &[("SSL_CERT_FILE", ca_file.as_path())],
    )
    .await;
    let r = http1_get(gw.http, "edition.cnn.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (200, "hello, closed")
    );
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("200", "-", "via_upstream")
    );
    assert_eq!(l.bytes_sent, 13);
}

/// ISTIO_MUTUAL origination offers the ALPN list Istio configures Envoy with for an in-mesh
/// peer (`istio-peer-exchange`, `istio`), which an Istio sidecar's inbound listener matches
/// on; the connection carries HTTP/1.1 whichever of them the peer picks.
#[tokio::test]
async fn istio_mutual_origination_offers_istio_alpn() {
    let mesh = TestCa::new("cluster.local");
    let server = mesh.server_cert(&["api.example.com"], None);
    // A peer that speaks only `istio`: it records what was negotiated.
    let up = HttpUpstream::start_tls_with(
        Behavior::Echo,
        &server,
        egret_test_support::TlsOptions {
            client_auth: egret_test_support::ClientAuth::Required(mesh.cert_der()),
            alpn: vec![b"istio".to_vec()],
        },
    )
    .await
    .unwrap();
    let dir = TestDir::new("istio-mutual-alpn").unwrap();
    mesh.workload_cert("spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway")
        .write_istio_dir(&dir.join("mesh"))
        .unwrap();
    let yaml = api_over_tls("{ mode: ISTIO_MUTUAL, sni: api.example.com }");
    dir.write("config/api.yaml", yaml.as_bytes()).unwrap();
    let gw = Gateway::start(
        &[&dir.join("config")],
        &[
            "--mesh-certs".into(),
            dir.join("mesh").display().to_string(),
            "--connect-to".into(),
            format!("api.example.com:443:{}", up.addr()),
        ],
    )
    .await;
    let r = http1_get(gw.http, "api.example.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last_request().expect("the request reached the peer");
    assert_eq!(seen.alpn.as_deref(), Some("istio"));
    assert_eq!(seen.version, http::Version::HTTP_11);
}

/// `api.example.com` through a plain-HTTP Gateway to its port 443, the DestinationRule's
/// `tls` set to `tls` (YAML flow mapping).
fn api_over_tls(tls: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: api }}
spec:
  hosts: [api.example.com]
  ports: [{{ number: 443, name: https, protocol: HTTPS }}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: egress }}
spec:
  selector: {{ istio: egressgateway }}
  servers:
  - port: {{ number: 80, name: http, protocol: HTTP }}
    hosts: [api.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: api }}
spec:
  hosts: [api.example.com]
  gateways: [egress]
  http:
  - route:
    - destination: {{ host: api.example.com, port: {{ number: 443 }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: api }}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {tls}
"#
    )
}
