//! Giving freed heap pages back to the kernel once the gateway goes quiet (glibc's allocator).
//!
//! glibc gives memory back only from the top of its heap. When a burst of requests ends, the
//! buffers it used are freed into holes between the long-lived state of the connections still
//! open, and those pages stay resident: most of the ~3.4 KB an idle keep-alive connection cost
//! after a request (benches/RESULTS.md, items 11 and 16). `malloc_trim(0)` also hands back the
//! whole pages inside those holes (`MADV_DONTNEED`). It walks the free lists with each arena
//! locked, so it runs only once the gateway has been quiet for a while — never under load,
//! where the pages would be faulted back a moment later (what purging at once cost mimalloc:
//! +20 % CPU per request). One trim per quiet period, like jemalloc's background purging.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whether this build's allocator is glibc's, the one [`trim`] acts on.
pub const AVAILABLE: bool = cfg!(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc"),
    not(feature = "jemalloc")
));

/// Trims the heap once `activity` (a count that moves with every connection opened or closed,
/// request logged or buffer released) has stood still for between `quiet / 2` and `quiet`,
/// and again only after it has moved. The first quiet period after start counts, so the
/// memory freed after loading the configuration goes back too. `trims` counts the trims.
pub async fn trim_when_quiet(activity: impl Fn() -> u64, quiet: Duration, trims: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval((quiet / 2).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    let mut last = activity();
    let mut trimmed_at = None;
    loop {
        tick.tick().await;
        let now = activity();
        if now == last && trimmed_at != Some(now) {
            let started = std::time::Instant::now();
            let released = trim();
            trimmed_at = Some(now);
            trims.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(released, took = ?started.elapsed(), "heap trimmed");
        }
        last = now;
    }
}

/// `malloc_trim(0)`: true when memory went back to the kernel.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc"),
    not(feature = "jemalloc")
))]
#[expect(unsafe_code, reason = "malloc_trim is only reachable through FFI")]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers; it only locks and walks glibc's own arenas.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc"),
    not(feature = "jemalloc")
)))]
fn trim() -> bool {
    false
}
