#!/bin/sh
# In-guest test driver (installed as /opt/vnpu/bin/vnpu-vm-tests by ./vnpu vm). Runs every suite that needs
# the real driver; the host checks the kernel log afterwards.
fail=0
run() {
	echo "==== $* ===="
	if ! "$@"; then
		echo "==== FAILED: $* ===="
		fail=1
	fi
}
for t in driver_test runtime_test; do
	command -v "$t" >/dev/null || { echo "vnpu-vm-tests: $t missing from the guest"; fail=1; }
done
[ -e /dev/accel/accel0 ] || { echo "vnpu-vm-tests: no /dev/accel/accel0"; exit 1; }
run driver_test --gtest_brief=1
run env VNPU_BACKEND=kernel runtime_test --gtest_brief=1
# The same conformance suite on the non-io_uring path (SUBMIT + WAIT ioctls).
run env VNPU_BACKEND=kernel VNPU_SUBMIT=ioctl runtime_test --gtest_brief=1
# vnpu-smi reads the device from sysfs and the process using it from fdinfo: run a long benchmark, look.
smi_sees_device_and_process() {
	vnpu-bench --backend kernel --synthetic prep_ms=0,h2d_ms=1,compute_ms=1,d2h_ms=1 --count 1000000 --quiet \
		>/dev/null &
	bench=$!
	# Until the benchmark has started (it allocates and clears its memory first; seconds under load), or 20 s.
	i=0
	while [ "$i" -lt 20 ]; do
		i=$((i + 1))
		sleep 1
		out=$(vnpu-smi --json)
		echo "$out" | grep -q '"util": {"h2d": 0\.[0-9]*[1-9]' && break
	done
	vnpu-smi
	kill "$bench"
	wait "$bench" 2>/dev/null
	echo "$out" | grep -q '"accel": "accel0"' || { echo "vnpu-smi: no accel0"; return 1; }
	echo "$out" | grep -q "\"pid\": $bench, \"comm\": \"vnpu-bench\"" || { echo "vnpu-smi: pid $bench missing"; return 1; }
	echo "$out" | grep -q '"queues": \[{"index": 0' || { echo "vnpu-smi: no queue table"; return 1; }
	echo "$out" | grep -q '"util": {"h2d": 0\.[0-9]*[1-9]' || { echo "vnpu-smi: no H2D utilisation"; return 1; }
}
run smi_sees_device_and_process
# The full stack end to end, bit-exact against the CPU reference.
run vnpu-demo --backend kernel --count 50
exit $fail
