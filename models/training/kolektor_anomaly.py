"""Train the KolektorSDD anomaly model on good images and synthetic anomalies only, and ship it
as int8 ONNX.

    python3 models/training/kolektor_anomaly.py          # from the repository root (about 10 min on 2 cores)

Design: a small fully convolutional network learns, from good frames alone, to find thin line
anomalies drawn onto them. No labelled defective image is read: the anomalies are synthetic,
drawn at random on good training tiles (dark or bright, any orientation, curved, 20-400 px long,
Gaussian profile of sigma 0.6-2.5 px, 10-60 % deep), and the network is trained to map them
(binary cross-entropy against the drawn line's cells).

* Input: the 512x512 tile averaged 2x2 and normalised by its neighbourhood (minus the 17x17
  mean, over the 33x33 RMS of the difference; the same fixed normalisation as the crack
  filter), so brightness, glare and texture strength do not count.
* Network (learnt): four 3x3 convolutions at 1/2 then 1/4 resolution (16, 32, 32, 32 channels;
  dilations 1, 1, 2, 4 so that one map cell sees about 60 frame px of line), a 1x1 output;
  sigmoid map at 1/4 resolution (cell 4). All convolutions run as integer convolutions.
* Training: AdamW, one-cycle over STEPS steps of batch BATCH on 256x256 crops of the good
  training frames, half of the crops with one to three drawn anomalies; flips, gain and offset.

--members N trains N such networks from seeds seed, seed+1, ... (each checkpoint chosen by the
rule below) and ships the mean of their maps in one graph (the normalisation shared). Three
members scored as well as seed 0's network alone on 180 validation frames with drawn anomalies
(f32 AUROC 0.9847 both) for three times the convolutions: not kept (kolektor_anomaly.ensemble.json;
the default stays one network).

--widths and --dilations give another network of the same kind (one 3x3 block per width, the
second with stride 2; --checkpoint keeps its weights apart from the shipped ones). Five blocks of
32, 64, 64, 64, 64 channels dilated 1, 1, 2, 4, 8 (5.5x the multiply-adds) were judged on the
validation frames with drawn lines like the training ones and with faint ones (`--write-drawn DIR
--drawn-faint`: one line of 15-150 px, 5-30 % deep) and not kept (kolektor_anomaly.width.json).

Every choice without a defective image: the good validation frames (never trained on) and the
same frames with anomalies drawn by another seed score the checkpoints (image AUROC, every 250
steps from 40 % on; the best is shipped), choose the score's blur radius (2, 4, 8, 16 px, on the
int8 model) and set the threshold (the highest good validation score).

Split: the same as kolektor_crack_filter.py and kolektor_anomaly_padim.py (seed 0): all 35
defective images and a seeded 20 % of the good duplicate groups are held out
(models/kolektor_anomaly.heldout.txt, never read here); of the remaining good images, a seeded
15 % of the groups are the good validation set (models/kolektor_anomaly.validation.txt).

Writes models/kolektor_anomaly.onnx (int8), models/kolektor_anomaly.f32.onnx, the manifest
models/kolektor_anomaly.toml (without [metrics]; stamp_metrics.py adds what the Rust evaluator
measures), the two lists and the checkpoint models/training/kolektor_anomaly.pt.
"""

import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

import common
from kolektor_crack_filter import NORM_EPS, NORM_MEAN_R, NORM_RMS_R, best_blur, blurred_max, box, frame_map, splits, write_lists
from kolektor_segment import ap_auroc, pad_width

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEM = "kolektor_anomaly"
TILE = 512  # model input, frame pixels
CROP = 256  # training crops, frame pixels (the network is fully convolutional)
CELL = 4  # frame pixels per map cell
MIN_OVERLAP = 64
MEAN = 0.5
STD = 0.25
STEPS = 3000
BATCH = 16
LR = 2e-3
EDGE_PX = 16  # frame columns on each side that are not scored (the rim and the tile padding)
CALIB_TILES = 32  # good training tiles, and as many of the same tiles with drawn anomalies
MEMBERS = 1  # networks whose maps are averaged
# one 3x3 Conv+BN+ReLU block per width (the second with stride 2) and its dilation: a map cell
# sees about 60 frame px of line with 3.0.0's four blocks
WIDTHS = (16, 32, 32, 32)
DILATIONS = (1, 1, 2, 4)
# drawn lines: ranges of length (px), Gaussian sigma (px), depth (fraction darker or brighter),
# and where the line starts (fractions of the height and the width); the training anomalies
LINE = ((20, 400), (0.6, 2.5), (0.1, 0.6), (0, 1), (0, 1))
# and the faint ones of `--write-drawn --drawn-faint`: one line, started inside the scored middle
FAINT_LINE = ((15, 150), (0.6, 2.0), (0.05, 0.3), (0.1, 0.9), (0.15, 0.85))
VERSION = "3.0.0"


def block(cin, cout, stride=1, dilation=1):
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class LineNet(nn.Module):
    """[n, 1, h, w] normalised tile -> [n, 1, h/4, w/4] logits (forward) or sigmoid map
    (the exported graph, with the unscored edge columns at 0). One 3x3 Conv+BN+ReLU block per
    width, the second with stride 2, each with its dilation; a 1x1 output."""

    def __init__(self, widths=WIDTHS, dilations=DILATIONS):
        super().__init__()
        if len(widths) != len(dilations) or len(widths) < 2:
            raise ValueError(f"widths {widths} and dilations {dilations}: as many of each, at least two")
        layers, cin = [], 1
        for k, (w, d) in enumerate(zip(widths, dilations)):
            layers += block(cin, w, stride=2 if k == 1 else 1, dilation=d)
            cin = w
        self.net = nn.Sequential(*layers, nn.Conv2d(cin, 1, 1))

    @staticmethod
    def normalise(x):
        x = F.avg_pool2d(x * STD + MEAN, 2)
        d = x - box(x, NORM_MEAN_R)
        return d / (torch.sqrt(box(d * d, NORM_RMS_R)) + NORM_EPS)

    def forward(self, x):
        return self.net(self.normalise(x))


class Export(nn.Module):
    """The exported graph: the sigmoid map of one network, or the mean of the members' sigmoid
    maps (the normalisation computed once and shared), with the unscored edge columns at 0."""

    def __init__(self, model, grid):
        super().__init__()
        members = model if isinstance(model, (list, tuple)) else [model]
        if len(members) == 1:
            self.model = members[0]
        else:
            self.members = nn.ModuleList(members)
        edge = EDGE_PX // CELL
        scored = torch.zeros(1, 1, 1, grid)
        scored[..., edge : grid - edge] = 1
        self.register_buffer("scored", scored)

    def forward(self, x):
        if not hasattr(self, "members"):
            return torch.sigmoid(self.model(x)) * self.scored
        z = self.members[0].normalise(x)
        p = sum(torch.sigmoid(m.net(z)) for m in self.members) / len(self.members)
        return p * self.scored


def fused(model):
    import copy

    m = copy.deepcopy(model).eval()
    m.net = common.fuse_sequential(m.net)
    return m


# ---------------------------------------------------------------- synthetic anomalies


def draw_lines(img_u8, rng, n=None, faint=False):
    """`img_u8` with one to three line anomalies drawn in, and their mask (bool, same size).

    `faint`: one line of FAINT_LINE's ranges, shorter and shallower than most of the training
    anomalies (LINE's) and started inside the scored middle (`--write-drawn --drawn-faint`: a set
    on which candidates that all find the training-like lines differ)."""
    h, w = img_u8.shape
    img = img_u8.astype(np.float32)
    mask = np.zeros((h, w), bool)
    lengths, sigmas, depths, ys, xs = FAINT_LINE if faint else LINE
    for _ in range(1 if faint else n or int(rng.integers(1, 4))):
        length, sigma, depth = rng.uniform(*lengths), rng.uniform(*sigmas), rng.uniform(*depths)
        ang = rng.uniform(0, 2 * math.pi)
        y, x = rng.uniform(ys[0] * h, ys[1] * h), rng.uniform(xs[0] * w, xs[1] * w)
        pts = [(x, y)]
        for _ in range(max(2, int(length / 4))):
            ang += rng.normal(0, 0.1)
            x, y = x + 4 * math.cos(ang), y + 4 * math.sin(ang)
            pts.append((x, y))
        canvas = Image.new("L", (w, h), 0)
        ImageDraw.Draw(canvas).line(pts, fill=255, width=1)
        prof = np.asarray(canvas.filter(ImageFilter.GaussianBlur(sigma)), np.float32)
        if prof.max() <= 0:
            continue
        prof /= prof.max()
        if rng.random() < 0.8:
            img *= 1 - depth * prof
        else:
            img += (255 - img) * depth * prof
        mask |= prof > 0.3
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), mask


def sample_batch(fit, n, rng):
    xs, ms = [], []
    for i in range(n):
        it = fit[int(rng.integers(len(fit)))]
        img = it["pimg"]
        y0 = int(rng.integers(0, img.shape[0] - CROP + 1))
        x0 = int(rng.integers(0, img.shape[1] - CROP + 1))
        crop = img[y0 : y0 + CROP, x0 : x0 + CROP]
        if i % 2:
            crop, m = draw_lines(crop, rng)
        else:
            m = np.zeros(crop.shape, bool)
        if rng.random() < 0.5:
            crop, m = crop[:, ::-1], m[:, ::-1]
        if rng.random() < 0.5:
            crop, m = crop[::-1], m[::-1]
        x = (crop.astype(np.float32) / 255.0 - MEAN) / STD
        x = x * (0.8 + 0.4 * rng.random()) + (rng.random() - 0.5) * 0.3 / STD
        xs.append(x)
        ms.append(m.astype(np.float32))
    x = torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, None]))
    m = torch.from_numpy(np.ascontiguousarray(np.stack(ms)[:, None]))
    return x, F.max_pool2d(m, CELL)


def validation_sets(val, seed):
    """The good validation frames and the same frames with anomalies drawn in, two each."""
    rng = np.random.default_rng(seed + 1000)
    clean = [it["img"] for it in val]
    return clean, [draw_lines(im, rng)[0] for im in clean for _ in range(2)]


def torch_fn(model):
    """The exported graph's map (sigmoid, edge columns at 0) of a [1, 1, 512, 512] tile, in torch
    (`model`: one network or a list of members)."""
    exp = Export(model, TILE // CELL).eval()

    def fn(a):
        with torch.no_grad():
            return exp(torch.from_numpy(a)).numpy()

    return fn


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "kolektorsdd"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-fraction", type=float, default=0.2, help="share of good duplicate groups held out")
    ap.add_argument("--val-fraction", type=float, default=0.15, help="share of the remaining good groups kept for validation")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--members", type=int, default=MEMBERS,
                    help="networks trained from seeds seed, seed+1, ... whose maps are averaged (1: one network, as 3.0.0)")
    ap.add_argument("--ship-only", action="store_true", help="export + quantise the saved checkpoints, no training")
    ap.add_argument("--write-drawn", metavar="DIR",
                    help="no training: write the good validation frames and N copies of each with anomalies drawn by "
                         "--drawn-seed to DIR/images and DIR/masks, the layout `ferroscope eval anomaly --data DIR` reads "
                         "(the recipe's own validation set is --drawn-seed 1000 --drawn-per 2)")
    ap.add_argument("--drawn-seed", type=int, default=7777)
    ap.add_argument("--drawn-per", type=int, default=6, metavar="N")
    ap.add_argument("--drawn-faint", action="store_true",
                    help="with --write-drawn: one faint line a copy (draw_lines(faint=True))")
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)),
                    help="channels of the 3x3 blocks, comma-separated (the second has stride 2)")
    ap.add_argument("--dilations", default=",".join(map(str, DILATIONS)), help="their dilations, as many")
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "models", "training", f"{STEM}.pt"),
                    help="the checkpoint training writes and --ship-only reads (member k > 0: the same name with .m<k>.pt)")
    args = ap.parse_args()
    if args.members < 1:
        ap.error(f"--members {args.members}: at least one network")
    try:
        args.widths = tuple(int(v) for v in args.widths.split(","))
        args.dilations = tuple(int(v) for v in args.dilations.split(","))
        LineNet(args.widths, args.dilations)
    except ValueError as e:
        ap.error(f"--widths {args.widths} --dilations {args.dilations}: {e}")
    torch.set_num_threads(os.cpu_count() or 1)
    fit, val, held = splits(args)
    if args.write_drawn:
        return write_drawn(val, args)
    for it in fit:
        it["pimg"] = pad_width(it["img"])
    models, args.chosen_steps = [], []
    for k in range(args.members):
        # member k: its own initial weights and batches (seed + k); the split and the
        # validation anomalies stay those of --seed
        ckpt = args.checkpoint if k == 0 else f"{os.path.splitext(args.checkpoint)[0]}.m{k}.pt"
        torch.manual_seed(args.seed + k)
        model = LineNet(args.widths, args.dilations)
        if not args.ship_only:
            args.chosen_steps.append(train(model, fit, val, args, ckpt, args.seed + k))
        model.load_state_dict(torch.load(ckpt))
        models.append(model.eval())
    ship(models, fit, val, held, args)


def write_drawn(val, args):
    """--write-drawn: the good validation frames (`<name>_good.png`, an all-zero mask) and
    --drawn-per copies of each with anomalies drawn (`<name>_a<k>.png`, the drawn lines' mask)."""
    out = args.write_drawn
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    rng = np.random.default_rng(args.drawn_seed)
    for it in val:
        im = it["img"]
        Image.fromarray(im).save(os.path.join(out, "images", f"{it['name']}_good.png"))
        Image.fromarray(np.zeros_like(im)).save(os.path.join(out, "masks", f"{it['name']}_good.png"))
        for k in range(args.drawn_per):
            drawn, mask = draw_lines(im, rng, faint=args.drawn_faint)
            Image.fromarray(drawn).save(os.path.join(out, "images", f"{it['name']}_a{k}.png"))
            Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(out, "masks", f"{it['name']}_a{k}.png"))
    print(f"wrote {len(val)} good validation frames and {len(val) * args.drawn_per} with drawn anomalies to {out}", flush=True)


def train(model, fit, val, args, ckpt, seed):
    """Trains `model` on the stream of `seed`, keeps the checkpoint with the best validation
    AUROC in `ckpt` and returns its step."""
    rng = np.random.default_rng(seed)
    clean, synth = validation_sets(val, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=args.steps, pct_start=0.1)
    best = None
    t0 = time.time()
    for step in range(1, args.steps + 1):
        model.train()
        x, target = sample_batch(fit, BATCH, rng)
        logits = model(x)
        pos = target.mean().clamp(min=1e-3)
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=((1 - pos) / pos).clamp(max=50).detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
        if step >= 0.4 * args.steps and (step % 250 == 0 or step == args.steps):
            model.eval()
            fn = torch_fn(model)
            sc = [frame_map(fn, im, 4)[0] for im in clean] + [frame_map(fn, im, 4)[0] for im in synth]
            _, u = ap_auroc(sc, [0] * len(clean) + [1] * len(synth))
            mark = ""
            if best is None or u > best[0]:
                best = (u, step)
                torch.save(model.state_dict(), ckpt)
                mark = " *"
            print(f"  validation AUROC, good vs drawn anomalies (blur 4): {u:.4f}{mark}", flush=True)
    print(f"chosen checkpoint: step {best[1]} (validation AUROC {best[0]:.4f})", flush=True)
    return best[1]


def ship(models, fit, val, held, args):
    out = args.out
    f32_path = os.path.join(out, f"{STEM}.f32.onnx")
    int8_path = os.path.join(out, f"{STEM}.onnx")
    torch.onnx.export(
        Export([fused(m) for m in models], TILE // CELL).eval(),
        torch.zeros(1, 1, TILE, TILE),
        f32_path,
        input_names=["image"],
        output_names=["map"],
        opset_version=13,
        do_constant_folding=True,
        dynamo=False,
    )
    # Calibration: good training tiles and the same tiles with drawn anomalies.
    crng = np.random.default_rng(args.seed + 3)
    calib = []
    for _ in range(CALIB_TILES):
        it = fit[int(crng.integers(len(fit)))]
        y0 = int(crng.integers(0, it["pimg"].shape[0] - TILE + 1))
        tile = it["pimg"][y0 : y0 + TILE]
        calib += [tile, draw_lines(tile, crng)[0]]
    common.MEAN, common.STD = MEAN, STD
    common.quantise_int8(f32_path, int8_path, calib)

    clean, synth = validation_sets(val, args.seed)
    fn = common.ort_fn(int8_path)
    clean_maps = [frame_map(fn, im, 0)[1] for im in clean]
    synth_maps = [frame_map(fn, im, 0)[1] for im in synth]
    blur, auroc = best_blur(clean_maps, synth_maps, "drawn anomalies (int8)")
    val_scores = [blurred_max(m, blur) for m in clean_maps]
    thr = max(val_scores)
    print(f"good validation scores: max {thr:.4f}, median {float(np.median(val_scores)):.4f}", flush=True)

    write_lists(out, held, val)
    steps = getattr(args, "chosen_steps", None)
    members = len(models)
    n_conv = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}.get(len(args.widths), str(len(args.widths)))
    design = (
        "a small CNN learnt from good frames and synthetic anomalies only (lines of any orientation drawn on good tiles): "
        f"2x2 average, local contrast normalisation, {n_conv} 3x3 convolutions "
        f"({', '.join(map(str, args.widths))} channels, dilations {', '.join(map(str, args.dilations))}) "
        "and a 1x1 output; sigmoid map at 1/4 resolution; edge columns not scored"
    )
    chosen = ""
    if steps:  # one network: chosen_step as 3.0.0's manifest; members: members and chosen_steps
        chosen = f"chosen_step = {steps[0]}" if members == 1 else f"members = {members}\nchosen_steps = {steps}"
    elif members > 1:
        chosen = f"members = {members}"
    if members > 1:
        design += (
            f"; {members} such networks trained from seeds {args.seed}..{args.seed + members - 1}, "
            "their sigmoid maps averaged (the normalisation shared)"
        )
    toml = f"""# Manifest of a ferroscope anomaly model. Paths are relative to this file.
[model]
name = "{STEM}"
tool = "anomaly"
version = "{VERSION}"
file = "{STEM}.onnx"
sha256 = "{common.sha256_file(int8_path)}"
f32_file = "{STEM}.f32.onnx"
f32_sha256 = "{common.sha256_file(f32_path)}"
design = "{design}"

[input]
name = "image"
shape = [1, 1, {TILE}, {TILE}]
layout = "NCHW"
color = "gray"
resize = "none"
mean = {MEAN}
std = {STD}

[output]
mask = "map"
activation = "sigmoid"

[anomaly]
# tiles of {TILE}x{TILE} frame pixels; the width is reflect-padded (or centre-cropped) to the tile
# width, tiles overlap by at least min_overlap pixels and are blended by averaging
tile = {TILE}
min_overlap = {MIN_OVERLAP}
cell = {CELL}
# image score: the maximum of the full-resolution map after a box blur of this radius (frame px),
# the radius of 2, 4, 8, 16 that best separates the good validation frames from the same frames
# with drawn anomalies (int8 AUROC {auroc:.4f})
score_blur_px = {blur}
# the image is defective when its score reaches this
decision_threshold = {thr:.6f}
# a map pixel belongs to a region at or above this
pixel_threshold = {thr:.6f}
threshold_rule = "the highest image score over the {len(val)} good validation images (int8, models/{STEM}.validation.txt; never trained on), no margin: no false reject on validation; the pixel threshold equals it, so a rejected image always has a region"

[quantisation]
format = "onnx QDQ: int8 weights (per output channel, 7-bit range), uint8 activations (per-tensor) around each Conv; pooling, the normalisation and the sigmoid f32"
calibration = "MinMax over {CALIB_TILES} random good training tiles and the same tiles with drawn anomalies"
tool = "onnxruntime.quantization.quantize_static"

[training]
recipe = "models/training/{STEM}.py"
dataset = "../shared/datasets/kolektorsdd"
split = "held out: every defective image and a seeded {args.heldout_fraction:.0%} of the good duplicate groups; of the rest, a seeded {args.val_fraction:.0%} of the groups is the good validation set (checkpoint, blur, thresholds); trained on the remaining good images with synthetic anomalies"
heldout_list = "{STEM}.heldout.txt"
validation_list = "{STEM}.validation.txt"
train_images = {len(fit)}
validation_images = {len(val)}
heldout_images = {len(held)}
defective_images_trained_on = 0
defective_images_that_chose_anything = 0
steps = {args.steps}
batch = {BATCH}
{chosen}
edge_px_not_scored = {EDGE_PX}
seed = {args.seed}
"""
    with open(os.path.join(out, f"{STEM}.toml"), "w") as fh:
        fh.write(toml)
    print("wrote", int8_path, f32_path, os.path.join(out, f"{STEM}.toml"), flush=True)


if __name__ == "__main__":
    main()
