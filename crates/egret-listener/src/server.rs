//! Binding and accepting.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use egret_core::{ListenerRoutes, Snapshot};
use egret_http::{ConnContext, HttpShared};

use crate::active::ActiveConfig;

pub struct GatewayOptions {
    pub bind: IpAddr,
    /// How long a TLS passthrough client has to send its ClientHello (Envoy's
    /// `listener_filters_timeout`, 15 s by default).
    pub client_hello_timeout: std::time::Duration,
    /// Idle timeout of passthrough and TCP connections (Istio's default: 1 h).
    pub tcp_idle_timeout: std::time::Duration,
}

impl GatewayOptions {
    pub fn new(bind: IpAddr) -> GatewayOptions {
        GatewayOptions {
            bind,
            client_hello_timeout: egret_core::limits::LISTENER_FILTER_TIMEOUT,
            tcp_idle_timeout: egret_core::limits::TCP_IDLE_TIMEOUT,
        }
    }
}

/// The running data plane: the configuration in force and the shared upstream machinery.
pub struct Gateway {
    pub config: Arc<ActiveConfig>,
    pub shared: Arc<HttpShared>,
    pub options: GatewayOptions,
}

impl Gateway {
    /// Binds every listener of the current snapshot; fails if any port cannot be bound.
    pub async fn bind(&self) -> io::Result<Vec<(u16, TcpListener)>> {
        let snapshot = self.config.load().snapshot.clone();
        let mut out = Vec::new();
        for l in &snapshot.listeners {
            let addr = SocketAddr::new(self.options.bind, l.listen_port);
            let listener = bind_listener(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            tracing::info!(listener = %l.name, %addr, protocol = ?l.protocol, "listening");
            out.push((l.listen_port, listener));
        }
        Ok(out)
    }

    /// Accepts on `listener` until the task is aborted.
    pub fn spawn_accept(
        self: &Arc<Self>,
        listen_port: u16,
        listener: TcpListener,
    ) -> JoinHandle<()> {
        let gw = self.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        let gw = gw.clone();
                        tokio::spawn(async move {
                            gw.serve_connection(listen_port, stream, remote).await
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        })
    }

    async fn serve_connection(&self, listen_port: u16, stream: TcpStream, remote: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(self.options.bind, listen_port));
        let active = self.config.load();
        let Some(listener) = active.snapshot.listener_on(listen_port) else {
            // The listener was removed by a reload; this socket is draining.
            return;
        };
        match &listener.routes {
            ListenerRoutes::Http(table) => {
                let ctx = Arc::new(ConnContext {
                    local,
                    remote,
                    snapshot: active.snapshot.clone(),
                    upstreams: active.upstreams.clone(),
                    table: table.clone(),
                    scheme: "http",
                    requested_server_name: None,
                    peer_uri_san: None,
                });
                crate::http::serve_http(stream, self.shared.clone(), ctx).await;
            }
            ListenerRoutes::Sni(_) | ListenerRoutes::Tcp(_) => {
                crate::tcp::serve_tcp(self, &active, listener, stream, local, remote).await;
            }
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.load().snapshot.clone()
    }
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}
