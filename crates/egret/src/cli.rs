//! Flags. This is a contract: tests, docs and benchmarks rely on these names.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "egret",
    version,
    about = "Egret: a native Rust data plane for Istio egress gateways"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway on the given Istio configuration.
    Run(Box<RunArgs>),
    /// Check the configuration and print the compiled listeners, routes and clusters.
    Validate(ConfigArgs),
    /// Run the four scenarios end to end with in-process stand-ins for the external hosts,
    /// print the results and access-log lines, then stay up for you to try (Ctrl-C exits).
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Folder holding s1-http ... s4-mtls-origination (default: ./config).
    #[arg(long = "config-root")]
    pub config_root: Option<std::path::PathBuf>,
    /// Listen on free ports instead of 8080/8443/8081/8444.
    #[arg(long = "ephemeral-ports", hide = true)]
    pub ephemeral_ports: bool,
}

/// What [`ConfigArgs::build_or_wait`] found.
#[derive(Debug)]
pub enum ConfigState {
    /// Istio resources, compiled.
    Ready(egret_config::Compiled),
    /// No Istio networking resource under the paths yet; why (`not found`, `no YAML files`, ...).
    Empty(String),
}

/// What selects and compiles the configuration (shared by `run` and `validate`).
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Files or folders of Istio YAML (recursive, .yaml/.yml, multi-document).
    #[arg(long = "config", short = 'c', required = true, num_args = 1..)]
    pub config: Vec<PathBuf>,
    /// The gateway's namespace; also the default for resources without one.
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,
    /// The gateway's labels: Gateways whose selector matches them are served.
    #[arg(long, default_value = "istio=egressgateway", value_parser = parse_labels)]
    pub labels: BTreeMap<String, String>,
    /// Service port to listen port, as in Istio's gateway chart; other ports listen as they are.
    #[arg(long = "port-map", default_value = "80=8080,443=8443", value_parser = parse_port_map)]
    pub port_map: BTreeMap<u16, u16>,
    /// Kubernetes cluster domain: hosts under `svc.<domain>` are Kubernetes services.
    #[arg(long = "cluster-domain", default_value = "cluster.local")]
    pub cluster_domain: String,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address the listeners bind to.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// DNS server to use instead of /etc/resolv.conf.
    #[arg(long = "dns-server")]
    pub dns_server: Option<SocketAddr>,
    /// /etc/hosts-format file consulted before DNS (for labs).
    #[arg(long = "hosts-file")]
    pub hosts_file: Option<PathBuf>,
    /// Send connections meant for HOST:PORT to ADDR:PORT instead (like curl's --connect-to);
    /// repeatable. For labs whose stand-ins for external hosts listen elsewhere.
    #[arg(long = "connect-to", value_name = "HOST:PORT:ADDR:PORT", value_parser = egret_upstream::parse_connect_to)]
    pub connect_to: Vec<((String, u16), std::net::SocketAddr)>,
    /// Folder of mounted Secrets: `credentialName: X` reads `<dir>/X/tls.crt`, `tls.key`,
    /// `ca.crt` (or `<dir>/X-cacert/ca.crt`). Files are re-read when they change.
    #[arg(long = "credentials-dir", default_value = "/etc/egret/credentials")]
    pub credentials_dir: std::path::PathBuf,
    /// Mesh certificates for ISTIO_MUTUAL: `cert-chain.pem`, `key.pem`, `root-cert.pem`.
    #[arg(long = "mesh-certs", default_value = "/etc/istio/proxy")]
    pub mesh_certs: std::path::PathBuf,
    /// Admin server (`/ready`, `/stats`, `/config_dump`, `/clusters`, ...), or `off`.
    #[arg(long, default_value = "127.0.0.1:15000", value_parser = parse_addr_or_off)]
    pub admin: AddrOrOff,
    /// Health server (`/healthz/ready`, as Istio's gateways expose it), or `off`.
    #[arg(long, default_value = "0.0.0.0:15021", value_parser = parse_addr_or_off)]
    pub health: AddrOrOff,
    /// Prometheus server (`/stats/prometheus`), or `off`.
    #[arg(long, default_value = "0.0.0.0:15090", value_parser = parse_addr_or_off)]
    pub prometheus: AddrOrOff,
    /// Access-log destination: a file path, or `-` for stdout.
    #[arg(long = "access-log", default_value = "-")]
    pub access_log: String,
    /// Envoy command-operator format (default: Istio's default TEXT format).
    #[arg(long = "access-log-format")]
    pub access_log_format: Option<String>,
    /// Write access-log lines as JSON with Istio's keys (or with --access-log-format as a
    /// JSON object of key → operator).
    #[arg(long = "access-log-json")]
    pub access_log_json: bool,
    /// How long a TLS passthrough client may take to send its ClientHello (Envoy's listener
    /// filter timeout), e.g. `15s`, `500ms`.
    #[arg(long = "client-hello-timeout", default_value = "15s", value_parser = parse_duration)]
    pub client_hello_timeout: std::time::Duration,
    /// Move passthrough bytes with splice(2) (Linux) instead of copying them through a buffer
    /// per busy direction: less gateway CPU per byte, but when the endpoints are on the same
    /// machine (loopback) they pay more than the gateway saves (benches/RESULTS.md item 26).
    #[arg(long = "passthrough-splice")]
    pub passthrough_splice: bool,
    /// Idle timeout for passthrough and TCP connections (Istio's default is 1h).
    #[arg(long = "tcp-idle-timeout", default_value = "1h", value_parser = parse_duration)]
    pub tcp_idle_timeout: std::time::Duration,
    /// How long a downstream HTTP/1.1 connection may wait for its next request (or for the
    /// first one) before it is closed (Envoy's HTTP connection manager default is 1h); 0s
    /// disables it.
    #[arg(long = "http-idle-timeout", default_value = "1h", value_parser = parse_duration)]
    pub http_idle_timeout: std::time::Duration,
    /// How long a request may go without a byte of its body arriving and without an answer
    /// from upstream before it is answered `408` (body unfinished) or `504` (request
    /// complete), flagged `SI` (Envoy's stream idle timeout, 5 min); a response body that
    /// moves no byte for as long is cut (`SI`). 0s disables it.
    #[arg(long = "stream-idle-timeout", default_value = "5m", value_parser = parse_duration)]
    pub stream_idle_timeout: std::time::Duration,
    /// How long an idle downstream HTTP/1.1 connection keeps its read buffer (8 KB or more)
    /// after a response before releasing it (it comes back with the next request); `0s`
    /// releases it as soon as each response is sent.
    #[arg(long = "http-buffer-release-delay", default_value = "100ms", value_parser = parse_duration)]
    pub http_buffer_release_delay: std::time::Duration,
    /// Once no connection has opened or closed, no request has been logged and no buffer has
    /// been released for about this long, hand the heap's free pages back to the kernel
    /// (glibc's `malloc_trim`; once per quiet period). `0s` disables it.
    #[arg(long = "heap-trim-delay", default_value = "1s", value_parser = parse_duration)]
    pub heap_trim_delay: std::time::Duration,
    /// On SIGTERM: keep accepting this long after readiness turns false (so load balancers
    /// stop sending first), then stop accepting and drain.
    #[arg(long = "drain-delay", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: std::time::Duration,
    /// On SIGTERM: how long in-flight requests and connections may take to finish (Istio's
    /// default termination drain is 5s).
    #[arg(long = "drain-timeout", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// How often the --config files are checked for changes (a ConfigMap update is a
    /// `..data` symlink swap, which this sees); SIGHUP reloads at once. `0s` disables it.
    #[arg(long = "watch-interval", default_value = "1s", value_parser = parse_duration)]
    pub watch_interval: std::time::Duration,
    /// How long a busy worker waits on its core for more events before it sleeps, so that
    /// what arrives in that moment is handled (and answered) together; only while its own
    /// work filled at least ¾ of the last millisecond, so a lightly loaded or idle gateway
    /// never spins (benches/RESULTS.md item 27). `0s` disables it.
    #[arg(long = "idle-spin", default_value = "10us", value_parser = parse_duration)]
    pub idle_spin: std::time::Duration,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Level of Egret's own diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long = "log-level", default_value = "info")]
    pub log_level: String,
}

/// `1h`, `15s`, `500ms`, `1m30s`, `10us` — Istio's (Go's) duration syntax, as in the
/// manifests; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let seconds;
    let text = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        seconds = format!("{s}s");
        &seconds
    } else {
        s
    };
    egret_config::istio::parse_duration(text)
        .map_err(|why| format!("{s:?} is not a duration like 15s or 500ms: {why}"))
}

/// An address flag that `off` disables.
#[derive(Debug, Clone, Copy)]
pub struct AddrOrOff(pub Option<SocketAddr>);

fn parse_addr_or_off(s: &str) -> Result<AddrOrOff, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(AddrOrOff(None));
    }
    s.parse()
        .map(|a| AddrOrOff(Some(a)))
        .map_err(|_| format!("{s:?} is not IP:PORT or off"))
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    for kv in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("label {kv:?} is not key=value"))?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(m)
}

fn parse_port_map(s: &str) -> Result<BTreeMap<u16, u16>, String> {
    let mut m = BTreeMap::new();
    for kv in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("port mapping {kv:?} is not SERVICE=LISTEN"))?;
        let k: u16 = k
            .trim()
            .parse()
            .map_err(|_| format!("{k:?} is not a port"))?;
        let v: u16 = v
            .trim()
            .parse()
            .map_err(|_| format!("{v:?} is not a port"))?;
        m.insert(k, v);
    }
    Ok(m)
}

pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate(args) => crate::validate::validate(&args),
        Command::Demo(args) => match crate::demo::demo(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("egret demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => match crate::run::run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("egret: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

impl ConfigArgs {
    pub fn load_options(&self) -> egret_config::LoadOptions {
        egret_config::LoadOptions {
            namespace: self.namespace.clone(),
            cluster_domain: self.cluster_domain.clone(),
        }
    }
    pub fn compile_options(&self) -> egret_config::CompileOptions {
        egret_config::CompileOptions {
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            port_map: self.port_map.clone(),
            cluster_domain: self.cluster_domain.clone(),
        }
    }

    /// Like [`ConfigArgs::build`], but tells "nothing there yet" apart from a configuration:
    /// when the paths hold no Istio networking resource at all — every path missing, empty
    /// folders (a ConfigMap mount before the ConfigMap has data), or only files without one —
    /// the answer is [`ConfigState::Empty`] with the reason, not an empty gateway. Anything
    /// else is built as `build` does, errors included.
    pub fn build_or_wait(&self) -> Result<ConfigState, Vec<String>> {
        let (missing, present): (Vec<PathBuf>, Vec<PathBuf>) =
            self.config.iter().cloned().partition(|p| {
                std::fs::metadata(p).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            });
        if present.is_empty() {
            return Ok(ConfigState::Empty("not found".into()));
        }
        let loaded = egret_config::load_with_options(&present, &self.load_options())
            .map_err(|e| e.errors.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
        let resources = loaded.service_entries.len()
            + loaded.gateways.len()
            + loaded.virtual_services.len()
            + loaded.destination_rules.len();
        if resources == 0 {
            let why = match loaded.files.len() {
                0 => "no YAML files".to_string(),
                n => format!("no Istio networking resources in {n} YAML file(s)"),
            };
            return Ok(ConfigState::Empty(why));
        }
        if !missing.is_empty() {
            // Some paths hold resources and others are missing: an error, as `build` says.
            return self.build().map(ConfigState::Ready);
        }
        egret_config::compile(&loaded, &self.compile_options())
            .map(ConfigState::Ready)
            .map_err(|errs| errs.iter().map(|d| d.to_string()).collect::<Vec<_>>())
    }

    /// The `--config` paths, comma-separated, for messages.
    pub fn paths_display(&self) -> String {
        self.config
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Loads and compiles; on failure returns every error, formatted `file:line: ...`.
    /// `Compiled::warnings` holds the load warnings too.
    pub fn build(&self) -> Result<egret_config::Compiled, Vec<String>> {
        let loaded = egret_config::load_with_options(&self.config, &self.load_options())
            .map_err(|e| e.errors.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
        egret_config::compile(&loaded, &self.compile_options())
            .map_err(|errs| errs.iter().map(|d| d.to_string()).collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_go_units() {
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("10µs"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("").is_err());
    }
}
