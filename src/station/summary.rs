//! What a run reports: each decided item as it happens, and the summary at the end.
//!
//! Guarantees:
//! - [`ItemReport`] borrows everything it names: reporting an item allocates nothing;
//! - [`Summary::to_json`] keeps its field names: scripts, dashboards and tests read them;
//! - every fault is counted once, by kind ([`FaultCounts`]), and also in the counters' total.

use serde_json::json;

use super::lifecycle::StopReport;
use super::tracking::{edge_error_us, RejectAudit};
use crate::camera::supervisor::CameraStats;
use crate::core::calibration::travel_distance_mm;
use crate::core::counters::Counters;
use crate::core::decision::Decision;
use crate::core::latency::LatencyHistogram;
use crate::core::reject::TrackerStats;
use crate::display::thread::DisplayStats;
use crate::hal::OutputLine;
use crate::sim::recording::Event;
use crate::sim::replay::InjectedFaults;

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
    /// Commands, answers and sensor edges dropped because their queue to or from the
    /// actuator was full.
    pub queue_overflow: u64,
    /// Encoder faults from lost events: gaps in the kernel's sequence numbers, quadrature
    /// edges that changed nothing. Each gave the items in flight the fail-safe.
    pub encoder_lost_events: u64,
    /// Part-present edges that found the encoder standing still
    /// (`inputs.encoder.standstill_ms`). Each gave the items in flight the fail-safe.
    pub encoder_standstill: u64,
}

/// What the encoder input read (encoder mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncoderStats {
    /// Line events read from the kernel (or the simulated encoder), every channel.
    pub events: u64,
    /// The count at the end of the run: counts forward minus counts back.
    pub count: i64,
    /// Events missing from the kernel's sequence numbers, all gaps together (each gap is
    /// also one `encoder_lost_events` fault).
    pub missing_events: u64,
}

/// One decided item, for the log.
#[derive(Clone, Copy, Debug)]
pub struct ItemReport<'a> {
    /// The item's ID in the register: the inspection ID a PLC reads.
    pub id: u32,
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
    /// The recipe that decided it (`station.recipe` or a `[[recipes]]` name).
    pub recipe: &'a str,
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
    /// Items left out of the audit (beyond [`MAX_AUDIT_ITEMS`](super::MAX_AUDIT_ITEMS)).
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
    /// What the encoder input read (none: speed mode).
    pub encoder: Option<EncoderStats>,
    /// Records, archive and MQTT counters (`health` message fields), when configured.
    pub records: Option<serde_json::Value>,
    /// Wall time of the run.
    pub duration_s: f64,
    /// What ended the run and how the belt was drained.
    pub stop: StopReport,
    /// Profile reloads applied (new decision rules taken) during the run.
    pub reloads: u64,
    /// Profile reloads refused (the running rules stayed).
    pub reloads_refused: u64,
    /// What the `[realtime]` setup did, per thread, in words.
    pub realtime: Vec<String>,
    /// CPU time a hypervisor took from this machine during the run, all CPUs, ms (none: not
    /// known). On a virtual machine a pulse can be late by what was stolen while it was due;
    /// a board has none.
    pub cpu_steal_ms: Option<f64>,
    /// The Modbus server's counters (`[modbus]`), when one ran.
    pub modbus: Option<serde_json::Value>,
    /// The reject co-processor's link (`outputs.backend = "coprocessor"`), when one ran.
    pub coprocessor: Option<serde_json::Value>,
    /// With `[[recipes]]`: their names, the one active at the end, switches applied and
    /// refused.
    pub recipes: Option<serde_json::Value>,
}

impl Summary {
    /// Reject pulses in the timeline, all ejectors.
    pub fn pulses(&self) -> usize {
        self.timeline
            .iter()
            .filter(|e| matches!(e.line, OutputLine::Reject(_)) && e.active)
            .count()
    }

    /// Edge scheduling error (actual − planned) of the reject lines: (p50, p99, max) in µs.
    pub fn edge_error_us(&self) -> (u64, u64, u64) {
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
        let (ee50, ee99, ee_max) = self.edge_error_us();
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
        let encoder = self
            .encoder
            .map(|e| json!({ "events": e.events, "count": e.count, "missing_events": e.missing_events }));
        let injected = self.injected.map(|i| {
            json!({
                "dropped": i.dropped, "corrupted": i.corrupted, "disconnects": i.disconnects,
            })
        });
        let mut j = json!({
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
                "queue_overflow": f.queue_overflow, "encoder_lost_events": f.encoder_lost_events,
                "encoder_standstill": f.encoder_standstill,
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
        });
        j["stop"] = json!({
            "cause": self.stop.cause,
            "drain_ms": self.stop.drain_ms,
            "end_after_last_pulse_ms": self.stop.end_after_last_pulse_ms,
            "drain_timed_out": self.stop.drain_timed_out,
        });
        j["encoder"] = json!(encoder);
        j["reloads"] = json!(self.reloads);
        j["reloads_refused"] = json!(self.reloads_refused);
        j["realtime"] = json!(self.realtime);
        j["cpu_steal_ms"] = json!(self.cpu_steal_ms);
        j["modbus"] = json!(self.modbus);
        if let Some(c) = &self.coprocessor {
            j["coprocessor"] = c.clone();
        }
        j["recipes"] = json!(self.recipes);
        j["pulses_over_100_us"] = json!(self.audit.as_ref().map(|a| a.pulses_over_late_limit));
        j["missed_late_output"] = json!(self.audit.as_ref().map(|a| a.missed_late_output));
        j["missed_ids"] = json!(self.audit.as_ref().map(|a| &a.missed_ids));
        j["edge_error_us_max"] = json!(ee_max);
        j
    }
}
