"""``--patch auto``: whole slices when a ``--minutes`` budget buys them enough steps, else the largest patch that does.

The choice rests on measured step times; the tests inject them (``hemseg.train.budget.probe_seconds``) so that the
decision does not depend on the speed of the machine, and check what the run then trains on (the shape of every training batch).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hemseg.errors import UsageError  # noqa: E402
from hemseg.train.checkpoint import read_checkpoint  # noqa: E402
from hemseg.train.schedule import choose_patch, patch_candidates  # noqa: E402
from hemseg.train.trainer import TrainOptions, run_training  # noqa: E402

pytestmark = pytest.mark.torch

TINY = dict(model="unet", unet_base=8, image_size=64, batch_size=4, device="cpu", progress=False, weights="none",
            no_preprocess=True)


@pytest.fixture(scope="module")
def phantom(small_phantom) -> Path:
    return small_phantom  # conftest.py: 24 slices, 64-96 px, read only


def test_candidates_are_a_half_and_a_quarter_of_the_side_never_below_96_px():
    assert patch_candidates(256) == [128]
    assert patch_candidates(512) == [256, 128]
    assert patch_candidates(384) == [192, 96]
    assert patch_candidates(200) == [96]  # multiples of 16
    assert patch_candidates(128) == [] and patch_candidates(64) == []


def test_choice_is_the_largest_option_that_buys_enough_steps():
    assert choose_patch({None: 600, 128: 2400}, enough=500) is None  # whole slices when they suffice
    assert choose_patch({None: 30, 128: 550}, enough=500) == 128
    assert choose_patch({None: 100, 256: 600, 128: 2400}, enough=500) == 256  # not the smallest
    assert choose_patch({None: 30, 256: 120, 128: 480}, enough=500) == 128  # none suffices: the most steps
    assert choose_patch({None: 30, 128: 30}, enough=500) is None  # a tie keeps whole slices


def test_patch_option_values():
    assert TrainOptions().patch == "auto"
    assert TrainOptions(patch=0).patch is None and TrainOptions(patch="0").patch is None  # whole slices
    assert TrainOptions(patch="32", image_size=64).patch == 32
    for bad in ("big", 24, 80):  # not a number; not a multiple of 16; larger than --image-size 64
        with pytest.raises(UsageError, match="--patch must be auto, 0"):
            TrainOptions(patch=bad, image_size=64)


def _record_batches(monkeypatch, shapes: list):
    import hemseg.train.fit as fit_mod

    real = fit_mod.train_step

    def recording(model, x, *args, **kwargs):
        shapes.append(tuple(x.shape[-2:]))
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(fit_mod, "train_step", recording)


def _fake_probe(monkeypatch, whole_s: float, patch_s: float, probed: list):
    """Step times by what the probed dataset trains on (whole slices or a patch), 0.01 s per validation."""
    import hemseg.train.budget as budget_mod
    import hemseg.train.fit as fit_mod

    def probe(s, model, criterion, train_ds, *args, **kwargs):
        probed.append(train_ds.patch)
        return (whole_s if train_ds.patch is None else patch_s), 0.01

    monkeypatch.setattr(budget_mod, "probe_seconds", probe)
    monkeypatch.setattr(fit_mod, "patch_candidates", lambda size: [size // 2])  # 32 px at the tests' 64 px
    monkeypatch.setattr(budget_mod, "ENOUGH_STEPS", 20)


def test_a_budget_too_small_for_whole_slices_trains_on_patches(phantom, tmp_path, monkeypatch, caplog):
    import hemseg.train.fit as fit_mod

    probed, shapes = [], []
    # whole slices: 2 s per step, ~2 steps in 6 s; 32 px patches: 0.05 s, ~100 steps. The estimate for whole
    # slices (4 x 0.05 s) would still buy 20 steps, so they are probed too, and lose.
    _fake_probe(monkeypatch, whole_s=2.0, patch_s=0.05, probed=probed)
    monkeypatch.setattr(fit_mod, "replan", lambda s, step, total, *a: total)  # keep the plan: a fast test
    _record_batches(monkeypatch, shapes)
    with caplog.at_level("INFO", logger="hemseg.train"):
        metrics = run_training(phantom, tmp_path / "run", minutes=0.1, **TINY)
    assert probed == [32, None]
    assert metrics["patch"] == 32 and shapes and set(shapes) == {(32, 32)}
    plan = metrics["patch_plan"]
    assert plan["chosen"] == 32 and plan["options"]["whole"]["steps"] < 20 <= plan["options"]["32"]["steps"]
    assert not plan["options"]["whole"]["estimated"]
    assert metrics["steps"] >= 20  # planned at the patches' 0.05 s per step (whole slices: ~2 steps)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--patch auto:")]
    assert len(said) == 1 and "training on 32 px patches" in said[0] and "--patch 0" in said[0]
    # validation and the saved model stay on whole slices; the run's files say what it trained on
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["patch"] == 32
    assert read_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["patch"] == 32


def test_whole_slices_are_not_probed_when_even_their_estimate_falls_short(phantom, tmp_path, monkeypatch):
    probed, shapes = [], []
    _fake_probe(monkeypatch, whole_s=2.0, patch_s=0.2, probed=probed)  # estimate 0.8 s: ~6 steps < 20
    _record_batches(monkeypatch, shapes)
    metrics = run_training(phantom, tmp_path / "run", minutes=0.1, **TINY)
    assert probed == [32]
    assert metrics["patch"] == 32 and set(shapes) == {(32, 32)}
    assert metrics["patch_plan"]["options"]["whole"]["estimated"]


def test_a_budget_that_affords_whole_slices_keeps_them(phantom, tmp_path, monkeypatch):
    probed, shapes = [], []
    _fake_probe(monkeypatch, whole_s=0.1, patch_s=0.05, probed=probed)  # whole slices buy ~50 steps >= 20
    _record_batches(monkeypatch, shapes)
    metrics = run_training(phantom, tmp_path / "run", minutes=0.1, **TINY)
    assert probed == [32, None]
    assert metrics["patch"] is None and set(shapes) == {(64, 64)}


@pytest.mark.parametrize("length", [dict(steps=3), dict(minutes=0.1, recipe="paper")])
def test_a_fixed_run_length_or_the_paper_recipe_keeps_whole_slices(phantom, tmp_path, monkeypatch, length):
    import hemseg.train.budget as budget_mod

    probed, shapes = [], []
    # whole slices buy ~29 steps in 6 s, fewer than the 40 that --patch auto would want, but enough to run
    _fake_probe(monkeypatch, whole_s=0.2, patch_s=0.05, probed=probed)
    monkeypatch.setattr(budget_mod, "ENOUGH_STEPS", 40)
    _record_batches(monkeypatch, shapes)
    metrics = run_training(phantom, tmp_path / "run", **{**TINY, **length})
    assert metrics["patch"] is None and set(shapes) == {(64, 64)}
    assert probed == ([None] if "minutes" in length else [])


def test_a_resumed_auto_run_keeps_the_patch_it_was_planned_with(phantom, tmp_path, monkeypatch):
    import hemseg.train.fit as fit_mod

    probed, shapes = [], []
    _fake_probe(monkeypatch, whole_s=2.0, patch_s=0.05, probed=probed)
    monkeypatch.setattr(fit_mod, "replan", lambda s, step, total, *a: total)
    real, calls = fit_mod.train_step, []

    def crash_at_step_5(model, x, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(fit_mod, "train_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_training(phantom, tmp_path / "run", minutes=0.1, val_every=2, **TINY)
    assert read_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["patch"] == 32
    monkeypatch.setattr(fit_mod, "train_step", real)
    _record_batches(monkeypatch, shapes)
    metrics = run_training(phantom, tmp_path / "run", minutes=0.1, val_every=2, resume=True, **TINY)
    assert metrics["patch"] == 32 and shapes and set(shapes) == {(32, 32)}
