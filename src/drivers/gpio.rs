//! GPIO through `/dev/gpiochipN` (the v2 character-device uAPI, via gpiocdev): reject,
//! heartbeat and line-stop outputs, and encoder and trigger inputs whose edges carry kernel
//! `CLOCK_MONOTONIC` timestamps.
//!
//! Outputs are requested once at start-up (a missing chip or a line held by another program is
//! a start-up error naming the chip and line); a write that fails at run time is an
//! [`OutputError::Io`] with the errno, which the station counts as a fault and keeps running.
//! Every change is also kept in a timeline with planned and actual times, as the recording
//! backend does, so `run --json` reports real edge timing on the board.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use gpiocdev::line::{EdgeDetection, EventClock, Value};
use gpiocdev::Request;

use crate::core::time::Instant;
use crate::hal::{OutputError, OutputLine, RejectOutput};
use crate::sim::clock::MonotonicClock;
use crate::sim::recording::{Event, RecordingOutput};

/// One output line of a board: chip, offset and polarity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineSpec {
    /// The chip, e.g. `/dev/gpiochip0`.
    pub chip: PathBuf,
    /// Line offset on the chip.
    pub line: u32,
    /// The actuator is energised when the line is low.
    pub active_low: bool,
}

/// Output lines driven through gpiocdev, plus the timeline.
#[derive(Debug)]
pub struct GpioOutput {
    lines: Vec<(OutputLine, Request, u32)>,
    timeline: RecordingOutput,
}

fn errno(e: &gpiocdev::Error) -> i32 {
    match e {
        gpiocdev::Error::Os(errno) => errno.0,
        // The ioctl just failed on this thread: errno still holds its reason.
        _ => std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    }
}

impl GpioOutput {
    /// Request every line as an output, inactive. Errors name the chip, line and role.
    pub fn open(lines: &[(OutputLine, LineSpec)], clock: MonotonicClock, timeline_capacity: usize) -> Result<Self> {
        let mut out = Vec::with_capacity(lines.len());
        for (role, spec) in lines {
            let mut b = Request::builder();
            b.on_chip(&spec.chip).with_consumer("ferroscope").with_line(spec.line);
            if spec.active_low {
                b.as_active_low();
            }
            b.as_output(Value::Inactive);
            let req = b.request().with_context(|| {
                format!(
                    "{}: cannot request line {} as output for {role:?}",
                    spec.chip.display(),
                    spec.line
                )
            })?;
            out.push((*role, req, spec.line));
        }
        Ok(GpioOutput {
            lines: out,
            timeline: RecordingOutput::new(clock, timeline_capacity),
        })
    }

    /// The recorded timeline.
    pub fn events(&self) -> &[Event] {
        self.timeline.events()
    }
}

impl RejectOutput for GpioOutput {
    fn set(&mut self, line: OutputLine, active: bool, at: Instant) -> Result<(), OutputError> {
        let (_, req, offset) = self
            .lines
            .iter()
            .find(|(l, _, _)| *l == line)
            .ok_or(OutputError::NoSuchLine)?;
        let v = if active { Value::Active } else { Value::Inactive };
        req.set_value(*offset, v).map_err(|e| OutputError::Io(errno(&e)))?;
        // A full timeline does not stop the actuator: the line was driven.
        let _ = self.timeline.set(line, active, at);
        Ok(())
    }
}

/// Edges of one input line (an encoder channel or a part-present sensor), with kernel
/// timestamps converted onto the station's clock.
#[derive(Debug)]
pub struct EdgeInput {
    req: Request,
    clock: MonotonicClock,
    chip: PathBuf,
    line: u32,
}

impl EdgeInput {
    /// Request `line` on `chip` as an input reporting rising edges (active edges when
    /// `active_low`), optionally debounced by the kernel.
    pub fn open(
        chip: &Path,
        line: u32,
        active_low: bool,
        both_edges: bool,
        debounce: Option<Duration>,
        clock: MonotonicClock,
    ) -> Result<Self> {
        let mut b = Request::builder();
        b.on_chip(chip).with_consumer("ferroscope").with_line(line).as_input();
        if active_low {
            b.as_active_low();
        }
        b.with_edge_detection(if both_edges {
            EdgeDetection::BothEdges
        } else {
            EdgeDetection::RisingEdge
        })
        .with_event_clock(EventClock::Monotonic);
        if let Some(d) = debounce {
            b.with_debounce_period(d);
        }
        let req = b
            .request()
            .with_context(|| format!("{}: cannot request line {line} as an edge input", chip.display()))?;
        Ok(EdgeInput {
            req,
            clock,
            chip: chip.to_path_buf(),
            line,
        })
    }

    /// Wait up to `timeout` for the next edge; `Ok(None)` on timeout.
    pub fn next_edge(&self, timeout: Duration) -> Result<Option<Instant>> {
        let ready = self
            .req
            .wait_edge_event(timeout)
            .with_context(|| format!("{}: line {}: waiting for edges", self.chip.display(), self.line))?;
        if !ready {
            return Ok(None);
        }
        let ev = self
            .req
            .read_edge_event()
            .with_context(|| format!("{}: line {}: reading an edge", self.chip.display(), self.line))?;
        Ok(Some(self.clock.from_kernel_ns(ev.timestamp_ns)))
    }
}

/// An encoder's lines (channel A, and B for quadrature) in one request, so that the kernel
/// numbers their events in one sequence and a lost event shows as a gap.
#[derive(Debug)]
pub struct EncoderInput {
    req: Request,
    clock: MonotonicClock,
    chip: PathBuf,
    a: u32,
    b: Option<u32>,
}

impl EncoderInput {
    /// Request `a` (and `b`, quadrature) on `chip` as inputs. Quadrature reports both edges of
    /// both lines; a single channel its rising edges, or both when `both_edges`.
    pub fn open(
        chip: &Path,
        a: u32,
        b: Option<u32>,
        active_low: bool,
        both_edges: bool,
        debounce: Option<Duration>,
        clock: MonotonicClock,
    ) -> Result<Self> {
        let mut builder = Request::builder();
        builder.on_chip(chip).with_consumer("ferroscope").with_line(a);
        if let Some(b) = b {
            builder.with_line(b);
        }
        builder.as_input();
        if active_low {
            builder.as_active_low();
        }
        builder
            .with_edge_detection(if both_edges || b.is_some() {
                EdgeDetection::BothEdges
            } else {
                EdgeDetection::RisingEdge
            })
            .with_event_clock(EventClock::Monotonic);
        if let Some(d) = debounce {
            builder.with_debounce_period(d);
        }
        let lines = match b {
            Some(b) => format!("lines {a} (A) and {b} (B)"),
            None => format!("line {a}"),
        };
        let req = builder
            .request()
            .with_context(|| format!("{}: cannot request {lines} as encoder inputs", chip.display()))?;
        Ok(EncoderInput {
            req,
            clock,
            chip: chip.to_path_buf(),
            a,
            b,
        })
    }

    /// Wait up to `timeout` for the next event; `Ok(None)` on timeout.
    pub fn next_event(&self, timeout: Duration) -> Result<Option<crate::core::encoder::LineEvent>> {
        use crate::core::encoder::{Channel, LineEvent};
        use gpiocdev::line::EdgeKind;
        let ready = self
            .req
            .wait_edge_event(timeout)
            .with_context(|| format!("{}: line {}: waiting for encoder edges", self.chip.display(), self.a))?;
        if !ready {
            return Ok(None);
        }
        let ev = self
            .req
            .read_edge_event()
            .with_context(|| format!("{}: line {}: reading an encoder edge", self.chip.display(), self.a))?;
        Ok(Some(LineEvent {
            channel: if Some(ev.offset) == self.b {
                Channel::B
            } else {
                Channel::A
            },
            rising: ev.kind == EdgeKind::Rising,
            seqno: ev.seqno,
            at: self.clock.from_kernel_ns(ev.timestamp_ns),
        }))
    }

    /// The levels of A and B now (B: `false` for a single channel), active as `true`.
    pub fn levels(&self) -> Result<(bool, bool)> {
        let read = |line: u32| -> Result<bool> {
            Ok(self
                .req
                .value(line)
                .with_context(|| format!("{}: line {line}: reading the encoder level", self.chip.display()))?
                == Value::Active)
        };
        Ok((read(self.a)?, self.b.map(read).transpose()?.unwrap_or(false)))
    }
}
