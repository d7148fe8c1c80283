//! `ferroscope camera list|probe|snap` and `ferroscope bench-camera`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant as StdInstant;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use ferroscope::camera::decode::decode_frame;
use ferroscope::core::pixel::{rgb_to_gray, OutputFormat, PixelFormat};
use ferroscope::drivers::v4l2::{self, TriggerMode, V4l2Config};

/// `ferroscope bench-camera`.
#[derive(Args)]
pub struct BenchCameraArgs {
    /// Picture the test frames are made from; default: a committed NEU sample.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Timed passes per format and size.
    #[arg(long, default_value_t = 50)]
    pub passes: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum CameraCmd {
    /// List V4L2 device nodes (/dev/video*) with their driver and card names.
    List,
    /// Show a device's formats, frame sizes, frame rates and controls.
    Probe {
        /// Device node, e.g. /dev/video0.
        device: PathBuf,
    },
    /// Capture one frame and write it as PNG.
    Snap {
        /// Device node.
        #[arg(long)]
        device: PathBuf,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
        /// Pixel format: grey, yuyv, rgb24 or mjpeg.
        #[arg(long, default_value = "yuyv")]
        format: String,
        /// Width.
        #[arg(long, default_value_t = 640)]
        width: u32,
        /// Height.
        #[arg(long, default_value_t = 480)]
        height: u32,
        /// Frames to let exposure settle before the one written.
        #[arg(long, default_value_t = 5)]
        warmup: u32,
        /// Keep colour (RGB PNG) instead of gray.
        #[arg(long)]
        color: bool,
    },
}

pub fn camera(cmd: CameraCmd) -> Result<ExitCode> {
    match cmd {
        CameraCmd::List => {
            let devs = v4l2::list_devices();
            if devs.is_empty() {
                println!("no V4L2 devices (/dev/video*)");
            }
            for d in devs {
                match d {
                    Ok(d) => println!(
                        "{}  {}  (driver {}, bus {}){}",
                        d.path.display(),
                        d.card,
                        d.driver,
                        d.bus,
                        if d.capture { "" } else { "  [not a capture node]" }
                    ),
                    Err((p, e)) => println!("{}  cannot open: {e}", p.display()),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CameraCmd::Probe { device } => {
            print!("{}", v4l2::probe(&device)?);
            Ok(ExitCode::SUCCESS)
        }
        CameraCmd::Snap {
            device,
            out,
            format,
            width,
            height,
            warmup,
            color,
        } => {
            let format = PixelFormat::from_name(&format)
                .ok_or_else(|| anyhow!("--format {format}: allowed grey, yuyv, rgb24, mjpeg"))?;
            let output = if color { OutputFormat::Rgb } else { OutputFormat::Gray };
            let cfg = V4l2Config {
                device: device.clone(),
                format,
                width,
                height,
                fps: None,
                buffers: 4,
                timeout_ms: 2000,
                controls: Vec::new(),
                trigger: TriggerMode::FreeRun,
                external_trigger_control: None,
                output,
            };
            let (w, h, px) = v4l2::snap(cfg, warmup)?;
            let ct = if color {
                image::ExtendedColorType::Rgb8
            } else {
                image::ExtendedColorType::L8
            };
            image::save_buffer(&out, &px[..output.frame_bytes(w, h)], w as u32, h as u32, ct)
                .with_context(|| format!("{}: cannot write", out.display()))?;
            println!(
                "{}: {w}x{h} {} frame from {}",
                out.display(),
                format.name(),
                device.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A frame of `format` made from a real picture (gray `src`, tiled to the size): the bytes a
/// camera would deliver.
fn camera_bytes(format: PixelFormat, src: &(usize, usize, Vec<u8>), w: usize, h: usize) -> Result<Vec<u8>> {
    let (sw, sh, sp) = src;
    let gray: Vec<u8> = (0..w * h).map(|i| sp[(i / w % sh) * sw + (i % w) % sw]).collect();
    // A little colour so the colour paths do real work: a tint that varies across the frame.
    let rgb: Vec<u8> = gray
        .iter()
        .enumerate()
        .flat_map(|(i, &g)| {
            let t = ((i % w) * 40 / w) as u8;
            [g.saturating_add(t), g, g.saturating_sub(t)]
        })
        .collect();
    Ok(match format {
        PixelFormat::Grey => gray,
        PixelFormat::Rgb24 => rgb,
        PixelFormat::Yuyv => {
            let mut v = Vec::with_capacity(w * h * 2);
            for px in rgb.chunks_exact(6) {
                let (r0, g0, b0) = (px[0] as f32, px[1] as f32, px[2] as f32);
                let (r1, g1, b1) = (px[3] as f32, px[4] as f32, px[5] as f32);
                let y = |r: f32, g: f32, b: f32| (16.0 + 0.257 * r + 0.504 * g + 0.098 * b).round() as u8;
                let (r, g, b) = ((r0 + r1) / 2.0, (g0 + g1) / 2.0, (b0 + b1) / 2.0);
                let cb = (128.0 - 0.148 * r - 0.291 * g + 0.439 * b).round() as u8;
                let cr = (128.0 + 0.439 * r - 0.368 * g - 0.071 * b).round() as u8;
                v.extend_from_slice(&[y(r0, g0, b0), cb, y(r1, g1, b1), cr]);
            }
            v
        }
        PixelFormat::Mjpeg => {
            let mut v = Vec::new();
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut v, 85);
            image::ImageEncoder::write_image(enc, &rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)?;
            v
        }
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The simplest correct conversion, as a peer: per pixel, indexed, through a decoded image
/// for MJPEG (the `image` crate, allocating a new buffer per frame).
// Deliberately the per-pixel indexed form: it is the peer the decoder is measured against.
#[allow(clippy::manual_memcpy, clippy::needless_range_loop)]
fn peer_convert(format: PixelFormat, bytes: &[u8], w: usize, h: usize, dst: &mut [u8]) -> Result<()> {
    match format {
        PixelFormat::Grey => {
            for i in 0..w * h {
                dst[i] = bytes[i];
            }
        }
        PixelFormat::Yuyv => {
            for i in 0..w * h {
                dst[i] = bytes[2 * i];
            }
        }
        PixelFormat::Rgb24 => {
            for i in 0..w * h {
                dst[i] = rgb_to_gray(bytes[3 * i], bytes[3 * i + 1], bytes[3 * i + 2]);
            }
        }
        PixelFormat::Mjpeg => {
            let img = image::load_from_memory(bytes)?.into_luma8();
            dst[..w * h].copy_from_slice(img.as_raw());
        }
    }
    Ok(())
}

/// Median time to turn one camera frame into the station's gray buffer, per format and size,
/// on one thread, with the simplest correct conversion timed alongside as a peer.
pub fn bench_camera(image_path: Option<&Path>, passes: usize, json: bool) -> Result<ExitCode> {
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/neu_samples/scratches/Sc_104.png");
    let path = image_path.map(Path::to_path_buf).unwrap_or(default);
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let src = ferroscope::sim::replay::decode_gray(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let passes = passes.max(3);
    let mut rows = Vec::new();
    if !json {
        println!(
            "frame → gray buffer, one thread, median of {passes} ({})",
            path.display()
        );
        println!(
            "{:<7} {:>10} {:>10} {:>10} {:>8} {:>10}",
            "format", "size", "ours ms", "peer ms", "ratio", "MB/s ours"
        );
    }
    for (w, h) in [(640usize, 480usize), (1280, 1024)] {
        for format in PixelFormat::ALL {
            let frame = camera_bytes(format, &src, w, h)?;
            let mut dst = vec![0u8; w * h];
            let mut peer_dst = vec![0u8; w * h];
            let (mut ours, mut peer) = (Vec::with_capacity(passes), Vec::with_capacity(passes));
            // Warm-up, and a check that both agree before anything is timed.
            decode_frame(format, &frame, Some((w, h)), None, OutputFormat::Gray, &mut dst)
                .map_err(|e| anyhow!("{}: {e}", format.name()))?;
            peer_convert(format, &frame, w, h, &mut peer_dst)?;
            let max_diff = dst
                .iter()
                .zip(&peer_dst)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0);
            for _ in 0..passes {
                let t = StdInstant::now();
                decode_frame(format, &frame, Some((w, h)), None, OutputFormat::Gray, &mut dst)
                    .map_err(|e| anyhow!("{}: {e}", format.name()))?;
                ours.push(t.elapsed().as_secs_f64() * 1e3);
                let t = StdInstant::now();
                peer_convert(format, &frame, w, h, &mut peer_dst)?;
                peer.push(t.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box((&dst, &peer_dst));
            }
            let (o, p) = (median(&mut ours), median(&mut peer));
            let mbps = frame.len() as f64 / (o / 1e3) / 1e6;
            if !json {
                println!(
                    "{:<7} {:>10} {:>10.3} {:>10.3} {:>8.2} {:>10.0}",
                    format.name(),
                    format!("{w}x{h}"),
                    o,
                    p,
                    p / o,
                    mbps
                );
            }
            rows.push(serde_json::json!({
                "format": format.name(), "width": w, "height": h, "frame_bytes": frame.len(),
                "ours_ms_median": o, "peer_ms_median": p, "peer_over_ours": p / o,
                "max_abs_diff_vs_peer": max_diff,
            }));
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "image": path.display().to_string(), "passes": passes, "threads": 1,
                "peer": "per-pixel indexed loop (raw formats); image::load_from_memory + into_luma8 (MJPEG)",
                "results": rows,
            })
        );
    } else {
        println!("peer: per-pixel indexed loop for raw formats; the image crate's decode + to-gray for MJPEG");
    }
    Ok(ExitCode::SUCCESS)
}
