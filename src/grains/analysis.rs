//! From a grain-boundary mask to grain sizes: closing, labelling, areas, the planimetric and
//! intercept numbers, and the histogram of grain numbers.
//!
//! The steps, for one boundary mask (`true` = boundary), all in image pixels:
//! 1. **Gap bridging** (optional, for model maps): the boundary is thinned to a one-pixel
//!    skeleton (Zhang–Suen); from each skeleton end that is the tip of a branch at least
//!    [`MIN_BRANCH_PX`] long, a straight line continues the branch's direction across at most
//!    `bridge_gap_px` of grain and is drawn in when it meets another boundary.
//! 2. **Grains**: 4-connected regions of non-boundary pixels; regions under `min_grain_px`
//!    (specks, dirt, hand-drawing slips) are not grains and join the boundary.
//! 3. **Boundaries to one pixel**: the boundary pixels are shared out to the nearest grain
//!    (breadth-first from every grain at once), so the grains tile the image as in the
//!    standards, where a boundary has no width: the areas add up to the image area and do not
//!    depend on how thick a boundary was drawn or predicted.
//! 4. **Per grain**: area in µm², whether it touches the image edge (or holds a corner), and
//!    its GOST 5639-82 number `G = log2(1 / (8·a))` (`a` in mm²).
//! 5. **Planimetric (Jeffries) number**, as ASTM E112 and GOST 5639-82 count a test area: a
//!    grain inside counts 1, a grain cut by the edge ½, a grain holding a corner of the
//!    rectangle ¼ per corner, so `N_A = (N_inside + ½·N_intercepted + 1) / A`.
//! 6. **Intercept (Heyn) number**: a grid of straight lines at 0°, 45°, 90° and 135°,
//!    `intercept_spacing_px` apart; the grain boundaries each line crosses are counted (label
//!    changes along the line), and the mean lineal intercept is total line length over total
//!    crossings.
//! 7. **Histogram** of the GOST numbers of the grains that lie wholly inside the image (a grain
//!    cut by the edge has an unknown area), one bin per integer number
//!    ([`standards::G_MIN`]`..=`[`standards::G_MAX`]).
//!
//! Guarantees:
//! - **No allocation after warm-up**: every buffer (masks, skeleton, label image, queues, runs,
//!   per-grain sums) is kept in the [`GrainAnalyzer`] and reused; with
//!   [`GrainAnalyzer::analyse_into`] the report's grain list is reused too. Once an image of
//!   a size, with as many grains, runs and skeleton pixels, has been analysed, an analysis
//!   asks the allocator for nothing.
//! - **Results fixed by the steps above, not by how they are computed**: labels, boundary
//!   and every number of the report are those of the first, pixel-by-pixel implementation
//!   (whole-image Zhang–Suen sweeps, breadth-first labelling), which the tests keep and
//!   compare with bit for bit on random and drawn masks and on model maps.
//! - The cost is linear in the image: thinning looks only at pixels whose neighbourhood
//!   changed (one table look-up each), labelling works on runs of pixels, and the sharing-out
//!   search starts from the grains' edges only.
//!
//! Why one file of ~1230 lines (~290 of tests): the steps share one label image and its
//! buffers, kept between micrographs of one size.

use super::standards::{self, G_BINS};

/// A skeleton branch shorter than this (pixels, from its tip to a junction) is a thinning
/// spur, not a boundary that stops short, and is not extended.
pub const MIN_BRANCH_PX: usize = 6;
/// Pixels walked back along a branch to take its direction.
const DIRECTION_PX: usize = 10;
/// A bridge starts inside the branch's own thick boundary; it may cross this many boundary
/// pixels before it reaches the gap.
const OWN_BOUNDARY_PX: usize = 30;

/// How a mask is turned into grains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnalysisParams {
    /// Micrometres per image pixel (the micrograph's calibration).
    pub um_per_px: f64,
    /// Regions of fewer pixels are not grains.
    pub min_grain_px: usize,
    /// Longest gap (pixels) a boundary is extended across; 0: no bridging.
    pub bridge_gap_px: usize,
    /// Distance (pixels) between neighbouring parallel lines of the intercept grid.
    pub intercept_spacing_px: usize,
}

impl AnalysisParams {
    /// Defaults for a calibration: grains from 20 µm², no bridging, intercept lines every
    /// 10 µm (at least 4 px apart).
    pub fn for_scale(um_per_px: f64) -> Self {
        AnalysisParams {
            um_per_px,
            min_grain_px: ((20.0 / (um_per_px * um_per_px)) as usize).max(1),
            bridge_gap_px: 0,
            intercept_spacing_px: ((10.0 / um_per_px) as usize).max(4),
        }
    }
}

/// One grain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grain {
    /// Its label in [`GrainAnalyzer::labels`] (1-based).
    pub label: u32,
    /// Pixels, boundary share included.
    pub area_px: u32,
    /// Area, µm².
    pub area_um2: f64,
    /// GOST 5639-82 number of this grain's area.
    pub g: f64,
    /// Touches the image edge (its true area is unknown).
    pub edge: bool,
    /// Image corners it holds (0..=4).
    pub corners: u8,
    /// Centroid, pixels.
    pub cx: f32,
    /// See `cx`.
    pub cy: f32,
}

impl Grain {
    /// Its weight in the planimetric count: 1 inside, ½ cut by the edge, ¼ per corner held.
    pub fn jeffries_weight(&self) -> f64 {
        if self.corners > 0 {
            0.25 * self.corners as f64
        } else if self.edge {
            0.5
        } else {
            1.0
        }
    }
}

/// Intercept counts along the lines of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct InterceptLines {
    /// Direction, degrees from the image x axis (y down).
    pub angle_deg: u32,
    /// Lines laid.
    pub lines: u32,
    /// Total line length, pixels.
    pub length_px: f64,
    /// Grain boundaries crossed.
    pub crossings: u32,
}

/// What one mask gave.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GrainReport {
    /// Image width, pixels.
    pub width: usize,
    /// Image height, pixels.
    pub height: usize,
    /// Calibration used.
    pub um_per_px: f64,
    /// Every grain, in label order.
    pub grains: Vec<Grain>,
    /// Grains wholly inside the image.
    pub whole: usize,
    /// Grains touching the edge.
    pub edge: usize,
    /// Planimetric count `N_inside + ½·N_intercepted + ¼·corners`.
    pub jeffries_count: f64,
    /// Image area, mm².
    pub area_mm2: f64,
    /// `N_A`, grains per mm².
    pub grains_per_mm2: f64,
    /// Mean grain area `1 / N_A`, µm².
    pub mean_area_um2: f64,
    /// GOST 5639-82 number from `N_A`.
    pub gost_g: f64,
    /// ASTM E112 planimetric number.
    pub astm_g_planimetric: f64,
    /// Lines of the intercept grid, one entry per direction.
    pub intercept: [InterceptLines; 4],
    /// Mean lineal intercept, µm (NaN when no line crossed a boundary).
    pub mean_intercept_um: f64,
    /// ASTM E112 intercept number.
    pub astm_g_intercept: f64,
    /// Whole grains per integer GOST number, bins `G_MIN..=G_MAX`.
    pub histogram: [u32; G_BINS],
    /// Gaps bridged.
    pub bridges: usize,
}

impl GrainReport {
    /// Mean of the GOST numbers of the whole grains (NaN without any).
    pub fn mean_grain_g(&self) -> f64 {
        let (s, n) = self
            .grains
            .iter()
            .filter(|g| !g.edge)
            .fold((0.0, 0usize), |(s, n), g| (s + g.g, n + 1));
        if n == 0 {
            f64::NAN
        } else {
            s / n as f64
        }
    }
}

/// Why a mask gave no grains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnalysisError {
    /// `width × height` does not match the mask, or is zero.
    BadSize,
    /// No region of at least `min_grain_px` pixels.
    NoGrains,
    /// The calibration is not a positive number.
    BadScale,
}

impl std::fmt::Display for AnalysisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnalysisError::BadSize => write!(f, "mask size does not match width × height"),
            AnalysisError::NoGrains => write!(f, "no grains: the boundary covers the whole image"),
            AnalysisError::BadScale => write!(f, "micrometres per pixel must be a positive number"),
        }
    }
}

impl std::error::Error for AnalysisError {}

/// The analysis with its buffers, kept between images: after the first image of a size (and
/// the first with as many grains, runs and skeleton pixels), [`GrainAnalyzer::analyse_into`]
/// asks the allocator for nothing.
#[derive(Default)]
pub struct GrainAnalyzer {
    boundary: Vec<bool>,
    skeleton: Vec<bool>,
    labels: Vec<u32>,
    /// Breadth-first queue of [`GrainAnalyzer::grow`]: (pixel index, its x).
    queue: Vec<(u32, u32)>,
    /// Thinning: the pixels each kind of sub-iteration has still to look at.
    thin_wait: [Vec<u32>; 2],
    /// Thinning: per pixel, which of `thin_wait` it is in ([`ZS_FIRST`], [`ZS_SECOND`]).
    thin_waiting: Vec<u8>,
    /// Thinning: the pixels one sub-iteration removes.
    thin_remove: Vec<u32>,
    /// Thinning: per set interior pixel, its neighbourhood ([`ZHANG_SUEN`] index), kept up
    /// to date as pixels go.
    thin_neighbours: Vec<u8>,
    /// Branch ends to extend: tip and unit direction.
    ends: Vec<(i64, i64, f64, f64)>,
    /// Runs of non-boundary pixels, scan order (labelling).
    runs: Vec<Run>,
    /// Per run: its parent in the union-find forest, then its root (the component's first
    /// run).
    run_root: Vec<u32>,
    /// Per root run: the pixels of its component, then its grain label (0: too small).
    run_area: Vec<usize>,
    /// Per grain: sums of x and y over its pixels (centroids).
    sx: Vec<u64>,
    sy: Vec<u64>,
    width: usize,
    height: usize,
}

/// A horizontal run of non-boundary pixels `x0..x1` on row `y`.
#[derive(Clone, Copy, Debug)]
struct Run {
    y: u32,
    x0: u32,
    x1: u32,
}

const NEIGH8: [(i64, i64); 8] = [(0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1)];

/// Bit of the pixel removable in the first Zhang–Suen sub-iteration, in [`ZHANG_SUEN`].
const ZS_FIRST: u8 = 1;
/// Bit of the pixel removable in the second sub-iteration.
const ZS_SECOND: u8 = 2;
/// Both bits.
const ZS_BOTH: u8 = ZS_FIRST | ZS_SECOND;

/// Zhang–Suen's removal test for every neighbourhood, computed once at compile time instead
/// of per pixel. The index has bit `k` set when neighbour `P(k+2)` is set, P2..P9 clockwise
/// from north ([`neighbourhood`]). A pixel is removable when it has 2 to 6 set neighbours,
/// exactly one unset→set transition around it, and (first sub-iteration) not all of P2, P4,
/// P6 nor all of P4, P6, P8 set, or (second) not all of P2, P4, P8 nor all of P2, P6, P8.
const ZHANG_SUEN: [u8; 256] = zhang_suen_table();

const fn zhang_suen_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut v = 0usize;
    while v < 256 {
        let b = (v as u8).count_ones();
        let mut a = 0;
        let mut k = 0;
        while k < 8 {
            if !bit(v, k) && bit(v, k + 1) {
                a += 1;
            }
            k += 1;
        }
        if b >= 2 && b <= 6 && a == 1 {
            let (p2, p4, p6, p8) = (bit(v, 0), bit(v, 2), bit(v, 4), bit(v, 6));
            // not all of P2, P4, P6 nor all of P4, P6, P8
            if !(p4 && p6 && (p2 || p8)) {
                t[v] |= ZS_FIRST;
            }
            // not all of P2, P4, P8 nor all of P2, P6, P8
            if !(p2 && p8 && (p4 || p6)) {
                t[v] |= ZS_SECOND;
            }
        }
        v += 1;
    }
    t
}

/// Neighbour `P(k+2)` (`k` modulo 8) of neighbourhood `v` is set.
const fn bit(v: usize, k: usize) -> bool {
    (v >> (k % 8)) & 1 == 1
}

/// The 8-neighbourhood of interior pixel `i` of a `w`-wide image as a [`ZHANG_SUEN`] index.
fn neighbourhood(sk: &[bool], i: usize, w: usize) -> u8 {
    let (n, s) = (&sk[i - w - 1..i - w + 2], &sk[i + w - 1..i + w + 2]);
    (n[1] as u8)
        | (n[2] as u8) << 1
        | (sk[i + 1] as u8) << 2
        | (s[2] as u8) << 3
        | (s[1] as u8) << 4
        | (s[0] as u8) << 5
        | (sk[i - 1] as u8) << 6
        | (n[0] as u8) << 7
}

/// Join the components of runs `a` and `b` in the union-find forest `root` (a parent is always
/// an earlier run, so a root is its component's first run) and move the later root's area in
/// `area` to the earlier.
fn union(root: &mut [u32], area: &mut [usize], a: u32, b: u32) {
    let (mut ra, mut rb) = (a, b);
    while root[ra as usize] != ra {
        ra = root[ra as usize];
    }
    while root[rb as usize] != rb {
        rb = root[rb as usize];
    }
    if ra == rb {
        return;
    }
    let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
    root[hi as usize] = lo;
    // shorten the paths walked next time (still to an earlier run)
    root[a as usize] = lo;
    root[b as usize] = lo;
    area[lo as usize] += area[hi as usize];
    area[hi as usize] = 0;
}

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

    /// Analyse a boundary mask (`true` = boundary), `width × height`, row-major, into a new
    /// report (see [`GrainAnalyzer::analyse_into`], which reuses one).
    pub fn analyse(
        &mut self,
        boundary: &[bool],
        width: usize,
        height: usize,
        params: &AnalysisParams,
    ) -> Result<GrainReport, AnalysisError> {
        let mut report = GrainReport::default();
        self.analyse_into(boundary, width, height, params, &mut report)?;
        Ok(report)
    }

    /// Analyse a boundary mask (`true` = boundary), `width × height`, row-major, into
    /// `report`, whose grain list is reused. On an error `report` is left as it was.
    pub fn analyse_into(
        &mut self,
        boundary: &[bool],
        width: usize,
        height: usize,
        params: &AnalysisParams,
        report: &mut GrainReport,
    ) -> Result<(), AnalysisError> {
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
        self.measure(n, params, bridges, report);
        Ok(())
    }

    /// Label 4-connected non-boundary regions; small ones join the boundary. Returns the
    /// number of grains (labels `1..=n`, in the scan order of each grain's first pixel).
    ///
    /// Runs of non-boundary pixels are joined with the overlapping runs of the row above
    /// (union-find, a component's root being its first run in scan order), so the work is
    /// per run, not per pixel, until the labels are written.
    fn label(&mut self, min_px: usize) -> u32 {
        let (w, h) = (self.width, self.height);
        self.runs.clear();
        self.run_root.clear();
        self.run_area.clear();
        let mut prev = 0..0; // the runs of the row above
        for y in 0..h {
            let row = &self.boundary[y * w..(y + 1) * w];
            let first = self.runs.len();
            let mut x = 0;
            while x < w {
                if row[x] {
                    x += 1;
                    continue;
                }
                let x0 = x;
                while x < w && !row[x] {
                    x += 1;
                }
                let r = self.runs.len() as u32;
                self.runs.push(Run {
                    y: y as u32,
                    x0: x0 as u32,
                    x1: x as u32,
                });
                self.run_root.push(r);
                self.run_area.push(x - x0);
                // join the runs above that overlap x0..x
                while prev.start < prev.end {
                    let a = self.runs[prev.start];
                    if a.x1 as usize <= x0 {
                        prev.start += 1;
                        continue;
                    }
                    if a.x0 as usize >= x {
                        break;
                    }
                    union(&mut self.run_root, &mut self.run_area, prev.start as u32, r);
                    if a.x1 as usize > x {
                        break; // it may overlap the next run of this row too
                    }
                    prev.start += 1;
                }
            }
            prev = first..self.runs.len();
        }
        // Every run's entry to its root (a parent is always an earlier run, so one forward
        // pass resolves every chain); the roots hold their components' areas.
        for r in 0..self.runs.len() {
            let p = self.run_root[r] as usize;
            if p != r {
                self.run_root[r] = self.run_root[p];
            }
        }
        // Grain labels in the order of the roots, the components' first runs.
        let mut next = 1u32;
        for r in 0..self.runs.len() {
            if self.run_root[r] as usize == r {
                if self.run_area[r] >= min_px {
                    self.run_area[r] = next as usize;
                    next += 1;
                } else {
                    self.run_area[r] = 0;
                }
            }
        }
        self.labels.clear();
        self.labels.resize(w * h, 0);
        for (r, run) in self.runs.iter().enumerate() {
            let l = self.run_area[self.run_root[r] as usize] as u32;
            let at = run.y as usize * w;
            let span = at + run.x0 as usize..at + run.x1 as usize;
            if l == 0 {
                self.boundary[span].fill(true);
            } else {
                self.labels[span].fill(l);
            }
        }
        next - 1
    }

    /// Share the boundary pixels out to the nearest grain (4-neighbour breadth-first search
    /// from all grains at once; ties go to the grain met first in scan order).
    ///
    /// The search starts from the grain pixels next to a boundary pixel, in scan order: a
    /// grain pixel without one would take nothing, so the result is that of a search from
    /// every grain pixel.
    fn grow(&mut self) {
        let (w, h) = (self.width, self.height);
        let len = w * h;
        // every pixel is queued at most once: `w × h` entries and one more, as entries are
        // written branch-free (always written, counted when queued); what they held before is
        // never read
        if self.queue.len() != len + 1 {
            self.queue.clear();
            self.queue.resize(len + 1, (0, 0));
        }
        let (labels, queue, boundary) = (&mut self.labels, &mut self.queue, &self.boundary);
        // after labelling, a pixel is boundary exactly where it has no label
        let mut tail = 0;
        for y in 0..h {
            let at = y * w;
            for x in 0..w {
                let i = at + x;
                let next_to_boundary = (x > 0 && boundary[i - 1])
                    | (x + 1 < w && boundary[i + 1])
                    | (y > 0 && boundary[i - w])
                    | (y + 1 < h && boundary[i + w]);
                queue[tail] = (i as u32, x as u32);
                tail += (!boundary[i] & next_to_boundary) as usize;
            }
        }
        let mut head = 0;
        while head < tail {
            let (i, x) = queue[head];
            head += 1;
            let l = labels[i as usize];
            // a neighbour off the image is the pixel itself, which has its label
            let left = if x > 0 { i - 1 } else { i };
            let right = if x as usize + 1 < w { i + 1 } else { i };
            let up = if i as usize >= w { i - w as u32 } else { i };
            let down = if (i as usize) + w < len { i + w as u32 } else { i };
            for (j, xj) in [(left, x.wrapping_sub(1)), (right, x + 1), (up, x), (down, x)] {
                let free = labels[j as usize] == 0;
                labels[j as usize] |= l * free as u32;
                queue[tail] = (j, xj);
                tail += free as usize;
            }
        }
    }

    fn measure(&mut self, n: u32, params: &AnalysisParams, bridges: usize, report: &mut GrainReport) {
        let (w, h) = (self.width, self.height);
        let um2_per_px = params.um_per_px * params.um_per_px;
        let grains = &mut report.grains;
        grains.clear();
        grains.extend((1..=n).map(|label| Grain {
            label,
            area_px: 0,
            area_um2: 0.0,
            g: 0.0,
            edge: false,
            corners: 0,
            cx: 0.0,
            cy: 0.0,
        }));
        self.sx.clear();
        self.sx.resize(n as usize, 0);
        self.sy.clear();
        self.sy.resize(n as usize, 0);
        // per run of one label along a row: its pixels, their x sum and y sum at once
        for y in 0..h {
            let row = &self.labels[y * w..(y + 1) * w];
            let mut x0 = 0;
            while x0 < w {
                let l = row[x0];
                let mut x1 = x0 + 1;
                while x1 < w && row[x1] == l {
                    x1 += 1;
                }
                if l != 0 {
                    let k = l as usize - 1;
                    let len = (x1 - x0) as u64;
                    let g = &mut grains[k];
                    g.area_px += len as u32;
                    self.sx[k] += (x0 as u64 + x1 as u64 - 1) * len / 2;
                    self.sy[k] += y as u64 * len;
                    if x0 == 0 || y == 0 || x1 == w || y + 1 == h {
                        g.edge = true;
                    }
                }
                x0 = x1;
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
            g.cx = (self.sx[k] as f64 / g.area_px.max(1) as f64) as f32;
            g.cy = (self.sy[k] as f64 / g.area_px.max(1) as f64) as f32;
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
        report.width = w;
        report.height = h;
        report.um_per_px = params.um_per_px;
        report.edge = grains.len() - whole;
        report.whole = whole;
        report.jeffries_count = jeffries;
        report.area_mm2 = area_mm2;
        report.grains_per_mm2 = n_a;
        report.mean_area_um2 = 1e6 / n_a;
        report.gost_g = standards::gost_g_from_grains_per_mm2(n_a);
        report.astm_g_planimetric = standards::astm_g_from_grains_per_mm2(n_a);
        report.intercept = intercept;
        report.mean_intercept_um = mean_intercept_um;
        report.astm_g_intercept = standards::astm_g_from_mean_intercept_mm(mean_intercept_um * 1e-3);
        report.histogram = histogram;
        report.bridges = bridges;
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
    ///
    /// Each sub-iteration decides on every pixel from the skeleton as it was when the
    /// sub-iteration began, and the decision depends on the pixel's 8 neighbours alone. So a
    /// pixel a sub-iteration kept cannot go in the next sub-iteration of the same kind unless
    /// a neighbour went in between: only the set interior pixels are looked at in the first
    /// iteration, and from then on only the neighbours of removed pixels, giving exactly the
    /// removals of whole-image sweeps.
    fn thin(&mut self) {
        let (w, h) = (self.width, self.height);
        self.skeleton.clear();
        self.skeleton.extend_from_slice(&self.boundary);
        // A pixel's bit ZS_FIRST / ZS_SECOND is set while it waits in the first / second
        // list; border pixels are never looked at, so they have both bits from the start.
        // Lists and removals are written branch-free (an entry is always written, and counted
        // when it is one): each holds a pixel at most once, so `w × h` entries are room
        // enough, and what they held before is never read.
        self.thin_waiting.clear();
        self.thin_waiting.resize(w * h, ZS_BOTH);
        for list in self.thin_wait.iter_mut().chain([&mut self.thin_remove]) {
            if list.len() != w * h {
                list.clear();
                list.resize(w * h, 0);
            }
        }
        if self.thin_neighbours.len() != w * h {
            self.thin_neighbours.clear();
            self.thin_neighbours.resize(w * h, 0);
        }
        let sk = &mut self.skeleton;
        let waiting = &mut self.thin_waiting;
        let nb = &mut self.thin_neighbours;
        let [first, second] = &mut self.thin_wait;
        let remove = &mut self.thin_remove;
        let mut waits = [0usize; 2];
        for y in 1..h.saturating_sub(1) {
            for x in 1..w - 1 {
                let i = y * w + x;
                let set = sk[i];
                first[waits[0]] = i as u32;
                second[waits[0]] = i as u32;
                waits[0] += set as usize;
                waiting[i] = ZS_BOTH * set as u8;
                if set {
                    nb[i] = neighbourhood(sk, i, w);
                }
            }
        }
        waits[1] = waits[0];
        // (offset to a neighbour, the bit the removed pixel is in that neighbour's byte)
        let w_ = w as isize;
        let around = [
            (-w_ - 1, 1u8 << 3),
            (-w_, 1 << 4),
            (-w_ + 1, 1 << 5),
            (-1, 1 << 2),
            (1, 1 << 6),
            (w_ - 1, 1 << 1),
            (w_, 1),
            (w_ + 1, 1 << 7),
        ];
        loop {
            let mut changed = false;
            for pass in [ZS_FIRST, ZS_SECOND] {
                let list = if pass == ZS_FIRST { &first[..] } else { &second[..] };
                let k = (pass - 1) as usize;
                let mut removed = 0;
                for &i in &list[..waits[k]] {
                    let i = i as usize;
                    waiting[i] &= !pass;
                    let go = sk[i] & (ZHANG_SUEN[nb[i] as usize] & pass != 0);
                    remove[removed] = i as u32;
                    removed += go as usize;
                }
                waits[k] = 0;
                if removed == 0 {
                    continue;
                }
                changed = true;
                for &i in &remove[..removed] {
                    sk[i as usize] = false;
                }
                for &i in &remove[..removed] {
                    for (d, me) in around {
                        let j = (i as isize + d) as usize;
                        nb[j] &= !me;
                        let set = sk[j] as u8;
                        let was = waiting[j];
                        let to_first = set & !was & ZS_FIRST;
                        let to_second = (set << 1) & !was & ZS_SECOND;
                        first[waits[0]] = j as u32;
                        waits[0] += to_first as usize;
                        second[waits[1]] = j as u32;
                        waits[1] += (to_second >> 1) as usize;
                        waiting[j] = was | to_first | to_second;
                    }
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
        self.ends.clear();
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
                self.ends.push((x, y, dx / norm, dy / norm));
            }
        }
        let mut bridges = 0;
        for e in 0..self.ends.len() {
            let (x, y, dx, dy) = self.ends[e];
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

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grain_without_boundaries_is_the_whole_image() {
        let mut a = GrainAnalyzer::new();
        let r = a
            .analyse(&[false; 100], 10, 10, &AnalysisParams::for_scale(1.0))
            .unwrap();
        assert_eq!(r.grains.len(), 1);
        assert_eq!(r.grains[0].corners, 4);
        assert_eq!(r.jeffries_count, 1.0);
        assert!(r.mean_intercept_um.is_nan());
    }

    #[test]
    fn an_all_boundary_mask_has_no_grains() {
        let mut a = GrainAnalyzer::new();
        let e = a
            .analyse(&[true; 100], 10, 10, &AnalysisParams::for_scale(1.0))
            .unwrap_err();
        assert_eq!(e, AnalysisError::NoGrains);
        assert_eq!(
            a.analyse(&[true; 10], 10, 10, &AnalysisParams::for_scale(1.0))
                .unwrap_err(),
            AnalysisError::BadSize
        );
    }

    #[test]
    fn a_gap_in_a_wall_is_bridged_and_splits_the_grain() {
        // a 3-px wall across a 60x40 image with a 6-px gap in the middle
        let (w, h) = (60usize, 40usize);
        let mut m = vec![false; w * h];
        for y in 0..h {
            if (17..23).contains(&y) {
                continue;
            }
            for x in 29..32 {
                m[y * w + x] = true;
            }
        }
        let mut p = AnalysisParams::for_scale(1.0);
        p.min_grain_px = 10;
        let mut a = GrainAnalyzer::new();
        assert_eq!(a.analyse(&m, w, h, &p).unwrap().grains.len(), 1);
        p.bridge_gap_px = 10;
        let r = a.analyse(&m, w, h, &p).unwrap();
        assert!(r.bridges >= 1);
        assert_eq!(r.grains.len(), 2);
    }

    /// SplitMix64, for seeded masks.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
        fn chance(&mut self, p: f64) -> bool {
            ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
        }
    }

    /// Straight walls of random direction and thickness, some with gaps, between random
    /// points (ends inside the image, so branches stop short).
    fn walls(rng: &mut Rng, m: &mut [bool], w: usize, h: usize, n: usize, thick: usize) {
        for _ in 0..n {
            let (x0, y0) = (rng.below(w) as f64, rng.below(h) as f64);
            let (x1, y1) = (rng.below(w) as f64, rng.below(h) as f64);
            let t = 1 + rng.below(thick);
            let gap_at = rng.next() % 4;
            let gap_len = 1 + rng.below(12);
            let steps = ((x1 - x0).abs().max((y1 - y0).abs()) * 2.0) as usize + 1;
            for s in 0..=steps {
                if gap_at == 0 && (s / 2) % 40 < gap_len && s > 4 {
                    continue;
                }
                let f = s as f64 / steps as f64;
                let (cx, cy) = (x0 + (x1 - x0) * f, y0 + (y1 - y0) * f);
                for dy in 0..t {
                    for dx in 0..t {
                        let (x, y) = (cx as usize + dx, cy as usize + dy);
                        if x < w && y < h {
                            m[y * w + x] = true;
                        }
                    }
                }
            }
        }
    }

    /// A mask of one of several kinds, `w × h`.
    fn mask(rng: &mut Rng, kind: usize, w: usize, h: usize) -> Vec<bool> {
        let mut m = vec![false; w * h];
        match kind {
            // thin random walls with gaps
            0 => {
                let n = 3 + rng.below(20);
                walls(rng, &mut m, w, h, n, 1)
            }
            // thick walls with gaps
            1 => {
                let n = 3 + rng.below(15);
                walls(rng, &mut m, w, h, n, 6)
            }
            // speckle: independent pixels
            2 => {
                let p = [0.02, 0.1, 0.3, 0.5, 0.7][rng.below(5)];
                m.iter_mut().for_each(|v| *v = rng.chance(p));
            }
            // walls and speckle
            3 => {
                let n = 2 + rng.below(10);
                walls(rng, &mut m, w, h, n, 4);
                m.iter_mut().for_each(|v| *v |= rng.chance(0.03));
            }
            // a grid with gaps, walls on the image edge too
            _ => {
                let step = 5 + rng.below(30);
                let t = 1 + rng.below(4);
                for y in 0..h {
                    for x in 0..w {
                        let on = x % step < t || y % step < t;
                        m[y * w + x] = on && !rng.chance(0.02) && (x * 7 + y * 3) % 97 > 4;
                    }
                }
            }
        }
        m
    }

    /// Every field of two reports equal, floating-point numbers by their bits.
    fn assert_same(a: &GrainReport, b: &GrainReport, what: &str) {
        let bits = |v: f64| v.to_bits();
        assert_eq!(
            (a.width, a.height, a.whole, a.edge, a.bridges),
            (b.width, b.height, b.whole, b.edge, b.bridges),
            "{what}"
        );
        assert_eq!(a.grains.len(), b.grains.len(), "{what}: grains");
        for (g, r) in a.grains.iter().zip(&b.grains) {
            assert_eq!(
                (g.label, g.area_px, g.edge, g.corners),
                (r.label, r.area_px, r.edge, r.corners),
                "{what}"
            );
            assert_eq!((bits(g.area_um2), bits(g.g)), (bits(r.area_um2), bits(r.g)), "{what}");
            assert_eq!(
                (g.cx.to_bits(), g.cy.to_bits()),
                (r.cx.to_bits(), r.cy.to_bits()),
                "{what}"
            );
        }
        for (x, y) in [
            (a.um_per_px, b.um_per_px),
            (a.jeffries_count, b.jeffries_count),
            (a.area_mm2, b.area_mm2),
            (a.grains_per_mm2, b.grains_per_mm2),
            (a.mean_area_um2, b.mean_area_um2),
            (a.gost_g, b.gost_g),
            (a.astm_g_planimetric, b.astm_g_planimetric),
            (a.mean_intercept_um, b.mean_intercept_um),
            (a.astm_g_intercept, b.astm_g_intercept),
        ] {
            assert_eq!(bits(x), bits(y), "{what}: {x} vs {y}");
        }
        for (d, e) in a.intercept.iter().zip(&b.intercept) {
            assert_eq!(
                (d.angle_deg, d.lines, d.crossings),
                (e.angle_deg, e.lines, e.crossings),
                "{what}"
            );
            assert_eq!(bits(d.length_px), bits(e.length_px), "{what}");
        }
        assert_eq!(a.histogram, b.histogram, "{what}");
    }

    /// Analyse with this module's analyser (kept between masks, as on a frame path) and the
    /// first implementation; both must agree on everything.
    fn check(an: &mut GrainAnalyzer, m: &[bool], w: usize, h: usize, p: &AnalysisParams, what: &str) {
        let mut old = reference::GrainAnalyzer::new();
        let want = old.analyse(m, w, h, p);
        let got = an.analyse(m, w, h, p);
        match (&got, &want) {
            (Ok(a), Ok(b)) => assert_same(a, b, what),
            (a, b) => assert_eq!(a.as_ref().err(), b.as_ref().err(), "{what}"),
        }
        if want.is_ok() || want == Err(AnalysisError::NoGrains) {
            assert!(an.boundary() == old.boundary(), "{what}: boundary");
        }
        if want.is_ok() {
            assert!(an.labels() == old.labels(), "{what}: labels");
        }
    }

    #[test]
    fn the_analysis_gives_exactly_what_its_first_implementation_gave() {
        let mut rng = Rng(0x5eed_6a41);
        let mut an = GrainAnalyzer::new();
        let sizes = [
            (1, 1),
            (1, 40),
            (40, 1),
            (2, 2),
            (2, 9),
            (3, 3),
            (3, 30),
            (7, 5),
            (17, 13),
            (33, 64),
            (64, 48),
            (100, 100),
            (160, 120),
            (211, 97),
        ];
        let mut cases = 0;
        for round in 0..12 {
            for &(w, h) in &sizes {
                let kind = (round + w + h) % 5;
                let m = mask(&mut rng, kind, w, h);
                let mut p = AnalysisParams::for_scale([0.3, 0.444444, 1.0, 2.5][rng.below(4)]);
                p.min_grain_px = [1, 2, 5, 20, 60][rng.below(5)];
                p.bridge_gap_px = [0, 2, 6, 14, 30][rng.below(5)];
                p.intercept_spacing_px = 1 + rng.below(14);
                check(
                    &mut an,
                    &m,
                    w,
                    h,
                    &p,
                    &format!("round {round} {w}x{h} kind {kind} {p:?}"),
                );
                cases += 1;
            }
        }
        assert_eq!(cases, 12 * sizes.len());
    }

    #[test]
    fn the_analysis_of_model_maps_and_drawn_masks_is_that_of_its_first_implementation() {
        use crate::core::frame::GrayFrame;
        use crate::grains::model::GrainModel;
        use crate::model::manifest::Precision;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("tests/data/grains_samples");
        let mut gm = GrainModel::load(&root.join("models/grains_316l.toml"), Precision::Int8).unwrap();
        let mut an = GrainAnalyzer::new();
        let mut stems: Vec<_> = std::fs::read_dir(dir.join("images"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        stems.sort();
        for img in stems {
            let stem = img.file_stem().unwrap().to_str().unwrap().to_string();
            let (w, h, px) = crate::sim::replay::decode_gray(&std::fs::read(&img).unwrap()).unwrap();
            gm.boundary_map(&GrayFrame::new(&px, w, h, w).unwrap()).unwrap();
            let (_, _, mpx) =
                crate::sim::replay::decode_gray(&std::fs::read(dir.join(format!("masks/{stem}.png"))).unwrap())
                    .unwrap();
            let drawn: Vec<bool> = mpx.iter().map(|&v| v < 128).collect();
            for um in [0.444444, 1.0] {
                let p = AnalysisParams::for_scale(um);
                check(&mut an, &drawn, w, h, &p, &format!("{stem} mask at {um}"));
            }
            for level in [0.2, 0.25, 0.5, 0.7] {
                for gap_um in [0.0, 6.0, 10.0] {
                    let p = gm.section().params(0.444444);
                    let p = AnalysisParams {
                        bridge_gap_px: (gap_um / 0.444444f64).round() as usize,
                        ..p
                    };
                    let m: Vec<bool> = gm.prob().iter().map(|&v| v >= level).collect();
                    check(
                        &mut an,
                        &m,
                        w,
                        h,
                        &p,
                        &format!("{stem} map at {level}, gap {gap_um} µm"),
                    );
                }
            }
        }
    }
}
