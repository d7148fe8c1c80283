"""Choose the anomaly model's filter length and orientation range by 2-fold cross-validation,
and measure the choice on images it did not see.

    python3 models/training/kolektor_anomaly_sigma.py     # from the repository root (about 20 min on 2 cores)

The along-line sigma of the dark-ridge filters (kolektor_anomaly.py, SIGMA_ALONG) and their
orientation range (ANGLES) are the settings of the anomaly model that the good frames choose
only weakly: the simulated cracks on the good validation frames score the candidates nearly
alike. Real defective frames decide them, without ever being scored by a model chosen on them:

* For each candidate (sigma 8, 12, 16 half-res px; orientations within +-30 degrees of the
  rows, or all orientations, 10 degrees apart) the model is built exactly as the recipe builds
  it, from good frames only: the normal fitted on the good training frames, the score's blur
  radius chosen on the good validation frames with simulated cracks (f32, in PyTorch).
* The held-out frames (every defective frame and the held-out good groups) are split in two
  halves, A and B, by duplicate group, stratified by good/defective, seeded.
* On each half the candidate with the best image AUROC is chosen (ties: the shorter filter);
  its AUROC on the *other* half is the out-of-fold figure. Pooling each half's out-of-fold
  scores gives one out-of-fold AUROC over all held-out frames.
* The recipe ships the candidate both halves choose (when they disagree, the one chosen on the
  whole held-out set, and the out-of-fold figure is the estimate to quote).

Prints a table; writes nothing.
"""

import argparse
import os

import numpy as np
import torch

import kolektor_crack_filter as ka
from kolektor_segment import ap_auroc

ROWS = ka.ANGLES  # within +-30 degrees of the frame rows
ALL = tuple(range(-80, 91, 10))  # every orientation
CANDIDATES = tuple((s, a) for a in (ROWS, ALL) for s in (8.0, 12.0, 16.0))


def name(c):
    return f"sigma {c[0]:g}, {'+-30' if c[1] == ROWS else 'all'} deg"


def halves(held, seed):
    """Two halves of the held-out frames (indices), by duplicate group (the recipe's seeded
    split), stratified by good/defective."""
    index = {it["name"]: i for i, it in enumerate(held)}
    a, b = [], []
    for defect in (True, False):
        x, y = ka.split_groups([it for it in held if it["defect"] == defect], seed, 0.5, f"halves:{defect}")
        a += [index[it["name"]] for it in x]
        b += [index[it["name"]] for it in y]
    return sorted(a), sorted(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ka.ROOT, "..", "shared", "datasets", "kolektorsdd"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-fraction", type=float, default=0.2)
    ap.add_argument("--val-fraction", type=float, default=0.15)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)

    fit, val, held = ka.splits(args)
    labels = np.array([int(it["defect"]) for it in held])
    scores = {}
    for s in CANDIDATES:
        print(f"-- {name(s)}", flush=True)
        model = ka.LineMap(*s).eval()
        ka.fit_normal(model, fit)

        @torch.no_grad()
        def fn(a, model=model):
            return model(torch.from_numpy(np.asarray(a, np.float32))).numpy()

        r, u, _ = ka.choose_blur(fn, val, args.seed)
        scores[s] = np.array([ka.frame_map(fn, it["img"], r)[0] for it in held])
        _, whole = ap_auroc(list(scores[s]), list(labels))
        print(f"{name(s)}: blur radius {r} (synthetic AUROC {u:.4f}); held-out image AUROC, all {len(held)} frames: {whole:.4f}", flush=True)

    A, B = halves(held, args.seed)
    auc = lambda s, idx: ap_auroc(list(scores[s][idx]), list(labels[idx]))[1]
    print()
    print(f"halves: A {len(A)} frames ({int(labels[A].sum())} defective), B {len(B)} frames ({int(labels[B].sum())} defective)")
    print("candidate | AUROC on A | AUROC on B | all")
    for s in CANDIDATES:
        print(f"{name(s)} | {auc(s, A):.4f} | {auc(s, B):.4f} | {auc(s, np.arange(len(held))):.4f}")
    pooled = np.zeros(len(held))
    chosen = {}
    for half, on, other in (("A", A, B), ("B", B, A)):
        best = max(CANDIDATES, key=lambda s: (round(auc(s, on), 6), -s[0], -len(s[1])))
        chosen[half] = best
        pooled[other] = scores[best][other]
        print(f"chosen on {half}: {name(best)}; its AUROC on the other half: {auc(best, other):.4f}")
    _, oof = ap_auroc(list(pooled), list(labels))
    print(f"out-of-fold image AUROC, pooled over both halves: {oof:.4f}")
    if chosen["A"] == chosen["B"]:
        print(f"both halves choose {name(chosen['A'])}")
    else:
        whole = max(CANDIDATES, key=lambda s: (round(auc(s, np.arange(len(held))), 6), -s[0], -len(s[1])))
        print(f"the halves disagree; chosen on the whole held-out set: {name(whole)}")


if __name__ == "__main__":
    main()
