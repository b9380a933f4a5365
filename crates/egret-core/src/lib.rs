//! Egret's shared vocabulary.
//!
//! This crate owns the types every other crate speaks: the compiled, immutable [`Snapshot`]
//! (listeners, route tables with each route's [`RoutePolicy`] — retries, rewrites, header
//! operations, faults, mirrors — and clusters), the per-request / per-connection
//! [`LogRecord`], Envoy's [`ResponseFlags`], the [`AccessLogSink`] trait and the named limits.
//! It does no I/O, knows nothing of YAML or sockets, and so is tested directly.

pub mod flags;
pub mod host;
pub mod ip;
pub mod limits;
pub mod policy;
pub mod query;
pub mod record;
pub mod snapshot;
pub mod tls;
pub mod worker;

pub use flags::ResponseFlags;
pub use host::HostPattern;
pub use policy::{
    AbortCode, Fault, FaultAbort, FaultDelay, Fraction, HeaderAdd, HeaderMutations, HeaderOps,
    MirrorPolicy, PathRewrite, Redirect, RetryOn, RetryPolicy, Rewrite, RoutePolicy,
};
pub use record::{
    uuid_v4_text, AccessLogSink, CapturedHeaders, HeaderSelection, LogGuard, LogHeaders, LogRecord,
    PeerCertInfo, RequestInfo, TlsSession, UpstreamTlsInfo,
};
pub use snapshot::*;
pub use tls::{CertSource, DownstreamTls, TlsMode, TlsServer, UpstreamTls};
