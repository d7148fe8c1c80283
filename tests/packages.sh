#!/usr/bin/env bash
# Debian packages (cargo-deb, `[package.metadata.deb]` in Cargo.toml) for arm64, armhf and
# amd64, what is in them, lintian on each, and the arm64 package run under qemu-user:
#   - contents: the binary of the package's architecture, /etc/ferroscope/station.toml as a
#     conffile, every shipped model and manifest, the board profiles, the sample images, the
#     systemd units, the sysusers file and the udev rules;
#   - the packaged units are boards/systemd/ferroscope@.service with the package's paths, and
#     the packaged station.toml is boards/host-sim.toml with the package's paths (no drift);
#   - lintian: no error and no warning beyond the package's overrides (each with its reason);
#   - arm64, unpacked (dpkg-deb -x) into a temporary root and run by qemu-aarch64: `check` of
#     the packaged station.toml must pass (its /usr/share/ferroscope paths pointed into the
#     root), `run` of it and of boards/host-sim.toml (from the repository root) must inspect
#     items, and each packaged board profile's model must load through the profile's relative
#     path (its devices are absent here; only the model is asked).
#
#   bash tests/packages.sh            # arm64, armhf and amd64: packages in target/packages/debian/
#   bash tests/packages.sh arm64      # one architecture (the run under qemu needs arm64)
#
# Binaries: FERROSCOPE_BIN_AARCH64, FERROSCOPE_BIN_ARMV7 and FERROSCOPE_BIN_X86_64 name
# prebuilt ones; otherwise target/<target>/release/ferroscope (what tests/cross.sh leaves) and
# target/release/ferroscope are taken when present, and built when not (cargo zigbuild with the
# glibc 2.31 floor for the ARM targets, as tests/cross.sh; cargo build for amd64). cargo-deb
# packages them without building (--no-build) from a staging target folder; the ARM ones with
# the glibc-2-31 variant (Depends: libc6 >= 2.31), amd64 with dpkg-shlibdeps' dependencies.
# Needs: cargo-deb (installed at the pinned version when missing), lintian, dpkg-deb, qemu-user,
# libc6-arm64-cross, and for builds the tools of tests/cross.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DEB_VERSION=3.8.0
GLIBC_FLOOR=2.31
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
STAGE=$TARGET_DIR/packages
OUT=$STAGE/debian
VERSION=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print([p for p in json.load(sys.stdin)["packages"] if p["name"]=="ferroscope"][0]["version"])')
fail() { echo "FAIL: $*"; exit 1; }

if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    echo "== cargo-deb $CARGO_DEB_VERSION (cargo install)"
    # a packaging tool: built without LTO and at opt-level 1, in half the time
    cargo install -q cargo-deb --version "$CARGO_DEB_VERSION" --locked --config profile.release.lto=false \
        --config profile.release.codegen-units=16 --config profile.release.opt-level=1
fi
command -v lintian >/dev/null || fail "lintian is not installed (apt-get install lintian)"

echo "== the packaged files against their sources"
# The template unit: the manual install's unit with the package's paths.
diff <(grep -v '^#' boards/systemd/ferroscope@.service \
        | sed 's#/usr/local/bin/ferroscope#/usr/bin/ferroscope#; s#/opt/ferroscope/boards/#/usr/share/ferroscope/boards/#; s#^WorkingDirectory=/opt/ferroscope$#WorkingDirectory=/var/lib/ferroscope#') \
     <(grep -v '^#' boards/debian/ferroscope@.service) \
    || fail "boards/debian/ferroscope@.service differs from boards/systemd/ferroscope@.service beyond the paths"
diff <(grep -v '^#' boards/debian/ferroscope@.service \
        | sed 's#/usr/share/ferroscope/boards/%i.toml#/etc/ferroscope/station.toml#; s#^Description=ferroscope inspection station (%i)$#Description=ferroscope inspection station#') \
     <(grep -v '^#' boards/debian/ferroscope.service) \
    || fail "boards/debian/ferroscope.service differs from ferroscope@.service beyond the config path"
echo "units: ferroscope@.service and ferroscope.service are boards/systemd/ferroscope@.service with the package's paths"
python3 - <<'PY' || fail "boards/debian/station.toml is no longer boards/host-sim.toml with the package's paths"
import tomllib
sim = tomllib.load(open("boards/host-sim.toml", "rb"))
pkg = tomllib.load(open("boards/debian/station.toml", "rb"))
sim.pop("board")                      # the packaged station runs on every architecture
sim["station"]["name"] = "simulation"
sim["camera"]["path"] = "/usr/share/ferroscope/samples/neu"
sim["camera"]["loops"] = 0            # a station runs until stopped
sim["tool"]["manifest"] = "/usr/share/ferroscope/models/neu_classify.toml"
for k in ("cpus", "frame_cpus"):      # CPU numbers are a machine's: boards have one to eight cores
    sim["realtime"].pop(k, None)
assert pkg == sim, {k: (pkg.get(k), sim.get(k)) for k in set(pkg) | set(sim) if pkg.get(k) != sim.get(k)}
print("station.toml: boards/host-sim.toml with the package's paths, no [board], no CPU numbers, replaying forever")
PY

CHANGELOG=$(sed -n '1s/^ferroscope (\([^)]*\)).*/\1/p' boards/debian/changelog)
[ "$CHANGELOG" = "$VERSION-1" ] || fail "boards/debian/changelog's first entry is $CHANGELOG, the package is $VERSION-1: add an entry"
echo "changelog: its first entry is $CHANGELOG"

# target triple, Debian architecture, the `file` word for it, environment variable
# and how to run it here
ARCHES=(
    "aarch64-unknown-linux-gnu arm64 aarch64 FERROSCOPE_BIN_AARCH64 qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu"
    "armv7-unknown-linux-gnueabihf armhf ARM FERROSCOPE_BIN_ARMV7 qemu-arm -cpu cortex-a8 -L /usr/arm-linux-gnueabihf"
    "x86_64-unknown-linux-gnu amd64 x86-64 FERROSCOPE_BIN_X86_64"
)
WANT=("$@")
[ ${#WANT[@]} -gt 0 ] || WANT=(arm64 armhf amd64)
for W in "${WANT[@]}"; do
    case $W in arm64|armhf|amd64) ;; *) echo "unknown architecture $W (arm64, armhf, amd64)"; exit 2 ;; esac
done
rm -rf "$OUT"
mkdir -p "$OUT"
HOST=$(rustc -vV | sed -n 's/^host: //p')
for A in "${ARCHES[@]}"; do
    read -r T DEB FILEWORD VAR EMU <<<"$A"
    read -r -a EMU <<<"${EMU:-}"
    [[ " ${WANT[*]} " == *" $DEB "* ]] || continue
    echo "== $DEB ($T)"
    if [ "$T" = "$HOST" ]; then BUILT=$TARGET_DIR/release/ferroscope; STAGED=$STAGE/release/ferroscope; TARGET_ARGS=()
    else BUILT=$TARGET_DIR/$T/release/ferroscope; STAGED=$STAGE/$T/release/ferroscope; TARGET_ARGS=(--target "$T" --variant glibc-2-31); fi
    BIN=${!VAR:-$BUILT}
    if [ ! -x "$BIN" ]; then
        [ -z "${!VAR:-}" ] || fail "$VAR=$BIN is not an executable file"
        if [ "$T" = "$HOST" ]; then
            echo "building: cargo build --release --bin ferroscope"; cargo build --release -q --bin ferroscope
        else
            echo "building: cargo zigbuild --release --target $T.$GLIBC_FLOOR --bin ferroscope"
            cargo zigbuild --release -q --target "$T.$GLIBC_FLOOR" --bin ferroscope
        fi
    fi
    file -L "$BIN" | grep -q "$FILEWORD" || fail "$BIN is not a $FILEWORD binary: $(file -L "$BIN")"
    mkdir -p "$(dirname "$STAGED")"
    cp "$BIN" "$STAGED"
    echo "binary: $BIN ($(stat -c %s "$BIN") bytes)"
    CARGO_TARGET_DIR=$STAGE cargo deb --no-build --no-strip "${TARGET_ARGS[@]+"${TARGET_ARGS[@]}"}" --output "$OUT/" -q >/dev/null
    PKG=$OUT/ferroscope_${VERSION}-1_$DEB.deb
    [ -f "$PKG" ] || fail "cargo deb made no $PKG: $(ls "$OUT")"
    echo "package: $PKG ($(stat -c %s "$PKG") bytes)"

    [ "$(dpkg-deb -f "$PKG" Architecture)" = "$DEB" ] || fail "$PKG: Architecture $(dpkg-deb -f "$PKG" Architecture)"
    echo "Depends: $(dpkg-deb -f "$PKG" Depends)"
    CONTENTS=$(dpkg-deb -c "$PKG" | awk '{print $6}')
    NEED=(./usr/bin/ferroscope ./etc/ferroscope/station.toml
          ./usr/lib/systemd/system/ferroscope.service ./usr/lib/systemd/system/ferroscope@.service
          ./usr/lib/sysusers.d/ferroscope.conf ./usr/lib/udev/rules.d/60-ferroscope.rules
          ./usr/share/ferroscope/samples/neu/README.md ./usr/share/lintian/overrides/ferroscope)
    for f in models/*.onnx models/*.toml; do NEED+=("./usr/share/ferroscope/$f"); done
    for f in rpi4 rpi5 rpi-zero2w jetson-orin-nano rk3588 beaglebone-black usb-camera; do NEED+=("./usr/share/ferroscope/boards/$f.toml"); done
    for f in tests/data/neu_samples/*/*.png; do NEED+=("./usr/share/ferroscope/samples/neu/${f#tests/data/neu_samples/}"); done
    for f in "${NEED[@]}"; do grep -qxF "$f" <<<"$CONTENTS" || fail "$PKG lacks $f"; done
    if grep -q "models/training" <<<"$CONTENTS"; then fail "$PKG carries models/training"; fi
    echo "contents: ${#NEED[@]} files checked ($(grep -c '\.onnx$' <<<"$CONTENTS") models, $(grep -c '\.png$' <<<"$CONTENTS") sample images), $(grep -vc '/$' <<<"$CONTENTS") files in all"
    CTRL=$(mktemp -d)
    dpkg-deb -e "$PKG" "$CTRL"
    grep -qx /etc/ferroscope/station.toml "$CTRL/conffiles" || fail "$PKG: station.toml is not a conffile"
    echo "conffiles: $(tr '\n' ' ' <"$CTRL/conffiles")"
    echo "maintainer scripts: $(cd "$CTRL" && ls | grep -E '^(pre|post)(inst|rm)$' | tr '\n' ' ')"
    dpkg-deb --fsys-tarfile "$PKG" | tar -xO ./usr/bin/ferroscope >"$CTRL/ferroscope"
    chmod +x "$CTRL/ferroscope"
    echo "the packaged binary: $("${EMU[@]+"${EMU[@]}"}" "$CTRL/ferroscope" --version)${EMU[0]:+ (under ${EMU[0]})}"
    rm -rf "$CTRL"

    echo "-- lintian"
    lintian --fail-on error,warning "$PKG" 2> >(grep -v 'running with root privileges' >&2) || fail "lintian on $PKG"
    echo "lintian: no errors or warnings; overridden, with their reasons in boards/debian/lintian-overrides: $(grep -v '^#' boards/debian/lintian-overrides | cut -d' ' -f2 | tr '\n' ' ')"
done

if [[ " ${WANT[*]} " != *" arm64 "* ]]; then
    echo "packages OK: $(cd "$OUT" && ls *.deb | tr '\n' ' ')(no arm64 package asked: the run under qemu-aarch64 is skipped)"
    exit 0
fi
echo "== arm64 package under qemu-aarch64, unpacked into a temporary root"
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
dpkg-deb -x "$OUT/ferroscope_${VERSION}-1_arm64.deb" "$ROOT"
# The packaged station.toml names its files by their installed paths; here they lie under the
# temporary root, so the unpacked copy gets the root's prefix, and nothing else may change.
STATION=$ROOT/etc/ferroscope/station.toml
ABS=$(grep -v '^ *#' "$STATION" | grep -c '"/')
sed -i "s#\"/usr/share/ferroscope/#\"$ROOT/usr/share/ferroscope/#" "$STATION"
[ "$(grep -v '^ *#' "$STATION" | grep -c "\"$ROOT/usr/share/ferroscope/")" = "$ABS" ] \
    || fail "station.toml names absolute paths outside /usr/share/ferroscope: $(grep '"/' boards/debian/station.toml)"
echo "station.toml: its $ABS absolute paths (all under /usr/share/ferroscope) pointed into $ROOT"
QEMU=(qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu)
FS=$ROOT/usr/bin/ferroscope
"${QEMU[@]}" "$FS" --version
echo "-- ferroscope check --config <unpacked>/etc/ferroscope/station.toml"
"${QEMU[@]}" "$FS" check --config "$STATION" || fail "check of the packaged station.toml"
# 15 s: the model loads within the run's time, slowly under emulation. Emulated, a decision can
# miss the 250 ms deadline and the item fails safe (rejected, FAULT: decision overrun): that is
# the station doing its job on a slow CPU; what is asked here is items through it end to end.
run_items() {
    local log
    log=$("${QEMU[@]}" "$FS" run --config "$1" --duration-s 15) || fail "run --config $1"
    awk '/^#/ { if (n++ < 3) print; else if (n == 4) print "…"; next } { print }' <<<"$log"
    grep -qE '^items [1-9][0-9]*' <<<"$log" || fail "run --config $1 inspected no item"
}
echo "-- ferroscope run --config <unpacked>/etc/ferroscope/station.toml --duration-s 15"
run_items "$STATION"
echo "-- ferroscope run --config boards/host-sim.toml --duration-s 15 (from the repository root)"
run_items boards/host-sim.toml
echo "-- ferroscope infer with the packaged model on the packaged scratches samples"
"${QEMU[@]}" "$FS" infer --model "$ROOT/usr/share/ferroscope/models/neu_classify.toml" --json \
    "$ROOT"/usr/share/ferroscope/samples/neu/scratches/*.png >"$STAGE/infer-arm64.json" || fail "infer with the packaged model"
N=$(ls "$ROOT"/usr/share/ferroscope/samples/neu/scratches/*.png | wc -l)
HITS=$(grep -c '"class":"scratches"' "$STAGE/infer-arm64.json" || true)
echo "infer: scratches found in $HITS of $N images"
[ "$HITS" -ge $((N - 1)) ] || fail "the packaged model found scratches in only $HITS of $N scratches samples"
echo "-- the packaged board profiles: their model loads (devices are absent here)"
for P in "$ROOT"/usr/share/ferroscope/boards/*.toml; do
    "${QEMU[@]}" "$FS" check --json --config "$P" >"$STAGE/check-$(basename "$P" .toml).json" || true
    python3 - "$STAGE/check-$(basename "$P" .toml).json" <<'PY' || fail "the model of $(basename "$P") in the package"
import json, sys
r = json.load(open(sys.argv[1]))
m = [c for c in r["checks"] if c["what"].startswith("model ")]
assert m and all(c["ok"] for c in m), m
print("%-22s %s: %s" % (r["config"].rsplit("/", 1)[-1], m[0]["what"].split("/usr/share/ferroscope/")[-1], m[0]["detail"]))
PY
done
echo "packages OK: $(cd "$OUT" && ls *.deb | tr '\n' ' ')"
