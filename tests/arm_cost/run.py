#!/usr/bin/env python3
"""The ARM cost meter's measurement (tests/arm_cost.sh builds what it needs and calls this).

For each model, precision and board core: `ferroscope bench --model-only --precision P --passes N
--json` runs under qemu-user with the instruction-counting plugin, for N = 1, 1 + k and 1 + 2k.
Each run pays the same load, optimisation and warm-up; the differences between runs are the
model runs alone:
    instructions per inference = (I(1 + 2k) - I(1)) / 2k
and the two steps I(1 + k) - I(1), I(1 + 2k) - I(1 + k) must agree within --tolerance (a count
that is not deterministic, or a run whose cost depends on how many came before it, fails).
Loading is not exactly repeatable (hash-map seeds differ from run to run: about 0.1 M
instructions), so a step holds k runs, k chosen from the model's MACs to make each step at
least STEP_MACS multiply-accumulates: the load's jitter stays below 0.1 % of a step.
MACs per inference come from the ONNX graph (macs.py); the kernels are those bench lists from the
optimised plan on that core.

Checks (any failure exits 1, naming the row): every count positive, the two steps agree, no
core retires more than 16 multiply-accumulates per instruction (SDOT's 16 8-bit MACs are the
most any of these cores does; more means the count is broken), on cores without the dot-product
extension no dot-product kernel runs and on cores with it any int8 tile kernel is the dot-product
one (the NEON plane kernel, `qconv_i8_neon_plane`, multiplies in 16 bits on both), every int8
model runs the integer convolution (`qconv_i8_*`) on every core (SDOT with the dot product,
SMLAL on the other aarch64 cores, VMLAL on armv7), and the JSON round-trips.
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile

# The boards' cores (boards/*.toml `cpu`), the qemu that emulates each, and what tract on that
# board would read as its CPU part from /proc/cpuinfo (under qemu-user /proc/cpuinfo is the
# host's, so it is given through tract's override; armv7 has no such override and reads none,
# which on a Cortex-A8 board picks the same generic NEON kernels).
CORES = {
    "cortex-a72": {"arch": "aarch64", "boards": "Raspberry Pi 4", "dotprod": False,
                   "env": {"TRACT_CPU_AARCH64_OVERRIDE_CPU_PART": "0xd08"}},
    "cortex-a76": {"arch": "aarch64", "boards": "Raspberry Pi 5, RK3588", "dotprod": True,
                   "env": {"TRACT_CPU_AARCH64_OVERRIDE_CPU_PART": "0xd0b"}},
    "cortex-a8": {"arch": "armv7", "boards": "BeagleBone Black", "dotprod": False,
                  "env": {"TRACT_CPU_ARM32_NEON": "true"}},
}
QEMU = {
    "aarch64": ("qemu-aarch64", "/usr/aarch64-linux-gnu"),
    "armv7": ("qemu-arm", "/usr/arm-linux-gnueabihf"),
}
MODELS = ["neu_classify", "neu7_classify", "kolektor_segment", "kolektor_anomaly", "grains_316l", "neu_segment"]
QUICK_MODELS = ["neu_classify"]
STEP_MACS = 200_000_000
MAX_MACS_PER_INSN = 16


def run_counted(qemu, sysroot, cpu, env, plugin, binary, args):
    """Run `binary args` under qemu with the plugin; (instructions, stdout)."""
    with tempfile.NamedTemporaryFile(prefix="arm_cost.", suffix=".count") as out:
        cmd = [qemu, "-cpu", cpu, "-L", sysroot, "-plugin", f"{plugin},out={out.name}", binary, *args]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-2000:]}")
        line = open(out.name).read().split()
    if len(line) != 4 or line[0] != "instructions" or line[2] != "vcpus":
        raise RuntimeError(f"{' '.join(cmd)}: the plugin wrote {' '.join(line)!r}")
    if line[3] != "1":
        raise RuntimeError(f"{' '.join(cmd)}: {line[3]} threads ran; the count is exact for one")
    return int(line[1]), p.stdout


def measure(job):
    model, precision, cpu, binary, plugin, macs = job
    core = CORES[cpu]
    qemu, sysroot = QEMU[core["arch"]]
    k = max(1, round(STEP_MACS / macs))
    passes = (1, 1 + k, 1 + 2 * k)
    counts, bench = [], None
    for n in passes:
        args = ["bench", "--model", f"models/{model}.toml", "--precision", precision,
                "--model-only", "--passes", str(n), "--json"]
        insns, stdout = run_counted(qemu, sysroot, cpu, core["env"], plugin, binary, args)
        counts.append(insns)
        bench = json.loads(stdout)
    r = bench["results"][precision]
    return {
        "model": model,
        "precision": precision,
        "cpu": cpu,
        "boards": core["boards"],
        "arch": core["arch"],
        "instructions_per_inference": (counts[-1] - counts[0]) // (2 * k),
        "passes": list(passes),
        "instructions_per_inference_by_step": [(b - a) // k for a, b in zip(counts, counts[1:])],
        "instructions_load_and_warmup": counts[0] - (counts[-1] - counts[0]) // (2 * k),
        "kernels": r["kernels"],
        "ops": op_counts(r["plan"]),
        "allocations_first_run_tract": r.get("allocations_first_run_tract"),
        "allocations_per_run_tract": r["allocations_per_run_tract"],
    }


def op_counts(plan):
    ops = {}
    for node in plan:
        ops[node["op"]] = ops.get(node["op"], 0) + 1
    return dict(sorted(ops.items(), key=lambda kv: -kv[1]))


def macs_of(model):
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "macs.py"),
                          f"models/{model}.toml"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return {r["precision"]: r["macs_per_inference"] for r in map(json.loads, out.stdout.splitlines())}


def check(rows, tolerance):
    errors = []
    for r in rows:
        name = f"{r['model']} {r['precision']} on {r['cpu']}"
        steps = r["instructions_per_inference_by_step"]
        if r["instructions_per_inference"] <= 0 or min(steps) <= 0 or r["instructions_load_and_warmup"] <= 0:
            errors.append(f"{name}: non-positive count {steps}")
            continue
        spread = (max(steps) - min(steps)) / max(steps)
        if spread > tolerance:
            errors.append(f"{name}: per-inference steps {steps} differ by {spread:.2%} (> {tolerance:.2%})")
        if r["macs_per_inference"] > MAX_MACS_PER_INSN * r["instructions_per_inference"]:
            errors.append(f"{name}: {r['macs_per_inference']} MACs in {r['instructions_per_inference']} "
                          f"instructions is above {MAX_MACS_PER_INSN} per instruction: the count is broken")
        dot = [k for k in r["kernels"] if k.endswith("_dot") or "_dot_" in k]
        i32 = [k for k in r["kernels"] if "_i32_" in k or k.startswith("qconv_i8_")]
        if r["precision"] == "int8" and not [k for k in r["kernels"] if k.startswith("qconv_i8_")]:
            errors.append(f"{name}: the int8 model runs no integer convolution")
        if not CORES[r["cpu"]]["dotprod"] and dot:
            errors.append(f"{name}: dot-product kernels {dot} picked on a core without them")
        # the plane kernel multiplies in 16 bits on every aarch64 core; the tiles must be SDOT's
        tiles = [k for k in i32 if k != "qconv_i8_neon_plane"]
        if CORES[r["cpu"]]["dotprod"] and r["arch"] == "aarch64" and tiles and not dot:
            errors.append(f"{name}: int8 kernels {tiles} picked, none of them the dot-product one")
    return errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-aarch64", help="needed for cortex-a72 and cortex-a76")
    ap.add_argument("--bin-armv7", help="needed for cortex-a8")
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--quick", action="store_true", help="CI: neu_classify only")
    ap.add_argument("--model", action="append", help="only these models (repeatable)")
    ap.add_argument("--cpu", action="append", choices=sorted(CORES), help="only these cores")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    models = args.model or (QUICK_MODELS if args.quick else MODELS)
    cpus = args.cpu or list(CORES)
    bins = {"aarch64": args.bin_aarch64, "armv7": args.bin_armv7}
    for c in cpus:
        if not bins[CORES[c]["arch"]]:
            ap.error(f"--cpu {c} needs --bin-{CORES[c]['arch']}")
    macs = {m: macs_of(m) for m in models}
    jobs = [(m, p, c, bins[CORES[c]["arch"]], args.plugin, macs[m][p])
            for m in models for p in ("int8", "f32") if p in macs[m] for c in cpus]
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(measure, job) for job in jobs]
        failed = []
        for done in concurrent.futures.as_completed(futures):
            try:
                r = done.result()
            except RuntimeError as e:
                failed.append(str(e))
                print(f"arm_cost: FAIL {e}", file=sys.stderr, flush=True)
                continue
            print(f"arm_cost: {r['model']} {r['precision']} on {r['cpu']}: "
                  f"{r['instructions_per_inference']:,} instructions per inference", file=sys.stderr, flush=True)
        rows = [f.result() for f in futures if f.exception() is None]
    for r in rows:
        r["macs_per_inference"] = macs[r["model"]][r["precision"]]
        r["instructions_per_mac"] = round(r["instructions_per_inference"] / r["macs_per_inference"], 4)
    f32 = {(r["model"], r["cpu"]): r["instructions_per_inference"] for r in rows if r["precision"] == "f32"}
    for r in rows:
        base = f32.get((r["model"], r["cpu"]))
        r["over_f32"] = round(r["instructions_per_inference"] / base, 4) if base else None

    out = {"results": rows}
    text = json.dumps(out)
    if json.loads(text) != out:
        sys.exit("FAIL: the JSON report does not round-trip")
    errors = failed + check(rows, args.tolerance)
    if args.json:
        print(text)
    else:
        print(f"{'model':<17} {'prec':<5} {'cpu':<11} {'instr/inference':>16} {'MACs':>12} "
              f"{'instr/MAC':>9} {'÷f32':>6}  kernels")
        for r in rows:
            print(f"{r['model']:<17} {r['precision']:<5} {r['cpu']:<11} {r['instructions_per_inference']:>16,} "
                  f"{r['macs_per_inference']:>12,} {r['instructions_per_mac']:>9.3f} "
                  f"{r['over_f32'] or 0:>6.3f}  {' '.join(r['kernels']) or '-'}")
    if errors:
        for e in errors:
            print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"arm cost OK: {len(rows)} rows, steps agree within {args.tolerance:.2%}", file=sys.stderr)


if __name__ == "__main__":
    main()
