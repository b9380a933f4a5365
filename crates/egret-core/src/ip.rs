//! Addresses as text, without the formatting machinery: the access log prints several per
//! line and `x-forwarded-for` gets one per request.

use std::net::IpAddr;

/// Room for any address [`ip_text`] writes (`Display` prints at most 39 bytes for IPv6).
pub const IP_TEXT_MAX: usize = 48;

/// `ip` as `Display` prints it (`a.b.c.d`; RFC 5952 for IPv6), written into `buf`. IPv4, the
/// common case, is written digit by digit; IPv6 goes through `Display`.
pub fn ip_text(ip: IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> &[u8] {
    let mut n = 0;
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // Fits: see IP_TEXT_MAX.
            let _ = write!(cursor, "{v6}");
            n = usize::try_from(cursor.position()).unwrap_or(0);
        }
    }
    &buf[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_as_display_does() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.99.100.255",
            "192.168.1.10",
            "255.255.255.255",
            "2001:db8::1",
            "::ffff:1.2.3.4",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; IP_TEXT_MAX];
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
    }
}
