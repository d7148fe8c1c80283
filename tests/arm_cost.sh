#!/usr/bin/env bash
# The ARM cost meter: instructions retired per inference of every shipped model, int8 and f32,
# on the boards' cores, counted under qemu-user by a TCG plugin (tests/arm_cost/insn_count.c):
#   cortex-a72  (Raspberry Pi 4)           qemu-aarch64, the aarch64-unknown-linux-gnu binary
#   cortex-a76  (Raspberry Pi 5, RK3588)   qemu-aarch64, same binary; has the dot product (SDOT)
#   cortex-a8   (BeagleBone Black, NEON)   qemu-arm, the armv7-unknown-linux-gnueabihf binary
# Time under emulation means nothing; the instructions a core retires are deterministic and
# comparable between models, precisions and engine changes. Per inference: `ferroscope bench
# --model-only` with 1, 1 + k and 1 + 2k runs, differenced, so load and optimisation cancel (and
# the two steps must agree; k from the model's size, see run.py). Beside them: multiply-accumulates from the ONNX graph (tests/arm_cost/macs.py),
# instructions per MAC, int8 over f32, and the matrix kernels tract picked on each core. The
# checks are tests/arm_cost/run.py's (counts positive, deterministic, plausible; dot-product
# kernels exactly where the core has them; the JSON well-formed).
#
#   bash tests/arm_cost.sh                 # every shipped model, a table
#   bash tests/arm_cost.sh --json          # one object {"results": [{"model", "precision", "cpu", ...}]}
#   bash tests/arm_cost.sh --quick         # neu_classify only (about a minute)
#   bash tests/arm_cost.sh --quick --cpu cortex-a72 --cpu cortex-a76   # CI: the aarch64 cores
#   bash tests/arm_cost.sh --model kolektor_segment --cpu cortex-a76
#   bash tests/arm_cost.sh --profile --model kolektor_segment [--precision f32] [--cpu cortex-a72]
#                                          # where one inference spends them, function by function
#                                          # (tests/arm_cost/profile.py; an unstripped static build)
#
# FERROSCOPE_BIN_AARCH64 / FERROSCOPE_BIN_ARMV7 name existing binaries (e.g. tests/cross.sh's);
# otherwise they are built here as tests/cross.sh builds them (cargo zigbuild, glibc 2.31 floor;
# FERROSCOPE_CROSS_FAST=1 as there). ARM_COST_JOBS: parallel qemu runs (default: the CPU count).
# Needs: qemu-user (with plugin support: Debian's), a C compiler (installed when missing),
# libc6-arm64-cross and libc6-armhf-cross (qemu's -L), python3 with the onnx package (installed
# with pip when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
GLIBC_FLOOR=2.31
if [ "${FERROSCOPE_CROSS_FAST:-0}" = 1 ]; then
    export CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
WORK=$TARGET_DIR/arm-cost
mkdir -p "$WORK"

# The plugin: built against no qemu header (it declares the few API functions it uses).
if ! command -v cc >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq gcc libc6-dev >/dev/null
fi
QEMU_MAJOR=$(qemu-aarch64 --version | sed -n 's/^qemu-aarch64 version \([0-9]*\)\..*/\1/p')
[ -n "$QEMU_MAJOR" ] || { echo "FAIL: cannot read qemu-aarch64's version"; exit 1; }
CFLAGS=(-shared -fPIC -O2 -Wall -Wextra -Werror)
# qemu 9 replaced the plugin API's global inline counters with per-vCPU scoreboards
[ "$QEMU_MAJOR" -ge 9 ] && CFLAGS+=(-DINSN_COUNT_SCOREBOARD)
cc "${CFLAGS[@]}" -o "$WORK/insn_count.so" tests/arm_cost/insn_count.c

python3 -c 'import onnx' 2>/dev/null || pip install -q onnx

if [ "${1:-}" = --profile ]; then
    shift
    # static (musl), so the C library's functions have names too; symbols kept
    CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR=$WORK/profile-build \
        cargo zigbuild --release --target aarch64-unknown-linux-musl --bin ferroscope >&2
    exec python3 tests/arm_cost/profile.py --plugin "$WORK/insn_count.so" \
        --bin "$WORK/profile-build/aarch64-unknown-linux-musl/release/ferroscope" "$@"
fi

build() { # target → path of the release binary
    local t=$1
    cargo zigbuild --release --target "$t.$GLIBC_FLOOR" --bin ferroscope >&2
    echo "$TARGET_DIR/$t/release/ferroscope"
}
# Each binary only when one of its cores is measured: every core unless `--cpu` names some.
WANT_A8=1 WANT_AARCH64=1
if [[ " $* " == *" --cpu "* ]]; then
    [[ " $* " == *" cortex-a8 "* ]] || WANT_A8=0
    [[ " $* " == *" cortex-a72 "* || " $* " == *" cortex-a76 "* ]] || WANT_AARCH64=0
fi
BIN_AARCH64=${FERROSCOPE_BIN_AARCH64:-}
BIN_ARMV7=${FERROSCOPE_BIN_ARMV7:-}
AARCH64_ARGS=()
if [ "$WANT_AARCH64" = 1 ]; then
    [ -n "$BIN_AARCH64" ] || BIN_AARCH64=$(build aarch64-unknown-linux-gnu)
    file -L "$BIN_AARCH64" | grep -q "ARM aarch64" || { echo "FAIL: $BIN_AARCH64 is not an aarch64 binary"; exit 1; }
    AARCH64_ARGS=(--bin-aarch64 "$BIN_AARCH64")
fi
ARMV7_ARGS=()
if [ "$WANT_A8" = 1 ]; then
    [ -n "$BIN_ARMV7" ] || BIN_ARMV7=$(build armv7-unknown-linux-gnueabihf)
    file -L "$BIN_ARMV7" | grep -q "ARM, EABI5" || { echo "FAIL: $BIN_ARMV7 is not an armv7 binary"; exit 1; }
    ARMV7_ARGS=(--bin-armv7 "$BIN_ARMV7")
fi

exec python3 tests/arm_cost/run.py "${AARCH64_ARGS[@]+"${AARCH64_ARGS[@]}"}" "${ARMV7_ARGS[@]+"${ARMV7_ARGS[@]}"}" \
    --plugin "$WORK/insn_count.so" --jobs "${ARM_COST_JOBS:-$(nproc)}" "$@"
