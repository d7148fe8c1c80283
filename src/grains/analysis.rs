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
//! - The work follows what changes: thinning decides a word of pixels at once with bitwise
//!   operations and, after its first sweep, looks only at the words next to removed pixels;
//!   labelling works on runs of pixels; the sharing-out search starts from the grains' edges
//!   only.
//!
//! Why one file of ~1340 lines (~340 of tests): the steps share one label image and its
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
    labels: Vec<u32>,
    /// Breadth-first queue of [`GrainAnalyzer::grow`]: (pixel index, its x).
    queue: Vec<(u32, u32)>,
    /// The skeleton while bridging, the boundary while growing: packed [`WORD_PX`] pixels to
    /// a word, a row between two zero words.
    packed: Vec<u64>,
    /// Thinning: per word of a row, which of its pixels are interior (not in the first or
    /// last column).
    thin_cols: Vec<u64>,
    /// Thinning: the words each kind of sub-iteration has still to look at.
    thin_wait: [Vec<u32>; 2],
    /// Thinning: per word, which of `thin_wait` it is in ([`ZS_FIRST`], [`ZS_SECOND`]).
    thin_waiting: Vec<u8>,
    /// Thinning: the pixels one sub-iteration removes, as (word, mask).
    thin_remove: Vec<(u32, u64)>,
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

/// Pixels per word of a packed image (the skeleton while thinning, the boundary while
/// growing): a `u64`, so thinning decides 64 pixels at once with bitwise operations.
const WORD_PX: usize = 64;
/// Marks a word waiting for the first Zhang–Suen sub-iteration.
const ZS_FIRST: u8 = 1;
/// Marks a word waiting for the second sub-iteration.
const ZS_SECOND: u8 = 2;

/// Zhang–Suen's removal test on [`WORD_PX`] pixels at once. `row[1]` holds the pixels, `north`
/// and `south` the rows above and below; each as (west word, word, east word), 0 off the
/// image. A pixel goes when it is set, has 2 to 6 set neighbours, exactly one unset→set
/// transition going round P2..P9 (clockwise from north), and in the first sub-iteration not
/// all of P2, P4, P6 nor all of P4, P6, P8 set, in the second not all of P2, P4, P8 nor all of
/// P2, P6, P8. Returns the pixels that go.
fn zhang_suen_word(first: bool, row: [u64; 3], north: [u64; 3], south: [u64; 3]) -> u64 {
    let ([cw, c, ce], [nw, n, ne], [sw, s, se]) = (row, north, south);
    // neighbour x - 1 of each pixel comes in at the low end, x + 1 at the high end
    let west = |v: u64, vw: u64| (v << 1) | (vw >> (WORD_PX - 1));
    let east = |v: u64, ve: u64| (v >> 1) | (ve << (WORD_PX - 1));
    // P2..P9
    let p = [
        n,
        east(n, ne),
        east(c, ce),
        east(s, se),
        s,
        west(s, sw),
        west(c, cw),
        west(n, nw),
    ];
    // per pixel, "at least one" and "at least two" of: set neighbours, unset neighbours,
    // unset→set transitions
    let (mut set1, mut set2, mut unset1, mut unset2, mut up1, mut up2) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for k in 0..8 {
        let v = p[k];
        set2 |= set1 & v;
        set1 |= v;
        unset2 |= unset1 & !v;
        unset1 |= !v;
        let up = !v & p[(k + 1) % 8];
        up2 |= up1 & up;
        up1 |= up;
    }
    let (p2, p4, p6, p8) = (p[0], p[2], p[4], p[6]);
    let keep = if first {
        p4 & p6 & (p2 | p8)
    } else {
        p2 & p8 & (p4 | p6)
    };
    c & set2 & unset2 & up1 & !up2 & !keep
}

/// Up to [`WORD_PX`] pixels packed into a word, the first in the lowest bit.
fn pack(px: &[bool]) -> u64 {
    /// Gathers the low bit of each byte of a word into its top byte, the first byte's lowest.
    const GATHER: u64 = 0x0102_0408_1020_4080;
    let mut word = 0u64;
    let mut eights = px.chunks_exact(8);
    for (k, b) in eights.by_ref().enumerate() {
        let bytes = u64::from_le_bytes([
            b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8, b[4] as u8, b[5] as u8, b[6] as u8, b[7] as u8,
        ]);
        word |= (bytes.wrapping_mul(GATHER) >> 56) << (8 * k);
    }
    let done = px.len() / 8 * 8;
    for (k, &b) in eights.remainder().iter().enumerate() {
        word |= (b as u64) << (done + k);
    }
    word
}

/// Join the components of runs `a` and `b` in the union-find forest `root` (a parent is always
/// an earlier run, so a root is its component's first run) and move the later root's area in
/// `area` to the earlier.
fn union(root: &mut [u32], area: &mut [usize], a: u32, b: u32) {
    // path halving: each run passed points to its grandparent (still an earlier run)
    let find = |root: &mut [u32], mut r: u32| {
        while root[r as usize] != r {
            let up = root[root[r as usize] as usize];
            root[r as usize] = up;
            r = up;
        }
        r
    };
    let (ra, rb) = (find(root, a), find(root, b));
    if ra == rb {
        return;
    }
    let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
    root[hi as usize] = lo;
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
        // the boundary packed, a row between two zero words; the search starts from the grain
        // pixels with a boundary pixel above, below, left or right, in scan order
        let stride = w.div_ceil(WORD_PX) + 2;
        self.packed.clear();
        self.packed.resize(stride * h, 0);
        for (row, out) in self.boundary.chunks(w).zip(self.packed.chunks_mut(stride)) {
            for (px, word) in row.chunks(WORD_PX).zip(&mut out[1..]) {
                *word = pack(px);
            }
        }
        let (labels, queue, b) = (&mut self.labels, &mut self.queue, &self.packed);
        let mut tail = 0;
        for y in 0..h {
            for k in 1..stride - 1 {
                let i = y * stride + k;
                let (west, east) = (
                    (b[i] << 1) | (b[i - 1] >> (WORD_PX - 1)),
                    (b[i] >> 1) | (b[i + 1] << (WORD_PX - 1)),
                );
                let north = if y > 0 { b[i - stride] } else { 0 };
                let south = if y + 1 < h { b[i + stride] } else { 0 };
                let x0 = (k - 1) * WORD_PX;
                // pixels past the row's end are neither boundary nor grain
                let in_row = if w - x0 >= WORD_PX {
                    u64::MAX
                } else {
                    (1 << (w - x0)) - 1
                };
                let mut seeds = !b[i] & (west | east | north | south) & in_row;
                while seeds != 0 {
                    let x = x0 + seeds.trailing_zeros() as usize;
                    seeds &= seeds - 1;
                    queue[tail] = ((y * w + x) as u32, x as u32);
                    tail += 1;
                }
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
    /// The skeleton is packed [`WORD_PX`] pixels to a word and decided a word at a time
    /// ([`zhang_suen_word`]). Each sub-iteration decides on every pixel from the skeleton as
    /// it was when the sub-iteration began, and from the pixel's 8 neighbours alone; so a word
    /// a sub-iteration looked at cannot lose a pixel in the next sub-iteration of the same kind
    /// unless a pixel next to it went in between. Every word with set interior pixels is looked
    /// at in the first iteration, and from then on only the words next to removed pixels,
    /// which gives exactly the removals of whole-image sweeps.
    fn thin(&mut self) {
        let (w, h) = (self.width, self.height);
        // each row has a zero word on either side, so every word has neighbours to read
        let stride = w.div_ceil(WORD_PX) + 2;
        let words = stride * h;
        self.packed.clear();
        self.packed.resize(words, 0);
        for (row, out) in self.boundary.chunks(w).zip(self.packed.chunks_mut(stride)) {
            for (px, word) in row.chunks(WORD_PX).zip(&mut out[1..]) {
                *word = pack(px);
            }
        }
        self.thin_cols.clear();
        self.thin_cols.resize(stride, 0);
        for x in 1..w.saturating_sub(1) {
            self.thin_cols[1 + x / WORD_PX] |= 1 << (x % WORD_PX);
        }
        self.thin_waiting.clear();
        self.thin_waiting.resize(words, 0);
        for list in &mut self.thin_wait {
            list.clear();
            list.reserve(words);
        }
        self.thin_remove.clear();
        self.thin_remove.reserve(words);
        let interior_rows = 1..h.saturating_sub(1);
        for y in interior_rows.clone() {
            for k in 1..stride - 1 {
                let i = y * stride + k;
                if self.packed[i] & self.thin_cols[k] != 0 {
                    self.thin_wait[0].push(i as u32);
                    self.thin_wait[1].push(i as u32);
                    self.thin_waiting[i] = ZS_FIRST | ZS_SECOND;
                }
            }
        }
        let bits = &mut self.packed;
        let waiting = &mut self.thin_waiting;
        let remove = &mut self.thin_remove;
        let cols = &self.thin_cols;
        loop {
            let mut changed = false;
            for (pass, mark) in [(0, ZS_FIRST), (1, ZS_SECOND)] {
                remove.clear();
                for &i in &self.thin_wait[pass] {
                    let i = i as usize;
                    waiting[i] &= !mark;
                    let interior = cols[i % stride];
                    if bits[i] & interior == 0 {
                        continue;
                    }
                    let (n, s) = (i - stride, i + stride);
                    let gone = zhang_suen_word(
                        pass == 0,
                        [bits[i - 1], bits[i], bits[i + 1]],
                        [bits[n - 1], bits[n], bits[n + 1]],
                        [bits[s - 1], bits[s], bits[s + 1]],
                    ) & interior;
                    if gone != 0 {
                        remove.push((i as u32, gone));
                    }
                }
                self.thin_wait[pass].clear();
                if remove.is_empty() {
                    continue;
                }
                changed = true;
                for &(i, gone) in remove.iter() {
                    bits[i as usize] &= !gone;
                }
                // the words whose pixels have a removed pixel next to them wait for both
                // kinds of sub-iteration (a pad word never does)
                for &(i, gone) in remove.iter() {
                    let (y, k) = (i as usize / stride, i as usize % stride);
                    let west = k > 1 && gone & 1 != 0;
                    let east = k + 2 < stride && gone >> (WORD_PX - 1) != 0;
                    for r in y - 1..=y + 1 {
                        if !interior_rows.contains(&r) {
                            continue;
                        }
                        let at = r * stride + k;
                        for j in [Some(at), west.then(|| at - 1), east.then(|| at + 1)]
                            .into_iter()
                            .flatten()
                        {
                            for (list, m) in [(0, ZS_FIRST), (1, ZS_SECOND)] {
                                if waiting[j] & m == 0 {
                                    waiting[j] |= m;
                                    self.thin_wait[list].push(j as u32);
                                }
                            }
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Whether pixel (`x`, `y`) of the image is on the skeleton (after [`GrainAnalyzer::thin`]).
    fn on_skeleton(&self, x: usize, y: usize) -> bool {
        let stride = self.width.div_ceil(WORD_PX) + 2;
        (self.packed[y * stride + 1 + x / WORD_PX] >> (x % WORD_PX)) & 1 != 0
    }

    fn skeleton_neighbours(&self, x: i64, y: i64, out: &mut [(i64, i64); 8]) -> usize {
        let (w, h) = (self.width as i64, self.height as i64);
        let mut n = 0;
        for (dx, dy) in NEIGH8 {
            let (nx, ny) = (x + dx, y + dy);
            if nx >= 0 && ny >= 0 && nx < w && ny < h && self.on_skeleton(nx as usize, ny as usize) {
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
        let stride = self.width.div_ceil(WORD_PX) + 2;
        // the skeleton pixels in scan order, a word's set bits at a time (pad words are 0)
        for word in 0..self.packed.len() {
            let (y, x0) = (
                (word / stride) as i64,
                ((word % stride).max(1) - 1) as i64 * WORD_PX as i64,
            );
            let mut set = self.packed[word];
            while set != 0 {
                let x = x0 + set.trailing_zeros() as i64;
                set &= set - 1;
                if self.skeleton_neighbours(x, y, &mut nb) != 1 {
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
            // walls along the image edges, at 0 to 3 pixels from them
            5 => {
                for _ in 0..2 + rng.below(8) {
                    let (d, t) = (rng.below(4), 1 + rng.below(3));
                    let side = rng.below(4);
                    let along = if side < 2 { w } else { h };
                    let (a, b) = (rng.below(along), rng.below(along));
                    for s in a.min(b)..a.max(b) {
                        for k in d..d + t {
                            let (x, y) = match side {
                                0 => (s, k),
                                1 => (s, h.wrapping_sub(1 + k)),
                                2 => (k, s),
                                _ => (w.wrapping_sub(1 + k), s),
                            };
                            if x < w && y < h {
                                m[y * w + x] = true;
                            }
                        }
                    }
                }
                let n = 1 + rng.below(6);
                walls(rng, &mut m, w, h, n, 3);
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
    fn check(
        an: &mut GrainAnalyzer,
        m: &[bool],
        w: usize,
        h: usize,
        p: &AnalysisParams,
        what: &str,
    ) -> Option<GrainReport> {
        let mut old = reference::GrainAnalyzer::new();
        (an.width, an.height) = (w, h);
        an.boundary.clear();
        an.boundary.extend_from_slice(m);
        an.thin();
        let skeleton: Vec<bool> = (0..w * h).map(|i| an.on_skeleton(i % w, i / w)).collect();
        assert!(skeleton == old.skeleton_of(m, w, h), "{what}: skeleton");
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
        got.ok()
    }

    #[test]
    fn the_analysis_gives_exactly_what_its_first_implementation_gave() {
        const ROUNDS: usize = 40;
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
        let (mut bridged, mut several) = (0, 0);
        for round in 0..ROUNDS {
            for &(w, h) in &sizes {
                let kind = (round + w + h) % 7;
                let m = mask(&mut rng, kind, w, h);
                let mut p = AnalysisParams::for_scale([0.3, 0.444444, 1.0, 2.5][rng.below(4)]);
                p.min_grain_px = [1, 2, 5, 20, 60][rng.below(5)];
                p.bridge_gap_px = [0, 2, 6, 14, 30][rng.below(5)];
                p.intercept_spacing_px = 1 + rng.below(14);
                if let Some(r) = check(
                    &mut an,
                    &m,
                    w,
                    h,
                    &p,
                    &format!("round {round} {w}x{h} kind {kind} {p:?}"),
                ) {
                    bridged += (r.bridges > 0) as usize;
                    several += (r.grains.len() > 3) as usize;
                }
                cases += 1;
            }
        }
        assert_eq!(cases, ROUNDS * sizes.len());
        // the masks exercise bridging and many-grain structures, not only trivial cases
        assert!(
            bridged >= 20 && several >= 100,
            "{bridged} bridged, {several} with several grains"
        );
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
