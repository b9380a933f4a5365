//! Helpers shared by the integration tests: scratch folders, v1 certificates like
//! `openssl x509 -req` makes, and small TLS servers on 127.0.0.1:0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use egret_test_support::certs::{provider, TestCa, TestCert};
use rustls::server::ServerConfig;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::SignatureScheme;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A scratch folder removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "egret-tls-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let p = self.0.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- v1 certificates, as `openssl x509 -req` (OpenSSL 3.0) makes them ----

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(contents.len(), &mut out);
    out.extend_from_slice(contents);
    out
}

/// (tag, whole element, rest)
fn split(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, hdr) = if input[1] < 0x80 {
        (input[1] as usize, 2)
    } else {
        let n = (input[1] & 0x7f) as usize;
        let mut l = 0usize;
        for i in 0..n {
            l = (l << 8) | input[2 + i] as usize;
        }
        (l, 2 + n)
    };
    (tag, &input[..hdr + len], &input[hdr + len..])
}

fn contents(el: &[u8]) -> &[u8] {
    let (_, whole, _) = split(el);
    let hdr = if whole[1] < 0x80 {
        2
    } else {
        2 + (whole[1] & 0x7f) as usize
    };
    &whole[hdr..]
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let b = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A certificate without version field and extensions (X.509 v1), subject `CN=<cn>`, signed
/// by `ca`, with its own key.
pub struct V1Cert {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl V1Cert {
    pub fn new(ca: &TestCa, cn: &str) -> V1Cert {
        let base: TestCert = ca.server_cert_cn_only(cn);
        let orig = base.cert_der();
        let cert_body = contents(&orig);
        let (_, tbs, rest) = split(cert_body);
        let (_, sig_alg, _) = split(rest);
        // TBSCertificate without [0] version and [3] extensions.
        let mut fields = Vec::new();
        let mut r = contents(tbs);
        while !r.is_empty() {
            let (tag, el, rest) = split(r);
            if tag != 0xa0 && tag != 0xa3 {
                fields.extend_from_slice(el);
            }
            r = rest;
        }
        let tbs_v1 = der(0x30, &fields);
        let ca_key = PrivateKeyDer::from_pem_slice(ca.key_pem().as_bytes()).expect("CA key");
        let signing = provider()
            .key_provider
            .load_private_key(ca_key)
            .expect("load CA key");
        let signer = signing
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .expect("CA key is P-256");
        let sig = signer.sign(&tbs_v1).expect("sign");
        let mut bits = vec![0u8];
        bits.extend(sig);
        let mut body = tbs_v1;
        body.extend_from_slice(sig_alg);
        body.extend(der(0x03, &bits));
        let cert = der(0x30, &body);
        V1Cert {
            cert_pem: pem("CERTIFICATE", &cert),
            der: CertificateDer::from(cert),
            key_pem: base.key_pem().to_string(),
            ca_pem: ca.cert_pem().to_string(),
        }
    }

    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key");
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .expect("load key");
        Arc::new(CertifiedKey::new(vec![self.der.clone()], signing))
    }

    pub fn write_secret_dir(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join("tls.crt"), &self.cert_pem).expect("write");
        std::fs::write(dir.join("tls.key"), &self.key_pem).expect("write");
        std::fs::write(dir.join("ca.crt"), &self.ca_pem).expect("write");
    }
}

/// A server config presenting a v1 certificate (rustls' `with_single_cert` refuses those).
pub fn v1_server_config(cert: &V1Cert) -> ServerConfig {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(cert.certified_key())));
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    c
}

// ---- a TLS server that reports what it saw ----

/// What the test server saw on one connection.
#[derive(Debug)]
pub struct Seen {
    /// The client's leaf certificate, if it sent one.
    pub client_cert: Option<CertificateDer<'static>>,
    pub sni: Option<String>,
}

/// Serves TLS on 127.0.0.1:0: after the handshake writes `hello\n`, then echoes until EOF.
/// Each handshake's outcome is sent on the channel.
pub async fn tls_server(
    config: ServerConfig,
) -> (SocketAddr, mpsc::UnboundedReceiver<Result<Seen, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut s) => {
                        let (_, conn) = s.get_ref();
                        let seen = Seen {
                            client_cert: conn.peer_certificates().and_then(|c| c.first().cloned()),
                            sni: conn.server_name().map(str::to_string),
                        };
                        let _ = tx.send(Ok(seen));
                        if s.write_all(b"hello\n").await.is_err() {
                            return;
                        }
                        let _ = s.flush().await;
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Reads the server's `hello\n` greeting.
pub async fn read_hello<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<()> {
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"hello\n");
    Ok(())
}
