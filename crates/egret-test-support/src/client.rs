//! Small HTTP clients for tests: one-shot HTTP/1.1 and h2c (prior knowledge) requests, and
//! connections that carry many requests (keep-alive HTTP/1.1, multiplexed HTTP/2), over TCP or
//! any stream (e.g. a TLS stream from [`tls_connect`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

fn hyper_err(e: hyper::Error) -> io::Error {
    io::Error::other(format!("hyper: {e}"))
}

/// A whole response.
#[derive(Clone, Debug)]
pub struct TestResponse {
    /// Status code.
    pub status: StatusCode,
    /// Protocol version of the response.
    pub version: Version,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl TestResponse {
    /// The body parsed as JSON (panics with the body text if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> io::Result<TestResponse> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(hyper_err)?.to_bytes();
    Ok(TestResponse {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// Builds a request; for HTTP/2 pass an absolute URI (`http://authority/path`).
pub fn request(
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> io::Result<Request<Full<Bytes>>> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into()))
        .map_err(|e| io::Error::other(format!("bad request: {e}")))
}

/// One HTTP/1.1 connection, reused for every request sent on it (keep-alive).
pub struct Http1Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Http1Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Http1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Http1Conn")
    }
}

impl Http1Conn {
    /// Connects over plain TCP.
    pub async fn connect(addr: SocketAddr) -> io::Result<Http1Conn> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        Self::handshake(tcp).await
    }

    /// Speaks HTTP/1.1 over an already-open stream (TCP, TLS, ...).
    pub async fn handshake<T>(io: T) -> io::Result<Http1Conn>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(hyper_err)?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http1Conn { sender, task })
    }

    /// Sends a request (origin-form URI, set `host` yourself) and reads the whole response.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> io::Result<TestResponse> {
        self.sender.ready().await.map_err(hyper_err)?;
        let resp = self.sender.send_request(req).await.map_err(hyper_err)?;
        collect(resp).await
    }

    /// `GET path` with `Host: host` and extra headers.
    pub async fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<TestResponse> {
        let mut all = vec![("host", host)];
        all.extend_from_slice(headers);
        self.send(request(Method::GET, path, &all, Bytes::new())?)
            .await
    }

    /// Whether the server has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// One HTTP/2 connection (prior knowledge over TCP, or over a TLS stream that negotiated
/// `h2`). Cloning shares the connection, so clones can send concurrently.
#[derive(Clone)]
pub struct H2Conn {
    sender: http2::SendRequest<Full<Bytes>>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2Conn")
    }
}

impl H2Conn {
    /// Connects over plain TCP with HTTP/2 prior knowledge (h2c).
    pub async fn connect(addr: SocketAddr) -> io::Result<H2Conn> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        Self::handshake(tcp).await
    }

    /// Speaks HTTP/2 over an already-open stream.
    pub async fn handshake<T>(io: T) -> io::Result<H2Conn>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(hyper_err)?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2Conn {
            sender,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// Sends a request (absolute URI: `http://authority/path`) and reads the whole response.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> io::Result<TestResponse> {
        self.sender.ready().await.map_err(hyper_err)?;
        let resp = self.sender.send_request(req).await.map_err(hyper_err)?;
        collect(resp).await
    }

    /// `GET http://authority/path` with extra headers.
    pub async fn get(
        &mut self,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<TestResponse> {
        let uri = format!("http://{authority}{path}");
        self.send(request(Method::GET, &uri, headers, Bytes::new())?)
            .await
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// One-shot HTTP/1.1 `GET path` to `addr` with `Host: host_header`.
pub async fn http1_get(
    addr: SocketAddr,
    host_header: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<TestResponse> {
    Http1Conn::connect(addr)
        .await?
        .get(host_header, path, headers)
        .await
}

/// One-shot HTTP/1.1 request.
pub async fn http1_request(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> io::Result<TestResponse> {
    Http1Conn::connect(addr).await?.send(req).await
}

/// One-shot h2c (prior knowledge) `GET http://authority/path`.
pub async fn h2c_get(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<TestResponse> {
    H2Conn::connect(addr)
        .await?
        .get(authority, path, headers)
        .await
}

/// One-shot h2c request (absolute URI).
pub async fn h2c_request(addr: SocketAddr, req: Request<Full<Bytes>>) -> io::Result<TestResponse> {
    H2Conn::connect(addr).await?.send(req).await
}

/// Opens TLS to `addr` with SNI `server_name` (build `config` with
/// [`crate::certs::client_config`]). The negotiated ALPN is on `stream.get_ref().1`.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    TlsConnector::from(config).connect(name, tcp).await
}
