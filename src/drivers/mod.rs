//! Linux drivers for the hardware edge: GPIO lines through the kernel's character-device
//! uAPI (v2), with kernel timestamps on input edges.

pub mod gpio;
