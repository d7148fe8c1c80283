//! Inspection tools: a model plus the maths around it. [`Tool`] is what the station runs.

pub mod anomaly;
pub mod classify;
pub mod segment;
pub mod tiled;

use anyhow::{bail, Result};

use crate::core::frame::GrayFrame;
use crate::model::engine::RunError;
use crate::model::manifest::{Manifest, Precision};
use anomaly::AnomalyDetector;
use classify::{Classifier, ClassifyError};
use segment::{SegmentRules, Segmenter};

/// The tool of a station: one per board profile (`[tool] kind`). Each is boxed: they hold
/// fixed-capacity tables of very different sizes.
pub enum Tool {
    /// One-vs-all class scores.
    Classify(Box<Classifier>),
    /// Defect map, regions in mm, image decision (one class, `defect`).
    Segment(Box<Segmenter>),
    /// Anomaly map learnt from good parts, regions in mm, image decision (one class, `defect`).
    Anomaly(Box<AnomalyDetector>),
}

/// Why a frame got no scores.
#[derive(Debug)]
pub enum ToolError {
    /// The classifier failed.
    Classify(ClassifyError),
    /// The map model failed.
    Run(RunError),
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolError::Classify(e) => write!(f, "{e}"),
            ToolError::Run(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ToolError {}

impl Tool {
    /// Load the manifest's model for `kind` (`classify`, `segment` or `anomaly`); the
    /// manifest's `model.tool` must match. `segment` holds the map tools' calibration and rules.
    pub fn load(kind: &str, manifest: Manifest, precision: Precision, segment: SegmentRules) -> Result<Tool> {
        if manifest.model.tool != kind {
            bail!(
                "{}: field `model.tool` is \"{}\", the station's `tool.kind` is \"{kind}\"",
                manifest.path.display(),
                manifest.model.tool
            );
        }
        Ok(match kind {
            "classify" => Tool::Classify(Box::new(Classifier::from_manifest(manifest, precision)?)),
            "segment" => Tool::Segment(Box::new(Segmenter::from_manifest(manifest, precision, segment)?)),
            "anomaly" => Tool::Anomaly(Box::new(AnomalyDetector::from_manifest(manifest, precision, segment)?)),
            other => bail!("tool kind \"{other}\" is not built into this station"),
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        match self {
            Tool::Classify(c) => c.manifest(),
            Tool::Segment(s) => s.manifest(),
            Tool::Anomaly(a) => a.manifest(),
        }
    }

    /// Size the per-frame buffers for `width × height` frames (warm-up).
    pub fn prepare(&mut self, width: usize, height: usize) {
        match self {
            Tool::Classify(c) => c.prepare(width, height),
            Tool::Segment(s) => s.prepare(width, height),
            Tool::Anomaly(a) => a.prepare(width, height),
        }
    }

    /// Inspect one frame: one score per class of the manifest.
    pub fn scores(&mut self, frame: &GrayFrame<'_>) -> Result<&[f32], ToolError> {
        match self {
            Tool::Classify(c) => c.classify(frame).map_err(ToolError::Classify),
            Tool::Segment(s) => s.scores(frame).map_err(ToolError::Run),
            Tool::Anomaly(a) => a.scores(frame).map_err(ToolError::Run),
        }
    }

    /// The last frame's defect boxes in frame pixels (`x0, y0, x1, y1`), largest first.
    pub fn boxes(&self) -> impl Iterator<Item = (u32, u32, u32, u32)> + '_ {
        let regions: &[segment::MeasuredRegion] = match self {
            Tool::Classify(_) => &[],
            Tool::Segment(s) => &s.result().regions,
            Tool::Anomaly(a) => &a.result().regions,
        };
        regions.iter().map(|r| (r.px.x0, r.px.y0, r.px.x1, r.px.y1))
    }
}
