#!/usr/bin/env python
"""Seed ensembles and flip TTA on the leave-one-contrast-out (LOCO) cord check, paired on the same weights.

Takes the ``--work`` folders of several finished ``run_cord_lococ.py`` runs that differ only in ``--seed`` and, for
every held-out contrast, evaluates on the held-out volume (``hemseg eval``'s code, :func:`evaluate_checkpoint`):

- every member alone, without and with flip TTA (``hemseg eval --tta``);
- the ensemble of all members (``hemseg eval A --ensemble-with B ...``: mean probability at the mean of their
  tuned thresholds), without and with flip TTA.

Nothing is trained here; every number comes from the members' own ``best.pt``, so the differences between rows are
due to the averaging alone, not to another training run.

Usage (the command of a committed result is stored in its JSON)::

    python benchmarks/real_data/ensemble_lococ.py OUT.json WORK1 WORK2 WORK3 [--method fcn_resnet50_hemseg]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CONTRASTS = ("T1w", "T2w", "T2star")
KEYS = ("dice", "dice_global", "iou", "hd95", "n_pred_empty", "threshold")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("works", type=Path, nargs="+", help="run_cord_lococ.py --work folders (one per seed)")
    ap.add_argument("--method", default="fcn_resnet50_hemseg", help="the run name under WORK/runs/")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/hemseg-ensemble-lococ"))
    a = ap.parse_args(argv)

    from hemseg.bench.machine import machine_info
    from hemseg.train.eval_report import write_json
    from hemseg.train.evaluate import evaluate_checkpoint

    start = time.perf_counter()
    folds = []
    for c in CONTRASTS:
        ckpts = [w / "runs" / a.method / f"heldout_{c}" / "best.pt" for w in a.works]
        missing = [p for p in ckpts if not p.is_file()]
        if missing:
            raise SystemExit(f"ensemble_lococ: error: {missing[0]}: missing (run run_cord_lococ.py first)")
        test = a.works[0] / "data" / f"test_{c}"
        rows = {}

        def ev(name: str, first: Path, others: list[Path], tta: bool) -> None:
            s = evaluate_checkpoint(first, test, a.scratch / c / name, ensemble_with=others, tta=tta,
                                    device="cpu", progress=False, n_overlays=0)
            rows[name] = {k: s.get(k) for k in KEYS}

        for w, p in zip(a.works, ckpts):
            for tta in (False, True):
                ev(f"{w.name}" + (" + flip TTA" if tta else ""), p, [], tta)
        for tta in (False, True):
            ev(f"ensemble of {len(ckpts)}" + (" + flip TTA" if tta else ""), ckpts[0], ckpts[1:], tta)
        folds.append({"held_out": c, "checkpoints": [str(p) for p in ckpts], "rows": rows})
    names = list(folds[0]["rows"])
    mean = {n: float(np.mean([f["rows"][n]["dice"] for f in folds])) for n in names}
    singles = [n for n in names if not n.startswith("ensemble") and "TTA" not in n]
    result = {
        "experiment": "seed ensemble and flip TTA, leave-one-contrast-out cord check (spine-generic sub-unf01)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(x) for x in [os.path.relpath(__file__, REPO)] +
                                        (sys.argv[1:] if argv is None else list(argv))),
        "machine": machine_info(),
        "members": [str(w) for w in a.works],
        "folds": folds,
        "mean_dice_over_folds": mean,
        "mean_of_single_members": float(np.mean([mean[n] for n in singles])),
        "seconds": time.perf_counter() - start,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    print("| evaluation | " + " | ".join(f"held-out {c}" for c in CONTRASTS) + " | mean |")
    print("|---|---|---|---|---|")
    for n in names:
        print(f"| {n} | " + " | ".join(f"{f['rows'][n]['dice']:.3f}" for f in folds) + f" | {mean[n]:.3f} |")
    print(f"\nwritten: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
