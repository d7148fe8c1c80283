//! Faithful doubles at the hardware edge: a replay camera over image files, an output
//! backend that records a timeline, and the monotonic clock. They behave like the hardware:
//! frames arrive at the configured rate with timestamps and sequence numbers, a broken file
//! is a corrupt frame, and every line change is stamped when it happens. Beside them, the
//! reject co-processor driven over its serial line in lockstep with the simulated conveyor.

pub mod clock;
pub mod conveyor;
pub mod coprocessor;
pub mod recording;
pub mod replay;
