"""Per-image binary segmentation metrics (numpy + OpenCV; no torch). Shared by the trainer, the runtime and the bench.

Masks: any array; nonzero pixels are foreground. Prediction and ground truth must have the same shape (2D for the
surface metrics ``hd95``/``assd``).

Definitions (``tp``, ``fp``, ``fn``, ``tn`` are pixel counts):

- ``dice = 2tp / (2tp + fp + fn)``, ``iou = tp / (tp + fp + fn)``, ``precision = tp / (tp + fp)``,
  ``recall = tp / (tp + fn)``, ``accuracy = (tp + tn) / all``, ``specificity = tn / (tn + fp)``.
- Surface distances use MedPy's boundary: the boundary of a mask is the mask minus its erosion by a 3x3 cross, with pixels
  outside the image counted as background (objects touching the image edge have a boundary there). For each boundary
  pixel of one mask, the Euclidean distance to the nearest boundary pixel of the other. ``hd95`` is the larger of the
  two directed 95th percentiles (numpy's linear interpolation; MONAI's rule: MedPy's ``hd95`` takes one percentile of
  both directions' distances pooled, which can differ); ``assd`` is the mean of the two directed mean distances.
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
metric, how many images were skipped (``n_nan``), so a NaN HD95 never silently becomes 0 or inf; HD95 and ASSD are
averaged over the images whose reference has a lesion (a lesion-free image's 0 is not a boundary error of 0).

**Agreement of two sets of masks** (:func:`agreement`; one convention for the export's parity gates, the bench's
``dice_vs_torch`` and the quickstart): *pooled* Dice over all pixels of all images (``2|A∩B| / (|A| + |B|)``, 1.0
when both are empty everywhere), plus the number of images where the two disagree on whether there is any lesion.
Whether that Dice can judge anything depends on the *reference* masks: it is **measurable** only when the reference
has foreground in at least :data:`MIN_FOREGROUND_IMAGES` images and in at least :data:`MIN_FOREGROUND_FRACTION` of
all pixels. Below that (a model that predicts nothing, or almost nothing), two empty mask sets "agree" with Dice 1.0
whatever the models compute, and callers must judge on something else (the export's gates then use the logits).

**Lesion-wise detection** (:func:`lesion_counts`, :func:`lesion_summary`): lesions are the 8-connected foreground
components of each 2D slice. A ground-truth lesion counts as *detected* when predicted foreground covers at least
:data:`LESION_MIN_OVERLAP` of its pixels; a predicted component counts as a *true* one when ground truth covers at
least that share of its pixels, else it is a false-positive component. Lesion recall = detected / ground-truth
lesions, lesion precision = true predicted components / predicted components (NaN when there are none), and
false-positive components per lesion-free slice = predicted components on slices whose ground truth is empty,
divided by the number of such slices.
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

#: Agreement: the reference masks need foreground in at least this many images ...
MIN_FOREGROUND_IMAGES = 3
#: ... and in at least this fraction of all pixels (0.05 %) for a mask Dice to be measurable.
MIN_FOREGROUND_FRACTION = 5e-4
#: Lesion matching: the share of a component's pixels the other mask must cover for a match.
LESION_MIN_OVERLAP = 0.1
#: Per-image lesion counts of :func:`lesion_counts` (summed by :func:`lesion_summary`).
LESION_KEYS = ("gt_lesions", "gt_lesions_detected", "pred_lesions", "pred_lesions_true")

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
    dt = cv2.distanceTransform(not_dst, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[src].astype(np.float64)
    # DIST_MASK_PRECISE is the exact EDT: each distance is the root of an integer, but OpenCV computes it in float32,
    # whose last bit varied between runs (the K-Means baseline's assd differed in the 9th digit between identical
    # runs). The integer is recovered (exact while the float32 error of d^2 stays < 0.5, i.e. d < ~1400 px) and its
    # root taken in float64: the same distances every run, exact to float64.
    return np.sqrt(np.rint(dt * dt)) * scale


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


#: the surface-distance metrics: averaged over the images whose reference has a lesion (see :func:`aggregate`)
SURFACE_KEYS = ("hd95", "assd", *MM_KEYS)


def _reference_empty(record: Mapping) -> bool:
    return "tp" in record and "fn" in record and float(record["tp"]) + float(record["fn"]) == 0


def aggregate(records: Iterable[Mapping], keys: Iterable[str] | None = None) -> dict:
    """Mean and population std (``<key>_std``; NaN for fewer than two values) of per-image metric dicts, skipping
    NaN.

    ``keys`` defaults to every numeric key of the records except the raw counts (:data:`COUNT_KEYS`), in order of
    first appearance. The result also has ``n_images``, ``n_nan`` (``{key: number of NaN values skipped}``) and, when
    every record carries the raw counts, ``dice_global`` (the Dice of all pixels pooled). A key whose values are all
    NaN gets a NaN mean and std. The surface distances (:data:`SURFACE_KEYS`) skip images whose reference is empty
    (counted in ``n_nan``): their 0 for a correct "no lesion" would otherwise make a model that misses every lesion
    (NaN there) score a perfect mean HD95 of 0.
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
        if key in SURFACE_KEYS:  # distances mean something only where the reference has a lesion
            values[[_reference_empty(r) for r in records]] = np.nan
        finite = values[~np.isnan(values)]
        n_nan[key] = int(values.size - finite.size)
        out[key] = float(finite.mean()) if finite.size else float("nan")
        # (one value has no spread: NaN, written as null, not a std of 0 that reads as a measured agreement)
        out[f"{key}_std"] = float(finite.std()) if finite.size > 1 else float("nan")
    out["n_nan"] = n_nan
    if all(all(k in r for k in COUNT_KEYS) for r in records):
        tp = sum(int(r["tp"]) for r in records)
        fp = sum(int(r["fp"]) for r in records)
        fn = sum(int(r["fn"]) for r in records)
        out["dice_global"] = _ratio(2 * tp, 2 * tp + fp + fn, True)
    return out


# ------------------------------------------------------------------------------------------------ agreement
def _flat_masks(masks, name: str) -> list[np.ndarray]:
    if isinstance(masks, np.ndarray):
        masks = list(masks) if masks.ndim >= 3 else [masks]
    return [_as_bool(m, name) for m in masks]


def agreement(masks, reference, min_images: int | None = None, min_fraction: float | None = None) -> dict:
    """How well ``masks`` agree with ``reference`` (sequences of same-shaped mask pairs, or (N, H, W) arrays), by the
    convention of the module docstring.

    Returns ``dice`` (pooled), ``dice_min_image`` (the smallest per-image Dice), ``lesion_presence_disagreements``
    (images where exactly one of the two has any foreground), ``n_images``, ``reference_foreground_fraction``,
    ``images_with_foreground`` (of the reference), ``measurable`` and ``measurable_rule`` (the rule, in words).
    ``min_images``/``min_fraction`` default to :data:`MIN_FOREGROUND_IMAGES` / :data:`MIN_FOREGROUND_FRACTION`.
    """
    a, b = _flat_masks(masks, "masks"), _flat_masks(reference, "reference masks")
    if len(a) != len(b):
        raise UsageError(f"agreement needs as many masks as reference masks, got {len(a)} and {len(b)}")
    min_images = MIN_FOREGROUND_IMAGES if min_images is None else int(min_images)
    min_fraction = MIN_FOREGROUND_FRACTION if min_fraction is None else float(min_fraction)
    inter = n_a = n_b = pixels = fg_images = presence = 0
    per_image = []
    for x, y in zip(a, b):
        x, y = _pair(x, y)
        i, na, nb = int(np.count_nonzero(x & y)), int(np.count_nonzero(x)), int(np.count_nonzero(y))
        inter, n_a, n_b, pixels = inter + i, n_a + na, n_b + nb, pixels + int(y.size)
        fg_images += int(nb > 0)
        presence += int((na > 0) != (nb > 0))
        per_image.append(1.0 if na + nb == 0 else 2.0 * i / (na + nb))
    fraction = n_b / pixels if pixels else 0.0
    return {
        "dice": 1.0 if n_a + n_b == 0 else 2.0 * inter / (n_a + n_b),
        "dice_min_image": min(per_image) if per_image else float("nan"),
        "lesion_presence_disagreements": presence,
        "n_images": len(a),
        "reference_foreground_fraction": float(fraction),
        "images_with_foreground": fg_images,
        "measurable": bool(fg_images >= min_images and fraction >= min_fraction),
        "measurable_rule": f"reference foreground in >= {min_images} images and >= {min_fraction:.2%} of pixels",
    }


def describe_unmeasurable(a: dict) -> str:
    """Why an :func:`agreement` is not measurable, in words (for log lines and reports)."""
    return (f"the reference masks have foreground in {a['images_with_foreground']} of {a['n_images']} images "
            f"({a['reference_foreground_fraction']:.3%} of pixels); a mask Dice needs {a['measurable_rule']}")


# ------------------------------------------------------------------------------------------------ lesions
def _component_overlap(mask: np.ndarray, other: np.ndarray, min_overlap: float) -> tuple[int, int]:
    """(components of ``mask``, those whose pixels ``other`` covers by at least ``min_overlap``)."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return 0, 0
    area = np.bincount(labels.ravel(), minlength=n)
    covered = np.bincount(labels[other].ravel(), minlength=n)
    hit = covered[1:] >= min_overlap * area[1:]
    return int(n - 1), int(np.count_nonzero(hit))


def lesion_counts(pred: np.ndarray, gt: np.ndarray, min_overlap: float = LESION_MIN_OVERLAP) -> dict:
    """Per-slice lesion counts (:data:`LESION_KEYS`) of a 2D prediction against its ground truth (module docstring)."""
    p, g = _pair(pred, gt)
    if p.ndim != 2:
        raise UsageError(f"lesion counts need 2D masks (one slice), got shape {p.shape}")
    n_gt, detected = _component_overlap(g, p, min_overlap)
    n_pred, true = _component_overlap(p, g, min_overlap)
    return {"gt_lesions": n_gt, "gt_lesions_detected": detected, "pred_lesions": n_pred, "pred_lesions_true": true}


def lesion_summary(records: Iterable[Mapping], min_overlap: float = LESION_MIN_OVERLAP) -> dict:
    """Lesion-wise recall/precision and false-positive components per lesion-free slice over per-slice records that
    carry :data:`LESION_KEYS` (as :func:`lesion_counts` gives them)."""
    records = list(records)
    total = {k: sum(int(r[k]) for r in records) for k in LESION_KEYS}
    free = [r for r in records if int(r["gt_lesions"]) == 0]
    fp_free = sum(int(r["pred_lesions"]) for r in free)
    return {
        "rule": f"lesions are 8-connected components per slice; a ground-truth lesion is detected when predicted "
                f"foreground covers >= {min_overlap:.0%} of its pixels, a predicted component is true when ground "
                f"truth covers >= {min_overlap:.0%} of its pixels",
        "min_overlap": float(min_overlap),
        **total,
        "recall": total["gt_lesions_detected"] / total["gt_lesions"] if total["gt_lesions"] else float("nan"),
        "precision": total["pred_lesions_true"] / total["pred_lesions"] if total["pred_lesions"] else float("nan"),
        "false_positive_components": total["pred_lesions"] - total["pred_lesions_true"],
        "lesion_free_slices": len(free),
        "fp_components_on_lesion_free_slices": fp_free,
        "fp_components_per_lesion_free_slice": fp_free / len(free) if free else float("nan"),
        "slices_with_prediction": sum(1 for r in records if int(r["pred_lesions"]) > 0),
        "n_slices": len(records),
    }
