//! DestinationRule `loadBalancer`, `connectionPool` and `outlierDetection` → the cluster's
//! [`LbPolicy`] and [`ClusterTraffic`], as Istio's cluster builder sets Envoy's circuit
//! breakers, HTTP protocol options, outlier detector and hash policy. Invalid values were
//! already refused by validation; here only Istio's "unset or non-positive means default"
//! rules apply.

use std::time::Duration;

use egret_core::{
    ClusterTraffic, ConnectionPool, HashPolicy, LbPolicy, OutlierDetection as CoreOutlier,
    TcpKeepalive,
};

use crate::istio::{
    ConnectionPoolSettings, ConsistentHashLb, LoadBalancerSettings, OutlierDetection, SimpleLb,
};

/// Envoy's default ring size when Istio sets none (`minimumRingSize` 1024).
const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Envoy's default Maglev table size.
const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;

pub(crate) fn cluster_traffic(
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
) -> (LbPolicy, ClusterTraffic) {
    let (policy, hash) = load_balancer(lb);
    let traffic = ClusterTraffic {
        pool: pool.map(connection_pool).unwrap_or_default(),
        outlier: outlier.map(outlier_detection),
        hash,
    };
    (policy, traffic)
}

/// Istio's `shouldH2Upgrade` for a cluster of an HTTP port: `h2UpgradePolicy: UPGRADE`
/// (unless `useClientProtocol`). The mesh default is DO_NOT_UPGRADE.
pub(crate) fn h2_upgrade(pool: Option<&ConnectionPoolSettings>) -> bool {
    pool.and_then(|p| p.http.as_ref()).is_some_and(|h| {
        h.use_client_protocol != Some(true) && h.h2_upgrade_policy.as_deref() == Some("UPGRADE")
    })
}

fn load_balancer(lb: Option<&LoadBalancerSettings>) -> (LbPolicy, Option<HashPolicy>) {
    let Some(lb) = lb else {
        return (LbPolicy::default(), None);
    };
    if let Some(ch) = &lb.consistent_hash {
        if let Some(hash) = hash_policy(ch) {
            return (hash_algorithm(ch), Some(hash));
        }
    }
    let policy = match lb.simple {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        // LEAST_CONN is LEAST_REQUEST's deprecated name; PASSTHROUGH (warned) and UNSPECIFIED
        // get Istio's default.
        _ => LbPolicy::LeastRequest,
    };
    (policy, None)
}

fn hash_policy(ch: &ConsistentHashLb) -> Option<HashPolicy> {
    if let Some(name) = ch.http_header_name.as_deref() {
        let name =
            http::HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()).ok()?;
        return Some(HashPolicy::Header(name));
    }
    if let Some(c) = &ch.http_cookie {
        let name = c.name.as_deref()?.trim().to_string();
        return Some(HashPolicy::Cookie { name });
    }
    if ch.use_source_ip == Some(true) {
        return Some(HashPolicy::SourceIp);
    }
    ch.http_query_parameter_name
        .clone()
        .map(HashPolicy::QueryParameter)
}

/// Istio's `ApplyRingHashLoadBalancer`: maglev when asked, else a ring (with the deprecated
/// top-level `minimumRingSize` or Envoy's 1024).
fn hash_algorithm(ch: &ConsistentHashLb) -> LbPolicy {
    if let Some(m) = &ch.maglev {
        return LbPolicy::Maglev {
            table_size: m
                .table_size
                .filter(|s| *s > 0)
                .unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
        };
    }
    let minimum_ring_size = ch
        .ring_hash
        .as_ref()
        .and_then(|r| r.minimum_ring_size)
        .or(ch.minimum_ring_size)
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_MIN_RING_SIZE);
    LbPolicy::RingHash { minimum_ring_size }
}

/// Istio's `applyConnectionPool`: thresholds only when > 0 (else "no limit").
fn connection_pool(p: &ConnectionPoolSettings) -> ConnectionPool {
    let positive = |v: Option<i32>| v.filter(|v| *v > 0).map(|v| v as u32);
    let mut out = ConnectionPool::default();
    if let Some(http) = &p.http {
        if let Some(v) = positive(http.http2_max_requests) {
            out.max_requests = v;
        }
        if let Some(v) = positive(http.http1_max_pending_requests) {
            out.max_pending_requests = v;
        }
        if let Some(v) = positive(http.max_retries) {
            out.max_retries = v;
        }
        out.max_requests_per_connection = positive(http.max_requests_per_connection);
        out.idle_timeout = http.idle_timeout.as_ref().map(|d| d.value);
    }
    if let Some(tcp) = &p.tcp {
        if let Some(v) = positive(tcp.max_connections) {
            out.max_connections = v;
        }
        out.max_connection_duration = tcp
            .max_connection_duration
            .as_ref()
            .map(|d| d.value)
            .filter(|d| !d.is_zero());
        if out.idle_timeout.is_none() {
            out.idle_timeout = tcp.idle_timeout.as_ref().map(|d| d.value);
        }
        out.tcp_keepalive = tcp.tcp_keepalive.as_ref().map(|k| TcpKeepalive {
            probes: k.probes.filter(|p| *p > 0),
            time: k.time.as_ref().map(|d| d.value),
            interval: k.interval.as_ref().map(|d| d.value),
        });
    }
    // An idle timeout of 0 means "never" in Envoy.
    if out.idle_timeout.is_some_and(|d| d.is_zero()) {
        out.idle_timeout = Some(Duration::MAX);
    }
    out
}

/// Istio's `applyOutlierDetection` over Envoy's defaults.
fn outlier_detection(o: &OutlierDetection) -> CoreOutlier {
    let d = CoreOutlier::default();
    let split = o.split_external_local_origin_errors == Some(true);
    let base = o
        .base_ejection_time
        .as_ref()
        .map(|i| i.value)
        .filter(|i| !i.is_zero())
        .unwrap_or(d.base_ejection_time);
    CoreOutlier {
        // Unset: Envoy's default (5, enforced). 0: not enforced.
        consecutive_5xx: match o.consecutive_5xx_errors {
            None => d.consecutive_5xx,
            Some(0) => None,
            Some(n) => Some(n),
        },
        consecutive_gateway_errors: o.consecutive_gateway_errors.filter(|n| *n > 0),
        split_local_origin: split,
        consecutive_local_origin_failures: if split {
            o.consecutive_local_origin_failures.filter(|n| *n > 0)
        } else {
            None
        },
        interval: o
            .interval
            .as_ref()
            .map(|i| i.value)
            .filter(|i| !i.is_zero())
            .unwrap_or(d.interval),
        base_ejection_time: base,
        // Istio leaves Envoy's 300 s; Envoy refuses a base above it, we stretch the cap.
        max_ejection_time: d.max_ejection_time.max(base),
        max_ejection_percent: o
            .max_ejection_percent
            .filter(|p| *p > 0)
            .map_or(d.max_ejection_percent, |p| p.min(100) as u32),
        min_health_percent: o.min_health_percent.map_or(0, |p| p.clamp(0, 100) as u32),
    }
}
