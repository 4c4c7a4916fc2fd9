#!/usr/bin/python3
"""npy_close.py GOT.npy REF.npy: exit 0 if GOT matches REF within the examples' documented tolerance
(docs/examples.md: |y - ref| <= 1e-3 * max(1, rms(ref)) + 1e-3 * |ref|), else print why and exit 1."""
import sys

import numpy as np

y, r = np.load(sys.argv[1]), np.load(sys.argv[2])
if y.shape != r.shape or y.dtype != np.float32:
    sys.exit(f"npy_close: got {y.shape} {y.dtype}, want {r.shape} float32")
atol = 1e-3 * max(1.0, float(np.sqrt(np.mean(r.astype(np.float64) ** 2))))
excess = np.abs(y - r) - (atol + 1e-3 * np.abs(r))
if not np.all(np.isfinite(y)) or excess.max() > 0:
    sys.exit(f"npy_close: {sys.argv[1]} differs from {sys.argv[2]} (max excess {excess.max():.3g})")
print(f"npy_close: {sys.argv[1]} matches (max |y-ref| = {np.abs(y - r).max():.3g})")
