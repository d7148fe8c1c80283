//! `ferroscope records` and `ferroscope archive`: what the station kept on disk.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use ferroscope::core::decision::Action;
use ferroscope::records::archive;
use ferroscope::records::log::{self, FAULT_NAMES};
use ferroscope::records::store::Store;
use ferroscope::station::config::StationConfig;

/// `ferroscope records`.
#[derive(Args)]
pub struct RecordsArgs {
    /// Station config whose `[records] dir` to read (default: the first found of $FERROSCOPE_CONFIG, /etc/ferroscope/station.toml, boards/host-sim.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The records folder itself, instead of a config.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How many of the last decisions to list.
    #[arg(long, default_value_t = 20)]
    pub last: usize,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ArchiveCmd {
    /// List the archived items, oldest first.
    Ls {
        /// Station config whose `[archive] dir` to read (default: the first found of $FERROSCOPE_CONFIG, /etc/ferroscope/station.toml, boards/host-sim.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The archive folder itself, instead of a config.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// One JSON object per entry.
        #[arg(long)]
        json: bool,
    },
    /// Copy archived items (frame, overlay, JSON) into a folder.
    Export {
        /// Station config whose `[archive] dir` to read.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The archive folder itself, instead of a config.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Destination folder (created).
        #[arg(long)]
        out: PathBuf,
        /// Only the newest N entries.
        #[arg(long)]
        last: Option<usize>,
        /// Only entries decided at or after this time (ms since 1970).
        #[arg(long)]
        since_ms: Option<u64>,
        /// Only rejects (fail-safe included) or only accepted samples.
        #[arg(long, value_parser = ["reject", "accept"])]
        action: Option<String>,
    },
}

fn folder(config: Option<&Path>, dir: Option<&Path>, what: &str) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d.to_path_buf());
    }
    let path = super::profile(config)?;
    let cfg = StationConfig::load(&path)?;
    let (r, a, _) = cfg.record_sections();
    match what {
        "records" => r.map(|r| r.dir),
        _ => a.map(|a| a.dir),
    }
    .with_context(|| format!("{}: has no `[{what}]` section (or give --dir)", path.display()))
}

/// `ferroscope records`: the persisted counters (the counters file with the later log
/// records replayed, read-only) and the last decisions.
pub fn records(config: Option<&Path>, dir: Option<&Path>, last: usize, json: bool) -> Result<ExitCode> {
    let dir = folder(config, dir, "records")?;
    if !dir.is_dir() {
        bail!(
            "{}: no records folder here (the station has not run with `[records]`)",
            dir.display()
        );
    }
    let loaded = Store::load(&dir)?;
    let had_counters = loaded.is_some();
    let mut st = loaded.unwrap_or_else(|| Store::new("", &[]));
    let counters_seq = st.next_seq;
    let later = log::read_from(&dir, st.next_seq)?;
    for r in &later {
        st.apply(r, usize::MAX);
    }
    let (log_records, damaged) = log::check(&dir)?;
    let tail_from = st.next_seq.saturating_sub(last as u64);
    let tail = log::read_from(&dir, tail_from)?;
    let class = |c: Option<u8>| c.and_then(|c| st.classes.get(c as usize)).cloned();
    if json {
        let decisions: Vec<serde_json::Value> = tail
            .iter()
            .map(|r| {
                serde_json::json!({
                    "seq": r.seq,
                    "unix_ms": r.unix_ms,
                    "item": r.item,
                    "action": if r.action == Action::Reject { "reject" } else { "accept" },
                    "outcome": r.outcome.name(),
                    "class": class(r.class),
                    "score": r.score,
                    "fault": (r.fault != 0).then(|| FAULT_NAMES[r.fault as usize]),
                    "latency_ms": r.latency_us as f64 / 1000.0,
                    "recipe": st.recipes.get(r.recipe as usize),
                })
            })
            .collect();
        let period = |p: &ferroscope::records::store::Period| serde_json::json!({"day": p.day, "shift": p.shift, "counts": st.counts_json(&p.counts)});
        let j = serde_json::json!({
            "dir": dir,
            "station": st.station,
            "had_counters_file": had_counters,
            "counters_file_seq": counters_seq,
            "replayed": later.len(),
            "next_seq": st.next_seq,
            "saved_unix_ms": st.saved_unix_ms,
            "log_records": log_records,
            "log_damaged_bytes": damaged,
            "total": st.counts_json(&st.total),
            "days": st.days.iter().map(period).collect::<Vec<_>>(),
            "shifts": st.shifts.iter().map(period).collect::<Vec<_>>(),
            "last": decisions,
        });
        println!("{j}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("records {} — station {}", dir.display(), st.station);
    println!(
        "log: {} records ({} after the counters file), {} damaged bytes",
        log_records,
        later.len(),
        damaged
    );
    let line = |name: &str, c: &ferroscope::records::store::Counts| {
        let per: Vec<String> = st
            .classes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                c.rejected_per_class
                    .get(i)
                    .filter(|v| **v > 0)
                    .map(|v| format!("{n} {v}"))
            })
            .collect();
        println!(
            "{name:<16} inspected {:>8}  accepted {:>8}  rejected {:>7}  uncertain {:>6}  fail-safe {:>6}  faults {:>6}  per class: {}",
            c.inspected,
            c.accepted,
            c.rejected,
            c.uncertain,
            c.failsafe,
            c.faults,
            if per.is_empty() { "-".into() } else { per.join(", ") }
        );
    };
    line("total", &st.total);
    for p in &st.days {
        line(&p.day, &p.counts);
    }
    for p in &st.shifts {
        line(&format!("{} shift {}", p.day, p.shift.unwrap_or(0) + 1), &p.counts);
    }
    if !tail.is_empty() {
        println!("last {} decisions:", tail.len());
        for r in &tail {
            let recipe = match st.recipes.len() {
                0 | 1 => String::new(),
                _ => format!("{:<12} ", st.recipes.get(r.recipe as usize).map_or("?", String::as_str)),
            };
            println!(
                "  #{:<8} {} item {:<8} {recipe}{:<6} {:<9} {:<16} {:.3}  {:>7.2} ms  {}",
                r.seq,
                r.unix_ms,
                r.item,
                if r.action == Action::Reject { "reject" } else { "accept" },
                r.outcome.name(),
                class(r.class).unwrap_or_else(|| "-".into()),
                r.score,
                r.latency_us as f64 / 1000.0,
                FAULT_NAMES[r.fault as usize]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ferroscope archive ls|export`.
pub fn archive(cmd: ArchiveCmd) -> Result<ExitCode> {
    match cmd {
        ArchiveCmd::Ls { config, dir, json } => {
            let dir = folder(config.as_deref(), dir.as_deref(), "archive")?;
            let entries = archive::scan(&dir)?;
            let total: u64 = entries.iter().map(|e| e.bytes).sum();
            for e in &entries {
                let meta: serde_json::Value = std::fs::read(format!("{}.json", e.stem.display()))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(serde_json::Value::Null);
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"stem": e.stem, "unix_ms": e.unix_ms, "item": e.item, "bytes": e.bytes, "record": meta})
                    );
                } else {
                    println!(
                        "{}  item {:<8} {:<7} {:<10} {:<16} {:>8} B  {}",
                        e.unix_ms,
                        e.item,
                        meta["action"].as_str().unwrap_or("?"),
                        meta["outcome"].as_str().unwrap_or("?"),
                        meta["class"].as_str().unwrap_or("-"),
                        e.bytes,
                        e.stem.display()
                    );
                }
            }
            if !json {
                println!(
                    "{} entries, {:.1} MiB in {}",
                    entries.len(),
                    total as f64 / 1048576.0,
                    dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCmd::Export {
            config,
            dir,
            out,
            last,
            since_ms,
            action,
        } => {
            let dir = folder(config.as_deref(), dir.as_deref(), "archive")?;
            let mut entries = archive::scan(&dir)?;
            entries.retain(|e| since_ms.map(|t| e.unix_ms >= t).unwrap_or(true));
            if let Some(a) = &action {
                entries.retain(|e| {
                    let name = e
                        .stem
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let is_reject = name.ends_with("-reject") || name.ends_with("-failsafe");
                    (a == "reject") == is_reject
                });
            }
            if let Some(n) = last {
                let skip = entries.len().saturating_sub(n);
                entries.drain(..skip);
            }
            std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
            let mut files = 0;
            for e in &entries {
                let stem = e
                    .stem
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                for suffix in [".png", "-overlay.png", ".json"] {
                    let from = PathBuf::from(format!("{}{suffix}", e.stem.display()));
                    if from.exists() {
                        let to = out.join(format!("{stem}{suffix}"));
                        std::fs::copy(&from, &to)
                            .with_context(|| format!("{} → {}: cannot copy", from.display(), to.display()))?;
                        files += 1;
                    }
                }
            }
            println!(
                "exported {} entries ({files} files) to {}",
                entries.len(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
