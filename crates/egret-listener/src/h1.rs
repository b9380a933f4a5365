//! Egret's own HTTP/1.1 server codec: request heads parsed from the connection's read
//! buffer, request bodies decoded from it as the request's handler reads them, response
//! heads encoded for the socket. The connection itself is driven by [`crate::http`].
//!
//! Why not hyper's server (used before, as on the upstream side until
//! `egret_upstream::h1`): its dispatcher copies each request body through a channel, keeps
//! 16 KB of buffers per connection, allocates a header map per request, and its parser takes
//! what Envoy's codec refuses (two equal `content-length` fields were merged and forwarded).
//! Its refusals were bare (`400` with no body), so the listener had to hold hyper's answer
//! back from the socket and write Envoy's instead. Parsing is httparse's, as hyper's was;
//! limits, framing and refusals follow Envoy 1.40's HTTP/1 codec (`egret_http::refusal`).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use egret_core::limits::MAX_REQUEST_HEADERS_BYTES;
use egret_http::body::ResponseBody;
use egret_http::path;
use egret_http::refusal::{self, HeadError};
use egret_upstream::body::BodyError;
use egret_upstream::body::TrailersTooLarge;
use egret_upstream::chunked::{self, ChunkState, Decoded};
use egret_upstream::h1::{poll_read_growing, READ_START};

/// Envoy's default `max_headers_count` (hyper's limit too): more fields is `431`.
const MAX_HEADERS: usize = 100;
/// A request head still incomplete at this size is refused (`431`); one that completes
/// below it is measured as Envoy measures it by the handler (60 KiB of fields).
const MAX_HEAD_BUFFER: usize = MAX_REQUEST_HEADERS_BYTES * 4;
/// hyper's limit on a request target (`431`, as Envoy answers a request line past its
/// limit).
const MAX_URI_LEN: usize = u16::MAX as usize - 1;
/// What a client that sent `Expect: 100-continue` is answered first.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The socket of a downstream HTTP/1.1 connection and what has been read from it, shared
/// by the connection's task and the body of the request being served (which may be read
/// from another task: hyper's HTTP/2 client sends request bodies from its own).
pub struct ConnIo<S> {
    io: S,
    /// Bytes read and not yet consumed: the rest of a head, body bytes, a pipelined request.
    pub buf: BytesMut,
    read_size: usize,
    /// How much of the current request's body is still to be read.
    body: BodyState,
    /// The request being served (counts requests): a body reader of an earlier one, kept
    /// alive somewhere, must not read this one's body.
    generation: u64,
    /// The connection's task, when it waits for the body to be read to its end before it
    /// watches the socket for the client leaving.
    watcher: Option<Waker>,
}

/// The shared connection.
pub type SharedIo<S> = Arc<Mutex<ConnIo<S>>>;

pub fn lock<S>(io: &Mutex<ConnIo<S>>) -> MutexGuard<'_, ConnIo<S>> {
    io.lock().unwrap_or_else(|p| p.into_inner())
}

/// How far the current request's body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    /// No body, or all of it read.
    Done,
    Length(u64),
    Chunked(ChunkState),
    /// Its framing broke, or the client left: the connection is not reusable.
    Failed,
}

impl<S> ConnIo<S> {
    /// Whether the current request's body has been read to its end.
    pub fn body_done(&self) -> bool {
        self.body == BodyState::Done
    }

    /// The current request's body is not read further: a reader still alive somewhere (an
    /// early response, a client gone) fails instead of touching the socket, which may be
    /// drained or closed now.
    pub fn abandon_body(&mut self) {
        if self.body != BodyState::Done {
            self.body = BodyState::Failed;
        }
    }

    /// Whether the socket may be read for the client leaving (or a pipelined request): the
    /// current body has been read to its end. Otherwise the task is woken once it has.
    pub fn watchable(&mut self, cx: &Context<'_>) -> bool {
        if self.body_done() {
            return true;
        }
        match &self.watcher {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.watcher = Some(cx.waker().clone()),
        }
        false
    }

    fn body_ended(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.wake();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ConnIo<S> {
    pub fn new(io: S, buf: BytesMut) -> ConnIo<S> {
        ConnIo {
            io,
            buf,
            read_size: READ_START,
            body: BodyState::Done,
            generation: 0,
            watcher: None,
        }
    }

    /// Reads more into the buffer: `Ok(0)` at the stream's end.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_read_growing(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf,
            &mut self.read_size,
        )
    }

    /// The socket and what has been read from it and not consumed.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.io, self.buf)
    }

    /// Frees the read buffer of an idle connection, keeping a copy of what it holds (a
    /// request head cut short, usually nothing): keeping the buffer would keep all of it.
    pub fn release(&mut self) {
        self.buf = BytesMut::from(&self.buf[..]);
        self.read_size = READ_START;
    }

    pub fn io_mut(&mut self) -> Pin<&mut S> {
        Pin::new(&mut self.io)
    }

    /// Writes `bufs` (one `writev`).
    pub fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Sets up the body of the request just parsed; returns the request's generation.
    fn start_body(&mut self, framing: Framing) -> u64 {
        self.body = match framing {
            Framing::None => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkState::Size),
        };
        self.watcher = None;
        self.generation += 1;
        self.generation
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, io::Error>>> {
        let polled = self.poll_body_inner(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.body_ended();
        }
        polled
    }

    fn poll_body_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, io::Error>>> {
        loop {
            match &mut self.body {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Failed => {
                    return Poll::Ready(Some(Err(io::Error::other("request body failed"))))
                }
                BodyState::Length(left) => {
                    if !self.buf.is_empty() {
                        let n = self
                            .buf
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= n as u64;
                        if *left == 0 {
                            self.body = BodyState::Done;
                        }
                        return Poll::Ready(Some(Ok(self.buf.split_to(n).freeze())));
                    }
                }
                BodyState::Chunked(state) => {
                    match chunked::decode(&mut self.buf, state, MAX_REQUEST_HEADERS_BYTES) {
                        Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(d))),
                        Ok(Decoded::End) => {
                            self.body = BodyState::Done;
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::NeedMore) => {}
                        Err(e) => {
                            self.body = BodyState::Failed;
                            // `InvalidData`: the client's framing (egret-http's classifier);
                            // trailers past the limit are told apart (a `431`).
                            let e = if e == chunked::TRAILERS_TOO_LARGE {
                                io::Error::new(io::ErrorKind::InvalidData, TrailersTooLarge)
                            } else {
                                io::Error::new(io::ErrorKind::InvalidData, e)
                            };
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection mid-body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

/// The body of the request being served, read from the connection's buffer and socket as
/// the handler asks for it.
pub struct RequestBodyReader<S> {
    conn: SharedIo<S>,
    /// The request it reads the body of (see `ConnIo::generation`).
    generation: u64,
    /// What is left of a `content-length` body, for the size hint.
    length: Option<u64>,
}

impl<S> RequestBodyReader<S> {
    /// The reader of the body [`start_request`] set up (it returned `generation`).
    pub fn new(conn: SharedIo<S>, framing: Framing, generation: u64) -> RequestBodyReader<S> {
        let length = match framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        RequestBodyReader {
            conn,
            generation,
            length,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Body for RequestBodyReader<S> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = {
            let mut c = lock(&self.conn);
            if c.generation != self.generation {
                // Outlived its request: the connection has moved on.
                return Poll::Ready(Some(Err(io::Error::other("request body abandoned").into())));
            }
            c.poll_body(cx)
        };
        if let Poll::Ready(Some(Ok(d))) = &polled {
            if let Some(left) = &mut self.length {
                *left -= d.len() as u64;
            }
        }
        polled.map(|o| o.map(|r| r.map(Frame::data).map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        let c = lock(&self.conn);
        c.generation != self.generation || c.body_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl<S> Drop for RequestBodyReader<S> {
    fn drop(&mut self) {
        // Dropped unfinished (on another task, maybe): the connection's task may be waiting
        // to watch the socket. The body is not read further.
        let mut c = lock(&self.conn);
        if c.generation == self.generation && !c.body_done() {
            c.body = BodyState::Failed;
            c.body_ended();
        }
    }
}

/// Marks the request just parsed as being served: its body (if any) is to be read next.
/// Returns the request's generation, for its body reader.
pub fn start_request<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &Mutex<ConnIo<S>>,
    framing: Framing,
) -> u64 {
    lock(conn).start_body(framing)
}

/// How a request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A request head, parsed.
pub struct ParsedHead {
    pub request: Request<()>,
    pub framing: Framing,
    /// The client lets the connection carry another request after this one.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Upgrade` (HTTP/1.1) or `CONNECT`: the connection may be handed over.
    pub wants_upgrade: bool,
}

/// Per-connection buffers the parser reuses: the last response's header map (cleared),
/// and where each field's value lies in the head.
#[derive(Default)]
pub struct ParseScratch {
    pub headers: Option<HeaderMap>,
    fields: Vec<(HeaderName, usize, usize)>,
}

/// Parses the request head at the start of `buf`, consuming it: None until it is complete.
/// The header values share the head's bytes.
pub fn parse_head(
    buf: &mut BytesMut,
    scratch: &mut ParseScratch,
) -> Result<Option<ParsedHead>, HeadError> {
    let mut repaired = false;
    let (len, method, path, version) = loop {
        match parse_request_line_and_fields(buf, scratch) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => return Ok(None),
            // What httparse refuses and Envoy's codec takes: rewritten once the head is
            // complete (not on every read of a head that trickles in), parsed again.
            Err(HeadError::Header | HeadError::Version) if !repaired && repairable(buf) => {
                if head_end(buf).is_none() {
                    return Ok(None);
                }
                repair_head(buf);
                repaired = true;
            }
            Err(HeadError::Version) => return Err(version_error(buf)),
            Err(e) => return Err(e),
        }
    };
    let head = buf.split_to(len).freeze();
    let target = head.slice_ref(head.get(path.0..path.0 + path.1).ok_or(HeadError::Target)?);
    // The URI loses a `#fragment`; the handler refuses the request on the target as sent.
    let fragment = target.iter().position(|&b| b == b'#');
    let target_uri = target.slice(..fragment.unwrap_or(target.len()));
    let (uri, raw_query) = match http::Uri::from_maybe_shared(target_uri.clone()) {
        Ok(uri) => (uri, None),
        // `"<>` or a backquote: Envoy's codec takes them, `http::Uri` does not.
        Err(_) => path::lenient_target(&target_uri).ok_or(HeadError::Target)?,
    };
    let http11 = version == Version::HTTP_11;
    let mut headers = scratch.headers.take().unwrap_or_default();
    headers.clear();
    headers.reserve(scratch.fields.len());
    let mut keep_alive = http11;
    let mut close = false;
    let mut expect_continue = false;
    let mut wants_upgrade = method == Method::CONNECT;
    let mut te: Option<bool> = None;
    let mut length: Option<u64> = None;
    for (name, at, len) in scratch.fields.drain(..) {
        let raw = head.get(at..at + len).ok_or(HeadError::Header)?;
        let value =
            HeaderValue::from_maybe_shared(head.slice_ref(raw)).map_err(|_| HeadError::Header)?;
        match name {
            http::header::TRANSFER_ENCODING => {
                // Envoy refuses the version first.
                if !http11 {
                    return Err(HeadError::Version);
                }
                // `chunked` alone, once: Envoy 1.40 answers `gzip, chunked` with `501`, and
                // two `chunked` lines too, as their values joined (`chunked, chunked`).
                let chunked = value
                    .as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"chunked");
                te = Some(te.is_none() && chunked);
            }
            http::header::CONTENT_LENGTH => {
                let n = parse_length(value.as_bytes()).ok_or(HeadError::ContentLength)?;
                // Two equal values are kept for the handler, which refuses them as Envoy
                // does (`egret_http::refusal::codec_refusal`); different ones are refused here.
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::ContentLength);
                }
                length = Some(n);
            }
            http::header::CONNECTION => {
                if close || has_token(value.as_bytes(), b"close") {
                    close = true;
                    keep_alive = false;
                } else if !http11 && has_token(value.as_bytes(), b"keep-alive") {
                    keep_alive = true;
                }
            }
            http::header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            http::header::UPGRADE => wants_upgrade = http11,
            _ => {}
        }
        headers.append(name, value);
    }
    let framing = match (te, length) {
        (Some(false), _) => return Err(HeadError::TransferEncoding),
        // Both: Envoy 1.40 refuses the request (`allow_chunked_length` is off).
        (Some(true), Some(_)) => return Err(HeadError::LengthAndChunked),
        (Some(true), None) => Framing::Chunked,
        (None, Some(0) | None) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    if fragment.is_some() {
        request
            .extensions_mut()
            .insert(refusal::TargetWithFragment(target));
    }
    if let Some(raw) = raw_query {
        request.extensions_mut().insert(raw);
    }
    Ok(Some(ParsedHead {
        request,
        framing,
        keep_alive,
        expect_continue,
        wants_upgrade,
    }))
}

/// The request line and the header fields at the start of `buf`: the head's length, the
/// method, where the target is, the version; each field's name and where its value is, in
/// `scratch`. None until the head is complete.
#[expect(clippy::type_complexity, reason = "a private step of parse_head")]
fn parse_request_line_and_fields(
    buf: &BytesMut,
    scratch: &mut ParseScratch,
) -> Result<Option<(usize, Method, (usize, usize), Version)>, HeadError> {
    // Uninitialised: zeroing 100 fields per request costs more than parsing them.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        // `GET  /` is a request to Envoy's codec.
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .parse_request_with_uninit_headers(&mut parsed, buf, &mut fields)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD_BUFFER {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::Token) if parsed.method.is_none() => return Err(HeadError::Method),
        // A request line without a version (`GET /`, HTTP/0.9): a low version to Envoy
        // 1.40 (`426`, checked with it).
        Err(_) if request_line_tokens(buf) == 2 => return Err(HeadError::Version),
        Err(httparse::Error::Token) => return Err(HeadError::Target),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Header),
    };
    let base = buf.as_ptr() as usize;
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Method)?;
    let target = parsed.path.unwrap_or_default();
    if target.len() > MAX_URI_LEN {
        return Err(HeadError::TooLarge);
    }
    // Visible ASCII only: Envoy refuses a raw UTF-8 byte in the target (httparse takes it).
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HeadError::Target);
    }
    // httparse's slices all point into `buf`; checked all the same.
    let offset = |p: *const u8| (p as usize).checked_sub(base).ok_or(HeadError::Header);
    let target = (offset(target.as_ptr())?, target.len());
    let version = if parsed.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    scratch.fields.clear();
    for f in parsed.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| HeadError::Header)?;
        scratch
            .fields
            .push((name, offset(f.value.as_ptr())?, f.value.len()));
    }
    Ok(Some((len, method, target, version)))
}

/// A version httparse refused, as Envoy tells it: `HTTP/` and something other than 1.1
/// (the HTTP/2 preface included) is `426`; anything else (`http/1.1`, a space inside the
/// target) a malformed request line.
fn version_error(buf: &[u8]) -> HeadError {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut tokens = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
    match (tokens.next(), tokens.next(), tokens.next(), tokens.next()) {
        (Some(_), Some(_), Some(v), None) if v.starts_with(b"HTTP/") => HeadError::Version,
        // No version at all: HTTP/0.9.
        (Some(_), Some(_), None, None) => HeadError::Version,
        _ => HeadError::Target,
    }
}

/// How many space-separated tokens the request line (complete, up to its line end) has.
fn request_line_tokens(buf: &[u8]) -> usize {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return 0;
    };
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.split(|&b| b == b' ').filter(|t| !t.is_empty()).count()
}

/// Whether `repair_head` would change the head (as far as it has arrived).
fn repairable(buf: &[u8]) -> bool {
    let end = head_end(buf).unwrap_or(buf.len());
    let head = &buf[leading_empty_lines(buf).min(end)..end];
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    first.last().is_some_and(|b| b.is_ascii_whitespace())
        || head
            .windows(2)
            .skip(first.len())
            .any(|w| w[0] == b'\n' && matches!(w[1], b' ' | b'\t'))
        || head
            .windows(2)
            .skip(first.len())
            .any(|w| w[0] == b'\r' && w[1] != b'\n')
}

/// Rewrites, in `buf`'s head, what httparse refuses and Envoy's codec takes: white space at
/// the end of the request line (dropped), and header values folded onto continuation lines
/// (obs-fold: the line break goes, the folding white space stays, as Envoy joins them),
/// and bare CRs in header lines (dropped: Envoy 1.40 forwards `b\rc` as `bc`, checked with
/// it). False when there was nothing to rewrite.
fn repair_head(buf: &mut BytesMut) -> bool {
    let end = head_end(buf).unwrap_or(buf.len());
    let lead = leading_empty_lines(buf).min(end);
    let mut out = Vec::with_capacity(end);
    out.extend_from_slice(&buf[..lead]);
    let mut changed = false;
    let mut in_fields = false;
    for (i, line) in buf[lead..end].split_inclusive(|&b| b == b'\n').enumerate() {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if i == 0 {
            let trimmed = content.trim_ascii_end();
            changed |= trimmed.len() != content.len();
            out.extend_from_slice(trimmed);
            out.extend_from_slice(&line[content.len()..]);
            continue;
        }
        if in_fields && !content.is_empty() && matches!(content[0], b' ' | b'\t') {
            // A continuation: joined to the field before it.
            while matches!(out.last(), Some(b'\r' | b'\n')) {
                out.pop();
            }
            changed = true;
        }
        in_fields = !content.is_empty();
        if content.contains(&b'\r') {
            out.extend(content.iter().copied().filter(|&b| b != b'\r'));
            out.extend_from_slice(&line[content.len()..]);
            changed = true;
        } else {
            out.extend_from_slice(line);
        }
    }
    if !changed {
        return false;
    }
    let mut rewritten = BytesMut::with_capacity(out.len() + buf.len() - end);
    rewritten.extend_from_slice(&out);
    rewritten.extend_from_slice(&buf[end..]);
    *buf = rewritten;
    true
}

fn leading_empty_lines(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// Where the head ends (after its blank line), if it has. Empty lines before the request
/// line are skipped, as httparse skips them.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut at = leading_empty_lines(buf);
    while let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') {
        let next = at + nl + 1;
        match buf.get(next) {
            Some(b'\n') => return Some(next + 1),
            Some(b'\r') if buf.get(next + 1) == Some(&b'\n') => return Some(next + 2),
            _ => at = next,
        }
    }
    None
}

/// Digits only (Envoy refuses `+5` and ` 5, 5`); None when it is not a length.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

fn ends_with_chunked(v: &[u8]) -> bool {
    v.rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// What the response's framing depends on from its request.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts {
    pub head: bool,
    pub connect: bool,
    pub http10: bool,
}

/// How a response body goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyOut {
    /// Nothing (no body, or none allowed: `HEAD`, `204`, `304`, `1xx`).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    UntilClose,
}

/// Encodes a response head as hyper's server did before (the gateway's responses were checked
/// against Envoy 1.40 through it): the headers in order, `connection` values on one line,
/// `connection: close` added when `close` (the client asked, or the gateway drains), then
/// the framing header when the response has none (as Envoy 1.40's codec: `content-length: 0`
/// for no body, `transfer-encoding: chunked` answering a HEAD without a length; a `304`
/// keeps its length) and the `date` when it has none. Returns
/// how the body goes out and whether the connection closes after it.
pub fn encode_head(
    resp: &Response<ResponseBody>,
    req: RequestFacts,
    close: bool,
    out: &mut BytesMut,
) -> (BodyOut, bool) {
    let status = resp.status();
    let headers = resp.headers();
    let body = resp.body();
    // None: no body to send; else its length when known.
    let length: Option<Option<u64>> = if body.is_end_stream() {
        None
    } else {
        Some(body.size_hint().exact())
    };
    let informational = status.is_informational();
    let connect_ok = req.connect && status.is_success();
    let not_modified = status == StatusCode::NOT_MODIFIED;
    let no_content = status == StatusCode::NO_CONTENT || not_modified;
    let can_have_length = !(informational || connect_ok || no_content);
    let can_have_body = can_have_length && !req.head;
    // A `304` keeps the length its upstream gave (that of the resource); none is added.
    let keeps_length = can_have_length || not_modified;

    out.reserve(64 + headers.len() * 32);
    out.extend_from_slice(if req.http10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    match resp.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(r) => out.extend_from_slice(r.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");

    let mut framing: Option<BodyOut> = None;
    let mut wrote_date = false;
    let mut closes = close;
    let mut wrote_connection = false;
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        match *name {
            http::header::CONTENT_LENGTH => {
                let Some(first) = values.next() else { continue };
                match length {
                    // No body: the length goes unless this answers a HEAD or is a 304's (it
                    // is re-added as `0` below where one is allowed).
                    None if !req.head && !not_modified => continue,
                    // Kept as given: nothing else frames it (no `transfer-encoding` beside it).
                    None => framing = Some(BodyOut::None),
                    Some(Some(n)) => framing = Some(BodyOut::Length(n)),
                    Some(None) => match parse_length(first.as_bytes()) {
                        Some(n) => framing = Some(BodyOut::Length(n)),
                        None => continue,
                    },
                }
                if !keeps_length {
                    continue;
                }
                line(out, b"content-length", first.as_bytes());
            }
            http::header::TRANSFER_ENCODING => {
                if req.http10 || !can_have_body {
                    continue;
                }
                framing = Some(BodyOut::Chunked);
                out.extend_from_slice(b"transfer-encoding: ");
                let mut last_chunked = false;
                for (i, v) in values.enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(v.as_bytes());
                    last_chunked = ends_with_chunked(v.as_bytes());
                }
                if !last_chunked {
                    out.extend_from_slice(b", chunked");
                }
                out.extend_from_slice(b"\r\n");
            }
            http::header::CONNECTION => {
                wrote_connection = true;
                out.extend_from_slice(b"connection: ");
                let mut has_close = false;
                for (i, v) in values.enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(v.as_bytes());
                    has_close |= has_token(v.as_bytes(), b"close");
                }
                if close && !has_close {
                    out.extend_from_slice(b", close");
                }
                closes |= has_close;
                out.extend_from_slice(b"\r\n");
            }
            _ => {
                wrote_date |= *name == http::header::DATE;
                for v in values {
                    line(out, name.as_str().as_bytes(), v.as_bytes());
                }
            }
        }
    }
    if close && !wrote_connection {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let framing = match framing {
        Some(f) => f,
        None => match length {
            // A HEAD answered without a length: Envoy's codec says the body would have been
            // chunked (an upstream's own `transfer-encoding` was dropped above).
            None | Some(None) | Some(Some(0)) if req.head && can_have_length && !req.http10 => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                BodyOut::None
            }
            Some(None) if req.http10 || !can_have_body => BodyOut::UntilClose,
            Some(None) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                BodyOut::Chunked
            }
            None | Some(Some(0)) => {
                if can_have_length && !req.head {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                BodyOut::Length(0)
            }
            Some(Some(n)) => {
                if can_have_length {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa(n, &mut [0u8; 20]));
                    out.extend_from_slice(b"\r\n");
                }
                BodyOut::Length(n)
            }
        },
    };
    let framing = match framing {
        _ if !can_have_body => BodyOut::None,
        BodyOut::Length(0) => BodyOut::None,
        f => f,
    };
    if !wrote_date {
        line(out, b"date", egret_http::headers::date_now().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    (framing, closes || framing == BodyOut::UntilClose)
}

fn line(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, in `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The bytes written with one `writev`, in order: a fixed ring of [`Bytes`].
const WRITE_SLICES: usize = 8;
/// How much of a ready body is gathered behind the head before writing.
const GATHER_BYTES: usize = 64 * 1024;

/// Writes one response: its head, then its body as it comes, framed.
pub struct ResponseWriter {
    queue: [Bytes; WRITE_SLICES],
    start: usize,
    end: usize,
    framing: BodyOut,
    /// Bytes of a `content-length` body still to come.
    left: u64,
    /// The body has ended (or is not sent at all).
    body_done: bool,
    unflushed: bool,
    /// The body failed: what is queued (the head, data before the failure) still goes out,
    /// then the writer reports the failure.
    failed: bool,
}

/// Why a response could not be written whole.
#[derive(Debug)]
pub enum WriteFailed {
    /// Its body failed (the upstream broke off, the route timed out), or did not match its
    /// framing.
    Body,
    /// The client's socket.
    Io,
}

impl ResponseWriter {
    pub fn new(head: Bytes, framing: BodyOut) -> ResponseWriter {
        let mut w = ResponseWriter {
            queue: Default::default(),
            start: 0,
            end: 0,
            framing,
            left: match framing {
                BodyOut::Length(n) => n,
                _ => 0,
            },
            body_done: framing == BodyOut::None,
            unflushed: false,
            failed: false,
        };
        w.push(head);
        w
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.queue[self.end] = b;
            self.end += 1;
        }
    }

    fn queued_bytes(&self) -> usize {
        self.queue[self.start..self.end]
            .iter()
            .map(Bytes::len)
            .sum()
    }

    fn encode(&mut self, data: Bytes) -> Result<(), WriteFailed> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            BodyOut::None => {}
            BodyOut::Length(_) => {
                let n = data.len() as u64;
                if n > self.left {
                    return Err(WriteFailed::Body);
                }
                self.left -= n;
                self.push(data);
            }
            BodyOut::UntilClose => self.push(data),
            BodyOut::Chunked => {
                // Lower-case hex, as Envoy writes chunk sizes.
                let mut size = BytesMut::with_capacity(18);
                size.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                self.push(size.freeze());
                self.push(data);
                self.push(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), WriteFailed> {
        self.body_done = true;
        match self.framing {
            BodyOut::Chunked => self.push(Bytes::from_static(b"0\r\n\r\n")),
            BodyOut::Length(_) if self.left > 0 => return Err(WriteFailed::Body),
            _ => {}
        }
        Ok(())
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.start < self.end {
            let front = &mut self.queue[self.start];
            if n >= front.len() {
                n -= front.len();
                *front = Bytes::new();
                self.start += 1;
            } else {
                front.advance(n);
                return;
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Writes what there is: `Ready(Ok)` once the whole response is out. The body is polled
    /// without the connection's lock held (it may read the request body, which takes it).
    /// While the client's socket is full the body's timers run (route timeout, stream idle
    /// timeout), as in Envoy for a client that stops reading; waiting for its upstream, the
    /// body times itself.
    pub fn poll<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        body: &mut ResponseBody,
        conn: &Mutex<ConnIo<S>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteFailed>> {
        let polled = self.poll_out(body, conn, cx);
        if polled.is_pending() && body.poll_timeouts(cx).is_ready() {
            return Poll::Ready(Err(WriteFailed::Body));
        }
        polled
    }

    fn poll_out<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        body: &mut ResponseBody,
        conn: &Mutex<ConnIo<S>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteFailed>> {
        loop {
            // Room for a chunk (3 slices) and the last-chunk marker.
            while !self.body_done
                && self.end + 4 <= WRITE_SLICES
                && self.queued_bytes() < GATHER_BYTES
            {
                let step = match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers are dropped (Envoy's HTTP/1 codec by default).
                        let encoded = match frame.into_data() {
                            Ok(data) => self.encode(data),
                            Err(_) => Ok(()),
                        };
                        encoded.and_then(|()| {
                            if body.is_end_stream() {
                                self.end()
                            } else {
                                Ok(())
                            }
                        })
                    }
                    Poll::Ready(Some(Err(_))) => Err(WriteFailed::Body),
                    Poll::Ready(None) => self.end(),
                };
                if step.is_err() {
                    // As Envoy: the head and what came of the body go out, then the client's
                    // connection closes (no last chunk: the client sees the body cut short).
                    self.failed = true;
                    self.body_done = true;
                }
            }
            if self.start == self.end {
                if self.unflushed {
                    ready!(lock(conn).poll_flush(cx)).map_err(|_| WriteFailed::Io)?;
                    self.unflushed = false;
                }
                // Otherwise the body is pending: it wakes us.
                return if self.failed {
                    Poll::Ready(Err(WriteFailed::Body))
                } else if self.body_done {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let n = {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let count = self.end - self.start;
                for (slot, b) in slices.iter_mut().zip(&self.queue[self.start..self.end]) {
                    *slot = IoSlice::new(b);
                }
                ready!(lock(conn).poll_write_vectored(cx, &slices[..count]))
                    .map_err(|_| WriteFailed::Io)?
            };
            if n == 0 {
                return Poll::Ready(Err(WriteFailed::Io));
            }
            self.unflushed = true;
            self.advance(n);
        }
    }
}

/// The connection as a plain byte stream: what was read ahead first. For the wait between
/// requests (nothing is buffered then) and for the client's side of an upgrade.
pub struct Stream<S>(pub SharedIo<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut c = lock(&self.0);
        if !c.buf.is_empty() {
            let n = c.buf.len().min(buf.remaining());
            buf.put_slice(&c.buf[..n]);
            c.buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        c.io_mut().poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        lock(&self.0).io_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        lock(&self.0).io_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.0).io_mut().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.0).io_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<ParsedHead>, HeadError> {
        parse_head(&mut BytesMut::from(bytes), &mut ParseScratch::default())
    }

    fn framing(bytes: &[u8]) -> Result<Framing, HeadError> {
        parse(bytes).map(|h| h.expect("complete").framing)
    }

    /// Framing and refusals as Envoy 1.40's codec has them (each checked with it).
    #[test]
    fn request_framing_follows_envoy() {
        let h = "POST / HTTP/1.1\r\nHost: a\r\n";
        let with = |extra: &str| format!("{h}{extra}\r\n").into_bytes();
        assert_eq!(framing(&with("")), Ok(Framing::None));
        assert_eq!(framing(&with("Content-Length: 0\r\n")), Ok(Framing::None));
        assert_eq!(
            framing(&with("Content-Length: 5\r\n")),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing(&with("Transfer-Encoding: chunked\r\n")),
            Ok(Framing::Chunked)
        );
        // Two equal lengths pass to the handler, which refuses them; two different do not.
        assert_eq!(
            framing(&with("Content-Length: 5\r\nContent-Length: 5\r\n")),
            Ok(Framing::Length(5))
        );
        for (extra, error) in [
            (
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                HeadError::ContentLength,
            ),
            ("Content-Length: +5\r\n", HeadError::ContentLength),
            ("Content-Length: 5, 5\r\n", HeadError::ContentLength),
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                HeadError::LengthAndChunked,
            ),
            (
                "Transfer-Encoding: gzip, chunked\r\n",
                HeadError::TransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked, gzip\r\n",
                HeadError::TransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                HeadError::TransferEncoding,
            ),
        ] {
            assert_eq!(framing(&with(extra)).err(), Some(error), "{extra}");
        }
        assert_eq!(
            framing(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").err(),
            Some(HeadError::Version)
        );
    }

    #[test]
    fn request_lines_envoy_takes_or_refuses() {
        let target = |line: &str| {
            parse(format!("{line}\r\nHost: a\r\n\r\n").as_bytes())
                .map(|h| h.expect("complete").request.uri().to_string())
        };
        assert_eq!(target("GET  / HTTP/1.1"), Ok("/".into()));
        assert_eq!(target("GET / HTTP/1.1  "), Ok("/".into()));
        assert_eq!(target("GET /%zz HTTP/1.1"), Ok("/%zz".into()));
        assert_eq!(target("GET / http/1.1").err(), Some(HeadError::Target));
        assert_eq!(target("GET /a b HTTP/1.1").err(), Some(HeadError::Target));
        assert_eq!(
            target("GET /caf\u{e9} HTTP/1.1").err(),
            Some(HeadError::Target)
        );
        assert_eq!(target("GET / HTTP/2.0").err(), Some(HeadError::Version));
        assert_eq!(target("get / HTTP/1.1"), Ok("/".into()));
        // A fragment leaves the URI and marks the request with the target as sent.
        let head = parse(b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.request.uri().path(), "/a");
        let marked = head
            .request
            .extensions()
            .get::<refusal::TargetWithFragment>();
        assert_eq!(marked.map(|t| &t.0[..]), Some(&b"/a#frag"[..]));
    }

    /// Envoy 1.40 drops a CR that ends no line inside a header line (checked with it).
    #[test]
    fn bare_crs_in_header_lines_are_dropped() {
        let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\nX-B: \rd\r\r\nX-C: e\r\n\r\n")
            .unwrap()
            .unwrap();
        let h = head.request.headers();
        assert_eq!(
            (h["x-a"].as_bytes(), h["x-b"].as_bytes()),
            (&b"bc"[..], &b"d"[..])
        );
        assert_eq!(h["x-c"], "e");
    }

    #[test]
    fn folded_fields_are_joined_and_limits_hold() {
        let head =
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n  b\r\n\tc\r\nX-B: d\r\n\r\nrest")
                .unwrap()
                .unwrap();
        let h = head.request.headers();
        assert_eq!(h["x-a"], "a  b\tc");
        let after_empty_line = parse(b"\r\nGET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(after_empty_line.request.headers()["x-a"], "a b");
        // A fold in a head still arriving waits for the rest.
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nX-A: a\r\n b\r\n"),
            Ok(None)
        ));
        assert_eq!(h["x-b"], "d");
        let fields = |n: usize| {
            let mut head = String::from("GET / HTTP/1.1\r\n");
            for i in 0..n {
                head.push_str(&format!("x-h{i}: v\r\n"));
            }
            head.push_str("\r\n");
            parse(head.as_bytes()).map(|h| h.is_some())
        };
        // 100 in all, as Envoy counts them.
        assert_eq!(fields(100), Ok(true));
        assert_eq!(fields(101), Err(HeadError::TooManyHeaders));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None)));
    }

    fn encode(
        resp: Response<ResponseBody>,
        facts: RequestFacts,
        close: bool,
    ) -> (String, BodyOut, bool) {
        let mut out = BytesMut::new();
        let (framing, closes) = encode_head(&resp, facts, close, &mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        // The date varies.
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("date: ") {
                    "date: D"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        (text, framing, closes)
    }

    const GET: RequestFacts = RequestFacts {
        head: false,
        connect: false,
        http10: false,
    };

    #[test]
    fn response_heads_are_framed_and_closed_as_before() {
        let mut r = Response::new(ResponseBody::full(Some(Bytes::from_static(b"hello"))));
        r.headers_mut().insert("x-a", HeaderValue::from_static("1"));
        let (text, framing, closes) = encode(r, GET, false);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 5\ndate: D\n"
        );
        assert_eq!((framing, closes), (BodyOut::Length(5), false));

        // No body: the length goes after the other fields; `close` adds the header first.
        let mut r = Response::new(ResponseBody::full(None));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        r.headers_mut()
            .insert(http::header::DATE, HeaderValue::from_static("x"));
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        r.headers_mut().insert(
            http::header::SERVER,
            HeaderValue::from_static("istio-envoy"),
        );
        let (text, framing, closes) = encode(r, GET, true);
        assert_eq!(
            text,
            "HTTP/1.1 400 Bad Request\ndate: D\nserver: istio-envoy\nconnection: close\ncontent-length: 0\n"
        );
        assert_eq!((framing, closes), (BodyOut::None, true));

        // A HEAD keeps the length it is given and sends no body.
        let mut r = Response::new(ResponseBody::full(Some(Bytes::from_static(b"hello"))));
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let head = RequestFacts { head: true, ..GET };
        let (text, framing, _) = encode(r, head, false);
        assert_eq!(text, "HTTP/1.1 200 OK\ncontent-length: 5\ndate: D\n");
        assert_eq!(framing, BodyOut::None);

        // A 204 has no length; an unknown status is `Unknown`.
        let mut r = Response::new(ResponseBody::full(None));
        *r.status_mut() = StatusCode::NO_CONTENT;
        assert_eq!(
            encode(r, GET, false).0,
            "HTTP/1.1 204 No Content\ndate: D\n"
        );
        let mut r = Response::new(ResponseBody::full(None));
        *r.status_mut() = StatusCode::from_u16(299).unwrap();
        assert!(encode(r, GET, false)
            .0
            .starts_with("HTTP/1.1 299 Unknown\n"));
    }

    /// Framing headers Envoy 1.40's codec writes where Egret's differed (checked with it
    /// through a raw upstream).
    #[test]
    fn head_and_not_modified_responses_are_framed_as_envoys_codec_frames_them() {
        let head = RequestFacts { head: true, ..GET };
        let bodiless = |status: u16, fields: &[(&'static str, &'static str)]| {
            let mut r = Response::new(ResponseBody::full(None));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            for (n, v) in fields {
                r.headers_mut().append(*n, HeaderValue::from_static(v));
            }
            r
        };
        // A HEAD answered without a length, or chunked: `transfer-encoding: chunked`, last.
        let (text, framing, closes) = encode(bodiless(200, &[("x-a", "1")]), head, false);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\nx-a: 1\ntransfer-encoding: chunked\ndate: D\n"
        );
        assert_eq!((framing, closes), (BodyOut::None, false));
        let upstream_chunked = bodiless(200, &[("transfer-encoding", "chunked"), ("x-a", "1")]);
        assert_eq!(
            encode(upstream_chunked, head, false).0,
            "HTTP/1.1 200 OK\nx-a: 1\ntransfer-encoding: chunked\ndate: D\n"
        );
        // A HEAD answered with a length keeps it, and nothing else frames it.
        let (text, framing, _) = encode(bodiless(200, &[("content-length", "1234")]), head, false);
        assert_eq!(text, "HTTP/1.1 200 OK\ncontent-length: 1234\ndate: D\n");
        assert_eq!(framing, BodyOut::None);
        // The same local reply to a GET gets `content-length: 0`; to an HTTP/1.0 HEAD nothing.
        assert_eq!(
            encode(bodiless(404, &[]), GET, false).0,
            "HTTP/1.1 404 Not Found\ncontent-length: 0\ndate: D\n"
        );
        let head10 = RequestFacts {
            http10: true,
            ..head
        };
        assert_eq!(
            encode(bodiless(404, &[]), head10, false).0,
            "HTTP/1.0 404 Not Found\ndate: D\n"
        );
        // A 304 keeps its upstream's length; a 204 loses it; neither gets one added.
        assert_eq!(
            encode(bodiless(304, &[("content-length", "42")]), GET, false).0,
            "HTTP/1.1 304 Not Modified\ncontent-length: 42\ndate: D\n"
        );
        assert_eq!(
            encode(
                bodiless(304, &[("transfer-encoding", "chunked")]),
                GET,
                false
            )
            .0,
            "HTTP/1.1 304 Not Modified\ndate: D\n"
        );
        assert_eq!(
            encode(bodiless(204, &[("content-length", "0")]), head, false).0,
            "HTTP/1.1 204 No Content\ndate: D\n"
        );
    }
}
