#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Object detection on COCO val2017 with vnpu: the seed's YOLOv8 script, ported to `vnpu`.

    yolov8.py [--data DIR] [--count 100] [--variant full|tiny] [--timing-only] [--out-dir DIR]

The seed's steps, in its order: read COCO val2017 JPEGs with PIL and annotations/instances_val2017.json with
json (pycocotools is not in Debian), letterbox to 640, compile_from_torchscript(torch.jit.trace(model, zeros))
(input shapes from the traced graph), AsyncRuntime(compiled), 100 samples through asyncio.gather, YOLOv8 box
decoding + class-wise NMS (numpy; the same rules as examples/common/postprocess.cpp), COCO-style detections,
sync vs async throughput. The model is the project's YOLOv8n (examples/models; untrained weights).
Data: the repo's fixtures by default, the real dataset with --data.
"""
import argparse
import json
import os
import sys
import time

import warnings

import numpy as np
import torch
from PIL import Image

import vnpu

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import example_common  # noqa: E402
import example_models  # noqa: E402


def letterbox(image, size):
    """Longer side scaled to `size`, centred on grey 114, values 0..1, [1, 3, size, size]."""
    w, h = image.size
    scale = min(size / w, size / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(image.convert("RGB").resize((nw, nh), Image.BILINEAR), (left, top))
    x = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1)[np.newaxis] / 255.0
    return np.ascontiguousarray(x), (scale, left, top)


def iou(box, boxes):
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def decode(output, lb, width, height, conf=0.25, iou_threshold=0.45, max_det=300, max_candidates=30000):
    """YOLOv8 output [1, 4 + nc, anchors] -> [(x1, y1, x2, y2, score, class)] in source-image pixels."""
    pred = output[0]
    scores = pred[4:].max(axis=0)
    classes = pred[4:].argmax(axis=0)
    keep = np.nonzero(scores >= conf)[0]
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_candidates]
    cx, cy, w, h = pred[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kept = []
    for c in np.unique(classes[keep]):
        idx = np.nonzero(classes[keep] == c)[0]  # already by score
        alive = np.ones(len(idx), bool)
        for i in range(len(idx)):
            if not alive[i]:
                continue
            kept.append(idx[i])
            alive[i + 1:] &= iou(boxes[idx[i]], boxes[idx[i + 1:]]) <= iou_threshold
    kept = sorted(kept, key=lambda i: (-scores[keep[i]], i))[:max_det]
    scale, left, top = lb
    dets = []
    for i in kept:
        x1, y1, x2, y2 = boxes[i]
        x1, x2 = [float(np.clip((v - left) / scale, 0, width)) for v in (x1, x2)]
        y1, y2 = [float(np.clip((v - top) / scale, 0, height)) for v in (y1, y2)]
        dets.append((x1, y1, x2, y2, float(scores[keep[i]]), int(classes[keep[i]])))
    return dets


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=example_common.fixtures("coco"),
                    help="COCO root with val2017/ and annotations/instances_val2017.json; default: the fixtures")
    ap.add_argument("--count", type=int, default=100, help="images per run (cycled if the data has fewer)")
    ap.add_argument("--variant", choices=("full", "tiny"), default="full",
                    help="full: the seed's 1x3x640x640 YOLOv8n; tiny: a narrow 160x160 one (tests)")
    ap.add_argument("--backend", default=None, help="sim or kernel (default: kernel if a device exists)")
    ap.add_argument("--timing-only", action="store_true", help="device times every op, skips the arithmetic")
    ap.add_argument("--out-dir", help="write detections.json (COCO results format) here")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args()

    with open(os.path.join(args.data, "annotations", "instances_val2017.json")) as f:
        coco = json.load(f)
    category_ids = sorted(c["id"] for c in coco["categories"])  # YOLO class index -> COCO category id
    images = sorted(coco["images"], key=lambda im: im["id"])[:args.count]
    if not images:
        sys.exit(f"yolov8: no images in {args.data}")

    model, shape = example_models.build("yolov8n", args.variant)
    zeros = torch.zeros(shape)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # the model's shapes are static
    t0 = time.perf_counter()
    compiled = vnpu.compile_from_torchscript(torch.jit.trace(model, zeros))
    print(f"compiled {compiled} in {time.perf_counter() - t0:.1f} s")

    samples = []
    for im in images:
        with Image.open(os.path.join(args.data, "val2017", im["file_name"])) as img:
            x, lb = letterbox(img, shape[-1])
        samples.append((im, x, lb))
    work = [samples[i % len(samples)] for i in range(args.count)]
    options = dict(backend=args.backend, timing_only=args.timing_only)

    results, sync_s, async_s = example_common.sync_vs_async("yolov8", compiled, [x for _, x, _ in work],
                                                            options)

    report = {"model": f"yolov8n-{args.variant}", "count": args.count, "timing_only": args.timing_only,
              "sync_ips": args.count / sync_s, "async_ips": args.count / async_s}
    print(f"sync : {args.count} images in {sync_s:.2f} s, {report['sync_ips']:.1f} inferences/s")
    print(f"async: {args.count} images in {async_s:.2f} s, {report['async_ips']:.1f} inferences/s "
          f"(x{sync_s / async_s:.2f})")
    if not args.timing_only:
        detections = []
        for (im, _, lb), y in zip(samples, results):
            for x1, y1, x2, y2, score, cls in decode(y, lb, im["width"], im["height"]):
                detections.append({"image_id": im["id"], "category_id": category_ids[cls],
                                   "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                   "score": round(score, 4)})
        report["detections"] = len(detections)
        print(f"{len(detections)} detections on {len(samples)} images")
        if args.out_dir:
            os.makedirs(args.out_dir, exist_ok=True)
            with open(os.path.join(args.out_dir, "detections.json"), "w") as f:
                json.dump(detections, f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
