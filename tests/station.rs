//! The station end to end on the shipped host simulation, with the counting allocator
//! installed so the run itself proves the frame path allocates nothing in our code.

use std::path::{Path, PathBuf};

use ferroscope::alloc_count::CountingAlloc;
use ferroscope::core::decision::Outcome;
use ferroscope::hal::OutputLine;
use ferroscope::station::{self, config::StationConfig, config::DEFAULT_CONFIG_PATH};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Allocation counts are process-wide: tests in this file run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default config with the replay sped up and pointed at `samples`.
fn config(samples: &Path, rate_fps: f32) -> StationConfig {
    let mut cfg = StationConfig::load(Path::new(DEFAULT_CONFIG_PATH)).unwrap();
    cfg.camera.path = samples.to_path_buf();
    cfg.camera.rate_fps = rate_fps;
    cfg
}

#[test]
fn default_station_decides_every_sample_and_fires_one_pulse_per_reject() {
    let _serial = serial();
    let cfg = config(&root().join("tests/data/neu_samples"), 25.0);
    let mut outcomes = Vec::with_capacity(64); // sized up front: the callback must not allocate either
    let s = station::run(&cfg, |item| outcomes.push(item.decision.outcome)).unwrap();
    let c = &s.counters;
    assert_eq!(c.inspected, 36);
    assert_eq!(outcomes.len(), 36);
    assert_eq!(c.accepted + c.rejected, c.inspected);
    assert_eq!(c.failsafe, 0);
    assert_eq!(c.faults, 0);
    // rolled-in_scale is an accept class in the default config; the other five reject.
    assert_eq!(
        c.accepted,
        outcomes.iter().filter(|o| **o == Outcome::Accept).count() as u64
    );
    assert!(
        s.correct >= 34,
        "{} of 36 samples decided as their folder's class",
        s.correct
    );
    // Items are 40 ms apart and pulses 20 ms wide with a 10 ms gap: no merging, one pulse each.
    assert_eq!(s.pulses() as u64, c.rejected);
    // Pulses on the reject line alternate on/off and never overlap.
    let edges: Vec<_> = s.timeline.iter().filter(|e| e.line == OutputLine::Reject(0)).collect();
    for (i, e) in edges.iter().enumerate() {
        assert_eq!(e.active, i % 2 == 0, "edge {i} out of order");
        if i > 0 {
            assert!(e.planned >= edges[i - 1].planned);
        }
    }
    // Heartbeat toggled while healthy and ended low.
    let hb: Vec<_> = s.timeline.iter().filter(|e| e.line == OutputLine::Heartbeat).collect();
    assert!(hb.len() >= 2 && !hb.last().unwrap().active);
    assert_eq!(
        s.allocations_ours_after_warmup, 0,
        "the frame path allocated in our code"
    );
    let j = s.to_json();
    for key in [
        "items",
        "rejected_per_class",
        "uncertain",
        "faults",
        "latency_ms_p50",
        "latency_ms_p99",
    ] {
        assert!(j.get(key).is_some(), "summary lacks {key}");
    }
}

#[test]
fn a_broken_frame_is_a_counted_fail_safe_reject_and_the_station_keeps_running() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("ferroscope-broken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("crazing")).unwrap();
    let src = root().join("tests/data/neu_samples/crazing");
    let mut names: Vec<_> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in &names[..3] {
        std::fs::copy(p, dir.join("crazing").join(p.file_name().unwrap())).unwrap();
    }
    // A truncated PNG: the header survives, the pixel data does not.
    let bytes = std::fs::read(&names[3]).unwrap();
    std::fs::write(dir.join("crazing/Cr_zz_truncated.png"), &bytes[..bytes.len() / 3]).unwrap();
    // 50 ms apart: pulses of 20 ms with a 10 ms gap stay separate.
    let cfg = config(&dir, 20.0);
    let mut faults = Vec::new();
    let s = station::run(&cfg, |item| faults.push(item.fault)).unwrap();
    assert_eq!(s.counters.inspected, 4);
    assert_eq!(s.counters.failsafe, 1);
    assert_eq!(s.faults.corrupt_frame, 1);
    assert_eq!(s.counters.rejected, 4, "fail-safe is reject by default");
    assert_eq!(faults.iter().filter(|f| f.is_some()).count(), 1);
    assert_eq!(s.pulses(), 4);
}

#[test]
fn config_errors_name_the_file_and_field() {
    let _serial = serial();
    let text = std::fs::read_to_string(DEFAULT_CONFIG_PATH).unwrap();
    let p = Path::new("boards/test.toml");
    let e = StationConfig::parse(&text.replace("belt_speed_mm_per_s", "belt_speed"), p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("boards/test.toml") && e.contains("belt_speed") && e.contains("line"),
        "{e}"
    );
    let e = StationConfig::parse(&text.replace("uncertain = \"reject\"", "uncertain = \"maybe\""), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("decision.uncertain") && e.contains("allowed"), "{e}");

    let cfg = StationConfig::parse(
        &text.replace("accept_classes = [\"rolled-in_scale\"]", "accept_classes = []"),
        Path::new(DEFAULT_CONFIG_PATH),
    )
    .unwrap();
    let manifest = ferroscope::model::manifest::Manifest::load(&root().join("models/neu_classify.toml")).unwrap();
    let e = cfg.rules(&manifest).unwrap_err().to_string();
    assert!(e.contains("rolled-in_scale") && e.contains("exactly one"), "{e}");
}
