//! Keep-alive connection pool over `hyper::client::conn`, keyed by (cluster, endpoint).
//!
//! Our own rather than hyper-util's legacy client: that one cannot cap connections or
//! requests per connection (DestinationRule's connectionPool needs both), nor report which
//! local address a request left from (`%UPSTREAM_LOCAL_ADDRESS%`).
//!
//! HTTP/1.1: a connection carries one request at a time; it returns to the idle list when the
//! response body has been read to the end ([`PooledConn::release`]), and is dropped (closed)
//! otherwise. HTTP/2: one shared connection per endpoint, multiplexed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use egret_core::limits::{MAX_IDLE_PER_ENDPOINT, UPSTREAM_IDLE_TIMEOUT};
use egret_core::UpstreamProtocol;
use egret_tls::UpstreamTlsContexts;

use crate::body::UpstreamBody;
use crate::cluster::ClusterState;
use crate::connect::{connect, ConnectError};

/// Connections are shared only between requests of the same cluster, endpoint and TLS
/// settings (a reload that changes a cluster's TLS gets fresh connections).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    cluster: Arc<str>,
    addr: SocketAddr,
    tls: u64,
}

struct IdleConn {
    sender: http1::SendRequest<UpstreamBody>,
    local: SocketAddr,
    since: Instant,
}

#[derive(Clone)]
struct H2Conn {
    sender: http2::SendRequest<UpstreamBody>,
    local: SocketAddr,
}

#[derive(Default)]
struct PoolInner {
    idle: Mutex<HashMap<PoolKey, Vec<IdleConn>>>,
    h2: Mutex<HashMap<PoolKey, H2Conn>>,
}

/// Shared by every listener and snapshot; cheap to clone.
#[derive(Clone, Default)]
pub struct Pool {
    inner: Arc<PoolInner>,
    tls: Option<Arc<UpstreamTlsContexts>>,
}

enum Sender {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

/// A connection checked out for one request.
pub struct PooledConn {
    sender: Sender,
    key: PoolKey,
    local: SocketAddr,
    reused: bool,
    pool: Arc<PoolInner>,
}

/// Why sending a request upstream failed, in Envoy's terms.
#[derive(Debug, thiserror::Error)]
#[error("upstream request failed: {source}")]
pub struct SendError {
    pub source: hyper::Error,
    /// The request never left: it can go out again on another connection.
    pub request: Option<Request<UpstreamBody>>,
}

impl SendError {
    /// Envoy's reset reason: `connection termination`, `protocol error` or `remote reset`.
    pub fn reset_reason(&self) -> &'static str {
        upstream_error_reason(&self.source)
    }
}

/// Envoy's reset reason for an error from an upstream connection.
pub fn upstream_error_reason(e: &hyper::Error) -> &'static str {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        "protocol error"
    } else if is_h2_reset(e) {
        "remote reset"
    } else {
        "connection termination"
    }
}

fn is_h2_reset(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if text.contains("stream error") || text.contains("reset") && text.contains("remote") {
            return true;
        }
        src = s.source();
    }
    false
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// A pool without TLS origination (plain clusters only).
    pub fn new() -> Pool {
        Pool::default()
    }

    /// A pool that originates TLS for clusters with `tls` set, using these contexts.
    pub fn with_tls(tls: Arc<UpstreamTlsContexts>) -> Pool {
        Pool {
            inner: Arc::default(),
            tls: Some(tls),
        }
    }

    /// A ready connection to `addr` for `cluster`: a pooled one if any, else a new one
    /// (TCP connect, then TLS when the cluster originates it, then the HTTP handshake for
    /// the protocol chosen: the cluster's, or what ALPN negotiated).
    pub async fn checkout(
        &self,
        cluster: &ClusterState,
        addr: SocketAddr,
    ) -> Result<PooledConn, ConnectError> {
        let spec = &cluster.spec;
        let key = PoolKey {
            cluster: spec.name.clone(),
            addr,
            tls: cluster.tls_key(),
        };
        if let Some(conn) = self.reuse_h2(&key).await {
            return Ok(conn);
        }
        if spec.protocol != UpstreamProtocol::Http2 {
            while let Some(idle) = self.pop_idle(&key) {
                let mut sender = idle.sender;
                if sender.is_closed() || idle.since.elapsed() > UPSTREAM_IDLE_TIMEOUT {
                    continue;
                }
                if sender.ready().await.is_ok() {
                    return Ok(self.conn(Sender::H1(sender), key, idle.local, true));
                }
            }
        }
        let stream = connect(addr, spec.connect_timeout).await?;
        let local = stream.local_addr().unwrap_or_else(|_| unspecified());
        match &spec.tls {
            None => {
                let h2 = spec.protocol == UpstreamProtocol::Http2;
                self.handshake(TokioIo::new(stream), key, local, h2).await
            }
            Some(tls) => {
                let Some(contexts) = &self.tls else {
                    return Err(ConnectError::TlsSetup {
                        addr,
                        message: "TLS origination is not set up in this process".into(),
                    });
                };
                // Offer h2 and HTTP/1.1 and speak what the server picks; an HTTP2/GRPC
                // cluster offers h2 only.
                let alpn: &[&[u8]] = if spec.protocol == UpstreamProtocol::Http2 {
                    &[b"h2"]
                } else {
                    egret_tls::ALPN_H2_HTTP1
                };
                let ctx = contexts.context(tls, alpn);
                let config = ctx.client_config().map_err(|e| ConnectError::TlsSetup {
                    addr,
                    message: e.to_string(),
                })?;
                let (tls_stream, negotiated) =
                    egret_tls::connect_tls(stream, config, ctx.sni(), spec.connect_timeout)
                        .await
                        .map_err(|source| ConnectError::Tls { addr, source })?;
                let h2 = negotiated.as_deref() == Some(b"h2")
                    || spec.protocol == UpstreamProtocol::Http2;
                self.handshake(TokioIo::new(tls_stream), key, local, h2)
                    .await
            }
        }
    }

    async fn handshake<IO>(
        &self,
        io: IO,
        key: PoolKey,
        local: SocketAddr,
        h2: bool,
    ) -> Result<PooledConn, ConnectError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let addr = key.addr;
        if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|source| ConnectError::Handshake { addr, source })?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            lock(&self.inner.h2).insert(
                key.clone(),
                H2Conn {
                    sender: sender.clone(),
                    local,
                },
            );
            Ok(self.conn(Sender::H2(sender), key, local, false))
        } else {
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|source| ConnectError::Handshake { addr, source })?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                }
            });
            Ok(self.conn(Sender::H1(sender), key, local, false))
        }
    }

    /// The shared HTTP/2 connection to this endpoint, if one is open and has room.
    async fn reuse_h2(&self, key: &PoolKey) -> Option<PooledConn> {
        let existing = lock(&self.inner.h2).get(key).cloned()?;
        let mut sender = existing.sender;
        if sender.is_closed() || sender.ready().await.is_err() {
            lock(&self.inner.h2).remove(key);
            return None;
        }
        Some(self.conn(Sender::H2(sender), key.clone(), existing.local, true))
    }

    fn pop_idle(&self, key: &PoolKey) -> Option<IdleConn> {
        lock(&self.inner.idle).get_mut(key).and_then(|v| v.pop())
    }

    fn conn(&self, sender: Sender, key: PoolKey, local: SocketAddr, reused: bool) -> PooledConn {
        PooledConn {
            sender,
            key,
            local,
            reused,
            pool: self.inner.clone(),
        }
    }

    /// Idle HTTP/1.1 connections currently pooled for `cluster` (for tests and /clusters).
    pub fn idle_count(&self, cluster: &str) -> usize {
        lock(&self.inner.idle)
            .iter()
            .filter(|(k, _)| &*k.cluster == cluster)
            .map(|(_, v)| v.len())
            .sum()
    }
}

impl PooledConn {
    /// `%UPSTREAM_LOCAL_ADDRESS%`.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    pub fn peer_addr(&self) -> SocketAddr {
        self.key.addr
    }
    /// Whether this connection had served a request before.
    pub fn reused(&self) -> bool {
        self.reused
    }
    pub fn is_http2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    pub async fn send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let r = match &mut self.sender {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        };
        r.map_err(|mut e| {
            let request = e.take_message();
            SendError {
                source: e.into_error(),
                request,
            }
        })
    }

    /// The response was read to its end: the connection may serve another request.
    pub fn release(self) {
        if let Sender::H1(sender) = self.sender {
            if sender.is_closed() {
                return;
            }
            let mut idle = lock(&self.pool.idle);
            let list = idle.entry(self.key).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(IdleConn {
                    sender,
                    local: self.local,
                    since: Instant::now(),
                });
            }
        }
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}
