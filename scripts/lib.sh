# shellcheck shell=bash
# Shared settings for the ./vnpu entry point. Sourced, never executed.

VNPU_ROOT=${VNPU_ROOT:?}
# Everything expensive (QEMU source and build, firmware, initramfs pieces) lives here, outside the work tree, so a
# fresh clone on the same machine reuses it.
VNPU_CACHE=${VNPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vnpu}
VNPU_BUILD=${VNPU_BUILD:-$VNPU_ROOT/build}
# Generated example models (examples/models/gen_model.py, run by ninja) are cached here by content.
export VNPU_MODEL_CACHE=${VNPU_MODEL_CACHE:-$VNPU_CACHE/models}

QEMU_PKG_VERSION='1:10.0.2+ds-2+deb13u1~bpo12+1'
QEMU_UPSTREAM=10.0.2
QEMU_SRC=$VNPU_CACHE/qemu-$QEMU_UPSTREAM
QEMU_BUILD=$QEMU_SRC/build-vnpu
QEMU_BIN=$QEMU_BUILD/qemu-system-x86_64

log() { printf '\033[1m[vnpu]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[vnpu] error:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The guest kernel: the newest Debian 6.12 kernel that has both image and headers installed.
guest_kver() {
	local v best=
	for d in /usr/src/linux-headers-6.12.*-amd64; do
		[ -d "$d" ] || continue
		v=${d#/usr/src/linux-headers-}
		case $v in *-rt-*|*-cloud-*) continue ;; esac
		[ -r "/boot/vmlinuz-$v" ] && [ -d "/lib/modules/$v/kernel" ] || continue
		best=$(printf '%s\n%s\n' "$best" "$v" | sort -V | tail -n 1)
	done
	[ -n "$best" ] || die "no Debian 6.12 kernel with headers installed; run ./vnpu setup"
	echo "$best"
}

# Firmware for the guest: SeaBIOS 1.16.3 (bookworm's 1.16.2 costs ~30 s per q35 boot) and QEMU's option ROMs.
qemu_fw_args() {
	echo "-L /usr/share/seabios -L /usr/share/qemu -L /usr/lib/ipxe/qemu"
}

# Where scripts/kernel-debug.sh builds this checkout's vnpu.ko for the debug kernel (one directory per checkout).
debug_module_dir() {
	echo "$VNPU_CACHE/linux-debug/vnpu-$(printf '%s' "$VNPU_ROOT" | md5sum | cut -c1-8)"
}
