"""Train one model on one train/validation split, with checkpoints, history, resume and threshold tuning.

Files written into ``run_dir`` (each atomically):

- ``best.pt``: the hemseg checkpoint (:mod:`hemseg.train.checkpoint`) of the epoch with the best validation Dice
  (per-image mean at threshold 0.5; the first epoch always counts as an improvement). After the last epoch its
  ``config["threshold"]`` is replaced by the threshold tuned on the validation predictions of that model
  (:func:`hemseg.runtime.postprocess.tune_threshold`, candidates 0.10 ... 0.90) and ``config["threshold_tuning"]``
  records the candidates and the Dice at the tuned threshold.
- ``last.pt``: the checkpoint after the latest epoch plus what ``--resume`` needs: ``optimizer_state``,
  ``scaler_state`` (fp16 only) and ``train_state`` (epoch, history, best so far, RNG states of torch and of the data
  loader's shuffling generator, accumulated timings, the original ``init``). All of it loads with
  ``torch.load(weights_only=True)``.
- ``history.csv``: ``epoch, train_loss, val_loss, val_dice, val_iou, val_pred_fraction, lr, seconds`` (one row per
  epoch; ``val_pred_fraction`` is the share of validation pixels predicted as lesion at threshold 0.5, 0 when the
  model has collapsed to background, which :func:`fit` warns about after :data:`COLLAPSE_EPOCHS` such epochs).
- ``metrics.json``: best-epoch validation metrics (at threshold 0.5: the numbers the model was selected on), the
  tuned ``threshold`` and ``val_dice_tuned`` (the Dice at that threshold on the same validation data, hence
  optimistic), timings, ``init``, ``device``. Its presence marks the split as finished.

``wall_time_s`` is the time of the epochs (training + validation) summed over all sessions of a resumed run, plus the
threshold tuning; ``images_per_s`` is training throughput (augmented training slices per second of the training phase).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from hemseg.runtime.io.writers import atomic_write_bytes
from hemseg.runtime.postprocess import DEFAULT_CANDIDATES, tune_threshold
from hemseg.runtime.preprocess import PreprocessSpec
from hemseg.train.checkpoint import read_checkpoint, save_checkpoint
from hemseg.train.data import SliceDataset, SliceItem
from hemseg.train.device import amp_dtype_for, amp_name, describe
from hemseg.train.eval_report import write_json
from hemseg.train.loop import VAL_KEYS, SegmentationLoss, evaluate, train_one_epoch
from hemseg.train.models import build_model
from hemseg.train.transforms import train_transform
from hemseg.train.weights import initialize

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "val_pred_fraction", "lr", "seconds")
#: consecutive epochs without a single predicted lesion pixel on validation data that has lesions before
#: :func:`fit` warns that the model has collapsed to background
COLLAPSE_EPOCHS = 3


def collapsed_to_background(history: Sequence[dict], epochs: int = COLLAPSE_EPOCHS) -> bool:
    """Whether the last ``epochs`` rows of ``history`` all predicted no foreground pixel on validation data that has
    some (``val_pred_fraction == 0 < val_true_fraction``). Rows without these keys (older runs) never count."""
    tail = list(history)[-epochs:]
    return len(tail) == epochs and all(
        r.get("val_pred_fraction") == 0 and (r.get("val_true_fraction") or 0) > 0 for r in tail)


@dataclass
class FitSettings:
    """Everything fixed for one split. ``base_config`` (JSON-able) goes into every checkpoint's config."""

    run_dir: Path
    model: str
    model_kwargs: dict[str, Any]
    spec: PreprocessSpec
    base_config: dict[str, Any]
    device: torch.device
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-4
    weights: str = "auto"
    pos_weight: float | None = None
    dice_weight: float = 0.0
    workers: int = 0
    seed: int = 0
    resume: bool = False
    progress: bool = True
    augment: bool = True
    label: str = ""  #: shown in progress bars and logs, e.g. "fold 2/5 "
    extra_metrics: dict[str, Any] = field(default_factory=dict)


def _history_csv(rows: Sequence[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HISTORY_COLUMNS)
    for r in rows:
        w.writerow([r["epoch"]] + [f"{float(r.get(c, math.nan)):.6g}" for c in HISTORY_COLUMNS[1:]])
    return buf.getvalue().encode()


def write_history(path: Path, rows: Sequence[dict]) -> None:
    atomic_write_bytes(path, _history_csv(rows))


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "loader": gen.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loaders(s: FitSettings, train_items: Sequence[SliceItem], val_items: Sequence[SliceItem],
             gen: torch.Generator) -> tuple[DataLoader, DataLoader]:
    pin = s.device.type == "cuda"
    common = dict(batch_size=s.batch_size, num_workers=s.workers, pin_memory=pin, persistent_workers=s.workers > 0)
    transform = train_transform() if s.augment else None
    train = DataLoader(SliceDataset(train_items, s.spec, transform), shuffle=True, generator=gen, **common)
    val = DataLoader(SliceDataset(val_items, s.spec, None), shuffle=False, **common)
    return train, val


def _config(s: FitSettings, init: str, epoch: int, metrics: dict, threshold: float = 0.5) -> dict[str, Any]:
    cfg = dict(s.base_config)
    cfg.update(model=s.model, model_kwargs=dict(s.model_kwargs), preprocess=s.spec.to_dict(), image_size=s.spec.size,
               threshold=float(threshold), init=init, epoch=int(epoch), metrics=dict(metrics))
    return cfg


def fit(s: FitSettings, train_items: Sequence[SliceItem], val_items: Sequence[SliceItem]) -> dict[str, Any]:
    """Train (or resume) on one split and return its metrics (also written to ``run_dir/metrics.json``)."""
    run_dir = Path(s.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    best_path, last_path, metrics_path = run_dir / "best.pt", run_dir / "last.pt", run_dir / "metrics.json"
    device, amp = s.device, amp_dtype_for(s.device)
    channels_last = device.type == "cuda"

    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    model = build_model(s.model, **s.model_kwargs)
    resume_payload = read_checkpoint(last_path) if s.resume and last_path.is_file() else None
    if resume_payload is None:
        init = initialize(model, s.model, s.weights, s.model_kwargs)
        state: dict[str, Any] = {"epoch": 0, "history": [], "best_dice": -math.inf, "best_epoch": 0,
                                 "best_metrics": {}, "train_seconds": 0.0, "train_images": 0, "wall_s": 0.0,
                                 "init": init}
    else:
        model.load_state_dict(resume_payload["state_dict"])
        state = dict(resume_payload["train_state"])
        init = state["init"]
        log.info("%sresuming %s after epoch %d (best val Dice %.4f at epoch %d)", s.label, run_dir, state["epoch"],
                 state["best_dice"], state["best_epoch"])
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    if resume_payload is not None:
        optimizer.load_state_dict(resume_payload["optimizer_state"])
        if scaler is not None and resume_payload.get("scaler_state"):
            scaler.load_state_dict(resume_payload["scaler_state"])
        _set_rng_state(state["rng"], gen)
        del resume_payload

    if state["epoch"] >= s.epochs and metrics_path.is_file():
        log.info("%s%s already has %d epoch(s) (asked for %d): nothing to train", s.label, run_dir, state["epoch"],
                 s.epochs)
        return json.loads(metrics_path.read_text())
    if state["epoch"] < s.epochs:
        metrics_path.unlink(missing_ok=True)  # more epochs to come: the split is no longer finished

    criterion = SegmentationLoss(s.pos_weight, s.dice_weight).to(device)
    train_loader, val_loader = _loaders(s, train_items, val_items, gen)
    run_kw = dict(amp_dtype=amp, channels_last=channels_last, progress=s.progress)
    for epoch in range(state["epoch"] + 1, s.epochs + 1):
        t0 = time.perf_counter()
        tr = train_one_epoch(model, train_loader, criterion, optimizer, device, scaler=scaler,
                             desc=f"{s.label}epoch {epoch}/{s.epochs}", **run_kw)
        va = evaluate(model, val_loader, criterion, device, desc=f"{s.label}val {epoch}/{s.epochs}", **run_kw)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": tr["loss"], "val_loss": va["loss"], "val_dice": va["dice"],
               "val_iou": va["iou"], "val_pred_fraction": va["pred_fraction"], "val_true_fraction": va["true_fraction"],
               "lr": optimizer.param_groups[0]["lr"], "seconds": seconds}
        state["history"] = list(state["history"]) + [row]
        state["epoch"] = epoch
        state["train_seconds"] += tr["seconds"]
        state["train_images"] += tr["images"]
        state["wall_s"] += seconds
        improved = va["dice"] > state["best_dice"]
        if improved:
            state["best_dice"], state["best_epoch"] = va["dice"], epoch
            state["best_metrics"] = {**{k: va[k] for k in VAL_KEYS}, "val_loss": va["loss"]}
            save_checkpoint(best_path, model, _config(s, init, epoch, state["best_metrics"]))
        state["rng"] = _rng_state(gen)
        extra = {"optimizer_state": optimizer.state_dict(), "train_state": state}
        if scaler is not None:
            extra["scaler_state"] = scaler.state_dict()
        save_checkpoint(last_path, model, _config(s, init, epoch, {**{k: va[k] for k in VAL_KEYS},
                                                                   "val_loss": va["loss"]}), extra=extra)
        write_history(run_dir / "history.csv", state["history"])
        log.info("%sepoch %d/%d: train loss %.4f, val loss %.4f, val Dice %.4f, IoU %.4f (%.1f s)%s", s.label, epoch,
                 s.epochs, tr["loss"], va["loss"], va["dice"], va["iou"], seconds, "  [best]" if improved else "")
        if collapsed_to_background(state["history"]) and not collapsed_to_background(state["history"][:-1]):
            log.warning("%sthe model has predicted no lesion pixel on any validation image for %d epochs (%.2f %% of "
                        "the validation pixels are lesion): it has collapsed to background. Try a lesion weight "
                        "(--pos-weight, e.g. 20), pretrained weights (--weights) or more training data",
                        s.label, COLLAPSE_EPOCHS, 100 * va["true_fraction"])

    # threshold tuning on the validation predictions of the best model
    t0 = time.perf_counter()
    best = read_checkpoint(best_path)
    model.load_state_dict(best["state_dict"])
    va = evaluate(model, val_loader, None, device, collect=True, desc=f"{s.label}threshold", **run_kw)
    threshold, tuned_dice = tune_threshold(va.pop("probs"), va.pop("masks"))
    config = dict(best["config"])
    config["threshold"] = float(threshold)
    config["threshold_tuning"] = {"candidates": list(DEFAULT_CANDIDATES), "val_dice": float(tuned_dice),
                                  "val_dice_at_0.5": float(va["dice"]), "n_val_slices": len(val_items)}
    save_checkpoint(best_path, model, config)
    state["wall_s"] += time.perf_counter() - t0
    log.info("%stuned threshold %.2f: val Dice %.4f (%.4f at 0.5)", s.label, threshold, tuned_dice, va["dice"])

    history = state["history"]
    metrics: dict[str, Any] = {**state["best_metrics"], "epoch": state["best_epoch"], "threshold": float(threshold),
                               "val_dice_tuned": float(tuned_dice), "epochs_trained": state["epoch"],
                               "wall_time_s": state["wall_s"],
                               "images_per_s": state["train_images"] / max(state["train_seconds"], 1e-9),
                               "seconds_per_epoch": sum(r["seconds"] for r in history) / max(len(history), 1),
                               "init": init, "device": describe(device), "amp": amp_name(amp),
                               "n_train_slices": len(train_items), "n_val_slices": len(val_items),
                               "checkpoint": str(best_path)}
    metrics.update(s.extra_metrics)
    write_json(metrics_path, metrics)
    return metrics
