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
    /// A plain HTTP port: one table for all its servers (Istio's `http.<port>`).
    Http(Arc<HttpRouteTable>),
    /// A port terminating TLS: one table per TLS server, in the order of `tls_servers` —
    /// a connection routes with the table of the server its SNI chose, so a request for a
    /// host of another server on the port finds no route (Istio gives each HTTPS server its
    /// own route configuration, `https.<port>.<port name>.<gateway>.<namespace>`).
    Https(Vec<Arc<HttpRouteTable>>),
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
    /// Retries, rewrites, header changes, faults, mirrors (`egret_core::policy`).
    pub policy: crate::RoutePolicy,
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
    /// `redirect`: answered locally with `location`.
    Redirect(crate::Redirect),
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
    /// Header changes of this destination (`route[].headers`) when the rule has several
    /// destinations (with one, Istio merges them into the route's).
    pub headers: Option<Arc<crate::HeaderOps>>,
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
    /// DestinationRule `connectionPool`, `outlierDetection` and `consistentHash`.
    pub traffic: ClusterTraffic,
}

/// How a cluster finds its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Envoy's `lb_policy`. Istio's default (no `loadBalancer.simple`) is `LEAST_REQUEST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPolicy {
    RoundRobin,
    Random,
    #[default]
    LeastRequest,
    /// `consistentHash` (Istio's default algorithm, and `ringHash`): Ketama-style ring.
    RingHash {
        minimum_ring_size: u64,
    },
    /// `consistentHash.maglev`: Maglev lookup table (size prime, Envoy's default 65537).
    Maglev {
        table_size: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
    /// TCP/TLS passthrough clusters.
    Tcp,
}

/// Per-cluster traffic settings from the DestinationRule, as Istio hands them to Envoy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterTraffic {
    pub pool: ConnectionPool,
    /// None: no `outlierDetection`, no endpoint is ever ejected.
    pub outlier: Option<OutlierDetection>,
    /// What `consistentHash` hashes (only used with `RingHash`/`Maglev`).
    pub hash: Option<HashPolicy>,
}

/// `connectionPool`: Envoy circuit-breaker thresholds plus HTTP protocol options. Istio's
/// defaults are "no limit" (2^32-1) for every threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`: open connections to all endpoints of the cluster.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`: requests in flight to the cluster (any protocol).
    pub max_requests: u32,
    /// `http.maxRetries`: retries in flight to the cluster.
    pub max_retries: u32,
    /// `http.maxRequestsPerConnection`; None = unlimited.
    pub max_requests_per_connection: Option<u32>,
    /// `http.idleTimeout` (or `tcp.idleTimeout`): idle upstream connections are closed after it.
    pub idle_timeout: Option<Duration>,
    /// `tcp.maxConnectionDuration`: connections are not reused past this age.
    pub max_connection_duration: Option<Duration>,
    /// `tcp.tcpKeepalive`: SO_KEEPALIVE on upstream sockets (unset parts: OS defaults).
    pub tcp_keepalive: Option<TcpKeepalive>,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        ConnectionPool {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
            max_requests_per_connection: None,
            idle_timeout: None,
            max_connection_duration: None,
            tcp_keepalive: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

/// `outlierDetection` as Istio configures Envoy's detector (success-rate detection off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Eject after this many consecutive 5xx (None = not enforced). Istio leaves Envoy's
    /// default of 5 when `consecutive5xxErrors` is unset; 0 disables it.
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many consecutive 502/503/504 (None = not enforced, Envoy's default).
    pub consecutive_gateway_errors: Option<u32>,
    /// `splitExternalLocalOriginErrors`: connect failures and timeouts count apart from 5xx.
    pub split_local_origin: bool,
    /// `consecutiveLocalOriginFailures` (with the split only).
    pub consecutive_local_origin_failures: Option<u32>,
    /// Sweep period: ejected endpoints return on the first sweep after their time is up.
    pub interval: Duration,
    /// Ejection time = base × number of ejections (capped at `max_ejection_time`).
    pub base_ejection_time: Duration,
    /// Envoy's `max_ejection_time` (Istio does not set it: 300 s).
    pub max_ejection_time: Duration,
    /// At most this share of the endpoints is ejected (Envoy's default 10%).
    pub max_ejection_percent: u32,
    /// `minHealthPercent` → Envoy's panic threshold: below it, ejections are ignored. Istio's
    /// default 0 disables panic mode, so with every endpoint ejected requests get `UH`.
    pub min_health_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            split_local_origin: false,
            consecutive_local_origin_failures: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

/// The request property a consistent-hash cluster hashes (Istio puts it on the route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPolicy {
    /// `httpHeaderName` (lower-case).
    Header(http::HeaderName),
    /// `httpCookie`: the cookie's value. Envoy generates the cookie when absent and a `ttl`
    /// is set; Egret hashes only cookies the client sends.
    Cookie { name: String },
    /// `useSourceIp`: the downstream peer address.
    SourceIp,
    /// `httpQueryParameterName`.
    QueryParameter(String),
}
