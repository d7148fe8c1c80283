//! Inputs: the threads that feed sensor edges into the tracker.
//!
//! An encoder input moves the belt model by one count per edge; a part-present (trigger)
//! input begins one item per edge, at the edge's time, and queues it for its frame.
//!
//! Guarantees:
//! - edge times are the kernel's timestamps (GPIO) or exact (the simulated sensor), never the
//!   time a thread happened to wake;
//! - a read error is counted as an input error and held as a fault for the heartbeat; the
//!   thread waits 100 ms and reads on — an input never stops the station;
//! - trigger items get ids from `0x8000_0001` up, apart from the free-run ids;
//! - each thread runs with `realtime.input_priority` and `realtime.cpus` when the process
//!   may ([`super::realtime`]);
//! - the trigger thread ends within 100 ms of the frame loop stopping; the encoder thread
//!   counts on while the actuator drains the belt, and ends within 100 ms after it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::config::{InputLineSection, StationConfig};
use super::realtime::{setup_thread, RealtimeReport};
use super::tracking::SharedState;
use crate::core::time::Instant;
use crate::drivers::gpio::EdgeInput;
use crate::hal::Clock;
use crate::sim::clock::MonotonicClock;

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
        let done = match role {
            InputRole::Encoder => g.inputs_stop,
            InputRole::Trigger => g.stop,
        };
        if done {
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

/// Open the configured inputs (encoder, trigger) and start a thread for each on `shared`.
pub(super) fn spawn(
    cfg: &StationConfig,
    shared: &SharedState,
    clock: MonotonicClock,
    report: &Arc<RealtimeReport>,
) -> Result<Vec<JoinHandle<()>>> {
    let mut inputs = Vec::new();
    if let Some(l) = &cfg.inputs.encoder {
        let input = open_input(cfg, l, clock, "encoder")?;
        let shared = shared.clone();
        let (rt, report) = (cfg.realtime.clone(), report.clone());
        inputs.push(std::thread::Builder::new().name("encoder".into()).spawn(move || {
            setup_thread("encoder", rt.input_priority, &rt, &report);
            input_thread(shared, input, InputRole::Encoder, clock)
        })?);
    }
    if let Some(l) = &cfg.inputs.trigger {
        let input = open_input(cfg, l, clock, "trigger")?;
        let shared = shared.clone();
        let (rt, report) = (cfg.realtime.clone(), report.clone());
        inputs.push(std::thread::Builder::new().name("trigger".into()).spawn(move || {
            setup_thread("trigger", rt.input_priority, &rt, &report);
            input_thread(shared, input, InputRole::Trigger, clock)
        })?);
    }
    Ok(inputs)
}
