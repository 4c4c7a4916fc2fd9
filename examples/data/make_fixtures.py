#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Write small datasets in exactly the seed's on-disk formats, for tests and for the demo (the real datasets
cannot be downloaded here):

  OUT/nyu_depth_v2/val/official/NNNNN.h5   NYU Depth V2 as distributed with the sparse-to-dense/fast-depth
                                           loaders: dataset `rgb` uint8 [3, 480, 640] (CHW) and dataset
                                           `depth` float32 [480, 640] in metres (0 = no reading)
  OUT/coco/val2017/000000NNNNNN.jpg        COCO val2017 images (baseline JPEG, RGB, various sizes)
  OUT/coco/annotations/instances_val2017.json   COCO instances: images, annotations (bbox = x, y, w, h),
                                           categories (the 80 COCO classes with their non-contiguous ids)

    make_fixtures.py OUT [--nyu N] [--coco N] [--stamp FILE]

Content is deterministic (seeded): rooms of planes with a depth gradient and boxes for NYU; coloured
rectangles and ellipses with matching annotations for COCO.
"""
import argparse
import json
import os

import h5py
import numpy as np
from PIL import Image, ImageDraw

COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush"]
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
            32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
            58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
            88, 89, 90]
COCO_SIZES = [(640, 480), (480, 640), (500, 375), (640, 427), (427, 640), (612, 612)]


def write_nyu(root, count, rng):
    d = os.path.join(root, "nyu_depth_v2", "val", "official")
    os.makedirs(d, exist_ok=True)
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        # A corridor: depth grows towards a vanishing point, with a few boxes standing in front.
        vx, vy = rng.uniform(200, 440), rng.uniform(150, 330)
        r = np.maximum(np.abs(xx - vx) / w, np.abs(yy - vy) / h)
        depth = (1.0 + 8.0 * (1.0 - np.clip(r * 2.2, 0, 1))).astype(np.float32)
        rgb = np.stack([(120 + 100 * np.sin(depth + c)) for c in range(3)]).astype(np.float32)
        for _ in range(3):
            x0, y0 = int(rng.uniform(0, w - 120)), int(rng.uniform(0, h - 120))
            bw, bh, z = int(rng.uniform(40, 120)), int(rng.uniform(40, 120)), rng.uniform(0.8, 3.0)
            depth[y0:y0 + bh, x0:x0 + bw] = z
            rgb[:, y0:y0 + bh, x0:x0 + bw] = rng.uniform(0, 255, size=(3, 1, 1))
        rgb += rng.normal(0, 6, size=rgb.shape)
        depth[rng.uniform(size=depth.shape) < 0.02] = 0.0  # missing Kinect readings
        with h5py.File(os.path.join(d, f"{i + 1:05d}.h5"), "w") as f:
            f.create_dataset("rgb", data=np.clip(rgb, 0, 255).astype(np.uint8))
            f.create_dataset("depth", data=depth)


def write_coco(root, count, rng):
    img_dir = os.path.join(root, "coco", "val2017")
    ann_dir = os.path.join(root, "coco", "annotations")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    images, anns = [], []
    for i in range(count):
        image_id = 139 + 1000 * i
        w, h = COCO_SIZES[i % len(COCO_SIZES)]
        img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(60, 200, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            bw, bh = int(rng.integers(30, w // 2)), int(rng.integers(30, h // 2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.uniform() < 0.5:
                draw.rectangle([x0, y0, x0 + bw - 1, y0 + bh - 1], fill=colour)
            else:
                draw.ellipse([x0, y0, x0 + bw - 1, y0 + bh - 1], fill=colour)
            cat = int(rng.integers(0, 80))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": COCO_IDS[cat],
                         "bbox": [float(x0), float(y0), float(bw), float(bh)], "area": float(bw * bh),
                         "iscrowd": 0, "segmentation": [[x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]]})
        name = f"{image_id:012d}.jpg"
        img.save(os.path.join(img_dir, name), "JPEG", quality=90)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h, "license": 1,
                       "coco_url": "", "date_captured": "2013-11-14 17:02:52", "flickr_url": ""})
    cats = [{"id": cid, "name": n, "supercategory": "thing"} for cid, n in zip(COCO_IDS, COCO_NAMES)]
    doc = {"info": {"description": "vnpu COCO-format fixture", "version": "1.0", "year": 2017},
           "licenses": [{"id": 1, "name": "fixture", "url": ""}], "images": images, "annotations": anns,
           "categories": cats}
    with open(os.path.join(ann_dir, "instances_val2017.json"), "w") as f:
        json.dump(doc, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--nyu", type=int, default=4)
    ap.add_argument("--coco", type=int, default=6)
    ap.add_argument("--stamp", help="file to write when done (default OUT/fixtures.stamp)")
    a = ap.parse_args()
    write_nyu(a.out, a.nyu, np.random.default_rng(1))
    write_coco(a.out, a.coco, np.random.default_rng(2))
    with open(a.stamp or os.path.join(a.out, "fixtures.stamp"), "w") as f:
        f.write(f"nyu={a.nyu} coco={a.coco}\n")


if __name__ == "__main__":
    main()
