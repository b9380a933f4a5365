//! TLS passthrough for Egret: reads a client's TLS ClientHello without terminating TLS (to
//! learn the SNI host name and ALPN list), then splices the connection to the chosen upstream.
//!
//! This crate owns the ClientHello parser (pure, no I/O, fuzzed: [`parse_client_hello`]), the
//! async reader that peeks the hello off a stream and keeps every byte for replay
//! ([`read_client_hello`]), and the bidirectional byte copy with half-close, idle timeout and
//! byte counters ([`forward`], [`forward_with_prefix`]; on Linux also [`forward_spliced`], the
//! same contract through `splice(2)`, with no copy through user space). It must not decrypt or terminate TLS,
//! must not panic or allocate without bound on anything a client sends, and knows nothing of
//! configuration, routing tables, DNS or access-log formatting: callers pass in timeouts and
//! caps and turn the results into routing decisions and log fields.
#![forbid(unsafe_code)]

pub mod client_hello;
pub mod forward;
pub mod reader;
pub mod splice;

pub use client_hello::{
    parse_client_hello, ClientHello, ClientHelloParser, ParseError, MAX_CLIENT_HELLO_RECORD_BYTES,
};
pub use forward::{
    forward, forward_with_prefix, forward_with_prefix_until, ForwardEnd, ForwardResult, Side,
    FORWARD_BUFFER_BYTES,
};
pub use reader::{
    read_client_hello, read_client_hello_into, ReadError, DEFAULT_CLIENT_HELLO_TIMEOUT,
    DEFAULT_MAX_CLIENT_HELLO_READ,
};
pub use splice::{forward_spliced, forward_spliced_until};
#[cfg(target_os = "linux")]
pub use splice::{forward_spliced_with_pipe_size, SPLICE_CHUNK_BYTES};
