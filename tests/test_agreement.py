"""The one agreement convention (pooled Dice + lesion-presence disagreements + measurability), lesion-wise counts,
the one threshold rule, and how the bench table and the quickstart lines show an agreement that cannot be measured.
Torch-free."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hemseg.bench.output import NOT_MEASURABLE, console_table, markdown
from hemseg.bench.stats import summarize
from hemseg.errors import UsageError
from hemseg.runtime import metrics as M
from hemseg.runtime.postprocess import logit_threshold, postprocess, sigmoid, threshold_logits


def _masks(n: int, size: int = 20, fg: tuple = ()) -> np.ndarray:
    m = np.zeros((n, size, size), np.uint8)
    for i in fg:
        m[i, 5:10, 5:10] = 1
    return m


def test_agreement_is_pooled_and_counts_lesion_presence_disagreements():
    ref = _masks(4, fg=(0, 1, 2))
    got = ref.copy()
    got[0] = 0  # misses the lesion of image 0
    got[3, 0, 0] = 1  # one stray pixel on the lesion-free image 3
    a = M.agreement(got, ref)
    assert a["dice"] == pytest.approx(2 * 50 / (51 + 75))  # all pixels pooled, not a mean of per-image Dice
    assert a["dice_min_image"] == 0.0 and a["lesion_presence_disagreements"] == 2 and a["n_images"] == 4
    assert a["images_with_foreground"] == 3 and a["reference_foreground_fraction"] == pytest.approx(75 / 1600)
    assert a["measurable"] is True
    # lists of masks of different sizes (original image sizes) pool the same way
    b = M.agreement([got[0], np.ones((3, 7), np.uint8)], [ref[0], np.ones((3, 7), np.uint8)])
    assert b["dice"] == pytest.approx(2 * 21 / (21 + 46)) and b["n_images"] == 2
    with pytest.raises(UsageError, match="as many masks"):
        M.agreement(got, ref[:2])


def test_empty_reference_masks_are_not_measurable_and_the_rule_is_stated():
    empty = _masks(8)
    a = M.agreement(empty, empty)
    assert a["dice"] == 1.0 and a["measurable"] is False and a["images_with_foreground"] == 0
    assert ">= 3 images" in a["measurable_rule"] and "0.05%" in a["measurable_rule"]
    assert "foreground in 0 of 8 images" in M.describe_unmeasurable(a)
    # foreground in only two images: still not measurable, whatever the Dice
    assert M.agreement(_masks(8, fg=(0, 1)), _masks(8, fg=(0, 1)))["measurable"] is False
    assert M.agreement(_masks(8, fg=(0, 1, 2)), _masks(8, fg=(0, 1, 2)))["measurable"] is True
    # three images but a tiny share of the pixels: not measurable either
    tiny = np.zeros((3, 200, 200), np.uint8)
    tiny[:, 0, 0] = 1
    assert M.agreement(tiny, tiny)["measurable"] is False
    assert M.agreement(tiny, tiny, min_fraction=0.0)["measurable"] is True


def test_lesion_counts_follow_the_overlap_rule():
    gt = np.zeros((40, 40), np.uint8)
    gt[2:12, 2:12] = 1  # lesion A, 100 px
    gt[20:30, 20:30] = 1  # lesion B, 100 px
    pred = np.zeros_like(gt)
    pred[2:12, 2:4] = 1  # covers 20 % of A: detected
    pred[20, 20] = 1  # covers 1 % of B: not detected (and that 1-px component lies fully inside B: a true one)
    pred[35:38, 35:38] = 1  # a false-positive component
    c = M.lesion_counts(pred, gt)
    assert c == {"gt_lesions": 2, "gt_lesions_detected": 1, "pred_lesions": 3, "pred_lesions_true": 2}
    empty_gt = np.zeros_like(gt)
    records = [c, M.lesion_counts(pred, empty_gt), M.lesion_counts(np.zeros_like(gt), empty_gt)]
    s = M.lesion_summary(records)
    assert s["recall"] == pytest.approx(0.5) and s["precision"] == pytest.approx(2 / 6)
    assert s["lesion_free_slices"] == 2 and s["fp_components_on_lesion_free_slices"] == 3
    assert s["fp_components_per_lesion_free_slice"] == pytest.approx(1.5)
    assert "10%" in s["rule"] and s["false_positive_components"] == 4
    nothing = M.lesion_summary([M.lesion_counts(np.zeros_like(gt), gt)])
    assert nothing["recall"] == 0.0 and math.isnan(nothing["precision"]) and nothing["slices_with_prediction"] == 0


def test_one_threshold_rule_for_logits():
    x = np.array([-30.0, -0.01, 0.0, 0.01, 0.84, 0.85, 30.0], np.float32)
    for t in (0.0, 0.3, 0.5, 0.7, 1.0):
        assert np.array_equal(threshold_logits(x, t), sigmoid(x) > t)
    assert logit_threshold(0.5) == 0.0 and logit_threshold(1.0) == math.inf and logit_threshold(0.0) == -math.inf
    assert np.array_equal(threshold_logits(x, 0.7), x > math.log(0.7 / 0.3))
    # postprocess thresholds logits with the same rule
    grid = np.linspace(-2, 2, 16, dtype=np.float32).reshape(4, 4)
    from hemseg.runtime.postprocess import PostprocessConfig

    assert np.array_equal(postprocess(grid, PostprocessConfig(threshold=0.6), logits=True),
                          threshold_logits(grid, 0.6).astype(np.uint8))
    with pytest.raises(UsageError):
        logit_threshold(1.5)


def _bench_doc(measurable: bool) -> dict:
    stage = summarize([1.0, 2.0])
    row = {"path": "ort-int8", "batch_size": 1, "end_to_end_ms": summarize([3.0, 4.0]),
           "stages_ms": {s: stage for s in ("preprocess", "copy_in", "infer", "copy_out", "postprocess")},
           "throughput": 250.0, "speedup_vs_torch": 2.0, "dice_vs_torch": 1.0, "dice_measurable": measurable,
           "dice_flag": not measurable, "peak_rss_mb": 300.0, "achieved_gflops": 10.0}
    return {"machine": {"date": "2026-11-24T00:00:00+00:00", "cpu": "Test CPU", "cores": 2, "gpu": None,
                        "libraries": {}},
            "model": {"model": "unet", "image_size": 32}, "config": {"inputs": "3 phantom slices"},
            "results": [row], "skipped": []}


def test_bench_tables_never_show_an_unmeasurable_agreement_as_a_bare_number():
    for text in (console_table(_bench_doc(False)), markdown(_bench_doc(False))):
        assert NOT_MEASURABLE in text and "1.0000" not in text
    assert "1.0000" in console_table(_bench_doc(True)) and NOT_MEASURABLE not in console_table(_bench_doc(True))


def test_quickstart_lines_lead_with_pooled_dice_and_say_what_cannot_be_measured(tmp_path):
    from hemseg.cli.quickstart_cmd import _summarize

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"epoch": 1, "dice": 0.1, "init": "random"}))
    for sub in ("eval", "export", "predict"):
        (tmp_path / sub).mkdir()
    warning = "the model predicts no lesion on any of the 24 slices: ..."
    (tmp_path / "eval" / "summary.json").write_text(json.dumps({
        "dice": 0.542, "dice_global": 0.0, "n_images": 24, "n_gt_empty": 13, "hd95": None, "iou": 0.542,
        "lesions": {"recall": 0.0, "gt_lesions_detected": 0, "gt_lesions": 14, "precision": None},
        "warnings": [warning]}))
    logit_gate = {"basis": "logits", "measurable": False, "n_images": 8, "masks": {"images_with_foreground": 0},
                  "logits": {"rel_l2_global": 0.004, "sign_flips": 0}}
    (tmp_path / "export" / "export_report.json").write_text(json.dumps({"formats": {
        "onnx": {"status": "passed", "parity": {**logit_gate, "reference": "pytorch"}},
        "onnx-int8": {"status": "passed", "parity": logit_gate}}}))
    (tmp_path / "bench.json").write_text(json.dumps({"results": [
        {"path": "ort-int8", "batch_size": 1, "speedup_vs_torch": 1.1, "dice_vs_torch": 1.0,
         "dice_measurable": False}]}))
    s = _summarize(tmp_path, tmp_path / "eval", tmp_path / "export", tmp_path / "predict",
                   {"epochs": 1, "per_category": 2, "image_size": 64}, False, [], 60.0)
    lines = s["lines"]
    assert len(lines) == 5
    assert lines[1].startswith("held-out phantom: pooled Dice 0.000, lesion recall 0.000 (0 of 14 lesions)")
    assert "ONNX FP32 passed on logits, INT8 passed on logits" in lines[2]
    assert "mask Dice not measurable" in lines[2] and "passed on mask Dice" not in " ".join(lines)
    assert "mask agreement not measurable" in lines[3] and "1.000" not in lines[3]
    assert s["warnings"][0] == warning and "could not judge onnx, onnx-int8" in s["warnings"][1]
