//! Sockets.
//!
//! This crate owns the listening side: binding each listener port of the Snapshot, the
//! accept loops, and handing each accepted connection to the right router (HTTP/1.1 through
//! Egret's own server codec, `h1`, cleartext HTTP/2 through hyper's, TLS passthrough via
//! `egret-sni`, plain TCP). A reload never cuts anything in flight: a TCP or passthrough
//! session keeps the configuration it was accepted with, and each HTTP request takes the one
//! in force when its head arrives (`http::Contexts`), so a route change reaches kept-alive
//! connections as Envoy's route updates do.

pub mod active;
pub mod h1;
pub mod http;
pub mod server;
mod tcp;
mod unanswered;

pub use active::{Active, ActiveConfig, TlsDirs};
pub use server::{Gateway, GatewayOptions};
