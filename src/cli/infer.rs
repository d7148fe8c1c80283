//! `ferroscope infer`: a model on images, whichever tool its manifest names.
//!
//! - classify: the class, every head's score and the decision, per image;
//! - segment and anomaly: handed to [`super::segment::infer`] (regions, decision, overlay);
//! - an image that cannot be read or decoded is an error line and exit 1; the other images
//!   are still inferred.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use ferroscope::core::frame::GrayFrame;
use ferroscope::model::manifest::{Manifest, Precision};
use ferroscope::tools::classify::Classifier;

use super::{action_name, manifest_rules, read_gray, segment, PrecisionArg};

/// `ferroscope infer`.
#[derive(Args)]
pub struct InferArgs {
    /// Model manifest (models/*.toml).
    #[arg(long)]
    pub model: PathBuf,
    /// Which model file of the manifest to run.
    #[arg(long, value_enum, default_value = "int8")]
    pub precision: PrecisionArg,
    /// Print one JSON object per image.
    #[arg(long)]
    pub json: bool,
    /// Segment / anomaly: write the frame with the defect map (anomaly: a heat map) and region boxes (a PNG; a folder for several images).
    #[arg(long)]
    pub overlay: Option<PathBuf>,
    /// Segment / anomaly: calibration, millimetres per frame pixel (without it sizes are in pixels).
    #[arg(long)]
    pub mm_per_px: Option<f32>,
    /// Segment / anomaly: reject when a region is longer than this (mm; needs --mm-per-px).
    #[arg(long)]
    pub reject_if_length_mm_over: Option<f32>,
    /// Segment / anomaly: reject when a region's area exceeds this (mm²; needs --mm-per-px).
    #[arg(long)]
    pub reject_if_area_mm2_over: Option<f32>,
    /// Images (png, jpg, bmp; any size, converted to gray).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// `ferroscope infer`: dispatch on the manifest's tool.
pub fn run(a: InferArgs) -> Result<ExitCode> {
    let InferArgs {
        model,
        precision,
        json,
        overlay,
        mm_per_px,
        reject_if_length_mm_over,
        reject_if_area_mm2_over,
        images,
    } = a;
    match Manifest::load(&model) {
        Ok(m) if m.model.tool == "segment" || m.model.tool == "anomaly" => {
            let rules = ferroscope::tools::segment::SegmentRules {
                mm_per_px,
                reject_if_length_mm_over,
                reject_if_area_mm2_over,
                ..Default::default()
            };
            segment::infer(&model, precision.into(), json, &images, overlay.as_deref(), rules)
        }
        Ok(_) if overlay.is_some() || mm_per_px.is_some() => Err(anyhow::anyhow!(
            "{}: --overlay and --mm-per-px apply to segment and anomaly models",
            model.display()
        )),
        Ok(_) => infer(&model, precision.into(), json, &images),
        Err(e) => Err(e),
    }
}

fn infer(model: &Path, precision: Precision, json: bool, images: &[PathBuf]) -> Result<ExitCode> {
    let mut clf = Classifier::load(model, precision)?;
    let rules = manifest_rules(clf.manifest())?;
    let names: Vec<String> = clf.manifest().classes.iter().map(|c| c.name.clone()).collect();
    let mut failed = false;
    for path in images {
        let (w, h, px) = match read_gray(path) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e:#}");
                failed = true;
                continue;
            }
        };
        let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
        let scores = clf
            .classify(&frame)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .to_vec();
        let d = rules.decide(&scores);
        let class = d.class.map(|c| names[c as usize].as_str()).unwrap_or("-");
        if json {
            let s: serde_json::Map<_, _> = names.iter().zip(&scores).map(|(n, s)| (n.clone(), json!(s))).collect();
            println!(
                "{}",
                json!({"image": path.display().to_string(), "class": class, "score": d.score, "outcome": d.outcome.name(), "decision": action_name(d.action), "scores": s})
            );
        } else {
            println!(
                "{}: {} {:.3} → {} ({})",
                path.display(),
                class,
                d.score,
                action_name(d.action),
                d.outcome.name()
            );
            for (n, s) in names.iter().zip(&scores) {
                println!("    {n:<18} {s:.4}");
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
