//! The per-request handler: route, apply the route's policy (fault, header operations,
//! rewrite, mirrors), forward with its retry policy and timeout ([`crate::forward`]), answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, Version};

use egret_core::{
    AbortCode, AccessLogSink, HeaderMutations, HttpRouteTable, LogGuard, LogRecord, RequestInfo,
    ResponseFlags, RouteAction, Snapshot,
};
use egret_upstream::body::RequestEnd;
use egret_upstream::{ClientBody, Pool, Resolver, Upstreams};

use crate::body::ResponseBody;
use crate::forward::{Downstream, Forward};
use crate::headers;
use crate::local_reply;
use crate::mirror;
use crate::refusal;
use crate::replay::RequestBody;
use crate::rewrite;
use crate::route::{find_route, RequestView, RouteResult};
use crate::upgrade::{self, Upgrade};

/// Process-wide pieces every request uses.
pub struct HttpShared {
    pub pool: Pool,
    pub resolver: Arc<Resolver>,
    pub sink: Arc<dyn AccessLogSink>,
    /// This host's own address, written to `x-forwarded-for` for loopback peers as Envoy does.
    pub local_ip: Option<IpAddr>,
    /// Envoy's `stream_idle_timeout`, before the response starts and for its body; zero
    /// disables it.
    pub stream_idle_timeout: Duration,
}

/// One downstream connection, with the configuration it started on.
#[derive(Clone)]
pub struct ConnContext {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub snapshot: Arc<Snapshot>,
    pub upstreams: Arc<Upstreams>,
    pub table: Arc<HttpRouteTable>,
    /// `https` when the downstream connection was TLS.
    pub scheme: &'static str,
    /// What terminating the connection's TLS told (nothing on plain text).
    pub tls: DownstreamTlsFacts,
    /// On a downstream HTTP/2 connection: marks its end (a stream given up before it was
    /// reset by the client).
    pub h2_connection: Option<crate::body::H2ConnectionEnd>,
}

/// What the gateway learned terminating a downstream connection's TLS, for its records.
#[derive(Clone, Debug, Default)]
pub struct DownstreamTlsFacts {
    /// The SNI (`%REQUESTED_SERVER_NAME%`).
    pub requested_server_name: Option<Arc<str>>,
    /// The client certificate's URI SANs, joined by `,` (`%DOWNSTREAM_PEER_URI_SAN%`).
    pub peer_uri_san: Option<Arc<str>>,
    /// The client certificate, for the access log.
    pub peer_cert: Option<Arc<egret_core::PeerCertInfo>>,
    /// The gateway certificate's URI SANs, joined by `,` (`%DOWNSTREAM_LOCAL_URI_SAN%`).
    pub local_uri_san: Option<Arc<str>>,
    pub session: Option<egret_core::TlsSession>,
    /// `x-forwarded-client-cert` for the client's certificate, made at the handshake.
    pub xfcc: Option<HeaderValue>,
}

impl DownstreamTlsFacts {
    /// Copies the facts into a request's record.
    pub fn fill(&self, rec: &mut LogRecord) {
        rec.requested_server_name = self.requested_server_name.clone();
        rec.downstream_peer_uri_san = self.peer_uri_san.clone();
        rec.downstream_tls = self.session;
        rec.downstream_peer_cert = self.peer_cert.clone();
        rec.downstream_local_uri_san = self.local_uri_san.clone();
    }
}

/// The client went away before its response: the listener is told so, and closes the
/// connection (HTTP/1.1) or resets the stream (HTTP/2, hyper's server) without answering.
#[derive(Debug)]
pub struct ClientGone;

impl std::fmt::Display for ClientGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client went away before its response")
    }
}

impl std::error::Error for ClientGone {}

pub async fn handle(
    shared: Arc<HttpShared>,
    conn: Arc<ConnContext>,
    mut req: Request<ClientBody>,
) -> Result<Response<ResponseBody>, ClientGone> {
    // Boxed from the start: this future then holds a pointer, not the ~0.7 KB record.
    let mut rec = Box::new(LogRecord::new(
        conn.local,
        conn.remote,
        conn.snapshot.version.clone(),
    ));
    if http_body::Body::is_end_stream(req.body()) {
        // Complete with its head: `%REQUEST_DURATION%` 0, as Envoy prints it.
        rec.request_complete = Some(rec.start);
    }
    rec.protocol = Some(match req.version() {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    });
    conn.tls.fill(&mut rec);

    // HTTP/1.0, a method or a target Envoy's codec does not take (checked with 1.40).
    if let Some(r) = refusal::codec_refusal(&req) {
        return Ok(protocol_error(LogGuard::new(rec, shared.sink.clone()), r));
    }
    // An `https://` target on a plain-text connection (Envoy 1.40's codec: `403 DPE
    // http1.https_url_on_plaintext_connection`).
    if req.version() != Version::HTTP_2
        && conn.scheme == "http"
        && req.uri().scheme() == Some(&http::uri::Scheme::HTTPS)
    {
        return Ok(protocol_error(
            LogGuard::new(rec, shared.sink.clone()),
            refusal::HTTPS_URL_ON_PLAINTEXT,
        ));
    }
    if headers::request_headers_size(&req) > egret_core::limits::MAX_REQUEST_HEADERS_BYTES {
        // Envoy (checked with 1.40): `"- - HTTP/1.1" 431 DPE http1.headers_too_large`, a
        // text body, and the connection closed.
        return Ok(protocol_error(
            LogGuard::new(rec, shared.sink.clone()),
            refusal::HEADERS_TOO_LARGE,
        ));
    }
    // An HTTP/2 extended CONNECT (RFC 8441) is the HTTP/1.1 upgrade it stands for: Envoy's
    // codec turns `CONNECT` + `:protocol` into a `GET` with `Upgrade: <protocol>` before
    // routing, and logs it so (`"GET /chat HTTP/2" 101`, checked with Envoy 1.40).
    let extended_connect = upgrade::extended_connect(&req);
    if extended_connect.is_some() {
        *req.method_mut() = http::Method::GET;
    }
    let http1 = req.version() != Version::HTTP_2;
    let http2 = !http1;
    if http1 && headers::connection_names_protected(req.headers()) {
        // Envoy (checked with 1.40): `"- - HTTP/1.1" 400 DPE
        // http1.connection_header_rejected`, body `Bad Request`, the connection closed.
        return Ok(protocol_error(
            LogGuard::new(rec, shared.sink.clone()),
            refusal::CONNECTION_HEADER_REJECTED,
        ));
    }
    let remote_ip = conn.remote.ip();
    {
        let h = req.headers_mut();
        // First, as Envoy's codec: nothing below sees what `Connection` names.
        headers::strip_connection_nominated(h);
        headers::strip_envoy_control(h);
        if http2 {
            // RFC 9113 §8.2.3: HTTP/2 splits `cookie` into fields, which are joined with
            // `; ` for an HTTP/1.1 hop (as Envoy 1.40 does, checked with it).
            headers::join_cookies(h);
        }
        // Envoy answers `Expect: 100-continue` itself and does not pass it on (Istio leaves
        // `proxy_100_continue` off; checked with 1.40). The HTTP/1.1 listener sends the
        // `100` as soon as it has the head; HTTP/2's (hyper's) when the body is first read.
        if h.get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        {
            headers::remove_in_order(h, |n| n == http::header::EXPECT);
        }
    }
    let authority: Option<Arc<str>> = match req.uri().authority() {
        // Credentials in an absolute-form target are dropped, as Envoy 1.40 does.
        Some(a) => Some(a.as_str().rsplit('@').next().unwrap_or_default().into()),
        None => match host_header(req.headers()) {
            Ok(host) => host,
            // Envoy's codec refuses it: `"- - HTTP/1.1" 400 DPE http.invalid_authority`.
            Err(InvalidHost) => {
                return Ok(protocol_error(
                    LogGuard::new(rec, shared.sink.clone()),
                    refusal::INVALID_AUTHORITY,
                ))
            }
        },
    };
    // A target with a `#fragment` is logged as sent and refused below.
    let fragment = req
        .extensions()
        .get::<refusal::TargetWithFragment>()
        .map(|t| Arc::<str>::from(String::from_utf8_lossy(&t.0)));
    // A `CONNECT` has no path (Envoy logs `-`). Dot segments are resolved before anything
    // reads the path (Istio's default path normalization, `crate::path`).
    let path: Arc<str> = fragment.clone().unwrap_or_else(|| {
        req.uri().path_and_query().map_or_else(
            || {
                if req.method() == http::Method::CONNECT {
                    "".into()
                } else {
                    "/".into()
                }
            },
            |p| match crate::path::normalize(p.as_str()) {
                Some(normalized) => normalized.into(),
                None => p.as_str().into(),
            },
        )
    });
    // A query with bytes the URI could only hold escaped goes on as the client wrote it.
    let path = match req.extensions().get::<crate::path::RawQuery>() {
        // (A target with a fragment is logged as sent, above.)
        Some(raw) if fragment.is_none() => {
            let base = path.split_once('?').map_or(&*path, |(base, _)| base);
            format!("{base}?{}", String::from_utf8_lossy(&raw.0)).into()
        }
        _ => path,
    };
    // No host (`Host` missing, or removed as `Connection` named it), a path that cannot be
    // normalized, or `*` as the path: Envoy's connection manager answers before routing,
    // without a flag — and before it adds the forwarding headers and the request id, so the
    // log shows the request's own (`-` when it had none; checked with Envoy 1.40).
    let refused = match fragment {
        Some(_) => Some(refusal::PATH_NORMALIZATION_FAILED),
        // An encoded NUL: Envoy 1.40's path normalization refuses it (checked with it).
        None if path.contains("%00") => Some(refusal::PATH_NORMALIZATION_FAILED),
        None => refusal::manager_refusal(req.method(), &path, authority.is_some()),
    };
    if refused.is_none() {
        let h = req.headers_mut();
        // In Envoy 1.40's order (checked with it): `x-forwarded-for`, `x-forwarded-proto`,
        // `x-envoy-external-address`, `x-request-id` after the client's own headers.
        headers::append_xff(h, remote_ip, shared.local_ip);
        h.insert(
            headers::X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if conn.scheme == "https" {
                "https"
            } else {
                "http"
            }),
        );
        headers::set_edge_request_headers(h, remote_ip);
        // Istio's gateways (`forward_client_cert_details: SANITIZE_SET`): a client's own
        // `x-forwarded-client-cert` never passes; a client certificate sets it.
        match &conn.tls.xfcc {
            Some(v) => {
                h.insert(headers::X_FORWARDED_CLIENT_CERT.clone(), v.clone());
            }
            None => {
                h.remove(&headers::X_FORWARDED_CLIENT_CERT);
            }
        }
    }
    // Only the headers the access log and the metrics read are kept with the record.
    let log_headers = shared.sink.headers();
    rec.request = Some(RequestInfo {
        method: req.method().clone(),
        path: path.clone(),
        authority: authority.clone(),
        scheme: Some(conn.scheme),
        headers: log_headers.request.capture(req.headers()),
    });
    if req.extensions().get::<refusal::ContinueSent>().is_some() {
        rec.response_code = 100;
    }
    let mut guard = PendingLog(
        Some(LogGuard::new(rec, shared.sink.clone()).with_response_headers(log_headers.response)),
        None,
        conn.h2_connection.clone(),
    );

    if let Some(r) = refused {
        let mut resp = local(
            guard.take(),
            r.status,
            None,
            ResponseFlags::NONE,
            r.details,
            None,
        );
        if r.closes && http1 {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Ok(resp);
    }
    if req.method() == http::Method::CONNECT {
        // An Istio gateway has no CONNECT routes: Envoy 1.40 answers `404 NR` and closes
        // (HTTP/1.1; on HTTP/2 the stream ends). An extended CONNECT is a `GET` by now.
        let mut resp = local(
            guard.take(),
            404,
            None,
            ResponseFlags::NO_ROUTE_FOUND,
            "route_not_found",
            None,
        );
        if http1 {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Ok(resp);
    }
    let upgrade_kind =
        extended_connect.unwrap_or_else(|| upgrade::requested(req.version(), req.headers()));

    let authority_str = authority.as_deref().unwrap_or("");
    let view = RequestView {
        authority: authority_str,
        method: req.method().as_str(),
        path: &path,
        scheme: conn.scheme,
        headers: req.headers(),
    };
    let (route, matched) = match find_route(&conn.table, &view) {
        RouteResult::Matched(_, r, m) => (r, m),
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
    let matched_uri = matched.and_then(|m| m.uri.as_ref());
    guard.record().route_name = route.name.clone();
    let policy = &route.policy;
    let route_response = [&policy.headers.response];
    let clusters = match &route.action {
        RouteAction::Direct { status, body } => {
            return Ok(local_reply_with(
                guard.take(),
                *status,
                body.clone(),
                ResponseFlags::NONE,
                "direct_response",
                None,
                &route_response,
            ));
        }
        RouteAction::Redirect(r) => {
            let location = rewrite::redirect_location(r, conn.scheme, authority_str, &path);
            let (resp, _) = local_reply::redirect(r.status, &location);
            return Ok(record_local(
                guard.take(),
                resp,
                ResponseFlags::NONE,
                "direct_response",
                None,
                &route_response,
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
    // Destination operations first, then the route's (Envoy's default order: the less
    // specific level is applied last and wins).
    let dest_ops = picked.headers.as_deref();
    // On the stack: at most the destination's and the route's.
    let both;
    let response_ops: &[&HeaderMutations] = match dest_ops {
        Some(d) => {
            both = [&d.response, &policy.headers.response];
            &both
        }
        None => &route_response,
    };

    if upgrade_kind == Upgrade::Other {
        // Istio enables `websocket` upgrades only (Envoy 1.40: `403 upgrade_failed`, closed;
        // the same for an extended CONNECT with another `:protocol`).
        let mut resp = local_reply_with(
            guard.take(),
            403,
            None,
            ResponseFlags::NONE,
            "upgrade_failed",
            None,
            response_ops,
        );
        if http1 {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Ok(resp);
    }

    // Fault injection runs before the router: the delay does not count against the route
    // timeout, and an abort never reaches the upstream (Envoy 1.40: `DI`, `FI`,
    // `fault_filter_abort`, body `fault filter abort`).
    if let Some(fault) = &policy.fault {
        if let Some(d) = &fault.delay {
            if d.fraction.hit(fastrand::u32(..1_000_000)) {
                tokio::time::sleep(d.delay).await;
                guard.record().set_flag(ResponseFlags::DELAY_INJECTED);
            }
        }
        if let Some(a) = &fault.abort {
            if a.fraction.hit(fastrand::u32(..1_000_000)) {
                let grpc = headers::is_grpc(req.headers());
                let resp = match a.code {
                    AbortCode::Grpc(code) if grpc => local_reply::grpc(code, "fault filter abort"),
                    AbortCode::Grpc(_) => {
                        local_reply::build(200, Some("fault filter abort".into()))
                    }
                    AbortCode::Http(status) => {
                        local_reply::build(status, Some("fault filter abort".into()))
                    }
                };
                return Ok(record_local(
                    guard.take(),
                    resp.0,
                    ResponseFlags::FAULT_INJECTED,
                    "fault_filter_abort",
                    None,
                    response_ops,
                ));
            }
        }
    }

    // consistentHash: the key is read before the request's headers are rewritten.
    let lb_hash = cluster.request_hash(req.headers(), &path, conn.remote.ip());

    // Header operations and rewrites change the request in place, so the access log shows
    // the request as it went upstream (`%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%` still prints the
    // path the client sent), as in Envoy.
    let mut up_path = path.clone();
    let mut up_authority = authority.clone().unwrap_or_else(|| Arc::from(""));
    let mutated = dest_ops.is_some_and(|d| !d.request.is_empty())
        || !policy.headers.request.is_empty()
        || policy.rewrite.is_some()
        || dest_ops.is_some_and(|d| d.authority.is_some());
    if mutated {
        let h = req.headers_mut();
        if let Some(d) = dest_ops {
            d.request.apply(h);
        }
        policy.headers.request.apply(h);
        let rw = policy.rewrite.as_ref();
        if let Some(pr) = rw.and_then(|r| r.path.as_ref()) {
            up_path = rewrite::rewrite_path(pr, matched_uri, &path).into();
            if let Ok(v) = HeaderValue::from_str(&path) {
                h.insert(headers::X_ENVOY_ORIGINAL_PATH.clone(), v);
            }
        }
        let new_authority = rw
            .and_then(|r| r.authority.as_deref())
            .or_else(|| dest_ops.and_then(|d| d.authority.as_deref()));
        if let Some(a) = new_authority {
            if let Ok(v) = HeaderValue::from_str(authority_str) {
                h.insert(headers::X_ENVOY_ORIGINAL_HOST.clone(), v);
            }
            up_authority = a.into();
        }
        if let Some(info) = guard.record().request.as_mut() {
            info.path = up_path.clone();
            info.authority = Some(up_authority.clone());
            info.headers = log_headers.request.capture(h);
        }
    }

    let on_upgrade =
        (upgrade_kind == Upgrade::WebSocket).then(|| upgrade::DownstreamUpgrade::of(&mut req));
    let upgrade_value = on_upgrade.as_ref().and_then(|_| {
        if extended_connect.is_some() {
            Some(HeaderValue::from_static("websocket"))
        } else {
            req.headers().get(http::header::UPGRADE).cloned()
        }
    });
    let (mut parts, incoming) = req.into_parts();
    // The listener's mark for an HTTP/1.1 request with a body (see `RequestEnd`).
    let listener_end = parts.extensions.remove::<Arc<RequestEnd>>();
    let mut up_headers = parts.headers;
    headers::strip_request_hop_by_hop(&mut up_headers);
    // `host` stays where the client put it (first, as a rule): an HTTP/1.1 attempt gives it
    // the upstream authority in place, as Envoy sends it first; an HTTP/2 one drops it.

    let retry = policy.retry.as_ref().filter(|p| p.num_retries > 0);
    let mirrors: Vec<_> = policy
        .mirrors
        .iter()
        .filter(|m| m.fraction.hit(fastrand::u32(..1_000_000)))
        .collect();
    let timeout = route.timeout.filter(|t| !t.is_zero());
    let started = tokio::time::Instant::now();
    // Envoy starts the route timeout when the request has ended: with its head, or when
    // the last byte of its body arrives (an upload slower than the timeout is not cut).
    // Kept for every request with a body: `x-envoy-upstream-service-time` counts from it.
    let request_end = listener_end.or_else(|| {
        (!http_body::Body::is_end_stream(&incoming)).then(|| Arc::new(RequestEnd::default()))
    });
    let mut body = RequestBody::new(
        incoming,
        retry.is_some(),
        !mirrors.is_empty(),
        request_end.clone(),
    );
    let request_end = request_end.filter(|_| !body.is_empty());
    let received = body.received();
    guard.1 = received.clone();
    let shadow = |cluster: &Arc<str>, (body, hold)| mirror::Shadow {
        cluster: cluster.clone(),
        method: parts.method.clone(),
        headers: up_headers.clone(),
        authority: up_authority.to_string(),
        path: up_path.to_string(),
        body,
        hold,
        timeout,
    };
    // Mirrors start with the request and get its body as it is read (Envoy's streaming
    // shadows), whatever its size.
    for m in mirrors {
        match body.mirror_body() {
            Some(b) => mirror::spawn(
                shared.clone(),
                conn.upstreams.clone(),
                shadow(&m.cluster, b),
            ),
            None => tracing::debug!(cluster = %m.cluster, "not mirrored: the body is not shared"),
        }
    }

    let forward = Forward {
        shared: &shared,
        cluster: &cluster,
        authority: up_authority,
        path: up_path,
        retry,
        // For `x-envoy-expected-rq-timeout-ms`: the whole timeout while the body uploads.
        deadline: timeout.map(|t| started + t),
        lb_hash,
        upgrade: upgrade_value,
        request_end: request_end.as_deref(),
        started,
    };
    let run = async {
        match timeout {
            Some(t) => {
                let expiry = async {
                    let from = match &request_end {
                        Some(end) => end.wait().await,
                        None => started,
                    };
                    tokio::time::sleep_until(from + t).await;
                };
                tokio::select! {
                    outcome = forward.run(&parts.method, &up_headers, &mut body, guard.get()) => {
                        Ended::Outcome(outcome)
                    }
                    () = expiry => Ended::RouteTimeout,
                }
            }
            None => Ended::Outcome(
                forward
                    .run(&parts.method, &up_headers, &mut body, guard.get())
                    .await,
            ),
        }
    };
    let idle = shared.stream_idle_timeout;
    let body_bytes = || received.as_ref().map_or(0, |r| r.load(Ordering::Relaxed));
    let outcome = if idle.is_zero() {
        run.await
    } else {
        tokio::select! {
            ended = run => ended,
            () = quiet_for(body_bytes, idle) => Ended::StreamIdle,
        }
    };
    // `%REQUEST_DURATION%`: the body's last byte, if it has come; one still arriving is
    // timed when the response ends (the response body keeps the mark).
    if let Some(at) = request_end.as_ref().and_then(|e| e.at()) {
        guard.record().request_complete = Some(at.into_std());
    }
    // The timeout covers the response body too — if it was running when the response came
    // (Envoy does not start it once the response has begun).
    let deadline = timeout.and_then(|t| {
        let from = match &request_end {
            Some(end) => end.at()?,
            None => started,
        };
        Some(from + t)
    });
    match outcome {
        Ended::Outcome(outcome) => outcome
            .finish(
                guard.take(),
                Downstream {
                    received,
                    on_upgrade,
                    extended_connect: extended_connect.is_some(),
                    response_ops,
                    deadline,
                    stream_idle_timeout: idle,
                    request_end: request_end.clone(),
                },
            )
            .ok_or(ClientGone),
        Ended::RouteTimeout => {
            // Envoy reports a timed-out request to outlier detection (as a 504).
            if let Some(h) = guard.record().upstream_host {
                cluster.report(h, egret_upstream::Outcome::Timeout);
            }
            Ok(local_reply_with(
                guard.take(),
                504,
                Some("upstream request timeout".into()),
                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                "response_timeout",
                received,
                response_ops,
            ))
        }
        Ended::StreamIdle => {
            // Envoy 1.40: `408` while the request's body is unfinished, `504` once it is
            // complete, both `SI stream_idle_timeout` with the body `stream timeout`.
            let complete = request_end.as_ref().is_none_or(|end| end.at().is_some());
            Ok(local_reply_with(
                guard.take(),
                if complete { 504 } else { 408 },
                Some("stream timeout".into()),
                ResponseFlags::STREAM_IDLE_TIMEOUT,
                "stream_idle_timeout",
                received,
                response_ops,
            ))
        }
    }
}

/// How forwarding a request ended, before its response starts.
#[expect(
    clippy::large_enum_variant,
    reason = "a value of the moment; boxing the outcome would allocate per request"
)]
enum Ended {
    Outcome(crate::forward::Outcome),
    /// The route's `timeout` passed.
    RouteTimeout,
    /// Nothing moved for the stream idle timeout.
    StreamIdle,
}

/// Ready once `count` has not moved for `idle` — Envoy's idle timers, which activity resets
/// (the request body's bytes before the response starts; a downstream HTTP/2 connection's
/// reads and writes). Looked at once per `idle`, so it fires between one and two periods after
/// the last movement; never when `idle` is zero.
pub async fn quiet_for(count: impl Fn() -> u64, idle: Duration) {
    if idle.is_zero() {
        return std::future::pending().await;
    }
    let mut seen = count();
    loop {
        tokio::time::sleep(idle).await;
        let now = count();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// A `Host` value that is not visible ASCII.
struct InvalidHost;

/// `Host`, as Envoy's codec makes `:authority` of it: repeated values joined with `,` (which
/// then matches no host: Envoy answers `404 NR`, checked with 1.40). None when there is none.
fn host_header(headers: &http::HeaderMap) -> Result<Option<Arc<str>>, InvalidHost> {
    let mut values = headers.get_all(http::header::HOST).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let first = valid_authority(first)?;
    let Some(second) = values.next() else {
        return Ok(Some(Arc::from(first)));
    };
    let mut joined = String::from(first);
    for v in std::iter::once(second).chain(values) {
        joined.push(',');
        joined.push_str(valid_authority(v)?);
    }
    Ok(Some(Arc::from(joined)))
}

/// A `Host` value Envoy's codec takes (nghttp2's authority check, as Envoy 1.40 applies it:
/// `edition.cnn.com/x` is `400 DPE http.invalid_authority`): unreserved and sub-delims
/// characters, `%`, `:`, `@`, and the brackets of an IPv6 literal.
fn valid_authority(v: &http::HeaderValue) -> Result<&str, InvalidHost> {
    let s = v.to_str().map_err(|_| InvalidHost)?;
    let ok = s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'['
                    | b']'
            )
    });
    if ok {
        Ok(s)
    } else {
        Err(InvalidHost)
    }
}

/// A request Envoy's HTTP/1 codec refuses before routing: a text body, `DPE`, the request
/// logged without method and path (it has no record of them yet), the connection closed.
fn protocol_error(mut guard: LogGuard, r: refusal::Refusal) -> Response<ResponseBody> {
    // Envoy's HTTP/1 codec logs what it refuses as `"- - HTTP/1.1"`, HTTP/1.0 included.
    let rec = guard.record();
    if rec.protocol == Some("HTTP/1.0") {
        rec.protocol = Some("HTTP/1.1");
    }
    let mut resp = local(
        guard,
        r.status,
        Some(r.body.into()),
        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        r.details,
        None,
    );
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp.extensions_mut().insert(refusal::CodecReply);
    resp
}

/// The request's log until a response exists. If the listener drops the request future first
/// (the client went away), the record is logged as Envoy does: code 0, `DC`,
/// `downstream_remote_disconnect` (checked with Envoy 1.40).
struct PendingLog(
    Option<LogGuard>,
    Option<Arc<AtomicU64>>,
    Option<crate::body::H2ConnectionEnd>,
);

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
        fn log(&self, _: Box<LogRecord>) {}
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
            if self.2.as_ref().is_some_and(|e| e.stream_reset()) {
                // An HTTP/2 client reset its stream before the response (Envoy 1.40: `0 DR
                // http2.remote_reset`, checked with it).
                rec.response_flags
                    .insert(ResponseFlags::DOWNSTREAM_REMOTE_RESET);
                rec.response_code_details = Some("http2.remote_reset".into());
            } else {
                rec.response_flags
                    .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
                rec.response_code_details = Some("downstream_remote_disconnect".into());
            }
            // What the client sent of its body before it left.
            if let Some(r) = &self.1 {
                rec.bytes_received = r.load(std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Answers locally, filling the record.
fn local(
    guard: LogGuard,
    status: u16,
    body: Option<String>,
    flags: ResponseFlags,
    details: &str,
    received: Option<Arc<AtomicU64>>,
) -> Response<ResponseBody> {
    local_reply_with(guard, status, body, flags, details, received, &[])
}

/// Answers locally for a matched route: its response header operations apply too (Envoy
/// 1.40 adds them to local replies, redirects and fault aborts alike).
pub(crate) fn local_reply_with(
    guard: LogGuard,
    status: u16,
    body: Option<String>,
    flags: ResponseFlags,
    details: &str,
    received: Option<Arc<AtomicU64>>,
    response_ops: &[&HeaderMutations],
) -> Response<ResponseBody> {
    let (mut resp, _len) = local_reply::build(status, body);
    if flags.contains(ResponseFlags::UPSTREAM_OVERFLOW) {
        local_reply::mark_overloaded(resp.headers_mut());
    }
    record_local(guard, resp, flags, details, received, response_ops)
}

/// Fills the record for a locally built response and attaches it to the body.
fn record_local(
    mut guard: LogGuard,
    resp: Response<ResponseBody>,
    flags: ResponseFlags,
    details: &str,
    received: Option<Arc<AtomicU64>>,
    response_ops: &[&HeaderMutations],
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    headers::apply_response_ops(&mut parts.headers, response_ops);
    guard.set_response_headers(&parts.headers);
    let rec = guard.record();
    rec.response_code = parts.status.as_u16();
    rec.response_flags.insert(flags);
    rec.response_code_details = Some(details.to_string().into());
    Response::from_parts(parts, body.with_log(guard, received))
}
