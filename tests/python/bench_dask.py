#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Scaling of vnpu.dask (issue 11 item 5): a device-bound synthetic model over K = 1, 2, 4 Dask workers, one sim
device each, against K x one worker; and the scheduler's overhead per sample against the same model run
directly on one AsyncRuntime in this process.

    PYTHONPATH=build/python /usr/bin/python3 tests/python/bench_dask.py [--compute-ms 5] [--per-worker 300]
        [--batch 32] [--repeat 2] [--workers 1,2,4] [--backend sim|kernel] [--pin] [--json FILE]

Each configuration is timed --repeat times (best kept) after a warm-up batch per worker. The synthetic model
(vnpu.CompiledModel.synthetic) spends --compute-ms of modelled device time per request and almost nothing
on the host, so a worker's throughput is bounded by its device (compute_cores * 1000 / compute_ms per second).
--pin puts worker k on device k (scheduler on 127.0.0.1): in the VM, `--backend kernel --pin --workers 1,2` with
./vnpu vm --devices 2 --host-root.
"""
import argparse
import json
import time

import numpy as np

import vnpu
import vnpu.dask as vd


def direct(spec, count, options):
    """Samples per second of one AsyncRuntime in this process: all requests submitted, then waited."""
    x = np.ones(1, np.float32)
    with vnpu.AsyncRuntime(vnpu.CompiledModel.synthetic(**spec), **options) as rt:
        for t in [rt.run(x) for _ in range(16)]:
            t.wait(60)
        t0 = time.perf_counter()
        for t in [rt.run(x) for _ in range(count)]:
            t.wait(600)
        return count / (time.perf_counter() - t0)


def cluster_of(k, pin):
    """K worker processes with NPU=1 each: a LocalCluster (every worker on device 0 of its own sim engine), or
    with pin a scheduler on 127.0.0.1 and worker k pinned to device k (DASK_VNPU__DEVICES), as on a host with K
    devices (docs/scale-out.md)."""
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster
    if not pin:
        return LocalCluster(n_workers=k, threads_per_worker=2, processes=True, resources={"NPU": 1},
                            dashboard_address=":0", silence_logs=40)
    workers = {f"accel{d}": {"cls": Nanny, "options": {"nthreads": 2, "host": "127.0.0.1", "resources": {"NPU": 1},
                                                        "env": {"DASK_VNPU__DEVICES": str(d)}}}
               for d in range(k)}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1",
                                                                                  "dashboard": False}},
                       silence_logs=40)


def on_cluster(k, spec, count, batch, options, repeat, pin):
    from distributed import Client
    with cluster_of(k, pin) as cluster, Client(cluster) as client:
        client.wait_for_workers(k, timeout=120)
        vd.register(client, vd.synthetic(**spec), **options)
        x = np.ones(1, np.float32)
        vd.gather(vd.map(client, [x] * (batch * 2 * k), batch=batch), timeout=300)  # warm-up
        best = None
        for _ in range(repeat):
            vd.stats(client, reset=True)
            t0 = time.perf_counter()
            outs = vd.gather(vd.map(client, [x] * count, batch=batch), timeout=600)
            wall = time.perf_counter() - t0
            assert len(outs) == count
            st = vd.stats(client)
            if best is None or wall < best[0]:
                best = (wall, st)
        wall, st = best
        return {"workers": k, "count": count, "wall_s": wall, "ips": count / wall,
                "per_worker_ips": sorted(s["throughput"] for s in st.values()),
                "per_worker_samples": sorted(s["samples"] for s in st.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compute-ms", type=float, default=5.0)
    ap.add_argument("--per-worker", type=int, default=300, help="samples per worker in one run")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--backend", default="sim", help="sim, or kernel (the VM's devices; use with --pin)")
    ap.add_argument("--pin", action="store_true", help="worker k on device k (the host needs K devices)")
    ap.add_argument("--json")
    args = ap.parse_args()
    spec = dict(compute_ms=args.compute_ms)
    options = dict(backend=args.backend, parallel=2, max_in_flight=8)

    with vnpu.AsyncRuntime(vnpu.CompiledModel.synthetic(**spec), **options) as rt:
        cores = rt.device_info["compute_cores"]
    one = max(direct(spec, args.per_worker, options) for _ in range(args.repeat))
    rows = [on_cluster(k, spec, args.per_worker * k, args.batch, options, args.repeat, args.pin)
            for k in (int(v) for v in args.workers.split(","))]
    base = next((r["ips"] for r in rows if r["workers"] == 1), None)
    print(f"synthetic compute {args.compute_ms} ms, {cores} compute cores per {args.backend} device (device bound: "
          f"{cores * 1000 / args.compute_ms:.0f} ips per device), batch {args.batch}")
    print(f"direct AsyncRuntime in one process: {one:.1f} ips")
    if base:
        print(f"scheduler overhead per sample (1 worker vs direct): {(1 / base - 1 / one) * 1e6:.0f} us")
    print("| workers | samples | wall s | total ips | K x one worker | ratio | per-worker ips (busy) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ideal = r["workers"] * base if base else float("nan")
        r["ratio"] = r["ips"] / ideal if base else None
        print(f"| {r['workers']} | {r['count']} | {r['wall_s']:.2f} | {r['ips']:.1f} | {ideal:.1f} | "
              f"{r['ips'] / ideal:.2f} | {', '.join(f'{v:.0f}' for v in r['per_worker_ips'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"direct_ips": one, "rows": rows, "compute_ms": args.compute_ms, "batch": args.batch}, f,
                      indent=1)


if __name__ == "__main__":
    main()
