//! `ferroscope check`: is every device of a board profile there?

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use ferroscope::station::{self, config::StationConfig};

/// `ferroscope check`.
#[derive(Args)]
pub struct CheckArgs {
    /// Board profile / station config (boards/*.toml); default: the first found of
    /// $FERROSCOPE_CONFIG, /etc/ferroscope/station.toml, boards/host-sim.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Check the profile at `config`; exit 0 when everything is usable, 1 otherwise.
pub fn check(config: Option<&Path>, json: bool) -> Result<ExitCode> {
    let config = &super::profile(config)?;
    let cfg = StationConfig::load(config)?;
    let findings = station::check::check(&cfg);
    let bad = findings.iter().filter(|f| !f.ok).count();
    if json {
        let rows: Vec<_> = findings
            .iter()
            .map(|f| serde_json::json!({"what": f.what, "ok": f.ok, "detail": f.detail}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "config": config.display().to_string(),
                "station": cfg.station.name,
                "board": cfg.board.as_ref().map(|b| b.name.clone()),
                "ok": bad == 0,
                "checks": rows,
            })
        );
    } else {
        println!("station {} — config {}", cfg.station.name, config.display());
        for f in &findings {
            println!("{} {:<44} {}", if f.ok { "ok  " } else { "FAIL" }, f.what, f.detail);
        }
        if bad == 0 {
            println!("ready: every device and file this profile names is usable");
        } else {
            println!("NOT READY: {bad} of {} checks failed", findings.len());
        }
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
