//! Reject tracking: the PLC-style shift register, on the board.
//!
//! Every inspected item enters the [`Tracker`] at capture with its belt position (from the
//! [`Belt`] model: time × speed, or encoder counts). Its decision arrives later, from the
//! frame loop, and routes it to one of up to [`MAX_EJECTORS`] ejectors downstream, each taking
//! a set of outcomes (e.g. one ejector per defect-class group). The tracker is polled with the
//! current time and emits output edges when a routed item's arrival at its ejector is due:
//! the pulse is centred on the predicted arrival and re-predicted at every poll, so speed
//! changes and encoder updates are followed up to the last moment.
//!
//! Guarantees, each tested:
//! - an item that is still undecided at its deadline gets the configured fail-safe
//!   ([`FailSafePolicy`]): rejected by the fail-safe ejector, passed, or the line-stop output
//!   asserted; a decision arriving after that is reported as late. The deadline is the
//!   ejector's minimum gap before the item's window opens, at whichever ejector that comes
//!   first: a pulse ending within the gap before the window must know by then whether to hold
//!   on for the item, so a reject decided later could neither keep the gap nor reach its item;
//! - pulses on one output never overlap; two rejects closer than the minimum gap merge into one
//!   longer pulse ([`MergePolicy::Extend`]) or the later pulse starts after the gap
//!   ([`MergePolicy::Clip`], never so late that it misses its item); a pulse held on for the
//!   next item stays held if the belt slows meanwhile, up to the minimum gap and
//!   `MAX_ON_WIDTHS` pulse widths past its own end;
//! - at most [`MAX_ITEMS_IN_FLIGHT`] items are tracked; one more is never dropped silently: it
//!   merges into the newest tracked item, which then covers both with the fail-safe outcome.
//!
//! Time is passed in; nothing here needs an operating system or a heap.
//!
//! Why one file of ~830 lines (the tests are in `reject/tests.rs`): admission, routing,
//! merging, deadlines and the pulse plan share the register and one invariant — pulses on an
//! output never overlap; apart, each part would need the others' internals.

use super::belt::{mm_to_nm, Belt};
use super::decision::{Action, Decision, Outcome};
use super::num::{ceil_i64, floor_i64, round_i64};
use super::time::Instant;
use super::MAX_CLASSES;

/// Items between the camera and the farthest ejector. Why 256: at 20 m/s with the farthest
/// ejector 2 m downstream an item travels 100 ms, so 256 cover one item every 0.4 ms —
/// faster than any camera here inspects. Overflow is handled (see the module docs).
pub const MAX_ITEMS_IN_FLIGHT: usize = 256;

/// Ejectors one station drives (air jets, diverters, each on its own output line).
pub const MAX_EJECTORS: usize = 4;

/// What an ejector does with a reject closer than `min_gap_us` after the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MergePolicy {
    /// Keep the output on through both items: one longer pulse (diverters, flaps).
    Extend,
    /// Keep separate pulses: the later one starts after the gap, shorter; if it would open
    /// less than a quarter pulse before its item's predicted arrival (a prediction that moves
    /// earlier could then miss the item), it merges instead (air jets whose valve needs its
    /// off-time).
    Clip,
}

/// Which rejected items an ejector takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OutcomeSet {
    /// Bit `i` set: rejects of class `i` (in the model's class order).
    pub classes: u16,
    /// Items rejected because no head was confident.
    pub uncertain: bool,
    /// Items rejected by the fail-safe.
    pub failsafe: bool,
}

impl OutcomeSet {
    /// Every reject class, uncertain and fail-safe.
    pub const ALL: OutcomeSet = OutcomeSet {
        classes: u16::MAX,
        uncertain: true,
        failsafe: true,
    };
}

/// One ejector.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EjectorConfig {
    /// Distance from the camera's optical axis to the ejector along the belt.
    pub ejector_distance_mm: f32,
    /// How long the actuator is energised per item.
    pub pulse_width_us: u32,
    /// Shortest off-time between two pulses.
    pub min_gap_us: u32,
    /// What closer rejects do.
    pub merge: MergePolicy,
    /// Which rejects go to this ejector.
    pub takes: OutcomeSet,
}

impl EjectorConfig {
    /// How long before an item's arrival here its decision is due: half a pulse (the window
    /// opens) plus the minimum gap (see the module docs).
    pub fn decision_lead_us(&self) -> u64 {
        (self.pulse_width_us / 2) as u64 + self.min_gap_us as u64
    }
}

/// What happens to an item without a valid decision in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FailSafePolicy {
    /// Reject it with the ejector that takes fail-safe items (the default).
    Reject,
    /// Let it pass.
    Accept,
    /// Assert the line-stop output (latched until reset) and let the line halt.
    LineStop,
}

/// An output the tracker drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Output {
    /// Ejector n's actuator line.
    Ejector(u8),
    /// The line-stop output.
    LineStop,
}

/// Something the caller must act on or may log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TrackEvent {
    /// Drive `output` to `active`; `at` is when it should have happened (≤ now).
    Edge {
        /// The output.
        output: Output,
        /// New level.
        active: bool,
        /// Planned time.
        at: Instant,
    },
    /// Item `id` is being rejected by `ejector`: its own window starts at `on` and ends at
    /// `off` (inside the output's pulse, which may be longer after a merge).
    Fired {
        /// Item.
        id: u32,
        /// Ejector.
        ejector: u8,
        /// Start of the item's window.
        on: Instant,
        /// End of the item's window.
        off: Instant,
        /// The output was already on for an earlier item.
        merged: bool,
        /// The window starts late, after the previous pulse's minimum gap.
        clipped: bool,
        /// Rejected by the fail-safe.
        failsafe: bool,
    },
    /// Item `id` reached its deadline undecided; the fail-safe applied.
    Overdue {
        /// Item.
        id: u32,
    },
}

/// Why [`Tracker::decide`] could not apply a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DecideError {
    /// No such item in flight (never begun, or already gone past its ejector).
    UnknownItem,
    /// The item reached its deadline first; the fail-safe already applied to it.
    Late,
    /// The item already had a decision.
    AlreadyDecided,
}

/// Why [`Tracker::new`] refused a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TrackerError {
    /// No ejectors, or more than [`MAX_EJECTORS`].
    EjectorCount(usize),
    /// Ejector n has a negative or non-finite distance, or a zero pulse width.
    Ejector(usize),
    /// The fail-safe rejects, but no ejector takes fail-safe items.
    NoFailSafeEjector,
}

/// Running totals of the tracker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TrackerStats {
    /// Items begun.
    pub items: u64,
    /// Items whose decision accepted them.
    pub accepted: u64,
    /// Items fired at, per ejector.
    pub fired: [u64; MAX_EJECTORS],
    /// Of those, rejected by the fail-safe (deadline, fail-safe decision or overflow).
    pub failsafe_rejects: u64,
    /// Items passed by the fail-safe (policy `Accept`).
    pub failsafe_accepts: u64,
    /// Items that reached their deadline undecided.
    pub overdue: u64,
    /// Decisions that came after the deadline.
    pub late_decisions: u64,
    /// Times the line-stop output was asserted.
    pub line_stops: u64,
    /// Items merged into the newest tracked item because the tracker was full.
    pub overflows: u64,
    /// Items that joined a pulse already on.
    pub merged: u64,
    /// Items whose window started late after a minimum gap.
    pub clipped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Undecided,
    Routed { ejector: u8, failsafe: bool },
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Item {
    id: u32,
    pos_nm: i64,
    /// Extra length covered after an overflow merge.
    span_nm: i64,
    /// Overflow: whatever the decision, the fail-safe applies.
    forced_failsafe: bool,
    state: State,
    /// Clip policy: the window may not start before this.
    not_before: Option<Instant>,
    /// Reached its deadline undecided.
    overdue: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Line {
    on: bool,
    /// The output goes off when the belt reaches this position …
    off_pos_nm: i64,
    /// … or at this time at the latest (a belt that stopped mid-pulse).
    off_cap: Instant,
    last_off: Option<Instant>,
    /// Held on past its end for this item, which merges into the pulse when it fires.
    hold_for: Option<u32>,
}

/// Longest a pulse may stay on, in pulse widths, when the belt stops mid-pulse; a pulse held
/// on past its end for the next item may stay on the minimum gap and this many widths past
/// that end (the belt slowing meanwhile moves the item later).
const MAX_ON_WIDTHS: u64 = 4;

/// Under [`MergePolicy::Clip`], a clipped pulse must still open this fraction of a pulse
/// width (1/N) before its item's predicted arrival, else it merges: an arrival predicted
/// earlier after the output went off (speed change, encoder jitter, tens of µs) then still
/// falls after the gap.
const CLIP_LEAD_DIVISOR: u32 = 4;

/// The shift register.
#[derive(Clone, Debug)]
pub struct Tracker {
    ejectors: heapless::Vec<EjectorConfig, MAX_EJECTORS>,
    lines: [Line; MAX_EJECTORS],
    failsafe: FailSafePolicy,
    failsafe_ejector: u8,
    belt: Belt,
    items: heapless::Deque<Item, MAX_ITEMS_IN_FLIGHT>,
    line_stop: bool,
    /// The line-stop output must go active at this time (emitted by the next poll).
    line_stop_due: Option<Instant>,
    /// Items that went overdue lately, so their late decision is reported as late even
    /// after they left the register.
    recent_overdue: heapless::Deque<u32, RECENT_OVERDUE>,
    stats: TrackerStats,
}

/// Overdue item ids remembered after they leave (a decision may still be on its way).
const RECENT_OVERDUE: usize = 32;

/// Predicted arrival of `target_nm`, in µs relative to `now` (negative: already passed).
fn arrival_rel_us(belt: &Belt, target_nm: i64, now: Instant) -> Option<i64> {
    let remaining = target_nm - belt.position_nm(now);
    let v = belt.speed_mm_per_s(now);
    if remaining <= 0 {
        if v > 0.0 {
            return Some(floor_i64(remaining as f64 / v));
        }
        return Some(0);
    }
    if v.is_nan() || v <= 0.0 {
        return None;
    }
    let us = remaining as f64 / v;
    if us < (i64::MAX / 4) as f64 {
        Some(ceil_i64(us))
    } else {
        None
    }
}

fn offset(now: Instant, rel_us: i64) -> Instant {
    if rel_us >= 0 {
        now.add_us(rel_us as u64)
    } else {
        Instant::from_us(now.us.saturating_sub(rel_us.unsigned_abs()))
    }
}

impl Tracker {
    /// A tracker for `ejectors` on `belt`.
    pub fn new(ejectors: &[EjectorConfig], failsafe: FailSafePolicy, belt: Belt) -> Result<Self, TrackerError> {
        if ejectors.is_empty() || ejectors.len() > MAX_EJECTORS {
            return Err(TrackerError::EjectorCount(ejectors.len()));
        }
        let mut v = heapless::Vec::new();
        for (i, e) in ejectors.iter().enumerate() {
            if !(e.ejector_distance_mm >= 0.0 && e.ejector_distance_mm.is_finite()) || e.pulse_width_us == 0 {
                return Err(TrackerError::Ejector(i));
            }
            // Cannot fail: the count was checked.
            let _ = v.push(*e);
        }
        let fs = ejectors.iter().position(|e| e.takes.failsafe);
        if failsafe == FailSafePolicy::Reject && fs.is_none() {
            return Err(TrackerError::NoFailSafeEjector);
        }
        Ok(Tracker {
            ejectors: v,
            lines: [Line::default(); MAX_EJECTORS],
            failsafe,
            failsafe_ejector: fs.unwrap_or(0) as u8,
            belt,
            items: heapless::Deque::new(),
            line_stop: false,
            line_stop_due: None,
            recent_overdue: heapless::Deque::new(),
            stats: TrackerStats::default(),
        })
    }

    /// Replace what each ejector takes (a product change): items already routed keep their
    /// ejector; decisions from now on, and fail-safes applied from now on, use `takes`
    /// (`takes[i]` for ejector `i`; extra entries are ignored).
    pub fn set_routes(&mut self, takes: &[OutcomeSet]) -> Result<(), TrackerError> {
        let n = self.ejectors.len();
        let fs = takes.iter().take(n).position(|t| t.failsafe);
        if self.failsafe == FailSafePolicy::Reject && fs.is_none() {
            return Err(TrackerError::NoFailSafeEjector);
        }
        for (e, t) in self.ejectors.iter_mut().zip(takes) {
            e.takes = *t;
        }
        self.failsafe_ejector = fs.unwrap_or(0) as u8;
        Ok(())
    }

    /// The belt model (read).
    pub fn belt(&self) -> &Belt {
        &self.belt
    }

    /// The belt model, to report speed changes or encoder edges.
    pub fn belt_mut(&mut self) -> &mut Belt {
        &mut self.belt
    }

    /// Totals so far.
    pub fn stats(&self) -> &TrackerStats {
        &self.stats
    }

    /// Items in flight.
    pub fn in_flight(&self) -> usize {
        self.items.len()
    }

    /// The ejectors.
    pub fn ejectors(&self) -> &[EjectorConfig] {
        &self.ejectors
    }

    /// True while the line-stop output is asserted.
    pub fn line_stop_active(&self) -> bool {
        self.line_stop
    }

    /// True when no item is in flight and no output is on: nothing left to do.
    pub fn is_idle(&self) -> bool {
        self.items.is_empty() && self.lines.iter().all(|l| !l.on) && self.line_stop_due.is_none()
    }

    /// Release the line-stop output (an operator acknowledged it).
    pub fn reset_line_stop(&mut self, now: Instant, mut emit: impl FnMut(TrackEvent)) {
        if self.line_stop {
            self.line_stop = false;
            self.line_stop_due = None;
            emit(TrackEvent::Edge {
                output: Output::LineStop,
                active: false,
                at: now,
            });
        }
    }

    fn prune(&mut self) {
        while matches!(self.items.front(), Some(i) if i.state == State::Done) {
            self.items.pop_front();
        }
    }

    /// An item passed the camera (or the trigger sensor) at `at`. Returns `false` when the
    /// tracker was full and the item was merged into the newest one (fail-safe for both).
    pub fn begin(&mut self, id: u32, at: Instant) -> bool {
        self.prune();
        self.stats.items += 1;
        let pos_nm = self.belt.position_nm(at);
        let item = Item {
            id,
            pos_nm,
            span_nm: 0,
            forced_failsafe: false,
            state: State::Undecided,
            not_before: None,
            overdue: false,
        };
        if self.items.push_back(item).is_ok() {
            return true;
        }
        self.stats.overflows += 1;
        if let Some(last) = self.items.back_mut() {
            last.span_nm = last.span_nm.max(pos_nm - last.pos_nm);
            last.forced_failsafe = true;
            if let State::Routed { failsafe: false, .. } = last.state {
                last.state = State::Undecided;
            }
        }
        false
    }

    fn route(&self, d: &Decision) -> Option<(u8, bool)> {
        if d.action == Action::Accept {
            return None;
        }
        let pick = |f: &dyn Fn(&OutcomeSet) -> bool| self.ejectors.iter().position(|e| f(&e.takes)).map(|i| i as u8);
        match d.outcome {
            Outcome::FailSafe => Some((self.failsafe_ejector, true)),
            Outcome::Uncertain => Some((pick(&|t| t.uncertain).unwrap_or(self.failsafe_ejector), false)),
            Outcome::Reject | Outcome::Accept => {
                let bit = d.class.map(|c| 1u16 << (c as usize % MAX_CLASSES)).unwrap_or(0);
                Some((pick(&|t| t.classes & bit != 0).unwrap_or(self.failsafe_ejector), false))
            }
        }
    }

    /// Microseconds from `now` until `item` must be decided (negative: overdue); `None` when
    /// the belt is stopped. At each ejector: [`EjectorConfig::decision_lead_us`] before the
    /// item's arrival there; the earliest of them.
    fn deadline_rel_us(&self, item: &Item, now: Instant) -> Option<i64> {
        let mut best: Option<i64> = None;
        for e in &self.ejectors {
            let rel = arrival_rel_us(&self.belt, item.pos_nm + mm_to_nm(e.ejector_distance_mm), now)?;
            let d = rel - e.decision_lead_us() as i64;
            best = Some(best.map_or(d, |b| b.min(d)));
        }
        best
    }

    fn apply_failsafe(&mut self, idx: usize, now: Instant) {
        let policy = self.failsafe;
        let fs = self.failsafe_ejector;
        let Some(item) = self.items.iter_mut().nth(idx) else {
            return;
        };
        match policy {
            FailSafePolicy::Reject => {
                item.state = State::Routed {
                    ejector: fs,
                    failsafe: true,
                }
            }
            FailSafePolicy::Accept => {
                item.state = State::Done;
                self.stats.failsafe_accepts += 1;
            }
            FailSafePolicy::LineStop => {
                item.state = State::Done;
                if !self.line_stop {
                    self.line_stop = true;
                    self.line_stop_due = Some(now);
                    self.stats.line_stops += 1;
                }
            }
        }
    }

    /// Apply item `id`'s decision, made at `now`. A fail-safe decision (or any decision for an
    /// item merged after an overflow) gets the fail-safe policy. A decision after the item's
    /// deadline is refused ([`DecideError::Late`]) and the fail-safe applies instead. Outputs
    /// change only in [`Tracker::poll`]: call it after.
    pub fn decide(&mut self, id: u32, d: &Decision, now: Instant) -> Result<(), DecideError> {
        let Some(idx) = self.items.iter().rposition(|i| i.id == id) else {
            if self.recent_overdue.iter().any(|&r| r == id) {
                self.stats.late_decisions += 1;
                return Err(DecideError::Late);
            }
            return Err(DecideError::UnknownItem);
        };
        let item = *self.items.iter().nth(idx).ok_or(DecideError::UnknownItem)?;
        if item.overdue {
            self.stats.late_decisions += 1;
            return Err(DecideError::Late);
        }
        if item.state != State::Undecided {
            return Err(DecideError::AlreadyDecided);
        }
        if self.deadline_rel_us(&item, now).is_some_and(|r| r < 0) {
            self.stats.late_decisions += 1;
            self.mark_overdue(idx, now, &mut |_| {});
            return Err(DecideError::Late);
        }
        if item.forced_failsafe || d.outcome == Outcome::FailSafe {
            if d.action == Action::Accept && !item.forced_failsafe {
                // The configured fail-safe action is to pass the item.
                if let Some(it) = self.items.iter_mut().nth(idx) {
                    it.state = State::Done;
                }
                self.stats.failsafe_accepts += 1;
                return Ok(());
            }
            self.apply_failsafe(idx, now);
            return Ok(());
        }
        let route = self.route(d);
        if let Some(it) = self.items.iter_mut().nth(idx) {
            match route {
                None => {
                    it.state = State::Done;
                    self.stats.accepted += 1;
                }
                Some((ejector, failsafe)) => it.state = State::Routed { ejector, failsafe },
            }
        }
        Ok(())
    }

    /// The belt position can no longer be trusted (an encoder fault at `now`): every item in
    /// flight that is neither fired nor accepted gets the fail-safe, whatever its decision
    /// (an undecided item when its decision or its deadline comes).
    pub fn fail_safe_in_flight(&mut self, now: Instant) {
        for idx in 0..self.items.len() {
            let Some(item) = self.items.iter_mut().nth(idx) else {
                break;
            };
            match item.state {
                State::Undecided => item.forced_failsafe = true,
                State::Routed { failsafe: false, .. } => {
                    item.forced_failsafe = true;
                    self.apply_failsafe(idx, now);
                }
                _ => {}
            }
        }
    }

    fn mark_overdue(&mut self, idx: usize, now: Instant, emit: &mut impl FnMut(TrackEvent)) -> bool {
        let Some(item) = self.items.iter_mut().nth(idx) else {
            return false;
        };
        item.overdue = true;
        let id = item.id;
        if self.recent_overdue.is_full() {
            self.recent_overdue.pop_front();
        }
        let _ = self.recent_overdue.push_back(id);
        self.stats.overdue += 1;
        emit(TrackEvent::Overdue { id });
        self.apply_failsafe(idx, now);
        true
    }

    /// Advance to `now`: apply deadlines, start and end pulses. Emits every edge due.
    pub fn poll(&mut self, now: Instant, mut emit: impl FnMut(TrackEvent)) {
        // 1. Deadlines of undecided items.
        for idx in 0..self.items.len() {
            let Some(item) = self.items.iter().nth(idx).copied() else {
                break;
            };
            if item.state == State::Undecided && self.deadline_rel_us(&item, now).is_some_and(|r| r <= 0) {
                self.mark_overdue(idx, now, &mut emit);
            }
        }
        if let Some(at) = self.line_stop_due.take() {
            emit(TrackEvent::Edge {
                output: Output::LineStop,
                active: true,
                at,
            });
        }
        // 2. Per ejector: end a pulse that is due (unless the next item merges), then start
        //    windows that are due.
        for e in 0..self.ejectors.len() {
            self.poll_ejector(e, now, &mut emit);
        }
        self.prune();
    }

    /// Index and predicted arrival (relative µs) of the next routed, unfired item of ejector `e`.
    fn next_for(&self, e: usize, now: Instant) -> Option<(usize, Option<i64>)> {
        let d = mm_to_nm(self.ejectors[e].ejector_distance_mm);
        self.items
            .iter()
            .enumerate()
            .filter(|(_, i)| matches!(i.state, State::Routed { ejector, .. } if ejector as usize == e))
            .min_by_key(|(_, i)| i.pos_nm)
            .map(|(idx, i)| (idx, arrival_rel_us(&self.belt, i.pos_nm + d, now)))
    }

    /// When the line of ejector `e` (which is on) is due off: relative µs (≤ 0: due now).
    fn off_rel_us(&self, line: &Line, now: Instant) -> i64 {
        let cap = line.off_cap.us as i64 - now.us as i64;
        match arrival_rel_us(&self.belt, line.off_pos_nm, now) {
            Some(r) => r.min(cap),
            None => cap,
        }
    }

    fn poll_ejector(&mut self, e: usize, now: Instant, emit: &mut impl FnMut(TrackEvent)) {
        let cfg = self.ejectors[e];
        let half = (cfg.pulse_width_us / 2) as i64;
        let clip_lead = (cfg.pulse_width_us / CLIP_LEAD_DIVISOR) as i64;
        let gap = cfg.min_gap_us as i64;
        let d_nm = mm_to_nm(cfg.ejector_distance_mm);
        loop {
            let line = self.lines[e];
            let next = self.next_for(e, now);
            if line.on {
                let off_rel = self.off_rel_us(&line, now);
                if off_rel <= 0 {
                    let off_at = offset(now, off_rel);
                    // Does the next item want the output within the gap after this pulse? Once
                    // the line is held for an item it stays held until that item fires, so
                    // a changing speed estimate cannot end the pulse just before it.
                    // A hold may last the gap and `MAX_ON_WIDTHS` pulse widths past the pulse's own
                    // end (the belt slowing meanwhile moves the item later), and is not begun
                    // again for the same item once that is spent (a belt that stopped).
                    let holding = line.hold_for.is_some_and(|id| {
                        next.is_some_and(|(idx, _)| self.items.iter().nth(idx).is_some_and(|i| i.id == id))
                    });
                    let held = holding && now < line.off_cap;
                    let hold_cap = off_at.add_us(gap as u64 + MAX_ON_WIDTHS * cfg.pulse_width_us as u64);
                    let keep = match next {
                        _ if held => true,
                        _ if holding => false,
                        Some((idx, Some(arr))) if arr - half < off_rel + gap => match cfg.merge {
                            MergePolicy::Extend => {
                                self.lines[e].hold_for = self.items.iter().nth(idx).map(|i| i.id);
                                self.lines[e].off_cap = line.off_cap.max(hold_cap);
                                true
                            }
                            MergePolicy::Clip => {
                                // A clipped window opens at least `clip_lead` before
                                // the predicted arrival, so that the prediction moving
                                // earlier meanwhile (speed, encoder) cannot put the
                                // arrival inside the gap, once the output is off.
                                if off_rel + gap + clip_lead <= arr {
                                    if let Some(it) = self.items.iter_mut().nth(idx) {
                                        it.not_before = Some(off_at.add_us(gap as u64));
                                    }
                                    false
                                } else {
                                    self.lines[e].hold_for = self.items.iter().nth(idx).map(|i| i.id);
                                    self.lines[e].off_cap = line.off_cap.max(hold_cap);
                                    true
                                }
                            }
                        },
                        _ => false,
                    };
                    if !keep {
                        self.lines[e].hold_for = None;
                        self.lines[e].on = false;
                        // The gap counts from when the output really went off.
                        self.lines[e].last_off = Some(now);
                        emit(TrackEvent::Edge {
                            output: Output::Ejector(e as u8),
                            active: false,
                            at: off_at,
                        });
                        continue;
                    }
                }
            }
            let Some((idx, Some(arr))) = next else { return };
            let Some(item) = self.items.iter().nth(idx).copied() else {
                return;
            };
            if arr - half > 0 {
                return; // not due yet
            }
            let arrival = offset(now, arr);
            let mut on = offset(now, arr - half);
            let mut clipped = false;
            if let Some(nb) = item.not_before {
                if nb > now {
                    return; // waits for the gap
                }
                if nb > on {
                    on = nb;
                    clipped = true;
                }
            }
            let line = self.lines[e];
            if !line.on {
                if let Some(last) = line.last_off {
                    let earliest = last.add_us(gap as u64);
                    if on < earliest {
                        // A window opening at the arrival itself still covers the item.
                        if earliest > now && earliest <= arrival {
                            if let Some(it) = self.items.iter_mut().nth(idx) {
                                it.not_before = Some(earliest);
                            }
                            return;
                        }
                        // Never before the previous pulse ended.
                        on = on.max(last).max(earliest.min(now));
                        clipped = true;
                    }
                }
            }
            // The window is symmetric in belt position around the item: it ends as far past
            // the ejector as it started before it, whatever the belt does meanwhile.
            let v = self.belt.speed_mm_per_s(now);
            let full_lead = if v > 0.0 { round_i64(v * half as f64) } else { 0 };
            let target = item.pos_nm + d_nm;
            // Normally the item is `full_lead` away now. If the output comes on late (the
            // belt sped up just before), the window closes as far past the ejector as the item
            // is before it now — still centred — but never shorter than half the pulse; a
            // window that starts late for the gap keeps its planned end instead.
            let remaining = target - self.belt.position_nm(now);
            let lead_nm = if clipped {
                full_lead
            } else {
                remaining.min(full_lead).max(full_lead / 2)
            };
            let off_pos = target + item.span_nm + lead_nm;
            let span_us = if item.span_nm > 0 && v > 0.0 {
                ceil_i64(item.span_nm as f64 / v) as u64
            } else {
                0
            };
            let off = arrival.add_us(half as u64 + span_us).max(on.add_us(1));
            let cap = on.add_us(MAX_ON_WIDTHS * cfg.pulse_width_us as u64 + span_us);
            let merged = line.on;
            if merged {
                self.lines[e].off_pos_nm = line.off_pos_nm.max(off_pos);
                self.lines[e].off_cap = line.off_cap.max(cap);
                self.lines[e].hold_for = None;
                self.stats.merged += 1;
            } else {
                self.lines[e] = Line {
                    on: true,
                    off_pos_nm: off_pos,
                    off_cap: cap,
                    last_off: line.last_off,
                    hold_for: None,
                };
                emit(TrackEvent::Edge {
                    output: Output::Ejector(e as u8),
                    active: true,
                    at: on,
                });
            }
            if clipped {
                self.stats.clipped += 1;
            }
            let failsafe = matches!(item.state, State::Routed { failsafe: true, .. });
            if failsafe {
                self.stats.failsafe_rejects += 1;
            }
            self.stats.fired[e] += 1;
            emit(TrackEvent::Fired {
                id: item.id,
                ejector: e as u8,
                on,
                off,
                merged,
                clipped,
                failsafe,
            });
            if let Some(it) = self.items.iter_mut().nth(idx) {
                it.state = State::Done;
            }
        }
    }

    /// The next time [`Tracker::poll`] has something to do, as predicted at `now` (at the
    /// current speed: with an encoder, poll again at the latest by then and re-predict).
    pub fn next_event(&self, now: Instant) -> Option<Instant> {
        let mut best: Option<Instant> = self.line_stop_due;
        let mut consider = |t: Instant| best = Some(best.map_or(t, |b| b.min(t)));
        for line in self.lines.iter().take(self.ejectors.len()) {
            if line.on {
                consider(offset(now, self.off_rel_us(line, now).max(0)));
            }
        }
        for item in &self.items {
            match item.state {
                State::Undecided => {
                    if let Some(r) = self.deadline_rel_us(item, now) {
                        consider(offset(now, r.max(0)));
                    }
                }
                State::Routed { ejector, .. } => {
                    let cfg = &self.ejectors[ejector as usize];
                    let target = item.pos_nm + mm_to_nm(cfg.ejector_distance_mm);
                    if let Some(arr) = arrival_rel_us(&self.belt, target, now) {
                        let mut t = offset(now, (arr - (cfg.pulse_width_us / 2) as i64).max(0));
                        if let Some(nb) = item.not_before {
                            t = t.max(nb);
                        }
                        consider(t);
                    }
                }
                State::Done => {}
            }
        }
        best
    }
}

#[cfg(test)]
mod tests;
