//! Connected defect regions on a probability map, measured without a heap.
//!
//! [`RegionFinder::find`] thresholds a full-resolution map, labels 8-connected regions (two
//! passes with union-find on caller-provided buffers), and measures each region: area, bounding
//! box, centroid, mean and peak score, and its extent along its principal axes (length along the
//! major axis, width across it), all in pixels. Millimetres are the caller's calibration
//! ([`crate::core::calibration::Scale`]).
//!
//! Capacities: the first [`MAX_TRACKED_REGIONS`] regions met in raster order are measured (the
//! rest are counted, with their pixels, in [`RegionSummary`]); the [`MAX_REGIONS`] largest of
//! those are reported, largest first.

use heapless::Vec;

/// Regions measured per frame; further regions are counted only.
pub const MAX_TRACKED_REGIONS: usize = 512;
/// Regions reported per frame (the largest).
pub const MAX_REGIONS: usize = 32;

/// One connected region of map pixels at or above the threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Region {
    /// Pixels in the region.
    pub area_px: u32,
    /// Bounding box: left, top (inclusive), right, bottom (exclusive).
    pub x0: u32,
    /// See `x0`.
    pub y0: u32,
    /// See `x0`.
    pub x1: u32,
    /// See `x0`.
    pub y1: u32,
    /// Centroid, pixels.
    pub cx: f32,
    /// See `cx`.
    pub cy: f32,
    /// Extent along the major axis, pixels (a straight line of n pixels measures n).
    pub length_px: f32,
    /// Extent across it, pixels.
    pub width_px: f32,
    /// Major axis direction, degrees from the image x axis (0..180, y down).
    pub angle_deg: f32,
    /// Mean map value over the region.
    pub mean_score: f32,
    /// Peak map value.
    pub max_score: f32,
}

/// Counts for one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RegionSummary {
    /// Regions found (all of them).
    pub total: u32,
    /// Of those, measured (at most [`MAX_TRACKED_REGIONS`]).
    pub tracked: u32,
    /// Pixels above the threshold in all regions.
    pub pixels: u64,
}

#[derive(Clone, Copy, Default)]
struct Acc {
    n: u32,
    sx: f64,
    sy: f64,
    sxx: f64,
    syy: f64,
    sxy: f64,
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
    sum: f32,
    max: f32,
}

/// Why the buffers given to [`RegionFinder::find`] do not fit the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RegionError {
    /// `prob` is not `width * height`, or `labels` is shorter.
    Size,
    /// `parent` is shorter than [`parent_len`] for this size.
    Parent,
}

/// Length of the union-find buffer for a `width × height` map (the most provisional labels
/// 8-connectivity can create, plus one).
pub fn parent_len(width: usize, height: usize) -> usize {
    width.div_ceil(2) * height.div_ceil(2) + 2
}

/// Region labelling and measurement state (fixed size; keep one per tool).
pub struct RegionFinder {
    acc: [Acc; MAX_TRACKED_REGIONS],
    slot: [u8; MAX_TRACKED_REGIONS],
    axes: [(f32, f32, f32, f32, f32, f32); MAX_REGIONS],
    regions: Vec<Region, MAX_REGIONS>,
}

impl Default for RegionFinder {
    fn default() -> Self {
        RegionFinder {
            acc: [Acc::default(); MAX_TRACKED_REGIONS],
            slot: [u8::MAX; MAX_TRACKED_REGIONS],
            axes: [(0.0, 0.0, 0.0, 0.0, 0.0, 0.0); MAX_REGIONS],
            regions: Vec::new(),
        }
    }
}

fn find_root(parent: &mut [u32], mut a: u32) -> u32 {
    while parent[a as usize] != a {
        let p = parent[a as usize];
        parent[a as usize] = parent[p as usize];
        a = p;
    }
    a
}

fn union(parent: &mut [u32], a: u32, b: u32) -> u32 {
    let ra = find_root(parent, a);
    let rb = find_root(parent, b);
    let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
    parent[hi as usize] = lo;
    lo
}

const UNTRACKED: u32 = u32::MAX;

impl RegionFinder {
    /// The regions of the last [`RegionFinder::find`], largest first.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Label and measure the regions of `prob` (row-major `width × height`) at or above
    /// `threshold`. `labels` (≥ `width * height`) and `parent` (≥ [`parent_len`]) are scratch.
    pub fn find(
        &mut self,
        prob: &[f32],
        width: usize,
        height: usize,
        threshold: f32,
        labels: &mut [u32],
        parent: &mut [u32],
    ) -> Result<RegionSummary, RegionError> {
        self.regions.clear();
        let n = width * height;
        if prob.len() != n || labels.len() < n {
            return Err(RegionError::Size);
        }
        if parent.len() < parent_len(width, height) {
            return Err(RegionError::Parent);
        }
        let labels = &mut labels[..n];
        // Pass 1: provisional labels, equivalences in `parent`.
        let mut next: u32 = 1;
        for y in 0..height {
            for x in 0..width {
                let i = y * width + x;
                if prob[i] < threshold {
                    labels[i] = 0;
                    continue;
                }
                let mut l = 0u32;
                let mut see = |m: u32, l: &mut u32| {
                    if m != 0 {
                        *l = if *l == 0 { m } else { union(parent, *l, m) };
                    }
                };
                if x > 0 {
                    see(labels[i - 1], &mut l);
                }
                if y > 0 {
                    let up = i - width;
                    if x > 0 {
                        see(labels[up - 1], &mut l);
                    }
                    see(labels[up], &mut l);
                    if x + 1 < width {
                        see(labels[up + 1], &mut l);
                    }
                }
                if l == 0 {
                    l = next;
                    parent[l as usize] = l;
                    next += 1;
                }
                labels[i] = l;
            }
        }
        // Roots get compact ids in raster order of first appearance; parent[root] is
        // rewritten to `TAG | id` once known.
        const TAG: u32 = 1 << 31;
        for l in 1..next {
            let r = find_root(parent, l);
            parent[l as usize] = r;
        }
        let mut summary = RegionSummary::default();
        for a in self.acc.iter_mut() {
            *a = Acc::default();
        }
        // Pass 2: resolve, assign compact ids, accumulate moments.
        let mut ids = 0u32;
        for y in 0..height {
            for x in 0..width {
                let i = y * width + x;
                let l = labels[i];
                if l == 0 {
                    continue;
                }
                summary.pixels += 1;
                // Non-roots name their root; a root holds itself until it gets `TAG | id`.
                let p = parent[l as usize];
                let root = if p & TAG != 0 { l as usize } else { p as usize };
                let q = parent[root];
                let id = if q & TAG != 0 {
                    q & !TAG
                } else {
                    let id = ids;
                    ids += 1;
                    parent[root] = TAG | id;
                    id
                };
                if (id as usize) < MAX_TRACKED_REGIONS {
                    let a = &mut self.acc[id as usize];
                    let (fx, fy) = (x as f64, y as f64);
                    if a.n == 0 {
                        a.x0 = x as u32;
                        a.y0 = y as u32;
                        a.x1 = x as u32 + 1;
                        a.y1 = y as u32 + 1;
                    } else {
                        a.x0 = a.x0.min(x as u32);
                        a.x1 = a.x1.max(x as u32 + 1);
                        a.y1 = y as u32 + 1;
                    }
                    a.n += 1;
                    a.sx += fx;
                    a.sy += fy;
                    a.sxx += fx * fx;
                    a.syy += fy * fy;
                    a.sxy += fx * fy;
                    a.sum += prob[i];
                    a.max = a.max.max(prob[i]);
                    labels[i] = id + 1;
                } else {
                    labels[i] = UNTRACKED;
                }
            }
        }
        summary.total = ids;
        let tracked = (ids as usize).min(MAX_TRACKED_REGIONS);
        summary.tracked = tracked as u32;
        // The largest regions, largest first (ties: raster order).
        self.slot = [u8::MAX; MAX_TRACKED_REGIONS];
        let mut order: Vec<u16, MAX_REGIONS> = Vec::new();
        for id in 0..tracked {
            let n = self.acc[id].n;
            let pos = order
                .iter()
                .position(|&o| self.acc[o as usize].n < n)
                .unwrap_or(order.len());
            if pos < MAX_REGIONS {
                if order.is_full() {
                    order.pop();
                }
                let _ = order.insert(pos, id as u16);
            }
        }
        for (k, &id) in order.iter().enumerate() {
            let a = &self.acc[id as usize];
            let nf = a.n as f64;
            let (mx, my) = (a.sx / nf, a.sy / nf);
            let cxx = a.sxx / nf - mx * mx;
            let cyy = a.syy / nf - my * my;
            let cxy = a.sxy / nf - mx * my;
            let theta = 0.5 * libm_atan2(2.0 * cxy, cxx - cyy);
            let (s, c) = (sin(theta), cos(theta));
            self.slot[id as usize] = k as u8;
            self.axes[k] = (c as f32, s as f32, f32::MAX, f32::MIN, f32::MAX, f32::MIN);
            let mut deg = (theta.to_degrees()) as f32;
            if deg < 0.0 {
                deg += 180.0;
            }
            let _ = self.regions.push(Region {
                area_px: a.n,
                x0: a.x0,
                y0: a.y0,
                x1: a.x1,
                y1: a.y1,
                cx: mx as f32,
                cy: my as f32,
                length_px: 0.0,
                width_px: 0.0,
                angle_deg: deg,
                mean_score: a.sum / a.n as f32,
                max_score: a.max,
            });
        }
        // Pass 3: extents along the axes, within each reported region's box.
        for (k, r) in self.regions.iter().enumerate() {
            let (c, s, mut lo, mut hi, mut wlo, mut whi) = self.axes[k];
            for y in r.y0..r.y1 {
                let row = &labels[y as usize * width..(y as usize + 1) * width];
                for x in r.x0..r.x1 {
                    let l = row[x as usize];
                    if l == 0 || l == UNTRACKED || self.slot[(l - 1) as usize] != k as u8 {
                        continue;
                    }
                    let (fx, fy) = (x as f32 - r.cx, y as f32 - r.cy);
                    let p = fx * c + fy * s;
                    let q = -fx * s + fy * c;
                    lo = lo.min(p);
                    hi = hi.max(p);
                    wlo = wlo.min(q);
                    whi = whi.max(q);
                }
            }
            self.axes[k] = (c, s, lo, hi, wlo, whi);
        }
        for (k, r) in self.regions.iter_mut().enumerate() {
            let (_, _, lo, hi, wlo, whi) = self.axes[k];
            r.length_px = hi - lo + 1.0;
            r.width_px = whi - wlo + 1.0;
        }
        Ok(summary)
    }
}

// Minimal maths for no_std (core has no libm); accurate to f64 rounding for our use.
fn sin(x: f64) -> f64 {
    cos(x - core::f64::consts::FRAC_PI_2)
}

fn cos(x: f64) -> f64 {
    // Reduce to [-pi, pi], then a Taylor series (|x| <= pi: error < 1e-15 with 20 terms).
    let two_pi = 2.0 * core::f64::consts::PI;
    let mut x = x % two_pi;
    if x > core::f64::consts::PI {
        x -= two_pi;
    } else if x < -core::f64::consts::PI {
        x += two_pi;
    }
    let x2 = x * x;
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..20 {
        term *= -x2 / ((2 * k - 1) as f64 * (2 * k) as f64);
        sum += term;
    }
    sum
}

fn atan(x: f64) -> f64 {
    // atan(x) = 2 atan(x / (1 + sqrt(1 + x^2))) brings |x| below tan(pi/8) after two steps.
    let mut x = x;
    let mut mul = 1.0;
    for _ in 0..3 {
        x /= 1.0 + sqrt(1.0 + x * x);
        mul *= 2.0;
    }
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    for k in 1..25 {
        term *= -x2;
        sum += term / (2 * k + 1) as f64;
    }
    mul * sum
}

fn sqrt(v: f64) -> f64 {
    if v <= 0.0 {
        return 0.0;
    }
    let mut g = if v > 1.0 { v / 2.0 } else { 1.0 };
    for _ in 0..60 {
        let n = 0.5 * (g + v / g);
        if (n - g).abs() <= 1e-15 * n {
            return n;
        }
        g = n;
    }
    g
}

fn libm_atan2(y: f64, x: f64) -> f64 {
    use core::f64::consts::PI;
    if x > 0.0 {
        atan(y / x)
    } else if x < 0.0 {
        if y >= 0.0 {
            atan(y / x) + PI
        } else {
            atan(y / x) - PI
        }
    } else if y > 0.0 {
        PI / 2.0
    } else if y < 0.0 {
        -PI / 2.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    fn run(prob: &[f32], w: usize, h: usize) -> (RegionSummary, std::vec::Vec<Region>) {
        let mut f = std::boxed::Box::<RegionFinder>::default();
        let mut labels = vec![0u32; w * h];
        let mut parent = vec![0u32; parent_len(w, h)];
        let s = f.find(prob, w, h, 0.5, &mut labels, &mut parent).unwrap();
        (s, f.regions().to_vec())
    }

    #[test]
    fn maths_matches_std() {
        for &x in &[-3.0, -1.0, -0.2, 0.0, 0.3, 1.0, 2.5, 10.0] {
            assert!((atan(x) - x.atan()).abs() < 1e-12, "atan {x}");
            assert!((cos(x) - x.cos()).abs() < 1e-12, "cos {x}");
            assert!((sin(x) - x.sin()).abs() < 1e-12, "sin {x}");
        }
        for &(y, x) in &[(1.0, 1.0), (1.0, -1.0), (-1.0, -1.0), (0.0, -1.0), (2.0, 0.0)] {
            assert!((libm_atan2(y, x) - f64::atan2(y, x)).abs() < 1e-12);
        }
    }

    #[test]
    fn a_horizontal_bar_and_a_diagonal_line() {
        let (w, h) = (40, 30);
        let mut p = vec![0.0f32; w * h];
        // 20 x 3 bar at (5, 4)
        for y in 4..7 {
            for x in 5..25 {
                p[y * w + x] = 0.9;
            }
        }
        // 10-pixel diagonal (8-connected) from (10, 15)
        for k in 0..10 {
            p[(15 + k) * w + 10 + k] = 0.7;
        }
        let (s, r) = run(&p, w, h);
        assert_eq!(s.total, 2);
        assert_eq!(s.pixels, 70);
        assert_eq!(r[0].area_px, 60);
        assert_eq!((r[0].x0, r[0].y0, r[0].x1, r[0].y1), (5, 4, 25, 7));
        assert!((r[0].length_px - 20.0).abs() < 1e-3, "{:?}", r[0]);
        assert!((r[0].width_px - 3.0).abs() < 1e-3);
        assert!((r[0].mean_score - 0.9).abs() < 1e-6);
        assert!(r[0].angle_deg.abs() < 1e-3 || (r[0].angle_deg - 180.0).abs() < 1e-3);
        assert_eq!(r[1].area_px, 10);
        // 10 pixels along a 45-degree line: centres span 9*sqrt(2), plus one pixel
        assert!((r[1].length_px - (9.0 * 2f32.sqrt() + 1.0)).abs() < 1e-3, "{:?}", r[1]);
        assert!((r[1].angle_deg - 45.0).abs() < 1e-3);
    }

    #[test]
    fn u_shapes_merge_and_counts_stay_exact() {
        // A U: two arms joined at the bottom only (union-find must merge them), and a comb of
        // many single pixels to exceed the tracked capacity.
        let (w, h) = (64, 64);
        let mut p = vec![0.0f32; w * h];
        for y in 0..10 {
            p[y * w + 2] = 1.0;
            p[y * w + 8] = 1.0;
        }
        for x in 2..9 {
            p[10 * w + x] = 1.0;
        }
        let mut singles = 0;
        for y in (14..64).step_by(2) {
            for x in (0..64).step_by(2) {
                p[y * w + x] = 0.6;
                singles += 1;
            }
        }
        let (s, r) = run(&p, w, h);
        assert_eq!(s.total, 1 + singles);
        assert_eq!(
            s.tracked as usize,
            (1 + singles).min(MAX_TRACKED_REGIONS as u32) as usize
        );
        assert_eq!(r.len(), MAX_REGIONS);
        assert_eq!(r[0].area_px, 27);
        assert!(r[1..].iter().all(|x| x.area_px == 1 && x.length_px == 1.0));
    }

    #[test]
    fn empty_map_and_bad_buffers() {
        let (s, r) = run(&[0.1; 12], 4, 3);
        assert_eq!((s.total, r.len()), (0, 0));
        let mut f = std::boxed::Box::<RegionFinder>::default();
        let mut labels = vec![0u32; 12];
        let mut parent = vec![0u32; 1];
        assert_eq!(
            f.find(&[0.0; 12], 4, 3, 0.5, &mut labels, &mut parent),
            Err(RegionError::Parent)
        );
        assert_eq!(
            f.find(&[0.0; 11], 4, 3, 0.5, &mut labels, &mut parent),
            Err(RegionError::Size)
        );
    }
}
