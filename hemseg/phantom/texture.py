"""Random smooth fields (numpy + OpenCV): the raw material of tissue heterogeneity, bias fields and lesion texture."""

from __future__ import annotations

import math

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell_px: float) -> np.ndarray:
    """A zero-mean, unit-std random field whose blobs are about ``cell_px`` pixels across (float32, (H, W)).

    A coarse grid of Gaussian samples upsampled with bicubic interpolation; the grid origin is jittered so the
    blobs do not line up with the image border.
    """
    cell = max(1.0, float(cell_px))
    gh = int(math.ceil(height / cell)) + 3
    gw = int(math.ceil(width / cell)) + 3
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    big_h, big_w = int(round(gh * cell)), int(round(gw * cell))
    if big_h * big_w > 4 * height * width + 4096:     # tiny cells: just blur white noise
        f = rng.standard_normal((height, width), dtype=np.float32)
        f = cv2.GaussianBlur(f, (0, 0), max(0.5, cell / 2.5))
    else:
        up = cv2.resize(grid, (big_w, big_h), interpolation=cv2.INTER_CUBIC)
        oy = int(rng.integers(0, max(1, big_h - height)))
        ox = int(rng.integers(0, max(1, big_w - width)))
        f = up[oy:oy + height, ox:ox + width]
    f = f - f.mean()
    sd = float(f.std())
    return (f / sd if sd > 1e-6 else f).astype(np.float32)
