"""Per-image binary segmentation metrics (numpy + OpenCV; no torch). Shared by the trainer, the runtime and the bench.

Masks: any array; nonzero pixels are foreground. Prediction and ground truth must have the same shape (2D for the
surface metrics ``hd95``/``assd``).

Definitions (``tp``, ``fp``, ``fn``, ``tn`` are pixel counts):

- ``dice = 2tp / (2tp + fp + fn)``, ``iou = tp / (tp + fp + fn)``, ``precision = tp / (tp + fp)``,
  ``recall = tp / (tp + fn)``, ``accuracy = (tp + tn) / all``, ``specificity = tn / (tn + fp)``.
- Surface distances follow MedPy: the boundary of a mask is the mask minus its erosion by a 3x3 cross, with pixels
  outside the image counted as background (objects touching the image edge have a boundary there). For each boundary
  pixel of one mask, the Euclidean distance to the nearest boundary pixel of the other. ``hd95`` is the larger of the
  two directed 95th percentiles (numpy's linear interpolation); ``assd`` is the mean of the two directed mean distances.
  Both are in pixels; with ``spacing=(row_mm, col_mm)`` also ``hd95_mm`` and ``assd_mm``. Isotropic distances come
  from ``cv2.distanceTransform(DIST_L2, DIST_MASK_PRECISE)`` (exact); anisotropic spacing is handled exactly by a
  separable search (per-column nearest boundary row, then the best column, with each axis scaled by its spacing).

Empty-mask conventions (a ratio whose denominator is 0):

- Both masks empty: ``dice = iou = precision = recall = 1.0`` and ``hd95 = assd = 0.0`` (a correct "no lesion").
- Exactly one mask empty: every undefined ratio is ``0.0`` (the scikit-learn ``zero_division=0`` convention), so a
  missed lesion (prediction empty) gets ``dice = iou = recall = 0`` *and* ``precision = 0``, and a false alarm on an
  empty ground truth gets ``dice = iou = precision = 0`` *and* ``recall = 0``. ``hd95``/``assd`` (and the ``_mm``
  variants) are ``NaN``: there is no surface to measure against.
- ``specificity`` when the ground truth has no background pixel (``tn + fp = 0``): ``1.0`` (no false positive was
  possible). ``accuracy`` is always defined.

:func:`aggregate` averages with NaN skipped (mean and population std over the finite values) and reports, per
metric, how many images were skipped (``n_nan``), so a NaN HD95 never silently becomes 0 or inf.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import cv2
import numpy as np

from hemseg.errors import UsageError

#: The per-image metrics :func:`compute_metrics` always returns, in report order.
METRIC_KEYS = ("dice", "iou", "precision", "recall", "accuracy", "specificity", "hd95", "assd")
#: Returned in addition when a spacing is given.
MM_KEYS = ("hd95_mm", "assd_mm")
#: Raw pixel counts, also in the :func:`compute_metrics` dict (not averaged by :func:`aggregate`).
COUNT_KEYS = ("tp", "fp", "fn", "tn")

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_CHUNK_ELEMENTS = 1 << 22  # anisotropic distances: at most ~4M candidate distances in memory at a time


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise UsageError(f"{name} must be a numpy array, got {type(mask).__name__}")
    return mask.astype(bool, copy=False) if mask.dtype == bool else mask != 0


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_bool(pred, "prediction"), _as_bool(gt, "ground truth")
    if p.shape != g.shape:
        raise UsageError(f"prediction {p.shape} and ground truth {g.shape} masks differ in shape")
    return p, g


def dice_score(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks of the same shape (any number of dimensions). Both empty -> 1.0."""
    a, b = _pair(a, b)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel counts ``(tp, fp, fn, tn)`` of a prediction against the ground truth (same shape, nonzero = foreground)."""
    p, g = _pair(pred, gt)
    tp = int(np.count_nonzero(p & g))
    n_pred = int(np.count_nonzero(p))
    n_gt = int(np.count_nonzero(g))
    fp = n_pred - tp
    fn = n_gt - tp
    tn = int(p.size) - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num) / float(den)


def _check_spacing(spacing) -> tuple[float, float]:
    try:
        row_mm, col_mm = (float(s) for s in spacing)
    except (TypeError, ValueError):
        raise UsageError(f"spacing must be (row_mm, col_mm), got {spacing!r}") from None
    if not (math.isfinite(row_mm) and math.isfinite(col_mm) and row_mm > 0 and col_mm > 0):
        raise UsageError(f"spacing must be two positive finite numbers, got {spacing!r}")
    return row_mm, col_mm


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D mask: the mask minus its erosion by a 3x3 cross; outside the image is background."""
    m = _as_bool(mask, "mask")
    if m.ndim != 2:
        raise UsageError(f"boundary needs a 2D mask, got shape {m.shape}")
    u8 = m.astype(np.uint8)
    eroded = cv2.erode(u8, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return m & (eroded == 0)


def _directed_edt(src: np.ndarray, dst: np.ndarray, scale: float) -> np.ndarray:
    """Distances from each ``src`` pixel to the nearest ``dst`` pixel (exact EDT), times ``scale``."""
    not_dst = np.where(dst, 0, 1).astype(np.uint8)
    dt = cv2.distanceTransform(not_dst, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dt[src].astype(np.float64) * scale


def _column_gaps(dst: np.ndarray) -> np.ndarray:
    """For every pixel, the row distance to the nearest ``dst`` pixel in the same column (inf if the column has none)."""
    h = dst.shape[0]
    rows = np.arange(h, dtype=np.float64)[:, None]
    above = np.maximum.accumulate(np.where(dst, rows, -np.inf), axis=0)
    below = np.minimum.accumulate(np.where(dst, rows, np.inf)[::-1], axis=0)[::-1]
    return np.minimum(rows - above, below - rows)


def _directed_anisotropic(src: np.ndarray, dst: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Like :func:`_directed_edt` for anisotropic spacing, exact: the squared distance separates into rows and columns,
    ``d2(r, c) = min over c' of (col_mm (c - c'))^2 + (row_mm g(r, c'))^2`` with ``g`` the in-column gap to ``dst``.
    Costs O(H W + n_src W), chunked over the ``src`` pixels.
    """
    row_mm, col_mm = spacing
    g2 = (_column_gaps(dst) * row_mm) ** 2  # (H, W)
    rr, cc = np.nonzero(src)
    cols = np.arange(dst.shape[1], dtype=np.float64) * col_mm
    out = np.empty(len(rr), np.float64)
    step = max(1, _CHUNK_ELEMENTS // dst.shape[1])
    for start in range(0, len(rr), step):
        r, c = rr[start:start + step], cc[start:start + step]
        d2 = (c[:, None] * col_mm - cols[None, :]) ** 2 + g2[r]
        out[start:start + step] = np.sqrt(d2.min(axis=1))
    return out


def surface_distances(pred: np.ndarray, gt: np.ndarray,
                      spacing: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances ``(pred -> gt, gt -> pred)`` of two non-empty 2D masks.

    In pixels without ``spacing``; in mm with ``spacing=(row_mm, col_mm)``.
    """
    p, g = _pair(pred, gt)
    if p.ndim != 2:
        raise UsageError(f"surface distances need 2D masks, got shape {p.shape}")
    if not p.any() or not g.any():
        raise UsageError("surface distances are undefined when a mask is empty")
    bp, bg = boundary(p), boundary(g)
    if spacing is None:
        return _directed_edt(bp, bg, 1.0), _directed_edt(bg, bp, 1.0)
    row_mm, col_mm = _check_spacing(spacing)
    if row_mm == col_mm:
        return _directed_edt(bp, bg, row_mm), _directed_edt(bg, bp, row_mm)
    return _directed_anisotropic(bp, bg, (row_mm, col_mm)), _directed_anisotropic(bg, bp, (row_mm, col_mm))


def _hd95_assd(d_pg: np.ndarray, d_gp: np.ndarray) -> tuple[float, float]:
    hd95 = max(float(np.percentile(d_pg, 95)), float(np.percentile(d_gp, 95)))
    assd = (float(d_pg.mean()) + float(d_gp.mean())) / 2.0
    return hd95, assd


def compute_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float] | None = None) -> dict:
    """All per-image metrics of a 2D prediction against its ground truth (see the module docstring for conventions).

    Returns a dict with :data:`METRIC_KEYS` (floats), :data:`COUNT_KEYS` (ints) and, when ``spacing`` is given,
    :data:`MM_KEYS`.
    """
    p, g = _pair(pred, gt)
    if p.ndim != 2:
        raise UsageError(f"compute_metrics needs 2D masks (one slice), got shape {p.shape}")
    if spacing is not None:
        spacing = _check_spacing(spacing)
    tp, fp, fn, tn = confusion(p, g)
    p_empty, g_empty = tp + fp == 0, tp + fn == 0
    both_empty = p_empty and g_empty
    out: dict = {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "accuracy": (tp + tn) / p.size if p.size else 1.0,
        "specificity": _ratio(tn, tn + fp, True),
    }
    if both_empty:
        out["hd95"] = out["assd"] = 0.0
        if spacing is not None:
            out["hd95_mm"] = out["assd_mm"] = 0.0
    elif p_empty or g_empty:
        out["hd95"] = out["assd"] = float("nan")
        if spacing is not None:
            out["hd95_mm"] = out["assd_mm"] = float("nan")
    else:
        out["hd95"], out["assd"] = _hd95_assd(*surface_distances(p, g))
        if spacing is not None:
            out["hd95_mm"], out["assd_mm"] = _hd95_assd(*surface_distances(p, g, spacing))
    out.update(tp=tp, fp=fp, fn=fn, tn=tn)
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def aggregate(records: Iterable[Mapping], keys: Iterable[str] | None = None) -> dict:
    """Mean and population std (``<key>_std``) of per-image metric dicts, skipping NaN.

    ``keys`` defaults to every numeric key of the records except the raw counts (:data:`COUNT_KEYS`), in order of
    first appearance. The result also has ``n_images``, ``n_nan`` (``{key: number of NaN values skipped}``) and, when
    every record carries the raw counts, ``dice_global`` (the Dice of all pixels pooled). A key whose values are all
    NaN gets a NaN mean and std.
    """
    records = list(records)
    if not records:
        raise UsageError("no per-image metrics to aggregate")
    if keys is None:
        keys = []
        for r in records:
            keys.extend(k for k, v in r.items() if k not in COUNT_KEYS and k not in keys and _is_number(v))
    out: dict = {"n_images": len(records)}
    n_nan: dict[str, int] = {}
    for key in keys:
        values = np.array([float(r.get(key, float("nan"))) for r in records], np.float64)
        finite = values[~np.isnan(values)]
        n_nan[key] = int(values.size - finite.size)
        out[key] = float(finite.mean()) if finite.size else float("nan")
        out[f"{key}_std"] = float(finite.std()) if finite.size else float("nan")
    out["n_nan"] = n_nan
    if all(all(k in r for k in COUNT_KEYS) for r in records):
        tp = sum(int(r["tp"]) for r in records)
        fp = sum(int(r["fp"]) for r in records)
        fn = sum(int(r["fn"]) for r in records)
        out["dice_global"] = _ratio(2 * tp, 2 * tp + fp + fn, True)
    return out
