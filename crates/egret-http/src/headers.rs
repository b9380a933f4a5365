//! Header rules Envoy applies at an Istio gateway (`use_remote_address: true`).

use std::net::IpAddr;

use egret_core::ip::{ip_text, IP_TEXT_MAX};
use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
pub static SERVER_NAME: HeaderValue = HeaderValue::from_static("istio-envoy");
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
pub static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
pub static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
pub static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
pub static X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");

/// The `x-envoy-*` request headers that steer Envoy or that Envoy itself writes. A client
/// cannot set them through the gateway: Envoy 1.40 drops every one of these from a request
/// that reaches an Istio gateway (checked; other `x-envoy-*` names pass through). So a
/// client can neither change retries or timeouts, nor forge the original path in the log.
pub const ENVOY_CONTROL_HEADERS: &[&str] = &[
    "x-envoy-attempt-count",
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-original-host",
    "x-envoy-original-path",
    "x-envoy-original-url",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms",
];

/// Removes [`ENVOY_CONTROL_HEADERS`] from a downstream request.
pub fn strip_envoy_control(headers: &mut HeaderMap) {
    // A removal by `&str` parses and hashes the name whether or not it is there: 22 of them
    // were 12 % of the instructions of a proxied S1 request (callgrind). Requests almost
    // never carry any `x-envoy-*` header, so look at the names present first.
    if !headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        return;
    }
    remove_in_order(headers, |n| ENVOY_CONTROL_HEADERS.contains(&n.as_str()));
}

/// Whether the `Connection` header lists `token` (`close`, `upgrade`), in any of its values.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A gRPC request (`content-type: application/grpc...`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Bytes of the request line and headers as they came in (Envoy's `max_request_headers_kb`
/// counts the header map; this is close enough to draw the same line).
pub fn request_headers_size<B>(req: &http::Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    line + req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// Connection-specific headers that never cross the proxy, in either direction: what Envoy
/// 1.40 removes (checked with it: `te`, `trailer`, `proxy-authenticate` and
/// `proxy-authorization` pass, `te` sanitized on requests).
static HOP_BY_HOP: [HeaderName; 5] = [
    http::header::CONNECTION,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The index of `name` in [`HOP_BY_HOP`]; one `match` on the text (the compiler switches on
/// the length first) instead of a comparison per entry for every header.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "transfer-encoding" => Some(1),
        "upgrade" => Some(2),
        "keep-alive" => Some(3),
        "proxy-connection" => Some(4),
        _ => None,
    }
}

/// The [`HOP_BY_HOP`] headers present, and whether `te` is: one pass over the names.
fn hop_by_hop_present(headers: &HeaderMap) -> ([bool; HOP_BY_HOP.len()], bool) {
    let mut present = [false; HOP_BY_HOP.len()];
    let mut te = false;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        } else if name == http::header::TE {
            te = true;
        }
    }
    (present, te)
}

fn remove_present(headers: &mut HeaderMap, present: [bool; HOP_BY_HOP.len()]) {
    if present.iter().any(|&p| p) {
        remove_in_order(headers, |name| {
            HOP_BY_HOP.iter().zip(present).any(|(h, p)| p && h == name)
        });
    }
}

/// Removes the headers `drop` selects and keeps the others in their order. `HeaderMap::remove`
/// moves the last header into the hole; Envoy's header map keeps the order, and the request
/// goes upstream in it (some servers and WAFs look at header order). Called only when there is
/// something to remove.
pub(crate) fn remove_in_order(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    // Most often what goes is last (an upstream's `connection: keep-alive`): removing the last
    // entries moves none of the others, and costs no rebuild (~600 instructions, callgrind).
    let mut dropping = false;
    let mut suffix = true;
    for name in headers.keys() {
        if drop(name) {
            dropping = true;
        } else if dropping {
            suffix = false;
            break;
        }
    }
    if suffix {
        while let Some(last) = headers.keys().last().filter(|n| drop(n)).cloned() {
            headers.remove(last);
        }
        return;
    }
    let old = std::mem::take(headers);
    headers.reserve(old.len());
    let mut current: Option<HeaderName> = None;
    // `into_iter` names a header once, before all of its values.
    for (name, value) in old {
        if let Some(n) = name {
            current = Some(n);
        }
        if let Some(n) = &current {
            if !drop(n) {
                headers.append(n.clone(), value);
            }
        }
    }
}

/// The names a request's `Connection` headers list, token by token: one that is not text (a
/// value with obs-text bytes) is skipped, not the whole value (Envoy 1.40 still acts on the
/// other names).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::CONNECTION)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
        .filter(|t| !t.is_empty())
}

/// A route's (and destination's) response header operations, then `server` as Envoy's
/// connection manager sets it after every filter has run: a VirtualService can neither remove
/// nor change it (checked with Envoy 1.40: `response_headers_to_remove: [server]` and an
/// overwriting `server: custom` both still answer `server: envoy`).
pub fn apply_response_ops(h: &mut HeaderMap, ops: &[&egret_core::HeaderMutations]) {
    if ops.is_empty() {
        return;
    }
    for o in ops {
        o.apply(h);
    }
    h.insert(http::header::SERVER, SERVER_NAME.clone());
}

/// Whether a request's `Connection` lists a name Envoy 1.40 refuses there (answering `400`,
/// `http1.connection_header_rejected`; checked with it): a pseudo-header, or a forwarding
/// header the proxy itself sets. (`host` is removed like any other name, and the request
/// then has no host: `400 missing_host_header`.)
pub fn connection_names_protected(headers: &HeaderMap) -> bool {
    const REFUSED: [&str; 3] = ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"];
    connection_tokens(headers)
        .any(|t| t.starts_with(':') || REFUSED.iter().any(|r| t.eq_ignore_ascii_case(r)))
}

/// Removes the headers a request's `Connection` names, as Envoy 1.40's codec does before
/// anything else looks at the request (an internal client's `x-request-id` named there is
/// replaced by a new one, checked with Envoy). Not `te` (Envoy keeps `te: trailers` that
/// `Connection` names), nor the [`HOP_BY_HOP`] names (removed later, after the upgrade
/// check has read them).
pub fn strip_connection_nominated(headers: &mut HeaderMap) {
    if !headers.contains_key(http::header::CONNECTION) {
        return;
    }
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !t.eq_ignore_ascii_case("te"))
        // `keep-alive`, `upgrade`, ...: most `Connection` values name only these.
        .filter(|t| {
            !HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(t))
        })
        // Looked up by text (lowercased on the stack), and a name allocated only for a
        // header that is there: linear in the tokens, however many a client lists.
        .filter(|t| headers.contains_key(*t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    if !listed.is_empty() {
        remove_in_order(headers, |name| listed.contains(name));
    }
}

/// A request on its way upstream (after [`strip_connection_nominated`]), as Envoy 1.40
/// forwards it: without the [`HOP_BY_HOP`] headers, and with `te` sanitized: `te: trailers`
/// when any comma-separated token of any `te` value is exactly `trailers` (gRPC needs it),
/// no `te` otherwise.
///
/// Looks before it removes: a removal hashes the name (and parses it, for a `&str`) whether
/// or not it is there, and a message carries none or one or two of these, so one pass over
/// the names present is cheaper than a removal per name (callgrind, S1).
pub fn strip_request_hop_by_hop(headers: &mut HeaderMap) {
    let (present, te) = hop_by_hop_present(headers);
    remove_present(headers, present);
    if te {
        let trailers = headers.get_all(http::header::TE).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii() == b"trailers")
        });
        if trailers {
            headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        } else {
            remove_in_order(headers, |n| n == http::header::TE);
        }
    }
}

/// A response on its way downstream: without the [`HOP_BY_HOP`] headers. Envoy 1.40 passes
/// the headers a response's `Connection` names, and `te`, `trailer`, `proxy-authenticate`
/// (checked with it).
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap) {
    let (present, _) = hop_by_hop_present(headers);
    remove_present(headers, present);
}

/// Joins several `cookie` fields into one, in order, separated by `; ` (RFC 9113 §8.2.3), at
/// the place of the first.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(http::header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(http::header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        // `insert` keeps the first field's place and drops the others.
        headers.insert(http::header::COOKIE, v);
    }
}

/// Appends the downstream address to `x-forwarded-for`. Like Envoy, a loopback peer is
/// recorded as this host's own address (`local_ip`) when one is known.
pub fn append_xff(headers: &mut HeaderMap, remote: IpAddr, local_ip: Option<IpAddr>) {
    let ip = if remote.is_loopback() {
        local_ip.unwrap_or(remote)
    } else {
        remote
    };
    // Written into one buffer that becomes the value without a copy: `format!` and
    // `HeaderValue::from_str` made three allocations and ~2.3k instructions per request
    // (callgrind, S1).
    let mut buf = [0u8; IP_TEXT_MAX];
    let text = ip_text(ip, &mut buf);
    // As Envoy 1.40 (checked with it): every earlier value, joined with `,` (empty ones
    // add nothing), bytes as they came (obs-text included), then this hop's address.
    let prev = || {
        headers
            .get_all(&X_FORWARDED_FOR)
            .into_iter()
            .map(HeaderValue::as_bytes)
            .filter(|p| !p.is_empty())
    };
    // Exactly as long as the value, so the `Bytes` it becomes needs no second allocation.
    let len = prev().map(|p| p.len() + 1).sum::<usize>() + text.len();
    let mut value = Vec::with_capacity(len);
    for p in prev() {
        value.extend_from_slice(p);
        value.push(b',');
    }
    value.extend_from_slice(text);
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// A fresh UUID v4 in `x-request-id`, whatever the client sent, and the peer's address in
/// `x-envoy-external-address`. Envoy 1.40 does this for every request at an Istio gateway
/// (checked with it, loopback and private peers included): Istio sets no
/// `internal_address_config` unless meshNetworks lists `fromCidr` ranges, and since Envoy
/// 1.33 no address is internal without one, so every request is an edge request.
pub fn set_edge_request_headers(headers: &mut HeaderMap, remote: IpAddr) {
    let mut buf = [0u8; IP_TEXT_MAX];
    let text = ip_text(remote, &mut buf);
    if let Ok(v) = HeaderValue::from_bytes(text) {
        headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
    }
    headers.insert(X_REQUEST_ID.clone(), new_request_id());
}

pub fn new_request_id() -> HeaderValue {
    let s = egret_core::uuid_v4_text(fastrand::u128(..));
    HeaderValue::from_bytes(&s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The current time as an HTTP `date` value, formatted once a second per thread (the
/// value's bytes are shared, so a copy is a reference count).
pub fn date_now() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((at, v)) = c.as_ref() {
            if *at == secs {
                return v.clone();
            }
        }
        let v = HeaderValue::from_maybe_shared(bytes::Bytes::from(httpdate::fmt_http_date(now)))
            .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
        *c = Some((secs, v.clone()));
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_keep_the_order_of_the_others() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("host", "a"),
            ("connection", "x"),
            ("accept", "b"),
            ("via", "c"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        remove_in_order(&mut h, |n| n == "connection");
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host", "accept", "via"]);
        h.append(
            HeaderName::from_static("keep-alive"),
            HeaderValue::from_static("1"),
        );
        h.append(
            HeaderName::from_static("connection"),
            HeaderValue::from_static("x"),
        );
        remove_in_order(&mut h, |n| n == "connection" || n == "keep-alive");
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host", "accept", "via"]);
    }

    #[test]
    fn request_id_is_uuid_v4() {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn xff_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        append_xff(&mut h, "10.0.0.1".parse().unwrap(), None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        append_xff(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            Some("192.0.2.2".parse().unwrap()),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1,192.0.2.2");
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        strip_request(&mut h);
        assert!(
            h.get("connection").is_none()
                && h.get("x-secret").is_none()
                && h.get("keep-alive").is_none()
        );
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn hop_by_hop_names_listed_in_any_connection_value_in_any_case_go() {
        let mut h = HeaderMap::new();
        h.append("connection", "keep-alive".parse().unwrap());
        h.append("connection", "X-Secret, x-request-id, ,".parse().unwrap());
        // Hop-by-hop names listed, in any case: they go with the fixed list.
        h.append(
            "connection",
            "Upgrade, KEEP-ALIVE, x-absent".parse().unwrap(),
        );
        // A token that is not text does not hide the names beside it (Envoy 1.40).
        h.append(
            "connection",
            HeaderValue::from_bytes(b"caf\xc3\xa9, x-other").unwrap(),
        );
        h.insert("x-other", "1".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-request-id", "abc".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("te", "gzip".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        strip_request(&mut h);
        // `x-request-id` too, as Envoy 1.40 strips it (the handler then sets a new one).
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept"]);
    }

    /// The request path's two steps, in the handler's order.
    fn strip_request(h: &mut HeaderMap) {
        strip_connection_nominated(h);
        strip_request_hop_by_hop(h);
    }

    /// Envoy 1.40 answers `400` to these (checked with it), and forwards the others.
    #[test]
    fn connection_may_not_name_what_the_proxy_sets() {
        let with = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert("connection", HeaderValue::from_bytes(v).unwrap());
            connection_names_protected(&h)
        };
        for refused in [
            &b"x-forwarded-for"[..],
            b"X-Forwarded-Proto",
            b"x-forwarded-host",
            b":path",
            b":authority",
            b"keep-alive, x-forwarded-for",
            b"caf\xc3\xa9, x-forwarded-proto",
        ] {
            assert!(with(refused), "{}", String::from_utf8_lossy(refused));
        }
        for passed in [
            &b"x-request-id"[..],
            b"x-forwarded-port",
            b"forwarded",
            b"te",
            b"keep-alive, upgrade",
            b"x-envoy-original-path",
            b"hostname",
            b"host",
        ] {
            assert!(!with(passed), "{}", String::from_utf8_lossy(passed));
        }
        assert!(!connection_names_protected(&HeaderMap::new()));
    }

    fn request_after(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        strip_request(&mut h);
        let mut left: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        left.sort();
        left
    }

    fn te(v: &str) -> Vec<(String, String)> {
        vec![("te".to_owned(), v.to_owned())]
    }

    /// What Envoy 1.40 forwarded for each request (checked on loopback with an echo upstream).
    #[test]
    fn request_te_is_sanitized_like_envoy() {
        assert_eq!(request_after(&[("te", "trailers")]), te("trailers"));
        assert_eq!(request_after(&[("te", "trailers, gzip")]), te("trailers"));
        assert_eq!(request_after(&[("te", "gzip, trailers")]), te("trailers"));
        assert_eq!(request_after(&[("te", "deflate,trailers")]), te("trailers"));
        assert_eq!(
            request_after(&[("te", "gzip"), ("te", "trailers")]),
            te("trailers")
        );
        assert_eq!(
            request_after(&[("te", "trailers"), ("te", "gzip")]),
            te("trailers")
        );
        assert_eq!(
            request_after(&[("te", "trailers"), ("te", "trailers")]),
            te("trailers")
        );
        // `Connection: te` does not take `te: trailers` away.
        assert_eq!(
            request_after(&[("connection", "te"), ("te", "trailers")]),
            te("trailers")
        );
        // The token must be exactly `trailers`.
        assert_eq!(request_after(&[("te", "gzip")]), vec![]);
        assert_eq!(request_after(&[("te", "Trailers")]), vec![]);
        assert_eq!(request_after(&[("te", "trailers;q=0.5")]), vec![]);
    }

    /// Envoy 1.40 forwards `trailer`, `proxy-authenticate` and `proxy-authorization` on
    /// requests, and on responses also `te` and the headers the upstream's `Connection` names.
    #[test]
    fn what_passes_like_envoy() {
        let kept = [
            ("trailer", "x-t"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic abc"),
        ];
        let mut expected: Vec<(String, String)> = kept
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        expected.sort();
        assert_eq!(request_after(&kept), expected);

        let mut h = HeaderMap::new();
        for (k, v) in [
            ("te", "gzip"),
            ("trailer", "x-t"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("upgrade", "h2c"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("connection", "x-foo"),
            ("transfer-encoding", "chunked"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        strip_response_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["proxy-authenticate", "te", "trailer", "x-bar", "x-foo"]
        );
    }

    #[test]
    fn the_hop_by_hop_index_names_each_entry_of_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&http::header::TE), None);
        assert_eq!(hop_by_hop_index(&http::header::HOST), None);
    }

    #[test]
    fn xff_appends_the_address_as_display_prints_it() {
        // The text itself is egret_core::ip's (tested there); here, how it is appended.
        for ip in ["192.168.1.10", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut h = HeaderMap::new();
            append_xff(&mut h, ip, None);
            assert_eq!(h["x-forwarded-for"], ip.to_string().as_str());
            h.insert("x-forwarded-for", "".parse().unwrap());
            append_xff(&mut h, ip, None);
            assert_eq!(h["x-forwarded-for"], ip.to_string().as_str());
            // Bytes as they came, as Envoy 1.40 extends them.
            h.insert(
                "x-forwarded-for",
                HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
            );
            append_xff(&mut h, ip, None);
            assert_eq!(
                h["x-forwarded-for"].as_bytes(),
                format!("café,{ip}").as_bytes()
            );
            h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
            append_xff(&mut h, ip, None);
            assert_eq!(h["x-forwarded-for"], format!("203.0.113.9,{ip}").as_str());
            // Every earlier value, joined (Envoy 1.40: `1.1.1.1,2.2.2.2,<ip>`), empty ones
            // adding nothing.
            h.insert("x-forwarded-for", "1.1.1.1".parse().unwrap());
            h.append("x-forwarded-for", "".parse().unwrap());
            h.append("x-forwarded-for", "2.2.2.2, 3.3.3.3".parse().unwrap());
            append_xff(&mut h, ip, None);
            assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
            assert_eq!(
                h["x-forwarded-for"],
                format!("1.1.1.1,2.2.2.2, 3.3.3.3,{ip}").as_str()
            );
        }
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut h = HeaderMap::new();
        h.insert("host", "example.com".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        let before = h.clone();
        strip_request(&mut h);
        assert_eq!(h, before);
        strip_response_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn envoy_control_headers_go_and_other_x_envoy_names_stay() {
        let mut h = HeaderMap::new();
        h.insert("host", "example.com".parse().unwrap());
        let before = h.clone();
        strip_envoy_control(&mut h);
        assert_eq!(h, before);
        h.insert("x-envoy-retry-on", "5xx".parse().unwrap());
        strip_envoy_control(&mut h);
        assert_eq!(h, before);
        for name in ENVOY_CONTROL_HEADERS {
            h.insert(*name, "1".parse().unwrap());
        }
        h.insert("x-envoy-custom", "kept".parse().unwrap());
        strip_envoy_control(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-envoy-custom"]);
    }
}
