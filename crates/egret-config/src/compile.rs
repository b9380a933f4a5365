//! Loaded resources → the [`Snapshot`] for one egress-gateway workload, with Istio's
//! semantics for the gateway role: which Gateways are ours (selector ⊆ our labels), which
//! VirtualService rules apply to them, and which clusters those rules need — only those.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use egret_core::limits::DEFAULT_CONNECT_TIMEOUT;
use egret_core::{
    AbortCode, CertSource, Cluster, Discovery, DnsTarget, DownstreamTls, Fault, FaultAbort,
    FaultDelay, Fraction, HeaderAdd, HeaderMatch, HeaderMutations, HeaderOps, HostPattern,
    HttpRouteTable, Listener, ListenerRoutes, MirrorPolicy, PathRewrite, Redirect, RetryOn,
    RetryPolicy, Rewrite, Route, RouteAction, RouteMatch, RoutePolicy, ServerProtocol, Snapshot,
    SniRoute, SniRouteTable, TcpRouteTable, TlsMode, TlsServer, UpstreamProtocol, UpstreamTls,
    VirtualHost, WeightedCluster, WeightedClusters,
};

use crate::diag::{Diagnostic, Severity};
use crate::host_lookup::HostLookup;
use crate::istio::*;
use crate::load::{Loaded, Resource};
use crate::names::{exported_to, fqdn, labels_match, resolve_gateway, GatewayRef, Protocol};

/// Who this gateway is.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// The gateway's namespace (`istio-system`).
    pub namespace: String,
    /// The gateway workload's labels (`istio=egressgateway`): Gateways whose `selector` is a
    /// subset of these are ours.
    pub labels: BTreeMap<String, String>,
    /// Service port → port we listen on (`80=8080`, `443=8443`); unmapped ports listen as is.
    pub port_map: BTreeMap<u16, u16>,
    /// Kubernetes cluster domain (`cluster.local`).
    pub cluster_domain: String,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            namespace: "istio-system".into(),
            labels: BTreeMap::from([("istio".to_string(), "egressgateway".to_string())]),
            port_map: BTreeMap::from([(80, 8080), (443, 8443)]),
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// The result of [`compile`]: the snapshot, and every warning (the loader's first, then the
/// compiler's), so a caller prints one list.
#[derive(Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    pub warnings: Vec<Diagnostic>,
}

/// Compiles the loaded resources for the gateway described by `opts`. On failure returns the
/// errors (never empty).
pub fn compile(loaded: &Loaded, opts: &CompileOptions) -> Result<Compiled, Vec<Diagnostic>> {
    let mut c = Compiler {
        loaded,
        opts,
        errors: Vec::new(),
        warnings: Vec::new(),
        seen: HashSet::new(),
        needs: BTreeMap::new(),
        service_entries: service_entry_lookup(loaded, opts),
        destination_rules: destination_rule_lookup(loaded, opts),
    };
    let listeners = c.listeners();
    let clusters = c.clusters();
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let snapshot = Snapshot {
        version: Arc::from(loaded.version.as_str()),
        listeners,
        clusters,
    };
    tracing::info!(
        version = %snapshot.version,
        listeners = snapshot.listeners.len(),
        clusters = snapshot.clusters.len(),
        "configuration compiled"
    );
    let mut warnings = loaded.warnings.clone();
    warnings.append(&mut c.warnings);
    Ok(Compiled { snapshot, warnings })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Http,
    /// HTTPS terminated here, then routed as HTTP.
    Https,
    Sni,
    Tcp,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Http => "HTTP",
            Family::Https => "HTTPS (TLS termination)",
            Family::Sni => "TLS passthrough",
            Family::Tcp => "TCP",
        }
    }
}

/// A host of a Gateway server, with the namespace restriction of `ns/host`.
struct ServerHost {
    /// None = VirtualServices of any namespace may bind.
    namespace: Option<String>,
    pattern: HostPattern,
}

struct OurServer<'a> {
    gw: &'a Resource<GatewaySpec>,
    hosts: Vec<ServerHost>,
    /// A terminated HTTPS server's own route table name, Istio's
    /// `https.<port>.<port name>.<gateway>.<namespace>`: each such server routes only its
    /// own hosts' VirtualServices (one RDS per filter chain).
    https_route: Option<String>,
}

impl OurServer<'_> {
    /// The server hosts a VirtualService of namespace `vs_ns` may bind to.
    fn hosts_for(&self, vs_ns: &str) -> impl Iterator<Item = &HostPattern> {
        let vs_ns = vs_ns.to_string();
        self.hosts
            .iter()
            .filter(move |h| h.namespace.as_deref().is_none_or(|n| n == vs_ns))
            .map(|h| &h.pattern)
    }
}

struct ListenerBuild<'a> {
    service_port: u16,
    listen_port: u16,
    family: Family,
    protocol: ServerProtocol,
    servers: Vec<OurServer<'a>>,
    /// Where the first server of this port was defined, for conflict messages.
    first: String,
    /// Route table name of a plain HTTP port: `http.<listen port>`, all servers' hosts.
    route_name: String,
    /// One per terminated-TLS server (Family::Https), in the order of `servers`.
    tls_servers: Vec<TlsServer>,
}

/// A cluster some route of ours needs.
struct Need {
    host: String,
    port: u16,
    subset: String,
    http: bool,
    /// The first reference: VirtualService index and field path of its destination.
    vs: usize,
    path: String,
}

struct Compiler<'a> {
    loaded: &'a Loaded,
    opts: &'a CompileOptions,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    seen: HashSet<String>,
    needs: BTreeMap<String, Need>,
    /// The ServiceEntries and DestinationRules visible to this gateway, by host: indices into
    /// `loaded`, looked up per destination (see [`HostLookup`]).
    service_entries: HostLookup<usize>,
    destination_rules: HostLookup<usize>,
}

/// The hosts of the ServiceEntries exported to the gateway's namespace, as fully qualified
/// patterns → index in `loaded.service_entries`.
fn service_entry_lookup(loaded: &Loaded, opts: &CompileOptions) -> HostLookup<usize> {
    let mut lookup = HostLookup::default();
    for (i, se) in loaded.service_entries.iter().enumerate() {
        if !exported_to(&se.spec.export_to, &se.namespace, &opts.namespace) {
            continue;
        }
        for h in &se.spec.hosts {
            let pattern = HostPattern::parse(&fqdn(h, &se.namespace, &opts.cluster_domain));
            lookup.insert(pattern, i);
        }
    }
    lookup
}

/// The hosts of the DestinationRules that apply to this gateway (exported to its namespace,
/// and a `workloadSelector` only in its own namespace and matching its labels) → index in
/// `loaded.destination_rules`.
fn destination_rule_lookup(loaded: &Loaded, opts: &CompileOptions) -> HostLookup<usize> {
    let mut lookup = HostLookup::default();
    for (i, dr) in loaded.destination_rules.iter().enumerate() {
        if !exported_to(&dr.spec.export_to, &dr.namespace, &opts.namespace) {
            continue;
        }
        if let Some(ws) = &dr.spec.workload_selector {
            if dr.namespace != opts.namespace || !labels_match(&ws.labels, &opts.labels) {
                continue;
            }
        }
        let Some(h) = dr.spec.host.as_deref() else {
            continue;
        };
        let pattern = HostPattern::parse(&fqdn(h, &dr.namespace, &opts.cluster_domain));
        lookup.insert(pattern, i);
    }
    lookup
}

/// The conditions every kind of match shares.
trait CommonMatch {
    fn gateways(&self) -> &[String];
    fn port(&self) -> Option<u32>;
    fn source_labels(&self) -> &Labels;
    fn source_namespace(&self) -> Option<&str>;
}

macro_rules! common_match {
    ($($t:ty),*) => {$(
        impl CommonMatch for $t {
            fn gateways(&self) -> &[String] { &self.gateways }
            fn port(&self) -> Option<u32> { self.port }
            fn source_labels(&self) -> &Labels { &self.source_labels }
            fn source_namespace(&self) -> Option<&str> { self.source_namespace.as_deref() }
        }
    )*};
}
common_match!(HttpMatchRequest, TlsMatchAttributes, L4MatchAttributes);

impl<'a> Compiler<'a> {
    fn warn(&mut self, d: Diagnostic) {
        if self.seen.insert(d.to_string()) {
            self.warnings.push(d);
        }
    }

    fn warn_at<T>(&mut self, res: &Resource<T>, field: &str, message: impl Into<String>) {
        let d = self
            .loaded
            .diagnostic(res, field, Severity::Warning, message);
        self.warn(d);
    }

    fn error_at<T>(&mut self, res: &Resource<T>, field: &str, message: impl Into<String>) {
        let d = self.loaded.diagnostic(res, field, Severity::Error, message);
        if self.seen.insert(d.to_string()) {
            self.errors.push(d);
        }
    }

    fn is_our_gateway(&self, gw: &Resource<GatewaySpec>) -> bool {
        labels_match(&gw.spec.selector, &self.opts.labels)
    }

    /// Is `reference` (as written in a VirtualService of namespace `vs_ns`) this Gateway?
    fn names_gateway(reference: &str, vs_ns: &str, gw: &Resource<GatewaySpec>) -> bool {
        match resolve_gateway(reference, vs_ns) {
            GatewayRef::Mesh => false,
            GatewayRef::Named { namespace, name } => namespace == gw.namespace && name == gw.name,
        }
    }

    fn vs_binds(vs: &Resource<VirtualServiceSpec>, gw: &Resource<GatewaySpec>) -> bool {
        // No `gateways` means `mesh` only.
        vs.spec
            .gateways
            .iter()
            .any(|g| Self::names_gateway(g, &vs.namespace, gw))
    }

    /// The matches of a rule that apply to gateway `gw` on service port `port`; None when the
    /// rule does not apply at all. A rule without matches applies (to everything).
    fn applicable<'m, M: CommonMatch>(
        &self,
        matches: &'m [M],
        vs: &Resource<VirtualServiceSpec>,
        gw: &Resource<GatewaySpec>,
        port: u16,
    ) -> Option<Vec<&'m M>> {
        if matches.is_empty() {
            return Some(Vec::new());
        }
        let kept: Vec<&M> = matches
            .iter()
            .filter(|m| {
                (m.gateways().is_empty() || m.gateways().iter().any(|g| Self::names_gateway(g, &vs.namespace, gw)))
                    && m.port().is_none_or(|p| p == u32::from(port))
                    // For a gateway, sourceLabels and sourceNamespace select the gateway
                    // workload itself.
                    && labels_match(m.source_labels(), &self.opts.labels)
                    && m.source_namespace().is_none_or(|ns| ns == self.opts.namespace)
            })
            .collect();
        (!kept.is_empty()).then_some(kept)
    }

    fn vs_hosts(&self, vs: &Resource<VirtualServiceSpec>) -> Vec<HostPattern> {
        vs.spec
            .hosts
            .iter()
            .map(|h| HostPattern::parse(&fqdn(h, &vs.namespace, &self.opts.cluster_domain)))
            .collect()
    }

    fn visible_vs(&self) -> impl Iterator<Item = (usize, &'a Resource<VirtualServiceSpec>)> {
        let ns = self.opts.namespace.clone();
        self.loaded
            .virtual_services
            .iter()
            .enumerate()
            .filter(move |(_, vs)| exported_to(&vs.spec.export_to, &vs.namespace, &ns))
    }

    // -----------------------------------------------------------------------------------------
    // Listeners

    fn listeners(&mut self) -> Vec<Listener> {
        let mut builds: BTreeMap<u16, ListenerBuild<'a>> = BTreeMap::new();
        let ours: Vec<&'a Resource<GatewaySpec>> = self
            .loaded
            .gateways
            .iter()
            .filter(|g| self.is_our_gateway(g))
            .collect();
        if ours.is_empty() {
            tracing::info!(labels = ?self.opts.labels, "no Gateway selects this workload's labels");
        }
        for gw in &ours {
            for (i, server) in gw.spec.servers.iter().enumerate() {
                self.add_server(&mut builds, gw, i, server);
            }
        }
        // VirtualServices that name one of our Gateways but bind to none of its servers. A
        // Gateway whose servers were all skipped was warned about already.
        let active: Vec<&'a Resource<GatewaySpec>> = ours
            .iter()
            .copied()
            .filter(|gw| {
                builds
                    .values()
                    .flat_map(|b| b.servers.iter())
                    .any(|s| std::ptr::eq(s.gw, *gw))
            })
            .collect();
        for (_, vs) in self.visible_vs() {
            for gw in &active {
                if !Self::vs_binds(vs, gw) {
                    continue;
                }
                let hosts = self.vs_hosts(vs);
                let binds = builds
                    .values()
                    .flat_map(|b| b.servers.iter())
                    .filter(|s| std::ptr::eq(s.gw, *gw))
                    .any(|s| {
                        s.hosts_for(&vs.namespace)
                            .any(|sh| hosts.iter().any(|h| h.intersect(sh).is_some()))
                    });
                if !binds {
                    self.warn_at(
                        vs,
                        "spec.hosts",
                        format!(
                            "no host matches a host of Gateway {}/{} (in namespace {}): this VirtualService is not used by the gateway",
                            gw.namespace, gw.name, vs.namespace
                        ),
                    );
                }
            }
        }

        let mut listeners = Vec::new();
        for (_, mut b) in builds {
            let tls_servers = std::mem::take(&mut b.tls_servers);
            let routes = match b.family {
                Family::Http => ListenerRoutes::Http(Arc::new(self.http_routes(
                    &b,
                    &b.servers,
                    b.route_name.clone(),
                ))),
                Family::Https => ListenerRoutes::Https(
                    b.servers
                        .iter()
                        .map(|server| {
                            let name = server.https_route.clone().unwrap_or_default();
                            Arc::new(self.http_routes(&b, std::slice::from_ref(server), name))
                        })
                        .collect(),
                ),
                Family::Sni => ListenerRoutes::Sni(Arc::new(self.sni_routes(&b))),
                Family::Tcp => ListenerRoutes::Tcp(Arc::new(self.tcp_routes(&b))),
            };
            listeners.push(Listener {
                name: format!("0.0.0.0_{}", b.listen_port),
                service_port: b.service_port,
                listen_port: b.listen_port,
                protocol: b.protocol,
                routes,
                tls_servers,
            });
        }
        listeners
    }

    fn add_server(
        &mut self,
        builds: &mut BTreeMap<u16, ListenerBuild<'a>>,
        gw: &'a Resource<GatewaySpec>,
        i: usize,
        server: &'a Server,
    ) {
        let path = format!("spec.servers[{i}]");
        let Some(port) = &server.port else { return };
        let Some(number) = port.number.and_then(|n| u16::try_from(n).ok()) else {
            return;
        };
        let Some(protocol) = port.protocol.as_deref().and_then(Protocol::parse) else {
            return;
        };
        let tls_mode = server.tls.as_ref().and_then(|t| t.mode);
        let (family, server_protocol) = match protocol {
            Protocol::Http => (Family::Http, ServerProtocol::Http),
            Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb => {
                (Family::Http, ServerProtocol::Http2)
            }
            Protocol::Https | Protocol::Tls => match tls_mode {
                Some(ServerTlsMode::Passthrough) => (
                    Family::Sni,
                    if protocol == Protocol::Https {
                        ServerProtocol::Https
                    } else {
                        ServerProtocol::Tls
                    },
                ),
                Some(
                    ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::IstioMutual,
                ) if protocol == Protocol::Https => (Family::Https, ServerProtocol::Https),
                Some(mode) => {
                    let why = match mode {
                        ServerTlsMode::AutoPassthrough | ServerTlsMode::OptionalMutual => {
                            format!("tls.mode {} is not supported yet", screaming(&format!("{mode:?}")))
                        }
                        _ => format!(
                            "TLS termination (mode {}) on a protocol TLS server (TCP inside) is not supported yet; only protocol HTTPS servers terminate TLS",
                            screaming(&format!("{mode:?}"))
                        ),
                    };
                    self.warn_at(
                        gw,
                        &format!("{path}.tls.mode"),
                        format!("{why}: this server is skipped, nothing listens for it on port {number}"),
                    );
                    return;
                }
                // Reported by the loader.
                None => return,
            },
            Protocol::Tcp | Protocol::Mongo | Protocol::Mysql | Protocol::Redis => {
                (Family::Tcp, ServerProtocol::Tcp)
            }
        };
        if matches!(family, Family::Http | Family::Tcp) {
            if let Some(mode) = tls_mode {
                self.warn_at(
                    gw,
                    &format!("{path}.tls"),
                    format!(
                        "TLS settings (mode {}) on a plain {} server are ignored",
                        screaming(&format!("{mode:?}")),
                        family.name()
                    ),
                );
            }
        }
        let listen_port = self.opts.port_map.get(&number).copied().unwrap_or(number);
        let hosts = server
            .hosts
            .iter()
            .map(|h| match h.split_once('/') {
                Some((ns, host)) => ServerHost {
                    namespace: match ns {
                        "*" => None,
                        "." => Some(gw.namespace.clone()),
                        ns => Some(ns.to_string()),
                    },
                    pattern: HostPattern::parse(host),
                },
                None => ServerHost {
                    namespace: None,
                    pattern: HostPattern::parse(h),
                },
            })
            .collect();
        let here = format!("{} {}/{} {path}", gw.kind, gw.namespace, gw.name);
        let tls_server = if family == Family::Https {
            Self::tls_server(gw, i, server)
        } else {
            None
        };
        let https_route = (family == Family::Https).then(|| {
            format!(
                "https.{number}.{}.{}.{}",
                // Istio requires the name; without one its route name has an empty part.
                port.name.as_deref().unwrap_or_default(),
                gw.name,
                gw.namespace
            )
        });
        match builds.get_mut(&listen_port) {
            Some(b) => {
                if b.family != family {
                    self.error_at(
                        gw,
                        &format!("{path}.port"),
                        format!(
                            "port {number} is already used by a {} server ({}); servers on one port must use the same protocol",
                            b.family.name(),
                            b.first
                        ),
                    );
                    return;
                }
                if b.service_port != number {
                    self.error_at(
                        gw,
                        &format!("{path}.port.number"),
                        format!(
                            "port {number} maps to listen port {listen_port}, which port {} ({}) also uses",
                            b.service_port, b.first
                        ),
                    );
                    return;
                }
                if let Some(ts) = tls_server {
                    // Istio skips a TLS server whose hosts repeat another's on the same port:
                    // the SNI would be ambiguous.
                    let dup: Vec<String> = ts
                        .hosts
                        .iter()
                        .filter(|h| b.tls_servers.iter().any(|o| o.hosts.contains(h)))
                        .map(|h| h.to_string())
                        .collect();
                    if !dup.is_empty() {
                        self.warn_at(
                            gw,
                            &format!("{path}.hosts"),
                            format!(
                                "host {} is already served with TLS on port {number} ({}): this server is skipped",
                                dup.join(", "),
                                b.first
                            ),
                        );
                        return;
                    }
                    // Istio names each HTTPS server's routes after its port name: a second
                    // server of the Gateway with the same port name is skipped, as Istio skips
                    // it ("non unique port name for HTTPS port").
                    if https_route.is_some()
                        && b.servers.iter().any(|o| o.https_route == https_route)
                    {
                        self.warn_at(
                            gw,
                            &format!("{path}.port.name"),
                            format!(
                                "port name {:?} is already used by another HTTPS server of this Gateway on port {number}: this server is skipped (Istio needs a unique port name per HTTPS server)",
                                port.name.as_deref().unwrap_or_default()
                            ),
                        );
                        return;
                    }
                    b.tls_servers.push(ts);
                }
                b.servers.push(OurServer {
                    gw,
                    hosts,
                    https_route,
                });
            }
            None => {
                let route_name = format!("http.{listen_port}");
                builds.insert(
                    listen_port,
                    ListenerBuild {
                        service_port: number,
                        listen_port,
                        family,
                        protocol: server_protocol,
                        servers: vec![OurServer {
                            gw,
                            hosts,
                            https_route,
                        }],
                        first: here,
                        route_name,
                        tls_servers: tls_server.into_iter().collect(),
                    },
                );
            }
        }
    }

    /// The TLS termination of an HTTPS server (mode SIMPLE, MUTUAL or ISTIO_MUTUAL).
    fn tls_server(gw: &Resource<GatewaySpec>, i: usize, server: &Server) -> Option<TlsServer> {
        let tls = server.tls.as_ref()?;
        let mode = match tls.mode? {
            ServerTlsMode::Simple => TlsMode::Simple,
            ServerTlsMode::Mutual => TlsMode::Mutual,
            ServerTlsMode::IstioMutual => TlsMode::IstioMutual,
            _ => return None,
        };
        let source = if mode == TlsMode::IstioMutual {
            // The mesh certificates; the validator refused anything else here.
            CertSource::default()
        } else {
            CertSource {
                credential_name: non_empty(&tls.credential_name),
                certificate: non_empty(&tls.server_certificate).map(PathBuf::from),
                private_key: non_empty(&tls.private_key).map(PathBuf::from),
                ca_certificates: non_empty(&tls.ca_certificates).map(PathBuf::from),
            }
        };
        let mut hosts: Vec<HostPattern> = Vec::new();
        for h in &server.hosts {
            let host = h.rsplit_once('/').map_or(h.as_str(), |(_, host)| host);
            let p = HostPattern::parse(host);
            if !hosts.contains(&p) {
                hosts.push(p);
            }
        }
        Some(TlsServer {
            hosts,
            tls: DownstreamTls {
                mode,
                source,
                subject_alt_names: tls.subject_alt_names.clone(),
                origin: format!("{} servers[{i}]", gw.id()),
            },
        })
    }

    // -----------------------------------------------------------------------------------------
    // HTTP

    /// The route table of `servers` (all of a plain HTTP port's; one terminated HTTPS server).
    fn http_routes(
        &mut self,
        b: &ListenerBuild<'a>,
        servers: &[OurServer<'a>],
        name: String,
    ) -> HttpRouteTable {
        let mut vhosts: Vec<VirtualHost> = Vec::new();
        // Domain → its index in `vhosts` (a scan of `vhosts` per domain was quadratic: 10,000
        // domains took seconds).
        let mut vhost_of: HashMap<HostPattern, usize> = HashMap::new();
        // Per virtual host, which of its routes are catch-alls.
        let mut catch_all: Vec<Vec<bool>> = Vec::new();
        for (vs_idx, vs) in self.visible_vs() {
            // Most VirtualServices (the mesh's) bind no server here: skipped before their
            // hosts are parsed, which a port with many HTTPS servers would do per server.
            if !servers.iter().any(|s| Self::vs_binds(vs, s.gw)) {
                continue;
            }
            let vs_hosts = self.vs_hosts(vs);
            // Domains this VirtualService already contributed on this port (via another
            // server), so its rules are not added twice.
            let mut done: Vec<HostPattern> = Vec::new();
            for server in servers {
                if !Self::vs_binds(vs, server.gw) {
                    continue;
                }
                let mut domains: Vec<HostPattern> = Vec::new();
                for h in &vs_hosts {
                    for sh in server.hosts_for(&vs.namespace) {
                        if let Some(d) = h.intersect(sh) {
                            if !domains.contains(&d) && !done.contains(&d) {
                                domains.push(d);
                            }
                        }
                    }
                }
                if domains.is_empty() {
                    continue;
                }
                let routes = self.http_rules(
                    vs_idx,
                    vs,
                    server.gw,
                    b.service_port,
                    b.family == Family::Https,
                );
                for d in domains {
                    let i = *vhost_of.entry(d.clone()).or_insert_with(|| {
                        vhosts.push(VirtualHost {
                            name: format!("{d}:{}", b.service_port),
                            domains: vec![d.clone()],
                            routes: Vec::new(),
                        });
                        catch_all.push(Vec::new());
                        vhosts.len() - 1
                    });
                    vhosts[i]
                        .routes
                        .extend(routes.iter().map(|(r, _)| clone_route(r)));
                    catch_all[i].extend(routes.iter().map(|&(_, c)| c));
                    done.push(d);
                }
            }
        }
        // Several VirtualServices for one host are merged in order, and then, as Istio's
        // `SortVHostRoutes` does, the catch-all routes move to the end (keeping their order),
        // so one VirtualService's catch-all does not shadow another's specific routes. Istio
        // warns about none of this.
        for (vh, flags) in vhosts.iter_mut().zip(&catch_all) {
            if flags.iter().any(|&c| c) {
                let mut routes: Vec<(Route, bool)> = std::mem::take(&mut vh.routes)
                    .into_iter()
                    .zip(flags.iter().copied())
                    .collect();
                routes.sort_by_key(|&(_, c)| c);
                vh.routes = routes.into_iter().map(|(r, _)| r).collect();
            }
        }
        if vhosts.is_empty() {
            // Istio's answer for a server without routes.
            vhosts.push(VirtualHost {
                name: format!("blackhole:{}", b.service_port),
                domains: vec![HostPattern::Any],
                routes: vec![Route {
                    name: None,
                    matches: Vec::new(),
                    action: RouteAction::Direct {
                        status: 404,
                        body: None,
                    },
                    timeout: None,
                    policy: RoutePolicy::default(),
                }],
            });
        }
        HttpRouteTable::new(name, vhosts)
    }

    fn http_rules(
        &mut self,
        vs_idx: usize,
        vs: &'a Resource<VirtualServiceSpec>,
        gw: &Resource<GatewaySpec>,
        port: u16,
        tls: bool,
    ) -> Vec<(Route, bool)> {
        let mut routes = Vec::new();
        for (i, rule) in vs.spec.http.iter().enumerate() {
            let Some(matches) = self.applicable(&rule.matches, vs, gw, port) else {
                continue;
            };
            let path = format!("spec.http[{i}]");
            // Istio translates each match into a route of its own and stops at the first
            // catch-all one (a rule without `match`, or a match of every request): the rest of
            // this VirtualService could never match.
            let catch_all_at = if matches.is_empty() {
                Some(0)
            } else {
                matches.iter().position(|m| is_catch_all_match(m))
            };
            let mut core_matches = Vec::with_capacity(matches.len());
            for m in matches
                .iter()
                .take(catch_all_at.map_or(usize::MAX, |p| p + 1))
            {
                core_matches.push(self.route_match(vs, m, &path));
            }
            let action = if !rule.route.is_empty() {
                RouteAction::Forward(self.http_weighted(vs_idx, vs, rule, &path, port))
            } else if let Some(r) = &rule.redirect {
                RouteAction::Redirect(redirect(r, port, tls))
            } else if let Some(dr) = &rule.direct_response {
                RouteAction::Direct {
                    status: dr.status.and_then(|s| u16::try_from(s).ok()).unwrap_or(503),
                    body: dr.body.as_ref().and_then(|b| b.string.clone()),
                }
            } else {
                // delegate: not implemented; refuse rather than fall through to later rules
                // (the loader warned).
                RouteAction::Direct {
                    status: 503,
                    body: None,
                }
            };
            let route = Route {
                name: rule.name.as_deref().map(Arc::from),
                matches: core_matches,
                action,
                timeout: rule
                    .timeout
                    .as_ref()
                    .map(|t| t.value)
                    .filter(|d| !d.is_zero()),
                policy: self.route_policy(vs_idx, vs, rule, &path, port),
            };
            match catch_all_at {
                None => routes.push((route, false)),
                Some(_) if route.matches.len() <= 1 => {
                    routes.push((route, true));
                    break;
                }
                Some(_) => {
                    // The matches before the catch-all one stay specific; the catch-all one
                    // becomes its own route (sorted to the end of the virtual host).
                    let mut last = clone_route(&route);
                    let mut specific = route;
                    last.matches = specific.matches.split_off(specific.matches.len() - 1);
                    routes.push((specific, false));
                    routes.push((last, true));
                    break;
                }
            }
        }
        routes
    }

    /// The weighted clusters of an HTTP rule; with several destinations each keeps its own
    /// `headers` (with one, Istio merges them into the route's: see [`Self::route_policy`]).
    fn http_weighted(
        &mut self,
        vs_idx: usize,
        vs: &'a Resource<VirtualServiceSpec>,
        rule: &HttpRoute,
        path: &str,
        port: u16,
    ) -> WeightedClusters {
        let single = rule.route.len() == 1;
        let mut clusters = Vec::new();
        for (k, d) in rule.route.iter().enumerate() {
            let Some(dest) = &d.destination else { continue };
            let dpath = format!("{path}.route[{k}].destination");
            let Some(name) = self.cluster_name(vs_idx, vs, dest, &dpath, port, true) else {
                continue;
            };
            let weight = if single {
                100
            } else {
                d.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(0)
            };
            let headers = match (&d.headers, single) {
                (Some(h), false) => Some(Arc::new(header_ops(h))),
                _ => None,
            };
            clusters.push(WeightedCluster {
                cluster: name,
                weight,
                headers,
            });
        }
        let total_weight = clusters.iter().map(|c| c.weight).sum();
        WeightedClusters {
            clusters,
            total_weight,
        }
    }

    /// Retries, rewrite, headers, fault and mirrors of one rule, as Istio translates them
    /// (`pilot/pkg/networking/core/route`).
    fn route_policy(
        &mut self,
        vs_idx: usize,
        vs: &'a Resource<VirtualServiceSpec>,
        rule: &HttpRoute,
        path: &str,
        port: u16,
    ) -> RoutePolicy {
        let mut headers = rule.headers.as_ref().map(header_ops).unwrap_or_default();
        // One destination: its header operations follow the rule's (so its `set` wins) and
        // its authority applies unless the rule rewrites the authority.
        if let [only] = rule.route.as_slice() {
            if let Some(h) = &only.headers {
                let d = header_ops(h);
                headers.request.add.extend(d.request.add);
                headers.request.remove.extend(d.request.remove);
                headers.response.add.extend(d.response.add);
                headers.response.remove.extend(d.response.remove);
                if headers.authority.is_none() {
                    headers.authority = d.authority;
                }
            }
        }
        let mut rewrite = None;
        if let Some(rw) = &rule.rewrite {
            let path_rewrite = if let Some(rr) = &rw.uri_regex_rewrite {
                match (&rr.matches, &rr.rewrite) {
                    (Some(m), Some(sub)) => match regex::Regex::new(&m.source) {
                        Ok(pattern) => Some(PathRewrite::Regex {
                            pattern,
                            substitution: envoy_substitution(sub),
                        }),
                        // Compiled anchored when read, so this cannot fail; never panic.
                        Err(_) => None,
                    },
                    _ => None,
                }
            } else {
                non_empty(&rw.uri).map(PathRewrite::Prefix)
            };
            rewrite = Some(Rewrite {
                path: path_rewrite,
                authority: non_empty(&rw.authority),
            });
        }
        if let Some(a) = headers.authority.clone() {
            let rw = rewrite.get_or_insert_with(Rewrite::default);
            if rw.authority.is_none() {
                rw.authority = Some(a);
            }
        }
        let retry = retry_policy(rule.retries.as_ref());
        let fault = rule.fault.as_ref().and_then(fault);
        let mut mirrors = Vec::new();
        if let Some(m) = &rule.mirror {
            let fraction = match (&rule.mirror_percentage, rule.mirror_percent) {
                (Some(p), _) => Fraction::from_percent(p.value.unwrap_or(0.0)),
                (None, Some(p)) => Fraction::from_percent(f64::from(p)),
                (None, None) => Fraction::ALL,
            };
            let mpath = format!("{path}.mirror");
            if fraction.per_million > 0 {
                if let Some(cluster) = self.cluster_name(vs_idx, vs, m, &mpath, port, true) {
                    mirrors.push(MirrorPolicy { cluster, fraction });
                }
            }
        }
        for (k, m) in rule.mirrors.iter().enumerate() {
            let Some(dest) = &m.destination else { continue };
            let fraction = m.percentage.as_ref().map_or(Fraction::ALL, |p| {
                Fraction::from_percent(p.value.unwrap_or(0.0))
            });
            let mpath = format!("{path}.mirrors[{k}].destination");
            if fraction.per_million > 0 {
                if let Some(cluster) = self.cluster_name(vs_idx, vs, dest, &mpath, port, true) {
                    mirrors.push(MirrorPolicy { cluster, fraction });
                }
            }
        }
        RoutePolicy {
            retry,
            headers,
            rewrite,
            fault,
            mirrors,
        }
    }

    fn route_match(
        &mut self,
        vs: &Resource<VirtualServiceSpec>,
        m: &HttpMatchRequest,
        path: &str,
    ) -> RouteMatch {
        let mut headers = Vec::new();
        for (map, invert) in [(&m.headers, false), (&m.without_headers, true)] {
            for (name, sm) in map {
                match http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                    Ok(hn) => headers.push(HeaderMatch {
                        name: hn,
                        value: core_string_match(sm),
                        invert,
                    }),
                    Err(_) => self.error_at(vs, path, format!("invalid header name {name:?}")),
                }
            }
        }
        RouteMatch {
            uri: m.uri.as_ref().and_then(core_string_match),
            method: m.method.as_ref().and_then(core_string_match),
            authority: m.authority.as_ref().and_then(core_string_match),
            scheme: m.scheme.as_ref().and_then(core_string_match),
            headers,
            query_params: m
                .query_params
                .iter()
                .map(|(k, sm)| {
                    (
                        k.clone(),
                        core_string_match(sm)
                            .unwrap_or(egret_core::StringMatch::Prefix(String::new())),
                    )
                })
                .collect(),
            ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
        }
    }

    /// Destinations → weighted clusters; registers the clusters needed.
    fn weighted(
        &mut self,
        vs_idx: usize,
        vs: &'a Resource<VirtualServiceSpec>,
        dests: &[(Option<&Destination>, Option<i64>, String)],
        service_port: u16,
        http: bool,
    ) -> WeightedClusters {
        let single = dests.len() == 1;
        let mut clusters = Vec::new();
        for (dest, weight, path) in dests {
            let Some(dest) = dest else { continue };
            let Some(name) = self.cluster_name(vs_idx, vs, dest, path, service_port, http) else {
                continue;
            };
            let weight = if single {
                100
            } else {
                weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(0)
            };
            clusters.push(WeightedCluster {
                cluster: name,
                weight,
                headers: None,
            });
        }
        let total_weight = clusters.iter().map(|c| c.weight).sum();
        WeightedClusters {
            clusters,
            total_weight,
        }
    }

    /// `outbound|<port>|<subset>|<host>` for a destination, registering it as needed.
    fn cluster_name(
        &mut self,
        vs_idx: usize,
        vs: &'a Resource<VirtualServiceSpec>,
        dest: &Destination,
        path: &str,
        service_port: u16,
        http: bool,
    ) -> Option<Arc<str>> {
        let host = fqdn(
            dest.host.as_deref()?,
            &vs.namespace,
            &self.opts.cluster_domain,
        );
        let subset = dest.subset.clone().unwrap_or_default();
        let port = match dest.port.as_ref().and_then(|p| p.number) {
            Some(n) => u16::try_from(n).ok()?,
            None => match self.find_service_entry(&host, &vs.namespace) {
                Some((se, _)) => match se.spec.ports.as_slice() {
                    [only] => only.number.and_then(|n| u16::try_from(n).ok())?,
                    [] => service_port,
                    _ => {
                        self.error_at(
                            vs,
                            &format!("{path}.port"),
                            format!(
                                "destination port is required: ServiceEntry {}/{} defines several ports for {host}",
                                se.namespace, se.name
                            ),
                        );
                        return None;
                    }
                },
                None if self.is_kubernetes_service(&host) => {
                    self.error_at(
                        vs,
                        &format!("{path}.port"),
                        format!("destination port is required for Kubernetes service {host}"),
                    );
                    return None;
                }
                // Not in the registry: warned about when clusters are built.
                None => service_port,
            },
        };
        let name = format!("outbound|{port}|{subset}|{host}");
        let need = self.needs.entry(name.clone()).or_insert_with(|| Need {
            host,
            port,
            subset,
            http: false,
            vs: vs_idx,
            path: path.to_string(),
        });
        need.http |= http;
        Some(Arc::from(name))
    }

    fn is_kubernetes_service(&self, host: &str) -> bool {
        host.ends_with(&format!(".svc.{}", self.opts.cluster_domain))
    }

    // -----------------------------------------------------------------------------------------
    // TLS passthrough and TCP

    fn sni_routes(&mut self, b: &ListenerBuild<'a>) -> SniRouteTable {
        let mut routes = Vec::new();
        for (vs_idx, vs) in self.visible_vs() {
            let vs_hosts = self.vs_hosts(vs);
            for server in &b.servers {
                if !Self::vs_binds(vs, server.gw) {
                    continue;
                }
                let server_hosts: Vec<&HostPattern> = server.hosts_for(&vs.namespace).collect();
                if !vs_hosts
                    .iter()
                    .any(|h| server_hosts.iter().any(|sh| h.intersect(sh).is_some()))
                {
                    continue;
                }
                for (i, rule) in vs.spec.tls.iter().enumerate() {
                    let Some(matches) =
                        self.applicable(&rule.matches, vs, server.gw, b.service_port)
                    else {
                        continue;
                    };
                    let mut sni_hosts: Vec<HostPattern> = Vec::new();
                    for m in matches {
                        for sni in &m.sni_hosts {
                            let sni = HostPattern::parse(sni);
                            for sh in &server_hosts {
                                if let Some(x) = sni.intersect(sh) {
                                    if !sni_hosts.contains(&x) {
                                        sni_hosts.push(x);
                                    }
                                }
                            }
                        }
                    }
                    if sni_hosts.is_empty() {
                        continue;
                    }
                    let path = format!("spec.tls[{i}]");
                    let dests: Vec<(Option<&Destination>, Option<i64>, String)> = rule
                        .route
                        .iter()
                        .enumerate()
                        .map(|(k, d)| {
                            (
                                d.destination.as_ref(),
                                d.weight,
                                format!("{path}.route[{k}].destination"),
                            )
                        })
                        .collect();
                    let clusters = self.weighted(vs_idx, vs, &dests, b.service_port, false);
                    routes.push(SniRoute {
                        sni_hosts,
                        clusters,
                    });
                }
            }
        }
        SniRouteTable::new(routes)
    }

    fn tcp_routes(&mut self, b: &ListenerBuild<'a>) -> TcpRouteTable {
        for (vs_idx, vs) in self.visible_vs() {
            let vs_hosts = self.vs_hosts(vs);
            for server in &b.servers {
                if !Self::vs_binds(vs, server.gw) {
                    continue;
                }
                if !vs_hosts.iter().any(|h| {
                    server
                        .hosts_for(&vs.namespace)
                        .any(|sh| h.intersect(sh).is_some())
                }) {
                    continue;
                }
                for (i, rule) in vs.spec.tcp.iter().enumerate() {
                    if self
                        .applicable(&rule.matches, vs, server.gw, b.service_port)
                        .is_none()
                    {
                        continue;
                    }
                    let path = format!("spec.tcp[{i}]");
                    let dests: Vec<(Option<&Destination>, Option<i64>, String)> = rule
                        .route
                        .iter()
                        .enumerate()
                        .map(|(k, d)| {
                            (
                                d.destination.as_ref(),
                                d.weight,
                                format!("{path}.route[{k}].destination"),
                            )
                        })
                        .collect();
                    let clusters = self.weighted(vs_idx, vs, &dests, b.service_port, false);
                    return TcpRouteTable {
                        clusters: Some(clusters),
                    };
                }
            }
        }
        TcpRouteTable { clusters: None }
    }

    // -----------------------------------------------------------------------------------------
    // Registry and clusters

    /// The ServiceEntry for `host`: exact hosts first, then the longest wildcard; among equals
    /// the one in `prefer_ns`, then the gateway's namespace, then the first loaded. Returns
    /// whether it matched through a wildcard.
    fn find_service_entry(
        &self,
        host: &str,
        prefer_ns: &str,
    ) -> Option<(&'a Resource<ServiceEntrySpec>, bool)> {
        let all = &self.loaded.service_entries;
        let (spec, i) = self.best(
            &self.service_entries,
            host,
            |i| all[i].namespace.as_str(),
            prefer_ns,
        )?;
        Some((&all[i], spec != usize::MAX))
    }

    /// The DestinationRule for `host` seen from this gateway, with the same precedence.
    fn find_destination_rule(
        &self,
        host: &str,
        prefer_ns: &str,
    ) -> Option<&'a Resource<DestinationRuleSpec>> {
        let all = &self.loaded.destination_rules;
        let (_, i) = self.best(
            &self.destination_rules,
            host,
            |i| all[i].namespace.as_str(),
            prefer_ns,
        )?;
        Some(&all[i])
    }

    /// Among the resources of `lookup` matching `host`: the most specific pattern, then the
    /// namespace `prefer_ns`, then the gateway's, then the first loaded. Returns the winner's
    /// specificity and index.
    fn best<'n>(
        &self,
        lookup: &HostLookup<usize>,
        host: &str,
        namespace: impl Fn(usize) -> &'n str,
        prefer_ns: &str,
    ) -> Option<(usize, usize)> {
        lookup
            .matching(host)
            .map(|(spec, &i)| {
                let rank = ns_rank(namespace(i), prefer_ns, &self.opts.namespace);
                (Reverse(spec), rank, i)
            })
            .min()
            .map(|(Reverse(spec), _, i)| (spec, i))
    }

    fn clusters(&mut self) -> BTreeMap<Arc<str>, Arc<Cluster>> {
        let needs = std::mem::take(&mut self.needs);
        let mut out = BTreeMap::new();
        for (name, need) in needs {
            if let Some(c) = self.build_cluster(&name, &need) {
                out.insert(Arc::clone(&c.name), Arc::new(c));
            }
        }
        out
    }

    fn build_cluster(&mut self, name: &str, need: &Need) -> Option<Cluster> {
        let vs = self.loaded.virtual_services.get(need.vs)?;
        let host = need.host.as_str();
        let refused = "requests will be refused with 503 NC";

        // Traffic policy first: an unknown subset means no cluster.
        let dr = self.find_destination_rule(host, &vs.namespace);
        let mut policy = EffectivePolicy::default();
        if let Some(dr) = dr {
            let subset = if need.subset.is_empty() {
                None
            } else {
                match dr
                    .spec
                    .subsets
                    .iter()
                    .enumerate()
                    .find(|(_, s)| s.name.as_deref() == Some(need.subset.as_str()))
                {
                    Some(found) => Some(found),
                    None => {
                        self.warn_at(
                            vs,
                            &format!("{}.subset", need.path),
                            format!(
                                "subset {:?} is not defined by DestinationRule {}/{} (the one that applies to {host}): {refused}",
                                need.subset, dr.namespace, dr.name
                            ),
                        );
                        return None;
                    }
                }
            };
            policy = EffectivePolicy::merge(dr, subset, need.port);
        } else if !need.subset.is_empty() {
            self.warn_at(
                vs,
                &format!("{}.subset", need.path),
                format!("no DestinationRule that applies to this gateway defines subset {:?} for {host}: {refused}", need.subset),
            );
            return None;
        }

        let subset_labels: Option<&Labels> = dr.and_then(|dr| {
            dr.spec
                .subsets
                .iter()
                .find(|s| s.name.as_deref() == Some(need.subset.as_str()))
                .map(|s| &s.labels)
        });

        let mut se_protocol = None;
        let discovery = if let Some((se, via_wildcard)) =
            self.find_service_entry(host, &vs.namespace)
        {
            let Some(sp) = se
                .spec
                .ports
                .iter()
                .find(|p| p.number == Some(u32::from(need.port)))
            else {
                self.warn_at(
                    vs,
                    &need.path,
                    format!(
                        "ServiceEntry {}/{} has no port {} for {host}: {refused}",
                        se.namespace, se.name, need.port
                    ),
                );
                return None;
            };
            se_protocol = sp.protocol.as_deref().and_then(Protocol::parse);
            let endpoints: Vec<&WorkloadEntry> = se
                .spec
                .endpoints
                .iter()
                .filter(|e| subset_labels.is_none_or(|l| labels_match(l, &e.labels)))
                .collect();
            if subset_labels.is_some_and(|l| !l.is_empty()) && se.spec.endpoints.is_empty() {
                self.warn_at(
                    vs,
                    &format!("{}.subset", need.path),
                    format!("subset {:?} selects endpoints by labels, but ServiceEntry {}/{} lists no endpoints: all addresses of {host} are used", need.subset, se.namespace, se.name),
                );
            }
            let target_port = |e: &WorkloadEntry| -> u16 {
                sp.name
                    .as_ref()
                    .and_then(|n| e.ports.get(n))
                    .copied()
                    .or(sp.target_port)
                    .or(sp.number)
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(need.port)
            };
            let default_port = sp
                .target_port
                .or(sp.number)
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(need.port);
            let mut resolution = se.spec.resolution.unwrap_or(Resolution::None);
            let from_none = resolution == Resolution::None;
            if from_none {
                self.warn_at(
                    se,
                    "spec.resolution",
                    format!("resolution NONE (pass-through to the original destination) cannot work at a gateway: {host} is resolved by DNS instead"),
                );
                resolution = Resolution::Dns;
            }
            if via_wildcard
                && !from_none
                && se.spec.endpoints.is_empty()
                && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            {
                self.warn_at(
                    se,
                    "spec.hosts",
                    format!("a wildcard host with resolution DNS and no endpoints is refused by Istio: cluster {name} is not created; {refused}"),
                );
                return None;
            }
            match resolution {
                Resolution::Dns | Resolution::None => {
                    let targets = if se.spec.endpoints.is_empty() {
                        vec![DnsTarget {
                            host: host.to_string(),
                            port: default_port,
                        }]
                    } else {
                        endpoints
                            .iter()
                            .filter_map(|e| {
                                e.address.as_ref().map(|a| DnsTarget {
                                    host: a.trim().to_string(),
                                    port: target_port(e),
                                })
                            })
                            .collect()
                    };
                    Discovery::StrictDns { targets }
                }
                Resolution::DnsRoundRobin => {
                    let target = match endpoints
                        .first()
                        .and_then(|e| e.address.as_ref().map(|a| (a, *e)))
                    {
                        Some((a, e)) => DnsTarget {
                            host: a.trim().to_string(),
                            port: target_port(e),
                        },
                        None => DnsTarget {
                            host: host.to_string(),
                            port: default_port,
                        },
                    };
                    Discovery::LogicalDns { target }
                }
                Resolution::Static => {
                    let mut addrs = Vec::new();
                    for (i, e) in se.spec.endpoints.iter().enumerate() {
                        if !subset_labels.is_none_or(|l| labels_match(l, &e.labels)) {
                            continue;
                        }
                        let Some(a) = &e.address else { continue };
                        match a.trim().parse::<IpAddr>() {
                            Ok(ip) => addrs.push(SocketAddr::new(ip, target_port(e))),
                            Err(_) => self.error_at(
                                se,
                                &format!("spec.endpoints[{i}].address"),
                                format!("{a:?} is not an IP address (resolution STATIC needs IP addresses)"),
                            ),
                        }
                    }
                    if addrs.is_empty() {
                        self.warn_at(
                            se,
                            "spec.endpoints",
                            format!("no endpoints for cluster {name}: requests will get 503 UH"),
                        );
                    }
                    Discovery::Static { endpoints: addrs }
                }
            }
        } else if self.is_kubernetes_service(host) {
            if subset_labels.is_some_and(|l| !l.is_empty()) {
                self.warn_at(
                    vs,
                    &format!("{}.subset", need.path),
                    format!("subset labels cannot select pods of Kubernetes service {host} here: all its addresses are used"),
                );
            }
            Discovery::StrictDns {
                targets: vec![DnsTarget {
                    host: host.to_string(),
                    port: need.port,
                }],
            }
        } else {
            self.warn_at(
                vs,
                &format!("{}.host", need.path),
                format!("host {host} is not in the service registry (REGISTRY_ONLY): {refused}"),
            );
            return None;
        };

        let connect_timeout = policy
            .pool
            .as_ref()
            .and_then(|(p, _)| p.tcp.as_ref())
            .and_then(|t| t.connect_timeout.as_ref())
            .map(|d| d.value)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let (lb, traffic) = crate::traffic::cluster_traffic(
            policy.lb.as_ref().map(|(l, _)| *l),
            policy.pool.as_ref().map(|(p, _)| *p),
            policy.outlier.as_ref().map(|(o, _)| *o),
        );
        let pool = policy.pool.as_ref().map(|(p, _)| *p);
        let protocol = if !need.http {
            UpstreamProtocol::Tcp
        } else if matches!(
            se_protocol,
            Some(Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
        ) || crate::traffic::h2_upgrade(pool)
        {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Http1
        };
        let tls = match (dr, &policy.tls) {
            (Some(dr), Some((t, _))) => upstream_tls(dr, t, need).map(Arc::new),
            _ => None,
        };
        Some(Cluster {
            name: Arc::from(name),
            discovery,
            connect_timeout,
            lb,
            protocol,
            tls,
            traffic,
        })
    }
}

/// TLS origination for a cluster from the DestinationRule's effective `tls`; None for DISABLE
/// (or no mode, which is DISABLE).
fn upstream_tls(
    dr: &Resource<DestinationRuleSpec>,
    tls: &ClientTls,
    need: &Need,
) -> Option<UpstreamTls> {
    let mode = match tls.mode? {
        ClientTlsMode::Disable => return None,
        ClientTlsMode::Simple => TlsMode::Simple,
        ClientTlsMode::Mutual => TlsMode::Mutual,
        ClientTlsMode::IstioMutual => TlsMode::IstioMutual,
    };
    let sni = match non_empty(&tls.sni) {
        Some(sni) => sni,
        // Istio's default for mesh mTLS is the cluster's SNI key, which gateways in the mesh
        // route on; for the other modes it is the destination host.
        None if mode == TlsMode::IstioMutual => {
            format!("outbound_.{}_.{}_.{}", need.port, need.subset, need.host)
        }
        None => need.host.clone(),
    };
    let source = if mode == TlsMode::IstioMutual {
        // The mesh certificates; explicit files were warned about as ignored.
        CertSource::default()
    } else {
        CertSource {
            credential_name: non_empty(&tls.credential_name),
            certificate: non_empty(&tls.client_certificate).map(PathBuf::from),
            private_key: non_empty(&tls.private_key).map(PathBuf::from),
            ca_certificates: non_empty(&tls.ca_certificates).map(PathBuf::from),
        }
    };
    Some(UpstreamTls {
        mode,
        sni,
        auto_sni: non_empty(&tls.sni).is_none(),
        subject_alt_names: tls
            .subject_alt_names
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        source,
        insecure_skip_verify: tls.insecure_skip_verify.unwrap_or(false),
        origin: dr.id(),
    })
}

/// A string field that is set and not blank (Istio treats `""` as unset), trimmed.
fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// 0 = preferred namespace, 1 = the gateway's, 2 = any other.
fn ns_rank(ns: &str, prefer: &str, gateway_ns: &str) -> u8 {
    if ns == prefer {
        0
    } else if ns == gateway_ns {
        1
    } else {
        2
    }
}

/// The traffic policy that applies to one cluster, with the field path each part came from.
/// Istio's merge: top level; its `portLevelSettings` for the port replace the top-level
/// parts wholesale; then the subset's parts override; then the subset's port-level settings
/// replace all.
#[derive(Default)]
struct EffectivePolicy<'a> {
    lb: Option<(&'a LoadBalancerSettings, String)>,
    pool: Option<(&'a ConnectionPoolSettings, String)>,
    outlier: Option<(&'a OutlierDetection, String)>,
    tls: Option<(&'a ClientTls, String)>,
}

impl<'a> EffectivePolicy<'a> {
    fn merge(
        dr: &'a Resource<DestinationRuleSpec>,
        subset: Option<(usize, &'a Subset)>,
        port: u16,
    ) -> Self {
        let mut eff = EffectivePolicy::default();
        if let Some(tp) = &dr.spec.traffic_policy {
            eff.apply(tp, "spec.trafficPolicy", port);
        }
        if let Some((i, s)) = subset {
            if let Some(tp) = &s.traffic_policy {
                eff.apply(tp, &format!("spec.subsets[{i}].trafficPolicy"), port);
            }
        }
        eff
    }

    fn apply(&mut self, tp: &'a TrafficPolicy, path: &str, port: u16) {
        if let Some(lb) = &tp.load_balancer {
            self.lb = Some((lb, format!("{path}.loadBalancer")));
        }
        if let Some(p) = &tp.connection_pool {
            self.pool = Some((p, format!("{path}.connectionPool")));
        }
        if let Some(o) = &tp.outlier_detection {
            self.outlier = Some((o, format!("{path}.outlierDetection")));
        }
        if let Some(t) = &tp.tls {
            self.tls = Some((t, format!("{path}.tls")));
        }
        let found = tp
            .port_level_settings
            .iter()
            .enumerate()
            .find(|(_, p)| p.port.as_ref().and_then(|p| p.number) == Some(u32::from(port)));
        if let Some((i, pl)) = found {
            let ppath = format!("{path}.portLevelSettings[{i}]");
            // Port-level settings do not inherit: what they leave out is the default.
            self.lb = pl
                .load_balancer
                .as_ref()
                .map(|l| (l, format!("{ppath}.loadBalancer")));
            self.pool = pl
                .connection_pool
                .as_ref()
                .map(|p| (p, format!("{ppath}.connectionPool")));
            self.outlier = pl
                .outlier_detection
                .as_ref()
                .map(|o| (o, format!("{ppath}.outlierDetection")));
            self.tls = pl.tls.as_ref().map(|t| (t, format!("{ppath}.tls")));
        }
    }
}

/// Istio's `IsCatchAllRoute` for the route a match becomes: the path is a `/` prefix (or no
/// `uri`, which Istio turns into one) or the regex `.*`, with no header, query, method,
/// authority or scheme condition.
fn is_catch_all_match(m: &HttpMatchRequest) -> bool {
    let any_path = match &m.uri {
        None => true,
        Some(u) => {
            u.set_count() == 0
                || u.prefix.as_deref() == Some("/")
                || u.regex.as_ref().is_some_and(|r| r.source == ".*")
        }
    };
    any_path
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.method.is_none()
        && m.authority.is_none()
        && m.scheme.is_none()
}

fn core_string_match(sm: &StringMatch) -> Option<egret_core::StringMatch> {
    if let Some(e) = &sm.exact {
        Some(egret_core::StringMatch::Exact(e.clone()))
    } else if let Some(p) = &sm.prefix {
        Some(egret_core::StringMatch::Prefix(p.clone()))
    } else {
        sm.regex
            .as_ref()
            .map(|r| egret_core::StringMatch::Regex(r.anchored.clone()))
    }
}

fn clone_route(r: &Route) -> Route {
    Route {
        name: r.name.clone(),
        matches: r
            .matches
            .iter()
            .map(|m| RouteMatch {
                uri: m.uri.clone(),
                method: m.method.clone(),
                authority: m.authority.clone(),
                scheme: m.scheme.clone(),
                headers: m
                    .headers
                    .iter()
                    .map(|h| HeaderMatch {
                        name: h.name.clone(),
                        value: h.value.clone(),
                        invert: h.invert,
                    })
                    .collect(),
                query_params: m.query_params.clone(),
                ignore_uri_case: m.ignore_uri_case,
            })
            .collect(),
        action: match &r.action {
            RouteAction::Forward(w) => RouteAction::Forward(w.clone()),
            RouteAction::Redirect(d) => RouteAction::Redirect(d.clone()),
            RouteAction::Direct { status, body } => RouteAction::Direct {
                status: *status,
                body: body.clone(),
            },
        },
        timeout: r.timeout,
        policy: r.policy.clone(),
    }
}

/// `headers` → Envoy header operations, as Istio's `TranslateHeadersOperations`: `set` then
/// `add`, each sorted by name; `host`/`:authority` becomes an authority rewrite, other
/// pseudo-headers are dropped.
fn header_ops(h: &Headers) -> HeaderOps {
    fn is_authority(k: &str) -> bool {
        k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host")
    }
    fn is_internal(k: &str) -> bool {
        k.starts_with(':') || k.eq_ignore_ascii_case("host")
    }
    fn mutations(ops: &HeaderOperations, authority: &mut Option<String>) -> HeaderMutations {
        let mut out = HeaderMutations::default();
        let mut set_authority = None;
        let mut add_authority = None;
        for (map, append) in [(&ops.set, false), (&ops.add, true)] {
            for (k, v) in map {
                if is_authority(k) {
                    if append {
                        add_authority = Some(v.clone());
                    } else {
                        set_authority = Some(v.clone());
                    }
                }
                if is_internal(k) {
                    continue;
                }
                let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
                    http::HeaderValue::from_str(v),
                ) else {
                    continue; // refused by the validator
                };
                out.add.push(HeaderAdd {
                    name,
                    value,
                    append,
                });
            }
        }
        *authority = set_authority.or(add_authority);
        out.remove = ops
            .remove
            .iter()
            .filter(|k| !is_internal(k))
            .filter_map(|k| http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        out
    }
    let mut authority = None;
    let mut ignored = None;
    HeaderOps {
        request: h
            .request
            .as_ref()
            .map(|o| mutations(o, &mut authority))
            .unwrap_or_default(),
        response: h
            .response
            .as_ref()
            .map(|o| mutations(o, &mut ignored))
            .unwrap_or_default(),
        authority: authority.filter(|a| !a.is_empty()),
    }
}

/// Istio's `retry.ConvertPolicy`: no `retries` → the default policy; `attempts` 0 → none;
/// otherwise the default with the given fields replaced (numbers in `retryOn` are status
/// codes for `retriable-status-codes`).
fn retry_policy(r: Option<&HttpRetry>) -> Option<RetryPolicy> {
    let mut out = RetryPolicy::istio_default();
    let Some(r) = r else { return Some(out) };
    let attempts = u32::try_from(r.attempts.unwrap_or(0)).unwrap_or(0);
    if attempts == 0 {
        return None;
    }
    out.num_retries = attempts;
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        let mut retry_on = RetryOn::NONE;
        let mut codes = Vec::new();
        for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<u16>() {
                Ok(code) => codes.push(code),
                // Unknown names were refused or warned about by the validator.
                Err(_) => retry_on |= RetryOn::parse(part).unwrap_or(RetryOn::NONE),
            }
        }
        if !codes.is_empty() {
            retry_on |= RetryOn::RETRIABLE_STATUS_CODES;
        }
        out.retry_on = retry_on;
        out.retriable_status_codes = codes;
    }
    if let Some(t) = &r.per_try_timeout {
        out.per_try_timeout = Some(t.value).filter(|d| !d.is_zero());
    }
    if let Some(b) = &r.backoff {
        out.backoff_base = b.value;
    }
    if let Some(ignore) = r.retry_ignore_previous_hosts {
        out.ignore_previous_hosts = ignore;
    }
    Some(out)
}

/// Istio's `TranslateFault`: a fault without a percentage applies to no request.
fn fault(f: &HttpFaultInjection) -> Option<Fault> {
    let delay = f.delay.as_ref().and_then(|d| {
        let delay = d.fixed_delay.as_ref()?.value;
        let fraction = match (&d.percentage, d.percent) {
            (Some(p), _) => Fraction::from_percent(p.value.unwrap_or(0.0)),
            (None, Some(p)) => Fraction::from_percent(f64::from(p)),
            (None, None) => Fraction::NONE,
        };
        Some(FaultDelay { delay, fraction })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let code = if let Some(s) = a.http_status {
            AbortCode::Http(u16::try_from(s).ok()?)
        } else {
            let name = a.grpc_status.as_deref()?;
            let n = crate::validate::GRPC_STATUS_NAMES
                .iter()
                .position(|g| *g == name)?;
            AbortCode::Grpc(u32::try_from(n).ok()?)
        };
        let fraction = a.percentage.as_ref().map_or(Fraction::NONE, |p| {
            Fraction::from_percent(p.value.unwrap_or(0.0))
        });
        Some(FaultAbort { code, fraction })
    });
    (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
}

/// Istio's `ApplyRedirect`: `derivePort: FROM_REQUEST_PORT` is the server's port, and the
/// default port of the scheme is left out.
fn redirect(r: &HttpRedirect, service_port: u16, tls: bool) -> Redirect {
    let status = match r.redirect_code {
        None | Some(0) => 301,
        Some(c) => u16::try_from(c).unwrap_or(301),
    };
    let scheme = non_empty(&r.scheme);
    let mut port = match (r.port, r.derive_port.as_deref()) {
        (Some(p), _) => u16::try_from(p).ok(),
        (None, Some("FROM_REQUEST_PORT")) => Some(service_port),
        _ => None,
    };
    let effective_scheme = scheme
        .clone()
        .unwrap_or_else(|| if tls { "https" } else { "http" }.to_string());
    if (port == Some(80) && effective_scheme == "http")
        || (port == Some(443) && effective_scheme == "https")
    {
        port = None;
    }
    Redirect {
        status,
        scheme,
        host: non_empty(&r.authority),
        port,
        path: non_empty(&r.uri),
    }
}

/// Envoy's `regex_rewrite` substitution (RE2: `\1` is a group, `\\` a backslash) in the
/// `regex` crate's syntax (`${1}`, with `$` escaped as `$$`).
fn envoy_substitution(sub: &str) -> String {
    let mut out = String::with_capacity(sub.len());
    let mut chars = sub.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    chars.next();
                    out.push_str("${");
                    out.push(d);
                    out.push('}');
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// `IstioMutual` → `ISTIO_MUTUAL`.
fn screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
