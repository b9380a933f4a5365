//! The metrics registry: recorded from access-log records on the data path, aggregated and
//! rendered when scraped.
//!
//! # Why a copy-on-write map of atomic series
//!
//! Every finished request or connection calls [`Metrics::record`]. Its series (cluster,
//! protocol, response code, gRPC status, response flags) almost always exists already, so the
//! common path is: one `ArcSwap::load` (lock-free, no allocation: a per-thread debt slot),
//! one hash lookup, and relaxed atomic adds on the series' counters and histogram buckets.
//! A new series is rare (the label space is bounded by the configuration's clusters times the
//! few codes and flags they produce) and takes a mutex, copies the map, inserts, and publishes
//! the copy; readers never wait for it. A sharded `RwLock<HashMap>` would still take a lock
//! per record, and per-thread caches would need merging on scrape plus a thread-exit story;
//! neither buys anything here. The map is capped (`MetricsConfig::max_series`) so a
//! misbehaving upstream (odd status codes) cannot grow memory without bound: records beyond
//! it are counted in `egret_metrics_series_overflow_total`.
//!
//! Everything else — summing series into Envoy's per-cluster counters, deriving Istio's
//! destination labels from cluster names, rendering text — happens at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
// foldhash, not SipHash: the series map is looked up once per request, and hashing its key
// with SipHash was ~1,000 instructions of each proxied S1 request (callgrind).
use egret_core::{
    HeaderSelection, LogHeaders, LogRecord, ResponseFlags, Snapshot, UpstreamProtocol,
};
use foldhash::{HashMap, HashMapExt};

use crate::expo::{Format, Out};
use crate::labels::{self, or_unknown};

/// Istio's `istio_request_duration_milliseconds` buckets.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's `istio_request_bytes` / `istio_response_bytes` buckets.
pub const BYTES_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Default upper bound on distinct Istio series (label combinations) kept in memory.
pub const MAX_SERIES: usize = 10_000;

/// Who this gateway is, for Istio's `source_*` labels. Empty strings print as `unknown`.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// `source_workload` (the Deployment name). Default `istio-egressgateway`.
    pub workload: String,
    /// `source_workload_namespace`: the gateway's namespace. Default `istio-system`.
    pub namespace: String,
    /// `source_canonical_service` (label `service.istio.io/canonical-name`, else `app`).
    /// Default `istio-egressgateway`.
    pub canonical_service: String,
    /// `source_canonical_revision`. Default `latest`, Istio's default.
    pub canonical_revision: String,
    /// `source_app` (pod label `app`). Default `istio-egressgateway`.
    pub app: String,
    /// `source_version` (pod label `version`). Default `unknown`.
    pub version: String,
    /// `source_cluster` (Istio's CLUSTER_ID). Default `Kubernetes`, Istio's default.
    pub cluster_id: String,
    /// `source_principal`: the gateway's SPIFFE identity when it originates mTLS; `unknown`
    /// otherwise (Istio reads it from the upstream TLS connection).
    pub principal: String,
    /// Upper bound on distinct Istio series kept; [`MAX_SERIES`] by default.
    pub max_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            workload: "istio-egressgateway".into(),
            namespace: "istio-system".into(),
            canonical_service: "istio-egressgateway".into(),
            canonical_revision: "latest".into(),
            app: "istio-egressgateway".into(),
            version: String::new(),
            cluster_id: "Kubernetes".into(),
            principal: String::new(),
            max_series: MAX_SERIES,
        }
    }
}

type AccessLogStats = dyn Fn() -> (u64, u64, u64) + Send + Sync;
type WorkerStats = dyn Fn() -> Vec<(usize, u64)> + Send + Sync;
type Counter = dyn Fn() -> u64 + Send + Sync;

/// All of Egret's metrics. Share it as `Arc<Metrics>` between the [`crate::MetricsSink`] (which
/// records) and the admin state (which renders).
pub struct Metrics {
    /// `reporter="source",source_workload=...` rendered once.
    source_labels: String,
    max_series: usize,
    series: ArcSwap<HashMap<SeriesKey, Arc<Series>>>,
    grow: Mutex<()>,
    overflow: AtomicU64,
    overflow_warned: AtomicBool,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    access_log: OnceLock<Box<AccessLogStats>>,
    workers: OnceLock<Box<WorkerStats>>,
    /// Where each [`GatewayCounter`] is read from, by its index.
    counters: [OnceLock<Box<Counter>>; GatewayCounter::ALL.len()],
}

/// Counts the gateway keeps outside the access-log records, read when the metrics are
/// rendered. A counter nobody set is not rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayCounter {
    /// Idle downstream HTTP/1.1 connections that released their HTTP buffers.
    DownstreamHttp1BufferReleases,
    /// Idle pooled HTTP/1.1 upstream connections that released their read buffer.
    UpstreamHttp1BufferReleases,
    /// TLS handshakes a terminating port refused or gave up on.
    DownstreamTlsHandshakeFailures,
    /// Heap trims (`--heap-trim-delay`).
    HeapTrims,
}

impl GatewayCounter {
    pub const ALL: [GatewayCounter; 4] = [
        GatewayCounter::DownstreamHttp1BufferReleases,
        GatewayCounter::UpstreamHttp1BufferReleases,
        GatewayCounter::DownstreamTlsHandshakeFailures,
        GatewayCounter::HeapTrims,
    ];

    /// Its Prometheus name and help text.
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            GatewayCounter::DownstreamHttp1BufferReleases => (
                "egret_downstream_http1_buffer_releases_total",
                "Idle HTTP/1.1 downstream connections that released their HTTP buffers.",
            ),
            GatewayCounter::UpstreamHttp1BufferReleases => (
                "egret_upstream_http1_buffer_releases_total",
                "Idle pooled HTTP/1.1 upstream connections that released their read buffer.",
            ),
            GatewayCounter::DownstreamTlsHandshakeFailures => (
                "egret_downstream_tls_handshake_failures_total",
                "TLS handshakes a terminating port refused or gave up on (no access-log line).",
            ),
            GatewayCounter::HeapTrims => (
                "egret_heap_trims_total",
                "Times the heap's free pages were handed back to the kernel after a quiet period.",
            ),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("series", &self.series.load().len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Protocol {
    Http,
    Grpc,
    Tcp,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

/// One Istio series: every label that varies per record.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    cluster: Option<Arc<str>>,
    protocol: Protocol,
    /// 0 for TCP (no response code label) and for requests that got no response.
    code: u16,
    grpc_status: Option<u8>,
    flags: ResponseFlags,
}

impl SeriesKey {
    fn of(rec: &LogRecord) -> SeriesKey {
        let protocol = match rec.protocol {
            None => Protocol::Tcp,
            Some(_) if is_grpc(rec) => Protocol::Grpc,
            Some(_) => Protocol::Http,
        };
        SeriesKey {
            // A refcount increment, not an allocation.
            cluster: rec.upstream_cluster.clone(),
            protocol,
            code: if protocol == Protocol::Tcp {
                0
            } else {
                rec.response_code
            },
            grpc_status: if protocol == Protocol::Grpc {
                grpc_status(rec)
            } else {
                None
            },
            flags: rec.response_flags,
        }
    }
}

/// Envoy's `Grpc::Common::isGrpcRequestHeaders`: `content-type: application/grpc`, optionally
/// followed by `+<subtype>` or `;<params>` (gRPC-Web is not gRPC here).
fn is_grpc(rec: &LogRecord) -> bool {
    let Some(ct) = rec
        .request
        .as_ref()
        .and_then(|r| r.headers.get(&http::header::CONTENT_TYPE))
    else {
        return false;
    };
    let prefix = b"application/grpc";
    ct.len() >= prefix.len()
        && ct[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(ct.get(prefix.len()), None | Some(b'+') | Some(b';'))
}

/// `grpc-status` as the response headers carry it (trailers-only responses, local replies).
/// Only the defined codes 0–16 become label values, so an upstream cannot mint series.
fn grpc_status(rec: &LogRecord) -> Option<u8> {
    let v = rec.response_headers.as_ref()?.get(&GRPC_STATUS)?;
    let n: u8 = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
    (n <= 16).then_some(n)
}

struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v as f64 <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        self.sum.fetch_add(v, Relaxed);
    }

    fn read(&self) -> (Vec<u64>, u64) {
        (
            self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            self.sum.load(Relaxed),
        )
    }
}

enum Series {
    Http {
        requests: AtomicU64,
        duration: Histogram,
        request_bytes: Histogram,
        response_bytes: Histogram,
    },
    Tcp {
        connections: AtomicU64,
        sent: AtomicU64,
        received: AtomicU64,
    },
}

impl Series {
    fn new(protocol: Protocol) -> Series {
        match protocol {
            Protocol::Tcp => Series::Tcp {
                connections: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
            },
            Protocol::Http | Protocol::Grpc => Series::Http {
                requests: AtomicU64::new(0),
                duration: Histogram::new(&DURATION_BUCKETS_MS),
                request_bytes: Histogram::new(&BYTES_BUCKETS),
                response_bytes: Histogram::new(&BYTES_BUCKETS),
            },
        }
    }

    fn add(&self, rec: &LogRecord) {
        match self {
            Series::Http {
                requests,
                duration,
                request_bytes,
                response_bytes,
            } => {
                requests.fetch_add(1, Relaxed);
                // Envoy records whole milliseconds: a 0.7 ms request lands in `le="0.5"`.
                let ms = rec
                    .duration
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                duration.observe(ms);
                request_bytes.observe(rec.bytes_received);
                response_bytes.observe(rec.bytes_sent);
            }
            Series::Tcp {
                connections,
                sent,
                received,
            } => {
                connections.fetch_add(1, Relaxed);
                sent.fetch_add(rec.bytes_sent, Relaxed);
                received.fetch_add(rec.bytes_received, Relaxed);
            }
        }
    }
}

/// `grpc-status`, read from response headers for `grpc_response_status`.
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

impl Metrics {
    /// The headers [`Metrics::record`] reads from a record: the request's `content-type`
    /// (is it gRPC?) and the response's `grpc-status`.
    pub fn headers() -> LogHeaders {
        LogHeaders {
            request: HeaderSelection::names([http::header::CONTENT_TYPE]),
            response: HeaderSelection::names([GRPC_STATUS]),
        }
    }

    pub fn new(config: MetricsConfig) -> Metrics {
        let mut source = String::with_capacity(320);
        let c = &config;
        labels::push(&mut source, "reporter", "source");
        labels::push(&mut source, "source_workload", or_unknown(&c.workload));
        labels::push(
            &mut source,
            "source_canonical_service",
            or_unknown(&c.canonical_service),
        );
        labels::push(
            &mut source,
            "source_canonical_revision",
            if c.canonical_revision.is_empty() {
                "latest"
            } else {
                &c.canonical_revision
            },
        );
        labels::push(
            &mut source,
            "source_workload_namespace",
            or_unknown(&c.namespace),
        );
        labels::push(&mut source, "source_principal", or_unknown(&c.principal));
        labels::push(&mut source, "source_app", or_unknown(&c.app));
        labels::push(&mut source, "source_version", or_unknown(&c.version));
        labels::push(&mut source, "source_cluster", or_unknown(&c.cluster_id));
        Metrics {
            source_labels: source,
            max_series: config.max_series,
            series: ArcSwap::from_pointee(HashMap::new()),
            grow: Mutex::new(()),
            overflow: AtomicU64::new(0),
            overflow_warned: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            access_log: OnceLock::new(),
            workers: OnceLock::new(),
            counters: Default::default(),
        }
    }

    /// Counts one finished request (HTTP) or connection (TCP, `protocol: None`). Lock-free and
    /// allocation-free once the record's series exists.
    pub fn record(&self, rec: &LogRecord) {
        let key = SeriesKey::of(rec);
        {
            let map = self.series.load();
            if let Some(series) = map.get(&key) {
                series.add(rec);
                return;
            }
        }
        match self.create_series(key) {
            Some(series) => series.add(rec),
            None => {
                self.overflow.fetch_add(1, Relaxed);
            }
        }
    }

    #[cold]
    fn create_series(&self, key: SeriesKey) -> Option<Arc<Series>> {
        let _g = self.grow.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.series.load_full();
        if let Some(s) = current.get(&key) {
            return Some(s.clone());
        }
        if current.len() >= self.max_series {
            if !self.overflow_warned.swap(true, Relaxed) {
                tracing::warn!(
                    limit = self.max_series,
                    "metrics series limit reached; further label combinations are not recorded"
                );
            }
            return None;
        }
        let mut next = HashMap::with_capacity(current.len() + 1);
        next.extend(current.iter().map(|(k, v)| (k.clone(), v.clone())));
        let series = Arc::new(Series::new(key.protocol));
        next.insert(key, series.clone());
        self.series.store(Arc::new(next));
        Some(series)
    }

    /// Counts a configuration reload (`egret_config_reloads_total{result=...}`).
    pub fn record_config_reload(&self, success: bool) {
        if success {
            self.reloads_ok.fetch_add(1, Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Relaxed);
        }
    }

    /// Where the access-log counters come from: `(written, dropped, queued)`, read on each
    /// scrape. Set once; later calls are ignored (returns false).
    pub fn set_access_log_stats(
        &self,
        stats: impl Fn() -> (u64, u64, u64) + Send + Sync + 'static,
    ) -> bool {
        self.access_log.set(Box::new(stats)).is_ok()
    }

    /// Where the per-worker connection counts come from: `(open, accepted)` for each worker,
    /// read on each scrape. Set once; later calls are ignored (returns false).
    pub fn set_worker_stats(
        &self,
        stats: impl Fn() -> Vec<(usize, u64)> + Send + Sync + 'static,
    ) -> bool {
        self.workers.set(Box::new(stats)).is_ok()
    }

    /// Where `which` is read from. Set once; later calls are ignored (returns false).
    pub fn set_counter(
        &self,
        which: GatewayCounter,
        count: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> bool {
        self.counters[which as usize].set(Box::new(count)).is_ok()
    }

    /// Everything, in Prometheus text format 0.0.4 (`/stats/prometheus`). `snapshot` supplies
    /// the configuration version and the clusters to report even before traffic reaches them.
    pub fn render_prometheus(&self, snapshot: Option<&Snapshot>) -> String {
        self.render(snapshot, Format::Prometheus)
    }

    /// Counters and gauges as `name: value` lines (`/stats`); cluster statistics under Envoy's
    /// dotted names (`cluster.outbound|80||edition.cnn.com.upstream_rq_total: 3`).
    pub fn render_stats(&self, snapshot: Option<&Snapshot>) -> String {
        self.render(snapshot, Format::Stats)
    }

    fn render(&self, snapshot: Option<&Snapshot>, format: Format) -> String {
        let mut out = Out::new(format);
        let rows = self.rows();
        self.write_istio(&mut out, &rows);
        write_clusters(&mut out, &cluster_totals(&rows, snapshot));
        self.write_egret(&mut out, snapshot);
        write_process(&mut out, &crate::process::read());
        out.buf
    }

    /// The series, read and labelled, in a stable order.
    fn rows(&self) -> Vec<Row> {
        let map = self.series.load_full();
        let mut rows: Vec<Row> = map
            .iter()
            .map(|(key, series)| Row::new(key, series, &self.source_labels))
            .collect();
        rows.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        rows
    }

    fn write_istio(&self, out: &mut Out, rows: &[Row]) {
        let http = || {
            rows.iter().filter_map(|r| match &r.values {
                Values::Http(v) => Some((r, v)),
                Values::Tcp { .. } => None,
            })
        };
        let tcp = || {
            rows.iter().filter_map(|r| match r.values {
                Values::Tcp {
                    connections,
                    sent,
                    received,
                } => Some((r, connections, sent, received)),
                Values::Http(_) => None,
            })
        };
        out.family(
            "istio_requests_total",
            "counter",
            "Requests handled, by destination, protocol, response code and flags.",
        );
        for (r, v) in http() {
            out.sample("istio_requests_total", &r.labels, v.requests);
        }
        out.family(
            "istio_request_duration_milliseconds",
            "histogram",
            "Request durations in milliseconds.",
        );
        for (r, v) in http() {
            out.histogram(
                "istio_request_duration_milliseconds",
                &r.labels,
                &DURATION_BUCKETS_MS,
                &v.duration.0,
                v.duration.1,
            );
        }
        out.family(
            "istio_request_bytes",
            "histogram",
            "Request body sizes in bytes.",
        );
        for (r, v) in http() {
            out.histogram(
                "istio_request_bytes",
                &r.labels,
                &BYTES_BUCKETS,
                &v.request_bytes.0,
                v.request_bytes.1,
            );
        }
        out.family(
            "istio_response_bytes",
            "histogram",
            "Response body sizes in bytes.",
        );
        for (r, v) in http() {
            out.histogram(
                "istio_response_bytes",
                &r.labels,
                &BYTES_BUCKETS,
                &v.response_bytes.0,
                v.response_bytes.1,
            );
        }
        out.family(
            "istio_tcp_sent_bytes_total",
            "counter",
            "Bytes sent to the downstream on TCP connections.",
        );
        for (r, _, sent, _) in tcp() {
            out.sample("istio_tcp_sent_bytes_total", &r.labels, sent);
        }
        out.family(
            "istio_tcp_received_bytes_total",
            "counter",
            "Bytes received from the downstream on TCP connections.",
        );
        for (r, _, _, received) in tcp() {
            out.sample("istio_tcp_received_bytes_total", &r.labels, received);
        }
        out.family(
            "istio_tcp_connections_opened_total",
            "counter",
            "TCP connections opened (counted when they finish).",
        );
        for (r, n, _, _) in tcp() {
            out.sample("istio_tcp_connections_opened_total", &r.labels, n);
        }
        out.family(
            "istio_tcp_connections_closed_total",
            "counter",
            "TCP connections closed.",
        );
        for (r, n, _, _) in tcp() {
            out.sample("istio_tcp_connections_closed_total", &r.labels, n);
        }
    }

    fn write_egret(&self, out: &mut Out, snapshot: Option<&Snapshot>) {
        out.family(
            "egret_config_reloads_total",
            "counter",
            "Configuration reloads, by result.",
        );
        out.sample(
            "egret_config_reloads_total",
            "result=\"success\"",
            self.reloads_ok.load(Relaxed),
        );
        out.sample(
            "egret_config_reloads_total",
            "result=\"failure\"",
            self.reloads_failed.load(Relaxed),
        );
        // No version while waiting for the first configuration.
        if let Some(s) = snapshot.filter(|s| !s.version.is_empty()) {
            out.family(
                "egret_config_version_info",
                "gauge",
                "The configuration version in force (content hash).",
            );
            let mut l = String::new();
            labels::push(&mut l, "version", &s.version);
            out.sample("egret_config_version_info", &l, 1);
        }
        if let Some(stats) = self.access_log.get() {
            let (written, dropped, queued) = stats();
            out.family(
                "egret_access_log_written_total",
                "counter",
                "Access-log lines written.",
            );
            out.sample("egret_access_log_written_total", "", written);
            out.family(
                "egret_access_log_dropped_total",
                "counter",
                "Access-log records dropped because the queue was full.",
            );
            out.sample("egret_access_log_dropped_total", "", dropped);
            out.family(
                "egret_access_log_queue_depth",
                "gauge",
                "Access-log records waiting to be written.",
            );
            out.sample("egret_access_log_queue_depth", "", queued);
        }
        if let Some(stats) = self.workers.get() {
            let workers = stats();
            out.family(
                "egret_worker_downstream_cx_active",
                "gauge",
                "Downstream connections open, by the worker serving them.",
            );
            for (i, (open, _)) in workers.iter().enumerate() {
                out.sample(
                    "egret_worker_downstream_cx_active",
                    &format!("worker=\"{i}\""),
                    *open as u64,
                );
            }
            out.family(
                "egret_worker_downstream_cx_total",
                "counter",
                "Downstream connections accepted, by the worker they were handed to.",
            );
            for (i, (_, total)) in workers.iter().enumerate() {
                out.sample(
                    "egret_worker_downstream_cx_total",
                    &format!("worker=\"{i}\""),
                    *total,
                );
            }
        }
        for which in GatewayCounter::ALL {
            if let Some(count) = self.counters[which as usize].get() {
                let (name, help) = which.describe();
                out.family(name, "counter", help);
                out.sample(name, "", count());
            }
        }
        out.family(
            "egret_metrics_series_overflow_total",
            "counter",
            "Records not counted in istio_* metrics because the series limit was reached.",
        );
        out.sample(
            "egret_metrics_series_overflow_total",
            "",
            self.overflow.load(Relaxed),
        );
    }
}

struct HttpValues {
    requests: u64,
    duration: (Vec<u64>, u64),
    request_bytes: (Vec<u64>, u64),
    response_bytes: (Vec<u64>, u64),
}

enum Values {
    Http(HttpValues),
    Tcp {
        connections: u64,
        sent: u64,
        received: u64,
    },
}

struct Row {
    key: SeriesKey,
    flags: String,
    labels: String,
    values: Values,
}

impl Row {
    fn new(key: &SeriesKey, series: &Series, source_labels: &str) -> Row {
        let flags = key.flags.to_string();
        let dest = labels::destination(key.cluster.as_deref());
        let mut l = String::with_capacity(source_labels.len() + 512);
        l.push_str(source_labels);
        // Istio's order and fillers for a client-side reporter that has no peer metadata.
        labels::push(&mut l, "destination_workload", labels::UNKNOWN);
        labels::push(&mut l, "destination_workload_namespace", labels::UNKNOWN);
        labels::push(&mut l, "destination_principal", labels::UNKNOWN);
        labels::push(&mut l, "destination_app", labels::UNKNOWN);
        labels::push(&mut l, "destination_version", labels::UNKNOWN);
        labels::push(&mut l, "destination_service", dest.service);
        labels::push(&mut l, "destination_canonical_service", labels::UNKNOWN);
        labels::push(&mut l, "destination_canonical_revision", "latest");
        labels::push(&mut l, "destination_service_name", dest.name);
        labels::push(&mut l, "destination_service_namespace", dest.namespace);
        labels::push(&mut l, "destination_cluster", labels::UNKNOWN);
        labels::push(&mut l, "request_protocol", key.protocol.label());
        if key.protocol != Protocol::Tcp {
            let mut code = String::with_capacity(3);
            let _ = write!(code, "{}", key.code);
            labels::push(&mut l, "response_code", &code);
            let grpc = key.grpc_status.map(|g| g.to_string()).unwrap_or_default();
            labels::push(&mut l, "grpc_response_status", &grpc);
        }
        labels::push(&mut l, "response_flags", &flags);
        // Istio: a client-side reporter does not know the policy.
        labels::push(&mut l, "connection_security_policy", labels::UNKNOWN);
        let values = match series {
            Series::Http {
                requests,
                duration,
                request_bytes,
                response_bytes,
            } => Values::Http(HttpValues {
                requests: requests.load(Relaxed),
                duration: duration.read(),
                request_bytes: request_bytes.read(),
                response_bytes: response_bytes.read(),
            }),
            Series::Tcp {
                connections,
                sent,
                received,
            } => Values::Tcp {
                connections: connections.load(Relaxed),
                sent: sent.load(Relaxed),
                received: received.load(Relaxed),
            },
        };
        Row {
            key: key.clone(),
            flags,
            labels: l,
            values,
        }
    }

    fn sort_key(&self) -> (&str, Protocol, u16, Option<u8>, &str) {
        (
            self.key.cluster.as_deref().unwrap_or(""),
            self.key.protocol,
            self.key.code,
            self.key.grpc_status,
            &self.flags,
        )
    }
}

/// Envoy's per-cluster counters, summed from the series at scrape time.
#[derive(Default)]
struct ClusterTotals {
    tcp: bool,
    rq_total: u64,
    /// Index = first digit of the response code (1xx..5xx).
    rq_class: [u64; 6],
    rq_code: BTreeMap<u16, u64>,
    cx_connect_fail: u64,
    cx_none_healthy: u64,
    rq_timeout: u64,
    rq_retry_limit_exceeded: u64,
    rq_pending_overflow: u64,
    cx_total: u64,
    cx_tx_bytes: u64,
    cx_rx_bytes: u64,
}

fn cluster_totals<'a>(
    rows: &'a [Row],
    snapshot: Option<&'a Snapshot>,
) -> BTreeMap<&'a str, ClusterTotals> {
    let mut totals: BTreeMap<&str, ClusterTotals> = BTreeMap::new();
    // Every configured cluster shows up, with zeros, before its first request — as in Envoy.
    for (name, c) in snapshot.iter().flat_map(|s| s.clusters.iter()) {
        totals.entry(name).or_default().tcp |= c.protocol == UpstreamProtocol::Tcp;
    }
    for row in rows {
        let Some(name) = row.key.cluster.as_deref() else {
            continue;
        };
        let t = totals.entry(name).or_default();
        let f = row.key.flags;
        // The upstream was never tried: no healthy host, or the circuit breaker said no.
        let no_attempt = f.contains(ResponseFlags::NO_HEALTHY_UPSTREAM)
            || f.contains(ResponseFlags::UPSTREAM_OVERFLOW);
        let n = match row.values {
            Values::Http(ref v) => {
                let n = v.requests;
                if !no_attempt {
                    t.rq_total += n;
                }
                if row.key.code != 0 {
                    if let Some(c) = t.rq_class.get_mut(usize::from(row.key.code / 100)) {
                        *c += n;
                    }
                    *t.rq_code.entry(row.key.code).or_default() += n;
                }
                if f.contains(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT) {
                    t.rq_timeout += n;
                }
                if f.contains(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED) {
                    t.rq_retry_limit_exceeded += n;
                }
                if f.contains(ResponseFlags::UPSTREAM_OVERFLOW) {
                    t.rq_pending_overflow += n;
                }
                n
            }
            Values::Tcp {
                connections,
                sent,
                received,
            } => {
                // One TCP record is one upstream connection attempt (bytes as the downstream
                // saw them, which the splice passes through unchanged).
                t.tcp = true;
                if !no_attempt {
                    t.cx_total += connections;
                }
                t.cx_tx_bytes += received;
                t.cx_rx_bytes += sent;
                connections
            }
        };
        if f.contains(ResponseFlags::UPSTREAM_CONNECTION_FAILURE) {
            t.cx_connect_fail += n;
        }
        if f.contains(ResponseFlags::NO_HEALTHY_UPSTREAM) {
            t.cx_none_healthy += n;
        }
    }
    totals
}

fn write_clusters(out: &mut Out, totals: &BTreeMap<&str, ClusterTotals>) {
    type Get = fn(&ClusterTotals) -> u64;
    let simple: [(&str, &str, Get); 6] = [
        (
            "upstream_rq_total",
            "Requests sent to the cluster (one per downstream request; retries are not seen).",
            |t| t.rq_total,
        ),
        (
            "upstream_cx_connect_fail",
            "Connection failures (records flagged UF).",
            |t| t.cx_connect_fail,
        ),
        (
            "upstream_cx_none_healthy",
            "Requests or connections with no healthy upstream (UH).",
            |t| t.cx_none_healthy,
        ),
        (
            "upstream_rq_timeout",
            "Requests that hit the route timeout (UT).",
            |t| t.rq_timeout,
        ),
        (
            "upstream_rq_retry_limit_exceeded",
            "Requests whose retries ran out (URX).",
            |t| t.rq_retry_limit_exceeded,
        ),
        (
            "upstream_rq_pending_overflow",
            "Requests refused by the circuit breaker (UO).",
            |t| t.rq_pending_overflow,
        ),
    ];
    for (stat, help, get) in simple {
        out.family(&format!("envoy_cluster_{stat}"), "counter", help);
        for (name, t) in totals {
            out.cluster(stat, stat, name, None, get(t));
        }
    }
    out.family(
        "envoy_cluster_upstream_rq_xx",
        "counter",
        "Responses by class (the response the client got, local replies included).",
    );
    for (name, t) in totals {
        for (class, n) in t.rq_class.iter().enumerate().skip(1) {
            if *n > 0 {
                let tag = format!("{class}xx");
                out.cluster(
                    "upstream_rq_xx",
                    &format!("upstream_rq_{tag}"),
                    name,
                    Some(("response_code_class", &tag)),
                    *n,
                );
            }
        }
    }
    out.family("envoy_cluster_upstream_rq", "counter", "Responses by code.");
    for (name, t) in totals {
        for (code, n) in &t.rq_code {
            let tag = code.to_string();
            out.cluster(
                "upstream_rq",
                &format!("upstream_rq_{tag}"),
                name,
                Some(("response_code", &tag)),
                *n,
            );
        }
    }
    // Connection counts are only knowable from records for TCP clusters, where a record is a
    // connection; HTTP clusters pool their connections out of the records' sight.
    let tcp: [(&str, &str, Get); 3] = [
        (
            "upstream_cx_total",
            "Upstream connections (TCP/TLS passthrough clusters).",
            |t| t.cx_total,
        ),
        (
            "upstream_cx_tx_bytes_total",
            "Bytes sent upstream (TCP/TLS passthrough clusters).",
            |t| t.cx_tx_bytes,
        ),
        (
            "upstream_cx_rx_bytes_total",
            "Bytes received from upstream (TCP/TLS passthrough clusters).",
            |t| t.cx_rx_bytes,
        ),
    ];
    for (stat, help, get) in tcp {
        out.family(&format!("envoy_cluster_{stat}"), "counter", help);
        for (name, t) in totals.iter().filter(|(_, t)| t.tcp) {
            out.cluster(stat, stat, name, None, get(t));
        }
    }
}

fn write_process(out: &mut Out, p: &crate::process::ProcessStats) {
    if let Some(v) = p.cpu_seconds {
        out.family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        out.sample("process_cpu_seconds_total", "", v);
    }
    if let Some(v) = p.resident_bytes {
        out.family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        out.sample("process_resident_memory_bytes", "", v);
    }
    if let Some(v) = p.virtual_bytes {
        out.family(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
        );
        out.sample("process_virtual_memory_bytes", "", v);
    }
    if let Some(v) = p.open_fds {
        out.family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        out.sample("process_open_fds", "", v);
    }
    if let Some(v) = p.max_fds {
        out.family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
        );
        out.sample("process_max_fds", "", v);
    }
    if let Some(v) = p.start_time_seconds {
        out.family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        out.sample("process_start_time_seconds", "", v);
    }
}
