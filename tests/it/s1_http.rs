//! Scenario S1: plain HTTP through the egress gateway, with the user's manifests verbatim,
//! and the failure cases an operator meets. Expected statuses, bodies, flags and details
//! were checked against Envoy 1.40 configured as Istio configures the gateway (default retry
//! policy: 2 retries on connect-failure/refused-stream/503).

use std::time::Duration;

use egret_test_support::{
    closed_port, free_addr, h2c_get, http1_get, Behavior, DnsServer, Http1Conn, HttpUpstream,
    TestResponse,
};

use crate::common::{config_dir, scenario, Gateway, LogLine};

fn connect_to(host_port: &str, addr: std::net::SocketAddr) -> Vec<String> {
    vec!["--connect-to".into(), format!("{host_port}:{addr}")]
}

/// What crosses the gateway of a request's connection-specific headers, as Envoy 1.40
/// forwards them (checked on loopback with an echo upstream): `te` cut to `trailers`, the
/// headers `Connection` names and `keep-alive` removed, `trailer` and the proxy
/// authorization headers passed, repeated `x-forwarded-for` values joined.
#[tokio::test]
async fn request_hop_by_hop_headers_like_envoy() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let r = http1_get(
        gw.http,
        "edition.cnn.com",
        "/",
        &[
            ("te", "gzip, trailers"),
            ("connection", "x-foo"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("keep-alive", "timeout=5"),
            ("trailer", "x-t"),
            ("proxy-authorization", "Basic abc"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    // Every earlier `x-forwarded-for` value, joined, then this hop's address (Envoy 1.40).
    let xff = h["x-forwarded-for"].as_str().unwrap();
    assert!(xff.starts_with("1.1.1.1,2.2.2.2,"), "{xff}");
    assert_eq!(xff.matches(',').count(), 2, "{xff}");
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-bar"], "2");
    assert_eq!(h["trailer"], "x-t");
    assert_eq!(h["proxy-authorization"], "Basic abc");
    for gone in ["x-foo", "keep-alive"] {
        assert!(h.get(gone).is_none(), "{gone} crossed the gateway: {h}");
    }
    let r = http1_get(gw.http, "edition.cnn.com", "/", &[("te", "Trailers")])
        .await
        .unwrap();
    assert!(r.json()["headers"].get("te").is_none());
}

#[tokio::test]
async fn s1_manifests_verbatim_http11_and_log_line() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;

    let r = http1_get(
        gw.http,
        "edition.cnn.com",
        "/politics",
        &[("user-agent", "curl/7.81.0-DEV")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("server"), Some("istio-envoy"));
    assert!(r
        .header("x-envoy-upstream-service-time")
        .is_some_and(|v| v.parse::<u64>().is_ok()));
    let echo = r.json();
    assert_eq!(echo["path"], "/politics");
    assert_eq!(echo["headers"]["host"], "edition.cnn.com");
    let xff = echo["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!xff.is_empty());
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    let request_id = echo["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(request_id.len(), 36);

    let l = gw.next_line().await;
    assert!(
        l.start_time.ends_with('Z') && l.start_time.len() == 24,
        "{}",
        l.start_time
    );
    assert_eq!(
        (l.method.as_str(), l.path.as_str(), l.protocol.as_str()),
        ("GET", "/politics", "HTTP/1.1")
    );
    assert_eq!(l.code, "200");
    assert_eq!(l.flags, "-");
    assert_eq!(l.details, "via_upstream");
    assert_eq!(l.termination, "-");
    assert_eq!(l.transport_failure, "-");
    assert_eq!(l.bytes_received, 0);
    assert_eq!(l.bytes_sent, r.body.len() as u64);
    assert!(l.duration.parse::<u64>().is_ok());
    assert!(l.upstream_service_time.parse::<u64>().is_ok());
    assert_eq!(l.xff, xff);
    assert_eq!(l.user_agent, "curl/7.81.0-DEV");
    assert_eq!(l.request_id, request_id);
    assert_eq!(l.authority, "edition.cnn.com");
    assert_eq!(l.upstream_host, up.addr().to_string());
    assert_eq!(l.cluster, "outbound|80||edition.cnn.com");
    assert!(l.upstream_local.starts_with("127.0.0.1:"));
    assert_eq!(l.downstream_local, gw.http.to_string());
    assert!(l.downstream_remote.starts_with("127.0.0.1:"));
    assert_eq!((l.sni.as_str(), l.route.as_str()), ("-", "-"));
}

#[tokio::test]
async fn s1_h2c_prior_knowledge_like_a_sidecar() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let r = h2c_get(
        gw.http,
        "edition.cnn.com",
        "/politics",
        &[
            ("x-request-id", "6c2c4550-92d4-955c-b6cb-83bf2b0e06f4"),
            (
                "x-forwarded-client-cert",
                "By=spiffe://forged;URI=spiffe://x/sa/admin",
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    // A client's own `x-forwarded-client-cert` never passes (Istio's SANITIZE_SET; a plain
    // connection has no certificate to set it from).
    assert!(
        r.json()["headers"]["x-forwarded-client-cert"].is_null(),
        "{}",
        r.text()
    );
    // The upstream gets HTTP/1.1 (ServiceEntry port protocol HTTP) with the authority as Host.
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert_eq!(r.json()["headers"]["host"], "edition.cnn.com");
    // Every request at an Istio gateway is an edge request to Envoy 1.40 (Istio sets no
    // internal addresses by default): a new request id, the peer as external address.
    let forwarded = r.json()["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(forwarded, "6c2c4550-92d4-955c-b6cb-83bf2b0e06f4");
    assert_eq!(r.json()["headers"]["x-envoy-external-address"], "127.0.0.1");
    let l = gw.next_line().await;
    assert_eq!(l.protocol, "HTTP/2");
    assert_eq!(l.request_id, forwarded);
    assert_eq!(l.authority, "edition.cnn.com");
}

/// One HTTP/2 frame from a raw connection: its 9-byte header and its payload. Panics after
/// 30 s (a hang guard, not a timing assertion).
async fn read_h2_frame(c: &mut tokio::net::TcpStream) -> ([u8; 9], Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(30), c.read_exact(&mut head))
        .await
        .expect("a frame")
        .unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    c.read_exact(&mut payload).await.unwrap();
    (head, payload)
}

/// The header block of `GET path` for edition.cnn.com: HPACK literal fields without
/// indexing, no Huffman coding.
fn h2_get_fields(path: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "edition.cnn.com"),
    ] {
        fields.push(0);
        fields.push(n.len() as u8);
        fields.extend_from_slice(n.as_bytes());
        fields.push(v.len() as u8);
        fields.extend_from_slice(v.as_bytes());
    }
    fields
}

/// An HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A raw HTTP/2 connection that has sent `GET path` on stream 1 (the preface, an empty
/// SETTINGS, then HEADERS with END_STREAM): what a client does that hyper's would not let
/// the test do — reset a stream, or close the socket, with nothing else sent.
async fn raw_h2_get(gw: &Gateway, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(4, 0, 0, &[]));
    hello.extend(h2_frame(1, 0x5, 1, &h2_get_fields(path)));
    c.write_all(&hello).await.unwrap();
    c
}

/// An HTTP/2 client that resets its stream before the response is logged as Envoy 1.40
/// logs it, `0 DR http2.remote_reset` (checked with it); it was `0 DC`.
#[tokio::test]
async fn an_h2_client_resetting_before_the_response_is_dr() {
    use tokio::io::AsyncWriteExt;
    let up = HttpUpstream::start(Behavior::delay(
        Duration::from_secs(30),
        Behavior::fixed(200, "late"),
    ))
    .await
    .unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let mut c = raw_h2_get(&gw, "/slow").await;
    for _ in 0..600 {
        if up.connections() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    c.write_all(&h2_frame(3, 0, 1, &8u32.to_be_bytes()))
        .await
        .unwrap();
    let l = gw.next_line().await;
    assert_eq!(
        (
            l.path.as_str(),
            l.code.as_str(),
            l.flags.as_str(),
            l.details.as_str()
        ),
        ("/slow", "0", "DR", "http2.remote_reset")
    );
    drop(c);
}

/// A client that cancels a batch of streams at once keeps its connection, and each stream is
/// logged `0 DR`, as Envoy 1.40 does (checked with it). h2's default allowed 20 streams reset
/// before being accepted: past that, the connection got a GOAWAY and none was logged.
#[tokio::test]
async fn an_h2_client_cancelling_30_streams_at_once_keeps_its_connection() {
    use tokio::io::AsyncWriteExt;
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    // Stream 1 is a plain GET, answered; then 30 streams opened and reset in one write.
    let mut c = raw_h2_get(&gw, "/first").await;
    assert_eq!(gw.next_line().await.code, "200");
    let fields = h2_get_fields("/cancelled");
    let mut burst = Vec::new();
    for i in 0..30u32 {
        let stream = 3 + 2 * i;
        burst.extend(h2_frame(1, 0x5, stream, &fields));
        burst.extend(h2_frame(3, 0, stream, &8u32.to_be_bytes()));
    }
    c.write_all(&burst).await.unwrap();
    for _ in 0..30 {
        let l = gw.next_line().await;
        assert_eq!(
            (l.path.as_str(), l.code.as_str(), l.flags.as_str()),
            ("/cancelled", "0", "DR"),
            "{}",
            l.raw
        );
    }
    // Still open: a PING is answered, and no GOAWAY came before its answer.
    c.write_all(&h2_frame(6, 0, 0, b"egret-ok")).await.unwrap();
    loop {
        let (head, payload) = read_h2_frame(&mut c).await;
        assert_ne!(head[3], 7, "GOAWAY");
        if head[3] == 6 && head[4] & 1 == 1 {
            assert_eq!(payload, b"egret-ok");
            break;
        }
    }
}

/// A downstream HTTP/2 connection is offered Envoy 1.40's limits (checked with it): 1,024
/// concurrent streams and a 16 MiB stream window in the server's SETTINGS.
#[tokio::test]
async fn h2_settings_carry_envoys_limits() {
    use tokio::io::AsyncWriteExt;
    let s1 = scenario("s1-http");
    let gw = Gateway::start(&[&s1], &[]).await;
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    // The preface and an empty SETTINGS frame.
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut settings: Vec<(u16, u32)> = Vec::new();
    let mut window_increment = None;
    // Frames until the server's SETTINGS and its WINDOW_UPDATE on the connection are in.
    while settings.is_empty() || window_increment.is_none() {
        let (head, payload) = read_h2_frame(&mut c).await;
        let (kind, flags, stream) = (head[3], head[4], &head[5..9]);
        match kind {
            4 if flags & 1 == 0 => {
                settings = payload
                    .chunks(6)
                    .map(|e| {
                        (
                            u16::from_be_bytes([e[0], e[1]]),
                            u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
                        )
                    })
                    .collect();
            }
            8 if stream == [0, 0, 0, 0] => {
                window_increment = Some(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]));
            }
            _ => {}
        }
    }
    let value = |id: u16| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(
        value(3),
        Some(1024),
        "SETTINGS_MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    assert_eq!(
        value(4),
        Some(16 << 20),
        "SETTINGS_INITIAL_WINDOW_SIZE: {settings:?}"
    );
    // The connection's window starts at 65,535 (RFC 9113 §6.9.2) and is raised to 1 MiB
    // (Envoy: 24 MiB; kept small, it bounds what request bodies can hold buffered).
    assert_eq!(window_increment, Some((1 << 20) - 65_535));
}

/// HTTP/2 `cookie` fields reach an HTTP/1.1 upstream joined into one with `; ` (RFC 9113
/// §8.2.3, as Envoy 1.40 does).
#[tokio::test]
async fn h2_cookies_are_joined_for_an_http1_upstream() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let r = h2c_get(
        gw.http,
        "edition.cnn.com",
        "/c",
        &[("cookie", "a=1"), ("x-b", "2"), ("cookie", "c=3")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = up.last_request().expect("forwarded");
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; c=3"]);
    gw.next_line().await;
}

/// Dot segments are resolved before routing, as Istio's default path normalization has
/// Envoy do (checked with Envoy 1.40: `/a/../ok` and `/a/%2e%2e/ok` reach the upstream as
/// `/ok`); the log shows the path that went upstream, the query is left alone.
#[tokio::test]
async fn dot_segments_are_resolved_before_routing() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    for (sent, forwarded) in [
        ("/a/../ok", "/ok"),
        ("/a/%2e%2e/ok?q=/../x", "/ok?q=/../x"),
        ("/politics/./today", "/politics/today"),
    ] {
        let r = http1_get(gw.http, "edition.cnn.com", sent, &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let seen = up.last_request().expect("forwarded");
        assert_eq!(seen.path, forwarded, "{sent}");
        assert_eq!(gw.next_line().await.path, forwarded, "{sent}");
    }
}

/// Targets with bytes RFC 3986 wants escaped, as Envoy 1.40 takes them (checked with it):
/// in the path `"<>^`{|}` are escaped and `\` is a slash (dot segments resolved after),
/// the query goes upstream and into the log exactly as sent — `"<>` included, which
/// `http::Uri` cannot hold.
#[tokio::test]
async fn targets_with_unescaped_characters_go_on_as_envoys_canonicalizer_has_them() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let up = raw_upstream(&[
        ("/a%22%3C%3E%5E%60%7B%7C%7Db", OK),
        ("/j?q={\"a\":[1]}|x^`<>", OK),
        ("/a/c", OK),
        ("/p%3Cx%3E?z=\"1\"", OK),
    ])
    .await;
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up)).await;
    for (target, forwarded) in [
        ("/a\"<>^`{|}b", "/a%22%3C%3E%5E%60%7B%7C%7Db"),
        ("/j?q={\"a\":[1]}|x^`<>", "/j?q={\"a\":[1]}|x^`<>"),
        ("/a\\b/..\\c", "/a/c"),
        ("http://edition.cnn.com/p<x>?z=\"1\"", "/p%3Cx%3E?z=\"1\""),
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: edition.cnn.com\r\nConnection: close\r\n\r\n");
        let (status, text, _) = raw_request(&gw, request.as_bytes()).await;
        assert_eq!((status, text.as_str()), (200, "ok"), "{target}");
        let l = gw.next_line().await;
        assert_eq!(
            (l.code.as_str(), l.path.as_str()),
            ("200", forwarded),
            "{target}"
        );
    }
}

#[tokio::test]
async fn host_outside_the_gateway_is_refused_with_404_nr() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let r = http1_get(gw.http, "www.google.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("0"));
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("404", "NR", "route_not_found")
    );
    assert_eq!((l.upstream_host.as_str(), l.cluster.as_str()), ("-", "-"));
    assert_eq!(l.authority, "www.google.com");
    assert_eq!(up.requests(), 0, "nothing may reach an upstream");
}

#[tokio::test]
async fn refused_connect_is_503_urx_uf_after_istio_default_retries() {
    let closed = closed_port();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", closed)).await;
    let r = http1_get(gw.http, "edition.cnn.com", "/politics", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    // Envoy 1.40's exact body and details for this case.
    assert_eq!(
        r.text(),
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"
    );
    let l = gw.next_line().await;
    assert_eq!(l.code, "503");
    assert_eq!(l.flags, "URX,UF");
    assert_eq!(
        l.details,
        "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}"
    );
    assert_eq!(
        l.transport_failure,
        "delayed_connect_error:_Connection_refused"
    );
    assert_eq!(l.upstream_host, closed.to_string());
    assert_eq!(l.cluster, "outbound|80||edition.cnn.com");
    assert_eq!(l.upstream_local, "-");
    assert_eq!(l.bytes_sent, r.body.len() as u64);
}

#[tokio::test]
async fn upstream_reset_before_headers_is_503_uc() {
    let up = HttpUpstream::start(Behavior::Reset).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let r = http1_get(gw.http, "edition.cnn.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "upstream connect error or disconnect/reset before headers. reset reason: connection termination");
    let l = gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        (
            "UC",
            "upstream_reset_before_response_started{connection_termination}"
        )
    );
    // `reset` is not in Istio's default retryOn: exactly one attempt.
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn upstream_503_is_retried_twice_then_returned_with_urx() {
    let up = HttpUpstream::start(Behavior::fixed(503, "bad"))
        .await
        .unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let r = http1_get(gw.http, "edition.cnn.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "bad");
    let l = gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("URX", "via_upstream")
    );
    assert_eq!(up.requests(), 3, "1 try + Istio's 2 default retries");
}

#[tokio::test]
async fn retry_after_503_succeeds_without_flags() {
    let up = HttpUpstream::start(Behavior::dynamic(|r| {
        if r.index == 0 {
            Behavior::fixed(503, "")
        } else {
            Behavior::Echo
        }
    }))
    .await
    .unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let r = http1_get(gw.http, "edition.cnn.com", "/x", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let l = gw.next_line().await;
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("200", "-"));
    assert_eq!(up.requests(), 2);
}

const TIMEOUT_VS: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: { name: slow }
spec:
  hosts: [slow.example.com]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: DNS
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: egress }
spec:
  selector: { istio: egressgateway }
  servers:
  - port: { number: 80, name: http, protocol: HTTP }
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: slow }
spec:
  hosts: [slow.example.com]
  gateways: [egress]
  http:
  - timeout: 1s
    route:
    - destination: { host: slow.example.com, port: { number: 80 } }
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: unknown }
spec:
  hosts: [unknown.example.org]
  gateways: [egress]
  http:
  - route:
    - destination: { host: unknown.example.org, port: { number: 80 } }
"#;

#[tokio::test]
async fn route_timeout_is_504_ut() {
    let up = HttpUpstream::start(Behavior::delay(Duration::from_secs(5), Behavior::Echo))
        .await
        .unwrap();
    let dir = config_dir("timeout", &[("vs.yaml", TIMEOUT_VS)]);
    let mut gw = Gateway::start(&[dir.path()], &connect_to("slow.example.com:80", up.addr())).await;
    let r = http1_get(gw.http, "slow.example.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "upstream request timeout");
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("504", "UT", "response_timeout")
    );
    assert_eq!(l.upstream_host, up.addr().to_string());
}

/// Envoy's stream idle timeout (5 min by default; 1 s here): a request whose upstream never
/// answers is `504`, one whose body stops arriving `408`, both `SI stream_idle_timeout` with
/// the body `stream timeout` (Envoy 1.40's answers); they were held until a peer left.
#[tokio::test]
async fn stream_idle_timeout_is_504_or_408_si() {
    use tokio::io::AsyncWriteExt;
    let up = HttpUpstream::start(Behavior::delay(Duration::from_secs(60), Behavior::Echo))
        .await
        .unwrap();
    let s1 = scenario("s1-http");
    let mut args = connect_to("edition.cnn.com:80", up.addr());
    args.extend(["--stream-idle-timeout".to_string(), "1s".to_string()]);
    let mut gw = Gateway::start(&[&s1], &args).await;
    let r = http1_get(gw.http, "edition.cnn.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "stream timeout");
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("504", "SI", "stream_idle_timeout")
    );
    assert_eq!(l.upstream_host, up.addr().to_string());

    // Half of a 10-byte body, then nothing.
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nHost: edition.cnn.com\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    let (got, _) = crate::common::read_until_end(&mut c).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 408 ") && got.ends_with("\r\n\r\nstream timeout"),
        "{got}"
    );
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("408", "SI", "stream_idle_timeout")
    );
    assert_eq!(l.bytes_received, 5);
}

/// The stream idle timeout covers a response under way too, as Envoy's does (checked with
/// 1.40, 2 s timeout): a body whose upstream stalls, or whose client stops reading, is cut
/// after the timeout and logged with the status sent, `SI stream_idle_timeout` — over
/// HTTP/1.1 the connection closes, over HTTP/2 the stream is reset (`INTERNAL_ERROR`).
/// It was held until a peer left.
#[tokio::test]
async fn a_response_body_idle_for_the_stream_idle_timeout_is_cut_si() {
    use tokio::io::AsyncWriteExt;
    let up = raw_upstream(&[(
        "/stall",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789|HANG|",
    )])
    .await;
    let s1 = scenario("s1-http");
    let mut args = connect_to("edition.cnn.com:80", up);
    args.extend(["--stream-idle-timeout".to_string(), "1s".to_string()]);
    let mut gw = Gateway::start(&[&s1], &args).await;
    let si = |l: &LogLine| {
        (
            l.code.clone(),
            l.flags.clone(),
            l.details.clone(),
            l.bytes_sent,
        )
    };

    // HTTP/1.1: the head and the 10 bytes, then the connection closes.
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    c.write_all(b"GET /stall HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = crate::common::read_until_end(&mut c).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\n0123456789"),
        "{got}"
    );
    let l = gw.next_line().await;
    assert_eq!(
        si(&l),
        ("200".into(), "SI".into(), "stream_idle_timeout".into(), 10)
    );

    // HTTP/2: HEADERS, the 10 bytes, then RST_STREAM INTERNAL_ERROR (2) on the stream.
    let mut c = raw_h2_get(&gw, "/stall").await;
    let reset = loop {
        let (head, payload) = read_h2_frame(&mut c).await;
        if head[3] == 3 && head[5..9] == [0, 0, 0, 1] {
            break payload;
        }
    };
    assert_eq!(reset, 2u32.to_be_bytes());
    let l = gw.next_line().await;
    assert_eq!(
        si(&l),
        ("200".into(), "SI".into(), "stream_idle_timeout".into(), 10)
    );
    drop(gw);

    // A client that stops reading a large body: nothing moves once the buffers are full.
    let big = 32 << 20;
    let up = HttpUpstream::start(Behavior::BodyOfSize(big))
        .await
        .unwrap();
    let mut args = connect_to("edition.cnn.com:80", up.addr());
    args.extend(["--stream-idle-timeout".to_string(), "1s".to_string()]);
    let mut gw = Gateway::start(&[&s1], &args).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut c = socket.connect(gw.http).await.unwrap();
    c.write_all(b"GET /big HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n")
        .await
        .unwrap();
    let l = gw.next_line().await;
    let (code, flags, details, sent) = si(&l);
    assert_eq!(
        (code.as_str(), flags.as_str(), details.as_str()),
        ("200", "SI", "stream_idle_timeout")
    );
    assert!(sent > 0 && sent < big as u64, "{sent}");
    let (got, _) = crate::common::read_until_end(&mut c).await;
    assert!(got.len() < big, "the body was cut: {}", got.len());
}

#[tokio::test]
async fn destination_outside_the_registry_is_503_nc() {
    let dir = config_dir("unknown", &[("vs.yaml", TIMEOUT_VS)]);
    let mut gw = Gateway::start(&[dir.path()], &[]).await;
    let r = http1_get(gw.http, "unknown.example.org", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.body.is_empty());
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("503", "NC", "cluster_not_found")
    );
    assert_eq!(l.cluster, "-");
    assert!(
        gw.process.stderr().contains("unknown.example.org"),
        "the load warned about it"
    );
}

#[tokio::test]
async fn dns_answers_route_and_failure_is_503_uh() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    // The ServiceEntry resolves a name whose endpoint port points at the upstream.
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: api }}
spec:
  hosts: [api.example.com, broken.example.com]
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  resolution: DNS
  endpoints:
  - address: backend.example.net
    ports: {{ http: {port} }}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: broken }}
spec:
  hosts: [nxdomain.example.com]
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: egress }}
spec:
  selector: {{ istio: egressgateway }}
  servers:
  - port: {{ number: 80, name: http, protocol: HTTP }}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: api }}
spec:
  hosts: [api.example.com, nxdomain.example.com]
  gateways: [egress]
  http:
  - match: [{{ authority: {{ prefix: nxdomain }} }}]
    route:
    - destination: {{ host: nxdomain.example.com, port: {{ number: 80 }} }}
  - route:
    - destination: {{ host: api.example.com, port: {{ number: 80 }} }}
"#,
        port = up.addr().port()
    );
    let dns = DnsServer::start([("backend.example.net", vec![up.addr().ip()], 30)])
        .await
        .unwrap();
    let dir = config_dir("dns", &[("se.yaml", &yaml)]);
    let mut gw = Gateway::start(
        &[dir.path()],
        &["--dns-server".into(), dns.addr().to_string()],
    )
    .await;

    let r = http1_get(gw.http, "api.example.com", "/v1", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let l = gw.next_line().await;
    assert_eq!(l.upstream_host, up.addr().to_string());
    assert_eq!(l.cluster, "outbound|80||api.example.com");
    assert!(dns.queries_a("backend.example.net") >= 1);

    let r = http1_get(gw.http, "nxdomain.example.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "no healthy upstream");
    let l = gw.next_line().await;
    // Envoy's STRICT_DNS answer for a name that does not resolve (checked with 1.40).
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("UH", "no_healthy_upstream")
    );
    assert_eq!(l.cluster, "outbound|80||nxdomain.example.com");
}

#[tokio::test]
async fn client_gone_before_response_is_logged_dc() {
    let up = HttpUpstream::start(Behavior::delay(Duration::from_secs(2), Behavior::Echo))
        .await
        .unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let gw_addr = gw.http;
    let client =
        tokio::spawn(async move { http1_get(gw_addr, "edition.cnn.com", "/slow", &[]).await });
    // Wait until the request reached the upstream, then hang up.
    for _ in 0..400 {
        if up.requests() > 0 || !up.recorded().is_empty() || up.connections() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.abort();
    let l = gw.next_line().await;
    assert_eq!(l.code, "0");
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("DC", "downstream_remote_disconnect")
    );
    assert_eq!(l.path, "/slow");

    // The same after a request body read to its end (the route retries, so the body is
    // kept for a replay while the upstream takes its time).
    use tokio::io::AsyncWriteExt;
    let seen = up.requests();
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    c.write_all(
        b"POST /slow-post HTTP/1.1\r\nHost: edition.cnn.com\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    for _ in 0..400 {
        if up.requests() > seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(c);
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.path.as_str()),
        ("0", "DC", "/slow-post")
    );
    assert_eq!(l.bytes_received, 5);
}

const WEIGHTED: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: ab }
spec:
  hosts: [a.example.com, b.example.com]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: egress }
spec:
  selector: { istio: egressgateway }
  servers:
  - port: { number: 80, name: http, protocol: HTTP }
    hosts: [split.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: split }
spec:
  hosts: [split.example.com]
  gateways: [egress]
  http:
  - route:
    - destination: { host: a.example.com, port: { number: 80 } }
      weight: 80
    - destination: { host: b.example.com, port: { number: 80 } }
      weight: 20
"#;

#[tokio::test]
async fn weighted_destinations_split_by_weight() {
    let a = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let b = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir = config_dir("weighted", &[("vs.yaml", WEIGHTED)]);
    let mut extra = connect_to("a.example.com:80", a.addr());
    extra.extend(connect_to("b.example.com:80", b.addr()));
    let gw = Gateway::start(&[dir.path()], &extra).await;
    let mut conn = Http1Conn::connect(gw.http).await.unwrap();
    let n = 1000;
    for _ in 0..n {
        assert_eq!(
            conn.get("split.example.com", "/", &[])
                .await
                .unwrap()
                .status,
            200
        );
    }
    let (na, nb) = (a.requests(), b.requests());
    assert_eq!(na + nb, n);
    // 80/20 with 1000 draws: 5 standard deviations is ±63.
    assert!((737..=863).contains(&na), "a got {na} of {n}");
}

#[tokio::test]
async fn ten_thousand_keepalive_requests_ten_thousand_lines_and_pooled_upstream() {
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let mut conn = Http1Conn::connect(gw.http).await.unwrap();
    let n = 10_000;
    for i in 0..n {
        let r = conn
            .get("edition.cnn.com", &format!("/politics/{i}"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let l: LogLine = gw.next_line().await;
        assert_eq!(l.code, "200");
        assert!(seen.insert(l.path.clone()), "duplicate line for {}", l.path);
    }
    assert_eq!(seen.len(), n);
    assert_eq!(up.requests(), n);
    // Sequential requests on one downstream connection reuse one upstream connection.
    assert!(
        up.connections() <= 2,
        "{} upstream connections",
        up.connections()
    );
    // No extra line arrives.
    assert!(gw
        .process
        .next_log_line(Duration::from_millis(300))
        .await
        .is_none());
    let _ = free_addr();
}

#[tokio::test]
async fn oversized_request_headers_get_431_dpe_like_envoy() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let big = "a".repeat(70_000);
    let r = http1_get(gw.http, "edition.cnn.com", "/", &[("x-big", big.as_str())])
        .await
        .unwrap();
    // Envoy 1.40: "- - HTTP/1.1" 431 DPE http1.headers_too_large ... 0 31 ...
    let body = "Request Header Fields Too Large";
    expect_codec_refusal(&mut gw, &r, 431, body, "http1.headers_too_large").await;
    assert_eq!(up.requests(), 0);
}

/// A request the HTTP/1 codec refuses before routing, as Envoy 1.40 answers and logs it:
/// `status` with a text `body`, the connection closed, `"- - HTTP/1.1" <status> DPE
/// <details>` with the body's length as bytes sent.
async fn expect_codec_refusal(
    gw: &mut Gateway,
    r: &TestResponse,
    status: u16,
    body: &str,
    details: &str,
) {
    assert_eq!(r.status, status);
    assert_eq!(r.text(), body);
    assert_eq!(r.header("connection"), Some("close"));
    let l = gw.next_line().await;
    assert_eq!(
        (l.method.as_str(), l.path.as_str(), l.protocol.as_str()),
        ("-", "-", "HTTP/1.1")
    );
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        (status.to_string().as_str(), "DPE", details)
    );
    assert_eq!((l.bytes_received, l.bytes_sent), (0, body.len() as u64));
}

/// One request on its own connection, as raw bytes: the status, the body (after the head)
/// and whether the gateway closed the connection after answering.
async fn raw_request(gw: &Gateway, request: &[u8]) -> (u16, String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        // An answer that keeps the connection open ends where its content-length says.
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|n| got.len() >= end + 4 + n) && !head.contains("connection: close")
            {
                break false;
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer: {}", String::from_utf8_lossy(&got)),
        }
    };
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, body.to_string(), closed)
}

/// Heads Envoy 1.40's HTTP/1 codec refuses, sent to both on loopback: each answered with
/// Envoy's status and text body, the connection closed, and logged `"- - HTTP/1.1" <status>
/// DPE <details>`; none reaches the upstream. Some are heads the listener's codec cannot
/// parse, the others heads it parses and the handler refuses as Envoy's codec would.
#[tokio::test]
async fn malformed_requests_are_answered_and_logged_like_envoy() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let host = "Host: edition.cnn.com\r\n";
    let long_uri = format!("GET /{} HTTP/1.1\r\n{host}\r\n", "a".repeat(70_000));
    let cases: Vec<(String, u16, &str, &str)> = vec![
        (
            format!("G@T / HTTP/1.1\r\n{host}\r\n"),
            400,
            "Bad Request",
            "http1.codec_error",
        ),
        (
            format!("GET / HTTP/1.1\r\n{host}Bad Name: x\r\n\r\n"),
            400,
            "Bad Request",
            "http1.codec_error",
        ),
        (
            format!("GET / HTTP/1.1\r\n{host}X-A: a\x00b\r\n\r\n"),
            400,
            "Bad Request",
            "http1.invalid_characters",
        ),
        (
            format!("GET /a\x01b HTTP/1.1\r\n{host}\r\n"),
            400,
            "Bad Request",
            "http1.invalid_characters",
        ),
        (
            format!("G\x7fT / HTTP/1.1\r\n{host}\r\n"),
            400,
            "Bad Request",
            "http1.invalid_characters",
        ),
        (
            format!("GET /a\tb HTTP/1.1\r\n{host}\r\n"),
            400,
            "Bad Request",
            "http1.codec_error",
        ),
        (
            format!("POST / HTTP/1.1\r\n{host}Content-Length: abc\r\n\r\n"),
            400,
            "Bad Request",
            "http1.codec_error",
        ),
        (
            format!("POST / HTTP/1.1\r\n{host}Transfer-Encoding: gzip\r\n\r\n"),
            501,
            "Not Implemented",
            "http1.invalid_transfer_encoding",
        ),
        // Two `chunked` lines: a smuggling shape, refused as Envoy 1.40 refuses it.
        (
            format!(
                "POST / HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            501,
            "Not Implemented",
            "http1.invalid_transfer_encoding",
        ),
        (
            format!("GET / HTTP/1.2\r\n{host}\r\n"),
            426,
            "Upgrade Required",
            "low_version",
        ),
        (
            long_uri,
            431,
            "Request Header Fields Too Large",
            "http1.headers_too_large",
        ),
        (
            format!("GET / HTTP/1.0\r\n{host}\r\n"),
            426,
            "Upgrade Required",
            "low_version",
        ),
        (
            format!("FOO / HTTP/1.1\r\n{host}\r\n"),
            400,
            "Bad Request",
            "http1.codec_error",
        ),
        (
            format!("M-SEARCH / HTTP/1.1\r\n{host}\r\n"),
            400,
            "Bad Request",
            "http1.codec_error",
        ),
        (
            format!("GET edition.cnn.com HTTP/1.1\r\n{host}\r\n"),
            400,
            "Bad Request",
            "http1.codec_error",
        ),
        (
            "GET / HTTP/1.1\r\nHost: edit\u{ff}ion.cnn.com\r\n\r\n".to_string(),
            400,
            "Bad Request",
            "http.invalid_authority",
        ),
        // Framing Envoy's codec refuses where hyper's took it (checked with 1.40).
        (
            format!(
                "POST / HTTP/1.1\r\n{host}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            400,
            "Bad Request",
            "http1.content_length_and_chunked_not_allowed",
        ),
        (
            format!("POST / HTTP/1.1\r\n{host}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            400,
            "Bad Request",
            "http1.codec_error",
        ),
        (
            format!("POST / HTTP/1.1\r\n{host}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
            501,
            "Not Implemented",
            "http1.invalid_transfer_encoding",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\n{host}{}\r\n",
                (0..100).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()
            ),
            431,
            "Request Header Fields Too Large",
            "http1.too_many_headers",
        ),
        (
            format!("GET / http/1.1\r\n{host}\r\n"),
            400,
            "Bad Request",
            "http1.codec_error",
        ),
        (
            format!("GET /a b HTTP/1.1\r\n{host}\r\n"),
            400,
            "Bad Request",
            "http1.codec_error",
        ),
        (
            format!("GET /caf\u{e9} HTTP/1.1\r\n{host}\r\n"),
            400,
            "Bad Request",
            "http1.codec_error",
        ),
        // From a regression sweep against Envoy 1.40 (session 11).
        (
            "GET /\r\n\r\n".to_string(),
            426,
            "Upgrade Required",
            "low_version",
        ),
        (
            "GET https://edition.cnn.com/x HTTP/1.1\r\n\r\n".to_string(),
            403,
            "Forbidden",
            "http1.https_url_on_plaintext_connection",
        ),
        (
            "GET ftp://edition.cnn.com/x HTTP/1.1\r\n\r\n".to_string(),
            400,
            "Bad Request",
            "http1.invalid_scheme",
        ),
        (
            "GET /x HTTP/1.1\r\nHost: edition.cnn.com/x\r\n\r\n".to_string(),
            400,
            "Bad Request",
            "http.invalid_authority",
        ),
    ];
    for (request, status, body, details) in cases {
        let (got, text, closed) = raw_request(&gw, request.as_bytes()).await;
        let what = &request[..request.len().min(40)];
        assert_eq!(
            (got, text.as_str(), closed),
            (status, body, true),
            "{what:?}"
        );
        let l = gw.next_line().await;
        assert_eq!(
            (l.method.as_str(), l.path.as_str(), l.protocol.as_str()),
            ("-", "-", "HTTP/1.1"),
            "{what:?}"
        );
        assert_eq!(
            (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
            (status.to_string().as_str(), "DPE", details),
            "{what:?}"
        );
        assert_eq!(
            (l.bytes_received, l.bytes_sent),
            (0, body.len() as u64),
            "{what:?}"
        );
    }
    assert_eq!(up.requests(), 0);
}

/// Request heads httparse refuses but Envoy 1.40's codec takes (each checked with it): a
/// folded header is joined (its line break goes, its white space stays), extra spaces in
/// the request line are skipped. A `#fragment` in the target is refused by the path
/// normalization: `400`, no flag, logged with the target as sent, closed.
#[tokio::test]
async fn request_heads_are_taken_and_refused_like_envoys_codec() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let host = "Host: edition.cnn.com\r\n";
    for (request, path) in [
        (
            format!("GET /fold HTTP/1.1\r\n{host}X-A: a\r\n  b\r\n\r\n"),
            "/fold",
        ),
        (format!("GET  /spaces HTTP/1.1\r\n{host}\r\n"), "/spaces"),
        (
            format!("GET /trailing HTTP/1.1 \r\n{host}\r\n"),
            "/trailing",
        ),
    ] {
        let (status, _, _) = raw_request(&gw, request.as_bytes()).await;
        assert_eq!(status, 200, "{request:?}");
        let l = gw.next_line().await;
        assert_eq!((l.path.as_str(), l.code.as_str()), (path, "200"));
        let seen = up.last_request().unwrap();
        assert_eq!(seen.path, path);
        if path == "/fold" {
            assert_eq!(seen.header("x-a"), Some("a  b"));
        }
    }
    let requests = up.requests();
    for target in ["/a/b#frag", "/a?x=1#frag"] {
        let request = format!("GET {target} HTTP/1.1\r\n{host}\r\n");
        let (status, body, closed) = raw_request(&gw, request.as_bytes()).await;
        assert_eq!((status, body.as_str(), closed), (400, "", true));
        let l = gw.next_line().await;
        assert_eq!(
            (l.method.as_str(), l.path.as_str(), l.flags.as_str()),
            ("GET", target, "-")
        );
        assert_eq!(l.details, "path_normalization_failed");
    }
    assert_eq!(
        up.requests(),
        requests,
        "a refused request reaches no upstream"
    );
}

/// A malformed chunk in a request body the gateway is already forwarding is the client's
/// error: Envoy 1.40 answers `400 Bad Request` and logs `"POST / HTTP/1.1" 400 DPE
/// http1.codec_error` with the upstream host (Egret used to answer `503 UC`).
#[tokio::test]
async fn malformed_request_body_is_the_clients_error_like_envoy() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let request =
        b"POST / HTTP/1.1\r\nHost: edition.cnn.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    let (status, body, closed) = raw_request(&gw, request).await;
    assert_eq!((status, body.as_str(), closed), (400, "Bad Request", true));
    let l = gw.next_line().await;
    assert_eq!(
        (l.method.as_str(), l.path.as_str(), l.code.as_str()),
        ("POST", "/", "400")
    );
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("DPE", "http1.codec_error")
    );
    assert_eq!(l.upstream_host, up.addr().to_string());

    // As Envoy 1.40's codec: a chunk-size line needs its CR (this one is refused as above),
    // and what follows a chunk's data up to the line's end is skipped (this one forwarded).
    let request = b"POST / HTTP/1.1\r\nHost: edition.cnn.com\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\nhello\r\n0\r\n\r\n";
    let (status, body, closed) = raw_request(&gw, request).await;
    assert_eq!((status, body.as_str(), closed), (400, "Bad Request", true));
    let l = gw.next_line().await;
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("400", "DPE"));
    let request = b"POST / HTTP/1.1\r\nHost: edition.cnn.com\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhelloXYZ\r\n3\r\nabc\n0\r\n\r\n";
    let (status, body, _) = raw_request(&gw, request).await;
    assert_eq!(status, 200);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["body_len"], 8, "{body}");
    let l = gw.next_line().await;
    assert_eq!((l.code.as_str(), l.bytes_received), ("200", 8));

    // Chunk extensions of any length are skipped as they come (Envoy relays a 70 KB one).
    let request = format!(
        "POST / HTTP/1.1\r\nHost: edition.cnn.com\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;ext={}\r\nhello\r\n0\r\n\r\n",
        "e".repeat(70_000)
    );
    let (status, body, _) = raw_request(&gw, request.as_bytes()).await;
    assert_eq!(status, 200);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["body_len"], 5, "{body}");
    assert_eq!(gw.next_line().await.code, "200");
    // Trailers past the headers' limit: `431`, as Envoy's codec answers a head too large.
    let request = format!(
        "POST / HTTP/1.1\r\nHost: edition.cnn.com\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\nx-t: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let (status, body, closed) = raw_request(&gw, request.as_bytes()).await;
    assert_eq!(
        (status, body.as_str(), closed),
        (431, "Request Header Fields Too Large", true)
    );
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("431", "DPE", "http1.headers_too_large")
    );
}

/// An upstream that answers with these bytes to a request for the path, then closes. An
/// answer is written in the parts `|PAUSE|` separates, 100 ms apart; one that ends with
/// `|HANG|` then stalls until the gateway closes the connection.
async fn raw_upstream(answers: &'static [(&'static str, &'static [u8])]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Some(got) = crate::common::read_request_head(&mut c).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&got).into_owned();
                let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                if let Some((_, answer)) = answers.iter().find(|(p, _)| *p == path) {
                    let text = String::from_utf8_lossy(answer).into_owned();
                    let (text, hang) = match text.strip_suffix("|HANG|") {
                        Some(t) => (t.to_string(), true),
                        None => (text, false),
                    };
                    for (i, part) in text.split("|PAUSE|").enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let _ = c.write_all(part.as_bytes()).await;
                        let _ = c.flush().await;
                    }
                    if hang {
                        // Stalls: reads until the gateway gives up on it.
                        let mut buf = [0u8; 4096];
                        while matches!(c.read(&mut buf).await, Ok(n) if n > 0) {}
                        return;
                    }
                }
                let _ = c.shutdown().await;
            });
        }
    });
    addr
}

/// A GET with `Connection: close` through the gateway: the status line, the body as sent
/// (chunk framing included) and whether the gateway closed the connection.
async fn get_to_end(gw: &Gateway, host: &str, path: &str) -> (String, String) {
    let (head, body) = get_whole(gw, host, path).await;
    (head.lines().next().unwrap_or_default().to_string(), body)
}

/// A GET with `Connection: close` through the gateway, read until it closes: the response
/// head (status line and headers) and the body as sent.
async fn get_whole(gw: &Gateway, host: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    c.write_all(request.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    // Hang guard only.
    tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut all))
        .await
        .expect("the gateway ends the response")
        .unwrap();
    let all = String::from_utf8_lossy(&all);
    let (head, body) = all.split_once("\r\n\r\n").expect("a response head");
    (head.to_string(), body.to_string())
}

/// An HTTP/1.1 upstream's trailers end its body and go no further, the exchange logged as
/// complete (Envoy 1.40's HTTP/1 codec drops them); a response head past Envoy's 80 KiB
/// limit is a protocol error (`502 UPE`), one under it passes.
#[tokio::test]
async fn upstream_trailers_and_response_head_limit_like_envoy() {
    fn head_of(size: usize) -> &'static [u8] {
        let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
        let mut i = 0;
        while head.len() < size {
            // Under Envoy's 100 headers either way.
            head.push_str(&format!("x-filler-{i}: {}\r\n", "v".repeat(1000)));
            i += 1;
        }
        head.push_str("\r\nok");
        Box::leak(head.into_bytes().into_boxed_slice())
    }
    let answers: &'static [(&'static str, &'static [u8])] = Box::leak(Box::new([
        (
            "/trailers",
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 1\r\n\r\n"[..],
        ),
        ("/head-61k", head_of(61 * 1024)),
        ("/head-97k", head_of(97 * 1024)),
    ]));
    let up = raw_upstream(answers).await;
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up)).await;

    let (status, body) = get_to_end(&gw, "edition.cnn.com", "/trailers").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "5\r\nhello\r\n0\r\n\r\n", "the trailers are dropped");
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("200", "-", "via_upstream")
    );
    assert_eq!(l.bytes_sent, 5);

    let (status, body) = get_to_end(&gw, "edition.cnn.com", "/head-61k").await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok"));
    assert_eq!(gw.next_line().await.flags, "-");
    let (status, _) = get_to_end(&gw, "edition.cnn.com", "/head-97k").await;
    assert_eq!(status, "HTTP/1.1 502 Bad Gateway");
    let l = gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        (
            "UPE",
            "upstream_reset_before_response_started{protocol_error}"
        )
    );
}

/// The route timeout covers the response body: an upstream that stalls mid-body is cut off
/// when it expires, the client's connection closed, and the line says `200 UT
/// response_timeout` with the bytes sent (Envoy 1.40).
#[tokio::test]
async fn route_timeout_covers_the_response_body() {
    static ANSWERS: &[(&str, &[u8])] = &[(
        "/stall",
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789|HANG|",
    )];
    let up = raw_upstream(ANSWERS).await;
    let dir = config_dir("timeout-body", &[("vs.yaml", TIMEOUT_VS)]);
    let mut gw = Gateway::start(&[dir.path()], &connect_to("slow.example.com:80", up)).await;
    let (status, body) = get_to_end(&gw, "slow.example.com", "/stall").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "0123456789")
    );
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("200", "UT", "response_timeout")
    );
    assert_eq!(l.bytes_sent, 10);
}

/// The route timeout starts when the request has ended: an upload that takes longer than
/// the timeout is not cut off, as in Envoy 1.40 (its router arms the timer on the request's
/// end of stream).
#[tokio::test]
async fn route_timeout_starts_when_the_request_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir = config_dir("timeout-upload", &[("vs.yaml", TIMEOUT_VS)]);
    let mut gw = Gateway::start(&[dir.path()], &connect_to("slow.example.com:80", up.addr())).await;
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: slow.example.com\r\ncontent-length: 20\r\nConnection: close\r\n\r\n0123456789")
        .await
        .unwrap();
    // Longer than the route's 1 s timeout, before the rest of the body.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.write_all(b"0123456789").await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut all))
        .await
        .expect("the response")
        .unwrap();
    assert!(
        all.starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&all)
    );
    let l = gw.next_line().await;
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("200", "-"));
    assert_eq!(l.bytes_received, 20);
    assert_eq!(up.last_request().unwrap().body_len, 20);
}

/// A response that starts before the request body has been read to its end closes the
/// connection and says so (`connection: close`), as Envoy 1.40 does: a local reply at
/// routing (the body is never read) and an upstream that answers early — without
/// `x-envoy-upstream-service-time`, which Envoy counts from the end of the request.
#[tokio::test]
async fn responses_before_the_request_body_ends_close_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    static ANSWERS: &[(&str, &[u8])] =
        &[("/early", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")];
    let up = raw_upstream(ANSWERS).await;
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up)).await;
    for (host, path, status) in [
        ("www.google.com", "/", "404"),
        ("edition.cnn.com", "/early", "200"),
    ] {
        let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\ncontent-length: 1000\r\n\r\n0123456789"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let mut all = Vec::new();
        // The gateway closes (hang guard only); a reset after the response is fine.
        let _ = tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut all))
            .await
            .expect("the gateway closes the connection");
        let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
        let (head, _) = text.split_once("\r\n\r\n").expect("a response head");
        assert!(head.starts_with(&format!("http/1.1 {status} ")), "{head}");
        assert!(
            head.contains("\r\nconnection: close"),
            "{host}{path}: {head}"
        );
        assert!(
            !head.contains("x-envoy-upstream-service-time"),
            "{host}{path}: {head}"
        );
        assert_eq!(gw.next_line().await.code, status);
    }
}

/// The request goes upstream with its headers in Envoy 1.40's order: `host` first (given
/// the upstream authority in place), the client's headers as sent, then `x-forwarded-for`,
/// `x-forwarded-proto`, `x-envoy-external-address`, `x-request-id`, `x-envoy-attempt-count`;
/// a removed hop-by-hop header leaves the others in place.
#[tokio::test]
async fn request_headers_go_upstream_in_envoys_order() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (tx, mut heads) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(got) = crate::common::read_request_head(&mut c).await else {
                    return;
                };
                let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up)).await;
    let (status, _, _) = raw_request(
        &gw,
        b"GET / HTTP/1.1\r\nHost: edition.cnn.com\r\nConnection: keep-alive\r\nX-Envoy-Retry-On: 5xx\r\nUser-Agent: t/1\r\nTE: gzip\r\nAccept: */*\r\nX-Request-Id: mine\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let head = heads.recv().await.unwrap();
    let names: Vec<String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
        .collect();
    assert_eq!(
        names,
        [
            "host",
            "user-agent",
            "accept",
            "x-request-id",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-envoy-external-address",
            "x-envoy-attempt-count"
        ],
        "{head}"
    );
    gw.next_line().await;
    // A request without a body is framed as Envoy 1.40 frames it: `content-length: 0`, last,
    // unless its method never has a body (checked with Envoy: POST, PUT, PATCH, OPTIONS get
    // one, GET, DELETE none); a client's own `content-length: 0` stays where it was.
    for (request, framing) in [
        (
            &b"POST /p HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n"[..],
            Some(true),
        ),
        (b"DELETE /d HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n", None),
        (
            b"PUT /u HTTP/1.1\r\nHost: edition.cnn.com\r\ncontent-length: 0\r\n\r\n",
            Some(false),
        ),
    ] {
        let (status, _, _) = raw_request(&gw, request).await;
        assert_eq!(status, 200);
        let head = heads.recv().await.unwrap();
        let lengths: Vec<(usize, &str)> = head
            .lines()
            .enumerate()
            .filter(|(_, l)| l.to_ascii_lowercase().starts_with("content-length:"))
            .collect();
        let last = head.lines().filter(|l| !l.is_empty()).count() - 1;
        match framing {
            None => assert!(lengths.is_empty(), "{head}"),
            Some(at_end) => {
                assert_eq!(lengths.len(), 1, "{head}");
                assert_eq!(lengths[0].0 == last, at_end, "{head}");
                assert!(lengths[0].1.ends_with(": 0"), "{head}");
            }
        }
        gw.next_line().await;
    }
    // No `Host` from the client — an absolute-form target (its credentials dropped, as Envoy
    // does), or HTTP/2's `:authority` — and `host` still goes first (checked with Envoy 1.40).
    let (status, _, _) = raw_request(
        &gw,
        b"GET http://u:p@edition.cnn.com/abs HTTP/1.1\r\nUser-Agent: t/1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let head = heads.recv().await.unwrap();
    assert!(
        head.starts_with("GET /abs HTTP/1.1\r\nhost: edition.cnn.com\r\nuser-agent: t/1\r\n"),
        "{head}"
    );
    assert_eq!(gw.next_line().await.authority, "edition.cnn.com");
    let r = h2c_get(gw.http, "edition.cnn.com", "/h2", &[("user-agent", "t/2")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let head = heads.recv().await.unwrap();
    assert!(
        head.starts_with("GET /h2 HTTP/1.1\r\nhost: edition.cnn.com\r\nuser-agent: t/2\r\n"),
        "{head}"
    );
    gw.next_line().await;
    // An encoded NUL in the path: Envoy's path normalization refuses it, logged with the path.
    let (status, _, closed) =
        raw_request(&gw, b"GET /a%00b HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n").await;
    assert_eq!((status, closed), (400, true));
    let l = gw.next_line().await;
    assert_eq!(
        (l.path.as_str(), l.flags.as_str(), l.details.as_str()),
        ("/a%00b", "-", "path_normalization_failed")
    );
}

/// Framing headers as Envoy 1.40's HTTP/1.1 codec writes them (checked with it through a raw
/// upstream): an answer to a HEAD without a length (an upstream's, or a local reply) says
/// `transfer-encoding: chunked`; a `304` keeps its upstream's `content-length`; a chunked
/// request whose body is empty goes upstream chunked, with its last chunk.
#[tokio::test]
async fn framing_headers_follow_envoys_codec() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (tx, mut requests) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    // One request: its head, and a chunked body up to its last chunk.
                    let end = loop {
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&got[..i]).to_ascii_lowercase();
                            if !head.contains("transfer-encoding: chunked") {
                                break i + 4;
                            }
                            if let Some(j) = got[i + 4..].windows(5).position(|w| w == b"0\r\n\r\n")
                            {
                                break i + 4 + j + 5;
                            }
                        }
                        match c.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    };
                    let request: Vec<u8> = got.drain(..end).collect();
                    let request = String::from_utf8_lossy(&request).into_owned();
                    let answer: &[u8] = if request.contains(" /no-length ") {
                        b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\n"
                    } else if request.contains(" /chunked ") {
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n"
                    } else if request.contains(" /sized ") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
                    } else if request.contains(" /not-modified ") {
                        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 42\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    let _ = tx.send(request);
                    if c.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up)).await;
    // The response head's field names, in order, with the framing fields' values.
    let fields = |head: &str| -> Vec<String> {
        head.lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| {
                let n = n.to_ascii_lowercase();
                match n.as_str() {
                    "content-length" | "transfer-encoding" => format!("{n}: {}", v.trim()),
                    _ => n,
                }
            })
            .collect()
    };
    for (request, expected) in [
        (
            &b"HEAD /no-length HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n"[..],
            &[
                "x-a",
                "x-envoy-upstream-service-time",
                "date",
                "server",
                "transfer-encoding: chunked",
            ][..],
        ),
        (
            b"HEAD /chunked HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n",
            &[
                "x-a",
                "x-envoy-upstream-service-time",
                "date",
                "server",
                "transfer-encoding: chunked",
            ],
        ),
        (
            b"HEAD /sized HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n",
            &[
                "content-length: 1234",
                "x-envoy-upstream-service-time",
                "date",
                "server",
            ],
        ),
        (
            b"GET /not-modified HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n",
            &[
                "content-length: 42",
                "x-envoy-upstream-service-time",
                "date",
                "server",
            ],
        ),
        // Local replies: no route for the host.
        (
            b"HEAD / HTTP/1.1\r\nHost: not-allowed.example\r\n\r\n",
            &["date", "server", "transfer-encoding: chunked"],
        ),
        (
            b"GET / HTTP/1.1\r\nHost: not-allowed.example\r\n\r\n",
            &["date", "server", "content-length: 0"],
        ),
    ] {
        let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        c.write_all(request).await.unwrap();
        let head = crate::common::read_request_head(&mut c)
            .await
            .expect("a response head");
        let head = String::from_utf8_lossy(&head).into_owned();
        assert_eq!(fields(&head), expected, "{head}");
        assert!(
            head.ends_with("\r\n\r\n") && !head.ends_with("\r\n\r\n\r\n"),
            "no body: {head:?}"
        );
        let line = gw.next_line().await;
        if !request.starts_with(b"HEAD / ") && !request.starts_with(b"GET / ") {
            let sent = requests.recv().await.unwrap();
            assert_eq!(sent.split(' ').nth(1), Some(line.path.as_str()));
        }
    }
    // An empty chunked body: framed as chunked upstream, last chunk included.
    let (status, _, _) = raw_request(
        &gw,
        b"POST /empty HTTP/1.1\r\nHost: edition.cnn.com\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let sent = requests.recv().await.unwrap();
    assert!(
        sent.ends_with("\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
            && !sent.contains("content-length"),
        "{sent:?}"
    );
    assert_eq!(gw.next_line().await.bytes_received, 0);
    // The codec's refusals go out as `HTTP/1.1` with their body, to a HEAD or HTTP/1.0 too.
    for (request, status_line, body, details) in [
        (
            &b"HEAD / HTTP/1.0\r\nHost: edition.cnn.com\r\n\r\n"[..],
            "HTTP/1.1 426 Upgrade Required",
            "Upgrade Required",
            "low_version",
        ),
        (
            b"HEAD / HTTP/1.1\r\nHost: edition.cnn.com\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            "HTTP/1.1 400 Bad Request",
            "Bad Request",
            "http1.codec_error",
        ),
    ] {
        let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        c.write_all(request).await.unwrap();
        let (got, _) = crate::common::read_until_end(&mut c).await;
        let got = String::from_utf8_lossy(&got).into_owned();
        assert!(got.starts_with(status_line), "{got}");
        assert!(got.ends_with(&format!("\r\n\r\n{body}")), "{got}");
        let line = gw.next_line().await;
        assert_eq!((line.details.as_str(), line.bytes_sent), (details, body.len() as u64));
    }
}

/// A request body that ends with trailers has ended: its response is an ordinary keep-alive
/// one (the codec stops reading a body at its trailers, which must count as its end).
#[tokio::test]
async fn a_request_body_ending_in_trailers_has_ended() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let (status, _, closed) = raw_request(
        &gw,
        b"POST /t HTTP/1.1\r\nHost: edition.cnn.com\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n",
    )
    .await;
    assert_eq!((status, closed), (200, false), "no connection: close");
    assert_eq!(gw.next_line().await.bytes_received, 5);
}

/// A response that comes before a large request body has been read reaches the client
/// whole, with `connection: close`, and the connection then closes cleanly: what the client
/// still sends is read and dropped first (hyper drains it), so the kernel does not reset the
/// connection over unread bytes, which could destroy the response (RFC 9112 §9.6).
#[tokio::test]
async fn an_early_response_survives_the_unread_request_body() {
    use tokio::io::AsyncWriteExt;
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut c, mut wr) = c.into_split();
    // The whole 8 MB body is sent while the answer is read: far more than the gateway reads
    // before it answers, so unread bytes are still arriving when it closes.
    let writer = tokio::spawn(async move {
        let body = vec![b'x'; 64 * 1024];
        let _ = wr
            .write_all(
                b"POST / HTTP/1.1\r\nHost: www.google.com\r\ncontent-length: 8388608\r\n\r\n",
            )
            .await;
        for _ in 0..128 {
            if wr.write_all(&body).await.is_err() {
                break;
            }
        }
        wr
    });
    let (got, end) = crate::common::read_until_end(&mut c).await;
    // A FIN once the unread body has been drained, not a reset.
    assert_eq!(end, Ok(()), "closed, not reset");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert_eq!(gw.next_line().await.code, "404");
    drop(writer.await);
}

/// A client that goes away in the middle of its request body is logged as Envoy 1.40 logs
/// it, `0 DC downstream_remote_disconnect` with the bytes it sent, not as an upstream
/// failure; so is a client that closes part-way through a request head (`"- - HTTP/1.1"`,
/// with the time the head waited as the duration).
#[tokio::test]
async fn clients_leaving_mid_request_are_logged_dc() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that reads the head, says so, and waits for the rest.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (head_seen, mut heads) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let head_seen = head_seen.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let mut told = false;
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if !told && got.windows(4).any(|w| w == b"\r\n\r\n") {
                        told = true;
                        let _ = head_seen.send(());
                    }
                }
            });
        }
    });
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up)).await;

    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    c.write_all(
        b"POST /upload HTTP/1.1\r\nHost: edition.cnn.com\r\ncontent-length: 1000\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    heads
        .recv()
        .await
        .expect("the request reached the upstream");
    drop(c);
    let l = gw.next_line().await;
    assert_eq!(
        (l.method.as_str(), l.path.as_str(), l.code.as_str()),
        ("POST", "/upload", "0")
    );
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("DC", "downstream_remote_disconnect")
    );
    assert_eq!(l.upstream_host, up.to_string());
    assert_eq!((l.bytes_received, l.bytes_sent), (10, 0));

    // The line's duration is the time the head waited (Envoy's): at least the pause here,
    // which comes between the gateway reading the first bytes and the close.
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.shutdown().await.unwrap();
    let l = gw.next_line().await;
    let waited: u64 = l.duration.parse().unwrap();
    assert!(waited >= 250, "{}", l.raw);
    assert_eq!(
        (
            l.method.as_str(),
            l.path.as_str(),
            l.protocol.as_str(),
            l.code.as_str()
        ),
        ("-", "-", "HTTP/1.1", "0")
    );
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("DC", "downstream_remote_disconnect")
    );
}

/// An HTTP/2 client that resets its stream in the middle of its request body is logged as
/// Envoy 1.40 logs it, `0 DR http2.remote_reset` with the bytes it sent — not as an upstream
/// failure (it was `503 UC`).
#[tokio::test]
async fn an_h2_client_resetting_its_stream_mid_body_is_dr() {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::AsyncReadExt;
    /// A request body fed by the test, one chunk at a time.
    struct Chunks(tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>);
    impl hyper::body::Body for Chunks {
        type Data = bytes::Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|c| c.map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
    // An upstream that reads the head, says so, and waits for the rest.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (head_seen, mut heads) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let head_seen = head_seen.clone();
            tokio::spawn(async move {
                if crate::common::read_request_head(&mut c).await.is_some() {
                    let _ = head_seen.send(());
                }
                let mut buf = [0u8; 4096];
                while matches!(c.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up)).await;
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let req = http::Request::post("http://edition.cnn.com/upload")
        .header("content-length", "1000")
        .body(Chunks(rx))
        .unwrap();
    let response = sender.send_request(req);
    tx.send(bytes::Bytes::from_static(b"0123456789")).unwrap();
    let waiting = tokio::spawn(response);
    heads
        .recv()
        .await
        .expect("the request reached the upstream");
    // Dropping the response future resets the stream (RST_STREAM CANCEL).
    waiting.abort();
    let l = gw.next_line().await;
    assert_eq!(
        (l.method.as_str(), l.path.as_str(), l.code.as_str()),
        ("POST", "/upload", "0")
    );
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("DR", "http2.remote_reset")
    );
    assert_eq!(l.bytes_received, 10);
    drop(tx);
}

/// An HTTP/2 client that resets its stream while the response streams is logged as Envoy
/// 1.40 logs it, `200 DR http2.remote_reset`; one that closes its connection then, `200 DC
/// downstream_remote_disconnect` (checked with Envoy through a raw HTTP/2 client). A raw
/// client here too: hyper's would reset the stream itself before closing.
#[tokio::test]
async fn an_h2_client_giving_up_mid_response_is_dr_or_dc() {
    use tokio::io::AsyncWriteExt;
    let up = HttpUpstream::start(Behavior::BodyOfSize(64 << 20))
        .await
        .unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    for close_connection in [false, true] {
        let mut c = raw_h2_get(&gw, "/big").await;
        // Until the response's first DATA frame: its window (65,535 bytes) then runs dry.
        loop {
            let (head, _) = read_h2_frame(&mut c).await;
            if head[3] == 0 && head[5..9] == [0, 0, 0, 1] {
                break;
            }
        }
        if close_connection {
            drop(c);
        } else {
            // RST_STREAM (CANCEL); the connection stays open until the line is in.
            c.write_all(&h2_frame(3, 0, 1, &8u32.to_be_bytes()))
                .await
                .unwrap();
        }
        let l = gw.next_line().await;
        assert_eq!((l.path.as_str(), l.code.as_str()), ("/big", "200"));
        let expected = if close_connection {
            ("DC", "downstream_remote_disconnect")
        } else {
            ("DR", "http2.remote_reset")
        };
        assert_eq!((l.flags.as_str(), l.details.as_str()), expected);
    }
}

/// `Expect: 100-continue` is answered by the gateway (`100 Continue`) and not passed on, as
/// Envoy 1.40 does under Istio.
#[tokio::test]
async fn expect_continue_is_answered_and_not_forwarded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let (mut c, first) = until_continue(&gw, b"POST / HTTP/1.1\r\nHost: edition.cnn.com\r\nExpect: 100-continue\r\ncontent-length: 5\r\nConnection: close\r\n\r\n").await;
    c.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut rest))
        .await
        .expect("the response")
        .unwrap();
    assert!(
        rest.starts_with(b"HTTP/1.1 200 OK") || first.windows(15).any(|w| w == b"HTTP/1.1 200 OK")
    );
    let req = up.last_request().expect("forwarded");
    assert_eq!(req.header("expect"), None);
    assert_eq!(req.body_len, 5);
    assert_eq!(gw.next_line().await.code, "200");

    // Answered on the head, before routing: a host with no route gets the `100` first too.
    let all = read_to_close(&gw, b"POST / HTTP/1.1\r\nHost: nope.example.com\r\nExpect: 100-continue\r\ncontent-length: 5\r\n\r\n").await;
    assert!(
        all.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\n"),
        "{all}"
    );
    assert_eq!(gw.next_line().await.code, "404");

    // A request without a body gets its `100` too (Envoy 1.40 sends it whatever the
    // framing), and then its response.
    let all = read_to_close(&gw, b"GET / HTTP/1.1\r\nHost: edition.cnn.com\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").await;
    assert!(
        all.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{all}"
    );
    assert_eq!(gw.next_line().await.code, "200");
}

/// Sends `request` (with `Expect: 100-continue`) on a new connection and reads until the
/// gateway's first answer, which must be the `100`: the connection and what was read.
async fn until_continue(gw: &Gateway, request: &[u8]) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
        .await
        .expect("an interim response")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n"));
    (c, buf[..n].to_vec())
}

/// Sends `request` on a new connection and returns everything the gateway writes until it
/// closes the connection.
async fn read_to_close(gw: &Gateway, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut all))
        .await
        .expect("the responses, then the end")
        .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

/// A client that leaves after its `100 Continue`, before the response, is logged with code
/// 100 (`100 DC`), as Envoy 1.40 logs it.
#[tokio::test]
async fn a_client_leaving_after_its_100_is_logged_100_dc() {
    let up = HttpUpstream::start(Behavior::delay(Duration::from_secs(30), Behavior::Echo))
        .await
        .unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    let (c, _) = until_continue(&gw, b"POST / HTTP/1.1\r\nHost: edition.cnn.com\r\nExpect: 100-continue\r\ncontent-length: 5\r\n\r\n").await;
    drop(c);
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("100", "DC", "downstream_remote_disconnect")
    );
}

/// What an upstream that breaks HTTP/1.1 gets, as Envoy 1.40 answers it: a response it
/// cannot parse is `502` (`UPE`, `upstream_reset_before_response_started{protocol_error}`),
/// and a response it can is sent with Envoy's own status line: `HTTP/1.1` (an HTTP/1.0
/// close-delimited body goes out chunked) and the code's standard phrase (`Unknown` for a
/// code without one).
#[tokio::test]
async fn upstream_responses_are_relayed_with_envoys_status_line() {
    static ANSWERS: &[(&str, &[u8])] = &[
        (
            "/bad-status",
            b"HTTP/1.1 abc OK\r\ncontent-length: 2\r\n\r\nok",
        ),
        (
            "/bad-header",
            b"HTTP/1.1 200 OK\r\nbad name: x\r\ncontent-length: 2\r\n\r\nok",
        ),
        ("/http10", b"HTTP/1.0 200 OK\r\n\r\nhello"),
        ("/fine", b"HTTP/1.1 200 Fine\r\ncontent-length: 2\r\n\r\nok"),
        (
            "/weird",
            b"HTTP/1.1 299 Weird\r\ncontent-length: 2\r\n\r\nok",
        ),
        (
            "/last",
            b"HTTP/1.1 599 Weird\r\ncontent-length: 2\r\n\r\nok",
        ),
        // A body that reads like a bare answer to a bad request head, sent after the head:
        // relayed as it is.
        (
            "/lookalike",
            b"HTTP/1.1 200 OK\r\ncontent-length: 75\r\n\r\n|PAUSE|HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
        ),
    ];
    let up = raw_upstream(ANSWERS).await;
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up)).await;
    let reset =
        "upstream connect error or disconnect/reset before headers. reset reason: protocol error";
    let cases = [
        ("/bad-status", "HTTP/1.1 502 Bad Gateway", reset, "UPE"),
        ("/bad-header", "HTTP/1.1 502 Bad Gateway", reset, "UPE"),
        ("/http10", "HTTP/1.1 200 OK", "5\r\nhello\r\n0\r\n\r\n", "-"),
        ("/fine", "HTTP/1.1 200 OK", "ok", "-"),
        ("/weird", "HTTP/1.1 299 Unknown", "ok", "-"),
        // Envoy's own name for 599 (checked with 1.40).
        (
            "/last",
            "HTTP/1.1 599 Last Unassigned Server Error Code",
            "ok",
            "-",
        ),
        (
            "/lookalike",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            "-",
        ),
    ];
    for (path, status_line, body, flags) in cases {
        let (status, got_body) = get_to_end(&gw, "edition.cnn.com", path).await;
        assert_eq!(status, status_line, "{path}");
        assert_eq!(got_body, body, "{path}");
        let l = gw.next_line().await;
        assert_eq!((l.path.as_str(), l.flags.as_str()), (path, flags));
        if flags == "UPE" {
            assert_eq!(
                l.details,
                "upstream_reset_before_response_started{protocol_error}"
            );
        }
    }
}

/// Response framing Envoy 1.40's HTTP/1 codec refuses is a protocol error (`502 UPE`,
/// `upstream_reset_before_response_started{protocol_error}`): both `content-length` and
/// chunked, a `transfer-encoding` other than chunked, two `content-length` fields (even
/// equal), a `204` with a body, a head cut short. What it takes, Egret takes: a folded header
/// is joined, interim `1xx` responses are dropped, a `101` nobody asked for is passed on.
/// (Each checked with Envoy 1.40.)
#[tokio::test]
async fn upstream_framing_is_checked_like_envoys_codec() {
    static ANSWERS: &[(&str, &[u8])] = &[
        (
            "/length-and-chunked",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "/gzip",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxx",
        ),
        (
            "/two-lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
        ),
        (
            "/no-content-body",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello",
        ),
        ("/cut-head", b"HTTP/1.1 200 OK\r\nx-a: b"),
        (
            "/folded",
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\n  continued\r\ncontent-length: 2\r\n\r\nok",
        ),
        (
            "/early-hints",
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ),
        (
            "/unasked-101",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n",
        ),
        (
            "/bad-chunk",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ),
        (
            "/lf-chunk",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        ),
        (
            "/junk-after-data",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXYZ\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
    ];
    let up = raw_upstream(ANSWERS).await;
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up)).await;
    let refused = [
        "/length-and-chunked",
        "/gzip",
        "/two-lengths",
        "/no-content-body",
        "/cut-head",
    ];
    let reset =
        "upstream connect error or disconnect/reset before headers. reset reason: protocol error";
    for path in refused {
        let (status, body) = get_to_end(&gw, "edition.cnn.com", path).await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 502 Bad Gateway", reset),
            "{path}"
        );
        let l = gw.next_line().await;
        assert_eq!(
            (
                l.path.as_str(),
                l.code.as_str(),
                l.flags.as_str(),
                l.details.as_str()
            ),
            (
                path,
                "502",
                "UPE",
                "upstream_reset_before_response_started{protocol_error}"
            )
        );
    }
    // Taken: the whole response as the client gets it, and the line.
    for (path, status_line, header, body, code) in [
        (
            "/folded",
            "HTTP/1.1 200 OK",
            "x-a: 1  continued",
            "ok",
            "200",
        ),
        (
            "/early-hints",
            "HTTP/1.1 200 OK",
            "content-length: 2",
            "ok",
            "200",
        ),
        (
            "/unasked-101",
            "HTTP/1.1 101 Switching Protocols",
            "server: istio-envoy",
            "",
            "101",
        ),
    ] {
        let (head, got_body) = get_whole(&gw, "edition.cnn.com", path).await;
        assert_eq!(head.lines().next(), Some(status_line), "{path}");
        assert!(head.lines().any(|l| l == header), "{path}: {head}");
        assert!(
            !head.contains("103") && !head.contains("link:"),
            "{path}: {head}"
        );
        assert_eq!(got_body, body, "{path}");
        let l = gw.next_line().await;
        assert_eq!(
            (
                l.path.as_str(),
                l.code.as_str(),
                l.flags.as_str(),
                l.details.as_str()
            ),
            (path, code, "-", "via_upstream")
        );
    }
    // A body whose framing breaks right after the head (a chunk-size line that is not hex,
    // or ends with a bare LF): as Envoy, the client gets the head, then the connection ends
    // without the last chunk.
    for path in ["/bad-chunk", "/lf-chunk"] {
        let (head, got_body) = get_whole(&gw, "edition.cnn.com", path).await;
        assert_eq!(head.lines().next(), Some("HTTP/1.1 200 OK"), "{head}");
        assert!(
            head.lines().any(|l| l == "transfer-encoding: chunked"),
            "{head}"
        );
        assert_eq!(got_body, "", "{path}");
        let l = gw.next_line().await;
        assert_eq!(
            (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
            (
                "200",
                "UPE",
                "upstream_reset_after_response_started{protocol_error}"
            ),
            "{path}"
        );
    }
    // What follows a chunk's data up to the line's end is skipped, as Envoy's codec does.
    let (_, got_body) = get_whole(&gw, "edition.cnn.com", "/junk-after-data").await;
    assert!(!got_body.contains("XYZ"), "{got_body}");
    let l = gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.bytes_sent),
        ("200", "-", 8)
    );
}

/// What Envoy 1.40's connection manager refuses before routing, without a flag and with
/// the request logged: no host (`400`, empty body, closed), `*` as the path (`404`,
/// connection kept), an encoded NUL (`400`); two `Host` values are joined and match no host
/// (`404 NR`). The refusals come before Envoy adds `x-forwarded-for` and `x-request-id`, so
/// their lines show the client's own or `-`; a routed request's show the added ones.
#[tokio::test]
async fn requests_without_a_host_or_a_path_are_refused_like_envoy() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    // Method, path, flags, details, forwarded-for and request id of the line ("*": added).
    type Logged = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );
    let cases: [(&[u8], u16, bool, Logged); 4] = [
        (
            b"GET / HTTP/1.1\r\n\r\n",
            400,
            true,
            ("GET", "/", "-", "missing_host_header", "-", "-"),
        ),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n",
            404,
            false,
            ("OPTIONS", "*", "-", "absolute_path_rejected", "-", "-"),
        ),
        (
            b"GET /a%00 HTTP/1.1\r\nHost: edition.cnn.com\r\nX-Forwarded-For: 203.0.113.9\r\n\
              X-Request-Id: abc\r\n\r\n",
            400,
            true,
            (
                "GET",
                "/a%00",
                "-",
                "path_normalization_failed",
                "203.0.113.9",
                "abc",
            ),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: edition.cnn.com\r\nHost: other.example\r\n\r\n",
            404,
            false,
            ("GET", "/", "NR", "route_not_found", "*", "*"),
        ),
    ];
    for (request, status, closes, (method, path, flags, details, xff, id)) in cases {
        let (got, text, closed) = raw_request(&gw, request).await;
        assert_eq!((got, text.as_str(), closed), (status, "", closes));
        let l = gw.next_line().await;
        assert_eq!(
            (
                l.method.as_str(),
                l.path.as_str(),
                l.flags.as_str(),
                l.details.as_str()
            ),
            (method, path, flags, details)
        );
        assert_eq!(l.code, status.to_string());
        if xff == "*" {
            assert_ne!(l.xff, "-", "{}", l.raw);
            assert_eq!(l.request_id.len(), 36, "{}", l.raw);
        } else {
            assert_eq!(
                (l.xff.as_str(), l.request_id.as_str()),
                (xff, id),
                "{}",
                l.raw
            );
        }
    }
    assert_eq!(up.requests(), 0);
}

/// `Connection` naming a header the proxy sets: Envoy 1.40 refuses the request with
/// `"- - HTTP/1.1" 400 DPE http1.connection_header_rejected` and `Bad Request`; naming
/// `x-request-id` strips it (a new one is sent, as always).
#[tokio::test]
async fn connection_naming_what_the_proxy_sets_like_envoy() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut gw = Gateway::start(&[&s1], &connect_to("edition.cnn.com:80", up.addr())).await;
    for named in ["x-forwarded-for", ":path", "keep-alive, x-forwarded-proto"] {
        let r = http1_get(gw.http, "edition.cnn.com", "/", &[("connection", named)])
            .await
            .unwrap();
        let details = "http1.connection_header_rejected";
        expect_codec_refusal(&mut gw, &r, 400, "Bad Request", details).await;
    }
    // `host` is removed like any named header; the request then has no host.
    let r = http1_get(gw.http, "edition.cnn.com", "/", &[("connection", "Host")])
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (400, ""));
    let l = gw.next_line().await;
    assert_eq!(
        (
            l.method.as_str(),
            l.code.as_str(),
            l.flags.as_str(),
            l.details.as_str()
        ),
        ("GET", "400", "-", "missing_host_header")
    );
    assert_eq!(up.requests(), 0);

    let id = "6c2c4550-92d4-455c-b6cb-83bf2b0e06f4";
    let r = http1_get(
        gw.http,
        "edition.cnn.com",
        "/",
        &[("connection", "x-request-id"), ("x-request-id", id)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let forwarded = r.json()["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(forwarded.len(), 36);
    assert_ne!(forwarded, id);
    assert_eq!(gw.next_line().await.request_id, forwarded);
}

#[tokio::test]
async fn hosts_file_resolves_endpoint_names() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: lab }}
spec:
  hosts: [lab.example.com]
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  resolution: DNS
  endpoints:
  - address: backend.lab.internal
    ports: {{ http: {port} }}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: egress }}
spec:
  selector: {{ istio: egressgateway }}
  servers:
  - port: {{ number: 80, name: http, protocol: HTTP }}
    hosts: [lab.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: lab }}
spec:
  hosts: [lab.example.com]
  gateways: [egress]
  http:
  - route:
    - destination: {{ host: lab.example.com, port: {{ number: 80 }} }}
"#,
        port = up.addr().port()
    );
    let dir = config_dir(
        "hosts-file",
        &[
            ("se.yaml", &yaml),
            ("hosts", "127.0.0.1 backend.lab.internal\n"),
        ],
    );
    // DNS points at a closed port: only the hosts file can answer.
    let mut gw = Gateway::start(
        &[&dir.join("se.yaml")],
        &[
            "--hosts-file".into(),
            dir.join("hosts").display().to_string(),
            "--dns-server".into(),
            closed_port().to_string(),
        ],
    )
    .await;
    let r = http1_get(gw.http, "lab.example.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(gw.next_line().await.upstream_host, up.addr().to_string());
}

#[tokio::test]
async fn custom_and_json_access_log_formats() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let s1 = scenario("s1-http");
    let mut extra = connect_to("edition.cnn.com:80", up.addr());
    extra.extend([
        "--access-log-format".to_string(),
        "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %UPSTREAM_CLUSTER% %REQ(USER-AGENT):4% v=%CONFIG_VERSION%".to_string(),
    ]);
    let mut gw = Gateway::start(&[&s1], &extra).await;
    http1_get(
        gw.http,
        "edition.cnn.com",
        "/politics",
        &[("user-agent", "curl/8")],
    )
    .await
    .unwrap();
    let line = gw
        .process
        .next_log_line(crate::common::LOG_WAIT)
        .await
        .unwrap();
    let (head, version) = line.split_once(" v=").unwrap();
    assert_eq!(head, "GET /politics 200 outbound|80||edition.cnn.com curl");
    assert_eq!(
        version.len(),
        12,
        "config version is a 12-hex-digit hash: {version}"
    );

    // More of Envoy's operators (values as Envoy 1.40 printed them for the same requests).
    let mut extra = connect_to("edition.cnn.com:80", up.addr());
    extra.extend([
        "--access-log-format".to_string(),
        "%RESPONSE_FLAGS_LONG% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %QUERY_PARAM(a)% %ACCESS_LOG_TYPE% %UPSTREAM_REMOTE_ADDRESS% %REQUEST_DURATION% %RESPONSE_DURATION%".to_string(),
    ]);
    let mut gw = Gateway::start(&[&s1], &extra).await;
    http1_get(gw.http, "edition.cnn.com", "/x?a=1&a=2", &[])
        .await
        .unwrap();
    let line = gw
        .process
        .next_log_line(crate::common::LOG_WAIT)
        .await
        .unwrap();
    let fields: Vec<&str> = line.split(' ').collect();
    let upstream = up.addr().to_string();
    assert_eq!(
        fields[..6],
        ["-", "1", "1", "DownstreamEnd", upstream.as_str(), "0"],
        "{line}"
    );
    assert!(fields[6].parse::<u64>().is_ok(), "{line}");
    http1_get(gw.http, "nowhere.example.com", "/", &[])
        .await
        .unwrap();
    let line = gw
        .process
        .next_log_line(crate::common::LOG_WAIT)
        .await
        .unwrap();
    assert_eq!(line, "NoRouteFound 0 - DownstreamEnd - 0 -");

    let mut extra = connect_to("edition.cnn.com:80", up.addr());
    extra.push("--access-log-json".to_string());
    let mut gw = Gateway::start(&[&s1], &extra).await;
    http1_get(gw.http, "edition.cnn.com", "/politics", &[])
        .await
        .unwrap();
    let line = gw
        .process
        .next_log_line(crate::common::LOG_WAIT)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/politics");
    assert_eq!(v["response_code"], 200);
    assert_eq!(v["upstream_cluster"], "outbound|80||edition.cnn.com");
    assert_eq!(v["response_flags"], "-");
    assert!(v["requested_server_name"].is_null());
}
