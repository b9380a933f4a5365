//! TLS passthrough (route by SNI, never decrypt) and plain TCP routes: pick the cluster,
//! connect, replay what was read, splice both ways, one access-log record per connection.
//! Log lines match Envoy 1.40's tcp_proxy and listener logs field by field (checked:
//! `NR filter_chain_not_found` for no/unknown SNI and non-TLS bytes with bytes 0 0,
//! `UF,URX` plus the transport failure reason for a refused upstream). Envoy writes no line
//! for a client that never completes its ClientHello; we do when it sent part of one (`NR`
//! with `listener_filter_timeout`, or `DC` when it hung up), so refused traffic is always
//! visible — but not for a connection that sent nothing (health checks), as Envoy.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use egret_core::{ListenerRoutes, LogGuard, LogRecord, ResponseFlags, WeightedClusters};
use egret_sni::reader::{read_client_hello_into, ReadError};
use egret_sni::MAX_CLIENT_HELLO_RECORD_BYTES;
use egret_sni::{forward_spliced_until, forward_with_prefix_until, ForwardEnd, Side};
use egret_upstream::connect::connect_with;

use crate::active::Active;
use crate::server::{Gateway, OpenConnection};

/// Serves a connection accepted on a TLS passthrough or TCP port, as the connection's task.
///
/// A plain function returning the future, which uses what it is given in place: the future
/// is what every passthrough connection holds while it forwards, and the wrapper `async`
/// block it replaced kept the socket and both addresses a second time (-96 bytes per
/// connection; benches/RESULTS.md item 30).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub(crate) fn serve_tcp(
    gw: Arc<Gateway>,
    active: Arc<Active>,
    listen_port: u16,
    mut stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    open: OpenConnection,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        // Held to the end: the worker's open-connection count.
        let _open = &open;
        // The listener was removed by a reload since the accept.
        let Some(listener) = active.snapshot.listener_on(listen_port) else {
            return;
        };
        let (gw, active) = (&*gw, &*active);
        let rec = LogRecord::new(local, remote, active.snapshot.version.clone());
        let mut prefix = Vec::new();
        // Read before the record is armed: a connection dropped while its ClientHello is
        // awaited (the gateway exiting after its drain) leaves no line, as none leaves
        // Envoy's listener filters; it was a line with no flags and no SNI.
        let hello = match &listener.routes {
            ListenerRoutes::Sni(_) => Some(
                read_client_hello_into(
                    &mut stream,
                    &mut prefix,
                    gw.options.client_hello_timeout,
                    MAX_CLIENT_HELLO_RECORD_BYTES,
                )
                .await,
            ),
            _ => None,
        };
        let mut guard = LogGuard::new(rec, gw.shared.sink.clone());
        let clusters: &WeightedClusters = match (&listener.routes, hello) {
            (ListenerRoutes::Sni(table), Some(hello)) => {
                let sni = match hello {
                    Ok(h) => h.sni,
                    // Nothing sent (a TCP health check, a client that gave up): Envoy 1.40 writes
                    // no line and closes with a FIN at its listener timeout (checked with it).
                    Err(ReadError::Timeout | ReadError::Closed | ReadError::Io(_))
                        if prefix.is_empty() =>
                    {
                        return guard.discard();
                    }
                    Err(ReadError::Timeout) => {
                        return refuse(
                            &stream,
                            guard,
                            ResponseFlags::NO_ROUTE_FOUND,
                            "filter_chain_not_found",
                            Some("listener_filter_timeout"),
                        );
                    }
                    Err(ReadError::Closed | ReadError::Io(_)) => {
                        return refuse(
                            &stream,
                            guard,
                            ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                            "downstream_remote_disconnect",
                            None,
                        );
                    }
                    // Envoy's tls_inspector lets non-TLS bytes through without SNI; then no
                    // passthrough filter chain matches.
                    Err(ReadError::Parse(_)) => None,
                };
                let Some(sni) = sni else {
                    return refuse(
                        &stream,
                        guard,
                        ResponseFlags::NO_ROUTE_FOUND,
                        "filter_chain_not_found",
                        None,
                    );
                };
                // The reader reserved a whole TLS record; what came is kept until the upstream
                // has it (with `--passthrough-splice`, as long as the connection).
                prefix.shrink_to_fit();
                guard.record().requested_server_name = Some(Arc::from(sni.as_str()));
                match table.find(&sni) {
                    Some(route) => &route.clusters,
                    None => {
                        return refuse(
                            &stream,
                            guard,
                            ResponseFlags::NO_ROUTE_FOUND,
                            "filter_chain_not_found",
                            None,
                        )
                    }
                }
            }
            (ListenerRoutes::Tcp(table), _) => match &table.clusters {
                Some(c) => c,
                None => {
                    return refuse(
                        &stream,
                        guard,
                        ResponseFlags::NO_ROUTE_FOUND,
                        "filter_chain_not_found",
                        None,
                    )
                }
            },
            _ => return guard.discard(),
        };

        let Some(picked) = clusters.pick(fastrand_u32()) else {
            return refuse(
                &stream,
                guard,
                ResponseFlags::NO_CLUSTER_FOUND,
                "cluster_not_found",
                None,
            );
        };
        let Some(cluster) = active.upstreams.get(&picked.cluster).cloned() else {
            return refuse(
                &stream,
                guard,
                ResponseFlags::NO_CLUSTER_FOUND,
                "cluster_not_found",
                None,
            );
        };
        guard.record().upstream_cluster = Some(cluster.name().clone());
        // consistentHash useSourceIp also balances TCP routes (Istio sets the tcp_proxy hash).
        let hash = cluster.request_hash(&hyper::HeaderMap::new(), "", remote.ip());
        let endpoint = match cluster.pick_endpoint(&gw.shared.resolver, &[], hash).await {
            Ok(ep) => ep,
            Err(_) => {
                return refuse(
                    &stream,
                    guard,
                    ResponseFlags::NO_HEALTHY_UPSTREAM,
                    "-",
                    None,
                )
            }
        };
        let addr = endpoint.addr;
        let rec = guard.record();
        rec.upstream_host = Some(addr);
        // Envoy's tcp_proxy counts its one connect attempt (`%UPSTREAM_REQUEST_ATTEMPT_COUNT%`).
        rec.upstream_attempts = 1;
        // DestinationRule maxConnections: Envoy's tcp_proxy closes the connection, flagged `UO`.
        let Some(_connection_slot) = cluster.circuit().try_connection() else {
            guard.record().upstream_host = None;
            return refuse(&stream, guard, ResponseFlags::UPSTREAM_OVERFLOW, "-", None);
        };
        let keepalive = cluster.spec.traffic.pool.tcp_keepalive;
        // Per-endpoint connection counts for `/clusters`.
        endpoint.connection_attempt();
        let upstream =
            match connect_with(addr, cluster.spec.connect_timeout, keepalive.as_ref()).await {
                Ok(s) => s,
                Err(e) => {
                    endpoint.connect_failed();
                    // Envoy's tcp_proxy makes one connect attempt (max_connect_attempts 1) and
                    // reports `UF,URX` with the transport failure reason.
                    let rec = guard.record();
                    rec.upstream_transport_failure_reason = e.transport_failure_reason();
                    rec.set_flag(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
                    rec.set_flag(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                    let _ = stream.set_zero_linger();
                    return;
                }
            };
        guard.record().upstream_local_address = upstream.local_addr().ok();
        let _open = endpoint.open_connection();
        // The user-space copy (a buffer per direction while it moves data); splice(2) when asked
        // for (less gateway CPU per byte, more for endpoints on the same machine: RESULTS item 26).
        let result = if gw.options.passthrough_splice {
            // Boxed: its state (2.6 KB, -Zprint-type-sizes) would otherwise size every
            // passthrough connection's task, splicing or not.
            Box::pin(forward_spliced_until(
                &mut stream,
                upstream,
                &prefix,
                gw.options.tcp_idle_timeout,
                gw.stopped(),
            ))
            .await
        } else {
            // The ClientHello moves in, freed once the upstream has it.
            forward_with_prefix_until(
                &mut stream,
                upstream,
                prefix,
                gw.options.tcp_idle_timeout,
                gw.stopped(),
            )
            .await
        };
        let rec = guard.record();
        rec.bytes_received = result.bytes_from_downstream;
        rec.bytes_sent = result.bytes_from_upstream;
        // Envoy's tcp_proxy sets no response flag for a session ended by a FIN, by the client's
        // reset or by its idle timeout (checked with Envoy 1.40: a curl session logs `-` even
        // though curl resets). An upstream that resets is `UR`, and the client is reset too.
        match &result.end {
            ForwardEnd::Closed { .. } => {}
            ForwardEnd::Error {
                side: Side::Upstream,
                error,
            } if error.kind() == std::io::ErrorKind::ConnectionReset => {
                rec.set_flag(ResponseFlags::UPSTREAM_REMOTE_RESET);
                let _ = stream.set_zero_linger();
            }
            ForwardEnd::Error { side, error } => {
                tracing::debug!(?side, %error, "passthrough session ended by an error")
            }
            ForwardEnd::IdleTimeout => tracing::debug!("passthrough session idle timeout"),
            // The gateway shuts down: no flag, as Envoy logs the sessions it closes as it exits
            // (checked with 1.40).
            ForwardEnd::Stopped => tracing::debug!("passthrough session ended by the shutdown"),
        }
    }
}

/// Closes the connection with a reset, as Envoy 1.40 does when no filter chain or upstream
/// takes it (checked with it), and logs why.
fn refuse(
    stream: &TcpStream,
    mut guard: LogGuard,
    flag: ResponseFlags,
    details: &'static str,
    termination: Option<&'static str>,
) {
    let rec = guard.record();
    rec.set_flag(flag);
    if details != "-" {
        rec.response_code_details = Some(details.into());
    }
    rec.connection_termination_details = termination.map(Into::into);
    // Envoy counts no bytes for a connection no filter chain took.
    rec.bytes_received = 0;
    guard.finish();
    let _ = stream.set_zero_linger();
}

fn fastrand_u32() -> u32 {
    fastrand::u32(..)
}
