//! The process's monotonic clock as a [`Clock`]: `CLOCK_MONOTONIC`, the clock the kernel
//! stamps GPIO edge events and V4L2 buffers with, so their timestamps convert exactly.

use crate::core::time::Instant;
use crate::hal::Clock;

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_MONOTONIC` measured from when the clock was made.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin_ns: u64,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock {
            origin_ns: monotonic_ns(),
        }
    }
}

impl MonotonicClock {
    /// Sleep until `at` (returns at once if it has passed): `clock_nanosleep` to the absolute
    /// time, so time lost before the call is not slept again.
    pub fn sleep_until(&self, at: Instant) {
        let ns = self.origin_ns + at.us * 1000;
        let ts = libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        };
        loop {
            // SAFETY: a valid timespec; no remainder is asked for with TIMER_ABSTIME.
            let rc =
                unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) };
            if rc != libc::EINTR {
                return;
            }
        }
    }

    /// Spin until `at` without sleeping: for the last microseconds before an edge, which a
    /// sleep would overshoot by the kernel's wake-up latency.
    pub fn spin_until(&self, at: Instant) {
        while self.now() < at {
            std::hint::spin_loop();
        }
    }

    /// A kernel `CLOCK_MONOTONIC` timestamp (GPIO edge events, V4L2 buffers) on this clock;
    /// times before the clock was made map to its origin.
    pub fn from_kernel_ns(&self, ns: u64) -> Instant {
        Instant::from_us(ns.saturating_sub(self.origin_ns) / 1000)
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::from_us(monotonic_ns().saturating_sub(self.origin_ns) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_timestamps_map_onto_the_clock() {
        let c = MonotonicClock::default();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let now = c.now();
        let k = c.from_kernel_ns(monotonic_ns());
        assert!(now.us >= 2000 && k >= now && k.us - now.us < 100_000);
        assert_eq!(c.from_kernel_ns(0), Instant::from_us(0));
    }
}
