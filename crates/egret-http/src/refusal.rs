//! Requests refused before routing, as Envoy 1.40's HTTP/1 codec and connection manager
//! refuse them at an Istio gateway: what is answered and what is logged. Every case here was
//! sent to Envoy 1.40 and to Egret on loopback and compared (status, body, flags, details).
//!
//! Two kinds:
//! - the codec's refusals (`DPE`, logged `"- - HTTP/1.1"`, body text, connection closed):
//!   heads the listener's codec could not parse ([`for_head_error`], answered by the
//!   listener) and heads it parsed that Envoy's codec would not ([`codec_refusal`]:
//!   HTTP/1.0, unknown methods, an authority as the target, repeated lengths);
//! - the connection manager's (no flag, the request logged): a request without a host, a
//!   path that is not a path ([`manager_refusal`]).

use bytes::{BufMut, BytesMut};
use http::{Method, Request, Version};

use egret_core::record::{LogGuard, LogRecord};
use egret_core::ResponseFlags;

use crate::local_reply;
use crate::service::{ConnContext, HttpShared};

/// Marks a response as one of the codec's refusals (a response extension): Envoy 1.40's
/// codec writes it as `HTTP/1.1` with its body whatever the request was, an HTTP/1.0
/// request or a HEAD (checked with it), so the listener does not frame it for the request.
#[derive(Clone, Copy, Debug)]
pub struct CodecReply;

/// Marks a request whose client was sent `100 Continue` (a request extension): until a
/// final response, its code is 100, so a client that leaves after it is logged `100 DC`, as
/// Envoy 1.40 logs it (checked with it).
#[derive(Clone, Copy, Debug)]
pub struct ContinueSent;

/// What Envoy answers and logs for a refused request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// The `text/plain` body; empty for none.
    pub body: &'static str,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub details: &'static str,
    /// Whether the connection is closed after the answer.
    pub closes: bool,
}

const BAD_REQUEST: Refusal = Refusal {
    status: 400,
    body: "Bad Request",
    details: "http1.codec_error",
    closes: true,
};
const LOW_VERSION: Refusal = Refusal {
    status: 426,
    body: "Upgrade Required",
    details: "low_version",
    closes: true,
};
/// Also Envoy's answer to a request line past the limit.
pub const HEADERS_TOO_LARGE: Refusal = Refusal {
    status: 431,
    body: "Request Header Fields Too Large",
    details: "http1.headers_too_large",
    closes: true,
};
/// An absolute-form target with a scheme other than `http` or `https` (`ftp://...`).
pub const INVALID_SCHEME: Refusal = Refusal {
    details: "http1.invalid_scheme",
    ..BAD_REQUEST
};
/// An `https://` target on a plain-text connection.
pub const HTTPS_URL_ON_PLAINTEXT: Refusal = Refusal {
    status: 403,
    body: "Forbidden",
    details: "http1.https_url_on_plaintext_connection",
    closes: true,
};
/// A `Connection` header naming a pseudo-header or a forwarding header the proxy sets.
pub const CONNECTION_HEADER_REJECTED: Refusal = Refusal {
    details: "http1.connection_header_rejected",
    ..BAD_REQUEST
};
/// An HTTP/2 request Envoy's codec refuses: more than one `content-length`, or one that is
/// not a number (Envoy 1.40 closes the connection, `http2.invalid.header.field`; we answer
/// the stream so, and never forward the request).
pub const H2_INVALID_HEADER: Refusal = Refusal {
    details: "http2.invalid.header.field",
    ..BAD_REQUEST
};
/// An HTTP/2 request with more than Envoy's 100 header fields, pseudo-headers included
/// (Envoy 1.40 resets the stream: `http2.too_many_headers`).
pub const H2_TOO_MANY_HEADERS: Refusal = Refusal {
    status: 431,
    body: "Request Header Fields Too Large",
    details: "http2.too_many_headers",
    closes: true,
};
/// A `Host` that is not text (Envoy 1.40, checked with a `0xff` byte in it).
pub const INVALID_AUTHORITY: Refusal = Refusal {
    details: "http.invalid_authority",
    ..BAD_REQUEST
};

/// Envoy's default `max_headers_count`.
const MAX_HEADERS: usize = 100;
/// `:method`, `:scheme`, `:authority`, `:path`.
const H2_PSEUDO_HEADERS: usize = 4;

/// The methods Envoy 1.40's HTTP/1 parser accepts (case-sensitive; `MSEARCH` without the
/// hyphen, and not `QUERY`: each checked against it). Anything else is `400 DPE
/// http1.codec_error`.
const METHODS: [&str; 34] = [
    "ACL",
    "BIND",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "MSEARCH",
    "NOTIFY",
    "OPTIONS",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "TRACE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// Why the listener's HTTP/1.1 codec could not take a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not `HTTP/1.x` (an HTTP/2 preface included), or `Transfer-Encoding` on HTTP/1.0.
    Version,
    /// The method is not a token.
    Method,
    /// The request target is not one.
    Target,
    /// A malformed header line.
    Header,
    /// The head (or its request line) is past the limits.
    TooLarge,
    /// More than Envoy's 100 header fields.
    TooManyHeaders,
    /// Both `content-length` and `transfer-encoding: chunked`.
    LengthAndChunked,
    /// A `Transfer-Encoding` other than `chunked`.
    TransferEncoding,
    /// A `content-length` that is not a number, or two different ones.
    ContentLength,
}

/// What Envoy 1.40 answers to a head its codec could not parse, from the error and the
/// bytes the parser stopped at (the head, as far as it was read).
pub fn for_head_error(error: HeadError, head: &[u8]) -> Refusal {
    match error {
        HeadError::Version => LOW_VERSION,
        HeadError::TooLarge => HEADERS_TOO_LARGE,
        HeadError::TooManyHeaders => Refusal {
            details: "http1.too_many_headers",
            ..HEADERS_TOO_LARGE
        },
        HeadError::LengthAndChunked => Refusal {
            details: "http1.content_length_and_chunked_not_allowed",
            ..BAD_REQUEST
        },
        HeadError::TransferEncoding => Refusal {
            status: 501,
            body: "Not Implemented",
            details: "http1.invalid_transfer_encoding",
            closes: true,
        },
        HeadError::Header | HeadError::Method | HeadError::Target
            if has_control_characters(head) =>
        {
            Refusal {
                details: "http1.invalid_characters",
                ..BAD_REQUEST
            }
        }
        HeadError::Header | HeadError::Method | HeadError::Target | HeadError::ContentLength => {
            BAD_REQUEST
        }
    }
}

/// A control character (other than tab) in the request line or the header lines: Envoy
/// says `http1.invalid_characters`, where any other malformed head is `http1.codec_error`
/// (a tab or a UTF-8 byte in the target included; checked with Envoy 1.40). A bare CR is
/// not one of them: Envoy accepts it inside a value.
fn has_control_characters(head: &[u8]) -> bool {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len());
    head[..end]
        .iter()
        .any(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f)
}

/// A parsed HTTP/1 head that Envoy's codec would have refused. HTTP/2 requests pass (their
/// codec takes any method token).
pub fn codec_refusal<B>(req: &Request<B>) -> Option<Refusal> {
    // One `content-length` field of digits, as Envoy's codecs require (checked with 1.40:
    // two equal fields, or `5, 5`, are `400 DPE http1.codec_error` on HTTP/1.1). The
    // listener's codec passes equal duplicates on for this; forwarded, they would frame the
    // body twice.
    let mut lengths = req.headers().get_all(http::header::CONTENT_LENGTH).iter();
    let bad_length = lengths.next().is_some_and(|v| {
        let v = v.as_bytes().trim_ascii();
        v.is_empty() || !v.iter().all(u8::is_ascii_digit)
    }) || lengths.next().is_some();
    match req.version() {
        Version::HTTP_11 if bad_length => return Some(BAD_REQUEST),
        Version::HTTP_11 => {}
        Version::HTTP_10 | Version::HTTP_09 => return Some(LOW_VERSION),
        Version::HTTP_2 if bad_length => return Some(H2_INVALID_HEADER),
        // Envoy counts the pseudo-headers in its limit of 100 (101 fields are refused).
        Version::HTTP_2 if req.headers().len() + H2_PSEUDO_HEADERS > MAX_HEADERS => {
            return Some(H2_TOO_MANY_HEADERS)
        }
        _ => return None,
    }
    if !METHODS.contains(&req.method().as_str()) {
        return Some(BAD_REQUEST);
    }
    if let Some(scheme) = req.uri().scheme_str() {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Some(INVALID_SCHEME);
        }
    }
    // `GET example.com`: an authority is a target only for CONNECT.
    let uri = req.uri();
    if *req.method() != Method::CONNECT && uri.scheme().is_none() && uri.authority().is_some() {
        return Some(BAD_REQUEST);
    }
    None
}

/// A request target with a `#fragment`, as the client sent it: the listener's HTTP/1.1 codec
/// marks such a request with it (the parsed URI has lost the fragment). Envoy 1.40's path
/// normalization refuses it (`400 path_normalization_failed`, no flag, logged with the whole
/// target; checked with it).
#[derive(Clone, Debug)]
pub struct TargetWithFragment(pub bytes::Bytes);

/// Envoy's answer to a target it cannot normalize (a `#fragment`): no body, closed.
pub const PATH_NORMALIZATION_FAILED: Refusal = Refusal {
    status: 400,
    body: "",
    details: "path_normalization_failed",
    closes: true,
};

/// What Envoy's connection manager refuses before routing (no flag; the request is logged
/// with its method and path): no host at all (`Host` missing, or removed because
/// `Connection` named it), and `*` as the path (`OPTIONS *`).
pub fn manager_refusal(method: &Method, path: &str, has_authority: bool) -> Option<Refusal> {
    if !has_authority {
        return Some(Refusal {
            status: 400,
            body: "",
            details: "missing_host_header",
            closes: true,
        });
    }
    if path == "*" && *method != Method::CONNECT {
        return Some(Refusal {
            status: 404,
            body: "",
            details: "absolute_path_rejected",
            closes: false,
        });
    }
    None
}

/// The codec's refusal of a head it could not parse, for the listener to write itself (there
/// is no request to answer): the response's bytes and the record, to be finished once they
/// are written.
pub fn unparsed_refusal(
    shared: &HttpShared,
    conn: &ConnContext,
    refusal: Refusal,
) -> (BytesMut, LogGuard) {
    let mut guard = head_record(shared, conn);
    let body = (!refusal.body.is_empty()).then(|| refusal.body.to_string());
    let (mut resp, len) = local_reply::build(refusal.status, body);
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    guard.set_response_headers(resp.headers());
    let rec = guard.record();
    rec.response_code = refusal.status;
    rec.response_flags
        .insert(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
    rec.response_code_details = Some(refusal.details.into());
    rec.bytes_sent = len;

    let mut wire = BytesMut::with_capacity(256 + refusal.body.len());
    wire.put_slice(b"HTTP/1.1 ");
    wire.put_slice(resp.status().as_str().as_bytes());
    wire.put_u8(b' ');
    wire.put_slice(
        resp.status()
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    wire.put_slice(b"\r\n");
    for (name, value) in resp.headers() {
        wire.put_slice(name.as_str().as_bytes());
        wire.put_slice(b": ");
        wire.put_slice(value.as_bytes());
        wire.put_slice(b"\r\n");
    }
    wire.put_slice(b"\r\n");
    wire.put_slice(refusal.body.as_bytes());
    (wire, guard)
}

/// The record of a request whose head never made it through the codec:
/// `"- - HTTP/1.1"`, no upstream.
fn head_record(shared: &HttpShared, conn: &ConnContext) -> LogGuard {
    let mut rec = Box::new(LogRecord::new(
        conn.local,
        conn.remote,
        conn.snapshot.version.clone(),
    ));
    rec.protocol = Some("HTTP/1.1");
    conn.tls.fill(&mut rec);
    LogGuard::new(rec, shared.sink.clone()).with_response_headers(shared.sink.headers().response)
}

/// The client closed its connection part-way through a request head: Envoy 1.40 logs it as
/// `"- - HTTP/1.1" 0 DC downstream_remote_disconnect` (a connection closed before its first
/// byte, or between requests, is not logged), with the time since the head began to arrive
/// (`since`, when the listener had to wait for more of it) as the duration.
pub fn log_abandoned_head(
    shared: &HttpShared,
    conn: &ConnContext,
    since: Option<std::time::Instant>,
) {
    let mut guard = head_record(shared, conn);
    let rec = guard.record();
    if let Some(since) = since {
        rec.start_time = rec
            .start_time
            .checked_sub(since.elapsed())
            .unwrap_or(rec.start_time);
        rec.start = since;
    }
    rec.set_flag(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
    rec.response_code_details = Some("downstream_remote_disconnect".into());
    guard.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `content-length` of digits (Envoy's codecs refuse two, even equal, and lists);
    /// HTTP/2 requests past 100 fields, pseudo-headers counted, are refused too.
    #[test]
    fn codecs_refuse_repeated_lengths_and_too_many_h2_fields() {
        let req = |version: Version, headers: &[(&str, String)]| {
            let mut r = Request::new(());
            *r.version_mut() = version;
            *r.uri_mut() = "/".parse().unwrap();
            for (n, v) in headers {
                r.headers_mut().append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            r
        };
        let cl = |v: &str| ("content-length", v.to_string());
        let details = |r: Request<()>| codec_refusal(&r).map(|r| r.details);
        assert_eq!(details(req(Version::HTTP_11, &[cl("5")])), None);
        for bad in [vec![cl("5"), cl("5")], vec![cl("5, 5")], vec![cl("+5")]] {
            assert_eq!(
                details(req(Version::HTTP_11, &bad)),
                Some("http1.codec_error")
            );
            assert_eq!(
                details(req(Version::HTTP_2, &bad)),
                Some("http2.invalid.header.field")
            );
        }
        let many =
            |n: usize| -> Vec<(&str, String)> { (0..n).map(|i| ("x-h", i.to_string())).collect() };
        // 96 fields + 4 pseudo-headers = 100: taken; one more is not.
        assert_eq!(details(req(Version::HTTP_2, &many(96))), None);
        assert_eq!(
            details(req(Version::HTTP_2, &many(97))),
            Some("http2.too_many_headers")
        );
    }

    /// What Envoy 1.40 answered for heads its codec could not parse.
    #[test]
    fn head_errors_map_as_envoy_answers_them() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let cases = [
            (HeadError::Version, 426, "low_version"),
            (HeadError::TooLarge, 431, "http1.headers_too_large"),
            (HeadError::TooManyHeaders, 431, "http1.too_many_headers"),
            (
                HeadError::LengthAndChunked,
                400,
                "http1.content_length_and_chunked_not_allowed",
            ),
            (
                HeadError::TransferEncoding,
                501,
                "http1.invalid_transfer_encoding",
            ),
            (HeadError::Method, 400, "http1.codec_error"),
            (HeadError::Header, 400, "http1.codec_error"),
            (HeadError::ContentLength, 400, "http1.codec_error"),
            (HeadError::Target, 400, "http1.codec_error"),
        ];
        for (error, status, details) in cases {
            let r = for_head_error(error, head);
            assert_eq!((r.status, r.details), (status, details), "{error:?}");
        }
    }

    #[test]
    fn control_characters_in_header_lines_are_named_so() {
        let header_error = |head: &[u8]| for_head_error(HeadError::Header, head).details;
        for bad in [
            &b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nX-A: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-\x00A: ab\r\n\r\n",
            // As far as it was read: no end of head yet.
            b"GET / HTTP/1.1\r\nX-A: a\x00",
        ] {
            assert_eq!(header_error(bad), "http1.invalid_characters", "{bad:?}");
        }
        for other in [
            &b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nX-A: a\tb\r\n\r\n",
            // Past the head: the next request's bytes are not this one's.
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n\x00",
        ] {
            assert_eq!(header_error(other), "http1.codec_error", "{other:?}");
        }
        // In the request line too (checked with Envoy 1.40), but not a tab or UTF-8.
        for (error, head, details) in [
            (
                HeadError::Target,
                &b"GET /\x01 HTTP/1.1\r\nX: y\r\n\r\n"[..],
                "invalid_characters",
            ),
            (
                HeadError::Target,
                b"GET /a\x7fb HTTP/1.1\r\n\r\n",
                "invalid_characters",
            ),
            (
                HeadError::Method,
                b"G\x7fT / HTTP/1.1\r\n\r\n",
                "invalid_characters",
            ),
            (
                HeadError::Header,
                b"GET / HTTP/1.1\x01\r\n\r\n",
                "invalid_characters",
            ),
            (
                HeadError::Target,
                b"GET /a\tb HTTP/1.1\r\n\r\n",
                "codec_error",
            ),
            (
                HeadError::Target,
                b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
                "codec_error",
            ),
        ] {
            let got = for_head_error(error, head).details;
            assert_eq!(got, format!("http1.{details}"), "{head:?}");
        }
    }

    fn request(method: &str, target: &str, version: Version) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(target)
            .version(version)
            .body(())
            .unwrap()
    }

    #[test]
    fn heads_envoys_codec_refuses() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            codec_refusal(&request("GET", "/", Version::HTTP_10)),
            Some(LOW_VERSION)
        );
        for method in ["FOO", "get", "M-SEARCH", "QUERY", "PRI", "DEBUG"] {
            assert_eq!(
                codec_refusal(&request(method, "/", v11)),
                Some(BAD_REQUEST),
                "{method}"
            );
        }
        for method in METHODS {
            let target = if method == "CONNECT" {
                "a.com:443"
            } else {
                "/"
            };
            assert_eq!(
                codec_refusal(&request(method, target, v11)),
                None,
                "{method}"
            );
        }
        assert_eq!(
            codec_refusal(&request("GET", "abc", v11)),
            Some(BAD_REQUEST)
        );
        assert_eq!(codec_refusal(&request("GET", "http://a.com/x", v11)), None);
        assert_eq!(codec_refusal(&request("OPTIONS", "*", v11)), None);
        // HTTP/2's codec takes any method token.
        assert_eq!(codec_refusal(&request("QUERY", "/", Version::HTTP_2)), None);
    }

    #[test]
    fn what_the_connection_manager_refuses() {
        let missing = manager_refusal(&Method::GET, "/", false).unwrap();
        assert_eq!(
            (
                missing.status,
                missing.body,
                missing.details,
                missing.closes
            ),
            (400, "", "missing_host_header", true)
        );
        let star = manager_refusal(&Method::OPTIONS, "*", true).unwrap();
        assert_eq!(
            (star.status, star.details, star.closes),
            (404, "absolute_path_rejected", false)
        );
        assert_eq!(manager_refusal(&Method::GET, "/x", true), None);
    }
}
