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
micrograph share grains): seeded 80/20 train/held-out, and the checkpoint is chosen on a
selection split of the training micrographs. Training crops are 256x256 (the model input),
with flips, 90-degree turns and brightness/contrast jitter. Images are converted to gray as
the runtime does (image crate: Rec. 709 weights, truncated).

Training runs a fixed number of steps (--steps; the schedule is by steps only, so a run
reproduces). The analysis settings (pixel threshold, smallest grain, bridged gap) are then chosen
with the Rust analysis itself, `ferroscope eval grains` over the training tiles (--ferroscope,
built first), never the held-out ones; every setting tried is written to
models/training/grains_316l.tuning.json.

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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import common

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TILE = 256  # model input, image pixels
CELL = 2  # image pixels per map cell (2x2 average inside the graph)
MIN_OVERLAP = 32  # image pixels shared by neighbouring tiles, at least
MEAN = 0.5
STD = 0.25
UM_PER_PX = 1 / 2.25  # the dataset's scale
# The analysis settings are searched one at a time in this order, each at the best of those before.
LEVELS = (0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7)
MIN_GRAINS_UM2 = (20.0, 60.0, 100.0)
BRIDGE_GAPS_UM = (0.0, 6.0, 10.0)
TUNING_RULE = (
    "pixel_threshold, then min_grain_um2, then bridge_gap_um (each at the best of the ones before; start 60 um2, 6 um): "
    "the best pooled histogram correlation (to 4 decimals, then the smallest mean |dG|) of `ferroscope eval grains` "
    "(int8) over the training tiles; levels 0.2..0.7, 20/60/100 um2, 0/6/10 um"
)


def block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class UNet(nn.Module):
    def __init__(self, width=(12, 24, 32, 48)):
        super().__init__()
        c0, c1, c2, c3 = width
        self.pool_in = nn.AvgPool2d(2)
        self.e0 = nn.Sequential(*block(1, c0), *block(c0, c0))
        self.e1 = nn.Sequential(*block(c0, c1), *block(c1, c1))
        self.e2 = nn.Sequential(*block(c1, c2), *block(c2, c2))
        self.mid = nn.Sequential(*block(c2, c3), *block(c3, c3))
        self.u2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.d2 = nn.Sequential(*block(2 * c2, c2))
        self.u1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.d1 = nn.Sequential(*block(2 * c1, c1))
        self.u0 = nn.ConvTranspose2d(c1, c0, 2, stride=2)
        self.d0 = nn.Sequential(*block(2 * c0, c0))
        self.out = nn.Conv2d(c0, 1, 1)

    def forward(self, x):
        x = self.pool_in(x)
        f0 = self.e0(x)
        f1 = self.e1(F.max_pool2d(f0, 2))
        f2 = self.e2(F.max_pool2d(f1, 2))
        m = self.mid(F.max_pool2d(f2, 2))
        d2 = self.d2(torch.cat([self.u2(m), f2], 1))
        d1 = self.d1(torch.cat([self.u1(d2), f1], 1))
        d0 = self.d0(torch.cat([self.u0(d1), f0], 1))
        return self.out(d0)


class Export(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.sigmoid(self.model(x))


def fuse(model):
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(model).eval()
    for name in ("e0", "e1", "e2", "mid", "d2", "d1", "d0"):
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


def sample_batch(train, n, rng):
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "grains_316l"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--select-fraction", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=1000, help="training steps; the schedule is by steps only")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    # The analysis settings shipped in the manifest are chosen with the Rust analysis itself
    # (`ferroscope eval grains --list <training tiles> --threshold T --min-grain-um2 M
    # --bridge-gap-um B`) over the training tiles, never the held-out ones (TUNING_RULE).
    ap.add_argument("--ferroscope", default=os.path.join(ROOT, "target", "release", "ferroscope"),
                    help="the binary whose `eval grains` chooses the analysis settings")
    ap.add_argument("--ship-only", action="store_true", help="export + quantise the saved checkpoint, no training")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    rng = random.Random(args.seed)
    ckpt = os.path.join(ROOT, "models", "training", "grains_316l.pt")

    items = load_set(args.data)
    train, held = split(items, args.seed, args.val_fraction)
    print(f"train {len(train)} tiles of {len({i['micrograph'] for i in train})} micrographs, held-out {len(held)} of {len({i['micrograph'] for i in held})}", flush=True)
    model = UNet()
    print(f"parameters {sum(p.numel() for p in model.parameters())}", flush=True)
    if not os.path.exists(args.ferroscope):
        raise SystemExit(f"{args.ferroscope}: not found; it chooses the analysis settings (cargo build --release)")
    if args.ship_only:
        model.load_state_dict(torch.load(ckpt))
        with open(ckpt + ".json") as fh:
            args.chosen_step = json.load(fh)["chosen_step"]
        return ship(model.eval(), train, held, args)
    fit, select = split(train, args.seed + 1, args.select_fraction)
    print(f"fit {len(fit)} tiles, selection {len(select)} tiles ({sorted({i['micrograph'] for i in select})})", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    t0 = time.time()
    best = None
    for step in range(1, args.steps + 1):
        # the schedule: 5 % warm-up, then cosine to zero at the last step
        progress = (step - 1) / args.steps
        lr = args.lr * (progress / 0.05 if progress < 0.05 else 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - 0.05) / 0.95))))
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        x, t = sample_batch(fit, args.batch, rng)
        logits = model(x)
        p = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, t)
        dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        loss = bce + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        elapsed = time.time() - t0
        if step % 25 == 0:
            print(f"step {step} lr {lr:.5f} bce {bce.item():.4f} dice-loss {dice.item():.4f} {elapsed:.0f}s", flush=True)
        last = step == args.steps
        if progress >= 0.3 and (step % args.eval_every == 0 or last):
            model.eval()
            with torch.no_grad():
                fn = lambda a: torch.sigmoid(model(torch.from_numpy(a))).numpy()
                maps = [predict_map(fn, it["img"]) for it in select]
            d = float(dice_at(maps, select, [0.5])[0])
            mark = ""
            if best is None or d > best[0]:
                best = (d, step)
                mark = " *"
                torch.save(model.state_dict(), ckpt)
                with open(ckpt + ".json", "w") as fh:
                    json.dump({"chosen_step": step, "selection_dice": d, "steps": args.steps, "seed": args.seed}, fh)
            print(f"  selection Dice@0.5 {d:.4f}{mark}", flush=True)
    print(f"chosen checkpoint: step {best[1]} (selection Dice {best[0]:.4f})", flush=True)
    args.chosen_step = best[1]
    model.load_state_dict(torch.load(ckpt))
    ship(model.eval(), train, held, args)


def ship(model, train, held, args):
    import onnxruntime as ort

    out = args.out
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
    crng = random.Random(args.seed + 1)
    calib = []
    for _ in range(48):
        it = train[crng.randrange(len(train))]
        y0 = crng.randrange(0, it["img"].shape[0] - TILE + 1)
        x0 = crng.randrange(0, it["img"].shape[1] - TILE + 1)
        calib.append(it["img"][y0 : y0 + TILE, x0 : x0 + TILE])
    common.MEAN, common.STD = MEAN, STD
    common.quantise_int8(f32_path, int8_path, calib)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(int8_path, so, providers=["CPUExecutionProvider"])
    fn = lambda a: sess.run(None, {"image": a.astype(np.float32)})[0]
    tr_maps = [predict_map(fn, it["img"]) for it in train]
    print("training boundary Dice per level (int8, onnxruntime):",
          dict(zip(LEVELS, np.round(dice_at(tr_maps, train, list(LEVELS)), 4))), flush=True)

    with open(os.path.join(out, f"{stem}.heldout.txt"), "w") as fh:
        fh.write("# held-out grains_316l tiles (seeded split by micrograph); never trained on\n")
        for it in held:
            fh.write(f"{it['name']}.jpg\n")
    held_micro = sorted({it["micrograph"] for it in held}, key=lambda s: int(s[2:]))
    manifest = os.path.join(out, f"{stem}.toml")
    settings = {"pixel_threshold": 0.5, "min_grain_um2": 60.0, "bridge_gap_um": 6.0}
    write_manifest(manifest, settings, train, held, held_micro, int8_path, f32_path, args)
    settings = tune(manifest, train, args, settings)
    write_manifest(manifest, settings, train, held, held_micro, int8_path, f32_path, args)
    print(f"wrote {manifest} with {settings}", flush=True)


def eval_training(manifest, train, args, s):
    """`ferroscope eval grains` (int8) over the training tiles with the settings s."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("".join(f"{it['name']}.jpg\n" for it in train))
        listf = fh.name
    try:
        cmd = [args.ferroscope, "eval", "grains", "--model", manifest, "--data", args.data, "--list", listf,
               "--precision", "int8", "--threshold", str(s["pixel_threshold"]),
               "--min-grain-um2", str(s["min_grain_um2"]), "--bridge-gap-um", str(s["bridge_gap_um"]), "--json"]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    finally:
        os.unlink(listf)
    if r["images"] != len(train):
        raise SystemExit(f"eval grains measured {r['images']} of {len(train)} training tiles: {r['errors']}")
    return r


def tune(manifest, train, args, start):
    """The analysis settings by TUNING_RULE, one at a time; every try goes to grains_316l.tuning.json."""
    best, tried, seen = dict(start), [], {}
    key = lambda r: (round(r["histogram_correlation"], 4), -r["g_mean_abs_error"])
    for name, values in (("pixel_threshold", LEVELS), ("min_grain_um2", MIN_GRAINS_UM2), ("bridge_gap_um", BRIDGE_GAPS_UM)):
        scored = []
        for v in values:
            s = dict(best, **{name: v})
            at = tuple(sorted(s.items()))
            if at not in seen:
                seen[at] = r = eval_training(manifest, train, args, s)
                tried.append(dict(s, histogram_correlation=r["histogram_correlation"],
                                  g_mean_abs_error=r["g_mean_abs_error"], boundary_dice=r["boundary_dice"]))
            r = seen[at]
            scored.append((key(r), v))
            print(f"  training tiles {s}: correlation {r['histogram_correlation']:.4f} |dG| {r['g_mean_abs_error']:.3f} "
                  f"Dice {r['boundary_dice']:.4f}", flush=True)
        best[name] = max(scored)[1]
    with open(os.path.join(ROOT, "models", "training", "grains_316l.tuning.json"), "w") as fh:
        json.dump({"rule": TUNING_RULE, "images": len(train), "chosen": best, "tried": tried}, fh, indent=1)
        fh.write("\n")
    return best


def write_manifest(path, settings, train, held, held_micro, int8_path, f32_path, args):
    stem = "grains_316l"
    toml = f"""# Manifest of a ferroscope grains model. Paths are relative to this file.
[model]
name = "{stem}"
tool = "grains"
version = "1.1.0"
file = "{stem}.onnx"
sha256 = "{common.sha256_file(int8_path)}"
f32_file = "{stem}.f32.onnx"
f32_sha256 = "{common.sha256_file(f32_path)}"
design = "compact U-Net (widths 12/24/32/48, two 3x3 convs per encoder level, three 2x2 max-pool levels, 2x2 transposed-conv decoder with skip connections and one 3x3 conv per level) after a 2x2 average: a grain-boundary probability map at 1/2 of the tile resolution. Contours are closed by the analysis (threshold, gap bridging, grain labelling), not by a second U-Net as in W-Net."

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
chosen_step = {args.chosen_step}
checkpoint_rule = "highest boundary Dice at 0.5 on a selection split of the training micrographs ({args.select_fraction:.0%}, seed {args.seed + 1}), every {args.eval_every} steps from 30 % of the schedule on"
batch = {args.batch}
seed = {args.seed}
crop = {TILE}
loss = "BCE + soft Dice on the boundary map"
"""
    with open(path, "w") as fh:
        fh.write(toml)


if __name__ == "__main__":
    main()
