//! Upstream side of the data path.
//!
//! This crate owns how Egret reaches external hosts: DNS resolution (hickory-resolver, with
//! TTLs honoured and a hosts-file override for labs), each cluster's endpoint set and load
//! balancing, TCP connect with the cluster's timeout, the HTTP/1.1 client codec, and the
//! keep-alive connection pool for HTTP/1.1 and HTTP/2, with the DestinationRule's circuit breakers (connection, pending,
//! request and retry limits) and outlier detection. It never sees YAML or the access log; failures come back as typed
//! errors that carry what the access log needs (Envoy's reset reason and transport failure
//! reason).

pub mod body;
pub mod chunked;
pub mod circuit;
pub mod cluster;
pub mod connect;
pub mod error;
pub mod h1;
pub mod lb;
pub mod outlier;
pub mod pool;
pub mod resolve;
pub mod response;
pub mod upstreams;

pub use body::{ClientBody, UpstreamBody};
pub use circuit::{Circuit, Slot};
pub use cluster::{ClusterRegistry, ClusterState, PickError};
pub use connect::ConnectError;
pub use error::UpstreamError;
pub use outlier::{Endpoint, HostCounts, OpenConnection, Outcome};
pub use pool::{Pool, PooledConn, SendError};
pub use resolve::{parse_connect_to, DnsError, Resolved, Resolver, ResolverConfig};
pub use response::UpstreamResponseBody;
pub use upstreams::Upstreams;
