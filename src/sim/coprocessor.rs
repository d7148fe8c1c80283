//! The reject co-processor ([`crate::core::link`]) driven from this machine over its serial
//! line, as a [`Line`] the simulated conveyor can run on: every capture, decision, speed step
//! and encoder count goes down the link, and each poll is an `Advance` in lockstep whose
//! answer carries the pulses the co-processor's tracker planned.
//!
//! Guarantees:
//! - the serial line is opened raw (no echo, no line discipline), at the given speed where it
//!   is a terminal;
//! - every answer is awaited at most [`REPLY_TIMEOUT`]; silence or a broken link is an error
//!   naming the device, never a hang;
//! - frames the decoder drops are counted ([`Coprocessor::link_stats`]), never taken for
//!   messages;
//! - with [`Coprocessor::cut_after`], the link goes silent right after item K's capture
//!   (before its decision): nothing more is sent, and a tracker in this process that received the same
//!   inputs says which pulses the co-processor must still fire on its own
//!   ([`Coprocessor::expected_after_cut`]).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant as WallInstant};

use anyhow::{bail, Context, Result};

use crate::core::belt::Belt;
use crate::core::decision::Decision;
use crate::core::link::{
    encode, failsafe_code, output_code, Clocking, FrameDecoder, FromMcu, LinkStats, ToMcu, WireBelt, WireDecision,
    WireEjector, MAX_FRAME, PROTOCOL,
};
use crate::core::reject::{TrackEvent, Tracker, TrackerStats};
use crate::core::time::Instant;
use crate::sim::conveyor::{Line, SimConfig};

/// Longest wait for an answer from the co-processor.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The link's default speed, as the firmware sets it.
pub const DEFAULT_BAUD: u32 = 921_600;

/// A serial line, raw.
pub struct Serial {
    file: std::fs::File,
    path: PathBuf,
}

/// The termios speed of `baud`; `None` for a rate the serial line cannot be set to.
pub fn baud_constant(baud: u32) -> Option<libc::speed_t> {
    Some(match baud {
        9_600 => libc::B9600,
        19_200 => libc::B19200,
        38_400 => libc::B38400,
        57_600 => libc::B57600,
        115_200 => libc::B115200,
        230_400 => libc::B230400,
        460_800 => libc::B460800,
        921_600 => libc::B921600,
        1_000_000 => libc::B1000000,
        2_000_000 => libc::B2000000,
        _ => return None,
    })
}

impl Serial {
    /// A second handle on the same open line (for a writer on another thread), made
    /// non-blocking for both: a write the line has no room for fails rather than waits.
    pub fn writer(&self) -> Result<std::fs::File> {
        let f = self
            .file
            .try_clone()
            .with_context(|| format!("{}: cannot share the serial line", self.path.display()))?;
        // SAFETY: `f` is an open descriptor; F_GETFL/F_SETFL only change its status flags.
        unsafe {
            let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
            if flags < 0 || libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) != 0 {
                bail!("{}: cannot make the serial line non-blocking", self.path.display());
            }
        }
        Ok(f)
    }

    /// The line's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open `path` read-write; where it is a terminal, make it raw at `baud`, 8N1.
    pub fn open(path: &Path, baud: u32) -> Result<Serial> {
        let speed = baud_constant(baud).with_context(|| format!("{}: unsupported baud rate {baud}", path.display()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .with_context(|| format!("{}: cannot open the co-processor's serial line", path.display()))?;
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is open for the life of `file`; `t` is a valid termios written by
        // tcgetattr before it is read.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(fd) == 1 {
                if libc::tcgetattr(fd, &mut t) != 0 {
                    bail!("{}: cannot read the line's settings", path.display());
                }
                libc::cfmakeraw(&mut t);
                t.c_cflag |= libc::CLOCAL | libc::CREAD;
                t.c_cflag &= !(libc::CSTOPB | libc::PARENB | libc::CRTSCTS);
                libc::cfsetispeed(&mut t, speed);
                libc::cfsetospeed(&mut t, speed);
                t.c_cc[libc::VMIN] = 0;
                t.c_cc[libc::VTIME] = 0;
                if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
                    bail!("{}: cannot set the line raw at {baud} Bd", path.display());
                }
                libc::tcflush(fd, libc::TCIOFLUSH);
            }
        }
        Ok(Serial {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Bytes available within `timeout` (at least one), or none when it passed.
    pub fn read_some(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e).with_context(|| format!("{}: poll", self.path.display()));
        }
        if r == 0 {
            return Ok(0);
        }
        match self.file.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {
                Ok(0)
            }
            Err(e) => Err(e).with_context(|| format!("{}: read", self.path.display())),
        }
    }

    /// Write all of `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .with_context(|| format!("{}: write", self.path.display()))
    }
}

/// The co-processor as a [`Line`], in lockstep.
pub struct Coprocessor {
    port: Serial,
    decoder: FrameDecoder,
    rx: Vec<u8>,
    rx_at: usize,
    rx_len: usize,
    tx: Vec<u8>,
    next: Option<u64>,
    in_flight: u16,
    /// Decisions the co-processor refused (late, unknown item…).
    pub refused: u64,
    /// Link losses the co-processor reported (silences longer than its timeout).
    pub losses: u16,
    /// Frames sent.
    pub sent: u64,
    /// Firmware version from its `Hello`.
    pub version: [u8; 3],
    link_timeout_ms: u16,
    cut_after: Option<u32>,
    cut: bool,
    shadow: Option<Tracker>,
    last_advance: Instant,
    error: Option<String>,
}

impl Coprocessor {
    /// Open `path` at `baud`, say hello and check the answer's protocol.
    pub fn connect(path: &Path, baud: u32, link_timeout_ms: u16) -> Result<Coprocessor> {
        let port = Serial::open(path, baud)?;
        let mut c = Coprocessor {
            port,
            decoder: FrameDecoder::new(),
            rx: vec![0; 4096],
            rx_at: 0,
            rx_len: 0,
            tx: Vec::with_capacity(4096),
            next: None,
            in_flight: 0,
            refused: 0,
            losses: 0,
            sent: 0,
            version: [0; 3],
            link_timeout_ms,
            cut_after: None,
            cut: false,
            shadow: None,
            last_advance: Instant::from_us(0),
            error: None,
        };
        // A zero first: whatever half-frame the co-processor held is ended.
        c.tx.push(0);
        c.send(&ToMcu::Hello { protocol: PROTOCOL })?;
        c.flush()?;
        let deadline = WallInstant::now() + REPLY_TIMEOUT;
        loop {
            match c.recv(deadline)? {
                FromMcu::Hello { protocol, version } => {
                    if protocol != PROTOCOL {
                        bail!(
                            "{}: the co-processor speaks protocol {protocol}, this station {PROTOCOL}: flash the firmware of this release",
                            path.display()
                        );
                    }
                    c.version = version;
                    return Ok(c);
                }
                _ => continue,
            }
        }
    }

    /// Go silent right after item `id`'s capture, before its decision (the link cut).
    pub fn cut_after(&mut self, id: u32) {
        self.cut_after = Some(id);
    }

    /// Whether the link was cut.
    pub fn was_cut(&self) -> bool {
        self.cut
    }

    /// The last time sent before the cut.
    pub fn last_advance(&self) -> Instant {
        self.last_advance
    }

    /// The first error met on the link (the run goes on without it; the caller reports it).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The frames taken and dropped.
    pub fn link_stats(&self) -> LinkStats {
        self.decoder.stats()
    }

    /// After a cut: the edges (planned time, output code, level) the co-processor must still
    /// drive on its own, from a tracker here that had the same inputs, polled forward until
    /// nothing is in flight.
    pub fn expected_after_cut(&mut self) -> Vec<(u64, u8, bool)> {
        let mut out = Vec::new();
        let Some(t) = self.shadow.as_mut() else { return out };
        let mut now = self.last_advance;
        for _ in 0..10_000_000 {
            let Some(next) = t.next_event(now) else { break };
            now = next.max(now);
            t.poll(now, |ev| {
                if let TrackEvent::Edge { output, active, at } = ev {
                    out.push((at.us, output_code(output), active));
                }
            });
            if t.next_event(now) == Some(now) {
                now = now.add_us(1);
            }
        }
        out
    }

    fn send(&mut self, msg: &ToMcu) -> Result<()> {
        let mut f = [0u8; MAX_FRAME];
        let n = encode(msg, &mut f).map_err(|e| anyhow::anyhow!("{}: {e}", self.port.path.display()))?;
        self.tx.extend_from_slice(&f[..n]);
        self.sent += 1;
        if self.tx.len() > 2048 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.tx.is_empty() {
            let tx = std::mem::take(&mut self.tx);
            self.port.write_all(&tx)?;
            self.tx = tx;
            self.tx.clear();
        }
        Ok(())
    }

    /// The next message, waiting until `deadline`.
    fn recv(&mut self, deadline: WallInstant) -> Result<FromMcu> {
        loop {
            while self.rx_at < self.rx.len() && self.rx_at < self.rx_len {
                let b = self.rx[self.rx_at];
                self.rx_at += 1;
                if let Some(Ok(m)) = self.decoder.push::<FromMcu>(b) {
                    return Ok(m);
                }
            }
            let left = deadline.saturating_duration_since(WallInstant::now());
            if left.is_zero() {
                bail!(
                    "{}: no answer from the co-processor within {:?}",
                    self.port.path.display(),
                    REPLY_TIMEOUT
                );
            }
            let mut buf = std::mem::take(&mut self.rx);
            let n = self.port.read_some(&mut buf, left);
            self.rx = buf;
            self.rx_at = 0;
            self.rx_len = n?;
        }
    }

    fn fail(&mut self, e: anyhow::Error) {
        if self.error.is_none() {
            self.error = Some(format!("{e:#}"));
        }
    }

    fn live(&self) -> bool {
        !self.cut && self.error.is_none()
    }

    fn forward(&mut self, msg: ToMcu) {
        if self.live() {
            if let Err(e) = self.send(&msg) {
                self.fail(e);
            }
        }
    }
}

impl Line for Coprocessor {
    fn start(&mut self, cfg: &SimConfig, belt: Belt) -> Result<(), String> {
        let mut run = || -> Result<()> {
            for (k, e) in cfg.ejectors.iter().enumerate() {
                self.send(&ToMcu::Ejector {
                    index: k as u8,
                    ejector: WireEjector::from(e),
                })?;
            }
            let wire_belt = if belt.is_encoder() {
                WireBelt::Encoder(cfg.encoder.map(|e| e.counts_per_mm).unwrap_or(1.0))
            } else {
                WireBelt::Speed(belt.speed_mm_per_s(Instant::from_us(0)) as f32)
            };
            self.send(&ToMcu::Start {
                ejectors: cfg.ejectors.len() as u8,
                failsafe: failsafe_code(cfg.failsafe),
                belt: wire_belt,
                link_timeout_ms: self.link_timeout_ms,
                clocking: Clocking::Lockstep,
            })?;
            self.flush()?;
            let deadline = WallInstant::now() + REPLY_TIMEOUT;
            loop {
                if let FromMcu::Started { error } = self.recv(deadline)? {
                    if error != 0 {
                        bail!(
                            "{}: the co-processor refused the line's settings (code {error})",
                            self.port.path.display()
                        );
                    }
                    return Ok(());
                }
            }
        };
        run().map_err(|e| format!("{e:#}"))?;
        let shadow = Tracker::new(&cfg.ejectors, cfg.failsafe, belt).map_err(|e| format!("{e:?}"))?;
        self.shadow = Some(shadow);
        Ok(())
    }

    fn set_speed(&mut self, at: Instant, mm_per_s: f32) {
        if !self.cut {
            if let Some(s) = self.shadow.as_mut() {
                s.belt_mut().set_speed(at, mm_per_s);
            }
        }
        self.forward(ToMcu::Speed { mm_per_s, at_us: at.us });
    }

    fn on_encoder(&mut self, count: i64, at: Instant) {
        if !self.cut {
            if let Some(s) = self.shadow.as_mut() {
                s.belt_mut().on_encoder(count, at);
            }
        }
        self.forward(ToMcu::Encoder { count, at_us: at.us });
    }

    fn begin(&mut self, id: u32, at: Instant) {
        if !self.cut {
            if let Some(s) = self.shadow.as_mut() {
                s.begin(id, at);
            }
        }
        self.forward(ToMcu::Capture { id, at_us: at.us });
        if self.cut_after == Some(id) && !self.cut {
            if let Err(e) = self.flush() {
                self.fail(e);
            }
            self.cut = true;
        }
    }

    fn decide(&mut self, id: u32, d: &Decision, now: Instant) -> bool {
        if !self.cut {
            if let Some(s) = self.shadow.as_mut() {
                let _ = s.decide(id, d, now);
            }
        }
        self.forward(ToMcu::Decide {
            id,
            decision: WireDecision::from(d),
            at_us: now.us,
        });
        // A refusal comes back with the next poll's answer (counted in `refused`); the item's
        // deadline has already been reported by then as `Overdue`.
        true
    }

    fn poll(&mut self, now: Instant, emit: &mut dyn FnMut(TrackEvent)) {
        if !self.live() {
            return;
        }
        if let Some(s) = self.shadow.as_mut() {
            s.poll(now, |_| {});
        }
        self.last_advance = now;
        let r = (|| -> Result<()> {
            self.send(&ToMcu::Advance { to_us: now.us })?;
            self.flush()?;
            let deadline = WallInstant::now() + REPLY_TIMEOUT;
            loop {
                let m = self.recv(deadline)?;
                if let Some(ev) = m.track_event() {
                    emit(ev);
                    continue;
                }
                match m {
                    FromMcu::Refused { .. } => self.refused += 1,
                    FromMcu::Advanced {
                        now_us,
                        next_us,
                        in_flight,
                        losses,
                    } if now_us == now.us => {
                        self.next = next_us;
                        self.in_flight = in_flight;
                        self.losses = losses;
                        return Ok(());
                    }
                    _ => {}
                }
            }
        })();
        if let Err(e) = r {
            self.fail(e);
        }
    }

    fn next_event(&self, _now: Instant) -> Option<Instant> {
        if self.live() {
            self.next.map(Instant::from_us)
        } else {
            None
        }
    }

    fn is_idle(&self) -> bool {
        !self.live() || self.in_flight == 0
    }

    fn stats(&mut self) -> TrackerStats {
        if !self.live() {
            return TrackerStats::default();
        }
        let r = (|| -> Result<TrackerStats> {
            self.send(&ToMcu::Stats)?;
            self.flush()?;
            let deadline = WallInstant::now() + REPLY_TIMEOUT;
            loop {
                if let FromMcu::Stats(s) = self.recv(deadline)? {
                    return Ok(s.into());
                }
            }
        })();
        r.unwrap_or_else(|e| {
            self.fail(e);
            TrackerStats::default()
        })
    }
}
