#!/usr/bin/env bash
# ./vnpu build: incremental build of everything — the QEMU device (into the cached QEMU tree), the host project
# (meson: libruntime, tools, tests, examples) and the kernel module (kbuild against the guest kernel's headers).
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

"$VNPU_ROOT/scripts/qemu-build.sh"

if [ ! -f "$VNPU_BUILD/build.ninja" ]; then
	log "configuring the host build in $VNPU_BUILD"
	meson setup "$VNPU_BUILD" "$VNPU_ROOT" >/dev/null
fi
log "building the host project (meson/ninja)"
ninja -C "$VNPU_BUILD" | grep -v '^ninja: no work to do' || true
[ "${PIPESTATUS[0]}" -eq 0 ] || die "host build failed"

kver=$(guest_kver)
log "building vnpu.ko for $kver"
make -s -C "/lib/modules/$kver/build" M="$VNPU_ROOT/kernel" modules
[ -f "$VNPU_ROOT/kernel/vnpu.ko" ] || die "kernel module build produced no vnpu.ko"
