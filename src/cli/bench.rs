//! `ferroscope bench`: each stage of the frame path timed on one thread.
//!
//! - decode, preprocess, inference and decision timed per frame, median and p99, after a
//!   warm-up pass that sizes every buffer;
//! - allocations per frame counted apart: ours, tract's, and the decoder's;
//! - int8 and, when the manifest has one, f32 side by side; peak RSS at the end.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant as StdInstant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use ferroscope::alloc_count::{self, scoped, Scope, Snapshot};
use ferroscope::core::frame::GrayFrame;
use ferroscope::model::manifest::{Manifest, Precision};
use ferroscope::sim::replay::{decode_gray, list_images};
use ferroscope::tools::classify::Classifier;

use super::{manifest_rules, median, percentile, PrecisionArg};

/// `ferroscope bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Model manifest.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder of images (and its sub-folders); default: the committed sample set of the model's tool.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Timed passes over the images.
    #[arg(long, default_value_t = 20)]
    pub passes: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Only this model file of the manifest (default: int8, then f32 when there is one).
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// The model alone: `passes` runs of tract's plan on one fixed input (no decode,
    /// preprocessing or decision), and the optimised plan with the kernels it runs. The first
    /// run is the warm-up: its time and allocations are given apart, the medians and per-run
    /// figures are those of the runs after it.
    #[arg(long, conflicts_with = "images")]
    pub model_only: bool,
    /// With --model-only: as many runs again, each plan node timed, and the time by operator
    /// (`time_by_op`) and by node (`time_by_node`: each timed node's name, operator, description
    /// and time, the slowest first; the text output lists the ten slowest). Off by default, so the runs `--model-only` makes are exactly `passes`
    /// (the ARM cost meter differences them).
    #[arg(long, requires = "model_only")]
    pub by_operator: bool,
}

struct StageStats {
    decode: Vec<f64>,
    preprocess: Vec<f64>,
    inference: Vec<f64>,
    decision: Vec<f64>,
    total: Vec<f64>,
    allocs_ours: u64,
    allocs_tract: u64,
    pool_hits_tract: u64,
    allocs_decode: u64,
    frames: u64,
}

impl StageStats {
    /// Empty, with room for `n` frames' timings.
    fn new(n: usize) -> StageStats {
        StageStats {
            decode: Vec::with_capacity(n),
            preprocess: Vec::with_capacity(n),
            inference: Vec::with_capacity(n),
            decision: Vec::with_capacity(n),
            total: Vec::with_capacity(n),
            allocs_ours: 0,
            allocs_tract: 0,
            pool_hits_tract: 0,
            allocs_decode: 0,
            frames: 0,
        }
    }

    /// Count one frame and the allocations made between `a0` and `a1`.
    fn count_frame(&mut self, a0: &Snapshot, a1: &Snapshot) {
        self.allocs_ours += a1.since(a0, Scope::Ours);
        self.allocs_tract += a1.since(a0, Scope::Tract);
        self.pool_hits_tract += a1.pool_hits - a0.pool_hits;
        self.frames += 1;
    }
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
    let mut st = StageStats::new(n);
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
            st.count_frame(&a0, &a1);
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

/// `bench` for a grains model: decode, tiling + stitching (`preprocess`), the model over every
/// tile (`inference`), threshold + grain analysis (`decision`).
fn bench_grains_one(
    model: &Path,
    precision: Precision,
    files: &[(PathBuf, Vec<u8>)],
    passes: usize,
) -> Result<StageStats> {
    use ferroscope::grains::model::GrainModel;
    let mut gm = GrainModel::load(model, precision)?;
    let um_per_px = gm.section().um_per_px;
    let n = files.len() * passes;
    let mut st = StageStats::new(n);
    // Warm-up pass: buffers grow to the largest micrograph, tract sizes its scratch.
    for (path, bytes) in files {
        let (w, h, px) = decode_gray(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let frame = GrayFrame::new(&px, w, h, w).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        gm.grains(&frame, um_per_px)
            .with_context(|| path.display().to_string())?;
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
            let out = gm.boundary_map(&frame).with_context(|| path.display().to_string())?;
            let t2 = StdInstant::now();
            let params = gm.section().params(um_per_px);
            let level = gm.section().pixel_threshold;
            let report = gm
                .analyse_map(level, &params)
                .with_context(|| path.display().to_string())?;
            let t3 = StdInstant::now();
            sink += report.whole;
            let a1 = Snapshot::take();
            st.count_frame(&a0, &a1);
            let ms = |a: StdInstant, b: StdInstant| (b - a).as_secs_f64() * 1000.0;
            let inference_ms = out.inference_us as f64 / 1000.0;
            st.decode.push(ms(t0, t1));
            st.preprocess.push(ms(t1, t2) - inference_ms);
            st.inference.push(inference_ms);
            st.decision.push(ms(t2, t3));
            st.total.push(ms(t0, t3));
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
    let n = files.len() * passes;
    let mut st = StageStats::new(n);
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
            st.count_frame(&a0, &a1);
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

pub fn bench(
    model: &Path,
    images: Option<&Path>,
    passes: usize,
    json: bool,
    only: Option<Precision>,
    model_only: bool,
    by_operator: bool,
) -> Result<ExitCode> {
    if model_only {
        // any tool's model: grains manifests have a loader of their own
        let manifest = match Manifest::load(model) {
            Ok(m) => m,
            Err(e) => ferroscope::grains::model::load_manifest(model)
                .map(|(m, _)| m)
                .map_err(|_| e)?,
        };
        return bench_model_only(&manifest, only, passes.max(1), json, by_operator);
    }
    // a grains manifest has a loader of its own
    let (manifest, grains) = match Manifest::load(model) {
        Ok(m) => (m, false),
        Err(e) => match ferroscope::grains::model::load_manifest(model) {
            Ok((m, _)) => (m, true),
            Err(_) => return Err(e),
        },
    };
    let dir = images.map(Path::to_path_buf).unwrap_or_else(|| {
        PathBuf::from(if grains {
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/grains_samples/images")
        } else if manifest.tiled.is_some() {
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
        let mut st = if grains {
            bench_grains_one(model, p, &files, passes.max(1))?
        } else if manifest.tiled.is_some() {
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
            "pool_hits_per_frame_tract": st.pool_hits_tract as f64 / frames,
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
fn bench_model_only(
    manifest: &Manifest,
    only: Option<Precision>,
    passes: usize,
    json: bool,
    by_operator: bool,
) -> Result<ExitCode> {
    use ferroscope::model::engine::{Engine, PlanNode};
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
        // The first run is the warm-up (tract sizes its scratch, the integer operator its
        // buffers): its allocations are counted apart, so the per-run figures are those of the
        // runs after it, the steady state a station runs in.
        let (mut allocs_tract, mut allocs_ours, mut pool_hits) = (0u64, 0u64, 0u64);
        let mut first_run_tract = 0u64;
        for pass in 0..passes {
            let a0 = Snapshot::take();
            let t0 = StdInstant::now();
            scoped(Scope::Tract, || engine.run(&mut out)).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            let a1 = Snapshot::take();
            if pass == 0 {
                first_run_tract = a1.since(&a0, Scope::Tract);
                continue;
            }
            allocs_tract += a1.since(&a0, Scope::Tract);
            allocs_ours += a1.since(&a0, Scope::Ours);
            pool_hits += a1.pool_hits - a0.pool_hits;
        }
        // per run after the first; none when there was only the first
        let steady = |n: u64| (passes > 1).then(|| n as f64 / (passes - 1) as f64);
        // The time, likewise, of the runs after the first (the first alone with --passes 1).
        let first_ms = times[0];
        let steady_times = if times.len() > 1 {
            &mut times[1..]
        } else {
            &mut times[..]
        };
        // Time by operator: as many runs again, each node timed (the clock read around every
        // node costs a little; the shares are the figure).
        let mut per_node = Vec::new();
        for _ in 0..if by_operator { passes } else { 0 } {
            engine
                .run_timed(&mut out, &mut per_node)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        }
        std::hint::black_box(&out);
        let nodes = engine.plan();
        let mut by_op: Vec<(String, f64, usize)> = Vec::new();
        for (node, secs) in nodes.iter().zip(&per_node) {
            match by_op.iter_mut().find(|(op, _, _)| *op == node.op) {
                Some(entry) => {
                    entry.1 += secs;
                    entry.2 += 1;
                }
                None => by_op.push((node.op.clone(), *secs, 1)),
            }
        }
        let timed: f64 = by_op.iter().map(|e| e.1).sum();
        // the same times node by node, the slowest first (a model's hot convolution by name)
        let mut by_node: Vec<(&PlanNode, f64)> = nodes.iter().zip(&per_node).map(|(n, s)| (n, *s)).collect();
        by_node.retain(|e| e.1 > 0.0);
        by_node.sort_by(|a, b| b.1.total_cmp(&a.1));
        let time_by_node: Vec<_> = by_node
            .iter()
            .map(|(n, secs)| {
                json!({"node": n.name, "op": n.op, "info": n.info, "ms_per_run": secs * 1000.0 / passes as f64,
                       "share": if timed > 0.0 { secs / timed } else { 0.0 }})
            })
            .collect();
        by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
        let time_by_op: Vec<_> = by_op
            .iter()
            .filter(|e| e.1 > 0.0)
            .map(|(op, secs, n)| {
                json!({"op": op, "nodes": n, "ms_per_run": secs * 1000.0 / passes as f64,
                       "share": if timed > 0.0 { secs / timed } else { 0.0 }})
            })
            .collect();
        // the plan without its constants: each op's name and tract's description of it
        let plan: Vec<(String, Vec<String>)> = nodes
            .into_iter()
            .filter(|n| n.op != "Const")
            .map(|n| (n.op, n.info))
            .collect();
        let mut kernels: Vec<String> = plan
            .iter()
            .filter(|(op, _)| op == "QConvInt8")
            .flat_map(|(_, info)| info.iter())
            .filter_map(|line| line.strip_prefix("kernel ").and_then(|k| k.split(',').next()))
            .map(|k| match k {
                // the integer convolution's kernels, named as tract names its own
                "ArmDot" => "qconv_i8_dot".to_string(),
                "ArmSmlal" => "qconv_i8_smlal".to_string(),
                "ArmV7Neon" => "qconv_i8_vmlal".to_string(),
                "X86Vnni" | "X86AvxVnni" => "qconv_i8_vnni".to_string(),
                "X86Avx2" => "qconv_i8_avx2".to_string(),
                "X86Vnni (plane)" => "qconv_i8_vnni_plane".to_string(),
                "X86AvxVnni (plane)" => "qconv_i8_avx_vnni_plane".to_string(),
                "X86Avx2 (plane)" => "qconv_i8_avx2_plane".to_string(),
                "ArmDot (plane)" | "ArmSmlal (plane)" => "qconv_i8_neon_plane".to_string(),
                _ => "qconv_i8_portable".to_string(),
            })
            .collect();
        kernels.extend(
            plan.iter()
                .flat_map(|(_, info)| info.iter())
                .flat_map(|line| line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
                // tract-linalg's kernel names: <isa>_mmm_<type>_<tile>[_<core>], generic_<type>_<tile>
                .filter(|word| word.contains("_mmm_") || (word.starts_with("generic_") && word.contains('x')))
                .map(str::to_string),
        );
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
                "inference": {"median_ms": median(steady_times), "p99_ms": percentile(steady_times, 99.0),
                              "timed_runs": steady_times.len(), "first_run_ms": first_ms},
                "allocations_first_run_tract": first_run_tract,
                "allocations_per_run_tract": steady(allocs_tract),
                "allocations_per_run_ours": steady(allocs_ours),
                "pool_hits_per_run_tract": steady(pool_hits),
                "kernels": kernels,
                "time_by_op": time_by_op,
                "time_by_node": time_by_node,
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
            "  inference   median {:>8.3} ms   p99 {:>8.3} ms   over {} runs (the first run: {:.3} ms)",
            r["inference"]["median_ms"].as_f64().unwrap_or(0.0),
            r["inference"]["p99_ms"].as_f64().unwrap_or(0.0),
            r["inference"]["timed_runs"],
            r["inference"]["first_run_ms"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  allocations per run after the first: tract {} (and {} served by the pool); the first run: {}",
            r["allocations_per_run_tract"], r["pool_hits_per_run_tract"], r["allocations_first_run_tract"]
        );
        println!("  matrix kernels: {}", r["kernels"]);
        let ops: Vec<&str> = r["plan"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|op| op["op"].as_str())
            .collect();
        println!("  plan ({} ops): {}", ops.len(), ops.join(" "));
        if by_operator {
            println!("  time by operator (each node timed, per run):");
        }
        for e in r["time_by_op"].as_array().into_iter().flatten() {
            println!(
                "    {:<24} {:>3} nodes {:>9.3} ms {:>5.1} %",
                e["op"].as_str().unwrap_or(""),
                e["nodes"],
                e["ms_per_run"].as_f64().unwrap_or(0.0),
                e["share"].as_f64().unwrap_or(0.0) * 100.0
            );
        }
        if by_operator {
            println!("  the ten slowest nodes (per run):");
        }
        for e in r["time_by_node"].as_array().into_iter().flatten().take(10) {
            println!(
                "    {:<40} {:<16} {:>9.3} ms {:>5.1} %",
                e["node"].as_str().unwrap_or(""),
                e["op"].as_str().unwrap_or(""),
                e["ms_per_run"].as_f64().unwrap_or(0.0),
                e["share"].as_f64().unwrap_or(0.0) * 100.0
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
