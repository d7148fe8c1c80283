//! Monotonic time in microseconds, passed into the core by its callers.

/// A point on a monotonic clock, in microseconds since an arbitrary origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Instant {
    /// Microseconds since the clock's origin.
    pub us: u64,
}

impl Instant {
    /// The instant `us` microseconds after the origin.
    pub const fn from_us(us: u64) -> Self {
        Instant { us }
    }

    /// This instant plus `us` microseconds (saturating).
    pub const fn add_us(self, us: u64) -> Self {
        Instant {
            us: self.us.saturating_add(us),
        }
    }

    /// Microseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn us_since(self, earlier: Instant) -> u64 {
        self.us.saturating_sub(earlier.us)
    }
}
