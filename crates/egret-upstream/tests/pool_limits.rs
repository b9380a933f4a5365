//! The pool under DestinationRule limits, against a real in-process upstream: a pending
//! request waits for the one allowed connection, the next overflows; HTTP/2 requests share
//! one connection and wait for it while it is being made.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use egret_core::{Cluster, ClusterTraffic, ConnectionPool, Discovery, LbPolicy, UpstreamProtocol};
use egret_test_support::{Behavior, HttpUpstream};
use egret_upstream::{ClusterState, Pool, UpstreamBody};
use http_body_util::BodyExt;

fn cluster(addr: SocketAddr, protocol: UpstreamProtocol, pool: ConnectionPool) -> ClusterState {
    ClusterState::new(Arc::new(Cluster {
        name: Arc::from("outbound|80||api.example.com"),
        discovery: Discovery::Static {
            endpoints: vec![addr],
        },
        connect_timeout: Duration::from_secs(5),
        lb: LbPolicy::RoundRobin,
        protocol,
        tls: None,
        traffic: ClusterTraffic {
            pool,
            ..Default::default()
        },
    }))
}

fn get(path: &str, h2: bool) -> http::Request<UpstreamBody> {
    let uri = if h2 {
        format!("http://api.example.com{path}")
    } else {
        path.to_string()
    };
    let mut req = http::Request::new(UpstreamBody::Empty);
    *req.uri_mut() = uri.parse().unwrap();
    if h2 {
        *req.version_mut() = http::Version::HTTP_2;
    } else {
        req.headers_mut()
            .insert("host", http::HeaderValue::from_static("api.example.com"));
    }
    req
}

#[tokio::test]
async fn pending_request_waits_for_the_connection_and_the_next_overflows() {
    let up = HttpUpstream::start(Behavior::dynamic(|r| {
        if r.path == "/slow" {
            Behavior::delay(Duration::from_millis(300), Behavior::Echo)
        } else {
            Behavior::Echo
        }
    }))
    .await
    .unwrap();
    let c = Arc::new(cluster(
        up.addr(),
        UpstreamProtocol::Http1,
        ConnectionPool {
            max_connections: 1,
            max_pending_requests: 1,
            ..ConnectionPool::default()
        },
    ));
    let ep = c.endpoint(up.addr()).expect("endpoint");
    let pool = Pool::new();
    let mut first = pool.checkout(&c, &ep).await.expect("first");
    assert!(!first.reused());
    assert_eq!(c.circuit().connections(), 1);

    let (p, cc, e) = (pool.clone(), c.clone(), ep.clone());
    let waiter = tokio::spawn(async move { p.checkout(&cc, &e).await.map(|conn| conn.reused()) });
    // The waiter is pending once the counter says so.
    for _ in 0..500 {
        if c.circuit().pending() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(c.circuit().pending(), 1);
    match pool.checkout(&c, &ep).await {
        Err(e) => {
            assert!(e.is_overflow(), "{e}");
            assert_eq!(e.reset_reason(), "overflow");
        }
        Ok(_) => panic!("a third request must overflow"),
    }

    let resp = first.send(get("/slow", false)).await.expect("response");
    let mut body = resp.into_body();
    drain(&mut body).await;
    first.release(&mut body);
    assert!(
        waiter.await.unwrap().expect("the waiter got a connection"),
        "the released one"
    );
    assert_eq!(up.connections(), 1);
    assert_eq!(c.circuit().pending(), 0);
}

#[tokio::test]
async fn http2_requests_share_one_connection() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let c = Arc::new(cluster(
        up.addr(),
        UpstreamProtocol::Http2,
        ConnectionPool::default(),
    ));
    let ep = c.endpoint(up.addr()).expect("endpoint");
    let pool = Pool::new();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (p, cc, e) = (pool.clone(), c.clone(), ep.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = p.checkout(&cc, &e).await.expect("checkout");
            assert!(conn.is_http2());
            let resp = conn.send(get(&format!("/{i}"), true)).await.expect("send");
            let status = resp.status();
            let mut body = resp.into_body();
            drain(&mut body).await;
            conn.release(&mut body);
            status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        up.connections(),
        1,
        "concurrent requests waited for one connection"
    );
    assert_eq!(up.requests(), 8);
}

/// Envoy's per-host statistics (`/clusters`): every connection attempt and every request sent
/// is counted on its endpoint, with its outcome; `cx_active` follows the open connections.
#[tokio::test]
async fn endpoint_statistics_count_connections_requests_and_outcomes() {
    let up = HttpUpstream::start(Behavior::dynamic(|r| {
        if r.path == "/fail" {
            Behavior::fixed(503, "down")
        } else {
            Behavior::fixed(200, "ok")
        }
    }))
    .await
    .unwrap();
    let c = Arc::new(cluster(
        up.addr(),
        UpstreamProtocol::Http1,
        ConnectionPool::default(),
    ));
    let ep = c.endpoint(up.addr()).expect("endpoint");
    let pool = Pool::new();
    for path in ["/a", "/b", "/fail"] {
        let mut conn = pool.checkout(&c, &ep).await.expect("checkout");
        let resp = conn.send(get(path, false)).await.expect("send");
        let mut body = resp.into_body();
        drain(&mut body).await;
        conn.release(&mut body);
    }
    let n = ep.counts();
    // Sequential requests on one kept-alive connection.
    assert_eq!(up.connections(), 1);
    assert_eq!((n.cx_total, n.cx_connect_fail, n.cx_active), (1, 0, 1));
    assert_eq!(
        (n.rq_total, n.rq_success, n.rq_error, n.rq_active),
        (3, 2, 1, 0)
    );
    assert_eq!(
        n.named().map(|(name, _)| name),
        [
            "cx_active",
            "cx_connect_fail",
            "cx_total",
            "rq_active",
            "rq_error",
            "rq_success",
            "rq_timeout",
            "rq_total"
        ]
    );

    // A refused connect counts as an attempt and a failure, not as a request.
    let closed = egret_test_support::closed_port();
    let d = Arc::new(cluster(
        closed,
        UpstreamProtocol::Http1,
        ConnectionPool::default(),
    ));
    let ep = d.endpoint(closed).expect("endpoint");
    assert!(pool.checkout(&d, &ep).await.is_err());
    let n = ep.counts();
    assert_eq!(
        (n.cx_total, n.cx_connect_fail, n.cx_active, n.rq_total),
        (1, 1, 0, 0)
    );
}

/// Reads a response body to its end (so its connection can be released to the pool).
async fn drain(body: &mut egret_upstream::UpstreamResponseBody) {
    while let Some(frame) = body.frame().await {
        frame.expect("body");
    }
}
