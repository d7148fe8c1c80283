//! The station end to end on the shipped host simulation, with the counting allocator
//! installed so the run itself proves the frame path allocates nothing in our code.

mod audit;

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
    assert_eq!(s.pulses() as u64, c.rejected, "{:?}", s.tracker);
    assert_eq!(s.tracker.fired.iter().sum::<u64>(), c.rejected);
    assert!(s.tracker.fired[0] > 0 && s.tracker.fired[1] > 0, "both ejectors fired");
    // Pulses on each reject line alternate on/off and never overlap.
    for k in 0..2 {
        let edges: Vec<_> = s.timeline.iter().filter(|e| e.line == OutputLine::Reject(k)).collect();
        for (i, e) in edges.iter().enumerate() {
            assert_eq!(e.active, i % 2 == 0, "ejector {k} edge {i} out of order");
            if i > 0 {
                assert!(e.planned >= edges[i - 1].planned);
            }
        }
    }
    // Against each item's true arrival: every pulse planned on it, nothing hit by mistake.
    let a = s.audit.as_ref().unwrap();
    assert_eq!((a.items, a.false_rejects), (36, 0), "{a:?}");
    audit::no_reject_missed_as_planned_in(&s);
    assert!(a.timing_error_us_p50.is_some());
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
        "missed_rejects",
        "false_rejects",
        "failsafe_rejects",
        "timing_error_us_p50",
        "timing_error_us_p99",
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
fn decisions_later_than_the_ejector_window_get_the_fail_safe_reject_in_time() {
    let _serial = serial();
    let mut cfg = config(&root().join("tests/data/neu_samples/crazing"), 20.0);
    // Ejectors 8 mm downstream at 500 mm/s with 40 ms pulses: the item arrives 16 ms after
    // capture and its window opens 4 ms before capture, so every decision comes too late —
    // and the tracker, which knows the item from its capture on, rejects it in time anyway.
    for e in &mut cfg.ejectors {
        e.ejector_distance_mm = 8.0;
        e.pulse_width_ms = 40.0;
    }
    let mut faults = Vec::new();
    let s = station::run(&cfg, |item| faults.push(item.fault)).unwrap();
    assert_eq!(s.counters.inspected, 6);
    assert_eq!(s.faults.decision_overrun, 6);
    assert_eq!(s.counters.failsafe, 6);
    assert!(faults.iter().all(|f| *f == Some("decision overrun")));
    // The tracker rejected them on its own, with the fail-safe ejector (the second).
    assert_eq!(s.tracker.failsafe_rejects, 6);
    assert_eq!(s.tracker.fired, [0, 6, 0, 0]);
    audit::no_reject_missed_as_planned_in(&s);
    // The heartbeat dropped on the fault.
    let hb: Vec<_> = s.timeline.iter().filter(|e| e.line == OutputLine::Heartbeat).collect();
    assert!(hb.len() <= 2, "heartbeat kept toggling through faults: {}", hb.len());
}

#[test]
fn the_line_stop_policy_asserts_line_stop_once_and_counts_it() {
    let _serial = serial();
    let text = std::fs::read_to_string(DEFAULT_CONFIG_PATH).unwrap();
    let text = text.replace("failsafe = \"reject\"  ", "failsafe = \"line_stop\"");
    let mut cfg = StationConfig::parse(&text, Path::new(DEFAULT_CONFIG_PATH)).unwrap();
    assert_eq!(cfg.decision.failsafe, "line_stop");
    cfg.camera.path = root().join("tests/data/neu_samples/patches");
    cfg.camera.rate_fps = 25.0;
    for e in &mut cfg.ejectors {
        e.ejector_distance_mm = 1.0;
    }
    let s = station::run(&cfg, |_| {}).unwrap();
    assert_eq!(s.tracker.line_stops, 1);
    assert_eq!(s.pulses(), 0, "nothing fired: the line stops instead");
    let stops: Vec<_> = s.timeline.iter().filter(|e| e.line == OutputLine::LineStop).collect();
    assert_eq!(stops.len(), 1);
    assert!(stops[0].active);
    assert_eq!(s.to_json()["line_stops"], 1);
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

    // Ejector mistakes: a class no ejector takes, a class the model lacks, a bad merge.
    let cfg = StationConfig::parse(&text.replace("classes = [\"*\"]", "classes = [\"inclusion\"]"), p).unwrap();
    let e = cfg.ejectors(&manifest).unwrap_err().to_string();
    assert!(e.contains("scratches") && e.contains("no ejector"), "{e}");
    let cfg = StationConfig::parse(
        &text.replace("\"crazing\", \"patches\", \"pitted_surface\"]", "\"rust\"]"),
        p,
    )
    .unwrap();
    let e = cfg.ejectors(&manifest).unwrap_err().to_string();
    assert!(e.contains("ejectors[0].classes") && e.contains("rust"), "{e}");
    let e = StationConfig::parse(&text.replace("merge = \"extend\"", "merge = \"blend\""), p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ejectors[0] (\"surface\").merge") && e.contains("allowed"),
        "{e}"
    );
    // The fail-safe must have somewhere to go.
    let e = StationConfig::parse(&text.replace("failsafe = true", "failsafe = false"), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("failsafe = true"), "{e}");
    // GPIO backend without lines.
    let e = StationConfig::parse(&text.replace("backend = \"recording\"", "backend = \"gpio\""), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ejectors[0] (\"surface\").gpio"), "{e}");
    // Speed or encoder, not both, not neither.
    let e = StationConfig::parse(
        &text.replace("belt_speed_mm_per_s = 500.0", "encoder_counts_per_mm = 10.0"),
        p,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("inputs.encoder"), "{e}");
}
