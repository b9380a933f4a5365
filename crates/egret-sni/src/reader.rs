//! Reading a ClientHello off a stream without terminating TLS: read, re-parse, repeat, and
//! hand back every byte read so the caller can replay it to the upstream.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::client_hello::{
    ClientHello, ClientHelloParser, ParseError, MAX_CLIENT_HELLO_RECORD_BYTES,
};

/// How long a client may take to send its whole ClientHello: Envoy's default
/// `listener_filters_timeout` (15 s).
pub const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = egret_core::limits::LISTENER_FILTER_TIMEOUT;

/// Default cap on bytes buffered while waiting for the ClientHello (record headers included).
pub const DEFAULT_MAX_CLIENT_HELLO_READ: usize = MAX_CLIENT_HELLO_RECORD_BYTES;

/// Largest single read while waiting for the hello. One full-size TLS record plus its header,
/// so a typical hello arrives in one read while a dribbling client costs no big buffer.
const READ_CHUNK: usize = (1 << 14) + 5;

/// Why no ClientHello could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client did not send a complete ClientHello within the timeout.
    #[error("timed out waiting for the TLS ClientHello")]
    Timeout,
    /// The client closed its side (EOF) before a complete ClientHello.
    #[error("connection closed before a complete TLS ClientHello")]
    Closed,
    /// Reading the socket failed (e.g. connection reset).
    #[error("reading the TLS ClientHello failed: {0}")]
    Io(#[source] io::Error),
    /// The bytes are not an acceptable ClientHello.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Reads from `stream` until the bytes read form a complete ClientHello, at most `max` bytes
/// and for at most `timeout` in all (not per read).
///
/// Returns every byte read — the ClientHello's records and anything the client sent after
/// them in the same reads — to be replayed to the upstream, and the parsed hello
/// (`hello.consumed <= bytes.len()`). Works with clients that send one byte per write.
///
/// On error the bytes are dropped; use [`read_client_hello_into`] when the caller needs them
/// (for instance to count bytes received for the access log).
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
    max: usize,
) -> Result<(Vec<u8>, ClientHello), ReadError> {
    let mut buf = Vec::new();
    let hello = read_client_hello_into(stream, &mut buf, timeout, max).await?;
    Ok((buf, hello))
}

/// Like [`read_client_hello`], but appends the bytes read to `buf` (which must be empty or
/// hold bytes already read from this stream), so they are still there when it fails.
pub async fn read_client_hello_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    timeout: Duration,
    max: usize,
) -> Result<ClientHello, ReadError> {
    let result = match tokio::time::timeout(timeout, read_loop(stream, buf, max)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ReadError::Timeout),
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, bytes_read = buf.len(), "no ClientHello");
    }
    result
}

async fn read_loop<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<ClientHello, ReadError> {
    let mut parser = ClientHelloParser::new();
    loop {
        match parser.parse(buf) {
            Ok(hello) => return Ok(hello),
            Err(ParseError::Incomplete { .. }) => {}
            Err(e) => return Err(ReadError::Parse(e)),
        }
        let room = max.saturating_sub(buf.len());
        if room == 0 {
            return Err(ReadError::Parse(ParseError::TooLarge));
        }
        let want = room.min(READ_CHUNK);
        buf.reserve(want);
        // `take` bounds this read to `want` bytes; `read_buf` appends only what was read, so
        // the buffer stays exact even if the timeout cancels us mid-read.
        let n = (&mut *stream)
            .take(want as u64)
            .read_buf(buf)
            .await
            .map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
    }
}
