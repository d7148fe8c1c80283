//! Records that survive `kill -9`, an archive on a full or read-only disk, and events through a
//! real MQTT broker that goes away in the middle of a run, and over TLS with a password. Each
//! test runs the real `ferroscope` binary on the shipped NEU model over the committed samples.
//!
//! The broker is rumqttd, started inside the test on 127.0.0.1 ([`broker`]); the same tests
//! run against Mosquitto and its `mosquitto_sub` client (the `mosquitto_` tests) where
//! Mosquitto is installed, and say plainly that they are skipped where it is not.

mod broker;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use broker::{free_port, mosquitto_installed, Consumer, Embedded, Mosquitto, Outage, Pki};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferroscope-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A station over the NEU samples with `extra` sections appended.
fn config(dir: &Path, rate_fps: f32, loops: u32, extra: &str) -> PathBuf {
    let r = root();
    let text = format!(
        r#"[station]
name = "rec-test"
[camera]
source = "replay"
path = "{samples}"
rate_fps = {rate_fps}
loops = {loops}
[tool]
kind = "classify"
manifest = "{model}"
{rules}{extra}
"#,
        samples = r.join("tests/data/neu_samples").display(),
        model = r.join("models/neu_classify.toml").display(),
        rules = include_str!("data/neu_station_rules.toml"),
    );
    let p = dir.join("station.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn records_json(dir: &Path, last: usize) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(["records", "--json", "--last", &last.to_string(), "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "records: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Small xorshift: the kill times are reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// When each item line arrived.
type Arrivals = Arc<Mutex<Vec<Instant>>>;

/// Start `ferroscope run` and note when each item line arrives.
fn spawn_run(cfg: &Path, json: bool) -> (Child, Arrivals, std::thread::JoinHandle<Vec<String>>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroscope"));
    cmd.arg("run").arg("--config").arg(cfg);
    if json {
        cmd.arg("--json");
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with('#') || line.starts_with("{\"item") {
                s.lock().unwrap().push(Instant::now());
            }
            lines.push(line);
        }
        lines
    });
    (child, seen, reader)
}

/// The runs that keep a station busy at 400 items/s for tens of seconds (the `kill -9` test,
/// which also measures what survives against the time of each kill, and the 10 000-item
/// broker runs) run alone; the other tests of this file run beside each other. On a small
/// machine two stations at once starve each other's record threads.
static BUSY: RwLock<()> = RwLock::new(());

fn busy_alone() -> RwLockWriteGuard<'static, ()> {
    BUSY.write().unwrap_or_else(|e| e.into_inner())
}

fn beside_others() -> RwLockReadGuard<'static, ()> {
    BUSY.read().unwrap_or_else(|e| e.into_inner())
}

/// CPU time the hypervisor took from this machine so far (`steal` in `/proc/stat`), ms; 0
/// where the kernel does not count it.
fn steal_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .and_then(|cpu| cpu.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1000 / hz
}

#[test]
fn kill_9_at_random_moments_never_corrupts_the_records_and_loses_at_most_one_interval() {
    let _alone = busy_alone();
    let kills: usize = std::env::var("FERROSCOPE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    const FLUSH_MS: u64 = 100;
    // Scheduling slack on top of the interval; what the machine measurably lost in each run
    // (the hypervisor's steal, this test's own late wake-up) is added to it.
    const SLACK_MS: u64 = 150;
    // Items whose line may still be in the stdout queue when their record is already written
    // (10 ms of items at 400 items/s).
    const LINE_LAG_ITEMS: u64 = 4;
    let dir = temp("kill");
    let rec = dir.join("records");
    let cfg = config(
        &dir,
        400.0,
        0,
        &format!(
            "[records]\ndir = \"{}\"\nflush_interval_ms = {FLUSH_MS}\nshift_starts = [\"06:00\", \"14:00\", \"22:00\"]\n",
            rec.display()
        ),
    );
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut before = 0u64;
    let (mut worst_lost, mut torn_seen, mut decided_total) = (0u64, 0u64, 0u64);
    let mut worst_slack = Duration::ZERO;
    let started = Instant::now();
    for k in 0..kills {
        let steal_before = steal_ms();
        let (mut child, seen, reader) = spawn_run(&cfg, false);
        // Kills land anywhere: during start-up and recovery, between items, inside a write.
        let nap = Duration::from_millis(rng.below(450));
        let slept_from = Instant::now();
        std::thread::sleep(nap);
        let late = slept_from.elapsed().saturating_sub(nap);
        let _ = child.kill(); // SIGKILL
        let killed_at = Instant::now();
        let slack = Duration::from_millis(FLUSH_MS + SLACK_MS + steal_ms().saturating_sub(steal_before)) + late;
        worst_slack = worst_slack.max(slack);
        let _ = child.wait();
        let _ = reader.join();
        let times = seen.lock().unwrap().clone();
        let decided = times.len() as u64;
        let must_keep = times.iter().filter(|t| killed_at.duration_since(**t) > slack).count() as u64;
        decided_total += decided;

        if !rec.exists() {
            assert_eq!(decided, 0, "kill {k}: items decided before the records folder existed");
            continue;
        }
        let j = records_json(&rec, 0);
        let log_records = j["log_records"].as_u64().unwrap();
        let next_seq = j["next_seq"].as_u64().unwrap();
        let counted = j["total"]["inspected"].as_u64().unwrap();
        torn_seen += (j["log_damaged_bytes"].as_u64().unwrap() > 0) as u64;
        // Nothing the counters file counted is missing from the log, and the counters
        // equal the log: every record intact and in sequence.
        assert!(
            j["counters_file_seq"].as_u64().unwrap() <= log_records,
            "kill {k}: counters ahead of the log: {j}"
        );
        assert_eq!(next_seq, log_records, "kill {k}: {j}");
        assert_eq!(counted, log_records, "kill {k}: counters differ from the log: {j}");
        let per_day: u64 = j["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["counts"]["inspected"].as_u64().unwrap())
            .sum();
        let per_shift: u64 = j["shifts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["counts"]["inspected"].as_u64().unwrap())
            .sum();
        assert_eq!(per_day, counted, "kill {k}");
        assert_eq!(per_shift, counted, "kill {k}");
        let kept = counted - before;
        // Item lines reach stdout from a queue on another thread, after the record went to the
        // recorder: a kill can fall between the two for the last few items.
        assert!(
            kept <= decided + LINE_LAG_ITEMS,
            "kill {k}: {kept} recorded but only {decided} decided"
        );
        assert!(
            kept >= must_keep,
            "kill {k}: {must_keep} items decided more than {} ms before the kill, only {kept} survived",
            slack.as_millis()
        );
        worst_lost = worst_lost.max(decided.saturating_sub(kept));
        before = counted;
    }
    // The next start cuts any torn tail and says what it recovered.
    let (mut child, _, reader) = spawn_run(&cfg, false);
    std::thread::sleep(Duration::from_millis(600));
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let _ = reader.join();
    assert!(err.contains("recovered"), "start-up says what it recovered: {err}");
    eprintln!(
        "{kills} kills in {:.0} s: {decided_total} items decided, {before} recorded, worst loss {worst_lost} items \
         (≤ {FLUSH_MS} ms interval at 400 items/s), torn tails seen {torn_seen}, largest slack allowed {} ms",
        started.elapsed().as_secs_f64(),
        worst_slack.as_millis()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn mount_tmpfs(at: &Path, opts: &str) {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(at)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "mount -t tmpfs -o {opts} {}", at.display());
}

fn umount(at: &Path) {
    let _ = Command::new("umount").arg(at).status();
}

fn run_json(cfg: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(["run", "--json", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "run: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn a_full_or_read_only_archive_disk_is_a_counted_fault_and_every_item_is_still_decided() {
    let _beside = beside_others();
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = temp("disk");
    let full = dir.join("full");
    let ro = dir.join("ro");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    // 300 KiB: room for a few entries (~80 KB each), then ENOSPC.
    mount_tmpfs(&full, "size=300k");
    mount_tmpfs(&ro, "size=1m");
    let status = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&ro)
        .status()
        .unwrap();
    assert!(status.success());
    let result = std::panic::catch_unwind(|| {
        for (name, at) in [("full", &full), ("read-only", &ro)] {
            let cfg = config(
                &dir,
                100.0,
                3,
                &format!(
                    "[records]\ndir = \"{}\"\n[archive]\ndir = \"{}\"\nmax_mb = 100\n",
                    dir.join(format!("records-{name}")).display(),
                    at.display()
                ),
            );
            let s = run_json(&cfg);
            let r = &s["records"];
            assert_eq!(s["items"], 108, "{name}: every item decided: {s}");
            assert_eq!(s["failsafe"], 0, "{name}: no item lost its decision: {s}");
            assert_eq!(
                s["fault_kinds"]["decision_overrun"], 0,
                "{name}: the frame path never stalled: {s}"
            );
            let written = r["archive_written"].as_u64().unwrap();
            let errors = r["archive_errors"].as_u64().unwrap();
            let dropped = r["archive_dropped"].as_u64().unwrap();
            assert_eq!(
                written + errors + dropped,
                s["rejected"].as_u64().unwrap(),
                "{name}: every reject is written, failed or dropped, and counted: {r}"
            );
            assert!(errors > 0, "{name}: the disk errors are counted: {r}");
            assert_eq!(
                r["archive_fault"], true,
                "{name}: the fault stands while writes fail: {r}"
            );
            if name == "read-only" {
                assert_eq!(written, 0, "{r}");
            } else {
                assert!(written > 0, "{r}");
            }
            // The records (on another disk) are complete.
            let j = records_json(&dir.join(format!("records-{name}")), 0);
            assert_eq!(j["total"]["inspected"], 108, "{j}");
        }
    });
    umount(&full);
    umount(&ro);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn the_archive_keeps_under_its_cap_oldest_first_and_exports() {
    let _beside = beside_others();
    let dir = temp("cap");
    let arch = dir.join("archive");
    let cfg = config(
        &dir,
        100.0,
        2,
        &format!(
            "[archive]\ndir = \"{}\"\nmax_mb = 0.5\naccepted_sample = 0.5\n",
            arch.display()
        ),
    );
    let s = run_json(&cfg);
    let r = &s["records"];
    assert_eq!(
        s["allocations_ours_after_warmup"], 0,
        "handing frames to the archive allocates nothing"
    );
    let written = r["archive_written"].as_u64().unwrap();
    // 60 rejects + half of the 12 accepted.
    assert_eq!(written + r["archive_dropped"].as_u64().unwrap(), 66, "{r}");
    assert!(r["archive_evicted"].as_u64().unwrap() > 0, "{r}");
    let bytes: u64 = walk(&arch).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(bytes <= 512 * 1024, "{bytes} bytes under a 0.5 MiB cap");
    let out = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(["archive", "ls", "--json", "--dir"])
        .arg(&arch)
        .output()
        .unwrap();
    let entries: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!entries.is_empty());
    // The newest survive: the last entry is one of the last items.
    let last_item = entries.last().unwrap()["item"].as_u64().unwrap();
    assert!(last_item >= 60, "newest entry is item {last_item}");
    for e in &entries {
        let rec = &e["record"];
        assert!(rec["action"] == "reject" || rec["sampled"] == true, "{e}");
        assert_eq!(rec["station"], "rec-test");
    }
    let exp = dir.join("export");
    let out = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(["archive", "export", "--last", "3", "--action", "reject", "--dir"])
        .arg(&arch)
        .arg("--out")
        .arg(&exp)
        .output()
        .unwrap();
    assert!(out.status.success());
    let files = walk(&exp);
    assert_eq!(files.len(), 9, "3 entries × frame, overlay, record: {files:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        if e.path().is_dir() {
            v.extend(walk(&e.path()));
        } else {
            v.push(e.path());
        }
    }
    v
}

/// A 10 000-item run (`FERROSCOPE_MQTT_ITEMS` to change) whose events go to the broker on
/// `station_port` while the plant's consumer reads them on `consumer_port`; a third of the way
/// through, `outage` takes the broker away for two seconds. Every reject event must arrive.
/// The caller holds [`busy_alone`].
fn reject_events_reach_the_broker_through_an_outage(
    dir: &Path,
    station_port: u16,
    consumer_port: u16,
    outage: impl FnOnce(Duration),
) {
    let items: u64 = std::env::var("FERROSCOPE_MQTT_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let consumer = Consumer::start(consumer_port, None, None);

    let rec = dir.join("records");
    let loops = items.div_ceil(36);
    let cfg = config(
        dir,
        400.0,
        loops as u32,
        &format!(
            "[records]\ndir = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {station_port}\nitems = \"rejects\"\ncounters_interval_s = 1\nqueue = 10000\n",
            rec.display()
        ),
    );
    let (mut child, seen, reader) = spawn_run(&cfg, true);
    // The broker goes away a third of the way through, for two seconds.
    let t0 = Instant::now();
    while (seen.lock().unwrap().len() as u64) < items / 3 && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    outage(Duration::from_secs(2));
    let status = child.wait().unwrap();
    let lines = reader.join().unwrap();
    assert!(status.success());
    let summary: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let r = &summary["records"];
    assert!(
        r["mqtt_disconnects"].as_u64().unwrap() >= 1,
        "the broker went away: {r}"
    );
    assert_eq!(r["mqtt_dropped"], 0, "{r}");
    assert_eq!(r["mqtt_lost_at_exit"], 0, "{r}");
    assert_eq!(
        summary["allocations_ours_after_warmup"], 0,
        "events leave the frame path without allocating"
    );
    // Let the consumer catch up.
    let expected: HashSet<u64> = {
        let j = records_json(&rec, 100_000);
        j["last"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["action"] == "reject")
            .map(|d| d["item"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(expected.len() as u64, summary["rejected"].as_u64().unwrap());
    let items_of = |got: &[serde_json::Value]| -> Vec<(u64, u64)> {
        got.iter()
            .map(|v| (v["boot"].as_u64().unwrap(), v["item"].as_u64().unwrap()))
            .collect()
    };
    let t1 = Instant::now();
    loop {
        let got: HashSet<u64> = items_of(&consumer.rejects.lock().unwrap())
            .iter()
            .map(|x| x.1)
            .collect();
        if expected.is_subset(&got) || t1.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = items_of(&consumer.rejects.lock().unwrap());
    let mut counts: HashMap<u64, u32> = HashMap::new();
    for (_, item) in &got {
        *counts.entry(*item).or_default() += 1;
    }
    let missing: Vec<&u64> = expected.iter().filter(|i| !counts.contains_key(i)).take(10).collect();
    let duplicates = counts.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} items, {} rejects, {} reject events received ({} duplicates), broker away once",
        summary["items"],
        expected.len(),
        got.len(),
        duplicates
    );
    assert!(missing.is_empty(), "reject events never delivered: {missing:?}…");
    assert!(got.iter().all(|(boot, _)| *boot == got[0].0), "one run, one boot id");
    let st = consumer.statuses.lock().unwrap().clone();
    assert_eq!(st.last().map(String::as_str), Some("offline"), "{st:?}");
    assert!(st.iter().any(|s| s == "online"), "{st:?}");
}

#[test]
fn every_reject_event_reaches_the_broker_through_an_outage_in_a_10000_item_run() {
    // The broker starts once this run has the machine to itself, not minutes before.
    let _alone = busy_alone();
    let dir = temp("mqtt");
    let broker = Embedded::start();
    // The station reaches the broker through a relay that drops its connection (the consumer
    // stays connected, so its session holds what arrives meanwhile).
    let relay = Outage::relay_to(broker.port);
    reject_events_reach_the_broker_through_an_outage(&dir, relay.port, broker.port, |down| relay.cut(down));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mosquitto_every_reject_event_reaches_the_broker_through_a_restart_in_a_10000_item_run() {
    if !mosquitto_installed("mosquitto_every_reject_event_reaches_the_broker_through_a_restart") {
        return;
    }
    let _alone = busy_alone();
    let dir = temp("mqtt-mosquitto");
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\n",
            dir.join("db").display()
        ),
    )
    .unwrap();
    let mut broker = Mosquitto::start(&conf, port);
    // A real restart: SIGTERM (Mosquitto saves the consumer's session), down for two seconds.
    reject_events_reach_the_broker_through_an_outage(&dir, port, port, |down| broker.restart(down));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The station publishing over TLS to the broker on `port` (the CA in `dir`), as user `line3`:
/// with the right password all 30 rejects of one pass are acknowledged; with a wrong one the
/// broker refuses it and the station inspects as always and counts what it could not send.
fn station_over_tls_with_a_password(dir: &Path, port: u16) {
    std::fs::write(dir.join("mqtt-password"), "s3cret\n").unwrap();
    std::fs::write(dir.join("wrong-password"), "guess\n").unwrap();
    let mqtt = |pw: &str| {
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nca_file = \"{d}/ca.pem\"\nusername = \"line3\"\npassword_file = \"{d}/{pw}\"\nitems = \"rejects\"\n",
            d = dir.display()
        )
    };
    let s = run_json(&config(dir, 100.0, 1, &mqtt("mqtt-password")));
    let r = &s["records"];
    assert_eq!(s["rejected"], 30);
    assert_eq!(r["mqtt_delivered"], 30, "{r}");

    // Refused by the broker: the station inspects as always and counts what it could not send.
    let s = run_json(&config(dir, 100.0, 1, &mqtt("wrong-password")));
    let r = &s["records"];
    assert_eq!(s["items"], 36, "{s}");
    assert_eq!(s["fault_kinds"]["decision_overrun"], 0, "{s}");
    assert_eq!(r["mqtt_connects"], 0, "{r}");
    assert_eq!(r["mqtt_delivered"], 0, "{r}");
    assert_eq!(r["mqtt_lost_at_exit"], 30, "undelivered rejects are counted: {r}");
}

fn assert_thirty_rejects_of_this_station(got: &[serde_json::Value]) {
    assert_eq!(got.len(), 30, "the consumer read every reject over TLS");
    assert!(got
        .iter()
        .all(|m| m["action"] == "reject" && m["station"] == "rec-test"));
}

#[test]
fn tls_with_a_password_delivers_and_a_wrong_password_never_blocks_inspection() {
    let _beside = beside_others();
    let dir = temp("tls");
    let pki = Pki::make(&dir);
    let broker = Embedded::start_with(Some(&pki), &[("line3", "s3cret")]);
    let consumer = Consumer::start(broker.port, Some(&pki.ca), Some(("line3", "s3cret")));
    station_over_tls_with_a_password(&dir, broker.port);
    assert_thirty_rejects_of_this_station(&consumer.rejects_after(30, Duration::from_secs(20)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mosquitto_tls_with_a_password_delivers_to_mosquitto_sub() {
    let _beside = beside_others();
    if !mosquitto_installed("mosquitto_tls_with_a_password_delivers_to_mosquitto_sub") {
        return;
    }
    let dir = temp("tls-mosquitto");
    let pki = Pki::make(&dir);
    let ok = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(dir.join("passwords"))
        .args(["line3", "s3cret"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mosquitto_passwd");
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nallow_anonymous false\npassword_file {}/passwords\n",
            pki.ca.display(),
            pki.cert.display(),
            pki.key.display(),
            dir.display()
        ),
    )
    .unwrap();
    let _broker = Mosquitto::start(&conf, port);
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            "line3",
            "-P",
            "s3cret",
            "-q",
            "1",
        ])
        .arg("--cafile")
        .arg(&pki.ca)
        .args(["-t", "ferroscope/rec-test/item/reject", "-C", "30", "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the Mosquitto client mosquitto_sub (Debian package `mosquitto-clients`)");
    std::thread::sleep(Duration::from_millis(500));
    station_over_tls_with_a_password(&dir, port);
    let out = sub.wait_with_output().unwrap();
    let got: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_thirty_rejects_of_this_station(&got);
    let _ = std::fs::remove_dir_all(&dir);
}
