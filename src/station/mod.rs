//! The station: camera → tool → decision → reject tracking → outputs, with counters.
//!
//! Three kinds of thread share one [`Tracker`] (the shift register) under a mutex:
//! - the frame loop (the calling thread) begins an item at each capture and hands it its
//!   decision;
//! - the actuator thread owns the outputs, polls the tracker and sleeps until its next edge or
//!   heartbeat — it, not the frame loop, applies deadlines, so a model that hangs still gets
//!   its items the fail-safe outcome on time;
//! - with an encoder or a part-present sensor, an input thread feeds kernel-timestamped edges.
//!
//! The camera never stops the station. A frame that is corrupt or of the wrong size gives its
//! item the fail-safe. Frames the driver dropped (a gap in its sequence numbers) and the
//! frames a lost or silent camera did not deliver become items too, one per frame period
//! (free-run) or one per trigger edge, each with the fail-safe outcome: the belt that passed a
//! blind camera is treated as the configured fail-safe says. Meanwhile the camera is reopened
//! with backoff ([`Supervised`]) until it returns.
//!
//! Every error on the frame path is a decision (the fail-safe), a fault counter and a log
//! line; only start-up errors stop the station.

pub mod board;
pub mod config;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::json;

use crate::alloc_count::{Scope, Snapshot};
use crate::camera::supervisor::{CameraStats, Supervised};
use crate::core::belt::Belt;
use crate::core::calibration::{travel_distance_mm, travel_time_us};
use crate::core::counters::Counters;
use crate::core::decision::{Action, Decision, Outcome};
use crate::core::frame::GrayFrame;
use crate::core::latency::LatencyHistogram;
use crate::core::reject::{DecideError, EjectorConfig, Output, TrackEvent, Tracker, TrackerStats};
use crate::core::screen::{fault as screen_fault, set_text, ScreenOutcome, ScreenState};
use crate::core::time::Instant;
use crate::core::MAX_CLASSES;
use crate::display::fb::Framebuffer;
use crate::display::spi::{Controller, SpiPanel, SpiPanelConfig};
use crate::display::thread::{Display, DisplayStats};
use crate::display::{Panel, PngPanel};
use crate::drivers::gpio::{EdgeInput, GpioOutput, LineSpec};
use crate::drivers::v4l2::{TriggerMode, V4l2Camera};
use crate::hal::{CaptureError, Clock, FrameInfo, OutputError, OutputLine, RejectOutput};
use crate::model::manifest::Manifest;
use crate::records::log::{fault_code, LogRecord};
use crate::records::store::now_unix_ms;
use crate::records::{ItemRecord, Recorder, RecorderSetup};
use crate::sim::clock::MonotonicClock;
use crate::sim::recording::{Event, RecordingOutput, MAX_TIMELINE_EVENTS};
use crate::sim::replay::{InjectedFaults, ReplayCamera, ReplayData};
use crate::tools::Tool;
use config::{InputLineSection, StationConfig};

/// Items whose fate a run keeps for its reject audit (missed and false rejects, timing
/// against true arrival). Preallocated; items beyond it are decided and fired as usual but
/// left out of the audit (`audit_truncated` in the summary).
pub const MAX_AUDIT_ITEMS: usize = 1 << 16;

/// Trigger edges waiting for their frame. More means the camera is far behind the sensor;
/// the oldest is then dropped (its item gets the fail-safe from the tracker) and counted.
pub const MAX_PENDING_TRIGGERS: usize = 64;

/// Most fail-safe items one capture adds for frames the camera did not deliver (a dropped
/// frame gap, or the frame periods of one timeout or outage spell): bounds one iteration.
pub const MAX_BLIND_ITEMS_PER_CAPTURE: u64 = 64;

/// Faults by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Frames that did not decode.
    pub corrupt_frame: u64,
    /// Frames of an unusable size.
    pub wrong_size_frame: u64,
    /// Camera timeouts and disconnects (capture attempts that found no camera or no frame).
    pub camera: u64,
    /// Frames the camera dropped (sequence gaps).
    pub dropped_frame: u64,
    /// Inference errors.
    pub model: u64,
    /// Decisions later than `decision_deadline_ms`, or after the item's reject deadline.
    pub decision_overrun: u64,
    /// Items merged into the previous one because `MAX_ITEMS_IN_FLIGHT` were tracked.
    pub tracking_overflow: u64,
    /// Frames in trigger mode with no trigger to belong to.
    pub untriggered_frame: u64,
    /// Output writes that failed.
    pub output: u64,
    /// Input (encoder, trigger) read errors.
    pub input: u64,
}

/// One decided item, for the log.
#[derive(Clone, Copy, Debug)]
pub struct ItemReport<'a> {
    /// Camera sequence number.
    pub sequence: u32,
    /// Replay file name.
    pub source: &'a str,
    /// Label from the replay folder, if any.
    pub label: Option<&'a str>,
    /// The decision.
    pub decision: Decision,
    /// Class name of the decision's class.
    pub class_name: Option<&'a str>,
    /// Capture to decision.
    pub latency_us: u64,
    /// What went wrong, for fail-safe items.
    pub fault: Option<&'static str>,
}

/// One item's fate, for the audit.
#[derive(Clone, Copy, Debug)]
struct AuditItem {
    id: u32,
    captured: Instant,
    action: Action,
}

/// One reject the tracker fired.
#[derive(Clone, Copy, Debug)]
struct FiredItem {
    id: u32,
    ejector: u8,
    merged: bool,
    clipped: bool,
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

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Station name.
    pub station: String,
    /// Model name, version and precision.
    pub model: String,
    /// Class names.
    pub classes: Vec<String>,
    /// Ejector names.
    pub ejectors: Vec<String>,
    /// Counters.
    pub counters: Counters,
    /// Faults by kind.
    pub faults: FaultCounts,
    /// The tracker's totals (fired per ejector, fail-safe rejects, line stops, merges).
    pub tracker: TrackerStats,
    /// Capture → decision latency.
    pub latency: LatencyHistogram,
    /// Items whose replay folder named a class of the model.
    pub labelled: u64,
    /// Of those, items whose decided class matched the folder.
    pub correct: u64,
    /// Recorded output timeline.
    pub timeline: Vec<Event>,
    /// Reject audit against true arrival (speed mode; `None` with an encoder, whose true
    /// position only the encoder knows).
    pub audit: Option<RejectAudit>,
    /// Items left out of the audit (beyond [`MAX_AUDIT_ITEMS`]).
    pub audit_truncated: u64,
    /// Our allocations on the frame loop's thread after the first item (the promise is zero).
    pub allocations_ours_after_warmup: u64,
    /// tract's allocations per item after the first item.
    pub allocations_tract_per_item: f64,
    /// What happened to the camera.
    pub camera: CameraStats,
    /// Whether the camera was away when the run ended.
    pub camera_down_at_end: bool,
    /// Items the camera did not see (dropped frames, timeouts, disconnects): all fail-safe.
    pub blind_items: u64,
    /// Faults a replay injected (replays only).
    pub injected: Option<InjectedFaults>,
    /// What the display thread did (none: headless).
    pub display: Option<DisplayStats>,
    /// Records, archive and MQTT counters (`health` message fields), when configured.
    pub records: Option<serde_json::Value>,
    /// Wall time of the run.
    pub duration_s: f64,
}

impl Summary {
    /// Reject pulses in the timeline, all ejectors.
    pub fn pulses(&self) -> usize {
        self.timeline
            .iter()
            .filter(|e| matches!(e.line, OutputLine::Reject(_)) && e.active)
            .count()
    }

    /// Edge scheduling error (actual − planned) of the reject lines: (p50, p99) in µs.
    pub fn edge_error_us(&self) -> (u64, u64) {
        edge_error_us(&self.timeline)
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.counters;
        // `{name: value}` for each name, values in the same order.
        let named = |names: &[String], values: &[u64]| -> serde_json::Map<String, serde_json::Value> {
            names.iter().zip(values).map(|(n, v)| (n.clone(), json!(v))).collect()
        };
        let per_class = named(&self.classes, &c.rejected_per_class);
        let detected = named(&self.classes, &c.per_class);
        let fired = named(&self.ejectors, &self.tracker.fired);
        let f = &self.faults;
        let t = &self.tracker;
        let (ee50, ee99) = self.edge_error_us();
        let a = self.audit.clone().unwrap_or_default();
        let mm = |us: Option<u64>| us.map(|u| travel_distance_mm(u, a.belt_speed_mm_per_s));
        let k = &self.camera;
        let camera = json!({
            "frames": k.frames, "dropped": k.dropped, "timeouts": k.timeouts,
            "disconnects": k.disconnects, "reconnects": k.reconnects,
            "reopen_failures": k.reopen_failures, "corrupt": k.corrupt, "wrong_size": k.wrong_size,
            "stale_skipped": k.stale_skipped,
            "longest_outage_ms": k.longest_outage_us as f64 / 1000.0,
            "down_at_end": self.camera_down_at_end,
            "blind_items": self.blind_items,
        });
        let display = self.display.as_ref().map(|d| {
            json!({
                "offered": d.offered, "dropped": d.dropped, "full_draws": d.full_draws,
                "partial_draws": d.partial_draws, "errors": d.errors, "last_error": d.last_error,
                "full_draw_ms_p50": d.full_draw_ms_p50,
            })
        });
        let injected = self.injected.map(|i| {
            json!({
                "dropped": i.dropped, "corrupted": i.corrupted, "disconnects": i.disconnects,
            })
        });
        json!({
            "station": self.station,
            "model": self.model,
            "items": c.inspected,
            "accepted": c.accepted,
            "rejected": c.rejected,
            "rejected_per_class": per_class,
            "detected_per_class": detected,
            "uncertain": c.uncertain,
            "failsafe": c.failsafe,
            "faults": c.faults,
            "fault_kinds": {
                "corrupt_frame": f.corrupt_frame, "wrong_size_frame": f.wrong_size_frame, "camera": f.camera,
                "dropped_frame": f.dropped_frame,
                "model": f.model, "decision_overrun": f.decision_overrun, "tracking_overflow": f.tracking_overflow,
                "untriggered_frame": f.untriggered_frame, "output": f.output, "input": f.input,
            },
            "yield_percent": c.yield_percent(),
            "latency_ms_p50": self.latency.percentile_us(50.0).unwrap_or(0) as f64 / 1000.0,
            "latency_ms_p99": self.latency.percentile_us(99.0).unwrap_or(0) as f64 / 1000.0,
            "reject_pulses": self.pulses(),
            "fired_per_ejector": fired,
            "failsafe_rejects": t.failsafe_rejects,
            "failsafe_accepts": t.failsafe_accepts,
            "overdue_items": t.overdue,
            "line_stops": t.line_stops,
            "merged_rejects": t.merged,
            "clipped_rejects": t.clipped,
            "missed_rejects": self.audit.as_ref().map(|a| a.missed_rejects),
            "false_rejects": self.audit.as_ref().map(|a| a.false_rejects),
            "timing_error_us_p50": a.timing_error_us_p50,
            "timing_error_us_p99": a.timing_error_us_p99,
            "timing_error_us_max": a.timing_error_us_max,
            "timing_error_mm_p99": mm(a.timing_error_us_p99),
            "edge_error_us_p50": ee50,
            "edge_error_us_p99": ee99,
            "audited_items": a.items,
            "audit_truncated": self.audit_truncated,
            "labelled": self.labelled,
            "correct_vs_labels": self.correct,
            "allocations_ours_after_warmup": self.allocations_ours_after_warmup,
            "allocations_tract_per_item": self.allocations_tract_per_item,
            "camera": camera,
            "injected_faults": injected,
            "display": display,
            "records": self.records,
            "duration_s": self.duration_s,
        })
    }
}

/// Edge scheduling error (actual − planned) of the reject lines in `timeline`: (p50, p99), µs.
fn edge_error_us(timeline: &[Event]) -> (u64, u64) {
    let mut h = LatencyHistogram::default();
    for e in timeline.iter().filter(|e| matches!(e.line, OutputLine::Reject(_))) {
        h.record(e.actual.us_since(e.planned));
    }
    (h.percentile_us(50.0).unwrap_or(0), h.percentile_us(99.0).unwrap_or(0))
}

/// The output backend chosen in the config.
#[derive(Debug)]
enum Outputs {
    Recording(RecordingOutput),
    Gpio(GpioOutput),
}

impl Outputs {
    fn events(&self) -> &[Event] {
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

fn open_outputs(cfg: &StationConfig, clock: MonotonicClock) -> Result<Outputs> {
    if cfg.outputs.backend != "gpio" {
        return Ok(Outputs::Recording(RecordingOutput::new(clock, MAX_TIMELINE_EVENTS)));
    }
    let lines = output_lines(cfg)?;
    Ok(Outputs::Gpio(
        GpioOutput::open(&lines, clock, MAX_TIMELINE_EVENTS)
            .with_context(|| format!("{}: `[outputs]`", cfg.path.display()))?,
    ))
}

struct Shared {
    tracker: Tracker,
    /// Last fault, for the heartbeat.
    fault_at: Option<Instant>,
    stop: bool,
    output_errors: u64,
    input_errors: u64,
    fired: Vec<FiredItem>,
    /// Trigger mode: items begun by the sensor (id, edge time), waiting for their frame.
    triggered: heapless::Deque<(u32, Instant), MAX_PENDING_TRIGGERS>,
}

type SharedState = Arc<(Mutex<Shared>, Condvar)>;

impl Shared {
    /// Shared state around `tracker`, keeping up to `fired_capacity` fired items for the audit.
    fn new_state(tracker: Tracker, fired_capacity: usize) -> SharedState {
        Arc::new((
            Mutex::new(Shared {
                tracker,
                fault_at: None,
                stop: false,
                output_errors: 0,
                input_errors: 0,
                fired: Vec::with_capacity(fired_capacity),
                triggered: heapless::Deque::new(),
            }),
            Condvar::new(),
        ))
    }
}

fn line_of(o: Output) -> OutputLine {
    match o {
        Output::Ejector(n) => OutputLine::Reject(n),
        Output::LineStop => OutputLine::LineStop,
    }
}

struct ActuatorTiming {
    heartbeat_us: u64,
    fault_hold_us: u64,
    /// Longest sleep: with an encoder, predictions are redone at least this often.
    max_sleep_us: u64,
    /// After the frame loop stops, how long items may still take to reach their ejectors.
    drain_us: u64,
}

fn actuator(shared: SharedState, mut out: Outputs, clock: MonotonicClock, t: ActuatorTiming) -> Outputs {
    let (lock, cvar) = &*shared;
    let mut hb_level = false;
    let mut next_hb = clock.now();
    let mut stop_at: Option<Instant> = None;
    let Ok(mut g) = lock.lock() else { return out };
    loop {
        let now = clock.now();
        let errors_before = g.output_errors;
        {
            let Shared {
                tracker,
                output_errors,
                fired,
                ..
            } = &mut *g;
            tracker.poll(now, |ev| match ev {
                TrackEvent::Edge { output, active, at } => {
                    if out.set(line_of(output), active, at).is_err() {
                        *output_errors += 1;
                    }
                }
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
        }
        if g.output_errors != errors_before {
            g.fault_at = Some(now);
        }
        if now >= next_hb {
            let healthy = !g.tracker.line_stop_active()
                && g.fault_at.is_none_or(|f| now.us_since(f) >= t.fault_hold_us)
                && !g.stop;
            let level = healthy && !hb_level;
            if level != hb_level {
                hb_level = level;
                if out.set(OutputLine::Heartbeat, level, next_hb).is_err() {
                    g.output_errors += 1;
                }
            }
            next_hb = next_hb.add_us(t.heartbeat_us).max(now);
        }
        if g.stop {
            let s = *stop_at.get_or_insert(now);
            if g.tracker.is_idle() || now.us_since(s) > t.drain_us {
                if hb_level {
                    let _ = out.set(OutputLine::Heartbeat, false, clock.now());
                }
                return out;
            }
        }
        let next = g
            .tracker
            .next_event(now)
            .map_or(next_hb, |e| e.min(next_hb))
            .min(now.add_us(t.max_sleep_us));
        let wait = next.us_since(clock.now()).max(1);
        g = match cvar.wait_timeout(g, Duration::from_micros(wait)) {
            Ok((g, _)) => g,
            Err(_) => return out,
        };
    }
}

enum InputRole {
    Encoder,
    Trigger,
}

/// Where input edges come from.
enum EdgeSource {
    /// A GPIO line.
    Gpio(EdgeInput),
    /// A simulated part-present sensor: one edge every `period_us`, timestamped exactly, as
    /// the kernel stamps a real one.
    Periodic {
        clock: MonotonicClock,
        period_us: u64,
        next: Instant,
    },
}

impl EdgeSource {
    fn next_edge(&mut self, timeout: Duration) -> Result<Option<Instant>> {
        match self {
            EdgeSource::Gpio(i) => i.next_edge(timeout),
            EdgeSource::Periodic { clock, period_us, next } => {
                let limit = clock.now().add_us(timeout.as_micros() as u64);
                if *next > limit {
                    clock.sleep_until(limit);
                    return Ok(None);
                }
                clock.sleep_until(*next);
                let at = *next;
                *next = next.add_us(*period_us);
                Ok(Some(at))
            }
        }
    }
}

fn input_thread(shared: SharedState, mut input: EdgeSource, role: InputRole, clock: MonotonicClock) {
    let (lock, cvar) = &*shared;
    let mut count: i64 = 0;
    let mut next_id: u32 = 0x8000_0000;
    loop {
        let edge = input.next_edge(Duration::from_millis(100));
        let Ok(mut g) = lock.lock() else { return };
        if g.stop {
            return;
        }
        match edge {
            Ok(None) => continue,
            Err(_) => {
                g.input_errors += 1;
                g.fault_at = Some(clock.now());
                drop(g);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(Some(at)) => match role {
                InputRole::Encoder => {
                    count += 1;
                    g.tracker.belt_mut().on_encoder(count, at);
                }
                InputRole::Trigger => {
                    next_id = next_id.wrapping_add(1);
                    g.tracker.begin(next_id, at);
                    if g.triggered.is_full() {
                        g.triggered.pop_front();
                        g.input_errors += 1;
                    }
                    let _ = g.triggered.push_back((next_id, at));
                }
            },
        }
        drop(g);
        cvar.notify_all();
    }
}

fn open_input(cfg: &StationConfig, l: &InputLineSection, clock: MonotonicClock, what: &str) -> Result<EdgeSource> {
    if cfg.inputs.backend.as_deref() == Some("sim") {
        let period_ms = l.period_ms.unwrap_or(100.0);
        return Ok(EdgeSource::Periodic {
            clock,
            period_us: (period_ms as f64 * 1000.0) as u64,
            next: clock.now().add_us((period_ms as f64 * 1000.0) as u64),
        });
    }
    let chip = cfg
        .inputs
        .gpio_chip
        .as_ref()
        .ok_or_else(|| anyhow!("{}: field `inputs.gpio_chip` is missing", cfg.path.display()))?;
    let debounce = (l.debounce_ms > 0.0).then(|| Duration::from_micros((l.debounce_ms * 1000.0) as u64));
    EdgeInput::open(chip, l.line, l.active_low, l.both_edges, debounce, clock)
        .map(EdgeSource::Gpio)
        .with_context(|| format!("{}: `[inputs.{what}]`", cfg.path.display()))
}

/// Audit what the outputs did against each item's true arrival at constant belt speed.
fn audit(
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

/// The station's camera: a replay or a live V4L2 camera, each under supervision.
enum StationCamera {
    Replay(Supervised<ReplayCamera>),
    V4l2 { cam: Supervised<V4l2Camera>, name: String },
}

impl StationCamera {
    fn capture_after(&mut self, after: Option<Instant>, buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
        match self {
            StationCamera::Replay(c) => c.capture_after(after, buf),
            StationCamera::V4l2 { cam, .. } => cam.capture_after(after, buf),
        }
    }

    fn stats(&self) -> CameraStats {
        match self {
            StationCamera::Replay(c) => c.stats(),
            StationCamera::V4l2 { cam, .. } => cam.stats(),
        }
    }

    fn last_gap(&self) -> u32 {
        match self {
            StationCamera::Replay(c) => c.last_gap(),
            StationCamera::V4l2 { cam, .. } => cam.last_gap(),
        }
    }

    fn is_down(&self) -> bool {
        match self {
            StationCamera::Replay(c) => c.is_down(),
            StationCamera::V4l2 { cam, .. } => cam.is_down(),
        }
    }

    /// The file (replay) or device behind the last capture, and the replay folder's label.
    fn last_source(&self) -> (&str, Option<&str>) {
        match self {
            StationCamera::Replay(c) => match c.inner().last_frame() {
                Some(f) => (f.file_name(), f.label.as_deref()),
                None => ("?", None),
            },
            StationCamera::V4l2 { name, .. } => (name.as_str(), None),
        }
    }

    fn injected(&self) -> Option<InjectedFaults> {
        match self {
            StationCamera::Replay(c) => Some(c.inner().injected()),
            StationCamera::V4l2 { .. } => None,
        }
    }
}

/// What the station needs to know about its camera before the first frame.
struct CameraSetup {
    camera: StationCamera,
    /// Largest frame, bytes (gray).
    frame_bytes: usize,
    /// Largest frame size, to size the tool's buffers once (a smaller frame then fits).
    largest_size: Option<(usize, usize)>,
    /// Nominal frame period.
    period_us: u64,
    /// Items a run is expected to see (sizes the audit).
    expected_items: usize,
}

fn open_camera(cfg: &StationConfig, clock: MonotonicClock) -> Result<CameraSetup> {
    let p = cfg.path.display();
    if cfg.camera.source == "v4l2" {
        let v = cfg.v4l2()?;
        let name = v.device.display().to_string();
        let period_us = (1e6 / v.fps.unwrap_or(30.0).max(0.1) as f64) as u64;
        // A missing node is a camera not plugged in (yet): the station starts, fails safe and
        // keeps trying. A camera that is there but refuses the settings is a start-up error.
        let cam = if v.device.exists() {
            Supervised::new(
                V4l2Camera::open(v, clock).with_context(|| format!("{p}: `[camera]`"))?,
                clock,
                period_us,
            )
        } else {
            eprintln!("{p}: `camera.device` {name} is missing: running blind (fail-safe) until it appears");
            Supervised::new_down(V4l2Camera::closed(v, clock), clock, period_us)
        };
        let (w, h) = cam.inner().size();
        return Ok(CameraSetup {
            camera: StationCamera::V4l2 { cam, name },
            frame_bytes: w * h,
            largest_size: Some((w, h)),
            period_us,
            expected_items: MAX_AUDIT_ITEMS,
        });
    }
    let replay_path = cfg.resolve(&cfg.camera.path);
    let cam = ReplayCamera::with_faults(
        &replay_path,
        cfg.camera.rate_fps,
        cfg.camera.loops,
        clock,
        cfg.fault_plan(),
    )
    .with_context(|| format!("{p}: field `camera.path`"))?;
    let period_us = cam.period_us();
    let frame_bytes = cam.max_frame_bytes(crate::core::pixel::OutputFormat::Gray);
    let largest_size = cam.frames().iter().filter_map(|f| f.size()).max_by_key(|&(w, h)| w * h);
    let passes = if cfg.camera.loops == 0 { 64 } else { cfg.camera.loops };
    let expected_items = (cam.frames().len() as u64 * passes as u64) as usize;
    Ok(CameraSetup {
        camera: StationCamera::Replay(Supervised::new(cam, clock, period_us)),
        frame_bytes,
        largest_size,
        period_us,
        expected_items,
    })
}

/// Open the configured screen. A screen that cannot be opened is a logged fault: the
/// station runs headless rather than not at all.
fn open_display(cfg: &StationConfig) -> (Option<Display>, bool) {
    let Some(d) = &cfg.display else { return (None, false) };
    let p = cfg.path.display();
    let panel: Result<Box<dyn Panel>> = match d.backend.as_str() {
        "none" => return (None, false),
        "png" => Ok(Box::new(PngPanel::new(
            &cfg.resolve(d.path.as_deref().unwrap_or(std::path::Path::new("screen.png"))),
            d.width,
            d.height,
        ))),
        "fb" => Framebuffer::open(d.path.as_deref().unwrap_or(std::path::Path::new("/dev/fb0")))
            .map(|f| Box::new(f) as Box<dyn Panel>),
        kind => SpiPanel::open(&SpiPanelConfig {
            controller: if kind == "st7789" {
                Controller::St7789
            } else {
                Controller::Ili9341
            },
            spi_device: d.spi_device.clone().unwrap_or_default(),
            spi_hz: d.spi_hz,
            gpio_chip: d.gpio_chip.clone().unwrap_or_default(),
            dc_line: d.dc_line.unwrap_or(0),
            reset_line: d.reset_line,
            rotation_deg: d.rotation_deg,
            invert: d.invert,
        })
        .map(|s| Box::new(s) as Box<dyn Panel>),
    };
    match panel.and_then(|panel| Display::spawn(panel, d.refresh_hz).map_err(anyhow::Error::from)) {
        Ok(disp) => (Some(disp), false),
        Err(e) => {
            eprintln!("{p}: `[display]`: {e:#}; running headless");
            (None, true)
        }
    }
}

/// When each kind of fault last happened, for the screen's fault strip.
#[derive(Default)]
struct RecentFaults {
    at: [Option<Instant>; 9],
}

impl RecentFaults {
    fn note(&mut self, bit: u16, now: Instant) {
        self.at[bit.trailing_zeros() as usize % 9] = Some(now);
    }

    /// Bits of faults seen within `hold_us` of `now`.
    fn active(&self, now: Instant, hold_us: u64) -> u16 {
        let mut bits = 0;
        for (i, t) in self.at.iter().enumerate() {
            if t.is_some_and(|t| now.us_since(t) <= hold_us) {
                bits |= 1 << i;
            }
        }
        bits
    }
}

/// The decision record of one item (its time is now).
fn log_record(item: u32, frame_seq: u32, d: &Decision, fault: Option<&str>, latency_us: u64) -> LogRecord {
    LogRecord {
        seq: 0,
        unix_ms: now_unix_ms(),
        day: 0,
        shift: 0,
        item,
        frame_seq,
        outcome: d.outcome,
        action: d.action,
        class: d.class,
        fault: fault_code(fault),
        score: d.score,
        latency_us: latency_us.min(u32::MAX as u64) as u32,
    }
}

/// Run the station described by `cfg` until the replay ends; `on_item` sees every item.
pub fn run(cfg: &StationConfig, on_item: impl FnMut(&ItemReport<'_>)) -> Result<Summary> {
    run_until(cfg, &AtomicBool::new(false), on_item)
}

/// Run the station until the replay ends or `stop` is set (a live camera runs until then).
pub fn run_until(cfg: &StationConfig, stop: &AtomicBool, mut on_item: impl FnMut(&ItemReport<'_>)) -> Result<Summary> {
    let clock = MonotonicClock::default();
    if let Some(b) = &cfg.board {
        b.apply_cpu_hints()?;
    }
    let precision = cfg.precision()?;
    let manifest_path = cfg.resolve(&cfg.tool.manifest);
    let mut classifier = Manifest::load(&manifest_path)
        .and_then(|m| Tool::load(&cfg.tool.kind, m, precision, cfg.segment_rules()?))
        .with_context(|| {
            format!(
                "{}: field `tool.manifest`: the station refuses to start",
                cfg.path.display()
            )
        })?;
    let rules = cfg.rules(classifier.manifest())?;
    let ejectors = cfg.ejectors(classifier.manifest())?;
    let classes: Vec<String> = classifier.manifest().classes.iter().map(|c| c.name.clone()).collect();
    let CameraSetup {
        mut camera,
        frame_bytes,
        largest_size,
        period_us,
        expected_items,
    } = open_camera(cfg, clock)?;
    let mut frame_buf = vec![0u8; frame_bytes.max(1)];
    if let Some((w, h)) = largest_size {
        classifier.prepare(w, h);
    }
    let (belt, speed) = match (cfg.conveyor.belt_speed_mm_per_s, cfg.conveyor.encoder_counts_per_mm) {
        (Some(v), _) => (Belt::from_speed(v, clock.now()), Some(v)),
        (None, Some(cpm)) => (
            Belt::from_encoder(cpm).ok_or_else(|| anyhow!("{}: bad encoder_counts_per_mm", cfg.path.display()))?,
            None,
        ),
        (None, None) => anyhow::bail!("{}: `[conveyor]` has no speed or encoder", cfg.path.display()),
    };
    let tracker = Tracker::new(&ejectors, cfg.failsafe_policy(), belt)
        .map_err(|e| anyhow!("{}: `[[ejectors]]`: {e:?}", cfg.path.display()))?;
    // Blind items (dropped frames, outages) come on top of the frames.
    let audit_cap = (expected_items + expected_items / 4 + 256).clamp(1, MAX_AUDIT_ITEMS);
    let shared = Shared::new_state(tracker, audit_cap);
    let out = open_outputs(cfg, clock)?;
    let farthest = ejectors.iter().map(|e| e.ejector_distance_mm).fold(0.0f32, f32::max);
    let timing = ActuatorTiming {
        heartbeat_us: cfg.outputs.heartbeat_period_ms.max(1) as u64 * 1000,
        fault_hold_us: cfg.outputs.fault_hold_ms as u64 * 1000,
        max_sleep_us: if speed.is_some() { 1_000_000 } else { 1_000 },
        drain_us: match speed {
            Some(v) => (farthest as f64 / v as f64 * 1e6) as u64 + 1_000_000,
            None => 10_000_000,
        },
    };
    let act = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("actuator".into())
            .spawn(move || actuator(shared, out, clock, timing))?
    };
    let mut inputs = Vec::new();
    if let Some(l) = &cfg.inputs.encoder {
        let input = open_input(cfg, l, clock, "encoder")?;
        let shared = shared.clone();
        inputs.push(
            std::thread::Builder::new()
                .name("encoder".into())
                .spawn(move || input_thread(shared, input, InputRole::Encoder, clock))?,
        );
    }
    let mode = cfg.trigger_mode();
    if let Some(l) = &cfg.inputs.trigger {
        let input = open_input(cfg, l, clock, "trigger")?;
        let shared = shared.clone();
        inputs.push(
            std::thread::Builder::new()
                .name("trigger".into())
                .spawn(move || input_thread(shared, input, InputRole::Trigger, clock))?,
        );
    }

    let (mut display, display_failed_at_start) = open_display(cfg);
    let mut recent = RecentFaults::default();
    if display_failed_at_start {
        recent.note(screen_fault::DISPLAY_ERROR, clock.now());
    }
    let fault_hold_us = (cfg.outputs.fault_hold_ms as u64 * 1000).max(2_000_000);
    let model_line = {
        let m = classifier.manifest();
        format!("{} {} {}", m.model.name, m.model.version, precision.name())
    };
    let (records_sec, archive_sec, mqtt_sec) = cfg.record_sections();
    let mut recorder = Recorder::start(&RecorderSetup {
        config_path: &cfg.path,
        station: &cfg.station.name,
        classes: &classes,
        model: &model_line,
        records: records_sec.as_ref(),
        archive: archive_sec.as_ref(),
        mqtt: mqtt_sec.as_ref(),
        frame_bytes,
    })?;
    if let Some(r) = recorder.as_ref().and_then(|r| r.recovery.as_ref()) {
        eprintln!("{r}");
    }
    let mut item_scores = [0.0f32; MAX_CLASSES];
    let deadline_us = cfg.decision.decision_deadline_ms as u64 * 1000;
    let mut counters = Counters::default();
    let mut faults = FaultCounts::default();
    let mut latency = LatencyHistogram::default();
    let (mut labelled, mut correct) = (0u64, 0u64);
    let mut audit_items: Vec<AuditItem> = Vec::with_capacity(audit_cap);
    let mut audit_truncated = 0u64;
    let mut blind_items = 0u64;
    let mut warm: Option<(Snapshot, u64)> = None;
    let started = std::time::Instant::now();
    let (lock, cvar) = &*shared;
    let note_fault = |at: Instant| {
        if let Ok(mut g) = lock.lock() {
            g.fault_at = Some(at);
        }
    };
    // Free-run: items get the station's own ids (camera sequences restart on reconnect).
    let mut next_id: u32 = 0;
    let mut seen_io_errors = 0u64;
    let mut last_item_at: Option<Instant> = None;
    let run_start = clock.now();

    // Hand the screen the latest state (never waits; see `Display::offer`).
    macro_rules! show {
        ($decision:expr, $class:expr, $frame:expr) => {{
            if let Some(d) = display.as_mut() {
                let decision: Decision = $decision;
                let class: Option<&str> = $class;
                let frame: Option<(&[u8], usize, usize)> = $frame;
                let now = clock.now();
                let faults_now =
                    recent.active(now, fault_hold_us) | recorder.as_ref().map(Recorder::faults).unwrap_or(0);
                let uptime_s = now.us_since(run_start) / 1_000_000;
                let elapsed_min = (now.us_since(run_start) as f32 / 60e6).max(1.0 / 60.0);
                d.offer(|st: &mut ScreenState| {
                    if st.station.is_empty() {
                        set_text(&mut st.station, &cfg.station.name);
                        set_text(&mut st.model, &model_line);
                    }
                    st.uptime_s = uptime_s;
                    st.outcome = match decision.outcome {
                        Outcome::Accept => ScreenOutcome::Ok,
                        Outcome::Reject => ScreenOutcome::Reject,
                        Outcome::Uncertain => ScreenOutcome::Uncertain,
                        Outcome::FailSafe => ScreenOutcome::Fault,
                    };
                    set_text(&mut st.class, class.unwrap_or(""));
                    st.score = if decision.outcome == Outcome::FailSafe {
                        -1.0
                    } else {
                        decision.score
                    };
                    st.inspected = counters.inspected;
                    st.rejected = counters.rejected;
                    st.yield_percent = counters.yield_percent();
                    st.items_per_min = counters.inspected as f32 / elapsed_min;
                    st.latency_ms_p50 = latency.percentile_us(50.0).unwrap_or(0) as f32 / 1000.0;
                    st.latency_ms_p99 = latency.percentile_us(99.0).unwrap_or(0) as f32 / 1000.0;
                    st.faults = faults_now;
                    st.per_class.clear();
                    for (name, n) in classes.iter().zip(counters.rejected_per_class.iter()) {
                        let mut t = heapless::String::new();
                        set_text(&mut t, name);
                        let _ = st.per_class.push((t, *n));
                    }
                    st.boxes.clear();
                    match frame {
                        Some((px, w, h)) => {
                            st.set_thumbnail(px, w, h, w);
                            for (x0, y0, x1, y1) in classifier.boxes() {
                                st.add_frame_box(x0, y0, x1, y1, w, h);
                            }
                        }
                        None => {
                            st.thumb_w = 0;
                            st.thumb_h = 0;
                        }
                    }
                });
            }
        }};
    }

    // An item the camera did not see: into the register (unless the trigger input already put
    // it there) and decided with the fail-safe at once.
    macro_rules! blind_item {
        ($id:expr, $at:expr, $begin:expr, $why:expr) => {{
            let (id, at): (u32, Instant) = ($id, $at);
            let decision = rules.fail_safe();
            let now = clock.now();
            if let Ok(mut g) = lock.lock() {
                if $begin && !g.tracker.begin(id, at) {
                    faults.tracking_overflow += 1;
                }
                let _ = g.tracker.decide(id, &decision, now);
                g.fault_at = Some(now);
            }
            cvar.notify_all();
            blind_items += 1;
            counters.record(&decision);
            if audit_items.len() < audit_items.capacity() {
                audit_items.push(AuditItem {
                    id,
                    captured: at,
                    action: decision.action,
                });
            } else {
                audit_truncated += 1;
            }
            on_item(&ItemReport {
                sequence: 0,
                source: $why,
                label: None,
                decision,
                class_name: None,
                latency_us: now.us_since(at),
                fault: Some($why),
            });
            if let Some(r) = recorder.as_mut() {
                let record = log_record(id, 0, &decision, Some($why), now.us_since(at));
                r.item(
                    &ItemRecord {
                        record,
                        scores: &[],
                        frame: None,
                    },
                    std::iter::empty(),
                );
            }
            recent.note(
                if $why == "dropped frame" {
                    screen_fault::BAD_FRAMES
                } else {
                    screen_fault::CAMERA_LOST
                },
                now,
            );
            show!(decision, Some($why), None);
        }};
    }

    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Software trigger: wait for an edge, then take the first frame exposed after it.
        let mut trigger: Option<(u32, Instant)> = None;
        if mode == TriggerMode::Software {
            let Ok(g) = lock.lock() else { break };
            let (mut g, _) =
                match cvar.wait_timeout_while(g, Duration::from_millis(100), |g| g.triggered.is_empty() && !g.stop) {
                    Ok(r) => r,
                    Err(_) => break,
                };
            trigger = g.triggered.pop_front();
            drop(g);
            if trigger.is_none() {
                continue;
            }
        }
        let captured_guess = clock.now();
        let result = camera.capture_after(trigger.map(|t| t.1), &mut frame_buf);
        let (seq, captured) = match &result {
            Err(CaptureError::EndOfStream) => break,
            Err(e @ (CaptureError::Timeout | CaptureError::Disconnected)) => {
                let why = if *e == CaptureError::Timeout {
                    "camera timeout"
                } else {
                    "camera lost"
                };
                faults.camera += 1;
                counters.fault();
                let now = clock.now();
                note_fault(now);
                match mode {
                    TriggerMode::FreeRun => {
                        // One fail-safe item per frame period the camera was blind.
                        let mut t = last_item_at.unwrap_or(run_start);
                        let mut n = 0;
                        while t.add_us(period_us) <= now && n < MAX_BLIND_ITEMS_PER_CAPTURE {
                            t = t.add_us(period_us);
                            n += 1;
                            let id = next_id;
                            next_id = next_id.wrapping_add(1);
                            blind_item!(id, t, true, why);
                        }
                        if n > 0 {
                            last_item_at = Some(if n == MAX_BLIND_ITEMS_PER_CAPTURE { now } else { t });
                        }
                    }
                    TriggerMode::Software => {
                        if let Some((id, at)) = trigger {
                            blind_item!(id, at, false, why);
                        }
                    }
                    TriggerMode::External => {
                        // Every trigger that came and went without a frame.
                        loop {
                            let t = lock.lock().ok().and_then(|mut g| g.triggered.pop_front());
                            let Some((id, at)) = t else { break };
                            blind_item!(id, at, false, why);
                        }
                    }
                }
                continue;
            }
            Err(CaptureError::Corrupt { sequence }) | Err(CaptureError::WrongSize { sequence, .. }) => {
                (*sequence, clock.now().max(captured_guess))
            }
            Ok(info) => (info.sequence, info.captured),
        };
        let gap = camera.last_gap() as u64;
        if gap > 0 {
            faults.dropped_frame += gap;
            counters.fault();
            note_fault(clock.now());
            recent.note(screen_fault::BAD_FRAMES, clock.now());
            if mode == TriggerMode::FreeRun {
                // The dropped frames' items, spread between the last item and this frame.
                let prev = last_item_at.unwrap_or(run_start).min(captured);
                let span = captured.us_since(prev);
                for k in 1..=gap.min(MAX_BLIND_ITEMS_PER_CAPTURE) {
                    let id = next_id;
                    next_id = next_id.wrapping_add(1);
                    blind_item!(id, prev.add_us(span * k / (gap + 1)), true, "dropped frame");
                }
            }
        }
        // The item enters the register before inference: if the model is slow or hangs, the
        // actuator thread still gives it the fail-safe at its deadline.
        let mut fault: Option<&'static str> = None;
        // Merged into the previous item by the tracker: its own decision no longer counts.
        let mut overflowed = false;
        // The item's reference time: its trigger edge (the sensor's position) or its frame.
        let mut item_at = captured;
        let id = match mode {
            TriggerMode::Software => {
                let (id, at) = trigger.unwrap_or((0, captured));
                item_at = at;
                id
            }
            TriggerMode::External => match lock.lock().ok().and_then(|mut g| g.triggered.pop_front()) {
                Some((id, at)) => {
                    item_at = at;
                    id
                }
                None => {
                    faults.untriggered_frame += 1;
                    counters.fault();
                    note_fault(clock.now());
                    continue;
                }
            },
            TriggerMode::FreeRun => {
                let id = next_id;
                next_id = next_id.wrapping_add(1);
                last_item_at = Some(captured);
                if let Ok(mut g) = lock.lock() {
                    if !g.tracker.begin(id, captured) {
                        faults.tracking_overflow += 1;
                        fault = Some("tracking overflow");
                        overflowed = true;
                    }
                }
                cvar.notify_all();
                id
            }
        };
        let mut decision = match result {
            Err(CaptureError::Corrupt { .. }) => {
                faults.corrupt_frame += 1;
                fault = fault.or(Some("corrupt frame"));
                rules.fail_safe()
            }
            Err(_) => {
                faults.wrong_size_frame += 1;
                fault = fault.or(Some("wrong frame size"));
                rules.fail_safe()
            }
            Ok(info) => match GrayFrame::new(&frame_buf, info.width, info.height, info.stride) {
                Err(_) => {
                    faults.wrong_size_frame += 1;
                    fault = fault.or(Some("wrong frame size"));
                    rules.fail_safe()
                }
                Ok(frame) => match classifier.scores(&frame) {
                    Ok(scores) => {
                        let n = scores.len().min(MAX_CLASSES);
                        item_scores[..n].copy_from_slice(&scores[..n]);
                        item_scores[n..].fill(0.0);
                        rules.decide(scores)
                    }
                    Err(_) => {
                        faults.model += 1;
                        fault = fault.or(Some("model error"));
                        rules.fail_safe()
                    }
                },
            },
        };
        let now = clock.now();
        let late = now.us_since(captured);
        if late > deadline_us && fault.is_none() {
            faults.decision_overrun += 1;
            decision = rules.fail_safe();
            fault = Some("decision overrun");
        }
        let mut io_errors = 0;
        let mut line_stopped = false;
        let r = match lock.lock() {
            Ok(mut g) => {
                let r = g.tracker.decide(id, &decision, now);
                if fault.is_some() {
                    g.fault_at = Some(now);
                }
                io_errors = g.output_errors + g.input_errors;
                line_stopped = g.tracker.stats().line_stops > 0;
                r
            }
            Err(_) => Err(DecideError::UnknownItem),
        };
        cvar.notify_all();
        match r {
            Ok(()) => {}
            Err(DecideError::UnknownItem) if overflowed => decision = rules.fail_safe(),
            Err(_) => {
                // The item reached its deadline first: the fail-safe already applied.
                if fault.is_none() {
                    faults.decision_overrun += 1;
                    fault = Some("decision overrun");
                }
                decision = rules.fail_safe();
                note_fault(now);
            }
        }
        if fault.is_some() {
            counters.fault();
        }
        counters.record(&decision);
        latency.record(late);
        if audit_items.len() < audit_items.capacity() {
            audit_items.push(AuditItem {
                id,
                captured: item_at,
                action: decision.action,
            });
        } else {
            audit_truncated += 1;
        }
        let (source, label) = camera.last_source();
        let class_name = decision.class.and_then(|c| classes.get(c as usize)).map(String::as_str);
        let label = label.filter(|l| classes.iter().any(|c| c == l));
        if let Some(l) = label {
            labelled += 1;
            if decision.outcome != Outcome::FailSafe && class_name == Some(l) {
                correct += 1;
            }
        }
        on_item(&ItemReport {
            sequence: seq,
            source,
            label,
            decision,
            class_name,
            latency_us: late,
            fault,
        });
        if let Some(r) = recorder.as_mut() {
            let record = log_record(id, seq, &decision, fault, late);
            let n = classes.len().min(MAX_CLASSES);
            let frame = match (&result, fault) {
                (Ok(info), _) => Some((&frame_buf[..], info.width, info.height, info.stride)),
                _ => None,
            };
            let valid = decision.outcome != Outcome::FailSafe;
            r.item(
                &ItemRecord {
                    record,
                    scores: if valid { &item_scores[..n] } else { &[] },
                    frame,
                },
                classifier.boxes().filter(|_| valid),
            );
        }
        let now = clock.now();
        if let Some(f) = fault {
            let bit = match f {
                "corrupt frame" | "wrong frame size" => screen_fault::BAD_FRAMES,
                "model error" => screen_fault::MODEL_ERROR,
                "tracking overflow" => screen_fault::TOO_MANY_ITEMS,
                _ => screen_fault::DECISION_OVERRUN,
            };
            recent.note(bit, now);
        }
        if io_errors > seen_io_errors {
            seen_io_errors = io_errors;
            recent.note(screen_fault::GPIO_ERROR, now);
        }
        if line_stopped {
            recent.note(screen_fault::LINE_STOPPED, now);
        }
        let frame = match result {
            Ok(info) => Some((&frame_buf[..], info.width, info.height)),
            Err(_) => None,
        };
        show!(decision, class_name.or(fault), frame);
        if warm.is_none() {
            warm = Some((Snapshot::take_thread(), counters.inspected));
        }
    }
    // The frame loop's own thread: other threads (the actuator, the display, a test harness)
    // are not the frame path.
    let end = Snapshot::take_thread();
    let display = display.take().map(Display::stop);
    let records = recorder.map(|r| {
        let h = r.finish();
        h.to_json(started.elapsed().as_secs())
    });
    if let Ok(mut g) = lock.lock() {
        g.stop = true;
    }
    cvar.notify_all();
    let out = act.join().map_err(|_| anyhow!("actuator thread panicked"))?;
    for i in inputs {
        let _ = i.join();
    }
    let (tracker, fired) = match lock.lock() {
        Ok(mut g) => {
            faults.output += g.output_errors;
            faults.input += g.input_errors;
            counters.faults += g.output_errors + g.input_errors;
            (*g.tracker.stats(), std::mem::take(&mut g.fired))
        }
        Err(_) => (TrackerStats::default(), Vec::new()),
    };
    let (allocations_ours_after_warmup, allocations_tract_per_item) = match warm {
        Some((s, n)) if counters.inspected > n => {
            let items = (counters.inspected - n) as f64;
            (end.since(&s, Scope::Ours), end.since(&s, Scope::Tract) as f64 / items)
        }
        _ => (0, 0.0),
    };
    let timeline = out.events().to_vec();
    let audit = speed.map(|v| audit(&audit_items, &fired, &timeline, &ejectors, v));
    let m = classifier.manifest();
    Ok(Summary {
        station: cfg.station.name.clone(),
        model: format!("{} {} ({})", m.model.name, m.model.version, precision.name()),
        classes,
        ejectors: cfg.ejectors.iter().map(|e| e.name.clone()).collect(),
        counters,
        faults,
        tracker,
        latency,
        labelled,
        correct,
        timeline,
        audit,
        audit_truncated,
        allocations_ours_after_warmup,
        allocations_tract_per_item,
        camera: camera.stats(),
        camera_down_at_end: camera.is_down(),
        blind_items,
        injected: camera.injected(),
        display,
        records,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

/// Result of [`timing_bench`].
#[derive(Clone, Debug)]
pub struct TimingReport {
    /// Items sent (all rejected, to maximise pulses).
    pub items: u64,
    /// Whether the frame thread ran inference for every item.
    pub with_inference: bool,
    /// Pulse placement against true arrival.
    pub audit: RejectAudit,
    /// Edge error (actual − planned), p50 and p99, µs.
    pub edge_error_us: (u64, u64),
}

/// Real scheduling on this machine: the station's actuator thread and output backend, on the
/// monotonic clock, with items arriving at `rate_fps` on a belt at the configured speed, each
/// decided reject (alternating ejectors) — after a real inference on the frame thread when
/// `with_inference`, so the two threads compete as they do in the station.
pub fn timing_bench(cfg: &StationConfig, items: u32, rate_fps: f32, with_inference: bool) -> Result<TimingReport> {
    let clock = MonotonicClock::default();
    if let Some(b) = &cfg.board {
        b.apply_cpu_hints()?;
    }
    let precision = cfg.precision()?;
    let mut classifier = Tool::load(
        &cfg.tool.kind,
        Manifest::load(&cfg.resolve(&cfg.tool.manifest))?,
        precision,
        cfg.segment_rules()?,
    )?;
    let ejectors = cfg.ejectors(classifier.manifest())?;
    let speed = cfg.conveyor.belt_speed_mm_per_s.ok_or_else(|| {
        anyhow!(
            "{}: the timing bench needs `conveyor.belt_speed_mm_per_s`",
            cfg.path.display()
        )
    })?;
    let camera = ReplayCamera::open(&cfg.resolve(&cfg.camera.path), 1000.0, 1, clock)?;
    let frames: Vec<(usize, usize, Vec<u8>)> = camera
        .frames()
        .iter()
        .filter_map(|f| match &f.data {
            ReplayData::Gray { width, height, pixels } => Some((*width, *height, pixels.clone())),
            ReplayData::Jpeg { bytes, .. } => crate::sim::replay::decode_gray(bytes).ok(),
            ReplayData::Broken(_) => None,
        })
        .collect();
    if frames.is_empty() {
        anyhow::bail!("{}: no decodable frames", cfg.resolve(&cfg.camera.path).display());
    }
    // One class per ejector, so items alternate between them.
    let class_for: Vec<u8> = ejectors
        .iter()
        .map(|e| e.takes.classes.trailing_zeros().min(15) as u8)
        .collect();
    let tracker = Tracker::new(&ejectors, cfg.failsafe_policy(), Belt::from_speed(speed, clock.now()))
        .map_err(|e| anyhow!("{}: `[[ejectors]]`: {e:?}", cfg.path.display()))?;
    let shared = Shared::new_state(tracker, items as usize);
    let farthest = ejectors.iter().map(|e| e.ejector_distance_mm).fold(0.0f32, f32::max);
    let timing = ActuatorTiming {
        heartbeat_us: cfg.outputs.heartbeat_period_ms.max(1) as u64 * 1000,
        fault_hold_us: cfg.outputs.fault_hold_ms as u64 * 1000,
        max_sleep_us: 1_000_000,
        drain_us: (farthest as f64 / speed as f64 * 1e6) as u64 + 1_000_000,
    };
    let out = Outputs::Recording(RecordingOutput::new(clock, MAX_TIMELINE_EVENTS));
    let act = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("actuator".into())
            .spawn(move || actuator(shared, out, clock, timing))?
    };
    let period_us = (1e6 / rate_fps.max(0.1) as f64) as u64;
    let mut audit_items = Vec::with_capacity(items as usize);
    let start = clock.now().add_us(10_000);
    let (lock, cvar) = &*shared;
    for i in 0..items {
        clock.sleep_until(start.add_us(i as u64 * period_us));
        let captured = clock.now();
        let class = class_for[i as usize % class_for.len()];
        if with_inference {
            let (w, h, px) = &frames[i as usize % frames.len()];
            let f = GrayFrame::new(px, *w, *h, *w).map_err(|e| anyhow!("frame {i}: {e:?}"))?;
            classifier.scores(&f)?;
        }
        let d = Decision {
            outcome: Outcome::Reject,
            action: Action::Reject,
            class: Some(class),
            score: 1.0,
        };
        let now = clock.now();
        if let Ok(mut g) = lock.lock() {
            g.tracker.begin(i, captured);
            let _ = g.tracker.decide(i, &d, now);
        }
        cvar.notify_all();
        audit_items.push(AuditItem {
            id: i,
            captured,
            action: Action::Reject,
        });
    }
    if let Ok(mut g) = lock.lock() {
        g.stop = true;
    }
    cvar.notify_all();
    let out = act.join().map_err(|_| anyhow!("actuator thread panicked"))?;
    let fired = match lock.lock() {
        Ok(mut g) => std::mem::take(&mut g.fired),
        Err(_) => Vec::new(),
    };
    let timeline = out.events();
    Ok(TimingReport {
        items: items as u64,
        with_inference,
        audit: audit(&audit_items, &fired, timeline, &ejectors, speed),
        edge_error_us: edge_error_us(timeline),
    })
}
