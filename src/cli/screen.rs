//! `ferroscope screen` and `ferroscope bench-screen`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant as StdInstant;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use ferroscope::core::screen::{counters_region, draw, draw_counters, ScreenState};
use ferroscope::display::{demo_state, render, write_png, Canvas, DemoState, PixelLayout};
use ferroscope::model::manifest::Manifest;
use ferroscope::station::config::{StationConfig, DEFAULT_CONFIG_PATH};

/// `ferroscope screen`.
#[derive(Args)]
pub struct ScreenArgs {
    /// Station config (station and model names, display size); default: the first found of $FERROSCOPE_CONFIG, /etc/ferroscope/station.toml, boards/host-sim.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// ok, reject, uncertain, fault, or demo (all four on one sheet).
    #[arg(long, default_value = "demo")]
    pub state: String,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Size WIDTHxHEIGHT (default: the config's display, or 800x480).
    #[arg(long)]
    pub size: Option<String>,
}

/// `ferroscope bench-screen`.
#[derive(Args)]
pub struct BenchScreenArgs {
    /// Timed passes.
    #[arg(long, default_value_t = 100)]
    pub passes: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| anyhow!("--size {s}: expected WIDTHxHEIGHT, e.g. 800x480"))?;
    let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
    if !(64..=4096).contains(&w) || !(64..=4096).contains(&h) {
        bail!("--size {s}: width and height must be 64..=4096");
    }
    Ok((w, h))
}

/// The demo state for `kind`, named after the station and model of the profile at `path`.
pub fn state_for(kind: DemoState, path: &Path) -> Result<ScreenState> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cfg = StationConfig::load(path)?;
    let m = Manifest::load(&cfg.resolve(&cfg.tool.manifest))?;
    let model = format!("{} {} {}", m.model.name, m.model.version, cfg.precision()?.name());
    let thumb = match kind.sample() {
        Some(p) => {
            let bytes = std::fs::read(root.join(p))?;
            Some(ferroscope::sim::replay::decode_gray(&bytes).map_err(|e| anyhow!("{p}: {e}"))?)
        }
        None => None,
    };
    Ok(demo_state(
        kind,
        &cfg.station.name,
        &model,
        thumb.as_ref().map(|(w, h, p)| (*w, *h, p.as_slice())),
    ))
}

pub fn screen(config: Option<&Path>, state: &str, out: &Path, size: Option<&str>) -> Result<ExitCode> {
    let path = super::profile(config)?;
    let config = path.as_path();
    let (w, h) = match size {
        Some(s) => parse_size(s)?,
        None => {
            let cfg = StationConfig::load(config)?;
            cfg.display.as_ref().map_or((800, 480), |d| (d.width, d.height))
        }
    };
    if state == "demo" {
        // All four states on one sheet, two by two.
        let mut sheet = Canvas::new(w * 2, h * 2);
        for (i, k) in [DemoState::Ok, DemoState::Reject, DemoState::Uncertain, DemoState::Fault]
            .into_iter()
            .enumerate()
        {
            let c = render(&state_for(k, config)?, w, h);
            let (ox, oy) = ((i as u32 % 2) * w, (i as u32 / 2) * h);
            sheet.blit(&c, ox, oy);
        }
        write_png(&sheet, out)?;
        println!("{}: the four screens at {w}x{h}", out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let kind = DemoState::from_name(state)
        .ok_or_else(|| anyhow!("--state {state}: allowed ok, reject, uncertain, fault, demo"))?;
    let c = render(&state_for(kind, config)?, w, h);
    write_png(&c, out)?;
    println!("{}: {} screen at {w}x{h}", out.display(), kind.name());
    Ok(ExitCode::SUCCESS)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median full redraw and counter-only redraw, and packing into a framebuffer's layout, at
/// 800x480 and 320x240, one thread.
pub fn bench_screen(passes: usize, json: bool) -> Result<ExitCode> {
    let passes = passes.max(5);
    let mut rows = Vec::new();
    if !json {
        println!("screen drawing, one thread, median of {passes}");
        println!(
            "{:>9} {:>14} {:>16} {:>16} {:>8}",
            "size", "full draw ms", "counters ms", "pack XRGB ms", "full/part"
        );
    }
    for (w, h) in [(800u32, 480u32), (320, 240)] {
        let mut st = state_for(DemoState::Reject, Path::new(DEFAULT_CONFIG_PATH))?;
        let mut canvas = Canvas::new(w, h);
        let (mut full, mut part, mut pack) = (Vec::new(), Vec::new(), Vec::new());
        let mut row = vec![0u8; w as usize * 4];
        let region = counters_region(embedded_graphics::prelude::Size::new(w, h));
        for i in 0..passes {
            st.inspected += 1;
            st.uptime_s += 1;
            let t = StdInstant::now();
            let _ = draw(&st, &mut canvas);
            full.push(t.elapsed().as_secs_f64() * 1e3);
            st.rejected += (i % 2) as u64;
            let t = StdInstant::now();
            let _ = draw_counters(&st, &mut canvas);
            part.push(t.elapsed().as_secs_f64() * 1e3);
            let t = StdInstant::now();
            for y in 0..h {
                PixelLayout::XRGB8888.pack_row(canvas.row(y), &mut row);
                std::hint::black_box(&row);
            }
            pack.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (f, p, k) = (median(&mut full), median(&mut part), median(&mut pack));
        if !json {
            println!(
                "{:>9} {:>14.3} {:>16.3} {:>16.3} {:>8.1}",
                format!("{w}x{h}"),
                f,
                p,
                k,
                f / p
            );
        }
        rows.push(serde_json::json!({
            "width": w, "height": h, "full_draw_ms_median": f, "counters_draw_ms_median": p,
            "pack_xrgb8888_ms_median": k, "full_over_partial": f / p,
            "counters_region_rows": region.size.height,
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "passes": passes, "threads": 1, "results": rows })
        );
    }
    Ok(ExitCode::SUCCESS)
}
