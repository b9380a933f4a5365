//! Run-time state of each cluster: its current endpoints (re-resolved when their DNS TTL
//! expires) with their in-flight counts and outlier state, the load balancer, and the
//! circuit-breaker counters. State lives in a registry keyed by cluster name so it survives
//! config reloads whenever the cluster's definition is unchanged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use egret_core::{Cluster, Discovery, DnsTarget, LbPolicy};
use http::HeaderMap;

use crate::circuit::Circuit;
use crate::lb::{Maglev, Ring};
use crate::outlier::{Detector, Endpoint, Outcome};
use crate::resolve::{DnsError, Resolver};

#[derive(Debug, thiserror::Error)]
pub enum PickError {
    /// Envoy: a cluster with no (resolved) hosts answers 503 `UH` `no_healthy_upstream`.
    #[error("no healthy upstream in {cluster}")]
    NoHealthyUpstream {
        cluster: Arc<str>,
        cause: Option<Arc<DnsError>>,
    },
}

#[derive(Debug)]
struct Endpoints {
    set: Arc<EndpointSet>,
    valid_until: Option<Instant>,
    last_error: Option<Arc<DnsError>>,
}

/// The endpoints of one resolution, each with its run-time state, and the consistent-hash
/// table over them (built on first use).
#[derive(Debug)]
pub struct EndpointSet {
    pub addrs: Arc<[SocketAddr]>,
    pub endpoints: Vec<Arc<Endpoint>>,
    table: OnceLock<HashTable>,
}

#[derive(Debug)]
enum HashTable {
    Ring(Ring),
    Maglev(Maglev),
}

impl EndpointSet {
    /// A set for `addrs`, keeping the state of endpoints `previous` already had.
    fn new(addrs: Vec<SocketAddr>, previous: Option<&EndpointSet>) -> EndpointSet {
        let endpoints = addrs
            .iter()
            .map(|a| {
                previous
                    .and_then(|p| p.endpoints.iter().find(|e| e.addr == *a))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(*a)))
            })
            .collect();
        EndpointSet {
            addrs: addrs.into(),
            endpoints,
            table: OnceLock::new(),
        }
    }

    fn find(&self, addr: SocketAddr) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }
}

/// The current endpoint addresses, and the DNS error of the last resolution if it failed.
pub type EndpointView = (Arc<[SocketAddr]>, Option<Arc<DnsError>>);

/// One cluster's endpoints, balancer and limits.
#[derive(Debug)]
pub struct ClusterState {
    pub spec: Arc<Cluster>,
    endpoints: Mutex<Endpoints>,
    /// Serialises re-resolution so one expiry triggers one query, not one per request.
    refresh: tokio::sync::Mutex<()>,
    next: AtomicUsize,
    /// Identifies the TLS settings for pool keys (0 = plain).
    tls_key: u64,
    circuit: Arc<Circuit>,
    outlier: Option<Detector>,
}

impl ClusterState {
    pub fn new(spec: Arc<Cluster>) -> ClusterState {
        let (addrs, valid_until) = match &spec.discovery {
            Discovery::Static { endpoints } => (endpoints.clone(), None),
            _ => (Vec::new(), Some(Instant::now())),
        };
        ClusterState {
            spec: spec.clone(),
            endpoints: Mutex::new(Endpoints {
                set: Arc::new(EndpointSet::new(addrs, None)),
                valid_until,
                last_error: None,
            }),
            refresh: tokio::sync::Mutex::new(()),
            next: AtomicUsize::new(fastrand::usize(..1024)),
            tls_key: spec.tls.as_ref().map_or(0, |t| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                t.hash(&mut h);
                h.finish() | 1
            }),
            circuit: Arc::new(Circuit::new(spec.traffic.pool.clone())),
            outlier: spec
                .traffic
                .outlier
                .clone()
                .map(|cfg| Detector::new(cfg, Instant::now())),
        }
    }

    /// The circuit-breaker counters and limits of this cluster.
    pub fn circuit(&self) -> &Arc<Circuit> {
        &self.circuit
    }

    /// The state of endpoint `addr`, if it is in the current set.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<Arc<Endpoint>> {
        lock(&self.endpoints).set.find(addr).cloned()
    }

    /// The current endpoints with their state (no DNS query), for `/clusters` and tests.
    pub fn endpoint_states(&self) -> Vec<Arc<Endpoint>> {
        lock(&self.endpoints).set.endpoints.clone()
    }

    /// Reports what became of a request (or connect attempt) on `addr`, for outlier detection.
    /// Envoy: every attempt counts, retried ones included.
    pub fn report(&self, addr: SocketAddr, outcome: Outcome) {
        if outcome == Outcome::Timeout {
            // Rare, so the endpoint lookup is affordable here; the other outcomes are counted
            // on the connection, lock-free (`PooledConn::send`).
            if let Some(ep) = self.endpoint(addr) {
                ep.request_timeout();
            }
        }
        let Some(detector) = &self.outlier else {
            return;
        };
        let set = lock(&self.endpoints).set.clone();
        if let Some(ep) = set.find(addr) {
            detector.report(ep, &set.endpoints, outcome, Instant::now());
        }
    }

    /// The request's consistent-hash key, when this cluster balances by one.
    pub fn request_hash(
        &self,
        headers: &HeaderMap,
        path_and_query: &str,
        source: IpAddr,
    ) -> Option<u64> {
        if !matches!(
            self.spec.lb,
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
        ) {
            return None;
        }
        let policy = self.spec.traffic.hash.as_ref()?;
        crate::lb::request_hash(policy, headers, path_and_query, source)
    }

    /// The endpoints as last resolved (no DNS query), for `/clusters`.
    pub fn cached_endpoints(&self) -> Arc<[SocketAddr]> {
        lock(&self.endpoints).set.addrs.clone()
    }

    pub fn tls_key(&self) -> u64 {
        self.tls_key
    }

    pub fn name(&self) -> &Arc<str> {
        &self.spec.name
    }

    /// Current endpoints, re-resolving when the DNS answer has expired. A failed
    /// re-resolution keeps the previous addresses (as Envoy does) and is retried on the next
    /// request after the minimum TTL.
    pub async fn endpoints(&self, resolver: &Resolver) -> EndpointView {
        let (set, err) = self.endpoint_set(resolver).await;
        (set.addrs.clone(), err)
    }

    async fn endpoint_set(&self, resolver: &Resolver) -> (Arc<EndpointSet>, Option<Arc<DnsError>>) {
        if let Some(fresh) = self.fresh() {
            return fresh;
        }
        let _guard = self.refresh.lock().await;
        if let Some(fresh) = self.fresh() {
            return fresh;
        }
        // Boxed: hickory's lookup future is large and only runs when the answer expired;
        // inline it would size every request's future.
        let result = Box::pin(self.resolve(resolver)).await;
        let mut ep = lock(&self.endpoints);
        match result {
            Ok((addrs, valid_until)) => {
                if addrs[..] != ep.set.addrs[..] {
                    ep.set = Arc::new(EndpointSet::new(addrs, Some(&ep.set)));
                    if let Some(d) = &self.outlier {
                        d.recount(&ep.set.endpoints);
                    }
                }
                ep.valid_until = Some(valid_until);
                ep.last_error = None;
            }
            Err(e) => {
                tracing::warn!(cluster = %self.spec.name, error = %e, "DNS resolution failed");
                ep.valid_until = Some(Instant::now() + egret_core::limits::MIN_DNS_TTL);
                ep.last_error = Some(Arc::new(e));
            }
        }
        (ep.set.clone(), ep.last_error.clone())
    }

    fn fresh(&self) -> Option<(Arc<EndpointSet>, Option<Arc<DnsError>>)> {
        let ep = lock(&self.endpoints);
        match ep.valid_until {
            Some(t) if t <= Instant::now() => None,
            _ => Some((ep.set.clone(), ep.last_error.clone())),
        }
    }

    async fn resolve(&self, resolver: &Resolver) -> Result<(Vec<SocketAddr>, Instant), DnsError> {
        match &self.spec.discovery {
            Discovery::Static { endpoints } => Ok((
                endpoints.clone(),
                Instant::now() + std::time::Duration::from_secs(86400),
            )),
            Discovery::LogicalDns { target } => {
                if let Some(a) = resolver.connect_override(&target.host, target.port) {
                    return Ok((
                        vec![a],
                        Instant::now() + std::time::Duration::from_secs(86400),
                    ));
                }
                // Envoy LOGICAL_DNS: only the first address of the answer is used.
                let r = resolver.resolve(&target.host).await?;
                let first = r.addrs.first().map(|ip| SocketAddr::new(*ip, target.port));
                Ok((first.into_iter().collect(), r.valid_until))
            }
            Discovery::StrictDns { targets } => {
                let mut all = Vec::new();
                let mut soonest: Option<Instant> = None;
                let mut first_err = None;
                for DnsTarget { host, port } in targets {
                    if let Some(a) = resolver.connect_override(host, *port) {
                        all.push(a);
                        soonest = Some(soonest.map_or(
                            Instant::now() + std::time::Duration::from_secs(86400),
                            |s| s,
                        ));
                        continue;
                    }
                    match resolver.resolve(host).await {
                        Ok(r) => {
                            all.extend(r.addrs.iter().map(|ip| SocketAddr::new(*ip, *port)));
                            soonest = Some(soonest.map_or(r.valid_until, |s| s.min(r.valid_until)));
                        }
                        Err(e) => first_err = first_err.or(Some(e)),
                    }
                }
                match (soonest, first_err) {
                    (Some(t), _) => Ok((all, t)),
                    (None, Some(e)) => Err(e),
                    (None, None) => Ok((all, Instant::now() + egret_core::limits::MIN_DNS_TTL)),
                }
            }
        }
    }

    /// Picks an endpoint by the cluster's policy, avoiding `tried` when another exists
    /// (Envoy's previous_hosts retry predicate, which Istio enables).
    pub async fn pick(
        &self,
        resolver: &Resolver,
        tried: &[SocketAddr],
    ) -> Result<SocketAddr, PickError> {
        self.pick_for(resolver, tried, None).await
    }

    /// [`pick`](Self::pick) with the request's consistent-hash key (see
    /// [`request_hash`](Self::request_hash)); without one a hash cluster picks at random, as
    /// Envoy does. Ejected endpoints are skipped; none left is `UH`.
    pub async fn pick_for(
        &self,
        resolver: &Resolver,
        tried: &[SocketAddr],
        hash: Option<u64>,
    ) -> Result<SocketAddr, PickError> {
        Ok(self.pick_endpoint(resolver, tried, hash).await?.addr)
    }

    /// [`pick_for`](Self::pick_for), giving the endpoint with its run-time state (what
    /// [`Pool::checkout`](crate::Pool::checkout) counts on), so the caller need not look it
    /// up again.
    pub async fn pick_endpoint(
        &self,
        resolver: &Resolver,
        tried: &[SocketAddr],
        hash: Option<u64>,
    ) -> Result<Arc<Endpoint>, PickError> {
        let (set, err) = self.endpoint_set(resolver).await;
        let n = set.endpoints.len();
        if n == 0 {
            return Err(PickError::NoHealthyUpstream {
                cluster: self.spec.name.clone(),
                cause: err,
            });
        }
        let consider_health = match &self.outlier {
            None => false,
            Some(d) => {
                d.sweep(&set.endpoints, Instant::now());
                d.ejected_count() > 0 && !d.panic(n)
            }
        };
        let healthy = |i: usize| !consider_health || !set.endpoints[i].is_ejected();
        if consider_health && !(0..n).any(healthy) {
            return Err(PickError::NoHealthyUpstream {
                cluster: self.spec.name.clone(),
                cause: None,
            });
        }
        let fresh = |i: usize| healthy(i) && !tried.contains(&set.endpoints[i].addr);
        let i = match (self.spec.lb, hash) {
            (LbPolicy::RingHash { minimum_ring_size }, Some(h)) => {
                let t = set
                    .table
                    .get_or_init(|| HashTable::Ring(Ring::new(&set.addrs, minimum_ring_size)));
                first_in(t, h, &fresh).or_else(|| first_in(t, h, &healthy))
            }
            (LbPolicy::Maglev { table_size }, Some(h)) => {
                let t = set
                    .table
                    .get_or_init(|| HashTable::Maglev(Maglev::new(&set.addrs, table_size)));
                first_in(t, h, &fresh).or_else(|| first_in(t, h, &healthy))
            }
            (LbPolicy::RoundRobin, _) => scan(
                n,
                self.next.fetch_add(1, Ordering::Relaxed),
                &fresh,
                &healthy,
            ),
            (LbPolicy::LeastRequest, _) => least_request(&set.endpoints, &fresh)
                .or_else(|| scan(n, fastrand::usize(..n), &fresh, &healthy)),
            _ => scan(n, fastrand::usize(..n), &fresh, &healthy),
        };
        // `healthy` holds for some endpoint, so a scan always finds one.
        let i = i.unwrap_or(0);
        Ok(set.endpoints[i].clone())
    }
}

/// The first index from `start` (wrapping) that is fresh, else the first that is healthy.
fn scan(
    n: usize,
    start: usize,
    fresh: &dyn Fn(usize) -> bool,
    healthy: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let order = (0..n).map(|k| (start + k) % n);
    order
        .clone()
        .find(|i| fresh(*i))
        .or_else(|| order.clone().find(|i| healthy(*i)))
}

fn first_in(t: &HashTable, hash: u64, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
    match t {
        HashTable::Ring(r) => r.walk(hash).find(|i| ok(*i)),
        HashTable::Maglev(m) => m.walk(hash).find(|i| ok(*i)),
    }
}

/// Envoy's LEAST_REQUEST with equal weights: the fewer in-flight requests of two endpoints
/// drawn at random. We draw two distinct ones (Envoy may draw the same twice), so with two
/// endpoints the less loaded one always wins.
fn least_request(endpoints: &[Arc<Endpoint>], fresh: &dyn Fn(usize) -> bool) -> Option<usize> {
    let n = endpoints.len();
    if n == 1 {
        return fresh(0).then_some(0);
    }
    let a = fastrand::usize(..n);
    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
    match (fresh(a), fresh(b)) {
        (true, true) => {
            if endpoints[b].active_requests() < endpoints[a].active_requests() {
                Some(b)
            } else {
                Some(a)
            }
        }
        (true, false) => Some(a),
        (false, true) => Some(b),
        // Both drawn were ejected or tried: the least loaded of the rest.
        (false, false) => (0..n)
            .filter(|i| fresh(*i))
            .min_by_key(|i| endpoints[*i].active_requests()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of plain data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cluster states by name, reused across snapshots while a cluster's definition is the same.
#[derive(Debug, Default)]
pub struct ClusterRegistry {
    clusters: Mutex<HashMap<Arc<str>, Arc<ClusterState>>>,
}

impl ClusterRegistry {
    /// The state for `spec`, creating it (or replacing a changed one).
    pub fn get(&self, spec: &Arc<Cluster>) -> Arc<ClusterState> {
        let mut map = lock(&self.clusters);
        if let Some(s) = map.get(&spec.name) {
            if Arc::ptr_eq(&s.spec, spec) || same_definition(&s.spec, spec) {
                return s.clone();
            }
        }
        let s = Arc::new(ClusterState::new(spec.clone()));
        map.insert(spec.name.clone(), s.clone());
        s
    }

    /// Drops state for clusters no longer in `keep`.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.clusters).retain(|k, _| keep(k));
    }
}

fn same_definition(a: &Cluster, b: &Cluster) -> bool {
    a.discovery == b.discovery
        && a.lb == b.lb
        && a.protocol == b.protocol
        && a.connect_timeout == b.connect_timeout
        && a.tls == b.tls
        && a.traffic == b.traffic
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cluster(d: Discovery) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: Arc::from("outbound|80||x"),
            discovery: d,
            connect_timeout: Duration::from_secs(1),
            lb: LbPolicy::RoundRobin,
            protocol: egret_core::UpstreamProtocol::Http1,
            tls: None,
            traffic: Default::default(),
        })
    }

    #[tokio::test]
    async fn round_robin_and_previous_hosts() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let c = ClusterState::new(cluster(Discovery::Static {
            endpoints: vec![a, b],
        }));
        let r = Resolver::new(&crate::ResolverConfig {
            dns_server: Some("127.0.0.1:9".parse().unwrap()),
            hosts_file: None,
            connect_to: Default::default(),
        })
        .unwrap();
        let x = c.pick(&r, &[]).await.unwrap();
        let y = c.pick(&r, &[]).await.unwrap();
        assert_ne!(x, y);
        assert_eq!(c.pick(&r, &[a]).await.unwrap(), b);
        assert_eq!(c.pick(&r, &[b]).await.unwrap(), a);
        // All tried: still answers.
        assert!(c.pick(&r, &[a, b]).await.is_ok());
        // The endpoint picked is the one whose state /clusters shows.
        let e = c.pick_endpoint(&r, &[a], None).await.unwrap();
        assert!(Arc::ptr_eq(&e, &c.endpoint(b).unwrap()));
    }

    fn static_cluster(lb: LbPolicy, traffic: egret_core::ClusterTraffic, n: u8) -> ClusterState {
        ClusterState::new(Arc::new(Cluster {
            name: Arc::from("outbound|80||x"),
            discovery: Discovery::Static {
                endpoints: (1..=n)
                    .map(|i| SocketAddr::from(([127, 0, 0, i], 80)))
                    .collect(),
            },
            connect_timeout: Duration::from_secs(1),
            lb,
            protocol: egret_core::UpstreamProtocol::Http1,
            tls: None,
            traffic,
        }))
    }

    fn resolver() -> Resolver {
        Resolver::new(&crate::ResolverConfig {
            dns_server: Some("127.0.0.1:9".parse().unwrap()),
            hosts_file: None,
            connect_to: Default::default(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn least_request_prefers_the_idle_endpoint() {
        let c = static_cluster(LbPolicy::LeastRequest, Default::default(), 2);
        let r = resolver();
        let busy = c.endpoint("127.0.0.1:80".parse().unwrap()).unwrap();
        let _in_flight = busy.begin_request();
        for _ in 0..50 {
            assert_eq!(
                c.pick(&r, &[]).await.unwrap(),
                "127.0.0.2:80".parse().unwrap()
            );
        }
    }

    #[tokio::test]
    async fn consistent_hash_keeps_a_key_on_one_endpoint() {
        for lb in [
            LbPolicy::RingHash {
                minimum_ring_size: 1024,
            },
            LbPolicy::Maglev { table_size: 65537 },
        ] {
            let c = static_cluster(lb, Default::default(), 3);
            let r = resolver();
            let mut owners = std::collections::HashSet::new();
            for key in 0..64u64 {
                let h = crate::lb::mix(key);
                let first = c.pick_for(&r, &[], Some(h)).await.unwrap();
                for _ in 0..5 {
                    assert_eq!(c.pick_for(&r, &[], Some(h)).await.unwrap(), first);
                }
                owners.insert(first);
                // A retry goes elsewhere (previous_hosts).
                assert_ne!(c.pick_for(&r, &[first], Some(h)).await.unwrap(), first);
            }
            assert_eq!(owners.len(), 3, "{lb:?}: keys spread over all endpoints");
        }
    }

    #[tokio::test]
    async fn ejected_endpoints_leave_the_rotation() {
        let traffic = egret_core::ClusterTraffic {
            outlier: Some(egret_core::OutlierDetection {
                consecutive_5xx: Some(2),
                max_ejection_percent: 100,
                base_ejection_time: Duration::from_secs(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = static_cluster(LbPolicy::RoundRobin, traffic, 2);
        let r = resolver();
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:80".parse().unwrap(),
            "127.0.0.2:80".parse().unwrap(),
        );
        c.report(a, Outcome::Status(503));
        c.report(a, Outcome::ConnectFailed);
        for _ in 0..10 {
            assert_eq!(c.pick(&r, &[]).await.unwrap(), b);
        }
        // A retry that already tried b still gets b: a is out.
        assert_eq!(c.pick(&r, &[b]).await.unwrap(), b);
        c.report(b, Outcome::Status(500));
        c.report(b, Outcome::Status(500));
        match c.pick(&r, &[]).await {
            Err(PickError::NoHealthyUpstream { cause: None, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn dns_failure_is_no_healthy_upstream() {
        let c = ClusterState::new(cluster(Discovery::StrictDns {
            targets: vec![DnsTarget {
                host: "nonexistent.invalid".into(),
                port: 80,
            }],
        }));
        // A closed port: the query fails.
        let r = Resolver::new(&crate::ResolverConfig {
            dns_server: Some("127.0.0.1:9".parse().unwrap()),
            hosts_file: None,
            connect_to: Default::default(),
        })
        .unwrap();
        match c.pick(&r, &[]).await {
            Err(PickError::NoHealthyUpstream { cause: Some(_), .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
