//! The chunked transfer coding (RFC 9112 §7.1), decoded in place from a read buffer: for
//! response bodies on upstream connections ([`crate::h1`]) and request bodies on downstream
//! ones (egret-listener's HTTP/1.1 server). Chunk extensions are skipped as they arrive
//! (never buffered whole) and trailers dropped, as Envoy's HTTP/1 codec does by default.

use bytes::{Buf, Bytes, BytesMut};

/// A chunk-size line longer than this before its `;` or its end is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// The error for a trailer section past the bound.
pub const TRAILERS_TOO_LARGE: &str = "trailers too large";

/// Where the decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkState {
    /// At a chunk-size line.
    Size,
    /// In a chunk-size line's extensions, after its size: skipped to the line's end. `cr`:
    /// the last byte skipped was a CR.
    Extension { size: u64, cr: bool },
    /// Inside a chunk: this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section after the last chunk: this many bytes of it read.
    Trailers(usize),
}

/// What one call found.
pub enum Decoded {
    /// Chunk data (shares the buffer's allocation).
    Data(Bytes),
    /// The last chunk and the trailer section have been read.
    End,
    /// `buf` holds no further complete piece.
    NeedMore,
}

/// Decodes what `buf` holds from `state` on, consuming it. The error says what broke the
/// framing; `max_trailers` bounds the trailer section.
pub fn decode(
    buf: &mut BytesMut,
    state: &mut ChunkState,
    max_trailers: usize,
) -> Result<Decoded, &'static str> {
    loop {
        match state {
            ChunkState::Size => {
                let Some(at) = buf.iter().position(|&b| b == b'\n' || b == b';') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err("chunk size line too long");
                    }
                    return Ok(Decoded::NeedMore);
                };
                if at > MAX_CHUNK_LINE {
                    return Err("chunk size line too long");
                }
                if buf[at] == b';' {
                    // Extensions are skipped as they come, whatever their length (Envoy
                    // 1.40 relays a 70 KB one), never kept whole.
                    let size = chunk_size(&buf[..at])?;
                    buf.advance(at + 1);
                    *state = ChunkState::Extension { size, cr: false };
                    continue;
                }
                // CRLF only: Envoy 1.40's codec (Balsa) refuses a chunk-size line ended by a
                // bare LF, in requests and responses alike (checked with it).
                let Some(line) = buf[..at].strip_suffix(b"\r") else {
                    return Err("chunk size line not ended by CRLF");
                };
                let size = chunk_size(line)?;
                buf.advance(at + 1);
                *state = after_size(size);
            }
            ChunkState::Extension { size, cr } => {
                let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                    if let Some(&last) = buf.last() {
                        *cr = last == b'\r';
                    }
                    buf.clear();
                    return Ok(Decoded::NeedMore);
                };
                let crlf = match eol.checked_sub(1) {
                    Some(i) => buf[i] == b'\r',
                    None => *cr,
                };
                if !crlf {
                    return Err("chunk size line not ended by CRLF");
                }
                buf.advance(eol + 1);
                *state = after_size(*size);
            }
            ChunkState::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                let data = buf.split_to(n).freeze();
                if *left == 0 {
                    *state = ChunkState::DataEnd;
                }
                return Ok(Decoded::Data(data));
            }
            ChunkState::DataEnd => {
                // What follows a chunk's data up to the line's end is skipped, as Envoy
                // 1.40's codec does (`helloXX\r\n` is `hello`; a bare LF ends it too).
                let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err("chunk data not followed by CRLF");
                    }
                    return Ok(Decoded::NeedMore);
                };
                if eol > MAX_CHUNK_LINE {
                    return Err("chunk data not followed by CRLF");
                }
                buf.advance(eol + 1);
                *state = ChunkState::Size;
            }
            ChunkState::Trailers(seen) => {
                let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                    if *seen + buf.len() > max_trailers {
                        return Err(TRAILERS_TOO_LARGE);
                    }
                    return Ok(Decoded::NeedMore);
                };
                // The whole section is bounded, not just a line of it.
                *seen += eol + 1;
                if *seen > max_trailers {
                    return Err(TRAILERS_TOO_LARGE);
                }
                let blank = eol == 0 || (eol == 1 && buf[0] == b'\r');
                buf.advance(eol + 1);
                if blank {
                    return Ok(Decoded::End);
                }
            }
        }
    }
}

/// A chunk size: hex digits, blanks around them allowed.
fn chunk_size(digits: &[u8]) -> Result<u64, &'static str> {
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return Err("invalid chunk size");
    }
    let mut size: u64 = 0;
    for &d in digits {
        let v = (d as char).to_digit(16).ok_or("invalid chunk size")?;
        size = size << 4 | u64::from(v);
    }
    Ok(size)
}

fn after_size(size: u64) -> ChunkState {
    if size == 0 {
        ChunkState::Trailers(0)
    } else {
        ChunkState::Data(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(input: &[u8]) -> Result<(Vec<u8>, bool, usize), &'static str> {
        let mut buf = BytesMut::from(input);
        let mut state = ChunkState::Size;
        let mut out = Vec::new();
        loop {
            match decode(&mut buf, &mut state, 1024)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::End => return Ok((out, true, buf.len())),
                Decoded::NeedMore => return Ok((out, false, buf.len())),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers_dropped() {
        let (data, end, left) =
            chunks(b"5;ext=1\r\nhello\r\n0006\r\n world\r\n0\r\nx-t: 1\r\n\r\n").unwrap();
        assert_eq!(data, b"hello world");
        assert!(end);
        assert_eq!(left, 0);
        // Split anywhere, it waits for more.
        let (data, end, _) = chunks(b"5\r\nhel").unwrap();
        assert_eq!(data, b"hel");
        assert!(!end);
        assert!(chunks(b"zz\r\n").is_err());
        assert!(chunks(b"ffffffffffffffffff\r\n").is_err());
        // As Envoy 1.40's codec (checked with it): what follows a chunk's data is skipped
        // to the line's end, a chunk-size line needs its CR, the last blank line does not.
        let (data, end, _) = chunks(b"2\r\nokXX\r\n1\r\n!\rY\n0\r\n\n").unwrap();
        assert_eq!((&data[..], end), (&b"ok!"[..], true));
        assert!(chunks(b"2\nok\r\n").is_err());
        assert!(chunks(b"2\r\nok\r\n0\n\r\n").is_err());
        let junk = format!("2\r\nok{}", "x".repeat(5000));
        assert!(chunks(junk.as_bytes()).is_err());
        // Extensions of any length are skipped as they come (Envoy relays a 70 KB one),
        // and still need their CRLF; a size line without them is bounded.
        let long_ext = format!(
            "5;{}\r\nhello\r\n0;{}\r\n\r\n",
            "x".repeat(70_000),
            "y".repeat(9000)
        );
        assert_eq!(
            chunks(long_ext.as_bytes()),
            Ok((b"hello".to_vec(), true, 0))
        );
        let bare_lf = format!("5;{}\nhello\r\n", "x".repeat(5000));
        assert!(chunks(bare_lf.as_bytes()).is_err());
        assert!(chunks(format!("{}\r\n", "0".repeat(5000)).as_bytes()).is_err());
        // Limits: trailers past the bound.
        let many = format!("0\r\n{}\r\n", "x-t: 1\r\n".repeat(200));
        assert!(chunks(many.as_bytes()).is_err());
        // What follows the body stays in the buffer (a pipelined request).
        let (_, end, left) = chunks(b"0\r\n\r\nGET").unwrap();
        assert!(end);
        assert_eq!(left, 3);
    }
}
