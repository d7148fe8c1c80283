//! The maximum over channels in one pass: `ReduceMax` over the channel axis runs as
//! [`ChannelMax`].
//!
//! tract reduces a non-contiguous axis through one n-dimensional view per output element, each
//! of which allocates: on the anomaly model (seven filter responses, 128 × 128 after pooling)
//! that was 16 384 allocations per inference. [`ChannelMax`] walks the channel planes side by
//! side.
//!
//! Guarantees:
//! - **Bit for bit tract's result**: per pixel, from `f32::MIN`, channel by channel in order,
//!   keeping the running value only when it is greater (so a NaN channel wins, as in tract).
//! - **One allocation per run**: the output tensor.
//! - Only `ReduceMax` over axis 1 of a 4-D f32 tensor is replaced ([`replace_channel_max`]).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};
use tract_onnx::tract_hir::internal::*;

/// Maximum over axis 1 of an NCHW f32 tensor, the axis kept with size 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelMax;

impl ChannelMax {
    fn output_shape(shape: &[usize]) -> TractResult<[usize; 4]> {
        let [n, _, h, w]: [usize; 4] = shape
            .try_into()
            .map_err(|_| format_err!("ChannelMax: input of rank {}", shape.len()))?;
        Ok([n, 1, h, w])
    }
}

impl Op for ChannelMax {
    fn name(&self) -> StaticName {
        "ChannelMax".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ChannelMax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let shape = x.shape();
        let out_shape = ChannelMax::output_shape(shape)?;
        let (c, plane) = (shape[1], shape[2] * shape[3]);
        let mut y = Tensor::zero::<f32>(&out_shape)?;
        {
            let xs = x.try_as_plain_ram()?;
            let xs = xs.as_slice::<f32>()?;
            let mut ys = y.try_as_plain_ram_mut()?;
            let ys = ys.as_slice_mut::<f32>()?;
            for (image, out) in xs.chunks_exact(c * plane.max(1)).zip(ys.chunks_exact_mut(plane.max(1))) {
                out.fill(f32::MIN);
                for channel in image.chunks_exact(plane.max(1)) {
                    for (o, &v) in out.iter_mut().zip(channel) {
                        *o = if *o > v { *o } else { v };
                    }
                }
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for ChannelMax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = inputs[0]
            .shape
            .as_concrete()
            .context("ChannelMax: input shape not fixed")?;
        Ok(tvec!(f32::fact(ChannelMax::output_shape(shape)?)))
    }

    as_op!();
}

/// Replace every `ReduceMax` over axis 1 of a 4-D f32 tensor in `model`. Returns how many.
pub fn replace_channel_max(model: &mut TypedModel) -> TractResult<usize> {
    super::replace_f32_nodes(model, |node, shape| {
        let reduce = node.op_as::<Reduce>()?;
        (reduce.reducer == Reducer::Max && reduce.axes.as_slice() == [1] && shape.len() == 4 && !shape.contains(&0))
            .then_some(ChannelMax)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_tracts_reduce_max_bit_for_bit() {
        let mut seed = 3u32;
        for shape in [[1, 7, 5, 9], [2, 3, 4, 4], [1, 1, 3, 3]] {
            let len: usize = shape.iter().product();
            let data: Vec<f32> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / 65536.0 - 128.0
                })
                .collect();
            let x = Tensor::from_shape(&shape, &data).unwrap();
            let theirs = Reduce::new(tvec![1], Reducer::Max)
                .eval_out_of_plan(tvec!(x.clone().into_tvalue()))
                .unwrap()
                .unwrap();
            let ours = ChannelMax.eval_out_of_plan(tvec!(x.into_tvalue())).unwrap().unwrap();
            assert_eq!(ours[0].shape(), theirs[0].shape(), "{shape:?}");
            let bits = |t: &TValue| {
                t.try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .iter()
                    .map(|f| f.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&ours[0]), bits(&theirs[0]), "{shape:?}");
        }
    }
}
