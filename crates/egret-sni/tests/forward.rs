//! forward / forward_with_prefix over real loopback sockets:
//! client <-> [proxy_down | forward | proxy_up] <-> server.

mod common;

use std::time::Duration;

use common::socket_pair;
use egret_sni::{forward, forward_with_prefix, ForwardEnd, ForwardResult, Side};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const TEN_MB: usize = 10 * 1024 * 1024;
const NO_IDLE: Duration = Duration::ZERO;

/// (client, server, forwarding task).
async fn proxied(
    prefix: Vec<u8>,
    idle: Duration,
) -> (TcpStream, TcpStream, JoinHandle<ForwardResult>) {
    let (client, proxy_down) = socket_pair().await;
    let (proxy_up, server) = socket_pair().await;
    let task =
        tokio::spawn(async move { forward_with_prefix(proxy_down, proxy_up, prefix, idle).await });
    (client, server, task)
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FNV-1a, 64 bit.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Sends `payload` in uneven chunks, then shuts the write half.
async fn send_all<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) {
    for chunk in payload.chunks(50_000) {
        w.write_all(chunk).await.unwrap();
    }
    w.shutdown().await.unwrap();
}

async fn read_all<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn ten_mb_each_way_intact() {
    let (client, server, task) = proxied(Vec::new(), NO_IDLE).await;
    let upload = data(TEN_MB, 1);
    let download = data(TEN_MB, 2);
    let (up_sum, down_sum) = (checksum(&upload), checksum(&download));

    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (_, got_down, got_up, _) = tokio::join!(
        send_all(&mut cw, &upload),
        read_all(&mut cr),
        read_all(&mut sr),
        send_all(&mut sw, &download),
    );
    assert_eq!(got_up.len(), TEN_MB);
    assert_eq!(got_down.len(), TEN_MB);
    assert_eq!(checksum(&got_up), up_sum);
    assert_eq!(checksum(&got_down), down_sum);

    let r = task.await.unwrap();
    assert_eq!(r.bytes_from_downstream, TEN_MB as u64);
    assert_eq!(r.bytes_from_upstream, TEN_MB as u64);
    assert!(matches!(r.end, ForwardEnd::Closed { .. }), "{:?}", r.end);
}

#[tokio::test]
async fn ten_mb_echo() {
    let (client, server, task) = proxied(Vec::new(), NO_IDLE).await;
    let echo = tokio::spawn(async move {
        let (mut r, mut w) = server.into_split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let payload = data(TEN_MB, 3);
    let (mut cr, mut cw) = client.into_split();
    let (_, back) = tokio::join!(send_all(&mut cw, &payload), read_all(&mut cr));
    assert_eq!(back.len(), payload.len());
    assert_eq!(checksum(&back), checksum(&payload));
    echo.await.unwrap();
    let r = task.await.unwrap();
    assert_eq!(
        (r.bytes_from_downstream, r.bytes_from_upstream),
        (TEN_MB as u64, TEN_MB as u64)
    );
    assert!(
        matches!(
            r.end,
            ForwardEnd::Closed {
                first: Side::Downstream
            }
        ),
        "{:?}",
        r.end
    );
}

#[tokio::test]
async fn client_half_closes_and_still_gets_the_whole_response() {
    let (mut client, mut server, task) = proxied(Vec::new(), NO_IDLE).await;
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();

    // The server sees the request end (FIN passed on), then answers at length.
    let request = read_all(&mut server).await;
    assert_eq!(request, b"request");
    let response = data(300_000, 4);
    send_all(&mut server, &response).await;

    let got = read_all(&mut client).await;
    assert_eq!(checksum(&got), checksum(&response));
    let r = task.await.unwrap();
    assert_eq!(r.bytes_from_downstream, 7);
    assert_eq!(r.bytes_from_upstream, 300_000);
    assert_eq!(r.first_eof, Some(Side::Downstream));
    assert!(matches!(
        r.end,
        ForwardEnd::Closed {
            first: Side::Downstream
        }
    ));
}

#[tokio::test]
async fn server_half_closes_first_and_client_keeps_sending() {
    let (mut client, mut server, task) = proxied(Vec::new(), NO_IDLE).await;
    send_all(&mut server, b"banner").await;
    assert_eq!(read_all(&mut client).await, b"banner");
    send_all(&mut client, b"after the banner").await;
    assert_eq!(read_all(&mut server).await, b"after the banner");
    let r = task.await.unwrap();
    assert_eq!((r.bytes_from_downstream, r.bytes_from_upstream), (16, 6));
    assert!(matches!(
        r.end,
        ForwardEnd::Closed {
            first: Side::Upstream
        }
    ));
    assert!(!r.upstream_failed() && !r.downstream_failed());
}

#[tokio::test]
async fn prefix_is_replayed_first_and_counted() {
    let (mut client, mut server, task) = proxied(b"CLIENTHELLO".to_vec(), NO_IDLE).await;
    send_all(&mut client, b"+rest").await;
    assert_eq!(read_all(&mut server).await, b"CLIENTHELLO+rest");
    server.shutdown().await.unwrap();
    let r = task.await.unwrap();
    assert_eq!(r.bytes_from_downstream, 16);
    assert_eq!(r.bytes_from_upstream, 0);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_stops_and_reports() {
    let idle = Duration::from_secs(3600);
    let (mut client, mut server, task) = proxied(Vec::new(), idle).await;
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    server.write_all(b"pong!").await.unwrap();
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).await.unwrap();
    // Nobody sends anything more: the paused clock runs to the idle deadline.
    let r = task.await.unwrap();
    assert!(r.idle_timed_out(), "{:?}", r.end);
    assert_eq!((r.bytes_from_downstream, r.bytes_from_upstream), (4, 5));
    assert_eq!(r.first_eof, None);
    // Both connections were closed by the gateway.
    assert_eq!(read_all(&mut client).await, b"");
    assert_eq!(read_all(&mut server).await, b"");
}

#[tokio::test(start_paused = true)]
async fn idle_timer_is_not_hit_while_bytes_flow() {
    // A byte every 40 minutes for 4 hours with a 1 h idle timeout: never idle, then a
    // clean close.
    let (mut client, mut server, task) = proxied(Vec::new(), Duration::from_secs(3600)).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(40 * 60)).await;
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        server.read_exact(&mut one).await.unwrap();
    }
    client.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
    let r = task.await.unwrap();
    assert!(matches!(r.end, ForwardEnd::Closed { .. }), "{:?}", r.end);
    assert_eq!(r.bytes_from_downstream, 6);
}

#[tokio::test]
async fn upstream_reset_is_reported_with_counters() {
    let (mut client, server, task) = proxied(Vec::new(), NO_IDLE).await;
    let mut server = server;
    client.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).await.unwrap();
    server.write_all(b"partial").await.unwrap();
    let mut got = [0u8; 7];
    client.read_exact(&mut got).await.unwrap();
    server.set_zero_linger().unwrap();
    drop(server); // RST
    let r = task.await.unwrap();
    assert!(r.upstream_failed(), "{:?}", r.end);
    match &r.end {
        ForwardEnd::Error {
            side: Side::Upstream,
            error,
        } => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset),
        other => panic!("{other:?}"),
    }
    assert_eq!((r.bytes_from_downstream, r.bytes_from_upstream), (5, 7));
}

#[tokio::test]
async fn downstream_reset_is_reported_with_counters() {
    let (mut client, mut server, task) = proxied(Vec::new(), NO_IDLE).await;
    client.write_all(b"abc").await.unwrap();
    let mut buf = [0u8; 3];
    server.read_exact(&mut buf).await.unwrap();
    client.set_zero_linger().unwrap();
    drop(client);
    let r = task.await.unwrap();
    assert!(r.downstream_failed(), "{:?}", r.end);
    assert_eq!((r.bytes_from_downstream, r.bytes_from_upstream), (3, 0));
}

#[tokio::test]
async fn borrowed_streams_stay_usable() {
    let (mut client, mut proxy_down) = socket_pair().await;
    let (mut proxy_up, mut server) = socket_pair().await;
    let fwd = async {
        let r = forward(&mut proxy_down, &mut proxy_up, NO_IDLE).await;
        assert!(matches!(r.end, ForwardEnd::Closed { .. }));
    };
    let ends = async {
        send_all(&mut client, b"q").await;
        assert_eq!(read_all(&mut server).await, b"q");
        send_all(&mut server, b"a").await;
        assert_eq!(read_all(&mut client).await, b"a");
    };
    tokio::join!(fwd, ends);
    // The caller still owns the sockets (e.g. to read their addresses for the log).
    assert!(proxy_down.local_addr().is_ok() && proxy_up.local_addr().is_ok());
}

/// `stop` ends a live session, both ways, with what moved counted — the user-space copy and
/// `splice(2)` alike (the gateway stops its sessions when its drain timeout has passed).
#[tokio::test]
async fn stop_ends_the_session_with_its_counts() {
    for spliced in [false, true] {
        let (mut client, proxy_down) = socket_pair().await;
        let (proxy_up, mut server) = socket_pair().await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let task = tokio::spawn(async move {
            let mut down = proxy_down;
            if spliced {
                egret_sni::forward_spliced_until(&mut down, proxy_up, b"hi", NO_IDLE, stop).await
            } else {
                egret_sni::forward_with_prefix_until(down, proxy_up, &b"hi"[..], NO_IDLE, stop)
                    .await
            }
        });
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 7];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hihello");
        server.write_all(b"world!").await.unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        stop_tx.send(()).unwrap();
        let r = task.await.unwrap();
        assert!(matches!(r.end, ForwardEnd::Stopped), "{:?}", r.end);
        assert_eq!((r.bytes_from_downstream, r.bytes_from_upstream), (7, 6));
        // Both connections are closed.
        assert_eq!(client.read(&mut [0u8; 1]).await.unwrap(), 0);
        assert_eq!(server.read(&mut [0u8; 1]).await.unwrap(), 0);
    }
}
