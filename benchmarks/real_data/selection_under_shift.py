#!/usr/bin/env python
"""Diagnosis: would choosing the checkpoint (and threshold) on *appearance-shifted* validation slices pick models
that transfer better to an unseen MRI contrast than choosing on the validation slices as they are?

``best.pt`` is the checkpoint with the best validation Dice on the training contrasts; on the leave-one-contrast-out
(LOCO) cord check the unseen T1w fold swings between 0.25 and 0.77 with the seed, and longer training raised the
validation Dice while T1w fell. If some validated checkpoints of a run transfer much better than the chosen one, a
label-free criterion that tracks transfer could pick them. The candidate here: the same validation slices under
fixed appearance changes that inference on another sequence meets to first order (eight random smooth intensity
curves, :class:`~hemseg.train.transforms.RandomIntensityCurve`'s family drawn with a fixed seed, and the body
inversion of :func:`~hemseg.train.transforms.invert_body`), pooled Dice at 0.5.

``train``: one LOCO fold (default T1w held out) with the default band command of ``run_cord_lococ.py``, keeping
every validated checkpoint as ``step<N>.pt`` beside ``best.pt``. ``analyze``: for each kept checkpoint, pooled Dice
on the clean validation slices, on the shifted ones, and mean per-slice Dice on the held-out volume (all at 0.5);
then the held-out Dice of the checkpoint each criterion picks, and of the best one (an oracle, not a method).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/real_data/selection_under_shift.py train --seed S --work W [--contrast T1w]
    python benchmarks/real_data/selection_under_shift.py analyze OUT.json W1 W2 ... [--contrast T1w]
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
for p in (REPO, REPO / "benchmarks" / "real_data"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

DATA = REPO.parent / "shared" / "data" / "spine-generic-sub-unf01"
BAND = ["--models", "fcn_resnet50", "--recipes", "hemseg", "--steps", "500", "--image-size", "96", "--batch-size",
        "4", "--fov", "0.5", "--fov-shape", "band"]
N_CURVES = 8


def train(args: argparse.Namespace) -> int:
    import run_cord_lococ

    import hemseg.train.fit as fit_mod

    original = fit_mod.save_checkpoint

    def keep_every(path, model, config, extra=None):
        path = Path(path)
        if path.name == "last.pt":  # every validation writes last.pt: keep its weights under the step number
            original(path.parent / f"step{int(config['step']):05d}.pt", model, config)
        return original(path, model, config, extra=extra) if extra is not None else original(path, model, config)

    fit_mod.save_checkpoint = keep_every
    out = args.work / "lococ.json"
    return run_cord_lococ.main([*BAND, "--contrasts", args.contrast, "--seed", str(args.seed), "--work",
                                str(args.work), "--out", str(out)])


def curves(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` lookup tables of RandomIntensityCurve's family, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(256) / 255.0
    luts = []
    while len(luts) < n:
        y = np.concatenate([[0.0], rng.random(3)])
        c = (1 - t) ** 3 * y[0] + 3 * t * (1 - t) ** 2 * y[1] + 3 * t ** 2 * (1 - t) * y[2] + t ** 3 * y[3]
        if c.max() > 1e-6:
            luts.append(np.round(c / c.max() * 255).astype(np.uint8))
    return luts


def pooled(masks, truth) -> float:
    inter = sum(int((m.astype(bool) & g).sum()) for m, g in zip(masks, truth))
    total = sum(int(m.astype(bool).sum()) + int(g.sum()) for m, g in zip(masks, truth))
    return 2 * inter / total if total else 1.0


def analyze(args: argparse.Namespace) -> int:
    from hemseg.runtime.dataset import discover, load_pair
    from hemseg.runtime.io import read_image, read_mask, to_uint8
    from hemseg.runtime.metrics import dice_score
    from hemseg.runtime.pipeline import Pipeline
    from hemseg.runtime.postprocess import PostprocessConfig
    from hemseg.train.checkpoint import load_checkpoint, spec_of
    from hemseg.train.torch_runner import TorchRunner
    from hemseg.train.transforms import invert_body

    image = args.data / f"sub-unf01_{args.contrast}.nii.gz"
    vol = read_image(image)
    test = list(to_uint8(vol.data, image))
    test_gt = list(read_mask(args.data / f"sub-unf01_{args.contrast}_seg-manual.nii.gz",
                             image=vol) > 0)
    luts = curves(N_CURVES)
    runs = []
    for work in args.works:
        run_dir = next((work / "runs").glob(f"*/heldout_{args.contrast}"))
        config = json.loads((run_dir / "config.json").read_text())
        val_ids = set(config["splits"][0]["val"])
        samples = [s for s in discover(Path(config["data"])).samples if s.stem in val_ids]
        val, val_gt = [], []
        for s in samples:
            im, m = load_pair(s)
            val += list(im)
            val_gt += [x > 0 for x in m]
        shifted = [lut[v] for lut in luts for v in val] + [invert_body(v) for v in val]
        shifted_gt = val_gt * (len(luts) + 1)
        rows = []
        for ckpt in sorted(run_dir.glob("step*.pt")):
            model, cfg = load_checkpoint(ckpt)
            pipe = Pipeline(TorchRunner(model, device="cpu"), spec_of(cfg), PostprocessConfig(threshold=0.5),
                            batch_size=16)
            row = {"step": int(cfg["step"]),
                   "val_clean": pooled(pipe.run_all(val).masks, val_gt),
                   "val_shifted": pooled(pipe.run_all(shifted).masks, shifted_gt),
                   "test": float(np.mean([dice_score(m.astype(bool), g)
                                          for m, g in zip(pipe.run_all(test).masks, test_gt)]))}
            rows.append(row)
            print(work.name, json.dumps(row), flush=True)
        best = json.loads((run_dir / "metrics.json").read_text())
        pick = {name: max(rows, key=lambda r: (r[name], r["step"])) for name in ("val_clean", "val_shifted")}
        runs.append({"work": str(work), "seed": config["seed"], "checkpoints": rows,
                     "best_pt_step": best.get("step"),
                     "test_of_pick": {name: r["test"] for name, r in pick.items()},
                     "step_of_pick": {name: r["step"] for name, r in pick.items()},
                     "test_oracle": max(r["test"] for r in rows),
                     "spearman_with_test": {name: _spearman([r[name] for r in rows], [r["test"] for r in rows])
                                            for name in ("val_clean", "val_shifted")}})
    result = {
        "experiment": "checkpoint selection on appearance-shifted validation slices (LOCO cord, diagnosis)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/real_data/selection_under_shift.py " + shlex.join(sys.argv[1:]),
        "train_command": "python benchmarks/real_data/run_cord_lococ.py " + shlex.join(BAND)
                         + f" --contrasts {args.contrast} --seed S (every validated checkpoint kept)",
        "held_out": args.contrast, "n_curves": N_CURVES, "threshold": 0.5, "runs": runs,
        "mean_test_of_pick": {name: float(np.mean([r["test_of_pick"][name] for r in runs]))
                              for name in ("val_clean", "val_shifted")},
        "mean_test_oracle": float(np.mean([r["test_oracle"] for r in runs])),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("mean_test_of_pick", "mean_test_oracle")}, indent=1))
    return 0


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    c = np.corrcoef(ra, rb)[0, 1]
    return None if np.isnan(c) else float(c)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--seed", type=int, required=True)
    t.add_argument("--work", type=Path, required=True)
    t.add_argument("--contrast", default="T1w")
    a = sub.add_parser("analyze")
    a.add_argument("out", type=Path)
    a.add_argument("works", type=Path, nargs="+")
    a.add_argument("--contrast", default="T1w")
    a.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args(argv)
    return train(args) if args.cmd == "train" else analyze(args)


if __name__ == "__main__":
    raise SystemExit(main())
