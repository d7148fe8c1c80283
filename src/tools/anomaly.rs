//! The anomaly tool: a model trained on good parts only maps how unlike a good surface each
//! frame pixel is; the frame is defective when the map, box-blurred, reaches the threshold.
//!
//! The map comes from the same tiling and stitching as the segment tool ([`Segmenter`] over a
//! `[anomaly]` manifest): full frame resolution, overlapping tiles averaged. The image score is
//! the maximum of the map after a box blur of `score_blur_px` (a lone hot pixel does not
//! reject; a defect the size of the blur does). Regions are the connected pixels at or above
//! `pixel_threshold`, measured in millimetres with the calibration `mm_per_px`; the region rules
//! of [`SegmentRules`] apply as in the segment tool (`decide_by = "head"` is the score alone).
//! The manifest's thresholds were calibrated on good validation images only.

use std::path::Path;

use anyhow::{bail, Result};

use crate::core::frame::GrayFrame;
use crate::model::engine::RunError;
use crate::model::manifest::{Manifest, Precision};
use crate::tools::segment::{SegmentResult, SegmentRules, Segmenter};

/// A loaded anomaly model.
pub struct AnomalyDetector {
    inner: Segmenter,
}

impl AnomalyDetector {
    /// Load a `tool = "anomaly"` manifest and its model.
    pub fn load(path: &Path, precision: Precision, rules: SegmentRules) -> Result<AnomalyDetector> {
        AnomalyDetector::from_manifest(Manifest::load(path)?, precision, rules)
    }

    /// Load the model of a checked manifest.
    pub fn from_manifest(manifest: Manifest, precision: Precision, rules: SegmentRules) -> Result<AnomalyDetector> {
        let p = manifest.path.display().to_string();
        if manifest.model.tool != "anomaly" {
            bail!(
                "{p}: field `model.tool` is \"{}\"; the anomaly tool runs \"anomaly\" models",
                manifest.model.tool
            );
        }
        if manifest.tiled.as_ref().is_some_and(|t| t.score_blur_px == 0) {
            bail!("{p}: field `anomaly.score_blur_px` is 0; an anomaly model scores the blurred map (at least 1 px)");
        }
        Ok(AnomalyDetector {
            inner: Segmenter::from_tiled(manifest, precision, rules)?,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        self.inner.manifest()
    }

    /// Which model file runs.
    pub fn precision(&self) -> Precision {
        self.inner.precision()
    }

    /// The rules in force.
    pub fn rules(&self) -> &SegmentRules {
        self.inner.rules()
    }

    /// Size the buffers for `width × height` frames.
    pub fn prepare(&mut self, width: usize, height: usize) {
        self.inner.prepare(width, height);
    }

    /// The anomaly map of the last frame (one value in 0..1 per frame pixel) and its size.
    pub fn map(&self) -> (&[f32], usize, usize) {
        self.inner.map()
    }

    /// The last frame's result (`score` is the blurred map maximum).
    pub fn result(&self) -> &SegmentResult {
        self.inner.result()
    }

    /// Map `frame`, score it, measure its regions and decide.
    pub fn detect(&mut self, frame: &GrayFrame<'_>) -> Result<&SegmentResult, RunError> {
        self.inner.segment(frame)
    }

    /// Detect and return the one class score the station decides on (class `defect`).
    pub fn scores(&mut self, frame: &GrayFrame<'_>) -> Result<&[f32], RunError> {
        self.inner.scores(frame)
    }
}

/// Heat-map colour of an anomaly value in 0..1: black-blue (0) through purple and red to
/// yellow-white (1), monotonic in brightness so it reads in gray print too.
pub fn heat_rgb(v: f32) -> [u8; 3] {
    const STOPS: [(f32, [f32; 3]); 5] = [
        (0.0, [0.0, 0.0, 40.0]),
        (0.25, [90.0, 20.0, 140.0]),
        (0.5, [200.0, 40.0, 80.0]),
        (0.75, [250.0, 140.0, 20.0]),
        (1.0, [255.0, 250.0, 180.0]),
    ];
    let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    let mut k = 0;
    while k + 2 < STOPS.len() && v > STOPS[k + 1].0 {
        k += 1;
    }
    let (a, ca) = STOPS[k];
    let (b, cb) = STOPS[k + 1];
    let t = (v - a) / (b - a);
    let mut out = [0u8; 3];
    for (o, (x, y)) in out.iter_mut().zip(ca.iter().zip(cb)) {
        *o = (x + (y - x) * t).round() as u8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::heat_rgb;

    #[test]
    fn heat_ramp_ends_and_brightness_rise() {
        assert_eq!(heat_rgb(0.0), [0, 0, 40]);
        assert_eq!(heat_rgb(1.0), [255, 250, 180]);
        assert_eq!(heat_rgb(f32::NAN), heat_rgb(0.0));
        assert_eq!(heat_rgb(7.0), heat_rgb(1.0));
        let luma = |c: [u8; 3]| 299 * c[0] as u32 + 587 * c[1] as u32 + 114 * c[2] as u32;
        let mut last = 0;
        for i in 0..=100 {
            let l = luma(heat_rgb(i as f32 / 100.0));
            assert!(l >= last, "brightness falls at {i}");
            last = l;
        }
    }
}
