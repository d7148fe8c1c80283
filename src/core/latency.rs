//! Fixed-size latency histogram: percentiles without storing samples or allocating.
//!
//! Log-linear buckets: exact below 64 µs, then 32 sub-buckets per power of two (≤ 3.2 %
//! relative error) up to 2^32 µs (71 minutes); larger values land in the last bucket.

const LINEAR: usize = 64;
const SUB: usize = 32;
const OCTAVES: usize = 27; // 2^6 .. 2^32 µs
/// Number of buckets; 928 × 4 bytes.
pub const BUCKETS: usize = LINEAR + OCTAVES * SUB;

/// Histogram of durations in microseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    counts: [u32; BUCKETS],
    total: u64,
    max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: [0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < LINEAR as u64 {
        return us as usize;
    }
    let log2 = 63 - us.leading_zeros() as usize; // >= 6
    let octave = log2 - 6;
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    let sub = ((us >> (log2 - 5)) as usize) - SUB; // top 6 bits, 32..63 → 0..31
    LINEAR + octave * SUB + sub
}

/// Upper bound (inclusive) of a bucket's range, in µs.
fn bucket_high(b: usize) -> u64 {
    if b < LINEAR {
        return b as u64;
    }
    let octave = (b - LINEAR) / SUB;
    let sub = (b - LINEAR) % SUB;
    let shift = octave + 1;
    (((SUB + sub + 1) as u64) << shift) - 1
}

impl LatencyHistogram {
    /// Record one duration.
    pub fn record(&mut self, us: u64) {
        let b = bucket_of(us);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.total += 1;
        if us > self.max_us {
            self.max_us = us;
        }
    }

    /// Number of recorded durations.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest recorded duration.
    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// The `p`-th percentile (0..=100), as the upper bound of its bucket capped at the
    /// maximum seen; `None` when empty.
    pub fn percentile_us(&self, p: f32) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        // rank = ceil(p / 100 × total), in integers (no float rounding functions in `core`).
        let p_milli = (p.clamp(0.0, 100.0) * 1000.0) as u64;
        let rank = ((p_milli * self.total).div_ceil(100_000)).max(1);
        let mut seen = 0u64;
        for (b, c) in self.counts.iter().enumerate() {
            seen += *c as u64;
            if seen >= rank {
                return Some(bucket_high(b).min(self.max_us));
            }
        }
        Some(self.max_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut prev = 0;
        for us in [
            0u64,
            1,
            63,
            64,
            65,
            100,
            1000,
            1023,
            1024,
            5000,
            123_456,
            10_000_000,
            1 << 31,
        ] {
            let b = bucket_of(us);
            assert!(b >= prev, "bucket order at {us}");
            assert!(bucket_high(b) >= us, "{us} above its bucket's high {}", bucket_high(b));
            if b > 0 {
                assert!(bucket_high(b - 1) < us, "{us} belongs to an earlier bucket");
            }
            prev = b;
        }
    }

    #[test]
    fn percentiles_within_bucket_precision() {
        let mut h = LatencyHistogram::default();
        for us in 1..=1000u64 {
            h.record(us);
        }
        let p50 = h.percentile_us(50.0).unwrap();
        let p99 = h.percentile_us(99.0).unwrap();
        assert!((500..=516).contains(&p50), "p50 {p50}");
        assert!((990..=1000).contains(&p99), "p99 {p99}");
        assert_eq!(h.percentile_us(100.0), Some(1000));
        assert_eq!(LatencyHistogram::default().percentile_us(50.0), None);
    }
}
