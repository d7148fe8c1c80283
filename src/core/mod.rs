//! The core: pure logic that needs no operating system and no heap.
//!
//! Decision rules, counters, latency statistics, conveyor/reject timing and calibration maths
//! live here. Everything takes time as an argument ([`time::Instant`]) and stores into fixed
//! capacities from `heapless`, so the same code runs on a Linux board, in a simulation with a
//! simulated clock, and on a bare-metal microcontroller (`thumbv7em-none-eabihf`).

pub mod belt;
pub mod calibration;
pub mod counters;
pub mod decision;
pub mod encoder;
pub mod frame;
pub mod latency;
pub mod link;
pub mod num;
pub mod pixel;
pub mod regions;
pub mod reject;
pub mod screen;
pub mod time;

/// Most classes one model may have. One-vs-all heads are cheap, but every per-class array in
/// the core (counters, thresholds, scores) is sized by this, so it stays small.
pub const MAX_CLASSES: usize = 16;
