//! Scenario S2: TLS passthrough by SNI with the user's manifests verbatim. The gateway never
//! decrypts: clients verify the *upstream's* certificate through it. Log lines follow Envoy
//! 1.40's tcp_proxy/listener lines (checked): `NR filter_chain_not_found` with bytes 0 0 for
//! no/unknown SNI and non-TLS bytes, `UF,URX` with the transport failure reason for a refused
//! upstream.

use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use egret_test_support::certs::{client_config, ALPN_H2_HTTP1};
use egret_test_support::client::tls_connect;
use egret_test_support::{
    closed_port, http1_get, Behavior, Http1Conn, HttpUpstream, TcpUpstream, TestCa, TestDir,
};

use crate::common::{config_dir, scenario, Gateway};

struct Setup {
    ca: TestCa,
    up: HttpUpstream,
    gw: Gateway,
    dir: TestDir,
}

async fn setup(behavior: Behavior, extra: &[&str]) -> Setup {
    let ca = TestCa::new("upstream test CA");
    let cert = ca.server_cert(&["edition.cnn.com"], None);
    let up = HttpUpstream::start_tls(behavior, &cert, None)
        .await
        .unwrap();
    let mut args = vec![
        "--connect-to".to_string(),
        format!("edition.cnn.com:443:{}", up.addr()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let gw = Gateway::start(&[&scenario("s2-passthrough")], &args).await;
    let dir = TestDir::new("passthrough").unwrap();
    ca.write_cert(dir.path(), "ca.pem").unwrap();
    Setup { ca, up, gw, dir }
}

/// Runs curl without blocking the runtime (the upstream runs on it).
async fn curl(s: &Setup, extra: &[&str], path: &str) -> (bool, String) {
    let port = s.gw.tls.port();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--resolve",
            &format!("edition.cnn.com:{port}:127.0.0.1"),
        ])
        .arg("--cacert")
        .arg(s.dir.join("ca.pem"))
        .args(extra)
        .arg(format!("https://edition.cnn.com:{port}{path}"))
        .output()
        .await
        .expect("curl is installed (the test script installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A passthrough session still open when the drain timeout ends is closed and logged with
/// what it moved (no flag), as Envoy 1.40 logs the sessions it closes as it exits; it used to
/// be logged with 0 bytes each way.
#[tokio::test]
async fn a_session_open_at_the_end_of_the_drain_is_logged_with_its_bytes() {
    let mut s = setup(Behavior::Echo, &["--drain-timeout", "1s"]).await;
    let cfg = Arc::new(client_config(s.ca.root_store(), None, &[b"http/1.1"]).unwrap());
    let tls = tls_connect(s.gw.tls, "edition.cnn.com", cfg).await.unwrap();
    let mut conn = Http1Conn::handshake(tls).await.unwrap();
    let req = http::Request::get("/politics")
        .header("host", "edition.cnn.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(conn.send(req).await.unwrap().status, 200);
    // The session stays open (keep-alive) through the drain.
    s.gw.process.signal("TERM").await.unwrap();
    let status =
        s.gw.process
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("egret exits after the drain");
    assert!(status.success(), "{status:?}");
    let l = s.gw.next_line().await;
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("0", "-"), "{}", l.raw);
    assert_eq!(l.sni, "edition.cnn.com");
    // A ClientHello and a request one way, the handshake and a response the other.
    assert!(l.bytes_received > 300 && l.bytes_sent > 500, "{}", l.raw);
    drop(conn);
}

#[tokio::test]
async fn curl_verifies_the_upstream_certificate_through_the_gateway() {
    let mut s = setup(Behavior::Echo, &[]).await;
    let (ok, out) = curl(&s, &["--http1.1"], "/politics").await;
    assert!(ok, "{out}");
    let echo: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(echo["path"], "/politics");
    assert_eq!(echo["sni"], "edition.cnn.com");
    assert_eq!(echo["version"], "HTTP/1.1");
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.method.as_str(), l.path.as_str(), l.protocol.as_str()),
        ("-", "-", "-")
    );
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("0", "-", "-")
    );
    assert!(l.bytes_received > 300 && l.bytes_sent > 300, "{}", l.raw);
    assert_eq!(l.upstream_host, s.up.addr().to_string());
    assert_eq!(l.cluster, "outbound|443||edition.cnn.com");
    assert_eq!(l.downstream_local, s.gw.tls.to_string());
    assert_eq!(l.sni, "edition.cnn.com");
    assert_eq!(
        (l.xff.as_str(), l.user_agent.as_str(), l.authority.as_str()),
        ("-", "-", "-")
    );
}

#[tokio::test]
async fn h2_alpn_passes_through() {
    let mut s = setup(Behavior::Echo, &[]).await;
    let (ok, out) = curl(&s, &["--http2"], "/h2").await;
    assert!(ok, "{out}");
    let echo: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(echo["version"], "HTTP/2");
    assert_eq!(echo["alpn"], "h2");
    let l = s.gw.next_line().await;
    assert_eq!(l.sni, "edition.cnn.com");
}

#[tokio::test]
async fn ten_megabytes_each_way_arrive_intact() {
    ten_megabytes_each_way(&[]).await;
}

#[tokio::test]
async fn ten_megabytes_each_way_arrive_intact_with_splice() {
    ten_megabytes_each_way(&["--passthrough-splice"]).await;
}

async fn ten_megabytes_each_way(extra: &[&str]) {
    let size = 10 * 1024 * 1024;
    let mut s = setup(Behavior::EchoBody, extra).await;
    let cfg = Arc::new(client_config(s.ca.root_store(), None, &[b"http/1.1"]).unwrap());
    let tls = tls_connect(s.gw.tls, "edition.cnn.com", cfg).await.unwrap();
    let mut conn = Http1Conn::handshake(tls).await.unwrap();
    let body: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let req = http::Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "edition.cnn.com")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let r = conn.send(req).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), size);
    assert!(r.body.as_ref() == body.as_slice(), "upload/download differ");
    drop(conn);
    let l = s.gw.next_line().await;
    assert!(
        l.bytes_received >= size as u64 && l.bytes_sent >= size as u64,
        "{}",
        l.raw
    );
    assert_eq!(l.flags, "-");
}

/// A real ClientHello from rustls, for tests that write raw bytes.
fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let ca = TestCa::new("unused");
    let mut cfg = client_config(ca.root_store(), None, ALPN_H2_HTTP1).unwrap();
    cfg.enable_sni = sni.is_some();
    let name = rustls_pki_types::ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_string())
        .unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[tokio::test]
async fn client_hello_dribbled_one_byte_at_a_time_is_routed() {
    let mut s = setup(Behavior::Echo, &[]).await;
    let hello = client_hello(Some("edition.cnn.com"));
    let mut c = TcpStream::connect(s.gw.tls).await.unwrap();
    c.set_nodelay(true).unwrap();
    for b in &hello {
        c.write_all(&[*b]).await.unwrap();
        c.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    // The upstream answers with its ServerHello: a TLS handshake record.
    let mut first = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first[0], 0x16);
    drop(c);
    let l = s.gw.next_line().await;
    assert_eq!(l.sni, "edition.cnn.com");
    assert_eq!(l.upstream_host, s.up.addr().to_string());
    assert!(l.bytes_received >= hello.len() as u64);
}

const TCP_PASSTHROUGH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: echo }
spec:
  hosts: [echo.example.com]
  ports: [{ number: 443, name: tls, protocol: TLS }]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: egress }
spec:
  selector: { istio: egressgateway }
  servers:
  - port: { number: 443, name: tls, protocol: TLS }
    hosts: [echo.example.com]
    tls: { mode: PASSTHROUGH }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: echo }
spec:
  hosts: [echo.example.com]
  gateways: [egress]
  tls:
  - match: [{ port: 443, sniHosts: [echo.example.com] }]
    route:
    - destination: { host: echo.example.com, port: { number: 443 } }
"#;

#[tokio::test]
async fn half_close_passes_fin_and_keeps_the_other_direction() {
    let echo = TcpUpstream::echo().await.unwrap();
    let dir = config_dir("passthrough-tcp", &[("echo.yaml", TCP_PASSTHROUGH)]);
    // `passthrough` in the folder name tells the helper to wait on the 443 listener.
    let sub = dir.join("passthrough");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::rename(dir.join("echo.yaml"), sub.join("echo.yaml")).unwrap();
    let mut gw = Gateway::start(
        &[&sub],
        &[
            "--connect-to".into(),
            format!("echo.example.com:443:{}", echo.addr()),
        ],
    )
    .await;
    let hello = client_hello(Some("echo.example.com"));
    let payload = vec![b'x'; 100_000];
    let mut c = TcpStream::connect(gw.tls).await.unwrap();
    c.write_all(&hello).await.unwrap();
    c.write_all(&payload).await.unwrap();
    c.shutdown().await.unwrap(); // half-close: we are done sending
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        back.len(),
        hello.len() + payload.len(),
        "everything echoed after our FIN"
    );
    let l = gw.next_line().await;
    assert_eq!(l.bytes_received, (hello.len() + payload.len()) as u64);
    assert_eq!(l.bytes_sent, (hello.len() + payload.len()) as u64);
    assert_eq!(l.flags, "-");
    assert_eq!(l.sni, "echo.example.com");
}

#[tokio::test]
async fn refused_connections_each_leave_one_line() {
    let mut s = setup(Behavior::Echo, &["--client-hello-timeout", "300ms"]).await;

    // Unknown SNI.
    let mut c = TcpStream::connect(s.gw.tls).await.unwrap();
    c.write_all(&client_hello(Some("www.google.com")))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut buf)).await;
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("NR", "filter_chain_not_found")
    );
    assert_eq!(l.sni, "www.google.com");
    assert_eq!((l.bytes_received, l.bytes_sent), (0, 0));
    assert_eq!((l.upstream_host.as_str(), l.cluster.as_str()), ("-", "-"));

    // The served name with a trailing dot: Envoy 1.40 keeps the dot, and matches nothing.
    // (rustls drops a trailing dot from the SNI it sends: the name is patched in place.)
    let mut hello = client_hello(Some("edition.cnn.comx"));
    let at = hello
        .windows(16)
        .position(|w| w == b"edition.cnn.comx")
        .unwrap();
    hello[at + 15] = b'.';
    let mut c = TcpStream::connect(s.gw.tls).await.unwrap();
    c.write_all(&hello).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut buf)).await;
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str(), l.sni.as_str()),
        ("NR", "filter_chain_not_found", "edition.cnn.com.")
    );

    // No SNI at all.
    let mut c = TcpStream::connect(s.gw.tls).await.unwrap();
    c.write_all(&client_hello(None)).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut buf)).await;
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str(), l.sni.as_str()),
        ("NR", "filter_chain_not_found", "-")
    );

    // Plain HTTP on the TLS port.
    let mut c = TcpStream::connect(s.gw.tls).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n")
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut buf)).await;
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("NR", "filter_chain_not_found")
    );

    // A client that says nothing: closed with a FIN after the ClientHello timeout, and not
    // logged, as Envoy 1.40 does (a TCP health check); nor one that connects and leaves.
    let mut c = TcpStream::connect(s.gw.tls).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(n.is_ok(), "closed, not reset: {n:?}");
    drop(TcpStream::connect(s.gw.tls).await.unwrap());

    // A client that sends part of a ClientHello and stops: closed after the timeout and
    // logged (Envoy logs nothing here; operators asked for a line — istio/istio#21579).
    let mut c = TcpStream::connect(s.gw.tls).await.unwrap();
    c.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut buf)).await;
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str(), l.termination.as_str()),
        ("NR", "filter_chain_not_found", "listener_filter_timeout")
    );

    // A client that hangs up mid-ClientHello.
    let mut c = TcpStream::connect(s.gw.tls).await.unwrap();
    c.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    drop(c);
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("DC", "downstream_remote_disconnect")
    );
    assert_eq!(
        s.up.connections(),
        0,
        "no refused connection reached the upstream"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_uf_urx() {
    let closed = closed_port();
    let mut gw = Gateway::start(
        &[&scenario("s2-passthrough")],
        &[
            "--connect-to".into(),
            format!("edition.cnn.com:443:{closed}"),
        ],
    )
    .await;
    let mut c = TcpStream::connect(gw.tls).await.unwrap();
    c.write_all(&client_hello(Some("edition.cnn.com")))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut buf)).await;
    // As Envoy 1.40, the client's connection is reset, not closed.
    assert!(
        matches!(&read, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    let l = gw.next_line().await;
    assert_eq!(l.flags, "UF,URX");
    assert_eq!(l.details, "-");
    assert_eq!(
        l.transport_failure,
        "delayed_connect_error:_Connection_refused"
    );
    assert_eq!(l.upstream_host, closed.to_string());
    assert_eq!(l.cluster, "outbound|443||edition.cnn.com");
    assert_eq!((l.bytes_received, l.bytes_sent), (0, 0));
}

/// When the gateway exits after its drain, a connection still sending its ClientHello leaves
/// no line (as nothing leaves Envoy's listener filters; it was a line with no flags and no
/// SNI), while a session past it is logged as it ends.
#[tokio::test]
async fn at_exit_a_connection_still_in_its_client_hello_leaves_no_line() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((c, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Holds the session open without answering.
            tokio::spawn(async move {
                let _held = c;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let mut gw = Gateway::start(
        &[&scenario("s2-passthrough")],
        &[
            "--connect-to".into(),
            format!("edition.cnn.com:443:{up}"),
            "--drain-timeout".into(),
            "1s".into(),
        ],
    )
    .await;
    let hello = client_hello(Some("edition.cnn.com"));
    let mut session = TcpStream::connect(gw.tls).await.unwrap();
    session.write_all(&hello).await.unwrap();
    let mut partial = TcpStream::connect(gw.tls).await.unwrap();
    partial.write_all(&hello[..20]).await.unwrap();
    // The session forwards once the upstream has a connection; both are the gateway's once
    // it counts two open connections.
    let mut ready = false;
    for _ in 0..600 {
        let open: u64 = http1_get(gw.prometheus, "localhost", "/stats/prometheus", &[])
            .await
            .unwrap()
            .text()
            .lines()
            .filter(|l| l.starts_with("egret_worker_downstream_cx_active{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if open == 2 && accepted.load(std::sync::atomic::Ordering::Relaxed) == 1 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "stderr:\n{}", gw.process.stderr());
    gw.process.signal("TERM").await.unwrap();
    let status = gw
        .process
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("egret exits after the drain");
    assert!(status.success(), "{status:?}");
    let l = gw.next_line().await;
    assert_eq!(l.sni, "edition.cnn.com", "{}", l.raw);
    assert_eq!(l.upstream_host, up.to_string(), "{}", l.raw);
    assert!(
        gw.process
            .next_log_line(Duration::from_millis(500))
            .await
            .is_none(),
        "a line for the connection still in its ClientHello"
    );
    drop((session, partial));
}

/// An upstream that resets the connection: Envoy 1.40 logs `UR` and resets the client's
/// connection in turn (a clean close from the upstream is passed on as a FIN, unflagged).
#[tokio::test]
async fn upstream_reset_is_ur_and_resets_the_client() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            // Reads what the gateway replays (the ClientHello), answers a little, resets.
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await;
            let _ = c.write_all(b"partial").await;
            let _ = c.set_zero_linger();
            drop(c);
        }
    });
    let mut gw = Gateway::start(
        &[&scenario("s2-passthrough")],
        &["--connect-to".into(), format!("edition.cnn.com:443:{up}")],
    )
    .await;
    let mut c = TcpStream::connect(gw.tls).await.unwrap();
    c.write_all(&client_hello(Some("edition.cnn.com")))
        .await
        .unwrap();
    let (_, end) = crate::common::read_until_end(&mut c).await;
    assert_eq!(
        end,
        Err(std::io::ErrorKind::ConnectionReset),
        "reset, not closed"
    );
    let l = gw.next_line().await;
    assert_eq!((l.flags.as_str(), l.details.as_str()), ("UR", "-"));
    assert_eq!(l.upstream_host, up.to_string());
}

const TCP_ROUTE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: db }
spec:
  hosts: [db.example.com]
  ports: [{ number: 443, name: tcp, protocol: TCP }]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: egress }
spec:
  selector: { istio: egressgateway }
  servers:
  - port: { number: 443, name: tcp, protocol: TCP }
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: db }
spec:
  hosts: ["*"]
  gateways: [egress]
  tcp:
  - match: [{ port: 443 }]
    route:
    - destination: { host: db.example.com, port: { number: 443 } }
"#;

#[tokio::test]
async fn plain_tcp_route_by_port() {
    let echo = TcpUpstream::echo().await.unwrap();
    let dir = config_dir("tcp-route", &[]);
    let sub = dir.join("passthrough-tcp");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("db.yaml"), TCP_ROUTE).unwrap();
    let mut gw = Gateway::start(
        &[&sub],
        &[
            "--connect-to".into(),
            format!("db.example.com:443:{}", echo.addr()),
        ],
    )
    .await;
    let mut c = TcpStream::connect(gw.tls).await.unwrap();
    c.write_all(b"PING not tls at all").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"PING not tls at all");
    let l = gw.next_line().await;
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("0", "-"));
    assert_eq!((l.bytes_received, l.bytes_sent), (19, 19));
    assert_eq!(l.cluster, "outbound|443||db.example.com");
    assert_eq!(l.sni, "-");
}
