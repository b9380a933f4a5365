//! Adaptive idle spinning: a worker that is nearly saturated waits a few microseconds on its
//! core before it sleeps in `epoll_wait`, so the events of the next moment are handled
//! together.
//!
//! Why: a worker that sleeps the instant it runs out of work is woken again a few µs later,
//! under load, for one or two events; it answers them and sleeps again. Each answer then wakes
//! the client and the upstream for one message each, and when they share a machine those
//! wake-ups are what limits the request rate (benches/RESULTS.md item 25: through Egret the
//! load generator's core spent 23.9 µs per request, through HAProxy, which is busier and
//! answers in bursts, 22.5). Spinning ~10 µs first lets events pile up, so each wake-up of the
//! worker, the client and the upstream carries several messages (item 27). Seastar spins
//! before sleeping by default and HAProxy's `busy-polling` always does; here it happens only
//! while the worker's own work (thread CPU time, spins excluded) fills at least ¾ of the last
//! millisecond or more. A lightly loaded worker — one connection, or passthrough streams bound
//! by their endpoints, where spinning cost 20–50 % more CPU per MB and gained nothing — sleeps
//! at once, and an idle one costs nothing. Thread CPU time rather than wall time, so a worker
//! that shares its core with other busy processes (preempted, not busy) does not spin.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// How long a measurement window lasts at least: the decision is re-taken at the first wake-up
/// after it (about 1,000 reads of the thread's CPU clock per second under load).
const WINDOW: Duration = Duration::from_millis(1);

/// The decision, one per worker thread: whether to spin before parking, taken from how busy the
/// worker was in the last window.
#[derive(Debug)]
pub struct IdleSpin {
    spin: Duration,
    spinning: bool,
    window_start: Instant,
    /// The thread's CPU time at `window_start`.
    window_cpu: Duration,
    /// Time spent spinning since `window_start` (not work).
    spun: Duration,
}

impl IdleSpin {
    pub fn new(spin: Duration, now: Instant, cpu: Duration) -> IdleSpin {
        IdleSpin {
            spin,
            spinning: false,
            window_start: now,
            window_cpu: cpu,
            spun: Duration::ZERO,
        }
    }

    /// The worker ran out of work: how long to spin before sleeping.
    pub fn spin_before_park(&self) -> Duration {
        if self.spinning {
            self.spin
        } else {
            Duration::ZERO
        }
    }

    /// The worker spun for `spun` before sleeping.
    pub fn spun(&mut self, spun: Duration) {
        self.spun += spun;
    }

    /// The worker woke at `now`. Once a window has passed, `cpu()` (the thread's CPU time) says
    /// how much of it was work, and that decides whether to spin in the next one.
    pub fn woke(&mut self, now: Instant, cpu: impl FnOnce() -> Duration) {
        let wall = now.saturating_duration_since(self.window_start);
        if wall < WINDOW {
            return;
        }
        let cpu = cpu();
        let work = cpu
            .saturating_sub(self.window_cpu)
            .saturating_sub(self.spun);
        self.spinning = work.as_nanos() * 4 >= wall.as_nanos() * 3;
        self.window_start = now;
        self.window_cpu = cpu;
        self.spun = Duration::ZERO;
    }
}

/// Makes every worker built by `builder` spin up to `spin` before it sleeps while it is nearly
/// saturated (see the module comment). `spin` zero, or a system without a per-thread CPU
/// clock, leaves the builder as it is.
pub fn install(builder: &mut tokio::runtime::Builder, spin: Duration) {
    if spin.is_zero() || thread_cpu_time().is_none() {
        return;
    }
    thread_local! {
        static STATE: RefCell<Option<IdleSpin>> = const { RefCell::new(None) };
    }
    builder.on_thread_park(move || {
        STATE.with(|state| {
            let mut state = state.borrow_mut();
            let state = state.get_or_insert_with(|| {
                IdleSpin::new(spin, Instant::now(), thread_cpu_time().unwrap_or_default())
            });
            let wait = state.spin_before_park();
            if wait.is_zero() {
                return;
            }
            let start = Instant::now();
            let mut spun = Duration::ZERO;
            while spun < wait {
                std::hint::spin_loop();
                spun = start.elapsed();
            }
            state.spun(spun);
        })
    });
    builder.on_thread_unpark(|| {
        STATE.with(|state| {
            if let Some(state) = state.borrow_mut().as_mut() {
                state.woke(Instant::now(), || thread_cpu_time().unwrap_or_default());
            }
        })
    });
}

/// CPU time used by the calling thread (`CLOCK_THREAD_CPUTIME_ID`); None where there is none.
#[cfg(target_os = "linux")]
#[expect(
    unsafe_code,
    reason = "std has no per-thread CPU clock; clock_gettime is FFI"
)]
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPIN: Duration = Duration::from_micros(10);

    /// Drives `s` through `windows` windows of 1 ms wall time in which the worker works `work`
    /// (thread CPU time) plus whatever it spins; returns the spin chosen at the end.
    fn run(
        s: &mut IdleSpin,
        t: &mut Instant,
        cpu: &mut Duration,
        windows: u32,
        work: Duration,
    ) -> Duration {
        for _ in 0..windows {
            // Four parks per window.
            for _ in 0..4 {
                let spin = s.spin_before_park();
                s.spun(spin);
                *cpu += work / 4 + spin;
                *t += WINDOW / 4;
                let now_cpu = *cpu;
                s.woke(*t, || now_cpu);
            }
        }
        s.spin_before_park()
    }

    #[test]
    fn spins_only_while_the_worker_is_at_least_three_quarters_busy() {
        let (mut t, mut cpu) = (Instant::now(), Duration::ZERO);
        let mut s = IdleSpin::new(SPIN, t, cpu);
        assert_eq!(
            s.spin_before_park(),
            Duration::ZERO,
            "a new worker sleeps at once"
        );
        let ms = |f: f64| Duration::from_secs_f64(f / 1000.0);
        // 90 % busy (64 keep-alive connections): spins.
        assert_eq!(run(&mut s, &mut t, &mut cpu, 3, ms(0.9)), SPIN);
        // Still 80 % busy with the spins not counted as work: keeps spinning.
        assert_eq!(run(&mut s, &mut t, &mut cpu, 5, ms(0.8)), SPIN);
        // 40 % busy (one connection, or passthrough bound by its endpoints): stops.
        assert_eq!(run(&mut s, &mut t, &mut cpu, 1, ms(0.4)), Duration::ZERO);
        assert_eq!(run(&mut s, &mut t, &mut cpu, 5, ms(0.7)), Duration::ZERO);
    }

    #[test]
    fn a_worker_preempted_rather_than_busy_does_not_spin() {
        let (mut t, cpu) = (Instant::now(), Duration::ZERO);
        let mut s = IdleSpin::new(SPIN, t, cpu);
        t += WINDOW;
        s.woke(t, || WINDOW);
        assert_eq!(s.spin_before_park(), SPIN);
        // Woken after 2 ms of wall time of which it ran 0.5 ms (the rest: other processes).
        t += WINDOW * 2;
        s.woke(t, || WINDOW + Duration::from_micros(500));
        assert_eq!(s.spin_before_park(), Duration::ZERO);
    }

    #[test]
    fn the_decision_waits_for_a_whole_window() {
        let (mut t, cpu) = (Instant::now(), Duration::ZERO);
        let mut s = IdleSpin::new(SPIN, t, cpu);
        t += WINDOW / 2;
        s.woke(t, || panic!("the CPU clock is read once per window"));
        t += WINDOW / 2;
        s.woke(t, || WINDOW);
        assert_eq!(s.spin_before_park(), SPIN);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_platform_has_a_thread_cpu_clock_that_moves() {
        let before = thread_cpu_time().expect("CLOCK_THREAD_CPUTIME_ID");
        let mut x = 0u64;
        while thread_cpu_time().unwrap() == before {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_time().unwrap() > before);
    }
}
