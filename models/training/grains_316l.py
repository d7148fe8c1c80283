"""Train the grain-boundary model for 316L micrographs and ship it as int8 ONNX.

    python3 models/training/grains_316l.py          # from the repository root

Design: a compact U-Net (Ronneberger et al. 2015), the network the seed study starts from.
The seed prefers W-Net (two U-Nets in a row, Galdran et al. 2020) because its U-Net left open
contours; here the closing is done by the analysis (src/grains: threshold, grain labelling,
gap bridging, boundaries grown to one pixel), so one U-Net with a boundary-weighted loss is
enough and costs half the inference time on the board. The graph averages 2x2 first: the
hand-drawn boundaries are ~10 px wide at 2.25 px/um, so half resolution loses nothing the
grain areas need, and the map comes out at 1/2 of the tile (cell 2); the runtime stitches the
tiles and upsamples bilinearly, as for the segment tool. Convolutions are Conv+BN+ReLU blocks
(BN folded for export, so the int8 graph is Conv+Relu), the decoder upsamples with 2x2
transposed convolutions.

Data: ../shared/datasets/grains_316l, 400x400 tiles of 32 micrographs, masks with grains 255
and boundaries 0. The split is by micrograph, never by tile (neighbouring tiles of one
micrograph share grains): seeded 80/20 train/held-out. Training crops are 256x256 (the model
input), with flips, 90-degree turns and brightness/contrast jitter. Images are converted to
gray as the runtime does (image crate: Rec. 709 weights, truncated).

Protocol: --folds-fold cross-validation over the training micrographs (folds by micrograph,
seeded). Each fold's network trains on the other folds for --steps steps (the schedule is by
steps only, so a run reproduces), is exported to int8 as the shipped one is, and the Rust
analysis itself (`ferroscope eval grains`, --ferroscope, built first) measures it on its own
fold's tiles: every training tile gets figures from a network that never saw its micrograph.
The analysis settings (pixel threshold, smallest grain, bridged gap) are chosen on those
figures by TUNING_RULE; the record, every setting tried with its figures per fold, is
models/training/grains_316l.cv-<width>-<steps>.json. `--cv-only --width W --steps N` writes
the record of another design to compare (the width and steps shipped, WIDTH and STEPS, are the
design with the best record; --photometric, jittered etch and exposure, was measured this way
and not kept, as were --steps 4000, --ensemble 2, two networks' logits averaged in one graph
(the record then also scores each member alone), and --symmetries 8, the map averaged over
flips and quarter turns, at three settings on 1.2.0's fold networks).
Then one network trains on all training micrographs for the same
steps and ships, last step, with the chosen settings. The held-out tiles are read by nothing here.

Writes models/grains_316l.onnx (int8), models/grains_316l.f32.onnx, the manifest
models/grains_316l.toml (without [metrics]: `python3 models/training/stamp_metrics.py
models/grains_316l.toml --changed ...` scores the held-out list once and writes them) and the
held-out list models/grains_316l.heldout.txt.
"""

import argparse
import json
import math
import os
import random
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageFilter

import common

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TILE = 256  # model input, image pixels
CELL = 2  # image pixels per map cell (2x2 average inside the graph)
MIN_OVERLAP = 32  # image pixels shared by neighbouring tiles, at least
MEAN = 0.5
STD = 0.25
UM_PER_PX = 1 / 2.25  # the dataset's scale
WIDTH = (16, 32, 48, 64)  # U-Net channels per level (chosen by cross-validation: grains_316l.cv-*.json)
STEPS = 2000  # training steps of every model, the refit's too
MEMBER_SEED = 1000  # member j of an ensemble trains with seed + j * MEMBER_SEED (its own start and batches)
FOLDS = 4  # cross-validation folds over the training micrographs
G_BINS = (-3, 14)  # the histogram's GOST numbers (src/grains/standards.rs G_MIN..=G_MAX)
# The analysis settings are searched one at a time in this order, each at the best of the others
# (TUNING_RULE), starting from START.
START = {"pixel_threshold": 0.5, "min_grain_um2": 60.0, "bridge_gap_um": 0.0}
LEVELS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7)
MIN_GRAINS_UM2 = (20.0, 60.0, 100.0)
BRIDGE_GAPS_UM = (0.0, 6.0, 10.0, 15.0)
TUNING_ROUNDS = 3  # passes over the three settings, fewer when a pass changes nothing
MIN_CORRELATION = 0.99  # the pooled histogram correlation a setting must keep (the target's figure)
TUNING_RULE = (
    "pixel_threshold, then min_grain_um2, then bridge_gap_um, each at the best of the others, in passes until a pass changes nothing "
    "(at most 3; start 0.5, 60 um2, 0 um): "
    f"the smallest mean |dG| per tile among settings whose pooled histogram correlation is at least {MIN_CORRELATION} "
    "(if none, the highest correlation), both from `ferroscope eval grains` (int8) on the cross-validation models' "
    "out-of-fold training tiles; levels 0.1..0.7, 20/60/100 um2, 0/6/10/15 um"
)


def block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class UNet(nn.Module):
    """U-Net after a 2x2 average: len(width) - 1 max-pool levels, two 3x3 Conv+BN+ReLU per encoder
    level and in the middle, a 2x2 transposed convolution and one 3x3 Conv+BN+ReLU per decoder
    level, skips by concatenation; modules e0.., mid, u<level>, d<level>."""

    def __init__(self, width=WIDTH):
        super().__init__()
        *enc, c_mid = width
        self.levels = len(enc)
        self.pool_in = nn.AvgPool2d(2)
        cin = 1
        for i, c in enumerate(enc):
            setattr(self, f"e{i}", nn.Sequential(*block(cin, c), *block(c, c)))
            cin = c
        self.mid = nn.Sequential(*block(cin, c_mid), *block(c_mid, c_mid))
        up = c_mid
        for i in reversed(range(self.levels)):
            setattr(self, f"u{i}", nn.ConvTranspose2d(up, enc[i], 2, stride=2))
            setattr(self, f"d{i}", nn.Sequential(*block(2 * enc[i], enc[i])))
            up = enc[i]
        self.out = nn.Conv2d(enc[0], 1, 1)

    def forward(self, x):
        return self.out(self.features(self.pool_in(x)))

    def features(self, x):
        """The last decoder level's features of the 2x2-averaged input `x` (what `out` reads)."""
        skips = []
        for i in range(self.levels):
            x = getattr(self, f"e{i}")(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = self.mid(F.max_pool2d(x, 2))
        for i in reversed(range(self.levels)):
            x = getattr(self, f"d{i}")(torch.cat([getattr(self, f"u{i}")(x), skips[i]], 1))
        return x


class Ensemble(nn.Module):
    """`members` U-Nets of one width reading the same 2x2 average; the map is the mean of their
    logits, computed as one 1x1 convolution over their last features side by side (its weights
    the members' output weights divided by their number, its bias the mean of their biases), so
    the graph keeps one output convolution and one sigmoid."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.pool_in = nn.AvgPool2d(2)
        n = len(members)
        self.out = nn.Conv2d(n * members[0].out.in_channels, 1, 1)
        with torch.no_grad():
            self.out.weight.copy_(torch.cat([m.out.weight for m in members], 1) / n)
            self.out.bias.copy_(torch.stack([m.out.bias for m in members]).mean(0))

    def forward(self, x):
        x = self.pool_in(x)
        return self.out(torch.cat([m.features(x) for m in self.members], 1))


def build(width, ensemble):
    """An untrained network of the design: one U-Net, or an Ensemble of `ensemble` of them."""
    return UNet(width) if ensemble == 1 else Ensemble([UNet(width) for _ in range(ensemble)])


class Export(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.sigmoid(self.model(x))


def fuse(model):
    """A copy of the U-Net (or of each U-Net of an Ensemble) with every BatchNorm folded into its
    convolution."""
    import copy

    m = copy.deepcopy(model).eval()
    if isinstance(m, Ensemble):
        m.members = nn.ModuleList(fuse(x) for x in m.members)
        return m
    for name in [f"e{i}" for i in range(m.levels)] + ["mid"] + [f"d{i}" for i in range(m.levels)]:
        setattr(m, name, common.fuse_sequential(getattr(m, name)))
    return m


def load_set(root):
    names = sorted(f[:-4] for f in os.listdir(os.path.join(root, "images")) if f.endswith(".jpg"))
    items = []
    for n in names:
        img = common.to_gray(np.asarray(Image.open(os.path.join(root, "images", n + ".jpg")).convert("RGB")))
        mask = np.asarray(Image.open(os.path.join(root, "masks", n + ".png")).convert("L"), dtype=np.uint8)
        items.append({"name": n, "micrograph": n.split("_")[0], "img": img, "boundary": mask < 128})
    return items


def split(items, seed, val_fraction):
    """Seeded split by micrograph: every tile of a micrograph lands on the same side."""
    micro = sorted({it["micrograph"] for it in items})
    rng = random.Random(f"{seed}:grains")
    rng.shuffle(micro)
    n_val = round(len(micro) * val_fraction)
    held_m = set(micro[:n_val])
    train = [it for it in items if it["micrograph"] not in held_m]
    held = [it for it in items if it["micrograph"] in held_m]
    return train, held


def tile_origins(length, tile=TILE, min_overlap=MIN_OVERLAP):
    """Evenly spaced tile starts covering [0, length) (the runtime's rule: src/tools/tiled.rs)."""
    import math

    if length <= tile:
        return [-((tile - length) // 2)]
    n = 1 + math.ceil((length - tile) / (tile - min_overlap))
    return [i * (length - tile) // (n - 1) for i in range(n)]


def etch_jitter(img, rng):
    """`img` (uint8) as another etch or exposure might have left it: a gamma of 0.7-1.4, in half
    the crops a Gaussian blur of sigma 0.3-1.2 px, and pixel noise of sigma 0-3 grey levels."""
    f = (img.astype(np.float32) / 255.0) ** (0.7 + 0.7 * rng.random())
    if rng.random() < 0.5:
        blurred = Image.fromarray(np.uint8(np.clip(f * 255.0 + 0.5, 0, 255))).filter(ImageFilter.GaussianBlur(0.3 + 0.9 * rng.random()))
        f = np.asarray(blurred, np.float32) / 255.0
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0.0, 3.0 * rng.random() / 255.0, f.shape)
    return np.uint8(np.clip((f + noise) * 255.0 + 0.5, 0, 255))


def sample_batch(train, n, rng, photometric=False):
    xs, ts = [], []
    for _ in range(n):
        it = train[rng.randrange(len(train))]
        h, w = it["img"].shape
        y0 = rng.randrange(0, h - TILE + 1)
        x0 = rng.randrange(0, w - TILE + 1)
        img = it["img"][y0 : y0 + TILE, x0 : x0 + TILE]
        m = it["boundary"][y0 : y0 + TILE, x0 : x0 + TILE]
        k = rng.randrange(4)
        img, m = np.rot90(img, k), np.rot90(m, k)
        if rng.random() < 0.5:
            img, m = img[:, ::-1], m[:, ::-1]
        if photometric:
            img = etch_jitter(np.ascontiguousarray(img), rng)
        x = (img.astype(np.float32) / 255.0 - MEAN) / STD
        gain = 0.75 + 0.5 * rng.random()
        bias = (rng.random() - 0.5) * 0.3 / STD
        xs.append(x * gain + bias)
        ts.append(m.astype(np.float32))
    x = torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, None]))
    t = F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(np.stack(ts)[:, None])), CELL)
    return x, t


def predict_map(model_fn, img):
    """Stitched full-resolution boundary probability of one image, as the runtime does:
    overlapping tiles, bilinear upsampling from cell centres, overlaps averaged."""
    h, w = img.shape
    acc = np.zeros((h, w), np.float32)
    cnt = np.zeros((h, w), np.float32)
    for y0 in tile_origins(h):
        for x0 in tile_origins(w):
            x = (img[y0 : y0 + TILE, x0 : x0 + TILE].astype(np.float32) / 255.0 - MEAN) / STD
            m = np.asarray(model_fn(x[None, None]), np.float32).reshape(1, 1, TILE // CELL, TILE // CELL)
            up = F.interpolate(torch.from_numpy(m), size=(TILE, TILE), mode="bilinear", align_corners=False)
            acc[y0 : y0 + TILE, x0 : x0 + TILE] += up[0, 0].numpy()
            cnt[y0 : y0 + TILE, x0 : x0 + TILE] += 1
    return acc / np.maximum(cnt, 1)


def dice_at(maps, items, levels):
    inter = np.zeros(len(levels))
    total = np.zeros(len(levels))
    for pm, it in zip(maps, items):
        truth = it["boundary"]
        for k, lv in enumerate(levels):
            pred = pm >= lv
            inter[k] += (pred & truth).sum()
            total[k] += pred.sum() + truth.sum()
    return 2 * inter / np.maximum(total, 1)


def train_model(width, fit, steps, batch, lr, seed, label="", photometric=False):
    """One network of `width` trained on the tiles `fit` for `steps` steps (5 % warm-up, then
    cosine to zero at the last step; the schedule is by steps only, so a run reproduces); the
    last step's weights are the result."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = UNet(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    t0 = time.time()
    for step in range(1, steps + 1):
        progress = (step - 1) / steps
        rate = lr * (progress / 0.05 if progress < 0.05 else 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - 0.05) / 0.95))))
        for g in opt.param_groups:
            g["lr"] = rate
        model.train()
        x, t = sample_batch(fit, batch, rng, photometric)
        logits = model(x)
        p = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, t)
        dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        loss = bce + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            print(f"{label}step {step} lr {rate:.5f} bce {bce.item():.4f} dice-loss {dice.item():.4f} {time.time() - t0:.0f}s", flush=True)
    return model.eval()


def train_members(fit, args, label, cache=None):
    """The design's network trained on `fit`: one U-Net, or with --ensemble N an Ensemble of N
    trained alone, member j with seed + j * MEMBER_SEED. With `cache` (a folder), each member's
    weights are kept there beside what trained them, and a member already there for the same
    width, steps, batch, rate, seed, etch jitter and tiles is loaded, not trained again (so a
    larger ensemble reuses a smaller one's members)."""
    members = []
    for j in range(args.ensemble):
        seed = args.seed + j * MEMBER_SEED
        what = {"width": list(args.width), "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": seed,
                "photometric": args.photometric, "tiles": sorted(it["name"] for it in fit)}
        pt = json_path = None
        if cache:
            os.makedirs(cache, exist_ok=True)
            pt, json_path = os.path.join(cache, f"member{j}.pt"), os.path.join(cache, f"member{j}.json")
            if os.path.exists(pt) and os.path.exists(json_path):
                with open(json_path) as fh:
                    if json.load(fh) == what:
                        net = UNet(args.width)
                        net.load_state_dict(torch.load(pt))
                        print(f"{label}member {j}: the weights in {pt}", flush=True)
                        members.append(net.eval())
                        continue
        net = train_model(args.width, fit, args.steps, args.batch, args.lr, seed,
                          label + (f"member {j} " if args.ensemble > 1 else ""), args.photometric)
        if cache:
            torch.save(net.state_dict(), pt)
            with open(json_path, "w") as fh:
                json.dump(what, fh)
        members.append(net)
    return members[0] if args.ensemble == 1 else Ensemble(members).eval()


def export(model, out, calib_items, seed):
    """The f32 ONNX file and its int8 (QDQ) twin in `out`, calibrated on 48 random crops of
    `calib_items`; returns (int8 path, f32 path)."""
    stem = "grains_316l"
    f32_path = os.path.join(out, f"{stem}.f32.onnx")
    int8_path = os.path.join(out, f"{stem}.onnx")
    torch.onnx.export(
        Export(fuse(model)).eval(),
        torch.zeros(1, 1, TILE, TILE),
        f32_path,
        input_names=["image"],
        output_names=["mask"],
        opset_version=13,
        do_constant_folding=True,
        dynamo=False,
    )
    crng = random.Random(seed + 1)
    calib = []
    for _ in range(48):
        it = calib_items[crng.randrange(len(calib_items))]
        y0 = crng.randrange(0, it["img"].shape[0] - TILE + 1)
        x0 = crng.randrange(0, it["img"].shape[1] - TILE + 1)
        calib.append(it["img"][y0 : y0 + TILE, x0 : x0 + TILE])
    common.MEAN, common.STD = MEAN, STD
    common.quantise_int8(f32_path, int8_path, calib)
    return int8_path, f32_path


def micrographs(items):
    """The micrographs of `items` in number order (RG1, RG2, ...)."""
    return sorted({it["micrograph"] for it in items}, key=lambda s: int(s[2:]))


def cv_folds(train, k, seed):
    """The training micrographs dealt into k folds, seeded (every tile of a micrograph in one fold)."""
    micro = micrographs(train)
    random.Random(f"{seed}:grains-cv").shuffle(micro)
    return [micrographs([{"micrograph": m} for m in micro[i::k]]) for i in range(k)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "grains_316l"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--width", default=",".join(map(str, WIDTH)), help="the U-Net's channels per level and in the middle (4 numbers: three pooling levels)")
    ap.add_argument("--steps", type=int, default=STEPS, help="training steps; the schedule is by steps only")
    ap.add_argument("--folds", type=int, default=FOLDS, help="cross-validation folds over the training micrographs")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    # The analysis settings shipped in the manifest are chosen with the Rust analysis itself
    # (`ferroscope eval grains --list <fold tiles> --threshold T --min-grain-um2 M
    # --bridge-gap-um B`) on the cross-validation models' out-of-fold tiles (TUNING_RULE).
    ap.add_argument("--ferroscope", default=os.path.join(ROOT, "target", "release", "ferroscope"),
                    help="the binary whose `eval grains` chooses the analysis settings")
    ap.add_argument("--fold-dir", help="keep the cross-validation models here (default: a new temporary folder); "
                    "a fold whose model is already there, for the same width, steps, seed and micrographs, is not trained again")
    ap.add_argument("--photometric", action="store_true",
                    help="also jitter each training crop's etch and exposure (gamma, blur, noise: etch_jitter); not the shipped design")
    ap.add_argument("--symmetries", type=int, default=1, choices=(1, 2, 4, 8),
                    help="the map of each model tile averaged over this many flips and quarter turns (the manifest's "
                         "`symmetries`, `eval grains --symmetries`); the shipped design runs each tile once")
    ap.add_argument("--ensemble", type=int, default=1,
                    help="N networks of the same width and steps, trained alone with seeds seed + j * 1000, their logits "
                         "averaged in one graph (N times the multiply-adds); the shipped design is one network")
    ap.add_argument("--cv-only", action="store_true",
                    help="cross-validate this width and schedule and write its record; train and ship nothing")
    ap.add_argument("--ship-only", action="store_true",
                    help="export + quantise the saved refit with its saved settings, no training")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    args.width = tuple(int(w) for w in args.width.split(","))
    if not 3 <= len(args.width) <= 6 or min(args.width) < 1:
        raise SystemExit(f"--width {args.width}: 3 to 6 positive channel counts, one per level and the middle, e.g. 12,24,32,48")
    if args.ensemble < 1:
        raise SystemExit(f"--ensemble {args.ensemble}: at least 1")
    if args.folds < 2:
        raise SystemExit(f"--folds {args.folds}: at least 2")
    ckpt = os.path.join(ROOT, "models", "training", "grains_316l.pt")

    items = load_set(args.data)
    train, held = split(items, args.seed, args.val_fraction)
    print(f"train {len(train)} tiles of {len(micrographs(train))} micrographs, held-out {len(held)} of {len(micrographs(held))}", flush=True)
    print(f"width {args.width}: parameters {sum(p.numel() for p in UNet(args.width).parameters())}", flush=True)
    if not os.path.exists(args.ferroscope):
        raise SystemExit(f"{args.ferroscope}: not found; it chooses the analysis settings (cargo build --release)")
    if args.ship_only:
        with open(ckpt + ".json") as fh:
            saved = json.load(fh)
        model = build(tuple(saved["width"]), saved.get("ensemble", 1))
        model.load_state_dict(torch.load(ckpt))
        args.width, args.steps, args.folds = tuple(saved["width"]), saved["steps"], saved["folds"]
        args.ensemble = saved.get("ensemble", 1)
        args.photometric, args.symmetries = saved.get("photometric", False), saved.get("symmetries", 1)
        return ship(model.eval(), train, held, saved["settings"], args)
    record = cross_validate(train, args)
    if args.cv_only:
        return
    print(f"refit on all {len(train)} training tiles, {args.steps} steps", flush=True)
    model = train_members(train, args, "refit ")
    torch.save(model.state_dict(), ckpt)
    with open(ckpt + ".json", "w") as fh:
        json.dump({"width": list(args.width), "steps": args.steps, "folds": args.folds, "seed": args.seed,
                   "settings": record["chosen"],
                   **({"photometric": True} if args.photometric else {}),
                   **({"ensemble": args.ensemble} if args.ensemble != 1 else {}),
                   **({"symmetries": args.symmetries} if args.symmetries != 1 else {})}, fh)
    ship(model, train, held, record["chosen"], args)


def cross_validate(train, args):
    """k models, each trained on the other folds' micrographs; every training tile is scored by a
    model that never saw its micrograph, and the analysis settings are chosen on those scores by
    TUNING_RULE. Writes models/training/grains_316l.cv-<width>-<steps>.json and returns it."""
    folds = cv_folds(train, args.folds, args.seed)
    tmp = args.fold_dir or tempfile.mkdtemp(prefix="grains-cv-")
    runs = []
    for k, fold in enumerate(folds):
        fit = [it for it in train if it["micrograph"] not in fold]
        test = [it for it in train if it["micrograph"] in fold]
        d = os.path.join(tmp, f"fold{k}")
        manifest = os.path.join(d, "grains_316l.toml")
        what = {"width": list(args.width), "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed, "fold": fold}
        if args.photometric:
            what["photometric"] = True
        if args.ensemble != 1:
            what["ensemble"] = args.ensemble
        stamp = os.path.join(d, "trained.json")
        runs.append((manifest, test))
        if os.path.exists(stamp) and os.path.exists(manifest):
            with open(stamp) as fh:
                if json.load(fh) == what:
                    print(f"fold {k}: {', '.join(fold)}: the model in {d}", flush=True)
                    continue
        print(f"fold {k}: {', '.join(fold)} ({len(test)} tiles) held back, {len(fit)} tiles trained on", flush=True)
        model = train_members(fit, args, f"fold {k} ", cache=os.path.join(d, "members") if args.ensemble > 1 else None)
        os.makedirs(d, exist_ok=True)
        int8_path, f32_path = export(model, d, fit, args.seed)
        write_manifest(manifest, START, fit, test, fold, int8_path, f32_path, args)
        with open(stamp, "w") as fh:
            json.dump(what, fh)
    best, tried = tune(runs, args)
    alone = members_alone(train, folds, tmp, runs, best, args) if args.ensemble > 1 else None
    name = f"grains_316l.cv-{'-'.join(map(str, args.width))}-{args.steps}{design_suffix(args)}.json"
    record = {
        "rule": TUNING_RULE,
        "width": list(args.width),
        "steps": args.steps,
        "photometric": args.photometric,
        "ensemble": args.ensemble,
        "symmetries": args.symmetries,
        "batch": args.batch,
        "seed": args.seed,
        "folds": folds,
        "tiles": len(train),
        "chosen": best,
        "at_chosen": next(t for t in tried if all(t[k] == v for k, v in best.items())),
        "tried": tried,
        **({"members_alone": alone} if alone else {}),
    }
    common.write_json(os.path.join(ROOT, "models", "training", name), record)
    print(f"cross-validation record models/training/{name}: chosen {best}, {record['at_chosen']}", flush=True)
    return record


def members_alone(train, folds, tmp, runs, chosen, args):
    """Each member of a cross-validated ensemble exported and scored alone on the out-of-fold
    tiles, at the ensemble's chosen settings and at the shipped manifest's (what the averaging
    adds, setting for setting); the ensemble's own figures at the shipped settings beside them
    (`runs`: the ensemble's (manifest, out-of-fold tiles) per fold)."""
    shipped = {k: float(v) for k, v in read_shipped_settings().items()}
    at = [chosen] + ([shipped] if shipped != chosen else [])
    out = {"ensemble": [dict(s, **score_cv(runs, args, s)) for s in at[1:]]}
    for j in range(args.ensemble):
        alone = []
        for k, fold in enumerate(folds):
            fit = [it for it in train if it["micrograph"] not in fold]
            test = [it for it in train if it["micrograph"] in fold]
            d = os.path.join(tmp, f"fold{k}", f"alone{j}")
            os.makedirs(d, exist_ok=True)
            net = UNet(args.width)
            net.load_state_dict(torch.load(os.path.join(tmp, f"fold{k}", "members", f"member{j}.pt")))
            int8_path, f32_path = export(net.eval(), d, fit, args.seed)
            manifest = os.path.join(d, "grains_316l.toml")
            write_manifest(manifest, START, fit, test, fold, int8_path, f32_path, argparse.Namespace(**dict(vars(args), ensemble=1)))
            alone.append((manifest, test))
        for s in at:
            r = score_cv(alone, args, s)
            out.setdefault(f"member{j}", []).append(dict(s, **r))
            print(f"  member {j} alone {s}: correlation {r['histogram_correlation']:.4f} |dG| {r['g_mean_abs_error']:.3f}", flush=True)
    return out


def read_shipped_settings():
    """The analysis settings of the shipped network (the saved refit's record)."""
    with open(os.path.join(ROOT, "models", "training", "grains_316l.pt.json")) as fh:
        return json.load(fh)["settings"]


def design_suffix(args):
    """What a cross-validation record's name adds for a design other than the default's."""
    return (("-photometric" if args.photometric else "") + (f"-e{args.ensemble}" if args.ensemble != 1 else "")
            + (f"-s{args.symmetries}" if args.symmetries != 1 else ""))


def ship(model, train, held, settings, args):
    out = args.out
    stem = "grains_316l"
    int8_path, f32_path = export(model, out, train, args.seed)
    fn = common.ort_fn(int8_path)
    tr_maps = [predict_map(fn, it["img"]) for it in train]
    print("training boundary Dice per level (int8, onnxruntime):",
          dict(zip(LEVELS, np.round(dice_at(tr_maps, train, list(LEVELS)), 4))), flush=True)

    with open(os.path.join(out, f"{stem}.heldout.txt"), "w") as fh:
        fh.write("# held-out grains_316l tiles (seeded split by micrograph); never trained on\n")
        for it in held:
            fh.write(f"{it['name']}.jpg\n")
    manifest = os.path.join(out, f"{stem}.toml")
    write_manifest(manifest, settings, train, held, micrographs(held), int8_path, f32_path, args)
    print(f"wrote {manifest} with {settings}", flush=True)


def eval_tiles(manifest, tiles, args, s):
    """`ferroscope eval grains` (int8) over `tiles` with the settings s."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("".join(f"{it['name']}.jpg\n" for it in tiles))
        listf = fh.name
    try:
        cmd = [args.ferroscope, "eval", "grains", "--model", manifest, "--data", args.data, "--list", listf,
               "--precision", "int8", "--threshold", str(s["pixel_threshold"]),
               "--min-grain-um2", str(s["min_grain_um2"]), "--bridge-gap-um", str(s["bridge_gap_um"]),
               "--symmetries", str(args.symmetries), "--json"]
        run = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        os.unlink(listf)
    if run.returncode != 0:
        raise SystemExit(f"{manifest}: eval grains with {s} failed: {run.stderr.strip()}")
    r = json.loads(run.stdout)
    if r["images"] != len(tiles):
        raise SystemExit(f"{manifest}: eval grains measured {r['images']} of {len(tiles)} tiles: {r['errors']}")
    return r


def histogram(entries):
    """A `histogram_*` list of `eval grains --json` as counts per GOST number -3..14."""
    h = np.zeros(G_BINS[1] - G_BINS[0] + 1)
    for e in entries:
        h[e["g"] - G_BINS[0]] += e["grains"]
    return h


def correlation(a, b):
    """Histogram correlation as src/grains/standards.rs computes it (OpenCV's HISTCMP_CORREL),
    on histograms normalised to sum 1; a flat histogram correlates 1 with an equal one, else 0."""
    a, b = a / max(a.sum(), 1), b / max(b.sum(), 1)
    da, db = a - a.mean(), b - b.mean()
    s1, s2 = (da * da).sum(), (db * db).sum()
    if s1 == 0 or s2 == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float((da * db).sum() / math.sqrt(s1 * s2))


def score_cv(runs, args, s):
    """Out-of-fold figures of the settings s: mean |dG| over all tiles, the histogram correlation
    of the histograms pooled over all tiles, and per fold."""
    errors, mask, model, per_fold = [], 0, 0, []
    # the folds' evaluations are independent processes: as many at once as there are cores
    with ThreadPoolExecutor(max_workers=min(len(runs), os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda run: eval_tiles(run[0], run[1], args, s), runs))
    for (manifest, tiles), r in zip(runs, results):
        errors += [p["g_abs_error"] for p in r["per_image"]]
        hm, hp = histogram(r["histogram_mask"]), histogram(r["histogram_model"])
        mask, model = mask + hm, model + hp
        per_fold.append({"g_mean_abs_error": r["g_mean_abs_error"], "histogram_correlation": r["histogram_correlation"],
                         "g_mean_signed_error": float(np.mean([p["gost_g"] - p["gost_g_mask"] for p in r["per_image"]])),
                         "boundary_dice": r["boundary_dice"]})
    return {"g_mean_abs_error": float(np.mean(errors)), "histogram_correlation": correlation(mask, model),
            "per_fold": per_fold}


def tune(runs, args):
    """The analysis settings by TUNING_RULE, one at a time; returns them and every setting tried."""
    best, tried, seen = dict(START), [], {}

    def key(r):
        ok = r["histogram_correlation"] >= MIN_CORRELATION
        return (ok, -r["g_mean_abs_error"] if ok else r["histogram_correlation"])

    for _ in range(TUNING_ROUNDS):
        before = dict(best)
        for name, values in (("pixel_threshold", LEVELS), ("min_grain_um2", MIN_GRAINS_UM2), ("bridge_gap_um", BRIDGE_GAPS_UM)):
            scored = []
            for v in values:
                s = dict(best, **{name: v})
                at = tuple(sorted(s.items()))
                if at not in seen:
                    seen[at] = r = score_cv(runs, args, s)
                    tried.append(dict(s, **r))
                    print(f"  out-of-fold {s}: correlation {r['histogram_correlation']:.4f} |dG| {r['g_mean_abs_error']:.3f}", flush=True)
                scored.append((key(seen[at]), v))
            best[name] = max(scored)[1]
        if best == before:
            break
    return best, tried


def symmetries_line(args):
    """The manifest's `symmetries` line (none for one run a tile, the default)."""
    if args.symmetries == 1:
        return ""
    return f"# each model tile's map averaged over this many flips and quarter turns\nsymmetries = {args.symmetries}\n"


def ensemble_words(args):
    """What the manifest's design adds for an ensemble (nothing for one network)."""
    if args.ensemble == 1:
        return ""
    return (f"{args.ensemble} networks trained alone (seeds {args.seed} + j*{MEMBER_SEED}), their logits averaged by one 1x1 "
            "convolution over their last features side by side; each a ")


def write_manifest(path, settings, train, held, held_micro, int8_path, f32_path, args):
    stem = "grains_316l"
    toml = f"""# Manifest of a ferroscope grains model. Paths are relative to this file.
[model]
name = "{stem}"
tool = "grains"
version = "1.2.0"
file = "{stem}.onnx"
sha256 = "{common.sha256_file(int8_path)}"
f32_file = "{stem}.f32.onnx"
f32_sha256 = "{common.sha256_file(f32_path)}"
design = "{ensemble_words(args)}compact U-Net (widths {'/'.join(map(str, args.width))}, two 3x3 convs per encoder level, 2x2 max-pooling {len(args.width) - 1} times, 2x2 transposed-conv decoder with skip connections and one 3x3 conv per level) after a 2x2 average: a grain-boundary probability map at 1/2 of the tile resolution. Contours are closed by the analysis (threshold, gap bridging, grain labelling), not by a second U-Net as in W-Net."

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
activation = "sigmoid"

[grains]
# tiles of {TILE}x{TILE} image pixels, overlapping by at least min_overlap pixels, blended by
# averaging; the map (1/{CELL} of the tile) is the grain-boundary probability
tile = {TILE}
min_overlap = {MIN_OVERLAP}
cell = {CELL}
# a pixel is grain boundary at or above this probability
pixel_threshold = {settings["pixel_threshold"]}
threshold_rule = "{TUNING_RULE}"
# the training micrographs' scale; `--um-per-px` gives another microscope's
um_per_px = {UM_PER_PX:.6f}
# regions smaller than this are not grains (masks and model alike)
min_grain_um2 = {settings["min_grain_um2"]}
# boundary gaps in the model map up to this are closed
bridge_gap_um = {settings["bridge_gap_um"]}
{symmetries_line(args)}
[quantisation]
format = "onnx QDQ: int8 weights (per output channel, 7-bit range), uint8 activations (per-tensor) around each Conv+Relu; pooling, transposed convolutions and concatenation f32"
calibration = "MinMax over 48 random training crops"
tool = "onnxruntime.quantization.quantize_static"

[training]
recipe = "models/training/grains_316l.py"
dataset = "../shared/datasets/grains_316l"
split = "seeded 80/20 train/held-out by micrograph (all 12 tiles of a micrograph on one side); held-out micrographs {', '.join(held_micro)}"
heldout_list = "{stem}.heldout.txt"
train_images = {len(train)}
heldout_images = {len(held)}
steps = {args.steps}
checkpoint_rule = "the last step of a refit on all training micrographs; width and steps chosen by {args.folds}-fold cross-validation over the training micrographs (models/training/grains_316l.cv-*.json)"
batch = {args.batch}
seed = {args.seed}
crop = {TILE}
loss = "BCE + soft Dice on the boundary map"
"""
    with open(path, "w") as fh:
        fh.write(toml)


if __name__ == "__main__":
    main()
