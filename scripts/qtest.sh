#!/usr/bin/env bash
# ./vnpu test stage: the device's register-level suite (tests/qtest/vnpu-test.c) in QEMU's qtest framework,
# built in the cached QEMU tree next to the device (scripts/qemu-build.sh grafts it) and run against the
# qemu-system-x86_64 built there. Any extra arguments go to the test binary (e.g. -p /vnpu/signal).
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"

"$VNPU_ROOT/scripts/qemu-build.sh"
cd "$QEMU_BUILD"
log "building the qtest suite (tests/qtest/vnpu-test)"
ninja tests/qtest/vnpu-test | grep -v '^ninja: no work to do' || true
[ "${PIPESTATUS[0]}" -eq 0 ] || die "qtest build failed"
# libqtest takes the target from the binary's name: a wrapper of that name adds the firmware paths.
mkdir -p vnpu-qtest
printf '#!/bin/sh\nexec %s %s "$@"\n' "$QEMU_BIN" "$(qemu_fw_args)" >vnpu-qtest/qemu-system-x86_64
chmod +x vnpu-qtest/qemu-system-x86_64
t0=$SECONDS
# Bounded: every wait in the suite is, and the whole run must not hang a test run.
QTEST_QEMU_BINARY=./vnpu-qtest/qemu-system-x86_64 timeout 900 ./tests/qtest/vnpu-test --tap -k "$@"
log "qtest suite passed in $((SECONDS - t0)) s"
