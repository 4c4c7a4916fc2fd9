#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""YOLOv8 over a COCO-style dataset split across the workers of a Dask cluster (vnpu.dask, docs/scale-out.md).

    dask_batch.py [--scheduler tcp://HOST:8786 | --workers K] [--model M.vnpu] [--count 100] [--batch 8]

The client letterboxes the images (as examples/python/yolov8.py does), registers the model on every worker
(shipped once; one AsyncRuntime per worker on its devices), sends the samples as batches of --batch and
decodes the detections of the outputs it gets back. It prints each worker's samples and throughput (samples
per second while it had a batch running) and the total throughput (samples / wall time of the whole map).
Without --scheduler it starts a LocalCluster of --workers processes with NPU=1 each (sim backend unless a
/dev/accel device exists). --check compares every output with a single-process run on the client.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image

import vnpu
import vnpu.dask as vd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import example_common  # noqa: E402

BUILD = os.environ.get("VNPU_BUILD", os.path.join(HERE, "..", "..", "build"))


def default_model():
    return os.path.join(BUILD, "examples", "yolov8n-tiny.vnpu")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheduler", help="address of a running dask-scheduler (default: a LocalCluster)")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    ap.add_argument("--model", default=default_model(), help="a compiled YOLOv8 .vnpu (default: the tiny one)")
    ap.add_argument("--data", default=example_common.fixtures("coco"),
                    help="COCO root with val2017/ and annotations/instances_val2017.json; default: the fixtures")
    ap.add_argument("--count", type=int, default=100, help="images (cycled if the data has fewer)")
    ap.add_argument("--batch", type=int, default=8, help="samples per Dask task")
    ap.add_argument("--parallel", type=int, default=2, help="AsyncRuntime parallel on each worker")
    ap.add_argument("--backend", default=None, help="sim or kernel (default: kernel if a device exists)")
    ap.add_argument("--timing-only", action="store_true", help="devices time every op, skip the arithmetic")
    ap.add_argument("--check", action="store_true", help="compare the outputs with a single-process run")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args()

    from distributed import Client, LocalCluster
    import yolov8  # letterbox() and decode(), shared with the single-process example

    compiled = vnpu.CompiledModel(args.model)
    size = compiled.inputs[0].shape[-1]
    with open(os.path.join(args.data, "annotations", "instances_val2017.json")) as f:
        coco = json.load(f)
    images = sorted(coco["images"], key=lambda im: im["id"])[:args.count]
    if not images:
        sys.exit(f"dask_batch: no images in {args.data}")
    prepared = []
    for im in images:
        with Image.open(os.path.join(args.data, "val2017", im["file_name"])) as img:
            x, lb = yolov8.letterbox(img, size)
        prepared.append((im, x, lb))
    work = [prepared[i % len(prepared)] for i in range(args.count)]

    cluster = None
    if args.scheduler:
        client = Client(args.scheduler, timeout=60)
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=2, processes=True,
                               resources={"NPU": 1}, dashboard_address=":0", silence_logs=40)
        client = Client(cluster)
    try:
        nworkers = len(client.scheduler_info()["workers"])
        options = dict(parallel=args.parallel, timing_only=args.timing_only)
        if args.backend:
            options["backend"] = args.backend
        t0 = time.perf_counter()
        vd.register(client, compiled, **options)
        print(f"registered {os.path.basename(args.model)} on {nworkers} workers in "
              f"{time.perf_counter() - t0:.1f} s")
        vd.gather(vd.map(client, [work[0][1]] * (2 * nworkers), batch=1), timeout=300)  # warm-up
        vd.stats(client, reset=True)

        t0 = time.perf_counter()
        outputs = vd.gather(vd.map(client, [x for _, x, _ in work], batch=args.batch), timeout=3600)
        wall = time.perf_counter() - t0
        per_worker = vd.stats(client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

    report = {"model": os.path.basename(args.model), "count": args.count, "batch": args.batch,
              "workers": nworkers, "wall_s": wall, "total_ips": args.count / wall, "per_worker": per_worker}
    for address, s in sorted(per_worker.items()):
        print(f"  {address}: {s['samples']:5d} samples in {s['batches']} batches, devices {s['devices']}, "
              f"{s['throughput']:.1f} inferences/s while busy ({s['busy_s']:.2f} s)")
    print(f"total: {args.count} images on {nworkers} workers in {wall:.2f} s, {report['total_ips']:.1f} "
          f"inferences/s")
    if not args.timing_only:
        if args.check:
            with vnpu.Runtime(compiled, **{k: v for k, v in options.items() if k != "parallel"}) as rt:
                for (_, x, _), y in zip(work, outputs):
                    if not np.array_equal(rt.run(x), y):
                        sys.exit("dask_batch: a worker's output differs from the single-process run")
            print("outputs equal a single-process run")
        detections = sum(len(yolov8.decode(y, lb, im["width"], im["height"])) for (im, _, lb), y in
                         zip(work, outputs))
        report["detections"] = detections
        print(f"{detections} detections on {len(work)} images")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
