//! The segment tool: a defect map over the whole frame, its regions measured in millimetres,
//! and the image-level decision.
//!
//! The frame is tiled and stitched by [`TiledMap`]; regions are the connected pixels at or
//! above the manifest's `pixel_threshold`, measured with the calibration `mm_per_px`. The
//! frame is defective when the decision head (its maximum over tiles) reaches the manifest's
//! `decision_threshold`, and/or when a region rule fires (`reject_if_length_mm_over`,
//! `reject_if_area_mm2_over`): see [`SegmentRules`].

use std::path::Path;

use anyhow::{bail, Result};

use crate::core::calibration::Scale;
use crate::core::frame::GrayFrame;
use crate::core::regions::{Region, RegionSummary, MAX_REGIONS};
use crate::model::engine::RunError;
use crate::model::manifest::{Manifest, Precision};
use crate::tools::tiled::{MapOutput, TiledMap};

/// How the frame decision is made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DecideBy {
    /// The decision head only.
    Head,
    /// The region rules only.
    Rules,
    /// Either rejects.
    Either,
}

/// Region rules and calibration (`[segment]` of a board profile, or the CLI flags).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegmentRules {
    /// Millimetres per frame pixel (`None`: uncalibrated, sizes in pixels only).
    pub mm_per_px: Option<f32>,
    /// A region longer than this (mm) rejects.
    pub reject_if_length_mm_over: Option<f32>,
    /// A region larger than this (mm²) rejects.
    pub reject_if_area_mm2_over: Option<f32>,
    /// Which evidence decides.
    pub decide_by: DecideBy,
}

impl Default for SegmentRules {
    fn default() -> Self {
        SegmentRules {
            mm_per_px: None,
            reject_if_length_mm_over: None,
            reject_if_area_mm2_over: None,
            decide_by: DecideBy::Either,
        }
    }
}

impl SegmentRules {
    /// Check the rules; `what` names where they came from in errors.
    pub fn check(&self, what: &str) -> Result<()> {
        if let Some(v) = self.mm_per_px {
            if !(v.is_finite() && v > 0.0) {
                bail!("{what}: field `mm_per_px` is {v}; it must be > 0");
            }
        }
        let has_rule = self.reject_if_length_mm_over.is_some() || self.reject_if_area_mm2_over.is_some();
        if has_rule && self.mm_per_px.is_none() {
            bail!("{what}: region rules in millimetres need field `mm_per_px` (the calibration)");
        }
        if self.decide_by == DecideBy::Rules && !has_rule {
            bail!("{what}: `decide_by = \"rules\"` needs `reject_if_length_mm_over` or `reject_if_area_mm2_over`");
        }
        Ok(())
    }
}

/// One region with its measurements in millimetres.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MeasuredRegion {
    /// Pixel measurements.
    pub px: Region,
    /// Area, mm² (0 when uncalibrated).
    pub area_mm2: f32,
    /// Length along the major axis, mm.
    pub length_mm: f32,
    /// Width across it, mm.
    pub width_mm: f32,
}

impl MeasuredRegion {
    /// Measure `reg` in millimetres at `scale` (`None`: pixel measurements only).
    pub fn measure(reg: &Region, scale: Option<Scale>) -> MeasuredRegion {
        match scale {
            Some(s) => MeasuredRegion {
                px: *reg,
                area_mm2: s.px_area_to_mm2(reg.area_px as f32),
                length_mm: s.px_to_mm(reg.length_px),
                width_mm: s.px_to_mm(reg.width_px),
            },
            None => MeasuredRegion {
                px: *reg,
                ..Default::default()
            },
        }
    }
}

/// What one frame gave.
#[derive(Clone, Debug, Default)]
pub struct SegmentResult {
    /// The image score: the decision head's maximum over tiles, or for an anomaly model
    /// (`score_blur_px`) the maximum of the box-blurred map.
    pub score: f32,
    /// The map's maximum.
    pub map_max: f32,
    /// Tiles run.
    pub tiles: usize,
    /// Time inside the model over all tiles, µs.
    pub inference_us: u64,
    /// Time of tiling, inference and stitching, µs (the rest of [`Segmenter::segment`] is
    /// regions, measurements and the decision).
    pub map_us: u64,
    /// Region counts.
    pub summary: RegionSummary,
    /// The largest regions, largest first.
    pub regions: heapless::Vec<MeasuredRegion, MAX_REGIONS>,
    /// The head's verdict.
    pub head_reject: bool,
    /// A region rule fired (`length` or `area`).
    pub rule: Option<&'static str>,
    /// The frame's verdict under the rules' `decide_by`.
    pub reject: bool,
}

impl SegmentResult {
    /// The single score the station's decision rules see: 1 when a region rule rejects,
    /// else the head's score (`Head`: the head's score only; `Rules`: 1 or 0).
    pub fn station_score(&self, by: DecideBy) -> f32 {
        let rule = self.rule.is_some();
        match by {
            DecideBy::Head => self.score,
            DecideBy::Rules => f32::from(u8::from(rule)),
            DecideBy::Either if rule => 1.0,
            DecideBy::Either => self.score,
        }
    }
}

/// A loaded segment model.
pub struct Segmenter {
    map: TiledMap,
    rules: SegmentRules,
    result: SegmentResult,
    scores: [f32; 1],
}

impl Segmenter {
    /// Load a `tool = "segment"` manifest and its model.
    pub fn load(path: &Path, precision: Precision, rules: SegmentRules) -> Result<Segmenter> {
        Segmenter::from_manifest(Manifest::load(path)?, precision, rules)
    }

    /// Load the model of a checked manifest.
    pub fn from_manifest(manifest: Manifest, precision: Precision, rules: SegmentRules) -> Result<Segmenter> {
        if manifest.model.tool != "segment" {
            bail!(
                "{}: field `model.tool` is \"{}\"; the segment tool runs \"segment\" models",
                manifest.path.display(),
                manifest.model.tool
            );
        }
        Segmenter::from_tiled(manifest, precision, rules)
    }

    /// Load any tiled map model (`[segment]` or `[anomaly]`): the anomaly tool and the bench
    /// run through here. The image score is the blurred map maximum when the manifest sets
    /// `score_blur_px`, else the decision output, else the map maximum.
    pub fn from_tiled(manifest: Manifest, precision: Precision, rules: SegmentRules) -> Result<Segmenter> {
        rules.check(&manifest.path.display().to_string())?;
        let map = TiledMap::from_manifest(manifest, precision)?;
        Ok(Segmenter {
            map,
            rules,
            result: SegmentResult::default(),
            scores: [0.0],
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        self.map.manifest()
    }

    /// Which model file runs.
    pub fn precision(&self) -> Precision {
        self.map.precision()
    }

    /// The rules in force.
    pub fn rules(&self) -> &SegmentRules {
        &self.rules
    }

    /// Size the buffers for `width × height` frames.
    pub fn prepare(&mut self, width: usize, height: usize) {
        self.map.prepare(width, height);
    }

    /// The stitched map of the last frame (one value per frame pixel) and its size.
    pub fn map(&self) -> (&[f32], usize, usize) {
        let (w, h) = self.map.size();
        (self.map.prob(), w, h)
    }

    /// The last frame's result.
    pub fn result(&self) -> &SegmentResult {
        &self.result
    }

    /// Segment `frame`, measure its regions and decide.
    pub fn segment(&mut self, frame: &GrayFrame<'_>) -> Result<&SegmentResult, RunError> {
        self.result.regions.clear();
        self.result.rule = None;
        let t0 = std::time::Instant::now();
        let MapOutput {
            decision,
            map_max,
            tiles,
            inference_us,
            ..
        } = self.map.run(frame)?;
        let map_us = t0.elapsed().as_micros() as u64;
        let (pixel_threshold, decision_threshold, blur_px) = {
            let s = self.map.section();
            (s.pixel_threshold, s.decision_threshold, s.score_blur_px)
        };
        let score = if blur_px > 0 {
            self.map.blurred_max(blur_px)
        } else {
            decision.unwrap_or(map_max)
        };
        let (summary, regions) = self.map.regions(pixel_threshold);
        let r = &mut self.result;
        r.score = score;
        r.map_max = map_max;
        r.tiles = tiles;
        r.inference_us = inference_us;
        r.map_us = map_us;
        r.summary = summary;
        r.regions.clear();
        r.rule = None;
        let scale = self.rules.mm_per_px.map(|mm_per_px| Scale { mm_per_px });
        for reg in regions {
            let m = MeasuredRegion::measure(reg, scale);
            if scale.is_some() && r.rule.is_none() {
                if self.rules.reject_if_length_mm_over.is_some_and(|l| m.length_mm > l) {
                    r.rule = Some("length");
                } else if self.rules.reject_if_area_mm2_over.is_some_and(|a| m.area_mm2 > a) {
                    r.rule = Some("area");
                }
            }
            let _ = r.regions.push(m);
        }
        r.head_reject = score >= decision_threshold;
        r.reject = match self.rules.decide_by {
            DecideBy::Head => r.head_reject,
            DecideBy::Rules => r.rule.is_some(),
            DecideBy::Either => r.head_reject || r.rule.is_some(),
        };
        Ok(&self.result)
    }

    /// Segment and return the one class score the station decides on (class `defect`).
    pub fn scores(&mut self, frame: &GrayFrame<'_>) -> Result<&[f32], RunError> {
        let by = self.rules.decide_by;
        let s = self.segment(frame)?.station_score(by);
        self.scores[0] = s;
        Ok(&self.scores)
    }
}
