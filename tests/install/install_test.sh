#!/bin/sh
# Out-of-tree build against the installed libvnpu-runtime: `meson install` into a scratch DESTDIR, then
# compile hello.cpp with nothing but `pkg-config --cflags --libs vnpu-runtime` and run it on the sim backend.
# usage: install_test.sh BUILD_DIR SOURCE_DIR     exit 0 pass, 1 fail, 77 skip (liburing style)
set -eu
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >"$tmp/install.log" 2>&1 || {
	cat "$tmp/install.log"; echo "install_test: meson install failed"; exit 1; }
pc=$(find "$tmp/root" -name vnpu-runtime.pc | head -n1)
[ -n "$pc" ] || { echo "install_test: vnpu-runtime.pc was not installed"; exit 1; }
pcdir=$(dirname "$pc")
# The .pc says prefix=/usr/local (or whatever was configured); point it into the DESTDIR.
prefix=$(PKG_CONFIG_PATH="$pcdir" pkg-config --variable=prefix vnpu-runtime)
export PKG_CONFIG_PATH="$pcdir"
flags="--define-variable=prefix=$tmp/root$prefix"
cflags=$(pkg-config $flags --cflags vnpu-runtime)
libs=$(pkg-config $flags --libs vnpu-runtime)
libdir=$(pkg-config $flags --variable=libdir vnpu-runtime)
echo "install_test: pkg-config --cflags: $cflags"
echo "install_test: pkg-config --libs:   $libs"
# shellcheck disable=SC2086
${CXX:-c++} -std=c++20 -Wall -Wextra -Werror $cflags "$src/hello.cpp" -o "$tmp/hello" $libs
LD_LIBRARY_PATH="$libdir" VNPU_BACKEND=sim "$tmp/hello"
