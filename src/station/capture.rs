//! Capture: the station's camera, and the items a frame (or a missing frame) stands for.
//!
//! The camera is a replay or a live V4L2 camera, each under supervision
//! ([`Supervised`]): a camera that is lost or silent is reopened with backoff until it
//! returns, and the station keeps running meanwhile.
//!
//! Guarantees:
//! - the camera never stops the station: a missing V4L2 node at start-up runs blind (every
//!   item fail-safe) until the device appears; only a camera that is there and refuses the
//!   settings is a start-up error;
//! - the belt that passed a blind camera is accounted for: frames the driver dropped (a gap in
//!   its sequence numbers) and the frame periods of a timeout or outage become items, one per
//!   frame period (free-run) or one per trigger edge, each given the fail-safe;
//! - one capture adds at most [`MAX_BLIND_ITEMS_PER_CAPTURE`] such items, so one loop
//!   iteration stays bounded however long the outage;
//! - free-run items get the station's own ids (camera sequences restart on reconnect);
//! - the frame buffer is sized once, for the largest frame, before the first capture.

use anyhow::{Context, Result};

use super::config::StationConfig;
use super::tracking::{Tracking, MAX_AUDIT_ITEMS};
use crate::camera::supervisor::{CameraStats, Supervised};
use crate::core::time::Instant;
use crate::drivers::v4l2::{TriggerMode, V4l2Camera};
use crate::hal::{CaptureError, FrameInfo};
use crate::sim::clock::MonotonicClock;
use crate::sim::replay::{InjectedFaults, ReplayCamera};

/// Most fail-safe items one capture adds for frames the camera did not deliver (a dropped
/// frame gap, or the frame periods of one timeout or outage spell): bounds one iteration.
pub const MAX_BLIND_ITEMS_PER_CAPTURE: u64 = 64;

/// The station's camera: a replay or a live V4L2 camera, each under supervision.
pub(super) enum StationCamera {
    /// A folder or list of images played like a free-running camera.
    Replay(Supervised<ReplayCamera>),
    /// A live camera; `name` is its device node, for the log.
    V4l2 {
        /// The camera.
        cam: Supervised<V4l2Camera>,
        /// Its device node.
        name: String,
    },
}

impl StationCamera {
    pub(super) fn capture_after(&mut self, after: Option<Instant>, buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
        match self {
            StationCamera::Replay(c) => c.capture_after(after, buf),
            StationCamera::V4l2 { cam, .. } => cam.capture_after(after, buf),
        }
    }

    pub(super) fn stats(&self) -> CameraStats {
        match self {
            StationCamera::Replay(c) => c.stats(),
            StationCamera::V4l2 { cam, .. } => cam.stats(),
        }
    }

    pub(super) fn last_gap(&self) -> u32 {
        match self {
            StationCamera::Replay(c) => c.last_gap(),
            StationCamera::V4l2 { cam, .. } => cam.last_gap(),
        }
    }

    pub(super) fn is_down(&self) -> bool {
        match self {
            StationCamera::Replay(c) => c.is_down(),
            StationCamera::V4l2 { cam, .. } => cam.is_down(),
        }
    }

    /// The file (replay) or device behind the last capture, and the replay folder's label.
    pub(super) fn last_source(&self) -> (&str, Option<&str>) {
        match self {
            StationCamera::Replay(c) => match c.inner().last_frame() {
                Some(f) => (f.file_name(), f.label.as_deref()),
                None => ("?", None),
            },
            StationCamera::V4l2 { name, .. } => (name.as_str(), None),
        }
    }

    pub(super) fn injected(&self) -> Option<InjectedFaults> {
        match self {
            StationCamera::Replay(c) => Some(c.inner().injected()),
            StationCamera::V4l2 { .. } => None,
        }
    }
}

/// What the station needs to know about its camera before the first frame.
pub(super) struct CameraSetup {
    pub(super) camera: StationCamera,
    /// Largest frame, bytes (gray).
    pub(super) frame_bytes: usize,
    /// Largest frame size, to size the tool's buffers once (a smaller frame then fits).
    pub(super) largest_size: Option<(usize, usize)>,
    /// Nominal frame period.
    pub(super) period_us: u64,
    /// Items a run is expected to see (sizes the audit).
    pub(super) expected_items: usize,
}

pub(super) fn open_camera(cfg: &StationConfig, clock: MonotonicClock) -> Result<CameraSetup> {
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

/// The item a delivered frame belongs to.
pub(super) struct FrameItem {
    /// Its id in the register.
    pub(super) id: u32,
    /// Its reference time: its trigger edge (the sensor's position) or its frame.
    pub(super) at: Instant,
    /// Free-run: the register was full and the item merged into the previous one; its own
    /// decision no longer counts.
    pub(super) overflowed: bool,
}

/// The frame loop's capture state: the camera, its buffer and the items it has begun.
pub(super) struct Capture {
    /// The camera.
    pub(super) camera: StationCamera,
    /// The frame of the current item (gray, the largest frame's size).
    pub(super) frame_buf: Vec<u8>,
    /// Free-run or triggered.
    pub(super) mode: TriggerMode,
    /// Nominal frame period.
    period_us: u64,
    /// When the frame loop started.
    run_start: Instant,
    /// Free-run: the next item's id.
    next_id: u32,
    /// Free-run: the reference time of the last item begun (seen or blind).
    last_item_at: Option<Instant>,
}

impl Capture {
    /// Capture state for `camera`, whose frames fit `frame_buf`, from `run_start` on.
    pub(super) fn new(
        camera: StationCamera,
        frame_buf: Vec<u8>,
        mode: TriggerMode,
        period_us: u64,
        run_start: Instant,
    ) -> Capture {
        Capture {
            camera,
            frame_buf,
            mode,
            period_us,
            run_start,
            next_id: 0,
            last_item_at: None,
        }
    }

    /// The next frame, exposed after `after` (a software trigger's edge) when given.
    pub(super) fn capture(&mut self, after: Option<Instant>) -> Result<FrameInfo, CaptureError> {
        self.camera.capture_after(after, &mut self.frame_buf)
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// A capture found no camera or no frame at `now`: `blind(id, at, begin)` for each item
    /// the camera missed — free-run: one per frame period since the last item; software
    /// trigger: the edge this capture was for; external trigger: every edge waiting.
    pub(super) fn blind_spell(
        &mut self,
        now: Instant,
        trigger: Option<(u32, Instant)>,
        tracking: &Tracking,
        mut blind: impl FnMut(u32, Instant, bool),
    ) {
        match self.mode {
            TriggerMode::FreeRun => {
                // One fail-safe item per frame period the camera was blind.
                let mut t = self.last_item_at.unwrap_or(self.run_start);
                let mut n = 0;
                while t.add_us(self.period_us) <= now && n < MAX_BLIND_ITEMS_PER_CAPTURE {
                    t = t.add_us(self.period_us);
                    n += 1;
                    let id = self.take_id();
                    blind(id, t, true);
                }
                if n > 0 {
                    self.last_item_at = Some(if n == MAX_BLIND_ITEMS_PER_CAPTURE { now } else { t });
                }
            }
            TriggerMode::Software => {
                if let Some((id, at)) = trigger {
                    blind(id, at, false);
                }
            }
            TriggerMode::External => {
                // Every trigger that came and went without a frame.
                loop {
                    let t = tracking.pop_trigger();
                    let Some((id, at)) = t else { break };
                    blind(id, at, false);
                }
            }
        }
    }

    /// The driver dropped `gap` frames before the one captured at `captured`: free-run,
    /// `blind(id, at)` for each, spread between the last item and this frame.
    pub(super) fn dropped(&mut self, gap: u64, captured: Instant, mut blind: impl FnMut(u32, Instant)) {
        if self.mode == TriggerMode::FreeRun {
            // The dropped frames' items, spread between the last item and this frame.
            let prev = self.last_item_at.unwrap_or(self.run_start).min(captured);
            let span = captured.us_since(prev);
            for k in 1..=gap.min(MAX_BLIND_ITEMS_PER_CAPTURE) {
                let id = self.take_id();
                blind(id, prev.add_us(span * k / (gap + 1)));
            }
        }
    }

    /// The item of the frame captured at `captured` (after `trigger`, software trigger).
    /// Free-run: it enters the register now, before inference. `None`: external trigger
    /// with no edge waiting (an untriggered frame).
    pub(super) fn item_for(
        &mut self,
        captured: Instant,
        trigger: Option<(u32, Instant)>,
        tracking: &Tracking,
    ) -> Option<FrameItem> {
        let (id, at, overflowed) = match self.mode {
            TriggerMode::Software => {
                let (id, at) = trigger.unwrap_or((0, captured));
                (id, at, false)
            }
            TriggerMode::External => {
                let (id, at) = tracking.pop_trigger()?;
                (id, at, false)
            }
            TriggerMode::FreeRun => {
                let id = self.take_id();
                self.last_item_at = Some(captured);
                (id, captured, !tracking.begin(id, captured))
            }
        };
        Some(FrameItem { id, at, overflowed })
    }
}
