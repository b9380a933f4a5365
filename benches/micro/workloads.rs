//! Inputs and the measured operations of the micro-benchmarks, shared by the criterion
//! benches (`benches/micro/*.rs`) and the smoke test (`tests/smoke.rs`, which runs each once
//! on tiny inputs so the benches cannot rot). Included with `#[path]`; each user takes what it
//! needs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use egret_core::{HttpRouteTable, ListenerRoutes, LogRecord, RequestInfo, ResponseFlags, Snapshot};

/// True under `cargo bench` (criterion gets `--bench`). `cargo test --all-targets` runs the
/// bench binaries once as tests, without it: they then use small inputs, because the 10,000-entry
/// configuration takes minutes to compile unoptimised.
pub fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Host counts: the real ones when benchmarking, small ones as a test.
pub fn sizes(real: &[usize], test: &[usize]) -> Vec<usize> {
    if benchmarking() { real } else { test }.to_vec()
}

// ------------------------------------------------------------------ ClientHello parsing

/// Real ClientHellos (the egret-sni test fixtures): name and bytes as read off the wire.
pub fn client_hellos() -> Vec<(&'static str, &'static [u8])> {
    vec![
        (
            "curl-7.88-openssl-3.0",
            include_bytes!("../../crates/egret-sni/tests/fixtures/curl-7.88-openssl-3.0.bin"),
        ),
        (
            "openssl-3.0-s_client",
            include_bytes!("../../crates/egret-sni/tests/fixtures/openssl-3.0-s_client.bin"),
        ),
        (
            "rustls-0.23-x25519mlkem768",
            include_bytes!("../../crates/egret-sni/tests/fixtures/rustls-0.23-x25519mlkem768.bin"),
        ),
    ]
}

/// The measured operation: one-shot parse, returning the SNI length (so nothing is optimised out).
pub fn parse_hello(bytes: &[u8]) -> usize {
    match egret_sni::parse_client_hello(bytes) {
        Ok(h) => h.sni.map_or(0, |s| s.len()),
        Err(_) => usize::MAX,
    }
}

// ------------------------------------------------------------------ configuration

/// Istio YAML for a gateway serving `n` hosts: `n` ServiceEntries (`host-<i>.example.com`,
/// port 80 HTTP, DNS), one Gateway (port 80, hosts `*`), and one VirtualService per host bound
/// to the gateway. Every other VirtualService (odd `i`) is a wildcard one
/// (`*.zone-<i>.example.net`) so the route table holds n/2 exact and n/2 wildcard domains.
/// Returned as the (file, text) pairs `egret_config::load_sources` takes, at most
/// [`DOCS_PER_FILE`] documents per file, as a folder of manifests would be.
pub fn istio_sources(n: usize) -> Vec<(PathBuf, String)> {
    istio_sources_split(n, DOCS_PER_FILE)
}

/// The same configuration as [`istio_sources`] in one file of 2n + 1 documents.
pub fn istio_sources_one_file(n: usize) -> Vec<(PathBuf, String)> {
    // Unsplit, the files are: the ServiceEntries, the Gateway, the VirtualServices; every
    // document of the first and the last starts with `---`, the Gateway's does not.
    let files = istio_sources_split(n, n.max(1));
    let [(_, se), (_, gw), (_, vs)] = &files[..] else {
        panic!("expected 3 files, got {}", files.len());
    };
    vec![(
        PathBuf::from("bench/all.yaml"),
        format!("{se}---\n{gw}{vs}"),
    )]
}

fn istio_sources_split(n: usize, docs_per_file: usize) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut se = String::new();
    let mut vs = String::new();
    for i in 0..n {
        if i > 0 && i % docs_per_file == 0 {
            let part = i / docs_per_file;
            files.push((
                PathBuf::from(format!("bench/01-serviceentries-{part:03}.yaml")),
                std::mem::take(&mut se),
            ));
            files.push((
                PathBuf::from(format!("bench/03-virtualservices-{part:03}.yaml")),
                std::mem::take(&mut vs),
            ));
        }
        se.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata:\n  name: se-{i}\n\
             spec:\n  hosts:\n  - host-{i}.example.com\n  ports:\n  - number: 80\n    name: http\n    \
             protocol: HTTP\n  resolution: DNS\n"
        ));
        let host = vs_host(i);
        vs.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: vs-{i}\n\
             spec:\n  hosts:\n  - \"{host}\"\n  gateways:\n  - istio-egressgateway\n  http:\n  - match:\n    \
             - port: 80\n    route:\n    - destination:\n        host: host-{i}.example.com\n        port:\n          \
             number: 80\n"
        ));
    }
    let gw = "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata:\n  name: istio-egressgateway\n\
              spec:\n  selector:\n    istio: egressgateway\n  servers:\n  - port:\n      number: 80\n      \
              name: http\n      protocol: HTTP\n    hosts:\n    - \"*\"\n"
        .to_string();
    let part = n / docs_per_file + 1;
    files.push((
        PathBuf::from(format!("bench/01-serviceentries-{part:03}.yaml")),
        se,
    ));
    files.push((PathBuf::from("bench/02-gateway.yaml"), gw));
    files.push((
        PathBuf::from(format!("bench/03-virtualservices-{part:03}.yaml")),
        vs,
    ));
    files
}

/// Documents per generated file.
pub const DOCS_PER_FILE: usize = 1_000;

/// The VirtualService host of entry `i`: exact for even `i`, a wildcard for odd `i`.
pub fn vs_host(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("host-{i}.example.com")
    } else {
        format!("*.zone-{i}.example.net")
    }
}

/// The measured operation of the compile bench: load (parse + validate) and compile.
pub fn load_and_compile(sources: &[(PathBuf, String)]) -> Snapshot {
    let loaded = egret_config::load_sources(sources, &egret_config::LoadOptions::default())
        .unwrap_or_else(|e| panic!("bench config does not load: {e}"));
    let opts = egret_config::CompileOptions::default();
    match egret_config::compile(&loaded, &opts) {
        Ok(c) => c.snapshot,
        Err(errors) => panic!(
            "bench config does not compile: {}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

// ------------------------------------------------------------------ route lookup

/// The HTTP route table of the port-80 listener of a compiled snapshot.
pub fn http_table(snapshot: &Snapshot) -> Arc<HttpRouteTable> {
    for l in &snapshot.listeners {
        if let ListenerRoutes::Http(t) = &l.routes {
            return Arc::clone(t);
        }
    }
    panic!("no HTTP listener in the bench snapshot");
}

/// Authorities to look up in a table built from `istio_sources(n)`: an exact hit, a wildcard
/// hit (two labels under the wildcard), an upper-case exact hit with a port, and a miss.
pub fn lookups(n: usize) -> [(&'static str, String); 4] {
    let exact = (n / 2) & !1; // an even index: exact host
    let wild = (n / 2) | 1; // an odd index: wildcard host
    [
        ("exact", format!("host-{exact}.example.com")),
        ("wildcard", format!("a.b.zone-{wild}.example.net")),
        (
            "exact-uppercase-port",
            format!("HOST-{exact}.Example.com:80"),
        ),
        ("miss", "nothing.example.org".to_string()),
    ]
}

/// The measured operation of `find_virtual_host`: the index of the virtual host, or usize::MAX.
pub fn find_vhost(table: &HttpRouteTable, authority: &str) -> usize {
    table
        .find_virtual_host(authority)
        .map_or(usize::MAX, |vh| vh.routes.len())
}

/// The measured operation of `egret_http::route::find_route` (virtual host, then the first
/// route whose match applies): 1 when a route matched.
pub fn find_route(table: &HttpRouteTable, authority: &str, headers: &http::HeaderMap) -> usize {
    let req = egret_http::route::RequestView {
        authority,
        method: "GET",
        path: "/politics?edition=intl",
        scheme: "http",
        headers,
    };
    match egret_http::route::find_route(table, &req) {
        egret_http::route::RouteResult::NoVirtualHost => 0,
        egret_http::route::RouteResult::NoRoute(_) => 2,
        _ => 1,
    }
}

/// Request headers as curl sends them through the gateway.
pub fn request_headers() -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::HOST,
        http::HeaderValue::from_static("edition.cnn.com"),
    );
    h.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("curl/7.81.0-DEV"),
    );
    h.insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
    h
}

// ------------------------------------------------------------------ access log

/// A finished HTTP record like the S1 example line (every field of Istio's format filled).
pub fn http_record() -> LogRecord {
    let local: SocketAddr = "10.244.2.184:8080".parse().unwrap();
    let remote: SocketAddr = "10.244.1.73:49924".parse().unwrap();
    let mut rec = LogRecord::new(local, remote, Arc::from("0123456789ab"));
    // Kept as the data path keeps them for Istio's default format.
    let kept = egret_telemetry::LogFormat::default().headers();
    let mut headers = request_headers();
    headers.insert(
        "x-forwarded-for",
        http::HeaderValue::from_static("10.244.1.73"),
    );
    headers.insert(
        "x-request-id",
        http::HeaderValue::from_static("6c2c4550-92d4-955c-b6cb-83bf2b0e06f4"),
    );
    rec.request = Some(RequestInfo {
        method: http::Method::GET,
        path: "/politics".into(),
        authority: Some("edition.cnn.com".into()),
        scheme: Some("http"),
        headers: kept.request.capture(&headers),
    });
    rec.protocol = Some("HTTP/1.1");
    rec.response_code = 301;
    let mut resp = http::HeaderMap::new();
    resp.insert(
        "x-envoy-upstream-service-time",
        http::HeaderValue::from_static("203"),
    );
    rec.response_headers = Some(kept.response.capture(&resp));
    rec.response_code_details = Some("via_upstream".into());
    rec.duration = Some(Duration::from_millis(204));
    rec.upstream_host = Some("151.101.3.5:80".parse().unwrap());
    rec.upstream_cluster = Some(Arc::from("outbound|80||edition.cnn.com"));
    rec.upstream_local_address = Some("10.244.2.184:46620".parse().unwrap());
    rec
}

/// A finished TCP (passthrough) record like the S2 example line.
pub fn tcp_record() -> LogRecord {
    let local: SocketAddr = "172.30.109.80:443".parse().unwrap();
    let remote: SocketAddr = "172.30.109.112:59970".parse().unwrap();
    let mut rec = LogRecord::new(local, remote, Arc::from("0123456789ab"));
    rec.bytes_received = 627;
    rec.bytes_sent = 1_879_689;
    rec.duration = Some(Duration::from_millis(44));
    rec.upstream_host = Some("151.101.129.67:443".parse().unwrap());
    rec.upstream_cluster = Some(Arc::from("outbound|443||edition.cnn.com"));
    rec.upstream_local_address = Some("172.30.109.80:41122".parse().unwrap());
    rec.requested_server_name = Some(Arc::from("edition.cnn.com"));
    rec.response_flags = ResponseFlags::NONE;
    rec
}

/// The measured operation: format one line into a reused buffer (as the writer thread does).
pub fn format_text(
    fmt: &egret_telemetry::AccessLogFormat,
    rec: &LogRecord,
    buf: &mut Vec<u8>,
) -> usize {
    buf.clear();
    fmt.write(rec, buf);
    buf.len()
}

pub fn format_json(fmt: &egret_telemetry::JsonFormat, rec: &LogRecord, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    fmt.write(rec, buf);
    buf.len()
}
