#!/usr/bin/env bash
# Build the debug guest kernel (KASAN, lockdep, atomic-sleep checks, DMA-API debugging, kmemleak, fault
# injection) from Debian's linux-source-6.12 into the cache, and vnpu.ko against it. Incremental: the source is
# extracted once, the configuration is regenerated only when scripts/kernel-debug.config changes, and kbuild
# rebuilds only what changed. Prints the kernel release on stdout's last line.
#
# Layout in $VNPU_CACHE/linux-debug: linux-source-6.12/ (pristine source plus two Kconfig prompts), out/ (the
# kernel build: out/arch/x86/boot/bzImage), vnpu/{kernel,include} (a copy of kernel/ and include/ built against out/; kbuild 6.12 cannot put
# an external module's objects outside its source directory, and kernel/ holds the stock kernel's build).
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

DBG=$VNPU_CACHE/linux-debug
SRC=$DBG/linux-source-6.12
OUT=$DBG/out
FRAG=$VNPU_ROOT/scripts/kernel-debug.config
TARBALL=/usr/src/linux-source-6.12.tar.xz

[ -f "$TARBALL" ] || die "kernel-debug: $TARBALL missing (package linux-source-6.12; ./vnpu setup installs it)"
mkdir -p "$DBG"
if [ ! -f "$SRC/.vnpu-extracted" ] || [ "$SRC/.vnpu-extracted" -ot "$TARBALL" ]; then
	log "kernel-debug: extracting $TARBALL"
	rm -rf "$SRC"
	tar -C "$DBG" -xf "$TARBALL"
	# vnpu.ko is out of tree, and these two helpers are hidden symbols that only in-tree drivers select: give
	# them a prompt so that the fragment can build them in.
	sed -i -e '/^config DRM_SCHED$/{n;s/^\ttristate$/\ttristate "DRM GPU scheduler"/}' \
		-e '/^config DRM_GEM_SHMEM_HELPER$/{n;s/^\ttristate$/\ttristate "GEM shmem helpers"/}' \
		"$SRC/drivers/gpu/drm/Kconfig"
	grep -q 'tristate "DRM GPU scheduler"' "$SRC/drivers/gpu/drm/Kconfig" ||
		die "kernel-debug: could not give DRM_SCHED a prompt (Kconfig changed?)"
	rm -rf "$OUT"
	touch "$SRC/.vnpu-extracted"
fi

mkdir -p "$OUT"
# Reconfigure when the fragment's content changed (not its mtime: every fresh checkout has a new one).
if [ ! -f "$OUT/.config" ] || ! cmp -s "$FRAG" "$OUT/.vnpu-fragment"; then
	log "kernel-debug: configuring (allnoconfig + scripts/kernel-debug.config)"
	(cd "$SRC" && KCONFIG_ALLCONFIG="$FRAG" make -s O="$OUT" allnoconfig) >"$OUT/config.log" 2>&1 ||
		{ cat "$OUT/config.log"; die "kernel-debug: allnoconfig failed"; }
	# Every option the fragment sets must have survived dependency resolution.
	# (An option left out may also vanish because what it depends on is out.)
	bad=$(grep -E '^(CONFIG_[A-Z0-9_]+=|# CONFIG_[A-Z0-9_]+ is not set)' "$FRAG" | while read -r line; do
		case $line in
		"# "*) opt=${line#\# }; opt=${opt%% *}; ! grep -Eq "^$opt=[ym]" "$OUT/.config" || echo "  $line" ;;
		*) grep -qxF "$line" "$OUT/.config" || echo "  $line" ;;
		esac
	done)
	[ -z "$bad" ] || { rm -f "$OUT/.config"; die "kernel-debug: options lost in olddefconfig:
$bad"; }
	cp "$FRAG" "$OUT/.vnpu-fragment"
fi

t0=$SECONDS
if [ ! -f "$OUT/arch/x86/boot/bzImage" ]; then
	log "kernel-debug: cold build (~12 min of CPU: ~6 min on 2 idle cores)"
fi
# `modules` (none are configured) writes the Module.symvers that external modules link against.
make -s -C "$SRC" O="$OUT" -j"$(nproc)" bzImage modules
log "kernel-debug: kernel up to date ($((SECONDS - t0)) s)"

# The module's Kbuild finds the shared headers at ../include: mirror both directories, copying only what
# changed so that kbuild's view stays incremental. One mirror per checkout, so that checkouts sharing a cache
# do not build each other's module.
MOD=$(debug_module_dir)
mirror() { # $1 = source dir, $2 = destination dir, $3 = find name pattern
	local rel
	mkdir -p "$2"
	while read -r rel; do
		cmp -s "$1/$rel" "$2/$rel" || { mkdir -p "$(dirname "$2/$rel")" && cp "$1/$rel" "$2/$rel"; }
	done < <(cd "$1" && find . -type f -name "$3" | sed 's|^\./||')
	while read -r rel; do
		[ -e "$1/$rel" ] || rm -f "$2/$rel"
	done < <(cd "$2" && find . -type f -name "$3" | sed 's|^\./||')
}
mirror "$VNPU_ROOT/include" "$MOD/include" '*.h'
mirror "$VNPU_ROOT/kernel" "$MOD/kernel" '*.[ch]'
cp -u "$VNPU_ROOT/kernel/Kbuild" "$MOD/kernel/Kbuild"
make -s -C "$OUT" M="$MOD/kernel" modules
[ -f "$MOD/kernel/vnpu.ko" ] || die "kernel-debug: vnpu.ko was not built"
cat "$OUT/include/config/kernel.release"
