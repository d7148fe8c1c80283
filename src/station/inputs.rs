//! Inputs: the threads that feed sensor edges into the tracker.
//!
//! An encoder input moves the belt model by its count ([`crate::core::encoder`]): single
//! channel, one count forward per counted edge of A; quadrature (`inputs.encoder.line_b`), one
//! count per edge of A or B, forward or back by the direction. A part-present (trigger)
//! input begins one item per edge, at the edge's time, and queues it for its frame. Edges go
//! to the actuator, which owns the register, through each input's own single-producer queue
//! ([`super::tracking`]): an input thread takes no lock and never waits for another thread.
//!
//! Guarantees:
//! - edge times are the kernel's timestamps (GPIO) or exact (the simulated sensor or
//!   encoder, `inputs.backend = "sim"`), never the
//!   time a thread happened to wake;
//! - an edge that finds its queue full is dropped and counted (`queue_overflow`), never
//!   waited on;
//! - the encoder's lines are requested together, so the kernel numbers their events in one
//!   sequence: a gap (events lost) or a quadrature edge that changes nothing goes to the
//!   actuator as an encoder fault, and the lines are read again before decoding on;
//! - every event read, the latest count and the events missing from the sequence numbers
//!   are counted for the summary (`encoder`);
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
use crate::core::encoder::{Channel, Decoder, EncoderFault, LineEvent};
use crate::core::time::Instant;
use crate::drivers::gpio::{EdgeInput, EncoderInput};
use crate::hal::Clock;
use crate::plc::PlcState;
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

/// Where encoder events come from.
enum EncoderSource {
    /// The encoder's GPIO lines.
    Gpio(EncoderInput),
    /// A simulated encoder on a belt running forward: one edge every `period_us`, in
    /// quadrature order (A↑ B↑ A↓ B↓) or on channel A alone, numbered and timestamped
    /// exactly, as the kernel does.
    Periodic {
        source: EdgeSource,
        quadrature: bool,
        seqno: u32,
        levels: (bool, bool),
    },
}

impl EncoderSource {
    fn next_event(&mut self, timeout: Duration) -> Result<Option<LineEvent>> {
        match self {
            EncoderSource::Gpio(i) => i.next_event(timeout),
            EncoderSource::Periodic {
                source,
                quadrature,
                seqno,
                levels,
            } => {
                let Some(at) = source.next_edge(timeout)? else {
                    return Ok(None);
                };
                *seqno += 1;
                let (channel, rising) = if !*quadrature {
                    (Channel::A, true)
                } else if levels.0 == levels.1 {
                    levels.0 = !levels.0;
                    (Channel::A, levels.0)
                } else {
                    levels.1 = !levels.1;
                    (Channel::B, levels.1)
                };
                Ok(Some(LineEvent {
                    channel,
                    rising,
                    seqno: *seqno,
                    at,
                }))
            }
        }
    }

    fn levels(&self) -> Result<(bool, bool)> {
        match self {
            EncoderSource::Gpio(i) => i.levels(),
            EncoderSource::Periodic { levels, .. } => Ok(*levels),
        }
    }
}

/// Edge to count to the actuator; a fault ([`Decoder::on_event`]) goes as a fault, and a
/// quadrature decoder reads the lines again before decoding on.
fn encoder_thread(
    signals: &Signals,
    mut input: EncoderSource,
    mut decoder: Decoder,
    mut edges: Producer<'_, InputEvent, EDGE_QUEUE>,
    actuator: Thread,
    clock: MonotonicClock,
) {
    loop {
        let event = input.next_event(Duration::from_millis(100));
        if signals.inputs_stop.load(Ordering::Acquire) {
            return;
        }
        let ev = match event {
            Ok(None) => continue,
            Err(_) => {
                signals.input_errors.fetch_add(1, Ordering::Relaxed);
                signals.note_fault(clock.now());
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(Some(ev)) => ev,
        };
        signals.encoder_events.fetch_add(1, Ordering::Relaxed);
        let msg = match decoder.on_event(&ev) {
            Ok(count) => {
                signals.encoder_count.store(count, Ordering::Relaxed);
                InputEvent::Encoder { count, at: ev.at }
            }
            Err(fault) => {
                if let EncoderFault::LostEvents { missing } = fault {
                    signals.encoder_missing.fetch_add(missing as u64, Ordering::Relaxed);
                }
                if decoder.is_quadrature() {
                    match input.levels() {
                        Ok((a, b)) => decoder.resync(a, b),
                        Err(_) => {
                            signals.input_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                InputEvent::EncoderFault { fault, at: ev.at }
            }
        };
        if edges.enqueue(msg).is_err() {
            signals.queue_overflows.fetch_add(1, Ordering::Relaxed);
        }
        actuator.unpark();
    }
}

/// Where a trigger thread sends each edge: the actuator (the item enters the register at
/// the edge's time) and the frame loop (the frame exposed after it is the item's).
struct TriggerSink<'q> {
    edges: Producer<'q, InputEvent, EDGE_QUEUE>,
    frame: Producer<'q, (u32, Instant), { MAX_PENDING_TRIGGERS + 1 }>,
    wake: Wake,
    next_id: u32,
}

impl TriggerSink<'_> {
    fn send(&mut self, signals: &Signals, at: Instant) {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        if self.edges.enqueue(InputEvent::Trigger { id, at }).is_err() {
            signals.queue_overflows.fetch_add(1, Ordering::Relaxed);
        }
        if self.frame.enqueue((id, at)).is_err() {
            signals.input_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.wake.actuator.unpark();
        self.wake.frame.unpark();
    }
}

fn trigger_thread(
    signals: &Signals,
    mut input: EdgeSource,
    mut sink: TriggerSink<'_>,
    plc: Option<Arc<PlcState>>,
    clock: MonotonicClock,
) {
    loop {
        let edge = input.next_edge(Duration::from_millis(100));
        if signals.stop.load(Ordering::Acquire) {
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
        if let Some(p) = plc.as_ref().filter(|p| !p.trigger_enabled()) {
            p.note_ignored_trigger();
            continue;
        }
        sink.send(signals, at);
    }
}

/// How often the PLC trigger thread looks for software triggers. Each carries the time of
/// the PLC's write, so this adds no error to where the item is on the belt, only to when
/// its frame is taken.
const PLC_TRIGGER_POLL: Duration = Duration::from_millis(1);

/// The PLC's software trigger as the part-present signal (`modbus.software_trigger`).
fn plc_trigger_thread(signals: &Signals, plc: Arc<PlcState>, mut sink: TriggerSink<'_>) {
    while !signals.stop.load(Ordering::Acquire) {
        match plc.take_soft_trigger() {
            Some(at) => sink.send(signals, at),
            None => std::thread::sleep(PLC_TRIGGER_POLL),
        }
    }
}

/// The threads an input wakes after each edge.
#[derive(Clone)]
pub(super) struct Wake {
    pub(super) actuator: Thread,
    pub(super) frame: Thread,
}

fn periodic(l: &InputLineSection, clock: MonotonicClock) -> EdgeSource {
    let period_us = (l.period_ms.unwrap_or(100.0) as f64 * 1000.0) as u64;
    EdgeSource::Periodic {
        clock,
        period_us,
        next: clock.now().add_us(period_us),
    }
}

fn debounce(l: &InputLineSection) -> Option<Duration> {
    (l.debounce_ms > 0.0).then(|| Duration::from_micros((l.debounce_ms * 1000.0) as u64))
}

fn input_chip(cfg: &StationConfig) -> Result<&std::path::Path> {
    cfg.inputs
        .gpio_chip
        .as_deref()
        .ok_or_else(|| anyhow!("{}: field `inputs.gpio_chip` is missing", cfg.path.display()))
}

fn open_trigger(cfg: &StationConfig, l: &InputLineSection, clock: MonotonicClock) -> Result<EdgeSource> {
    if cfg.inputs.backend.as_deref() == Some("sim") {
        return Ok(periodic(l, clock));
    }
    EdgeInput::open(input_chip(cfg)?, l.line, l.active_low, l.both_edges, debounce(l), clock)
        .map(EdgeSource::Gpio)
        .with_context(|| format!("{}: `[inputs.trigger]`", cfg.path.display()))
}

/// The encoder's source and its decoder, set to the lines' levels now.
fn open_encoder(cfg: &StationConfig, l: &InputLineSection, clock: MonotonicClock) -> Result<(EncoderSource, Decoder)> {
    let source = if cfg.inputs.backend.as_deref() == Some("sim") {
        EncoderSource::Periodic {
            source: periodic(l, clock),
            quadrature: l.line_b.is_some(),
            seqno: 0,
            levels: (false, false),
        }
    } else {
        EncoderInput::open(
            input_chip(cfg)?,
            l.line,
            l.line_b,
            l.active_low,
            l.both_edges,
            debounce(l),
            clock,
        )
        .map(EncoderSource::Gpio)
        .with_context(|| format!("{}: `[inputs.encoder]`", cfg.path.display()))?
    };
    let decoder = match l.line_b {
        Some(_) => {
            let (a, b) = source
                .levels()
                .with_context(|| format!("{}: `[inputs.encoder]`", cfg.path.display()))?;
            Decoder::quadrature(a, b)
        }
        None => Decoder::single(),
    };
    Ok((source, decoder))
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
    plc: Option<&Arc<PlcState>>,
) -> Result<Vec<ScopedJoinHandle<'scope, ()>>> {
    let mut inputs = Vec::new();
    if let Some(l) = &cfg.inputs.encoder {
        let (input, decoder) = open_encoder(cfg, l, clock)?;
        let (rt, report, actuator) = (cfg.realtime.clone(), report.clone(), wake.actuator.clone());
        inputs.push(
            std::thread::Builder::new()
                .name("encoder".into())
                .spawn_scoped(scope, move || {
                    setup_thread("encoder", rt.input_priority, &rt, &report);
                    encoder_thread(signals, input, decoder, encoder, actuator, clock)
                })?,
        );
    }
    let (edges, frame) = trigger;
    let sink = TriggerSink {
        edges,
        frame,
        wake,
        next_id: 0x8000_0000,
    };
    if let Some(l) = &cfg.inputs.trigger {
        let input = open_trigger(cfg, l, clock)?;
        let (rt, report, plc) = (cfg.realtime.clone(), report.clone(), plc.cloned());
        inputs.push(
            std::thread::Builder::new()
                .name("trigger".into())
                .spawn_scoped(scope, move || {
                    setup_thread("trigger", rt.input_priority, &rt, &report);
                    trigger_thread(signals, input, sink, plc, clock)
                })?,
        );
    } else if let Some(plc) = plc.filter(|p| p.soft_trigger_on()).cloned() {
        let (rt, report) = (cfg.realtime.clone(), report.clone());
        inputs.push(
            std::thread::Builder::new()
                .name("plc-trigger".into())
                .spawn_scoped(scope, move || {
                    setup_thread("plc-trigger", rt.input_priority, &rt, &report);
                    plc_trigger_thread(signals, plc, sink)
                })?,
        );
    }
    Ok(inputs)
}
