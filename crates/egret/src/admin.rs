//! What the admin endpoints see of the running gateway (`egret-admin`'s `AdminState`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;

use egret_admin::{AdminState, Metrics, ServerState};
use egret_core::{Discovery, ListenerRoutes, RouteAction, Snapshot};
use egret_listener::Gateway;

pub type LogLevelHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

pub struct GatewayAdmin {
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    /// Listeners bound and the first configuration loaded.
    pub ready: AtomicBool,
    /// Waiting for the first configuration to appear in the `--config` paths (Envoy's
    /// INITIALIZING: waiting for its initial xDS).
    pub initializing: AtomicBool,
    pub draining: AtomicBool,
    /// Wakes the main loop for `/quitquitquit`.
    pub quit: Arc<Notify>,
    pub drain_timeout: Duration,
    pub log_level: Option<LogLevelHandle>,
    pub current_level: std::sync::Mutex<String>,
}

impl AdminState for GatewayAdmin {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    fn server_state(&self) -> ServerState {
        if self.draining.load(Ordering::Relaxed) {
            ServerState::Draining
        } else if self.ready.load(Ordering::Relaxed) {
            ServerState::Live
        } else if self.initializing.load(Ordering::Relaxed) {
            ServerState::Initializing
        } else {
            ServerState::PreInitializing
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.gateway.snapshot()
    }

    fn config_dump(&self) -> Value {
        config_dump(&self.gateway.snapshot())
    }

    /// Envoy's `/clusters` text form: limits and live counts per cluster, and per endpoint
    /// Envoy's host statistics (active and total connections and requests, failures), its
    /// health (outlier ejection) and ejections.
    fn clusters_text(&self) -> String {
        use std::fmt::Write as _;
        let active = self.gateway.config.load();
        let mut out = String::new();
        for (name, state) in sorted_clusters(&active.upstreams) {
            let spec = &state.spec;
            let circuit = state.circuit();
            let l = &circuit.limits;
            for (key, value) in [
                ("max_connections", l.max_connections),
                ("max_pending_requests", l.max_pending_requests),
                ("max_requests", l.max_requests),
                ("max_retries", l.max_retries),
            ] {
                let _ = writeln!(out, "{name}::default_priority::{key}::{value}");
            }
            let _ = writeln!(out, "{name}::added_via_api::false");
            let _ = writeln!(out, "{name}::cx_active::{}", circuit.connections());
            let _ = writeln!(out, "{name}::rq_pending_active::{}", circuit.pending());
            let _ = writeln!(out, "{name}::rq_active::{}", circuit.requests());
            let _ = writeln!(
                out,
                "{name}::idle_connections::{}",
                self.gateway.shared.pool.idle_count(name)
            );
            let _ = writeln!(out, "{name}::connect_timeout::{:?}", spec.connect_timeout);
            let tls = spec.tls.as_ref().map_or("none".to_string(), |t| {
                format!("{:?} sni={}", t.mode, t.sni)
            });
            let _ = writeln!(out, "{name}::tls::{tls}");
            let hostname = hostname(&spec.discovery);
            for ep in state.endpoint_states() {
                let addr = ep.addr;
                for (stat, value) in ep.counts().named() {
                    let _ = writeln!(out, "{name}::{addr}::{stat}::{value}");
                }
                let _ = writeln!(out, "{name}::{addr}::hostname::{hostname}");
                let health = if ep.is_ejected() {
                    "/failed_outlier_check"
                } else {
                    "healthy"
                };
                let _ = writeln!(out, "{name}::{addr}::health_flags::{health}");
                let _ = writeln!(out, "{name}::{addr}::weight::1");
                let _ = writeln!(out, "{name}::{addr}::ejections::{}", ep.ejections());
            }
        }
        out
    }

    /// Envoy's `/clusters?format=json` (`envoy.admin.v3.Clusters`, as `istioctl proxy-config
    /// endpoint` reads it): zero-valued statistics are left out, as Envoy does.
    fn clusters_json(&self) -> Value {
        let active = self.gateway.config.load();
        let statuses: Vec<Value> = sorted_clusters(&active.upstreams)
            .into_iter()
            .map(|(name, state)| {
                let l = &state.circuit().limits;
                let hostname = hostname(&state.spec.discovery);
                let hosts: Vec<Value> = state
                    .endpoint_states()
                    .iter()
                    .map(|ep| {
                        let stats: Vec<Value> = ep
                            .counts()
                            .named()
                            .into_iter()
                            .filter(|(_, v)| *v != 0)
                            .map(|(n, v)| {
                                let kind = if egret_upstream::HostCounts::is_gauge(n) {
                                    "GAUGE"
                                } else {
                                    "COUNTER"
                                };
                                json!({"type": kind, "name": n, "value": v})
                            })
                            .collect();
                        let mut health = json!({"eds_health_status": "HEALTHY"});
                        if ep.is_ejected() {
                            health["failed_outlier_check"] = json!(true);
                        }
                        let mut host = json!({
                            "address": {"socket_address": {
                                "address": ep.addr.ip().to_string(),
                                "port_value": ep.addr.port(),
                            }},
                            "stats": stats,
                            "health_status": health,
                            "weight": 1,
                        });
                        if !hostname.is_empty() {
                            host["hostname"] = json!(hostname);
                        }
                        host
                    })
                    .collect();
                json!({
                    "name": &**name,
                    "observability_name": &**name,
                    "circuit_breakers": {"thresholds": [{
                        "max_connections": l.max_connections,
                        "max_pending_requests": l.max_pending_requests,
                        "max_requests": l.max_requests,
                        "max_retries": l.max_retries,
                    }]},
                    "host_statuses": hosts,
                })
            })
            .collect();
        json!({ "cluster_statuses": statuses })
    }

    fn set_log_level(&self, level: &str) -> Result<(), String> {
        let Some(handle) = &self.log_level else {
            return Err("log level cannot be changed (EGRET_LOG fixed it)".into());
        };
        let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())?;
        *self.current_level.lock().unwrap_or_else(|p| p.into_inner()) = level.to_string();
        Ok(())
    }

    fn log_level(&self) -> Option<String> {
        Some(
            self.current_level
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    fn drain_listeners(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let gw = self.gateway.clone();
        let timeout = self.drain_timeout;
        tokio::spawn(async move {
            gw.drain(timeout).await;
        });
    }

    fn quit(&self) {
        self.quit.notify_one();
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The clusters in force, by name (stable output for people and tests).
fn sorted_clusters(
    upstreams: &egret_upstream::Upstreams,
) -> Vec<(&Arc<str>, &Arc<egret_upstream::ClusterState>)> {
    let mut v: Vec<_> = upstreams.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// Envoy's `hostname` of a cluster's hosts: the DNS name they were resolved from (empty for
/// STATIC endpoints, and when several names feed one cluster).
fn hostname(discovery: &Discovery) -> &str {
    match discovery {
        Discovery::StrictDns { targets } if targets.len() == 1 => &targets[0].host,
        Discovery::LogicalDns { target } => &target.host,
        _ => "",
    }
}

/// The compiled configuration as JSON: what is actually in force (listeners, routes,
/// clusters) plus its version.
pub fn config_dump(s: &Snapshot) -> Value {
    let listeners: Vec<Value> = s
        .listeners
        .iter()
        .map(|l| {
            let routes = match &l.routes {
                ListenerRoutes::Http(t) => route_config_json(t),
                ListenerRoutes::Https(ts) => json!({
                    "route_configs": ts.iter().map(|t| route_config_json(t)).collect::<Vec<_>>(),
                }),
                ListenerRoutes::Sni(t) => json!({
                    "sni_routes": t.routes.iter().map(|r| json!({
                        "sni_hosts": r.sni_hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                        "clusters": r.clusters.clusters.iter().map(|c| json!({"name": &*c.cluster, "weight": c.weight})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                }),
                ListenerRoutes::Tcp(t) => json!({
                    "tcp_route": t.clusters.as_ref().map(|w| w.clusters.iter().map(|c| json!({"name": &*c.cluster, "weight": c.weight})).collect::<Vec<_>>()),
                }),
            };
            json!({
                "name": l.name,
                "service_port": l.service_port,
                "listen_port": l.listen_port,
                "protocol": format!("{:?}", l.protocol),
                "tls": l.tls_servers.iter().map(|t| json!({
                    "hosts": t.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                    "mode": format!("{:?}", t.tls.mode),
                    "credential_name": t.tls.source.credential_name,
                    "origin": t.tls.origin,
                })).collect::<Vec<_>>(),
                "routes": routes,
            })
        })
        .collect();
    let clusters: Vec<Value> = s
        .clusters
        .values()
        .map(|c| {
            let discovery = match &c.discovery {
                Discovery::StrictDns { targets } => json!({"type": "STRICT_DNS", "targets": targets.iter().map(|t| format!("{}:{}", t.host, t.port)).collect::<Vec<_>>()}),
                Discovery::LogicalDns { target } => json!({"type": "LOGICAL_DNS", "targets": [format!("{}:{}", target.host, target.port)]}),
                Discovery::Static { endpoints } => json!({"type": "STATIC", "endpoints": endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>()}),
            };
            json!({
                "name": &*c.name,
                "discovery": discovery,
                "lb_policy": format!("{:?}", c.lb),
                "connect_timeout_ms": c.connect_timeout.as_millis() as u64,
                "protocol": format!("{:?}", c.protocol),
                "tls": c.tls.as_ref().map(|t| json!({
                    "mode": format!("{:?}", t.mode),
                    "sni": t.sni,
                    "subject_alt_names": t.subject_alt_names,
                    "credential_name": t.source.credential_name,
                    "ca_certificates": t.source.ca_certificates,
                    "insecure_skip_verify": t.insecure_skip_verify,
                    "origin": t.origin,
                })),
            })
        })
        .collect();
    json!({ "version": &*s.version, "listeners": listeners, "clusters": clusters })
}

/// One HTTP route table (an RDS route configuration) as JSON.
fn route_config_json(t: &egret_core::HttpRouteTable) -> Value {
    json!({
        "route_config": t.name,
        "virtual_hosts": t.virtual_hosts.iter().map(|vh| json!({
            "name": vh.name,
            "domains": vh.domains.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "routes": vh.routes.iter().map(|r| json!({
                "name": r.name.as_deref(),
                "match": format!("{:?}", r.matches),
                "timeout_ms": r.timeout.map(|t| t.as_millis() as u64),
                "action": match &r.action {
                    RouteAction::Forward(w) => json!({"clusters": w.clusters.iter().map(|c| json!({"name": &*c.cluster, "weight": c.weight})).collect::<Vec<_>>()}),
                    RouteAction::Direct { status, body } => json!({"direct_response": {"status": status, "body": body}}),
                    RouteAction::Redirect(r) => json!({"redirect": {"status": r.status, "scheme": r.scheme, "host": r.host, "port": r.port, "path": r.path}}),
                },
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
