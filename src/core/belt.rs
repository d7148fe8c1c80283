//! Where the belt is: belt position as a function of time, from a configured speed or from an
//! encoder.
//!
//! Positions are nanometres of belt travel (`i64`: ±9 200 km) and times are microseconds, so
//! one convenient identity holds everywhere: **1 nm/µs = 1 mm/s**, and a speed in mm/s times a
//! duration in µs is a distance in nm.
//!
//! - *Speed mode*: the belt moves at the configured speed; a speed change (from a drive's
//!   feedback, or an operator) is applied from the instant it is reported, so the position
//!   stays continuous.
//! - *Encoder mode*: each encoder edge (with its kernel timestamp) fixes the position exactly;
//!   between edges the position is extrapolated at the measured speed, but never past the next
//!   count, and the speed used for prediction decays when edges stop coming — a stopped belt
//!   holds items where they are, as a PLC shift register does. A count that goes down (a
//!   quadrature encoder on a belt running backwards) moves the position, and so every item on
//!   the belt, back.

use super::num::{ceil_i64, round_i64};
use super::time::Instant;

/// Encoder edges kept for the speed estimate. Why 16: at 10 counts/mm and 1 m/s that is a
/// 1.6 ms window, long enough to average out edge jitter of tens of µs and short enough to
/// follow a belt accelerating at several m/s².
pub const ENCODER_WINDOW: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum Mode {
    Speed,
    Encoder { nm_per_count: f64 },
}

/// The belt's position model.
#[derive(Clone, Debug)]
pub struct Belt {
    mode: Mode,
    /// Time of the last reference point.
    t_ref: Instant,
    /// Position at `t_ref`.
    pos_ref_nm: i64,
    /// Speed in mm/s (= nm/µs) from `t_ref` on (speed mode) or as estimated (encoder mode).
    speed_mm_per_s: f64,
    /// Encoder mode: recent (time, count) edges, oldest first.
    edges: heapless::Deque<(Instant, i64), ENCODER_WINDOW>,
}

impl Belt {
    /// A belt moving at `belt_speed_mm_per_s` from `now`, at position 0.
    pub fn from_speed(belt_speed_mm_per_s: f32, now: Instant) -> Self {
        Belt {
            mode: Mode::Speed,
            t_ref: now,
            pos_ref_nm: 0,
            speed_mm_per_s: sanitize(belt_speed_mm_per_s as f64),
            edges: heapless::Deque::new(),
        }
    }

    /// A belt followed by an encoder with `encoder_counts_per_mm`; position 0 at count 0, and
    /// no speed known until edges arrive. `None` for a non-positive or non-finite count rate.
    pub fn from_encoder(encoder_counts_per_mm: f32) -> Option<Self> {
        let c = encoder_counts_per_mm as f64;
        if !(c > 0.0 && c.is_finite()) {
            return None;
        }
        Some(Belt {
            mode: Mode::Encoder {
                nm_per_count: 1_000_000.0 / c,
            },
            t_ref: Instant::from_us(0),
            pos_ref_nm: 0,
            speed_mm_per_s: 0.0,
            edges: heapless::Deque::new(),
        })
    }

    /// True when an encoder drives the position.
    pub fn is_encoder(&self) -> bool {
        matches!(self.mode, Mode::Encoder { .. })
    }

    /// Speed mode: the belt runs at `belt_speed_mm_per_s` from `now` on (ignored in encoder
    /// mode, where the encoder says how fast the belt goes).
    pub fn set_speed(&mut self, now: Instant, belt_speed_mm_per_s: f32) {
        if self.is_encoder() {
            return;
        }
        self.pos_ref_nm = self.position_nm(now);
        self.t_ref = now;
        self.speed_mm_per_s = sanitize(belt_speed_mm_per_s as f64);
    }

    /// Encoder mode: the counter read `count` at `at` (the edge's kernel timestamp). Edges must
    /// come in time order; an older edge than the last one is ignored.
    pub fn on_encoder(&mut self, count: i64, at: Instant) {
        let Mode::Encoder { nm_per_count } = self.mode else {
            return;
        };
        if let Some(&(t_last, _)) = self.edges.back() {
            if at < t_last {
                return;
            }
        }
        if self.edges.is_full() {
            self.edges.pop_front();
        }
        // Cannot fail: one slot was just made free.
        let _ = self.edges.push_back((at, count));
        self.t_ref = at;
        self.pos_ref_nm = round_i64(count as f64 * nm_per_count);
        if let (Some(&(t0, c0)), true) = (self.edges.front(), self.edges.len() >= 2) {
            let dt = at.us.saturating_sub(t0.us);
            if dt > 0 {
                self.speed_mm_per_s = (count - c0) as f64 * nm_per_count / dt as f64;
            }
        }
    }

    /// Encoder mode: the time of the last count (`None` before the first, and in speed mode).
    pub fn last_count_at(&self) -> Option<Instant> {
        self.edges.back().map(|&(at, _)| at)
    }

    /// The speed used for prediction at `now`, in mm/s. In encoder mode it is the measured
    /// speed, but no more than one count per time since the last edge: when edges stop, it
    /// falls towards zero.
    pub fn speed_mm_per_s(&self, now: Instant) -> f64 {
        match self.mode {
            Mode::Speed => self.speed_mm_per_s,
            Mode::Encoder { nm_per_count } => {
                if self.edges.len() < 2 {
                    return 0.0;
                }
                let since = now.us.saturating_sub(self.t_ref.us) as f64;
                if since > 0.0 {
                    self.speed_mm_per_s.min(nm_per_count / since)
                } else {
                    self.speed_mm_per_s
                }
            }
        }
    }

    /// Belt position at `now`, in nm. `now` may lie a little before the last reference (a
    /// capture timestamp taken before a speed report): the position is then extrapolated back.
    pub fn position_nm(&self, now: Instant) -> i64 {
        let dt = now.us as i64 - self.t_ref.us as i64;
        match self.mode {
            Mode::Speed => self.pos_ref_nm + round_i64(self.speed_mm_per_s * dt as f64),
            Mode::Encoder { nm_per_count } => {
                let ahead = (self.speed_mm_per_s.max(0.0) * dt.max(0) as f64).min(nm_per_count - 1.0);
                let back = if dt < 0 { self.speed_mm_per_s * dt as f64 } else { 0.0 };
                self.pos_ref_nm + round_i64(ahead.max(0.0) + back)
            }
        }
    }

    /// Microseconds from `now` until the belt reaches `target_nm` at the predicted speed:
    /// `Some(0)` if it is already there, `None` if the belt is stopped or running backwards.
    pub fn time_to_reach_us(&self, target_nm: i64, now: Instant) -> Option<u64> {
        let pos = self.position_nm(now);
        if pos >= target_nm {
            return Some(0);
        }
        let v = self.speed_mm_per_s(now);
        if v.is_nan() || v <= 0.0 {
            return None;
        }
        let us = (target_nm - pos) as f64 / v;
        if us.is_finite() && us < (u64::MAX / 4) as f64 {
            Some(ceil_i64(us) as u64)
        } else {
            None
        }
    }
}

fn sanitize(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// Millimetres to nanometres.
pub fn mm_to_nm(mm: f32) -> i64 {
    round_i64(mm as f64 * 1_000_000.0)
}

/// Nanometres to millimetres.
pub fn nm_to_mm(nm: i64) -> f64 {
    nm as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(us: u64) -> Instant {
        Instant::from_us(us)
    }

    #[test]
    fn speed_mode_integrates_speed_changes() {
        let mut b = Belt::from_speed(1000.0, t(0));
        assert_eq!(b.position_nm(t(1_000_000)), mm_to_nm(1000.0));
        b.set_speed(t(1_000_000), 500.0);
        assert_eq!(b.position_nm(t(2_000_000)), mm_to_nm(1500.0));
        assert_eq!(b.time_to_reach_us(mm_to_nm(1750.0), t(2_000_000)), Some(500_000));
        b.set_speed(t(2_000_000), 0.0);
        assert_eq!(b.time_to_reach_us(mm_to_nm(1750.0), t(3_000_000)), None);
        assert_eq!(b.time_to_reach_us(mm_to_nm(10.0), t(3_000_000)), Some(0));
    }

    #[test]
    fn encoder_mode_measures_speed_and_never_runs_past_the_next_count() {
        // 10 counts/mm = 100 µm per count; belt at 500 mm/s = one count every 200 µs.
        let mut b = Belt::from_encoder(10.0).unwrap();
        assert_eq!(b.speed_mm_per_s(t(0)), 0.0);
        for c in 0..20 {
            b.on_encoder(c, t(1_000 + c as u64 * 200));
        }
        let last = t(1_000 + 19 * 200);
        assert!((b.speed_mm_per_s(last) - 500.0).abs() < 1e-9);
        assert_eq!(b.position_nm(last), 19 * 100_000);
        // 100 µs later: half a count further.
        assert_eq!(b.position_nm(last.add_us(100)), 19 * 100_000 + 50_000);
        // The belt stops: the position never passes the next count, and the speed decays.
        assert!(b.position_nm(last.add_us(10_000)) < 20 * 100_000);
        assert!(b.speed_mm_per_s(last.add_us(10_000)) <= 10.0 + 1e-9);
        // An edge from the past is ignored.
        b.on_encoder(5, t(10));
        assert_eq!(b.position_nm(last), 19 * 100_000);
        assert!(Belt::from_encoder(0.0).is_none());
    }
}
