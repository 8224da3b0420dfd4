#!/usr/bin/env python
"""Diagnosis: does re-estimating BatchNorm statistics on the unlabeled target images (AdaBN, Li et al., 2016/2018;
"covariate shift adaptation", Schneider et al., 2020) recover an unseen contrast? For each LOCO checkpoint
(``.../heldout_C/best.pt``): the runtime pipeline on contrast C's volume (Dice as ``hemseg eval``'s per-slice mean, at
the checkpoint's own threshold), then the same after the BatchNorm running statistics were recomputed on that
volume's preprocessed slices (images only, no mask: label-free), and on the training contrasts as a control.

Usage::

    python benchmarks/real_data/adabn_check.py W/runs/<method>/heldout_T1w/best.pt [...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "spine-generic-sub-unf01"
CONTRASTS = ("T1w", "T2w", "T2star")


class Recorder:
    """A runner that passes through and keeps the preprocessed batches it was given."""

    def __init__(self, runner):
        self.runner = runner
        self.batches: list[np.ndarray] = []

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def infer(self, batch):
        self.batches.append(np.array(batch, dtype=np.float32))
        return self.runner.infer(batch)


def summarize(rows: list[dict]) -> dict:
    """Mean held-out Dice per fold and over folds, without and with AdaBN (rows of one fold may come from several
    seeds)."""
    out = {}
    for key in ("dice", "dice_adabn"):
        per = {}
        for row in rows:
            per.setdefault(row["held_out"], []).append(row[f"{row['held_out']}_{key}"])
        out[key] = {c: round(float(np.mean(v)), 4) for c, v in per.items()}
        out[key]["mean_of_folds"] = round(float(np.mean([np.mean(v) for v in per.values()])), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    from hemseg.runtime.io import read_image, read_mask, to_uint8
    from hemseg.runtime.metrics import dice_score
    from hemseg.runtime.pipeline import Pipeline
    from hemseg.runtime.postprocess import PostprocessConfig
    from hemseg.train.checkpoint import load_checkpoint, spec_of
    from hemseg.train.precise_bn import recompute_bn_stats
    from hemseg.train.torch_runner import TorchRunner

    vols = {}
    for c in CONTRASTS:
        image = args.data / f"sub-unf01_{c}.nii.gz"
        vol = read_image(image)
        gt = read_mask(args.data / f"sub-unf01_{c}_seg-manual.nii.gz", image=vol) > 0
        vols[c] = (list(to_uint8(vol.data, image)), gt)

    rows = []
    for ckpt in args.checkpoints:
        held = ckpt.parent.name.removeprefix("heldout_")
        model, config = load_checkpoint(ckpt)
        post = PostprocessConfig(threshold=float(config["threshold"]))

        def score(c, record=False):
            runner = TorchRunner(model, device="cpu")
            rec = Recorder(runner)
            pipe = Pipeline(rec if record else runner, spec_of(config), post, batch_size=8)
            masks = pipe.run_all(vols[c][0]).masks
            d = float(np.mean([dice_score(m.astype(bool), g) for m, g in zip(masks, vols[c][1])]))
            empty = int(sum(not m.any() for m in masks))
            return d, empty, rec.batches

        row = {"checkpoint": str(ckpt), "held_out": held}
        for c in CONTRASTS:
            d, e, batches = score(c, record=True)
            row[f"{c}_dice"], row[f"{c}_empty"] = d, e
            if c == held:
                target = batches
        state = {k: v.clone() for k, v in model.state_dict().items()}
        recompute_bn_stats(model, [torch.from_numpy(b) for b in target], torch.device("cpu"))
        for c in CONTRASTS:
            d, e, _ = score(c)
            row[f"{c}_dice_adabn"], row[f"{c}_empty_adabn"] = d, e
        model.load_state_dict(state)
        rows.append(row)
        print(f"{ckpt}: held-out {held} {row[f'{held}_dice']:.3f} -> AdaBN {row[f'{held}_dice_adabn']:.3f} "
              f"(empty {row[f'{held}_empty']} -> {row[f'{held}_empty_adabn']}); "
              + ", ".join(f"{c} {row[f'{c}_dice']:.3f}->{row[f'{c}_dice_adabn']:.3f}" for c in CONTRASTS if c != held),
              flush=True)
    summary = summarize(rows)
    print(json.dumps(summary))
    if args.json:
        import datetime

        from hemseg.bench.machine import machine_info
        from hemseg.runtime.io.writers import atomic_write_bytes
        doc = {"experiment": "adabn_check", "date": datetime.date.today().isoformat(), "machine": machine_info(),
               "command": " ".join(["python", *sys.argv]), "summary": summary, "rows": rows}
        atomic_write_bytes(args.json, json.dumps(doc, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
