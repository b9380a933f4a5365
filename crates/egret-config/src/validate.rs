//! Checks of one resource (required fields, values, fields Egret does not implement yet) and
//! across resources (duplicates, gateway and subset references).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use crate::diag::{Diagnostic, Severity};
use crate::fields::vs_warning;
use crate::host_lookup::HostLookup;
use crate::istio::*;
use crate::load::{first_locations, LoadOptions, Loaded};
use crate::names::{fqdn, resolve_gateway, GatewayRef, Protocol};
use crate::node::Node;
use egret_core::HostPattern;

/// Message for a field Egret reads but does not act on yet.
pub const NOT_SUPPORTED: &str = "not supported yet; ignored";

/// Collects diagnostics about one resource; lines come from the resource's node tree.
pub(crate) struct Reporter<'a> {
    node: &'a Node,
    file: &'a Path,
    resource: String,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub fn new(node: &'a Node, file: &'a Path, resource: String) -> Self {
        Reporter {
            node,
            file,
            resource,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn diag(&self, severity: Severity, field: &str, message: String) -> Diagnostic {
        Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            line: self.node.line_of(field),
            resource: Some(self.resource.clone()),
            field: (!field.is_empty()).then(|| field.to_string()),
            message,
        }
    }

    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        let d = self.diag(Severity::Error, field, message.into());
        self.errors.push(d);
    }

    pub fn warn(&mut self, field: &str, message: impl Into<String>) {
        let d = self.diag(Severity::Warning, field, message.into());
        self.warnings.push(d);
    }

    pub fn unsupported(&mut self, field: &str) {
        self.warn(field, NOT_SUPPORTED);
    }

    fn required(&mut self, field: &str) {
        self.error(field, "required field is missing");
    }

    /// Warns when `present`.
    fn unsupported_if(&mut self, present: bool, field: &str) {
        if present {
            self.unsupported(field);
        }
    }
}

pub(crate) trait Validate {
    fn validate(&self, rep: &mut Reporter<'_>, opts: &LoadOptions, namespace: &str);
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry

impl Validate for ServiceEntrySpec {
    fn validate(&self, rep: &mut Reporter<'_>, _opts: &LoadOptions, _namespace: &str) {
        if self.hosts.is_empty() {
            rep.required("spec.hosts");
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h.trim().is_empty() || h.trim() == "*" {
                rep.error(&format!("spec.hosts[{i}]"), format!("invalid host {h:?}"));
            }
        }
        let mut numbers = Vec::new();
        for (i, p) in self.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            check_port_number(rep, p.number, &format!("{path}.number"));
            if let Some(n) = p.number {
                if numbers.contains(&n) {
                    rep.error(
                        &format!("{path}.number"),
                        format!("port {n} is listed twice"),
                    );
                }
                numbers.push(n);
            }
            match p.protocol.as_deref() {
                None => {}
                Some(s) if Protocol::parse(s).is_some() => {}
                Some(s) => rep.error(
                    &format!("{path}.protocol"),
                    format!("unknown protocol {s:?}"),
                ),
            }
            if let Some(t) = p.target_port {
                if !(1..=65535).contains(&t) {
                    rep.error(
                        &format!("{path}.targetPort"),
                        format!("port {t} is out of range 1-65535"),
                    );
                }
            }
        }
        let resolution = self.resolution.unwrap_or(Resolution::None);
        for (i, e) in self.endpoints.iter().enumerate() {
            let path = format!("spec.endpoints[{i}]");
            match e.address.as_deref().map(str::trim) {
                None | Some("") => rep.required(&format!("{path}.address")),
                Some(a) if a.starts_with("unix://") => rep.error(
                    &format!("{path}.address"),
                    "unix domain socket endpoints are not supported",
                ),
                Some(a) if resolution == Resolution::Static && a.parse::<IpAddr>().is_err() => rep
                    .error(
                        &format!("{path}.address"),
                        format!(
                            "{a:?} is not an IP address (resolution STATIC needs IP addresses)"
                        ),
                    ),
                Some(_) => {}
            }
            for (name, port) in &e.ports {
                if !(1..=65535).contains(port) {
                    rep.error(
                        &format!("{path}.ports.{name}"),
                        format!("port {port} is out of range 1-65535"),
                    );
                }
            }
            rep.unsupported_if(e.network.is_some(), &format!("{path}.network"));
            rep.unsupported_if(e.locality.is_some(), &format!("{path}.locality"));
            rep.unsupported_if(e.weight.is_some(), &format!("{path}.weight"));
            rep.unsupported_if(
                e.service_account.is_some(),
                &format!("{path}.serviceAccount"),
            );
        }
        if resolution == Resolution::DnsRoundRobin && self.endpoints.len() > 1 {
            rep.error(
                "spec.endpoints",
                "resolution DNS_ROUND_ROBIN allows at most one endpoint",
            );
        }
        rep.unsupported_if(!self.addresses.is_empty(), "spec.addresses");
        rep.unsupported_if(!self.subject_alt_names.is_empty(), "spec.subjectAltNames");
        rep.unsupported_if(self.workload_selector.is_some(), "spec.workloadSelector");
    }
}

fn check_port_number(rep: &mut Reporter<'_>, number: Option<u32>, path: &str) {
    match number {
        None => rep.required(path),
        Some(n) if !(1..=65535).contains(&n) => {
            rep.error(path, format!("port {n} is out of range 1-65535"))
        }
        Some(_) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway

impl Validate for GatewaySpec {
    fn validate(&self, rep: &mut Reporter<'_>, _opts: &LoadOptions, _namespace: &str) {
        if self.servers.is_empty() {
            rep.required("spec.servers");
        }
        for (i, s) in self.servers.iter().enumerate() {
            let path = format!("spec.servers[{i}]");
            let mut protocol = None;
            match &s.port {
                None => rep.required(&format!("{path}.port")),
                Some(p) => {
                    check_port_number(rep, p.number, &format!("{path}.port.number"));
                    match p.protocol.as_deref() {
                        None => rep.required(&format!("{path}.port.protocol")),
                        Some(x) => match Protocol::parse(x) {
                            Some(pr) => protocol = Some(pr),
                            None => rep.error(
                                &format!("{path}.port.protocol"),
                                format!("unknown protocol {x:?}"),
                            ),
                        },
                    }
                    rep.unsupported_if(p.target_port.is_some(), &format!("{path}.port.targetPort"));
                }
            }
            if s.hosts.is_empty() {
                rep.required(&format!("{path}.hosts"));
            }
            for (j, h) in s.hosts.iter().enumerate() {
                let host = h.rsplit_once('/').map_or(h.as_str(), |(_, h)| h);
                if host.trim().is_empty() {
                    rep.error(&format!("{path}.hosts[{j}]"), format!("invalid host {h:?}"));
                }
            }
            if matches!(protocol, Some(Protocol::Https | Protocol::Tls))
                && s.tls.as_ref().and_then(|t| t.mode).is_none()
            {
                rep.error(
                    &format!("{path}.tls.mode"),
                    "TLS settings (tls.mode) are required for HTTPS and TLS servers",
                );
            }
            rep.unsupported_if(s.bind.is_some(), &format!("{path}.bind"));
            rep.unsupported_if(
                s.default_endpoint.is_some(),
                &format!("{path}.defaultEndpoint"),
            );
            if let Some(tls) = &s.tls {
                if tls.https_redirect == Some(true) {
                    rep.unsupported(&format!("{path}.tls.httpsRedirect"));
                }
                validate_server_tls(rep, tls, &format!("{path}.tls"));
            }
        }
    }
}

/// Is an optional string field set? Istio treats `""` as unset.
fn set(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| !s.trim().is_empty())
}

/// `servers[].tls`, with Istio's rules for where certificates come from.
fn validate_server_tls(rep: &mut Reporter<'_>, tls: &ServerTls, t: &str) {
    let Some(mode) = tls.mode else { return };
    let unsupported_parts = [
        ("caCrl", set(&tls.ca_crl)),
        ("credentialNames", !tls.credential_names.is_empty()),
        ("tlsCertificates", !tls.tls_certificates.is_empty()),
        (
            "verifyCertificateSpki",
            !tls.verify_certificate_spki.is_empty(),
        ),
        (
            "verifyCertificateHash",
            !tls.verify_certificate_hash.is_empty(),
        ),
        ("minProtocolVersion", tls.min_protocol_version.is_some()),
        ("maxProtocolVersion", tls.max_protocol_version.is_some()),
        ("cipherSuites", !tls.cipher_suites.is_empty()),
    ];
    match mode {
        ServerTlsMode::Passthrough => {
            // The gateway never terminates TLS, so these do nothing.
            let set_fields = [
                ("serverCertificate", set(&tls.server_certificate)),
                ("privateKey", set(&tls.private_key)),
                ("caCertificates", set(&tls.ca_certificates)),
                ("credentialName", set(&tls.credential_name)),
                ("subjectAltNames", !tls.subject_alt_names.is_empty()),
            ];
            for (field, present) in set_fields.into_iter().chain(unsupported_parts) {
                if present {
                    rep.warn(&format!("{t}.{field}"), "not used with tls.mode PASSTHROUGH (the gateway does not terminate TLS); ignored");
                }
            }
        }
        // The server is skipped by compile(), which says so.
        ServerTlsMode::AutoPassthrough | ServerTlsMode::OptionalMutual => {}
        ServerTlsMode::IstioMutual => {
            for (field, present) in [
                ("serverCertificate", set(&tls.server_certificate)),
                ("privateKey", set(&tls.private_key)),
                ("caCertificates", set(&tls.ca_certificates)),
                ("credentialName", set(&tls.credential_name)),
            ] {
                if present {
                    rep.error(
                        &format!("{t}.{field}"),
                        "tls.mode ISTIO_MUTUAL uses the mesh certificates (--mesh-certs); this field cannot be set",
                    );
                }
            }
            for (field, present) in unsupported_parts {
                rep.unsupported_if(present, &format!("{t}.{field}"));
            }
        }
        ServerTlsMode::Simple | ServerTlsMode::Mutual => {
            let name = if mode == ServerTlsMode::Simple {
                "SIMPLE"
            } else {
                "MUTUAL"
            };
            if set(&tls.credential_name) {
                for (field, present) in [
                    ("serverCertificate", set(&tls.server_certificate)),
                    ("privateKey", set(&tls.private_key)),
                    ("caCertificates", set(&tls.ca_certificates)),
                ] {
                    if present {
                        rep.error(&format!("{t}.{field}"), "cannot be set together with credentialName (the credential provides it)");
                    }
                }
            } else {
                let cert = set(&tls.server_certificate);
                let key = set(&tls.private_key);
                if !cert && !key {
                    rep.error(
                        &format!("{t}.mode"),
                        format!("tls.mode {name} needs a certificate: set credentialName, or serverCertificate and privateKey"),
                    );
                } else if !cert {
                    rep.error(&format!("{t}.serverCertificate"), format!("tls.mode {name} with privateKey also needs serverCertificate (or use credentialName)"));
                } else if !key {
                    rep.error(&format!("{t}.privateKey"), format!("tls.mode {name} with serverCertificate also needs privateKey (or use credentialName)"));
                }
                if mode == ServerTlsMode::Mutual && !set(&tls.ca_certificates) {
                    rep.error(
                        &format!("{t}.caCertificates"),
                        "tls.mode MUTUAL needs the CA that signs client certificates: set caCertificates (or use credentialName)",
                    );
                }
            }
            for (field, present) in unsupported_parts {
                rep.unsupported_if(present, &format!("{t}.{field}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VirtualService

impl Validate for VirtualServiceSpec {
    fn validate(&self, rep: &mut Reporter<'_>, _opts: &LoadOptions, _namespace: &str) {
        if self.hosts.is_empty() {
            rep.required("spec.hosts");
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h.trim().is_empty() {
                rep.error(&format!("spec.hosts[{i}]"), "invalid host \"\"");
            }
        }
        if self.http.is_empty() && self.tls.is_empty() && self.tcp.is_empty() {
            rep.error(
                "spec",
                "at least one of http, tls or tcp routes is required",
            );
        }
        for (i, r) in self.http.iter().enumerate() {
            validate_http_route(rep, r, &format!("spec.http[{i}]"));
        }
        for (i, r) in self.tls.iter().enumerate() {
            let path = format!("spec.tls[{i}]");
            if r.matches.is_empty() {
                rep.required(&format!("{path}.match"));
            }
            for (j, m) in r.matches.iter().enumerate() {
                let mpath = format!("{path}.match[{j}]");
                if m.sni_hosts.is_empty() {
                    rep.required(&format!("{mpath}.sniHosts"));
                }
                rep.unsupported_if(
                    !m.destination_subnets.is_empty(),
                    &format!("{mpath}.destinationSubnets"),
                );
                check_match_port(rep, m.port, &format!("{mpath}.port"));
            }
            validate_l4_destinations(rep, &r.route, &format!("{path}.route"));
        }
        for (i, r) in self.tcp.iter().enumerate() {
            let path = format!("spec.tcp[{i}]");
            for (j, m) in r.matches.iter().enumerate() {
                let mpath = format!("{path}.match[{j}]");
                rep.unsupported_if(
                    !m.destination_subnets.is_empty(),
                    &format!("{mpath}.destinationSubnets"),
                );
                rep.unsupported_if(m.source_subnet.is_some(), &format!("{mpath}.sourceSubnet"));
                check_match_port(rep, m.port, &format!("{mpath}.port"));
            }
            validate_l4_destinations(rep, &r.route, &format!("{path}.route"));
        }
    }
}

fn check_match_port(rep: &mut Reporter<'_>, port: Option<u32>, path: &str) {
    if let Some(n) = port {
        if !(1..=65535).contains(&n) {
            rep.error(path, format!("port {n} is out of range 1-65535"));
        }
    }
}

fn validate_http_route(rep: &mut Reporter<'_>, r: &HttpRoute, path: &str) {
    for (j, m) in r.matches.iter().enumerate() {
        let mpath = format!("{path}.match[{j}]");
        for (field, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                check_string_match(rep, sm, &format!("{mpath}.{field}"));
            }
        }
        for (field, map) in [
            ("headers", &m.headers),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (name, sm) in map {
                let hpath = format!("{mpath}.{field}.{name}");
                if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err() {
                    rep.error(&hpath, format!("invalid header name {name:?}"));
                }
                check_string_match(rep, sm, &hpath);
            }
        }
        for (name, sm) in &m.query_params {
            check_string_match(rep, sm, &format!("{mpath}.queryParams.{name}"));
        }
        check_match_port(rep, m.port, &format!("{mpath}.port"));
        rep.unsupported_if(m.stat_prefix.is_some(), &format!("{mpath}.statPrefix"));
    }

    let has_route = !r.route.is_empty();
    if !has_route && r.redirect.is_none() && r.direct_response.is_none() && r.delegate.is_none() {
        rep.error(
            path,
            "one of route, redirect, directResponse or delegate is required",
        );
    }
    if has_route && r.redirect.is_some() {
        rep.error(
            &format!("{path}.redirect"),
            "route and redirect cannot both be set",
        );
    }
    if has_route && r.direct_response.is_some() {
        rep.error(
            &format!("{path}.directResponse"),
            "route and directResponse cannot both be set",
        );
    }
    if let Some(dr) = &r.direct_response {
        match dr.status {
            None => rep.required(&format!("{path}.directResponse.status")),
            Some(s) if !(200..=599).contains(&s) => rep.error(
                &format!("{path}.directResponse.status"),
                format!("status {s} is not in 200-599"),
            ),
            Some(_) => {}
        }
        if let Some(body) = &dr.body {
            rep.unsupported_if(
                body.bytes.is_some(),
                &format!("{path}.directResponse.body.bytes"),
            );
        }
    }
    for (k, d) in r.route.iter().enumerate() {
        let dpath = format!("{path}.route[{k}]");
        check_destination(rep, d.destination.as_ref(), &format!("{dpath}.destination"));
        if d.weight.is_some_and(|w| w < 0) {
            rep.error(&format!("{dpath}.weight"), "weight must not be negative");
        }
        if let Some(h) = &d.headers {
            validate_headers(rep, h, &format!("{dpath}.headers"));
        }
    }
    check_weights(
        rep,
        r.route.iter().map(|d| d.weight),
        &format!("{path}.route"),
    );

    if let Some(redirect) = &r.redirect {
        validate_redirect(rep, redirect, &format!("{path}.redirect"));
        if r.rewrite.is_some() {
            rep.error(
                &format!("{path}.rewrite"),
                "rewrite cannot be used with redirect",
            );
        }
    }
    if r.delegate.is_some() {
        rep.warn(&format!("{path}.delegate"), vs_warning("http[].delegate"));
    }
    if let Some(rw) = &r.rewrite {
        validate_rewrite(rep, rw, &format!("{path}.rewrite"));
    }
    if let Some(retries) = &r.retries {
        validate_retries(rep, retries, &format!("{path}.retries"));
    }
    if let Some(fault) = &r.fault {
        validate_fault(rep, fault, &format!("{path}.fault"));
    }
    if let Some(m) = &r.mirror {
        check_destination(rep, Some(m), &format!("{path}.mirror"));
    }
    if let Some(p) = &r.mirror_percentage {
        check_percent(rep, p, &format!("{path}.mirrorPercentage"));
    }
    if r.mirror_percent.is_some_and(|p| p > 100) {
        rep.error(
            &format!("{path}.mirrorPercent"),
            "percentage must be in 0-100",
        );
    }
    if (r.mirror_percentage.is_some() || r.mirror_percent.is_some()) && r.mirror.is_none() {
        rep.warn(
            &format!("{path}.mirrorPercentage"),
            "applies to `mirror`, which is not set; ignored (use mirrors[].percentage)",
        );
    }
    for (k, m) in r.mirrors.iter().enumerate() {
        let mpath = format!("{path}.mirrors[{k}]");
        check_destination(rep, m.destination.as_ref(), &format!("{mpath}.destination"));
        if let Some(p) = &m.percentage {
            check_percent(rep, p, &format!("{mpath}.percentage"));
        }
    }
    if r.cors_policy.is_some() {
        rep.warn(
            &format!("{path}.corsPolicy"),
            vs_warning("http[].corsPolicy"),
        );
    }
    if let Some(h) = &r.headers {
        validate_headers(rep, h, &format!("{path}.headers"));
    }
}

/// Go's `http.StatusText` list: what Istio accepts as a status code in `retryOn`.
fn is_known_status(code: u16) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=308 | 400..=418 | 421..=426 | 428 | 429 | 431
        | 451 | 500..=508 | 510 | 511)
}

fn validate_retries(rep: &mut Reporter<'_>, r: &HttpRetry, path: &str) {
    let attempts = r.attempts.unwrap_or(0);
    if attempts < 0 {
        rep.error(&format!("{path}.attempts"), "attempts must not be negative");
    } else if attempts == 0 && (r.per_try_timeout.is_some() || r.retry_on.is_some()) {
        rep.warn(
            &format!("{path}.attempts"),
            "attempts is 0 (or unset): retries are disabled, as in Istio",
        );
    }
    if let Some(t) = &r.per_try_timeout {
        if t.value < std::time::Duration::from_millis(1) {
            rep.error(
                &format!("{path}.perTryTimeout"),
                "perTryTimeout must be at least 1ms",
            );
        }
    }
    if let Some(b) = &r.backoff {
        if b.value < std::time::Duration::from_millis(1) {
            rep.error(&format!("{path}.backoff"), "backoff must be at least 1ms");
        }
    }
    if let Some(on) = &r.retry_on {
        for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Ok(code) = part.parse::<u16>() {
                if is_known_status(code) {
                    continue;
                }
            }
            if egret_core::RetryOn::parse(part).is_some() {
                continue;
            }
            if matches!(
                part,
                "retriable-headers" | "envoy-ratelimited" | "http3-post-connect-failure"
            ) {
                rep.warn(
                    &format!("{path}.retryOn"),
                    format!("retryOn {part:?} is not supported yet; ignored"),
                );
                continue;
            }
            rep.error(
                &format!("{path}.retryOn"),
                format!("{part:?} is not a valid retryOn policy"),
            );
        }
    }
    if r.retry_remote_localities.is_some() {
        rep.warn(
            &format!("{path}.retryRemoteLocalities"),
            vs_warning("http[].retries.retryRemoteLocalities"),
        );
    }
}

fn validate_rewrite(rep: &mut Reporter<'_>, rw: &HttpRewrite, path: &str) {
    if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
        rep.error(
            &format!("{path}.uriRegexRewrite"),
            "only one of uri or uriRegexRewrite may be set",
        );
    }
    if let Some(rr) = &rw.uri_regex_rewrite {
        if rr.matches.is_none() {
            rep.required(&format!("{path}.uriRegexRewrite.match"));
        }
        if rr.rewrite.is_none() {
            rep.required(&format!("{path}.uriRegexRewrite.rewrite"));
        }
    }
}

/// Istio's redirect codes (`0` = 301).
pub(crate) const REDIRECT_CODES: [u32; 5] = [301, 302, 303, 307, 308];

fn validate_redirect(rep: &mut Reporter<'_>, r: &HttpRedirect, path: &str) {
    if let Some(code) = r.redirect_code {
        if code != 0 && !REDIRECT_CODES.contains(&code) {
            rep.error(
                &format!("{path}.redirectCode"),
                format!("redirect code {code} is not supported (301, 302, 303, 307 or 308)"),
            );
        }
    }
    if let Some(p) = r.port {
        if !(1..=65535).contains(&p) {
            rep.error(
                &format!("{path}.port"),
                format!("port {p} is out of range 1-65535"),
            );
        }
        if r.derive_port.is_some() {
            rep.error(
                &format!("{path}.derivePort"),
                "only one of port or derivePort may be set",
            );
        }
    }
    match r.derive_port.as_deref() {
        None | Some("FROM_PROTOCOL_DEFAULT" | "FROM_REQUEST_PORT") => {}
        Some(other) => rep.error(
            &format!("{path}.derivePort"),
            format!("unknown derivePort {other:?} (FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT)"),
        ),
    }
    if let Some(s) = &r.scheme {
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            rep.error(&format!("{path}.scheme"), format!("invalid scheme {s:?}"));
        }
    }
}

/// gRPC status names Istio accepts in `fault.abort.grpcStatus`, by code.
pub(crate) const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn check_percent(rep: &mut Reporter<'_>, p: &Percent, path: &str) {
    if p.value.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
        rep.error(&format!("{path}.value"), "percentage must be in 0-100");
    }
}

fn validate_fault(rep: &mut Reporter<'_>, f: &HttpFaultInjection, path: &str) {
    if f.delay.is_none() && f.abort.is_none() {
        rep.error(path, "one of delay or abort is required");
    }
    if let Some(d) = &f.delay {
        let dpath = format!("{path}.delay");
        if d.exponential_delay.is_some() {
            rep.warn(
                &format!("{dpath}.exponentialDelay"),
                vs_warning("http[].fault.delay.exponentialDelay"),
            );
        }
        match &d.fixed_delay {
            Some(fd) if fd.value < std::time::Duration::from_millis(1) => rep.error(
                &format!("{dpath}.fixedDelay"),
                "fixedDelay must be at least 1ms",
            ),
            Some(_) => {}
            None if d.exponential_delay.is_none() => rep.required(&format!("{dpath}.fixedDelay")),
            None => {}
        }
        if let Some(p) = &d.percentage {
            check_percent(rep, p, &format!("{dpath}.percentage"));
        } else if d.percent.is_some_and(|p| !(0..=100).contains(&p)) {
            rep.error(&format!("{dpath}.percent"), "percentage must be in 0-100");
        } else if d.percent.is_none() && d.fixed_delay.is_some() {
            rep.warn(
                &dpath,
                "no percentage: no request is delayed (Istio's default is 0%); set percentage.value, e.g. 100",
            );
        }
    }
    if let Some(a) = &f.abort {
        let apath = format!("{path}.abort");
        let set = usize::from(a.http_status.is_some())
            + usize::from(a.grpc_status.is_some())
            + usize::from(a.http2_error.is_some());
        if set == 0 {
            rep.error(&apath, "one of httpStatus or grpcStatus is required");
        } else if set > 1 {
            rep.error(
                &apath,
                "only one of httpStatus, grpcStatus or http2Error may be set",
            );
        }
        if let Some(s) = a.http_status {
            if !(200..=599).contains(&s) {
                rep.error(
                    &format!("{apath}.httpStatus"),
                    format!("httpStatus {s} is not in 200-599"),
                );
            }
        }
        if let Some(g) = &a.grpc_status {
            if !GRPC_STATUS_NAMES.contains(&g.as_str()) {
                rep.error(
                    &format!("{apath}.grpcStatus"),
                    format!("unknown gRPC status {g:?} (e.g. UNAVAILABLE)"),
                );
            }
        }
        if a.http2_error.is_some() {
            rep.warn(
                &format!("{apath}.http2Error"),
                vs_warning("http[].fault.abort.http2Error"),
            );
        }
        match &a.percentage {
            Some(p) => check_percent(rep, p, &format!("{apath}.percentage")),
            None => rep.warn(
                &apath,
                "no percentage: no request is aborted (Istio's default is 0%); set percentage.value, e.g. 100",
            ),
        }
    }
}

/// `headers.request|response.set|add|remove`: valid names and values. Envoy would expand
/// `%COMMAND%` in values; Egret sends them literally, so those warn.
fn validate_headers(rep: &mut Reporter<'_>, h: &Headers, path: &str) {
    for (dir, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
            for (name, value) in map {
                let fpath = format!("{path}.{dir}.{op}.{name}");
                if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err()
                    && !name.starts_with(':')
                {
                    rep.error(&fpath, format!("invalid header name {name:?}"));
                }
                if http::HeaderValue::from_str(value).is_err() {
                    rep.error(&fpath, format!("invalid header value {value:?}"));
                } else if value.contains('%') {
                    rep.warn(
                        &fpath,
                        "Envoy would expand %COMMAND% operators in this value; Egret sends it literally",
                    );
                }
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err()
                && !name.starts_with(':')
            {
                rep.error(
                    &format!("{path}.{dir}.remove[{i}]"),
                    format!("invalid header name {name:?}"),
                );
            }
        }
    }
}

fn check_string_match(rep: &mut Reporter<'_>, sm: &StringMatch, path: &str) {
    if sm.set_count() > 1 {
        rep.error(path, "only one of exact, prefix or regex may be set");
    }
}

fn check_destination(rep: &mut Reporter<'_>, d: Option<&Destination>, path: &str) {
    let Some(d) = d else {
        rep.required(path);
        return;
    };
    match d.host.as_deref().map(str::trim) {
        None | Some("") => rep.required(&format!("{path}.host")),
        Some(h) if h.starts_with('*') => rep.error(
            &format!("{path}.host"),
            format!("a destination host cannot be a wildcard ({h:?})"),
        ),
        Some(_) => {}
    }
    if let Some(p) = &d.port {
        match p.number {
            Some(n) if !(1..=65535).contains(&n) => rep.error(
                &format!("{path}.port.number"),
                format!("port {n} is out of range 1-65535"),
            ),
            _ => {}
        }
    }
}

fn validate_l4_destinations(rep: &mut Reporter<'_>, route: &[RouteDestination], path: &str) {
    if route.is_empty() {
        rep.required(path);
    }
    for (k, d) in route.iter().enumerate() {
        check_destination(
            rep,
            d.destination.as_ref(),
            &format!("{path}[{k}].destination"),
        );
        if d.weight.is_some_and(|w| w < 0) {
            rep.error(
                &format!("{path}[{k}].weight"),
                "weight must not be negative",
            );
        }
    }
    check_weights(rep, route.iter().map(|d| d.weight), path);
}

/// With more than one destination the weights must add up to 100 (a missing weight is 0).
fn check_weights(rep: &mut Reporter<'_>, weights: impl Iterator<Item = Option<i64>>, path: &str) {
    let weights: Vec<Option<i64>> = weights.collect();
    if weights.len() > 1 {
        let sum: i64 = weights.iter().map(|w| w.unwrap_or(0)).sum();
        if sum != 100 {
            rep.error(
                path,
                format!("destination weights add up to {sum}; they must add up to 100"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

impl Validate for DestinationRuleSpec {
    fn validate(&self, rep: &mut Reporter<'_>, _opts: &LoadOptions, _namespace: &str) {
        match self.host.as_deref().map(str::trim) {
            None | Some("") => rep.required("spec.host"),
            Some(_) => {}
        }
        if let Some(tp) = &self.traffic_policy {
            validate_traffic_policy(rep, tp, "spec.trafficPolicy");
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, s) in self.subsets.iter().enumerate() {
            let path = format!("spec.subsets[{i}]");
            match s.name.as_deref() {
                None | Some("") => rep.required(&format!("{path}.name")),
                Some(n) => {
                    if names.contains(&n) {
                        rep.error(
                            &format!("{path}.name"),
                            format!("subset {n:?} is defined twice"),
                        );
                    }
                    names.push(n);
                }
            }
            if let Some(tp) = &s.traffic_policy {
                validate_traffic_policy(rep, tp, &format!("{path}.trafficPolicy"));
            }
        }
    }
}

fn validate_traffic_policy(rep: &mut Reporter<'_>, tp: &TrafficPolicy, path: &str) {
    validate_policy_parts(
        rep,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        path,
    );
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let ppath = format!("{path}.portLevelSettings[{i}]");
        match p.port.as_ref().and_then(|p| p.number) {
            None => rep.required(&format!("{ppath}.port.number")),
            Some(n) if !(1..=65535).contains(&n) => rep.error(
                &format!("{ppath}.port.number"),
                format!("port {n} is out of range 1-65535"),
            ),
            Some(_) => {}
        }
        validate_policy_parts(
            rep,
            p.load_balancer.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            &ppath,
        );
        if let Some(tls) = &p.tls {
            validate_client_tls(rep, tls, &format!("{ppath}.tls"));
        }
    }
    rep.unsupported_if(tp.tunnel.is_some(), &format!("{path}.tunnel"));
    rep.unsupported_if(
        tp.proxy_protocol.is_some(),
        &format!("{path}.proxyProtocol"),
    );
    rep.unsupported_if(tp.retry_budget.is_some(), &format!("{path}.retryBudget"));
    if let Some(tls) = &tp.tls {
        validate_client_tls(rep, tls, &format!("{path}.tls"));
    }
}

/// `trafficPolicy.tls` (top level, port level, subset): Istio's rules plus pairs that only
/// work together.
fn validate_client_tls(rep: &mut Reporter<'_>, tls: &ClientTls, t: &str) {
    let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
    let cert = set(&tls.client_certificate);
    let key = set(&tls.private_key);
    let ca = set(&tls.ca_certificates);
    let credential = set(&tls.credential_name);
    match mode {
        ClientTlsMode::Disable => return,
        ClientTlsMode::IstioMutual => {
            for (field, present) in [
                ("clientCertificate", cert),
                ("privateKey", key),
                ("caCertificates", ca),
                ("credentialName", credential),
            ] {
                if present {
                    rep.warn(&format!("{t}.{field}"), "not used with tls.mode ISTIO_MUTUAL (the mesh certificates are used); ignored");
                }
            }
        }
        ClientTlsMode::Simple | ClientTlsMode::Mutual => {
            let name = if mode == ClientTlsMode::Simple {
                "SIMPLE"
            } else {
                "MUTUAL"
            };
            if credential {
                for (field, present) in [
                    ("clientCertificate", cert),
                    ("privateKey", key),
                    ("caCertificates", ca),
                ] {
                    if present {
                        rep.error(&format!("{t}.{field}"), "cannot be set together with credentialName (the credential provides it)");
                    }
                }
            } else if cert && !key {
                rep.error(
                    &format!("{t}.privateKey"),
                    "clientCertificate is set, so privateKey is required",
                );
            } else if key && !cert {
                rep.error(
                    &format!("{t}.clientCertificate"),
                    "privateKey is set, so clientCertificate is required",
                );
            } else if mode == ClientTlsMode::Mutual && !cert {
                rep.error(
                    &format!("{t}.mode"),
                    format!("tls.mode {name} needs a client certificate: set credentialName, or clientCertificate and privateKey"),
                );
            }
            if tls.insecure_skip_verify == Some(true) {
                let conflicts: &[(&str, bool)] = if mode == ClientTlsMode::Simple {
                    &[
                        ("caCertificates", ca),
                        ("credentialName", credential),
                        ("subjectAltNames", !tls.subject_alt_names.is_empty()),
                    ]
                } else {
                    &[
                        ("caCertificates", ca),
                        ("subjectAltNames", !tls.subject_alt_names.is_empty()),
                    ]
                };
                for (field, present) in conflicts {
                    if *present {
                        rep.error(
                            &format!("{t}.{field}"),
                            format!(
                                "cannot be set when insecureSkipVerify is true (tls.mode {name})"
                            ),
                        );
                    }
                }
            }
        }
    }
    rep.unsupported_if(set(&tls.ca_crl), &format!("{t}.caCrl"));
}

fn validate_policy_parts(
    rep: &mut Reporter<'_>,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    path: &str,
) {
    if let Some(lb) = lb {
        let lpath = format!("{path}.loadBalancer");
        if lb.simple == Some(SimpleLb::Passthrough) {
            rep.warn(
                &format!("{lpath}.simple"),
                "PASSTHROUGH sends each connection to its original destination, which at a gateway is the gateway itself; the default LEAST_REQUEST is used",
            );
        }
        if let Some(ch) = &lb.consistent_hash {
            let h = format!("{lpath}.consistentHash");
            if lb.simple.is_some() {
                rep.error(&lpath, "simple and consistentHash cannot both be set");
            }
            validate_consistent_hash(rep, ch, &h);
        }
        rep.unsupported_if(
            lb.locality_lb_setting.is_some(),
            &format!("{lpath}.localityLbSetting"),
        );
        rep.unsupported_if(
            lb.warmup_duration_secs.is_some(),
            &format!("{lpath}.warmupDurationSecs"),
        );
        rep.unsupported_if(lb.warmup.is_some(), &format!("{lpath}.warmup"));
    }
    if let Some(pool) = pool {
        let cpath = format!("{path}.connectionPool");
        if let Some(tcp) = &pool.tcp {
            let t = format!("{cpath}.tcp");
            non_negative(rep, tcp.max_connections, &format!("{t}.maxConnections"));
            if tcp
                .connect_timeout
                .as_ref()
                .is_some_and(|d| d.value.is_zero())
            {
                rep.error(
                    &format!("{t}.connectTimeout"),
                    "connect timeout must be greater than zero",
                );
            }
        }
        if let Some(http) = &pool.http {
            let h = format!("{cpath}.http");
            for (v, field) in [
                (http.http1_max_pending_requests, "http1MaxPendingRequests"),
                (http.http2_max_requests, "http2MaxRequests"),
                (http.max_requests_per_connection, "maxRequestsPerConnection"),
                (http.max_retries, "maxRetries"),
                (http.max_concurrent_streams, "maxConcurrentStreams"),
            ] {
                non_negative(rep, v, &format!("{h}.{field}"));
            }
            match http.h2_upgrade_policy.as_deref() {
                None | Some("DEFAULT" | "DO_NOT_UPGRADE" | "UPGRADE") => {}
                Some(other) => rep.error(
                    &format!("{h}.h2UpgradePolicy"),
                    format!("{other:?} is not one of DEFAULT, DO_NOT_UPGRADE, UPGRADE"),
                ),
            }
            rep.unsupported_if(
                http.use_client_protocol == Some(true),
                &format!("{h}.useClientProtocol"),
            );
            rep.unsupported_if(
                http.max_concurrent_streams.is_some_and(|n| n > 0),
                &format!("{h}.maxConcurrentStreams"),
            );
        }
    }
    if let Some(o) = outlier {
        let opath = format!("{path}.outlierDetection");
        for (v, field) in [
            (o.max_ejection_percent, "maxEjectionPercent"),
            (o.min_health_percent, "minHealthPercent"),
        ] {
            if v.is_some_and(|v| !(0..=100).contains(&v)) {
                rep.error(&format!("{opath}.{field}"), "must be between 0 and 100");
            }
        }
        if o.consecutive_errors.is_some() {
            rep.warn(
                &format!("{opath}.consecutiveErrors"),
                "deprecated and no longer applied by Istio; use consecutive5xxErrors or consecutiveGatewayErrors; ignored",
            );
        }
        if o.consecutive_local_origin_failures.is_some()
            && o.split_external_local_origin_errors != Some(true)
        {
            rep.warn(
                &format!("{opath}.consecutiveLocalOriginFailures"),
                "only applies with splitExternalLocalOriginErrors: true; ignored",
            );
        }
    }
}

fn non_negative(rep: &mut Reporter<'_>, v: Option<i32>, field: &str) {
    if v.is_some_and(|v| v < 0) {
        rep.error(field, "must not be negative");
    }
}

fn validate_consistent_hash(rep: &mut Reporter<'_>, ch: &ConsistentHashLb, h: &str) {
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip == Some(true),
        ch.http_query_parameter_name.is_some(),
    ];
    match keys.iter().filter(|k| **k).count() {
        0 => rep.error(
            h,
            "needs one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
        ),
        1 => {}
        _ => rep.error(
            h,
            "only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName may be set",
        ),
    }
    if ch.http_header_name.as_deref().is_some_and(|n| {
        n.trim().is_empty() || http::HeaderName::from_bytes(n.trim().as_bytes()).is_err()
    }) {
        rep.error(&format!("{h}.httpHeaderName"), "not a valid header name");
    }
    if ch
        .http_query_parameter_name
        .as_deref()
        .is_some_and(|n| n.is_empty())
    {
        rep.error(&format!("{h}.httpQueryParameterName"), "must not be empty");
    }
    if let Some(c) = &ch.http_cookie {
        if c.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
            rep.required(&format!("{h}.httpCookie.name"));
        }
        if c.ttl.is_some() {
            rep.warn(
                &format!("{h}.httpCookie.ttl"),
                "Envoy would set the cookie on responses when the request lacks it; Egret does not generate cookies: requests without it are balanced at random",
            );
        }
        rep.unsupported_if(
            !c.attributes.is_empty(),
            &format!("{h}.httpCookie.attributes"),
        );
    }
    if ch.ring_hash.is_some() && ch.maglev.is_some() {
        rep.error(h, "ringHash and maglev cannot both be set");
    }
    if let Some(size) = ch.maglev.as_ref().and_then(|m| m.table_size) {
        if size != 0 && !is_prime(size) {
            rep.error(
                &format!("{h}.maglev.tableSize"),
                format!("{size} is not a prime number"),
            );
        }
        if size > 5_000_011 {
            rep.error(&format!("{h}.maglev.tableSize"), "must be at most 5000011");
        }
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d.saturating_mul(d) <= n {
        if n.rem_euclid(d) == 0 {
            return false;
        }
        d += 1;
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Across resources

/// Every destination of a VirtualService with its field path.
pub(crate) fn destinations(vs: &VirtualServiceSpec) -> Vec<(String, &Destination)> {
    let mut out = Vec::new();
    for (i, r) in vs.http.iter().enumerate() {
        for (k, d) in r.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                out.push((format!("spec.http[{i}].route[{k}].destination"), dest));
            }
        }
        if let Some(m) = &r.mirror {
            out.push((format!("spec.http[{i}].mirror"), m));
        }
        for (k, m) in r.mirrors.iter().enumerate() {
            if let Some(dest) = &m.destination {
                out.push((format!("spec.http[{i}].mirrors[{k}].destination"), dest));
            }
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (k, d) in r.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                out.push((format!("spec.tls[{i}].route[{k}].destination"), dest));
            }
        }
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        for (k, d) in r.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                out.push((format!("spec.tcp[{i}].route[{k}].destination"), dest));
            }
        }
    }
    out
}

/// Every gateway reference of a VirtualService with its field path.
fn gateway_refs(vs: &VirtualServiceSpec) -> Vec<(String, &str)> {
    let mut out: Vec<(String, &str)> = vs
        .gateways
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("spec.gateways[{i}]"), g.as_str()))
        .collect();
    for (i, r) in vs.http.iter().enumerate() {
        for (j, m) in r.matches.iter().enumerate() {
            for (k, g) in m.gateways.iter().enumerate() {
                out.push((
                    format!("spec.http[{i}].match[{j}].gateways[{k}]"),
                    g.as_str(),
                ));
            }
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (j, m) in r.matches.iter().enumerate() {
            for (k, g) in m.gateways.iter().enumerate() {
                out.push((
                    format!("spec.tls[{i}].match[{j}].gateways[{k}]"),
                    g.as_str(),
                ));
            }
        }
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        for (j, m) in r.matches.iter().enumerate() {
            for (k, g) in m.gateways.iter().enumerate() {
                out.push((
                    format!("spec.tcp[{i}].match[{j}].gateways[{k}]"),
                    g.as_str(),
                ));
            }
        }
    }
    out
}

pub(crate) fn cross_check(loaded: &Loaded, errors: &mut Vec<Diagnostic>) {
    // Duplicates: the same kind, namespace and name twice.
    for ((kind, ns, name), locations) in first_locations(loaded) {
        if let Some((first_file, first_line)) = locations.first() {
            for (file, line) in locations.iter().skip(1) {
                errors.push(Diagnostic {
                    severity: Severity::Error,
                    file: file.clone(),
                    line: *line,
                    resource: Some(format!("{kind} {ns}/{name}")),
                    field: None,
                    message: format!(
                        "defined more than once: first at {}:{first_line}, again here",
                        first_file.display()
                    ),
                });
            }
        }
    }

    let domain = &loaded.options.cluster_domain;
    // Built once rather than scanned per reference: with thousands of VirtualServices and
    // DestinationRules those scans were quadratic.
    let gateways: HashSet<(&str, &str)> = loaded
        .gateways
        .iter()
        .map(|g| (g.namespace.as_str(), g.name.as_str()))
        .collect();
    // Every DestinationRule by host, whatever its exportTo: a subset defined anywhere counts.
    let mut rules: HostLookup<usize> = HostLookup::default();
    for (i, dr) in loaded.destination_rules.iter().enumerate() {
        if let Some(dr_host) = dr.spec.host.as_deref() {
            rules.insert(HostPattern::parse(&fqdn(dr_host, &dr.namespace, domain)), i);
        }
    }
    for vs in &loaded.virtual_services {
        for (path, reference) in gateway_refs(&vs.spec) {
            if let GatewayRef::Named { namespace, name } = resolve_gateway(reference, &vs.namespace)
            {
                let exists = gateways.contains(&(namespace.as_str(), name.as_str()));
                if !exists {
                    errors.push(loaded.diagnostic(
                        vs,
                        &path,
                        Severity::Error,
                        format!("gateway {namespace}/{name} is not defined (no Gateway resource with that name; use `mesh` for sidecars)"),
                    ));
                }
            }
        }
        for (path, dest) in destinations(&vs.spec) {
            let (Some(host), Some(subset)) = (dest.host.as_deref(), dest.subset.as_deref()) else {
                continue;
            };
            if subset.is_empty() {
                continue;
            }
            let host = fqdn(host, &vs.namespace, domain);
            let defined = rules.matching(&host).any(|(_, &i)| {
                loaded.destination_rules[i]
                    .spec
                    .subsets
                    .iter()
                    .any(|s| s.name.as_deref() == Some(subset))
            });
            if !defined {
                errors.push(loaded.diagnostic(
                    vs,
                    &format!("{path}.subset"),
                    Severity::Error,
                    format!(
                        "subset {subset:?} is not defined by any DestinationRule for host {host}"
                    ),
                ));
            }
        }
    }
}
