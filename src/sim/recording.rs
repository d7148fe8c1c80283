//! An output backend that records every line change with the time it was meant to happen
//! and the time it did, up to a fixed capacity (then `OutputError::Full`, like a write error).

use crate::core::time::Instant;
use crate::hal::{Clock, OutputError, OutputLine, RejectOutput};
use crate::sim::clock::MonotonicClock;

/// Line changes kept; one shift at 20 rejects/s is far below this, and tests check overflow.
pub const MAX_TIMELINE_EVENTS: usize = 1 << 16;

/// One recorded change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The line.
    pub line: OutputLine,
    /// New level (true = active).
    pub active: bool,
    /// When the caller wanted it.
    pub planned: Instant,
    /// When it happened on the monotonic clock.
    pub actual: Instant,
}

/// Recording backend.
#[derive(Debug)]
pub struct RecordingOutput {
    clock: MonotonicClock,
    events: Vec<Event>,
    capacity: usize,
}

impl RecordingOutput {
    /// A recorder reading `clock`, holding up to `capacity` events (preallocated and written
    /// once, so that recording an edge never takes a page fault: the actuator thread records
    /// its edges, and a page fault can wait on another thread's memory mapping).
    pub fn new(clock: MonotonicClock, capacity: usize) -> Self {
        let mut events = Vec::with_capacity(capacity);
        let blank = Event {
            line: OutputLine::Heartbeat,
            active: false,
            planned: Instant::from_us(0),
            actual: Instant::from_us(0),
        };
        events.resize(capacity, blank);
        events.clear();
        RecordingOutput {
            clock,
            events,
            capacity,
        }
    }

    /// The timeline so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

impl RejectOutput for RecordingOutput {
    fn set(&mut self, line: OutputLine, active: bool, at: Instant) -> Result<(), OutputError> {
        if self.events.len() >= self.capacity {
            return Err(OutputError::Full);
        }
        let actual = self.clock.now();
        self.events.push(Event {
            line,
            active,
            planned: at,
            actual,
        });
        Ok(())
    }
}
