//! `x-forwarded-client-cert` as Istio's gateways set it: Envoy's `SANITIZE_SET` with the
//! subject, certificate, URI and DNS details (istiod's gateway HTTP connection manager). The
//! value is made once per connection, at the handshake.

use sha2::{Digest, Sha256};

use crate::der::{CertInfo, GeneralName};

/// `By=<local URI SAN>;…;Hash=<sha256>;Cert="<url-encoded PEM>";Subject="<RFC 2253>";URI=…;DNS=…`
/// in Envoy's order: every local URI SAN as `By`, every peer URI SAN as `URI` (an empty
/// `URI=` when it has none), every DNS SAN as `DNS`.
pub(crate) fn client_cert_details(
    local_uri_sans: &[String],
    der: &[u8],
    info: &CertInfo<'_>,
    cert: &egret_core::PeerCertInfo,
) -> String {
    let mut parts: Vec<String> = Vec::with_capacity(6);
    for by in local_uri_sans {
        parts.push(format!("By={by}"));
    }
    parts.push(format!("Hash={}", cert.fingerprint_256));
    parts.push(format!("Cert=\"{}\"", url_encoded_pem(der)));
    parts.push(format!("Subject=\"{}\"", cert.subject));
    let sans = info.san.as_deref().unwrap_or_default();
    let mut uris = sans.iter().filter_map(|n| match n {
        GeneralName::Uri(u) => Some(u.as_str()),
        _ => None,
    });
    match uris.next() {
        Some(first) => {
            parts.push(format!("URI={first}"));
            parts.extend(uris.map(|u| format!("URI={u}")));
        }
        None => parts.push("URI=".to_owned()),
    }
    for n in sans {
        if let GeneralName::Dns(d) = n {
            parts.push(format!("DNS={d}"));
        }
    }
    parts.join(";")
}

/// SHA-256 of a certificate's DER, lower-case hex: XFCC's `Hash`, the log's
/// `%DOWNSTREAM_PEER_FINGERPRINT_256%`.
pub(crate) fn sha256_hex(der: &[u8]) -> String {
    let mut hash = String::with_capacity(64);
    for b in Sha256::digest(der) {
        hash.push_str(&format!("{b:02x}"));
    }
    hash
}

/// The certificate as PEM (64-character base64 lines), with Envoy's replacements: `\n`,
/// space, `+`, `/` and `=` percent-encoded.
fn url_encoded_pem(der: &[u8]) -> String {
    let b64 = base64(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() + pem.len() / 8);
    for c in pem.chars() {
        match c {
            '\n' => out.push_str("%0A"),
            ' ' => out.push_str("%20"),
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 with padding (a certificate is a few hundred bytes: not worth a crate).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenSSL's RFC 2253 form (Envoy's `Subject`): the last RDN first, short names,
    /// special characters escaped, bytes past ASCII as `\\XX`.
    #[test]
    fn subject_prints_as_openssl_rfc2253() {
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        dn.push(rcgen::DnType::CommonName, " sleep+1 é");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = CertInfo::parse(cert.der()).unwrap();
        assert_eq!(
            info.subject_rfc2253(),
            "CN=\\ sleep\\+1 \\C3\\A9,O=Acme\\, Inc.,C=DE"
        );
        // The whole value, for a certificate with a DNS SAN and no URI SAN.
        let peer = egret_core::PeerCertInfo {
            subject: info.subject_rfc2253(),
            issuer: info.issuer_rfc2253(),
            fingerprint_256: sha256_hex(cert.der()),
        };
        let xfcc = client_cert_details(&["spiffe://gw".to_string()], cert.der(), &info, &peer);
        assert!(xfcc.starts_with("By=spiffe://gw;Hash="), "{xfcc}");
        assert!(
            xfcc.contains(";Cert=\"-----BEGIN%20CERTIFICATE-----%0A"),
            "{xfcc}"
        );
        assert!(
            xfcc.ends_with("%0A-----END%20CERTIFICATE-----%0A\";Subject=\"CN=\\ sleep\\+1 \\C3\\A9,O=Acme\\, Inc.,C=DE\";URI=;DNS=a.example"),
            "{xfcc}"
        );
    }

    #[test]
    fn base64_matches_rfc4648() {
        let cases: &[(&[u8], &str)] = &[
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xfb, 0xff], "+/8="),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input), *want);
        }
    }
}
