"""Lesion width at the training size against the model's output stride (hemseg.train.object_scale)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hemseg.runtime.metrics import dice_score
from hemseg.train.object_scale import (
    MIN_WIDTH_STRIDES,
    OUTPUT_STRIDE,
    best_grid_logits,
    check_object_scale,
    object_scale,
    object_widths,
    scale_advice,
)


def _disc(size: int, d: float, cy: float, cx: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] + 0.5
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= (d / 2) ** 2).astype(np.uint8)


@pytest.mark.parametrize("d", [4, 6, 10, 16, 24])
def test_a_disc_measures_its_diameter_within_one_and_a_half_pixels(d):
    for offset in (0.0, 0.25, 0.5):
        (w,) = object_widths([_disc(64, d, 32 + offset, 30 + offset)])
        assert abs(w - d) <= 1.5, (d, offset, w)


def test_every_component_of_every_mask_is_measured_and_empty_masks_add_nothing():
    two = np.maximum(_disc(64, 6, 16, 16), _disc(64, 20, 40, 40))
    w = object_widths([np.zeros((64, 64), np.uint8), two, _disc(32, 10, 16, 16)])
    assert sorted(np.round(w)) == pytest.approx([6, 10, 20], abs=1.5)
    assert object_widths([np.zeros((8, 8), np.uint8)]).size == 0


def test_a_lesion_cut_by_the_border_keeps_its_width():
    m = np.zeros((40, 40), np.uint8)
    m[:10, :10] = 1  # a 10 x 10 square in the corner: 10 px wide, not 5
    (w,) = object_widths([m])
    assert 9 <= w <= 11


def test_narrow_lesions_on_a_stride_8_model_get_advice_with_a_larger_size():
    masks = [_disc(96, 6, 48.5, 48.5)] * 3
    scale = object_scale(masks, "fcn_resnet50", 96)
    assert scale["output_stride"] == 8 and scale["n_lesions"] == 3 and scale["share_below_min"] == 1.0
    advice = scale_advice(scale, "fcn_resnet50", patch=None)
    assert advice is not None and "--patch 96" in advice
    target = int(advice.split("--image-size ")[-1].split()[0])
    # the suggested size (a multiple of 16) makes the median lesion at least MIN_WIDTH_STRIDES strides wide, no more
    # than 16 px beyond what that needs
    assert target % 16 == 0 and target == 192
    assert scale["median_width_px"] * target / 96 >= MIN_WIDTH_STRIDES * 8
    assert "--patch 64" in scale_advice(scale, "fcn_resnet50", patch=64)
    # under --patch auto (the default) the budget picks the patch at the larger size: no fixed window is prescribed
    auto = scale_advice(scale, "fcn_resnet50", patch="auto")
    assert "train at --image-size 192 (--patch auto" in auto and "--patch 96 costs what a whole 96 px slice" in auto


def test_no_advice_for_wide_lesions_or_full_resolution_models():
    wide = object_scale([_disc(96, 20, 48, 48)], "fcn_resnet50", 96)
    assert scale_advice(wide, "fcn_resnet50") is None
    for model in ("unet", "attention_unet"):
        narrow = object_scale([_disc(96, 5, 48, 48)], model, 96)
        assert narrow["output_stride"] == 1 and scale_advice(narrow, model) is None
    empty = object_scale([np.zeros((16, 16), np.uint8)], "fcn_resnet50", 16)
    assert empty["n_lesions"] == 0 and scale_advice(empty, "fcn_resnet50") is None


def test_the_warning_is_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="hemseg.train.object_scale"):
        scale = check_object_scale([_disc(96, 6, 48.5, 48.5)], "fcn_resnet50", 96)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{scale['median_width_px']:.1f} px wide" in warnings[0].getMessage()
    assert scale["median_width_px"] == pytest.approx(6, abs=1.5)


def _best_stride_fit_dice(d: float, stride: int, size: int = 96) -> float:
    """Dice of the best logit grid at ``stride`` (bilinearly upsampled, as FCN does) fitted to a disc of diameter d."""
    pytest.importorskip("torch")
    target = _disc(size, d, size / 2 + 1.3, size / 2 - 2.1)
    return dice_score(best_grid_logits(target, stride) > 0, target > 0)


def test_the_stride_ceiling_that_motivates_the_warning():
    """The reason for the rule: a stride-8 grid cannot draw a 5 px lesion well, and can draw a 1.5-stride one."""
    stride = OUTPUT_STRIDE["fcn_resnet50"]
    assert _best_stride_fit_dice(5, stride) < 0.8
    assert _best_stride_fit_dice(MIN_WIDTH_STRIDES * stride, stride) > 0.93
    assert _best_stride_fit_dice(5, 1) > 0.95  # the full-resolution grid draws the same disc
