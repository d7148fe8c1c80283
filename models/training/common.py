"""Shared pieces of the classify recipes: dataset listing, the seeded split, image loading
exactly as the Rust runtime preprocesses it, the network, and ONNX export + int8 quantisation.
"""

import hashlib
import json
import os
import random

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

NEU_CLASSES = [
    "crazing",
    "inclusion",
    "patches",
    "pitted_surface",
    "rolled-in_scale",
    "scratches",
]
INPUT_SIZE = 200  # model input is 1x1x200x200 (NCHW), the native NEU size
MEAN = 0.5
STD = 0.25
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def list_class_dir(folder):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS))


def seeded_split(root, class_name, seed, val_fraction):
    """Split one class folder into (train, held_out) relative paths.

    Byte-identical files are grouped so duplicates always land on the same side.
    """
    folder = os.path.join(root, class_name)
    groups = {}
    for name in list_class_dir(folder):
        with open(os.path.join(folder, name), "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        groups.setdefault(digest, []).append(f"{class_name}/{name}")
    keys = sorted(groups, key=lambda k: groups[k][0])
    rng = random.Random(f"{seed}:{class_name}")
    rng.shuffle(keys)
    n_val = round(len(keys) * val_fraction)
    val = sorted(p for k in keys[:n_val] for p in groups[k])
    train = sorted(p for k in keys[n_val:] for p in groups[k])
    return train, val


def to_gray(rgb):
    """Gray as the runtime decodes a colour file (image crate `into_luma8`: Rec. 709, truncated)."""
    a = rgb.astype(np.uint32)
    return ((2126 * a[..., 0] + 7152 * a[..., 1] + 722 * a[..., 2]) // 10000).astype(np.uint8)


def load_gray(path):
    """Gray image resized to the model input, as uint8 HxW (bilinear, like the runtime). A colour
    file's gray is the runtime decoder's (the image crate's `into_luma8`: Rec. 709 weights,
    truncated), not PIL's "L" (Rec. 601), so that training sees the pixels `ferroscope` sees."""
    im = Image.open(path)
    if im.mode in ("L", "I;16", "I", "F", "1"):
        im = im.convert("L")
    else:
        im = Image.fromarray(to_gray(np.asarray(im.convert("RGB"))), "L")
    if im.size != (INPUT_SIZE, INPUT_SIZE):
        im = im.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def normalise(u8):
    return (u8.astype(np.float32) / 255.0 - MEAN) / STD


class Backbone(nn.Module):
    """Small CNN shared by every one-vs-all head. 200x200 is averaged down to 100x100 inside
    the graph, then five 3x3 conv blocks; the output is a 128-value descriptor."""

    def __init__(self, width=(24, 48, 64, 96, 128)):
        super().__init__()
        c1, c2, c3, c4, c5 = width
        layers = [nn.AvgPool2d(2)]
        spec = [(1, c1, 2), (c1, c2, 2), (c2, c3, 2), (c3, c4, 1), (c4, c5, 2)]
        for cin, cout, stride in spec:
            layers += [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = c5

    def forward(self, x):
        return torch.flatten(self.pool(self.features(x)), 1)


class OneVsAll(nn.Module):
    """Backbone + one independent binary (sigmoid) head per class.

    The heads are rows of one linear layer: row k sees only the shared descriptor, so a new
    class is a new row trained on frozen features and the existing rows never change."""

    def __init__(self, n_classes, backbone=None):
        super().__init__()
        self.backbone = backbone or Backbone()
        self.heads = nn.Linear(self.backbone.out_dim, n_classes)
        # Heads added later with a hidden layer (add_class.py --head mlp), appended in order.
        self.extra = nn.ModuleList()
        # Classes added later as separate binary models (add_class.py --head separate).
        self.separate = nn.ModuleList()

    def forward(self, x):
        f = self.backbone(x)
        logits = self.heads(f)
        if len(self.extra) == 0 and len(self.separate) == 0:
            return logits  # logits; sigmoid is added for export
        return torch.cat([logits] + [h(f) for h in self.extra] + [m(x) for m in self.separate], 1)


class BinaryModel(nn.Module):
    """A separate one-vs-all model for one added class: its own small backbone and head."""

    def __init__(self, width=(16, 32, 48, 64, 96)):
        super().__init__()
        self.backbone = Backbone(width)
        self.head = nn.Linear(self.backbone.out_dim, 1)

    def forward(self, x):
        return self.head(self.backbone(x))


def mlp_head(in_dim, hidden=64):
    """A binary head with one hidden layer, for a class the linear descriptor does not
    separate well enough; it still reads only the frozen backbone's descriptor."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class ExportWrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.sigmoid(self.model(x))


def fuse_for_export(model):
    """Fold BatchNorm into the preceding conv so the int8 graph is Conv(+Relu) only."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(model).eval()
    for sep in getattr(m, "separate", []):
        fuse_backbone(sep.backbone)
    fuse_backbone(m.backbone)
    return m


def fuse_sequential(seq):
    """The modules of `seq` with every Conv2d followed by BatchNorm2d folded into one conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    new = []
    i = 0
    mods = list(seq)
    while i < len(mods):
        if isinstance(mods[i], nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
            new.append(fuse_conv_bn_eval(mods[i], mods[i + 1]))
            i += 2
        else:
            new.append(mods[i])
            i += 1
    return nn.Sequential(*new)


def fuse_backbone(backbone):
    backbone.features = fuse_sequential(backbone.features)


def export_onnx(model, path):
    m = ExportWrapper(fuse_for_export(model)).eval()
    dummy = torch.zeros(1, 1, INPUT_SIZE, INPUT_SIZE)
    torch.onnx.export(
        m,
        dummy,
        path,
        input_names=["image"],
        output_names=["scores"],
        opset_version=13,
        do_constant_folding=True,
        dynamo=False,
    )


def pinned_grids(int8_path):
    """Activation grids (scale, zero point) of every quantised tensor of an int8 QDQ model,
    as onnxruntime TensorQuantOverrides, so a model that extends it keeps them exactly."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(int8_path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in inits:
            out[n.input[0]] = [{"scale": inits[n.input[1]].astype(np.float32), "zero_point": inits[n.input[2]]}]
    return out


def quantise_int8(f32_path, int8_path, calib_images, pinned=None, keep_f32_prefix=None):
    """Static int8 in QDQ form: int8 weights (7-bit range) and per-tensor u8 activation grids around every
    Conv(+Relu); pooling and the heads stay f32.

    Why QDQ and not QOperator (QLinearConv): measured with tract 0.23.9 on x86-64, one thread,
    this backbone runs 1.4 ms as QDQ and 53 ms as per-tensor QLinearConv. The heads stay f32
    so that adding a class leaves the existing classes' scores bit-identical."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": normalise(u8)[None, None]} for u8 in calib_images])

        def get_next(self):
            return next(self.it, None)

    import onnx

    excluded = []
    if keep_f32_prefix:
        excluded = [n.name for n in onnx.load(f32_path).graph.node if n.name.startswith(keep_f32_prefix)]
    quantize_static(
        f32_path,
        int8_path,
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv", "Relu"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        # 7-bit weight range: onnxruntime's x86 u8*s8 kernels (VPMADDUBSW) saturate int16 pair
        # sums with full-range weights; measured here, the peer's scores then drifted by up to
        # 0.97 from the f32 model. With reduce_range both runtimes stay within 0.05 of f32.
        reduce_range=True,
        extra_options={"TensorQuantOverrides": pinned} if pinned else {},
        nodes_to_exclude=excluded,
    )


def sha256_file(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def ort_fn(onnx_path, all_outputs=False):
    """A one-thread onnxruntime session on `onnx_path`, as a function of a float array shaped
    like the model's input: its first output (every output with `all_outputs`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    if all_outputs:
        return lambda a: sess.run(None, {"image": a.astype(np.float32)})
    return lambda a: sess.run(None, {"image": a.astype(np.float32)})[0]


def ort_scores(onnx_path, images_u8):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    out = []
    for u8 in images_u8:
        out.append(sess.run(None, {"image": normalise(u8)[None, None]})[0][0])
    return np.stack(out)


def write_json(path, obj):
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")
