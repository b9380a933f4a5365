//! Circuit breaking: a cluster's open connections, pending requests, requests and retries in
//! flight, each against its DestinationRule limit (Envoy's circuit-breaker thresholds).
//!
//! Plain atomics, no lock: a slot is taken with a compare-and-swap that fails at the limit
//! and given back when its guard drops. Releasing a connection slot or an idle connection
//! wakes the requests waiting for one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use egret_core::ConnectionPool;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct Circuit {
    pub limits: ConnectionPool,
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
    /// Signalled when a connection closes or goes back to the idle list.
    pub(crate) available: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    Connections,
    Pending,
    Requests,
    Retries,
}

/// One unit of a limited resource, returned on drop.
#[derive(Debug)]
pub struct Slot {
    circuit: Arc<Circuit>,
    counter: Counter,
}

impl Slot {
    /// The circuit this slot counts against.
    pub(crate) fn circuit(&self) -> &Arc<Circuit> {
        &self.circuit
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.circuit
            .counter(self.counter)
            .fetch_sub(1, Ordering::AcqRel);
        if self.counter == Counter::Connections {
            self.circuit.available.notify_waiters();
        }
    }
}

impl Circuit {
    pub fn new(limits: ConnectionPool) -> Circuit {
        Circuit {
            limits,
            connections: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            available: Notify::new(),
        }
    }

    fn counter(&self, c: Counter) -> &AtomicU32 {
        match c {
            Counter::Connections => &self.connections,
            Counter::Pending => &self.pending,
            Counter::Requests => &self.requests,
            Counter::Retries => &self.retries,
        }
    }

    fn take(self: &Arc<Self>, counter: Counter, max: u32) -> Option<Slot> {
        self.counter(counter)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v < max).then_some(v + 1)
            })
            .ok()
            .map(|_| Slot {
                circuit: self.clone(),
                counter,
            })
    }

    /// A new connection (`tcp.maxConnections`).
    pub fn try_connection(self: &Arc<Self>) -> Option<Slot> {
        self.take(Counter::Connections, self.limits.max_connections)
    }

    /// A connection past `tcp.maxConnections`, counted like the others: Envoy's exception for
    /// a pool that has no connection to the host at all (otherwise its requests could only
    /// wait, possibly forever, for a connection to another host to close).
    pub fn force_connection(self: &Arc<Self>) -> Slot {
        self.counter(Counter::Connections)
            .fetch_add(1, Ordering::AcqRel);
        Slot {
            circuit: self.clone(),
            counter: Counter::Connections,
        }
    }

    /// Waiting for a connection (`http.http1MaxPendingRequests`).
    pub fn try_pending(self: &Arc<Self>) -> Option<Slot> {
        self.take(Counter::Pending, self.limits.max_pending_requests)
    }

    /// A request in flight (`http.http2MaxRequests`).
    pub fn try_request(self: &Arc<Self>) -> Option<Slot> {
        self.take(Counter::Requests, self.limits.max_requests)
    }

    /// A retry in flight (`http.maxRetries`). Without a slot Envoy does not retry and flags
    /// the response `UO`.
    pub fn try_retry(self: &Arc<Self>) -> Option<Slot> {
        self.take(Counter::Retries, self.limits.max_retries)
    }

    /// Open connections (for tests and /clusters).
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_respect_limits_and_come_back() {
        let c = Arc::new(Circuit::new(ConnectionPool {
            max_connections: 1,
            max_pending_requests: 2,
            ..ConnectionPool::default()
        }));
        let a = c.try_connection().expect("first");
        assert!(c.try_connection().is_none());
        let p1 = c.try_pending().expect("p1");
        let _p2 = c.try_pending().expect("p2");
        assert!(c.try_pending().is_none());
        drop(p1);
        assert!(c.try_pending().is_some());
        drop(a);
        assert_eq!(c.connections(), 0);
        assert!(c.try_connection().is_some());
        // Istio's default: no limit.
        let d = Arc::new(Circuit::new(ConnectionPool::default()));
        let many: Vec<Slot> = (0..1000).filter_map(|_| d.try_request()).collect();
        assert_eq!(many.len(), 1000);
    }
}
