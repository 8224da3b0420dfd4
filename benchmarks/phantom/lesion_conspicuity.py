#!/usr/bin/env python
"""How visible the phantom's lesions and their fatty-island mimics are, per category, at the network's input size.

For ``--cases`` rendered cases per category (``hemseg.phantom.case.render_scene`` with the label and body maps, seed
``--seed``), the image is resized to ``--size`` px as preprocessing does (area interpolation; labels and body map
nearest). For every 8-connected lesion component inside a vertebral body: its contrast-to-noise ratio, (mean of the
lesion - mean of the normal marrow of the same body) / standard deviation of that marrow, and its area in pixels. The
same ratio is computed for the fatty islands (the mimics that are as bright as lesions on T1 and T2). Per category:
the number of lesions, their median area, the median ratio, the share with |ratio| < 1, and the fatty islands'
median ratio.

Usage::

    python benchmarks/phantom/lesion_conspicuity.py [--cases 30] [--size 256] [--seed 7] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def component_cnr(img: np.ndarray, labels: np.ndarray, body: np.ndarray, code: int) -> list[tuple[float, int]]:
    """(ratio, area) of every 8-connected component of tissue ``code`` lying in a vertebral body with normal marrow."""
    from hemseg.phantom import contrast as T

    n, cc = cv2.connectedComponents((labels == code).astype(np.uint8), connectivity=8)
    out = []
    for k in range(1, n):
        m = cc == k
        b = int(np.bincount(body[m]).argmax())
        rest = (body == b) & (labels == T.MARROW)
        if b == 0 or rest.sum() < 10:
            continue
        out.append((float((img[m].mean() - img[rest].mean()) / (img[rest].std() + 1e-6)), int(m.sum())))
    return out


def main() -> None:
    from hemseg.phantom import contrast as T
    from hemseg.phantom.case import case_rng, render_scene
    from hemseg.phantom.categories import CATEGORIES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    for cat in CATEGORIES:
        les, fat = [], []
        for i in range(a.cases):
            sc = render_scene(cat, case_rng(a.seed, cat, i))
            s = (a.size, a.size)
            img = cv2.resize(sc.image, s, interpolation=cv2.INTER_AREA).astype(np.float32)
            body = cv2.resize(sc.body, s, interpolation=cv2.INTER_NEAREST)
            labels = cv2.resize(sc.labels, s, interpolation=cv2.INTER_NEAREST)
            les += component_cnr(img, labels, body, T.LESION)
            fat += component_cnr(img, labels, body, T.FAT_ISLAND)
        r = np.array([c for c, _ in les])
        row = {"category": cat, "lesions": len(les),
               "median_area_px": float(np.median([n for _, n in les])) if les else None,
               "median_cnr": round(float(np.median(r)), 2) if les else None,
               "share_abs_cnr_below_1": round(float(np.mean(np.abs(r) < 1)), 2) if les else None,
               "fat_island_median_cnr": round(float(np.median([c for c, _ in fat])), 2) if fat else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if a.json:
        rec = {"experiment": __doc__.splitlines()[0], "command": " ".join(["python", *sys.argv]),
               "settings": {"cases": a.cases, "size": a.size, "seed": a.seed}, "rows": rows}
        a.json.write_text(json.dumps(rec, indent=1) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
