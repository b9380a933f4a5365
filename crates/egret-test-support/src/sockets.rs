//! Makes "stop when the handle is dropped" take effect at once on the network: a server
//! keeps duplicates of its listening and connected sockets and shuts them all down in `Drop`,
//! before its tasks are aborted (which tokio completes later, asynchronously).

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::lock;

/// The sockets a server has open.
#[derive(Default)]
pub(crate) struct Sockets {
    next: AtomicUsize,
    /// (stopping, open sockets): one lock, so a socket tracked while Drop runs is either
    /// drained by it or shut down by `track` itself.
    open: Mutex<(bool, HashMap<usize, socket2::Socket>)>,
}

/// Removes its socket from the set when the connection ends.
pub(crate) struct Tracked {
    set: Arc<Sockets>,
    id: usize,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        lock(&self.set.open).1.remove(&self.id);
    }
}

impl Sockets {
    /// Remembers a duplicate of `sock` until the returned guard is dropped. If the server is
    /// already stopping, the socket is shut down right away.
    pub(crate) fn track(self: &Arc<Self>, sock: &impl AsFd) -> Option<Tracked> {
        let dup = socket2::Socket::from(sock.as_fd().try_clone_to_owned().ok()?);
        let mut open = lock(&self.open);
        if open.0 {
            let _ = dup.shutdown(Shutdown::Both);
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        open.1.insert(id, dup);
        drop(open);
        Some(Tracked {
            set: self.clone(),
            id,
        })
    }

    /// Shuts down every tracked socket (a listening socket stops accepting: new connects are
    /// refused; a connected one sees EOF both ways).
    pub(crate) fn shutdown_all(&self) {
        let mut open = lock(&self.open);
        open.0 = true;
        for (_, s) in open.1.drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Pause after a failed accept/recv, so a loop on a shut-down socket yields to its abort.
pub(crate) const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);
