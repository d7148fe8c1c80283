//! `ferroscope run` as a service manager drives it: SIGTERM and SIGINT stop it cleanly (every
//! item on the belt still gets its pulse, the summary is printed, exit 0), SIGHUP reloads the
//! profile (a broken one is refused and the station runs on), and systemd's notification
//! socket hears READY, WATCHDOG, STATUS and STOPPING.
//!
//! The station runs the shipped host simulation, looped, so it is mid-belt when signalled.
//! Nothing here asserts a duration: only what happened. The tests run one station at a time
//! (each pins its frame loop and its pulse thread to the profile's CPUs, and two stations on a
//! two-CPU machine would race for them); a pulse the host wrote late is counted apart (`audit`).

mod audit;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Held by each test for its whole run: one station at a time.
static ONE_STATION: Mutex<()> = Mutex::new(());

fn one_station() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed holding it poisons it; the next test's station still runs alone.
    ONE_STATION.lock().unwrap_or_else(|e| e.into_inner())
}

/// Far longer than any step needs on a loaded machine: a step that takes this long is a
/// failure, not a slow run.
const PATIENCE: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A folder of its own for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferroscope-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The shipped host simulation with absolute paths, replayed forever.
fn looped_profile() -> String {
    let boards = root().join("boards").display().to_string();
    std::fs::read_to_string(root().join("boards/host-sim.toml"))
        .unwrap()
        .replace("\"../", &format!("\"{boards}/../"))
        .replace("loops = 1 ", "loops = 0 ")
}

/// A running `ferroscope run --json`, its output lines collected as they come.
struct Station {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Station {
    fn start(profile: &Path, env: &[(&str, String)]) -> Station {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroscope"));
        cmd.args(["run", "--json", "--duration-s", "600", "--config"])
            .arg(profile)
            .env_remove("FERROSCOPE_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let collect = |r: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let l = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    l.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Station { child, stdout, stderr }
    }

    /// Wait until `what` holds of (stdout, stderr); panics after [`PATIENCE`].
    fn wait_for(&mut self, why: &str, what: impl Fn(&[String], &[String]) -> bool) {
        let t0 = Instant::now();
        loop {
            if what(&self.stdout.lock().unwrap(), &self.stderr.lock().unwrap()) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                // It ended: the collectors may still be reading; give them their last lines.
                std::thread::sleep(Duration::from_millis(200));
                if what(&self.stdout.lock().unwrap(), &self.stderr.lock().unwrap()) {
                    return;
                }
                panic!(
                    "station ended ({st}) before {why}; stderr: {:?}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(
                t0.elapsed() < PATIENCE,
                "no {why}; stderr: {:?}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn items(&self) -> usize {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("{\"item\":"))
            .count()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Wait for the exit; its code, the item lines and the summary.
    fn finish(mut self) -> (Option<i32>, Vec<serde_json::Value>, serde_json::Value) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > PATIENCE {
                let _ = self.child.kill();
                panic!("station did not end; stderr: {:?}", self.stderr.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(200));
        let lines = self.stdout.lock().unwrap().clone();
        let parsed: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let (summary, items) = parsed.split_last().expect("no output");
        (status.code(), items.to_vec(), summary.clone())
    }
}

/// What a clean stop promises, whatever stopped it.
fn assert_clean_stop(code: Option<i32>, items: &[serde_json::Value], s: &serde_json::Value, cause: &str) {
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["stop"]["cause"], cause, "{s}");
    assert_eq!(s["stop"]["drain_timed_out"], false, "{s}");
    assert_eq!(s["items"], items.len() as u64, "an item line per item");
    assert!(items.len() >= 10, "{} items", items.len());
    // Every item on the belt at the signal reached its ejector: its pulse planned on its true
    // arrival, nothing hit by mistake, one pulse per reject (items are 100 ms apart, pulses
    // 20 ms: none merge).
    audit::no_reject_missed_as_planned(s);
    assert_eq!(s["false_rejects"], 0, "{s}");
    assert_eq!(s["audited_items"], s["items"], "{s}");
    assert_eq!(s["reject_pulses"], s["rejected"], "{s}");
}

/// The camera frames among `items` (not the items a dropped frame stood for): their sequence
/// numbers rise, and with the frames the camera counted as dropped they leave no gap.
fn assert_no_frame_lost(items: &[serde_json::Value], s: &serde_json::Value) {
    let blind = ["dropped frame", "camera timeout", "camera lost"];
    let seqs: Vec<u64> = items
        .iter()
        .filter(|it| !blind.iter().any(|b| it["source"] == *b))
        .map(|it| it["item"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    let span = seqs.last().unwrap() - seqs.first().unwrap() + 1;
    let dropped = s["camera"]["dropped"].as_u64().unwrap();
    assert_eq!(span, seqs.len() as u64 + dropped, "{seqs:?}");
    assert_eq!(s["camera"]["disconnects"], 0, "{s}");
}

#[test]
fn sigterm_mid_belt_fires_every_pulse_prints_the_summary_and_exits_0() {
    let _alone = one_station();
    let dir = scratch("sigterm");
    let profile = dir.join("station.toml");
    std::fs::write(&profile, looped_profile()).unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // Read as they come: the kernel queues only a few datagrams per socket, and the station
    // drops a notification rather than wait.
    let heard = Arc::new(Mutex::new(Vec::<String>::new()));
    let listening = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let listener = {
        let (heard, listening) = (heard.clone(), listening.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while listening.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    heard
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        })
    };
    let mut st = Station::start(
        &profile,
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            ("WATCHDOG_USEC", "400000".into()),
        ],
    );
    // Past the first loop over the 36 samples, so the items on the belt are mid-flight.
    st.wait_for("40 items", |out, _| out.len() >= 40);
    st.signal(libc::SIGTERM);
    let (code, items, s) = st.finish();
    assert_clean_stop(code, &items, &s, "SIGTERM");
    assert_no_frame_lost(&items, &s);
    assert!(items.len() >= 40);

    listening.store(false, std::sync::atomic::Ordering::Relaxed);
    listener.join().unwrap();
    let got = heard.lock().unwrap().clone();
    assert_eq!(got.iter().filter(|m| *m == "READY=1").count(), 1, "{got:?}");
    assert!(got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2, "{got:?}");
    assert!(got.iter().any(|m| m.starts_with("STATUS=items ")), "{got:?}");
    assert_eq!(got.last().map(String::as_str), Some("STOPPING=1"), "{got:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigint_stops_the_same_way() {
    let _alone = one_station();
    let dir = scratch("sigint");
    let profile = dir.join("station.toml");
    std::fs::write(&profile, looped_profile()).unwrap();
    let mut st = Station::start(&profile, &[]);
    st.wait_for("12 items", |out, _| out.len() >= 12);
    st.signal(libc::SIGINT);
    let (code, items, s) = st.finish();
    assert_clean_stop(code, &items, &s, "SIGINT");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_refuses_a_broken_profile_runs_on_and_applies_a_good_one() {
    let _alone = one_station();
    let dir = scratch("sighup");
    let profile = dir.join("station.toml");
    let text = looped_profile();
    std::fs::write(&profile, &text).unwrap();
    let mut st = Station::start(&profile, &[]);
    st.wait_for("5 items", |out, _| out.len() >= 5);

    // A broken file: refused with its name and the place, and the station runs on.
    std::fs::write(&profile, text.replace("[decision]", "[decision")).unwrap();
    st.signal(libc::SIGHUP);
    st.wait_for("the refusal", |_, err| {
        err.iter().any(|l| l.contains("reload on SIGHUP refused"))
    });
    assert!(
        st.stderr.lock().unwrap().iter().any(|l| l.contains("station.toml")),
        "the refusal names the file: {:?}",
        st.stderr.lock().unwrap()
    );
    let after_refusal = st.items();
    st.wait_for("items after the refusal", |out, _| out.len() >= after_refusal + 5);

    // A file that would move an ejector: refused too (it needs a restart).
    std::fs::write(
        &profile,
        text.replace("ejector_distance_mm = 400.0", "ejector_distance_mm = 410.0"),
    )
    .unwrap();
    st.signal(libc::SIGHUP);
    st.wait_for("the second refusal", |_, err| {
        err.iter().filter(|l| l.contains("reload on SIGHUP refused")).count() >= 2
    });

    // A good file: every class now accepted but scratches; applied from the next item.
    let accept_most = text
        .replace(
            "reject_classes = [\"crazing\", \"inclusion\", \"patches\", \"pitted_surface\", \"scratches\"]",
            "reject_classes = [\"scratches\"]",
        )
        .replace(
            "accept_classes = [\"rolled-in_scale\"]",
            "accept_classes = [\"rolled-in_scale\", \"crazing\", \"inclusion\", \"patches\", \"pitted_surface\"]",
        );
    assert_ne!(accept_most, text);
    std::fs::write(&profile, accept_most).unwrap();
    st.signal(libc::SIGHUP);
    st.wait_for("the reload", |_, err| {
        err.iter().any(|l| l.contains("reloaded on SIGHUP"))
    });
    let reloaded_at = st.items();
    // Two loops over the samples after it, then stop.
    st.wait_for("items after the reload", |out, _| out.len() >= reloaded_at + 80);
    st.signal(libc::SIGTERM);
    let (code, items, s) = st.finish();
    assert_clean_stop(code, &items, &s, "SIGTERM");
    assert_eq!(
        (s["reloads"].as_u64(), s["reloads_refused"].as_u64()),
        (Some(1), Some(2))
    );
    // Nothing lost across the refusals and the reload.
    assert_no_frame_lost(&items, &s);
    // Before the reload crazing was rejected; well after it (past any item decided while
    // the signal was read), crazing is accepted.
    let crazing = |it: &&serde_json::Value| it["class"] == "crazing";
    assert!(items[..after_refusal]
        .iter()
        .filter(crazing)
        .all(|it| it["decision"] == "REJECT"));
    let late: Vec<_> = items[reloaded_at + 2..].iter().filter(crazing).collect();
    assert!(!late.is_empty());
    assert!(late.iter().all(|it| it["decision"] == "ACCEPT"), "{late:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
