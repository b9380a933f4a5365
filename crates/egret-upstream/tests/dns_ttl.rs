//! DNS answers are cached for their TTL and re-resolved when it expires (Envoy ignores TTLs by
//! default, envoyproxy/envoy#16314; operators complained). Real in-process DNS server.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use egret_core::{Cluster, Discovery, DnsTarget, LbPolicy, UpstreamProtocol};
use egret_test_support::DnsServer;
use egret_upstream::{ClusterState, Resolver, ResolverConfig};

fn cluster(host: &str) -> Arc<Cluster> {
    Arc::new(Cluster {
        name: Arc::from("outbound|80||api.example.com"),
        discovery: Discovery::StrictDns {
            targets: vec![DnsTarget {
                host: host.into(),
                port: 80,
            }],
        },
        connect_timeout: Duration::from_secs(1),
        lb: LbPolicy::RoundRobin,
        protocol: UpstreamProtocol::Http1,
        tls: None,
        traffic: Default::default(),
    })
}

#[tokio::test]
async fn answers_follow_the_ttl_and_all_addresses_are_used() {
    let a: IpAddr = "127.0.0.11".parse().unwrap();
    let b: IpAddr = "127.0.0.12".parse().unwrap();
    let c: IpAddr = "127.0.0.13".parse().unwrap();
    let dns = DnsServer::start([("api.example.com", vec![a, b], 1)])
        .await
        .unwrap();
    let resolver = Resolver::new(&ResolverConfig {
        dns_server: Some(dns.addr()),
        ..Default::default()
    })
    .unwrap();
    let state = ClusterState::new(cluster("api.example.com"));

    // Every A record is an endpoint, balanced round robin.
    let first: Vec<SocketAddr> = vec![
        state.pick(&resolver, &[]).await.unwrap(),
        state.pick(&resolver, &[]).await.unwrap(),
    ];
    assert!(
        first.contains(&SocketAddr::new(a, 80)) && first.contains(&SocketAddr::new(b, 80)),
        "{first:?}"
    );
    // Within the TTL the cache answers: no new query.
    let queries = dns.queries_a("api.example.com");
    let _ = state.pick(&resolver, &[]).await.unwrap();
    assert_eq!(dns.queries_a("api.example.com"), queries);

    // The record changes; after the TTL the new address set is used.
    dns.set("api.example.com", vec![c], 1);
    let mut moved = false;
    for _ in 0..100 {
        if state.pick(&resolver, &[]).await.unwrap() == SocketAddr::new(c, 80) {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved, "the new DNS answer was never used");
    assert!(dns.queries_a("api.example.com") > queries);
}

#[tokio::test]
async fn a_failed_re_resolution_keeps_the_last_good_addresses() {
    let a: IpAddr = "127.0.0.21".parse().unwrap();
    let dns = DnsServer::start([("api.example.com", vec![a], 1)])
        .await
        .unwrap();
    let resolver = Resolver::new(&ResolverConfig {
        dns_server: Some(dns.addr()),
        ..Default::default()
    })
    .unwrap();
    let state = ClusterState::new(cluster("api.example.com"));
    assert_eq!(
        state.pick(&resolver, &[]).await.unwrap(),
        SocketAddr::new(a, 80)
    );
    dns.set_answer("api.example.com", egret_test_support::DnsAnswer::ServFail);
    let before = dns.queries_a("api.example.com");
    for _ in 0..100 {
        // Keeps answering with the old address while the server fails.
        assert_eq!(
            state.pick(&resolver, &[]).await.unwrap(),
            SocketAddr::new(a, 80)
        );
        if dns.queries_a("api.example.com") > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dns.queries_a("api.example.com") > before,
        "no re-resolution was attempted"
    );
    assert_eq!(
        state.pick(&resolver, &[]).await.unwrap(),
        SocketAddr::new(a, 80)
    );
}
