"""hemseg-export verifies a model on its own validation split (issue 13): the checkpoint records the dataset folder
and the split; without --calib the export uses them, slices with lesion pixels first; the phantom is only the
fallback, with a warning that names it; --calib DATA still overrides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A U-Net (base 8) trained 1 epoch at 32 px on 48 phantom images: (data, best.pt)."""
    from hemseg.phantom import generate
    from hemseg.train.trainer import run_training

    data = tmp_path_factory.mktemp("phantom") / "data"
    generate(data, per_category=4, seed=0, size_range=(40, 56), progress=False)
    run = tmp_path_factory.mktemp("run") / "run"
    run_training(data, run, model="unet", unet_base=8, image_size=32, batch_size=8, device="cpu", progress=False,
                 weights="none", epochs=1, no_preprocess=True)
    return data, run / "best.pt"


def _export(ckpt: Path, out: Path, *args: str):
    from hemseg.cli.export_cmd import export

    return CliRunner().invoke(export, [str(ckpt), "--out", str(out), "--format", "onnx", *args])


def test_checkpoint_records_the_data_folder_and_the_split(trained):
    from hemseg.train.checkpoint import read_checkpoint

    data, ckpt = trained
    config = read_checkpoint(ckpt)["config"]
    assert Path(config["data"]) == data.resolve()
    assert config["val_stems"] and config["train_stems"] and not set(config["val_stems"]) & set(config["train_stems"])


def test_export_verifies_on_the_validation_split_without_calib(trained, tmp_path):
    from hemseg.runtime.dataset import discover, load_pair
    from hemseg.train.checkpoint import read_checkpoint

    data, ckpt = trained
    res = _export(ckpt, tmp_path / "out")
    assert res.exit_code == 0, (res.output, res.exception)
    assert "rendered phantom" not in res.output
    report = json.loads((tmp_path / "out" / "export_report.json").read_text())
    v = report["verification_data"]
    val = read_checkpoint(ckpt)["config"]["val_stems"]
    assert v["source"] == "validation split" and str(data.resolve()) in v["description"]
    assert set(v["ids"]) <= set(val) and v["n_images"] == min(8, len(val))
    has_lesion = {s.stem: bool(load_pair(s)[1].any()) for s in discover(data).samples}
    flags = [has_lesion[i] for i in v["ids"]]
    assert v["foreground_images"] == sum(flags) > 0
    assert flags == sorted(flags, reverse=True)  # slices with a lesion first
    assert sum(flags) == min(sum(has_lesion[s] for s in val), v["n_images"])


def test_calibration_comes_from_the_same_data_and_never_from_verification_files(trained):
    from hemseg.export.calib import training_split_sets
    from hemseg.train.checkpoint import read_checkpoint, spec_of

    _, ckpt = trained
    config = read_checkpoint(ckpt)["config"]
    calib, verify = training_split_sets(config, spec_of(config), calib_count=10)
    assert len(calib) == 10 and not set(calib.ids) & set(verify.ids)
    assert set(calib.ids) <= set(config["val_stems"]) | set(config["train_stems"])
    assert calib.source == "training data" and "of the training split" in calib.description


def test_phantom_fallback_names_itself_and_calib_overrides(trained, tmp_path):
    data, ckpt = trained
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    # the recorded folder is gone: the phantom stands in, and the warning says so and why
    shutil.move(str(data), str(tmp_path / "elsewhere"))
    try:
        res = _export(ckpt, tmp_path / "out")
        assert res.exit_code == 0, (res.output, res.exception)
        assert "verifying on rendered phantom images (hemseg.phantom)" in res.output
        assert "not readable here" in res.output and "--calib DATA" in res.output
        report = json.loads((tmp_path / "out" / "export_report.json").read_text())
        assert report["verification_data"]["source"] == "phantom"
        res = _export(ckpt, tmp_path / "out2", "--calib", str(moved))
        assert res.exit_code == 0, (res.output, res.exception)
        report = json.loads((tmp_path / "out2" / "export_report.json").read_text())
        assert report["verification_data"]["source"] == "dataset" and "rendered phantom" not in res.output
    finally:
        shutil.move(str(tmp_path / "elsewhere"), str(data))
