#!/bin/sh
# host-run CMD...: run CMD in the host's root filesystem (./vnpu vm --host-root), on this guest's kernel and
# devices. The working directory is kept if the host has it; HOME is the guest's tmpfs, the host's being
# read-only.
[ -d /host/usr ] || { echo "host-run: no host root (boot with ./vnpu vm --host-root)" >&2; exit 125; }
[ $# -gt 0 ] || { echo "usage: host-run CMD..." >&2; exit 2; }
dir=$(pwd)
[ -d "/host$dir" ] || dir=/
exec chroot /host /usr/bin/env -u LD_LIBRARY_PATH HOME=/tmp PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
	sh -c 'cd "$0" && exec "$@"' "$dir" "$@"
