#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The closing part of `./vnpu demo`: reads the two examples' JSON reports (unet_depth.json, yolov8.json in
--dir), prints the summary table (sync vs async vs async parallel=2 vs coroutine throughput, stage times,
device utilisation, pipeline bound), merges the two Perfetto traces into demo.trace.json and the two SVG
plots into demo.svg, and writes the summary's numbers as JSON (--json)."""
import argparse
import json
import os
import re
import sys

PROGRAMS = [("unet_depth", "DeepLabV3+ / ResNet-50, 1x512x512x3"), ("yolov8", "YOLOv8n, 1x3x640x640")]


def row(results, mode, parallel):
    for r in results:
        if r["mode"] == mode and r["parallel"] == parallel:
            return r
    return None


def summarise(prog, title, doc):
    res = doc["results"]
    sync = row(res, "sync", 1)
    if sync is None:
        sys.exit(f"demo: {prog}: no sync result in its report")
    ips = lambda m, p: (row(res, m, p) or {}).get("throughput_ips")
    st = {k: sync["stage_ms"][k]["mean"] for k in ("prep", "h2d", "compute", "d2h", "post")}
    async1, async2 = ips("async", 1), ips("async", 2)
    best_async = max(x for x in (async1, async2, ips("coro", 1), ips("coro", 2)) if x is not None)
    util = max(r["engine_util"]["compute"] for r in res if r["mode"] != "sync")
    return {
        "program": prog,
        "model": title,
        "device": doc.get("device"),
        "count": sync["count"],
        "throughput_ips": {"sync": sync["throughput_ips"], "async_p1": async1, "async_p2": async2,
                           "coro_p1": ips("coro", 1), "coro_p2": ips("coro", 2)},
        "speedup_async_p1": async1 / sync["throughput_ips"] if async1 else None,
        "speedup_async_p2": async2 / sync["throughput_ips"] if async2 else None,
        "speedup_best": best_async / sync["throughput_ips"],
        # The best async/sync ratio the pipeline allows: sum of the stage means / the slowest stage, where
        # compute counts divided by the device's compute cores (both serve requests at once).
        "pipeline_bound": sync["pipeline_bound_speedup"],
        "compute_cores": sync.get("compute_cores", 1),
        "stage_ms": st,
        "latency_p50_ms": {"sync": sync["latency_ms"]["p50"],
                           "async_p1": (row(res, "async", 1) or {}).get("latency_ms", {}).get("p50")},
        "device_util": {"sync": sync["engine_util"]["compute"], "async_best": util},
        "results": res,
    }


def fmt(x, w, prec=1):
    return f"{x:{w}.{prec}f}" if isinstance(x, (int, float)) else f"{'-':>{w}}"


def merge_traces(outdir, progs):
    events, pid_base = [], 0
    for prog in progs:
        path = os.path.join(outdir, prog + ".trace.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            ev = json.load(f)["traceEvents"]
        top = 0
        for e in ev:
            e["pid"] = e["pid"] + pid_base
            top = max(top, e["pid"])
            events.append(e)
        pid_base = top
    out = os.path.join(outdir, "demo.trace.json")
    with open(out, "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
    return out


def merge_svgs(outdir, progs):
    parts, y, width = [], 0, 0
    for prog in progs:
        path = os.path.join(outdir, prog + ".svg")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            text = f.read()
        m = re.search(r"<svg[^>]*width='(\d+)'[^>]*height='(\d+)'", text)
        if not m:
            continue
        w, h = int(m.group(1)), int(m.group(2))
        parts.append(text.replace("<svg ", f"<svg x='0' y='{y}' ", 1))
        y += h + 10
        width = max(width, w)
    out = os.path.join(outdir, "demo.svg")
    with open(out, "w") as f:
        f.write(f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{y}'>\n"
                "<rect width='100%' height='100%' fill='white'/>\n")
        f.write("\n".join(parts))
        f.write("</svg>\n")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--elapsed", type=float, default=0)
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()

    models = []
    for prog, title in PROGRAMS:
        with open(os.path.join(a.dir, prog + ".json")) as f:
            models.append(summarise(prog, title, json.load(f)))

    mode = ("device in TIMING-ONLY mode: every op validated and timed by the device's timing model, "
            "arithmetic skipped (outputs meaningless); --functional computes them"
            if a.timing_only else "functional: every output computed (throughput bounded by the host CPU)")
    where = ("kernel backend in the VM: AsyncRuntime -> io_uring -> vnpu.ko -> QEMU vnpu device"
             if a.backend == "kernel" else "sim backend: in-process device engine")
    print(f"\n=== vnpu demo: {where}")
    print(f"=== {a.count} requests per configuration; {mode}\n")
    print("throughput, images/s (speed-up over sync)")
    print(f"{'model':<38}{'sync':>9}{'async p=1':>17}{'async p=2':>17}{'coro p=1':>10}{'coro p=2':>10}"
          f"{'bound':>8}")
    for m in models:
        t = m["throughput_ips"]
        sp = lambda k: f"{t[k]:8.1f} ({t[k] / t['sync']:4.2f}x)" if t[k] else f"{'-':>16}"
        print(f"{m['model']:<38}{t['sync']:9.1f}{sp('async_p1'):>17}{sp('async_p2'):>17}"
              f"{fmt(t['coro_p1'], 10)}{fmt(t['coro_p2'], 10)}{m['pipeline_bound']:7.2f}x")
    print("\nper-stage times of one request (ms, sync means) and device utilisation")
    print(f"{'model':<38}{'prep':>8}{'h2d':>8}{'compute':>9}{'d2h':>8}{'post':>8}{'sum':>8}{'util sync':>11}"
          f"{'util async':>12}")
    for m in models:
        s = m["stage_ms"]
        print(f"{m['model']:<38}{s['prep']:8.2f}{s['h2d']:8.2f}{s['compute']:9.2f}{s['d2h']:8.2f}{s['post']:8.2f}"
              f"{sum(s.values()):8.2f}{100 * m['device_util']['sync']:10.0f}%{100 * m['device_util']['async_best']:11.0f}%")
    print("\n  prep: host copy into the DMA staging buffer (runtime prep threads); h2d, compute, d2h: the device's")
    print("  modelled engine busy time; post: host output copy (runtime callback thread). util: compute engines")
    print("  busy / (wall x cores). bound: the best async/sync ratio the pipeline allows = sum of stages / slowest")
    print(f"  stage (compute / {models[0]['compute_cores']} cores, prep / prep threads).")
    print("  Dataset decoding (h5, JPEG, resize, letterbox) runs once per distinct sample before the measurement.")

    trace = merge_traces(a.dir, [p for p, _ in PROGRAMS])
    svg = merge_svgs(a.dir, [p for p, _ in PROGRAMS])
    print(f"\nPerfetto trace: {trace} (open in https://ui.perfetto.dev or chrome://tracing)")
    print(f"plot: {svg}; per model: {a.dir}/{{unet_depth,yolov8}}.{{json,trace.json,svg}}")
    print(f"measured in {a.elapsed:.0f} s")

    if a.json:
        doc = {"backend": a.backend, "timing_only": a.timing_only, "count": a.count, "elapsed_s": a.elapsed,
               "trace": trace, "svg": svg, "models": models}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"JSON: {a.json}")


if __name__ == "__main__":
    main()
