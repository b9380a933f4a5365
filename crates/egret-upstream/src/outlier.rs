//! Per-endpoint run-time state (requests in flight, outlier counters) and the outlier
//! detector, with Envoy's rules as Istio configures them:
//!
//! - Each upstream result is reported. Without `splitExternalLocalOriginErrors` a connect
//!   failure or reset counts as a 503 and a timeout as a 504 (Envoy's `putResult` mapping).
//! - The N-th consecutive 5xx (or 502/503/504 for gateway errors) ejects the endpoint at once,
//!   unless that would eject more than `maxEjectionPercent` of the endpoints (checked with
//!   Envoy 1.40: with two endpoints, 10% ejects none and 50% one; 100% ejects both, and then
//!   requests get `503 UH no healthy upstream`).
//! - An ejected endpoint returns on the first interval sweep after
//!   `min(baseEjectionTime × backoff, max_ejection_time)`; backoff grows by one per ejection
//!   and shrinks by one per sweep the endpoint spends healthy. Sweeps are computed from the
//!   detector's start time, so no timer task is needed: state advances when it is looked at.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egret_core::OutlierDetection;

/// What became of one attempt on an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived with this status.
    Status(u16),
    /// The connection could not be made (refused, TLS failure, connect timeout...).
    ConnectFailed,
    /// The connection was made (only matters with split local-origin errors).
    ConnectSucceeded,
    /// The request was reset or the connection dropped before a response.
    Reset,
    /// No response within the request's timeout.
    Timeout,
}

/// One endpoint of a cluster. Survives DNS refreshes while its address stays in the set.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Requests in flight (LEAST_REQUEST).
    active: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    ejected: AtomicBool,
    ejection: Mutex<Ejection>,
    stats: HostStats,
}

/// Envoy's per-host statistics, as `/clusters` prints them. Relaxed atomic adds on the data
/// path: no lock, no allocation.
#[derive(Debug, Default)]
struct HostStats {
    cx_total: AtomicU64,
    cx_connect_fail: AtomicU64,
    cx_active: AtomicU32,
    rq_total: AtomicU64,
    rq_success: AtomicU64,
    rq_error: AtomicU64,
    rq_timeout: AtomicU64,
}

/// A reading of an endpoint's statistics, under Envoy's names (`/clusters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCounts {
    /// Connections open now (established, not yet closed).
    pub cx_active: u64,
    /// Connection attempts that failed (TCP, TLS or HTTP handshake).
    pub cx_connect_fail: u64,
    /// Connection attempts, failed ones included.
    pub cx_total: u64,
    /// Requests in flight.
    pub rq_active: u64,
    /// Requests answered with a 5xx, or reset before the response headers.
    pub rq_error: u64,
    /// Requests answered with anything but a 5xx.
    pub rq_success: u64,
    /// Requests that ran out of time (per-try or route timeout).
    pub rq_timeout: u64,
    /// Requests sent (every attempt: retries and mirrors count).
    pub rq_total: u64,
}

impl HostCounts {
    /// `(name, value)` in Envoy's order (sorted by name, as its `/clusters` prints them).
    pub fn named(&self) -> [(&'static str, u64); 8] {
        [
            ("cx_active", self.cx_active),
            ("cx_connect_fail", self.cx_connect_fail),
            ("cx_total", self.cx_total),
            ("rq_active", self.rq_active),
            ("rq_error", self.rq_error),
            ("rq_success", self.rq_success),
            ("rq_timeout", self.rq_timeout),
            ("rq_total", self.rq_total),
        ]
    }

    /// Whether Envoy files the statistic as a gauge (the others are counters).
    pub fn is_gauge(name: &str) -> bool {
        matches!(name, "cx_active" | "rq_active")
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Ejection {
    /// Envoy's eject_time_backoff.
    backoff: u32,
    times: u32,
    since: Option<Instant>,
    /// When it last came back (the sweep that returned it).
    returned: Option<Instant>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            active: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejection: Mutex::new(Ejection::default()),
            stats: HostStats::default(),
        }
    }

    /// The endpoint's statistics now.
    pub fn counts(&self) -> HostCounts {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HostCounts {
            cx_active: u64::from(s.cx_active.load(Ordering::Relaxed)),
            cx_connect_fail: get(&s.cx_connect_fail),
            cx_total: get(&s.cx_total),
            rq_active: u64::from(self.active.load(Ordering::Relaxed)),
            rq_error: get(&s.rq_error),
            rq_success: get(&s.rq_success),
            rq_timeout: get(&s.rq_timeout),
            rq_total: get(&s.rq_total),
        }
    }

    /// A connection attempt starts (`cx_total`).
    pub fn connection_attempt(&self) {
        self.stats.cx_total.fetch_add(1, Ordering::Relaxed);
    }

    /// The attempt failed: TCP connect, TLS or HTTP handshake (`cx_connect_fail`).
    pub fn connect_failed(&self) {
        self.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
    }

    /// The connection is established; it counts as open (`cx_active`) until the guard drops.
    pub fn open_connection(self: &Arc<Self>) -> OpenConnection {
        self.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// A request went out on a connection to this endpoint (`rq_total`).
    pub fn request_sent(&self) {
        self.stats.rq_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A request counted by [`Endpoint::request_sent`] turned out never to have left (a
    /// pooled connection the peer had closed); it goes out again and is counted then.
    pub fn request_not_sent(&self) {
        self.stats.rq_total.fetch_sub(1, Ordering::Relaxed);
    }

    /// Response headers arrived: a 5xx is `rq_error`, anything else `rq_success` (Envoy).
    pub fn response(&self, status: u16) {
        let c = if (500..600).contains(&status) {
            &self.stats.rq_error
        } else {
            &self.stats.rq_success
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The request was reset before its response headers (`rq_error`).
    pub fn request_reset(&self) {
        self.stats.rq_error.fetch_add(1, Ordering::Relaxed);
    }

    /// No response within the per-try or route timeout (`rq_timeout`).
    pub fn request_timeout(&self) {
        self.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
    }

    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// How many times this endpoint has been ejected.
    pub fn ejections(&self) -> u32 {
        lock(&self.ejection).times
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin_request(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }

    fn reset_counters(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }
}

/// A request counted against an endpoint's in-flight total.
#[derive(Debug)]
pub struct ActiveRequest(Arc<Endpoint>);

impl ActiveRequest {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

/// An open connection counted in its endpoint's `cx_active` until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<Endpoint>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocal,
}

/// A cluster's outlier detector.
#[derive(Debug)]
pub struct Detector {
    cfg: OutlierDetection,
    /// Sweeps happen at `start + k × interval`.
    start: Instant,
    ejected: AtomicU32,
    /// Serialises ejection decisions (rare), so the percentage check is exact.
    decide: Mutex<()>,
}

impl Detector {
    pub fn new(cfg: OutlierDetection, start: Instant) -> Detector {
        Detector {
            cfg,
            start,
            ejected: AtomicU32::new(0),
            decide: Mutex::new(()),
        }
    }

    /// Endpoints currently ejected.
    pub fn ejected_count(&self) -> u32 {
        self.ejected.load(Ordering::Relaxed)
    }

    /// A new endpoint set took over (DNS refresh): recount the ejected ones it keeps.
    pub fn recount(&self, endpoints: &[Arc<Endpoint>]) {
        let _g = lock(&self.decide);
        let n = endpoints.iter().filter(|e| e.is_ejected()).count() as u32;
        self.ejected.store(n, Ordering::Relaxed);
    }

    /// Records one result; may eject `ep` (one of `all`).
    pub fn report(&self, ep: &Endpoint, all: &[Arc<Endpoint>], outcome: Outcome, now: Instant) {
        let code = match (outcome, self.cfg.split_local_origin) {
            (Outcome::Status(c), _) => c,
            (Outcome::ConnectSucceeded, false) => return,
            (Outcome::ConnectFailed | Outcome::Reset, false) => 503,
            (Outcome::Timeout, false) => 504,
            (Outcome::ConnectSucceeded, true) => {
                ep.consecutive_local.store(0, Ordering::Relaxed);
                return;
            }
            (Outcome::ConnectFailed | Outcome::Timeout, true) => {
                let n = ep.consecutive_local.fetch_add(1, Ordering::Relaxed) + 1;
                if Some(n) == self.cfg.consecutive_local_origin_failures {
                    self.consecutive_error(ep, all, Kind::ConsecutiveLocal, now);
                }
                return;
            }
            // Envoy: a failure after the connection was made counts as the server's (503).
            (Outcome::Reset, true) => 503,
        };
        if (500..600).contains(&code) {
            if matches!(code, 502..=504) {
                let n = ep.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
                if Some(n) == self.cfg.consecutive_gateway_errors {
                    self.consecutive_error(ep, all, Kind::ConsecutiveGateway, now);
                }
            } else {
                ep.consecutive_gateway.store(0, Ordering::Relaxed);
            }
            let n = ep.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            if Some(n) == self.cfg.consecutive_5xx {
                self.consecutive_error(ep, all, Kind::Consecutive5xx, now);
            }
        } else {
            ep.consecutive_5xx.store(0, Ordering::Relaxed);
            ep.consecutive_gateway.store(0, Ordering::Relaxed);
        }
    }

    fn consecutive_error(&self, ep: &Endpoint, all: &[Arc<Endpoint>], kind: Kind, now: Instant) {
        let _g = lock(&self.decide);
        // Envoy: an endpoint already ejected keeps its counters until it returns.
        if ep.is_ejected() {
            return;
        }
        self.sweep_locked(all, now);
        let total = all.len().max(1) as f64;
        let ejected = self.ejected.load(Ordering::Relaxed);
        let share = 100.0 * f64::from(ejected + 1) / total;
        if share <= f64::from(self.cfg.max_ejection_percent.min(100)) {
            let mut e = lock(&ep.ejection);
            // The sweeps it spent healthy since it last came back shrink the backoff.
            if let Some(back) = e.returned {
                let healthy = self.sweeps_between(back, now);
                e.backoff = e.backoff.saturating_sub(healthy);
            }
            let base = self.cfg.base_ejection_time;
            if base.saturating_mul(e.backoff) < self.cfg.max_ejection_time.saturating_add(base) {
                e.backoff += 1;
            }
            e.times += 1;
            e.since = Some(now);
            ep.ejected.store(true, Ordering::Relaxed);
            self.ejected.fetch_add(1, Ordering::Relaxed);
            tracing::info!(endpoint = %ep.addr, ejections = e.times, reason = ?kind, "outlier detection ejected an endpoint");
        } else {
            tracing::debug!(endpoint = %ep.addr, "outlier ejection skipped: maxEjectionPercent reached");
        }
        match kind {
            Kind::Consecutive5xx => ep.consecutive_5xx.store(0, Ordering::Relaxed),
            Kind::ConsecutiveGateway => ep.consecutive_gateway.store(0, Ordering::Relaxed),
            Kind::ConsecutiveLocal => ep.consecutive_local.store(0, Ordering::Relaxed),
        }
    }

    /// Returns endpoints whose ejection is over (as of the last sweep at or before `now`).
    pub fn sweep(&self, all: &[Arc<Endpoint>], now: Instant) {
        if self.ejected.load(Ordering::Relaxed) == 0 {
            return;
        }
        let _g = lock(&self.decide);
        self.sweep_locked(all, now);
    }

    fn sweep_locked(&self, all: &[Arc<Endpoint>], now: Instant) {
        for ep in all.iter().filter(|e| e.is_ejected()) {
            let mut e = lock(&ep.ejection);
            let Some(since) = e.since else { continue };
            let time = self
                .cfg
                .base_ejection_time
                .saturating_mul(e.backoff)
                .min(self.cfg.max_ejection_time);
            let Some(back) = self.sweep_at_or_after(since + time) else {
                continue;
            };
            if back <= now {
                e.returned = Some(back);
                ep.ejected.store(false, Ordering::Relaxed);
                ep.reset_counters();
                self.ejected.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(endpoint = %ep.addr, "outlier detection returned an endpoint");
            }
        }
    }

    /// The first sweep at or after `t`.
    fn sweep_at_or_after(&self, t: Instant) -> Option<Instant> {
        let interval = self.cfg.interval.max(Duration::from_millis(1));
        let since = t.saturating_duration_since(self.start);
        let k = since.as_nanos().div_ceil(interval.as_nanos());
        let k = u32::try_from(k).ok()?;
        self.start.checked_add(interval.checked_mul(k)?)
    }

    /// Sweeps in (a, b].
    fn sweeps_between(&self, a: Instant, b: Instant) -> u32 {
        let interval = self.cfg.interval.max(Duration::from_millis(1)).as_nanos();
        let ka = a.saturating_duration_since(self.start).as_nanos() / interval;
        let kb = b.saturating_duration_since(self.start).as_nanos() / interval;
        u32::try_from(kb.saturating_sub(ka)).unwrap_or(u32::MAX)
    }

    /// Whether ejections are ignored because too few endpoints are healthy (Envoy's panic
    /// threshold, Istio's `minHealthPercent`; 0 = never).
    pub fn panic(&self, total: usize) -> bool {
        let min = self.cfg.min_health_percent;
        if min == 0 || total == 0 {
            return false;
        }
        let healthy = total.saturating_sub(self.ejected_count() as usize);
        (healthy as f64) * 100.0 / (total as f64) < f64::from(min)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(SocketAddr::from((
                    [127, 0, 0, 1],
                    1000 + i as u16,
                ))))
            })
            .collect()
    }

    fn cfg(max_pct: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: Some(3),
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(4),
            max_ejection_percent: max_pct,
            ..OutlierDetection::default()
        }
    }

    #[test]
    fn consecutive_5xx_ejects_within_the_percentage() {
        let t0 = Instant::now();
        let all = eps(2);
        // Envoy 1.40 with two endpoints: 10% ejects none.
        let d = Detector::new(cfg(10), t0);
        for _ in 0..6 {
            d.report(&all[0], &all, Outcome::Status(503), t0);
        }
        assert!(!all[0].is_ejected());
        // 50%: one of two.
        let all = eps(2);
        let d = Detector::new(cfg(50), t0);
        d.report(&all[0], &all, Outcome::Status(500), t0);
        d.report(&all[0], &all, Outcome::Status(200), t0);
        d.report(&all[0], &all, Outcome::Status(500), t0);
        d.report(&all[0], &all, Outcome::ConnectFailed, t0);
        assert!(
            !all[0].is_ejected(),
            "a success in between resets the count"
        );
        d.report(&all[0], &all, Outcome::Reset, t0);
        assert!(all[0].is_ejected());
        for _ in 0..3 {
            d.report(&all[1], &all, Outcome::Status(503), t0);
        }
        assert!(!all[1].is_ejected(), "the second would exceed 50%");
        assert_eq!(d.ejected_count(), 1);
    }

    #[test]
    fn ejection_time_grows_and_returns_on_a_sweep() {
        let t0 = Instant::now();
        let all = eps(1);
        let d = Detector::new(cfg(100), t0);
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        for _ in 0..3 {
            d.report(&all[0], &all, Outcome::Status(503), s(500));
        }
        assert!(all[0].is_ejected());
        // 4 s after 0.5 s = 4.5 s, returned by the sweep at 5 s.
        d.sweep(&all, s(4900));
        assert!(all[0].is_ejected());
        d.sweep(&all, s(5000));
        assert!(!all[0].is_ejected());
        // Second ejection right away: 8 s (backoff 2; one healthy sweep would not pass).
        for _ in 0..3 {
            d.report(&all[0], &all, Outcome::Timeout, s(5000));
        }
        assert!(all[0].is_ejected());
        d.sweep(&all, s(12_999));
        assert!(all[0].is_ejected());
        d.sweep(&all, s(13_000));
        assert!(!all[0].is_ejected());
        assert_eq!(all[0].ejections(), 2);
        // Long healthy: the backoff decays, the next ejection is 4 s again.
        for _ in 0..3 {
            d.report(&all[0], &all, Outcome::Status(502), s(60_000));
        }
        d.sweep(&all, s(64_000));
        assert!(!all[0].is_ejected());
    }

    #[test]
    fn gateway_errors_and_local_origin_split() {
        let t0 = Instant::now();
        let all = eps(1);
        let d = Detector::new(
            OutlierDetection {
                consecutive_5xx: None,
                consecutive_gateway_errors: Some(2),
                max_ejection_percent: 100,
                ..OutlierDetection::default()
            },
            t0,
        );
        d.report(&all[0], &all, Outcome::Status(500), t0);
        d.report(&all[0], &all, Outcome::Status(502), t0);
        assert!(!all[0].is_ejected(), "500 is not a gateway error");
        d.report(&all[0], &all, Outcome::Status(504), t0);
        assert!(all[0].is_ejected());

        let all = eps(1);
        let d = Detector::new(
            OutlierDetection {
                split_local_origin: true,
                consecutive_local_origin_failures: Some(2),
                max_ejection_percent: 100,
                ..OutlierDetection::default()
            },
            t0,
        );
        d.report(&all[0], &all, Outcome::ConnectFailed, t0);
        d.report(&all[0], &all, Outcome::ConnectSucceeded, t0);
        d.report(&all[0], &all, Outcome::ConnectFailed, t0);
        assert!(!all[0].is_ejected());
        d.report(&all[0], &all, Outcome::Timeout, t0);
        assert!(all[0].is_ejected());
    }

    #[test]
    fn panic_threshold() {
        let t0 = Instant::now();
        let all = eps(2);
        let d = Detector::new(
            OutlierDetection {
                min_health_percent: 60,
                max_ejection_percent: 100,
                consecutive_5xx: Some(1),
                ..OutlierDetection::default()
            },
            t0,
        );
        assert!(!d.panic(2));
        d.report(&all[0], &all, Outcome::Status(503), t0);
        assert!(d.panic(2));
    }
}
