#!/usr/bin/env bash
# Upstream-shape checks of vnpu.ko: checkpatch.pl --strict and sparse (make C=2) over kernel/, kernel-doc -Wall
# over kernel/ and the uAPI header; any finding fails.
#   scripts/kernel-lint.sh            run the checks
#   scripts/kernel-lint.sh --prepare  only put the scripts (from Debian's linux-source-6.12) into the cache
# checkpatch.pl, spelling.txt, const_structs.checkpatch and kernel-doc come from
# /usr/src/linux-source-6.12.tar.xz and are extracted once per package version into
# $VNPU_CACHE/linux-source-6.12/scripts/.
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

SRC_TAR=/usr/src/linux-source-6.12.tar.xz
LINT_DIR=$VNPU_CACHE/linux-source-6.12
CHECKPATCH=$LINT_DIR/scripts/checkpatch.pl
KERNEL_DOC=$LINT_DIR/scripts/kernel-doc

prepare() {
	local version stamp=$LINT_DIR/.version
	[ -r "$SRC_TAR" ] || die "kernel-lint: $SRC_TAR missing (Debian package linux-source-6.12; run ./vnpu setup)"
	version=$(dpkg-query -W -f='${Version}' linux-source-6.12)
	if [ -x "$CHECKPATCH" ] && [ -x "$KERNEL_DOC" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
		return 0
	fi
	log "kernel-lint: extracting checkpatch.pl from linux-source-6.12 $version"
	rm -rf "$LINT_DIR"
	mkdir -p "$LINT_DIR"
	tar -xJf "$SRC_TAR" -C "$LINT_DIR" --strip-components=1 \
		linux-source-6.12/scripts/checkpatch.pl linux-source-6.12/scripts/spelling.txt \
		linux-source-6.12/scripts/const_structs.checkpatch linux-source-6.12/scripts/kernel-doc
	echo "$version" >"$stamp"
}

prepare
[ "${1:-}" = --prepare ] && exit 0
command -v sparse >/dev/null || die "kernel-lint: sparse missing (Debian package sparse; run ./vnpu setup)"

fail=0
cd "$VNPU_ROOT/kernel"
# With --terse checkpatch prints one line per finding and a total per file that has any.
out=$(perl "$CHECKPATCH" --strict --no-tree --terse --show-types -f ./vnpu_*.c ./vnpu_*.h Kbuild Makefile 2>&1) ||
	fail=1
findings=$(printf '%s\n' "$out" | grep -v -e '^$' -e '^total: 0 errors, 0 warnings, 0 checks' || true)
if [ "$fail" = 1 ] || [ -n "$findings" ]; then
	printf '%s\n' "$findings" >&2
	log "kernel-lint: checkpatch --strict has findings"
	fail=1
fi

# Every documented struct member, parameter and enum value described (kernel-doc comments only).
if ! out=$(perl "$KERNEL_DOC" -none -Wall ./vnpu_*.c ./vnpu_*.h ../include/uapi/drm/vnpu_accel.h 2>&1) ||
	[ -n "$out" ]; then
	printf '%s\n' "$out" >&2
	log "kernel-lint: kernel-doc has findings"
	fail=1
fi

kver=$(guest_kver)
# C=2 checks every source file, rebuilt or not; sparse reports on stderr.
if ! out=$(make -s -C "/lib/modules/$kver/build" M="$VNPU_ROOT/kernel" C=2 CHECK=sparse modules 2>&1); then
	printf '%s\n' "$out" >&2
	log "kernel-lint: module build with sparse failed"
	fail=1
elif printf '%s\n' "$out" | grep -E 'warning:|error:' >&2; then
	log "kernel-lint: sparse has findings"
	fail=1
fi
[ "$fail" = 0 ] && log "kernel-lint: checkpatch --strict, kernel-doc and sparse clean"
exit "$fail"
