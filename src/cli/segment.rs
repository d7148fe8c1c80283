//! `infer` and `eval` for the map tools (segment, anomaly): regions, overlays, image and pixel
//! metrics. Both tools tile and stitch the same way; they differ in the image score (decision
//! head or blurred anomaly map) and in the overlay (red defect map or heat map).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant as StdInstant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use ferroscope::core::frame::GrayFrame;
use ferroscope::eval::{auroc, average_precision};
use ferroscope::model::engine::RunError;
use ferroscope::model::manifest::{Manifest, Precision};
use ferroscope::sim::replay::list_images;
use ferroscope::tools::anomaly::{heat_rgb, AnomalyDetector};
use ferroscope::tools::segment::{SegmentResult, SegmentRules, Segmenter};

use super::eval::MapEvalArgs;
use super::{median, read_gray};

/// Bins of the pixel-score histograms (pixel AUROC over millions of pixels).
const PIXEL_BINS: usize = 4096;

/// Write `frame` in gray with the map tinted red where it reaches `level` (opacity by value)
/// and each region's bounding box in yellow.
pub fn write_overlay(
    path: &Path,
    gray: &[u8],
    w: usize,
    h: usize,
    map: &[f32],
    level: f32,
    boxes: &[(u32, u32, u32, u32)],
) -> Result<()> {
    write_blended(path, gray, w, h, map, boxes, |v| {
        (v >= level).then(|| ([255, 40, 20], 0.35 + 0.5 * v.clamp(0.0, 1.0)))
    })
}

/// Write `frame` in gray under the anomaly map as a heat map (more opaque where hotter;
/// pixels at or above `level` fully coloured) and each region's bounding box in yellow.
pub fn write_heatmap(
    path: &Path,
    gray: &[u8],
    w: usize,
    h: usize,
    map: &[f32],
    level: f32,
    boxes: &[(u32, u32, u32, u32)],
) -> Result<()> {
    write_blended(path, gray, w, h, map, boxes, |v| {
        let a = if v >= level {
            0.85
        } else {
            0.15 + 0.6 * (v / level.max(1e-6)).clamp(0.0, 1.0)
        };
        Some((heat_rgb(v), a))
    })
}

/// The gray frame blended per pixel with `tint(map value)` (a colour and its opacity; `None`
/// leaves the pixel gray), the region boxes drawn over it, saved as a PNG.
fn write_blended(
    path: &Path,
    gray: &[u8],
    w: usize,
    h: usize,
    map: &[f32],
    boxes: &[(u32, u32, u32, u32)],
    tint: impl Fn(f32) -> Option<([u8; 3], f32)>,
) -> Result<()> {
    let mut img = image::RgbImage::new(w as u32, h as u32);
    for (i, p) in img.pixels_mut().enumerate() {
        let g = gray[i] as f32;
        *p = match tint(map[i]) {
            Some((c, a)) => image::Rgb(c.map(|c| (g * (1.0 - a) + c as f32 * a) as u8)),
            None => image::Rgb([gray[i]; 3]),
        };
    }
    draw_boxes(&mut img, w, h, boxes);
    img.save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("{}: cannot write overlay", path.display()))
}

fn draw_boxes(img: &mut image::RgbImage, w: usize, h: usize, boxes: &[(u32, u32, u32, u32)]) {
    let yellow = image::Rgb([255u8, 220, 0]);
    for &(x0, y0, x1, y1) in boxes {
        let (x0, y0) = (x0.saturating_sub(2), y0.saturating_sub(2));
        let (x1, y1) = ((x1 + 1).min(w as u32 - 1), (y1 + 1).min(h as u32 - 1));
        for x in x0..=x1 {
            img.put_pixel(x, y0, yellow);
            img.put_pixel(x, y1, yellow);
        }
        for y in y0..=y1 {
            img.put_pixel(x0, y, yellow);
            img.put_pixel(x1, y, yellow);
        }
    }
}

/// A loaded map tool, by the manifest's `model.tool`.
enum MapTool {
    Segment(Segmenter),
    Anomaly(AnomalyDetector),
}

impl MapTool {
    /// Load the manifest at `path`; `want` (`segment` or `anomaly`) when the command needs one.
    /// `symmetries` replaces the manifest's.
    fn load(
        path: &Path,
        precision: Precision,
        rules: SegmentRules,
        want: Option<&str>,
        symmetries: Option<usize>,
    ) -> Result<MapTool> {
        let mut manifest = Manifest::load(path)?;
        if let (Some(n), Some(t)) = (symmetries, manifest.tiled.as_mut()) {
            t.symmetries = n;
        }
        if let Some(want) = want {
            if manifest.model.tool != want {
                bail!(
                    "{}: field `model.tool` is \"{}\"; `eval {want}` needs a \"{want}\" model",
                    path.display(),
                    manifest.model.tool
                );
            }
        }
        Ok(match manifest.model.tool.as_str() {
            "anomaly" => MapTool::Anomaly(AnomalyDetector::from_manifest(manifest, precision, rules)?),
            _ => MapTool::Segment(Segmenter::from_manifest(manifest, precision, rules)?),
        })
    }

    fn is_anomaly(&self) -> bool {
        matches!(self, MapTool::Anomaly(_))
    }

    fn manifest(&self) -> &Manifest {
        match self {
            MapTool::Segment(s) => s.manifest(),
            MapTool::Anomaly(a) => a.manifest(),
        }
    }

    fn run(&mut self, frame: &GrayFrame<'_>) -> Result<&SegmentResult, RunError> {
        match self {
            MapTool::Segment(s) => s.segment(frame),
            MapTool::Anomaly(a) => a.detect(frame),
        }
    }

    fn map(&self) -> (&[f32], usize, usize) {
        match self {
            MapTool::Segment(s) => s.map(),
            MapTool::Anomaly(a) => a.map(),
        }
    }
}

fn overlay_path(overlay: &Path, image: &Path, many: bool) -> PathBuf {
    if many || overlay.is_dir() {
        let stem = image.file_stem().and_then(|s| s.to_str()).unwrap_or("frame");
        overlay.join(format!("{stem}.png"))
    } else {
        overlay.to_path_buf()
    }
}

fn region_json(r: &SegmentResult, calibrated: bool) -> Vec<serde_json::Value> {
    r.regions
        .iter()
        .map(|m| {
            let p = &m.px;
            let mm = |v: f32| if calibrated { json!(v) } else { serde_json::Value::Null };
            json!({
                "area_px": p.area_px, "length_px": p.length_px, "width_px": p.width_px,
                "area_mm2": mm(m.area_mm2), "length_mm": mm(m.length_mm), "width_mm": mm(m.width_mm),
                "bbox": [p.x0, p.y0, p.x1 - p.x0, p.y1 - p.y0], "centroid": [p.cx, p.cy],
                "angle_deg": p.angle_deg, "mean_score": p.mean_score, "max_score": p.max_score,
            })
        })
        .collect()
}

/// `infer` with a segment or anomaly manifest.
pub fn infer(
    model: &Path,
    precision: Precision,
    json: bool,
    images: &[PathBuf],
    overlay: Option<&Path>,
    rules: SegmentRules,
) -> Result<ExitCode> {
    let mut seg = MapTool::load(model, precision, rules, None, None)?;
    let section = seg.manifest().tiled.clone().expect("tiled manifest");
    let what = if seg.is_anomaly() { "anomaly score" } else { "score" };
    let calibrated = rules.mm_per_px.is_some();
    if let Some(o) = overlay {
        if images.len() > 1 && !o.is_dir() {
            bail!(
                "--overlay {}: with several images, give an existing folder",
                o.display()
            );
        }
    }
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
        let t0 = StdInstant::now();
        let r = seg
            .run(&frame)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .clone();
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let decision = if r.reject { "reject" } else { "accept" };
        if json {
            println!(
                "{}",
                json!({
                    "image": path.display().to_string(), "width": w, "height": h, "tiles": r.tiles,
                    "score": r.score, "map_max": r.map_max, "head_reject": r.head_reject, "rule": r.rule,
                    "decision": decision, "regions_total": r.summary.total, "defect_pixels": r.summary.pixels,
                    "mm_per_px": rules.mm_per_px, "regions": region_json(&r, calibrated), "ms": ms,
                })
            );
        } else {
            println!(
                "{}: {} — {what} {:.4} (threshold {:.4}){}, {} region(s), {} tiles, {:.1} ms",
                path.display(),
                decision,
                r.score,
                section.decision_threshold,
                r.rule.map(|k| format!(", {k} rule fired")).unwrap_or_default(),
                r.summary.total,
                r.tiles,
                ms
            );
            if !calibrated && !r.regions.is_empty() {
                println!("    (uncalibrated: pass --mm-per-px for millimetres)");
            }
            for (k, m) in r.regions.iter().enumerate() {
                let p = &m.px;
                let size = if calibrated {
                    format!(
                        "length {:.2} mm, width {:.2} mm, area {:.3} mm²",
                        m.length_mm, m.width_mm, m.area_mm2
                    )
                } else {
                    format!(
                        "length {:.0} px, width {:.0} px, area {} px",
                        p.length_px, p.width_px, p.area_px
                    )
                };
                println!(
                    "    #{:<2} {size}; box x {} y {} {}x{}; score mean {:.2} max {:.2}",
                    k + 1,
                    p.x0,
                    p.y0,
                    p.x1 - p.x0,
                    p.y1 - p.y0,
                    p.mean_score,
                    p.max_score
                );
            }
        }
        if let Some(o) = overlay {
            let out = overlay_path(o, path, images.len() > 1);
            let boxes: Vec<_> = r.regions.iter().map(|m| (m.px.x0, m.px.y0, m.px.x1, m.px.y1)).collect();
            let (map, _, _) = seg.map();
            if seg.is_anomaly() {
                write_heatmap(&out, &px, w, h, map, section.pixel_threshold, &boxes)?;
            } else {
                write_overlay(&out, &px, w, h, map, section.pixel_threshold, &boxes)?;
            }
            if !json {
                println!("    overlay → {}", out.display());
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Images of `DIR/images` (or those named in `list`, one file name per line) with their masks
/// `DIR/masks/<stem>.png`.
pub fn gather_masked(data: &Path, list: Option<&Path>) -> Result<Vec<(PathBuf, PathBuf)>> {
    let images_dir = data.join("images");
    let masks_dir = data.join("masks");
    let images: Vec<PathBuf> = match list {
        Some(list) => {
            let text =
                std::fs::read_to_string(list).with_context(|| format!("{}: cannot read list", list.display()))?;
            let mut v = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let p = images_dir.join(line);
                if !p.is_file() {
                    bail!("{}:{}: {} does not exist", list.display(), n + 1, p.display());
                }
                v.push(p);
            }
            v
        }
        None => list_images(&images_dir)?,
    };
    if images.is_empty() {
        bail!("{}: no images", images_dir.display());
    }
    let mut out = Vec::with_capacity(images.len());
    for p in images {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let m = masks_dir.join(format!("{stem}.png"));
        if !m.is_file() {
            bail!(
                "{}: no mask {} (0 = background, 255 = defect; all-zero for good parts)",
                p.display(),
                m.display()
            );
        }
        out.push((p, m));
    }
    Ok(out)
}

/// One image of a class folder and its mask: `(class, image, mask)`.
pub type ClassMasked = (String, PathBuf, PathBuf);

/// Images of class folders `DATA/<class>/*` (or those named in `list`, `class/name` per line)
/// with masks of the same path under `MASKS` (`MASKS/<class>/<name>`, or `<stem>.png` there).
/// Class folders with no mask folder are skipped (their names come back as the second value);
/// an image of a masked class without its mask is an error naming both paths. Each item is
/// `(class, image, mask)`.
pub fn gather_class_masked(data: &Path, masks: &Path, list: Option<&Path>) -> Result<(Vec<ClassMasked>, Vec<String>)> {
    if !masks.is_dir() {
        bail!("{}: --masks is not a folder", masks.display());
    }
    let mut classes: Vec<String> = std::fs::read_dir(data)
        .with_context(|| format!("{}: cannot read --data", data.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    classes.sort();
    let (masked, skipped): (Vec<String>, Vec<String>) = classes.into_iter().partition(|c| masks.join(c).is_dir());
    if masked.is_empty() {
        bail!(
            "{}: none of the class folders of {} has a mask folder",
            masks.display(),
            data.display()
        );
    }
    let mask_of = |class: &str, img: &Path| -> Result<PathBuf> {
        let name = img.file_name().unwrap_or_default();
        let same = masks.join(class).join(name);
        if same.is_file() {
            return Ok(same);
        }
        let stem = img.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let png = masks.join(class).join(format!("{stem}.png"));
        if png.is_file() {
            return Ok(png);
        }
        bail!(
            "{}: no mask {} (0 = background, 255 = defect)",
            img.display(),
            same.display()
        )
    };
    let mut out = Vec::new();
    match list {
        Some(list) => {
            let text =
                std::fs::read_to_string(list).with_context(|| format!("{}: cannot read list", list.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((class, _)) = line.split_once('/') else {
                    bail!("{}:{}: `{line}` is not `class/name`", list.display(), n + 1);
                };
                if !masked.iter().any(|c| c == class) {
                    continue;
                }
                let img = data.join(line);
                if !img.is_file() {
                    bail!("{}:{}: {} does not exist", list.display(), n + 1, img.display());
                }
                let m = mask_of(class, &img)?;
                out.push((class.to_string(), img, m));
            }
        }
        None => {
            for class in &masked {
                for img in list_images(&data.join(class))? {
                    let m = mask_of(class, &img)?;
                    out.push((class.clone(), img, m));
                }
            }
        }
    }
    if out.is_empty() {
        bail!("{}: no images of the masked classes {masked:?}", data.display());
    }
    Ok((out, skipped))
}

/// Pixel counts of one image against its mask at the metrics' level.
#[derive(Clone, Copy, Default)]
struct PixelCounts {
    tp: u64,
    fp: u64,
    fneg: u64,
    /// Σ |p − mask/255| over the image's pixels.
    abs_err: f64,
    pixels: u64,
}

impl PixelCounts {
    fn dice(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fneg;
        if d == 0 {
            0.0
        } else {
            2.0 * self.tp as f64 / d as f64
        }
    }
}

/// Pixel metrics over a set of images: pooled Dice and IoU and the mean Dice per image over the
/// defective ones, and the mean absolute error of the probability map over all.
fn pixel_summary<'a>(images: impl Iterator<Item = (&'a PixelCounts, bool)>) -> serde_json::Value {
    let (mut tp, mut fp, mut fneg, mut abs, mut px, mut dice_sum, mut n_def, mut n) =
        (0u64, 0u64, 0u64, 0.0f64, 0u64, 0.0f64, 0usize, 0usize);
    for (c, defective) in images {
        n += 1;
        abs += c.abs_err;
        px += c.pixels;
        if defective {
            tp += c.tp;
            fp += c.fp;
            fneg += c.fneg;
            dice_sum += c.dice();
            n_def += 1;
        }
    }
    let (tpf, fpf, fnf) = (tp as f64, fp as f64, fneg as f64);
    let denom = tpf + fpf + fnf;
    json!({
        "images": n,
        "dice": if denom > 0.0 { 2.0 * tpf / (2.0 * tpf + fpf + fnf) } else { 0.0 },
        "iou": if denom > 0.0 { tpf / denom } else { 0.0 },
        "dice_mean_per_image": if n_def > 0 { dice_sum / n_def as f64 } else { 0.0 },
        "mae": if px > 0 { abs / px as f64 } else { 0.0 },
    })
}

/// Image- and pixel-level metrics of a map tool over masked images.
#[derive(Default)]
pub struct MapMetrics {
    names: Vec<String>,
    classes: Vec<String>,
    scores: Vec<f64>,
    labels: Vec<bool>,
    rejects: Vec<bool>,
    pos_hist: Vec<u64>,
    neg_hist: Vec<u64>,
    pixels: Vec<PixelCounts>,
    ms: Vec<f64>,
    level: f32,
}

impl MapMetrics {
    /// Metrics with map pixels counted as defect at or above `level`.
    pub fn new(level: f32) -> Self {
        MapMetrics {
            level,
            pos_hist: vec![0; PIXEL_BINS],
            neg_hist: vec![0; PIXEL_BINS],
            ..Default::default()
        }
    }

    /// Add one image of `class` (empty: no classes): its score, verdict, map and mask
    /// (255 = defect).
    #[allow(clippy::too_many_arguments)]
    pub fn add(&mut self, name: String, class: &str, score: f32, reject: bool, map: &[f32], mask: &[u8], ms: f64) {
        let level = self.level;
        let defective = mask.iter().any(|&m| m > 127);
        self.names.push(name);
        self.classes.push(class.to_string());
        self.scores.push(score as f64);
        self.labels.push(defective);
        self.rejects.push(reject);
        self.ms.push(ms);
        let mut c = PixelCounts {
            pixels: map.len() as u64,
            ..Default::default()
        };
        for (&v, &m) in map.iter().zip(mask) {
            let p = v.clamp(0.0, 1.0);
            let bin = ((p * (PIXEL_BINS - 1) as f32) as usize).min(PIXEL_BINS - 1);
            let truth = m > 127;
            c.abs_err += (p - m as f32 / 255.0).abs() as f64;
            if truth {
                self.pos_hist[bin] += 1;
            } else {
                self.neg_hist[bin] += 1;
            }
            match (v >= level, truth) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fneg += 1,
                _ => {}
            }
        }
        self.pixels.push(c);
    }

    fn pixel_auroc(&self) -> f64 {
        let p: u64 = self.pos_hist.iter().sum();
        let n: u64 = self.neg_hist.iter().sum();
        if p == 0 || n == 0 {
            return 0.5;
        }
        // P(score_pos > score_neg) + half the ties, bin by bin.
        let mut neg_below = 0u64;
        let mut acc = 0.0f64;
        for b in 0..PIXEL_BINS {
            acc += self.pos_hist[b] as f64 * (neg_below as f64 + 0.5 * self.neg_hist[b] as f64);
            neg_below += self.neg_hist[b];
        }
        acc / (p as f64 * n as f64)
    }

    /// The metrics as JSON (keys shared by `eval segment` and `eval anomaly`); with classes,
    /// `per_class` holds each class's pixel metrics.
    pub fn summary_json(&mut self) -> serde_json::Value {
        let fp = self.labels.iter().zip(&self.rejects).filter(|(&l, &r)| !l && r).count();
        let fneg = self.labels.iter().zip(&self.rejects).filter(|(&l, &r)| l && !r).count();
        let missed: Vec<&String> = self
            .names
            .iter()
            .zip(self.labels.iter().zip(&self.rejects))
            .filter(|(_, (&l, &r))| l && !r)
            .map(|(n, _)| n)
            .collect();
        let false_rejects: Vec<&String> = self
            .names
            .iter()
            .zip(self.labels.iter().zip(&self.rejects))
            .filter(|(_, (&l, &r))| !l && r)
            .map(|(n, _)| n)
            .collect();
        let px = pixel_summary(self.pixels.iter().zip(self.labels.iter().copied()));
        let mut j = json!({
            "images": self.labels.len(),
            "defective": self.labels.iter().filter(|&&l| l).count(),
            "image_ap": average_precision(&self.scores, &self.labels),
            "image_auroc": auroc(&self.scores, &self.labels),
            "pixel_auroc": self.pixel_auroc(),
            "fp": fp, "fn": fneg,
            "false_rejects": false_rejects, "misses": missed,
            "dice": px["dice"], "iou": px["iou"], "dice_mean_per_image": px["dice_mean_per_image"],
            "mae": px["mae"],
            "ms_per_image_median": median(&mut self.ms.clone()),
        });
        let mut classes: Vec<&String> = self.classes.iter().filter(|c| !c.is_empty()).collect();
        classes.sort();
        classes.dedup();
        if !classes.is_empty() {
            let mut per = serde_json::Map::new();
            for class in classes {
                let of = self
                    .pixels
                    .iter()
                    .zip(self.labels.iter().copied())
                    .zip(&self.classes)
                    .filter(|(_, c)| *c == class)
                    .map(|(v, _)| v);
                per.insert(class.clone(), pixel_summary(of));
            }
            j["per_class"] = serde_json::Value::Object(per);
        }
        j
    }
}

fn read_mask(path: &Path, w: usize, h: usize) -> Result<Vec<u8>> {
    let (mw, mh, m) = read_gray(path)?;
    if (mw, mh) != (w, h) {
        bail!("{}: mask is {mw}x{mh}, its image is {w}x{h}", path.display());
    }
    Ok(m)
}

fn progress(n: usize, json: bool) -> Option<indicatif::ProgressBar> {
    (std::io::stderr().is_terminal() && !json).then(|| indicatif::ProgressBar::new(n as u64))
}

/// `eval segment` / `eval anomaly` (`tool`): the manifest's `model.tool` must match.
pub fn eval(tool: &str, a: &MapEvalArgs) -> Result<ExitCode> {
    let (model, data, masks, list, json) = (&a.model, &a.data, a.masks.as_deref(), a.list.as_deref(), a.json);
    let precision: Precision = a.precision.into();
    let pending = a.heldout.prepare(model, precision, list)?;
    let mut seg = MapTool::load(model, precision, SegmentRules::default(), Some(tool), a.symmetries)?;
    let section = seg.manifest().tiled.clone().expect("tiled manifest");
    let (items, skipped) = match masks {
        Some(masks) => gather_class_masked(data, masks, list)?,
        None => (
            gather_masked(data, list)?
                .into_iter()
                .map(|(i, m)| (String::new(), i, m))
                .collect(),
            Vec::new(),
        ),
    };
    let mut metrics = MapMetrics::new(section.pixel_threshold);
    let mut errors = Vec::new();
    let bar = progress(items.len(), json);
    for (class, img, mask) in &items {
        let (w, h, px) = match read_gray(img) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        let mask = match read_mask(mask, w, h) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{}: {e:?}", img.display()))?;
        let t0 = StdInstant::now();
        let r = seg.run(&frame).map_err(|e| anyhow::anyhow!("{}: {e}", img.display()))?;
        let (score, reject) = (r.score, r.reject);
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (map, _, _) = seg.map();
        let file = img.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let name = if class.is_empty() {
            file.to_string()
        } else {
            format!("{class}/{file}")
        };
        metrics.add(name, class, score, reject, map, &mask, ms);
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut j = metrics.summary_json();
    j["ap"] = j["image_ap"].clone();
    let m = seg.manifest();
    j["model"] = json!(m.model.name);
    j["version"] = json!(m.model.version);
    j["precision_kind"] = json!(precision.name());
    j["decision_threshold"] = json!(section.decision_threshold);
    j["pixel_threshold"] = json!(section.pixel_threshold);
    j["symmetries"] = json!(section.symmetries);
    j["errors"] = json!(errors);
    if masks.is_some() {
        j["skipped_classes"] = json!(skipped);
    }
    if let Some(p) = pending {
        p.append(&j)?;
    }
    if json {
        println!("{j}");
    } else {
        println!(
            "model {} {} ({}) on {} images, {} defective",
            m.model.name,
            m.model.version,
            precision.name(),
            j["images"],
            j["defective"]
        );
        println!(
            "image AP {:.2} %   image AUROC {:.2} %   pixel AUROC {:.2} %",
            j["image_ap"].as_f64().unwrap_or(0.0) * 100.0,
            j["image_auroc"].as_f64().unwrap_or(0.0) * 100.0,
            j["pixel_auroc"].as_f64().unwrap_or(0.0) * 100.0
        );
        println!(
            "at the operating point (score ≥ {:.4}): {} false rejects {}, {} misses {}",
            section.decision_threshold, j["fp"], j["false_rejects"], j["fn"], j["misses"]
        );
        println!(
            "pixels of defective images (map ≥ {}): Dice {:.3}   IoU {:.3}   (mean Dice per image {:.3})",
            section.pixel_threshold,
            j["dice"].as_f64().unwrap_or(0.0),
            j["iou"].as_f64().unwrap_or(0.0),
            j["dice_mean_per_image"].as_f64().unwrap_or(0.0)
        );
        println!(
            "probability map: mean absolute error {:.4}",
            j["mae"].as_f64().unwrap_or(0.0)
        );
        if let Some(per) = j["per_class"].as_object() {
            for (class, c) in per {
                println!(
                    "  {class:<16} {:>4} images   mean Dice per image {:.3}   Dice {:.3}   IoU {:.3}   MAE {:.4}",
                    c["images"],
                    c["dice_mean_per_image"].as_f64().unwrap_or(0.0),
                    c["dice"].as_f64().unwrap_or(0.0),
                    c["iou"].as_f64().unwrap_or(0.0),
                    c["mae"].as_f64().unwrap_or(0.0)
                );
            }
        }
        if !skipped.is_empty() {
            println!("classes without masks, skipped: {}", skipped.join(", "));
        }
        println!(
            "{:.1} ms per image (median: tiles + model + stitching + regions, one thread)",
            j["ms_per_image_median"].as_f64().unwrap_or(0.0)
        );
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
