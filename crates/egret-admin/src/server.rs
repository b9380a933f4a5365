//! The admin (`127.0.0.1:15000`), health (`0.0.0.0:15021`) and Prometheus (`0.0.0.0:15090`)
//! HTTP servers, answering as Envoy's admin interface and Istio's gateway pod do.

use std::borrow::Cow;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use egret_core::Snapshot;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::Metrics;

/// Where each server listens; `None` turns it off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Envoy's admin port; loopback by default because it can change state.
    pub admin: Option<SocketAddr>,
    /// Istio's gateway health port (`/healthz/ready`), probed by the kubelet.
    pub health: Option<SocketAddr>,
    /// Istio's Envoy Prometheus port (`/stats/prometheus`), scraped by Prometheus.
    pub prometheus: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 15000))),
            health: Some(SocketAddr::from(([0, 0, 0, 0], 15021))),
            prometheus: Some(SocketAddr::from(([0, 0, 0, 0], 15090))),
        }
    }
}

/// Envoy's server states (`envoy.admin.v3.ServerInfo.State`), as `/ready` prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    Live,
    Draining,
    PreInitializing,
    Initializing,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Live => "LIVE",
            ServerState::Draining => "DRAINING",
            ServerState::PreInitializing => "PRE_INITIALIZING",
            ServerState::Initializing => "INITIALIZING",
        }
    }
}

/// What the admin servers need from the gateway; the binary implements it. Every method is
/// called on a runtime thread while a request waits, so none may block for long: `quit` and
/// `drain_listeners` should signal and return.
pub trait AdminState: Send + Sync + 'static {
    /// Listeners bound, first configuration loaded, not draining.
    fn ready(&self) -> bool;
    /// The configuration in force.
    fn snapshot(&self) -> Arc<Snapshot>;
    /// `/config_dump`.
    fn config_dump(&self) -> serde_json::Value;
    /// `/clusters`.
    fn clusters_text(&self) -> String;
    /// `/clusters?format=json`, Envoy's `envoy.admin.v3.Clusters` shape.
    fn clusters_json(&self) -> serde_json::Value {
        serde_json::json!({ "cluster_statuses": [] })
    }
    /// `POST /logging?level=…`; the error is shown to the caller (400).
    fn set_log_level(&self, level: &str) -> Result<(), String>;
    /// `POST /drain_listeners`.
    fn drain_listeners(&self);
    /// `POST /quitquitquit`.
    fn quit(&self);
    fn metrics(&self) -> &Metrics;

    /// `/ready`'s answer. The default maps `ready()` to LIVE / PRE_INITIALIZING; override to
    /// report DRAINING during shutdown, as Envoy does.
    fn server_state(&self) -> ServerState {
        if self.ready() {
            ServerState::Live
        } else {
            ServerState::PreInitializing
        }
    }

    /// `GET /logging`: the current level or filter, if the binary knows it.
    fn log_level(&self) -> Option<String> {
        None
    }
}

/// The running servers. Dropping this leaves them running; call [`AdminHandles::shutdown`] to
/// stop accepting.
#[derive(Debug)]
pub struct AdminHandles {
    admin: Option<SocketAddr>,
    health: Option<SocketAddr>,
    prometheus: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl AdminHandles {
    /// The admin server's bound address (with the real port when configured with port 0).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health
    }
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus
    }
    /// Stops accepting on every server (connections already open finish their request).
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct AdminServers;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Admin,
    Health,
    Prometheus,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Admin => "admin",
            Kind::Health => "health",
            Kind::Prometheus => "prometheus",
        }
    }
}

/// Concurrent connections per server; beyond it the server stops accepting until one ends.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request head within this (also closes idle keep-alive connections).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

impl AdminServers {
    /// Binds every configured address, then starts serving. Must be called inside a Tokio
    /// runtime. A bind error names the server and the address; nothing is left running then.
    pub fn spawn(config: AdminConfig, state: Arc<dyn AdminState>) -> io::Result<AdminHandles> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            io::Error::other(format!("the admin servers need a Tokio runtime: {e}"))
        })?;
        let mut bound = Vec::new();
        for (kind, addr) in [
            (Kind::Admin, config.admin),
            (Kind::Health, config.health),
            (Kind::Prometheus, config.prometheus),
        ] {
            let Some(addr) = addr else { continue };
            let listener = bind(addr, &runtime).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot bind the {} server on {addr}: {e}", kind.name()),
                )
            })?;
            let local = listener.local_addr()?;
            bound.push((kind, local, listener));
        }
        let mut handles = AdminHandles {
            admin: None,
            health: None,
            prometheus: None,
            tasks: Vec::new(),
        };
        for (kind, local, listener) in bound {
            match kind {
                Kind::Admin => handles.admin = Some(local),
                Kind::Health => handles.health = Some(local),
                Kind::Prometheus => handles.prometheus = Some(local),
            }
            tracing::info!(server = kind.name(), addr = %local, "listening");
            handles
                .tasks
                .push(runtime.spawn(accept_loop(kind, listener, state.clone())));
        }
        Ok(handles)
    }
}

fn bind(addr: SocketAddr, runtime: &tokio::runtime::Handle) -> io::Result<TcpListener> {
    // std's bind sets SO_REUSEADDR on Unix, so a restart does not trip over TIME_WAIT.
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let _guard = runtime.enter();
    TcpListener::from_std(std_listener)
}

async fn accept_loop(kind: Kind, listener: TcpListener, state: Arc<dyn AdminState>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(server = kind.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(kind, &*state, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(server = kind.name(), error = %e, "admin connection ended");
            }
            drop(permit);
        });
    }
}

type Resp = Response<Full<Bytes>>;

const TEXT: &str = "text/plain; charset=UTF-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Envoy's admin answers are never cacheable.
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    respond(status, TEXT, body)
}

/// Envoy: an endpoint that changes state answers anything but POST with 405.
fn post_required(method: &Method) -> Resp {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method {method} not allowed, POST required.\n"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("POST"));
    r
}

const ADMIN_HELP: &str = "admin commands are:
  /: this list
  /ready: 200 LIVE when serving; 503 and the server state otherwise
  /stats: counters and gauges as `name: value` lines (?format=prometheus for Prometheus text)
  /stats/prometheus: all metrics in Prometheus text format
  /config_dump: the loaded resources and the compiled listeners, routes and clusters (JSON)
  /clusters: upstream clusters and their endpoints (?format=json for Envoy's JSON form)
  /logging: GET shows the log level; POST ?level=<level> changes it
  /drain_listeners (POST): stop accepting new connections, finish in-flight work
  /quitquitquit (POST): exit cleanly
";

/// One request, routed by server kind, method, path and query. The body is never read.
fn handle<B>(kind: Kind, state: &dyn AdminState, req: &Request<B>) -> Resp {
    let path = req.uri().path();
    let query = req.uri().query();
    match kind {
        Kind::Admin => admin(state, req.method(), path, query),
        Kind::Health => match path {
            // Istio's pilot-agent answers the kubelet here for the whole pod.
            "/healthz/ready" if state.ready() => text(StatusCode::OK, ""),
            "/healthz/ready" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", state.server_state().as_str()),
            ),
            _ => text(StatusCode::NOT_FOUND, "not found; try /healthz/ready\n"),
        },
        Kind::Prometheus => match path {
            "/stats/prometheus" => prometheus(state),
            _ => text(StatusCode::NOT_FOUND, "not found; try /stats/prometheus\n"),
        },
    }
}

fn prometheus(state: &dyn AdminState) -> Resp {
    let snapshot = state.snapshot();
    respond(
        StatusCode::OK,
        PROMETHEUS_TEXT,
        state.metrics().render_prometheus(Some(&snapshot)),
    )
}

fn admin(state: &dyn AdminState, method: &Method, path: &str, query: Option<&str>) -> Resp {
    let post = method == Method::POST;
    match path {
        "/" => text(StatusCode::OK, ADMIN_HELP),
        "/ready" => {
            // Envoy: the state name and a newline; 200 only when LIVE.
            let s = state.server_state();
            let code = if s == ServerState::Live {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(code, format!("{}\n", s.as_str()))
        }
        "/stats" => match query_param(query, "format").as_deref() {
            Some("prometheus") => prometheus(state),
            None | Some("text") => {
                let snapshot = state.snapshot();
                text(
                    StatusCode::OK,
                    state.metrics().render_stats(Some(&snapshot)),
                )
            }
            Some(other) => text(
                StatusCode::BAD_REQUEST,
                format!("unsupported format {other:?}; use text or prometheus\n"),
            ),
        },
        "/stats/prometheus" => prometheus(state),
        "/config_dump" => json_response(&state.config_dump()),
        "/clusters" => match query_param(query, "format").as_deref() {
            None | Some("text") => text(StatusCode::OK, state.clusters_text()),
            Some("json") => json_response(&state.clusters_json()),
            Some(other) => text(
                StatusCode::BAD_REQUEST,
                format!("unsupported format {other:?}; use text or json\n"),
            ),
        },
        "/logging" => logging(state, method, query),
        "/drain_listeners" if post => {
            state.drain_listeners();
            text(StatusCode::OK, "OK\n")
        }
        "/quitquitquit" if post => {
            state.quit();
            text(StatusCode::OK, "OK\n")
        }
        "/drain_listeners" | "/quitquitquit" => post_required(method),
        _ => text(StatusCode::NOT_FOUND, format!("invalid path. {ADMIN_HELP}")),
    }
}

fn json_response(value: &serde_json::Value) -> Resp {
    match serde_json::to_string_pretty(value) {
        Ok(mut json) => {
            json.push('\n');
            respond(StatusCode::OK, JSON, json)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}\n"),
        ),
    }
}

fn logging(state: &dyn AdminState, method: &Method, query: Option<&str>) -> Resp {
    let level = query_param(query, "level");
    if method != Method::POST {
        // Reading is harmless; changing the level takes a POST, as in Envoy.
        if level.is_some() {
            return post_required(method);
        }
        let current = state.log_level().unwrap_or_else(|| "unknown".into());
        return text(
            StatusCode::OK,
            format!("active level: {current}\nchange it with POST /logging?level=<level>\n"),
        );
    }
    match level {
        Some(level) if !level.is_empty() => match state.set_log_level(&level) {
            Ok(()) => text(StatusCode::OK, format!("active level: {level}\n")),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
        _ => text(
            StatusCode::BAD_REQUEST,
            "usage: POST /logging?level=<trace|debug|info|warn|error|off or a filter>\n",
        ),
    }
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space). A value that
/// does not decode to UTF-8 counts as absent.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    let query = query?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v)).flatten()
    })
}

fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param(Some("level=debug"), "level").as_deref(),
            Some("debug")
        );
        assert_eq!(
            query_param(Some("a=1&level=info%2Cegret_http%3Ddebug"), "level").as_deref(),
            Some("info,egret_http=debug")
        );
        assert_eq!(query_param(Some("level"), "level").as_deref(), Some(""));
        assert_eq!(query_param(Some("level=%zz"), "level"), None);
        assert_eq!(query_param(Some("level=%4"), "level"), None);
        assert_eq!(query_param(Some("level=%+1"), "level"), None);
        assert_eq!(query_param(Some("other=1"), "level"), None);
        assert_eq!(query_param(None, "level"), None);
    }
}
