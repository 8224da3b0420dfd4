#!/usr/bin/env python
"""Diagnosis, not a score: Dice of LOCO checkpoints on each contrast's raw slices, on intensity-inverted slices (the
whole slice, or the body only), and on the mean / maximum of the raw and body-inverted probability maps (an
"inversion TTA"). Each checkpoint's tuned threshold; ``*`` marks the held-out contrast.

Usage::

    python benchmarks/real_data/invert_check.py W/runs/<run>/heldout_*/best.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "spine-generic-sub-unf01"
CONTRASTS = ("T1w", "T2w", "T2star")


def invert_full(s: np.ndarray) -> np.ndarray:
    return 255 - s


def invert_body(s: np.ndarray) -> np.ndarray:
    t, _ = cv2.threshold(s, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    body = s > t * 0.5
    out = np.zeros_like(s)
    out[body] = 255 - s[body]
    return out


def main(argv: list[str]) -> int:
    from hemseg.runtime.io import read_image, read_mask, to_uint8
    from hemseg.runtime.metrics import dice_score
    from hemseg.runtime.pipeline import Pipeline
    from hemseg.runtime.postprocess import PostprocessConfig
    from hemseg.train.checkpoint import load_checkpoint, spec_of
    from hemseg.train.torch_runner import TorchRunner

    vols = {}
    for c in CONTRASTS:
        image = DATA / f"sub-unf01_{c}.nii.gz"
        vol = read_image(image)
        gt = read_mask(DATA / f"sub-unf01_{c}_seg-manual.nii.gz", image=vol) > 0
        vols[c] = (list(to_uint8(vol.data, image)), gt)
    for arg in argv:
        ckpt = Path(arg)
        held = ckpt.parent.name.removeprefix("heldout_")
        model, config = load_checkpoint(ckpt)
        thr = float(config["threshold"])
        pipe = Pipeline(TorchRunner(model, device="cpu"), spec_of(config), PostprocessConfig(threshold=thr),
                        batch_size=8)
        rows = []
        for c in CONTRASTS:
            slices, gt = vols[c]
            raw = pipe.run_all(slices, return_prob=True).probs
            full = pipe.run_all([invert_full(s) for s in slices], return_prob=True).probs
            body = pipe.run_all([invert_body(s) for s in slices], return_prob=True).probs

            def dice(probs):
                return float(np.mean([dice_score(p > thr, g) for p, g in zip(probs, gt)]))

            rows.append(f"{c}{'*' if c == held else ''}: raw {dice(raw):.3f} invfull {dice(full):.3f} "
                        f"invbody {dice(body):.3f} mean(raw,invbody) {dice([(a + b) / 2 for a, b in zip(raw, body)]):.3f} "
                        f"max {dice([np.maximum(a, b) for a, b in zip(raw, body)]):.3f}")
        print(ckpt, held, "threshold", round(thr, 3), "\n  " + "\n  ".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
