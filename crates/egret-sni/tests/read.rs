//! read_client_hello over real loopback sockets.

mod common;

use std::time::Duration;

use common::*;
use egret_sni::{
    parse_client_hello, read_client_hello, read_client_hello_into, ParseError, ReadError,
    DEFAULT_CLIENT_HELLO_TIMEOUT, DEFAULT_MAX_CLIENT_HELLO_READ,
};
use tokio::io::AsyncWriteExt;

const T: Duration = DEFAULT_CLIENT_HELLO_TIMEOUT;
const MAX: usize = DEFAULT_MAX_CLIENT_HELLO_READ;

fn hello() -> HelloBuilder {
    HelloBuilder::new()
        .sni("edition.cnn.com")
        .alpn(&[b"h2", b"http/1.1"])
        .versions(&[TLS13, TLS12])
}

#[test]
fn default_timeout_is_envoys_listener_filter_timeout() {
    assert_eq!(DEFAULT_CLIENT_HELLO_TIMEOUT, Duration::from_secs(15));
}

#[tokio::test]
async fn whole_hello_and_following_bytes_are_returned() {
    let (mut client, mut server) = socket_pair().await;
    let mut sent = hello().records(TLS10, 16384);
    let hello_len = sent.len();
    sent.extend_from_slice(b"\x17\x03\x03\x00\x01X");
    client.write_all(&sent).await.unwrap();
    let (bytes, h) = read_client_hello(&mut server, T, MAX).await.unwrap();
    assert_eq!(h.sni.as_deref(), Some("edition.cnn.com"));
    assert_eq!(h.consumed, hello_len);
    // Everything read is handed back for replay (here possibly including the extra record).
    assert_eq!(&bytes[..], &sent[..bytes.len()]);
    assert!(bytes.len() >= hello_len);
}

#[tokio::test]
async fn dribbled_one_byte_per_read_through_a_socket() {
    let (mut client, server) = socket_pair().await;
    client.set_nodelay(true).unwrap();
    let raw = hello().ext(21, vec![0; 500]).records(TLS12, 97);
    let to_send = raw.clone();
    let writer = tokio::spawn(async move {
        for b in to_send {
            client.write_all(&[b]).await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    });
    let mut server = OneByteReads(server);
    let (bytes, h) = read_client_hello(&mut server, T, MAX).await.unwrap();
    assert_eq!(bytes, raw);
    assert_eq!(h.consumed, raw.len());
    assert_eq!(h.sni.as_deref(), Some("edition.cnn.com"));
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn real_rustls_client_through_a_socket() {
    // The same bytes a rustls client sent, replayed through a socket one byte per read.
    let raw = capture_rustls(rustls_config(vec![], rustls::ALL_VERSIONS), "svc.example").await;
    let (mut client, server) = socket_pair().await;
    client.write_all(&raw).await.unwrap();
    let (bytes, h) = read_client_hello(&mut OneByteReads(server), T, MAX)
        .await
        .unwrap();
    assert_eq!(bytes, raw);
    assert_eq!(h.sni.as_deref(), Some("svc.example"));
    assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
}

#[tokio::test]
async fn hello_over_16k_across_records() {
    let (mut client, mut server) = socket_pair().await;
    let raw = hello().ext(21, vec![0; 40_000]).records(TLS10, 16384);
    let to_send = raw.clone();
    let writer = tokio::spawn(async move { client.write_all(&to_send).await.map(|_| client) });
    let (bytes, h) = read_client_hello(&mut server, T, MAX).await.unwrap();
    assert_eq!(bytes, raw);
    assert_eq!(h.consumed, raw.len());
    drop(writer.await.unwrap().unwrap());
}

#[tokio::test]
async fn over_64k_refused() {
    let (mut client, mut server) = socket_pair().await;
    // The handshake header announces 70 000 bytes: refused after 9 bytes.
    let raw = hello()
        .ext(21, vec![0; 65_000])
        .ext(22, vec![0; 5_000])
        .handshake();
    let raw = records(TLS12, &raw, 16384);
    let writer = tokio::spawn(async move {
        let _ = client.write_all(&raw).await;
    });
    let err = read_client_hello(&mut server, T, MAX).await.unwrap_err();
    assert!(
        matches!(err, ReadError::Parse(ParseError::TooLarge)),
        "{err}"
    );
    assert_eq!(err.to_string(), "TLS ClientHello larger than 65536 bytes");
    drop(server);
    writer.await.unwrap();
}

#[tokio::test]
async fn max_smaller_than_the_hello_is_too_large() {
    let (mut client, mut server) = socket_pair().await;
    client
        .write_all(&hello().records(TLS12, 16384))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let err = read_client_hello_into(&mut server, &mut buf, T, 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReadError::Parse(ParseError::TooLarge)),
        "{err}"
    );
    assert_eq!(buf.len(), 20);
}

#[tokio::test]
async fn plain_http_is_not_tls() {
    let (mut client, mut server) = socket_pair().await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n")
        .await
        .unwrap();
    let err = read_client_hello(&mut server, T, MAX).await.unwrap_err();
    assert!(matches!(err, ReadError::Parse(ParseError::NotTls)), "{err}");
}

#[tokio::test]
async fn not_tls_detected_from_the_first_byte() {
    // The client sends one byte and then waits: the reader must not wait for more.
    let (mut client, mut server) = socket_pair().await;
    client.write_all(b"G").await.unwrap();
    let mut buf = Vec::new();
    let err = read_client_hello_into(&mut server, &mut buf, T, MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, ReadError::Parse(ParseError::NotTls)), "{err}");
    assert_eq!(buf, b"G");
    drop(client);
}

#[tokio::test]
async fn lying_length_then_close_is_closed() {
    let (mut client, mut server) = socket_pair().await;
    let mut hs = hello().handshake();
    hs[3] = hs[3].wrapping_add(40); // claims 40 bytes that never come
    client.write_all(&records(TLS12, &hs, 16384)).await.unwrap();
    client.shutdown().await.unwrap();
    let err = read_client_hello(&mut server, T, MAX).await.unwrap_err();
    assert!(matches!(err, ReadError::Closed), "{err}");
}

#[tokio::test]
async fn malformed_hello_is_a_parse_error() {
    let (mut client, mut server) = socket_pair().await;
    let mut b = hello();
    b.compression.clear();
    client.write_all(&b.records(TLS12, 16384)).await.unwrap();
    let err = read_client_hello(&mut server, T, MAX).await.unwrap_err();
    assert!(
        matches!(err, ReadError::Parse(ParseError::Malformed(_))),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "malformed TLS ClientHello: empty compression method list"
    );
}

#[tokio::test(start_paused = true)]
async fn silent_client_times_out() {
    let (client, mut server) = socket_pair().await;
    let err = read_client_hello(&mut server, T, MAX).await.unwrap_err();
    assert!(matches!(err, ReadError::Timeout), "{err}");
    assert_eq!(err.to_string(), "timed out waiting for the TLS ClientHello");
    drop(client);
}

#[tokio::test(start_paused = true)]
async fn partial_hello_then_silence_times_out_and_keeps_the_bytes() {
    let (mut client, mut server) = socket_pair().await;
    let raw = hello().records(TLS12, 16384);
    client.write_all(&raw[..20]).await.unwrap();
    let mut buf = Vec::new();
    let err = read_client_hello_into(&mut server, &mut buf, Duration::from_millis(10), MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, ReadError::Timeout), "{err}");
    // Whatever arrived before the deadline is kept, and it is a prefix of what was sent.
    assert_eq!(&buf[..], &raw[..buf.len()]);
    drop(client);
}

#[tokio::test]
async fn client_closing_early_is_closed() {
    // Nothing at all, then FIN.
    let (client, mut server) = socket_pair().await;
    drop(client);
    let err = read_client_hello(&mut server, T, MAX).await.unwrap_err();
    assert!(matches!(err, ReadError::Closed), "{err}");
    assert_eq!(
        err.to_string(),
        "connection closed before a complete TLS ClientHello"
    );

    // Half a hello, then FIN.
    let (mut client, mut server) = socket_pair().await;
    let raw = hello().records(TLS12, 16384);
    client.write_all(&raw[..raw.len() / 2]).await.unwrap();
    drop(client);
    let mut buf = Vec::new();
    let err = read_client_hello_into(&mut server, &mut buf, T, MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, ReadError::Closed), "{err}");
    assert_eq!(buf, &raw[..raw.len() / 2]);
}

#[tokio::test]
async fn client_reset_is_an_io_error() {
    let (client, mut server) = socket_pair().await;
    client.set_zero_linger().unwrap();
    drop(client); // RST instead of FIN
    let err = read_client_hello(&mut server, T, MAX).await.unwrap_err();
    match &err {
        ReadError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("reading the TLS ClientHello failed: "),
        "{err}"
    );
}

#[tokio::test]
async fn returned_bytes_parse_to_the_same_hello() {
    let (mut client, mut server) = socket_pair().await;
    let raw = hello().grease().records(TLS10, 50);
    client.write_all(&raw).await.unwrap();
    let (bytes, h) = read_client_hello(&mut server, T, MAX).await.unwrap();
    assert_eq!(parse_client_hello(&bytes).unwrap(), h);
}
