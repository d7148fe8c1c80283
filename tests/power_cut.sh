#!/usr/bin/env bash
# Power cuts on the emulated board: the qemu-system-aarch64 board of tests/emulated_board.sh
# (stock Debian arm64 kernel, busybox initramfs, the aarch64 ferroscope) keeps its
# records on an ext4 file system on a virtio disk. Each cut:
#   1. boots the board; it mounts the disk (ext4 replays its journal) and prints
#      `ferroscope records --json` of what survived the previous cut;
#   2. starts the station over the NEU samples at 400 items/s (as fast as the emulated CPU
#      decides, when that is slower), records flushed every 100 ms; each item's line reaches
#      the host over the serial console and is timed there;
#   3. kills qemu (SIGKILL: no sync, no shutdown) at a random moment 0–5 s after the station
#      started, in its start-up and recovery or among items (the last cut from the first
#      item, where every earlier one fell in start-up): what the guest's page cache held is
#      gone, as on a power cut.
# The disk is attached with cache=writethrough: every write the guest's kernel completed is in
# the disk image, nothing else is; a disk with a volatile write cache would lose more, a
# flush away (the station syncs the log before the counters that cover it).
# After the last cut one more boot prints the records and starts the station once, which
# cuts any torn tail and says what it recovered.
#
# Checked after each cut, from what the next boot prints:
#   corrupted           records the reader accepts out of sequence, counters that disagree
#                       with the log (total, per day, per shift), counters ahead of the log;
#   lost_beyond_flush   items whose line reached the host more than flush interval + slack
#                       before the cut and are not in the log;
#   worst_loss_items    the most items of one cut whose line arrived and that are not in the log.
#
#   bash tests/power_cut.sh [--cuts N] [--json]     # default 20 cuts
#
# FERROSCOPE_BIN: the aarch64 binary (built with cargo zigbuild when not given).
# Needs what tests/emulated_board.sh needs, and mkfs.ext4 (e2fsprogs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${FERROSCOPE_VM_DIR:-$ROOT/target/emulated-board}
CUTS=20
JSON=0
while [ $# -gt 0 ]; do
    case $1 in
        --cuts) CUTS=$2; shift 2 ;;
        --json) JSON=1; shift ;;
        *) echo "usage: bash tests/power_cut.sh [--cuts N] [--json]" >&2; exit 2 ;;
    esac
done
FLUSH_MS=100
# Scheduling slack of the emulated board on top of the interval: the guest's clock runs on an
# emulated CPU that the host preempts, and a line takes the serial console to reach the host.
SLACK_MS=${FERROSCOPE_CUT_SLACK_MS:-250}
mkdir -p "$WORK"

BIN=${FERROSCOPE_BIN:-}
if [ -z "$BIN" ]; then
    cargo zigbuild --release --target aarch64-unknown-linux-gnu.2.31 --bin ferroscope >&2
    BIN=$ROOT/target/aarch64-unknown-linux-gnu/release/ferroscope
fi

source tests/board_vm.sh
vm_kernel >&2
IR=$WORK/initramfs-power
vm_initramfs_base "$IR" sh mount umount mkdir sleep cat echo ls insmod poweroff grep sync
vm_modules "$IR/modules" ?crc32c_generic virtio_blk ext4 >&2
vm_install_binary "$BIN" "$IR"
cp models/neu_classify.toml models/neu_classify.onnx models/neu_classify.f32.onnx "$IR/app/models/"
mkdir -p "$IR/app/samples"
cp -r tests/data/neu_samples/. "$IR/app/samples/"
cat >"$IR/app/power-cut.toml" <<EOF
[station]
name = "power-cut"
[camera]
source = "replay"
path = "samples"
rate_fps = 400.0
loops = 0
[tool]
kind = "classify"
manifest = "models/neu_classify.toml"
EOF
cat tests/data/neu_station_rules.toml >>"$IR/app/power-cut.toml"
cat >>"$IR/app/power-cut.toml" <<EOF
[records]
dir = "/data/records"
flush_interval_ms = $FLUSH_MS
shift_starts = ["06:00", "14:00", "22:00"]
EOF
cat >"$IR/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in $(cat /modules/order); do insmod /modules/$m || echo "insmod $m failed"; done
n=0
while [ ! -e /dev/vda ]; do n=$((n + 1)); [ $n -gt 100 ] && break; sleep 0.1; done
mkdir -p /data
mount -t ext4 /dev/vda /data
echo "== mounted rc=$?"
cd /app
if [ -d /data/records ]; then
    echo "== records"
    ./ferroscope records --json --last 0 --dir /data/records
    echo "== records rc=$?"
fi
if grep -q power_cut_final /proc/cmdline; then
    ./ferroscope run --config power-cut.toml --duration-s 2 >/dev/null 2>/tmp/err
    echo "== final rc=$?"
    cat /tmp/err
    echo "== final end"
    umount /data
    poweroff -f
fi
echo "== run"
exec ./ferroscope run --config power-cut.toml
EOF
chmod +x "$IR/init"
(cd "$IR" && find . | cpio -o -H newc --quiet | gzip -1 >"$WORK/initramfs-power.gz")

DISK=$WORK/power-cut.ext4
rm -f "$DISK"
mkfs.ext4 -q -F "$DISK" 64M >&2

python3 - "$VMLINUZ" "$WORK/initramfs-power.gz" "$DISK" "$CUTS" "$FLUSH_MS" "$SLACK_MS" "$JSON" "$WORK/power-cut-console.log" <<'PY'
import json, random, subprocess, sys, threading, time
vmlinuz, initrd, disk, cuts, flush_ms, slack_ms, as_json, log_path = sys.argv[1:]
cuts, flush_ms, slack_ms, as_json = int(cuts), int(flush_ms), int(slack_ms), as_json == "1"
log = open(log_path, "w")
rng = random.Random(0x5EED)

def say(*a):
    print(*a, file=sys.stderr if as_json else sys.stdout, flush=True)

def boot(final=False):
    """Start the board; a thread reads the console and times each line."""
    append = "console=ttyAMA0 rdinit=/init quiet" + (" power_cut_final" if final else "")
    p = subprocess.Popen(
        ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
         "-kernel", vmlinuz, "-initrd", initrd, "-append", append,
         "-drive", "if=none,id=data,format=raw,cache=writethrough,file=" + disk,
         "-device", "virtio-blk-pci,drive=data",
         "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []  # (arrival time, text)
    def read():
        for raw in p.stdout:
            text = raw.decode(errors="replace").rstrip("\r\n")
            lines.append((time.monotonic(), text))
            log.write(text + "\n")
    t = threading.Thread(target=read, daemon=True)
    t.start()
    return p, t, lines

def wait_for(lines, p, pred, within):
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        for i, (_, text) in enumerate(lines):
            if pred(text):
                return i
        if p.poll() is not None:
            return None
        time.sleep(0.05)
    return None

def records_of(lines):
    """The `ferroscope records --json` a boot printed (None when there were none yet)."""
    texts = [t for _, t in lines]
    if "== records" not in texts:
        return None
    a = texts.index("== records")
    b = next(i for i in range(a, len(texts)) if texts[i].startswith("== records rc="))
    if texts[b] != "== records rc=0":
        raise SystemExit("FAIL: `ferroscope records` failed after a cut: " + "\n".join(texts[a:b + 1]))
    return json.loads("\n".join(texts[a + 1:b]))

fails = []
corrupted = lost_beyond = worst_loss = 0
before = 0          # records in the log after the previous cut
pending = None      # (decided, must_keep) of the previous cut
decided_total = 0
startup_cuts = 0
rates = []
t_start = time.monotonic()

def check(j, k):
    """Compare what the boot after cut k found with what cut k saw decided."""
    global corrupted, lost_beyond, worst_loss, before
    log_records = j["log_records"]
    counted = j["total"]["inspected"]
    bad = []
    if j["next_seq"] != log_records:
        bad.append("next_seq %s, %s records" % (j["next_seq"], log_records))
    if counted != log_records:
        bad.append("counters %s, log %s" % (counted, log_records))
    if j["counters_file_seq"] > log_records:
        bad.append("counters file at %s ahead of the log's %s" % (j["counters_file_seq"], log_records))
    per_day = sum(d["counts"]["inspected"] for d in j["days"])
    per_shift = sum(d["counts"]["inspected"] for d in j["shifts"])
    if per_day != counted or per_shift != counted:
        bad.append("per day %s, per shift %s, total %s" % (per_day, per_shift, counted))
    if bad:
        corrupted += 1
        fails.append("cut %d: %s" % (k, "; ".join(bad)))
    if pending is not None:
        decided, must_keep = pending
        kept = log_records - before
        if kept < must_keep:
            lost_beyond += must_keep - kept
            fails.append("cut %d: %d items decided more than %d ms before the cut, %d in the log"
                         % (k, must_keep, flush_ms + slack_ms, kept))
        worst_loss = max(worst_loss, max(decided - kept, 0))
        say("cut %d: %d decided, %d older than %d ms, %d in the log%s" % (
            k, decided, must_keep, flush_ms + slack_ms, kept,
            ", torn tail %d bytes" % j["log_damaged_bytes"] if j.get("log_damaged_bytes") else ""))
    before = log_records

for k in range(cuts):
    p, t, lines = boot()
    run_at = wait_for(lines, p, lambda s: s == "== run", 300)
    if run_at is None:
        p.kill(); p.wait()
        raise SystemExit("FAIL: boot %d never started the station:\n%s" % (k, "\n".join(s for _, s in lines[-30:])))
    j = records_of(lines[:run_at])
    if j is not None:
        check(j, k - 1)
    elif decided_total > 0:
        corrupted += 1
        fails.append("cut %d: the records folder is gone, %d items were decided" % (k - 1, decided_total))
    # The power goes 0–5 s after the station starts: some cuts land in its start-up and
    # recovery (the model loads for about a second on the emulated CPU), most among items.
    # Where no earlier cut left a record in the log (every one in start-up, or just after the
    # first item, before its flush: a slow or busy host), the last one counts its 0–5 s from
    # the first item plus a flush interval and the slack, so that there is a log whose
    # survival and recovery are checked.
    if k == cuts - 1 and before == 0:
        wait_for(lines, p, lambda s: s.startswith("#"), 120)
        time.sleep((flush_ms + slack_ms) / 1000.0)
    time.sleep(rng.uniform(0.0, 5.0))
    p.kill()
    cut_at = time.monotonic()
    p.wait()
    t.join(timeout=5)
    items = [at for at, s in lines[run_at:] if s.startswith("#") and at <= cut_at]
    decided = len(items)
    must_keep = sum(1 for at in items if cut_at - at > (flush_ms + slack_ms) / 1000.0)
    if decided > 1:
        rates.append((decided - 1) / max(items[-1] - items[0], 1e-3))
    decided_total += decided
    startup_cuts += decided == 0
    pending = (decided, must_keep)

# The last boot: what survived the last cut, then a start that recovers.
p, t, lines = boot(final=True)
p.wait(timeout=600)
t.join(timeout=5)
texts = [s for _, s in lines]
j = records_of(lines)
if j is None:
    fails.append("the records folder is gone after the last cut")
else:
    check(j, cuts - 1)
final_ok = "== final rc=0" in texts
recovered = any("recovered" in s for s in texts)
if not final_ok:
    fails.append("the station did not start after the last cut")
if not recovered:
    fails.append("the start after the last cut did not say what it recovered")
rates.sort()
result = {
    "cuts": cuts,
    "corrupted": corrupted,
    "lost_beyond_flush": lost_beyond,
    "worst_loss_items": worst_loss,
    "cuts_before_the_first_item": startup_cuts,
    "items_decided": decided_total,
    "items_in_log": before,
    "flush_interval_ms": flush_ms,
    "slack_ms": slack_ms,
    "median_items_per_s": round(rates[len(rates) // 2], 1) if rates else 0,
    "seconds": round(time.monotonic() - t_start, 1),
}
if as_json:
    print(json.dumps(result))
else:
    say("power cuts:", json.dumps(result))
for f in fails:
    say("FAIL " + f)
if fails:
    sys.exit(1)
say("power cut test passed")
PY
