//! The analysis as it was first written (whole-image Zhang–Suen sweeps, per-frame vectors),
//! kept for tests only: the analyser in the parent module must give exactly its labels,
//! boundary and report on every mask.

use super::{AnalysisError, AnalysisParams, Grain, GrainReport, InterceptLines, MIN_BRANCH_PX};
use crate::grains::standards::{self, G_BINS};

/// Pixels walked back along a branch to take its direction.
const DIRECTION_PX: usize = 10;
/// A bridge starts inside the branch's own thick boundary; it may cross this many boundary
/// pixels before it reaches the gap.
const OWN_BOUNDARY_PX: usize = 30;

/// The analysis with its image-sized buffers (kept between images of one size).
#[derive(Default)]
pub struct GrainAnalyzer {
    boundary: Vec<bool>,
    skeleton: Vec<bool>,
    labels: Vec<u32>,
    queue: Vec<u32>,
    width: usize,
    height: usize,
}

const NEIGH8: [(i64, i64); 8] = [(0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1)];

impl GrainAnalyzer {
    /// A new analyser.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last image's grain labels (0 only where no grain could reach), row-major.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The last image's boundary after bridging and speck removal, before it was shared out.
    pub fn boundary(&self) -> &[bool] {
        &self.boundary
    }

    /// Analyse a boundary mask (`true` = boundary), `width × height`, row-major.
    pub fn analyse(
        &mut self,
        boundary: &[bool],
        width: usize,
        height: usize,
        params: &AnalysisParams,
    ) -> Result<GrainReport, AnalysisError> {
        if width == 0 || height == 0 || boundary.len() != width * height {
            return Err(AnalysisError::BadSize);
        }
        if !(params.um_per_px.is_finite() && params.um_per_px > 0.0) {
            return Err(AnalysisError::BadScale);
        }
        self.width = width;
        self.height = height;
        self.boundary.clear();
        self.boundary.extend_from_slice(boundary);
        let bridges = if params.bridge_gap_px > 0 {
            self.bridge(params.bridge_gap_px)
        } else {
            0
        };
        let n = self.label(params.min_grain_px.max(1));
        if n == 0 {
            return Err(AnalysisError::NoGrains);
        }
        self.grow();
        Ok(self.measure(n, params, bridges))
    }

    /// Label 4-connected non-boundary regions; small ones join the boundary. Returns the
    /// number of grains (labels `1..=n`).
    fn label(&mut self, min_px: usize) -> u32 {
        let (w, h) = (self.width, self.height);
        self.labels.clear();
        self.labels.resize(w * h, 0);
        let mut next = 1u32;
        let mut region: Vec<u32> = Vec::new();
        for start in 0..w * h {
            if self.boundary[start] || self.labels[start] != 0 {
                continue;
            }
            region.clear();
            region.push(start as u32);
            self.labels[start] = next;
            let mut head = 0;
            while head < region.len() {
                let i = region[head] as usize;
                head += 1;
                let (x, y) = (i % w, i / w);
                let mut visit = |j: usize| {
                    if !self.boundary[j] && self.labels[j] == 0 {
                        self.labels[j] = next;
                        region.push(j as u32);
                    }
                };
                if x > 0 {
                    visit(i - 1);
                }
                if x + 1 < w {
                    visit(i + 1);
                }
                if y > 0 {
                    visit(i - w);
                }
                if y + 1 < h {
                    visit(i + w);
                }
            }
            if region.len() < min_px {
                for &i in &region {
                    // u32::MAX marks "seen, not a grain" until the end of labelling
                    self.labels[i as usize] = u32::MAX;
                }
            } else {
                next += 1;
            }
        }
        for (l, b) in self.labels.iter_mut().zip(self.boundary.iter_mut()) {
            if *l == u32::MAX {
                *l = 0;
                *b = true;
            }
        }
        next - 1
    }

    /// Share the boundary pixels out to the nearest grain (4-neighbour breadth-first search
    /// from all grains at once; ties go to the grain met first in scan order).
    fn grow(&mut self) {
        let (w, h) = (self.width, self.height);
        self.queue.clear();
        for (i, &l) in self.labels.iter().enumerate() {
            if l != 0 {
                self.queue.push(i as u32);
            }
        }
        let mut head = 0;
        while head < self.queue.len() {
            let i = self.queue[head] as usize;
            head += 1;
            let l = self.labels[i];
            let (x, y) = (i % w, i / w);
            let visit = |j: usize, labels: &mut Vec<u32>, queue: &mut Vec<u32>| {
                if labels[j] == 0 {
                    labels[j] = l;
                    queue.push(j as u32);
                }
            };
            if x > 0 {
                visit(i - 1, &mut self.labels, &mut self.queue);
            }
            if x + 1 < w {
                visit(i + 1, &mut self.labels, &mut self.queue);
            }
            if y > 0 {
                visit(i - w, &mut self.labels, &mut self.queue);
            }
            if y + 1 < h {
                visit(i + w, &mut self.labels, &mut self.queue);
            }
        }
    }

    fn measure(&self, n: u32, params: &AnalysisParams, bridges: usize) -> GrainReport {
        let (w, h) = (self.width, self.height);
        let um2_per_px = params.um_per_px * params.um_per_px;
        let mut grains: Vec<Grain> = (1..=n)
            .map(|label| Grain {
                label,
                area_px: 0,
                area_um2: 0.0,
                g: 0.0,
                edge: false,
                corners: 0,
                cx: 0.0,
                cy: 0.0,
            })
            .collect();
        let mut sx = vec![0u64; n as usize];
        let mut sy = vec![0u64; n as usize];
        for y in 0..h {
            for x in 0..w {
                let l = self.labels[y * w + x];
                if l == 0 {
                    continue;
                }
                let g = &mut grains[l as usize - 1];
                g.area_px += 1;
                sx[l as usize - 1] += x as u64;
                sy[l as usize - 1] += y as u64;
                if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
                    g.edge = true;
                }
            }
        }
        for &(x, y) in &[(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)] {
            let l = self.labels[y * w + x];
            if l != 0 {
                grains[l as usize - 1].corners += 1;
            }
        }
        let mut histogram = [0u32; G_BINS];
        let mut jeffries = 0.0;
        let mut whole = 0;
        for (k, g) in grains.iter_mut().enumerate() {
            g.area_um2 = g.area_px as f64 * um2_per_px;
            g.g = standards::gost_g_of_grain_area_mm2(g.area_um2 * 1e-6);
            g.cx = (sx[k] as f64 / g.area_px.max(1) as f64) as f32;
            g.cy = (sy[k] as f64 / g.area_px.max(1) as f64) as f32;
            jeffries += g.jeffries_weight();
            if !g.edge {
                whole += 1;
                if let Some(b) = standards::g_bin(g.g) {
                    histogram[b] += 1;
                }
            }
        }
        let area_mm2 = (w * h) as f64 * um2_per_px * 1e-6;
        let n_a = jeffries / area_mm2;
        let intercept = self.intercepts(params.intercept_spacing_px.max(1));
        let (len, cross) = intercept
            .iter()
            .fold((0.0, 0u64), |(l, c), d| (l + d.length_px, c + d.crossings as u64));
        let mean_intercept_um = if cross == 0 {
            f64::NAN
        } else {
            len / cross as f64 * params.um_per_px
        };
        GrainReport {
            width: w,
            height: h,
            um_per_px: params.um_per_px,
            edge: grains.len() - whole,
            whole,
            grains,
            jeffries_count: jeffries,
            area_mm2,
            grains_per_mm2: n_a,
            mean_area_um2: 1e6 / n_a,
            gost_g: standards::gost_g_from_grains_per_mm2(n_a),
            astm_g_planimetric: standards::astm_g_from_grains_per_mm2(n_a),
            intercept,
            mean_intercept_um,
            astm_g_intercept: standards::astm_g_from_mean_intercept_mm(mean_intercept_um * 1e-3),
            histogram,
            bridges,
        }
    }

    /// Boundary crossings along parallel lines at 0°, 45°, 90° and 135°, `spacing` pixels
    /// apart (perpendicular distance), the first half a spacing in from the edge. A line is
    /// sampled at pixel centres; each sample stands for one step of line (1 or √2 pixels).
    pub fn intercepts(&self, spacing: usize) -> [InterceptLines; 4] {
        let (w, h) = (self.width as i64, self.height as i64);
        let mut out = [
            InterceptLines {
                angle_deg: 0,
                ..Default::default()
            },
            InterceptLines {
                angle_deg: 45,
                ..Default::default()
            },
            InterceptLines {
                angle_deg: 90,
                ..Default::default()
            },
            InterceptLines {
                angle_deg: 135,
                ..Default::default()
            },
        ];
        let s = spacing as i64;
        let lay = |d: &mut InterceptLines, x0: i64, y0: i64, dx: i64, dy: i64| {
            let step = if dx != 0 && dy != 0 {
                core::f64::consts::SQRT_2
            } else {
                1.0
            };
            let (mut x, mut y) = (x0, y0);
            let mut prev = 0u32;
            let mut samples = 0u32;
            while x >= 0 && y >= 0 && x < w && y < h {
                let l = self.labels[(y * w + x) as usize];
                if samples > 0 && l != prev && l != 0 && prev != 0 {
                    d.crossings += 1;
                }
                if l != 0 {
                    prev = l;
                }
                samples += 1;
                x += dx;
                y += dy;
            }
            if samples > 1 {
                d.lines += 1;
                d.length_px += samples as f64 * step;
            }
        };
        // 0°: rows; 90°: columns
        let mut y = s / 2;
        while y < h {
            lay(&mut out[0], 0, y, 1, 0);
            y += s;
        }
        let mut x = s / 2;
        while x < w {
            lay(&mut out[2], x, 0, 0, 1);
            x += s;
        }
        // 45° (x − y = c) and 135° (x + y = c): the perpendicular distance between lines c
        // and c + k is k / √2, so k = round(s·√2)
        let k = ((s as f64 * core::f64::consts::SQRT_2 + 0.5) as i64).max(1);
        let mut c = -(h - 1) + k / 2;
        while c < w {
            let (x0, y0) = if c >= 0 { (c, 0) } else { (0, -c) };
            lay(&mut out[1], x0, y0, 1, 1);
            c += k;
        }
        let mut c = k / 2;
        while c < w + h - 1 {
            let (x0, y0) = if c < w { (c, 0) } else { (w - 1, c - (w - 1)) };
            lay(&mut out[3], x0, y0, -1, 1);
            c += k;
        }
        out
    }

    /// Zhang–Suen thinning of the boundary into `skeleton`.
    fn thin(&mut self) {
        let (w, h) = (self.width, self.height);
        self.skeleton.clear();
        self.skeleton.extend_from_slice(&self.boundary);
        let sk = &mut self.skeleton;
        let mut remove: Vec<usize> = Vec::new();
        loop {
            let mut changed = false;
            for pass in 0..2 {
                remove.clear();
                for y in 1..h.saturating_sub(1) {
                    for x in 1..w - 1 {
                        let i = y * w + x;
                        if !sk[i] {
                            continue;
                        }
                        // P2..P9 clockwise from north
                        let p = [
                            sk[i - w],
                            sk[i - w + 1],
                            sk[i + 1],
                            sk[i + w + 1],
                            sk[i + w],
                            sk[i + w - 1],
                            sk[i - 1],
                            sk[i - w - 1],
                        ];
                        let b = p.iter().filter(|&&v| v).count();
                        if !(2..=6).contains(&b) {
                            continue;
                        }
                        let a = (0..8).filter(|&k| !p[k] && p[(k + 1) % 8]).count();
                        if a != 1 {
                            continue;
                        }
                        let (c1, c2) = if pass == 0 {
                            (p[0] && p[2] && p[4], p[2] && p[4] && p[6])
                        } else {
                            (p[0] && p[2] && p[6], p[0] && p[4] && p[6])
                        };
                        if !c1 && !c2 {
                            remove.push(i);
                        }
                    }
                }
                changed |= !remove.is_empty();
                for &i in &remove {
                    sk[i] = false;
                }
            }
            if !changed {
                break;
            }
        }
    }

    fn skeleton_neighbours(&self, x: i64, y: i64, out: &mut [(i64, i64); 8]) -> usize {
        let (w, h) = (self.width as i64, self.height as i64);
        let mut n = 0;
        for (dx, dy) in NEIGH8 {
            let (nx, ny) = (x + dx, y + dy);
            if nx >= 0 && ny >= 0 && nx < w && ny < h && self.skeleton[(ny * w + nx) as usize] {
                out[n] = (nx, ny);
                n += 1;
            }
        }
        n
    }

    /// Extend boundary branches that stop inside the image across gaps of at most `max_gap`
    /// pixels. Returns the number of bridges drawn.
    fn bridge(&mut self, max_gap: usize) -> usize {
        self.thin();
        let (w, h) = (self.width as i64, self.height as i64);
        let mut ends: Vec<(i64, i64, f64, f64)> = Vec::new();
        let mut nb = [(0i64, 0i64); 8];
        for y in 0..h {
            for x in 0..w {
                if !self.skeleton[(y * w + x) as usize] || self.skeleton_neighbours(x, y, &mut nb) != 1 {
                    continue;
                }
                // walk back along the branch
                let (mut px, mut py) = (x, y);
                let (mut cx, mut cy) = nb[0];
                let mut len = 1;
                let mut junction = false;
                while len < DIRECTION_PX.max(MIN_BRANCH_PX) {
                    let k = self.skeleton_neighbours(cx, cy, &mut nb);
                    if k >= 3 {
                        junction = true;
                        break;
                    }
                    let next = nb[..k]
                        .iter()
                        .find(|&&(nx, ny)| (nx, ny) != (px, py) && (nx, ny) != (x, y));
                    match next {
                        Some(&(nx, ny)) => {
                            px = cx;
                            py = cy;
                            cx = nx;
                            cy = ny;
                            len += 1;
                        }
                        None => break,
                    }
                }
                if junction && len < MIN_BRANCH_PX {
                    continue;
                }
                if len < MIN_BRANCH_PX {
                    continue; // an isolated short piece
                }
                let (dx, dy) = ((x - cx) as f64, (y - cy) as f64);
                let norm = (dx * dx + dy * dy).sqrt();
                if norm == 0.0 {
                    continue;
                }
                ends.push((x, y, dx / norm, dy / norm));
            }
        }
        let mut bridges = 0;
        for (x, y, dx, dy) in ends {
            let at = |t: f64| ((x as f64 + dx * t).round() as i64, (y as f64 + dy * t).round() as i64);
            let inside = |(px, py): (i64, i64)| px >= 0 && py >= 0 && px < w && py < h;
            // leave the branch's own boundary
            let mut t = 1.0;
            let mut exit = None;
            while t <= OWN_BOUNDARY_PX as f64 {
                let p = at(t);
                if !inside(p) {
                    break;
                }
                if !self.boundary[(p.1 * w + p.0) as usize] {
                    exit = Some(t);
                    break;
                }
                t += 1.0;
            }
            let Some(t_exit) = exit else { continue };
            // cross the gap
            let mut t = t_exit;
            let mut hit = None;
            while t <= t_exit + max_gap as f64 {
                let p = at(t);
                if !inside(p) {
                    break;
                }
                if self.boundary[(p.1 * w + p.0) as usize] {
                    hit = Some(t);
                    break;
                }
                t += 1.0;
            }
            let Some(t_hit) = hit else { continue };
            // draw an 8-connected line from the branch tip to the boundary met (at 0.5 px
            // steps, thickened to 4-connected so it separates 4-connected grains)
            let mut s = 0.0;
            let mut last: Option<(i64, i64)> = None;
            while s <= t_hit {
                let p = at(s);
                if inside(p) {
                    self.boundary[(p.1 * w + p.0) as usize] = true;
                    if let Some(q) = last {
                        if q.0 != p.0 && q.1 != p.1 {
                            self.boundary[(q.1 * w + p.0) as usize] = true;
                        }
                    }
                    last = Some(p);
                }
                s += 0.5;
            }
            bridges += 1;
        }
        bridges
    }
}

impl GrainAnalyzer {
    /// The Zhang–Suen skeleton of `mask` (`width × height`) alone.
    pub fn skeleton_of(&mut self, mask: &[bool], width: usize, height: usize) -> &[bool] {
        self.width = width;
        self.height = height;
        self.boundary.clear();
        self.boundary.extend_from_slice(mask);
        self.thin();
        &self.skeleton
    }
}
