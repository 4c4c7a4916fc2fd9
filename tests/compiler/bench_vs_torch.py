#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""One functional inference through the whole sim path against PyTorch's eager and best CPU (TorchScript) modes.

    /usr/bin/python3 tests/compiler/bench_vs_torch.py BUILD_DIR [--threads N] [--iters N] [--models a,b]

A benchmark, not a test (timings on a shared machine are noisy; it asserts nothing about speed). For each model
(the examples' DeepLabV3+/ResNet-50 at 512x512 and YOLOv8n at 640x640, examples/models/, seeded random weights):
export ONNX (opset 13), compile with BUILD_DIR/compiler/vnpuc, and time, interleaved so that all three see the
same machine:
  - vnpu: vnpu.Runtime(backend="sim").run(x) of the Python package in BUILD_DIR/python: input upload, EXEC
    through the simulated device (queue, MMU, compute engine, the program's oneDNN and reference kernels),
    output download, the numpy array returned;
  - eager: the nn.Module under torch.no_grad();
  - jit: torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(m))), PyTorch's own best CPU mode.
All with the same thread count (--threads: OMP_NUM_THREADS for oneDNN, torch.set_num_threads). Prints medians,
the speed-ups eager/vnpu and jit/vnpu (> 1: vnpu faster), and vnpu's largest deviation from eager PyTorch.
"""
import argparse
import os
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build_dir")
    ap.add_argument("--threads", type=int, default=1, help="threads for every contender (default 1: shared machine)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--models", default="deeplabv3plus,yolov8n")
    args = ap.parse_args()
    # Before torch and the extension load their OpenMP runtime.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    build = os.path.abspath(args.build_dir)
    sys.path.insert(0, os.path.join(build, "python"))
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import numpy as np
    import torch
    import perf_vs_torch  # the model set-up shared with the kernel benchmark
    import vnpu

    torch.set_num_threads(args.threads)
    vnpuc = os.path.join(build, "compiler", "vnpuc")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, x, vnpu_path = perf_vs_torch.build_model(name, vnpuc, tmp)
            rt = vnpu.Runtime(vnpu_path, backend="sim")
            xn = np.ascontiguousarray(x.numpy())
            with torch.no_grad():
                jit = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))
                ref = model(x)
                got = rt.run(xn)
                jit(x)
                err = float(np.max(np.abs(got - ref.numpy())))
                scale = float(np.max(np.abs(ref.numpy())))
                times = {"vnpu": [], "eager": [], "jit": []}
                for _ in range(args.iters):
                    for label, fn in (("vnpu", lambda: rt.run(xn)), ("eager", lambda: model(x)),
                                      ("jit", lambda: jit(x))):
                        t0 = time.perf_counter()
                        fn()
                        times[label].append((time.perf_counter() - t0) * 1e3)
            rt.close()
            v, e, j = (perf_vs_torch.median(times[k]) for k in ("vnpu", "eager", "jit"))
            rows.append((name, v, e, j, err, scale))
    print(f"threads: {args.threads}; torch {torch.__version__}; {os.cpu_count()} CPUs; medians of {args.iters} "
          "interleaved runs")
    print(f"{'model':14} {'vnpu sim ms':>12} {'eager ms':>10} {'jit ms':>10} {'eager/vnpu':>11} {'jit/vnpu':>9} "
          f"{'max|vnpu-eager|':>16}")
    for name, v, e, j, err, scale in rows:
        print(f"{name:14} {v:12.1f} {e:10.1f} {j:10.1f} {e / v:11.2f} {j / v:9.2f} {err:9.2e} of {scale:.3g}")


if __name__ == "__main__":
    main()
