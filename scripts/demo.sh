#!/usr/bin/env bash
# ./vnpu demo [--backend sim|kernel] [--count N] [--json FILE] [-- extra vnpu-demo args]
# The main job: inferences through the full stack. Backend 'kernel' (default) runs in the VM: AsyncRuntime →
# io_uring → vnpu.ko → the QEMU vnpu device; 'sim' runs on the host against the in-process device engine.
# On a fresh machine it first does all set-up (./vnpu setup).
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

backend=kernel count=100 json= extra=()
while [ $# -gt 0 ]; do
	case $1 in
	--backend) backend=$2; shift 2 ;;
	--backend=*) backend=${1#*=}; shift ;;
	--count) count=$2; shift 2 ;;
	--count=*) count=${1#*=}; shift ;;
	--json) json=$2; shift 2 ;;
	--json=*) json=${1#*=}; shift ;;
	--) shift; extra=("$@"); break ;;
	*) die "demo: unknown option '$1' (usage: ./vnpu demo [--backend sim|kernel] [--count N] [--json FILE])" ;;
	esac
done
case $backend in sim | kernel) ;; *) die "demo: --backend is 'sim' or 'kernel'" ;; esac
[[ $count =~ ^[0-9]+$ ]] && [ "$count" -gt 0 ] || die "demo: --count takes a positive integer"

"$VNPU_ROOT/scripts/setup.sh"

if [ "$backend" = sim ]; then
	args=(--backend sim --count "$count" "${extra[@]}")
	[ -n "$json" ] && args+=(--json "$json")
	exec "$VNPU_BUILD/tools/vnpu-demo" "${args[@]}"
fi

out=$(mktemp -d /tmp/vnpu-demo.XXXXXX)
trap 'rm -rf "$out"' EXIT
args=(--backend kernel --count "$count" "${extra[@]}")
[ -n "$json" ] && args+=(--json /out/demo.json)
"$VNPU_ROOT/vnpu" vm --devices 1 --out "$out" -- vnpu-demo "${args[@]}"
if [ -n "$json" ]; then
	[ -f "$out/demo.json" ] || die "demo: the guest wrote no JSON report"
	cp "$out/demo.json" "$json"
	log "JSON report: $json"
fi
