//! The belt encoder: from line events to a signed count, and the checks that say the count can
//! no longer be trusted.
//!
//! Two wirings:
//! - *single channel*: every counted edge of channel A is one count forward; the belt is
//!   assumed never to run backwards;
//! - *quadrature*: channels A and B, 90° apart; every edge of either channel is one count, up
//!   or down by the direction (A leading B is forward), so a belt that runs backwards moves
//!   its items back.
//!
//! Guarantees:
//! - a gap in the kernel's sequence numbers (events the kernel dropped because they were not
//!   read in time) is [`EncoderFault::LostEvents`], with how many; the count is not moved by
//!   a guess, and the caller reads both lines and hands their levels to
//!   [`Decoder::resync`] before decoding on;
//! - in quadrature, an edge that leaves its channel where it already was (the opposite edge
//!   was lost) is [`EncoderFault::MissedEdge`]; the decoder takes the level the event reports
//!   and counts on from there;
//! - [`standing_still`] says whether an item arrived while no count came for longer than the
//!   configured time: the encoder (or its wheel) is stuck while the belt moves.
//!
//! Time is passed in; nothing here reads a clock or allocates.

use super::time::Instant;

/// An encoder channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Channel {
    /// Channel A (the only one of a single-channel encoder).
    A,
    /// Channel B, 90° behind A when the belt runs forward.
    B,
}

/// One edge on an encoder line, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LineEvent {
    /// The channel.
    pub channel: Channel,
    /// Rising (to active) or falling.
    pub rising: bool,
    /// The kernel's sequence number of the event within its request (from 1, one up per
    /// event on any of the request's lines).
    pub seqno: u32,
    /// The kernel's timestamp.
    pub at: Instant,
}

/// Why the count can no longer be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EncoderFault {
    /// The kernel's sequence numbers skipped this many events.
    LostEvents {
        /// Events missing between the last one read and this one.
        missing: u32,
    },
    /// Quadrature: an edge that did not change its channel's level (its opposite edge was
    /// lost).
    MissedEdge,
    /// Items arrived while the encoder stood still.
    Standstill,
}

/// A decoder from line events to a signed count.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Decoder {
    quadrature: bool,
    a: bool,
    b: bool,
    count: i64,
    last_seqno: Option<u32>,
}

impl Decoder {
    /// A single-channel encoder: every event on channel A counts one forward.
    pub const fn single() -> Self {
        Decoder {
            quadrature: false,
            a: false,
            b: false,
            count: 0,
            last_seqno: None,
        }
    }

    /// A quadrature encoder whose channels read `a` and `b` (active: `true`) when the lines
    /// were requested.
    pub const fn quadrature(a: bool, b: bool) -> Self {
        Decoder {
            quadrature: true,
            a,
            b,
            count: 0,
            last_seqno: None,
        }
    }

    /// After a fault: the channels read `a` and `b` now (the count stays).
    pub fn resync(&mut self, a: bool, b: bool) {
        self.a = a;
        self.b = b;
    }

    /// Whether this decodes two channels.
    pub const fn is_quadrature(&self) -> bool {
        self.quadrature
    }

    /// The count so far.
    pub const fn count(&self) -> i64 {
        self.count
    }

    /// Take one event; returns the count after it, or the fault it shows (the event's level
    /// is still taken, so decoding goes on from the lines as they are).
    pub fn on_event(&mut self, ev: &LineEvent) -> Result<i64, EncoderFault> {
        let lost = match self.last_seqno {
            Some(last) => ev.seqno.wrapping_sub(last).wrapping_sub(1),
            None => 0,
        };
        self.last_seqno = Some(ev.seqno);
        if !self.quadrature {
            if lost > 0 {
                return Err(EncoderFault::LostEvents { missing: lost });
            }
            self.count += 1;
            return Ok(self.count);
        }
        let (level, other) = match ev.channel {
            Channel::A => (&mut self.a, self.b),
            Channel::B => (&mut self.b, self.a),
        };
        let changed = *level != ev.rising;
        *level = ev.rising;
        if lost > 0 {
            return Err(EncoderFault::LostEvents { missing: lost });
        }
        if !changed {
            return Err(EncoderFault::MissedEdge);
        }
        // Forward is A leading B: 00 → 10 → 11 → 01 → 00 (A, B). A forward edge on A leaves
        // A different from B; a forward edge on B leaves B equal to A.
        let forward = match ev.channel {
            Channel::A => ev.rising != other,
            Channel::B => ev.rising == other,
        };
        self.count += if forward { 1 } else { -1 };
        Ok(self.count)
    }
}

/// Whether an item arriving at `item_at` finds the encoder standing still: no count since
/// `last_count_at` (or, before the first count, since `started`) for more than
/// `limit_us`.
pub fn standing_still(last_count_at: Option<Instant>, started: Instant, item_at: Instant, limit_us: u64) -> bool {
    item_at.us_since(last_count_at.unwrap_or(started)) > limit_us
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(channel: Channel, rising: bool, seqno: u32) -> LineEvent {
        LineEvent {
            channel,
            rising,
            seqno,
            at: Instant::from_us(seqno as u64 * 100),
        }
    }

    /// One forward cycle from 00: A↑ B↑ A↓ B↓.
    const FORWARD: [(Channel, bool); 4] = [
        (Channel::A, true),
        (Channel::B, true),
        (Channel::A, false),
        (Channel::B, false),
    ];

    #[test]
    fn quadrature_forward_counts_up_one_per_edge() {
        let mut d = Decoder::quadrature(false, false);
        let mut seq = 0;
        for _ in 0..3 {
            for (c, r) in FORWARD {
                seq += 1;
                assert_eq!(d.on_event(&ev(c, r, seq)), Ok(seq as i64));
            }
        }
        assert_eq!(d.count(), 12);
    }

    #[test]
    fn quadrature_reverse_counts_down_and_back_to_where_it_was() {
        let mut d = Decoder::quadrature(false, false);
        let mut seq = 0;
        for (c, r) in FORWARD {
            seq += 1;
            d.on_event(&ev(c, r, seq)).unwrap();
        }
        assert_eq!(d.count(), 4);
        // Reverse: B leads A, the forward cycle played backwards: B↑ A↑ B↓ A↓.
        for (c, r) in [
            (Channel::B, true),
            (Channel::A, true),
            (Channel::B, false),
            (Channel::A, false),
        ] {
            seq += 1;
            d.on_event(&ev(c, r, seq)).unwrap();
        }
        assert_eq!(d.count(), 0);
        for (c, r) in [(Channel::B, true), (Channel::A, true)] {
            seq += 1;
            d.on_event(&ev(c, r, seq)).unwrap();
        }
        assert_eq!(d.count(), -2, "past the start: negative");
        // A change of direction mid-cycle: A↓ undoes the last A↑.
        seq += 1;
        assert_eq!(d.on_event(&ev(Channel::A, false, seq)), Ok(-1));
    }

    #[test]
    fn a_skipped_sequence_number_is_lost_events_and_the_count_is_not_guessed() {
        let mut d = Decoder::quadrature(false, false);
        d.on_event(&ev(Channel::A, true, 1)).unwrap();
        d.on_event(&ev(Channel::B, true, 2)).unwrap();
        // Events 3 and 4 (A↓ B↓) were dropped by the kernel; 5 is A↑.
        assert_eq!(
            d.on_event(&ev(Channel::A, true, 5)),
            Err(EncoderFault::LostEvents { missing: 2 })
        );
        assert_eq!(d.count(), 2);
        // The lines are read again (A high, B low) and decoding goes on from there: B↑ is
        // forward.
        d.resync(true, false);
        assert_eq!(d.on_event(&ev(Channel::B, true, 6)), Ok(3));
        // Single channel: the same check.
        let mut s = Decoder::single();
        assert_eq!(s.on_event(&ev(Channel::A, true, 1)), Ok(1));
        assert_eq!(s.on_event(&ev(Channel::A, true, 2)), Ok(2));
        assert_eq!(
            s.on_event(&ev(Channel::A, true, 4)),
            Err(EncoderFault::LostEvents { missing: 1 })
        );
        assert_eq!(s.count(), 2);
    }

    #[test]
    fn an_edge_that_changes_nothing_is_a_missed_edge() {
        let mut d = Decoder::quadrature(false, false);
        d.on_event(&ev(Channel::A, true, 1)).unwrap();
        // A rises again: its falling edge never came, yet the sequence numbers are whole
        // (debounce or a glitch shorter than the kernel saw).
        assert_eq!(d.on_event(&ev(Channel::A, true, 2)), Err(EncoderFault::MissedEdge));
        assert_eq!(d.count(), 1);
    }

    #[test]
    fn an_item_after_the_standstill_time_without_a_count_finds_the_encoder_standing_still() {
        let t = Instant::from_us;
        // 500 ms limit.
        assert!(!standing_still(Some(t(1_000_000)), t(0), t(1_400_000), 500_000));
        assert!(standing_still(Some(t(1_000_000)), t(0), t(1_600_000), 500_000));
        // Before the first count, from the start.
        assert!(!standing_still(None, t(0), t(400_000), 500_000));
        assert!(standing_still(None, t(0), t(600_000), 500_000));
    }
}
