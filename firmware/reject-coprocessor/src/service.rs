//! What the co-processor does with the station's messages and with time, apart from the
//! hardware: the core's [`Tracker`] behind the link protocol ([`ferroscope::core::link`]).
//!
//! Guarantees:
//! - every message is applied in the order it arrived, at the time it names (lockstep) or at
//!   once (own clock); a decision the tracker cannot take is answered with `Refused`;
//! - in lockstep the tracker is polled at exactly the time each `Advance` names, so its pulses
//!   are the station's simulated line's, item for item;
//! - the link counts as lost after `link_timeout_ms` of the co-processor's own time without a
//!   frame while it tracks (time it did not run, [`LOOP_GAP_MAX_US`], is not counted). From
//!   then on the co-processor keeps time itself (in lockstep: from the last time advanced),
//!   every item still undecided gets the fail-safe at its deadline as the tracker plans it,
//!   pulses already planned fire on time, and the heartbeat stops at its fault level. A frame
//!   arriving later ends the loss;
//! - nothing allocates: the tracker and the frame buffers are fixed.

use ferroscope::core::link::{
    encode, failsafe_policy, Clocking, FrameDecoder, FromMcu, ToMcu, WireEjector, WireStats, MAX_FRAME, PROTOCOL,
};
use ferroscope::core::reject::{EjectorConfig, Output, TrackEvent, Tracker, TrackerError, MAX_EJECTORS};
use ferroscope::core::time::Instant;

/// The firmware's version, as `Hello` reports it: the one the station's release ships.
pub const VERSION: [u8; 3] = ferroscope::core::link::FIRMWARE_VERSION;

/// The heartbeat's half period while the link is up: 250 ms on, 250 ms off.
pub const HEARTBEAT_HALF_PERIOD_US: u64 = 250_000;

/// What the service asks of the hardware.
pub trait Board {
    /// Send bytes to the station.
    fn send(&mut self, bytes: &[u8]);
    /// Drive an output line.
    fn output(&mut self, output: Output, on: bool);
    /// Drive the heartbeat line.
    fn heartbeat(&mut self, on: bool);
    /// Arm the hardware compare: at own time `at_us` drive every one of `edges` (a line and
    /// its level) at once, without the main loop. False when it cannot (`at_us` is not after
    /// `now_us`): the caller's poll drives them. Arming replaces what was armed.
    fn arm(&mut self, at_us: u64, edges: &[(Output, bool)], now_us: u64) -> bool;
    /// Disarm the compare: what it holds is not driven.
    fn disarm(&mut self);
}

/// Edges one compare drives at once: every line may change at the same microsecond.
pub const COMPARE_EDGES: usize = MAX_EJECTORS + 1;

/// How long after an armed edge's time the main loop waits for the compare before it drives
/// the edge itself. The compare fires within a microsecond on the part; the wait only matters
/// where it did not fire (under an emulator whose timers run behind the clock).
pub const COMPARE_GRACE_US: u64 = 200;

/// The longest the main loop takes between two calls of [`Service::tick`] while it runs: it
/// wakes at least every millisecond, and answering a burst of frames at 921 600 Bd takes a few
/// more. A longer gap means the core was not running.
pub const LOOP_GAP_MAX_US: u64 = 5_000;

/// With an encoder, the plan moves with every count: re-plan the compare at most this often
/// for counts alone (a message or a pulse re-plans at once).
const ENCODER_REPLAN_US: u64 = 200;

/// What the compare was last armed with.
#[derive(Clone, Copy)]
struct Armed {
    /// Tracker time of the edges.
    at: Instant,
    edges: [(Output, bool); COMPARE_EDGES],
    len: usize,
    /// The hardware holds it (not fired, not disarmed).
    live: bool,
    /// The plan it was made from ([`Service::plan_version`] then).
    version: u32,
}

/// An edge's planned time moves by the tracker's rounding (a microsecond) with the time it is
/// polled at: within this, an edge the poll emits is the one the compare was armed with.
const SAME_EDGE_US: u64 = 2;

impl Armed {
    fn holds(&self, output: Output, active: bool, at: Instant) -> bool {
        at.us.abs_diff(self.at.us) <= SAME_EDGE_US && self.edges[..self.len].contains(&(output, active))
    }
}

/// Running state.
pub struct Service {
    decoder: FrameDecoder,
    ejectors: [Option<EjectorConfig>; MAX_EJECTORS],
    tracker: Option<Tracker>,
    clocking: Clocking,
    link_timeout_us: u64,
    /// Own time of the last frame received.
    last_frame_us: u64,
    /// Own time of the last [`Service::tick`].
    last_tick_us: u64,
    /// Lockstep: the station's last time, and the own time it was given at.
    lockstep: (Instant, u64),
    link_lost: bool,
    heartbeat: bool,
    heartbeat_at_us: u64,
    /// Link losses since power-on.
    pub losses: u32,
    /// Link losses since the last `Start`.
    losses_since_start: u16,
    /// Edges driven since start.
    pub edges: u64,
    /// Of the edges on the own clock, those the compare drove, and those the main loop did.
    pub compare_edges: u64,
    pub loop_edges: u64,
    /// The compare's plan: what it holds, and the plan (version, next time) it was made for.
    armed: Option<Armed>,
    plan_version: u32,
    planned: Option<(u32, Instant)>,
    /// An encoder count moved the plan; when the compare was last re-planned for counts.
    encoder_moved: bool,
    encoder_replan_us: u64,
    /// The tracker copied to find the next edges without taking them.
    scratch: Option<Tracker>,
}

impl Service {
    /// Nothing tracked until the station sends `Start`.
    pub const fn new() -> Self {
        Service {
            decoder: FrameDecoder::new(),
            ejectors: [None; MAX_EJECTORS],
            tracker: None,
            clocking: Clocking::Hardware,
            link_timeout_us: 0,
            last_frame_us: 0,
            last_tick_us: 0,
            lockstep: (Instant::from_us(0), 0),
            link_lost: false,
            heartbeat: false,
            heartbeat_at_us: 0,
            losses: 0,
            losses_since_start: 0,
            edges: 0,
            compare_edges: 0,
            loop_edges: 0,
            armed: None,
            plan_version: 0,
            planned: None,
            encoder_moved: false,
            encoder_replan_us: 0,
            scratch: None,
        }
    }

    /// Own time of tracker time `t` (the inverse of [`Service::tracker_time`]).
    fn own_time(&self, t: Instant) -> u64 {
        match self.clocking {
            Clocking::Hardware => t.us,
            Clocking::Lockstep => {
                let (at, given) = self.lockstep;
                given + t.us.saturating_sub(at.us)
            }
        }
    }

    /// Take the compare back before the plan changes: an edge it holds may no longer be due.
    fn hold_compare(&mut self, board: &mut impl Board) {
        if let Some(a) = self.armed.as_mut() {
            if a.live {
                board.disarm();
                a.live = false;
            }
        }
        self.plan_version = self.plan_version.wrapping_add(1);
    }

    /// The tracker's time for own time `own_us`.
    fn tracker_time(&self, own_us: u64) -> Instant {
        match self.clocking {
            Clocking::Hardware => Instant::from_us(own_us),
            Clocking::Lockstep => {
                let (at, given) = self.lockstep;
                if self.link_lost {
                    at.add_us(own_us.saturating_sub(given))
                } else {
                    at
                }
            }
        }
    }

    fn send(board: &mut impl Board, msg: &FromMcu) {
        let mut frame = [0u8; MAX_FRAME];
        if let Ok(n) = encode(msg, &mut frame) {
            board.send(&frame[..n]);
        }
    }

    /// One byte from the link, at own time `own_us`.
    pub fn on_byte(&mut self, byte: u8, own_us: u64, board: &mut impl Board) {
        match self.decoder.push::<ToMcu>(byte) {
            Some(Ok(msg)) => {
                if !matches!(msg, ToMcu::Ping { .. } | ToMcu::Stats | ToMcu::Hello { .. }) {
                    self.hold_compare(board);
                }
                self.last_frame_us = own_us;
                if self.link_lost {
                    self.link_lost = false;
                    defmt::warn!("link back at {=u64} us", own_us);
                }
                self.on_message(msg, own_us, board);
            }
            Some(Err(e)) => defmt::warn!("frame dropped: {}", e),
            None => {}
        }
    }

    fn on_message(&mut self, msg: ToMcu, own_us: u64, board: &mut impl Board) {
        match msg {
            ToMcu::Hello { protocol } => {
                if protocol != PROTOCOL {
                    defmt::warn!(
                        "station speaks protocol {=u16}, this firmware {=u16}",
                        protocol,
                        PROTOCOL
                    );
                }
                Self::send(
                    board,
                    &FromMcu::Hello {
                        protocol: PROTOCOL,
                        version: VERSION,
                    },
                );
            }
            ToMcu::Ejector { index, ejector } => {
                if let Some(slot) = self.ejectors.get_mut(index as usize) {
                    *slot = Some(EjectorConfig::from(ejector));
                }
            }
            ToMcu::Start {
                ejectors,
                failsafe,
                belt,
                link_timeout_ms,
                clocking,
            } => {
                let error = self.start(ejectors, failsafe, belt, link_timeout_ms, clocking, own_us);
                Self::send(board, &FromMcu::Started { error });
            }
            ToMcu::Capture { id, at_us } => {
                if let Some(t) = self.tracker.as_mut() {
                    if !t.begin(id, Instant::from_us(at_us)) {
                        defmt::warn!("tracker full: item {=u32} merged", id);
                    }
                }
            }
            ToMcu::Decide { id, decision, at_us } => {
                let Some(t) = self.tracker.as_mut() else { return };
                let why = match decision.decision() {
                    None => 4,
                    Some(d) => match t.decide(id, &d, Instant::from_us(at_us)) {
                        Ok(()) => 0,
                        Err(ferroscope::core::reject::DecideError::UnknownItem) => 1,
                        Err(ferroscope::core::reject::DecideError::Late) => 2,
                        Err(ferroscope::core::reject::DecideError::AlreadyDecided) => 3,
                    },
                };
                if why != 0 {
                    Self::send(board, &FromMcu::Refused { id, why });
                }
            }
            ToMcu::Speed { mm_per_s, at_us } => {
                if let Some(t) = self.tracker.as_mut() {
                    t.belt_mut().set_speed(Instant::from_us(at_us), mm_per_s);
                }
            }
            ToMcu::Encoder { count, at_us } => {
                if let Some(t) = self.tracker.as_mut() {
                    t.belt_mut().on_encoder(count, Instant::from_us(at_us));
                }
            }
            ToMcu::Advance { to_us } => {
                let now = Instant::from_us(to_us);
                self.lockstep = (now, own_us);
                let (mut next, mut in_flight) = (None, 0);
                if let Some(t) = self.tracker.as_mut() {
                    let mut edges = 0u64;
                    t.poll(now, |ev| {
                        if let TrackEvent::Edge { output, active, .. } = ev {
                            board.output(output, active);
                            edges += 1;
                        }
                        Self::send(board, &FromMcu::event(&ev));
                    });
                    self.edges += edges;
                    next = t.next_event(now).map(|i| i.us);
                    in_flight = t.in_flight().min(u16::MAX as usize) as u16;
                }
                Self::send(
                    board,
                    &FromMcu::Advanced {
                        now_us: to_us,
                        next_us: next,
                        in_flight,
                        losses: self.losses_since_start,
                    },
                );
            }
            ToMcu::Ping { seq } => {
                let now_us = self.tracker_time(own_us).us;
                Self::send(board, &FromMcu::Pong { seq, now_us });
            }
            ToMcu::Stats => {
                let stats = self
                    .tracker
                    .as_ref()
                    .map(|t| WireStats::from(t.stats()))
                    .unwrap_or_default();
                Self::send(board, &FromMcu::Stats(stats));
            }
        }
    }

    fn start(
        &mut self,
        count: u8,
        failsafe: u8,
        belt: ferroscope::core::link::WireBelt,
        link_timeout_ms: u16,
        clocking: Clocking,
        own_us: u64,
    ) -> u8 {
        let n = count as usize;
        if n == 0 || n > MAX_EJECTORS {
            return 1;
        }
        let mut list = [EjectorConfig::from(WireEjector {
            distance_mm: 0.0,
            pulse_width_us: 1,
            min_gap_us: 0,
            extend: true,
            classes: 0,
            uncertain: false,
            failsafe: false,
        }); MAX_EJECTORS];
        for (k, slot) in list.iter_mut().take(n).enumerate() {
            match self.ejectors[k] {
                Some(e) => *slot = e,
                None => return 2,
            }
        }
        let Some(policy) = failsafe_policy(failsafe) else {
            return 5;
        };
        let start = match clocking {
            Clocking::Hardware => Instant::from_us(own_us),
            Clocking::Lockstep => Instant::from_us(0),
        };
        let wire_belt = belt;
        let Some(belt) = belt.belt(start) else { return 4 };
        match Tracker::new(&list[..n], policy, belt) {
            Ok(t) => {
                self.tracker = Some(t);
                self.clocking = clocking;
                self.link_timeout_us = link_timeout_ms as u64 * 1000;
                self.lockstep = (start, own_us);
                self.last_frame_us = own_us;
                self.link_lost = false;
                self.losses_since_start = 0;
                defmt::info!(
                    "tracking: {=usize} ejectors, fail-safe {}, {}, link timeout {=u16} ms, {}",
                    n,
                    policy,
                    wire_belt,
                    link_timeout_ms,
                    clocking
                );
                0
            }
            Err(TrackerError::EjectorCount(_)) => 1,
            Err(TrackerError::Ejector(_)) => 2,
            Err(TrackerError::NoFailSafeEjector) => 3,
        }
    }

    /// Keep time at own time `own_us`: the link watchdog, the heartbeat, and (on its own
    /// clock, or after a link loss) the tracker's pulses when due. `fired`: the own time the
    /// compare drove what it was armed with, if it did since the last call. Then the compare
    /// is armed for the next edges.
    pub fn tick(&mut self, own_us: u64, fired: Option<u64>, board: &mut impl Board) {
        // Silence counts only while the firmware runs to hear it: a gap between two calls
        // longer than the loop ever takes (a halted core, a debugger, an emulator the host did
        // not run) is not silence, and moves the last frame's time on by as much.
        let paused = own_us.saturating_sub(self.last_tick_us).saturating_sub(LOOP_GAP_MAX_US);
        if paused > 0 && self.last_frame_us <= self.last_tick_us {
            self.last_frame_us += paused;
        }
        self.last_tick_us = own_us;
        let Some(tracker) = self.tracker.as_ref() else { return };
        if !self.link_lost && own_us.saturating_sub(self.last_frame_us) > self.link_timeout_us {
            self.link_lost = true;
            self.losses += 1;
            self.losses_since_start = self.losses_since_start.saturating_add(1);
            let silent_us = own_us - self.last_frame_us;
            let at = self.tracker_time(own_us);
            defmt::error!(
                "LINK LOST: no frame for {=u64} us (timeout {=u64} us); {=usize} items in flight go on, the undecided to the fail-safe; tracker time {=u64} us",
                silent_us,
                self.link_timeout_us,
                tracker.in_flight(),
                at.us
            );
            board.heartbeat(false);
        }
        if !self.link_lost && own_us >= self.heartbeat_at_us {
            self.heartbeat = !self.heartbeat;
            board.heartbeat(self.heartbeat);
            self.heartbeat_at_us = own_us + HEARTBEAT_HALF_PERIOD_US;
        }
        if let (Some(_), Some(a)) = (fired, self.armed.as_mut()) {
            a.live = false;
        }
        let own_clock = self.clocking == Clocking::Hardware || self.link_lost;
        if !own_clock {
            self.hold_compare(board);
            return;
        }
        let now = self.tracker_time(own_us);
        let lost = self.link_lost;
        let armed = self.armed;
        // The compare's time stands for the tracker's only if nothing changed the plan since it
        // was armed (a message applied after the compare fired is later than that time).
        let unchanged = armed.is_some_and(|a| a.version == self.plan_version);
        let driven_by_compare = fired.filter(|_| unchanged).map(|f| self.tracker_time(f));
        let Some(t) = self.tracker.as_mut() else { return };
        let Some(next) = t.next_event(now) else { return };
        // An edge the compare holds is left to it, for a grace period.
        let waiting = armed.is_some_and(|a| a.live && now.us < a.at.us + COMPARE_GRACE_US);
        if next > now || waiting {
            self.rearm(own_us, board);
            return;
        }
        // When the compare drove the due edges, the tracker takes them at the time it did: a
        // pulse's end is planned from when it really began. Anything due later is taken at
        // the next call.
        let poll_at = driven_by_compare.filter(|&f| f >= next && f <= now).unwrap_or(now);
        let (mut edges, mut by_compare) = (0u64, 0u64);
        t.poll(poll_at, |ev| {
            match ev {
                TrackEvent::Edge { output, active, at } => {
                    // Driven again by the loop even when the compare drove it: the same level.
                    board.output(output, active);
                    edges += 1;
                    let compare = driven_by_compare.filter(|_| armed.is_some_and(|a| a.holds(output, active, at)));
                    if compare.is_some() {
                        by_compare += 1;
                    }
                    if lost {
                        defmt::info!(
                            "edge {=u8} {=bool} planned {=u64} us, driven {=u64} us by the {=str}",
                            ferroscope::core::link::output_code(output),
                            active,
                            at.us,
                            compare.unwrap_or(poll_at).us,
                            if compare.is_some() { "compare" } else { "loop" }
                        );
                    }
                }
                TrackEvent::Fired { id, failsafe, .. } if lost => {
                    defmt::info!("fired item {=u32} failsafe {=bool}", id, failsafe)
                }
                TrackEvent::Overdue { id } if lost => defmt::info!("overdue item {=u32}", id),
                _ => {}
            }
            if !lost {
                Self::send(board, &FromMcu::event(&ev));
            }
        });
        self.edges += edges;
        self.compare_edges += by_compare;
        self.loop_edges += edges - by_compare;
        self.hold_compare(board);
        self.rearm(own_us, board);
    }

    /// The own time of the edges the compare holds, if it holds any.
    pub fn armed_at(&self) -> Option<u64> {
        self.armed.filter(|a| a.live).map(|a| self.own_time(a.at))
    }

    /// The own time by which [`Service::tick`] next has something to do (a pulse, a deadline,
    /// the heartbeat, the link watchdog), if anything is tracked; the loop may sleep until then.
    pub fn next_wake(&self, own_us: u64) -> Option<u64> {
        let t = self.tracker.as_ref()?;
        let mut wake = u64::MAX;
        if !self.link_lost {
            wake = wake
                .min(self.heartbeat_at_us)
                .min(self.last_frame_us + self.link_timeout_us + 1);
        }
        if self.clocking == Clocking::Hardware || self.link_lost {
            if let Some(next) = t.next_event(self.tracker_time(own_us)) {
                wake = wake.min(self.own_time(next));
            }
        }
        Some(wake)
    }

    /// Arm the compare for the tracker's next edges, if they are not armed already: a copy of
    /// the tracker is polled at its next event, and the edges that poll emits are the plan.
    fn rearm(&mut self, own_us: u64, board: &mut impl Board) {
        if self.encoder_moved && own_us >= self.encoder_replan_us + ENCODER_REPLAN_US {
            self.encoder_moved = false;
            self.encoder_replan_us = own_us;
            self.hold_compare(board);
        }
        let now = self.tracker_time(own_us);
        let Some(t) = self.tracker.as_ref() else { return };
        let Some(next) = t.next_event(now) else { return };
        if self.planned == Some((self.plan_version, next)) {
            return;
        }
        self.planned = Some((self.plan_version, next));
        let scratch = self.scratch.get_or_insert_with(|| t.clone());
        scratch.clone_from(t);
        let mut armed = Armed {
            at: next,
            edges: [(Output::LineStop, false); COMPARE_EDGES],
            len: 0,
            live: false,
            version: self.plan_version,
        };
        // The edges due by `next`; they are planned at `next` give or take the rounding.
        scratch.poll(next, |ev| {
            if let TrackEvent::Edge { output, active, at } = ev {
                if armed.len < COMPARE_EDGES {
                    armed.at = if armed.len == 0 { at } else { armed.at.min(at) };
                    armed.edges[armed.len] = (output, active);
                    armed.len += 1;
                }
            }
        });
        if armed.len > 0 {
            armed.live = board.arm(self.own_time(armed.at), &armed.edges[..armed.len], own_us);
            self.armed = Some(armed);
        }
    }

    /// The hardware encoder counted to `count` at own time `own_us`: followed on the own
    /// clock only (in lockstep the station replays its counts).
    pub fn on_encoder(&mut self, count: i64, own_us: u64) {
        if self.clocking != Clocking::Hardware {
            return;
        }
        if let Some(t) = self.tracker.as_mut() {
            if t.belt().is_encoder() {
                t.belt_mut().on_encoder(count, Instant::from_us(own_us));
                self.encoder_moved = true;
            }
        }
    }

    /// The link's frame counts, for the log.
    pub fn link_stats(&self) -> ferroscope::core::link::LinkStats {
        self.decoder.stats()
    }
}
