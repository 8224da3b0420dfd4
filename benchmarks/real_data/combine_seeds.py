#!/usr/bin/env python
"""Combine several ``run_cord_lococ.py`` result files (the same experiment with other seeds or settings) into one
JSON: every input file whole, plus, per method, the held-out Dice of every (seed, fold) and their mean and standard
deviation over seeds of the fold-mean.

Usage::

    python benchmarks/real_data/combine_seeds.py OUT.json RUN1.json RUN2.json ... [--note "..."]

Methods are matched by name (``unet (hemseg recipe)``, ``unet (hemseg recipe, without nlm + bilateral)``, ...).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def combine(files: list[Path]) -> dict:
    runs = [json.loads(f.read_text()) for f in files]
    methods: dict[str, dict] = {}
    for f, r in zip(files, runs):
        seed = r["settings"]["seed"]
        for m in r["methods"]:
            entry = methods.setdefault(m, {"runs": []})
            dice = {fold["held_out"]: fold["methods"][m]["dice"] for fold in r["folds"]}
            entry["runs"].append({"file": f.name, "seed": seed, "dice_per_held_out_contrast": dice,
                                  "mean_dice": float(np.mean(list(dice.values())))})
    for entry in methods.values():
        means = [x["mean_dice"] for x in entry["runs"]]
        entry["mean_dice_over_runs"] = float(np.mean(means))
        entry["std_dice_over_runs"] = float(np.std(means))
        entry["n_runs"] = len(means)
    return {"methods": methods, "inputs": [{"file": f.name, "command": r["command"], "result": r}
                                           for f, r in zip(files, runs)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    from hemseg.bench.machine import machine_info

    info = machine_info()
    result = {"note": a.note, "combined_on": {k: info[k] for k in ("date", "cpu", "cores", "cpu_flags")},
              **combine(a.runs)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    for m, e in result["methods"].items():
        per = "; ".join(f"seed {x['seed']}: " + " / ".join(f"{v:.3f}" for v in x["dice_per_held_out_contrast"].values())
                        for x in e["runs"])
        print(f"{m}: mean {e['mean_dice_over_runs']:.3f} +/- {e['std_dice_over_runs']:.3f} over {e['n_runs']} "
              f"run(s) ({per})")


if __name__ == "__main__":
    main()
