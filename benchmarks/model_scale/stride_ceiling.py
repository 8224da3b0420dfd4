#!/usr/bin/env python
"""The Dice ceiling of a model that predicts logits on a coarse grid and upsamples them bilinearly (FCN-ResNet50:
stride 8), as a function of the lesion's width. No network and no training: for each target mask, the best logit grid
at the stride is *fitted* to it directly (:func:`hemseg.train.object_scale.best_grid_logits`: Adam on the grid's
values, BCE against the mask, ``--iters`` steps), upsampled exactly as the model's head does (bilinear,
``align_corners=False``) and thresholded at 0. No trained model can draw a mask closer than this grid can, so the Dice here bounds what training
can reach (BCE-optimal, not Dice-optimal: a bound up to that small difference).

Targets:

- ellipses of minor axis ``w`` (``--widths``) and major axis ``w`` x U(1, 1.4), at random sub-pixel positions near the
  centre of a ``--size`` px slice, ``--trials`` per width;
- with ``--cord``: the manual spinal-cord masks of ``../shared/data/spine-generic-sub-unf01`` (T2w), resized to each
  ``--cord-sizes`` value as training does (:func:`hemseg.runtime.preprocess.resize_mask`); the fitted mask is brought
  back to the native 131 x 141 grid (bilinear on the logits) and scored there, as ``hemseg eval`` scores. The median
  cord width at each size (:func:`hemseg.train.object_scale.object_widths`) is listed with it.

Usage::

    python benchmarks/model_scale/stride_ceiling.py [--stride 8] [--json OUT] [--cord]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CORD = REPO.parent / "shared" / "data" / "spine-generic-sub-unf01"


def ellipses(args: argparse.Namespace) -> list[dict]:
    from hemseg.runtime.metrics import dice_score
    from hemseg.train.object_scale import best_grid_logits

    rng = np.random.default_rng(args.seed)
    yy, xx = np.mgrid[:args.size, :args.size] + 0.5
    rows = []
    for w in args.widths:
        scores = []
        for _ in range(args.trials):
            cy, cx = args.size / 2 + rng.uniform(-4, 4, size=2)
            major = w * rng.uniform(1.0, 1.4)
            gt = ((yy - cy) / (w / 2)) ** 2 + ((xx - cx) / (major / 2)) ** 2 <= 1
            scores.append(dice_score(best_grid_logits(gt, args.stride, args.iters) > 0, gt))
        rows.append({"width_px": w, "dice_mean": float(np.mean(scores)), "dice_min": float(np.min(scores)),
                     "trials": args.trials})
        print(f"width {w:5.1f} px: ceiling Dice {np.mean(scores):.3f} (min {np.min(scores):.3f})")
    return rows


def cord(args: argparse.Namespace) -> list[dict]:
    import cv2

    from hemseg.runtime.io import read_image, read_mask
    from hemseg.runtime.metrics import dice_score
    from hemseg.runtime.preprocess import resize_mask
    from hemseg.train.object_scale import best_grid_logits, object_widths

    image = CORD / "sub-unf01_T2w.nii.gz"
    masks = read_mask(CORD / "sub-unf01_T2w_seg-manual.nii.gz", image=read_image(image))
    rows = []
    for size in args.cord_sizes:
        small = [resize_mask(m, size) for m in masks]
        scores = []
        for m, s in zip(masks, small):
            up = best_grid_logits(s, args.stride, args.iters)
            native = cv2.resize(up, (m.shape[1], m.shape[0]), interpolation=cv2.INTER_LINEAR) > 0
            scores.append(dice_score(native, m > 0))
        width = float(np.median(object_widths(small)))
        rows.append({"image_size": size, "median_cord_width_px": width, "dice_mean": float(np.mean(scores)),
                     "dice_min": float(np.min(scores)), "slices": len(scores)})
        print(f"cord at {size} px: median width {width:.1f} px, ceiling Dice {np.mean(scores):.3f} at native size")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--widths", type=float, nargs="+", default=[4, 6, 8, 10, 12, 16, 20, 24, 32])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cord", action="store_true", help="also the spine-generic cord masks (needs ../shared)")
    p.add_argument("--cord-sizes", type=int, nargs="+", default=[96, 128, 160, 192, 256])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import torch

    from hemseg.bench.machine import machine_info

    torch.manual_seed(args.seed)
    result = {"experiment": f"Dice ceiling of stride-{args.stride} logits with bilinear upsampling (no training)",
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python " + " ".join(shlex.quote(a) for a in
                                              ["benchmarks/model_scale/stride_ceiling.py"] +
                                              (sys.argv[1:] if argv is None else list(argv))),
              "machine": machine_info(), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                      for k, v in vars(args).items()},
              "ellipses": ellipses(args)}
    if args.cord:
        if not CORD.is_dir():
            raise SystemExit(f"stride_ceiling: error: {CORD}: missing (needed by --cord)")
        result["cord"] = cord(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
