//! Reject timing: an item captured at `t` reaches the ejector `ejector_distance_mm`
//! downstream at `t + distance / belt speed`; the ejector pulse is centred on that arrival.
//!
//! Pulses wait in a fixed-capacity queue ([`MAX_PENDING_PULSES`]); adjacent rejects closer
//! than the minimum gap merge into one longer pulse, so pulses on one output never overlap.
//! The caller polls with the current time and drives the output line on each edge.

use super::calibration::travel_time_us;
use super::time::Instant;

/// Pulses waiting for their item to reach the ejector. Why 64: at 20 m/s with the ejector
/// 1 m downstream an item travels 50 ms; 64 pending pulses cover items spaced ≥ 0.8 ms apart,
/// faster than any camera here can inspect. Overflow is reported, never dropped silently.
pub const MAX_PENDING_PULSES: usize = 64;

/// One ejector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EjectorConfig {
    /// Distance from the camera's optical axis to the ejector along the belt.
    pub ejector_distance_mm: f32,
    /// How long the actuator is energised per item.
    pub pulse_width_us: u32,
    /// Shortest off-time between two pulses; closer rejects merge into one pulse.
    pub min_gap_us: u32,
}

/// A scheduled actuator pulse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Pulse {
    /// Line goes active.
    pub on: Instant,
    /// Line goes inactive.
    pub off: Instant,
    /// Items this pulse rejects (more than one after merging).
    pub items: u16,
}

/// A change the caller must apply to the output line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Edge {
    /// Energise the actuator.
    On,
    /// De-energise it.
    Off,
}

/// Why a reject could not be scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ScheduleError {
    /// [`MAX_PENDING_PULSES`] pulses already wait.
    Full,
    /// The item already passed the ejector: the decision came too late by this much.
    TooLate {
        /// How late, in µs, after the end of the item's pulse window.
        late_by_us: u64,
    },
    /// The belt speed is zero, negative or not a number.
    BeltStopped,
}

/// Result of scheduling one reject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Scheduled {
    /// When the item's centre reaches the ejector.
    pub arrival: Instant,
    /// True when the pulse had to start late (now was past its planned start), so it is
    /// shorter than configured.
    pub clipped: bool,
    /// True when it merged into the previous pulse.
    pub merged: bool,
}

/// Pulse queue for one ejector.
#[derive(Clone, Debug)]
pub struct RejectScheduler {
    cfg: EjectorConfig,
    belt_speed_mm_per_s: f32,
    pending: heapless::Deque<Pulse, MAX_PENDING_PULSES>,
    line_on: bool,
    /// End of the last pulse that has already finished (the minimum gap counts from it).
    last_off: Option<Instant>,
}

impl RejectScheduler {
    /// A scheduler for one ejector on a belt moving at `belt_speed_mm_per_s`.
    pub fn new(cfg: EjectorConfig, belt_speed_mm_per_s: f32) -> Self {
        RejectScheduler {
            cfg,
            belt_speed_mm_per_s,
            pending: heapless::Deque::new(),
            line_on: false,
            last_off: None,
        }
    }

    /// Change the belt speed for items scheduled from now on.
    pub fn set_belt_speed(&mut self, belt_speed_mm_per_s: f32) {
        self.belt_speed_mm_per_s = belt_speed_mm_per_s;
    }

    /// Time from capture to arrival at the ejector at the current speed.
    pub fn travel_us(&self) -> Option<u64> {
        travel_time_us(self.cfg.ejector_distance_mm, self.belt_speed_mm_per_s)
    }

    /// Pulses waiting or active.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Schedule the reject of an item captured at `captured`, decided at `now`.
    pub fn schedule(&mut self, captured: Instant, now: Instant) -> Result<Scheduled, ScheduleError> {
        let travel = self.travel_us().ok_or(ScheduleError::BeltStopped)?;
        let arrival = captured.add_us(travel);
        let half = (self.cfg.pulse_width_us / 2) as u64;
        let planned_on = Instant::from_us(arrival.us.saturating_sub(half));
        let off = planned_on.add_us(self.cfg.pulse_width_us as u64);
        if off <= now {
            return Err(ScheduleError::TooLate {
                late_by_us: now.us_since(off),
            });
        }
        // Earliest start: now, and the minimum off-time after the last finished pulse.
        let mut earliest = now;
        if self.pending.is_empty() {
            if let Some(last) = self.last_off {
                earliest = earliest.max(last.add_us(self.cfg.min_gap_us as u64));
            }
        }
        let clipped = planned_on < earliest;
        let on = if clipped { earliest } else { planned_on };
        if on >= off {
            return Err(ScheduleError::TooLate {
                late_by_us: on.us_since(off),
            });
        }
        if let Some(last) = self.pending.back_mut() {
            if on.us <= last.off.us.saturating_add(self.cfg.min_gap_us as u64) {
                if off > last.off {
                    last.off = off;
                }
                last.items = last.items.saturating_add(1);
                return Ok(Scheduled {
                    arrival,
                    clipped,
                    merged: true,
                });
            }
        }
        self.pending
            .push_back(Pulse { on, off, items: 1 })
            .map_err(|_| ScheduleError::Full)?;
        Ok(Scheduled {
            arrival,
            clipped,
            merged: false,
        })
    }

    /// The next time [`RejectScheduler::poll`] has something to do.
    pub fn next_event(&self) -> Option<Instant> {
        let p = self.pending.front()?;
        Some(if self.line_on { p.off } else { p.on })
    }

    /// Advance to `now`; returns the edge to apply, if one is due. Call until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<(Edge, Pulse)> {
        let p = *self.pending.front()?;
        if !self.line_on && p.on <= now {
            self.line_on = true;
            return Some((Edge::On, p));
        }
        if self.line_on && p.off <= now {
            self.line_on = false;
            self.pending.pop_front();
            self.last_off = Some(p.off);
            return Some((Edge::Off, p));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched() -> RejectScheduler {
        let cfg = EjectorConfig {
            ejector_distance_mm: 500.0,
            pulse_width_us: 20_000,
            min_gap_us: 10_000,
        };
        RejectScheduler::new(cfg, 1000.0)
    }

    #[test]
    fn pulse_is_centred_on_arrival() {
        let mut s = sched();
        let r = s
            .schedule(Instant::from_us(1_000_000), Instant::from_us(1_050_000))
            .unwrap();
        assert_eq!(r.arrival, Instant::from_us(1_500_000));
        assert_eq!(s.next_event(), Some(Instant::from_us(1_490_000)));
        assert_eq!(s.poll(Instant::from_us(1_489_999)), None);
        assert_eq!(s.poll(Instant::from_us(1_490_000)).map(|e| e.0), Some(Edge::On));
        assert_eq!(s.next_event(), Some(Instant::from_us(1_510_000)));
        assert_eq!(s.poll(Instant::from_us(1_510_000)).map(|e| e.0), Some(Edge::Off));
        assert_eq!(s.poll(Instant::from_us(9_000_000)), None);
    }

    #[test]
    fn close_rejects_merge_and_far_ones_do_not() {
        let mut s = sched();
        let now = Instant::from_us(0);
        assert!(!s.schedule(Instant::from_us(0), now).unwrap().merged);
        // 25 ms later: planned on at 490+25 = 515 ms, previous off at 510 ms, gap 5 ms < 10 ms.
        assert!(s.schedule(Instant::from_us(25_000), now).unwrap().merged);
        // 100 ms later: separate pulse.
        assert!(!s.schedule(Instant::from_us(125_000), now).unwrap().merged);
        assert_eq!(s.pending(), 2);
    }

    #[test]
    fn late_decisions_are_reported_not_dropped() {
        let mut s = sched();
        let e = s.schedule(Instant::from_us(0), Instant::from_us(600_000)).unwrap_err();
        assert_eq!(e, ScheduleError::TooLate { late_by_us: 90_000 });
        let r = s.schedule(Instant::from_us(0), Instant::from_us(495_000)).unwrap();
        assert!(r.clipped);
        s.set_belt_speed(0.0);
        assert_eq!(
            s.schedule(Instant::from_us(0), Instant::from_us(0)),
            Err(ScheduleError::BeltStopped)
        );
    }

    #[test]
    fn overflow_is_an_error() {
        let cfg = EjectorConfig {
            ejector_distance_mm: 500.0,
            pulse_width_us: 1000,
            min_gap_us: 0,
        };
        let mut s = RejectScheduler::new(cfg, 1000.0);
        for i in 0..MAX_PENDING_PULSES as u64 {
            s.schedule(Instant::from_us(i * 10_000), Instant::from_us(0)).unwrap();
        }
        assert_eq!(
            s.schedule(Instant::from_us(10_000_000), Instant::from_us(0)),
            Err(ScheduleError::Full)
        );
    }
}
