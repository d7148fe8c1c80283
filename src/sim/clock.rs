//! The process's monotonic clock as a [`Clock`].

use crate::core::time::Instant;
use crate::hal::Clock;

/// `std::time::Instant` measured from when the clock was made.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: std::time::Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock {
            origin: std::time::Instant::now(),
        }
    }
}

impl MonotonicClock {
    /// Sleep until `at` (returns at once if it has passed).
    pub fn sleep_until(&self, at: Instant) {
        let now = self.now();
        if at > now {
            std::thread::sleep(std::time::Duration::from_micros(at.us - now.us));
        }
    }

    /// The `std` instant matching `at`.
    pub fn to_std(&self, at: Instant) -> std::time::Instant {
        self.origin + std::time::Duration::from_micros(at.us)
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::from_us(self.origin.elapsed().as_micros() as u64)
    }
}
