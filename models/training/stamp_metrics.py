"""Measure a manifest's model with the Rust evaluator (f32 and int8, held-out list) and write
the figures into the manifest's [metrics] table.

    python3 models/training/stamp_metrics.py models/neu_classify.toml [--ferroscope BIN]
"""

import argparse
import json
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = [os.path.join(ROOT, "..", "shared", "datasets", d) for d in ("neu_cls", "x_sdd")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifests", nargs="+")
    ap.add_argument("--ferroscope", default=os.path.join(ROOT, "target", "release", "ferroscope"))
    args = ap.parse_args()
    for manifest in args.manifests:
        text = open(manifest).read()
        heldout = re.search(r'heldout_list = "([^"]+)"', text).group(1)
        heldout = os.path.join(os.path.dirname(os.path.abspath(manifest)), heldout)
        lines = ["[metrics]", '# measured by: ferroscope eval classify --model <this file> --data ../shared/datasets/neu_cls '
                 "--data ../shared/datasets/x_sdd --list <heldout_list> --precision <int8|f32> --json"]
        for precision in ("int8", "f32"):
            cmd = [args.ferroscope, "eval", "classify", "--model", manifest, "--list", heldout, "--precision", precision, "--json"]
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
