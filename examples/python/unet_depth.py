#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Depth estimation on NYU Depth V2 with vnpu: the seed's UNet script, ported to `vnpu`.

    unet_depth.py [--data DIR] [--count 100] [--variant full|tiny] [--timing-only] [--backend sim|kernel]

The seed's steps, in its order: read NYU Depth V2 .h5 files with h5py (`rgb` uint8 [3,480,640], `depth`
float32 [480,640]), cv2.resize to 512x512, float conversion and ImageNet normalisation, compile the PyTorch
model with compile_from_torch at input_info=[("x", [1, 512, 512, 3], np.float32)], run 100 samples through
AsyncRuntime(compiled, parallel=2) with asyncio.gather, and print sync vs async throughput. The model is the
project's DeepLabV3+ / ResNet-50 (examples/models; no trained weights are available, so the metrics show the
pipeline works, not a good model). Data: the repo's fixtures by default, the real dataset with --data.
--timing-only: the device times every op but skips the arithmetic (one functional 512x512 inference costs
~0.7 s of this host's CPU); metrics are then skipped.
"""
import argparse
import glob
import json
import os
import sys
import time

import cv2
import h5py
import numpy as np

import vnpu

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import example_common  # noqa: E402
import example_models  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_sample(path, size):
    with h5py.File(path, "r") as f:
        rgb = np.array(f["rgb"])  # [3, H, W] uint8
        depth = np.array(f["depth"])  # [H, W] metres, 0 = no reading
    rgb = np.transpose(rgb, (1, 2, 0))
    image = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    image = image.astype(np.float32) / 255.0
    image = (image - MEAN) / STD
    x = np.ascontiguousarray(image[np.newaxis], dtype=np.float32)  # [1, size, size, 3]
    gt = cv2.resize(depth, (size, size), interpolation=cv2.INTER_NEAREST)
    return x, gt


def depth_metrics(pred, gt):
    pred = pred.reshape(gt.shape)
    valid = (gt > 1e-3) & (gt <= 10.0)
    p, g = np.maximum(pred[valid], 1e-3), gt[valid]
    ratio = np.maximum(p / g, g / p)
    return {"abs_rel": float(np.mean(np.abs(p - g) / g)), "rmse": float(np.sqrt(np.mean((p - g) ** 2))),
            "delta1": float(np.mean(ratio < 1.25))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=example_common.fixtures("nyu_depth_v2"), help="NYU Depth V2 directory of .h5 files (searched "
                    "recursively); default: the repo's fixtures")
    ap.add_argument("--count", type=int, default=100, help="samples per run (cycled if the data has fewer)")
    ap.add_argument("--variant", choices=("full", "tiny"), default="full",
                    help="full: the seed's 1x512x512x3 model; tiny: a narrow 128x128 one (tests)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--backend", default=None, help="sim or kernel (default: kernel if a device exists)")
    ap.add_argument("--timing-only", action="store_true", help="device times every op, skips the arithmetic")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args()

    files = sorted(glob.glob(os.path.join(args.data, "**", "*.h5"), recursive=True))
    if not files:
        sys.exit(f"unet_depth: no .h5 files under {args.data}")

    model, shape = example_models.build("deeplabv3plus", args.variant)
    t0 = time.perf_counter()
    compiled = vnpu.compile_from_torch(model, input_info=[("x", shape, np.float32)])
    print(f"compiled {compiled} in {time.perf_counter() - t0:.1f} s")

    samples = [load_sample(f, shape[1]) for f in files[:args.count]]
    inputs = [samples[i % len(samples)][0] for i in range(args.count)]
    options = dict(backend=args.backend, timing_only=args.timing_only)

    results, sync_s, async_s = example_common.sync_vs_async("unet_depth", compiled, inputs, options,
                                                            dict(parallel=args.parallel))

    report = {"model": f"deeplabv3plus-{args.variant}", "count": args.count, "parallel": args.parallel,
              "timing_only": args.timing_only, "sync_ips": args.count / sync_s, "async_ips": args.count / async_s}
    print(f"sync : {args.count} samples in {sync_s:.2f} s, {report['sync_ips']:.1f} inferences/s")
    print(f"async: {args.count} samples in {async_s:.2f} s, {report['async_ips']:.1f} inferences/s "
          f"(parallel={args.parallel}, x{sync_s / async_s:.2f})")
    if not args.timing_only:
        m = [depth_metrics(results[i], samples[i % len(samples)][1]) for i in range(len(samples))]
        report["metrics"] = {k: float(np.mean([x[k] for x in m])) for k in m[0]}
        print("depth vs ground truth: abs_rel {abs_rel:.3f}, rmse {rmse:.3f} m, delta1 {delta1:.3f}"
              .format(**report["metrics"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
