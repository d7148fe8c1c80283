//! Inspection tools: a model plus the maths around it.

pub mod classify;
