//! The user's scenarios compile to the expected snapshot; bad input gives errors at the right
//! file:line; unsupported fields give warnings naming file, resource and field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use egret_config::{
    compile, describe, load, load_sources, load_with_options, CompileOptions, Compiled, Diagnostic,
    LoadErrors, LoadOptions, Loaded, Severity,
};
use egret_core::{
    CertSource, Discovery, DnsTarget, DownstreamTls, HostPattern, LbPolicy, ListenerRoutes,
    RouteAction, ServerProtocol, Snapshot, StringMatch, TlsMode, UpstreamProtocol, UpstreamTls,
};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    manifest_dir().join("tests/fixtures").join(name)
}

fn example(name: &str) -> PathBuf {
    manifest_dir().join("../../config").join(name)
}

/// Strips the first newline and the common indentation, so line 1 is the first YAML line.
fn dedent(s: &str) -> String {
    let s = s.strip_prefix('\n').unwrap_or(s);
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    s.lines()
        .map(|l| {
            if l.len() >= indent {
                &l[indent..]
            } else {
                l.trim_start()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn load_str(files: &[(&str, &str)]) -> Result<Loaded, LoadErrors> {
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), dedent(t)))
        .collect();
    load_sources(&sources, &LoadOptions::default())
}

fn load_errors(files: &[(&str, &str)]) -> Vec<Diagnostic> {
    match load_str(files) {
        Ok(_) => panic!("expected errors"),
        Err(e) => {
            assert!(e.errors.iter().all(|d| d.severity == Severity::Error));
            e.errors
        }
    }
}

fn one_error(files: &[(&str, &str)]) -> Diagnostic {
    let errs = load_errors(files);
    assert_eq!(errs.len(), 1, "expected one error, got: {errs:#?}");
    errs.into_iter().next().unwrap()
}

fn compile_str(files: &[(&str, &str)]) -> Compiled {
    let loaded = load_str(files).unwrap_or_else(|e| panic!("load failed: {e}"));
    compile(&loaded, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("compile failed: {e:#?}"))
}

fn compile_path(p: &Path) -> Compiled {
    let loaded = load(&[p.to_path_buf()]).unwrap_or_else(|e| panic!("load failed: {e}"));
    compile(&loaded, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("compile failed: {e:#?}"))
}

/// The route table of a plain HTTP port, or of the first TLS server of an HTTPS port.
fn http_table(s: &Snapshot, listen_port: u16) -> &egret_core::HttpRouteTable {
    match &s.listener_on(listen_port).expect("listener").routes {
        ListenerRoutes::Http(t) => t,
        ListenerRoutes::Https(ts) => &ts[0],
        other => panic!("not an HTTP listener: {other:?}"),
    }
}

fn forward_clusters(a: &RouteAction) -> Vec<(String, u32)> {
    match a {
        RouteAction::Forward(w) => w
            .clusters
            .iter()
            .map(|c| (c.cluster.to_string(), c.weight))
            .collect(),
        other => panic!("not a forward: {other:?}"),
    }
}

const SE_CNN: &str = "
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata:
      name: cnn
    spec:
      hosts: [edition.cnn.com]
      ports:
      - number: 80
        name: http
        protocol: HTTP
      resolution: DNS
";

const GW_80: &str = "
    apiVersion: networking.istio.io/v1beta1
    kind: Gateway
    metadata:
      name: gw
    spec:
      selector:
        istio: egressgateway
      servers:
      - port: {number: 80, name: http, protocol: HTTP}
        hosts: ['*']
";

// ---------------------------------------------------------------------------------------------
// The user's scenarios

#[test]
fn s1_http_through_the_gateway() {
    let c = compile_path(&fixture("s1-http.yaml"));
    let s = &c.snapshot;
    assert_eq!(s.version.len(), 12);
    assert!(s.version.chars().all(|c| c.is_ascii_hexdigit()));

    assert_eq!(s.listeners.len(), 1);
    let l = &s.listeners[0];
    assert_eq!(
        (l.name.as_str(), l.service_port, l.listen_port, l.protocol),
        ("0.0.0.0_8080", 80, 8080, ServerProtocol::Http)
    );
    let t = http_table(s, 8080);
    assert_eq!(t.name, "http.8080");
    assert_eq!(t.virtual_hosts.len(), 1);
    let vh = &t.virtual_hosts[0];
    assert_eq!(vh.name, "edition.cnn.com:80");
    assert_eq!(
        vh.domains,
        vec![HostPattern::Exact("edition.cnn.com".into())]
    );
    // Only the istio-egressgateway rule: the mesh rule is the sidecar's.
    assert_eq!(vh.routes.len(), 1);
    let r = &vh.routes[0];
    assert!(r.name.is_none());
    assert_eq!(r.matches.len(), 1);
    assert!(r.matches[0].uri.is_none() && r.matches[0].headers.is_empty());
    assert_eq!(
        forward_clusters(&r.action),
        vec![("outbound|80||edition.cnn.com".to_string(), 100)]
    );
    assert!(t.find_virtual_host("Edition.CNN.com:80").is_some());

    assert_eq!(s.clusters.len(), 1);
    let cl = s.cluster("outbound|80||edition.cnn.com").expect("cluster");
    match &cl.discovery {
        Discovery::StrictDns { targets } => {
            assert_eq!(
                targets,
                &vec![DnsTarget {
                    host: "edition.cnn.com".into(),
                    port: 80
                }]
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cl.protocol, UpstreamProtocol::Http1);
    assert_eq!(cl.lb, LbPolicy::LeastRequest);
    assert_eq!(
        cl.connect_timeout,
        egret_core::limits::DEFAULT_CONNECT_TIMEOUT
    );

    // The scraping typo is accepted, with a warning at its line.
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.line, 2);
    assert!(w.file.ends_with("s1-http.yaml"));
    assert_eq!(w.resource.as_deref(), Some("ServiceEntry istio-system/cnn"));
    assert_eq!(w.field.as_deref(), Some("apiVersion"));
    assert!(w.message.contains("networking.istio.io/v1alpha3"), "{w}");
}

#[test]
fn s2_tls_passthrough() {
    let c = compile_path(&fixture("s2-passthrough.yaml"));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let s = &c.snapshot;
    assert_eq!(s.listeners.len(), 1);
    let l = &s.listeners[0];
    assert_eq!(
        (l.name.as_str(), l.service_port, l.listen_port, l.protocol),
        ("0.0.0.0_8443", 443, 8443, ServerProtocol::Tls)
    );
    let ListenerRoutes::Sni(t) = &l.routes else {
        panic!("not sni")
    };
    assert_eq!(t.routes.len(), 1);
    let r = t.find("EDITION.cnn.com").expect("sni route");
    assert_eq!(
        r.sni_hosts,
        vec![HostPattern::Exact("edition.cnn.com".into())]
    );
    assert_eq!(
        r.clusters.clusters[0].cluster.as_ref(),
        "outbound|443||edition.cnn.com"
    );
    assert!(t.find("other.com").is_none());
    assert_eq!(s.clusters.len(), 1);
    let cl = s.cluster("outbound|443||edition.cnn.com").unwrap();
    assert_eq!(cl.protocol, UpstreamProtocol::Tcp);
    assert!(matches!(&cl.discovery, Discovery::StrictDns { targets } if targets[0].port == 443));
}

#[test]
fn s3_tls_origination() {
    let c = compile_path(&fixture("s3-tls-origination.yaml"));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let s = &c.snapshot;
    let l = s.listener_on(8080).expect("listener");
    assert_eq!(l.protocol, ServerProtocol::Http);
    assert!(l.tls_servers.is_empty());
    let t = http_table(s, 8080);
    let vh = &t.virtual_hosts[0];
    assert_eq!(vh.name, "edition.cnn.com:80");
    assert_eq!(
        forward_clusters(&vh.routes[0].action),
        vec![("outbound|443||edition.cnn.com".to_string(), 100)]
    );
    // HTTP in, HTTPS out: the cluster carries HTTP (not TCP) although the ServiceEntry port
    // says HTTPS, and originates TLS with the destination host as SNI.
    assert_eq!(s.clusters.len(), 1);
    let cl = s.cluster("outbound|443||edition.cnn.com").expect("cluster");
    assert_eq!(cl.protocol, UpstreamProtocol::Http1);
    assert_eq!(cl.lb, LbPolicy::LeastRequest);
    assert!(
        matches!(&cl.discovery, Discovery::StrictDns { targets } if targets == &vec![DnsTarget { host: "edition.cnn.com".into(), port: 443 }])
    );
    let tls = cl.tls.as_deref().expect("TLS origination");
    assert_eq!(
        tls,
        &UpstreamTls {
            mode: TlsMode::Simple,
            sni: "edition.cnn.com".into(),
            auto_sni: true,
            subject_alt_names: vec![],
            source: CertSource::default(),
            insecure_skip_verify: false,
            origin: "DestinationRule istio-system/originate-tls-for-edition-cnn-com".into(),
        }
    );
}

#[test]
fn s4_mtls_origination() {
    let loaded = load(&[fixture("s4-mtls-origination.yaml")]).unwrap();
    let kinds: Vec<&str> = loaded.skipped.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, vec!["Service", "Deployment"]);
    assert_eq!(
        loaded.skipped[0].namespace.as_deref(),
        Some("mesh-external")
    );
    assert_eq!(loaded.gateways.len(), 1);
    assert_eq!(loaded.virtual_services.len(), 1);
    assert_eq!(loaded.destination_rules.len(), 2);
    let c = compile(&loaded, &CompileOptions::default()).unwrap();
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let s = &c.snapshot;
    const NGINX: &str = "my-nginx.mesh-external.svc.cluster.local";

    // The sidecar→gateway hop: HTTPS terminated with the mesh certificates.
    assert_eq!(s.listeners.len(), 1);
    let l = &s.listeners[0];
    assert_eq!(
        (l.name.as_str(), l.service_port, l.listen_port, l.protocol),
        ("0.0.0.0_8443", 443, 8443, ServerProtocol::Https)
    );
    assert_eq!(l.tls_servers.len(), 1);
    let ts = &l.tls_servers[0];
    assert_eq!(ts.hosts, vec![HostPattern::Exact(NGINX.into())]);
    assert_eq!(
        ts.tls,
        DownstreamTls {
            mode: TlsMode::IstioMutual,
            source: CertSource::default(),
            subject_alt_names: vec![],
            origin: "Gateway istio-system/istio-egressgateway servers[0]".into(),
        }
    );
    let t = http_table(s, 8443);
    assert_eq!(t.name, "https.443.https.istio-egressgateway.istio-system");
    assert_eq!(t.virtual_hosts.len(), 1);
    let vh = &t.virtual_hosts[0];
    assert_eq!(vh.name, format!("{NGINX}:443"));
    // Only the istio-egressgateway rule (port 443); the mesh rule is the sidecar's.
    assert_eq!(vh.routes.len(), 1);
    let cluster = format!("outbound|443||{NGINX}");
    assert_eq!(
        forward_clusters(&vh.routes[0].action),
        vec![(cluster.clone(), 100)]
    );

    // The gateway→nginx hop: mutual TLS with the client credential. The Kubernetes service
    // is known without a ServiceEntry.
    assert_eq!(s.clusters.len(), 1);
    let cl = s.cluster(&cluster).expect("cluster");
    assert_eq!(cl.protocol, UpstreamProtocol::Http1);
    assert!(
        matches!(&cl.discovery, Discovery::StrictDns { targets } if targets == &vec![DnsTarget { host: NGINX.into(), port: 443 }])
    );
    let tls = cl.tls.as_deref().expect("mTLS origination");
    assert_eq!(
        tls,
        &UpstreamTls {
            mode: TlsMode::Mutual,
            sni: NGINX.into(),
            auto_sni: false,
            subject_alt_names: vec![],
            source: CertSource {
                credential_name: Some("client-credential".into()),
                ..CertSource::default()
            },
            insecure_skip_verify: false,
            origin: "DestinationRule istio-system/originate-mtls-for-nginx".into(),
        }
    );

    let text = describe(s);
    assert!(
        text.contains("0.0.0.0_8443  443 -> 8443  HTTPS (ISTIO_MUTUAL)"),
        "{text}"
    );
    assert!(
        text.contains(
            "MUTUAL sni=my-nginx.mesh-external.svc.cluster.local credential=client-credential"
        ),
        "{text}"
    );
    assert!(text.contains("mesh certificates"), "{text}");
}

#[test]
fn example_folders_compile() {
    let c = compile_path(&example("s1-http"));
    assert_eq!(
        c.snapshot
            .clusters
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        vec!["outbound|80||edition.cnn.com"]
    );
    assert!(c.warnings[0].file.ends_with("01-serviceentry-cnn.yaml"));
    assert_eq!(c.warnings[0].line, 2);
    let c = compile_path(&example("s2-passthrough"));
    assert_eq!(c.snapshot.listeners[0].name, "0.0.0.0_8443");
    let c = compile_path(&example("s3-tls-origination"));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let cl = c
        .snapshot
        .cluster("outbound|443||edition.cnn.com")
        .expect("cluster");
    assert_eq!(
        cl.tls.as_ref().map(|t| (t.mode, t.sni.as_str())),
        Some((TlsMode::Simple, "edition.cnn.com"))
    );
    let c = compile_path(&example("s4-mtls-origination"));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    assert_eq!(c.snapshot.listeners[0].tls_servers.len(), 1);
    let cl = c
        .snapshot
        .cluster("outbound|443||my-nginx.mesh-external.svc.cluster.local")
        .expect("cluster");
    assert_eq!(cl.tls.as_ref().map(|t| t.mode), Some(TlsMode::Mutual));
    let loaded = load(&[example("s4-mtls-origination")]).unwrap();
    assert_eq!(loaded.skipped.len(), 2);
    assert_eq!(loaded.files.len(), 4);
    // Same manifests, same content hash as the fixture? No: the files differ (split and
    // commented), but the version is stable across loads.
    let again = load(&[example("s4-mtls-origination")]).unwrap();
    assert_eq!(loaded.version, again.version);
}

#[test]
fn describe_lists_listeners_routes_and_clusters() {
    let c = compile_path(&fixture("s1-http.yaml"));
    let text = describe(&c.snapshot);
    assert!(
        text.contains(&format!("config version: {}", c.snapshot.version)),
        "{text}"
    );
    assert!(text.contains("0.0.0.0_8080  80 -> 8080  HTTP"), "{text}");
    assert!(text.contains("edition.cnn.com:80"), "{text}");
    assert!(text.contains("-> outbound|80||edition.cnn.com"), "{text}");
    assert!(text.contains("STRICT_DNS edition.cnn.com:80"), "{text}");
    assert!(
        text.contains("LEAST_REQUEST") && text.contains("10s"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors, with file:line

#[test]
fn bad_yaml_reports_the_parser_line() {
    let e = one_error(&[(
        "bad.yaml",
        "
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata:
          name: x
        spec:
          hosts: [a.com
          ports: []
    ",
    )]);
    assert!(e.file.ends_with("bad.yaml"));
    // The parser notices the unclosed `[` at the next key.
    assert_eq!(
        e.to_string(),
        "bad.yaml:7: invalid YAML: illegal placement of ':' indicator"
    );
    assert!(e.resource.is_none());
}

#[test]
fn wrong_type_names_field_and_line() {
    let e = one_error(&[(
        "se.yaml",
        "
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata:
          name: x
          namespace: web
        spec:
          hosts: [a.com]
          ports:
          - number: eighty
            name: http
    ",
    )]);
    assert_eq!(e.line, 9);
    assert_eq!(e.resource.as_deref(), Some("ServiceEntry web/x"));
    assert_eq!(e.field.as_deref(), Some("spec.ports[0].number"));
    assert_eq!(
        e.to_string(),
        "se.yaml:9: ServiceEntry web/x: spec.ports[0].number: expected an integer, found a string"
    );
}

#[test]
fn missing_required_fields() {
    let e = one_error(&[(
        "se.yaml",
        "
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata:
          name: x
        spec:
          ports:
          - number: 80
            name: http
    ",
    )]);
    assert_eq!((e.line, e.field.as_deref()), (5, Some("spec.hosts")));
    assert_eq!(e.message, "required field is missing");

    let e = one_error(&[(
        "vs.yaml",
        "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: x
        spec:
          http:
          - route:
            - destination: {host: a.com}
    ",
    )]);
    assert_eq!((e.line, e.field.as_deref()), (5, Some("spec.hosts")));

    let e = one_error(&[(
        "dr.yaml",
        "
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: x
        spec:
          subsets:
          - name: a
    ",
    )]);
    assert_eq!((e.line, e.field.as_deref()), (5, Some("spec.host")));

    let e = one_error(&[(
        "gw.yaml",
        "
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata:
          name: gw
        spec:
          selector: {istio: egressgateway}
          servers:
          - hosts: ['*']
    ",
    )]);
    assert_eq!(
        (e.line, e.field.as_deref()),
        (8, Some("spec.servers[0].port"))
    );

    let e = one_error(&[(
        "nameless.yaml",
        "
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {}
        spec:
          host: a.com
    ",
    )]);
    assert_eq!((e.line, e.field.as_deref()), (3, Some("metadata.name")));
}

#[test]
fn unknown_gateway_is_an_error() {
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: vs
          namespace: apps
        spec:
          hosts: [edition.cnn.com]
          gateways: [mesh, gw, istio-system/gw]
          http:
          - route:
            - destination: {host: edition.cnn.com}
    ";
    // `gw` means apps/gw: it does not exist; istio-system/gw does.
    let e = one_error(&[("a.yaml", GW_80), ("b.yaml", SE_CNN), ("c.yaml", vs)]);
    assert!(e.file.ends_with("c.yaml"));
    assert_eq!(e.line, 8);
    assert_eq!(e.field.as_deref(), Some("spec.gateways[1]"));
    assert_eq!(e.resource.as_deref(), Some("VirtualService apps/vs"));
    assert!(e.message.contains("apps/gw"), "{e}");
}

#[test]
fn unknown_subset_is_an_error() {
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: vs
        spec:
          hosts: [edition.cnn.com]
          gateways: [gw]
          http:
          - route:
            - destination:
                host: edition.cnn.com
                subset: v1
    ";
    let dr = "
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: dr
        spec:
          host: edition.cnn.com
          subsets:
          - name: v2
    ";
    let e = one_error(&[
        ("a.yaml", GW_80),
        ("b.yaml", SE_CNN),
        ("c.yaml", vs),
        ("d.yaml", dr),
    ]);
    assert_eq!(
        (e.line, e.field.as_deref()),
        (12, Some("spec.http[0].route[0].destination.subset"))
    );
    assert!(
        e.message.contains("\"v1\"") && e.message.contains("edition.cnn.com"),
        "{e}"
    );
}

#[test]
fn duplicates_report_both_locations() {
    let e = one_error(&[
        ("one.yaml", SE_CNN),
        ("two.yaml", &format!("# a comment\n{}", SE_CNN)),
    ]);
    assert!(e.file.ends_with("two.yaml"));
    // The comment, the blank line from the constant, then the object.
    assert_eq!(e.line, 3);
    assert_eq!(e.resource.as_deref(), Some("ServiceEntry istio-system/cnn"));
    assert!(e.message.contains("one.yaml:1"), "{e}");
}

#[test]
fn invalid_regex_and_duration() {
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: vs
        spec:
          hosts: [edition.cnn.com]
          gateways: [gw]
          http:
          - match:
            - uri:
                regex: '/a(['
            route:
            - destination: {host: edition.cnn.com}
    ";
    let e = one_error(&[("a.yaml", GW_80), ("b.yaml", SE_CNN), ("c.yaml", vs)]);
    assert_eq!(
        (e.line, e.field.as_deref()),
        (11, Some("spec.http[0].match[0].uri.regex"))
    );
    assert!(e.message.starts_with("invalid regex"), "{e}");

    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: vs
        spec:
          hosts: [edition.cnn.com]
          gateways: [gw]
          http:
          - timeout: 10 seconds
            route:
            - destination: {host: edition.cnn.com}
    ";
    let e = one_error(&[("a.yaml", GW_80), ("b.yaml", SE_CNN), ("c.yaml", vs)]);
    assert_eq!(
        (e.line, e.field.as_deref()),
        (9, Some("spec.http[0].timeout"))
    );
    assert!(
        e.message.starts_with("invalid duration \"10 seconds\""),
        "{e}"
    );

    let dr = "
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: dr
        spec:
          host: edition.cnn.com
          trafficPolicy:
            connectionPool:
              tcp:
                connectTimeout: 5x
    ";
    let e = one_error(&[("d.yaml", dr)]);
    assert_eq!(
        (e.line, e.field.as_deref()),
        (
            10,
            Some("spec.trafficPolicy.connectionPool.tcp.connectTimeout")
        )
    );
}

#[test]
fn weights_must_add_up_to_100() {
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: vs
        spec:
          hosts: [edition.cnn.com]
          gateways: [gw]
          http:
          - route:
            - destination: {host: edition.cnn.com}
              weight: 70
            - destination: {host: edition.cnn.com}
              weight: 20
          tcp:
          - route:
            - destination: {host: edition.cnn.com, port: {number: 80}}
    ";
    let e = one_error(&[("a.yaml", GW_80), ("b.yaml", SE_CNN), ("c.yaml", vs)]);
    assert_eq!(
        (e.line, e.field.as_deref()),
        (9, Some("spec.http[0].route"))
    );
    assert!(e.message.contains("90"), "{e}");
}

#[test]
fn static_endpoints_must_be_ip_addresses() {
    let e = one_error(&[(
        "se.yaml",
        "
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: x}
        spec:
          hosts: [a.com]
          ports: [{number: 80, name: http, protocol: HTTP}]
          resolution: STATIC
          endpoints:
          - address: 10.1.2.3
          - address: db.internal
    ",
    )]);
    assert_eq!(
        (e.line, e.field.as_deref()),
        (10, Some("spec.endpoints[1].address"))
    );
}

#[test]
fn unknown_version_of_the_group_is_an_error() {
    let e = one_error(&[(
        "x.yaml",
        "
        apiVersion: networking.istio.io/v2
        kind: ServiceEntry
        metadata: {name: x}
        spec:
          hosts: [a.com]
    ",
    )]);
    assert_eq!((e.line, e.field.as_deref()), (1, Some("apiVersion")));
    assert!(e.message.contains("v2"), "{e}");
}

#[test]
fn not_a_kubernetes_object_is_an_error() {
    let e = one_error(&[(
        "x.yaml",
        "
        just: a mapping
    ",
    )]);
    assert_eq!((e.line, e.field.as_deref()), (1, Some("kind")));
}

// ---------------------------------------------------------------------------------------------
// Warnings for what Egret does not do yet

#[test]
fn unsupported_and_unknown_fields_warn_with_file_resource_and_field() {
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: vs
        spec:
          hosts: [edition.cnn.com]
          gateways: [gw]
          http:
          - route:
            - destination: {host: edition.cnn.com}
            corsPolicy:
              allowOrigins: [{exact: a}]
              maxAge: 2s
            retries: {attempts: 1, retryRemoteLocalities: true}
            timeout: 1s
            colour: blue
    ";
    let dr = "
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: dr
        spec:
          host: edition.cnn.com
          trafficPolicy:
            loadBalancer:
              localityLbSetting: {enabled: true}
    ";
    let c = compile_str(&[
        ("a.yaml", GW_80),
        ("b.yaml", SE_CNN),
        ("c.yaml", vs),
        ("d.yaml", dr),
    ]);
    let find = |field: &str| -> &Diagnostic {
        c.warnings
            .iter()
            .find(|w| w.field.as_deref() == Some(field))
            .unwrap_or_else(|| panic!("no warning for {field}: {:#?}", c.warnings))
    };
    let w = find("spec.http[0].corsPolicy");
    assert_eq!((w.file.to_str(), w.line), (Some("c.yaml"), 11));
    assert_eq!(
        w.resource.as_deref(),
        Some("VirtualService istio-system/vs")
    );
    assert_eq!(w.to_string(), "c.yaml:11: VirtualService istio-system/vs: spec.http[0].corsPolicy: not supported yet; ignored");
    assert_eq!(find("spec.http[0].retries.retryRemoteLocalities").line, 14);
    let w = find("spec.http[0].colour");
    assert_eq!(w.line, 16);
    assert!(w.message.contains("unknown field"), "{w}");
    let w = find("spec.trafficPolicy.loadBalancer.localityLbSetting");
    assert_eq!((w.file.to_str(), w.line), (Some("d.yaml"), 9));
    assert!(c.warnings.iter().all(|w| w.severity == Severity::Warning));
}

#[test]
fn passthrough_server_tls_settings_other_than_mode_warn() {
    let gw = "
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: gw}
        spec:
          selector: {istio: egressgateway}
          servers:
          - port: {number: 443, name: tls, protocol: TLS}
            hosts: ['*']
            tls:
              mode: PASSTHROUGH
              minProtocolVersion: TLSV1_2
    ";
    let c = compile_str(&[("gw.yaml", gw)]);
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(
        (c.warnings[0].line, c.warnings[0].field.as_deref()),
        (11, Some("spec.servers[0].tls.minProtocolVersion"))
    );
    assert_eq!(c.snapshot.listeners[0].listen_port, 8443);
}

#[test]
fn unknown_host_warns_and_creates_no_cluster() {
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: vs
        spec:
          hosts: ['*']
          gateways: [gw]
          http:
          - route:
            - destination: {host: example.org, port: {number: 80}}
    ";
    let c = compile_str(&[("a.yaml", GW_80), ("c.yaml", vs)]);
    assert!(c.snapshot.clusters.is_empty());
    let vh = &http_table(&c.snapshot, 8080).virtual_hosts[0];
    assert_eq!(
        forward_clusters(&vh.routes[0].action),
        vec![("outbound|80||example.org".to_string(), 100)]
    );
    let w = &c.warnings[0];
    assert_eq!(
        (w.line, w.field.as_deref()),
        (10, Some("spec.http[0].route[0].destination.host"))
    );
    assert!(
        w.message
            .contains("not in the service registry (REGISTRY_ONLY)")
            && w.message.contains("503 NC"),
        "{w}"
    );
}

// ---------------------------------------------------------------------------------------------
// Loading

#[test]
fn lists_other_kinds_empty_documents_and_default_namespaces() {
    let text = "
        # only a comment
        ---
        ---
        apiVersion: v1
        kind: List
        items:
        - apiVersion: networking.istio.io/v1
          kind: ServiceEntry
          metadata: {name: a}
          spec:
            hosts: [a.com]
            ports: [{number: 80, name: http, protocol: HTTP}]
            resolution: DNS
        - apiVersion: v1
          kind: Secret
          metadata: {name: client-credential}
        - apiVersion: networking.istio.io/v1
          kind: DestinationRule
          metadata: {name: b, namespace: apps}
          spec:
            host: a.com
            bogus: 1
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: d}
    ";
    let loaded = load_str(&[("l.yaml", text)]).unwrap();
    assert_eq!(loaded.service_entries.len(), 1);
    assert_eq!(loaded.service_entries[0].namespace, "istio-system");
    assert_eq!(loaded.service_entries[0].source.line, 7);
    assert_eq!(loaded.destination_rules[0].namespace, "apps");
    let skipped: Vec<(&str, u32)> = loaded
        .skipped
        .iter()
        .map(|s| (s.kind.as_str(), s.line))
        .collect();
    assert_eq!(skipped, vec![("Secret", 14), ("Deployment", 24)]);
    // Field paths are relative to the object, lines are the file's.
    let w = &loaded.warnings[0];
    assert_eq!(
        (w.line, w.field.as_deref(), w.resource.as_deref()),
        (22, Some("spec.bogus"), Some("DestinationRule apps/b"))
    );

    let opts = LoadOptions {
        namespace: "egress".into(),
        ..LoadOptions::default()
    };
    let sources = vec![(PathBuf::from("l.yaml"), dedent(text))];
    let loaded = load_sources(&sources, &opts).unwrap();
    assert_eq!(loaded.service_entries[0].namespace, "egress");
}

#[test]
fn folders_are_read_recursively_sorted_and_hidden_entries_skipped() {
    let dir = std::env::temp_dir().join(format!("egret-config-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::create_dir_all(dir.join("..data")).unwrap();
    std::fs::write(dir.join("sub/b.yml"), dedent(GW_80)).unwrap();
    std::fs::write(dir.join("a.yaml"), dedent(SE_CNN)).unwrap();
    std::fs::write(dir.join("notes.txt"), "not yaml: [").unwrap();
    std::fs::write(dir.join("..data/a.yaml"), dedent(SE_CNN)).unwrap();
    let loaded = load_with_options(std::slice::from_ref(&dir), &LoadOptions::default()).unwrap();
    let names: Vec<PathBuf> = loaded
        .files
        .iter()
        .map(|f| f.strip_prefix(&dir).unwrap().to_path_buf())
        .collect();
    assert_eq!(
        names,
        vec![PathBuf::from("a.yaml"), PathBuf::from("sub/b.yml")]
    );
    assert_eq!(loaded.gateways.len(), 1);

    let missing = load(&[dir.join("missing.yaml")]).unwrap_err();
    assert_eq!(missing.errors[0].line, 0);
    assert!(missing.errors[0]
        .to_string()
        .contains("missing.yaml: cannot read"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version_is_a_content_hash() {
    let a = load_str(&[("a.yaml", SE_CNN)]).unwrap();
    let b = load_str(&[("elsewhere/a.yaml", SE_CNN)]).unwrap();
    let c = load_str(&[("a.yaml", &SE_CNN.replace("DNS", "STATIC"))]).unwrap();
    assert_eq!(a.version, b.version);
    assert_ne!(a.version, c.version);
}

// ---------------------------------------------------------------------------------------------
// Compile semantics

#[test]
fn http_matches_weights_timeouts_and_names() {
    let vs = r#"
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: vs
        spec:
          hosts: [edition.cnn.com]
          gateways: [istio-system/gw]
          http:
          - name: api
            match:
            - uri: {prefix: /api}
              method: {exact: GET}
              headers:
                X-Team: {regex: "a|b"}
                x-present: {}
              withoutHeaders:
                x-debug: {exact: "1"}
              queryParams:
                v: {exact: "2"}
              ignoreUriCase: true
            - uri: {exact: /health}
            timeout: 1.5s
            route:
            - destination: {host: edition.cnn.com}
              weight: 90
            - destination: {host: other.cnn.com, port: {number: 8080}}
              weight: 10
          - match:
            - port: 81
            route:
            - destination: {host: edition.cnn.com}
          - directResponse:
              status: 418
              body: {string: teapot}
    "#;
    let se2 = "
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata:
          name: other
        spec:
          hosts: [other.cnn.com]
          ports:
          - {number: 8080, name: grpc, protocol: GRPC}
          resolution: DNS_ROUND_ROBIN
    ";
    let c = compile_str(&[
        ("a.yaml", GW_80),
        ("b.yaml", SE_CNN),
        ("c.yaml", vs),
        ("d.yaml", se2),
    ]);
    let vh = &http_table(&c.snapshot, 8080).virtual_hosts[0];
    // The port-81 rule is not for this server.
    assert_eq!(vh.routes.len(), 2);
    let r = &vh.routes[0];
    assert_eq!(r.name.as_deref(), Some("api"));
    assert_eq!(r.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(r.matches.len(), 2);
    let m = &r.matches[0];
    assert!(matches!(&m.uri, Some(StringMatch::Prefix(p)) if p == "/api"));
    assert!(matches!(&m.method, Some(StringMatch::Exact(p)) if p == "GET"));
    assert!(m.ignore_uri_case);
    let team = m.headers.iter().find(|h| h.name == "x-team").unwrap();
    let Some(StringMatch::Regex(re)) = &team.value else {
        panic!()
    };
    assert!(re.is_match("a") && !re.is_match("ab") && !re.is_match("xa"));
    assert!(m
        .headers
        .iter()
        .any(|h| h.name == "x-present" && h.value.is_none() && !h.invert));
    assert!(m.headers.iter().any(|h| h.name == "x-debug" && h.invert));
    assert_eq!(m.query_params.len(), 1);
    assert_eq!(
        forward_clusters(&r.action),
        vec![
            ("outbound|80||edition.cnn.com".to_string(), 90),
            ("outbound|8080||other.cnn.com".to_string(), 10)
        ]
    );
    assert!(
        matches!(&vh.routes[1].action, RouteAction::Direct { status: 418, body: Some(b) } if b == "teapot")
    );
    let other = c.snapshot.cluster("outbound|8080||other.cnn.com").unwrap();
    assert_eq!(other.protocol, UpstreamProtocol::Http2);
    assert!(
        matches!(&other.discovery, Discovery::LogicalDns { target } if target.host == "other.cnn.com" && target.port == 8080)
    );
}

#[test]
fn empty_http_server_gets_the_blackhole_host_and_foreign_gateways_are_ignored() {
    let other_gw = "
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata:
          name: ingress
        spec:
          selector: {istio: ingressgateway}
          servers:
          - port: {number: 9090, name: http, protocol: HTTP}
            hosts: ['*']
    ";
    let c = compile_str(&[("a.yaml", GW_80), ("b.yaml", other_gw)]);
    assert_eq!(c.snapshot.listeners.len(), 1);
    let t = http_table(&c.snapshot, 8080);
    assert_eq!(t.virtual_hosts.len(), 1);
    assert_eq!(t.virtual_hosts[0].name, "blackhole:80");
    assert_eq!(t.virtual_hosts[0].domains, vec![HostPattern::Any]);
    assert!(matches!(
        t.virtual_hosts[0].routes[0].action,
        RouteAction::Direct {
            status: 404,
            body: None
        }
    ));
    assert!(c.snapshot.clusters.is_empty());
}

#[test]
fn server_host_namespaces_restrict_binding_and_servers_merge() {
    let gw1 = "
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: gw}
        spec:
          selector: {istio: egressgateway}
          servers:
          - port: {number: 80, name: http, protocol: HTTP}
            hosts: [team-a/*.example.com]
    ";
    let gw2 = "
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: gw2}
        spec:
          selector: {istio: egressgateway}
          servers:
          - port: {number: 80, name: http, protocol: HTTP}
            hosts: [./cnn.example.com]
    ";
    let se = "
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: ex, namespace: team-a}
        spec:
          hosts: ['*.example.com']
          ports: [{number: 80, name: http, protocol: HTTP}]
          resolution: NONE
    ";
    let vs_a = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: a, namespace: team-a}
        spec:
          hosts: [api.example.com]
          gateways: [istio-system/gw]
          http:
          - route:
            - destination: {host: api.example.com}
    ";
    let vs_b = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: b, namespace: team-b}
        spec:
          hosts: [web.example.com]
          gateways: [istio-system/gw]
          http:
          - route:
            - destination: {host: web.example.com, port: {number: 80}}
    ";
    let vs_c = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: c}
        spec:
          hosts: ['*.example.com']
          gateways: [gw2]
          http:
          - route:
            - destination: {host: cnn.example.com}
    ";
    let c = compile_str(&[
        ("1.yaml", gw1),
        ("2.yaml", gw2),
        ("3.yaml", se),
        ("4.yaml", vs_a),
        ("5.yaml", vs_b),
        ("6.yaml", vs_c),
    ]);
    assert_eq!(c.snapshot.listeners.len(), 1);
    let t = http_table(&c.snapshot, 8080);
    let names: Vec<&str> = t.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    // team-b may not bind to team-a/*.example.com; gw2's host narrows *.example.com.
    assert_eq!(names, vec!["api.example.com:80", "cnn.example.com:80"]);
    let w = c
        .warnings
        .iter()
        .find(|w| w.resource.as_deref() == Some("VirtualService team-b/b"))
        .expect("warning for b");
    assert_eq!(w.field.as_deref(), Some("spec.hosts"));
    // resolution NONE at a gateway: warned, resolved by DNS on the concrete host.
    assert!(
        c.warnings
            .iter()
            .any(|w| w.field.as_deref() == Some("spec.resolution") && w.line == 7),
        "{:#?}",
        c.warnings
    );
    let cl = c.snapshot.cluster("outbound|80||api.example.com").unwrap();
    assert!(
        matches!(&cl.discovery, Discovery::StrictDns { targets } if targets[0].host == "api.example.com")
    );
}

#[test]
fn protocol_conflict_on_one_port_is_an_error() {
    let gw2 = "
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: gw2}
        spec:
          selector: {istio: egressgateway}
          servers:
          - port: {number: 80, name: tcp, protocol: TCP}
            hosts: ['*']
    ";
    let loaded = load_str(&[("a.yaml", GW_80), ("b.yaml", gw2)]).unwrap();
    let errs = compile(&loaded, &CompileOptions::default()).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].file.to_str(), errs[0].line), (Some("b.yaml"), 7));
    assert_eq!(errs[0].field.as_deref(), Some("spec.servers[0].port"));
}

#[test]
fn destination_rules_set_timeouts_lb_and_subsets() {
    let se = "
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: api}
        spec:
          hosts: [api.example.com]
          ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8000}]
          resolution: STATIC
          endpoints:
          - address: 10.0.0.1
            labels: {version: v1}
          - address: 10.0.0.2
            labels: {version: v2}
            ports: {http: 9000}
    ";
    let dr = "
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: api}
        spec:
          host: api.example.com
          trafficPolicy:
            loadBalancer: {simple: RANDOM}
            connectionPool:
              tcp: {connectTimeout: 3s}
          subsets:
          - name: v1
            labels: {version: v1}
          - name: v2
            labels: {version: v2}
            trafficPolicy:
              loadBalancer: {simple: LEAST_REQUEST}
              portLevelSettings:
              - port: {number: 80}
                connectionPool:
                  tcp: {connectTimeout: 250ms}
    ";
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: api}
        spec:
          hosts: [api.example.com]
          gateways: [gw]
          http:
          - route:
            - destination: {host: api.example.com, subset: v1}
              weight: 50
            - destination: {host: api.example.com, subset: v2}
              weight: 50
    ";
    let c = compile_str(&[
        ("a.yaml", GW_80),
        ("b.yaml", se),
        ("c.yaml", dr),
        ("d.yaml", vs),
    ]);
    assert_eq!(c.snapshot.clusters.len(), 2);
    let v1 = c
        .snapshot
        .cluster("outbound|80|v1|api.example.com")
        .unwrap();
    assert_eq!(v1.lb, LbPolicy::Random);
    assert_eq!(v1.connect_timeout, Duration::from_secs(3));
    assert!(
        matches!(&v1.discovery, Discovery::Static { endpoints } if endpoints == &vec!["10.0.0.1:8000".parse().unwrap()])
    );
    let v2 = c
        .snapshot
        .cluster("outbound|80|v2|api.example.com")
        .unwrap();
    // Port-level settings replace the subset's: default LB (Istio's LEAST_REQUEST), their timeout.
    assert_eq!(v2.lb, LbPolicy::LeastRequest);
    assert_eq!(v2.connect_timeout, Duration::from_millis(250));
    assert!(
        matches!(&v2.discovery, Discovery::Static { endpoints } if endpoints == &vec!["10.0.0.2:9000".parse().unwrap()])
    );
}

#[test]
fn kubernetes_service_hosts_and_only_used_clusters() {
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: vs, namespace: apps}
        spec:
          hosts: [edition.cnn.com, my-nginx.mesh-external.svc.cluster.local]
          gateways: [istio-system/gw, mesh]
          http:
          - match:
            - gateways: [mesh]
            route:
            - destination: {host: edition.cnn.com}
          - match:
            - gateways: [istio-system/gw]
              sourceLabels: {istio: egressgateway}
            route:
            - destination: {host: my-nginx.mesh-external.svc.cluster.local, port: {number: 443}}
          - match:
            - sourceLabels: {app: sleep}
            route:
            - destination: {host: edition.cnn.com}
    ";
    let c = compile_str(&[("a.yaml", GW_80), ("b.yaml", SE_CNN), ("c.yaml", vs)]);
    let keys: Vec<String> = c.snapshot.clusters.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        keys,
        vec!["outbound|443||my-nginx.mesh-external.svc.cluster.local"]
    );
    let cl = &c.snapshot.clusters.values().next().unwrap();
    assert!(
        matches!(&cl.discovery, Discovery::StrictDns { targets } if targets[0] == DnsTarget { host: "my-nginx.mesh-external.svc.cluster.local".into(), port: 443 })
    );
    let t = http_table(&c.snapshot, 8080);
    assert_eq!(t.virtual_hosts.len(), 2);
    assert!(t.virtual_hosts.iter().all(|v| v.routes.len() == 1));
}

#[test]
fn tcp_routes() {
    let gw = "
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: gw}
        spec:
          selector: {istio: egressgateway}
          servers:
          - port: {number: 5432, name: pg, protocol: TCP}
            hosts: [db.example.com]
    ";
    let se = "
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: db}
        spec:
          hosts: [db.example.com]
          ports: [{number: 5432, name: pg, protocol: TCP}]
          resolution: DNS
    ";
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: db}
        spec:
          hosts: [db.example.com]
          gateways: [gw]
          tcp:
          - match: [{port: 1234}]
            route: [{destination: {host: other.example.com, port: {number: 1}}}]
          - route: [{destination: {host: db.example.com}}]
    ";
    let c = compile_str(&[("a.yaml", gw), ("b.yaml", se), ("c.yaml", vs)]);
    let l = c.snapshot.listener_on(5432).unwrap();
    assert_eq!(l.name, "0.0.0.0_5432");
    let ListenerRoutes::Tcp(t) = &l.routes else {
        panic!()
    };
    assert_eq!(
        t.clusters.as_ref().unwrap().clusters[0].cluster.as_ref(),
        "outbound|5432||db.example.com"
    );
    assert_eq!(
        c.snapshot
            .cluster("outbound|5432||db.example.com")
            .unwrap()
            .protocol,
        UpstreamProtocol::Tcp
    );
    assert_eq!(c.snapshot.clusters.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// TLS: origination (DestinationRule) and termination (Gateway)

#[test]
fn upstream_tls_precedence_subset_over_top_port_level_over_both() {
    let se = "
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: api}
        spec:
          hosts: [api.example.com]
          ports:
          - {number: 80, name: http, protocol: HTTP}
          - {number: 8443, name: https, protocol: HTTPS}
          - {number: 9443, name: https2, protocol: HTTPS}
          resolution: DNS
    ";
    let dr = "
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: api, namespace: apps}
        spec:
          host: api.example.com
          trafficPolicy:
            tls:
              mode: SIMPLE
              sni: top.example.com
              caCertificates: /etc/ca.pem
              subjectAltNames: [api.example.com]
            portLevelSettings:
            - port: {number: 8443}
              tls: {mode: ISTIO_MUTUAL}
            - port: {number: 9443}
              loadBalancer: {simple: RANDOM}
          subsets:
          - name: a
            trafficPolicy:
              tls:
                mode: MUTUAL
                clientCertificate: /etc/client.pem
                privateKey: /etc/client.key
          - name: b
          - name: c
            trafficPolicy:
              portLevelSettings:
              - port: {number: 80}
                tls: {mode: DISABLE}
    ";
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: api}
        spec:
          hosts: [api.example.com]
          gateways: [gw]
          http:
          - match: [{uri: {prefix: /top}}]
            route: [{destination: {host: api.example.com, port: {number: 80}}}]
          - match: [{uri: {prefix: /a}}]
            route: [{destination: {host: api.example.com, port: {number: 80}, subset: a}}]
          - match: [{uri: {prefix: /b}}]
            route: [{destination: {host: api.example.com, port: {number: 80}, subset: b}}]
          - match: [{uri: {prefix: /c}}]
            route: [{destination: {host: api.example.com, port: {number: 80}, subset: c}}]
          - match: [{uri: {prefix: /mesh}}]
            route: [{destination: {host: api.example.com, port: {number: 8443}}}]
          - match: [{uri: {prefix: /mesh-a}}]
            route: [{destination: {host: api.example.com, port: {number: 8443}, subset: a}}]
          - route: [{destination: {host: api.example.com, port: {number: 9443}}}]
    ";
    let c = compile_str(&[
        ("a.yaml", GW_80),
        ("b.yaml", se),
        ("c.yaml", dr),
        ("d.yaml", vs),
    ]);
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let tls = |name: &str| {
        c.snapshot
            .cluster(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .tls
            .clone()
    };

    // Top level: as written.
    let top = tls("outbound|80||api.example.com").expect("top-level TLS");
    assert_eq!(top.mode, TlsMode::Simple);
    assert_eq!(top.sni, "top.example.com");
    assert_eq!(top.subject_alt_names, vec!["api.example.com".to_string()]);
    assert_eq!(
        top.source.ca_certificates.as_deref(),
        Some(Path::new("/etc/ca.pem"))
    );
    assert_eq!(top.origin, "DestinationRule apps/api");
    // Subset `tls` replaces the top level's wholesale (sni back to the default).
    let a = tls("outbound|80|a|api.example.com").expect("subset TLS");
    assert_eq!(
        (a.mode, a.sni.as_str()),
        (TlsMode::Mutual, "api.example.com")
    );
    assert_eq!(
        a.source,
        CertSource {
            certificate: Some("/etc/client.pem".into()),
            private_key: Some("/etc/client.key".into()),
            ..CertSource::default()
        }
    );
    // A subset without a policy inherits the top level.
    assert_eq!(
        tls("outbound|80|b|api.example.com").map(|t| (t.mode, t.sni.clone())),
        Some((TlsMode::Simple, "top.example.com".into()))
    );
    // The subset's port-level DISABLE wins over everything.
    assert!(tls("outbound|80|c|api.example.com").is_none());
    // Top-level port-level settings replace the top level for that port; ISTIO_MUTUAL's
    // default SNI is Istio's cluster key.
    let mesh = tls("outbound|8443||api.example.com").expect("port-level TLS");
    assert_eq!(
        (mesh.mode, mesh.sni.as_str()),
        (TlsMode::IstioMutual, "outbound_.8443_._.api.example.com")
    );
    assert_eq!(mesh.source, CertSource::default());
    // ... and the subset's own `tls` overrides the top level's port-level settings.
    assert_eq!(
        tls("outbound|8443|a|api.example.com").map(|t| t.mode),
        Some(TlsMode::Mutual)
    );
    // Port-level settings do not inherit: no `tls` there means none.
    assert!(tls("outbound|9443||api.example.com").is_none());
    assert_eq!(
        c.snapshot
            .cluster("outbound|9443||api.example.com")
            .map(|c| c.lb),
        Some(LbPolicy::Random)
    );

    let text = describe(&c.snapshot);
    assert!(
        text.contains("SIMPLE sni=top.example.com ca=/etc/ca.pem san=api.example.com"),
        "{text}"
    );
    assert!(
        text.contains("MUTUAL sni=api.example.com cert=/etc/client.pem key=/etc/client.key"),
        "{text}"
    );
}

#[test]
fn upstream_tls_applies_to_passthrough_and_insecure_skip_verify() {
    let gw = "
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: gw}
        spec:
          selector: {istio: egressgateway}
          servers:
          - port: {number: 5432, name: pg, protocol: TCP}
            hosts: [db.example.com]
    ";
    let se = "
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: db}
        spec:
          hosts: [db.example.com]
          ports: [{number: 5432, name: pg, protocol: TCP}]
          resolution: DNS
    ";
    let dr = "
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: db}
        spec:
          host: db.example.com
          trafficPolicy:
            tls: {mode: SIMPLE, insecureSkipVerify: true}
    ";
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: db}
        spec:
          hosts: [db.example.com]
          gateways: [gw]
          tcp:
          - route: [{destination: {host: db.example.com}}]
    ";
    let c = compile_str(&[
        ("a.yaml", gw),
        ("b.yaml", se),
        ("c.yaml", dr),
        ("d.yaml", vs),
    ]);
    let cl = c.snapshot.cluster("outbound|5432||db.example.com").unwrap();
    assert_eq!(cl.protocol, UpstreamProtocol::Tcp);
    let t = cl.tls.as_deref().expect("TLS for TCP too");
    assert!(t.insecure_skip_verify);
    assert_eq!(t.sni, "db.example.com");
    assert!(describe(&c.snapshot).contains("SIMPLE sni=db.example.com insecure-skip-verify"));
}

const DR_HEAD: &str = "
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: dr}
    spec:
      host: api.example.com
      trafficPolicy:
";

fn dr_with(policy: &str) -> String {
    format!(
        "{}{}",
        dedent(DR_HEAD),
        dedent(policy)
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

#[test]
fn upstream_tls_validation_errors_name_file_line_and_field() {
    // MUTUAL without any client certificate.
    let dr = dr_with(
        "
        tls:
          mode: MUTUAL
          sni: api.example.com
    ",
    );
    let e = one_error(&[("dr.yaml", &dr)]);
    assert_eq!((e.file.to_str(), e.line), (Some("dr.yaml"), 8));
    assert_eq!(
        e.resource.as_deref(),
        Some("DestinationRule istio-system/dr")
    );
    assert_eq!(e.field.as_deref(), Some("spec.trafficPolicy.tls.mode"));
    assert!(
        e.message.contains("credentialName")
            && e.message.contains("clientCertificate and privateKey"),
        "{e}"
    );

    // clientCertificate without privateKey (any mode), at port level: reported at the tls block.
    let dr = dr_with(
        "
        portLevelSettings:
        - port: {number: 443}
          tls:
            mode: SIMPLE
            clientCertificate: /etc/c.pem
    ",
    );
    let e = one_error(&[("dr.yaml", &dr)]);
    assert_eq!(e.line, 9);
    assert_eq!(
        e.field.as_deref(),
        Some("spec.trafficPolicy.portLevelSettings[0].tls.privateKey")
    );
    assert!(e.message.contains("privateKey is required"), "{e}");

    // privateKey without clientCertificate, in a subset.
    let dr = "
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: dr}
        spec:
          host: api.example.com
          subsets:
          - name: v1
            trafficPolicy:
              tls:
                mode: MUTUAL
                privateKey: /etc/k.pem
    ";
    let e = one_error(&[("dr.yaml", dr)]);
    assert_eq!(e.line, 9);
    assert_eq!(
        e.field.as_deref(),
        Some("spec.subsets[0].trafficPolicy.tls.clientCertificate")
    );

    // credentialName together with files; insecureSkipVerify with a CA.
    let dr = dr_with(
        "
        tls:
          mode: SIMPLE
          credentialName: cred
          caCertificates: /etc/ca.pem
          insecureSkipVerify: true
    ",
    );
    let errs = load_errors(&[("dr.yaml", &dr)]);
    let got: Vec<(u32, &str)> = errs
        .iter()
        .map(|e| (e.line, e.field.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        got,
        vec![
            (10, "spec.trafficPolicy.tls.caCertificates"),
            (10, "spec.trafficPolicy.tls.caCertificates"),
            (9, "spec.trafficPolicy.tls.credentialName"),
        ]
    );
    assert!(errs[0].message.contains("credentialName"), "{}", errs[0]);
    assert!(
        errs[1].message.contains("insecureSkipVerify"),
        "{}",
        errs[1]
    );

    // MUTUAL with a credential is fine; caCrl is not supported yet.
    let dr = dr_with(
        "
        tls:
          mode: MUTUAL
          credentialName: cred
          caCrl: /etc/crl.pem
    ",
    );
    let loaded = load_str(&[("dr.yaml", &dr)]).unwrap();
    assert_eq!(loaded.warnings.len(), 1, "{:#?}", loaded.warnings);
    assert_eq!(loaded.warnings[0].to_string(), "dr.yaml:10: DestinationRule istio-system/dr: spec.trafficPolicy.tls.caCrl: not supported yet; ignored");

    // ISTIO_MUTUAL ignores explicit files, with a warning.
    let dr = dr_with(
        "
        tls:
          mode: ISTIO_MUTUAL
          clientCertificate: /etc/c.pem
    ",
    );
    let loaded = load_str(&[("dr.yaml", &dr)]).unwrap();
    assert_eq!(loaded.warnings.len(), 1, "{:#?}", loaded.warnings);
    assert_eq!(
        (loaded.warnings[0].line, loaded.warnings[0].field.as_deref()),
        (9, Some("spec.trafficPolicy.tls.clientCertificate"))
    );
}

fn gw_with_servers(servers: &str) -> String {
    let head = "
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: gw}
        spec:
          selector: {istio: egressgateway}
          servers:
    ";
    format!(
        "{}\n{}",
        dedent(head).trim_end(),
        dedent(servers)
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    )
}

#[test]
fn server_tls_validation_errors_name_file_line_and_field() {
    // SIMPLE without any certificate: at the mode's line.
    let gw = gw_with_servers(
        "
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: [a.example.com]
          tls:
            mode: SIMPLE
    ",
    );
    let e = one_error(&[("gw.yaml", &gw)]);
    assert_eq!((e.file.to_str(), e.line), (Some("gw.yaml"), 10));
    assert_eq!(e.resource.as_deref(), Some("Gateway istio-system/gw"));
    assert_eq!(e.field.as_deref(), Some("spec.servers[0].tls.mode"));
    assert!(
        e.message.contains("credentialName")
            && e.message.contains("serverCertificate and privateKey"),
        "{e}"
    );

    // MUTUAL with files but no client CA; serverCertificate without privateKey.
    let gw = gw_with_servers(
        "
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: [a.example.com]
          tls:
            mode: MUTUAL
            serverCertificate: /etc/s.pem
    ",
    );
    let errs = load_errors(&[("gw.yaml", &gw)]);
    let got: Vec<(u32, &str)> = errs
        .iter()
        .map(|e| (e.line, e.field.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        got,
        vec![
            (9, "spec.servers[0].tls.privateKey"),
            (9, "spec.servers[0].tls.caCertificates"),
        ]
    );

    // ISTIO_MUTUAL uses the mesh certificates only.
    let gw = gw_with_servers(
        "
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: [a.example.com]
          tls:
            mode: ISTIO_MUTUAL
            credentialName: cred
    ",
    );
    let e = one_error(&[("gw.yaml", &gw)]);
    assert_eq!(
        (e.line, e.field.as_deref()),
        (11, Some("spec.servers[0].tls.credentialName"))
    );
    assert!(e.message.contains("mesh certificates"), "{e}");

    // Valid: a credential alone; unsupported extras warn.
    let gw = gw_with_servers(
        "
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: [a.example.com]
          tls:
            mode: MUTUAL
            credentialName: cred
            minProtocolVersion: TLSV1_3
    ",
    );
    let c = compile_str(&[("gw.yaml", &gw)]);
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(
        c.warnings[0].to_string(),
        "gw.yaml:12: Gateway istio-system/gw: spec.servers[0].tls.minProtocolVersion: not supported yet; ignored"
    );
    let l = c.snapshot.listener_on(8443).unwrap();
    assert_eq!(
        l.tls_servers[0].tls.source,
        CertSource {
            credential_name: Some("cred".into()),
            ..CertSource::default()
        }
    );
    assert_eq!(l.tls_servers[0].tls.mode, TlsMode::Mutual);
}

#[test]
fn https_servers_on_one_port_merge_by_sni() {
    let gw = gw_with_servers(
        "
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: [istio-system/a.example.com]
          tls:
            mode: SIMPLE
            serverCertificate: /etc/a.pem
            privateKey: /etc/a.key
        - port: {number: 443, name: https-b, protocol: HTTPS}
          hosts: ['*.b.example.com', b.example.com]
          tls:
            mode: MUTUAL
            credentialName: b-cred
            subjectAltNames: [client.example.com]
        - port: {number: 443, name: https-dup, protocol: HTTPS}
          hosts: [a.example.com]
          tls:
            mode: ISTIO_MUTUAL
        - port: {number: 443, name: https-b, protocol: HTTPS}
          hosts: [c.example.com]
          tls:
            mode: ISTIO_MUTUAL
        - port: {number: 8000, name: auto, protocol: HTTPS}
          hosts: ['*']
          tls:
            mode: AUTO_PASSTHROUGH
        - port: {number: 9000, name: tls, protocol: TLS}
          hosts: ['*']
          tls:
            mode: ISTIO_MUTUAL
    ",
    );
    let se = "
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: a}
        spec:
          hosts: [a.example.com, x.b.example.com]
          ports: [{number: 443, name: https, protocol: HTTPS}]
          resolution: DNS
    ";
    let vs = "
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: vs}
        spec:
          hosts: [a.example.com, x.b.example.com]
          gateways: [gw]
          http:
          - match: [{port: 80}]
            route: [{destination: {host: nowhere.example.com, port: {number: 80}}}]
          - route: [{destination: {host: a.example.com}}]
    ";
    let c = compile_str(&[("gw.yaml", &gw), ("se.yaml", se), ("vs.yaml", vs)]);
    let w: Vec<(u32, &str)> = c
        .warnings
        .iter()
        .map(|w| (w.line, w.field.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        w,
        vec![
            (20, "spec.servers[2].hosts"),
            (23, "spec.servers[3].port.name"),
            (30, "spec.servers[4].tls.mode"),
            (34, "spec.servers[5].tls.mode")
        ],
        "{:#?}",
        c.warnings
    );
    assert!(
        c.warnings[0]
            .message
            .contains("a.example.com is already served with TLS on port 443"),
        "{}",
        c.warnings[0]
    );
    assert!(
        c.warnings[1]
            .message
            .contains("port name \"https-b\" is already used by another HTTPS server"),
        "{}",
        c.warnings[1]
    );
    assert!(
        c.warnings[2].message.contains("AUTO_PASSTHROUGH")
            && c.warnings[2].message.contains("skipped"),
        "{}",
        c.warnings[2]
    );
    assert!(
        c.warnings[3].message.contains("protocol TLS"),
        "{}",
        c.warnings[3]
    );

    assert_eq!(c.snapshot.listeners.len(), 1);
    let l = c.snapshot.listener_on(8443).unwrap();
    assert_eq!(l.protocol, ServerProtocol::Https);
    assert_eq!(l.tls_servers.len(), 2);
    let (a, b) = (&l.tls_servers[0], &l.tls_servers[1]);
    assert_eq!(a.hosts, vec![HostPattern::Exact("a.example.com".into())]);
    assert_eq!(a.tls.mode, TlsMode::Simple);
    assert_eq!(
        a.tls.source.certificate.as_deref(),
        Some(Path::new("/etc/a.pem"))
    );
    assert_eq!(
        a.tls.source.private_key.as_deref(),
        Some(Path::new("/etc/a.key"))
    );
    assert_eq!(a.tls.origin, "Gateway istio-system/gw servers[0]");
    assert_eq!(
        b.hosts,
        vec![
            HostPattern::parse("*.b.example.com"),
            HostPattern::Exact("b.example.com".into())
        ]
    );
    assert_eq!(
        (b.tls.mode, b.tls.subject_alt_names.clone()),
        (TlsMode::Mutual, vec!["client.example.com".to_string()])
    );
    assert_eq!(b.tls.origin, "Gateway istio-system/gw servers[1]");

    // One route table per server, with that server's hosts only (Istio's RDS per HTTPS
    // server): a.example.com is not routed on b's connections, nor x.b.example.com on a's.
    let ListenerRoutes::Https(tables) = &l.routes else {
        panic!("not https: {:?}", l.routes)
    };
    let tables: Vec<(&str, Vec<&str>)> = tables
        .iter()
        .map(|t| {
            let hosts = t.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
            (t.name.as_str(), hosts)
        })
        .collect();
    assert_eq!(
        tables,
        vec![
            ("https.443.https.gw.istio-system", vec!["a.example.com:443"]),
            (
                "https.443.https-b.gw.istio-system",
                vec!["x.b.example.com:443"]
            ),
        ]
    );
    // The port-80 rule does not apply on 443.
    let t = http_table(&c.snapshot, 8443);
    assert!(t.virtual_hosts.iter().all(|v| v.routes.len() == 1));
    assert_eq!(
        c.snapshot
            .clusters
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        vec!["outbound|443||a.example.com"]
    );
    assert!(describe(&c.snapshot).contains("HTTPS (SIMPLE, MUTUAL)"));
}

#[test]
fn http_and_https_servers_on_one_port_conflict() {
    let gw = gw_with_servers(
        "
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: [a.example.com]
          tls: {mode: ISTIO_MUTUAL}
        - port: {number: 443, name: http, protocol: HTTP}
          hosts: [b.example.com]
    ",
    );
    let loaded = load_str(&[("gw.yaml", &gw)]).unwrap();
    let errs = compile(&loaded, &CompileOptions::default()).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        (errs[0].line, errs[0].field.as_deref()),
        (10, Some("spec.servers[1].port"))
    );
    assert!(
        errs[0].message.contains("HTTPS (TLS termination)"),
        "{}",
        errs[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Registry lookups and large configurations

/// A ServiceEntry for `host` with one STATIC endpoint `ip`, so a cluster shows which entry won.
fn static_se(name: &str, ns: &str, host: &str, export_to: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  \
         namespace: {ns}\nspec:\n  hosts: ['{host}']\n  exportTo: [{export_to}]\n  ports:\n  \
         - {{number: 80, name: http, protocol: HTTP}}\n  resolution: STATIC\n  endpoints:\n  \
         - address: {ip}\n"
    )
}

/// A DestinationRule for `host` whose only effect is the connect timeout `secs`.
fn timeout_dr(name: &str, ns: &str, host: &str, extra: &str, secs: u64) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  \
         namespace: {ns}\nspec:\n  host: '{host}'\n{extra}  trafficPolicy:\n    connectionPool:\n      \
         tcp: {{connectTimeout: {secs}s}}\n"
    )
}

/// Which ServiceEntry and DestinationRule a destination gets: exact host first, then the
/// longest wildcard; among equals the VirtualService's namespace, then the gateway's, then
/// the first loaded; resources not exported to the gateway's namespace (or selecting other
/// workloads) are not seen.
#[test]
fn registry_lookup_precedence() {
    let mut reg = String::new();
    for (name, ns, host, export_to, ip) in [
        (
            "wild-short",
            "istio-system",
            "*.example.com",
            "",
            "10.0.0.1",
        ),
        (
            "wild-long",
            "istio-system",
            "*.api.example.com",
            "",
            "10.0.0.2",
        ),
        ("exact-a", "other", "a.api.example.com", "", "10.0.0.3"),
        ("hidden-b", "team", "b.api.example.com", "'.'", "10.0.0.4"),
        ("c-far", "zzz", "c.example.com", "", "10.0.0.5"),
        (
            "c-gateway-ns",
            "istio-system",
            "c.example.com",
            "",
            "10.0.0.6",
        ),
        (
            "d-gateway-ns",
            "istio-system",
            "d.example.com",
            "",
            "10.0.0.7",
        ),
        ("d-vs-ns", "team", "d.example.com", "'*'", "10.0.0.8"),
        ("e-first", "zzz", "e.example.com", "", "10.0.0.9"),
        ("e-second", "yyy", "e.example.com", "", "10.0.0.10"),
        (
            "no-dot-wildcard",
            "istio-system",
            "*ample.org",
            "",
            "10.0.0.11",
        ),
    ] {
        reg.push_str(&static_se(name, ns, host, export_to, ip));
    }
    reg.push_str(&timeout_dr(
        "dr-wild",
        "istio-system",
        "*.example.com",
        "",
        3,
    ));
    reg.push_str(&timeout_dr("dr-x", "istio-system", "x.example.com", "", 4));
    reg.push_str(&timeout_dr(
        "dr-other-workload",
        "istio-system",
        "c.example.com",
        "  workloadSelector:\n    labels: {app: other}\n",
        5,
    ));
    reg.push_str(&timeout_dr(
        "dr-hidden",
        "team",
        "d.example.com",
        "  exportTo: ['.']\n",
        6,
    ));
    let expected = [
        ("a.api.example.com", "10.0.0.3", 3),
        ("x.api.example.com", "10.0.0.2", 3),
        ("x.example.com", "10.0.0.1", 4),
        ("b.api.example.com", "10.0.0.2", 3),
        ("c.example.com", "10.0.0.6", 3),
        ("d.example.com", "10.0.0.8", 3),
        ("e.example.com", "10.0.0.9", 3),
        ("example.org", "10.0.0.11", 10),
    ];
    let mut vs = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\n  \
         namespace: team\nspec:\n  hosts: ['*']\n  gateways: [istio-system/gw]\n  http:\n",
    );
    for (i, (host, _, _)) in expected.iter().enumerate() {
        vs.push_str(&format!(
            "  - match: [{{uri: {{prefix: /{i}}}}}]\n    route:\n    \
             - destination: {{host: {host}, port: {{number: 80}}}}\n"
        ));
    }
    let c = compile_str(&[("a.yaml", GW_80), ("b.yaml", &reg), ("c.yaml", &vs)]);
    for (host, ip, secs) in expected {
        let name = format!("outbound|80||{host}");
        let cluster = c
            .snapshot
            .clusters
            .get(name.as_str())
            .unwrap_or_else(|| panic!("no cluster {name}: {:#?}", c.warnings));
        assert_eq!(
            cluster.discovery,
            Discovery::Static {
                endpoints: vec![format!("{ip}:80").parse().unwrap()]
            },
            "{host}"
        );
        assert_eq!(cluster.connect_timeout, Duration::from_secs(secs), "{host}");
    }
}

/// One file of more than 1,024 documents (the YAML reader's default limit) loads: 3,000
/// ServiceEntries, the Gateway and a VirtualService routing some of them.
#[test]
fn one_file_with_more_than_1024_documents_loads() {
    const N: usize = 3_000;
    let mut text = dedent(GW_80);
    for i in 0..N {
        text.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se-{i}\n\
             spec:\n  hosts: [host-{i}.example.com]\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n  \
             resolution: DNS\n"
        ));
    }
    // The VirtualService's first line, after its `---`.
    let vs_line = text.lines().count() + 2;
    text.push_str(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\n\
         spec:\n  hosts: ['*']\n  gateways: [gw]\n  http:\n  - match: [{uri: {prefix: /a}}]\n    \
         route:\n    - destination: {host: host-7.example.com, port: {number: 80}}\n  \
         - route:\n    - destination: {host: host-2999.example.com, port: {number: 80}}\n",
    );
    let loaded = load_sources(
        &[(PathBuf::from("all.yaml"), text)],
        &LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.service_entries.len(), N);
    assert_eq!(loaded.service_entries[N - 1].name, format!("se-{}", N - 1));
    assert_eq!(loaded.virtual_services.len(), 1);
    // Lines still count from the top of the file.
    assert_eq!(loaded.virtual_services[0].source.line as usize, vs_line);
    let c = compile(&loaded, &CompileOptions::default()).unwrap_or_else(|e| panic!("{e:#?}"));
    let names: Vec<&str> = c.snapshot.clusters.keys().map(|k| &**k).collect();
    assert_eq!(
        names,
        [
            "outbound|80||host-2999.example.com",
            "outbound|80||host-7.example.com"
        ]
    );
}
