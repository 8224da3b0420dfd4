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

Both take optional ``groups`` (one case label per sample, e.g. the patient of each slice; :data:`CASES_CSV
<hemseg.runtime.dataset.CASES_CSV>`): then the unit is the case, never the sample, so no case has samples on both
sides of a split or in two folds (scikit-learn's StratifiedGroupKFold in spirit). A case counts under its most
frequent category (ties: the first in sorted order); fractions and fold counts are in cases. Without ``groups``
(or with every sample its own case) the result is exactly the per-sample one.

:func:`read_splits` reads splits from a file instead (nnU-Net's ``splits_final.json``, a hemseg run's
``config.json``).

Both return sorted index lists into the input sequence and are pure functions of
``(categories, ..., seed, groups)``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from hemseg.errors import DatasetError, InputError, UsageError
from hemseg.runtime.io.regular import read_regular_text

log = logging.getLogger(__name__)


def _units(categories: Sequence[str], groups: Sequence[str] | None) -> tuple[list[str], list[list[int]]]:
    """(category of each unit, sample indices of each unit): one unit per sample, or per case in order of first
    appearance."""
    if groups is None:
        return [str(c) for c in categories], [[i] for i in range(len(categories))]
    if len(groups) != len(categories):
        raise ValueError(f"{len(groups)} groups for {len(categories)} samples")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(str(g), []).append(i)
    units = list(members.values())
    unit_categories = []
    for idx in units:
        counts = Counter(str(categories[i]) for i in idx)
        unit_categories.append(min(counts, key=lambda c: (-counts[c], c)))
    return unit_categories, units


def _expand(unit_idx: list[int], units: list[list[int]]) -> list[int]:
    return sorted(i for u in unit_idx for i in units[u])


def _groups(categories: Sequence[str], rng: np.random.Generator) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(categories):
        groups[str(c)].append(i)
    return {c: [groups[c][j] for j in rng.permutation(len(groups[c]))] for c in sorted(groups)}


def stratified_split(categories: Sequence[str], val_fraction: float, seed: int = 0,
                     groups: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)`` of a seeded split stratified by ``categories``, whole cases of ``groups`` if given
    (see the module docstring)."""
    if not 0.0 < float(val_fraction) < 1.0:
        raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    unit_categories, units = _units(categories, groups)
    train, val = _split_units(unit_categories, val_fraction, seed, "cases" if groups is not None else "samples")
    return _expand(train, units), _expand(val, units)


def _split_units(categories: list[str], val_fraction: float, seed: int, noun: str) -> tuple[list[int], list[int]]:
    n = len(categories)
    if n < 2:
        raise DatasetError(f"need at least 2 {noun} to split into training and validation, got {n}"
                           + (" (every sample of one case: remove the case list to split by sample)"
                              if noun == "cases" and n == 1 else ""))
    rng = np.random.default_rng(seed)
    by_category = _groups(categories, rng)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    quota = {c: len(idx) * val_fraction for c, idx in by_category.items()}
    # a category keeps at least one training sample when it has two or more
    cap = {c: len(idx) - 1 if len(idx) > 1 else len(idx) for c, idx in by_category.items()}
    take = {c: min(int(math.floor(q)), cap[c]) for c, q in quota.items()}
    left = n_val - sum(take.values())  # >= 0: the floors sum to at most floor(n * val_fraction)
    tiebreak = {c: r for c, r in zip(by_category, rng.random(len(by_category)))}
    order = sorted(by_category, key=lambda c: (-(quota[c] - math.floor(quota[c])), tiebreak[c]))
    # first pass: categories with room below their cap; second pass (tiny datasets): single-sample categories too
    for allow_all in (False, True):
        for c in order:
            if left == 0:
                break
            limit = len(by_category[c]) if allow_all else cap[c]
            if take[c] < limit and (allow_all or len(by_category[c]) > 1):
                take[c] += 1
                left -= 1
    val = sorted(i for c, idx in by_category.items() for i in idx[: take[c]])
    train = sorted(set(range(n)) - set(val))
    if not train or not val:
        raise DatasetError(f"cannot split {n} {noun} with val fraction {val_fraction}")
    return train, val


def stratified_kfold(categories: Sequence[str], k: int, seed: int = 0,
                     groups: Sequence[str] | None = None) -> list[tuple[list[int], list[int]]]:
    """``k`` pairs ``(train, val)`` of a seeded k-fold partition stratified by ``categories``, whole cases of
    ``groups`` if given."""
    if int(k) < 2:
        raise UsageError(f"--folds must be at least 2, got {k}")
    unit_categories, units = _units(categories, groups)
    n = len(unit_categories)
    if n < k:
        noun = "cases" if groups is not None else "samples"
        raise DatasetError(f"{k}-fold cross-validation needs at least {k} {noun}, got {n}")
    rng = np.random.default_rng(seed)
    sequence = [i for idx in _groups(unit_categories, rng).values() for i in idx]
    fold_of = {i: pos % k for pos, i in enumerate(sequence)}
    folds = []
    for f in range(k):
        val = [u for u in range(n) if fold_of[u] == f]
        train = [u for u in range(n) if fold_of[u] != f]
        folds.append((_expand(train, units), _expand(val, units)))
    return folds


def missing_from_folds(categories: Sequence[str], folds: Sequence[tuple[Sequence[int], Sequence[int]]]
                       ) -> dict[str, int]:
    """The categories absent from the validation side of some of ``folds``, with how many folds miss each: a
    category with fewer samples (or cases) than folds cannot be in every one, and with cases a case counts only
    for its most frequent category in the stratification, so the others it holds can be missed too."""
    every = sorted({str(c) for c in categories})
    missing: Counter = Counter()
    for _, val in folds:
        present = {str(categories[i]) for i in val}
        missing.update(c for c in every if c not in present)
    return dict(sorted(missing.items()))


def read_splits(path: str | Path, stems: Sequence[str], groups: Sequence[str] | None = None
                ) -> list[tuple[list[int], list[int]]]:
    """The splits listed in the JSON file ``path`` as ``(train, val)`` index lists into ``stems``.

    The file holds a list of ``{"train": [stem, ...], "val": [stem, ...]}`` (nnU-Net's ``splits_final.json``, one
    entry per fold, identifiers = hemseg stems), or an object with such a list under ``"splits"`` (the
    ``config.json`` of a hemseg run: its splits, reused exactly). Unknown or doubled stems, a stem on both sides, an
    empty side are errors naming the file; samples in no split are left out (logged); with ``groups`` a case on
    both sides is logged as a warning (the file decides).
    """
    path = Path(path)
    try:
        raw = json.loads(read_regular_text(path))
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a JSON file: {exc}") from None
    entries = raw.get("splits") if isinstance(raw, dict) else raw
    shape = ('a list of {"train": [...], "val": [...]} (nnU-Net\'s splits_final.json) or a hemseg config.json with '
             '"splits"')
    if not isinstance(entries, list) or not entries or not all(
            isinstance(e, dict) and isinstance(e.get("train"), list) and isinstance(e.get("val"), list)
            for e in entries):
        raise InputError(path, f"expected {shape}")
    index: dict[str, int] = {}
    for i, s in enumerate(stems):
        if s in index:
            raise DatasetError(f"{path}: '{s}' names two samples of the dataset; splits by name cannot tell them "
                               "apart")
        index[s] = i
    out = []
    for k, entry in enumerate(entries, 1):
        sides = []
        for side in ("train", "val"):
            names = [str(n) for n in entry[side]]
            unknown = [n for n in names if n not in index]
            if unknown:
                raise DatasetError(f"{path}: split {k} {side}: {len(unknown)} name(s) not in the dataset "
                                   f"(e.g. {', '.join(unknown[:3])})")
            if not names:
                raise DatasetError(f"{path}: split {k}: empty {side} list")
            if len(set(names)) != len(names):
                raise DatasetError(f"{path}: split {k} {side}: a name is listed twice")
            sides.append(sorted(index[n] for n in names))
        train, val = sides
        both = sorted(set(train) & set(val))
        if both:
            raise DatasetError(f"{path}: split {k}: '{stems[both[0]]}' is in train and in val")
        unused = len(stems) - len(train) - len(val)
        if unused:
            log.info("%s: split %d leaves %d sample(s) out", path, k, unused)
        if groups is not None:
            shared = sorted({groups[i] for i in train} & {groups[i] for i in val})
            if shared:
                log.warning("%s: split %d puts case %s on both sides (%d case(s) in all); the file decides", path, k,
                            shared[0], len(shared))
        out.append((train, val))
    return out
