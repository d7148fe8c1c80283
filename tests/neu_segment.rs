//! The NEU steel-strip U-Net through the segment tool: `eval segment` over class folders with
//! masks, `infer` with regions in millimetres, the station of
//! `boards/host-sim-neu-segment.toml` deciding by region rules, and the map averaged over the
//! image's flips and quarter turns (`symmetries`).

use std::path::{Path, PathBuf};
use std::process::Command;

use ferroscope::alloc_count::{CountingAlloc, Scope, Snapshot};
use ferroscope::core::decision::Outcome;
use ferroscope::core::frame::GrayFrame;
use ferroscope::model::manifest::{Manifest, Precision};
use ferroscope::sim::replay::decode_gray;
use ferroscope::station::{self, config::StationConfig};
use ferroscope::tools::tiled::{symmetry_source, TiledMap};

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

/// The map of `px` (`n × n`) through the shipped int8 U-Net averaged over `symmetries`.
fn map_of(tiled: &mut TiledMap, px: &[u8], n: usize) -> Vec<f32> {
    tiled.run(&GrayFrame::new(px, n, n, n).unwrap()).unwrap();
    tiled.prob().to_vec()
}

/// `px` (`n × n`) turned by the square's symmetry `k` (the layout `symmetry_source` defines).
fn turned<T: Copy>(px: &[T], n: usize, k: usize) -> Vec<T> {
    (0..n * n)
        .map(|i| {
            let (a, b) = symmetry_source(k, n, i / n, i % n);
            px[a * n + b]
        })
        .collect()
}

#[test]
fn a_map_averaged_over_the_eight_symmetries_turns_with_the_image_and_allocates_nothing_per_frame() {
    let manifest = Manifest::load(&root().join("models/neu_segment.toml")).unwrap();
    let mut tiled = TiledMap::from_manifest(manifest, Precision::Int8).unwrap();
    assert_eq!(tiled.symmetries(), 1, "the shipped manifest runs each tile once");
    let (w, h, px) = read_sample("tests/data/neu_samples/scratches");
    assert_eq!((w, h), (200, 200));
    let n = w;
    // The 8 symmetries' pixels are all different images (the sample is not symmetric).
    for k in 1..8 {
        assert_ne!(turned(&px, n, k), px, "symmetry {k}");
    }
    // One run: the map of the image turned a quarter is not the map turned (the network
    // alone is not invariant, so the check below could fail).
    let plain = map_of(&mut tiled, &px, n);
    let quarter = map_of(&mut tiled, &turned(&px, n, 5), n);
    let diff1 = max_diff(&turned(&plain, n, 5), &quarter);
    assert!(diff1 > 1e-3, "one run: {diff1}");
    tiled.set_symmetries(8).unwrap();
    let base = map_of(&mut tiled, &px, n);
    for k in 1..8 {
        let m = map_of(&mut tiled, &turned(&px, n, k), n);
        let d = max_diff(&turned(&base, n, k), &m);
        assert!(d < 1e-5, "symmetry {k}: the averaged map differs by {d}");
    }
    // Averaging changes the map (it is not the single run's).
    assert!(max_diff(&base, &plain) > 1e-3);
    // Eight runs a tile, still nothing allocated per frame in our code or tract's.
    let before = Snapshot::take();
    for _ in 0..3 {
        map_of_in_place(&mut tiled, &px, n);
    }
    let after = Snapshot::take();
    assert_eq!(after.since(&before, Scope::Ours), 0, "ours");
    assert_eq!(after.since(&before, Scope::Tract), 0, "tract's");
    assert!(tiled.set_symmetries(3).is_err());
}

fn map_of_in_place(tiled: &mut TiledMap, px: &[u8], n: usize) {
    let out = tiled.run(&GrayFrame::new(px, n, n, n).unwrap()).unwrap();
    assert_eq!((out.tiles, out.runs), (1, 8));
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn read_sample(dir: &str) -> (usize, usize, Vec<u8>) {
    let mut files: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    decode_gray(&std::fs::read(&files[0]).unwrap()).unwrap()
}
