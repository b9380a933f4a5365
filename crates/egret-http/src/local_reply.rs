//! Local replies exactly as Envoy sends them from an Istio gateway: status, `text/plain`
//! body text, `server: istio-envoy`. Texts were checked against Envoy 1.40.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;
use crate::headers::SERVER_NAME;

/// Envoy's body for a connect failure or reset before response headers.
pub fn upstream_reset_body(
    reset_reason: &str,
    retried: bool,
    transport_failure: Option<&str>,
) -> String {
    let mut s = String::from("upstream connect error or disconnect/reset before headers. ");
    if retried {
        s.push_str("retried and the latest reset reason: ");
    } else {
        s.push_str("reset reason: ");
    }
    s.push_str(reset_reason);
    // Envoy 1.40 no longer appends the transport failure reason to the body (checked for
    // refused connects and TLS failures: "...latest reset reason: remote connection failure");
    // callers pass `None` and the reason goes to the log line.
    if let Some(t) = transport_failure {
        s.push_str(", transport failure reason: ");
        s.push_str(t);
    }
    s
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for a reset before response headers, e.g.
/// `upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}`.
pub fn reset_details(
    after_response_started: bool,
    reset_reason: &str,
    transport_failure: Option<&str>,
) -> String {
    let mut s = String::from(if after_response_started {
        "upstream_reset_after_response_started{"
    } else {
        "upstream_reset_before_response_started{"
    });
    s.push_str(&reset_reason.replace(' ', "_"));
    if let Some(t) = transport_failure {
        s.push('|');
        s.push_str(&t.replace(' ', "_"));
    }
    s.push('}');
    s
}

/// Builds the response; returns it with the number of body bytes (for `%BYTES_SENT%`).
pub fn build(status: u16, body: Option<String>) -> (Response<ResponseBody>, u64) {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let len = body.as_ref().map_or(0, |b| b.len() as u64);
    let mut resp = Response::new(ResponseBody::full(body.map(Bytes::from)));
    *resp.status_mut() = status;
    // Envoy's header order: with a body `content-length, content-type, date, server`;
    // without one `date, server`, and the HTTP/1.1 codec frames it (`content-length: 0`
    // after them; `transfer-encoding: chunked` when it answers a HEAD; nothing on HTTP/2),
    // as Envoy 1.40's codecs do.
    let h = resp.headers_mut();
    let date = crate::headers::date_now();
    if len > 0 {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    h.insert(http::header::DATE, date);
    h.insert(http::header::SERVER, SERVER_NAME.clone());
    (resp, len)
}

/// A redirect as Envoy 1.40 sends it: `location`, `date`, `server` (and the codec's framing,
/// as for [`build`]).
pub fn redirect(status: u16, location: &str) -> (Response<ResponseBody>, u64) {
    let mut resp = Response::new(ResponseBody::full(None));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(http::header::LOCATION, v);
    }
    h.insert(http::header::DATE, crate::headers::date_now());
    h.insert(http::header::SERVER, SERVER_NAME.clone());
    (resp, 0)
}

/// A trailers-only gRPC error as Envoy 1.40 sends it to a gRPC client: `200`,
/// `content-type: application/grpc`, `grpc-status`, `grpc-message`, no body.
pub fn grpc(code: u32, message: &str) -> (Response<ResponseBody>, u64) {
    let mut resp = Response::new(ResponseBody::full(None));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(m) = HeaderValue::from_str(message) {
        h.insert("grpc-message", m);
    }
    h.insert(http::header::DATE, crate::headers::date_now());
    h.insert(http::header::SERVER, SERVER_NAME.clone());
    (resp, 0)
}

/// Envoy marks a circuit-breaker overflow reply with `x-envoy-overloaded: true`, as the
/// first header (checked with Envoy 1.40).
pub fn mark_overloaded(headers: &mut http::HeaderMap) {
    let rest = std::mem::take(headers);
    headers.insert(
        http::HeaderName::from_static("x-envoy-overloaded"),
        HeaderValue::from_static("true"),
    );
    let mut last = None;
    for (name, value) in rest {
        if let Some(n) = name {
            last = Some(n);
        }
        if let Some(n) = &last {
            headers.append(n.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overloaded_header_comes_first() {
        let body = upstream_reset_body("overflow", false, None);
        let (mut resp, _) = build(503, Some(body));
        mark_overloaded(resp.headers_mut());
        let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
        // Envoy 1.40's order for the overflow reply.
        let envoy = [
            "x-envoy-overloaded",
            "content-length",
            "content-type",
            "date",
            "server",
        ];
        assert_eq!(names, envoy);
    }

    #[test]
    fn texts_match_envoy_1_40() {
        assert_eq!(
            upstream_reset_body("remote connection failure", true, None),
            "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"
        );
        assert_eq!(
            upstream_reset_body("connection termination", false, None),
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
        );
        assert_eq!(
            reset_details(false, "remote connection failure", Some("delayed_connect_error:_Connection_refused")),
            "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}"
        );
        assert_eq!(
            reset_details(true, "protocol error", None),
            "upstream_reset_after_response_started{protocol_error}"
        );
    }
}
