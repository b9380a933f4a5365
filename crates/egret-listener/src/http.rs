//! Serving one downstream connection as HTTP/1.1 or cleartext HTTP/2 (prior knowledge, as
//! Istio sidecars talk to the gateway), detected from the first bytes.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use egret_core::limits::MAX_REQUEST_HEADERS_BYTES;
use egret_http::service::handle;
use egret_http::{ConnContext, HttpShared};

/// Serves until the client is done — or, once `drain` turns true, until in-flight requests
/// have finished (hyper's graceful shutdown: `connection: close` on HTTP/1.1, GOAWAY on h2).
pub async fn serve_http<S>(
    io: S,
    shared: Arc<HttpShared>,
    ctx: Arc<ConnContext>,
    mut drain: watch::Receiver<bool>,
    idle_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Read past the 60 KiB header limit so the handler can answer it as Envoy does (431
        // with a log line); hyper's own 431 only beyond this.
        .max_buf_size(MAX_REQUEST_HEADERS_BYTES * 4)
        // Envoy's idle timeout (1 h by default): hyper's header-read timer runs exactly while
        // the connection waits for a request head, i.e. while no request is in progress.
        // (hyper's own default, 30 s, closed idle keep-alive connections that Envoy keeps.)
        .header_read_timeout((!idle_timeout.is_zero()).then_some(idle_timeout))
        .timer(TokioTimer::new());
    builder
        .http2()
        .max_header_list_size(MAX_REQUEST_HEADERS_BYTES as u32)
        // RFC 8441 `SETTINGS_ENABLE_CONNECT_PROTOCOL`: WebSockets over HTTP/2 (extended
        // CONNECT), as Envoy offers with `allow_connect` and websocket upgrades enabled.
        .enable_connect_protocol()
        .timer(TokioTimer::new());
    // Boxed: hyper's HTTP/1 dispatcher reserves room for the service future for the whole
    // life of the connection (`Pin<Box<Option<F>>>`), and ours is ~10 KB. Boxing it per
    // request moves that to the requests in flight, so an idle keep-alive connection costs
    // ~10 KB less (benches/RESULTS.md, memory per idle connection).
    let svc = service_fn(move |req| Box::pin(handle(shared.clone(), ctx.clone(), req)));
    // With upgrades: a WebSocket `101` (HTTP/1.1) or a `200` to an extended CONNECT (h2)
    // hands the connection or stream to the request (egret-http).
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let draining = *drain.borrow();
    let result = if draining {
        conn.as_mut().graceful_shutdown();
        conn.await
    } else {
        tokio::select! {
            r = conn.as_mut() => r,
            _ = async { let _ = drain.wait_for(|d| *d).await; } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
}
