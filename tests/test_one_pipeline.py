"""There is one inference pipeline (issue 14): ``hemseg predict`` (Segmenter), ``hemseg-bench``, the export's parity
gates and ``hemseg eval`` all run :func:`hemseg.runtime.pipeline.run_batch`. Replacing that one function changes what
every one of them produces, and none of their modules preprocesses, infers or thresholds on its own."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from hemseg.runtime import pipeline

DATA = Path(__file__).resolve().parent / "data"
TINY = DATA / "tiny_64.onnx"  # logits = 10 * x[:, 0], threshold 0.4, 64 px


def _everything(monkeypatch) -> list[int]:
    """Replace the pipeline's one function with one that marks every pixel as lesion; returns the batch sizes seen."""
    real = pipeline.run_batch
    seen: list[int] = []

    def all_lesion(runner, spec, config, slices, gpu_preprocessor=None, return_prob=False):
        result = real(runner, spec, config, slices, gpu_preprocessor, return_prob)
        seen.append(len(slices))
        result.masks = [np.ones_like(m) for m in result.masks]
        return result

    monkeypatch.setattr(pipeline, "run_batch", all_lesion)
    return seen


def _blank(n: int = 3) -> list[np.ndarray]:
    return [np.full((40 + 4 * i, 48), 20, np.uint8) for i in range(n)]  # dark: tiny_64 finds no lesion here


def test_predict_and_bench_share_the_pipeline(monkeypatch):
    from hemseg.bench.pipeline import BenchPath
    from hemseg.runtime.backends.ort import OrtRunner
    from hemseg.runtime.segmenter import Segmenter

    seg = Segmenter.from_path(TINY, backend="ort-cpu", batch_size=8)
    path = BenchPath("ort", OrtRunner.from_path(TINY), seg.spec, seg.metadata.threshold)
    try:
        assert not any(p.mask.any() for p in seg(_blank()))
        assert not any(m.any() for m in path.run(_blank())[0])
        seen = _everything(monkeypatch)
        assert all(p.mask.all() for p in seg(_blank()))
        masks, stages = path.run(_blank())
        assert all(m.all() for m in masks) and set(stages) == set(pipeline.STAGES)
        assert seen == [3, 3]
    finally:
        seg.close()
        path.close()


def test_bench_measures_what_predict_runs_post_processing_included(tmp_path):
    import cv2

    from hemseg.bench.pipeline import BenchPath
    from hemseg.runtime.backends.ort import OrtRunner
    from hemseg.runtime.predict import PredictOptions, run_predict

    cv2.imwrite(str(tmp_path / "a.png"), _blank(1)[0])
    done = run_predict(TINY, [tmp_path / "a.png"], PredictOptions(out_dir=tmp_path / "out", backend="ort-cpu"))
    runner = OrtRunner.from_path(TINY)
    path = BenchPath("ort", runner, runner.metadata.preprocess, runner.metadata.threshold)
    try:
        assert path.postprocess.to_dict() == done.summary["postprocess"]  # predict's default config, clean-up too
        assert path.postprocess.fill_holes and path.postprocess.threshold == runner.metadata.threshold
    finally:
        path.close()


_SELF_MADE = {"preprocess", "preprocess_batch", "postprocess", "sigmoid", "infer", "infer_device"}


@pytest.mark.parametrize("module", ["hemseg.runtime.segmenter", "hemseg.bench.pipeline", "hemseg.bench.harness",
                                    "hemseg.train.evaluate", "hemseg.export.parity"])
def test_no_caller_runs_its_own_copy_of_the_pipeline(module):
    """These modules may call the pipeline, never preprocess / infer / post-process slices themselves."""
    if importlib.util.find_spec("torch") is None and module in ("hemseg.train.evaluate",):
        pytest.skip("needs torch")
    source = Path(importlib.util.find_spec(module).origin).read_text()
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", None)
             for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)}
    assert not calls & _SELF_MADE, (module, calls & _SELF_MADE)


@pytest.mark.torch
def test_eval_and_the_parity_gates_share_the_pipeline(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    from hemseg.export import calib, parity
    from hemseg.phantom import generate
    from hemseg.runtime.preprocess import PreprocessSpec
    from hemseg.train.checkpoint import save_checkpoint
    from hemseg.train.evaluate import evaluate_checkpoint
    from hemseg.train.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", base=4, depth=2).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-8.0)  # predicts nothing
    spec = PreprocessSpec(size=32).without(["nlm"])
    config = {"model": "unet", "model_kwargs": {"base": 4, "depth": 2}, "preprocess": spec.to_dict(),
              "image_size": 32, "threshold": 0.5, "labels": None, "data_fingerprint": None, "init": "random",
              "versions": {}, "epoch": 1, "metrics": {}, "hemseg_version": "test"}
    ckpt = save_checkpoint(tmp_path / "best.pt", model, config)
    data = tmp_path / "data"
    generate(data, per_category=2, seed=0, size_range=(40, 48), progress=False)
    verify = calib.phantom_verification(spec, 3)

    before = evaluate_checkpoint(ckpt, data, tmp_path / "e1", device="cpu", progress=False, n_overlays=0)
    run = parity.through_pipeline(parity.torch_runner(model), spec, verify.slices, 0.5)
    assert before["n_pred_empty"] == before["n_images"] and not any(m.any() for m in run.masks)

    seen = _everything(monkeypatch)
    after = evaluate_checkpoint(ckpt, data, tmp_path / "e2", device="cpu", progress=False, n_overlays=0)
    run = parity.through_pipeline(parity.torch_runner(model), spec, verify.slices, 0.5)
    assert after["n_pred_empty"] == 0 and after["lesions"]["recall"] == 1.0
    assert all(m.all() for m in run.masks)
    assert sum(seen) == after["n_images"] + 3
