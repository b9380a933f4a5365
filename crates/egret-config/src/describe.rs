//! A readable summary of a compiled [`Snapshot`], for `egret validate`.

use std::fmt::Write;
use std::sync::Arc;

use egret_core::{
    CertSource, Discovery, HttpRouteTable, LbPolicy, Listener, ListenerRoutes, RouteAction,
    RouteMatch, ServerProtocol, Snapshot, StringMatch, TlsMode, UpstreamProtocol, UpstreamTls,
    WeightedClusters,
};

/// Renders the snapshot as tables: version, listeners, routes, clusters.
pub fn describe(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "config version: {}", snapshot.version);

    let _ = writeln!(out, "\nlisteners:");
    let mut rows = vec![vec![
        "NAME".to_string(),
        "PORT".into(),
        "PROTOCOL".into(),
        "ROUTES".into(),
    ]];
    for l in &snapshot.listeners {
        let kind = match &l.routes {
            ListenerRoutes::Http(t) => format!("http ({})", t.name),
            ListenerRoutes::Https(ts) => {
                let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
                format!("https ({})", names.join(", "))
            }
            ListenerRoutes::Sni(_) => "sni passthrough".into(),
            ListenerRoutes::Tcp(_) => "tcp".into(),
        };
        rows.push(vec![
            l.name.clone(),
            format!("{} -> {}", l.service_port, l.listen_port),
            protocol_name(l),
            kind,
        ]);
    }
    table(&mut out, &rows);

    if snapshot.listeners.iter().any(|l| !l.tls_servers.is_empty()) {
        let _ = writeln!(out, "\ntls termination:");
        let mut rows = vec![vec![
            "LISTENER".to_string(),
            "HOSTS".into(),
            "MODE".into(),
            "CERTIFICATES".into(),
            "FROM".into(),
        ]];
        for l in &snapshot.listeners {
            for ts in &l.tls_servers {
                let hosts: Vec<String> = ts.hosts.iter().map(|h| h.to_string()).collect();
                let mut certs = cert_source(&ts.tls.source, "cert");
                if ts.tls.mode == TlsMode::IstioMutual {
                    certs = "mesh certificates".into();
                }
                if !ts.tls.subject_alt_names.is_empty() {
                    certs = format!("{certs} san={}", ts.tls.subject_alt_names.join(","));
                }
                rows.push(vec![
                    l.name.clone(),
                    hosts.join(","),
                    mode_name(ts.tls.mode).into(),
                    certs,
                    ts.tls.origin.clone(),
                ]);
            }
        }
        table(&mut out, &rows);
    }

    let _ = writeln!(out, "\nroutes:");
    let mut rows = vec![vec![
        "LISTENER".to_string(),
        "HOST".into(),
        "ROUTE".into(),
        "MATCH".into(),
        "ACTION".into(),
    ]];
    for l in &snapshot.listeners {
        let tables: &[Arc<HttpRouteTable>] = match &l.routes {
            ListenerRoutes::Http(t) => std::slice::from_ref(t),
            ListenerRoutes::Https(ts) => ts,
            _ => &[],
        };
        for t in tables {
            for vh in &t.virtual_hosts {
                for r in &vh.routes {
                    let mut action = match &r.action {
                        RouteAction::Forward(w) => weighted(w),
                        RouteAction::Direct { status, .. } => {
                            format!("direct response {status}")
                        }
                        RouteAction::Redirect(r) => format!("redirect {}", r.status),
                    };
                    if let Some(t) = r.timeout {
                        let _ = write!(action, " (timeout {t:?})");
                    }
                    let p = &r.policy;
                    match &p.retry {
                        Some(rp) if *rp != egret_core::RetryPolicy::istio_default() => {
                            let _ = write!(action, " (retries {})", rp.num_retries);
                        }
                        None if matches!(r.action, RouteAction::Forward(_)) => {
                            action.push_str(" (no retries)");
                        }
                        _ => {}
                    }
                    for (set, what) in [
                        (p.rewrite.is_some(), "rewrite"),
                        (!p.headers.is_empty(), "headers"),
                        (p.fault.is_some(), "fault"),
                        (!p.mirrors.is_empty(), "mirror"),
                    ] {
                        if set {
                            let _ = write!(action, " +{what}");
                        }
                    }
                    rows.push(vec![
                        l.name.clone(),
                        vh.name.clone(),
                        r.name.as_deref().unwrap_or("-").to_string(),
                        matches(&r.matches),
                        action,
                    ]);
                }
            }
        }
        match &l.routes {
            ListenerRoutes::Sni(t) => {
                for r in &t.routes {
                    let hosts: Vec<String> = r.sni_hosts.iter().map(|h| h.to_string()).collect();
                    rows.push(vec![
                        l.name.clone(),
                        format!("sni {}", hosts.join(",")),
                        "-".into(),
                        "*".into(),
                        weighted(&r.clusters),
                    ]);
                }
            }
            ListenerRoutes::Tcp(t) => {
                let action = t
                    .clusters
                    .as_ref()
                    .map_or_else(|| "no route (connections refused)".to_string(), weighted);
                rows.push(vec![
                    l.name.clone(),
                    "-".into(),
                    "-".into(),
                    "*".into(),
                    action,
                ]);
            }
            ListenerRoutes::Http(_) | ListenerRoutes::Https(_) => {}
        }
    }
    table(&mut out, &rows);

    let _ = writeln!(out, "\nclusters:");
    let mut rows = vec![vec![
        "NAME".to_string(),
        "DISCOVERY".into(),
        "LB".into(),
        "CONNECT TIMEOUT".into(),
        "PROTOCOL".into(),
        "TLS".into(),
    ]];
    for c in snapshot.clusters.values() {
        let discovery = match &c.discovery {
            Discovery::StrictDns { targets } => {
                let t: Vec<String> = targets
                    .iter()
                    .map(|t| format!("{}:{}", t.host, t.port))
                    .collect();
                format!("STRICT_DNS {}", t.join(","))
            }
            Discovery::LogicalDns { target } => {
                format!("LOGICAL_DNS {}:{}", target.host, target.port)
            }
            Discovery::Static { endpoints } => {
                let t: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
                format!(
                    "STATIC {}",
                    if t.is_empty() {
                        "(none)".into()
                    } else {
                        t.join(",")
                    }
                )
            }
        };
        let lb = match c.lb {
            LbPolicy::RoundRobin => "ROUND_ROBIN",
            LbPolicy::Random => "RANDOM",
            LbPolicy::LeastRequest => "LEAST_REQUEST",
            LbPolicy::RingHash { .. } => "RING_HASH",
            LbPolicy::Maglev { .. } => "MAGLEV",
        };
        let protocol = match c.protocol {
            UpstreamProtocol::Http1 => "HTTP/1.1",
            UpstreamProtocol::Http2 => "HTTP/2",
            UpstreamProtocol::Tcp => "TCP",
        };
        let tls = c
            .tls
            .as_deref()
            .map_or_else(|| "-".to_string(), upstream_tls);
        rows.push(vec![
            c.name.to_string(),
            discovery,
            lb.into(),
            format!("{:?}", c.connect_timeout),
            protocol.into(),
            tls,
        ]);
    }
    table(&mut out, &rows);
    out
}

fn protocol_name(l: &Listener) -> String {
    if !l.tls_servers.is_empty() {
        let mut modes: Vec<&str> = Vec::new();
        for ts in &l.tls_servers {
            let m = mode_name(ts.tls.mode);
            if !modes.contains(&m) {
                modes.push(m);
            }
        }
        let name = if l.protocol == ServerProtocol::Tls {
            "TLS"
        } else {
            "HTTPS"
        };
        return format!("{name} ({})", modes.join(", "));
    }
    match l.protocol {
        ServerProtocol::Http => "HTTP",
        ServerProtocol::Http2 => "HTTP2",
        ServerProtocol::Https => "HTTPS (passthrough)",
        ServerProtocol::Tls => "TLS (passthrough)",
        ServerProtocol::Tcp => "TCP",
    }
    .into()
}

fn mode_name(m: TlsMode) -> &'static str {
    match m {
        TlsMode::Simple => "SIMPLE",
        TlsMode::Mutual => "MUTUAL",
        TlsMode::IstioMutual => "ISTIO_MUTUAL",
    }
}

/// `credential=NAME` or the files, space-separated; `-` when none.
fn cert_source(s: &CertSource, cert_label: &str) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &s.credential_name {
        parts.push(format!("credential={c}"));
    }
    for (label, path) in [
        (cert_label, &s.certificate),
        ("key", &s.private_key),
        ("ca", &s.ca_certificates),
    ] {
        if let Some(p) = path {
            parts.push(format!("{label}={}", p.display()));
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// `SIMPLE sni=edition.cnn.com`, `MUTUAL sni=... credential=client-credential`.
fn upstream_tls(t: &UpstreamTls) -> String {
    let mut out = format!("{} sni={}", mode_name(t.mode), t.sni);
    if t.mode != TlsMode::IstioMutual {
        let certs = cert_source(&t.source, "cert");
        if certs != "-" {
            let _ = write!(out, " {certs}");
        }
    }
    if !t.subject_alt_names.is_empty() {
        let _ = write!(out, " san={}", t.subject_alt_names.join(","));
    }
    if t.insecure_skip_verify {
        out.push_str(" insecure-skip-verify");
    }
    out
}

fn weighted(w: &WeightedClusters) -> String {
    if w.clusters.is_empty() {
        return "no cluster (503 NC)".into();
    }
    if w.clusters.len() == 1 {
        return format!("-> {}", w.clusters[0].cluster);
    }
    let parts: Vec<String> = w
        .clusters
        .iter()
        .map(|c| format!("{} ({})", c.cluster, c.weight))
        .collect();
    format!("-> {}", parts.join(", "))
}

fn string_match(what: &str, m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(v) => format!("{what}={v}"),
        StringMatch::Prefix(v) => format!("{what} prefix {v}"),
        StringMatch::Regex(r) => format!("{what}~{}", r.as_str()),
    }
}

fn matches(ms: &[RouteMatch]) -> String {
    if ms.is_empty() {
        return "*".into();
    }
    let alts: Vec<String> = ms
        .iter()
        .map(|m| {
            let mut parts = Vec::new();
            if let Some(u) = &m.uri {
                parts.push(string_match("uri", u));
            }
            if let Some(x) = &m.method {
                parts.push(string_match("method", x));
            }
            if let Some(x) = &m.authority {
                parts.push(string_match("authority", x));
            }
            if let Some(x) = &m.scheme {
                parts.push(string_match("scheme", x));
            }
            for h in &m.headers {
                let name = format!("{}{}", if h.invert { "!" } else { "" }, h.name);
                parts.push(match &h.value {
                    Some(v) => string_match(&name, v),
                    None => format!("{name} present"),
                });
            }
            for (k, v) in &m.query_params {
                parts.push(string_match(&format!("?{k}"), v));
            }
            if m.ignore_uri_case {
                parts.push("ignore uri case".into());
            }
            if parts.is_empty() {
                "*".into()
            } else {
                parts.join(" & ")
            }
        })
        .collect();
    alts.join(" | ")
}

fn table(out: &mut String, rows: &[Vec<String>]) {
    if rows.len() <= 1 {
        let _ = writeln!(out, "  (none)");
        return;
    }
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(" ");
        for (c, cell) in r.iter().enumerate() {
            line.push(' ');
            line.push_str(cell);
            if c + 1 < r.len() {
                line.push_str(&" ".repeat(widths[c].saturating_sub(cell.chars().count()) + 1));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}
