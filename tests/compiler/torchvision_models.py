#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""torchvision 0.14 architectures (and nn.TransformerEncoder) through vnpuc and the sim backend, against PyTorch.

    torchvision_models.py BUILD_DIR [--full] [--only NAME[,NAME...]] [--list] [--markdown FILE]

For every model: build it (weights=None) with seeded random weights and calibrated BatchNorm statistics (see
randomise()), export it with
torch.onnx.export's defaults (opset 14 on PyTorch 1.13), compile it with BUILD_DIR/compiler/vnpuc, run it with
BUILD_DIR/tools/vnpu-run --backend sim and compare with PyTorch's output on the same input:
|vnpu - torch| <= 1e-3 * max|torch| + 1e-3 * |torch| for every element, or, for an ill-conditioned network,
vnpu's output at most 1.5x as far from PyTorch's float64 result as PyTorch's float32 one (docs/compiler.md,
"Models").

The default set is one representative per family at a small input, except the families whose smallest model
is large (vgg, alexnet, resnext, wide_resnet, maxvit, fcn, and ViT-B, represented by a 2-layer ViT by
default); --full adds those and most other classification and segmentation builders of torchvision 0.14. Exports are cached under
$VNPU_MODEL_CACHE (default ~/.cache/vnpu/models) by a hash of this script and the torch/torchvision versions,
like examples/models/gen_model.py, so a second run only compiles and runs. Prints one row per model
(compiled / matched / what blocks it) and exits 1 if any model fails to compile or to match.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

# name -> (family, builder, input shape). Builders are called with weights=None (and weights_backbone=None).
S64 = (1, 3, 64, 64)


def tv(name, **kw):
    def build():
        import torchvision.models as m
        import torchvision.models.segmentation as seg
        fn = getattr(seg, name, None) or getattr(m, name)
        extra = {"weights_backbone": None} if hasattr(seg, name) else {}
        return fn(weights=None, **extra, **kw)
    return build


class Encoder(nn.Module):
    """nn.TransformerEncoder as users build it (batch_first, GELU feed-forward, final LayerNorm)."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, dropout=0.0,
                                           activation="gelu", batch_first=True)
        self.enc = nn.TransformerEncoder(layer, num_layers=2, norm=nn.LayerNorm(64))

    def forward(self, x):
        return self.enc(x)


class Dense(nn.Module):
    """Segmentation models return {'out': ...}: export the tensor."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)["out"]


def small_vit():
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)


# The default set: one per family, each a few seconds of CPU (ViT as a 2-layer VisionTransformer; the families
# whose smallest builder has 60M+ parameters or needs 224x224 inputs are in HEAVY, run with --full).
FAST = {
    "resnet18": ("resnet", tv("resnet18"), S64),
    "squeezenet1_1": ("squeezenet", tv("squeezenet1_1"), S64),
    "densenet121": ("densenet", tv("densenet121"), S64),
    "inception_v3": ("inception", tv("inception_v3", aux_logits=False, init_weights=True), (1, 3, 96, 96)),
    "googlenet": ("googlenet", tv("googlenet", aux_logits=False, init_weights=True), S64),
    "mobilenet_v2": ("mobilenet_v2", tv("mobilenet_v2"), S64),
    "mobilenet_v3_small": ("mobilenet_v3", tv("mobilenet_v3_small"), S64),
    "mnasnet0_5": ("mnasnet", tv("mnasnet0_5"), S64),
    "shufflenet_v2_x0_5": ("shufflenet_v2", tv("shufflenet_v2_x0_5"), S64),
    "efficientnet_b0": ("efficientnet", tv("efficientnet_b0"), S64),
    "regnet_y_400mf": ("regnet", tv("regnet_y_400mf"), S64),
    "convnext_tiny": ("convnext", tv("convnext_tiny"), S64),
    "vit_small": ("vit", small_vit, S64),
    "swin_t": ("swin", tv("swin_t"), S64),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3", lambda: Dense(tv("deeplabv3_mobilenet_v3_large")()), S64),
    "lraspp_mobilenet_v3_large": ("lraspp", lambda: Dense(tv("lraspp_mobilenet_v3_large")()), S64),
    "transformer_encoder": ("transformer", Encoder, (1, 16, 64)),
}

HEAVY = {
    "vgg11": ("vgg", tv("vgg11"), (1, 3, 224, 224)),  # its classifier expects 7x7 features (adaptive pool)
    "alexnet": ("alexnet", tv("alexnet"), (1, 3, 224, 224)),
    "resnext50_32x4d": ("resnext", tv("resnext50_32x4d"), S64),
    "wide_resnet50_2": ("wide_resnet", tv("wide_resnet50_2"), S64),
    "vit_b_32": ("vit", tv("vit_b_32", image_size=64), S64),
    "maxvit_t": ("maxvit", tv("maxvit_t"), (1, 3, 224, 224)),  # partitions of 7 at every stage
    "fcn_resnet50": ("fcn", lambda: Dense(tv("fcn_resnet50")()), S64),
}

EXTRA = dict(HEAVY)
for fam, names in {
    "resnet": ["resnet34", "resnet50", "resnet101", "resnet152"],
    "vgg": ["vgg11_bn", "vgg13", "vgg16", "vgg19_bn"],
    "squeezenet": ["squeezenet1_0"],
    "densenet": ["densenet161", "densenet169", "densenet201"],
    "mobilenet_v3": ["mobilenet_v3_large"],
    "mnasnet": ["mnasnet0_75", "mnasnet1_0", "mnasnet1_3"],
    "shufflenet_v2": ["shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"],
    "efficientnet": ["efficientnet_b1", "efficientnet_b3", "efficientnet_v2_s"],
    "regnet": ["regnet_x_400mf", "regnet_y_800mf", "regnet_x_1_6gf"],
    "resnext": ["resnext101_32x8d"],
    "wide_resnet": ["wide_resnet101_2"],
    "convnext": ["convnext_small"],
    "vit": ["vit_b_16"],
    "swin": ["swin_s", "swin_v2_t"],
    "fcn": ["fcn_resnet101"],
    "deeplabv3": ["deeplabv3_resnet50"],
}.items():
    for n in names:
        kw = {"image_size": 64} if n.startswith("vit_") else {}
        shape = (1, 3, 224, 224) if n.startswith("vgg") else S64
        build = tv(n, **kw)
        if fam in ("fcn", "deeplabv3"):
            build = (lambda b: lambda: Dense(b()))(build)
        EXTRA[n] = (fam, build, shape)

RTOL = 1e-3


def cache_key(name):
    """What an export depends on: the generating code, the model's spec and the versions (not the rest of
    this script, so that editing the checks does not regenerate every model)."""
    import inspect
    import torchvision
    h = hashlib.sha256()
    for obj in (tv, Encoder, Dense, small_vit, randomise, generate):
        h.update(inspect.getsource(obj).encode())
    family, _, shape = dict(FAST, **EXTRA)[name]
    h.update(f"{name}/{family}/{shape}/{torch.__version__}/{torchvision.__version__}".encode())
    return h.hexdigest()[:16]


def randomise(model, shape):
    """Weights that exercise every layer: torchvision's own init zeroes some heads (ViT) and leaves
    BatchNorm statistics at 0/1, so outputs collapse to constants or blow up with depth. Every matrix gets
    N(0, 1/fan_in), norm scales U(0.5, 1.5), biases U(-0.1, 0.1); then BatchNorm statistics are those of a
    forward pass over four random inputs (momentum None: their cumulative average), so activations stay
    near unit scale through any depth."""
    torch.manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() > 1:
                nn.init.normal_(p, 0.0, 1.0 / max(1, p[0].numel()) ** 0.5)
            elif pname.endswith("bias"):
                nn.init.uniform_(p, -0.1, 0.1)
            else:
                nn.init.uniform_(p, 0.5, 1.5)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        # Only BatchNorm in training mode: dropout and stochastic depth stay in eval, so the statistics are
        # those the evaluated network sees (with them in training, EfficientNetV2's calibrated activations
        # reached 540 and its float32 output was chaotic).
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            model(torch.randn(4, *shape[1:], generator=torch.Generator().manual_seed(2)))
    model.eval()


def generate(name, build, shape, out_dir):
    torch.manual_seed(0)
    model = build()
    randomise(model, shape)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    # Outside no_grad, as users call it (under no_grad nn.TransformerEncoder takes its fused inference path,
    # aten::_transformer_encoder_layer_fwd, which has no ONNX export).
    torch.onnx.export(model, x, os.path.join(out_dir, "model.onnx"), input_names=["input"], output_names=["out"])
    with torch.no_grad():  # the same model in float64: how far PyTorch's own float32 result is from exact
        ref64 = model.double()(x.double())
    np.save(os.path.join(out_dir, "input.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(out_dir, "ref.npy"), ref.numpy().astype(np.float32))
    np.save(os.path.join(out_dir, "ref64.npy"), ref64.numpy())


def cached(name, build, shape):
    root = os.environ.get("VNPU_MODEL_CACHE", os.path.expanduser("~/.cache/vnpu/models"))
    d = os.path.join(root, f"tv-{name}-{cache_key(name)}")
    if not os.path.exists(os.path.join(d, "ref64.npy")):
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".gen-", dir=root)
        try:
            generate(name, build, shape, tmp)
            if os.path.isdir(d):
                shutil.rmtree(d)
            os.rename(tmp, d)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return d


def onnx_ops(path):
    import onnx
    m = onnx.load(path, load_external_data=False)
    return len(m.graph.node)


def check(name, family, build, shape, build_dir, work):
    row = {"name": name, "family": family, "input": "x".join(map(str, shape)), "compiled": False,
           "matched": False, "detail": ""}
    c0 = os.times()
    try:
        d = cached(name, build, shape)
    except Exception as e:  # an export failure is PyTorch's, reported as such
        row["detail"] = f"torch.onnx.export failed: {str(e).splitlines()[0][:120]}"
        return row
    row["nodes"] = onnx_ops(os.path.join(d, "model.onnx"))
    prog = os.path.join(work, name + ".vnpu")
    r = subprocess.run([os.path.join(build_dir, "compiler", "vnpuc"), os.path.join(d, "model.onnx"), "-o", prog],
                       capture_output=True, text=True)
    if r.returncode:
        row["detail"] = r.stderr.strip().split(": ", 1)[-1][:160]
        rep = subprocess.run([os.path.join(build_dir, "compiler", "vnpuc"), "--report",
                              os.path.join(d, "model.onnx")], capture_output=True, text=True)
        blocked = [f[0] for f in (ln.split() for ln in rep.stdout.splitlines()) if len(f) > 2 and f[2] == "NO"]
        if blocked:
            row["detail"] = "blocked by " + ", ".join(blocked) + " — " + row["detail"]
        return row
    row["compiled"] = True
    outdir = os.path.join(work, name + ".out")
    r = subprocess.run([os.path.join(build_dir, "tools", "vnpu-run"), prog, "--input",
                        "input=" + os.path.join(d, "input.npy"), "--output-dir", outdir, "--backend", "sim"],
                       capture_output=True, text=True)
    if r.returncode:
        row["detail"] = "vnpu-run failed: " + r.stderr.strip()[:160]
        return row
    got = np.load(os.path.join(outdir, "out.npy"))
    want = np.load(os.path.join(d, "ref.npy"))
    if got.shape != want.shape:
        row["detail"] = f"shape {got.shape} != {want.shape}"
        return row
    exact = np.load(os.path.join(d, "ref64.npy"))
    scale = float(np.abs(want).max())
    err = np.abs(got.astype(np.float64) - want)
    bound = RTOL * scale + RTOL * np.abs(want)
    # Random deep networks can be ill-conditioned (EfficientNetV2: PyTorch's float32 output is 1.6 away from
    # its float64 one, of 540): then vnpu matches when it is as close to the float64 result as PyTorch is.
    torch_err = float(np.abs(want - exact).max())
    vnpu_err = float(np.abs(got - exact).max())
    row["max_err"] = float(err.max())
    row["scale"] = scale
    within = bool((err <= bound).all())
    as_good = vnpu_err <= 1.5 * torch_err
    row["matched"] = bool(np.isfinite(got).all() and (within or as_good))
    row["detail"] = f"max |d| {err.max():.2e} of max |ref| {scale:.3g}"
    if not within:
        row["detail"] += f" (outside 1e-3; vs float64: vnpu {vnpu_err:.2e}, torch {torch_err:.2e})"
    c1 = os.times()
    row["cpu_s"] = sum(getattr(c1, f) - getattr(c0, f) for f in ("user", "system", "children_user", "children_system"))
    row["detail"] += f"; {row['cpu_s']:.1f} s CPU"
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build_dir")
    ap.add_argument("--full", action="store_true", help="every builder, not one per family")
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--markdown", help="also write the table as Markdown to FILE")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("python3-torchvision is not installed (./vnpu setup installs it): skipped")
        return 77
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    models = dict(FAST, **(EXTRA if args.full else {}))
    if args.only:
        want = args.only.split(",")
        models = {k: v for k, v in dict(FAST, **EXTRA).items() if k in want}
        if len(models) != len(want):
            sys.exit(f"unknown model in --only (known: {', '.join(sorted(dict(FAST, **EXTRA)))})")
    if args.list:
        print("\n".join(models))
        return 0
    t0 = time.time()
    cpu0 = os.times()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vnpu-tv-") as work:
        for name, (family, build, shape) in models.items():
            row = check(name, family, build, shape, args.build_dir, work)
            rows.append(row)
            print(f"{row['family']:14} {name:30} {row['input']:12} "
                  f"{'compiled' if row['compiled'] else 'NOT compiled':12} "
                  f"{'matched' if row['matched'] else '-':8} {row['detail']}", flush=True)
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system) + (cpu1.children_user - cpu0.children_user) + \
        (cpu1.children_system - cpu0.children_system)
    ok = sum(r["matched"] for r in rows)
    print(f"{ok}/{len(rows)} models compiled and matched PyTorch; {time.time() - t0:.0f} s wall, {cpu:.0f} s CPU")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("| family | model | input | ONNX nodes | compiled | matched | detail |\n|---|---|---|---|---|---|---|\n")
            for r in rows:
                f.write(f"| {r['family']} | {r['name']} | {r['input']} | {r.get('nodes', '')} | "
                        f"{'yes' if r['compiled'] else 'no'} | {'yes' if r['matched'] else 'no'} | {r['detail']} |\n")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
