//! The anomaly tool with the shipped KolektorSDD model (trained on good parts only): scores
//! and regions on held-out frames, the crack filter option, the CLI as a user runs it, the
//! station over a replay of commutator frames, the frame path's allocations, and clear errors.
//!
//! Samples (`tests/data/kolektor_samples`): `091` and `180` are defective (every defective
//! image is held out from the anomaly model's training), `002` is a held-out good frame,
//! `014` a good frame of the training set.
//!
//! The shipped threshold (calibrated on good validation frames) rejects both defective samples
//! and accepts both good ones. Tests that exercise regions, rejects and ejector pulses run the
//! same model files under a copy of the manifest with an operator-set operating point
//! ([`OPERATOR_THRESHOLD`]), as an integrator would tune it, so that they do not move with a
//! recalibration.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferroscope::alloc_count::{CountingAlloc, Scope, Snapshot};
use ferroscope::core::decision::Outcome;
use ferroscope::core::frame::GrayFrame;
use ferroscope::model::manifest::{Manifest, Precision};
use ferroscope::sim::replay::decode_gray;
use ferroscope::station::{self, config::StationConfig};
use ferroscope::tools::anomaly::AnomalyDetector;
use ferroscope::tools::segment::{DecideBy, SegmentRules};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const MODEL: &str = "models/kolektor_anomaly.toml";
const DEFECTIVE: [&str; 2] = ["091", "180"];
const GOOD: [&str; 2] = ["002", "014"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ferroscope(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn sample(stem: &str) -> PathBuf {
    root().join(format!("tests/data/kolektor_samples/images/{stem}.jpg"))
}

fn frame(stem: &str) -> (usize, usize, Vec<u8>) {
    decode_gray(&std::fs::read(sample(stem)).unwrap()).unwrap()
}

/// An operating point between the good (0.57 and 0.83) and the defective (0.99 and above) samples.
const OPERATOR_THRESHOLD: f32 = 0.95;

fn detector(rules: SegmentRules) -> AnomalyDetector {
    AnomalyDetector::load(&root().join(MODEL), Precision::Int8, rules).unwrap()
}

/// The shipped model files under a copy of the manifest whose thresholds are `level`
/// (a temporary folder named by `tag`); returns the manifest's path.
fn manifest_at(level: f32, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferroscope-anomaly-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["kolektor_anomaly.onnx", "kolektor_anomaly.f32.onnx"] {
        std::fs::copy(root().join("models").join(f), dir.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(root().join(MODEL)).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("decision_threshold") {
                format!("decision_threshold = {level}")
            } else if l.starts_with("pixel_threshold") {
                format!("pixel_threshold = {level}")
            } else {
                l.to_string()
            }
        })
        .collect();
    let path = dir.join("kolektor_anomaly.toml");
    std::fs::write(&path, text.join("\n")).unwrap();
    path
}

#[test]
fn defective_frames_score_above_good_ones_and_the_map_has_the_frame_size() {
    let rules = SegmentRules {
        mm_per_px: Some(0.05),
        decide_by: DecideBy::Head,
        ..Default::default()
    };
    let mut det = detector(rules);
    let threshold = det.manifest().tiled.as_ref().unwrap().decision_threshold;
    let mut score = |stem: &str| {
        let (w, h, px) = frame(stem);
        let f = GrayFrame::new(&px, w, h, w).unwrap();
        let r = det.detect(&f).unwrap().clone();
        let (map, mw, mh) = det.map();
        assert_eq!(
            (mw, mh, map.len()),
            (w, h, w * h),
            "{stem}: the map is not at frame resolution"
        );
        assert!(map.iter().all(|v| (0.0..=1.0).contains(v)), "{stem}: map outside 0..1");
        assert_eq!(r.tiles, 3, "{stem}: a ~500x1250 frame is three 512 tiles");
        // The score is the blurred map's maximum: never above the raw maximum.
        assert!(
            r.score <= r.map_max + 1e-6,
            "{stem}: score {} above map max {}",
            r.score,
            r.map_max
        );
        assert_eq!(r.reject, r.score >= threshold);
        if r.reject {
            // A rejected frame has a measured region (pixel threshold = score threshold).
            let reg = r
                .regions
                .first()
                .unwrap_or_else(|| panic!("{stem}: rejected without a region"));
            assert!((reg.area_mm2 - reg.px.area_px as f32 * 0.0025).abs() < 1e-3);
        }
        (r.score, r.reject)
    };
    let bad: Vec<_> = DEFECTIVE.iter().map(|s| score(s)).collect();
    let good: Vec<_> = GOOD.iter().map(|s| score(s)).collect();
    let lowest_bad = bad.iter().map(|b| b.0).fold(f32::MAX, f32::min);
    let highest_good = good.iter().map(|g| g.0).fold(f32::MIN, f32::max);
    assert!(
        lowest_bad > highest_good,
        "defective {bad:?} do not all score above good {good:?}"
    );
    assert!(good.iter().all(|g| !g.1), "a good frame is rejected: {good:?}");
    assert!(bad.iter().all(|b| b.1), "a defective frame passes: {bad:?}");
}

#[test]
fn the_region_on_a_defective_frame_covers_the_drawn_defect() {
    let path = manifest_at(OPERATOR_THRESHOLD, "region");
    let mut det = AnomalyDetector::load(
        &path,
        Precision::Int8,
        SegmentRules {
            mm_per_px: Some(0.05),
            ..Default::default()
        },
    )
    .unwrap();
    let stem = "091";
    let (w, h, px) = frame(stem);
    let f = GrayFrame::new(&px, w, h, w).unwrap();
    let r = det.detect(&f).unwrap().clone();
    let (_, _, mask) =
        decode_gray(&std::fs::read(root().join(format!("tests/data/kolektor_samples/masks/{stem}.png"))).unwrap())
            .unwrap();
    // The map's hottest pixel lies within 16 px of the hand-drawn defect.
    let (map, _, _) = det.map();
    let (hot, _) = map
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
    let (hx, hy) = ((hot % w) as i64, (hot / w) as i64);
    let near = (-16..=16i64).any(|dy| {
        (-16..=16i64).any(|dx| {
            let (x, y) = (hx + dx, hy + dy);
            x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h && mask[y as usize * w + x as usize] > 127
        })
    });
    assert!(
        near,
        "{stem}: the hottest map pixel ({hx}, {hy}) is far from the defect"
    );
    assert!(r.reject, "{stem}: score {}", r.score);
    // Its largest region overlaps the drawn defect and is measured in mm².
    let reg = r
        .regions
        .first()
        .unwrap_or_else(|| panic!("{stem}: rejected without a region"));
    let b = reg.px;
    let inside = (b.y0..=b.y1)
        .flat_map(|y| (b.x0..=b.x1).map(move |x| (x as usize, y as usize)))
        .filter(|&(x, y)| x < w && y < h && mask[y * w + x] > 127)
        .count();
    assert!(inside > 0, "{stem}: the largest region's box misses the defect");
    assert!((reg.area_mm2 - reg.px.area_px as f32 * 0.0025).abs() < 1e-3);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn infer_prints_the_score_and_regions_and_writes_a_heat_map() {
    let out_png = std::env::temp_dir().join(format!("ferroscope-heat-{}.png", std::process::id()));
    let img = sample("180");
    let operator = manifest_at(OPERATOR_THRESHOLD, "infer");
    let out = ferroscope(&[
        "infer",
        "--model",
        operator.to_str().unwrap(),
        img.to_str().unwrap(),
        "--overlay",
        out_png.to_str().unwrap(),
        "--mm-per-px",
        "0.05",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["decision"], "reject", "{j}");
    let regions = j["regions"].as_array().unwrap();
    assert!(!regions.is_empty());
    assert!(regions[0]["area_mm2"].as_f64().unwrap() > 0.0);
    let ov = image::open(&out_png).unwrap().to_rgb8();
    let (w, h, _) = frame("180");
    assert_eq!((ov.width() as usize, ov.height() as usize), (w, h));
    // Hot pixels (warm colours) and cold ones (blue-tinted) are both there: a heat map.
    assert!(ov.pixels().any(|p| p[0] > p[2].saturating_add(80)), "no hot pixel");
    assert!(ov.pixels().any(|p| p[2] > p[0].saturating_add(3)), "no cold tint");
    let _ = std::fs::remove_file(&out_png);

    let _ = std::fs::remove_dir_all(operator.parent().unwrap());
    let out = ferroscope(&["infer", "--model", MODEL, sample("002").to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("accept") && text.contains("anomaly score"), "{text}");
}

#[test]
fn eval_anomaly_reports_the_promised_keys_on_the_samples() {
    let out = ferroscope(&[
        "eval",
        "anomaly",
        "--model",
        MODEL,
        "--data",
        "tests/data/kolektor_samples",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["image_auroc", "pixel_auroc", "ap", "fp", "fn", "images"] {
        assert!(j.get(key).is_some(), "missing {key}: {j}");
    }
    assert_eq!(j["images"], 4);
    // The two defective samples rank above the two good ones; at the calibrated threshold no
    // good sample is rejected.
    assert_eq!(j["image_auroc"].as_f64(), Some(1.0), "{j}");
    assert_eq!(j["ap"], j["image_ap"]);
    assert_eq!(j["fp"].as_u64(), Some(0), "{j}");
    assert!(j["fn"].as_u64().unwrap() <= 2, "{j}");
    let px = j["pixel_auroc"].as_f64().unwrap();
    assert!(px > 0.5 && px <= 1.0, "pixel AUROC {px}");
}

#[test]
fn eval_anomaly_refuses_a_segment_model_by_name() {
    let out = ferroscope(&[
        "eval",
        "anomaly",
        "--model",
        "models/kolektor_segment.toml",
        "--data",
        "tests/data/kolektor_samples",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kolektor_segment.toml") && err.contains("model.tool"),
        "{err}"
    );
}

#[test]
fn infer_names_an_unreadable_image_and_goes_on() {
    let bad = std::env::temp_dir().join(format!("ferroscope-notanimage-{}.jpg", std::process::id()));
    std::fs::write(&bad, b"not an image").unwrap();
    let out = ferroscope(&[
        "infer",
        "--model",
        MODEL,
        bad.to_str().unwrap(),
        sample("002").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ferroscope-notanimage"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("002.jpg"));
    let _ = std::fs::remove_file(&bad);
}

#[test]
fn an_anomaly_manifest_without_a_blur_or_its_section_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("ferroscope-anoman-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["kolektor_anomaly.onnx", "kolektor_anomaly.f32.onnx"] {
        std::fs::copy(root().join("models").join(f), dir.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(root().join(MODEL)).unwrap();
    let path = dir.join("kolektor_anomaly.toml");

    let cut = text.find("[anomaly]").unwrap();
    let end = text[cut..].find("\n[quantisation]").map(|e| cut + e).unwrap();
    std::fs::write(&path, format!("{}{}", &text[..cut], &text[end..])).unwrap();
    let err = format!("{:#}", Manifest::load(&path).expect_err("refused"));
    assert!(
        err.contains("kolektor_anomaly.toml") && err.contains("[anomaly]"),
        "{err}"
    );

    let line = text.lines().find(|l| l.starts_with("score_blur_px")).unwrap();
    std::fs::write(&path, text.replace(line, "score_blur_px = 0")).unwrap();
    let err = format!(
        "{:#}",
        AnomalyDetector::load(&path, Precision::Int8, SegmentRules::default())
            .err()
            .expect("refused")
    );
    assert!(
        err.contains("kolektor_anomaly.toml") && err.contains("score_blur_px"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_station_config_with_anomaly_rules_for_another_tool_is_refused() {
    let text = std::fs::read_to_string(root().join("boards/host-sim-anomaly.toml")).unwrap();
    let path = root().join("boards/host-sim-anomaly.toml");
    let wrong = text.replace("kind = \"anomaly\"", "kind = \"segment\"");
    let err = format!("{:#}", StationConfig::parse(&wrong, &path).expect_err("refused"));
    assert!(
        err.contains("host-sim-anomaly.toml") && err.contains("[anomaly]"),
        "{err}"
    );
    let wrong = text.replace("decide_by = \"head\"", "decide_by = \"score\"");
    let err = format!("{:#}", StationConfig::parse(&wrong, &path).expect_err("refused"));
    assert!(err.contains("anomaly.decide_by"), "{err}");
}

/// The hand-drawn option (`models/kolektor_crack_filter.toml`, the anomaly model up to 2.0.0)
/// runs in the same tool: its shipped threshold rejects both defective samples and accepts
/// both good ones.
#[test]
fn the_crack_filter_option_runs_in_the_anomaly_tool() {
    let path = root().join("models/kolektor_crack_filter.toml");
    let mut det = AnomalyDetector::load(&path, Precision::Int8, SegmentRules::default()).unwrap();
    assert_eq!(det.manifest().model.name, "kolektor_crack_filter");
    let samples = DEFECTIVE
        .iter()
        .map(|s| (*s, true))
        .chain(GOOD.iter().map(|s| (*s, false)));
    for (stem, defective) in samples {
        let (w, h, px) = frame(stem);
        let r = det.detect(&GrayFrame::new(&px, w, h, w).unwrap()).unwrap();
        assert_eq!(r.reject, defective, "{stem}: score {}", r.score);
    }
}

#[test]
fn the_anomaly_frame_path_allocates_nothing_in_our_code_after_warm_up() {
    let path = manifest_at(OPERATOR_THRESHOLD, "alloc");
    let mut det = AnomalyDetector::load(
        &path,
        Precision::Int8,
        SegmentRules {
            mm_per_px: Some(0.05),
            ..Default::default()
        },
    )
    .unwrap();
    let frames: Vec<_> = ["091", "002"].iter().map(|s| frame(s)).collect();
    // One frame size, as from one camera: crop both to the smaller.
    let (w, h) = frames
        .iter()
        .fold((usize::MAX, usize::MAX), |a, f| (a.0.min(f.0), a.1.min(f.1)));
    let frames: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| (0..h).flat_map(|y| f.2[y * f.0..y * f.0 + w].to_vec()).collect())
        .collect();
    det.detect(&GrayFrame::new(&frames[0], w, h, w).unwrap()).unwrap();
    let before = Snapshot::take_thread();
    let mut regions = 0;
    for px in frames.iter().chain(frames.iter()) {
        let r = det.detect(&GrayFrame::new(px, w, h, w).unwrap()).unwrap();
        regions += r.regions.len();
    }
    let after = Snapshot::take_thread();
    assert_eq!(
        after.since(&before, Scope::Ours),
        0,
        "our code allocated on the anomaly frame path"
    );
    assert!(
        after.tract_requests_since(&before) > 0,
        "tract's requests are counted in their own scope (system calls or pool hits)"
    );
    assert!(regions > 0, "the defective frame has regions");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn the_anomaly_station_rejects_the_cracked_parts_and_allocates_nothing_per_frame() {
    let path = root().join("boards/host-sim-anomaly.toml");
    let mut cfg = StationConfig::load(Path::new(&path)).unwrap();
    cfg.camera.rate_fps = 4.0;
    cfg.camera.loops = 1;
    let operator = manifest_at(OPERATOR_THRESHOLD, "station");
    cfg.tool.manifest = operator.clone();
    let mut seen = Vec::with_capacity(8);
    let s = station::run(&cfg, |item| {
        let defective = DEFECTIVE.iter().any(|d| item.source.contains(d));
        seen.push((defective, item.decision.outcome));
    })
    .unwrap();
    assert_eq!(s.counters.inspected, 4);
    assert_eq!(s.counters.failsafe, 0, "{:?}", s.faults);
    for (defective, outcome) in &seen {
        let want = if *defective { Outcome::Reject } else { Outcome::Accept };
        assert_eq!(*outcome, want);
    }
    assert_eq!(s.counters.rejected, 2);
    assert_eq!(s.pulses() as u64, 2);
    assert_eq!(
        s.allocations_ours_after_warmup, 0,
        "the anomaly frame path allocated in our code"
    );
    let _ = std::fs::remove_dir_all(operator.parent().unwrap());
}
