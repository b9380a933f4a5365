//! Request mirroring (`mirror`, `mirrors`): a fire-and-forget copy of the upstream request to
//! another cluster. The copy runs in its own task: it never delays, changes or fails the
//! original request, its answer is read and dropped, and it gets no access-log line (Envoy
//! 1.40 logs shadows nowhere in the route's access log).
//!
//! The copy is what the primary upstream receives (path and headers after rewrites and
//! header operations), with Envoy's marks: the authority gets `-shadow` (`host-shadow:port`),
//! `x-envoy-internal: true`, and the gateway's address is appended to `x-forwarded-for`
//! again (checked with Envoy 1.40). The copy starts with the request and its body streams
//! as the client sends it, whatever its size, as Envoy 1.40's streaming shadows do
//! ([`crate::replay`]: a mirror more than the buffer limit behind holds the reading back).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};
use http_body::Body as _;

use egret_upstream::{UpstreamBody, Upstreams};

use crate::headers;
use crate::replay::MirrorHold;
use crate::rewrite::shadow_authority;
use crate::service::HttpShared;

/// One copy to send.
pub struct Shadow {
    pub cluster: Arc<str>,
    pub method: Method,
    /// The upstream request's headers (hop-by-hop removed, route operations applied).
    pub headers: HeaderMap,
    /// The upstream request's authority (before `-shadow`).
    pub authority: String,
    /// The upstream request's path and query.
    pub path: String,
    pub body: UpstreamBody,
    /// Kept until the copy is done: then the request body no longer waits for this mirror.
    pub hold: Option<MirrorHold>,
    /// The route timeout, if any, bounds the copy too.
    pub timeout: Option<Duration>,
}

/// Starts sending `shadow` in the background.
pub fn spawn(shared: Arc<HttpShared>, upstreams: Arc<Upstreams>, mut shadow: Shadow) {
    tokio::spawn(async move {
        let _hold = shadow.hold.take();
        let cluster_name = shadow.cluster.clone();
        let timeout = shadow.timeout;
        let send = send(shared, upstreams, shadow);
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, send)
                .await
                .unwrap_or(Err("timed out")),
            None => send.await,
        };
        if let Err(why) = result {
            tracing::debug!(cluster = %cluster_name, why, "mirror request failed");
        }
    });
}

async fn send(
    shared: Arc<HttpShared>,
    upstreams: Arc<Upstreams>,
    shadow: Shadow,
) -> Result<(), &'static str> {
    let cluster = upstreams
        .get(&shadow.cluster)
        .cloned()
        .ok_or("no such cluster")?;
    let endpoint = cluster
        .pick_endpoint(&shared.resolver, &[], None)
        .await
        .map_err(|_| "no healthy upstream")?;
    let mut conn = shared
        .pool
        .checkout(&cluster, &endpoint)
        .await
        .map_err(|_| "connect failed")?;
    let authority = shadow_authority(&shadow.authority);
    let mut h = shadow.headers;
    h.insert(
        headers::X_ENVOY_INTERNAL.clone(),
        HeaderValue::from_static("true"),
    );
    if let Some(ip) = shared.local_ip.or_else(|| first_xff(&h)) {
        headers::append_xff(&mut h, ip, None);
    }
    h.insert(
        headers::X_ENVOY_ATTEMPT_COUNT.clone(),
        HeaderValue::from_static("1"),
    );
    let mut req = Request::new(shadow.body);
    *req.method_mut() = shadow.method;
    if conn.is_http2() {
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = format!("http://{authority}{}", shadow.path)
            .parse()
            .map_err(|_| "bad uri")?;
        h.remove(http::header::HOST);
    } else {
        *req.uri_mut() = shadow
            .path
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        h.insert(
            http::header::HOST,
            HeaderValue::from_str(&authority).map_err(|_| "bad authority")?,
        );
    }
    *req.headers_mut() = h;
    let resp = conn.send(req).await.map_err(|_| "send failed")?;
    // Read the answer to its end so the connection can serve again.
    let mut body = resp.into_body();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        if frame.is_err() {
            return Err("response body failed");
        }
    }
    conn.release(&mut body);
    Ok(())
}

/// The client address already in `x-forwarded-for` (when this host's own is unknown).
fn first_xff(h: &HeaderMap) -> Option<IpAddr> {
    h.get(&headers::X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
}
