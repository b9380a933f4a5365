//! VirtualService route policy (retries, rewrites, redirects, headers, faults, mirrors)
//! compiles into what Istio would configure Envoy with; bad values are errors; every field
//! the README table marks as a warning warns with the table's message.

use std::path::PathBuf;
use std::time::Duration;

use egret_config::{
    compile, load_sources, CompileOptions, Compiled, Diagnostic, LoadOptions, Severity, Support,
    VIRTUAL_SERVICE_FIELDS,
};
use egret_core::{
    AbortCode, Fraction, ListenerRoutes, PathRewrite, Redirect, RetryOn, RetryPolicy, Route,
    RouteAction,
};

fn dedent(s: &str) -> String {
    let s = s.strip_prefix('\n').unwrap_or(s);
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    s.lines()
        .map(|l| l.get(indent..).unwrap_or(l.trim_start()))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

const BASE: &str = "
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: cnn}
    spec:
      hosts: [edition.cnn.com, mirror.example.com, other.example.com]
      ports: [{number: 80, name: http, protocol: HTTP}]
      resolution: DNS
    ---
    apiVersion: networking.istio.io/v1
    kind: Gateway
    metadata: {name: gw}
    spec:
      selector: {istio: egressgateway}
      servers:
      - port: {number: 80, name: http, protocol: HTTP}
        hosts: ['*']
";

/// The VirtualService `vs.yaml` with these `http` rules (indented as list items of `http:`).
fn vs(http: &str) -> String {
    let mut s = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n  hosts: [edition.cnn.com]\n  gateways: [gw]\n  http:\n",
    );
    for l in dedent(http).lines() {
        s.push_str("  ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

fn load(http: &str) -> Result<egret_config::Loaded, Vec<Diagnostic>> {
    let sources = vec![
        (PathBuf::from("base.yaml"), dedent(BASE)),
        (PathBuf::from("vs.yaml"), vs(http)),
    ];
    load_sources(&sources, &LoadOptions::default()).map_err(|e| e.errors)
}

fn compiled(http: &str) -> Compiled {
    let loaded = load(http).unwrap_or_else(|e| panic!("load failed: {e:#?}"));
    compile(&loaded, &CompileOptions::default()).unwrap_or_else(|e| panic!("{e:#?}"))
}

fn routes(c: &Compiled) -> Vec<&Route> {
    let l = c.snapshot.listener_on(8080).expect("listener");
    let ListenerRoutes::Http(t) = &l.routes else {
        panic!("not http")
    };
    t.virtual_hosts
        .iter()
        .flat_map(|v| v.routes.iter())
        .collect()
}

fn errors(http: &str) -> Vec<String> {
    match load(http) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.iter().map(|d| d.to_string()).collect(),
    }
}

fn warnings(c: &Compiled) -> Vec<String> {
    c.warnings.iter().map(|d| d.to_string()).collect()
}

const DEST: &str = "route: [{destination: {host: edition.cnn.com}}]";

#[test]
fn retries_follow_istio_convert_policy() {
    // (The first rule has a match: a catch-all would end the VirtualService, as in Istio.)
    let c = compiled(&format!(
        "
        - match: [{{uri: {{prefix: /default}}}}]
          {DEST}
        - match: [{{uri: {{prefix: /off}}}}]
          {DEST}
          retries: {{attempts: 0, perTryTimeout: 1s}}
        - match: [{{uri: {{prefix: /custom}}}}]
          {DEST}
          retries:
            attempts: 4
            perTryTimeout: 250ms
            retryOn: 5xx, 418 ,retriable-4xx
            backoff: 10ms
            retryIgnorePreviousHosts: false
        - match: [{{uri: {{prefix: /codes-only}}}}]
          {DEST}
          retries: {{attempts: 1, retryOn: '409'}}
        "
    ));
    let r = routes(&c);
    // No `retries`: Istio's default.
    assert_eq!(r[0].policy.retry, Some(RetryPolicy::istio_default()));
    // attempts 0 disables, and says so.
    assert_eq!(r[1].policy.retry, None);
    assert!(warnings(&c)
        .iter()
        .any(|w| w.contains("spec.http[1].retries.attempts: attempts is 0")));
    let custom = r[2].policy.retry.as_ref().unwrap();
    assert_eq!(custom.num_retries, 4);
    assert_eq!(custom.per_try_timeout, Some(Duration::from_millis(250)));
    assert_eq!(
        custom.retry_on,
        RetryOn::FIVE_XX | RetryOn::RETRIABLE_4XX | RetryOn::RETRIABLE_STATUS_CODES
    );
    assert_eq!(custom.retriable_status_codes, [418]);
    assert_eq!(custom.backoff_base, Duration::from_millis(10));
    assert!(!custom.ignore_previous_hosts);
    let codes = r[3].policy.retry.as_ref().unwrap();
    assert_eq!(codes.retry_on, RetryOn::RETRIABLE_STATUS_CODES);
    assert_eq!(codes.retriable_status_codes, [409]);
    // Nothing about retries warns any more.
    assert!(
        !warnings(&c).iter().any(|w| w.contains("not supported")),
        "{:#?}",
        warnings(&c)
    );
}

#[test]
fn retry_values_are_checked() {
    let e = errors(&format!(
        "
        - {DEST}
          retries: {{attempts: -1, retryOn: '5xx,bogus,999', perTryTimeout: 0s}}
        "
    ));
    let all = e.join("\n");
    assert!(all.contains("attempts must not be negative"), "{all}");
    assert!(
        all.contains("\"bogus\" is not a valid retryOn policy"),
        "{all}"
    );
    assert!(
        all.contains("\"999\" is not a valid retryOn policy"),
        "{all}"
    );
    assert!(all.contains("perTryTimeout must be at least 1ms"), "{all}");
    let c = compiled(&format!(
        "
        - {DEST}
          retries: {{attempts: 2, retryOn: 'envoy-ratelimited,5xx'}}
        "
    ));
    assert!(warnings(&c)
        .iter()
        .any(|w| w.contains("retryOn \"envoy-ratelimited\" is not supported yet; ignored")));
    assert_eq!(
        routes(&c)[0].policy.retry.as_ref().unwrap().retry_on,
        RetryOn::FIVE_XX
    );
}

#[test]
fn rewrites_and_authority() {
    let c = compiled(&format!(
        r#"
        - match: [{{uri: {{prefix: /old}}}}]
          {DEST}
          rewrite: {{uri: /new, authority: new.example.com}}
        - match: [{{uri: {{prefix: /rx}}}}]
          {DEST}
          rewrite:
            uriRegexRewrite: {{match: '^/rx/([^/]+)/(.*)$', rewrite: '/\2/\1'}}
        - match: [{{uri: {{prefix: /hosthdr}}}}]
          route:
          - destination: {{host: edition.cnn.com}}
            headers: {{request: {{set: {{host: dest.example.com}}}}}}
          headers: {{request: {{add: {{":authority": rule.example.com}}}}}}
        "#
    ));
    let r = routes(&c);
    let rw = r[0].policy.rewrite.as_ref().unwrap();
    assert!(matches!(&rw.path, Some(PathRewrite::Prefix(p)) if p == "/new"));
    assert_eq!(rw.authority.as_deref(), Some("new.example.com"));
    match &r[1].policy.rewrite.as_ref().unwrap().path {
        Some(PathRewrite::Regex {
            pattern,
            substitution,
        }) => {
            assert_eq!(substitution, "/${2}/${1}");
            assert_eq!(
                pattern.replace_all("/rx/a/b/c", substitution.as_str()),
                "/b/c/a"
            );
        }
        other => panic!("{other:?}"),
    }
    // A `host` header operation is an authority rewrite; the rule's wins over the
    // destination's; the header itself is not set.
    let p = &r[2].policy;
    assert_eq!(
        p.rewrite.as_ref().unwrap().authority.as_deref(),
        Some("rule.example.com")
    );
    assert!(p.headers.request.add.is_empty());
    let e = errors(&format!(
        "
        - {DEST}
          rewrite: {{uri: /a, uriRegexRewrite: {{match: a}}}}
        "
    ))
    .join("\n");
    assert!(
        e.contains("only one of uri or uriRegexRewrite may be set"),
        "{e}"
    );
    assert!(
        e.contains("uriRegexRewrite.rewrite: required field is missing"),
        "{e}"
    );
}

#[test]
fn redirects_as_istio_apply_redirect() {
    let c = compiled(
        "
        - match: [{uri: {prefix: /a}}]
          redirect: {uri: /new}
        - match: [{uri: {prefix: /b}}]
          redirect: {authority: other.com, port: 8443, scheme: https, redirectCode: 302}
        - match: [{uri: {prefix: /c}}]
          redirect: {derivePort: FROM_REQUEST_PORT, redirectCode: 308}
        - match: [{uri: {prefix: /d}}]
          redirect: {scheme: https, port: 443}
        ",
    );
    let r = routes(&c);
    let red = |i: usize| match &r[i].action {
        RouteAction::Redirect(x) => x.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        red(0),
        Redirect {
            status: 301,
            scheme: None,
            host: None,
            port: None,
            path: Some("/new".into())
        }
    );
    let b = red(1);
    assert_eq!(
        (b.status, b.scheme.as_deref(), b.host.as_deref(), b.port),
        (302, Some("https"), Some("other.com"), Some(8443))
    );
    // FROM_REQUEST_PORT is the server's port, 80, which http leaves out.
    assert_eq!((red(2).status, red(2).port), (308, None));
    assert_eq!(red(3).port, None);
    assert!(!warnings(&c).iter().any(|w| w.contains("redirect")));
    let e = errors(
        "
        - redirect: {uri: /x, redirectCode: 304, derivePort: SOMETIMES}
          rewrite: {uri: /y}
        ",
    )
    .join("\n");
    assert!(e.contains("redirect code 304 is not supported"), "{e}");
    assert!(e.contains("unknown derivePort \"SOMETIMES\""), "{e}");
    assert!(e.contains("rewrite cannot be used with redirect"), "{e}");
}

#[test]
fn faults_follow_istio_translate_fault() {
    let c = compiled(&format!(
        "
        - match: [{{uri: {{prefix: /a}}}}]
          {DEST}
          fault:
            delay: {{fixedDelay: 300ms, percentage: {{value: 12.5}}}}
            abort: {{httpStatus: 418, percentage: {{value: 100}}}}
        - match: [{{uri: {{prefix: /b}}}}]
          {DEST}
          fault:
            delay: {{fixedDelay: 1s, percent: 50}}
            abort: {{grpcStatus: UNAVAILABLE}}
        - match: [{{uri: {{prefix: /c}}}}]
          {DEST}
          fault: {{delay: {{fixedDelay: 1s}}}}
        "
    ));
    let r = routes(&c);
    let f = r[0].policy.fault.as_ref().unwrap();
    let d = f.delay.as_ref().unwrap();
    assert_eq!(
        (d.delay, d.fraction.per_million),
        (Duration::from_millis(300), 125_000)
    );
    let a = f.abort.as_ref().unwrap();
    assert_eq!((a.code, a.fraction), (AbortCode::Http(418), Fraction::ALL));
    let f = r[1].policy.fault.as_ref().unwrap();
    assert_eq!(f.delay.as_ref().unwrap().fraction.per_million, 500_000);
    let a = f.abort.as_ref().unwrap();
    // No percentage: Istio injects into no request, and we say so.
    assert_eq!((a.code, a.fraction), (AbortCode::Grpc(14), Fraction::NONE));
    assert_eq!(
        r[2].policy
            .fault
            .as_ref()
            .unwrap()
            .delay
            .as_ref()
            .unwrap()
            .fraction,
        Fraction::NONE
    );
    let w = warnings(&c).join("\n");
    assert!(
        w.contains("spec.http[1].fault.abort: no percentage: no request is aborted"),
        "{w}"
    );
    assert!(
        w.contains("spec.http[2].fault.delay: no percentage: no request is delayed"),
        "{w}"
    );
    let e = errors(&format!(
        "
        - {DEST}
          fault:
            delay: {{percentage: {{value: 150}}}}
            abort: {{httpStatus: 99, grpcStatus: NOPE}}
        "
    ))
    .join("\n");
    assert!(
        e.contains("fault.delay.fixedDelay: required field is missing"),
        "{e}"
    );
    assert!(
        e.contains("fault.delay.percentage.value: percentage must be in 0-100"),
        "{e}"
    );
    assert!(e.contains("httpStatus 99 is not in 200-599"), "{e}");
    assert!(e.contains("unknown gRPC status \"NOPE\""), "{e}");
    assert!(
        e.contains("only one of httpStatus, grpcStatus or http2Error"),
        "{e}"
    );
}

#[test]
fn mirrors_are_clusters_with_fractions() {
    let c = compiled(&format!(
        "
        - match: [{{uri: {{prefix: /a}}}}]
          {DEST}
          mirror: {{host: mirror.example.com}}
          mirrorPercentage: {{value: 50}}
          mirrors:
          - destination: {{host: other.example.com}}
          - destination: {{host: other.example.com}}
            percentage: {{value: 0}}
        - match: [{{uri: {{prefix: /b}}}}]
          {DEST}
          mirror: {{host: mirror.example.com}}
          mirrorPercentage: {{value: 0}}
        - {DEST}
          mirror: {{host: mirror.example.com}}
          mirrorPercent: 25
        "
    ));
    let r = routes(&c);
    let m: Vec<(String, u32)> = r[0]
        .policy
        .mirrors
        .iter()
        .map(|m| (m.cluster.to_string(), m.fraction.per_million))
        .collect();
    assert_eq!(
        m,
        [
            ("outbound|80||mirror.example.com".to_string(), 500_000),
            ("outbound|80||other.example.com".to_string(), 1_000_000),
        ]
    );
    assert!(r[1].policy.mirrors.is_empty(), "0% mirrors nothing");
    assert_eq!(r[2].policy.mirrors[0].fraction.per_million, 250_000);
    // The mirror clusters are built like any destination's.
    assert!(c
        .snapshot
        .cluster("outbound|80||mirror.example.com")
        .is_some());
    assert!(c
        .snapshot
        .cluster("outbound|80||other.example.com")
        .is_some());
}

#[test]
fn header_operations_in_istio_order() {
    let c = compiled(
        "
        - match: [{uri: {prefix: /one}}]
          route:
          - destination: {host: edition.cnn.com}
            headers:
              request: {set: {x-both: dest}, remove: [x-dest-gone]}
              response: {add: {x-resp: dest}}
          headers:
            request: {set: {x-both: rule, x-a: '1'}, add: {x-b: '2'}, remove: [x-gone, ':path']}
            response: {set: {x-resp: rule}, remove: [server-timing]}
        - route:
          - destination: {host: edition.cnn.com}
            weight: 60
            headers: {request: {set: {x-which: a}}}
          - destination: {host: other.example.com}
            weight: 40
          headers: {response: {add: {x-r: '%REQ(x)%'}}}
        ",
    );
    let r = routes(&c);
    let h = &r[0].policy.headers;
    let names: Vec<(String, String, bool)> = h
        .request
        .add
        .iter()
        .map(|a| {
            (
                a.name.to_string(),
                a.value.to_str().unwrap().to_string(),
                a.append,
            )
        })
        .collect();
    // The rule's `set` (sorted), its `add`, then the single destination's.
    assert_eq!(
        names,
        [
            ("x-a".into(), "1".into(), false),
            ("x-both".into(), "rule".into(), false),
            ("x-b".into(), "2".into(), true),
            ("x-both".into(), "dest".into(), false),
        ]
    );
    let removed: Vec<&str> = h.request.remove.iter().map(|n| n.as_str()).collect();
    assert_eq!(
        removed,
        ["x-gone", "x-dest-gone"],
        "pseudo-headers are dropped"
    );
    assert_eq!(h.response.add.len(), 2);
    // Several destinations: each keeps its own operations.
    let RouteAction::Forward(w) = &r[1].action else {
        panic!()
    };
    assert!(w.clusters[0].headers.is_some());
    assert!(w.clusters[1].headers.is_none());
    assert!(warnings(&c)
        .iter()
        .any(|w| w.contains("x-r: Envoy would expand %COMMAND% operators")));
}

/// Every field the README table marks as a warning warns with exactly the table's message,
/// at its own field path.
#[test]
fn every_warned_field_warns_with_the_table_message() {
    let c = compiled(
        "
        - match:
          - uri: {prefix: /a}
            statPrefix: s
          route: [{destination: {host: edition.cnn.com}}]
          retries: {attempts: 1, retryRemoteLocalities: true}
          fault:
            delay: {exponentialDelay: 1s, percentage: {value: 1}}
            abort: {http2Error: x, percentage: {value: 1}}
          corsPolicy: {allowOrigins: [{exact: a}]}
        - match: [{uri: {prefix: /b}}]
          directResponse: {status: 200, body: {bytes: aGk=}}
        - delegate: {name: other}
        ",
    );
    let expected = [
        (
            "http[].match[].statPrefix",
            "spec.http[0].match[0].statPrefix",
        ),
        (
            "http[].retries.retryRemoteLocalities",
            "spec.http[0].retries.retryRemoteLocalities",
        ),
        (
            "http[].fault.delay.exponentialDelay",
            "spec.http[0].fault.delay.exponentialDelay",
        ),
        (
            "http[].fault.abort.http2Error",
            "spec.http[0].fault.abort.http2Error",
        ),
        ("http[].corsPolicy", "spec.http[0].corsPolicy"),
        (
            "http[].directResponse.body.bytes",
            "spec.http[1].directResponse.body.bytes",
        ),
        ("http[].delegate", "spec.http[2].delegate"),
    ];
    for f in VIRTUAL_SERVICE_FIELDS {
        let Support::Warned(message) = f.support else {
            continue;
        };
        if f.path.starts_with("tls[]") || f.path.starts_with("tcp[]") {
            continue; // L4 routes: covered by the passthrough tests' configuration
        }
        let (_, at) = expected
            .iter()
            .find(|(p, _)| *p == f.path)
            .unwrap_or_else(|| panic!("add {} to this test", f.path));
        let w = c
            .warnings
            .iter()
            .find(|d| d.field.as_deref() == Some(at))
            .unwrap_or_else(|| panic!("no warning at {at}: {:#?}", warnings(&c)));
        assert_eq!(w.severity, Severity::Warning);
        assert_eq!(w.message, message, "{at}");
    }
}
