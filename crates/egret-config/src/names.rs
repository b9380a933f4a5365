//! How Istio resolves names: short hosts, gateway references, port protocols, exportTo.

/// Expands a short host name (`reviews`) to `reviews.<namespace>.svc.<domain>`, as Istio
/// does for names without dots; other names are lower-cased.
pub fn fqdn(host: &str, namespace: &str, cluster_domain: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    if h.contains('.') || h.starts_with('*') || h.is_empty() {
        h
    } else {
        format!("{h}.{namespace}.svc.{cluster_domain}")
    }
}

/// A VirtualService's reference to a gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayRef {
    /// `mesh`: the sidecars, not a gateway.
    Mesh,
    Named {
        namespace: String,
        name: String,
    },
}

/// Resolves an entry of `gateways:` written in a VirtualService of namespace `vs_ns`:
/// `mesh`, `ns/name`, `name` (same namespace as the VirtualService), or the deprecated
/// `name.ns.svc.<domain>` form.
pub fn resolve_gateway(reference: &str, vs_ns: &str) -> GatewayRef {
    let r = reference.trim();
    if r == "mesh" {
        return GatewayRef::Mesh;
    }
    if let Some((ns, name)) = r.split_once('/') {
        let ns = if ns == "." { vs_ns } else { ns };
        return GatewayRef::Named {
            namespace: ns.to_string(),
            name: name.to_string(),
        };
    }
    let mut parts = r.split('.');
    match (parts.next(), parts.next()) {
        (Some(name), Some(ns)) if !ns.is_empty() => GatewayRef::Named {
            namespace: ns.to_string(),
            name: name.to_string(),
        },
        _ => GatewayRef::Named {
            namespace: vs_ns.to_string(),
            name: r.to_string(),
        },
    }
}

/// Istio port protocols (`Port.protocol`, case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Mysql,
    Redis,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" => Protocol::Grpc,
            "GRPC-WEB" => Protocol::GrpcWeb,
            "HTTPS" => Protocol::Https,
            "TLS" => Protocol::Tls,
            "TCP" => Protocol::Tcp,
            "MONGO" => Protocol::Mongo,
            "MYSQL" => Protocol::Mysql,
            "REDIS" => Protocol::Redis,
            _ => return None,
        })
    }

    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }
}

/// Istio's `exportTo` for a resource in namespace `res_ns`, seen from a proxy in `viewer_ns`:
/// empty or `*` = everywhere, `.` = own namespace, `~` = nowhere, else listed namespaces.
pub fn exported_to(export_to: &[String], res_ns: &str, viewer_ns: &str) -> bool {
    if export_to.is_empty() {
        return true;
    }
    export_to.iter().any(|e| match e.trim() {
        "*" => true,
        "." => res_ns == viewer_ns,
        "~" => false,
        ns => ns == viewer_ns,
    })
}

/// Are all of `selector`'s labels present in `labels` with the same values?
pub fn labels_match(
    selector: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_references() {
        let named = |ns: &str, n: &str| GatewayRef::Named {
            namespace: ns.into(),
            name: n.into(),
        };
        assert_eq!(resolve_gateway("mesh", "default"), GatewayRef::Mesh);
        assert_eq!(
            resolve_gateway("istio-egressgateway", "default"),
            named("default", "istio-egressgateway")
        );
        assert_eq!(
            resolve_gateway("istio-system/gw", "default"),
            named("istio-system", "gw")
        );
        assert_eq!(
            resolve_gateway("gw.istio-system.svc.cluster.local", "default"),
            named("istio-system", "gw")
        );
    }

    #[test]
    fn hosts_and_export() {
        assert_eq!(
            fqdn("reviews", "ns", "cluster.local"),
            "reviews.ns.svc.cluster.local"
        );
        assert_eq!(
            fqdn("Edition.CNN.com", "ns", "cluster.local"),
            "edition.cnn.com"
        );
        assert!(exported_to(&[], "a", "b"));
        assert!(exported_to(&[".".into()], "a", "a"));
        assert!(!exported_to(&[".".into()], "a", "b"));
        assert!(exported_to(&["b".into()], "a", "b"));
    }
}
