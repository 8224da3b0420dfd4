#!/usr/bin/env python
"""Paired check of where a mask is decided: the same LOCO checkpoints, the same logits, two rules.

- ``network grid + nearest`` (hemseg before 2026-12-03): threshold the logits at the network's size, enlarge the
  mask to the slice's size with nearest neighbours;
- ``resampled logits`` (hemseg's pipeline now, :func:`hemseg.runtime.postprocess.postprocess` with ``out_size``):
  resample the logits to the slice's size (bilinear) and threshold there.

For each ``RUN_DIR/heldout_<C>/best.pt`` of a ``run_cord_lococ.py`` work folder: the mean per-slice Dice on the
held-out contrast ``C`` (the LOCO score) and on the two training contrasts (seen data, optimistic), at the
checkpoint's own threshold, no clean-up. The logits come from :class:`hemseg.runtime.pipeline.Pipeline` once per
volume; both rules work on those same arrays.

Usage::

    python benchmarks/real_data/mask_resampling.py OUT.json WORK/runs/<method> [WORK2/runs/<method> ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "spine-generic-sub-unf01"
CONTRASTS = ("T1w", "T2w", "T2star")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("runs", nargs="+", type=Path, help="run_cord_lococ.py's WORK/runs/<method> folders")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--held-out", default=",".join(CONTRASTS),
                   help="folds to evaluate (comma-separated held-out contrasts; default: every fold found)")
    args = p.parse_args(argv)

    from hemseg.bench.machine import machine_info
    from hemseg.runtime.io import read_image, read_mask, to_uint8
    from hemseg.runtime.metrics import dice_score
    from hemseg.runtime.pipeline import Pipeline
    from hemseg.runtime.postprocess import PostprocessConfig, postprocess, resize_back
    from hemseg.train.checkpoint import load_checkpoint, spec_of
    from hemseg.train.eval_report import write_json
    from hemseg.train.torch_runner import TorchRunner

    volumes = {}
    for c in CONTRASTS:
        image = args.data / f"sub-unf01_{c}.nii.gz"
        vol = read_image(image)
        gt = read_mask(args.data / f"sub-unf01_{c}_seg-manual.nii.gz", image=vol) > 0
        volumes[c] = (list(to_uint8(vol.data, image)), gt)

    rows = []
    for run in args.runs:
        for held in [c.strip() for c in args.held_out.split(",") if c.strip()]:
            ckpt = run / f"heldout_{held}" / "best.pt"
            if not ckpt.is_file():
                continue
            model, config = load_checkpoint(ckpt)
            cfg = PostprocessConfig(threshold=float(config["threshold"]))
            pipe = Pipeline(TorchRunner(model, device="cpu"), spec_of(config), cfg, batch_size=8)
            row = {"run": str(run), "held_out": held, "image_size": config["image_size"],
                   "threshold": cfg.threshold, "dice": {}}
            for c, (slices, gt) in volumes.items():
                logits = pipe.run_all(slices).logits
                old = [resize_back(postprocess(lg, cfg, logits=True), g.shape) for lg, g in zip(logits, gt)]
                new = [postprocess(lg, cfg, logits=True, out_size=g.shape) for lg, g in zip(logits, gt)]
                row["dice"][c] = {
                    "role": "held-out" if c == held else "seen (training volume)",
                    "network_grid_nearest": float(np.mean([dice_score(m, g) for m, g in zip(old, gt)])),
                    "resampled_logits": float(np.mean([dice_score(m, g) for m, g in zip(new, gt)])),
                }
            rows.append(row)
            print(f"{run.name} held-out {held}: " + "; ".join(
                f"{c} {d['network_grid_nearest']:.3f} -> {d['resampled_logits']:.3f}" for c, d in row["dice"].items()))
    if not rows:
        raise SystemExit("mask_resampling: error: no heldout_<C>/best.pt under the given run folders")
    summary = {}
    for rule in ("network_grid_nearest", "resampled_logits"):
        by_run: dict[str, list[float]] = {}
        for r in rows:
            by_run.setdefault(r["run"], []).append(r["dice"][r["held_out"]][rule])
        summary[rule] = {run: {"mean_over_held_out_folds": float(np.mean(v)), "folds": len(v)}
                         for run, v in by_run.items()}
    cpu = machine_info()
    write_json(args.out, {
        "experiment": "mask decided on the network grid (nearest enlargement) vs on resampled logits; LOCO cord",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO)] +
                                        (sys.argv[1:] if argv is None else list(argv))),
        "machine": {"cpu": cpu["cpu"], "cpu_flags": cpu["cpu_flags"]},
        "notes": ["Mean per-slice Dice over the 16 slices of each volume at native size (131 x 141), at each "
                  "checkpoint's own tuned threshold, no clean-up; the same logits under both rules."],
        "rows": rows, "summary": summary,
    })
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
