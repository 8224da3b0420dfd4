"""nnU-Net's fold ensemble: ``hemseg-export RUN`` of a ``--folds K`` run writes OUT/fold_<k>/, and ``hemseg predict
OUT`` / ``hemseg eval OUT`` average the folds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from test_cases import flat_dataset
from test_ensemble import _variant

from hemseg.cli import main
from hemseg.errors import ModelError
from hemseg.runtime.model_file import fold_exports, resolve
from hemseg.runtime.preprocess import PreprocessSpec, preprocess

TINY = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"


def _folds(tmp_path: Path) -> Path:
    """EXP/fold_1 (tiny_64: logits 10 x) and EXP/fold_2 (the same with bias 3), as export folders."""
    exp = tmp_path / "exp"
    for k, model in ((1, TINY), (2, _variant(tmp_path, "shifted.onnx", bias=3.0, threshold=0.6))):
        (exp / f"fold_{k}").mkdir(parents=True)
        shutil.copy(model, exp / f"fold_{k}" / "model.onnx")
    return exp


def test_fold_exports_are_found_in_order_and_only_there(tmp_path):
    exp = _folds(tmp_path)
    (exp / "fold_10").mkdir()
    shutil.copy(TINY, exp / "fold_10" / "model.onnx")
    (exp / "notes").mkdir()
    assert [p.name for p in fold_exports(exp)] == ["fold_1", "fold_2", "fold_10"]
    assert fold_exports(exp / "fold_1") == [] and fold_exports(TINY) == []
    with pytest.raises(ModelError, match="holds the exports of 3 folds"):
        resolve(exp, "onnx")  # one model expected (the Python API's Segmenter): the error says what it is


def test_a_fold_without_a_model_is_an_error_not_a_smaller_ensemble(tmp_path):
    """fold_2's export failed its gate (its files removed) or was cut short: averaging fold_1 alone was silent."""
    exp = _folds(tmp_path)
    (exp / "fold_2" / "model.onnx").unlink()
    with pytest.raises(ModelError, match="fold_2 hold"):
        fold_exports(exp)
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.full((64, 64), 90, np.uint8))
    res = CliRunner().invoke(main, ["predict", str(exp), str(img), "-o", str(tmp_path / "o"), "--backend", "ort-cpu"])
    assert res.exit_code != 0 and isinstance(res.exception, ModelError) and "fold_2" in str(res.exception)
    assert not (tmp_path / "o" / "a_mask.png").exists()


def test_a_fold_export_cut_short_before_a_folds_folder_existed_is_refused(tmp_path):
    """hemseg-export of a 2-fold run interrupted after fold_1: fold_2/ was never made, and predict averaged fold_1
    alone without a word. The export lists its folds (folds.json) before the first."""
    exp = _folds(tmp_path)
    (exp / "folds.json").write_text(json.dumps({"folds": ["fold_1", "fold_2", "fold_3"]}))
    with pytest.raises(ModelError, match="fold_3 hold"):
        fold_exports(exp)


def test_predict_on_a_folder_of_folds_averages_them(tmp_path):
    exp = _folds(tmp_path)
    img = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (64, 1)).astype(np.uint8)  # a ramp: every logit once
    cv2.imwrite(str(tmp_path / "ramp.png"), img)
    res = CliRunner().invoke(main, ["predict", str(exp), str(tmp_path / "ramp.png"), "-o", str(tmp_path / "o"),
                                    "--backend", "ort-cpu", "--save-prob", "--no-postprocess"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert len(s["model"]["ensemble_with"]) == 1 and "fold_2" in s["model"]["ensemble_with"][0]
    assert s["model"]["threshold"] == pytest.approx(0.5)  # the mean of the folds' thresholds (0.4, 0.6)
    x0 = preprocess(img, PreprocessSpec(size=64))[0].astype(np.float64)
    expected = (1 / (1 + np.exp(-10 * x0)) + 1 / (1 + np.exp(-(10 * x0 + 3)))) / 2
    np.testing.assert_allclose(np.load(tmp_path / "o" / "ramp_prob.npy").astype(np.float64), expected, atol=2e-3)


@pytest.mark.torch
def test_a_fold_exported_from_another_checkpoint_than_listed_is_refused(tmp_path):
    """A K-fold export killed while it replaced an earlier one left fold_1 of the new run beside fold_2 of the old,
    and predict averaged them ('export_verification: passed'). folds.json lists each fold's checkpoint."""
    from hemseg.export.chain import artifact_checkpoint

    exp = _folds(tmp_path)
    recorded = {f"fold_{k}": artifact_checkpoint(exp / f"fold_{k}" / "model.onnx") for k in (1, 2)}
    (exp / "folds.json").write_text(json.dumps({"folds": ["fold_1", "fold_2"], "checkpoint_sha256": recorded}))
    assert [p.name for p in fold_exports(exp)] == ["fold_1", "fold_2"]
    listed = {**recorded, "fold_2": "f" * 64}
    (exp / "folds.json").write_text(json.dumps({"folds": ["fold_1", "fold_2"], "checkpoint_sha256": listed}))
    with pytest.raises(ModelError, match="lists for fold_2: the folder mixes the folds of two runs"):
        fold_exports(exp)
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.full((64, 64), 90, np.uint8))
    res = CliRunner().invoke(main, ["predict", str(exp), str(img), "-o", str(tmp_path / "o"), "--backend", "ort-cpu"])
    assert res.exit_code != 0 and isinstance(res.exception, ModelError)
    assert not (tmp_path / "o" / "a_mask.png").exists()


def test_export_of_a_cv_run_writes_every_fold_and_eval_averages_them(tmp_path):
    pytest.importorskip("onnx")
    from hemseg.cli.export_cmd import export
    from hemseg.train.trainer import run_training

    data = flat_dataset(tmp_path / "d", n=6)
    run_training(data, tmp_path / "cv", model="unet", unet_base=8, image_size=32, batch_size=4, steps=2,
                 val_every=2, folds=2, device="cpu", progress=False, weights="none")
    out = tmp_path / "exp"
    res = CliRunner().invoke(export, [str(tmp_path / "cv"), "--out", str(out), "--format", "onnx"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in fold_exports(out)] == ["fold_1", "fold_2"]
    listed = json.loads((out / "folds.json").read_text())
    assert listed["folds"] == ["fold_1", "fold_2"]
    from hemseg.runtime.io.hashing import sha256_file

    assert listed["checkpoint_sha256"] == {f"fold_{k}": sha256_file(tmp_path / "cv" / f"fold_{k}" / "best.pt")
                                           for k in (1, 2)}
    for k in (1, 2):
        report = json.loads((out / f"fold_{k}" / "export_report.json").read_text())
        assert report["formats"]["onnx"]["status"] == "passed"
    assert "2 fold exports" in res.output
    res = CliRunner().invoke(main, ["eval", str(out), str(data), "-o", str(tmp_path / "ev"), "--backend", "ort-cpu",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert json.dumps(summary).count("fold_2") >= 1  # the second fold took part
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "folds.json").write_text('["my notes"]')  # not a fold list: refused, not overwritten
    res = CliRunner().invoke(export, [str(tmp_path / "cv"), "--out", str(mine), "--format", "onnx"])
    assert res.exit_code != 0 and "is not a fold list hemseg-export wrote" in str(res.exception)
    assert (mine / "folds.json").read_text() == '["my notes"]' and sorted(p.name for p in mine.iterdir()) == ["folds.json"]
    shutil.rmtree(out)
    (tmp_path / "cv" / "fold_2" / "best.pt").unlink()  # a fold that never finished
    res = CliRunner().invoke(export, [str(tmp_path / "cv"), "--out", str(out), "--format", "onnx"])
    assert res.exit_code != 0 and "fold_2" in str(res.exception) and "best.pt" in str(res.exception)
    assert not out.exists()  # refused before anything was written
    # a single export over the fold export, interrupted: the folds stay usable (they were cleared at its start)
    from hemseg.export import onnx_fp32

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    shutil.rmtree(out, ignore_errors=True)
    (tmp_path / "cv" / "fold_2" / "best.pt").write_bytes((tmp_path / "cv" / "fold_1" / "best.pt").read_bytes())
    assert CliRunner().invoke(export, [str(tmp_path / "cv"), "--out", str(out), "--format", "onnx"]).exit_code == 0
    real = onnx_fp32.export_fp32
    onnx_fp32.export_fp32 = stopped
    try:
        res = CliRunner().invoke(export, [str(tmp_path / "cv" / "fold_1" / "best.pt"), "--out", str(out)])
    finally:
        onnx_fp32.export_fp32 = real
    assert res.exit_code != 0
    assert [p.name for p in fold_exports(out)] == ["fold_1", "fold_2"] and not (out / "model.onnx").exists()


def test_export_of_a_cv_run_cut_short_is_refused(tmp_path):
    """A --folds 3 run stopped in fold 2: hemseg-export exported fold 1 and fold 2's early best.pt as '2 fold
    exports' (exit 0), an ensemble of a finished fold and one stopped at its first validation, fold 3 dropped."""
    pytest.importorskip("torch")
    from hemseg.cli.export_cmd import export
    from hemseg.train.trainer import run_training

    data = flat_dataset(tmp_path / "d", n=6)
    run = tmp_path / "cv"
    run_training(data, run, model="unet", unet_base=8, image_size=32, batch_size=4, steps=2, val_every=2, folds=3,
                 device="cpu", progress=False, weights="none")
    (run / "fold_2" / "metrics.json").unlink()  # stopped after a validation: best.pt, no metrics.json
    shutil.rmtree(run / "fold_3")  # never began
    res = CliRunner().invoke(export, [str(run), "--out", str(tmp_path / "exp"), "--format", "onnx"])
    assert res.exit_code != 0
    assert "fold_2 did not finish (no metrics.json); fold_3 never began (config.json: 3 folds)" in str(res.exception)
    assert not (tmp_path / "exp").exists()
    if hasattr(os, "mkfifo"):  # a pipe at a fold's best.pt was reported as 'has no best.pt'
        (run / "fold_2" / "best.pt").unlink()
        os.mkfifo(run / "fold_2" / "best.pt")
        res = CliRunner().invoke(export, [str(run), "--out", str(tmp_path / "exp"), "--format", "onnx"])
        assert res.exit_code != 0
        assert "fold_2/best.pt is not a regular file (a pipe, socket or device)" in str(res.exception)
        assert not (tmp_path / "exp").exists()
