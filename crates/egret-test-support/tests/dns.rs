//! The DNS server answers the resolver the data path uses (hickory-resolver).

use std::net::{IpAddr, SocketAddr};

use egret_test_support::{DnsAnswer, DnsServer};
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioResolver;

fn resolver(addr: SocketAddr, tcp_only: bool) -> TokioResolver {
    let mut ns = if tcp_only {
        NameServerConfig::tcp(addr.ip())
    } else {
        NameServerConfig::udp(addr.ip())
    };
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    builder.options_mut().use_hosts_file = ResolveHosts::Never;
    builder.build().expect("build resolver")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn answers_a_and_aaaa_over_udp_and_tcp() {
    let dns = DnsServer::start([(
        "Edition.CNN.com",
        vec![ip("127.0.0.10"), ip("127.0.0.11"), ip("::1")],
        30,
    )])
    .await
    .unwrap();
    for tcp in [false, true] {
        let r = resolver(dns.addr(), tcp);
        let lookup = r.lookup_ip("edition.cnn.com.").await.unwrap();
        let mut got: Vec<IpAddr> = lookup.iter().collect();
        got.sort();
        assert_eq!(got, vec![ip("127.0.0.10"), ip("127.0.0.11"), ip("::1")]);
        for rec in lookup.as_lookup().answers() {
            assert_eq!(rec.ttl, 30);
        }
    }
    assert!(dns.queries_a("edition.cnn.com") >= 2);
    assert!(dns.queries_aaaa("edition.cnn.com") >= 2);
}

#[tokio::test]
async fn unknown_name_is_nxdomain() {
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>, u32)>::new())
        .await
        .unwrap();
    let err = resolver(dns.addr(), false)
        .lookup_ip("nope.example.test.")
        .await
        .unwrap_err();
    match err {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
            assert_eq!(response_code, ResponseCode::NXDomain)
        }
        other => panic!("expected NXDOMAIN, got {other:?}"),
    }
    assert!(dns.queries("nope.example.test") >= 1);
}

#[tokio::test]
async fn servfail_is_an_error() {
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>, u32)>::new())
        .await
        .unwrap();
    dns.set_answer("broken.test", DnsAnswer::ServFail);
    let err = resolver(dns.addr(), false)
        .lookup_ip("broken.test.")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn ttl_zero_is_asked_again_long_ttl_is_cached_and_records_change() {
    let dns = DnsServer::start([("short.test", vec![ip("127.0.0.2")], 0)])
        .await
        .unwrap();
    dns.set("long.test", vec![ip("127.0.0.3")], 3600);
    let r = resolver(dns.addr(), false);

    r.lookup_ip("long.test.").await.unwrap();
    let after_first = dns.queries_a("long.test");
    r.lookup_ip("long.test.").await.unwrap();
    assert_eq!(
        dns.queries_a("long.test"),
        after_first,
        "cached for its TTL"
    );

    let first: Vec<IpAddr> = r.lookup_ip("short.test.").await.unwrap().iter().collect();
    assert_eq!(first, vec![ip("127.0.0.2")]);
    let before = dns.queries_a("short.test");
    dns.set("short.test", vec![ip("127.0.0.4")], 0);
    let second: Vec<IpAddr> = r.lookup_ip("short.test.").await.unwrap().iter().collect();
    assert_eq!(second, vec![ip("127.0.0.4")]);
    assert!(dns.queries_a("short.test") > before, "TTL 0 is not cached");
}
