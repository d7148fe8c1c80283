"""Record onnxruntime's scores (CPU, one thread) for the committed sample images, so the Rust
tests can compare tract's outputs with the reference runtime.

    python3 models/training/reference.py models/neu_classify.toml models/neu7_classify.toml
"""

import os
import sys
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = ["tests/data/neu_samples", "tests/data/xsdd_samples"]


def main():
    for manifest in sys.argv[1:]:
        with open(manifest, "rb") as fh:
            man = tomllib.load(fh)
        classes = [c["name"] for c in man["classes"]]
        base = os.path.dirname(os.path.abspath(manifest))
        images = []
        for s in SAMPLES:
            for c in sorted(os.listdir(os.path.join(ROOT, s))):
                d = os.path.join(ROOT, s, c)
                if os.path.isdir(d) and c in classes:
                    images += [f"{s}/{c}/{f}" for f in common.list_class_dir(d)]
        u8 = [common.load_gray(os.path.join(ROOT, p)) for p in images]
        ref = {
            "note": "onnxruntime CPU scores, one thread; image paths relative to the repository root",
            "classes": classes,
            "images": images,
            "int8": common.ort_scores(os.path.join(base, man["model"]["file"]), u8).tolist(),
            "f32": common.ort_scores(os.path.join(base, man["model"]["f32_file"]), u8).tolist(),
        }
        out = os.path.join(base, man["model"]["name"] + ".reference.json")
        common.write_json(out, ref)
        print("wrote", out, len(images), "images")


if __name__ == "__main__":
    main()
