//! The configuration in force: a Snapshot plus the cluster states bound to it, swapped
//! atomically on reload.

use std::sync::Arc;

use arc_swap::ArcSwap;

use egret_core::Snapshot;
use egret_upstream::{ClusterRegistry, Upstreams};

pub struct Active {
    pub snapshot: Arc<Snapshot>,
    pub upstreams: Arc<Upstreams>,
}

/// Shared, lock-free for readers: each new connection does one `load_full()`.
pub struct ActiveConfig {
    current: ArcSwap<Active>,
    registry: ClusterRegistry,
}

impl ActiveConfig {
    pub fn new(snapshot: Arc<Snapshot>) -> ActiveConfig {
        let registry = ClusterRegistry::default();
        let upstreams = Arc::new(Upstreams::bind(&snapshot, &registry));
        ActiveConfig {
            current: ArcSwap::from_pointee(Active {
                snapshot,
                upstreams,
            }),
            registry,
        }
    }

    pub fn load(&self) -> Arc<Active> {
        self.current.load_full()
    }

    /// Installs a new snapshot; cluster state (DNS answers, balancer position) carries over
    /// for clusters whose definition did not change.
    pub fn store(&self, snapshot: Arc<Snapshot>) {
        let upstreams = Arc::new(Upstreams::bind(&snapshot, &self.registry));
        self.current.store(Arc::new(Active {
            snapshot,
            upstreams,
        }));
    }
}
