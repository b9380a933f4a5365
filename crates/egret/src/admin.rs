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
    /// its health (outlier ejection) and requests in flight.
    fn clusters_text(&self) -> String {
        let active = self.gateway.config.load();
        let mut out = String::new();
        for (name, state) in active.upstreams.iter() {
            let spec = &state.spec;
            let circuit = state.circuit();
            let l = &circuit.limits;
            for (key, value) in [
                ("max_connections", l.max_connections),
                ("max_pending_requests", l.max_pending_requests),
                ("max_requests", l.max_requests),
                ("max_retries", l.max_retries),
            ] {
                out.push_str(&format!("{name}::default_priority::{key}::{value}\n"));
            }
            out.push_str(&format!("{name}::cx_active::{}\n", circuit.connections()));
            out.push_str(&format!(
                "{name}::rq_pending_active::{}\n",
                circuit.pending()
            ));
            out.push_str(&format!("{name}::rq_active::{}\n", circuit.requests()));
            out.push_str(&format!(
                "{name}::idle_connections::{}\n",
                self.gateway.shared.pool.idle_count(name)
            ));
            out.push_str(&format!(
                "{name}::connect_timeout::{:?}\n",
                spec.connect_timeout
            ));
            let tls = spec.tls.as_ref().map_or("none".to_string(), |t| {
                format!("{:?} sni={}", t.mode, t.sni)
            });
            out.push_str(&format!("{name}::tls::{tls}\n"));
            for ep in state.endpoint_states() {
                let addr = ep.addr;
                let health = if ep.is_ejected() {
                    "/failed_outlier_check"
                } else {
                    "healthy"
                };
                out.push_str(&format!("{name}::{addr}::health_flags::{health}\n"));
                out.push_str(&format!(
                    "{name}::{addr}::rq_active::{}\n",
                    ep.active_requests()
                ));
                out.push_str(&format!("{name}::{addr}::ejections::{}\n", ep.ejections()));
            }
        }
        out
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

/// The compiled configuration as JSON: what is actually in force (listeners, routes,
/// clusters) plus its version.
pub fn config_dump(s: &Snapshot) -> Value {
    let listeners: Vec<Value> = s
        .listeners
        .iter()
        .map(|l| {
            let routes = match &l.routes {
                ListenerRoutes::Http(t) => json!({
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
