//! Number and address printing straight into the output buffer: no `format!`, no temporary
//! strings on the hot path.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

pub(crate) fn write_u64(out: &mut Vec<u8>, n: u64) {
    write_padded(out, n, 1, b'0');
}

pub(crate) fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

/// `n` in decimal, left-padded with `pad` to at least `width` characters.
pub(crate) fn write_padded(out: &mut Vec<u8>, mut n: u64, width: usize, pad: u8) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = buf.len() - i;
    for _ in len..width {
        out.push(pad);
    }
    out.extend_from_slice(&buf[i..]);
}

/// `a.b.c.d` or the RFC 5952 form of an IPv6 address (no brackets), as Envoy's
/// `*_ADDRESS_WITHOUT_PORT` operators print it.
pub(crate) fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_u64(out, o.into());
            }
        }
        // Writing to a Vec cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `ip:port`, IPv6 as `[ip]:port` (Envoy's `asString()`; the scope id is not printed).
pub(crate) fn write_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        ip @ IpAddr::V4(_) => write_ip(out, ip),
        ip @ IpAddr::V6(_) => {
            out.push(b'[');
            write_ip(out, ip);
            out.push(b']');
        }
    }
    out.push(b':');
    write_u64(out, addr.port().into());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn numbers() {
        assert_eq!(s(|o| write_u64(o, 0)), "0");
        assert_eq!(s(|o| write_u64(o, u64::MAX)), "18446744073709551615");
        assert_eq!(s(|o| write_i64(o, i64::MIN)), "-9223372036854775808");
        assert_eq!(s(|o| write_padded(o, 7, 3, b'0')), "007");
        assert_eq!(s(|o| write_padded(o, 1234, 2, b' ')), "1234");
    }

    #[test]
    fn addresses() {
        assert_eq!(
            s(|o| write_socket_addr(o, "10.244.2.184:46620".parse().unwrap())),
            "10.244.2.184:46620"
        );
        assert_eq!(
            s(|o| write_socket_addr(o, "[::1]:8080".parse().unwrap())),
            "[::1]:8080"
        );
        assert_eq!(
            s(|o| write_socket_addr(o, "[fe80::1%3]:1".parse().unwrap())),
            "[fe80::1]:1"
        );
        assert_eq!(
            s(|o| write_ip(o, "2001:db8::ff00:42:8329".parse().unwrap())),
            "2001:db8::ff00:42:8329"
        );
        assert_eq!(
            s(|o| write_ip(o, "::ffff:1.2.3.4".parse().unwrap())),
            "::ffff:1.2.3.4"
        );
    }
}
