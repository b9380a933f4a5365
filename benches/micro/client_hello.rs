//! ClientHello parsing (`egret_sni::parse_client_hello`) on real hellos: what every TLS
//! passthrough connection pays before it is routed.
//! Run: `cargo bench -p egret-benches --bench client_hello`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[path = "workloads.rs"]
mod workloads;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("client_hello");
    for (name, bytes) in workloads::client_hellos() {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| workloads::parse_hello(black_box(bytes)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
