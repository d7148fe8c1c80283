"""Add one class to a shipped one-vs-all classifier without retraining the others.

    python3 models/training/add_class.py --name red_iron \\
        --folder ../shared/datasets/x_sdd/red_iron --out-stem neu7_classify

Only the new class's head is trained: the backbone and the existing heads are loaded from
models/training/neu_classify.pt and frozen, so the existing classes' scores are unchanged
(bit for bit in f32; in the int8 model the shared backbone keeps the base model's activation
grids exactly, pinned from models/neu_classify.onnx, while the new model's grids are calibrated
on base and new-class training images). Positives: a seeded 80/20 split of --folder
(images converted to gray and resized to the model input). Negatives: the base model's
training images. Writes models/<out-stem>.onnx/.f32.onnx/.toml/.heldout.txt/.reference.json.
"""

import argparse
import os
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from neu_classify import ROOT, augment, ship


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="new class name (also its folder name)")
    ap.add_argument("--folder", required=True, help="folder of images of the new class")
    ap.add_argument("--base", default=os.path.join(ROOT, "models", "training", "neu_classify.pt"))
    ap.add_argument("--base-data", default=os.path.join(ROOT, "..", "shared", "datasets", "neu_cls"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    ap.add_argument("--out-stem", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--head", choices=["linear", "mlp", "separate"], default="separate",
                    help="new head: a linear row or a one-hidden-layer head on the frozen descriptor, or a separate small binary model (the seed study's way)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    ckpt = torch.load(args.base, map_location="cpu")
    base_classes = ckpt["classes"]
    if args.name in base_classes:
        raise SystemExit(f"class {args.name!r} is already in {args.base}")
    model = common.OneVsAll(len(base_classes))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    # Same split as the base model for its classes; a seeded split of the new folder.
    base_train, base_held = [], []
    for c in base_classes:
        t, v = common.seeded_split(args.base_data, c, args.seed, args.val_fraction)
        base_train += t
        base_held += v
    new_root = os.path.dirname(os.path.abspath(args.folder))
    folder_name = os.path.basename(os.path.normpath(args.folder))
    if folder_name != args.name:
        raise SystemExit(f"--folder must be named after the class ({args.name}), got {folder_name}")
    new_train, new_held = common.seeded_split(new_root, args.name, args.seed, args.val_fraction)
    print(f"new class {args.name}: {len(new_train)} train, {len(new_held)} held out; negatives: {len(base_train)} base training images")

    roots = {c: args.base_data for c in base_classes}
    roots[args.name] = new_root
    paths = base_train + new_train
    x = torch.from_numpy(np.stack([common.normalise(common.load_gray(os.path.join(roots[p.split("/")[0]], p))) for p in paths]))[:, None]
    y = torch.tensor([1.0 if p.split("/")[0] == args.name else 0.0 for p in paths])

    if args.head == "separate":
        head = common.BinaryModel()
    elif args.head == "mlp":
        head = common.mlp_head(model.backbone.out_dim)
    else:
        head = nn.Linear(model.backbone.out_dim, 1)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = args.epochs * ((len(paths) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    pos_weight = torch.tensor([(y == 0).sum().item() / max(1.0, (y == 1).sum().item())])
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(paths), generator=gen)
        total = 0.0
        for i in range(0, len(paths), 64):
            idx = perm[i : i + 64]
            xb = augment(x[idx], gen)
            if args.head == "separate":
                head.train()
                out = head(xb)
            else:
                with torch.no_grad():
                    feats = model.backbone(xb)
                out = head(feats)
            loss = F.binary_cross_entropy_with_logits(out[:, 0], y[idx], pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs} head loss {total / len(paths):.4f}", flush=True)

    # New model: the same backbone, the old heads' rows unchanged, the new head appended.
    # Calibrate the new head against the existing ones, on training images only: an affine
    # map a*z+b of its logit (a > 0, so its ranking of images is unchanged) chosen so that
    # argmax over all heads is right as often as possible. The old heads are not touched.
    head.eval()
    with torch.no_grad():
        old_logits, new_logit = [], []
        for i in range(0, len(paths), 128):
            xb = x[i : i + 128]
            old_logits.append(model(xb)[:, : len(base_classes)])
            new_logit.append((head(xb) if args.head == "separate" else head(model.backbone(xb)))[:, 0])
        old_logits, new_logit = torch.cat(old_logits), torch.cat(new_logit)
    truth = torch.tensor([base_classes.index(p.split("/")[0]) if p.split("/")[0] in base_classes else len(base_classes) for p in paths])
    best = (-1.0, 1.0, 0.0)
    for a in [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]:
        for b in [x_ / 2 for x_ in range(-8, 9)]:
            z = torch.cat([old_logits, (a * new_logit + b)[:, None]], 1)
            acc = (z.argmax(1) == truth).float().mean().item()
            if acc > best[0] + 1e-9:
                best = (acc, a, b)
    acc, a, b = best
    print(f"new head calibration on training images: a={a} b={b} train accuracy {acc * 100:.2f}%")
    last = head.head if args.head == "separate" else (head[-1] if args.head == "mlp" else head)
    with torch.no_grad():
        last.weight.mul_(a)
        last.bias.mul_(a).add_(b)

    classes = base_classes + [args.name]
    if args.head == "linear":
        extended = common.OneVsAll(len(classes), backbone=model.backbone)
        with torch.no_grad():
            extended.heads.weight.copy_(torch.cat([model.heads.weight, head.weight]))
            extended.heads.bias.copy_(torch.cat([model.heads.bias, head.bias]))
    elif args.head == "mlp":
        extended = model
        extended.extra.append(head)
    else:
        extended = model
        extended.separate.append(head)
    extended.eval()
    with torch.no_grad():
        xs = torch.from_numpy(np.stack([common.normalise(common.load_gray(os.path.join(roots[p.split("/")[0]], p))) for p in new_held + base_held]))[:, None]
        ys = torch.tensor([classes.index(p.split("/")[0]) for p in new_held + base_held])
        acc = (extended(xs).argmax(1) == ys).float().mean().item()
    print(f"held-out {len(classes)}-class accuracy (PyTorch f32): {acc * 100:.2f}%")

    held = base_held + new_held
    with open(os.path.join(args.out, f"{args.out_stem}.heldout.txt"), "w") as fh:
        fh.write("\n".join(held) + "\n")
    how = {
        "linear": "a new linear head on the frozen backbone's descriptor",
        "mlp": "a new one-hidden-layer head on the frozen backbone's descriptor",
        "separate": "a separate small binary CNN (its own backbone and sigmoid head) run beside the shared backbone, as the seed study adds its 7th class",
    }[args.head]
    design = (
        f"the {len(base_classes)} heads and the backbone of {os.path.basename(args.base)} unchanged, plus {how} "
        f"for {args.name}, trained alone by add_class.py (--head {args.head}). Each class is an independent binary "
        "one-vs-all classifier; the existing classes' scores are unchanged."
    )
    ship(extended, classes, args.out_stem, args.out, args.base_data, base_train + new_train, held,
         design_note=design, extra_training={"epochs_new_head": args.epochs, "seed": args.seed, "base": "neu_classify"},
         data_roots=roots, calib_from=base_train + new_train,
         pinned_from=os.path.join(os.path.dirname(os.path.abspath(args.base)), "..", "neu_classify.onnx"),
         # The added binary model stays f32 inside the int8 file: quantised (per-tensor or
         # per-channel, 7-bit weights) it cost 1 to 3 points of 7-class accuracy.
         keep_f32_prefix="/model/separate" if args.head == "separate" else None)


if __name__ == "__main__":
    main()
