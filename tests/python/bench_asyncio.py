#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Python asyncio throughput against vnpu-bench, same model, mode and parallel, in one run (not a test).

    PYTHONPATH=build/python /usr/bin/python3 tests/python/bench_asyncio.py [--vnpu-bench build/tools/vnpu-bench]
        [--synthetic prep_ms=2,h2d_ms=2,compute_ms=2,d2h_ms=2] [--parallel 2] [--count 300] [--repeat 3]

For each configuration, alternately (--repeat times): `vnpu-bench --synthetic SPEC --mode async` (C++, up to
depth + parallel + 2 requests in flight) and the same synthetic model (bytes sized exactly as vnpu-bench sizes
them from the device's timing model) through vnpu.AsyncRuntime from Python: `await asyncio.gather(*[
rt.async_run(x) ...])` of COUNT requests after WARMUP. Throughput is requests / wall time of the gather.
Reports the best of each (least disturbed by other load), the ratio Python / C++, and for the no-op model the
Python overhead per request: 1/python_ips - 1/cpp_ips, in microseconds.
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import vnpu

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("VNPU_BUILD", os.path.join(HERE, "..", "..", "build"))


def parse_spec(spec):
    want = {"prep_ms": 0.0, "h2d_ms": 0.0, "compute_ms": 0.0, "d2h_ms": 0.0}
    for item in spec.split(","):
        k, v = item.split("=")
        want[k] = float(v)
    return want


def bytes_for(ms, mbps, fixed_ns):
    """vnpu-bench's sizing of a synthetic transfer (tools/vnpu-bench.cpp)."""
    ns = ms * 1e6 - fixed_ns
    if ms <= 0 or ns <= 0 or mbps == 0:
        return 4
    return max(4, int(ns * mbps / 1000.0) // 4 * 4)


def synthetic_model(spec, info):
    w = parse_spec(spec)
    return vnpu.CompiledModel.synthetic(
        prep_ms=w["prep_ms"],
        input_bytes=bytes_for(w["h2d_ms"], info["h2d_mbps"], info["cmd_overhead_ns"] + info["h2d_latency_ns"]),
        compute_ms=max(1e-6, w["compute_ms"] - info["cmd_overhead_ns"] / 1e6),
        output_bytes=bytes_for(w["d2h_ms"], info["d2h_mbps"], info["cmd_overhead_ns"] + info["d2h_latency_ns"]))


def python_ips(spec, parallel, depth, count, warmup):
    probe = vnpu.AsyncRuntime(vnpu.CompiledModel.synthetic(compute_ms=0.001), backend="sim")
    info = probe.device_info
    probe.close()
    model = synthetic_model(spec, info)
    x = np.random.default_rng(1).uniform(-1, 1, model.inputs[0].shape).astype(np.float32)
    with vnpu.AsyncRuntime(model, backend="sim", parallel=parallel, max_in_flight=depth) as rt:
        async def main():
            await asyncio.gather(*[rt.async_run(x) for _ in range(warmup)])
            t0 = time.perf_counter()
            await asyncio.gather(*[rt.async_run(x) for _ in range(count)])
            return count / (time.perf_counter() - t0)
        return asyncio.run(main())


def cpp_ips(bench, spec, parallel, depth, count, warmup):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([bench, "--synthetic", spec, "--backend", "sim", "--mode", "async", "--parallel",
                        str(parallel), "--depth", str(depth), "--count", str(count), "--warmup", str(warmup),
                        "--json", f.name, "--quiet"], check=True, stdout=subprocess.DEVNULL)
        return json.load(open(f.name))["throughput_ips"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vnpu-bench", default=os.path.join(BUILD, "tools", "vnpu-bench"))
    ap.add_argument("--synthetic", action="append",
                    help="stage spec as vnpu-bench's (default: the balanced 2 ms model and the no-op model)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    specs = args.synthetic or ["prep_ms=2,h2d_ms=2,compute_ms=2,d2h_ms=2",
                               "prep_ms=0,h2d_ms=0,compute_ms=0,d2h_ms=0"]
    rows = []
    for spec in specs:
        cpp, py = [], []
        for _ in range(args.repeat):
            cpp.append(cpp_ips(args.vnpu_bench, spec, args.parallel, args.depth, args.count, args.warmup))
            py.append(python_ips(spec, args.parallel, args.depth, args.count, args.warmup))
        c, p = max(cpp), max(py)
        row = {"synthetic": spec, "parallel": args.parallel, "depth": args.depth, "count": args.count,
               "cpp_ips": cpp, "python_ips": py, "ratio": p / c,
               "python_overhead_us": (1 / p - 1 / c) * 1e6}
        rows.append(row)
        print(f"{spec:42s} parallel {args.parallel}: vnpu-bench {c:8.1f} ips, Python asyncio.gather {p:8.1f} ips, "
              f"ratio {p / c:.3f}, Python overhead {row['python_overhead_us']:+.1f} us/request "
              f"(runs: C++ {', '.join(f'{v:.0f}' for v in cpp)}; Python {', '.join(f'{v:.0f}' for v in py)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
