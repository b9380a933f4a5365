//! TCP connect with the cluster's timeout, reporting failures in Envoy's words.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use egret_core::TcpKeepalive;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("connect to {addr} timed out")]
    Timeout { addr: SocketAddr },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("TLS to {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: egret_tls::TlsConnectError,
    },
    /// The cluster's TLS material could not be loaded (a missing credential file, ...).
    #[error("TLS to {addr} not possible: {message}")]
    TlsSetup { addr: SocketAddr, message: String },
    /// A circuit breaker is open (`connectionPool` limits): Envoy answers `503 UO` with reset
    /// reason `overflow`, does not retry, and logs no upstream host.
    #[error("circuit breaker open: {limit} reached")]
    Overflow { limit: &'static str },
}

impl ConnectError {
    /// Envoy's reset reason for a failed connect (`remote connection failure`,
    /// `connection timeout`), as used in local-reply bodies and response-code details.
    pub fn reset_reason(&self) -> &'static str {
        match self {
            ConnectError::Timeout { .. } => "connection timeout",
            ConnectError::Tls { source, .. } => source.reset_reason(),
            ConnectError::TlsSetup { .. } => "connection failure",
            ConnectError::Overflow { .. } => "overflow",
            _ => "remote connection failure",
        }
    }

    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` as Envoy 1.40 prints it, e.g.
    /// `delayed_connect_error:_Connection_refused` (Envoy replaces spaces by `_`).
    pub fn transport_failure_reason(&self) -> Option<String> {
        match self {
            ConnectError::Io { source, .. } => {
                Some(format!("delayed connect error: {}", strerror(source)).replace(' ', "_"))
            }
            ConnectError::Timeout { .. } => None,
            ConnectError::Handshake { .. } => None,
            ConnectError::Tls { source, .. } => source.transport_failure_reason(),
            ConnectError::TlsSetup { message, .. } => Some(message.replace(' ', "_")),
            ConnectError::Overflow { .. } => None,
        }
    }

    /// A circuit breaker refused the request (no connect was attempted).
    pub fn is_overflow(&self) -> bool {
        matches!(self, ConnectError::Overflow { .. })
    }
}

/// The C library's text for an OS error ("Connection refused"), without Rust's
/// " (os error 111)" suffix, so our text matches Envoy's.
pub fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    connect_with(addr, timeout, None).await
}

/// [`connect`], with the cluster's `tcpKeepalive` applied to the socket.
pub async fn connect_with(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<&TcpKeepalive>,
) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Err(_) => return Err(ConnectError::Timeout { addr }),
    };
    // Requests and responses are small writes; Nagle would add up to 40 ms each.
    let _ = stream.set_nodelay(true);
    if let Some(k) = keepalive {
        if let Err(e) = set_keepalive(&stream, k) {
            tracing::debug!(%addr, error = %e, "could not set TCP keepalive");
        }
    }
    Ok(stream)
}

/// Istio: SO_KEEPALIVE on, and each of probes/time/interval that is set (in whole seconds,
/// as Envoy takes them); the rest keep the kernel's defaults.
fn set_keepalive(stream: &TcpStream, k: &TcpKeepalive) -> io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    sock.set_keepalive(true)?;
    let mut ka = socket2::TcpKeepalive::new();
    let mut any = false;
    if let Some(t) = k.time {
        ka = ka.with_time(Duration::from_secs(t.as_secs().max(1)));
        any = true;
    }
    if let Some(i) = k.interval {
        ka = ka.with_interval(Duration::from_secs(i.as_secs().max(1)));
        any = true;
    }
    if let Some(p) = k.probes {
        ka = ka.with_retries(p);
        any = true;
    }
    if any {
        sock.set_tcp_keepalive(&ka)?;
    }
    Ok(())
}
