//! Access-log line formatting: Istio's default TEXT format (`AccessLogFormat::istio_default`)
//! and JSON format, for an HTTP record and a TCP (passthrough) record, into a reused buffer as
//! the writer thread does.
//! Run: `cargo bench -p egret-benches --bench access_log`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

#[path = "workloads.rs"]
mod workloads;

fn bench(c: &mut Criterion) {
    let text = egret_telemetry::AccessLogFormat::istio_default();
    let json = egret_telemetry::JsonFormat::istio_default();
    let mut buf = Vec::with_capacity(1024);
    let mut g = c.benchmark_group("access_log");
    for (name, rec) in [
        ("http", workloads::http_record()),
        ("tcp", workloads::tcp_record()),
    ] {
        g.bench_function(format!("istio_text/{name}"), |b| {
            b.iter(|| workloads::format_text(&text, black_box(&rec), &mut buf))
        });
        g.bench_function(format!("istio_json/{name}"), |b| {
            b.iter(|| workloads::format_json(&json, black_box(&rec), &mut buf))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
