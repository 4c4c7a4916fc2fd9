#!/bin/sh
# `meson install` puts the Python package into /usr/bin/python3's dist-packages: install into a scratch DESTDIR,
# check that the package directory (without the DESTDIR) is on that interpreter's sys.path, then import it
# from there and run a request on the sim backend.
# usage: install_test.sh BUILD_DIR     exit 0 pass, 1 fail
set -eu
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >"$tmp/install.log" 2>&1 || {
	cat "$tmp/install.log"; echo "python install_test: meson install failed"; exit 1; }
init=$(find "$tmp/root" -path '*/vnpu/__init__.py' | head -n1)
[ -n "$init" ] || { echo "python install_test: vnpu/__init__.py was not installed"; exit 1; }
site=$(dirname "$(dirname "$init")")
ls "$site"/vnpu/_vnpu.*.so >/dev/null || { echo "python install_test: the extension was not installed"; exit 1; }
on_path=${site#"$tmp/root"}
echo "python install_test: package installed into $on_path"
/usr/bin/python3 -c 'import sys; sys.exit(0 if sys.argv[1] in sys.path else "not on /usr/bin/python3 sys.path: " + sys.argv[1])' "$on_path"
libdir=$(dirname "$(find "$tmp/root" -name 'libvnpu-runtime.so*' | head -n1)")
cd "$tmp"
PYTHONPATH="$site" LD_LIBRARY_PATH="$libdir" /usr/bin/python3 -c '
import sys, numpy as np, vnpu
assert vnpu.__file__.startswith(sys.argv[1]), vnpu.__file__
with vnpu.Runtime(vnpu.CompiledModel.synthetic(compute_ms=0.01), backend="sim") as rt:
    assert rt.run(np.ones(1, np.float32)).shape == (1,)
print("python install_test: import vnpu from", vnpu.__file__, "ok")' "$site"
