"""The peer: the same .onnx files in onnxruntime (Python), one thread, over the same images,
timing decode + preprocess + inference like `ferroscope bench`; with --ferroscope it also runs
the Rust bench in the same session and prints the tract/onnxruntime ratios.

    python3 models/training/bench_ort.py --model models/neu_classify.toml \\
        --ferroscope target/release/ferroscope
"""

import argparse
import json
import os
import subprocess
import time
import tomllib

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def list_images(d):
    out = []
    for dirpath, _, files in os.walk(d):
        out += [os.path.join(dirpath, f) for f in files if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp"))]
    return sorted(out)


def tile_origins(length, tile, min_overlap):
    """Tile starts as the runtime places them (src/tools/tiled.rs): centred when the frame is
    smaller than a tile, else evenly spaced with at least min_overlap shared pixels."""
    if length <= tile:
        return [-((tile - length) // 2)]
    n = 1 + -(-(length - tile) // (tile - min_overlap))
    return [i * (length - tile) // (n - 1) for i in range(n)]


def bench_tiled(onnx_path, inp, section, files, passes):
    """A tiled (segment, anomaly, grains) model: decode, reflect-pad, cut tiles, run every tile.
    The peer does no stitching and no regions or grain analysis, which the ferroscope timing
    includes."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    tile, ov = section["tile"], section["min_overlap"]
    mean, std = inp["mean"], inp["std"]
    blobs = [open(f, "rb").read() for f in files]
    import io

    def once(b):
        t0 = time.perf_counter()
        im = np.asarray(Image.open(io.BytesIO(b)).convert("L"))
        t1 = time.perf_counter()
        h, w = im.shape
        xs, ys = tile_origins(w, tile, ov), tile_origins(h, tile, ov)
        px, py = max(0, -xs[0]), max(0, -ys[0])
        padded = np.pad(im, ((py, max(0, tile - h - py)), (px, max(0, tile - w - px))), mode="reflect")
        x = (padded.astype(np.float32) / 255.0 - mean) / std
        tiles = [np.ascontiguousarray(x[y + py : y + py + tile, xx + px : xx + px + tile])[None, None] for y in ys for xx in xs]
        t2 = time.perf_counter()
        for t in tiles:
            sess.run(None, {inp["name"]: t})
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t3 - t0

    for b in blobs:
        once(b)
    rows = np.array([once(b) for _ in range(passes) for b in blobs]) * 1000.0
    med = np.median(rows, axis=0)
    return {
        "decode_median_ms": med[0],
        "preprocess_median_ms": med[1],
        "inference_median_ms": med[2],
        "end_to_end_median_ms": med[3],
        "end_to_end_p99_ms": float(np.percentile(rows[:, 3], 99)),
        "images_per_s_one_thread": 1000.0 / med[3],
    }


def bench_file(onnx_path, inp, files, passes):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    _, _, h, w = inp["shape"]
    mean, std = inp["mean"], inp["std"]
    blobs = [open(f, "rb").read() for f in files]
    import io

    def once(b):
        t0 = time.perf_counter()
        im = Image.open(io.BytesIO(b)).convert("L")
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        t1 = time.perf_counter()
        x = ((np.asarray(im, dtype=np.float32) / 255.0 - mean) / std)[None, None]
        t2 = time.perf_counter()
        sess.run(None, {inp["name"]: x})
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t3 - t0

    for b in blobs:
        once(b)
    rows = np.array([once(b) for _ in range(passes) for b in blobs]) * 1000.0
    med = np.median(rows, axis=0)
    return {
        "decode_median_ms": med[0],
        "preprocess_median_ms": med[1],
        "inference_median_ms": med[2],
        "end_to_end_median_ms": med[3],
        "end_to_end_p99_ms": float(np.percentile(rows[:, 3], 99)),
        "images_per_s_one_thread": 1000.0 / med[3],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "neu_classify.toml"))
    ap.add_argument("--images", help="folder of images; default: the committed samples of the model's tool")
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--ferroscope", help="path of the ferroscope binary to run side by side")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with open(args.model, "rb") as fh:
        man = tomllib.load(fh)
    base = os.path.dirname(os.path.abspath(args.model))
    section = man.get("segment") or man.get("anomaly") or man.get("grains")
    if args.images is None:
        if "grains" in man:
            samples = ("grains_samples", "images")
        elif section and man["training"].get("dataset", "").endswith("neu_cls"):
            samples = ("neu_samples",)
        elif section:
            samples = ("kolektor_samples", "images")
        else:
            samples = ("neu_samples",)
        args.images = os.path.join(ROOT, "tests", "data", *samples)
    files = list_images(args.images)
    out = {"model": man["model"]["name"], "images": len(files), "passes": args.passes, "onnxruntime": ort.__version__, "results": {}}
    variants = {"int8": man["model"]["file"]}
    if "f32_file" in man["model"]:
        variants["f32"] = man["model"]["f32_file"]
    for k, f in variants.items():
        if section:
            out["results"][k] = bench_tiled(os.path.join(base, f), man["input"], section, files, args.passes)
        else:
            out["results"][k] = bench_file(os.path.join(base, f), man["input"], files, args.passes)
    if args.ferroscope:
        r = subprocess.run([args.ferroscope, "bench", "--model", args.model, "--images", args.images, "--passes", str(args.passes), "--json"],
                           check=True, capture_output=True, text=True)
        tract = json.loads(r.stdout.strip().splitlines()[-1])
        out["tract"] = tract
        out["ratio_tract_over_ort"] = {
            k: {
                "end_to_end": tract["results"][k]["end_to_end"]["median_ms"] / out["results"][k]["end_to_end_median_ms"],
                "inference": tract["results"][k]["inference"]["median_ms"] / out["results"][k]["inference_median_ms"],
            }
            for k in variants
        }
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['model']}: {len(files)} images x {args.passes} passes, one thread, onnxruntime {ort.__version__}")
    for k, r in out["results"].items():
        line = f"[{k}] onnxruntime: end-to-end {r['end_to_end_median_ms']:.3f} ms (decode {r['decode_median_ms']:.3f}, preprocess {r['preprocess_median_ms']:.3f}, inference {r['inference_median_ms']:.3f})"
        print(line)
        if args.ferroscope:
            t = out["tract"]["results"][k]
            ra = out["ratio_tract_over_ort"][k]
            print(f"[{k}] ferroscope/tract: end-to-end {t['end_to_end']['median_ms']:.3f} ms (decode {t['decode']['median_ms']:.3f}, preprocess {t['preprocess']['median_ms']:.3f}, inference {t['inference']['median_ms']:.3f})")
            print(f"[{k}] ratio tract / onnxruntime: end-to-end {ra['end_to_end']:.2f}x, inference {ra['inference']:.2f}x")


if __name__ == "__main__":
    main()
