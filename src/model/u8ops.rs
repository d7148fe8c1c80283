//! Max-pooling and concatenation on quantised bytes: the QDQ file's
//! `DequantizeLinear → MaxPool → QuantizeLinear` runs as [`MaxPoolU8`] and
//! `… → Concat → QuantizeLinear` as [`QuantiseConcat`], so the maps between two integer
//! convolutions stay u8 instead of being widened to f32, moved, and narrowed again.
//!
//! On the grains model these f32 round trips (dequantise, pool, concatenate, quantise) took
//! close to half of the inference time on x86-64; a byte is a quarter of the memory traffic and
//! the pooling a quarter of the loads.
//!
//! Why it is exact: `DequantizeLinear` with a positive scale is non-decreasing, so the maximum
//! of dequantised bytes is the dequantised maximum byte, and quantising an element-wise
//! function commutes with moving elements. Both operators therefore map each byte `b` through
//! `lut[b] = Q(DQ(b))`, a 256-entry table computed at load **by running tract's own two
//! operators** on every byte, and f32 inputs through [`super::quant`]'s rounding (bit for bit
//! tract's `QuantizeLinearU8`).
//!
//! Guarantees:
//! - **Bit for bit the plan it replaces** (unit tests below compare with tract's operators on
//!   random data, including scales that do not round-trip).
//! - **One allocation per run**: the output tensor.
//! - Only what it runs exactly is replaced ([`replace_u8_pools_and_concats`]): max-pools of 2-D
//!   NCHW maps without padding or dilation, between a dequantise of u8 with a positive finite
//!   scale and a quantise to u8; concatenations whose only consumer quantises to u8, of inputs
//!   of fixed shape.

use super::deconv::DeconvU8;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearU8};
use tract_onnx::tract_hir::internal::*;

/// `lut[b] = Q(DQ(b))` for every byte, by tract's own operators.
fn byte_map(dq: &DequantizeLinearF32, q: &QuantizeLinearU8) -> TractResult<[u8; 256]> {
    let bytes: Vec<u8> = (0..=255u8).collect();
    let x = Tensor::from_shape(&[256], &bytes)?;
    let f = dq
        .eval_out_of_plan(tvec!(x.into_tvalue()))?
        .context("DequantizeLinearF32 gave no output")?;
    let y = tract_onnx::tract_core::ops::quant::quantize_linear_u8(q.scale, q.zero_point)
        .eval_out_of_plan(f)?
        .context("QuantizeLinearU8 gave no output")?;
    let y = y[0].try_as_plain_ram()?;
    let mut lut = [0u8; 256];
    lut.copy_from_slice(y.as_slice::<u8>()?);
    Ok(lut)
}

fn is_identity(lut: &[u8; 256]) -> bool {
    lut.iter().enumerate().all(|(i, &b)| i == b as usize)
}

/// Max-pool of an NCHW u8 tensor over `kernel` windows at `strides`, no padding, each result
/// mapped through `lut` (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MaxPoolU8 {
    /// Window rows and columns.
    pub kernel: [usize; 2],
    /// Step between windows, rows and columns.
    pub strides: [usize; 2],
    /// `Q(DQ(b))` of the quantise and dequantise around the pool; `None` when it is the identity.
    pub lut: Option<Box<[u8; 256]>>,
}

impl MaxPoolU8 {
    fn output_shape(&self, shape: &[usize]) -> TractResult<[usize; 4]> {
        let [n, c, h, w]: [usize; 4] = shape
            .try_into()
            .map_err(|_| format_err!("MaxPoolU8: input of rank {}", shape.len()))?;
        let [kh, kw] = self.kernel;
        let [sy, sx] = self.strides;
        if kh == 0 || kw == 0 || sy == 0 || sx == 0 || h < kh || w < kw {
            bail!(
                "MaxPoolU8: window {:?} step {:?} does not fit {h}×{w}",
                self.kernel,
                self.strides
            );
        }
        Ok([n, c, (h - kh) / sy + 1, (w - kw) / sx + 1])
    }

    /// Pool `x` (planes of `h`×`w`) into `y` (planes of `oh`×`ow`).
    fn pool(&self, x: &[u8], h: usize, w: usize, oh: usize, ow: usize, y: &mut [u8]) {
        let [kh, kw] = self.kernel;
        let [sy, sx] = self.strides;
        for (xp, yp) in x.chunks_exact(h * w).zip(y.chunks_exact_mut(oh * ow)) {
            for (oy, out) in yp.chunks_exact_mut(ow).enumerate() {
                let rows = &xp[oy * sy * w..][..(kh - 1) * w + w];
                if self.kernel == [2, 2] && self.strides == [2, 2] {
                    // The models' pooling: pairs of two rows.
                    let (r0, r1) = (&rows[..2 * ow], &rows[w..w + 2 * ow]);
                    for ((o, a), b) in out.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
                        *o = a[0].max(a[1]).max(b[0].max(b[1]));
                    }
                } else {
                    for (ox, o) in out.iter_mut().enumerate() {
                        let mut m = 0u8;
                        for ky in 0..kh {
                            for &v in &rows[ky * w + ox * sx..][..kw] {
                                m = m.max(v);
                            }
                        }
                        *o = m;
                    }
                }
            }
        }
        if let Some(lut) = &self.lut {
            for v in y.iter_mut() {
                *v = lut[*v as usize];
            }
        }
    }
}

impl Op for MaxPoolU8 {
    fn name(&self) -> StaticName {
        "MaxPoolU8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "window {:?}, strides {:?}, {}",
            self.kernel,
            self.strides,
            if self.lut.is_some() {
                "requantised"
            } else {
                "same scale"
            }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPoolU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let shape = x.shape();
        let out_shape = self.output_shape(shape)?;
        let mut y = Tensor::zero::<u8>(&out_shape)?;
        {
            let xs = x.try_as_plain_ram()?;
            let mut ys = y.try_as_plain_ram_mut()?;
            self.pool(
                xs.as_slice::<u8>()?,
                shape[2],
                shape[3],
                out_shape[2],
                out_shape[3],
                ys.as_slice_mut::<u8>()?,
            );
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for MaxPoolU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = inputs[0]
            .shape
            .as_concrete()
            .context("MaxPoolU8: input shape not fixed")?;
        Ok(tvec!(u8::fact(self.output_shape(shape)?)))
    }

    as_op!();
}

/// How one input of a [`QuantiseConcat`] becomes bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum ConcatPart {
    /// An f32 input, quantised with the output's scale and zero point.
    F32,
    /// A u8 input that the file dequantised and upsampled by a 2×2, stride-2 transposed
    /// convolution: computed from the bytes and quantised in place ([`DeconvU8`]).
    Deconv(Box<DeconvU8>),
    /// A u8 input that the file dequantised: each byte through `Q(DQ(b))`; `None` when that is
    /// the identity (same scale and zero point on both sides).
    U8(Option<Box<[u8; 256]>>),
}

/// `QuantizeLinear(Concat(inputs))` along `axis`, written straight into one u8 tensor (see the
/// module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantiseConcat {
    /// The concatenation axis.
    pub axis: usize,
    /// One entry per input, in order.
    pub parts: Vec<ConcatPart>,
    /// The reciprocal of the ONNX scale, as tract keeps it.
    pub scale: f32,
    /// The u8 that stands for zero.
    pub zero_point: u8,
}

impl Eq for QuantiseConcat {}

impl QuantiseConcat {
    /// The shape each input takes in the concatenation.
    fn part_shapes(&self, shapes: &[&[usize]]) -> TractResult<TVec<TVec<usize>>> {
        shapes
            .iter()
            .zip(&self.parts)
            .map(|(s, part)| match part {
                ConcatPart::Deconv(d) => d.output_shape(s),
                _ => Ok(s.iter().copied().collect()),
            })
            .collect()
    }

    fn output_shape(&self, shapes: &[&[usize]]) -> TractResult<TVec<usize>> {
        let shapes = self.part_shapes(shapes)?;
        let shapes: TVec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
        let Some(first) = shapes.first() else {
            bail!("QuantiseConcat: no input");
        };
        if shapes.len() != self.parts.len() || self.axis >= first.len() {
            bail!("QuantiseConcat: {} inputs of rank {}", shapes.len(), first.len());
        }
        let mut out: TVec<usize> = first.iter().copied().collect();
        out[self.axis] = 0;
        for s in &shapes {
            let same = s.len() == first.len()
                && s.iter()
                    .zip(first.iter())
                    .enumerate()
                    .all(|(a, (x, y))| a == self.axis || x == y);
            if !same {
                bail!(
                    "QuantiseConcat: input shapes {first:?} and {s:?} do not concatenate on axis {}",
                    self.axis
                );
            }
            out[self.axis] += s[self.axis];
        }
        Ok(out)
    }
}

impl Op for QuantiseConcat {
    fn name(&self) -> StaticName {
        "QuantiseConcat".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let parts: Vec<&str> = self
            .parts
            .iter()
            .map(|p| match p {
                ConcatPart::F32 => "f32",
                ConcatPart::Deconv(_) => "u8 upsampled (2×2 transposed convolution)",
                ConcatPart::U8(None) => "u8",
                ConcatPart::U8(Some(_)) => "u8 requantised",
            })
            .collect();
        Ok(vec![format!(
            "axis {}, parts [{}], 1/scale {} zero point {}",
            self.axis,
            parts.join(", "),
            self.scale,
            self.zero_point
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QuantiseConcat {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shapes: TVec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        let out_shape = self.output_shape(&shapes)?;
        let part_shapes = self.part_shapes(&shapes)?;
        let outer: usize = out_shape[..self.axis].iter().product();
        let mut y = Tensor::zero::<u8>(&out_shape)?;
        {
            let mut ys = y.try_as_plain_ram_mut()?;
            let ys = ys.as_slice_mut::<u8>()?;
            let mut row_start = 0;
            let out_row: usize = out_shape[self.axis..].iter().product();
            for ((input, part), shape) in inputs.iter().zip(&self.parts).zip(&part_shapes) {
                let len: usize = shape[self.axis..].iter().product();
                let xs = input.try_as_plain_ram()?;
                for o in 0..outer {
                    let dst = &mut ys[o * out_row + row_start..][..len];
                    match part {
                        ConcatPart::Deconv(d) => {
                            let [_, c, h, w] = *input.shape() else {
                                bail!("QuantiseConcat: upsampled input of shape {:?}", input.shape());
                            };
                            d.run(
                                &xs.as_slice::<u8>()?[o * c * h * w..][..c * h * w],
                                h,
                                w,
                                dst,
                                self.scale,
                                self.zero_point,
                            );
                        }
                        ConcatPart::F32 => super::quant::quantise(
                            &xs.as_slice::<f32>()?[o * len..][..len],
                            dst,
                            self.scale,
                            self.zero_point,
                        ),
                        ConcatPart::U8(lut) => {
                            let src = &xs.as_slice::<u8>()?[o * len..][..len];
                            match lut {
                                None => dst.copy_from_slice(src),
                                Some(lut) => {
                                    for (d, &s) in dst.iter_mut().zip(src) {
                                        *d = lut[s as usize];
                                    }
                                }
                            }
                        }
                    }
                }
                row_start += len;
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QuantiseConcat {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shapes: TVec<&[usize]> = tvec![];
        for (fact, part) in inputs.iter().zip(&self.parts) {
            let want = match part {
                ConcatPart::F32 => f32::datum_type(),
                ConcatPart::U8(_) | ConcatPart::Deconv(_) => u8::datum_type(),
            };
            if fact.datum_type != want {
                bail!("QuantiseConcat: input of type {:?}, expected {want:?}", fact.datum_type);
            }
            shapes.push(
                fact.shape
                    .as_concrete()
                    .context("QuantiseConcat: input shape not fixed")?,
            );
        }
        Ok(tvec!(u8::fact(self.output_shape(&shapes)?)))
    }

    as_op!();
}

/// The `QuantizeLinearU8` of `node`, if it is one.
fn quantise_of(node: &TypedNode) -> Option<&QuantizeLinearU8> {
    node.op_as::<ElementWiseOp>()?.0.downcast_ref::<QuantizeLinearU8>()
}

/// The dequantise feeding `outlet`, if its input is u8 and its scale positive and finite (a
/// non-decreasing map), with that u8 input.
fn u8_dequantise(model: &TypedModel, outlet: OutletId) -> Option<(&DequantizeLinearF32, OutletId)> {
    let node = model.node(outlet.node);
    let dq = node.op_as::<DequantizeLinearF32>()?;
    let input = *node.inputs.first()?;
    let u8_in = model.outlet_fact(input).ok()?.datum_type == u8::datum_type();
    (u8_in && dq.scale.is_finite() && dq.scale > 0.0).then_some((dq, input))
}

/// The node that is the only reader of `outlet`, if it has one and `outlet` is not a model
/// output.
fn sole_consumer(model: &TypedModel, outlet: OutletId) -> Option<usize> {
    if model.output_outlets().ok()?.contains(&outlet) {
        return None;
    }
    match model.node(outlet.node).outputs.get(outlet.slot)?.successors.as_slice() {
        [only] => Some(only.node),
        _ => None,
    }
}

/// The one consumer of `outlet` that quantises to u8, if that is its only consumer and it is
/// not a model output.
fn sole_quantise(model: &TypedModel, outlet: OutletId) -> Option<(usize, QuantizeLinearU8)> {
    let only = sole_consumer(model, outlet)?;
    Some((only, quantise_of(model.node(only))?.clone()))
}

/// Replace, on a decluttered model, each max-pool and concatenation that the module doc lists.
/// Returns how many nodes were replaced; the dequantise and f32 nodes left without a consumer
/// are pruned by tract's optimisation.
pub fn replace_u8_pools_and_concats(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some((q_id, q)) = sole_quantise(model, OutletId::new(id, 0)) else {
            continue;
        };
        let patch = if let Some(pool) = node.op_as::<MaxPool>() {
            let spec = &pool.pool_spec;
            let no_padding = match &spec.padding {
                PaddingSpec::Valid => true,
                PaddingSpec::Explicit(a, b) | PaddingSpec::ExplicitOnnxPool(a, b, _) => {
                    a.iter().chain(b.iter()).all(|&p| p == 0)
                }
                _ => false,
            };
            let undilated = spec.dilations.as_ref().is_none_or(|d| d.iter().all(|&d| d == 1));
            let Some((dq, x)) = u8_dequantise(model, node.inputs[0]) else {
                continue;
            };
            let shape = model.outlet_fact(x)?.shape.as_concrete().map(|s| s.to_vec());
            if pool.with_index_outputs.is_some()
                || spec.data_format != DataFormat::NCHW
                || spec.kernel_shape.len() != 2
                || !no_padding
                || !undilated
                || shape.as_ref().is_none_or(|s| s.len() != 4)
            {
                continue;
            }
            let lut = byte_map(dq, &q)?;
            let op = MaxPoolU8 {
                kernel: [spec.kernel_shape[0], spec.kernel_shape[1]],
                strides: spec.strides.as_ref().map(|s| [s[0], s[1]]).unwrap_or([1, 1]),
                lut: (!is_identity(&lut)).then(|| Box::new(lut)),
            };
            if op.output_shape(shape.as_deref().unwrap_or(&[])).is_err() {
                continue;
            }
            let mut patch = TypedModelPatch::default();
            let tap = patch.tap_model(model, x)?;
            let out = patch.wire_node(format!("{}.u8", node.name), op, &[tap])?[0];
            patch.shunt_outside(model, OutletId::new(q_id, 0), out)?;
            patch
        } else if let Some(concat) = node.op_as::<TypedConcat>() {
            let mut patch = TypedModelPatch::default();
            let mut parts = vec![];
            let mut taps = tvec![];
            let mut fixed = true;
            for &input in &node.inputs {
                let fact = model.outlet_fact(input)?;
                fixed &= fact.shape.as_concrete().is_some();
                let upsampled = (concat.axis == 1 && sole_consumer(model, input) == Some(id))
                    .then(|| {
                        let up = model.node(input.node);
                        let (dq, x) = u8_dequantise(model, *up.inputs.first()?)?;
                        Some((DeconvU8::from_node(model, up, dq)?, x))
                    })
                    .flatten();
                if let Some((deconv, x)) = upsampled {
                    parts.push(ConcatPart::Deconv(Box::new(deconv)));
                    taps.push(patch.tap_model(model, x)?);
                } else if let Some((dq, x)) = u8_dequantise(model, input) {
                    let lut = byte_map(dq, &q)?;
                    parts.push(ConcatPart::U8((!is_identity(&lut)).then(|| Box::new(lut))));
                    taps.push(patch.tap_model(model, x)?);
                } else if fact.datum_type == f32::datum_type() {
                    parts.push(ConcatPart::F32);
                    taps.push(patch.tap_model(model, input)?);
                } else {
                    fixed = false;
                }
            }
            if !fixed {
                continue;
            }
            let op = QuantiseConcat {
                axis: concat.axis,
                parts,
                scale: q.scale,
                zero_point: q.zero_point,
            };
            let out = patch.wire_node(format!("{}.u8", node.name), op, &taps)?[0];
            patch.shunt_outside(model, OutletId::new(q_id, 0), out)?;
            patch
        } else {
            continue;
        };
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::PoolSpec;
    use tract_onnx::tract_core::ops::quant::quantize_linear_u8;

    fn bytes(seed: &mut u32, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (*seed >> 24) as u8
            })
            .collect()
    }

    /// Scales and zero points on both sides: equal (the identity map), and pairs that shift,
    /// stretch, squeeze and saturate.
    const DOMAINS: [((f32, i32), (f32, u8)); 5] = [
        ((0.0123, 7), (1.0 / 0.0123, 7)),
        ((0.02, 0), (1.0 / 0.031, 3)),
        ((0.5, 128), (1.0 / 0.1, 128)),
        ((0.0071, 101), (1.0 / 0.0071, 0)),
        ((1.3, 255), (1.0 / 0.77, 40)),
    ];

    fn u8s(t: &TValue) -> Vec<u8> {
        t.try_as_plain_ram().unwrap().as_slice::<u8>().unwrap().to_vec()
    }

    #[test]
    fn max_pool_equals_tracts_dequantise_pool_quantise() {
        let mut seed = 5;
        for (shape, kernel, strides) in [
            ([1, 3, 8, 8], [2, 2], [2, 2]),
            ([1, 2, 9, 11], [2, 2], [2, 2]),
            ([2, 4, 7, 10], [3, 2], [2, 3]),
            ([1, 1, 5, 5], [5, 5], [1, 1]),
        ] {
            let len: usize = shape.iter().product();
            let x = Tensor::from_shape(&shape, &bytes(&mut seed, len)).unwrap();
            for ((ds, dz), (qs, qz)) in DOMAINS {
                let dq = DequantizeLinearF32 {
                    scale: ds,
                    zero_point: dz,
                };
                let q = QuantizeLinearU8 {
                    scale: qs,
                    zero_point: qz,
                };
                let spec = PoolSpec {
                    data_format: DataFormat::NCHW,
                    kernel_shape: kernel.into_iter().collect(),
                    padding: PaddingSpec::Valid,
                    dilations: None,
                    strides: Some(strides.into_iter().collect()),
                    input_channels: shape[1],
                    output_channels: shape[1],
                };
                let f = dq.eval_out_of_plan(tvec!(x.clone().into_tvalue())).unwrap().unwrap();
                let f = MaxPool::new(spec, None).eval_out_of_plan(f).unwrap().unwrap();
                let theirs = quantize_linear_u8(qs, qz).eval_out_of_plan(f).unwrap().unwrap();
                let lut = byte_map(&dq, &q).unwrap();
                let ours = MaxPoolU8 {
                    kernel,
                    strides,
                    lut: (!is_identity(&lut)).then(|| Box::new(lut)),
                }
                .eval_out_of_plan(tvec!(x.clone().into_tvalue()))
                .unwrap()
                .unwrap();
                assert_eq!(ours[0].shape(), theirs[0].shape(), "{shape:?} {kernel:?}");
                assert_eq!(
                    u8s(&ours[0]),
                    u8s(&theirs[0]),
                    "{shape:?} {kernel:?} {ds} {dz} {qs} {qz}"
                );
            }
        }
    }

    #[test]
    fn equal_scales_map_every_byte_to_itself() {
        for (s, z) in [(0.0123f32, 7u8), (0.5, 128), (3.0e-4, 0), (0.9, 255)] {
            let dq = DequantizeLinearF32 {
                scale: s,
                zero_point: z as i32,
            };
            let q = QuantizeLinearU8 {
                scale: 1.0 / s,
                zero_point: z,
            };
            assert!(is_identity(&byte_map(&dq, &q).unwrap()), "scale {s} zero point {z}");
        }
        let dq = DequantizeLinearF32 {
            scale: 0.02,
            zero_point: 0,
        };
        let q = QuantizeLinearU8 {
            scale: 1.0 / 0.03,
            zero_point: 0,
        };
        assert!(!is_identity(&byte_map(&dq, &q).unwrap()));
    }

    #[test]
    fn concat_equals_tracts_concat_then_quantise() {
        let mut seed = 9;
        for (axis, shapes) in [
            (1, vec![[1, 3, 4, 5], [1, 2, 4, 5]]),
            (1, vec![[2, 1, 3, 3], [2, 4, 3, 3], [2, 2, 3, 3]]),
            (3, vec![[1, 2, 3, 1], [1, 2, 3, 4]]),
            (0, vec![[1, 2, 2, 2], [3, 2, 2, 2]]),
        ] {
            for ((ds, dz), (qs, qz)) in DOMAINS {
                let dq = DequantizeLinearF32 {
                    scale: ds,
                    zero_point: dz,
                };
                let q = QuantizeLinearU8 {
                    scale: qs,
                    zero_point: qz,
                };
                // even inputs arrive as dequantised bytes, odd ones as f32
                let mut f32_inputs = tvec![];
                let mut our_inputs = tvec![];
                let mut parts = vec![];
                for (k, shape) in shapes.iter().enumerate() {
                    let len: usize = shape.iter().product();
                    let b = Tensor::from_shape(shape, &bytes(&mut seed, len)).unwrap();
                    if k % 2 == 0 {
                        let f = dq.eval_out_of_plan(tvec!(b.clone().into_tvalue())).unwrap().unwrap();
                        f32_inputs.push(f[0].clone());
                        our_inputs.push(b.into_tvalue());
                        let lut = byte_map(&dq, &q).unwrap();
                        parts.push(ConcatPart::U8((!is_identity(&lut)).then(|| Box::new(lut))));
                    } else {
                        let v: Vec<f32> = bytes(&mut seed, len)
                            .iter()
                            .map(|&b| (b as f32 - 99.5) * 0.37)
                            .collect();
                        let f = Tensor::from_shape(shape, &v).unwrap().into_tvalue();
                        f32_inputs.push(f.clone());
                        our_inputs.push(f);
                        parts.push(ConcatPart::F32);
                    }
                }
                let c = TypedConcat { axis }.eval_out_of_plan(f32_inputs).unwrap().unwrap();
                let theirs = quantize_linear_u8(qs, qz).eval_out_of_plan(c).unwrap().unwrap();
                let ours = QuantiseConcat {
                    axis,
                    parts,
                    scale: qs,
                    zero_point: qz,
                }
                .eval_out_of_plan(our_inputs)
                .unwrap()
                .unwrap();
                assert_eq!(ours[0].shape(), theirs[0].shape(), "axis {axis} {shapes:?}");
                assert_eq!(
                    u8s(&ours[0]),
                    u8s(&theirs[0]),
                    "axis {axis} {shapes:?} {ds} {dz} {qs} {qz}"
                );
            }
        }
    }
}
