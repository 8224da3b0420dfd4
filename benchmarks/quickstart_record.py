"""Record a finished ``hemseg quickstart --out DIR`` run as one JSON in ``benchmarks/results/``.

Usage::

    hemseg quickstart --out DIR
    python benchmarks/quickstart_record.py DIR benchmarks/results/<date>_<machine>_quickstart_<what>.json \
        --command "hemseg quickstart --out DIR" [--note "..."]

Writes the command, the machine (CPU model and flags from ``hemseg.bench.machine``, the load average before the
record), the quickstart's summary (settings, step times, lines, warnings), the training metrics and the held-out
evaluation (pooled Dice first, lesion detection, per category). Every number is read from the run's own files.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

TRAIN_KEYS = ("model", "steps", "seconds", "minutes_budget", "seconds_per_step", "amp", "dice_global", "dice",
              "threshold", "val_dice_tuned", "recipe", "n_train_slices", "n_val_slices", "init")
EVAL_KEYS = ("dice_global", "dice", "iou", "precision", "recall", "hd95", "n_images", "n_gt_empty", "n_pred_empty",
             "threshold", "image_size", "ci95")


def machine_now() -> dict:
    """CPU model and flags (``hemseg.bench.machine``) plus the load average at the time of the record."""
    from hemseg.bench.machine import machine_info

    machine = machine_info()
    machine["load_average"] = os.getloadavg()
    return machine


def heldout_eval(ev: dict) -> dict:
    """The held-out part of a record from ``hemseg eval``'s ``summary.json``: pooled Dice first, lesions, categories."""
    return {**{k: ev.get(k) for k in EVAL_KEYS}, "lesions": ev.get("lesions"), "per_category": ev.get("per_category")}


def engine_eval(ev: dict) -> dict:
    """:func:`heldout_eval` of an exported model's ``hemseg eval``, with the file and backend that ran it."""
    return {**{k: ev.get(k) for k in ("model_file", "model_file_sha256", "model_precision", "backend")},
            **heldout_eval(ev)}


def write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the quickstart's --out folder")
    ap.add_argument("json", type=Path, help="the result file to write")
    ap.add_argument("--command", required=True, help="the exact command that made the run")
    ap.add_argument("--note", default="")
    a = ap.parse_args()

    qs = json.loads((a.run / "quickstart.json").read_text())
    metrics = json.loads((a.run / "run" / "metrics.json").read_text())
    ev = json.loads((a.run / "eval" / "summary.json").read_text())
    record = {
        "experiment": "hemseg quickstart (" + ("GPU" if qs.get("gpu") else "CPU") + " defaults)",
        "command": a.command,
        "machine": machine_now(),
        "note": a.note,
        "quickstart": {"settings": qs["settings"], "wall_s": qs["wall_s"], "steps": qs["steps"],
                       "lines": qs["lines"], "warnings": qs["warnings"]},
        "train_metrics": {k: metrics.get(k) for k in TRAIN_KEYS},
        "heldout_eval": heldout_eval(ev),
    }
    int8 = a.run / "eval_int8" / "summary.json"  # the quickstart's INT8 engine on the same held-out slices
    if int8.is_file():
        record["heldout_eval_engines"] = {"onnx-int8 (ort-cpu)": engine_eval(json.loads(int8.read_text()))}
    write_record(a.json, record)


if __name__ == "__main__":
    main()
