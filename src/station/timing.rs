//! The timing bench: the station's actuator thread and output backend on this machine's
//! monotonic clock, against each item's true arrival (`ferroscope bench-timing`).
//!
//! Guarantees:
//! - the actuator thread, the queues to it and the recording backend are the ones the
//!   station runs, not copies, with the profile's `[realtime]` settings: what is measured is
//!   what fires the rejects;
//! - with inference on, the frame thread runs a real model on a real frame for every item, so
//!   the two threads compete for the machine as they do in the station;
//! - every item is decided reject (alternating ejectors), so every item is a pulse to place;
//! - items pass the camera at exact times (as a camera stamps frames at exposure): a frame
//!   thread that wakes late delays a decision, never moves an item.

use anyhow::{anyhow, Result};

use super::actuate::{spawn, timing_of, ActuatorParts, ActuatorTiming, Outputs};
use super::config::StationConfig;
use super::realtime::{hold_cpu_latency, RealtimeReport};
use super::tracking::{audit, edge_error_us, AuditItem, Queues, RejectAudit, Signals, Tracking};
use crate::core::belt::Belt;
use crate::core::decision::{Action, Decision, Outcome};
use crate::core::frame::GrayFrame;
use crate::core::reject::Tracker;
use crate::hal::Clock;
use crate::model::manifest::Manifest;
use crate::sim::clock::MonotonicClock;
use crate::sim::recording::{RecordingOutput, MAX_TIMELINE_EVENTS};
use crate::sim::replay::{ReplayCamera, ReplayData};
use crate::tools::Tool;

/// Result of [`timing_bench`].
#[derive(Clone, Debug)]
pub struct TimingReport {
    /// Items sent (all rejected, to maximise pulses).
    pub items: u64,
    /// Whether the frame thread ran inference for every item.
    pub with_inference: bool,
    /// Pulse placement against true arrival.
    pub audit: RejectAudit,
    /// Edge error (actual − planned), p50, p99 and max, µs.
    pub edge_error_us: (u64, u64, u64),
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
    let timing = ActuatorTiming {
        max_sleep_us: 1_000_000,
        ..timing_of(cfg, &ejectors, Some(speed))
    };
    let out = Outputs::Recording(RecordingOutput::new(clock, MAX_TIMELINE_EVENTS));
    let _cpu_latency = hold_cpu_latency(&cfg.realtime, &RealtimeReport::default());
    let signals = Signals::default();
    let mut queues = Queues::new();
    let ends = queues.split();
    let period_us = (1e6 / rate_fps.max(0.1) as f64) as u64;
    let mut audit_items = Vec::with_capacity(items as usize);
    let end = std::thread::scope(|scope| -> Result<_> {
        let parts = ActuatorParts {
            tracker,
            fired_capacity: items as usize,
            ends: ends.actuator,
            signals: &signals,
            frame: std::thread::current(),
        };
        let act = spawn(scope, cfg, parts, out, timing, clock, &Default::default())?;
        let tracking = Tracking::new(ends.frame, &signals, act.thread().clone(), clock);
        let start = clock.now().add_us(10_000);
        for i in 0..items {
            // The item passes the camera at its time whenever this thread wakes: a camera
            // stamps its frames at exposure, not when the frame thread gets to them.
            let captured = start.add_us(i as u64 * period_us);
            clock.sleep_until(captured);
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
            tracking.begin(i, captured);
            let _ = tracking.decide(i, &d, clock.now(), false);
            audit_items.push(AuditItem {
                id: i,
                captured,
                action: Action::Reject,
            });
        }
        tracking.stop();
        act.join().map_err(|_| anyhow!("actuator thread panicked"))
    })?;
    let fired = end.fired;
    let out = end.out;
    let timeline = out.events();
    Ok(TimingReport {
        items: items as u64,
        with_inference,
        audit: audit(&audit_items, &fired, timeline, &ejectors, speed),
        edge_error_us: edge_error_us(timeline),
    })
}
