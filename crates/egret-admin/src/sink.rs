//! The tee between the data path and the access log: count, then forward.

use std::sync::Arc;

use egret_core::{AccessLogSink, LogRecord};

use crate::Metrics;

/// An [`AccessLogSink`] that updates [`Metrics`] from each finished record and hands the record
/// on to `inner` (the access-log writer). Put it where the writer was; the data path keeps
/// calling `log()` once per request / connection and pays a few atomic adds for the metrics.
pub struct MetricsSink<S: ?Sized> {
    metrics: Arc<Metrics>,
    inner: Arc<S>,
}

impl<S: ?Sized> MetricsSink<S> {
    pub fn new(metrics: Arc<Metrics>, inner: Arc<S>) -> MetricsSink<S> {
        MetricsSink { metrics, inner }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }
}

impl<S: AccessLogSink + ?Sized> AccessLogSink for MetricsSink<S> {
    fn log(&self, record: LogRecord) {
        self.metrics.record(&record);
        self.inner.log(record);
    }
}
