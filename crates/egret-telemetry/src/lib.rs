//! Egret's access log.
//!
//! This crate owns turning a finished [`egret_core::LogRecord`] into the exact bytes Envoy
//! would write: Envoy command operators compiled once ([`AccessLogFormat`]), Istio's default
//! TEXT and JSON formats ([`JsonFormat`]), and the [`AccessLogWriter`] that formats and
//! writes on its own thread behind a bounded queue. It must never block or slow the data
//! path (a full queue drops and counts), never panic on a record's contents, and knows
//! nothing of sockets, YAML or the Snapshot: callers hand it a format and a destination.

mod format;
mod json;
mod num;
mod time;
mod writer;

#[cfg(test)]
mod tests;

pub use format::{AccessLogFormat, ISTIO_DEFAULT_TEXT, OPERATORS};
pub use json::{JsonFormat, ISTIO_DEFAULT_JSON};
pub use writer::{AccessLogWriter, Destination, MemorySink};

use egret_core::{LogHeaders, LogRecord};

/// Why a format string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A bad command operator: `offset` is the byte offset of its `%` in the format string
    /// (or of the bad specifier inside a START_TIME argument).
    #[error("access-log format: `{operator}` at byte {offset}: {reason}")]
    Operator {
        offset: usize,
        operator: String,
        reason: String,
    },
    /// The JSON format is not a JSON object of strings, objects and lists.
    #[error("access-log JSON format: {0}")]
    Json(String),
    /// A format string inside a JSON format is bad.
    #[error("access-log JSON format, key `{key}`: {source}")]
    JsonValue {
        key: String,
        #[source]
        source: Box<FormatError>,
    },
}

/// Istio's `meshConfig.accessLogEncoding`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogEncoding {
    #[default]
    Text,
    Json,
}

/// Either encoding, as the writer uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text(AccessLogFormat),
    Json(JsonFormat),
}

impl Default for LogFormat {
    /// Istio's default: TEXT in the default format.
    fn default() -> Self {
        LogFormat::Text(AccessLogFormat::istio_default())
    }
}

impl LogFormat {
    /// What Istio builds from `accessLogEncoding` and `accessLogFormat`: an empty format means
    /// the default of that encoding; a TEXT format gets a trailing newline if it has none
    /// ("Istio will insert a newline on all formats, if missing"); a JSON format is a JSON
    /// object of key → format string.
    pub fn istio(encoding: LogEncoding, format: &str) -> Result<LogFormat, FormatError> {
        match encoding {
            LogEncoding::Text if format.is_empty() => Ok(LogFormat::default()),
            LogEncoding::Text if format.ends_with('\n') => {
                AccessLogFormat::parse(format).map(LogFormat::Text)
            }
            LogEncoding::Text => {
                AccessLogFormat::parse(&format!("{format}\n")).map(LogFormat::Text)
            }
            LogEncoding::Json if format.trim().is_empty() => {
                Ok(LogFormat::Json(JsonFormat::istio_default()))
            }
            LogEncoding::Json => JsonFormat::parse(format).map(LogFormat::Json),
        }
    }

    /// The request and response headers this format prints.
    pub fn headers(&self) -> LogHeaders {
        match self {
            LogFormat::Text(f) => f.headers(),
            LogFormat::Json(f) => f.headers(),
        }
    }

    /// Appends one formatted line (with its `\n`) to `out`.
    pub fn write(&self, rec: &LogRecord, out: &mut Vec<u8>) {
        match self {
            LogFormat::Text(f) => f.write(rec, out),
            LogFormat::Json(f) => f.write(rec, out),
        }
    }

    /// Convenience for tests and diagnostics (allocates).
    pub fn format_to_string(&self, rec: &LogRecord) -> String {
        match self {
            LogFormat::Text(f) => f.format_to_string(rec),
            LogFormat::Json(f) => f.format_to_string(rec),
        }
    }
}
