//! Egret's operations surface: the admin, health and Prometheus HTTP servers, and the metrics
//! they expose.
//!
//! This crate owns [`Metrics`] (Istio's standard metrics, Envoy's per-cluster counters, config
//! reload, access-log and process metrics, rendered as Prometheus text), the
//! [`MetricsSink`] that feeds them from the finished access-log records the data path already
//! produces, and the [`AdminServers`] (`:15000` admin, `:15021` health, `:15090` Prometheus).
//! It must not reach into the data path: it learns about traffic only through
//! [`egret_core::LogRecord`]s and about the gateway only through the [`AdminState`] trait the
//! binary implements. Recording a record costs atomic increments, no lock and no allocation;
//! the work (aggregation, label rendering) happens when someone scrapes.

#![forbid(unsafe_code)]

mod expo;
mod labels;
mod metrics;
mod process;
mod server;
mod sink;

pub use metrics::{
    GatewayCounter, Metrics, MetricsConfig, BYTES_BUCKETS, DURATION_BUCKETS_MS, MAX_SERIES,
};
pub use server::{AdminConfig, AdminHandles, AdminServers, AdminState, ServerState};
pub use sink::MetricsSink;
