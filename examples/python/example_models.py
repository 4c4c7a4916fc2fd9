# SPDX-License-Identifier: MIT
"""The project's two example networks as torch.nn.Modules, with the weights examples/models/gen_model.py gives
them (seeded init, BatchNorm statistics from a fixed calibration batch), so that compile_from_torch() of these
modules compiles the same network as the C++ examples' .vnpu files."""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "models"))
import gen_model  # noqa: E402


def build(name, variant="full"):
    """(module in eval mode, input shape) of "deeplabv3plus" or "yolov8n", variant "full" or "tiny"."""
    ctor, shape, _, _ = gen_model.MODELS[(name, variant)]
    nhwc = name == "deeplabv3plus"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = ctor()
    gen_model.init_weights(model, seed=7)
    calib = torch.cat([gen_model.synthetic_image(shape, seed=s, nhwc=nhwc) for s in (2, 11, 12, 13)])
    gen_model.calibrate_batchnorm(model, calib)
    if name == "yolov8n":
        for seq in model.detect.box:
            gen_model.standardise_output(model, calib, seq[-1], 0.0)
        for seq in model.detect.cls:
            gen_model.standardise_output(model, calib, seq[-1], -5.2)
    return model.eval(), list(shape)
