//! Binding, accepting, reloading the set of listeners, and draining.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use egret_core::{ListenerRoutes, LogGuard, LogRecord, ResponseFlags, Snapshot};
use egret_http::{ConnContext, DownstreamTlsFacts, HttpShared};

use crate::http::Contexts;

use crate::active::{Active, ActiveConfig};

pub struct GatewayOptions {
    pub bind: IpAddr,
    /// How long a TLS passthrough client has to send its ClientHello (Envoy's
    /// `listener_filters_timeout`, 15 s by default).
    pub client_hello_timeout: Duration,
    /// Idle timeout of passthrough and TCP connections (Istio's default: 1 h).
    pub tcp_idle_timeout: Duration,
    /// Passthrough bytes move with splice(2) instead of the user-space copy.
    pub passthrough_splice: bool,
    /// How long a downstream HTTP/1.1 connection may wait for a request (Envoy: 1 h).
    pub http_idle_timeout: Duration,
    /// How long an idle HTTP/1.1 connection keeps its read buffer after a response.
    pub http_release_delay: Duration,
    /// How long a request or its response body may wait without moving (Envoy's
    /// `stream_idle_timeout`, 5 min); zero disables it.
    pub stream_idle_timeout: Duration,
}

impl GatewayOptions {
    pub fn new(bind: IpAddr) -> GatewayOptions {
        GatewayOptions {
            bind,
            client_hello_timeout: egret_core::limits::LISTENER_FILTER_TIMEOUT,
            tcp_idle_timeout: egret_core::limits::TCP_IDLE_TIMEOUT,
            passthrough_splice: false,
            http_idle_timeout: egret_core::limits::HTTP_IDLE_TIMEOUT,
            http_release_delay: egret_core::limits::HTTP_BUFFER_RELEASE_DELAY,
            stream_idle_timeout: egret_core::limits::STREAM_IDLE_TIMEOUT,
        }
    }
}

/// The running data plane: the configuration in force, the shared upstream machinery, the
/// accept loops by port, and the drain signal every connection watches.
pub struct Gateway {
    pub config: Arc<ActiveConfig>,
    pub shared: Arc<HttpShared>,
    pub options: GatewayOptions,
    accepting: Mutex<HashMap<u16, JoinHandle<()>>>,
    drain: watch::Sender<bool>,
    /// Turned true when the drain timeout has passed: passthrough and TCP sessions still
    /// open end then, and are logged with what they moved.
    stopping: watch::Sender<bool>,
    workers: Workers,
    /// What every downstream HTTP connection is served with; also the drain's wake-up for
    /// idle connections and the count of buffer releases.
    http: Arc<crate::http::HttpOptions>,
    /// TLS handshakes a terminating port refused or gave up on (no access-log line, as
    /// Envoy): `egret_downstream_tls_handshake_failures_total`.
    tls_handshake_failures: AtomicU64,
}

/// Thread-per-core: one single-threaded runtime per worker. The accept loops run on one of
/// them and hand each connection to the worker with the fewest open connections; the
/// connection then lives on that worker only (its upstream connections too), so no request
/// ever wakes a second thread. Chosen over `SO_REUSEPORT` listeners per worker: the kernel's
/// hash spreads a handful of connections unevenly, and a second process could bind the same
/// port without an error. Without worker handles, everything runs on the accepting runtime,
/// counted as worker 0.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    /// Per worker: connections open, connections accepted.
    open: Arc<[AtomicUsize]>,
    accepted: Box<[AtomicU64]>,
}

impl Workers {
    fn new(handles: Vec<tokio::runtime::Handle>) -> Workers {
        let n = handles.len().max(1);
        Workers {
            handles,
            open: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            accepted: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The worker with the fewest open connections (the lowest index on a tie).
    fn least_loaded(&self) -> usize {
        (0..self.open.len())
            .min_by_key(|&i| self.open[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The runtime of `worker` when it is not the one running this code.
    fn other(&self, worker: usize) -> Option<&tokio::runtime::Handle> {
        self.handles
            .get(worker)
            .filter(|_| worker != egret_core::worker::current())
    }
}

impl Gateway {
    /// `workers`: the worker runtimes accepted connections are handed to, indexed as in
    /// [`egret_core::worker`]; empty to serve them on the runtime that accepts.
    pub fn new(
        config: Arc<ActiveConfig>,
        shared: Arc<HttpShared>,
        options: GatewayOptions,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Arc<Gateway> {
        let (drain, draining) = watch::channel(false);
        let http = Arc::new(crate::http::HttpOptions {
            idle_timeout: options.http_idle_timeout,
            release_delay: options.http_release_delay,
            releases: Arc::new(AtomicU64::new(0)),
            drain_started: Arc::new(tokio::sync::Notify::new()),
            drain: draining,
        });
        Arc::new(Gateway {
            config,
            shared,
            options,
            accepting: Mutex::new(HashMap::new()),
            drain,
            stopping: watch::channel(false).0,
            workers: Workers::new(workers),
            http,
            tls_handshake_failures: Default::default(),
        })
    }

    /// Per worker: (connections open, connections accepted so far). One entry when the
    /// gateway runs on a single runtime.
    pub fn worker_connections(&self) -> Vec<(usize, u64)> {
        let w = &self.workers;
        (0..w.open.len())
            .map(|i| {
                (
                    w.open[i].load(Ordering::Relaxed),
                    w.accepted[i].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Binds and starts accepting on every listener of the current snapshot not yet bound,
    /// and stops accepting on ports the snapshot no longer has (their open connections
    /// finish undisturbed). Used at start and after each reload. Fails on the first port
    /// that cannot be bound; ports already started stay up.
    pub fn sync_listeners(self: &Arc<Self>) -> io::Result<()> {
        let snapshot = self.config.load().snapshot.clone();
        let mut accepting = lock(&self.accepting);
        let wanted: Vec<u16> = snapshot.listeners.iter().map(|l| l.listen_port).collect();
        accepting.retain(|port, task| {
            let keep = wanted.contains(port);
            if !keep {
                tracing::info!(port, "listener removed: no longer accepting");
                task.abort();
            }
            keep
        });
        if *self.drain.borrow() {
            return Ok(());
        }
        for l in &snapshot.listeners {
            if accepting.contains_key(&l.listen_port) {
                continue;
            }
            let addr = SocketAddr::new(self.options.bind, l.listen_port);
            let listener = bind_listener(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            tracing::info!(listener = %l.name, %addr, protocol = ?l.protocol, "listening");
            accepting.insert(l.listen_port, self.spawn_accept(l.listen_port, listener));
        }
        Ok(())
    }

    /// The ports currently accepting.
    pub fn listening_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = lock(&self.accepting).keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn spawn_accept(self: &Arc<Self>, listen_port: u16, listener: TcpListener) -> JoinHandle<()> {
        let gw = self.clone();
        tokio::spawn(async move {
            // Failures since the last warning, and when that was: at most one a second.
            let mut failed = 0u64;
            let mut warned: Option<tokio::time::Instant> = None;
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => gw.dispatch(listen_port, stream, remote),
                    Err(e) => {
                        failed += 1;
                        if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            tracing::warn!(error = %e, port = listen_port, failures = failed, "accept failed");
                            warned = Some(tokio::time::Instant::now());
                            failed = 0;
                        }
                        // EMFILE and friends: back off briefly instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    }

    /// Starts serving an accepted connection: here, or on the least loaded worker. What the
    /// connection needs is worked out here, before its task exists, so the task's future
    /// holds that and nothing twice: for a plain-HTTP connection that future is the whole of
    /// what an idle connection costs (benches/RESULTS.md, memory per idle connection).
    fn dispatch(self: &Arc<Self>, listen_port: u16, stream: TcpStream, remote: SocketAddr) {
        let workers = &self.workers;
        let worker = workers.least_loaded();
        let other = workers.other(worker);
        let stream = match other {
            None => stream,
            // The socket moves to the other runtime's reactor: deregistered here, registered
            // there (two epoll_ctl calls per connection, none per request).
            Some(runtime) => {
                let _on_worker = runtime.enter();
                match stream.into_std().and_then(TcpStream::from_std) {
                    Ok(s) => s,
                    Err(e) => {
                        return tracing::warn!(error = %e, "cannot hand the connection to a worker")
                    }
                }
            }
        };
        let open = OpenConnection::new(workers.open.clone(), worker);
        workers.accepted[worker].fetch_add(1, Ordering::Relaxed);
        let spawn = |task: Pin<Box<dyn Future<Output = ()> + Send>>| match other {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        };
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(self.options.bind, listen_port));
        let active = self.config.load();
        let Some(listener) = active.snapshot.listener_on(listen_port) else {
            // The listener was removed by a reload since the accept.
            return;
        };
        match &listener.routes {
            ListenerRoutes::Http(_) => {
                let conn = PlainHttpConn {
                    local,
                    remote,
                    config: self.config.clone(),
                    accepted: active.clone(),
                    listen_port,
                    _open: open,
                };
                // Not boxed, unlike the other kinds: boxed, a waiting connection would hold
                // the box's state beside the task's own.
                let task = crate::http::serve_http(
                    crate::http::Held::new(stream),
                    self.shared.clone(),
                    conn,
                    self.http.clone(),
                );
                match other {
                    Some(runtime) => drop(runtime.spawn(task)),
                    None => drop(tokio::spawn(task)),
                }
            }
            ListenerRoutes::Https(_) => {
                let gw = self.clone();
                spawn(Box::pin(async move {
                    gw.serve_https(&active, listen_port, stream, local, remote)
                        .await;
                    drop(open);
                }));
            }
            ListenerRoutes::Sni(_) | ListenerRoutes::Tcp(_) => {
                spawn(Box::pin(crate::tcp::serve_tcp(
                    self.clone(),
                    active,
                    listen_port,
                    stream,
                    local,
                    remote,
                    open,
                )));
            }
        }
    }

    /// Terminates TLS (server chosen by SNI), then serves HTTP on the decrypted stream.
    ///
    /// What is logged for a connection that never gets that far follows Envoy 1.40 under
    /// Istio, whose gateway listeners log only `NR` at the connection level (checked with
    /// it): a ClientHello whose SNI no server takes, or no SNI where none takes that, and
    /// bytes that are not TLS at all, are one `0 NR filter_chain_not_found` record (no filter
    /// chain matched); a handshake the server refuses (no or an untrusted client
    /// certificate, a protocol error), one that times out, and a server whose credentials
    /// are unusable leave no line — the HTTP connection manager never saw a request. A
    /// connection closed before the gateway wrote to it (no server, not TLS) is reset, as
    /// Envoy resets it; a refused handshake ends with its alert and a FIN.
    async fn serve_https(
        &self,
        active: &Arc<Active>,
        listen_port: u16,
        stream: TcpStream,
        local: SocketAddr,
        remote: SocketAddr,
    ) {
        let no_filter_chain = |sni: Option<String>| {
            let mut rec = LogRecord::new(local, remote, active.snapshot.version.clone());
            rec.set_flag(ResponseFlags::NO_ROUTE_FOUND);
            rec.response_code_details = Some("filter_chain_not_found".into());
            rec.requested_server_name = sni.map(|s| Arc::from(s.as_str()));
            LogGuard::new(rec, self.shared.sink.clone()).finish();
        };
        let failed = || {
            self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
        };
        let acceptor = match active.acceptors.get(&listen_port) {
            Some(Ok(a)) => a.clone(),
            Some(Err(e)) => {
                failed();
                return tracing::debug!(%remote, error = %e, "the port's TLS servers cannot be set up");
            }
            None => return failed(),
        };
        let stream = crate::unanswered::ResetIfUnanswered::new(stream);
        let mut accepted =
            match tokio::time::timeout(self.options.client_hello_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "downstream TLS handshake failed");
                    return match e {
                        // A TCP health check: no line, not a failed handshake.
                        egret_tls::AcceptError::Silent => {}
                        egret_tls::AcceptError::NoMatchingServer { sni } => no_filter_chain(sni),
                        egret_tls::AcceptError::ClientHello(e)
                            if e.kind() == std::io::ErrorKind::InvalidData =>
                        {
                            no_filter_chain(None)
                        }
                        _ => failed(),
                    };
                }
                Err(_) => {
                    failed();
                    return tracing::debug!(%remote, "downstream TLS handshake timed out");
                }
            };
        let conn = TlsHttpConn {
            local,
            remote,
            config: self.config.clone(),
            accepted: active.clone(),
            listen_port,
            tls: DownstreamTlsFacts {
                requested_server_name: accepted.sni.as_deref().map(Arc::from),
                peer_uri_san: accepted.peer_uri_san.as_deref().map(Arc::from),
                peer_cert: accepted.peer_cert.take().map(Arc::new),
                local_uri_san: accepted.local_uri_san.as_deref().map(Arc::from),
                session: accepted.session,
                xfcc: accepted
                    .xfcc
                    .as_deref()
                    .and_then(|v| http::HeaderValue::from_str(v).ok()),
            },
            server: accepted.server,
        };
        crate::http::serve_http(
            crate::http::Held::new(accepted.stream),
            self.shared.clone(),
            conn,
            self.http.clone(),
        )
        .await;
    }

    /// A count that moves with every connection accepted or closed and every HTTP/1.1 buffer
    /// release (downstream, and of idle upstream connections): how the heap trimmer tells a
    /// quiet gateway from a busy one.
    pub fn connection_events(&self) -> u64 {
        let w = &self.workers;
        let accepted: u64 = w.accepted.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        let open: u64 = w
            .open
            .iter()
            .map(|o| o.load(Ordering::Relaxed) as u64)
            .sum();
        // accepted + closed (= accepted - open) + releases.
        (2 * accepted).saturating_sub(open)
            + self.http_buffer_releases()
            + self.upstream_buffer_releases()
    }

    /// How many times an idle pooled HTTP/1.1 upstream connection released its read buffer.
    pub fn upstream_buffer_releases(&self) -> u64 {
        self.shared.pool.buffer_releases()
    }

    /// How many TLS handshakes a terminating port refused or gave up on (an SNI no server
    /// takes and non-TLS bytes are `NR` log lines instead, not counted here).
    pub fn tls_handshake_failures(&self) -> u64 {
        self.tls_handshake_failures.load(Ordering::Relaxed)
    }

    /// How many times an idle downstream HTTP/1.1 connection released its HTTP buffers.
    pub fn http_buffer_releases(&self) -> u64 {
        self.http.releases.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.load().snapshot.clone()
    }

    /// Builds the TLS contexts the configuration in force originates with (the system trust
    /// store, the client configs), so that first connections do not: blocking, ~50 ms the
    /// first time the trust store is read. Call it before listening, or off the workers.
    pub fn prepare_upstream_tls(&self) {
        let snapshot = self.snapshot();
        self.shared
            .pool
            .prepare_tls(snapshot.clusters.values().map(|c| &**c));
    }

    /// Connections currently open (all listeners, all workers).
    pub fn open_connections(&self) -> usize {
        self.workers
            .open
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }

    /// Graceful drain: stop accepting, ask HTTP connections to finish (HTTP/1.1 responses get
    /// `connection: close`, HTTP/2 connections a GOAWAY), then wait up to `timeout` for open
    /// connections to end. Returns how many were still open at the deadline.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.drain.send_replace(true);
        self.http.drain_started.notify_waiters();
        for (_, task) in lock(&self.accepting).drain() {
            task.abort();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.open_connections()
    }

    /// After the drain timeout: ends the passthrough and TCP sessions still open — each is
    /// logged with the bytes it moved, as Envoy logs the sessions it closes when it exits —
    /// and waits up to `grace` for them to close. Returns the connections still open.
    pub async fn stop_sessions(&self, grace: Duration) -> usize {
        self.stopping.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.open_connections()
    }

    /// Completes once [`Gateway::stop_sessions`] has been called.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    }
}

/// What a plain-HTTP connection's context is made from, each time a session of requests
/// starts; it also holds the connection's place in its worker's count.
struct PlainHttpConn {
    local: SocketAddr,
    remote: SocketAddr,
    config: Arc<ActiveConfig>,
    /// The configuration in force at the accept, for when a reload removes the listener.
    accepted: Arc<Active>,
    listen_port: u16,
    _open: OpenConnection,
}

impl PlainHttpConn {
    fn make(&self, active: &Active, table: &Arc<egret_core::HttpRouteTable>) -> ConnContext {
        conn_context(
            active,
            table,
            (self.local, self.remote),
            "http",
            DownstreamTlsFacts::default(),
        )
    }
}

/// A request context from the configuration `active` and the listener's route table.
fn conn_context(
    active: &Active,
    table: &Arc<egret_core::HttpRouteTable>,
    (local, remote): (SocketAddr, SocketAddr),
    scheme: &'static str,
    tls: DownstreamTlsFacts,
) -> ConnContext {
    ConnContext {
        local,
        remote,
        snapshot: active.snapshot.clone(),
        upstreams: active.upstreams.clone(),
        table: table.clone(),
        scheme,
        tls,
        h2_connection: None,
    }
}

impl Contexts for PlainHttpConn {
    fn generation(&self) -> u64 {
        self.config.generation()
    }

    fn context(&self) -> Option<Arc<ConnContext>> {
        http_context(&self.config.load(), self.listen_port, None, |a, t| {
            self.make(a, t)
        })
    }

    fn accepted_with(&self) -> Option<Arc<ConnContext>> {
        http_context(&self.accepted, self.listen_port, None, |a, t| {
            self.make(a, t)
        })
    }
}

/// A connection whose TLS a Gateway server terminated: what its requests' contexts carry
/// besides the configuration.
struct TlsHttpConn {
    local: SocketAddr,
    remote: SocketAddr,
    config: Arc<ActiveConfig>,
    /// The configuration in force at the accept, for when a reload removes the listener.
    accepted: Arc<Active>,
    listen_port: u16,
    tls: DownstreamTlsFacts,
    /// The TLS server the SNI chose (index in the listener's `tls_servers`): its route
    /// table is the connection's.
    server: usize,
}

impl TlsHttpConn {
    fn make(&self, active: &Active, table: &Arc<egret_core::HttpRouteTable>) -> ConnContext {
        conn_context(
            active,
            table,
            (self.local, self.remote),
            "https",
            self.tls.clone(),
        )
    }
}

impl Contexts for TlsHttpConn {
    fn generation(&self) -> u64 {
        self.config.generation()
    }

    fn context(&self) -> Option<Arc<ConnContext>> {
        // The handshake was made with the port's TLS servers of the accept: when a reload
        // changed them (a server gone, a new CA, mTLS turned on), the connection is drained
        // as Envoy drains one whose filter chain changed.
        let active = self.config.load();
        if !Arc::ptr_eq(&active, &self.accepted)
            && tls_servers(&active, self.listen_port)
                != tls_servers(&self.accepted, self.listen_port)
        {
            return None;
        }
        // Unchanged TLS servers: the same index is the same server.
        http_context(&active, self.listen_port, Some(self.server), |a, t| {
            self.make(a, t)
        })
    }

    fn accepted_with(&self) -> Option<Arc<ConnContext>> {
        http_context(
            &self.accepted,
            self.listen_port,
            Some(self.server),
            |a, t| self.make(a, t),
        )
    }
}

/// The TLS servers of the listener on `listen_port`, if there is one.
fn tls_servers(active: &Active, listen_port: u16) -> Option<&[egret_core::TlsServer]> {
    active
        .snapshot
        .listener_on(listen_port)
        .map(|l| l.tls_servers.as_slice())
}

/// The context from `active`, if its listener on `listen_port` routes HTTP as the
/// connection's did: in plain text (`tls_server` None), or terminating TLS with the route
/// table of TLS server `tls_server`.
fn http_context(
    active: &Active,
    listen_port: u16,
    tls_server: Option<usize>,
    make: impl FnOnce(&Active, &Arc<egret_core::HttpRouteTable>) -> ConnContext,
) -> Option<Arc<ConnContext>> {
    let listener = active.snapshot.listener_on(listen_port)?;
    let table = match (&listener.routes, tls_server) {
        (ListenerRoutes::Http(table), None) => table,
        (ListenerRoutes::Https(tables), Some(i)) => tables.get(i)?,
        _ => return None,
    };
    Some(Arc::new(make(active, table)))
}

/// Counts a connection as open on its worker until dropped.
pub(crate) struct OpenConnection {
    counters: Arc<[AtomicUsize]>,
    index: usize,
}

impl OpenConnection {
    fn new(counters: Arc<[AtomicUsize]>, index: usize) -> OpenConnection {
        counters[index].fetch_add(1, Ordering::Relaxed);
        OpenConnection { counters, index }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.counters[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}
