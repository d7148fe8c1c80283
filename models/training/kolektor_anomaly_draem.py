"""The seed's design for the KolektorSDD anomaly tool, kept for comparison (the shipped model
is built by kolektor_anomaly.py): reconstruction + discriminative networks trained on good
images only.

    python3 models/training/kolektor_anomaly_draem.py              # train (about 35 min on 2 cores)
    python3 models/training/kolektor_anomaly_draem.py --ship-only  # export the kept checkpoint

Design (reconstruction + discriminative, as in the ARCD / DRAEM family):

* Anomaly synthesis. A Perlin noise image is thresholded at a random level to give a mask P;
  a texture A (a random crop of another good training frame, or a generated pattern: stripes,
  noise, gradients, blobs) gets three random augmentations (rotation, flips, gain, gamma,
  inversion, sharpening, equalising, posterising); the anomalous image is
  I_c = I (1 - P) + beta (I P) + (1 - beta) (A P), beta uniform in [0, 0.8]. A quarter of the
  synthetic anomalies are thin random strokes instead of Perlin blobs (a mask of a few polyline
  curves, filled the same way): surface cracks are thin, and Perlin masks at any threshold are
  blob-shaped. No defective frame is ever read for training.
* A reconstruction network (encoder-decoder, no skips) is trained to return the good image
  from I_c, with the loss L2 + (1 - SSIM) / 100 (the seed's weighting).
* A discriminative network (U-Net) reads the input and its reconstruction, concatenated, and
  gives the anomaly map at 1/4 of the frame resolution, trained with the focal loss against P.

One graph: the 512x512 frame tile is averaged 2x2 inside the graph, reconstructed, compared,
and the map (sigmoid) comes out as 128x128 per tile (cell 4). The runtime tiles the frame
(width reflect-padded to 512, three tiles down a 1250-row frame), stitches the map at full
resolution and scores the image as the maximum of the box-blurred map.

Split: all 35 defective images and a seeded 20 % of the good duplicate groups are held out
(models/kolektor_anomaly.heldout.txt); of the remaining good images, a seeded 15 % of the
groups are the good validation set that calibrates the thresholds (never trained on), the rest
is the training set (the same split as the shipped model). Writes
models/kolektor_anomaly_draem.onnx (int8), models/kolektor_anomaly_draem.f32.onnx and the
manifest models/kolektor_anomaly_draem.toml, which `ferroscope eval anomaly` reads like the
shipped one.
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
from kolektor_crack_filter import best_blur, blurred_max, split_groups
from kolektor_segment import ap_auroc, load_set, pad_width, tile_origins

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TILE = 512  # model input, frame pixels
CELL = 4  # frame pixels per map cell
MIN_OVERLAP = 64
CROP = 128  # training crop, half-resolution pixels (256 frame pixels)
MEAN = 0.5
STD = 0.25
BLUR_PX = 4  # image score: max of the map after a box blur of this radius (frame pixels); ship() picks it


def block(cin, cout, stride=1, dilation=1):
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def up(cin, cout):
    return [nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Recon(nn.Module):
    """Encoder-decoder without skips (a skip would carry the anomaly straight through)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            *block(1, 16),
            *block(16, 32, stride=2),
            *block(32, 32),
            *block(32, 48, stride=2),
            *block(48, 48),
            *block(48, 64, stride=2),
            *block(64, 64),
            *up(64, 48),
            *block(48, 48),
            *up(48, 32),
            *block(32, 32),
            *up(32, 16),
        )
        self.out = nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x):
        return self.out(self.net(x))


class Disc(nn.Module):
    """U-Net over [input, reconstruction]; the map comes out at half of its input resolution."""

    def __init__(self):
        super().__init__()
        self.e1 = nn.Sequential(*block(2, 16), *block(16, 32, stride=2))  # 1/2
        self.e2 = nn.Sequential(*block(32, 48, stride=2))  # 1/4
        self.e3 = nn.Sequential(*block(48, 64, stride=2), *block(64, 64, dilation=2))  # 1/8
        self.u2 = nn.Sequential(*up(64, 48))
        self.d2 = nn.Sequential(*block(96, 48))
        self.u1 = nn.Sequential(*up(48, 32))
        self.d1 = nn.Sequential(*block(64, 24))
        self.out = nn.Conv2d(24, 1, 1)

    def forward(self, x, r):
        f1 = self.e1(torch.cat([x, r], 1))
        f2 = self.e2(f1)
        f3 = self.e3(f2)
        g2 = self.d2(torch.cat([self.u2(f3), f2], 1))
        g1 = self.d1(torch.cat([self.u1(g2), f1], 1))
        return self.out(g1)


class Anomaly(nn.Module):
    def __init__(self):
        super().__init__()
        self.recon = Recon()
        self.disc = Disc()

    def forward(self, x):
        r = self.recon(x)
        return r, self.disc(x, r)


class Export(nn.Module):
    """Frame tile (full resolution) -> anomaly map (sigmoid) at 1/4 resolution."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        _, m = self.model(self.pool(x))
        return torch.sigmoid(m)


def fuse(model):
    """Fold every BatchNorm into the conv (or transposed conv) before it."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(model).eval()

    def fold(seq):
        mods = list(seq)
        new, i = [], 0
        while i < len(mods):
            a = mods[i]
            b = mods[i + 1] if i + 1 < len(mods) else None
            if isinstance(a, nn.ConvTranspose2d) and isinstance(b, nn.BatchNorm2d):
                new.append(fuse_conv_bn_eval(a, b, transpose=True))
                i += 2
            elif isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                new.append(fuse_conv_bn_eval(a, b))
                i += 2
            else:
                new.append(a)
                i += 1
        return nn.Sequential(*new)

    m.recon.net = fold(m.recon.net)
    for name in ("e1", "e2", "e3", "u2", "d2", "u1", "d1"):
        setattr(m.disc, name, fold(getattr(m.disc, name)))
    return m


# ---------------------------------------------------------------- anomaly synthesis


def perlin(shape, res, rng):
    """2-D Perlin noise of `shape` with `res` gradient cells per axis (shape divisible by res)."""

    def fade(t):
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    d = (shape[0] // res[0], shape[1] // res[1])
    grid = np.mgrid[0 : res[0] : res[0] / shape[0], 0 : res[1] : res[1] / shape[1]].transpose(1, 2, 0) % 1
    angles = 2 * math.pi * rng.random((res[0] + 1, res[1] + 1))
    grads = np.stack((np.cos(angles), np.sin(angles)), -1)
    tile = lambda s1, s2: grads[s1[0] : s1[1], s2[0] : s2[1]].repeat(d[0], 0).repeat(d[1], 1)
    dot = lambda g, sh: (np.stack((grid[..., 0] + sh[0], grid[..., 1] + sh[1]), -1) * g[: shape[0], : shape[1]]).sum(-1)
    n00 = dot(tile([0, -1], [0, -1]), [0, 0])
    n10 = dot(tile([1, None], [0, -1]), [-1, 0])
    n01 = dot(tile([0, -1], [1, None]), [0, -1])
    n11 = dot(tile([1, None], [1, None]), [-1, -1])
    t = fade(grid[: shape[0], : shape[1]])
    lerp = lambda a, b, w: a + w * (b - a)
    return math.sqrt(2) * lerp(lerp(n00, n10, t[..., 0]), lerp(n01, n11, t[..., 0]), t[..., 1])


def perlin_mask(n, rng):
    """Perlin noise (random scale per axis), rotated, thresholded at a random level."""
    sy = 2 ** rng.integers(0, 6)
    sx = 2 ** rng.integers(0, 6)
    noise = perlin((n, n), (int(sy), int(sx)), rng)
    k = rng.integers(0, 4)
    noise = np.rot90(noise, k)
    thr = rng.uniform(0.35, 0.65)
    return (noise > thr).astype(np.float32)


def stroke_mask(n, rng):
    """A few thin random polylines (crack-like), 1-3 px wide at half resolution."""
    m = np.zeros((n, n), np.float32)
    for _ in range(rng.integers(1, 3)):
        y, x = rng.uniform(0, n, 2)
        ang = rng.uniform(0, 2 * math.pi)
        width = rng.uniform(0.6, 1.8)
        for _ in range(rng.integers(8, 40)):
            ang += rng.normal(0, 0.35)
            ny, nx = y + 2 * math.sin(ang), x + 2 * math.cos(ang)
            for t in np.linspace(0, 1, 4):
                cy, cx = y + t * (ny - y), x + t * (nx - x)
                y0, y1 = int(max(cy - width, 0)), int(min(cy + width + 1, n))
                x0, x1 = int(max(cx - width, 0)), int(min(cx + width + 1, n))
                if y0 < y1 and x0 < x1:
                    yy, xx = np.mgrid[y0:y1, x0:x1]
                    m[y0:y1, x0:x1] = np.maximum(m[y0:y1, x0:x1], ((yy - cy) ** 2 + (xx - cx) ** 2 <= width**2))
            y, x = ny, nx
    return m


def generated_texture(n, rng):
    """A pattern in [0, 1]: stripes, noise, a gradient or blobs."""
    kind = rng.integers(0, 4)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if kind == 0:
        ang = rng.uniform(0, math.pi)
        f = rng.uniform(0.05, 0.5)
        t = 0.5 + 0.5 * np.sin(f * (xx * math.cos(ang) + yy * math.sin(ang)))
    elif kind == 1:
        t = rng.random((n, n)).astype(np.float32)
    elif kind == 2:
        ang = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(ang) + yy * math.sin(ang)) / n
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    else:
        t = perlin((n, n), (8, 8), rng)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    return t.astype(np.float32)


def augment(tex, rng):
    """Three random augmentations of a texture in [0, 1]."""
    ops = rng.choice(8, 3, replace=False)
    for op in ops:
        if op == 0:
            tex = np.rot90(tex, rng.integers(1, 4))
        elif op == 1:
            tex = tex[:, ::-1] if rng.random() < 0.5 else tex[::-1]
        elif op == 2:
            tex = np.clip(tex * rng.uniform(0.5, 1.8) + rng.uniform(-0.3, 0.3), 0, 1)
        elif op == 3:
            tex = np.clip(tex, 0, 1) ** rng.uniform(0.5, 2.0)
        elif op == 4:
            tex = 1 - tex
        elif op == 5:
            blur = (np.roll(tex, 1, 0) + np.roll(tex, -1, 0) + np.roll(tex, 1, 1) + np.roll(tex, -1, 1)) / 4
            tex = np.clip(tex + rng.uniform(0.5, 2.0) * (tex - blur), 0, 1)
        elif op == 6:
            ranks = np.argsort(np.argsort(tex.ravel())).reshape(tex.shape)
            tex = ranks.astype(np.float32) / tex.size
        else:
            levels = 2 ** rng.integers(2, 5)
            tex = np.floor(tex * levels) / levels
    return np.ascontiguousarray(tex, dtype=np.float32)


def synthesise(img, pool, rng):
    """img: half-resolution crop in [0, 1]. Returns (anomalous image, mask) or the image itself
    with an empty mask (a third of the samples stay good, as in DRAEM)."""
    n = img.shape[0]
    if rng.random() < 1 / 3:
        return img, np.zeros_like(img)
    m = stroke_mask(n, rng) if rng.random() < 0.25 else perlin_mask(n, rng)
    if m.sum() == 0:
        return img, m
    if rng.random() < 0.5:
        src = pool[rng.integers(len(pool))]
        y0 = rng.integers(0, src.shape[0] - n + 1)
        x0 = rng.integers(0, src.shape[1] - n + 1)
        tex = src[y0 : y0 + n, x0 : x0 + n]
    else:
        tex = generated_texture(n, rng)
    tex = augment(tex, rng)
    beta = rng.uniform(0.0, 0.8)
    out = img * (1 - m) + beta * img * m + (1 - beta) * tex * m
    return out.astype(np.float32), m


# ---------------------------------------------------------------- data


def half(img_u8):
    """2x2 average of the width-padded frame, in [0, 1] (the graph's first step)."""
    f = pad_width(img_u8).astype(np.float32) / 255.0
    h = f.shape[0] // 2 * 2
    f = f[:h]
    return 0.25 * (f[0::2, 0::2] + f[1::2, 0::2] + f[0::2, 1::2] + f[1::2, 1::2])


def batch(fit, n, rng):
    xs, ys, ms = [], [], []
    pool = [it["half"] for it in fit]
    for _ in range(n):
        src = pool[rng.integers(len(pool))]
        y0 = rng.integers(0, src.shape[0] - CROP + 1)
        x0 = rng.integers(0, src.shape[1] - CROP + 1)
        img = src[y0 : y0 + CROP, x0 : x0 + CROP]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        if rng.random() < 0.5:
            img = img[::-1]
        img = np.clip(img * rng.uniform(0.9, 1.1) + rng.uniform(-0.03, 0.03), 0, 1).astype(np.float32)
        aug, m = synthesise(img, pool, rng)
        xs.append((aug - MEAN) / STD)
        ys.append((img - MEAN) / STD)
        ms.append(m)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(np.stack(a)[:, None], dtype=np.float32))
    return t(xs), t(ys), t(ms)


def ssim(a, b, win=11, sigma=1.5):
    g = torch.exp(-((torch.arange(win) - win // 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum())[None, None, None]
    w = (g.transpose(2, 3) @ g).to(a.dtype)
    f = lambda x: F.conv2d(x, w, padding=win // 2)
    # on the [0, 1] scale
    a = a * STD + MEAN
    b = b * STD + MEAN
    mu_a, mu_b = f(a), f(b)
    saa = f(a * a) - mu_a**2
    sbb = f(b * b) - mu_b**2
    sab = f(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return (((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))).mean()


def focal(logits, target, gamma=2.0, alpha=0.75):
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    at = alpha * target + (1 - alpha) * (1 - target)
    return (at * (1 - pt) ** gamma * ce).sum() / target.numel() * 10


def synthetic_frame(img_u8, pool, rng):
    """A good frame with one simulated anomaly pasted at full resolution (the synthesis of
    training, on a random 256x256 region, upsampled 2x): validation without defective images."""
    img = pad_width(img_u8).copy()
    n = CROP
    while True:
        y0 = int(rng.integers(0, img.shape[0] // 2 - n + 1))
        x0 = int(rng.integers(0, img.shape[1] // 2 - n + 1))
        crop = img[2 * y0 : 2 * (y0 + n) : 2, 2 * x0 : 2 * (x0 + n) : 2].astype(np.float32) / 255.0
        m = stroke_mask(n, rng) if rng.random() < 0.25 else perlin_mask(n, rng)
        if m.sum() >= 4:
            break
    tex = augment(pool[rng.integers(len(pool))][:n, :n] if rng.random() < 0.5 else generated_texture(n, rng), rng)
    beta = rng.uniform(0.0, 0.8)
    out = crop * (1 - m) + beta * crop * m + (1 - beta) * tex * m
    up2 = lambda a: a.repeat(2, 0).repeat(2, 1)
    region = img[2 * y0 : 2 * (y0 + n), 2 * x0 : 2 * (x0 + n)]
    mask2 = up2(m) > 0
    region[mask2] = np.clip(up2(out) * 255.0 + 0.5, 0, 255).astype(np.uint8)[mask2]
    c = (img.shape[1] - img_u8.shape[1]) // 2
    return img[:, c : c + img_u8.shape[1]] if img_u8.shape[1] < img.shape[1] else img


def frame_map(fn, img_u8):
    """Stitched full-resolution map (bilinear from cell centres, overlaps averaged) and the image
    score (max of the box-blurred map), as the runtime computes them."""
    img = pad_width(img_u8)
    h = img.shape[0]
    acc = np.zeros(img.shape, np.float32)
    cnt = np.zeros(img.shape, np.float32)
    for y0 in tile_origins(h, TILE, MIN_OVERLAP):
        x = (img[y0 : y0 + TILE].astype(np.float32) / 255.0 - MEAN) / STD
        m = np.asarray(fn(x[None, None]), np.float32)
        upm = F.interpolate(torch.from_numpy(m), size=(TILE, TILE), mode="bilinear", align_corners=False)
        acc[y0 : y0 + TILE] += upm[0, 0].numpy()
        cnt[y0 : y0 + TILE] += 1
    pmap = acc / np.maximum(cnt, 1)
    k = 2 * BLUR_PX + 1
    blurred = F.avg_pool2d(torch.from_numpy(pmap)[None, None], k, stride=1, padding=BLUR_PX, count_include_pad=False)
    return float(blurred.max()), pmap


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "kolektorsdd"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-fraction", type=float, default=0.2, help="share of good duplicate groups held out")
    ap.add_argument("--val-fraction", type=float, default=0.15, help="share of the remaining good groups kept for calibration")
    ap.add_argument("--minutes", type=float, default=35.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=4000, help="step budget (training stops at whichever comes first)")
    ap.add_argument("--recon-only-steps", type=int, default=150, help="the reconstruction trains alone first (the seed's two stages)")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--resume", action="store_true", help="continue from the saved checkpoint")
    ap.add_argument("--ship-only", action="store_true", help="export + quantise the saved checkpoint, no training")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(args.seed)
    ckpt = os.path.join(ROOT, "models", "training", "kolektor_anomaly_draem.pt")

    items = load_set(args.data)
    good = [it for it in items if not it["defect"]]
    defective = [it for it in items if it["defect"]]
    held_good, pool = split_groups(good, args.seed, args.heldout_fraction, "heldout")
    val, fit = split_groups(pool, args.seed, args.val_fraction, "val")
    # a duplicate group never straddles good/defective here: duplicates are byte-identical
    held = sorted(held_good + defective, key=lambda i: i["name"])
    for it in fit + val:
        it["half"] = half(it["img"])
    print(f"fit {len(fit)} good, validation {len(val)} good, held-out {len(held)} ({len(defective)} defective)", flush=True)

    model = Anomaly()
    print(f"parameters: reconstruction {sum(p.numel() for p in model.recon.parameters())}, "
          f"discriminative {sum(p.numel() for p in model.disc.parameters())}", flush=True)
    if args.ship_only:
        model.load_state_dict(torch.load(ckpt)["model"])
        args.trained_steps = torch.load(ckpt)["step"]
        return ship(model.eval(), fit, val, held, args)
    start = 0
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    if args.resume:
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    t0 = time.time()
    step = start
    while step < args.steps and time.time() - t0 < args.minutes * 60:
        step += 1
        # cosine decay over whichever budget (steps or time) runs out first
        done = max((step - start) / max(args.steps - start, 1), (time.time() - t0) / (args.minutes * 60))
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        x, clean, m = batch(fit, args.batch, rng)
        r, logits = model(x)
        rec = F.mse_loss(r, clean) + (1 - ssim(r, clean)) / 100
        if step <= args.recon_only_steps:
            loss = rec
            seg = torch.zeros(())
        else:
            target = F.max_pool2d(m, 2)
            seg = focal(logits, target)
            loss = rec + seg
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            print(f"step {step} recon {rec.item():.4f} focal {seg.item():.4f} lr {lr:.5f} {time.time() - t0:.0f}s", flush=True)
        if step % 200 == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
    print(f"trained {step} steps in {time.time() - t0:.0f}s", flush=True)
    args.trained_steps = step
    ship(model.eval(), fit, val, held, args)


def ship(model, fit, val, held, args):
    out = args.out
    stem = "kolektor_anomaly_draem"
    f32_path = os.path.join(out, f"{stem}.f32.onnx")
    int8_path = os.path.join(out, f"{stem}.onnx")
    exp = Export(fuse(model)).eval()
    torch.onnx.export(
        exp,
        torch.zeros(1, 1, TILE, TILE),
        f32_path,
        input_names=["image"],
        output_names=["map"],
        opset_version=13,
        do_constant_folding=True,
        dynamo=False,
    )
    crng = random.Random(args.seed + 1)
    calib = []
    for _ in range(32):
        it = fit[crng.randrange(len(fit))]
        img = pad_width(it["img"])
        y0 = crng.randrange(0, img.shape[0] - TILE + 1)
        calib.append(img[y0 : y0 + TILE])
    common.MEAN, common.STD = MEAN, STD
    common.quantise_int8(f32_path, int8_path, calib)

    # The score's blur radius, chosen without any defective image: the radius that best
    # separates the good validation frames from the same frames with one simulated anomaly each
    # (image AUROC; ties go to the larger radius, which is steadier on good parts).
    fn = common.ort_fn(int8_path)
    global BLUR_PX
    vrng = np.random.default_rng(args.seed + 2)
    pool = [it["half"] for it in fit]
    clean_maps = [frame_map(fn, it["img"])[1] for it in val]
    synth_maps = [frame_map(fn, synthetic_frame(it["img"], pool, vrng))[1] for it in val]
    BLUR_PX, args.synthetic_auroc = best_blur(clean_maps, synth_maps, "simulated anomalies")
    # Thresholds from the good validation images only (never trained on, no defective image):
    # the image threshold is the highest good validation score raised by a margin of 1.0 in
    # log-odds (target: no false reject on the validation set, with headroom for good parts
    # brighter or dirtier than any seen); the pixel threshold is the same value, so a rejected
    # image always has at least one region (the blurred maximum never exceeds the raw one).
    val_scores = [blurred_max(m, BLUR_PX) for m in clean_maps]
    hi = max(val_scores)
    logit = lambda p: math.log(max(p, 1e-6) / max(1 - p, 1e-6))
    thr = 1 / (1 + math.exp(-(logit(hi) + 1.0)))
    print(f"good validation scores: max {hi:.4f}, median {float(np.median(val_scores)):.4f} -> threshold {thr:.4f}", flush=True)
    held_scores = [frame_map(fn, it["img"])[0] for it in held]
    labels = [int(it["defect"]) for it in held]
    a, u = ap_auroc(held_scores, labels)
    fp = sum(1 for s, l in zip(held_scores, labels) if s >= thr and not l)
    fneg = sum(1 for s, l in zip(held_scores, labels) if s < thr and l)
    print(f"int8 (onnxruntime) held-out AP {a:.4f} AUROC {u:.4f} fp {fp} fn {fneg}", flush=True)

    with open(os.path.join(out, f"{stem}.heldout.txt"), "w") as fh:
        fh.write("# held-out KolektorSDD images: every defective image and a seeded 20 % of the good duplicate groups; never trained on\n")
        for it in held:
            fh.write(f"{it['name']}.jpg\n")
    with open(os.path.join(out, f"{stem}.validation.txt"), "w") as fh:
        fh.write("# good KolektorSDD images that calibrated the thresholds; never trained on\n")
        for it in val:
            fh.write(f"{it['name']}.jpg\n")
    toml = f"""# Manifest of a ferroscope anomaly model. Paths are relative to this file.
[model]
name = "{stem}"
tool = "anomaly"
version = "1.0.0"
file = "{stem}.onnx"
sha256 = "{common.sha256_file(int8_path)}"
f32_file = "{stem}.f32.onnx"
f32_sha256 = "{common.sha256_file(f32_path)}"
design = "reconstruction + discriminative network trained on good images only (ARCD / DRAEM): simulated anomalies (thresholded Perlin masks and thin strokes, filled with augmented textures, blended with beta), an encoder-decoder reconstruction (L2 + (1 - SSIM) / 100) and a U-Net discriminator over [input, reconstruction] (focal loss); one graph: 2x2 average, reconstruction, discriminator, sigmoid map at 1/4 resolution."

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
# with a simulated anomaly (AUROC {args.synthetic_auroc:.4f})
score_blur_px = {BLUR_PX}
# the image is defective when its score reaches this
decision_threshold = {thr:.6f}
# a map pixel belongs to a region at or above this
pixel_threshold = {thr:.6f}
threshold_rule = "the highest image score over the {len(val)} good validation images (int8, models/{stem}.validation.txt; never trained on) raised by 1.0 in log-odds: no false reject on validation, with headroom; the pixel threshold equals it, so a rejected image always has a region"

[quantisation]
format = "onnx QDQ: int8 weights (per output channel, 7-bit range), uint8 activations (per-tensor) around each Conv+Relu; transposed convs, pooling and the sigmoid f32"
calibration = "MinMax over 32 random good training tiles"
tool = "onnxruntime.quantization.quantize_static"

[training]
recipe = "models/training/{stem}.py"
dataset = "../shared/datasets/kolektorsdd"
split = "held out: every defective image and a seeded {args.heldout_fraction:.0%} of the good duplicate groups; of the rest, a seeded {args.val_fraction:.0%} of the groups is the good validation set (thresholds); training reads only the remaining good images"
heldout_list = "{stem}.heldout.txt"
validation_list = "{stem}.validation.txt"
train_images = {len(fit)}
validation_images = {len(val)}
heldout_images = {len(held)}
defective_images_trained_on = 0
steps = {args.trained_steps}
batch = {args.batch}
crop_px = {2 * CROP}
seed = {args.seed}
"""
    with open(os.path.join(out, f"{stem}.toml"), "w") as fh:
        fh.write(toml)


if __name__ == "__main__":
    main()
