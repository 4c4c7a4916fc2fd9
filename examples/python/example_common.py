# SPDX-License-Identifier: MIT
"""What the two ported seed scripts (unet_depth.py, yolov8.py) share: where the repo's fixtures are, and the
seed's sync-vs-async measurement (vnpu.Runtime one sample at a time, then AsyncRuntime with asyncio.gather)."""
import asyncio
import os
import sys
import time

import numpy as np

import vnpu

HERE = os.path.dirname(os.path.abspath(__file__))


def fixtures(name):
    """The repo's fixture dataset `name` (nyu_depth_v2, coco) in the build tree ($VNPU_BUILD, else build/)."""
    build = os.environ.get("VNPU_BUILD", os.path.join(HERE, "..", "..", "build"))
    return os.path.join(build, "examples", "fixtures", name)


async def infer(runtime, x):
    return await runtime.async_run(x)


async def run_async(runtime, inputs):
    tasks = [infer(runtime, x) for x in inputs]
    return await asyncio.gather(*tasks)


def sync_vs_async(script, compiled, inputs, options, async_options=None):
    """Every input through vnpu.Runtime(compiled, **options), one at a time, then through
    vnpu.AsyncRuntime(compiled, **options, **async_options) with asyncio.gather; one warm-up run each. Unless
    options has timing_only set, the two runs' outputs must be equal (else `script` exits saying so).
    Returns (async outputs, sync seconds, async seconds)."""
    runtime = vnpu.Runtime(compiled, **options)
    runtime.run(inputs[0])  # warm-up
    t0 = time.perf_counter()
    outputs = [runtime.run(x) for x in inputs]
    sync_s = time.perf_counter() - t0
    runtime.close()

    runtime = vnpu.AsyncRuntime(compiled, **options, **(async_options or {}))
    runtime.run(inputs[0]).wait()  # warm-up
    t0 = time.perf_counter()
    results = asyncio.run(run_async(runtime, inputs))
    async_s = time.perf_counter() - t0
    runtime.close()
    if not options.get("timing_only") and not all(np.array_equal(a, b) for a, b in zip(outputs, results)):
        sys.exit(f"{script}: sync and async outputs differ")
    return results, sync_s, async_s
