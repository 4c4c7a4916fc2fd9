#!/usr/bin/env bash
# ./vnpu fuzz [--time S] [--jobs N] [-- LIBFUZZER-ARGS...]: QEMU's generic-fuzz target (tests/qtest/fuzz/) aimed
# at the vnpu device, built with Debian's clang and libFuzzer (plus AddressSanitizer and UBSan) in a build dir of
# its own in the cached QEMU tree ($QEMU_SRC/build-fuzz; the VM's QEMU build is not touched), then run for a
# bounded time. Reports executions, coverage and crashes; crash inputs land in $VNPU_CACHE/fuzz/crashes. Not part
# of ./vnpu test (a benchmark-style command: its result depends on how long it runs).
#
# generic-fuzz turns each input into MMIO/PIO accesses to the device's BARs, PCI config writes, clock steps
# and DMA contents served to the device from the input itself; between inputs it resets the machine (the
# device's Resettable path). QEMU_FUZZ_OBJECTS limits the accesses to the vnpu device's regions.
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

time_s=120
jobs=1
extra=()
while [ $# -gt 0 ]; do
	case $1 in
	--time) time_s=$2; shift 2 ;;
	--jobs) jobs=$2; shift 2 ;;
	--) shift; extra=("$@"); break ;;
	*) die "usage: ./vnpu fuzz [--time SECONDS] [--jobs N] [-- LIBFUZZER-ARGS...]" ;;
	esac
done

command -v clang >/dev/null || die "clang is needed (apt-get install clang libclang-rt-dev)"
ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 ||
	die "libFuzzer is needed (apt-get install libclang-rt-dev)"

# Fetch and graft the device exactly as for the VM's QEMU (same source tree, same grafted files).
"$VNPU_ROOT/scripts/qemu-build.sh"

FUZZ_BUILD=$QEMU_SRC/build-fuzz
FUZZ_BIN=$FUZZ_BUILD/qemu-fuzz-x86_64
FUZZ_ARGS=(--cc=clang --cxx=clang++ --enable-fuzzing --enable-asan --enable-ubsan
	--python=/usr/bin/python3 --target-list=x86_64-softmmu
	--without-default-features --without-default-devices --with-devices-x86_64=vnpu
	--disable-download --disable-fdt --enable-tcg --disable-docs --disable-tools
	--disable-guest-agent --disable-install-blobs --disable-werror
	# The device set (qemu-device/vnpu-devices.mak) includes virtio-9p, which needs these.
	--enable-virtfs --enable-attr)
want=$(printf '%s\n' "${FUZZ_ARGS[@]}")
if ! [ -f "$FUZZ_BUILD/build.ninja" ] || [ "$(cat "$FUZZ_BUILD/.vnpu-configure-args" 2>/dev/null)" != "$want" ]; then
	log "configuring QEMU's fuzzing build (clang, libFuzzer, ASan, UBSan) in $FUZZ_BUILD"
	rm -rf "$FUZZ_BUILD"
	mkdir -p "$FUZZ_BUILD"
	(cd "$FUZZ_BUILD" && ../configure "${FUZZ_ARGS[@]}" >configure.log 2>&1) ||
		{ tail -n 40 "$FUZZ_BUILD/configure.log"; die "configure failed (log: $FUZZ_BUILD/configure.log)"; }
	printf '%s\n' "$want" >"$FUZZ_BUILD/.vnpu-configure-args"
fi
log "building qemu-fuzz-x86_64 (cold: ~10-20 min on 2 cores)"
t0=$SECONDS
(cd "$FUZZ_BUILD" && NINJA_STATUS='[%f/%t %es] ' ninja qemu-fuzz-x86_64 2>&1 |
	awk '/^\[[0-9]+\/[0-9]+ / { split($1, a, /[\[\/]/); if (a[2] % 100 == 0 || a[2] == a[3]) { print; fflush() } next }
	     /^ninja: no work/ { next } { print; fflush() }')
[ -x "$FUZZ_BIN" ] || die "the fuzzing build produced no $FUZZ_BIN"
log "fuzzing build ready in $((SECONDS - t0)) s"

out=$VNPU_CACHE/fuzz
mkdir -p "$out/corpus" "$out/crashes"
log "fuzzing the vnpu device for ${time_s} s (corpus $out/corpus, crashes $out/crashes)"
# -max_total_time bounds the run; -timeout catches an input that hangs the device (a bounded-wait bug);
# -rss_limit_mb an input that makes QEMU allocate without bound (host-mem-max, ring sizes...).
# The device's default host-mem-max (1G) is lowered to keep each input's memory far under the RSS limit.
set +e
cd "$out" # libFuzzer's -jobs writes fuzz-N.log into the working directory
QEMU_FUZZ_ARGS="-machine q35 -nodefaults -device vnpu,devmem-size=64M,host-mem-max=64M $(qemu_fw_args)" \
	QEMU_FUZZ_OBJECTS="vnpu" \
	ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	timeout $((time_s + 600)) "$FUZZ_BIN" --fuzz-target=generic-fuzz \
	-max_total_time="$time_s" -timeout=30 -rss_limit_mb=4096 -jobs="$jobs" -workers="$jobs" \
	-artifact_prefix="$out/crashes/" -print_final_stats=1 "${extra[@]}" "$out/corpus" \
	>"$out/fuzz.log" 2>&1
rc=$?
set -e
execs=$(grep -E '^stat::number_of_executed_units' "$out/fuzz.log" | awk '{s += $2} END {print s + 0}')
rate=$(grep -E '^stat::average_exec_per_sec' "$out/fuzz.log" | awk '{s += $2} END {print s + 0}')
cov=$(grep -oE 'cov: [0-9]+' "$out/fuzz.log" | tail -n 1 | awk '{print $2}')
crashes=$(find "$out/crashes" -type f | wc -l)
grep -E 'ERROR: (AddressSanitizer|libFuzzer|UndefinedBehaviorSanitizer)|runtime error:|SUMMARY:' "$out/fuzz.log" |
	head -n 20 || true
printf 'fuzz: %s s, %s executions (%s/s), coverage %s edges, %s crash input(s) in %s, libFuzzer exit %s\n' \
	"$time_s" "$execs" "$rate" "${cov:-?}" "$crashes" "$out/crashes" "$rc"
printf 'fuzz: full log %s\n' "$out/fuzz.log"
[ "$rc" -eq 0 ] && [ "$crashes" -eq 0 ]
