//! The body of an upstream response, whichever protocol carried it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::UpstreamError;
use crate::h1::{H1Body, Upgraded};

pub enum UpstreamResponseBody {
    /// Read by Egret's HTTP/1.1 codec; holds the connection while it is read.
    H1(H1Body),
    /// A stream of hyper's HTTP/2 client.
    H2(Incoming),
}

impl UpstreamResponseBody {
    /// An HTTP/1.1 connection switched to another protocol by a `101`.
    pub fn into_upgraded(self) -> Option<Upgraded> {
        match self {
            UpstreamResponseBody::H1(b) => b.into_upgraded(),
            UpstreamResponseBody::H2(_) => None,
        }
    }
}

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            UpstreamResponseBody::H1(b) => Pin::new(b).poll_frame(cx),
            UpstreamResponseBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(UpstreamError::http2),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamResponseBody::H1(b) => b.is_end_stream(),
            UpstreamResponseBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamResponseBody::H1(b) => b.size_hint(),
            UpstreamResponseBody::H2(b) => b.size_hint(),
        }
    }
}

impl std::fmt::Debug for UpstreamResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamResponseBody::H1(_) => f.write_str("UpstreamResponseBody::H1"),
            UpstreamResponseBody::H2(_) => f.write_str("UpstreamResponseBody::H2"),
        }
    }
}
