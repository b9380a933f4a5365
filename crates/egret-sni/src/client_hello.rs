//! The TLS ClientHello parser: a pure function over the bytes read from a TCP stream so far.
//!
//! It walks the TLS record layer, reassembles the first handshake message across as many
//! records as it spans, and reads from the ClientHello only what routing needs: the SNI host
//! name, the ALPN list and the offered versions. Nothing is decrypted, nothing is written.
//!
//! The parser is built so that feeding a stream in pieces gives the same answer as feeding it
//! at once: every check depends only on bytes already seen, and checks run in stream order.
//! So a prefix either yields [`ParseError::Incomplete`] or the same final answer as any longer
//! buffer that starts with it. [`ClientHelloParser`] keeps the position of the first
//! incomplete record so re-parsing after each read costs O(new bytes), not O(all bytes).
//!
//! No recursion, no indexing that can go out of bounds: every read goes through [`Cursor`],
//! which returns [`ParseError::Malformed`] on a short vector.

use egret_core::limits::MAX_CLIENT_HELLO_BYTES;

/// TLS record content type `handshake`.
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello`.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Record header: type (1), version (2), length (2).
const RECORD_HEADER: usize = 5;
/// Handshake header: type (1), length (3).
const HANDSHAKE_HEADER: usize = 4;
/// RFC 8446 §5.1: a plaintext record carries at most 2^14 bytes.
const MAX_RECORD_PAYLOAD: usize = 1 << 14;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const SNI_HOST_NAME: u8 = 0;

/// Raw bytes (record headers included) that the records carrying one ClientHello may span.
///
/// The handshake message itself is capped at [`MAX_CLIENT_HELLO_BYTES`] (64 KiB, like Envoy's
/// tls_inspector); this adds room for the record headers of a maximal hello split into
/// full-size records (5 records × 5 bytes) and then some, so only pathological splitting
/// (hundreds of tiny records) hits this cap before the handshake cap. It is also the default
/// `max` for [`crate::read_client_hello`].
pub const MAX_CLIENT_HELLO_RECORD_BYTES: usize = MAX_CLIENT_HELLO_BYTES + 1024;

/// What routing needs from a ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` from the server_name extension, validated as an ASCII DNS name and
    /// lower-cased. `None` when the client sent no server_name extension.
    pub sni: Option<String>,
    /// ALPN protocol names in the client's order (extension 16), GREASE values removed.
    /// Empty when the extension is absent.
    pub alpn: Vec<Vec<u8>>,
    /// The supported_versions extension (43) in the client's order, GREASE values removed;
    /// `None` when absent (a client that only speaks TLS 1.2 or older).
    pub supported_versions: Option<Vec<u16>>,
    /// `legacy_version` from the ClientHello body (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The version field of the first record (0x0301..=0x0304).
    pub record_version: u16,
    /// Offered cipher suites in the client's order, GREASE values removed.
    pub cipher_suites: Vec<u16>,
    /// Number of bytes at the start of the buffer that make up the complete records holding
    /// the ClientHello. Bytes after it (if any) belong to the next record.
    pub consumed: usize,
}

impl ClientHello {
    /// Whether the client offered this ALPN protocol (e.g. `b"h2"`).
    pub fn offers_alpn(&self, protocol: &[u8]) -> bool {
        self.alpn.iter().any(|p| p == protocol)
    }

    /// Whether the client offered TLS 1.3 (0x0304 in supported_versions).
    pub fn offers_tls13(&self) -> bool {
        self.supported_versions
            .as_ref()
            .is_some_and(|v| v.contains(&0x0304))
    }
}

/// Why a buffer is not (yet) a ClientHello.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The bytes so far are a valid beginning; more are needed.
    ///
    /// `needed_hint` is a lower bound on how many more bytes must arrive before the answer
    /// can change (it is never an over-estimate, so a reader may wait for that many).
    #[error("incomplete TLS ClientHello{}", hint_text(*.needed_hint))]
    Incomplete { needed_hint: Option<usize> },
    /// The stream does not start with a TLS 1.0–1.3 handshake record (e.g. plain HTTP, SSLv2,
    /// SSLv3). Detected from the first 1–3 bytes.
    #[error("not a TLS connection (first bytes are not a TLS 1.0-1.3 handshake record)")]
    NotTls,
    /// The ClientHello (or the records carrying it) is larger than the cap.
    #[error("TLS ClientHello larger than {MAX_CLIENT_HELLO_BYTES} bytes")]
    TooLarge,
    /// The bytes claim to be TLS but break its rules; the text says which one.
    #[error("malformed TLS ClientHello: {0}")]
    Malformed(&'static str),
}

fn hint_text(hint: Option<usize>) -> String {
    hint.map(|n| format!(" (at least {n} more bytes needed)"))
        .unwrap_or_default()
}

impl ParseError {
    pub fn is_incomplete(&self) -> bool {
        matches!(self, ParseError::Incomplete { .. })
    }
}

/// Parses a ClientHello from the start of `buf` (the raw bytes read from the stream so far).
///
/// One-shot form of [`ClientHelloParser`]; see the module docs for the guarantees.
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHello, ParseError> {
    ClientHelloParser::new().parse(buf)
}

/// Resumable parser: call [`parse`](Self::parse) with the whole buffer each time more bytes
/// arrive. It remembers where the first incomplete record starts, so work already done on
/// complete records is not repeated.
///
/// Every call must pass a buffer that starts with the bytes of the previous call (the stream
/// only grows). If that does not hold, the answer is unspecified (but it still never panics);
/// use a new parser instead.
#[derive(Clone, Debug, Default)]
pub struct ClientHelloParser {
    /// Offset of the first record not yet complete.
    pos: usize,
    /// Handshake bytes carried by the complete records before `pos`.
    hs_have: usize,
    /// The first handshake bytes (type and length), as far as known.
    hs_head: [u8; HANDSHAKE_HEADER],
    /// Version of the first record, once its header is complete.
    record_version: u16,
}

impl ClientHelloParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `buf`; see [`parse_client_hello`].
    pub fn parse(&mut self, buf: &[u8]) -> Result<ClientHello, ParseError> {
        loop {
            let first = self.pos == 0;
            let rest = buf.get(self.pos..).unwrap_or(&[]);

            // Record header, checked byte by byte so that non-TLS input is refused early.
            check_record_header_prefix(rest, first)?;
            let [_, major, minor, len_hi, len_lo, ..] = *rest else {
                return Err(incomplete(
                    RECORD_HEADER - rest.len().min(RECORD_HEADER - 1),
                ));
            };
            let version = u16::from_be_bytes([major, minor]);
            let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
            if len == 0 {
                return Err(ParseError::Malformed("zero-length handshake record"));
            }
            if len > MAX_RECORD_PAYLOAD {
                return Err(ParseError::Malformed("record longer than 2^14 bytes"));
            }
            let end = self.pos + RECORD_HEADER + len;
            if end > MAX_CLIENT_HELLO_RECORD_BYTES {
                return Err(ParseError::TooLarge);
            }
            if first {
                self.record_version = version;
            }

            // Handshake header, checked as soon as its bytes are present.
            let fragment = buf
                .get(self.pos + RECORD_HEADER..end.min(buf.len()))
                .unwrap_or(&[]);
            for (i, &b) in fragment.iter().enumerate() {
                match self.hs_head.get_mut(self.hs_have + i) {
                    Some(slot) => *slot = b,
                    None => break,
                }
            }
            let hs_known = self.hs_have + fragment.len();
            if hs_known >= 1 && self.hs_head[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(ParseError::Malformed(
                    "first handshake message is not a ClientHello",
                ));
            }
            let mut hs_total = None;
            if hs_known >= HANDSHAKE_HEADER {
                let [_, a, b, c] = self.hs_head;
                let body_len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                if body_len > MAX_CLIENT_HELLO_BYTES {
                    return Err(ParseError::TooLarge);
                }
                let total = HANDSHAKE_HEADER + body_len;
                if self.hs_have + len > total {
                    return Err(ParseError::Malformed(
                        "data after the ClientHello in its last record",
                    ));
                }
                hs_total = Some(total);
            }

            if buf.len() < end {
                // Next decision point: the handshake type byte, the end of the handshake
                // length, or the end of this record.
                let hint = if hs_known < 1 {
                    1
                } else if hs_known < HANDSHAKE_HEADER {
                    HANDSHAKE_HEADER - hs_known
                } else {
                    end - buf.len()
                };
                return Err(incomplete(hint));
            }

            // The record is complete.
            let hs_after = self.hs_have + len;
            if let Some(total) = hs_total {
                if hs_after == total {
                    return self.finish(buf, end);
                }
            }
            self.hs_have = hs_after;
            self.pos = end;
            // Loop: the next record continues the handshake message. When the buffer ends here
            // the header check above reports Incomplete with a hint of 1 (the next header byte
            // is the next decision point).
        }
    }

    /// All records up to `end` are present and carry exactly the ClientHello: gather its
    /// bytes (borrowing when one record holds it all) and parse the body.
    fn finish(&self, buf: &[u8], end: usize) -> Result<ClientHello, ParseError> {
        let records = buf.get(..end).unwrap_or(&[]);
        let joined;
        let message: &[u8] = if self.pos == 0 {
            records.get(RECORD_HEADER..).unwrap_or(&[])
        } else {
            let mut all = Vec::with_capacity(self.hs_have + end - self.pos);
            let mut at = 0;
            // Every record up to `end` was validated by `parse`; only their lengths matter here.
            while let Some(&[_, _, _, hi, lo]) = records.get(at..at + RECORD_HEADER) {
                let len = usize::from(u16::from_be_bytes([hi, lo]));
                let next = at + RECORD_HEADER + len;
                all.extend_from_slice(records.get(at + RECORD_HEADER..next).unwrap_or(&[]));
                at = next;
            }
            joined = all;
            &joined
        };
        let body = message.get(HANDSHAKE_HEADER..).unwrap_or(&[]);
        let mut hello = parse_body(body)?;
        hello.record_version = self.record_version;
        hello.consumed = end;
        Ok(hello)
    }
}

fn incomplete(n: usize) -> ParseError {
    ParseError::Incomplete {
        needed_hint: Some(n.max(1)),
    }
}

/// Checks the record-header bytes present in `rest` (0 to 5 of them). The first record is
/// where a non-TLS stream shows itself, so its failures are `NotTls`; a bad header on a
/// later record is a broken TLS stream (`Malformed`).
fn check_record_header_prefix(rest: &[u8], first: bool) -> Result<(), ParseError> {
    let fail = |why| {
        if first {
            ParseError::NotTls
        } else {
            ParseError::Malformed(why)
        }
    };
    if let Some(&t) = rest.first() {
        if t != CONTENT_TYPE_HANDSHAKE {
            return Err(fail(
                "non-handshake record before the ClientHello was complete",
            ));
        }
    }
    if let Some(&major) = rest.get(1) {
        if major != 3 {
            return Err(fail("record version is not TLS 1.0-1.3"));
        }
    }
    if let Some(&minor) = rest.get(2) {
        // 0x0300 is SSLv3, which we treat as not TLS; 0x0301..=0x0304 are TLS 1.0..1.3
        // (clients write 0x0301 or 0x0303 here; 0x0304 is tolerated).
        if !(1..=4).contains(&minor) {
            return Err(fail("record version is not TLS 1.0-1.3"));
        }
    }
    if rest.len() < RECORD_HEADER {
        // Bytes 1-3 are each a decision point; bytes 4-5 (the length) are read together.
        let hint = if rest.len() < 3 {
            1
        } else {
            RECORD_HEADER - rest.len()
        };
        return Err(incomplete(hint));
    }
    Ok(())
}

/// RFC 8701 GREASE values: 0x?A?A with both bytes equal.
pub(crate) fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Bounds-checked reader over one vector of the ClientHello.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Cursor { rest }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        if n > self.rest.len() {
            return Err(ParseError::Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ParseError> {
        match *self.take(1, what)? {
            [b] => Ok(b),
            _ => Err(ParseError::Malformed(what)),
        }
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ParseError> {
        match *self.take(2, what)? {
            [a, b] => Ok(u16::from_be_bytes([a, b])),
            _ => Err(ParseError::Malformed(what)),
        }
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], ParseError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], ParseError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

/// Parses the ClientHello body (after the 4-byte handshake header), RFC 8446 §4.1.2.
fn parse_body(body: &[u8]) -> Result<ClientHello, ParseError> {
    let mut c = Cursor::new(body);
    let legacy_version = c.u16("truncated client version")?;
    if legacy_version >> 8 != 3 || legacy_version & 0xff == 0 {
        return Err(ParseError::Malformed(
            "client version is not TLS 1.0 or later",
        ));
    }
    c.take(32, "truncated random")?;
    let session_id = c.vec8("truncated session id")?;
    if session_id.len() > 32 {
        return Err(ParseError::Malformed("session id longer than 32 bytes"));
    }
    let suites = c.vec16("truncated cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(ParseError::Malformed(
            "cipher suite list empty or of odd length",
        ));
    }
    let cipher_suites = suites
        .chunks_exact(2)
        .map(|p| match *p {
            [a, b] => u16::from_be_bytes([a, b]),
            _ => 0,
        })
        .filter(|&s| !is_grease(s))
        .collect();
    let compression = c.vec8("truncated compression methods")?;
    if compression.is_empty() {
        return Err(ParseError::Malformed("empty compression method list"));
    }

    let mut hello = ClientHello {
        sni: None,
        alpn: Vec::new(),
        supported_versions: None,
        legacy_version,
        record_version: 0,
        cipher_suites,
        consumed: 0,
    };
    // Extensions are optional in a TLS 1.0-1.2 hello: a body that ends here has none.
    if c.is_empty() {
        return Ok(hello);
    }
    let mut exts = Cursor::new(c.vec16("truncated extension list")?);
    if !c.is_empty() {
        return Err(ParseError::Malformed("bytes after the extension list"));
    }
    let (mut seen_sni, mut seen_alpn, mut seen_versions) = (false, false, false);
    while !exts.is_empty() {
        let ext_type = exts.u16("truncated extension header")?;
        let data = exts.vec16("extension longer than the extension list")?;
        match ext_type {
            EXT_SERVER_NAME => {
                if std::mem::replace(&mut seen_sni, true) {
                    return Err(ParseError::Malformed("duplicate server_name extension"));
                }
                hello.sni = parse_server_name(data)?;
            }
            EXT_ALPN => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return Err(ParseError::Malformed("duplicate ALPN extension"));
                }
                hello.alpn = parse_alpn(data)?;
            }
            EXT_SUPPORTED_VERSIONS => {
                if std::mem::replace(&mut seen_versions, true) {
                    return Err(ParseError::Malformed(
                        "duplicate supported_versions extension",
                    ));
                }
                hello.supported_versions = Some(parse_supported_versions(data)?);
            }
            // Everything else (including GREASE extension types) is skipped.
            _ => {}
        }
    }
    Ok(hello)
}

/// RFC 6066 §3: `ServerName server_name_list<1..2^16-1>`, each entry a name type and a
/// `HostName<1..2^16-1>`. At most one host_name; other name types are skipped.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, ParseError> {
    let mut outer = Cursor::new(data);
    let list = outer.vec16("truncated server name list")?;
    if !outer.is_empty() {
        return Err(ParseError::Malformed("bytes after the server name list"));
    }
    if list.is_empty() {
        return Err(ParseError::Malformed("empty server name list"));
    }
    let mut entries = Cursor::new(list);
    let mut host = None;
    while !entries.is_empty() {
        let name_type = entries.u8("truncated server name entry")?;
        let name = entries.vec16("truncated server name")?;
        if name_type != SNI_HOST_NAME {
            continue;
        }
        if host.is_some() {
            return Err(ParseError::Malformed(
                "more than one host_name in server_name",
            ));
        }
        host = Some(validate_host_name(name)?);
    }
    Ok(host)
}

/// The SNI host name as a lower-case ASCII DNS name: labels of letters, digits, `-` and `_`
/// (underscores appear in real host names), 1-63 bytes each, 253 bytes in all. A single
/// trailing dot is tolerated (RFC 6066 forbids it, some clients send it) and kept: Envoy
/// 1.40's TLS inspector keeps it too, so `edition.cnn.com.` matches no `sniHosts` entry
/// (`NR filter_chain_not_found`, logged with the dot).
fn validate_host_name(sent: &[u8]) -> Result<String, ParseError> {
    let name = sent.strip_suffix(b".").unwrap_or(sent);
    if name.is_empty() {
        return Err(ParseError::Malformed("empty server name"));
    }
    if name.len() > 253 {
        return Err(ParseError::Malformed("server name longer than 253 bytes"));
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return Err(ParseError::Malformed(
                "server name has an empty or over-long label",
            ));
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ParseError::Malformed(
                "server name is not an ASCII DNS name",
            ));
        }
    }
    // All bytes are ASCII, so this conversion is lossless.
    Ok(sent
        .iter()
        .map(|&b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// RFC 7301 §3.1: `ProtocolName protocol_name_list<2..2^16-1>`, each `<1..2^8-1>`.
fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, ParseError> {
    let mut outer = Cursor::new(data);
    let list = outer.vec16("truncated ALPN list")?;
    if !outer.is_empty() {
        return Err(ParseError::Malformed("bytes after the ALPN list"));
    }
    if list.is_empty() {
        return Err(ParseError::Malformed("empty ALPN list"));
    }
    let mut entries = Cursor::new(list);
    let mut out = Vec::new();
    while !entries.is_empty() {
        let proto = entries.vec8("truncated ALPN protocol name")?;
        if proto.is_empty() {
            return Err(ParseError::Malformed("empty ALPN protocol name"));
        }
        // RFC 8701 reserves two-byte GREASE ALPN identifiers (0x0A0A, 0x1A1A, ...).
        if let [a, b] = *proto {
            if is_grease(u16::from_be_bytes([a, b])) {
                continue;
            }
        }
        out.push(proto.to_vec());
    }
    Ok(out)
}

/// RFC 8446 §4.2.1: `ProtocolVersion versions<2..254>` in a ClientHello.
fn parse_supported_versions(data: &[u8]) -> Result<Vec<u16>, ParseError> {
    let mut outer = Cursor::new(data);
    let list = outer.vec8("truncated supported_versions")?;
    if !outer.is_empty() {
        return Err(ParseError::Malformed(
            "bytes after the supported_versions list",
        ));
    }
    if list.is_empty() || list.len() % 2 != 0 {
        return Err(ParseError::Malformed(
            "supported_versions empty or of odd length",
        ));
    }
    Ok(list
        .chunks_exact(2)
        .map(|p| match *p {
            [a, b] => u16::from_be_bytes([a, b]),
            _ => 0,
        })
        .filter(|&v| !is_grease(v))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grease_values() {
        for hi in 0..16u16 {
            let v = (hi << 12) | 0x0a00 | (hi << 4) | 0x0a;
            assert!(is_grease(v), "{v:#06x}");
        }
        assert!(!is_grease(0x0a1a));
        assert!(!is_grease(0x1301));
        assert!(!is_grease(0x0303));
    }

    #[test]
    fn host_name_rules() {
        assert_eq!(
            validate_host_name(b"Edition.CNN.com"),
            Ok("edition.cnn.com".to_string())
        );
        // Kept, as Envoy's TLS inspector keeps it (it then matches no route).
        assert_eq!(
            validate_host_name(b"a.example."),
            Ok("a.example.".to_string())
        );
        assert_eq!(
            validate_host_name(b"_dmarc.x-y.example"),
            Ok("_dmarc.x-y.example".to_string())
        );
        for bad in [
            &b""[..],
            b".",
            b"a..b",
            b".a",
            b"a b",
            b"a\0b",
            b"caf\xc3\xa9.example",
            b"*.example",
            b"a/b",
        ] {
            assert!(validate_host_name(bad).is_err(), "{bad:?}");
        }
        let long_label = [b'a'; 64];
        assert!(validate_host_name(&long_label).is_err());
        let mut long_name = Vec::new();
        for _ in 0..64 {
            long_name.extend_from_slice(b"abc.");
        }
        assert!(validate_host_name(&long_name).is_err());
    }

    #[test]
    fn early_not_tls() {
        assert_eq!(parse_client_hello(b"G"), Err(ParseError::NotTls));
        assert_eq!(parse_client_hello(b"\x16\x02"), Err(ParseError::NotTls));
        assert_eq!(parse_client_hello(b"\x16\x03\x00"), Err(ParseError::NotTls));
        assert_eq!(parse_client_hello(b"\x16\x03\x05"), Err(ParseError::NotTls));
        // SSLv2-compatible hello.
        assert_eq!(parse_client_hello(b"\x80\x2e\x01"), Err(ParseError::NotTls));
    }

    #[test]
    fn hints_are_lower_bounds() {
        assert_eq!(
            parse_client_hello(b""),
            Err(ParseError::Incomplete {
                needed_hint: Some(1)
            })
        );
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01"),
            Err(ParseError::Incomplete {
                needed_hint: Some(2)
            })
        );
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x40"),
            Err(ParseError::Incomplete {
                needed_hint: Some(1)
            })
        );
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x40\x01"),
            Err(ParseError::Incomplete {
                needed_hint: Some(3)
            })
        );
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c"),
            Err(ParseError::Incomplete {
                needed_hint: Some(0x40 - 4)
            })
        );
    }

    #[test]
    fn header_level_errors() {
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x00"),
            Err(ParseError::Malformed("zero-length handshake record"))
        );
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x40\x01"),
            Err(ParseError::Malformed("record longer than 2^14 bytes"))
        );
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x40\x02"),
            Err(ParseError::Malformed(
                "first handshake message is not a ClientHello"
            ))
        );
        // Handshake length 0x010001 > 64 KiB.
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x40\x01\x01\x00\x01"),
            Err(ParseError::TooLarge)
        );
        // A 4-byte record announcing a 0x20-byte hello, then an alert record.
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x04\x01\x00\x00\x20\x15"),
            Err(ParseError::Malformed(
                "non-handshake record before the ClientHello was complete"
            ))
        );
        // Record of 0x40 bytes, hello of 0x10: data after the hello in its record.
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x40\x01\x00\x00\x10"),
            Err(ParseError::Malformed(
                "data after the ClientHello in its last record"
            ))
        );
    }

    #[test]
    fn resumed_parser_matches_one_shot_on_header_bytes() {
        let stream = b"\x16\x03\x01\x00\x02\x01\x00\x16\x03\x03\x00\x02\x00\x30";
        let mut p = ClientHelloParser::new();
        for n in 0..=stream.len() {
            assert_eq!(
                p.parse(&stream[..n]),
                parse_client_hello(&stream[..n]),
                "prefix {n}"
            );
        }
    }
}
