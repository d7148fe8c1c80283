//! The PLC handshake: what the station tells the line's PLC, and what the PLC may ask of it,
//! kept in one lock-free table ([`PlcState`]) that the frame loop writes and the protocol
//! servers ([`modbus`]) read.
//!
//! Guarantees:
//! - the frame loop never waits for a PLC: publishing an item is a handful of atomic stores,
//!   no lock, no allocation, no system call;
//! - the last item's inspection ID, result code and class are one 64-bit store: a client never
//!   reads one item's ID with another item's result;
//! - counts and codes are those of the run's summary and item lines (the inspection ID is the
//!   item line's `item`, the result code its `result_code`);
//! - what a PLC asks (acknowledge a result, reset faults) is a flag the station takes; no
//!   client can reach the frame path or the pulses.

pub mod modbus;
pub mod opcua;

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::core::decision::{Action, Decision, Outcome};
use crate::core::time::Instant;
use crate::hal::Clock;
use crate::sim::clock::MonotonicClock;

/// Software triggers waiting for the trigger thread: it takes them within a millisecond, so
/// more than a few waiting means the station is not keeping up; those are refused and
/// counted, as a sensor's edges are when the register is full.
pub const MAX_PENDING_SOFT_TRIGGERS: usize = 16;

/// Result codes (input register 2).
pub mod result_code {
    /// Accepted.
    pub const ACCEPT: u16 = 0;
    /// Rejected: a confident defect.
    pub const REJECT: u16 = 1;
    /// Rejected because no class head was sure (`decision.uncertain = "reject"`).
    pub const UNCERTAIN_REJECT: u16 = 2;
    /// No valid decision in time: the configured fail-safe applied.
    pub const FAILSAFE: u16 = 3;
    /// The item's frame or model failed (a fault); the fail-safe applied.
    pub const FAULT: u16 = 4;
}

/// The class register's value when there is no class.
pub const NO_CLASS: u16 = 0xFFFF;

/// The result code of an item decided as `d`, with `fault` when its frame or model failed.
pub fn result_code_of(d: &Decision, fault: Option<&str>) -> u16 {
    match (d.outcome, fault) {
        (_, Some(_)) => result_code::FAULT,
        (Outcome::FailSafe, None) => result_code::FAILSAFE,
        (Outcome::Uncertain, None) if d.action == Action::Reject => result_code::UNCERTAIN_REJECT,
        (_, None) if d.action == Action::Reject => result_code::REJECT,
        _ => result_code::ACCEPT,
    }
}

/// Station states (input register 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StationState {
    /// Loading the model, opening the camera: the frame loop has not started.
    Starting = 0,
    /// The frame loop runs: taking frames (or waiting for triggers) and deciding items.
    Running = 1,
    /// A fault is held (see the screen's fault strip) until it clears or a PLC resets it.
    Faulted = 2,
    /// Stopping or stopped: no more items.
    Stopped = 3,
}

/// The last item as one word: bit 63 set once any item was decided; bits 0–31 the inspection
/// ID, 32–39 the result code, 40–55 the class, 56–61 the recipe.
const HAS_ITEM: u64 = 1 << 63;

/// The PLC's view of the station, shared by the frame loop and the protocol servers.
pub struct PlcState {
    clock: MonotonicClock,
    /// Whether the profile makes the software trigger the part-present signal.
    soft_trigger_on: bool,
    trigger_enable: AtomicBool,
    soft_triggers: heapless::mpmc::MpMcQueue<u64, MAX_PENDING_SOFT_TRIGGERS>,
    triggers_ignored: AtomicU64,
    triggers_refused: AtomicU64,
    last: AtomicU64,
    inspected: AtomicU32,
    rejected: AtomicU32,
    state: AtomicU8,
    busy: AtomicBool,
    result_valid: AtomicBool,
    fault: AtomicBool,
    reset_faults: AtomicBool,
    acknowledged: AtomicU32,
    /// Recipes the profile has, the active one, and the one a PLC asked for (+1; 0: none).
    recipes: AtomicU16,
    recipe_active: AtomicU16,
    recipe_request: AtomicU32,
    /// The last item's score (f32 bits) and decision time (the station clock, µs), stored
    /// before its word.
    last_score: AtomicU32,
    last_at_us: AtomicU64,
}

impl std::fmt::Debug for PlcState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlcState")
            .field("last", &self.last())
            .field("state", &self.state())
            .field("flags", &self.flags())
            .finish()
    }
}

impl Default for PlcState {
    fn default() -> Self {
        PlcState::new(MonotonicClock::default(), false)
    }
}

impl PlcState {
    /// A table on the station's `clock`; `soft_trigger_on` when the PLC's software trigger is
    /// the part-present signal (`modbus.software_trigger`).
    pub fn new(clock: MonotonicClock, soft_trigger_on: bool) -> PlcState {
        PlcState {
            clock,
            soft_trigger_on,
            trigger_enable: AtomicBool::new(true),
            soft_triggers: heapless::mpmc::MpMcQueue::new(),
            triggers_ignored: AtomicU64::new(0),
            triggers_refused: AtomicU64::new(0),
            last: AtomicU64::new(0),
            inspected: AtomicU32::new(0),
            rejected: AtomicU32::new(0),
            state: AtomicU8::new(StationState::Starting as u8),
            busy: AtomicBool::new(false),
            result_valid: AtomicBool::new(false),
            fault: AtomicBool::new(false),
            reset_faults: AtomicBool::new(false),
            acknowledged: AtomicU32::new(0),
            recipes: AtomicU16::new(1),
            recipe_active: AtomicU16::new(0),
            recipe_request: AtomicU32::new(0),
            last_score: AtomicU32::new(0),
            last_at_us: AtomicU64::new(0),
        }
    }

    /// Whether triggers are taken (coil 0; on at start). Off: trigger edges, the PLC's and a
    /// sensor's, are ignored and counted, and a free-running camera's frames are not inspected.
    pub fn trigger_enabled(&self) -> bool {
        self.trigger_enable.load(Ordering::Acquire)
    }

    /// A PLC switched triggers on or off.
    pub fn set_trigger_enable(&self, on: bool) {
        self.trigger_enable.store(on, Ordering::Release);
    }

    /// A trigger edge or frame ignored because triggers are off.
    pub fn note_ignored_trigger(&self) {
        self.triggers_ignored.fetch_add(1, Ordering::Relaxed);
    }

    /// A PLC wrote the software trigger: an edge now, for the trigger thread (ignored and
    /// counted while triggers are off). False when the profile does not make it the
    /// part-present signal.
    pub fn software_trigger(&self) -> bool {
        if !self.soft_trigger_on {
            return false;
        }
        if !self.trigger_enabled() {
            self.note_ignored_trigger();
        } else if self.soft_triggers.enqueue(self.clock.now().us).is_err() {
            self.triggers_refused.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Whether the software trigger is the part-present signal.
    pub fn soft_trigger_on(&self) -> bool {
        self.soft_trigger_on
    }

    /// The trigger thread: the oldest software trigger's time.
    pub fn take_soft_trigger(&self) -> Option<Instant> {
        self.soft_triggers.dequeue().map(Instant::from_us)
    }

    /// Trigger edges (or free-run frames) ignored while triggers were off, and software
    /// triggers refused because too many were waiting.
    pub fn trigger_counts(&self) -> (u64, u64) {
        (
            self.triggers_ignored.load(Ordering::Relaxed),
            self.triggers_refused.load(Ordering::Relaxed),
        )
    }
}

/// One consistent reading of the last item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastItem {
    /// Inspection ID (the item line's `item`).
    pub id: u32,
    /// [`result_code`].
    pub code: u16,
    /// Class index, or [`NO_CLASS`].
    pub class: u16,
    /// The recipe that decided it.
    pub recipe: u16,
}

/// The last item with its score and time, read consistently.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LastResult {
    /// ID, result code, class, recipe.
    pub item: LastItem,
    /// The class's score (0 when none).
    pub score: f32,
    /// When it was decided, on the station's clock.
    pub at: Instant,
}

impl PlcState {
    /// The frame loop: an item was decided. Counts are the run's (wrapping at 2³²).
    pub fn publish(&self, id: u32, d: &Decision, fault: Option<&str>, inspected: u64, rejected: u64) {
        let code = result_code_of(d, fault) as u64;
        let class = d.class.map(u16::from).unwrap_or(NO_CLASS) as u64;
        let recipe = (self.recipe_active.load(Ordering::Relaxed) & 0x3F) as u64;
        self.inspected.store(inspected as u32, Ordering::Relaxed);
        self.rejected.store(rejected as u32, Ordering::Relaxed);
        self.last_score.store(d.score.to_bits(), Ordering::Relaxed);
        self.last_at_us.store(self.clock.now().us, Ordering::Relaxed);
        self.last.store(
            HAS_ITEM | id as u64 | (code << 32) | (class << 40) | (recipe << 56),
            Ordering::Release,
        );
        self.result_valid.store(true, Ordering::Release);
        self.busy.store(false, Ordering::Relaxed);
    }

    /// The frame loop: a frame is being inspected (set) or waited for (clear).
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// The frame loop: whether a fault is held now, and the station's state.
    pub fn set_state(&self, state: StationState, fault: bool) {
        self.fault.store(fault, Ordering::Relaxed);
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// The frame loop: whether a PLC asked to reset the held faults since the last call.
    pub fn take_reset_faults(&self) -> bool {
        self.reset_faults.swap(false, Ordering::AcqRel)
    }

    /// The last item decided, if any.
    pub fn last(&self) -> Option<LastItem> {
        decode_last(self.last.load(Ordering::Acquire))
    }

    /// The last item with its score and time; the three are of one item (read again while
    /// the frame loop publishes the next).
    pub fn last_result(&self) -> Option<LastResult> {
        loop {
            let before = self.last.load(Ordering::Acquire);
            let score = f32::from_bits(self.last_score.load(Ordering::Acquire));
            let at = Instant::from_us(self.last_at_us.load(Ordering::Acquire));
            std::sync::atomic::fence(Ordering::Acquire);
            if self.last.load(Ordering::Acquire) == before {
                return decode_last(before).map(|item| LastResult { item, score, at });
            }
        }
    }
}

fn decode_last(w: u64) -> Option<LastItem> {
    {
        (w & HAS_ITEM != 0).then_some(LastItem {
            id: w as u32,
            code: ((w >> 32) & 0xFF) as u16,
            class: ((w >> 40) & 0xFFFF) as u16,
            recipe: ((w >> 56) & 0x3F) as u16,
        })
    }
}

impl PlcState {
    /// Items inspected and rejected so far.
    pub fn counts(&self) -> (u32, u32) {
        (
            self.inspected.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
        )
    }

    /// The station's state.
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    /// Discrete inputs 0–4: ready, busy, result valid, pass, fault.
    pub fn flags(&self) -> [bool; 5] {
        let running = self.state() == StationState::Running as u8 && self.trigger_enabled();
        let fault = self.fault.load(Ordering::Relaxed);
        let last = self.last();
        [
            running && !fault,
            self.busy.load(Ordering::Relaxed),
            self.result_valid.load(Ordering::Acquire),
            last.is_some_and(|l| l.code == result_code::ACCEPT),
            fault,
        ]
    }

    /// A PLC acknowledged the result: "result valid" clears until the next item.
    pub fn acknowledge(&self) {
        self.result_valid.store(false, Ordering::Release);
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
    }

    /// A PLC asked to reset the held faults (taken by the frame loop).
    pub fn request_fault_reset(&self) {
        self.reset_faults.store(true, Ordering::Release);
    }

    /// Results a PLC acknowledged.
    pub fn acknowledged(&self) -> u32 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// The station: how many recipes the profile has (holding register 0 takes 0..count).
    pub fn set_recipe_count(&self, count: u16) {
        self.recipes.store(count.max(1), Ordering::Release);
    }

    /// The station's clock (the one item times are on).
    pub fn clock(&self) -> &MonotonicClock {
        &self.clock
    }

    /// The recipe deciding now (holding register 0 reads it).
    pub fn recipe_active(&self) -> u16 {
        self.recipe_active.load(Ordering::Acquire)
    }

    /// The station: recipe `index` decides from now on.
    pub fn set_recipe_active(&self, index: u16) {
        self.recipe_active.store(index, Ordering::Release);
    }

    /// A PLC wrote holding register 0: ask for recipe `index`. False when the profile has
    /// no such recipe (the write gets an exception).
    pub fn request_recipe(&self, index: u16) -> bool {
        if index >= self.recipes.load(Ordering::Acquire) {
            return false;
        }
        self.recipe_request.store(index as u32 + 1, Ordering::Release);
        true
    }

    /// The frame loop: the recipe a PLC asked for since the last call, if any.
    pub fn take_recipe_request(&self) -> Option<u16> {
        match self.recipe_request.swap(0, Ordering::AcqRel) {
            0 => None,
            n => Some((n - 1) as u16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(outcome: Outcome, action: Action, class: Option<u8>) -> Decision {
        Decision {
            outcome,
            action,
            class,
            score: 0.9,
        }
    }

    #[test]
    fn result_codes_follow_the_decision_and_its_fault() {
        use result_code::*;
        let d = |o, a| decision(o, a, Some(1));
        assert_eq!(result_code_of(&d(Outcome::Accept, Action::Accept), None), ACCEPT);
        assert_eq!(result_code_of(&d(Outcome::Reject, Action::Reject), None), REJECT);
        assert_eq!(
            result_code_of(&d(Outcome::Uncertain, Action::Reject), None),
            UNCERTAIN_REJECT
        );
        assert_eq!(result_code_of(&d(Outcome::Uncertain, Action::Accept), None), ACCEPT);
        assert_eq!(result_code_of(&d(Outcome::FailSafe, Action::Reject), None), FAILSAFE);
        assert_eq!(
            result_code_of(&d(Outcome::FailSafe, Action::Reject), Some("model error")),
            FAULT
        );
    }

    #[test]
    fn the_last_item_is_read_whole_and_result_valid_follows_the_handshake() {
        let s = PlcState::default();
        assert_eq!(s.last(), None);
        assert_eq!(s.flags(), [false, false, false, false, false]);
        s.set_state(StationState::Running, false);
        s.set_busy(true);
        assert_eq!(s.flags(), [true, true, false, false, false]);
        s.publish(u32::MAX, &decision(Outcome::Accept, Action::Accept, None), None, 7, 2);
        assert_eq!(
            s.last(),
            Some(LastItem {
                recipe: 0,
                id: u32::MAX,
                code: result_code::ACCEPT,
                class: NO_CLASS
            })
        );
        assert_eq!(s.counts(), (7, 2));
        assert_eq!(s.flags(), [true, false, true, true, false]);
        s.acknowledge();
        assert!(!s.flags()[2], "acknowledged");
        s.publish(8, &decision(Outcome::Reject, Action::Reject, Some(5)), None, 8, 3);
        let l = s.last().unwrap();
        assert_eq!((l.id, l.code, l.class), (8, result_code::REJECT, 5));
        assert_eq!(s.flags(), [true, false, true, false, false]);
        s.set_state(StationState::Faulted, true);
        assert_eq!(s.flags(), [false, false, true, false, true]);
        assert!(!s.take_reset_faults());
        s.request_fault_reset();
        assert!(s.take_reset_faults() && !s.take_reset_faults());
    }
}
