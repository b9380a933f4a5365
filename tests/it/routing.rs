//! Issue 5, route level: retries, rewrites and redirects, header operations, fault
//! injection, mirroring, WebSocket upgrades and streaming — through the real binary, with
//! in-process upstreams that misbehave on purpose. Expected statuses, bodies, flags and
//! details were checked against Envoy 1.40 configured as Istio configures a gateway.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use egret_test_support::client::request;
use egret_test_support::upstream::pattern_bytes;
use egret_test_support::{closed_port, http1_get, Behavior, Http1Conn, HttpUpstream, TestDir};

use crate::common::{config_dir, Gateway};

const HOST: &str = "api.example.com";
/// Generous bound for something that must happen (never a timing assertion).
const WAIT: Duration = Duration::from_secs(15);

const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [api.example.com, mirror.example.com, shadow.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [api.example.com]
"#;

/// A gateway whose VirtualService for `api.example.com` has these `http` rules (YAML list
/// items, indented by 4), with each `(host, addr)` pointed at an in-process upstream.
struct Setup {
    gw: Gateway,
    _dir: TestDir,
}

async fn start(rules: &str, targets: &[(&str, SocketAddr)]) -> Setup {
    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: api}}\nspec:\n  hosts: [api.example.com]\n  gateways: [egress]\n  http:\n{rules}"
    );
    let dir = config_dir("routing", &[("base.yaml", BASE), ("vs.yaml", &vs)]);
    let mut args = Vec::new();
    for (host, addr) in targets {
        args.push("--connect-to".to_string());
        args.push(format!("{host}:80:{addr}"));
    }
    let gw = Gateway::start(&[dir.path()], &args).await;
    assert!(
        !gw.process.stderr().contains("not supported"),
        "a field was not implemented:\n{}",
        gw.process.stderr()
    );
    Setup { gw, _dir: dir }
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

async fn post(gw: &Gateway, path: &str, body: Bytes) -> egret_test_support::TestResponse {
    let req = request(Method::POST, path, &[("host", HOST)], body).expect("request");
    Http1Conn::connect(gw.http)
        .await
        .expect("connect")
        .send(req)
        .await
        .expect("response")
}

fn attempts(up: &HttpUpstream) -> Vec<String> {
    up.recorded()
        .iter()
        .map(|r| r.header("x-envoy-attempt-count").unwrap_or("-").to_string())
        .collect()
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never met"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Several VirtualServices for one host

#[tokio::test]
async fn virtual_services_for_one_host_merge_with_catch_alls_last() {
    let main = HttpUpstream::start(Behavior::fixed(200, "main"))
        .await
        .unwrap();
    let special = HttpUpstream::start(Behavior::fixed(200, "special"))
        .await
        .unwrap();
    // `a-all.yaml` (read first) sends everything to api.example.com; `b-special.yaml` sends
    // /special to shadow.example.com. Istio merges both into the host's routes and moves the
    // catch-all to the end, so /special is not shadowed.
    let all = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: all}
spec:
  hosts: [api.example.com]
  gateways: [egress]
  http:
  - name: everything
    route: [{destination: {host: api.example.com}}]
  - name: after-the-catch-all
    match: [{uri: {prefix: /special}}]
    route: [{destination: {host: api.example.com}}]
";
    let specific = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: special}
spec:
  hosts: [api.example.com]
  gateways: [egress]
  http:
  - name: special
    match: [{uri: {prefix: /special}}]
    route: [{destination: {host: shadow.example.com}}]
";
    let dir = config_dir(
        "vs-merge",
        &[
            ("base.yaml", BASE),
            ("a-all.yaml", all),
            ("b-special.yaml", specific),
        ],
    );
    let args = [
        "--connect-to".to_string(),
        format!("{HOST}:80:{}", main.addr()),
        "--connect-to".to_string(),
        format!("shadow.example.com:80:{}", special.addr()),
    ];
    let mut gw = Gateway::start(&[dir.path()], &args).await;
    let r = get(&gw, "/special/x", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"special"[..]));
    let l = gw.next_line().await;
    assert_eq!(
        (l.route.as_str(), l.cluster.as_str()),
        ("special", "outbound|80||shadow.example.com")
    );
    let r = get(&gw, "/other", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"main"[..]));
    let l = gw.next_line().await;
    assert_eq!(
        (l.route.as_str(), l.cluster.as_str()),
        ("everything", format!("outbound|80||{HOST}").as_str())
    );
    assert_eq!((main.requests(), special.requests()), (1, 1));
}

// ---------------------------------------------------------------------------------------------
// 1. Retries

#[tokio::test]
async fn retry_on_5xx_makes_three_attempts_then_returns_the_500_with_urx() {
    let up = HttpUpstream::start(Behavior::fixed(500, "broken"))
        .await
        .unwrap();
    let mut s = start(
        "
  - retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: api.example.com}}]
",
        &[(HOST, up.addr())],
    )
    .await;
    let r = get(&s.gw, "/flaky", &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (500, "broken"));
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("500", "URX", "via_upstream")
    );
    // Exactly 1 try + 2 retries arrived, numbered as Istio's `include_request_attempt_count`.
    assert_eq!(attempts(&up), ["1", "2", "3"]);
}

#[tokio::test]
async fn default_policy_retries_503_but_not_500_and_succeeds_without_flags() {
    let up = HttpUpstream::start(Behavior::dynamic(|r| {
        match (r.path.as_str(), r.header("x-envoy-attempt-count")) {
            ("/once", Some("1")) => Behavior::fixed(503, ""),
            ("/500", _) => Behavior::fixed(500, "no"),
            _ => Behavior::Echo,
        }
    }))
    .await
    .unwrap();
    let mut s = start(
        "
  - route: [{destination: {host: api.example.com}}]
",
        &[(HOST, up.addr())],
    )
    .await;
    let r = get(&s.gw, "/once", &[]).await;
    assert_eq!(r.status, 200);
    let l = s.gw.next_line().await;
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("200", "-"));
    assert_eq!(attempts(&up), ["1", "2"]);

    let r = get(&s.gw, "/500", &[]).await;
    assert_eq!(r.status, 500);
    let l = s.gw.next_line().await;
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("500", "-"));
    assert_eq!(
        up.requests(),
        3,
        "Istio's default policy does not retry a 500"
    );
}

#[tokio::test]
async fn retry_on_reset_and_disabled_retries() {
    let up = HttpUpstream::start(Behavior::Reset).await.unwrap();
    let closed = closed_port();
    let mut s = start(
        "
  - match: [{uri: {prefix: /reset}}]
    retries: {attempts: 2, retryOn: reset}
    route: [{destination: {host: api.example.com}}]
  - match: [{uri: {prefix: /off}}]
    retries: {attempts: 0}
    route: [{destination: {host: shadow.example.com}}]
",
        &[(HOST, up.addr()), ("shadow.example.com", closed)],
    )
    .await;
    let r = get(&s.gw, "/reset", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.text(),
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection termination"
    );
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        (
            "URX,UC",
            "upstream_reset_before_response_started{connection_termination}"
        )
    );
    assert_eq!(up.requests(), 3);

    // `attempts: 0`: a refused connect is not retried (no `URX`).
    let r = get(&s.gw, "/off", &[]).await;
    assert_eq!(
        r.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    );
    let l = s.gw.next_line().await;
    assert_eq!(l.flags, "UF");
}

#[tokio::test]
async fn per_try_timeout_gives_504_ut_upstream_per_try_timeout() {
    let up = HttpUpstream::start(Behavior::delay(Duration::from_secs(5), Behavior::Echo))
        .await
        .unwrap();
    let mut s = start(
        "
  - match: [{uri: {prefix: /retried}}]
    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}
    route: [{destination: {host: api.example.com}}]
  - match: [{uri: {prefix: /default}}]
    retries: {attempts: 2, perTryTimeout: 200ms}
    route: [{destination: {host: api.example.com}}]
",
        &[(HOST, up.addr())],
    )
    .await;
    let r = get(&s.gw, "/retried", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (504, "upstream request timeout")
    );
    let l = s.gw.next_line().await;
    assert_eq!(
        (
            l.flags.as_str(),
            l.details.as_str(),
            l.upstream_service_time.as_str()
        ),
        ("URX,UT", "upstream_per_try_timeout", "-")
    );
    assert_eq!(attempts(&up), ["1", "2", "3"]);
    // Envoy tells the upstream how long it waits.
    assert!(up
        .recorded()
        .iter()
        .all(|r| r.header("x-envoy-expected-rq-timeout-ms") == Some("200")));

    // Istio's default retryOn does not cover a per-try timeout (Envoy 1.40).
    let r = get(&s.gw, "/default", &[]).await;
    assert_eq!(r.status, 504);
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("UT", "upstream_per_try_timeout")
    );
    assert_eq!(up.requests(), 4);
}

#[tokio::test]
async fn request_bodies_are_replayed_within_the_buffer_only() {
    let up = HttpUpstream::start(Behavior::dynamic(|r| {
        if r.header("x-envoy-attempt-count") == Some("1") {
            Behavior::fixed(503, "")
        } else {
            Behavior::EchoBody
        }
    }))
    .await
    .unwrap();
    let mut s = start(
        "
  - route: [{destination: {host: api.example.com}}]
",
        &[(HOST, up.addr())],
    )
    .await;
    let small = pattern_bytes(100_000);
    let r = post(&s.gw, "/small", small.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, small, "the retry carried the same body");
    let l = s.gw.next_line().await;
    assert_eq!((l.flags.as_str(), l.bytes_received), ("-", 100_000));
    assert_eq!(
        up.recorded().iter().map(|r| r.body_len).collect::<Vec<_>>(),
        [100_000, 100_000]
    );

    // Past the 1 MiB replay buffer the request is sent once (Envoy: no retry, no `URX`).
    let big = pattern_bytes(3_000_000);
    let r = post(&s.gw, "/big", big).await;
    assert_eq!(r.status, 503);
    let l = s.gw.next_line().await;
    assert_eq!((l.flags.as_str(), l.bytes_received), ("-", 3_000_000));
    assert_eq!(up.requests(), 3);
}

/// An upstream for one POST per connection: the first `early` connections are answered
/// `503` as soon as the request head is in (the body is then read and dropped), later ones
/// read the whole body (`content-length`) and answer `200` with its length. Records each
/// attempt's `x-envoy-attempt-count` and the body bytes it got.
async fn early_answer_upstream(early: usize) -> (SocketAddr, Arc<Mutex<Vec<(String, usize)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut sock, _)) = listener.accept().await {
            n += 1;
            let record = record.clone();
            tokio::spawn(async move {
                let head = read_head(&mut sock).await.to_ascii_lowercase();
                let field = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                        .unwrap_or_default()
                };
                let attempt = field("x-envoy-attempt-count:");
                let length: usize = field("content-length:").parse().unwrap_or(0);
                let i = {
                    let mut r = record.lock().unwrap();
                    r.push((attempt, 0));
                    r.len() - 1
                };
                if n <= early {
                    let _ = sock
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
                let mut got = 0;
                let mut buf = vec![0u8; 64 * 1024];
                while got < length {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            got += k;
                            record.lock().unwrap()[i].1 = got;
                        }
                    }
                }
                if n > early {
                    let reply = format!("{got}");
                    let _ = sock
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                                reply.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_request_is_retried_while_its_body_is_still_arriving() {
    // Envoy 1.40 retries a request whose upstream answered 503 before the body was complete
    // (the body so far is within the buffer): the retry replays it and reads on.
    let (up, seen) = early_answer_upstream(2).await;
    let mut s = start(
        "
  - route: [{destination: {host: api.example.com}}]
",
        &[(HOST, up)],
    )
    .await;
    let body = pattern_bytes(300_000);
    let mut c = TcpStream::connect(s.gw.http).await.unwrap();
    c.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    c.write_all(&body[..100_000]).await.unwrap();
    // The rest of the body only once the third attempt (Istio's default: 2 retries on 503)
    // has reached the upstream: the first two were answered while it was still arriving.
    wait_until(|| seen.lock().unwrap().len() == 3).await;
    c.write_all(&body[100_000..]).await.unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut reply = [0u8; 6];
    c.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"300000", "the last attempt got the whole body");
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.bytes_received),
        ("200", "-", 300_000)
    );
    let attempts: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(a, _)| a.clone())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
}

#[tokio::test]
async fn client_x_envoy_headers_cannot_steer_the_gateway_or_forge_the_log() {
    let up = HttpUpstream::start(Behavior::fixed(500, "")).await.unwrap();
    let mut s = start(
        "
  - route: [{destination: {host: api.example.com}}]
",
        &[(HOST, up.addr())],
    )
    .await;
    let r = get(
        &s.gw,
        "/real",
        &[
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-max-retries", "5"),
            ("x-envoy-original-path", "/forged"),
            ("x-envoy-upstream-rq-timeout-ms", "1"),
            ("x-envoy-custom", "kept"),
        ],
    )
    .await;
    assert_eq!(r.status, 500);
    let l = s.gw.next_line().await;
    assert_eq!(l.path, "/real");
    assert_eq!(up.requests(), 1, "the client's x-envoy-retry-on is ignored");
    let seen = up.last_request().unwrap();
    for h in [
        "x-envoy-retry-on",
        "x-envoy-max-retries",
        "x-envoy-original-path",
        "x-envoy-upstream-rq-timeout-ms",
    ] {
        assert_eq!(seen.header(h), None, "{h} reached the upstream");
    }
    assert_eq!(seen.header("x-envoy-custom"), Some("kept"));
}

// ---------------------------------------------------------------------------------------------
// 2. Rewrites and redirects

#[tokio::test]
async fn rewrites_reach_the_upstream_while_the_log_shows_the_original_path() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let mut s = start(
        r#"
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: internal.example.com}
    route: [{destination: {host: api.example.com}}]
  - match: [{uri: {prefix: /rx}}]
    rewrite:
      uriRegexRewrite: {match: '^/rx/([^/]+)/(.*)$', rewrite: '/\2/\1'}
    route: [{destination: {host: api.example.com}}]
  - match: [{uri: {exact: /exact}}]
    rewrite: {uri: /whole}
    route: [{destination: {host: api.example.com}}]
"#,
        &[(HOST, up.addr())],
    )
    .await;
    let r = get(&s.gw, "/old/x?q=1", &[]).await;
    let echo = r.json();
    assert_eq!(echo["path"], "/new/x?q=1");
    assert_eq!(echo["headers"]["host"], "internal.example.com");
    assert_eq!(echo["headers"]["x-envoy-original-path"], "/old/x?q=1");
    assert_eq!(echo["headers"]["x-envoy-original-host"], HOST);
    let l = s.gw.next_line().await;
    // `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%` and the rewritten authority, as Envoy logs them.
    assert_eq!(
        (l.path.as_str(), l.authority.as_str()),
        ("/old/x?q=1", "internal.example.com")
    );

    let r = get(&s.gw, "/rx/one/two/three?k=v", &[]).await;
    assert_eq!(r.json()["path"], "/two/three/one?k=v");
    assert_eq!(s.gw.next_line().await.path, "/rx/one/two/three?k=v");

    let r = get(&s.gw, "/exact?a=b", &[]).await;
    assert_eq!(r.json()["path"], "/whole?a=b");
    assert_eq!(s.gw.next_line().await.path, "/exact?a=b");
}

#[tokio::test]
async fn redirects_are_answered_locally() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let mut s = start(
        "
  - match: [{uri: {prefix: /moved}}]
    redirect: {uri: /new}
    headers: {response: {set: {x-route: moved}}}
  - match: [{uri: {prefix: /elsewhere}}]
    redirect: {authority: other.example.com, port: 8443, scheme: https, redirectCode: 302}
  - route: [{destination: {host: api.example.com}}]
",
        &[(HOST, up.addr())],
    )
    .await;
    let r = get(&s.gw, "/moved/x?q=1", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("http://api.example.com/new?q=1"));
    assert_eq!(r.header("content-length"), Some("0"));
    assert_eq!(r.header("x-route"), Some("moved"));
    assert!(r.body.is_empty());
    let l = s.gw.next_line().await;
    assert_eq!(
        (
            l.code.as_str(),
            l.flags.as_str(),
            l.details.as_str(),
            l.cluster.as_str()
        ),
        ("301", "-", "direct_response", "-")
    );

    let r = get(&s.gw, "/elsewhere/a?b", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("https://other.example.com:8443/elsewhere/a?b")
    );
    s.gw.next_line().await;
    assert_eq!(up.requests(), 0, "redirects never reach an upstream");
}

// ---------------------------------------------------------------------------------------------
// 3. Headers

#[tokio::test]
async fn header_operations_at_route_and_destination_level() {
    let up = HttpUpstream::start(Behavior::Fixed {
        status: 200,
        headers: vec![
            ("x-upstream".into(), "original".into()),
            ("x-secret".into(), "s3cr3t".into()),
        ],
        body: Bytes::from_static(b"ok"),
    })
    .await
    .unwrap();
    let mut s = start(
        "
  - match: [{uri: {prefix: /weighted}}]
    headers: {request: {set: {x-which: route}}}
    route:
    - destination: {host: api.example.com}
      weight: 100
      headers: {request: {set: {x-which: destination, x-only-dest: '1'}}}
    - destination: {host: mirror.example.com}
      weight: 0
  - headers:
      request:
        set: {x-set: route}
        add: {x-add: route}
        remove: [x-drop]
      response:
        set: {x-upstream: replaced}
        add: {x-added: route}
        remove: [x-secret, server]
    route:
    - destination: {host: api.example.com}
      headers:
        request: {set: {x-dest: 'yes'}}
        response: {add: {x-dest-resp: 'yes'}}
",
        &[(HOST, up.addr())],
    )
    .await;
    let r = get(
        &s.gw,
        "/h",
        &[("x-set", "client"), ("x-add", "client"), ("x-drop", "1")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("replaced"));
    assert_eq!(r.header("x-added"), Some("route"));
    assert_eq!(r.header("x-dest-resp"), Some("yes"));
    assert_eq!(r.header("x-secret"), None);
    // Set by the connection manager after the route's operations, as in Envoy 1.40.
    assert_eq!(r.header("server"), Some("istio-envoy"));
    let seen = up.last_request().unwrap();
    assert_eq!(seen.header("x-set"), Some("route"));
    let adds: Vec<&str> = seen
        .headers
        .get_all("x-add")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(adds, ["client", "route"]);
    assert_eq!(seen.header("x-drop"), None);
    assert_eq!(seen.header("x-dest"), Some("yes"));
    s.gw.next_line().await;

    // With several destinations, the destination's operations come first and the rule's
    // win (Envoy's default order; with one destination Istio merges them the other way).
    let r = get(&s.gw, "/weighted", &[]).await;
    assert_eq!(r.status, 200);
    let seen = up.last_request().unwrap();
    assert_eq!(seen.header("x-which"), Some("route"));
    assert_eq!(seen.header("x-only-dest"), Some("1"));
    s.gw.next_line().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Fault injection

#[tokio::test]
async fn faults_abort_and_delay_with_fi_and_di() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let mut s = start(
        "
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: api.example.com}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 200ms, percentage: {value: 100}}}
    route: [{destination: {host: api.example.com}}]
  - match: [{uri: {prefix: /both}}]
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 100}}
      abort: {httpStatus: 503, percentage: {value: 100}}
    route: [{destination: {host: api.example.com}}]
  - match: [{uri: {prefix: /grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: api.example.com}}]
  - match: [{uri: {prefix: /never}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 0}}}
    route: [{destination: {host: api.example.com}}]
",
        &[(HOST, up.addr())],
    )
    .await;
    let r = get(&s.gw, "/abort", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (418, "fault filter abort")
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("418", "FI", "fault_filter_abort")
    );
    // Envoy logs the route's cluster, though nothing was sent to it.
    assert_eq!(
        (l.cluster.as_str(), l.upstream_host.as_str()),
        ("outbound|80||api.example.com", "-")
    );

    let r = get(&s.gw, "/delay", &[]).await;
    assert_eq!(r.status, 200);
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("200", "DI", "via_upstream")
    );

    let r = get(&s.gw, "/both", &[]).await;
    assert_eq!(r.status, 503);
    let l = s.gw.next_line().await;
    assert_eq!(l.flags, "DI,FI");

    let req = request(
        Method::POST,
        "/grpc",
        &[("host", HOST), ("content-type", "application/grpc")],
        Bytes::new(),
    )
    .unwrap();
    let r = Http1Conn::connect(s.gw.http)
        .await
        .unwrap()
        .send(req)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("14"));
    assert_eq!(r.header("grpc-message"), Some("fault filter abort"));
    assert_eq!(s.gw.next_line().await.flags, "FI");

    let r = get(&s.gw, "/never", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(s.gw.next_line().await.flags, "-");
    assert_eq!(
        up.requests(),
        2,
        "only /delay and /never reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Mirroring

#[tokio::test]
async fn mirror_gets_a_shadow_copy_and_no_log_line() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let mirror = HttpUpstream::start(Behavior::fixed(500, "mirror answers are dropped"))
        .await
        .unwrap();
    let closed = closed_port();
    let mut s = start(
        "
  - match: [{uri: {prefix: /broken-mirror}}]
    route: [{destination: {host: api.example.com}}]
    mirror: {host: shadow.example.com}
  - route: [{destination: {host: api.example.com}}]
    mirror: {host: mirror.example.com}
    mirrorPercentage: {value: 100}
",
        &[
            (HOST, up.addr()),
            ("mirror.example.com", mirror.addr()),
            ("shadow.example.com", closed),
        ],
    )
    .await;
    let r = get(&s.gw, "/copy?x=1", &[]).await;
    assert_eq!(r.status, 200);
    wait_until(|| mirror.requests() == 1).await;
    let shadow = mirror.last_request().unwrap();
    assert_eq!(shadow.path, "/copy?x=1");
    assert_eq!(shadow.authority.as_deref(), Some("api.example.com-shadow"));
    assert_eq!(shadow.header("x-envoy-internal"), Some("true"));
    let primary = up.last_request().unwrap();
    assert_eq!(
        shadow.header("x-request-id"),
        primary.header("x-request-id")
    );
    let l = s.gw.next_line().await;
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("200", "-"));

    // A body is copied too, streamed as it arrives whatever its size (Envoy 1.40's
    // streaming shadows: a 5 MiB POST reaches the mirror whole).
    let body = pattern_bytes(20_000);
    let r = post(&s.gw, "/upload", body).await;
    assert_eq!(r.status, 200);
    wait_until(|| mirror.requests() == 2).await;
    assert_eq!(mirror.last_request().unwrap().body_len, 20_000);
    s.gw.next_line().await;
    let big = pattern_bytes(5 * 1024 * 1024);
    let r = post(&s.gw, "/upload", big).await;
    assert_eq!(r.status, 200);
    wait_until(|| mirror.requests() == 3).await;
    let shadow = mirror.last_request().unwrap();
    assert_eq!(
        (shadow.body_len, shadow.header("content-length")),
        (5 * 1024 * 1024, Some("5242880"))
    );
    assert_eq!(up.last_request().unwrap().body_len, 5 * 1024 * 1024);
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.bytes_received),
        ("200", 5 * 1024 * 1024)
    );

    // A mirror that cannot be reached changes nothing for the client.
    let r = get(&s.gw, "/broken-mirror", &[]).await;
    assert_eq!(r.status, 200);
    let l = s.gw.next_line().await;
    assert_eq!((l.code.as_str(), l.flags.as_str()), ("200", "-"));

    // The shadows wrote no access-log line of their own (Envoy 1.40 neither).
    assert!(
        s.gw.process
            .next_log_line(Duration::from_millis(500))
            .await
            .is_none(),
        "a mirror was logged"
    );
    assert_eq!(up.requests(), 4);
}

// ---------------------------------------------------------------------------------------------
// 6. Upgrades and streaming

/// A raw upstream: answers `Upgrade: websocket` with 101 and echoes bytes (or, on
/// `/ws-close`, sends `bye` and closes); answers anything else with a plain 200. Records
/// each request head.
async fn websocket_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let head = read_head(&mut sock).await;
                seen.lock().unwrap().push(head.clone());
                if head.starts_with("GET /denied-ws") {
                    let _ = sock
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found")
                        .await;
                    return;
                }
                if !head.to_ascii_lowercase().contains("upgrade: websocket")
                    || head.starts_with("GET /no-ws")
                {
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno")
                        .await;
                    return;
                }
                let _ = sock
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
                    .await;
                if head.starts_with("GET /ws-close") {
                    let _ = sock.write_all(b"bye").await;
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, heads)
}

/// Reads an HTTP head (through the blank line) byte by byte.
async fn read_head(sock: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match sock.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn upgrade_request(path: &str, upgrade: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    let (ws, heads) = websocket_upstream().await;
    let mut s = start(
        "
  - route: [{destination: {host: api.example.com}}]
",
        &[(HOST, ws)],
    )
    .await;
    let mut c = TcpStream::connect(s.gw.http).await.unwrap();
    // A plain request first: the upgrade then comes on a kept-alive connection (one whose
    // HTTP state was released and rebuilt in between, when idle buffers are released at once).
    c.write_all(format!("GET /no-ws HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut c).await.starts_with("HTTP/1.1 200"));
    let mut no = [0u8; 2];
    c.read_exact(&mut no).await.unwrap();
    assert_eq!(&no, b"no");
    assert_eq!(s.gw.next_line().await.code, "200");
    c.write_all(upgrade_request("/ws", "websocket").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert!(
        lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    for msg in [&b"hello websocket"[..], b"second frame"] {
        c.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, c.read_exact(&mut back))
            .await
            .expect("echo")
            .unwrap();
        assert_eq!(back, msg);
    }
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut rest)).await;
    let l = s.gw.next_line().await;
    // Envoy 1.40: the client ending the tunnel is `DC`; the tunneled bytes are counted.
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("101", "DC", "downstream_remote_disconnect")
    );
    assert_eq!((l.bytes_received, l.bytes_sent), (27, 27));
    let up_head = heads.lock().unwrap()[1].to_ascii_lowercase();
    assert!(up_head.starts_with("get /ws "), "{up_head}");
    assert!(up_head.contains("upgrade: websocket") && up_head.contains("connection: upgrade"));
    assert!(up_head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="));

    // The upstream ending the tunnel is `UC`.
    let mut c = TcpStream::connect(s.gw.http).await.unwrap();
    c.write_all(upgrade_request("/ws-close", "websocket").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut c).await.starts_with("HTTP/1.1 101"));
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut rest)).await;
    assert_eq!(rest, b"bye");
    let l = s.gw.next_line().await;
    assert_eq!(
        (
            l.code.as_str(),
            l.flags.as_str(),
            l.details.as_str(),
            l.bytes_sent
        ),
        (
            "101",
            "UC",
            "upstream_reset_after_response_started{connection_termination}",
            3
        )
    );
}

#[tokio::test]
async fn upgrades_other_than_websocket_and_connect_are_refused() {
    let (ws, heads) = websocket_upstream().await;
    let mut s = start(
        "
  - route: [{destination: {host: api.example.com}}]
",
        &[(HOST, ws)],
    )
    .await;
    // Envoy 1.40 with Istio's upgrade_configs: `403 upgrade_failed`.
    let mut c = TcpStream::connect(s.gw.http).await.unwrap();
    c.write_all(upgrade_request("/x", "foo").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.details.as_str()),
        ("403", "upgrade_failed")
    );

    // An upstream that does not switch: its status, no body, the connection closed.
    let mut c = TcpStream::connect(s.gw.http).await.unwrap();
    c.write_all(upgrade_request("/no-ws", "websocket").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("content-length: 0") && text.ends_with("\r\n\r\n"),
        "{text}"
    );
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.details.as_str()),
        ("200", "websocket_handshake_unsuccessful")
    );
    // One that refuses with an error: relayed with its body, the connection closed (Envoy
    // 1.40: `via_upstream`, no `x-envoy-upstream-service-time`).
    let mut c = TcpStream::connect(s.gw.http).await.unwrap();
    c.write_all(upgrade_request("/denied-ws", "websocket").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 404"), "{text}");
    assert!(
        text.contains("\r\nconnection: close\r\n")
            && !text.contains("x-envoy-upstream-service-time")
            && text.ends_with("\r\n\r\nnot found"),
        "{text}"
    );
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.details.as_str(), l.bytes_sent),
        ("404", "via_upstream", 9)
    );

    // CONNECT: no route at an Istio gateway.
    let mut c = TcpStream::connect(s.gw.http).await.unwrap();
    c.write_all(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let l = s.gw.next_line().await;
    assert_eq!(
        (
            l.method.as_str(),
            l.path.as_str(),
            l.flags.as_str(),
            l.details.as_str()
        ),
        ("CONNECT", "-", "NR", "route_not_found")
    );
    assert_eq!(
        heads.lock().unwrap().len(),
        2,
        "only /no-ws and /denied-ws reached the upstream"
    );
}

/// An HTTP/2 connection to the gateway (cleartext, prior knowledge) whose SETTINGS have
/// been seen: one plain request (`/plain`, answered by the upstream) has gone through.
async fn h2_connection(gw: &mut Gateway) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let warm_up = http::Request::get(format!("http://{HOST}/plain"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(warm_up).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "no");
    let l = gw.next_line().await;
    assert_eq!(
        (l.method.as_str(), l.path.as_str(), l.protocol.as_str()),
        ("GET", "/plain", "HTTP/2")
    );
    sender
}

/// An extended CONNECT (RFC 8441) for `path` with this `:protocol`, or a plain CONNECT.
fn extended_connect(path: &str, protocol: Option<&'static str>) -> http::Request<Full<Bytes>> {
    let uri = match protocol {
        Some(_) => format!("http://{HOST}{path}"),
        None => format!("{HOST}:443"),
    };
    let mut req = http::Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Full::new(Bytes::new()))
        .unwrap();
    if let Some(p) = protocol {
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static(p));
    }
    req
}

#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let (ws, heads) = websocket_upstream().await;
    let mut s = start(
        "
  - match: [{method: {exact: GET}}]
    route: [{destination: {host: api.example.com}}]
",
        &[(HOST, ws)],
    )
    .await;
    let mut h2 = h2_connection(&mut s.gw).await;

    // `:protocol: websocket` goes upstream as an HTTP/1.1 upgrade (and is routed as a GET);
    // the upstream's 101 is a 200 to the client, and the stream carries the bytes.
    let resp = h2
        .send_request(extended_connect("/ws", Some("websocket")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("upgrade").is_none());
    assert!(resp.headers().get("connection").is_none());
    assert_eq!(
        resp.headers().get("sec-websocket-accept").unwrap(),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(resp.headers().get("server").unwrap(), "istio-envoy");
    let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await.expect("tunnel"));
    for msg in [&b"hello websocket"[..], b"second frame"] {
        tunnel.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, tunnel.read_exact(&mut back))
            .await
            .expect("echo")
            .unwrap();
        assert_eq!(back, msg);
    }
    tunnel.shutdown().await.unwrap();
    let l = s.gw.next_line().await;
    // Envoy 1.40: `"GET /ws HTTP/2" 101 DC downstream_remote_disconnect`, bytes counted.
    assert_eq!(
        (l.method.as_str(), l.path.as_str(), l.protocol.as_str()),
        ("GET", "/ws", "HTTP/2")
    );
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.details.as_str()),
        ("101", "DC", "downstream_remote_disconnect")
    );
    assert_eq!((l.bytes_received, l.bytes_sent), (27, 27));
    assert_eq!(l.upstream_service_time, "-");
    let up_head = heads.lock().unwrap()[1].to_ascii_lowercase();
    assert!(up_head.starts_with("get /ws http/1.1\r\n"), "{up_head}");
    assert!(up_head.contains("upgrade: websocket"), "{up_head}");
    assert!(up_head.contains("connection: upgrade"), "{up_head}");
    assert!(up_head.contains("host: api.example.com"), "{up_head}");
    assert!(up_head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="));

    // The upstream ending the tunnel: its last bytes arrive, then the stream ends; `UC`.
    let resp = h2
        .send_request(extended_connect("/ws-close", Some("websocket")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await.expect("tunnel"));
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest)).await;
    assert_eq!(rest, b"bye");
    let l = s.gw.next_line().await;
    assert_eq!(
        (
            l.method.as_str(),
            l.code.as_str(),
            l.flags.as_str(),
            l.details.as_str(),
            l.bytes_sent
        ),
        (
            "GET",
            "101",
            "UC",
            "upstream_reset_after_response_started{connection_termination}",
            3
        )
    );

    // An upstream that does not switch: its status, and the stream ends (Envoy 1.40).
    let resp = h2
        .send_request(extended_connect("/no-ws", Some("websocket")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await.expect("stream"));
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.method.as_str(), l.code.as_str(), l.details.as_str()),
        ("GET", "200", "websocket_handshake_unsuccessful")
    );

    // Another `:protocol` is refused like another `Upgrade` (Envoy 1.40: 403 upgrade_failed).
    let resp = h2
        .send_request(extended_connect("/x", Some("connect-udp")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.method.as_str(), l.code.as_str(), l.details.as_str()),
        ("GET", "403", "upgrade_failed")
    );

    // A plain CONNECT has no route at an Istio gateway (Envoy 1.40: `"CONNECT - HTTP/2" 404`).
    let mut h2 = h2_connection(&mut s.gw).await;
    let resp = h2.send_request(extended_connect("", None)).await.unwrap();
    assert_eq!(resp.status(), 404);
    let l = s.gw.next_line().await;
    assert_eq!(
        (
            l.method.as_str(),
            l.path.as_str(),
            l.code.as_str(),
            l.flags.as_str()
        ),
        ("CONNECT", "-", "404", "NR")
    );
    assert_eq!(
        heads.lock().unwrap().len(),
        5,
        "two warm-ups, /ws, /ws-close and /no-ws reached the upstream"
    );
}

/// An upstream that sends one server-sent event, then waits for `release` before the next
/// one and the end of the stream.
async fn sse_upstream(release: Arc<tokio::sync::Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut sock, _)) = listener.accept().await {
            let _ = read_head(&mut sock).await;
            let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
            let first = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{}",
                chunk("data: one\n\n")
            );
            let _ = sock.write_all(first.as_bytes()).await;
            release.notified().await;
            let _ = sock
                .write_all(format!("{}0\r\n\r\n", chunk("data: two\n\n")).as_bytes())
                .await;
            let mut buf = [0u8; 64];
            let _ = sock.read(&mut buf).await;
        }
    });
    addr
}

#[tokio::test]
async fn server_sent_events_stream_without_buffering() {
    let release = Arc::new(tokio::sync::Notify::new());
    let sse = sse_upstream(release.clone()).await;
    let mut s = start(
        "
  - route: [{destination: {host: api.example.com}}]
",
        &[(HOST, sse)],
    )
    .await;
    let tcp = TcpStream::connect(s.gw.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/events")
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut body = resp.into_body();
    // The first event arrives while the upstream is still holding the stream open.
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first event not delivered before the stream ended")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");
    release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: two\n\n");
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.code.as_str(), l.flags.as_str(), l.bytes_sent),
        ("200", "-", 22)
    );
}

#[tokio::test]
async fn large_upload_streams_through_intact() {
    let up = HttpUpstream::start(Behavior::EchoBody).await.unwrap();
    let mut s = start(
        "
  - route: [{destination: {host: api.example.com}}]
",
        &[(HOST, up.addr())],
    )
    .await;
    let body = pattern_bytes(10 * 1024 * 1024);
    let r = post(&s.gw, "/upload", body.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last_request().unwrap().body_len, body.len());
    assert!(
        r.body == body,
        "the upstream received exactly what was sent"
    );
    let l = s.gw.next_line().await;
    assert_eq!(
        (l.bytes_received, l.bytes_sent),
        (body.len() as u64, body.len() as u64)
    );
}

/// Two HTTPS servers on one port, each with its own certificate and hosts: a connection
/// routes only the hosts of the server its SNI chose, as Envoy under Istio does (each HTTPS
/// server has its own route configuration). A client that opens TLS as `a.example.com` and
/// asks for `b.example.com` gets `404 NR route_not_found` — it was routed to b, past b's
/// TLS settings (which could demand a client certificate).
#[tokio::test]
async fn an_https_server_routes_only_its_own_hosts() {
    use egret_test_support::certs::client_config;
    use egret_test_support::client::tls_connect;
    use egret_test_support::TestCa;
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let dir = TestDir::new("https-servers").unwrap();
    let ca = TestCa::new("gateway CA");
    for h in ["a", "b"] {
        ca.server_cert(&[format!("{h}.example.com").as_str()], None)
            .write_files(
                &dir.join("certs"),
                &format!("{h}.crt"),
                &format!("{h}.key"),
                None,
            )
            .unwrap();
    }
    let certs = dir.join("certs").display().to_string();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external}}
spec:
  hosts: [a.example.com, b.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 443, name: https-a, protocol: HTTPS}}
    hosts: [a.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {certs}/a.crt, privateKey: {certs}/a.key}}
  - port: {{number: 443, name: https-b, protocol: HTTPS}}
    hosts: [b.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {certs}/b.crt, privateKey: {certs}/b.key}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: both}}
spec:
  hosts: [a.example.com, b.example.com]
  gateways: [egress]
  http:
  - match: [{{authority: {{exact: a.example.com}}}}]
    route: [{{destination: {{host: a.example.com, port: {{number: 80}}}}}}]
  - route: [{{destination: {{host: b.example.com, port: {{number: 80}}}}}}]
"#
    );
    dir.write("config/gw.yaml", yaml.as_bytes()).unwrap();
    let mut gw = Gateway::start(
        &[&dir.join("config")],
        &[
            "--connect-to".into(),
            format!("a.example.com:80:{}", up.addr()),
            "--connect-to".into(),
            format!("b.example.com:80:{}", up.addr()),
        ],
    )
    .await;
    let cfg = Arc::new(client_config(ca.root_store(), None, &[b"http/1.1"]).unwrap());
    for (sni, host, status) in [
        ("a.example.com", "a.example.com", 200),
        ("a.example.com", "b.example.com", 404),
        ("b.example.com", "b.example.com", 200),
        ("b.example.com", "a.example.com", 404),
    ] {
        let tls = tls_connect(gw.tls, sni, cfg.clone()).await.unwrap();
        let mut conn = Http1Conn::handshake(tls).await.unwrap();
        let r = conn.get(host, "/", &[]).await.unwrap();
        assert_eq!(r.status, status, "SNI {sni}, Host {host}");
        let l = gw.next_line().await;
        assert_eq!(l.sni, sni);
        if status == 404 {
            assert_eq!(
                (l.flags.as_str(), l.details.as_str()),
                ("NR", "route_not_found"),
                "{}",
                l.raw
            );
        } else {
            assert_eq!(l.cluster, format!("outbound|80||{host}"), "{}", l.raw);
        }
    }

    // The session's version and cipher, as Envoy names them, for custom formats.
    let mut gw = Gateway::start(
        &[&dir.join("config")],
        &[
            "--connect-to".into(),
            format!("a.example.com:80:{}", up.addr()),
            "--access-log-format".into(),
            "%DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_CIPHER% %REQUESTED_SERVER_NAME%".into(),
        ],
    )
    .await;
    let tls = tls_connect(gw.tls, "a.example.com", cfg.clone())
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // A TLS 1.3 suite's IANA name: `TLS13_AES_256_GCM_SHA384` -> `TLS_AES_256_GCM_SHA384`.
    let suite = format!("{:?}", session.negotiated_cipher_suite().unwrap().suite());
    let cipher = suite.replacen("TLS13_", "TLS_", 1);
    let mut conn = Http1Conn::handshake(tls).await.unwrap();
    assert_eq!(
        conn.get("a.example.com", "/", &[]).await.unwrap().status,
        200
    );
    let line = gw.process.next_log_line(WAIT).await.unwrap();
    assert_eq!(line, format!("TLSv1.3 {cipher} a.example.com"));
}
