#!/usr/bin/env bash
# ./vnpu bench [ARGS...]: the benchmark tool on the host (sim backend) — vnpu-bench, once it exists.
set -euo pipefail
. "$VNPU_ROOT/scripts/lib.sh"
"$VNPU_ROOT/scripts/build.sh" >/dev/null
[ -x "$VNPU_BUILD/tools/vnpu-bench" ] || die "bench: vnpu-bench is not part of this build yet (see issue 5)"
exec "$VNPU_BUILD/tools/vnpu-bench" "$@"
