//! The per-request handler: route, forward with Istio's default retry policy, answer.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::{Body as _, Incoming};

use egret_core::{
    AccessLogSink, HttpRouteTable, LogGuard, LogRecord, RequestInfo, ResponseFlags, RouteAction,
    Snapshot,
};
use egret_upstream::{ClusterState, PickError, Pool, Resolver, UpstreamBody, Upstreams};

use crate::body::ResponseBody;
use crate::headers;
use crate::local_reply;
use crate::route::{find_route, RequestView, RouteResult};

/// Process-wide pieces every request uses.
pub struct HttpShared {
    pub pool: Pool,
    pub resolver: Arc<Resolver>,
    pub sink: Arc<dyn AccessLogSink>,
    /// This host's own address, written to `x-forwarded-for` for loopback peers as Envoy does.
    pub local_ip: Option<IpAddr>,
}

/// One downstream connection, with the configuration it started on.
pub struct ConnContext {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub snapshot: Arc<Snapshot>,
    pub upstreams: Arc<Upstreams>,
    pub table: Arc<HttpRouteTable>,
    /// `https` when the downstream connection was TLS.
    pub scheme: &'static str,
    pub requested_server_name: Option<Arc<str>>,
    pub peer_uri_san: Option<String>,
}

/// Istio's default retry policy for HTTP routes without `retries`: 2 retries on
/// connect-failure, refused-stream, unavailable, cancelled and retriable status 503.
const DEFAULT_RETRIES: u32 = 2;
/// Envoy's default retry back-off base interval (25 ms; max 10×).
const RETRY_BASE: Duration = Duration::from_millis(25);

pub async fn handle(
    shared: Arc<HttpShared>,
    conn: Arc<ConnContext>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut rec = LogRecord::new(conn.local, conn.remote, conn.snapshot.version.clone());
    rec.protocol = Some(match req.version() {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    });
    rec.requested_server_name = conn.requested_server_name.clone();
    rec.downstream_peer_uri_san = conn.peer_uri_san.clone();

    let remote_ip = conn.remote.ip();
    {
        let h = req.headers_mut();
        headers::ensure_request_id(h, remote_ip);
        headers::append_xff(h, remote_ip, shared.local_ip);
        h.insert(
            headers::X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if conn.scheme == "https" {
                "https"
            } else {
                "http"
            }),
        );
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    rec.request = Some(RequestInfo {
        method: req.method().clone(),
        path: path.clone(),
        authority: authority.clone(),
        scheme: Some(conn.scheme.to_string()),
        headers: req.headers().clone(),
    });
    let mut guard = PendingLog(Some(LogGuard::new(rec, shared.sink.clone())));

    let authority_str = authority.as_deref().unwrap_or("");
    let view = RequestView {
        authority: authority_str,
        method: req.method().as_str(),
        path: &path,
        scheme: conn.scheme,
        headers: req.headers(),
    };
    let route = match find_route(&conn.table, &view) {
        RouteResult::Matched(_, r) => r,
        RouteResult::NoVirtualHost | RouteResult::NoRoute(_) => {
            return Ok(local(
                guard.take(),
                404,
                None,
                ResponseFlags::NO_ROUTE_FOUND,
                "route_not_found",
                None,
            ));
        }
    };
    guard.record().route_name = route.name.clone();
    let clusters = match &route.action {
        RouteAction::Direct { status, body } => {
            return Ok(local(
                guard.take(),
                *status,
                body.clone(),
                ResponseFlags::NONE,
                "direct_response",
                None,
            ));
        }
        RouteAction::Forward(c) => c,
    };
    let Some(picked) = clusters.pick(fastrand::u32(..)) else {
        return Ok(local(
            guard.take(),
            503,
            None,
            ResponseFlags::NO_CLUSTER_FOUND,
            "cluster_not_found",
            None,
        ));
    };
    let Some(cluster) = conn.upstreams.get(&picked.cluster).cloned() else {
        // Envoy: the route names a cluster that does not exist (a host outside the registry).
        return Ok(local(
            guard.take(),
            503,
            None,
            ResponseFlags::NO_CLUSTER_FOUND,
            "cluster_not_found",
            None,
        ));
    };
    guard.record().upstream_cluster = Some(cluster.name().clone());

    let forward = Forward {
        shared: &shared,
        cluster: &cluster,
        authority: authority_str.to_string(),
        path,
    };
    match route.timeout {
        Some(t) if !t.is_zero() => {
            match tokio::time::timeout(t, forward.run(req, guard.get())).await {
                Ok(resp) => Ok(resp.finish(guard.take())),
                Err(_) => Ok(local(
                    guard.take(),
                    504,
                    Some("upstream request timeout".into()),
                    ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                    "response_timeout",
                    None,
                )),
            }
        }
        _ => Ok(forward.run(req, guard.get()).await.finish(guard.take())),
    }
}

/// The request's log until a response exists. If hyper drops the request future first (the
/// client went away), the record is logged as Envoy does: code 0, `DC`,
/// `downstream_remote_disconnect` (checked with Envoy 1.40).
struct PendingLog(Option<LogGuard>);

impl PendingLog {
    fn get(&mut self) -> &mut LogGuard {
        // Present until `take`, which consumes the value.
        self.0.get_or_insert_with(unreachable_guard)
    }
    fn record(&mut self) -> &mut LogRecord {
        self.get().record()
    }
    fn take(mut self) -> LogGuard {
        self.0.take().unwrap_or_else(unreachable_guard)
    }
}

#[cold]
fn unreachable_guard() -> LogGuard {
    struct Discard;
    impl AccessLogSink for Discard {
        fn log(&self, _: LogRecord) {}
    }
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    LogGuard::new(
        LogRecord::new(unspecified, unspecified, Arc::from("-")),
        Arc::new(Discard),
    )
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        if let Some(mut g) = self.0.take() {
            let rec = g.record();
            rec.response_flags
                .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            rec.response_code_details = Some("downstream_remote_disconnect".into());
        }
    }
}

/// Answers locally, filling the record.
fn local(
    mut guard: LogGuard,
    status: u16,
    body: Option<String>,
    flags: ResponseFlags,
    details: &str,
    received: Option<Arc<AtomicU64>>,
) -> Response<ResponseBody> {
    let (resp, _len) = local_reply::build(status, body);
    let rec = guard.record();
    rec.response_code = status;
    rec.response_flags.insert(flags);
    rec.response_code_details = Some(details.to_string().into());
    rec.response_headers = Some(resp.headers().clone());
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.with_log(guard, received))
}

/// What the forwarding loop produced; turned into a response once the guard is back.
/// Lives for one move on the stack, so the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Upstream {
        resp: Response<Incoming>,
        conn: egret_upstream::PooledConn,
        received: Option<Arc<AtomicU64>>,
    },
    Local {
        status: u16,
        body: Option<String>,
        flags: ResponseFlags,
        details: String,
        received: Option<Arc<AtomicU64>>,
    },
}

impl Outcome {
    fn finish(self, mut guard: LogGuard) -> Response<ResponseBody> {
        match self {
            Outcome::Local {
                status,
                body,
                flags,
                details,
                received,
            } => local(guard, status, body, flags, &details, received),
            Outcome::Upstream {
                resp,
                conn,
                received,
            } => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                parts
                    .headers
                    .insert(http::header::SERVER, headers::SERVER_NAME.clone());
                let rec = guard.record();
                rec.response_code = parts.status.as_u16();
                rec.response_code_details = Some("via_upstream".into());
                rec.response_headers = Some(parts.headers.clone());
                Response::from_parts(
                    parts,
                    ResponseBody::upstream(body, conn).with_log(guard, received),
                )
            }
        }
    }
}

struct Forward<'a> {
    shared: &'a HttpShared,
    cluster: &'a Arc<ClusterState>,
    authority: String,
    path: String,
}

impl Forward<'_> {
    async fn run(&self, req: Request<Incoming>, guard: &mut LogGuard) -> Outcome {
        let started = Instant::now();
        let (parts, incoming) = req.into_parts();
        let mut up_headers = parts.headers;
        headers::strip_hop_by_hop(&mut up_headers);
        up_headers.remove(http::header::HOST);
        let (mut body, received) = if incoming.is_end_stream() {
            (Some(UpstreamBody::Empty), None)
        } else {
            let counter = Arc::new(AtomicU64::new(0));
            (
                Some(UpstreamBody::Streaming {
                    inner: incoming,
                    received: counter.clone(),
                }),
                Some(counter),
            )
        };
        // Only a body-less request can be sent twice.
        let replayable = received.is_none();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt = 0u32;
        loop {
            let last_attempt = attempt >= DEFAULT_RETRIES;
            let addr = match self.cluster.pick(&self.shared.resolver, &tried).await {
                Ok(a) => a,
                Err(PickError::NoHealthyUpstream { .. }) => {
                    return Outcome::Local {
                        status: 503,
                        body: Some("no healthy upstream".into()),
                        flags: ResponseFlags::NO_HEALTHY_UPSTREAM,
                        details: "no_healthy_upstream".into(),
                        received,
                    };
                }
            };
            tried.push(addr);
            guard.record().upstream_host = Some(addr);
            let mut conn = match self.shared.pool.checkout(self.cluster, addr).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(cluster = %self.cluster.name(), error = %e, "upstream connect failed");
                    let tfr = e.transport_failure_reason();
                    guard.record().upstream_transport_failure_reason = tfr.clone();
                    if !last_attempt {
                        attempt += 1;
                        backoff(attempt).await;
                        continue;
                    }
                    let mut flags = ResponseFlags::NONE;
                    if attempt > 0 {
                        flags.insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                    }
                    flags.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
                    return Outcome::Local {
                        status: 503,
                        body: Some(local_reply::upstream_reset_body(
                            e.reset_reason(),
                            attempt > 0,
                            None,
                        )),
                        flags,
                        details: local_reply::reset_details(
                            false,
                            e.reset_reason(),
                            tfr.as_deref(),
                        ),
                        received,
                    };
                }
            };
            guard.record().upstream_local_address = Some(conn.local_addr());
            guard.record().upstream_transport_failure_reason = None;
            let Some(b) = body.take() else {
                // Unreachable by construction (a streamed body is never retried), but never panic.
                return self.reset_outcome(
                    "connection termination",
                    ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                    received,
                );
            };
            let upstream_req = self.build_request(&parts.method, &up_headers, conn.is_http2(), b);
            let sent_at = Instant::now();
            match conn.send(upstream_req).await {
                Ok(resp) => {
                    let retriable_status = resp.status().as_u16() == 503 && replayable;
                    if retriable_status && !last_attempt {
                        drop(resp);
                        body = Some(UpstreamBody::Empty);
                        attempt += 1;
                        backoff(attempt).await;
                        continue;
                    }
                    if retriable_status && attempt > 0 {
                        guard
                            .record()
                            .set_flag(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                    }
                    let mut resp = resp;
                    let ms = sent_at.max(started).elapsed().as_millis().to_string();
                    if let Ok(v) = HeaderValue::from_str(&ms) {
                        resp.headers_mut()
                            .insert(headers::X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), v);
                    }
                    return Outcome::Upstream {
                        resp,
                        conn,
                        received,
                    };
                }
                Err(mut e) => {
                    // A pooled connection the peer had already closed: the request never
                    // left, so it goes out again on a fresh connection (not a retry).
                    if conn.reused() {
                        if let Some(again) = e.request.take() {
                            body = Some(again.into_body());
                            continue;
                        }
                    }
                    let reason = e.reset_reason();
                    let flag = match reason {
                        "protocol error" => ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
                        "remote reset" => ResponseFlags::UPSTREAM_REMOTE_RESET,
                        _ => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                    };
                    return self.reset_outcome(reason, flag, received);
                }
            }
        }
    }

    fn reset_outcome(
        &self,
        reason: &str,
        flag: ResponseFlags,
        received: Option<Arc<AtomicU64>>,
    ) -> Outcome {
        Outcome::Local {
            status: 503,
            body: Some(local_reply::upstream_reset_body(reason, false, None)),
            flags: flag,
            details: local_reply::reset_details(false, reason, None),
            received,
        }
    }

    fn build_request(
        &self,
        method: &http::Method,
        headers: &http::HeaderMap,
        http2: bool,
        body: UpstreamBody,
    ) -> Request<UpstreamBody> {
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        let mut h = headers.clone();
        if http2 {
            *req.version_mut() = Version::HTTP_2;
            let uri = format!("http://{}{}", self.authority, self.path);
            *req.uri_mut() = uri.parse().unwrap_or_else(|_| Uri::from_static("/"));
        } else {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = self.path.parse().unwrap_or_else(|_| Uri::from_static("/"));
            if let Ok(v) = HeaderValue::from_str(&self.authority) {
                h.insert(http::header::HOST, v);
            }
        }
        *req.headers_mut() = h;
        req
    }
}

/// Envoy's jittered exponential back-off: uniform in [0, base·2^(n-1)], capped at 10× base.
async fn backoff(attempt: u32) {
    let max = (RETRY_BASE.as_millis() as u64) << (attempt.saturating_sub(1)).min(4);
    let cap = RETRY_BASE.as_millis() as u64 * 10;
    let ms = fastrand::u64(0..=max.min(cap));
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
