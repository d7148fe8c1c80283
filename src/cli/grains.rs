//! `grains` and `eval grains`: grain size of micrographs from a boundary model or a boundary
//! mask, and the model measured against hand-drawn masks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant as StdInstant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use ferroscope::core::frame::GrayFrame;
use ferroscope::grains::analysis::{AnalysisParams, GrainAnalyzer, GrainReport};
use ferroscope::grains::model::GrainModel;
use ferroscope::grains::render::{write_grain_map, write_histogram};
use ferroscope::grains::standards::{self, bin_g, G_BINS};
use ferroscope::model::manifest::Precision;

use super::segment::gather_masked;
use super::{median, read_gray, PrecisionArg};

/// Which pixels of a boundary mask are the boundaries.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BoundaryColour {
    /// Boundaries are bright (≥ 128) on dark grains.
    White,
    /// Boundaries are dark (< 128) on bright grains (the grains_316l masks).
    Black,
}

/// `ferroscope grains`.
#[derive(Args)]
pub struct GrainsArgs {
    /// The micrograph (with --model).
    image: Option<PathBuf>,
    /// Boundary model manifest (`tool = "grains"`).
    #[arg(long, conflicts_with = "boundaries", requires = "image")]
    model: Option<PathBuf>,
    /// Analyse this boundary mask instead of running a model.
    #[arg(long, conflicts_with = "image")]
    boundaries: Option<PathBuf>,
    /// Which pixels of the --boundaries mask are boundaries.
    #[arg(long, value_enum, default_value = "black")]
    boundaries_are: BoundaryColour,
    /// Calibration, micrometres per image pixel (a model's manifest gives its training scale).
    #[arg(long)]
    um_per_px: Option<f64>,
    /// A reference boundary mask (same colours as --boundaries-are) to compare the histogram with.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Write the grain map, coloured by grain number (PNG).
    #[arg(long)]
    map: Option<PathBuf>,
    /// Write the histogram of grain numbers (PNG; with --reference, both).
    #[arg(long)]
    histogram: Option<PathBuf>,
    #[command(flatten)]
    tuning: Tuning,
    /// Which model file of the manifest to run.
    #[arg(long, value_enum, default_value = "int8")]
    precision: PrecisionArg,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Analysis settings that override the manifest's (or the defaults for masks).
#[derive(Args, Clone, Copy)]
pub struct Tuning {
    /// Boundary probability threshold of the model map.
    #[arg(long)]
    threshold: Option<f32>,
    /// Regions smaller than this (µm²) are not grains.
    #[arg(long)]
    min_grain_um2: Option<f64>,
    /// Close boundary gaps up to this (µm) in the model map; masks are taken as drawn.
    #[arg(long)]
    bridge_gap_um: Option<f64>,
    /// Average each model tile's map over this many flips and quarter turns (1, 2, 4 or 8)
    /// instead of the manifest's `symmetries`.
    #[arg(long, value_parser = super::parse_symmetries)]
    symmetries: Option<usize>,
}

/// `ferroscope eval grains`.
#[derive(Args)]
pub struct EvalGrainsArgs {
    /// Boundary model manifest.
    #[arg(long)]
    model: PathBuf,
    /// Dataset root holding images/ and masks/ (grains 255, boundaries 0).
    #[arg(long)]
    data: PathBuf,
    /// Evaluate only the images named in this file (file names in images/, one per line).
    #[arg(long)]
    list: Option<PathBuf>,
    /// Calibration, micrometres per image pixel (default: the manifest's).
    #[arg(long)]
    um_per_px: Option<f64>,
    /// Write the pooled histogram (model vs masks) as a PNG.
    #[arg(long)]
    histogram: Option<PathBuf>,
    #[command(flatten)]
    tuning: Tuning,
    /// Which model file of the manifest to run.
    #[arg(long, value_enum, default_value = "int8")]
    precision: PrecisionArg,
    /// Print one JSON object (per-image rows under `images`).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    heldout: super::heldout::HeldoutArgs,
}

fn mask_boundary(px: &[u8], colour: BoundaryColour) -> Vec<bool> {
    match colour {
        BoundaryColour::White => px.iter().map(|&v| v >= 128).collect(),
        BoundaryColour::Black => px.iter().map(|&v| v < 128).collect(),
    }
}

fn histogram_json(h: &[u32; G_BINS]) -> serde_json::Value {
    let lo = h.iter().position(|&c| c > 0);
    let hi = h.iter().rposition(|&c| c > 0);
    match (lo, hi) {
        (Some(lo), Some(hi)) => json!((lo..=hi)
            .map(|k| json!({"g": bin_g(k), "grains": h[k]}))
            .collect::<Vec<_>>()),
        _ => json!([]),
    }
}

fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}

/// The report as JSON (the keys `grains` prints).
pub fn report_json(r: &GrainReport) -> serde_json::Value {
    json!({
        "width": r.width, "height": r.height, "um_per_px": r.um_per_px,
        "grain_count": r.grains.len(), "whole_grains": r.whole, "edge_grains": r.edge,
        "jeffries_count": r.jeffries_count, "area_mm2": r.area_mm2,
        "grains_per_mm2": r.grains_per_mm2, "mean_area_um2": r.mean_area_um2,
        "gost_g": finite(r.gost_g), "astm_g_planimetric": finite(r.astm_g_planimetric),
        "mean_intercept_um": finite(r.mean_intercept_um), "astm_g_intercept": finite(r.astm_g_intercept),
        "intercept_lines": r.intercept.iter().map(|d| json!({
            "angle_deg": d.angle_deg, "lines": d.lines, "length_um": d.length_px * r.um_per_px, "crossings": d.crossings,
        })).collect::<Vec<_>>(),
        "mean_grain_g": finite(r.mean_grain_g()),
        "histogram": histogram_json(&r.histogram),
        "bridges": r.bridges,
        "grains": r.grains.iter().map(|g| json!({
            "area_um2": g.area_um2, "g": g.g, "edge": g.edge, "centroid": [g.cx, g.cy],
        })).collect::<Vec<_>>(),
    })
}

/// Correlation, chi-square, intersection (and the seed's min/max ratio) of two count
/// histograms, each normalised to sum 1; `reference` is the first (H1).
pub fn compare(reference: &[u32; G_BINS], measured: &[u32; G_BINS]) -> serde_json::Value {
    let (mut a, mut b) = ([0.0; G_BINS], [0.0; G_BINS]);
    standards::normalise(reference, &mut a);
    standards::normalise(measured, &mut b);
    json!({
        "histogram_correlation": standards::correlation(&a, &b),
        "chi_square": standards::chi_square(&a, &b),
        "intersection": standards::intersection(&a, &b),
        "intersection_ratio": standards::intersection_ratio(&a, &b),
    })
}

fn print_report(name: &str, r: &GrainReport) {
    println!(
        "{name}: {} grains ({} whole, {} cut by the edge) on {:.4} mm² at {} µm/px",
        r.grains.len(),
        r.whole,
        r.edge,
        r.area_mm2,
        r.um_per_px
    );
    println!(
        "  planimetric: {:.1} grains/mm², mean area {:.0} µm²  →  GOST 5639-82 G = {:.2}, ASTM E112 G = {:.2}",
        r.grains_per_mm2, r.mean_area_um2, r.gost_g, r.astm_g_planimetric
    );
    println!(
        "  intercept:   mean intercept {:.1} µm over {} crossings  →  ASTM E112 G = {:.2}",
        r.mean_intercept_um,
        r.intercept.iter().map(|d| d.crossings).sum::<u32>(),
        r.astm_g_intercept
    );
    let bins: Vec<String> = (0..G_BINS)
        .filter(|&k| r.histogram[k] > 0)
        .map(|k| format!("G{}: {}", bin_g(k), r.histogram[k]))
        .collect();
    println!("  whole grains by GOST number: {}", bins.join(", "));
}

/// `ferroscope grains`.
pub fn grains(a: GrainsArgs) -> Result<ExitCode> {
    let (report, labels, gray, reference) = if let Some(mask) = &a.boundaries {
        let Some(um) = a.um_per_px else {
            bail!("--boundaries needs --um-per-px (micrometres per pixel of the mask)");
        };
        let (w, h, px) = read_gray(mask)?;
        let mut params = AnalysisParams::for_scale(um);
        if let Some(m) = a.tuning.min_grain_um2 {
            params.min_grain_px = ((m / (um * um)).round() as usize).max(1);
        }
        if let Some(g) = a.tuning.bridge_gap_um {
            params.bridge_gap_px = (g / um).round() as usize;
        }
        let mut an = GrainAnalyzer::new();
        let r = an
            .analyse(&mask_boundary(&px, a.boundaries_are), w, h, &params)
            .map_err(|e| anyhow::anyhow!("{}: {e}", mask.display()))?;
        let reference = reference_histogram(a.reference.as_deref(), a.boundaries_are, (w, h), &params)?;
        let gray = px.iter().map(|&v| if v >= 128 { 200 } else { 60 }).collect();
        (r, an.labels().to_vec(), gray, reference)
    } else {
        let (Some(model), Some(image)) = (&a.model, &a.image) else {
            bail!("give --model M IMAGE, or --boundaries MASK.png");
        };
        let mut gm = GrainModel::load(model, Precision::from(a.precision))?;
        if let Some(n) = a.tuning.symmetries {
            gm.set_symmetries(n)?;
        }
        let um = a.um_per_px.unwrap_or(gm.section().um_per_px);
        let (w, h, px) = read_gray(image)?;
        let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{}: {e:?}", image.display()))?;
        let t0 = StdInstant::now();
        let out = gm.boundary_map(&frame)?;
        let params = tuned(gm.section().params(um), &a.tuning, um);
        let level = a.tuning.threshold.unwrap_or(gm.section().pixel_threshold);
        let r = gm
            .analyse_map(level, &params)
            .with_context(|| image.display().to_string())?
            .clone();
        if !a.json {
            println!(
                "{} tiles, {:.1} ms in the model, {:.1} ms in all",
                out.tiles,
                out.inference_us as f64 / 1000.0,
                t0.elapsed().as_secs_f64() * 1000.0
            );
        }
        let mut ref_params = AnalysisParams::for_scale(um);
        ref_params.min_grain_px = params.min_grain_px;
        let reference = reference_histogram(a.reference.as_deref(), a.boundaries_are, (w, h), &ref_params)?;
        (r, gm.analyzer().labels().to_vec(), px, reference)
    };
    let name = a
        .image
        .as_ref()
        .or(a.boundaries.as_ref())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if let Some(p) = &a.map {
        write_grain_map(p, &report, &labels, &gray)?;
    }
    if let Some(p) = &a.histogram {
        let title = format!("{name}: GOST G = {:.2}, {} whole grains", report.gost_g, report.whole);
        write_histogram(p, &report.histogram, reference.as_ref().map(|r| &r.histogram), &title)?;
    }
    if a.json {
        let mut j = report_json(&report);
        j["image"] = json!(name);
        if let Some(r) = &reference {
            j["reference"] = json!({
                "gost_g": finite(r.gost_g), "astm_g_intercept": finite(r.astm_g_intercept),
                "histogram": histogram_json(&r.histogram),
                "comparison": compare(&r.histogram, &report.histogram),
                "g_abs_error": (report.gost_g - r.gost_g).abs(),
            });
        }
        println!("{j}");
    } else {
        print_report(&name, &report);
        if let Some(r) = &reference {
            let c = compare(&r.histogram, &report.histogram);
            println!(
                "  against the reference (G = {:.2}): correlation {:.3}, chi-square {:.3}, intersection {:.3}, |ΔG| {:.2}",
                r.gost_g,
                c["histogram_correlation"].as_f64().unwrap_or(0.0),
                c["chi_square"].as_f64().unwrap_or(0.0),
                c["intersection"].as_f64().unwrap_or(0.0),
                (report.gost_g - r.gost_g).abs()
            );
        }
        if let Some(p) = &a.map {
            println!("  grain map → {}", p.display());
        }
        if let Some(p) = &a.histogram {
            println!("  histogram → {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tuned(mut p: AnalysisParams, t: &Tuning, um: f64) -> AnalysisParams {
    if let Some(m) = t.min_grain_um2 {
        p.min_grain_px = ((m / (um * um)).round() as usize).max(1);
    }
    if let Some(g) = t.bridge_gap_um {
        p.bridge_gap_px = (g / um).round() as usize;
    }
    p
}

fn reference_histogram(
    path: Option<&Path>,
    colour: BoundaryColour,
    size: (usize, usize),
    params: &AnalysisParams,
) -> Result<Option<GrainReport>> {
    let Some(path) = path else { return Ok(None) };
    let (w, h, px) = read_gray(path)?;
    if (w, h) != size {
        bail!(
            "{}: reference is {w}x{h}, the image is {}x{}",
            path.display(),
            size.0,
            size.1
        );
    }
    let r = GrainAnalyzer::new()
        .analyse(&mask_boundary(&px, colour), w, h, params)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Some(r))
}

/// `ferroscope eval grains`.
pub fn eval(a: EvalGrainsArgs) -> Result<ExitCode> {
    let precision = Precision::from(a.precision);
    let pending = a.heldout.prepare(&a.model, precision, a.list.as_deref())?;
    let mut gm = GrainModel::load(&a.model, precision)?;
    if let Some(n) = a.tuning.symmetries {
        gm.set_symmetries(n)?;
    }
    let um = a.um_per_px.unwrap_or(gm.section().um_per_px);
    let params = tuned(gm.section().params(um), &a.tuning, um);
    let mut ref_params = AnalysisParams::for_scale(um);
    ref_params.min_grain_px = params.min_grain_px;
    let level = a.tuning.threshold.unwrap_or(gm.section().pixel_threshold);
    let items = gather_masked(&a.data, a.list.as_deref())?;
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let (mut pooled_m, mut pooled_r) = ([0u32; G_BINS], [0u32; G_BINS]);
    let (mut tp, mut fp, mut fneg) = (0u64, 0u64, 0u64);
    let (mut dg, mut dg_int, mut corr, mut chi, mut inter) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ms, mut ms_tile) = (Vec::new(), Vec::new());
    let mut ref_an = GrainAnalyzer::new();
    for (img, mask) in &items {
        let name = img.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let mut run = || -> Result<serde_json::Value> {
            let (w, h, px) = read_gray(img)?;
            let (mw, mh, mpx) = read_gray(mask)?;
            if (mw, mh) != (w, h) {
                bail!("{}: mask is {mw}x{mh}, its image is {w}x{h}", mask.display());
            }
            let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{}: {e:?}", img.display()))?;
            let t0 = StdInstant::now();
            let out = gm.boundary_map(&frame)?;
            gm.analyse_map(level, &params)?;
            let elapsed = t0.elapsed().as_secs_f64() * 1000.0;
            let r = gm.report();
            let truth = mask_boundary(&mpx, BoundaryColour::Black);
            let rr = ref_an
                .analyse(&truth, w, h, &ref_params)
                .map_err(|e| anyhow::anyhow!("{}: {e}", mask.display()))?;
            let (mut t, mut f, mut n) = (0u64, 0u64, 0u64);
            for (&p, &m) in gm.prob().iter().zip(&truth) {
                match (p >= level, m) {
                    (true, true) => t += 1,
                    (true, false) => f += 1,
                    (false, true) => n += 1,
                    _ => {}
                }
            }
            tp += t;
            fp += f;
            fneg += n;
            for k in 0..G_BINS {
                pooled_m[k] += r.histogram[k];
                pooled_r[k] += rr.histogram[k];
            }
            let c = compare(&rr.histogram, &r.histogram);
            dg.push((r.gost_g - rr.gost_g).abs());
            dg_int.push((r.astm_g_intercept - rr.astm_g_intercept).abs());
            corr.push(c["histogram_correlation"].as_f64().unwrap_or(0.0));
            chi.push(c["chi_square"].as_f64().unwrap_or(0.0));
            inter.push(c["intersection"].as_f64().unwrap_or(0.0));
            ms.push(elapsed);
            ms_tile.push(out.inference_us as f64 / 1000.0 / out.tiles.max(1) as f64);
            Ok(json!({
                "image": name,
                "gost_g": r.gost_g, "gost_g_mask": rr.gost_g, "g_abs_error": (r.gost_g - rr.gost_g).abs(),
                "astm_g_intercept": finite(r.astm_g_intercept), "astm_g_intercept_mask": finite(rr.astm_g_intercept),
                "grains": r.grains.len(), "grains_mask": rr.grains.len(),
                "histogram_correlation": c["histogram_correlation"], "chi_square": c["chi_square"],
                "intersection": c["intersection"],
                "boundary_dice": 2.0 * t as f64 / (2 * t + f + n).max(1) as f64,
                "bridges": r.bridges, "ms": elapsed,
            }))
        };
        match run() {
            Ok(j) => rows.push(j),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if rows.is_empty() {
        bail!(
            "{}: no image could be evaluated: {}",
            a.data.display(),
            errors.join("; ")
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let pooled = compare(&pooled_r, &pooled_m);
    let m = gm.manifest();
    let j = json!({
        "model": m.model.name, "version": m.model.version, "precision_kind": precision.name(),
        "images": rows.len(), "um_per_px": um, "pixel_threshold": level, "symmetries": gm.symmetries(),
        "min_grain_px": params.min_grain_px, "bridge_gap_px": params.bridge_gap_px,
        "histogram_correlation": pooled["histogram_correlation"],
        "chi_square": pooled["chi_square"],
        "intersection": pooled["intersection"],
        "intersection_ratio": pooled["intersection_ratio"],
        "per_image_mean": {
            "histogram_correlation": mean(&corr), "chi_square": mean(&chi), "intersection": mean(&inter),
        },
        "g_mean_abs_error": mean(&dg),
        "g_intercept_mean_abs_error": mean(&dg_int),
        "boundary_dice": 2.0 * tp as f64 / (2 * tp + fp + fneg).max(1) as f64,
        "histogram_model": histogram_json(&pooled_m),
        "histogram_mask": histogram_json(&pooled_r),
        "ms_per_image_median": median(&mut ms.clone()),
        "ms_per_tile_median": median(&mut ms_tile.clone()),
        "errors": errors,
        "per_image": rows,
    });
    if let Some(p) = &a.histogram {
        let title = format!(
            "{} ({}) on {} images: correlation {:.3}",
            m.model.name,
            precision.name(),
            j["images"],
            j["histogram_correlation"].as_f64().unwrap_or(0.0)
        );
        write_histogram(p, &pooled_m, Some(&pooled_r), &title)?;
    }
    if let Some(p) = pending {
        p.append(&j)?;
    }
    if a.json {
        println!("{j}");
    } else {
        println!(
            "model {} {} ({}) on {} images at {} µm/px, boundary ≥ {}",
            m.model.name,
            m.model.version,
            precision.name(),
            rows.len(),
            um,
            level
        );
        println!(
            "pooled histogram of grain numbers vs the masks: correlation {:.4}   chi-square {:.4}   intersection {:.4}",
            j["histogram_correlation"].as_f64().unwrap_or(0.0),
            j["chi_square"].as_f64().unwrap_or(0.0),
            j["intersection"].as_f64().unwrap_or(0.0)
        );
        println!(
            "per image (mean):                  correlation {:.4}   chi-square {:.4}   intersection {:.4}",
            mean(&corr),
            mean(&chi),
            mean(&inter)
        );
        println!(
            "|ΔG| planimetric (GOST) {:.3}   |ΔG| intercept (ASTM) {:.3}   boundary Dice {:.4}",
            mean(&dg),
            mean(&dg_int),
            j["boundary_dice"].as_f64().unwrap_or(0.0)
        );
        println!(
            "{:.1} ms per image, {:.1} ms per tile in the model (medians, one thread)",
            j["ms_per_image_median"].as_f64().unwrap_or(0.0),
            j["ms_per_tile_median"].as_f64().unwrap_or(0.0)
        );
        if let Some(p) = &a.histogram {
            println!("histogram → {}", p.display());
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
