#!/usr/bin/env python
"""Multi-scale test-time augmentation on the leave-one-contrast-out (LOCO) cord check: a diagnosis on finished
models, nothing retrained.

Multi-scale inference (the network also run on the slice preprocessed at other sizes, probabilities averaged at
the image's own size; DeepLab's and HRNet's evaluation) is a generic way to let a stride-8 network such as
FCN-ResNet50 sample a small structure more finely. Whether it helps the unseen contrast is measured here on the
``best.pt`` of finished ``run_cord_lococ.py`` runs (``W/runs/<method>/heldout_<C>/best.pt``; the held-out volume
is ``W/data/test_<C>``): for each scale set (and each with the left-right flip) the probabilities of the members
are averaged at the native size, thresholded at the checkpoint's tuned threshold, and scored with hemseg's per-slice
Dice (both empty = 1) and pooled Dice, without post-processing (the benchmark's ``test`` numbers). Scale 1 alone reproduces how
``hemseg eval`` maps a network's output back (bilinear logits, threshold on the probability).

Usage (the command of a committed result is stored in its JSON)::

    python benchmarks/real_data/scale_tta_check.py OUT.json W1/runs/*/heldout_*/best.pt ...
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SETS = {"1": (1.0,), "1+1.25": (1.0, 1.25), "0.8+1+1.25": (0.8, 1.0, 1.25)}


def probabilities(model, image: np.ndarray, spec, scale: float, flip: bool) -> np.ndarray:
    """The network's probability map of one uint8 slice preprocessed at ``scale`` x the model's size, at the
    slice's own size."""
    import dataclasses

    import torch

    from hemseg.runtime.postprocess import resample_scores
    from hemseg.runtime.preprocess import preprocess

    size = int(round(spec.size * scale / 8)) * 8  # a multiple of the stride
    x = preprocess(image, dataclasses.replace(spec, size=size))[None]
    if flip:
        x = x[..., ::-1].copy()
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()[0, 0]
    if flip:
        logits = logits[:, ::-1]
    native = resample_scores(logits, image.shape)
    return 1.0 / (1.0 + np.exp(-native.astype(np.float64)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, default=None,
                    help="score every checkpoint on this hemseg dataset instead of its LOCO held-out volume (e.g. the "
                         "quickstart's held-out phantom slices: an in-distribution check)")
    args = ap.parse_args(argv)

    from hemseg.bench.machine import machine_info
    from hemseg.runtime.dataset import discover, load_pair
    from hemseg.runtime.metrics import dice_score
    from hemseg.runtime.preprocess import PreprocessSpec
    from hemseg.train.checkpoint import load_checkpoint

    rows = []
    for ckpt in args.checkpoints:
        if args.data is None:
            contrast = ckpt.parent.name.removeprefix("heldout_")
            samples = discover(ckpt.parents[3] / "data" / f"test_{contrast}").samples
        else:
            contrast, samples = str(args.data), discover(args.data).samples
        model, config = load_checkpoint(ckpt)
        spec = PreprocessSpec.from_dict(config["preprocess"])
        threshold = float(config["threshold"])
        slices = [(img[i], msk[i]) for img, msk in (load_pair(s) for s in samples) for i in range(img.shape[0])]
        images, masks = [im for im, _ in slices], [m for _, m in slices]
        row = {"checkpoint": str(ckpt), "held_out": contrast, "threshold": threshold, "dice": {}}
        cache: dict[tuple[float, bool], list[np.ndarray]] = {}
        for name, scales in SETS.items():
            for flip in (False, True):
                per_slice, inter, total = [], 0, 0
                for k in range(len(images)):
                    probs = []
                    for s in scales:
                        for f in ((False, True) if flip else (False,)):
                            key = (s, f)
                            if key not in cache:
                                cache[key] = [probabilities(model, images[i], spec, s, f)
                                              for i in range(len(images))]
                            probs.append(cache[key][k])
                    pred = np.mean(probs, axis=0) > threshold
                    per_slice.append(dice_score(pred.astype(np.uint8), masks[k]))
                    inter += int(np.count_nonzero(pred & (masks[k] > 0)))
                    total += int(np.count_nonzero(pred)) + int(np.count_nonzero(masks[k]))
                label = name + (" + flip" if flip else "")
                row["dice"][label] = float(np.mean(per_slice))
                row.setdefault("dice_pooled", {})[label] = 2.0 * inter / total if total else 1.0
        print(contrast, ckpt, {k: round(v, 3) for k, v in row["dice"].items()}, "pooled",
              {k: round(v, 3) for k, v in row["dice_pooled"].items()}, flush=True)
        rows.append(row)

    keys = list(rows[0]["dice"])
    by_contrast = {c: {k: float(np.mean([r["dice"][k] for r in rows if r["held_out"] == c])) for k in keys}
                   for c in sorted({r["held_out"] for r in rows})}
    result = {
        "experiment": "multi-scale test-time augmentation on leave-one-contrast-out cord models (diagnosis)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO),
                                                                  *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "scale_sets": {k: list(v) for k, v in SETS.items()},
        "mean_by_held_out_contrast": by_contrast,
        "mean_over_models": {k: float(np.mean([r["dice"][k] for r in rows])) for k in keys},
        "pooled_mean_over_models": {k: float(np.mean([r["dice_pooled"][k] for r in rows])) for k in keys},
        "models": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for c, v in by_contrast.items():
        print(c, {k: round(x, 3) for k, x in v.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
