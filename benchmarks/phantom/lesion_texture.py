#!/usr/bin/env python
"""How much of the lesions' fine texture the paper's non-local means + bilateral filters remove.

For every lesion slice of a phantom (or any category-folder dataset with masks), at 256 px: the standard deviation of
the high-pass image (the image minus its 5 x 5 box mean) inside the lesion mask eroded by one pixel, after CLAHE only
and after CLAHE + NLM + bilateral (hemseg's preprocessing, ``hemseg.runtime.preprocess``). Medians per plane (the
category name's first word) are printed, with the share kept.

Usage::

    hemseg data synth DATA --per-category 8 --seed 0
    python benchmarks/phantom/lesion_texture.py DATA
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()

    from hemseg.runtime.dataset import discover, load_pair
    from hemseg.runtime.io.intensity import to_uint8
    from hemseg.runtime.preprocess import PreprocessSpec, filter_uint8, resize_mask

    full = PreprocessSpec(size=a.size)
    clahe = full.without(["nlm", "bilateral"])
    kernel = np.ones((3, 3), np.uint8)
    per_plane: dict[str, list[tuple[float, float]]] = {}
    for sample in discover(a.data).samples:
        image, mask = load_pair(sample)
        image, mask = (image[0], mask[0]) if image.ndim == 3 else (image, mask)
        inner = cv2.erode(resize_mask(mask > 0, a.size), kernel).astype(bool)
        if inner.sum() < 10:
            continue
        u8 = to_uint8(image)

        def texture(spec: PreprocessSpec) -> float:
            x = filter_uint8(u8, spec).astype(np.float64)
            return float((x - cv2.blur(x, (5, 5)))[inner].std())

        per_plane.setdefault(sample.category.split("_")[0], []).append((texture(clahe), texture(full)))
    for plane, rows in sorted(per_plane.items()):
        v = np.array(rows)
        print(f"{plane:9s} {len(v):3d} lesion slices: high-pass std inside lesions, CLAHE only {np.median(v[:, 0]):5.1f}, "
              f"+ NLM + bilateral {np.median(v[:, 1]):5.1f} (kept {np.median(v[:, 1] / v[:, 0]) * 100:.0f} %)")


if __name__ == "__main__":
    main()
