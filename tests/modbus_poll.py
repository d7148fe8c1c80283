#!/usr/bin/env python3
"""A PLC's view of the station, with a real Modbus client (pymodbus): run the host simulation
with its Modbus server (boards/host-sim-plc.toml), poll the input registers at --hz for
--seconds, and check that every inspection ID the station decided was seen, in order, with
the result code its item line reports.

    python3 tests/modbus_poll.py [--seconds 60] [--hz 100] [--bin target/release/ferroscope] [--json]

Prints {"items", "seen", "missed", "out_of_order", "code_mismatch", "polls", "poll_hz", ...};
exits 1 when an item was missed, seen out of order or with another code. Needs pymodbus
(pip install pymodbus).
"""
import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from pymodbus.client import ModbusTcpClient

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--hz", type=float, default=100.0)
    ap.add_argument("--bin", default=str(ROOT / "target/release/ferroscope"))
    ap.add_argument("--config", default=str(ROOT / "boards/host-sim-plc.toml"))
    ap.add_argument("--port", type=int, default=1502)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    station = subprocess.Popen(
        [a.bin, "run", "--json", "--duration-s", str(int(a.seconds)), "--config", a.config],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    # The station's item lines are read as they come: a full pipe would make it drop lines.
    out_lines = []
    reader = threading.Thread(target=lambda: out_lines.extend(station.stdout), daemon=True)
    reader.start()
    client = ModbusTcpClient("127.0.0.1", port=a.port, timeout=2)
    t0 = time.monotonic()
    while not client.connect():
        if time.monotonic() - t0 > 30 or station.poll() is not None:
            sys.exit("no Modbus server on 127.0.0.1:%d" % a.port)
        time.sleep(0.01)

    seen = []          # (inspection ID, result code) at each change of the ID
    polls, late_polls = 0, 0
    period = 1.0 / a.hz
    start = time.monotonic()
    next_at = start
    while True:
        try:
            rr = client.read_input_registers(0, count=9)
        except Exception:
            break                                   # the station stopped and closed the port
        if rr.isError():
            sys.exit("exception on a read inside the map: %s" % rr)
        r = rr.registers
        polls += 1
        ident, code, state = (r[0] << 16) | r[1], r[2], r[8]
        flags = client.read_discrete_inputs(0, count=5).bits[:5]
        if (not seen and (ident != 0 or flags[2])) or (seen and seen[-1][0] != ident):
            seen.append((ident, code))
        if state == 3:                              # stopped
            break
        next_at += period
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            late_polls += 1
    client.close()
    station.wait(timeout=60)
    reader.join(timeout=10)
    lines = [json.loads(l) for l in out_lines if l.strip()]
    summary, items = lines[-1], lines[:-1]
    expected = [(i["id"], i["result_code"]) for i in items]
    seen_ids = [s[0] for s in seen]
    code_of = dict(expected)
    result = {
        "items": len(expected),
        "seen": len(seen),
        "missed": len(set(code_of) - set(seen_ids)),
        "out_of_order": sum(1 for x, y in zip(seen_ids, seen_ids[1:]) if y <= x),
        "code_mismatch": sum(1 for i, c in seen if code_of.get(i) != c),
        "polls": polls,
        "poll_hz": round(polls / max(time.monotonic() - start, 1e-9), 1),
        "late_polls": late_polls,
        "station_missed_rejects": summary.get("missed_rejects"),
        "station_item_lines_dropped": summary.get("item_lines_dropped"),
        "modbus": summary.get("modbus"),
    }
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    ok = result["missed"] == 0 and result["out_of_order"] == 0 and result["code_mismatch"] == 0
    sys.exit(0 if ok and station.returncode == 0 else 1)


if __name__ == "__main__":
    main()
