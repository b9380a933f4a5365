//! ClientHello parser cases: synthetic hellos for each rule, real hellos from rustls, openssl
//! and curl (captured now, and committed fixtures).

mod common;

use common::*;
use egret_core::limits::MAX_CLIENT_HELLO_BYTES;
use egret_sni::{parse_client_hello, ClientHello, ClientHelloParser, ParseError};

/// Parses `raw` one-shot and byte by byte with a resumed parser; both must agree, and every
/// strict prefix must be Incomplete.
fn parse_all_ways(raw: &[u8]) -> Result<ClientHello, ParseError> {
    let whole = parse_client_hello(raw);
    let mut parser = ClientHelloParser::new();
    let mut incremental = None;
    for n in 0..=raw.len() {
        match parser.parse(&raw[..n]) {
            Err(ParseError::Incomplete { .. }) => {}
            other => {
                incremental = Some((n, other));
                break;
            }
        }
    }
    match incremental {
        Some((_, r)) => assert_eq!(r, whole),
        None => assert!(
            whole.as_ref().is_err_and(|e| e.is_incomplete()),
            "{whole:?}"
        ),
    }
    if let Ok(h) = &whole {
        for n in 0..h.consumed {
            assert!(
                parse_client_hello(&raw[..n]).is_err_and(|e| e.is_incomplete()),
                "prefix {n}"
            );
        }
    }
    whole
}

fn basic() -> HelloBuilder {
    HelloBuilder::new()
        .sni("Edition.CNN.com")
        .alpn(&[b"h2", b"http/1.1"])
        .versions(&[TLS13, TLS12])
}

#[test]
fn one_record_tls12_record_version() {
    let raw = basic().records(TLS12, 16384);
    let h = parse_all_ways(&raw).unwrap();
    assert_eq!(h.sni.as_deref(), Some("edition.cnn.com"));
    assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(h.supported_versions, Some(vec![TLS13, TLS12]));
    assert!(h.offers_tls13());
    assert!(h.offers_alpn(b"h2"));
    assert_eq!(h.record_version, TLS12);
    assert_eq!(h.legacy_version, TLS12);
    assert_eq!(h.cipher_suites, vec![0x1301, 0x1302, 0xc02f]);
    assert_eq!(h.consumed, raw.len());
}

#[test]
fn record_versions_tls10_to_tls13() {
    for v in [TLS10, 0x0302, TLS12, TLS13] {
        let raw = basic().records(v, 16384);
        let h = parse_client_hello(&raw).unwrap();
        assert_eq!(h.record_version, v);
        assert_eq!(h.sni.as_deref(), Some("edition.cnn.com"));
    }
}

#[test]
fn sslv3_and_other_versions_are_not_tls() {
    for v in [0x0300u16, 0x0200, 0x0305, 0x0403] {
        let raw = basic().records(v, 16384);
        assert_eq!(
            parse_client_hello(&raw),
            Err(ParseError::NotTls),
            "{v:#06x}"
        );
        assert_eq!(
            parse_client_hello(&raw[..3]),
            Err(ParseError::NotTls),
            "{v:#06x} after 3 bytes"
        );
    }
}

#[test]
fn tls10_hello_without_extensions() {
    let mut b = HelloBuilder::new();
    b.legacy_version = TLS10;
    b.extensions = None;
    b.session_id.clear();
    let h = parse_all_ways(&b.records(TLS10, 16384)).unwrap();
    assert_eq!(h.sni, None);
    assert!(h.alpn.is_empty());
    assert_eq!(h.supported_versions, None);
    assert!(!h.offers_tls13());
}

#[test]
fn split_over_several_records() {
    let b = basic().ext(21, vec![0; 300]);
    let one = parse_client_hello(&b.records(TLS10, 16384)).unwrap();
    for frag in [1, 2, 3, 4, 5, 7, 64, 100] {
        let raw = b.records(TLS10, frag);
        let h = parse_all_ways(&raw).unwrap();
        assert_eq!(h.consumed, raw.len(), "fragment {frag}");
        assert_eq!(
            ClientHello {
                consumed: one.consumed,
                ..h
            },
            one,
            "fragment {frag}"
        );
    }
    // Uneven cuts, including one through the handshake header.
    let raw = records_with_sizes(TLS12, &b.handshake(), &[2, 1, 50, 3, 999]);
    assert_eq!(parse_all_ways(&raw).unwrap().sni, one.sni);
}

#[test]
fn bytes_after_the_hello_are_not_consumed() {
    let mut raw = basic().records(TLS12, 100);
    let hello_len = raw.len();
    // A TLS 1.3 client may send early data right after; a CCS or anything else follows too.
    raw.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
    let h = parse_all_ways(&raw).unwrap();
    assert_eq!(h.consumed, hello_len);
}

#[test]
fn grease_is_ignored() {
    let raw = HelloBuilder::new()
        .sni("grease.example")
        .alpn(&[b"\x3a\x3a", b"h2", b"http/1.1"])
        .versions(&[0x7a7a, TLS13, TLS12])
        .grease()
        .records(TLS10, 16384);
    let h = parse_all_ways(&raw).unwrap();
    assert_eq!(h.sni.as_deref(), Some("grease.example"));
    assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(h.supported_versions, Some(vec![TLS13, TLS12]));
    assert_eq!(h.cipher_suites, vec![0x1301, 0x1302, 0xc02f]);
}

#[test]
fn no_sni() {
    let raw = HelloBuilder::new().alpn(&[b"h2"]).records(TLS10, 16384);
    let h = parse_all_ways(&raw).unwrap();
    assert_eq!(h.sni, None);
    assert_eq!(h.alpn, vec![b"h2".to_vec()]);
}

#[test]
fn server_name_rules() {
    let bad_names: [&[u8]; 5] = [
        b"",
        b"a..b",
        b"bad name.example",
        b"caf\xc3\xa9.example",
        b"nul\0.example",
    ];
    for name in bad_names {
        let mut entry = vec![0u8];
        entry.extend_from_slice(&vec16(name));
        let raw = HelloBuilder::new()
            .ext(0, vec16(&entry))
            .records(TLS10, 16384);
        assert!(
            matches!(parse_client_hello(&raw), Err(ParseError::Malformed(_))),
            "{name:?}"
        );
    }
    // Two host_name entries.
    let mut list = vec![0u8];
    list.extend_from_slice(&vec16(b"a.example"));
    list.push(0);
    list.extend_from_slice(&vec16(b"b.example"));
    let raw = HelloBuilder::new()
        .ext(0, vec16(&list))
        .records(TLS10, 16384);
    assert!(matches!(
        parse_client_hello(&raw),
        Err(ParseError::Malformed(_))
    ));
    // An unknown name type is skipped; the host_name after it is used.
    let mut list = vec![7u8];
    list.extend_from_slice(&vec16(b"opaque"));
    list.push(0);
    list.extend_from_slice(&vec16(b"b.example"));
    let raw = HelloBuilder::new()
        .ext(0, vec16(&list))
        .records(TLS10, 16384);
    assert_eq!(
        parse_client_hello(&raw).unwrap().sni.as_deref(),
        Some("b.example")
    );
    // Empty server_name extension (what servers send back) is not valid from a client.
    let raw = HelloBuilder::new().ext(0, vec![]).records(TLS10, 16384);
    assert!(matches!(
        parse_client_hello(&raw),
        Err(ParseError::Malformed(_))
    ));
    // Duplicate server_name extension.
    let raw = HelloBuilder::new()
        .sni("a.example")
        .sni("b.example")
        .records(TLS10, 16384);
    assert_eq!(
        parse_client_hello(&raw),
        Err(ParseError::Malformed("duplicate server_name extension"))
    );
}

#[test]
fn larger_than_16k_across_records() {
    // A 20 KB extension (the padding extension, 21) forces at least two full records.
    let b = basic().ext(21, vec![0; 20_000]);
    let raw = b.records(TLS10, 16384);
    assert!(raw.len() > 20_000);
    let h = parse_all_ways(&raw).unwrap();
    assert_eq!(h.sni.as_deref(), Some("edition.cnn.com"));
    assert_eq!(h.consumed, raw.len());
}

#[test]
fn close_to_the_cap_is_accepted_and_past_it_refused() {
    let base = basic().handshake().len();
    // Handshake body exactly MAX_CLIENT_HELLO_BYTES: pad with one more extension.
    let pad = MAX_CLIENT_HELLO_BYTES + 4 - base - 4;
    let at_cap = basic().ext(21, vec![0; pad]);
    assert_eq!(at_cap.handshake().len(), MAX_CLIENT_HELLO_BYTES + 4);
    let raw = at_cap.records(TLS12, 16384);
    assert_eq!(parse_client_hello(&raw).unwrap().consumed, raw.len());

    let over = basic().ext(21, vec![0; pad + 1]);
    let raw = over.records(TLS12, 16384);
    assert_eq!(parse_client_hello(&raw), Err(ParseError::TooLarge));
    // Refused as soon as the handshake length is visible, long before the bytes arrive.
    assert_eq!(parse_client_hello(&raw[..9]), Err(ParseError::TooLarge));

    // A small hello cut into so many tiny records that the raw bytes exceed the cap.
    let tiny = basic().ext(21, vec![0; 12_000]).handshake();
    let raw = records_with_sizes(TLS12, &tiny, &[1]);
    assert_eq!(parse_client_hello(&raw), Err(ParseError::TooLarge));
}

#[test]
fn not_tls() {
    assert_eq!(
        parse_client_hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Err(ParseError::NotTls)
    );
    assert_eq!(parse_client_hello(b"G"), Err(ParseError::NotTls));
    assert_eq!(
        parse_client_hello(b"SSH-2.0-OpenSSH_9.2\r\n"),
        Err(ParseError::NotTls)
    );
    // An HTTP/2 prior-knowledge preface.
    assert_eq!(
        parse_client_hello(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        Err(ParseError::NotTls)
    );
    assert_eq!(
        parse_client_hello(b""),
        Err(ParseError::Incomplete {
            needed_hint: Some(1)
        })
    );
}

#[test]
fn lying_and_truncated_lengths() {
    let good = basic().handshake();

    // Handshake length says more than the records carry, and the stream ends: Incomplete.
    let mut longer = good.clone();
    longer[3] = longer[3].wrapping_add(10);
    let raw = records(TLS12, &longer, 16384);
    assert!(parse_client_hello(&raw).is_err_and(|e| e.is_incomplete()));

    // Handshake length says less than the record carries: Malformed.
    let mut shorter = good.clone();
    shorter[3] = shorter[3].wrapping_sub(10);
    let raw = records(TLS12, &shorter, 16384);
    assert_eq!(
        parse_client_hello(&raw),
        Err(ParseError::Malformed(
            "data after the ClientHello in its last record"
        ))
    );

    // Inner vectors whose lengths run past their container.
    let cases: Vec<(&str, HelloBuilder)> = vec![
        ("odd cipher suites", {
            let mut b = basic();
            b.cipher_suites.clear();
            b
        }),
        ("no compression", {
            let mut b = basic();
            b.compression.clear();
            b
        }),
        ("session id 33", {
            let mut b = basic();
            b.session_id = vec![1; 33];
            b
        }),
        ("ext overruns", basic().ext(0xff01, Vec::new())),
    ];
    for (what, b) in cases {
        let mut hs = b.handshake();
        if what == "ext overruns" {
            // Make the last extension's length claim 5 more bytes than exist, and grow the
            // message to match so only the inner length lies.
            let n = hs.len();
            hs[n - 1] = 5;
        }
        let raw = records(TLS12, &hs, 16384);
        assert!(
            matches!(parse_client_hello(&raw), Err(ParseError::Malformed(_))),
            "{what}: {:?}",
            parse_client_hello(&raw)
        );
    }

    // Body cut short: a hello of only a version and part of the random.
    let mut short = vec![1, 0, 0, 10];
    short.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        parse_client_hello(&records(TLS12, &short, 100)),
        Err(ParseError::Malformed("truncated random"))
    );

    // Extension block length not matching what follows.
    let mut hs = basic().handshake();
    let body_len = hs.len() - 4;
    hs.extend_from_slice(&[0, 0]);
    let new_len = (body_len + 2) as u32;
    hs[1..4].copy_from_slice(&new_len.to_be_bytes()[1..]);
    assert!(matches!(
        parse_client_hello(&records(TLS12, &hs, 16384)),
        Err(ParseError::Malformed(_))
    ));
}

#[test]
fn record_layer_rules() {
    // Zero-length record.
    assert_eq!(
        parse_client_hello(b"\x16\x03\x01\x00\x00\x01"),
        Err(ParseError::Malformed("zero-length handshake record"))
    );
    // A zero-length record in the middle of a split hello.
    let hs = basic().handshake();
    let mut raw = records(TLS12, &hs[..10], 16384);
    raw.extend_from_slice(b"\x16\x03\x03\x00\x00");
    raw.extend_from_slice(&records(TLS12, &hs[10..], 16384));
    assert_eq!(
        parse_client_hello(&raw),
        Err(ParseError::Malformed("zero-length handshake record"))
    );
    // An alert interleaved between the two halves.
    let mut raw = records(TLS12, &hs[..10], 16384);
    raw.extend_from_slice(b"\x15\x03\x03\x00\x02\x02\x28");
    raw.extend_from_slice(&records(TLS12, &hs[10..], 16384));
    assert!(matches!(
        parse_client_hello(&raw),
        Err(ParseError::Malformed(_))
    ));
    // A ServerHello instead of a ClientHello.
    let mut server_hello = hs.clone();
    server_hello[0] = 2;
    assert_eq!(
        parse_client_hello(&records(TLS12, &server_hello, 16384)),
        Err(ParseError::Malformed(
            "first handshake message is not a ClientHello"
        ))
    );
    // A second record whose version is not TLS.
    let mut raw = records(TLS12, &hs[..10], 16384);
    raw.extend_from_slice(&records(0x0300, &hs[10..], 16384));
    assert!(matches!(
        parse_client_hello(&raw),
        Err(ParseError::Malformed(_))
    ));
}

#[test]
fn display_texts() {
    assert_eq!(
        ParseError::NotTls.to_string(),
        "not a TLS connection (first bytes are not a TLS 1.0-1.3 handshake record)"
    );
    assert_eq!(
        ParseError::TooLarge.to_string(),
        "TLS ClientHello larger than 65536 bytes"
    );
    assert_eq!(
        ParseError::Malformed("truncated random").to_string(),
        "malformed TLS ClientHello: truncated random"
    );
    assert_eq!(
        ParseError::Incomplete {
            needed_hint: Some(3)
        }
        .to_string(),
        "incomplete TLS ClientHello (at least 3 more bytes needed)"
    );
}

// ---- real ClientHellos -------------------------------------------------------------------

fn check_real(raw: &[u8], sni: &str, alpn: &[&[u8]]) -> ClientHello {
    let h = parse_all_ways(raw).unwrap();
    assert_eq!(h.sni.as_deref(), Some(sni));
    let want: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
    assert_eq!(h.alpn, want);
    assert_eq!(h.consumed, raw.len());
    // The same hello re-cut into tiny and uneven records still parses the same.
    let hs = handshake_of(raw);
    for sizes in [&[1usize][..], &[3, 1, 7], &[200, 5]] {
        let recut = records_with_sizes(0x0301, &hs, sizes);
        let again = parse_client_hello(&recut).unwrap();
        assert_eq!(again.sni, h.sni);
        assert_eq!(again.alpn, h.alpn);
        assert_eq!(again.consumed, recut.len());
    }
    h
}

#[tokio::test]
async fn rustls_hello_tls13_and_tls12() {
    let config = rustls_config(vec![], rustls::ALL_VERSIONS);
    let raw = capture_rustls(config, "API.Example.com").await;
    let h = check_real(&raw, "api.example.com", &[b"h2", b"http/1.1"]);
    assert!(h.offers_tls13());

    let config = rustls_config(vec![], &[&rustls::version::TLS12]);
    let raw = capture_rustls(config, "tls12.example").await;
    let h = check_real(&raw, "tls12.example", &[b"h2", b"http/1.1"]);
    assert!(!h.offers_tls13());
}

#[tokio::test]
async fn rustls_post_quantum_hello_is_over_1k() {
    let config = rustls_config(
        vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768],
        &[&rustls::version::TLS13],
    );
    let raw = capture_rustls(config, "pq.example").await;
    assert!(raw.len() > 1024, "{} bytes", raw.len());
    check_real(&raw, "pq.example", &[b"h2", b"http/1.1"]);
}

#[tokio::test]
async fn openssl_s_client_hello() {
    let Some(raw) = capture_openssl().await else {
        return;
    };
    check_real(&raw, "x.example", &[b"h2"]);
}

#[tokio::test]
async fn curl_hello() {
    let Some(raw) = capture_curl().await else {
        return;
    };
    check_real(&raw, "x.example", &[b"h2", b"http/1.1"]);
}

#[test]
fn committed_fixtures() {
    let h = check_real(
        &fixture("curl-7.88-openssl-3.0.bin"),
        "x.example",
        &[b"h2", b"http/1.1"],
    );
    assert!(h.offers_tls13());
    let raw = fixture("rustls-0.23-x25519mlkem768.bin");
    assert!(raw.len() > 1024);
    let h = check_real(&raw, "pq.example", &[b"h2", b"http/1.1"]);
    assert_eq!(h.supported_versions, Some(vec![0x0304]));
    check_real(&fixture("openssl-3.0-s_client.bin"), "x.example", &[b"h2"]);
}

/// Re-captures the committed fixtures:
/// `cargo test -p egret-sni --test parse -- --ignored regenerate_fixtures`.
#[tokio::test]
#[ignore = "rewrites tests/fixtures; run by hand"]
async fn regenerate_fixtures() {
    std::fs::create_dir_all(fixture_path("")).unwrap();
    if let Some(raw) = capture_curl().await {
        std::fs::write(fixture_path("curl-7.88-openssl-3.0.bin"), raw).unwrap();
    }
    if let Some(raw) = capture_openssl().await {
        std::fs::write(fixture_path("openssl-3.0-s_client.bin"), raw).unwrap();
    }
    let config = rustls_config(
        vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768],
        &[&rustls::version::TLS13],
    );
    let raw = capture_rustls(config, "pq.example").await;
    std::fs::write(fixture_path("rustls-0.23-x25519mlkem768.bin"), raw).unwrap();
}
