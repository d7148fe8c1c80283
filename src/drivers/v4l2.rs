//! V4L2 cameras (USB UVC, CSI through a V4L2 capture node).
//!
//! The `v4l` crate opens the device and negotiates the format, frame rate and controls. The
//! streaming loop is ours, on the kernel's MMAP interface through `v4l`'s ioctl bindings,
//! because the station needs what `v4l`'s stream does not give: the freshest frame (all
//! buffers that are ready are dequeued and only the newest kept), the buffer index held while
//! it is converted, errno kept as a [`CaptureError`] instead of a panic when the device
//! disappears, and a restart of the stream on the same open device.
//!
//! Frames are converted ([`decode_frame`]) straight from the mapped buffer into the caller's
//! gray or RGB buffer; nothing is allocated per frame. The driver's timestamp
//! (`CLOCK_MONOTONIC` on every current driver) and sequence number go with each frame.
//!
//! Trigger modes: `free_run` (the camera streams, capture takes the newest frame),
//! `software` (the camera streams; the station pairs each trigger input edge with the first
//! frame exposed after it), and `external` (the camera's
//! own trigger input is enabled through a driver control named in the board profile; each
//! frame then belongs to one trigger edge).
//! See [`Reopen::capture_after`].
//!
//! Why one file of ~700 lines: opening, format negotiation, controls and the MMAP streaming
//! loop share the open device and its mapped buffers; the list, probe and snap helpers reuse
//! them.

use std::os::raw::c_void;
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::{io, mem, ptr};

use anyhow::{anyhow, bail, Context, Result};
use v4l::v4l_sys::*;
use v4l::video::Capture;
use v4l::{v4l2, Device, FourCC};

use crate::camera::decode::{decode_frame, DecodeError};
use crate::camera::supervisor::Reopen;
use crate::core::pixel::{OutputFormat, PixelFormat};
use crate::core::time::Instant;
use crate::hal::{Camera, CaptureError, Clock, FrameInfo};
use crate::sim::clock::MonotonicClock;

/// Most MMAP buffers a stream asks for: enough for the driver to keep filling while one is
/// converted and one waits, without holding many stale frames.
pub const MAX_V4L2_BUFFERS: u32 = 8;

/// `V4L2_BUF_TYPE_VIDEO_CAPTURE` (an enum in the kernel header).
const BUF_TYPE_CAPTURE: u32 = 1;
/// `V4L2_MEMORY_MMAP`.
const MEMORY_MMAP: u32 = 1;

/// How frames are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerMode {
    /// The camera streams at its frame rate; inspection takes the newest frame.
    FreeRun,
    /// The camera streams; each trigger input edge takes the first frame exposed after it.
    Software,
    /// The camera's own trigger input starts each exposure (enabled by a driver control).
    External,
}

impl TriggerMode {
    /// From a board profile's `camera.trigger`.
    pub fn from_name(s: &str) -> Option<TriggerMode> {
        match s {
            "free_run" => Some(TriggerMode::FreeRun),
            "software" => Some(TriggerMode::Software),
            "external" => Some(TriggerMode::External),
            _ => None,
        }
    }
}

/// What to open and how.
#[derive(Clone, Debug)]
pub struct V4l2Config {
    /// Device node, e.g. `/dev/video0`.
    pub device: PathBuf,
    /// Pixel layout to ask for.
    pub format: PixelFormat,
    /// Width to ask for.
    pub width: u32,
    /// Height to ask for.
    pub height: u32,
    /// Frame rate to ask for (`None`: the driver's default).
    pub fps: Option<f32>,
    /// MMAP buffers (2..=[`MAX_V4L2_BUFFERS`]).
    pub buffers: u32,
    /// A capture with no frame for this long is a timeout fault.
    pub timeout_ms: u32,
    /// Driver controls to set, by name as the driver lists them (matched ignoring case,
    /// spaces and underscores), e.g. `exposure_time_absolute = 100`, `gain = 8`.
    pub controls: Vec<(String, i64)>,
    /// Trigger mode.
    pub trigger: TriggerMode,
    /// For [`TriggerMode::External`]: the control that enables the camera's trigger input
    /// and its value.
    pub external_trigger_control: Option<(String, i64)>,
    /// Keep frames as gray or RGB.
    pub output: OutputFormat,
}

/// One mapped driver buffer.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

/// An open, streaming V4L2 camera.
pub struct V4l2Camera {
    cfg: V4l2Config,
    clock: MonotonicClock,
    dev: Option<Device>,
    maps: Vec<Mapping>,
    /// The buffer index the last frame came from; queued back at the next capture.
    held: Option<u32>,
    streaming: bool,
    width: usize,
    height: usize,
    stride: usize,
    /// Frames skipped to deliver the newest (free-run), or older than a trigger.
    skipped_stale: u64,
}

// SAFETY: the mappings belong to this camera's file descriptor and are only touched through
// `&mut self`; moving the camera to another thread moves them with it.
unsafe impl Send for V4l2Camera {}

fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A driver control as listed by `VIDIOC_QUERYCTRL`.
#[derive(Clone, Debug)]
pub struct ControlInfo {
    /// Control id.
    pub id: u32,
    /// Name as the driver gives it.
    pub name: String,
    /// V4L2 control type number (1 integer, 2 boolean, 3 menu, 4 button, ...).
    pub kind: u32,
    /// Minimum.
    pub minimum: i32,
    /// Maximum.
    pub maximum: i32,
    /// Step.
    pub step: i32,
    /// Default.
    pub default: i32,
}

/// Every enabled control of an open device.
pub fn list_controls(dev: &Device) -> Vec<ControlInfo> {
    let mut out = Vec::new();
    let mut id = V4L2_CTRL_FLAG_NEXT_CTRL;
    loop {
        // SAFETY: a zeroed v4l2_queryctrl is a valid argument; the kernel fills it.
        let mut q: v4l2_queryctrl = unsafe { mem::zeroed() };
        q.id = id;
        // SAFETY: `q` is a valid, writable v4l2_queryctrl for VIDIOC_QUERYCTRL.
        let r = unsafe {
            v4l2::ioctl(
                dev.handle().fd(),
                v4l2::vidioc::VIDIOC_QUERYCTRL,
                &mut q as *mut _ as *mut c_void,
            )
        };
        if r.is_err() || out.len() > 1024 {
            break;
        }
        if q.flags & V4L2_CTRL_FLAG_DISABLED == 0 && q.type_ != 6 {
            // type 6 = control class: a heading, not a control.
            let end = q.name.iter().position(|&b| b == 0).unwrap_or(q.name.len());
            out.push(ControlInfo {
                id: q.id,
                name: String::from_utf8_lossy(&q.name[..end]).into_owned(),
                kind: q.type_,
                minimum: q.minimum,
                maximum: q.maximum,
                step: q.step,
                default: q.default_value,
            });
        }
        id = q.id | V4L2_CTRL_FLAG_NEXT_CTRL;
    }
    out
}

fn set_named_control(dev: &Device, controls: &[ControlInfo], name: &str, value: i64, what: &str) -> Result<()> {
    let want = normalise(name);
    let c = controls.iter().find(|c| normalise(&c.name) == want).ok_or_else(|| {
        let names: Vec<&str> = controls.iter().map(|c| c.name.as_str()).collect();
        anyhow!(
            "{what}: the driver has no control `{name}`; it has: {}",
            names.join(", ")
        )
    })?;
    if value < c.minimum as i64 || value > c.maximum as i64 {
        bail!(
            "{what}: control `{}` = {value} is outside the driver's range {}..={}",
            c.name,
            c.minimum,
            c.maximum
        );
    }
    let mut ctrl = v4l2_control {
        id: c.id,
        value: value as i32,
    };
    // SAFETY: `ctrl` is a valid v4l2_control for VIDIOC_S_CTRL.
    unsafe {
        v4l2::ioctl(
            dev.handle().fd(),
            v4l2::vidioc::VIDIOC_S_CTRL,
            &mut ctrl as *mut _ as *mut c_void,
        )
    }
    .with_context(|| format!("{what}: setting control `{}` = {value}", c.name))
}

fn errno_is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::EIO) | Some(libc::ENXIO) | Some(libc::EBADF)
    )
}

impl V4l2Camera {
    /// Open the device, negotiate format, size, rate and controls, map the buffers and start
    /// streaming. Errors name the device and what it refused.
    pub fn open(cfg: V4l2Config, clock: MonotonicClock) -> Result<V4l2Camera> {
        let mut cam = V4l2Camera::closed(cfg, clock);
        cam.start()?;
        Ok(cam)
    }

    /// A camera not yet opened (its device node is missing: unplugged at boot). Capture
    /// reports it as disconnected; [`Reopen::reopen`] opens it once it appears.
    pub fn closed(cfg: V4l2Config, clock: MonotonicClock) -> V4l2Camera {
        let (width, height) = (cfg.width as usize, cfg.height as usize);
        V4l2Camera {
            cfg,
            clock,
            dev: None,
            maps: Vec::new(),
            held: None,
            streaming: false,
            width,
            height,
            stride: 0,
            skipped_stale: 0,
        }
    }

    /// The negotiated frame size.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn start(&mut self) -> Result<()> {
        let path = self.cfg.device.clone();
        let what = path.display().to_string();
        let dev = Device::with_path(&path).with_context(|| format!("{what}: cannot open the camera"))?;
        let caps = dev
            .query_caps()
            .with_context(|| format!("{what}: VIDIOC_QUERYCAP failed"))?;
        let flags = caps.capabilities.bits();
        if flags & V4L2_CAP_VIDEO_CAPTURE == 0 || flags & V4L2_CAP_STREAMING == 0 {
            bail!("{what} ({}): not a streaming video capture device", caps.card);
        }
        let mut fmt = dev.format().with_context(|| format!("{what}: VIDIOC_G_FMT failed"))?;
        fmt.width = self.cfg.width;
        fmt.height = self.cfg.height;
        fmt.fourcc = FourCC::new(&self.cfg.format.fourcc());
        let got = dev
            .set_format(&fmt)
            .with_context(|| format!("{what}: VIDIOC_S_FMT failed"))?;
        if got.fourcc.repr != self.cfg.format.fourcc() {
            bail!(
                "{what}: the driver does not offer {} (it chose {}); see `ferroscope camera probe {what}`",
                self.cfg.format.name(),
                String::from_utf8_lossy(&got.fourcc.repr)
            );
        }
        if (got.width, got.height) != (self.cfg.width, self.cfg.height) {
            bail!(
                "{what}: the driver does not offer {}x{} in {} (nearest {}x{}); see `ferroscope camera probe {what}`",
                self.cfg.width,
                self.cfg.height,
                self.cfg.format.name(),
                got.width,
                got.height
            );
        }
        if let Some(fps) = self.cfg.fps {
            let mut p = dev.params().with_context(|| format!("{what}: VIDIOC_G_PARM failed"))?;
            p.interval = v4l::Fraction::new(1000, (fps * 1000.0).round().max(1.0) as u32);
            dev.set_params(&p)
                .with_context(|| format!("{what}: cannot set {fps} frames per second"))?;
        }
        let controls = list_controls(&dev);
        for (name, value) in &self.cfg.controls {
            set_named_control(&dev, &controls, name, *value, &what)?;
        }
        if self.cfg.trigger == TriggerMode::External {
            let (name, value) = self.cfg.external_trigger_control.as_ref().ok_or_else(|| {
                anyhow!("{what}: trigger = \"external\" needs `camera.external_trigger_control` (a driver control)")
            })?;
            set_named_control(&dev, &controls, name, *value, &what)?;
        }
        self.width = got.width as usize;
        self.height = got.height as usize;
        self.stride = got.stride as usize;
        self.dev = Some(dev);
        self.map_and_stream()
            .with_context(|| format!("{what}: cannot start streaming"))?;
        Ok(())
    }

    fn fd(&self) -> i32 {
        self.dev.as_ref().map_or(-1, |d| d.handle().fd())
    }

    fn ioctl<T>(&self, request: v4l2::vidioc::_IOC_TYPE, arg: &mut T) -> io::Result<()> {
        // SAFETY: every call site passes the argument struct the request is defined with.
        unsafe { v4l2::ioctl(self.fd(), request, arg as *mut T as *mut c_void) }
    }

    fn buffer(&self, index: u32) -> v4l2_buffer {
        // SAFETY: all-zero is a valid v4l2_buffer.
        let mut b: v4l2_buffer = unsafe { mem::zeroed() };
        b.type_ = BUF_TYPE_CAPTURE;
        b.memory = MEMORY_MMAP;
        b.index = index;
        b
    }

    fn map_and_stream(&mut self) -> io::Result<()> {
        // SAFETY: all-zero is a valid v4l2_requestbuffers.
        let mut req: v4l2_requestbuffers = unsafe { mem::zeroed() };
        req.count = self.cfg.buffers.clamp(2, MAX_V4L2_BUFFERS);
        req.type_ = BUF_TYPE_CAPTURE;
        req.memory = MEMORY_MMAP;
        self.ioctl(v4l2::vidioc::VIDIOC_REQBUFS, &mut req)?;
        if req.count < 2 {
            return Err(io::Error::other("the driver gave fewer than 2 buffers"));
        }
        for i in 0..req.count {
            let mut b = self.buffer(i);
            self.ioctl(v4l2::vidioc::VIDIOC_QUERYBUF, &mut b)?;
            // SAFETY: offset and length come from VIDIOC_QUERYBUF for this fd.
            let p = unsafe {
                v4l2::mmap(
                    ptr::null_mut(),
                    b.length as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.fd(),
                    b.m.offset as libc::off_t,
                )?
            };
            self.maps.push(Mapping {
                ptr: p as *mut u8,
                len: b.length as usize,
            });
        }
        for i in 0..req.count {
            let mut b = self.buffer(i);
            self.ioctl(v4l2::vidioc::VIDIOC_QBUF, &mut b)?;
        }
        let mut t = BUF_TYPE_CAPTURE;
        self.ioctl(v4l2::vidioc::VIDIOC_STREAMON, &mut t)?;
        self.streaming = true;
        Ok(())
    }

    /// Stop streaming, unmap and close. Errors are ignored: the device may be gone.
    fn stop(&mut self) {
        if self.streaming {
            let mut t = BUF_TYPE_CAPTURE;
            let _ = self.ioctl(v4l2::vidioc::VIDIOC_STREAMOFF, &mut t);
            self.streaming = false;
        }
        for m in self.maps.drain(..) {
            // SAFETY: each mapping was made by mmap with this length and is unmapped once.
            let _ = unsafe { v4l2::munmap(m.ptr as *mut c_void, m.len) };
        }
        if self.dev.is_some() {
            // SAFETY: all-zero is a valid v4l2_requestbuffers; count 0 frees the buffers.
            let mut req: v4l2_requestbuffers = unsafe { mem::zeroed() };
            req.type_ = BUF_TYPE_CAPTURE;
            req.memory = MEMORY_MMAP;
            let _ = self.ioctl(v4l2::vidioc::VIDIOC_REQBUFS, &mut req);
        }
        self.held = None;
        self.dev = None;
    }

    /// Wait up to `timeout_ms` for a buffer, then dequeue it (non-blocking fd).
    fn dequeue(&mut self, timeout_ms: i32) -> Result<Option<v4l2_buffer>, CaptureError> {
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(CaptureError::Disconnected)
            };
        }
        if n == 0 {
            return Ok(None);
        }
        let mut b = self.buffer(0);
        match self.ioctl(v4l2::vidioc::VIDIOC_DQBUF, &mut b) {
            Ok(()) => Ok(Some(b)),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                    Err(CaptureError::Disconnected)
                } else {
                    Ok(None)
                }
            }
            Err(e) if errno_is_gone(&e) => Err(CaptureError::Disconnected),
            Err(_) => Err(CaptureError::Disconnected),
        }
    }

    fn requeue(&mut self, index: u32) -> Result<(), CaptureError> {
        let mut b = self.buffer(index);
        self.ioctl(v4l2::vidioc::VIDIOC_QBUF, &mut b)
            .map_err(|_| CaptureError::Disconnected)
    }

    fn timestamp(&self, b: &v4l2_buffer) -> Instant {
        let ns = b.timestamp.tv_sec as u64 * 1_000_000_000 + b.timestamp.tv_usec as u64 * 1000;
        if b.flags & V4L2_BUF_FLAG_TIMESTAMP_MASK == V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC && ns > 0 {
            self.clock.from_kernel_ns(ns)
        } else {
            // A driver without monotonic timestamps: the time we received it.
            self.clock.now()
        }
    }

    /// Capture the newest frame (free-run), or the first frame exposed at or after `after`
    /// (software trigger; older frames are requeued unread).
    fn grab(&mut self, after: Option<Instant>, buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
        if self.dev.is_none() {
            return Err(CaptureError::Disconnected);
        }
        if let Some(i) = self.held.take() {
            self.requeue(i)?;
        }
        let deadline = self.clock.now().add_us(self.cfg.timeout_ms as u64 * 1000);
        let mut newest: Option<v4l2_buffer> = None;
        loop {
            let wait_ms = if newest.is_some() {
                0
            } else {
                let left = deadline.us.saturating_sub(self.clock.now().us);
                if left == 0 {
                    return Err(CaptureError::Timeout);
                }
                left.div_ceil(1000) as i32
            };
            match self.dequeue(wait_ms)? {
                Some(b) => {
                    let fresh_enough = after.is_none_or(|t| self.timestamp(&b) >= t);
                    if !fresh_enough {
                        self.skipped_stale += 1;
                        self.requeue(b.index)?;
                        continue;
                    }
                    if let Some(old) = newest.replace(b) {
                        self.skipped_stale += 1;
                        self.requeue(old.index)?;
                    }
                    // Triggered: the first frame after the edge, not the newest.
                    if after.is_some() || self.cfg.trigger == TriggerMode::External {
                        break;
                    }
                }
                None if newest.is_some() => break,
                None => {}
            }
        }
        let b = newest.expect("loop exits with a frame");
        self.held = Some(b.index);
        let sequence = b.sequence;
        let captured = self.timestamp(&b);
        if b.flags & V4L2_BUF_FLAG_ERROR != 0 {
            return Err(CaptureError::Corrupt { sequence });
        }
        let m = &self.maps[b.index as usize];
        let used = (b.bytesused as usize).min(m.len);
        // SAFETY: the buffer is dequeued (the driver does not write it until it is queued
        // again) and `used` is within its mapping.
        let bytes = unsafe { std::slice::from_raw_parts(m.ptr as *const u8, used) };
        let expect = Some((self.width, self.height));
        let stride = (self.cfg.format != PixelFormat::Mjpeg).then_some(self.stride);
        match decode_frame(self.cfg.format, bytes, expect, stride, self.cfg.output, buf) {
            Ok(d) => Ok(FrameInfo {
                width: d.width,
                height: d.height,
                stride: d.width * self.cfg.output.bytes_per_pixel(),
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
            Err(DecodeError::BufferTooSmall { .. }) => Err(CaptureError::WrongSize {
                sequence,
                width: self.width,
                height: self.height,
            }),
        }
    }
}

impl Camera for V4l2Camera {
    fn capture(&mut self, buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
        self.grab(None, buf)
    }
}

impl Reopen for V4l2Camera {
    fn capture_after(&mut self, after: Option<Instant>, buf: &mut [u8]) -> Result<FrameInfo, CaptureError> {
        self.grab(after, buf)
    }

    fn stale_skipped(&self) -> u64 {
        self.skipped_stale
    }

    fn reopen(&mut self) -> Result<(), CaptureError> {
        self.stop();
        self.start().map_err(|_| {
            self.stop();
            CaptureError::Disconnected
        })
    }
}

impl Drop for V4l2Camera {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One device node as `camera list` shows it.
#[derive(Clone, Debug)]
pub struct DeviceSummary {
    /// `/dev/videoN`.
    pub path: PathBuf,
    /// Driver name.
    pub driver: String,
    /// Card (camera) name.
    pub card: String,
    /// Bus.
    pub bus: String,
    /// Whether it can stream video capture (metadata nodes cannot).
    pub capture: bool,
}

/// Every `/dev/video*` node, sorted, with what `VIDIOC_QUERYCAP` says of it.
pub fn list_devices() -> Vec<Result<DeviceSummary, (PathBuf, String)>> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("video") && n[5..].chars().all(|c| c.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort_by_key(|p| {
        p.to_str()
            .and_then(|s| s.trim_start_matches("/dev/video").parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    });
    nodes
        .into_iter()
        .map(|p| {
            let dev = Device::with_path(&p).map_err(|e| (p.clone(), e.to_string()))?;
            let caps = dev.query_caps().map_err(|e| (p.clone(), e.to_string()))?;
            let f = caps.capabilities.bits();
            Ok(DeviceSummary {
                path: p,
                driver: caps.driver,
                card: caps.card,
                bus: caps.bus,
                capture: f & V4L2_CAP_VIDEO_CAPTURE != 0 && f & V4L2_CAP_STREAMING != 0,
            })
        })
        .collect()
}

/// Formats, sizes, frame rates and controls of a device, as text for `camera probe`.
pub fn probe(path: &Path) -> Result<String> {
    use std::fmt::Write;
    let what = path.display().to_string();
    let dev = Device::with_path(path).with_context(|| format!("{what}: cannot open"))?;
    let caps = dev
        .query_caps()
        .with_context(|| format!("{what}: VIDIOC_QUERYCAP failed"))?;
    let mut s = String::new();
    let _ = writeln!(s, "{what}: {} (driver {}, bus {})", caps.card, caps.driver, caps.bus);
    if let Ok(f) = dev.format() {
        let _ = writeln!(
            s,
            "current: {} {}x{}, {} bytes per line",
            String::from_utf8_lossy(&f.fourcc.repr),
            f.width,
            f.height,
            f.stride
        );
    }
    let formats = dev
        .enum_formats()
        .with_context(|| format!("{what}: VIDIOC_ENUM_FMT failed"))?;
    for d in formats {
        let ours = PixelFormat::from_fourcc(&d.fourcc.repr).map_or(" (not supported by ferroscope)", |_| "");
        let _ = writeln!(
            s,
            "format {} — {}{ours}",
            String::from_utf8_lossy(&d.fourcc.repr),
            d.description
        );
        for size in dev.enum_framesizes(d.fourcc).unwrap_or_default() {
            for disc in size.size.to_discrete().into_iter().take(64) {
                let rates: Vec<String> = dev
                    .enum_frameintervals(d.fourcc, disc.width, disc.height)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|i| match i.interval {
                        v4l::frameinterval::FrameIntervalEnum::Discrete(f) if f.numerator > 0 => {
                            Some(format!("{:.1}", f.denominator as f64 / f.numerator as f64))
                        }
                        v4l::frameinterval::FrameIntervalEnum::Stepwise(w) if w.min.numerator > 0 => Some(format!(
                            "{:.1}-{:.1}",
                            w.max.denominator as f64 / w.max.numerator.max(1) as f64,
                            w.min.denominator as f64 / w.min.numerator as f64
                        )),
                        _ => None,
                    })
                    .collect();
                let _ = writeln!(s, "  {}x{} @ {} fps", disc.width, disc.height, rates.join(", "));
            }
        }
    }
    let controls = list_controls(&dev);
    if !controls.is_empty() {
        let _ = writeln!(s, "controls (name: min..max step, default):");
    }
    for c in controls {
        let _ = writeln!(
            s,
            "  {}: {}..{} step {}, default {}",
            c.name, c.minimum, c.maximum, c.step, c.default
        );
    }
    Ok(s)
}

/// Open a camera, let it settle for `warmup` frames, and capture one frame into a new buffer.
pub fn snap(cfg: V4l2Config, warmup: u32) -> Result<(usize, usize, Vec<u8>)> {
    let what = cfg.device.display().to_string();
    let out = cfg.output;
    let mut cam = V4l2Camera::open(cfg, MonotonicClock::default())?;
    let (w, h) = cam.size();
    let mut buf = vec![0u8; out.frame_bytes(w, h)];
    let mut last = Err(CaptureError::Timeout);
    for _ in 0..=warmup {
        last = cam.capture(&mut buf);
        if last.is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let info = last.map_err(|e| anyhow!("{what}: no frame: {e:?}"))?;
    Ok((info.width, info.height, buf))
}
