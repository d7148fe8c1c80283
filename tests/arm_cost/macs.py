#!/usr/bin/env python3
"""Multiply-accumulates per inference of an ONNX model, from its graph.

For the input shape a model manifest names (`[input] shape`), the shapes of every tensor are
inferred (onnx.shape_inference) and each product op counts:
  Conv           N * C_out * prod(out spatial) * (C_in / group) * prod(kernel)
  ConvTranspose  N * C_in * prod(in spatial) * (C_out / group) * prod(kernel)
  Gemm           M * N * K
  MatMul         prod(batch) * M * N * K
Everything else (pooling, activations, quantise/dequantise, element-wise) counts no MACs: it is
the overhead the instruction count shows beside the MACs.

  python3 tests/arm_cost/macs.py models/neu_classify.toml            # both files, JSON lines
  python3 tests/arm_cost/macs.py models/neu_classify.toml --precision int8

Prints one JSON object per model file: {"model", "precision", "file", "input_shape",
"macs_per_inference", "by_op": {op_type: MACs}}. A product op whose shapes cannot be inferred
is an error naming the file and node, never a silent zero.
"""
import argparse
import json
import math
import os
import sys
import tomllib

try:
    import onnx
    from onnx import numpy_helper, shape_inference
except ImportError:
    sys.exit("macs.py needs the onnx package: pip install onnx")


def fail(msg):
    sys.exit(f"macs.py: {msg}")


def fold_constants(model):
    """Evaluate the nodes whose inputs are all constant (shape arithmetic feeding Pad or
    Reshape, for example) and put their outputs in as initializers, so shape inference sees
    concrete pads and shapes."""
    from onnx.reference import ReferenceEvaluator

    known = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        ins = [n for n in node.input if n]
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") and all(n in known for n in ins):
            outs = ReferenceEvaluator(node).run(None, {n: known[n] for n in ins})
            for name, value in zip(node.output, outs):
                known[name] = value
                model.graph.initializer.append(numpy_helper.from_array(value, name))
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def shapes_of(model, path):
    """name -> concrete shape (list of ints) for every tensor shape inference resolves."""
    fold_constants(model)
    inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if all(d is not None for d in dims):
            shapes[vi.name] = dims
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = list(numpy_helper.to_array(a.t).shape)
    return shapes


def attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def count(path, input_shape):
    model = onnx.load(path)
    if len(model.graph.input) == 0:
        fail(f"{path}: the model has no input")
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        fail(f"{path}: input {inp.name} has rank {len(dims)}, the manifest's input.shape {input_shape}")
    for d, v in zip(dims, input_shape):
        if d.HasField("dim_value") and d.dim_value != v:
            fail(f"{path}: input {inp.name} is {[x.dim_value for x in dims]}, the manifest's input.shape {input_shape}")
        d.ClearField("dim_param")
        d.dim_value = v
    shapes = shapes_of(model, path)

    def shape(node, name):
        if name not in shapes:
            fail(f"{path}: node {node.name or node.op_type} ({node.op_type}): shape of {name} not inferred")
        return shapes[name]

    by_op = {}
    for node in model.graph.node:
        op = node.op_type
        if op == "Conv":
            w = shape(node, node.input[1])
            y = shape(node, node.output[0])
            # w: [C_out, C_in / group, k...]
            macs = y[0] * y[1] * math.prod(y[2:]) * w[1] * math.prod(w[2:])
        elif op == "ConvTranspose":
            x = shape(node, node.input[0])
            w = shape(node, node.input[1])  # [C_in, C_out / group, k...]
            macs = x[0] * x[1] * math.prod(x[2:]) * w[1] * math.prod(w[2:])
        elif op == "Gemm":
            a = shape(node, node.input[0])
            y = shape(node, node.output[0])
            k = a[0] if attr(node, "transA", 0) else a[1]
            macs = y[0] * y[1] * k
        elif op == "MatMul":
            a = shape(node, node.input[0])
            y = shape(node, node.output[0])
            k = a[-1]
            macs = math.prod(y) * k
        elif op in ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger"):
            w_ix = 3 if op.startswith("QLinear") else 1
            w = shape(node, node.input[w_ix])
            y = shape(node, node.output[0])
            if "Conv" in op:
                macs = y[0] * y[1] * math.prod(y[2:]) * w[1] * math.prod(w[2:])
            else:
                a = shape(node, node.input[0])
                macs = math.prod(y) * a[-1]
        elif op in ("If", "Loop", "Scan"):
            fail(f"{path}: node {node.name} ({op}): control flow is not counted")
        else:
            continue
        by_op[op] = by_op.get(op, 0) + int(macs)
    return sum(by_op.values()), by_op


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("manifest")
    ap.add_argument("--precision", choices=["int8", "f32"], action="append")
    args = ap.parse_args()
    try:
        with open(args.manifest, "rb") as f:
            man = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(f"{args.manifest}: {e}")
    base = os.path.dirname(os.path.abspath(args.manifest))
    try:
        name = man["model"]["name"]
        shape = [int(v) for v in man["input"]["shape"]]
        files = {"int8": man["model"]["file"], "f32": man["model"].get("f32_file")}
    except (KeyError, TypeError, ValueError) as e:
        fail(f"{args.manifest}: field {e} missing or malformed (model.name, model.file, input.shape)")
    for p in args.precision or ["int8", "f32"]:
        if files[p] is None:
            if args.precision:
                fail(f"{args.manifest}: no model.f32_file")
            continue
        path = os.path.join(base, files[p])
        macs, by_op = count(path, shape)
        if macs <= 0:
            fail(f"{path}: no Conv/ConvTranspose/Gemm/MatMul found")
        print(json.dumps({"model": name, "precision": p, "file": os.path.relpath(path),
                          "input_shape": shape, "macs_per_inference": macs, "by_op": by_op}))


if __name__ == "__main__":
    main()
