//! The int8 models run their convolutions on integer kernels: every convolution that the file
//! places between a dequantise and a quantise is one integer operator in tract's optimised
//! plan, and no convolution or matrix product in the plan runs in f32 between a dequantise and
//! a quantise.

use std::collections::HashMap;
use std::path::PathBuf;

use ferroscope::model::engine::{plan_of, Engine, PlanNode};
use tract_onnx::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The int8 file and input shape a manifest names.
fn int8_model(stem: &str) -> (PathBuf, Vec<usize>) {
    let text = std::fs::read_to_string(root().join(format!("models/{stem}.toml"))).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    let file = v["model"]["file"].as_str().unwrap();
    let shape = v["input"]["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_integer().unwrap() as usize)
        .collect();
    (root().join("models").join(file), shape)
}

/// Convolutions in the ONNX file whose input is dequantised and whose only consumer quantises.
fn qdq_convs_in_file(path: &std::path::Path) -> usize {
    let proto = tract_onnx::onnx().proto_model_for_path(path).unwrap();
    let graph = proto.graph.unwrap();
    let producer: HashMap<&str, &str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n.op_type.as_str())))
        .collect();
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" && producer.get(n.input[0].as_str()) == Some(&"DequantizeLinear"))
        .filter(|n| {
            let users: Vec<_> = graph.node.iter().filter(|u| u.input.contains(&n.output[0])).collect();
            users.len() == 1 && users[0].op_type == "QuantizeLinear"
        })
        .count()
}

fn is_conv_like(op: &str) -> bool {
    // `OptMatMulPack` lays a matrix product's operand out for its kernel; it multiplies nothing
    ["Conv", "Im2col", "MatMul", "Mmm", "EinSum", "Gemm"]
        .iter()
        .any(|k| op.contains(k))
        && op != "QConvInt8"
        && !op.ends_with("Pack")
}

fn is_dequantise(op: &str) -> bool {
    op.contains("Dequantize") || op.contains("DeQuant")
}

fn is_quantise(op: &str) -> bool {
    // tract's QuantizeLinear ops, and ferroscope's one-pass `QuantiseU8` that replaces them
    !is_dequantise(op) && (op.contains("Quantize") || op.contains("Quantise"))
}

/// Within `hops` edges upstream (or downstream) of node `i`, is there a node satisfying `f`?
fn near(plan: &[PlanNode], i: usize, hops: usize, upstream: bool, f: &dyn Fn(&str) -> bool) -> bool {
    let mut frontier = vec![i];
    for _ in 0..hops {
        let next: Vec<usize> = if upstream {
            frontier.iter().flat_map(|&n| plan[n].inputs.clone()).collect()
        } else {
            (0..plan.len())
                .filter(|&u| plan[u].inputs.iter().any(|x| frontier.contains(x)))
                .collect()
        };
        if next.iter().any(|&n| f(&plan[n].op)) {
            return true;
        }
        frontier = next;
    }
    false
}

/// Check `stem`'s plan; returns it.
fn check(stem: &str) -> Vec<PlanNode> {
    if !ferroscope::model::qconv::fused_on_this_cpu() {
        // No dot-product kernel here: the portable one runs when asked for.
        std::env::set_var("FERROSCOPE_PORTABLE_KERNEL", "1");
    }
    let (path, shape) = int8_model(stem);
    let engine = Engine::load_outputs(&path, &shape).unwrap();
    let plan = engine.plan();
    let dump = || {
        plan.iter()
            .enumerate()
            .map(|(i, n)| format!("{i} {} {} {:?} <- {:?}", n.op, n.output_type, n.info, n.inputs))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let integer = plan.iter().filter(|n| n.op == "QConvInt8").count();
    let expected = qdq_convs_in_file(&path);
    assert!(expected > 0, "{stem}: the file has no quantised convolution");
    assert_eq!(
        integer,
        expected,
        "{stem}: {expected} quantised convolutions in the file, {integer} integer operators in the plan:\n{}",
        dump()
    );
    let between: Vec<usize> = (0..plan.len())
        .filter(|&i| {
            is_conv_like(&plan[i].op)
                && plan[i].output_type.contains("F32")
                && near(&plan, i, 3, true, &is_dequantise)
                && near(&plan, i, 3, false, &is_quantise)
        })
        .collect();
    assert!(
        between.is_empty(),
        "{stem}: nodes {between:?} run in f32 between a dequantise and a quantise:\n{}",
        dump()
    );
    // Every integer operator names the kernel it runs.
    for n in plan.iter().filter(|n| n.op == "QConvInt8") {
        assert!(n.info.iter().any(|s| s.contains("kernel")), "{stem}: {:?}", n.info);
    }
    plan
}

#[test]
fn classify_convolutions_are_integer() {
    check("neu_classify");
    // the added red_iron model is quantised too (1.1.0): its convolutions are integer as well
    let plan = check("neu7_classify");
    let base = check("neu_classify");
    let count = |p: &[PlanNode]| p.iter().filter(|n| n.op == "QConvInt8").count();
    assert!(
        count(&plan) > count(&base),
        "neu7: the added model's convolutions are not integer"
    );
}

#[test]
fn neu_segment_convolutions_are_integer() {
    check("neu_segment");
}

#[test]
fn segment_convolutions_are_integer() {
    check("kolektor_segment");
}

#[test]
fn anomaly_convolutions_are_integer() {
    check("kolektor_anomaly");
}

/// The grains model's twelve convolutions are integer; its three transposed convolutions carry
/// f32 weights in the file and run from the dequantised bytes straight into the quantised
/// concatenation that follows each (no f32 map between them).
#[test]
fn grains_convolutions_are_integer() {
    let plan = check("grains_316l");
    let (path, _) = int8_model("grains_316l");
    let proto = tract_onnx::onnx().proto_model_for_path(&path).unwrap();
    let in_file = proto
        .graph
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type == "ConvTranspose")
        .count();
    let upsampled: usize = plan
        .iter()
        .filter(|n| n.op == "QuantiseConcat")
        .map(|n| n.info.iter().map(|s| s.matches("upsampled").count()).sum::<usize>())
        .sum();
    assert_eq!(in_file, 3, "the grains file's transposed convolutions");
    if cfg!(target_arch = "arm") {
        // tract's NEON f32 kernels run them there (src/model/deconv.rs)
        assert_eq!(upsampled, 0);
        return;
    }
    assert_eq!(upsampled, in_file, "transposed convolutions run on bytes");
    assert!(
        !plan.iter().any(|n| n.op.contains("Deconv") || n.op.contains("MatMul")),
        "an f32 transposed convolution is left in the plan"
    );
}

/// The checker itself: tract's own plan of the same file (no fusion) has f32 convolutions
/// between dequantise and quantise, and the checker sees them.
#[test]
fn the_checker_sees_an_f32_convolution_between_dequantise_and_quantise() {
    let (path, shape) = int8_model("neu_classify");
    let model = tract_onnx::onnx()
        .model_for_path(&path)
        .unwrap()
        .with_input_fact(0, f32::fact(&shape).into())
        .unwrap()
        .into_optimized()
        .unwrap();
    let plan = plan_of(&model);
    let ops: Vec<&str> = plan.iter().map(|n| n.op.as_str()).collect();
    let flagged = (0..plan.len()).any(|i| {
        is_conv_like(&plan[i].op)
            && plan[i].output_type.contains("F32")
            && near(&plan, i, 3, true, &is_dequantise)
            && near(&plan, i, 3, false, &is_quantise)
    });
    assert!(flagged, "tract's plan of the QDQ file: {ops:?}");
}
