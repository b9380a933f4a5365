//! One access-log record per HTTP request or TCP connection, and the sink that receives it.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::ResponseFlags;

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
    pub headers: http::HeaderMap,
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
    pub response_headers: Option<http::HeaderMap>,
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
    pub downstream_peer_uri_san: Option<String>,
    /// Content hash of the configuration this record was served with.
    pub config_version: Arc<str>,
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
            config_version,
        }
    }

    pub fn set_flag(&mut self, flag: ResponseFlags) {
        self.response_flags.insert(flag);
    }
}

/// Receives finished records. Implementations must not block the caller (the data path).
pub trait AccessLogSink: Send + Sync + 'static {
    fn log(&self, record: LogRecord);
}

/// Owns a record until the work ends and hands it to the sink exactly once — on
/// [`LogGuard::finish`] or, if the task is dropped (client gone, panic), on drop. This makes
/// "one line per request/connection" structural rather than a discipline.
pub struct LogGuard {
    record: Option<LogRecord>,
    sink: Arc<dyn AccessLogSink>,
}

impl LogGuard {
    pub fn new(record: LogRecord, sink: Arc<dyn AccessLogSink>) -> Self {
        LogGuard {
            record: Some(record),
            sink,
        }
    }

    /// The record being filled. Always present until the guard is consumed.
    pub fn record(&mut self) -> &mut LogRecord {
        // The Option is only taken in `emit`, which consumes or drops self.
        self.record.get_or_insert_with(unreachable_record)
    }

    pub fn finish(mut self) {
        self.emit();
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
