//! Label rendering and the destination labels Istio derives from a cluster.

/// Appends `name="value"` (comma-separated) with Prometheus escaping (`\`, `"`, newline).
pub(crate) fn push(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

pub(crate) const UNKNOWN: &str = "unknown";

/// `value`, or `unknown` when empty — Istio's filler for a label it cannot know.
pub(crate) fn or_unknown(value: &str) -> &str {
    if value.is_empty() {
        UNKNOWN
    } else {
        value
    }
}

/// What Istio's stats filter reports about the destination of a request sent to `cluster`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Destination<'a> {
    /// `destination_service`: the service host (`edition.cnn.com`).
    pub service: &'a str,
    /// `destination_service_name`: the Kubernetes service name, or the host for a
    /// ServiceEntry (Istio puts the host in the cluster's `istio.services[0].name`).
    pub name: &'a str,
    /// `destination_service_namespace`: known for `*.svc.*` hosts; `unknown` for external
    /// hosts (Istio learns it from the peer, which an external host is not).
    pub namespace: &'a str,
}

/// Istio's stats filter at a gateway takes the destination from the cluster's metadata (the
/// host of `outbound|<port>|<subset>|<host>`); with no cluster it would fall back to the Host
/// header, but Istio disables that fallback on gateways (`disable_host_header_fallback`), so
/// refused requests report `unknown` — which also keeps client-chosen strings out of the label
/// space. `BlackHoleCluster` / `PassthroughCluster` name themselves in
/// `destination_service_name`, as Istio does.
pub(crate) fn destination(cluster: Option<&str>) -> Destination<'_> {
    const NONE: Destination<'static> = Destination {
        service: UNKNOWN,
        name: UNKNOWN,
        namespace: UNKNOWN,
    };
    let Some(cluster) = cluster else {
        return NONE;
    };
    if matches!(
        cluster,
        "BlackHoleCluster" | "PassthroughCluster" | "InboundPassthroughCluster"
    ) {
        return Destination {
            service: UNKNOWN,
            name: cluster,
            namespace: UNKNOWN,
        };
    }
    let mut parts = cluster.splitn(4, '|');
    let (Some(dir), Some(_port), Some(_subset), Some(host)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return NONE;
    };
    if !matches!(dir, "outbound" | "inbound") || host.is_empty() {
        return NONE;
    }
    // `<name>.<namespace>.svc.<cluster-domain>`: a Kubernetes service.
    let mut labels = host.split('.');
    if let (Some(name), Some(ns), Some("svc")) = (labels.next(), labels.next(), labels.next()) {
        if !name.is_empty() && !ns.is_empty() {
            return Destination {
                service: host,
                name,
                namespace: ns,
            };
        }
    }
    Destination {
        service: host,
        name: host,
        namespace: UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut s = String::new();
        push(&mut s, "a", "x\"y\\z\nw");
        push(&mut s, "b", "");
        assert_eq!(s, r#"a="x\"y\\z\nw",b="""#);
    }

    #[test]
    fn destination_from_cluster_names() {
        let d = destination(Some("outbound|80||edition.cnn.com"));
        assert_eq!(
            d,
            Destination {
                service: "edition.cnn.com",
                name: "edition.cnn.com",
                namespace: "unknown"
            }
        );
        let d = destination(Some("outbound|8000|v1|httpbin.default.svc.cluster.local"));
        assert_eq!(
            d,
            Destination {
                service: "httpbin.default.svc.cluster.local",
                name: "httpbin",
                namespace: "default"
            }
        );
        let d = destination(Some("BlackHoleCluster"));
        assert_eq!((d.service, d.name), ("unknown", "BlackHoleCluster"));
        assert_eq!(destination(None).service, "unknown");
        assert_eq!(destination(Some("weird")).name, "unknown");
        assert_eq!(destination(Some("outbound|80||")).name, "unknown");
    }
}
