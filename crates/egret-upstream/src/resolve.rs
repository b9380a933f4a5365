//! Name resolution: a hosts-file override first (for labs), then DNS through
//! hickory-resolver. Answers carry their expiry so clusters re-resolve when the TTL runs out
//! (Envoy ignores TTLs by default, envoyproxy/envoy#16314; we honour them).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolverConfig as HickoryConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use egret_core::limits::MIN_DNS_TTL;

/// TTL given to hosts-file answers and IP literals: they never change while we run.
const STATIC_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS resolution of {host} failed: {message}")]
    Failed { host: String, message: String },
    #[error("DNS resolution of {host} returned no addresses")]
    Empty { host: String },
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
    #[error("cannot read hosts file {path}: {message}")]
    HostsFile { path: String, message: String },
}

/// Addresses for one name and how long they may be used.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub addrs: Vec<IpAddr>,
    pub valid_until: Instant,
}

#[derive(Clone, Debug, Default)]
pub struct ResolverConfig {
    /// Use this name server instead of resolv.conf (`--dns-server`).
    pub dns_server: Option<SocketAddr>,
    /// /etc/hosts-format file consulted before DNS (`--hosts-file`).
    pub hosts_file: Option<std::path::PathBuf>,
    /// `--connect-to HOST:PORT:ADDR:PORT` (as curl's): connections meant for HOST:PORT go
    /// to ADDR:PORT instead. For labs and benchmarks whose stand-ins for external hosts
    /// cannot listen on the real port.
    pub connect_to: HashMap<(String, u16), SocketAddr>,
}

/// Parses one `--connect-to` value: `HOST:PORT:ADDR:PORT` (ADDR may be `[v6]`).
pub fn parse_connect_to(s: &str) -> Result<((String, u16), SocketAddr), String> {
    let bad = || format!("{s:?} is not HOST:PORT:ADDR:PORT");
    let (host, rest) = s.split_once(':').ok_or_else(bad)?;
    let (port, target) = rest.split_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let target: SocketAddr = target.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok(((host.to_ascii_lowercase(), port), target))
}

pub struct Resolver {
    hosts: HashMap<String, Vec<IpAddr>>,
    connect_to: HashMap<(String, u16), SocketAddr>,
    dns: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("hosts", &self.hosts.len())
            .finish()
    }
}

impl Resolver {
    pub fn new(config: &ResolverConfig) -> Result<Resolver, DnsError> {
        let hosts = match &config.hosts_file {
            Some(p) => parse_hosts_file(p)?,
            None => HashMap::new(),
        };
        let provider = TokioRuntimeProvider::default();
        let mut builder = match config.dns_server {
            Some(server) => {
                let mut ns = NameServerConfig::udp_and_tcp(server.ip());
                for c in &mut ns.connections {
                    c.port = server.port();
                }
                TokioResolver::builder_with_config(
                    HickoryConfig::from_name_servers(vec![ns]),
                    provider,
                )
            }
            None => TokioResolver::builder(provider).map_err(|e| DnsError::Setup(e.to_string()))?,
        };
        let opts = builder.options_mut();
        // Istio sets V4_ONLY for DNS clusters on single-stack clusters; we ask for A records
        // and fall back to AAAA only when a name has none.
        opts.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        // Our clusters cache answers themselves (keyed by cluster, TTL-aware); hickory's cache
        // would only hide TTL changes from us.
        opts.cache_size = 0;
        let dns = builder
            .build()
            .map_err(|e| DnsError::Setup(e.to_string()))?;
        Ok(Resolver {
            hosts,
            connect_to: config.connect_to.clone(),
            dns,
        })
    }

    /// The `--connect-to` override for `host:port`, if any.
    pub fn connect_override(&self, host: &str, port: u16) -> Option<SocketAddr> {
        if self.connect_to.is_empty() {
            return None;
        }
        self.connect_to
            .get(&(host.to_ascii_lowercase(), port))
            .copied()
    }

    pub async fn resolve(&self, host: &str) -> Result<Resolved, DnsError> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Resolved {
                addrs: vec![ip],
                valid_until: Instant::now() + STATIC_TTL,
            });
        }
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(addrs) = self.hosts.get(&key) {
            return Ok(Resolved {
                addrs: addrs.clone(),
                valid_until: Instant::now() + STATIC_TTL,
            });
        }
        // A fully-qualified query: cluster hosts are absolute names, search domains would
        // only add wrong answers and latency.
        let fqdn = format!("{key}.");
        let lookup = self
            .dns
            .lookup_ip(fqdn.as_str())
            .await
            .map_err(|e| DnsError::Failed {
                host: key.clone(),
                message: e.to_string(),
            })?;
        let addrs: Vec<IpAddr> = lookup.iter().collect();
        if addrs.is_empty() {
            return Err(DnsError::Empty { host: key });
        }
        let valid_until = lookup.valid_until().max(Instant::now() + MIN_DNS_TTL);
        Ok(Resolved { addrs, valid_until })
    }
}

/// Parses /etc/hosts format: `IP name [aliases...]`, `#` comments.
pub fn parse_hosts_file(path: &Path) -> Result<HashMap<String, Vec<IpAddr>>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|e| DnsError::HostsFile {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    parse_hosts(&text).map_err(|(line, message)| DnsError::HostsFile {
        path: format!("{}:{line}", path.display()),
        message,
    })
}

fn parse_hosts(text: &str) -> Result<HashMap<String, Vec<IpAddr>>, (usize, String)> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let ip_text = parts.next().unwrap_or("");
        let ip: IpAddr = ip_text
            .parse()
            .map_err(|_| (i + 1, format!("{ip_text:?} is not an IP address")))?;
        let mut any = false;
        for name in parts {
            any = true;
            let entry = map
                .entry(name.trim_end_matches('.').to_ascii_lowercase())
                .or_default();
            if !entry.contains(&ip) {
                entry.push(ip);
            }
        }
        if !any {
            return Err((i + 1, "an address without a host name".to_string()));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_to_syntax() {
        let (k, v) = parse_connect_to("Edition.cnn.com:80:127.0.0.1:18080").unwrap();
        assert_eq!(k, ("edition.cnn.com".to_string(), 80));
        assert_eq!(v, "127.0.0.1:18080".parse().unwrap());
        assert!(parse_connect_to("a:80:[::1]:9").is_ok());
        assert!(parse_connect_to("a:80").is_err());
        assert!(parse_connect_to("a:x:127.0.0.1:1").is_err());
    }

    #[test]
    fn hosts_format() {
        let m = parse_hosts("# lab\n127.0.0.1 edition.cnn.com Alias.example\n127.0.0.2 edition.cnn.com\n\n::1 v6.example # c\n")
            .unwrap();
        assert_eq!(
            m["edition.cnn.com"],
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "127.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(m["alias.example"].len(), 1);
        assert_eq!(m["v6.example"], vec!["::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(parse_hosts("nope a.b\n").unwrap_err().0, 1);
        assert_eq!(parse_hosts("127.0.0.1\n").unwrap_err().0, 1);
    }

    #[tokio::test]
    async fn hosts_file_and_literals_skip_dns() {
        let dir = std::env::temp_dir().join(format!("egret-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("hosts");
        std::fs::write(&f, "127.0.0.9 lab.example\n").unwrap();
        // Point DNS at a closed port: any DNS query would fail.
        let r = Resolver::new(&ResolverConfig {
            dns_server: Some("127.0.0.1:9".parse().unwrap()),
            hosts_file: Some(f),
            connect_to: HashMap::new(),
        })
        .unwrap();
        assert_eq!(
            r.resolve("LAB.example").await.unwrap().addrs,
            vec!["127.0.0.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            r.resolve("127.0.0.3").await.unwrap().addrs,
            vec!["127.0.0.3".parse::<IpAddr>().unwrap()]
        );
    }
}
