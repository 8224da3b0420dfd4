"""Seeded, category-stratified train/validation splits and k-fold partitions (numpy only)."""

from __future__ import annotations

from collections import Counter

import pytest

from hemseg.errors import DatasetError, UsageError
from hemseg.train.split import stratified_kfold, stratified_split

CATS12 = [f"cat{i % 12:02d}" for i in range(24)]  # the phantom: 12 categories x 2


def test_split_is_a_partition_and_seeded():
    train, val = stratified_split(CATS12, 0.2, seed=0)
    assert sorted(train + val) == list(range(24)) and not set(train) & set(val)
    assert len(val) == 5  # round(24 * 0.2)
    assert stratified_split(CATS12, 0.2, seed=0) == (train, val)
    assert stratified_split(CATS12, 0.2, seed=1) != (train, val)


def test_split_is_stratified():
    cats = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    for seed in range(5):
        train, val = stratified_split(cats, 0.2, seed=seed)
        assert Counter(cats[i] for i in val) == {"a": 10, "b": 6, "c": 4}


def test_split_keeps_training_data_in_every_category():
    train, val = stratified_split(CATS12, 0.5, seed=3)  # quota 1 of 2 per category: each keeps one for training
    assert Counter(CATS12[i] for i in train) == Counter(CATS12[i] for i in val) == {c: 1 for c in set(CATS12)}
    cats = ["a"] * 9 + ["b"]  # a single-sample category stays in training while the quota allows it
    train, val = stratified_split(cats, 0.2, seed=0)
    assert 9 in train and len(val) == 2


def test_split_refusals():
    with pytest.raises(DatasetError):
        stratified_split(["a"], 0.2)
    with pytest.raises(UsageError):
        stratified_split(CATS12, 0.0)
    with pytest.raises(UsageError):
        stratified_split(CATS12, 1.0)
    assert stratified_split(["a", "b"], 0.01) in (([0], [1]), ([1], [0]))  # at least one validation sample


def test_kfold_partitions_and_stratifies():
    cats = ["a"] * 9 + ["b"] * 6 + ["c"] * 3
    folds = stratified_kfold(cats, 3, seed=0)
    assert len(folds) == 3
    vals = [set(v) for _, v in folds]
    assert set().union(*vals) == set(range(18)) and sum(map(len, vals)) == 18  # each sample validated exactly once
    for train, val in folds:
        assert not set(train) & set(val) and len(train) + len(val) == 18
        assert Counter(cats[i] for i in val) == {"a": 3, "b": 2, "c": 1}
    assert stratified_kfold(cats, 3, seed=0) == folds
    assert stratified_kfold(cats, 3, seed=1) != folds


def test_kfold_balances_sizes_and_refuses():
    folds = stratified_kfold(CATS12, 5, seed=0)
    sizes = sorted(len(v) for _, v in folds)
    assert sizes[-1] - sizes[0] <= 1
    with pytest.raises(UsageError):
        stratified_kfold(CATS12, 1)
    with pytest.raises(DatasetError):
        stratified_kfold(["a", "b"], 3)


@pytest.mark.torch  # hemseg.train.trainer: the [train] extra's module
def test_folds_more_than_a_category_holds_are_warned_of(caplog):
    """--folds 5 with categories of 3 samples: each such category is missing from the validation of 2 folds, and
    nothing said so (scikit-learn's StratifiedKFold warns)."""
    import logging
    from types import SimpleNamespace

    from hemseg.train.split import missing_from_folds
    from hemseg.train.trainer import _splits

    cats = ["a"] * 3 + ["b"] * 6 + ["c"] * 2
    folds = stratified_kfold(cats, 5, seed=0)
    missing = sum(1 for _, val in folds if not any(cats[i] == "a" for i in val))
    assert missing == 2  # what the warning is about
    assert missing_from_folds(cats, folds) == {"a": 2, "c": 3}
    assert missing_from_folds(cats, stratified_kfold(cats, 2, seed=0)) == {}
    # by case: a case counts for its most frequent category only, so a category can be missed with enough cases
    # holding it (the warning named only the categories with fewer cases than folds)
    multi = ["a", "b", "c"] * 6
    groups = [f"p{i // 3}" for i in range(18)]  # six patients, each with one slice of a, b and c
    by_case = stratified_kfold(multi, 3, seed=0, groups=groups)
    assert missing_from_folds(multi, by_case) == {}
    opts = SimpleNamespace(splits=None, folds=5, seed=0, val_fraction=0.2)
    samples = [SimpleNamespace(category=c) for c in cats]
    with caplog.at_level(logging.WARNING, logger="hemseg.train.trainer"):
        assert _splits(opts, samples, None) == folds
    said = [r.getMessage() for r in caplog.records if "--folds 5" in r.getMessage()]
    assert len(said) == 1 and "2 categories are missing from the validation of some folds" in said[0]
    assert "a (2 of 5), c (3 of 5)" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hemseg.train.trainer"):
        _splits(SimpleNamespace(splits=None, folds=2, seed=0, val_fraction=0.2), samples, None)
    assert not [r for r in caplog.records if "--folds" in r.getMessage()]
