//! Istio configuration for Egret: this crate owns reading `networking.istio.io` resources
//! (ServiceEntry, Gateway, VirtualService, DestinationRule) from files and folders of YAML,
//! validating them with diagnostics that name file, line, resource and field, and compiling
//! them into the immutable [`egret_core::Snapshot`] for one egress-gateway workload.
//!
//! It must not do network I/O, watch files, or know anything of sockets or TLS: the binary
//! decides when to (re)load, and the data-path crates only ever see the `Snapshot`.
//!
//! ```no_run
//! # use std::path::PathBuf;
//! let loaded = egret_config::load(&[PathBuf::from("config/s1-http")]).map_err(|e| e.to_string())?;
//! let compiled = egret_config::compile(&loaded, &egret_config::CompileOptions::default())
//!     .map_err(|errs| errs.len())
//!     .unwrap();
//! for w in &compiled.warnings {
//!     eprintln!("warning: {w}");
//! }
//! println!("{}", egret_config::describe(&compiled.snapshot));
//! # Ok::<(), String>(())
//! ```

mod compile;
mod describe;
mod diag;
mod dr_fields;
mod fields;
mod host_lookup;
pub mod istio;
mod load;
pub mod names;
mod node;
mod traffic;
mod validate;

pub use compile::{compile, CompileOptions, Compiled};
pub use describe::describe;
pub use diag::{Diagnostic, Kind, Severity};
pub use dr_fields::{dr_markdown_table, DrField, DESTINATION_RULE_FIELDS};
pub use fields::{markdown_table, Field, Support, VIRTUAL_SERVICE_FIELDS};
pub use load::{
    load, load_sources, load_with_options, LoadErrors, LoadOptions, Loaded, Resource, Skipped,
    Source, ISTIO_NETWORKING_GROUP, ISTIO_NETWORKING_VERSIONS,
};
pub use validate::NOT_SUPPORTED;
