//! Inputs: the threads that feed sensor edges into the tracker.
//!
//! An encoder input moves the belt model by one count per edge; a part-present (trigger)
//! input begins one item per edge, at the edge's time, and queues it for its frame. Edges go
//! to the actuator, which owns the register, through each input's own single-producer queue
//! ([`super::tracking`]): an input thread takes no lock and never waits for another thread.
//!
//! Guarantees:
//! - edge times are the kernel's timestamps (GPIO) or exact (the simulated sensor), never the
//!   time a thread happened to wake;
//! - an edge that finds its queue full is dropped and counted (`queue_overflow`), never
//!   waited on;
//! - a read error is counted as an input error and held as a fault for the heartbeat; the
//!   thread waits 100 ms and reads on — an input never stops the station;
//! - trigger items get ids from `0x8000_0001` up, apart from the free-run ids;
//! - each thread runs with `realtime.input_priority` and `realtime.cpus` when the process
//!   may ([`super::realtime`]);
//! - the trigger thread ends within 100 ms of the frame loop stopping; the encoder thread
//!   counts on while the actuator drains the belt, and ends within 100 ms after it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle, Thread};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::config::{InputLineSection, StationConfig};
use super::realtime::{setup_thread, RealtimeReport};
use super::tracking::{InputEvent, Signals, EDGE_QUEUE, MAX_PENDING_TRIGGERS};
use crate::core::time::Instant;
use crate::drivers::gpio::EdgeInput;
use crate::hal::Clock;
use crate::sim::clock::MonotonicClock;
use heapless::spsc::Producer;

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

/// Where an input thread sends its edges.
enum Sink<'q> {
    Encoder(Producer<'q, InputEvent, EDGE_QUEUE>),
    Trigger {
        edges: Producer<'q, InputEvent, EDGE_QUEUE>,
        frame: Producer<'q, (u32, Instant), { MAX_PENDING_TRIGGERS + 1 }>,
    },
}

fn input_thread(signals: &Signals, mut input: EdgeSource, mut sink: Sink<'_>, wake: Wake, clock: MonotonicClock) {
    let mut count: i64 = 0;
    let mut next_id: u32 = 0x8000_0000;
    loop {
        let edge = input.next_edge(Duration::from_millis(100));
        let done = match sink {
            Sink::Encoder(_) => signals.inputs_stop.load(Ordering::Acquire),
            Sink::Trigger { .. } => signals.stop.load(Ordering::Acquire),
        };
        if done {
            return;
        }
        let at = match edge {
            Ok(None) => continue,
            Err(_) => {
                signals.input_errors.fetch_add(1, Ordering::Relaxed);
                signals.note_fault(clock.now());
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(Some(at)) => at,
        };
        match &mut sink {
            Sink::Encoder(edges) => {
                count += 1;
                if edges.enqueue(InputEvent::Encoder { count, at }).is_err() {
                    signals.queue_overflows.fetch_add(1, Ordering::Relaxed);
                }
            }
            Sink::Trigger { edges, frame } => {
                next_id = next_id.wrapping_add(1);
                if edges.enqueue(InputEvent::Trigger { id: next_id, at }).is_err() {
                    signals.queue_overflows.fetch_add(1, Ordering::Relaxed);
                }
                if frame.enqueue((next_id, at)).is_err() {
                    signals.input_errors.fetch_add(1, Ordering::Relaxed);
                }
                wake.frame.unpark();
            }
        }
        wake.actuator.unpark();
    }
}

/// The threads an input wakes after each edge.
#[derive(Clone)]
pub(super) struct Wake {
    pub(super) actuator: Thread,
    pub(super) frame: Thread,
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

/// Open the configured inputs (encoder, trigger) and start a thread for each in `scope`,
/// sending its edges to `encoder` and `trigger`.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn<'scope, 'q: 'scope>(
    scope: &'scope Scope<'scope, '_>,
    cfg: &StationConfig,
    signals: &'q Signals,
    encoder: Producer<'q, InputEvent, EDGE_QUEUE>,
    trigger: (
        Producer<'q, InputEvent, EDGE_QUEUE>,
        Producer<'q, (u32, Instant), { MAX_PENDING_TRIGGERS + 1 }>,
    ),
    wake: Wake,
    clock: MonotonicClock,
    report: &Arc<RealtimeReport>,
) -> Result<Vec<ScopedJoinHandle<'scope, ()>>> {
    let mut inputs = Vec::new();
    if let Some(l) = &cfg.inputs.encoder {
        let input = open_input(cfg, l, clock, "encoder")?;
        let (rt, report, wake) = (cfg.realtime.clone(), report.clone(), wake.clone());
        inputs.push(
            std::thread::Builder::new()
                .name("encoder".into())
                .spawn_scoped(scope, move || {
                    setup_thread("encoder", rt.input_priority, &rt, &report);
                    input_thread(signals, input, Sink::Encoder(encoder), wake, clock)
                })?,
        );
    }
    if let Some(l) = &cfg.inputs.trigger {
        let input = open_input(cfg, l, clock, "trigger")?;
        let (rt, report) = (cfg.realtime.clone(), report.clone());
        let (edges, frame) = trigger;
        inputs.push(
            std::thread::Builder::new()
                .name("trigger".into())
                .spawn_scoped(scope, move || {
                    setup_thread("trigger", rt.input_priority, &rt, &report);
                    input_thread(signals, input, Sink::Trigger { edges, frame }, wake, clock)
                })?,
        );
    }
    Ok(inputs)
}
