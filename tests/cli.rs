//! The `ferroscope` binary as a user runs it.

mod audit;

use std::process::Command;

fn ferroscope(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("FERROSCOPE_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn eval_classify_json_has_the_promised_keys_and_a_real_accuracy() {
    let out = ferroscope(&[
        "eval",
        "classify",
        "--model",
        "models/neu_classify.toml",
        "--data",
        "tests/data/neu_samples",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "accuracy",
        "precision",
        "recall",
        "f1",
        "confusion",
        "classes",
        "images",
        "ms_per_image_median",
    ] {
        assert!(j.get(key).is_some(), "missing {key}");
    }
    assert_eq!(j["images"], 36);
    assert!(j["accuracy"].as_f64().unwrap() >= 34.0 / 36.0);
    let total: u64 = j["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 36);
}

#[test]
fn eval_refuses_a_folder_that_is_not_a_class() {
    let out = ferroscope(&[
        "eval",
        "classify",
        "--model",
        "models/neu_classify.toml",
        "--data",
        "tests/data/xsdd_samples",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("red_iron") && err.contains("not a class"), "{err}");
}

#[test]
fn infer_prints_class_scores_and_decision() {
    let out = ferroscope(&[
        "infer",
        "--model",
        "models/neu_classify.toml",
        "tests/data/neu_samples/scratches/Sc_104.png",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scratches") && text.contains("REJECT"), "{text}");
    assert_eq!(text.lines().count(), 7, "one line for the decision, one per head");
}

#[test]
fn a_missing_manifest_is_a_start_up_error_naming_the_file() {
    let out = ferroscope(&["infer", "--model", "models/nope.toml", "x.png"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("models/nope.toml"));
}

#[test]
fn run_json_ends_with_the_summary() {
    let out = ferroscope(&["run", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 37, "36 item lines and the summary");
    let s: serde_json::Value = serde_json::from_str(lines[36]).unwrap();
    assert_eq!(s["items"], 36);
    assert_eq!(s["allocations_ours_after_warmup"], 0);
    assert_eq!(s["accepted"].as_u64().unwrap() + s["rejected"].as_u64().unwrap(), 36);
    audit::no_reject_missed_as_planned(&s);
    assert_eq!(s["false_rejects"], 0);
    assert_eq!(s["failsafe_rejects"], 0);
    assert!(s["timing_error_us_p99"].as_u64().is_some());
    let fired = s["fired_per_ejector"].as_object().unwrap();
    let total: u64 = fired.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, s["rejected"].as_u64().unwrap());
}

#[test]
fn simulate_checks_every_pulse_and_says_ok() {
    for extra in [&[][..], &["--encoder"][..]] {
        let mut args = vec!["simulate", "--items", "3000", "--seed", "9", "--json"];
        args.extend_from_slice(extra);
        let out = ferroscope(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["ok"], true);
        assert_eq!(j["items"], 3000);
        assert_eq!(j["missed_rejects"], 0);
        assert!(j["must_reject"].as_u64().unwrap() > 200);
    }
}

#[test]
fn camera_commands_name_the_device_they_cannot_open() {
    let out = ferroscope(&["camera", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/video") || text.contains("no V4L2 devices"),
        "{text}"
    );
    let out = ferroscope(&["camera", "probe", "/dev/video-missing"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/dev/video-missing"));
    let out = ferroscope(&[
        "camera",
        "snap",
        "--device",
        "/dev/video-missing",
        "--out",
        "/tmp/x.png",
        "--format",
        "h264",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--format h264"));
}

#[test]
fn bench_camera_times_every_format_at_both_sizes_and_agrees_with_its_peer() {
    let out = ferroscope(&["bench-camera", "--passes", "3", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = j["results"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    for r in rows {
        assert!(r["ours_ms_median"].as_f64().unwrap() > 0.0);
        assert!(r["peer_ms_median"].as_f64().unwrap() > 0.0);
        // Raw formats convert exactly like the plain loop; MJPEG differs only by rounding
        // between a luma-only and a colour-then-gray decode.
        let tolerance = if r["format"] == "mjpeg" { 8 } else { 0 };
        assert!(r["max_abs_diff_vs_peer"].as_u64().unwrap() <= tolerance, "{r}");
    }
}

/// `bench --model-only --json` of one precision of a manifest, `passes` runs: its JSON.
fn bench_model_only(model: &str, precision: &str, passes: &str) -> serde_json::Value {
    bench_model_only_with(model, precision, passes, &[])
}

/// [`bench_model_only`] with more options (`--by-operator`).
fn bench_model_only_with(model: &str, precision: &str, passes: &str, more: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "--model",
        model,
        "--model-only",
        "--precision",
        precision,
        "--passes",
        passes,
        "--json",
    ];
    args.extend_from_slice(more);
    let out = ferroscope(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_model_only_runs_one_precision_and_lists_the_plan_and_its_kernels() {
    let j = bench_model_only("models/neu_classify.toml", "f32", "2");
    let results = j["results"].as_object().unwrap();
    assert_eq!(results.keys().collect::<Vec<_>>(), ["f32"]);
    let r = &results["f32"];
    assert_eq!(r["runs"], 2);
    assert!(r["inference"]["median_ms"].as_f64().unwrap() > 0.0);
    let plan = r["plan"].as_array().unwrap();
    // five convolutions and the heads' linear layer, each a matrix product
    let products = plan.iter().filter(|op| op["op"] == "OptMatMul").count();
    assert!(products >= 6, "{plan:?}");
    let kernels = r["kernels"].as_array().unwrap();
    assert!(!kernels.is_empty());
    for k in kernels {
        let k = k.as_str().unwrap();
        assert!(
            plan.iter().any(|op| op["info"].to_string().contains(k)),
            "{k} not in the plan"
        );
    }
}

#[test]
fn bench_model_only_counts_the_warm_up_run_apart_and_none_after_it() {
    let j = bench_model_only("models/neu_segment.toml", "int8", "4");
    let r = &j["results"]["int8"];
    assert_eq!(r["runs"], 4);
    // the first run sizes tract's and the integer operator's buffers; the three after it are
    // the steady state, and there tract asks the system allocator for nothing
    assert!(r["allocations_first_run_tract"].is_u64(), "{r}");
    assert_eq!(r["allocations_per_run_tract"].as_f64(), Some(0.0), "{r}");
    assert_eq!(r["allocations_per_run_ours"].as_f64(), Some(0.0), "{r}");
    // the time likewise: the median is of the three runs after the first
    assert_eq!(r["inference"]["timed_runs"], 3, "{r}");
    assert!(r["inference"]["first_run_ms"].as_f64().unwrap() > 0.0, "{r}");
    // one run is all warm-up: no steady-state figure to give, and its time is the only one
    let j = bench_model_only("models/neu_segment.toml", "int8", "1");
    let r = &j["results"]["int8"];
    assert!(r["allocations_per_run_tract"].is_null(), "{j}");
    assert_eq!(r["inference"]["timed_runs"], 1, "{r}");
    assert_eq!(r["inference"]["median_ms"], r["inference"]["first_run_ms"], "{r}");
}

#[test]
fn bench_by_operator_times_every_node_by_name() {
    let j = bench_model_only_with("models/neu_segment.toml", "int8", "2", &["--by-operator"]);
    let r = &j["results"]["int8"];
    let ms = |e: &serde_json::Value| e["ms_per_run"].as_f64().unwrap();
    let nodes = r["time_by_node"].as_array().unwrap();
    // the slowest first, adding up to the time by operator
    assert!(nodes.windows(2).all(|w| ms(&w[0]) >= ms(&w[1])), "{nodes:?}");
    let by_op: f64 = r["time_by_op"].as_array().unwrap().iter().map(ms).sum();
    let by_node: f64 = nodes.iter().map(ms).sum();
    assert!(
        (by_op - by_node).abs() <= 1e-9 + 1e-6 * by_op,
        "{by_op} against {by_node}"
    );
    // each named as the graph names it, with its operator and description: the last
    // convolution, on the integer engine where this CPU has one of its kernels
    if ferroscope::model::qconv::fused_on_this_cpu() {
        let last = nodes
            .iter()
            .find(|n| n["node"] == "/model/out/Conv__int8")
            .expect("the last convolution");
        assert_eq!(last["op"], "QConvInt8", "{last}");
        assert!(last["info"].to_string().contains("15 → 1 channels"), "{last}");
        // on x86-64 its 15 input channels run on the plane kernel
        if cfg!(target_arch = "x86_64") {
            assert!(last["info"].to_string().contains("(plane)"), "{last}");
        }
    }
}

#[test]
fn the_fault_rehearsal_profile_runs_and_fails_safe() {
    let out = ferroscope(&["run", "--config", "boards/host-sim-faults.toml", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_owned();
    let j: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(j["camera"]["disconnects"], 1);
    assert_eq!(j["camera"]["reconnects"], 1);
    assert!(j["camera"]["blind_items"].as_u64().unwrap() > 10);
    audit::no_reject_missed_as_planned(&j);
}

/// The binary copied into a fresh folder outside `target/`, as an installed one is.
fn copied_binary(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("ferroscope-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("ferroscope");
    std::fs::copy(env!("CARGO_BIN_EXE_ferroscope"), &bin).unwrap();
    (dir, bin)
}

const SYSTEM_PROFILE: &str = "/etc/ferroscope/station.toml";

#[test]
fn a_copied_binary_finds_the_host_simulation_from_the_repository_root() {
    let (dir, bin) = copied_binary("copied");
    let out = Command::new(&bin)
        .args(["run", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("FERROSCOPE_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let expected = if std::path::Path::new(SYSTEM_PROFILE).exists() {
        SYSTEM_PROFILE
    } else {
        "boards/host-sim.toml"
    };
    assert!(
        err.contains(&format!("profile {expected} (")),
        "stderr names the profile: {err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let s: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(s["config"], expected);
    if expected != SYSTEM_PROFILE {
        assert_eq!(s["items"], 36);
        assert!(err.contains("under the current directory"), "{err}");
    }
    // Text mode says it too, on stderr, and keeps stdout as it was.
    let out = Command::new(&bin)
        .args(["run", "--duration-s", "0.5"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("FERROSCOPE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("profile {expected}")));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("station "));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ferroscope_config_names_the_profile_from_any_folder() {
    let (dir, bin) = copied_binary("env");
    let profile = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("boards/host-sim.toml");
    let out = Command::new(&bin)
        .args(["check", "--json"])
        .current_dir(&dir)
        .env("FERROSCOPE_CONFIG", &profile)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("from $FERROSCOPE_CONFIG"), "{err}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["config"], profile.display().to_string());
    assert_eq!(j["station"], "host-sim");
    assert_eq!(j["ok"], true);
    // --config still wins over the variable.
    let out = Command::new(&bin)
        .args(["check", "--json", "--config"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("boards/host-sim-trigger.toml"))
        .current_dir(&dir)
        .env("FERROSCOPE_CONFIG", &profile)
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["config"].as_str().unwrap().ends_with("host-sim-trigger.toml"), "{j}");
    // A variable naming a file that is not there is an error naming it, not another profile.
    let out = Command::new(&bin)
        .args(["run"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("FERROSCOPE_CONFIG", dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_no_profile_anywhere_the_error_names_every_place_searched() {
    if std::path::Path::new(SYSTEM_PROFILE).exists() {
        eprintln!("skipped: {SYSTEM_PROFILE} exists on this machine");
        return;
    }
    let (dir, bin) = copied_binary("none");
    for cmd in [&["run"][..], &["check"], &["records"], &["screen", "--out", "s.png"]] {
        let out = Command::new(&bin)
            .args(cmd)
            .current_dir(&dir)
            .env_remove("FERROSCOPE_CONFIG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for place in ["--config", "$FERROSCOPE_CONFIG", SYSTEM_PROFILE, "boards/host-sim.toml"] {
            assert!(err.contains(place), "{cmd:?}: {place} missing from: {err}");
        }
        assert!(
            err.contains(&dir.display().to_string()),
            "{cmd:?}: names the folder searched: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_timing_reports_every_run_idle_and_under_load_with_the_share_of_late_pulses() {
    let out = ferroscope(&[
        "bench-timing",
        "--items",
        "30",
        "--rate-fps",
        "40",
        "--load",
        "cpu",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["late_pulse_us"], 100);
    let runs = j["runs"].as_array().unwrap();
    let loads: Vec<Option<&str>> = runs.iter().map(|r| r["load"].as_str()).collect();
    assert_eq!(loads, [None, None, Some("cpu"), Some("cpu")]);
    let inference: Vec<bool> = runs.iter().map(|r| r["with_inference"].as_bool().unwrap()).collect();
    assert_eq!(inference, [false, true, false, true]);
    for r in runs {
        assert_eq!(r["items"], 30, "{r}");
        // Items 25 ms apart alternate between two ejectors: 50 ms between pulses 20 ms wide
        // with a 10 ms gap, so each item has a pulse of its own to time.
        assert!(r["pulses_timed"].as_u64().unwrap() >= 25, "{r}");
        let share = r["share_over_100_us"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&share), "{r}");
        for k in ["timing_error_us_p50", "timing_error_us_p99", "timing_error_us_max"] {
            assert!(r[k].is_u64(), "{k}: {r}");
        }
        assert!(
            r["timing_error_us_p50"].as_u64() <= r["timing_error_us_max"].as_u64(),
            "{r}"
        );
    }
    // A load that does not exist is refused with the ones that do.
    let out = ferroscope(&["bench-timing", "--load", "disk"]);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("cpu") && e.contains("memory") && e.contains("io") && e.contains("all"),
        "{e}"
    );
}

/// A serial line with nothing behind it: a pseudo-terminal whose other end (the returned
/// descriptor, for the caller to close) stays silent, and the path of the line.
fn silent_pty() -> (i32, String) {
    // SAFETY: plain libc calls on a descriptor this test owns; ptsname's buffer is copied at
    // once.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(fd >= 0);
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(fd))
            .to_str()
            .unwrap()
            .to_string();
        (fd, name)
    }
}

#[test]
fn check_names_a_coprocessor_that_is_not_there_or_does_not_answer() {
    let profile = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("boards/host-sim.toml");
    let row = |device: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
            .args(["check", "--json", "--config"])
            .arg(&profile)
            .arg("--coprocessor")
            .arg(device)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["ok"], false, "{j}");
        let rows = j["checks"].as_array().unwrap();
        // The profile's own devices are all there: only the co-processor fails.
        assert!(rows.iter().filter(|r| r["ok"] == false).count() == 1, "{j}");
        rows.iter()
            .find(|r| r["what"].as_str().unwrap().starts_with("reject co-processor"))
            .unwrap()
            .clone()
    };
    let missing = std::path::Path::new("/dev/ferroscope-no-such-serial");
    let r = row(missing);
    assert_eq!(r["ok"], false);
    assert!(r["detail"].as_str().unwrap().contains("cannot open"), "{r}");
    assert!(r["detail"].as_str().unwrap().contains(missing.to_str().unwrap()), "{r}");
    // A serial line with nothing behind it: a pseudo-terminal whose other end stays silent.
    let (master, slave) = silent_pty();
    let slave = std::path::PathBuf::from(slave);
    let r = row(&slave);
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("no answer from the co-processor"),
        "{r}"
    );
    // SAFETY: `master` is this test's descriptor, closed once.
    unsafe { libc::close(master) };
}

/// The co-processor profile with `device` and its relative paths made absolute.
fn coprocessor_profile(device: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::read_to_string(format!("{root}/boards/host-sim-coprocessor.toml"))
        .unwrap()
        .replace("\"../", &format!("\"{root}/"))
        .replace("device = \"/dev/ttyUSB0\"", &format!("device = \"{device}\""))
}

#[test]
fn a_coprocessor_profile_refuses_what_its_link_cannot_carry_naming_the_field() {
    use ferroscope::station::config::StationConfig;
    let path = std::path::Path::new("boards/x.toml");
    let good = coprocessor_profile("/dev/ttyUSB0");
    let cfg = StationConfig::parse(&good, path).unwrap_or_else(|e| panic!("{e:#}"));
    let cp = cfg.outputs.coprocessor.as_ref().unwrap();
    assert_eq!((cp.baud, cp.link_timeout_ms), (921_600, 50));
    for (text, needle) in [
        (
            good.replace("baud = 921600", "baud = 12345"),
            "outputs.coprocessor.baud",
        ),
        (
            good.replace("link_timeout_ms = 50", "link_timeout_ms = 1"),
            "outputs.coprocessor.link_timeout_ms",
        ),
        (
            good.replace("backend = \"coprocessor\"", "backend = \"recording\""),
            "[outputs.coprocessor]",
        ),
        (
            good.replace("belt_speed_mm_per_s = 500.0", "encoder_counts_per_mm = 4.0")
                .replace(
                    "[realtime]",
                    "[inputs]\ngpio_chip = \"/dev/gpiochip0\"\n[inputs.encoder]\nline = 3\n\n[realtime]",
                ),
            "speed mode",
        ),
    ] {
        let e = match StationConfig::parse(&text, path) {
            Ok(_) => panic!("accepted a profile that should be refused ({needle})"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("boards/x.toml") && e.contains(needle), "{e}");
    }
    // Without `[outputs.coprocessor]`: the error names the section.
    let bare = good
        .lines()
        .filter(|l| !l.starts_with("device =") && !l.starts_with("baud =") && !l.starts_with("link_timeout_ms ="))
        .filter(|l| *l != "[outputs.coprocessor]")
        .collect::<Vec<_>>()
        .join("\n");
    let e = format!("{:#}", StationConfig::parse(&bare, path).unwrap_err());
    assert!(e.contains("needs section `[outputs.coprocessor]`"), "{e}");
}

#[test]
fn a_station_whose_coprocessor_is_missing_or_silent_does_not_start_and_names_the_device() {
    let dir = std::env::temp_dir().join(format!("ferroscope-coprocessor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |device: &str| {
        let profile = dir.join("station.toml");
        std::fs::write(&profile, coprocessor_profile(device)).unwrap();
        let t0 = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
            .args(["run", "--json", "--config"])
            .arg(&profile)
            .output()
            .unwrap();
        assert!(t0.elapsed() < std::time::Duration::from_secs(20));
        assert_ne!(out.status.code(), Some(0), "started without its co-processor");
        assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run("/dev/ferroscope-no-such-serial");
    assert!(
        e.contains("/dev/ferroscope-no-such-serial") && e.contains("cannot open"),
        "{e}"
    );
    let (master, slave) = silent_pty();
    let e = run(&slave);
    assert!(
        e.contains(&slave) && e.contains("no answer from the co-processor"),
        "{e}"
    );
    // SAFETY: `master` is this test's descriptor, closed once.
    unsafe { libc::close(master) };
    let _ = std::fs::remove_dir_all(&dir);
}
