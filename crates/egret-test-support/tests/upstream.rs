//! The in-process upstreams and the clients, against each other.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use egret_test_support::certs::{self, ClientAuth, ALPN_H2_HTTP1};
use egret_test_support::client::{self, request, tls_connect};
use egret_test_support::upstream::pattern_bytes;
use egret_test_support::{
    closed_port, h2c_get, http1_get, Behavior, H2Conn, Http1Conn, HttpUpstream, TcpUpstream,
    TestCa, TlsOptions,
};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn echoes_over_http1() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let resp = http1_get(
        up.addr(),
        "edition.cnn.com",
        "/politics?x=1",
        &[("x-test", "a")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let j = resp.json();
    assert_eq!(j["method"], "GET");
    assert_eq!(j["path"], "/politics?x=1");
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["authority"], "edition.cnn.com");
    assert_eq!(j["headers"]["x-test"], "a");
    assert_eq!(j["tls"], false);
    assert_eq!(j["server"], up.addr().to_string());
    assert_eq!(up.requests(), 1);
    assert_eq!(up.connections(), 1);
    let rec = up.last_request().unwrap();
    assert_eq!(rec.header("x-test"), Some("a"));
    assert_eq!(rec.path, "/politics?x=1");
}

#[tokio::test]
async fn echoes_over_h2c() {
    let up = HttpUpstream::start(Behavior::EchoStatus(301))
        .await
        .unwrap();
    let resp = h2c_get(up.addr(), "edition.cnn.com", "/politics", &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 301);
    let j = resp.json();
    assert_eq!(j["version"], "HTTP/2");
    assert_eq!(j["authority"], "edition.cnn.com");
    assert_eq!(j["path"], "/politics");
}

#[tokio::test]
async fn keep_alive_reuses_one_connection_and_dynamic_behavior() {
    let up = HttpUpstream::start(Behavior::dynamic(|r| {
        if r.index < 2 {
            Behavior::fixed(503, "try again")
        } else {
            Behavior::Echo
        }
    }))
    .await
    .unwrap();
    let mut conn = Http1Conn::connect(up.addr()).await.unwrap();
    let a = conn.get("h", "/1", &[]).await.unwrap();
    let b = conn.get("h", "/2", &[]).await.unwrap();
    let c = conn.get("h", "/3", &[]).await.unwrap();
    assert_eq!(
        (a.status.as_u16(), b.status.as_u16(), c.status.as_u16()),
        (503, 503, 200)
    );
    assert_eq!(a.text(), "try again");
    assert_eq!(c.json()["connection_id"], 1);
    assert_eq!(up.connections(), 1);
    assert_eq!(up.requests(), 3);
    let paths: Vec<String> = up.recorded().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/1", "/2", "/3"]);

    // HTTP/2: concurrent requests on one connection.
    let h2 = H2Conn::connect(up.addr()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mut h2 = h2.clone();
        tasks.push(tokio::spawn(async move {
            h2.get("h", &format!("/h2/{i}"), &[]).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().json()["connection_id"], 2);
    }
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn bodies_reset_and_delay() {
    let up = HttpUpstream::start(Behavior::EchoBody).await.unwrap();
    let body = pattern_bytes(300_000);
    let req = request(Method::POST, "/up", &[("host", "h")], body.clone()).unwrap();
    let resp = client::http1_request(up.addr(), req).await.unwrap();
    assert_eq!(resp.body, body);
    assert_eq!(up.last_request().unwrap().body_len, 300_000);

    up.set_behavior(Behavior::BodyOfSize(123_457));
    let resp = h2c_get(up.addr(), "h", "/", &[]).await.unwrap();
    assert_eq!(resp.body, pattern_bytes(123_457));

    up.set_behavior(Behavior::Fixed {
        status: 418,
        headers: vec![("x-teapot".into(), "yes".into())],
        body: Bytes::from_static(b"short and stout"),
    });
    let resp = http1_get(up.addr(), "h", "/", &[]).await.unwrap();
    assert_eq!(resp.status, 418);
    assert_eq!(resp.header("x-teapot"), Some("yes"));

    up.set_behavior(Behavior::Reset);
    assert!(http1_get(up.addr(), "h", "/", &[]).await.is_err());
    assert!(h2c_get(up.addr(), "h", "/", &[]).await.is_err());

    up.set_behavior(Behavior::delay(Duration::from_millis(1), Behavior::Echo));
    assert_eq!(
        http1_get(up.addr(), "h", "/", &[]).await.unwrap().status,
        200
    );

    // A long delay never answers within a short client timeout.
    up.set_behavior(Behavior::delay(Duration::from_secs(3600), Behavior::Echo));
    let r = tokio::time::timeout(
        Duration::from_millis(200),
        http1_get(up.addr(), "h", "/", &[]),
    )
    .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn tls_with_client_certs_reports_sni_alpn_and_peer() {
    let ca = TestCa::with_org("example Inc.", "example.com");
    let server = ca.server_cert(&["my-nginx.mesh-external.svc.cluster.local"], None);
    let client_cert = ca.client_cert(
        "client.example.com",
        Some("spiffe://cluster.local/ns/default/sa/sleep"),
    );
    let up = HttpUpstream::start_tls(Behavior::Echo, &server, Some(&ca))
        .await
        .unwrap();
    let sni = "my-nginx.mesh-external.svc.cluster.local";

    // h2 via ALPN
    let cfg = certs::client_config(ca.root_store(), Some(&client_cert), ALPN_H2_HTTP1).unwrap();
    let tls = tls_connect(up.addr(), sni, Arc::new(cfg)).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = H2Conn::handshake(tls).await.unwrap();
    let j = h2.get(sni, "/", &[]).await.unwrap().json();
    assert_eq!(j["version"], "HTTP/2");
    assert_eq!(j["tls"], true);
    assert_eq!(j["sni"], sni);
    assert_eq!(j["alpn"], "h2");
    assert_eq!(j["peer_cert_cn"], "client.example.com");
    assert_eq!(
        j["peer_uri_sans"][0],
        "spiffe://cluster.local/ns/default/sa/sleep"
    );

    // HTTP/1.1 via ALPN
    let cfg = certs::client_config(ca.root_store(), Some(&client_cert), &[b"http/1.1"]).unwrap();
    let tls = tls_connect(up.addr(), sni, Arc::new(cfg)).await.unwrap();
    let mut h1 = Http1Conn::handshake(tls).await.unwrap();
    let j = h1.get(sni, "/", &[]).await.unwrap().json();
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["alpn"], "http/1.1");

    // No client certificate: the server refuses (TLS 1.3 reports it on first use).
    let cfg = certs::client_config(ca.root_store(), None, &[b"http/1.1"]).unwrap();
    let outcome = async {
        let tls = tls_connect(up.addr(), sni, Arc::new(cfg)).await?;
        Http1Conn::handshake(tls).await?.get(sni, "/", &[]).await
    }
    .await;
    assert!(outcome.is_err());
}

#[tokio::test]
async fn optional_client_cert_answers_400_like_nginx() {
    let ca = TestCa::new("ca");
    let server = ca.server_cert(&["up.test"], Some("up.test"));
    let up = HttpUpstream::start_tls_with(
        Behavior::RequireClientCert(Box::new(Behavior::Echo)),
        &server,
        TlsOptions {
            client_auth: ClientAuth::Optional(ca.cert_der()),
            ..TlsOptions::default()
        },
    )
    .await
    .unwrap();
    let cfg = Arc::new(certs::client_config(ca.root_store(), None, ALPN_H2_HTTP1).unwrap());
    let tls = tls_connect(up.addr(), "up.test", cfg).await.unwrap();
    let resp = H2Conn::handshake(tls)
        .await
        .unwrap()
        .get("up.test", "/", &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 400);

    let cc = ca.client_cert("c", None);
    let cfg = Arc::new(certs::client_config(ca.root_store(), Some(&cc), ALPN_H2_HTTP1).unwrap());
    let tls = tls_connect(up.addr(), "up.test", cfg).await.unwrap();
    let resp = H2Conn::handshake(tls)
        .await
        .unwrap()
        .get("up.test", "/", &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["peer_cert_cn"], "c");
}

#[tokio::test]
async fn tcp_helpers() {
    let echo = TcpUpstream::echo().await.unwrap();
    let mut s = TcpStream::connect(echo.addr()).await.unwrap();
    s.write_all(b"hello egret").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello egret");
    assert_eq!(echo.connections(), 1);
    assert_eq!(echo.bytes_received(), 11);

    let closer = TcpUpstream::close_on_accept().await.unwrap();
    let mut s = TcpStream::connect(closer.addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0);

    let banner = TcpUpstream::respond_and_close(&b"220 hi\r\n"[..])
        .await
        .unwrap();
    let mut s = TcpStream::connect(banner.addr()).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"220 hi\r\n");

    let err = TcpStream::connect(closed_port()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let up = HttpUpstream::start(Behavior::Echo).await.unwrap();
    let addr = up.addr();
    let mut conn = Http1Conn::connect(addr).await.unwrap();
    assert_eq!(conn.get("h", "/", &[]).await.unwrap().status, 200);
    let mut raw = TcpStream::connect(addr).await.unwrap();
    drop(up);
    // The listener is shut at once: the next connect is refused...
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // ...and open connections end.
    assert!(conn.get("h", "/", &[]).await.is_err());
    let mut buf = [0u8; 8];
    assert_eq!(raw.read(&mut buf).await.unwrap_or(0), 0);

    let echo = TcpUpstream::echo().await.unwrap();
    let addr = echo.addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"x").await.unwrap();
    s.read_exact(&mut buf[..1]).await.unwrap();
    drop(echo);
    assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0);
    assert!(TcpStream::connect(addr).await.is_err());
}
