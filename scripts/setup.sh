#!/usr/bin/env bash
# ./vnpu setup: everything a fresh Debian 12 machine needs, idempotently. A second run with nothing changed only
# checks and returns in seconds.
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

# Debian packages, by purpose. Backports only where bookworm is too old for QEMU 10.0.
PKGS_HOST=(build-essential pkg-config ninja-build g++ libgtest-dev libgmock-dev googletest libbenchmark-dev
	liburing-dev libdrm-dev)
PKGS_KERNEL=(linux-image-6.12-amd64 linux-headers-6.12-amd64 kmod)
# checkpatch.pl (from the kernel source tarball) and sparse for scripts/kernel-lint.sh; the debug guest kernel
# (scripts/kernel-debug.sh) is built from the same source package.
PKGS_KERNEL_LINT=(linux-source-6.12 sparse bc libelf-dev libssl-dev flex bison)
PKGS_VM=(busybox-static cpio xz-utils zstd)
PKGS_QEMU=(libglib2.0-dev libpixman-1-dev flex bison libslirp-dev python3-venv bzip2 dpkg-dev)
# Compiler, op kernels and examples: ONNX import, oneDNN kernels, data formats (HDF5, JPEG, JSON), and Debian's
# PyTorch/ONNX for generating the example models and reference outputs (these belong to /usr/bin/python3).
PKGS_MODEL=(libdnnl-dev libonnx-dev libonnx-testdata libprotobuf-dev protobuf-compiler libhdf5-dev libjpeg-dev
	nlohmann-json3-dev python3-torch python3-torchvision python3-onnx python3-numpy python3-h5py python3-pil)
# The Python package `vnpu` (pybind11 extension for /usr/bin/python3), its pytest suite and the Python examples.
PKGS_MODEL+=(pybind11-dev python3-dev python3-pytest python3-opencv)
# vnpu.dask (docs/scale-out.md): Dask's distributed scheduler (pulls in python3-dask).
PKGS_MODEL+=(python3-distributed)
PKGS_BPO=(meson python3-pycotap seabios qemu-system-data)

APT_SOURCES=/etc/apt/sources.list.d/vnpu.sources

ensure_apt_sources() {
	if [ -f "$APT_SOURCES" ] && grep -q bookworm-backports "$APT_SOURCES"; then
		return 0
	fi
	log "adding apt sources: deb-src and bookworm-backports ($APT_SOURCES)"
	as_root tee "$APT_SOURCES" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	as_root apt-get update -q
}

missing_pkgs() {
	local p
	for p in "$@"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
	done
}

ensure_packages() {
	local missing missing_bpo
	missing=$(missing_pkgs "${PKGS_HOST[@]}" "${PKGS_KERNEL[@]}" "${PKGS_KERNEL_LINT[@]}" "${PKGS_VM[@]}" \
		"${PKGS_QEMU[@]}" "${PKGS_MODEL[@]}")
	missing_bpo=$(missing_pkgs "${PKGS_BPO[@]}")
	# bookworm's meson (1.0) and SeaBIOS (1.16.2) are installed but too old: require the backports versions.
	if ! dpkg --compare-versions "$(dpkg-query -W -f='${Version}' meson 2>/dev/null || echo 0)" ge 1.5; then
		missing_bpo="$missing_bpo meson"
	fi
	if ! dpkg --compare-versions "$(dpkg-query -W -f='${Version}' seabios 2>/dev/null || echo 0)" ge 1.16.3; then
		missing_bpo="$missing_bpo seabios"
	fi
	if [ -z "${missing// /}" ] && [ -z "${missing_bpo// /}" ]; then
		log "Debian packages: all present"
		return 0
	fi
	log "installing Debian packages:$(echo " $missing $missing_bpo" | tr '\n' ' ')"
	as_root apt-get update -q
	export DEBIAN_FRONTEND=noninteractive
	if [ -n "${missing// /}" ]; then
		# shellcheck disable=SC2086
		as_root apt-get install -y -q --no-install-recommends $missing
	fi
	if [ -n "${missing_bpo// /}" ]; then
		# shellcheck disable=SC2086
		as_root apt-get install -y -q --no-install-recommends -t bookworm-backports $missing_bpo
	fi
}

ensure_apt_sources
ensure_packages
"$VNPU_ROOT/scripts/kernel-lint.sh" --prepare
"$VNPU_ROOT/scripts/qemu-build.sh"
"$VNPU_ROOT/scripts/build.sh"
log "setup done: QEMU $QEMU_BIN, guest kernel $(guest_kver)"
