//! The `ferroscope` command: infer, evaluate, run the station, benchmark.
//!
//! This file only parses the command line and hands each command to its module under `cli/`.
//!
//! Exit codes: 0 success, 1 the job ran but found a problem (for example an image failed),
//! 2 bad usage or a start-up error (config, manifest, model).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ferroscope::alloc_count::CountingAlloc;

mod cli;

use cli::{bench, camera, check, eval, grains, infer, recipe, records, run, screen, simulate};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser)]
#[command(name = "ferroscope", version, about = "Steel-surface inspection station: int8 ONNX models with tract, accept/reject decisions, reject timing.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model on images: classify (class, every head's score, decision), segment or
    /// anomaly (regions measured, decision, overlay) — whichever tool the manifest names.
    Infer(infer::InferArgs),
    /// Grain size of a micrograph (GOST 5639-82, ASTM E112) from a boundary model or a boundary mask.
    Grains(grains::GrainsArgs),
    /// Evaluate a model on a labelled folder and print metrics.
    Eval {
        #[command(subcommand)]
        tool: eval::EvalTool,
    },
    /// Run the station loop (replay camera, tool, decisions, reject timing) and summarise.
    Run(run::RunArgs),
    /// Open every device a board profile names (camera, GPIO lines, display, folders) and its
    /// model, without starting the station; exit 1 naming each one that is missing or busy.
    Check(check::CheckArgs),
    /// Render the technician's screen to a PNG without hardware.
    Screen(screen::ScreenArgs),
    /// Time screen drawing: a full redraw and a counters-only update at 800x480 and 320x240,
    /// and packing into a framebuffer's XRGB8888, one thread.
    BenchScreen(screen::BenchScreenArgs),
    /// The running station's recipes (products): list them, or switch to one.
    Recipe {
        #[command(subcommand)]
        cmd: recipe::RecipeCmd,
    },
    /// The persisted counters (total, per production day, per shift) and the last decisions.
    Records(records::RecordsArgs),
    /// The reject archive: list it or export entries.
    Archive {
        #[command(subcommand)]
        cmd: records::ArchiveCmd,
    },
    /// V4L2 cameras: list them, probe one, or capture a frame.
    Camera {
        #[command(subcommand)]
        cmd: camera::CameraCmd,
    },
    /// Time each camera format's conversion into the station's gray buffer (GREY, YUYV, RGB24,
    /// MJPEG at 640x480 and 1280x1024), one thread, against the simplest correct conversion.
    BenchCamera(camera::BenchCameraArgs),
    /// Simulate a conveyor in virtual time against the reject tracker (seeded: items at random
    /// spacing, defects, broken frames, slow decisions, speed changes, encoder jitter) and check
    /// every pulse against every item's true arrival.
    Simulate(simulate::SimulateArgs),
    /// Real reject scheduling on this machine: pulse placement against true arrival, with the
    /// station's actuator thread, recording backend and monotonic clock — idle, then with
    /// inference running on the frame thread, side by side.
    BenchTiming(simulate::BenchTimingArgs),
    /// Time each stage (decode, preprocess, inference, decision) on one thread, count
    /// allocations per frame (ours and tract's), peak RSS; int8 and f32 side by side.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Infer(a) => infer::run(a),
        Command::Grains(a) => grains::grains(a),
        Command::Eval { tool } => eval::run(tool),
        Command::Run(a) => run::run(a.config.as_deref(), a.json, a.duration_s),
        Command::Check(a) => check::check(&a),
        Command::Camera { cmd } => camera::camera(cmd),
        Command::Recipe { cmd } => recipe::recipe(cmd),
        Command::Records(a) => records::records(a.config.as_deref(), a.dir.as_deref(), a.last, a.json),
        Command::Archive { cmd } => records::archive(cmd),
        Command::Screen(a) => screen::screen(a.config.as_deref(), &a.state, &a.out, a.size.as_deref()),
        Command::BenchScreen(a) => screen::bench_screen(a.passes, a.json),
        Command::BenchCamera(a) => camera::bench_camera(a.image.as_deref(), a.passes, a.json),
        Command::Simulate(a) => match &a.coprocessor {
            Some(device) => simulate::simulate_coprocessor(&a, device),
            None => simulate::simulate(a.seed, a.items, a.encoder, a.timeline.as_deref(), a.json),
        },
        Command::BenchTiming(a) => simulate::bench_timing(a.config.as_deref(), a.items, a.rate_fps, a.load, a.json),
        Command::Bench(a) => bench::bench(
            &a.model,
            a.images.as_deref(),
            a.passes,
            a.json,
            a.precision.map(Into::into),
            a.model_only,
            a.by_operator,
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
