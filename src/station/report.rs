//! Reporting: each decided item to the log line, the records and the technician's screen,
//! and the run's counters.
//!
//! Guarantees:
//! - reporting an item allocates nothing in our code after the first item (counters, latency
//!   and the audit are preallocated; the screen and the records take their copies into
//!   buffers of their own);
//! - the screen is offered the latest state and never waited for; a screen that cannot be
//!   opened is a logged fault and the station runs headless;
//! - each fault kind stays on the screen's fault strip for `outputs.fault_hold_ms` (at
//!   least 2 s) after it last happened;
//! - records, archive and MQTT are handed each item without blocking (`Recorder::item`).

use std::sync::Arc;

use anyhow::Result;

use super::capture::StationCamera;
use super::config::StationConfig;
use super::realtime::RealtimeReport;
use super::summary::{FaultCounts, ItemReport, Summary};
use super::tracking::{audit, AuditItem, Decided, FiredItem, Tracking};
use crate::alloc_count::{Scope, Snapshot};
use crate::core::counters::Counters;
use crate::core::decision::{Decision, Outcome};
use crate::core::latency::LatencyHistogram;
use crate::core::reject::{EjectorConfig, TrackerStats};
use crate::core::screen::{fault as screen_fault, set_text, ScreenOutcome, ScreenState};
use crate::core::time::Instant;
use crate::core::MAX_CLASSES;
use crate::display::fb::Framebuffer;
use crate::display::spi::{Controller, SpiPanel, SpiPanelConfig};
use crate::display::thread::{Display, DisplayStats};
use crate::display::{Panel, PngPanel};
use crate::hal::{Clock, FrameInfo};
use crate::plc::{PlcState, StationState};
use crate::records::log::{fault_code, LogRecord};
use crate::records::store::now_unix_ms;
use crate::records::{ItemRecord, Recorder, RecorderSetup};
use crate::sim::clock::MonotonicClock;
use crate::sim::recording::Event;
use crate::tools::Tool;

/// Open the configured screen. A screen that cannot be opened is a logged fault: the
/// station runs headless rather than not at all.
pub(super) fn open_display(cfg: &StationConfig) -> (Option<Display>, bool) {
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
    /// One slot per bit of the fault word (`u16`).
    at: [Option<Instant>; 16],
}

impl RecentFaults {
    fn note(&mut self, bit: u16, now: Instant) {
        self.at[bit.trailing_zeros() as usize % 16] = Some(now);
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
fn log_record(item: u32, frame_seq: u32, d: &Decision, fault: Option<&str>, latency_us: u64, recipe: u8) -> LogRecord {
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
        recipe,
    }
}

/// One item the frame loop decided, to report.
pub(super) struct Item<'a> {
    /// Its id in the register.
    pub(super) id: u32,
    /// Camera sequence number.
    pub(super) sequence: u32,
    /// Its reference time (trigger edge or frame).
    pub(super) at: Instant,
    /// The decision.
    pub(super) decision: Decision,
    /// What went wrong, for fail-safe items.
    pub(super) fault: Option<&'static str>,
    /// Capture to decision.
    pub(super) latency_us: u64,
    /// The file (replay) or device behind the frame, and the replay folder's label.
    pub(super) source: (&'a str, Option<&'a str>),
    /// The frame, when one was delivered.
    pub(super) frame: Option<(&'a [u8], FrameInfo)>,
    /// The frame's scores (first classes of the model).
    pub(super) scores: &'a [f32],
}

/// The recipes' names and model lines (by index), and where MQTT recipe commands go.
pub(super) type RecipeLabels<'a> = (
    &'a [String],
    &'a [String],
    Option<Arc<dyn crate::records::RecipeCommands>>,
);

/// The frame loop's reporting: counters, the audit, the log, records and the screen.
pub(super) struct Report<'c> {
    /// The station's configuration.
    cfg: &'c StationConfig,
    /// The model's class names.
    classes: Vec<String>,
    /// Per recipe: the screen's model line (the recipe's name and its model's name, version
    /// and precision; the model alone for a profile without `[[recipes]]`).
    model_lines: Vec<String>,
    /// The recipe deciding now (its index).
    recipe: usize,
    /// The recipes' names, by index.
    recipe_names: Vec<String>,
    /// The screen's model line is not the recipe's yet.
    recipe_changed: bool,
    /// Counters.
    pub(super) counters: Counters,
    /// Faults by kind.
    pub(super) faults: FaultCounts,
    latency: LatencyHistogram,
    labelled: u64,
    correct: u64,
    audit_items: Vec<AuditItem>,
    audit_truncated: u64,
    blind_items: u64,
    /// Allocation counts after the first item, and the items then.
    warm: Option<(Snapshot, u64)>,
    /// At the end of the frame loop: allocation counts, the screen's and the records' totals.
    end: Option<(Snapshot, Option<DisplayStats>, Option<serde_json::Value>)>,
    recent: RecentFaults,
    fault_hold_us: u64,
    recorder: Option<Recorder>,
    display: Option<Display>,
    /// What the `[realtime]` setup was refused: shown on the screen for the whole run.
    realtime: Arc<RealtimeReport>,
    /// The PLC's view of the station (`[modbus]`), when a server is configured.
    plc: Option<Arc<PlcState>>,
    seen_io_errors: u64,
    clock: MonotonicClock,
    started: std::time::Instant,
    /// When the frame loop started.
    pub(super) run_start: Instant,
}

impl<'c> Report<'c> {
    /// Open the screen and the records of `cfg`; room in the audit for `audit_cap` items.
    pub(super) fn start(
        cfg: &'c StationConfig,
        classes: Vec<String>,
        recipes: RecipeLabels<'_>,
        frame_bytes: usize,
        audit_cap: usize,
        realtime: Arc<RealtimeReport>,
        clock: MonotonicClock,
    ) -> Result<Report<'c>> {
        let (display, display_failed_at_start) = open_display(cfg);
        let mut recent = RecentFaults::default();
        if display_failed_at_start {
            recent.note(screen_fault::DISPLAY_ERROR, clock.now());
        }
        let fault_hold_us = (cfg.outputs.fault_hold_ms as u64 * 1000).max(2_000_000);
        let (records_sec, archive_sec, mqtt_sec) = cfg.record_sections();
        let recorder = Recorder::start(&RecorderSetup {
            config_path: &cfg.path,
            station: &cfg.station.name,
            classes: &classes,
            model: &recipes.1[0],
            recipes: recipes.0,
            recipe_models: recipes.1,
            recipe_commands: recipes.2,
            records: records_sec.as_ref(),
            archive: archive_sec.as_ref(),
            mqtt: mqtt_sec.as_ref(),
            frame_bytes,
        })?;
        if let Some(r) = recorder.as_ref().and_then(|r| r.recovery.as_ref()) {
            eprintln!("{r}");
        }
        let started = std::time::Instant::now();
        Ok(Report {
            cfg,
            classes,
            model_lines: match recipes.0.len() {
                1 => recipes.1.to_vec(),
                _ => recipes
                    .0
                    .iter()
                    .zip(recipes.1)
                    .map(|(r, m)| format!("{r}: {m}"))
                    .collect(),
            },
            recipe: 0,
            recipe_names: recipes.0.to_vec(),
            recipe_changed: false,
            counters: Counters::default(),
            faults: FaultCounts::default(),
            latency: LatencyHistogram::default(),
            labelled: 0,
            correct: 0,
            audit_items: Vec::with_capacity(audit_cap),
            audit_truncated: 0,
            blind_items: 0,
            warm: None,
            end: None,
            recent,
            fault_hold_us,
            recorder,
            display,
            realtime,
            plc: None,
            seen_io_errors: 0,
            clock,
            started,
            run_start: clock.now(),
        })
    }

    /// Hand the screen the latest state (never waits; see `Display::offer`). The class line
    /// shows the decision's class (when `with_class`), else `or_text`.
    fn show(
        &mut self,
        decision: Decision,
        with_class: bool,
        or_text: Option<&'static str>,
        frame: Option<(&[u8], usize, usize)>,
        tool: &Tool,
    ) {
        let Report {
            cfg,
            classes,
            model_lines,
            recipe,
            recipe_changed,
            counters,
            latency,
            recent,
            fault_hold_us,
            recorder,
            display,
            realtime,
            clock,
            run_start,
            ..
        } = self;
        if let Some(d) = display.as_mut() {
            let class = match with_class {
                true => decision.class.and_then(|c| classes.get(c as usize)).map(String::as_str),
                false => None,
            }
            .or(or_text);
            let now = clock.now();
            let new_recipe = std::mem::take(recipe_changed);
            let realtime_off = if realtime.refused() {
                screen_fault::REALTIME_OFF
            } else {
                0
            };
            let faults_now = recent.active(now, *fault_hold_us)
                | recorder.as_ref().map(Recorder::faults).unwrap_or(0)
                | realtime_off;
            let uptime_s = now.us_since(*run_start) / 1_000_000;
            let elapsed_min = (now.us_since(*run_start) as f32 / 60e6).max(1.0 / 60.0);
            d.offer(|st: &mut ScreenState| {
                if st.station.is_empty() || new_recipe {
                    set_text(&mut st.station, &cfg.station.name);
                    set_text(&mut st.model, &model_lines[*recipe]);
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
                        for (x0, y0, x1, y1) in tool.boxes() {
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
    }

    fn audit(&mut self, id: u32, captured: Instant, decision: &Decision) {
        if self.audit_items.len() < self.audit_items.capacity() {
            self.audit_items.push(AuditItem {
                id,
                captured,
                action: decision.action,
            });
        } else {
            self.audit_truncated += 1;
        }
    }

    /// Recipe `index` decides from the next item on: the records name it, the screen and the
    /// PLC show it. Allocates nothing.
    pub(super) fn set_recipe(&mut self, index: usize) {
        self.recipe = index.min(self.model_lines.len().saturating_sub(1));
        self.recipe_changed = true;
        if let Some(plc) = &self.plc {
            plc.set_recipe_active(self.recipe as u16);
        }
    }

    /// The recipe a PLC asked for (holding register 0) since the last call.
    pub(super) fn plc_recipe_request(&self) -> Option<usize> {
        self.plc.as_ref().and_then(|p| p.take_recipe_request()).map(usize::from)
    }

    /// Publish the run to `plc` from now on.
    pub(super) fn attach_plc(&mut self, plc: Arc<PlcState>) {
        self.plc = Some(plc);
    }

    /// Once per pass of the frame loop: a fault reset the PLC asked for, and the station's
    /// state as the PLC reads it.
    pub(super) fn plc_tick(&mut self) {
        let Some(plc) = &self.plc else { return };
        if plc.take_reset_faults() {
            self.recent = RecentFaults::default();
        }
        let faulted = self.recent.active(self.clock.now(), self.fault_hold_us) != 0;
        let state = match faulted {
            true => StationState::Faulted,
            false => StationState::Running,
        };
        plc.set_state(state, faulted);
    }

    /// Whether the PLC switched triggers off: the frame just taken is not an item (counted).
    pub(super) fn plc_ignores_frames(&self) -> bool {
        match &self.plc {
            Some(plc) if !plc.trigger_enabled() => {
                plc.note_ignored_trigger();
                true
            }
            _ => false,
        }
    }

    /// The frame loop took a frame and is inspecting it ("busy" for the PLC).
    pub(super) fn plc_busy(&self) {
        if let Some(plc) = &self.plc {
            plc.set_busy(true);
        }
    }

    fn publish_plc(&self, id: u32, decision: &Decision, fault: Option<&str>) {
        if let Some(plc) = &self.plc {
            plc.publish(id, decision, fault, self.counters.inspected, self.counters.rejected);
        }
    }

    /// An item the camera did not see (`why`: dropped frame, camera timeout, camera lost):
    /// into the register (when `begin`) and decided with `decision`, the fail-safe, at once.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn blind_item(
        &mut self,
        tracking: &Tracking,
        decision: Decision,
        (id, at): (u32, Instant),
        begin: bool,
        why: &'static str,
        tool: &Tool,
        on_item: &mut impl FnMut(&ItemReport<'_>),
    ) {
        let now = self.clock.now();
        if !tracking.decide_blind(id, at, begin, &decision, now) {
            self.faults.tracking_overflow += 1;
        }
        self.blind_items += 1;
        self.counters.record(&decision);
        self.audit(id, at, &decision);
        self.publish_plc(id, &decision, Some(why));
        on_item(&ItemReport {
            id,
            sequence: 0,
            source: why,
            label: None,
            decision,
            class_name: None,
            latency_us: now.us_since(at),
            fault: Some(why),
            recipe: &self.recipe_names[self.recipe],
        });
        if let Some(r) = self.recorder.as_mut() {
            let record = log_record(id, 0, &decision, Some(why), now.us_since(at), self.recipe as u8);
            r.item(
                &ItemRecord {
                    record,
                    scores: &[],
                    frame: None,
                },
                std::iter::empty(),
            );
        }
        self.recent.note(
            if why == "dropped frame" {
                screen_fault::BAD_FRAMES
            } else {
                screen_fault::CAMERA_LOST
            },
            now,
        );
        self.show(decision, false, Some(why), None, tool);
    }

    /// Note a fault kind for the screen's fault strip.
    pub(super) fn note(&mut self, bit: u16, now: Instant) {
        self.recent.note(bit, now);
    }

    /// A decided item: counters, latency, the audit, `on_item`, the records, the screen.
    pub(super) fn item(
        &mut self,
        it: &Item<'_>,
        decided: &Decided,
        tool: &Tool,
        on_item: &mut impl FnMut(&ItemReport<'_>),
    ) {
        let (decision, fault) = (it.decision, it.fault);
        if fault.is_some() {
            self.counters.fault();
        }
        self.counters.record(&decision);
        self.latency.record(it.latency_us);
        self.audit(it.id, it.at, &decision);
        let (source, label) = it.source;
        let classes = &self.classes;
        let class_name = decision.class.and_then(|c| classes.get(c as usize)).map(String::as_str);
        let label = label.filter(|l| classes.iter().any(|c| c == l));
        if let Some(l) = label {
            self.labelled += 1;
            if decision.outcome != Outcome::FailSafe && class_name == Some(l) {
                self.correct += 1;
            }
        }
        self.publish_plc(it.id, &decision, fault);
        on_item(&ItemReport {
            id: it.id,
            sequence: it.sequence,
            source,
            label,
            decision,
            class_name,
            latency_us: it.latency_us,
            fault,
            recipe: &self.recipe_names[self.recipe],
        });
        if let Some(r) = self.recorder.as_mut() {
            let record = log_record(it.id, it.sequence, &decision, fault, it.latency_us, self.recipe as u8);
            let n = classes.len().min(MAX_CLASSES);
            let frame = it.frame.map(|(px, info)| (px, info.width, info.height, info.stride));
            let valid = decision.outcome != Outcome::FailSafe;
            r.item(
                &ItemRecord {
                    record,
                    scores: if valid { &it.scores[..n] } else { &[] },
                    frame,
                },
                tool.boxes().filter(|_| valid),
            );
        }
        let now = self.clock.now();
        if let Some(f) = fault {
            let bit = match f {
                "corrupt frame" | "wrong frame size" => screen_fault::BAD_FRAMES,
                "model error" => screen_fault::MODEL_ERROR,
                "tracking overflow" => screen_fault::TOO_MANY_ITEMS,
                _ => screen_fault::DECISION_OVERRUN,
            };
            self.recent.note(bit, now);
        }
        if decided.io_errors > self.seen_io_errors {
            self.seen_io_errors = decided.io_errors;
            self.recent.note(screen_fault::GPIO_ERROR, now);
        }
        if decided.line_stopped {
            self.recent.note(screen_fault::LINE_STOPPED, now);
        }
        let frame = it.frame.map(|(px, info)| (px, info.width, info.height));
        self.show(decision, true, fault, frame, tool);
        if self.warm.is_none() {
            self.warm = Some((Snapshot::take_thread(), self.counters.inspected));
        }
    }

    /// The frame loop ended: take the allocation count of its thread, stop the screen and
    /// close the records (in that order: other threads are not the frame path).
    pub(super) fn close(&mut self) {
        if let Some(plc) = &self.plc {
            plc.set_state(StationState::Stopped, false);
        }
        let end = Snapshot::take_thread();
        let display = self.display.take().map(Display::stop);
        let started = self.started;
        let records = self.recorder.take().map(|r| {
            let h = r.finish();
            h.to_json(started.elapsed().as_secs())
        });
        self.end = Some((end, display, records));
    }

    /// The run's summary, after [`Report::close`] and after the other threads ended:
    /// `totals` from [`Tracking::totals`], the outputs' `timeline`, the audit's belt speed
    /// and ejectors (speed mode), the camera and the model's name.
    pub(super) fn summary(
        mut self,
        totals: Option<(u64, u64, TrackerStats, Vec<FiredItem>)>,
        timeline: Vec<Event>,
        audit_on: Option<(f32, &[EjectorConfig])>,
        camera: &StationCamera,
        model: String,
    ) -> Summary {
        let (tracker, fired) = match totals {
            Some((output_errors, input_errors, stats, fired)) => {
                self.faults.output += output_errors;
                self.faults.input += input_errors;
                self.counters.faults += output_errors + input_errors;
                (stats, fired)
            }
            None => (TrackerStats::default(), Vec::new()),
        };
        let (end, display, records) = match self.end.take() {
            Some((end, display, records)) => (Some(end), display, records),
            None => (None, None, None),
        };
        let (allocations_ours_after_warmup, allocations_tract_per_item) = match (self.warm, end) {
            (Some((s, n)), Some(end)) if self.counters.inspected > n => {
                let items = (self.counters.inspected - n) as f64;
                (end.since(&s, Scope::Ours), end.since(&s, Scope::Tract) as f64 / items)
            }
            _ => (0, 0.0),
        };
        let audit = audit_on.map(|(v, ejectors)| audit(&self.audit_items, &fired, &timeline, ejectors, v));
        Summary {
            station: self.cfg.station.name.clone(),
            model,
            classes: self.classes,
            ejectors: self.cfg.ejectors.iter().map(|e| e.name.clone()).collect(),
            counters: self.counters,
            faults: self.faults,
            tracker,
            latency: self.latency,
            labelled: self.labelled,
            correct: self.correct,
            timeline,
            audit,
            audit_truncated: self.audit_truncated,
            allocations_ours_after_warmup,
            allocations_tract_per_item,
            camera: camera.stats(),
            camera_down_at_end: camera.is_down(),
            blind_items: self.blind_items,
            injected: camera.injected(),
            display,
            encoder: None,
            records,
            duration_s: self.started.elapsed().as_secs_f64(),
            stop: Default::default(),
            reloads: 0,
            reloads_refused: 0,
            realtime: Vec::new(),
            cpu_steal_ms: None,
            modbus: None,
            coprocessor: None,
            recipes: None,
        }
    }
}
