"""One training step and one validation pass, as plain functions (in the style of torchvision's references).

Conventions:

- The model maps ``(N, 3, S, S)`` float32 to logits ``(N, 1, S, S)``; targets are float32 ``{0, 1}`` ``(N, 1, S, S)``.
- The loss is ``BCEWithLogitsLoss`` (optionally with ``pos_weight``) plus, with ``dice="batch"``, a soft Dice loss
  over the whole batch (``1 - (2 sum(p g) + 1) / (sum(p) + sum(g) + 1)``, sums over all pixels of all images,
  ``p = sigmoid(logits)``), or with ``dice="image"`` the mean of that ratio per image (which an empty prediction
  wins on lesion-free slices; kept for comparison only). ``dice="blob"`` is the batch term plus the *blob loss* of
  Kofler et al. (IPMI 2023, "blob loss: instance imbalance aware loss functions for semantic segmentation"): one
  soft Dice per lesion (8-connected component of the target, as the lesion metrics count them), computed with the
  other lesions of its image masked out, so that false positives anywhere in the image still count and every
  lesion weighs the same whatever its size; the term is ``1 -`` their mean over the batch's lesions (0 when the
  batch has none). The batch term alone is dominated by the largest lesions; a small lesion barely moves it.
- Validation metrics are per image (per slice) at the *network* resolution, then averaged over images, plus
  ``dice_global``, the Dice of all validation pixels pooled. A pixel is foreground when
  ``sigmoid(logit) > threshold`` (strictly, as in :func:`hemseg.runtime.postprocess.postprocess`).
  Empty-mask conventions are those of :mod:`hemseg.runtime.metrics` (both empty: 1; one empty: 0).
  ``hemseg eval`` measures at each image's native resolution instead.
- Precision: a :class:`hemseg.train.device.Precision` (autocast dtype, channels-last); float16 needs a
  ``torch.amp.GradScaler``. The loss is always computed in float32.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from hemseg.progress import shown
from hemseg.runtime.postprocess import logit_threshold, resample_scores, sigmoid
from hemseg.train.deep_supervision import training_loss
from hemseg.train.device import Precision

#: The per-image metrics :func:`evaluate` averages (at the network resolution).
VAL_KEYS = ("dice", "iou", "precision", "recall", "accuracy")


DICE_MODES = ("none", "batch", "image", "blob")


def lesion_labels(target: torch.Tensor) -> torch.Tensor:
    """8-connected components of each ``(N, 1, H, W)`` {0, 1} target: int64 ``(N, H*W)``, 0 = background, 1..K per
    image (computed on the CPU with OpenCV; the lesion metrics count lesions the same way)."""
    masks = (target.detach().flatten(0, 1) > 0.5).to("cpu", torch.uint8).numpy()
    out = np.zeros(masks.shape, np.int32)
    for i, m in enumerate(masks):
        if m.any():
            out[i] = cv2.connectedComponents(m, connectivity=8, ltype=cv2.CV_32S)[1]
    return torch.from_numpy(out.reshape(len(out), -1)).to(target.device, torch.int64)


def blob_dice(p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean soft Dice over all lesions of a batch, each with the other lesions of its image masked out.

    ``p``: probabilities ``(N, P)``; ``labels``: lesion labels ``(N, P)`` (0 = background). Returns a scalar; 1 when
    the batch has no lesion (so that ``1 - blob_dice`` adds nothing)."""
    scores = []
    for n in range(p.shape[0]):
        k = int(labels[n].max())
        if k == 0:
            continue
        ids = torch.arange(1, k + 1, device=labels.device)[:, None]
        g = (labels[n][None] == ids).to(p.dtype)                  # (K, P): lesion k
        keep = 1.0 - ((labels[n] > 0)[None].to(p.dtype) - g)       # everything but the other lesions
        pk = p[n][None] * keep
        scores.append((2 * (pk * g).sum(1) + 1) / (pk.sum(1) + g.sum(1) + 1))
    return torch.cat(scores).mean() if scores else p.new_ones(())


class SegmentationLoss(nn.Module):
    """``BCEWithLogits(pos_weight)`` plus the soft Dice term ``dice`` (see the module docstring)."""

    def __init__(self, pos_weight: float | None = None, dice: str = "none") -> None:
        super().__init__()
        if dice not in DICE_MODES:
            raise ValueError(f"dice must be one of {DICE_MODES}, got {dice!r}")
        pw = torch.tensor([float(pos_weight)]) if pos_weight is not None else None
        self.bce = nn.BCEWithLogitsLoss(pos_weight=pw)
        self.dice = dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = self.bce(logits, target)
        if self.dice == "none":
            return loss
        p = torch.sigmoid(logits).flatten(1)
        g = target.flatten(1)
        if self.dice == "image":
            return loss + 1 - ((2 * (p * g).sum(1) + 1) / (p.sum(1) + g.sum(1) + 1)).mean()
        loss = loss + 1 - (2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1)
        if self.dice == "blob":
            loss = loss + 1 - blob_dice(p, lesion_labels(target))
        return loss


def _autocast(device: torch.device, precision: Precision | None):
    return contextlib.nullcontext() if precision is None else precision.autocast_context(device)


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on ``device`` as a training step uses it (asynchronous copies from pinned memory on CUDA)."""
    non_blocking = device.type == "cuda"
    x = x.to(device, non_blocking=non_blocking)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=non_blocking)


#: the probability threshold of the validations during training (the model's own is tuned after: hemseg.train.fit)
VALIDATION_THRESHOLD = 0.5


def batch_counts(logits: torch.Tensor, target: torch.Tensor, threshold: float = VALIDATION_THRESHOLD) -> torch.Tensor:
    """Per-image pixel counts ``(N, 4)`` int64: ``tp, fp, fn, tn`` of ``sigmoid(logits) > threshold``, decided as
    ``logits > logit(threshold)`` (:func:`hemseg.runtime.postprocess.logit_threshold`, the runtime's one rule)."""
    pred = logits.float().flatten(1) > logit_threshold(threshold)
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


def _bar(loader: Iterable, desc: str, progress: bool, total: int | None = None):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, unit="batch", leave=False, disable=not shown(progress), total=total)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, device: torch.device, precision: Precision | None = None,
               scaler: torch.amp.GradScaler | None = None) -> tuple[float, torch.Tensor]:
    """One optimizer update on the batch ``(x, y)``; returns the loss and the (detached) logits. ``model`` may be
    :class:`hemseg.train.deep_supervision.DeepSupervised` (its auxiliary loss is added)."""
    model.train()
    x, y = to_device(x, y, device, precision is not None and precision.channels_last)
    with _autocast(device, precision):
        outputs = model(x)
    loss, logits = training_loss(model, outputs, y, criterion)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach()), logits.detach()


def native_counts(logits: np.ndarray, target: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``(counts (4,), scores)`` of one image's ``(S, S)`` logits scored against its mask at the image's own size
    ``target`` (H, W): the logits resampled there as deployment does (:func:`hemseg.runtime.postprocess.
    resample_scores`), then decided as ``logits > logit(threshold)``."""
    scores = resample_scores(logits, target.shape)
    pred, gt = scores > logit_threshold(threshold), target > 0
    tp, fp, fn = (int(np.count_nonzero(a)) for a in (pred & gt, pred & ~gt, ~pred & gt))
    return np.array([tp, fp, fn, gt.size - tp - fp - fn], dtype=np.int64), scores


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, criterion: nn.Module | None, device: torch.device, *,
             precision: Precision | None = None, threshold: float = VALIDATION_THRESHOLD, collect: bool = False,
             progress: bool = True, desc: str = "val", native_masks: Sequence | None = None) -> dict:
    """A validation pass without updates.

    Returns ``{"loss", "n_images", "seconds"}``, the means of :data:`VAL_KEYS`, ``dice_global`` (pooled over all
    pixels; 1 when neither truth nor prediction has foreground), ``pred_fraction`` and
    ``true_fraction`` (predicted and true foreground pixels over all pixels, pooled over the images); with
    ``collect=True`` also
    ``"probs"`` (list of float32 probability maps) and ``"masks"`` (list of uint8 masks of the same shapes), in loader
    order, for threshold tuning. ``native_masks``: per image in loader order, its mask at the image's own size (None
    where that is the network's): the metrics (and the collected maps) are then at that size
    (:func:`native_counts`), as ``hemseg eval`` and deployment score, not on masks shrunk to the network's size (a
    small structure's Dice read 0.90 there and 0.77 in ``hemseg eval``: a QA finding of stop 52). The loss stays at
    the network's size.
    """
    model.eval()
    total_loss, n = 0.0, 0
    counts: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    start = time.perf_counter()
    bar = _bar(loader, desc, progress)
    channels_last = precision is not None and precision.channels_last
    for x, y in bar:
        x, y = to_device(x, y, device, channels_last)
        with _autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        if criterion is not None:
            total_loss += float(criterion(logits, y)) * x.shape[0]
        natives = [native_masks[n + k] for k in range(x.shape[0])] if native_masks is not None else [None] * len(x)
        if all(m is None for m in natives):
            counts.append(batch_counts(logits, y, threshold).cpu().numpy())
            if collect:
                probs.extend(torch.sigmoid(logits[:, 0]).cpu().numpy())
                masks.extend((y[:, 0] > 0.5).to(torch.uint8).cpu().numpy())
        else:
            host, truth = logits[:, 0].cpu().numpy(), (y[:, 0] > 0.5).to(torch.uint8).cpu().numpy()
            rows = []
            for k, native in enumerate(natives):
                target = truth[k] if native is None else native
                row, scores = native_counts(host[k], target, threshold)
                rows.append(row)
                if collect:
                    probs.append(sigmoid(scores))
                    masks.append((target > 0).astype(np.uint8))
            counts.append(np.stack(rows))
        n += x.shape[0]
        if progress:
            bar.set_postfix(dice=f"{_mean_dice(counts):.3f}")
    pooled = np.concatenate(counts) if counts else np.zeros((0, 4), dtype=np.int64)
    per_image = metrics_from_counts(pooled)
    tp, fp, fn, tn = (int(v) for v in pooled.sum(0)) if len(pooled) else (0, 0, 0, 0)
    total = max(tp + fp + fn + tn, 1)
    out: dict = {"loss": total_loss / max(n, 1) if criterion is not None else float("nan"), "n_images": n,
                 "seconds": time.perf_counter() - start, "pred_fraction": (tp + fp) / total,
                 "true_fraction": (tp + fn) / total,
                 "dice_global": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0}
    out.update({k: float(v.mean()) if v.size else float("nan") for k, v in per_image.items()})
    if collect:
        out["probs"], out["masks"] = probs, masks
    return out


def _mean_dice(counts: list[np.ndarray]) -> float:
    return float(metrics_from_counts(np.concatenate(counts))["dice"].mean())
