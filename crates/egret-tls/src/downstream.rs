//! TLS termination for Gateway servers: one rustls `ServerConfig` per server (each may have its
//! own client-certificate policy), chosen by the SNI of the ClientHello.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use egret_core::host::HostIndex;
use egret_core::{DownstreamTls, TlsMode, TlsServer};
use rustls::server::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::server::TlsStream;

use crate::der::CertInfo;
use crate::error::{AcceptError, TlsSetupError};
use crate::files::{layout, load_certified_key, FileRef, Watched};
use crate::verify::ClientVerifier;
use crate::{provider, ALPN_H2_HTTP1};

/// Settings shared by the servers of one acceptor.
#[derive(Clone, Debug)]
pub struct DownstreamTlsOptions {
    pub credentials_dir: Option<PathBuf>,
    pub mesh_certs_dir: Option<PathBuf>,
    /// How often, at most, a server re-checks its files for rotation.
    pub recheck_interval: Duration,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<Vec<u8>>,
}

impl Default for DownstreamTlsOptions {
    fn default() -> Self {
        DownstreamTlsOptions {
            credentials_dir: None,
            mesh_certs_dir: None,
            recheck_interval: Duration::from_secs(1),
            alpn: ALPN_H2_HTTP1.iter().map(|p| p.to_vec()).collect(),
        }
    }
}

/// A terminated TLS connection and what the listener needs to know about it.
#[derive(Debug)]
pub struct Accepted<IO> {
    pub stream: TlsStream<IO>,
    /// The SNI the client sent (lower-case), for `%REQUESTED_SERVER_NAME%`.
    pub sni: Option<String>,
    /// The negotiated ALPN protocol (`h2`, `http/1.1`), if any.
    pub alpn: Option<Vec<u8>>,
    /// The URI SANs of the client certificate, joined by `,` (`%DOWNSTREAM_PEER_URI_SAN%`).
    pub peer_uri_san: Option<String>,
    /// The client certificate's subject, issuer and fingerprint, for the access log.
    pub peer_cert: Option<egret_core::PeerCertInfo>,
    /// The URI SANs of the server's own certificate, joined by `,`
    /// (`%DOWNSTREAM_LOCAL_URI_SAN%`).
    pub local_uri_san: Option<String>,
    /// Index into the `servers` slice given to [`DownstreamTlsAcceptor::new`].
    pub server: usize,
    /// The negotiated version and cipher, as Envoy names them.
    pub session: Option<egret_core::TlsSession>,
    /// The `x-forwarded-client-cert` value for the client's certificate, as Istio's gateways
    /// set it (Envoy's `SANITIZE_SET` with subject, cert, URI and DNS); None without one.
    pub xfcc: Option<String>,
}

/// Terminates TLS for the Gateway servers of one port.
pub struct DownstreamTlsAcceptor {
    configs: Vec<Watched<ServerSide>>,
    index: HostIndex<usize>,
}

/// One server's handshake settings, built from its files.
struct ServerSide {
    config: Arc<ServerConfig>,
    /// The same without ALPN, for a client that offers none of ours: an Istio sidecar offers
    /// `istio-peer-exchange,istio` to a gateway, which BoringSSL (Envoy) answers without ALPN
    /// where rustls would refuse the handshake (`no_application_protocol`).
    without_alpn: Arc<ServerConfig>,
    /// The URI SANs of the server's own certificate: the `By` of XFCC.
    local_uri_sans: Vec<String>,
}

impl std::fmt::Debug for DownstreamTlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownstreamTlsAcceptor")
            .field("servers", &self.configs.len())
            .finish_non_exhaustive()
    }
}

impl DownstreamTlsAcceptor {
    /// Builds the acceptor. Fails for settings that can never work (MUTUAL without a CA,
    /// ISTIO_MUTUAL without `--mesh-certs`, no certificate configured). Missing or broken
    /// files only fail the handshakes for that server's hosts (logged, [`AcceptError::Setup`])
    /// until they are fixed, so one bad Secret does not take down the other hosts of the port.
    pub fn new(
        servers: &[TlsServer],
        credentials_dir: Option<PathBuf>,
        mesh_certs_dir: Option<PathBuf>,
    ) -> Result<DownstreamTlsAcceptor, TlsSetupError> {
        Self::with_options(
            servers,
            DownstreamTlsOptions {
                credentials_dir,
                mesh_certs_dir,
                ..Default::default()
            },
        )
    }

    pub fn with_options(
        servers: &[TlsServer],
        opts: DownstreamTlsOptions,
    ) -> Result<DownstreamTlsAcceptor, TlsSetupError> {
        let mut configs = Vec::with_capacity(servers.len());
        let mut index = HostIndex::default();
        for (i, server) in servers.iter().enumerate() {
            let plan = plan(&server.tls, &opts)?;
            let mut paths: Vec<PathBuf> = Vec::new();
            for f in [Some(&plan.cert), Some(&plan.key), plan.client_ca.as_ref()]
                .into_iter()
                .flatten()
            {
                paths.extend(f.candidates.iter().cloned());
            }
            let tls = server.tls.clone();
            let alpn = opts.alpn.clone();
            let what = format!("TLS server {}", tls.origin);
            configs.push(Watched::new(
                what,
                paths,
                opts.recheck_interval,
                Box::new(move || build_config(&tls, &plan, &alpn)),
            ));
            for h in &server.hosts {
                index.insert(h, i);
            }
        }
        Ok(DownstreamTlsAcceptor { configs, index })
    }

    /// Reads the ClientHello, picks the server by SNI (exact, then the longest `*.suffix`, then
    /// `*`, which also takes clients that send no SNI), and completes the handshake. Wrap it in
    /// the listener's handshake timeout.
    ///
    /// Nothing is written to `io` before a server was chosen: bytes that are not a
    /// ClientHello get no alert and an SNI no server takes gets none either — as Envoy's TLS
    /// inspector only reads, and its listener closes what no filter chain takes. The SNI is
    /// read from the hello as sent (lower-cased), as the TLS inspector reads it: a trailing
    /// dot stays (then no server matches), and a hello rustls would refuse (TLS 1.0/1.1)
    /// still picks its server, which answers it with an alert (`protocol_version`, as
    /// BoringSSL does).
    pub async fn accept<IO>(&self, mut io: IO) -> Result<Accepted<IO>, AcceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut raw = Vec::new();
        // No timeout of its own: the caller bounds the whole accept.
        let parsed = egret_sni::read_client_hello_into(
            &mut io,
            &mut raw,
            Duration::from_secs(24 * 3600),
            egret_sni::MAX_CLIENT_HELLO_RECORD_BYTES,
        )
        .await;
        let parsed = match parsed {
            Ok(hello) => hello,
            Err(egret_sni::ReadError::Closed) if raw.is_empty() => return Err(AcceptError::Silent),
            Err(egret_sni::ReadError::Closed) => {
                let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                return Err(AcceptError::ClientHello(eof));
            }
            Err(egret_sni::ReadError::Io(e)) => return Err(AcceptError::ClientHello(e)),
            Err(e) => {
                let e = io::Error::new(io::ErrorKind::InvalidData, e);
                return Err(AcceptError::ClientHello(e));
            }
        };
        let sni = parsed.sni.clone();
        let Some(&server) = self.index.find(sni.as_deref().unwrap_or("")) else {
            return Err(AcceptError::NoMatchingServer { sni });
        };
        // The records holding the hello go to rustls' Acceptor; what the client sent after
        // them (it rarely sends anything before the server's answer) goes to the connection
        // before the handshake, so nothing read is lost.
        let consumed = parsed.consumed.min(raw.len());
        let after_hello = raw.get(consumed..).unwrap_or_default().to_vec();
        let handed = hand_to_rustls(raw.get(..consumed).unwrap_or_default());
        // rustls holds what it needs: the bytes are not kept through the handshake.
        drop(raw);
        let hello = match handed {
            Ok(hello) => hello,
            Err((e, alert)) => {
                // TLS, but not a hello rustls takes (no signature_algorithms: TLS 1.1 or
                // older): the server refuses it with an alert, as BoringSSL does.
                let old = parsed.legacy_version < 0x0303 && !parsed.offers_tls13();
                let mut bytes = Vec::new();
                if old {
                    bytes.extend_from_slice(&PROTOCOL_VERSION_ALERT);
                } else if let Some(mut alert) = alert {
                    let _ = alert.write_all(&mut bytes);
                }
                let _ = io.write_all(&bytes).await;
                let _ = io.shutdown().await;
                return Err(AcceptError::Handshake(io::Error::new(
                    io::ErrorKind::InvalidData,
                    e,
                )));
            }
        };
        let start = tokio_rustls::StartHandshake::from_parts(hello, io);
        let side = self
            .configs
            .get(server)
            .ok_or(AcceptError::NoMatchingServer { sni: sni.clone() })?
            .get()?;
        let offers_ours = start.client_hello().alpn().is_none_or(|mut offered| {
            offered.any(|p| side.config.alpn_protocols.iter().any(|ours| ours == p))
        });
        let config = if offers_ours {
            side.config.clone()
        } else {
            side.without_alpn.clone()
        };
        let stream = start
            .into_stream_with(config, |conn| {
                let mut rest = after_hello.as_slice();
                while !rest.is_empty() {
                    match conn.read_tls(&mut rest) {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
            })
            .await
            .map_err(AcceptError::Handshake)?;
        let conn = stream.get_ref().1;
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let peer = conn.peer_certificates().and_then(|certs| certs.first());
        let info = peer.and_then(|c| CertInfo::parse(c));
        let peer_uri_san = info
            .as_ref()
            .map(|i| i.uri_sans().join(","))
            .filter(|s| !s.is_empty());
        let peer_cert = peer
            .zip(info.as_ref())
            .map(|(der, info)| egret_core::PeerCertInfo {
                subject: info.subject_rfc2253(),
                issuer: info.issuer_rfc2253(),
                fingerprint_256: crate::xfcc::sha256_hex(der),
            });
        let xfcc = peer
            .zip(info.as_ref())
            .zip(peer_cert.as_ref())
            .map(|((der, info), cert)| {
                crate::xfcc::client_cert_details(&side.local_uri_sans, der, info, cert)
            });
        let local_uri_san = Some(side.local_uri_sans.join(",")).filter(|s| !s.is_empty());
        let session = crate::session_names(conn.protocol_version(), conn.negotiated_cipher_suite());
        Ok(Accepted {
            stream,
            sni,
            alpn,
            peer_uri_san,
            peer_cert,
            local_uri_san,
            server,
            session,
            xfcc,
        })
    }
}

/// A fatal `protocol_version` alert (70), as BoringSSL answers a TLS 1.0/1.1 hello.
const PROTOCOL_VERSION_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46];

/// The records holding a ClientHello, already read, handed to rustls' `Acceptor` (the first
/// half of `tokio_rustls::LazyConfigAcceptor`, without its alert for bytes that are not a
/// hello). Reads and accepts alternate, as there: rustls grows its buffer past one record
/// only while it joins a message, so a hello over two records (up to egret-sni's 64 KiB)
/// needs `accept` between the reads.
fn hand_to_rustls(
    hello: &[u8],
) -> Result<rustls::server::Accepted, (rustls::Error, Option<rustls::server::AcceptedAlert>)> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = hello;
    loop {
        if !rest.is_empty() {
            if let Err(e) = acceptor.read_tls(&mut rest) {
                let e = rustls::Error::General(format!("reading the ClientHello: {e}"));
                return Err((e, None));
            }
        }
        match acceptor.accept() {
            Ok(Some(hello)) => return Ok(hello),
            Ok(None) if rest.is_empty() => {
                let e = rustls::Error::General("the ClientHello did not reach rustls whole".into());
                return Err((e, None));
            }
            Ok(None) => {}
            Err((e, alert)) => return Err((e, Some(alert))),
        }
    }
}

struct Plan {
    cert: FileRef,
    key: FileRef,
    client_ca: Option<FileRef>,
}

fn plan(tls: &DownstreamTls, opts: &DownstreamTlsOptions) -> Result<Plan, TlsSetupError> {
    let src = &tls.source;
    if tls.mode == TlsMode::IstioMutual {
        let dir = opts
            .mesh_certs_dir
            .as_deref()
            .ok_or_else(|| TlsSetupError::NoDirectory {
                context: layout::MESH.to_string(),
                flag: "--mesh-certs",
            })?;
        return Ok(Plan {
            cert: layout::mesh_cert(dir),
            key: layout::mesh_key(dir),
            client_ca: Some(layout::mesh_root(dir)),
        });
    }
    let mutual = tls.mode == TlsMode::Mutual;
    if let Some(name) = &src.credential_name {
        let dir = opts
            .credentials_dir
            .as_deref()
            .ok_or_else(|| TlsSetupError::NoDirectory {
                context: layout::credential_context(name),
                flag: "--credentials-dir",
            })?;
        return Ok(Plan {
            cert: layout::credential_cert(dir, name),
            key: layout::credential_key(dir, name),
            client_ca: mutual.then(|| layout::credential_ca(dir, name)),
        });
    }
    let (Some(cert), Some(key)) = (&src.certificate, &src.private_key) else {
        return Err(TlsSetupError::Config {
            context: tls.origin.clone(),
            reason: "serverCertificate and privateKey, or credentialName, are required".into(),
        });
    };
    let client_ca = match (&src.ca_certificates, mutual) {
        (Some(ca), true) => Some(FileRef::one(&tls.origin, ca.clone())),
        (None, true) => {
            return Err(TlsSetupError::Config {
                context: tls.origin.clone(),
                reason: "MUTUAL needs caCertificates or credentialName".into(),
            })
        }
        (_, false) => None,
    };
    Ok(Plan {
        cert: FileRef::one(&tls.origin, cert.clone()),
        key: FileRef::one(&tls.origin, key.clone()),
        client_ca,
    })
}

fn build_config(
    tls: &DownstreamTls,
    plan: &Plan,
    alpn: &[Vec<u8>],
) -> Result<Arc<ServerSide>, TlsSetupError> {
    let provider = provider();
    let ck = load_certified_key(&plan.cert, &plan.key, &provider)?;
    let local_uri_sans = ck
        .cert
        .first()
        .and_then(|c| CertInfo::parse(c))
        .map(|i| i.uri_sans())
        .unwrap_or_default();
    let config_err = |e: String| TlsSetupError::Config {
        context: tls.origin.clone(),
        reason: e,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| config_err(e.to_string()))?;
    let builder = match &plan.client_ca {
        Some(ca) => {
            let roots = Arc::new(ca.load_roots()?);
            let sans = if tls.mode == TlsMode::Mutual {
                tls.subject_alt_names.clone()
            } else {
                Vec::new()
            };
            let verifier = ClientVerifier::new(roots, provider, sans)
                .map_err(|e| config_err(e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(verifier))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)));
    let without_alpn = Arc::new(config.clone());
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(ServerSide {
        config: Arc::new(config),
        without_alpn,
        local_uri_sans,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS 1.2 ClientHello with a padding extension of `padding` bytes, split into records
    /// of at most 16 KiB.
    fn big_hello(padding: usize) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut push_ext = |kind: u16, data: &[u8]| {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
            ext.extend_from_slice(data);
        };
        push_ext(13, &[0x00, 0x04, 0x04, 0x03, 0x08, 0x04]); // signature_algorithms
        push_ext(10, &[0x00, 0x02, 0x00, 0x1d]); // supported_groups: x25519
        push_ext(11, &[0x01, 0x00]); // ec_point_formats
        push_ext(21, &vec![0u8; padding]); // padding
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[9u8; 32]);
        body.push(0);
        body.extend_from_slice(&[0x00, 0x02, 0xc0, 0x2f]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&ext);
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut message = vec![0x01, len[1], len[2], len[3]];
        message.extend_from_slice(&body);
        let mut out = Vec::new();
        for chunk in message.chunks(16_384) {
            out.extend_from_slice(&[0x16, 0x03, 0x03]);
            out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// A hello over two records past rustls' first buffer (18 KiB) reaches rustls whole: the
    /// reads alternate with `accept`, as rustls needs (a loop of reads lost the rest).
    #[test]
    fn a_large_hello_over_two_records_is_accepted() {
        let hello = big_hello(20_000);
        assert!(hello.len() > 20_000);
        let parsed = egret_sni::parse_client_hello(&hello).expect("egret-sni takes it");
        assert_eq!(parsed.consumed, hello.len());
        assert!(hand_to_rustls(&hello).is_ok());
        assert!(hand_to_rustls(&big_hello(10)).is_ok());
    }
}
