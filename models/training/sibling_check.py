"""Does an added class learn the defect or the dataset it came from? Run the shipped model with
the Rust binary on the held-out part of the added class's sibling folders (for red_iron: X-SDD's
six other defect classes, split 80/20 by common.seeded_split exactly as add_class.py splits
them; their training part was negatives) and count the images the station would call the added
class. The scoring is appended to the held-out log like every other.

    python3 models/training/sibling_check.py --model models/neu7_classify.toml --class red_iron \\
        --root ../shared/datasets/x_sdd --changed "what changed since the model's last line"
"""

import argparse
import datetime
import json
import os
import subprocess
import tomllib

import common

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--class", dest="name", required=True, help="the added class")
    ap.add_argument("--root", required=True, help="the dataset root holding the added class and its siblings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--precision", default="int8", choices=["int8", "f32"])
    ap.add_argument("--ferroscope", default=os.path.join(ROOT, "target", "release", "ferroscope"))
    ap.add_argument("--heldout-log", default=os.path.join(ROOT, "models", "heldout_log.jsonl"))
    ap.add_argument("--changed", required=True)
    args = ap.parse_args()

    siblings = sorted(d for d in os.listdir(args.root) if d != args.name and os.path.isdir(os.path.join(args.root, d)))
    held = []
    for c in siblings:
        held += common.seeded_split(args.root, c, args.seed, args.val_fraction)[1]
    cmd = [args.ferroscope, "infer", "--model", args.model, "--precision", args.precision, "--json"]
    out = subprocess.run(cmd + [os.path.join(args.root, p) for p in held], check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(rows) != len(held):
        raise SystemExit(f"{len(rows)} results for {len(held)} images")
    called = [p for p, r in zip(held, rows) if r["class"] == args.name]
    by_class = {c: sum(1 for p in called if p.split("/")[0] == c) for c in siblings}
    metrics = {"images": len(held), "called_added_class": len(called), "rate": len(called) / max(1, len(held)),
               "called_by_sibling_class": by_class, "called": called}
    print(f"{args.name} called on {len(called)} of {len(held)} held-out sibling images: {by_class}")

    with open(args.model, "rb") as fh:
        man = tomllib.load(fh)
    file = man["model"]["file"] if args.precision == "int8" else man["model"]["f32_file"]
    path = os.path.join(os.path.dirname(os.path.abspath(args.model)), file)
    line = {
        "changed": args.changed,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "list": f"held-out {int(args.val_fraction * 100)} % of {', '.join(siblings)} (seed {args.seed}), "
                f"scored for {args.name} false calls by models/training/sibling_check.py",
        "metrics": metrics,
        "model": man["model"]["name"],
        "model_file": file,
        "model_sha256": common.sha256_file(path),
        "precision": args.precision,
        "version": man["model"]["version"],
    }
    with open(args.heldout_log, "a") as fh:
        fh.write(json.dumps(line, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
