//! The configuration in force: a Snapshot, the cluster states bound to it, and the TLS
//! acceptors of its terminating listeners — swapped atomically on reload.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use egret_core::Snapshot;
use egret_tls::DownstreamTlsAcceptor;
use egret_upstream::{ClusterRegistry, Upstreams};

pub struct Active {
    pub snapshot: Arc<Snapshot>,
    pub upstreams: Arc<Upstreams>,
    /// By listen port, for listeners that terminate TLS. A listener whose TLS settings can
    /// never work (e.g. ISTIO_MUTUAL without `--mesh-certs`) has its error here instead.
    pub acceptors: HashMap<u16, Result<Arc<DownstreamTlsAcceptor>, String>>,
}

/// Where terminating listeners find their certificates.
#[derive(Clone, Debug, Default)]
pub struct TlsDirs {
    pub credentials_dir: Option<PathBuf>,
    pub mesh_certs_dir: Option<PathBuf>,
}

/// Shared, lock-free for readers: each new connection does one `load_full()`, and an HTTP
/// connection one more for its first request after each reload.
pub struct ActiveConfig {
    current: ArcSwap<Active>,
    /// Bumped by every `store`: how a connection tells, with one relaxed load per request,
    /// that the configuration its context was made from is no longer the one in force.
    generation: AtomicU64,
    registry: ClusterRegistry,
    tls_dirs: TlsDirs,
}

impl ActiveConfig {
    pub fn new(snapshot: Arc<Snapshot>) -> ActiveConfig {
        Self::with_tls(snapshot, TlsDirs::default())
    }

    pub fn with_tls(snapshot: Arc<Snapshot>, tls_dirs: TlsDirs) -> ActiveConfig {
        let registry = ClusterRegistry::default();
        let active = build(snapshot, &registry, &tls_dirs);
        ActiveConfig {
            current: ArcSwap::from_pointee(active),
            generation: AtomicU64::new(0),
            registry,
            tls_dirs,
        }
    }

    pub fn load(&self) -> Arc<Active> {
        self.current.load_full()
    }

    /// Installs a new snapshot; cluster state (DNS answers, balancer position) carries over
    /// for clusters whose definition did not change.
    pub fn store(&self, snapshot: Arc<Snapshot>) {
        self.current
            .store(Arc::new(build(snapshot, &self.registry, &self.tls_dirs)));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes with every `store`. Read it before `load`: a store in between then only
    /// makes the caller look again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

fn build(snapshot: Arc<Snapshot>, registry: &ClusterRegistry, dirs: &TlsDirs) -> Active {
    let upstreams = Arc::new(Upstreams::bind(&snapshot, registry));
    let mut acceptors = HashMap::new();
    for l in snapshot
        .listeners
        .iter()
        .filter(|l| !l.tls_servers.is_empty())
    {
        let acceptor = DownstreamTlsAcceptor::new(&l.tls_servers, dirs.credentials_dir.clone(), dirs.mesh_certs_dir.clone())
            .map(Arc::new)
            .map_err(|e| {
                tracing::error!(listener = %l.name, error = %e, "TLS termination cannot work; connections will be closed");
                e.to_string()
            });
        acceptors.insert(l.listen_port, acceptor);
    }
    Active {
        snapshot,
        upstreams,
        acceptors,
    }
}
