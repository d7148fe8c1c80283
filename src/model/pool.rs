//! Average pooling without padding in one pass: the `AveragePool` nodes that pad nothing run as
//! [`BoxMean`].
//!
//! tract's generic average pool walks each output's window through a patch scanner: about 50
//! instructions per output of a 2 × 2 pool on a Cortex-A76, and on the anomaly model's long box
//! filters (1 × 33, 33 × 1) thousands of allocations per inference. [`BoxMean`] sums each
//! window straight from the input rows, several outputs side by side.
//!
//! Guarantees:
//! - **Bit for bit tract's result**: each window is summed in tract's order (kernel rows, then
//!   columns), from the same starting value as Rust's `f32` sum, then multiplied by the same
//!   reciprocal of the window's size.
//! - **One allocation per run**: the output tensor.
//! - Only what it runs exactly is replaced ([`replace_average_pools`]): f32 NCHW tensors, 2-D
//!   windows, no padding, no dilation, averaging (not summing). Every other pool stays tract's.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{PaddingSpec, SumPool};
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_hir::internal::*;

/// Outputs of one row summed side by side (one vector register of f32 on the boards' cores,
/// two on x86-64's AVX).
const LANES: usize = 8;

/// Mean over `kernel` windows at `strides`, no padding, of an NCHW f32 tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BoxMean {
    /// Window rows and columns.
    pub kernel: [usize; 2],
    /// Step between windows, rows and columns.
    pub strides: [usize; 2],
}

impl BoxMean {
    fn output_shape(&self, shape: &[usize]) -> TractResult<[usize; 4]> {
        let [n, c, h, w]: [usize; 4] = shape
            .try_into()
            .map_err(|_| format_err!("BoxMean: input of rank {}", shape.len()))?;
        let [kh, kw] = self.kernel;
        let [sy, sx] = self.strides;
        if kh == 0 || kw == 0 || sy == 0 || sx == 0 || h < kh || w < kw {
            bail!(
                "BoxMean: window {:?} step {:?} does not fit {h}×{w}",
                self.kernel,
                self.strides
            );
        }
        Ok([n, c, (h - kh) / sy + 1, (w - kw) / sx + 1])
    }

    /// Average `x` (planes of `h`×`w`) into `y` (planes of `oh`×`ow`).
    fn pool(&self, x: &[f32], h: usize, w: usize, oh: usize, ow: usize, y: &mut [f32]) {
        let [kh, kw] = self.kernel;
        let [sy, sx] = self.strides;
        let div = ((kh * kw) as f32).recip();
        // The starting value of Rust's `f32` sum, which tract's pool uses.
        let zero: f32 = std::iter::empty::<f32>().sum();
        for (xp, yp) in x.chunks_exact(h * w).zip(y.chunks_exact_mut(oh * ow)) {
            if self.kernel == [2, 2] && self.strides == [2, 2] {
                // The models' input pooling: two rows of pairs, summed in the same order.
                for (oy, out) in yp.chunks_exact_mut(ow).enumerate() {
                    let r0 = &xp[2 * oy * w..][..2 * ow];
                    let r1 = &xp[(2 * oy + 1) * w..][..2 * ow];
                    for ((o, a), b) in out.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
                        *o = (((zero + a[0]) + a[1]) + b[0] + b[1]) * div;
                    }
                }
                continue;
            }
            for (oy, out) in yp.chunks_exact_mut(ow).enumerate() {
                let rows = &xp[oy * sy * w..][..(kh - 1) * w + w];
                let mut ox = 0;
                while ox + LANES <= ow {
                    let mut acc = [zero; LANES];
                    for ky in 0..kh {
                        let row = &rows[ky * w..][..w];
                        for kx in 0..kw {
                            for (l, a) in acc.iter_mut().enumerate() {
                                *a += row[(ox + l) * sx + kx];
                            }
                        }
                    }
                    for (o, a) in out[ox..ox + LANES].iter_mut().zip(acc) {
                        *o = a * div;
                    }
                    ox += LANES;
                }
                for (o, x0) in out[ox..].iter_mut().zip(ox..) {
                    let mut a = zero;
                    for ky in 0..kh {
                        let row = &rows[ky * w..][..w];
                        for kx in 0..kw {
                            a += row[x0 * sx + kx];
                        }
                    }
                    *o = a * div;
                }
            }
        }
    }
}

impl Op for BoxMean {
    fn name(&self) -> StaticName {
        "BoxMean".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("window {:?}, strides {:?}", self.kernel, self.strides)])
    }

    op_as_typed_op!();
}

impl EvalOp for BoxMean {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let shape = x.shape();
        let out_shape = self.output_shape(shape)?;
        // SAFETY: every element of the output is written below (each row in full).
        let mut y = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        {
            let xs = x.try_as_plain_ram()?;
            let mut ys = y.try_as_plain_ram_mut()?;
            self.pool(
                xs.as_slice::<f32>()?,
                shape[2],
                shape[3],
                out_shape[2],
                out_shape[3],
                ys.as_slice_mut::<f32>()?,
            );
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for BoxMean {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = inputs[0]
            .shape
            .as_concrete()
            .context("BoxMean: input shape not fixed")?;
        Ok(tvec!(f32::fact(self.output_shape(shape)?)))
    }

    as_op!();
}

/// Replace every average pool of `model` that [`BoxMean`] runs exactly (see the module doc).
/// Returns how many were replaced.
pub fn replace_average_pools(model: &mut TypedModel) -> TractResult<usize> {
    super::replace_f32_nodes(model, |node, shape| {
        let pool = node.op_as::<SumPool>()?;
        let spec = &pool.pool_spec;
        let no_padding = match &spec.padding {
            PaddingSpec::Valid => true,
            PaddingSpec::Explicit(a, b) | PaddingSpec::ExplicitOnnxPool(a, b, _) => {
                a.iter().chain(b.iter()).all(|&p| p == 0)
            }
            _ => false,
        };
        let undilated = spec.dilations.as_ref().is_none_or(|d| d.iter().all(|&d| d == 1));
        if !pool.normalize
            || spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || !no_padding
            || !undilated
            || shape.len() != 4
        {
            return None;
        }
        let op = BoxMean {
            kernel: [spec.kernel_shape[0], spec.kernel_shape[1]],
            strides: spec.strides.as_ref().map(|s| [s[0], s[1]]).unwrap_or([1, 1]),
        };
        op.output_shape(shape).is_ok().then_some(op)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::PoolSpec;

    #[test]
    fn equals_tracts_average_pool_bit_for_bit() {
        let mut seed = 11u32;
        for (shape, kernel, strides) in [
            ([1, 1, 20, 20], [2, 2], [2, 2]),
            ([1, 3, 21, 23], [2, 2], [2, 2]),
            ([1, 2, 9, 40], [1, 17], [1, 1]),
            ([1, 1, 40, 9], [17, 1], [1, 1]),
            ([2, 3, 13, 29], [3, 5], [2, 3]),
            ([1, 1, 7, 7], [7, 7], [1, 1]),
        ] {
            let len: usize = shape.iter().product();
            let data: Vec<f32> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / 65536.0 - 100.0
                })
                .collect();
            let x = Tensor::from_shape(&shape, &data).unwrap();
            let spec = PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: kernel.into_iter().collect(),
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: Some(strides.into_iter().collect()),
                input_channels: shape[1],
                output_channels: shape[1],
            };
            let theirs = SumPool::new(spec, false, true)
                .eval_out_of_plan(tvec!(x.clone().into_tvalue()))
                .unwrap()
                .unwrap();
            let ours = BoxMean { kernel, strides }
                .eval_out_of_plan(tvec!(x.into_tvalue()))
                .unwrap()
                .unwrap();
            assert_eq!(ours[0].shape(), theirs[0].shape(), "{shape:?} {kernel:?} {strides:?}");
            let (a, b) = (
                ours[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec(),
                theirs[0]
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec(),
            );
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{shape:?} {kernel:?} {strides:?}");
        }
    }

    #[test]
    fn refuses_a_window_larger_than_the_input() {
        let op = BoxMean {
            kernel: [5, 1],
            strides: [1, 1],
        };
        assert!(op.output_shape(&[1, 1, 4, 8]).is_err());
        assert!(op.output_shape(&[1, 1, 5, 8]).is_ok());
    }
}
