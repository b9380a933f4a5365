//! Sockets.
//!
//! This crate owns the listening side: binding each listener port of the Snapshot, the
//! accept loops, and handing each accepted connection to the right router (HTTP/1.1 through
//! Egret's own server codec, `h1`, cleartext HTTP/2 through hyper's, TLS passthrough via `egret-sni`, plain TCP). Each connection takes the current
//! configuration once, when it is accepted, and keeps it to the end: a reload reaches new
//! connections only and never cuts one in flight.

pub mod active;
pub mod h1;
pub mod http;
pub mod server;
mod tcp;
mod unanswered;

pub use active::{Active, ActiveConfig, TlsDirs};
pub use server::{Gateway, GatewayOptions};
