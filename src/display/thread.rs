//! The display thread: the frame path offers its latest [`ScreenState`] into a one-slot
//! mailbox and never waits; the display thread takes the newest state at its refresh rate and
//! draws it. States offered faster than the screen refreshes replace each other (counted as
//! dropped), so a slow panel costs the frame path nothing but a copy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use embedded_graphics::prelude::OriginDimensions;

use crate::core::screen::{counters_region, draw, draw_counters, fault, ScreenState};

use super::{Canvas, Panel};

struct Slot {
    state: Box<ScreenState>,
    fresh: bool,
    offered: u64,
    replaced: u64,
}

/// What the display thread did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DisplayStats {
    /// States the frame path offered.
    pub offered: u64,
    /// States replaced by a newer one before they were drawn, or skipped because the display
    /// thread was copying the previous one at that instant.
    pub dropped: u64,
    /// Full redraws.
    pub full_draws: u64,
    /// Counter-only redraws (partial updates).
    pub partial_draws: u64,
    /// Panel writes that failed.
    pub errors: u64,
    /// The last failure, in words.
    pub last_error: Option<String>,
    /// Median time of one full draw + flush, ms.
    pub full_draw_ms_p50: f64,
}

/// The frame path's handle on the display thread.
pub struct Display {
    slot: Arc<Mutex<Slot>>,
    stop: Arc<AtomicBool>,
    busy: u64,
    failed: Arc<AtomicBool>,
    thread: Option<JoinHandle<DisplayStats>>,
}

impl Display {
    /// Start drawing on `panel` at `refresh_hz`.
    pub fn spawn(mut panel: Box<dyn Panel>, refresh_hz: f32) -> std::io::Result<Display> {
        let slot = Arc::new(Mutex::new(Slot {
            state: Box::default(),
            fresh: false,
            offered: 0,
            replaced: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let period = Duration::from_secs_f32(1.0 / refresh_hz.clamp(0.1, 120.0));
        let thread = {
            let (slot, stop, failed) = (slot.clone(), stop.clone(), failed.clone());
            std::thread::Builder::new().name("display".into()).spawn(move || {
                let (w, h) = panel.size();
                let mut canvas = Canvas::new(w, h);
                let mut local: Box<ScreenState> = Box::default();
                let mut stats = DisplayStats::default();
                let mut drawn: Option<(u64, u64, u16)> = None;
                let mut times = Vec::with_capacity(1024);
                let mut next = Instant::now();
                loop {
                    let stopping = stop.load(Ordering::Relaxed);
                    let fresh = match slot.lock() {
                        Ok(mut s) => {
                            let f = s.fresh;
                            if f {
                                local.clone_from(&s.state);
                                s.fresh = false;
                            }
                            stats.offered = s.offered;
                            stats.dropped = s.replaced;
                            f
                        }
                        Err(_) => false,
                    };
                    if fresh {
                        let key = (local.inspected, local.uptime_s, local.faults);
                        let t = Instant::now();
                        let r = match drawn {
                            // Only counters or faults changed: repaint and send that region.
                            Some((n, up, _)) if n == local.inspected && up == local.uptime_s => {
                                let _ = draw_counters(&local, &mut canvas);
                                stats.partial_draws += 1;
                                panel.flush(&canvas, Some(counters_region(canvas.size())))
                            }
                            _ => {
                                let _ = draw(&local, &mut canvas);
                                stats.full_draws += 1;
                                let r = panel.flush(&canvas, None);
                                if times.len() < times.capacity() {
                                    times.push(t.elapsed().as_secs_f64() * 1e3);
                                }
                                r
                            }
                        };
                        drawn = Some(key);
                        if let Err(e) = r {
                            stats.errors += 1;
                            if stats.errors == 1 || stats.errors % 100 == 0 {
                                eprintln!("display: {e} ({} failures so far)", stats.errors);
                            }
                            stats.last_error = Some(e.0);
                            failed.store(true, Ordering::Relaxed);
                        }
                    }
                    if stopping {
                        break;
                    }
                    next += period;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
                times.sort_by(|a, b| a.total_cmp(b));
                stats.full_draw_ms_p50 = times.get(times.len() / 2).copied().unwrap_or(0.0);
                stats
            })?
        };
        Ok(Display {
            slot,
            stop,
            busy: 0,
            failed,
            thread: Some(thread),
        })
    }

    /// Offer the latest state: `fill` updates the mailbox's state in place. Never waits: if
    /// the display thread is copying the previous state this instant, this one is skipped
    /// (the next item brings a newer one). Returns whether it was taken.
    pub fn offer(&mut self, fill: impl FnOnce(&mut ScreenState)) -> bool {
        match self.slot.try_lock() {
            Ok(mut s) => {
                fill(&mut s.state);
                if self.failed.load(Ordering::Relaxed) {
                    s.state.faults |= fault::DISPLAY_ERROR;
                }
                if s.fresh {
                    s.replaced += 1;
                }
                s.fresh = true;
                s.offered += 1;
                true
            }
            Err(TryLockError::WouldBlock) | Err(TryLockError::Poisoned(_)) => {
                self.busy += 1;
                false
            }
        }
    }

    /// Whether the panel has failed since start.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Draw what was offered last, stop the thread and say what it did.
    pub fn stop(mut self) -> DisplayStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut stats = self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default();
        stats.dropped += self.busy;
        stats.offered += self.busy;
        stats
    }
}
