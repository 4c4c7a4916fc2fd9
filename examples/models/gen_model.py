#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Generate an example model as ONNX, with deterministic weights, plus a test input and PyTorch's output for it.

    gen_model.py {deeplabv3plus|yolov8n} --variant {full|tiny} --out-dir DIR [--stem STEM]

writes DIR/STEM.onnx, DIR/STEM.input.npy, DIR/STEM.ref.npy (float32) and DIR/STEM.json (shapes, output
statistics); STEM defaults to <model>-<variant>. Results are cached in
$VNPU_MODEL_CACHE (default ~/.cache/vnpu/models) under a hash of this script, architectures.py, the variant and
the torch version, so build directories share one generation of each model (the full DeepLabV3+ takes a while
on a small machine).

Weights: there are no trained weights here. Convolutions get He-normal weights (seeded), BatchNorm gets random
affine parameters, and the BatchNorm running statistics are then set from one forward pass over a fixed
calibration image (a data-dependent init). Every normalised activation then has roughly zero mean and unit
variance, so the outputs stay finite and informative over the 50+ layers, and BatchNorm folding in the
compiler is exercised with non-trivial statistics.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

import warnings

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import architectures as arch  # noqa: E402

# variant -> (constructor, input shape, input name, output name)
MODELS = {
    ("deeplabv3plus", "full"): (lambda: arch.DeepLabV3Plus(width=1.0), (1, 512, 512, 3), "input", "depth"),
    ("deeplabv3plus", "tiny"): (lambda: arch.DeepLabV3Plus(width=0.125), (1, 128, 128, 3), "input", "depth"),
    ("yolov8n", "full"): (lambda: arch.YOLOv8(), (1, 3, 640, 640), "images", "output0"),
    ("yolov8n", "tiny"): (lambda: arch.YOLOv8(width=0.125), (1, 3, 160, 160), "images", "output0"),
}
OPSET = 13


def synthetic_image(shape, seed, nhwc):
    """A smooth image with edges and some noise (so convolutions see structure), ImageNet-normalised for
    NHWC DeepLab inputs, in [0, 1] for YOLO."""
    g = torch.Generator().manual_seed(seed)
    if nhwc:
        _, h, w, c = shape
    else:
        _, c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.zeros(c, h, w)
    for ch in range(c):
        for _ in range(4):
            fx, fy, ph = (torch.rand(3, generator=g) * torch.tensor([12.0, 12.0, 6.28])).tolist()
            img[ch] += torch.sin(fx * xx * 6.28 + fy * yy * 6.28 + ph)
        img[ch] += (xx > torch.rand(1, generator=g)).float() * 2 - 1  # a hard edge
    img = (img - img.min()) / (img.max() - img.min())
    img = (0.9 * img + 0.1 * torch.rand(c, h, w, generator=g)).clamp(0, 1)
    if nhwc:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        return ((img - mean) / std).permute(1, 2, 0).unsqueeze(0).contiguous()
    return img.unsqueeze(0).contiguous()


def init_weights(model, seed):
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)


def standardise_output(model, x, conv, mean):
    """Rescale conv so that, on the batch x, its output has standard deviation 1 and the given mean."""
    seen = []
    hook = conv.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    y = seen[0]
    with torch.no_grad():
        b = conv.bias.clone()
        conv.weight /= (y - b.view(1, -1, 1, 1)).std().clamp_min(1e-6)
        conv.bias.zero_()
        conv.bias.copy_(mean - _output_channel_mean(conv, x, model))


def _output_channel_mean(conv, x, model):
    seen = []
    hook = conv.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0].mean(dim=(0, 2, 3))


def calibrate_batchnorm(model, x):
    """Running statistics := the statistics of one forward pass over x (momentum None = cumulative average,
    which after one batch is that batch's statistics)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def generate(name, variant, out_dir):
    ctor, shape, in_name, out_name = MODELS[(name, variant)]
    nhwc = name == "deeplabv3plus"
    model = ctor()
    init_weights(model, seed=7)
    # Calibrate on a small batch of distinct images, the test image (seed 2) among them: statistics from one
    # image do not carry over well to others, and the test should see the activations the init intends.
    calib = torch.cat([synthetic_image(shape, seed=s, nhwc=nhwc) for s in (2, 11, 12, 13)])
    calibrate_batchnorm(model, calib)
    if name == "yolov8n":
        # Head outputs get unit spread: DFL logits ~N(0,1) give smooth distance distributions, and class
        # logits ~N(-5.2,1) keep a handful of anchors above a 0.25 confidence (like a detector that has seen
        # some training) instead of thousands.
        for seq in model.detect.box:
            standardise_output(model, calib, seq[-1], 0.0)
        for seq in model.detect.cls:
            standardise_output(model, calib, seq[-1], -5.2)
    x = synthetic_image(shape, seed=2, nhwc=nhwc)
    with torch.no_grad():
        ref = model(x)
    if not torch.isfinite(ref).all():
        raise SystemExit(f"gen_model: {name}/{variant} produced non-finite outputs")
    onnx_path = os.path.join(out_dir, f"{name}.onnx")
    torch.onnx.export(model, x, onnx_path, opset_version=OPSET, input_names=[in_name], output_names=[out_name],
                      do_constant_folding=True)
    np.save(os.path.join(out_dir, f"{name}.input.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(out_dir, f"{name}.ref.npy"), ref.numpy().astype(np.float32))
    r = ref.numpy()
    meta = {"model": name, "variant": variant, "input": {"name": in_name, "shape": list(shape)},
            "output": {"name": out_name, "shape": list(r.shape)}, "opset": OPSET, "torch": torch.__version__,
            "ref_stats": {"min": float(r.min()), "max": float(r.max()), "mean": float(r.mean()),
                          "std": float(r.std())}}
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=1)


def cache_key(name, variant):
    h = hashlib.sha256()
    for f in ("gen_model.py", "architectures.py"):
        with open(os.path.join(HERE, f), "rb") as fp:
            h.update(fp.read())
    h.update(f"{name}/{variant}/{torch.__version__}".encode())
    return h.hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted({k[0] for k in MODELS}))
    ap.add_argument("--variant", choices=("full", "tiny"), default="full")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--stem", help="output file stem (default <model>-<variant>)")
    ap.add_argument("--no-cache", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # exporter chatter (TracerWarning on the int() shapes, prim::Constant)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    files = [f"{args.model}.{ext}" for ext in ("onnx", "input.npy", "ref.npy", "json")]
    cache_root = os.environ.get("VNPU_MODEL_CACHE", os.path.expanduser("~/.cache/vnpu/models"))
    cache = os.path.join(cache_root, f"{args.model}-{args.variant}-{cache_key(args.model, args.variant)}")
    os.makedirs(args.out_dir, exist_ok=True)
    if args.no_cache or not all(os.path.exists(os.path.join(cache, f)) for f in files):
        os.makedirs(cache_root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".gen-", dir=cache_root)
        try:
            generate(args.model, args.variant, tmp)
            if os.path.isdir(cache):
                shutil.rmtree(cache)
            os.rename(tmp, cache)  # atomic: a concurrent reader sees all files or none
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    stem = args.stem or f"{args.model}-{args.variant}"
    for f in files:
        dst = os.path.join(args.out_dir, stem + f[len(args.model):])
        shutil.copyfile(os.path.join(cache, f), dst + ".tmp")
        os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
    main()
