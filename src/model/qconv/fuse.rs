//! The graph rewrite: `DequantizeLinear → Conv → QuantizeLinear` triples that [`super::QConv`]
//! runs exactly become one [`FUSED_OP`] node (ONNX `QLinearConv`'s inputs and attributes), before
//! tract parses the file. Guarantee: a triple is rewritten only when every scale and zero point
//! is a constant of the kinds the operator handles; anything else is left as the file has it.

use std::collections::HashMap;

use anyhow::Result;
use tract_onnx::pb::{self, AttributeProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;

use super::FUSED_OP;

fn tensor_f32(t: &TensorProto) -> Option<Vec<f32>> {
    let t = tract_onnx::tensor::load_tensor(&*tract_onnx::data_resolver::default(), t, None).ok()?;
    let t = t.cast_to::<f32>().ok()?;
    Some(t.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec())
}

/// Every value of an integer tensor is zero (a zero point that adds nothing).
fn all_zero(t: &Tensor) -> bool {
    t.cast_to::<i32>()
        .ok()
        .and_then(|z| {
            z.try_as_plain_ram()
                .ok()
                .and_then(|v| v.as_slice::<i32>().ok().map(|s| s.iter().all(|&x| x == 0)))
        })
        .unwrap_or(false)
}

fn tensor_dt(t: &TensorProto) -> Option<Tensor> {
    tract_onnx::tensor::load_tensor(&*tract_onnx::data_resolver::default(), t, None).ok()
}

/// Rewrite every `DequantizeLinear → Conv → QuantizeLinear` triple that [`QConv`](super::QConv) runs exactly
/// into one [`FUSED_OP`] node; the dequantise nodes left without a consumer are removed.
pub fn fuse_qdq_convs(proto: &mut ModelProto) -> Result<usize> {
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(0);
    };
    let inits: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let producer: HashMap<String, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i)))
        .collect();
    let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for input in &n.input {
            consumers.entry(input.clone()).or_default().push(i);
        }
    }
    let graph_outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();

    let init = |name: &str| inits.get(name).map(|&i| &graph.initializer[i]);
    let dq_of = |name: &str| -> Option<usize> {
        let &p = producer.get(name)?;
        (graph.node[p].op_type == "DequantizeLinear" && graph.node[p].input.len() == 3).then_some(p)
    };

    let mut new_nodes: Vec<(usize, NodeProto)> = vec![];
    let mut remove: Vec<usize> = vec![];
    let mut new_inits: Vec<TensorProto> = vec![];
    for (ci, conv) in graph.node.iter().enumerate() {
        // Damaged files reach here too (`tests/generated_inputs.rs`): only whole nodes fuse.
        if conv.op_type != "Conv" || conv.input.len() < 2 || conv.output.len() != 1 {
            continue;
        }
        let attr = |n: &str| conv.attribute.iter().find(|a| a.name == n);
        if let Some(a) = attr("auto_pad") {
            if a.s != b"NOTSET" && !a.s.is_empty() {
                continue;
            }
        }
        match attr("kernel_shape") {
            Some(a) if a.ints.len() == 2 => {}
            _ => continue,
        }
        if graph_outputs.contains(&conv.output[0]) {
            continue;
        }
        let Some(users) = consumers.get(&conv.output[0]) else {
            continue;
        };
        if users.len() != 1 || graph.node[users[0]].op_type != "QuantizeLinear" {
            continue;
        }
        let q = &graph.node[users[0]];
        if q.input.len() != 3 || q.output.len() != 1 {
            continue;
        }
        let (Some(dx), Some(dw)) = (dq_of(&conv.input[0]), dq_of(&conv.input[1])) else {
            continue;
        };
        let (dx, dw) = (&graph.node[dx], &graph.node[dw]);
        // Activations: u8, one scale, one zero point; the output the same.
        let scalar_u8 = |scale: &str, zp: &str| -> Option<(f32, u8)> {
            let s = tensor_f32(init(scale)?)?;
            let z = tensor_dt(init(zp)?)?;
            if s.len() != 1 || z.len() != 1 || z.datum_type() != u8::datum_type() {
                return None;
            }
            Some((s[0], z.try_as_plain_ram().ok()?.as_slice::<u8>().ok()?[0]))
        };
        let Some((sx, _)) = scalar_u8(&dx.input[1], &dx.input[2]) else {
            continue;
        };
        if scalar_u8(&q.input[1], &q.input[2]).is_none() {
            continue;
        }
        // Weights: an i8 constant, zero zero points, one scale or one per output channel.
        let Some(w) = init(&dw.input[0]).and_then(tensor_dt) else {
            continue;
        };
        if w.datum_type() != i8::datum_type() || w.rank() != 4 {
            continue;
        }
        let m = w.shape()[0];
        let Some(sw) = init(&dw.input[1]).and_then(tensor_f32) else {
            continue;
        };
        let Some(zw) = init(&dw.input[2]).and_then(tensor_dt) else {
            continue;
        };
        if !all_zero(&zw) || !(sw.len() == 1 || sw.len() == m) {
            continue;
        }
        if sw.len() > 1 {
            let axis = dw.attribute.iter().find(|a| a.name == "axis").map(|a| a.i).unwrap_or(1);
            if axis != 0 {
                continue;
            }
        }
        // Bias: an i32 constant dequantised with zero zero points, requantised to sx·sw if its
        // scale differs.
        let mut bias_name = None;
        if conv.input.len() > 2 && !conv.input[2].is_empty() {
            let Some(db) = dq_of(&conv.input[2]) else { continue };
            let db_node = &graph.node[db];
            let Some(b) = init(&db_node.input[0]).and_then(tensor_dt) else {
                continue;
            };
            let Some(sb) = init(&db_node.input[1]).and_then(tensor_f32) else {
                continue;
            };
            let Some(zb) = init(&db_node.input[2]).and_then(tensor_dt) else {
                continue;
            };
            if b.datum_type() != i32::datum_type() || b.len() != m || !all_zero(&zb) {
                continue;
            }
            let b = b.try_as_plain_ram()?.as_slice::<i32>()?.to_vec();
            let exact = (0..m).all(|j| {
                let want = sx as f64 * sw[if sw.len() == 1 { 0 } else { j }] as f64;
                let have = sb[if sb.len() == 1 { 0 } else { j }] as f64;
                ((want - have) / want).abs() < 1e-6
            });
            if exact {
                bias_name = Some(db_node.input[0].clone());
            } else {
                let rq: Vec<i32> = (0..m)
                    .map(|j| {
                        let want = sx as f64 * sw[if sw.len() == 1 { 0 } else { j }] as f64;
                        let have = sb[if sb.len() == 1 { 0 } else { j }] as f64;
                        (b[j] as f64 * have / want).round() as i32
                    })
                    .collect();
                let name = format!("{}__bias_sxsw", conv.name);
                new_inits.push(TensorProto {
                    name: name.clone(),
                    dims: vec![m as i64],
                    data_type: pb::tensor_proto::DataType::Int32 as i32,
                    int32_data: rq,
                    ..Default::default()
                });
                bias_name = Some(name);
            }
        }
        let mut inputs = vec![
            dx.input[0].clone(),
            dx.input[1].clone(),
            dx.input[2].clone(),
            dw.input[0].clone(),
            dw.input[1].clone(),
            dw.input[2].clone(),
            q.input[1].clone(),
            q.input[2].clone(),
        ];
        if let Some(b) = bias_name {
            inputs.push(b);
        }
        let attributes: Vec<AttributeProto> = conv
            .attribute
            .iter()
            .filter(|a| ["kernel_shape", "strides", "pads", "dilations", "group"].contains(&a.name.as_str()))
            .cloned()
            .collect();
        new_nodes.push((
            ci,
            NodeProto {
                name: format!("{}__int8", conv.name),
                op_type: FUSED_OP.to_string(),
                input: inputs,
                output: vec![q.output[0].clone()],
                attribute: attributes,
                ..Default::default()
            },
        ));
        remove.push(ci);
        remove.push(users[0]);
    }
    let fused = new_nodes.len();
    if fused == 0 {
        return Ok(0);
    }
    graph.initializer.extend(new_inits);
    let mut replaced: HashMap<usize, NodeProto> = new_nodes.into_iter().collect();
    let old = std::mem::take(&mut graph.node);
    for (i, n) in old.into_iter().enumerate() {
        if let Some(f) = replaced.remove(&i) {
            graph.node.push(f);
        } else if !remove.contains(&i) {
            graph.node.push(n);
        }
    }
    // Dequantise nodes whose every consumer was fused away.
    loop {
        let used: std::collections::HashSet<&str> = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(|s| s.as_str()))
            .chain(graph.output.iter().map(|o| o.name.as_str()))
            .collect();
        let dead: Vec<usize> = graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| n.op_type == "DequantizeLinear" && n.output.iter().all(|o| !used.contains(o.as_str())))
            .map(|(i, _)| i)
            .collect();
        if dead.is_empty() {
            break;
        }
        for i in dead.into_iter().rev() {
            graph.node.remove(i);
        }
    }
    Ok(fused)
}
