//! Decision and tracking: the shift register between the camera and the ejectors.
//!
//! One [`Tracker`] is shared by the frame loop, the actuator thread and the input threads,
//! under one priority-inheriting mutex with a condition variable (`Tracking`). This module
//! holds that shared state and every step the frame loop takes on it; the locking is the same
//! at every step: take the lock, change the tracker, release it, then wake the other threads.
//!
//! Guarantees:
//! - an item enters the register before inference (free-run: at its frame; trigger modes: at
//!   its sensor edge), so a model that is slow or hangs still gets its item the fail-safe at
//!   the item's deadline, from the actuator thread;
//! - at most [`MAX_PENDING_TRIGGERS`] trigger edges wait for their frame; one more drops the
//!   oldest, and the drop is counted as an input error;
//! - the reject audit keeps at most [`MAX_AUDIT_ITEMS`] items, preallocated; items beyond it
//!   are decided and fired as usual and counted as left out;
//! - the lock inherits priority: a frame loop preempted while holding it runs on at the
//!   actuator's priority until it lets go, so the actuator waits microseconds, not a
//!   scheduling period; the lock never poisons.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::config::StationConfig;
use super::pi_lock::{PiCondvar, PiMutex};
use crate::core::belt::Belt;
use crate::core::calibration::travel_time_us;
use crate::core::decision::{Action, Decision};
use crate::core::latency::LatencyHistogram;
use crate::core::reject::{DecideError, EjectorConfig, Tracker, TrackerStats};
use crate::core::time::Instant;
use crate::hal::{Clock, OutputLine};
use crate::sim::clock::MonotonicClock;
use crate::sim::recording::Event;

/// Items whose fate a run keeps for its reject audit (missed and false rejects, timing
/// against true arrival). Preallocated; items beyond it are decided and fired as usual but
/// left out of the audit (`audit_truncated` in the summary).
pub const MAX_AUDIT_ITEMS: usize = 1 << 16;

/// Trigger edges waiting for their frame. More means the camera is far behind the sensor;
/// the oldest is then dropped (its item gets the fail-safe from the tracker) and counted.
pub const MAX_PENDING_TRIGGERS: usize = 64;

/// One item's fate, for the audit.
#[derive(Clone, Copy, Debug)]
pub(super) struct AuditItem {
    pub(super) id: u32,
    pub(super) captured: Instant,
    pub(super) action: Action,
}

/// One reject the tracker fired.
#[derive(Clone, Copy, Debug)]
pub(super) struct FiredItem {
    pub(super) id: u32,
    pub(super) ejector: u8,
    pub(super) merged: bool,
    pub(super) clipped: bool,
}

/// The reject audit: what the outputs actually did to each item, against its true arrival.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RejectAudit {
    /// Items audited.
    pub items: u64,
    /// Items decided reject whose true arrival no actual pulse on their ejector covered.
    pub missed_rejects: u64,
    /// Items decided accept whose true arrival an actual pulse covered, on any ejector.
    pub false_rejects: u64,
    /// |actual pulse centre − true arrival| of items alone in their pulse, µs: p50.
    pub timing_error_us_p50: Option<u64>,
    /// Same, p99.
    pub timing_error_us_p99: Option<u64>,
    /// Same, maximum.
    pub timing_error_us_max: Option<u64>,
    /// The belt speed the errors convert to mm with.
    pub belt_speed_mm_per_s: f32,
}

/// The state the frame loop, the actuator thread and the input threads share.
pub(super) struct Shared {
    pub(super) tracker: Tracker,
    /// Last fault, for the heartbeat.
    pub(super) fault_at: Option<Instant>,
    /// The frame loop ended: the actuator drains the belt, the trigger input stops.
    pub(super) stop: bool,
    /// The actuator ended: the encoder input stops (it counts on while the belt drains).
    pub(super) inputs_stop: bool,
    /// The actuator's drain time ran out with items still on the belt.
    pub(super) drain_timed_out: bool,
    pub(super) output_errors: u64,
    pub(super) input_errors: u64,
    pub(super) fired: Vec<FiredItem>,
    /// Trigger mode: items begun by the sensor (id, edge time), waiting for their frame.
    pub(super) triggered: heapless::Deque<(u32, Instant), MAX_PENDING_TRIGGERS>,
}

/// [`Shared`] under its mutex, with the condition variable that wakes the other threads. The
/// mutex inherits priority: the real-time actuator never waits on a preempted frame loop.
pub(super) type SharedState = Arc<(PiMutex<Shared>, PiCondvar)>;

impl Shared {
    /// Shared state around `tracker`, keeping up to `fired_capacity` fired items for the audit.
    pub(super) fn new_state(tracker: Tracker, fired_capacity: usize) -> SharedState {
        Arc::new((
            PiMutex::new(Shared {
                tracker,
                fault_at: None,
                stop: false,
                inputs_stop: false,
                drain_timed_out: false,
                output_errors: 0,
                input_errors: 0,
                fired: Vec::with_capacity(fired_capacity),
                triggered: heapless::Deque::new(),
            }),
            PiCondvar::new(),
        ))
    }
}

/// The belt model and the tracker of `cfg`, and the belt speed (`None`: an encoder).
pub(super) fn open_tracker(
    cfg: &StationConfig,
    ejectors: &[EjectorConfig],
    clock: MonotonicClock,
) -> Result<(Tracker, Option<f32>)> {
    let (belt, speed) = match (cfg.conveyor.belt_speed_mm_per_s, cfg.conveyor.encoder_counts_per_mm) {
        (Some(v), _) => (Belt::from_speed(v, clock.now()), Some(v)),
        (None, Some(cpm)) => (
            Belt::from_encoder(cpm).ok_or_else(|| anyhow!("{}: bad encoder_counts_per_mm", cfg.path.display()))?,
            None,
        ),
        (None, None) => anyhow::bail!("{}: `[conveyor]` has no speed or encoder", cfg.path.display()),
    };
    let tracker = Tracker::new(ejectors, cfg.failsafe_policy(), belt)
        .map_err(|e| anyhow!("{}: `[[ejectors]]`: {e:?}", cfg.path.display()))?;
    Ok((tracker, speed))
}

/// Items the audit keeps room for when a run expects `expected_items`: blind items (dropped
/// frames, outages) come on top of the frames.
pub(super) fn audit_capacity(expected_items: usize) -> usize {
    (expected_items + expected_items / 4 + 256).clamp(1, MAX_AUDIT_ITEMS)
}

/// What the frame loop asked the tracker to do with one decided item.
pub(super) struct Decided {
    /// The tracker's answer (`Err`: the item was unknown or already past its deadline).
    pub(super) result: Result<(), DecideError>,
    /// Output and input errors so far.
    pub(super) io_errors: u64,
    /// Whether the line-stop output was ever asserted.
    pub(super) line_stopped: bool,
}

/// The frame loop's handle on the shared state.
pub(super) struct Tracking {
    pub(super) state: SharedState,
}

impl Tracking {
    /// Software trigger: wait up to 100 ms for an edge. `None`: the lock is poisoned (stop);
    /// `Some(None)`: no edge yet.
    pub(super) fn wait_trigger(&self) -> Option<Option<(u32, Instant)>> {
        let (lock, cvar) = &*self.state;
        let g = lock.lock().ok()?;
        let (mut g, _) = cvar
            .wait_timeout_while(g, Duration::from_millis(100), |g| g.triggered.is_empty() && !g.stop)
            .ok()?;
        Some(g.triggered.pop_front())
    }

    /// The oldest trigger edge waiting for its frame.
    pub(super) fn pop_trigger(&self) -> Option<(u32, Instant)> {
        let (lock, _) = &*self.state;
        lock.lock().ok().and_then(|mut g| g.triggered.pop_front())
    }

    /// Note a fault at `at`, for the heartbeat.
    pub(super) fn note_fault(&self, at: Instant) {
        let (lock, _) = &*self.state;
        if let Ok(mut g) = lock.lock() {
            g.fault_at = Some(at);
        }
    }

    /// Free-run: item `id` enters the register at its frame. `false`: the register was full
    /// and the item merged into the newest one.
    pub(super) fn begin(&self, id: u32, captured: Instant) -> bool {
        let (lock, cvar) = &*self.state;
        let mut ok = true;
        if let Ok(mut g) = lock.lock() {
            if !g.tracker.begin(id, captured) {
                ok = false;
            }
        }
        cvar.notify_all();
        ok
    }

    /// An item the camera did not see: into the register (when `begin`; the trigger input
    /// already put it there otherwise) and decided with `decision` (the fail-safe) at once.
    /// `false`: the register was full.
    pub(super) fn decide_blind(&self, id: u32, at: Instant, begin: bool, decision: &Decision, now: Instant) -> bool {
        let (lock, cvar) = &*self.state;
        let mut ok = true;
        if let Ok(mut g) = lock.lock() {
            if begin && !g.tracker.begin(id, at) {
                ok = false;
            }
            let _ = g.tracker.decide(id, decision, now);
            g.fault_at = Some(now);
        }
        cvar.notify_all();
        ok
    }

    /// Hand item `id` its decision; note the fault for the heartbeat when `faulty`.
    pub(super) fn decide(&self, id: u32, decision: &Decision, now: Instant, faulty: bool) -> Decided {
        let (lock, cvar) = &*self.state;
        let mut io_errors = 0;
        let mut line_stopped = false;
        let result = match lock.lock() {
            Ok(mut g) => {
                let r = g.tracker.decide(id, decision, now);
                if faulty {
                    g.fault_at = Some(now);
                }
                io_errors = g.output_errors + g.input_errors;
                line_stopped = g.tracker.stats().line_stops > 0;
                r
            }
            Err(_) => Err(DecideError::UnknownItem),
        };
        cvar.notify_all();
        Decided {
            result,
            io_errors,
            line_stopped,
        }
    }

    /// Tell the other threads to finish (the actuator drains the items still on the belt).
    pub(super) fn stop(&self) {
        let (lock, cvar) = &*self.state;
        if let Ok(mut g) = lock.lock() {
            g.stop = true;
        }
        cvar.notify_all();
    }

    /// The actuator ended: stop the inputs too.
    pub(super) fn stop_inputs(&self) {
        let (lock, cvar) = &*self.state;
        if let Ok(mut g) = lock.lock() {
            g.inputs_stop = true;
        }
        cvar.notify_all();
    }

    /// Whether the actuator's drain time ran out with items still on the belt.
    pub(super) fn drain_timed_out(&self) -> bool {
        let (lock, _) = &*self.state;
        lock.lock().map(|g| g.drain_timed_out).unwrap_or(false)
    }

    /// After the threads ended: output errors, input errors, the tracker's totals and the
    /// fired items (`None`: the lock is poisoned).
    pub(super) fn totals(&self) -> Option<(u64, u64, TrackerStats, Vec<FiredItem>)> {
        let (lock, _) = &*self.state;
        let mut g = lock.lock().ok()?;
        Some((
            g.output_errors,
            g.input_errors,
            *g.tracker.stats(),
            std::mem::take(&mut g.fired),
        ))
    }
}

/// Audit what the outputs did against each item's true arrival at constant belt speed.
pub(super) fn audit(
    items: &[AuditItem],
    fired: &[FiredItem],
    timeline: &[Event],
    ejectors: &[EjectorConfig],
    speed_mm_per_s: f32,
) -> RejectAudit {
    // Actual pulses per ejector.
    let mut pulses: Vec<Vec<(u64, u64)>> = vec![Vec::new(); ejectors.len()];
    let mut on: Vec<Option<u64>> = vec![None; ejectors.len()];
    for e in timeline {
        if let OutputLine::Reject(n) = e.line {
            let n = n as usize;
            if n >= ejectors.len() {
                continue;
            }
            match (e.active, on[n]) {
                (true, None) => on[n] = Some(e.actual.us),
                (false, Some(s)) => {
                    pulses[n].push((s, e.actual.us));
                    on[n] = None;
                }
                _ => {}
            }
        }
    }
    let arrival = |it: &AuditItem, e: usize| -> u64 {
        let travel = travel_time_us(ejectors[e].ejector_distance_mm, speed_mm_per_s);
        it.captured.add_us(travel.unwrap_or(u64::MAX)).us
    };
    let covering = |e: usize, t: u64| pulses[e].iter().find(|(a, b)| *a <= t && t <= *b).copied();
    let by_id: HashMap<u32, FiredItem> = fired.iter().map(|f| (f.id, *f)).collect();
    let mut a = RejectAudit {
        items: items.len() as u64,
        belt_speed_mm_per_s: speed_mm_per_s,
        ..Default::default()
    };
    let mut h = LatencyHistogram::default();
    for it in items {
        match it.action {
            Action::Reject => {
                let Some(f) = by_id.get(&it.id) else {
                    a.missed_rejects += 1;
                    continue;
                };
                let e = f.ejector as usize;
                let t = arrival(it, e);
                match covering(e, t) {
                    None => a.missed_rejects += 1,
                    Some((on, off)) => {
                        if !f.merged && !f.clipped {
                            let centre = (on + off) / 2;
                            h.record(centre.abs_diff(t));
                        }
                    }
                }
            }
            Action::Accept => {
                if (0..ejectors.len()).any(|e| covering(e, arrival(it, e)).is_some()) {
                    a.false_rejects += 1;
                }
            }
        }
    }
    a.timing_error_us_p50 = h.percentile_us(50.0);
    a.timing_error_us_p99 = h.percentile_us(99.0);
    a.timing_error_us_max = (h.count() > 0).then(|| h.max_us());
    a
}

/// Edge scheduling error (actual − planned) of the reject lines in `timeline`: (p50, p99), µs.
pub(super) fn edge_error_us(timeline: &[Event]) -> (u64, u64) {
    let mut h = LatencyHistogram::default();
    for e in timeline.iter().filter(|e| matches!(e.line, OutputLine::Reject(_))) {
        h.record(e.actual.us_since(e.planned));
    }
    (h.percentile_us(50.0).unwrap_or(0), h.percentile_us(99.0).unwrap_or(0))
}
