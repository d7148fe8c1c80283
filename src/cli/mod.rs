//! The `ferroscope` command's parts: one module per command group, and what they share.
//!
//! - every command returns its exit code or an error; `main` prints the error and exits 2;
//! - a command that finds a problem in the data it was given (an image that failed, a check
//!   that did not pass) exits 1 and says which;
//! - commands that read a station profile find it by one documented order ([`profile`]).

pub mod bench;
pub mod camera;
pub mod check;
pub mod eval;
pub mod grains;
pub mod heldout;
pub mod infer;
pub mod load;
pub mod recipe;
pub mod records;
pub mod run;
pub mod screen;
pub mod segment;
pub mod simulate;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::ValueEnum;

use ferroscope::core::decision::{Action, ClassRule, DecisionRules};
use ferroscope::model::manifest::{Manifest, Precision};
use ferroscope::sim::replay::decode_gray;
use ferroscope::station::config::{find_profile, ProfileSource};

/// `--precision`: which model file of a manifest to run.
#[derive(Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    Int8,
    F32,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::Int8 => Precision::Int8,
            PrecisionArg::F32 => Precision::F32,
        }
    }
}

/// Rules straight from the manifest: every class rejects at its threshold.
pub fn manifest_rules(m: &Manifest) -> Result<DecisionRules> {
    let rules: Vec<ClassRule> = m
        .classes
        .iter()
        .map(|c| ClassRule {
            reject: true,
            min_score: c.threshold,
        })
        .collect();
    DecisionRules::new(&rules, Action::Reject, Action::Reject)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", m.path.display()))
}

pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Accept => "ACCEPT",
        Action::Reject => "REJECT",
    }
}

/// `--symmetries`: 1, 2, 4 or 8.
pub fn parse_symmetries(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if ferroscope::model::manifest::SYMMETRIES.contains(&n) => Ok(n),
        _ => Err(format!("{s}: allowed 1, 2, 4 or 8")),
    }
}

/// Read an image file as 8-bit gray: (width, height, pixels).
pub fn read_gray(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read image", path.display()))?;
    decode_gray(&bytes).map_err(|e| anyhow::anyhow!("{}: not a decodable image: {e}", path.display()))
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize - 1;
    v[i.min(v.len() - 1)]
}

/// The station profile a command runs with: `config` (`--config`) or the first found in the
/// documented order (`$FERROSCOPE_CONFIG`, `/etc/ferroscope/station.toml`,
/// `boards/host-sim.toml` under the current directory). Says on stderr which file and why.
pub fn profile(config: Option<&Path>) -> Result<PathBuf> {
    let (path, source) = find_profile(config)?;
    eprintln!("profile {} ({})", path.display(), source.describe());
    if source == ProfileSource::Env && !path.is_file() {
        anyhow::bail!(
            "{}: named by $FERROSCOPE_CONFIG, but there is no such file",
            path.display()
        );
    }
    Ok(path)
}
