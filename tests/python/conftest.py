# SPDX-License-Identifier: MIT
"""Fixtures of the vnpu Python suite (run by `meson test --suite python`, or by hand:
PYTHONPATH=build/python VNPU_BUILD=build /usr/bin/python3 -m pytest tests/python)."""
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.path.abspath(os.environ.get("VNPU_BUILD", os.path.join(ROOT, "build")))
EXAMPLES = os.path.join(BUILD, "examples")

# The example networks in PyTorch (examples/models), for outputs against PyTorch.
sys.path.insert(0, os.path.join(ROOT, "examples", "models"))
sys.path.insert(0, os.path.join(ROOT, "examples", "python"))

import vnpu  # noqa: E402

BACKEND = os.environ.get("VNPU_BACKEND", "sim")


def example(name):
    path = os.path.join(EXAMPLES, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: build the tree first (ninja -C {BUILD})")
    return path


@pytest.fixture(scope="session")
def yolo_path():
    return example("yolov8n-tiny.vnpu")


@pytest.fixture(scope="session")
def yolo(yolo_path):
    return vnpu.CompiledModel(yolo_path)


@pytest.fixture(scope="session")
def yolo_io():
    return (np.load(example("yolov8n-tiny.input.npy")), np.load(example("yolov8n-tiny.ref.npy")))


@pytest.fixture(scope="session")
def deeplab_io():
    return (np.load(example("deeplabv3plus-tiny.input.npy")), np.load(example("deeplabv3plus-tiny.ref.npy")))


def close_to(y, ref):
    """The examples' tolerance (docs/examples.md): |y - ref| <= 1e-3 * max(1, rms(ref)) + 1e-3 * |ref|."""
    y = np.asarray(y)
    rms = float(np.sqrt(np.mean(np.square(ref, dtype=np.float64))))
    return y.shape == ref.shape and bool(np.all(np.abs(y - ref) <= 1e-3 * max(1.0, rms) + 1e-3 * np.abs(ref)))


@pytest.fixture
def slow_model():
    """A synthetic model whose compute takes 300 ms of modelled device time: requests stay in flight long
    enough to be cancelled or to time out, whatever the host's load."""
    return vnpu.CompiledModel.synthetic(compute_ms=300)


def x1():
    return np.ones(1, np.float32)


@pytest.fixture(scope="session")
def samples(yolo_io):
    """16 different inputs of the tiny YOLOv8n and their outputs from a single-process run (the Dask tests)."""
    x, _ = yolo_io
    rng = np.random.default_rng(7)
    xs = [np.ascontiguousarray(x * (0.5 + i / 16) + rng.normal(0, 0.05, x.shape).astype(np.float32))
          for i in range(16)]
    with vnpu.Runtime(example("yolov8n-tiny.vnpu"), backend=BACKEND) as rt:
        refs = [rt.run(a) for a in xs]
    return xs, refs
