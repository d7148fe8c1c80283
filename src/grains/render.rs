//! Pictures of a grain analysis: the grain map coloured by grain number and the histogram of
//! grain numbers (measured against a reference), both as PNG.

use std::path::Path;

use anyhow::{Context, Result};
use embedded_graphics::mono_font::ascii::FONT_6X10;
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::Rgb565;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};

use super::analysis::GrainReport;
use super::standards::{bin_g, G_BINS};
use crate::display::{write_png, Canvas};

/// Colour of grain number `g` on a blue (coarse, G ≤ 2) → red (fine, G ≥ 12) ramp.
pub fn g_colour(g: f64) -> [u8; 3] {
    let t = ((g - 2.0) / 10.0).clamp(0.0, 1.0);
    // piecewise-linear through blue, cyan, green, yellow, red
    let stops: [[f64; 3]; 5] = [
        [40.0, 60.0, 200.0],
        [30.0, 190.0, 220.0],
        [60.0, 200.0, 70.0],
        [240.0, 220.0, 40.0],
        [220.0, 40.0, 30.0],
    ];
    let f = t * 4.0;
    let i = (f.floor() as usize).min(3);
    let u = f - i as f64;
    let mut c = [0u8; 3];
    for k in 0..3 {
        c[k] = (stops[i][k] + (stops[i + 1][k] - stops[i][k]) * u) as u8;
    }
    c
}

/// The grain map: each grain filled with the colour of its GOST number (grains cut by the
/// edge paler), blended over the micrograph `gray`, boundaries black.
pub fn grain_map_rgb(report: &GrainReport, labels: &[u32], gray: &[u8]) -> Vec<u8> {
    let (w, h) = (report.width, report.height);
    let colours: Vec<[u8; 3]> = report
        .grains
        .iter()
        .map(|g| {
            let c = g_colour(g.g);
            if g.edge {
                c.map(|v| ((v as u16 + 2 * 235) / 3) as u8)
            } else {
                c
            }
        })
        .collect();
    let mut out = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let l = labels[i];
            let border = l == 0
                || (x + 1 < w && labels[i + 1] != l)
                || (y + 1 < h && labels[i + w] != l)
                || (x > 0 && labels[i - 1] != l)
                || (y > 0 && labels[i - w] != l);
            let px = if border {
                [0, 0, 0]
            } else {
                let c = colours[l as usize - 1];
                let g = gray.get(i).copied().unwrap_or(128) as u16;
                c.map(|v| ((3 * v as u16 + g) / 4) as u8)
            };
            out[3 * i..3 * i + 3].copy_from_slice(&px);
        }
    }
    out
}

/// Write the grain map as a PNG.
pub fn write_grain_map(path: &Path, report: &GrainReport, labels: &[u32], gray: &[u8]) -> Result<()> {
    let rgb = grain_map_rgb(report, labels, gray);
    image::save_buffer_with_format(
        path,
        &rgb,
        report.width as u32,
        report.height as u32,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .with_context(|| format!("{}: cannot write grain map", path.display()))
}

fn rgb(c: [u8; 3]) -> Rgb565 {
    Rgb565::new(c[0] >> 3, c[1] >> 2, c[2] >> 3)
}

/// The histogram plot: share of whole grains per GOST number, `measured` in colour and, when
/// given, `reference` as outlined bars beside it, on the bins both use (at least 3..=10).
pub fn histogram_canvas(measured: &[u32; G_BINS], reference: Option<&[u32; G_BINS]>, title: &str) -> Canvas {
    let (cw, ch) = (640u32, 400u32);
    let mut c = Canvas::new(cw, ch);
    let white = Rgb565::WHITE;
    let black = Rgb565::BLACK;
    let _ = c.clear(white);
    let share = |h: &[u32; G_BINS]| {
        let t: u32 = h.iter().sum();
        h.map(|v| if t == 0 { 0.0 } else { v as f64 / t as f64 })
    };
    let m = share(measured);
    let r = reference.map(share);
    let used = |k: usize| measured[k] > 0 || reference.is_some_and(|r| r[k] > 0);
    let mut lo = (0..G_BINS).find(|&k| used(k)).unwrap_or(0).min((3 - bin_g(0)) as usize);
    let mut hi = (0..G_BINS)
        .rev()
        .find(|&k| used(k))
        .unwrap_or(0)
        .max((10 - bin_g(0)) as usize);
    lo = lo.min(hi);
    hi = hi.max(lo);
    let top = m
        .iter()
        .chain(r.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b))
        .max(0.05);
    let (x0, y0, x1, y1) = (56i32, 40i32, cw as i32 - 16, ch as i32 - 48);
    let text = MonoTextStyle::new(&FONT_6X10, black);
    let _ = Text::with_alignment(title, Point::new(cw as i32 / 2, 20), text, Alignment::Center).draw(&mut c);
    let axis = PrimitiveStyle::with_stroke(black, 1);
    let _ = Line::new(Point::new(x0, y1), Point::new(x1, y1))
        .into_styled(axis)
        .draw(&mut c);
    let _ = Line::new(Point::new(x0, y0), Point::new(x0, y1))
        .into_styled(axis)
        .draw(&mut c);
    // y ticks every 10 % of grains
    let mut tick = 0.0;
    while tick <= top + 1e-9 {
        let y = y1 - ((tick / top) * (y1 - y0) as f64) as i32;
        let _ = Line::new(Point::new(x0 - 4, y), Point::new(x0, y))
            .into_styled(axis)
            .draw(&mut c);
        let label = format!("{:.0}%", tick * 100.0);
        let _ = Text::with_alignment(&label, Point::new(x0 - 6, y + 3), text, Alignment::Right).draw(&mut c);
        tick += 0.1;
    }
    let n = (hi - lo + 1) as i32;
    let slot = (x1 - x0) / n;
    for (j, k) in (lo..=hi).enumerate() {
        let sx = x0 + j as i32 * slot;
        let bar_w = (slot - 8) / 2;
        let hgt = |v: f64| ((v / top) * (y1 - y0) as f64) as i32;
        let hm = hgt(m[k]);
        if hm > 0 {
            let _ = Rectangle::new(Point::new(sx + 4, y1 - hm), Size::new(bar_w as u32, hm as u32))
                .into_styled(PrimitiveStyle::with_fill(rgb(g_colour(bin_g(k) as f64))))
                .draw(&mut c);
        }
        if let Some(r) = &r {
            let hr = hgt(r[k]);
            if hr > 0 {
                let _ = Rectangle::new(Point::new(sx + 4 + bar_w, y1 - hr), Size::new(bar_w as u32, hr as u32))
                    .into_styled(PrimitiveStyle::with_stroke(black, 2))
                    .draw(&mut c);
            }
        }
        let label = format!("{}", bin_g(k));
        let _ = Text::with_alignment(&label, Point::new(sx + slot / 2, y1 + 14), text, Alignment::Center).draw(&mut c);
    }
    let legend = if reference.is_some() {
        "GOST 5639-82 grain number G    filled: measured    outlined: reference"
    } else {
        "GOST 5639-82 grain number G (whole grains)"
    };
    let _ = Text::with_alignment(
        legend,
        Point::new(cw as i32 / 2, ch as i32 - 12),
        text,
        Alignment::Center,
    )
    .draw(&mut c);
    c
}

/// Write the histogram plot as a PNG.
pub fn write_histogram(
    path: &Path,
    measured: &[u32; G_BINS],
    reference: Option<&[u32; G_BINS]>,
    title: &str,
) -> Result<()> {
    write_png(&histogram_canvas(measured, reference, title), path)
}
