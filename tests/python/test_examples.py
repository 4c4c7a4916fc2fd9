# SPDX-License-Identifier: MIT
"""The two ported seed scripts (examples/python) on the repo's fixtures, with the tiny model variants."""
import json
import os
import subprocess
import sys

import pytest

from conftest import BACKEND, BUILD, ROOT

SCRIPTS = os.path.join(ROOT, "examples", "python")


def run_script(name, *args):
    env = dict(os.environ, VNPU_BUILD=BUILD)
    r = subprocess.run([sys.executable, os.path.join(SCRIPTS, name), "--variant", "tiny", "--backend", BACKEND,
                        *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_unet_depth_on_the_nyu_fixtures(tmp_path):
    out = run_script("unet_depth.py", "--count", "8", "--json", str(tmp_path / "r.json"))
    assert "sync :" in out and "async:" in out and "abs_rel" in out
    r = json.load(open(tmp_path / "r.json"))
    assert r["count"] == 8 and r["sync_ips"] > 0 and r["async_ips"] > 0 and r["parallel"] == 2
    assert 0 <= r["metrics"]["delta1"] <= 1


def test_yolov8_on_the_coco_fixtures(tmp_path):
    out = run_script("yolov8.py", "--count", "6", "--out-dir", str(tmp_path), "--json", str(tmp_path / "r.json"))
    assert "sync :" in out and "async:" in out
    dets = json.load(open(tmp_path / "detections.json"))
    coco = json.load(open(os.path.join(BUILD, "examples", "fixtures", "coco", "annotations",
                                       "instances_val2017.json")))
    images = {im["id"]: im for im in coco["images"]}
    categories = {c["id"] for c in coco["categories"]}
    assert dets, "no detections at all"
    for d in dets:
        im = images[d["image_id"]]
        x, y, w, h = d["bbox"]
        assert d["category_id"] in categories and 0.25 <= d["score"] <= 1
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0
        assert x + w <= im["width"] + 0.01 and y + h <= im["height"] + 0.01
    assert json.load(open(tmp_path / "r.json"))["detections"] == len(dets)


def test_timing_only_runs_skip_post_processing():
    if BACKEND != "sim" and not os.environ.get("VNPU_EXPECT_TIMING_ONLY"):
        # The mode is the QEMU device's power-on setting: a kernel-backend run needs a timing-only boot.
        pytest.skip("the device was not booted with timing-only=on")
    # (unet_depth only: the same option path in yolov8.py, and its model takes longest to build)
    out = run_script("unet_depth.py", "--count", "4", "--timing-only")
    assert "inferences/s" in out and "abs_rel" not in out


def test_missing_data_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(SCRIPTS, "unet_depth.py"), "--data", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "no .h5 files" in r.stderr
