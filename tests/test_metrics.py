"""Tests of hemseg.runtime.metrics: hand-computed cases and the empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hemseg.errors import UsageError
from hemseg.runtime import metrics as M


def _ref_directed(src: np.ndarray, dst: np.ndarray, spacing=(1.0, 1.0)) -> np.ndarray:
    """Independent reference: python loop over boundary pixels, nearest boundary pixel of the other mask."""
    a = np.argwhere(M.boundary(src)) * np.asarray(spacing)
    b = np.argwhere(M.boundary(dst)) * np.asarray(spacing)
    return np.array([min(math.hypot(*(p - q)) for q in b) for p in a])


def _four_by_four():
    pred = np.array([[1, 1, 0, 0],
                     [1, 1, 0, 0],
                     [0, 0, 0, 0],
                     [0, 0, 0, 0]], np.uint8)
    gt = np.array([[0, 1, 1, 0],
                   [0, 1, 1, 0],
                   [0, 0, 0, 0],
                   [0, 0, 0, 0]], np.uint8)
    return pred, gt


def test_confusion_and_ratios_hand_computed():
    pred, gt = _four_by_four()
    assert M.confusion(pred, gt) == (2, 2, 2, 10)
    m = M.compute_metrics(pred, gt)
    assert m["tp"] == 2 and m["fp"] == 2 and m["fn"] == 2 and m["tn"] == 10
    assert m["dice"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(2 / 6)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(12 / 16)
    assert m["specificity"] == pytest.approx(10 / 12)
    assert M.dice_score(pred, gt) == pytest.approx(0.5)


def test_nonzero_values_are_foreground_and_bool_accepted():
    pred, gt = _four_by_four()
    assert M.confusion(pred * 255, gt.astype(bool)) == (2, 2, 2, 10)


def test_asymmetric_precision_recall():
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 1  # 4 px
    pred = np.zeros((4, 4), np.uint8)
    pred[0, 0] = 1  # 1 px, inside
    m = M.compute_metrics(pred, gt)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 0, 3, 12)
    assert m["precision"] == 1.0
    assert m["recall"] == pytest.approx(0.25)
    assert m["dice"] == pytest.approx(2 / 5)


def test_shifted_square_surface_distances_hand_computed():
    # 3x3 squares, the second shifted one column right. Boundary (cross erosion) = the 8 ring pixels.
    a = np.zeros((6, 7), np.uint8)
    a[1:4, 1:4] = 1
    b = np.zeros((6, 7), np.uint8)
    b[1:4, 2:5] = 1
    assert M.boundary(a).sum() == 8
    d_ab, d_ba = M.surface_distances(a, b)
    assert sorted(d_ab.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert sorted(d_ba.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    m = M.compute_metrics(a, b)
    assert m["hd95"] == pytest.approx(1.0)
    assert m["assd"] == pytest.approx(0.5)
    assert m["dice"] == pytest.approx(12 / 18)
    assert m["iou"] == pytest.approx(0.5)


def test_single_pixels_distance_and_anisotropic_spacing():
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[2, 2] = 1
    b[2, 7] = 1  # 5 columns apart
    m = M.compute_metrics(a, b, spacing=(2.0, 0.5))
    assert m["hd95"] == pytest.approx(5.0) and m["assd"] == pytest.approx(5.0)
    assert m["hd95_mm"] == pytest.approx(2.5) and m["assd_mm"] == pytest.approx(2.5)
    b2 = np.zeros((10, 10), np.uint8)
    b2[7, 2] = 1  # 5 rows apart
    m = M.compute_metrics(a, b2, spacing=(2.0, 0.5))
    assert m["hd95_mm"] == pytest.approx(10.0)
    m = M.compute_metrics(a, b2, spacing=(0.7, 0.7))  # isotropic path
    assert m["hd95_mm"] == pytest.approx(3.5)


def test_big_square_vs_shifted_square_hausdorff():
    # 10x10 squares shifted 3 px right: every boundary distance is <= 3 and the left/right edges are exactly 3 away.
    a = np.zeros((30, 30), np.uint8)
    a[5:15, 5:15] = 1
    b = np.zeros((30, 30), np.uint8)
    b[5:15, 8:18] = 1
    d_ab, d_ba = M.surface_distances(a, b)
    assert d_ab.max() == pytest.approx(3.0) and d_ba.max() == pytest.approx(3.0)
    np.testing.assert_allclose(np.sort(d_ab), np.sort(_ref_directed(a, b)), atol=1e-5)
    m = M.compute_metrics(a, b)
    expected_hd95 = max(np.percentile(_ref_directed(a, b), 95), np.percentile(_ref_directed(b, a), 95))
    assert m["hd95"] == pytest.approx(expected_hd95, abs=1e-5)
    assert m["hd95"] == pytest.approx(3.0)


def test_random_masks_match_reference_isotropic_and_anisotropic():
    rng = np.random.default_rng(0)
    a = (rng.random((24, 20)) > 0.7).astype(np.uint8)
    b = (rng.random((24, 20)) > 0.6).astype(np.uint8)
    d_ab, d_ba = M.surface_distances(a, b)
    np.testing.assert_allclose(np.sort(d_ab), np.sort(_ref_directed(a, b)), atol=1e-4)
    np.testing.assert_allclose(np.sort(d_ba), np.sort(_ref_directed(b, a)), atol=1e-4)
    sp = (1.3, 0.4)
    d_ab, d_ba = M.surface_distances(a, b, spacing=sp)
    np.testing.assert_allclose(np.sort(d_ab), np.sort(_ref_directed(a, b, sp)), atol=1e-9)
    np.testing.assert_allclose(np.sort(d_ba), np.sort(_ref_directed(b, a, sp)), atol=1e-9)


def test_anisotropic_path_matches_edt_with_chunking(monkeypatch):
    rng = np.random.default_rng(1)
    a = (rng.random((40, 50)) > 0.5).astype(np.uint8)
    b = (rng.random((40, 50)) > 0.9).astype(np.uint8)
    b[:, 7] = 0  # a column without any target pixel
    ba, bb = M.boundary(a), M.boundary(b)
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 97)  # force many small chunks
    sep = M._directed_anisotropic(ba, bb, (1.0, 1.0))
    np.testing.assert_allclose(sep, M._directed_edt(ba, bb, 1.0), atol=1e-4)
    sp = (0.3, 1.7)
    np.testing.assert_allclose(M._directed_anisotropic(ba, bb, sp), _ref_directed(a, b, sp), atol=1e-9)


def test_boundary_at_image_edge():
    full = np.ones((4, 5), np.uint8)
    bd = M.boundary(full)
    # pixels outside the image are background: the outer ring is boundary, the 2x3 interior is not
    assert bd.sum() == 4 * 5 - 2 * 3
    assert not bd[1:3, 1:4].any()


def test_both_empty_convention():
    z = np.zeros((8, 8), np.uint8)
    m = M.compute_metrics(z, z, spacing=(1.0, 2.0))
    for k in ("dice", "iou", "precision", "recall", "accuracy", "specificity"):
        assert m[k] == 1.0, k
    assert m["hd95"] == 0.0 and m["assd"] == 0.0 and m["hd95_mm"] == 0.0 and m["assd_mm"] == 0.0
    assert M.dice_score(z, z) == 1.0


def test_prediction_empty_gt_not_convention():
    gt = np.zeros((8, 8), np.uint8)
    gt[2:4, 2:4] = 1
    m = M.compute_metrics(np.zeros_like(gt), gt, spacing=(1.0, 1.0))
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and m["recall"] == 0.0
    assert m["precision"] == 0.0  # undefined 0/0 -> 0 when exactly one mask is empty
    assert m["specificity"] == 1.0
    assert m["accuracy"] == pytest.approx(60 / 64)
    assert math.isnan(m["hd95"]) and math.isnan(m["assd"])
    assert math.isnan(m["hd95_mm"]) and math.isnan(m["assd_mm"])


def test_gt_empty_prediction_not_convention():
    pred = np.zeros((8, 8), np.uint8)
    pred[0, 0] = 1
    m = M.compute_metrics(pred, np.zeros_like(pred))
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and m["precision"] == 0.0
    assert m["recall"] == 0.0  # undefined 0/0 -> 0 when exactly one mask is empty
    assert m["specificity"] == pytest.approx(63 / 64)
    assert math.isnan(m["hd95"]) and math.isnan(m["assd"])


def test_gt_all_foreground_specificity():
    gt = np.ones((3, 3), np.uint8)
    m = M.compute_metrics(gt, gt)
    assert m["specificity"] == 1.0 and m["dice"] == 1.0 and m["hd95"] == 0.0


def test_identical_masks():
    a = np.zeros((16, 16), np.uint8)
    a[3:9, 4:12] = 1
    m = M.compute_metrics(a, a)
    assert m["dice"] == 1.0 and m["iou"] == 1.0 and m["hd95"] == 0.0 and m["assd"] == 0.0


def test_shape_mismatch_and_bad_spacing_raise():
    with pytest.raises(UsageError, match="differ in shape"):
        M.compute_metrics(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(UsageError, match="2D"):
        M.compute_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(UsageError, match="spacing"):
        M.compute_metrics(np.ones((4, 4)), np.ones((4, 4)), spacing=(1.0, -1.0))
    with pytest.raises(UsageError, match="spacing"):
        M.compute_metrics(np.ones((4, 4)), np.ones((4, 4)), spacing=1.0)
    with pytest.raises(UsageError):
        M.dice_score([1, 0], np.array([1, 0]))


def test_dice_score_nd():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2] = True  # 8
    b[0, :1] = True  # 4, inside
    assert M.dice_score(a, b) == pytest.approx(8 / 12)


def test_aggregate_skips_nan_and_counts():
    recs = [
        {"dice": 1.0, "hd95": 2.0, "tp": 1, "fp": 0, "fn": 0, "tn": 3},
        {"dice": 0.0, "hd95": float("nan"), "tp": 0, "fp": 0, "fn": 4, "tn": 0},
        {"dice": 0.5, "hd95": 4.0, "tp": 1, "fp": 1, "fn": 1, "tn": 1},
    ]
    agg = M.aggregate(recs)
    assert agg["n_images"] == 3
    assert agg["dice"] == pytest.approx(0.5)
    assert agg["dice_std"] == pytest.approx(np.std([1.0, 0.0, 0.5]))
    assert agg["hd95"] == pytest.approx(3.0)
    assert agg["hd95_std"] == pytest.approx(1.0)
    assert agg["n_nan"] == {"dice": 0, "hd95": 1}
    assert "tp" not in agg and "tp_std" not in agg
    assert agg["dice_global"] == pytest.approx(4 / (4 + 1 + 5))


def test_aggregate_all_nan_and_explicit_keys():
    agg = M.aggregate([{"hd95": float("nan"), "dice": 0.0}], keys=["hd95"])
    assert math.isnan(agg["hd95"]) and math.isnan(agg["hd95_std"])
    assert agg["n_nan"] == {"hd95": 1}
    assert "dice" not in agg and "dice_global" not in agg


def test_aggregate_of_one_value_has_no_spread():
    """One image (or one image whose HD95 is defined): the std read 0.0, a measured agreement; now NaN (null)."""
    agg = M.aggregate([{"dice": 0.7, "hd95": 2.0}, {"dice": 0.5, "hd95": float("nan")}])
    assert agg["dice_std"] == pytest.approx(0.1) and math.isnan(agg["hd95_std"]) and agg["hd95"] == 2.0
    agg = M.aggregate([{"dice": 0.7}])
    assert agg["dice"] == 0.7 and math.isnan(agg["dice_std"])
    with pytest.raises(UsageError):
        M.aggregate([])


def test_aggregate_of_compute_metrics():
    a = np.zeros((8, 8), np.uint8)
    a[2:5, 2:5] = 1
    recs = [M.compute_metrics(a, a), M.compute_metrics(np.zeros_like(a), a)]
    agg = M.aggregate(recs)
    assert set(M.METRIC_KEYS) <= set(agg)
    assert agg["dice"] == pytest.approx(0.5)
    assert agg["hd95"] == 0.0 and agg["n_nan"]["hd95"] == 1


def test_mean_hd95_skips_lesion_free_references_so_missing_every_lesion_is_not_perfect():
    """Both-empty slices score HD95 0 each; averaged in, a model that misses every lesion (NaN there) got a mean
    HD95 of 0, the best possible. The mean is over slices whose reference has a lesion."""
    lesion = np.zeros((16, 16), np.uint8)
    lesion[4:8, 4:8] = 1
    empty = np.zeros_like(lesion)
    missed = [M.compute_metrics(empty, lesion), M.compute_metrics(empty, empty), M.compute_metrics(empty, empty)]
    agg = M.aggregate(missed)
    assert math.isnan(agg["hd95"]) and agg["n_nan"]["hd95"] == 3
    shifted = np.roll(lesion, 2, axis=1)
    found = [M.compute_metrics(shifted, lesion), M.compute_metrics(empty, empty)]
    assert M.aggregate(found)["hd95"] == pytest.approx(M.compute_metrics(shifted, lesion)["hd95"])
    assert M.compute_metrics(empty, empty)["hd95"] == 0.0  # per image the convention stands


def test_isotropic_surface_distances_are_exact_roots_in_float64():
    """OpenCV's exact EDT is computed in float32, whose last bit varied between runs (the K-Means baseline's assd
    differed in the 9th digit between identical runs, QA): the distances are now the float64 roots of the integer
    squared distances, equal to a brute-force reference bit for bit, so identical runs give identical numbers."""
    rng = np.random.default_rng(3)
    a = np.zeros((180, 260), np.uint8)
    b = np.zeros_like(a)
    for mask, n in ((a, 3), (b, 4)):  # a few far-apart blobs: distances up to ~300 px, where float32 rounds
        for r, c in rng.integers((5, 5), (175, 255), size=(n, 2)):
            mask[max(r - 6, 0):r + 6, max(c - 9, 0):c + 9] = 1
    ba, bb = np.argwhere(M.boundary(a)), np.argwhere(M.boundary(b))

    def ref(src, dst, scale=1.0):
        d2 = ((src[:, None, :] - dst[None, :, :]) ** 2).sum(axis=2).min(axis=1)
        return np.sqrt(d2.astype(np.float64)) * scale

    d_ab, d_ba = M.surface_distances(a, b)
    assert d_ab.max() > 100
    assert np.array_equal(d_ab, ref(ba, bb)) and np.array_equal(d_ba, ref(bb, ba))
    d_ab, _ = M.surface_distances(a, b, spacing=(0.7, 0.7))
    assert np.array_equal(d_ab, ref(ba, bb, 0.7))
