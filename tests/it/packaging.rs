//! Packaging: the manifests in `docker/k8s/` and `docker/Dockerfile`, parsed and checked
//! against each other and against what the binary expects: its flags and their defaults, the
//! listeners it opens for the bundled configuration, the ports and paths it serves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use egret_test_support::TestDir;
use serde_json::Value;

use crate::common::repo_root;

const NAMESPACE: &str = "istio-system";
const NAME: &str = "istio-egressgateway";
/// Fixed paths of the health and Prometheus servers (their addresses are flags).
const READY_PATH: &str = "/healthz/ready";
const PROMETHEUS_PATH: &str = "/stats/prometheus";

fn k8s_dir() -> PathBuf {
    repo_root().join("docker").join("k8s")
}

/// Every non-empty YAML document of a file, as JSON values.
fn parse_yaml(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
        .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {v:#}"))
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {v:#}"))
}

fn array_at<'a>(v: &'a Value, pointer: &str) -> &'a Vec<Value> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{pointer} is not a list in {v:#}"))
}

/// A label map (`metadata.labels`, `selector`, `matchLabels`).
fn labels_at(v: &Value, pointer: &str) -> BTreeMap<String, String> {
    v.pointer(pointer)
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{pointer} is not a map in {v:#}"))
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("label {k} is not a string"));
            (k.clone(), v.to_string())
        })
        .collect()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// The manifests `kustomization.yaml` lists, parsed.
struct Manifests {
    /// (file, object)
    objects: Vec<(String, Value)>,
}

impl Manifests {
    fn load() -> Manifests {
        let kustomization = parse_yaml(&k8s_dir().join("kustomization.yaml"));
        assert_eq!(kustomization.len(), 1);
        let resources: Vec<String> = array_at(&kustomization[0], "/resources")
            .iter()
            .map(|r| r.as_str().expect("resource is a file name").to_string())
            .collect();
        let mut objects = Vec::new();
        for file in &resources {
            for doc in parse_yaml(&k8s_dir().join(file)) {
                objects.push((file.clone(), doc));
            }
        }
        Manifests { objects }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .map(|(_, o)| o)
            .filter(|o| o.get("kind").and_then(Value::as_str) == Some(kind))
            .collect()
    }

    /// The only object of `kind`.
    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "expected exactly one {kind}");
        all[0]
    }

    fn deployment(&self) -> &Value {
        self.one("Deployment")
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        labels_at(self.deployment(), "/spec/template/metadata/labels")
    }

    fn container(&self) -> &Value {
        let containers = array_at(self.deployment(), "/spec/template/spec/containers");
        assert_eq!(containers.len(), 1, "one container: egret");
        &containers[0]
    }

    /// containerPort -> port name.
    fn container_ports(&self) -> BTreeMap<u16, String> {
        array_at(self.container(), "/ports")
            .iter()
            .map(|p| {
                (
                    u64_at(p, "/containerPort") as u16,
                    str_at(p, "/name").to_string(),
                )
            })
            .collect()
    }

    fn args(&self) -> Args {
        Args(
            array_at(self.container(), "/args")
                .iter()
                .map(|a| a.as_str().expect("args are strings").to_string())
                .collect(),
        )
    }

    /// volumeMount name -> mountPath.
    fn mounts(&self) -> BTreeMap<String, String> {
        array_at(self.container(), "/volumeMounts")
            .iter()
            .map(|m| {
                assert_eq!(
                    m.get("readOnly").and_then(Value::as_bool),
                    Some(true),
                    "every mount is read-only: {m}"
                );
                assert!(
                    m.get("subPath").is_none(),
                    "subPath mounts never update: {m}"
                );
                (
                    str_at(m, "/name").to_string(),
                    str_at(m, "/mountPath").to_string(),
                )
            })
            .collect()
    }

    /// volume name -> volume.
    fn volumes(&self) -> BTreeMap<String, &Value> {
        array_at(self.deployment(), "/spec/template/spec/volumes")
            .iter()
            .map(|v| (str_at(v, "/name").to_string(), v))
            .collect()
    }

    /// Service port -> targetPort (numbers; a named targetPort is resolved on the container).
    fn service_ports(&self) -> BTreeMap<u16, (String, u16)> {
        let by_name: BTreeMap<String, u16> = self
            .container_ports()
            .into_iter()
            .map(|(port, name)| (name, port))
            .collect();
        array_at(self.one("Service"), "/spec/ports")
            .iter()
            .map(|p| {
                let port = u64_at(p, "/port") as u16;
                let target = match p.get("targetPort") {
                    None => port,
                    Some(Value::String(name)) => *by_name
                        .get(name)
                        .unwrap_or_else(|| panic!("targetPort {name} names no container port")),
                    Some(t) => t.as_u64().expect("targetPort") as u16,
                };
                (port, (str_at(p, "/name").to_string(), target))
            })
            .collect()
    }
}

/// The container's (or the Dockerfile CMD's) arguments.
struct Args(Vec<String>);

impl Args {
    /// The value of `--flag` (`--flag=value` or `--flag value`); the last one wins.
    fn get(&self, flag: &str) -> Option<String> {
        let mut found = None;
        let mut it = self.0.iter().peekable();
        while let Some(a) = it.next() {
            if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                found = Some(v.to_string());
            } else if a == flag {
                found = it.peek().map(|v| v.to_string());
            }
        }
        found
    }

    /// The value given, or the binary's default for the flag (`egret run --help`).
    fn effective(&self, flag: &str) -> String {
        self.get(flag)
            .or_else(|| help_default(flag))
            .unwrap_or_else(|| {
                panic!("{flag} is neither given nor has a default in `egret run --help`")
            })
    }

    fn flags(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|a| a.starts_with("--"))
            .map(|a| a.split('=').next().unwrap())
            .collect()
    }
}

fn run_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(["run", "--help"])
        .output()
        .expect("run egret run --help");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The `[default: ...]` clap prints for `--flag` in `egret run --help`.
fn help_default(flag: &str) -> Option<String> {
    let help = run_help();
    let mut lines = help.lines().skip_while(|l| {
        !l.trim_start()
            .split(", ")
            .any(|part| part == flag || part.starts_with(&format!("{flag} ")))
    });
    lines.next()?;
    for line in lines {
        if line.trim_start().starts_with('-') {
            return None;
        }
        if let Some(i) = line.find("[default: ") {
            let rest = &line[i + "[default: ".len()..];
            return Some(rest[..rest.find(']')?].to_string());
        }
    }
    None
}

fn parse_port_map(s: &str) -> BTreeMap<u16, u16> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("SERVICE=LISTEN");
            (k.parse().unwrap(), v.parse().unwrap())
        })
        .collect()
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn addr_port(s: &str) -> u16 {
    s.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{s:?} is not ADDR:PORT: {e}"))
        .port()
}

#[test]
fn kustomization_lists_every_manifest_and_each_parses() {
    let kustomization = &parse_yaml(&k8s_dir().join("kustomization.yaml"))[0];
    assert_eq!(str_at(kustomization, "/namespace"), NAMESPACE);
    let listed: BTreeSet<String> = array_at(kustomization, "/resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources vs docker/k8s/*.yaml"
    );

    let m = Manifests::load();
    let kinds: BTreeSet<&str> = m.objects.iter().map(|(_, o)| str_at(o, "/kind")).collect();
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceAccount",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    for (file, o) in &m.objects {
        assert!(!str_at(o, "/apiVersion").is_empty(), "{file}");
        assert!(!str_at(o, "/metadata/name").is_empty(), "{file}");
        assert_eq!(str_at(o, "/metadata/namespace"), NAMESPACE, "{file}");
    }
    // Istio's names, so the rest of the mesh finds the replacement where the original was.
    assert_eq!(str_at(m.deployment(), "/metadata/name"), NAME);
    assert_eq!(str_at(m.one("Service"), "/metadata/name"), NAME);
}

#[test]
fn service_selects_the_gateway_pods_and_maps_80_443_to_the_listen_ports() {
    let m = Manifests::load();
    let pod = m.pod_labels();
    assert_eq!(pod.get("app").map(String::as_str), Some(NAME));
    assert_eq!(pod.get("istio").map(String::as_str), Some("egressgateway"));
    let deployment_selector = labels_at(m.deployment(), "/spec/selector/matchLabels");
    assert!(
        is_subset(&deployment_selector, &pod),
        "Deployment selector {deployment_selector:?} vs pod labels {pod:?}"
    );

    let selector = labels_at(m.one("Service"), "/spec/selector");
    assert_eq!(
        selector.get("istio").map(String::as_str),
        Some("egressgateway")
    );
    assert!(
        is_subset(&selector, &pod),
        "Service selector {selector:?} vs pod labels {pod:?}"
    );

    // The gateway's own idea of its labels (which Gateway resources it serves) and namespace.
    let args = m.args();
    let gateway_labels = parse_labels(&args.effective("--labels"));
    assert!(
        is_subset(&gateway_labels, &pod),
        "--labels {gateway_labels:?} vs pod labels {pod:?}"
    );
    assert_eq!(
        gateway_labels.get("istio").map(String::as_str),
        Some("egressgateway")
    );
    assert_eq!(args.effective("--namespace"), NAMESPACE);

    // Service 80 -> 8080 and 443 -> 8443, as --port-map (given or default) maps them.
    let port_map = parse_port_map(&args.effective("--port-map"));
    let default_map = parse_port_map(&help_default("--port-map").expect("--port-map default"));
    assert_eq!(
        default_map,
        BTreeMap::from([(80, 8080), (443, 8443)]),
        "Istio's gateway chart"
    );
    let service = m.service_ports();
    let containers = m.container_ports();
    for (port, name) in [(80u16, "http2"), (443, "https")] {
        let (svc_name, target) = &service[&port];
        assert_eq!(svc_name, name, "Istio's name for service port {port}");
        assert_eq!(
            Some(target),
            port_map.get(&port),
            "service port {port}: targetPort vs --port-map {port_map:?}"
        );
        assert!(
            containers.contains_key(target),
            "targetPort {target} is not a container port"
        );
    }
    for (port, (_, target)) in &service {
        assert!(
            containers.contains_key(target),
            "service port {port} -> {target}: no such container port"
        );
    }
    assert_eq!(service[&15021], ("status-port".to_string(), 15021));
}

#[test]
fn readiness_probe_and_prometheus_annotations_point_at_the_binarys_servers() {
    let m = Manifests::load();
    let args = m.args();
    let containers = m.container_ports();

    let health_port = addr_port(&args.effective("--health"));
    assert_eq!(health_port, 15021, "Istio's status port");
    let probe = m.container().get("readinessProbe").expect("readinessProbe");
    assert_eq!(str_at(probe, "/httpGet/path"), READY_PATH);
    assert_eq!(u64_at(probe, "/httpGet/port"), u64::from(health_port));
    assert_eq!(
        containers.get(&health_port).map(String::as_str),
        Some("status-port")
    );

    let prometheus_port = addr_port(&args.effective("--prometheus"));
    assert_eq!(prometheus_port, 15090, "Istio's Prometheus port");
    let annotations = labels_at(m.deployment(), "/spec/template/metadata/annotations");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        prometheus_port.to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], PROMETHEUS_PATH);
    assert_eq!(
        containers.get(&prometheus_port).map(String::as_str),
        Some("http-envoy-prom")
    );

    // The admin server stays on loopback: reachable with `kubectl port-forward` only.
    if let Some(admin) = args.get("--admin") {
        let admin: SocketAddr = admin.parse().expect("--admin ADDR:PORT");
        assert!(
            admin.ip().is_loopback(),
            "--admin {admin} should not be exposed"
        );
    }
}

#[test]
fn every_mount_has_a_volume_and_matches_its_flag() {
    let m = Manifests::load();
    let args = m.args();
    let mounts = m.mounts();
    let volumes = m.volumes();
    for name in mounts.keys() {
        assert!(
            volumes.contains_key(name),
            "volumeMount {name} has no volume"
        );
    }
    for name in volumes.keys() {
        assert!(mounts.contains_key(name), "volume {name} is never mounted");
    }
    // (mountPath, volume) of every volume.
    let mounted: Vec<(String, &Value)> = volumes
        .iter()
        .map(|(name, v)| (mounts[name].clone(), *v))
        .collect();

    // --config is the ConfigMap's mount, and that ConfigMap is in the manifests.
    let config = args.get("--config").expect("--config");
    let configmaps: Vec<_> = mounted
        .iter()
        .filter(|(_, v)| v.get("configMap").is_some())
        .collect();
    assert_eq!(configmaps.len(), 1);
    assert_eq!(configmaps[0].0, config, "--config vs the ConfigMap mount");
    let cm_name = str_at(configmaps[0].1, "/configMap/name");
    assert_eq!(str_at(m.one("ConfigMap"), "/metadata/name"), cm_name);

    // Secrets: the mesh certs at --mesh-certs, every other one at
    // <--credentials-dir>/<secretName>, the layout credentialName lookups expect.
    let credentials_dir = args.get("--credentials-dir").expect("--credentials-dir");
    let mesh_certs = args.get("--mesh-certs").expect("--mesh-certs");
    let secrets: Vec<_> = mounted
        .iter()
        .filter(|(_, v)| v.get("secret").is_some())
        .collect();
    let mut credential_names = BTreeSet::new();
    for (path, volume) in secrets.iter().copied() {
        let secret = str_at(volume, "/secret/secretName");
        assert_eq!(
            volume.pointer("/secret/optional"),
            Some(&Value::Bool(true)),
            "{secret}: optional, so the pod starts without it"
        );
        if *path == mesh_certs {
            assert_eq!(secret, "egret-mesh-certs");
        } else {
            assert_eq!(
                *path,
                format!("{credentials_dir}/{secret}"),
                "credential Secret {secret}"
            );
            credential_names.insert(secret.to_string());
        }
    }
    assert!(
        credential_names.contains("client-credential"),
        "{credential_names:?}"
    );
    assert!(
        secrets.iter().any(|(p, _)| *p == mesh_certs),
        "no Secret mounted at --mesh-certs {mesh_certs}"
    );

    // Every credentialName the ConfigMap's DestinationRules use has its Secret mounted.
    let cm = m.one("ConfigMap");
    for text in cm["data"].as_object().unwrap().values() {
        for line in text.as_str().unwrap().lines() {
            if let Some(name) = line.trim().strip_prefix("credentialName:") {
                let name = name.split('#').next().unwrap().trim().trim_matches('"');
                assert!(
                    credential_names.contains(name),
                    "credentialName {name} is not mounted"
                );
            }
        }
    }
}

#[test]
fn the_pod_runs_unprivileged_and_its_grace_period_covers_the_drain() {
    let m = Manifests::load();
    let pod = &m.deployment()["spec"]["template"]["spec"];
    let c = m.container();
    assert_eq!(
        pod.pointer("/securityContext/runAsNonRoot"),
        Some(&Value::Bool(true))
    );
    assert_eq!(u64_at(pod, "/securityContext/runAsUser"), 1337);
    assert_eq!(
        c.pointer("/securityContext/readOnlyRootFilesystem"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        c.pointer("/securityContext/allowPrivilegeEscalation"),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        c.pointer("/securityContext/capabilities/drop"),
        Some(&serde_json::json!(["ALL"]))
    );
    assert!(c.pointer("/securityContext/capabilities/add").is_none());
    for port in m.container_ports().keys() {
        assert!(*port >= 1024, "port {port} would need NET_BIND_SERVICE");
    }
    for path in [
        "/resources/requests/cpu",
        "/resources/requests/memory",
        "/resources/limits/cpu",
        "/resources/limits/memory",
    ] {
        assert!(c.pointer(path).is_some(), "{path}");
    }

    // SIGTERM -> --drain-delay (still accepting) -> --drain-timeout -> exit, all within the
    // grace period (plus any preStop sleep, which runs before SIGTERM).
    let args = m.args();
    let duration = |flag: &str| egret::cli::parse_duration(&args.effective(flag)).unwrap();
    let pre_stop = c
        .pointer("/lifecycle/preStop/sleep/seconds")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let needed =
        Duration::from_secs(pre_stop) + duration("--drain-delay") + duration("--drain-timeout");
    let grace = Duration::from_secs(u64_at(pod, "/terminationGracePeriodSeconds"));
    assert!(
        needed < grace,
        "preStop + drain-delay + drain-timeout = {needed:?} must fit in {grace:?}"
    );
    assert!(
        duration("--drain-delay") > Duration::ZERO,
        "give endpoints time to drop the pod"
    );
}

#[test]
fn autoscaler_and_disruption_budget_target_the_deployment() {
    let m = Manifests::load();
    let pod = m.pod_labels();
    let d = m.deployment();
    assert!(
        d.pointer("/spec/replicas").is_none(),
        "the HPA owns the replica count"
    );

    let hpa = m.one("HorizontalPodAutoscaler");
    assert_eq!(str_at(hpa, "/apiVersion"), "autoscaling/v2");
    assert_eq!(str_at(hpa, "/spec/scaleTargetRef/apiVersion"), "apps/v1");
    assert_eq!(str_at(hpa, "/spec/scaleTargetRef/kind"), "Deployment");
    assert_eq!(
        str_at(hpa, "/spec/scaleTargetRef/name"),
        str_at(d, "/metadata/name")
    );
    let min = u64_at(hpa, "/spec/minReplicas");
    assert_eq!((min, u64_at(hpa, "/spec/maxReplicas")), (2, 10));
    let metric = &array_at(hpa, "/spec/metrics")[0];
    assert_eq!(str_at(metric, "/resource/name"), "cpu");
    assert_eq!(u64_at(metric, "/resource/target/averageUtilization"), 80);
    assert!(
        m.container().pointer("/resources/requests/cpu").is_some(),
        "CPU utilization needs a request"
    );

    let pdb = m.one("PodDisruptionBudget");
    let selector = labels_at(pdb, "/spec/selector/matchLabels");
    assert!(
        is_subset(&selector, &pod),
        "PDB selector {selector:?} vs pod labels {pod:?}"
    );
    assert_eq!(selector, labels_at(d, "/spec/selector/matchLabels"));
    assert!(
        u64_at(pdb, "/spec/minAvailable") < min,
        "a drain must be able to evict one pod"
    );

    let sa = m.one("ServiceAccount");
    assert_eq!(
        str_at(d, "/spec/template/spec/serviceAccountName"),
        str_at(sa, "/metadata/name")
    );
}

#[test]
fn configmap_holds_s1_verbatim_and_egret_validates_it_as_mounted() {
    let m = Manifests::load();
    let data = m.one("ConfigMap")["data"]
        .as_object()
        .expect("ConfigMap data");
    let s1 = repo_root().join("config").join("s1-http");
    let mut files: Vec<String> = std::fs::read_dir(&s1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let keys: Vec<String> = data.keys().cloned().collect();
    assert_eq!(keys, files, "ConfigMap keys vs config/s1-http");
    for (key, value) in data {
        let on_disk = std::fs::read_to_string(s1.join(key)).unwrap();
        assert_eq!(
            value.as_str(),
            Some(on_disk.as_str()),
            "{key} differs from config/s1-http/{key}"
        );
    }

    // The folder as the kubelet mounts a ConfigMap: files in a timestamped folder, a `..data`
    // symlink to it, and one symlink per key.
    let dir = TestDir::new("packaging-configmap").unwrap();
    let stamp = "..2026_01_01_00_00_00.000000000";
    for (key, value) in data {
        dir.write(format!("{stamp}/{key}"), value.as_str().unwrap().as_bytes())
            .unwrap();
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    }
    std::os::unix::fs::symlink(stamp, dir.join("..data")).unwrap();

    // Validate with the Deployment's own selection flags.
    let args = m.args();
    let out = Command::new(env!("CARGO_BIN_EXE_egret"))
        .arg("validate")
        .arg("--config")
        .arg(dir.path())
        .arg(format!("--namespace={}", args.effective("--namespace")))
        .arg(format!("--labels={}", args.effective("--labels")))
        .arg(format!("--port-map={}", args.effective("--port-map")))
        .output()
        .expect("run egret validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "egret validate failed:\n{stderr}");

    // Every listener it would open is a container port the Service sends traffic to.
    let listen_ports: BTreeSet<u16> = stdout
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("0.0.0.0_"))
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(listen_ports.contains(&8080), "{stdout}");
    let containers = m.container_ports();
    let targets: BTreeSet<u16> = m.service_ports().values().map(|(_, t)| *t).collect();
    for port in listen_ports {
        assert!(
            containers.contains_key(&port),
            "listener {port} is not a container port"
        );
        assert!(
            targets.contains(&port),
            "listener {port} is no Service targetPort"
        );
    }
}

/// A Dockerfile instruction: its keyword and the rest (continuation lines joined).
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_root().join("docker").join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((keyword.to_ascii_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_exposes_the_pod_ports_and_runs_the_mounted_config() {
    let instructions = dockerfile();
    let last_stage = instructions
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .expect("FROM");
    assert!(instructions[..last_stage]
        .iter()
        .any(|(k, v)| k == "RUN" && v.contains("cargo build --release -p egret --locked")));
    let runtime = &instructions[last_stage..];
    assert!(
        !runtime[0].1.starts_with("rust:"),
        "runtime image is not the builder"
    );
    let get = |keyword: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, v)| v.as_str())
            .collect()
    };

    let exposed: BTreeSet<u16> = get("EXPOSE")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    assert_eq!(exposed, BTreeSet::from([8080, 8443, 15000, 15021, 15090]));
    let m = Manifests::load();
    for port in m.container_ports().keys() {
        assert!(exposed.contains(port), "container port {port} not EXPOSEd");
    }

    assert_eq!(
        get("USER"),
        ["1337:1337"],
        "istio-proxy's uid, as runAsUser"
    );
    let entrypoint: Vec<String> =
        serde_json::from_str(get("ENTRYPOINT")[0]).expect("ENTRYPOINT exec form");
    assert_eq!(entrypoint, ["/usr/local/bin/egret"]);
    let cmd: Vec<String> = serde_json::from_str(get("CMD")[0]).expect("CMD exec form");
    assert_eq!(cmd[0], "run");
    let cmd = Args(cmd);
    let deployment = m.args();
    let mounts = m.mounts();
    assert_eq!(
        cmd.get("--config"),
        Some(mounts["config"].clone()),
        "CMD --config vs the ConfigMap mount"
    );
    for flag in ["--config", "--credentials-dir", "--mesh-certs"] {
        assert_eq!(
            cmd.get(flag),
            deployment.get(flag),
            "{flag}: Dockerfile CMD vs Deployment args"
        );
    }

    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    for pattern in ["target/", ".git", "fuzz/target/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == pattern),
            ".dockerignore lacks {pattern}"
        );
    }
}

/// The Deployment's args and the Dockerfile's CMD go through the binary's own parser.
#[test]
fn deployment_args_and_dockerfile_cmd_parse_with_the_binarys_cli() {
    let m = Manifests::load();
    let deployment = m.args();
    let cmd_line = dockerfile()
        .into_iter()
        .rfind(|(k, _)| k == "CMD")
        .map(|(_, v)| v)
        .unwrap();
    let cmd: Vec<String> = serde_json::from_str(&cmd_line).unwrap();
    for (what, args) in [("Deployment args", &deployment.0), ("Dockerfile CMD", &cmd)] {
        let parsed = egret::Cli::try_parse_from(
            std::iter::once("egret".to_string()).chain(args.iter().cloned()),
        )
        .unwrap_or_else(|e| panic!("{what} {args:?}: {e}"));
        let egret::Command::Run(run) = parsed.command else {
            panic!("{what}: not `egret run`")
        };
        let a = Args(args.clone());
        assert_eq!(
            run.config.config,
            vec![PathBuf::from(a.get("--config").unwrap())],
            "{what}"
        );
        assert_eq!(
            run.config.port_map,
            parse_port_map(&a.effective("--port-map")),
            "{what}"
        );
        assert_eq!(
            run.config.labels,
            parse_labels(&a.effective("--labels")),
            "{what}"
        );
    }
    // Every flag is one `egret run --help` documents.
    let help = run_help();
    let documented: BTreeSet<&str> = help
        .lines()
        .flat_map(|l| l.trim_start().split(", "))
        .filter(|part| part.starts_with("--"))
        .map(|part| part.split_whitespace().next().unwrap())
        .collect();
    for flag in deployment.flags() {
        assert!(
            documented.contains(flag),
            "{flag} is not in `egret run --help`"
        );
    }
}
