//! The station: camera → tool → decision → reject timing → outputs, with counters.
//!
//! The frame loop runs on the calling thread; the actuator runs on its own thread and owns
//! the output backend, sleeping until the next pulse edge or heartbeat. They share the pulse
//! queue under a mutex. Every error on the frame path is a decision (the fail-safe action), a
//! fault counter and a log line; only start-up errors stop the station.

pub mod config;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::alloc_count::{Scope, Snapshot};
use crate::core::counters::Counters;
use crate::core::decision::{Action, Decision, Outcome};
use crate::core::frame::GrayFrame;
use crate::core::latency::LatencyHistogram;
use crate::core::reject::{Edge, RejectScheduler, ScheduleError};
use crate::hal::{Camera, CaptureError, Clock, OutputLine, RejectOutput};
use crate::sim::clock::MonotonicClock;
use crate::sim::recording::{Event, RecordingOutput, MAX_TIMELINE_EVENTS};
use crate::sim::replay::ReplayCamera;
use crate::tools::classify::Classifier;
use config::StationConfig;

/// Faults by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Frames that did not decode.
    pub corrupt_frame: u64,
    /// Frames of an unusable size.
    pub wrong_size_frame: u64,
    /// Camera timeouts and disconnects.
    pub camera: u64,
    /// Inference errors.
    pub model: u64,
    /// Decisions later than `decision_deadline_ms`.
    pub decision_overrun: u64,
    /// Rejects decided after the item passed the ejector.
    pub reject_too_late: u64,
    /// Pulse queue full.
    pub reject_queue_full: u64,
    /// Output writes that failed.
    pub output: u64,
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

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Station name.
    pub station: String,
    /// Model name, version and precision.
    pub model: String,
    /// Class names.
    pub classes: Vec<String>,
    /// Counters.
    pub counters: Counters,
    /// Faults by kind.
    pub faults: FaultCounts,
    /// Capture → decision latency.
    pub latency: LatencyHistogram,
    /// Items whose replay folder named a class of the model.
    pub labelled: u64,
    /// Of those, items whose decided class matched the folder.
    pub correct: u64,
    /// Recorded output timeline.
    pub timeline: Vec<Event>,
    /// Our allocations on the frame loop's thread after the first item (the promise is zero).
    pub allocations_ours_after_warmup: u64,
    /// tract's allocations per item after the first item.
    pub allocations_tract_per_item: f64,
    /// Wall time of the run.
    pub duration_s: f64,
}

impl Summary {
    /// Reject pulses in the timeline.
    pub fn pulses(&self) -> usize {
        self.timeline
            .iter()
            .filter(|e| matches!(e.line, OutputLine::Reject(_)) && e.active)
            .count()
    }

    /// Edge timing error (actual − planned) of the reject line: (p50, p99) in µs.
    pub fn timing_error_us(&self) -> (u64, u64) {
        let mut h = LatencyHistogram::default();
        for e in self.timeline.iter().filter(|e| matches!(e.line, OutputLine::Reject(_))) {
            h.record(e.actual.us_since(e.planned));
        }
        (h.percentile_us(50.0).unwrap_or(0), h.percentile_us(99.0).unwrap_or(0))
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.counters;
        let per_class: serde_json::Map<String, serde_json::Value> = self
            .classes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), json!(c.rejected_per_class[i])))
            .collect();
        let detected: serde_json::Map<String, serde_json::Value> = self
            .classes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), json!(c.per_class[i])))
            .collect();
        let f = &self.faults;
        let (te50, te99) = self.timing_error_us();
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
                "model": f.model, "decision_overrun": f.decision_overrun, "reject_too_late": f.reject_too_late,
                "reject_queue_full": f.reject_queue_full, "output": f.output,
            },
            "yield_percent": c.yield_percent(),
            "latency_ms_p50": self.latency.percentile_us(50.0).unwrap_or(0) as f64 / 1000.0,
            "latency_ms_p99": self.latency.percentile_us(99.0).unwrap_or(0) as f64 / 1000.0,
            "reject_pulses": self.pulses(),
            "timing_error_us_p50": te50,
            "timing_error_us_p99": te99,
            "labelled": self.labelled,
            "correct_vs_labels": self.correct,
            "allocations_ours_after_warmup": self.allocations_ours_after_warmup,
            "allocations_tract_per_item": self.allocations_tract_per_item,
            "duration_s": self.duration_s,
        })
    }
}

struct Shared {
    sched: RejectScheduler,
    healthy: bool,
    stop: bool,
    output_errors: u64,
}

type SharedState = Arc<(Mutex<Shared>, Condvar)>;

fn actuator(
    shared: SharedState,
    mut out: RecordingOutput,
    clock: MonotonicClock,
    heartbeat_us: u64,
) -> RecordingOutput {
    let (lock, cvar) = &*shared;
    let mut hb_level = false;
    let mut next_hb = clock.now();
    let Ok(mut g) = lock.lock() else { return out };
    loop {
        let now = clock.now();
        while let Some((edge, p)) = g.sched.poll(now) {
            let (active, at) = match edge {
                Edge::On => (true, p.on),
                Edge::Off => (false, p.off),
            };
            if out.set(OutputLine::Reject(0), active, at).is_err() {
                g.output_errors += 1;
            }
        }
        if now >= next_hb {
            let level = if g.healthy { !hb_level } else { false };
            if level != hb_level {
                hb_level = level;
                if out.set(OutputLine::Heartbeat, level, next_hb).is_err() {
                    g.output_errors += 1;
                }
            }
            next_hb = next_hb.add_us(heartbeat_us);
        }
        if g.stop && g.sched.pending() == 0 {
            if hb_level {
                let _ = out.set(OutputLine::Heartbeat, false, clock.now());
            }
            return out;
        }
        let next = g.sched.next_event().map_or(next_hb, |e| e.min(next_hb));
        let wait = next.us_since(clock.now()).max(1);
        g = match cvar.wait_timeout(g, Duration::from_micros(wait)) {
            Ok((g, _)) => g,
            Err(_) => return out,
        };
    }
}

/// Run the station described by `cfg` until the replay ends; `on_item` sees every item.
pub fn run(cfg: &StationConfig, mut on_item: impl FnMut(&ItemReport<'_>)) -> Result<Summary> {
    let clock = MonotonicClock::default();
    let precision = cfg.precision()?;
    let manifest_path = cfg.resolve(&cfg.tool.manifest);
    let mut classifier = Classifier::load(&manifest_path, precision).with_context(|| {
        format!(
            "{}: field `tool.manifest`: the station refuses to start",
            cfg.path.display()
        )
    })?;
    let rules = cfg.rules(classifier.manifest())?;
    let classes: Vec<String> = classifier.manifest().classes.iter().map(|c| c.name.clone()).collect();
    let replay_path = cfg.resolve(&cfg.camera.path);
    let mut camera = ReplayCamera::open(&replay_path, cfg.camera.rate_fps, cfg.camera.loops, clock)
        .with_context(|| format!("{}: field `camera.path`", cfg.path.display()))?;
    let mut frame_buf = vec![0u8; camera.max_frame_bytes().max(1)];
    if let Some(Ok((w, h, _))) = camera.frames().first().map(|f| &f.pixels) {
        classifier.prepare(*w, *h);
    }
    let sched = RejectScheduler::new(cfg.ejector(), cfg.conveyor.belt_speed_mm_per_s);
    let shared: SharedState = Arc::new((
        Mutex::new(Shared {
            sched,
            healthy: true,
            stop: false,
            output_errors: 0,
        }),
        Condvar::new(),
    ));
    let out = RecordingOutput::new(clock, MAX_TIMELINE_EVENTS);
    let heartbeat_us = cfg.outputs.heartbeat_period_ms.max(1) as u64 * 1000;
    let act = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("actuator".into())
            .spawn(move || actuator(shared, out, clock, heartbeat_us))?
    };

    let deadline_us = cfg.decision.decision_deadline_ms as u64 * 1000;
    let mut counters = Counters::default();
    let mut faults = FaultCounts::default();
    let mut latency = LatencyHistogram::default();
    let (mut labelled, mut correct) = (0u64, 0u64);
    let mut warm: Option<(Snapshot, u64)> = None;
    let started = std::time::Instant::now();
    loop {
        let captured_guess = clock.now();
        let result = camera.capture(&mut frame_buf);
        let (decision, fault, seq, captured) = match result {
            Err(CaptureError::EndOfStream) => break,
            Err(CaptureError::Timeout) | Err(CaptureError::Disconnected) => {
                faults.camera += 1;
                counters.fault();
                continue;
            }
            Err(CaptureError::Corrupt { sequence }) => {
                faults.corrupt_frame += 1;
                counters.fault();
                (
                    rules.fail_safe(),
                    Some("corrupt frame"),
                    sequence,
                    clock.now().max(captured_guess),
                )
            }
            Err(CaptureError::WrongSize { sequence, .. }) => {
                faults.wrong_size_frame += 1;
                counters.fault();
                (
                    rules.fail_safe(),
                    Some("wrong frame size"),
                    sequence,
                    clock.now().max(captured_guess),
                )
            }
            Ok(info) => {
                let decided = match GrayFrame::new(&frame_buf, info.width, info.height, info.stride) {
                    Err(_) => {
                        faults.wrong_size_frame += 1;
                        counters.fault();
                        (rules.fail_safe(), Some("wrong frame size"))
                    }
                    Ok(frame) => match classifier.classify(&frame) {
                        Ok(scores) => (rules.decide(scores), None),
                        Err(_) => {
                            faults.model += 1;
                            counters.fault();
                            (rules.fail_safe(), Some("model error"))
                        }
                    },
                };
                (decided.0, decided.1, info.sequence, info.captured)
            }
        };
        let now = clock.now();
        let late = now.us_since(captured);
        let (decision, fault) = if late > deadline_us && fault.is_none() {
            faults.decision_overrun += 1;
            counters.fault();
            (rules.fail_safe(), Some("decision overrun"))
        } else {
            (decision, fault)
        };
        counters.record(&decision);
        latency.record(late);
        if decision.action == Action::Reject {
            let (lock, cvar) = &*shared;
            let r = match lock.lock() {
                Ok(mut g) => g.sched.schedule(captured, now),
                Err(_) => Err(ScheduleError::Full),
            };
            match r {
                Ok(_) => cvar.notify_one(),
                Err(ScheduleError::TooLate { .. }) => {
                    faults.reject_too_late += 1;
                    counters.fault();
                }
                Err(_) => {
                    faults.reject_queue_full += 1;
                    counters.fault();
                }
            }
        }
        let frame = camera.frame_for_sequence(seq);
        let class_name = decision.class.and_then(|c| classes.get(c as usize)).map(String::as_str);
        let label = frame.label.as_deref().filter(|l| classes.iter().any(|c| c == l));
        if let Some(l) = label {
            labelled += 1;
            if decision.outcome != Outcome::FailSafe && class_name == Some(l) {
                correct += 1;
            }
        }
        let source = frame.path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        on_item(&ItemReport {
            sequence: seq,
            source,
            label,
            decision,
            class_name,
            latency_us: late,
            fault,
        });
        if warm.is_none() {
            warm = Some((Snapshot::take_thread(), counters.inspected));
        }
    }
    // The frame loop's own thread: other threads (the actuator, a test harness) are not the
    // frame path.
    let end = Snapshot::take_thread();
    {
        let (lock, cvar) = &*shared;
        if let Ok(mut g) = lock.lock() {
            g.stop = true;
        }
        cvar.notify_one();
    }
    let out = act.join().map_err(|_| anyhow::anyhow!("actuator thread panicked"))?;
    if let Ok(g) = shared.0.lock() {
        faults.output += g.output_errors;
        counters.faults += g.output_errors;
    }
    let (allocations_ours_after_warmup, allocations_tract_per_item) = match warm {
        Some((s, n)) if counters.inspected > n => {
            let items = (counters.inspected - n) as f64;
            (end.since(&s, Scope::Ours), end.since(&s, Scope::Tract) as f64 / items)
        }
        _ => (0, 0.0),
    };
    let m = classifier.manifest();
    Ok(Summary {
        station: cfg.station.name.clone(),
        model: format!("{} {} ({})", m.model.name, m.model.version, precision.name()),
        classes,
        counters,
        faults,
        latency,
        labelled,
        correct,
        timeline: out.events().to_vec(),
        allocations_ours_after_warmup,
        allocations_tract_per_item,
        duration_s: started.elapsed().as_secs_f64(),
    })
}
