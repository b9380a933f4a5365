//! The HTTP router.
//!
//! This crate owns what happens to one HTTP request at the gateway: the pure route match
//! (host → virtual host → first matching route, [`route`]), the request/response header
//! rules Envoy applies at an Istio gateway ([`headers`]), Envoy-identical local replies
//! ([`local_reply`]), and the hyper service that forwards to a cluster with Istio's default
//! retry policy and the route timeout ([`service`]). Every request ends in exactly one
//! access-log record, handed over when the response body ends or the request is dropped.
//! It does no socket accepting (that is `egret-listener`) and never sees YAML.

pub mod body;
pub mod headers;
pub mod local_reply;
pub mod route;
pub mod service;

pub use body::ResponseBody;
pub use service::{ConnContext, HttpShared};
