"""Measure a manifest's model with the Rust evaluator (f32 and int8, held-out list) and write
the figures into the manifest's [metrics] table.

    python3 models/training/stamp_metrics.py models/neu_classify.toml models/kolektor_segment.toml [--ferroscope BIN]
        --changed "what changed since each model's last line in models/heldout_log.jsonl"

Every scoring (int8 and f32, each a held-out list read once) is appended to the held-out log
(--heldout-log, default models/heldout_log.jsonl).
"""

import argparse
import json
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = [os.path.join(ROOT, "..", "shared", "datasets", d) for d in ("neu_cls", "x_sdd")]
KOLEKTOR = os.path.join(ROOT, "..", "shared", "datasets", "kolektorsdd")
GRAINS = os.path.join(ROOT, "..", "shared", "datasets", "grains_316l")


def log_args(args):
    """`ferroscope eval`'s held-out log arguments: every scoring of a held-out list is logged."""
    return ["--heldout-log", args.heldout_log, "--changed", args.changed]


def tiled_lines(args, manifest, tool, heldout):
    """[metrics] of a segment (or anomaly) model from `ferroscope eval <tool>`."""
    lines = ["[metrics]", f"# measured by: ferroscope eval {tool} --model <this file> --data ../shared/datasets/kolektorsdd "
             "--list <heldout_list> --precision <int8|f32> --json"]
    for precision in ("int8", "f32"):
        cmd = [args.ferroscope, "eval", tool, "--model", manifest, "--data", KOLEKTOR, "--list", heldout, "--precision", precision, "--json"]
        cmd += log_args(args)
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        keys = [k for k in ("image_ap", "image_auroc", "pixel_auroc", "dice", "iou") if isinstance(r.get(k), (int, float))]
        lines += [f"{precision}_heldout_images = {r['images']}"]
        lines += [f"{precision}_{k} = {r[k]:.6f}" for k in keys]
        lines += [f"{precision}_false_positives = {r['fp']}", f"{precision}_false_negatives = {r['fn']}",
                  f"{precision}_ms_per_frame_median = {r['ms_per_image_median']:.1f}"]
        print(manifest, precision, r["images"], "images, AP", r["image_ap"], "fp", r["fp"], "fn", r["fn"])
    return lines


def masked_lines(args, manifest, heldout, data, masks):
    """[metrics] of a segment model over class folders with pixel masks (`ferroscope eval segment
    --masks`): the mean Dice per image, pooled Dice and IoU, MAE and pixel AUROC, per class too."""
    lines = ["[metrics]",
             f"# measured by: ferroscope eval segment --model <this file> --data {data} --masks {masks} "
             "--list <heldout_list> --precision <int8|f32> --json",
             "# (held-out images, scored once each; models/heldout_log.jsonl)"]
    for precision in ("int8", "f32"):
        cmd = [args.ferroscope, "eval", "segment", "--model", manifest, "--data", os.path.join(ROOT, data),
               "--masks", os.path.join(ROOT, masks), "--list", heldout, "--precision", precision, "--json"]
        cmd += log_args(args)
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        if r["errors"]:
            raise SystemExit(f"{manifest}: eval segment: {r['errors']}")
        lines += [f"{precision}_heldout_images = {r['images']}"]
        lines += [f"{precision}_{k} = {r[k]:.6f}" for k in ("dice_mean_per_image", "dice", "iou", "mae", "pixel_auroc")]
        for c, m in sorted(r["per_class"].items()):
            lines += [f"{precision}_{c}_dice_mean_per_image = {m['dice_mean_per_image']:.6f}", f"{precision}_{c}_mae = {m['mae']:.6f}"]
        lines += [f"{precision}_ms_per_image_median = {r['ms_per_image_median']:.1f}"]
        print(manifest, precision, r["images"], "images, mean Dice per image", r["dice_mean_per_image"], "MAE", r["mae"])
    return lines


def grains_lines(args, manifest, heldout):
    """[metrics] of a grains model from `ferroscope eval grains`: pooled and per-tile figures."""
    lines = ["[metrics]",
             "# measured by: ferroscope eval grains --model <this file> --data ../shared/datasets/grains_316l "
             "--list <heldout_list> --precision <int8|f32> --json",
             "# histogram_*: the histograms pooled over the held-out tiles; tile_*: the mean over tiles of each",
             "# tile's own figure; g_*: |dG| model vs mask, mean (and worst) over tiles"]
    for precision in ("int8", "f32"):
        cmd = [args.ferroscope, "eval", "grains", "--model", manifest, "--data", GRAINS, "--list", heldout,
               "--precision", precision, "--json"]
        cmd += log_args(args)
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        if r["errors"]:
            raise SystemExit(f"{manifest}: eval grains: {r['errors']}")
        tile = r["per_image_mean"]
        worst = max(row["g_abs_error"] for row in r["per_image"])
        lines += [
            f"{precision}_heldout_images = {r['images']}",
            f"{precision}_histogram_correlation = {r['histogram_correlation']:.6f}",
            f"{precision}_chi_square = {r['chi_square']:.6f}",
            f"{precision}_intersection = {r['intersection']:.6f}",
            f"{precision}_tile_histogram_correlation = {tile['histogram_correlation']:.6f}",
            f"{precision}_tile_chi_square = {tile['chi_square']:.6f}",
            f"{precision}_tile_intersection = {tile['intersection']:.6f}",
            f"{precision}_g_mean_abs_error = {r['g_mean_abs_error']:.6f}",
            f"{precision}_g_max_abs_error = {worst:.6f}",
            f"{precision}_g_intercept_mean_abs_error = {r['g_intercept_mean_abs_error']:.6f}",
            f"{precision}_boundary_dice = {r['boundary_dice']:.6f}",
            f"{precision}_ms_per_tile_median = {r['ms_per_tile_median']:.1f}",
        ]
        print(manifest, precision, r["images"], "tiles, correlation", r["histogram_correlation"], "|dG|", r["g_mean_abs_error"])
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifests", nargs="+")
    ap.add_argument("--ferroscope", default=os.path.join(ROOT, "target", "release", "ferroscope"))
    ap.add_argument("--heldout-log", default=os.path.join(ROOT, "models", "heldout_log.jsonl"),
                    help="every scoring of a held-out list is appended to this log")
    ap.add_argument("--changed", required=True, help="what changed since each model's last line in the log")
    args = ap.parse_args()
    for manifest in args.manifests:
        text = open(manifest).read()
        heldout = re.search(r'heldout_list = "([^"]+)"', text).group(1)
        heldout = os.path.join(os.path.dirname(os.path.abspath(manifest)), heldout)
        tool = re.search(r'tool = "([^"]+)"', text).group(1)
        if tool != "classify":
            masks = re.search(r'^masks = "([^"]+)"', text, re.M)
            if tool == "grains":
                lines = grains_lines(args, manifest, heldout)
            elif masks:
                data = re.search(r'^dataset = "([^"]+)"', text, re.M).group(1)
                lines = masked_lines(args, manifest, heldout, data, masks.group(1))
            else:
                lines = tiled_lines(args, manifest, tool, heldout)
            text = re.sub(r"\n\[metrics\][\s\S]*?(?=\n\[|\Z)", "", text).rstrip() + "\n\n" + "\n".join(lines) + "\n"
            open(manifest, "w").write(text)
            continue
        lines = ["[metrics]", '# measured by: ferroscope eval classify --model <this file> --data ../shared/datasets/neu_cls '
                 "--data ../shared/datasets/x_sdd --list <heldout_list> --precision <int8|f32> --json"]
        for precision in ("int8", "f32"):
            cmd = [args.ferroscope, "eval", "classify", "--model", manifest, "--list", heldout, "--precision", precision, "--json"]
            cmd += log_args(args)
            for d in DATA:
                cmd += ["--data", d]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            lines += [
                f"{precision}_heldout_images = {r['images']}",
                f"{precision}_accuracy = {r['accuracy']:.6f}",
                f"{precision}_macro_precision = {r['precision']:.6f}",
                f"{precision}_macro_recall = {r['recall']:.6f}",
                f"{precision}_macro_f1 = {r['f1']:.6f}",
            ]
            print(manifest, precision, r["images"], "images, accuracy", r["accuracy"])
        text = re.sub(r"\n\[metrics\][\s\S]*?(?=\n\[|\Z)", "", text).rstrip() + "\n\n" + "\n".join(lines) + "\n"
        open(manifest, "w").write(text)


if __name__ == "__main__":
    main()
