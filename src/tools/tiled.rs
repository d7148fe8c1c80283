//! Map models on frames of any size: tiling, stitching back to full resolution, regions.
//!
//! A tiled model (`[segment]` or `[anomaly]` manifest) takes one `tile × tile` gray tile and
//! returns a defect map of `(tile / cell)²` cells, and optionally one decision value per tile.
//! [`TiledMap::run`] covers the frame with overlapping tiles (a dimension shorter than the
//! tile is reflect-padded, centred), runs the model on each, upsamples each tile's map
//! bilinearly (cell centres) to frame pixels and averages where tiles overlap. The result is a
//! full-resolution probability map; [`TiledMap::regions`] then labels and measures the
//! connected regions above the pixel threshold.
//!
//! With `symmetries = n` in the manifest (or [`TiledMap::set_symmetries`]), each tile's map is
//! the mean of the model's maps over the first `n` of the square's eight symmetries (see
//! [`symmetry_source`]), each map turned back before it is added: the model runs `n` times a
//! tile, and a map no longer depends on which way up the part lies.
//!
//! Buffers are sized by [`TiledMap::prepare`] for one frame size (warm-up); frames of that
//! size then allocate nothing in our code. Tiles per axis are capped at [`MAX_TILES_PER_AXIS`].

use anyhow::{bail, Context, Result};
use heapless::Vec as HVec;

use crate::alloc_count::{scoped, Scope};
use crate::core::frame::GrayFrame;
use crate::core::regions::{parent_len, RegionFinder, RegionSummary};
use crate::model::engine::{Engine, RunError};
use crate::model::manifest::{Manifest, Precision, TiledSection};

/// Tiles per frame axis, at most (a 512-pixel tile with 64 overlap: frames up to ~28 000 px).
pub const MAX_TILES_PER_AXIS: usize = 64;

/// Tile starts covering `0..len` with tiles of `tile` sharing at least `min_overlap` pixels,
/// evenly spaced (the training recipes use the same rule). A dimension shorter than the tile
/// gets one tile starting before 0 (reflect padding, centred).
pub fn tile_origins(len: usize, tile: usize, min_overlap: usize) -> HVec<i64, MAX_TILES_PER_AXIS> {
    let mut v = HVec::new();
    if len <= tile {
        let _ = v.push(-(((tile - len) / 2) as i64));
        return v;
    }
    let step = tile - min_overlap;
    let n = (1 + (len - tile).div_ceil(step)).min(MAX_TILES_PER_AXIS);
    for i in 0..n {
        let _ = v.push((i * (len - tile) / (n - 1)) as i64);
    }
    v
}

/// Reflect an index into `0..n` (edge not repeated: -1 → 1), as numpy's `reflect` padding.
#[inline]
pub fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut k = i.rem_euclid(period);
    if k >= n {
        k = period - k;
    }
    k as usize
}

/// Symmetry `k` (0..8) of an `n × n` square: the pixel `(y, x)` of the turned square is the
/// pixel returned here of the original. Bit 0 mirrors left–right, bit 1 upside down, bit 2
/// transposes first, so symmetries 0..2 are the identity and the mirror, 0..4 add the
/// upside-down and the half turn, and 0..8 add the transpose, the two quarter turns and the
/// anti-transpose. [`TiledMap`] turns a map back by writing each cell of the turned tile's
/// map to the cell this function names (the map's cells are the tile's, `tile / cell` a side).
#[inline]
pub fn symmetry_source(k: usize, n: usize, y: usize, x: usize) -> (usize, usize) {
    let (a, b) = if k & 4 != 0 { (x, y) } else { (y, x) };
    let a = if k & 2 != 0 { n - 1 - a } else { a };
    let b = if k & 1 != 0 { n - 1 - b } else { b };
    (a, b)
}

/// What one frame gave.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MapOutput {
    /// Maximum over tiles of the decision output (`None`: the model has none).
    pub decision: Option<f32>,
    /// Maximum of the stitched map.
    pub map_max: f32,
    /// Tiles run.
    pub tiles: usize,
    /// Model runs (tiles × symmetries).
    pub runs: usize,
    /// Time spent inside the model over all runs, µs (the rest of [`TiledMap::run`] is
    /// tile copying and stitching).
    pub inference_us: u64,
}

/// A loaded tiled model with its frame-sized buffers.
pub struct TiledMap {
    manifest: Manifest,
    precision: Precision,
    section: TiledSection,
    engine: Engine,
    cells: usize,
    map_at: usize,
    decision_at: Option<usize>,
    out: Vec<f32>,
    /// One tile's map (and decision), summed over symmetries.
    acc: Vec<f32>,
    lut: [f32; 256],
    /// Per tile coordinate: (cell below, cell above, fraction).
    axis: Vec<(u32, u32, f32)>,
    xmap: Vec<u32>,
    ymap: Vec<u32>,
    width: usize,
    height: usize,
    prob: Vec<f32>,
    count: Vec<u8>,
    labels: Vec<u32>,
    parent: Vec<u32>,
    finder: Box<RegionFinder>,
}

impl TiledMap {
    /// Load the model of a checked `[segment]`/`[anomaly]` manifest at `precision`.
    pub fn from_manifest(manifest: Manifest, precision: Precision) -> Result<TiledMap> {
        let p = manifest.path.display().to_string();
        let Some(section) = manifest.tiled.clone() else {
            bail!("{p}: not a tiled (segment or anomaly) model");
        };
        let file = manifest.model_path(precision)?;
        let engine = Engine::load_outputs(&file, &manifest.input.shape)
            .with_context(|| format!("{p}: loading the {} model", precision.name()))?;
        let cells = section.tile / section.cell;
        let (mut map_at, mut decision_at, mut at) = (None, None, 0);
        for shape in engine.output_shapes() {
            let n: usize = shape.iter().product();
            if n == cells * cells && map_at.is_none() {
                map_at = Some(at);
            } else if n == 1 && decision_at.is_none() {
                decision_at = Some(at);
            } else {
                bail!(
                    "{p}: model output of shape {shape:?} is neither the {cells}x{cells} map (tile {} / cell {}) nor one decision value",
                    section.tile,
                    section.cell
                );
            }
            at += n;
        }
        let Some(map_at) = map_at else {
            bail!("{p}: the model has no {cells}x{cells} map output");
        };
        let (mean, std) = (manifest.input.mean, manifest.input.std);
        let mut lut = [0.0f32; 256];
        for (v, l) in lut.iter_mut().enumerate() {
            *l = (v as f32 / 255.0 - mean) / std;
        }
        let cell = section.cell as f32;
        let axis = (0..section.tile)
            .map(|u| {
                let f = ((u as f32 + 0.5) / cell - 0.5).clamp(0.0, (cells - 1) as f32);
                let i0 = f.floor() as u32;
                let i1 = (i0 + 1).min(cells as u32 - 1);
                (i0, i1, f - i0 as f32)
            })
            .collect();
        Ok(TiledMap {
            out: vec![0.0; engine.output_len()],
            acc: vec![0.0; cells * cells + 1],
            engine,
            cells,
            map_at,
            decision_at,
            lut,
            axis,
            xmap: vec![0; section.tile],
            ymap: vec![0; section.tile],
            width: 0,
            height: 0,
            prob: Vec::new(),
            count: Vec::new(),
            labels: Vec::new(),
            parent: Vec::new(),
            finder: Box::default(),
            section,
            manifest,
            precision,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Which model file runs.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Tiling and thresholds.
    pub fn section(&self) -> &TiledSection {
        &self.section
    }

    /// Symmetries each tile's map is averaged over (the section's `symmetries`).
    pub fn symmetries(&self) -> usize {
        self.section.symmetries
    }

    /// Average each tile's map over `n` symmetries instead of the manifest's (1, 2, 4 or 8);
    /// [`TiledMap::section`] then says `n`.
    pub fn set_symmetries(&mut self, n: usize) -> Result<()> {
        if !crate::model::manifest::SYMMETRIES.contains(&n) {
            bail!("symmetries {n}: allowed 1, 2, 4 or 8");
        }
        self.section.symmetries = n;
        Ok(())
    }

    /// Size the buffers for `width × height` frames (allocates when the frame is larger than any
    /// before; call at warm-up).
    pub fn prepare(&mut self, width: usize, height: usize) {
        if (width, height) == (self.width, self.height) {
            return;
        }
        // Buffers keep their capacity: after the largest frame has been seen, a change of
        // frame size allocates nothing.
        let n = width * height;
        self.prob.resize(n, 0.0);
        self.count.resize(n, 0);
        self.labels.resize(n, 0);
        self.parent.resize(parent_len(width, height), 0);
        self.width = width;
        self.height = height;
    }

    /// Frame size the buffers hold.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// The stitched map of the last frame, row-major, one value per frame pixel.
    pub fn prob(&self) -> &[f32] {
        &self.prob
    }

    /// Run every tile of `frame` and stitch the map. Resizes the buffers (allocating) only
    /// when the frame size changes.
    pub fn run(&mut self, frame: &GrayFrame<'_>) -> Result<MapOutput, RunError> {
        let (w, h) = (frame.width(), frame.height());
        self.prepare(w, h);
        let tile = self.section.tile;
        let ov = self.section.min_overlap;
        let xs = tile_origins(w, tile, ov);
        let ys = tile_origins(h, tile, ov);
        self.prob.fill(0.0);
        self.count.fill(0);
        let mut out = MapOutput::default();
        let mut decision = f32::MIN;
        let (cells, symmetries) = (self.cells, self.section.symmetries);
        for &oy in &ys {
            for &ox in &xs {
                for (k, m) in self.xmap.iter_mut().enumerate() {
                    *m = reflect(ox + k as i64, w) as u32;
                }
                for (k, m) in self.ymap.iter_mut().enumerate() {
                    *m = reflect(oy + k as i64, h) as u32;
                }
                self.acc.fill(0.0);
                for sym in 0..symmetries {
                    let input = self.engine.input_mut();
                    if input.len() != tile * tile {
                        return Err(RunError::BadOutput("input buffer busy"));
                    }
                    if sym == 0 {
                        for ty in 0..tile {
                            let row = frame.row(self.ymap[ty] as usize);
                            let dst = &mut input[ty * tile..(ty + 1) * tile];
                            for (d, &sx) in dst.iter_mut().zip(&self.xmap) {
                                *d = self.lut[row[sx as usize] as usize];
                            }
                        }
                    } else {
                        for ty in 0..tile {
                            for tx in 0..tile {
                                let (a, b) = symmetry_source(sym, tile, ty, tx);
                                let v = frame.row(self.ymap[a] as usize)[self.xmap[b] as usize];
                                input[ty * tile + tx] = self.lut[v as usize];
                            }
                        }
                    }
                    let (engine, buf) = (&mut self.engine, &mut self.out);
                    let t0 = std::time::Instant::now();
                    scoped(Scope::Tract, || engine.run(buf))?;
                    out.inference_us += t0.elapsed().as_micros() as u64;
                    out.runs += 1;
                    let map = &self.out[self.map_at..self.map_at + cells * cells];
                    for i in 0..cells {
                        for j in 0..cells {
                            let (a, b) = symmetry_source(sym, cells, i, j);
                            self.acc[a * cells + b] += map[i * cells + j];
                        }
                    }
                    if let Some(d) = self.decision_at {
                        self.acc[cells * cells] += self.out[d];
                    }
                }
                let inv = 1.0 / symmetries as f32;
                for v in self.acc.iter_mut() {
                    *v *= inv;
                }
                out.tiles += 1;
                if self.decision_at.is_some() {
                    decision = decision.max(self.acc[cells * cells]);
                }
                self.stitch(ox, oy);
            }
        }
        let mut max = 0.0f32;
        for (p, &c) in self.prob.iter_mut().zip(&self.count) {
            *p /= c.max(1) as f32;
            max = max.max(*p);
        }
        out.map_max = max;
        out.decision = self.decision_at.map(|_| decision);
        Ok(out)
    }

    fn stitch(&mut self, ox: i64, oy: i64) {
        let (w, h) = (self.width as i64, self.height as i64);
        let tile = self.section.tile as i64;
        let cells = self.cells;
        let map = &self.acc[..cells * cells];
        let (x0, x1) = (ox.max(0), (ox + tile).min(w));
        let (y0, y1) = (oy.max(0), (oy + tile).min(h));
        for fy in y0..y1 {
            let (i0, i1, fyf) = self.axis[(fy - oy) as usize];
            let r0 = &map[i0 as usize * cells..(i0 as usize + 1) * cells];
            let r1 = &map[i1 as usize * cells..(i1 as usize + 1) * cells];
            let base = fy as usize * self.width;
            let prow = &mut self.prob[base + x0 as usize..base + x1 as usize];
            let crow = &mut self.count[base + x0 as usize..base + x1 as usize];
            for (k, (p, c)) in prow.iter_mut().zip(crow.iter_mut()).enumerate() {
                let (j0, j1, fxf) = self.axis[(x0 + k as i64 - ox) as usize];
                let top = r0[j0 as usize] + (r0[j1 as usize] - r0[j0 as usize]) * fxf;
                let bottom = r1[j0 as usize] + (r1[j1 as usize] - r1[j0 as usize]) * fxf;
                *p += top + (bottom - top) * fyf;
                *c = c.saturating_add(1);
            }
        }
    }

    /// Replace the map by its box mean over `(2r+1)²` pixels (anomaly scores), using the
    /// label buffer as scratch; returns the new maximum.
    pub fn blur(&mut self, r: usize) -> f32 {
        self.box_mean(r, true)
    }

    /// The maximum of the map's box mean over `(2r+1)²` pixels, leaving the map as it is
    /// (the label buffer is scratch). Never above the map's own maximum.
    pub fn blurred_max(&mut self, r: usize) -> f32 {
        self.box_mean(r, false)
    }

    fn box_mean(&mut self, r: usize, write_back: bool) -> f32 {
        let (w, h) = (self.width, self.height);
        if r == 0 || w == 0 {
            return self.prob.iter().copied().fold(0.0, f32::max);
        }
        // Horizontal pass into `labels` (as f32 bits), vertical pass back into `prob`.
        let tmp = &mut self.labels;
        for y in 0..h {
            let row = &self.prob[y * w..(y + 1) * w];
            let mut n = (r + 1).min(w);
            let mut sum: f32 = row[..n].iter().sum();
            for x in 0..w {
                tmp[y * w + x] = (sum / n as f32).to_bits();
                if x + r + 1 < w {
                    sum += row[x + r + 1];
                    n += 1;
                }
                if x >= r {
                    sum -= row[x - r];
                    n -= 1;
                }
            }
        }
        let mut max = 0.0f32;
        for x in 0..w {
            let mut sum = 0.0f32;
            let mut n = 0usize;
            for y in 0..(r + 1).min(h) {
                sum += f32::from_bits(tmp[y * w + x]);
                n += 1;
            }
            for y in 0..h {
                let v = sum / n as f32;
                if write_back {
                    self.prob[y * w + x] = v;
                }
                max = max.max(v);
                if y + r + 1 < h {
                    sum += f32::from_bits(tmp[(y + r + 1) * w + x]);
                    n += 1;
                }
                if y >= r {
                    sum -= f32::from_bits(tmp[(y - r) * w + x]);
                    n -= 1;
                }
            }
        }
        max
    }

    /// Regions of the last map at or above `threshold` (largest first).
    pub fn regions(&mut self, threshold: f32) -> (RegionSummary, &[crate::core::regions::Region]) {
        let s = self
            .finder
            .find(
                &self.prob,
                self.width,
                self.height,
                threshold,
                &mut self.labels,
                &mut self.parent,
            )
            .unwrap_or_default();
        (s, self.finder.regions())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_cover_with_overlap() {
        assert_eq!(tile_origins(500, 512, 64).as_slice(), &[-6]);
        assert_eq!(tile_origins(512, 512, 64).as_slice(), &[0]);
        let o = tile_origins(1254, 512, 64);
        assert_eq!(o.as_slice(), &[0, 371, 742]);
        for pair in o.windows(2) {
            assert!(pair[0] + 512 - pair[1] >= 64);
        }
        assert_eq!(*o.last().unwrap() + 512, 1254);
    }

    #[test]
    fn reflect_is_numpy_reflect() {
        let got: Vec<usize> = (-3..8).map(|i| reflect(i, 5)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect(-4, 1), 0);
    }
}
