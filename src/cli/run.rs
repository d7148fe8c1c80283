//! `ferroscope run`: the station loop, one line per item and a summary.
//!
//! - the profile comes from the documented search order ([`super::profile`]); which file was
//!   used is said on stderr;
//! - item lines are formatted on the frame thread into a fixed buffer and handed to a writer
//!   thread through a bounded single-producer queue ([`ITEM_LINE_QUEUE`]): a slow stdout
//!   (a journal, a pipe nobody reads) never holds up a decision. A line that finds the queue
//!   full is dropped and counted (`item_lines_dropped` in the summary), never waited for.
//!   Logging allocates nothing per item, so the station's zero-allocation frame path stays
//!   measurable from here;
//! - `--json`: one JSON object per item line, then the summary as one JSON object;
//! - SIGTERM and SIGINT stop the station as [`Control::request_stop`] promises (the belt is
//!   drained, the summary printed, exit 0); a second one exits at once (128 + signal) without
//!   draining. SIGHUP reloads the profile as [`Control::reload`] promises; what was applied
//!   or why it was refused goes to stderr. Signals are taken on a thread of their own,
//!   registered before the model loads;
//! - under a service manager that sets `NOTIFY_SOCKET` (systemd `Type=notify`), the station
//!   notifies it ([`NotifyTarget::from_env`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use ferroscope::station::{self, config::StationConfig, Control, ItemReport, NotifyTarget};

use super::action_name;

/// `ferroscope run`.
#[derive(Args)]
pub struct RunArgs {
    /// Station config; default: the first found of $FERROSCOPE_CONFIG, /etc/ferroscope/station.toml, boards/host-sim.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print one JSON line per item and end with the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds (a live camera otherwise runs until killed).
    #[arg(long)]
    pub duration_s: Option<f64>,
}

/// Item lines waiting for stdout. At 10 to 100 items/s, 255 lines ride out 2.5 to 25 s of a
/// stalled stdout before lines are dropped; 256 KiB in all.
pub const ITEM_LINE_QUEUE: usize = 256;

/// Longest item line: the fixed fields take about 200 bytes, the rest is room for the file
/// name (255 bytes, more once escaped). A longer line is dropped and counted.
pub const ITEM_LINE_MAX_BYTES: usize = 1024;

/// One formatted item line.
pub struct ItemLine {
    len: usize,
    bytes: [u8; ITEM_LINE_MAX_BYTES],
}

impl ItemLine {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The frame thread's end of the item-line queue.
pub struct ItemLines<'q> {
    queue: heapless::spsc::Producer<'q, ItemLine, ITEM_LINE_QUEUE>,
    writer: Option<std::thread::Thread>,
    /// Lines dropped: the queue was full, or the line too long.
    pub dropped: u64,
}

impl<'q> ItemLines<'q> {
    /// Format a line with `f` and queue it; never waits. `false`: dropped (and counted).
    pub fn offer(&mut self, f: impl FnOnce(&mut std::io::Cursor<&mut [u8]>) -> std::io::Result<()>) -> bool {
        let mut line = ItemLine {
            len: 0,
            bytes: [0; ITEM_LINE_MAX_BYTES],
        };
        let mut w = std::io::Cursor::new(&mut line.bytes[..]);
        if f(&mut w).is_err() {
            self.dropped += 1;
            return false;
        }
        line.len = w.position() as usize;
        if self.queue.enqueue(line).is_err() {
            self.dropped += 1;
            return false;
        }
        if let Some(t) = &self.writer {
            t.unpark();
        }
        true
    }
}

/// Write queued lines to `out` until `done` is set and the queue is empty.
fn write_lines(
    mut queue: heapless::spsc::Consumer<'_, ItemLine, ITEM_LINE_QUEUE>,
    done: &std::sync::atomic::AtomicBool,
    mut out: impl Write,
) {
    loop {
        // Read `done` first: lines queued before it was set are all written below.
        let last = done.load(std::sync::atomic::Ordering::Acquire);
        while let Some(line) = queue.dequeue() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
        if last {
            return;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(50));
    }
}

/// A line on standard output; a reader that went away (`ferroscope run | head`) stops the
/// lines, never the station.
macro_rules! out {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

pub fn run(config: Option<&Path>, json: bool, duration_s: Option<f64>) -> Result<ExitCode> {
    let path = super::profile(config)?;
    let cfg = StationConfig::load(&path)?;
    if !json {
        out!("station {} — config {}", cfg.station.name, path.display());
    }
    let stdout = std::io::stdout();
    let control = std::sync::Arc::new(Control::with_notify(NotifyTarget::from_env()));
    handle_signals(&control, &cfg)?;
    if let Some(d) = duration_s {
        let control = control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs_f64(d.max(0.0)));
            control.request_stop("duration");
        });
    }
    let mut queue: Box<heapless::spsc::Queue<ItemLine, ITEM_LINE_QUEUE>> = Box::default();
    let (producer, consumer) = queue.split();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (summary, dropped) = std::thread::scope(|s| -> Result<_> {
        let writer = std::thread::Builder::new()
            .name("item-lines".into())
            .spawn_scoped(s, || write_lines(consumer, &done, stdout.lock()))?;
        let mut lines = ItemLines {
            queue: producer,
            writer: Some(writer.thread().clone()),
            dropped: 0,
        };
        let summary = station::run_until(&cfg, &control, |item| {
            // Formatted field by field into a fixed buffer: logging must not allocate per item.
            lines.offer(|w| {
                if json {
                    write_item_json(w, item)
                } else {
                    write_item_text(w, item)
                }
            });
        });
        done.store(true, std::sync::atomic::Ordering::Release);
        writer.thread().unpark();
        let _ = writer.join();
        Ok((summary?, lines.dropped))
    })?;
    let mut j = summary.to_json();
    j["config"] = path.display().to_string().into();
    j["item_lines_dropped"] = dropped.into();
    if json {
        out!("{j}");
    } else {
        let c = &summary.counters;
        out!();
        out!("model {}", summary.model);
        out!(
            "items {}   accepted {}   rejected {}   uncertain {}   fail-safe {}   faults {}   yield {:.1} %",
            c.inspected,
            c.accepted,
            c.rejected,
            c.uncertain,
            c.failsafe,
            c.faults,
            c.yield_percent()
        );
        let per: Vec<String> = summary
            .classes
            .iter()
            .enumerate()
            .filter(|(i, _)| c.rejected_per_class[*i] > 0)
            .map(|(i, n)| format!("{n} {}", c.rejected_per_class[i]))
            .collect();
        out!(
            "rejected per class: {}",
            if per.is_empty() { "-".into() } else { per.join(", ") }
        );
        out!(
            "latency capture→decision p50 {} ms, p99 {} ms",
            j["latency_ms_p50"],
            j["latency_ms_p99"]
        );
        let fired: Vec<String> = summary
            .ejectors
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} {}", summary.tracker.fired[i]))
            .collect();
        out!(
            "reject pulses {} (fired per ejector: {}; fail-safe rejects {}, line stops {}, merged {})",
            summary.pulses(),
            fired.join(", "),
            summary.tracker.failsafe_rejects,
            summary.tracker.line_stops,
            summary.tracker.merged
        );
        if let Some(a) = &summary.audit {
            out!(
                "against true arrival: missed rejects {}, false rejects {}, pulse centre error p50 {} µs, p99 {} µs ({:.3} mm at {} mm/s)",
                a.missed_rejects,
                a.false_rejects,
                a.timing_error_us_p50.unwrap_or(0),
                a.timing_error_us_p99.unwrap_or(0),
                a.timing_error_us_p99.unwrap_or(0) as f64 * a.belt_speed_mm_per_s as f64 / 1e6,
                a.belt_speed_mm_per_s
            );
        }
        if let Some(ms) = summary.cpu_steal_ms.filter(|ms| *ms > 0.0) {
            out!("CPU time taken by the hypervisor during the run: {ms:.0} ms (late pulses may be its)");
        }
        let k = &summary.camera;
        out!(
            "camera: frames {}, dropped {}, corrupt {}, wrong size {}, timeouts {}, disconnects {}, reconnects {} (longest outage {:.0} ms); items it did not see {} (all fail-safe){}",
            k.frames,
            k.dropped,
            k.corrupt,
            k.wrong_size,
            k.timeouts,
            k.disconnects,
            k.reconnects,
            k.longest_outage_us as f64 / 1000.0,
            summary.blind_items,
            if summary.camera_down_at_end { "; camera away at the end" } else { "" }
        );
        if summary.labelled > 0 {
            out!(
                "labelled items {}: {} decided as their folder's class",
                summary.labelled,
                summary.correct
            );
        }
        out!(
            "allocations after the first item: ours {}, tract {:.0} per item",
            summary.allocations_ours_after_warmup,
            summary.allocations_tract_per_item
        );
        if dropped > 0 {
            out!("item lines dropped (stdout too slow): {dropped}");
        }
        let st = &summary.stop;
        out!(
            "stopped by {}: belt drained in {:.0} ms, ended {:.0} ms after the last pulse{}; reloads {} ({} refused)",
            st.cause,
            st.drain_ms,
            st.end_after_last_pulse_ms,
            if st.drain_timed_out {
                " (drain time ran out: reject lines released)"
            } else {
                ""
            },
            summary.reloads,
            summary.reloads_refused
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM, SIGINT: stop (a second one: exit at once); SIGHUP: reload the profile.
fn handle_signals(control: &std::sync::Arc<Control>, cfg: &StationConfig) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let control = control.clone();
    let mut running = cfg.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in signals.forever() {
            let name = match sig {
                SIGTERM => "SIGTERM",
                SIGINT => "SIGINT",
                _ => "SIGHUP",
            };
            if sig == SIGHUP {
                match control.reload(&running) {
                    Ok(new) => {
                        eprintln!(
                            "{}: reloaded on SIGHUP: `[decision]` applies from the next item",
                            new.path.display()
                        );
                        running = new;
                    }
                    Err(e) => eprintln!("{e:#}\nreload on SIGHUP refused: the running profile stays"),
                }
            } else if control.stop_requested() {
                eprintln!("second {name}: exiting at once, without draining the belt");
                std::process::exit(128 + sig);
            } else {
                eprintln!("{name}: stopping: no new frames; the items on the belt get their pulses");
                control.request_stop(name);
            }
        }
    })?;
    Ok(())
}

fn write_json_str(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    out.write_all(b"\"")?;
    for c in s.chars() {
        match c {
            '"' => out.write_all(b"\\\"")?,
            '\\' => out.write_all(b"\\\\")?,
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32)?,
            c => write!(out, "{c}")?,
        }
    }
    out.write_all(b"\"")
}

fn write_opt_str(out: &mut impl Write, s: Option<&str>) -> std::io::Result<()> {
    match s {
        Some(s) => write_json_str(out, s),
        None => out.write_all(b"null"),
    }
}

fn write_item_json(out: &mut impl Write, item: &ItemReport<'_>) -> std::io::Result<()> {
    let d = item.decision;
    write!(out, "{{\"item\":{},\"source\":", item.sequence)?;
    write_json_str(out, item.source)?;
    out.write_all(b",\"label\":")?;
    write_opt_str(out, item.label)?;
    out.write_all(b",\"class\":")?;
    write_opt_str(out, item.class_name)?;
    write!(
        out,
        ",\"score\":{},\"outcome\":\"{}\",\"decision\":\"{}\",\"latency_ms\":{},\"fault\":",
        d.score,
        d.outcome.name(),
        action_name(d.action),
        item.latency_us as f64 / 1000.0
    )?;
    write_opt_str(out, item.fault)?;
    write!(
        out,
        ",\"id\":{},\"result_code\":{},\"recipe\":",
        item.id,
        ferroscope::plc::result_code_of(&d, item.fault)
    )?;
    write_json_str(out, item.recipe)?;
    out.write_all(b"}\n")
}

fn write_item_text(out: &mut impl Write, item: &ItemReport<'_>) -> std::io::Result<()> {
    let d = item.decision;
    write!(
        out,
        "#{:<4} {:<14} {:<7} {:<10} {:<16} {:.3}  {:>6.2} ms",
        item.sequence,
        item.source,
        action_name(d.action),
        d.outcome.name(),
        item.class_name.unwrap_or("-"),
        d.score,
        item.latency_us as f64 / 1000.0
    )?;
    if let Some(f) = item.fault {
        write!(out, "  FAULT: {f}")?;
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_item_line_queue_drops_and_counts_without_waiting_and_keeps_the_order() {
        let mut queue: Box<heapless::spsc::Queue<ItemLine, ITEM_LINE_QUEUE>> = Box::default();
        let (producer, mut consumer) = queue.split();
        let mut lines = ItemLines {
            queue: producer,
            writer: None,
            dropped: 0,
        };
        // No writer: the queue fills, then every further line is dropped at once.
        let offered = ITEM_LINE_QUEUE + 10;
        let taken = (0..offered)
            .filter(|i| lines.offer(|w| writeln!(w, "line {i}")))
            .count();
        assert!(taken < offered);
        assert_eq!(lines.dropped as usize, offered - taken);
        // A line longer than the buffer: dropped and counted, not cut.
        let before = lines.dropped;
        let _ = consumer.dequeue();
        assert!(!lines.offer(|w| w.write_all(&[b'x'; ITEM_LINE_MAX_BYTES + 1])));
        assert_eq!(lines.dropped, before + 1);
        // What was queued comes out in order.
        let mut out = Vec::new();
        let done = std::sync::atomic::AtomicBool::new(true);
        write_lines(consumer, &done, &mut out);
        let text = String::from_utf8(out).unwrap();
        let got: Vec<&str> = text.lines().collect();
        assert_eq!(got.len(), taken - 1);
        assert_eq!(got.first(), Some(&"line 1"));
        assert_eq!(got.last().copied(), Some(format!("line {}", taken - 1).as_str()));
    }
}
