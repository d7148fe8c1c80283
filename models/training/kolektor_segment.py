"""Train the KolektorSDD segment model (segmentation + decision head) and ship it as int8 ONNX.

    python3 models/training/kolektor_segment.py          # from the repository root

Design (after Tabernik et al. 2020, "Segmentation-based deep-learning approach for surface-defect
detection", the seed's KolektorSDD network): a fully convolutional segmentation network whose
output is a defect map at 1/8 of the frame resolution (no upsampling in the graph; the runtime
stitches and upsamples), and a small decision network that reads the segmentation features and
the map itself and gives one defect probability per tile. The frame's decision is the maximum
over its tiles (a part is defective if any tile is, as in the seed). Compared with a U-Net with
a classification head this keeps the graph to plain Conv+ReLU blocks, which is what runs fast as
int8 in tract, and the coarse map is enough to measure crack length in millimetres.

Training: the one-cycle schedule runs on 80 % of the training pool while the other 20 % (the
selection split, by duplicate group) scores the checkpoints; the best step's schedule is then
replayed from scratch on the whole training pool (--no-refit ships the selected checkpoint as it
is). The held-out images are scored by the Rust evaluator only (stamp_metrics.py), once per
shipped model, and every scoring is logged (models/heldout_log.jsonl).

Two networks (--arch): "large", 2.0.0, the shipped one, reads the frame pixels with a 5x5
stride-2 convolution and is wider and deeper at 1/8 resolution (16, 32, 32, 64, 64, 96, 96
channels, dilations 2, 4, 8; about 1.9x the multiply-adds), and its decision head learns with
the segmentation features' gradient stopped (the seed's gradient-adjusted training);
"small", 1.0.0, averages the tile 2x2 first (16, 32, 32, 48, 64, 64 channels, dilations 2, 4).
Both run on the same selection split (python3 models/training/kolektor_segment.py --arch small
--no-refit reproduces 1.0.0's selection run).

Tiles are 512x512 frame pixels (the frames are ~500x1250: width reflect-padded to 512, three
overlapping tiles down the frame); the convolutions run at half resolution and below. Masks are
dilated (the seed dilates before downscaling) and max-pooled to the map grid.

Writes models/kolektor_segment.onnx (int8), models/kolektor_segment.f32.onnx, the manifest
models/kolektor_segment.toml (without [metrics]; stamp_metrics.py adds what the Rust evaluator
measures) and the held-out list models/kolektor_segment.heldout.txt.
"""

import argparse
import hashlib
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import common

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TILE = 512  # model input, frame pixels
CELL = 8  # frame pixels per map cell (avg-pool 2, then two stride-2 convs)
MAP = TILE // CELL
MIN_OVERLAP = 64  # frame pixels shared by neighbouring tiles, at least
DILATE = 7  # mask dilation (frame pixels) before pooling to the map grid
MEAN = 0.5
STD = 0.25


def block(cin, cout, k=3, stride=1, dilation=1):
    pad = dilation * (k // 2)
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class SegDec(nn.Module):
    """The segmentation + decision network. `arch` "large" (2.0.0, the shipped model): the
    frame pixels read by a 5x5 stride-2 convolution (no averaging first), 16, 32, 32, 64, 64,
    96 and 96 channels over three stride-2 stages and dilations 2, 4 and 8 at 1/8 resolution;
    the decision head reads the segmentation features with their gradient stopped (the seed's
    gradient-adjusted training). `arch` "small" (1.0.0): a 2x2 average, then 16, 32, 32, 48, 64
    and 64 channels, two stride-2 stages, dilations 2 and 4; the decision head's gradient
    reaches the segmentation features."""

    def __init__(self, arch="large"):
        super().__init__()
        self.arch = arch
        if arch == "large":
            self.seg = nn.Sequential(
                nn.Conv2d(1, 16, 5, stride=2, padding=2, bias=False),
                nn.BatchNorm2d(16),
                nn.ReLU(inplace=True),
                *block(16, 32, stride=2),
                *block(32, 32),
                *block(32, 64, stride=2),
                *block(64, 64, dilation=2),
                *block(64, 96, dilation=4),
                *block(96, 96, dilation=8),
            )
            c = 96
        else:
            self.seg = nn.Sequential(
                nn.AvgPool2d(2),
                *block(1, 16),
                *block(16, 32, stride=2),
                *block(32, 32),
                *block(32, 48, stride=2),
                *block(48, 64, dilation=2),
                *block(64, 64, dilation=4),
            )
            c = 64
        self.seg_out = nn.Conv2d(c, 1, 1)
        self.dec = nn.Sequential(*block(c, 32, stride=2), *block(32, 32, stride=2))
        self.dec_drop = nn.Dropout(0.3)
        self.dec_out = nn.Linear(32 * 2 + 2, 1)

    def forward(self, x):
        f = self.seg(x)
        m = self.seg_out(f)
        if self.arch == "large" and self.training:
            # the decision head learns on the segmentation features without moving them
            f, m_in = f.detach(), m.detach()
        else:
            m_in = m
        d = self.dec(f)
        feats = torch.cat(
            [
                torch.flatten(F.adaptive_avg_pool2d(d, 1), 1),
                torch.flatten(F.adaptive_max_pool2d(d, 1), 1),
                torch.flatten(F.adaptive_avg_pool2d(m_in, 1), 1),
                torch.flatten(F.adaptive_max_pool2d(m_in, 1), 1),
            ],
            1,
        )
        return m, self.dec_out(self.dec_drop(feats))


class Export(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        m, d = self.model(x)
        return torch.sigmoid(m), torch.sigmoid(d)


DESIGNS = {
    "large": "segmentation + decision network after Tabernik et al. 2020, 2.0.0: the frame pixels read by a 5x5 stride-2 convolution, Conv+ReLU blocks of 16, 32, 32, 64, 64, 96, 96 channels (three stride-2 stages, then 3x3 context dilated 2, 4, 8), a defect map at 1/8 of the frame resolution, and a decision head reading the segmentation features and the map (average and max pooled), trained with the segmentation features' gradient stopped at the head. The frame decision is the maximum over its tiles.",
    "small": "segmentation + decision network after Tabernik et al. 2020: Conv+ReLU blocks (2x2 average first, two stride-2 stages, dilated 3x3 context), a defect map at 1/8 of the frame resolution, and a decision head reading the segmentation features and the map (average and max pooled). The frame decision is the maximum over its tiles.",
}


def fuse(model):
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(model).eval()
    for name in ("seg", "dec"):
        mods = list(getattr(m, name))
        new, i = [], 0
        while i < len(mods):
            if isinstance(mods[i], nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
                new.append(fuse_conv_bn_eval(mods[i], mods[i + 1]))
                i += 2
            else:
                new.append(mods[i])
                i += 1
        setattr(m, name, nn.Sequential(*new))
    return m


def tile_origins(length, tile=TILE, min_overlap=MIN_OVERLAP):
    """Evenly spaced tile starts covering [0, length) with at least min_overlap shared pixels
    (the runtime uses the same rule: src/tools/segment.rs)."""
    if length <= tile:
        return [0]
    n = 1 + math.ceil((length - tile) / (tile - min_overlap))
    return [i * (length - tile) // (n - 1) for i in range(n)]


def pad_width(img, width=TILE):
    """Reflect-pad (or centre-crop) the frame width to the tile width, as the runtime does."""
    h, w = img.shape
    if w >= width:
        x0 = (w - width) // 2
        return img[:, x0 : x0 + width]
    left = (width - w) // 2
    return np.pad(img, ((0, 0), (left, width - w - left)), mode="reflect")


def load_set(root):
    names = sorted(f[:-4] for f in os.listdir(os.path.join(root, "images")) if f.endswith(".jpg"))
    items = []
    for n in names:
        img = np.asarray(Image.open(os.path.join(root, "images", n + ".jpg")).convert("L"), dtype=np.uint8)
        mask = np.asarray(Image.open(os.path.join(root, "masks", n + ".png")).convert("L"), dtype=np.uint8) > 127
        with open(os.path.join(root, "images", n + ".jpg"), "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        items.append({"name": n, "img": img, "mask": mask, "digest": digest, "defect": bool(mask.any())})
    return items


def split(items, seed, val_fraction):
    """Seeded split by duplicate group, stratified by defective/good."""
    groups = {}
    for it in items:
        groups.setdefault(it["digest"], []).append(it)
    train, held = [], []
    for defect in (True, False):
        keys = sorted((k for k, g in groups.items() if g[0]["defect"] == defect), key=lambda k: groups[k][0]["name"])
        rng = random.Random(f"{seed}:{defect}")
        rng.shuffle(keys)
        n_val = round(len(keys) * val_fraction)
        held += [it for k in keys[:n_val] for it in groups[k]]
        train += [it for k in keys[n_val:] for it in groups[k]]
    return sorted(train, key=lambda i: i["name"]), sorted(held, key=lambda i: i["name"])


def dilate(mask, r):
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.max_pool2d(t, 2 * r + 1, stride=1, padding=r)[0, 0] > 0).numpy()


def prepare(items):
    for it in items:
        it["pimg"] = pad_width(it["img"])
        it["pmask"] = pad_width(dilate(it["mask"], DILATE).astype(np.uint8)) > 0
        it["praw"] = pad_width(it["mask"].astype(np.uint8)) > 0
        ys, xs = np.nonzero(it["praw"])
        it["defect_px"] = np.stack([ys, xs], 1) if len(ys) else None


def sample_batch(train, n, rng, hard=None):
    """3/8 crops around a defect pixel, the rest random crops of any training frame, half of
    those drawn from the current hard negatives (good tiles the model scores highest)."""
    xs, ms, ds = [], [], []
    defective = [it for it in train if it["defect"]]
    for i in range(n):
        if i % 8 < 3:
            it = defective[rng.randrange(len(defective))]
            y, _ = it["defect_px"][rng.randrange(len(it["defect_px"]))]
            y0 = int(np.clip(y - rng.randrange(48, TILE - 48), 0, it["pimg"].shape[0] - TILE))
        elif hard and i % 2 == 1:
            it, y0 = hard[rng.randrange(len(hard))]
            y0 = int(np.clip(y0 + rng.randrange(-64, 65), 0, it["pimg"].shape[0] - TILE))
        else:
            it = train[rng.randrange(len(train))]
            y0 = rng.randrange(0, it["pimg"].shape[0] - TILE + 1)
        img = it["pimg"][y0 : y0 + TILE]
        m = it["pmask"][y0 : y0 + TILE]
        raw = it["praw"][y0 : y0 + TILE]
        # horizontal shift with reflection: the part's edges move within the tile
        dx = rng.randrange(-24, 25)
        if dx:
            img = np.pad(img, ((0, 0), (max(dx, 0), max(-dx, 0))), mode="reflect")[:, max(-dx, 0) : max(-dx, 0) + TILE]
            m = np.pad(m, ((0, 0), (max(dx, 0), max(-dx, 0))), mode="reflect")[:, max(-dx, 0) : max(-dx, 0) + TILE]
        if rng.random() < 0.5:
            img, m = img[:, ::-1], m[:, ::-1]
        if rng.random() < 0.5:
            img, m = img[::-1], m[::-1]
        x = (img.astype(np.float32) / 255.0 - MEAN) / STD
        gain = 0.8 + 0.4 * rng.random()
        bias = (rng.random() - 0.5) * 0.3 / STD
        xs.append(x * gain + bias)
        ms.append(m.astype(np.float32))
        ds.append(1.0 if raw.any() else 0.0)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, None]))
    m = torch.from_numpy(np.ascontiguousarray(np.stack(ms)[:, None]))
    target = F.max_pool2d(m, CELL)
    return x, target, torch.tensor(ds)[:, None]


def hard_negatives(model, train, keep=48):
    """Good training tiles (every 128 rows) ranked by the decision head, highest first."""
    cand = []
    model.eval()
    with torch.no_grad():
        for it in train:
            if it["defect"]:
                continue
            h = it["pimg"].shape[0]
            ys = list(range(0, h - TILE + 1, 128))
            x = np.stack([(it["pimg"][y : y + TILE].astype(np.float32) / 255.0 - MEAN) / STD for y in ys])[:, None]
            _, d = model(torch.from_numpy(x))
            cand += [(float(v), it, y) for v, y in zip(d[:, 0].tolist(), ys)]
    cand.sort(key=lambda c: -c[0])
    return [(it, y) for _, it, y in cand[:keep]]


def frame_scores(model_fn, it, want_map=False):
    """Image score (max over tiles of the decision) and, with want_map, the stitched map at
    full resolution (bilinear from cell centres, overlaps averaged), as the runtime does."""
    img = it["pimg"]
    h = img.shape[0]
    best = 0.0
    acc = np.zeros(img.shape, np.float32) if want_map else None
    cnt = np.zeros(img.shape, np.float32) if want_map else None
    for y0 in tile_origins(h):
        x = (img[y0 : y0 + TILE].astype(np.float32) / 255.0 - MEAN) / STD
        m, d = model_fn(x[None, None])
        best = max(best, float(np.asarray(d).reshape(-1)[0]))
        if want_map:
            up = F.interpolate(torch.from_numpy(np.asarray(m, np.float32)), size=(TILE, TILE), mode="bilinear", align_corners=False)
            acc[y0 : y0 + TILE] += up[0, 0].numpy()
            cnt[y0 : y0 + TILE] += 1
    if want_map:
        return best, acc / np.maximum(cnt, 1)
    return best


def ap_auroc(scores, labels):
    order = np.argsort(-np.asarray(scores), kind="stable")
    lab = np.asarray(labels)[order]
    tp = np.cumsum(lab)
    prec = tp / np.arange(1, len(lab) + 1)
    ap = float((prec * lab).sum() / max(lab.sum(), 1))
    pos = np.asarray(scores)[np.asarray(labels) == 1]
    neg = np.asarray(scores)[np.asarray(labels) == 0]
    auc = float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))
    return ap, auc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "kolektorsdd"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--select-fraction", type=float, default=0.2,
                    help="share of the training pool's duplicate groups set aside to choose the checkpoint")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--arch", choices=("large", "small"), default="large",
                    help="large: 2.0.0, the shipped network; small: 1.0.0 (reproduce it with --arch small --chosen-step 700)")
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "models", "training", "kolektor_segment.pt"))
    ap.add_argument("--ship-only", action="store_true", help="export + quantise the saved checkpoint, no training")
    ap.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                    help="after choosing the step, train again from scratch on the whole training pool up to that step")
    ap.add_argument("--chosen-step", type=int, default=None,
                    help="skip the selection run and refit up to this step (the step an earlier full run chose)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    rng = random.Random(args.seed)

    items = load_set(args.data)
    prepare(items)
    train, held = split(items, args.seed, args.val_fraction)
    print(f"train {len(train)} ({sum(i['defect'] for i in train)} defective), held-out {len(held)} ({sum(i['defect'] for i in held)} defective)", flush=True)

    model = SegDec(args.arch)
    if args.ship_only:
        model.load_state_dict(torch.load(args.checkpoint))
        model.eval()
        return ship(model, train, held, args)
    # checkpoint selection on a split of the training pool; the held-out images are only scored
    # once, by ship(), with the chosen checkpoint
    fit, select = split(train, args.seed + 1, args.select_fraction)
    print(f"fit {len(fit)} ({sum(i['defect'] for i in fit)} defective), selection {len(select)} ({sum(i['defect'] for i in select)} defective)", flush=True)
    ckpt = args.checkpoint
    if args.chosen_step is None:
        (a, margin), args.chosen_step = train_loop(model, fit, args, rng, args.steps, select, ckpt)
        print(f"chosen checkpoint: step {args.chosen_step} (selection AP {a:.4f}, margin {margin:+.2f})", flush=True)
    else:
        args.refit = True  # a given step has no selected checkpoint to ship
    if args.refit:
        # the chosen schedule, replayed from scratch on the whole training pool (fit + selection):
        # the selection split chose the step, then its images join training
        print(f"refit on the whole training pool ({len(train)} frames) for {args.chosen_step} steps", flush=True)
        torch.manual_seed(args.seed)
        model = SegDec(args.arch)
        train_loop(model, train, args, random.Random(args.seed), args.chosen_step)
        torch.save(model.state_dict(), ckpt)
    model.load_state_dict(torch.load(ckpt))
    model.eval()
    ship(model, train, held, args)


def train_loop(model, pool, args, rng, stop, select=None, ckpt=None):
    """The training schedule (one-cycle over args.steps) on `pool`, up to step `stop`. With
    `select`, scores the selection frames every args.eval_every steps from 30 % on and saves
    the best checkpoint to `ckpt`; returns ((AP, margin), step) of the best."""
    best = None
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    t0 = time.time()
    hard = None
    for step in range(1, stop + 1):
        if step > 0.3 * args.steps and step % 250 == 1:
            hard = hard_negatives(model, pool)
        model.train()
        x, target, dlabel = sample_batch(pool, args.batch, rng, hard)
        m, d = model(x)
        pos = target.mean().clamp(min=1e-3)
        seg_loss = F.binary_cross_entropy_with_logits(m, target, pos_weight=((1 - pos) / pos).clamp(max=20).detach())
        dec_loss = F.binary_cross_entropy_with_logits(d, dlabel)
        # the decision head joins once the segmentation has learnt something (seed: two steps)
        lam = min(1.0, step / (0.3 * args.steps))
        loss = seg_loss + lam * dec_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            print(f"step {step} seg {seg_loss.item():.4f} dec {dec_loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
        if select is not None and step >= 0.3 * args.steps and (step % args.eval_every == 0 or step == args.steps):
            model.eval()
            with torch.no_grad():
                fn = lambda a: tuple(torch.sigmoid(t).numpy() for t in model(torch.from_numpy(a)))
                sc = [frame_scores(fn, it) for it in select]
            lab = [int(it["defect"]) for it in select]
            a, u = ap_auroc(sc, lab)
            logit = lambda p: math.log(max(p, 1e-6) / max(1 - p, 1e-6))
            margin = logit(min(v for v, l in zip(sc, lab) if l)) - logit(max(v for v, l in zip(sc, lab) if not l))
            key = (round(a, 6), margin)
            mark = ""
            if best is None or key > best[0]:
                best = (key, step)
                mark = " *"
                torch.save(model.state_dict(), ckpt)
            print(f"  selection AP {a:.4f} AUROC {u:.4f} margin {margin:+.2f}{mark}", flush=True)
    return best


def ship(model, train, held, args):
    out = args.out
    stem = "kolektor_segment"
    f32_path = os.path.join(out, f"{stem}.f32.onnx")
    int8_path = os.path.join(out, f"{stem}.onnx")
    exp = Export(fuse(model)).eval()
    torch.onnx.export(
        exp,
        torch.zeros(1, 1, TILE, TILE),
        f32_path,
        input_names=["image"],
        output_names=["mask", "decision"],
        opset_version=13,
        do_constant_folding=True,
        dynamo=False,
    )
    crng = random.Random(args.seed + 1)
    calib = []
    for _ in range(48):
        it = train[crng.randrange(len(train))]
        y0 = crng.randrange(0, it["pimg"].shape[0] - TILE + 1)
        calib.append(it["pimg"][y0 : y0 + TILE])
    common.MEAN, common.STD = MEAN, STD
    common.quantise_int8(f32_path, int8_path, calib)

    # operating threshold: from training images only. Every defective training frame must be
    # rejected; the threshold sits halfway (in log-odds) between the lowest defective and the
    # highest good training score when they separate, else at the lowest defective score.
    fn = common.ort_fn(int8_path, all_outputs=True)
    tr_scores = []
    levels = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97]
    inter = np.zeros(len(levels))
    total = np.zeros(len(levels))
    for it in train:
        sc, pmap = frame_scores(fn, it, want_map=True)
        tr_scores.append(sc)
        if it["defect"]:
            truth = it["praw"]
            for k, lv in enumerate(levels):
                pred = pmap >= lv
                inter[k] += (pred & truth).sum()
                total[k] += pred.sum() + truth.sum()
    dice = 2 * inter / np.maximum(total, 1)
    pixel_thr = levels[int(np.argmax(dice))]
    print("training Dice per pixel threshold:", dict(zip(levels, np.round(dice, 3))), "->", pixel_thr)
    lo_def = min(s for s, it in zip(tr_scores, train) if it["defect"])
    hi_good = max(s for s, it in zip(tr_scores, train) if not it["defect"])
    logit = lambda p: math.log(max(p, 1e-6) / max(1 - p, 1e-6))
    if lo_def > hi_good:
        z = 0.5 * (logit(lo_def) + logit(hi_good))
        thr = 1 / (1 + math.exp(-z))
    else:
        thr = lo_def
    # the held-out images are scored by the Rust evaluator only (stamp_metrics.py), once, logged
    print(f"threshold {thr:.4f} (train lowest defective {lo_def:.4f}, highest good {hi_good:.4f})")

    with open(os.path.join(out, f"{stem}.heldout.txt"), "w") as fh:
        fh.write("# held-out KolektorSDD images (seeded split by duplicate group); never trained on\n")
        for it in held:
            fh.write(f"{it['name']}.jpg\n")
    toml = f"""# Manifest of a ferroscope segment model. Paths are relative to this file.
[model]
name = "{stem}"
tool = "segment"
version = "{'2.0.0' if args.arch == 'large' else '1.0.0'}"
file = "{stem}.onnx"
sha256 = "{common.sha256_file(int8_path)}"
f32_file = "{stem}.f32.onnx"
f32_sha256 = "{common.sha256_file(f32_path)}"
design = "{DESIGNS[args.arch]}"

[input]
name = "image"
shape = [1, 1, {TILE}, {TILE}]
layout = "NCHW"
color = "gray"
resize = "none"
mean = {MEAN}
std = {STD}

[output]
mask = "mask"
decision = "decision"
activation = "sigmoid"

[segment]
# tiles of {TILE}x{TILE} frame pixels; the width is reflect-padded (or centre-cropped) to the tile
# width, tiles overlap by at least min_overlap pixels and are blended by averaging
tile = {TILE}
min_overlap = {MIN_OVERLAP}
cell = {CELL}
# image decision: reject when the decision head's maximum over tiles reaches this
decision_threshold = {thr:.6f}
# a map pixel belongs to a region at or above this probability
pixel_threshold = {pixel_thr}
threshold_rule = "decision: halfway in log-odds between the lowest defective and the highest good training frame (int8) when they separate, else the lowest defective training frame's score; either way every defective training frame is rejected; pixel: the level with the best Dice over the training frames' masks"

[quantisation]
format = "onnx QDQ: int8 weights (per output channel, 7-bit range), uint8 activations (per-tensor) around each Conv+Relu; pooling and the decision layer f32"
calibration = "MinMax over 48 random training tiles"
tool = "onnxruntime.quantization.quantize_static"

[training]
recipe = "models/training/kolektor_segment.py"
dataset = "../shared/datasets/kolektorsdd"
split = "seeded 80/20 train/held-out by duplicate group (byte-identical images on one side), stratified good/defective"
heldout_list = "{stem}.heldout.txt"
train_images = {len(train)}
heldout_images = {len(held)}
arch = "{args.arch}"
steps = {args.steps}
chosen_step = {args.chosen_step or args.steps}
checkpoint_rule = "highest AP, then widest log-odds margin, on a selection split of the training pool ({args.select_fraction:.0%} of its duplicate groups, seed {args.seed + 1}), every {args.eval_every} steps from 30 % on{'; then the same schedule replayed from scratch on the whole training pool up to that step' if args.refit else ''}"
refit = {str(bool(args.refit)).lower()}
batch = {args.batch}
seed = {args.seed}
mask_dilation_px = {DILATE}
"""
    with open(os.path.join(out, f"{stem}.toml"), "w") as fh:
        fh.write(toml)


if __name__ == "__main__":
    main()
