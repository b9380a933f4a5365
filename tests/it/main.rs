//! End-to-end suites: the real `egret` binary, real sockets, in-process upstreams and DNS.
//! One test binary (link time on 2 cores); modules by scenario.

mod common;
mod operations;
mod packaging;
mod passthrough;
mod pools;
mod routing;
mod s1_http;
mod tls_origination;
mod validate;
