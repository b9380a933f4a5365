//! Keeps the benchmarks from rotting without timing anything: runs every micro-benchmark's
//! measured operation once on tiny inputs (and checks the answers), and runs the load
//! harness's smoke mode (`benches/load/run.sh --quick --only egret-s1`) when an egret binary
//! and the harness's tools are at hand. No timing assertions anywhere.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../micro/workloads.rs"]
mod workloads;

#[test]
fn client_hello_bench_parses_every_fixture() {
    for (name, bytes) in workloads::client_hellos() {
        let sni_len = workloads::parse_hello(bytes);
        assert!(
            sni_len > 0 && sni_len != usize::MAX,
            "{name}: no SNI parsed"
        );
    }
}

#[test]
fn route_and_compile_benches_work_on_a_small_config() {
    let n = 6;
    let snapshot = workloads::load_and_compile(&workloads::istio_sources(n));
    let table = workloads::http_table(&snapshot);
    assert_eq!(
        table.virtual_hosts.len(),
        n,
        "one virtual host per VirtualService"
    );
    let headers = workloads::request_headers();
    for (what, authority) in workloads::lookups(n) {
        let vh = workloads::find_vhost(&table, &authority);
        let route = workloads::find_route(&table, &authority, &headers);
        if what == "miss" {
            assert_eq!(vh, usize::MAX, "{authority} should not match");
            assert_eq!(route, 0, "{authority}: no virtual host expected");
        } else {
            assert_ne!(
                vh,
                usize::MAX,
                "{what}: {authority} should match a virtual host"
            );
            assert_eq!(route, 1, "{what}: {authority} should match a route");
        }
    }
    // The one-file form of the same configuration (the compile bench's `one-file/`).
    let one_file = workloads::load_and_compile(&workloads::istio_sources_one_file(n));
    assert_eq!(workloads::http_table(&one_file).virtual_hosts.len(), n);
    assert_eq!(one_file.clusters.len(), snapshot.clusters.len());
}

#[test]
fn access_log_bench_formats_istio_lines() {
    let text = egret_telemetry::AccessLogFormat::istio_default();
    let json = egret_telemetry::JsonFormat::istio_default();
    let mut buf = Vec::new();

    workloads::format_text(&text, &workloads::http_record(), &mut buf);
    let line = String::from_utf8(buf.clone()).unwrap();
    assert!(
        line.contains("\"GET /politics HTTP/1.1\" 301 - via_upstream"),
        "{line}"
    );
    assert!(line.contains("outbound|80||edition.cnn.com"), "{line}");

    workloads::format_text(&text, &workloads::tcp_record(), &mut buf);
    let line = String::from_utf8(buf.clone()).unwrap();
    assert!(
        line.contains("\"- - -\" 0 - - - \"-\" 627 1879689 44"),
        "{line}"
    );

    let n = workloads::format_json(&json, &workloads::http_record(), &mut buf);
    assert!(
        n > 0 && buf.starts_with(b"{"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

/// The load harness in smoke mode: Egret alone on S1, ~2 s per case. Needs an egret binary
/// (EGRET_BIN, or target/{release,debug}/egret from an earlier build) and wrk + nginx (run.sh
/// installs them with apt-get as root); when one is missing the test says so and passes.
#[test]
fn load_harness_quick_mode_runs_egret_s1() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(egret) = egret_binary(here) else {
        eprintln!("skipped: no egret binary (build it, or set EGRET_BIN)");
        return;
    };
    let work = std::env::temp_dir().join(format!("egret-bench-smoke-{}", std::process::id()));
    let out = work.join("RESULTS.md");
    let status = Command::new("bash")
        .arg(here.join("load/run.sh"))
        .args([
            "--quick",
            "--only",
            "egret-1w-s1",
            "--duration",
            "1",
            "--keep-work",
        ])
        .arg("--egret-bin")
        .arg(&egret)
        .arg("--work")
        .arg(&work)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("bash runs");
    if status.code() == Some(3) {
        eprintln!("skipped: the harness's tools are missing (see the message above)");
        let _ = std::fs::remove_dir_all(&work);
        return;
    }
    assert!(status.success(), "run.sh --quick failed: {status}");
    let report = std::fs::read_to_string(&out).expect("the harness wrote a report");
    let _ = std::fs::remove_dir_all(&work);
    assert!(report.contains("S1 HTTP/1.1 keep-alive"), "{report}");
    // Every S1 row measured something: a req/s figure, and no failures.
    let rows: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("| egret 1w |"))
        .collect();
    assert_eq!(rows.len(), 3, "1, 64 and 256 connections:\n{report}");
    for row in rows {
        assert!(!row.contains("failed"), "{row}");
        let rps = row.split('|').nth(3).unwrap().trim().replace(',', "");
        assert!(
            rps.parse::<f64>().is_ok_and(|v| v > 0.0),
            "no req/s in {row}"
        );
    }
}

fn egret_binary(benches_dir: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EGRET_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| benches_dir.join("../target"));
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("egret"))
        .find(|p| p.is_file())
}
