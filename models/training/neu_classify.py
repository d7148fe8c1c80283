"""Train the one-vs-all NEU classifier and ship it as int8 ONNX for tract.

    python3 models/training/neu_classify.py            # from the repository root

Writes models/neu_classify.onnx (int8), models/neu_classify.f32.onnx, the manifest
models/neu_classify.toml (without [metrics]; stamp_metrics.py adds what the Rust evaluator
measures), the held-out list models/neu_classify.heldout.txt, and the checkpoint
models/training/neu_classify.pt that add_class.py extends. reference.py records onnxruntime's
scores for the tests. train_all.sh runs the whole chain.
"""

import argparse
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def augment(x, gen):
    """Batch augmentation on normalised tensors: dihedral flips, +-20 degree rotation, scale,
    brightness and contrast (the seed study's brightness / rotation / flip recipe)."""
    n = x.shape[0]
    # flips
    hf = torch.rand(n, generator=gen) < 0.5
    vf = torch.rand(n, generator=gen) < 0.5
    x = torch.where(hf[:, None, None, None], x.flip(3), x)
    x = torch.where(vf[:, None, None, None], x.flip(2), x)
    ang = (torch.rand(n, generator=gen) * 40 - 20) * math.pi / 180
    scale = 1.0 / (0.85 + torch.rand(n, generator=gen) * 0.3)
    cos, sin = torch.cos(ang) * scale, torch.sin(ang) * scale
    tx = (torch.rand(n, generator=gen) - 0.5) * 0.2
    ty = (torch.rand(n, generator=gen) - 0.5) * 0.2
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # brightness / contrast in pixel units, then back to normalised
    b = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.3 / common.STD
    c = 0.8 + torch.rand(n, 1, 1, 1, generator=gen) * 0.4
    return x * c + b


def split(data, seed, fraction):
    """(training, held-out) relative paths: common.seeded_split over the six NEU class folders."""
    train, held = [], []
    for c in common.NEU_CLASSES:
        t, v = common.seeded_split(data, c, seed, fraction)
        train += t
        held += v
    return train, held


def load(data, paths):
    """Normalised images [N, 1, 200, 200] and class indices of NEU relative paths."""
    xs = np.stack([common.normalise(common.load_gray(os.path.join(data, p))) for p in paths])
    ys = np.array([common.NEU_CLASSES.index(p.split("/")[0]) for p in paths])
    return torch.from_numpy(xs)[:, None], torch.from_numpy(ys)


def fit(model, xtr, ytr, epochs, batch, lr, seed, xva=None, yva=None, log=lambda s: print(s, flush=True)):
    """Train a OneVsAll model in place: each head a binary BCE classifier (one-hot targets
    smoothed to 0.025/0.975), AdamW with a one-cycle schedule, the augment() above every batch.
    With xva/yva, every 10th epoch reports their accuracy (a report only: nothing is chosen)."""
    k = model.heads.out_features
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * math.ceil(len(xtr) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)

    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for i in range(0, len(xtr), batch):
            idx = perm[i : i + batch]
            x = augment(xtr[idx], gen)
            target = F.one_hot(ytr[idx], k).float()
            # one-vs-all: each head is an independent binary classifier
            loss = F.binary_cross_entropy_with_logits(model(x), target * 0.95 + 0.025)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        msg = f"epoch {epoch + 1}/{epochs} loss {total / len(xtr):.4f} {time.time() - t0:.1f}s"
        if xva is not None and ((epoch + 1) % 10 == 0 or epoch + 1 == epochs):
            model.eval()
            with torch.no_grad():
                pred = model(xva).argmax(1)
            msg += f" held-out acc {(pred == yva).float().mean().item() * 100:.2f}%"
        log(msg)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "neu_cls"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)

    train, held = split(args.data, args.seed, args.val_fraction)
    print(f"split: {len(train)} train, {len(held)} held out (seed {args.seed})")
    xtr, ytr = load(args.data, train)
    xva, yva = load(args.data, held)
    model = common.OneVsAll(len(common.NEU_CLASSES))
    print("parameters:", sum(p.numel() for p in model.parameters()))
    fit(model, xtr, ytr, args.epochs, args.batch, args.lr, args.seed, xva, yva)

    os.makedirs(args.out, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "classes": common.NEU_CLASSES}, os.path.join(ROOT, "models", "training", "neu_classify.pt"))
    with open(os.path.join(args.out, "neu_classify.heldout.txt"), "w") as fh:
        fh.write("\n".join(held) + "\n")

    ship(model, common.NEU_CLASSES, "neu_classify", args.out, args.data, train, held,
         design_note=None, extra_training={"epochs": args.epochs, "seed": args.seed})


def ship(model, classes, stem, out, data_root, train, held, design_note, extra_training, data_roots=None, calib_from=None,
         pinned_from=None, keep_f32_prefix=None, version="1.0.0", split_note=None):
    """Export f32 + int8 and write the manifest."""
    data_roots = data_roots or {c: data_root for c in classes}
    f32 = os.path.join(out, f"{stem}.f32.onnx")
    q8 = os.path.join(out, f"{stem}.onnx")
    common.export_onnx(model, f32)
    rng = random.Random(1234)
    calib_from = calib_from or train
    calib_paths = rng.sample(calib_from, min(240, len(calib_from)))
    calib = [common.load_gray(os.path.join(data_roots[p.split("/")[0]], p)) for p in calib_paths]
    pinned = common.pinned_grids(pinned_from) if pinned_from else None
    common.quantise_int8(f32, q8, calib, pinned, keep_f32_prefix)


    design = design_note or (
        "shared backbone with one independent sigmoid head per class (rows of one f32 linear layer). "
        "Each head is a binary one-vs-all classifier trained with its own BCE loss; a new class is one new "
        "row trained on the frozen backbone's descriptor, so the existing heads and their scores are unchanged. "
        "One backbone instead of one model per class keeps inference to a single small CNN pass on the board."
    )
    lines = [
        "# Manifest of a ferroscope classify model. Paths are relative to this file.",
        "[model]",
        f'name = "{stem}"',
        'tool = "classify"',
        f'version = "{version}"',
        f'file = "{stem}.onnx"',
        f'sha256 = "{common.sha256_file(q8)}"',
        f'f32_file = "{stem}.f32.onnx"',
        f'f32_sha256 = "{common.sha256_file(f32)}"',
        f'design = "{design}"',
        "",
        "[input]",
        'name = "image"',
        f"shape = [1, 1, {common.INPUT_SIZE}, {common.INPUT_SIZE}]",
        'layout = "NCHW"',
        'color = "gray"',
        'resize = "bilinear"',
        "# value = (pixel / 255 - mean) / std",
        f"mean = {common.MEAN}",
        f"std = {common.STD}",
        "",
        "[output]",
        'name = "scores"',
        'activation = "sigmoid"',
        "",
        "[quantisation]",
        'format = "onnx QDQ: int8 weights (per output channel, 7-bit range), uint8 activations (per-tensor) around each Conv+Relu; pooling and heads f32; the loader fuses each dequantise, convolution and quantise into one integer convolution'
        + ("; the added model stays f32 (quantised it cost more than the recipe allows on validation images), the shared backbone keeps the base model's grids" if keep_f32_prefix
           else "; the added model quantised too, the shared backbone keeps the base model's grids" if pinned_from else "")
        + '"',
        f'calibration = "MinMax over {len(calib)} training images"',
        'tool = "onnxruntime.quantization.quantize_static"',
        "",
        "[training]",
        f'recipe = "models/training/{"neu_classify.py" if stem == "neu_classify" else "add_class.py"}"',
        f'split = "{split_note}"' if split_note else
        f'split = "seeded per-class {100 - int(round(100 * len(held) / (len(held) + len(train))))}/{int(round(100 * len(held) / (len(held) + len(train))))} train/held-out, byte-identical duplicates kept on one side"',
        f'heldout_list = "{stem}.heldout.txt"',
        f"train_images = {len(train)}",
        f"heldout_images = {len(held)}",
    ]
    for key, val in extra_training.items():
        lines.append(f"{key} = {val!r}".replace("'", '"'))
    lines.append("")
    for c in classes:
        lines += ["[[classes]]", f'name = "{c}"', "threshold = 0.5", f'dataset = "{data_label(data_roots[c])}"', ""]
    with open(os.path.join(out, f"{stem}.toml"), "w") as fh:
        fh.write("\n".join(lines))
    print("wrote", q8, f32, os.path.join(out, f"{stem}.toml"))


def data_label(path):
    parts = os.path.normpath(path).split(os.sep)
    if "datasets" in parts:
        return "../shared/datasets/" + "/".join(parts[parts.index("datasets") + 1 :])
    return path


if __name__ == "__main__":
    main()
