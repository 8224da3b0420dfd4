"""Tests of hemseg.runtime.postprocess, step by step on small hand-made arrays."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hemseg.errors import UsageError
from hemseg.runtime import postprocess as P
from hemseg.runtime.postprocess import PostprocessConfig


def test_config_defaults_roundtrip_and_validation():
    c = PostprocessConfig()
    assert c.to_dict() == {"threshold": 0.5, "closing_radius": 0, "opening_radius": 0, "min_area": 0,
                           "fill_holes": False}
    c2 = PostprocessConfig(threshold=0.3, closing_radius=2, opening_radius=1, min_area=5, fill_holes=True)
    assert PostprocessConfig.from_dict(c2.to_dict()) == c2
    assert PostprocessConfig.from_dict({"min_area": 3}).min_area == 3
    with pytest.raises(UsageError, match="unknown"):
        PostprocessConfig.from_dict({"thresh": 0.5})
    with pytest.raises(UsageError, match="threshold"):
        PostprocessConfig(threshold=1.5)
    with pytest.raises(UsageError, match="closing_radius"):
        PostprocessConfig(closing_radius=-1)
    with pytest.raises(UsageError, match="min_area"):
        PostprocessConfig(min_area=float("nan"))
    assert PostprocessConfig(min_area=2.5).min_area == 2.5  # a scaled size keeps its fraction
    with pytest.raises(UsageError, match="fill_holes"):
        PostprocessConfig(fill_holes="yes")
    with pytest.raises(Exception):
        c.threshold = 0.1  # frozen


def test_sigmoid_stable_and_accurate():
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = P.sigmoid(x)
    assert y.dtype == np.float32
    assert np.all(np.isfinite(y))
    assert y[0] == 0.0 and y[-1] == 1.0 and y[3] == 0.5
    np.testing.assert_allclose(y[1:-1], 1 / (1 + np.exp(-x[1:-1].astype(np.float64))), rtol=1e-6)
    assert P.sigmoid(np.array([0.0]))[0] == 0.5  # float64 stays float64
    assert P.sigmoid(np.array([0], np.int32)).dtype == np.float32


def test_threshold_is_strictly_greater_and_logits():
    prob = np.array([[0.2, 0.5], [0.51, 0.9]], np.float32)
    np.testing.assert_array_equal(P.postprocess(prob), [[0, 0], [1, 1]])
    assert P.postprocess(prob).dtype == np.uint8
    np.testing.assert_array_equal(P.postprocess(prob, PostprocessConfig(threshold=0.1)), [[1, 1], [1, 1]])
    logits = np.array([[-3.0, 0.0], [0.1, 5.0]], np.float32)
    np.testing.assert_array_equal(P.postprocess(logits, logits=True), [[0, 0], [1, 1]])
    # (1, 1, H, W) network output is accepted
    np.testing.assert_array_equal(P.postprocess(prob[None, None]), [[0, 0], [1, 1]])
    with pytest.raises(UsageError):
        P.postprocess(np.zeros((2, 4, 4)))


def test_closing_fills_a_gap():
    m = np.zeros((9, 11), np.uint8)
    m[3:6, 1:5] = 1
    m[3:6, 6:10] = 1  # one-pixel gap at column 5
    out = P.closing(m, 1)
    assert out[4, 5] == 1
    assert P.components(out)[0] == 1
    np.testing.assert_array_equal(P.closing(m, 0), m)


def test_opening_removes_a_speck_keeps_a_block():
    m = np.zeros((12, 12), np.uint8)
    m[2:9, 2:9] = 1
    m[10, 10] = 1
    out = P.opening(m, 1)
    assert out[10, 10] == 0
    assert out[5, 5] == 1 and out[2:9, 2:9].sum() >= 45


def test_min_area_uses_8_connectivity():
    m = np.zeros((8, 8), np.uint8)
    m[0, 0] = m[1, 1] = m[2, 2] = 1  # one diagonal component of 3 px (8-connected)
    m[6, 6] = m[6, 7] = 1  # 2 px
    out = P.remove_small_components(m, 3)
    assert out[:3, :3].sum() == 3  # kept: area 3 >= 3
    assert out[6].sum() == 0
    np.testing.assert_array_equal(P.remove_small_components(m, 0), m)
    assert P.remove_small_components(m, 4).sum() == 0


def test_fill_holes_interior_only():
    m = np.zeros((7, 7), np.uint8)
    m[1:6, 1:6] = 1
    m[3, 3] = 0  # interior hole
    m2 = m.copy()
    m2[0:3, 3] = 0  # a notch open to the border is no hole
    out = P.fill_holes(m)
    assert out[3, 3] == 1 and out.sum() == 25
    out2 = P.fill_holes(m2)
    assert out2[0, 3] == 0 and out2[1, 3] == 0 and out2[2, 3] == 0
    # a diagonal "leak" does not connect a hole to the outside (background is 4-connected)
    ring = np.array([[0, 0, 0, 0, 0],
                     [0, 1, 1, 0, 0],
                     [0, 1, 0, 1, 0],
                     [0, 0, 1, 1, 0],
                     [0, 0, 0, 0, 0]], np.uint8)
    assert P.fill_holes(ring)[2, 2] == 1
    assert P.fill_holes(np.ones((3, 3), np.uint8)).sum() == 9
    assert P.fill_holes(np.zeros((3, 3), np.uint8)).sum() == 0


def test_components_count_and_areas():
    m = np.zeros((6, 6), np.uint8)
    m[0:2, 0:2] = 1
    m[4, 4] = 1
    m[5, 5] = 1  # diagonal neighbour: same component
    n, areas = P.components(m)
    assert n == 2
    assert areas.tolist() == [4, 2]
    assert P.components(np.zeros((3, 3)))[0] == 0


def test_resize_back_nearest():
    m = np.array([[0, 1], [1, 0]], np.uint8)
    out = P.resize_back(m, (4, 6))
    assert out.shape == (4, 6)
    assert set(np.unique(out)) <= {0, 1}
    np.testing.assert_array_equal(out[:2, :3], 0)
    np.testing.assert_array_equal(out[:2, 3:], 1)
    with pytest.raises(UsageError):
        P.resize_back(m, (0, 3))


def test_full_pipeline_order_and_out_size():
    prob = np.zeros((16, 16), np.float32)
    prob[3:12, 3:12] = 0.9
    prob[7, 7] = 0.1  # hole after thresholding
    prob[14, 14] = 0.95  # speck
    cfg = PostprocessConfig(threshold=0.5, min_area=4, fill_holes=True)
    out = P.postprocess(prob, cfg)
    assert out[7, 7] == 1 and out[14, 14] == 0 and out.sum() == 81
    # at another size the scores are resampled (bilinear) and steps 1-5 run there, pixel sizes scaled (x sqrt(6))
    big = P.postprocess(prob, cfg, out_size=(32, 48))
    assert big.shape == (32, 48) and set(np.unique(big)) == {0, 1}
    expected = P.postprocess(P.resample_scores(prob, (32, 48)), cfg.scaled(39, reference=16))
    np.testing.assert_array_equal(big, expected)
    scores, scaled = P.at_size(prob, cfg, (32, 48))  # the same step for callers that keep the resampled map
    np.testing.assert_array_equal(P.postprocess(scores, scaled), big)
    assert big[15, 22] == 1 and big[29, 43] == 0      # the hole is filled, the speck (now ~6 px < 24) removed
    assert abs(int(big.sum()) - 81 * 6) <= 0.1 * 81 * 6  # the square keeps its area, give or take its edge


def test_out_size_resamples_the_scores_not_the_mask():
    """A disc's smooth score map at a coarse network grid, taken to the image's finer grid: deciding on the
    resampled scores draws the disc's edge at the fine resolution; enlarging the coarse mask with nearest neighbours
    (the old rule) draws it in steps of the coarse grid and loses Dice on a small object."""
    fine, coarse = 131, 24
    yy, xx = np.mgrid[:fine, :fine] + 0.5
    truth = (np.hypot(yy - 65.5, xx - 65.5) < 9).astype(np.uint8)  # a cord-sized disc, 18 px across
    cy, cx = (np.mgrid[:coarse, :coarse] + 0.5) * fine / coarse
    logits = (9 - np.hypot(cy - 65.5, cx - 65.5)).astype(np.float32)  # signed distance: a well-calibrated network
    new = P.postprocess(logits, PostprocessConfig(), logits=True, out_size=(fine, fine))
    old = P.resize_back(P.postprocess(logits, PostprocessConfig(), logits=True), (fine, fine))
    d_new, d_old = P.dice_score(new, truth), P.dice_score(old, truth)
    assert d_new > 0.95 and d_new > d_old + 0.03, (d_new, d_old)


def test_resample_scores_sizes_and_validation():
    s = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert P.resample_scores(s, (3, 4)).dtype == np.float32
    np.testing.assert_array_equal(P.resample_scores(s, (3, 4)), s.astype(np.float32))
    assert P.resample_scores(s[None, None], (6, 8)).shape == (6, 8)
    big = np.ones((8, 8), np.float32)
    big[:4] = 3.0
    np.testing.assert_allclose(P.resample_scores(big, (2, 2)), [[3, 3], [1, 1]])  # area averaging when shrinking
    with pytest.raises(UsageError, match="positive"):
        P.resample_scores(s, (0, 4))
    with pytest.raises(UsageError, match="height, width"):
        P.postprocess(s, out_size=(3,))


def test_tune_threshold_picks_best_and_ties_near_half():
    gt = np.zeros((8, 8), np.uint8)
    gt[2:6, 2:6] = 1
    prob = np.where(gt == 1, 0.7, 0.0).astype(np.float32)
    prob[0, 0] = 0.4  # a false positive below 0.4 thresholds
    t, d = P.tune_threshold([prob], [gt], candidates=[0.2, 0.3, 0.45, 0.6, 0.8])
    # 0.45 and 0.6 both give Dice 1; 0.45 is closer to 0.5
    assert t == 0.45 and d == pytest.approx(1.0)
    t, d = P.tune_threshold([prob], [gt], candidates=[0.2, 0.8])
    assert t == 0.2 and d == pytest.approx(32 / 33)
    t, d = P.tune_threshold([prob, prob], [gt, gt])
    assert 0.4 <= t < 0.7 and d == 1.0
    assert isinstance(t, float) and isinstance(d, float)


def test_default_candidates_reach_the_confident_end():
    """A model trained with a Dice term is confident: lesion at 0.995, its false positives at 0.96. The default
    candidates (even in logit, 0.01 ... 0.99) reach between them; a 0.1 ... 0.9 grid would keep the false positives."""
    cands = P.DEFAULT_CANDIDATES
    assert len(cands) == 21 and cands[0] == 0.01 and cands[-1] == 0.99 and 0.5 in cands
    assert all(a < b for a, b in zip(cands, cands[1:]))
    gt = np.zeros((16, 16), np.uint8)
    gt[4:8, 4:8] = 1
    prob = np.where(gt == 1, 0.995, 0.001).astype(np.float32)
    prob[10:14, 10:14] = 0.96
    t, d = P.tune_threshold([prob], [gt])
    assert 0.96 <= t < 0.995 and d == pytest.approx(1.0)


def test_tune_threshold_validation():
    gt = np.zeros((4, 4), np.uint8)
    with pytest.raises(UsageError):
        P.tune_threshold([], [])
    with pytest.raises(UsageError):
        P.tune_threshold([gt.astype(float)], [gt, gt])
    with pytest.raises(UsageError, match="shape"):
        P.tune_threshold([np.zeros((4, 5))], [gt])
    with pytest.raises(UsageError, match="threshold"):
        P.tune_threshold([gt.astype(float)], [gt], candidates=[2.0])


def test_scaled_config_follows_network_size():
    cfg = PostprocessConfig(threshold=0.3, closing_radius=2, opening_radius=2, min_area=20, fill_holes=True)
    assert cfg.scaled(256) == cfg
    assert cfg.scaled(P.REFERENCE_SIZE) == cfg
    half = cfg.scaled(128)
    assert (half.closing_radius, half.opening_radius, half.min_area) == (1, 1, 5)
    assert half.threshold == 0.3 and half.fill_holes is True
    quarter = cfg.scaled(64)  # exact; where a mask is cleaned radii round down (0.5 px -> 0), area 1.25 -> 1 px
    assert (quarter.closing_radius, quarter.opening_radius, quarter.min_area) == (0.5, 0.5, 1.25)
    assert (P.radius_px(quarter.closing_radius), P.area_px(quarter.min_area)) == (0, 1)
    # a 64 px model's config at a 256 px output is the 256 px config: rounded at each scaling, min_area went
    # 20 -> 1 -> 16 and the radii 2 -> 0 -> 0
    assert quarter.scaled(256, reference=64) == cfg
    double = cfg.scaled(512)
    assert (double.closing_radius, double.opening_radius, double.min_area) == (4, 4, 80)
    assert cfg.scaled(100, reference=100) == cfg
    for bad in (0, -3, 1.5, True, "64"):
        with pytest.raises(UsageError):
            cfg.scaled(bad)


def test_scaled_cleanup_keeps_a_thin_structure_at_low_resolution():
    # a 3 px wide bar (a spinal cord at 64 px): the 256 px opening (radius 2) erases it, the scaled one keeps it
    mask = np.zeros((64, 64), np.uint8)
    mask[10:54, 30:33] = 1
    cfg = PostprocessConfig(closing_radius=2, opening_radius=2, min_area=20, fill_holes=True)
    assert P.clean_mask(mask, cfg).sum() == 0
    kept = P.clean_mask(mask, cfg.scaled(64))
    assert np.array_equal(kept, mask)


def test_resampling_scales_sizes_exactly_for_any_image_shape_and_sizes_are_bounded():
    """at_size rounded sqrt(h * w) to whole pixels before scaling: at 69 x 416 from a 64 px map min_area 8 became
    3.486 (components of 3 px kept) where the exact 8 * 69 * 416 / 256^2 = 3.504 rounds to 4. And a radius of 2**40
    passed validation and failed in OpenCV with a bare TypeError."""
    from hemseg.runtime.pipeline import deployment_postprocess

    _, cfg = P.at_size(np.zeros((64, 64), np.float32), deployment_postprocess(64, 0.5), (69, 416))
    assert cfg.min_area == pytest.approx(8 * 69 * 416 / 256 ** 2) and P.area_px(cfg.min_area) == 4
    for name in ("closing_radius", "opening_radius", "min_area"):
        with pytest.raises(UsageError, match=f"{name} must be at most"):
            PostprocessConfig(**{name: 2 ** 40})


@pytest.mark.parametrize("call", [
    lambda: P.postprocess(np.zeros((0, 64), np.float32), PostprocessConfig(min_area=8)),
    lambda: P.postprocess(np.zeros((0, 64), np.float32), PostprocessConfig(closing_radius=1)),
    lambda: P.components(np.zeros((0, 0), np.uint8)),
    lambda: P.remove_small_components(np.zeros((0, 5)), 3),
    lambda: P.fill_holes(np.zeros((0, 5))),
    lambda: P.resample_scores(np.zeros((0, 64)), (32, 32)),
    lambda: P.resize_back(np.zeros((0, 5), np.uint8), (8, 8)),
    lambda: P.postprocess(np.zeros((8, 8), np.float32), out_size=(100000, 100000)),
    lambda: P.closing(np.zeros((8, 8), np.uint8), 1.5),
    lambda: P.opening(np.zeros((8, 8), np.uint8), -1),
    lambda: P.threshold_logits(np.zeros(3), None),
    lambda: P.remove_small_components(np.ones((4, 4)), None),
    lambda: P.remove_small_components(np.ones((4, 4)), float("nan")),  # wiped the mask without a word
    lambda: P.postprocess(np.zeros((8, 8)), out_size=(float("inf"), 4)),
    lambda: P.postprocess(np.zeros((8, 8)), out_size=(4.9, 4.9)),  # cut to 4 x 4
    lambda: P.postprocess(np.zeros((8, 8)), out_size=(True, True)),  # 1 x 1
    lambda: P.postprocess(np.array([["a"]])),
    lambda: P.tune_threshold([np.zeros((4, 4))], [np.zeros((4, 4))], candidates=None),
    lambda: P.tune_threshold(None, None),
    lambda: P.tune_threshold([np.zeros((4, 4))], [np.zeros((4, 4))], config={"threshold": 0.5}),
])
def test_public_helpers_refuse_empty_maps_and_bad_sizes_with_usage_errors(call):
    """Empty maps reached OpenCV's connected components, which crashed the interpreter (segfault with opencv 5.0) or
    raised cv2.error; a huge out_size ran out of memory inside OpenCV; a fractional radius or a None threshold gave
    TypeError."""
    with pytest.raises(UsageError):
        call()
