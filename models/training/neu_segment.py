"""Train the NEU steel-strip defect segmentation U-Net and ship it as int8 ONNX.

    python3 models/training/neu_segment.py            # from the repository root (CPU, 2 threads)
    python3 models/training/neu_segment.py --ship-only   # export + quantise the saved checkpoint again

Data: ../shared/datasets/neu_cls/<class>/<name>.png (200x200 gray) with the pixel masks of
../shared/datasets/neu_cls_masks/<class>/<name>.png (0 background / 255 defect), which exist for
inclusion, patches and scratches; only images with a mask are used, and every one of them is
defective. The held-out split is common.seeded_split (seed 0, 20 % per class, byte-identical
images on one side), the same held-out images as neu_classify for these classes; it is never
scored here (the Rust evaluator scores it once). A validation split is carved from the training
pool (20 % of its duplicate groups per class, seed 1): every choice below is made on it.

Design: one 200x200 tile is the whole image, the map comes out at full resolution (cell 1). The
U-Net runs at half resolution after a 2x2 average, as grains_316l's does (the same operators:
Conv+ReLU, 2x2 max-pool, 2x2 stride-2 transposed conv, concatenation, which the integer engine
runs fast): three levels (100, 50 and 25 pixels; 200 = 8 x 25, so the average and two poolings
fit), two 3x3 Conv+BN+ReLU per encoder level, one per decoder level after the skip
concatenation. A last 2x2 transposed conv brings the features back to 200x200, where they are
concatenated with the input image and one 3x3 conv gives the defect logit; the graph ends in a
sigmoid (the map is a probability, as in every segment model; --output logits leaves it out).
Widths 12/32/48 are set by the inference budget: 154 M multiply-adds per image, fewer than
grains_316l's 256x256 tile (181 M). On the validation split, wider (16/32/48, 190 M) or with a
hidden 3x3 Conv+ReLU in the full-resolution head (177 M), 6000 steps scored within 0.001 of it.
--arch dilated reads the image with a learnt 5x5 stride-2 convolution instead of the average and
dilates the 25-pixel level's three convolutions 1, 2 and 4, so that a pixel's decision sees about
145 of the image's 200 pixels across instead of 66 (169 M multiply-adds; the integer engine runs it in the same time as the average).
--arch deep adds a fourth level at 13 pixels to the dilated network (a stride-2 Conv+ReLU to 64
channels, one more, a 2x2 transposed conv back to 25 pixels and a 1x1 Conv+ReLU after the
concatenation: 185 M multiply-adds), and --ema DECAY scores a moving average of the weights
beside them at every checkpoint. Together, on 8000 x 32, they scored 0.872 at best (the average
at step 6000) against the dilated network's 0.871, within the spread of neighbouring checkpoints,
for 1.06x the time per image: not kept (neu_segment.deep_ema.json; the defaults stay dilated, no average).
--arch features puts the NEU classifier's first three backbone blocks beside the dilated network
(a 2x2 average, 3x3 stride-2 Conv+BN+ReLU of 24, 48 and 64 channels: common.Backbone, initialised
from a trained classifier and trained on at a tenth of the rate): their 25-pixel output and their
13-pixel output, brought back by a 2x2 transposed conv, join the 25-pixel level through a 1x1
Conv+ReLU (185 M multiply-adds). A run scored on validation starts them from a classifier
trained by neu_classify's recipe on its training split minus the validation images (trained once
and kept, neu_segment.classifier.pt), so that no validation image chose a feature; the refit
starts them from the shipped classifier, neu_classify.pt, whose split holds the whole pool and no
held-out image. On 8000 x 32 it scored 0.873 at best (step 7000) against the dilated network's
0.871, within the spread of neighbouring checkpoints, for 1.10x the multiply-adds: not kept
(neu_segment.features.json).
The loss variant dice+wbce (BCE weighted up to 6x on the region edges, the salient-object
networks' structure loss) scored the same mean Dice per image on validation (0.872 at best) with
a higher MAE (0.0331 against 0.0306): not kept (neu_segment.wbce.json).
The loss variant dice+kd (distillation: the BCE's target is (1 - --distil) x mask + --distil x
a teacher's map; --teacher a refit checkpoint of this recipe, whose selection network teaches
runs scored on validation and whose shipped network teaches the refit, its map averaged over
the eight flips and quarter turns) with 1.2.0 as the teacher (0.879 on validation averaged that
way, 0.871 alone) scored 0.874 at best (step 8000) with an MAE of 0.0297, within the spread of
neighbouring checkpoints: not kept (neu_segment.distil.json).
--arch fullres (1.3.0, the default) adds two 3x3 Conv+ReLU of FULL (6) channels on the image at full
resolution to the dilated network, joined to the last convolution's input (186 M multiply-adds). On
8000 x 32 it scored 0.8765 at step 8000 (0.8763 and an MAE of 0.0295 as int8 at 0.55, against 0.8705
and 0.0306), the gain in scratches (neu_segment.fullres.json); its selection run again, for the refit,
0.8779 at step 8000. Once the integer engine's x86 plane kernel took several input channels, its
int8 file ran in 0.81-0.86x the time 1.2.0's took before (1.20-1.27x 1.2.0's on the same engine).
The fullres network on 12000 x 32 with --ema 0.999 scored 0.8766 at best (raw weights, step 9000; the average
0.8760) against its 8000-step run's 0.8779, and its int8 file an MAE of 0.0299 against 0.0290: not kept
(neu_segment.long_ema.json; the schedule stays 8000 x 32, no average).
The fullres network with dice+kd (1.3.0 as the teacher: 0.8815 on validation averaged over the eight
flips and quarter turns) scored 0.8753 at best (step 7000) against 0.8779, and its int8 file an MAE of
0.0291 against 0.0290: not kept (neu_segment.kd_fullres.json).
--pretrain 2000 (the fullres network first taught to fill in blanked patches of 1037 unmasked NEU
images of all six classes, validation and held-out sides left out) scored 0.8731 at best (step
7000), and its int8 file 0.8736 with an MAE of 0.0297, against 0.8779 and 0.0290: not kept
(neu_segment.pretrain.json).

Training: batches of random 128x128 crops (the network is fully convolutional; crops cost 0.4 of
a whole image) with the eight flips/quarter turns and, optionally, brightness/contrast jitter;
AdamW with 5 % warm-up then cosine to zero, stopped on steps. Three stages, the first two scored
on the validation split by the mean Dice per image at its best level (f32):
  1. sweep: every --variants entry (loss Dice alone or Dice+BCE, photometric jitter on or off)
     trained from the same seed on a short schedule (--sweep-steps, --sweep-batch), scored at
     its end;
  2. selection: the best variant trained from the same seed on the long schedule (--steps,
     --batch) on the pool minus validation, checkpoints scored every --eval-every steps from
     50 % of it; the pixel threshold is the level with the best mean Dice per image of this
     checkpoint's int8 file on validation;
  3. refit: the same variant, network and schedule trained again from the same seed on the
     whole pool (validation included) to the chosen step, and shipped (--no-refit ships the
     selection checkpoint as it is, as 1.0.0 and 1.1.0 were). --train-only runs stage 2 alone
     and --refit CHECKPOINT stage 3 from its checkpoint. --export-selection DIR exports a
     checkpoint's selection network with a manifest, for `ferroscope eval segment` on validation.
The validation metrics of the selection checkpoint's int8 and f32 ONNX files (onnxruntime, one
thread) go to the metrics file. The network (--arch) and the long schedule's defaults (8000
steps of 32 crops of 128, lr 0.003) were chosen on the validation split: 1.1.0's sweep of 11
schedules for the small network (neu_segment.schedule_sweep.json:
16000 x 32 scored 0.865, 8000 x 32 0.862), then the dilated network on 8000 x 32, 0.871, then
the full-resolution one, 0.8765. On 2 CPU cores each 8000-step run of the fullres network takes
about 65 minutes (0.46 s a step; the dilated network's 0.27 s); --device cuda trains
on a GPU. CUDA's convolutions are not bit-reproducible: a file retrained there differs in its last digits.

Writes models/neu_segment.onnx (int8 QDQ), models/neu_segment.f32.onnx, the manifest
models/neu_segment.toml (without [metrics]; the Rust evaluator measures the held-out list),
models/neu_segment.heldout.txt, models/neu_segment.validation.txt, the checkpoint
models/training/neu_segment.pt and models/training/neu_segment.metrics.json (validation only).
"""

import argparse
import copy
import hashlib
import math
import os
import random
import re
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import common
import neu_classify

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEM = "neu_segment"
CLASSES = ["inclusion", "patches", "scratches"]
TILE = common.INPUT_SIZE  # 200: the whole image is one tile
MEAN, STD = common.MEAN, common.STD
WIDTH = (12, 32, 48)  # the U-Net levels at 100, 50 and 25 pixels
HEAD = 8  # channels brought back to full resolution
DEEP = 64  # channels of --arch deep's 13-pixel level
FEATURES = (7, 10)  # --arch features: the classifier backbone's modules up to 25 pixels (the 2x2 average and two
# Conv+BN+ReLU) and to 13 pixels (one more)
FEATURES_UP = 24  # channels its 13-pixel block is brought back to 25 pixels with
FEATURES_LR = 0.1  # the classifier blocks' learning rate, a fraction of the rest's
FULL = 6  # --arch fullres: channels of the two 3x3 Conv+ReLU on the image at 200 pixels
LEVELS = [round(0.05 * k, 2) for k in range(1, 20)]  # pixel threshold candidates
VERSION = "1.3.0"


def block(cin, cout, k=3, stride=1, dilation=1):
    pad = dilation * (k // 2)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False)
    return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class UNet(nn.Module):
    """`arch` "small": the 2x2 average, two plain 3x3 convolutions at 25 pixels (1.0.0, 1.1.0);
    "dilated": the image read by a 5x5 stride-2 convolution instead of the average, and the
    25-pixel level's convolutions dilated 1, 2 and 4 (a map pixel sees about 145 pixels across, not 66);
    "fullres": dilated, with two 3x3 Conv+ReLU of FULL channels on the image at full resolution
    joined to the last convolution's input (spots a few pixels across seen at their own scale)."""

    def __init__(self, width=WIDTH, head=HEAD, arch="small"):
        super().__init__()
        c0, c1, c2 = width
        self.arch = arch
        if arch not in ("small", "dilated", "deep", "features", "fullres"):
            raise ValueError(f"unknown arch {arch}")
        if arch == "small":
            self.pool_in = nn.AvgPool2d(2)
            self.e0 = nn.Sequential(*block(1, c0), *block(c0, c0))
            mid = [*block(c1, c2), *block(c2, c2)]
        elif arch in ("dilated", "deep", "features", "fullres"):
            self.pool_in = nn.Identity()
            self.e0 = nn.Sequential(*block(1, c0, k=5, stride=2), *block(c0, c0))
            mid = [*block(c1, c2), *block(c2, c2, dilation=2), *block(c2, c2, dilation=4)]
        if arch == "deep":
            # a fourth level at 13 pixels: the whole image in one map pixel's view
            self.deep = nn.Sequential(*block(c2, DEEP, stride=2), *block(DEEP, DEEP))
            self.u2 = nn.ConvTranspose2d(DEEP, c2, 2, stride=2)
            self.d2 = nn.Sequential(*block(2 * c2, c2, k=1))
        if arch == "features":
            # the NEU classifier's backbone up to 13 pixels (48 channels at 25, 64 at 13), initialised
            # from a trained classifier (load_features) and trained on with the rest at a tenth of the rate
            backbone = list(common.Backbone().features.children())
            self.f25 = nn.Sequential(*backbone[: FEATURES[0]])
            self.f13 = nn.Sequential(*backbone[FEATURES[0] : FEATURES[1]])
            self.uf = nn.ConvTranspose2d(self.f13[0].out_channels, FEATURES_UP, 2, stride=2)
            self.df = nn.Sequential(*block(c2 + self.f25[-3].out_channels + FEATURES_UP, c2, k=1))
        self.e1 = nn.Sequential(*block(c0, c1), *block(c1, c1))
        self.mid = nn.Sequential(*mid)
        self.u1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.d1 = nn.Sequential(*block(2 * c1, c1))
        self.u0 = nn.ConvTranspose2d(c1, c0, 2, stride=2)
        self.d0 = nn.Sequential(*block(2 * c0, c0))
        self.up = nn.ConvTranspose2d(c0, head, 2, stride=2)
        full = 0
        if arch == "fullres":
            self.ef = nn.Sequential(*block(1, FULL), *block(FULL, FULL))
            full = FULL
        self.out = nn.Conv2d(head + full + 1, 1, 3, padding=1)

    def load_features(self, classifier_state):
        """Initialise the classifier blocks from a common.OneVsAll state_dict (neu_classify.pt's)."""
        for k, v in classifier_state.items():
            if not k.startswith("backbone.features."):
                continue
            i, rest = k[len("backbone.features."):].split(".", 1)
            i = int(i)
            if i < FEATURES[0]:
                self.f25.state_dict()[f"{i}.{rest}"].copy_(v)
            elif i < FEATURES[1]:
                self.f13.state_dict()[f"{i - FEATURES[0]}.{rest}"].copy_(v)

    def forward(self, x):
        f0 = self.e0(self.pool_in(x))
        f1 = self.e1(F.max_pool2d(f0, 2))
        m = self.mid(F.max_pool2d(f1, 2))
        if self.arch == "deep":
            u = self.u2(self.deep(m))[:, :, : m.shape[2], : m.shape[3]]  # 13 -> 26, cropped to 25
            m = self.d2(torch.cat([u, m], 1))
        if self.arch == "features":
            b2 = self.f25(x)  # the classifier's 25-pixel block
            b3 = self.f13(b2)  # and its 13-pixel block, brought back to 26 and cropped to 25
            m = self.df(torch.cat([m, b2, self.uf(b3)[:, :, : m.shape[2], : m.shape[3]]], 1))
        d1 = self.d1(torch.cat([self.u1(m), f1], 1))
        d0 = self.d0(torch.cat([self.u0(d1), f0], 1))
        if self.arch == "fullres":
            return self.out(torch.cat([self.up(d0), self.ef(x), x], 1))  # logits
        return self.out(torch.cat([self.up(d0), x], 1))  # logits


class Export(nn.Module):
    def __init__(self, model, logits=False):
        super().__init__()
        self.model = model
        self.logits = logits

    def forward(self, x):
        y = self.model(x)
        return y if self.logits else torch.sigmoid(y)


def fuse(model):
    """Fold every BatchNorm into its conv, so the int8 graph is Conv(+Relu) only."""
    m = copy.deepcopy(model).eval()
    for name in ("e0", "e1", "mid", "deep", "d2", "f25", "f13", "df", "d1", "d0", "ef"):
        if not hasattr(m, name):
            continue
        setattr(m, name, common.fuse_sequential(getattr(m, name)))
    return m


def multiply_adds(model):
    """Multiply-adds of one 200x200 inference (convolutions and transposed convolutions)."""
    total = [0]

    def hook(mod, _inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        if isinstance(mod, nn.Conv2d):
            total[0] += out.numel() * mod.in_channels * k
        elif isinstance(mod, nn.ConvTranspose2d):
            total[0] += out.numel() * mod.in_channels

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, TILE, TILE))
    for h in hooks:
        h.remove()
    return total[0]


# ---------------------------------------------------------------------------------------------
# data and splits


def load_set(data, masks):
    """Every image of CLASSES that has a mask: gray u8, boolean mask, sha256 of the image bytes."""
    items = []
    for c in CLASSES:
        for name in common.list_class_dir(os.path.join(data, c)):
            mpath = os.path.join(masks, c, name)
            if not os.path.isfile(mpath):
                continue
            path = os.path.join(data, c, name)
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            mask = np.asarray(Image.open(mpath).convert("L"), dtype=np.uint8) > 127
            items.append({"rel": f"{c}/{name}", "cls": c, "img": common.load_gray(path), "mask": mask, "digest": digest})
    return items


def split_groups(items, seed, fraction):
    """Seeded per-class split by duplicate group (byte-identical images on one side), with the
    rule of common.seeded_split: groups ordered by their first name, shuffled with
    Random(f"{seed}:{class}"), the first round(fraction * groups) set aside."""
    keep, aside = [], []
    for c in CLASSES:
        groups = {}
        for it in items:
            if it["cls"] == c:
                groups.setdefault(it["digest"], []).append(it)
        keys = sorted(groups, key=lambda k: groups[k][0]["rel"])
        rng = random.Random(f"{seed}:{c}")
        rng.shuffle(keys)
        n = round(len(keys) * fraction)
        aside += [it for k in keys[:n] for it in groups[k]]
        keep += [it for k in keys[n:] for it in groups[k]]
    by_rel = lambda it: it["rel"]
    return sorted(keep, key=by_rel), sorted(aside, key=by_rel)


def heldout_split(items, data, seed, fraction):
    """(training pool, held-out): common.seeded_split over each class folder, restricted to
    the masked images."""
    held_rel = set()
    for c in CLASSES:
        _, held = common.seeded_split(data, c, seed, fraction)
        held_rel.update(held)
    pool = [it for it in items if it["rel"] not in held_rel]
    held = [it for it in items if it["rel"] in held_rel]
    return pool, held


def check_disjoint(*sets):
    seen = {}
    for k, s in enumerate(sets):
        for it in s:
            if seen.setdefault(it["digest"], k) != k:
                raise SystemExit(f"duplicate group of {it['rel']} on two sides of a split")


# ---------------------------------------------------------------------------------------------
# training


def sample_batch(pool, n, rng, photometric, crop=TILE, teacher=False):
    """A batch of crops: images, masks and, with `teacher`, the same crops of each item's
    teacher map (the teacher's crops draw no random number, so a run with them samples the
    same crops as one without)."""
    xs, ts, ss = [], [], []
    for _ in range(n):
        it = pool[rng.randrange(len(pool))]
        y0, x0 = rng.randrange(TILE - crop + 1), rng.randrange(TILE - crop + 1)
        img = it["img"][y0 : y0 + crop, x0 : x0 + crop]
        m = it["mask"][y0 : y0 + crop, x0 : x0 + crop]
        s = it["teacher"][y0 : y0 + crop, x0 : x0 + crop] if teacher else None
        k = rng.randrange(4)
        img, m = np.rot90(img, k), np.rot90(m, k)
        s = np.rot90(s, k) if teacher else None
        if rng.random() < 0.5:
            img, m = img[:, ::-1], m[:, ::-1]
            s = s[:, ::-1] if teacher else None
        x = common.normalise(img)
        if photometric:
            gain = 0.75 + 0.5 * rng.random()  # contrast about the mean grey
            bias = (rng.random() - 0.5) * 0.3 / STD  # brightness, +-0.15 of the pixel range
            x = x * gain + bias
        xs.append(x)
        ts.append(m.astype(np.float32))
        if teacher:
            ss.append(s)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, None]))
    t = torch.from_numpy(np.ascontiguousarray(np.stack(ts)[:, None]))
    if teacher:
        return x, t, torch.from_numpy(np.ascontiguousarray(np.stack(ss)[:, None]))
    return x, t


def teacher_maps(items, state, arch, log, chunk=16):
    """Set each item's "teacher": the probability map of a trained network of this recipe
    (`state`), averaged over the eight flips and quarter turns of the image (f32, 200x200)."""
    model = UNet(arch=arch)
    model.load_state_dict(state)
    model.eval()
    t0 = time.time()
    with torch.no_grad():
        for i in range(0, len(items), chunk):
            part = items[i : i + chunk]
            x = torch.from_numpy(np.stack([common.normalise(it["img"]) for it in part])[:, None])
            acc = 0
            for k in range(4):
                for flip in (False, True):
                    xx = torch.rot90(x, k, (2, 3))
                    xx = torch.flip(xx, (3,)) if flip else xx
                    z = model(xx)
                    z = torch.flip(z, (3,)) if flip else z
                    acc = acc + torch.sigmoid(torch.rot90(z, -k, (2, 3)))
            for it, p in zip(part, (acc / 8)[:, 0].numpy()):
                it["teacher"] = p.astype(np.float32)
    log(f"teacher maps (8 flips and quarter turns averaged) of {len(items)} images in {time.time() - t0:.0f} s")


def load_teacher(args, refit, log):
    """The teacher's state_dict from --teacher (a checkpoint of this recipe): for a run scored on
    validation its selection network (`chooser_state_dict`, trained on the pool minus
    validation), so that no validation image taught the student through it; for the refit its
    shipped network (`state_dict`, trained on the whole pool)."""
    if not args.teacher:
        raise SystemExit("the loss dice+kd needs --teacher CHECKPOINT")
    ck = torch.load(args.teacher, map_location="cpu")
    key = "state_dict" if refit else "chooser_state_dict"
    if key not in ck:
        raise SystemExit(f"{args.teacher}: no {key} (a refit checkpoint of this recipe holds both)")
    arch = ck["selection"].get("arch", "small")
    log(f"teacher: {os.path.relpath(args.teacher, ROOT)} ({key}, arch {arch}), distillation weight {args.distil}")
    return ck[key], arch


def soft_dice_loss(logits, t):
    """1 - soft Dice per image on the sigmoid outputs, averaged over the batch."""
    p = torch.sigmoid(logits)
    inter = (p * t).flatten(1).sum(1)
    total = p.flatten(1).sum(1) + t.flatten(1).sum(1)
    return 1 - ((2 * inter + 1) / (total + 1)).mean()


def edge_weighted_bce(logits, t):
    """BCE with each pixel weighted 1 + 5 |mean of its 31x31 neighbourhood's mask - its mask|
    (the region's edges weigh up to 6 times the rest), normalised per image, averaged over the
    batch: the structure loss of salient-object networks, for maps with sharp region edges."""
    box = F.avg_pool2d(t, (1, 31), stride=1, padding=(0, 15), count_include_pad=False)  # separable:
    box = F.avg_pool2d(box, (31, 1), stride=1, padding=(15, 0), count_include_pad=False)  # the same mean
    w = 1 + 5 * torch.abs(box - t)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    return ((w * bce).flatten(1).sum(1) / w.flatten(1).sum(1)).mean()


def lr_at(step, steps, lr):
    progress = (step - 1) / steps
    if progress < 0.05:
        return lr * progress / 0.05
    return lr * 0.5 * (1 + math.cos(math.pi * (progress - 0.05) / 0.95))


def classifier_state(args, exclude, held, log):
    """The NEU classifier state_dict whose backbone --arch features starts from. With nothing to
    exclude (the refit on the whole pool) it is the shipped classifier's checkpoint,
    neu_classify.pt, trained on neu_classify's training split: the same seeded split, so it holds
    this recipe's whole pool and none of its held-out images (checked). Otherwise (a run scored
    on validation) the classifier is trained again by neu_classify's recipe (its fit and defaults,
    seed --seed) on that split minus `exclude`, so that no validation image chose a feature; it is
    saved to models/training/neu_segment.classifier.pt and reused while the excluded list is the same."""
    if not exclude:  # the shipped classifier: neu_classify's split, its defaults (seed 0, 20 % held out)
        seed, fraction = 0, 0.2
    else:
        seed, fraction = args.seed, args.heldout_fraction
    train, _ = neu_classify.split(args.data, seed, fraction)
    inside = set(train) & {it["rel"] for it in held}
    if inside:
        raise SystemExit(f"the classifier's training split (seed {seed}, {fraction:.0%} held out) holds {len(inside)} of "
                         f"this split's held-out images, e.g. {sorted(inside)[0]}: --arch features needs --seed 0 and "
                         f"--heldout-fraction 0.2 (neu_classify's split)")
    if not exclude:
        path = os.path.join(ROOT, "models", "training", "neu_classify.pt")
        log(f"features: the shipped classifier {os.path.relpath(path, ROOT)} ({len(train)} training images)")
        return torch.load(path, map_location="cpu")["state_dict"]
    excluded = sorted(set(exclude))
    path = os.path.join(ROOT, "models", "training", f"{STEM}.classifier.pt")
    if os.path.isfile(path):
        saved = torch.load(path, map_location="cpu")
        if saved.get("excluded") == excluded and saved.get("seed") == args.seed:
            log(f"features: {os.path.relpath(path, ROOT)} (its split minus {len(excluded)} validation images)")
            return saved["state_dict"]
    train = [p for p in train if p not in set(excluded)]
    log(f"features: training the NEU classifier on {len(train)} images (its split minus {len(excluded)} validation images)")
    torch.manual_seed(args.seed)
    xs, ys = neu_classify.load(args.data, train)
    model = common.OneVsAll(len(common.NEU_CLASSES))
    neu_classify.fit(model, xs, ys, 60, 32, 3e-3, args.seed, log=log)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "excluded": excluded, "seed": args.seed}, path)
    return state


def predict(model, items, chunk=16):
    """Probability maps (f32, numpy) of items, N x 200 x 200, on the model's device."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(items), chunk):
            x = torch.from_numpy(np.stack([common.normalise(it["img"]) for it in items[i : i + chunk]])[:, None])
            out.append(torch.sigmoid(model(x.to(dev)))[:, 0].cpu().numpy())
    return np.concatenate(out)


PRETRAIN_DROP = 0.5  # --pretrain: share of the 8x8 patches of a crop blanked to the mean grey
PRETRAIN_PATCH = 8
NO_MASK = np.zeros((TILE, TILE), bool)  # what sample_batch crops beside a pretraining image (unused)


def pretrain_pool(args, exclude, log):
    """The images of every NEU class folder, masked or not, less `exclude` (relative paths) and
    less every class's held-out side of common.seeded_split (the classifier's held-out images;
    for the masked classes the segment tool's held-out list is part of it), as sample_batch items."""
    imgs = []
    for c in sorted(d for d in os.listdir(args.data) if os.path.isdir(os.path.join(args.data, d))):
        train, _held = common.seeded_split(args.data, c, args.seed, args.heldout_fraction)
        imgs += [{"img": common.load_gray(os.path.join(args.data, rel)), "mask": NO_MASK} for rel in train if rel not in exclude]
    log(f"pretraining pool: {len(imgs)} NEU images of all classes (no mask read; held-out sides and {len(exclude)} excluded images left out)")
    return imgs


def pretrain(imgs, args, log):
    """Self-supervised start (--pretrain N): the network learns to fill in the image. Each crop
    has PRETRAIN_DROP of its PRETRAIN_PATCH-pixel patches set to the mean grey (0 after
    normalising), and the network's one output channel is trained to give the original pixels
    there (mean squared error on the blanked pixels), on --pretrain steps of the same schedule
    shape, batch and crop as the segmentation run. Returns the state_dict; the output
    convolution's weights are not carried over (the segmentation run starts it afresh)."""
    torch.manual_seed(args.seed + 7)
    rng = random.Random(args.seed + 7)
    model = UNet(arch=args.arch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    t0 = time.time()
    n = args.crop // PRETRAIN_PATCH
    for step in range(1, args.pretrain + 1):
        lr = lr_at(step, args.pretrain, args.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        x, _ = sample_batch(imgs, args.batch, rng, photometric=False, crop=args.crop)
        keep = (torch.rand(args.batch, 1, n, n) >= PRETRAIN_DROP).float()
        keep = keep.repeat_interleave(PRETRAIN_PATCH, 2).repeat_interleave(PRETRAIN_PATCH, 3)
        model.train()
        y = model(x * keep)
        blank = 1 - keep
        loss = (((y - x) ** 2) * blank).sum() / blank.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            log(f"[pretrain] step {step} lr {lr:.5f} masked mse {loss.item():.4f} {time.time() - t0:.0f}s")
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("out.")}


def train_variant(variant, fit, val, args, log, steps, eval_from, stop_at=None, weights="raw"):
    """One run of a `steps`-long schedule; returns [(step, weights, best level, mean Dice,
    state_dict), ...] for the checkpoints scored on validation (every args.eval_every steps from
    `eval_from`, and the last): weights "raw" are the optimiser's, "ema" (with args.ema > 0)
    their exponential moving average, BatchNorm statistics included, scored beside them. With
    `stop_at` (a refit: `val` is None), the run stops at that step of the schedule and returns
    [(stop_at, weights, None, None, state_dict)] of the named weights."""
    loss_name, aug = variant.split(":")
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    dev = torch.device(args.device)
    model = UNet(arch=args.arch)
    if getattr(args, "pretrained", None) is not None:
        missing, unexpected = model.load_state_dict(args.pretrained, strict=False)
        assert not unexpected and all(k.startswith("out.") for k in missing), (missing, unexpected)
    params = [{"params": model.parameters(), "scale": 1.0}]
    if args.arch == "features":
        model.load_features(args.classifier)
        slow = {id(p) for p in [*model.f25.parameters(), *model.f13.parameters()]}
        params = [{"params": [p for p in model.parameters() if id(p) not in slow], "scale": 1.0},
                  {"params": [p for p in model.parameters() if id(p) in slow], "scale": FEATURES_LR}]
    model = model.to(dev)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    decay = getattr(args, "ema", 0.0)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if decay > 0 else None
    if weights == "ema" and ema is None:
        raise ValueError("the ema weights need --ema > 0")
    shadow = UNet(arch=args.arch).to(dev) if ema is not None else None
    scored = []
    t0 = time.time()
    for step in range(1, steps + 1):
        lr = lr_at(step, steps, args.lr)
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        model.train()
        distil = loss_name == "dice+kd"
        batch = sample_batch(fit, args.batch, rng, photometric=aug == "photo", crop=args.crop, teacher=distil)
        x, t = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True)
        logits = model(x)
        dice = soft_dice_loss(logits, t)
        loss = dice
        bce = None
        if loss_name == "dice+bce":
            bce = F.binary_cross_entropy_with_logits(logits, t)
            loss = dice + bce
        elif distil:  # BCE against the mask mixed with the teacher's map
            s = batch[2].to(dev, non_blocking=True)
            bce = F.binary_cross_entropy_with_logits(logits, (1 - args.distil) * t + args.distil * s)
            loss = dice + bce
        elif loss_name == "dice+wbce":
            bce = edge_weighted_bce(logits, t)
            loss = dice + bce
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ema is not None:
            d = min(decay, (1 + step) / (10 + step))  # the usual warm-up of the average
            with torch.no_grad():
                for k2, v in model.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[k2].mul_(d).add_(v.detach(), alpha=1 - d)
                    else:
                        ema[k2].copy_(v)
        if step % 25 == 0:
            extra = f" bce {bce.item():.4f}" if bce is not None else ""
            log(f"[{variant}] step {step} lr {lr:.5f} dice-loss {dice.item():.4f}{extra} {time.time() - t0:.0f}s")
        if stop_at is not None:
            if step == stop_at:
                src = ema if weights == "ema" else model.state_dict()
                return [(step, weights, None, None, {k2: v.detach().cpu().clone() for k2, v in src.items()})]
            continue
        if step == steps or (step >= eval_from and step % args.eval_every == 0):
            candidates = [("raw", model)]
            if ema is not None:
                shadow.load_state_dict(ema)
                candidates.append(("ema", shadow))
            for name, net in candidates:
                probs = predict(net, val)
                per_level = [pixel_metrics(probs, val, lv)["dice_mean_per_image"] for lv in LEVELS]
                k = int(np.argmax(per_level))
                state = {k2: v.detach().cpu().clone() for k2, v in net.state_dict().items()}
                scored.append((step, name, LEVELS[k], per_level[k], state))
                log(f"  [{variant}] step {step} {name} validation mean Dice per image {per_level[k]:.4f} at {LEVELS[k]} (f32)")
    return scored


# ---------------------------------------------------------------------------------------------
# metrics (the Rust evaluator's definitions: src/cli/segment.rs)


def pixel_metrics(probs, items, level):
    """Pooled Dice and IoU, mean Dice per image (every image here is defective), MAE of the
    clamped probability map, and how many images have a map maximum at or above the level."""
    tp = fp = fn = 0
    dices, abs_err, px, detected = [], 0.0, 0, 0
    for p, it in zip(probs, items):
        truth = it["mask"]
        pred = p >= level
        a = int((pred & truth).sum())
        b = int((pred & ~truth).sum())
        c = int((~pred & truth).sum())
        tp, fp, fn = tp + a, fp + b, fn + c
        dices.append(2 * a / (2 * a + b + c) if (2 * a + b + c) else 0.0)
        abs_err += float(np.abs(np.clip(p, 0, 1) - truth).sum())
        px += truth.size
        detected += int(p.max() >= level)
    denom = tp + fp + fn
    return {
        "images": len(items),
        "dice_mean_per_image": float(np.mean(dices)) if dices else 0.0,
        "dice": 2 * tp / (2 * tp + fp + fn) if denom else 0.0,
        "iou": tp / denom if denom else 0.0,
        "mae": abs_err / px if px else 0.0,
        "detected": detected,
    }


def metrics_by_class(probs, items, level):
    out = {"all": pixel_metrics(probs, items, level)}
    for c in CLASSES:
        idx = [i for i, it in enumerate(items) if it["cls"] == c]
        out[c] = pixel_metrics(probs[idx], [items[i] for i in idx], level)
    return out


def ort_maps(path, items):
    return common.ort_scores(path, [it["img"] for it in items])[:, 0]


def ort_ms(paths, reps=5, runs=40):
    """Single-thread onnxruntime latency of one 200x200 image: median and minimum over
    interleaved rounds of every model (the rounds share whatever else loads the machine)."""
    import onnxruntime as ort

    x = np.zeros((1, 1, TILE, TILE), np.float32)
    sessions = {}
    for k, (p, shape) in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sessions[k] = (ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]), np.zeros(shape, np.float32))
    times = {k: [] for k in sessions}
    for _ in range(reps):
        for k, (s, x) in sessions.items():
            for _ in range(3):
                s.run(None, {"image": x})
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, {"image": x})
                times[k].append(time.perf_counter() - t0)
    return {k: {"median_ms": round(1e3 * float(np.median(v)), 3), "min_ms": round(1e3 * float(np.min(v)), 3)} for k, v in times.items()}


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "neu_cls"))
    ap.add_argument("--masks", default=os.path.join(ROOT, "..", "shared", "datasets", "neu_cls_masks"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-fraction", type=float, default=0.2)
    ap.add_argument("--validation-fraction", type=float, default=0.2)
    ap.add_argument("--variants", default="dice:photo,dice+bce:photo,dice+bce:geo",
                    help="comma-separated loss:augmentation (loss dice | dice+bce | dice+wbce, the BCE weighted on region edges | "
                         "dice+kd, the BCE against the mask mixed with a teacher's map, --teacher; augmentation photo = flips, "
                         "quarter turns, brightness/contrast; geo = flips and quarter turns only)")
    ap.add_argument("--sweep-steps", type=int, default=400, help="schedule of each sweep variant")
    ap.add_argument("--steps", type=int, default=8000, help="schedule of the chosen variant")
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sweep-batch", type=int, default=8, help="batch of the variant sweep")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--crop", type=int, default=128, help="training crop side, a multiple of 8 (200: whole images)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", choices=("small", "dilated", "deep", "features", "fullres"), default="fullres",
                    help="small: 1.1.0's network; dilated: a 5x5 stride-2 first convolution and dilations 1/2/4 at 25 pixels; "
                         "deep: dilated with a fourth level at 13 pixels; features: dilated with the NEU classifier's first "
                         "three backbone blocks beside it; fullres: dilated with two convolutions on the image at full "
                         "resolution joined to the last")
    ap.add_argument("--teacher", metavar="CHECKPOINT",
                    help="for the loss dice+kd: a refit checkpoint of this recipe whose maps, averaged over the eight "
                         "flips and quarter turns, teach the student (its selection network in runs scored on "
                         "validation, its shipped network in the refit)")
    ap.add_argument("--distil", type=float, default=0.5,
                    help="dice+kd: the BCE's target is (1 - DISTIL) x mask + DISTIL x the teacher's map")
    ap.add_argument("--ema", type=float, default=0.0,
                    help="decay of an exponential moving average of the weights scored beside them at every "
                         "checkpoint (0: none); the selection may choose either")
    ap.add_argument("--output", choices=("probability", "logits"), default="probability",
                    help="what the graph's `mask` output is: sigmoid(logit) (every segment manifest's "
                         "`activation = \"sigmoid\"`) or the logit itself")
    ap.add_argument("--ship-only", action="store_true", help="export + quantise the saved checkpoint, no training")
    ap.add_argument("--export-selection", metavar="DIR",
                    help="no training: export the --checkpoint's selection network (trained on the pool minus "
                         "validation; the checkpoint's own network if it has none) to DIR as int8 and f32 files with "
                         "a copy of the shipped manifest naming them, so that `ferroscope eval segment` measures it "
                         "on the validation list")
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "models", "training", f"{STEM}.pt"),
                    help="the checkpoint written by training and read by --ship-only")
    ap.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda)")
    ap.add_argument("--no-refit", action="store_true",
                    help="ship the chosen checkpoint of the run on the pool minus validation as it is (1.1.0 and before)")
    ap.add_argument("--refit", metavar="SELECTION_CHECKPOINT",
                    help="train the variant, network and schedule of a --train-only checkpoint again on the whole "
                         "training pool (validation included) to its chosen step, and ship it; the pixel threshold "
                         "is chosen on validation with the selection checkpoint's int8 file")
    ap.add_argument("--pretrain", type=int, default=0, metavar="STEPS",
                    help="with --train-only: first STEPS steps of self-supervised filling-in on every NEU class's "
                         "training-side images (no mask; the validation images left out), the segmentation run "
                         "starting from those weights (pretrain); --refit of such a checkpoint does the same with "
                         "the validation images in; not the shipped design")
    ap.add_argument("--train-only", metavar="VARIANT",
                    help="no sweep and no export: train VARIANT (loss:augmentation) on the --steps schedule, score "
                         "its checkpoints on validation, save the best to --checkpoint (one run of a schedule sweep)")
    args = ap.parse_args()
    if args.crop % 8 or not 8 <= args.crop <= TILE:
        ap.error("--crop must be a multiple of 8 in 8..200")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    t_start = time.time()
    log = lambda s: print(s, flush=True)

    items = load_set(args.data, args.masks)
    pool, held = heldout_split(items, args.data, args.seed, args.heldout_fraction)
    fit, val = split_groups(pool, args.seed + 1, args.validation_fraction)
    check_disjoint(fit, val, held)
    log(f"{len(items)} masked images: pool {len(pool)} (fit {len(fit)}, validation {len(val)}), held-out {len(held)}")
    if args.export_selection:
        return export_selection(args, fit, log)
    saved = None
    if args.refit or args.ship_only:  # the network and schedule are the checkpoint's
        saved = torch.load(args.refit or args.checkpoint, map_location="cpu")
        use_selection(args, saved["selection"])
    model = UNet(arch=args.arch)
    log(f"parameters {sum(p.numel() for p in model.parameters())}, multiply-adds {multiply_adds(model) / 1e6:.1f} M per image")
    if args.arch == "features" and not (args.refit or args.ship_only):  # runs scored on validation
        args.classifier = classifier_state(args, [it["rel"] for it in val], held, log)
    ckpt = args.checkpoint
    if args.train_only:
        if args.train_only.startswith("dice+kd:"):
            teacher_maps(fit, *load_teacher(args, False, log), log)
        if args.pretrain:
            args.pretrained = pretrain(pretrain_pool(args, {it["rel"] for it in val}, log), args, log)
        table, best = [], None
        for step, weights, level, dice, state in train_variant(args.train_only, fit, val, args, log, args.steps, args.steps // 2):
            table.append({"step": step, "weights": weights, "level": level, "dice_mean_per_image": round(dice, 6)})
            if best is None or dice > best[1] + 1e-9:  # ties keep fewer steps, and raw weights
                best = (step, dice, state, weights)
        step, dice, state, weights = best
        selection = selection_record(args, args.train_only, step, table, t_start, weights)
        torch.save({"state_dict": state, "selection": selection}, ckpt)
        log(f"train-only {args.train_only} steps {args.steps} batch {args.batch} crop {args.crop} lr {args.lr}: "
            f"best step {step} ({weights} weights), validation mean Dice per image {dice:.4f} (f32)")
        return None
    if args.refit:
        if args.pretrain:  # the selection run's start, learnt again on the pool's images (validation now among them)
            args.pretrained = pretrain(pretrain_pool(args, set(), log), args, log)
        return refit_and_ship(saved, fit, val, held, args, log, t_start)
    if args.ship_only:
        model.load_state_dict(saved["state_dict"])
        chooser = None
        if "chooser_state_dict" in saved:
            chooser = UNet(arch=args.arch)
            chooser.load_state_dict(saved["chooser_state_dict"])
        return ship(model, saved["selection"], fit, val, held, args, t_start, chooser=chooser)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    sweep, best = [], None
    sweep_args = copy.copy(args)
    sweep_args.batch = args.sweep_batch
    sweep_args.ema = 0.0
    for variant in variants:
        (step, _, level, dice, _), = train_variant(variant, fit, val, sweep_args, log, args.sweep_steps, args.sweep_steps)
        sweep.append({"variant": variant, "steps": step, "level": level, "dice_mean_per_image": round(dice, 6)})
        # ties keep the earlier entry (the list's order)
        if best is None or dice > best[1] + 1e-9:
            best = (variant, dice)
    variant = best[0]
    log(f"sweep ({args.sweep_steps} steps each): chosen {variant} (validation mean Dice per image {best[1]:.4f}, f32)")
    table, best = [], None
    for step, weights, level, dice, state in train_variant(variant, fit, val, args, log, args.steps, args.steps // 2):
        table.append({"step": step, "weights": weights, "level": level, "dice_mean_per_image": round(dice, 6)})
        if best is None or dice > best[1] + 1e-9:  # ties keep fewer steps, and raw weights
            best = (step, dice, state, weights)
            torch.save({"state_dict": state, "selection": {"variant": variant, "step": step, "weights": weights}}, ckpt)
    step, dice, state, weights = best
    log(f"chosen: {variant} at step {step} of {args.steps}, {weights} weights (validation mean Dice per image {dice:.4f}, f32)")
    selection = dict(selection_record(args, variant, step, table, t_start, weights), sweep_steps=args.sweep_steps, sweep=sweep)
    torch.save({"state_dict": state, "selection": selection}, ckpt)
    if not args.no_refit:
        return refit_and_ship({"state_dict": state, "selection": selection}, fit, val, held, args, log, t_start)
    model.load_state_dict(state)
    ship(model, selection, fit, val, held, args, t_start)


def selection_record(args, variant, step, table, t_start, weights="raw"):
    """What a selection run chose and on which network and schedule (a checkpoint's
    `selection`; use_selection reads it back)."""
    extra = {}
    if variant.startswith("dice+kd:"):
        extra = {"distil": args.distil, "teacher": os.path.relpath(os.path.abspath(args.teacher), ROOT),
                 "teacher_sha256": common.sha256_file(args.teacher)}
    if getattr(args, "pretrain", 0):
        extra["pretrain"] = args.pretrain
    return {**extra, "variant": variant, "arch": args.arch, "step": step, "weights": weights, "ema": args.ema,
            "steps": args.steps, "batch": args.batch,
            "crop": args.crop, "lr": args.lr, "device": args.device, "checkpoints": table,
            "train_minutes": round((time.time() - t_start) / 60, 1)}


def use_selection(args, sel):
    """Set the network and schedule of a checkpoint's selection record on args (a record
    without them is 1.0.0/1.1.0's: the command line's stand)."""
    for key in ("arch", "steps", "batch", "crop", "lr", "ema", "distil", "pretrain"):
        if key in sel:
            setattr(args, key, sel[key])
    if "teacher" in sel:  # recorded relative to the repository root
        args.teacher = os.path.join(ROOT, sel["teacher"])


def export_selection(args, fit, log):
    """--export-selection: the checkpoint's selection network as DIR/neu_segment.onnx (int8, the
    recipe's quantisation) and .f32.onnx, with the shipped manifest's copy naming them and the
    two lists beside it."""
    saved = torch.load(args.checkpoint, map_location="cpu")
    use_selection(args, saved["selection"])
    net = UNet(arch=args.arch)
    net.load_state_dict(saved.get("chooser_state_dict", saved["state_dict"]))
    out = args.export_selection
    os.makedirs(out, exist_ok=True)
    f32_path, int8_path = os.path.join(out, f"{STEM}.f32.onnx"), os.path.join(out, f"{STEM}.onnx")
    export(net, f32_path, int8_path, fit, args)
    models = os.path.join(ROOT, "models")
    with open(os.path.join(models, f"{STEM}.toml")) as fh:
        text = fh.read()
    text = re.sub(r'^sha256 = ".*"$', f'sha256 = "{common.sha256_file(int8_path)}"', text, count=1, flags=re.M)
    text = re.sub(r'^f32_sha256 = ".*"$', f'f32_sha256 = "{common.sha256_file(f32_path)}"', text, count=1, flags=re.M)
    text = text.replace("[model]\n", "# The selection network of the checkpoint (never trained on the validation images),\n"
                        "# exported by neu_segment.py --export-selection; not a shipped model.\n[model]\n", 1)
    with open(os.path.join(out, f"{STEM}.toml"), "w") as fh:
        fh.write(text)
    for lst in (f"{STEM}.heldout.txt", f"{STEM}.validation.txt"):
        shutil.copy(os.path.join(models, lst), out)
    log(f"wrote {out}/{STEM}.toml; measure it on validation with: target/release/ferroscope eval segment --model "
        f"{out}/{STEM}.toml --data ../shared/datasets/neu_cls --masks ../shared/datasets/neu_cls_masks "
        f"--list models/{STEM}.validation.txt [--symmetries N] --json")


def refit_and_ship(saved, fit, val, held, args, log, t_start):
    """Train the variant, network and schedule of a selection checkpoint (`saved`: its
    state_dict and selection) again from the same seed on the whole pool to its chosen step,
    and ship that, with the selection checkpoint choosing the threshold on validation."""
    sel = saved["selection"]
    use_selection(args, sel)
    if args.arch == "features":
        args.classifier = classifier_state(args, [], held, log)
    chooser = UNet(arch=args.arch)
    chooser.load_state_dict(saved["state_dict"])
    model = UNet(arch=args.arch)
    log(f"refit: {sel['variant']} arch {args.arch}, step {sel['step']} of {args.steps} x batch {args.batch} x crop "
        f"{args.crop}, lr {args.lr}, on the whole pool ({len(fit) + len(val)} images)")
    if sel["variant"].startswith("dice+kd:"):
        if args.teacher and os.path.isfile(args.teacher) and common.sha256_file(args.teacher) != sel.get("teacher_sha256"):
            raise SystemExit(f"{args.teacher} is not the teacher the selection run had ({sel.get('teacher')})")
        teacher_maps(fit + val, *load_teacher(args, True, log), log)
    t0 = time.time()
    (_, _, _, _, state), = train_variant(sel["variant"], fit + val, None, args, log, args.steps, 0, stop_at=sel["step"],
                                         weights=sel.get("weights", "raw"))
    model.load_state_dict(state)
    selection = dict(sel, refit=True, refit_images=len(fit) + len(val), refit_train_minutes=round((time.time() - t0) / 60, 1))
    torch.save({"state_dict": state, "selection": selection, "chooser_state_dict": saved["state_dict"]}, args.checkpoint)
    return ship(model, selection, fit, val, held, args, t_start, chooser=chooser)


def selection_rule(selection, args):
    """The manifest's account of how the shipped checkpoint was chosen (validation only)."""
    if selection.get("refit"):
        sweep = selection.get("sweep", [])
        text = ""
        if sweep:
            text = (
                f"variant sweep: {', '.join(v['variant'] for v in sweep)} (loss:augmentation), each from seed {args.seed} "
                f"on a {selection.get('sweep_steps', args.sweep_steps)}-step schedule"
                + (f" with the {selection['sweep_network']}" if selection.get("sweep_network") else "")
                + f", the best mean Dice per image at its best level on the validation split (f32) chose {selection['variant']}; "
            )
        arch = selection.get("arch", args.arch)
        against = (f"1.2.0's dilated network on the same schedule, {STEM}.fullres.json" if arch == "fullres"
                   else f"1.1.0's small network on the same schedule, {STEM}.schedule_sweep.json")
        return text + (
            f"network ({arch}; against {against}), loss and augmentation ({selection['variant']}), schedule "
            f"({args.steps} steps x batch {args.batch} x crop {args.crop} at lr {args.lr}) and step chosen on the "
            f"validation split by a run on the pool minus validation (checkpoints every {args.eval_every} steps from 50 %, "
            f"the best mean Dice per image at its best level, f32: step {selection['step']}; {STEM}.metrics.json, "
            f"selection); the shipped file is the same schedule trained again from seed {args.seed} on the whole pool "
            f"({selection.get('refit_images')} images) to that step, and the pixel threshold is the selection run's"
        ) + (
            f"; the weights are their moving average (decay {selection.get('ema')}), chosen over the raw weights the same way"
            if selection.get("weights") == "ema" else ""
        )
    if "sweep" not in selection and "schedule_sweep" not in selection:  # a --train-only run shipped as it is
        return (
            f"loss and augmentation ({selection['variant']}) and schedule ({args.steps} steps x batch {args.batch} x crop "
            f"{args.crop} at lr {args.lr}) as chosen on the validation split for 1.1.0 and 1.2.0 ({STEM}.schedule_sweep.json); "
            f"network ({selection.get('arch', args.arch)}; the networks compared on that schedule are the card's choices) and step, chosen "
            f"on the validation split by a run on the pool minus validation (checkpoints every {args.eval_every} steps from "
            f"50 %, the best mean Dice per image at its best level, f32: step {selection['step']}; {STEM}.metrics.json, "
            f"selection); that checkpoint is shipped as it is, trained on the pool minus validation"
        )
    text = (
        f"variant sweep: {', '.join(v['variant'] for v in selection.get('sweep', []))} (loss:augmentation), each from "
        f"seed {args.seed} on a {selection.get('sweep_steps', args.sweep_steps)}-step schedule, the best mean Dice per "
        f"image at its best level on the validation split (f32) chose {selection['variant']}; "
    )
    sched = selection.get("schedule_sweep")
    if sched:
        text += (
            f"schedule sweep: {len(sched)} schedules (steps x batch x crop x lr, {selection['variant']} and the photometric "
            f"variant beside it) from seed {args.seed}, checkpoints every 1000 steps from 50 % scored the same way "
            f"({STEM}.metrics.json, selection.schedule_sweep); the best checkpoint, {args.steps} steps x batch {args.batch} "
            f"x crop {args.crop} at lr {args.lr}, step {selection['step']}, is shipped as it is, trained on the pool minus validation"
        )
    else:
        text += (
            f"then that variant on the {args.steps}-step schedule, checkpoints every {args.eval_every} steps from 50 % "
            f"scored the same way; the best step is shipped as it is, trained on the pool minus validation"
        )
    return text


def export(model, f32_path, int8_path, fit, args):
    """The f32 ONNX file (BatchNorm folded) and its int8 QDQ quantisation, calibrated on 48
    training images."""
    model.eval()
    torch.onnx.export(
        Export(fuse(model), logits=args.output == "logits").eval(),
        torch.zeros(1, 1, TILE, TILE),
        f32_path,
        input_names=["image"],
        output_names=["mask"],
        opset_version=13,
        do_constant_folding=True,
        dynamo=False,
    )
    crng = random.Random(args.seed + 1)
    calib = [fit[i]["img"] for i in crng.sample(range(len(fit)), 48)]
    common.quantise_int8(f32_path, int8_path, calib)


def ship(model, selection, fit, val, held, args, t_start, chooser=None):
    """Export and quantise `model`, choose the pixel threshold on validation and write the
    manifest, lists and metrics file. For a refit (`chooser` given: the selection run's
    checkpoint, which never saw the validation images), the threshold and the validation
    metrics are those of the chooser's int8 file."""
    out = args.out
    f32_path = os.path.join(out, f"{STEM}.f32.onnx")
    int8_path = os.path.join(out, f"{STEM}.onnx")
    export(model, f32_path, int8_path, fit, args)
    val_f32, val_int8 = f32_path, int8_path
    if chooser is not None:
        tmp = tempfile.mkdtemp(prefix=f"{STEM}-chooser-")
        val_f32, val_int8 = os.path.join(tmp, "chooser.f32.onnx"), os.path.join(tmp, "chooser.onnx")
        export(chooser, val_f32, val_int8, fit, args)

    to_prob = (lambda a: 1 / (1 + np.exp(-a))) if args.output == "logits" else (lambda a: a)
    int8_val = to_prob(ort_maps(val_int8, val))
    f32_val = to_prob(ort_maps(val_f32, val))
    per_level = [pixel_metrics(int8_val, val, lv)["dice_mean_per_image"] for lv in LEVELS]
    k = int(np.argmax(per_level))
    pixel_thr = LEVELS[k]
    print("validation mean Dice per image per level (int8):", dict(zip(LEVELS, np.round(per_level, 4))), "->", pixel_thr, flush=True)
    m_int8 = metrics_by_class(int8_val, val, pixel_thr)
    m_f32 = metrics_by_class(f32_val, val, pixel_thr)
    for name, m in (("int8", m_int8), ("f32", m_f32)):
        for c, r in m.items():
            print(f"validation {name} {c:10s} mean Dice/image {r['dice_mean_per_image']:.4f} pooled Dice {r['dice']:.4f} "
                  f"IoU {r['iou']:.4f} MAE {r['mae']:.4f} detected {r['detected']}/{r['images']}", flush=True)
    grains = os.path.join(out, "grains_316l.onnx")
    bench = {"int8": (int8_path, (1, 1, TILE, TILE)), "f32": (f32_path, (1, 1, TILE, TILE))}
    if os.path.isfile(grains):
        bench["grains_316l_int8_256"] = (grains, (1, 1, 256, 256))
    timing = ort_ms(bench)
    print("onnxruntime, one thread, ms per image:", timing, flush=True)

    with open(os.path.join(out, f"{STEM}.heldout.txt"), "w") as fh:
        fh.write("# held-out NEU images with masks (seeded split by duplicate group, seed 0); never trained on, never used to choose\n")
        for it in held:
            fh.write(it["rel"] + "\n")
    with open(os.path.join(out, f"{STEM}.validation.txt"), "w") as fh:
        fh.write("# validation images carved from the training pool (seed 1): chose loss, augmentation, step and thresholds; never trained on\n")
        for it in val:
            fh.write(it["rel"] + "\n")

    refit = bool(selection.get("refit"))
    loss_name, aug = selection["variant"].split(":")
    loss_text = "soft Dice per image on the sigmoid outputs" + {
        "dice+bce": " + BCE", "dice+wbce": " + BCE with region edges weighted up to 6x",
        "dice+kd": f" + BCE against {1 - selection.get('distil', 0.5):g} x mask + {selection.get('distil', 0.5):g} x the teacher's map "
                   f"({selection.get('teacher')}: the recipe's previous network trained on the same images, its map averaged over "
                   f"the eight flips and quarter turns)"}.get(loss_name, "")
    aug_text = "flips and quarter turns" + (", brightness +-0.15 and contrast x0.75..1.25" if aug == "photo" else "")
    c0, c1, c2 = WIDTH
    mmac = multiply_adds(model) / 1e6
    if args.arch == "small":
        front = (f"U-Net after a 2x2 average (widths {c0}/{c1}/{c2} at 100/50/25 pixels, two 3x3 Conv+ReLU per "
                 f"encoder level, ")
    else:
        front = (f"U-Net reading the image with a 5x5 stride-2 Conv+ReLU (widths {c0}/{c1}/{c2} at 100/50/25 pixels, "
                 f"two Conv+ReLU per encoder level, three at 25 pixels dilated 1/2/4, ")
        if args.arch == "deep":
            front += (f"a fourth level of two Conv+ReLU at 13 pixels ({DEEP} channels, the first stride 2) brought back by a "
                      f"2x2 transposed conv and joined by a 1x1 Conv+ReLU, ")
        if args.arch == "features":
            source = ("the shipped classifier's (neu_classify.pt)" if refit else
                      f"a classifier trained by neu_classify's recipe on its split minus the validation images ({STEM}.classifier.pt)")
            front += ("beside it the NEU classifier's first three backbone blocks (a 2x2 average, then 3x3 stride-2 Conv+ReLU "
                      f"of 24, 48 and 64 channels; initialised from {source} and trained on at a tenth of the rate), "
                      f"their 25-pixel output and their 13-pixel output brought back by a 2x2 transposed conv ({FEATURES_UP} "
                      f"channels) joined to the 25-pixel level by a 1x1 Conv+ReLU, ")
    joined = "the input image"
    if args.arch == "fullres":
        joined = f"two 3x3 Conv+ReLU of {FULL} channels on the input image at 200x200 and the image itself"
    design = (
        front + f"two 2x2 max-pools, 2x2 transposed-conv decoder with skip connections and one 3x3 conv per level), then a 2x2 "
        f"transposed conv back to 200x200 concatenated with {joined} and a 3x3 conv to the defect map "
        f"(sigmoid{' applied by the runtime' if args.output == 'logits' else ''}): {mmac:.0f} M multiply-adds per image."
    )
    rule = (
        f"pixel: the level of 0.05..0.95 with the best mean Dice per image of the int8 model "
        f"{'of the selection run (before the refit) ' if refit else ''}on the validation split "
        f"({len(val)} images, {STEM}.validation.txt); decision: the same level (every NEU masked image is defective, "
        f"and the image score is the map maximum, so an image is rejected exactly when it has a region)"
    )
    toml = f"""# Manifest of a ferroscope segment model. Paths are relative to this file.
[model]
name = "{STEM}"
tool = "segment"
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
mask = "mask"
activation = "sigmoid"

[segment]
# one {TILE}x{TILE} tile is the whole NEU image; the map has the tile's resolution
tile = {TILE}
min_overlap = 0
cell = 1
# image decision: reject when the map maximum reaches this
decision_threshold = {pixel_thr}
# a map pixel belongs to a region at or above this probability
pixel_threshold = {pixel_thr}
threshold_rule = "{rule}"

[quantisation]
format = "onnx QDQ: int8 weights (per output channel, 7-bit range), uint8 activations (per-tensor) around each Conv+Relu and the output conv; pooling, transposed convolutions, concatenation and the sigmoid f32"
calibration = "MinMax over 48 random training images"
tool = "onnxruntime.quantization.quantize_static"

[training]
recipe = "models/training/{STEM}.py"
dataset = "../shared/datasets/neu_cls"
masks = "../shared/datasets/neu_cls_masks"
classes = {str(CLASSES).replace("'", '"')}
split = "seeded 80/20 training pool/held-out per class by duplicate group (byte-identical images on one side; seed {args.seed}, the held-out images of neu_classify for these classes); validation: {args.validation_fraction:.0%} of the pool's duplicate groups per class (seed {args.seed + 1})"
heldout_list = "{STEM}.heldout.txt"
validation_list = "{STEM}.validation.txt"
train_images = {len(fit) + (len(val) if refit else 0)}
validation_images = {len(val)}
heldout_images = {len(held)}
steps = {args.steps}
chosen_step = {selection['step']}
refit = {str(refit).lower()}
batch = {args.batch}
crop = {args.crop}
seed = {args.seed}
loss = "{loss_text}"
augmentation = "{aug_text}"
lr = {args.lr}
device = "{selection.get('device', args.device)}"
schedule = "AdamW (weight decay 1e-4), 5 % linear warm-up then cosine to zero over {args.steps} steps, stopped on steps"
selection_rule = "{selection_rule(selection, args)}"
"""
    with open(os.path.join(out, f"{STEM}.toml"), "w") as fh:
        fh.write(toml)

    common.write_json(
        os.path.join(ROOT, "models", "training", f"{STEM}.metrics.json"),
        {
            "split": "validation",
            "validation_list": f"models/{STEM}.validation.txt",
            "pixel_threshold": pixel_thr,
            "decision_threshold": pixel_thr,
            "validation_dice_mean_per_image_by_level_int8": dict(zip(map(str, LEVELS), [round(v, 6) for v in per_level])),
            "int8": m_int8,
            "f32": m_f32,
            "selection": selection,
            "onnxruntime_one_thread_ms": timing,
            "multiply_adds_millions": round(mmac, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "output": args.output,
            "validation_metrics_of": "the selection run's checkpoint (the shipped file is its refit on the whole pool)"
            if refit else "the shipped checkpoint",
            "recipe_minutes": round((time.time() - t_start) / 60, 1),
        },
    )


if __name__ == "__main__":
    main()
