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
# The full stack end to end, bit-exact against the CPU reference.
run vnpu-demo --backend kernel --count 50
exit $fail
