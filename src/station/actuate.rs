//! Actuation: the thread that owns the outputs and fires the rejects.
//!
//! The actuator thread owns the [`Tracker`] and the outputs: it takes the edges and commands
//! the other threads queued ([`super::tracking`]), polls the tracker, writes its edges to the
//! output backend and sleeps until the next edge or heartbeat.
//!
//! Guarantees:
//! - the actuator, not the frame loop, applies the deadlines: an item whose decision has not
//!   come in time gets the configured fail-safe even while the frame loop is stuck in a model;
//! - the heartbeat toggles only while the station is healthy: no line stop, no fault within
//!   `outputs.fault_hold_ms`, not stopping; it is left inactive when the thread ends;
//! - a failed output write is counted (and held as a fault), never fatal;
//! - it takes no lock and waits for no other thread: what the others send comes through
//!   single-producer queues and atomics, so a GPIO ioctl never holds anyone up and no one
//!   holds up a pulse;
//! - after the frame loop stops, items already on the belt still reach their ejectors: the
//!   thread drains until the tracker is idle or the farthest ejector's travel time (plus 1 s)
//!   has passed; the heartbeat stays inactive from the stop on (the PLC sees the fault), and
//!   when the drain time runs out the reject lines are released and the timeout is noted;
//! - with an encoder, predictions are redone at least every millisecond; in speed mode the
//!   thread sleeps at most one second;
//! - it sleeps to each edge's absolute time (`clock_nanosleep`, `TIMER_ABSTIME`) and spins
//!   only the last `realtime.spin_us` before it; it runs with the `[realtime]` priority and
//!   CPUs when the process may ([`super::realtime`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle, Thread};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::config::{self, StationConfig};
use super::realtime::{setup_thread, RealtimeReport};
use super::tracking::{ActuatorEnds, FiredItem, Signals};
use crate::core::reject::{EjectorConfig, Output, TrackEvent, Tracker, MAX_EJECTORS, MAX_ITEMS_IN_FLIGHT};
use crate::core::time::Instant;
use crate::drivers::gpio::{GpioOutput, LineSpec};
use crate::hal::{Clock, OutputError, OutputLine, RejectOutput};
use crate::sim::clock::MonotonicClock;
use crate::sim::recording::{Event, RecordingOutput, MAX_TIMELINE_EVENTS};

/// Edges one poll of the tracker can emit: an on and an off per item in flight when the
/// actuator woke late, and the line stop. Preallocated (should a poll ever emit more, the
/// buffer grows: no edge is dropped).
const MAX_EDGES_PER_POLL: usize = 2 * MAX_ITEMS_IN_FLIGHT + 2 * MAX_EJECTORS + 1;

/// The output backend chosen in the config.
#[derive(Debug)]
pub(super) enum Outputs {
    Recording(RecordingOutput),
    Gpio(GpioOutput),
}

impl Outputs {
    pub(super) fn events(&self) -> &[Event] {
        match self {
            Outputs::Recording(r) => r.events(),
            Outputs::Gpio(g) => g.events(),
        }
    }
}

impl RejectOutput for Outputs {
    fn set(&mut self, line: OutputLine, active: bool, at: Instant) -> Result<(), OutputError> {
        match self {
            Outputs::Recording(r) => r.set(line, active, at),
            Outputs::Gpio(g) => g.set(line, active, at),
        }
    }
}

/// The GPIO output lines of a `gpio` backend: each ejector's, the heartbeat, the line stop.
pub fn output_lines(cfg: &StationConfig) -> Result<Vec<(OutputLine, LineSpec)>> {
    let chip = cfg
        .outputs
        .gpio_chip
        .as_ref()
        .ok_or_else(|| anyhow!("{}: field `outputs.gpio_chip` is missing", cfg.path.display()))?;
    let spec = |l: &config::GpioLineSection| LineSpec {
        chip: chip.clone(),
        line: l.line,
        active_low: l.active_low,
    };
    let mut lines = Vec::new();
    for (i, e) in cfg.ejectors.iter().enumerate() {
        if let Some(g) = &e.gpio {
            lines.push((OutputLine::Reject(i as u8), spec(g)));
        }
    }
    if let Some(g) = &cfg.outputs.heartbeat {
        lines.push((OutputLine::Heartbeat, spec(g)));
    }
    if let Some(g) = &cfg.outputs.line_stop {
        lines.push((OutputLine::LineStop, spec(g)));
    }
    Ok(lines)
}

pub(super) fn open_outputs(cfg: &StationConfig, clock: MonotonicClock) -> Result<Outputs> {
    if cfg.outputs.backend != "gpio" {
        return Ok(Outputs::Recording(RecordingOutput::new(clock, MAX_TIMELINE_EVENTS)));
    }
    let lines = output_lines(cfg)?;
    Ok(Outputs::Gpio(
        GpioOutput::open(&lines, clock, MAX_TIMELINE_EVENTS)
            .with_context(|| format!("{}: `[outputs]`", cfg.path.display()))?,
    ))
}

fn line_of(o: Output) -> OutputLine {
    match o {
        Output::Ejector(n) => OutputLine::Reject(n),
        Output::LineStop => OutputLine::LineStop,
    }
}

pub(super) struct ActuatorTiming {
    pub(super) heartbeat_us: u64,
    pub(super) fault_hold_us: u64,
    /// Longest sleep: with an encoder, predictions are redone at least this often.
    pub(super) max_sleep_us: u64,
    /// After the frame loop stops, how long items may still take to reach their ejectors.
    pub(super) drain_us: u64,
    /// Reject lines (one per ejector), released when the drain time runs out.
    pub(super) reject_lines: u8,
    /// The last stretch before an edge is spun, not slept, µs.
    pub(super) spin_us: u64,
}

/// Within this of its next edge the actuator stops waiting for news from the other threads
/// and sleeps to the edge's absolute time (then spins the last `spin_us`). Longer than a
/// thread's wake-up under load, so that last sleep starts in time; far shorter than any
/// item's travel, so no decision that comes meanwhile has an edge sooner.
const APPROACH_US: u64 = 2_000;

/// The actuator's timing for `cfg` (`speed`: the belt speed, `None` with an encoder).
pub(super) fn timing_of(cfg: &StationConfig, ejectors: &[EjectorConfig], speed: Option<f32>) -> ActuatorTiming {
    let farthest = ejectors.iter().map(|e| e.ejector_distance_mm).fold(0.0f32, f32::max);
    ActuatorTiming {
        heartbeat_us: cfg.outputs.heartbeat_period_ms.max(1) as u64 * 1000,
        fault_hold_us: cfg.outputs.fault_hold_ms as u64 * 1000,
        max_sleep_us: if speed.is_some() { 1_000_000 } else { 1_000 },
        drain_us: match speed {
            Some(v) => (farthest as f64 / v as f64 * 1e6) as u64 + 1_000_000,
            None => 10_000_000,
        },
        reject_lines: ejectors.len() as u8,
        // With the co-processor the station's own edges drive no line: nothing to spin for.
        spin_us: match cfg.outputs.backend.as_str() {
            "coprocessor" => 0,
            _ => cfg.realtime.spin_us as u64,
        },
    }
}

/// The actuator thread's share of a run: the register it owns and its queue ends.
pub(super) struct ActuatorParts<'q> {
    pub(super) tracker: Tracker,
    pub(super) fired_capacity: usize,
    pub(super) ends: ActuatorEnds<'q>,
    pub(super) signals: &'q Signals,
    /// The frame loop's thread, woken when its commands are answered.
    pub(super) frame: Thread,
}

/// Start the actuator thread in `scope` on `out` (see [`open_outputs`]); it hands back the
/// outputs, the register and the fired items when it ends.
pub(super) fn spawn<'scope, 'q: 'scope>(
    scope: &'scope Scope<'scope, '_>,
    cfg: &StationConfig,
    parts: ActuatorParts<'q>,
    out: Outputs,
    timing: ActuatorTiming,
    clock: MonotonicClock,
    report: &Arc<RealtimeReport>,
) -> Result<ScopedJoinHandle<'scope, ActuatorEnd>> {
    let rt = cfg.realtime.clone();
    let report = report.clone();
    Ok(std::thread::Builder::new()
        .name("actuator".into())
        .spawn_scoped(scope, move || {
            setup_thread("actuator", rt.actuator_priority, &rt, &report);
            let ActuatorParts {
                tracker,
                fired_capacity,
                ends,
                signals,
                frame,
            } = parts;
            actuator(tracker, fired_capacity, ends, signals, frame, out, clock, timing)
        })?)
}

/// What the actuator thread hands back when it ends: the outputs (their timeline is the
/// run's record of what was fired), the register (its totals) and the fired items.
pub(super) struct ActuatorEnd {
    pub(super) out: Outputs,
    pub(super) tracker: Tracker,
    pub(super) fired: Vec<FiredItem>,
}

/// The actuator loop: owns `tracker` and `out`; takes edges and commands from `ends`, fires,
/// answers, sleeps. It never takes a lock and never waits for another thread.
#[allow(clippy::too_many_arguments)]
pub(super) fn actuator(
    mut tracker: Tracker,
    fired_capacity: usize,
    mut ends: ActuatorEnds<'_>,
    signals: &Signals,
    frame: Thread,
    mut out: Outputs,
    clock: MonotonicClock,
    t: ActuatorTiming,
) -> ActuatorEnd {
    let mut hb_level = false;
    let mut next_hb = clock.now();
    let mut stop_at: Option<Instant> = None;
    // Edges taken from the tracker and written to the outputs after; preallocated for the
    // most one poll can emit.
    let mut edges: Vec<(OutputLine, bool, Instant)> = Vec::with_capacity(MAX_EDGES_PER_POLL);
    edges.resize(MAX_EDGES_PER_POLL, (OutputLine::Heartbeat, false, Instant::from_us(0)));
    edges.clear();
    let mut fired: Vec<FiredItem> = Vec::with_capacity(fired_capacity);
    // Written once, so that no item fired takes a page fault.
    let blank = FiredItem {
        id: 0,
        ejector: 0,
        merged: false,
        clipped: false,
    };
    fired.resize(fired_capacity, blank);
    fired.clear();
    loop {
        ends.take_edges(&mut tracker, signals);
        if ends.take_commands(&mut tracker, signals) {
            frame.unpark();
        }
        let now = clock.now();
        edges.clear();
        tracker.poll(now, |ev| match ev {
            TrackEvent::Edge { output, active, at } => edges.push((line_of(output), active, at)),
            TrackEvent::Fired {
                id,
                ejector,
                merged,
                clipped,
                ..
            } => {
                if fired.len() < fired.capacity() {
                    fired.push(FiredItem {
                        id,
                        ejector,
                        merged,
                        clipped,
                    });
                }
            }
            TrackEvent::Overdue { .. } => {}
        });
        if tracker.stats().line_stops > 0 {
            signals.line_stopped.store(true, Ordering::Relaxed);
        }
        let stopping = signals.stop.load(Ordering::Acquire);
        let mut heartbeat: Option<(bool, Instant)> = None;
        if now >= next_hb {
            let healthy = !tracker.line_stop_active()
                && signals.fault_at().is_none_or(|f| now.us_since(f) >= t.fault_hold_us)
                && !stopping;
            let level = healthy && !hb_level;
            if level != hb_level {
                hb_level = level;
                heartbeat = Some((level, next_hb));
            }
            next_hb = next_hb.add_us(t.heartbeat_us).max(now);
        }
        let mut ending = false;
        let mut drain_timed_out = false;
        if stopping {
            let s = *stop_at.get_or_insert(now);
            let idle = tracker.is_idle();
            if idle || now.us_since(s) > t.drain_us {
                ending = true;
                drain_timed_out = !idle;
                if drain_timed_out {
                    signals.drain_timed_out.store(true, Ordering::Relaxed);
                }
            }
        }

        let mut output_errors = 0;
        for &(line, active, at) in &edges {
            if out.set(line, active, at).is_err() {
                output_errors += 1;
            }
        }
        if let Some((level, at)) = heartbeat {
            if out.set(OutputLine::Heartbeat, level, at).is_err() {
                output_errors += 1;
            }
        }
        if output_errors > 0 {
            signals.output_errors.fetch_add(output_errors, Ordering::Relaxed);
            signals.note_fault(now);
        }
        if ending {
            if hb_level {
                let _ = out.set(OutputLine::Heartbeat, false, clock.now());
            }
            if drain_timed_out {
                for n in 0..t.reject_lines {
                    let _ = out.set(OutputLine::Reject(n), false, clock.now());
                }
            }
            return ActuatorEnd { out, tracker, fired };
        }
        // News that came while the outputs were written is taken before the next edge is
        // chosen, so no decision's edge is missed.
        ends.take_edges(&mut tracker, signals);
        if ends.take_commands(&mut tracker, signals) {
            frame.unpark();
            continue;
        }
        let next = tracker
            .next_event(now)
            .map_or(next_hb, |e| e.min(next_hb))
            .min(now.add_us(t.max_sleep_us));
        let until = next.us_since(clock.now());
        if until == 0 {
            continue;
        }
        if until > APPROACH_US {
            // Wait for news (a decision, an edge, a stop) until the approach to the next edge.
            std::thread::park_timeout(Duration::from_micros(until - APPROACH_US));
        } else {
            // The edge is close: sleep to its absolute time less the spin, then spin to it.
            clock.sleep_until(Instant::from_us(next.us.saturating_sub(t.spin_us)));
            clock.spin_until(next);
        }
    }
}
