//! Test helpers: a ClientHello builder, record splitting, and capture of real ClientHellos
//! from rustls, `openssl s_client` and `curl` over loopback sockets.
#![allow(dead_code)]

use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub const TLS10: u16 = 0x0301;
pub const TLS12: u16 = 0x0303;
pub const TLS13: u16 = 0x0304;

/// Builds a ClientHello handshake message field by field.
#[derive(Clone, Debug)]
pub struct HelloBuilder {
    pub legacy_version: u16,
    pub session_id: Vec<u8>,
    pub cipher_suites: Vec<u16>,
    pub compression: Vec<u8>,
    /// `None`: no extension block at all (a TLS 1.0-style hello).
    pub extensions: Option<Vec<(u16, Vec<u8>)>>,
}

impl Default for HelloBuilder {
    fn default() -> Self {
        HelloBuilder {
            legacy_version: TLS12,
            session_id: vec![7; 32],
            cipher_suites: vec![0x1301, 0x1302, 0xc02f],
            compression: vec![0],
            extensions: Some(Vec::new()),
        }
    }
}

impl HelloBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn ext(mut self, ext_type: u16, data: Vec<u8>) -> Self {
        self.extensions
            .get_or_insert_with(Vec::new)
            .push((ext_type, data));
        self
    }

    pub fn sni(self, name: &str) -> Self {
        let name = name.as_bytes();
        let mut entry = vec![0u8];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name);
        self.ext(0, vec16(&entry))
    }

    pub fn alpn(self, protocols: &[&[u8]]) -> Self {
        let mut list = Vec::new();
        for p in protocols {
            list.push(p.len() as u8);
            list.extend_from_slice(p);
        }
        self.ext(16, vec16(&list))
    }

    pub fn versions(self, versions: &[u16]) -> Self {
        let mut list = vec![(versions.len() * 2) as u8];
        for v in versions {
            list.extend_from_slice(&v.to_be_bytes());
        }
        self.ext(43, list)
    }

    /// Adds GREASE the way Chrome does: a GREASE suite first, GREASE extensions first and
    /// last, GREASE in ALPN and supported_versions is added by the caller.
    pub fn grease(mut self) -> Self {
        self.cipher_suites.insert(0, 0x2a2a);
        let exts = self.extensions.get_or_insert_with(Vec::new);
        exts.insert(0, (0x0a0a, Vec::new()));
        exts.push((0xfafa, vec![0]));
        self
    }

    /// The handshake message: type 1, 24-bit length, body.
    pub fn handshake(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.legacy_version.to_be_bytes());
        body.extend_from_slice(&[0x42; 32]);
        body.push(self.session_id.len() as u8);
        body.extend_from_slice(&self.session_id);
        let mut suites = Vec::new();
        for s in &self.cipher_suites {
            suites.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&vec16(&suites));
        body.push(self.compression.len() as u8);
        body.extend_from_slice(&self.compression);
        if let Some(exts) = &self.extensions {
            let mut block = Vec::new();
            for (t, data) in exts {
                block.extend_from_slice(&t.to_be_bytes());
                block.extend_from_slice(&vec16(data));
            }
            body.extend_from_slice(&vec16(&block));
        }
        let mut msg = vec![1u8];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// The handshake message in records of at most `max_fragment` bytes.
    pub fn records(&self, record_version: u16, max_fragment: usize) -> Vec<u8> {
        records(record_version, &self.handshake(), max_fragment)
    }
}

pub fn vec16(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

/// Wraps `handshake` in handshake records of at most `max_fragment` bytes each.
pub fn records(record_version: u16, handshake: &[u8], max_fragment: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in handshake.chunks(max_fragment) {
        out.push(22);
        out.extend_from_slice(&record_version.to_be_bytes());
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// The handshake payload of a record stream (all fragments joined), for re-splitting a
/// captured hello. Assumes well-formed records.
pub fn handshake_of(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= records.len() {
        let len = usize::from(u16::from_be_bytes([records[at + 3], records[at + 4]]));
        out.extend_from_slice(&records[at + 5..at + 5 + len]);
        at += 5 + len;
    }
    out
}

/// Splits `handshake` into records with the given fragment sizes (cycled), so a test can cut
/// a hello at arbitrary points.
pub fn records_with_sizes(record_version: u16, handshake: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = handshake;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        out.push(22);
        out.extend_from_slice(&record_version.to_be_bytes());
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(chunk);
        rest = tail;
        i += 1;
    }
    out
}

/// Reads one ClientHello's records off `stream` using only the record and handshake length
/// fields (independent of the parser under test). Returns the raw record bytes.
pub async fn read_hello_records(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut hs = Vec::new();
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let mut fragment = vec![0u8; len];
        stream.read_exact(&mut fragment).await?;
        raw.extend_from_slice(&header);
        raw.extend_from_slice(&fragment);
        hs.extend_from_slice(&fragment);
        if hs.len() >= 4 {
            let want =
                4 + (usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]));
            if hs.len() >= want {
                return Ok(raw);
            }
        }
    }
}

/// A rustls client config offering ALPN h2 and http/1.1, with the given key-exchange groups
/// (empty: the provider's defaults) and protocol versions.
pub fn rustls_config(
    kx_groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !kx_groups.is_empty() {
        provider.kx_groups = kx_groups;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Captures the ClientHello that a rustls client sends for `server_name`.
pub async fn capture_rustls(config: rustls::ClientConfig, server_name: &str) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let name =
        rustls::pki_types::ServerName::try_from(server_name.to_string()).expect("server name");
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        // Fails once the capturing side hangs up; only the bytes matter.
        connector.connect(name, tcp).await.map(|_| ())
    });
    let (mut server, _) = listener.accept().await.expect("accept");
    let raw = tokio::time::timeout(Duration::from_secs(30), read_hello_records(&mut server))
        .await
        .expect("rustls sent its hello")
        .expect("read hello");
    drop(server);
    let _ = client.await;
    raw
}

/// Runs `program args` (with `{port}` replaced) against a capturing listener and returns the
/// ClientHello it sent; `None` when the program is not installed.
pub async fn capture_command(program: &str, args: &[&str]) -> Option<Vec<u8>> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let args: Vec<String> = args.iter().map(|a| a.replace("{port}", &port)).collect();
    let mut child = match Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("skipping {program} capture: {e}");
            return None;
        }
    };
    let captured = tokio::time::timeout(Duration::from_secs(30), async {
        let (mut s, _) = listener.accept().await?;
        read_hello_records(&mut s).await
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    match captured {
        Ok(Ok(raw)) => Some(raw),
        other => panic!("{program} did not send a ClientHello: {other:?}"),
    }
}

pub async fn capture_openssl() -> Option<Vec<u8>> {
    capture_command(
        "openssl",
        &[
            "s_client",
            "-connect",
            "127.0.0.1:{port}",
            "-servername",
            "x.example",
            "-alpn",
            "h2",
        ],
    )
    .await
}

pub async fn capture_curl() -> Option<Vec<u8>> {
    capture_command(
        "curl",
        &[
            "-sk",
            "--max-time",
            "20",
            "--resolve",
            "x.example:{port}:127.0.0.1",
            "https://x.example:{port}/",
        ],
    )
    .await
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A reader that hands out at most one byte per read: a client dribbling its hello.
pub struct OneByteReads<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for OneByteReads<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut one = [0u8; 1];
        let mut small = ReadBuf::new(&mut one);
        match Pin::new(&mut self.0).poll_read(cx, &mut small) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(small.filled());
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// A connected pair of loopback sockets: (client side, server side).
pub async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.expect("connect"), accepted.expect("accept").0)
}
