//! Preprocessing: a gray frame of any size → the model's input tensor.
//!
//! Resampling is separable bilinear with the filter support widened when shrinking (the
//! same definition as Pillow's `BILINEAR`, which the training recipes use), rounded to 8 bits
//! between passes, then normalised `(p / 255 - mean) / std`. The filter taps are computed
//! once per source size; frames of the same size allocate nothing.

use crate::core::frame::GrayFrame;

/// Taps of one output coordinate: first source index and weights.
#[derive(Clone, Debug, Default)]
struct Taps {
    start: Vec<u32>,
    len: Vec<u32>,
    weights: Vec<f32>,
    /// Weights per output coordinate (fixed stride into `weights`).
    stride: usize,
}

fn taps(src: usize, dst: usize) -> Taps {
    let scale = src as f64 / dst as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support is 1 source pixel at scale 1
    let stride = (support.ceil() as usize) * 2 + 1;
    let mut t = Taps {
        start: Vec::with_capacity(dst),
        len: Vec::with_capacity(dst),
        weights: vec![0.0; dst * stride],
        stride,
    };
    for x in 0..dst {
        let center = (x as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5).floor().max(0.0)) as usize;
        let xmax = ((center + support + 0.5).floor() as usize).min(src);
        let n = (xmax - xmin).min(stride);
        let mut sum = 0.0;
        let w = &mut t.weights[x * stride..x * stride + stride];
        for (k, wk) in w.iter_mut().enumerate().take(n) {
            let d = ((xmin + k) as f64 - center + 0.5) / filterscale;
            let v = (1.0 - d.abs()).max(0.0);
            *wk = v as f32;
            sum += v;
        }
        if sum > 0.0 {
            for wk in w.iter_mut().take(n) {
                *wk = (*wk as f64 / sum) as f32;
            }
        }
        t.start.push(xmin as u32);
        t.len.push(n as u32);
    }
    t
}

/// Converts frames to one model's input; reused across frames.
#[derive(Debug)]
pub struct Preprocessor {
    out_w: usize,
    out_h: usize,
    mean: f32,
    std: f32,
    src_size: (usize, usize),
    h_taps: Taps,
    v_taps: Taps,
    /// Horizontally resampled rows: src height × out width.
    tmp: Vec<u8>,
    /// Resized image: out height × out width.
    resized: Vec<u8>,
    /// `(p / 255 - mean) / std` for every byte value.
    lut: [f32; 256],
}

impl Preprocessor {
    /// A preprocessor producing `out_h × out_w` values normalised with `mean` and `std`.
    pub fn new(out_h: usize, out_w: usize, mean: f32, std: f32) -> Self {
        let mut lut = [0.0f32; 256];
        for (i, v) in lut.iter_mut().enumerate() {
            *v = (i as f32 / 255.0 - mean) / std;
        }
        Preprocessor {
            out_w,
            out_h,
            mean,
            std,
            src_size: (0, 0),
            h_taps: Taps::default(),
            v_taps: Taps::default(),
            tmp: Vec::new(),
            resized: vec![0; out_w * out_h],
            lut,
        }
    }

    /// Normalisation parameters.
    pub fn mean_std(&self) -> (f32, f32) {
        (self.mean, self.std)
    }

    /// Prepare taps for frames of `width × height` (allocates only when the size changes).
    pub fn prepare(&mut self, width: usize, height: usize) {
        if self.src_size == (width, height) {
            return;
        }
        self.h_taps = taps(width, self.out_w);
        self.v_taps = taps(height, self.out_h);
        self.tmp = vec![0; height * self.out_w];
        self.src_size = (width, height);
    }

    /// The last resized 8-bit image (out height × out width).
    pub fn resized(&self) -> &[u8] {
        &self.resized
    }

    /// Resize `frame` and write normalised values into `out` (length out_h × out_w).
    /// Returns false if `out` has the wrong length.
    pub fn run(&mut self, frame: &GrayFrame<'_>, out: &mut [f32]) -> bool {
        if out.len() != self.out_w * self.out_h {
            return false;
        }
        let (w, h) = (frame.width(), frame.height());
        if (w, h) == (self.out_w, self.out_h) {
            for y in 0..h {
                self.resized[y * w..(y + 1) * w].copy_from_slice(frame.row(y));
            }
        } else {
            self.prepare(w, h);
            let ow = self.out_w;
            // Horizontal pass.
            for y in 0..h {
                let row = frame.row(y);
                let dst = &mut self.tmp[y * ow..(y + 1) * ow];
                for (x, d) in dst.iter_mut().enumerate() {
                    let s = self.h_taps.start[x] as usize;
                    let n = self.h_taps.len[x] as usize;
                    let wts = &self.h_taps.weights[x * self.h_taps.stride..x * self.h_taps.stride + n];
                    let mut acc = 0.0f32;
                    for (p, wk) in row[s..s + n].iter().zip(wts) {
                        acc += *p as f32 * wk;
                    }
                    *d = (acc + 0.5).clamp(0.0, 255.0) as u8;
                }
            }
            // Vertical pass.
            for y in 0..self.out_h {
                let s = self.v_taps.start[y] as usize;
                let n = self.v_taps.len[y] as usize;
                let wts = &self.v_taps.weights[y * self.v_taps.stride..y * self.v_taps.stride + n];
                let dst = &mut self.resized[y * ow..(y + 1) * ow];
                for (x, d) in dst.iter_mut().enumerate() {
                    let mut acc = 0.0f32;
                    for (k, wk) in wts.iter().enumerate() {
                        acc += self.tmp[(s + k) * ow + x] as f32 * wk;
                    }
                    *d = (acc + 0.5).clamp(0.0, 255.0) as u8;
                }
            }
        }
        for (o, p) in out.iter_mut().zip(&self.resized) {
            *o = self.lut[*p as usize];
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy_then_normalised() {
        let px: Vec<u8> = (0..16).map(|i| (i * 16) as u8).collect();
        let f = GrayFrame::new(&px, 4, 4, 4).unwrap();
        let mut p = Preprocessor::new(4, 4, 0.5, 0.25);
        let mut out = [0.0f32; 16];
        assert!(p.run(&f, &mut out));
        assert_eq!(p.resized(), &px[..]);
        assert!((out[0] - (-2.0)).abs() < 1e-6);
        assert!((out[8] - ((128.0 / 255.0 - 0.5) / 0.25)).abs() < 1e-6);
    }

    #[test]
    fn constant_image_stays_constant_at_any_scale() {
        let px = vec![77u8; 37 * 23];
        let f = GrayFrame::new(&px, 37, 23, 37).unwrap();
        for (oh, ow) in [(10, 10), (50, 80), (23, 37)] {
            let mut p = Preprocessor::new(oh, ow, 0.0, 1.0);
            let mut out = vec![0.0; oh * ow];
            assert!(p.run(&f, &mut out));
            assert!(p.resized().iter().all(|v| *v == 77), "{oh}x{ow}");
        }
    }

    #[test]
    fn halving_averages_neighbours() {
        // Columns alternate 0 / 200: a 2x downscale with the widened triangle filter gives
        // values strictly between, near the mean.
        let px: Vec<u8> = (0..64).map(|i| if i % 2 == 0 { 0 } else { 200 }).collect();
        let f = GrayFrame::new(&px, 8, 8, 8).unwrap();
        let mut p = Preprocessor::new(4, 4, 0.0, 1.0);
        let mut out = vec![0.0; 16];
        assert!(p.run(&f, &mut out));
        for v in &p.resized()[1..3] {
            assert!((90..=110).contains(v), "{v}");
        }
    }

    #[test]
    fn wrong_output_length_is_refused() {
        let px = vec![0u8; 4];
        let f = GrayFrame::new(&px, 2, 2, 2).unwrap();
        let mut p = Preprocessor::new(2, 2, 0.0, 1.0);
        assert!(!p.run(&f, &mut [0.0; 3]));
    }
}
