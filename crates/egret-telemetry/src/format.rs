//! Envoy command operators: parsed once into segments, evaluated per record.
//!
//! Parsing follows Envoy's `SubstitutionFormatParser`: an operator is
//! `%NAME%`, `%NAME(ARG)%` or `%NAME(ARG):N%` with NAME in `[A-Z0-9_]`, ARG without `)`;
//! `%%` is a literal `%`; any other `%` is an error, as is an unknown NAME, an argument or
//! length given to an operator that takes none, or a missing argument.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::SystemTime;

use egret_core::{CapturedHeaders, HeaderSelection, LogHeaders, LogRecord, ResponseFlags};
use http::header::{HeaderName, HOST};

use crate::num::{write_ip, write_socket_addr, write_u64};
use crate::time::TimeFormat;
use crate::FormatError;

/// Istio's default TEXT access-log format (`meshConfig.accessLogEncoding: TEXT`).
pub const ISTIO_DEFAULT_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// The operators this crate understands, for error messages and documentation.
pub const OPERATORS: &[&str] = &[
    "START_TIME",
    "REQ",
    "REQ_WITHOUT_QUERY",
    "RESP",
    "TRAILER",
    "PROTOCOL",
    "RESPONSE_CODE",
    "RESPONSE_FLAGS",
    "RESPONSE_CODE_DETAILS",
    "CONNECTION_TERMINATION_DETAILS",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "DURATION",
    "UPSTREAM_HOST",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_CLUSTER_RAW",
    "UPSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "REQUESTED_SERVER_NAME",
    "ROUTE_NAME",
    "DOWNSTREAM_PEER_URI_SAN",
    "HOSTNAME",
    "CONFIG_VERSION",
    "RESPONSE_FLAGS_LONG",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
    "REQUEST_DURATION",
    "RESPONSE_DURATION",
    "RESPONSE_TX_DURATION",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_PEER_URI_SAN",
    "UNIQUE_ID",
    "ENVIRONMENT",
    "QUERY_PARAM",
    "EMIT_TIME",
    "ACCESS_LOG_TYPE",
    "TRACE_ID",
    "VIRTUAL_CLUSTER_NAME",
    "DYNAMIC_METADATA",
    "FILTER_STATE",
];

/// Envoy operators Egret refuses, with why: a format using one fails at start with the
/// reason, not with "unknown operator".
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "REQUEST_TX_DURATION",
        "Egret does not time the upstream request's last byte",
    ),
    ("COMMON_DURATION", "Egret keeps no per-phase timestamps"),
    (
        "DOWNSTREAM_HANDSHAKE_DURATION",
        "Egret does not time the TLS handshake",
    ),
    ("UPSTREAM_CONNECTION_ID", "Egret numbers no connections"),
    ("CONNECTION_ID", "Egret numbers no connections"),
    ("STREAM_ID", "Egret keeps no stream ids"),
    ("UPSTREAM_HOST_NAME", "not recorded"),
    ("UPSTREAM_HOST_NAME_WITHOUT_PORT", "not recorded"),
    (
        "DOWNSTREAM_PEER_SERIAL",
        "only the client certificate's URI SAN is recorded",
    ),
    (
        "DOWNSTREAM_LOCAL_SUBJECT",
        "the gateway's own certificate is not recorded",
    ),
    ("GRPC_STATUS", "response trailers are not kept"),
    ("GRPC_STATUS_NUMBER", "response trailers are not kept"),
    ("RESP_TRAILER", "response trailers are not kept"),
    ("UPSTREAM_WIRE_BYTES_SENT", "wire bytes are not counted"),
    ("UPSTREAM_WIRE_BYTES_RECEIVED", "wire bytes are not counted"),
    ("DOWNSTREAM_WIRE_BYTES_SENT", "wire bytes are not counted"),
    (
        "DOWNSTREAM_WIRE_BYTES_RECEIVED",
        "wire bytes are not counted",
    ),
    ("CEL", "CEL formatters are an Envoy extension"),
];

/// A compiled TEXT access-log format. Build once (config load), then [`write`] per record.
///
/// [`write`]: AccessLogFormat::write
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogFormat {
    segments: Box<[Segment]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(Box<[u8]>),
    Op(Operator),
}

/// One command operator with its arguments resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Operator {
    StartTime(TimeFormat),
    Request(HeaderOp),
    Response(HeaderOp),
    /// Egret keeps no trailers: always `-`, but the header argument is still checked.
    Trailer,
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    RequestedServerName,
    RouteName,
    DownstreamPeerUriSan,
    Hostname,
    ConfigVersion,
    ResponseFlagsLong,
    UpstreamHostWithoutPort,
    UpstreamLocalAddressWithoutPort,
    /// Last byte of the request, from the start.
    RequestDuration,
    /// First byte of the upstream response, from the start.
    ResponseDuration,
    /// From the first byte of the upstream response to the end.
    ResponseTxDuration,
    UpstreamRequestAttemptCount,
    DownstreamTlsVersion,
    DownstreamTlsCipher,
    DownstreamPeerSubject,
    DownstreamPeerIssuer,
    DownstreamPeerFingerprint256,
    DownstreamLocalUriSan,
    UpstreamTlsVersion,
    UpstreamTlsCipher,
    UpstreamPeerSubject,
    UpstreamPeerIssuer,
    UpstreamPeerUriSan,
    UniqueId,
    /// Fixed when the format is compiled (`ENVIRONMENT(VAR)`), or always `-`
    /// (`TRACE_ID`, `VIRTUAL_CLUSTER_NAME`, `DYNAMIC_METADATA`, `FILTER_STATE`: Egret has
    /// no tracing, virtual clusters, dynamic metadata or filter state).
    Constant(Option<Box<[u8]>>),
    QueryParam {
        name: Box<str>,
        max_len: Option<usize>,
    },
    EmitTime(TimeFormat),
    AccessLogType,
}

/// `REQ(MAIN?ALT):N` / `RESP(...)`: the alternative is read only when the main header is
/// absent (a present but empty main header prints empty, as in Envoy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeaderOp {
    main: Option<HeaderKey>,
    alt: Option<HeaderKey>,
    /// Truncate to this many bytes (Envoy's `substr`, bytes not characters).
    max_len: Option<usize>,
    /// `REQ_WITHOUT_QUERY`: drop everything from the first `?`.
    strip_query: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HeaderKey {
    Method,
    Path,
    /// `:authority`, and `host` (Envoy stores both as `:authority`).
    Authority,
    Scheme,
    Status,
    /// Another pseudo header (`:protocol`, ...): never present in Egret's records.
    OtherPseudo,
    Name(HeaderName),
}

/// What one operator produced for one record.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value<'a> {
    /// Printed `-` in TEXT, `null` in JSON.
    Missing,
    Bytes(&'a [u8]),
    /// A JSON number (Envoy's typed numeric operators).
    Number(u64),
    /// Digits printed as a string in JSON (`RESP(:STATUS)` is a header value).
    NumericString(u64),
    Addr(SocketAddr),
    Ip(IpAddr),
    Flags(ResponseFlags),
    LongFlags(ResponseFlags),
    Time(&'a TimeFormat, SystemTime),
    Uuid([u8; 36]),
}

impl Value<'_> {
    /// TEXT rendering; `Missing` prints `-`.
    pub(crate) fn write_text(&self, out: &mut Vec<u8>) {
        match *self {
            Value::Missing => out.push(b'-'),
            Value::Bytes(b) => out.extend_from_slice(b),
            Value::Number(n) | Value::NumericString(n) => write_u64(out, n),
            Value::Addr(a) => write_socket_addr(out, a),
            Value::Ip(ip) => write_ip(out, ip),
            Value::Flags(f) => write_flags(out, f),
            Value::LongFlags(f) => {
                use std::io::Write as _;
                // A Vec never fails.
                let _ = write!(out, "{}", f.long_names());
            }
            Value::Time(fmt, t) => fmt.write(t, out),
            Value::Uuid(id) => out.extend_from_slice(&id),
        }
    }
}

fn write_flags(out: &mut Vec<u8>, f: ResponseFlags) {
    use std::io::Write as _;
    // Most records have none: skip the formatting machinery (~250 instructions).
    if f.is_empty() {
        out.push(b'-');
        return;
    }
    // ResponseFlags' Display is the Envoy short form (`-` when empty); a Vec never fails.
    let _ = write!(out, "{f}");
}

fn opt_str(s: Option<&str>) -> Value<'_> {
    match s {
        Some(s) if !s.is_empty() => Value::Bytes(s.as_bytes()),
        _ => Value::Missing,
    }
}

impl Operator {
    pub(crate) fn value<'a>(&'a self, rec: &'a LogRecord) -> Value<'a> {
        match self {
            Operator::StartTime(fmt) => Value::Time(fmt, rec.start_time),
            Operator::Request(h) => h.request_value(rec),
            Operator::Response(h) => h.response_value(rec),
            Operator::Trailer => Value::Missing,
            Operator::Protocol => opt_str(rec.protocol),
            // Envoy prints 0 when no response was sent, not `-`.
            Operator::ResponseCode => Value::Number(rec.response_code.into()),
            Operator::ResponseFlags => Value::Flags(rec.response_flags),
            Operator::ResponseCodeDetails => opt_str(rec.response_code_details.as_deref()),
            Operator::ConnectionTerminationDetails => {
                opt_str(rec.connection_termination_details.as_deref())
            }
            Operator::UpstreamTransportFailureReason => {
                opt_str(rec.upstream_transport_failure_reason.as_deref())
            }
            Operator::BytesReceived => Value::Number(rec.bytes_received),
            Operator::BytesSent => Value::Number(rec.bytes_sent),
            Operator::Duration => match rec.duration {
                Some(d) => Value::Number(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                None => Value::Missing,
            },
            Operator::UpstreamHost => rec.upstream_host.map_or(Value::Missing, Value::Addr),
            Operator::UpstreamCluster => opt_str(rec.upstream_cluster.as_deref()),
            Operator::UpstreamLocalAddress => rec
                .upstream_local_address
                .map_or(Value::Missing, Value::Addr),
            Operator::DownstreamLocalAddress => Value::Addr(rec.downstream_local_address),
            Operator::DownstreamLocalAddressWithoutPort => {
                Value::Ip(rec.downstream_local_address.ip())
            }
            Operator::DownstreamRemoteAddress => Value::Addr(rec.downstream_remote_address),
            Operator::DownstreamRemoteAddressWithoutPort => {
                Value::Ip(rec.downstream_remote_address.ip())
            }
            Operator::RequestedServerName => opt_str(rec.requested_server_name.as_deref()),
            Operator::RouteName => opt_str(rec.route_name.as_deref()),
            Operator::DownstreamPeerUriSan => opt_str(rec.downstream_peer_uri_san.as_deref()),
            Operator::Hostname => opt_str(hostname()),
            Operator::ConfigVersion => opt_str(Some(&rec.config_version)),
            Operator::ResponseFlagsLong => Value::LongFlags(rec.response_flags),
            Operator::UpstreamHostWithoutPort => rec
                .upstream_host
                .map_or(Value::Missing, |a| Value::Ip(a.ip())),
            Operator::UpstreamLocalAddressWithoutPort => rec
                .upstream_local_address
                .map_or(Value::Missing, |a| Value::Ip(a.ip())),
            Operator::RequestDuration => match rec.request_complete {
                Some(at) => millis(at.saturating_duration_since(rec.start)),
                None => Value::Missing,
            },
            Operator::ResponseDuration => match rec.response_start {
                Some(at) => millis(at.saturating_duration_since(rec.start)),
                None => Value::Missing,
            },
            Operator::ResponseTxDuration => match (rec.response_start, rec.duration) {
                (Some(at), Some(d)) => millis((rec.start + d).saturating_duration_since(at)),
                _ => Value::Missing,
            },
            Operator::UpstreamRequestAttemptCount => Value::Number(rec.upstream_attempts.into()),
            Operator::DownstreamTlsVersion => opt_str(rec.downstream_tls.map(|t| t.version)),
            Operator::DownstreamTlsCipher => opt_str(rec.downstream_tls.map(|t| t.cipher)),
            Operator::DownstreamPeerSubject => opt_str(
                rec.downstream_peer_cert
                    .as_ref()
                    .map(|c| c.subject.as_str()),
            ),
            Operator::DownstreamPeerIssuer => {
                opt_str(rec.downstream_peer_cert.as_ref().map(|c| c.issuer.as_str()))
            }
            Operator::DownstreamPeerFingerprint256 => opt_str(
                rec.downstream_peer_cert
                    .as_ref()
                    .map(|c| c.fingerprint_256.as_str()),
            ),
            Operator::DownstreamLocalUriSan => opt_str(rec.downstream_local_uri_san.as_deref()),
            Operator::UpstreamTlsVersion => {
                opt_str(upstream_tls(rec).and_then(|t| t.session).map(|s| s.version))
            }
            Operator::UpstreamTlsCipher => {
                opt_str(upstream_tls(rec).and_then(|t| t.session).map(|s| s.cipher))
            }
            Operator::UpstreamPeerSubject => opt_str(
                upstream_tls(rec)
                    .and_then(|t| t.peer.as_ref())
                    .map(|p| p.subject.as_str()),
            ),
            Operator::UpstreamPeerIssuer => opt_str(
                upstream_tls(rec)
                    .and_then(|t| t.peer.as_ref())
                    .map(|p| p.issuer.as_str()),
            ),
            Operator::UpstreamPeerUriSan => {
                opt_str(upstream_tls(rec).and_then(|t| t.peer_uri_san.as_deref()))
            }
            Operator::UniqueId => Value::Uuid(egret_core::uuid_v4_text(fastrand::u128(..))),
            Operator::Constant(v) => v.as_deref().map_or(Value::Missing, Value::Bytes),
            Operator::QueryParam { name, max_len } => {
                let Some(req) = rec.request.as_ref() else {
                    return Value::Missing;
                };
                match egret_core::query::query_param(&req.path, name) {
                    Some(v) if !v.is_empty() => {
                        let n = max_len.map_or(v.len(), |n| n.min(v.len()));
                        Value::Bytes(&v.as_bytes()[..n])
                    }
                    _ => Value::Missing,
                }
            }
            Operator::EmitTime(fmt) => Value::Time(fmt, SystemTime::now()),
            // Envoy's type for the record: an HTTP stream's end, a TCP proxy connection's
            // end, or a listener's record of a connection no filter chain took.
            Operator::AccessLogType => Value::Bytes(if rec.protocol.is_some() {
                b"DownstreamEnd"
            } else if rec.response_code_details.as_deref() == Some("filter_chain_not_found") {
                b"NotSet"
            } else {
                b"TcpConnectionEnd"
            }),
        }
    }
}

fn upstream_tls(rec: &LogRecord) -> Option<&egret_core::UpstreamTlsInfo> {
    rec.upstream_tls.as_deref()
}

fn millis(d: std::time::Duration) -> Value<'static> {
    Value::Number(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl HeaderOp {
    fn request_value<'a>(&self, rec: &'a LogRecord) -> Value<'a> {
        let Some(req) = rec.request.as_ref() else {
            return Value::Missing;
        };
        self.pick(|key| {
            let b = match key {
                HeaderKey::Method => Some(req.method.as_str().as_bytes()),
                // A `CONNECT` has no `:path`: Envoy prints `-`.
                HeaderKey::Path => (!req.path.is_empty()).then_some(req.path.as_bytes()),
                HeaderKey::Authority => authority(req.authority.as_deref(), &req.headers),
                HeaderKey::Scheme => req.scheme.map(str::as_bytes),
                HeaderKey::Status | HeaderKey::OtherPseudo => None,
                HeaderKey::Name(n) => req.headers.get(n),
            };
            b.map(Value::Bytes)
        })
    }

    fn response_value<'a>(&self, rec: &'a LogRecord) -> Value<'a> {
        self.pick(|key| match key {
            // `:status` is the one response pseudo header Envoy can print.
            HeaderKey::Status => {
                (rec.response_code != 0).then_some(Value::NumericString(rec.response_code.into()))
            }
            HeaderKey::Name(n) => rec.response_headers.as_ref()?.get(n).map(Value::Bytes),
            _ => None,
        })
    }

    /// The header names this operator may read from a record's headers (`host` for the
    /// authority; a response operator never reads it, a harmless extra name there).
    fn names(&self) -> impl Iterator<Item = HeaderName> + '_ {
        [&self.main, &self.alt]
            .into_iter()
            .flatten()
            .filter_map(|key| match key {
                HeaderKey::Name(n) => Some(n.clone()),
                // The record's authority comes from `Host` already; the header is the
                // fallback `authority()` reads.
                HeaderKey::Authority => Some(HOST),
                _ => None,
            })
    }

    /// Envoy: the main header if present (even when empty), else the alternative; then the
    /// `:N` byte limit.
    fn pick<'a>(&self, lookup: impl Fn(&HeaderKey) -> Option<Value<'a>>) -> Value<'a> {
        let found = self
            .main
            .as_ref()
            .and_then(&lookup)
            .or_else(|| self.alt.as_ref().and_then(&lookup));
        match found {
            Some(Value::Bytes(b)) => Value::Bytes(self.cut(b)),
            Some(v) => v,
            None => Value::Missing,
        }
    }

    fn cut<'a>(&self, mut b: &'a [u8]) -> &'a [u8] {
        if self.strip_query {
            if let Some(q) = b.iter().position(|&c| c == b'?') {
                b = &b[..q];
            }
        }
        match self.max_len {
            Some(n) if n < b.len() => &b[..n],
            _ => b,
        }
    }
}

fn authority<'a>(authority: Option<&'a str>, headers: &'a CapturedHeaders) -> Option<&'a [u8]> {
    authority.map(str::as_bytes).or_else(|| headers.get(&HOST))
}

/// The machine's host name for `%HOSTNAME%`, read once.
fn hostname() -> Option<&'static str> {
    static HOSTNAME: OnceLock<Option<String>> = OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        })
        .as_deref()
}

/// The request and response headers `segments` read: what a record must keep for them.
pub(crate) fn segment_headers<'a>(segments: impl IntoIterator<Item = &'a Segment>) -> LogHeaders {
    let (mut request, mut response) = (Vec::new(), Vec::new());
    for seg in segments {
        match seg {
            Segment::Op(Operator::Request(h)) => request.extend(h.names()),
            Segment::Op(Operator::Response(h)) => response.extend(h.names()),
            _ => {}
        }
    }
    LogHeaders {
        request: HeaderSelection::names(request),
        response: HeaderSelection::names(response),
    }
}

impl AccessLogFormat {
    /// The headers this format prints.
    pub fn headers(&self) -> LogHeaders {
        segment_headers(self.segments.iter())
    }

    /// Istio's default TEXT format ([`ISTIO_DEFAULT_TEXT`]).
    pub fn istio_default() -> AccessLogFormat {
        static DEFAULT: OnceLock<AccessLogFormat> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                // A constant known to parse (tested); the fallback keeps this panic-free.
                AccessLogFormat::parse(ISTIO_DEFAULT_TEXT).unwrap_or(AccessLogFormat {
                    segments: Box::new([]),
                })
            })
            .clone()
    }

    /// Compiles an Envoy format string. Errors name the operator and its byte offset.
    pub fn parse(format: &str) -> Result<AccessLogFormat, FormatError> {
        Ok(AccessLogFormat {
            segments: parse_segments(format)?.into_boxed_slice(),
        })
    }

    /// Appends one formatted record to `out` (the format carries its own trailing `\n`, if any).
    pub fn write(&self, rec: &LogRecord, out: &mut Vec<u8>) {
        for seg in self.segments.iter() {
            match seg {
                Segment::Literal(b) => out.extend_from_slice(b),
                Segment::Op(op) => op.value(rec).write_text(out),
            }
        }
    }

    /// Convenience for tests and diagnostics (allocates).
    pub fn format_to_string(&self, rec: &LogRecord) -> String {
        let mut out = Vec::with_capacity(256);
        self.write(rec, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

pub(crate) fn parse_segments(format: &str) -> Result<Vec<Segment>, FormatError> {
    let b = format.as_bytes();
    let mut segs = Vec::new();
    let mut lit: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some(rel) = b[i..].iter().position(|&c| c == b'%') else {
            lit.extend_from_slice(&b[i..]);
            break;
        };
        lit.extend_from_slice(&b[i..i + rel]);
        i += rel;
        if b.get(i + 1) == Some(&b'%') {
            lit.push(b'%');
            i += 2;
            continue;
        }
        let cmd = match_command(format, i)
            .ok_or_else(|| err(format, i, None, "no valid command operator here"))?;
        if !lit.is_empty() {
            segs.push(Segment::Literal(
                std::mem::take(&mut lit).into_boxed_slice(),
            ));
        }
        segs.push(Segment::Op(compile(format, i, &cmd)?));
        i = cmd.end;
    }
    if !lit.is_empty() {
        segs.push(Segment::Literal(lit.into_boxed_slice()));
    }
    Ok(segs)
}

struct Command<'a> {
    name: &'a str,
    arg: Option<&'a str>,
    max_len: Option<&'a str>,
    /// One past the closing `%`.
    end: usize,
}

/// Envoy's `%([A-Z]|[0-9]|_)+(\([^\)]*\))?(:[0-9]+)?%` at `start` (which holds `%`).
fn match_command(s: &str, start: usize) -> Option<Command<'_>> {
    let b = s.as_bytes();
    let mut i = start + 1;
    while i < b.len() && (b[i].is_ascii_uppercase() || b[i].is_ascii_digit() || b[i] == b'_') {
        i += 1;
    }
    if i == start + 1 {
        return None;
    }
    let name = &s[start + 1..i];
    let mut arg = None;
    if b.get(i) == Some(&b'(') {
        let close = i + 1 + b[i + 1..].iter().position(|&c| c == b')')?;
        arg = Some(&s[i + 1..close]);
        i = close + 1;
    }
    let mut max_len = None;
    if b.get(i) == Some(&b':') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        max_len = Some(&s[i + 1..i + 1 + digits]);
        i += 1 + digits;
    }
    if b.get(i) != Some(&b'%') {
        return None;
    }
    Some(Command {
        name,
        arg,
        max_len,
        end: i + 1,
    })
}

fn err(format: &str, offset: usize, end: Option<usize>, reason: impl Into<String>) -> FormatError {
    // Show the operator: up to its closing `%`, or the next `%`, or 40 bytes.
    let rest = &format[offset..];
    let shown = match end {
        Some(e) => &format[offset..e],
        None => {
            let stop = rest[1..].find('%').map_or(rest.len(), |p| p + 2);
            let mut cut = stop.min(40);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            &rest[..cut]
        }
    };
    FormatError::Operator {
        offset,
        operator: shown.to_owned(),
        reason: reason.into(),
    }
}

fn compile(format: &str, at: usize, cmd: &Command<'_>) -> Result<Operator, FormatError> {
    let fail = |reason: String| err(format, at, Some(cmd.end), reason);
    let no_args = |op: Operator| -> Result<Operator, FormatError> {
        if cmd.arg.is_some() || cmd.max_len.is_some() {
            return Err(fail(format!("{} takes no argument or length", cmd.name)));
        }
        Ok(op)
    };
    let header = |strip_query: bool| -> Result<HeaderOp, FormatError> {
        let arg = cmd
            .arg
            .filter(|a| !a.is_empty())
            .ok_or_else(|| fail(format!("{} needs a header name", cmd.name)))?;
        let mut parts = arg.split('?');
        let main = parts.next().unwrap_or_default();
        let alt = parts.next().unwrap_or_default();
        if parts.next().is_some() {
            return Err(fail("more than one alternative header".to_owned()));
        }
        let key = |name: &str| -> Result<Option<HeaderKey>, FormatError> {
            if name.is_empty() {
                return Ok(None);
            }
            header_key(name)
                .map(Some)
                .ok_or_else(|| fail(format!("invalid header name `{name}`")))
        };
        Ok(HeaderOp {
            main: key(main)?,
            alt: key(alt)?,
            max_len: max_len(cmd, &fail)?,
            strip_query,
        })
    };
    Ok(match cmd.name {
        "START_TIME" => {
            if cmd.max_len.is_some() {
                return Err(fail("START_TIME takes no length".to_owned()));
            }
            Operator::StartTime(time_format(format, at, cmd)?)
        }
        "REQ" => Operator::Request(header(false)?),
        "REQ_WITHOUT_QUERY" => Operator::Request(header(true)?),
        "RESP" => Operator::Response(header(false)?),
        "TRAILER" => {
            header(false)?;
            Operator::Trailer
        }
        "PROTOCOL" => no_args(Operator::Protocol)?,
        "RESPONSE_CODE" => no_args(Operator::ResponseCode)?,
        "RESPONSE_FLAGS" => no_args(Operator::ResponseFlags)?,
        "RESPONSE_CODE_DETAILS" => no_args(Operator::ResponseCodeDetails)?,
        "CONNECTION_TERMINATION_DETAILS" => no_args(Operator::ConnectionTerminationDetails)?,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_args(Operator::UpstreamTransportFailureReason)?,
        "BYTES_RECEIVED" => no_args(Operator::BytesReceived)?,
        "BYTES_SENT" => no_args(Operator::BytesSent)?,
        "DURATION" => no_args(Operator::Duration)?,
        "UPSTREAM_HOST" => no_args(Operator::UpstreamHost)?,
        // Envoy prints the alt_stat_name for UPSTREAM_CLUSTER when set; Egret sets none.
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => no_args(Operator::UpstreamCluster)?,
        "UPSTREAM_LOCAL_ADDRESS" => no_args(Operator::UpstreamLocalAddress)?,
        "DOWNSTREAM_LOCAL_ADDRESS" => no_args(Operator::DownstreamLocalAddress)?,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
            no_args(Operator::DownstreamLocalAddressWithoutPort)?
        }
        "DOWNSTREAM_REMOTE_ADDRESS" => no_args(Operator::DownstreamRemoteAddress)?,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_args(Operator::DownstreamRemoteAddressWithoutPort)?
        }
        "REQUESTED_SERVER_NAME" => no_args(Operator::RequestedServerName)?,
        "ROUTE_NAME" => no_args(Operator::RouteName)?,
        "DOWNSTREAM_PEER_URI_SAN" => no_args(Operator::DownstreamPeerUriSan)?,
        "HOSTNAME" => no_args(Operator::Hostname)?,
        "CONFIG_VERSION" => no_args(Operator::ConfigVersion)?,
        "RESPONSE_FLAGS_LONG" => no_args(Operator::ResponseFlagsLong)?,
        // The address of the upstream connection's peer: the host Egret connected to.
        "UPSTREAM_REMOTE_ADDRESS" => no_args(Operator::UpstreamHost)?,
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => no_args(Operator::UpstreamHostWithoutPort)?,
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
            no_args(Operator::UpstreamLocalAddressWithoutPort)?
        }
        // No PROXY protocol and no trusted `x-forwarded-for` hops: the peer is the direct
        // peer (Istio's gateways set `use_remote_address`).
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => no_args(Operator::DownstreamRemoteAddress)?,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_args(Operator::DownstreamRemoteAddressWithoutPort)?
        }
        "REQUEST_DURATION" => no_args(Operator::RequestDuration)?,
        "RESPONSE_DURATION" => no_args(Operator::ResponseDuration)?,
        "RESPONSE_TX_DURATION" => no_args(Operator::ResponseTxDuration)?,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => no_args(Operator::UpstreamRequestAttemptCount)?,
        "DOWNSTREAM_TLS_VERSION" => no_args(Operator::DownstreamTlsVersion)?,
        "DOWNSTREAM_TLS_CIPHER" => no_args(Operator::DownstreamTlsCipher)?,
        "DOWNSTREAM_PEER_SUBJECT" => no_args(Operator::DownstreamPeerSubject)?,
        "DOWNSTREAM_PEER_ISSUER" => no_args(Operator::DownstreamPeerIssuer)?,
        "DOWNSTREAM_PEER_FINGERPRINT_256" => no_args(Operator::DownstreamPeerFingerprint256)?,
        "DOWNSTREAM_LOCAL_URI_SAN" => no_args(Operator::DownstreamLocalUriSan)?,
        "UPSTREAM_TLS_VERSION" => no_args(Operator::UpstreamTlsVersion)?,
        "UPSTREAM_TLS_CIPHER" => no_args(Operator::UpstreamTlsCipher)?,
        "UPSTREAM_PEER_SUBJECT" => no_args(Operator::UpstreamPeerSubject)?,
        "UPSTREAM_PEER_ISSUER" => no_args(Operator::UpstreamPeerIssuer)?,
        "UPSTREAM_PEER_URI_SAN" => no_args(Operator::UpstreamPeerUriSan)?,
        "UNIQUE_ID" => no_args(Operator::UniqueId)?,
        "TRACE_ID" | "VIRTUAL_CLUSTER_NAME" => no_args(Operator::Constant(None))?,
        "DYNAMIC_METADATA" | "FILTER_STATE" => {
            if cmd.arg.is_none_or(str::is_empty) {
                return Err(fail(format!("{} needs an argument", cmd.name)));
            }
            Operator::Constant(None)
        }
        "ENVIRONMENT" => {
            let var = cmd
                .arg
                .filter(|a| !a.is_empty())
                .ok_or_else(|| fail("ENVIRONMENT needs a variable name".to_owned()))?;
            let mut value = std::env::var(var).ok().map(String::into_bytes);
            if let (Some(v), Some(n)) = (&mut value, max_len(cmd, &fail)?) {
                v.truncate(n);
            }
            Operator::Constant(value.filter(|v| !v.is_empty()).map(Vec::into_boxed_slice))
        }
        "QUERY_PARAM" => {
            let name = cmd
                .arg
                .filter(|a| !a.is_empty())
                .ok_or_else(|| fail("QUERY_PARAM needs a parameter name".to_owned()))?;
            Operator::QueryParam {
                name: name.into(),
                max_len: max_len(cmd, &fail)?,
            }
        }
        "EMIT_TIME" => {
            if cmd.max_len.is_some() {
                return Err(fail("EMIT_TIME takes no length".to_owned()));
            }
            Operator::EmitTime(time_format(format, at, cmd)?)
        }
        "ACCESS_LOG_TYPE" => no_args(Operator::AccessLogType)?,
        other => {
            return Err(fail(match UNSUPPORTED.iter().find(|(n, _)| *n == other) {
                Some((_, why)) => format!("Envoy's {other} is not supported by Egret: {why}"),
                None => format!("unknown command operator {other}"),
            }))
        }
    })
}

/// The `(fmt)` of `START_TIME` / `EMIT_TIME`: Envoy's default when absent.
fn time_format(format: &str, at: usize, cmd: &Command<'_>) -> Result<TimeFormat, FormatError> {
    match cmd.arg {
        None | Some("") => Ok(TimeFormat::default_format()),
        Some(f) => TimeFormat::parse(f).map_err(|e| {
            // Point at the offending specifier inside the argument.
            let off = at + cmd.name.len() + 2 + e.offset;
            FormatError::Operator {
                offset: off,
                operator: format[at..cmd.end].to_owned(),
                reason: e.reason.to_owned(),
            }
        }),
    }
}

/// The `:N` byte limit of an operator.
fn max_len(
    cmd: &Command<'_>,
    fail: &impl Fn(String) -> FormatError,
) -> Result<Option<usize>, FormatError> {
    cmd.max_len
        .map(|n| {
            n.parse::<usize>()
                .map_err(|_| fail(format!("length `{n}` is too large")))
        })
        .transpose()
}

fn header_key(name: &str) -> Option<HeaderKey> {
    let lower = name.to_ascii_lowercase();
    if let Some(pseudo) = lower.strip_prefix(':') {
        return match pseudo {
            "method" => Some(HeaderKey::Method),
            "path" => Some(HeaderKey::Path),
            "authority" => Some(HeaderKey::Authority),
            "scheme" => Some(HeaderKey::Scheme),
            "status" => Some(HeaderKey::Status),
            p if !p.is_empty() && p.bytes().all(|c| c.is_ascii_lowercase() || c == b'-') => {
                Some(HeaderKey::OtherPseudo)
            }
            _ => None,
        };
    }
    let n = HeaderName::from_bytes(lower.as_bytes()).ok()?;
    Some(if n == HOST {
        HeaderKey::Authority
    } else {
        HeaderKey::Name(n)
    })
}
