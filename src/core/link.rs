//! The link between the station (Linux) and the reject co-processor (a microcontroller that
//! owns the belt encoder and the ejector lines): its messages and their framing on a serial
//! line.
//!
//! A frame is one message, serialised with postcard, followed by the CRC-32 (IEEE) of those
//! bytes in little-endian order, COBS-encoded, and ended by one zero byte. COBS keeps zero out
//! of the frame, so a receiver that starts listening mid-stream, or loses bytes, finds the next
//! frame at the next zero.
//!
//! Guarantees, each tested:
//! - a frame is at most [`MAX_FRAME`] bytes on the wire; [`encode`] refuses a message that does
//!   not fit rather than cut it;
//! - [`FrameDecoder`] holds at most [`MAX_FRAME`] bytes, whatever it is fed: a longer run
//!   without a zero is dropped and counted as too long, and the decoder picks up at the next
//!   zero;
//! - a frame whose CRC does not match, whose COBS is broken, or whose bytes are not a message of
//!   the expected kind is counted and dropped, never handed on: bit errors on the line lose
//!   that frame only;
//! - nothing here allocates or needs an operating system.
//!
//! Versions: both ends say [`PROTOCOL`] in their `Hello`; the station refuses a co-processor
//! that answers with another.

use serde::{Deserialize, Serialize};

use super::belt::Belt;
use super::decision::{Action, Decision, Outcome};
use super::reject::{EjectorConfig, FailSafePolicy, MergePolicy, OutcomeSet, Output, TrackEvent, TrackerStats};
use super::time::Instant;

/// The protocol's version; both ends must say the same.
pub const PROTOCOL: u16 = 1;

/// The firmware version this release ships (`firmware/reject-coprocessor`), major.minor.patch:
/// the firmware's `Hello` says it, and `ferroscope check --coprocessor` wants the same.
pub const FIRMWARE_VERSION: [u8; 3] = [0, 1, 0];

/// Longest serialised message with its CRC, bytes. The largest message is
/// [`FromMcu::Stats`] (up to 10 bytes per counter in postcard's variable-length integers,
/// well under this in practice).
pub const MAX_PAYLOAD: usize = 160;

/// Longest frame on the wire: the payload, COBS's one byte per 254 and one ahead, and the zero
/// that ends it.
pub const MAX_FRAME: usize = MAX_PAYLOAD + MAX_PAYLOAD / 254 + 2;

/// One ejector as the link carries it ([`EjectorConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WireEjector {
    /// Distance from the camera's axis, mm.
    pub distance_mm: f32,
    /// Pulse width, µs.
    pub pulse_width_us: u32,
    /// Minimum off-time between pulses, µs.
    pub min_gap_us: u32,
    /// Merge policy: true for [`MergePolicy::Extend`], false for [`MergePolicy::Clip`].
    pub extend: bool,
    /// Reject classes it takes (bit per class).
    pub classes: u16,
    /// Takes uncertain items.
    pub uncertain: bool,
    /// Takes fail-safe items.
    pub failsafe: bool,
}

impl From<&EjectorConfig> for WireEjector {
    fn from(e: &EjectorConfig) -> Self {
        WireEjector {
            distance_mm: e.ejector_distance_mm,
            pulse_width_us: e.pulse_width_us,
            min_gap_us: e.min_gap_us,
            extend: e.merge == MergePolicy::Extend,
            classes: e.takes.classes,
            uncertain: e.takes.uncertain,
            failsafe: e.takes.failsafe,
        }
    }
}

impl From<WireEjector> for EjectorConfig {
    fn from(w: WireEjector) -> Self {
        EjectorConfig {
            ejector_distance_mm: w.distance_mm,
            pulse_width_us: w.pulse_width_us,
            min_gap_us: w.min_gap_us,
            merge: if w.extend {
                MergePolicy::Extend
            } else {
                MergePolicy::Clip
            },
            takes: OutcomeSet {
                classes: w.classes,
                uncertain: w.uncertain,
                failsafe: w.failsafe,
            },
        }
    }
}

/// How the co-processor follows the belt.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WireBelt {
    /// Reported speed (mm/s), changed by [`ToMcu::Speed`].
    Speed(f32),
    /// Encoder counts per mm, counted by the co-processor (or reported by [`ToMcu::Encoder`]).
    Encoder(f32),
}

impl WireBelt {
    /// The core's belt model for this setting, starting at `now`.
    pub fn belt(self, now: Instant) -> Option<Belt> {
        match self {
            WireBelt::Speed(v) => Some(Belt::from_speed(v, now)),
            WireBelt::Encoder(c) => Belt::from_encoder(c),
        }
    }
}

/// What the fail-safe does, on the wire ([`FailSafePolicy`]).
pub const fn failsafe_code(p: FailSafePolicy) -> u8 {
    match p {
        FailSafePolicy::Reject => 0,
        FailSafePolicy::Accept => 1,
        FailSafePolicy::LineStop => 2,
    }
}

/// The policy of a code from [`failsafe_code`].
pub const fn failsafe_policy(code: u8) -> Option<FailSafePolicy> {
    match code {
        0 => Some(FailSafePolicy::Reject),
        1 => Some(FailSafePolicy::Accept),
        2 => Some(FailSafePolicy::LineStop),
        _ => None,
    }
}

/// A decision on the wire ([`Decision`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WireDecision {
    /// 0 accept, 1 reject, 2 uncertain, 3 fail-safe.
    pub outcome: u8,
    /// Reject (true) or accept.
    pub reject: bool,
    /// Winning class.
    pub class: Option<u8>,
    /// Its score.
    pub score: f32,
}

impl From<&Decision> for WireDecision {
    fn from(d: &Decision) -> Self {
        WireDecision {
            outcome: match d.outcome {
                Outcome::Accept => 0,
                Outcome::Reject => 1,
                Outcome::Uncertain => 2,
                Outcome::FailSafe => 3,
            },
            reject: d.action == Action::Reject,
            class: d.class,
            score: d.score,
        }
    }
}

impl WireDecision {
    /// The core's decision; `None` for an outcome code that does not exist.
    pub fn decision(&self) -> Option<Decision> {
        let outcome = match self.outcome {
            0 => Outcome::Accept,
            1 => Outcome::Reject,
            2 => Outcome::Uncertain,
            3 => Outcome::FailSafe,
            _ => return None,
        };
        Some(Decision {
            outcome,
            action: if self.reject { Action::Reject } else { Action::Accept },
            class: self.class,
            score: self.score,
        })
    }
}

/// An output on the wire: ejector 0–3, or [`LINE_STOP`].
pub const LINE_STOP: u8 = 0xFF;

/// The wire code of an output.
pub const fn output_code(o: Output) -> u8 {
    match o {
        Output::Ejector(n) => n,
        Output::LineStop => LINE_STOP,
    }
}

/// The output of a wire code.
pub const fn output_of(code: u8) -> Output {
    if code == LINE_STOP {
        Output::LineStop
    } else {
        Output::Ejector(code)
    }
}

/// How the co-processor keeps time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Clocking {
    /// Its own timer: inputs are applied when they arrive, pulses fire on the timer.
    Hardware,
    /// The station's: nothing moves until [`ToMcu::Advance`] says the time, and then the
    /// tracker is polled at exactly that time (replaying a recorded or simulated line, item for
    /// item). When the link is lost the co-processor goes on from the last time on its own
    /// timer.
    Lockstep,
}

/// From the station to the co-processor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ToMcu {
    /// Who is there: answered by [`FromMcu::Hello`].
    Hello {
        /// The station's [`PROTOCOL`].
        protocol: u16,
    },
    /// Ejector `index`'s settings, before [`ToMcu::Start`].
    Ejector {
        /// 0 to 3.
        index: u8,
        /// Its settings.
        ejector: WireEjector,
    },
    /// Start tracking with the ejectors sent so far: answered by [`FromMcu::Started`].
    Start {
        /// How many ejectors (the first `ejectors` sent).
        ejectors: u8,
        /// [`failsafe_code`].
        failsafe: u8,
        /// Belt model.
        belt: WireBelt,
        /// The link counts as lost after this long without a frame (ms).
        link_timeout_ms: u16,
        /// Whose clock.
        clocking: Clocking,
    },
    /// An item passed the camera at `at_us`.
    Capture {
        /// Item.
        id: u32,
        /// When (the co-processor's clock).
        at_us: u64,
    },
    /// Item `id`'s decision, made at `at_us`.
    Decide {
        /// Item.
        id: u32,
        /// The decision.
        decision: WireDecision,
        /// When.
        at_us: u64,
    },
    /// The belt's speed changed (speed mode).
    Speed {
        /// New speed.
        mm_per_s: f32,
        /// When.
        at_us: u64,
    },
    /// An encoder count and its time (replayed; on hardware the co-processor counts itself).
    Encoder {
        /// Count.
        count: i64,
        /// When.
        at_us: u64,
    },
    /// Lockstep: poll the tracker at `to_us`; answered by the events then due and
    /// [`FromMcu::Advanced`].
    Advance {
        /// The time.
        to_us: u64,
    },
    /// Keep-alive; answered by [`FromMcu::Pong`].
    Ping {
        /// Echoed.
        seq: u32,
    },
    /// Send the tracker's totals ([`FromMcu::Stats`]).
    Stats,
}

/// From the co-processor to the station.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FromMcu {
    /// The firmware's answer to [`ToMcu::Hello`].
    Hello {
        /// Its [`PROTOCOL`].
        protocol: u16,
        /// Firmware version, major.minor.patch.
        version: [u8; 3],
    },
    /// [`ToMcu::Start`] taken (`error` 0) or refused (1 ejector count, 2 an ejector, 3 no
    /// fail-safe ejector, 4 belt, 5 fail-safe code).
    Started {
        /// 0 when tracking started.
        error: u8,
    },
    /// An output changed.
    Edge {
        /// [`output_code`].
        output: u8,
        /// New level.
        active: bool,
        /// Planned time.
        at_us: u64,
    },
    /// An item is being rejected ([`TrackEvent::Fired`]).
    Fired {
        /// Item.
        id: u32,
        /// Ejector.
        ejector: u8,
        /// Its window.
        on_us: u64,
        /// Its window's end.
        off_us: u64,
        /// Joined a pulse already on.
        merged: bool,
        /// Started late after the gap.
        clipped: bool,
        /// By the fail-safe.
        failsafe: bool,
    },
    /// An item reached its deadline undecided.
    Overdue {
        /// Item.
        id: u32,
    },
    /// A decision was not applied: 1 unknown item, 2 late, 3 already decided, 4 bad outcome.
    Refused {
        /// Item.
        id: u32,
        /// Why.
        why: u8,
    },
    /// Lockstep: polled at `now_us`; the next thing due is at `next_us`.
    Advanced {
        /// The time polled.
        now_us: u64,
        /// The tracker's next event.
        next_us: Option<u64>,
        /// Items in flight.
        in_flight: u16,
        /// Link losses the co-processor has seen since it started tracking.
        losses: u16,
    },
    /// Answer to [`ToMcu::Ping`], with the co-processor's time.
    Pong {
        /// Echoed.
        seq: u32,
        /// Its clock.
        now_us: u64,
    },
    /// The tracker's totals.
    Stats(WireStats),
}

/// [`TrackerStats`] on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WireStats {
    /// Items begun.
    pub items: u64,
    /// Accepted.
    pub accepted: u64,
    /// Fired per ejector.
    pub fired: [u64; 4],
    /// Fail-safe rejects.
    pub failsafe_rejects: u64,
    /// Fail-safe accepts.
    pub failsafe_accepts: u64,
    /// Overdue.
    pub overdue: u64,
    /// Late decisions.
    pub late_decisions: u64,
    /// Line stops.
    pub line_stops: u64,
    /// Overflows.
    pub overflows: u64,
    /// Merged.
    pub merged: u64,
    /// Clipped.
    pub clipped: u64,
}

impl From<&TrackerStats> for WireStats {
    fn from(s: &TrackerStats) -> Self {
        WireStats {
            items: s.items,
            accepted: s.accepted,
            fired: s.fired,
            failsafe_rejects: s.failsafe_rejects,
            failsafe_accepts: s.failsafe_accepts,
            overdue: s.overdue,
            late_decisions: s.late_decisions,
            line_stops: s.line_stops,
            overflows: s.overflows,
            merged: s.merged,
            clipped: s.clipped,
        }
    }
}

impl From<WireStats> for TrackerStats {
    fn from(s: WireStats) -> Self {
        TrackerStats {
            items: s.items,
            accepted: s.accepted,
            fired: s.fired,
            failsafe_rejects: s.failsafe_rejects,
            failsafe_accepts: s.failsafe_accepts,
            overdue: s.overdue,
            late_decisions: s.late_decisions,
            line_stops: s.line_stops,
            overflows: s.overflows,
            merged: s.merged,
            clipped: s.clipped,
        }
    }
}

impl FromMcu {
    /// The message for a tracker event.
    pub fn event(ev: &TrackEvent) -> FromMcu {
        match *ev {
            TrackEvent::Edge { output, active, at } => FromMcu::Edge {
                output: output_code(output),
                active,
                at_us: at.us,
            },
            TrackEvent::Fired {
                id,
                ejector,
                on,
                off,
                merged,
                clipped,
                failsafe,
            } => FromMcu::Fired {
                id,
                ejector,
                on_us: on.us,
                off_us: off.us,
                merged,
                clipped,
                failsafe,
            },
            TrackEvent::Overdue { id } => FromMcu::Overdue { id },
        }
    }

    /// The tracker event this message reports, if it is one.
    pub fn track_event(&self) -> Option<TrackEvent> {
        match *self {
            FromMcu::Edge { output, active, at_us } => Some(TrackEvent::Edge {
                output: output_of(output),
                active,
                at: Instant::from_us(at_us),
            }),
            FromMcu::Fired {
                id,
                ejector,
                on_us,
                off_us,
                merged,
                clipped,
                failsafe,
            } => Some(TrackEvent::Fired {
                id,
                ejector,
                on: Instant::from_us(on_us),
                off: Instant::from_us(off_us),
                merged,
                clipped,
                failsafe,
            }),
            FromMcu::Overdue { id } => Some(TrackEvent::Overdue { id }),
            _ => None,
        }
    }
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LinkError {
    /// More than [`MAX_FRAME`] bytes without a zero.
    TooLong,
    /// Not valid COBS, or shorter than a CRC.
    Framing,
    /// The CRC does not match.
    Crc,
    /// The bytes are not a message of this kind.
    Message,
    /// A message too large to send ([`encode`]).
    TooLarge,
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            LinkError::TooLong => "frame longer than the link allows",
            LinkError::Framing => "broken framing",
            LinkError::Crc => "CRC mismatch",
            LinkError::Message => "not a message of the protocol",
            LinkError::TooLarge => "message too large for a frame",
        })
    }
}

/// Frame `msg` into `out`; returns the frame's length (ending zero included).
pub fn encode<T: Serialize>(msg: &T, out: &mut [u8; MAX_FRAME]) -> Result<usize, LinkError> {
    let mut raw = [0u8; MAX_PAYLOAD];
    let n = postcard::to_slice(msg, &mut raw[..MAX_PAYLOAD - 4])
        .map_err(|_| LinkError::TooLarge)?
        .len();
    let crc = crc32fast::hash(&raw[..n]);
    raw[n..n + 4].copy_from_slice(&crc.to_le_bytes());
    let len = cobs::try_encode(&raw[..n + 4], &mut out[..MAX_FRAME - 1]).map_err(|_| LinkError::TooLarge)?;
    out[len] = 0;
    Ok(len + 1)
}

/// Counts of frames taken and dropped by a [`FrameDecoder`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinkStats {
    /// Messages decoded.
    pub frames: u64,
    /// Dropped: too long.
    pub too_long: u64,
    /// Dropped: framing.
    pub framing: u64,
    /// Dropped: CRC.
    pub crc: u64,
    /// Dropped: not a message.
    pub message: u64,
}

impl LinkStats {
    /// Frames dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.too_long + self.framing + self.crc + self.message
    }
}

/// Reassembles frames from a byte stream, one byte at a time, in fixed memory.
pub struct FrameDecoder {
    buf: [u8; MAX_FRAME],
    len: usize,
    overflow: bool,
    stats: LinkStats,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// An empty decoder.
    pub const fn new() -> Self {
        FrameDecoder {
            buf: [0; MAX_FRAME],
            len: 0,
            overflow: false,
            stats: LinkStats {
                frames: 0,
                too_long: 0,
                framing: 0,
                crc: 0,
                message: 0,
            },
        }
    }

    /// What it has taken and dropped so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Feed one byte: at a frame's end, the message or why it was dropped; `None` otherwise
    /// (and for empty frames, which a sender may use to resynchronise).
    pub fn push<T: for<'de> Deserialize<'de>>(&mut self, byte: u8) -> Option<Result<T, LinkError>> {
        if byte != 0 {
            if self.len < MAX_FRAME {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflow = true;
            }
            return None;
        }
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.overflow) {
            self.stats.too_long += 1;
            return Some(Err(LinkError::TooLong));
        }
        if len == 0 {
            return None;
        }
        let r = Self::decode(&mut self.buf[..len]);
        match r {
            Ok(_) => self.stats.frames += 1,
            Err(LinkError::Framing) => self.stats.framing += 1,
            Err(LinkError::Crc) => self.stats.crc += 1,
            Err(_) => self.stats.message += 1,
        }
        Some(r)
    }

    fn decode<T: for<'de> Deserialize<'de>>(frame: &mut [u8]) -> Result<T, LinkError> {
        let n = cobs::decode_in_place(frame).map_err(|_| LinkError::Framing)?;
        if n < 5 {
            return Err(LinkError::Framing);
        }
        let (body, crc) = frame[..n].split_at(n - 4);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != crc {
            return Err(LinkError::Crc);
        }
        match postcard::take_from_bytes::<T>(body) {
            Ok((msg, [])) => Ok(msg),
            _ => Err(LinkError::Message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_to(msgs: &[ToMcu]) -> (heapless::Vec<ToMcu, 32>, LinkStats) {
        let mut d = FrameDecoder::new();
        let mut got = heapless::Vec::new();
        for m in msgs {
            let mut f = [0u8; MAX_FRAME];
            let n = encode(m, &mut f).unwrap();
            assert!(f[..n - 1].iter().all(|&b| b != 0) && f[n - 1] == 0);
            for &b in &f[..n] {
                if let Some(r) = d.push::<ToMcu>(b) {
                    got.push(r.unwrap()).unwrap();
                }
            }
        }
        (got, d.stats())
    }

    fn samples() -> [ToMcu; 6] {
        [
            ToMcu::Hello { protocol: PROTOCOL },
            ToMcu::Capture { id: 7, at_us: u64::MAX },
            ToMcu::Decide {
                id: u32::MAX,
                decision: WireDecision {
                    outcome: 1,
                    reject: true,
                    class: Some(5),
                    score: 0.97,
                },
                at_us: 123_456_789,
            },
            ToMcu::Encoder { count: -5, at_us: 1 },
            ToMcu::Start {
                ejectors: 2,
                failsafe: 0,
                belt: WireBelt::Speed(812.5),
                link_timeout_ms: 10,
                clocking: Clocking::Lockstep,
            },
            ToMcu::Ejector {
                index: 3,
                ejector: WireEjector {
                    distance_mm: 600.0,
                    pulse_width_us: 20_000,
                    min_gap_us: 10_000,
                    extend: true,
                    classes: 0b111000,
                    uncertain: true,
                    failsafe: true,
                },
            },
        ]
    }

    #[test]
    fn messages_come_back_as_sent() {
        let msgs = samples();
        let (got, stats) = roundtrip_to(&msgs);
        assert_eq!(&got[..], &msgs[..]);
        assert_eq!(stats.frames, msgs.len() as u64);
        assert_eq!(stats.dropped(), 0);
    }

    #[test]
    fn the_largest_message_fits_a_frame() {
        let s = FromMcu::Stats(WireStats {
            items: u64::MAX,
            accepted: u64::MAX,
            fired: [u64::MAX; 4],
            failsafe_rejects: u64::MAX,
            failsafe_accepts: u64::MAX,
            overdue: u64::MAX,
            late_decisions: u64::MAX,
            line_stops: u64::MAX,
            overflows: u64::MAX,
            merged: u64::MAX,
            clipped: u64::MAX,
        });
        let mut f = [0u8; MAX_FRAME];
        let n = encode(&s, &mut f).unwrap();
        let mut d = FrameDecoder::new();
        let got = f[..n].iter().find_map(|&b| d.push::<FromMcu>(b)).unwrap().unwrap();
        assert_eq!(got, s);
    }

    #[test]
    fn a_flipped_bit_loses_that_frame_only() {
        let msgs = samples();
        let mut d = FrameDecoder::new();
        let mut got = 0;
        let mut crc_or_framing = 0;
        for (k, m) in msgs.iter().enumerate() {
            let mut f = [0u8; MAX_FRAME];
            let n = encode(m, &mut f).unwrap();
            if k == 2 {
                f[3] ^= 0x10;
            }
            for &b in &f[..n] {
                match d.push::<ToMcu>(b) {
                    Some(Ok(_)) => got += 1,
                    Some(Err(_)) => crc_or_framing += 1,
                    None => {}
                }
            }
        }
        assert_eq!(got, msgs.len() - 1);
        assert_eq!(crc_or_framing, 1);
    }

    #[test]
    fn a_run_without_zero_is_dropped_and_the_next_frame_is_read() {
        let mut d = FrameDecoder::new();
        for _ in 0..(3 * MAX_FRAME) {
            assert!(d.push::<ToMcu>(0x55).is_none());
        }
        assert_eq!(d.push::<ToMcu>(0), Some(Err(LinkError::TooLong)));
        let mut f = [0u8; MAX_FRAME];
        let n = encode(&ToMcu::Ping { seq: 9 }, &mut f).unwrap();
        let got = f[..n].iter().find_map(|&b| d.push::<ToMcu>(b));
        assert_eq!(got, Some(Ok(ToMcu::Ping { seq: 9 })));
        assert_eq!(d.stats().too_long, 1);
    }

    #[test]
    fn a_frame_of_the_other_direction_is_not_taken_for_one_of_this() {
        // A valid frame whose bytes mean nothing here is dropped as `Message` or read as a
        // message; it never panics. An unknown variant index is always refused.
        let mut f = [0u8; MAX_FRAME];
        let mut raw = [0u8; 8];
        raw[0] = 200; // no such variant
        let crc = crc32fast::hash(&raw[..1]);
        raw[1..5].copy_from_slice(&crc.to_le_bytes());
        let n = cobs::encode(&raw[..5], &mut f);
        f[n] = 0;
        let mut d = FrameDecoder::new();
        let got = f[..=n].iter().find_map(|&b| d.push::<ToMcu>(b));
        assert_eq!(got, Some(Err(LinkError::Message)));
    }
}
