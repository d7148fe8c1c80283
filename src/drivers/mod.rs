//! Linux drivers for the hardware edge: GPIO lines through the kernel's character-device
//! uAPI (v2), with kernel timestamps on input edges; V4L2 cameras with MMAP streaming.

pub mod gpio;
pub mod v4l2;
