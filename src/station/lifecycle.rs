//! Lifecycle: how a running station is told to stop or to reload its profile, and how it
//! tells a service manager (systemd) that it is ready and alive.
//!
//! Guarantees:
//! - a stop request ([`Control::request_stop`]; SIGTERM or SIGINT in `ferroscope run`) ends
//!   the frame loop after the item it is deciding; every item already on the belt still gets
//!   its decision or the fail-safe and its pulse on time (the actuator drains the belt, the
//!   encoder keeps counting until it has); then the reject lines are released, the heartbeat
//!   is left inactive (the PLC sees the fault), records and MQTT are flushed and the run
//!   returns its summary, which says what stopped it ([`StopReport`]);
//! - a reload ([`Control::reload`]; SIGHUP) reads and checks the whole profile before
//!   anything changes. A profile that does not parse, fails its checks, or changes anything
//!   but `[decision]` (other than `decision.failsafe`, which the register also holds) is
//!   refused with an error naming the file and the field or section, and the running rules
//!   stay. Accepted rules take effect from the next item, between two items, never within;
//! - the frame loop never waits on a reload: it takes new rules only when they are ready,
//!   with `try_lock`, and taking them allocates nothing;
//! - service notifications (systemd's `NOTIFY_SOCKET`) never block the frame loop: the
//!   socket is non-blocking and a send that fails is dropped. `READY=1` after the first
//!   decided frame, `WATCHDOG=1` from the frame loop every half watchdog interval
//!   (`WATCHDOG_USEC`), `STATUS=` with the counts at most every [`STATUS_PERIOD_US`],
//!   `STOPPING=1` when the frame loop ends. Formatting them allocates nothing.

use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

use super::config::StationConfig;
use crate::core::counters::Counters;
use crate::core::decision::DecisionRules;
use crate::core::time::Instant;
use crate::model::manifest::Manifest;

/// How often the frame loop sends its counts as `STATUS=`: often enough for
/// `systemctl status`, rare enough to cost nothing.
pub const STATUS_PERIOD_US: u64 = 1_000_000;

/// Longest notification: `STATUS=` with five counters fits in 160 bytes with room to spare.
const NOTIFY_MAX_BYTES: usize = 160;

/// What ended a run, and how its last items were seen off.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StopReport {
    /// `"end of input"` (the replay ended), or who asked: `"SIGTERM"`, `"SIGINT"`,
    /// `"duration"` (`--duration-s`), `"requested"` (a caller of [`Control::request_stop`]).
    pub cause: &'static str,
    /// From the frame loop's end to the actuator's: the items on the belt reaching their
    /// ejectors, ms.
    pub drain_ms: f64,
    /// From the end of the last reject pulse (or the frame loop's end, when no pulse fired
    /// after it) to the actuator's end, ms.
    pub end_after_last_pulse_ms: f64,
    /// Whether the belt was not empty when the drain time ran out (the reject lines were
    /// then released by force).
    pub drain_timed_out: bool,
}

/// Decision rules a reload hands the frame loop.
#[derive(Clone, Debug)]
pub(super) struct NewRules {
    pub(super) rules: DecisionRules,
    pub(super) deadline_us: u64,
}

/// A running station's controls: stop, reload, and where to send service notifications.
/// Shared between the station and whoever asks it to stop or reload (`ferroscope run`'s
/// signal thread).
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicBool,
    cause: OnceLock<&'static str>,
    pending: Mutex<Option<NewRules>>,
    pending_ready: AtomicBool,
    reloads: AtomicU64,
    reloads_refused: AtomicU64,
    notify: Option<NotifyTarget>,
    recipes: Mutex<Option<std::sync::Arc<super::recipes::Switcher>>>,
}

impl Control {
    /// Controls with no service manager to notify.
    pub fn new() -> Control {
        Control::default()
    }

    /// Controls that notify `target` (see [`NotifyTarget::from_env`]).
    pub fn with_notify(target: Option<NotifyTarget>) -> Control {
        Control {
            notify: target,
            ..Control::default()
        }
    }

    /// Ask the station to stop; `cause` is reported in the summary (the first cause wins).
    pub fn request_stop(&self, cause: &'static str) {
        let _ = self.cause.set(cause);
        self.stop.store(true, Ordering::Release);
    }

    /// Whether a stop was asked for.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Who asked the station to stop.
    pub fn stop_cause(&self) -> Option<&'static str> {
        self.cause.get().copied()
    }

    /// Reload the profile `running` was read from: read and check it, and when only
    /// `[decision]` changed, hand its rules to the frame loop. Returns the new profile (the
    /// one to compare the next reload with); an error leaves the running rules as they are
    /// and is counted as refused.
    pub fn reload(&self, running: &StationConfig) -> Result<StationConfig> {
        let r = self.check_reload(running);
        match &r {
            Ok(_) => {}
            Err(_) => {
                self.reloads_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    fn check_reload(&self, running: &StationConfig) -> Result<StationConfig> {
        let new = StationConfig::load(&running.path)?;
        if let Some(what) = changed_outside_decision(running, &new) {
            bail!(
                "{}: {what} changed; a reload applies only `[decision]` (not `decision.failsafe`): restart the station for the rest",
                running.path.display()
            );
        }
        let manifest = Manifest::load(&new.resolve(&new.tool.manifest))
            .with_context(|| format!("{}: field `tool.manifest`", new.path.display()))?;
        let rules = new.rules(&manifest)?;
        let deadline_us = new.decision.decision_deadline_ms as u64 * 1000;
        if let Ok(mut slot) = self.pending.lock() {
            *slot = Some(NewRules { rules, deadline_us });
        }
        self.pending_ready.store(true, Ordering::Release);
        Ok(new)
    }

    /// New rules from a reload, when ready; never waits.
    pub(super) fn take_rules(&self) -> Option<NewRules> {
        if !self.pending_ready.load(Ordering::Acquire) {
            return None;
        }
        let mut slot = self.pending.try_lock().ok()?;
        self.pending_ready.store(false, Ordering::Release);
        let r = slot.take();
        if r.is_some() {
            self.reloads.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Reloads applied (rules taken by the frame loop) and refused.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.reloads_refused.load(Ordering::Relaxed),
        )
    }

    pub(super) fn notify_target(&self) -> Option<&NotifyTarget> {
        self.notify.as_ref()
    }

    /// The running station's recipes (from start-up to the end of its frame loop).
    pub(super) fn attach_recipes(&self, s: Option<std::sync::Arc<super::recipes::Switcher>>) {
        if let Ok(mut r) = self.recipes.lock() {
            *r = s;
        }
    }

    /// Switch the running station to the recipe called `name`, waiting at most `timeout`
    /// for the new recipe to load and decide; see [`super::recipes`] for what a switch
    /// promises.
    pub fn select_recipe(&self, name: &str, timeout: std::time::Duration) -> super::recipes::SwitchOutcome {
        let s = self.recipes.lock().ok().and_then(|r| r.clone());
        match s {
            Some(s) => s.select(name, timeout),
            None => super::recipes::SwitchOutcome::Refused("the station is not running".into()),
        }
    }

    /// The running station's recipes and the active one's index.
    pub fn recipes(&self) -> Option<(Vec<String>, usize)> {
        let s = self.recipes.lock().ok().and_then(|r| r.clone())?;
        Some((s.book().names(), s.active()))
    }
}

/// The first part of `new` outside `[decision]` (or `decision.failsafe`) that differs from
/// `running`, named as the profile names it.
pub fn changed_outside_decision(running: &StationConfig, new: &StationConfig) -> Option<&'static str> {
    macro_rules! sections {
        ($($field:ident => $name:literal),* $(,)?) => {
            $(
                if format!("{:?}", running.$field) != format!("{:?}", new.$field) {
                    return Some($name);
                }
            )*
        };
    }
    sections!(
        board => "`[board]`",
        station => "`[station]`",
        camera => "`[camera]`",
        tool => "`[tool]`",
        conveyor => "`[conveyor]`",
        ejectors => "`[[ejectors]]`",
        outputs => "`[outputs]`",
        inputs => "`[inputs]`",
        display => "`[display]`",
        segment => "`[segment]`",
        anomaly => "`[anomaly]`",
        records => "`[records]`",
        archive => "`[archive]`",
        mqtt => "`[mqtt]`",
        realtime => "`[realtime]`",
        modbus => "`[modbus]`",
        opcua => "`[opcua]`",
        recipes => "`[[recipes]]`",
    );
    if running.decision.failsafe != new.decision.failsafe {
        return Some("field `decision.failsafe`");
    }
    None
}

/// Where a service manager listens for notifications (`sd_notify(3)`): the socket and the
/// watchdog interval.
#[derive(Clone, Debug)]
pub struct NotifyTarget {
    addr: SocketAddr,
    watchdog_us: Option<u64>,
}

impl NotifyTarget {
    /// From systemd's environment: `NOTIFY_SOCKET` (a path, or `@name` for an abstract
    /// socket), `WATCHDOG_USEC` (when `WATCHDOG_PID` is unset or this process). `None` when
    /// not run by a service manager that asks for notifications.
    pub fn from_env() -> Option<NotifyTarget> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog_us = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()))
            })
            .filter(|us| *us > 0);
        NotifyTarget::new(Path::new(&socket), watchdog_us).ok()
    }

    /// `socket` is a path, or `@name` for an abstract socket.
    pub fn new(socket: &Path, watchdog_us: Option<u64>) -> std::io::Result<NotifyTarget> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = socket.as_os_str().as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(socket)?,
        };
        Ok(NotifyTarget { addr, watchdog_us })
    }
}

/// The frame loop's sender of service notifications.
pub(super) struct Notifier {
    sock: UnixDatagram,
    target: NotifyTarget,
    ready: bool,
    next_watchdog: Instant,
    next_status: Instant,
}

impl Notifier {
    /// A sender to `target`, or `None` when there is none or its socket cannot be made.
    pub(super) fn open(target: Option<&NotifyTarget>, now: Instant) -> Option<Notifier> {
        let target = target?.clone();
        let sock = UnixDatagram::unbound().ok()?;
        sock.set_nonblocking(true).ok()?;
        Some(Notifier {
            sock,
            target,
            ready: false,
            next_watchdog: now,
            next_status: now,
        })
    }

    fn send(&self, msg: &[u8]) {
        let _ = self.sock.send_to_addr(msg, &self.target.addr);
    }

    /// After a decided frame: `READY=1` the first time.
    pub(super) fn decided_frame(&mut self) {
        if !self.ready {
            self.ready = true;
            self.send(b"READY=1");
        }
    }

    /// From the frame loop, every turn: `WATCHDOG=1` when due, `STATUS=` when due.
    pub(super) fn tick(&mut self, now: Instant, c: &Counters, reloads: (u64, u64)) {
        if let Some(w) = self.target.watchdog_us {
            if now >= self.next_watchdog {
                self.send(b"WATCHDOG=1");
                self.next_watchdog = now.add_us((w / 2).max(1));
            }
        }
        if now >= self.next_status {
            self.next_status = now.add_us(STATUS_PERIOD_US);
            let mut buf = [0u8; NOTIFY_MAX_BYTES];
            let mut w = std::io::Cursor::new(&mut buf[..]);
            let ok = write!(
                w,
                "STATUS=items {}, rejected {}, fail-safe {}, faults {}, reloads {} ({} refused)",
                c.inspected, c.rejected, c.failsafe, c.faults, reloads.0, reloads.1
            );
            if ok.is_ok() {
                let n = w.position() as usize;
                self.send(&buf[..n]);
            }
        }
    }

    /// The frame loop ended: the station is stopping.
    pub(super) fn stopping(&self) {
        self.send(b"STOPPING=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::station::config::DEFAULT_CONFIG_PATH;

    fn profile(dir: &Path, text: &str) -> StationConfig {
        let p = dir.join("station.toml");
        std::fs::write(&p, text).unwrap();
        StationConfig::load(&p).unwrap()
    }

    fn shipped() -> String {
        // Paths in the shipped profile are relative to boards/: make them absolute.
        let boards = Path::new(DEFAULT_CONFIG_PATH).parent().unwrap().display().to_string();
        std::fs::read_to_string(DEFAULT_CONFIG_PATH)
            .unwrap()
            .replace("\"../", &format!("\"{boards}/../"))
    }

    #[test]
    fn a_reload_applies_new_decision_rules_and_refuses_everything_else() {
        let dir = std::env::temp_dir().join(format!("ferroscope-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = shipped();
        let running = profile(&dir, &text);
        let control = Control::new();
        assert!(control.take_rules().is_none());

        // A threshold and the deadline: applied.
        std::fs::write(
            &running.path,
            text.replace("scratches = 0.6", "scratches = 0.9")
                .replace("decision_deadline_ms = 250", "decision_deadline_ms = 120"),
        )
        .unwrap();
        let new = control.reload(&running).unwrap();
        let r = control.take_rules().expect("rules handed over");
        assert_eq!(r.deadline_us, 120_000);
        assert!(control.take_rules().is_none(), "taken once");
        assert_eq!(control.reload_counts(), (1, 0));

        // Broken TOML: refused, naming the file, nothing handed over.
        std::fs::write(&running.path, text.replace("[decision]", "[decision")).unwrap();
        let e = format!("{:#}", control.reload(&new).unwrap_err());
        assert!(e.contains("station.toml"), "{e}");
        assert!(control.take_rules().is_none());

        // A valid file that moves an ejector: refused, naming the section.
        std::fs::write(
            &running.path,
            text.replace("ejector_distance_mm = 400.0", "ejector_distance_mm = 410.0"),
        )
        .unwrap();
        let e = format!("{:#}", control.reload(&new).unwrap_err());
        assert!(e.contains("[[ejectors]]") && e.contains("restart"), "{e}");

        // The fail-safe is the register's too: refused.
        std::fs::write(
            &running.path,
            text.replace("failsafe = \"reject\"  ", "failsafe = \"accept\"  "),
        )
        .unwrap();
        let e = format!("{:#}", control.reload(&new).unwrap_err());
        assert!(e.contains("decision.failsafe"), "{e}");

        // A rule the model cannot have: refused by the same checks as at start-up.
        std::fs::write(&running.path, text.replace("scratches = 0.6", "rust = 0.6")).unwrap();
        assert!(control.reload(&new).is_err());
        assert!(control.take_rules().is_none());
        assert_eq!(control.reload_counts(), (1, 4));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_first_stop_cause_is_kept() {
        let c = Control::new();
        assert!(!c.stop_requested());
        c.request_stop("SIGTERM");
        c.request_stop("duration");
        assert!(c.stop_requested());
        assert_eq!(c.stop_cause(), Some("SIGTERM"));
    }

    #[test]
    fn notifications_reach_the_socket_ready_once() {
        let dir = std::env::temp_dir().join(format!("ferroscope-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let target = NotifyTarget::new(&path, Some(2_000_000)).unwrap();
        let t0 = Instant { us: 0 };
        let mut n = Notifier::open(Some(&target), t0).unwrap();
        let c = Counters {
            inspected: 7,
            ..Counters::default()
        };
        n.tick(t0, &c, (0, 0));
        n.decided_frame();
        n.decided_frame();
        // Half the watchdog interval later: one more WATCHDOG=1; STATUS= not yet due.
        n.tick(t0.add_us(1_000_000), &c, (0, 0));
        n.stopping();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(k) = listener.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..k]).into_owned());
        }
        assert_eq!(got.iter().filter(|m| *m == "READY=1").count(), 1, "{got:?}");
        assert_eq!(got.iter().filter(|m| *m == "WATCHDOG=1").count(), 2, "{got:?}");
        assert!(got.iter().any(|m| m.starts_with("STATUS=items 7,")), "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some("STOPPING=1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
