//! DestinationRule `loadBalancer`, `connectionPool` and `outlierDetection` compile into the
//! cluster as Istio configures Envoy; invalid values are errors with their field.

use std::path::PathBuf;
use std::time::Duration;

use egret_config::{compile, load_sources, CompileOptions, Compiled, Diagnostic, LoadOptions};
use egret_core::{HashPolicy, LbPolicy, TcpKeepalive, UpstreamProtocol};

fn dedent(s: &str) -> String {
    let s = s.strip_prefix('\n').unwrap_or(s);
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    s.lines()
        .map(|l| l.get(indent..).unwrap_or(l.trim_start()))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

const BASE: &str = "
    apiVersion: networking.istio.io/v1
    kind: Gateway
    metadata: {name: gw}
    spec:
      selector: {istio: egressgateway}
      servers:
      - port: {number: 80, name: http, protocol: HTTP}
        hosts: ['*']
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: api}
    spec:
      hosts: [api.example.com]
      ports:
      - {number: 80, name: http, protocol: HTTP}
      resolution: DNS
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: vs}
    spec:
      hosts: [api.example.com]
      gateways: [gw]
      http:
      - route:
        - destination: {host: api.example.com}
";

fn with_dr(dr: &str) -> Result<Compiled, Vec<Diagnostic>> {
    let sources = vec![
        (PathBuf::from("a.yaml"), dedent(BASE)),
        (PathBuf::from("dr.yaml"), dedent(dr)),
    ];
    let loaded = load_sources(&sources, &LoadOptions::default()).map_err(|e| e.errors)?;
    compile(&loaded, &CompileOptions::default())
}

fn dr(policy: &str) -> String {
    let mut s = String::from(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr}\nspec:\n  host: api.example.com\n  trafficPolicy:\n",
    );
    for l in dedent(policy).lines() {
        s.push_str("    ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

const CLUSTER: &str = "outbound|80||api.example.com";

#[test]
fn connection_pool_outlier_detection_and_hash_compile() {
    let c = with_dr(&dr("
        connectionPool:
          tcp:
            maxConnections: 7
            connectTimeout: 250ms
            maxConnectionDuration: 1h
            tcpKeepalive: {time: 60s, interval: 10s, probes: 3}
          http:
            http1MaxPendingRequests: 3
            http2MaxRequests: 100
            maxRequestsPerConnection: 2
            maxRetries: 4
            idleTimeout: 30s
            h2UpgradePolicy: UPGRADE
        loadBalancer:
          consistentHash:
            httpHeaderName: X-User
        outlierDetection:
          consecutive5xxErrors: 3
          consecutiveGatewayErrors: 2
          interval: 2s
          baseEjectionTime: 15s
          maxEjectionPercent: 50
    "))
    .expect("compiles");
    // Every field here is implemented: no warning.
    let warned: Vec<&str> = c
        .warnings
        .iter()
        .filter_map(|w| w.field.as_deref())
        .collect();
    assert!(warned.is_empty(), "{warned:?}");
    let cl = c.snapshot.cluster(CLUSTER).expect("cluster");
    let p = &cl.traffic.pool;
    assert_eq!(
        (
            p.max_connections,
            p.max_pending_requests,
            p.max_requests,
            p.max_retries
        ),
        (7, 3, 100, 4)
    );
    assert_eq!(p.max_requests_per_connection, Some(2));
    assert_eq!(p.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(p.max_connection_duration, Some(Duration::from_secs(3600)));
    assert_eq!(
        p.tcp_keepalive,
        Some(TcpKeepalive {
            probes: Some(3),
            time: Some(Duration::from_secs(60)),
            interval: Some(Duration::from_secs(10)),
        })
    );
    assert_eq!(cl.connect_timeout, Duration::from_millis(250));
    // h2UpgradePolicy: UPGRADE on an HTTP port: HTTP/2 to the endpoints.
    assert_eq!(cl.protocol, UpstreamProtocol::Http2);
    assert_eq!(
        cl.lb,
        LbPolicy::RingHash {
            minimum_ring_size: 1024
        }
    );
    assert_eq!(
        cl.traffic.hash,
        Some(HashPolicy::Header(http::HeaderName::from_static("x-user")))
    );
    let o = cl.traffic.outlier.as_ref().expect("outlier detection");
    assert_eq!(o.consecutive_5xx, Some(3));
    assert_eq!(o.consecutive_gateway_errors, Some(2));
    assert_eq!(o.interval, Duration::from_secs(2));
    assert_eq!(o.base_ejection_time, Duration::from_secs(15));
    assert_eq!(o.max_ejection_percent, 50);
    assert_eq!(o.min_health_percent, 0);
}

#[test]
fn istio_defaults() {
    // No DestinationRule: LEAST_REQUEST, no limits, no outlier detection.
    let c = with_dr("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr}\nspec:\n  host: api.example.com\n").expect("compiles");
    let cl = c.snapshot.cluster(CLUSTER).expect("cluster");
    assert_eq!(cl.lb, LbPolicy::LeastRequest);
    assert_eq!(cl.traffic.pool.max_connections, u32::MAX);
    assert_eq!(cl.traffic.pool.max_pending_requests, u32::MAX);
    assert!(cl.traffic.outlier.is_none());
    assert_eq!(cl.protocol, UpstreamProtocol::Http1);
    // An empty outlierDetection: Envoy's defaults (5 consecutive 5xx, 10 s, 30 s, 10%).
    let c = with_dr(&dr("outlierDetection: {}")).expect("compiles");
    let o = c
        .snapshot
        .cluster(CLUSTER)
        .unwrap()
        .traffic
        .outlier
        .clone()
        .unwrap();
    assert_eq!(o.consecutive_5xx, Some(5));
    assert_eq!(o.consecutive_gateway_errors, None);
    assert_eq!(
        (o.interval, o.base_ejection_time, o.max_ejection_percent),
        (Duration::from_secs(10), Duration::from_secs(30), 10)
    );
    // consecutive5xxErrors: 0 turns that detection off.
    let c = with_dr(&dr(
        "outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 3}",
    ))
    .expect("compiles");
    let o = c
        .snapshot
        .cluster(CLUSTER)
        .unwrap()
        .traffic
        .outlier
        .clone()
        .unwrap();
    assert_eq!(
        (o.consecutive_5xx, o.consecutive_gateway_errors),
        (None, Some(3))
    );
    for (simple, lb) in [
        ("ROUND_ROBIN", LbPolicy::RoundRobin),
        ("RANDOM", LbPolicy::Random),
        ("LEAST_CONN", LbPolicy::LeastRequest),
        ("UNSPECIFIED", LbPolicy::LeastRequest),
    ] {
        let c = with_dr(&dr(&format!("loadBalancer: {{simple: {simple}}}"))).expect("compiles");
        assert_eq!(c.snapshot.cluster(CLUSTER).unwrap().lb, lb, "{simple}");
        assert!(c.warnings.is_empty(), "{simple}: {:#?}", c.warnings);
    }
}

#[test]
fn hash_keys_and_algorithms() {
    let cases = [
        (
            "consistentHash: {useSourceIp: true, maglev: {tableSize: 1031}}",
            LbPolicy::Maglev { table_size: 1031 },
            HashPolicy::SourceIp,
        ),
        (
            "consistentHash: {httpQueryParameterName: user, ringHash: {minimumRingSize: 64}}",
            LbPolicy::RingHash {
                minimum_ring_size: 64,
            },
            HashPolicy::QueryParameter("user".into()),
        ),
        (
            "consistentHash: {httpCookie: {name: session}, minimumRingSize: 128}",
            LbPolicy::RingHash {
                minimum_ring_size: 128,
            },
            HashPolicy::Cookie {
                name: "session".into(),
            },
        ),
    ];
    for (yaml, lb, hash) in cases {
        let c = with_dr(&dr(&format!("loadBalancer:\n  {yaml}"))).expect("compiles");
        let cl = c.snapshot.cluster(CLUSTER).unwrap();
        assert_eq!(cl.lb, lb, "{yaml}");
        assert_eq!(cl.traffic.hash.as_ref(), Some(&hash), "{yaml}");
    }
}

#[test]
fn warnings_and_errors_name_the_field() {
    let c = with_dr(&dr("
        loadBalancer: {simple: PASSTHROUGH}
        connectionPool:
          http: {useClientProtocol: true}
        outlierDetection: {consecutiveErrors: 5}
    "))
    .expect("compiles");
    let fields: Vec<&str> = c
        .warnings
        .iter()
        .filter_map(|w| w.field.as_deref())
        .collect();
    for f in [
        "spec.trafficPolicy.loadBalancer.simple",
        "spec.trafficPolicy.connectionPool.http.useClientProtocol",
        "spec.trafficPolicy.outlierDetection.consecutiveErrors",
    ] {
        assert!(fields.contains(&f), "no warning for {f}: {:#?}", c.warnings);
    }
    let c = with_dr(&dr(
        "loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: 10s}}}",
    ))
    .expect("compiles");
    assert!(c.warnings.iter().any(|w| w.field.as_deref()
        == Some("spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl")));

    for (yaml, field) in [
        (
            "loadBalancer: {consistentHash: {}}",
            "spec.trafficPolicy.loadBalancer.consistentHash",
        ),
        (
            "loadBalancer: {consistentHash: {httpHeaderName: a, useSourceIp: true}}",
            "spec.trafficPolicy.loadBalancer.consistentHash",
        ),
        (
            "loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        ),
        (
            "loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}",
            "spec.trafficPolicy.loadBalancer",
        ),
        (
            "connectionPool: {tcp: {maxConnections: -1}}",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        ),
        (
            "connectionPool: {http: {h2UpgradePolicy: SOMETIMES}}",
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
        ),
        (
            "outlierDetection: {maxEjectionPercent: 101}",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        ),
    ] {
        let errs = with_dr(&dr(yaml))
            .err()
            .unwrap_or_else(|| panic!("{yaml}: no error"));
        assert!(
            errs.iter().any(|e| e.field.as_deref() == Some(field)),
            "{yaml}: {errs:#?}"
        );
    }
}

#[test]
fn port_level_and_subset_policies_apply_to_their_cluster() {
    let c = with_dr(&dr("
        outlierDetection: {consecutive5xxErrors: 2}
        portLevelSettings:
        - port: {number: 80}
          connectionPool: {tcp: {maxConnections: 1}}
    "))
    .expect("compiles");
    let cl = c.snapshot.cluster(CLUSTER).unwrap();
    // Istio: port-level settings replace the top level wholesale.
    assert_eq!(cl.traffic.pool.max_connections, 1);
    assert!(cl.traffic.outlier.is_none());
}
