//! Several VirtualServices for one host at one gateway: merged in order, with the catch-all
//! routes moved to the end of the virtual host as Istio's `SortVHostRoutes` does, and each
//! VirtualService's rules cut after its first catch-all route (Istio's
//! `BuildHTTPRoutesForVirtualService`).

use std::path::PathBuf;

use egret_config::{compile, load_sources, CompileOptions, Compiled, LoadOptions};
use egret_core::{ListenerRoutes, RouteAction, StringMatch};

const BASE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com, a.example.com, b.example.com, c.example.com]
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

/// A VirtualService `name` for api.example.com on the gateway with these `http` rules (YAML
/// list items, indented by 2).
fn vs(name: &str, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [api.example.com]\n  gateways: [gw]\n  http:\n{http}"
    )
}

fn compiled(vss: &[(&str, &str)]) -> Compiled {
    let mut sources = vec![(PathBuf::from("base.yaml"), BASE.to_string())];
    for (name, http) in vss {
        sources.push((PathBuf::from(format!("{name}.yaml")), vs(name, http)));
    }
    let loaded = load_sources(&sources, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("load failed: {:#?}", e.errors));
    compile(&loaded, &CompileOptions::default()).unwrap_or_else(|e| panic!("{e:#?}"))
}

/// The routes of api.example.com as `(route name, uri prefix or "*" for none, cluster host)`.
fn routes(c: &Compiled) -> Vec<(String, String, String)> {
    let l = c.snapshot.listener_on(8080).expect("listener");
    let ListenerRoutes::Http(t) = &l.routes else {
        panic!("not http")
    };
    let vh = t
        .find_virtual_host("api.example.com")
        .expect("virtual host");
    vh.routes
        .iter()
        .map(|r| {
            let uri = match r.matches.as_slice() {
                [] => "*".to_string(),
                [m] => match &m.uri {
                    None => "*".to_string(),
                    Some(StringMatch::Prefix(p)) => p.clone(),
                    Some(StringMatch::Exact(e)) => format!("={e}"),
                    Some(StringMatch::Regex(r)) => format!("~{}", r.as_str()),
                },
                many => format!("{} matches", many.len()),
            };
            let RouteAction::Forward(w) = &r.action else {
                panic!("not forwarded")
            };
            let cluster = w.clusters[0].cluster.to_string();
            let host = cluster.rsplit('|').next().unwrap().to_string();
            let name = r.name.as_deref().unwrap_or("-").to_string();
            (name, uri, host)
        })
        .collect()
}

fn t(name: &str, uri: &str, host: &str) -> (String, String, String) {
    (name.into(), uri.into(), host.into())
}

#[test]
fn a_catch_all_of_one_virtual_service_does_not_shadow_another() {
    // `all` (loaded first) sends everything to a.example.com; `specific` adds /b. Istio merges
    // them and moves the catch-all to the end, so /b reaches b.example.com.
    let c = compiled(&[
        (
            "all",
            "  - name: all\n    route: [{destination: {host: a.example.com}}]\n",
        ),
        (
            "specific",
            "  - name: b\n    match: [{uri: {prefix: /b}}]\n    route: [{destination: {host: b.example.com}}]\n",
        ),
    ]);
    assert_eq!(
        routes(&c),
        [
            t("b", "/b", "b.example.com"),
            t("all", "*", "a.example.com")
        ]
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn catch_all_matches_move_to_the_end_and_cut_their_virtual_service() {
    let c = compiled(&[
        (
            "first",
            // A rule whose second match is `prefix: /`: the /x match stays in place, the
            // catch-all one moves to the end, and the rule after it (/never) is dropped, as
            // Istio stops translating a VirtualService at its first catch-all route.
            "  - name: x
    match: [{uri: {prefix: /x}}, {uri: {prefix: /}}]
    route: [{destination: {host: a.example.com}}]
  - name: never
    match: [{uri: {prefix: /never}}]
    route: [{destination: {host: a.example.com}}]
",
        ),
        (
            "second",
            // `prefix: /` with a header condition is not a catch-all; the regex `.*` is.
            "  - name: header
    match: [{uri: {prefix: /}, headers: {x-canary: {exact: 'yes'}}}]
    route: [{destination: {host: c.example.com}}]
  - name: regex
    match: [{uri: {regex: '.*'}}]
    route: [{destination: {host: b.example.com}}]
",
        ),
        (
            "third",
            "  - name: z\n    match: [{uri: {prefix: /z}}]\n    route: [{destination: {host: c.example.com}}]\n",
        ),
    ]);
    let r = routes(&c);
    assert_eq!(
        r,
        [
            t("x", "/x", "a.example.com"),
            t("header", "/", "c.example.com"),
            t("z", "/z", "c.example.com"),
            t("x", "/", "a.example.com"),
            t("regex", "~^(?:.*)$", "b.example.com"),
        ]
    );
}

#[test]
fn one_virtual_service_keeps_its_order_without_catch_alls() {
    let c = compiled(&[
        (
            "one",
            "  - match: [{uri: {prefix: /a}}]\n    route: [{destination: {host: a.example.com}}]\n",
        ),
        (
            "two",
            "  - match: [{uri: {prefix: /}, method: {exact: GET}}]\n    route: [{destination: {host: b.example.com}}]\n  - match: [{uri: {exact: /c}}]\n    route: [{destination: {host: c.example.com}}]\n",
        ),
    ]);
    assert_eq!(
        routes(&c),
        [
            t("-", "/a", "a.example.com"),
            t("-", "/", "b.example.com"),
            t("-", "=/c", "c.example.com"),
        ]
    );
}
