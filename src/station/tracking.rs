//! Decision and tracking: the shift register between the camera and the ejectors.
//!
//! One [`Tracker`] is owned by the actuator thread, and only by it: the frame loop and the
//! input threads reach it through fixed-capacity single-producer queues
//! (`heapless::spsc`), and nothing on the way from a sensor edge or a decision to a reject
//! pulse takes a lock. This module holds the queues, the counters the threads share as
//! atomics, and every step the frame loop takes on the register (`Tracking`).
//!
//! Guarantees:
//! - an item enters the register before inference (free-run: at its frame; trigger modes: at
//!   its sensor edge), so a model that is slow or hangs still gets its item the fail-safe at
//!   the item's deadline, from the actuator thread;
//! - the actuator never waits for another thread: it takes what the queues hold when it
//!   wakes, and a producer wakes it (`unpark`) after each push. A full queue never blocks
//!   its producer: what did not fit is dropped and counted (`queue_overflow` in the
//!   summary's faults); an item whose decision was dropped gets the fail-safe at its
//!   deadline;
//! - the frame loop waits for the actuator's answer to each of its commands (whether the
//!   register was full, whether the decision came in time) for at most
//!   [`ANSWER_WAIT_US`]; the actuator answers every time it wakes;
//! - an input edge and a frame command are applied in the order they happened: before each
//!   command, the actuator takes every edge already queued;
//! - an encoder fault (events lost, or a part-present edge that finds the encoder standing
//!   still for `inputs.encoder.standstill_ms`) gives every item in flight the fail-safe and
//!   is counted (`encoder_lost_events`, `encoder_standstill`) and held for the heartbeat;
//! - at most [`MAX_PENDING_TRIGGERS`] trigger edges wait for their frame; one more is dropped
//!   (its item is in the register and gets the fail-safe at its deadline) and counted as an
//!   input error;
//! - the reject audit keeps at most [`MAX_AUDIT_ITEMS`] items, preallocated; items beyond it
//!   are decided and fired as usual and counted as left out.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::Thread;

use anyhow::{anyhow, Result};
use heapless::spsc::{Consumer, Producer, Queue};

use super::config::StationConfig;
use crate::core::belt::Belt;
use crate::core::calibration::travel_time_us;
use crate::core::decision::{Action, Decision};
use crate::core::encoder::{standing_still, EncoderFault};
use crate::core::latency::LatencyHistogram;
use crate::core::reject::{DecideError, EjectorConfig, Tracker, TrackerStats};
use crate::core::time::Instant;
use crate::hal::{Clock, OutputLine};
use crate::sim::clock::MonotonicClock;
use crate::sim::recording::Event;

/// Items whose fate a run keeps for its reject audit (missed and false rejects, timing
/// against true arrival). Preallocated; items beyond it are decided and fired as usual but
/// left out of the audit (`audit_truncated` in the summary).
pub const MAX_AUDIT_ITEMS: usize = 1 << 16;

/// A pulse centre farther than this from its item's arrival is counted as late in the audit:
/// 0.1 mm at 1 m/s, a tenth of the ±1 mm a reject window is sized to absorb.
pub const LATE_PULSE_US: u64 = 100;

/// Trigger edges waiting for their frame. More means the camera is far behind the sensor;
/// the edge that does not fit is dropped (its item, already in the register, gets the
/// fail-safe from the tracker) and counted.
pub const MAX_PENDING_TRIGGERS: usize = 64;

/// One item's fate, for the audit.
#[derive(Clone, Copy, Debug)]
pub(super) struct AuditItem {
    pub(super) id: u32,
    pub(super) captured: Instant,
    pub(super) action: Action,
}

/// One reject the tracker fired.
#[derive(Clone, Copy, Debug)]
pub(super) struct FiredItem {
    pub(super) id: u32,
    pub(super) ejector: u8,
    pub(super) merged: bool,
    pub(super) clipped: bool,
}

/// Missed items whose IDs the audit names.
pub const MISSED_IDS_KEPT: usize = 16;

/// The reject audit: what the outputs actually did to each item, against its true arrival.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RejectAudit {
    /// Items audited.
    pub items: u64,
    /// Items decided reject whose true arrival no actual pulse on their ejector covered.
    pub missed_rejects: u64,
    /// Of those, items the pulse as planned would have covered: the output line changed
    /// late (the host did not run the actuator in time), not a wrong plan.
    pub missed_late_output: u64,
    /// The first missed items' IDs (at most [`MISSED_IDS_KEPT`]), to find them in the log.
    pub missed_ids: Vec<u32>,
    /// Items decided accept whose true arrival an actual pulse covered, on any ejector.
    pub false_rejects: u64,
    /// |actual pulse centre − true arrival| of items alone in their pulse, µs: p50.
    pub timing_error_us_p50: Option<u64>,
    /// Same, p99.
    pub timing_error_us_p99: Option<u64>,
    /// Same, maximum.
    pub timing_error_us_max: Option<u64>,
    /// Pulses timed (items alone in their pulse).
    pub pulses_timed: u64,
    /// Of those, pulses whose centre was more than [`LATE_PULSE_US`] from the arrival.
    pub pulses_over_late_limit: u64,
    /// The belt speed the errors convert to mm with.
    pub belt_speed_mm_per_s: f32,
}

/// Slots of the frame loop's command queue and of the actuator's answer queue (a
/// `heapless::spsc::Queue` of `N` holds `N - 1`). The frame loop waits for the answer to
/// each command, so one slot is used; the rest hold commands whose answer it stopped
/// waiting for after [`ANSWER_WAIT_US`].
pub const COMMAND_QUEUE: usize = 64;

/// Slots of an input thread's edge queue. The actuator takes the edges whenever it wakes,
/// and it is away from its queues at most the approach to an edge (2 ms) and the writes:
/// 1024 edges is 50 ms of a 20 kHz encoder, far more than that.
pub const EDGE_QUEUE: usize = 1024;

/// Longest the frame loop waits for the actuator's answer to a command, µs. Far longer than
/// the actuator is ever away from its queues (the approach to an edge, 2 ms); short enough
/// that an actuator that stopped answering cannot stall the camera for long. Without an
/// answer, a begun item counts as tracked and a decision as taken in time.
pub const ANSWER_WAIT_US: u64 = 100_000;

/// What the frame loop asks the actuator to do with the register.
#[derive(Clone, Copy, Debug)]
pub(super) enum Command {
    /// An item enters the register at `at`.
    Begin { seq: u32, id: u32, at: Instant },
    /// Item `id` is decided at `now`; when `begin_at`, it enters the register first (an item
    /// the camera did not see).
    Decide {
        seq: u32,
        id: u32,
        decision: Decision,
        now: Instant,
        begin_at: Option<Instant>,
    },
    /// A recipe switch: what each ejector takes from the next decision on.
    Routes { seq: u32, routes: super::recipes::Routes },
}

/// The actuator's answer to command `seq`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Answer {
    pub(super) seq: u32,
    /// `false`: the register was full and the item merged into the newest one.
    pub(super) tracked: bool,
    pub(super) result: Result<(), DecideError>,
}

/// A sensor edge for the register.
#[derive(Clone, Copy, Debug)]
pub(super) enum InputEvent {
    /// The encoder counter read `count` at `at`.
    Encoder { count: i64, at: Instant },
    /// A part-present edge at `at` begins item `id`.
    Trigger { id: u32, at: Instant },
    /// The encoder's count can no longer be trusted from `at` on.
    EncoderFault { fault: EncoderFault, at: Instant },
}

/// What the threads share besides the queues, all of it atomics.
#[derive(Debug, Default)]
pub(super) struct Signals {
    /// The frame loop ended: the actuator drains the belt, the trigger input stops.
    pub(super) stop: AtomicBool,
    /// The actuator ended: the encoder input stops (it counts on while the belt drains).
    pub(super) inputs_stop: AtomicBool,
    /// Last fault, µs + 1 (0: none), for the heartbeat.
    fault_at: AtomicU64,
    pub(super) output_errors: AtomicU64,
    pub(super) input_errors: AtomicU64,
    /// Commands, answers and edges dropped because their queue was full.
    pub(super) queue_overflows: AtomicU64,
    /// Encoder events the kernel lost (sequence gaps, missed edges).
    pub(super) encoder_lost: AtomicU64,
    /// Part-present edges that found the encoder standing still.
    pub(super) encoder_standstill: AtomicU64,
    /// Encoder line events read, every channel.
    pub(super) encoder_events: AtomicU64,
    /// The encoder's latest count.
    pub(super) encoder_count: AtomicI64,
    /// Encoder events missing from the kernel's sequence numbers, all gaps together.
    pub(super) encoder_missing: AtomicU64,
    /// The line-stop output was asserted.
    pub(super) line_stopped: AtomicBool,
    /// The actuator's drain time ran out with items still on the belt.
    pub(super) drain_timed_out: AtomicBool,
}

impl Signals {
    /// Note a fault at `at`, for the heartbeat (the latest one counts).
    pub(super) fn note_fault(&self, at: Instant) {
        self.fault_at.fetch_max(at.us.saturating_add(1), Ordering::Relaxed);
    }

    /// The latest fault.
    pub(super) fn fault_at(&self) -> Option<Instant> {
        match self.fault_at.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Instant::from_us(us - 1)),
        }
    }
}

/// The queues of one run, allocated at start-up and split into the ends each thread holds.
pub(super) struct Queues {
    pub(super) commands: Queue<Command, COMMAND_QUEUE>,
    pub(super) answers: Queue<Answer, COMMAND_QUEUE>,
    pub(super) encoder: Queue<InputEvent, EDGE_QUEUE>,
    pub(super) trigger: Queue<InputEvent, EDGE_QUEUE>,
    /// Trigger edges waiting for their frame (one slot more: a queue of `N` holds `N - 1`).
    pub(super) triggered: Queue<(u32, Instant), { MAX_PENDING_TRIGGERS + 1 }>,
}

impl Queues {
    /// Empty queues, on the heap (they are too large for a thread's stack).
    pub(super) fn new() -> Box<Queues> {
        Box::new(Queues {
            commands: Queue::new(),
            answers: Queue::new(),
            encoder: Queue::new(),
            trigger: Queue::new(),
            triggered: Queue::new(),
        })
    }

    /// Split into the ends each thread holds.
    pub(super) fn split(&mut self) -> Ends<'_> {
        let (cp, cc) = self.commands.split();
        let (ap, ac) = self.answers.split();
        let (ep, ec) = self.encoder.split();
        let (tp, tc) = self.trigger.split();
        let (wp, wc) = self.triggered.split();
        Ends {
            frame: FrameEnds {
                commands: cp,
                answers: ac,
                triggered: wc,
            },
            actuator: ActuatorEnds {
                commands: cc,
                answers: ap,
                encoder: ec,
                trigger: tc,
                standstill: None,
                link: None,
            },
            encoder: ep,
            trigger: (tp, wp),
        }
    }
}

/// Every end of [`Queues`], before they go to their threads.
pub(super) struct Ends<'q> {
    pub(super) frame: FrameEnds<'q>,
    pub(super) actuator: ActuatorEnds<'q>,
    pub(super) encoder: Producer<'q, InputEvent, EDGE_QUEUE>,
    pub(super) trigger: (
        Producer<'q, InputEvent, EDGE_QUEUE>,
        Producer<'q, (u32, Instant), { MAX_PENDING_TRIGGERS + 1 }>,
    ),
}

/// The frame loop's ends.
pub(super) struct FrameEnds<'q> {
    commands: Producer<'q, Command, COMMAND_QUEUE>,
    answers: Consumer<'q, Answer, COMMAND_QUEUE>,
    triggered: Consumer<'q, (u32, Instant), { MAX_PENDING_TRIGGERS + 1 }>,
}

/// The actuator's ends.
pub(super) struct ActuatorEnds<'q> {
    pub(super) commands: Consumer<'q, Command, COMMAND_QUEUE>,
    pub(super) answers: Producer<'q, Answer, COMMAND_QUEUE>,
    pub(super) encoder: Consumer<'q, InputEvent, EDGE_QUEUE>,
    pub(super) trigger: Consumer<'q, InputEvent, EDGE_QUEUE>,
    /// Encoder mode with `inputs.encoder.standstill_ms`: the limit, µs, and the run's start.
    pub(super) standstill: Option<(u64, Instant)>,
    /// Backend `coprocessor`: every capture and decision the register takes goes to the
    /// co-processor's tracker too, in the same order.
    pub(super) link: Option<super::coprocessor::LinkTx>,
}

impl ActuatorEnds<'_> {
    /// Apply every edge the inputs queued.
    pub(super) fn take_edges(&mut self, tracker: &mut Tracker, signals: &Signals) {
        while let Some(ev) = self.encoder.dequeue() {
            apply_edge(tracker, ev, self.standstill, signals);
        }
        while let Some(ev) = self.trigger.dequeue() {
            apply_edge(tracker, ev, self.standstill, signals);
            if let (Some(link), InputEvent::Trigger { id, at }) = (self.link.as_mut(), ev) {
                link.capture(id, at, signals);
            }
        }
    }

    /// Apply every command the frame loop queued (each after the edges queued before it) and
    /// answer it. Returns whether any was answered (the frame loop is then woken).
    pub(super) fn take_commands(&mut self, tracker: &mut Tracker, signals: &Signals) -> bool {
        let mut answered = false;
        while let Some(cmd) = self.commands.dequeue() {
            self.take_edges(tracker, signals);
            let answer = match cmd {
                Command::Begin { seq, id, at } => {
                    let tracked = tracker.begin(id, at);
                    if let Some(link) = self.link.as_mut() {
                        link.capture(id, at, signals);
                    }
                    Answer {
                        seq,
                        tracked,
                        result: Ok(()),
                    }
                }
                Command::Decide {
                    seq,
                    id,
                    decision,
                    now,
                    begin_at,
                } => {
                    let tracked = begin_at.is_none_or(|at| tracker.begin(id, at));
                    let result = tracker.decide(id, &decision, now);
                    if let Some(link) = self.link.as_mut() {
                        if let Some(at) = begin_at {
                            link.capture(id, at, signals);
                        }
                        link.decide(id, &decision, now, signals);
                    }
                    Answer { seq, tracked, result }
                }
                Command::Routes { seq, routes } => Answer {
                    seq,
                    // Checked when the recipe book opened: an error here keeps the old routes.
                    tracked: tracker.set_routes(&routes).is_ok(),
                    result: Ok(()),
                },
            };
            if tracker.stats().line_stops > 0 {
                signals.line_stopped.store(true, Ordering::Relaxed);
            }
            if self.answers.enqueue(answer).is_err() {
                signals.queue_overflows.fetch_add(1, Ordering::Relaxed);
            }
            answered = true;
        }
        answered
    }
}

fn apply_edge(tracker: &mut Tracker, ev: InputEvent, standstill: Option<(u64, Instant)>, signals: &Signals) {
    match ev {
        InputEvent::Encoder { count, at } => tracker.belt_mut().on_encoder(count, at),
        InputEvent::Trigger { id, at } => {
            tracker.begin(id, at);
            if let Some((limit_us, started)) = standstill {
                if standing_still(tracker.belt().last_count_at(), started, at, limit_us) {
                    tracker.fail_safe_in_flight(at);
                    signals.encoder_standstill.fetch_add(1, Ordering::Relaxed);
                    signals.note_fault(at);
                }
            }
        }
        InputEvent::EncoderFault { fault, at } => {
            tracker.fail_safe_in_flight(at);
            let count = match fault {
                EncoderFault::Standstill => &signals.encoder_standstill,
                EncoderFault::LostEvents { .. } | EncoderFault::MissedEdge => &signals.encoder_lost,
            };
            count.fetch_add(1, Ordering::Relaxed);
            signals.note_fault(at);
        }
    }
}

/// The belt model and the tracker of `cfg`, and the belt speed (`None`: an encoder).
pub(super) fn open_tracker(
    cfg: &StationConfig,
    ejectors: &[EjectorConfig],
    clock: MonotonicClock,
) -> Result<(Tracker, Option<f32>)> {
    let (belt, speed) = match (cfg.conveyor.belt_speed_mm_per_s, cfg.conveyor.encoder_counts_per_mm) {
        (Some(v), _) => (Belt::from_speed(v, clock.now()), Some(v)),
        (None, Some(cpm)) => (
            Belt::from_encoder(cpm).ok_or_else(|| anyhow!("{}: bad encoder_counts_per_mm", cfg.path.display()))?,
            None,
        ),
        (None, None) => anyhow::bail!("{}: `[conveyor]` has no speed or encoder", cfg.path.display()),
    };
    let tracker = Tracker::new(ejectors, cfg.failsafe_policy(), belt)
        .map_err(|e| anyhow!("{}: `[[ejectors]]`: {e:?}", cfg.path.display()))?;
    Ok((tracker, speed))
}

/// Items the audit keeps room for when a run expects `expected_items`: blind items (dropped
/// frames, outages) come on top of the frames.
pub(super) fn audit_capacity(expected_items: usize) -> usize {
    (expected_items + expected_items / 4 + 256).clamp(1, MAX_AUDIT_ITEMS)
}

/// What the frame loop asked the tracker to do with one decided item.
pub(super) struct Decided {
    /// The tracker's answer (`Err`: the item was unknown or already past its deadline).
    pub(super) result: Result<(), DecideError>,
    /// Output and input errors so far.
    pub(super) io_errors: u64,
    /// Whether the line-stop output was ever asserted.
    pub(super) line_stopped: bool,
}

/// The frame loop's handle on the register: its queue ends, the shared signals, and the
/// actuator thread to wake.
pub(super) struct Tracking<'q> {
    ends: RefCell<FrameEnds<'q>>,
    pub(super) signals: &'q Signals,
    actuator: Thread,
    clock: MonotonicClock,
    seq: Cell<u32>,
    encoder_faults_seen: Cell<u64>,
}

impl<'q> Tracking<'q> {
    pub(super) fn new(ends: FrameEnds<'q>, signals: &'q Signals, actuator: Thread, clock: MonotonicClock) -> Self {
        Tracking {
            ends: RefCell::new(ends),
            signals,
            actuator,
            clock,
            seq: Cell::new(0),
            encoder_faults_seen: Cell::new(0),
        }
    }

    /// Send `cmd` (numbered by `seq`) and wait for its answer; `None`: the queue was full
    /// (counted) or no answer came within [`ANSWER_WAIT_US`].
    fn call(&self, cmd: impl FnOnce(u32) -> Command) -> Option<Answer> {
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        let mut ends = self.ends.borrow_mut();
        if ends.commands.enqueue(cmd(seq)).is_err() {
            self.signals.queue_overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.actuator.unpark();
        let until = self.clock.now().add_us(ANSWER_WAIT_US);
        loop {
            while let Some(a) = ends.answers.dequeue() {
                if a.seq == seq {
                    return Some(a);
                }
            }
            let left = until.us_since(self.clock.now());
            if left == 0 {
                return None;
            }
            std::thread::park_timeout(std::time::Duration::from_micros(left));
        }
    }

    /// Software trigger: wait up to 100 ms for an edge. `None`: the station is stopping;
    /// `Some(None)`: no edge yet.
    pub(super) fn wait_trigger(&self) -> Option<Option<(u32, Instant)>> {
        let until = self.clock.now().add_us(100_000);
        loop {
            if let Some(t) = self.pop_trigger() {
                return Some(Some(t));
            }
            if self.signals.stop.load(Ordering::Acquire) {
                return None;
            }
            let left = until.us_since(self.clock.now());
            if left == 0 {
                return Some(None);
            }
            std::thread::park_timeout(std::time::Duration::from_micros(left));
        }
    }

    /// The oldest trigger edge waiting for its frame.
    pub(super) fn pop_trigger(&self) -> Option<(u32, Instant)> {
        self.ends.borrow_mut().triggered.dequeue()
    }

    /// Whether the encoder had a fault (lost events, standstill) since the last call.
    pub(super) fn new_encoder_fault(&self) -> bool {
        let n =
            self.signals.encoder_lost.load(Ordering::Relaxed) + self.signals.encoder_standstill.load(Ordering::Relaxed);
        n > self.encoder_faults_seen.replace(n)
    }

    /// Note a fault at `at`, for the heartbeat.
    pub(super) fn note_fault(&self, at: Instant) {
        self.signals.note_fault(at);
    }

    /// Free-run: item `id` enters the register at its frame. `false`: the register was full
    /// and the item merged into the newest one.
    pub(super) fn begin(&self, id: u32, captured: Instant) -> bool {
        self.call(|seq| Command::Begin { seq, id, at: captured })
            .is_none_or(|a| a.tracked)
    }

    /// An item the camera did not see: into the register (when `begin`; the trigger input
    /// already put it there otherwise) and decided with `decision` (the fail-safe) at once.
    /// `false`: the register was full.
    pub(super) fn decide_blind(&self, id: u32, at: Instant, begin: bool, decision: &Decision, now: Instant) -> bool {
        self.signals.note_fault(now);
        self.call(|seq| Command::Decide {
            seq,
            id,
            decision: *decision,
            now,
            begin_at: begin.then_some(at),
        })
        .is_none_or(|a| a.tracked)
    }

    /// Hand item `id` its decision; note the fault for the heartbeat when `faulty`.
    pub(super) fn decide(&self, id: u32, decision: &Decision, now: Instant, faulty: bool) -> Decided {
        if faulty {
            self.signals.note_fault(now);
        }
        let result = self
            .call(|seq| Command::Decide {
                seq,
                id,
                decision: *decision,
                now,
                begin_at: None,
            })
            .map_or(Ok(()), |a| a.result);
        Decided {
            result,
            io_errors: self.signals.output_errors.load(Ordering::Relaxed)
                + self.signals.input_errors.load(Ordering::Relaxed),
            line_stopped: self.signals.line_stopped.load(Ordering::Relaxed),
        }
    }

    /// A recipe switch: the actuator routes the decisions after this one with `routes`.
    /// `false`: the actuator refused them (it keeps the old ones) or did not answer.
    pub(super) fn set_routes(&self, routes: super::recipes::Routes) -> bool {
        self.call(|seq| Command::Routes { seq, routes })
            .is_some_and(|a| a.tracked)
    }

    /// Tell the other threads to finish (the actuator drains the items still on the belt).
    pub(super) fn stop(&self) {
        self.signals.stop.store(true, Ordering::Release);
        self.actuator.unpark();
    }
}

/// After the threads ended: output errors, input errors, the tracker's totals and the fired
/// items.
pub(super) fn totals(
    signals: &Signals,
    tracker: &Tracker,
    fired: Vec<FiredItem>,
) -> (u64, u64, TrackerStats, Vec<FiredItem>) {
    (
        signals.output_errors.load(Ordering::Relaxed),
        signals.input_errors.load(Ordering::Relaxed),
        *tracker.stats(),
        fired,
    )
}

/// Audit what the outputs did against each item's true arrival at constant belt speed.
pub(super) fn audit(
    items: &[AuditItem],
    fired: &[FiredItem],
    timeline: &[Event],
    ejectors: &[EjectorConfig],
    speed_mm_per_s: f32,
) -> RejectAudit {
    // Pulses per ejector, as they happened and as they were planned.
    let pulses = pulses_of(timeline, ejectors.len(), |e| e.actual.us);
    let planned = pulses_of(timeline, ejectors.len(), |e| e.planned.us);
    let arrival = |it: &AuditItem, e: usize| -> u64 {
        let travel = travel_time_us(ejectors[e].ejector_distance_mm, speed_mm_per_s);
        it.captured.add_us(travel.unwrap_or(u64::MAX)).us
    };
    let covering_at = |e: usize, t: u64| pulses[e].iter().position(|(a, b)| *a <= t && t <= *b);
    let covering = |e: usize, t: u64| covering_at(e, t).map(|k| pulses[e][k]);
    let by_id: HashMap<u32, FiredItem> = fired.iter().map(|f| (f.id, *f)).collect();
    // Items fired into each pulse: a pulse held on for a later item is not centred on either.
    let mut sharing: HashMap<(usize, usize), u32> = HashMap::new();
    for it in items.iter().filter(|it| it.action == Action::Reject) {
        if let Some(f) = by_id.get(&it.id) {
            let e = f.ejector as usize;
            if let Some(k) = covering_at(e, arrival(it, e)) {
                *sharing.entry((e, k)).or_default() += 1;
            }
        }
    }
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
                    if a.missed_ids.len() < MISSED_IDS_KEPT {
                        a.missed_ids.push(it.id);
                    }
                    continue;
                };
                let e = f.ejector as usize;
                let t = arrival(it, e);
                match covering_at(e, t) {
                    None => {
                        a.missed_rejects += 1;
                        if planned[e].iter().any(|(on, off)| *on <= t && t <= *off) {
                            a.missed_late_output += 1;
                        }
                        if a.missed_ids.len() < MISSED_IDS_KEPT {
                            a.missed_ids.push(it.id);
                        }
                    }
                    Some(k) => {
                        let alone = sharing.get(&(e, k)) == Some(&1);
                        if alone && !f.merged && !f.clipped {
                            let (on, off) = pulses[e][k];
                            let centre = (on + off) / 2;
                            let err = centre.abs_diff(t);
                            h.record(err);
                            a.pulses_timed += 1;
                            if err > LATE_PULSE_US {
                                a.pulses_over_late_limit += 1;
                            }
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

/// The (on, off) pulses of each of `lines` reject lines in `timeline`, at the time `at` reads
/// from each edge (as it happened, or as planned).
fn pulses_of(timeline: &[Event], lines: usize, at: impl Fn(&Event) -> u64) -> Vec<Vec<(u64, u64)>> {
    let mut pulses: Vec<Vec<(u64, u64)>> = vec![Vec::new(); lines];
    let mut on: Vec<Option<u64>> = vec![None; lines];
    for e in timeline {
        if let OutputLine::Reject(n) = e.line {
            let n = n as usize;
            if n >= lines {
                continue;
            }
            match (e.active, on[n]) {
                (true, None) => on[n] = Some(at(e)),
                (false, Some(s)) => {
                    pulses[n].push((s, at(e)));
                    on[n] = None;
                }
                _ => {}
            }
        }
    }
    pulses
}

/// Edge scheduling error (actual − planned) of the reject lines in `timeline`: (p50, p99,
/// max), µs.
pub(super) fn edge_error_us(timeline: &[Event]) -> (u64, u64, u64) {
    let mut h = LatencyHistogram::default();
    for e in timeline.iter().filter(|e| matches!(e.line, OutputLine::Reject(_))) {
        h.record(e.actual.us_since(e.planned));
    }
    let max = if h.count() > 0 { h.max_us() } else { 0 };
    (
        h.percentile_us(50.0).unwrap_or(0),
        h.percentile_us(99.0).unwrap_or(0),
        max,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decision::Outcome;
    use crate::core::reject::{FailSafePolicy, MergePolicy, OutcomeSet};

    fn tracker() -> Tracker {
        let e = EjectorConfig {
            ejector_distance_mm: 400.0,
            pulse_width_us: 20_000,
            min_gap_us: 10_000,
            merge: MergePolicy::Extend,
            takes: OutcomeSet::ALL,
        };
        Tracker::new(
            &[e],
            FailSafePolicy::Reject,
            Belt::from_speed(500.0, Instant::from_us(0)),
        )
        .unwrap()
    }

    fn reject() -> Decision {
        Decision {
            outcome: Outcome::Reject,
            action: Action::Reject,
            class: Some(0),
            score: 1.0,
        }
    }

    #[test]
    fn a_trigger_edge_queued_before_a_decision_is_in_the_register_when_the_decision_is_applied() {
        let mut queues = Queues::new();
        let mut ends = queues.split();
        let (mut edges, _) = ends.trigger;
        let mut t = tracker();
        let signals = Signals::default();
        let at = Instant::from_us(1_000);
        edges.enqueue(InputEvent::Trigger { id: 7, at }).unwrap();
        ends.frame
            .commands
            .enqueue(Command::Decide {
                seq: 1,
                id: 7,
                decision: reject(),
                now: at.add_us(50_000),
                begin_at: None,
            })
            .unwrap();
        assert!(ends.actuator.take_commands(&mut t, &signals));
        let a = ends.frame.answers.dequeue().expect("answered");
        assert_eq!((a.seq, a.tracked, a.result), (1, true, Ok(())));
        assert_eq!(t.stats().items, 1);
        // A decision for an item no one began is refused, not applied to another.
        ends.frame
            .commands
            .enqueue(Command::Decide {
                seq: 2,
                id: 8,
                decision: reject(),
                now: at.add_us(50_000),
                begin_at: None,
            })
            .unwrap();
        ends.actuator.take_commands(&mut t, &signals);
        assert_eq!(
            ends.frame.answers.dequeue().unwrap().result,
            Err(DecideError::UnknownItem)
        );
    }

    #[test]
    fn a_full_command_queue_drops_and_counts_without_waiting() {
        let mut queues = Queues::new();
        let ends = queues.split();
        let signals = Signals::default();
        let clock = MonotonicClock::default();
        let tracking = Tracking::new(ends.frame, &signals, std::thread::current(), clock);
        // No actuator takes the commands: fill the queue behind the frame loop's back.
        {
            let mut e = tracking.ends.borrow_mut();
            for seq in 0..COMMAND_QUEUE as u32 - 1 {
                e.commands
                    .enqueue(Command::Begin {
                        seq,
                        id: seq,
                        at: Instant::from_us(0),
                    })
                    .unwrap();
            }
        }
        // The next command finds no room: it is dropped and counted, and the call returns
        // at once with the benefit of the doubt.
        assert!(tracking.begin(100, Instant::from_us(0)));
        assert_eq!(signals.queue_overflows.load(Ordering::Relaxed), 1);
        let d = tracking.decide(100, &reject(), Instant::from_us(0), true);
        assert_eq!(d.result, Ok(()));
        assert_eq!(signals.queue_overflows.load(Ordering::Relaxed), 2);
        assert_eq!(
            signals.fault_at(),
            Some(Instant::from_us(0)),
            "the fault is held for the heartbeat"
        );
    }

    #[test]
    fn the_audit_times_items_alone_in_their_pulse_and_counts_the_late_ones() {
        // 400 mm at 500 mm/s: 800 ms of travel.
        let e = EjectorConfig {
            ejector_distance_mm: 400.0,
            pulse_width_us: 20_000,
            min_gap_us: 10_000,
            merge: MergePolicy::Extend,
            takes: OutcomeSet::ALL,
        };
        let item = |id, captured_us| AuditItem {
            id,
            captured: Instant::from_us(captured_us),
            action: Action::Reject,
        };
        let fired = |id| FiredItem {
            id,
            ejector: 0,
            merged: false,
            clipped: false,
        };
        let edge = |active, us| Event {
            line: OutputLine::Reject(0),
            active,
            planned: Instant::from_us(us),
            actual: Instant::from_us(us),
        };
        // Item 1: pulse centred 30 µs late. Item 2: 150 µs late. Items 3 and 4 share one
        // pulse held on from 3's window to 4's (neither is centred on it).
        let items = [item(1, 0), item(2, 100_000), item(3, 200_000), item(4, 225_000)];
        let timeline = [
            edge(true, 790_030),
            edge(false, 810_030),
            edge(true, 890_150),
            edge(false, 910_150),
            edge(true, 990_000),
            edge(false, 1_035_000),
        ];
        let a = audit(
            &items,
            &[fired(1), fired(2), fired(3), fired(4)],
            &timeline,
            &[e],
            500.0,
        );
        assert_eq!((a.missed_rejects, a.false_rejects), (0, 0));
        assert_eq!(a.pulses_timed, 2);
        assert_eq!(a.pulses_over_late_limit, 1);
        assert_eq!(a.timing_error_us_max, Some(150));
        // Without item 2's pulse, it is missed.
        let a = audit(
            &items,
            &[fired(1), fired(2), fired(3), fired(4)],
            &[timeline[0], timeline[1], timeline[4], timeline[5]],
            &[e],
            500.0,
        );
        assert_eq!(a.missed_rejects, 1);
        assert_eq!((a.missed_late_output, a.missed_ids.clone()), (0, vec![2]));
        // Item 2's pulse planned on time but written 15 ms late: missed, by the output.
        let mut late = timeline;
        for e in &mut late[2..4] {
            e.actual = e.actual.add_us(15_000);
        }
        let a = audit(&items, &[fired(1), fired(2), fired(3), fired(4)], &late, &[e], 500.0);
        assert_eq!((a.missed_rejects, a.missed_late_output), (1, 1));
        assert_eq!(edge_error_us(&late).2, 15_000);
    }
}
