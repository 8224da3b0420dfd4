"""Training learns: on a tiny synthetic task (bright blobs on textured noise, 64 px, ``tests/blobs.py``), U-Net and
FCN-ResNet50 trained from random weights with the ``hemseg`` recipe reach a high pooled Dice on held-out images, as
``hemseg eval`` measures it: U-Net >= 0.9 in at least two of three seeds (seed 0 measured 0.967 on an AVX2 CPU,
0.855 on an AMX CPU; seeds 1 and 2 0.99 and 0.96 there), FCN-ResNet50 >= 0.8 (measured
0.869 with 2 torch threads, 0.894 with 1: float sums differ with the thread count; at 64 px its output stride of 8
leaves an 8 x 8 map upsampled 8x, whose blurred edges cost Dice on blobs 9-16 px across; its validation Dice levelled
off at 0.86-0.89 over the last quarter of the run). The same run
with the optimizer's update removed, or with a loss that no longer looks at the masks, stays far below: these tests
fail when training learns nothing.

Run lengths are set for a 2-core CPU (about two minutes for FCN-ResNet50 and half a minute to a minute for each U-Net
run when the machine is idle).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from blobs import make_blobs, train_and_eval  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

STEPS = {"unet": 300, "fcn_resnet50": 200}
BATCH = {"unet": 8, "fcn_resnet50": 4}
GOAL = {"unet": 0.9, "fcn_resnet50": 0.8}


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("blobs")
    return make_blobs(root / "train", 40, 64, seed=0), make_blobs(root / "heldout", 16, 64, seed=1)


def _train_and_eval(blobs: tuple[Path, Path], out: Path, model: str, seed: int = 0) -> dict:
    return train_and_eval(*blobs, out, model, STEPS[model], BATCH[model], seed)


def test_the_hemseg_recipe_learns_from_scratch_unet(blobs, tmp_path):
    """At least two of three seeds reach the goal. One run's outcome depends on the CPU's float summation order:
    seed 0 gave 0.967 on an AVX2 EPYC and 0.855 on an AMX Xeon (2 threads; 0.941 with 1), where its model drew
    speckles on the lesion-free noise images (all 15 blobs found, 5.5 false components per blob-free image); seeds
    1 and 2 gave 0.99 and 0.96 there. A model that learns nothing stays below 0.5 (the tests below)."""
    summaries = [_train_and_eval(blobs, tmp_path / f"seed{seed}", "unet", seed) for seed in (0, 1, 2)]
    scores = sorted(s["dice_global"] for s in summaries)
    assert scores[1] >= GOAL["unet"], scores  # the median
    assert all(s["n_pred_empty"] < s["n_images"] for s in summaries)


def test_the_hemseg_recipe_learns_from_scratch_fcn_resnet50(blobs, tmp_path):
    summary = _train_and_eval(blobs, tmp_path, "fcn_resnet50")
    assert summary["dice_global"] >= GOAL["fcn_resnet50"], summary["dice_global"]
    assert summary["n_pred_empty"] < summary["n_images"]


def test_without_the_optimizer_update_nothing_is_learned(blobs, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: None)
    summary = _train_and_eval(blobs, tmp_path, "unet")
    assert summary["dice_global"] < 0.5


def test_with_a_loss_that_ignores_the_masks_nothing_is_learned(blobs, tmp_path, monkeypatch):
    from hemseg.train.loop import SegmentationLoss

    real = SegmentationLoss.forward
    monkeypatch.setattr(SegmentationLoss, "forward", lambda self, logits, target: real(self, logits, target * 0))
    summary = _train_and_eval(blobs, tmp_path, "unet")
    assert summary["dice_global"] < 0.5
