//! Sending one request to its cluster: pick an endpoint, get a connection, send, and retry as
//! the route's `retry_policy` says (Envoy 1.40's semantics: see [`crate::retry`]), each
//! attempt bounded by `perTryTimeout`. The route timeout wraps all of it (in
//! [`crate::service`]). The outcome is either the upstream's response or the local reply
//! Envoy would send, with the flags and details for the log.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use tokio::time::Instant;

use egret_core::{HeaderMutations, LogGuard, ResponseFlags, RetryPolicy};
use egret_upstream::body::{BodyFailed, RequestEnd};
use egret_upstream::{ClusterState, PickError, PooledConn, UpstreamBody, UpstreamResponseBody};

use crate::body::ResponseBody;
use crate::headers;
use crate::local_reply;
use crate::replay::{BufferOverflow, RequestBody};
use crate::retry::{self, Failure};
use crate::service::HttpShared;

/// One request's trip upstream.
pub struct Forward<'a> {
    pub shared: &'a HttpShared,
    pub cluster: &'a Arc<ClusterState>,
    /// The upstream authority and path (after rewrites).
    pub authority: Arc<str>,
    pub path: Arc<str>,
    /// None: a single attempt.
    pub retry: Option<&'a RetryPolicy>,
    /// When the route timeout expires, for `x-envoy-expected-rq-timeout-ms`.
    pub deadline: Option<Instant>,
    /// The request's consistent-hash key, for clusters that balance by one.
    pub lb_hash: Option<u64>,
    /// A WebSocket upgrade request: its `Upgrade` value goes upstream with
    /// `Connection: Upgrade`.
    pub upgrade: Option<HeaderValue>,
    /// When the request ended: its body's end mark, or None when it had no body (it ended
    /// with its head, at `started`).
    pub request_end: Option<&'a RequestEnd>,
    pub started: Instant,
}

/// What the attempts produced; turned into the downstream response by [`Outcome::finish`].
/// Lives for one move on the stack, so the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Upstream {
        resp: Response<UpstreamResponseBody>,
        conn: PooledConn,
    },
    Local {
        status: u16,
        body: Option<String>,
        flags: ResponseFlags,
        details: String,
    },
    /// The client went away while its request body was being sent: nothing to answer
    /// (Envoy 1.40 logs `0 DC downstream_remote_disconnect` with the upstream host, or `0 DR
    /// http2.remote_reset` when it reset its HTTP/2 stream).
    DownstreamGone { reset: bool },
}

/// The retries made so far, and the slot of the cluster's retry budget (`maxRetries`) held
/// while a retried attempt is in flight.
#[derive(Default)]
struct Retries {
    count: u32,
    _slot: Option<egret_upstream::Slot>,
}

/// What a failed attempt comes to (see [`Forward::after_failure`]). Matched as soon as it is
/// returned, like [`Outcome`], so the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum AfterFailure<T> {
    /// Backed off: try again.
    Retry,
    /// No retry: the flag saying why (`URX`, `UO`, or none when not retriable), and what the
    /// attempt held, given back.
    GiveUp(ResponseFlags, T),
    /// The request body outgrew the replay buffer while backing off: Envoy's `507`.
    Done(Outcome),
}

impl Forward<'_> {
    /// After a failed attempt: when `retriable`, the body can be replayed, retries are left
    /// and the cluster's retry budget has room, takes a retry slot, drops `held` (what the
    /// failed attempt still holds, such as its connection), counts the retry and backs off;
    /// otherwise gives `held` back with the flag for the local reply or the log.
    async fn after_failure<T>(
        &self,
        retriable: bool,
        retries: &mut Retries,
        body: &mut RequestBody,
        held: T,
    ) -> AfterFailure<T> {
        let Some(policy) = self.retry else {
            return AfterFailure::GiveUp(ResponseFlags::NONE, held);
        };
        // Envoy retries only what it can replay: a body that streamed past the replay buffer
        // ends the attempts without `URX` (checked with Envoy 1.40). A body still arriving
        // within the buffer is retried: the next attempt replays the copy and reads on.
        if !retriable || !body.replayable() {
            return AfterFailure::GiveUp(ResponseFlags::NONE, held);
        }
        // Retriable, but the retries ran out: Envoy flags `URX`.
        if retries.count >= policy.num_retries {
            return AfterFailure::GiveUp(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED, held);
        }
        // Retriable, but the cluster's retry budget (`connectionPool.http.maxRetries`) is used
        // up: Envoy does not retry and flags `UO`.
        let Some(slot) = self.cluster.circuit().try_retry() else {
            return AfterFailure::GiveUp(ResponseFlags::UPSTREAM_OVERFLOW, held);
        };
        retries._slot = Some(slot);
        drop(held);
        retries.count += 1;
        match self.back_off(retries.count, body).await {
            None => AfterFailure::Retry,
            Some(o) => AfterFailure::Done(o),
        }
    }

    /// Waits before retry number `retries`. The request body goes on being read into the
    /// replay copy meanwhile; if it outgrows the buffer, Envoy gives up with a `507`.
    async fn back_off(&self, retries: u32, body: &mut RequestBody) -> Option<Outcome> {
        let base = self
            .retry
            .map_or(egret_core::policy::DEFAULT_RETRY_BACKOFF, |p| {
                p.backoff_base
            });
        let delay = retry::backoff(base, retries, fastrand::u64(..));
        match body.back_off(delay).await {
            Ok(()) => None,
            // Envoy 1.40: `507 request_payload_exceeded_retry_buffer_limit`, no flag.
            Err(BufferOverflow) => Some(Outcome::Local {
                status: 507,
                body: Some("exceeded request buffer limit while retrying upstream".into()),
                flags: ResponseFlags::NONE,
                details: "request_payload_exceeded_retry_buffer_limit".into(),
            }),
        }
    }

    pub async fn run(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body: &mut RequestBody,
        guard: &mut LogGuard,
    ) -> Outcome {
        let per_try = self.retry.and_then(|p| p.per_try_timeout);
        let avoid_tried = self.retry.is_none_or(|p| p.ignore_previous_hosts);
        let mut tried: Vec<SocketAddr> = Vec::new();
        // The host of the attempt before this one: added to `tried` only when there is a
        // next attempt, so a request that is not retried allocates no list.
        let mut previous: Option<SocketAddr> = None;
        let mut retries = Retries::default();
        loop {
            if let Some(p) = previous.take() {
                tried.push(p);
            }
            let avoid: &[SocketAddr] = if avoid_tried { &tried } else { &[] };
            let endpoint = match self
                .cluster
                .pick_endpoint(&self.shared.resolver, avoid, self.lb_hash)
                .await
            {
                Ok(e) => e,
                Err(PickError::NoHealthyUpstream { .. }) => {
                    return Outcome::Local {
                        status: 503,
                        body: Some("no healthy upstream".into()),
                        flags: ResponseFlags::NO_HEALTHY_UPSTREAM,
                        details: "no_healthy_upstream".into(),
                    };
                }
            };
            let addr = endpoint.addr;
            previous = Some(addr);
            let rec = guard.record();
            rec.upstream_host = Some(addr);
            rec.upstream_attempts = retries.count + 1;
            // The body is read ahead (up to the buffer limit) while the connection is set up.
            let checkout = self.shared.pool.checkout(self.cluster, &endpoint);
            // Without a body to read ahead, awaited as it is: wrapping it would build and
            // move the wrapper's future (~1.4 KB) for nothing.
            let connected = if body.may_read_ahead() {
                body.read_ahead_during(checkout).await
            } else {
                checkout.await
            };
            let mut conn = match connected {
                Ok(c) => c,
                Err(e) if e.is_overflow() => {
                    // Envoy (checked with 1.40): `503 UO upstream_reset_before_response_started{overflow}`,
                    // `x-envoy-overloaded: true`, no retry, no upstream host in the log.
                    let rec = guard.record();
                    rec.upstream_host = None;
                    rec.upstream_transport_failure_reason = None;
                    return Outcome::Local {
                        status: 503,
                        body: Some(local_reply::upstream_reset_body("overflow", false, None)),
                        flags: ResponseFlags::UPSTREAM_OVERFLOW,
                        details: local_reply::reset_details(false, "overflow", None),
                    };
                }
                Err(e) => {
                    self.cluster
                        .report(addr, egret_upstream::Outcome::ConnectFailed);
                    tracing::debug!(cluster = %self.cluster.name(), error = %e, "upstream connect failed");
                    let tfr = e.transport_failure_reason();
                    guard.record().upstream_transport_failure_reason = tfr.clone();
                    let retriable = self.retry.is_some_and(|p| {
                        retry::retry_on_failure(p.retry_on, Failure::ConnectFailure)
                    });
                    let first = match self.after_failure(retriable, &mut retries, body, ()).await {
                        AfterFailure::Retry => continue,
                        AfterFailure::Done(o) => return o,
                        AfterFailure::GiveUp(first, ()) => first,
                    };
                    return Outcome::Local {
                        status: 503,
                        body: Some(local_reply::upstream_reset_body(
                            e.reset_reason(),
                            retries.count > 0,
                            None,
                        )),
                        flags: first | ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                        details: local_reply::reset_details(
                            false,
                            e.reset_reason(),
                            tfr.as_deref(),
                        ),
                    };
                }
            };
            self.cluster
                .report(addr, egret_upstream::Outcome::ConnectSucceeded);
            let rec = guard.record();
            rec.upstream_local_address = Some(conn.local_addr());
            rec.upstream_tls = conn.tls_info().cloned();
            rec.upstream_transport_failure_reason = None;
            let Some(b) = body.next_attempt() else {
                // Unreachable by construction (a body that cannot be replayed is never
                // retried), but never panic.
                return reset_outcome(
                    "connection termination",
                    ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                    retries.count > 0,
                    ResponseFlags::NONE,
                );
            };
            let attempt = retries.count + 1;
            let upstream_req =
                self.build_request(method, headers, conn.is_http2(), b, attempt, per_try);
            let sent = match per_try {
                Some(t) => tokio::time::timeout(t, conn.send(upstream_req)).await,
                None => Ok(conn.send(upstream_req).await),
            };
            match sent {
                Err(_elapsed) => {
                    // Envoy: `504 UT upstream_per_try_timeout`, after `URX` when retries ran
                    // out (checked with 1.40).
                    self.cluster.report(addr, egret_upstream::Outcome::Timeout);
                    drop(conn);
                    let retriable = self.retry.is_some_and(|p| {
                        retry::retry_on_failure(p.retry_on, Failure::PerTryTimeout)
                    });
                    let first = match self.after_failure(retriable, &mut retries, body, ()).await {
                        AfterFailure::Retry => continue,
                        AfterFailure::Done(o) => return o,
                        AfterFailure::GiveUp(first, ()) => first,
                    };
                    return Outcome::Local {
                        status: 504,
                        body: Some("upstream request timeout".into()),
                        flags: first | ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                        details: "upstream_per_try_timeout".into(),
                    };
                }
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    self.cluster
                        .report(addr, egret_upstream::Outcome::Status(status));
                    let retriable = self
                        .retry
                        .is_some_and(|p| retry::retry_on_response(p, status, resp.headers()));
                    // A retried response is dropped (with its connection) before the back-off.
                    let held = (resp, conn);
                    let (mut resp, conn) = if !retriable {
                        // The common case, without the detour through `after_failure` (which
                        // would give `held` back unflagged): its future and the response and
                        // connection moved in and out of it cost ~1 KB of copies per request.
                        held
                    } else {
                        match self
                            .after_failure(retriable, &mut retries, body, held)
                            .await
                        {
                            AfterFailure::Retry => continue,
                            AfterFailure::Done(o) => return o,
                            AfterFailure::GiveUp(first, held) => {
                                guard.record().set_flag(first);
                                held
                            }
                        }
                    };
                    // Before Egret adds its own: an upstream's `connection` is then last, and
                    // goes without reordering the others (a 101 keeps its `upgrade` for the
                    // tunnel; `finish` strips it).
                    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                        headers::strip_response_hop_by_hop(resp.headers_mut());
                    }
                    // Envoy 1.40's router: `x-envoy-upstream-service-time` is the time from
                    // the end of the request to the response head (connection set-up and
                    // retries included), and there is none when the response came first.
                    let ended = match self.request_end {
                        None => Some(self.started),
                        Some(end) => end.at(),
                    };
                    let now = Instant::now();
                    guard.record().response_start = Some(now.into_std());
                    if let Some(ended) = ended {
                        let since = now.saturating_duration_since(ended);
                        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
                        resp.headers_mut().insert(
                            headers::X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                            HeaderValue::from(ms),
                        );
                    }
                    envoy_status_line(&mut resp);
                    return Outcome::Upstream { resp, conn };
                }
                Ok(Err(mut e)) => {
                    // A pooled connection the peer had already closed: the request never
                    // left, so it goes out again on a fresh connection (not a retry).
                    if let Some(again) = e.request.take() {
                        // The body is ours again (a retry below can send it as it is).
                        body.put_back(again.into_body());
                        if conn.reused() {
                            continue;
                        }
                    }
                    // Did the client's request body fail the exchange? The body's own error,
                    // under the upstream one; hyper's HTTP/2 client does not pass it on, so
                    // the request side says then.
                    let failed = e
                        .source
                        .request_body_error()
                        .and_then(crate::replay::classify)
                        .or_else(|| self.request_end.and_then(RequestEnd::failure));
                    match failed {
                        Some(BodyFailed::Malformed) => {
                            // The client's fault, not the upstream's (Envoy 1.40, checked with
                            // a bad chunk size): `400 DPE http1.codec_error`, `Bad Request`,
                            // the request and the upstream host logged; no retry, no outlier
                            // report.
                            return Outcome::Local {
                                status: 400,
                                body: Some("Bad Request".into()),
                                flags: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                                details: "http1.codec_error".into(),
                            };
                        }
                        // Trailers past the headers' limit: Envoy's codec answers `431`
                        // as for a head that is too large.
                        Some(BodyFailed::TooLarge) => {
                            return Outcome::Local {
                                status: 431,
                                body: Some("Request Header Fields Too Large".into()),
                                flags: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                                details: "http1.headers_too_large".into(),
                            };
                        }
                        // Not the upstream's failure: no retry, no outlier report.
                        Some(how) => {
                            return Outcome::DownstreamGone {
                                reset: how == BodyFailed::Reset,
                            };
                        }
                        None => {}
                    }
                    self.cluster.report(addr, egret_upstream::Outcome::Reset);
                    let reason = e.reset_reason();
                    let failure = if e.source.is_refused_stream() {
                        Failure::RefusedStream
                    } else {
                        Failure::Reset
                    };
                    let retriable = self
                        .retry
                        .is_some_and(|p| retry::retry_on_failure(p.retry_on, failure));
                    let (first, _conn) = match self
                        .after_failure(retriable, &mut retries, body, conn)
                        .await
                    {
                        AfterFailure::Retry => continue,
                        AfterFailure::Done(o) => return o,
                        AfterFailure::GiveUp(first, conn) => (first, conn),
                    };
                    let flag = match reason {
                        "protocol error" => ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
                        "remote reset" => ResponseFlags::UPSTREAM_REMOTE_RESET,
                        _ => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                    };
                    return reset_outcome(reason, flag, retries.count > 0, first);
                }
            }
        }
    }

    fn build_request(
        &self,
        method: &Method,
        headers: &HeaderMap,
        http2: bool,
        body: UpstreamBody,
        attempt: u32,
        per_try: Option<Duration>,
    ) -> Request<UpstreamBody> {
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        let mut h = headers.clone();
        // Istio sets `include_request_attempt_count` on every virtual host.
        h.insert(
            headers::X_ENVOY_ATTEMPT_COUNT.clone(),
            attempt_count(attempt),
        );
        // Envoy tells the upstream how long it will wait: the per-try timeout, or what is
        // left of the route timeout if less.
        let remaining = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let expected = match (per_try, remaining) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (p, r) => p.or(r),
        };
        if let Some(t) = expected {
            h.insert(
                headers::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(),
                HeaderValue::from(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            );
        }
        if let Some(up) = &self.upgrade {
            h.insert(http::header::UPGRADE, up.clone());
            h.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("Upgrade"),
            );
        }
        // A raw query the URI cannot hold (`crate::path::RawQuery`) is escaped in it; the
        // HTTP/1.1 codec writes the target as the client sent it, HTTP/2 escaped.
        let (target, escaped) =
            crate::path::target_uri(&self.path).unwrap_or_else(|| (Uri::from_static("/"), false));
        if http2 {
            *req.version_mut() = Version::HTTP_2;
            h.remove(http::header::HOST);
            let uri = format!("http://{}{}", self.authority, target);
            *req.uri_mut() = uri.parse().unwrap_or_else(|_| Uri::from_static("/"));
        } else {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = target;
            if escaped {
                req.extensions_mut()
                    .insert(egret_upstream::h1::RawTarget(self.path.clone()));
            }
            if let Ok(v) = HeaderValue::from_str(&self.authority) {
                if h.contains_key(http::header::HOST) {
                    h.insert(http::header::HOST, v);
                } else {
                    // The client sent none (HTTP/2's `:authority`, an absolute-form target):
                    // Envoy 1.40 writes `host` first (checked with it).
                    let mut with_host = http::HeaderMap::with_capacity(h.len() + 1);
                    with_host.insert(http::header::HOST, v);
                    with_host.extend(h.drain());
                    h = with_host;
                }
            }
        }
        *req.headers_mut() = h;
        req
    }
}

/// `x-envoy-attempt-count`: a static value for the first attempts (no allocation per request).
fn attempt_count(attempt: u32) -> HeaderValue {
    static SMALL: [HeaderValue; 4] = [
        HeaderValue::from_static("0"),
        HeaderValue::from_static("1"),
        HeaderValue::from_static("2"),
        HeaderValue::from_static("3"),
    ];
    match SMALL.get(attempt as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(attempt),
    }
}

/// The status line Envoy 1.40 writes for a proxied response (checked with it): its own, not
/// the upstream's: `HTTP/1.1` (an HTTP/1.0 upstream's close-delimited body then goes out
/// chunked), and the code's standard reason phrase, `Unknown` for a code without one (an
/// upstream's `200 Fine` is `200 OK`).
fn envoy_status_line<B>(resp: &mut Response<B>) {
    *resp.version_mut() = Version::HTTP_11;
    if resp.status().as_u16() == 599 {
        // Envoy's name for it (`Code::LastUnassignedServerErrorCode`, checked with 1.40).
        resp.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(
                b"Last Unassigned Server Error Code",
            ));
    } else if resp.status().canonical_reason().is_none() {
        resp.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"Unknown"));
    } else if !resp.extensions().is_empty() {
        resp.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
    }
}

fn reset_outcome(
    reason: &str,
    flag: ResponseFlags,
    retried: bool,
    first: ResponseFlags,
) -> Outcome {
    Outcome::Local {
        // Envoy 1.40 answers an upstream that broke HTTP before its response with `502`
        // (checked with malformed status lines and headers), other resets with `503`.
        status: if reason == "protocol error" { 502 } else { 503 },
        body: Some(local_reply::upstream_reset_body(reason, retried, None)),
        flags: first | flag,
        details: local_reply::reset_details(false, reason, None),
    }
}

/// What the downstream response needs besides the outcome.
pub struct Downstream<'a> {
    /// `%BYTES_RECEIVED%` counter of the request body.
    pub received: Option<Arc<AtomicU64>>,
    /// The client's side of a WebSocket upgrade.
    pub on_upgrade: Option<crate::upgrade::DownstreamUpgrade>,
    /// The upgrade came as an HTTP/2 extended CONNECT: the upstream's `101` is a `200` to the
    /// client, without `Upgrade`/`Connection` (Envoy's codec conversion).
    pub extended_connect: bool,
    /// Response header operations of the route (and destination), applied in order.
    pub response_ops: &'a [&'a HeaderMutations],
    /// When the route timeout expires: it covers the response body too.
    pub deadline: Option<tokio::time::Instant>,
    /// The stream idle timeout, for the response body (zero: none).
    pub stream_idle_timeout: std::time::Duration,
    /// The request body's end, for a body still arriving when the response starts.
    pub request_end: Option<Arc<RequestEnd>>,
}

impl Outcome {
    /// The response, or None when the client is gone ([`Outcome::DownstreamGone`]; the
    /// record is then completed and logged here).
    pub fn finish(self, mut guard: LogGuard, ds: Downstream<'_>) -> Option<Response<ResponseBody>> {
        Some(match self {
            Outcome::DownstreamGone { reset } => {
                let rec = guard.record();
                if reset {
                    rec.set_flag(ResponseFlags::DOWNSTREAM_REMOTE_RESET);
                    rec.response_code_details = Some("http2.remote_reset".into());
                } else {
                    rec.set_flag(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
                    rec.response_code_details = Some("downstream_remote_disconnect".into());
                }
                if let Some(r) = &ds.received {
                    rec.bytes_received = r.load(std::sync::atomic::Ordering::Relaxed);
                }
                guard.finish();
                return None;
            }
            Outcome::Local {
                status,
                body,
                flags,
                details,
            } => {
                let mut resp = crate::service::local_reply_with(
                    guard,
                    status,
                    body,
                    flags,
                    &details,
                    ds.received,
                    ds.response_ops,
                );
                // The client's connection is not reusable after its own protocol error
                // (Envoy sends `connection: close` with it).
                if flags.contains(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR) {
                    resp.headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
            Outcome::Upstream { resp, conn } => {
                let was_upgrade = ds.on_upgrade.is_some();
                let (mut parts, body) = resp.into_parts();
                let (upgraded, body) = match ds.on_upgrade {
                    Some(down) if parts.status == http::StatusCode::SWITCHING_PROTOCOLS => {
                        (body.into_upgraded().map(|up| (down, up)), None)
                    }
                    Some(down) if ds.extended_connect && parts.status.is_success() => {
                        // hyper answers a 2xx to a CONNECT by opening the tunnel; as Envoy
                        // 1.40 does for a refused handshake, the stream then just ends.
                        crate::upgrade::end_refused_tunnel(down);
                        (None, Some(body))
                    }
                    _ => (None, Some(body)),
                };
                let upgrade_value = parts.headers.get(http::header::UPGRADE).cloned();
                // `run` has stripped any other response's hop-by-hop headers already.
                if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
                    headers::strip_response_hop_by_hop(&mut parts.headers);
                }
                // Envoy adds a `date` to a response without one, before its `server`
                // (checked with 1.40).
                if !parts.headers.contains_key(http::header::DATE) {
                    parts
                        .headers
                        .insert(http::header::DATE, headers::date_now());
                }
                parts
                    .headers
                    .insert(http::header::SERVER, headers::SERVER_NAME.clone());
                let rec = guard.record();
                rec.response_code = parts.status.as_u16();
                if let Some((down, up)) = upgraded {
                    // Envoy 1.40's 101: the upstream's headers with `upgrade` and
                    // `connection: Upgrade`, no `x-envoy-upstream-service-time`. To an
                    // extended CONNECT: `200` with the upstream's other headers (the log
                    // keeps 101).
                    // In place: `HeaderMap::remove` moves the last field into the gap.
                    headers::remove_in_order(&mut parts.headers, |n| {
                        n == headers::X_ENVOY_UPSTREAM_SERVICE_TIME
                    });
                    if ds.extended_connect {
                        parts.status = http::StatusCode::OK;
                    } else {
                        if let Some(v) = upgrade_value {
                            parts.headers.insert(http::header::UPGRADE, v);
                        }
                        parts.headers.insert(
                            http::header::CONNECTION,
                            HeaderValue::from_static("Upgrade"),
                        );
                    }
                    headers::apply_response_ops(&mut parts.headers, ds.response_ops);
                    guard.set_response_headers(&parts.headers);
                    guard.record().response_code_details = Some("via_upstream".into());
                    drop(conn);
                    crate::upgrade::spawn_tunnel(down, up, guard);
                    return Some(Response::from_parts(parts, ResponseBody::full(None)));
                }
                if was_upgrade && !parts.status.is_success() {
                    // Refused with an error: Envoy 1.40 relays it as any response, without
                    // `x-envoy-upstream-service-time`, and closes the connection after it.
                    headers::remove_in_order(&mut parts.headers, |n| {
                        n == headers::X_ENVOY_UPSTREAM_SERVICE_TIME
                    });
                    if !ds.extended_connect {
                        parts
                            .headers
                            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                    }
                } else if was_upgrade {
                    // A 2xx instead of the switch: Envoy 1.40 passes the status and headers,
                    // drops the body and closes the connection (checked with it).
                    // In place: `HeaderMap::remove` moves the last field into the gap.
                    headers::remove_in_order(&mut parts.headers, |n| {
                        n == headers::X_ENVOY_UPSTREAM_SERVICE_TIME
                    });
                    if ds.extended_connect {
                        // HTTP/2: the stream ends with the response (Envoy 1.40).
                        parts.headers.remove(http::header::CONTENT_LENGTH);
                    } else {
                        parts
                            .headers
                            .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                        parts
                            .headers
                            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    headers::apply_response_ops(&mut parts.headers, ds.response_ops);
                    guard.set_response_headers(&parts.headers);
                    guard.record().response_code_details =
                        Some("websocket_handshake_unsuccessful".into());
                    drop((body, conn));
                    return Some(Response::from_parts(
                        parts,
                        ResponseBody::full(None).with_log(guard, ds.received),
                    ));
                }
                headers::apply_response_ops(&mut parts.headers, ds.response_ops);
                guard.set_response_headers(&parts.headers);
                guard.record().response_code_details = Some("via_upstream".into());
                // Only a `101`, always an upgrade, left no body to relay.
                let Some(body) = body else {
                    return Some(Response::from_parts(
                        parts,
                        ResponseBody::full(None).with_log(guard, ds.received),
                    ));
                };
                let mut body = ResponseBody::upstream(body, conn)
                    .with_log(guard, ds.received)
                    .with_request_end(ds.request_end);
                if let Some(d) = ds.deadline {
                    body.set_deadline(d);
                }
                body.set_stream_idle_timeout(ds.stream_idle_timeout);
                Response::from_parts(parts, body)
            }
        })
    }
}
