//! The same images give the same scores on every architecture: the shipped classify, segment
//! and grains models, int8 and f32, against `tests/golden/arch_scores.json`, which was written
//! on x86_64. The ARM builds run this test under qemu-user (`tests/cross.sh`).
//!
//! - decoded pixels: exact (a digest of every image's gray pixels);
//! - int8 models: within [`INT8_TOLERANCE`] where the CPU runs the integer convolution (the
//!   last bits of an f32 on aarch64 and armv7), [`INT8_F32_PATH_TOLERANCE`] where it does not;
//! - f32 models: within [`F32_TOLERANCE`] (tract's f32 kernels differ per architecture in
//!   the order of their sums).
//!
//! `FERROSCOPE_BLESS=1 cargo test --release --test arch_scores` rewrites the golden file (on
//! x86_64 where the integer path runs: VNNI or AVX2) after an intended change of a model or of
//! the int8 arithmetic.

use std::path::PathBuf;

use ferroscope::core::frame::GrayFrame;
use ferroscope::grains::model::GrainModel;
use ferroscope::model::manifest::Precision;
use ferroscope::sim::replay::decode_gray;
use ferroscope::tools::classify::Classifier;
use ferroscope::tools::segment::{SegmentRules, Segmenter};
use serde_json::{json, Value};

/// Largest allowed |score − golden| for the int8 models where this CPU runs the integer
/// convolution ([`ferroscope::model::qconv::fused_on_this_cpu`]): every kernel computes the same
/// exact sums and requantises them alike, so only the f32 steps after the convolutions differ
/// in their last bits. Measured against the golden file of 2026-12-04: 1.2e-7 on aarch64 (SMLAL
/// and SDOT), 1.5e-7 on armv7 (NEON).
const INT8_TOLERANCE: f64 = 1e-6;

/// The same where the CPU has no integer kernel (x86-64 without AVX2, armv7 without NEON) and
/// the QDQ graph's convolutions run in f32, whose rounding of ties can move an activation by one
/// step: measured 1.1e-4 between the two paths (one NEU image's pitted_surface score; every
/// class and decision unchanged).
const INT8_F32_PATH_TOLERANCE: f64 = 2e-4;

/// Largest allowed |score − golden| for the f32 models.
const F32_TOLERANCE: f64 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden_path() -> PathBuf {
    root().join("tests/golden/arch_scores.json")
}

/// FNV-1a over bytes, as hex.
fn digest(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn load(rel: &str) -> (usize, usize, Vec<u8>) {
    let path = root().join(rel);
    decode_gray(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn images(dir: &str, per_folder: usize) -> Vec<String> {
    let mut out = Vec::new();
    let base = root().join(dir);
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    for f in folders {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&f).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for p in files.into_iter().take(per_folder) {
            out.push(p.strip_prefix(root()).unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

fn map_stats(map: &[f32]) -> Value {
    let sum: f64 = map.iter().map(|&v| v as f64).sum();
    let max = map.iter().fold(0.0f32, |m, &v| m.max(v));
    let bits: Vec<u8> = map.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
    json!({ "mean": sum / map.len() as f64, "max": max, "digest": digest(&bits) })
}

/// Everything this architecture computes, in the golden file's shape.
fn measure() -> Value {
    let mut pixels = serde_json::Map::new();
    let mut out = serde_json::Map::new();
    for precision in [Precision::Int8, Precision::F32] {
        let p = precision.name();
        let mut clf = Classifier::load(&root().join("models/neu_classify.toml"), precision).unwrap();
        let mut classify = serde_json::Map::new();
        for img in images("tests/data/neu_samples", 2) {
            let (w, h, px) = load(&img);
            pixels.insert(img.clone(), json!(digest(&px)));
            let f = GrayFrame::new(&px, w, h, w).unwrap();
            classify.insert(img, json!(clf.classify(&f).unwrap().to_vec()));
        }
        let mut seg = Segmenter::load(
            &root().join("models/kolektor_segment.toml"),
            precision,
            SegmentRules::default(),
        )
        .unwrap();
        let mut segment = serde_json::Map::new();
        // One defective frame: emulation runs this model at about 22 s per frame.
        let img = "tests/data/kolektor_samples/images/091.jpg".to_string();
        let (w, h, px) = load(&img);
        pixels.insert(img.clone(), json!(digest(&px)));
        let f = GrayFrame::new(&px, w, h, w).unwrap();
        seg.prepare(w, h);
        let score = seg.segment(&f).unwrap().score;
        let mut m = map_stats(seg.map().0);
        m["score"] = json!(score);
        segment.insert(img, m);
        let mut grains_model = GrainModel::load(&root().join("models/grains_316l.toml"), precision).unwrap();
        let mut grains = serde_json::Map::new();
        let img = "tests/data/grains_samples/images/RG17_2_2.jpg".to_string();
        let (w, h, px) = load(&img);
        pixels.insert(img.clone(), json!(digest(&px)));
        grains_model
            .boundary_map(&GrayFrame::new(&px, w, h, w).unwrap())
            .unwrap();
        grains.insert(img, map_stats(grains_model.prob()));
        out.insert(
            p.to_string(),
            json!({ "classify": classify, "segment": segment, "grains": grains }),
        );
    }
    out.insert("pixels".into(), Value::Object(pixels));
    Value::Object(out)
}

/// Every number in `got` against `want` at the same path; returns the largest difference and
/// the paths that differ beyond `tol` (strings must match exactly unless `skip_digests`).
fn compare(
    path: &str,
    got: &Value,
    want: &Value,
    tol: f64,
    skip_digests: bool,
    worst: &mut (f64, String),
    bad: &mut Vec<String>,
) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            assert_eq!(
                g.keys().collect::<Vec<_>>(),
                w.keys().collect::<Vec<_>>(),
                "{path}: keys differ from the golden file"
            );
            for (k, gv) in g {
                compare(&format!("{path}/{k}"), gv, &w[k], tol, skip_digests, worst, bad);
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{path}: length differs from the golden file");
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                compare(&format!("{path}[{i}]"), gv, wv, tol, skip_digests, worst, bad);
            }
        }
        (Value::Number(g), Value::Number(w)) => {
            // Every value is an f32: compared as f32, so that a JSON round trip's last f64
            // digit does not count.
            let d = (g.as_f64().unwrap() as f32 - w.as_f64().unwrap() as f32).abs() as f64;
            if d > worst.0 {
                *worst = (d, path.to_string());
            }
            if d > tol {
                bad.push(format!("{path}: {g} vs golden {w}"));
            }
        }
        (Value::String(g), Value::String(w)) => {
            if !skip_digests && g != w {
                bad.push(format!("{path}: {g} vs golden {w}"));
            }
        }
        _ => panic!("{path}: {got} vs golden {want}"),
    }
}

fn golden() -> Value {
    let text = std::fs::read_to_string(golden_path()).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (FERROSCOPE_BLESS=1 on x86_64 writes it)",
            golden_path().display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_same_images_give_the_same_scores_as_on_x86_64() {
    let got = measure();
    if std::env::var_os("FERROSCOPE_BLESS").is_some() {
        assert_eq!(std::env::consts::ARCH, "x86_64", "the golden file is written on x86_64");
        assert!(
            ferroscope::model::qconv::fused_on_this_cpu(),
            "the golden file is written where the integer convolution runs (VNNI or AVX2)"
        );
        std::fs::write(golden_path(), serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        return;
    }
    let want = golden();
    let arch = std::env::consts::ARCH;
    let int8_tolerance = if ferroscope::model::qconv::fused_on_this_cpu() {
        INT8_TOLERANCE
    } else {
        INT8_F32_PATH_TOLERANCE
    };
    let mut failures = Vec::new();
    for (key, tol, skip_digests) in [
        ("pixels", 0.0, false),
        ("int8", int8_tolerance, true),
        ("f32", F32_TOLERANCE, true),
    ] {
        let (mut worst, mut bad) = ((0.0, String::new()), Vec::new());
        compare(key, &got[key], &want[key], tol, skip_digests, &mut worst, &mut bad);
        println!(
            "{arch} {key}: largest difference from x86_64 {:.3e} (allowed {tol:.0e}) at {}",
            worst.0, worst.1
        );
        failures.extend(bad);
    }
    assert!(
        failures.is_empty(),
        "{arch}: {} values differ from x86_64:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_changed_score_or_digest_is_caught() {
    let want = json!({ "classify": { "a.png": [0.5, 0.25] }, "grains": { "b.jpg": { "digest": "00ff" } } });
    let mut got = want.clone();
    got["classify"]["a.png"][1] = json!(0.25 + 1e-6);
    got["grains"]["b.jpg"]["digest"] = json!("00fe");
    let (mut worst, mut bad) = ((0.0, String::new()), Vec::new());
    compare("int8", &got, &want, 0.0, false, &mut worst, &mut bad);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(worst.0 > 0.0);
    assert_eq!(worst.1, "int8/classify/a.png[1]");
    let (mut worst, mut bad) = ((0.0, String::new()), Vec::new());
    compare("f32", &got, &want, 1e-4, true, &mut worst, &mut bad);
    assert!(bad.is_empty(), "{bad:?}");
}
