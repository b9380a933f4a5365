//! DestinationRule traffic policy end to end: circuit breaking (`connectionPool`), outlier
//! detection, load balancing, HTTP/2 and gRPC to the upstream. Expected replies for overflow
//! and ejection were checked against Envoy 1.40 configured as Istio configures it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use egret_test_support::{http1_get, Behavior, Http1Conn, HttpUpstream, TestDir};

use crate::common::{config_dir, Gateway, LogLine};

const HOST: &str = "api.internal.example";
/// Generous bound for things that happen "soon" (never a timing assertion).
const PATIENCE: Duration = Duration::from_secs(30);

/// Gateway + STATIC ServiceEntry (one endpoint per address, port from the `ports` map) +
/// VirtualService + a DestinationRule with `policy` as its trafficPolicy (YAML, 4-space
/// indented under `trafficPolicy:`).
fn scenario(protocol: &str, endpoints: &[SocketAddr], policy: &str) -> TestDir {
    let port_name = protocol.to_ascii_lowercase().replace('-', "");
    let mut se = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: istio-system}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  ports:
  - {{number: 80, name: {port_name}, protocol: {protocol}}}
  resolution: STATIC
  endpoints:
"
    );
    for e in endpoints {
        se.push_str(&format!(
            "  - address: {}\n    ports: {{{port_name}: {}}}\n",
            e.ip(),
            e.port()
        ));
    }
    let gw = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{HOST}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: istio-system}}
spec:
  hosts: [{HOST}]
  gateways: [egress]
  http:
  - route:
    - destination: {{host: {HOST}, port: {{number: 80}}}}
"
    );
    let dr = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: istio-system}}
spec:
  host: {HOST}
  trafficPolicy:
{policy}"
    );
    config_dir(
        "pools",
        &[("se.yaml", &se), ("gw.yaml", &gw), ("dr.yaml", &dr)],
    )
}

async fn get(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> egret_test_support::TestResponse {
    http1_get(gw.http, HOST, path, headers)
        .await
        .expect("request")
}

/// The next access-log line for `path`, skipping others.
async fn line_for(gw: &mut Gateway, path: &str) -> LogLine {
    loop {
        let l = gw.next_line().await;
        if l.path == path {
            return l;
        }
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Circuit breaking

#[tokio::test]
async fn max_connections_queues_one_and_overflows_the_next_with_503_uo() {
    // The first request holds the only connection; the others arrive meanwhile.
    let up = HttpUpstream::start(Behavior::dynamic(|r| {
        if r.index == 0 {
            Behavior::delay(Duration::from_secs(5), Behavior::Echo)
        } else {
            Behavior::Echo
        }
    }))
    .await
    .unwrap();
    let dir = scenario(
        "HTTP",
        &[up.addr()],
        "    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
",
    );
    let mut gw = Gateway::start(&[dir.path()], &[]).await;
    let addr = gw.http;
    let first = tokio::spawn(async move { http1_get(addr, HOST, "/first", &[]).await });
    wait_until("the first request upstream", || up.requests() == 1).await;
    let a = tokio::spawn(async move { http1_get(addr, HOST, "/a", &[]).await });
    let b = tokio::spawn(async move { http1_get(addr, HOST, "/b", &[]).await });
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status, 200);
    let (queued, overflow) = if a.status == 503 { (b, a) } else { (a, b) };
    // One waited for the connection and was served on it; the other overflowed at once.
    assert_eq!(queued.status, 200, "{}", queued.text());
    assert_eq!(overflow.status, 503);
    assert_eq!(
        overflow.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );
    assert_eq!(overflow.header("x-envoy-overloaded"), Some("true"));
    assert_eq!(
        overflow.headers.keys().next().map(|k| k.as_str()),
        Some("x-envoy-overloaded")
    );
    assert_eq!(up.connections(), 1, "exactly one connection was opened");
    assert_eq!(up.requests(), 2);
    assert_eq!(
        queued.json()["connection_id"],
        first.json()["connection_id"]
    );

    let mut lines = Vec::new();
    for _ in 0..3 {
        lines.push(gw.next_line().await);
    }
    let uo: Vec<&LogLine> = lines.iter().filter(|l| l.code == "503").collect();
    assert_eq!(uo.len(), 1, "{lines:#?}");
    let l = uo[0];
    assert_eq!(l.flags, "UO");
    assert_eq!(
        l.details,
        "upstream_reset_before_response_started{overflow}"
    );
    // Envoy logs no upstream host for an overflow: no host was involved.
    assert_eq!(
        (l.upstream_host.as_str(), l.upstream_local.as_str()),
        ("-", "-")
    );
    assert_eq!(l.cluster, format!("outbound|80||{HOST}"));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.code == "200" && l.flags == "-")
            .count(),
        2
    );
}

#[tokio::test]
async fn http2_max_requests_overflows_requests_in_flight() {
    let up = HttpUpstream::start(Behavior::dynamic(|r| {
        if r.path == "/slow" {
            Behavior::delay(Duration::from_secs(5), Behavior::Echo)
        } else {
            Behavior::Echo
        }
    }))
    .await
    .unwrap();
    let dir = scenario(
        "HTTP",
        &[up.addr()],
        "    connectionPool:
      http: {http2MaxRequests: 1}
",
    );
    let mut gw = Gateway::start(&[dir.path()], &[]).await;
    let addr = gw.http;
    let slow = tokio::spawn(async move { http1_get(addr, HOST, "/slow", &[]).await });
    wait_until("the slow request upstream", || up.requests() == 1).await;
    let r = get(&gw, "/fast", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
    let l = line_for(&mut gw, "/fast").await;
    assert_eq!((l.flags.as_str(), l.upstream_host.as_str()), ("UO", "-"));
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    // The slot is back: the next request goes through.
    assert_eq!(get(&gw, "/fast", &[]).await.status, 200);
}

#[tokio::test]
async fn max_requests_per_connection_opens_a_connection_per_request() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir = scenario(
        "HTTP",
        &[up.addr()],
        "    connectionPool:
      http: {maxRequestsPerConnection: 1}
      tcp: {tcpKeepalive: {time: 30s, interval: 5s, probes: 3}}
",
    );
    let gw = Gateway::start(&[dir.path()], &[]).await;
    // One keep-alive client connection, three requests.
    let mut client = Http1Conn::connect(gw.http).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = client.get(HOST, &format!("/r{i}"), &[]).await.unwrap();
        assert_eq!(r.status, 200);
        ids.push(r.json()["connection_id"].as_u64().unwrap());
        wait_until("the used connection to close", || {
            up.active_connections() == 0
        })
        .await;
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(up.connections(), 3);

    // Without the limit, the connection is reused.
    let up2 = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir2 = scenario("HTTP", &[up2.addr()], "    connectionPool: {}\n");
    let gw2 = Gateway::start(&[dir2.path()], &[]).await;
    let mut client = Http1Conn::connect(gw2.http).await.unwrap();
    for i in 0..3 {
        assert_eq!(
            client
                .get(HOST, &format!("/r{i}"), &[])
                .await
                .unwrap()
                .status,
            200
        );
    }
    assert_eq!(up2.connections(), 1);
}

/// An idle upstream connection the upstream closed is not reused: the gateway closes its own
/// side without waiting for a request (Envoy sees the close on its event loop), and the next
/// request goes out on a new connection and succeeds instead of failing `503 UC`.
#[tokio::test]
async fn idle_connections_the_upstream_closed_are_dropped_not_reused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let ended = ended_tx.clone();
            tokio::spawn(async move {
                if crate::common::read_request_head(&mut c).await.is_none() {
                    return;
                }
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Closes its side once the response is out, then waits for the gateway's.
                let _ = c.shutdown().await;
                let mut buf = [0u8; 64];
                let end = tokio::time::timeout(PATIENCE, c.read(&mut buf)).await;
                let _ = ended.send((n, matches!(end, Ok(Ok(0)))));
            });
        }
    });
    let dir = scenario("HTTP", &[addr], "    connectionPool: {}\n");
    let mut gw = Gateway::start(&[dir.path()], &[]).await;
    assert_eq!(get(&gw, "/one", &[]).await.status, 200);
    let (n, closed) = ended_rx.recv().await.expect("the first connection ended");
    assert_eq!(
        (n, closed),
        (0, true),
        "the gateway closed the connection the upstream closed"
    );
    let r = get(&gw, "/two", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "on a new connection");
    for path in ["/one", "/two"] {
        let l = line_for(&mut gw, path).await;
        assert_eq!((l.code.as_str(), l.flags.as_str()), ("200", "-"), "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// Outlier detection

/// Which upstream served a response (from the echo's `server` field).
fn served_by(r: &egret_test_support::TestResponse) -> String {
    r.json()["server"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn failing_endpoint_is_ejected_then_none_left_is_uh() {
    let bad = HttpUpstream::start(Behavior::EchoStatus(503))
        .await
        .unwrap();
    let good = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir = scenario(
        "HTTP",
        &[bad.addr(), good.addr()],
        "    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 300s
      maxEjectionPercent: 100
",
    );
    let mut gw = Gateway::start(&[dir.path()], &[]).await;
    // Istio's default retry sends each 503 on to the other endpoint, so clients see 200s
    // while the bad endpoint collects its two consecutive 5xx.
    for i in 0..6 {
        let r = get(&gw, &format!("/warm{i}"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(served_by(&r), good.addr().to_string());
    }
    assert_eq!(bad.requests(), 2, "ejected after two consecutive 5xx");
    let before = good.requests();
    for i in 0..10 {
        let r = get(&gw, &format!("/after{i}"), &[]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(bad.requests(), 2, "an ejected endpoint gets no traffic");
    assert_eq!(
        good.requests(),
        before + 10,
        "one attempt each: nothing to retry"
    );

    // Now the other one fails too: ejected as well, and with none left requests get UH.
    good.set_behavior(Behavior::EchoStatus(503));
    let mut uh = None;
    for i in 0..10 {
        let r = get(&gw, &format!("/down{i}"), &[]).await;
        assert_eq!(r.status, 503);
        if r.text() == "no healthy upstream" {
            uh = Some(format!("/down{i}"));
            break;
        }
    }
    uh.expect("UH once both endpoints are ejected");
    // With both out, a request gets UH without any attempt (as Envoy 1.40 answers).
    let (b, g) = (bad.requests(), good.requests());
    let r = get(&gw, "/none-left", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (503, "no healthy upstream")
    );
    assert_eq!((bad.requests(), good.requests()), (b, g));
    let l = line_for(&mut gw, "/none-left").await;
    assert_eq!(l.flags, "UH");
    assert_eq!(l.details, "no_healthy_upstream");
    assert_eq!(l.upstream_host, "-");
}

#[tokio::test]
async fn ejected_endpoint_comes_back_after_the_ejection_time() {
    let flaky = HttpUpstream::start(Behavior::EchoStatus(500))
        .await
        .unwrap();
    let good = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir = scenario(
        "HTTP",
        &[flaky.addr(), good.addr()],
        "    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 1s
      maxEjectionPercent: 50
",
    );
    let gw = Gateway::start(&[dir.path()], &[]).await;
    // A 500 is not retried by Istio's default policy: the client sees it once.
    let mut saw_500 = false;
    for i in 0..4 {
        let r = get(&gw, &format!("/x{i}"), &[]).await;
        saw_500 |= r.status == 500;
    }
    assert!(saw_500);
    assert_eq!(flaky.requests(), 1, "ejected after its first 5xx");
    flaky.set_behavior(Behavior::Echo);
    let deadline = Instant::now() + PATIENCE;
    while flaky.requests() == 1 {
        assert!(
            Instant::now() < deadline,
            "the ejected endpoint never came back"
        );
        assert_eq!(get(&gw, "/back", &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Load balancing

#[tokio::test]
async fn least_request_avoids_the_busy_endpoint() {
    // Whatever lands on `busy` stays in flight; `idle` answers at once.
    let busy = HttpUpstream::start(Behavior::delay(Duration::from_secs(60), Behavior::Echo))
        .await
        .unwrap();
    let idle = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir = scenario(
        "HTTP",
        &[busy.addr(), idle.addr()],
        "    loadBalancer: {simple: LEAST_REQUEST}
",
    );
    let gw = Gateway::start(&[dir.path()], &[]).await;
    let mut pending = Vec::new();
    for i in 0..24 {
        let addr = gw.http;
        let (b, d) = (busy.requests(), idle.requests());
        let path = format!("/lr{i}");
        pending.push(tokio::spawn(async move {
            http1_get(addr, HOST, &path, &[]).await
        }));
        wait_until("the request to arrive", || {
            busy.requests() > b || idle.requests() > d
        })
        .await;
    }
    // Once one request is in flight on `busy`, every later one goes to `idle` (two
    // endpoints: the less loaded always wins). The first draws are ties, so `busy` gets one
    // early (all 24 avoiding it by chance: 2^-24).
    assert_eq!(busy.requests(), 1);
    assert_eq!(idle.requests(), 23);
    for p in pending {
        p.abort();
    }
}

#[tokio::test]
async fn consistent_hash_sends_a_key_to_one_endpoint() {
    let a = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let b = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir = scenario(
        "HTTP",
        &[a.addr(), b.addr()],
        "    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
",
    );
    let gw = Gateway::start(&[dir.path()], &[]).await;
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for u in 0..16 {
            let user = format!("user-{u}");
            let r = get(&gw, &format!("/h{round}"), &[("x-user", &user)]).await;
            assert_eq!(r.status, 200);
            let by = served_by(&r);
            let first = owner.entry(user.clone()).or_insert_with(|| by.clone());
            assert_eq!(*first, by, "{user} moved");
        }
    }
    let used: std::collections::HashSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 2, "16 keys spread over both endpoints");
}

// ---------------------------------------------------------------------------------------------
// Upstream protocol

#[tokio::test]
async fn http2_service_entry_port_speaks_h2c_upstream() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir = scenario(
        "HTTP2",
        &[up.addr()],
        "    loadBalancer: {simple: ROUND_ROBIN}\n",
    );
    let mut gw = Gateway::start(&[dir.path()], &[]).await;
    // One client connection, so one worker (each worker has its own upstream connections).
    let mut client = Http1Conn::connect(gw.http).await.unwrap();
    for i in 0..3 {
        let r = client.get(HOST, &format!("/h2-{i}"), &[]).await.unwrap();
        assert_eq!(r.status, 200);
        // HTTP/1.1 in, HTTP/2 (prior knowledge, cleartext) out.
        assert_eq!(r.json()["version"], "HTTP/2");
        assert_eq!(r.json()["authority"], HOST);
    }
    // One multiplexed connection carries them all.
    assert_eq!(up.connections(), 1);
    let l = line_for(&mut gw, "/h2-0").await;
    assert_eq!((l.protocol.as_str(), l.code.as_str()), ("HTTP/1.1", "200"));

    // An HTTP port upgraded by h2UpgradePolicy.
    let up2 = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir2 = scenario(
        "HTTP",
        &[up2.addr()],
        "    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}\n",
    );
    let gw2 = Gateway::start(&[dir2.path()], &[]).await;
    assert_eq!(get(&gw2, "/u", &[]).await.json()["version"], "HTTP/2");
}

/// A client that goes away in the middle of its request body to an HTTP/2 upstream is the
/// client's doing, as with HTTP/1.1 upstreams (Envoy 1.40: `0 DC
/// downstream_remote_disconnect`): not an upstream reset, and the endpoint is not blamed —
/// hyper's HTTP/2 client reports only the stream it reset, so the request side says why.
#[tokio::test]
async fn a_client_leaving_mid_body_to_an_http2_upstream_is_dc() {
    use tokio::io::AsyncWriteExt;
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    // One failure counted against the only endpoint would eject it (`503 UH` after).
    let dir = scenario(
        "HTTP2",
        &[up.addr()],
        "    outlierDetection: {consecutive5xxErrors: 1, consecutiveGatewayErrors: 1, interval: 1s, baseEjectionTime: 300s, maxEjectionPercent: 100}\n",
    );
    let mut gw = Gateway::start(&[dir.path()], &[]).await;
    let mut c = TcpStream::connect(gw.http).await.unwrap();
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\ncontent-length: 1000\r\n\r\n0123456789");
    c.write_all(head.as_bytes()).await.unwrap();
    wait_until("the gateway to connect upstream", || up.connections() == 1).await;
    drop(c);
    let l = line_for(&mut gw, "/upload").await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("0", "DC", "downstream_remote_disconnect")
    );
    assert_eq!(l.bytes_received, 10);
    let r = get(&gw, "/after", &[]).await;
    assert_eq!(r.status, 200, "the endpoint was not ejected");
}

/// maxConnections is one limit for the whole gateway, whatever the number of workers: at the
/// limit, a request on one worker uses the connection another worker opened (HTTP/2: shares
/// it; HTTP/1.1: takes it when idle) instead of waiting for a connection of its own forever.
#[tokio::test]
async fn max_connections_is_shared_by_the_workers() {
    for protocol in ["HTTP2", "HTTP"] {
        let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
        let dir = scenario(
            protocol,
            &[up.addr()],
            "    connectionPool: {tcp: {maxConnections: 1}}\n",
        );
        let gw = Gateway::start(&[dir.path()], &["--workers".into(), "2".into()]).await;
        // Two client connections held open: the second goes to the other worker.
        let mut conns = [
            Http1Conn::connect(gw.http).await.unwrap(),
            Http1Conn::connect(gw.http).await.unwrap(),
        ];
        for i in 0..4 {
            let c = &mut conns[i % 2];
            let r =
                tokio::time::timeout(Duration::from_secs(30), c.get(HOST, &format!("/{i}"), &[]))
                    .await
                    .unwrap_or_else(|_| panic!("{protocol}: request {i} never answered"))
                    .unwrap();
            assert_eq!(r.status, 200, "{protocol}: {}", r.text());
        }
        assert_eq!(up.connections(), 1, "{protocol}");
    }
}

/// An HTTP2 cluster with two endpoints and `maxConnections: 1`: the first endpoint's
/// connection holds the only slot and, idle, never gives it back. Envoy then opens a
/// connection to the second endpoint anyway (a pool with no connection to a host always
/// may); so does Egret, instead of waiting forever.
#[tokio::test]
async fn http2_at_the_connection_limit_still_reaches_another_endpoint() {
    let a = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let b = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir = scenario(
        "HTTP2",
        &[a.addr(), b.addr()],
        "    loadBalancer: {simple: ROUND_ROBIN}\n    connectionPool: {tcp: {maxConnections: 1}}\n",
    );
    let gw = Gateway::start(&[dir.path()], &[]).await;
    let mut client = Http1Conn::connect(gw.http).await.unwrap();
    for i in 0..4 {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            client.get(HOST, &format!("/{i}"), &[]),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} never answered"))
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Round robin: two requests each, on one multiplexed connection each.
    assert_eq!((a.requests(), b.requests()), (2, 2));
    assert_eq!((a.connections(), b.connections()), (1, 1));
}

// A hand-written gRPC unary call (length-prefixed message, `te: trailers`, `grpc-status` in
// the trailers) over hyper's HTTP/2, client and server, so the exact trailers each side sees
// can be asserted; tonic end to end is `tonic_client_to_tonic_server_through_the_gateway`.

/// `HelloRequest { name }` / `HelloReply { message }`: protobuf field 1, a string.
fn proto_string(s: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0x0a);
    b.put_u8(s.len() as u8);
    b.put_slice(s.as_bytes());
    b.freeze()
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// The message in a gRPC body (one frame), as a string field.
fn grpc_message(body: &Bytes) -> Option<String> {
    let mut b = body.clone();
    if b.remaining() < 5 || b.get_u8() != 0 {
        return None;
    }
    let len = b.get_u32() as usize;
    let msg = b.get(..len)?;
    let (tag, n) = (*msg.first()?, *msg.get(1)? as usize);
    if tag != 0x0a {
        return None;
    }
    Some(String::from_utf8_lossy(msg.get(2..2 + n)?).into_owned())
}

/// A body of data frames, then trailers.
struct GrpcBody(VecDeque<Frame<Bytes>>);

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

async fn greeter(
    req: Request<Incoming>,
    calls: Arc<AtomicUsize>,
) -> Result<Response<GrpcBody>, Infallible> {
    calls.fetch_add(1, Ordering::SeqCst);
    let ok_headers = req.version() == http::Version::HTTP_2
        && req.headers().get("content-type").map(|v| v.as_bytes()) == Some(b"application/grpc")
        && req.headers().get("te").map(|v| v.as_bytes()) == Some(b"trailers")
        && req.uri().path() == "/helloworld.Greeter/SayHello";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut trailers = HeaderMap::new();
    let mut frames = VecDeque::new();
    match grpc_message(&body) {
        Some(name) if ok_headers && name != "nobody" => {
            frames.push_back(Frame::data(grpc_frame(&proto_string(&format!(
                "hello {name}"
            )))));
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
        }
        Some(_) if ok_headers => {
            trailers.insert("grpc-status", HeaderValue::from_static("5"));
            trailers.insert("grpc-message", HeaderValue::from_static("no such person"));
        }
        _ => {
            trailers.insert("grpc-status", HeaderValue::from_static("3"));
            trailers.insert("grpc-message", HeaderValue::from_static("bad request"));
        }
    }
    frames.push_back(Frame::trailers(trailers));
    let mut resp = Response::new(GrpcBody(frames));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    Ok(resp)
}

async fn grpc_server() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| greeter(req, c.clone()));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, calls, task)
}

/// One unary call through the gateway: (HTTP status, reply message, trailers).
async fn say_hello(gw: SocketAddr, name: &str) -> (u16, Option<String>, HeaderMap) {
    let stream = TcpStream::connect(gw).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{HOST}/helloworld.Greeter/SayHello"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(&proto_string(name))))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (status, grpc_message(&collected.to_bytes()), trailers)
}

#[tokio::test]
async fn grpc_unary_call_keeps_trailers_end_to_end() {
    let (up, calls, _server) = grpc_server().await;
    let dir = scenario("GRPC", &[up], "    loadBalancer: {simple: ROUND_ROBIN}\n");
    let mut gw = Gateway::start(&[dir.path()], &[]).await;

    let (status, reply, trailers) = say_hello(gw.http, "egret").await;
    assert_eq!(status, 200);
    assert_eq!(reply.as_deref(), Some("hello egret"));
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    let l = gw.next_line().await;
    assert_eq!(
        (l.method.as_str(), l.path.as_str(), l.protocol.as_str()),
        ("POST", "/helloworld.Greeter/SayHello", "HTTP/2")
    );
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("200", "-"));

    // An error status travels in the trailers too (HTTP 200, grpc-status 5).
    let (status, reply, trailers) = say_hello(gw.http, "nobody").await;
    assert_eq!((status, reply), (200, None));
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"no such person"[..])
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// A real gRPC stack: tonic's client and server (tonic-health's generated `grpc.health.v1`
// service, so no protoc), through the gateway's HTTP listener as h2c with an HTTP/2 (`GRPC`)
// upstream: a unary call, a server-streaming call and an error status.

async fn tonic_health_server() -> (SocketAddr, tonic_health::server::HealthReporter) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("egret.Echo", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, reporter)
}

#[tokio::test]
async fn tonic_client_to_tonic_server_through_the_gateway() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let (up, mut reporter) = tonic_health_server().await;
    let dir = scenario("GRPC", &[up], "    loadBalancer: {simple: ROUND_ROBIN}\n");
    let mut gw = Gateway::start(&[dir.path()], &[]).await;
    // The channel connects to the gateway; `:authority` names the external service.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.http))
        .unwrap()
        .origin(format!("http://{HOST}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let ask = |service: &str| {
        tonic::Request::new(HealthCheckRequest {
            service: service.to_string(),
        })
    };

    // Unary: tonic reads `grpc-status: 0` from the trailers, or the call would fail.
    let reply = client.check(ask("egret.Echo")).await.expect("check");
    assert_eq!(reply.get_ref().status, ServingStatus::Serving as i32);
    let l = gw.next_line().await;
    assert_eq!(
        (l.method.as_str(), l.path.as_str(), l.protocol.as_str()),
        ("POST", "/grpc.health.v1.Health/Check", "HTTP/2")
    );
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("200", "-", "via_upstream")
    );
    assert_eq!(l.authority, HOST);
    assert_eq!(l.upstream_host, up.to_string());
    assert_eq!(l.cluster, format!("outbound|80||{HOST}"));
    assert_eq!(l.user_agent, format!("tonic/{}", "0.14.9"));

    // An error status (trailers-only response, HTTP 200) reaches the client as sent.
    let err = client.check(ask("nobody")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "service not registered");
    let l = gw.next_line().await;
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("200", "-"));

    // Server streaming: each status change arrives as it happens, then the stream ends with
    // `grpc-status: 0` in the trailers.
    let mut stream = client
        .watch(ask("egret.Echo"))
        .await
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("first message")
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    reporter
        .set_service_status("egret.Echo", tonic_health::ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("second message")
        .unwrap()
        .unwrap();
    assert_eq!(second.status, ServingStatus::NotServing as i32);
    reporter.clear_service_status("egret.Echo").await;
    let end = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("end of stream")
        .expect("clean end (grpc-status 0)");
    assert!(end.is_none());
    let trailers = stream
        .trailers()
        .await
        .expect("trailers")
        .unwrap_or_default();
    assert!(
        trailers.get("grpc-status").is_none_or(|v| v == "0"),
        "{trailers:?}"
    );
    let l = gw.next_line().await;
    assert_eq!(
        (l.path.as_str(), l.code.as_str(), l.flags.as_str()),
        ("/grpc.health.v1.Health/Watch", "200", "-")
    );
    // Two length-prefixed messages of 2 bytes each (field 1, varint) came back.
    assert_eq!(l.bytes_sent, 14);
}
