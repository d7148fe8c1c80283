//! `ferroscope check`: is every device of a board profile there?

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use ferroscope::core::link::{FIRMWARE_VERSION, PROTOCOL};
use ferroscope::sim::coprocessor::Coprocessor;
use ferroscope::station::{self, check::Finding, config::StationConfig};

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
    /// Also check the reject co-processor behind this serial device: it answers, speaks this
    /// release's link protocol and runs this release's firmware (a profile with
    /// `outputs.backend = "coprocessor"` has its own checked without this).
    #[arg(long, value_name = "DEVICE")]
    pub coprocessor: Option<PathBuf>,
    /// The co-processor link's speed.
    #[arg(long, default_value_t = ferroscope::sim::coprocessor::DEFAULT_BAUD)]
    pub baud: u32,
}

/// Check the profile of `a.config` (and the co-processor of `a.coprocessor`); exit 0 when
/// everything is usable, 1 otherwise.
pub fn check(a: &CheckArgs) -> Result<ExitCode> {
    let json = a.json;
    let config = &super::profile(a.config.as_deref())?;
    let cfg = StationConfig::load(config)?;
    let mut findings = station::check::check(&cfg);
    match (&a.coprocessor, &cfg.outputs.coprocessor) {
        (Some(device), _) => findings.push(coprocessor(device, a.baud)),
        // The profile's own co-processor (`outputs.backend = "coprocessor"`).
        (None, Some(cp)) => findings.push(coprocessor(&cp.device, cp.baud)),
        (None, None) => {}
    }
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

/// Say hello to the co-processor behind `device`: its protocol and firmware version.
fn coprocessor(device: &Path, baud: u32) -> Finding {
    let what = format!("reject co-processor {}", device.display());
    let t0 = std::time::Instant::now();
    let (ok, detail) = match Coprocessor::connect(device, baud, 0) {
        Err(e) => (false, format!("{e:#}")),
        Ok(mcu) => {
            let [a, b, c] = mcu.version;
            let [x, y, z] = FIRMWARE_VERSION;
            let answered = format!(
                "protocol {PROTOCOL}, firmware {a}.{b}.{c}, answered in {:.1} ms at {baud} Bd",
                t0.elapsed().as_secs_f64() * 1000.0
            );
            if mcu.version == FIRMWARE_VERSION {
                (true, answered)
            } else {
                (
                    false,
                    format!("{answered}: this release ships firmware {x}.{y}.{z}; flash firmware/reject-coprocessor of this release"),
                )
            }
        }
    };
    Finding { what, ok, detail }
}
