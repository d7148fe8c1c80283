//! ferroscope: steel-surface inspection on ARM Linux boards.
//!
//! Layers, from the bottom: [`core`] (pure logic, no OS, no heap) → [`hal`] (the hardware
//! traits: camera, reject output, clock) → `drivers` (V4L2, GPIO) and `camera` (decoding,
//! reconnection) → `sim` (faithful doubles at the hardware edge:
//! replay camera, recording output) → `model` (manifests and tract inference) → `tools`
//! (classify, segment), `grains` (metallographic grain size) → `records` (decision log,
//! archive, MQTT), `plc` (the PLC handshake: Modbus TCP) → `station` (the running loop) → the `ferroscope` binary's CLI.
//!
//! Only [`core`] and [`hal`] build without the `std` feature.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

pub mod core;
pub mod grains;
pub mod hal;

#[cfg(feature = "std")]
pub mod alloc_count;
#[cfg(feature = "std")]
pub mod camera;
#[cfg(feature = "std")]
pub mod display;
#[cfg(feature = "std")]
pub mod drivers;
#[cfg(feature = "std")]
pub mod eval;
#[cfg(feature = "std")]
pub mod model;
#[cfg(feature = "std")]
pub mod plc;
#[cfg(feature = "std")]
pub mod records;
#[cfg(feature = "std")]
pub mod sim;
#[cfg(feature = "std")]
pub mod station;
#[cfg(feature = "std")]
pub mod tools;
