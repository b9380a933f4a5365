//! Upgrades and tunnels. Istio configures the gateway for `websocket` only:
//!
//! - an HTTP/1.1 `Upgrade: websocket` request is forwarded with its `Upgrade` headers, and
//!   after the upstream's `101` both connections are spliced until they close; any other
//!   upgrade is refused (`403 upgrade_failed`), and an `h2c` upgrade offer is dropped so the
//!   request goes through as plain HTTP (checked with Envoy 1.40);
//! - on HTTP/2 the listener offers extended CONNECT (RFC 8441,
//!   `SETTINGS_ENABLE_CONNECT_PROTOCOL`). A `CONNECT` with `:protocol: websocket` is turned
//!   into the HTTP/1.1 upgrade it stands for, as Envoy's codec does with `allow_connect`: it
//!   is routed and logged as a `GET` of its `:path` (`"GET /chat HTTP/2" 101`), goes upstream
//!   as `GET` with `Connection: Upgrade` and `Upgrade: websocket`, and the upstream's `101`
//!   becomes a `200` to the client, after which the stream and the upstream connection are
//!   spliced like an HTTP/1.1 tunnel. Another `:protocol` is refused like another `Upgrade`
//!   (`403 upgrade_failed`);
//! - a plain `CONNECT` (no `:protocol`, or HTTP/1.1) is answered `404 NR`, as at an Istio
//!   gateway, which has no CONNECT routes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egret_upstream::h1::Upgraded;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use egret_core::limits::UPGRADE_IDLE_TIMEOUT;
use egret_core::{LogGuard, ResponseFlags};

/// A byte stream both ways: the client's connection once it has been upgraded.
pub trait UpgradedIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> UpgradedIo for T {}

/// The client's connection after an upgrade, as the listener hands it over once the `101`
/// (HTTP/1.1) or the `200` (HTTP/2 extended CONNECT) has gone out.
pub type UpgradedClient = Box<dyn UpgradedIo>;

/// What egret-listener's HTTP/1.1 codec puts in the extensions of a request that may
/// upgrade: the connection comes through it after the `101` has been written (dropped
/// unsent when the response was not a `101`). Shared, as request extensions must be `Clone`.
#[derive(Clone)]
pub struct PendingUpgrade(Arc<Mutex<Option<tokio::sync::oneshot::Receiver<UpgradedClient>>>>);

impl PendingUpgrade {
    pub fn new(rx: tokio::sync::oneshot::Receiver<UpgradedClient>) -> PendingUpgrade {
        PendingUpgrade(Arc::new(Mutex::new(Some(rx))))
    }
}

/// The client's side of an upgrade, to be waited for once the response is on its way.
pub enum DownstreamUpgrade {
    /// HTTP/2 (hyper's server).
    Http2(OnUpgrade),
    /// HTTP/1.1 (the listener's codec).
    Http1(tokio::sync::oneshot::Receiver<UpgradedClient>),
}

impl DownstreamUpgrade {
    /// Takes the request's upgrade handle.
    pub fn of<B>(req: &mut http::Request<B>) -> DownstreamUpgrade {
        let pending = req
            .extensions_mut()
            .remove::<PendingUpgrade>()
            .and_then(|p| p.0.lock().unwrap_or_else(|e| e.into_inner()).take());
        match pending {
            Some(rx) => DownstreamUpgrade::Http1(rx),
            None => DownstreamUpgrade::Http2(hyper::upgrade::on(req)),
        }
    }

    /// The upgraded connection, or why there is none.
    async fn wait(self) -> Result<UpgradedClient, String> {
        match self {
            DownstreamUpgrade::Http2(on) => match on.await {
                Ok(up) => Ok(Box::new(TokioIo::new(up))),
                Err(e) => Err(e.to_string()),
            },
            DownstreamUpgrade::Http1(rx) => rx
                .await
                .map_err(|_| "the connection was not upgraded".to_string()),
        }
    }
}

/// What a request asks to upgrade to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upgrade {
    None,
    WebSocket,
    /// Anything but `websocket` (and `h2c`): refused.
    Other,
}

/// Reads `Connection: upgrade` + `Upgrade: ...` of an HTTP/1.1 request.
pub fn requested(version: http::Version, headers: &http::HeaderMap) -> Upgrade {
    if version != http::Version::HTTP_11 && version != http::Version::HTTP_10 {
        return Upgrade::None;
    }
    let connection_upgrade = crate::headers::connection_has(headers, "upgrade");
    let Some(value) = headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
    else {
        return Upgrade::None;
    };
    if !connection_upgrade {
        return Upgrade::None;
    }
    let value = value.trim();
    if value.eq_ignore_ascii_case("websocket") {
        Upgrade::WebSocket
    } else if value.eq_ignore_ascii_case("h2c") {
        Upgrade::None
    } else {
        Upgrade::Other
    }
}

/// What an HTTP/2 extended CONNECT (RFC 8441) asks for, from its `:protocol`; None for any
/// other request (a plain `CONNECT` included).
pub fn extended_connect<B>(req: &http::Request<B>) -> Option<Upgrade> {
    if req.method() != http::Method::CONNECT || req.version() != http::Version::HTTP_2 {
        return None;
    }
    let protocol = req.extensions().get::<hyper::ext::Protocol>()?;
    Some(if protocol.as_str().eq_ignore_ascii_case("websocket") {
        Upgrade::WebSocket
    } else {
        Upgrade::Other
    })
}

/// Splices the two upgraded connections once both are ready, then hands the record to the
/// log. As in Envoy 1.40, the tunnel ends when either side ends its stream (the FIN and any
/// bytes before it are passed on first): the client ending it is `DC
/// downstream_remote_disconnect`, the upstream `UC
/// upstream_reset_after_response_started{connection_termination}`; the bytes each way are
/// `%BYTES_RECEIVED%` / `%BYTES_SENT%`.
pub fn spawn_tunnel(downstream: DownstreamUpgrade, up: Upgraded, mut guard: LogGuard) {
    tokio::spawn(async move {
        let down = match downstream.wait().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "downstream upgrade failed");
                set_end(&mut guard, Side::Downstream);
                return;
            }
        };
        let received = AtomicU64::new(0);
        let sent = AtomicU64::new(0);
        let base = Instant::now();
        let last_activity = AtomicU64::new(0);
        let (down_read, down_write) = tokio::io::split(down);
        let (up_read, up_write) = tokio::io::split(up);
        let ended = tokio::select! {
            r = pump(down_read, up_write, &received, &last_activity, base) => match r {
                Err(Failed::Write) => Some(Side::Upstream),
                Ok(()) | Err(Failed::Read) => Some(Side::Downstream),
            },
            r = pump(up_read, down_write, &sent, &last_activity, base) => match r {
                Err(Failed::Write) => Some(Side::Downstream),
                Ok(()) | Err(Failed::Read) => Some(Side::Upstream),
            },
            () = idle(&last_activity, base, UPGRADE_IDLE_TIMEOUT) => None,
        };
        let rec = guard.record();
        rec.bytes_received = received.load(Ordering::Relaxed);
        rec.bytes_sent = sent.load(Ordering::Relaxed);
        match ended {
            Some(side) => set_end(&mut guard, side),
            None => {
                let rec = guard.record();
                rec.set_flag(ResponseFlags::STREAM_IDLE_TIMEOUT);
                rec.response_code_details = Some("stream_idle_timeout".into());
            }
        }
        guard.finish();
    });
}

/// The client's side of an extended CONNECT whose upstream did not switch protocols but
/// answered 2xx: hyper opens the tunnel anyway, so end it at once (END_STREAM).
pub fn end_refused_tunnel(downstream: DownstreamUpgrade) {
    tokio::spawn(async move {
        if let Ok(mut io) = downstream.wait().await {
            let _ = io.shutdown().await;
        }
    });
}

/// Which side of a direction failed.
enum Failed {
    Read,
    Write,
}

/// Copies `from` → `to` until `from` ends (then shuts `to` down), counting bytes.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    count: &AtomicU64,
    last_activity: &AtomicU64,
    base: Instant,
) -> Result<(), Failed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; TUNNEL_BUFFER_BYTES];
    loop {
        let n = from.read(&mut buf).await.map_err(|_| Failed::Read)?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        last_activity.store(millis_since(base), Ordering::Relaxed);
        let chunk = buf.get(..n).unwrap_or_default();
        to.write_all(chunk).await.map_err(|_| Failed::Write)?;
        to.flush().await.map_err(|_| Failed::Write)?;
    }
}

/// Resolves once no byte has moved for `limit`.
async fn idle(last_activity: &AtomicU64, base: Instant, limit: Duration) {
    loop {
        let last = base + Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let deadline = last + limit;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

fn millis_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Bytes buffered per direction of a tunnel.
const TUNNEL_BUFFER_BYTES: usize = 16 * 1024;

/// One side of a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Downstream,
    Upstream,
}

fn set_end(guard: &mut LogGuard, side: Side) {
    let rec = guard.record();
    match side {
        Side::Downstream => {
            rec.set_flag(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            rec.response_code_details = Some("downstream_remote_disconnect".into());
        }
        Side::Upstream => {
            rec.set_flag(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION);
            rec.response_code_details =
                Some("upstream_reset_after_response_started{connection_termination}".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut m = http::HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn upgrade_kinds() {
        let v = http::Version::HTTP_11;
        let ws = h(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert_eq!(requested(v, &ws), Upgrade::WebSocket);
        assert_eq!(requested(http::Version::HTTP_2, &ws), Upgrade::None);
        let other = h(&[("connection", "upgrade"), ("upgrade", "foo")]);
        assert_eq!(requested(v, &other), Upgrade::Other);
        let h2c = h(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(requested(v, &h2c), Upgrade::None);
        // `Upgrade` without `Connection: upgrade` is not an upgrade request.
        assert_eq!(requested(v, &h(&[("upgrade", "websocket")])), Upgrade::None);
    }

    #[test]
    fn extended_connect_kinds() {
        let req = |method: http::Method, version, protocol: Option<&'static str>| {
            let mut r = http::Request::new(());
            *r.method_mut() = method;
            *r.version_mut() = version;
            if let Some(p) = protocol {
                r.extensions_mut()
                    .insert(hyper::ext::Protocol::from_static(p));
            }
            r
        };
        let h2 = http::Version::HTTP_2;
        let connect = http::Method::CONNECT;
        assert_eq!(
            extended_connect(&req(connect.clone(), h2, Some("websocket"))),
            Some(Upgrade::WebSocket)
        );
        assert_eq!(
            extended_connect(&req(connect.clone(), h2, Some("WebSocket"))),
            Some(Upgrade::WebSocket)
        );
        assert_eq!(
            extended_connect(&req(connect.clone(), h2, Some("connect-udp"))),
            Some(Upgrade::Other)
        );
        // A plain CONNECT, or `:protocol` on anything else, is not an extended CONNECT.
        assert_eq!(extended_connect(&req(connect.clone(), h2, None)), None);
        assert_eq!(
            extended_connect(&req(http::Method::GET, h2, Some("websocket"))),
            None
        );
        assert_eq!(
            extended_connect(&req(connect, http::Version::HTTP_11, Some("websocket"))),
            None
        );
    }
}
