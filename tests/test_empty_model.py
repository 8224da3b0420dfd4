"""A model that predicts nothing must not pass anything vacuously (issue 13).

The model is a tiny U-Net whose logits are all negative (about -6 +- 1): it predicts no lesion anywhere, like a
training run that collapsed to background. The export's gates must say the mask Dice is not measurable and decide
on the logits; the bench must not show its agreement as a bare 1.000; ``hemseg eval`` must warn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common")

from click.testing import CliRunner  # noqa: E402

from hemseg.runtime.preprocess import PreprocessSpec  # noqa: E402

pytestmark = pytest.mark.torch

SIZE = 32


def silence(model: torch.nn.Module, probe: np.ndarray, bias: float = -6.0) -> torch.nn.Module:
    """Make the last 1-channel convolution put every logit well below 0, varying with the image (std about 0.5 on
    ``probe``), as the logits of a model collapsed to background do."""
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1][-1]
    with torch.no_grad():
        head.bias.zero_()
        logits = model(torch.from_numpy(probe))
        head.weight.mul_(0.5 / float(logits.std()))
        head.bias.fill_(bias - 0.5 * float(logits.mean() / logits.std()))
    return model


@pytest.fixture(scope="module")
def empty_checkpoint(tmp_path_factory) -> Path:
    from hemseg.export.calib import phantom_calibration
    from hemseg.train.checkpoint import save_checkpoint
    from hemseg.train.models import build_model

    torch.manual_seed(0)
    spec = PreprocessSpec(size=SIZE).without(["nlm"])
    model = silence(build_model("unet", base=4, depth=2).eval(), phantom_calibration(spec, 4).images)
    config = {"model": "unet", "model_kwargs": {"base": 4, "depth": 2}, "preprocess": spec.to_dict(),
              "image_size": SIZE, "threshold": 0.5, "labels": None, "data_fingerprint": None, "init": "random",
              "versions": {}, "epoch": 1, "metrics": {}, "hemseg_version": "test",
              "threshold_tuning": {"metric": "pooled"}}  # a finished run's (an untuned one is warned of besides)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", model, config)


@pytest.fixture(scope="module")
def exported(empty_checkpoint, tmp_path_factory):
    from hemseg.cli.export_cmd import export

    out = tmp_path_factory.mktemp("export") / "out"
    result = CliRunner().invoke(export, [str(empty_checkpoint), "--out", str(out), "--format", "onnx,onnx-int8",
                                         "--calib-count", "4"])
    assert result.exit_code == 0, (result.output, result.exception)
    return out, result.output


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from hemseg.phantom import generate

    root = tmp_path_factory.mktemp("phantom") / "data"
    generate(root, per_category=2, seed=0, size_range=(40, 56), progress=False)  # 10 of 24 with a lesion
    return root


def test_the_model_really_predicts_nothing(empty_checkpoint):
    from hemseg.export.calib import phantom_verification
    from hemseg.train.checkpoint import load_checkpoint
    from hemseg.train.torch_runner import TorchRunner

    model, config = load_checkpoint(empty_checkpoint)
    logits = TorchRunner(model).infer(phantom_verification(PreprocessSpec.from_dict(config["preprocess"])).images)
    assert logits.max() < -3.0 and logits.std() > 0.1


def test_export_gates_say_not_measurable_and_decide_on_logits(exported):
    out, output = exported
    report = json.loads((out / "export_report.json").read_text())
    for fmt in ("onnx", "onnx-int8"):
        p = report["formats"][fmt]["parity"]
        assert report["formats"][fmt]["status"] == "passed"
        assert p["measurable"] is False and p["basis"] == "logits"
        assert p["reference_foreground_fraction"] == 0.0 and p["images_with_foreground"] == 0
        assert {"rel_l2_global", "rel_l2_max", "max_abs_diff", "sign_flips", "sign_flip_fraction"} <= set(p["logits"])
        assert {"dice", "dice_min_image", "lesion_presence_disagreements", "measurable_rule"} <= set(p["masks"])
        gated = {g["name"] for g in p["gates"]}
        assert "sign_flip_fraction" in gated and not gated & {"dice_vs_pytorch", "dice_vs_fp32"}
        assert p["decision"].startswith("passed on logits") and "mask Dice not measurable" in p["decision"]
        # no bare 1.0 a script takes for perfect agreement (two empty mask sets 'agree'; a QA finding of stop 51)
        dice_key = "dice_vs_pytorch" if fmt == "onnx" else "dice_vs_fp32"
        assert dice_key in p["metrics"] and p["metrics"][dice_key] is None
        assert p["masks"]["dice"] == 1.0 and p["masks"]["measurable"] is False  # the raw agreement, said unmeasurable
    assert "rel_l2_vs_fp32_global" in {g["name"] for g in report["formats"]["onnx-int8"]["parity"]["gates"]}
    assert "passed on mask Dice" not in output
    assert "onnx-int8: passed on logits" in output and "dice/fp32 not measurable" in output
    assert "rendered phantom images" in output  # no training data recorded: the phantom stands in, said so


def test_a_broken_reduced_precision_model_fails_on_logits_even_when_masks_agree():
    from hemseg.export import parity

    rng = np.random.default_rng(0)
    fp32 = (-6.0 + rng.normal(0, 1, (8, 1, 16, 16))).astype(np.float32)
    truth = np.zeros((8, 16, 16), np.uint8)
    broken = fp32 * 0.5  # still all negative: identical (empty) masks, Dice 1.0
    p = parity.verify_vs_fp32(broken, fp32, truth, 0.5, parity.INT8_MIN_DICE)
    assert p.metrics["dice_vs_fp32"] == 1.0 and not p.passed and p.basis == "logits"
    assert p.decision().startswith("FAILED on logits") and "rel_l2_vs_fp32_global" in p.decision()
    flipped = fp32.copy()
    flipped[0, 0, :2, :2] = 3.0  # four pixels cross the threshold
    p = parity.verify_vs_fp32(flipped, fp32, truth, 0.5, parity.INT8_MIN_DICE, max_rel_l2=1.0)
    assert not p.passed and [c.name for c in p.checks if not c.passed] == ["sign_flip_fraction"]
    ok = parity.verify_vs_fp32(fp32 + 0.01, fp32, truth, 0.5, parity.INT8_MIN_DICE)
    assert ok.passed and ok.decision().startswith("passed on logits")


def test_bench_agreement_is_flagged_not_measurable(exported, empty_checkpoint):
    from hemseg.bench.harness import BenchConfig, run_bench
    from hemseg.bench.inputs import phantom_pool, read_export_metadata
    from hemseg.bench.output import NOT_MEASURABLE, console_table
    from hemseg.bench.paths import BenchContext

    out, _ = exported
    metadata, _ = read_export_metadata(out)
    ctx = BenchContext(export_dir=out, metadata=metadata, checkpoint=empty_checkpoint)
    doc = run_bench(ctx, ["torch", "ort", "ort-int8"], BenchConfig(batch_sizes=(2,), iters=1, warmup=0),
                    phantom_pool(4))
    rows = {r["path"]: r for r in doc["results"]}
    assert set(rows) == {"torch", "ort", "ort-int8"}
    for r in rows.values():
        # not measurable: no number a script could take for agreement (two empty mask sets 'agree' with 1.0)
        assert r["dice_vs_torch"] is None and r["dice_measurable"] is False and r["dice_flag"] is True
        assert r["agreement_vs_torch"]["images_with_foreground"] == 0 and r["agreement_vs_torch"]["dice"] == 1.0
    table = console_table(doc)
    assert table.count(NOT_MEASURABLE) == 3 and "1.0000" not in table


def test_eval_warns_that_the_model_predicts_nothing(empty_checkpoint, phantom, tmp_path):
    from hemseg.cli import main

    out = tmp_path / "eval"
    res = CliRunner().invoke(main, ["eval", str(empty_checkpoint), str(phantom), "--out", str(out), "--device", "cpu",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "predicts no lesion on any of the 24 slices" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_pred_empty"] == 24 and len(summary["warnings"]) == 1
    les = summary["lesions"]
    assert les["recall"] == 0.0 and les["pred_lesions"] == 0 and les["gt_lesions"] > 0
    first = res.output.strip().splitlines()[-1]
    assert "pooled Dice 0.0000 (95 % CI 0.000-0.000), lesion recall 0.0000" in first
    assert "**Warning:** the model predicts no lesion" in (out / "per_category.md").read_text()
