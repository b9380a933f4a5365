//! The admin crate from the outside: metrics after a known sequence of records (values and
//! labels asserted in the text output), and the three servers on real loopback sockets with a
//! fake gateway state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egret_admin::{
    AdminConfig, AdminHandles, AdminServers, AdminState, Metrics, MetricsConfig, MetricsSink,
    ServerState,
};
use egret_core::{
    AccessLogSink, Cluster, Discovery, LbPolicy, LogRecord, RequestInfo, ResponseFlags, Snapshot,
    UpstreamProtocol,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CNN80: &str = "outbound|80||edition.cnn.com";
const CNN443: &str = "outbound|443||edition.cnn.com";

/// Istio's labels as this gateway fills them, in Istio's order, up to `request_protocol`.
fn istio_labels(service: &str, name: &str, namespace: &str, protocol: &str) -> String {
    format!(
        "reporter=\"source\",source_workload=\"istio-egressgateway\",\
         source_canonical_service=\"istio-egressgateway\",source_canonical_revision=\"latest\",\
         source_workload_namespace=\"istio-system\",source_principal=\"unknown\",\
         source_app=\"istio-egressgateway\",source_version=\"unknown\",\
         source_cluster=\"Kubernetes\",destination_workload=\"unknown\",\
         destination_workload_namespace=\"unknown\",destination_principal=\"unknown\",\
         destination_app=\"unknown\",destination_version=\"unknown\",\
         destination_service=\"{service}\",destination_canonical_service=\"unknown\",\
         destination_canonical_revision=\"latest\",destination_service_name=\"{name}\",\
         destination_service_namespace=\"{namespace}\",destination_cluster=\"unknown\",\
         request_protocol=\"{protocol}\""
    )
}

fn http_labels(code: u16, grpc: &str, flags: &str, protocol: &str) -> String {
    format!(
        "{},response_code=\"{code}\",grpc_response_status=\"{grpc}\",response_flags=\"{flags}\",\
         connection_security_policy=\"unknown\"",
        istio_labels("edition.cnn.com", "edition.cnn.com", "unknown", protocol)
    )
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 5], port))
}

fn http_record(cluster: Option<&str>, code: u16, flags: ResponseFlags, ms: u64) -> LogRecord {
    let mut r = LogRecord::new(addr(8080), addr(51000), Arc::from("v1"));
    r.protocol = Some("HTTP/1.1");
    r.response_code = code;
    r.response_flags = flags;
    r.upstream_cluster = cluster.map(Arc::from);
    r.duration = Some(Duration::from_millis(ms));
    r.request = Some(RequestInfo {
        method: http::Method::GET,
        path: "/politics".into(),
        authority: Some("edition.cnn.com".into()),
        scheme: Some("http"),
        headers: http::HeaderMap::new().into(),
    });
    r
}

fn tcp_record(cluster: &str, sent: u64, received: u64) -> LogRecord {
    let mut r = LogRecord::new(addr(8443), addr(52348), Arc::from("v1"));
    r.upstream_cluster = Some(Arc::from(cluster));
    r.bytes_sent = sent;
    r.bytes_received = received;
    r.duration = Some(Duration::from_millis(19));
    r
}

fn cluster(name: &str, protocol: UpstreamProtocol) -> (Arc<str>, Arc<Cluster>) {
    let name: Arc<str> = Arc::from(name);
    (
        name.clone(),
        Arc::new(Cluster {
            name,
            discovery: Discovery::Static { endpoints: vec![] },
            connect_timeout: Duration::from_secs(10),
            lb: LbPolicy::RoundRobin,
            protocol,
            tls: None,
            traffic: Default::default(),
        }),
    )
}

fn snapshot() -> Arc<Snapshot> {
    Arc::new(Snapshot {
        version: Arc::from("0123456789ab"),
        listeners: vec![],
        clusters: BTreeMap::from([
            cluster(CNN80, UpstreamProtocol::Http1),
            cluster(CNN443, UpstreamProtocol::Tcp),
            cluster("outbound|80||idle.example.com", UpstreamProtocol::Http1),
        ]),
    })
}

/// The lines of `text` that start with `prefix`.
fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// Collects what the tee forwards.
#[derive(Default)]
struct Collect(Mutex<Vec<LogRecord>>);

impl AccessLogSink for Collect {
    fn log(&self, record: Box<LogRecord>) {
        self.0.lock().unwrap().push(*record);
    }
}

/// Three 200s and one 503 (connect failure after retries) to edition.cnn.com:80.
fn cnn_sequence(sink: &dyn AccessLogSink) {
    for ms in [0, 3, 7] {
        sink.log(Box::new(http_record(
            Some(CNN80),
            200,
            ResponseFlags::NONE,
            ms,
        )));
    }
    let flags =
        ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED | ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
    sink.log(Box::new(http_record(Some(CNN80), 503, flags, 80)));
}

#[test]
fn metrics_sink_counts_and_forwards() {
    let metrics = Arc::new(Metrics::new(MetricsConfig::default()));
    let inner = Arc::new(Collect::default());
    let sink = MetricsSink::new(metrics.clone(), inner.clone());
    cnn_sequence(&sink);
    assert_eq!(
        inner.0.lock().unwrap().len(),
        4,
        "every record is forwarded"
    );

    let text = metrics.render_prometheus(Some(&snapshot()));
    assert_eq!(
        lines(&text, "istio_requests_total"),
        vec![
            format!(
                "istio_requests_total{{{}}} 3",
                http_labels(200, "", "-", "http")
            ),
            format!(
                "istio_requests_total{{{}}} 1",
                http_labels(503, "", "URX,UF", "http")
            ),
        ]
    );
    assert!(text.contains("# TYPE istio_requests_total counter\n"));
    assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram\n"));

    for (name, value) in [
        ("envoy_cluster_upstream_rq_total", 4),
        ("envoy_cluster_upstream_cx_connect_fail", 1),
        ("envoy_cluster_upstream_rq_retry_limit_exceeded", 1),
        ("envoy_cluster_upstream_rq_timeout", 0),
    ] {
        assert_eq!(
            lines(&text, &format!("{name}{{")),
            vec![
                format!("{name}{{cluster_name=\"{CNN443}\"}} 0"),
                format!("{name}{{cluster_name=\"{CNN80}\"}} {value}"),
                format!("{name}{{cluster_name=\"outbound|80||idle.example.com\"}} 0"),
            ],
            "{name}"
        );
    }
    assert_eq!(
        lines(&text, "envoy_cluster_upstream_rq_xx{"),
        vec![
            format!("envoy_cluster_upstream_rq_xx{{cluster_name=\"{CNN80}\",response_code_class=\"2xx\"}} 3"),
            format!("envoy_cluster_upstream_rq_xx{{cluster_name=\"{CNN80}\",response_code_class=\"5xx\"}} 1"),
        ]
    );
    assert_eq!(
        lines(&text, "envoy_cluster_upstream_rq{"),
        vec![
            format!(
                "envoy_cluster_upstream_rq{{cluster_name=\"{CNN80}\",response_code=\"200\"}} 3"
            ),
            format!(
                "envoy_cluster_upstream_rq{{cluster_name=\"{CNN80}\",response_code=\"503\"}} 1"
            ),
        ]
    );
    // Connection counts only for passthrough (TCP) clusters.
    assert_eq!(
        lines(&text, "envoy_cluster_upstream_cx_total{"),
        vec![format!(
            "envoy_cluster_upstream_cx_total{{cluster_name=\"{CNN443}\"}} 0"
        )]
    );
    assert!(text.contains("egret_config_version_info{version=\"0123456789ab\"} 1\n"));
}

#[test]
fn histogram_buckets_are_cumulative_with_istio_bounds() {
    let metrics = Metrics::new(MetricsConfig::default());
    // Durations 0, 3, 7 ms; response bodies 0, 50, 5000 bytes; request bodies 0.
    for (ms, bytes) in [(0, 0), (3, 50), (7, 5000)] {
        let mut r = http_record(Some(CNN80), 200, ResponseFlags::NONE, ms);
        r.bytes_sent = bytes;
        metrics.record(&r);
    }
    let text = metrics.render_prometheus(None);
    let l = http_labels(200, "", "-", "http");
    let duration: Vec<String> = [
        ("0.5", 1),
        ("1", 1),
        ("5", 2),
        ("10", 3),
        ("25", 3),
        ("50", 3),
        ("100", 3),
        ("250", 3),
        ("500", 3),
        ("1000", 3),
        ("2500", 3),
        ("5000", 3),
        ("10000", 3),
        ("30000", 3),
        ("60000", 3),
        ("300000", 3),
        ("600000", 3),
        ("1800000", 3),
        ("3600000", 3),
        ("+Inf", 3),
    ]
    .iter()
    .map(|(le, n)| format!("istio_request_duration_milliseconds_bucket{{{l},le=\"{le}\"}} {n}"))
    .collect();
    assert_eq!(
        lines(&text, "istio_request_duration_milliseconds_bucket"),
        duration
    );
    assert!(text.contains(&format!(
        "istio_request_duration_milliseconds_sum{{{l}}} 10\n"
    )));
    assert!(text.contains(&format!(
        "istio_request_duration_milliseconds_count{{{l}}} 3\n"
    )));

    let response: Vec<String> = [
        ("1", 1),
        ("10", 1),
        ("100", 2),
        ("1000", 2),
        ("10000", 3),
        ("100000", 3),
        ("1000000", 3),
        ("10000000", 3),
        ("100000000", 3),
        ("1000000000", 3),
        ("+Inf", 3),
    ]
    .iter()
    .map(|(le, n)| format!("istio_response_bytes_bucket{{{l},le=\"{le}\"}} {n}"))
    .collect();
    assert_eq!(lines(&text, "istio_response_bytes_bucket"), response);
    assert!(text.contains(&format!("istio_response_bytes_sum{{{l}}} 5050\n")));
    assert!(text.contains(&format!("istio_request_bytes_bucket{{{l},le=\"1\"}} 3\n")));
    assert!(text.contains(&format!("istio_request_bytes_count{{{l}}} 3\n")));
}

#[test]
fn tcp_records_feed_tcp_metrics() {
    let metrics = Metrics::new(MetricsConfig::default());
    metrics.record(&tcp_record(CNN443, 7067, 725));
    metrics.record(&tcp_record(CNN443, 1000, 100));
    let mut refused = tcp_record(CNN443, 0, 0);
    refused.set_flag(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
    refused.set_flag(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
    metrics.record(&refused);
    let text = metrics.render_prometheus(None);

    let l = |flags: &str| {
        format!(
            "{},response_flags=\"{flags}\",connection_security_policy=\"unknown\"",
            istio_labels("edition.cnn.com", "edition.cnn.com", "unknown", "tcp")
        )
    };
    assert_eq!(
        lines(&text, "istio_tcp_sent_bytes_total{"),
        vec![
            format!("istio_tcp_sent_bytes_total{{{}}} 8067", l("-")),
            format!("istio_tcp_sent_bytes_total{{{}}} 0", l("UF,URX")),
        ]
    );
    assert_eq!(
        lines(&text, "istio_tcp_received_bytes_total{"),
        vec![
            format!("istio_tcp_received_bytes_total{{{}}} 825", l("-")),
            format!("istio_tcp_received_bytes_total{{{}}} 0", l("UF,URX")),
        ]
    );
    for name in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        assert_eq!(
            lines(&text, &format!("{name}{{")),
            vec![
                format!("{name}{{{}}} 2", l("-")),
                format!("{name}{{{}}} 1", l("UF,URX")),
            ]
        );
    }
    // No HTTP series, and TCP is not an upstream request.
    assert!(lines(&text, "istio_requests_total{").is_empty());
    assert!(text.contains(&format!(
        "envoy_cluster_upstream_cx_total{{cluster_name=\"{CNN443}\"}} 3\n"
    )));
    assert!(text.contains(&format!(
        "envoy_cluster_upstream_cx_tx_bytes_total{{cluster_name=\"{CNN443}\"}} 825\n"
    )));
    assert!(text.contains(&format!(
        "envoy_cluster_upstream_cx_rx_bytes_total{{cluster_name=\"{CNN443}\"}} 8067\n"
    )));
    assert!(text.contains(&format!(
        "envoy_cluster_upstream_cx_connect_fail{{cluster_name=\"{CNN443}\"}} 1\n"
    )));
    assert!(text.contains(&format!(
        "envoy_cluster_upstream_rq_total{{cluster_name=\"{CNN443}\"}} 0\n"
    )));
}

#[test]
fn refused_grpc_and_kubernetes_destinations() {
    let metrics = Metrics::new(MetricsConfig {
        namespace: "egress".into(),
        ..MetricsConfig::default()
    });
    // No route: no cluster, so Istio's gateway reports the destination as unknown.
    metrics.record(&http_record(None, 404, ResponseFlags::NO_ROUTE_FOUND, 0));
    // gRPC to a Kubernetes service, answered UNAVAILABLE in the headers.
    let mut g = http_record(
        Some("outbound|8080|v1|echo.apps.svc.cluster.local"),
        200,
        ResponseFlags::NONE,
        2,
    );
    g.protocol = Some("HTTP/2");
    // Kept as the data path keeps them: only what the metrics say they read.
    let kept = Metrics::headers();
    if let Some(req) = g.request.as_mut() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc+proto"),
        );
        h.insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
        req.headers = kept.request.capture(&h);
    }
    let mut resp = http::HeaderMap::new();
    resp.insert("grpc-status", http::HeaderValue::from_static("14"));
    g.response_headers = Some(kept.response.capture(&resp));
    metrics.record(&g);

    let text = metrics.render_prometheus(None);
    let got = lines(&text, "istio_requests_total{");
    let src = "source_workload_namespace=\"egress\"";
    assert_eq!(got.len(), 2, "{got:?}");
    let nr = got
        .iter()
        .find(|l| l.contains("response_flags=\"NR\""))
        .copied()
        .unwrap_or_default();
    assert!(nr.contains(src));
    assert!(nr.contains(
        "destination_service=\"unknown\",destination_canonical_service=\"unknown\",\
         destination_canonical_revision=\"latest\",destination_service_name=\"unknown\",\
         destination_service_namespace=\"unknown\""
    ));
    assert!(
        nr.contains("request_protocol=\"http\",response_code=\"404\",grpc_response_status=\"\"")
    );
    assert!(nr.ends_with("} 1"));
    let grpc = got
        .iter()
        .find(|l| l.contains("request_protocol=\"grpc\""))
        .copied()
        .unwrap_or_default();
    assert!(grpc.contains(
        "destination_service=\"echo.apps.svc.cluster.local\",destination_canonical_service=\"unknown\",\
         destination_canonical_revision=\"latest\",destination_service_name=\"echo\",\
         destination_service_namespace=\"apps\""
    ));
    assert!(grpc.contains("response_code=\"200\",grpc_response_status=\"14\",response_flags=\"-\""));
    // Requests without a cluster do not appear in cluster stats.
    assert!(lines(&text, "envoy_cluster_upstream_rq_total{").len() == 1);
}

#[test]
fn series_limit_counts_overflow() {
    let metrics = Metrics::new(MetricsConfig {
        max_series: 2,
        ..MetricsConfig::default()
    });
    for code in [200, 201, 202, 203, 200] {
        metrics.record(&http_record(Some(CNN80), code, ResponseFlags::NONE, 1));
    }
    let text = metrics.render_prometheus(None);
    assert_eq!(lines(&text, "istio_requests_total{").len(), 2);
    assert!(text.contains("egret_metrics_series_overflow_total 2\n"));
}

#[test]
fn concurrent_recording_loses_nothing() {
    // Several threads race to create the same series and then hammer them; every record
    // must be counted exactly once.
    let metrics = Arc::new(Metrics::new(MetricsConfig::default()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let m = metrics.clone();
            std::thread::spawn(move || {
                for i in 0..1000u16 {
                    m.record(&http_record(
                        Some(CNN80),
                        200 + i % 10,
                        ResponseFlags::NONE,
                        1,
                    ));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("recording thread");
    }
    let text = metrics.render_prometheus(None);
    let got = lines(&text, "istio_requests_total{");
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|l| l.ends_with("} 400")), "{got:?}");
    assert!(text.contains(&format!(
        "envoy_cluster_upstream_rq_total{{cluster_name=\"{CNN80}\"}} 4000\n"
    )));
}

#[test]
fn stats_text_uses_envoy_names() {
    let metrics = Metrics::new(MetricsConfig::default());
    for r in [
        http_record(Some(CNN80), 200, ResponseFlags::NONE, 1),
        http_record(Some(CNN80), 504, ResponseFlags::UPSTREAM_REQUEST_TIMEOUT, 1),
    ] {
        metrics.record(&r);
    }
    metrics.record_config_reload(true);
    metrics.record_config_reload(false);
    metrics.record_config_reload(true);
    assert!(metrics.set_access_log_stats(|| (10, 2, 3)));
    assert!(!metrics.set_access_log_stats(|| (0, 0, 0)));
    let text = metrics.render_stats(Some(&snapshot()));
    for line in [
        format!("cluster.{CNN80}.upstream_rq_total: 2"),
        format!("cluster.{CNN80}.upstream_rq_timeout: 1"),
        format!("cluster.{CNN80}.upstream_rq_2xx: 1"),
        format!("cluster.{CNN80}.upstream_rq_5xx: 1"),
        format!("cluster.{CNN80}.upstream_rq_504: 1"),
        format!(
            "istio_requests_total{{{}}}: 1",
            http_labels(504, "", "UT", "http")
        ),
        format!(
            "istio_request_duration_milliseconds_count{{{}}}: 1",
            http_labels(504, "", "UT", "http")
        ),
        "egret_config_reloads_total{result=\"success\"}: 2".to_string(),
        "egret_config_reloads_total{result=\"failure\"}: 1".to_string(),
        "egret_access_log_written_total: 10".to_string(),
        "egret_access_log_dropped_total: 2".to_string(),
        "egret_access_log_queue_depth: 3".to_string(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(!text.contains("_bucket"));
    assert!(!text.contains("# TYPE"));
    assert!(
        lines(&text, "process_resident_memory_bytes: ").len() == 1 || !cfg!(target_os = "linux")
    );
}

// ---- the servers ----------------------------------------------------------------------

struct FakeGateway {
    ready: AtomicBool,
    draining: AtomicBool,
    level: Mutex<String>,
    drains: AtomicUsize,
    quits: AtomicUsize,
    metrics: Arc<Metrics>,
    snapshot: Arc<Snapshot>,
}

impl AdminState for FakeGateway {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }
    fn server_state(&self) -> ServerState {
        if self.draining.load(Ordering::SeqCst) {
            ServerState::Draining
        } else if self.ready() {
            ServerState::Live
        } else {
            ServerState::PreInitializing
        }
    }
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.clone()
    }
    fn config_dump(&self) -> serde_json::Value {
        serde_json::json!({"version": "0123456789ab", "clusters": [CNN80]})
    }
    fn clusters_text(&self) -> String {
        format!("{CNN80}::10.0.0.9:80::health_flags::healthy\n")
    }
    fn set_log_level(&self, level: &str) -> Result<(), String> {
        if level == "bogus" {
            return Err(format!("invalid level {level:?}"));
        }
        *self.level.lock().unwrap() = level.to_string();
        Ok(())
    }
    fn log_level(&self) -> Option<String> {
        Some(self.level.lock().unwrap().clone())
    }
    fn drain_listeners(&self) {
        self.drains.fetch_add(1, Ordering::SeqCst);
    }
    fn quit(&self) {
        self.quits.fetch_add(1, Ordering::SeqCst);
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

fn loopback() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn start() -> (Arc<FakeGateway>, AdminHandles) {
    let gw = Arc::new(FakeGateway {
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        level: Mutex::new("info".into()),
        drains: AtomicUsize::new(0),
        quits: AtomicUsize::new(0),
        metrics: Arc::new(Metrics::new(MetricsConfig::default())),
        snapshot: snapshot(),
    });
    let handles = AdminServers::spawn(
        AdminConfig {
            admin: loopback(),
            health: loopback(),
            prometheus: loopback(),
        },
        gw.clone(),
    )
    .expect("bind loopback");
    (gw, handles)
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

async fn call(addr: Option<SocketAddr>, method: &str, target: &str) -> Reply {
    let addr = addr.expect("server enabled");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {target} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

#[tokio::test]
async fn readiness_flips_on_admin_and_health() {
    let (gw, h) = start();
    let r = call(h.admin_addr(), "GET", "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "PRE_INITIALIZING\n"));
    let r = call(h.health_addr(), "GET", "/healthz/ready").await;
    assert_eq!(r.status, 503);

    gw.ready.store(true, Ordering::SeqCst);
    let r = call(h.admin_addr(), "GET", "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
    let r = call(h.health_addr(), "GET", "/healthz/ready").await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));

    gw.draining.store(true, Ordering::SeqCst);
    let r = call(h.admin_addr(), "GET", "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "DRAINING\n"));
    let r = call(h.health_addr(), "GET", "/healthz/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "DRAINING\n"));
    h.shutdown();
}

#[tokio::test]
async fn admin_endpoints_answer() {
    let (gw, h) = start();
    cnn_sequence(&MetricsSink::new(
        gw.metrics.clone(),
        Arc::new(Collect::default()),
    ));

    let r = call(h.admin_addr(), "GET", "/").await;
    assert_eq!(r.status, 200);
    for endpoint in [
        "/ready",
        "/stats/prometheus",
        "/config_dump",
        "/quitquitquit",
    ] {
        assert!(r.body.contains(endpoint), "{endpoint} listed");
    }

    let r = call(h.admin_addr(), "GET", "/config_dump").await;
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("content-type: application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v, gw.config_dump());

    let r = call(h.admin_addr(), "GET", "/clusters").await;
    assert_eq!((r.status, r.body), (200, gw.clusters_text()));
    // Envoy's JSON form (the trait's default here: no clusters), and an unknown format.
    let r = call(h.admin_addr(), "GET", "/clusters?format=json").await;
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("content-type: application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v, serde_json::json!({"cluster_statuses": []}));
    let r = call(h.admin_addr(), "GET", "/clusters?format=yaml").await;
    assert_eq!(r.status, 400);

    let r = call(h.admin_addr(), "GET", "/stats").await;
    assert_eq!(r.status, 200);
    assert!(r
        .body
        .lines()
        .any(|l| l == format!("cluster.{CNN80}.upstream_cx_connect_fail: 1")));

    let expected = format!(
        "istio_requests_total{{{}}} 3",
        http_labels(200, "", "-", "http")
    );
    for (addr, target) in [
        (h.admin_addr(), "/stats/prometheus"),
        (h.admin_addr(), "/stats?format=prometheus"),
        (h.prometheus_addr(), "/stats/prometheus"),
    ] {
        let r = call(addr, "GET", target).await;
        assert_eq!(r.status, 200, "{target}");
        assert!(r
            .headers
            .contains("content-type: text/plain; version=0.0.4"));
        assert!(r.body.lines().any(|l| l == expected), "{target}");
        assert!(r.body.contains(&format!(
            "envoy_cluster_upstream_cx_connect_fail{{cluster_name=\"{CNN80}\"}} 1\n"
        )));
    }

    for (addr, target) in [
        (h.admin_addr(), "/nope"),
        (h.health_addr(), "/stats/prometheus"),
        (h.prometheus_addr(), "/ready"),
    ] {
        assert_eq!(call(addr, "GET", target).await.status, 404, "{target}");
    }
    let r = call(h.admin_addr(), "GET", "/stats?format=json").await;
    assert_eq!(r.status, 400);
    h.shutdown();
}

#[tokio::test]
async fn state_changes_need_post() {
    let (gw, h) = start();
    for path in ["/quitquitquit", "/drain_listeners"] {
        let r = call(h.admin_addr(), "GET", path).await;
        assert_eq!(r.status, 405, "{path}");
        assert_eq!(r.body, "Method GET not allowed, POST required.\n");
        assert!(r.headers.contains("allow: post"));
    }
    assert_eq!(gw.quits.load(Ordering::SeqCst), 0);
    assert_eq!(gw.drains.load(Ordering::SeqCst), 0);

    let r = call(h.admin_addr(), "POST", "/drain_listeners").await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK\n"));
    assert_eq!(gw.drains.load(Ordering::SeqCst), 1);
    let r = call(h.admin_addr(), "POST", "/quitquitquit").await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK\n"));
    assert_eq!(gw.quits.load(Ordering::SeqCst), 1);

    // Logging: GET shows, GET with a level is refused, POST changes.
    let r = call(h.admin_addr(), "GET", "/logging").await;
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("active level: info\n"));
    let r = call(h.admin_addr(), "GET", "/logging?level=debug").await;
    assert_eq!(r.status, 405);
    assert_eq!(*gw.level.lock().unwrap(), "info");
    let r = call(h.admin_addr(), "POST", "/logging?level=debug").await;
    assert_eq!((r.status, r.body.as_str()), (200, "active level: debug\n"));
    assert_eq!(*gw.level.lock().unwrap(), "debug");
    let r = call(h.admin_addr(), "POST", "/logging?level=bogus").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("invalid level"));
    let r = call(h.admin_addr(), "POST", "/logging").await;
    assert_eq!(r.status, 400);
    assert_eq!(*gw.level.lock().unwrap(), "debug");
    h.shutdown();
}

#[tokio::test]
async fn bind_errors_name_the_address_and_off_disables() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let (gw, _h) = start();
    let err = AdminServers::spawn(
        AdminConfig {
            admin: None,
            health: loopback(),
            prometheus: Some(taken_addr),
        },
        gw.clone(),
    )
    .expect_err("address in use");
    let msg = err.to_string();
    assert!(msg.contains(&taken_addr.to_string()), "{msg}");
    assert!(msg.contains("prometheus"), "{msg}");

    let h = AdminServers::spawn(
        AdminConfig {
            admin: None,
            health: loopback(),
            prometheus: None,
        },
        gw,
    )
    .expect("bind");
    assert_eq!((h.admin_addr(), h.prometheus_addr()), (None, None));
    assert_eq!(
        call(h.health_addr(), "GET", "/healthz/ready").await.status,
        503
    );
}

#[test]
fn spawn_outside_a_runtime_is_an_error() {
    let (gw, _) = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async { start() })
    };
    let err = AdminServers::spawn(AdminConfig::default(), gw).expect_err("no runtime");
    assert!(err.to_string().contains("Tokio runtime"));
}

#[test]
fn default_ports_are_istios() {
    let c = AdminConfig::default();
    assert_eq!(c.admin, Some(SocketAddr::from(([127, 0, 0, 1], 15000))));
    assert_eq!(c.health, Some(SocketAddr::from(([0, 0, 0, 0], 15021))));
    assert_eq!(c.prometheus, Some(SocketAddr::from(([0, 0, 0, 0], 15090))));
}
