"""A tiny synthetic segmentation task for the learning tests: bright blobs on textured noise.

``train_and_eval(train, heldout, out, ...)`` trains on it from random weights with the ``hemseg`` recipe and returns
the held-out evaluation's ``summary.json`` (``tests/test_learning.py`` and ``benchmarks/learning_test_seeds.py``).
``make_blobs(root, n, size, seed)`` writes ``root/images/*.png`` and ``root/masks/*.png``: smoothed Gaussian noise
(the texture) with 0-2 bright, slightly textured ellipses (the lesions; about one image in five has none). The
blobs are plainly visible, so a network that learns anything reaches a high Dice; one that learns nothing does not.
"""

from __future__ import annotations

import json
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


def train_and_eval(train: Path, heldout: Path, out: Path, model: str, steps: int, batch_size: int,
                   seed: int = 0, **options) -> dict:
    """Train ``model`` (U-Net base 16 or FCN-ResNet50) on ``train`` at 64 px, fp32 on the CPU, from random weights,
    then evaluate ``out/run/best.pt`` on ``heldout``; returns the evaluation summary. ``options``: more
    ``hemseg train`` options."""
    from hemseg.train.evaluate import evaluate_checkpoint
    from hemseg.train.trainer import run_training

    run_training(train, out / "run", model=model, unet_base=16, image_size=64, steps=steps, batch_size=batch_size,
                 device="cpu", precision="fp32", progress=False, weights="none", seed=seed, **options)
    evaluate_checkpoint(out / "run" / "best.pt", heldout, out / "eval", device="cpu", progress=False, n_overlays=0)
    return json.loads((out / "eval" / "summary.json").read_text())
