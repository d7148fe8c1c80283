//! Replay camera: plays a folder of images (or a list file) at a configured rate, once or
//! looped, like a free-running camera.
//!
//! All files are read and decoded when the source opens, so playing a frame is a copy into
//! the caller's buffer. A file that does not decode stays in the sequence and is delivered as
//! [`CaptureError::Corrupt`] when its turn comes, exactly as a broken frame from a camera.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::core::time::Instant;
use crate::hal::{Camera, CaptureError, Clock, FrameInfo};
use crate::sim::clock::MonotonicClock;

const EXTS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// One replayed file.
#[derive(Debug)]
pub struct ReplayFrame {
    /// Where it came from.
    pub path: PathBuf,
    /// Its parent folder's name (the class label of a labelled folder).
    pub label: Option<String>,
    /// Decoded pixels, or why decoding failed.
    pub pixels: Result<(usize, usize, Vec<u8>), String>,
}

/// A replay source.
pub struct ReplayCamera {
    clock: MonotonicClock,
    frames: Vec<ReplayFrame>,
    period_us: u64,
    loops: u32,
    next_index: usize,
    played_loops: u32,
    sequence: u32,
    next_at: Option<Instant>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| EXTS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Image files of `dir` and of its immediate sub-folders, sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list folder", dir.display()))?;
    for entry in rd {
        let p = entry?.path();
        if p.is_dir() {
            for e in std::fs::read_dir(&p).with_context(|| format!("{}: cannot list folder", p.display()))? {
                let q = e?.path();
                if q.is_file() && is_image(&q) {
                    out.push(q);
                }
            }
        } else if p.is_file() && is_image(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Decode an image file to 8-bit gray.
pub fn decode_gray(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), String> {
    let img = image::load_from_memory(bytes).map_err(|e| e.to_string())?;
    let g = img.into_luma8();
    let (w, h) = (g.width() as usize, g.height() as usize);
    Ok((w, h, g.into_raw()))
}

impl ReplayCamera {
    /// Open `path`: a folder (images in it and in its sub-folders) or a text file listing one
    /// image path per line (relative to the list file). `rate_fps` paces delivery; `loops`
    /// is how many times to play the set (0 = forever).
    pub fn open(path: &Path, rate_fps: f32, loops: u32, clock: MonotonicClock) -> Result<ReplayCamera> {
        if !(rate_fps > 0.0 && rate_fps <= 10_000.0) {
            bail!("replay rate {rate_fps} fps: allowed 0 < rate <= 10000");
        }
        let files = if path.is_dir() {
            list_images(path)?
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read replay list", path.display()))?;
            let base = path.parent().unwrap_or(Path::new("."));
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| base.join(l))
                .collect()
        };
        if files.is_empty() {
            bail!("{}: no images (png, jpg, bmp) to replay", path.display());
        }
        let mut frames = Vec::with_capacity(files.len());
        for f in files {
            let pixels = match std::fs::read(&f) {
                Ok(bytes) => decode_gray(&bytes),
                Err(e) => Err(e.to_string()),
            };
            let label = f
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .map(str::to_owned);
            frames.push(ReplayFrame { path: f, label, pixels });
        }
        Ok(ReplayCamera {
            clock,
            frames,
            period_us: (1_000_000.0 / rate_fps as f64).round() as u64,
            loops,
            next_index: 0,
            played_loops: 0,
            sequence: 0,
            next_at: None,
        })
    }

    /// The frames of one pass.
    pub fn frames(&self) -> &[ReplayFrame] {
        &self.frames
    }

    /// Largest frame, in bytes (to size the station's buffer once).
    pub fn max_frame_bytes(&self) -> usize {
        self.frames
            .iter()
            .filter_map(|f| f.pixels.as_ref().ok())
            .map(|(w, h, _)| w * h)
            .max()
            .unwrap_or(0)
    }

    /// The file behind sequence number `seq`.
    pub fn frame_for_sequence(&self, seq: u32) -> &ReplayFrame {
        &self.frames[seq as usize % self.frames.len()]
    }

    /// When the next frame will be delivered.
    pub fn next_frame_at(&self) -> Option<Instant> {
        self.next_at
    }
}

impl Camera for ReplayCamera {
    fn capture(&mut self, buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
        if self.next_index >= self.frames.len() {
            self.played_loops += 1;
            if self.loops != 0 && self.played_loops >= self.loops {
                return Err(CaptureError::EndOfStream);
            }
            self.next_index = 0;
        }
        let due = *self.next_at.get_or_insert_with(|| self.clock.now());
        self.clock.sleep_until(due);
        let captured = self.clock.now();
        // Free-run pacing: the next frame is due one period after this one was due.
        self.next_at = Some(
            due.add_us(self.period_us)
                .max(Instant::from_us(captured.us.saturating_sub(self.period_us))),
        );
        let sequence = self.sequence;
        self.sequence = self.sequence.wrapping_add(1);
        let frame = &self.frames[self.next_index];
        self.next_index += 1;
        match &frame.pixels {
            Err(_) => Err(CaptureError::Corrupt { sequence }),
            Ok((w, h, px)) => {
                if px.len() > buf.len() {
                    return Err(CaptureError::WrongSize {
                        sequence,
                        width: *w,
                        height: *h,
                    });
                }
                buf[..px.len()].copy_from_slice(px);
                Ok(FrameInfo {
                    width: *w,
                    height: *h,
                    stride: *w,
                    sequence,
                    captured,
                })
            }
        }
    }
}
