#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Device compute time of conv-heavy models through vnpu's kernels vs PyTorch CPU, on this host, in one run.

    /usr/bin/python3 tests/compiler/perf_vs_torch.py BUILD_DIR [--iters N] [--models deeplabv3plus,yolov8n]

For each model (the examples' DeepLabV3+/ResNet-50 at 512x512 and YOLOv8n at 640x640, examples/models/): build
it in PyTorch, export ONNX (opset 13), compile with BUILD_DIR/compiler/vnpuc, time the compiled program's
kernels with BUILD_DIR/tests/compiler/vnpu-kernel-bench (the compute engine's functional work for one EXEC:
oneDNN convolution/pooling/matmul + reference kernels for the rest), and time the same nn.Module under
torch.no_grad() with the same number of threads (--threads, default 1: the machine is shared). Reports medians and the ratio vnpu/torch.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples", "models"))
import gen_model  # noqa: E402


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def build_model(name, vnpuc, tmp):
    """The examples' full-size model `name` (seeded weights, eval mode), its input and, compiled by `vnpuc` from
    its ONNX export (opset gen_model.OPSET) into directory tmp, the path of its .vnpu file."""
    ctor, shape, in_name, out_name = gen_model.MODELS[(name, "full")]
    model = ctor()
    gen_model.init_weights(model, seed=7)
    model.eval()
    x = gen_model.synthetic_image(shape, seed=2, nhwc=(name == "deeplabv3plus"))
    onnx_path = os.path.join(tmp, name + ".onnx")
    vnpu_path = os.path.join(tmp, name + ".vnpu")
    torch.onnx.export(model, x, onnx_path, opset_version=gen_model.OPSET, input_names=[in_name],
                      output_names=[out_name], do_constant_folding=True)
    subprocess.run([vnpuc, onnx_path, "-o", vnpu_path], check=True)
    return model, x, vnpu_path


def interleaved(bench_cmd, env, model, x, iters):
    """Alternates one vnpu run and one torch run, so both see the same (shared, noisy) machine."""
    proc = subprocess.Popen(bench_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("vnpu-kernel-bench did not start")
    vnpu, ref = [], []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(iters):
            proc.stdin.write("run\n")
            proc.stdin.flush()
            vnpu.append(float(proc.stdout.readline()))
            t0 = time.perf_counter()
            model(x)
            ref.append((time.perf_counter() - t0) * 1e3)
    proc.stdin.close()
    proc.wait()
    ratios = [v / t for v, t in zip(vnpu, ref)]
    return median(vnpu), median(ref), median(ratios)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build_dir")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--models", default="deeplabv3plus,yolov8n")
    ap.add_argument("--threads", type=int, default=1, help="threads for both (torch.set_num_threads, OMP_NUM_THREADS)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    vnpuc = os.path.join(args.build_dir, "compiler", "vnpuc")
    bench = os.path.join(args.build_dir, "tests", "compiler", "vnpu-kernel-bench")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, x, vnpu_path = build_model(name, vnpuc, tmp)
            out = subprocess.run([bench, vnpu_path, "--iters", "1"], check=True, capture_output=True, text=True,
                                 env=env).stdout
            gflop = json.loads(out)["gflop"]
            vm, tm, ratio = interleaved([bench, vnpu_path, "--serve"], env, model, x, args.iters)
            rows.append((name, gflop, vm, tm, ratio))
    print(f"threads: {args.threads} (torch.set_num_threads and OMP_NUM_THREADS for oneDNN); torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs")
    print("medians over interleaved runs; ratio = median of per-pair vnpu/torch (< 1: vnpu faster)")
    print(f"{'model':16} {'GFLOP':>8} {'vnpu ms':>10} {'torch ms':>10} {'vnpu/torch':>11}")
    for name, gf, vm, tm, ratio in rows:
        print(f"{name:16} {gf:8.2f} {vm:10.1f} {tm:10.1f} {ratio:11.2f}")


if __name__ == "__main__":
    main()
