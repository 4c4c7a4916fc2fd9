#!/usr/bin/env bash
# ./vnpu bench                 the standard benchmark set, each number measured in one run:
#                                1. runtime pipeline, balanced synthetic model (all stages 2 ms), sync vs async,
#                                   sim backend on the host
#                                2. the same on the kernel backend in the VM under -icount (exact device time)
#                                3. driver: no-op job round trip and rate, io_uring vs ioctl, as ratios to an
#                                   io_uring NOP measured in the same guest
# ./vnpu bench ARGS...         vnpu-bench ARGS on the host (sim backend); see vnpu-bench --help
# ./vnpu bench --vm ARGS...    vnpu-bench ARGS in the VM (kernel backend)
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

"$VNPU_ROOT/scripts/setup.sh" >/dev/null
bench=$VNPU_BUILD/tools/vnpu-bench
[ -x "$bench" ] || die "bench: $bench was not built"

if [ $# -gt 0 ]; then
	if [ "$1" = --vm ]; then
		shift
		exec "$VNPU_ROOT/vnpu" vm --timeout 1800 -- vnpu-bench "$@"
	fi
	exec "$bench" "$@"
fi

synth=prep_ms=2,h2d_ms=2,compute_ms=2,d2h_ms=2
log "1/4 runtime pipeline on sim: $synth (sync, then async parallel 2)"
# The sim engine really copies what it models; at the default 13 GB/s a 2 ms transfer is 26 MB, which this
# host cannot copy at modelled speed while prep threads spin, so the sim runs model 1 GB/s links instead.
export VNPU_SIM_H2D_MBPS=1000 VNPU_SIM_D2H_MBPS=1000
"$bench" --backend sim --synthetic "$synth" --mode sync --count 100
"$bench" --backend sim --synthetic "$synth" --mode async --parallel 2 --count 300
unset VNPU_SIM_H2D_MBPS VNPU_SIM_D2H_MBPS

log "2/4 runtime pipeline on the kernel backend, in the VM under icount: $synth"
"$VNPU_ROOT/vnpu" vm --icount --timeout 1800 -- sh -c "
	vnpu-bench --backend kernel --synthetic $synth --mode sync --count 100 &&
	vnpu-bench --backend kernel --synthetic $synth --mode async --parallel 2 --count 300"

log "3/4 driver: no-op jobs through io_uring vs ioctl, against an io_uring NOP"
"$VNPU_ROOT/vnpu" vm --timeout 1800 -- vnpu-driver-bench --jobs 2000 --depth 64

log "4/4 host micro-benchmarks: engine, kernels (reference vs oneDNN), runtime on sim"
microbench=$VNPU_BUILD/tests/bench/vnpu-microbench
[ -x "$microbench" ] || die "bench: $microbench was not built (is libbenchmark-dev installed?)"
"$microbench" --benchmark_min_time=0.2
