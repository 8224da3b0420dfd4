"""A tiny synthetic segmentation task for the learning tests: bright blobs on textured noise.

``make_blobs(root, n, size, seed)`` writes ``root/images/*.png`` and ``root/masks/*.png``: smoothed Gaussian noise
(the texture) with 0-2 bright, slightly textured ellipses (the lesions; about one image in five has none). The
blobs are plainly visible, so a network that learns anything reaches a high Dice; one that learns nothing does not.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_blobs(root: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        noise = rng.normal(0, 1, (size, size)).astype(np.float32)
        texture = cv2.GaussianBlur(noise, (0, 0), 1.5)
        img = 70 + 15 * texture / (texture.std() + 1e-6)
        mask = np.zeros((size, size), np.uint8)
        k = 0 if rng.random() < 0.2 else int(rng.integers(1, 3))
        for _ in range(k):
            cy, cx = (int(v) for v in rng.integers(size // 6, size - size // 6, 2))
            ax = (int(rng.integers(size // 7, size // 4)), int(rng.integers(size // 7, size // 4)))
            cv2.ellipse(mask, (cx, cy), ax, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        img = np.where(mask > 0, img + 110 + 5 * texture, img)
        cv2.imwrite(str(root / "images" / f"b{i:03d}.png"), np.clip(img, 0, 255).astype(np.uint8))
        cv2.imwrite(str(root / "masks" / f"b{i:03d}.png"), mask * 255)
    return root
