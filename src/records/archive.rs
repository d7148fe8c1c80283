//! The reject archive: for each archived item the frame (`.png`), the overlay with the tool's
//! regions (`-overlay.png`) and a JSON record (`.json`), under `<dir>/<yyyy-mm-dd>/`, named
//! `<unix ms>-<item id>-<action>`. The folder has a size cap; the oldest entries go first.
//!
//! The frame path hands frames over in buffers from a fixed pool (no allocation, never waits);
//! when the pool or the queue is empty the entry is dropped and counted. Disk errors (full,
//! read-only) are counted and raise the `DISK FULL` fault until a write succeeds again.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::log::{LogRecord, FAULT_NAMES};
use super::Health;
use crate::core::decision::{Action, Outcome};
use crate::core::MAX_CLASSES;

/// Most regions drawn and recorded per archived item.
pub const MAX_ARCHIVE_BOXES: usize = 16;

/// One item to archive.
pub struct ArchiveJob {
    /// The decision record (its `seq` is not known yet: it is 0).
    pub record: LogRecord,
    /// The tool's scores, per class (first `n_scores`).
    pub scores: [f32; MAX_CLASSES],
    /// How many scores are valid.
    pub n_scores: usize,
    /// Regions (x0, y0, x1, y1) in frame pixels.
    pub boxes: heapless::Vec<(u32, u32, u32, u32), MAX_ARCHIVE_BOXES>,
    /// The frame, 8-bit grey, `width` x `height`, rows `stride` apart (a pooled buffer).
    pub frame: Vec<u8>,
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Bytes from one row to the next.
    pub stride: usize,
    /// Archived as a sample of accepted items rather than as a reject.
    pub sampled: bool,
}

/// One entry on disk.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Decision time, ms since 1970.
    pub unix_ms: u64,
    /// Item id.
    pub item: u32,
    /// Path without the suffixes (`…/<day>/<ms>-<item>-<action>`).
    pub stem: PathBuf,
    /// Bytes of its files.
    pub bytes: u64,
}

fn entry_files(stem: &Path) -> [PathBuf; 3] {
    let s = stem.as_os_str().to_string_lossy().into_owned();
    [
        PathBuf::from(format!("{s}.png")),
        PathBuf::from(format!("{s}-overlay.png")),
        PathBuf::from(format!("{s}.json")),
    ]
}

/// The entries of an archive folder, oldest first.
pub fn scan(dir: &Path) -> Result<Vec<Entry>> {
    let mut v: Vec<Entry> = Vec::new();
    let days = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list the archive", dir.display())),
    };
    for day in days.flatten() {
        if !day.path().is_dir() {
            continue;
        }
        let Ok(files) = std::fs::read_dir(day.path()) else {
            continue;
        };
        let mut by_stem: std::collections::BTreeMap<String, (u64, u32, u64)> = Default::default();
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let stem = name
                .strip_suffix("-overlay.png")
                .or_else(|| name.strip_suffix(".png"))
                .or_else(|| name.strip_suffix(".json"));
            let Some(stem) = stem else { continue };
            let mut parts = stem.splitn(3, '-');
            let (Some(ms), Some(item)) = (
                parts.next().and_then(|s| s.parse::<u64>().ok()),
                parts.next().and_then(|s| s.parse::<u32>().ok()),
            ) else {
                continue;
            };
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            let e = by_stem.entry(stem.to_string()).or_insert((ms, item, 0));
            e.2 += size;
        }
        for (stem, (ms, item, bytes)) in by_stem {
            v.push(Entry {
                unix_ms: ms,
                item,
                stem: day.path().join(stem),
                bytes,
            });
        }
    }
    v.sort_by_key(|e| (e.unix_ms, e.item));
    Ok(v)
}

/// Delete one entry's files (and its day folder once empty).
pub fn remove(e: &Entry) {
    for f in entry_files(&e.stem) {
        let _ = std::fs::remove_file(f);
    }
    if let Some(day) = e.stem.parent() {
        let _ = std::fs::remove_dir(day); // only succeeds when empty
    }
}

/// What the archive thread needs.
pub struct ArchiveSetup {
    /// The folder.
    pub dir: PathBuf,
    /// Size cap, bytes.
    pub max_bytes: u64,
    /// Class names.
    pub classes: Vec<String>,
    /// Model name and version, for the JSON records.
    pub model: String,
    /// Station name.
    pub station: String,
    /// Recipe names, by the index records carry.
    pub recipes: Vec<String>,
    /// Each recipe's model name, version and precision.
    pub recipe_models: Vec<String>,
}

/// The archive thread: write each job, evict beyond the cap, hand the buffer back.
pub fn run(setup: ArchiveSetup, jobs: Receiver<ArchiveJob>, free: SyncSender<Vec<u8>>, health: Arc<Health>) {
    let mut index: VecDeque<Entry> = match scan(&setup.dir) {
        Ok(v) => v.into(),
        Err(_) => VecDeque::new(),
    };
    let mut total: u64 = index.iter().map(|e| e.bytes).sum();
    health.archive_bytes.store(total, Ordering::Relaxed);
    while let Ok(job) = jobs.recv() {
        match write_entry(&setup, &job) {
            Ok(e) => {
                total += e.bytes;
                index.push_back(e);
                health.archive_written.fetch_add(1, Ordering::Relaxed);
                health.archive_fault.store(false, Ordering::Relaxed);
            }
            Err(_) => {
                health.archive_errors.fetch_add(1, Ordering::Relaxed);
                health.archive_fault.store(true, Ordering::Relaxed);
            }
        }
        while total > setup.max_bytes {
            let Some(old) = index.pop_front() else { break };
            remove(&old);
            total = total.saturating_sub(old.bytes);
            health.archive_evicted.fetch_add(1, Ordering::Relaxed);
        }
        health.archive_bytes.store(total, Ordering::Relaxed);
        let _ = free.try_send(job.frame);
    }
}

fn action_word(r: &LogRecord) -> &'static str {
    match (r.outcome, r.action) {
        (Outcome::FailSafe, _) => "failsafe",
        (_, Action::Reject) => "reject",
        (_, Action::Accept) => "accept",
    }
}

fn write_entry(s: &ArchiveSetup, job: &ArchiveJob) -> std::io::Result<Entry> {
    let r = &job.record;
    let day = {
        let (d, _) = super::store::day_and_shift(r.unix_ms, &[0]);
        format!("{:04}-{:02}-{:02}", d / 10000, d / 100 % 100, d % 100)
    };
    let folder = s.dir.join(day);
    std::fs::create_dir_all(&folder)?;
    let stem = folder.join(format!("{}-{}-{}", r.unix_ms, r.item, action_word(r)));
    let files = entry_files(&stem);
    let res = (|| -> std::io::Result<u64> {
        let (w, h) = (job.width, job.height);
        let mut grey = image::GrayImage::new(w as u32, h as u32);
        for y in 0..h {
            let row = &job.frame[y * job.stride..y * job.stride + w];
            grey.as_mut()[y * w..(y + 1) * w].copy_from_slice(row);
        }
        let mut overlay = image::DynamicImage::ImageLuma8(grey.clone()).to_rgb8();
        for &(x0, y0, x1, y1) in &job.boxes {
            draw_box(&mut overlay, x0, y0, x1, y1);
        }
        let to_io = |e: image::ImageError| match e {
            image::ImageError::IoError(e) => e,
            other => std::io::Error::other(other),
        };
        grey.save_with_format(&files[0], image::ImageFormat::Png)
            .map_err(to_io)?;
        overlay
            .save_with_format(&files[1], image::ImageFormat::Png)
            .map_err(to_io)?;
        let scores: serde_json::Map<String, serde_json::Value> = s
            .classes
            .iter()
            .zip(job.scores.iter().take(job.n_scores))
            .map(|(n, v)| (n.clone(), serde_json::json!((*v * 1e4).round() / 1e4)))
            .collect();
        let boxes: Vec<[u32; 4]> = job.boxes.iter().map(|b| [b.0, b.1, b.2, b.3]).collect();
        let json = serde_json::json!({
            "station": s.station,
            "unix_ms": r.unix_ms,
            "item": r.item,
            "frame_sequence": r.frame_seq,
            "action": if r.action == Action::Reject { "reject" } else { "accept" },
            "outcome": r.outcome.name(),
            "class": r.class.and_then(|c| s.classes.get(c as usize)),
            "score": r.score,
            "scores": scores,
            "regions": boxes,
            "fault": (r.fault != 0).then(|| FAULT_NAMES[r.fault as usize]),
            "latency_ms": r.latency_us as f64 / 1000.0,
            "model": s.recipe_models.get(r.recipe as usize).unwrap_or(&s.model),
            "recipe": s.recipes.get(r.recipe as usize),
            "sampled": job.sampled,
            "frame": files[0].file_name().map(|n| n.to_string_lossy().into_owned()),
            "overlay": files[1].file_name().map(|n| n.to_string_lossy().into_owned()),
        });
        let text = serde_json::to_vec_pretty(&json).map_err(std::io::Error::other)?;
        std::fs::write(&files[2], text)?;
        let mut bytes = 0;
        for f in &files {
            bytes += std::fs::metadata(f)?.len();
        }
        Ok(bytes)
    })();
    match res {
        Ok(bytes) => Ok(Entry {
            unix_ms: r.unix_ms,
            item: r.item,
            stem,
            bytes,
        }),
        Err(e) => {
            // Nothing half-written stays behind.
            for f in &files {
                let _ = std::fs::remove_file(f);
            }
            let _ = std::fs::remove_dir(&folder);
            Err(e)
        }
    }
}

fn draw_box(img: &mut image::RgbImage, x0: u32, y0: u32, x1: u32, y1: u32) {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let (x0, x1) = (x0.min(w - 1), x1.min(w - 1));
    let (y0, y1) = (y0.min(h - 1), y1.min(h - 1));
    let red = image::Rgb([255, 32, 32]);
    for t in 0..2u32 {
        for x in x0..=x1 {
            img.put_pixel(x, (y0 + t).min(h - 1), red);
            img.put_pixel(x, y1.saturating_sub(t), red);
        }
        for y in y0..=y1 {
            img.put_pixel((x0 + t).min(w - 1), y, red);
            img.put_pixel(x1.saturating_sub(t), y, red);
        }
    }
}
