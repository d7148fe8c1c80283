//! Quantisation of an f32 tensor to u8 in one vectorised pass: tract's `QuantizeLinearU8` on an
//! f32 input runs as [`QuantiseU8`].
//!
//! tract quantises element by element through a scalar rounding function (about 1.6 ns per
//! element on x86-64); the grains model quantises each decoder stage's concatenated f32 maps
//! before its next integer convolution, a quarter of its inference time. [`QuantiseU8`] rounds
//! with the f32 magic number, which the compiler vectorises on every target.
//!
//! Guarantees:
//! - **Bit for bit tract's result** for every input whose product with the scale is NaN or
//!   finite below 2³¹ in magnitude: `clamp(round_half_even(x · scale) + zero_point, 0, 255)`,
//!   NaN giving the zero point. (Beyond 2³¹ tract's own sum overflows; [`QuantiseU8`]
//!   saturates.)
//! - **One allocation per run**: the output tensor.
//! - Only `QuantizeLinearU8` on an f32 input of fixed shape is replaced ([`replace_quantise`]),
//!   and not on 32-bit ARM.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::QuantizeLinearU8;
use tract_onnx::tract_hir::internal::*;

/// `clamp(round_half_even(x · scale) + zero_point, 0, 255)` of an f32 tensor, any shape.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantiseU8 {
    /// The reciprocal of the ONNX scale, as tract keeps it.
    pub scale: f32,
    /// The u8 that stands for zero.
    pub zero_point: u8,
}

impl Eq for QuantiseU8 {}

/// Quantise `xs` into `ys` (same length).
pub(crate) fn quantise(xs: &[f32], ys: &mut [u8], scale: f32, zero_point: u8) {
    // 1.5 · 2²³: adding and subtracting it rounds half to even any |v| < 2²².
    const MAGIC: f32 = 12_582_912.0;
    let zp = zero_point as f32;
    for (y, &x) in ys.iter_mut().zip(xs) {
        let v = x * scale;
        // NaN rounds to 0 in tract (its cast to i32); |v| ≥ 10⁶ saturates either way.
        let v = if v.is_nan() { 0.0 } else { v.clamp(-1.0e6, 1.0e6) };
        let r = (v + MAGIC) - MAGIC;
        // in range: the cast to i32 is one vector conversion, the narrowing exact
        *y = (r + zp).clamp(0.0, 255.0) as i32 as u8;
    }
}

impl Op for QuantiseU8 {
    fn name(&self) -> StaticName {
        "QuantiseU8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("1/scale {} zero point {}", self.scale, self.zero_point)])
    }

    op_as_typed_op!();
}

impl EvalOp for QuantiseU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let mut y = Tensor::zero::<u8>(x.shape())?;
        {
            let xs = x.try_as_plain_ram()?;
            let xs = xs.as_slice::<f32>()?;
            let mut ys = y.try_as_plain_ram_mut()?;
            quantise(xs, ys.as_slice_mut::<u8>()?, self.scale, self.zero_point);
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QuantiseU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(u8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Replace every `QuantizeLinearU8` of an f32 input in `model`. Returns how many.
/// On 32-bit ARM nothing is replaced: there tract's scalar loop retires fewer instructions than
/// this one (measured under `tests/arm_cost.sh` on a Cortex-A8).
pub fn replace_quantise(model: &mut TypedModel) -> TractResult<usize> {
    if cfg!(target_arch = "arm") {
        return Ok(0);
    }
    super::replace_f32_nodes(model, |node, _shape| {
        let q = node.op_as::<ElementWiseOp>()?.0.downcast_ref::<QuantizeLinearU8>()?;
        Some(QuantiseU8 {
            scale: q.scale,
            zero_point: q.zero_point,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::quant::quantize_linear_u8;

    #[test]
    fn equals_tracts_quantize_linear_bit_for_bit() {
        let mut seed = 11u32;
        let mut data: Vec<f32> = (0..4096)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / 8192.0 - 1024.0
            })
            .collect();
        // ties at every scale below, the saturation edges, zeros, NaN
        data.extend([
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            0.0,
            -0.0,
            127.5,
            128.5,
            255.5,
            -255.5,
            f32::NAN,
        ]);
        data.extend([1.0e7, -1.0e7, 3.0e6, 16_777_217.0, 8_388_609.0, 4_194_304.5]);
        let x = Tensor::from_shape(&[1, 2, data.len() / 2], &data[..data.len() / 2 * 2]).unwrap();
        for (scale, zp) in [
            (1.0, 0u8),
            (1.0, 128),
            (0.5, 101),
            (20.24915, 101),
            (0.037, 255),
            (3.0, 7),
        ] {
            let theirs = quantize_linear_u8(scale, zp)
                .eval_out_of_plan(tvec!(x.clone().into_tvalue()))
                .unwrap()
                .unwrap();
            let ours = QuantiseU8 { scale, zero_point: zp }
                .eval_out_of_plan(tvec!(x.clone().into_tvalue()))
                .unwrap()
                .unwrap();
            assert_eq!(ours[0].shape(), theirs[0].shape());
            let bytes = |t: &TValue| t.try_as_plain_ram().unwrap().as_slice::<u8>().unwrap().to_vec();
            assert_eq!(bytes(&ours[0]), bytes(&theirs[0]), "scale {scale}, zero point {zp}");
        }
    }
}
