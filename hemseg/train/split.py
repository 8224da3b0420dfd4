"""Seeded train/validation splits and k-fold partitions, stratified by category.

Units are *samples* (one image file, which may hold several slices), never single slices, so the slices of one volume
never end up on both sides of a split.

- :func:`stratified_split`: the validation set gets ``round(n * val_fraction)`` samples (at least 1, at most
  ``n - 1``), shared among the categories by the largest-remainder method (each category's quota is
  ``n_cat * val_fraction``; leftover places go to the largest fractional parts, ties broken by the seeded RNG); within
  a category the validation members are a seeded random choice. A category never gives away all of its samples when it
  has more than one, so every category with >= 2 samples keeps training data.
- :func:`stratified_kfold`: within each category the samples are shuffled (seeded), categories are concatenated in
  sorted order and sample ``i`` of that sequence goes to fold ``i % k`` (as scikit-learn's StratifiedKFold does in
  spirit): folds differ in size by at most one and each category is spread as evenly as possible.

Both return sorted index lists into the input sequence and are pure functions of ``(categories, ..., seed)``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from hemseg.errors import DatasetError, UsageError


def _groups(categories: Sequence[str], rng: np.random.Generator) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(categories):
        groups[str(c)].append(i)
    return {c: [groups[c][j] for j in rng.permutation(len(groups[c]))] for c in sorted(groups)}


def stratified_split(categories: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)`` of a seeded split stratified by ``categories`` (see the module docstring)."""
    n = len(categories)
    if not 0.0 < float(val_fraction) < 1.0:
        raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if n < 2:
        raise DatasetError(f"need at least 2 samples to split into training and validation, got {n}")
    rng = np.random.default_rng(seed)
    groups = _groups(categories, rng)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    quota = {c: len(idx) * val_fraction for c, idx in groups.items()}
    # a category keeps at least one training sample when it has two or more
    cap = {c: len(idx) - 1 if len(idx) > 1 else len(idx) for c, idx in groups.items()}
    take = {c: min(int(math.floor(q)), cap[c]) for c, q in quota.items()}
    left = n_val - sum(take.values())  # >= 0: the floors sum to at most floor(n * val_fraction)
    tiebreak = {c: r for c, r in zip(groups, rng.random(len(groups)))}
    order = sorted(groups, key=lambda c: (-(quota[c] - math.floor(quota[c])), tiebreak[c]))
    # first pass: categories with room below their cap; second pass (tiny datasets): single-sample categories too
    for allow_all in (False, True):
        for c in order:
            if left == 0:
                break
            limit = len(groups[c]) if allow_all else cap[c]
            if take[c] < limit and (allow_all or len(groups[c]) > 1):
                take[c] += 1
                left -= 1
    val = sorted(i for c, idx in groups.items() for i in idx[: take[c]])
    train = sorted(set(range(n)) - set(val))
    if not train or not val:
        raise DatasetError(f"cannot split {n} samples with val fraction {val_fraction}")
    return train, val


def stratified_kfold(categories: Sequence[str], k: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``k`` pairs ``(train, val)`` of a seeded k-fold partition stratified by ``categories``."""
    n = len(categories)
    if int(k) < 2:
        raise UsageError(f"--folds must be at least 2, got {k}")
    if n < k:
        raise DatasetError(f"{k}-fold cross-validation needs at least {k} samples, got {n}")
    rng = np.random.default_rng(seed)
    sequence = [i for idx in _groups(categories, rng).values() for i in idx]
    fold_of = {i: pos % k for pos, i in enumerate(sequence)}
    folds = []
    for f in range(k):
        val = sorted(i for i in range(n) if fold_of[i] == f)
        train = sorted(i for i in range(n) if fold_of[i] != f)
        folds.append((train, val))
    return folds
