//! The downstream socket of a TLS-terminating port while its handshake starts: closed with
//! a reset if it is dropped after the client sent something and before the gateway wrote a
//! byte to it.
//!
//! The TLS acceptor takes the socket and drops it itself when no server on the port takes
//! the ClientHello's SNI or the bytes are not TLS. Envoy 1.40 resets such a connection (no
//! filter chain matched; checked with it), where a plain drop would send a FIN. A client
//! that sent nothing (a TCP health check, one that times out silent) gets a FIN, as from
//! Envoy. Once the handshake has written its first byte (the ServerHello, or the alert of a
//! refused handshake) the connection closes normally, so a refused client reads its alert.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(crate) struct ResetIfUnanswered {
    stream: TcpStream,
    heard: bool,
    answered: bool,
}

impl ResetIfUnanswered {
    pub(crate) fn new(stream: TcpStream) -> Self {
        ResetIfUnanswered {
            stream,
            heard: false,
            answered: false,
        }
    }

    fn wrote(&mut self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.answered = true;
        }
    }
}

impl Drop for ResetIfUnanswered {
    fn drop(&mut self) {
        if self.heard && !self.answered {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ResetIfUnanswered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard = true;
        }
        r
    }
}

impl AsyncWrite for ResetIfUnanswered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
