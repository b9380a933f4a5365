//! Which worker thread the code is running on.
//!
//! With `--workers N` (N > 1) Egret runs N single-threaded runtimes, one per thread, and hands
//! each accepted connection to one of them. State that is bound to one runtime — upstream
//! connections, whose I/O is driven by the runtime that opened them — is kept per worker and
//! indexed with [`current`]. Threads that are not workers (tests, the admin runtime) are
//! worker 0.

use std::cell::Cell;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running on this thread (0 outside workers).
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// Marks this thread as worker `index`; called once when a worker thread starts.
pub fn set_current(index: usize) {
    CURRENT.with(|c| c.set(index));
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_thread_has_its_own_index() {
        super::set_current(3);
        assert_eq!(super::current(), 3);
        let other = std::thread::spawn(super::current).join().unwrap();
        assert_eq!(other, 0);
        assert_eq!(super::current(), 3);
    }
}
