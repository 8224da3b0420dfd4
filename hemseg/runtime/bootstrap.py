"""Bootstrap confidence intervals of an evaluation's Dice.

A Dice measured on a few dozen slices of a few patients is uncertain, and how uncertain is part of an honest
number. :func:`bootstrap_dice` gives the percentile bootstrap interval (Efron and Tibshirani): the units of
independence are drawn with replacement, ``resamples`` times, and each draw's pooled Dice (all pixels of the drawn
units) and mean per-image Dice are recomputed; the interval holds the central ``level`` of those values.

The unit is the case (a patient or a volume) when the evaluation knows cases that span several slices: slices of
one patient are not independent, and resampling them one by one would make the interval too narrow. Otherwise it
is the image. The draws are seeded, so the same records give the same interval.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

#: resamples per interval
RESAMPLES = 2000
#: the interval's coverage
LEVEL = 0.95
#: resamples drawn at once (bounds the memory of a large evaluation)
_CHUNK = 250


def bootstrap_dice(metrics: Sequence[Mapping[str, Any]], units: Sequence[str] | None = None,
                   resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict[str, Any]:
    """The ``level`` interval of the pooled Dice (``dice_global``, when every record has ``tp``/``fp``/``fn``) and of
    the mean per-image ``dice`` (NaN skipped), resampling ``units`` (one label per record: its case) or, without
    them, the records. ``{}`` with fewer than two units (nothing to resample)."""
    labels = list(units) if units is not None else [str(i) for i in range(len(metrics))]
    if len(labels) != len(metrics):
        raise ValueError(f"{len(labels)} unit labels for {len(metrics)} records")
    order = {u: k for k, u in enumerate(dict.fromkeys(labels))}
    n_units = len(order)
    if n_units < 2:
        return {}
    member = np.array([order[u] for u in labels])
    dice = np.array([float(m.get("dice", np.nan)) for m in metrics], np.float64)
    finite = ~np.isnan(dice)
    dice_sum = np.bincount(member[finite], weights=dice[finite], minlength=n_units)
    dice_n = np.bincount(member[finite], minlength=n_units).astype(np.float64)
    has_counts = all(all(k in m for k in ("tp", "fp", "fn")) for m in metrics)
    if has_counts:
        counts = np.stack([np.bincount(member, weights=[float(m[k]) for m in metrics], minlength=n_units)
                           for k in ("tp", "fp", "fn")], axis=1)
    rng = np.random.default_rng(seed)
    pooled, means = [], []
    for start in range(0, resamples, _CHUNK):
        draw = rng.integers(0, n_units, size=(min(_CHUNK, resamples - start), n_units))
        n = dice_n[draw].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append(np.where(n > 0, dice_sum[draw].sum(axis=1) / n, np.nan))
        if has_counts:
            tp, fp, fn = (counts[:, k][draw].sum(axis=1) for k in range(3))
            denom = 2 * tp + fp + fn
            with np.errstate(invalid="ignore", divide="ignore"):
                pooled.append(np.where(denom > 0, 2 * tp / denom, 1.0))  # nothing anywhere: 1, as dice_global
    tails = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    out: dict[str, Any] = {"level": level, "unit": "case" if units is not None else "image", "n_units": n_units,
                           "resamples": resamples, "seed": seed}
    if has_counts:
        out["dice_global"] = [float(v) for v in np.percentile(np.concatenate(pooled), tails)]
    values = np.concatenate(means)
    values = values[~np.isnan(values)]
    if values.size:
        out["dice"] = [float(v) for v in np.percentile(values, tails)]
    return out


def interval_text(summary: Mapping[str, Any]) -> str:
    """`` (95 % CI lo-hi)`` of an evaluation summary's pooled Dice (its ``ci95``), or ``""`` when it has none: the
    console lines of ``hemseg eval`` and the quickstart."""
    ci = (summary.get("ci95") or {}).get("dice_global")
    return f" ({100 * summary['ci95']['level']:.0f} % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
