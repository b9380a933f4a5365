//! TLS origination: one rustls `ClientConfig` per (UpstreamTls, ALPN list), cached, rebuilt
//! when its credential files change, and the handshake with Envoy-style errors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use egret_core::{TlsMode, UpstreamTls};
use rustls::client::ClientConfig;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

use crate::error::{TlsConnectError, TlsSetupError};
use crate::files::{layout, load_certified_key, FileRef, Watched};
use crate::verify::{NameCheck, ServerVerifier};
use crate::{provider, ALPN_H2_HTTP1};

/// Where the system trust store comes from (SIMPLE/MUTUAL without a CA).
#[derive(Clone, Debug, Default)]
pub enum SystemRoots {
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR` when set (as OpenSSL-based tools honour them), else
    /// the platform store (rustls-native-certs). Read once per process, on first use.
    #[default]
    Native,
    /// Exactly these locations (same semantics as the variables; for tests and `--flags`).
    Paths {
        file: Option<PathBuf>,
        dir: Option<PathBuf>,
    },
}

/// Settings shared by every upstream TLS context.
#[derive(Clone, Debug)]
pub struct UpstreamTlsOptions {
    /// `--credentials-dir`: `<dir>/<credentialName>/{tls.crt,tls.key,ca.crt}`.
    pub credentials_dir: Option<PathBuf>,
    /// `--mesh-certs`: `cert-chain.pem`, `key.pem`, `root-cert.pem`.
    pub mesh_certs_dir: Option<PathBuf>,
    pub system_roots: SystemRoots,
    /// How often, at most, a context re-checks its files for rotation.
    pub recheck_interval: Duration,
    /// Offer TLS 1.3 as well as 1.2. Envoy's client default is TLS 1.2 only; with 1.3 a server
    /// that refuses our client certificate does so after our handshake has completed, so the
    /// failure shows on the first read (see `io_transport_failure_reason`).
    pub enable_tls13: bool,
}

impl Default for UpstreamTlsOptions {
    fn default() -> Self {
        UpstreamTlsOptions {
            credentials_dir: None,
            mesh_certs_dir: None,
            system_roots: SystemRoots::Native,
            recheck_interval: Duration::from_secs(1),
            enable_tls13: true,
        }
    }
}

type Key = (UpstreamTls, Vec<Vec<u8>>);

/// A context nobody else holds is dropped after this long without a lookup.
const IDLE_EVICTION: Duration = Duration::from_secs(600);

/// The registry of upstream TLS contexts. Keep one per process; contexts for unchanged
/// settings survive configuration reloads (and with them their session caches).
pub struct UpstreamTlsContexts {
    opts: UpstreamTlsOptions,
    cache: Mutex<HashMap<Key, Arc<UpstreamTlsContext>>>,
    system_roots: Arc<OnceLock<Result<Arc<RootCertStore>, TlsSetupError>>>,
    epoch: Instant,
}

impl std::fmt::Debug for UpstreamTlsContexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsContexts")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl UpstreamTlsContexts {
    pub fn new(opts: UpstreamTlsOptions) -> UpstreamTlsContexts {
        UpstreamTlsContexts {
            opts,
            cache: Mutex::new(HashMap::new()),
            system_roots: Arc::new(OnceLock::new()),
            epoch: Instant::now(),
        }
    }

    /// The context for these settings and ALPN list (`&[b"h2", b"http/1.1"]` by default, see
    /// [`ALPN_H2_HTTP1`]). Best called when building a cluster, keeping the `Arc` (then the hot
    /// path is just [`UpstreamTlsContext::client_config`]). Never fails — credential problems
    /// are reported by `client_config`. Contexts nobody holds are evicted after 10 minutes
    /// without a lookup.
    pub fn context(&self, spec: &UpstreamTls, alpn: &[&[u8]]) -> Arc<UpstreamTlsContext> {
        let now = self.epoch.elapsed().as_secs();
        let key: Key = (spec.clone(), alpn.iter().map(|p| p.to_vec()).collect());
        if let Some(ctx) = self.lock_cache().get(&key) {
            ctx.last_used.store(now, Ordering::Relaxed);
            return ctx.clone();
        }
        // Built outside the lock: a build reads files (the system trust store the first time,
        // ~50 ms), and the workers look their contexts up under this lock.
        let built = Arc::new(UpstreamTlsContext::build(
            spec,
            key.1.clone(),
            &self.opts,
            self.system_roots.clone(),
            now,
        ));
        let mut cache = self.lock_cache();
        cache.retain(|_, c| {
            Arc::strong_count(c) > 1
                || now.saturating_sub(c.last_used.load(Ordering::Relaxed)) < IDLE_EVICTION.as_secs()
        });
        // Another caller may have built the same meanwhile: the first one stays.
        cache.entry(key).or_insert(built).clone()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<UpstreamTlsContext>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shorthand: `context(spec, ALPN_H2_HTTP1).client_config()`.
    pub fn client_config(&self, spec: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsSetupError> {
        self.context(spec, ALPN_H2_HTTP1).client_config()
    }
}

/// One upstream TLS setting, ready to connect with.
pub struct UpstreamTlsContext {
    sni: String,
    config: Watched<ClientConfig>,
    /// Seconds since the registry's epoch of the last lookup (for eviction).
    last_used: AtomicU64,
}

impl std::fmt::Debug for UpstreamTlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsContext")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

impl UpstreamTlsContext {
    /// The client config for a new connection (cheap: a lock, a clock read, an `Arc` clone;
    /// the files are re-checked at most once per `recheck_interval`). An error means the
    /// credential is missing or broken: answer 503 and log it.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsSetupError> {
        self.config.get()
    }

    /// The SNI to send (`sni`, defaulted by the compiler to the destination host).
    pub fn sni(&self) -> &str {
        &self.sni
    }

    fn build(
        spec: &UpstreamTls,
        alpn: Vec<Vec<u8>>,
        opts: &UpstreamTlsOptions,
        system_roots: Arc<OnceLock<Result<Arc<RootCertStore>, TlsSetupError>>>,
        now: u64,
    ) -> UpstreamTlsContext {
        let what = format!("upstream TLS for {} (sni {})", spec.origin, spec.sni);
        let config = match plan(spec, opts) {
            Err(e) => Watched::new(
                what,
                Vec::new(),
                opts.recheck_interval,
                Box::new(move || Err(e.clone())),
            ),
            Ok(plan) => {
                let paths = plan.watched_paths();
                let spec = spec.clone();
                let opts = opts.clone();
                Watched::new(
                    what,
                    paths,
                    opts.recheck_interval,
                    Box::new(move || build_config(&spec, &plan, &alpn, &opts, &system_roots)),
                )
            }
        };
        UpstreamTlsContext {
            sni: spec.sni.clone(),
            config,
            last_used: AtomicU64::new(now),
        }
    }
}

/// Which files a setting needs.
struct Plan {
    identity: Option<(FileRef, FileRef)>,
    /// `None`: the system trust store.
    ca: Option<FileRef>,
}

impl Plan {
    fn watched_paths(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some((c, k)) = &self.identity {
            v.extend(c.candidates.iter().cloned());
            v.extend(k.candidates.iter().cloned());
        }
        if let Some(ca) = &self.ca {
            v.extend(ca.candidates.iter().cloned());
        }
        v
    }
}

fn plan(spec: &UpstreamTls, opts: &UpstreamTlsOptions) -> Result<Plan, TlsSetupError> {
    let src = &spec.source;
    if spec.mode == TlsMode::IstioMutual {
        let dir = opts
            .mesh_certs_dir
            .as_deref()
            .ok_or_else(|| TlsSetupError::NoDirectory {
                context: layout::MESH.to_string(),
                flag: "--mesh-certs",
            })?;
        return Ok(Plan {
            identity: Some((layout::mesh_cert(dir), layout::mesh_key(dir))),
            ca: Some(layout::mesh_root(dir)),
        });
    }
    // credentialName wins over the file fields, as in Istio.
    if let Some(name) = &src.credential_name {
        let dir = opts
            .credentials_dir
            .as_deref()
            .ok_or_else(|| TlsSetupError::NoDirectory {
                context: layout::credential_context(name),
                flag: "--credentials-dir",
            })?;
        let ca = layout::credential_ca(dir, name);
        return Ok(match spec.mode {
            // SIMPLE uses the Secret only for its CA: it must be there.
            TlsMode::Simple => Plan {
                identity: None,
                ca: Some(ca),
            },
            // MUTUAL: the CA is optional (system trust store without it).
            _ => Plan {
                identity: Some((
                    layout::credential_cert(dir, name),
                    layout::credential_key(dir, name),
                )),
                ca: Some(ca),
            },
        });
    }
    let ca = src
        .ca_certificates
        .clone()
        .map(|p| FileRef::one(&spec.origin, p));
    let identity = match spec.mode {
        TlsMode::Simple => None,
        _ => match (&src.certificate, &src.private_key) {
            (Some(c), Some(k)) => Some((
                FileRef::one(&spec.origin, c.clone()),
                FileRef::one(&spec.origin, k.clone()),
            )),
            _ => {
                return Err(TlsSetupError::Config {
                    context: spec.origin.clone(),
                    reason: "MUTUAL needs clientCertificate and privateKey, or credentialName"
                        .into(),
                })
            }
        },
    };
    Ok(Plan { identity, ca })
}

fn build_config(
    spec: &UpstreamTls,
    plan: &Plan,
    alpn: &[Vec<u8>],
    opts: &UpstreamTlsOptions,
    system_roots: &OnceLock<Result<Arc<RootCertStore>, TlsSetupError>>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider();
    let identity: Option<Arc<CertifiedKey>> = match &plan.identity {
        Some((c, k)) => Some(load_certified_key(c, k, &provider)?),
        None => None,
    };
    let roots = match &plan.ca {
        // MUTUAL with credentialName: ca.crt is optional.
        Some(ca)
            if spec.mode == TlsMode::Mutual
                && spec.source.credential_name.is_some()
                && ca.find().is_none() =>
        {
            load_system_roots(system_roots, &opts.system_roots)?
        }
        Some(ca) => Arc::new(ca.load_roots()?),
        None if spec.insecure_skip_verify => Arc::new(RootCertStore::empty()),
        None => load_system_roots(system_roots, &opts.system_roots)?,
    };
    // As Istio configures Envoy: `subjectAltNames` when given; else, when the DestinationRule
    // left `sni` unset, the SNI (auto SAN validation); else the chain alone.
    let names = if !spec.subject_alt_names.is_empty() {
        NameCheck::AnyOf(spec.subject_alt_names.clone())
    } else if spec.mode == TlsMode::IstioMutual || !spec.auto_sni {
        NameCheck::ChainOnly
    } else {
        NameCheck::ServerName
    };
    let verifier = ServerVerifier::new(
        roots,
        provider.signature_verification_algorithms,
        names,
        spec.insecure_skip_verify,
    );
    let versions: &[&rustls::SupportedProtocolVersion] = if opts.enable_tls13 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS12]
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsSetupError::Config {
            context: spec.origin.clone(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        Some(ck) => {
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.to_vec();
    // Session resumption: rustls' default in-memory cache (256 sessions), one per config, so
    // repeated connections to the same upstream skip the full handshake.
    Ok(Arc::new(config))
}

fn load_system_roots(
    cell: &OnceLock<Result<Arc<RootCertStore>, TlsSetupError>>,
    source: &SystemRoots,
) -> Result<Arc<RootCertStore>, TlsSetupError> {
    cell.get_or_init(|| crate::roots::load(source).map(Arc::new))
        .clone()
}

/// An upstream TLS stream on which the peer closing TCP without a TLS `close_notify` reads as
/// the end of the stream, not an error — as BoringSSL and so Envoy read it, and as many servers
/// close. A body delimited by the connection's end then completes (Envoy 1.40: `200 -`, where
/// rustls's `UnexpectedEof` made it `UPE`); one with a length or chunks that stops short is
/// still caught by the HTTP codec.
pub struct CloseNotifyOptional<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for CloseNotifyOptional<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CloseNotifyOptional<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Runs the TLS handshake on an established connection. `sni` is normally
/// [`UpstreamTlsContext::sni`]; an IP address is verified against IP SANs and sends no SNI.
/// Returns the stream and the negotiated ALPN protocol (`None`: the server chose none —
/// speak HTTP/1.1).
pub async fn connect_tls<IO>(
    io: IO,
    config: Arc<ClientConfig>,
    sni: &str,
    handshake_timeout: Duration,
) -> Result<(TlsStream<IO>, Option<Vec<u8>>), TlsConnectError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(sni.to_string())
        .map_err(|_| TlsConnectError::InvalidServerName(sni.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = match tokio::time::timeout(handshake_timeout, connector.connect(name, io)).await {
        Err(_) => return Err(TlsConnectError::Timeout),
        Ok(Err(e)) => return Err(TlsConnectError::Handshake(e)),
        Ok(Ok(s)) => s,
    };
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    Ok((stream, alpn))
}
