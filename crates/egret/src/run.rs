//! `egret run`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use egret_http::HttpShared;
use egret_listener::{ActiveConfig, Gateway, GatewayOptions, TlsDirs};
use egret_telemetry::{AccessLogWriter, Destination, LogEncoding, LogFormat};
use egret_tls::{UpstreamTlsContexts, UpstreamTlsOptions};
use egret_upstream::{Pool, Resolver, ResolverConfig};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

use egret_admin::{AdminConfig, AdminServers, GatewayCounter, Metrics, MetricsConfig, MetricsSink};
use egret_core::AccessLogSink;

use crate::admin::{GatewayAdmin, LogLevelHandle};
use crate::cli::{ConfigArgs, ConfigState, RunArgs};
use crate::reload::{fingerprint, reload, ChangeDetector, ReloadStats};

/// How often the log reminds that Egret is still waiting for its first configuration.
const WAITING_REMINDER: Duration = Duration::from_secs(60);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let log_level = init_tracing(&args.log_level);
    // Taken before reading, so a change made while we read is seen by the watcher.
    let seen = ChangeDetector::new(fingerprint(&args.config.config));
    // A configuration that does not compile stops us here (exit 1). Paths that hold no Istio
    // resource yet (an empty ConfigMap mount) are not an error: we start not ready and wait.
    let state = args.config.build_or_wait().map_err(|errors| {
        for e in &errors {
            tracing::error!("{e}");
        }
        anyhow::anyhow!("{} configuration error(s)", errors.len())
    })?;
    let snapshot = match state {
        ConfigState::Ready(compiled) => {
            for w in &compiled.warnings {
                tracing::warn!("{w}");
            }
            let snapshot = Arc::new(compiled.snapshot);
            tracing::info!(version = %snapshot.version, listeners = snapshot.listeners.len(), clusters = snapshot.clusters.len(), "configuration loaded");
            Some(snapshot)
        }
        ConfigState::Empty(why) => {
            tracing::warn!(
                "waiting for configuration in {} ({why}); not ready until Istio resources appear there",
                args.config.paths_display()
            );
            None
        }
    };

    let encoding = if args.access_log_json {
        LogEncoding::Json
    } else {
        LogEncoding::Text
    };
    let format = LogFormat::istio(encoding, args.access_log_format.as_deref().unwrap_or(""))
        .context("invalid --access-log-format")?;
    let writer = Arc::new(
        AccessLogWriter::open(&Destination::from_path(&args.access_log), format)
            .with_context(|| format!("cannot open access log {}", args.access_log))?,
    );

    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n.max(1),
    );
    // Thread-per-core: each worker is a current-thread runtime on its own thread — no work
    // stealing, LIFO slot or cross-thread wake-ups (measured in benches/RESULTS.md). Worker 0
    // is this thread; it also runs the accept loops, the admin servers and the reloads, and
    // hands each accepted connection to the least loaded worker.
    let rt = worker_runtime(args.idle_spin).context("cannot start the async runtime")?;
    let extra = WorkerThreads::start(workers - 1, args.idle_spin)?;
    let mut handles = vec![rt.handle().clone()];
    handles.extend(extra.handles.iter().cloned());
    let result = rt.block_on(serve(
        &args,
        snapshot,
        seen,
        writer.clone(),
        log_level,
        handles,
    ));
    // Connections still open after the drain end here; their access-log records are written
    // before we exit.
    extra.stop();
    rt.shutdown_timeout(Duration::from_secs(1));
    writer.shutdown(Duration::from_secs(5));
    result
}

fn worker_runtime(idle_spin: Duration) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    crate::idle_spin::install(&mut builder, idle_spin);
    builder.enable_all().build()
}

/// Workers 1..N: a thread each, running its runtime until told to stop.
struct WorkerThreads {
    handles: Vec<tokio::runtime::Handle>,
    stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WorkerThreads {
    fn start(count: usize, idle_spin: Duration) -> anyhow::Result<WorkerThreads> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 1..=count {
            let (tx, rx) = std::sync::mpsc::channel();
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("egret-worker-{index}"))
                .spawn(move || {
                    egret_core::worker::set_current(index);
                    let rt = match worker_runtime(idle_spin) {
                        Ok(rt) => rt,
                        Err(e) => return drop(tx.send(Err(e))),
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    });
                    rt.shutdown_timeout(Duration::from_secs(1));
                })
                .context("cannot start a worker thread")?;
            let handle = rx
                .recv()
                .context("worker thread ended at start")?
                .context("cannot start a worker's async runtime")?;
            handles.push(handle);
            threads.push(thread);
        }
        Ok(WorkerThreads {
            handles,
            stop,
            threads,
        })
    }

    fn stop(self) {
        self.stop.send_replace(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Runs the gateway. `initial` is None when the configuration has not appeared yet: the
/// admin servers then answer (not ready, `INITIALIZING`) while the paths are polled, and the
/// listeners bind once it is there.
async fn serve(
    args: &RunArgs,
    initial: Option<Arc<egret_core::Snapshot>>,
    mut changes: ChangeDetector,
    writer: Arc<AccessLogWriter>,
    log_level: Option<LogLevelHandle>,
    workers: Vec<tokio::runtime::Handle>,
) -> anyhow::Result<()> {
    // Metrics are counted from the access-log records on their way to the writer.
    let metrics = Arc::new(Metrics::new(MetricsConfig {
        namespace: args.config.namespace.clone(),
        ..Default::default()
    }));
    {
        let w = writer.clone();
        metrics.set_access_log_stats(move || (w.written(), w.dropped(), w.depth()));
    }
    let log_writer = writer.clone();
    let sink: Arc<dyn AccessLogSink> = Arc::new(MetricsSink::new(metrics.clone(), writer));
    let resolver = ResolverConfig {
        dns_server: args.dns_server,
        hosts_file: args.hosts_file.clone(),
        connect_to: args.connect_to.iter().cloned().collect(),
    };
    let tls = UpstreamTlsOptions {
        credentials_dir: Some(args.credentials_dir.clone()),
        mesh_certs_dir: Some(args.mesh_certs.clone()),
        ..UpstreamTlsOptions::default()
    };
    let options = GatewayOptions {
        client_hello_timeout: args.client_hello_timeout,
        tcp_idle_timeout: args.tcp_idle_timeout,
        passthrough_splice: args.passthrough_splice,
        http_idle_timeout: args.http_idle_timeout,
        http_release_delay: args.http_buffer_release_delay,
        stream_idle_timeout: args.stream_idle_timeout,
        ..GatewayOptions::new(args.bind)
    };
    let waiting = initial.is_none();
    let snapshot = initial.unwrap_or_else(|| {
        Arc::new(egret_core::Snapshot {
            version: Arc::from(""),
            listeners: Vec::new(),
            clusters: Default::default(),
        })
    });
    let gateway = assemble(snapshot, sink, &resolver, tls, options, workers)?;
    {
        let gw = gateway.clone();
        metrics.set_worker_stats(move || gw.worker_connections());
        let gw = gateway.clone();
        metrics.set_counter(GatewayCounter::DownstreamHttp1BufferReleases, move || {
            gw.http_buffer_releases()
        });
        let gw = gateway.clone();
        metrics.set_counter(GatewayCounter::UpstreamHttp1BufferReleases, move || {
            gw.upstream_buffer_releases()
        });
        let gw = gateway.clone();
        metrics.set_counter(GatewayCounter::DownstreamTlsHandshakeFailures, move || {
            gw.tls_handshake_failures()
        });
    }
    if crate::heap::AVAILABLE && !args.heap_trim_delay.is_zero() {
        let trims = Arc::new(AtomicU64::new(0));
        let count = trims.clone();
        metrics.set_counter(GatewayCounter::HeapTrims, move || {
            count.load(Ordering::Relaxed)
        });
        let gw = gateway.clone();
        // Every request and TCP connection ends in a record; a connection event or a buffer
        // release may not.
        let activity = move || gw.connection_events() + log_writer.written() + log_writer.dropped();
        tokio::spawn(crate::heap::trim_when_quiet(
            activity,
            args.heap_trim_delay,
            trims,
        ));
    }
    // Signal handlers go in before the listeners bind, so a signal right after "ready" is
    // handled, not fatal.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let quit = Arc::new(Notify::new());
    let admin_state = Arc::new(GatewayAdmin {
        gateway: gateway.clone(),
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
        initializing: AtomicBool::new(waiting),
        draining: AtomicBool::new(false),
        quit: quit.clone(),
        drain_timeout: args.drain_timeout,
        log_level,
        current_level: std::sync::Mutex::new(args.log_level.clone()),
    });
    let admin = AdminServers::spawn(
        AdminConfig {
            admin: args.admin.0,
            health: args.health.0,
            prometheus: args.prometheus.0,
        },
        admin_state.clone(),
    )
    .context("cannot start the admin servers")?;
    let stats = Arc::new(ReloadStats {
        metrics: Some(metrics.clone()),
        ..Default::default()
    });
    if waiting {
        let signals = Signals {
            term: &mut term,
            int: &mut int,
            hup: &mut hup,
            quit: &quit,
        };
        let configured = wait_for_config(
            &args.config,
            &gateway,
            &stats,
            &mut changes,
            args.watch_interval,
            signals,
        )
        .await;
        if !configured {
            // Stopped before any configuration came: nothing to drain.
            admin_state.draining.store(true, Ordering::Relaxed);
            admin.shutdown();
            return Ok(());
        }
        admin_state.initializing.store(false, Ordering::Relaxed);
    }
    gateway.prepare_upstream_tls();
    gateway.sync_listeners()?;
    admin_state.ready.store(true, Ordering::Relaxed);
    tracing::info!(ports = ?gateway.listening_ports(), admin = ?admin.admin_addr(), "egret ready");

    let watcher = (!args.watch_interval.is_zero()).then(|| {
        tokio::spawn(watch_config(
            args.config.clone(),
            gateway.clone(),
            stats.clone(),
            args.watch_interval,
            changes,
        ))
    });

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = quit.notified() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reload(&args.config, &gateway, &stats);
            }
        }
    }
    if let Some(w) = watcher {
        w.abort();
    }
    // Readiness turns false first, so load balancers stop sending during the drain delay.
    admin_state.draining.store(true, Ordering::Relaxed);
    tracing::info!(delay = ?args.drain_delay, timeout = ?args.drain_timeout, "draining");
    tokio::time::sleep(args.drain_delay).await;
    let mut left = gateway.drain(args.drain_timeout).await;
    if left > 0 {
        // Passthrough and TCP sessions end now and are logged with what they moved (at once:
        // the grace only lets their tasks run; HTTP connections left do not stop for it).
        left = gateway.stop_sessions(Duration::from_millis(200)).await;
    }
    if left > 0 {
        tracing::warn!(
            open = left,
            "drain timeout reached; closing the remaining connections"
        );
    } else {
        tracing::info!("drained");
    }
    admin.shutdown();
    Ok(())
}

/// Puts a gateway together: DNS, the upstream pool with TLS origination, the configuration
/// in force with its TLS acceptors. Listeners are not bound yet (`sync_listeners`).
pub fn assemble(
    snapshot: Arc<egret_core::Snapshot>,
    sink: Arc<dyn AccessLogSink>,
    resolver: &ResolverConfig,
    tls: UpstreamTlsOptions,
    options: GatewayOptions,
    workers: Vec<tokio::runtime::Handle>,
) -> anyhow::Result<Arc<Gateway>> {
    let resolver = Resolver::new(resolver).context("cannot set up DNS")?;
    let tls_dirs = TlsDirs {
        credentials_dir: tls.credentials_dir.clone(),
        mesh_certs_dir: tls.mesh_certs_dir.clone(),
    };
    let shared = Arc::new(HttpShared {
        pool: Pool::with_tls(Arc::new(UpstreamTlsContexts::new(tls))).per_worker(workers.len()),
        resolver: Arc::new(resolver),
        sink,
        local_ip: crate::local_ip::first_non_loopback_ipv4(),
        stream_idle_timeout: options.stream_idle_timeout,
    });
    Ok(Gateway::new(
        Arc::new(ActiveConfig::with_tls(snapshot, tls_dirs)),
        shared,
        options,
        workers,
    ))
}

/// Polls the configuration files and reloads on change (after they stay unchanged for one
/// more interval, so a half-written set of files is not loaded).
async fn watch_config(
    config: ConfigArgs,
    gateway: Arc<Gateway>,
    stats: Arc<ReloadStats>,
    every: Duration,
    mut changes: ChangeDetector,
) {
    loop {
        tokio::time::sleep(every).await;
        if changes.settled_change(&config.config) {
            let _ = reload(&config, &gateway, &stats);
        }
    }
}

/// The signals the main loop reacts to.
struct Signals<'a> {
    term: &'a mut tokio::signal::unix::Signal,
    int: &'a mut tokio::signal::unix::Signal,
    hup: &'a mut tokio::signal::unix::Signal,
    quit: &'a Notify,
}

/// Before the first configuration: polls the paths every `every` (and on SIGHUP) until they
/// hold Istio resources that compile, then installs them (listeners not bound yet). A
/// configuration that appears broken is logged and counted as a failed reload, and we keep
/// waiting for a fixed one. Returns false when told to stop first.
async fn wait_for_config(
    config: &ConfigArgs,
    gateway: &Arc<Gateway>,
    stats: &ReloadStats,
    changes: &mut ChangeDetector,
    every: Duration,
    signals: Signals<'_>,
) -> bool {
    let paths = config.paths_display();
    let poll = if every.is_zero() {
        // --watch-interval 0s: only SIGHUP loads.
        Duration::MAX
    } else {
        every
    };
    let mut reminder = tokio::time::Instant::now() + WAITING_REMINDER;
    loop {
        let attempt = tokio::select! {
            _ = signals.term.recv() => return false,
            _ = signals.int.recv() => return false,
            _ = signals.quit.notified() => return false,
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reading the configuration");
                true
            }
            _ = tokio::time::sleep(poll) => changes.settled_change(&config.config),
        };
        if tokio::time::Instant::now() >= reminder {
            tracing::warn!("still waiting for configuration in {paths}; not ready");
            reminder = tokio::time::Instant::now() + WAITING_REMINDER;
        }
        if !attempt {
            continue;
        }
        match config.build_or_wait() {
            Ok(ConfigState::Ready(compiled)) => {
                for w in &compiled.warnings {
                    tracing::warn!("{w}");
                }
                let snapshot = Arc::new(compiled.snapshot);
                tracing::info!(version = %snapshot.version, listeners = snapshot.listeners.len(), clusters = snapshot.clusters.len(), "configuration loaded");
                gateway.config.store(snapshot);
                stats.count(true);
                return true;
            }
            Ok(ConfigState::Empty(why)) => {
                tracing::debug!("still waiting for configuration in {paths} ({why})");
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    errors = errors.len(),
                    "the configuration in {paths} does not compile; still waiting (not ready)"
                );
                stats.count(false);
            }
        }
    }
}

/// Diagnostics to stderr; the level can be changed at run time through the admin
/// `/logging` endpoint (returns the handle for it).
fn init_tracing(level: &str) -> Option<LogLevelHandle> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGRET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .ok()
        .map(|_| handle)
}
