//! tract inference: load (the quantised convolutions fused, [`crate::model::qconv`]) → declutter
//! → reflect pads, average pools and channel maxima replaced ([`crate::model::pad`],
//! [`crate::model::pool`], [`crate::model::reduce`]), max-pools and concatenations of quantised
//! maps kept in bytes ([`crate::model::u8ops`]), quantisation in one pass ([`crate::model::quant`])
//! → optimise → integer convolutions chained
//! channels-last → plan once, then run the same state for every frame with the input written
//! in place.
//!
//! Promise: after [`Engine::load`], [`Engine::run`] parses nothing and allocates nothing in our
//! code; the input tensor is one buffer reused across frames (tract's own allocations inside
//! `run` are tract's, and are counted separately by the bench).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tract_onnx::prelude::*;

/// Largest tensor a model may declare or produce, bytes (256 MiB). The shipped models' largest
/// is 4 MiB (a 512 × 512 × 16 f32 map); a larger one in a file is damage, refused before it is
/// allocated rather than exhausting a board's memory.
pub const MAX_TENSOR_BYTES: u64 = 256 << 20;

/// Refuse declared tensors that would exhaust memory: every initializer's and constant's
/// element count must fit [`MAX_TENSOR_BYTES`] at 8 bytes per element and, where its data is
/// inline, not need more data than the file holds.
fn check_tensor_sizes(proto: &tract_onnx::pb::ModelProto) -> Result<()> {
    use tract_onnx::pb::TensorProto;
    let graph = proto.graph.as_ref().context("the file has no graph")?;
    let elements = |dims: &[i64], what: &str| -> Result<u64> {
        dims.iter().try_fold(1u64, |acc, &d| {
            let d = u64::try_from(d)
                .ok()
                .with_context(|| format!("{what}: negative dimension {d}"))?;
            acc.checked_mul(d)
                .filter(|&n| n.saturating_mul(8) <= MAX_TENSOR_BYTES)
                .with_context(|| format!("{what}: shape {dims:?} is larger than {MAX_TENSOR_BYTES} bytes"))
        })
    };
    let check = |t: &TensorProto, what: &str| -> Result<()> {
        let n = elements(&t.dims, what)?;
        let inline = t.float_data.len()
            + t.int32_data.len()
            + t.int64_data.len()
            + t.double_data.len()
            + t.uint64_data.len()
            + t.string_data.len();
        if !t.raw_data.is_empty() && (t.raw_data.len() as u64) < n {
            bail!(
                "{what}: shape {:?} needs more than its {} bytes",
                t.dims,
                t.raw_data.len()
            );
        }
        if t.raw_data.is_empty() && inline > 0 && (inline as u64) < n {
            bail!("{what}: shape {:?} needs more than its {inline} values", t.dims);
        }
        Ok(())
    };
    for t in &graph.initializer {
        check(t, &format!("initializer `{}`", t.name))?;
    }
    for node in &graph.node {
        for a in &node.attribute {
            if let Some(t) = &a.t {
                check(t, &format!("attribute `{}` of node `{}`", a.name, node.name))?;
            }
        }
    }
    check_shape_constants(graph)
}

/// The integer values of a tensor the file holds inline (`int64` or `int32`), at most
/// [`SHAPE_VALUES`] of them; `None` for any other type or a longer tensor.
fn int_values(t: &tract_onnx::pb::TensorProto) -> Option<Vec<i64>> {
    use tract_onnx::pb::tensor_proto::DataType;
    let (width, from_inline): (usize, Vec<i64>) = match DataType::try_from(t.data_type).ok()? {
        DataType::Int64 => (8, t.int64_data.clone()),
        DataType::Int32 => (4, t.int32_data.iter().map(|&v| v as i64).collect()),
        _ => return None,
    };
    let values: Vec<i64> = if t.raw_data.is_empty() {
        from_inline
    } else {
        t.raw_data
            .chunks_exact(width)
            .map(|c| match width {
                8 => i64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
                _ => i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64,
            })
            .collect()
    };
    (values.len() <= SHAPE_VALUES).then_some(values)
}

/// Longest shape or repeat list read by [`check_shape_constants`]: a tensor's rank is far
/// below this; a longer list is not a shape.
const SHAPE_VALUES: usize = 64;

/// Refuse constants that ask for a huge tensor to be made. tract evaluates an operator whose
/// inputs are all constant while it types the model, so a `ConstantOfShape`, `Expand`, `Tile`
/// or `Range` fed by a damaged constant (a shape value with a high bit set) would allocate and
/// fill gigabytes before any output shape can be checked. Each such input that the file holds
/// as a constant or initializer is read here, and a tensor it asks for beyond
/// [`MAX_TENSOR_BYTES`] (at 8 bytes per element) is refused, naming the node.
fn check_shape_constants(graph: &tract_onnx::pb::GraphProto) -> Result<()> {
    use std::collections::HashMap;
    let mut constants: HashMap<&str, &tract_onnx::pb::TensorProto> = HashMap::new();
    for t in &graph.initializer {
        constants.insert(t.name.as_str(), t);
    }
    for node in graph.node.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(out), Some(t)) = (node.output.first(), node.attribute.iter().find_map(|a| a.t.as_ref())) {
            constants.insert(out.as_str(), t);
        }
    }
    let values = |node: &tract_onnx::pb::NodeProto, k: usize| -> Option<Vec<i64>> {
        node.input
            .get(k)
            .and_then(|name| constants.get(name.as_str()))
            .and_then(|t| int_values(t))
    };
    let limit = MAX_TENSOR_BYTES / 8;
    let refuse = |node: &tract_onnx::pb::NodeProto, what: String| -> Result<()> {
        bail!(
            "{} node `{}`: {what}, larger than {MAX_TENSOR_BYTES} bytes",
            node.op_type,
            node.name
        )
    };
    for node in &graph.node {
        let (input, kind) = match node.op_type.as_str() {
            "ConstantOfShape" => (0, "shape"),
            "Expand" => (1, "shape"),
            "Tile" => (1, "repeats"),
            "Range" => {
                let (Some(start), Some(end), Some(step)) = (values(node, 0), values(node, 1), values(node, 2)) else {
                    continue;
                };
                let (Some(&start), Some(&end), Some(&step)) = (start.first(), end.first(), step.first()) else {
                    continue;
                };
                let span = (end as i128 - start as i128).unsigned_abs();
                let count = if step == 0 {
                    u128::MAX
                } else {
                    span / step.unsigned_abs() as u128
                };
                if count > limit as u128 {
                    refuse(node, format!("{count} values from {start} to {end} by {step}"))?;
                }
                continue;
            }
            _ => continue,
        };
        let Some(dims) = values(node, input) else { continue };
        if dims.iter().any(|&d| d < 0) {
            bail!("{} node `{}`: negative {kind} {dims:?}", node.op_type, node.name);
        }
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64).filter(|&n| n <= limit));
        if elements.is_none() {
            refuse(node, format!("{kind} {dims:?} asks for a tensor"))?;
        }
    }
    Ok(())
}

/// One loaded, optimised ONNX model with a fixed input shape and a reusable state.
pub struct Engine {
    state: TypedSimpleState,
    input: Arc<Tensor>,
    output_len: usize,
    output_shapes: Vec<Vec<usize>>,
    input_shape: Vec<usize>,
}

/// Errors while running a frame through the model; the station turns them into a fail-safe.
#[derive(Debug)]
pub enum RunError {
    /// tract refused or failed the run.
    Inference(String),
    /// The model produced an output of an unexpected shape or type.
    BadOutput(&'static str),
}

impl core::fmt::Display for RunError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RunError::Inference(e) => write!(f, "inference failed: {e}"),
            RunError::BadOutput(what) => write!(f, "model output {what}"),
        }
    }
}

impl std::error::Error for RunError {}

/// One node of the optimised plan, as [`Engine::plan`] lists it.
#[derive(Debug, Clone)]
pub struct PlanNode {
    /// tract's name of the operator (`QConvInt8` for the integer convolution).
    pub op: String,
    /// The node's name in the graph.
    pub name: String,
    /// The operator's own description (the kernel it picked, its geometry).
    pub info: Vec<String>,
    /// Indices (into the list) of the nodes whose outputs it reads.
    pub inputs: Vec<usize>,
    /// Datum type of its first output, as tract names it (`F32`, `U8`, `I32`…).
    pub output_type: String,
}

/// Each node of an optimised tract model, in evaluation order.
pub fn plan_of(model: &TypedModel) -> Vec<PlanNode> {
    model
        .nodes()
        .iter()
        .map(|n| PlanNode {
            op: n.op.name().to_string(),
            name: n.name.clone(),
            info: n.op.info().unwrap_or_default(),
            inputs: n.inputs.iter().map(|i| i.node).collect(),
            output_type: n
                .outputs
                .first()
                .map(|o| format!("{:?}", o.fact.datum_type))
                .unwrap_or_default(),
        })
        .collect()
}

impl Drop for Engine {
    fn drop(&mut self) {
        // tract's pooled blocks on this thread are freed with the engine that used them.
        crate::alloc_count::pool_release();
    }
}

impl Engine {
    /// The optimised plan this engine runs, node by node in evaluation order.
    pub fn plan(&self) -> Vec<PlanNode> {
        plan_of(self.state.plan().model())
    }

    /// Load `path`, fix its single input to `input_shape` (f32) and optimise for this CPU.
    /// The model must have one output of `expected_outputs` values (one score per class).
    pub fn load(path: &Path, input_shape: &[usize], expected_outputs: usize) -> Result<Engine> {
        let engine = Engine::load_outputs(path, input_shape)?;
        if engine.output_shapes.len() != 1 {
            bail!(
                "{}: model has {} outputs, expected 1",
                path.display(),
                engine.output_shapes.len()
            );
        }
        if engine.output_len != expected_outputs {
            bail!(
                "{}: output shape {:?} has {} values, the manifest lists {} classes",
                path.display(),
                engine.output_shapes[0],
                engine.output_len,
                expected_outputs
            );
        }
        Ok(engine)
    }

    /// Load a model with any number of fixed-shape outputs; [`Engine::run`] writes them one
    /// after the other. The caller checks [`Engine::output_shapes`].
    pub fn load_outputs(path: &Path, input_shape: &[usize]) -> Result<Engine> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read model", path.display()))?;
        Engine::from_bytes(&bytes, path, input_shape)
    }

    /// [`Engine::load_outputs`] of a model's bytes; `path` names it in errors.
    ///
    /// Damaged bytes give an error naming `path`, never a crash: tensors the file declares
    /// larger than [`MAX_TENSOR_BYTES`] (or larger than their data) are refused before tract
    /// allocates them, and a panic inside tract while reading, typing or optimising the model
    /// is caught and returned as an error.
    pub fn from_bytes(bytes: &[u8], path: &Path, input_shape: &[usize]) -> Result<Engine> {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Engine::from_bytes_unguarded(bytes, path, input_shape)
        }));
        match caught {
            Ok(r) => r,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                bail!("{}: not a loadable ONNX model (tract failed: {why})", path.display())
            }
        }
    }

    fn from_bytes_unguarded(bytes: &[u8], path: &Path, input_shape: &[usize]) -> Result<Engine> {
        let (proto, _fused) = crate::model::qconv::read_fused(bytes, check_tensor_sizes)
            .with_context(|| format!("{}: not a loadable ONNX model", path.display()))?;
        let model = crate::model::qconv::onnx()
            .model_for_proto_model(&proto)
            .with_context(|| format!("{}: not a loadable ONNX model", path.display()))?;
        let declared = model
            .input_fact(0)
            .with_context(|| format!("{}: model has no input", path.display()))?;
        if let Ok(Some(shape)) = declared.shape.as_concrete_finite() {
            if shape.as_slice() != input_shape {
                bail!(
                    "{}: the model's input is {:?}, field `input.shape` of the manifest says {:?}",
                    path.display(),
                    shape.as_slice(),
                    input_shape
                );
            }
        }
        let model = model
            .with_input_fact(0, f32::fact(input_shape).into())
            .with_context(|| {
                format!(
                    "{}: input shape {:?} does not fit the model",
                    path.display(),
                    input_shape
                )
            })?;
        let mut typed = model.into_typed().with_context(|| {
            format!(
                "{}: tract could not type the model for input {:?}",
                path.display(),
                input_shape
            )
        })?;
        typed
            .declutter()
            .and_then(|_| crate::model::pad::replace_reflect_pads(&mut typed))
            .and_then(|_| crate::model::pool::replace_average_pools(&mut typed))
            .and_then(|_| crate::model::reduce::replace_channel_max(&mut typed))
            .and_then(|_| crate::model::u8ops::replace_u8_pools_and_concats(&mut typed))
            .and_then(|_| crate::model::quant::replace_quantise(&mut typed))
            .with_context(|| format!("{}: tract could not simplify the model", path.display()))?;
        let mut typed = typed.into_optimized().with_context(|| {
            format!(
                "{}: tract could not optimise the model for input {:?}",
                path.display(),
                input_shape
            )
        })?;
        for node in typed.nodes() {
            for (k, o) in node.outputs.iter().enumerate() {
                let bytes = o.fact.shape.as_concrete().map(|s| {
                    s.iter()
                        .fold(o.fact.datum_type.size_of() as u64, |a, &d| a.saturating_mul(d as u64))
                });
                if bytes.is_some_and(|b| b > MAX_TENSOR_BYTES) {
                    bail!(
                        "{}: output {k} of node `{}` would take {} bytes, more than {MAX_TENSOR_BYTES}",
                        path.display(),
                        node.name,
                        bytes.unwrap_or(0)
                    );
                }
            }
        }
        crate::model::qconv::chain_channels_last(&mut typed)
            .with_context(|| format!("{}: cannot chain the integer convolutions", path.display()))?;
        let outputs = typed.output_outlets()?.len();
        if outputs == 0 {
            bail!("{}: model has no output", path.display());
        }
        let mut output_shapes = Vec::with_capacity(outputs);
        for k in 0..outputs {
            let fact = typed.output_fact(k)?.clone();
            let shape = fact
                .shape
                .as_concrete()
                .with_context(|| format!("{}: output {k} shape is not fixed", path.display()))?
                .to_vec();
            output_shapes.push(shape);
        }
        let output_len: usize = output_shapes.iter().map(|s| s.iter().product::<usize>()).sum();
        let plan = typed.into_runnable()?;
        let state = TypedSimpleState::new(&plan)?;
        let input = Arc::new(Tensor::zero::<f32>(input_shape)?);
        let mut engine = Engine {
            state,
            input,
            output_len,
            output_shapes,
            input_shape: input_shape.to_vec(),
        };
        // Warm-up: the first run sizes tract's scratch buffers.
        let mut scratch = vec![0.0f32; output_len];
        engine
            .run(&mut scratch)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{}: warm-up run failed", path.display()))?;
        Ok(engine)
    }

    /// The shape of each output, in order.
    pub fn output_shapes(&self) -> &[Vec<usize>] {
        &self.output_shapes
    }

    /// Fixed input shape (NCHW).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Number of output values.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// The input buffer, to be filled in place before [`Engine::run`]. Empty only if tract
    /// kept a reference to the previous input, which it does not between runs.
    pub fn input_mut(&mut self) -> &mut [f32] {
        let Some(tensor) = Arc::get_mut(&mut self.input) else {
            return &mut [];
        };
        match tensor.to_plain_array_view_mut::<f32>() {
            Ok(view) => view.into_slice().unwrap_or(&mut []),
            Err(_) => &mut [],
        }
    }

    /// Run the model on the current input and copy its outputs, one after the other, into
    /// `out`.
    pub fn run(&mut self, out: &mut [f32]) -> Result<(), RunError> {
        let input = TValue::from_const(self.input.clone());
        let outputs = self
            .state
            .run(tvec!(input))
            .map_err(|e| RunError::Inference(format!("{e:#}")))?;
        self.copy_outputs(outputs, out)
    }

    /// [`Engine::run`], adding the time each plan node takes to `per_node[node id]` (seconds;
    /// the vector grows to the plan's node count). For `bench --model-only`'s time by
    /// operator, not for the frame path: it reads the clock twice per node.
    pub fn run_timed(&mut self, out: &mut [f32], per_node: &mut Vec<f64>) -> Result<(), RunError> {
        let input = TValue::from_const(self.input.clone());
        let nodes = self.state.plan().model().nodes().len();
        if per_node.len() < nodes {
            per_node.resize(nodes, 0.0);
        }
        let outputs = self
            .state
            .run_plan_with_eval(tvec!(input), |ctx, state, node, inputs| {
                let t0 = std::time::Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, state, node, inputs);
                per_node[node.id] += t0.elapsed().as_secs_f64();
                r
            })
            .map_err(|e| RunError::Inference(format!("{e:#}")))?;
        self.copy_outputs(outputs, out)
    }

    fn copy_outputs(&self, outputs: TVec<TValue>, out: &mut [f32]) -> Result<(), RunError> {
        if outputs.len() != self.output_shapes.len() || out.len() < self.output_len {
            return Err(RunError::BadOutput("has the wrong number of values"));
        }
        let mut at = 0;
        for (o, shape) in outputs.iter().zip(&self.output_shapes) {
            let view = o
                .to_plain_array_view::<f32>()
                .map_err(|_| RunError::BadOutput("is not f32"))?;
            let view = view.as_slice().ok_or(RunError::BadOutput("is not contiguous"))?;
            if view.len() != shape.iter().product::<usize>() {
                return Err(RunError::BadOutput("has the wrong number of values"));
            }
            out[at..at + view.len()].copy_from_slice(view);
            at += view.len();
        }
        Ok(())
    }
}
