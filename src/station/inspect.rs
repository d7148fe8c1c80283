//! Inspection: the tool (classify, segment or anomaly) and its decision for each frame.
//!
//! Guarantees:
//! - the tool is loaded and its manifest checked against the config before the first frame;
//!   a model that cannot be loaded stops the station at start-up, naming `tool.manifest`;
//! - every frame gets a decision: a frame that is corrupt or of an unusable size, and a model
//!   error, give the configured fail-safe and name the fault — nothing on the frame path is
//!   an error that stops the station;
//! - the scores of the last frame are kept in a fixed array of [`MAX_CLASSES`]: inspecting
//!   allocates nothing in our code.

use anyhow::{Context, Result};

use super::config::StationConfig;
use super::summary::FaultCounts;
use crate::core::decision::{Decision, DecisionRules};
use crate::core::frame::GrayFrame;
use crate::core::MAX_CLASSES;
use crate::hal::{CaptureError, FrameInfo};
use crate::model::manifest::{Manifest, Precision};
use crate::tools::Tool;

/// The station's tool, its decision rules and the last frame's scores.
pub(super) struct Inspect {
    /// The tool.
    pub(super) tool: Tool,
    /// The decision rules (the manifest's classes, the config's thresholds and fail-safe).
    pub(super) rules: DecisionRules,
    /// Which model file runs.
    pub(super) precision: Precision,
    /// A decision later than this after capture is void: the item gets the fail-safe.
    pub(super) deadline_us: u64,
    /// The model's class `i` is the station's class `class_map[i]` (identity without
    /// `[[recipes]]`; see [`super::recipes`]).
    pub(super) class_map: [u8; MAX_CLASSES],
    /// The last frame's scores, by station class.
    scores: [f32; MAX_CLASSES],
}

impl Inspect {
    /// Load the tool `cfg` names and its rules; also returns the model's class names.
    pub(super) fn load(cfg: &StationConfig) -> Result<(Inspect, Vec<String>)> {
        let precision = cfg.precision()?;
        let manifest_path = cfg.resolve(&cfg.tool.manifest);
        let tool = Manifest::load(&manifest_path)
            .and_then(|m| Tool::load(&cfg.tool.kind, m, precision, cfg.segment_rules()?))
            .with_context(|| {
                format!(
                    "{}: field `tool.manifest`: the station refuses to start",
                    cfg.path.display()
                )
            })?;
        let rules = cfg.rules(tool.manifest())?;
        let classes: Vec<String> = tool.manifest().classes.iter().map(|c| c.name.clone()).collect();
        let inspect = Inspect {
            tool,
            rules,
            precision,
            deadline_us: cfg.decision.decision_deadline_ms as u64 * 1000,
            class_map: std::array::from_fn(|i| i as u8),
            scores: [0.0f32; MAX_CLASSES],
        };
        Ok((inspect, classes))
    }

    /// The decision for the capture `result` (its pixels in `frame_buf`). A fail-safe
    /// decision names its fault in `fault` (unless one is named already) and counts it.
    pub(super) fn decide(
        &mut self,
        result: &Result<FrameInfo, CaptureError>,
        frame_buf: &[u8],
        faults: &mut FaultCounts,
        fault: &mut Option<&'static str>,
    ) -> Decision {
        match result {
            Err(CaptureError::Corrupt { .. }) => {
                faults.corrupt_frame += 1;
                *fault = fault.or(Some("corrupt frame"));
                self.rules.fail_safe()
            }
            Err(_) => {
                faults.wrong_size_frame += 1;
                *fault = fault.or(Some("wrong frame size"));
                self.rules.fail_safe()
            }
            Ok(info) => match GrayFrame::new(frame_buf, info.width, info.height, info.stride) {
                Err(_) => {
                    faults.wrong_size_frame += 1;
                    *fault = fault.or(Some("wrong frame size"));
                    self.rules.fail_safe()
                }
                Ok(frame) => match self.tool.scores(&frame) {
                    Ok(scores) => {
                        self.scores.fill(0.0);
                        for (s, &to) in scores.iter().zip(self.class_map.iter()) {
                            self.scores[to as usize] = *s;
                        }
                        let mut d = self.rules.decide(scores);
                        d.class = d.class.map(|c| self.class_map[c as usize % MAX_CLASSES]);
                        d
                    }
                    Err(_) => {
                        faults.model += 1;
                        *fault = fault.or(Some("model error"));
                        self.rules.fail_safe()
                    }
                },
            },
        }
    }

    /// The last frame's scores, by station class (zero for classes the model does not have).
    pub(super) fn scores(&self) -> &[f32; MAX_CLASSES] {
        &self.scores
    }
}
