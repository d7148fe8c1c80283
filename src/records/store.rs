//! Persisted counters: totals since the records folder was made, per production day and per
//! shift, kept in `counters.json` and replaced atomically (temporary file, fsync, rename,
//! fsync of the folder). The file names the log position it covers; on start-up the decision
//! log's later records are replayed on top of it, so the counters always equal the log.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::log::{sync_dir, LogRecord};
use crate::core::decision::{Action, Outcome};

/// The counters file's name in the records folder.
pub const COUNTERS_FILE: &str = "counters.json";

/// Counts over some period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Items decided.
    pub inspected: u64,
    /// Items let through.
    pub accepted: u64,
    /// Items rejected, whatever the reason.
    pub rejected: u64,
    /// Confident detections of a reject class, per class (the store's class order).
    pub rejected_per_class: Vec<u64>,
    /// Items where no head was confident.
    pub uncertain: u64,
    /// Items without a valid decision (the fail-safe action applied).
    pub failsafe: u64,
    /// Items that carried a fault (broken or missing frame, model error, late decision…).
    pub faults: u64,
}

impl Counts {
    fn add(&mut self, r: &LogRecord, classes: usize) {
        self.inspected += 1;
        match r.action {
            Action::Accept => self.accepted += 1,
            Action::Reject => self.rejected += 1,
        }
        match r.outcome {
            Outcome::Reject => {
                if let Some(c) = r.class.map(usize::from).filter(|c| *c < classes) {
                    if self.rejected_per_class.len() < classes {
                        self.rejected_per_class.resize(classes, 0);
                    }
                    self.rejected_per_class[c] += 1;
                }
            }
            Outcome::Uncertain => self.uncertain += 1,
            Outcome::FailSafe => self.failsafe += 1,
            Outcome::Accept => {}
        }
        if r.fault != 0 {
            self.faults += 1;
        }
    }
}

/// Counts of one production day, or of one shift of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// The production day, `yyyy-mm-dd` (the day its first shift began).
    pub day: String,
    /// Shift index (0 = the first configured shift start), for shift periods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<u8>,
    /// The counts.
    pub counts: Counts,
}

/// Everything in `counters.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// File format version.
    pub version: u32,
    /// Station name.
    pub station: String,
    /// Class names, in the order of `rejected_per_class`.
    pub classes: Vec<String>,
    /// Recipe names, by the index the records carry (the profile's at the last start).
    #[serde(default)]
    pub recipes: Vec<String>,
    /// Log records counted (the next record's sequence number).
    pub next_seq: u64,
    /// When the file was written, milliseconds since 1970.
    pub saved_unix_ms: u64,
    /// Since the records folder was made.
    pub total: Counts,
    /// Per production day, oldest first.
    pub days: Vec<Period>,
    /// Per shift, oldest first.
    pub shifts: Vec<Period>,
}

fn day_string(day: u32) -> String {
    format!("{:04}-{:02}-{:02}", day / 10000, day / 100 % 100, day % 100)
}

impl Store {
    /// An empty store.
    pub fn new(station: &str, classes: &[String]) -> Store {
        Store {
            version: 1,
            station: station.to_string(),
            classes: classes.to_vec(),
            ..Store::default()
        }
    }

    /// Count one record (records must come in sequence; earlier ones are ignored).
    pub fn apply(&mut self, r: &LogRecord, keep_days: usize) {
        if r.seq < self.next_seq {
            return;
        }
        self.next_seq = r.seq + 1;
        let n = self.classes.len();
        self.total.add(r, n);
        let day = day_string(r.day);
        if self.days.last().map(|p| p.day != day).unwrap_or(true) {
            self.days.push(Period {
                day: day.clone(),
                shift: None,
                counts: Counts::default(),
            });
        }
        if let Some(p) = self.days.last_mut() {
            p.counts.add(r, n);
        }
        if self
            .shifts
            .last()
            .map(|p| p.day != day || p.shift != Some(r.shift))
            .unwrap_or(true)
        {
            self.shifts.push(Period {
                day,
                shift: Some(r.shift),
                counts: Counts::default(),
            });
        }
        if let Some(p) = self.shifts.last_mut() {
            p.counts.add(r, n);
        }
        let keep = keep_days.max(1);
        if self.days.len() > keep {
            self.days.drain(..self.days.len() - keep);
        }
        if let Some(first) = self.days.first().map(|p| p.day.clone()) {
            self.shifts.retain(|p| p.day >= first);
        }
    }

    /// Read `counters.json` from `dir` (`None` when there is none yet).
    pub fn load(dir: &Path) -> Result<Option<Store>> {
        let path = dir.join(COUNTERS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{}: not a counters file", path.display()))
    }

    /// Replace `counters.json` in `dir` atomically and durably.
    pub fn save(&mut self, dir: &Path, now_unix_ms: u64) -> std::io::Result<()> {
        self.saved_unix_ms = now_unix_ms;
        let tmp = dir.join(".counters.json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(COUNTERS_FILE))?;
        sync_dir(dir);
        Ok(())
    }

    /// The counts as JSON, with class names.
    pub fn counts_json(&self, c: &Counts) -> serde_json::Value {
        let per: serde_json::Map<String, serde_json::Value> = self
            .classes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), c.rejected_per_class.get(i).copied().unwrap_or(0).into()))
            .collect();
        serde_json::json!({
            "inspected": c.inspected,
            "accepted": c.accepted,
            "rejected": c.rejected,
            "rejected_per_class": per,
            "uncertain": c.uncertain,
            "failsafe": c.failsafe,
            "faults": c.faults,
        })
    }
}

/// Local production day (`yyyymmdd`) and shift index of a wall-clock time. `shift_starts` are
/// minutes after local midnight, ascending; before the first start of a day it is still the
/// previous day's last shift.
pub fn day_and_shift(unix_ms: u64, shift_starts: &[u16]) -> (u32, u8) {
    let (mut ymd, minutes) = local_time(unix_ms);
    let first = shift_starts.first().copied().unwrap_or(0);
    if minutes < first {
        ymd = local_time(unix_ms.saturating_sub(minutes as u64 * 60_000 + 60_000)).0;
        return (ymd, shift_starts.len().saturating_sub(1) as u8);
    }
    let shift = shift_starts.iter().rposition(|s| *s <= minutes).unwrap_or(0);
    (ymd, shift as u8)
}

/// Local calendar date (`yyyymmdd`) and minutes after local midnight.
fn local_time(unix_ms: u64) -> (u32, u16) {
    // The C library's own time_t (64 bits on aarch64 and musl, 32 on armv7 glibc); the libc
    // crate marks its musl alias deprecated while musl moves every target to 64 bits.
    #[allow(deprecated)]
    let t = (unix_ms / 1000) as libc::time_t;
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers are valid.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return (19700101, 0);
        }
        tm
    };
    let ymd = (tm.tm_year + 1900) as u32 * 10000 + (tm.tm_mon + 1) as u32 * 100 + tm.tm_mday as u32;
    (ymd, (tm.tm_hour * 60 + tm.tm_min) as u16)
}

/// Milliseconds since 1970 now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, day: u32, shift: u8, reject: bool) -> LogRecord {
        LogRecord {
            seq,
            unix_ms: 0,
            day,
            shift,
            item: seq as u32,
            frame_seq: 0,
            outcome: if reject { Outcome::Reject } else { Outcome::Accept },
            action: if reject { Action::Reject } else { Action::Accept },
            class: Some(1),
            fault: 0,
            score: 0.9,
            latency_us: 1,
            recipe: 0,
        }
    }

    #[test]
    fn days_and_shifts_add_up_to_the_total() {
        let mut s = Store::new("t", &["a".into(), "b".into()]);
        let mut seq = 0;
        for (day, shift, n) in [(20261129, 2, 5), (20261130, 0, 7), (20261130, 1, 3), (20261201, 0, 4)] {
            for k in 0..n {
                s.apply(&rec(seq, day, shift, k % 2 == 0), 2);
                seq += 1;
            }
        }
        // A record already counted is ignored.
        s.apply(&rec(3, 20261201, 0, true), 2);
        assert_eq!(s.total.inspected, 19);
        assert_eq!(s.next_seq, 19);
        assert_eq!(s.days.len(), 2, "keep_days = 2");
        assert_eq!(s.days[0].day, "2026-11-30");
        assert_eq!(s.days[0].counts.inspected, 10);
        assert_eq!(s.shifts.len(), 3);
        assert_eq!(s.shifts.iter().map(|p| p.counts.inspected).sum::<u64>(), 14);
        assert_eq!(s.total.rejected_per_class, vec![0, s.total.rejected]);
    }

    #[test]
    fn the_night_shift_belongs_to_the_day_it_began() {
        // Shifts at 06:00, 14:00, 22:00 local time.
        let starts = [360, 840, 1320];
        let noon = 1_764_504_000_000u64; // some instant
        let (d0, _) = day_and_shift(noon, &starts);
        let (_, m) = local_time(noon);
        let midnight = noon - m as u64 * 60_000 - (noon / 1000 % 60) * 1000 - noon % 1000;
        let at = |min: u64| midnight + min * 60_000;
        assert_eq!(day_and_shift(at(6 * 60), &starts), (d0, 0));
        assert_eq!(day_and_shift(at(13 * 60 + 59), &starts), (d0, 0));
        assert_eq!(day_and_shift(at(14 * 60), &starts), (d0, 1));
        assert_eq!(day_and_shift(at(23 * 60), &starts), (d0, 2));
        let (next_day, s) = day_and_shift(at(24 * 60 + 5 * 60), &starts);
        assert_eq!(
            (next_day, s),
            (d0, 2),
            "05:00 the next morning is still the night shift"
        );
        assert_ne!(day_and_shift(at(24 * 60 + 6 * 60), &starts).0, d0);
    }
}
