//! Replay camera: plays a folder of images (or a list file) at a configured rate, once or
//! looped, like a free-running camera, with optional fault injection.
//!
//! JPEG files are kept as their bytes and decoded at each capture by the same decoder as a
//! live MJPEG camera ([`decode_frame`]); PNG and BMP files are decoded to gray once, when the
//! source opens, and delivered as `GREY` frames through the same function. So a replay
//! exercises the live camera's path from the buffer on: truncated and corrupt JPEGs are
//! detected there, sizes are checked there, and a file that does not decode at all stays in
//! the sequence and is delivered as [`CaptureError::Corrupt`] when its turn comes.
//!
//! Pacing: each frame is due one period after the previous one was due. A reader more than
//! half a period late restarts the cadence from its own capture instead of catching up with a
//! burst, so two frames are always more than half a period apart, as items on a belt are.
//!
//! Fault injection ([`FaultPlan`]) makes the replay misbehave as cameras do: dropped frames
//! (a gap in the sequence numbers), corrupt frames (a JPEG cut short, as when a USB transfer
//! loses packets, or with its start marker destroyed), and a disconnect for a number of
//! seconds during which every capture and every reopen fails, after which the stream restarts
//! with sequence 0 (as a V4L2 stream does).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::camera::decode::{decode_frame, jpeg_size, DecodeError};
use crate::camera::supervisor::Reopen;
use crate::core::pixel::{OutputFormat, PixelFormat};
use crate::core::time::Instant;
use crate::hal::{Camera, CaptureError, Clock, FrameInfo};
use crate::sim::clock::MonotonicClock;
use crate::sim::conveyor::SplitMix64;

const EXTS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// A replayed file's content.
#[derive(Debug)]
pub enum ReplayData {
    /// Decoded 8-bit gray (from PNG or BMP), delivered as a `GREY` frame.
    Gray {
        /// Width.
        width: usize,
        /// Height.
        height: usize,
        /// Pixels, row-major.
        pixels: Vec<u8>,
    },
    /// A JPEG file's bytes, delivered as an MJPEG frame.
    Jpeg {
        /// Width its headers declare.
        width: usize,
        /// Height its headers declare.
        height: usize,
        /// The file.
        bytes: Vec<u8>,
    },
    /// The file could not be read or decoded: why.
    Broken(String),
}

/// One replayed file.
#[derive(Debug)]
pub struct ReplayFrame {
    /// Where it came from.
    pub path: PathBuf,
    /// Its parent folder's name (the class label of a labelled folder).
    pub label: Option<String>,
    /// What will be delivered.
    pub data: ReplayData,
}

impl ReplayFrame {
    /// Width and height, if the file is usable.
    pub fn size(&self) -> Option<(usize, usize)> {
        match &self.data {
            ReplayData::Gray { width, height, .. } | ReplayData::Jpeg { width, height, .. } => Some((*width, *height)),
            ReplayData::Broken(_) => None,
        }
    }

    /// The file's name.
    pub fn file_name(&self) -> &str {
        self.path.file_name().and_then(|n| n.to_str()).unwrap_or("?")
    }
}

/// Faults to inject into a replay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// Seed of the fault sequence (the same seed gives the same faults).
    pub seed: u64,
    /// Fraction of frames dropped (the next frame shows a sequence gap).
    pub drop_fraction: f32,
    /// Fraction of frames delivered corrupt.
    pub corrupt_fraction: f32,
    /// Seconds after the first capture when the camera disconnects (`None`: never).
    pub disconnect_after_s: Option<f32>,
    /// How long the camera stays away.
    pub disconnect_for_s: f32,
    /// Seconds from the start of one disconnect to the next (`None`: it happens once).
    pub disconnect_every_s: Option<f32>,
}

/// What a replay injected, to check the station against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectedFaults {
    /// Frames dropped.
    pub dropped: u64,
    /// Frames delivered corrupt.
    pub corrupted: u64,
    /// Disconnects.
    pub disconnects: u64,
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
    last_index: Option<usize>,
    plan: FaultPlan,
    rng: SplitMix64,
    scratch: Vec<u8>,
    started: Option<Instant>,
    down_until: Option<Instant>,
    disconnects_begun: u32,
    injected: InjectedFaults,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| EXTS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

fn is_jpeg(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
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

/// Widest and tallest image file accepted, pixels: 16 × a 1024-pixel line camera's width, four
/// times the largest frame the shipped tools tile (2048 × 1536 micrographs).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Most memory one image decode may take, bytes (256 MiB: a 16 384 × 16 384 gray image; a
/// tenth of the smallest supported board's RAM would be less, and such files are refused
/// there by this limit before anything is allocated).
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

/// Decode an image file (PNG, JPEG, BMP) to 8-bit gray. A file that declares more than
/// [`MAX_IMAGE_SIDE`] per side or needs more than [`MAX_DECODE_BYTES`] to decode (a
/// decompression bomb) is refused before its pixels are allocated.
pub fn decode_gray(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?;
    let g = img.into_luma8();
    let (w, h) = (g.width() as usize, g.height() as usize);
    Ok((w, h, g.into_raw()))
}

fn load(path: &Path) -> ReplayData {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return ReplayData::Broken(e.to_string()),
    };
    if is_jpeg(path) {
        return match jpeg_size(&bytes) {
            Ok((width, height)) => ReplayData::Jpeg { width, height, bytes },
            Err(e) => ReplayData::Broken(e.to_string()),
        };
    }
    match decode_gray(&bytes) {
        Ok((width, height, pixels)) => ReplayData::Gray { width, height, pixels },
        Err(e) => ReplayData::Broken(e),
    }
}

/// The image files a replay `path` names: a folder (images in it and in its sub-folders) or a
/// text file listing one image path per line (relative to the list file; `#` comments).
pub fn replay_files(path: &Path) -> Result<Vec<PathBuf>> {
    let files = if path.is_dir() {
        list_images(path)?
    } else {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read replay list", path.display()))?;
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
    Ok(files)
}

impl ReplayCamera {
    /// Open `path` (see [`replay_files`]). `rate_fps` paces delivery; `loops` is how many times
    /// to play the set (0 = forever).
    pub fn open(path: &Path, rate_fps: f32, loops: u32, clock: MonotonicClock) -> Result<ReplayCamera> {
        ReplayCamera::with_faults(path, rate_fps, loops, clock, FaultPlan::default())
    }

    /// Open `path` with faults injected as `plan` says.
    pub fn with_faults(
        path: &Path,
        rate_fps: f32,
        loops: u32,
        clock: MonotonicClock,
        plan: FaultPlan,
    ) -> Result<ReplayCamera> {
        if !(rate_fps > 0.0 && rate_fps <= 10_000.0) {
            bail!("replay rate {rate_fps} fps: allowed 0 < rate <= 10000");
        }
        for (name, f) in [
            ("drop_fraction", plan.drop_fraction),
            ("corrupt_fraction", plan.corrupt_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                bail!("replay fault `{name}` = {f}: allowed 0..=1");
            }
        }
        let frames: Vec<ReplayFrame> = replay_files(path)?
            .into_iter()
            .map(|f| ReplayFrame {
                label: f
                    .parent()
                    .and_then(|p| p.file_name())
                    .and_then(|n| n.to_str())
                    .map(str::to_owned),
                data: load(&f),
                path: f,
            })
            .collect();
        let longest_jpeg = frames
            .iter()
            .map(|f| match &f.data {
                ReplayData::Jpeg { bytes, .. } => bytes.len(),
                ReplayData::Gray { pixels, .. } => pixels.len(),
                ReplayData::Broken(_) => 0,
            })
            .max()
            .unwrap_or(0);
        let scratch = if plan.corrupt_fraction > 0.0 {
            vec![0u8; longest_jpeg]
        } else {
            Vec::new()
        };
        Ok(ReplayCamera {
            clock,
            frames,
            period_us: (1_000_000.0 / rate_fps as f64).round() as u64,
            loops,
            next_index: 0,
            played_loops: 0,
            sequence: 0,
            next_at: None,
            last_index: None,
            rng: SplitMix64::new(plan.seed ^ 0x5EED_CA3E_0000_0001),
            plan,
            scratch,
            started: None,
            down_until: None,
            disconnects_begun: 0,
            injected: InjectedFaults::default(),
        })
    }

    /// The frames of one pass.
    pub fn frames(&self) -> &[ReplayFrame] {
        &self.frames
    }

    /// Largest frame, in bytes of `out` (to size the station's buffer once).
    pub fn max_frame_bytes(&self, out: OutputFormat) -> usize {
        self.frames
            .iter()
            .filter_map(ReplayFrame::size)
            .map(|(w, h)| out.frame_bytes(w, h))
            .max()
            .unwrap_or(0)
    }

    /// The file behind the last capture (delivered or broken).
    pub fn last_frame(&self) -> Option<&ReplayFrame> {
        self.last_index.map(|i| &self.frames[i])
    }

    /// The frame period.
    pub fn period_us(&self) -> u64 {
        self.period_us
    }

    /// When the next frame will be delivered.
    pub fn next_frame_at(&self) -> Option<Instant> {
        self.next_at
    }

    /// The faults injected so far.
    pub fn injected(&self) -> InjectedFaults {
        self.injected
    }

    fn chance(&mut self, fraction: f32) -> bool {
        fraction > 0.0 && ((self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < fraction as f64
    }
}

impl Camera for ReplayCamera {
    fn capture(&mut self, buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
        if self.down_until.is_some() {
            return Err(CaptureError::Disconnected);
        }
        loop {
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
            let started = *self.started.get_or_insert(captured);
            // Free-run pacing: the next frame is due one period after this one was due. A
            // capture more than half a period late (a stalled reader) starts the cadence again
            // from itself: no burst of catch-up frames, so two frames are always more than half
            // a period apart, as items on a belt are (two items stamped a millisecond apart
            // would sit in one reject pulse).
            self.next_at = Some(if captured.us_since(due) > self.period_us / 2 {
                captured.add_us(self.period_us)
            } else {
                due.add_us(self.period_us)
            });
            let repeats = self.plan.disconnect_every_s.is_some() || self.disconnects_begun == 0;
            if let (Some(after_s), true) = (self.plan.disconnect_after_s, repeats) {
                let every_s = self.plan.disconnect_every_s.unwrap_or(0.0).max(0.0) as f64;
                let at_s = after_s.max(0.0) as f64 + every_s * self.disconnects_begun as f64;
                let at = started.add_us((at_s * 1e6) as u64);
                if captured >= at {
                    self.disconnects_begun += 1;
                    self.injected.disconnects += 1;
                    self.down_until = Some(captured.add_us((self.plan.disconnect_for_s.max(0.0) as f64 * 1e6) as u64));
                    return Err(CaptureError::Disconnected);
                }
            }
            let sequence = self.sequence;
            self.sequence = self.sequence.wrapping_add(1);
            let index = self.next_index;
            self.next_index += 1;
            if self.chance(self.plan.drop_fraction) {
                self.injected.dropped += 1;
                continue;
            }
            self.last_index = Some(index);
            let corrupt = self.chance(self.plan.corrupt_fraction);
            let cut = self.rng.next_u64();
            let (format, bytes, expect): (PixelFormat, &[u8], Option<(usize, usize)>) = match &self.frames[index].data {
                ReplayData::Broken(_) => return Err(CaptureError::Corrupt { sequence }),
                ReplayData::Gray { width, height, pixels } => (PixelFormat::Grey, pixels, Some((*width, *height))),
                ReplayData::Jpeg { bytes, .. } => (PixelFormat::Mjpeg, bytes, None),
            };
            let bytes = if corrupt {
                self.injected.corrupted += 1;
                let s = &mut self.scratch[..bytes.len()];
                s.copy_from_slice(bytes);
                if format == PixelFormat::Mjpeg && cut.is_multiple_of(2) {
                    // The start marker destroyed.
                    s[1] = 0x00;
                    &self.scratch[..bytes.len()]
                } else {
                    // Cut short somewhere in its second half: a lost USB transfer.
                    let keep = bytes.len() / 2 + (cut as usize >> 1) % (bytes.len() / 2).max(1);
                    &self.scratch[..keep.min(bytes.len() - 1)]
                }
            } else {
                bytes
            };
            return match decode_frame(format, bytes, expect, None, OutputFormat::Gray, buf) {
                Ok(d) => Ok(FrameInfo {
                    width: d.width,
                    height: d.height,
                    stride: d.width,
                    sequence,
                    captured,
                }),
                Err(DecodeError::Truncated { .. }) | Err(DecodeError::Corrupt(_)) => {
                    Err(CaptureError::Corrupt { sequence })
                }
                Err(DecodeError::WrongSize { width, height }) => Err(CaptureError::WrongSize {
                    sequence,
                    width,
                    height,
                }),
                Err(DecodeError::BufferTooSmall { .. }) => {
                    let (width, height) = self.frames[index].size().unwrap_or((0, 0));
                    Err(CaptureError::WrongSize {
                        sequence,
                        width,
                        height,
                    })
                }
            };
        }
    }
}

impl Reopen for ReplayCamera {
    /// Triggered replay: the next file is exposed at the trigger (or now, if that passed),
    /// instead of at the replay's own rate.
    fn capture_after(&mut self, after: Option<Instant>, buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
        if let Some(t) = after {
            self.next_at = Some(t);
        }
        self.capture(buf)
    }

    fn reopen(&mut self) -> Result<(), CaptureError> {
        match self.down_until {
            Some(until) if self.clock.now() < until => Err(CaptureError::Disconnected),
            _ => {
                self.down_until = None;
                // A reopened V4L2 stream numbers its frames from 0 again; pacing restarts.
                self.sequence = 0;
                self.next_at = None;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_reader_gets_no_burst_of_frames_closer_than_half_a_period() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/neu_samples");
        let clock = MonotonicClock::default();
        let mut cam = ReplayCamera::open(&dir, 50.0, 0, clock).unwrap();
        let mut buf = vec![0u8; cam.max_frame_bytes(OutputFormat::Gray)];
        let mut stamps = vec![cam.capture(&mut buf).unwrap().captured];
        // The reader stalls for three and a half periods, then reads as fast as it can.
        std::thread::sleep(std::time::Duration::from_millis(70));
        for _ in 0..4 {
            stamps.push(cam.capture(&mut buf).unwrap().captured);
        }
        let half = cam.period_us() / 2;
        for w in stamps.windows(2) {
            assert!(
                w[1].us_since(w[0]) > half,
                "frames {} µs apart: {stamps:?}",
                w[1].us_since(w[0])
            );
        }
    }
}
