//! Text output for `/stats/prometheus` (Prometheus text exposition format 0.0.4, what Envoy
//! serves on `:15090`) and `/stats` (Envoy-style `name: value` lines), from one code path.
//!
//! Hand-written rather than through `prometheus-client`: that crate's `Family` takes a lock on
//! every observation and appends its own suffixes (`_total`) and OpenMetrics trailer (`# EOF`),
//! while we need Envoy's exact names, lock-free recording and a renderer for two formats. The
//! format itself is a few lines: `# HELP`/`# TYPE`, then `name{labels} value`.

use std::fmt::{Display, Write as _};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// Envoy `/stats`-style: `name: value`, counters and gauges only (histograms as `_count`
    /// and `_sum`), Envoy's dotted names for cluster stats.
    Stats,
}

pub(crate) struct Out {
    format: Format,
    pub(crate) buf: String,
}

impl Out {
    pub(crate) fn new(format: Format) -> Out {
        Out {
            format,
            buf: String::with_capacity(16 * 1024),
        }
    }

    /// Starts a metric family. Every sample of a family must follow before the next family.
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        if self.format == Format::Prometheus {
            let _ = writeln!(self.buf, "# HELP {name} {help}");
            let _ = writeln!(self.buf, "# TYPE {name} {kind}");
        }
    }

    /// One sample; `labels` is already rendered (`a="b",c="d"`), possibly empty.
    pub(crate) fn sample(&mut self, name: &str, labels: &str, value: impl Display) {
        self.buf.push_str(name);
        if !labels.is_empty() {
            self.buf.push('{');
            self.buf.push_str(labels);
            self.buf.push('}');
        }
        self.buf.push_str(if self.format == Format::Prometheus {
            " "
        } else {
            ": "
        });
        let _ = writeln!(self.buf, "{value}");
    }

    /// A histogram: cumulative `_bucket` lines (Prometheus only), then `_sum` and `_count`.
    /// `counts` are per-bucket (not cumulative), one more than `bounds` (the `+Inf` bucket).
    pub(crate) fn histogram(
        &mut self,
        name: &str,
        labels: &str,
        bounds: &[f64],
        counts: &[u64],
        sum: u64,
    ) {
        let mut cumulative = 0u64;
        if self.format == Format::Prometheus {
            for (i, count) in counts.iter().enumerate() {
                cumulative = cumulative.saturating_add(*count);
                self.buf.push_str(name);
                self.buf.push_str("_bucket{");
                self.buf.push_str(labels);
                if !labels.is_empty() {
                    self.buf.push(',');
                }
                // Rust prints f64 without an exponent (1e9 → 1000000000), as Envoy does.
                match bounds.get(i) {
                    Some(b) => {
                        let _ = write!(self.buf, "le=\"{b}\"");
                    }
                    None => self.buf.push_str("le=\"+Inf\""),
                }
                let _ = writeln!(self.buf, "}} {cumulative}");
            }
        } else {
            cumulative = counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }

    /// An Envoy cluster statistic: `envoy_cluster_<stat>{cluster_name="…"[,tag]}` in
    /// Prometheus form, `cluster.<name>.<envoy_name>: value` in `/stats` form (Envoy's own
    /// spelling, e.g. `cluster.outbound|80||edition.cnn.com.upstream_rq_2xx`).
    pub(crate) fn cluster(
        &mut self,
        stat: &str,
        envoy_name: &str,
        cluster: &str,
        tag: Option<(&str, &str)>,
        value: u64,
    ) {
        match self.format {
            Format::Prometheus => {
                let mut labels = String::with_capacity(cluster.len() + 32);
                crate::labels::push(&mut labels, "cluster_name", cluster);
                if let Some((k, v)) = tag {
                    crate::labels::push(&mut labels, k, v);
                }
                self.sample(&format!("envoy_cluster_{stat}"), &labels, value);
            }
            Format::Stats => {
                let _ = writeln!(self.buf, "cluster.{cluster}.{envoy_name}: {value}");
            }
        }
    }
}
