#!/usr/bin/env python3
"""Recipe switches against no switch: decision latency of boards/host-sim-plc.toml (10
frames/s), run three times side by side in one session for --seconds each: recipe 0 alone,
recipe 1 alone, and switching between them every --every seconds with `ferroscope recipe set`.

Prints p50/p99/max of the decision latency per run, the latency of the first item each
switch's recipe decided, items lost (gaps in the inspection IDs) and items whose recipe is not
the one the switch's answer named.

    python3 tests/recipe_switch.py [--seconds 60] [--every 5] [--json]

FERROSCOPE_BIN: the binary (default target/release/ferroscope).
"""
import argparse, json, os, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("FERROSCOPE_BIN", os.path.join(ROOT, "target/release/ferroscope"))


def profile(work):
    """host-sim-plc without its Modbus port, its control socket in `work`."""
    text = open(os.path.join(ROOT, "boards/host-sim-plc.toml")).read()
    text = text[: text.index("[opcua]")]  # no OPC UA or Modbus port
    boards = os.path.join(ROOT, "boards")
    text = text.replace('"../', '"%s/../' % boards)
    text = text.replace('name = "host-sim-plc"', 'name = "host-sim-plc"\ncontrol_socket = "%s/control.sock"' % work)
    p = os.path.join(work, "station.toml")
    with open(p, "w") as f:
        f.write(text)
    return p


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))] if v else None


def run(seconds, switch_every, start=None):
    work = tempfile.mkdtemp(prefix="ferroscope-recipe-switch-")
    p = profile(work)
    st = subprocess.Popen([BIN, "run", "--json", "--duration-s", str(seconds), "--config", p],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Read the item lines as they come: a full pipe would make the station drop lines.
    lines_out = []
    reader = threading.Thread(target=lambda: lines_out.extend(st.stdout), daemon=True)
    reader.start()
    t0 = time.monotonic()
    while subprocess.run([BIN, "recipe", "list", "--config", p], capture_output=True).returncode != 0:
        if time.monotonic() - t0 > 60 or st.poll() is not None:
            sys.exit("the station did not start: " + st.stderr.read())
        time.sleep(0.1)
    applied = []
    if start is not None:
        a = json.loads(subprocess.run([BIN, "recipe", "set", start, "--json", "--config", p],
                                      capture_output=True, text=True).stdout)
        applied.append((a["recipe"], a["after_items"]))
    names = ["kolektor-commutator", "neu-strip"]
    k = 0
    while switch_every and time.monotonic() - t0 < seconds - switch_every:
        time.sleep(switch_every)
        a = json.loads(subprocess.run([BIN, "recipe", "set", names[k % 2], "--json", "--config", p],
                                      capture_output=True, text=True).stdout)
        if a.get("ok"):
            applied.append((a["recipe"], a["after_items"]))
        k += 1
    st.wait()
    reader.join()
    lines = [json.loads(l) for l in lines_out]
    summary, items = lines[-1], lines[:-1]
    # Inspection IDs count the items from 0: the item with ID k is the (k+1)-th decided.
    expected = []
    for it in items:
        name = "neu-strip"
        for n, after in applied:
            if it["id"] >= after:
                name = n
        expected.append(name)
    # A run that starts with a switch to recipe 1: its items before the switch are left out.
    first = applied[0][1] if start is not None else 0
    lat = [it["latency_ms"] for it in items[first:]]
    return {
        "items": len(items) - first,
        "lost": sum(1 for a, b in zip(items, items[1:]) if b["id"] != a["id"] + 1),
        "wrong_recipe": sum(1 for it, e in zip(items, expected) if it["recipe"] != e),
        "switches": len(applied) - (1 if start is not None else 0),
        "latency_ms_p50": pct(lat, 50),
        "latency_ms_p99": pct(lat, 99),
        "latency_ms_max": max(lat) if lat else None,
        "first_after_switch_ms_max": max((it["latency_ms"] for it in items for _, a in applied[1 if start else 0:] if it["id"] == a), default=None),
        "faults": summary["faults"],
        "item_lines_dropped": summary["item_lines_dropped"],
        "missed_rejects": summary["missed_rejects"],
        "false_rejects": summary["false_rejects"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--every", type=float, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    s = int(a.seconds)
    res = {
        "neu-strip alone": run(s, 0),
        "kolektor-commutator alone": run(s, 0, start="kolektor-commutator"),
        "switching every %g s" % a.every: run(s, a.every),
    }
    if a.json:
        print(json.dumps(res))
        return
    for k, v in res.items():
        print("%-28s %s" % (k, json.dumps(v)))


if __name__ == "__main__":
    main()
