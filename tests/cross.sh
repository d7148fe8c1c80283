#!/usr/bin/env bash
# Cross builds of the three ARM targets, and their tests under qemu-user:
#   aarch64-unknown-linux-gnu      (Raspberry Pi 4/5/Zero 2 W, Jetson Orin Nano, RK3588), glibc >= 2.31
#   armv7-unknown-linux-gnueabihf  (BeagleBone Black), glibc >= 2.31
#   aarch64-unknown-linux-musl     (static; the emulated board test boots it)
# For each: `cargo zigbuild --release` of the binary and the test binaries, the binary's glibc
# floor read from its symbol versions (or its being static), then under qemu-user:
#   - tests/arch_scores.rs: the shipped classify, segment and grains models give the same
#     scores on the same images as on x86_64 (pixels exact, int8 within 1e-6, f32 within 1e-4);
#   - aarch64 and armv7: the library's tests of the model operators (`model::`): every
#     integer-convolution kernel the architecture has (SDOT under a Cortex-A76, SMLAL under a
#     Cortex-A72, NEON's VMLAL under a Cortex-A8) against the convolution's definition, the
#     requantisation, the pads and pools against tract's;
#   - the reject-timing simulation through the binary itself: `ferroscope simulate` in speed
#     and encoder mode must equal the x86_64 output field for field (timeline digest included),
#     with no missed or false rejects;
#   - `ferroscope infer` on the NEU samples.
# FERROSCOPE_CROSS_FAST=1 (CI) builds with .ci/fast-build.toml, to fit CI's time: no LTO, 16
# codegen units, the crates off the inspection path at opt-level 1 (ferroscope, tract and the
# decoders keep the release profile's opt-level 3).
# FERROSCOPE_CROSS_STEP=build stops after each build and its glibc check; =test runs the tests
# of what the last build step built, without cargo (CI lints armv7 in the background while the
# aarch64 binary is tested, and no cargo may wait on that run's build lock).
#
#   bash tests/cross.sh                       # all three targets
#   bash tests/cross.sh aarch64-unknown-linux-gnu
# Needs: rustup targets, cargo-zigbuild and ziglang (pip), qemu-user, libc6-arm64-cross and
# libc6-armhf-cross (the target's glibc for qemu's -L). The V4L2 bindings come pre-generated
# for each target (vendor/v4l2-sys): no kernel headers or libclang.
set -euo pipefail
cd "$(dirname "$0")/.."
GLIBC_FLOOR=2.31
# The emulated CPUs are the boards' cores (qemu's default "max" CPU offers SVE, whose emulation
# is several times slower). Under qemu-arm, /proc/cpuinfo is the host's, so the BeagleBone
# profile's NEON hint is given the way the profile gives it, to run tract's NEON kernels.
export TRACT_CPU_ARM32_NEON=true
FAST=()
if [ "${FERROSCOPE_CROSS_FAST:-0}" = 1 ]; then
    FAST=(--config .ci/fast-build.toml)
fi
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl)
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

for T in "${TARGETS[@]}"; do
    QEMU_DOT=()
    LIB_TESTS=0
    case $T in
        aarch64-unknown-linux-gnu) ZT=$T.$GLIBC_FLOOR; QEMU=(qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu); TESTS=(arch_scores)
            # the tests again on a core with the dot-product extension: the int8 models' SDOT kernel
            QEMU_DOT=(qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu); LIB_TESTS=1 ;;
        armv7-unknown-linux-gnueabihf) ZT=$T.$GLIBC_FLOOR; QEMU=(qemu-arm -cpu cortex-a8 -L /usr/arm-linux-gnueabihf); TESTS=(arch_scores)
            # the NEON kernel (VMLAL) and requantisation against the definition
            LIB_TESTS=1 ;;
        # the same architecture as the gnu build: its binary is what the emulated board boots
        aarch64-unknown-linux-musl) ZT=$T; QEMU=(qemu-aarch64 -cpu cortex-a72); TESTS=() ;;
        *) echo "unknown target $T"; exit 2 ;;
    esac
    STEP=${FERROSCOPE_CROSS_STEP:-all}
    if [ "$STEP" != test ]; then
        echo "== $T: build (cargo zigbuild --release --target $ZT)"
        START=$(date +%s)
        ARGS=("${FAST[@]+"${FAST[@]}"}" --release --target "$ZT" --bin ferroscope)
        for t in "${TESTS[@]+"${TESTS[@]}"}"; do ARGS+=(--test "$t"); done
        cargo zigbuild "${ARGS[@]}" --message-format=json-render-diagnostics >"$TARGET_DIR/cross-$T.json"
        if [ "$LIB_TESTS" = 1 ]; then
            # and the library's own tests of the model operators (the integer kernels of this
            # architecture against the definition, the requantisation, the pads and pools)
            cargo-zigbuild test "${FAST[@]+"${FAST[@]}"}" --release --target "$ZT" --lib --no-run \
                --message-format=json-render-diagnostics >>"$TARGET_DIR/cross-$T.json"
        fi
        echo "built in $(( $(date +%s) - START )) s"
    fi
    BIN=$TARGET_DIR/$T/release/ferroscope
    file "$BIN"

    echo "== $T: glibc floor"
    if [[ $T == *-gnu* ]]; then
        MAX=$(readelf -W --dyn-syms "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -u | tail -1)
        echo "highest GLIBC symbol version: $MAX (floor $GLIBC_FLOOR)"
        if [ "$(printf '%s\n%s\n' "$MAX" "$GLIBC_FLOOR" | sort -t. -k1,1n -k2,2n | tail -1)" != "$GLIBC_FLOOR" ]; then
            echo "FAIL: $BIN needs glibc $MAX, above the floor $GLIBC_FLOOR"; exit 1
        fi
    else
        if readelf -d "$BIN" | grep -q NEEDED; then
            echo "FAIL: $BIN is not static:"; readelf -d "$BIN" | grep NEEDED; exit 1
        fi
        echo "static: no shared libraries needed"
    fi
    if [ "$STEP" = build ]; then
        echo "== $T built"
        continue
    fi

    echo "== $T: tests under ${QEMU[0]}"
    mapfile -t EXES < <(python3 - "$TARGET_DIR/cross-$T.json" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        # the library's tests run the model operators' only ("model::")
        print(("model:: " if "lib" in m["target"]["kind"] else "- ") + m["executable"])
PY
)
    WANT=$(( ${#TESTS[@]} + LIB_TESTS ))
    [ ${#EXES[@]} -eq $WANT ] || { echo "FAIL: expected $WANT test binaries, got ${#EXES[@]}"; exit 1; }
    for line in "${EXES[@]+"${EXES[@]}"}"; do
        FILTER=${line%% *}; exe=${line#* }
        [ "$FILTER" = - ] && FILTER=
        echo "-- $(basename "$exe") $FILTER"
        LOG=$TARGET_DIR/cross-$T-$(basename "$exe").log
        TSTART=$(date +%s)
        if ! "${QEMU[@]}" "$exe" $FILTER --test-threads 2 --nocapture >"$LOG" 2>&1; then
            tail -40 "$LOG"; echo "FAIL: $(basename "$exe") under ${QEMU[0]}"; exit 1
        fi
        grep -E "^test |largest difference|^test result|^integer kernels tested" "$LOG" || true
        echo "($(( $(date +%s) - TSTART )) s under emulation)"
        if [ ${#QEMU_DOT[@]} -gt 0 ]; then
            echo "-- $(basename "$exe") under ${QEMU_DOT[*]:0:3} (SDOT kernel)"
            if ! "${QEMU_DOT[@]}" "$exe" $FILTER --test-threads 2 --nocapture >"$LOG.dot" 2>&1; then
                tail -40 "$LOG.dot"; echo "FAIL: $(basename "$exe") under ${QEMU_DOT[*]:0:3}"; exit 1
            fi
            grep -E "^test result|^integer kernels tested" "$LOG.dot" || true
        fi
    done

    echo "== $T: the binary under ${QEMU[0]}"
    "${QEMU[@]}" "$BIN" --version
    if [ ! -x "$TARGET_DIR/release/ferroscope" ]; then
        [ "$STEP" != test ] || { echo "FAIL: no $TARGET_DIR/release/ferroscope to compare with"; exit 1; }
        cargo "${FAST[@]+"${FAST[@]}"}" build --release -q --bin ferroscope
    fi
    for MODE in "" "--encoder"; do
        "${QEMU[@]}" "$BIN" simulate --seed 7 --items 20000 $MODE --json >"$TARGET_DIR/cross-$T-sim.json"
        "$TARGET_DIR/release/ferroscope" simulate --seed 7 --items 20000 $MODE --json >"$TARGET_DIR/cross-host-sim.json"
        python3 - "$TARGET_DIR/cross-$T-sim.json" "$TARGET_DIR/cross-host-sim.json" <<'PY' || { echo "FAIL: ferroscope simulate $MODE differs from x86_64"; exit 1; }
import json, sys
arm, host = (json.load(open(p)) for p in sys.argv[1:])
for r in (arm, host):
    r.pop("seconds")          # wall time of the run, the only field that may differ
assert arm == host, {k: (arm[k], host.get(k)) for k in arm if arm[k] != host.get(k)}
assert arm["ok"] and arm["missed_rejects"] == 0 and arm["false_rejects"] == 0, arm
print("simulate --seed 7 --items 20000 (%s mode): %d rejects, timeline %s..., every field identical to x86_64"
      % (arm["mode"], arm["rejected_ok"], arm["timeline_sha256"][:16]))
PY
    done
    "${QEMU[@]}" "$BIN" infer --model models/neu_classify.toml --json tests/data/neu_samples/scratches/*.png >"$TARGET_DIR/cross-$T-infer.json"
    grep -c '"class":"scratches"' "$TARGET_DIR/cross-$T-infer.json" | sed 's/^/infer: scratches found in /; s/$/ images/'
    echo "== $T OK"
done
echo "cross OK: ${TARGETS[*]}"
