#!/usr/bin/env bash
# The emulated board test: boot a stock Debian arm64 kernel under qemu-system-aarch64 (-M virt,
# software emulation) with an initramfs holding the aarch64 ferroscope (the boards' glibc
# build with its loader and libraries, or a static build), the vivid V4L2 test camera, the
# PL061 GPIO controller and a virtio-gpu framebuffer; run the station with
# boards/qemu-virt.toml against them; then assert from the host that
#   - frames were captured through V4L2 (the station's summary: v4l2 frames, items decided),
#   - a reject pulse appeared on PL061 line 0 for the rejects (qemu's pl061_set_output trace),
#     and the heartbeat toggled on line 1,
#   - the screen was drawn: /dev/fb0, read back in the VM while the station runs and decoded
#     here, shows the reject panel (a QMP screendump of the virtio-gpu scanout is printed too);
# then, in the same boot, run the station in encoder mode twice, on real kernel line events:
#   - boards/qemu-virt-encoder.toml, channel A on PL061 line 3, which qemu wires to its power
#     button: the host presses it ENC_PRESSES times (QMP system_powerdown; qemu raises the line
#     and lowers it 100 ms later) and the station's summary must count exactly 2 edges per
#     press, with no gap in the kernel's sequence numbers;
#   - boards/qemu-virt-standstill.toml, the part-present sensor on line 3 and the encoder on
#     line 2, which nothing drives: each of STILL_PARTS presses must be an encoder standstill
#     fault, and the fail-safe must stop the line (PL061 line 4, in qemu's trace).
# qemu wires no other PL061 input, so a quadrature encoder's direction cannot be driven here
# (tests/encoder.rs covers it on the simulated backend).
#
#   bash tests/emulated_board.sh            # builds the binary if FERROSCOPE_BIN is not given
#
# Needs: qemu-system-aarch64, apt-get, dpkg, cpio, xz, python3; network for the two Debian
# packages (linux-image-*-arm64 and busybox-static from trixie, fetched with an apt
# configuration of its own into target/emulated-board/ and kept there).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${FERROSCOPE_VM_DIR:-$ROOT/target/emulated-board}
RUN_S=${FERROSCOPE_VM_RUN_S:-40}
ENC_PRESSES=8       # power button presses counted by the encoder, 250 ms apart
STILL_PARTS=4       # parts sent while the encoder stands still, 1.5 s apart
mkdir -p "$WORK"

BIN=${FERROSCOPE_BIN:-}
if [ -z "$BIN" ]; then
    cargo zigbuild --release --target aarch64-unknown-linux-gnu.2.31 --bin ferroscope
    BIN=$ROOT/target/aarch64-unknown-linux-gnu/release/ferroscope
fi

# --- kernel and busybox from Debian trixie (arm64), with an apt configuration of our own ---
source tests/board_vm.sh
vm_kernel

# --- initramfs: busybox, the modules in dependency order, the binary, the profile, a model ---
IR=$WORK/initramfs
vm_initramfs_base "$IR" sh mount mkdir sleep cat echo ls insmod poweroff grep sync dmesg dd gzip base64 tail kill
vm_install_binary "$BIN" "$IR"
cp boards/qemu-virt.toml boards/qemu-virt-encoder.toml boards/qemu-virt-standstill.toml "$IR/app/boards/"
cp models/neu_classify.toml models/neu_classify.onnx models/neu_classify.f32.onnx "$IR/app/models/"

# vivid and virtio-gpu with what they depend on.
vm_modules "$IR/modules" vivid virtio-gpu

cat >"$IR/init" <<EOF
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
# An encoder-mode run: start the station, wait until it holds its \$2 input lines (debugfs),
# say so (the host then presses qemu's power button), stop it \$3 s later with SIGTERM.
encoder_run() {
    echo "== \$1 run"
    ./ferroscope run --config boards/qemu-virt-\$1.toml --duration-s 120 --json >/tmp/\$1.jsonl 2>/tmp/\$1.err &
    pid=\$!
    n=0
    while [ "\$(grep -c 'ferroscope.*) in ' /sys/kernel/debug/gpio)" -lt \$2 ]; do
        n=\$((n + 1)); { [ \$n -gt 600 ] || ! kill -0 \$pid 2>/dev/null; } && break; sleep 0.1
    done
    grep 'ferroscope' /sys/kernel/debug/gpio
    echo "== \$1 pulses"
    sleep \$3
    kill -TERM \$pid
    wait \$pid
    echo "== \$1 rc=\$?"
    cat /tmp/\$1.err
    echo "== \$1 summary"
    tail -1 /tmp/\$1.jsonl
}
for m in \$(cat /modules/order); do
    case \$m in
        vivid.ko) insmod /modules/\$m n_devs=1 node_types=0x1 input_types=0x0 ;;
        *) insmod /modules/\$m ;;
    esac || echo "insmod \$m failed"
done
n=0
while [ ! -e /dev/video0 ] || [ ! -e /dev/fb0 ] || [ ! -e /dev/gpiochip0 ]; do
    n=\$((n + 1)); [ \$n -gt 100 ] && break; sleep 0.1
done
ls /dev/video* /dev/fb* /dev/gpiochip* 2>&1
cd /app
echo "== check"
./ferroscope check --config boards/qemu-virt.toml
echo "== check rc=\$?"
echo "== run"
./ferroscope run --config boards/qemu-virt.toml --duration-s $RUN_S --json >/tmp/run.jsonl 2>/tmp/run.err &
pid=\$!
sleep $((RUN_S * 3 / 4))
echo "== screen now"
dd if=/dev/fb0 of=/tmp/fb.raw bs=65536 2>/dev/null
sleep 3
wait \$pid
echo "== run rc=\$?"
cat /tmp/run.err
echo "== summary"
tail -1 /tmp/run.jsonl
echo "== fb \$(cat /sys/class/graphics/fb0/virtual_size) \$(cat /sys/class/graphics/fb0/stride) \$(cat /sys/class/graphics/fb0/bits_per_pixel)"
gzip -1 -c /tmp/fb.raw | base64
echo "== fb end"
encoder_run encoder 1 6
encoder_run standstill 2 12
echo "== end"
sync
poweroff -f
EOF
chmod +x "$IR/init"
(cd "$IR" && find . | cpio -o -H newc --quiet | gzip -1 >"$WORK/initramfs.gz")

# --- boot ---
CONSOLE=$WORK/console.log
TRACE=$WORK/pl061.log
QMP=$WORK/qmp.sock
SHOT=$WORK/screen.ppm
rm -f "$CONSOLE" "$TRACE" "$QMP" "$SHOT"
START=$(date +%s)
timeout 540 qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 \
    -kernel "$VMLINUZ" -initrd "$WORK/initramfs.gz" \
    -append "console=ttyAMA0 rdinit=/init vt.global_cursor_default=0 quiet" \
    -device virtio-gpu-pci -display none \
    -serial "file:$CONSOLE" -monitor none -qmp "unix:$QMP,server=on,wait=off" \
    -trace "pl061_set_output,file=$TRACE" -no-reboot &
QPID=$!

qmp() {   # send one QMP command after the capabilities handshake
    python3 - "$QMP" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
f.readline()
for cmd in ({"execute": "qmp_capabilities"}, json.loads(sys.argv[2])):
    f.write(json.dumps(cmd) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            break
    if "error" in r:
        sys.exit("QMP: %s" % r["error"])
PY
}

press() {   # press qemu's power button (PL061 line 3) $1 times, $2 s apart, the first after $3 s
    python3 - "$QMP" "$1" "$2" "$3" <<'PY'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
f.readline()
def cmd(name):
    f.write(json.dumps({"execute": name}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            return r
cmd("qmp_capabilities")
n, gap, first = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
time.sleep(first)
for i in range(n):
    if i:
        time.sleep(gap)
    r = cmd("system_powerdown")
    if "error" in r:
        sys.exit("QMP: %s" % r["error"])
print("pressed the power button %d times" % n)
PY
}

shot_taken=0
enc_pressed=0
still_pressed=0
while kill -0 $QPID 2>/dev/null; do
    if [ $shot_taken = 0 ] && grep -q "== screen now" "$CONSOLE" 2>/dev/null; then
        qmp "{\"execute\": \"screendump\", \"arguments\": {\"filename\": \"$SHOT\"}}" && shot_taken=1
    fi
    if [ $enc_pressed = 0 ] && grep -q "== encoder pulses" "$CONSOLE" 2>/dev/null; then
        press $ENC_PRESSES 0.25 0 || echo "QMP: pressing the power button failed"
        enc_pressed=1
    fi
    # The first part 1 s after the station took its lines: past standstill_ms (500 ms).
    if [ $still_pressed = 0 ] && grep -q "== standstill pulses" "$CONSOLE" 2>/dev/null; then
        press $STILL_PARTS 1.5 1.0 || echo "QMP: pressing the power button failed"
        still_pressed=1
    fi
    sleep 0.5
done
wait $QPID || true
echo "VM ran $(( $(date +%s) - START )) s"
sed -n '/== check/,$p' "$CONSOLE"

# --- assertions, from the host ---
python3 - "$CONSOLE" "$TRACE" "$SHOT" "$ENC_PRESSES" "$STILL_PARTS" <<'PY'
import json, re, sys
console, trace, shot = sys.argv[1:4]
enc_presses, still_parts = int(sys.argv[4]), int(sys.argv[5])
text = open(console, errors="replace").read()
fails = []
def need(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        fails.append(what)

need("== check rc=0" in text, "ferroscope check: every device of boards/qemu-virt.toml present")
def summary_of(marker):
    m = re.search(r"== %s\n(.*)\n" % marker, text)
    try:
        return json.loads(m.group(1)) if m else None
    except ValueError:
        return None
summary = summary_of("summary")
need(summary is not None, "the station ran and printed its summary")
s = summary or {}
cam = s.get("camera") or {}
disp = s.get("display") or {}
print("summary:", json.dumps({k: s.get(k) for k in ("items", "rejected", "reject_pulses", "faults", "camera", "display")}))
need(cam.get("frames", 0) >= 5, "frames captured through V4L2 (vivid): %s" % cam.get("frames"))
need(s.get("items", 0) >= 5 and s.get("rejected", 0) == s.get("items"), "items decided, every one rejected: %s of %s" % (s.get("rejected"), s.get("items")))
need(disp.get("full_draws", 0) + disp.get("partial_draws", 0) >= 2 and disp.get("errors", 1) == 0, "the station drew its screen on /dev/fb0 without errors")

# pl061_set_output: "pl061_set_output <device> setting output <line> to <value>"
edges = {}
last = {}
for line in open(trace, errors="replace"):
    t = re.search(r"pl061_set_output .*?output (\d+) to (\d+)", line)
    if t:
        n, v = int(t.group(1)), int(t.group(2))
        if last.get(n) != v:
            edges.setdefault(n, []).append(v)
            last[n] = v
rises = {n: sum(1 for v in vs if v == 1) for n, vs in edges.items()}
print("PL061 rising edges per line:", rises)
need(rises.get(0, 0) >= 3, "reject pulses on PL061 line 0: %d" % rises.get(0, 0))
need(rises.get(1, 0) >= 3, "heartbeat toggles on PL061 line 1: %d" % rises.get(1, 0))
pulses = s.get("reject_pulses", -1)
need(abs(rises.get(0, 0) - pulses) <= 1, "PL061 line 0 pulses match the station's reject pulses (%d)" % pulses)

# Encoder mode, counting: every press of qemu's power button is a rising and a falling edge
# on PL061 line 3, both counted (`both_edges`), numbered by the kernel without a gap.
enc = summary_of("encoder summary")
need(enc is not None, "the station ran in encoder mode (boards/qemu-virt-encoder.toml) and printed its summary")
enc = enc or {}
e = enc.get("encoder") or {}
ek = enc.get("fault_kinds") or {}
print("encoder summary:", json.dumps({"items": enc.get("items"), "encoder": e, "fault_kinds": {k: v for k, v in ek.items() if v}}))
need(e.get("events") == 2 * enc_presses and e.get("count") == 2 * enc_presses,
     "the encoder counted both edges of each of the %d presses: %s events, count %s" % (enc_presses, e.get("events"), e.get("count")))
need(e.get("missing_events") == 0 and ek.get("encoder_lost_events") == 0 and ek.get("input") == 0,
     "no gap in the kernel's sequence numbers, no encoder fault, no read error: %s missing, %s lost-event faults" % (e.get("missing_events"), ek.get("encoder_lost_events")))
need(enc.get("items", 0) >= 3, "items decided in encoder mode: %s" % enc.get("items"))

# Encoder mode, standing still: each part-present edge (a press on line 3) finds the encoder
# (line 2) without a count for longer than standstill_ms: a fault, and the fail-safe, here the
# line-stop output on PL061 line 4 (driven low when the station took it, then high).
still = summary_of("standstill summary")
need(still is not None, "the station ran with the encoder standing still (boards/qemu-virt-standstill.toml) and printed its summary")
still = still or {}
sk = still.get("fault_kinds") or {}
print("standstill summary:", json.dumps({k: still.get(k) for k in ("items", "failsafe", "line_stops", "overdue_items", "encoder")}), "faults:", json.dumps({k: v for k, v in sk.items() if v}))
need(sk.get("encoder_standstill") == still_parts and still.get("items") == still_parts,
     "each of the %d parts found the encoder standing still: %s standstill faults, %s items" % (still_parts, sk.get("encoder_standstill"), still.get("items")))
need((still.get("encoder") or {}).get("events") == 0, "the encoder (line 2) stood still: %s events" % (still.get("encoder") or {}).get("events"))
line4 = edges.get(4, [])
need(still.get("line_stops", 0) >= 1 and 0 in line4 and 1 in line4[line4.index(0):],
     "the fail-safe stopped the line: %s line stops, PL061 line 4 went %s" % (still.get("line_stops"), line4))

# The screen: the framebuffer's content read back in the VM while the station ran (busybox
# dd, gzip, base64 over the serial console), decoded here: the reject panel's red must cover
# a large area. XRGB8888, little-endian: bytes B, G, R, X.
import base64, gzip
fb = re.search(r"== fb (\d+),(\d+) (\d+) (\d+)\n(.*?)== fb end", text, re.S)
if fb:
    w, h, stride, bpp = map(int, fb.groups()[:4])
    raw = gzip.decompress(base64.b64decode("".join(fb.group(5).split())))
    red = total = 0
    colours = set()
    for y in range(0, min(h, len(raw) // stride), 4):
        row = raw[y * stride:y * stride + w * 4]
        for x in range(0, w * 4, 16):
            b, g, r = row[x], row[x + 1], row[x + 2]
            total += 1
            colours.add((r >> 3, g >> 2, b >> 3))
            red += r > 170 and g < 70 and b < 70
    print("framebuffer %dx%d (stride %d, %d bpp): %.1f %% reject-red, %d colours" % (w, h, stride, bpp, 100.0 * red / max(total, 1), len(colours)))
    need(red > total // 50 and len(colours) >= 4, "the framebuffer holds the station's screen with the reject panel")
else:
    need(False, "framebuffer read back from the VM")
# The virtio-gpu scanout as qemu shows it (QMP screendump), for the record.
try:
    data = open(shot, "rb").read()
    parts = data.split(b"\n", 3)
    w, h = map(int, parts[1].split())
    print("screendump of the virtio-gpu scanout: %dx%d, %d colours sampled" % (w, h, len({parts[3][i:i + 3] for i in range(0, 3 * w * h, 3 * 97)})))
except (OSError, ValueError, IndexError) as e:
    print("screendump: %s" % e)
if fails:
    sys.exit("emulated board test FAILED: " + "; ".join(fails))
print("emulated board test passed")
PY
