//! The reject co-processor as the station's output backend (`outputs.backend =
//! "coprocessor"`, `[outputs.coprocessor]`): a microcontroller beside the board
//! (`firmware/reject-coprocessor`) runs the same reject tracker on its own clock and drives the
//! ejector, line-stop and heartbeat lines; the station sends it each item's capture and
//! decision over the serial link ([`crate::core::link`]).
//!
//! The station keeps its own tracker as with any backend (deadlines, fail-safe, records, the
//! pulses it plans); the actuator thread hands the co-processor the same inputs in the same
//! order, so both trackers plan the same pulses. What the co-processor says it drove (its
//! `Edge` frames, brought to the station's clock) is the run's output timeline, and the audit
//! judges those pulses against each item's true arrival.
//!
//! Guarantees:
//! - at start the co-processor must answer with this release's protocol and firmware version
//!   and take the line's settings (`Started`), each within [`REPLY_TIMEOUT`]; anything else
//!   stops the start with an error naming the device;
//! - times cross the link on the co-processor's clock: the link thread measures the offset
//!   with `Ping`/`Pong` ([`SYNC_PINGS`] before the first item, then every quarter of
//!   `link_timeout_ms`) and keeps the estimate of the fastest round trip among the last
//!   [`SYNC_WINDOW`];
//! - the actuator waits on the link at most half the link timeout: each frame goes to a
//!   non-blocking line, and a frame the line has no room for within that is dropped and
//!   counted as an output error (the co-processor's tracker then gives that item the
//!   fail-safe at its deadline); the actuator's own plan drives no line here, so it does not
//!   spin before its edges (`realtime.spin_us` is for lines the station drives);
//! - the link thread keeps the link alive, reads every frame back and counts a silence longer
//!   than the link timeout as an output fault (the heartbeat holds, the screen shows it); on
//!   the co-processor the same silence fires every undecided item by the fail-safe;
//! - after the actuator ends, the link thread reads on for [`TAIL_US`] (the last edges), then
//!   asks the co-processor's tracker totals for the summary;
//! - memory is fixed after start: the timeline of the co-processor's edges is preallocated (as
//!   the recording backend's), frames are encoded into stack buffers.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use anyhow::{bail, Result};
use serde_json::json;

use super::config::StationConfig;
use super::tracking::Signals;
use crate::core::decision::Decision;
use crate::core::link::{
    encode, failsafe_code, output_of, Clocking, FrameDecoder, FromMcu, ToMcu, WireBelt, WireDecision, WireEjector,
    WireStats, FIRMWARE_VERSION, MAX_FRAME, PROTOCOL,
};
use crate::core::reject::{EjectorConfig, Output, TrackerStats};
use crate::core::time::Instant;
use crate::hal::{Clock, OutputLine};
use crate::sim::clock::MonotonicClock;
use crate::sim::coprocessor::{Serial, REPLY_TIMEOUT};
use crate::sim::recording::Event;

/// Round trips measured before the first item.
pub const SYNC_PINGS: usize = 16;

/// Round trips the clock offset is chosen from (the fastest of them): at a ping every 12.5 ms
/// (the default 50 ms timeout), the last 0.4 s.
pub const SYNC_WINDOW: usize = 32;

/// After the actuator ends, how long the link thread still reads (the last pulses' edges are
/// reported when driven), µs.
pub const TAIL_US: u64 = 200_000;

/// What the actuator and the link thread share: the clock offset and the counts.
#[derive(Debug, Default)]
pub(super) struct LinkShared {
    /// Co-processor time minus station time, µs.
    offset_us: AtomicI64,
    /// Frames written.
    sent: AtomicU64,
    /// Frames the line had no room for (or a failed write).
    write_errors: AtomicU64,
}

/// The actuator's end of the link: sends captures and decisions, never waits.
pub(super) struct LinkTx {
    out: File,
    shared: Arc<LinkShared>,
    /// Longest wait for room on the line, µs.
    room_wait_us: u64,
}

/// Encode `msg` and write it to `out` ([`write_frame`]); counted in `shared` as sent or as a
/// write error. `false`: it did not go out.
fn send_frame(out: &mut File, msg: &ToMcu, wait_us: u64, shared: &LinkShared) -> bool {
    let mut f = [0u8; MAX_FRAME];
    let ok = match encode(msg, &mut f) {
        Ok(n) => write_frame(out, &f[..n], wait_us),
        Err(_) => false,
    };
    let count = if ok { &shared.sent } else { &shared.write_errors };
    count.fetch_add(1, Ordering::Relaxed);
    ok
}

/// Write all of `frame` to the non-blocking line `out`, waiting for room at most `wait_us`
/// (a line that drains at its baud rate makes room within milliseconds; one that does not is
/// a co-processor that stopped reading). `false`: not all of it went out.
fn write_frame(out: &mut File, frame: &[u8], wait_us: u64) -> bool {
    use std::os::fd::AsRawFd;
    let until = WallInstant::now() + Duration::from_micros(wait_us);
    let mut done = 0;
    while done < frame.len() {
        match out.write(&frame[done..]) {
            Ok(0) => return false,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = until.saturating_duration_since(WallInstant::now());
                if left.is_zero() {
                    return false;
                }
                let mut pfd = libc::pollfd {
                    fd: out.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; the wait is bounded by `left`.
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 1_000) as i32) };
            }
            Err(_) => return false,
        }
    }
    true
}

impl LinkTx {
    fn mcu_us(&self, at: Instant) -> u64 {
        (at.us as i64 + self.shared.offset_us.load(Ordering::Relaxed)).max(0) as u64
    }

    fn send(&mut self, msg: &ToMcu, signals: &Signals, now: Instant) {
        if !send_frame(&mut self.out, msg, self.room_wait_us, &self.shared) {
            signals.output_errors.fetch_add(1, Ordering::Relaxed);
            signals.note_fault(now);
        }
    }

    /// Item `id` passed the camera at `at` (station clock).
    pub(super) fn capture(&mut self, id: u32, at: Instant, signals: &Signals) {
        let msg = ToMcu::Capture {
            id,
            at_us: self.mcu_us(at),
        };
        self.send(&msg, signals, at);
    }

    /// Item `id`'s decision, made at `now` (station clock).
    pub(super) fn decide(&mut self, id: u32, d: &Decision, now: Instant, signals: &Signals) {
        let msg = ToMcu::Decide {
            id,
            decision: WireDecision::from(d),
            at_us: self.mcu_us(now),
        };
        self.send(&msg, signals, now);
    }
}

/// The clocks from ping round trips: the offset of the fastest of the last [`SYNC_WINDOW`]
/// (a slow round trip says little about when the co-processor read its clock), and the
/// co-processor clock's rate against the station's, from that estimate now and
/// [`RATE_ANCHORS`] × [`RATE_ANCHOR_US`] ago. A crystal is off by tens of ppm; an emulated
/// part's clock can be off by a percent. Between two pings the offset is extrapolated with the
/// rate.
#[derive(Debug)]
pub struct ClockSync {
    /// (round trip µs, station time at the trip's middle, offset µs), a ring.
    samples: [(u64, u64, i64); SYNC_WINDOW],
    len: usize,
    next: usize,
    /// Earlier best estimates (station time, offset), one per [`RATE_ANCHOR_US`], a ring.
    anchors: [(u64, i64); RATE_ANCHORS],
    anchors_len: usize,
    anchors_next: usize,
    /// The co-processor's µs per station µs, less 1.
    pub rate: f64,
    /// Round trips seen: the fastest and the slowest.
    pub rtt_min_us: u64,
    /// See `rtt_min_us`.
    pub rtt_max_us: u64,
    /// Offsets chosen: the smallest and the largest (their spread is the clocks' drift over
    /// the run).
    pub offset_range: Option<(i64, i64)>,
}

/// Earlier estimates the rate is measured against.
pub const RATE_ANCHORS: usize = 8;

/// One anchor per this much station time, µs: the rate is measured over up to 4 s.
pub const RATE_ANCHOR_US: u64 = 500_000;

impl Default for ClockSync {
    fn default() -> Self {
        ClockSync {
            samples: [(0, 0, 0); SYNC_WINDOW],
            len: 0,
            next: 0,
            anchors: [(0, 0); RATE_ANCHORS],
            anchors_len: 0,
            anchors_next: 0,
            rate: 0.0,
            rtt_min_us: u64::MAX,
            rtt_max_us: 0,
            offset_range: None,
        }
    }
}

impl ClockSync {
    /// A ping sent at `sent` (station clock) answered at `got` with the co-processor's time
    /// `mcu_us`; returns the offset now chosen (at `got`).
    pub fn sample(&mut self, sent: Instant, got: Instant, mcu_us: u64) -> i64 {
        let rtt = got.us_since(sent);
        let mid = sent.us + rtt / 2;
        self.samples[self.next] = (rtt, mid, mcu_us as i64 - mid as i64);
        self.next = (self.next + 1) % SYNC_WINDOW;
        self.len = (self.len + 1).min(SYNC_WINDOW);
        self.rtt_min_us = self.rtt_min_us.min(rtt);
        self.rtt_max_us = self.rtt_max_us.max(rtt);
        let (_, t, off) = self.best();
        let newest =
            (self.anchors_len > 0).then(|| self.anchors[(self.anchors_next + RATE_ANCHORS - 1) % RATE_ANCHORS]);
        if newest.is_none_or(|(at, _)| t >= at + RATE_ANCHOR_US) {
            self.anchors[self.anchors_next] = (t, off);
            self.anchors_next = (self.anchors_next + 1) % RATE_ANCHORS;
            self.anchors_len = (self.anchors_len + 1).min(RATE_ANCHORS);
        }
        let oldest = self.anchors[(self.anchors_next + RATE_ANCHORS - self.anchors_len) % RATE_ANCHORS];
        if t > oldest.0 + RATE_ANCHOR_US {
            self.rate = (off - oldest.1) as f64 / (t - oldest.0) as f64;
        }
        let now = self.offset_at(got);
        self.offset_range = Some(match self.offset_range {
            None => (now, now),
            Some((lo, hi)) => (lo.min(now), hi.max(now)),
        });
        now
    }

    fn best(&self) -> (u64, u64, i64) {
        self.samples[..self.len]
            .iter()
            .copied()
            .min_by_key(|s| s.0)
            .unwrap_or((0, 0, 0))
    }

    /// Co-processor time minus station time at station time `at`: the best estimate moved on
    /// at the measured rate.
    pub fn offset_at(&self, at: Instant) -> i64 {
        let (_, t, off) = self.best();
        off + (self.rate * (at.us as i64 - t as i64) as f64).round() as i64
    }
}

/// The link thread's end: reads frames, keeps the link alive and the clock offset current.
pub(super) struct LinkRx {
    port: Serial,
    out: File,
    decoder: FrameDecoder,
    shared: Arc<LinkShared>,
    sync: ClockSync,
    ping_period_us: u64,
    link_timeout_us: u64,
    version: [u8; 3],
    device: String,
    timeline: Vec<Event>,
    /// The items the co-processor fired (`Fired`): id and ejector, as many as the timeline
    /// has room for edges.
    fired: Vec<(u32, u8)>,
    /// The belt's speed, mm/s (station clock).
    speed: f32,
}

/// The co-processor is sent the belt speed in its own clock's units again when the measured
/// rate moved by more than this (1e-4: 0.1 mm per metre of travel) …
pub const RATE_STEP: f64 = 1e-4;

/// … at most this often, µs.
pub const RATE_EVERY_US: u64 = 250_000;

/// What the link thread hands back when it ends.
pub(super) struct LinkEnd {
    /// The co-processor's edges, on the station's clock.
    pub(super) timeline: Vec<Event>,
    /// The items it fired: id and ejector, in the order it fired them.
    pub(super) fired: Vec<(u32, u8)>,
    /// The co-processor tracker's totals at the end (`None`: it did not answer).
    pub(super) mcu_stats: Option<TrackerStats>,
    /// The link's report for the summary (`coprocessor`).
    pub(super) json: serde_json::Value,
}

/// Open the co-processor of `cfg`, check its protocol and firmware, start its tracker with
/// the line's `ejectors` at belt speed `speed` (mm/s), and measure the clocks' offset.
/// `timeline_capacity`: edges kept (as the recording backend's).
pub(super) fn open(
    cfg: &StationConfig,
    ejectors: &[EjectorConfig],
    speed: Option<f32>,
    clock: MonotonicClock,
    timeline_capacity: usize,
) -> Result<(LinkTx, LinkRx)> {
    let Some(cp) = &cfg.outputs.coprocessor else {
        bail!(
            "{}: backend \"coprocessor\" needs section `[outputs.coprocessor]`",
            cfg.path.display()
        );
    };
    let Some(speed) = speed else {
        bail!("{}: backend \"coprocessor\" runs in speed mode", cfg.path.display());
    };
    let dev = cp.device.display().to_string();
    let mut port = Serial::open(&cp.device, cp.baud)?;
    let mut decoder = FrameDecoder::new();
    let mut buf = [0u8; 256];
    let mut pending: Vec<u8> = Vec::new();

    let send = |port: &mut Serial, msg: &ToMcu| -> Result<()> {
        let mut f = [0u8; MAX_FRAME];
        let n = encode(msg, &mut f).map_err(|e| anyhow::anyhow!("{dev}: {e}"))?;
        port.write_all(&f[..n])
    };
    // Waits for the first message `want` accepts, within REPLY_TIMEOUT.
    fn wait<T>(
        port: &mut Serial,
        decoder: &mut FrameDecoder,
        buf: &mut [u8],
        pending: &mut Vec<u8>,
        what: &str,
        mut want: impl FnMut(FromMcu) -> Option<T>,
    ) -> Result<T> {
        let deadline = WallInstant::now() + REPLY_TIMEOUT;
        loop {
            let mut taken = 0;
            while taken < pending.len() {
                let b = pending[taken];
                taken += 1;
                if let Some(Ok(m)) = decoder.push::<FromMcu>(b) {
                    if let Some(t) = want(m) {
                        pending.drain(..taken);
                        return Ok(t);
                    }
                }
            }
            pending.clear();
            let left = deadline.saturating_duration_since(WallInstant::now());
            if left.is_zero() {
                bail!(
                    "{}: no {what} from the co-processor within {:?}",
                    port.path().display(),
                    REPLY_TIMEOUT
                );
            }
            let n = port.read_some(buf, left)?;
            pending.extend_from_slice(&buf[..n]);
        }
    }

    // A zero first: whatever half-frame the co-processor held is ended.
    port.write_all(&[0])?;
    send(&mut port, &ToMcu::Hello { protocol: PROTOCOL })?;
    let (protocol, version) = wait(&mut port, &mut decoder, &mut buf, &mut pending, "answer", |m| match m {
        FromMcu::Hello { protocol, version } => Some((protocol, version)),
        _ => None,
    })?;
    if protocol != PROTOCOL {
        bail!("{dev}: the co-processor speaks protocol {protocol}, this station {PROTOCOL}: flash the firmware of this release");
    }
    if version != FIRMWARE_VERSION {
        let [x, y, z] = version;
        let [a, b, c] = FIRMWARE_VERSION;
        bail!("{dev}: the co-processor runs firmware {x}.{y}.{z}, this release ships {a}.{b}.{c}: flash firmware/reject-coprocessor of this release");
    }
    for (k, e) in ejectors.iter().enumerate() {
        send(
            &mut port,
            &ToMcu::Ejector {
                index: k as u8,
                ejector: WireEjector::from(e),
            },
        )?;
    }
    send(
        &mut port,
        &ToMcu::Start {
            ejectors: ejectors.len() as u8,
            failsafe: failsafe_code(cfg.failsafe_policy()),
            belt: WireBelt::Speed(speed),
            link_timeout_ms: cp.link_timeout_ms,
            clocking: Clocking::Hardware,
        },
    )?;
    let error = wait(
        &mut port,
        &mut decoder,
        &mut buf,
        &mut pending,
        "`Started`",
        |m| match m {
            FromMcu::Started { error } => Some(error),
            _ => None,
        },
    )?;
    if error != 0 {
        bail!(
            "{dev}: the co-processor refused the line's settings (code {error}: {})",
            match error {
                1 => "ejector count",
                2 => "an ejector's settings",
                3 => "no ejector takes the fail-safe",
                4 => "belt",
                _ => "fail-safe policy",
            }
        );
    }
    let shared = Arc::new(LinkShared::default());
    let mut sync = ClockSync::default();
    for seq in 0..SYNC_PINGS as u32 {
        let sent = clock.now();
        send(&mut port, &ToMcu::Ping { seq })?;
        let mcu_us = wait(&mut port, &mut decoder, &mut buf, &mut pending, "`Pong`", |m| match m {
            FromMcu::Pong { seq: s, now_us } if s == seq => Some(now_us),
            _ => None,
        })?;
        let offset = sync.sample(sent, clock.now(), mcu_us);
        shared.offset_us.store(offset, Ordering::Relaxed);
    }
    let link_timeout_us = cp.link_timeout_ms as u64 * 1000;
    let tx = LinkTx {
        out: port.writer()?,
        shared: shared.clone(),
        room_wait_us: link_timeout_us / 2,
    };
    let out = port.writer()?;
    let mut timeline = Vec::with_capacity(timeline_capacity);
    timeline.resize(
        timeline_capacity,
        Event {
            line: OutputLine::Heartbeat,
            active: false,
            planned: Instant::from_us(0),
            actual: Instant::from_us(0),
        },
    );
    timeline.clear();
    let mut fired = Vec::with_capacity(timeline_capacity);
    fired.resize(timeline_capacity, (0, 0));
    fired.clear();
    let rx = LinkRx {
        port,
        out,
        decoder,
        shared,
        sync,
        ping_period_us: (link_timeout_us / 4).max(1_000),
        link_timeout_us,
        version,
        device: cp.device.display().to_string(),
        timeline,
        fired,
        speed,
    };
    Ok((tx, rx))
}

/// Pings in flight the link thread remembers (their send times).
const PINGS_KEPT: usize = 8;

impl LinkRx {
    fn send(&mut self, msg: &ToMcu) -> bool {
        send_frame(&mut self.out, msg, self.link_timeout_us / 2, &self.shared)
    }

    /// The link thread: runs until `stop` (the actuator ended) and [`TAIL_US`] after.
    pub(super) fn run(mut self, signals: &Signals, stop: &AtomicBool, clock: MonotonicClock) -> LinkEnd {
        let mut pings = [(u32::MAX, Instant::from_us(0)); PINGS_KEPT];
        let mut seq = SYNC_PINGS as u32;
        let mut next_ping = clock.now();
        let mut last_rx = clock.now();
        let mut silent = false;
        let (mut silences, mut fired, mut overdue, mut refused, mut pongs, mut dropped_edges) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        let mut mcu_stats: Option<WireStats> = None;
        let mut stop_at: Option<Instant> = None;
        let mut stats_asked: Option<Instant> = None;
        let mut buf = [0u8; 256];
        let (mut rate_sent, mut rate_sent_at, mut speed_updates) = (0.0f64, clock.now(), 0u64);
        loop {
            let now = clock.now();
            if stop_at.is_none() && stop.load(Ordering::Acquire) {
                stop_at = Some(now);
            }
            if let Some(s) = stop_at {
                if now.us_since(s) >= TAIL_US {
                    match stats_asked {
                        None => {
                            self.send(&ToMcu::Stats);
                            stats_asked = Some(now);
                        }
                        Some(a) if mcu_stats.is_some() || now.us_since(a) >= REPLY_TIMEOUT.as_micros() as u64 => break,
                        Some(_) => {}
                    }
                }
            }
            // The offset extrapolated to now (the actuator converts with it); the belt speed
            // in the co-processor's own µs when its clock's rate moved.
            self.shared.offset_us.store(self.sync.offset_at(now), Ordering::Relaxed);
            if (self.sync.rate - rate_sent).abs() > RATE_STEP && now.us_since(rate_sent_at) >= RATE_EVERY_US {
                let mm_per_s = (self.speed as f64 / (1.0 + self.sync.rate)) as f32;
                let at_us = (now.us as i64 + self.sync.offset_at(now)).max(0) as u64;
                if self.send(&ToMcu::Speed { mm_per_s, at_us }) {
                    rate_sent = self.sync.rate;
                    rate_sent_at = now;
                    speed_updates += 1;
                }
            }
            if now >= next_ping {
                let ok = self.send(&ToMcu::Ping { seq });
                if !ok {
                    signals.output_errors.fetch_add(1, Ordering::Relaxed);
                    signals.note_fault(now);
                }
                pings[seq as usize % PINGS_KEPT] = (seq, now);
                seq = seq.wrapping_add(1);
                next_ping = now.add_us(self.ping_period_us);
            }
            if !silent && now.us_since(last_rx) > self.link_timeout_us {
                silent = true;
                silences += 1;
                signals.output_errors.fetch_add(1, Ordering::Relaxed);
                signals.note_fault(now);
            }
            let wait_us = next_ping.us_since(clock.now()).clamp(100, 5_000);
            let n = match self.port.read_some(&mut buf, Duration::from_micros(wait_us)) {
                Ok(n) => n,
                Err(_) => {
                    std::thread::sleep(Duration::from_micros(wait_us));
                    0
                }
            };
            if n == 0 {
                continue;
            }
            let got = clock.now();
            for &b in &buf[..n] {
                let Some(Ok(m)) = self.decoder.push::<FromMcu>(b) else {
                    continue;
                };
                last_rx = got;
                silent = false;
                match m {
                    FromMcu::Pong { seq: s, now_us } => {
                        let (ps, sent) = pings[s as usize % PINGS_KEPT];
                        if ps == s {
                            pongs += 1;
                            let offset = self.sync.sample(sent, got, now_us);
                            self.shared.offset_us.store(offset, Ordering::Relaxed);
                        }
                    }
                    FromMcu::Edge { output, active, at_us } => {
                        let offset = self.shared.offset_us.load(Ordering::Relaxed);
                        let at = Instant::from_us((at_us as i64 - offset).max(0) as u64);
                        let line = match output_of(output) {
                            Output::Ejector(n) => OutputLine::Reject(n),
                            Output::LineStop => OutputLine::LineStop,
                        };
                        if self.timeline.len() < self.timeline.capacity() {
                            self.timeline.push(Event {
                                line,
                                active,
                                planned: at,
                                actual: at,
                            });
                        } else {
                            dropped_edges += 1;
                        }
                    }
                    FromMcu::Fired { id, ejector, .. } => {
                        fired += 1;
                        if self.fired.len() < self.fired.capacity() {
                            self.fired.push((id, ejector));
                        }
                    }
                    FromMcu::Overdue { .. } => overdue += 1,
                    FromMcu::Refused { .. } => refused += 1,
                    FromMcu::Stats(s) => mcu_stats = Some(s),
                    _ => {}
                }
            }
        }
        let link = self.decoder.stats();
        let [x, y, z] = self.version;
        let (lo, hi) = self.sync.offset_range.unwrap_or((0, 0));
        let json = json!({
            "device": self.device,
            "firmware": format!("{x}.{y}.{z}"),
            "frames_sent": self.shared.sent.load(Ordering::Relaxed),
            "write_errors": self.shared.write_errors.load(Ordering::Relaxed),
            "frames_received": link.frames,
            "frames_dropped": link.dropped(),
            "edges": self.timeline.len(),
            "edges_not_kept": dropped_edges,
            "fired": fired,
            "overdue": overdue,
            "refused": refused,
            "pongs": pongs,
            "rtt_us_min": self.sync.rtt_min_us,
            "rtt_us_max": self.sync.rtt_max_us,
            "clock_offset_spread_us": hi - lo,
            "clock_rate_ppm": (self.sync.rate * 1e6).round(),
            "speed_updates": speed_updates,
            "link_silences": silences,
            "stats_answered": mcu_stats.is_some(),
        });
        LinkEnd {
            timeline: self.timeline,
            fired: self.fired,
            mcu_stats: mcu_stats.map(TrackerStats::from),
            json,
        }
    }
}

/// The station's own planned pulses against the co-processor's: line by line (ejectors and
/// the line stop), the k-th edge of `planned` (the station tracker's) against the k-th of
/// `driven` (the co-processor's), same level; the JSON counts matches and the largest time
/// difference (the clock estimate's error, and the co-processor clock's own).
pub(super) fn compare(planned: &[Event], driven: &[Event]) -> serde_json::Value {
    let on = |v: &[Event], line: OutputLine| -> Vec<Event> { v.iter().filter(|e| e.line == line).copied().collect() };
    let lines = (0..crate::core::reject::MAX_EJECTORS as u8)
        .map(OutputLine::Reject)
        .chain([OutputLine::LineStop]);
    let (mut n_planned, mut n_driven, mut matched, mut worst) = (0usize, 0usize, 0usize, 0u64);
    let mut first_difference = None;
    for line in lines {
        let (p, d) = (on(planned, line), on(driven, line));
        n_planned += p.len();
        n_driven += d.len();
        for (k, (a, b)) in p.iter().zip(&d).enumerate() {
            if a.active == b.active {
                matched += 1;
                worst = worst.max(a.planned.us.abs_diff(b.planned.us));
            } else if first_difference.is_none() {
                first_difference = Some(format!("{line:?} edge {k}"));
            }
        }
    }
    json!({
        "edges_planned": n_planned,
        "edges_driven": n_driven,
        "edges_matched": matched,
        "edges_identical": matched == n_planned && n_planned == n_driven,
        "first_difference": first_difference,
        "edge_time_difference_us_max": worst,
    })
}

/// The items the station's tracker fired against those the co-processor fired, by id and
/// ejector (each list sorted): how many agree, whether all do, and the first id that differs.
pub(super) fn compare_fired(station: &[(u32, u8)], mcu: &[(u32, u8)]) -> serde_json::Value {
    let (mut a, mut b) = (station.to_vec(), mcu.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    let matched = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let first = match (a.get(matched), b.get(matched)) {
        (Some(x), Some(y)) => Some(x.0.min(y.0)),
        (Some(x), None) | (None, Some(x)) => Some(x.0),
        (None, None) => None,
    };
    json!({
        "fired_station": a.len(),
        "fired_coprocessor": b.len(),
        "fired_identical": a == b,
        "first_fired_difference": first,
    })
}

/// The station's tracker totals against those the co-processor answered: whether they are
/// the same, and each total that differs as `[station, co-processor]`, by name.
pub(super) fn compare_stats(station: &TrackerStats, mcu: Option<&TrackerStats>) -> serde_json::Value {
    let Some(m) = mcu else {
        return json!({ "tracker_stats_identical": false, "tracker_stats_difference": "not answered" });
    };
    // Every field named (no `..`): a total added to the tracker must be added here.
    let totals = |t: &TrackerStats| {
        let TrackerStats {
            items,
            accepted,
            fired: _,
            failsafe_rejects,
            failsafe_accepts,
            overdue,
            late_decisions,
            line_stops,
            overflows,
            merged,
            clipped,
        } = *t;
        [
            ("items", items),
            ("accepted", accepted),
            ("failsafe_rejects", failsafe_rejects),
            ("failsafe_accepts", failsafe_accepts),
            ("overdue", overdue),
            ("late_decisions", late_decisions),
            ("line_stops", line_stops),
            ("overflows", overflows),
            ("merged", merged),
            ("clipped", clipped),
        ]
    };
    let mut differ = serde_json::Map::new();
    for ((name, a), (_, b)) in totals(station).into_iter().zip(totals(m)) {
        if a != b {
            differ.insert(name.into(), json!([a, b]));
        }
    }
    if station.fired != m.fired {
        differ.insert("fired".into(), json!([station.fired, m.fired]));
    }
    json!({
        "tracker_stats_identical": station == m,
        "tracker_stats_difference": if differ.is_empty() { serde_json::Value::Null } else { differ.into() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_tracker_totals_are_named_with_both_values() {
        let station = TrackerStats {
            items: 108,
            clipped: 1,
            ..Default::default()
        };
        let mut mcu = station;
        assert_eq!(
            compare_stats(&station, Some(&mcu)),
            json!({ "tracker_stats_identical": true, "tracker_stats_difference": null })
        );
        mcu.clipped = 0;
        mcu.fired[1] = 2;
        assert_eq!(
            compare_stats(&station, Some(&mcu)),
            json!({
                "tracker_stats_identical": false,
                "tracker_stats_difference": { "clipped": [1, 0], "fired": [[0, 0, 0, 0], [0, 2, 0, 0]] },
            })
        );
        assert_eq!(compare_stats(&station, None)["tracker_stats_identical"], false);
    }

    #[test]
    fn the_offset_is_the_fastest_round_trips() {
        let mut s = ClockSync::default();
        // co-processor clock = station clock + 1000 µs; a fast trip (40 µs) and a slow one
        // (4 ms, answered late in it) that alone would say +2960 µs.
        assert_eq!(
            s.sample(Instant::from_us(10_000), Instant::from_us(10_040), 11_020),
            1_000
        );
        assert_eq!(
            s.sample(Instant::from_us(20_000), Instant::from_us(24_000), 24_960),
            1_000
        );
        assert_eq!((s.rtt_min_us, s.rtt_max_us), (40, 4_000));
    }

    #[test]
    fn a_clock_running_a_percent_slow_is_followed_by_its_rate() {
        // co-processor µs = 0.99 × station µs + 5000; pings every 12.5 ms for 3 s, round trips
        // of 100 to 600 µs, the co-processor reading its clock in the middle.
        let mcu = |t: u64| (t as f64 * 0.99) as u64 + 5_000;
        let mut s = ClockSync::default();
        let mut t = 1_000_000u64;
        for k in 0..240u64 {
            let rtt = 100 + (k * 37) % 500;
            s.sample(Instant::from_us(t), Instant::from_us(t + rtt), mcu(t + rtt / 2));
            t += 12_500;
        }
        assert!((s.rate + 0.01).abs() < 1e-4, "rate {}", s.rate);
        let now = Instant::from_us(t);
        let truth = mcu(t) as i64 - t as i64;
        assert!(
            (s.offset_at(now) - truth).abs() <= 60,
            "{} against {truth}",
            s.offset_at(now)
        );
        let (lo, hi) = s.offset_range.unwrap();
        assert!(hi - lo > 25_000, "the offset moved 1 % of 3 s: {lo}..{hi}");
    }

    #[test]
    fn fired_items_are_compared_by_id_and_ejector_whatever_their_order() {
        let j = compare_fired(&[(3, 0), (1, 1), (2, 0)], &[(1, 1), (2, 0), (3, 0)]);
        assert_eq!(j["fired_identical"], true, "{j}");
        assert_eq!(j["first_fired_difference"], serde_json::Value::Null, "{j}");
        // Item 2 on another ejector.
        let j = compare_fired(&[(1, 1), (2, 0), (3, 0)], &[(1, 1), (2, 1), (3, 0)]);
        assert_eq!(j["fired_identical"], false, "{j}");
        assert_eq!(j["first_fired_difference"], 2, "{j}");
        // Item 3 not fired by the co-processor.
        let j = compare_fired(&[(1, 1), (3, 0)], &[(1, 1)]);
        assert_eq!(j["fired_identical"], false, "{j}");
        assert_eq!(j["first_fired_difference"], 3, "{j}");
        assert_eq!(j["fired_coprocessor"], 1, "{j}");
    }

    #[test]
    fn compare_counts_matches_and_the_largest_time_difference() {
        let e = |line, active, us| Event {
            line,
            active,
            planned: Instant::from_us(us),
            actual: Instant::from_us(us),
        };
        let planned = [
            e(OutputLine::Heartbeat, true, 5),
            e(OutputLine::Reject(0), true, 100),
            e(OutputLine::Reject(0), false, 200),
        ];
        let same = [
            e(OutputLine::Reject(0), true, 130),
            e(OutputLine::Reject(0), false, 190),
        ];
        let j = compare(&planned, &same);
        assert_eq!(j["edges_identical"], true, "{j}");
        assert_eq!(j["edge_time_difference_us_max"], 30, "{j}");
        let other = [e(OutputLine::Reject(1), true, 100)];
        let j = compare(&planned, &other);
        assert_eq!(j["edges_identical"], false, "{j}");
        assert_eq!(j["edges_matched"], 0, "{j}");
        let flipped = [
            e(OutputLine::Reject(0), false, 100),
            e(OutputLine::Reject(0), true, 200),
        ];
        let j = compare(&planned, &flipped);
        assert_eq!(j["first_difference"], "Reject(0) edge 0", "{j}");
    }
}
