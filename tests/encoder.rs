//! The station in encoder mode on the simulated backend (`inputs.backend = "sim"`): a quadrature
//! encoder on a belt running forward places every reject, and a part-present sensor that finds
//! the encoder standing still is a fault that gives the items the fail-safe.

use std::path::{Path, PathBuf};

use ferroscope::station::{self, config::StationConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped triggered host simulation in encoder mode: 4 counts/mm, one simulated encoder
/// edge every `edge_ms`, `extra` appended to `[inputs.encoder]`.
fn profile(edge_ms: f32, extra: &str) -> StationConfig {
    let path = root().join("boards/host-sim-trigger.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("belt_speed_mm_per_s = 500.0", "encoder_counts_per_mm = 4.0");
    let text = format!("{text}\n[inputs.encoder]\nline = 1\nline_b = 2\nperiod_ms = {edge_ms}\n{extra}\n");
    StationConfig::parse(&text, &path).unwrap()
}

#[test]
fn a_quadrature_encoder_running_forward_places_every_reject_without_a_fault() {
    // 500 mm/s at 4 counts/mm: an edge every 0.5 ms.
    let cfg = profile(0.5, "standstill_ms = 200.0");
    let s = station::run(&cfg, |_| {}).unwrap();
    let j = s.to_json();
    assert!(s.counters.inspected >= 30, "{j}");
    assert_eq!(s.faults.encoder_lost_events, 0, "{j}");
    assert_eq!(s.faults.encoder_standstill, 0, "{j}");
    // Every edge counted forward, none missing from the sequence.
    let e = s.encoder.expect("encoder mode reports its encoder");
    assert!(e.events > 1000, "{j}");
    assert_eq!((e.count, e.missing_events), (e.events as i64, 0), "{j}");
    assert_eq!(j["encoder"]["events"], e.events, "{j}");
    assert_eq!(j["encoder"]["count"], e.count, "{j}");
    // The only fail-safe: a part-present edge after the last frame may find no frame left.
    assert!(s.tracker.overdue <= 1, "{j}");
    assert_eq!(s.tracker.failsafe_rejects, s.tracker.overdue, "{j}");
    // Items are 80 ms apart: one pulse per reject.
    assert_eq!(
        s.pulses() as u64,
        s.counters.rejected + s.tracker.failsafe_rejects,
        "{j}"
    );
    assert!(s.counters.rejected > 0);
}

#[test]
fn part_present_edges_that_find_the_encoder_standing_still_are_faults_with_the_fail_safe() {
    // The encoder's first edge comes after the run: it stands still while parts arrive.
    let cfg = profile(60_000.0, "standstill_ms = 200.0");
    let s = station::run(&cfg, |_| {}).unwrap();
    let j = s.to_json();
    assert!(s.faults.encoder_standstill > 0, "{j}");
    assert_eq!(
        j["fault_kinds"]["encoder_standstill"], s.faults.encoder_standstill,
        "{j}"
    );
    assert!(s.counters.faults >= s.faults.encoder_standstill, "{j}");
    assert_eq!(j["encoder"]["events"], 0, "{j}");
    // Not checked without `standstill_ms`.
    let s = station::run(&profile(60_000.0, ""), |_| {}).unwrap();
    assert_eq!(s.faults.encoder_standstill, 0);
}

#[test]
fn encoder_settings_in_the_wrong_place_are_refused_naming_the_field() {
    let path = root().join("boards/host-sim-trigger.toml");
    let base = std::fs::read_to_string(&path)
        .unwrap()
        .replace("belt_speed_mm_per_s = 500.0", "encoder_counts_per_mm = 4.0");
    for (extra, field) in [
        (
            "[inputs.encoder]\nline = 1\nline_b = 1\nperiod_ms = 1.0",
            "inputs.encoder.line_b",
        ),
        (
            "[inputs.encoder]\nline = 1\nperiod_ms = 1.0\nstandstill_ms = -5.0",
            "inputs.encoder.standstill_ms",
        ),
        ("[inputs.encoder]\nline = 1", "inputs.encoder.period_ms"),
    ] {
        let e = StationConfig::parse(&format!("{base}\n{extra}\n"), Path::new("boards/x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("boards/x.toml") && e.contains(field), "{e}");
    }
    let e = StationConfig::parse(
        &format!(
            "{}\n[inputs.encoder]\nline = 1\nperiod_ms = 1.0\n",
            base.replace("period_ms = 80.0", "period_ms = 80.0\nstandstill_ms = 100.0")
        ),
        Path::new("boards/x.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("inputs.trigger.standstill_ms"), "{e}");
}
