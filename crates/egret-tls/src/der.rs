//! A small, strict DER walker for the few certificate fields this crate needs and webpki does
//! not expose: the version (webpki refuses v1 certificates, which `openssl x509 -req` makes),
//! whether a subjectAltName extension is present and its entries in certificate order,
//! whether a keyUsage extension allows signing certificates, the validity window, and the raw
//! pieces needed to check a signature.
//!
//! Why not `x509-parser`: it brings `asn1-rs`, `der-parser`, `nom`, `time` and more into the
//! build of a data-path crate for ~250 lines of reading. Every read here is bounds-checked and
//! returns `None` on malformed input; nothing indexes without a check.

use std::net::IpAddr;

/// One DER element: its tag, its contents, and the whole encoding (tag + length + contents).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

/// Reads one element from the front of `input`; returns it and the rest.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *input.first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers never occur in the fields we read
    }
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2usize)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None; // indefinite or absurd lengths
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*input.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let raw = input.get(..end)?;
    let value = raw.get(header..)?;
    Some((Tlv { tag, value, raw }, input.get(end..)?))
}

/// Reads one element and requires its tag.
fn expect(input: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8])> {
    let (tlv, rest) = read_tlv(input)?;
    (tlv.tag == tag).then_some((tlv, rest))
}

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];

/// A subjectAltName entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GeneralName {
    Dns(String),
    Uri(String),
    Ip(IpAddr),
    Email(String),
}

impl std::fmt::Display for GeneralName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GeneralName::Dns(s) | GeneralName::Uri(s) | GeneralName::Email(s) => f.write_str(s),
            GeneralName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The parts of an X.509 certificate this crate reads.
#[derive(Clone, Debug)]
pub(crate) struct CertInfo<'a> {
    /// 0 for v1, 1 for v2, 2 for v3.
    pub version: u8,
    /// The whole TBSCertificate encoding: the bytes the issuer signed.
    pub tbs: &'a [u8],
    /// Contents of the outer signatureAlgorithm AlgorithmIdentifier.
    pub signature_alg: &'a [u8],
    /// The signature bits (BIT STRING without its unused-bits byte).
    pub signature: &'a [u8],
    /// Contents of the issuer Name.
    pub issuer: &'a [u8],
    /// Contents of the subject Name.
    pub subject: &'a [u8],
    /// Validity, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The whole SubjectPublicKeyInfo encoding.
    pub spki: &'a [u8],
    /// `None` when the certificate has no subjectAltName extension at all.
    pub san: Option<Vec<GeneralName>>,
    /// No keyUsage extension, or one with keyCertSign: the certificate may have issued
    /// itself (BoringSSL's `X509_check_issued` asks this before calling one self-signed).
    pub may_sign_certs: bool,
}

impl<'a> CertInfo<'a> {
    pub fn parse(der: &'a [u8]) -> Option<CertInfo<'a>> {
        let (cert, trailing) = expect(der, SEQUENCE)?;
        if !trailing.is_empty() {
            return None;
        }
        let (tbs, rest) = expect(cert.value, SEQUENCE)?;
        let (sig_alg, rest) = expect(rest, SEQUENCE)?;
        let (sig, rest) = expect(rest, BIT_STRING)?;
        if !rest.is_empty() {
            return None;
        }
        let signature = bit_string_bytes(sig.value)?;

        let mut r = tbs.value;
        let mut version = 0u8;
        if let Some((v, rest)) = read_tlv(r) {
            if v.tag == 0xa0 {
                let (int, _) = expect(v.value, 0x02)?;
                version = match int.value {
                    [v] if *v <= 2 => *v,
                    _ => return None,
                };
                r = rest;
            }
        }
        let (_serial, r) = expect(r, 0x02)?;
        let (_tbs_sig_alg, r) = expect(r, SEQUENCE)?;
        let (issuer, r) = expect(r, SEQUENCE)?;
        let (validity, r) = expect(r, SEQUENCE)?;
        let (subject, r) = expect(r, SEQUENCE)?;
        let (spki, mut r) = expect(r, SEQUENCE)?;
        let (nb, vrest) = read_tlv(validity.value)?;
        let (na, _) = read_tlv(vrest)?;
        let not_before = parse_time(nb)?;
        let not_after = parse_time(na)?;

        let mut san = None;
        let mut may_sign_certs = true;
        while !r.is_empty() {
            let (field, rest) = read_tlv(r)?;
            r = rest;
            // [1] issuerUniqueID, [2] subjectUniqueID are skipped; [3] holds the extensions.
            if field.tag == 0xa3 {
                if version != 2 {
                    return None;
                }
                san = read_san_extension(field.value)?;
                may_sign_certs = read_key_usage_cert_sign(field.value)?.unwrap_or(true);
            }
        }
        Some(CertInfo {
            version,
            tbs: tbs.raw,
            signature_alg: sig_alg.value,
            signature,
            issuer: issuer.value,
            subject: subject.value,
            not_before,
            not_after,
            spki: spki.raw,
            san,
            may_sign_certs,
        })
    }

    /// Is the issuer name byte-identical to the subject name (self-issued)?
    pub fn self_issued(&self) -> bool {
        self.issuer == self.subject
    }

    /// (algorithm identifier contents, public key bits) of the subject public key.
    pub fn public_key(&self) -> Option<(&'a [u8], &'a [u8])> {
        let (spki, _) = expect(self.spki, SEQUENCE)?;
        spki_parts(spki.value)
    }

    /// Every URI SAN, in certificate order.
    pub fn uri_sans(&self) -> Vec<String> {
        let sans = self.san.as_deref().unwrap_or_default();
        sans.iter()
            .filter_map(|n| match n {
                GeneralName::Uri(u) => Some(u.clone()),
                _ => None,
            })
            .collect()
    }

    /// The subject as OpenSSL's `X509_NAME_print_ex(XN_FLAG_RFC2253)` prints it, which is
    /// Envoy's `Subject`: the RDNs last first, joined by `,` (`+` inside one), short
    /// attribute names, RFC 2253 escapes, bytes past ASCII as `\XX`, a value of another
    /// type as `#` and its DER in hex. An empty subject (Istio's workload certificates) is
    /// empty.
    pub fn subject_rfc2253(&self) -> String {
        name_rfc2253(self.subject)
    }

    /// The issuer, printed as [`Self::subject_rfc2253`] prints the subject.
    pub fn issuer_rfc2253(&self) -> String {
        name_rfc2253(self.issuer)
    }
}

/// A Name's contents (the RDN sequence) in RFC 2253 form: OpenSSL reverses the flat list
/// of attributes (so inside a multi-valued RDN too), `+` joins the attributes of one RDN and
/// `,` the RDNs.
fn name_rfc2253(name: &[u8]) -> String {
    let mut attributes: Vec<(usize, String)> = Vec::new();
    let mut r = name;
    let mut rdn = 0usize;
    while let Some((set, rest)) = read_tlv(r) {
        r = rest;
        let mut s = set.value;
        while let Some((atv, rest)) = read_tlv(s) {
            s = rest;
            let Some((oid, vrest)) = read_tlv(atv.value) else {
                break;
            };
            let Some((value, _)) = read_tlv(vrest) else {
                break;
            };
            let mut text = String::new();
            match attribute_name(oid.value) {
                Some(short) => {
                    text.push_str(short);
                    text.push('=');
                    write_rfc2253_value(&mut text, value);
                }
                // XN_FLAG_DUMP_UNKNOWN_FIELDS: an attribute OpenSSL has no name for is its
                // dotted OID and the hex of its value's DER.
                None => {
                    text.push_str(&dotted_oid(oid.value));
                    text.push_str("=#");
                    for b in value.raw {
                        text.push_str(&format!("{b:02X}"));
                    }
                }
            }
            attributes.push((rdn, text));
        }
        rdn += 1;
    }
    attributes.reverse();
    let mut out = String::new();
    let mut previous: Option<usize> = None;
    for (rdn, text) in attributes {
        if let Some(p) = previous {
            out.push(if p == rdn { '+' } else { ',' });
        }
        out.push_str(&text);
        previous = Some(rdn);
    }
    out
}

/// OpenSSL's short name of a name attribute, if it has one.
fn attribute_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x04] => "SN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "street",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x0c] => "title",
        [0x55, 0x04, 0x0d] => "description",
        [0x55, 0x04, 0x0f] => "businessCategory",
        [0x55, 0x04, 0x11] => "postalCode",
        [0x55, 0x04, 0x29] => "name",
        [0x55, 0x04, 0x2b] => "initials",
        [0x55, 0x04, 0x2c] => "generationQualifier",
        [0x55, 0x04, 0x2d] => "x500UniqueIdentifier",
        [0x55, 0x04, 0x61] => "organizationIdentifier",
        [0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x3c, 0x02, 0x01, 0x01] => "jurisdictionL",
        [0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x3c, 0x02, 0x01, 0x02] => "jurisdictionST",
        [0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x3c, 0x02, 0x01, 0x03] => "jurisdictionC",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x02] => "unstructuredName",
        [0x55, 0x04, 0x2a] => "GN",
        [0x55, 0x04, 0x2e] => "dnQualifier",
        [0x55, 0x04, 0x41] => "pseudonym",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return None,
    })
}

fn dotted_oid(oid: &[u8]) -> String {
    let mut out = String::new();
    let mut n: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        n = (n << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if out.is_empty() && i < oid.len() {
                let (first, second) = if n < 80 {
                    (n / 40, n % 40)
                } else {
                    (2, n - 80)
                };
                out = format!("{first}.{second}");
            } else {
                out.push_str(&format!(".{n}"));
            }
            n = 0;
        }
    }
    out
}

/// One attribute value, escaped as `ASN1_STRFLGS_RFC2253` escapes it.
fn write_rfc2253_value(out: &mut String, value: Tlv<'_>) {
    let text: Option<String> = match value.tag {
        // UTF8String.
        0x0c => Some(String::from_utf8_lossy(value.value).into_owned()),
        // One byte per character to OpenSSL (Latin-1): PrintableString, IA5String,
        // VisibleString, NumericString, TeletexString, and the times.
        0x13 | 0x16 | 0x1a | 0x12 | 0x14 | 0x17 | 0x18 => {
            Some(value.value.iter().map(|&b| char::from(b)).collect())
        }
        // BMPString: UTF-16BE.
        0x1e => {
            let units: Vec<u16> = value
                .value
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
                .collect();
            Some(String::from_utf16_lossy(&units))
        }
        // UniversalString: UTF-32BE.
        0x1c => Some(
            value
                .value
                .chunks(4)
                .filter_map(|c| {
                    let mut b = [0u8; 4];
                    b[..c.len()].copy_from_slice(c);
                    char::from_u32(u32::from_be_bytes(b))
                })
                .collect(),
        ),
        _ => None,
    };
    let Some(text) = text else {
        // Another type: `#` and the hex of its whole encoding.
        out.push('#');
        for b in value.raw {
            out.push_str(&format!("{b:02X}"));
        }
        return;
    };
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == bytes.len();
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b'#' if first => out.push_str("\\#"),
            b' ' if first || last => out.push_str("\\ "),
            0..=0x1f | 0x7f..=0xff => out.push_str(&format!("\\{b:02X}")),
            _ => out.push(char::from(b)),
        }
    }
}

/// Splits the contents of a SubjectPublicKeyInfo SEQUENCE into (algorithm identifier
/// contents, key bits). Trust anchors store exactly these contents.
pub(crate) fn spki_parts(contents: &[u8]) -> Option<(&[u8], &[u8])> {
    let (alg, rest) = expect(contents, SEQUENCE)?;
    let (key, rest) = expect(rest, BIT_STRING)?;
    if !rest.is_empty() {
        return None;
    }
    Some((alg.value, bit_string_bytes(key.value)?))
}

fn bit_string_bytes(value: &[u8]) -> Option<&[u8]> {
    match value.split_first() {
        Some((0, bits)) => Some(bits),
        _ => None,
    }
}

/// Whether the keyUsage extension has keyCertSign (bit 5): `Some(None)` without the
/// extension, `None` if the encoding is malformed.
fn read_key_usage_cert_sign(explicit: &[u8]) -> Option<Option<bool>> {
    let (exts, _) = expect(explicit, SEQUENCE)?;
    let mut r = exts.value;
    while !r.is_empty() {
        let (ext, rest) = expect(r, SEQUENCE)?;
        r = rest;
        let (oid, mut body) = expect(ext.value, OID)?;
        if oid.value != OID_KEY_USAGE {
            continue;
        }
        if let Some((b, rest)) = read_tlv(body) {
            if b.tag == BOOLEAN {
                body = rest;
            }
        }
        let (octets, _) = expect(body, OCTET_STRING)?;
        let (bits, _) = expect(octets.value, BIT_STRING)?;
        // The unused-bits count, then the bits, most significant first: keyCertSign is 0x04
        // of the first byte.
        let first = bits.value.get(1).copied().unwrap_or(0);
        return Some(Some(first & 0x04 != 0));
    }
    Some(None)
}

/// Reads the `[3]` extensions wrapper; returns `Some(None)` if there is no SAN extension,
/// `None` if the encoding is malformed.
fn read_san_extension(explicit: &[u8]) -> Option<Option<Vec<GeneralName>>> {
    let (exts, _) = expect(explicit, SEQUENCE)?;
    let mut r = exts.value;
    let mut found = None;
    while !r.is_empty() {
        let (ext, rest) = expect(r, SEQUENCE)?;
        r = rest;
        let (oid, mut body) = expect(ext.value, OID)?;
        if oid.value != OID_SUBJECT_ALT_NAME {
            continue;
        }
        if found.is_some() {
            return None; // a duplicate extension makes the certificate invalid
        }
        if let Some((b, rest)) = read_tlv(body) {
            if b.tag == BOOLEAN {
                body = rest;
            }
        }
        let (octets, _) = expect(body, OCTET_STRING)?;
        let (names, _) = expect(octets.value, SEQUENCE)?;
        let mut list = Vec::new();
        let mut n = names.value;
        while !n.is_empty() {
            let (name, rest) = read_tlv(n)?;
            n = rest;
            let text = || std::str::from_utf8(name.value).ok().map(str::to_string);
            match name.tag {
                0x81 => list.extend(text().map(GeneralName::Email)),
                0x82 => list.extend(text().map(GeneralName::Dns)),
                0x86 => list.extend(text().map(GeneralName::Uri)),
                0x87 => {
                    if let Ok(v4) = <[u8; 4]>::try_from(name.value) {
                        list.push(GeneralName::Ip(IpAddr::from(v4)));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(name.value) {
                        list.push(GeneralName::Ip(IpAddr::from(v6)));
                    }
                }
                _ => {}
            }
        }
        found = Some(list);
    }
    Some(found)
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` to Unix seconds.
fn parse_time(tlv: Tlv<'_>) -> Option<i64> {
    let s = tlv.value;
    let (year, rest) = match (tlv.tag, s.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(s.get(0..2)?)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        (GENERALIZED_TIME, 15) => (digits(s.get(0..4)?)?, s.get(4..)?),
        _ => return None,
    };
    if rest.get(10) != Some(&b'Z') {
        return None;
    }
    let month = digits(rest.get(0..2)?)?;
    let day = digits(rest.get(2..4)?)?;
    let hour = digits(rest.get(4..6)?)?;
    let minute = digits(rest.get(6..8)?)?;
    let second = digits(rest.get(8..10)?)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn digits(s: &[u8]) -> Option<i64> {
    let mut v = 0i64;
    for b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(b - b'0');
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag, u8::try_from(value.len()).unwrap()];
        out.extend_from_slice(value);
        out
    }

    fn atv(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut seq = tlv(0x06, oid);
        seq.extend(tlv(tag, value));
        tlv(0x30, &seq)
    }

    /// As `openssl x509 -nameopt RFC2253` prints the same name (checked with OpenSSL 3):
    /// attributes reversed inside a multi-valued RDN too, OpenSSL's short names, an
    /// attribute it has no name for dumped as `#` and DER hex, one-byte strings as Latin-1.
    #[test]
    fn names_print_as_openssl_rfc2253() {
        let rdn = |atvs: &[Vec<u8>]| tlv(0x31, &atvs.concat());
        let name = [
            rdn(&[atv(&[0x55, 0x04, 0x06], 0x13, b"DE")]),
            rdn(&[atv(&[0x55, 0x04, 0x0a], 0x0c, b"Acme")]),
            rdn(&[
                atv(&[0x55, 0x04, 0x0b], 0x0c, b"Sales"),
                atv(&[0x55, 0x04, 0x03], 0x0c, b"J. Smith"),
            ]),
            rdn(&[atv(&[0x55, 0x04, 0x0f], 0x0c, b"Private")]),
        ]
        .concat();
        assert_eq!(
            name_rfc2253(&name),
            "businessCategory=Private,CN=J. Smith+OU=Sales,O=Acme,C=DE"
        );
        let odd = [
            rdn(&[atv(&[0x2a, 0x03, 0x04], 0x0c, b"hello")]),
            rdn(&[atv(&[0x55, 0x04, 0x03], 0x16, &[b'j', 0xe9])]),
        ]
        .concat();
        assert_eq!(name_rfc2253(&odd), "CN=j\\C3\\A9,1.2.3.4=#0C0568656C6C6F");
        assert_eq!(name_rfc2253(&[]), "");
    }

    use super::*;
    use egret_test_support::certs::TestCa;

    #[test]
    fn reads_cn_sans_and_validity() {
        let ca = TestCa::new("test-ca");
        let c = ca.server_cert(&["a.example.com", "127.0.0.1"], Some("cn.example.com"));
        let der = c.cert_der();
        let info = CertInfo::parse(&der).expect("parse");
        assert_eq!(info.version, 2);
        assert_eq!(
            info.san,
            Some(vec![
                GeneralName::Dns("a.example.com".into()),
                GeneralName::Ip("127.0.0.1".parse().expect("ip")),
            ])
        );
        assert!(info.not_before < info.not_after);
        assert!(info.public_key().is_some());

        let cn_only = ca.server_cert_cn_only("x.example.com");
        let der = cn_only.cert_der();
        let info = CertInfo::parse(&der).expect("parse");
        assert_eq!(info.san, None);

        let w = ca.workload_cert("spiffe://cluster.local/ns/a/sa/b");
        let der = w.cert_der();
        let info = CertInfo::parse(&der).expect("parse");
        assert_eq!(info.uri_sans(), ["spiffe://cluster.local/ns/a/sa/b"]);
    }

    #[test]
    fn expired_dates() {
        let ca = TestCa::new("test-ca");
        let c = ca.expired_server_cert(&["a.example.com"]);
        let der = c.cert_der();
        let info = CertInfo::parse(&der).expect("parse");
        assert_eq!(info.not_before, 946_684_800); // 2000-01-01
        assert_eq!(info.not_after, 978_307_200); // 2001-01-01
    }

    #[test]
    fn truncated_and_corrupted_input_never_panics() {
        let ca = TestCa::new("test-ca");
        let der = ca
            .server_cert(&["a.example.com"], Some("a"))
            .cert_der()
            .to_vec();
        for cut in 0..der.len() {
            let _ = CertInfo::parse(&der[..cut]);
        }
        for i in 0..der.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut d = der.clone();
                d[i] ^= flip;
                if let Some(info) = CertInfo::parse(&d) {
                    let _ = info.public_key();
                }
            }
        }
    }
}
