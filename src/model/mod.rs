//! Models: the manifest that travels with every `.onnx` file, the preprocessing it
//! describes, and tract inference.

pub mod deconv;
pub mod engine;
pub mod manifest;
pub mod pad;
pub mod pool;
pub mod preprocess;
pub mod qconv;
pub mod quant;
pub mod reduce;
pub mod u8ops;

use tract_onnx::prelude::*;

/// Replace, in evaluation order, each node of `model` whose first input is an f32 tensor of
/// fixed shape and for which `pick(node, shape)` gives an operator; the new operator takes the
/// node's inputs and outputs. The one-pass operators ([`pad`], [`pool`], [`reduce`], [`quant`]) go in
/// through it. Returns how many nodes were replaced.
pub(crate) fn replace_f32_nodes<O: TypedOp>(
    model: &mut TypedModel,
    pick: impl Fn(&TypedNode, &[usize]) -> Option<O>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(input) = node.inputs.first() else { continue };
        let fact = model.outlet_fact(*input)?;
        if fact.datum_type != f32::datum_type() {
            continue;
        }
        let Some(shape) = fact.shape.as_concrete() else {
            continue;
        };
        let Some(op) = pick(node, shape) else { continue };
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}
