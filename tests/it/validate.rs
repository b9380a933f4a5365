//! `egret validate`: the compiled table on success, every error with file:line otherwise.

use std::process::Command;

use crate::common::{config_dir, scenario};

fn validate(paths: &[&std::path::Path]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egret"));
    cmd.arg("validate");
    for p in paths {
        cmd.arg("--config").arg(p);
    }
    let out = cmd.output().expect("run egret validate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn scenario_folders_validate_and_print_the_table() {
    let (ok, out, err) = validate(&[&scenario("s1-http")]);
    assert!(ok, "{err}");
    assert!(out.contains("config version: "), "{out}");
    assert!(out.contains("0.0.0.0_8080"), "{out}");
    assert!(out.contains("edition.cnn.com:80"), "{out}");
    assert!(out.contains("outbound|80||edition.cnn.com"), "{out}");
    // The seed's `apiVersion:.NETworking...` typo is accepted with a warning naming the file.
    assert!(err.contains("01-serviceentry-cnn.yaml:2"), "{err}");
    let (ok, out, err) = validate(&[&scenario("s2-passthrough")]);
    assert!(ok, "{err}");
    assert!(out.contains("outbound|443||edition.cnn.com"), "{out}");
}

#[test]
fn bad_yaml_names_file_and_line() {
    let dir = config_dir("bad-yaml", &[("bad.yaml", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: x\nspec:\n  servers: [\n")]);
    let (ok, _, err) = validate(&[dir.path()]);
    assert!(!ok);
    assert!(err.contains("bad.yaml:"), "{err}");
    assert!(err.contains("error"), "{err}");
}

#[test]
fn unknown_gateway_and_missing_subset_are_errors_with_locations() {
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: cnn }
spec:
  hosts: [edition.cnn.com]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: vs }
spec:
  hosts: [edition.cnn.com]
  gateways: [no-such-gateway]
  http:
  - route:
    - destination:
        host: edition.cnn.com
        subset: nope
"#;
    let dir = config_dir("bad-refs", &[("vs.yaml", yaml)]);
    let (ok, _, err) = validate(&[dir.path()]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("vs.yaml:14: VirtualService istio-system/vs: spec.gateways[0]"),
        "{err}"
    );
    assert!(err.contains("no-such-gateway"), "{err}");
    assert!(
        err.contains("VirtualService istio-system/vs: spec.http[0].route[0].destination.subset"),
        "{err}"
    );
}

#[test]
fn duplicate_resources_and_missing_fields_are_errors() {
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: dup }\nspec:\n  hosts: [a.example.com]\n  ports: [{ number: 80, name: http, protocol: HTTP }]\n";
    let no_hosts = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: nohosts }\nspec:\n  ports: [{ number: 80, name: http, protocol: HTTP }]\n";
    let dir = config_dir(
        "dups",
        &[("a.yaml", se), ("b.yaml", se), ("c.yaml", no_hosts)],
    );
    let (ok, _, err) = validate(&[dir.path()]);
    assert!(!ok);
    assert!(
        err.contains("b.yaml:") && err.contains("ServiceEntry istio-system/dup"),
        "{err}"
    );
    assert!(
        err.contains("c.yaml:")
            && err.contains("ServiceEntry istio-system/nohosts")
            && err.contains("hosts"),
        "{err}"
    );
}

#[test]
fn unsupported_field_is_a_warning_naming_resource_and_field() {
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: cnn }
spec:
  hosts: [edition.cnn.com]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: DNS
  frobnicate: true
"#;
    let dir = config_dir("unsupported", &[("se.yaml", yaml)]);
    let (ok, _, err) = validate(&[dir.path()]);
    assert!(ok, "{err}");
    assert!(
        err.contains("se.yaml:8: ServiceEntry istio-system/cnn: spec.frobnicate"),
        "{err}"
    );
}
