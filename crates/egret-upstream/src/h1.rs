//! Egret's own HTTP/1.1 client side: writes a request and reads its response on a pooled
//! upstream connection, in the task of the request that uses it.
//!
//! Why not hyper's client (used before): it drives every connection from a task of its own,
//! so each request, its response head and every piece of its body crossed between two tasks
//! through channels — about a quarter of the instructions of a proxied request (callgrind,
//! `benches/RESULTS.md` item 18); and its parser accepts what Envoy's codec refuses (a
//! response with both `Content-Length` and chunked framing, a `204` with a body) and cannot
//! tell a response head cut short from a connection closed before any byte. Parsing is
//! httparse's, as hyper's was; framing, limits and errors follow Envoy 1.40's HTTP/1 codec.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use egret_core::limits::MAX_RESPONSE_HEADERS_BYTES;

use crate::body::{BodyError, UpstreamBody};
use crate::chunked::{self, ChunkState, Decoded};
use crate::error::UpstreamError;

/// Envoy's default `max_headers_count`: a response with more fields is a protocol error.
const MAX_RESPONSE_HEADERS: usize = 100;
/// The first read of a response; reads grow (doubling) while they fill the buffer.
pub const READ_START: usize = 8 * 1024;
/// The largest single read of a response body.
const READ_MAX: usize = 64 * 1024;
/// Pieces written with one `writev`.
const WRITE_SLICES: usize = 8;
/// How much of a ready body is gathered behind the head before writing.
const GATHER_BYTES: usize = 64 * 1024;

/// The byte stream under an HTTP/1.1 upstream connection.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<egret_tls::CloseNotifyOptional<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// An HTTP/1.1 connection to an upstream: the stream and what was read past the last
/// response (nothing, on a connection fit for another request).
pub struct H1Conn {
    io: Io,
    read_buf: BytesMut,
    /// How much the next read asks for (grows while reads fill it).
    read_size: usize,
}

impl H1Conn {
    /// Boxed: it moves between the pool, the request and the response body by pointer.
    pub fn new(io: Io) -> Box<H1Conn> {
        Box::new(H1Conn {
            io,
            read_buf: BytesMut::new(),
            read_size: READ_START,
        })
    }

    /// Reads more of the stream into the buffer: `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_read_growing(
            Pin::new(&mut self.io),
            cx,
            &mut self.read_buf,
            &mut self.read_size,
        )
    }

    /// Frees the read buffer of a connection that has idled in the pool (it holds nothing
    /// then): what it keeps is its socket. The next response read allocates a new one.
    /// Returns whether there was a buffer to free.
    pub fn release_buffer(&mut self) -> bool {
        if !self.read_buf.is_empty() || self.read_buf.capacity() == 0 {
            return false;
        }
        self.read_buf = BytesMut::new();
        self.read_size = READ_START;
        true
    }

    /// Whether an idle connection can take another request: nothing has arrived on it since
    /// its last response — no end of stream, no error, no stray bytes. Never waits: the
    /// runtime's readiness says whether there is anything to read (no system call when
    /// there is not).
    pub fn is_reusable(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // One byte, into the stack: any byte, the end or an error means it is done for.
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }
}

/// Reads more of `io` into `buf`: `Ok(0)` at its end. Each read asks for `read_size`, which
/// doubles (up to 64 KiB) while reads fill it: small exchanges keep small buffers, bulk
/// bodies get large reads. Shared with egret-listener's HTTP/1.1 server.
pub fn poll_read_growing<R: AsyncRead>(
    io: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    read_size: &mut usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < *read_size / 2 {
        buf.reserve(*read_size);
    }
    let room = buf.capacity() - buf.len();
    let n = ready!(tokio_util::io::poll_read_buf(io, cx, buf))?;
    if n == room && *read_size < READ_MAX {
        *read_size *= 2;
    }
    Poll::Ready(Ok(n))
}

/// How a request or response body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// Exactly this many bytes are left.
    Length(u64),
    Chunked,
}

/// Writes the request: its head, then its body as it arrives.
struct Writer {
    /// Encoded bytes not yet written, in order.
    queue: VecDeque<Bytes>,
    /// The body still to be read (None once it ended).
    body: Option<UpstreamBody>,
    framing: Framing,
    /// Whether the head has left (the request may not be sent again after that).
    head_written: bool,
    /// Whether any of the body was taken (it cannot be given back whole then).
    body_read: bool,
    /// Bytes written since the last flush (TLS buffers what it encrypts).
    unflushed: bool,
}

/// Why writing the request stopped.
enum WriteError {
    /// The request body failed (the client went away, or broke its framing).
    Body(BodyError),
    Io(io::Error),
}

impl Writer {
    fn done(&self) -> bool {
        self.body.is_none() && self.queue.is_empty() && !self.unflushed
    }

    /// Writes what there is to write: `Ready(Ok)` once the whole request is out.
    fn poll(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        loop {
            // What the body has ready goes out with what is queued (the head, a small body
            // that came with it): one write, one TCP segment, one TLS record.
            while self.queue.len() + 3 <= WRITE_SLICES
                && self.queue.iter().map(Bytes::len).sum::<usize>() < GATHER_BYTES
            {
                let Some(body) = &mut self.body else {
                    break;
                };
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(frame))) => {
                        self.body_read = true;
                        // Trailers are dropped, as Envoy's HTTP/1 codec does by default.
                        if let Ok(data) = frame.into_data() {
                            self.encode(data).map_err(WriteError::Body)?;
                        }
                        if self.body.as_ref().is_some_and(Body::is_end_stream) {
                            self.end().map_err(WriteError::Body)?;
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(WriteError::Body(e))),
                    Poll::Ready(None) => self.end().map_err(WriteError::Body)?,
                }
            }
            if self.queue.is_empty() {
                if self.unflushed {
                    ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                    self.unflushed = false;
                }
                // Otherwise the body is pending: it wakes us.
                return match self.body {
                    None => Poll::Ready(Ok(())),
                    Some(_) => Poll::Pending,
                };
            }
            let n = {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let mut count = 0;
                for (slot, b) in slices.iter_mut().zip(self.queue.iter()) {
                    *slot = IoSlice::new(b);
                    count += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))
                    .map_err(WriteError::Io)?
            };
            if n == 0 {
                return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
            }
            self.head_written = true;
            self.unflushed = true;
            self.advance(n);
        }
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if n >= front.len() {
                n -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(n);
                return;
            }
        }
    }

    fn encode(&mut self, data: Bytes) -> Result<(), BodyError> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err("request body longer than its content-length".into());
                }
                *left -= n;
                self.queue.push_back(data);
            }
            Framing::Chunked => {
                // Lower-case hex, as Envoy writes chunk sizes.
                self.queue
                    .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                self.queue.push_back(data);
                self.queue.push_back(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), BodyError> {
        self.body = None;
        match self.framing {
            Framing::Chunked => self.queue.push_back(Bytes::from_static(b"0\r\n\r\n")),
            Framing::Length(0) => {}
            Framing::Length(_) => {
                return Err("request body shorter than its content-length".into());
            }
        }
        Ok(())
    }
}

/// The request target to write in place of the URI's (a request extension): one holding
/// bytes `http::Uri` refuses (`"<>` in a query) and Envoy forwards as the client sent them.
#[derive(Clone, Debug)]
pub struct RawTarget(pub std::sync::Arc<str>);

/// Encodes the request head and decides how its body is framed, as Envoy's codec does: the
/// client's `content-length` is kept; a body of known size gets one; a body of unknown size
/// goes chunked (`transfer-encoding: chunked` added last); no body, `content-length: 0`
/// unless the method never has one.
fn encode_head(req: &Request<UpstreamBody>) -> (Bytes, Option<Framing>) {
    let body = req.body();
    let headers = req.headers();
    let path = match req.extensions().get::<RawTarget>() {
        Some(raw) => &*raw.0,
        None => req.uri().path_and_query().map_or("/", |p| p.as_str()),
    };
    let method = req.method().as_str();
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let mut out = BytesMut::with_capacity(method.len() + path.len() + 13 + size + 40);
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if body.is_end_stream() {
        // Envoy 1.40 frames a request without a body with `content-length: 0` unless its
        // method has none by definition (checked with it: POST, PUT, PATCH, OPTIONS get one;
        // GET, HEAD, DELETE, TRACE, CONNECT none).
        let bodiless = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::DELETE | Method::TRACE | Method::CONNECT
        );
        if !bodiless && !headers.contains_key(http::header::CONTENT_LENGTH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        None
    } else if let Some(len) = content_length(headers) {
        Some(Framing::Length(len))
    } else if let Some(len) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        Some(Framing::Length(len))
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Some(Framing::Chunked)
    };
    out.extend_from_slice(b"\r\n");
    (out.freeze(), framing)
}

/// The `content-length` of a request (the downstream codec has checked it).
fn content_length(headers: &HeaderMap) -> Option<u64> {
    parse_content_length(headers).ok().flatten()
}

/// `Ok(None)` when absent. One value of digits only; anything else — two fields, even
/// equal, or `5, 5` — is a protocol error to Envoy 1.40 (checked with it).
fn parse_content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let digits = v.as_bytes().trim_ascii();
    if values.next().is_some()
        || digits.is_empty()
        || digits.len() > 19
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return Err(());
    }
    Ok(Some(
        digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    ))
}

/// Whether a `connection`-like header lists `token`.
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Sends `req` on `conn` and reads the response head. The request body keeps streaming
/// while the response is read (an upstream may answer early); what is left of it is written
/// as the response body is read.
///
/// `Err((error, Some(req)))`: nothing of the request left (the head could not be written),
/// so it can go out again on another connection.
pub async fn send(
    mut conn: Box<H1Conn>,
    mut req: Request<UpstreamBody>,
) -> Result<Response<H1Body>, (UpstreamError, Option<Request<UpstreamBody>>)> {
    let (head, framing) = encode_head(&req);
    let head_request = req.method() == Method::HEAD;
    let upgrade = req.headers().contains_key(http::header::UPGRADE);
    let body = framing.map(|_| std::mem::replace(req.body_mut(), UpstreamBody::Empty));
    let mut writer = Writer {
        queue: VecDeque::from([head]),
        body,
        framing: framing.unwrap_or(Framing::Length(0)),
        head_written: false,
        body_read: false,
        unflushed: false,
    };
    // Writing failed after the head left: the upstream may still have answered.
    let mut write_failed: Option<io::Error> = None;
    let parsed = std::future::poll_fn(|cx| {
        if write_failed.is_none() && !writer.done() {
            match writer.poll(&mut conn.io, cx) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                Poll::Ready(Err(WriteError::Body(e))) => {
                    return Poll::Ready(Err(UpstreamError::request_body(e)));
                }
                // Nothing left, and the body is whole: it can go out on another connection.
                Poll::Ready(Err(WriteError::Io(e)))
                    if !writer.head_written && !writer.body_read =>
                {
                    return Poll::Ready(Err(UpstreamError::not_sent(e)));
                }
                Poll::Ready(Err(WriteError::Io(e))) => write_failed = Some(e),
            }
        }
        loop {
            match parse_head(&mut conn.read_buf, head_request, upgrade) {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if conn.read_buf.is_empty() => {
                    return Poll::Ready(Err(match write_failed.take() {
                        Some(e) => UpstreamError::io(e),
                        None => UpstreamError::closed(),
                    }));
                }
                // Envoy's codec: a head cut short is a protocol error.
                Ok(0) => {
                    return Poll::Ready(Err(UpstreamError::protocol("incomplete response head")));
                }
                Ok(_) => {}
                // A reset inside a head is a protocol error to Envoy too (checked with 1.40).
                Err(_) if !conn.read_buf.is_empty() => {
                    return Poll::Ready(Err(UpstreamError::protocol("incomplete response head")));
                }
                Err(e) => return Poll::Ready(Err(UpstreamError::io(e))),
            }
        }
    })
    .await;
    let head = match parsed {
        Ok(h) => h,
        Err(e) if e.is_not_sent() => {
            if let Some(b) = writer.body.take() {
                *req.body_mut() = b;
            }
            return Err((e, Some(req)));
        }
        Err(e) => return Err((e, None)),
    };
    let Head {
        mut response,
        body,
        keep_alive,
    } = head;
    // Boxed: rarely there, and the body is part of every downstream response.
    let writer = (!writer.done() && write_failed.is_none()).then(|| Box::new(writer));
    let state = match body {
        BodyKind::None => State::Done,
        BodyKind::Framed(f) => State::Framed(f, ChunkState::Size),
        BodyKind::Close => State::UntilClose,
        BodyKind::Upgrade => State::Upgraded,
    };
    let body = H1Body {
        conn: Some(conn),
        writer,
        state,
        reusable: keep_alive && write_failed.is_none(),
    };
    let mut out = Response::new(body);
    std::mem::swap(out.status_mut(), response.status_mut());
    std::mem::swap(out.headers_mut(), response.headers_mut());
    *out.version_mut() = response.version();
    if matches!(out.body().state, State::Framed(Framing::Length(0), _)) {
        out.body_mut().state = State::Done;
    }
    Ok(out)
}

/// How the response body is delimited.
enum BodyKind {
    None,
    Framed(Framing),
    /// Until the upstream closes the connection.
    Close,
    /// A `101 Switching Protocols`: the connection now carries the upgraded protocol.
    Upgrade,
}

struct Head {
    response: Response<()>,
    body: BodyKind,
    keep_alive: bool,
}

/// Parses a response head at the start of `buf` (dropping interim `1xx` responses): None
/// until it is complete.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    upgrade: bool,
) -> Result<Option<Head>, UpstreamError> {
    loop {
        // Uninitialised: zeroing 100 fields (3.2 KB) per response cost more than parsing.
        let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() };
            MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        // Envoy 1.40 takes a folded (obs-fold) response header and joins its lines.
        let len = match httparse::ParserConfig::default()
            .allow_obsolete_multiline_headers_in_responses(true)
            .parse_response_with_uninit_headers(&mut parsed, buf, &mut fields)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_RESPONSE_HEADERS_BYTES {
                    return Err(UpstreamError::protocol("response head too large"));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(UpstreamError::protocol("too many response headers"));
            }
            Err(_) => return Err(UpstreamError::protocol("malformed response head")),
        };
        if len > MAX_RESPONSE_HEADERS_BYTES {
            return Err(UpstreamError::protocol("response head too large"));
        }
        let code = parsed.code.unwrap_or(0);
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let status = StatusCode::from_u16(code)
            .map_err(|_| UpstreamError::protocol("invalid response status"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // `100 Continue`, `103 Early Hints`, ...: not passed on (Envoy's default).
            buf.advance(len);
            continue;
        }
        // Each field's name, and where its value is in the head, so the values can share
        // the head's bytes once it is split off the buffer.
        let base = buf.as_ptr() as usize;
        let mut named = Vec::with_capacity(parsed.headers.len());
        for f in parsed.headers.iter() {
            let name = HeaderName::from_bytes(f.name.as_bytes())
                .map_err(|_| UpstreamError::protocol("invalid response header name"))?;
            named.push((name, f.value.as_ptr() as usize - base, f.value.len()));
        }
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(named.len());
        for (name, value, value_len) in named {
            let raw = &head[value..value + value_len];
            let value = if raw.contains(&b'\n') {
                // Folded: the line breaks go, the folding white space stays (as Envoy does).
                let joined: Vec<u8> = raw
                    .iter()
                    .copied()
                    .filter(|&b| b != b'\r' && b != b'\n')
                    .collect();
                HeaderValue::from_bytes(&joined)
            } else {
                HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
            }
            .map_err(|_| UpstreamError::protocol("invalid response header value"))?;
            headers.append(name, value);
        }
        let keep_alive = if version == Version::HTTP_11 {
            !has_token(&headers, &http::header::CONNECTION, "close")
        } else {
            has_token(&headers, &http::header::CONNECTION, "keep-alive")
        };
        let body = body_kind(status, &headers, head_request, upgrade)?;
        let keep_alive = keep_alive
            && status != StatusCode::SWITCHING_PROTOCOLS
            && matches!(body, BodyKind::None | BodyKind::Framed(_));
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            body,
            keep_alive,
        }));
    }
}

/// RFC 9112 §6.3, with Envoy's refusals: both `transfer-encoding` and `content-length`, a
/// `transfer-encoding` other than chunked, framing on a `204`, or a malformed length are
/// protocol errors.
fn body_kind(
    status: StatusCode,
    headers: &HeaderMap,
    head_request: bool,
    upgrade: bool,
) -> Result<BodyKind, UpstreamError> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // To a request that did not ask for it, Envoy 1.40 passes the `101` on and closes
        // the upstream connection (checked with it).
        return Ok(if upgrade {
            BodyKind::Upgrade
        } else {
            BodyKind::None
        });
    }
    let te = headers.contains_key(http::header::TRANSFER_ENCODING);
    let length = parse_content_length(headers)
        .map_err(|()| UpstreamError::protocol("invalid content-length"))?;
    if status == StatusCode::NO_CONTENT && (te || length.is_some_and(|n| n > 0)) {
        return Err(UpstreamError::protocol("204 with a body"));
    }
    if te {
        if length.is_some() {
            return Err(UpstreamError::protocol(
                "both content-length and transfer-encoding",
            ));
        }
        let chunked = headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .all(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if !chunked {
            return Err(UpstreamError::protocol("unsupported transfer-encoding"));
        }
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(BodyKind::None);
    }
    Ok(match (te, length) {
        (true, _) => BodyKind::Framed(Framing::Chunked),
        (false, Some(n)) => BodyKind::Framed(Framing::Length(n)),
        (false, None) => BodyKind::Close,
    })
}

enum State {
    Framed(Framing, ChunkState),
    UntilClose,
    Upgraded,
    Done,
    Failed,
}

/// The body of a response read from an [`H1Conn`]. It owns the connection while it is
/// read, writes what is left of the request body meanwhile, and gives the connection back
/// ([`H1Body::take_conn`]) when the exchange ended cleanly.
pub struct H1Body {
    conn: Option<Box<H1Conn>>,
    writer: Option<Box<Writer>>,
    state: State,
    /// The connection may carry another request once this response has been read.
    reusable: bool,
}

impl H1Body {
    /// The connection, when the response was read to its end, the whole request was sent,
    /// nothing more arrived and neither side asked to close.
    pub fn take_conn(&mut self) -> Option<Box<H1Conn>> {
        let clean = matches!(self.state, State::Done)
            && self.reusable
            && self.writer.is_none()
            && self.conn.as_ref().is_some_and(|c| c.read_buf.is_empty());
        if clean {
            self.conn.take()
        } else {
            None
        }
    }

    /// The connection after a `101 Switching Protocols`, with the bytes the upstream sent
    /// after the head.
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        if !matches!(self.state, State::Upgraded) {
            return None;
        }
        let conn = *self.conn.take()?;
        Some(Upgraded {
            io: conn.io,
            pending: conn.read_buf.freeze(),
        })
    }

    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.state = State::Failed;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Writes on what is left of the request body; a failure there only means the
    /// connection cannot be reused.
    fn poll_writer(&mut self, cx: &mut Context<'_>) {
        let (Some(w), Some(conn)) = (&mut self.writer, &mut self.conn) else {
            return;
        };
        match w.poll(&mut conn.io, cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => self.writer = None,
            Poll::Ready(Err(_)) => {
                self.writer = None;
                self.reusable = false;
            }
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        this.poll_writer(cx);
        loop {
            let Some(conn) = &mut this.conn else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                State::Done | State::Upgraded | State::Failed => return Poll::Ready(None),
                State::UntilClose => {
                    if !conn.read_buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.read_buf.split().freeze()))));
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            this.state = State::Done;
                            this.reusable = false;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return this.fail(UpstreamError::io(e)),
                    }
                }
                State::Framed(Framing::Length(left), _) => {
                    if *left == 0 {
                        this.state = State::Done;
                        continue;
                    }
                    if !conn.read_buf.is_empty() {
                        let n = conn
                            .read_buf
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= n as u64;
                        let data = conn.read_buf.split_to(n).freeze();
                        if *left == 0 {
                            this.state = State::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            return this.fail(UpstreamError::protocol("response body cut short"));
                        }
                        Ok(_) => {}
                        Err(e) => return this.fail(UpstreamError::io(e)),
                    }
                }
                State::Framed(Framing::Chunked, chunk) => {
                    match chunked::decode(&mut conn.read_buf, chunk, MAX_RESPONSE_HEADERS_BYTES) {
                        Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                        Ok(Decoded::End) => {
                            this.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::NeedMore) => {}
                        Err(e) => return this.fail(UpstreamError::protocol(e)),
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            return this.fail(UpstreamError::protocol("response body cut short"));
                        }
                        Ok(_) => {}
                        Err(e) => return this.fail(UpstreamError::io(e)),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Upgraded)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Framed(Framing::Length(n), _) => SizeHint::with_exact(n),
            State::Done | State::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// An upstream connection after `101 Switching Protocols`: the bytes already read come
/// first.
pub struct Upgraded {
    io: Io,
    pending: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            let n = this.pending.len().min(buf.remaining());
            buf.put_slice(&this.pending[..n]);
            this.pending.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], head_request: bool) -> Result<Option<Head>, UpstreamError> {
        parse_head(&mut BytesMut::from(bytes), head_request, false)
    }

    #[test]
    fn framing_follows_envoy() {
        let kind = |b: &[u8]| head(b, false).map(|h| h.map(|h| h.body));
        assert!(matches!(
            kind(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            Ok(Some(BodyKind::Framed(Framing::Length(5))))
        ));
        assert!(matches!(
            kind(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Ok(Some(BodyKind::Framed(Framing::Chunked)))
        ));
        assert!(matches!(
            kind(b"HTTP/1.1 200 OK\r\n\r\n"),
            Ok(Some(BodyKind::Close))
        ));
        assert!(kind(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .is_err());
        assert!(
            kind(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n").is_err()
        );
        assert!(kind(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").is_err());
        assert!(kind(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").is_err());
        assert!(matches!(
            kind(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
            Ok(Some(BodyKind::None))
        ));
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true).map(|h| h.map(|h| h.body)),
            Ok(Some(BodyKind::None))
        ));
        // Interim responses are skipped; a partial head waits.
        assert!(matches!(
            kind(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            Ok(Some(BodyKind::Framed(Framing::Length(0))))
        ));
        assert!(matches!(kind(b"HTTP/1.1 200 OK\r\nx-a: 1"), Ok(None)));
        assert!(matches!(
            head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            Ok(Some(Head {
                body: BodyKind::None,
                keep_alive: false,
                ..
            }))
        ));
        assert!(
            kind(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n").is_err()
        );
        assert!(kind(b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n").is_err());
        assert!(kind(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n").is_err());
        assert!(kind(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n").is_err());
        assert!(kind(b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        let folded = head(
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\n  continued\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(folded.response.headers()["x-a"], "1  continued");
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |b: &[u8]| head(b, false).unwrap().unwrap().keep_alive;
        assert!(ka(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(ka(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.1 200 OK\r\n\r\n"));
    }

    #[test]
    fn request_heads_keep_header_order_and_frame_the_body() {
        let mut req = Request::new(UpstreamBody::Full(Some(Bytes::from_static(b"abc"))));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = "/p?q=1".parse().unwrap();
        req.headers_mut()
            .insert("host", HeaderValue::from_static("example.com"));
        req.headers_mut()
            .append("x-b", HeaderValue::from_static("1"));
        let (head, framing) = encode_head(&req);
        assert_eq!(
            &head[..],
            b"POST /p?q=1 HTTP/1.1\r\nhost: example.com\r\nx-b: 1\r\ncontent-length: 3\r\n\r\n"
        );
        assert_eq!(framing, Some(Framing::Length(3)));
        let req = Request::new(UpstreamBody::Empty);
        let (head, framing) = encode_head(&req);
        assert_eq!(&head[..], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(framing, None);
        let mut req = Request::new(UpstreamBody::Empty);
        *req.method_mut() = Method::POST;
        let (head, _) = encode_head(&req);
        assert_eq!(&head[..], b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }
}
