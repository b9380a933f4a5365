//! Named limits and defaults, in one place. Values follow Envoy/Istio unless a comment says
//! otherwise.

use std::time::Duration;

/// Istio's default cluster connect timeout (`connectTimeout` in DestinationRule).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's default `max_request_headers_kb` (60 KiB): larger request headers get 431.
pub const MAX_REQUEST_HEADERS_BYTES: usize = 60 * 1024;
/// Envoy's default `max_response_headers_kb` (80 KiB, status line to the blank line): an
/// HTTP/1.1 upstream's larger response head is a protocol error (`502 UPE`, checked with 1.40).
pub const MAX_RESPONSE_HEADERS_BYTES: usize = 80 * 1024;
/// Envoy's default `listener_filters_timeout` for the TLS inspector.
pub const LISTENER_FILTER_TIMEOUT: Duration = Duration::from_secs(15);
/// Istio's default idle timeout for TCP proxies (1 h).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default HTTP connection manager `idle_timeout`: a downstream HTTP/1.1 connection
/// with no request in progress for this long is closed (1 h).
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default HTTP connection manager `stream_idle_timeout`: a request that has neither
/// sent a byte of its body nor been answered for this long is answered `408`/`504 SI`, a
/// response body that has not moved for this long is cut (`SI`) (5 min).
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a downstream HTTP/1.1 connection stays idle after a response before hyper's
/// buffers (~16 KB) are released; a connection under load never waits this long.
pub const HTTP_BUFFER_RELEASE_DELAY: Duration = Duration::from_millis(100);
/// Largest ClientHello we will buffer, like Envoy's tls_inspector (64 KiB).
pub const MAX_CLIENT_HELLO_BYTES: usize = 64 * 1024;
/// Idle keep-alive connections kept per upstream endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// How long an idle pooled upstream connection is kept (Envoy's default idle_timeout is 1 h;
/// we keep it shorter because external hosts usually close sooner and a stale connection
/// costs a failed first write).
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Lower bound for DNS cache lifetime, so a TTL of 0 doesn't resolve on every request.
pub const MIN_DNS_TTL: Duration = Duration::from_secs(1);
/// Access-log queue length between the data path and the writer thread. The channel's slots
/// are allocated and touched up front (32 bytes each), so this is resident memory: 16,384
/// slots are 512 KiB (65,536 were 2 MiB of the idle RSS) and still absorb a 300 ms stall of
/// the log destination at 50k req/s; beyond that records are dropped and counted.
pub const ACCESS_LOG_QUEUE: usize = 16_384;
/// Request body bytes kept for replaying a retry or sending a mirror (Envoy's per-request
/// buffer limit, which defaults to the listener's 1 MiB connection buffer limit; checked with
/// Envoy 1.40: a 70 KB POST is retried, a 3 MB one is not). The body streams upstream while
/// the copy is kept; past the limit the copy is dropped and the request is not replayed.
pub const REQUEST_REPLAY_BUFFER_BYTES: usize = 1024 * 1024;
/// An upgraded (WebSocket) connection with no byte either way for this long is closed
/// (Istio's HTTP idle timeout, 1 h).
pub const UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
