"""``hemseg eval MODEL DATA`` with an exported model: the engine that ships (ONNX FP32/INT8, OpenVINO, an export
folder), run by the runtime backend, scored against the reference masks; no torch needed (this file runs in the
torch-free venv too). Model: tests/data/tiny_64.onnx (bright = lesion)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hemseg.cli import main
from hemseg.runtime.io import read_mask
from hemseg.runtime.metrics import compute_metrics

TINY = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"


def dataset(root: Path) -> Path:
    """Four 64 px pairs: bright discs whose masks are the discs, one mask drawn too small (so Dice differs per
    image), one dark lesion-free slice."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, (centre, radius, mask_radius) in enumerate([((20, 24), 9, 9), ((40, 36), 12, 12), ((30, 30), 10, 5),
                                                        (None, 0, 0)]):
        image = np.full((64, 64), 30, np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        if centre is not None:
            cv2.circle(image, centre, radius, 220, -1)
            cv2.circle(mask, centre, mask_radius, 1, -1)
        cv2.imwrite(str(root / "images" / f"s{k}.png"), image)
        cv2.imwrite(str(root / "masks" / f"s{k}.png"), mask)
    return root


def per_image(out: Path) -> dict[str, dict]:
    with open(out / "per_image.csv", newline="") as fh:
        return {row["stem"]: row for row in csv.DictReader(fh)}


def test_an_exported_model_is_scored_like_its_own_predictions(tmp_path):
    data = dataset(tmp_path / "d")
    res = CliRunner().invoke(main, ["eval", str(TINY), str(data), "-o", str(tmp_path / "ev"), "--backend", "ort-cpu",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert s["backend"] == "ort-cpu" and s["model_file"] == str(TINY) and s["model_file_sha256"]
    assert "checkpoint" not in s and s["same_data_as_training"] is None and s["n_images"] == 4
    # the reference: hemseg predict's threshold-only masks of the same images, scored by hand
    pred = tmp_path / "pred"
    res = CliRunner().invoke(main, ["predict", str(TINY), str(data / "images"), "-o", str(pred), "--backend",
                                    "ort-cpu", "--no-postprocess"])
    assert res.exit_code == 0, res.output
    rows = per_image(tmp_path / "ev")
    dices = []
    for k in range(4):
        m = compute_metrics(read_mask(pred / f"s{k}_mask.png")[0], read_mask(data / "masks" / f"s{k}.png")[0])
        assert float(rows[f"s{k}"]["dice"]) == pytest.approx(m["dice"], abs=1e-6)
        dices.append(m["dice"])
    assert dices[0] > 0.8 and dices[2] < 0.6  # it segments, and the scores tell the images apart
    assert s["dice"] == pytest.approx(float(np.mean(dices)), abs=1e-6)


def test_an_export_folder_with_flip_tta_and_an_ensemble(tmp_path):
    data = dataset(tmp_path / "d")
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(TINY, folder / "model.onnx")
    res = CliRunner().invoke(main, ["eval", str(folder), str(data), "-o", str(tmp_path / "ev"), "--backend", "ort-cpu",
                                    "--tta", "--ensemble-with", str(TINY), "--no-progress"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert s["tta"] == "flip" and [e["model_file"] for e in s["ensemble_with"]] == [str(TINY)]
    assert s["model_file"] == str(folder / "model.onnx") and s["dice"] > 0.5


def test_backend_is_for_exported_models_and_a_bad_model_is_one_line(tmp_path):
    data = dataset(tmp_path / "d")
    fake = tmp_path / "best.pt"
    fake.write_bytes(b"not read")
    res = CliRunner().invoke(main, ["eval", str(fake), str(data), "-o", str(tmp_path / "ev"), "--backend", "ort-cpu"])
    assert res.exit_code != 0 and "--backend is for exported models" in str(res.exception)
    broken = tmp_path / "broken.onnx"
    broken.write_text("not a model")
    res = CliRunner().invoke(main, ["eval", str(broken), str(data), "-o", str(tmp_path / "ev2"), "--no-progress"])
    assert res.exit_code != 0 and "broken.onnx" in str(res.exception) and not (tmp_path / "ev2").exists()
