#!/usr/bin/env bash
# Soak: the station runs for a long time (accelerated replay of the NEU samples, 200 items/s)
# while everything around it misbehaves on a schedule, and must stay flat:
#   - the camera drops and corrupts frames (0.5 % each) and is pulled out for 2 s every 40 s;
#   - the MQTT broker (Mosquitto, persistent sessions) is stopped for 2 s every 60 s;
#   - the reject archive's disk (a 4 MiB tmpfs, where root can mount one; otherwise a folder
#     with a 4 MiB cap) fills up, and every 45 s the archive is emptied: freed;
#   - the profile is reloaded (SIGHUP) every 20 s, its decision deadline changed each time;
#     every fourth reload finds a broken profile, which must be refused;
# then SIGTERM. Every 5 s the script samples the station's resident memory (VmRSS) and open
# file descriptors. After the warm-up (the first 90 s: every fault has happened once) the
# last minute is compared with the first minute after it: the largest resident memory, and the
# fewest descriptors held (a leaked one stays open; one open for a moment, while a profile is
# read or an archive entry written, is caught only by the sample that falls on it).
#
# Checked: memory growth <= 1 MiB, 0 file descriptors more held, 0 panics, a clean exit, the
# counters equal to the decision log, and every item decided is in the log or counted as
# dropped or lost.
#
#   bash tests/soak.sh [--minutes N] [--json]       # default 120 minutes
#
# FERROSCOPE_BIN: the binary (target/release/ferroscope, built when missing).
# Needs: python3; Mosquitto for the broker part (said plainly when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MINUTES=120
JSON=0
while [ $# -gt 0 ]; do
    case $1 in
        --minutes) MINUTES=$2; shift 2 ;;
        --json) JSON=1; shift ;;
        *) echo "usage: bash tests/soak.sh [--minutes N] [--json]" >&2; exit 2 ;;
    esac
done
BIN=${FERROSCOPE_BIN:-$ROOT/target/release/ferroscope}
if [ ! -x "$BIN" ]; then
    cargo build --release --bin ferroscope >&2
fi
WORK=$(mktemp -d /tmp/ferroscope-soak.XXXXXX)
cleanup() {
    umount "$WORK/archive" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/archive" "$WORK/records" "$WORK/mosquitto"
ARCHIVE_CAP_MB=16
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=4m tmpfs "$WORK/archive" 2>/dev/null; then
    DISK="tmpfs of 4 MiB"
else
    ARCHIVE_CAP_MB=4
    DISK="folder with a 4 MiB cap (mounting a tmpfs needs root)"
fi

python3 - "$BIN" "$ROOT" "$WORK" "$MINUTES" "$JSON" "$ARCHIVE_CAP_MB" "$DISK" <<'PY'
import json, os, shutil, signal, socket, subprocess, sys, threading, time
bin_, root, work, minutes, as_json, cap_mb, disk = sys.argv[1:]
minutes, as_json, cap_mb = float(minutes), as_json == "1", int(cap_mb)
run_s = minutes * 60
WARMUP_S = 90.0
WINDOW_S = 60.0

def say(*a):
    print(*a, file=sys.stderr if as_json else sys.stdout, flush=True)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

# --- the broker ---
mosquitto = shutil.which("mosquitto")
port = free_port()
broker = None
def broker_start():
    global broker
    conf = os.path.join(work, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write("user root\nlistener %d 127.0.0.1\nallow_anonymous true\npersistence true\n"
                "persistence_location %s/mosquitto/\n" % (port, work))
    broker = subprocess.Popen([mosquitto, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("FAIL: Mosquitto never listened on 127.0.0.1:%d" % port)
if mosquitto:
    broker_start()
else:
    say("the broker part is skipped: mosquitto is not installed (Debian: mosquitto)")

# --- the profile: its own sections and the test stations' rules ---
profile = os.path.join(work, "station.toml")
rules = open(os.path.join(root, "tests/data/neu_station_rules.toml")).read()
assert "decision_deadline_ms = 1000" in rules
def write_profile(deadline_ms, broken=False):
    text = """[station]
name = "soak"
[camera]
source = "replay"
path = "%(root)s/tests/data/neu_samples"
rate_fps = 200.0
loops = 0
[camera.faults]
seed = 11
drop_fraction = 0.005
corrupt_fraction = 0.005
disconnect_after_s = 30.0
disconnect_for_s = 2.0
disconnect_every_s = 40.0
[tool]
kind = "classify"
manifest = "%(root)s/models/neu_classify.toml"
%(rules)s[records]
dir = "%(work)s/records"
flush_interval_ms = 100
[archive]
dir = "%(work)s/archive"
max_mb = %(cap)d
accepted_sample = 0.0
""" % {"root": root, "work": work, "cap": cap_mb, "rules": rules.replace(
        "decision_deadline_ms = 1000", "decision_deadline_ms = %d" % deadline_ms)}
    if mosquitto:
        text += '[mqtt]\nhost = "127.0.0.1"\nport = %d\nitems = "rejects"\ncounters_interval_s = 5\nqueue = 10000\n' % port
    if broken:
        text = text.replace("[conveyor]", "[conveyor]\nbelt_speed_mm_per_s_typo = 1.0")
    tmp = profile + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, profile)
write_profile(1000)

# --- the station ---
station = subprocess.Popen([bin_, "run", "--json", "--config", profile],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
last_line = [""]
lines_seen = [0]
def drain_stdout():
    for raw in station.stdout:
        lines_seen[0] += 1
        last_line[0] = raw
threading.Thread(target=drain_stdout, daemon=True).start()
err_lines = []
def drain_stderr():
    for raw in station.stderr:
        err_lines.append(raw.decode(errors="replace").rstrip())
        del err_lines[:-2000]
threading.Thread(target=drain_stderr, daemon=True).start()

def fd_kind(target):
    # "socket:[123]" -> "socket", "pipe:[45]" -> "pipe"; files keep their path.
    return target.split(":[", 1)[0]

def descriptors():
    d = "/proc/%d/fd" % station.pid
    kinds = []
    for n in os.listdir(d):
        try:
            kinds.append(fd_kind(os.readlink(os.path.join(d, n))))
        except OSError:
            pass  # closed between the listing and the read: it was not held
    return sorted(kinds)

def sample():
    rss = None
    try:
        for line in open("/proc/%d/status" % station.pid):
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        fds = descriptors()
    except OSError:
        return None
    return rss, fds

samples = []  # (t, rss KiB, open descriptors' kinds)
events = {"broker_restarts": 0, "disk_freed": 0, "reloads_sent": 0, "broken_profiles_sent": 0}
t0 = time.monotonic()
next_at = {"sample": 5.0, "broker": 60.0, "disk": 45.0, "reload": 20.0}
reload_n = 0
deadline_ms = 1000
broker_back_at = None
while True:
    now = time.monotonic() - t0
    if now >= run_s or station.poll() is not None:
        break
    if now >= next_at["sample"]:
        s = sample()
        if s:
            samples.append((now, s[0], s[1]))
        next_at["sample"] += 5.0
    if mosquitto and broker_back_at is None and now >= next_at["broker"]:
        broker.terminate(); broker.wait()
        broker_back_at = now + 2.0
        next_at["broker"] += 60.0
    if broker_back_at is not None and now >= broker_back_at:
        broker_start(); events["broker_restarts"] += 1
        broker_back_at = None
    if now >= next_at["disk"]:
        for d in os.listdir(os.path.join(work, "archive")):
            shutil.rmtree(os.path.join(work, "archive", d), ignore_errors=True)
        events["disk_freed"] += 1
        next_at["disk"] += 45.0
    if now >= next_at["reload"]:
        reload_n += 1
        broken = reload_n % 4 == 0
        if not broken:
            deadline_ms = 1900 - deadline_ms  # 1000 ms and 900 ms in turn
        write_profile(deadline_ms, broken=broken)
        station.send_signal(signal.SIGHUP)
        events["reloads_sent"] += 1
        events["broken_profiles_sent"] += broken
        next_at["reload"] += 20.0
    time.sleep(0.1)

alive_to_the_end = station.poll() is None
if broker_back_at is not None:
    broker_start(); events["broker_restarts"] += 1
station.send_signal(signal.SIGTERM)
try:
    rc = station.wait(timeout=60)
except subprocess.TimeoutExpired:
    station.kill(); rc = station.wait()
time.sleep(0.5)
if broker:
    broker.terminate(); broker.wait()

fails = []
def need(ok, what):
    if not ok:
        fails.append(what)

try:
    summary = json.loads(last_line[0])
except ValueError:
    summary = {}
need(alive_to_the_end, "the station ran to the end (it stopped after %.0f s)" % (time.monotonic() - t0))
need(rc == 0, "a clean exit on SIGTERM (rc %s)" % rc)
panics = sum("panicked" in l for l in err_lines)
need(panics == 0, "0 panics: %d" % panics)
need("items" in summary, "the station printed its summary")

rec = subprocess.run([bin_, "records", "--json", "--last", "0", "--dir", os.path.join(work, "records")],
                     capture_output=True)
j = json.loads(rec.stdout) if rec.returncode == 0 else {}
log_records = j.get("log_records", -1)
next_seq = j.get("next_seq", -3)
counted = (j.get("total") or {}).get("inspected", -2)
# The log keeps `records.max_log_segments` segments: a long run deletes the oldest whole
# segments, whose first sequence numbers name them. What is left runs unbroken to the end.
segments = sorted(int(f[len("decisions-"):-len(".log")]) for f in os.listdir(os.path.join(work, "records"))
                  if f.startswith("decisions-") and f.endswith(".log"))
rotated = segments[0] if segments else 0
need(counted == next_seq, "the counters count every record written: %s counted, %s written" % (counted, next_seq))
need(log_records == next_seq - rotated,
     "the log holds every record after the segments rotated away: %s in the log, %s written, %s rotated"
     % (log_records, next_seq, rotated))
r = summary.get("records") or {}
items = summary.get("items", -1)
accounted = next_seq + r.get("records_dropped", 0) + r.get("records_lost", 0)
need(accounted == items, "every item is written or counted as dropped or lost: %s items, %s written, %s dropped, %s lost"
     % (items, next_seq, r.get("records_dropped"), r.get("records_lost")))

def window(a, b):
    return [s for s in samples if a <= s[0] < b]
base = window(WARMUP_S, WARMUP_S + WINDOW_S)
end = window(max(samples[-1][0] - WINDOW_S, WARMUP_S + WINDOW_S), samples[-1][0] + 1) if samples else []
rss_growth = fd_growth = fd_peak_growth = None
fd_added = fd_peak_added = []
if base and end:
    rss_growth = max(s[1] for s in end) - max(s[1] for s in base)
    # A leaked descriptor stays open, so it raises the fewest held in a minute; one held for
    # a moment (a profile being read, an archive entry being written, a reconnect) shows only
    # in the sample that caught it, and the peaks are reported beside.
    floor_base = min(base, key=lambda s: len(s[2]))[2]
    floor_end = min(end, key=lambda s: len(s[2]))[2]
    fd_growth = len(floor_end) - len(floor_base)
    fd_peak_growth = max(len(s[2]) for s in end) - max(len(s[2]) for s in base)
    def added(now, before):
        left, more = list(before), []
        for k in now:
            if k in left:
                left.remove(k)
            else:
                more.append(k)
        return more
    fd_added = added(floor_end, floor_base)
    fd_peak_added = added(max(end, key=lambda s: len(s[2]))[2], floor_base)
    need(rss_growth <= 1024, "resident memory grew by at most 1 MiB after the warm-up: %+d KiB" % rss_growth)
    need(fd_growth <= 0, "no more file descriptors held after the warm-up: %+d (%s)"
         % (fd_growth, ", ".join(fd_added) or "the same kinds"))
else:
    need(False, "a run long enough to compare the minute after the warm-up with the last one (%.0f min given)" % minutes)

cam = summary.get("camera") or {}
faults = summary.get("fault_kinds") or {}
result = {
    "minutes": minutes,
    "items": items,
    "items_per_s": round(items / max(run_s, 1), 1),
    "rss_kib_after_warmup": max(s[1] for s in base) if base else None,
    "rss_growth_kib": rss_growth,
    "fd_after_warmup": min(len(s[2]) for s in base) if base else None,
    "fd_growth": fd_growth,
    "fd_peak_growth": fd_peak_growth,
    "fd_added": fd_added,
    "fd_peak_added": fd_peak_added,
    "panics": panics,
    "exit_code": rc,
    "log_records": log_records,
    "records_written": next_seq,
    "log_rotated_records": rotated,
    "counters_equal_log": counted == next_seq and log_records == next_seq - rotated,
    "records_dropped": r.get("records_dropped"),
    "camera_disconnects": cam.get("disconnects"),
    "camera_reconnects": cam.get("reconnects"),
    "corrupt_frames": cam.get("corrupt"),
    "broker_restarts": events["broker_restarts"],
    "mqtt_disconnects": r.get("mqtt_disconnects"),
    "mqtt_dropped": r.get("mqtt_dropped"),
    "archive_errors": r.get("archive_errors"),
    "archive_disk_freed": events["disk_freed"],
    "archive_disk": disk,
    "reloads": summary.get("reloads"),
    "reloads_refused": summary.get("reloads_refused"),
    "reloads_sent": events["reloads_sent"],
    "broken_profiles_sent": events["broken_profiles_sent"],
    "allocations_ours_after_warmup": summary.get("allocations_ours_after_warmup"),
    "samples": len(samples),
}
need(result["camera_disconnects"] and result["camera_disconnects"] >= int(run_s // 40) - 1,
     "the camera was pulled out every 40 s: %s disconnects" % result["camera_disconnects"])
need(result["reloads_refused"] == events["broken_profiles_sent"],
     "every broken profile refused: %s refused of %s" % (result["reloads_refused"], events["broken_profiles_sent"]))
need(result["reloads"] == events["reloads_sent"] - events["broken_profiles_sent"],
     "every good profile applied: %s of %s" % (result["reloads"], events["reloads_sent"] - events["broken_profiles_sent"]))
if as_json:
    print(json.dumps(result))
else:
    say("soak:", json.dumps(result, indent=1))
for f in fails:
    say("FAIL " + f)
for l in err_lines[-20:] if fails else []:
    say("  stderr: " + l)
if fails:
    sys.exit(1)
say("soak passed")
PY
