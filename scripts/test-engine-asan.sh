#!/usr/bin/env bash
# ./vnpu test stage: the device engine's host suite and the bounded .vnpu mutation fuzzer built with
# AddressSanitizer + UBSan (also float-cast-overflow, which -fsanitize=undefined leaves out) in a build directory
# shared with the host suites' ASan stage of scripts/test.sh (build-asan, configured with the same options; only
# what the suites run need is built there). Any sanitizer report fails the stage.
# Environment: VNPU_FUZZ_ITERATIONS (default 20000), VNPU_FUZZ_SEED (default 1).
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

B=${VNPU_ASAN_ENGINE_BUILD:-$VNPU_BUILD-asan}
if [ ! -f "$B/build.ninja" ]; then
	log "configuring $B (ASan + UBSan)"
	setup_log=$(mktemp /tmp/vnpu-asan-setup.XXXXXX)
	meson setup "$B" "$VNPU_ROOT" -Dtests=enabled -Db_sanitize=address,undefined -Db_lundef=false \
		-Dc_args=-fsanitize=float-cast-overflow -Dcpp_args=-fsanitize=float-cast-overflow \
		-Dc_link_args=-fsanitize=float-cast-overflow -Dcpp_link_args=-fsanitize=float-cast-overflow \
		>"$setup_log" 2>&1 || { tail -n 30 "$setup_log" >&2; die "meson setup of $B failed"; }
	rm -f "$setup_log"
fi
ninja -C "$B" -j"$(nproc)" tests/engine/engine_test tests/engine/program_fuzz | grep -v '^\[' || true
[ "${PIPESTATUS[0]}" -eq 0 ] || die "building the sanitizer engine suite failed"

# halt_on_error: the first report aborts with a non-zero status; abort_on_error keeps the stack for a core.
export ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
"$B/tests/engine/engine_test" --gtest_brief=1
"$B/tests/engine/program_fuzz" --iterations "${VNPU_FUZZ_ITERATIONS:-20000}" --seed "${VNPU_FUZZ_SEED:-1}"
