//! Keeps a camera alive: counts what goes wrong, detects dropped frames from sequence gaps,
//! and reopens a camera that went away, with backoff, until it returns.
//!
//! While the camera is away [`Supervised::capture`] keeps returning
//! [`CaptureError::Disconnected`] at least once per `wait_us` (the frame period), so the
//! station can give the items passing the blind camera the fail-safe outcome on time.

use crate::core::time::Instant;
use crate::hal::{Camera, CaptureError, Clock, FrameInfo};
use crate::sim::clock::MonotonicClock;

/// First wait before reopening a camera that went away.
pub const RECONNECT_BACKOFF_MIN_US: u64 = 100_000;
/// Longest wait between reopen attempts: a camera that comes back is running again within
/// this plus its open time (the target is 2 s).
pub const RECONNECT_BACKOFF_MAX_US: u64 = 1_000_000;

/// A camera that can be reopened after it went away (a pulled cable, a driver reset).
pub trait Reopen: Camera {
    /// Close what is left of the old stream and open the device again.
    fn reopen(&mut self) -> Result<(), CaptureError>;

    /// Capture the first frame exposed at or after `after` (a software trigger); `None` is
    /// [`Camera::capture`]. Sources that cannot tell deliver their next frame.
    fn capture_after(&mut self, after: Option<Instant>, buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
        let _ = after;
        self.capture(buf)
    }

    /// Frames read past unused: older than a newer ready frame (free-run) or than the trigger.
    fn stale_skipped(&self) -> u64 {
        0
    }
}

/// What happened to a camera, for the summary, the screen and the fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CameraStats {
    /// Frames delivered.
    pub frames: u64,
    /// Frames the driver dropped (gaps in its sequence numbers).
    pub dropped: u64,
    /// Captures that timed out.
    pub timeouts: u64,
    /// Times the camera went away.
    pub disconnects: u64,
    /// Successful reopenings.
    pub reconnects: u64,
    /// Failed reopen attempts.
    pub reopen_failures: u64,
    /// Corrupt or truncated frames.
    pub corrupt: u64,
    /// Frames of the wrong size.
    pub wrong_size: u64,
    /// Longest time from a disconnect to the camera delivering again, in µs.
    pub longest_outage_us: u64,
    /// Ready frames passed over for a newer one (free-run) or as older than the trigger.
    pub stale_skipped: u64,
}

enum State {
    Up,
    Down { next_try: Instant, backoff_us: u64 },
}

/// A [`Reopen`] camera under supervision.
pub struct Supervised<C> {
    inner: C,
    clock: MonotonicClock,
    wait_us: u64,
    state: State,
    last_sequence: Option<u32>,
    last_gap: u32,
    outage_start: Option<Instant>,
    stats: CameraStats,
}

impl<C: Reopen> Supervised<C> {
    /// Supervise `inner`; while it is away, `capture` returns at least every `wait_us`.
    pub fn new(inner: C, clock: MonotonicClock, wait_us: u64) -> Supervised<C> {
        Supervised {
            inner,
            clock,
            wait_us: wait_us.max(1_000),
            state: State::Up,
            last_sequence: None,
            last_gap: 0,
            outage_start: None,
            stats: CameraStats::default(),
        }
    }

    /// Supervise a camera that is away from the start (its device is missing): the first
    /// reopen is tried at once.
    pub fn new_down(inner: C, clock: MonotonicClock, wait_us: u64) -> Supervised<C> {
        let mut s = Supervised::new(inner, clock, wait_us);
        let now = clock.now();
        s.stats.disconnects = 1;
        s.outage_start = Some(now);
        s.state = State::Down {
            next_try: now,
            backoff_us: RECONNECT_BACKOFF_MIN_US / 2,
        };
        s
    }

    /// The camera.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The counts so far.
    pub fn stats(&self) -> CameraStats {
        CameraStats {
            stale_skipped: self.inner.stale_skipped(),
            ..self.stats
        }
    }

    /// Frames the driver dropped just before the last delivered frame.
    pub fn last_gap(&self) -> u32 {
        self.last_gap
    }

    /// Whether the camera is away now.
    pub fn is_down(&self) -> bool {
        matches!(self.state, State::Down { .. })
    }

    fn went_down(&mut self, now: Instant) {
        self.stats.disconnects += 1;
        self.last_sequence = None;
        self.state = State::Down {
            next_try: now.add_us(RECONNECT_BACKOFF_MIN_US),
            backoff_us: RECONNECT_BACKOFF_MIN_US,
        };
    }
}

impl<C: Reopen> Camera for Supervised<C> {
    fn capture(&mut self, buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
        self.capture_after(None, buf)
    }
}

impl<C: Reopen> Supervised<C> {
    /// Capture (see [`Reopen::capture_after`]), reopening the camera when it went away.
    pub fn capture_after(&mut self, after: Option<Instant>, buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
        self.last_gap = 0;
        if let State::Down { next_try, backoff_us } = self.state {
            let now = self.clock.now();
            if now < next_try {
                self.clock.sleep_until(next_try.min(now.add_us(self.wait_us)));
                return Err(CaptureError::Disconnected);
            }
            match self.inner.reopen() {
                Ok(()) => {
                    self.stats.reconnects += 1;
                    self.state = State::Up;
                }
                Err(_) => {
                    self.stats.reopen_failures += 1;
                    let backoff_us = (backoff_us * 2).min(RECONNECT_BACKOFF_MAX_US);
                    self.state = State::Down {
                        next_try: now.add_us(backoff_us),
                        backoff_us,
                    };
                    return Err(CaptureError::Disconnected);
                }
            }
        }
        let r = self.inner.capture_after(after, buf);
        match &r {
            Ok(info) => {
                self.stats.frames += 1;
                if let Some(prev) = self.last_sequence {
                    let gap = info.sequence.wrapping_sub(prev).wrapping_sub(1);
                    // A sequence that went backwards is a restarted stream, not a gap.
                    if gap < u32::MAX / 2 {
                        self.last_gap = gap;
                        self.stats.dropped += gap as u64;
                    }
                }
                self.last_sequence = Some(info.sequence);
                if let Some(since) = self.outage_start.take() {
                    self.stats.longest_outage_us = self.stats.longest_outage_us.max(info.captured.us_since(since));
                }
            }
            Err(CaptureError::Disconnected) => {
                let now = self.clock.now();
                self.outage_start.get_or_insert(now);
                self.went_down(now);
            }
            Err(CaptureError::Timeout) => self.stats.timeouts += 1,
            Err(CaptureError::Corrupt { sequence }) | Err(CaptureError::WrongSize { sequence, .. }) => {
                if matches!(r, Err(CaptureError::Corrupt { .. })) {
                    self.stats.corrupt += 1;
                } else {
                    self.stats.wrong_size += 1;
                }
                self.last_sequence = Some(*sequence);
            }
            Err(CaptureError::EndOfStream) => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A camera that plays a script of capture results and is unplugged until `back_at`.
    struct Scripted {
        clock: MonotonicClock,
        script: VecDeque<Result<u32, CaptureError>>,
        back_at: Option<Instant>,
        reopens: u32,
    }

    impl Camera for Scripted {
        fn capture(&mut self, _buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
            match self.script.pop_front().unwrap_or(Err(CaptureError::EndOfStream)) {
                Ok(sequence) => Ok(FrameInfo {
                    width: 1,
                    height: 1,
                    stride: 1,
                    sequence,
                    captured: self.clock.now(),
                }),
                Err(e) => Err(e),
            }
        }
    }

    impl Reopen for Scripted {
        fn reopen(&mut self) -> Result<(), CaptureError> {
            self.reopens += 1;
            match self.back_at {
                Some(t) if self.clock.now() < t => Err(CaptureError::Disconnected),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn gaps_are_dropped_frames_and_a_pulled_camera_is_reopened_with_backoff() {
        let clock = MonotonicClock::default();
        let script = [Ok(0), Ok(1), Ok(4), Err(CaptureError::Corrupt { sequence: 5 }), Ok(6)]
            .into_iter()
            .chain([Err(CaptureError::Disconnected), Ok(0), Ok(1)])
            .collect();
        let cam = Scripted {
            clock,
            script,
            back_at: None,
            reopens: 0,
        };
        let mut s = Supervised::new(cam, clock, 20_000);
        let mut buf = [0u8; 1];
        s.capture(&mut buf).unwrap();
        s.capture(&mut buf).unwrap();
        s.capture(&mut buf).unwrap();
        assert_eq!((s.last_gap(), s.stats().dropped), (2, 2));
        assert_eq!(s.capture(&mut buf), Err(CaptureError::Corrupt { sequence: 5 }));
        s.capture(&mut buf).unwrap();
        assert_eq!(s.last_gap(), 0, "a corrupt frame is not a dropped one");
        // Unplugged; it comes back 250 ms later.
        s.inner.back_at = Some(clock.now().add_us(250_000));
        let t0 = clock.now();
        assert_eq!(s.capture(&mut buf), Err(CaptureError::Disconnected));
        assert!(s.is_down());
        let mut calls = 0;
        while s.capture(&mut buf).is_err() {
            calls += 1;
            assert!(calls < 200, "never came back");
        }
        let back = clock.now().us_since(t0);
        // Tries at 100 ms (fails), 300 ms (succeeds): back within one backoff of its return,
        // and the captures in between came at the 20 ms wait, not blocked for the backoff.
        assert!(
            (250_000..=250_000 + 400_000).contains(&back),
            "reconnected after {back} µs"
        );
        assert_eq!(s.inner.reopens, 2);
        assert!(calls >= 5, "{calls} blind captures while away");
        let st = s.stats();
        assert_eq!((st.disconnects, st.reconnects, st.reopen_failures), (1, 1, 1));
        assert_eq!(st.corrupt, 1);
        // The restarted stream numbers from 0: not a gap.
        assert_eq!(s.last_gap(), 0);
        assert_eq!(st.dropped, 2);
        assert!(st.longest_outage_us >= 250_000);
    }
}
