//! Fuzzes the ClientHello parser: on any input it must not panic, and feeding the input in
//! pieces (one byte at a time, and in uneven chunks) must give the same answer as parsing it
//! at once. The same property runs as a proptest in crates/egret-sni/tests/proptest.rs.
//!
//! The whole input is the stream, so captured ClientHellos (crates/egret-sni/tests/fixtures)
//! make good seeds.
#![no_main]

use egret_sni::{parse_client_hello, ClientHello, ClientHelloParser, ParseError};
use libfuzzer_sys::fuzz_target;

/// Feeds prefixes ending at the offsets `ends` yields to one resumed parser; returns the first
/// final answer (or the last Incomplete) and the prefix length it came at.
fn incremental(stream: &[u8], ends: impl Iterator<Item = usize>) -> (Result<ClientHello, ParseError>, usize) {
    let mut parser = ClientHelloParser::new();
    let mut last = (parse_client_hello(&[]), 0);
    for end in ends {
        let end = end.min(stream.len());
        let prefix = &stream[..end];
        let answer = parser.parse(prefix);
        // A resumed parser and a fresh one agree on every prefix.
        assert_eq!(answer, parse_client_hello(prefix), "resumed vs fresh at {end}");
        let done = !matches!(answer, Err(ParseError::Incomplete { .. }));
        last = (answer, end);
        if done || end == stream.len() {
            break;
        }
    }
    last
}

fn check(whole: &Result<ClientHello, ParseError>, (answer, end): (Result<ClientHello, ParseError>, usize)) {
    assert_eq!(&answer, whole, "incremental (stopped at {end}) vs one-shot");
    if let Ok(hello) = &answer {
        assert!(hello.consumed <= end);
    }
}

fuzz_target!(|stream: &[u8]| {
    let whole = parse_client_hello(stream);

    // One byte per read.
    check(&whole, incremental(stream, 1..=stream.len()));

    // Uneven chunks (1..=61 bytes), varied by the input length.
    let mut step = stream.len() % 61 + 1;
    let mut at = 0usize;
    let ends = std::iter::from_fn(move || {
        at += step;
        step = (step * 7 + 3) % 61 + 1;
        Some(at)
    });
    check(&whole, incremental(stream, ends));
});
