#!/usr/bin/env bash
# ./vnpu vm [--devices N] [--icount[=SHIFT]] [--timeout S] [--mem M] [--smp N] [--out DIR] [--share PATH]...
#           [--build-dir D] [--device-props P] [--kernel stock|debug] [--host-root] [--append ARGS] -- CMD...
#
# Boot the Debian 6.12 kernel under the vnpu QEMU with N vnpu devices and an initramfs holding busybox, the
# kernel modules vnpu.ko needs, vnpu.ko and every executable of the meson build dir (in /opt/vnpu/bin, with
# their shared libraries). Run CMD as root in the guest, stream its output, and exit with CMD's status.
# Exit non-zero and show the guest kernel log if the log has an Oops, BUG, WARNING, hung task, lockdep or
# sanitizer report, or if the guest does not finish within the timeout. Files CMD writes under /out are
# copied to DIR (--out). Each --share PATH (file or directory, e.g. compiled models, data) is copied into the
# guest as /opt/vnpu/share/<basename of PATH>. --device-props adds QEMU properties to every vnpu device
# (e.g. "compute-gflops=100,fi-kind=1"). --kernel debug boots the debug kernel of scripts/kernel-debug.sh (KASAN,
# lockdep, DMA-API debugging, kmemleak, fault injection; built or updated first) with vnpu.ko built against it;
# after CMD the guest unloads vnpu.ko and runs a kmemleak scan, and a reported leak fails the run.
# --host-root shares the host's / read-only over virtio-9p (as virtme-ng does) at /host in the guest, with the
# guest's /proc, /sys, /dev and /tmp mounted inside; `host-run CMD...` runs CMD there (chroot), so that the
# host's /usr/bin/python3, its Debian packages and the build tree (same paths as on the host) run on the guest's
# kernel and vnpu devices. --append adds ARGS to the guest kernel's command line (e.g. "swiotlb=force").
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

devices=1 icount= timeout=600 mem=1G smp=2 outdir= build_dir=$VNPU_BUILD module=$VNPU_ROOT/kernel/vnpu.ko
qemu_extra=() vnpu_params= shares=() device_props= kernel=stock module_set= host_root= append=
while [ $# -gt 0 ]; do
	case $1 in
	--devices) devices=$2; shift 2 ;;
	--devices=*) devices=${1#*=}; shift ;;
	--icount) icount=3; shift ;;
	--icount=*) icount=${1#*=}; shift ;;
	--timeout) timeout=$2; shift 2 ;;
	--mem) mem=$2; shift 2 ;;
	--smp) smp=$2; shift 2 ;;
	--out) outdir=$2; shift 2 ;;
	--build-dir) build_dir=$2; shift 2 ;;
	--module) module=$2; module_set=1; shift 2 ;;
	--no-module) module=; module_set=1; shift ;;
	--kernel) kernel=$2; shift 2 ;;
	--host-root) host_root=1; shift ;;
	--kernel=*) kernel=${1#*=}; shift ;;
	--module-params) vnpu_params=$2; shift 2 ;;
	--qemu-arg) qemu_extra+=("$2"); shift 2 ;;
	--share) shares+=("$2"); shift 2 ;;
	--device-props) device_props=$2; shift 2 ;;
	--append) append=$2; shift 2 ;;
	--) shift; break ;;
	*) die "vm: unknown option '$1' (usage: ./vnpu vm [--devices N] [--icount] [--timeout S] -- CMD...)" ;;
	esac
done
[ $# -gt 0 ] || die "vm: no command given (usage: ./vnpu vm [--devices N] [--icount] -- CMD...)"
[[ $devices =~ ^[0-9]+$ ]] && [ "$devices" -le 16 ] || die "vm: --devices takes 0..16"
[ -x "$QEMU_BIN" ] || die "vm: QEMU not built ($QEMU_BIN); run ./vnpu setup"
case $kernel in
stock)
	kver=$(guest_kver)
	kimage=/boot/vmlinuz-$kver
	;;
debug)
	# Incremental: seconds when nothing changed, a cold kernel build the first time.
	kver=$("$VNPU_ROOT/scripts/kernel-debug.sh" | tail -n 1)
	kimage=$VNPU_CACHE/linux-debug/out/arch/x86/boot/bzImage
	[ -n "$module_set" ] || module=$(debug_module_dir)/kernel/vnpu.ko
	;;
*) die "vm: --kernel takes stock or debug" ;;
esac
[ -z "$module" ] || [ -f "$module" ] || die "vm: $module not built; run ./vnpu build"

work=$(mktemp -d /tmp/vnpu-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT

# ---- initramfs, part 1 (cached per kernel): busybox and the kernel modules vnpu.ko depends on -----------------
base=$VNPU_CACHE/initramfs/base-$kver.cpio.gz
if [ ! -f "$base" ] || [ "$base" -ot "$VNPU_ROOT/scripts/vm.sh" ] || [ "$base" -ot "$kimage" ]; then
	log "building initramfs base for $kver"
	root=$work/base
	mkdir -p "$root"/{bin,sbin,etc/vnpu,proc,sys,dev,tmp,lib/modules}
	cp /bin/busybox "$root/bin/busybox"
	: >"$root/etc/vnpu/modules"
	# The debug kernel has everything vnpu.ko needs built in.
	[ "$kernel" = debug ] || for m in drm_shmem_helper gpu-sched 9p 9pnet_virtio; do
		modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
	done | awk '!seen[$0]++' | while read -r ko; do
		name=$(basename "$ko"); name=${name%.xz}; name=${name%.zst}
		case $ko in
		*.xz) xz -dc "$ko" >"$root/lib/modules/$name" ;;
		*.zst) zstd -qdc "$ko" >"$root/lib/modules/$name" ;;
		*) cp "$ko" "$root/lib/modules/$name" ;;
		esac
		echo "/lib/modules/$name" >>"$root/etc/vnpu/modules"
	done
	mkdir -p "$(dirname "$base")"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$base.tmp"
	mv "$base.tmp" "$base"
fi

# ---- initramfs, part 2 (every run): init, vnpu.ko, the project's binaries and their libraries ------------------
root=$work/proj
mkdir -p "$root"/{etc/vnpu,lib/modules,opt/vnpu/bin,opt/vnpu/lib}
cp "$VNPU_ROOT/scripts/guest-init" "$root/init"
chmod 755 "$root/init"
echo "$devices" >"$root/etc/vnpu/devices"
echo "$vnpu_params" >"$root/etc/vnpu/vnpu-params"
[ "$kernel" = debug ] && : >"$root/etc/vnpu/kmemleak"
if [ -n "$host_root" ]; then
	: >"$root/etc/vnpu/host-root"
	# The checkout and the build dir keep their host paths in the guest even when they live under /tmp.
	for p in "$VNPU_ROOT" "$build_dir"; do
		p=$(readlink -f "$p" 2>/dev/null) || continue
		case $p in /tmp/?*) echo "$p" ;; esac
	done | sort -u >"$root/etc/vnpu/host-tmp-keep"
fi
[ -n "$module" ] && cp "$module" "$root/lib/modules/vnpu.ko"
# The command, quoted so that the guest's shell sees exactly the host's argv.
{
	printf 'exec'
	for a in "$@"; do printf " '%s'" "${a//\'/\'\\\'\'}"; done
	printf '\n'
} >"$root/etc/vnpu/cmd"

copy_with_libs() {
	# $1 = file, $2 = destination in the guest root
	cp "$1" "$root$2"
	ldd "$1" 2>/dev/null | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' >>"$work/libs"
}
: >"$work/libs"
if [ -d "$build_dir" ]; then
	while read -r f; do
		copy_with_libs "$f" "/opt/vnpu/bin/$(basename "$f")"
	done < <(find "$build_dir" -type f -perm -u+x ! -name '*.so' ! -name '*.so.*' \
		! -path '*/meson-*' ! -path '*.p/*' ! -path '*/CMakeFiles/*' 2>/dev/null)
fi
for f in "$VNPU_ROOT"/tests/vm/*.sh; do
	[ -f "$f" ] && cp "$f" "$root/opt/vnpu/bin/$(basename "$f" .sh)" && chmod 755 "$root/opt/vnpu/bin/$(basename "$f" .sh)"
done
sort -u "$work/libs" | while read -r lib; do
	[ -n "$lib" ] || continue
	case $lib in
	"$build_dir"/* | "$VNPU_ROOT"/*) cp -L "$lib" "$root/opt/vnpu/lib/" ;;
	*) mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib" ;;
	esac
done
for p in "${shares[@]}"; do
	[ -e "$p" ] || die "vm: --share $p does not exist"
	mkdir -p "$root/opt/vnpu/share"
	cp -rL "$p" "$root/opt/vnpu/share/"
done
mkdir -p "$root/lib64"
[ -e "$root/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
# Uncompressed on purpose: inflating tens of MB of libraries (oneDNN alone is 40 MB) in the emulated guest
# costs seconds per boot; the kernel accepts a compressed and an uncompressed segment one after the other.
# (Regression: an unaligned base made the guest panic with "invalid magic at start of compressed archive".)
(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/proj.cpio"
# The kernel takes an uncompressed segment only at a 4-byte aligned offset (zero bytes in between are
# skipped), so pad the compressed base up to the next multiple of 4.
pad=$(((4 - $(stat -c %s "$base") % 4) % 4))
{ cat "$base"; head -c "$pad" /dev/zero; cat "$work/proj.cpio"; } >"$work/initramfs.cpio.gz"

# ---- boot ----------------------------------------------------------------------------------------------------
args=(-M q35 -m "$mem" -smp "$smp" -nodefaults -display none -no-reboot
	-kernel "$kimage" -initrd "$work/initramfs.cpio.gz"
	-append "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic rdinit=/init${append:+ $append}"
	-serial stdio -serial "file:$work/report" -serial "file:$work/out.b64")
# shellcheck disable=SC2207
args+=($(qemu_fw_args))
if [ -n "$icount" ]; then
	args+=(-icount "shift=$icount,sleep=off")
else
	args+=(-accel tcg,thread=multi)
fi
for _ in $(seq 1 "$devices"); do args+=(-device "vnpu${device_props:+,$device_props}"); done
[ -n "$host_root" ] &&
	args+=(-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap)
args+=("${qemu_extra[@]}")

t0=$(date +%s.%N)
set +e
timeout -k 5 "$timeout" "$QEMU_BIN" "${args[@]}" </dev/null 2>"$work/qemu.err" | tr -d '\r' | grep --line-buffered -v '^\[ *[0-9.]*\] reboot: Power down$'
qemu_rc=${PIPESTATUS[0]}
set -e
t1=$(date +%s.%N)

fail() {
	echo "---- guest kernel log ----" >&2
	grep -v '^VNPU_EXIT_STATUS=' "$work/report" >&2 || true
	[ -s "$work/qemu.err" ] && { echo "---- qemu stderr ----" >&2; cat "$work/qemu.err" >&2; }
	die "vm: $*"
}
[ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ] && fail "guest did not finish within ${timeout}s"
[ "$qemu_rc" -eq 0 ] || fail "QEMU exited with status $qemu_rc"
status=$(sed -n 's/^VNPU_EXIT_STATUS=\([0-9]*\).*/\1/p' "$work/report" | tail -n 1)
[ -n "$status" ] || fail "guest stopped without reporting an exit status (kernel panic?)"
if grep -Eq 'WARNING:|BUG:|Oops|general protection fault|Kernel panic|INFO: task .* blocked for more than|possible circular locking|possible recursive locking|inconsistent lock state|UBSAN:|KASAN:|refcount_t: |list_(add|del) corruption|RCU detected stall|hung_task|unreferenced object 0x' "$work/report"; then
	fail "guest kernel log has a warning, bug or hang report (CMD exit status $status)"
fi
if [ -n "$outdir" ] && [ -s "$work/out.b64" ]; then
	mkdir -p "$outdir"
	# The guest's serial line turns \n into \r\n (onlcr); base64 has no \r of its own.
	tr -d '\r' <"$work/out.b64" | base64 -d | tar -C "$outdir" -xf -
fi
up=$(sed -n 's/^vnpu-init: guest up in \([0-9.]*\) s/\1/p' "$work/report")
log "guest finished: status $status, boot to command ${up:-?} s (guest uptime), total $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s wall"
exit "$status"
