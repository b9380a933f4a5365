//! Serving one downstream connection as HTTP/1.1 or cleartext HTTP/2 (prior knowledge, as
//! Istio sidecars talk to the gateway), detected from the first bytes.

use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use egret_core::limits::MAX_REQUEST_HEADERS_BYTES;
use egret_http::service::handle;
use egret_http::{ConnContext, HttpShared};

pub async fn serve_http<S>(io: S, shared: Arc<HttpShared>, ctx: Arc<ConnContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(MAX_REQUEST_HEADERS_BYTES.max(8192))
        .timer(hyper_util::rt::TokioTimer::new());
    builder
        .http2()
        .max_header_list_size(MAX_REQUEST_HEADERS_BYTES as u32)
        .timer(hyper_util::rt::TokioTimer::new());
    let svc = service_fn(move |req| handle(shared.clone(), ctx.clone(), req));
    if let Err(e) = builder.serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
}
