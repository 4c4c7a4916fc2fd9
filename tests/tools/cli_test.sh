#!/bin/sh
# The command-line contracts end to end: vnpuc MODEL.onnx -o M.vnpu [--input ...], vnpuc --info, and
# vnpu-run M.vnpu --input NAME=FILE.npy --output-dir DIR --backend sim, checked against PyTorch's output; and
# their errors on bad input (clear message, non-zero exit, never a crash).
# usage: cli_test.sh VNPUC VNPU_RUN MODEL.onnx INPUT.npy REF.npy
set -u
vnpuc=$1 run=$2 onnx=$3 input=$4 ref=$5
tmp=$(mktemp -d /tmp/vnpu-cli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "cli_test: $*"; exit 1; }
# Expect a command to fail cleanly: non-zero, not killed by a signal, with a message on stderr.
expect_error() {
	"$@" >"$tmp/out" 2>"$tmp/err"
	rc=$?
	[ $rc -ne 0 ] || fail "'$*' succeeded"
	[ $rc -lt 128 ] || fail "'$*' died with signal $((rc - 128))"
	[ -s "$tmp/err" ] || fail "'$*' failed without a message"
	echo "ok (exit $rc): $(head -n 1 "$tmp/err")"
}

"$vnpuc" "$onnx" -o "$tmp/m.vnpu" --input images:1x3x160x160:f32 || fail "vnpuc failed"
"$vnpuc" --info "$tmp/m.vnpu" >"$tmp/info" || fail "vnpuc --info failed"
grep -q 'images  f32 1x3x160x160' "$tmp/info" || fail "vnpuc --info does not show the input: $(cat "$tmp/info")"
grep -q 'output0  f32 1x84x525' "$tmp/info" || fail "vnpuc --info does not show the output"

"$run" "$tmp/m.vnpu" --input "images=$input" --output-dir "$tmp/out.d" --backend sim || fail "vnpu-run failed"
[ -f "$tmp/out.d/output0.npy" ] || fail "vnpu-run wrote no output0.npy"
/usr/bin/python3 "$(dirname "$0")/npy_close.py" "$tmp/out.d/output0.npy" "$ref" || fail "vnpu-run output differs from PyTorch"

# Bad input: clear errors, nothing written, no crash.
expect_error "$vnpuc" "$tmp/missing.onnx" -o "$tmp/x.vnpu"
expect_error "$vnpuc" "$onnx" -o "$tmp/x.vnpu" --input images:1xAx160:f32
head -c 1000 "$tmp/m.vnpu" >"$tmp/truncated.vnpu"
expect_error "$vnpuc" --info "$tmp/truncated.vnpu"
expect_error "$run" "$tmp/truncated.vnpu" --input "images=$input" --output-dir "$tmp/o2" --backend sim
printf 'not a model at all' >"$tmp/foreign.vnpu"
expect_error "$run" "$tmp/foreign.vnpu" --input "images=$input" --output-dir "$tmp/o3" --backend sim
expect_error "$run" "$tmp/m.vnpu" --input "wrong_name=$input" --output-dir "$tmp/o4" --backend sim
expect_error "$run" "$tmp/m.vnpu" --input "images=$ref" --output-dir "$tmp/o5" --backend sim
[ ! -e "$tmp/x.vnpu" ] || fail "a failed vnpuc left an output file behind"
echo "cli_test: all passed"
