//! Links the release binary with the functions that start-up and the data path run laid out
//! next to each other, in the order of `link/symbol-order.txt` (hottest first), before all the
//! others (benches/RESULTS.md, item 15). Pages of code are mapped 64 KB at a time around each
//! first touch, so when the code a gateway runs is scattered over the whole 11 MB `.text`,
//! most of the text ends up resident; packed, it takes a fraction of that. The list is a
//! profile (`scripts/symbol-order.sh` regenerates it): a function missing from it is only
//! placed after the listed ones, so a stale list costs memory, never correctness.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let order = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("link")
        .join("symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=EGRET_SYMBOL_ORDER");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let wanted = env::var("EGRET_SYMBOL_ORDER").map_or(true, |v| v != "off");
    if release && wanted && links_with_lld() && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names the list has but this build does not (a changed function) are expected.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// `--symbol-ordering-file` is an LLD option; rustc links x86_64 Linux binaries with its own
/// LLD from 1.90 on. Anywhere else — another target, an older rustc, a linker set in the
/// cargo configuration, or flags that choose one (`-C linker-features`,
/// `-C link-self-contained`, `-fuse-ld=`, `-C linker=`) — the binary links as before, in the
/// default order.
fn links_with_lld() -> bool {
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    if env::var("TARGET").map_or(true, |t| t != "x86_64-unknown-linux-gnu") {
        return false;
    }
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    // A linker set in the cargo configuration (`target.<triple>.linker`).
    if env::var_os("RUSTC_LINKER").is_some() {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if [
        "linker-features",
        "link-self-contained",
        "fuse-ld",
        "linker=",
    ]
    .iter()
    .any(|f| flags.contains(f))
    {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let minor = text
        .lines()
        .find_map(|l| l.strip_prefix("release: 1."))
        .and_then(|rest| rest.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
