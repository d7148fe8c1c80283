#!/usr/bin/env python3
"""Where an inference spends its instructions on a board's core: per function, under qemu-user.

    python3 tests/arm_cost/profile.py --bin BINARY --plugin insn_count.so \\
        --model kolektor_segment [--precision int8] [--cpu cortex-a76] [--top 25] [--json]

(`bash tests/arm_cost.sh --profile --model MODEL ...` builds the plugin and an unstripped static
aarch64 binary, so the C library's functions are named too, and calls this.) The plugin's `syms=` output counts each function's instructions; `ferroscope bench
--model-only` runs with 1 and 1 + k passes and the per-function difference, divided by k, is one
inference: loading and optimisation cancel. Functions are named as the binary's symbols,
demangled, with Rust's hash suffix removed; code without a symbol (the C library) is `?`.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import CORES, QEMU  # noqa: E402


def counted(binary, plugin, cpu, model, precision, passes):
    core = CORES[cpu]
    qemu, sysroot = QEMU[core["arch"]]
    with tempfile.NamedTemporaryFile(prefix="arm_prof.", suffix=".syms") as syms, \
            tempfile.NamedTemporaryFile(prefix="arm_prof.", suffix=".count") as out:
        cmd = [qemu, "-cpu", cpu, "-L", sysroot, "-plugin",
               f"{plugin},out={out.name},syms={syms.name}", binary, "bench", "--model",
               f"models/{model}.toml", "--precision", precision, "--model-only", "--passes",
               str(passes), "--json"]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **core["env"]})
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-2000:]}")
        counts = {}
        for line in open(syms.name):
            n, _, name = line.rstrip("\n").partition(" ")
            counts[name] = counts.get(name, 0) + int(n)
        return counts


def demangle(names):
    p = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    if p.returncode != 0:
        return names
    out = p.stdout.split("\n")[: len(names)]
    return [re.sub(r"::h[0-9a-f]{16}$", "", n) for n in out]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="unstripped ferroscope for the core's architecture")
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--precision", default="int8", choices=["int8", "f32"])
    ap.add_argument("--cpu", default="cortex-a76",
                    choices=sorted(c for c in CORES if CORES[c]["arch"] == "aarch64"))
    ap.add_argument("--runs", type=int, default=2, help="inferences in the difference (k)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    base = counted(a.bin, a.plugin, a.cpu, a.model, a.precision, 1)
    more = counted(a.bin, a.plugin, a.cpu, a.model, a.precision, 1 + a.runs)
    per = {k: (more.get(k, 0) - base.get(k, 0)) / a.runs for k in set(base) | set(more)}
    per = {k: v for k, v in per.items() if v > 0}
    total = sum(per.values())
    ranked = sorted(per.items(), key=lambda kv: -kv[1])
    names = demangle([k for k, _ in ranked])
    rows = [{"function": n, "instructions_per_inference": round(v), "share": v / total}
            for n, (_, v) in zip(names, ranked)]
    if a.json:
        print(json.dumps({"model": a.model, "precision": a.precision, "cpu": a.cpu,
                          "instructions_per_inference": round(total), "functions": rows}))
        return
    print(f"{a.model} {a.precision} on {a.cpu}: {total / 1e6:.2f} M instructions per inference")
    for r in rows[: a.top]:
        print(f"{r['instructions_per_inference'] / 1e6:9.2f} M {100 * r['share']:5.1f} %  {r['function'][:150]}")


if __name__ == "__main__":
    main()
