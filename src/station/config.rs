//! Station configuration (`boards/*.toml`): the camera, the tool, the decision rules, the
//! conveyor geometry and the outputs. Units are in the field names. Unknown fields are
//! errors, so a typo never silently falls back to a default. Paths are relative to the file.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;

use crate::core::decision::{Action, ClassRule, DecisionRules};
use crate::core::reject::EjectorConfig;
use crate::model::manifest::{Manifest, Precision};

/// The configuration `ferroscope run` uses with no `--config`: the host simulation.
pub const DEFAULT_CONFIG_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/boards/host-sim.toml");

/// `[station]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationSection {
    /// Station name (shown on screen, used in event topics).
    pub name: String,
}

/// `[camera]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSection {
    /// `replay` (the only source in this build).
    pub source: String,
    /// Replay folder or list file.
    pub path: PathBuf,
    /// Frames per second.
    pub rate_fps: f32,
    /// Passes over the set; 0 = forever.
    #[serde(default = "one")]
    pub loops: u32,
}

fn one() -> u32 {
    1
}

/// `[tool]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSection {
    /// `classify`.
    pub kind: String,
    /// Model manifest.
    pub manifest: PathBuf,
    /// `int8` (default) or `f32`.
    #[serde(default)]
    pub precision: Option<String>,
}

/// `[decision]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSection {
    /// Classes whose detection rejects the item.
    pub reject_classes: Vec<String>,
    /// Classes whose detection accepts it.
    #[serde(default)]
    pub accept_classes: Vec<String>,
    /// Per-class score thresholds overriding the manifest's.
    #[serde(default)]
    pub min_score: std::collections::BTreeMap<String, f32>,
    /// `reject` or `accept` when no head is confident.
    pub uncertain: String,
    /// `reject` or `accept` when no valid decision exists.
    #[serde(default = "reject")]
    pub failsafe: String,
    /// A decision later than this after capture is void; the fail-safe applies.
    pub decision_deadline_ms: u32,
}

fn reject() -> String {
    "reject".into()
}

/// `[conveyor]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConveyorSection {
    /// Belt speed.
    pub belt_speed_mm_per_s: f32,
    /// Camera optical axis to ejector.
    pub ejector_distance_mm: f32,
    /// Actuator on-time per item.
    pub pulse_width_ms: f32,
    /// Shortest off-time between pulses; closer rejects merge.
    pub min_gap_ms: f32,
}

/// `[outputs]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsSection {
    /// `recording` (timeline in memory; the only backend in this build).
    pub backend: String,
    /// Heartbeat half-period while healthy.
    pub heartbeat_period_ms: u32,
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// `[station]`.
    pub station: StationSection,
    /// `[camera]`.
    pub camera: CameraSection,
    /// `[tool]`.
    pub tool: ToolSection,
    /// `[decision]`.
    pub decision: DecisionSection,
    /// `[conveyor]`.
    pub conveyor: ConveyorSection,
    /// `[outputs]`.
    pub outputs: OutputsSection,
    /// Where it was read from; relative paths resolve against its folder.
    #[serde(skip)]
    pub path: PathBuf,
}

fn action(v: &str, p: &Path, field: &str) -> Result<Action> {
    match v {
        "reject" => Ok(Action::Reject),
        "accept" => Ok(Action::Accept),
        other => bail!(
            "{}: field `{field}` is \"{other}\"; allowed: \"reject\", \"accept\"",
            p.display()
        ),
    }
}

impl StationConfig {
    /// Parse `text` as the file `path` (no files are touched).
    pub fn parse(text: &str, path: &Path) -> Result<StationConfig> {
        let mut c: StationConfig = toml::from_str(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        c.path = path.to_path_buf();
        let p = path.display();
        if c.camera.source != "replay" {
            bail!(
                "{p}: field `camera.source` is \"{}\"; allowed: \"replay\"",
                c.camera.source
            );
        }
        if c.tool.kind != "classify" {
            bail!("{p}: field `tool.kind` is \"{}\"; allowed: \"classify\"", c.tool.kind);
        }
        if c.outputs.backend != "recording" {
            bail!(
                "{p}: field `outputs.backend` is \"{}\"; allowed: \"recording\"",
                c.outputs.backend
            );
        }
        let k = &c.conveyor;
        if !(k.belt_speed_mm_per_s > 0.0 && k.belt_speed_mm_per_s.is_finite()) {
            bail!("{p}: field `conveyor.belt_speed_mm_per_s` must be > 0");
        }
        if !(k.ejector_distance_mm >= 0.0 && k.ejector_distance_mm.is_finite()) {
            bail!("{p}: field `conveyor.ejector_distance_mm` must be >= 0");
        }
        if !(k.pulse_width_ms > 0.0 && k.pulse_width_ms <= 10_000.0) {
            bail!("{p}: field `conveyor.pulse_width_ms` must be in (0, 10000]");
        }
        if !(k.min_gap_ms >= 0.0 && k.min_gap_ms <= 10_000.0) {
            bail!("{p}: field `conveyor.min_gap_ms` must be in [0, 10000]");
        }
        action(&c.decision.uncertain, path, "decision.uncertain")?;
        action(&c.decision.failsafe, path, "decision.failsafe")?;
        Ok(c)
    }

    /// Read and parse a file.
    pub fn load(path: &Path) -> Result<StationConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: cannot read config: {e}", path.display()))?;
        StationConfig::parse(&text, path)
    }

    /// Resolve a path from the file against its folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// The model precision to run.
    pub fn precision(&self) -> Result<Precision> {
        match self.tool.precision.as_deref().unwrap_or("int8") {
            "int8" => Ok(Precision::Int8),
            "f32" => Ok(Precision::F32),
            other => bail!(
                "{}: field `tool.precision` is \"{other}\"; allowed: \"int8\", \"f32\"",
                self.path.display()
            ),
        }
    }

    /// Decision rules for `manifest`'s classes: every class must be listed as reject or
    /// accept (exactly once), and every listed name must be a class of the model.
    pub fn rules(&self, manifest: &Manifest) -> Result<DecisionRules> {
        let p = self.path.display();
        let d = &self.decision;
        let names = manifest.class_names();
        for n in d
            .reject_classes
            .iter()
            .chain(&d.accept_classes)
            .chain(d.min_score.keys())
        {
            if !names.contains(&n.as_str()) {
                bail!(
                    "{p}: `decision` names class \"{n}\", which {} does not have (classes: {})",
                    manifest.path.display(),
                    names.join(", ")
                );
            }
        }
        let mut rules = Vec::new();
        for c in &manifest.classes {
            let rej = d.reject_classes.contains(&c.name);
            let acc = d.accept_classes.contains(&c.name);
            if rej == acc {
                bail!(
                    "{p}: class \"{}\" must be in exactly one of `decision.reject_classes` and `decision.accept_classes`",
                    c.name
                );
            }
            let min_score = d.min_score.get(&c.name).copied().unwrap_or(c.threshold);
            if !(0.0..=1.0).contains(&min_score) {
                bail!(
                    "{p}: field `decision.min_score.{}` is {min_score}; allowed 0..=1",
                    c.name
                );
            }
            rules.push(ClassRule { reject: rej, min_score });
        }
        DecisionRules::new(
            &rules,
            action(&d.uncertain, &self.path, "decision.uncertain")?,
            action(&d.failsafe, &self.path, "decision.failsafe")?,
        )
        .map_err(|e| anyhow!("{p}: decision rules: {e:?}"))
    }

    /// The ejector.
    pub fn ejector(&self) -> EjectorConfig {
        EjectorConfig {
            ejector_distance_mm: self.conveyor.ejector_distance_mm,
            pulse_width_us: (self.conveyor.pulse_width_ms * 1000.0).round() as u32,
            min_gap_us: (self.conveyor.min_gap_ms * 1000.0).round() as u32,
        }
    }
}
