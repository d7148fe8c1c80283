//! The hardware edge, as traits: a camera that fills frames, outputs that drive actuator
//! lines, and a monotonic clock. Linux drivers and the faithful doubles in `sim` implement
//! them; the station only sees these traits.

use crate::core::time::Instant;

/// A monotonic clock.
pub trait Clock {
    /// Now.
    fn now(&self) -> Instant;
}

/// Metadata of one captured frame; the pixels are in the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameInfo {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes between rows.
    pub stride: usize,
    /// Driver sequence number (gaps mean dropped frames).
    pub sequence: u32,
    /// When the frame was exposed, on the station's monotonic clock.
    pub captured: Instant,
}

/// Why a capture gave no usable frame. The station turns each into a fault and a
/// fail-safe outcome for the item, and keeps running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CaptureError {
    /// No frame within the timeout.
    Timeout,
    /// The device went away (ENODEV/EIO); capture retries with backoff.
    Disconnected,
    /// The frame with this sequence number could not be decoded.
    Corrupt {
        /// Sequence number of the broken frame.
        sequence: u32,
    },
    /// The frame does not fit the configured size or the caller's buffer.
    WrongSize {
        /// Sequence number of the frame.
        sequence: u32,
        /// Its width.
        width: usize,
        /// Its height.
        height: usize,
    },
    /// A finite source (a replay played once) has no more frames.
    EndOfStream,
}

/// A source of gray frames.
pub trait Camera {
    /// Block until the next frame (or its trigger time), write it into `buf` and describe it.
    fn capture(&mut self, buf: &mut [u8]) -> Result<FrameInfo, CaptureError>;
}

/// Logical output lines of a station; the board profile maps them to GPIO lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OutputLine {
    /// Reject actuator number n (air jet, diverter).
    Reject(u8),
    /// Heartbeat / ready: toggles while the station is healthy, held inactive on a fault.
    Heartbeat,
    /// Line stop: asserted (and latched) when the fail-safe policy stops the line.
    LineStop,
}

/// Why an output could not be driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OutputError {
    /// The line is not configured.
    NoSuchLine,
    /// The write failed (the driver's errno, where known).
    Io(i32),
    /// A recording backend ran out of its fixed capacity.
    Full,
}

/// Drives the actuator and status lines.
pub trait RejectOutput {
    /// Set `line` active (`true`) or inactive at `at` (the time the caller meant it to change).
    fn set(&mut self, line: OutputLine, active: bool, at: Instant) -> Result<(), OutputError>;
}
