//! Keep-alive connection pool, keyed by (cluster, endpoint): HTTP/1.1 connections speak
//! Egret's own codec ([`crate::h1`]), HTTP/2 ones `hyper::client::conn::http2`.
//!
//! Our own pool rather than hyper-util's legacy client: that one cannot cap connections or
//! requests per connection (DestinationRule's connectionPool needs both), nor report which
//! local address a request left from (`%UPSTREAM_LOCAL_ADDRESS%`).
//!
//! HTTP/1.1: a connection carries one request at a time; it returns to the idle list when the
//! response body has been read to the end ([`PooledConn::release`]), and is dropped (closed)
//! otherwise. While idle nothing reads it: a checkout, and a sweep every second while the
//! list is not empty, drop the ones the upstream closed (or that idled too long); the sweep
//! also frees the read buffer of those idle since the sweep before (under load the list is
//! taken last in, first out, so a connection in use never idles that long). HTTP/2: one
//! shared connection per endpoint, multiplexed; while it is being established, other requests
//! for the endpoint wait for it instead of opening their own.
//!
//! Circuit breaking as Envoy does it: a request takes a request slot (`http2MaxRequests`);
//! then an idle connection, or a new one if `maxConnections` allows; otherwise it waits as a
//! pending request (`http1MaxPendingRequests`) until a connection frees up. Past any limit
//! the checkout fails at once with [`ConnectError::Overflow`] (Envoy's `503 UO`).

// foldhash, not SipHash: the idle-connection map is hashed twice per request (callgrind).
use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use egret_core::limits::{MAX_IDLE_PER_ENDPOINT, UPSTREAM_IDLE_TIMEOUT};
use egret_core::{ConnectionPool, TlsMode, UpstreamProtocol};
use egret_tls::UpstreamTlsContexts;

use crate::body::UpstreamBody;
use crate::circuit::{Circuit, Slot};
use crate::cluster::ClusterState;
use crate::connect::{connect_with, ConnectError};
use crate::error::UpstreamError;
use crate::h1::{self, H1Conn};
use crate::outlier::{ActiveRequest, Endpoint, OpenConnection};
use crate::response::UpstreamResponseBody;

/// How often idle HTTP/1.1 connections are checked for a close by the upstream.
const IDLE_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Connections are shared only between requests of the same cluster, endpoint and TLS
/// settings (a reload that changes a cluster's TLS gets fresh connections).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    cluster: Arc<str>,
    addr: SocketAddr,
    tls: u64,
}

/// What a connection has done, for `maxRequestsPerConnection` and `maxConnectionDuration`.
#[derive(Clone, Copy, Debug)]
struct ConnAge {
    created: Instant,
    /// Requests sent on it, this one included.
    served: u32,
}

/// What an HTTP/1.1 connection holds as long as it is open: its place under
/// `maxConnections`, and its count in the endpoint's `cx_active`.
struct ConnHold {
    _slot: Slot,
    _open: OpenConnection,
}

/// An originated TLS session's facts for the access log (None on plain connections).
type TlsInfo = Option<Arc<egret_core::UpstreamTlsInfo>>;

struct IdleConn {
    conn: Box<H1Conn>,
    hold: ConnHold,
    local: SocketAddr,
    tls: TlsInfo,
    since: Instant,
    /// The cluster's idle timeout for it.
    idle_timeout: Duration,
    age: ConnAge,
}

impl IdleConn {
    /// Still open on the upstream's side, and not idle too long.
    fn usable(&mut self) -> bool {
        self.since.elapsed() <= self.idle_timeout && self.conn.is_reusable()
    }
}

#[derive(Clone)]
struct H2Conn {
    sender: http2::SendRequest<UpstreamBody>,
    local: SocketAddr,
    tls: TlsInfo,
    created: Instant,
    /// Streams opened on it so far.
    streams: Arc<AtomicU32>,
}

#[derive(Clone)]
enum H2Entry {
    /// A request is establishing the connection; others wait for it.
    Connecting,
    Ready(H2Conn),
}

#[derive(Default)]
struct PoolInner {
    idle: Mutex<HashMap<PoolKey, Vec<IdleConn>>>,
    h2: Mutex<HashMap<PoolKey, H2Entry>>,
    /// A sweep of the idle connections is scheduled.
    sweeping: AtomicBool,
    /// Read buffers freed by the sweep, of connections idle for a sweep interval.
    buffer_releases: AtomicU64,
}

/// Shared by every listener and snapshot; cheap to clone.
///
/// One set of connections per worker runtime: a connection's I/O is driven by the runtime
/// that opened it, so a request on worker A must not use a connection of worker B (every
/// read would wake B's thread). Envoy keeps its pools per worker for the same reason.
#[derive(Clone)]
pub struct Pool {
    workers: Arc<[Arc<PoolInner>]>,
    tls: Option<Arc<UpstreamTlsContexts>>,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            workers: Arc::from([Arc::default()]),
            tls: None,
        }
    }
}

enum Sender {
    /// The connection is out (in the response body) while a response is read.
    H1 {
        conn: Option<Box<H1Conn>>,
        hold: ConnHold,
    },
    H2(http2::SendRequest<UpstreamBody>),
}

/// A connection checked out for one request. Holds the request's circuit-breaker slot and
/// the endpoint's in-flight count until it is released or dropped.
pub struct PooledConn {
    sender: Sender,
    key: PoolKey,
    local: SocketAddr,
    tls: TlsInfo,
    reused: bool,
    pool: Arc<PoolInner>,
    age: ConnAge,
    circuit: Arc<Circuit>,
    _request: Slot,
    /// The endpoint's in-flight count; also where the request's outcome is counted.
    active: ActiveRequest,
}

/// Why sending a request upstream failed, in Envoy's terms.
#[derive(Debug, thiserror::Error)]
#[error("upstream request failed: {source}")]
pub struct SendError {
    pub source: UpstreamError,
    /// The request never left: it can go out again on another connection.
    pub request: Option<Request<UpstreamBody>>,
}

impl SendError {
    /// Envoy's reset reason: `connection termination`, `protocol error` or `remote reset`.
    pub fn reset_reason(&self) -> &'static str {
        self.source.reset_reason()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `Connecting` mark of one key, held by the request establishing the connection.
struct Connecting<'a> {
    pool: &'a PoolInner,
    key: &'a PoolKey,
    circuit: &'a Circuit,
    /// A connection was attempted under the mark. Only then is there news for the waiters:
    /// a mark lifted because no slot was free changes nothing for them (they wake when a
    /// slot frees), and waking them — ourselves included — would spin the loop.
    attempted: bool,
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        {
            let mut map = lock(&self.pool.h2);
            if matches!(map.get(self.key), Some(H2Entry::Connecting)) {
                map.remove(self.key);
            }
        }
        if self.attempted {
            self.circuit.available.notify_waiters();
        }
    }
}

/// What a checkout found in the HTTP/2 table.
enum H2State {
    Ready(PooledParts),
    Connecting,
    Absent,
}

/// A usable connection before it is wrapped with the request's slots.
struct PooledParts {
    sender: Sender,
    local: SocketAddr,
    tls: TlsInfo,
    reused: bool,
    age: ConnAge,
    /// The worker's pool the connection belongs to (and returns to when released).
    home: Arc<PoolInner>,
}

impl PoolInner {
    /// The shared HTTP/2 connection to this endpoint if it can take another stream; marks the
    /// key as connecting when there is none and `claim` is set.
    fn h2_state(self: &Arc<Self>, key: &PoolKey, limits: &ConnectionPool, claim: bool) -> H2State {
        let mut map = lock(&self.h2);
        match map.get(key).cloned() {
            Some(H2Entry::Connecting) => H2State::Connecting,
            Some(H2Entry::Ready(c)) => {
                let expired = limits
                    .max_connection_duration
                    .is_some_and(|d| c.created.elapsed() >= d);
                if c.sender.is_closed() || !c.sender.is_ready() || expired {
                    // Closed, or draining: new streams go to a new connection.
                    map.remove(key);
                    if claim {
                        map.insert(key.clone(), H2Entry::Connecting);
                    }
                    return H2State::Absent;
                }
                let served = c.streams.fetch_add(1, Ordering::AcqRel) + 1;
                if limits
                    .max_requests_per_connection
                    .is_some_and(|max| served >= max)
                {
                    // Its last stream: later requests open a new connection.
                    map.remove(key);
                }
                H2State::Ready(PooledParts {
                    sender: Sender::H2(c.sender),
                    local: c.local,
                    tls: c.tls,
                    reused: true,
                    age: ConnAge {
                        created: c.created,
                        served,
                    },
                    home: self.clone(),
                })
            }
            None => {
                if claim {
                    map.insert(key.clone(), H2Entry::Connecting);
                }
                H2State::Absent
            }
        }
    }

    /// An idle HTTP/1.1 connection to this endpoint that is still usable (the ones the
    /// upstream closed meanwhile are dropped on the way).
    fn take_idle(self: &Arc<Self>, key: &PoolKey) -> Option<PooledParts> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(key)?;
        while let Some(mut c) = list.pop() {
            if !c.usable() {
                continue;
            }
            return Some(PooledParts {
                sender: Sender::H1 {
                    conn: Some(c.conn),
                    hold: c.hold,
                },
                local: c.local,
                tls: c.tls,
                reused: true,
                age: ConnAge {
                    created: c.age.created,
                    served: c.age.served + 1,
                },
                home: self.clone(),
            });
        }
        None
    }

    /// Schedules a sweep of this worker's idle connections unless one is: every
    /// [`IDLE_SWEEP_INTERVAL`] while any is idle, it closes those the upstream closed or that
    /// idled past their timeout, so they neither linger half-closed nor hold their
    /// `maxConnections` place.
    fn sweep_later(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            // Lifts the mark however the task ends (its runtime shutting down included), so a
            // later release can schedule a sweep again.
            struct Unmark {
                inner: std::sync::Weak<PoolInner>,
                armed: bool,
            }
            impl Drop for Unmark {
                fn drop(&mut self) {
                    if let Some(inner) = self.inner.upgrade().filter(|_| self.armed) {
                        inner.sweeping.store(false, Ordering::Release);
                    }
                }
            }
            let mut unmark = Unmark {
                inner: weak.clone(),
                armed: true,
            };
            loop {
                tokio::time::sleep(IDLE_SWEEP_INTERVAL).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let (closed, empty) = {
                    let mut idle = lock(&inner.idle);
                    let mut closed = Vec::new();
                    idle.retain(|_, list| {
                        let mut i = 0;
                        while i < list.len() {
                            if list[i].usable() {
                                // Idle since before the last sweep: its read buffer goes.
                                // One that is in use under load never idles that long
                                // (the idle list is last in, first out).
                                if list[i].since.elapsed() >= IDLE_SWEEP_INTERVAL
                                    && list[i].conn.release_buffer()
                                {
                                    inner.buffer_releases.fetch_add(1, Ordering::Relaxed);
                                }
                                i += 1;
                            } else {
                                closed.push(list.remove(i));
                            }
                        }
                        !list.is_empty()
                    });
                    let empty = idle.is_empty();
                    if empty {
                        // Lifted under the lock: a release after this schedules a new sweep.
                        inner.sweeping.store(false, Ordering::Release);
                    }
                    (closed, empty)
                };
                // Closed outside the lock (dropping a connection's slot wakes waiters).
                drop(closed);
                if empty {
                    // The mark is lifted already; a new sweep may own it by now.
                    unmark.armed = false;
                    return;
                }
            }
        });
    }
}

impl Pool {
    /// A pool without TLS origination (plain clusters only).
    pub fn new() -> Pool {
        Pool::default()
    }

    /// A pool that originates TLS for clusters with `tls` set, using these contexts.
    pub fn with_tls(tls: Arc<UpstreamTlsContexts>) -> Pool {
        Pool {
            tls: Some(tls),
            ..Pool::default()
        }
    }

    /// Builds the TLS contexts these clusters originate with — the system trust store loaded
    /// (~50 ms for a distribution's 150 roots), the client configs made — so that the first
    /// connection to each does not pay for it on the data path (an audit against Envoy 1.40
    /// saw 25-70 ms more on the first request per host). Contexts already built are looked up.
    /// Blocking: call it off the workers (start-up, or `spawn_blocking` on reload).
    pub fn prepare_tls<'a>(&self, clusters: impl IntoIterator<Item = &'a egret_core::Cluster>) {
        let Some(contexts) = &self.tls else { return };
        for c in clusters {
            if let Some(tls) = &c.tls {
                contexts.context(tls, origination_alpn(tls.mode, c.protocol));
            }
        }
    }

    /// The same pool with one set of connections per worker (`workers` ≥ 1), indexed by
    /// [`egret_core::worker::current`].
    pub fn per_worker(self, workers: usize) -> Pool {
        Pool {
            workers: (0..workers.max(1)).map(|_| Arc::default()).collect(),
            ..self
        }
    }

    /// How many read buffers of idle HTTP/1.1 connections were freed, all workers (a
    /// connection idle in the pool across a sweep keeps its socket only).
    pub fn buffer_releases(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.buffer_releases.load(Ordering::Relaxed))
            .sum()
    }

    /// This worker's connections.
    fn inner(&self) -> &Arc<PoolInner> {
        &self.workers[egret_core::worker::current() % self.workers.len()]
    }

    /// A ready connection to `endpoint` (as [`ClusterState::pick_endpoint`] gave it) for
    /// `cluster`: a pooled one if any, else a new one (TCP connect, then TLS when the cluster
    /// originates it, then the HTTP handshake for the protocol chosen: the cluster's, or what
    /// ALPN negotiated), within the cluster's circuit-breaker limits. The endpoint's
    /// in-flight, request and connection counts (`/clusters`) are kept on `endpoint`.
    pub async fn checkout(
        &self,
        cluster: &ClusterState,
        endpoint: &Arc<Endpoint>,
    ) -> Result<PooledConn, ConnectError> {
        let spec = &cluster.spec;
        let circuit = cluster.circuit().clone();
        let key = PoolKey {
            cluster: spec.name.clone(),
            addr: endpoint.addr,
            tls: cluster.tls_key(),
        };
        // Envoy checks the request limit first, then looks for a connection.
        let request = circuit.try_request().ok_or(ConnectError::Overflow {
            limit: "http2MaxRequests",
        })?;
        let active = endpoint.begin_request();
        let wrap = |p: PooledParts, request: Slot, active: ActiveRequest| PooledConn {
            sender: p.sender,
            key: key.clone(),
            local: p.local,
            tls: p.tls,
            reused: p.reused,
            pool: p.home,
            age: p.age,
            circuit: circuit.clone(),
            _request: request,
            active,
        };
        let limits = &circuit.limits;
        let h2_only = spec.protocol == UpstreamProtocol::Http2;
        let mut pending: Option<Slot> = None;
        loop {
            // Registered before looking, so a release between the look and the wait is seen.
            let available = circuit.available.notified();
            tokio::pin!(available);
            available.as_mut().enable();

            match self.inner().h2_state(&key, limits, h2_only) {
                H2State::Ready(p) => return Ok(wrap(p, request, active)),
                H2State::Connecting => {}
                H2State::Absent if h2_only => {
                    // We hold the key's `Connecting` mark; the guard lifts it if we fail, give
                    // up or are cancelled, and wakes the requests waiting for it.
                    let mut connecting = Connecting {
                        pool: self.inner(),
                        key: &key,
                        circuit: &circuit,
                        attempted: false,
                    };
                    let slot = match circuit.try_connection() {
                        Some(slot) => slot,
                        None => {
                            if let Some(p) = self.borrow(&key, limits) {
                                return Ok(wrap(p, request, active));
                            }
                            // At the limit with no HTTP/2 connection to this endpoint on any
                            // worker: the slots are held by connections to other endpoints,
                            // which an idle HTTP/2 connection never gives back. Envoy opens
                            // one anyway (a pool with no connection to the host always may).
                            circuit.force_connection()
                        }
                    };
                    connecting.attempted = true;
                    let r = self.connect(cluster, &key, slot, endpoint).await;
                    return r.map(|p| wrap(p, request, active));
                }
                H2State::Absent => {
                    if let Some(p) = self.inner().take_idle(&key) {
                        return Ok(wrap(p, request, active));
                    }
                    if let Some(slot) = circuit.try_connection() {
                        return self
                            .connect(cluster, &key, slot, endpoint)
                            .await
                            .map(|p| wrap(p, request, active));
                    }
                    if let Some(p) = self.borrow(&key, limits) {
                        return Ok(wrap(p, request, active));
                    }
                    // At the connection limit: an idle connection to another endpoint of
                    // this cluster gives up its place.
                    self.evict_idle(&key);
                }
            }
            if pending.is_none() {
                pending = Some(circuit.try_pending().ok_or(ConnectError::Overflow {
                    limit: "http1MaxPendingRequests",
                })?);
            }
            available.await;
        }
    }

    /// TCP (+ TLS) + HTTP handshake; `slot` is the connection's place under maxConnections and
    /// lives as long as the connection. Counted in the endpoint's `cx_total`, and
    /// `cx_connect_fail` when it fails.
    async fn connect(
        &self,
        cluster: &ClusterState,
        key: &PoolKey,
        slot: Slot,
        endpoint: &Arc<Endpoint>,
    ) -> Result<PooledParts, ConnectError> {
        endpoint.connection_attempt();
        // Boxed: the TCP + TLS + HTTP handshake futures are several KB, and inline they would
        // size every request's future (which hyper allocates per request) although only a
        // request that opens a connection runs them.
        let r = Box::pin(self.establish(cluster, key, slot, endpoint)).await;
        if r.is_err() {
            endpoint.connect_failed();
        }
        r
    }

    async fn establish(
        &self,
        cluster: &ClusterState,
        key: &PoolKey,
        slot: Slot,
        endpoint: &Arc<Endpoint>,
    ) -> Result<PooledParts, ConnectError> {
        let spec = &cluster.spec;
        let addr = key.addr;
        let stream = connect_with(
            addr,
            spec.connect_timeout,
            spec.traffic.pool.tcp_keepalive.as_ref(),
        )
        .await?;
        let local = stream.local_addr().unwrap_or_else(|_| unspecified());
        match &spec.tls {
            None if spec.protocol == UpstreamProtocol::Http2 => {
                self.handshake_h2(TokioIo::new(stream), key, (local, None), slot, endpoint)
                    .await
            }
            None => Ok(self.open_h1(h1::Io::Tcp(stream), (local, None), slot, endpoint)),
            Some(tls) => {
                let Some(contexts) = &self.tls else {
                    return Err(ConnectError::TlsSetup {
                        addr,
                        message: "TLS origination is not set up in this process".into(),
                    });
                };
                let alpn = origination_alpn(tls.mode, spec.protocol);
                let ctx = contexts.context(tls, alpn);
                let config = ctx.client_config().map_err(|e| ConnectError::TlsSetup {
                    addr,
                    message: e.to_string(),
                })?;
                let (tls_stream, negotiated) =
                    egret_tls::connect_tls(stream, config, ctx.sni(), spec.connect_timeout)
                        .await
                        .map_err(|source| ConnectError::Tls { addr, source })?;
                let h2 = negotiated.as_deref() == Some(b"h2")
                    || spec.protocol == UpstreamProtocol::Http2;
                let info = Some(Arc::new(egret_tls::upstream_tls_info(
                    tls_stream.get_ref().1,
                )));
                let io = egret_tls::CloseNotifyOptional(tls_stream);
                if h2 {
                    self.handshake_h2(TokioIo::new(io), key, (local, info), slot, endpoint)
                        .await
                } else {
                    Ok(self.open_h1(h1::Io::Tls(Box::new(io)), (local, info), slot, endpoint))
                }
            }
        }
    }

    /// An HTTP/1.1 connection needs no handshake: it is ready to carry a request.
    fn open_h1(
        &self,
        io: h1::Io,
        (local, tls): (SocketAddr, TlsInfo),
        slot: Slot,
        endpoint: &Arc<Endpoint>,
    ) -> PooledParts {
        PooledParts {
            sender: Sender::H1 {
                conn: Some(H1Conn::new(io)),
                hold: ConnHold {
                    _slot: slot,
                    _open: endpoint.open_connection(),
                },
            },
            local,
            tls,
            reused: false,
            age: ConnAge {
                created: Instant::now(),
                served: 1,
            },
            home: self.inner().clone(),
        }
    }

    async fn handshake_h2<IO>(
        &self,
        io: IO,
        key: &PoolKey,
        (local, tls): (SocketAddr, TlsInfo),
        slot: Slot,
        endpoint: &Arc<Endpoint>,
    ) -> Result<PooledParts, ConnectError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let addr = key.addr;
        let age = ConnAge {
            created: Instant::now(),
            served: 1,
        };
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        let open = endpoint.open_connection();
        let circuit = slot.circuit().clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _open = open;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        let entry = H2Conn {
            sender: sender.clone(),
            local,
            tls: tls.clone(),
            created: age.created,
            streams: Arc::new(AtomicU32::new(1)),
        };
        lock(&self.inner().h2).insert(key.clone(), H2Entry::Ready(entry));
        // Requests waiting at the connection limit can share it now (an HTTP/1.1-or-h2
        // cluster that negotiated h2 holds no `Connecting` mark, so nothing else would
        // wake them).
        circuit.available.notify_waiters();
        Ok(PooledParts {
            sender: Sender::H2(sender),
            local,
            tls,
            reused: false,
            age,
            home: self.inner().clone(),
        })
    }

    /// At the connection limit, a request may use another worker's connection rather than
    /// wait: an idle HTTP/1.1 one, or a shared HTTP/2 one that takes another stream. Its I/O
    /// stays on the worker that opened it (a cross-thread wake-up per read), which only
    /// happens when maxConnections is smaller than what the workers would open each.
    fn borrow(&self, key: &PoolKey, limits: &ConnectionPool) -> Option<PooledParts> {
        let mine = self.inner();
        for other in self.workers.iter().filter(|w| !Arc::ptr_eq(w, mine)) {
            if let H2State::Ready(p) = other.h2_state(key, limits, false) {
                return Some(p);
            }
            if let Some(p) = other.take_idle(key) {
                return Some(p);
            }
        }
        None
    }

    /// Closes the oldest idle connection of the same cluster to another endpoint (its slot
    /// comes back when the connection task ends, which wakes the waiters). Looks at every
    /// worker's connections: `maxConnections` is one limit for the whole cluster.
    fn evict_idle(&self, key: &PoolKey) {
        let oldest = |inner: &PoolInner| {
            lock(&inner.idle)
                .iter()
                .filter(|(k, _)| k.cluster == key.cluster && k.addr != key.addr)
                .filter_map(|(k, v)| v.first().map(|c| (c.since, k.clone())))
                .min_by_key(|(since, _)| *since)
        };
        let victim = self
            .workers
            .iter()
            .filter_map(|inner| oldest(inner).map(|(since, k)| (since, k, inner)))
            .min_by_key(|(since, ..)| *since)
            .and_then(|(_, k, inner)| {
                let mut idle = lock(&inner.idle);
                idle.get_mut(&k)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.remove(0))
            });
        drop(victim);
    }

    /// Idle HTTP/1.1 connections currently pooled for `cluster`, all workers (for tests and
    /// /clusters).
    pub fn idle_count(&self, cluster: &str) -> usize {
        self.workers
            .iter()
            .map(|inner| {
                lock(&inner.idle)
                    .iter()
                    .filter(|(k, _)| &*k.cluster == cluster)
                    .map(|(_, v)| v.len())
                    .sum::<usize>()
            })
            .sum()
    }
}

impl PooledConn {
    /// `%UPSTREAM_LOCAL_ADDRESS%`.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    /// The originated TLS session's facts (`%UPSTREAM_TLS_VERSION%`, ...); None in plain text.
    pub fn tls_info(&self) -> Option<&Arc<egret_core::UpstreamTlsInfo>> {
        self.tls.as_ref()
    }
    pub fn peer_addr(&self) -> SocketAddr {
        self.key.addr
    }
    /// Whether this connection had served a request before.
    pub fn reused(&self) -> bool {
        self.reused
    }
    pub fn is_http2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// Sends the request and reads the response head. The body streams from the
    /// connection (HTTP/1.1: it carries the connection while it is read); give it back to
    /// [`PooledConn::release`] once read to its end.
    pub async fn send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamResponseBody>, SendError> {
        let ep = self.active.endpoint();
        ep.request_sent();
        let r = match &mut self.sender {
            Sender::H1 { conn, .. } => match conn.take() {
                Some(c) => h1::send(c, req)
                    .await
                    .map(|r| r.map(UpstreamResponseBody::H1))
                    .map_err(|(source, request)| SendError { source, request }),
                None => Err(SendError {
                    source: UpstreamError::closed(),
                    request: Some(req),
                }),
            },
            Sender::H2(s) => s
                .try_send_request(req)
                .await
                .map(|r| r.map(UpstreamResponseBody::H2))
                .map_err(|mut e| {
                    let request = e.take_message();
                    SendError {
                        source: UpstreamError::http2(e.into_error()),
                        request,
                    }
                }),
        };
        match &r {
            Ok(resp) => ep.response(resp.status().as_u16()),
            // The request never left: it is sent again and counted then.
            Err(e) if e.request.is_some() => ep.request_not_sent(),
            Err(_) => ep.request_reset(),
        }
        r
    }

    /// The response was read to its end: the connection may serve another request (unless it
    /// reached `maxRequestsPerConnection` or `maxConnectionDuration`, then it closes). `body`
    /// is the response's body, which holds an HTTP/1.1 connection while it is read.
    pub fn release(self, body: &mut UpstreamResponseBody) {
        let limits = &self.circuit.limits;
        let spent = limits
            .max_requests_per_connection
            .is_some_and(|max| self.age.served >= max)
            || limits
                .max_connection_duration
                .is_some_and(|d| self.age.created.elapsed() >= d);
        let Sender::H1 { hold, .. } = self.sender else {
            return;
        };
        let UpstreamResponseBody::H1(b) = body else {
            return;
        };
        let Some(conn) = b.take_conn() else {
            return;
        };
        if spent {
            return;
        }
        let mut idle = lock(&self.pool.idle);
        let list = idle.entry(self.key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(IdleConn {
                conn,
                hold,
                local: self.local,
                tls: self.tls,
                since: Instant::now(),
                idle_timeout: limits.idle_timeout.unwrap_or(UPSTREAM_IDLE_TIMEOUT),
                age: self.age,
            });
        }
        drop(idle);
        self.pool.sweep_later();
        self.circuit.available.notify_waiters();
    }
}

/// The ALPN list Istio configures Envoy to offer when it originates TLS: ISTIO_MUTUAL
/// announces an in-mesh peer (`istio-peer-exchange`, `istio`, then `h2` for an HTTP/2
/// cluster: `ALPNInMeshWithMxc` / `ALPNInMeshH2WithMxc`, which an Istio sidecar's inbound
/// listener matches on); SIMPLE and MUTUAL offer `h2` for an HTTP2/GRPC cluster and
/// `http/1.1` otherwise (checked with Envoy 1.40 through a server offering both: it offers
/// `http/1.1`, its HTTP/1.1 pool's fallback, and nginx with http2 on answers over HTTP/1.1).
fn origination_alpn(mode: TlsMode, protocol: UpstreamProtocol) -> &'static [&'static [u8]] {
    match (
        mode == TlsMode::IstioMutual,
        protocol == UpstreamProtocol::Http2,
    ) {
        (true, true) => &[b"istio-peer-exchange", b"istio", b"h2"],
        (true, false) => &[b"istio-peer-exchange", b"istio"],
        (false, true) => &[b"h2"],
        (false, false) => &[b"http/1.1"],
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}
