//! A grain-boundary model: its manifest (`tool = "grains"`, a `[grains]` section) and the
//! run from a gray micrograph to grain sizes.
//!
//! The `[grains]` section holds the tiling (as a segment model's: `tile`, `min_overlap`,
//! `cell`), the boundary threshold and the analysis defaults, all in the units of the
//! training set's calibration:
//!
//! ```toml
//! [grains]
//! tile = 256
//! min_overlap = 32
//! cell = 2
//! pixel_threshold = 0.5   # boundary at or above this probability
//! um_per_px = 0.444444    # the training micrographs' scale
//! min_grain_um2 = 20.0    # smaller regions are not grains
//! bridge_gap_um = 8.0     # boundary gaps up to this are closed
//! ```
//!
//! The tiles run through the same tiling and stitching as the segment tool
//! ([`TiledMap`]).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::analysis::{AnalysisParams, GrainAnalyzer, GrainReport};
use crate::core::frame::GrayFrame;
use crate::model::manifest::{sha256_file, Manifest, Precision};
use crate::tools::tiled::{MapOutput, TiledMap};

/// `[grains]` of a manifest, beyond the tiling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrainsSection {
    /// Boundary at or above this probability.
    pub pixel_threshold: f32,
    /// The training micrographs' scale, µm per pixel.
    pub um_per_px: f64,
    /// Regions smaller than this (µm²) are not grains.
    pub min_grain_um2: f64,
    /// Boundary gaps up to this (µm) are closed.
    pub bridge_gap_um: f64,
}

impl GrainsSection {
    /// Analysis parameters at calibration `um_per_px` (the manifest's sizes in µm turned into
    /// pixels of that scale).
    pub fn params(&self, um_per_px: f64) -> AnalysisParams {
        let mut p = AnalysisParams::for_scale(um_per_px);
        p.min_grain_px = ((self.min_grain_um2 / (um_per_px * um_per_px)).round() as usize).max(1);
        p.bridge_gap_px = (self.bridge_gap_um / um_per_px).round() as usize;
        p
    }
}

fn num(t: &toml::Table, key: &str, p: &str) -> Result<f64> {
    match t.get(key) {
        Some(toml::Value::Float(f)) => Ok(*f),
        Some(toml::Value::Integer(i)) => Ok(*i as f64),
        Some(other) => bail!("{p}: field `grains.{key}` is {other}; expected a number"),
        None => bail!("{p}: field `grains.{key}` is missing"),
    }
}

/// Parse and check a grains manifest's text (files are not touched): the common checks of
/// [`Manifest::parse`] on its tiling, then the `[grains]` fields.
pub fn parse_manifest(text: &str, path: &Path) -> Result<(Manifest, GrainsSection)> {
    let p = path.display().to_string();
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
    let tool = doc
        .get("model")
        .and_then(|m| m.get("tool"))
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    if tool != "grains" {
        bail!("{p}: field `model.tool` is \"{tool}\"; the grains tool runs \"grains\" models");
    }
    let Some(toml::Value::Table(g)) = doc.get("grains").cloned() else {
        bail!("{p}: a \"grains\" model needs its `[grains]` section");
    };
    let section = GrainsSection {
        pixel_threshold: num(&g, "pixel_threshold", &p)? as f32,
        um_per_px: num(&g, "um_per_px", &p)?,
        min_grain_um2: num(&g, "min_grain_um2", &p)?,
        bridge_gap_um: num(&g, "bridge_gap_um", &p)?,
    };
    if !(section.um_per_px.is_finite() && section.um_per_px > 0.0) {
        bail!("{p}: field `grains.um_per_px` is {}; allowed > 0", section.um_per_px);
    }
    for (f, v) in [
        ("min_grain_um2", section.min_grain_um2),
        ("bridge_gap_um", section.bridge_gap_um),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{p}: field `grains.{f}` is {v}; allowed ≥ 0");
        }
    }
    // The tiling is a segment model's: check it with the shared rules.
    let mut seg = toml::Table::new();
    for key in [
        "tile",
        "min_overlap",
        "cell",
        "pixel_threshold",
        "threshold_rule",
        "symmetries",
    ] {
        if let Some(v) = g.get(key) {
            seg.insert(key.into(), v.clone());
        }
    }
    seg.insert("decision_threshold".into(), toml::Value::Float(1.0));
    doc.insert("segment".into(), toml::Value::Table(seg));
    doc.remove("grains");
    if let Some(toml::Value::Table(m)) = doc.get_mut("model") {
        m.insert("tool".into(), toml::Value::String("segment".into()));
    }
    let text = toml::to_string(&doc).with_context(|| format!("{p}: re-encoding"))?;
    let mut manifest = Manifest::parse(&text, path).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.to_string()
                .replace("[segment]", "[grains]")
                .replace("segment.", "grains.")
                .replace("a segment model", "a grains model")
        )
    })?;
    manifest.model.tool = "grains".into();
    manifest.classes.clear();
    Ok((manifest, section))
}

/// Read, parse and check a grains manifest and the sha256 of its model file(s).
pub fn load_manifest(path: &Path) -> Result<(Manifest, GrainsSection)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read manifest", path.display()))?;
    let (m, s) = parse_manifest(&text, path)?;
    for (precision, want, field) in [
        (Precision::Int8, Some(m.model.sha256.as_str()), "model.sha256"),
        (Precision::F32, m.model.f32_sha256.as_deref(), "model.f32_sha256"),
    ] {
        let Some(want) = want else { continue };
        let file = m.model_path(precision)?;
        if !file.is_file() {
            bail!("{}: model file {} does not exist", path.display(), file.display());
        }
        let got = sha256_file(&file)?;
        if !got.eq_ignore_ascii_case(want) {
            bail!(
                "{}: field `{field}`: {} has sha256 {got}, the manifest says {want}",
                path.display(),
                file.display()
            );
        }
    }
    Ok((m, s))
}

/// A loaded boundary model with the analysis. The thresholded map, the analysis' buffers and
/// the last report are kept, so after the first micrograph of a size a run asks the allocator
/// for nothing in the threshold and the analysis.
pub struct GrainModel {
    map: TiledMap,
    section: GrainsSection,
    analyzer: GrainAnalyzer,
    boundary: Vec<bool>,
    report: GrainReport,
}

impl GrainModel {
    /// Load the manifest at `path` and its model at `precision`.
    pub fn load(path: &Path, precision: Precision) -> Result<GrainModel> {
        let (manifest, section) = load_manifest(path)?;
        Ok(GrainModel {
            map: TiledMap::from_manifest(manifest, precision)?,
            section,
            analyzer: GrainAnalyzer::new(),
            boundary: Vec::new(),
            report: GrainReport::default(),
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        self.map.manifest()
    }

    /// Flips and quarter turns each model tile's map is averaged over.
    pub fn symmetries(&self) -> usize {
        self.map.symmetries()
    }

    /// Average each model tile's map over `n` flips and quarter turns (1, 2, 4 or 8) instead
    /// of the manifest's `symmetries`.
    pub fn set_symmetries(&mut self, n: usize) -> Result<()> {
        self.map.set_symmetries(n)
    }

    /// `[grains]`.
    pub fn section(&self) -> &GrainsSection {
        &self.section
    }

    /// Run the model over `frame` and stitch the boundary probability map.
    pub fn boundary_map(&mut self, frame: &GrayFrame<'_>) -> Result<MapOutput> {
        self.map.run(frame).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The last stitched boundary probability, row-major.
    pub fn prob(&self) -> &[f32] {
        self.map.prob()
    }

    /// Threshold the last map at `level` and analyse it; the report is kept
    /// ([`GrainModel::report`]) and its grain list reused by the next analysis.
    pub fn analyse_map(&mut self, level: f32, params: &AnalysisParams) -> Result<&GrainReport> {
        let (w, h) = self.map.size();
        self.boundary.clear();
        self.boundary.extend(self.map.prob().iter().map(|&v| v >= level));
        self.analyzer
            .analyse_into(&self.boundary, w, h, params, &mut self.report)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(&self.report)
    }

    /// Model, threshold and analysis in one: grain sizes of `frame` at `um_per_px`.
    pub fn grains(&mut self, frame: &GrayFrame<'_>, um_per_px: f64) -> Result<(&GrainReport, MapOutput)> {
        let out = self.boundary_map(frame)?;
        let params = self.section.params(um_per_px);
        self.analyse_map(self.section.pixel_threshold, &params)?;
        Ok((&self.report, out))
    }

    /// The report of the last successful analysis (empty before the first).
    pub fn report(&self) -> &GrainReport {
        &self.report
    }

    /// The analyser (its label map is the last image's grains).
    pub fn analyzer(&self) -> &GrainAnalyzer {
        &self.analyzer
    }
}
