//! The tee between the data path and the access log: count, then forward.

use std::sync::Arc;

use egret_core::{AccessLogSink, LogHeaders, LogRecord};

use crate::Metrics;

/// An [`AccessLogSink`] that updates [`Metrics`] from each finished record and hands the record
/// on to `inner` (the access-log writer). Put it where the writer was; the data path keeps
/// calling `log()` once per request / connection and pays a few atomic adds for the metrics.
pub struct MetricsSink<S: ?Sized> {
    metrics: Arc<Metrics>,
    inner: Arc<S>,
}

impl<S: AccessLogSink + ?Sized> MetricsSink<S> {
    /// Also tells `inner` to keep the headers the metrics read.
    pub fn new(metrics: Arc<Metrics>, inner: Arc<S>) -> MetricsSink<S> {
        inner.keep_headers(&Metrics::headers());
        MetricsSink { metrics, inner }
    }
}

impl<S: ?Sized> MetricsSink<S> {
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }
}

impl<S: AccessLogSink + ?Sized> AccessLogSink for MetricsSink<S> {
    fn log(&self, record: Box<LogRecord>) {
        self.metrics.record(&record);
        self.inner.log(record);
    }

    fn headers(&self) -> LogHeaders {
        self.inner.headers()
    }

    fn keep_headers(&self, also: &LogHeaders) {
        self.inner.keep_headers(also);
    }
}
