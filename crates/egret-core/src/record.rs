//! One access-log record per HTTP request or TCP connection, and the sink that receives it.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::ResponseFlags;

/// Which headers of a request or response a record keeps: the ones its readers (the
/// access-log format, the metrics) look at, or all of them. A copy of the whole map cost one
/// `HeaderMap` clone and drop per request and per response (~5 % of the instructions of a
/// proxied request, benches/RESULTS.md item 13); the Istio format reads four request headers
/// and one response header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HeaderSelection {
    /// Every header (sinks that do not say what they read).
    #[default]
    All,
    /// Only these names, without duplicates.
    Names(Arc<[HeaderName]>),
}

impl HeaderSelection {
    /// No header at all.
    pub fn none() -> HeaderSelection {
        HeaderSelection::Names(Arc::from([]))
    }

    /// These names (duplicates dropped, first occurrence kept).
    pub fn names(names: impl IntoIterator<Item = HeaderName>) -> HeaderSelection {
        let mut list: Vec<HeaderName> = Vec::new();
        for n in names {
            if !list.contains(&n) {
                list.push(n);
            }
        }
        HeaderSelection::Names(list.into())
    }

    /// The headers either selection keeps.
    pub fn union(&self, other: &HeaderSelection) -> HeaderSelection {
        match (self, other) {
            (HeaderSelection::Names(a), HeaderSelection::Names(b)) => {
                HeaderSelection::names(a.iter().chain(b.iter()).cloned())
            }
            _ => HeaderSelection::All,
        }
    }

    /// The selected headers of `headers`, each name's first value; always copies (see
    /// [`FewHeaders`]).
    pub fn capture(&self, headers: &HeaderMap) -> CapturedHeaders {
        match self {
            HeaderSelection::All => CapturedHeaders::All(copied(headers)),
            HeaderSelection::Names(names) => FewHeaders::capture(names, headers).map_or_else(
                || CapturedHeaders::All(copied(headers)),
                CapturedHeaders::Few,
            ),
        }
    }
}

/// `headers` with every value in an allocation of its own, none shared with the buffer the
/// headers were parsed from. For the rare records that keep a whole map.
fn copied(headers: &HeaderMap) -> HeaderMap {
    let mut map = headers.clone();
    for v in map.values_mut() {
        // A value that was valid stays valid; if not, the shared one is kept.
        if let Ok(mut own) = HeaderValue::from_bytes(v.as_bytes()) {
            own.set_sensitive(v.is_sensitive());
            *v = own;
        }
    }
    map
}

/// The request and response headers a sink reads from its records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogHeaders {
    pub request: HeaderSelection,
    pub response: HeaderSelection,
}

impl LogHeaders {
    /// No header, request or response.
    pub fn none() -> LogHeaders {
        LogHeaders {
            request: HeaderSelection::none(),
            response: HeaderSelection::none(),
        }
    }

    /// The headers either reader needs.
    pub fn union(&self, other: &LogHeaders) -> LogHeaders {
        LogHeaders {
            request: self.request.union(&other.request),
            response: self.response.union(&other.response),
        }
    }
}

/// Headers kept in a record, as [`HeaderSelection::capture`] chose them.
#[derive(Clone, Debug)]
pub enum CapturedHeaders {
    All(HeaderMap),
    Few(FewHeaders),
}

impl CapturedHeaders {
    /// The (first) value of `name`, if it was kept and present.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        match self {
            CapturedHeaders::All(map) => map.get(name).map(HeaderValue::as_bytes),
            CapturedHeaders::Few(few) => few.get(name),
        }
    }
}

/// Most selected headers one record keeps in [`FewHeaders`]; a request that carries more
/// of them keeps a copy of its whole map instead.
const FEW_MAX: usize = 8;

/// A few selected header values, copied into one buffer. A copy, not the `Bytes` hyper
/// parsed: those point into the connection's 8 KB read buffer, which the record would then
/// keep alive until the access-log writer is done with it.
#[derive(Clone, Debug)]
pub struct FewHeaders {
    names: Arc<[HeaderName]>,
    /// (index in `names`, end of the value in `bytes`); a value starts where the one before
    /// it ends.
    found: [(u8, u32); FEW_MAX],
    len: u8,
    bytes: Box<[u8]>,
}

impl FewHeaders {
    /// One pass over the headers; None when more than [`FEW_MAX`] selected ones are present.
    fn capture(names: &Arc<[HeaderName]>, headers: &HeaderMap) -> Option<FewHeaders> {
        let mut picked: [(u8, &[u8]); FEW_MAX] = [(0, &[]); FEW_MAX];
        let mut len = 0;
        let mut total = 0;
        if !names.is_empty() {
            for (name, value) in headers {
                let Some(i) = names.iter().position(|n| n == name) else {
                    continue;
                };
                // Only the first value of a name, as `HeaderMap::get`.
                let i = u8::try_from(i).ok()?;
                if picked[..len].iter().any(|(j, _)| *j == i) {
                    continue;
                }
                if len == FEW_MAX {
                    return None;
                }
                picked[len] = (i, value.as_bytes());
                total += value.len();
                len += 1;
            }
        }
        let mut bytes = Vec::with_capacity(total);
        let mut found = [(0, 0); FEW_MAX];
        for (slot, (i, v)) in found.iter_mut().zip(&picked[..len]) {
            bytes.extend_from_slice(v);
            *slot = (*i, u32::try_from(bytes.len()).ok()?);
        }
        Some(FewHeaders {
            names: names.clone(),
            found,
            len: len as u8,
            bytes: bytes.into_boxed_slice(),
        })
    }

    /// How many headers were kept.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        let i = self.names.iter().position(|n| n == name)?;
        let mut start = 0;
        for &(j, end) in &self.found[..usize::from(self.len)] {
            if usize::from(j) == i {
                return self.bytes.get(start as usize..end as usize);
            }
            start = end;
        }
        None
    }
}

/// A map kept as it is (tests, and callers that own the map already): no copy.
impl From<HeaderMap> for CapturedHeaders {
    fn from(map: HeaderMap) -> Self {
        CapturedHeaders::All(map)
    }
}

/// The downstream request as the access log sees it (`%REQ(...)%` operators).
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub method: http::Method,
    /// Path and query as received (`:path`). Shared (`Arc`) with the request's handling, which
    /// needs the same text: one allocation per request instead of three.
    pub path: Arc<str>,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    pub authority: Option<Arc<str>>,
    pub scheme: Option<&'static str>,
    /// The headers the sink reads ([`AccessLogSink::headers`]).
    pub headers: CapturedHeaders,
}

/// Everything one access-log line can print. Filled as the work proceeds; handed to the sink
/// exactly once by [`LogGuard`].
#[derive(Clone, Debug)]
pub struct LogRecord {
    pub start_time: SystemTime,
    pub start: Instant,
    /// Set when the work ends; `%DURATION%`.
    pub duration: Option<Duration>,
    /// `HTTP/1.1`, `HTTP/2`; `None` for TCP (printed `-`).
    pub protocol: Option<&'static str>,
    pub request: Option<RequestInfo>,
    /// 0 when no response was sent (TCP, or the client left first).
    pub response_code: u16,
    /// The headers the sink reads ([`AccessLogSink::headers`]); None when no response was
    /// sent.
    pub response_headers: Option<CapturedHeaders>,
    pub response_flags: ResponseFlags,
    pub response_code_details: Option<Cow<'static, str>>,
    pub connection_termination_details: Option<Cow<'static, str>>,
    pub upstream_transport_failure_reason: Option<String>,
    /// Body bytes (HTTP) or stream bytes (TCP) received from downstream.
    pub bytes_received: u64,
    /// Body bytes (HTTP) or stream bytes (TCP) sent to downstream.
    pub bytes_sent: u64,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<Arc<str>>,
    pub upstream_local_address: Option<SocketAddr>,
    pub downstream_local_address: SocketAddr,
    pub downstream_remote_address: SocketAddr,
    pub requested_server_name: Option<Arc<str>>,
    pub route_name: Option<Arc<str>>,
    pub downstream_peer_uri_san: Option<Arc<str>>,
    /// The TLS version and cipher of the downstream connection, when the gateway
    /// terminated its TLS (`%DOWNSTREAM_TLS_VERSION%`, `%DOWNSTREAM_TLS_CIPHER%`).
    pub downstream_tls: Option<TlsSession>,
    /// The client's certificate, when it presented one (`%DOWNSTREAM_PEER_SUBJECT%`, ...).
    pub downstream_peer_cert: Option<Arc<PeerCertInfo>>,
    /// The URI SANs of the gateway's own certificate, joined by `,`
    /// (`%DOWNSTREAM_LOCAL_URI_SAN%`).
    pub downstream_local_uri_san: Option<Arc<str>>,
    /// The TLS session of the upstream connection, when the gateway originated TLS
    /// (`%UPSTREAM_TLS_VERSION%`, `%UPSTREAM_PEER_SUBJECT%`, ...).
    pub upstream_tls: Option<Arc<UpstreamTlsInfo>>,
    /// When the request's last byte arrived (`%REQUEST_DURATION%`): its head's for a request
    /// without a body; None while (or when) its body never ended.
    pub request_complete: Option<Instant>,
    /// When the upstream response's head arrived (`%RESPONSE_DURATION%`); None when no
    /// upstream answered.
    pub response_start: Option<Instant>,
    /// Upstream attempts made for the request, retries included
    /// (`%UPSTREAM_REQUEST_ATTEMPT_COUNT%`); 0 when none was.
    pub upstream_attempts: u32,
    /// Content hash of the configuration this record was served with.
    pub config_version: Arc<str>,
}

/// The negotiated parameters of a TLS session, as Envoy prints them (`TLSv1.3`,
/// `TLS_AES_128_GCM_SHA256`, `ECDHE-RSA-AES128-GCM-SHA256`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsSession {
    pub version: &'static str,
    pub cipher: &'static str,
}

/// A client certificate as the access log prints it (Envoy's names and forms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertInfo {
    /// The subject in RFC 2253 form (`CN=sleep,O=Acme`).
    pub subject: String,
    /// The issuer in RFC 2253 form.
    pub issuer: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint_256: String,
}

/// An upstream connection's TLS session as the access log prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTlsInfo {
    pub session: Option<TlsSession>,
    /// The upstream's certificate.
    pub peer: Option<PeerCertInfo>,
    /// Its URI SANs, joined by `,`.
    pub peer_uri_san: Option<String>,
}

/// A random (version 4) UUID as text, `xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`, from 128
/// random bits: `x-request-id` and `%UNIQUE_ID%`.
pub fn uuid_v4_text(random: u128) -> [u8; 36] {
    let mut b = random.to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut s = [0u8; 36];
    let hex = b"0123456789abcdef";
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s[j] = b'-';
            j += 1;
        }
        s[j] = hex[(byte >> 4) as usize];
        s[j + 1] = hex[(byte & 0xf) as usize];
        j += 2;
    }
    s
}

impl LogRecord {
    pub fn new(
        downstream_local: SocketAddr,
        downstream_remote: SocketAddr,
        config_version: Arc<str>,
    ) -> Self {
        LogRecord {
            start_time: SystemTime::now(),
            start: Instant::now(),
            duration: None,
            protocol: None,
            request: None,
            response_code: 0,
            response_headers: None,
            response_flags: ResponseFlags::NONE,
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: downstream_local,
            downstream_remote_address: downstream_remote,
            requested_server_name: None,
            route_name: None,
            downstream_peer_uri_san: None,
            downstream_tls: None,
            downstream_peer_cert: None,
            downstream_local_uri_san: None,
            upstream_tls: None,
            request_complete: None,
            response_start: None,
            upstream_attempts: 0,
            config_version,
        }
    }

    pub fn set_flag(&mut self, flag: ResponseFlags) {
        self.response_flags.insert(flag);
    }
}

/// Receives finished records. Implementations must not block the caller (the data path).
pub trait AccessLogSink: Send + Sync + 'static {
    /// Boxed since the record is created: it is ~0.7 KB and travels with the response
    /// through hyper, which moves the body several times per request.
    fn log(&self, record: Box<LogRecord>);

    /// The headers this sink reads from records; the data path keeps only those. All of them
    /// unless a sink says otherwise. Asked once per request, so it must be cheap.
    fn headers(&self) -> LogHeaders {
        LogHeaders::default()
    }

    /// A reader in front of this sink (the metrics) needs these headers kept as well. Sinks
    /// that keep every header can ignore it; a sink that narrows [`headers`](Self::headers)
    /// must add these to what it returns.
    fn keep_headers(&self, _also: &LogHeaders) {}
}

/// Owns a record until the work ends and hands it to the sink exactly once — on
/// [`LogGuard::finish`] or, if the task is dropped (client gone, panic), on drop. This makes
/// "one line per request/connection" structural rather than a discipline.
pub struct LogGuard {
    record: Option<Box<LogRecord>>,
    sink: Arc<dyn AccessLogSink>,
    /// Which response headers [`set_response_headers`](Self::set_response_headers) keeps.
    response_headers: HeaderSelection,
}

impl LogGuard {
    /// `record` may come boxed already (a caller that fills it across `await`s keeps only
    /// the pointer in its future).
    pub fn new(record: impl Into<Box<LogRecord>>, sink: Arc<dyn AccessLogSink>) -> Self {
        LogGuard {
            record: Some(record.into()),
            sink,
            response_headers: HeaderSelection::All,
        }
    }

    /// Keeps only `selection` of the response headers (the sink's
    /// [`LogHeaders::response`], asked when the request started).
    pub fn with_response_headers(mut self, selection: HeaderSelection) -> Self {
        self.response_headers = selection;
        self
    }

    /// Records the response headers as sent downstream.
    pub fn set_response_headers(&mut self, headers: &HeaderMap) {
        let captured = self.response_headers.capture(headers);
        self.record().response_headers = Some(captured);
    }

    /// The record being filled. Always present until the guard is consumed.
    pub fn record(&mut self) -> &mut LogRecord {
        // The Option is only taken in `emit`, which consumes or drops self.
        self.record
            .get_or_insert_with(|| Box::new(unreachable_record()))
    }

    pub fn finish(mut self) {
        self.emit();
    }

    /// Drops the record unlogged: for a connection Envoy writes no line for (a client that
    /// connected and sent nothing before it left or timed out — a TCP health check).
    pub fn discard(mut self) {
        self.record = None;
    }

    fn emit(&mut self) {
        if let Some(mut r) = self.record.take() {
            if r.duration.is_none() {
                r.duration = Some(r.start.elapsed());
            }
            self.sink.log(r);
        }
    }
}

#[cold]
fn unreachable_record() -> LogRecord {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    LogRecord::new(unspecified, unspecified, Arc::from("-"))
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A value parsed by hyper is a slice of the connection's read buffer; a record must not
    /// keep that buffer alive, whichever way it keeps the headers.
    #[test]
    fn captured_values_do_not_share_the_parsed_buffer() {
        let buf = Bytes::from(b"curl/8.0 10.0.0.1 abc".to_vec());
        let mut map = HeaderMap::new();
        let slice = |a, b| HeaderValue::from_maybe_shared(buf.slice(a..b)).unwrap();
        map.insert(http::header::USER_AGENT, slice(0, 8));
        map.insert("x-forwarded-for", slice(9, 17));
        map.insert("x-request-id", slice(18, 21));
        let few = HeaderSelection::names([http::header::USER_AGENT]);
        let many = HeaderSelection::names((0..300).map(|i| {
            if i == 299 {
                HeaderName::from_static("x-request-id")
            } else {
                HeaderName::try_from(format!("x-h{i}")).unwrap()
            }
        }));
        let kept = [
            few.capture(&map),
            HeaderSelection::All.capture(&map),
            // Past the inline room (a name at position 299): the whole map, copied.
            many.capture(&map),
        ];
        drop(map);
        assert!(
            buf.is_unique(),
            "a captured value still points into the buffer"
        );
        assert_eq!(
            kept[0].get(&http::header::USER_AGENT),
            Some(&b"curl/8.0"[..])
        );
        assert!(kept[0]
            .get(&HeaderName::from_static("x-request-id"))
            .is_none());
        assert_eq!(
            kept[1].get(&HeaderName::from_static("x-forwarded-for")),
            Some(&b"10.0.0.1"[..])
        );
        assert!(matches!(kept[2], CapturedHeaders::All(_)));
        assert_eq!(
            kept[2].get(&HeaderName::from_static("x-request-id")),
            Some(&b"abc"[..])
        );
    }
}
