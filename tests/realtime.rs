//! `[realtime]`: the profile's checks, and a station without the privilege to use it runs
//! anyway, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferroscope::station::config::{StationConfig, DEFAULT_CONFIG_PATH};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn realtime_settings_out_of_range_are_refused_naming_the_field() {
    let text = std::fs::read_to_string(DEFAULT_CONFIG_PATH).unwrap();
    let p = Path::new("boards/test.toml");
    assert!(
        text.contains("actuator_priority = 80"),
        "the shipped profile asks for SCHED_FIFO"
    );
    for (from, to, field) in [
        (
            "actuator_priority = 80",
            "actuator_priority = 0",
            "realtime.actuator_priority",
        ),
        ("input_priority = 70", "input_priority = 100", "realtime.input_priority"),
        ("spin_us = 1000", "spin_us = 5000", "realtime.spin_us"),
        ("cpus = [1]", "cpus = [4096]", "realtime.cpus"),
        ("input_priority = 70", "input_priority = 70\nspin = 5", "spin"),
        ("frame_cpus = [0]", "frame_cpus = [4096]", "realtime.frame_cpus"),
        ("frame_cpus = [0]", "frame_cpus = [0, 1]", "realtime.frame_cpus"),
        ("cpus = [1]", "", "realtime.frame_cpus` needs `realtime.cpus"),
    ] {
        let e = StationConfig::parse(&text.replace(from, to), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("boards/test.toml") && e.contains(field), "{e}");
    }
    let ok = StationConfig::parse(&text, p).unwrap();
    assert_eq!(ok.realtime.actuator_priority, Some(80));
    assert_eq!(ok.realtime.spin_us, 1000, "the host simulation spins the last ms");
    let default_spin = text
        .lines()
        .filter(|l| !l.starts_with("spin_us"))
        .collect::<Vec<_>>()
        .join("\n");
    let d = StationConfig::parse(&default_spin, p).unwrap();
    assert_eq!(d.realtime.spin_us, 300, "the default spin");
    assert_eq!(
        (ok.realtime.cpus.as_slice(), ok.realtime.frame_cpus.as_slice()),
        (&[1][..], &[0][..]),
        "the pulse threads and the frame loop on CPUs of their own"
    );
}

/// Whether this process runs as root (which may use SCHED_FIFO whatever the limits).
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn without_the_privilege_the_station_runs_with_a_warning() {
    let bin = env!("CARGO_BIN_EXE_ferroscope");
    let profile = root().join("boards/host-sim.toml");
    // No RLIMIT_RTPRIO and almost no RLIMIT_MEMLOCK; as root, also without CAP_SYS_NICE
    // and CAP_IPC_LOCK (setpriv), which would override the limits.
    let script = format!(
        "ulimit -r 0 && ulimit -l 64 && exec {bin} run --json --config {}",
        profile.display()
    );
    let dir = std::env::temp_dir().join(format!("ferroscope-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The screen drawn to a PNG: its fault strip must say the settings were refused.
    let screen = dir.join("screen.png");
    let text = std::fs::read_to_string(&profile)
        .unwrap()
        .replace("input_priority = 70", "input_priority = 70\nlock_memory = true")
        + &format!(
            "\n[display]\nbackend = \"png\"\npath = \"{}\"\nwidth = 320\nheight = 240\n",
            screen.display()
        );
    let boards = root().join("boards").display().to_string();
    let locked = dir.join("station.toml");
    std::fs::write(&locked, text.replace("\"../", &format!("\"{boards}/../"))).unwrap();
    let script = script.replace(&profile.display().to_string(), &locked.display().to_string());
    let mut cmd = if is_root() {
        if Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("skipped: running as root and setpriv (util-linux) is not installed to drop CAP_SYS_NICE");
            return;
        }
        let mut c = Command::new("setpriv");
        c.args([
            "--inh-caps=-sys_nice,-ipc_lock",
            "--bounding-set=-sys_nice,-ipc_lock",
            "sh",
            "-c",
            &script,
        ]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    let out = cmd.env_remove("NOTIFY_SOCKET").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("actuator: normal scheduling") && l.contains("SCHED_FIFO 80 refused")),
        "the refusal is on stderr: {stderr}"
    );
    assert!(stderr.contains("memory: not locked"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let s: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // It ran to the end and decided every item; its pulse timing is then what normal
    // scheduling gives on this machine (a busy one can miss), so it is not asserted here.
    assert_eq!(s["items"], 36);
    assert_eq!(s["audited_items"], 36);
    let rt: Vec<&str> = s["realtime"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        rt.iter().any(|l| l.starts_with("actuator: normal scheduling")),
        "{rt:?}"
    );
    // The fault strip (the bottom rows) is red, and nothing else went wrong: it is the
    // refusal that the screen shows.
    assert_eq!(s["faults"], 0, "{s}");
    assert!(strip_is_red(&screen), "REALTIME OFF on the screen");
    if is_root() {
        // With the privilege, the same profile runs with a healthy strip.
        let out = Command::new(bin)
            .args(["run", "--json", "--config"])
            .arg(&locked)
            .env_remove("NOTIFY_SOCKET")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let s: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        if s["faults"] == 0 {
            assert!(!strip_is_red(&screen), "no refusal, no REALTIME OFF: {s}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the screen's fault strip (its bottom rows) is the fault red.
fn strip_is_red(png: &Path) -> bool {
    let img = image::open(png).unwrap().into_rgb8();
    let p = img.get_pixel(2, img.height() - 2).0;
    p[0] > 150 && p[1] < 40 && p[2] < 40
}
