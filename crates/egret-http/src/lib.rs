//! The HTTP router.
//!
//! This crate owns what happens to one HTTP request at the gateway: the pure route match
//! (host → virtual host → first matching route, [`route`]), the request/response header
//! rules Envoy applies at an Istio gateway ([`headers`]), Envoy-identical local replies
//! ([`local_reply`]), the requests refused before routing as Envoy's codec refuses them
//! ([`refusal`]), and the hyper service that applies a route's policy ([`service`]):
//! fault injection, header operations, rewrites and redirects ([`rewrite`]), mirrors
//! ([`mirror`]), forwarding with the retry policy, per-try and route timeouts ([`forward`],
//! [`retry`], with the request body shared by attempts and mirrors in [`replay`]), and
//! WebSocket upgrades, HTTP/1.1 or HTTP/2 extended CONNECT ([`upgrade`]). Every request ends in exactly one access-log record, handed over when the
//! response body (or the upgraded tunnel) ends or the request is dropped. It does no socket
//! accepting (that is `egret-listener`) and never sees YAML.

pub mod body;
pub mod forward;
pub mod headers;
pub mod local_reply;
pub mod mirror;
pub mod path;
pub mod refusal;
pub mod replay;
pub mod retry;
pub mod rewrite;
pub mod route;
pub mod service;
pub mod upgrade;

pub use body::ResponseBody;
pub use service::{ConnContext, DownstreamTlsFacts, HttpShared};
