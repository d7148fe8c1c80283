# Sourced by the emulated-board scripts (tests/emulated_board.sh, tests/power_cut.sh): a stock
# Debian trixie arm64 kernel and busybox for qemu-system-aarch64 -M virt, fetched with an apt
# configuration of its own into $WORK/apt and kept there, and the kernel modules a test needs.
#
#   WORK=... ; source tests/board_vm.sh
#   vm_kernel                          # sets K (unpacked packages), VMLINUZ, MODDIR
#   vm_initramfs_base DIR APPLET...    # DIR with busybox and the named applets
#   vm_modules OUT NAME... [?NAME...]  # OUT/*.ko in dependency order and OUT/order; ?NAME: if present
#
# Needs: apt-get, dpkg, python3; network for the two packages on the first use.

vm_kernel() {
    local APT=$WORK/apt
    mkdir -p "$APT"/{lists/partial,cache/archives/partial,debs}
    echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        >"$APT/sources.list"
    touch "$APT/status"
    local AOPT=(-o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" -o Dir::State::Status="$APT/status"
          -o APT::Architecture=arm64 -o APT::Architectures=arm64 -o Debug::NoLocking=1
          -o Acquire::Languages=none -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
          -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
          -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
          -o APT::Sandbox::User=root)
    if ! ls "$APT"/debs/linux-image-*.deb >/dev/null 2>&1 || ! ls "$APT"/debs/busybox-static_*.deb >/dev/null 2>&1; then
        apt-get "${AOPT[@]}" update -qq
        local KPKG
        KPKG=$(apt-cache "${AOPT[@]}" depends linux-image-arm64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        [ -n "$KPKG" ] || { echo "FAIL: no linux-image for arm64 in trixie"; exit 1; }
        (cd "$APT/debs" && apt-get "${AOPT[@]}" download -qq "$KPKG" busybox-static)
    fi
    K=$WORK/kernel
    if [ ! -d "$K/boot" ]; then
        rm -rf "$K" && mkdir -p "$K"
        for d in "$APT"/debs/*.deb; do dpkg -x "$d" "$K"; done
    fi
    VMLINUZ=$(ls "$K"/boot/vmlinuz-*)
    MODDIR=$(ls -d "$K"/usr/lib/modules/* 2>/dev/null || ls -d "$K"/lib/modules/*)
}

vm_initramfs_base() {
    local IR=$1; shift
    rm -rf "$IR" && mkdir -p "$IR"/{bin,dev,proc,sys,tmp,modules,app/boards,app/models}
    cp "$K"/usr/bin/busybox "$IR/bin/busybox" 2>/dev/null || cp "$K"/bin/busybox "$IR/bin/busybox"
    local a
    for a in "$@"; do ln -sf busybox "$IR/bin/$a"; done
}

# The named modules with what they depend on (the `depends=` of each module's .modinfo),
# dependencies first, decompressed for busybox's insmod.
vm_modules() {
    python3 - "$MODDIR" "$@" <<'PY'
import lzma, os, re, sys
moddir, out, *wanted = sys.argv[1:]
paths = {}
for d, _, files in os.walk(os.path.join(moddir, "kernel")):
    for f in files:
        m = re.match(r"(.+)\.ko(\.xz)?$", f)
        if m:
            paths[m.group(1).replace("-", "_")] = os.path.join(d, f)
order, seen = [], set()
def want(name):
    name = name.replace("-", "_")
    if name in seen:
        return
    seen.add(name)
    if name not in paths:
        sys.exit("FAIL: module %s is not in the kernel package" % name)
    raw = open(paths[name], "rb").read()
    if paths[name].endswith(".xz"):
        raw = lzma.decompress(raw)
    m = re.search(rb"depends=([^\0]*)\0", raw)
    for dep in (m.group(1).decode().split(",") if m else []):
        if dep:
            want(dep)
    file = os.path.basename(paths[name]).removesuffix(".xz")
    open(os.path.join(out, file), "wb").write(raw)
    order.append(file)
for w in wanted:
    if w.startswith("?"):
        if w[1:].replace("-", "_") not in paths:
            continue  # built into the kernel, or not needed by it
        w = w[1:]
    want(w)
open(os.path.join(out, "order"), "w").write("\n".join(order) + "\n")
print("modules:", " ".join(order))
PY
}

# The aarch64 ferroscope into DIR/app/ferroscope. A glibc build (what the boards run, e.g.
# tests/cross.sh's aarch64-unknown-linux-gnu) brings its dynamic loader and the libraries it
# needs from the arm64 cross glibc (libc6-arm64-cross, /usr/aarch64-linux-gnu); a static build
# (aarch64-unknown-linux-musl) goes in alone.
vm_install_binary() {
    local BIN=$1 IR=$2 SYSROOT=/usr/aarch64-linux-gnu/lib
    file "$BIN" | grep -q "ARM aarch64" || { echo "FAIL: $BIN is not an aarch64 binary"; exit 1; }
    cp "$BIN" "$IR/app/ferroscope"
    local INTERP
    INTERP=$(readelf -l "$BIN" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
    [ -n "$INTERP" ] || return 0
    mkdir -p "$IR/lib"
    cp -L "$SYSROOT/$(basename "$INTERP")" "$IR$INTERP" \
        || { echo "FAIL: no $(basename "$INTERP") in $SYSROOT (libc6-arm64-cross)"; exit 1; }
    local LIB
    for LIB in $(readelf -d "$BIN" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
        cp -L "$SYSROOT/$LIB" "$IR/lib/$LIB" || { echo "FAIL: no $LIB in $SYSROOT"; exit 1; }
    done
}
