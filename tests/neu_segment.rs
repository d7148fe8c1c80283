//! The NEU steel-strip U-Net through the segment tool: `eval segment` over class folders with
//! masks, `infer` with regions in millimetres, and the station of
//! `boards/host-sim-neu-segment.toml` deciding by region rules.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferroscope::alloc_count::CountingAlloc;
use ferroscope::core::decision::Outcome;
use ferroscope::station::{self, config::StationConfig};

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

const MASKED: [&str; 3] = ["inclusion", "patches", "scratches"];

#[test]
fn eval_over_class_folders_scores_the_masked_classes_and_skips_the_others() {
    let out = ferroscope(&[
        "eval",
        "segment",
        "--model",
        "models/neu_segment.toml",
        "--data",
        "tests/data/neu_samples",
        "--masks",
        "tests/data/neu_mask_samples",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["images"], 18);
    assert_eq!(j["defective"], 18);
    assert_eq!(
        j["skipped_classes"],
        serde_json::json!(["crazing", "pitted_surface", "rolled-in_scale"])
    );
    let per = j["per_class"].as_object().unwrap();
    assert_eq!(per.keys().map(String::as_str).collect::<Vec<_>>(), MASKED);
    for (class, c) in per {
        assert_eq!(c["images"], 6, "{class}");
        let d = c["dice_mean_per_image"].as_f64().unwrap();
        let mae = c["mae"].as_f64().unwrap();
        assert!(d > 0.5, "{class}: mean Dice per image {d}");
        assert!(mae > 0.0 && mae < 0.15, "{class}: MAE {mae}");
    }
    let (dice, iou) = (j["dice"].as_f64().unwrap(), j["iou"].as_f64().unwrap());
    assert!(iou < dice && dice < 1.0, "dice {dice} iou {iou}");
    // Pooled IoU and Dice describe the same counts: IoU = Dice / (2 − Dice).
    assert!((iou - dice / (2.0 - dice)).abs() < 1e-9);
}

#[test]
fn eval_over_class_folders_names_an_image_without_its_mask() {
    let dir = std::env::temp_dir().join(format!("ferroscope-neu-nomask-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data/scratches")).unwrap();
    std::fs::create_dir_all(dir.join("masks/scratches")).unwrap();
    std::fs::copy(
        root().join("tests/data/neu_samples/scratches/Sc_1.png"),
        dir.join("data/scratches/Sc_1.png"),
    )
    .unwrap();
    let out = ferroscope(&[
        "eval",
        "segment",
        "--model",
        "models/neu_segment.toml",
        "--data",
        dir.join("data").to_str().unwrap(),
        "--masks",
        dir.join("masks").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Sc_1.png") && err.contains("no mask"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn infer_measures_a_scratch_in_millimetres() {
    let img = root().join("tests/data/neu_samples/scratches/Sc_10.png");
    let out = ferroscope(&[
        "infer",
        "--model",
        "models/neu_segment.toml",
        img.to_str().unwrap(),
        "--mm-per-px",
        "0.1",
        "--reject-if-length-mm-over",
        "4",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let regions = j["regions"].as_array().unwrap();
    assert!(!regions.is_empty(), "{j}");
    let longest = regions
        .iter()
        .map(|r| r["length_mm"].as_f64().unwrap())
        .fold(0.0, f64::max);
    // The scratch crosses most of the 20 mm field of view.
    assert!(longest > 4.0, "longest region {longest} mm: {j}");
    assert_eq!(j["decision"], "reject");
}

#[test]
fn the_neu_segment_station_rejects_by_region_rules_and_allocates_nothing_per_frame() {
    let path = root().join("boards/host-sim-neu-segment.toml");
    let mut cfg = StationConfig::load(Path::new(&path)).unwrap();
    cfg.camera.rate_fps = 20.0;
    let mut seen = Vec::with_capacity(36);
    let s = station::run(&cfg, |item| {
        // NEU names files by class: In_, Pa_, Sc_ are the masked classes.
        let masked = ["In_", "Pa_", "Sc_"].iter().any(|p| item.source.starts_with(p));
        seen.push((masked, item.decision.outcome));
    })
    .unwrap();
    assert_eq!(s.counters.inspected, 36);
    assert_eq!(s.counters.failsafe, 0, "{:?}", s.faults);
    let masked_rejected = seen.iter().filter(|(m, o)| *m && *o == Outcome::Reject).count();
    assert!(
        masked_rejected >= 15,
        "{masked_rejected} of the 18 masked-class samples rejected"
    );
    assert_eq!(s.pulses() as u64, s.counters.rejected);
    assert_eq!(
        s.allocations_ours_after_warmup, 0,
        "the segment frame path allocated in our code"
    );
}
