//! This host's first non-loopback IPv4 address. Envoy writes it into `x-forwarded-for`
//! instead of a loopback peer's address (`Network::Utility::getLocalAddress`); we do the same
//! so lab and benchmark runs on loopback log the same XFF as Envoy.

use std::net::IpAddr;

pub fn first_non_loopback_ipv4() -> Option<IpAddr> {
    let addrs = if_addrs::get_if_addrs().ok()?;
    addrs
        .into_iter()
        .map(|i| i.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}
