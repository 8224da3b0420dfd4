"""Phase 4: paper-scale training with AMP, then the held-out evaluation; phase 5: ONNX FP32 + FP16 export.

Phase 4 runs three commands, each under its own timeout, and rewrites ``04_train.json`` after each:

1. ``hemseg data synth`` of the training phantom (200 per category x 12 = 2,400 slices, seed 0) and of a held-out
   phantom (20 per category, seed 1000), rendered in as many processes as the machine has cores;
2. ``hemseg train ... --recipe hemseg --minutes M --device cuda --precision auto --image-size 256`` with
   M = min(4, what the script's deadline leaves after the evaluation and the export): images/s and the run's
   metrics (``metrics.json``: ``steps``, ``minutes_budget``, ``seconds``, validation Dice, ...) and the
   command's wall time (start-up and data preparation included), judged against the paper's "< 5 min";
3. ``hemseg eval RUN/best.pt HELDOUT``: the held-out pooled Dice (``summary.json`` ``dice_global``) and its
   per-category means.

Phase 5 exports ``RUN/best.pt`` with ``hemseg-export --format onnx,onnx-fp16`` (parity gates on) and keeps
``export_report.json``. Dry run: 2 + 2 images per category at 64-96 px, 4 training steps of a tiny U-Net at 64 px
on the CPU.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from gpu_check.common import PhaseRecord
from gpu_check.procs import run_logged

TRAIN_MINUTES = 4.0          # the cap on training
EVAL_RESERVE_S = 45          # held-out evaluation (240 slices)
TRAIN_OVERHEAD_S = 30        # hemseg train outside its --minutes budget (start-up, imports, final checkpoint);
                             # data preparation, validations and threshold tuning are inside it
BATCH = int(os.environ.get("GPU_CHECK_TRAIN_BATCH", "32"))
#: the dry run trains, evaluates and exports a tiny U-Net: it checks the commands and the bookkeeping, and
#: FCN-ResNet50's export alone would cost a CPU minute (CI covers that model in tests/test_export.py)
DRY_MODEL = ("--model", "unet", "--unet-base", "8")


def _hemseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "hemseg", *args]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _history(path: Path, keep: int = 60) -> list[dict]:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return []
    return rows if len(rows) <= keep else rows[:: max(1, len(rows) // keep)] + rows[-1:]


def _step(rec: PhaseRecord, key: str, cmd: list[str], timeout: float) -> dict:
    res = run_logged(cmd, timeout)
    rec.doc[key] = res
    rec.save()
    return res


def _why(res: dict) -> str:
    if res["timed_out"]:
        return f"timed out after {res['seconds']:.0f} s"
    return f"exit {res['exit']}: " + (res["output_tail"][-1] if res["output_tail"] else "no output")


def _train_minutes(left_s: float) -> float:
    fit = (left_s - EVAL_RESERVE_S - TRAIN_OVERHEAD_S) / 60.0
    return max(0.0, min(TRAIN_MINUTES, int(fit * 10) / 10.0))


def run(rec: PhaseRecord, args) -> None:
    work = Path(args.work)
    dry = args.dry_run
    cores = os.cpu_count() or 1
    data, heldout, run_dir, ev = work / "phantom", work / "heldout", work / "run", work / "eval"
    size_opts = ["--min-size", "64", "--max-size", "96"] if dry else []
    per_cat, held_per_cat = (2, 2) if dry else (200, 20)
    rec.doc.update({"work": str(work), "per_category": per_cat, "heldout_per_category": held_per_cat,
                    "synth_workers": cores})
    if dry:
        rec.skip("CUDA training with AMP at 256 px, 2,400 slices", "dry run: a tiny U-Net, 4 steps on the CPU at 64 px")
    for key, out, n, seed in (("synth", data, per_cat, 0), ("synth_heldout", heldout, held_per_cat, 1000)):
        res = _step(rec, key, _hemseg("data", "synth", str(out), "--per-category", str(n), "--seed", str(seed),
                                      "--workers", str(cores), *size_opts), args.deadline.left() - 5)
        if res["exit"] != 0:
            rec.fail(f"{key}: {_why(res)}")
            return

    if dry:
        length = ["--steps", "4", "--val-every", "4"]
        device = ["--device", "cpu", "--precision", "auto", "--image-size", "64", "--batch-size", "4",
                  "--workers", "0", *DRY_MODEL]
    else:
        minutes = _train_minutes(args.deadline.left())
        if minutes < 1.0:
            rec.skip("training", f"the script's deadline leaves {args.deadline.left():.0f} s: too little to train")
            rec.finish(ran_something=True)
            return
        if minutes < TRAIN_MINUTES:
            rec.doc["minutes_note"] = f"--minutes lowered from {TRAIN_MINUTES:g} to {minutes:g} to fit the deadline"
        length = ["--minutes", f"{minutes:g}"]
        device = ["--device", "cuda", "--precision", "auto", "--image-size", "256", "--batch-size", str(BATCH),
                  "--workers", str(min(8, max(2, cores // 2)))]
    cmd = _hemseg("train", str(data), "--out", str(run_dir), "--recipe", "hemseg", *length, *device,
                  "--seed", "0", "--no-progress")
    res = _step(rec, "train", cmd, args.deadline.left() - (20 if dry else EVAL_RESERVE_S))
    metrics = _read_json(run_dir / "metrics.json") or {}
    rec.doc["train_metrics"] = metrics
    rec.doc["train_history"] = _history(run_dir / "history.csv")
    if res["exit"] != 0 or not metrics:
        if not (run_dir / "best.pt").is_file():
            rec.fail(f"train: {_why(res)}")
            return
        rec.skip("training to its end", f"train: {_why(res)}; the best checkpoint it wrote is evaluated")
    else:
        rec.doc["train_wall_s"] = res["seconds"]
        rec.doc["images_per_s"] = metrics.get("images_per_s")
        if rec.doc["images_per_s"] is None and metrics.get("steps") and metrics.get("seconds"):
            rec.doc["images_per_s"] = metrics["steps"] * (4 if dry else BATCH) / metrics["seconds"]
    rec.save()

    res = _step(rec, "eval", _hemseg("eval", str(run_dir / "best.pt"), str(heldout), "--out", str(ev),
                                     "--device", "cpu" if dry else "cuda", "--no-progress"),
                args.deadline.left() - 3)
    summary = _read_json(ev / "summary.json")
    if res["exit"] != 0 or summary is None:
        rec.fail(f"eval: {_why(res)}")
        return
    keep = ("n_images", "dice_global", "dice", "iou", "precision", "recall", "hd95", "n_gt_empty", "n_pred_empty")
    rec.doc["heldout"] = {k: summary.get(k) for k in keep}
    rec.doc["heldout"]["per_category_dice"] = {c: v.get("dice") for c, v in (summary.get("per_category") or {}).items()}
    rec.finish()


def run_export(rec: PhaseRecord, args) -> None:
    work = Path(args.work)
    ckpt = work / "run" / "best.pt"
    if not ckpt.is_file():
        rec.skip("ONNX FP32 + FP16 export", f"no checkpoint {ckpt}: the train phase did not write one")
        rec.finish(ran_something=False)
        return
    out = work / "export"
    cmd = [sys.executable, "-m", "hemseg.cli.export_cmd", str(ckpt), "--out", str(out), "--format", "onnx,onnx-fp16"]
    res = _step(rec, "export", cmd, args.deadline.left() - 3)
    rec.doc["export_report"] = _read_json(out / "export_report.json")
    if res["exit"] != 0:
        rec.fail(f"hemseg-export: {_why(res)}")
        return
    rec.finish()
