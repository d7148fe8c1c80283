//! Camera frames on their way in: one decoder for every pixel layout and source, and a
//! supervisor that counts faults, spots dropped frames and reconnects a camera that went away.
//! The sources themselves are the V4L2 driver (`drivers::v4l2`) and the replay (`sim::replay`).

pub mod decode;
pub mod supervisor;
