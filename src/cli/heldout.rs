//! The held-out log: every scoring of a held-out list leaves one line in
//! `models/heldout_log.jsonl`.
//!
//! A held-out list is spent by looking at it, so each look is recorded: `ferroscope eval …
//! --list L --heldout-log models/heldout_log.jsonl --changed "what changed"` appends
//! `{"date", "model", "version", "precision", "model_file", "model_sha256", "list", "metrics",
//! "changed"}` after the evaluation, one JSON object per line.
//!
//! Guarantees:
//! - the line names the exact model file scored: its sha256 is computed from the file that ran,
//!   and must equal the manifest's (else the scoring is refused before it starts);
//! - a scoring of a whole folder (no `--list`) is not a held-out scoring and is refused;
//! - the line is appended with one `write` of the whole line and flushed to disk, so an
//!   interrupted append leaves at most a torn last line, never a changed earlier one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use sha2::{Digest, Sha256};

use ferroscope::model::manifest::Precision;

/// `--heldout-log` and `--changed`, shared by the `eval` commands.
#[derive(Args, Clone, Debug, Default)]
pub struct HeldoutArgs {
    /// Append this scoring to a held-out log (JSON lines), e.g. models/heldout_log.jsonl;
    /// needs --list and --changed.
    #[arg(long, requires = "changed")]
    pub heldout_log: Option<PathBuf>,
    /// What changed since the model's last line in the held-out log.
    #[arg(long, requires = "heldout_log")]
    pub changed: Option<String>,
}

/// What [`HeldoutArgs::prepare`] found, to [`Pending::append`] once the metrics exist.
pub struct Pending {
    log: PathBuf,
    line: serde_json::Value,
}

impl HeldoutArgs {
    /// Check the request before the evaluation runs: a list is given and the model file is the
    /// manifest's. `None` when no log was asked for.
    pub fn prepare(&self, manifest: &Path, precision: Precision, list: Option<&Path>) -> Result<Option<Pending>> {
        let Some(log) = &self.heldout_log else {
            return Ok(None);
        };
        let Some(list) = list else {
            bail!("--heldout-log records the scoring of a held-out list: give it with --list");
        };
        // Any tool's manifest (grains included): only `[model]` is read here.
        let text = std::fs::read_to_string(manifest).with_context(|| format!("{}: cannot read", manifest.display()))?;
        let table: toml::Table = toml::from_str(&text).with_context(|| format!("{}: not TOML", manifest.display()))?;
        let field = |k: &str| {
            table
                .get("model")
                .and_then(|m| m.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let need = |k: &str| field(k).with_context(|| format!("{}: no field `model.{k}`", manifest.display()));
        let (name, version) = (need("name")?, need("version")?);
        let (file, want) = match precision {
            Precision::Int8 => (need("file")?, Some(need("sha256")?)),
            Precision::F32 => (field("f32_file").map_or_else(|| need("file"), Ok)?, field("f32_sha256")),
        };
        let path = manifest.parent().unwrap_or(Path::new(".")).join(&file);
        let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read the model file", path.display()))?;
        let sha = format!("{:x}", Sha256::digest(&bytes));
        if let Some(want) = want {
            if !want.eq_ignore_ascii_case(&sha) {
                bail!(
                    "{}: sha256 {sha} is not the manifest's {want} ({})",
                    path.display(),
                    manifest.display()
                );
            }
        }
        Ok(Some(Pending {
            log: log.clone(),
            line: json!({
                "model": name,
                "version": version,
                "precision": precision.name(),
                "model_file": file,
                "model_sha256": sha,
                "list": list.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
                "changed": self.changed.clone().unwrap_or_default(),
            }),
        }))
    }
}

impl Pending {
    /// Append the line with `metrics` and the date (UTC, seconds).
    pub fn append(mut self, metrics: &serde_json::Value) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut obj = serde_json::Map::new();
        obj.insert("date".into(), json!(utc_timestamp(now)));
        if let Some(fields) = self.line.as_object_mut() {
            obj.append(fields);
        }
        obj.insert("metrics".into(), metrics.clone());
        let mut text = serde_json::to_string(&serde_json::Value::Object(obj))?;
        text.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("{}: cannot open the held-out log", self.log.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("{}: cannot append to the held-out log", self.log.display()))?;
        Ok(())
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of `secs` since 1970 (proleptic Gregorian, UTC).
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to civil date (H. Hinnant's algorithm), era of 400 years = 146 097 days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc_timestamp;

    #[test]
    fn timestamps_of_known_instants() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(utc_timestamp(4_102_444_800), "2100-01-01T00:00:00Z");
    }
}
