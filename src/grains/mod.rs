//! The grains tool: metallographic grain size (GOST 5639-82, ASTM E112) from a micrograph.
//!
//! - [`standards`]: the standards' formulas and histogram comparison; no heap, no OS.
//! - [`analysis`]: a grain-boundary mask → closed boundaries, grains, areas in µm², the
//!   planimetric and intercept numbers, the histogram of grain numbers.
//! - [`model`]: a boundary model (`tool = "grains"` manifest) run tile by tile over the
//!   micrograph, whose thresholded map feeds the analysis.
//! - [`render`]: the grain map coloured by grain number and the histogram plot, as PNG.

pub mod standards;

#[cfg(feature = "std")]
pub mod analysis;
#[cfg(feature = "std")]
pub mod model;
#[cfg(feature = "std")]
pub mod render;
