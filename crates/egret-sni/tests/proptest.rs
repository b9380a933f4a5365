//! Properties of the ClientHello parser (mirrored by the cargo-fuzz target in /fuzz):
//! arbitrary bytes and arbitrary splits never panic, and feeding a stream in pieces agrees
//! with parsing it at once.

mod common;

use common::*;
use egret_sni::{parse_client_hello, ClientHello, ClientHelloParser, ParseError};
use proptest::prelude::*;

/// Feeds `bytes` to one resumed parser in pieces ending at `cuts` (then the whole), stopping
/// at the first final answer, and checks it against the one-shot parse of all the bytes and
/// against a fresh parser on the same prefix.
fn check_incremental(bytes: &[u8], cuts: &[usize]) -> Result<ClientHello, ParseError> {
    let whole = parse_client_hello(bytes);
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c % (bytes.len() + 1)).collect();
    ends.push(bytes.len());
    ends.sort_unstable();
    let mut parser = ClientHelloParser::new();
    for end in ends {
        let prefix = &bytes[..end];
        let resumed = parser.parse(prefix);
        assert_eq!(
            resumed,
            parse_client_hello(prefix),
            "resumed vs fresh at {end}"
        );
        match resumed {
            Err(ParseError::Incomplete { needed_hint }) => {
                if let Some(n) = needed_hint {
                    assert!(n >= 1);
                    // The hint is a lower bound: nothing can change before it.
                    if end + n - 1 <= bytes.len() && n > 1 {
                        assert!(parse_client_hello(&bytes[..end + n - 1])
                            .is_err_and(|e| e.is_incomplete()));
                    }
                }
            }
            final_answer => {
                assert_eq!(final_answer, whole, "incremental at {end} vs one-shot");
                if let Ok(h) = &final_answer {
                    assert!(h.consumed <= end);
                }
                return whole;
            }
        }
    }
    assert!(whole.as_ref().is_err_and(|e| e.is_incomplete()));
    whole
}

/// Byte vectors that often start like a TLS handshake record, so the interesting paths get
/// exercised, not just NotTls.
fn tlsish_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        0u8..=5,
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(tls, minor, mut v)| {
            if tls {
                let mut head = vec![22, 3, minor];
                head.append(&mut v);
                head
            } else {
                v
            }
        })
}

fn valid_hello() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::option::of("[a-z0-9]{1,20}(\\.[a-z0-9]{1,10}){0,3}"),
        any::<bool>(),
        any::<bool>(),
        0usize..3000,
        proptest::collection::vec(1usize..400, 1..5),
        prop_oneof![Just(TLS10), Just(0x0302u16), Just(TLS12), Just(TLS13)],
    )
        .prop_map(|(sni, alpn, grease, pad, sizes, version)| {
            let mut b = HelloBuilder::new();
            if let Some(name) = &sni {
                b = b.sni(name);
            }
            if alpn {
                b = b.alpn(&[b"h2", b"http/1.1"]);
            }
            if grease {
                b = b.grease();
            }
            b = b.versions(&[TLS13, TLS12]).ext(21, vec![0; pad]);
            records_with_sizes(version, &b.handshake(), &sizes)
        })
}

// 256 cases per property by default; PROPTEST_CASES=100000 for a longer soak.
proptest! {

    #[test]
    fn arbitrary_bytes_and_splits(bytes in tlsish_bytes(), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        check_incremental(&bytes, &cuts).ok();
    }

    #[test]
    fn valid_hellos_parse_in_any_split(hello in valid_hello(), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let h = check_incremental(&hello, &cuts);
        prop_assert!(h.is_ok(), "{:?}", h);
        let h = h.unwrap();
        prop_assert_eq!(h.consumed, hello.len());
        prop_assert!(h.supported_versions.is_some());
    }

    #[test]
    fn mutated_hellos_never_panic(
        hello in valid_hello(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        truncate in proptest::option::of(any::<usize>()),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut bytes = hello;
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        if let Some(t) = truncate {
            bytes.truncate(t % (bytes.len() + 1));
        }
        check_incremental(&bytes, &cuts).ok();
    }
}

#[test]
fn mutated_real_hello_every_single_byte() {
    // Every position of a real rustls hello set to a few values: never panics, and the
    // one-shot and byte-by-byte answers agree.
    let raw = fixture("rustls-0.23-x25519mlkem768.bin");
    for i in 0..raw.len() {
        for v in [0x00, 0xff, raw[i] ^ 0x01, raw[i].wrapping_add(0x80)] {
            let mut m = raw.clone();
            m[i] = v;
            let cuts: Vec<usize> = (0..m.len()).step_by(97).collect();
            check_incremental(&m, &cuts).ok();
        }
    }
}
