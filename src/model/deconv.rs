//! The decoder's upsampling on quantised maps: a 2×2, stride-2 transposed convolution of a
//! dequantised u8 map, computed straight from the bytes and written quantised into the
//! concatenation that follows it ([`super::u8ops::QuantiseConcat`]).
//!
//! tract runs such a `DequantizeLinear → ConvTranspose` as five steps: dequantise the whole map
//! to f32, reshape, pack it for its matrix kernel, multiply (`[C_out·4, C_in] × [C_in, H·W]`),
//! then scatter the four taps of every product into the doubled map and add the bias; the
//! concatenation then reads that f32 map back to quantise it. On the grains model these steps
//! took a third of the inference time on x86-64, most of it moving f32 maps, not multiplying.
//! [`DeconvU8`] does it in one pass over the input: 16 pixels of one row dequantised (a 256-entry
//! table), their products with every output channel's four taps summed in registers, each
//! output row written once, as bytes.
//!
//! Guarantees:
//! - **tract's f32 arithmetic in tract's order**: each tap is `Σ_ci w·DQ(x)` accumulated from
//!   zero over the input channels in order, with fused multiply-adds where tract's matrix
//!   kernels use them (x86-64 with FMA, aarch64) and a multiply then an add elsewhere, then the
//!   bias is added and the sum quantised by `quant::quantise` (bit for bit tract's
//!   `QuantizeLinearU8`). The unit test compares with tract's own operators; where tract's
//!   kernel sums in another order a byte may differ by one step.
//! - **tract's dequantisation**: by the table tract's `DequantizeLinearF32` computes at load,
//!   or on aarch64 by its formula `(b − zero_point)·scale` in NEON where every entry of the
//!   table is that formula to the bit (checked at load).
//! - **No allocation per run**: the dequantised pixels live on the stack
//!   ([`MAX_INPUT_CHANNELS`] × [`LANES`]).
//! - Only what it runs as described is rewritten ([`DeconvU8::from_node`]): 2-D NCHW, group 1,
//!   kernel 2×2 at stride 2 with no padding, dilation or output adjustment, constant f32
//!   weights and bias, a u8 input through `DequantizeLinear` with a positive finite scale; and
//!   not on 32-bit ARM, where tract's NEON kernels retire fewer instructions.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Deconv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::ops::quant::DequantizeLinearF32;
use tract_onnx::tract_hir::internal::*;

use super::qconv::as_array_mut;

/// Input channels at most: the dequantised pixels of one block are
/// `MAX_INPUT_CHANNELS × LANES` f32 on the stack (16 KiB); the grains decoder has 48.
pub const MAX_INPUT_CHANNELS: usize = 256;
/// Input pixels per block: one 512-bit register (two 256-bit ones) of f32 per tap.
pub const LANES: usize = 16;

/// One 2×2, stride-2 transposed convolution of a dequantised u8 map (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct DeconvU8 {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Weights by output channel, input channel, tap (`ky·2 + kx`).
    weights: Vec<f32>,
    /// One per output channel.
    bias: Vec<f32>,
    /// `DQ(b)` for every byte, computed at load by tract's `DequantizeLinearF32`.
    dq: Box<[f32; 256]>,
    /// `(scale, zero_point)` where every entry of `dq` is `(b − zero_point)·scale` in f32 to
    /// the bit (checked at load).
    dq_formula: Option<(f32, i32)>,
}

impl DeconvU8 {
    /// Build from the parts of the graph: `dq` the dequantise of the u8 input, `kernel` the
    /// weights in tract's OIHW (`[C_out, C_in, 2, 2]`), `bias` one value or one per output
    /// channel.
    pub fn new(dq: &DequantizeLinearF32, kernel: &Tensor, bias: &Tensor) -> TractResult<DeconvU8> {
        let [c_out, c_in, 2, 2] = *kernel.shape() else {
            bail!(
                "DeconvU8: kernel of shape {:?}, expected [C_out, C_in, 2, 2]",
                kernel.shape()
            );
        };
        ensure!(
            (1..=MAX_INPUT_CHANNELS).contains(&c_in),
            "DeconvU8: {c_in} input channels"
        );
        let k = kernel.cast_to::<f32>()?;
        let k = k.try_as_plain_ram()?;
        let k = k.as_slice::<f32>()?;
        // tract's OIHW is already by output channel, input channel, tap
        let weights = k.to_vec();
        let b = bias.cast_to::<f32>()?;
        let b = b.try_as_plain_ram()?;
        let b = b.as_slice::<f32>()?;
        let bias = match b.len() {
            1 => vec![b[0]; c_out],
            n if n == c_out => b.to_vec(),
            n => bail!("DeconvU8: {n} bias values for {c_out} output channels"),
        };
        // DQ of every byte by tract's own operator
        let all: Vec<u8> = (0..=255u8).collect();
        let f = dq
            .eval_out_of_plan(tvec!(Tensor::from_shape(&[256], &all)?.into_tvalue()))?
            .context("DequantizeLinearF32 gave no output")?
            .remove(0);
        let mut table = Box::new([0.0f32; 256]);
        table.copy_from_slice(f.try_as_plain_ram()?.as_slice::<f32>()?);
        // The table as arithmetic, where every entry is exactly `(b − zero_point)·scale` in f32
        // (tract's formula): then vector code computes the same bits without a lookup per byte.
        let formula = (0..256).all(|b| {
            let v = (b - dq.zero_point) as f32 * dq.scale;
            v.to_bits() == table[b as usize].to_bits()
        });
        Ok(DeconvU8 {
            c_in,
            c_out,
            weights,
            bias,
            dq: table,
            dq_formula: formula.then_some((dq.scale, dq.zero_point)),
        })
    }

    /// The rewrite's test of a `Deconv` node: `Some(operator)` when it is one this module runs
    /// (see the module doc) given its input's dequantise `dq`.
    pub fn from_node(model: &TypedModel, node: &TypedNode, dq: &DequantizeLinearF32) -> Option<DeconvU8> {
        // Not on 32-bit ARM: built without NEON there, its loop retired 316 M instructions per
        // grains inference on a Cortex-A8 against 246 M with tract's NEON f32 kernels
        // (`tests/arm_cost.sh`).
        if cfg!(target_arch = "arm") {
            return None;
        }
        let op = node.op_as::<Deconv>()?;
        let spec = &op.pool_spec;
        let plain = op.group == 1
            && op.kernel_format == KernelFormat::OIHW
            && spec.data_format == DataFormat::NCHW
            && spec.kernel_shape.as_slice() == [2, 2]
            && spec.strides().as_ref() == [2, 2]
            && spec.dilations().as_ref() == [1, 1]
            && (0..2).all(|ax| spec.padding.valid_dim(ax, false))
            && op.adjustments.iter().all(|&a| a == 0)
            && node.inputs.len() == 3;
        if !plain {
            return None;
        }
        let kernel = model.outlet_fact(node.inputs[1]).ok()?.konst.clone()?;
        let bias = model.outlet_fact(node.inputs[2]).ok()?.konst.clone()?;
        if kernel.datum_type() != f32::datum_type() || bias.datum_type() != f32::datum_type() {
            return None;
        }
        let input = model.outlet_fact(node.inputs[0]).ok()?.shape.as_concrete()?.to_vec();
        let op = DeconvU8::new(dq, &kernel, &bias).ok()?;
        (input.len() == 4 && input[1] == op.c_in).then_some(op)
    }

    /// The output shape for an input of `shape` (`[N, C_in, H, W]`).
    pub fn output_shape(&self, shape: &[usize]) -> TractResult<TVec<usize>> {
        match *shape {
            [n, c, h, w] if c == self.c_in => Ok(tvec![n, self.c_out, 2 * h, 2 * w]),
            _ => bail!("DeconvU8: input of shape {shape:?}, expected [N, {}, H, W]", self.c_in),
        }
    }

    /// Compute the transposed convolution of one image `x` (`C_in` planes of `h`×`w` bytes) and
    /// quantise it into `y` (`C_out` planes of `2h`×`2w`) with tract's `QuantizeLinearU8`
    /// (`scale` the reciprocal of the ONNX scale).
    pub fn run(&self, x: &[u8], h: usize, w: usize, y: &mut [u8], scale: f32, zero_point: u8) {
        debug_assert_eq!(x.len(), self.c_in * h * w);
        debug_assert_eq!(y.len(), self.c_out * 4 * h * w);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
                self.run_with(x, h, w, y, |wc, px, bias, rows| {
                    // SAFETY: the features were just detected.
                    unsafe { block_fma(wc, px, bias, scale, zero_point, rows) }
                });
                return;
            }
        }
        #[cfg(target_arch = "aarch64")]
        self.run_with(x, h, w, y, |wc, px, bias, rows| {
            // SAFETY: NEON is part of aarch64.
            unsafe { block_neon(wc, px, bias, scale, zero_point, rows) }
        });
        #[cfg(not(target_arch = "aarch64"))]
        self.run_with(x, h, w, y, |wc, px, bias, rows| {
            let acc = taps_portable(wc, px);
            let mut row = [0.0f32; 2 * LANES];
            for (ky, out) in rows.iter_mut().enumerate() {
                for (l, pair) in row.chunks_exact_mut(2).enumerate() {
                    pair[0] = acc[ky * 2][l] + bias;
                    pair[1] = acc[ky * 2 + 1][l] + bias;
                }
                super::quant::quantise(&row, out, scale, zero_point);
            }
        });
    }

    /// The loop around `block`, which gives one output channel's two output rows over 16 input
    /// pixels (32 output pixels each), quantised. The input is taken 16 pixels at a time in
    /// the order of its plane, across the ends of its rows (a row whose width is not a multiple
    /// of 16 computes no lanes past its end), and each block's output is cut at those ends.
    #[inline(always)]
    fn run_with(
        &self,
        x: &[u8],
        h: usize,
        w: usize,
        y: &mut [u8],
        block: impl Fn(&[f32], &[[f32; LANES]], f32, &mut [[u8; 2 * LANES]; 2]),
    ) {
        let (c_in, plane, ow) = (self.c_in, h * w, 2 * w);
        let mut pixels = [[0.0f32; LANES]; MAX_INPUT_CHANNELS];
        let mut rows = [[0u8; 2 * LANES]; 2];
        for i0 in (0..plane).step_by(LANES) {
            let n = LANES.min(plane - i0);
            for (ci, px) in pixels[..c_in].iter_mut().enumerate() {
                self.dequantise(&x[ci * plane + i0..][..n], px);
            }
            for co in 0..self.c_out {
                block(
                    &self.weights[co * 4 * c_in..][..4 * c_in],
                    &pixels[..c_in],
                    self.bias[co],
                    &mut rows,
                );
                let yc = &mut y[co * 4 * plane..][..4 * plane];
                let (mut iy, mut ix, mut l) = (i0 / w, i0 % w, 0);
                while l < n {
                    // the lanes l.. that fall in input row iy, from column ix
                    let k = (n - l).min(w - ix);
                    for (ky, row) in rows.iter().enumerate() {
                        let at = (2 * iy + ky) * ow + 2 * ix;
                        if k == LANES {
                            *as_array_mut::<{ 2 * LANES }>(yc, at) = *row;
                        } else {
                            yc[at..at + 2 * k].copy_from_slice(&row[2 * l..2 * (l + k)]);
                        }
                    }
                    (iy, ix, l) = (iy + 1, 0, l + k);
                }
            }
        }
    }

    /// The bytes `src` (at most [`LANES`]) dequantised into the first lanes of `px`: by the
    /// formula in NEON on aarch64 where it is the table to the bit, else by the table.
    #[inline(always)]
    fn dequantise(&self, src: &[u8], px: &mut [f32; LANES]) {
        #[cfg(target_arch = "aarch64")]
        if let (Some((scale, zero)), true) = (self.dq_formula, src.len() == LANES) {
            use std::arch::aarch64::*;
            // SAFETY: NEON is part of aarch64; 16 bytes read from `src` (its length), 16 f32
            // written to `px`.
            unsafe {
                let b = vld1q_u8(src.as_ptr());
                let (z, s) = (vdupq_n_s32(zero), vdupq_n_f32(scale));
                let lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(b)));
                let hi = vreinterpretq_s16_u16(vmovl_high_u8(b));
                let f = |v: int32x4_t| vmulq_f32(vcvtq_f32_s32(vsubq_s32(v, z)), s);
                let d = px.as_mut_ptr();
                vst1q_f32(d, f(vmovl_s16(vget_low_s16(lo))));
                vst1q_f32(d.add(4), f(vmovl_high_s16(lo)));
                vst1q_f32(d.add(8), f(vmovl_s16(vget_low_s16(hi))));
                vst1q_f32(d.add(12), f(vmovl_high_s16(hi)));
            }
            return;
        }
        for (p, &b) in px.iter_mut().zip(src) {
            *p = self.dq[b as usize];
        }
    }
}

/// One output channel's four taps over [`LANES`] pixels: `acc[tap][l] = Σ_ci w[ci][tap] ·
/// px[ci][l]`, from zero, input channels in order, a multiply then an add.
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
fn taps_portable(wc: &[f32], px: &[[f32; LANES]]) -> [[f32; LANES]; 4] {
    let mut acc = [[0.0f32; LANES]; 4];
    for (wt, p) in wc.chunks_exact(4).zip(px) {
        for (a, &wv) in acc.iter_mut().zip(wt) {
            for (s, &v) in a.iter_mut().zip(p) {
                *s += wv * v;
            }
        }
    }
    acc
}

/// One output channel's block on AVX2 with FMA: [`taps_portable`] with fused multiply-adds
/// (2 × 4 registers of 8 sums), then the bias, the taps interleaved into the two output rows and
/// quantised as `quant::quantise` does, 8 at a time.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_fma(
    wc: &[f32],
    px: &[[f32; LANES]],
    bias: f32,
    scale: f32,
    zero_point: u8,
    rows: &mut [[u8; 2 * LANES]; 2],
) {
    use std::arch::x86_64::*;
    assert!(wc.len() >= 4 * px.len());
    let (w, p) = (wc.as_ptr(), px.as_ptr() as *const f32);
    // eight named accumulators, so that they stay in registers
    let z = _mm256_setzero_ps();
    let (mut a0l, mut a0h, mut a1l, mut a1h, mut a2l, mut a2h, mut a3l, mut a3h) = (z, z, z, z, z, z, z, z);
    for ci in 0..px.len() {
        // SAFETY: `ci` < `px.len()`: 16 pixels at `p + 16·ci`, 4 weights at `w + 4·ci` (asserted).
        unsafe {
            let lo = _mm256_loadu_ps(p.add(LANES * ci));
            let hi = _mm256_loadu_ps(p.add(LANES * ci + 8));
            let w0 = _mm256_broadcast_ss(&*w.add(4 * ci));
            let w1 = _mm256_broadcast_ss(&*w.add(4 * ci + 1));
            let w2 = _mm256_broadcast_ss(&*w.add(4 * ci + 2));
            let w3 = _mm256_broadcast_ss(&*w.add(4 * ci + 3));
            a0l = _mm256_fmadd_ps(w0, lo, a0l);
            a0h = _mm256_fmadd_ps(w0, hi, a0h);
            a1l = _mm256_fmadd_ps(w1, lo, a1l);
            a1h = _mm256_fmadd_ps(w1, hi, a1h);
            a2l = _mm256_fmadd_ps(w2, lo, a2l);
            a2h = _mm256_fmadd_ps(w2, hi, a2h);
            a3l = _mm256_fmadd_ps(w3, lo, a3l);
            a3h = _mm256_fmadd_ps(w3, hi, a3h);
        }
    }
    let (b, s) = (_mm256_set1_ps(bias), _mm256_set1_ps(scale));
    let (lim_lo, lim_hi) = (_mm256_set1_ps(-1.0e6), _mm256_set1_ps(1.0e6));
    let zp = _mm256_set1_epi32(zero_point as i32);
    // quantise 8 sums: (x + bias)·scale, NaN → 0, clamped to ±10⁶, rounded half to even (the
    // default rounding of the conversion), plus the zero point (a macro, not a closure: a
    // closure would not inherit this function's target features)
    macro_rules! q {
        ($x:expr) => {{
            let v = _mm256_mul_ps(_mm256_add_ps($x, b), s);
            let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
            let v = _mm256_min_ps(_mm256_max_ps(v, lim_lo), lim_hi);
            _mm256_add_epi32(_mm256_cvtps_epi32(v), zp)
        }};
    }
    // interleave the kx = 0 and kx = 1 taps of 8 pixels: 16 output pixels in order
    macro_rules! interleave {
        ($e:expr, $o:expr) => {{
            let (lo, hi) = (_mm256_unpacklo_ps($e, $o), _mm256_unpackhi_ps($e, $o));
            (
                _mm256_permute2f128_ps::<0x20>(lo, hi),
                _mm256_permute2f128_ps::<0x31>(lo, hi),
            )
        }};
    }
    for (row, [el, eh, ol, oh]) in rows.iter_mut().zip([[a0l, a0h, a1l, a1h], [a2l, a2h, a3l, a3h]]) {
        let (p0, p1) = interleave!(el, ol);
        let (p2, p3) = interleave!(eh, oh);
        let (r0, r1, r2, r3) = (q!(p0), q!(p1), q!(p2), q!(p3));
        // saturating narrowing (i32 → i16 → u8 clamps to 0..=255), then the 128-bit lanes
        // back in order
        let bytes = _mm256_packus_epi16(_mm256_packs_epi32(r0, r1), _mm256_packs_epi32(r2, r3));
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `row` is 32 bytes.
        unsafe { _mm256_storeu_si256(row.as_mut_ptr() as *mut __m256i, bytes) };
    }
}

/// One output channel's block on aarch64: [`taps_portable`] with fused multiply-adds (16
/// named registers of 4 sums, so that none is kept in memory between input channels), then the
/// bias and the quantisation of `quant::quantise` four sums at a time (`FCVTNS` rounds half to
/// even and saturates, NaN to 0), and the kx = 0 and kx = 1 taps' bytes interleaved into the
/// two output rows.
///
/// # Safety
/// Always safe on aarch64 (NEON is part of it); `unsafe` for the intrinsics.
#[cfg(target_arch = "aarch64")]
unsafe fn block_neon(
    wc: &[f32],
    px: &[[f32; LANES]],
    bias: f32,
    scale: f32,
    zero_point: u8,
    rows: &mut [[u8; 2 * LANES]; 2],
) {
    use std::arch::aarch64::*;
    assert!(wc.len() >= 4 * px.len());
    let (w, p) = (wc.as_ptr(), px.as_ptr() as *const f32);
    // SAFETY: `ci` < `px.len()`: 16 pixels at `p + 16·ci`, 4 weights at `w + 4·ci` (asserted);
    // each row is 32 bytes.
    unsafe {
        let z = vdupq_n_f32(0.0);
        // tap t (ky·2 + kx), pixels 4k..4k + 4: a{t}{k}
        let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
        let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
        let (mut a20, mut a21, mut a22, mut a23) = (z, z, z, z);
        let (mut a30, mut a31, mut a32, mut a33) = (z, z, z, z);
        for ci in 0..px.len() {
            let v0 = vld1q_f32(p.add(LANES * ci));
            let v1 = vld1q_f32(p.add(LANES * ci + 4));
            let v2 = vld1q_f32(p.add(LANES * ci + 8));
            let v3 = vld1q_f32(p.add(LANES * ci + 12));
            let wt = vld1q_f32(w.add(4 * ci));
            a00 = vfmaq_laneq_f32::<0>(a00, v0, wt);
            a01 = vfmaq_laneq_f32::<0>(a01, v1, wt);
            a02 = vfmaq_laneq_f32::<0>(a02, v2, wt);
            a03 = vfmaq_laneq_f32::<0>(a03, v3, wt);
            a10 = vfmaq_laneq_f32::<1>(a10, v0, wt);
            a11 = vfmaq_laneq_f32::<1>(a11, v1, wt);
            a12 = vfmaq_laneq_f32::<1>(a12, v2, wt);
            a13 = vfmaq_laneq_f32::<1>(a13, v3, wt);
            a20 = vfmaq_laneq_f32::<2>(a20, v0, wt);
            a21 = vfmaq_laneq_f32::<2>(a21, v1, wt);
            a22 = vfmaq_laneq_f32::<2>(a22, v2, wt);
            a23 = vfmaq_laneq_f32::<2>(a23, v3, wt);
            a30 = vfmaq_laneq_f32::<3>(a30, v0, wt);
            a31 = vfmaq_laneq_f32::<3>(a31, v1, wt);
            a32 = vfmaq_laneq_f32::<3>(a32, v2, wt);
            a33 = vfmaq_laneq_f32::<3>(a33, v3, wt);
        }
        let (b, s, zp) = (vdupq_n_f32(bias), vdupq_n_f32(scale), vdupq_n_s32(zero_point as i32));
        // (x + bias)·scale rounded half to even, plus the zero point, saturated: as
        // `quant::quantise` (its ±10⁶ clamp and NaN → 0 give the same bytes as the saturating
        // conversion)
        let q = |x: float32x4_t| vqaddq_s32(vcvtnq_s32_f32(vmulq_f32(vaddq_f32(x, b), s)), zp);
        let bytes = |r: [float32x4_t; 4]| {
            let lo = vcombine_s16(vqmovn_s32(q(r[0])), vqmovn_s32(q(r[1])));
            let hi = vcombine_s16(vqmovn_s32(q(r[2])), vqmovn_s32(q(r[3])));
            vcombine_u8(vqmovun_s16(lo), vqmovun_s16(hi))
        };
        for (row, [even, odd]) in rows.iter_mut().zip([
            [[a00, a01, a02, a03], [a10, a11, a12, a13]],
            [[a20, a21, a22, a23], [a30, a31, a32, a33]],
        ]) {
            let (e, o) = (bytes(even), bytes(odd));
            vst1q_u8(row.as_mut_ptr(), vzip1q_u8(e, o));
            vst1q_u8(row.as_mut_ptr().add(LANES), vzip2q_u8(e, o));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::quant::quantize_linear_u8;

    fn lcg(seed: &mut u32) -> u32 {
        *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *seed >> 8
    }

    /// The same bytes as tract's `DequantizeLinear → Deconv → QuantizeLinear` on random maps,
    /// weights and biases, over the grains decoder's shapes and ragged widths.
    #[test]
    fn equals_tracts_deconvolution_then_quantise() {
        let mut seed = 5;
        let (mut total, mut equal) = (0usize, 0usize);
        for (c_in, c_out, h, w) in [
            (48, 32, 16, 16),
            (32, 24, 32, 32),
            (24, 12, 64, 64),
            (3, 5, 3, 21),
            (17, 2, 2, 7),
            (12, 8, 5, 25),
        ] {
            let dq = DequantizeLinearF32 {
                scale: 0.0173,
                zero_point: 9,
            };
            let (qs, qz) = (1.0 / 0.041f32, 117u8);
            let xb: Vec<u8> = (0..c_in * h * w).map(|_| (lcg(&mut seed) >> 16) as u8).collect();
            let kw: Vec<f32> = (0..c_out * c_in * 4)
                .map(|_| (lcg(&mut seed) as f32 / 16_777_216.0 - 0.5) * 0.6)
                .collect();
            let bv: Vec<f32> = (0..c_out).map(|_| lcg(&mut seed) as f32 / 16_777_216.0 - 0.5).collect();
            let x = Tensor::from_shape(&[1, c_in, h, w], &xb).unwrap();
            let kernel = Tensor::from_shape(&[c_out, c_in, 2, 2], &kw).unwrap();
            let bias = Tensor::from_shape(&[c_out], &bv).unwrap();

            let xf = dq.eval_out_of_plan(tvec!(x.clone().into_tvalue())).unwrap().unwrap();
            let spec = PoolSpec::new(
                DataFormat::NCHW,
                tvec![2, 2],
                PaddingSpec::Valid,
                None,
                Some(tvec![2, 2]),
                c_in,
                c_out,
            );
            let deconv = Deconv::new(spec, KernelFormat::OIHW, tvec![0, 0], 1);
            let f = deconv
                .eval_out_of_plan(tvec!(
                    xf[0].clone(),
                    kernel.clone().into_tvalue(),
                    bias.clone().into_tvalue()
                ))
                .unwrap()
                .unwrap();
            let theirs = quantize_linear_u8(qs, qz).eval_out_of_plan(f).unwrap().unwrap();
            let theirs = theirs[0].try_as_plain_ram().unwrap().as_slice::<u8>().unwrap().to_vec();

            let op = DeconvU8::new(&dq, &kernel, &bias).unwrap();
            assert_eq!(
                op.output_shape(&[1, c_in, h, w]).unwrap().as_slice(),
                &[1, c_out, 2 * h, 2 * w]
            );
            let mut ours = vec![0u8; theirs.len()];
            op.run(&xb, h, w, &mut ours, qs, qz);
            for (i, (&a, &b)) in ours.iter().zip(&theirs).enumerate() {
                assert!(
                    a.abs_diff(b) <= 1,
                    "{c_in}→{c_out} {h}×{w}: byte {i}: {a} against tract's {b}"
                );
            }
            total += ours.len();
            equal += ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
        }
        // a step of difference needs a sum within rounding of a quantisation tie
        assert!(equal * 1000 >= total * 999, "{equal} of {total} bytes equal");
        // where tract's matrix kernel is known to sum in order with FMA, every byte
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            assert_eq!(equal, total, "bytes equal to tract's with AVX-512");
        }
    }

    #[test]
    fn dequantising_by_the_formula_gives_the_tables_bytes() {
        let mut seed = 11;
        let dq = DequantizeLinearF32 {
            scale: 0.0213,
            zero_point: 131,
        };
        let (c_in, c_out, h, w) = (12, 5, 7, 25);
        let kw: Vec<f32> = (0..c_out * c_in * 4)
            .map(|_| (lcg(&mut seed) as f32 / 16_777_216.0 - 0.5) * 0.6)
            .collect();
        let kernel = Tensor::from_shape(&[c_out, c_in, 2, 2], &kw).unwrap();
        let bias = Tensor::from_shape(&[c_out], &vec![0.25f32; c_out]).unwrap();
        let by_formula = DeconvU8::new(&dq, &kernel, &bias).unwrap();
        assert_eq!(
            by_formula.dq_formula,
            Some((0.0213, 131)),
            "tract's table is the formula"
        );
        let by_table = DeconvU8 {
            dq_formula: None,
            ..by_formula.clone()
        };
        let xb: Vec<u8> = (0..c_in * h * w).map(|_| (lcg(&mut seed) >> 16) as u8).collect();
        let (mut a, mut b) = (vec![0u8; c_out * 4 * h * w], vec![1u8; c_out * 4 * h * w]);
        by_formula.run(&xb, h, w, &mut a, 1.0 / 0.05, 100);
        by_table.run(&xb, h, w, &mut b, 1.0 / 0.05, 100);
        assert_eq!(a, b);
    }

    /// The aarch64 block quantises as `quant::quantise` does on ties, NaN, the saturation edges
    /// and sums far out of range, and puts the kx = 0 and kx = 1 taps in the right columns.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn the_neon_block_quantises_and_interleaves_like_the_portable_one() {
        let values = [
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            127.5,
            128.5,
            254.5,
            255.5,
            256.0,
            -255.5,
            0.0,
            -0.0,
            f32::NAN,
            1.0e7,
            -1.0e7,
        ];
        for (scale, zp, bias) in [(1.0f32, 0u8, 0.0f32), (1.0, 128, 0.0), (2.0, 3, 0.25), (0.5, 255, -1.0)] {
            // one input channel, weights 1, 2, 3, 4: each tap's sum is one exact product
            let wc = [1.0f32, 2.0, 4.0, 8.0];
            let mut px = [[0.0f32; LANES]; 1];
            px[0].copy_from_slice(&values);
            let mut got = [[0u8; 2 * LANES]; 2];
            // SAFETY: aarch64 has NEON.
            unsafe { block_neon(&wc, &px, bias, scale, zp, &mut got) };
            let acc = taps_portable(&wc, &px);
            for (ky, row) in got.iter().enumerate() {
                let mut sums = [0.0f32; 2 * LANES];
                for l in 0..LANES {
                    sums[2 * l] = acc[2 * ky][l] + bias;
                    sums[2 * l + 1] = acc[2 * ky + 1][l] + bias;
                }
                let mut want = [0u8; 2 * LANES];
                crate::model::quant::quantise(&sums, &mut want, scale, zp);
                assert_eq!(row, &want, "row {ky}, scale {scale}, zero point {zp}, bias {bias}");
            }
        }
    }
}
