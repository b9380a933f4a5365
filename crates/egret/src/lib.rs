//! The `egret` program: command line, wiring of the crates, signals.
//!
//! This crate owns turning flags into a running gateway: load and compile the Istio
//! configuration (`egret-config`), open the access log (`egret-telemetry`), set up DNS and
//! the upstream pool (`egret-upstream`), bind the listeners (`egret-listener`), and stop
//! cleanly on SIGINT/SIGTERM with every access-log line written. It holds no data-path logic.

pub mod admin;
pub mod cli;
pub mod demo;
pub mod heap;
pub mod idle_spin;
pub mod local_ip;
pub mod reload;
pub mod run;
pub mod validate;

pub use cli::{Cli, Command, ConfigArgs};
