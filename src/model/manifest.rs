//! Model manifests (`models/*.toml`): what the model expects and promises.
//!
//! A manifest is checked completely at start-up; any problem is an error naming the file and
//! the field, and the station refuses to start. Parsing ([`Manifest::parse`]) is separate from
//! reading files so each rule is testable on a string.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::core::MAX_CLASSES;

/// Which of the manifest's model files to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// The shipped int8 model (`model.file`).
    Int8,
    /// The f32 reference (`model.f32_file`).
    F32,
}

impl Precision {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Int8 => "int8",
            Precision::F32 => "f32",
        }
    }
}

/// `[model]`.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelSection {
    /// Model name.
    pub name: String,
    /// Which tool runs it (`classify`).
    pub tool: String,
    /// Model version.
    pub version: String,
    /// The int8 ONNX file, relative to the manifest.
    pub file: String,
    /// Its sha256, hex.
    pub sha256: String,
    /// The f32 reference ONNX file, relative to the manifest.
    pub f32_file: Option<String>,
    /// Its sha256, hex.
    pub f32_sha256: Option<String>,
    /// Why the model is built the way it is.
    pub design: Option<String>,
}

/// `[input]`.
#[derive(Clone, Debug, Deserialize)]
pub struct InputSection {
    /// Input tensor name.
    pub name: String,
    /// `[1, channels, height, width]`.
    pub shape: Vec<usize>,
    /// Only `NCHW`.
    pub layout: String,
    /// Only `gray`.
    pub color: String,
    /// Only `bilinear`.
    pub resize: String,
    /// Normalisation: `(pixel / 255 - mean) / std`.
    pub mean: f32,
    /// See `mean`.
    pub std: f32,
}

/// One `[[classes]]` entry.
#[derive(Clone, Debug, Deserialize)]
pub struct ClassEntry {
    /// Class name; evaluation folders use it.
    pub name: String,
    /// Score from which the head counts as detecting the class.
    pub threshold: f32,
}

/// `[segment]` or `[anomaly]`: a model that maps tiles of the frame to a defect map and a
/// per-tile score.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiledSection {
    /// Tile side, frame pixels (the model input is `tile × tile`).
    pub tile: usize,
    /// Neighbouring tiles share at least this many pixels.
    pub min_overlap: usize,
    /// Frame pixels per map cell (the map output is `tile / cell` square).
    pub cell: usize,
    /// The image is defective when its score reaches this.
    pub decision_threshold: f32,
    /// A map pixel belongs to a region at or above this.
    pub pixel_threshold: f32,
    /// How the thresholds were chosen.
    #[serde(default)]
    pub threshold_rule: Option<String>,
    /// Anomaly maps: the image score is the maximum of the map after a box blur of this many
    /// frame pixels (0: the decision output, if any).
    #[serde(default)]
    pub score_blur_px: usize,
    /// The map of each tile is the mean of the model's maps over this many of the tile's
    /// flips and quarter turns, each turned back (1: the tile as it is; 2: and mirrored
    /// left–right; 4: and upside down, and both; 8: and the four transposed). The model runs
    /// this many times a tile.
    #[serde(default = "one")]
    pub symmetries: usize,
}

fn one() -> usize {
    1
}

/// Allowed values of `symmetries` (the first 1, 2, 4 or all 8 of the square's symmetries).
pub const SYMMETRIES: [usize; 4] = [1, 2, 4, 8];

#[derive(Debug, Deserialize)]
struct Raw {
    model: ModelSection,
    input: InputSection,
    #[serde(default)]
    classes: Vec<ClassEntry>,
    segment: Option<TiledSection>,
    anomaly: Option<TiledSection>,
    metrics: Option<toml::Table>,
}

/// A checked manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Where it was read from.
    pub path: PathBuf,
    /// `[model]`.
    pub model: ModelSection,
    /// `[input]`.
    pub input: InputSection,
    /// `[[classes]]`, in output order. A segment or anomaly model has one class, `defect`,
    /// whose threshold is the decision threshold.
    pub classes: Vec<ClassEntry>,
    /// `[segment]` / `[anomaly]`: the tiling and thresholds of a map model.
    pub tiled: Option<TiledSection>,
    /// `[metrics]`, as measured by `ferroscope eval`.
    pub metrics: Option<toml::Table>,
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(sha256_hex(&bytes))
}

impl Manifest {
    /// Parse and check `text` as the manifest at `path` (files are not touched).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let p = path.display();
        let mut raw: Raw = toml::from_str(text).map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
        let tiled = match raw.model.tool.as_str() {
            "classify" => None,
            "segment" => Some(raw.segment.take().ok_or_else(|| {
                anyhow::anyhow!("{p}: a \"segment\" model needs its `[segment]` section")
            })?),
            "anomaly" => Some(raw.anomaly.take().ok_or_else(|| {
                anyhow::anyhow!("{p}: an \"anomaly\" model needs its `[anomaly]` section")
            })?),
            other => bail!(
                "{p}: field `model.tool` is \"{other}\"; this build runs \"classify\", \"segment\" and \"anomaly\" models"
            ),
        };
        let tool = raw.model.tool.clone();
        if let Some(t) = &tiled {
            if t.tile == 0 || t.cell == 0 || t.tile % t.cell != 0 || t.min_overlap >= t.tile {
                bail!(
                    "{p}: `[{tool}]`: fields `tile` ({}), `cell` ({}) and `min_overlap` ({}) need tile > 0, tile a multiple of cell, min_overlap < tile",
                    t.tile, t.cell, t.min_overlap
                );
            }
            if !SYMMETRIES.contains(&t.symmetries) {
                bail!(
                    "{p}: field `{tool}.symmetries` is {}; allowed 1, 2, 4 or 8",
                    t.symmetries
                );
            }
            for (f, v) in [
                ("decision_threshold", t.decision_threshold),
                ("pixel_threshold", t.pixel_threshold),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    bail!("{p}: field `{tool}.{f}` is {v}; allowed 0..=1");
                }
            }
            if raw.input.shape.len() == 4 && raw.input.shape[2..] != [t.tile, t.tile] {
                bail!(
                    "{p}: field `input.shape` is {:?}; a {tool} model takes one {}x{} tile ([1, 1, {}, {}])",
                    raw.input.shape,
                    t.tile,
                    t.tile,
                    t.tile,
                    t.tile
                );
            }
            if raw.classes.is_empty() {
                raw.classes.push(ClassEntry {
                    name: "defect".into(),
                    threshold: t.decision_threshold,
                });
            }
        }
        let m = &raw.model;
        if !is_sha256(&m.sha256) {
            bail!("{p}: field `model.sha256` must be 64 hex digits");
        }
        if m.f32_file.is_some() != m.f32_sha256.is_some() {
            bail!("{p}: fields `model.f32_file` and `model.f32_sha256` go together");
        }
        if let Some(s) = &m.f32_sha256 {
            if !is_sha256(s) {
                bail!("{p}: field `model.f32_sha256` must be 64 hex digits");
            }
        }
        let i = &raw.input;
        if i.layout != "NCHW" {
            bail!("{p}: field `input.layout` is \"{}\"; allowed: \"NCHW\"", i.layout);
        }
        if i.color != "gray" {
            bail!("{p}: field `input.color` is \"{}\"; allowed: \"gray\"", i.color);
        }
        let resize = if tiled.is_some() { "none" } else { "bilinear" };
        if i.resize != resize {
            bail!(
                "{p}: field `input.resize` is \"{}\"; a {} model allows \"{resize}\"",
                i.resize,
                m.tool
            );
        }
        if i.shape.len() != 4 || i.shape[0] != 1 || i.shape[1] != 1 || i.shape[2] == 0 || i.shape[3] == 0 {
            bail!(
                "{p}: field `input.shape` is {:?}; expected [1, 1, height, width] for one gray image",
                i.shape
            );
        }
        if i.std.is_nan() || i.std <= 0.0 || !i.mean.is_finite() || !i.std.is_finite() {
            bail!("{p}: fields `input.mean`/`input.std` must be finite with std > 0");
        }
        if raw.classes.is_empty() || raw.classes.len() > MAX_CLASSES {
            bail!(
                "{p}: field `classes` has {} entries; allowed 1..={MAX_CLASSES}",
                raw.classes.len()
            );
        }
        for (k, c) in raw.classes.iter().enumerate() {
            if !(0.0..=1.0).contains(&c.threshold) {
                bail!(
                    "{p}: field `classes[{k}].threshold` ({}) is {}; allowed 0..=1",
                    c.name,
                    c.threshold
                );
            }
            if c.name.is_empty() || raw.classes[..k].iter().any(|o| o.name == c.name) {
                bail!("{p}: field `classes[{k}].name` \"{}\" is empty or repeated", c.name);
            }
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            model: raw.model,
            input: raw.input,
            classes: raw.classes,
            tiled,
            metrics: raw.metrics,
        })
    }

    /// Read, parse and check a manifest, then check that the model file(s) exist and match
    /// their sha256.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read manifest", path.display()))?;
        let m = Manifest::parse(&text, path)?;
        m.check_file(Precision::Int8)?;
        if m.model.f32_file.is_some() {
            m.check_file(Precision::F32)?;
        }
        Ok(m)
    }

    /// Path of the model file for `precision`.
    pub fn model_path(&self, precision: Precision) -> Result<PathBuf> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        match precision {
            Precision::Int8 => Ok(dir.join(&self.model.file)),
            Precision::F32 => match &self.model.f32_file {
                Some(f) => Ok(dir.join(f)),
                None => bail!(
                    "{}: field `model.f32_file` is missing; no f32 model to run",
                    self.path.display()
                ),
            },
        }
    }

    fn check_file(&self, precision: Precision) -> Result<()> {
        let (field, want) = match precision {
            Precision::Int8 => ("model.sha256", self.model.sha256.as_str()),
            Precision::F32 => ("model.f32_sha256", self.model.f32_sha256.as_deref().unwrap_or("")),
        };
        let file = self.model_path(precision)?;
        if !file.is_file() {
            bail!(
                "{}: field `{}`: model file {} does not exist",
                self.path.display(),
                if precision == Precision::Int8 {
                    "model.file"
                } else {
                    "model.f32_file"
                },
                file.display()
            );
        }
        let got = sha256_file(&file)?;
        if !got.eq_ignore_ascii_case(want) {
            bail!(
                "{}: field `{field}`: {} has sha256 {got}, the manifest says {want}",
                self.path.display(),
                file.display()
            );
        }
        Ok(())
    }

    /// Class names in output order.
    pub fn class_names(&self) -> Vec<&str> {
        self.classes.iter().map(|c| c.name.as_str()).collect()
    }

    /// Model input height and width.
    pub fn input_hw(&self) -> (usize, usize) {
        (self.input.shape[2], self.input.shape[3])
    }
}
