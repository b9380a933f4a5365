//! Benchmarks live in `benches/` (micro) and `load/` (harness).
