//! The `ferroscope` command: infer, evaluate, run the station, benchmark.
//!
//! Exit codes: 0 success, 1 the job ran but found a problem (for example an image failed),
//! 2 bad usage or a start-up error (config, manifest, model).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant as StdInstant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use ferroscope::alloc_count::{self, scoped, CountingAlloc, Scope, Snapshot};
use ferroscope::core::decision::{Action, ClassRule, DecisionRules};
use ferroscope::core::frame::GrayFrame;
use ferroscope::eval::ClassMetrics;
use ferroscope::model::manifest::{Manifest, Precision};
use ferroscope::sim::replay::{decode_gray, list_images};
use ferroscope::station::{self, config::StationConfig, config::DEFAULT_CONFIG_PATH, ItemReport};
use ferroscope::tools::classify::Classifier;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

mod cli_board;
mod cli_camera;
mod cli_grains;
mod cli_records;
mod cli_screen;
mod cli_segment;

#[derive(Parser)]
#[command(name = "ferroscope", version, about = "Steel-surface inspection station: int8 ONNX models with tract, accept/reject decisions, reject timing.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Int8,
    F32,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::Int8 => Precision::Int8,
            PrecisionArg::F32 => Precision::F32,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a model on images: classify (class, every head's score, decision), segment or
    /// anomaly (regions measured, decision, overlay) — whichever tool the manifest names.
    Infer {
        /// Model manifest (models/*.toml).
        #[arg(long)]
        model: PathBuf,
        /// Which model file of the manifest to run.
        #[arg(long, value_enum, default_value = "int8")]
        precision: PrecisionArg,
        /// Print one JSON object per image.
        #[arg(long)]
        json: bool,
        /// Segment / anomaly: write the frame with the defect map (anomaly: a heat map) and region boxes (a PNG; a folder for several images).
        #[arg(long)]
        overlay: Option<PathBuf>,
        /// Segment / anomaly: calibration, millimetres per frame pixel (without it sizes are in pixels).
        #[arg(long)]
        mm_per_px: Option<f32>,
        /// Segment / anomaly: reject when a region is longer than this (mm; needs --mm-per-px).
        #[arg(long)]
        reject_if_length_mm_over: Option<f32>,
        /// Segment / anomaly: reject when a region's area exceeds this (mm²; needs --mm-per-px).
        #[arg(long)]
        reject_if_area_mm2_over: Option<f32>,
        /// Images (png, jpg, bmp; any size, converted to gray).
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Grain size of a micrograph (GOST 5639-82, ASTM E112) from a boundary model or a boundary mask.
    Grains(cli_grains::GrainsArgs),
    /// Evaluate a model on a labelled folder and print metrics.
    Eval {
        #[command(subcommand)]
        tool: EvalTool,
    },
    /// Run the station loop (replay camera, tool, decisions, reject timing) and summarise.
    Run {
        /// Station config; default: the shipped host simulation (boards/host-sim.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one JSON line per item and end with the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Stop after this many seconds (a live camera otherwise runs until killed).
        #[arg(long)]
        duration_s: Option<f64>,
    },
    /// Open every device a board profile names (camera, GPIO lines, display, folders) and its
    /// model, without starting the station; exit 1 naming each one that is missing or busy.
    Check {
        /// Board profile / station config (boards/*.toml).
        #[arg(long)]
        config: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Render the technician's screen to a PNG without hardware.
    Screen {
        /// Station config (station and model names, display size); default: boards/host-sim.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// ok, reject, uncertain, fault, or demo (all four on one sheet).
        #[arg(long, default_value = "demo")]
        state: String,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
        /// Size WIDTHxHEIGHT (default: the config's display, or 800x480).
        #[arg(long)]
        size: Option<String>,
    },
    /// Time screen drawing: a full redraw and a counters-only update at 800x480 and 320x240,
    /// and packing into a framebuffer's XRGB8888, one thread.
    BenchScreen {
        /// Timed passes.
        #[arg(long, default_value_t = 100)]
        passes: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The persisted counters (total, per production day, per shift) and the last decisions.
    Records {
        /// Station config whose `[records] dir` to read (default: the host simulation's).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The records folder itself, instead of a config.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// How many of the last decisions to list.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The reject archive: list it or export entries.
    Archive {
        #[command(subcommand)]
        cmd: cli_records::ArchiveCmd,
    },
    /// V4L2 cameras: list them, probe one, or capture a frame.
    Camera {
        #[command(subcommand)]
        cmd: cli_camera::CameraCmd,
    },
    /// Time each camera format's conversion into the station's gray buffer (GREY, YUYV, RGB24,
    /// MJPEG at 640x480 and 1280x1024), one thread, against the simplest correct conversion.
    BenchCamera {
        /// Picture the test frames are made from; default: a committed NEU sample.
        #[arg(long)]
        image: Option<PathBuf>,
        /// Timed passes per format and size.
        #[arg(long, default_value_t = 50)]
        passes: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Simulate a conveyor in virtual time against the reject tracker (seeded: items at random
    /// spacing, defects, broken frames, slow decisions, speed changes, encoder jitter) and check
    /// every pulse against every item's true arrival.
    Simulate {
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Items.
        #[arg(long, default_value_t = 100_000)]
        items: u32,
        /// Follow the belt with a simulated encoder (1 count/mm, ±50 µs jitter, speed ramps)
        /// instead of reported speed steps.
        #[arg(long)]
        encoder: bool,
        /// Write the output timeline (`<µs> <output> <on|off>` per line) to this file.
        #[arg(long)]
        timeline: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Real reject scheduling on this machine: pulse placement against true arrival, with the
    /// station's actuator thread, recording backend and monotonic clock — idle, then with
    /// inference running on the frame thread, side by side.
    BenchTiming {
        /// Station config (belt speed, ejectors, model); default: boards/host-sim.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Items per run (every one rejected).
        #[arg(long, default_value_t = 1000)]
        items: u32,
        /// Items per second.
        #[arg(long, default_value_t = 50.0)]
        rate_fps: f32,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Time each stage (decode, preprocess, inference, decision) on one thread, count
    /// allocations per frame (ours and tract's), peak RSS; int8 and f32 side by side.
    Bench {
        /// Model manifest.
        #[arg(long)]
        model: PathBuf,
        /// Folder of images (and its sub-folders); default: the committed sample set of the model's tool.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Timed passes over the images.
        #[arg(long, default_value_t = 20)]
        passes: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Only this model file of the manifest (default: int8, then f32 when there is one).
        #[arg(long, value_enum)]
        precision: Option<PrecisionArg>,
        /// The model alone: `passes` runs of tract's plan on one fixed input (no decode,
        /// preprocessing or decision), and the optimised plan with the kernels tract picked.
        #[arg(long, conflicts_with = "images")]
        model_only: bool,
    },
}

#[derive(Subcommand)]
enum EvalTool {
    /// Grain sizes over DIR/images/* against DIR/masks/<stem>.png (grains 255, boundaries 0).
    Grains(cli_grains::EvalGrainsArgs),
    /// Classification over DIR/<class>/*.{png,jpg,bmp}; folder names are the manifest's classes.
    Classify {
        /// Model manifest.
        #[arg(long)]
        model: PathBuf,
        /// Dataset root(s) holding one folder per class; repeat to combine roots.
        #[arg(long, required = true)]
        data: Vec<PathBuf>,
        /// Evaluate only the images listed in this file (`class/name` per line, relative to a --data root).
        #[arg(long)]
        list: Option<PathBuf>,
        /// Which model file of the manifest to run.
        #[arg(long, value_enum, default_value = "int8")]
        precision: PrecisionArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Segmentation over DIR/images/* with DIR/masks/<stem>.png (0 background, 255 defect; all-zero for good parts).
    Segment {
        /// Model manifest.
        #[arg(long)]
        model: PathBuf,
        /// Dataset root holding images/ and masks/.
        #[arg(long)]
        data: PathBuf,
        /// Evaluate only the images named in this file (file names in images/, one per line).
        #[arg(long)]
        list: Option<PathBuf>,
        /// Which model file of the manifest to run.
        #[arg(long, value_enum, default_value = "int8")]
        precision: PrecisionArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Anomaly model (trained on good parts) over DIR/images/* with DIR/masks/<stem>.png, as `eval segment`:
    /// image AUROC, pixel AUROC, AP, false rejects and misses at the threshold.
    Anomaly {
        /// Model manifest.
        #[arg(long)]
        model: PathBuf,
        /// Dataset root holding images/ and masks/.
        #[arg(long)]
        data: PathBuf,
        /// Evaluate only the images named in this file (file names in images/, one per line).
        #[arg(long)]
        list: Option<PathBuf>,
        /// Which model file of the manifest to run.
        #[arg(long, value_enum, default_value = "int8")]
        precision: PrecisionArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Infer {
            model,
            precision,
            json,
            overlay,
            mm_per_px,
            reject_if_length_mm_over,
            reject_if_area_mm2_over,
            images,
        } => match Manifest::load(&model) {
            Ok(m) if m.model.tool == "segment" || m.model.tool == "anomaly" => {
                let rules = ferroscope::tools::segment::SegmentRules {
                    mm_per_px,
                    reject_if_length_mm_over,
                    reject_if_area_mm2_over,
                    ..Default::default()
                };
                cli_segment::infer(&model, precision.into(), json, &images, overlay.as_deref(), rules)
            }
            Ok(_) if overlay.is_some() || mm_per_px.is_some() => Err(anyhow::anyhow!(
                "{}: --overlay and --mm-per-px apply to segment and anomaly models",
                model.display()
            )),
            Ok(_) => infer(&model, precision.into(), json, &images),
            Err(e) => Err(e),
        },
        Command::Eval {
            tool:
                EvalTool::Classify {
                    model,
                    data,
                    list,
                    precision,
                    json,
                },
        } => eval_classify(&model, &data, list.as_deref(), precision.into(), json),
        Command::Eval {
            tool:
                EvalTool::Segment {
                    model,
                    data,
                    list,
                    precision,
                    json,
                },
        } => cli_segment::eval("segment", &model, &data, list.as_deref(), precision.into(), json),
        Command::Eval {
            tool:
                EvalTool::Anomaly {
                    model,
                    data,
                    list,
                    precision,
                    json,
                },
        } => cli_segment::eval("anomaly", &model, &data, list.as_deref(), precision.into(), json),
        Command::Grains(a) => cli_grains::grains(a),
        Command::Eval {
            tool: EvalTool::Grains(a),
        } => cli_grains::eval(a),
        Command::Run {
            config,
            json,
            duration_s,
        } => run(config.as_deref(), json, duration_s),
        Command::Check { config, json } => cli_board::check(&config, json),
        Command::Camera { cmd } => cli_camera::camera(cmd),
        Command::Records {
            config,
            dir,
            last,
            json,
        } => cli_records::records(config.as_deref(), dir.as_deref(), last, json),
        Command::Archive { cmd } => cli_records::archive(cmd),
        Command::Screen {
            config,
            state,
            out,
            size,
        } => cli_screen::screen(config.as_deref(), &state, &out, size.as_deref()),
        Command::BenchScreen { passes, json } => cli_screen::bench_screen(passes, json),
        Command::BenchCamera { image, passes, json } => cli_camera::bench_camera(image.as_deref(), passes, json),
        Command::Simulate {
            seed,
            items,
            encoder,
            timeline,
            json,
        } => simulate(seed, items, encoder, timeline.as_deref(), json),
        Command::BenchTiming {
            config,
            items,
            rate_fps,
            json,
        } => bench_timing(config.as_deref(), items, rate_fps, json),
        Command::Bench {
            model,
            images,
            passes,
            json,
            precision,
            model_only,
        } => bench(
            &model,
            images.as_deref(),
            passes,
            json,
            precision.map(Into::into),
            model_only,
        ),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn bench_timing(config: Option<&Path>, items: u32, rate_fps: f32, json: bool) -> Result<ExitCode> {
    use ferroscope::station::{config::StationConfig, config::DEFAULT_CONFIG_PATH, timing_bench};
    let path = config
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let cfg = StationConfig::load(&path)?;
    let idle = timing_bench(&cfg, items, rate_fps, false)?;
    let loaded = timing_bench(&cfg, items, rate_fps, true)?;
    let row = |r: &ferroscope::station::TimingReport| {
        let a = &r.audit;
        serde_json::json!({
            "items": r.items,
            "missed_rejects": a.missed_rejects,
            "timing_error_us_p50": a.timing_error_us_p50,
            "timing_error_us_p99": a.timing_error_us_p99,
            "timing_error_us_max": a.timing_error_us_max,
            "edge_error_us_p50": r.edge_error_us.0,
            "edge_error_us_p99": r.edge_error_us.1,
        })
    };
    let p99_loaded = loaded.audit.timing_error_us_p99.unwrap_or(0);
    let p99_idle = idle.audit.timing_error_us_p99.unwrap_or(0).max(1);
    let mm = |us: u64, m_per_s: f32| ferroscope::core::calibration::travel_distance_mm(us, m_per_s * 1000.0);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "config": path.display().to_string(),
                "rate_fps": rate_fps,
                "idle": row(&idle),
                "with_inference": row(&loaded),
                "p99_ratio_loaded_over_idle": p99_loaded as f64 / p99_idle as f64,
                "p99_mm_at_1_5_20_m_per_s": [mm(p99_loaded, 1.0), mm(p99_loaded, 5.0), mm(p99_loaded, 20.0)],
            })
        );
    } else {
        println!(
            "reject scheduling, {items} items at {rate_fps} items/s, {}",
            path.display()
        );
        println!("pulse centre vs true arrival (µs)     p50    p99    max   missed");
        for (name, r) in [("idle", &idle), ("inference on the frame thread", &loaded)] {
            let a = &r.audit;
            println!(
                "  {name:<34} {:>6} {:>6} {:>6} {:>6}",
                a.timing_error_us_p50.unwrap_or(0),
                a.timing_error_us_p99.unwrap_or(0),
                a.timing_error_us_max.unwrap_or(0),
                a.missed_rejects
            );
        }
        println!(
            "p99 under load / idle: {:.2}x; p99 under load in mm: {:.3} at 1 m/s, {:.3} at 5 m/s, {:.3} at 20 m/s",
            p99_loaded as f64 / p99_idle as f64,
            mm(p99_loaded, 1.0),
            mm(p99_loaded, 5.0),
            mm(p99_loaded, 20.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn simulate(seed: u64, items: u32, encoder: bool, timeline: Option<&Path>, json: bool) -> Result<ExitCode> {
    use ferroscope::sim::conveyor::{self, SimConfig};
    let cfg = SimConfig::reference(seed, items, encoder);
    let started = std::time::Instant::now();
    let r = conveyor::run(&cfg);
    let secs = started.elapsed().as_secs_f64();
    if let Some(p) = timeline {
        std::fs::write(p, conveyor::timeline_text(&r.timeline, usize::MAX))
            .with_context(|| format!("{}: cannot write the timeline", p.display()))?;
    }
    let ok = r.missed_rejects == 0
        && r.false_rejects == 0
        && r.duplicate_fires == 0
        && r.wrong_ejector == 0
        && r.gap_violations == 0
        && r.deadline_mismatches == 0
        && r.error_mm_max <= 1.0;
    if json {
        let mut j = r.to_json();
        j["seed"] = seed.into();
        j["mode"] = if encoder { "encoder" } else { "speed" }.into();
        j["ok"] = ok.into();
        j["seconds"] = secs.into();
        println!("{j}");
    } else {
        println!(
            "{} items ({} mode, seed {seed}) simulated in {secs:.1} s",
            r.items,
            if encoder { "encoder" } else { "speed" }
        );
        println!(
            "must reject {} (defective {}, fail-safe {}): rejected correctly {}, missed {}",
            r.must_reject, r.defective, r.failsafe_rejects, r.rejected_ok, r.missed_rejects
        );
        println!(
            "false rejects {}, duplicate fires {}, wrong ejector {}, pulses crowding the gap {}, deadline mismatches {}",
            r.false_rejects, r.duplicate_fires, r.wrong_ejector, r.gap_violations, r.deadline_mismatches
        );
        println!(
            "pulse centre vs true arrival: p50 {:.3} mm, p99 {:.3} mm, max {:.3} mm ({} / {} µs p50/p99)",
            r.error_mm_p50, r.error_mm_p99, r.error_mm_max, r.error_us_p50, r.error_us_p99
        );
        println!(
            "merged {}, overdue decisions {}, edges {}",
            r.tracker.merged,
            r.overdue,
            r.timeline.len()
        );
        println!("{}", if ok { "OK" } else { "FAILED" });
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Rules straight from the manifest: every class rejects at its threshold.
fn manifest_rules(m: &Manifest) -> Result<DecisionRules> {
    let rules: Vec<ClassRule> = m
        .classes
        .iter()
        .map(|c| ClassRule {
            reject: true,
            min_score: c.threshold,
        })
        .collect();
    DecisionRules::new(&rules, Action::Reject, Action::Reject)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", m.path.display()))
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Accept => "ACCEPT",
        Action::Reject => "REJECT",
    }
}

fn read_gray(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read image", path.display()))?;
    decode_gray(&bytes).map_err(|e| anyhow::anyhow!("{}: not a decodable image: {e}", path.display()))
}

fn infer(model: &Path, precision: Precision, json: bool, images: &[PathBuf]) -> Result<ExitCode> {
    let mut clf = Classifier::load(model, precision)?;
    let rules = manifest_rules(clf.manifest())?;
    let names: Vec<String> = clf.manifest().classes.iter().map(|c| c.name.clone()).collect();
    let mut failed = false;
    for path in images {
        let (w, h, px) = match read_gray(path) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e:#}");
                failed = true;
                continue;
            }
        };
        let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
        let scores = clf
            .classify(&frame)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .to_vec();
        let d = rules.decide(&scores);
        let class = d.class.map(|c| names[c as usize].as_str()).unwrap_or("-");
        if json {
            let s: serde_json::Map<_, _> = names.iter().zip(&scores).map(|(n, s)| (n.clone(), json!(s))).collect();
            println!(
                "{}",
                json!({"image": path.display().to_string(), "class": class, "score": d.score, "outcome": d.outcome.name(), "decision": action_name(d.action), "scores": s})
            );
        } else {
            println!(
                "{}: {} {:.3} → {} ({})",
                path.display(),
                class,
                d.score,
                action_name(d.action),
                d.outcome.name()
            );
            for (n, s) in names.iter().zip(&scores) {
                println!("    {n:<18} {s:.4}");
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn gather_labelled(data: &[PathBuf], list: Option<&Path>, classes: &[String]) -> Result<Vec<(PathBuf, usize)>> {
    let mut items = Vec::new();
    if let Some(list) = list {
        let text = std::fs::read_to_string(list).with_context(|| format!("{}: cannot read list", list.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let class = line.split('/').next().unwrap_or("");
            let Some(ci) = classes.iter().position(|c| c == class) else {
                bail!(
                    "{}:{}: class folder \"{class}\" is not a class of the model ({})",
                    list.display(),
                    n + 1,
                    classes.join(", ")
                );
            };
            let Some(path) = data.iter().map(|d| d.join(line)).find(|p| p.is_file()) else {
                bail!("{}:{}: {line} is in none of the --data folders", list.display(), n + 1);
            };
            items.push((path, ci));
        }
    } else {
        for root in data {
            for entry in std::fs::read_dir(root).with_context(|| format!("{}: cannot list", root.display()))? {
                let p = entry?.path();
                if !p.is_dir() {
                    continue;
                }
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
                let Some(ci) = classes.iter().position(|c| *c == name) else {
                    bail!(
                        "{}: folder \"{name}\" is not a class of the model ({})",
                        p.display(),
                        classes.join(", ")
                    );
                };
                for f in list_images(&p)? {
                    items.push((f, ci));
                }
            }
        }
        items.sort();
    }
    if items.is_empty() {
        bail!("no images found under {:?}", data);
    }
    Ok(items)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize - 1;
    v[i.min(v.len() - 1)]
}

fn eval_classify(
    model: &Path,
    data: &[PathBuf],
    list: Option<&Path>,
    precision: Precision,
    json: bool,
) -> Result<ExitCode> {
    let mut clf = Classifier::load(model, precision)?;
    let classes: Vec<String> = clf.manifest().classes.iter().map(|c| c.name.clone()).collect();
    let items = gather_labelled(data, list, &classes)?;
    let k = classes.len();
    let mut confusion = vec![vec![0u64; k]; k];
    let mut ms = Vec::with_capacity(items.len());
    let bar = if std::io::stderr().is_terminal() && !json {
        let b = indicatif::ProgressBar::new(items.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut errors = Vec::new();
    let started = StdInstant::now();
    for (path, truth) in &items {
        let t0 = StdInstant::now();
        let (w, h, px) = match read_gray(path) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
        let scores = clf
            .classify(&frame)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut best = 0;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[best] {
                best = i;
            }
        }
        confusion[*truth][best] += 1;
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let wall = started.elapsed().as_secs_f64();
    let n = ms.len();
    let m = ClassMetrics::from_confusion(confusion);
    let ms_median = median(&mut ms);
    let m_info = clf.manifest();
    if json {
        let per_class: Vec<_> = (0..k)
            .map(|c| json!({"class": classes[c], "precision": m.precision[c], "recall": m.recall[c], "f1": m.f1[c], "support": m.support[c]}))
            .collect();
        println!(
            "{}",
            json!({
                "model": m_info.model.name, "version": m_info.model.version, "precision_kind": precision.name(),
                "images": n, "accuracy": m.accuracy, "precision": m.macro_precision(), "recall": m.macro_recall(), "f1": m.macro_f1(),
                "classes": classes, "per_class": per_class, "confusion": m.confusion,
                "ms_per_image_median": ms_median, "images_per_s": n as f64 / wall, "errors": errors,
            })
        );
    } else {
        println!(
            "model {} {} ({}) on {} images",
            m_info.model.name,
            m_info.model.version,
            precision.name(),
            n
        );
        println!(
            "accuracy {:.2} %   macro precision {:.2} %   recall {:.2} %   F1 {:.2} %",
            m.accuracy * 100.0,
            m.macro_precision() * 100.0,
            m.macro_recall() * 100.0,
            m.macro_f1() * 100.0
        );
        println!(
            "{:.1} images/s, {:.2} ms per image (median, decode + preprocess + inference, one thread)",
            n as f64 / wall,
            ms_median
        );
        println!();
        println!(
            "{:<18} {:>9} {:>9} {:>9} {:>7}",
            "class", "precision", "recall", "F1", "images"
        );
        for (c, name) in classes.iter().enumerate() {
            println!(
                "{:<18} {:>8.2}% {:>8.2}% {:>8.2}% {:>7}",
                name,
                m.precision[c] * 100.0,
                m.recall[c] * 100.0,
                m.f1[c] * 100.0,
                m.support[c]
            );
        }
        println!();
        println!("confusion (rows: truth, columns: predicted, in class order)");
        for (c, row) in m.confusion.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>4}")).collect();
            println!("{:<18} {}", classes[c], cells.join(""));
        }
        for e in &errors {
            eprintln!("error: {e}");
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run(config: Option<&Path>, json: bool, duration_s: Option<f64>) -> Result<ExitCode> {
    let path = config
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let cfg = StationConfig::load(&path)?;
    if !json {
        println!("station {} — config {}", cfg.station.name, path.display());
    }
    let stdout = std::io::stdout();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(d) = duration_s {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs_f64(d.max(0.0)));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let summary = station::run_until(&cfg, &stop, |item| {
        // Written field by field into the locked stdout: logging must not allocate per item.
        let mut out = stdout.lock();
        let _ = if json {
            write_item_json(&mut out, item)
        } else {
            write_item_text(&mut out, item)
        };
    })?;
    let j = summary.to_json();
    if json {
        println!("{j}");
    } else {
        let c = &summary.counters;
        println!();
        println!("model {}", summary.model);
        println!(
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
        println!(
            "rejected per class: {}",
            if per.is_empty() { "-".into() } else { per.join(", ") }
        );
        println!(
            "latency capture→decision p50 {} ms, p99 {} ms",
            j["latency_ms_p50"], j["latency_ms_p99"]
        );
        let fired: Vec<String> = summary
            .ejectors
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} {}", summary.tracker.fired[i]))
            .collect();
        println!(
            "reject pulses {} (fired per ejector: {}; fail-safe rejects {}, line stops {}, merged {})",
            summary.pulses(),
            fired.join(", "),
            summary.tracker.failsafe_rejects,
            summary.tracker.line_stops,
            summary.tracker.merged
        );
        if let Some(a) = &summary.audit {
            println!(
                "against true arrival: missed rejects {}, false rejects {}, pulse centre error p50 {} µs, p99 {} µs ({:.3} mm at {} mm/s)",
                a.missed_rejects,
                a.false_rejects,
                a.timing_error_us_p50.unwrap_or(0),
                a.timing_error_us_p99.unwrap_or(0),
                a.timing_error_us_p99.unwrap_or(0) as f64 * a.belt_speed_mm_per_s as f64 / 1e6,
                a.belt_speed_mm_per_s
            );
        }
        let k = &summary.camera;
        println!(
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
            println!(
                "labelled items {}: {} decided as their folder's class",
                summary.labelled, summary.correct
            );
        }
        println!(
            "allocations after the first item: ours {}, tract {:.0} per item",
            summary.allocations_ours_after_warmup, summary.allocations_tract_per_item
        );
    }
    Ok(ExitCode::SUCCESS)
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

struct StageStats {
    decode: Vec<f64>,
    preprocess: Vec<f64>,
    inference: Vec<f64>,
    decision: Vec<f64>,
    total: Vec<f64>,
    allocs_ours: u64,
    allocs_tract: u64,
    allocs_decode: u64,
    frames: u64,
}

/// `bench` for a tiled (segment or anomaly) model: decode, tiling + stitching (`preprocess`), the model
/// over every tile (`inference`), regions + measurements + decision (`decision`).
fn bench_tiled_one(
    manifest: &Manifest,
    precision: Precision,
    files: &[(PathBuf, Vec<u8>)],
    passes: usize,
) -> Result<StageStats> {
    use ferroscope::tools::segment::{SegmentRules, Segmenter};
    let rules = SegmentRules {
        mm_per_px: Some(0.05),
        reject_if_length_mm_over: Some(2.0),
        ..Default::default()
    };
    let mut seg = Segmenter::from_tiled(manifest.clone(), precision, rules)?;
    let n = files.len() * passes;
    let mut st = StageStats {
        decode: Vec::with_capacity(n),
        preprocess: Vec::with_capacity(n),
        inference: Vec::with_capacity(n),
        decision: Vec::with_capacity(n),
        total: Vec::with_capacity(n),
        allocs_ours: 0,
        allocs_tract: 0,
        allocs_decode: 0,
        frames: 0,
    };
    // Warm-up pass: buffers grow to the largest frame, tract sizes its scratch.
    for (path, bytes) in files {
        let (w, h, px) = decode_gray(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        seg.segment(&frame)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let mut sink = 0usize;
    for _ in 0..passes {
        for (path, bytes) in files {
            let d0 = Snapshot::take();
            let t0 = StdInstant::now();
            let (w, h, px) =
                scoped(Scope::Decode, || decode_gray(bytes)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let t1 = StdInstant::now();
            let a0 = Snapshot::take();
            st.allocs_decode += a0.since(&d0, Scope::Decode);
            let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let r = seg
                .segment(&frame)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let t2 = StdInstant::now();
            sink += r.regions.len() + r.reject as usize;
            let (inference_ms, map_ms) = (r.inference_us as f64 / 1000.0, r.map_us as f64 / 1000.0);
            let a1 = Snapshot::take();
            st.allocs_ours += a1.since(&a0, Scope::Ours);
            st.allocs_tract += a1.since(&a0, Scope::Tract);
            st.frames += 1;
            let ms = |a: StdInstant, b: StdInstant| (b - a).as_secs_f64() * 1000.0;
            st.decode.push(ms(t0, t1));
            st.preprocess.push(map_ms - inference_ms);
            st.inference.push(inference_ms);
            st.decision.push(ms(t1, t2) - map_ms);
            st.total.push(ms(t0, t2));
        }
    }
    std::hint::black_box(sink);
    Ok(st)
}

fn bench_one(
    manifest: &Manifest,
    precision: Precision,
    files: &[(PathBuf, Vec<u8>)],
    passes: usize,
) -> Result<StageStats> {
    let mut clf = Classifier::from_manifest(manifest.clone(), precision)?;
    let rules = manifest_rules(manifest)?;
    let mut st = StageStats {
        decode: vec![],
        preprocess: vec![],
        inference: vec![],
        decision: vec![],
        total: vec![],
        allocs_ours: 0,
        allocs_tract: 0,
        allocs_decode: 0,
        frames: 0,
    };
    let n = files.len() * passes;
    for v in [
        &mut st.decode,
        &mut st.preprocess,
        &mut st.inference,
        &mut st.decision,
        &mut st.total,
    ] {
        v.reserve(n);
    }
    // Warm-up pass (sizes buffers and tract's scratch).
    for (_, bytes) in files {
        let (w, h, px) = decode_gray(bytes).map_err(anyhow::Error::msg)?;
        let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        clf.classify(&frame).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut sink = 0usize;
    for _ in 0..passes {
        for (path, bytes) in files {
            let d0 = Snapshot::take();
            let t0 = StdInstant::now();
            let (w, h, px) =
                scoped(Scope::Decode, || decode_gray(bytes)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let t1 = StdInstant::now();
            let a0 = Snapshot::take();
            st.allocs_decode += a0.since(&d0, Scope::Decode);
            let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            clf.preprocess(&frame).map_err(|e| anyhow::anyhow!("{e}"))?;
            let t2 = StdInstant::now();
            let scores = clf.infer().map_err(|e| anyhow::anyhow!("{e}"))?;
            let t3 = StdInstant::now();
            let d = rules.decide(scores);
            sink += d.class.unwrap_or(0) as usize;
            let t4 = StdInstant::now();
            let a1 = Snapshot::take();
            st.allocs_ours += a1.since(&a0, Scope::Ours);
            st.allocs_tract += a1.since(&a0, Scope::Tract);
            st.frames += 1;
            let ms = |a: StdInstant, b: StdInstant| (b - a).as_secs_f64() * 1000.0;
            st.decode.push(ms(t0, t1));
            st.preprocess.push(ms(t1, t2));
            st.inference.push(ms(t2, t3));
            st.decision.push(ms(t3, t4));
            st.total.push(ms(t0, t4));
        }
    }
    std::hint::black_box(sink);
    Ok(st)
}

fn bench(
    model: &Path,
    images: Option<&Path>,
    passes: usize,
    json: bool,
    only: Option<Precision>,
    model_only: bool,
) -> Result<ExitCode> {
    if model_only {
        // any tool's model: grains manifests have a loader of their own
        let manifest = match Manifest::load(model) {
            Ok(m) => m,
            Err(e) => ferroscope::grains::model::load_manifest(model)
                .map(|(m, _)| m)
                .map_err(|_| e)?,
        };
        return bench_model_only(&manifest, only, passes.max(1), json);
    }
    let manifest = Manifest::load(model)?;
    let dir = images.map(Path::to_path_buf).unwrap_or_else(|| {
        PathBuf::from(if manifest.tiled.is_some() {
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kolektor_samples/images")
        } else {
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/neu_samples")
        })
    });
    let files: Vec<(PathBuf, Vec<u8>)> = list_images(&dir)?
        .into_iter()
        .map(|p| {
            std::fs::read(&p)
                .map(|b| (p.clone(), b))
                .with_context(|| format!("{}: cannot read", p.display()))
        })
        .collect::<Result<_>>()?;
    if files.is_empty() {
        bail!("{}: no images", dir.display());
    }
    let mut results = serde_json::Map::new();
    for p in bench_precisions(&manifest, only)? {
        let mut st = if manifest.tiled.is_some() {
            bench_tiled_one(&manifest, p, &files, passes.max(1))?
        } else {
            bench_one(&manifest, p, &files, passes.max(1))?
        };
        let frames = st.frames.max(1) as f64;
        let decode_allocs = st.allocs_decode;
        let stage = |v: &mut Vec<f64>| json!({"median_ms": median(v), "p99_ms": percentile(v, 99.0)});
        let total_median = median(&mut st.total);
        let obj = json!({
            "file": manifest.model_path(p)?.display().to_string(),
            "frames": st.frames,
            "decode": stage(&mut st.decode),
            "preprocess": stage(&mut st.preprocess),
            "inference": stage(&mut st.inference),
            "decision": stage(&mut st.decision),
            "end_to_end": {"median_ms": total_median, "p99_ms": percentile(&mut st.total, 99.0)},
            "images_per_s_one_thread": 1000.0 / total_median,
            "allocations_per_frame_ours": st.allocs_ours as f64 / frames,
            "allocations_per_frame_tract": st.allocs_tract as f64 / frames,
            "allocations_per_frame_decode": decode_allocs as f64 / frames,
        });
        results.insert(p.name().to_string(), obj);
    }
    let rss = alloc_count::peak_rss_kib();
    let out = json!({"model": manifest.model.name, "images": files.len(), "passes": passes, "threads": 1, "peak_rss_kib": rss, "results": results});
    if json {
        println!("{out}");
    } else {
        println!(
            "model {} — {} images × {} passes, one thread",
            manifest.model.name,
            files.len(),
            passes
        );
        for (p, r) in &results {
            println!("\n[{p}] {}", r["file"].as_str().unwrap_or(""));
            for s in ["decode", "preprocess", "inference", "decision", "end_to_end"] {
                println!(
                    "  {:<11} median {:>8.3} ms   p99 {:>8.3} ms",
                    s,
                    r[s]["median_ms"].as_f64().unwrap_or(0.0),
                    r[s]["p99_ms"].as_f64().unwrap_or(0.0)
                );
            }
            println!(
                "  images/s (one thread): {:.0}",
                r["images_per_s_one_thread"].as_f64().unwrap_or(0.0)
            );
            println!(
                "  allocations per frame: ours {}, tract {}",
                r["allocations_per_frame_ours"], r["allocations_per_frame_tract"]
            );
        }
        println!(
            "\npeak RSS {} KiB",
            rss.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The manifest's model files `bench` runs: `only`, or int8 then f32 when there is one.
fn bench_precisions(manifest: &Manifest, only: Option<Precision>) -> Result<Vec<Precision>> {
    Ok(match only {
        Some(p) => {
            manifest.model_path(p)?;
            vec![p]
        }
        None if manifest.model.f32_file.is_some() => vec![Precision::Int8, Precision::F32],
        None => vec![Precision::Int8],
    })
}

/// `bench --model-only`: the model file loaded as every tool loads it (the manifest's input
/// shape), then `passes` runs on one fixed input, timed and with tract's allocations counted;
/// and the optimised plan: each op with tract's description, and the matrix kernels named in
/// them (tract picks them for the CPU it runs on).
fn bench_model_only(manifest: &Manifest, only: Option<Precision>, passes: usize, json: bool) -> Result<ExitCode> {
    use ferroscope::model::engine::Engine;
    let mut results = serde_json::Map::new();
    for p in bench_precisions(manifest, only)? {
        let file = manifest.model_path(p)?;
        let mut engine = Engine::load_outputs(&file, &manifest.input.shape)?;
        // A fixed input: a ramp of grey levels, normalised as the manifest says.
        let (mean, std) = (manifest.input.mean, manifest.input.std);
        for (i, v) in engine.input_mut().iter_mut().enumerate() {
            *v = ((i * 7 % 256) as f32 / 255.0 - mean) / std;
        }
        let mut out = vec![0.0f32; engine.output_len()];
        let mut times = Vec::with_capacity(passes);
        let (mut allocs_tract, mut allocs_ours) = (0u64, 0u64);
        for _ in 0..passes {
            let a0 = Snapshot::take();
            let t0 = StdInstant::now();
            scoped(Scope::Tract, || engine.run(&mut out)).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            let a1 = Snapshot::take();
            allocs_tract += a1.since(&a0, Scope::Tract);
            allocs_ours += a1.since(&a0, Scope::Ours);
        }
        std::hint::black_box(&out);
        let plan = engine.plan_ops();
        let mut kernels: Vec<String> = plan
            .iter()
            .flat_map(|(_, info)| info.iter())
            .flat_map(|line| line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            // tract-linalg's kernel names: <isa>_mmm_<type>_<tile>[_<core>], generic_<type>_<tile>
            .filter(|word| word.contains("_mmm_") || (word.starts_with("generic_") && word.contains('x')))
            .map(str::to_string)
            .collect();
        kernels.sort();
        kernels.dedup();
        let plan: Vec<_> = plan
            .into_iter()
            .map(|(op, info)| json!({"op": op, "info": info}))
            .collect();
        results.insert(
            p.name().to_string(),
            json!({
                "file": file.display().to_string(),
                "runs": passes,
                "inference": {"median_ms": median(&mut times), "p99_ms": percentile(&mut times, 99.0)},
                "allocations_per_run_tract": allocs_tract as f64 / passes as f64,
                "allocations_per_run_ours": allocs_ours as f64 / passes as f64,
                "kernels": kernels,
                "plan": plan,
            }),
        );
    }
    if json {
        println!(
            "{}",
            json!({"model": manifest.model.name, "input_shape": manifest.input.shape, "runs": passes, "threads": 1, "results": results})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "model {} alone — {} runs on one fixed input, one thread",
        manifest.model.name, passes
    );
    for (p, r) in &results {
        println!("\n[{p}] {}", r["file"].as_str().unwrap_or(""));
        println!(
            "  inference   median {:>8.3} ms   p99 {:>8.3} ms",
            r["inference"]["median_ms"].as_f64().unwrap_or(0.0),
            r["inference"]["p99_ms"].as_f64().unwrap_or(0.0)
        );
        println!("  allocations per run: tract {}", r["allocations_per_run_tract"]);
        println!("  matrix kernels: {}", r["kernels"]);
        let ops: Vec<&str> = r["plan"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|op| op["op"].as_str())
            .collect();
        println!("  plan ({} ops): {}", ops.len(), ops.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}
