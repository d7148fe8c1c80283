//! Integer convolution: the quantised models' `DequantizeLinear → Conv → QuantizeLinear`
//! triples run as one 8-bit × 8-bit → 32-bit operator instead of an f32 convolution between a
//! dequantise and a quantise.
//!
//! How it is reached: [`fuse_qdq_convs`] rewrites the ONNX graph before tract parses it, turning
//! each triple whose weights, scales and zero points are constants into one `FerroscopeQConv`
//! node (the inputs and attributes of ONNX's `QLinearConv`); [`onnx`] is tract's ONNX front end
//! with that node type registered. The node becomes [`QConv`], a tract operator whose weights
//! are packed once at load for the kernel this CPU runs.
//!
//! Guarantees:
//! - **Same arithmetic as the QDQ graph**: `y = saturate(round_half_even(acc · sx·sw[m]/sy) +
//!   zy)` with `acc` the exact 32-bit sum of `(x − zx)·w` plus the bias; padding contributes
//!   nothing (it holds the input's zero point). Only the rounding of ties in the f32 product can
//!   differ from an f32 convolution's, by one step of the output's scale.
//! - **Integer kernels on every architecture**: VNNI (`vpdpbusd`, 32 multiply-adds per
//!   instruction at 256 bits; AVX-512 VNNI or AVX-VNNI) on x86-64 where the CPU has it; `SDOT` (16 per instruction)
//!   on aarch64 cores with the dot-product extension (Cortex-A55/A76/A78); a portable kernel
//!   that the compiler vectorises (SMLAL/`pmaddwd`) everywhere else (Cortex-A72, armv7).
//!   The choice is made once, at load, and named by [`QConv::kernel`].
//! - **No allocation per run but the output**: the transposed input and the im2col block are
//!   scratch buffers kept in the operator's state, sized at the first run.
//! - Only what it can run exactly is rewritten (2-D, u8 activations with one scale, i8 weights
//!   with zero zero points, constant scales); everything else stays as the file has it.
//!
//! This file is the operator from wiring to requantisation (a little over 600 lines): the im2col
//! block and the tile loop share one buffer contract (`RUN_SLACK`, rows filled in order), so
//! they stay together; the graph rewrite is in `fuse.rs`, the kernels in `kernels.rs`.

use anyhow::{Context, Result};
use tract_onnx::pb::{ModelProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

mod fuse;
mod kernels;

pub use fuse::fuse_qdq_convs;
use kernels::tile_portable;

/// The node type [`fuse_qdq_convs`] writes and [`onnx`] registers.
pub const FUSED_OP: &str = "FerroscopeQConv";

/// Bytes of the reduction (channels × kernel taps) per step of every kernel: K is padded to a
/// multiple of it with zero weights, so no kernel needs a tail loop.
const K_STEP: usize = 16;
/// Output channels per kernel tile (padded with zero weights).
const M_TILE: usize = 8;
/// Output pixels per kernel tile.
const P_TILE: usize = 4;
/// Output pixels per im2col block: 64 rows of at most a few KiB stay in L1/L2 while the tile
/// loops reuse them for every output channel.
const P_BLOCK: usize = 64;

/// tract's ONNX front end with [`FUSED_OP`] registered.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register.insert(FUSED_OP, build_fused);
    onnx
}

/// Read an ONNX model and fuse its quantised convolutions (see the module doc). Returns the
/// rewritten model and how many convolutions were fused.
///
/// The convolutions are fused only where [`fused_on_this_cpu`] says so; elsewhere the model is
/// returned as read and tract runs it as before.
pub fn read_fused(bytes: &[u8]) -> Result<(ModelProto, usize)> {
    let mut proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .context("not a readable ONNX model")?;
    if !fused_on_this_cpu() {
        return Ok((proto, 0));
    }
    let fused = fuse_qdq_convs(&mut proto)?;
    Ok((proto, fused))
}

/// Whether this CPU runs the quantised convolutions as [`QConv`]: where it has a dot-product
/// kernel (x86-64 VNNI, aarch64 `SDOT`), or where `FERROSCOPE_PORTABLE_KERNEL` asks for the
/// portable kernel. The portable kernel retires more instructions than tract's f32 kernels on
/// the ARM cores without the dot product (`tests/arm_cost.sh`), so there the QDQ graph stays
/// as the file has it.
pub fn fused_on_this_cpu() -> bool {
    Kernel::detect() != Kernel::Portable || std::env::var_os("FERROSCOPE_PORTABLE_KERNEL").is_some()
}

/// Geometry of a 2-D convolution.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Geometry {
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    /// top, left, bottom, right
    pads: [usize; 4],
    group: usize,
}

impl Geometry {
    fn output_hw(&self, h: usize, w: usize) -> TractResult<[usize; 2]> {
        let mut out = [0; 2];
        for (a, size) in [h, w].into_iter().enumerate() {
            let span = self.dilations[a] * (self.kernel[a] - 1) + 1;
            let padded = size + self.pads[a] + self.pads[a + 2];
            if padded < span {
                bail!("{FUSED_OP}: input {h}x{w} smaller than the kernel");
            }
            out[a] = (padded - span) / self.strides[a] + 1;
        }
        Ok(out)
    }
}

fn build_fused(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let two = |name: &str, default: usize| -> TractResult<[usize; 2]> {
        Ok(match node.get_attr_opt_tvec::<usize>(name)? {
            Some(v) if v.len() == 2 => [v[0], v[1]],
            Some(v) => bail!("{FUSED_OP} {}: attribute {name} has {} values", node.name, v.len()),
            None => [default, default],
        })
    };
    let kernel = two("kernel_shape", 0)?;
    let pads = match node.get_attr_opt_tvec::<usize>("pads")? {
        Some(v) if v.len() == 4 => [v[0], v[1], v[2], v[3]],
        Some(v) => bail!("{FUSED_OP} {}: attribute pads has {} values", node.name, v.len()),
        None => [0; 4],
    };
    let geometry = Geometry {
        kernel,
        strides: two("strides", 1)?,
        dilations: two("dilations", 1)?,
        pads,
        group: node.get_attr_opt::<i64>("group")?.unwrap_or(1) as usize,
    };
    Ok((
        expand(FusedExpansion {
            geometry,
            has_bias: node.input.len() == 9,
        }),
        vec![],
    ))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct FusedExpansion {
    geometry: Geometry,
    has_bias: bool,
}

fn konst(model: &TypedModel, outlet: OutletId, what: &str) -> TractResult<Arc<Tensor>> {
    model
        .outlet_fact(outlet)?
        .konst
        .clone()
        .with_context(|| format!("{FUSED_OP}: {what} must be a constant"))
}

impl Expansion for FusedExpansion {
    fn name(&self) -> StaticName {
        FUSED_OP.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 8 + self.has_bias as usize)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, u8::datum_type())?;
        s.equals(&outputs[0].datum_type, u8::datum_type())?;
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &inputs[3].shape[0])?;
        let g = self.geometry.clone();
        s.given_2(&inputs[0].shape[2], &inputs[0].shape[3], move |s, h, w| {
            if let (Ok(h), Ok(w)) = (h.to_usize(), w.to_usize()) {
                let [oh, ow] = g.output_hw(h, w)?;
                s.equals(&outputs[0].shape[2], oh.to_dim())?;
                s.equals(&outputs[0].shape[3], ow.to_dim())?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let f32s = |t: &Tensor| -> TractResult<Vec<f32>> {
            Ok(t.cast_to::<f32>()?.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        };
        let sx = f32s(&*konst(model, inputs[1], "x_scale")?)?;
        let zx = konst(model, inputs[2], "x_zero_point")?;
        let w = konst(model, inputs[3], "w")?;
        let sw = f32s(&*konst(model, inputs[4], "w_scale")?)?;
        let sy = f32s(&*konst(model, inputs[6], "y_scale")?)?;
        let zy = konst(model, inputs[7], "y_zero_point")?;
        let bias = if self.has_bias {
            let b = konst(model, inputs[8], "bias")?;
            Some(b.cast_to::<i32>()?.try_as_plain_ram()?.as_slice::<i32>()?.to_vec())
        } else {
            None
        };
        let zx = zx.try_as_plain_ram()?.as_slice::<u8>()?[0];
        let zy = zy.try_as_plain_ram()?.as_slice::<u8>()?[0];
        let wshape = w.shape().to_vec();
        let w = w.try_as_plain_ram()?.as_slice::<i8>()?.to_vec();
        let c_in = model.outlet_fact(inputs[0])?.shape[1].to_usize()?;
        let op = QConv::new(
            self.geometry.clone(),
            c_in,
            &wshape,
            &w,
            sx[0],
            zx,
            &sw,
            sy[0],
            zy,
            bias.as_deref(),
        )?;
        model.wire_node(prefix, op, &[inputs[0]])
    }
}

/// The data each kernel reads: the bytes of the input as unsigned (x86-64) or with the sign
/// bit flipped to signed (ARM's `SDOT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// AVX-512 VNNI, `vpdpbusd` on 256-bit registers: u8 × i8.
    X86Vnni,
    /// AVX-VNNI, the same `vpdpbusd` in its VEX encoding (cores without AVX-512 VNNI).
    X86AvxVnni,
    /// aarch64 `SDOT` by element: i8 × i8.
    ArmDot,
    /// Portable, vectorised by the compiler; u8 × i8 on x86-64, i8 × i8 elsewhere.
    Portable,
}

impl Kernel {
    fn detect() -> Kernel {
        if std::env::var_os("FERROSCOPE_PORTABLE_KERNEL").is_some() {
            return Kernel::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl") {
                return Kernel::X86Vnni;
            }
            if std::arch::is_x86_feature_detected!("avxvnni") {
                return Kernel::X86AvxVnni;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                return Kernel::ArmDot;
            }
        }
        Kernel::Portable
    }

    /// The input bytes are signed (sign bit flipped) for this kernel.
    fn signed_input(self) -> bool {
        match self {
            Kernel::X86Vnni | Kernel::X86AvxVnni => false,
            Kernel::ArmDot => true,
            Kernel::Portable => !cfg!(target_arch = "x86_64"),
        }
    }
}

/// One fused quantised convolution (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct QConv {
    geometry: Geometry,
    c_in: usize,
    m_out: usize,
    /// K = kernel taps × input channels per group, padded to [`K_STEP`].
    kp: usize,
    /// Output channels per group, padded to 4 (one `SDOT` register of channels).
    mgp: usize,
    kernel: Kernel,
    /// Weights per group, per padded output channel: `kp` bytes in (ky, kx, c) order.
    w_rows: Vec<i8>,
    /// The same weights as `SDOT` reads them: per group, per 4 output channels, per 4 k,
    /// 16 bytes (channel-major).
    w_dot: Vec<i8>,
    /// Bias with the zero points folded in, per padded output channel.
    bias: Vec<i32>,
    /// sx·sw/sy per padded output channel.
    mult: Vec<f32>,
    zy: u8,
    /// The byte that stands for zero input in the kernel's domain (padding).
    pad_byte: u8,
}

impl Eq for QConv {}

impl QConv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        geometry: Geometry,
        c_in: usize,
        wshape: &[usize],
        w: &[i8],
        sx: f32,
        zx: u8,
        sw: &[f32],
        sy: f32,
        zy: u8,
        bias: Option<&[i32]>,
    ) -> TractResult<QConv> {
        let kernel = Kernel::detect();
        let [m_out, cg, kh, kw] = [wshape[0], wshape[1], wshape[2], wshape[3]];
        let group = geometry.group;
        if group == 0 || c_in != cg * group || m_out % group != 0 || [kh, kw] != geometry.kernel {
            bail!("{FUSED_OP}: weights {wshape:?} do not fit {c_in} input channels in {group} groups");
        }
        let k = kh * kw * cg;
        let kp = k.div_ceil(K_STEP) * K_STEP;
        let mg = m_out / group;
        let mgp = mg.div_ceil(4) * 4;
        let signed = kernel.signed_input();
        let mut w_rows = vec![0i8; group * mgp * kp];
        let mut bias_f = vec![0i32; group * mgp];
        let mut mult = vec![0f32; group * mgp];
        for g in 0..group {
            for j in 0..mg {
                let m = g * mg + j;
                let row = &mut w_rows[(g * mgp + j) * kp..][..kp];
                let mut sum = 0i32;
                for c in 0..cg {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let v = w[((m * cg + c) * kh + ky) * kw + kx];
                            row[(ky * kw + kx) * cg + c] = v;
                            sum += v as i32;
                        }
                    }
                }
                let b = bias.map(|b| b[m]).unwrap_or(0);
                // acc_true = Σ w·(x − zx) + b; the kernel sums w·x (unsigned) or w·(x − 128).
                bias_f[g * mgp + j] = if signed {
                    b + (128 - zx as i32) * sum
                } else {
                    b - zx as i32 * sum
                };
                let s = if sw.len() == 1 { sw[0] } else { sw[m] };
                mult[g * mgp + j] = (sx as f64 * s as f64 / sy as f64) as f32;
            }
        }
        let mut w_dot = vec![0i8; if kernel == Kernel::ArmDot { w_rows.len() } else { 0 }];
        if kernel == Kernel::ArmDot {
            // [g][m/4][k/4][4 m][4 k]
            for g in 0..group {
                for mq in 0..mgp / 4 {
                    for kq in 0..kp / 4 {
                        for mi in 0..4 {
                            for ki in 0..4 {
                                let src = w_rows[(g * mgp + mq * 4 + mi) * kp + kq * 4 + ki];
                                w_dot[((g * (mgp / 4) + mq) * (kp / 4) + kq) * 16 + mi * 4 + ki] = src;
                            }
                        }
                    }
                }
            }
        }
        Ok(QConv {
            geometry,
            c_in,
            m_out,
            kp,
            mgp,
            kernel,
            w_rows,
            w_dot,
            bias: bias_f,
            mult,
            zy,
            pad_byte: if signed { zx ^ 0x80 } else { zx },
        })
    }

    /// The kernel this CPU runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    fn cg(&self) -> usize {
        self.c_in / self.geometry.group
    }

    fn run(&self, scratch: &mut Scratch, x: &[u8], n: usize, h: usize, w: usize, y: &mut [u8]) -> TractResult<()> {
        let g = &self.geometry;
        let [oh, ow] = g.output_hw(h, w)?;
        let (cg, group, mg) = (self.cg(), g.group, self.m_out / g.group);
        let [kh, kw] = g.kernel;
        let pixels = oh * ow;
        let signed = self.kernel.signed_input();
        // RUN_SLACK bytes past the end let `copy_run` move short runs 16 bytes at a time.
        scratch.hwc.resize(h * w * cg + RUN_SLACK, 0);
        scratch.cols.resize(P_BLOCK * self.kp + RUN_SLACK, 0);
        for b in 0..n {
            for gi in 0..group {
                // The group's input, channels last, in the kernel's domain.
                let xg = &x[(b * self.c_in + gi * cg) * h * w..][..cg * h * w];
                let flip = if signed { 0x80 } else { 0 };
                if cg == 1 {
                    for (d, s) in scratch.hwc.iter_mut().zip(xg) {
                        *d = s ^ flip;
                    }
                } else {
                    for c in 0..cg {
                        let plane = &xg[c * h * w..][..h * w];
                        for (i, &v) in plane.iter().enumerate() {
                            scratch.hwc[i * cg + c] = v ^ flip;
                        }
                    }
                }
                let mut p0 = 0;
                while p0 < pixels {
                    let np = P_BLOCK.min(pixels - p0);
                    // im2col: one row of kp bytes per output pixel, (ky, kx, c) order.
                    for pi in 0..np {
                        let p = p0 + pi;
                        let (oy, ox) = (p / ow, p % ow);
                        let row0 = pi * self.kp;
                        for ky in 0..kh {
                            let iy = (oy * g.strides[0] + ky * g.dilations[0]) as isize - g.pads[0] as isize;
                            if g.dilations[1] == 1 {
                                // The taps of one kernel row are kw·cg contiguous bytes.
                                let at = row0 + ky * kw * cg;
                                if iy < 0 || iy >= h as isize {
                                    scratch.cols[at..at + kw * cg].fill(self.pad_byte);
                                    continue;
                                }
                                let ix0 = (ox * g.strides[1]) as isize - g.pads[1] as isize;
                                let lo = (-ix0).clamp(0, kw as isize) as usize;
                                let hi = (w as isize - ix0).clamp(lo as isize, kw as isize) as usize;
                                if hi > lo {
                                    let from = (iy as usize * w + (ix0 + lo as isize) as usize) * cg;
                                    copy_run(&mut scratch.cols, at + lo * cg, &scratch.hwc, from, (hi - lo) * cg);
                                }
                                scratch.cols[at + hi * cg..at + kw * cg].fill(self.pad_byte);
                                scratch.cols[at..at + lo * cg].fill(self.pad_byte);
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * g.strides[1] + kx * g.dilations[1]) as isize - g.pads[1] as isize;
                                let at = row0 + (ky * kw + kx) * cg;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    scratch.cols[at..at + cg].fill(self.pad_byte);
                                } else {
                                    let from = (iy as usize * w + ix as usize) * cg;
                                    copy_run(&mut scratch.cols, at, &scratch.hwc, from, cg);
                                }
                            }
                        }
                        scratch.cols[row0 + kh * kw * cg..row0 + self.kp].fill(0);
                    }
                    for pi in np..np.div_ceil(P_TILE) * P_TILE {
                        scratch.cols[pi * self.kp..][..self.kp].fill(0);
                    }
                    let yg = &mut y[(b * self.m_out + gi * mg) * pixels..][..mg * pixels];
                    self.block(gi, &scratch.cols, np, p0, pixels, mg, yg);
                    p0 += np;
                }
            }
        }
        Ok(())
    }

    /// The tiles of one im2col block: `np` pixels starting at pixel `p0` of the output plane.
    #[allow(clippy::too_many_arguments)]
    fn block(&self, gi: usize, cols: &[u8], np: usize, p0: usize, pixels: usize, mg: usize, yg: &mut [u8]) {
        let kp = self.kp;
        let mut acc = [[0i32; P_TILE]; M_TILE];
        for mt in 0..self.mgp.div_ceil(M_TILE) {
            let mrow = gi * self.mgp + mt * M_TILE;
            let rows = M_TILE.min(self.mgp - mt * M_TILE);
            for pt in 0..np.div_ceil(P_TILE) {
                let b = &cols[pt * P_TILE * kp..][..P_TILE * kp];
                match self.kernel {
                    #[cfg(target_arch = "x86_64")]
                    Kernel::X86Vnni => unsafe {
                        kernels::x86::tile_vnni(&self.w_rows[mrow * kp..][..rows * kp], b, kp, rows, &mut acc)
                    },
                    #[cfg(target_arch = "x86_64")]
                    Kernel::X86AvxVnni => unsafe {
                        kernels::x86::tile_avx_vnni(&self.w_rows[mrow * kp..][..rows * kp], b, kp, rows, &mut acc)
                    },
                    #[cfg(target_arch = "aarch64")]
                    Kernel::ArmDot => unsafe {
                        kernels::arm::tile_sdot(&self.w_dot[mrow * kp..][..rows * kp], b, kp, rows / 4, &mut acc)
                    },
                    _ => {
                        if self.kernel.signed_input() {
                            tile_portable::<i8>(&self.w_rows[mrow * kp..][..rows * kp], b, kp, rows, &mut acc)
                        } else {
                            tile_portable::<u8>(&self.w_rows[mrow * kp..][..rows * kp], b, kp, rows, &mut acc)
                        }
                    }
                }
                // Requantise and store: channel-major, the tile's pixels contiguous.
                let first = pt * P_TILE;
                let count = P_TILE.min(np - first);
                for (mi, row) in acc.iter().enumerate().take(rows) {
                    let j = mt * M_TILE + mi;
                    if j >= mg {
                        break;
                    }
                    let (bias, mult) = (self.bias[mrow + mi], self.mult[mrow + mi]);
                    // A fixed four lanes, so the compiler requantises them as one vector.
                    let q: [u8; P_TILE] = core::array::from_fn(|p| requantise(row[p] + bias, mult, self.zy));
                    yg[j * pixels + p0 + first..][..count].copy_from_slice(&q[..count]);
                }
            }
        }
    }
}

/// Bytes of slack after the scratch buffers for [`copy_run`]'s 16-byte moves.
const RUN_SLACK: usize = 16;

/// Copy `n` bytes from `src[from..]` to `dst[at..]`. Runs of at most 16 bytes move as one
/// 16-byte load and store (a kernel row of a thin input is a few bytes; a call to `memcpy`
/// would cost more than the move); the bytes written past the run are rewritten by the
/// caller, which fills im2col rows in increasing order and its padding after the runs.
#[inline(always)]
fn copy_run(dst: &mut [u8], at: usize, src: &[u8], from: usize, n: usize) {
    if n <= 16 && at + 16 <= dst.len() && from + 16 <= src.len() {
        // SAFETY: both ranges are in bounds (checked just above) and the buffers are distinct.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(from), dst.as_mut_ptr().add(at), 16) };
    } else {
        dst[at..at + n].copy_from_slice(&src[from..from + n]);
    }
}

/// `saturate(round_half_even(acc · mult) + zy)`, rounding by the f32 magic number (exact
/// ties-to-even for |v| < 2^22, and vectorisable without SSE4.1).
#[inline(always)]
fn requantise(acc: i32, mult: f32, zy: u8) -> u8 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    let v = acc as f32 * mult;
    let v = v.clamp(-1.0e6, 1.0e6);
    let r = (v + MAGIC) - MAGIC;
    (r + zy as f32).clamp(0.0, 255.0) as u8
}

/// Scratch kept between runs: the channels-last input and one im2col block.
#[derive(Debug, Clone, Default)]
struct Scratch {
    hwc: Vec<u8>,
    cols: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct QConvState {
    scratch: Scratch,
}

impl OpState for QConvState {
    fn eval(&mut self, _ctx: &EvalContext, op: &dyn Op, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let op = op
            .downcast_ref::<QConv>()
            .context("QConvState paired with another op")?;
        op.eval_with(&mut self.scratch, inputs)
    }

    fn reset_lanes(&mut self, _lanes: &[LaneId]) -> TractResult<()> {
        Ok(())
    }
}

impl QConv {
    fn eval_with(&self, scratch: &mut Scratch, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let shape = x.shape();
        if shape.len() != 4 || shape[1] != self.c_in {
            bail!("{FUSED_OP}: input shape {shape:?}, expected [n, {}, h, w]", self.c_in);
        }
        let (n, h, w) = (shape[0], shape[2], shape[3]);
        let [oh, ow] = self.geometry.output_hw(h, w)?;
        let mut y = unsafe { Tensor::uninitialized::<u8>(&[n, self.m_out, oh, ow])? };
        {
            let xs = x.try_as_plain_ram()?;
            let xs = xs.as_slice::<u8>()?;
            let mut ys = y.try_as_plain_ram_mut()?;
            let ys = ys.as_slice_mut::<u8>()?;
            self.run(scratch, xs, n, h, w, ys)?;
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl Op for QConv {
    fn name(&self) -> StaticName {
        "QConvInt8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "kernel {:?}, {}x{} taps, {} → {} channels, group {}, strides {:?}, dilations {:?}",
            self.kernel,
            self.geometry.kernel[0],
            self.geometry.kernel[1],
            self.c_in,
            self.m_out,
            self.geometry.group,
            self.geometry.strides,
            self.geometry.dilations
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QConv {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.eval_with(&mut Scratch::default(), inputs)
    }

    op_out_of_plan!();

    fn state(&self, _ctx: &EvalContext) -> TractResult<Option<Box<dyn OpState>>> {
        Ok(Some(Box::new(QConvState::default())))
    }
}

impl TypedOp for QConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = &inputs[0].shape;
        if s.rank() != 4 {
            bail!("{FUSED_OP}: input of rank {}", s.rank());
        }
        let (h, w) = (s[2].to_usize()?, s[3].to_usize()?);
        let [oh, ow] = self.geometry.output_hw(h, w)?;
        Ok(tvec!(u8::fact([s[0].to_usize()?, self.m_out, oh, ow])))
    }

    as_op!();
}
