"""Bootstrap confidence intervals of an evaluation's Dice, and of the difference between two models.

A Dice measured on a few dozen slices of a few patients is uncertain, and how uncertain is part of an honest
number. :func:`bootstrap_dice` gives the percentile bootstrap interval (Efron and Tibshirani): the units of
independence are drawn with replacement, ``resamples`` times, and each draw's pooled Dice (all pixels of the drawn
units) and mean per-image Dice are recomputed; the interval holds the central ``level`` of those values.
:func:`paired_difference` does the same for the difference between two models scored on the same images, with the
same draws for both (a paired bootstrap): much tighter than comparing two separate intervals, since both models
meet the same easy and hard images.

The unit is the case (a patient or a volume) when the evaluation knows cases that span several slices: slices of
one patient are not independent, and resampling them one by one would make the interval too narrow. Otherwise it
is the image. The draws are seeded, so the same records give the same interval.

With fewer than :data:`MIN_UNITS` units an interval is given but marked (``too_few_units``) and no verdict is
drawn from it: the bootstrap of two or three units has a handful of distinct draws (two images with the same
difference give an interval of zero width), and no distribution-free paired test can reach p < 0.05 (two-sided)
with fewer than six units (the sign test's and the signed-rank test's smallest p is 2 / 2^n: 0.0625 with five).
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
#: the fewest units from which an interval is taken at its word (see the module docstring)
MIN_UNITS = 6
_COUNTS = ("tp", "fp", "fn")


class _Units:
    """Per-unit sums of one model's records: per-image Dice (sum, count of finite values) and pixel counts."""

    def __init__(self, metrics: Sequence[Mapping[str, Any]], member: np.ndarray, n_units: int) -> None:
        dice = np.array([float(m.get("dice", np.nan)) for m in metrics], np.float64)
        finite = ~np.isnan(dice)
        self.dice_sum = np.bincount(member[finite], weights=dice[finite], minlength=n_units)
        self.dice_n = np.bincount(member[finite], minlength=n_units).astype(np.float64)
        self.counts = None
        if all(all(k in m for k in _COUNTS) for m in metrics):
            self.counts = np.stack([np.bincount(member, weights=[float(m[k]) for m in metrics], minlength=n_units)
                                    for k in _COUNTS], axis=1)

    def stats(self, draw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(mean per-image Dice, pooled Dice or None) of each row of unit indices ``draw``."""
        n = self.dice_n[draw].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, self.dice_sum[draw].sum(axis=1) / n, np.nan)
            if self.counts is None:
                return mean, None
            tp, fp, fn = (self.counts[:, k][draw].sum(axis=1) for k in range(3))
            denom = 2 * tp + fp + fn
            return mean, np.where(denom > 0, 2 * tp / denom, 1.0)  # nothing anywhere: 1, as dice_global


def _members(n_records: int, units: Sequence[str] | None) -> tuple[np.ndarray, int]:
    labels = list(units) if units is not None else [str(i) for i in range(n_records)]
    if len(labels) != n_records:
        raise ValueError(f"{len(labels)} unit labels for {n_records} records")
    order = {u: k for k, u in enumerate(dict.fromkeys(labels))}
    return np.array([order[u] for u in labels], dtype=np.int64), len(order)


def _draws(n_units: int, resamples: int, seed: int):
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _CHUNK):
        yield rng.integers(0, n_units, size=(min(_CHUNK, resamples - start), n_units))


def _interval(values: list[np.ndarray], level: float) -> list[float] | None:
    v = np.concatenate(values)
    v = v[~np.isnan(v)]
    if not v.size:
        return None
    return [float(x) for x in np.percentile(v, (100 * (1 - level) / 2, 100 * (1 + level) / 2))]


def _header(units, n_units: int, resamples: int, level: float, seed: int) -> dict[str, Any]:
    return {"level": level, "unit": "case" if units is not None else "image", "n_units": n_units,
            "resamples": resamples, "seed": seed, "too_few_units": n_units < MIN_UNITS}


def too_few_text(ci: Mapping[str, Any]) -> str:
    """``"; only 3 images: too few for a reliable interval"`` for an interval of fewer than :data:`MIN_UNITS` units,
    else ``""``."""
    if not ci.get("too_few_units"):
        return ""
    return f"; only {units_text(ci['n_units'], ci['unit'])}: too few for a reliable interval"


def units_text(n: int, unit: str) -> str:
    """``1 case``, ``3 cases``, ``1 image``."""
    return f"{n} {unit}{'' if n == 1 else 's'}"


def bootstrap_dice(metrics: Sequence[Mapping[str, Any]], units: Sequence[str] | None = None,
                   resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict[str, Any]:
    """The ``level`` interval of the pooled Dice (``dice_global``, when every record has ``tp``/``fp``/``fn``) and of
    the mean per-image ``dice`` (NaN skipped), resampling ``units`` (one label per record: its case) or, without
    them, the records. With fewer than two units (nothing to resample), the header alone (``n_units``, ``unit``,
    ``resamples`` 0, ``too_few_units`` true), as :func:`paired_difference` gives it."""
    member, n_units = _members(len(metrics), units)
    if n_units < 2:
        return _header(units, n_units, 0, level, seed)
    sums = _Units(metrics, member, n_units)
    means, pooled = [], []
    for draw in _draws(n_units, resamples, seed):
        mean, pool = sums.stats(draw)
        means.append(mean)
        if pool is not None:
            pooled.append(pool)
    out = _header(units, n_units, resamples, level, seed)
    if pooled:
        out["dice_global"] = _interval(pooled, level)
    if (mean_ci := _interval(means, level)) is not None:
        out["dice"] = mean_ci
    return out


def paired_difference(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]],
                      units: Sequence[str] | None = None, resamples: int = RESAMPLES, level: float = LEVEL,
                      seed: int = 0) -> dict[str, Any]:
    """``b`` minus ``a``, two models' records of the same images in the same order: for the mean per-image ``dice``
    and the pooled ``dice_global``, ``{"difference": d, "interval": [lo, hi]}`` from the same draws for both. With
    fewer than two units, the header alone (``n_units``, ``unit``, ``resamples`` 0, ``too_few_units`` true): the
    same keys as any comparison, nothing to resample."""
    if len(a) != len(b):
        raise ValueError(f"paired records differ in number: {len(a)} and {len(b)}")
    member, n_units = _members(len(a), units)
    if n_units < 2:
        return _header(units, n_units, 0, level, seed)
    sums_a, sums_b = _Units(a, member, n_units), _Units(b, member, n_units)
    whole = np.arange(n_units)[None, :]
    diffs: dict[str, list[np.ndarray]] = {"dice": [], "dice_global": []}
    for draw in [whole, *_draws(n_units, resamples, seed)]:
        (mean_a, pool_a), (mean_b, pool_b) = sums_a.stats(draw), sums_b.stats(draw)
        diffs["dice"].append(mean_b - mean_a)
        if pool_a is not None and pool_b is not None:
            diffs["dice_global"].append(pool_b - pool_a)
    out = _header(units, n_units, resamples, level, seed)
    for key, values in diffs.items():
        if values and (ci := _interval(values[1:], level)) is not None:
            out[key] = {"difference": float(values[0][0]), "interval": ci}
    return out


def interval_text(summary: Mapping[str, Any]) -> str:
    """`` (95 % CI lo-hi)`` of an evaluation summary's pooled Dice (its ``ci95``), or ``""`` when it has none: the
    console lines of ``hemseg eval`` and the quickstart."""
    ci = (summary.get("ci95") or {}).get("dice_global")
    if not ci:
        n = (summary.get("ci95") or {}).get("n_units")
        return "" if n is None else f" (no interval: only {units_text(n, summary['ci95']['unit'])})"
    return f" ({100 * summary['ci95']['level']:.0f} % CI {ci[0]:.3f}-{ci[1]:.3f}{too_few_text(summary['ci95'])})"


def difference_text(d: Mapping[str, Any] | None, digits: int = 3) -> str | None:
    """``+0.052 [-0.011, +0.118]`` of one entry of :func:`paired_difference` (``{"difference", "interval"}``), or
    ``None`` without one: ``hemseg report``'s tables and ``hemseg eval-compare``."""
    if not d:
        return None
    if d.get("interval") is None:  # too few units to resample: the difference alone
        return f"{d['difference']:+.{digits}f} (no interval)"
    lo, hi = d["interval"]
    return f"{d['difference']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
