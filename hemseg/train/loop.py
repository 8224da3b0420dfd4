"""One training epoch and one validation pass, as plain functions (in the style of torchvision's references).

Conventions:

- The model maps ``(N, 3, S, S)`` float32 to logits ``(N, 1, S, S)``; targets are float32 ``{0, 1}`` ``(N, 1, S, S)``.
- The loss is ``BCEWithLogitsLoss`` (optionally with ``pos_weight``) plus, when ``dice_weight > 0``, that weight times
  a soft Dice loss (``1 - mean over images of (2 sum(p g) + 1) / (sum(p) + sum(g) + 1)``, ``p = sigmoid(logits)``).
- Validation metrics are per image (per slice) at the *network* resolution, then averaged over images. A pixel is
  foreground when ``sigmoid(logit) > threshold`` (strictly, as in :func:`hemseg.runtime.postprocess.postprocess`).
  Empty-mask conventions are those of :mod:`hemseg.runtime.metrics` (both empty: 1; one empty: 0).
  ``hemseg eval`` measures at each image's native resolution instead.
- Mixed precision: pass ``amp_dtype`` (``torch.bfloat16`` / ``torch.float16``, CUDA only) and, for float16, a
  ``torch.amp.GradScaler``. ``channels_last=True`` moves inputs to the channels-last memory format.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Iterable

import numpy as np
import torch
from torch import nn

#: The per-image metrics :func:`evaluate` averages (at the network resolution).
VAL_KEYS = ("dice", "iou", "precision", "recall", "accuracy")


class SegmentationLoss(nn.Module):
    """``BCEWithLogits(pos_weight) + dice_weight * soft Dice loss`` (see the module docstring)."""

    def __init__(self, pos_weight: float | None = None, dice_weight: float = 0.0) -> None:
        super().__init__()
        pw = torch.tensor([float(pos_weight)]) if pos_weight is not None else None
        self.bce = nn.BCEWithLogitsLoss(pos_weight=pw)
        self.dice_weight = float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = self.bce(logits, target)
        if self.dice_weight > 0:
            p = torch.sigmoid(logits).flatten(1)
            g = target.flatten(1)
            soft = (2 * (p * g).sum(1) + 1) / (p.sum(1) + g.sum(1) + 1)
            loss = loss + self.dice_weight * (1 - soft.mean())
        return loss


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype)


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    non_blocking = device.type == "cuda"
    x = x.to(device, non_blocking=non_blocking)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=non_blocking)


def _logit(threshold: float) -> float:
    t = min(max(float(threshold), 1e-7), 1 - 1e-7)
    return math.log(t / (1 - t))


def batch_counts(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image pixel counts ``(N, 4)`` int64: ``tp, fp, fn, tn`` of ``sigmoid(logits) > threshold``."""
    pred = logits.float().flatten(1) > _logit(threshold)
    gt = target.flatten(1) > 0.5
    tp = (pred & gt).sum(1)
    fp = (pred & ~gt).sum(1)
    fn = (~pred & gt).sum(1)
    tn = pred.shape[1] - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], 1).to(torch.int64)


def metrics_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image ``dice, iou, precision, recall, accuracy`` from ``(N, 4)`` counts (hemseg.runtime.metrics rules)."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1, 4)
    tp, fp, fn, tn = c.T
    both_empty = (tp + fp == 0) & (tp + fn == 0)

    def ratio(num, den):
        out = np.where(both_empty, 1.0, 0.0)
        np.divide(num, den, out=out, where=den > 0)
        return out

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "accuracy": (tp + tn) / np.maximum(tp + fp + fn + tn, 1),
    }


def _bar(loader: Iterable, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress)


def train_one_epoch(model: nn.Module, loader: Iterable, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, scaler: torch.amp.GradScaler | None = None,
                    amp_dtype: torch.dtype | None = None, channels_last: bool = False, progress: bool = True,
                    desc: str = "train") -> dict[str, float]:
    """One pass over ``loader`` with updates. Returns ``{"loss", "dice", "images", "seconds"}`` (means per image).

    ``dice`` is the mean per-image Dice of the training batches at threshold 0.5 (before each update's effect;
    augmented images), for the progress display and the log only.
    """
    model.train()
    total_loss, dice_sum, n = 0.0, 0.0, 0
    start = time.perf_counter()
    bar = _bar(loader, desc, progress)
    for x, y in bar:
        x, y = _to_device(x, y, device, channels_last)
        with _autocast(device, amp_dtype):
            logits = model(x)
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        b = x.shape[0]
        total_loss += float(loss.detach()) * b
        dice_sum += float(metrics_from_counts(batch_counts(logits.detach(), y).cpu().numpy())["dice"].sum())
        n += b
        if progress:
            bar.set_postfix(loss=f"{total_loss / n:.4f}", dice=f"{dice_sum / n:.3f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"loss": total_loss / max(n, 1), "dice": dice_sum / max(n, 1), "images": n,
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, criterion: nn.Module | None, device: torch.device, *,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False, threshold: float = 0.5,
             collect: bool = False, progress: bool = True, desc: str = "val") -> dict:
    """A validation pass without updates.

    Returns ``{"loss", "n_images", "seconds"}``, the means of :data:`VAL_KEYS`, ``pred_fraction`` and
    ``true_fraction`` (predicted and true foreground pixels over all pixels, pooled over the images); with
    ``collect=True`` also
    ``"probs"`` (list of float32 ``(S, S)`` probability maps) and ``"masks"`` (list of uint8 ``(S, S)``), in loader
    order, for threshold tuning.
    """
    model.eval()
    total_loss, n = 0.0, 0
    counts: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    start = time.perf_counter()
    bar = _bar(loader, desc, progress)
    for x, y in bar:
        x, y = _to_device(x, y, device, channels_last)
        with _autocast(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        if criterion is not None:
            total_loss += float(criterion(logits, y)) * x.shape[0]
        counts.append(batch_counts(logits, y, threshold).cpu().numpy())
        n += x.shape[0]
        if collect:
            probs.extend(torch.sigmoid(logits[:, 0]).cpu().numpy())
            masks.extend((y[:, 0] > 0.5).to(torch.uint8).cpu().numpy())
        if progress:
            bar.set_postfix(dice=f"{_mean_dice(counts):.3f}")
    pooled = np.concatenate(counts) if counts else np.zeros((0, 4), dtype=np.int64)
    per_image = metrics_from_counts(pooled)
    tp, fp, fn, tn = (int(v) for v in pooled.sum(0)) if len(pooled) else (0, 0, 0, 0)
    total = max(tp + fp + fn + tn, 1)
    out: dict = {"loss": total_loss / max(n, 1) if criterion is not None else float("nan"), "n_images": n,
                 "seconds": time.perf_counter() - start, "pred_fraction": (tp + fp) / total,
                 "true_fraction": (tp + fn) / total}
    out.update({k: float(v.mean()) if v.size else float("nan") for k, v in per_image.items()})
    if collect:
        out["probs"], out["masks"] = probs, masks
    return out


def _mean_dice(counts: list[np.ndarray]) -> float:
    return float(metrics_from_counts(np.concatenate(counts))["dice"].mean())
