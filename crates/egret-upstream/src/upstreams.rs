//! The cluster states bound to one Snapshot, looked up per request without a lock.

// foldhash, not SipHash: looked up once per request.
use foldhash::HashMap;
use std::sync::Arc;

use egret_core::Snapshot;

use crate::cluster::{ClusterRegistry, ClusterState};

/// Built once per Snapshot from the registry (so state carries over reloads); read-only
/// afterwards.
#[derive(Debug, Default)]
pub struct Upstreams {
    clusters: HashMap<Arc<str>, Arc<ClusterState>>,
}

impl Upstreams {
    pub fn bind(snapshot: &Snapshot, registry: &ClusterRegistry) -> Upstreams {
        let clusters = snapshot
            .clusters
            .iter()
            .map(|(name, spec)| (name.clone(), registry.get(spec)))
            .collect();
        registry.retain(|name| snapshot.clusters.contains_key(name));
        Upstreams { clusters }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ClusterState>> {
        self.clusters.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<ClusterState>)> {
        self.clusters.iter()
    }
}
