#!/usr/bin/env python
"""Diagnosis: does a LOCO checkpoint rely on the field of view? Each volume is segmented twice, as it is and with
everything outside the T2w series' field of view (its nonzero voxels: a band of 52 of 131 rows) set to zero; the mean
per-slice Dice of both is printed, at the checkpoint's own threshold, no clean-up (the runtime pipeline).

Usage::

    python benchmarks/real_data/fov_band_check.py WORK/runs/<method>/heldout_T2w/best.pt [...]
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
    p.add_argument("--data", type=Path, default=DATA)
    args = p.parse_args(argv)

    from hemseg.runtime.io import read_image, read_mask, to_uint8
    from hemseg.runtime.metrics import dice_score
    from hemseg.runtime.pipeline import Pipeline
    from hemseg.runtime.postprocess import PostprocessConfig
    from hemseg.train.checkpoint import load_checkpoint, spec_of
    from hemseg.train.torch_runner import TorchRunner

    band = read_image(args.data / "sub-unf01_T2w.nii.gz").data != 0
    rows = np.where(band.any(axis=(0, 2)))[0]
    print(f"T2w field of view: rows {rows[0]}-{rows[-1]} of {band.shape[1]} ({band.mean():.0%} of the voxels)")
    for ckpt in args.checkpoints:
        model, config = load_checkpoint(ckpt)
        pipe = Pipeline(TorchRunner(model, device="cpu"), spec_of(config),
                        PostprocessConfig(threshold=float(config["threshold"])), batch_size=8)
        for c in ("T1w", "T2star", "T2w"):
            image = args.data / f"sub-unf01_{c}.nii.gz"
            vol = read_image(image)
            gt = read_mask(args.data / f"sub-unf01_{c}_seg-manual.nii.gz", image=vol) > 0
            cells = []
            for name, data in (("whole", vol.data), ("T2w FOV", np.where(band, vol.data, 0))):
                masks = pipe.run_all(list(to_uint8(data, image))).masks
                cells.append(f"{name} {np.mean([dice_score(m, g) for m, g in zip(masks, gt)]):.3f}")
            print(f"{ckpt}: {c}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
