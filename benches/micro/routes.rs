//! Route lookup among 10 and 10,000 hosts (half exact, half `*.suffix` wildcards), compiled
//! from Istio YAML: `HttpRouteTable::find_virtual_host` (the host index) and
//! `egret_http::route::find_route` (virtual host, then the first route whose match applies).
//! The lookup should cost the same with 10 hosts or 10,000.
//! Run: `cargo bench -p egret-benches --bench routes`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

#[path = "workloads.rs"]
mod workloads;

fn bench(c: &mut Criterion) {
    let headers = workloads::request_headers();
    for n in workloads::sizes(&[10, 10_000], &[10, 100]) {
        let snapshot = workloads::load_and_compile(&workloads::istio_sources(n));
        let table = workloads::http_table(&snapshot);
        let mut g = c.benchmark_group(format!("route_lookup/{n}_hosts"));
        for (what, authority) in workloads::lookups(n) {
            g.bench_with_input(
                BenchmarkId::new("find_virtual_host", what),
                &authority,
                |b, a| b.iter(|| workloads::find_vhost(&table, black_box(a))),
            );
            g.bench_with_input(BenchmarkId::new("find_route", what), &authority, |b, a| {
                b.iter(|| workloads::find_route(&table, black_box(a), &headers))
            });
        }
        g.finish();
    }
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
