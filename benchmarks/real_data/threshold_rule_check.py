#!/usr/bin/env python
"""Diagnosis of a threshold rule on finished runs, nothing retrained: the best-validation-Dice threshold (what
``hemseg train`` tunes today) against the *one-standard-error rule* toward lower thresholds (the lowest candidate
whose validation Dice is within one bootstrap standard error of the best; Breiman et al.'s 1-SE rule for choosing
among settings the validation data cannot tell apart).

Why lower: on data unlike the training data a network's probabilities shrink toward its prior, for a rare
foreground toward 0 (the LOCO models: precision 0.84-0.97, recall 0.22-0.67 on the unseen contrast), so among
thresholds that validate alike the lowest should transfer best. Whether it costs in-distribution Dice is what the
phantom runs show.

For each run folder (``best.pt`` + ``config.json`` with its ``splits``): the runtime pipeline (PyTorch runner, the
run's preprocessing) on its validation slices and on a test set at native size, threshold only (no clean-up);
pooled Dice (all pixels) on the validation slices at the 21 default candidates, ``--boot`` paired bootstrap resamples
of the validation slices for the standard error; on the test set pooled Dice and mean per-slice Dice at the
checkpoint's tuned threshold, at the re-tuned one, at the 1-SE one and at 0.5.

Test set: ``--test DIR`` (category folders ``<c>/images|masks`` of PNGs, e.g. a quickstart's ``heldout``) or
``--test-nifti IMAGE MASK`` (slice by slice, 8-bit mapping of the whole volume as ``hemseg eval`` does).

Usage::

    python benchmarks/real_data/threshold_rule_check.py RUN [RUN ...] (--test DIR | --test-nifti IMAGE MASK)
        [--boot 2000] [--json OUT]
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _splits(config: dict) -> dict:
    s = config["splits"]
    s = ast.literal_eval(s) if isinstance(s, str) else s
    return s[0]


def _pairs_in(root: Path, stems: set[str] | None = None) -> list[tuple[Path, Path]]:
    out = []
    for img in sorted(root.glob("*/images/*")):
        if stems is not None and img.stem not in stems:
            continue
        masks = list((img.parent.parent / "masks").glob(img.stem + ".*"))
        if len(masks) != 1:
            raise SystemExit(f"threshold_rule_check: {img}: expected one mask next to it, found {len(masks)}")
        out.append((img, masks[0]))
    return out


def _load_png_pairs(pairs):
    from hemseg.runtime.io import read_image, read_mask

    imgs, gts = [], []
    for img, mask in pairs:
        vol = read_image(img)
        imgs.append(vol.data[0] if vol.data.ndim == 3 else vol.data)
        m = read_mask(mask)
        gts.append((m[0] if m.ndim == 3 else m) > 0)
    return imgs, gts


def _load_nifti(image: Path, mask: Path):
    from hemseg.runtime.io import read_image, read_mask, to_uint8

    vol = read_image(image)
    gt = read_mask(mask, image=vol) > 0
    return list(to_uint8(vol.data, image)), list(gt)


def counts(logits, gts, candidates) -> tuple[np.ndarray, np.ndarray]:
    """Per slice and candidate: (intersection, |pred| + |gt|) of the threshold-only mask at the slice's size."""
    from hemseg.runtime.postprocess import PostprocessConfig, postprocess

    inter = np.zeros((len(gts), len(candidates)))
    total = np.zeros_like(inter)
    for i, (logit, g) in enumerate(zip(logits, gts)):
        for j, t in enumerate(candidates):
            m = postprocess(logit, PostprocessConfig().replace(threshold=t), logits=True, out_size=g.shape) > 0
            inter[i, j] = np.count_nonzero(m & g)
            total[i, j] = np.count_nonzero(m) + np.count_nonzero(g)
    return inter, total


def pooled(inter: np.ndarray, total: np.ndarray) -> np.ndarray:
    s = total.sum(axis=0)
    return np.where(s > 0, 2 * inter.sum(axis=0) / np.maximum(s, 1), 1.0)


def per_slice_mean(inter: np.ndarray, total: np.ndarray) -> np.ndarray:
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0).mean(axis=0)


def one_se_choice(inter: np.ndarray, total: np.ndarray, n_boot: int, seed: int = 0) -> dict:
    """Best candidate index, its bootstrap SE, and the lowest candidate within one SE of the best."""
    d = pooled(inter, total)
    best = int(np.argmax(d))
    rng = np.random.default_rng(seed)
    n = inter.shape[0]
    boot = np.array([pooled(inter[idx], total[idx]) for idx in rng.integers(0, n, size=(n_boot, n))])
    se = float(boot[:, best].std(ddof=1))
    low = int(np.flatnonzero(d >= d[best] - se)[0])
    return {"best": best, "se": se, "one_se": low, "val_dice": d.tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--test", type=Path)
    g.add_argument("--test-nifti", type=Path, nargs=2, metavar=("IMAGE", "MASK"))
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from hemseg.runtime.pipeline import Pipeline
    from hemseg.runtime.postprocess import DEFAULT_CANDIDATES, PostprocessConfig
    from hemseg.train.checkpoint import load_checkpoint, spec_of
    from hemseg.train.torch_runner import TorchRunner

    cands = [float(c) for c in DEFAULT_CANDIDATES]
    if args.test is not None:
        test_imgs, test_gts = _load_png_pairs(_pairs_in(args.test))
    else:
        test_imgs, test_gts = _load_nifti(*args.test_nifti)
    rows = []
    for run in args.runs:
        model, config = load_checkpoint(run / "best.pt")
        run_cfg = json.loads((run / "config.json").read_text())
        val_stems = set(_splits(run_cfg)["val"])
        val_imgs, val_gts = _load_png_pairs(_pairs_in(Path(run_cfg["data"]), val_stems))
        pipe = Pipeline(TorchRunner(model, device="cpu"), spec_of(config), PostprocessConfig(), batch_size=8)
        v_logits = pipe.run_all(val_imgs).logits
        t_logits = pipe.run_all(test_imgs).logits
        vi, vt = counts(v_logits, val_gts, cands)
        choice = one_se_choice(vi, vt, args.boot)
        tuned = float(config["threshold"])
        extra = [tuned, 0.5]
        ti, tt = counts(t_logits, test_gts, cands + extra)
        tp, tm = pooled(ti, tt), per_slice_mean(ti, tt)
        pick = {"checkpoint_tuned": len(cands), "retuned": choice["best"], "one_se": choice["one_se"],
                "fixed_0.5": len(cands) + 1}
        row = {"run": str(run), "n_val": len(val_imgs), "n_test": len(test_imgs), "val_se": choice["se"],
               "thresholds": {k: (cands + extra)[j] for k, j in pick.items()},
               "val_pooled": {k: float(pooled(vi, vt)[j]) if j < len(cands) else None for k, j in pick.items()},
               "test_pooled": {k: float(tp[j]) for k, j in pick.items()},
               "test_per_slice_mean": {k: float(tm[j]) for k, j in pick.items()}}
        rows.append(row)
        print(f"{run}: n_val {row['n_val']}, SE {choice['se']:.3f}; " + "; ".join(
            f"{k} t={row['thresholds'][k]:.3f} test pooled {row['test_pooled'][k]:.3f} / mean "
            f"{row['test_per_slice_mean'][k]:.3f}" for k in pick), flush=True)
    if args.json:
        from hemseg.bench.machine import machine_info

        doc = {"experiment": "threshold rule check (diagnosis, nothing retrained)",
               "command": "python benchmarks/real_data/threshold_rule_check.py " + " ".join(argv or sys.argv[1:]),
               "machine": machine_info(), "boot": args.boot, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
