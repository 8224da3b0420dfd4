"""hemseg quickstart at a tiny setting: the whole chain runs and leaves every artefact it announces.

At this setting (1 epoch) the model is no segmenter, so the main test makes that explicit: every step after training
loads a checkpoint whose head outputs -8 everywhere (a model that predicts nothing), and the test asserts what the
chain reports about it: the warnings, the gates judged on the logits, no "passed on mask Dice" claim, and an
agreement in the bench that is flagged as not measurable rather than shown as 1.000.
"""

from __future__ import annotations

import json

import cv2
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _predicting_nothing(monkeypatch) -> None:
    """Every later load of a checkpoint returns a model whose head outputs -8 everywhere."""
    import torch

    from hemseg.train import checkpoint

    real = checkpoint.load_checkpoint

    def load_empty(path):
        model, config = real(path)
        head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1][-1]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-8.0)
        return model, config

    monkeypatch.setattr(checkpoint, "load_checkpoint", load_empty)  # hemseg.train.evaluate imports it on use


def test_quickstart_tiny(tmp_path, monkeypatch):
    from hemseg.cli import main

    _predicting_nothing(monkeypatch)
    out = tmp_path / "qs"
    res = CliRunner().invoke(main, ["quickstart", "--out", str(out), "--device", "cpu", "--per-category", "2",
                                    "--heldout-per-category", "2", "--image-size", "64", "--epochs", "1",
                                    "--calib-count", "4", "--bench-seconds", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for rel in ("data/manifest.json", "data/preview.png", "run/best.pt", "run/metrics.json", "eval/summary.json",
                "eval_int8/summary.json",
                "export/model.onnx", "export/model_int8.onnx", "export/export_report.json", "predict/summary.json",
                "bench.json", "bench.md", "bench.png", "quickstart.json"):
        assert (out / rel).is_file(), rel
    summary = json.loads((out / "quickstart.json").read_text())
    assert len(summary["lines"]) == 5 and all(line in res.output for line in summary["lines"])
    assert [s["exit_code"] for s in summary["steps"]] == [0] * 8
    # the INT8 engine that ships is scored on the held-out masks too (ONNX Runtime), next to the PyTorch model
    assert summary["steps"][5]["command"].startswith("hemseg eval ") and "model_int8.onnx" in summary["steps"][5]["command"]
    assert "held-out pooled Dice of the INT8 engine 0.000, the PyTorch model's 0.000" in summary["lines"][2]
    assert json.loads((out / "eval_int8" / "summary.json").read_text())["backend"] == "ort-cpu"
    # CPU defaults: the small U-Net; the 128 px patch becomes whole slices (--patch 0, not train's --patch auto)
    # when the slices are smaller than the patch
    train_cmd = summary["steps"][2]["command"]
    assert "--model unet --unet-base 16" in train_cmd and "--patch 0 " in train_cmd, train_cmd
    assert summary["lines"][0].startswith("training U-Net:") and "CLAHE only" in summary["lines"][0]
    # CLAHE only by default: trained that way, and the exported model carries the same chain into deployment
    assert "--skip nlm --skip bilateral" in train_cmd
    # CPU defaults train with blob loss and an EMA of the weights, and say so
    assert "--dice blob --ema" in train_cmd and "blob Dice, EMA" in summary["lines"][0]
    saved = json.loads((out / "run" / "config.json").read_text())
    assert saved["recipe"]["dice"] == "blob" and saved["ema"], saved
    trained = saved["preprocess"]
    assert (trained["clahe"], trained["nlm"], trained["bilateral"]) == (True, False, False)
    import onnx

    from hemseg.runtime.model_file import metadata_from_props

    props = {p.key: p.value for p in onnx.load(str(out / "export" / "model.onnx")).metadata_props}
    deployed = metadata_from_props(props, out / "export" / "model.onnx").preprocess.to_dict()
    assert {k: deployed[k] for k in ("clahe", "nlm", "bilateral")} == {"clahe": True, "nlm": False, "bilateral": False}
    assert deployed == {**trained, "version": deployed["version"]}
    # what the chain says about a model that predicts nothing
    assert "warning: the model predicts no lesion on any of the 24 slices" in res.output
    assert "passed on mask Dice" not in res.output and "passed on mask Dice" not in json.dumps(summary)
    report = json.loads((out / "export" / "export_report.json").read_text())
    for fmt in ("onnx", "onnx-int8"):
        p = report["formats"][fmt]["parity"]
        assert p["measurable"] is False and p["basis"] == "logits" and p["decision"].startswith("passed on logits")
    assert "INT8 passed on logits" in summary["lines"][2] and "mask Dice not measurable" in summary["lines"][2]
    assert summary["lines"][1].startswith("held-out phantom: pooled Dice 0.000 (95 % CI 0.000-0.000), lesion recall 0.000")
    assert "mask agreement not measurable" in summary["lines"][3]
    assert len(summary["warnings"]) == 2 and all(f"warning: {w}" in res.output for w in summary["warnings"])
    bench = json.loads((out / "bench.json").read_text())
    assert {r["path"] for r in bench["results"]} == {"torch", "ort", "ort-int8"}
    assert all(r["dice_vs_torch"] is None and r["dice_measurable"] is False and r["dice_flag"]
               for r in bench["results"])
    assert "1.0000" not in (out / "bench.md").read_text()
    overlays = list((out / "predict").glob("*_overlay.png"))
    assert len(overlays) == 24 and cv2.imread(str(overlays[0])) is not None
    # the quickstart refuses to write into a folder that already holds something
    again = CliRunner().invoke(main, ["quickstart", "--out", str(out)])
    assert again.exit_code != 0 and "not empty" in str(again.exception)


def test_speedup_text_has_no_stray_x_when_a_path_was_not_measured():
    from hemseg.cli.quickstart_cmd import _times

    assert _times(1.234) == "1.23x" and _times(None) == "n/a"


def test_quickstart_goes_on_with_fp32_when_int8_misses_its_gate(tmp_path, monkeypatch):
    from hemseg.cli import main
    from hemseg.export import parity

    monkeypatch.setattr(parity, "INT8_MIN_DICE", 1.01)  # an impossible INT8 gate
    # a relative --out whose name starts with a dash: passed on to the steps, it read as an option ('-q')
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "-qs"
    res = CliRunner().invoke(main, ["quickstart", "--out=-qs", "--device", "cpu", "--per-category", "2",
                                    "--heldout-per-category", "2", "--image-size", "64", "--epochs", "1",
                                    "--calib-count", "4", "--bench-seconds", "0", "--paper-filters"],
                           catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (out / "export" / "model.onnx").is_file() and not (out / "export" / "model_int8.onnx").exists()
    summary = json.loads((out / "quickstart.json").read_text())
    # --paper-filters: the paper's whole chain
    assert "--skip" not in summary["steps"][2]["command"] and "CLAHE + NLM + bilateral" in summary["lines"][0]
    trained = json.loads((out / "run" / "config.json").read_text())["preprocess"]
    assert (trained["clahe"], trained["nlm"], trained["bilateral"]) == (True, True, True)
    export_step = summary["steps"][4]
    assert export_step["step"].startswith("5/8") and export_step["exit_code"] == 1
    assert export_step["command"].startswith("hemseg-export ") and export_step["seconds"] > 0
    assert "onnx-int8: missed parity gate(s)" in export_step["error"]
    assert [s["exit_code"] for s in summary["steps"]] == [0, 0, 0, 0, 1, 0, 0]
    assert "INT8 failed" in summary["lines"][2] and "ORT INT8 n/a vs" in summary["lines"][3]
    assert "continuing with the verified FP32 model only" in res.output
    bench = json.loads((out / "bench.json").read_text())
    assert {r["path"] for r in bench["results"]} == {"torch", "ort"}
    assert [s["path"] for s in bench["skipped"]] == ["ort-int8"]


def test_quickstart_refuses_a_bad_patch_or_one_image_per_category_before_making_anything(tmp_path):
    """--patch 40 failed at step 3 of 8, after both phantoms, and the half-made --out blocked a rerun; with one
    image per category every training image is lesion-free (the first of each category always is)."""
    from hemseg.cli import main

    out = tmp_path / "q"
    res = CliRunner().invoke(main, ["quickstart", "--out", str(out), "--device", "cpu", "--patch", "40",
                                    "--image-size", "64", "--steps", "1"])
    assert res.exit_code != 0 and "--patch must be" in str(res.exception) and not out.exists()
    res = CliRunner().invoke(main, ["quickstart", "--out", str(out), "--device", "cpu", "--per-category", "1"])
    assert res.exit_code == 2 and "--per-category" in res.output and not out.exists()
    # a held-out phantom of one per category is lesion-free throughout: its summary led with pooled Dice 1.000
    res = CliRunner().invoke(main, ["quickstart", "--out", str(out), "--device", "cpu", "--heldout-per-category",
                                    "1"])
    assert res.exit_code == 2 and "--heldout-per-category" in res.output and not out.exists()
