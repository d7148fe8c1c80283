//! `ferroscope simulate` and `ferroscope bench-timing`: reject timing, in virtual time against
//! the tracker and on this machine's real clock and threads.
//!
//! - `simulate` checks every pulse against every item's true arrival and exits 1 unless no
//!   reject is missed, none is false, duplicated, on the wrong ejector or crowding the gap,
//!   and the worst pulse centre is within 1 mm;
//! - `bench-timing` runs the station's own actuator thread idle and with inference on the
//!   frame thread, and with `--load` both again beside a background load ([`super::load`]),
//!   and reports per run the pulse timing error (p50, p99, max) and the share of pulses
//!   more than 100 µs off.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::load::{Load, LoadKind};

/// `ferroscope simulate`.
#[derive(Args)]
pub struct SimulateArgs {
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Items.
    #[arg(long, default_value_t = 100_000)]
    pub items: u32,
    /// Follow the belt with a simulated encoder (1 count/mm, ±50 µs jitter, speed ramps)
    /// instead of reported speed steps.
    #[arg(long)]
    pub encoder: bool,
    /// Write the output timeline (`<µs> <output> <on|off>` per line) to this file.
    #[arg(long)]
    pub timeline: Option<PathBuf>,
    /// Also run the line on the reject co-processor behind this serial device, in lockstep,
    /// and compare its pulses with this machine's tracker, edge by edge.
    #[arg(long, value_name = "DEVICE")]
    pub coprocessor: Option<PathBuf>,
    /// The co-processor link's speed.
    #[arg(long, default_value_t = ferroscope::sim::coprocessor::DEFAULT_BAUD)]
    pub baud: u32,
    /// The co-processor counts the link lost after this long without a frame (ms).
    #[arg(long, default_value_t = 15)]
    pub link_timeout_ms: u16,
    /// Cut the link right after this item's capture (before its decision): the co-processor
    /// must detect the loss and fire what it still holds on its own, this item by the
    /// fail-safe; the pulses it owes are printed (`expected_after_cut`).
    #[arg(long, requires = "coprocessor")]
    pub cut_after: Option<u32>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `ferroscope simulate --coprocessor`: the seeded line on this machine's tracker and on the
/// co-processor's, side by side.
pub fn simulate_coprocessor(a: &SimulateArgs, device: &Path) -> Result<ExitCode> {
    use ferroscope::sim::conveyor::{self, SimConfig};
    use ferroscope::sim::coprocessor::Coprocessor;
    let cfg = SimConfig::reference(a.seed, a.items, a.encoder);
    let golden = conveyor::run(&cfg);
    let mut mcu = Coprocessor::connect(device, a.baud, a.link_timeout_ms)?;
    if let Some(k) = a.cut_after {
        mcu.cut_after(k);
    }
    let started = std::time::Instant::now();
    let r = conveyor::run_on(&cfg, &mut mcu).map_err(anyhow::Error::msg)?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(e) = mcu.error() {
        anyhow::bail!("{e}");
    }
    let link = mcu.link_stats();
    let version = mcu.version;
    let mut j = serde_json::json!({
        "seed": a.seed,
        "mode": if a.encoder { "encoder" } else { "speed" },
        "firmware": format!("{}.{}.{}", version[0], version[1], version[2]),
        "frames_sent": mcu.sent,
        "frames_received": link.frames,
        "frames_dropped": link.dropped(),
        "refused_decisions": mcu.refused,
        "link_losses": mcu.losses,
        "seconds": secs,
    });
    let ok = if a.cut_after.is_some() {
        let expected = mcu.expected_after_cut();
        j["cut"] = mcu.was_cut().into();
        j["last_advance_us"] = mcu.last_advance().us.into();
        j["expected_after_cut"] = expected
            .iter()
            .map(|&(at, out, on)| serde_json::json!([at, out, on]))
            .collect::<Vec<_>>()
            .into();
        mcu.was_cut()
    } else {
        // Edge by edge: time, output, level.
        let first_difference = golden
            .timeline
            .iter()
            .zip(&r.timeline)
            .position(|(g, c)| g != c)
            .or((golden.timeline.len() != r.timeline.len()).then(|| golden.timeline.len().min(r.timeline.len())));
        let identical = first_difference.is_none();
        let pulses = r.timeline.iter().filter(|e| e.active).count();
        j["items"] = r.items.into();
        j["pulses"] = pulses.into();
        j["edges"] = r.timeline.len().into();
        j["pulses_identical"] = identical.into();
        j["first_difference"] = first_difference.into();
        j["timeline_sha256"] = conveyor::timeline_digest(&r.timeline).into();
        j["golden_timeline_sha256"] = conveyor::timeline_digest(&golden.timeline).into();
        j["missed_rejects"] = r.missed_rejects.into();
        j["false_rejects"] = r.false_rejects.into();
        j["tracker_stats_identical"] = (r.tracker == golden.tracker).into();
        identical && r.tracker == golden.tracker && r.missed_rejects == golden.missed_rejects
    };
    j["ok"] = ok.into();
    if a.json {
        println!("{j}");
    } else {
        println!("{}", serde_json::to_string_pretty(&j)?);
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `ferroscope bench-timing`.
#[derive(Args)]
pub struct BenchTimingArgs {
    /// Station config (belt speed, ejectors, model); default: the first found of $FERROSCOPE_CONFIG, /etc/ferroscope/station.toml, boards/host-sim.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Items per run (every one rejected).
    #[arg(long, default_value_t = 1000)]
    pub items: u32,
    /// Items per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate_fps: f32,
    /// Also run under this background load (threads of this process at normal priority):
    /// one busy thread per CPU, one thread per CPU streaming through 64 MiB, writes synced
    /// to disk, or all three.
    #[arg(long, value_enum)]
    pub load: Option<LoadKind>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn simulate(seed: u64, items: u32, encoder: bool, timeline: Option<&Path>, json: bool) -> Result<ExitCode> {
    use ferroscope::sim::conveyor::{self, SimConfig};
    let cfg = SimConfig::reference(seed, items, encoder);
    let started = std::time::Instant::now();
    let r = conveyor::run(&cfg);
    let secs = started.elapsed().as_secs_f64();
    if let Some(p) = timeline {
        std::fs::write(p, conveyor::timeline_text(&r.timeline, usize::MAX))
            .with_context(|| format!("{}: cannot write the timeline", p.display()))?;
    }
    let ok = r.missed_rejects == 0
        && r.false_rejects == 0
        && r.duplicate_fires == 0
        && r.wrong_ejector == 0
        && r.gap_violations == 0
        && r.deadline_mismatches == 0
        && r.error_mm_max <= 1.0;
    if json {
        let mut j = r.to_json();
        j["seed"] = seed.into();
        j["mode"] = if encoder { "encoder" } else { "speed" }.into();
        j["ok"] = ok.into();
        j["seconds"] = secs.into();
        println!("{j}");
    } else {
        println!(
            "{} items ({} mode, seed {seed}) simulated in {secs:.1} s",
            r.items,
            if encoder { "encoder" } else { "speed" }
        );
        println!(
            "must reject {} (defective {}, fail-safe {}): rejected correctly {}, missed {}",
            r.must_reject, r.defective, r.failsafe_rejects, r.rejected_ok, r.missed_rejects
        );
        println!(
            "false rejects {}, duplicate fires {}, wrong ejector {}, pulses crowding the gap {}, deadline mismatches {}",
            r.false_rejects, r.duplicate_fires, r.wrong_ejector, r.gap_violations, r.deadline_mismatches
        );
        println!(
            "pulse centre vs true arrival: p50 {:.3} mm, p99 {:.3} mm, max {:.3} mm ({} / {} µs p50/p99); windows opened late by a speed-up {}",
            r.error_mm_p50, r.error_mm_p99, r.error_mm_max, r.error_us_p50, r.error_us_p99, r.late_windows
        );
        println!(
            "merged {}, overdue decisions {}, edges {}",
            r.tracker.merged,
            r.overdue,
            r.timeline.len()
        );
        println!("{}", if ok { "OK" } else { "FAILED" });
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn bench_timing(
    config: Option<&Path>,
    items: u32,
    rate_fps: f32,
    load: Option<LoadKind>,
    json: bool,
) -> Result<ExitCode> {
    use ferroscope::station::{config::StationConfig, timing_bench, LATE_PULSE_US};
    let path = super::profile(config)?;
    let cfg = StationConfig::load(&path)?;
    // (name, load, with inference)
    let mut plan: Vec<(String, Option<LoadKind>, bool)> = vec![
        ("idle".into(), None, false),
        ("inference on the frame thread".into(), None, true),
    ];
    if let Some(k) = load {
        plan.push((format!("{} load", k.name()), Some(k), false));
        plan.push((format!("{} load + inference", k.name()), Some(k), true));
    }
    let mut runs = Vec::with_capacity(plan.len());
    for (name, kind, inference) in plan {
        let background = kind.map(Load::start).transpose()?;
        let r = timing_bench(&cfg, items, rate_fps, inference);
        if let Some(b) = background {
            b.stop();
        }
        runs.push((name, kind, r?));
    }
    let share = |r: &ferroscope::station::TimingReport| {
        let a = &r.audit;
        a.pulses_over_late_limit as f64 / a.pulses_timed.max(1) as f64
    };
    let row = |name: &str, kind: Option<LoadKind>, r: &ferroscope::station::TimingReport| {
        let a = &r.audit;
        serde_json::json!({
            "run": name,
            "load": kind.map(LoadKind::name),
            "with_inference": r.with_inference,
            "items": r.items,
            "missed_rejects": a.missed_rejects,
            "missed_late_output": a.missed_late_output,
            "timing_error_us_p50": a.timing_error_us_p50,
            "timing_error_us_p99": a.timing_error_us_p99,
            "timing_error_us_max": a.timing_error_us_max,
            "pulses_timed": a.pulses_timed,
            "share_over_100_us": share(r),
            "edge_error_us_p50": r.edge_error_us.0,
            "edge_error_us_p99": r.edge_error_us.1,
            "edge_error_us_max": r.edge_error_us.2,
        })
    };
    let (idle, loaded) = (&runs[0].2, &runs[1].2);
    let p99_loaded = loaded.audit.timing_error_us_p99.unwrap_or(0);
    let p99_idle = idle.audit.timing_error_us_p99.unwrap_or(0).max(1);
    let mm = |us: u64, m_per_s: f32| ferroscope::core::calibration::travel_distance_mm(us, m_per_s * 1000.0);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "config": path.display().to_string(),
                "rate_fps": rate_fps,
                "late_pulse_us": LATE_PULSE_US,
                "idle": row(&runs[0].0, None, idle),
                "with_inference": row(&runs[1].0, None, loaded),
                "runs": runs.iter().map(|(n, k, r)| row(n, *k, r)).collect::<Vec<_>>(),
                "p99_ratio_loaded_over_idle": p99_loaded as f64 / p99_idle as f64,
                "p99_mm_at_1_5_20_m_per_s": [mm(p99_loaded, 1.0), mm(p99_loaded, 5.0), mm(p99_loaded, 20.0)],
            })
        );
    } else {
        println!(
            "reject scheduling, {items} items at {rate_fps} items/s per run, {}",
            path.display()
        );
        println!("pulse centre vs true arrival (µs)     p50    p99    max  > {LATE_PULSE_US} µs  missed");
        for (name, _, r) in &runs {
            let a = &r.audit;
            println!(
                "  {name:<34} {:>6} {:>6} {:>6} {:>8.1}% {:>6}",
                a.timing_error_us_p50.unwrap_or(0),
                a.timing_error_us_p99.unwrap_or(0),
                a.timing_error_us_max.unwrap_or(0),
                share(r) * 100.0,
                a.missed_rejects
            );
        }
        println!(
            "p99 with inference / idle: {:.2}x; p99 with inference in mm: {:.3} at 1 m/s, {:.3} at 5 m/s, {:.3} at 20 m/s",
            p99_loaded as f64 / p99_idle as f64,
            mm(p99_loaded, 1.0),
            mm(p99_loaded, 5.0),
            mm(p99_loaded, 20.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}
