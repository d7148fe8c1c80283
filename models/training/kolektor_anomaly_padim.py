"""A KolektorSDD anomaly model from good images only with features learnt on NEU (PaDiM-style),
kept for comparison: it is not shipped.

    python3 models/training/kolektor_anomaly_padim.py            # from the repository root (about 1 min on 2 cores)
    python3 models/training/kolektor_anomaly_padim.py --search   # first re-run the design search (about 10 min more)

Result: built as anomaly model 3.0.0 candidate and scored once on the held-out list
(models/heldout_log.jsonl, 2026-12-05T20:41:47Z, model_sha256 1cc47fa1...): image AUROC 78.3 %
int8 (78.8 % f32), 32 of 35 defective frames missed at its threshold, although it separated
the simulated cracks on the validation frames better than the crack filter (0.89 against
0.83). Features learnt on NEU's 200x200 strip images do not single out KolektorSDD's faint
cracks from the commutator's own streaks; the shipped model (kolektor_anomaly.py) learns its
features on the good KolektorSDD frames themselves, with synthetic anomalies.

Design (after PaDiM, Defard et al. 2021: a pretrained network's patch features and a Gaussian
of them fitted on good parts):

* Features, learnt on other steel: the first two convolution blocks of the NEU classifier's
  backbone (models/training/neu_classify.pt, trained on NEU hot-rolled strip images only; no
  KolektorSDD image ever reached it), on the tile averaged 2x2 as the backbone sees NEU images.
  Block 1 gives 24 channels at 1/4 resolution (averaged 2x2 down to 1/8), block 2 48 channels
  at 1/8: 72 values per map cell of 8x8 frame pixels. They run as integer convolutions.
* The normal, from the good training frames only: one Gaussian of those 72 values (mean and
  covariance + REG * identity) shared by every cell. The map is the Mahalanobis distance: a 1x1
  convolution by the whitening matrix (the Cholesky factor of the inverse covariance, kept f32),
  squared, summed over channels, square root. The outer 16 frame columns on each side (the rim
  and the tile padding) are not scored. A sigmoid with offset and gain from the median and
  spread of the good training frames' maxima maps the distance to 0..1.

Every choice is made without a defective image: on the good validation frames and the same
frames with one simulated crack each (a thin dark curvilinear line, kolektor_crack_filter.crack),
scored as the runtime scores (stitched map, maximum after a box blur), by image AUROC.
`--search` re-runs the design search: the input scale (tile averaged 2x2 or full resolution),
the blocks read (1-2 or 1-3), a full or diagonal covariance and the regulariser (0.001, 0.01,
0.1, 1); ties go to the cheaper setting (2x2 averaged, blocks 1-2 and full resolution, blocks
1-3 both gave 0.8897). The score's blur radius (2, 4, 8, 16 px) is chosen on the int8 model,
and the threshold is the highest good validation score.

Split: the same as kolektor_crack_filter.py (seed 0): all 35 defective images and a seeded 20 %
of the good duplicate groups are held out (models/kolektor_anomaly.heldout.txt, never read
here); of the remaining good images, a seeded 15 % of the groups are the good validation set
(models/kolektor_anomaly.validation.txt: calibration and the choices above, never used to fit
the normal); the normal is fitted on the rest.

Writes models/kolektor_anomaly_padim.onnx (int8), models/kolektor_anomaly_padim.f32.onnx and the
manifest models/kolektor_anomaly_padim.toml, which `ferroscope eval anomaly` reads like the
shipped one (with --list models/kolektor_anomaly.heldout.txt), and rewrites the two lists
(the same split).
"""

import argparse
import itertools
import os
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from kolektor_crack_filter import best_blur, blurred_max, crack, frame_map, splits, tiles, write_lists
from kolektor_segment import ap_auroc, pad_width

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEM = "kolektor_anomaly_padim"
LISTS = "kolektor_anomaly"  # the split is the shipped anomaly model's
TILE = 512  # model input, frame pixels
MIN_OVERLAP = 64
MEAN = 0.5
STD = 0.25
HALF = True  # the tile averaged 2x2 before the backbone, as NEU images are (chosen by --search)
BLOCKS = 2  # backbone blocks read (chosen by --search)
REG = 0.01  # added to the covariance's diagonal (chosen by --search)
EDGE_PX = 16  # frame columns on each side that are not scored
CALIB_TILES = 32  # good training tiles, and as many of the same frames with a simulated crack


def neu_backbone():
    """The NEU classifier's backbone, BatchNorm folded into the convolutions, frozen."""
    ck = torch.load(os.path.join(ROOT, "models", "training", "neu_classify.pt"), map_location="cpu")
    bb = common.Backbone()
    bb.load_state_dict({k[len("backbone.") :]: v for k, v in ck["state_dict"].items() if k.startswith("backbone.")})
    bb.eval()
    return common.fuse_sequential(bb.features)


class PatchNormal(nn.Module):
    """[1, 1, 512, 512] normalised tile -> [1, 1, g, g] anomaly map (sigmoid), g = the grid of
    the last block read."""

    def __init__(self, half=HALF, blocks=BLOCKS):
        super().__init__()
        f = neu_backbone()  # AvgPool2d, then (Conv, ReLU) per block
        self.half = half
        self.blocks = nn.ModuleList(nn.Sequential(f[1 + 2 * i], f[2 + 2 * i]) for i in range(blocks))
        for p in self.parameters():
            p.requires_grad_(False)
        c = sum(b[0].out_channels for b in self.blocks)
        self.channels = c
        self.normal = nn.Conv2d(c, c, 1)
        grid = self.grid()
        self.cell = TILE // grid
        self.register_buffer("scored", torch.ones(1, 1, 1, grid))
        self.register_buffer("offset", torch.zeros(()))
        self.register_buffer("gain", torch.ones(()))

    def grid(self):
        g = TILE // (2 if self.half else 1)
        for i in range(len(self.blocks)):
            g //= 2
        return g * (2 if len(self.blocks) > 2 else 1)

    def features(self, x):
        """[n, c, g, g]: every block's output at the map grid (earlier ones averaged down,
        later ones bilinearly up), concatenated."""
        if self.half:
            x = F.avg_pool2d(x, 2)
        outs = []
        for b in self.blocks:
            x = b(x)
            outs.append(x)
        g = self.grid()
        z = []
        for o in outs:
            s = o.shape[-1]
            if s > g:
                o = F.avg_pool2d(o, s // g)
            elif s < g:
                o = F.interpolate(o, size=(g, g), mode="bilinear", align_corners=False)
            z.append(o)
        return torch.cat(z, 1)

    def distance(self, x):
        y = self.normal(self.features(x))
        return torch.sqrt((y * y).sum(1, keepdim=True))

    def forward(self, x):
        d = self.distance(x) * self.scored + (self.scored - 1.0) * 100.0
        return torch.sigmoid((d - self.offset) * self.gain)


# ---------------------------------------------------------------- the normal, from good images


@torch.no_grad()
def fit_normal(model, fit, reg=REG, diagonal=False):
    """Mean and whitening of the features over the good training frames' scored cells, then
    the sigmoid's offset and gain from the same frames' maxima. `diagonal` (search only)
    whitens by the variances alone."""
    c, n, count = model.channels, 0, 0
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, c, dtype=torch.float64)
    for it in fit:
        for _, x in tiles(it["img"]):
            z = model.features(x)[0]
            g = z.shape[-1]
            edge = max(1, round(EDGE_PX * g / TILE))
            z = z[..., edge : g - edge].reshape(c, -1).double()
            s1 += z.sum(1)
            s2 += z @ z.T
            count += z.shape[1]
            n += 1
    mu = s1 / count
    cov = s2 / count - torch.outer(mu, mu) + reg * torch.eye(c, dtype=torch.float64)
    if diagonal:
        w = torch.diag(1 / torch.sqrt(torch.diag(cov)))
    else:
        w = torch.linalg.cholesky(torch.linalg.inv(cov)).T  # w^T w = cov^-1
    model.normal.weight.copy_(w.float()[:, :, None, None])
    model.normal.bias.copy_(-(w @ mu).float())
    scored = torch.zeros(g)
    scored[edge : g - edge] = 1
    model.scored.copy_(scored.view(1, 1, 1, g))
    maxima = [max(float((model.distance(x) * model.scored).max()) for _, x in tiles(it["img"])) for it in fit]
    med = float(np.median(maxima))
    mad = float(np.median(np.abs(np.array(maxima) - med))) * 1.4826
    model.offset.fill_(med)
    model.gain.fill_(1.0 / max(mad, 1e-3))
    print(f"normal of {c} features from {n} good tiles; good training maxima: median {med:.3f}, spread {mad:.3f}", flush=True)


def validation_sets(val, seed):
    """The good validation frames and the same frames with a simulated crack, two each."""
    rng = np.random.default_rng(seed + 2)
    return [it["img"] for it in val], [crack(it["img"], rng) for it in val for _ in range(2)]


@torch.no_grad()
def search(fit, val, seed):
    """The design search: validation AUROC (good vs simulated cracks, best blur radius) of
    each setting, on the f32 model in torch."""
    clean, synth = validation_sets(val, seed)
    settings = [(h, b, False, REG) for h, b in itertools.product((True, False), (2, 3))]
    settings += [(HALF, BLOCKS, True, REG)]
    settings += [(HALF, BLOCKS, False, r) for r in (0.001, 0.1, 1.0)]
    for half, blocks, diagonal, reg in settings:
        model = PatchNormal(half, blocks).eval()
        fit_normal(model, fit, reg, diagonal)
        fn = lambda a: (model.distance(torch.from_numpy(a)) * model.scored).numpy()
        cm = [frame_map(fn, im, 0)[1] for im in clean]
        sm = [frame_map(fn, im, 0)[1] for im in synth]
        r, u = best_blur(cm, sm, "simulated cracks")
        print(
            f"search: {'2x2 averaged' if half else 'full resolution'}, blocks 1-{blocks}, "
            f"{'diagonal' if diagonal else 'full'} covariance, reg {reg:g}: blur {r}, AUROC {u:.4f}",
            flush=True,
        )


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "kolektorsdd"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-fraction", type=float, default=0.2, help="share of good duplicate groups held out")
    ap.add_argument("--val-fraction", type=float, default=0.15, help="share of the remaining good groups kept for calibration")
    ap.add_argument("--search", action="store_true", help="re-run the design search first (prints each setting's validation AUROC)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)

    fit, val, held = splits(args)
    if args.search:
        search(fit, val, args.seed)
    model = PatchNormal().eval()
    fit_normal(model, fit)
    ship(model, fit, val, held, args)


def ship(model, fit, val, held, args):
    out = args.out
    f32_path = os.path.join(out, f"{STEM}.f32.onnx")
    int8_path = os.path.join(out, f"{STEM}.onnx")
    torch.onnx.export(
        model,
        torch.zeros(1, 1, TILE, TILE),
        f32_path,
        input_names=["image"],
        output_names=["map"],
        opset_version=13,
        do_constant_folding=True,
        dynamo=False,
    )
    # Calibration: good training tiles and the same tiles with a simulated crack, so that the
    # activation grids reach what a crack gives (no defective image).
    crng = random.Random(args.seed + 1)
    nrng = np.random.default_rng(args.seed + 3)
    calib = []
    for _ in range(CALIB_TILES):
        it = fit[crng.randrange(len(fit))]
        y0 = crng.randrange(0, pad_width(it["img"]).shape[0] - TILE + 1)
        for img in (it["img"], crack(it["img"], nrng)):
            calib.append(pad_width(img)[y0 : y0 + TILE])
    common.MEAN, common.STD = MEAN, STD
    common.quantise_int8(f32_path, int8_path, calib, keep_f32_prefix="/normal/")

    # The score's blur radius and the threshold, on the int8 model, without any defective image.
    clean, synth = validation_sets(val, args.seed)
    fn = common.ort_fn(int8_path)
    clean_maps = [frame_map(fn, im, 0)[1] for im in clean]
    synth_maps = [frame_map(fn, im, 0)[1] for im in synth]
    blur, synthetic_auroc = best_blur(clean_maps, synth_maps, "simulated cracks (int8)")
    f32 = common.ort_fn(f32_path)
    _, f32_auroc = ap_auroc(
        [frame_map(f32, im, blur)[0] for im in clean] + [frame_map(f32, im, blur)[0] for im in synth],
        [0] * len(clean) + [1] * len(synth),
    )
    print(f"f32 at blur {blur}: validation AUROC {f32_auroc:.4f}", flush=True)
    val_scores = [blurred_max(m, blur) for m in clean_maps]
    thr = max(val_scores)
    print(f"good validation scores: max {thr:.4f}, median {float(np.median(val_scores)):.4f}", flush=True)

    write_lists(out, held, val)
    blocks = ", ".join(f"{b[0].out_channels}" for b in model.blocks)
    toml = f"""# Manifest of a ferroscope anomaly model. Paths are relative to this file.
[model]
name = "{STEM}"
tool = "anomaly"
version = "3.0.0"
file = "{STEM}.onnx"
sha256 = "{common.sha256_file(int8_path)}"
f32_file = "{STEM}.f32.onnx"
f32_sha256 = "{common.sha256_file(f32_path)}"
design = "learnt features and a normal from good images only (PaDiM-style): the first {len(model.blocks)} convolution blocks of the NEU classifier's backbone (trained on NEU strip images only) on the tile {'averaged 2x2' if HALF else 'at full resolution'}, {model.channels} channels ({blocks}) per map cell of {model.cell}x{model.cell} frame px; Mahalanobis distance to one Gaussian of the good training cells (covariance + {REG:g} I) as a 1x1 whitening convolution, squared and summed; edge columns not scored; sigmoid with offset and gain from the good training maxima"

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
cell = {model.cell}
# image score: the maximum of the full-resolution map after a box blur of this radius (frame px),
# the radius of 2, 4, 8, 16 that best separates the good validation frames from the same frames
# with a simulated crack (int8 AUROC {synthetic_auroc:.4f}; f32 {f32_auroc:.4f})
score_blur_px = {blur}
# the image is defective when its score reaches this
decision_threshold = {thr:.6f}
# a map pixel belongs to a region at or above this
pixel_threshold = {thr:.6f}
threshold_rule = "the highest image score over the {len(val)} good validation images (int8, models/{LISTS}.validation.txt; not used to fit the normal), no margin: no false reject on validation; the pixel threshold equals it, so a rejected image always has a region"

[quantisation]
format = "onnx QDQ: int8 weights (per output channel, 7-bit range), uint8 activations (per-tensor) around each backbone Conv; pooling, the whitening convolution, the distance and the sigmoid f32"
calibration = "MinMax over {CALIB_TILES} random good training tiles and the same tiles with a simulated crack"
tool = "onnxruntime.quantization.quantize_static"

[training]
recipe = "models/training/{STEM}.py"
dataset = "../shared/datasets/kolektorsdd"
features = "models/training/neu_classify.pt (NEU only)"
split = "held out: every defective image and a seeded {args.heldout_fraction:.0%} of the good duplicate groups; of the rest, a seeded {args.val_fraction:.0%} of the groups is the good validation set (design choices, blur, thresholds); the normal is fitted on the remaining good images only"
heldout_list = "{LISTS}.heldout.txt"
validation_list = "{LISTS}.validation.txt"
train_images = {len(fit)}
validation_images = {len(val)}
heldout_images = {len(held)}
defective_images_trained_on = 0
defective_images_that_chose_anything = 0
edge_px_not_scored = {EDGE_PX}
seed = {args.seed}
"""
    with open(os.path.join(out, f"{STEM}.toml"), "w") as fh:
        fh.write(toml)
    print("wrote", int8_path, f32_path, os.path.join(out, f"{STEM}.toml"), flush=True)


if __name__ == "__main__":
    main()
