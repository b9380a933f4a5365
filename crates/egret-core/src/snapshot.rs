//! The compiled configuration: what the data path reads. Immutable once built; a reload
//! builds a new one. Names follow Istio/Envoy so logs and dumps read the same.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::host::{HostIndex, HostPattern};

/// Everything this gateway serves, as of one configuration version.
#[derive(Debug)]
pub struct Snapshot {
    /// Short content hash of the loaded resources (`%CONFIG_VERSION%`).
    pub version: Arc<str>,
    pub listeners: Vec<Listener>,
    /// By Istio cluster name, e.g. `outbound|80||edition.cnn.com`.
    pub clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
}

impl Snapshot {
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }
    pub fn listener_on(&self, listen_port: u16) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.listen_port == listen_port)
    }
}

/// Gateway server protocols (Istio `Port.protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerProtocol {
    Http,
    Http2,
    Https,
    Tls,
    Tcp,
}

#[derive(Debug)]
pub struct Listener {
    /// Envoy-style name, `0.0.0.0_8080`.
    pub name: String,
    /// The Gateway server's port number (the Service port, e.g. 80).
    pub service_port: u16,
    /// The port we bind (after `--port-map`, e.g. 8080).
    pub listen_port: u16,
    pub protocol: ServerProtocol,
    pub routes: ListenerRoutes,
    /// TLS termination (HTTPS servers with SIMPLE, MUTUAL or ISTIO_MUTUAL), chosen by SNI.
    /// Empty for plain HTTP, passthrough and TCP listeners.
    pub tls_servers: Vec<crate::TlsServer>,
}

#[derive(Debug)]
pub enum ListenerRoutes {
    Http(Arc<HttpRouteTable>),
    Sni(Arc<SniRouteTable>),
    Tcp(Arc<TcpRouteTable>),
}

/// One RDS route configuration (`http.8080`): virtual hosts by domain.
#[derive(Debug, Default)]
pub struct HttpRouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Domain → index in `virtual_hosts`.
    pub index: HostIndex<usize>,
}

impl HttpRouteTable {
    pub fn new(name: String, virtual_hosts: Vec<VirtualHost>) -> Self {
        let mut index = HostIndex::default();
        for (i, vh) in virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                index.insert(d, i);
            }
        }
        HttpRouteTable {
            name,
            virtual_hosts,
            index,
        }
    }

    /// The virtual host for an authority (`host` or `host:port`), Envoy's precedence.
    pub fn find_virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let (host, _port) = crate::host::split_authority(authority);
        let i = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            *self.index.find(&host.to_ascii_lowercase())?
        } else {
            *self.index.find(host)?
        };
        self.virtual_hosts.get(i)
    }
}

#[derive(Debug)]
pub struct VirtualHost {
    /// Istio's name: `edition.cnn.com:80`.
    pub name: String,
    pub domains: Vec<HostPattern>,
    /// In order; the first whose match applies wins.
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct Route {
    /// Istio route name (`http[].name`), printed by `%ROUTE_NAME%`.
    pub name: Option<Arc<str>>,
    /// Any of these (OR); empty = everything.
    pub matches: Vec<RouteMatch>,
    pub action: RouteAction,
    /// Route timeout (`http[].timeout`); None = no timeout (Istio's default is disabled).
    pub timeout: Option<Duration>,
}

/// One `HTTPMatchRequest`: all present conditions must hold (AND).
#[derive(Debug, Default)]
pub struct RouteMatch {
    pub uri: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    /// Header name (lower-case) and how its value must match. `None` = must be present.
    pub headers: Vec<HeaderMatch>,
    pub query_params: Vec<(String, StringMatch)>,
    pub ignore_uri_case: bool,
}

#[derive(Debug)]
pub struct HeaderMatch {
    pub name: http::HeaderName,
    pub value: Option<StringMatch>,
    /// `withoutHeaders`: the route applies only when this header does NOT match.
    pub invert: bool,
}

#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Anchored (the whole value must match), as Envoy's `safe_regex` is.
    Regex(regex::Regex),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(e) => value == e,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Debug)]
pub enum RouteAction {
    /// Forward to one of the weighted clusters.
    Forward(WeightedClusters),
    /// Answer locally (Istio's 404 for a server without routes; `directResponse`).
    Direct { status: u16, body: Option<String> },
}

#[derive(Debug, Clone)]
pub struct WeightedClusters {
    pub clusters: Vec<WeightedCluster>,
    pub total_weight: u32,
}

impl WeightedClusters {
    /// Picks by weight; `roll` is a uniform random number.
    pub fn pick(&self, roll: u32) -> Option<&WeightedCluster> {
        if self.clusters.len() == 1 {
            return self.clusters.first();
        }
        if self.total_weight == 0 {
            return None;
        }
        let mut r = roll % self.total_weight;
        for c in &self.clusters {
            if r < c.weight {
                return Some(c);
            }
            r -= c.weight;
        }
        self.clusters.last()
    }
}

#[derive(Debug, Clone)]
pub struct WeightedCluster {
    pub cluster: Arc<str>,
    pub weight: u32,
}

/// Passthrough routes for one TLS listener: SNI → clusters.
#[derive(Debug, Default)]
pub struct SniRouteTable {
    pub routes: Vec<SniRoute>,
    /// SNI pattern → index in `routes`.
    pub index: HostIndex<usize>,
}

impl SniRouteTable {
    pub fn new(routes: Vec<SniRoute>) -> Self {
        let mut index = HostIndex::default();
        for (i, r) in routes.iter().enumerate() {
            for h in &r.sni_hosts {
                index.insert(h, i);
            }
        }
        SniRouteTable { routes, index }
    }
    pub fn find(&self, sni: &str) -> Option<&SniRoute> {
        let sni = sni.to_ascii_lowercase();
        self.index.find(&sni).and_then(|i| self.routes.get(*i))
    }
}

#[derive(Debug)]
pub struct SniRoute {
    pub sni_hosts: Vec<HostPattern>,
    pub clusters: WeightedClusters,
}

/// Plain TCP routes for one listener (VirtualService `tcp:`); the first applies.
#[derive(Debug, Default)]
pub struct TcpRouteTable {
    pub clusters: Option<WeightedClusters>,
}

/// An upstream cluster (Envoy `Cluster`), named as Istio names it.
#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub lb: LbPolicy,
    pub protocol: UpstreamProtocol,
    /// TLS origination toward the endpoints (DestinationRule `tls`), if any.
    pub tls: Option<Arc<crate::UpstreamTls>>,
}

/// How a cluster finds its endpoints.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// Istio `resolution: DNS` → Envoy STRICT_DNS: every address of every name, balanced.
    StrictDns { targets: Vec<DnsTarget> },
    /// Istio `resolution: DNS_ROUND_ROBIN` → Envoy LOGICAL_DNS: the first address the
    /// resolver returns for the (single) name, re-resolved on TTL expiry.
    LogicalDns { target: DnsTarget },
    /// Istio `resolution: STATIC` (or `NONE` with endpoints): fixed addresses.
    Static { endpoints: Vec<SocketAddr> },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsTarget {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    Random,
    LeastRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
    /// TCP/TLS passthrough clusters.
    Tcp,
}
