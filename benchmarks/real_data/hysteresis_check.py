#!/usr/bin/env python
"""Diagnosis, nothing trained: hysteresis thresholding of finished checkpoints' probability maps, against their
tuned threshold, on the leave-one-contrast-out (LOCO) cord volumes and on the phantom's held-out set.

The question: on an unseen contrast the LOCO models are under-confident (high precision, low recall at the threshold
tuned on the training contrasts; see ``threshold_sweep.py``). Hysteresis (Canny 1986) keeps every pixel above the
tuned threshold ``t`` and grows those regions through connected pixels above ``t / 2`` (Canny's 2:1 ratio, chosen
before looking), so it can recover the extent of a found structure without adding components that never reach
``t``. Whether it costs anything where test and validation come from one distribution is the phantom's part.

For every checkpoint: the runtime pipeline (``hemseg eval``'s) gives probability maps at native size; masks at
``t`` (tuned), by hysteresis (``t``, ``t / 2``) and at ``t / 2`` everywhere. LOCO: mean per-slice Dice on the
held-out contrast (the folder name ``heldout_<C>``). Phantom: pooled Dice over all slices and the number of
lesion-free slices with a predicted pixel.

Usage::

    python benchmarks/real_data/hysteresis_check.py OUT.json --loco W/runs/<run>/heldout_*/best.pt ...
        [--phantom HELDOUT --phantom-models RUN/best.pt ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "spine-generic-sub-unf01"


def hysteresis(prob: np.ndarray, high: float, low: float) -> np.ndarray:
    """Pixels > ``low`` that are 8-connected to a pixel > ``high``."""
    n, labels = cv2.connectedComponents((prob > low).astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[np.unique(labels[prob > high])] = True
    keep[0] = False
    return keep[labels]


RULES = {
    "tuned": lambda p, t: p > t,
    "hysteresis_t_t/2": lambda p, t: hysteresis(p, t, t / 2),
    "fixed_t/2": lambda p, t: p > t / 2,
}


def probabilities(ckpt: Path, slices: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    from hemseg.runtime.pipeline import Pipeline
    from hemseg.runtime.postprocess import PostprocessConfig
    from hemseg.train.checkpoint import load_checkpoint, spec_of
    from hemseg.train.torch_runner import TorchRunner

    model, config = load_checkpoint(ckpt)
    t = float(config["threshold"])
    pipe = Pipeline(TorchRunner(model, device="cpu"), spec_of(config), PostprocessConfig(threshold=t), batch_size=8)
    return pipe.run_all(slices, return_prob=True).probs, t


def loco(ckpts: list[Path], data: Path) -> list[dict]:
    from hemseg.runtime.io import read_image, read_mask, to_uint8
    from hemseg.runtime.metrics import dice_score

    rows = []
    for ckpt in ckpts:
        contrast = ckpt.parent.name.removeprefix("heldout_")
        image = data / f"sub-unf01_{contrast}.nii.gz"
        vol = read_image(image)
        gt = read_mask(data / f"sub-unf01_{contrast}_seg-manual.nii.gz", image=vol) > 0
        probs, t = probabilities(ckpt, list(to_uint8(vol.data, image)))
        row = {"checkpoint": str(ckpt), "held_out": contrast, "threshold": t}
        for name, rule in RULES.items():
            row[name] = float(np.mean([dice_score(rule(p, t), g) for p, g in zip(probs, gt)]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def phantom(heldout: Path, ckpts: list[Path]) -> list[dict]:
    from hemseg.runtime.dataset import discover, load_pair

    slices, truth = [], []
    for sample in discover(heldout).samples:
        image, mask = load_pair(sample)
        slices += list(image)
        truth += [m > 0 for m in mask]
    rows = []
    for ckpt in ckpts:
        probs, t = probabilities(ckpt, slices)
        row = {"checkpoint": str(ckpt), "threshold": t, "n_slices": len(slices),
               "n_lesion_free": int(sum(not g.any() for g in truth))}
        for name, rule in RULES.items():
            masks = [rule(p, t) for p in probs]
            inter = sum(int((m & g).sum()) for m, g in zip(masks, truth))
            total = sum(int(m.sum()) + int(g.sum()) for m, g in zip(masks, truth))
            row[name] = {"dice_global": 2 * inter / total if total else 1.0,
                         "pred_on_lesion_free": int(sum(m.any() for m, g in zip(masks, truth) if not g.any()))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--loco", type=Path, nargs="*", default=[])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--phantom", type=Path)
    ap.add_argument("--phantom-models", type=Path, nargs="*", default=[])
    args = ap.parse_args(argv)
    from hemseg.bench.machine import machine_info

    result = {
        "experiment": "hysteresis thresholding (t, t/2) vs the tuned threshold t, on finished checkpoints",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/real_data/hysteresis_check.py " + shlex.join(sys.argv[1:] if argv is None
                                                                                   else argv),
        "machine": {"platform": platform.platform(), **machine_info()},
        "loco": loco(args.loco, args.data),
        "phantom": phantom(args.phantom, args.phantom_models) if args.phantom else [],
    }
    by_contrast: dict[str, dict[str, list[float]]] = {}
    for row in result["loco"]:
        for name in RULES:
            by_contrast.setdefault(row["held_out"], {}).setdefault(name, []).append(row[name])
    result["loco_means"] = {c: {k: float(np.mean(v)) for k, v in d.items()} for c, d in by_contrast.items()}
    if result["loco"]:
        result["loco_means"]["all"] = {k: float(np.mean([r[k] for r in result["loco"]])) for k in RULES}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["loco_means"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
