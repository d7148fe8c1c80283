//! What the co-processor does with the station's messages and with time, apart from the
//! hardware: the core's [`Tracker`] behind the link protocol ([`ferroscope::core::link`]).
//!
//! Guarantees:
//! - every message is applied in the order it arrived, at the time it names (lockstep) or at
//!   once (own clock); a decision the tracker cannot take is answered with `Refused`;
//! - in lockstep the tracker is polled at exactly the time each `Advance` names, so its pulses
//!   are the station's simulated line's, item for item;
//! - the link counts as lost after `link_timeout_ms` of the co-processor's own time without a
//!   frame while it tracks. From then on the co-processor keeps time itself (in lockstep: from
//!   the last time advanced), every item still undecided gets the fail-safe at its deadline as
//!   the tracker plans it, pulses already planned fire on time, and the heartbeat stops at its
//!   fault level. A frame arriving later ends the loss;
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
            lockstep: (Instant::from_us(0), 0),
            link_lost: false,
            heartbeat: false,
            heartbeat_at_us: 0,
            losses: 0,
            losses_since_start: 0,
            edges: 0,
        }
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
    /// clock, or after a link loss) the tracker's pulses when due.
    pub fn tick(&mut self, own_us: u64, board: &mut impl Board) {
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
        let own_clock = self.clocking == Clocking::Hardware || self.link_lost;
        if !own_clock {
            return;
        }
        let now = self.tracker_time(own_us);
        let lost = self.link_lost;
        let Some(t) = self.tracker.as_mut() else { return };
        if t.next_event(now).is_none_or(|n| n > now) {
            return;
        }
        let mut edges = 0u64;
        t.poll(now, |ev| {
            match ev {
                TrackEvent::Edge { output, active, at } => {
                    board.output(output, active);
                    edges += 1;
                    if lost {
                        defmt::info!(
                            "edge {=u8} {=bool} planned {=u64} us, driven {=u64} us",
                            ferroscope::core::link::output_code(output),
                            active,
                            at.us,
                            now.us
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
            }
        }
    }

    /// The link's frame counts, for the log.
    pub fn link_stats(&self) -> ferroscope::core::link::LinkStats {
        self.decoder.stats()
    }
}
