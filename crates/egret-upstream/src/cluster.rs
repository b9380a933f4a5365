//! Run-time state of each cluster: its current endpoints (re-resolved when their DNS TTL
//! expires) and the load-balancer position. State lives in a registry keyed by cluster name
//! so it survives config reloads whenever the cluster's definition is unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use egret_core::{Cluster, Discovery, DnsTarget, LbPolicy};

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
    addrs: Arc<[SocketAddr]>,
    valid_until: Option<Instant>,
    last_error: Option<Arc<DnsError>>,
}

/// The current endpoint addresses, and the DNS error of the last resolution if it failed.
pub type EndpointView = (Arc<[SocketAddr]>, Option<Arc<DnsError>>);

/// One cluster's endpoints and balancer.
#[derive(Debug)]
pub struct ClusterState {
    pub spec: Arc<Cluster>,
    endpoints: Mutex<Endpoints>,
    /// Serialises re-resolution so one expiry triggers one query, not one per request.
    refresh: tokio::sync::Mutex<()>,
    next: AtomicUsize,
    /// Identifies the TLS settings for pool keys (0 = plain).
    tls_key: u64,
}

impl ClusterState {
    pub fn new(spec: Arc<Cluster>) -> ClusterState {
        let (addrs, valid_until): (Arc<[SocketAddr]>, _) = match &spec.discovery {
            Discovery::Static { endpoints } => (endpoints.clone().into(), None),
            _ => (Arc::from(Vec::new()), Some(Instant::now())),
        };
        ClusterState {
            spec: spec.clone(),
            endpoints: Mutex::new(Endpoints {
                addrs,
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
        }
    }

    /// The endpoints as last resolved (no DNS query), for `/clusters`.
    pub fn cached_endpoints(&self) -> Arc<[SocketAddr]> {
        lock(&self.endpoints).addrs.clone()
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
    pub async fn endpoints(
        &self,
        resolver: &Resolver,
    ) -> (Arc<[SocketAddr]>, Option<Arc<DnsError>>) {
        if let Some(fresh) = self.fresh() {
            return fresh;
        }
        let _guard = self.refresh.lock().await;
        if let Some(fresh) = self.fresh() {
            return fresh;
        }
        let result = self.resolve(resolver).await;
        let mut ep = lock(&self.endpoints);
        match result {
            Ok((addrs, valid_until)) => {
                ep.addrs = addrs.into();
                ep.valid_until = Some(valid_until);
                ep.last_error = None;
            }
            Err(e) => {
                tracing::warn!(cluster = %self.spec.name, error = %e, "DNS resolution failed");
                ep.valid_until = Some(Instant::now() + egret_core::limits::MIN_DNS_TTL);
                ep.last_error = Some(Arc::new(e));
            }
        }
        (ep.addrs.clone(), ep.last_error.clone())
    }

    fn fresh(&self) -> Option<EndpointView> {
        let ep = lock(&self.endpoints);
        match ep.valid_until {
            Some(t) if t <= Instant::now() => None,
            _ => Some((ep.addrs.clone(), ep.last_error.clone())),
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
        let (addrs, err) = self.endpoints(resolver).await;
        if addrs.is_empty() {
            return Err(PickError::NoHealthyUpstream {
                cluster: self.spec.name.clone(),
                cause: err,
            });
        }
        let start = match self.spec.lb {
            LbPolicy::Random => fastrand::usize(..addrs.len()),
            // LEAST_REQUEST degrades to round robin until per-endpoint request counts exist.
            LbPolicy::RoundRobin | LbPolicy::LeastRequest => {
                self.next.fetch_add(1, Ordering::Relaxed)
            }
        };
        for i in 0..addrs.len() {
            let a = addrs[(start + i) % addrs.len()];
            if !tried.contains(&a) {
                return Ok(a);
            }
        }
        Ok(addrs[start % addrs.len()])
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
    format!("{:?}", a.discovery) == format!("{:?}", b.discovery)
        && a.lb == b.lb
        && a.protocol == b.protocol
        && a.connect_timeout == b.connect_timeout
        && a.tls == b.tls
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
