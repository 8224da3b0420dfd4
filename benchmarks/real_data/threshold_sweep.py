#!/usr/bin/env python
"""Diagnosis, not a result: the held-out Dice of LOCO checkpoints at several thresholds, to tell a model that finds
the cord but is mis-calibrated on the unseen contrast (a lower threshold recovers it) from one that does not find it.
The threshold is chosen on the test volume here, so none of these numbers is a fair score.

For each checkpoint: the runtime pipeline (``hemseg eval``'s) on every slice of ``--contrast``'s volume at native
size, mean per-slice Dice and predicted pixels at ``--thresholds`` and at the checkpoint's own tuned threshold.

Usage::

    python benchmarks/real_data/threshold_sweep.py CKPT [CKPT ...] [--contrast T1w] [--thresholds 0.05 0.2 0.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "spine-generic-sub-unf01"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--contrast", default="T1w")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.2, 0.5])
    p.add_argument("--data", type=Path, default=DATA)
    args = p.parse_args(argv)

    from hemseg.runtime.io import read_image, read_mask, to_uint8
    from hemseg.runtime.metrics import dice_score
    from hemseg.runtime.pipeline import Pipeline
    from hemseg.runtime.postprocess import PostprocessConfig
    from hemseg.train.checkpoint import load_checkpoint, spec_of
    from hemseg.train.torch_runner import TorchRunner

    image = args.data / f"sub-unf01_{args.contrast}.nii.gz"
    vol = read_image(image)
    gt = read_mask(args.data / f"sub-unf01_{args.contrast}_seg-manual.nii.gz", image=vol) > 0
    slices = list(to_uint8(vol.data, image))
    print(f"{image.name}: {len(slices)} slices, {int(gt.sum())} cord pixels")
    for ckpt in args.checkpoints:
        model, config = load_checkpoint(ckpt)
        cells = []
        for t in list(args.thresholds) + [float(config["threshold"])]:
            pipe = Pipeline(TorchRunner(model, device="cpu"), spec_of(config),
                            PostprocessConfig().replace(threshold=t), batch_size=8)
            masks = [m.astype(bool) for m in pipe.run_all(slices).masks]
            dice = [dice_score(m, g) for m, g in zip(masks, gt)]
            cells.append(f"t={t:.2f}: Dice {np.mean(dice):.3f}, {sum(int(m.sum()) for m in masks)} px")
        print(f"{ckpt} ({config['image_size']} px; last = tuned): " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
