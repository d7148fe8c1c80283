"""Add one class to a shipped one-vs-all classifier without retraining the others.

    python3 models/training/add_class.py --name red_iron \\
        --folder ../shared/datasets/x_sdd/red_iron --out-stem neu7_classify --epochs 30

Only the new class's model is trained: the backbone and the existing heads are loaded from
models/training/neu_classify.pt and frozen, so the existing classes' scores are unchanged
(bit for bit in f32; in the int8 model the shared backbone keeps the base model's activation
grids exactly, pinned from models/neu_classify.onnx).

Data, every image converted to gray and resized to the model input as the runtime does it
(common.load_gray: a colour file's gray is the runtime decoder's, Rec. 709):
- positives: a seeded 80/20 train/held-out split of --folder;
- negatives: the base model's training images and, so that the new class learns the defect and
  not the dataset it came from, the other classes beside --folder (for red_iron: X-SDD's six
  other defect classes), each split 80/20 the same way (--no-sibling-negatives leaves them out).
Duplicates (byte-identical files) stay on one side of every split.

Protocol: everything is chosen on a validation part carved from the training pool (20 % of
each class, by duplicate group); the held-out lists are not read here beyond writing them.
1. Selection: the new model is trained on the rest of the pool, calibrated on it, exported,
   and scored on the validation part with onnxruntime, once with the new model in f32 inside
   the int8 file and once quantised with it. The quantised one ships unless it costs more than
   one validation image of the 7-class accuracy or one more false new-class call on the
   validation images of the sibling classes.
2. Ship: the same training on the whole pool, calibration on it, export with the chosen
   quantisation. Writes models/<out-stem>.onnx/.f32.onnx/.toml/.heldout.txt and
   models/training/<out-stem>.metrics.json (the selection's figures). The held-out list is then
   scored once by `ferroscope eval classify ... --heldout-log models/heldout_log.jsonl`.
"""

import argparse
import hashlib
import json
import os
import random
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from neu_classify import ROOT, augment, ship

VERSION = "1.1.0"
# The quantised new model ships unless it loses more than this many validation images.
INT8_MAX_LOSS = 1


def split_list(paths, roots, seed, fraction):
    """Carve `fraction` of each class of `paths` (class/name) by duplicate group: (rest, carved)."""
    by_class = {}
    for p in paths:
        by_class.setdefault(p.split("/")[0], []).append(p)
    rest, carved = [], []
    for c in sorted(by_class):
        groups = {}
        for p in by_class[c]:
            with open(os.path.join(roots[c], p), "rb") as fh:
                groups.setdefault(hashlib.sha256(fh.read()).hexdigest(), []).append(p)
        keys = sorted(groups, key=lambda k: groups[k][0])
        random.Random(f"validation:{seed}:{c}").shuffle(keys)
        n = round(len(keys) * fraction)
        carved += sorted(p for k in keys[:n] for p in groups[k])
        rest += sorted(p for k in keys[n:] for p in groups[k])
    return rest, carved


def load_base(path):
    ckpt = torch.load(path, map_location="cpu")
    model = common.OneVsAll(len(ckpt["classes"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, ckpt["classes"]


def tensors(paths, roots):
    return torch.from_numpy(np.stack([common.normalise(common.load_gray(os.path.join(roots[p.split("/")[0]], p))) for p in paths]))[:, None]


def train_new(args, base, base_classes, paths, roots, name):
    """Train the new class's model on `paths` (positives: class `name`) beside the frozen `base`
    (classes `base_classes`), calibrate it against the frozen heads on the same images, and
    return the extended model."""
    torch.manual_seed(args.seed)
    x = tensors(paths, roots)
    y = torch.tensor([1.0 if p.split("/")[0] == name else 0.0 for p in paths])
    if args.head == "separate":
        head = common.BinaryModel()
    elif args.head == "mlp":
        head = common.mlp_head(base.backbone.out_dim)
    else:
        head = nn.Linear(base.backbone.out_dim, 1)
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
                    feats = base.backbone(xb)
                out = head(feats)
            loss = F.binary_cross_entropy_with_logits(out[:, 0], y[idx], pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs} head loss {total / len(paths):.4f}", flush=True)

    # Calibrate the new head against the existing ones, on the same training images: an affine
    # map a*z+b of its logit (a > 0, so its ranking of images is unchanged) chosen to make the
    # most training images come out right: an image of the model's classes when argmax over all
    # heads is its class, an image of a sibling class when the new class does not both win the
    # argmax and pass its 0.5 threshold (the station's call). The old heads are not touched.
    head.eval()
    classes = base_classes + [name]
    with torch.no_grad():
        old_logits, new_logit = [], []
        for i in range(0, len(paths), 128):
            xb = x[i : i + 128]
            old_logits.append(base(xb)[:, : len(base_classes)])
            new_logit.append((head(xb) if args.head == "separate" else head(base.backbone(xb)))[:, 0])
        old_logits, new_logit = torch.cat(old_logits), torch.cat(new_logit)
    known = torch.tensor([p.split("/")[0] in classes for p in paths])
    truth = torch.tensor([classes.index(p.split("/")[0]) if p.split("/")[0] in classes else -1 for p in paths])
    best = (-1.0, 1.0, 0.0)
    for a in [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]:
        for b in [x_ / 2 for x_ in range(-8, 9)]:
            zn = a * new_logit + b
            z = torch.cat([old_logits, zn[:, None]], 1)
            win = z.argmax(1)
            right = torch.where(known, win == truth, ~((win == len(classes) - 1) & (zn > 0)))
            acc = right.float().mean().item()
            if acc > best[0] + 1e-9:
                best = (acc, a, b)
    acc, a, b = best
    print(f"new head calibration on {len(paths)} training images: a={a} b={b} right {acc * 100:.2f}%")
    last = head.head if args.head == "separate" else (head[-1] if args.head == "mlp" else head)
    with torch.no_grad():
        last.weight.mul_(a)
        last.bias.mul_(a).add_(b)

    if args.head == "linear":
        extended = common.OneVsAll(len(classes), backbone=base.backbone)
        with torch.no_grad():
            extended.heads.weight.copy_(torch.cat([base.heads.weight, head.weight]))
            extended.heads.bias.copy_(torch.cat([base.heads.bias, head.bias]))
    elif args.head == "mlp":
        extended = base
        extended.extra.append(head)
    else:
        extended = base
        extended.separate.append(head)
    extended.eval()
    return extended, {"calibration_a": a, "calibration_b": b, "calibration_accuracy": acc}


def score_onnx(path, paths, roots, classes, name):
    """7-class accuracy on the images of the model's classes, and the new class's false calls
    (argmax, and score > 0.5) on the others."""
    u8 = [common.load_gray(os.path.join(roots[p.split("/")[0]], p)) for p in paths]
    s = common.ort_scores(path, u8)
    new = classes.index(name)
    known = [i for i, p in enumerate(paths) if p.split("/")[0] in classes]
    other = [i for i, p in enumerate(paths) if p.split("/")[0] not in classes]
    right = sum(int(np.argmax(s[i]) == classes.index(paths[i].split("/")[0])) for i in known)
    return {
        "images": len(known),
        "right": right,
        "accuracy": right / max(1, len(known)),
        "errors": [paths[i] for i in known if np.argmax(s[i]) != classes.index(paths[i].split("/")[0])],
        "sibling_images": len(other),
        # the station's call: the new class wins the argmax and passes its 0.5 threshold
        "sibling_called_new": sum(int(np.argmax(s[i]) == new and s[i][new] > 0.5) for i in other),
        "sibling_new_over_half": sum(int(s[i][new] > 0.5) for i in other),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="new class name (also its folder name)")
    ap.add_argument("--folder", required=True, help="folder of images of the new class")
    ap.add_argument("--base", default=os.path.join(ROOT, "models", "training", "neu_classify.pt"))
    ap.add_argument("--base-data", default=os.path.join(ROOT, "..", "shared", "datasets", "neu_cls"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    ap.add_argument("--out-stem", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2, help="held-out fraction of every class")
    ap.add_argument("--selection-fraction", type=float, default=0.2, help="validation fraction of the training pool")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--no-sibling-negatives", action="store_true",
                    help="do not use the other class folders beside --folder as negatives")
    ap.add_argument("--head", choices=["linear", "mlp", "separate"], default="separate",
                    help="new head: a linear row or a one-hidden-layer head on the frozen descriptor, or a separate small binary model (the seed study's way)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    base, base_classes = load_base(args.base)
    if args.name in base_classes:
        raise SystemExit(f"class {args.name!r} is already in {args.base}")
    classes = base_classes + [args.name]

    # Held-out splits: the base model's for its classes, seeded per folder for the rest.
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
    siblings = [] if args.no_sibling_negatives else sorted(
        d for d in os.listdir(new_root) if d != args.name and os.path.isdir(os.path.join(new_root, d)))
    sib_train, sib_held = [], []
    for c in siblings:
        t, v = common.seeded_split(new_root, c, args.seed, args.val_fraction)
        sib_train += t
        sib_held += v
    roots = {c: args.base_data for c in base_classes}
    for c in [args.name] + siblings:
        roots[c] = new_root
    pool = base_train + new_train + sib_train
    print(f"new class {args.name}: {len(new_train)} train, {len(new_held)} held out; negatives: "
          f"{len(base_train)} base training images, {len(sib_train)} of {len(siblings)} sibling classes "
          f"({len(sib_held)} held out)", flush=True)

    # 1. Selection on a validation part of the pool.
    fit, val = split_list(pool, roots, args.seed, args.selection_fraction)
    print(f"selection: fit on {len(fit)}, validate on {len(val)}", flush=True)
    model1, cal1 = train_new(args, load_base(args.base)[0], base_classes, fit, roots, args.name)
    selection = {"fit_images": len(fit), "validation_images": len(val), "calibration": cal1}
    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "m.f32.onnx")
        common.export_onnx(model1, f32)
        rng = random.Random(1234)
        calib = [common.load_gray(os.path.join(roots[p.split("/")[0]], p)) for p in rng.sample(fit, min(240, len(fit)))]
        pinned = common.pinned_grids(os.path.join(ROOT, "models", "neu_classify.onnx"))
        keep = "/model/separate" if args.head == "separate" else None
        variants = {"f32": f32}
        for v, prefix in (("int8_new_model_f32", keep), ("int8_all", None)):
            variants[v] = os.path.join(tmp, f"{v}.onnx")
            common.quantise_int8(f32, variants[v], calib, pinned, prefix)
        for v, path in variants.items():
            selection[v] = score_onnx(path, val, roots, classes, args.name)
            r = selection[v]
            print(f"validation {v}: {r['right']}/{r['images']} right ({r['accuracy'] * 100:.2f}%), "
                  f"siblings called {args.name}: {r['sibling_called_new']}/{r['sibling_images']}", flush=True)
    a, b = selection["int8_all"], selection["int8_new_model_f32"]
    quantise_new = (a["right"] >= b["right"] - INT8_MAX_LOSS
                    and a["sibling_called_new"] <= b["sibling_called_new"] + INT8_MAX_LOSS)
    selection["rule"] = (f"the new model is quantised unless that loses more than {INT8_MAX_LOSS} validation image(s) "
                         "of 7-class accuracy or calls the new class on more than one more sibling image")
    selection["new_model_quantised"] = quantise_new
    print("selection:", "quantise the new model" if quantise_new else "keep the new model f32", flush=True)

    # 2. Ship: the same training on the whole pool.
    extended, cal2 = train_new(args, load_base(args.base)[0], base_classes, pool, roots, args.name)
    held = base_held + new_held
    with open(os.path.join(args.out, f"{args.out_stem}.heldout.txt"), "w") as fh:
        fh.write("\n".join(held) + "\n")
    how = {
        "linear": "a new linear head on the frozen backbone's descriptor",
        "mlp": "a new one-hidden-layer head on the frozen backbone's descriptor",
        "separate": "a separate small binary CNN (its own backbone and sigmoid head) run beside the shared backbone, as the seed study adds its 7th class",
    }[args.head]
    negatives = f"; negatives: the base training images and {len(sib_train)} images of the {len(siblings)} other classes of its dataset ({', '.join(siblings)})" if siblings else ""
    design = (
        f"the {len(base_classes)} heads and the backbone of {os.path.basename(args.base)} unchanged, plus {how} "
        f"for {args.name}, trained alone by add_class.py (--head {args.head}){negatives}. Each class is an independent binary "
        "one-vs-all classifier; the existing classes' scores are unchanged."
    )
    ship(extended, classes, args.out_stem, args.out, args.base_data, pool, held,
         design_note=design, extra_training={"epochs_new_head": args.epochs, "seed": args.seed, "base": "neu_classify",
                                             "sibling_negative_classes": len(siblings),
                                             "selection": "models/training/" + args.out_stem + ".metrics.json"},
         data_roots=roots, calib_from=pool,
         pinned_from=os.path.join(os.path.dirname(os.path.abspath(args.base)), "..", "neu_classify.onnx"),
         keep_f32_prefix=None if quantise_new or args.head != "separate" else "/model/separate",
         version=VERSION,
         split_note=f"seeded per-class {100 - round(100 * args.val_fraction)}/{round(100 * args.val_fraction)} train/held-out, byte-identical "
                    "duplicates kept on one side; the sibling classes' held-out part is in neither the training pool nor the list")
    common.write_json(os.path.join(ROOT, "models", "training", f"{args.out_stem}.metrics.json"), {
        "model": args.out_stem, "version": VERSION, "recipe": "models/training/add_class.py",
        "pool": {"base": len(base_train), "new": len(new_train), "siblings": len(sib_train), "sibling_classes": siblings},
        "heldout": {"images": len(held), "sibling_images_not_in_list": len(sib_held)},
        "selection": selection, "ship_calibration": cal2,
    })


if __name__ == "__main__":
    main()
