//! In-process upstreams on 127.0.0.1:0: an HTTP server (HTTP/1.1 and h2 prior-knowledge on
//! one port, optionally behind rustls) whose answer is chosen by a [`Behavior`], and raw TCP
//! servers. Every server stops when its handle is dropped.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::certs::{self, ClientAuth, TestCert};
use crate::lock;
use crate::sockets::{Sockets, Tracked, ACCEPT_ERROR_PAUSE};

/// What an [`HttpUpstream`] does with a request (after reading its whole body).
#[derive(Clone)]
pub enum Behavior {
    /// 200 with a JSON description of the request (see [`HttpUpstream`]).
    Echo,
    /// The JSON description, with this status.
    EchoStatus(u16),
    /// 200 with the request body sent back unchanged (`application/octet-stream`).
    EchoBody,
    /// A fixed answer.
    Fixed {
        /// Status code.
        status: u16,
        /// Extra response headers.
        headers: Vec<(String, String)>,
        /// Response body.
        body: Bytes,
    },
    /// 200 with a body of this many bytes, made by [`pattern_bytes`].
    BodyOfSize(usize),
    /// Sleep, then do the inner behavior (for timeout tests).
    Delay(Duration, Box<Behavior>),
    /// Answer nothing: HTTP/1 closes the connection, HTTP/2 resets the stream.
    Reset,
    /// 400 (as nginx answers) unless the client presented a certificate over TLS, else the
    /// inner behavior. Pair with [`ClientAuth::Optional`].
    RequireClientCert(Box<Behavior>),
    /// Decide per request (e.g. fail the first N requests).
    Dynamic(Arc<dyn Fn(&RecordedRequest) -> Behavior + Send + Sync>),
}

impl std::fmt::Debug for Behavior {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Behavior::Echo => write!(f, "Echo"),
            Behavior::EchoStatus(s) => write!(f, "EchoStatus({s})"),
            Behavior::EchoBody => write!(f, "EchoBody"),
            Behavior::Fixed { status, body, .. } => {
                write!(f, "Fixed({status}, {} bytes)", body.len())
            }
            Behavior::BodyOfSize(n) => write!(f, "BodyOfSize({n})"),
            Behavior::Delay(d, b) => write!(f, "Delay({d:?}, {b:?})"),
            Behavior::Reset => write!(f, "Reset"),
            Behavior::RequireClientCert(b) => write!(f, "RequireClientCert({b:?})"),
            Behavior::Dynamic(_) => write!(f, "Dynamic(..)"),
        }
    }
}

impl Behavior {
    /// A fixed status and body, no extra headers.
    pub fn fixed(status: u16, body: impl Into<Bytes>) -> Behavior {
        Behavior::Fixed {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Sleep `delay`, then `then`.
    pub fn delay(delay: Duration, then: Behavior) -> Behavior {
        Behavior::Delay(delay, Box::new(then))
    }

    /// Decide per request.
    pub fn dynamic(f: impl Fn(&RecordedRequest) -> Behavior + Send + Sync + 'static) -> Behavior {
        Behavior::Dynamic(Arc::new(f))
    }
}

/// `n` bytes of a repeating `a..z` pattern: what [`Behavior::BodyOfSize`] sends.
pub fn pattern_bytes(n: usize) -> Bytes {
    (0..n)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// 0-based order of arrival across all connections.
    pub index: usize,
    /// 1-based number of the connection it came on (same number = same connection).
    pub connection_id: usize,
    /// Request method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// `:authority` (HTTP/2) or the Host header (HTTP/1).
    pub authority: Option<String>,
    /// Protocol version.
    pub version: Version,
    /// Request headers.
    pub headers: HeaderMap,
    /// Length of the request body.
    pub body_len: usize,
    /// TLS SNI, if any.
    pub sni: Option<String>,
    /// Negotiated ALPN, if any.
    pub alpn: Option<String>,
    /// Subject CN of the client certificate, if one was presented.
    pub peer_cert_cn: Option<String>,
    /// URI SANs of the client certificate (SPIFFE ids).
    pub peer_uri_sans: Vec<String>,
}

impl RecordedRequest {
    /// A header's value as text (the first one if repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// "HTTP/1.1", "HTTP/2", ...
pub fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// Counters and the request record shared by all of an upstream's connections.
#[derive(Default)]
struct UpstreamState {
    behavior: Mutex<Option<Behavior>>,
    connections: AtomicUsize,
    active: AtomicUsize,
    requests: AtomicUsize,
    tls_failures: AtomicUsize,
    recorded: Mutex<Vec<RecordedRequest>>,
}

/// What a connection knows about itself, handed to each request on it.
#[derive(Clone, Debug, Default)]
struct ConnInfo {
    id: usize,
    tls: bool,
    sni: Option<String>,
    alpn: Option<String>,
    peer_cert_cn: Option<String>,
    peer_uri_sans: Vec<String>,
    peer_has_cert: bool,
}

/// TLS settings of an [`HttpUpstream`].
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// ALPN protocols offered, in order of preference (default h2, http/1.1).
    pub alpn: Vec<Vec<u8>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            client_auth: ClientAuth::None,
            alpn: certs::ALPN_H2_HTTP1.iter().map(|p| p.to_vec()).collect(),
        }
    }
}

/// An HTTP server on 127.0.0.1:0 speaking HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN
/// over TLS) on the same port. Stops when dropped.
///
/// [`Behavior::Echo`] answers `application/json`:
/// `{"method","path","authority","version":"HTTP/1.1"|"HTTP/2","headers":{name: value},
/// "body_len","tls","sni","alpn","peer_cert_cn","peer_uri_sans","connection_id",
/// "request_index","server"}` (`server` = this upstream's address), and every response carries
/// `x-upstream-addr` and `x-connection-id` headers.
pub struct HttpUpstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    sockets: Arc<Sockets>,
    _listener: Option<Tracked>,
    task: JoinHandle<()>,
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.sockets.shutdown_all();
        self.task.abort();
    }
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("addr", &self.addr)
            .finish()
    }
}

impl HttpUpstream {
    /// Plain-text HTTP/1.1 + h2c upstream.
    pub async fn start(behavior: Behavior) -> io::Result<HttpUpstream> {
        Self::spawn(behavior, None).await
    }

    /// TLS upstream presenting `server_cert`, offering ALPN h2 and http/1.1; if `client_ca` is
    /// given, a client certificate signed by it is required.
    pub async fn start_tls(
        behavior: Behavior,
        server_cert: &TestCert,
        client_ca: Option<&certs::TestCa>,
    ) -> io::Result<HttpUpstream> {
        let options = TlsOptions {
            client_auth: match client_ca {
                Some(ca) => ClientAuth::Required(ca.cert_der()),
                None => ClientAuth::None,
            },
            ..TlsOptions::default()
        };
        Self::start_tls_with(behavior, server_cert, options).await
    }

    /// TLS upstream with explicit options.
    pub async fn start_tls_with(
        behavior: Behavior,
        server_cert: &TestCert,
        options: TlsOptions,
    ) -> io::Result<HttpUpstream> {
        let alpn: Vec<&[u8]> = options.alpn.iter().map(|p| p.as_slice()).collect();
        let config = certs::server_config(server_cert, &options.client_auth, &alpn)?;
        Self::spawn(behavior, Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn spawn(behavior: Behavior, tls: Option<TlsAcceptor>) -> io::Result<HttpUpstream> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(UpstreamState::default());
        *lock(&state.behavior) = Some(behavior);
        let sockets = Arc::new(Sockets::default());
        let listener_guard = sockets.track(&listener);
        let task = tokio::spawn(accept_loop(
            listener,
            addr,
            state.clone(),
            sockets.clone(),
            tls,
        ));
        Ok(HttpUpstream {
            addr,
            state,
            sockets,
            _listener: listener_guard,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the behavior for requests that arrive from now on.
    pub fn set_behavior(&self, behavior: Behavior) {
        *lock(&self.state.behavior) = Some(behavior);
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn active_connections(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Requests received so far (counted once the body has been read).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (e.g. the client rejected our certificate or sent none).
    pub fn tls_failures(&self) -> usize {
        self.state.tls_failures.load(Ordering::SeqCst)
    }

    /// Every request received so far, in order of arrival.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        lock(&self.state.recorded).clone()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.state.recorded).last().cloned()
    }
}

struct ActiveGuard(Arc<UpstreamState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    state: Arc<UpstreamState>,
    sockets: Arc<Sockets>,
    tls: Option<TlsAcceptor>,
) {
    // Connection tasks live in this set, so aborting the accept task ends them too.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _peer)) = listener.accept().await else {
            // e.g. the socket was shut down by Drop: yield so the abort lands.
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            continue;
        };
        let tracked = sockets.track(&stream);
        let id = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
        state.active.fetch_add(1, Ordering::SeqCst);
        let guard = (ActiveGuard(state.clone()), tracked);
        let state = state.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let _guard = guard;
            let _ = stream.set_nodelay(true);
            match tls {
                None => {
                    let info = ConnInfo {
                        id,
                        ..ConnInfo::default()
                    };
                    serve_http(stream, info, local, state).await;
                }
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls_stream) => {
                        let (_, conn) = tls_stream.get_ref();
                        let peer = conn.peer_certificates().and_then(|c| c.first());
                        let info = ConnInfo {
                            id,
                            tls: true,
                            sni: conn.server_name().map(str::to_string),
                            alpn: conn
                                .alpn_protocol()
                                .map(|p| String::from_utf8_lossy(p).into_owned()),
                            peer_cert_cn: peer.and_then(|c| certs::subject_cn(c)),
                            peer_uri_sans: peer
                                .map(|c| certs::subject_alt_names(c).uri)
                                .unwrap_or_default(),
                            peer_has_cert: peer.is_some(),
                        };
                        serve_http(tls_stream, info, local, state).await;
                    }
                    Err(_) => {
                        state.tls_failures.fetch_add(1, Ordering::SeqCst);
                    }
                },
            }
        });
    }
}

async fn serve_http<S>(io: S, info: ConnInfo, local: SocketAddr, state: Arc<UpstreamState>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let service = service_fn(move |req: Request<Incoming>| {
        let info = info.clone();
        let state = state.clone();
        async move { handle(req, &info, local, &state).await }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// The error a service returns to make hyper drop the exchange without answering.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("test upstream reset")
    }
}

impl std::error::Error for Reset {}

async fn handle(
    req: Request<Incoming>,
    info: &ConnInfo,
    local: SocketAddr,
    state: &UpstreamState,
) -> Result<Response<Full<Bytes>>, Reset> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Reset),
    };
    let index = state.requests.fetch_add(1, Ordering::SeqCst);
    let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    });
    let recorded = RecordedRequest {
        index,
        connection_id: info.id,
        method: parts.method.clone(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".to_string()),
        authority,
        version: parts.version,
        headers: parts.headers.clone(),
        body_len: body.len(),
        sni: info.sni.clone(),
        alpn: info.alpn.clone(),
        peer_cert_cn: info.peer_cert_cn.clone(),
        peer_uri_sans: info.peer_uri_sans.clone(),
    };
    lock(&state.recorded).push(recorded.clone());
    let mut behavior = lock(&state.behavior).clone().unwrap_or(Behavior::Echo);
    loop {
        behavior = match behavior {
            Behavior::Echo => return Ok(echo(&recorded, info, local, 200)),
            Behavior::EchoStatus(s) => return Ok(echo(&recorded, info, local, s)),
            Behavior::EchoBody => {
                return Ok(respond(
                    200,
                    &[("content-type", "application/octet-stream")],
                    body,
                    info,
                    local,
                ))
            }
            Behavior::Fixed {
                status,
                headers,
                body,
            } => {
                let hs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                return Ok(respond(status, &hs, body, info, local));
            }
            Behavior::BodyOfSize(n) => {
                return Ok(respond(
                    200,
                    &[("content-type", "application/octet-stream")],
                    pattern_bytes(n),
                    info,
                    local,
                ))
            }
            Behavior::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                *inner
            }
            Behavior::Reset => return Err(Reset),
            Behavior::RequireClientCert(inner) => {
                if info.peer_has_cert {
                    *inner
                } else {
                    Behavior::fixed(400, "No required SSL certificate was sent\n")
                }
            }
            Behavior::Dynamic(f) => f(&recorded),
        };
    }
}

fn respond(
    status: u16,
    headers: &[(&str, &str)],
    body: Bytes,
    info: &ConnInfo,
    local: SocketAddr,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(name, value);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&local.to_string()) {
        h.insert("x-upstream-addr", v);
    }
    h.insert("x-connection-id", HeaderValue::from(info.id));
    resp
}

fn echo(
    r: &RecordedRequest,
    info: &ConnInfo,
    local: SocketAddr,
    status: u16,
) -> Response<Full<Bytes>> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in r.headers.iter() {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let json = serde_json::json!({
        "method": r.method.as_str(),
        "path": r.path,
        "authority": r.authority,
        "version": version_str(r.version),
        "headers": headers,
        "body_len": r.body_len,
        "tls": info.tls,
        "sni": r.sni,
        "alpn": r.alpn,
        "peer_cert_cn": r.peer_cert_cn,
        "peer_uri_sans": r.peer_uri_sans,
        "connection_id": r.connection_id,
        "request_index": r.index,
        "server": local.to_string(),
    });
    respond(
        status,
        &[("content-type", "application/json")],
        Bytes::from(json.to_string()),
        info,
        local,
    )
}

// ------------------------------------------------------------------------------------------

/// What a [`TcpUpstream`] does with each connection.
#[derive(Clone, Debug)]
enum TcpMode {
    Echo,
    CloseOnAccept,
    RespondAndClose(Bytes),
}

/// A raw TCP server on 127.0.0.1:0. Stops when dropped.
pub struct TcpUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    bytes_received: Arc<AtomicUsize>,
    sockets: Arc<Sockets>,
    _listener: Option<Tracked>,
    task: JoinHandle<()>,
}

impl Drop for TcpUpstream {
    fn drop(&mut self) {
        self.sockets.shutdown_all();
        self.task.abort();
    }
}

impl std::fmt::Debug for TcpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpUpstream")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TcpUpstream {
    /// Echoes every byte back until the client closes its side, then closes.
    pub async fn echo() -> io::Result<TcpUpstream> {
        Self::spawn(TcpMode::Echo).await
    }

    /// Accepts and immediately closes each connection.
    pub async fn close_on_accept() -> io::Result<TcpUpstream> {
        Self::spawn(TcpMode::CloseOnAccept).await
    }

    /// Writes `bytes` on accept, then closes (a server-speaks-first protocol).
    pub async fn respond_and_close(bytes: impl Into<Bytes>) -> io::Result<TcpUpstream> {
        Self::spawn(TcpMode::RespondAndClose(bytes.into())).await
    }

    async fn spawn(mode: TcpMode) -> io::Result<TcpUpstream> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes_received = Arc::new(AtomicUsize::new(0));
        let (c, b) = (connections.clone(), bytes_received.clone());
        let sockets = Arc::new(Sockets::default());
        let listener_guard = sockets.track(&listener);
        let socks = sockets.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                while conns.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else {
                    // e.g. the socket was shut down by Drop: yield so the abort lands.
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let tracked = socks.track(&stream);
                let mode = mode.clone();
                let b = b.clone();
                conns.spawn(async move {
                    let _tracked = tracked;
                    let _ = tcp_conn(stream, mode, &b).await;
                });
            }
        });
        Ok(TcpUpstream {
            addr,
            connections,
            bytes_received,
            sockets,
            _listener: listener_guard,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Bytes read from clients so far (echo mode).
    pub fn bytes_received(&self) -> usize {
        self.bytes_received.load(Ordering::SeqCst)
    }
}

async fn tcp_conn(mut stream: TcpStream, mode: TcpMode, received: &AtomicUsize) -> io::Result<()> {
    match mode {
        TcpMode::CloseOnAccept => Ok(()),
        TcpMode::RespondAndClose(bytes) => {
            stream.write_all(&bytes).await?;
            stream.shutdown().await
        }
        TcpMode::Echo => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return stream.shutdown().await;
                }
                received.fetch_add(n, Ordering::SeqCst);
                stream.write_all(&buf[..n]).await?;
            }
        }
    }
}

/// An address on 127.0.0.1 where nothing listens: bind port 0, note the port, close it.
/// (Connecting there is refused unless something else grabs the port meanwhile.)
pub fn closed_port() -> SocketAddr {
    crate::process::free_addr()
}
