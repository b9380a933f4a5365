//! Configuration load + compile (`egret_config::load_sources` then `compile`) of 10,000
//! ServiceEntries, one Gateway and 10,000 VirtualServices (half of them wildcard hosts): what a
//! start or a reload costs. Target (issue 7): under 1 s. Also 1,000 entries, to show the growth,
//! and the same configuration as one file of 2n + 1 documents (`one-file/`).
//! Run: `cargo bench -p egret-benches --bench config_compile`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "workloads.rs"]
mod workloads;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("config_compile");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for n in workloads::sizes(&[1_000, 10_000], &[10]) {
        let sources = workloads::istio_sources(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("load_sources+compile", n),
            &sources,
            |b, s| b.iter(|| workloads::load_and_compile(black_box(s)).listeners.len()),
        );
        let one_file = workloads::istio_sources_one_file(n);
        g.bench_with_input(
            BenchmarkId::new("load_sources+compile/one-file", n),
            &one_file,
            |b, s| b.iter(|| workloads::load_and_compile(black_box(s)).listeners.len()),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
