#!/usr/bin/env bash
# ./vnpu demo [--backend kernel|sim] [--count N] [--functional] [--json FILE] [--out DIR] [--matmul] [--python]
#
# The seed's demonstration (docs/examples.md): DeepLabV3+/ResNet-50 depth (unet_depth, 1x512x512x3) and
# YOLOv8n (1x3x640x640), each fed N requests (default 100, the seed's count) through vnpu::AsyncRuntime
# synchronously, asynchronously with parallel = 1 and 2, and from a coroutine. Backend 'kernel' (default)
# runs both programs in the VM: AsyncRuntime → io_uring → vnpu.ko → the QEMU vnpu device; 'sim' runs them on
# the host against the in-process device engine. Prints each model's table and a summary (throughput, stage
# times, device utilisation, the pipeline bound on async/sync), and writes a Perfetto trace, an SVG plot and
# the numbers as JSON into DIR (default build/demo).
#
# By default the device runs in timing-only mode: every command is validated and timed by the device's
# timing model exactly as usual, but the arithmetic is skipped (DeepLabV3+ is ~130 GFLOP per inference:
# computing 1000 of them costs ~10 minutes of this host's CPU, in the VM more). --functional computes every
# output (depth metrics, COCO detections) — then throughput is bounded by the host CPU, not the model.
# --matmul runs the v0 one-op matmul demo (tools/vnpu-demo) instead. --python runs the seed's two Python
# scripts ported to the vnpu package (examples/python: compile_from_torch / compile_from_torchscript in-process,
# AsyncRuntime + asyncio.gather) on the sim backend. On a fresh machine it first does all set-up (./vnpu setup).
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

usage='usage: ./vnpu demo [--backend kernel|sim] [--count N] [--functional] [--json FILE] [--out DIR] [--matmul] [--python]'
backend=kernel count=100 json='' outdir='' functional=0 matmul=0 python=0 backend_given=0
while [ $# -gt 0 ]; do
	case $1 in
	--backend) [ $# -ge 2 ] || die "demo: --backend needs a value"; backend=$2 backend_given=1; shift 2 ;;
	--backend=*) backend=${1#*=} backend_given=1; shift ;;
	--count) [ $# -ge 2 ] || die "demo: --count needs a value"; count=$2; shift 2 ;;
	--count=*) count=${1#*=}; shift ;;
	--json) [ $# -ge 2 ] || die "demo: --json needs a file"; json=$2; shift 2 ;;
	--json=*) json=${1#*=}; shift ;;
	--out) [ $# -ge 2 ] || die "demo: --out needs a directory"; outdir=$2; shift 2 ;;
	--out=*) outdir=${1#*=}; shift ;;
	--functional) functional=1; shift ;;
	--timing-only) functional=0; shift ;;
	--matmul) matmul=1; shift ;;
	--python) python=1; shift ;;
	-h | --help) echo "$usage"; sed -n '2,18s/^# \{0,1\}//p' "$0"; exit 0 ;;
	*) die "demo: unknown option '$1' ($usage)" ;;
	esac
done
case $backend in sim | kernel) ;; *) die "demo: --backend is 'sim' or 'kernel'" ;; esac
if [ "$python" = 1 ]; then
	# The guest has no Python interpreter yet (docs/python.md: sharing the host's root over virtio-9p is the plan).
	[ "$backend_given" = 0 ] || [ "$backend" = sim ] ||
		die "demo: --python runs on the sim backend only (the VM has no Python yet); use --python --backend sim"
	backend=sim
fi
if ! [[ $count =~ ^[0-9]+$ ]] || [ "$count" -lt 1 ] || [ "$count" -gt 100000 ]; then die "demo: --count takes 1..100000"; fi
# Relative paths are the caller's, not the VM's or the build dir's.
[ -z "$json" ] || json=$(realpath -m -- "$json")
outdir=$(realpath -m -- "${outdir:-$VNPU_BUILD/demo}")

"$VNPU_ROOT/scripts/setup.sh"

# ---- v0: one matmul through the stack ---------------------------------------------------------------------------
if [ "$matmul" = 1 ]; then
	args=(--backend "$backend" --count "$count")
	if [ "$backend" = sim ]; then
		[ -n "$json" ] && args+=(--json "$json")
		exec "$VNPU_BUILD/tools/vnpu-demo" "${args[@]}"
	fi
	tmp=$(mktemp -d /tmp/vnpu-demo.XXXXXX)
	trap 'rm -rf "$tmp"' EXIT
	[ -n "$json" ] && args+=(--json /out/demo.json)
	"$VNPU_ROOT/vnpu" vm --devices 1 --out "$tmp" -- vnpu-demo "${args[@]}"
	if [ -n "$json" ]; then
		[ -f "$tmp/demo.json" ] || die "demo: the guest wrote no JSON report"
		cp "$tmp/demo.json" "$json"
		log "JSON report: $json"
	fi
	exit 0
fi

# ---- the seed's two Python scripts on the vnpu package ---------------------------------------------------------
if [ "$python" = 1 ]; then
	[ -f "$VNPU_BUILD/python/vnpu/__init__.py" ] || die "demo: $VNPU_BUILD has no Python package (meson -Dpython)"
	ninja -C "$VNPU_BUILD" examples/fixtures.stamp python/vnpu/__init__.py >/dev/null || die "demo: building failed"
	mkdir -p "$outdir"
	py_args=(--count "$count" --backend sim)
	if [ "$functional" = 1 ]; then
		mode_note="functional (every output computed)"
	else
		py_args+=(--timing-only)
		mode_note="timing-only (the device times every op with its timing model and skips the arithmetic)"
	fi
	log "demo --python: examples/python on the sim backend, $count requests per run, device $mode_note"
	for prog in unet_depth yolov8; do
		log "demo --python: $prog.py (compiles the PyTorch model in-process first)"
		extra=()
		[ "$prog" = yolov8 ] && [ "$functional" = 1 ] && extra=(--out-dir "$outdir/python-yolov8")
		PYTHONPATH="$VNPU_BUILD/python${PYTHONPATH:+:$PYTHONPATH}" VNPU_BUILD="$VNPU_BUILD" \
			/usr/bin/python3 "$VNPU_ROOT/examples/python/$prog.py" "${py_args[@]}" "${extra[@]}" \
			--json "$outdir/python-$prog.json" || die "demo: $prog.py failed"
	done
	if [ -n "$json" ]; then
		/usr/bin/python3 -c 'import json, sys
out = {n: json.load(open(f"{sys.argv[1]}/python-{n}.json")) for n in ("unet_depth", "yolov8")}
json.dump(out, open(sys.argv[2], "w"), indent=1)' "$outdir" "$json"
		log "JSON report: $json"
	fi
	exit 0
fi

# ---- the two examples -------------------------------------------------------------------------------------------
ex=$VNPU_BUILD/examples
if ! ninja -C "$VNPU_BUILD" -t targets all 2>/dev/null | grep -q '^examples-models:'; then
	die "demo: this build has no example models (meson: examples need python3-torch, python3-onnx and vnpuc; see the 'Examples' section of meson's summary in $VNPU_BUILD)"
fi
log "building the example models (DeepLabV3+, YOLOv8n: generated once, cached in $VNPU_CACHE/models) and fixtures"
t0=$(date +%s)
ninja -C "$VNPU_BUILD" examples-models | grep -v '^ninja: no work to do' || true
[ "${PIPESTATUS[0]}" -eq 0 ] || die "demo: building the example models failed"
for f in deeplabv3plus-full.vnpu yolov8n-full.vnpu fixtures/nyu_depth_v2 fixtures/coco; do
	[ -e "$ex/$f" ] || die "demo: $ex/$f is missing after 'ninja examples-models'"
done
log "models ready ($(($(date +%s) - t0)) s)"

mkdir -p "$outdir"
rm -f "$outdir"/{unet_depth,yolov8}.{json,trace.json,svg}
mode_args=(--count "$count")
if [ "$functional" = 1 ]; then
	mode_note="functional (every output computed)"
else
	mode_args+=(--timing-only)
	mode_note="timing-only (the device times every op with its timing model and skips the arithmetic)"
fi
log "demo: backend $backend, $count requests per configuration, device $mode_note"

t0=$(date +%s)
if [ "$backend" = sim ]; then
	for prog in unet_depth yolov8; do
		if [ $prog = unet_depth ]; then m=$ex/deeplabv3plus-full.vnpu d=$ex/fixtures/nyu_depth_v2
		else m=$ex/yolov8n-full.vnpu d=$ex/fixtures/coco; fi
		extra=()
		[ "$functional" = 1 ] && extra=(--out-dir "$outdir/$prog")
		"$ex/$prog" --model "$m" --data "$d" --backend sim "${mode_args[@]}" "${extra[@]}" \
			--json "$outdir/$prog.json" --trace "$outdir/$prog.trace.json" --svg "$outdir/$prog.svg"
	done
else
	# One boot runs both programs. The guest gets the models and fixtures through --share, writes its reports
	# to /out, and the VM runner copies them back. Timing-only is the device's power-on mode (a QEMU property).
	props=
	[ "$functional" = 1 ] || props=timing-only=on
	# shellcheck disable=SC2016 # expanded by the guest's shell
	guest_script='set -e
for prog in unet_depth yolov8; do
	if [ $prog = unet_depth ]; then m=deeplabv3plus-full.vnpu d=nyu_depth_v2; else m=yolov8n-full.vnpu d=coco; fi
	extra=
	[ "$FUNCTIONAL" = 1 ] && extra="--out-dir /out/$prog"
	$prog --model /opt/vnpu/share/$m --data /opt/vnpu/share/fixtures/$d --backend kernel "$@" $extra \
		--json /out/$prog.json --trace /out/$prog.trace.json --svg /out/$prog.svg
done'
	# Functional runs are bounded by the host CPU: allow ~2 s per DeepLabV3+ inference in the VM.
	timeout=900
	[ "$functional" = 1 ] && timeout=$((900 + count * 5 * 3))
	"$VNPU_ROOT/vnpu" vm --devices 1 --mem 3G --timeout "$timeout" ${props:+--device-props "$props"} \
		--share "$ex/deeplabv3plus-full.vnpu" --share "$ex/yolov8n-full.vnpu" --share "$ex/fixtures" \
		--out "$outdir" -- env FUNCTIONAL="$functional" sh -c "$guest_script" demo "${mode_args[@]}"
fi
elapsed=$(($(date +%s) - t0))
for prog in unet_depth yolov8; do
	[ -f "$outdir/$prog.json" ] || die "demo: $prog wrote no report ($outdir/$prog.json)"
done

report_args=(--dir "$outdir" --backend "$backend" --count "$count" --elapsed "$elapsed")
[ "$functional" = 1 ] || report_args+=(--timing-only)
[ -n "$json" ] && report_args+=(--json "$json")
/usr/bin/python3 "$VNPU_ROOT/examples/demo/report.py" "${report_args[@]}"
