//! Why an exchange with an upstream failed, in the terms Envoy logs it with.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use crate::body::BodyError;

/// A failed request or response on an upstream connection.
#[derive(Debug)]
pub struct UpstreamError {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// The connection ended before any byte of a response.
    Closed,
    /// The upstream broke HTTP/1.1 (a codec error to Envoy).
    Protocol(&'static str),
    Io(io::Error),
    /// Nothing of the request left: its head could not be written.
    NotSent(io::Error),
    /// The request body failed: the downstream's error, not the upstream's.
    RequestBody(BodyError),
    /// From hyper's HTTP/2 client.
    Http2(hyper::Error),
}

impl UpstreamError {
    pub(crate) fn closed() -> UpstreamError {
        UpstreamError { kind: Kind::Closed }
    }

    pub(crate) fn protocol(what: &'static str) -> UpstreamError {
        UpstreamError {
            kind: Kind::Protocol(what),
        }
    }

    pub(crate) fn io(e: io::Error) -> UpstreamError {
        UpstreamError { kind: Kind::Io(e) }
    }

    pub(crate) fn not_sent(e: io::Error) -> UpstreamError {
        UpstreamError {
            kind: Kind::NotSent(e),
        }
    }

    pub(crate) fn request_body(e: BodyError) -> UpstreamError {
        UpstreamError {
            kind: Kind::RequestBody(e),
        }
    }

    pub(crate) fn http2(e: hyper::Error) -> UpstreamError {
        UpstreamError {
            kind: Kind::Http2(e),
        }
    }

    pub(crate) fn is_not_sent(&self) -> bool {
        matches!(self.kind, Kind::NotSent(_))
    }

    /// Envoy's reset reason: `protocol error`, `remote reset` or `connection termination`.
    pub fn reset_reason(&self) -> &'static str {
        match &self.kind {
            Kind::Protocol(_) => "protocol error",
            Kind::Http2(e) => http2_reset_reason(e),
            _ => "connection termination",
        }
    }

    /// The request body's own error, when that is what failed the exchange (the client
    /// went away or broke its framing while its body was being sent).
    pub fn request_body_error(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Kind::RequestBody(e) => Some(&**e),
            // hyper's client fails with the error of the body it was given (`is_user`).
            Kind::Http2(e) if e.is_user() => StdError::source(e),
            _ => None,
        }
    }

    /// An HTTP/2 `REFUSED_STREAM` (retried by `refused-stream`).
    pub fn is_refused_stream(&self) -> bool {
        let Kind::Http2(e) = &self.kind else {
            return false;
        };
        let mut src: Option<&(dyn StdError + 'static)> = Some(e);
        while let Some(s) = src {
            if s.to_string().contains("refused stream") {
                return true;
            }
            src = s.source();
        }
        false
    }
}

/// Envoy's reset reason for an error of hyper's HTTP/2 client.
fn http2_reset_reason(e: &hyper::Error) -> &'static str {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        return "protocol error";
    }
    let mut src: Option<&(dyn StdError + 'static)> = StdError::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if text.contains("stream error") || text.contains("reset") && text.contains("remote") {
            return "remote reset";
        }
        src = s.source();
    }
    "connection termination"
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Closed => f.write_str("upstream connection closed before a response"),
            Kind::Protocol(what) => write!(f, "upstream protocol error: {what}"),
            Kind::Io(e) => write!(f, "upstream connection failed: {e}"),
            Kind::NotSent(e) => write!(f, "request could not be sent: {e}"),
            Kind::RequestBody(e) => write!(f, "request body failed: {e}"),
            Kind::Http2(e) => write!(f, "upstream HTTP/2: {e}"),
        }
    }
}

impl StdError for UpstreamError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Kind::Io(e) | Kind::NotSent(e) => Some(e),
            Kind::RequestBody(e) => Some(&**e),
            Kind::Http2(e) => Some(e),
            _ => None,
        }
    }
}
