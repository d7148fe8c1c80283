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

#[derive(Debug, Deserialize)]
struct Raw {
    model: ModelSection,
    input: InputSection,
    classes: Vec<ClassEntry>,
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
    /// `[[classes]]`, in output order.
    pub classes: Vec<ClassEntry>,
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
        let raw: Raw = toml::from_str(text).map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
        let m = &raw.model;
        if m.tool != "classify" {
            bail!(
                "{p}: field `model.tool` is \"{}\"; this build runs \"classify\" models",
                m.tool
            );
        }
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
        if i.resize != "bilinear" {
            bail!("{p}: field `input.resize` is \"{}\"; allowed: \"bilinear\"", i.resize);
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
