//! Reflect padding in one pass: the `Pad` nodes in `reflect` mode run as [`ReflectPad`].
//!
//! tract's own `Pad` fills each padded row and column through a fresh n-dimensional view of
//! the output, which allocates several times per padded line: on the anomaly model (six box
//! filters over a 512 × 512 frame) that was about 49 000 allocations per inference, all of
//! them the pad's. [`ReflectPad`] writes each output row once, from the input row it mirrors.
//!
//! Guarantees:
//! - **Same values as ONNX `Pad` in `reflect` mode** (the edge is not repeated: a pad of 2
//!   before `a b c` gives `c b a b c`), bit for bit, since it only copies.
//! - **One allocation per run**: the output tensor; nothing else.
//! - Only what it runs exactly is replaced ([`replace_reflect_pads`]): f32 tensors padded on
//!   their last two axes, each pad shorter than its axis (as ONNX requires for reflect).
//!   Every other `Pad` stays tract's.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};
use tract_onnx::tract_hir::internal::*;

/// Reflect padding of the last two axes of an f32 tensor (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReflectPad {
    /// Rows added before and after (the second-to-last axis).
    pub rows: (usize, usize),
    /// Columns added before and after (the last axis).
    pub cols: (usize, usize),
}

/// Index of the input that output index `i` (counted from the first input element) mirrors,
/// for an axis of `n` elements: `-1 → 1`, `n → n − 2`.
#[inline(always)]
fn mirror(i: isize, n: usize) -> usize {
    let n = n as isize;
    let r = if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    };
    r as usize
}

impl ReflectPad {
    fn output_shape(&self, shape: &[usize]) -> TractResult<TVec<usize>> {
        let r = shape.len();
        if r < 2 {
            bail!("ReflectPad: input of rank {r}");
        }
        let (h, w) = (shape[r - 2], shape[r - 1]);
        if self.rows.0 >= h || self.rows.1 >= h || self.cols.0 >= w || self.cols.1 >= w {
            bail!(
                "ReflectPad: pads {:?} {:?} not shorter than the input {h}×{w}",
                self.rows,
                self.cols
            );
        }
        let mut out: TVec<usize> = shape.into();
        out[r - 2] = h + self.rows.0 + self.rows.1;
        out[r - 1] = w + self.cols.0 + self.cols.1;
        Ok(out)
    }

    /// Pad `x` (planes of `h`×`w`) into `y` (planes of the padded size).
    fn pad(&self, x: &[f32], h: usize, w: usize, y: &mut [f32]) {
        let (oh, ow) = (h + self.rows.0 + self.rows.1, w + self.cols.0 + self.cols.1);
        let (left, right) = self.cols;
        for (xp, yp) in x.chunks_exact(h * w).zip(y.chunks_exact_mut(oh * ow)) {
            for (oy, out) in yp.chunks_exact_mut(ow).enumerate() {
                let row = &xp[mirror(oy as isize - self.rows.0 as isize, h) * w..][..w];
                out[left..left + w].copy_from_slice(row);
                for i in 0..left {
                    out[i] = row[left - i];
                }
                for i in 0..right {
                    out[left + w + i] = row[w - 2 - i];
                }
            }
        }
    }
}

impl Op for ReflectPad {
    fn name(&self) -> StaticName {
        "ReflectPad".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("rows {:?}, columns {:?}", self.rows, self.cols)])
    }

    op_as_typed_op!();
}

impl EvalOp for ReflectPad {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let shape = x.shape();
        let out_shape = self.output_shape(shape)?;
        let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        // SAFETY: every element of the output is written below (each row in full).
        let mut y = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        {
            let xs = x.try_as_plain_ram()?;
            let mut ys = y.try_as_plain_ram_mut()?;
            self.pad(xs.as_slice::<f32>()?, h, w, ys.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for ReflectPad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = inputs[0]
            .shape
            .as_concrete()
            .context("ReflectPad: input shape not fixed")?;
        Ok(tvec!(f32::fact(self.output_shape(shape)?)))
    }

    as_op!();
}

/// Replace every `Pad` of `model` that [`ReflectPad`] runs exactly (see the module doc).
/// Returns how many were replaced.
pub fn replace_reflect_pads(model: &mut TypedModel) -> TractResult<usize> {
    super::replace_f32_nodes(model, |node, shape| {
        let pad = node.op_as::<Pad>()?;
        let r = shape.len();
        if pad.mode != PadMode::Reflect || r < 2 || pad.pads.len() != r {
            return None;
        }
        if pad.pads[..r - 2].iter().any(|&(a, b)| a != 0 || b != 0) {
            return None;
        }
        let op = ReflectPad {
            rows: pad.pads[r - 2],
            cols: pad.pads[r - 1],
        };
        op.output_shape(shape).is_ok().then_some(op)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tract's own `Pad` on the same input: the reference.
    fn tract_pad(x: &Tensor, rows: (usize, usize), cols: (usize, usize)) -> Tensor {
        let r = x.rank();
        let mut pads = vec![(0, 0); r];
        pads[r - 2] = rows;
        pads[r - 1] = cols;
        let op = Pad::new(pads, PadMode::Reflect);
        let out = op.eval_out_of_plan(tvec!(x.clone().into_tvalue())).unwrap().unwrap();
        out[0].clone().into_tensor()
    }

    #[test]
    fn equals_tracts_reflect_pad() {
        let mut seed = 7u32;
        for (shape, rows, cols) in [
            (vec![1, 1, 5, 7], (2, 1), (3, 0)),
            (vec![2, 3, 9, 4], (0, 8), (1, 3)),
            (vec![1, 1, 2, 2], (1, 1), (1, 1)),
            (vec![6, 11], (4, 5), (10, 2)),
        ] {
            let len: usize = shape.iter().product();
            let data: Vec<f32> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / 65536.0
                })
                .collect();
            let x = Tensor::from_shape(&shape, &data).unwrap();
            let ours = ReflectPad { rows, cols }
                .eval_out_of_plan(tvec!(x.clone().into_tvalue()))
                .unwrap()
                .unwrap();
            let theirs = tract_pad(&x, rows, cols);
            assert_eq!(ours[0].shape(), theirs.shape(), "{shape:?} {rows:?} {cols:?}");
            assert_eq!(
                ours[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
                theirs.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
                "{shape:?} {rows:?} {cols:?}"
            );
        }
    }

    #[test]
    fn refuses_pads_as_long_as_the_axis() {
        let op = ReflectPad {
            rows: (3, 0),
            cols: (0, 0),
        };
        assert!(op.output_shape(&[1, 1, 3, 8]).is_err());
        assert!(op.output_shape(&[1, 1, 4, 8]).is_ok());
    }
}
