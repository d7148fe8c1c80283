//! The segment tool with the shipped KolektorSDD model: the CLI as a user runs it, the station
//! over a replay of commutator frames, and manifest errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferroscope::alloc_count::CountingAlloc;
use ferroscope::core::decision::Outcome;
use ferroscope::core::frame::GrayFrame;
use ferroscope::model::manifest::{Manifest, Precision};
use ferroscope::sim::replay::decode_gray;
use ferroscope::station::{self, config::StationConfig};
use ferroscope::tools::segment::{DecideBy, SegmentRules, Segmenter};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

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

const DEFECTIVE: [&str; 2] = ["091", "180"];
const GOOD: [&str; 2] = ["002", "014"];

fn sample(stem: &str) -> PathBuf {
    root().join(format!("tests/data/kolektor_samples/images/{stem}.jpg"))
}

fn mask_pixels(stem: &str) -> (usize, usize, Vec<u8>) {
    let b = std::fs::read(root().join(format!("tests/data/kolektor_samples/masks/{stem}.png"))).unwrap();
    decode_gray(&b).unwrap()
}

#[test]
fn the_model_rejects_the_defective_samples_and_accepts_the_good_ones_with_regions_on_the_crack() {
    let rules = SegmentRules {
        mm_per_px: Some(0.05),
        decide_by: DecideBy::Head,
        ..Default::default()
    };
    let mut seg = Segmenter::load(&root().join("models/kolektor_segment.toml"), Precision::Int8, rules).unwrap();
    for stem in DEFECTIVE.iter().chain(GOOD.iter()) {
        let b = std::fs::read(sample(stem)).unwrap();
        let (w, h, px) = decode_gray(&b).unwrap();
        let frame = GrayFrame::new(&px, w, h, w).unwrap();
        let r = seg.segment(&frame).unwrap().clone();
        let defective = DEFECTIVE.contains(stem);
        assert_eq!(r.reject, defective, "{stem}: score {}", r.score);
        assert_eq!(r.tiles, 3, "{stem}: a ~500x1250 frame is three 512 tiles");
        if defective {
            // The largest region overlaps the hand-drawn defect.
            let (mw, mh, mask) = mask_pixels(stem);
            assert_eq!((mw, mh), (w, h));
            let reg = r.regions.first().unwrap_or_else(|| panic!("{stem}: no region"));
            let b = reg.px;
            let inside = (b.y0..b.y1)
                .flat_map(|y| (b.x0..b.x1).map(move |x| (x as usize, y as usize)))
                .filter(|&(x, y)| mask[y * w + x] > 127)
                .count();
            assert!(inside > 0, "{stem}: the largest region's box misses the defect");
            assert!(reg.area_mm2 > 0.0 && reg.length_mm >= reg.width_mm);
            assert!((reg.area_mm2 - reg.px.area_px as f32 * 0.0025).abs() < 1e-3);
        }
    }
}

#[test]
fn infer_prints_measured_regions_and_writes_an_overlay() {
    let out_png = std::env::temp_dir().join(format!("ferroscope-overlay-{}.png", std::process::id()));
    let img = sample("091");
    let out = ferroscope(&[
        "infer",
        "--model",
        "models/kolektor_segment.toml",
        img.to_str().unwrap(),
        "--overlay",
        out_png.to_str().unwrap(),
        "--mm-per-px",
        "0.05",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["decision"], "reject");
    let regions = j["regions"].as_array().unwrap();
    assert!(!regions.is_empty());
    for key in ["area_mm2", "length_mm", "width_mm", "bbox", "mean_score"] {
        assert!(regions[0].get(key).is_some(), "region lacks {key}: {}", regions[0]);
    }
    // The overlay has the frame's size and is not the plain gray frame: defects are tinted.
    let ov = image::open(&out_png).unwrap().to_rgb8();
    let (w, h, _) = decode_gray(&std::fs::read(&img).unwrap()).unwrap();
    assert_eq!((ov.width() as usize, ov.height() as usize), (w, h));
    assert!(ov.pixels().any(|p| p[0] > p[2].saturating_add(60)), "no tinted pixel");
    let _ = std::fs::remove_file(&out_png);

    // Plain text names the regions with millimetres.
    let out = ferroscope(&[
        "infer",
        "--model",
        "models/kolektor_segment.toml",
        img.to_str().unwrap(),
        "--mm-per-px",
        "0.05",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("reject") && text.contains("mm"), "{text}");
}

#[test]
fn eval_segment_reports_the_promised_keys_on_the_samples() {
    let out = ferroscope(&[
        "eval",
        "segment",
        "--model",
        "models/kolektor_segment.toml",
        "--data",
        "tests/data/kolektor_samples",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["image_ap", "image_auroc", "fp", "fn", "dice", "iou", "images"] {
        assert!(j.get(key).is_some(), "missing {key}");
    }
    assert_eq!(j["images"], 4);
    assert_eq!((j["fp"].as_u64(), j["fn"].as_u64()), (Some(0), Some(0)));
    assert_eq!(j["image_auroc"].as_f64(), Some(1.0));
    let dice = j["dice"].as_f64().unwrap();
    let iou = j["iou"].as_f64().unwrap();
    assert!(dice > 0.0 && dice < 1.0 && iou <= dice, "dice {dice} iou {iou}");
}

#[test]
fn eval_segment_names_an_image_without_a_mask() {
    let dir = std::env::temp_dir().join(format!("ferroscope-nomask-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    std::fs::copy(sample("002"), dir.join("images/002.jpg")).unwrap();
    let out = ferroscope(&[
        "eval",
        "segment",
        "--model",
        "models/kolektor_segment.toml",
        "--data",
        dir.to_str().unwrap(),
    ]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("002"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_segment_manifest_without_its_section_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("ferroscope-segman-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(root().join("models/kolektor_segment.toml")).unwrap();
    let cut = text.find("[segment]").unwrap();
    let end = text[cut..].find("\n[quantisation]").map(|e| cut + e).unwrap();
    let broken = format!("{}{}", &text[..cut], &text[end..]);
    for f in ["kolektor_segment.onnx", "kolektor_segment.f32.onnx"] {
        std::fs::copy(root().join("models").join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("kolektor_segment.toml");
    std::fs::write(&path, broken).unwrap();
    let err = format!("{:#}", Manifest::load(&path).expect_err("refused"));
    assert!(
        err.contains("kolektor_segment.toml") && err.contains("segment"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_segment_station_rejects_the_cracked_parts_and_allocates_nothing_per_frame() {
    let path = root().join("boards/host-sim-segment.toml");
    let mut cfg = StationConfig::load(Path::new(&path)).unwrap();
    cfg.camera.rate_fps = 4.0;
    cfg.camera.loops = 2;
    let mut seen = Vec::with_capacity(32);
    let s = station::run(&cfg, |item| {
        let defective = DEFECTIVE.iter().any(|d| item.source.contains(d));
        seen.push((defective, item.decision.outcome));
    })
    .unwrap();
    assert_eq!(s.counters.inspected, 8);
    assert_eq!(s.counters.failsafe, 0, "{:?}", s.faults);
    for (defective, outcome) in &seen {
        let want = if *defective { Outcome::Reject } else { Outcome::Accept };
        assert_eq!(*outcome, want);
    }
    assert_eq!(s.counters.rejected, 4);
    assert_eq!(s.pulses() as u64, 4);
    assert_eq!(
        s.allocations_ours_after_warmup, 0,
        "the segment frame path allocated in our code"
    );
}

#[test]
fn a_heldout_scoring_leaves_one_line_naming_the_file_that_ran() {
    let dir = std::env::temp_dir().join(format!("ferroscope-heldout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("list.txt");
    std::fs::write(&list, "091.jpg\n002.jpg\n").unwrap();
    let log = dir.join("heldout_log.jsonl");
    let args = |changed: &str| {
        vec![
            "eval".to_string(),
            "segment".into(),
            "--model".into(),
            "models/kolektor_segment.toml".into(),
            "--data".into(),
            "tests/data/kolektor_samples".into(),
            "--list".into(),
            list.to_str().unwrap().into(),
            "--json".into(),
            "--heldout-log".into(),
            log.to_str().unwrap().into(),
            "--changed".into(),
            changed.into(),
        ]
    };
    for changed in ["first", "second"] {
        let a = args(changed);
        let out = ferroscope(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    let manifest = Manifest::load(&root().join("models/kolektor_segment.toml")).unwrap();
    for (l, changed) in lines.iter().zip(["first", "second"]) {
        assert_eq!(l["model"], "kolektor_segment");
        assert_eq!(l["model_sha256"].as_str(), Some(manifest.model.sha256.as_str()));
        assert_eq!(l["changed"], changed);
        assert_eq!(l["list"], "list.txt");
        assert_eq!(l["metrics"]["images"], 2);
        assert!(l["date"].as_str().unwrap().ends_with('Z'));
    }
    // A whole folder is not a held-out scoring: refused, and the log is left as it was.
    let mut a = args("third");
    a.drain(6..8);
    let out = ferroscope(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--list"));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), text);
    let _ = std::fs::remove_dir_all(&dir);
}
