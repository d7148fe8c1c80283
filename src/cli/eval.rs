//! `ferroscope eval`: a model measured on a labelled folder.
//!
//! - classify: accuracy, macro precision/recall/F1, per-class rows and the confusion matrix
//!   over DIR/<class>/*; a folder that is not a class of the model is an error naming it;
//! - segment, anomaly: [`super::segment::eval`]; grains: [`super::grains::eval`];
//! - an image that cannot be read is listed and makes the exit code 1; the metrics cover the
//!   others.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant as StdInstant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use ferroscope::core::frame::GrayFrame;
use ferroscope::eval::ClassMetrics;
use ferroscope::model::manifest::Precision;
use ferroscope::sim::replay::list_images;
use ferroscope::tools::classify::Classifier;

use super::heldout::HeldoutArgs;
use super::{grains, median, read_gray, segment, PrecisionArg};

#[derive(Subcommand)]
pub enum EvalTool {
    /// Grain sizes over DIR/images/* against DIR/masks/<stem>.png (grains 255, boundaries 0).
    Grains(grains::EvalGrainsArgs),
    /// Classification over DIR/<class>/*.{png,jpg,bmp}; folder names are the manifest's classes.
    Classify(ClassifyArgs),
    /// Segmentation over DIR/images/* with DIR/masks/<stem>.png (0 background, 255 defect; all-zero for good parts),
    /// or over class folders DIR/<class>/* with --masks MASKS/<class>/<name>: image AP, Dice, IoU, MAE, per class.
    Segment(MapEvalArgs),
    /// Anomaly model (trained on good parts) over DIR/images/* with DIR/masks/<stem>.png, as `eval segment`:
    /// image AUROC, pixel AUROC, AP, false rejects and misses at the threshold.
    Anomaly(MapEvalArgs),
}

/// `ferroscope eval classify`.
#[derive(Args)]
pub struct ClassifyArgs {
    /// Model manifest.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset root(s) holding one folder per class; repeat to combine roots.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Evaluate only the images listed in this file (`class/name` per line, relative to a --data root).
    #[arg(long)]
    pub list: Option<PathBuf>,
    /// Which model file of the manifest to run.
    #[arg(long, value_enum, default_value = "int8")]
    pub precision: PrecisionArg,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub heldout: HeldoutArgs,
}

/// `ferroscope eval segment` and `ferroscope eval anomaly`.
#[derive(Args)]
pub struct MapEvalArgs {
    /// Model manifest.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset root holding images/ and masks/; with --masks, class folders DIR/<class>/*.
    #[arg(long)]
    pub data: PathBuf,
    /// Masks of class-folder data: MASKS/<class>/<name> for DIR/<class>/<name> (0 background,
    /// 255 defect); classes with no folder here are skipped.
    #[arg(long)]
    pub masks: Option<PathBuf>,
    /// Evaluate only the images named in this file (file names in images/, one per line; with
    /// --masks, `class/name`).
    #[arg(long)]
    pub list: Option<PathBuf>,
    /// Which model file of the manifest to run.
    #[arg(long, value_enum, default_value = "int8")]
    pub precision: PrecisionArg,
    /// Average each tile's map over this many flips and quarter turns (1, 2, 4 or 8) instead
    /// of the manifest's `symmetries`.
    #[arg(long, value_parser = super::parse_symmetries)]
    pub symmetries: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub heldout: HeldoutArgs,
}

/// `ferroscope eval …`.
pub fn run(tool: EvalTool) -> Result<ExitCode> {
    match tool {
        EvalTool::Classify(a) => eval_classify(&a),
        EvalTool::Segment(a) => segment::eval("segment", &a),
        EvalTool::Anomaly(a) => segment::eval("anomaly", &a),
        EvalTool::Grains(a) => grains::eval(a),
    }
}

fn gather_labelled(data: &[PathBuf], list: Option<&Path>, classes: &[String]) -> Result<Vec<(PathBuf, usize)>> {
    let mut items = Vec::new();
    if let Some(list) = list {
        let text = std::fs::read_to_string(list).with_context(|| format!("{}: cannot read list", list.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let class = line.split('/').next().unwrap_or("");
            let Some(ci) = classes.iter().position(|c| c == class) else {
                bail!(
                    "{}:{}: class folder \"{class}\" is not a class of the model ({})",
                    list.display(),
                    n + 1,
                    classes.join(", ")
                );
            };
            let Some(path) = data.iter().map(|d| d.join(line)).find(|p| p.is_file()) else {
                bail!("{}:{}: {line} is in none of the --data folders", list.display(), n + 1);
            };
            items.push((path, ci));
        }
    } else {
        for root in data {
            for entry in std::fs::read_dir(root).with_context(|| format!("{}: cannot list", root.display()))? {
                let p = entry?.path();
                if !p.is_dir() {
                    continue;
                }
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
                let Some(ci) = classes.iter().position(|c| *c == name) else {
                    bail!(
                        "{}: folder \"{name}\" is not a class of the model ({})",
                        p.display(),
                        classes.join(", ")
                    );
                };
                for f in list_images(&p)? {
                    items.push((f, ci));
                }
            }
        }
        items.sort();
    }
    if items.is_empty() {
        bail!("no images found under {:?}", data);
    }
    Ok(items)
}

fn eval_classify(a: &ClassifyArgs) -> Result<ExitCode> {
    let (model, data, list, json) = (&a.model, &a.data, a.list.as_deref(), a.json);
    let precision: Precision = a.precision.into();
    let pending = a.heldout.prepare(model, precision, list)?;
    let mut clf = Classifier::load(model, precision)?;
    let classes: Vec<String> = clf.manifest().classes.iter().map(|c| c.name.clone()).collect();
    let items = gather_labelled(data, list, &classes)?;
    let k = classes.len();
    let mut confusion = vec![vec![0u64; k]; k];
    let mut ms = Vec::with_capacity(items.len());
    let bar = if std::io::stderr().is_terminal() && !json {
        let b = indicatif::ProgressBar::new(items.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut errors = Vec::new();
    let started = StdInstant::now();
    for (path, truth) in &items {
        let t0 = StdInstant::now();
        let (w, h, px) = match read_gray(path) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
        let scores = clf
            .classify(&frame)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut best = 0;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[best] {
                best = i;
            }
        }
        confusion[*truth][best] += 1;
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let wall = started.elapsed().as_secs_f64();
    let n = ms.len();
    let m = ClassMetrics::from_confusion(confusion);
    let ms_median = median(&mut ms);
    let m_info = clf.manifest();
    let per_class: Vec<_> = (0..k)
        .map(|c| json!({"class": classes[c], "precision": m.precision[c], "recall": m.recall[c], "f1": m.f1[c], "support": m.support[c]}))
        .collect();
    let j = json!({
        "model": m_info.model.name, "version": m_info.model.version, "precision_kind": precision.name(),
        "images": n, "accuracy": m.accuracy, "precision": m.macro_precision(), "recall": m.macro_recall(), "f1": m.macro_f1(),
        "classes": classes, "per_class": per_class, "confusion": m.confusion,
        "ms_per_image_median": ms_median, "images_per_s": n as f64 / wall, "errors": errors,
    });
    if let Some(p) = pending {
        p.append(&j)?;
    }
    if json {
        println!("{j}");
    } else {
        println!(
            "model {} {} ({}) on {} images",
            m_info.model.name,
            m_info.model.version,
            precision.name(),
            n
        );
        println!(
            "accuracy {:.2} %   macro precision {:.2} %   recall {:.2} %   F1 {:.2} %",
            m.accuracy * 100.0,
            m.macro_precision() * 100.0,
            m.macro_recall() * 100.0,
            m.macro_f1() * 100.0
        );
        println!(
            "{:.1} images/s, {:.2} ms per image (median, decode + preprocess + inference, one thread)",
            n as f64 / wall,
            ms_median
        );
        println!();
        println!(
            "{:<18} {:>9} {:>9} {:>9} {:>7}",
            "class", "precision", "recall", "F1", "images"
        );
        for (c, name) in classes.iter().enumerate() {
            println!(
                "{:<18} {:>8.2}% {:>8.2}% {:>8.2}% {:>7}",
                name,
                m.precision[c] * 100.0,
                m.recall[c] * 100.0,
                m.f1[c] * 100.0,
                m.support[c]
            );
        }
        println!();
        println!("confusion (rows: truth, columns: predicted, in class order)");
        for (c, row) in m.confusion.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>4}")).collect();
            println!("{:<18} {}", classes[c], cells.join(""));
        }
        for e in &errors {
            eprintln!("error: {e}");
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
