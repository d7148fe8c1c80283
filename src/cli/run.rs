//! `ferroscope run`: the station loop, one line per item and a summary.
//!
//! - the profile comes from the documented search order ([`super::profile`]); which file was
//!   used is said on stderr;
//! - item lines are written field by field into the locked stdout: logging allocates nothing
//!   per item, so the station's zero-allocation frame path stays measurable from here;
//! - `--json`: one JSON object per item line, then the summary as one JSON object.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use ferroscope::station::{self, config::StationConfig, ItemReport};

use super::action_name;

/// `ferroscope run`.
#[derive(Args)]
pub struct RunArgs {
    /// Station config; default: the first found of $FERROSCOPE_CONFIG, /etc/ferroscope/station.toml, boards/host-sim.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print one JSON line per item and end with the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds (a live camera otherwise runs until killed).
    #[arg(long)]
    pub duration_s: Option<f64>,
}

pub fn run(config: Option<&Path>, json: bool, duration_s: Option<f64>) -> Result<ExitCode> {
    let path = super::profile(config)?;
    let cfg = StationConfig::load(&path)?;
    if !json {
        println!("station {} — config {}", cfg.station.name, path.display());
    }
    let stdout = std::io::stdout();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(d) = duration_s {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs_f64(d.max(0.0)));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let summary = station::run_until(&cfg, &stop, |item| {
        // Written field by field into the locked stdout: logging must not allocate per item.
        let mut out = stdout.lock();
        let _ = if json {
            write_item_json(&mut out, item)
        } else {
            write_item_text(&mut out, item)
        };
    })?;
    let mut j = summary.to_json();
    j["config"] = path.display().to_string().into();
    if json {
        println!("{j}");
    } else {
        let c = &summary.counters;
        println!();
        println!("model {}", summary.model);
        println!(
            "items {}   accepted {}   rejected {}   uncertain {}   fail-safe {}   faults {}   yield {:.1} %",
            c.inspected,
            c.accepted,
            c.rejected,
            c.uncertain,
            c.failsafe,
            c.faults,
            c.yield_percent()
        );
        let per: Vec<String> = summary
            .classes
            .iter()
            .enumerate()
            .filter(|(i, _)| c.rejected_per_class[*i] > 0)
            .map(|(i, n)| format!("{n} {}", c.rejected_per_class[i]))
            .collect();
        println!(
            "rejected per class: {}",
            if per.is_empty() { "-".into() } else { per.join(", ") }
        );
        println!(
            "latency capture→decision p50 {} ms, p99 {} ms",
            j["latency_ms_p50"], j["latency_ms_p99"]
        );
        let fired: Vec<String> = summary
            .ejectors
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} {}", summary.tracker.fired[i]))
            .collect();
        println!(
            "reject pulses {} (fired per ejector: {}; fail-safe rejects {}, line stops {}, merged {})",
            summary.pulses(),
            fired.join(", "),
            summary.tracker.failsafe_rejects,
            summary.tracker.line_stops,
            summary.tracker.merged
        );
        if let Some(a) = &summary.audit {
            println!(
                "against true arrival: missed rejects {}, false rejects {}, pulse centre error p50 {} µs, p99 {} µs ({:.3} mm at {} mm/s)",
                a.missed_rejects,
                a.false_rejects,
                a.timing_error_us_p50.unwrap_or(0),
                a.timing_error_us_p99.unwrap_or(0),
                a.timing_error_us_p99.unwrap_or(0) as f64 * a.belt_speed_mm_per_s as f64 / 1e6,
                a.belt_speed_mm_per_s
            );
        }
        let k = &summary.camera;
        println!(
            "camera: frames {}, dropped {}, corrupt {}, wrong size {}, timeouts {}, disconnects {}, reconnects {} (longest outage {:.0} ms); items it did not see {} (all fail-safe){}",
            k.frames,
            k.dropped,
            k.corrupt,
            k.wrong_size,
            k.timeouts,
            k.disconnects,
            k.reconnects,
            k.longest_outage_us as f64 / 1000.0,
            summary.blind_items,
            if summary.camera_down_at_end { "; camera away at the end" } else { "" }
        );
        if summary.labelled > 0 {
            println!(
                "labelled items {}: {} decided as their folder's class",
                summary.labelled, summary.correct
            );
        }
        println!(
            "allocations after the first item: ours {}, tract {:.0} per item",
            summary.allocations_ours_after_warmup, summary.allocations_tract_per_item
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn write_json_str(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    out.write_all(b"\"")?;
    for c in s.chars() {
        match c {
            '"' => out.write_all(b"\\\"")?,
            '\\' => out.write_all(b"\\\\")?,
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32)?,
            c => write!(out, "{c}")?,
        }
    }
    out.write_all(b"\"")
}

fn write_opt_str(out: &mut impl Write, s: Option<&str>) -> std::io::Result<()> {
    match s {
        Some(s) => write_json_str(out, s),
        None => out.write_all(b"null"),
    }
}

fn write_item_json(out: &mut impl Write, item: &ItemReport<'_>) -> std::io::Result<()> {
    let d = item.decision;
    write!(out, "{{\"item\":{},\"source\":", item.sequence)?;
    write_json_str(out, item.source)?;
    out.write_all(b",\"label\":")?;
    write_opt_str(out, item.label)?;
    out.write_all(b",\"class\":")?;
    write_opt_str(out, item.class_name)?;
    write!(
        out,
        ",\"score\":{},\"outcome\":\"{}\",\"decision\":\"{}\",\"latency_ms\":{},\"fault\":",
        d.score,
        d.outcome.name(),
        action_name(d.action),
        item.latency_us as f64 / 1000.0
    )?;
    write_opt_str(out, item.fault)?;
    out.write_all(b"}\n")
}

fn write_item_text(out: &mut impl Write, item: &ItemReport<'_>) -> std::io::Result<()> {
    let d = item.decision;
    write!(
        out,
        "#{:<4} {:<14} {:<7} {:<10} {:<16} {:.3}  {:>6.2} ms",
        item.sequence,
        item.source,
        action_name(d.action),
        d.outcome.name(),
        item.class_name.unwrap_or("-"),
        d.score,
        item.latency_us as f64 / 1000.0
    )?;
    if let Some(f) = item.fault {
        write!(out, "  FAULT: {f}")?;
    }
    out.write_all(b"\n")
}
