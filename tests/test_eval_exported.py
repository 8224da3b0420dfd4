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
from tiny_models import TINY, export_folder, other_copy, write_export_report

from hemseg.cli import main
from hemseg.runtime.io import read_mask
from hemseg.runtime.metrics import compute_metrics


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
    other_copy(folder / "model.onnx")
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
    # an ensemble of a checkpoint and an exported model: the .onnx was refused as 'not a PyTorch file'
    res = CliRunner().invoke(main, ["eval", str(fake), str(data), "-o", str(tmp_path / "ev4"), "--ensemble-with",
                                    str(TINY)])
    assert res.exit_code != 0 and "an ensemble averages models of one kind" in str(res.exception)
    res = CliRunner().invoke(main, ["eval", str(TINY), str(data), "-o", str(tmp_path / "ev6"), "--ensemble-with",
                                    str(fake)])  # a text file named .pt: not called a checkpoint
    assert "is not an exported model (taken for a checkpoint)" in str(res.exception)
    folder = tmp_path / "exp"  # an export folder as a member, as predict takes it ('is a directory' before)
    folder.mkdir()
    other_copy(folder / "model.onnx")
    res = CliRunner().invoke(main, ["eval", str(TINY), str(data), "-o", str(tmp_path / "ev5"), "--ensemble-with",
                                    str(folder), "--no-progress"])
    assert res.exit_code == 0, res.output
    # --device cuda with an exported model was ignored: a CPU backend ran and the report looked like a GPU run's
    res = CliRunner().invoke(main, ["eval", str(TINY), str(data), "-o", str(tmp_path / "ev3"), "--device", "cuda"])
    assert res.exit_code != 0 and "--backend ort-cuda" in str(res.exception) and not (tmp_path / "ev3").exists()


def test_eval_masks_scores_existing_masks_like_eval_scores_the_model(tmp_path):
    """``hemseg eval-masks PRED DATA``: hemseg predict's own output folder (PNG masks named <stem>_mask.png, overlays
    and summary.json beside them) scores exactly as ``hemseg eval`` of the model that made it."""
    data = dataset(tmp_path / "d")
    pred = tmp_path / "pred"
    res = CliRunner().invoke(main, ["predict", str(TINY), str(data / "images"), "-o", str(pred), "--backend",
                                    "ort-cpu", "--no-postprocess", "--overlay"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["eval-masks", str(pred), str(data), "-o", str(tmp_path / "em"), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["eval", str(TINY), str(data), "-o", str(tmp_path / "ev"), "--backend", "ort-cpu",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    masks, model = per_image(tmp_path / "em"), per_image(tmp_path / "ev")
    assert sorted(masks) == sorted(model) == ["s0", "s1", "s2", "s3"]
    for stem in masks:
        assert float(masks[stem]["dice"]) == pytest.approx(float(model[stem]["dice"]), abs=1e-9)
    s = json.loads((tmp_path / "em" / "summary.json").read_text())
    assert s["predictions"] == str(pred) and s["n_images"] == 4 and s["dice"] > 0.5


def test_eval_masks_refuses_missing_ambiguous_and_misfit_predictions(tmp_path, monkeypatch):
    import hemseg.runtime.dataset as dataset_module
    from hemseg.errors import InputError
    from hemseg.train.evaluate import evaluate_masks

    data = dataset(tmp_path / "d")
    pred = tmp_path / "pred"
    pred.mkdir()
    for k in range(3):
        shutil.copy(data / "masks" / f"s{k}.png", pred / f"s{k}.png")
    with pytest.raises(InputError, match=r"no prediction for 1 of 4 sample\(s\) \(e.g. s3\)") as caught:
        evaluate_masks(pred, data, tmp_path / "out", progress=False)
    assert "pair with no sample" not in str(caught.value)
    shutil.copy(data / "masks" / "s3.png", pred / "S3_MASK.PNG")  # a near miss: named in the error (it was not)
    with pytest.raises(InputError, match=r"1 file\(s\) there pair with no sample \(e.g. S3_MASK.PNG\)"):
        evaluate_masks(pred, data, tmp_path / "out", progress=False)
    (pred / "S3_MASK.PNG").unlink()
    shutil.copy(data / "masks" / "s3.png", pred / "s3.png")
    reads = []
    read_image = dataset_module.read_image
    monkeypatch.setattr(dataset_module, "read_image", lambda path: reads.append(path) or read_image(path))
    perfect = evaluate_masks(pred, data, tmp_path / "out", progress=False, n_overlays=0)
    assert perfect["dice_global"] == pytest.approx(1.0)  # the references scored against themselves
    assert len(reads) == 4  # each image read once for its reference and its prediction
    shutil.copy(data / "masks" / "s3.png", pred / "s3_mask.png")
    with pytest.raises(InputError, match="several predictions for s3: s3.png, s3_mask.png"):
        evaluate_masks(pred, data, tmp_path / "out2", progress=False)
    (pred / "s3_mask.png").unlink()
    cv2.imwrite(str(pred / "s1.png"), np.zeros((32, 32), np.uint8))
    with pytest.raises(InputError, match="s1.png") as exc:
        evaluate_masks(pred, data, tmp_path / "out3", progress=False)
    assert "differ" in str(exc.value) and not (tmp_path / "out3").exists()


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes here")
def test_eval_masks_names_a_pipe_where_a_prediction_is(tmp_path):
    """A named pipe at s1's prediction was passed over as no file at all: 'no prediction for 1 of 4 sample(s)
    (e.g. s1)' sent the user looking for a file that is there. It is s1's prediction, refused as what it is."""
    import os

    from hemseg.errors import InputError
    from hemseg.train.evaluate import evaluate_masks

    data = dataset(tmp_path / "d")
    pred = tmp_path / "pred"
    pred.mkdir()
    for k in (0, 2, 3):
        shutil.copy(data / "masks" / f"s{k}.png", pred / f"s{k}_mask.png")
    os.mkfifo(pred / "s1_mask.png")
    with pytest.raises(InputError, match="s1_mask.png: not a regular file"):
        evaluate_masks(pred, data, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_eval_masks_guards_its_inputs_and_says_what_it_did_not_score(tmp_path):
    """Into the predictions' own folder the report would replace hemseg predict's summary.json: refused. A --label
    no mask holds (every reference empty) is refused; a probability map is not a mask; a prediction no sample
    claims is a warning in summary.json."""
    from hemseg.errors import DatasetError, InputError, UsageError
    from hemseg.train.evaluate import evaluate_masks

    data = dataset(tmp_path / "d")
    pred = tmp_path / "pred"
    res = CliRunner().invoke(main, ["predict", str(TINY), str(data / "images"), "-o", str(pred), "--backend",
                                    "ort-cpu"])
    assert res.exit_code == 0, res.output
    before = (pred / "summary.json").read_bytes()
    with pytest.raises(UsageError, match="is the predictions' folder"):
        evaluate_masks(pred, data, pred, progress=False)
    with pytest.raises(UsageError, match="hemseg predict's summary.json"):  # another command's -o there
        evaluate_masks(data / "masks", data, pred, progress=False)
    assert (pred / "summary.json").read_bytes() == before
    with pytest.raises(DatasetError, match="no mask holds --label 7; the masks hold 1"):
        evaluate_masks(pred, data, tmp_path / "l7", labels=[7], progress=False)
    with pytest.raises(DatasetError, match="no prediction holds --pred-label 7; the predictions hold"):
        evaluate_masks(pred, data, tmp_path / "p7", pred_labels=[7], progress=False)  # every prediction empty
    assert not (tmp_path / "p7").exists()
    cv2.imwrite(str(pred / "zz_mask.png"), np.zeros((64, 64), np.uint8))  # an image not in the dataset
    cv2.imwrite(str(data / "images" / "nomask.png"), np.zeros((64, 64), np.uint8))  # an image without a mask
    s = evaluate_masks(pred, data, tmp_path / "ok", progress=False, n_overlays=0)
    assert any("1 prediction file(s) match no sample" in w for w in s["warnings"])
    assert any("1 image(s) without a mask of the same name left out (e.g. nomask.png)" in w for w in s["warnings"])
    (data / "images" / "nomask.png").unlink()
    soft = tmp_path / "soft"
    soft.mkdir()
    for k in range(4):
        np.save(soft / f"s{k}.npy", np.full((64, 64), 0.25, np.float32))
    with pytest.raises(InputError, match="probability map or an image, not a mask"):
        evaluate_masks(soft, data, tmp_path / "soft_out", progress=False)


def test_eval_masks_scores_predicts_masks_of_an_nnunet_dataset(tmp_path):
    """imagesTr/<case>_0000.png gives hemseg predict's <case>_0000_mask.png, but the sample is <case>: eval-masks
    found 'no prediction for 4 of 4 sample(s)'."""
    from hemseg.runtime.predict import PredictOptions, run_predict
    from hemseg.train.evaluate import evaluate_masks

    flat = dataset(tmp_path / "flat")
    nn = tmp_path / "Dataset001_x"
    (nn / "imagesTr").mkdir(parents=True)
    (nn / "labelsTr").mkdir()
    for image in sorted((flat / "images").iterdir()):
        shutil.copy(image, nn / "imagesTr" / f"{image.stem}_0000.png")
        shutil.copy(flat / "masks" / image.name, nn / "labelsTr" / image.name)
    pred = tmp_path / "pred"
    run_predict(TINY, [nn / "imagesTr"], PredictOptions(out_dir=pred, backend="ort-cpu"))
    assert (pred / "s0_0000_mask.png").is_file()
    nn_scores = evaluate_masks(pred, nn, tmp_path / "ev", progress=False, n_overlays=0)
    flat_pred = tmp_path / "flat_pred"
    run_predict(TINY, [flat / "images"], PredictOptions(out_dir=flat_pred, backend="ort-cpu"))
    flat_scores = evaluate_masks(flat_pred, flat, tmp_path / "ev2", progress=False, n_overlays=0)
    assert nn_scores["n_images"] == 4 and nn_scores["dice_global"] == flat_scores["dice_global"]


def test_eval_masks_finds_predicts_masks_of_names_it_made_file_name_safe(tmp_path):
    """hemseg predict writes 'case é 0.png' as case_e_0_mask.png (and cuts long stems): eval-masks looked only for
    the raw stem and found no prediction at all."""
    from hemseg.errors import InputError
    from hemseg.runtime.predict import PredictOptions, run_predict
    from hemseg.train.evaluate import evaluate_masks

    data = dataset(tmp_path / "d")
    for image in sorted((data / "images").iterdir()):
        new = f"case é {image.stem}" if image.stem.endswith("0") else image.stem + "x" * 130
        image.rename(image.with_name(new + image.suffix))
        mask = data / "masks" / image.name
        mask.rename(mask.with_name(new + mask.suffix))
    pred = tmp_path / "pred"
    run_predict(TINY, [data / "images"], PredictOptions(out_dir=pred, backend="ort-cpu"))
    assert not any(" " in p.name for p in pred.iterdir())
    s = evaluate_masks(pred, data, tmp_path / "ev", progress=False, n_overlays=0)
    assert s["n_images"] == len(list((data / "images").iterdir())) and not s.get("warnings")
    # two long stems cut to the same 120 characters: one file would score for both
    for image in sorted((data / "images").iterdir()):
        if image.stem.startswith(("s1", "s2")):
            image.rename(image.with_name("y" * 130 + image.stem[:2] + image.suffix))
            mask = data / "masks" / image.name
            mask.rename(mask.with_name("y" * 130 + image.stem[:2] + mask.suffix))
    pred2 = tmp_path / "pred2"
    run_predict(TINY, [data / "images"], PredictOptions(out_dir=pred2, backend="ort-cpu"))
    s = evaluate_masks(pred2, data, tmp_path / "ev2", progress=False, n_overlays=0)  # predict's summary tells them
    assert s["n_images"] == len(list((data / "images").iterdir())) and not s.get("warnings")
    (pred2 / "summary.json").unlink()  # by name alone they cannot be told apart
    with pytest.raises(InputError, match="claimed as the prediction of both"):
        evaluate_masks(pred2, data, tmp_path / "ev3", progress=False, n_overlays=0)


def test_eval_masks_pairs_predicts_masks_by_its_summary_where_names_cannot(tmp_path):
    """'a b.png' and 'a_b.png' are written as a_b_mask.png and a_b_1_mask.png, '名前.png' and '画像.png' as
    input_mask.png and input_1_mask.png: eval-masks scored a_b against a b's mask (Dice 0, exit 0) and found no
    prediction for the others. predict's summary.json records whose each mask is; it decides, also for a copy of
    the images elsewhere."""
    from hemseg.errors import InputError
    from hemseg.runtime.predict import PredictOptions, run_predict
    from hemseg.train.evaluate import evaluate_masks

    data = dataset(tmp_path / "d")
    names = {"s0": "a b", "s1": "a_b", "s2": "名前", "s3": "画像"}
    for old, new in names.items():
        for sub in ("images", "masks"):
            (data / sub / f"{old}.png").rename(data / sub / f"{new}.png")
    pred = tmp_path / "pred"
    run_predict(TINY, [data / "images"], PredictOptions(out_dir=pred, backend="ort-cpu"))
    assert (pred / "a_b_1_mask.png").is_file() and (pred / "input_1_mask.png").is_file()
    s = evaluate_masks(pred, data, tmp_path / "ev", progress=False, n_overlays=0)
    assert s["n_images"] == 4 and not s.get("warnings"), s.get("warnings")
    recorded = json.loads((pred / "summary.json").read_text())["outputs_by_input"]
    rows = per_image(tmp_path / "ev")
    for source, outputs in recorded.items():
        stem = Path(source).stem
        [mask] = [n for n in outputs if n.endswith("_mask.png")]
        m = compute_metrics(read_mask(pred / mask)[0], read_mask(data / "masks" / f"{stem}.png")[0])
        assert float(rows[stem]["dice"]) == pytest.approx(m["dice"], abs=1e-4), stem
    assert float(rows["a_b"]["dice"]) > 0.5  # its own mask (a b's disc lies elsewhere: about 0)
    copy = tmp_path / "e"  # a_b alone, copied: the one input of that stem decides
    for sub in ("images", "masks"):
        (copy / sub).mkdir(parents=True)
        shutil.copy(data / sub / "a_b.png", copy / sub / "a_b.png")
    s = evaluate_masks(pred, copy, tmp_path / "ev2", progress=False, n_overlays=0)
    assert float(per_image(tmp_path / "ev2")["a_b"]["dice"]) == pytest.approx(float(rows["a_b"]["dice"]), abs=1e-4)
    # a second run into the same folder from the copy: two inputs named a_b recorded; a third copy is neither,
    # and which mask is its own cannot be told (names picked a b's: Dice 0, exit 0)
    run_predict(TINY, [copy / "images"], PredictOptions(out_dir=pred, backend="ort-cpu"))
    third = tmp_path / "third"
    shutil.copytree(copy, third)
    with pytest.raises(InputError, match="records masks of 2 inputs named a_b .*none of them"):
        evaluate_masks(pred, third, tmp_path / "ev3", progress=False, n_overlays=0)
    # a mask found by name that predict wrote for another input ('a b') is not taken for sample a_b
    only = tmp_path / "only"
    (only / "images").mkdir(parents=True)
    shutil.copy(data / "images" / "a b.png", only / "images" / "a b.png")
    pred2 = tmp_path / "pred2"
    run_predict(TINY, [only / "images"], PredictOptions(out_dir=pred2, backend="ort-cpu"))
    with pytest.raises(InputError, match="a_b_mask.png, named as this sample's, is by predict's summary.json the mask "
                                         "of .*a b.png"):
        evaluate_masks(pred2, copy, tmp_path / "ev4", progress=False, n_overlays=0)


def test_eval_never_replaces_a_users_files_named_like_report_tables(tmp_path):
    """-o a folder of notes holding per_case.csv and per_category.md: eval deleted the one and replaced the other."""
    from hemseg.errors import UsageError
    from hemseg.train.evaluate import evaluate_model

    data = dataset(tmp_path / "d")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "per_category.md").write_text("# my table\n")
    with pytest.raises(UsageError, match="per_category.md but no evaluation summary.json"):
        evaluate_model(TINY, data, notes, progress=False, backend="ort-cpu")
    assert (notes / "per_category.md").read_text() == "# my table\n"


def _two_categories(root: Path, names: tuple[str, str] = ("t1", "t2")) -> Path:
    """Category folders t1/ and t2/ that share file names (000.png, 001.png), different lesions in each."""
    for c, cat in enumerate(names):
        (root / cat / "images").mkdir(parents=True)
        (root / cat / "masks").mkdir()
        for k in range(2):
            image = np.full((64, 64), 30, np.uint8)
            mask = np.zeros((64, 64), np.uint8)
            centre = (16 + 30 * c, 20 + 20 * k)
            cv2.circle(image, centre, 8, 220, -1)
            cv2.circle(mask, centre, 8, 1, -1)
            cv2.imwrite(str(root / cat / "images" / f"{k:03d}.png"), image)
            cv2.imwrite(str(root / cat / "masks" / f"{k:03d}.png"), mask)
    return root


def test_category_folders_sharing_file_names_are_different_images_everywhere(tmp_path):
    """t1/000.png and t2/000.png: evaluation made them one case (per_case.csv, a bootstrap over 2 'cases' for 4
    images); eval-compare refused two reports of this data; eval-masks scored t1's prediction file for t2's sample
    too (pooled Dice 0.5 for perfect predictions) and called t2's own predictions unmatched."""
    from hemseg.errors import InputError
    from hemseg.train.eval_report import compare_reports
    from hemseg.train.evaluate import evaluate_masks

    data = _two_categories(tmp_path / "d")
    flat = tmp_path / "flat"
    flat.mkdir()
    for cat in ("t1", "t2"):
        shutil.copy(data / cat / "masks" / "000.png", flat / "000.png")
    with pytest.raises(InputError, match=r"both t1/000 and t2/000 \(one file name in two categories\); put each "
                                         r"category's predictions in .*/<category>/"):
        evaluate_masks(flat, data, tmp_path / "e0", progress=False, n_overlays=0)
    pred = tmp_path / "pred"
    for cat in ("t1", "t2"):
        shutil.copytree(data / cat / "masks", pred / cat)
    s = evaluate_masks(pred, data, tmp_path / "e1", progress=False, n_overlays=0)
    assert s["n_images"] == 4 and s["dice_global"] == 1.0 and not s.get("warnings")
    shutil.copy(data / "t1" / "masks" / "000.png", pred / "stray.png")  # beside the category folders: scored for none
    stray = evaluate_masks(pred, data, tmp_path / "e1b", progress=False, n_overlays=0)
    assert any(f"{pred}: 1 prediction file(s) match no sample" in w and "stray.png" in w for w in stray["warnings"])
    (pred / "stray.png").unlink()
    assert "n_cases" not in s and not (tmp_path / "e1" / "per_case.csv").exists()  # every file its own case
    res = CliRunner().invoke(main, ["eval", str(TINY), str(data), "-o", str(tmp_path / "e2"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "e2" / "per_case.csv").exists()
    out = compare_reports(tmp_path / "e2", tmp_path / "e1")
    assert out["n_images"] == 4


def test_eval_masks_gives_a_file_named_after_a_sample_to_that_sample(tmp_path):
    """Samples t2 and t2_seg, predictions t2.png and t2_seg.png: t2_seg.png also counted for t2 (as t2 + _seg), so
    a valid dataset was refused as 'several predictions for t2'. And predict's --save-prob files were reported as
    predictions that match no sample."""
    from hemseg.train.evaluate import evaluate_masks

    data = dataset(tmp_path / "d")
    for folder in ("images", "masks"):
        (data / folder / "s1.png").rename(data / folder / "s0_seg.png")
    pred = tmp_path / "pred"
    shutil.copytree(data / "masks", pred)
    np.save(pred / "s0_prob.npy", np.zeros((64, 64), np.float16))  # hemseg predict --save-prob's file
    s = evaluate_masks(pred, data, tmp_path / "e", progress=False, n_overlays=0)
    assert s["n_images"] == 4 and s["dice_global"] == 1.0 and not s.get("warnings")


def test_a_mask_with_nan_is_called_a_mask(tmp_path):
    """A NaN in a prediction NPY was reported as 'NaN/Inf value(s) in the image data'."""
    from hemseg.errors import InputError

    arr = np.zeros((64, 64), np.float32)
    arr[3, 3] = np.nan
    np.save(tmp_path / "p.npy", arr)
    with pytest.raises(InputError, match="1 NaN/Inf value.s. in the mask data"):
        read_mask(tmp_path / "p.npy")


def test_a_category_folder_named_all_has_its_predictions_folder_too(tmp_path):
    """Category folders all/ and t2/: PREDICTIONS/all/ was passed over ('all' is the flat layout's category) and
    eval-masks said 'no prediction for 3 of 6 sample(s) (e.g. 000, ...)', naming neither folder nor category."""
    from hemseg.errors import InputError
    from hemseg.train.evaluate import evaluate_masks

    data = _two_categories(tmp_path / "d", names=("all", "t2"))
    pred = tmp_path / "pred"
    for cat in ("all", "t2"):
        shutil.copytree(data / cat / "masks", pred / cat)
    s = evaluate_masks(pred, data, tmp_path / "e", progress=False, n_overlays=0)
    assert s["n_images"] == 4 and s["dice_global"] == 1.0
    (pred / "t2" / "001.png").unlink()
    with pytest.raises(InputError, match=r"pred/t2: no prediction for 1 of 4 sample\(s\) \(e.g. t2/001\)"):
        evaluate_masks(pred, data, tmp_path / "e2", progress=False, n_overlays=0)


def test_a_flat_datasets_predictions_are_not_looked_for_in_a_sub_folder_named_all(tmp_path):
    """After reading PREDICTIONS/all/ for a category folder named all, a flat dataset's PREDICTIONS/all/ (a user's
    notes, other masks) replaced the predictions beside it."""
    from hemseg.train.evaluate import evaluate_masks

    data = dataset(tmp_path / "d")
    pred = tmp_path / "pred"
    shutil.copytree(data / "masks", pred)
    (pred / "all").mkdir()
    (pred / "all" / "readme.txt").write_text("x")
    s = evaluate_masks(pred, data, tmp_path / "e", progress=False, n_overlays=0)
    assert s["n_images"] == 4 and s["dice_global"] == 1.0


def test_eval_masks_refuses_a_folder_predict_is_writing(tmp_path):
    """eval-masks of a --out that hemseg predict was still rewriting scored a mix of two models' masks, exit 0.
    predict's journal stands in the folder until its summary is written: while it does, eval-masks refuses."""
    import cv2
    import numpy as np

    from hemseg.errors import UsageError
    from hemseg.runtime.predict import JOURNAL
    from hemseg.train.evaluate import evaluate_masks

    data, pred = tmp_path / "data", tmp_path / "pred"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    pred.mkdir()
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    cv2.imwrite(str(data / "images" / "a.png"), mask // 2)
    cv2.imwrite(str(data / "masks" / "a.png"), mask)
    cv2.imwrite(str(pred / "a_mask.png"), mask)
    (pred / JOURNAL).write_text("a_mask.png\n")
    with pytest.raises(UsageError, match="a hemseg predict is writing into this folder"):
        evaluate_masks(pred, data, tmp_path / "ev", progress=False)
    (pred / JOURNAL).unlink()
    assert evaluate_masks(pred, data, tmp_path / "ev", progress=False)["dice_global"] == pytest.approx(1.0)


def test_an_evaluation_whose_dataset_is_replaced_meanwhile_is_refused(tmp_path, monkeypatch):
    """hemseg data synth replacing DATA under a running hemseg eval: the images were read one by one after the
    fingerprint, so the scores mixed two versions under one version's fingerprint, exit 0."""
    import os

    import cv2
    import numpy as np

    import hemseg.runtime.dataset as dataset_mod
    from hemseg.errors import DatasetError
    from hemseg.train.evaluate import evaluate_model

    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    for stem in ("a", "b"):
        cv2.imwrite(str(data / "images" / f"{stem}.png"), mask // 2 + 20)
        cv2.imwrite(str(data / "masks" / f"{stem}.png"), mask)
    real, calls = dataset_mod.load_pair_spacing, []

    def replaced_meanwhile(sample, *args, **kwargs):
        if not calls:
            calls.append(1)
            cv2.imwrite(str(tmp_path / "new.png"), np.zeros((64, 64), np.uint8))
            os.replace(tmp_path / "new.png", data / "masks" / "b.png")  # another version of the dataset
        return real(sample, *args, **kwargs)

    monkeypatch.setattr(dataset_mod, "load_pair_spacing", replaced_meanwhile)
    with pytest.raises(DatasetError, match=r"changed while they were evaluated \(e.g. .*b.png"):
        evaluate_model(TINY, data, tmp_path / "ev", progress=False, backend="ort-cpu")
    assert not (tmp_path / "ev" / "summary.json").exists()


def test_eval_masks_refuses_category_folders_predict_is_writing(tmp_path):
    """PRED/<category>/ is each a predict --out: a journal there (a predict running, or killed) was not looked at
    when PRED itself was given."""
    import cv2
    import numpy as np

    from hemseg.errors import UsageError
    from hemseg.runtime.predict import JOURNAL
    from hemseg.train.evaluate import evaluate_masks

    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    for cat in ("t1", "t2"):
        for sub in ("images", "masks"):
            (tmp_path / "data" / cat / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "data" / cat / "images" / "a.png"), mask // 2)
        cv2.imwrite(str(tmp_path / "data" / cat / "masks" / "a.png"), mask)
        (tmp_path / "pred" / cat).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "pred" / cat / "a_mask.png"), mask)
    (tmp_path / "pred" / "t2" / JOURNAL).write_text("a_mask.png\n")
    with pytest.raises(UsageError, match="t2: a hemseg predict is writing into this folder"):
        evaluate_masks(tmp_path / "pred", tmp_path / "data", tmp_path / "ev", progress=False)


def test_an_export_replaced_between_its_snapshot_and_its_loading_is_not_named(tmp_path, monkeypatch):
    """The model file's version was taken after it was loaded: a re-export just before loading went unseen, and the
    report named the new file's hash beside the old model's scores. Versions are taken before loading now."""
    import os
    import shutil

    import cv2
    import numpy as np

    import hemseg.runtime.backends.ensemble as ensemble_mod
    from hemseg.errors import ModelError
    from hemseg.train.evaluate import evaluate_model

    exp = tmp_path / "exp"
    exp.mkdir()
    shutil.copy(TINY, exp / "model.onnx")
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "data" / "images" / "a.png"), np.full((64, 64), 80, np.uint8))
    cv2.imwrite(str(tmp_path / "data" / "masks" / "a.png"), np.zeros((64, 64), np.uint8))
    real = ensemble_mod.open_ensemble

    def re_exported_first(*args, **kwargs):
        shutil.copy(TINY, exp / "new.onnx")
        os.replace(exp / "new.onnx", exp / "model.onnx")
        return real(*args, **kwargs)

    monkeypatch.setattr(ensemble_mod, "open_ensemble", re_exported_first)
    with pytest.raises(ModelError, match="was replaced while it was read"):
        evaluate_model(exp, tmp_path / "data", tmp_path / "ev", progress=False, backend="ort-cpu")


def test_a_label_map_warning_is_logged_once_by_an_evaluation(tmp_path, caplog):
    """eval-masks on label-map masks logged the same warning twice: when the dataset was read and again with the
    report's warnings."""
    from hemseg.train.evaluate import evaluate_masks

    data = dataset(tmp_path / "d")
    mask = cv2.imread(str(data / "masks" / "s0.png"), cv2.IMREAD_UNCHANGED)
    mask[mask > 0] = 2
    mask[:3, :3] = 1
    cv2.imwrite(str(data / "masks" / "s0.png"), mask)
    pred = tmp_path / "pred"
    shutil.copytree(data / "masks", pred)
    with caplog.at_level("WARNING"):
        s = evaluate_masks(pred, data, tmp_path / "e", progress=False, n_overlays=0)
    assert any("hold more than one nonzero value" in w for w in s["warnings"])
    assert caplog.text.count("mask(s) hold more than one nonzero value") == 1
    assert caplog.text.count("prediction(s) hold more than one nonzero value") == 1  # the predictions: their own


def test_eval_masks_warns_of_empty_predictions_without_naming_a_model(tmp_path):
    """eval-masks of empty prediction files said 'the model predicts no lesion', where no model was involved."""
    from hemseg.train.evaluate import evaluate_masks

    data = dataset(tmp_path / "d")
    pred = tmp_path / "pred"
    pred.mkdir()
    for k in range(4):
        cv2.imwrite(str(pred / f"s{k}.png"), np.zeros((64, 64), np.uint8))
    s = evaluate_masks(pred, data, tmp_path / "e", progress=False, n_overlays=0)
    assert any(w.startswith("the predicted masks hold no lesion on any of the 4 slices") for w in s["warnings"])
    assert not any("the model" in w for w in s["warnings"])


def test_eval_masks_warns_of_predictions_holding_several_values(tmp_path):
    """A soft probability PNG (0-255) or a label map as prediction was scored with every nonzero pixel as lesion and
    no word (the same files as references were warned of): it is warned of in summary.json, pointing to
    --pred-label; binary predictions are not."""
    from hemseg.train.evaluate import evaluate_masks

    data = dataset(tmp_path / "d")
    soft = tmp_path / "soft"
    soft.mkdir()
    for k in range(4):
        ref = cv2.imread(str(data / "masks" / f"s{k}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(soft / f"s{k}.png"), (ref * 190 + 8 + (np.arange(64) % 5)[None, :]).astype(np.uint8))
    s = evaluate_masks(soft, data, tmp_path / "o", progress=False, n_overlays=0)
    said = [w for w in s["warnings"] if "prediction(s) hold more than one nonzero value" in w]
    assert said and "4 of 4" in said[0] and "--pred-label" in said[0]
    assert "needs binarizing first (e.g. >= 128)" in said[0]  # a run of 0-255 values: not "choose a label"
    binary = tmp_path / "bin"
    binary.mkdir()
    for k in range(4):
        shutil.copy(data / "masks" / f"s{k}.png", binary / f"s{k}.png")
    s = evaluate_masks(binary, data, tmp_path / "b", progress=False, n_overlays=0)
    assert not [w for w in s["warnings"] if "more than one nonzero value" in w]
    labelled = tmp_path / "lab"
    labelled.mkdir()
    for k in range(4):
        ref = cv2.imread(str(data / "masks" / f"s{k}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(labelled / f"s{k}.png"), (ref * 2 + (ref == 0) * (np.arange(64) > 60)).astype(np.uint8))
    s = evaluate_masks(labelled, data, tmp_path / "l", progress=False, n_overlays=0, pred_labels=[2])
    assert not [w for w in s["warnings"] if "more than one nonzero value" in w]  # --pred-label picked the lesion
    assert s["dice_global"] == 1.0


def test_a_report_inside_the_dataset_or_in_the_predictions_folder_is_refused(tmp_path):
    """eval / eval-masks / baseline kmeans -o DATA/x wrote the report among the images and masks (data check then
    warned of the sub-folder); eval-masks -o PRED mixed the report with the masks it scored. Refused before any work,
    as hemseg train refuses a run folder inside its dataset; a folder beside them is fine."""
    data = dataset(tmp_path / "d")
    pred = tmp_path / "pred"
    shutil.copytree(data / "masks", pred)
    before = sorted(p.name for p in pred.iterdir())
    for args in (["eval", str(TINY), str(data), "-o", str(data / "ev"), "--backend", "ort-cpu"],
                 ["baseline", "kmeans", str(data), "-o", str(data / "masks" / "km"), "--image-size", "64"],
                 ["eval-masks", str(pred), str(data), "-o", str(data)],
                 ["eval-masks", str(pred), str(data), "-o", str(pred)]):
        res = CliRunner().invoke(main, args)
        said = res.output + str(res.exception)  # a UsageError reaches the CLI's handler as the exception
        assert res.exit_code != 0 and "choose a folder outside it" in said, (args, said)
        assert "Traceback" not in res.output
    assert not (data / "ev").exists() and not (data / "masks" / "km").exists() and not (data / "summary.json").exists()
    assert sorted(p.name for p in pred.iterdir()) == before
    res = CliRunner().invoke(main, ["eval-masks", str(pred), str(data), "-o", str(tmp_path / "beside"),
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    # category folders: PRED/<category>/ is one category's predictions folder, refused as PRED itself is
    cats = tmp_path / "cats"
    (cats / "t1").mkdir(parents=True)
    shutil.copytree(data, cats / "t1", dirs_exist_ok=True)
    shutil.copytree(cats / "t1", cats / "t2")
    cpred = tmp_path / "cpred"
    for c in ("t1", "t2"):
        shutil.copytree(cats / c / "masks", cpred / c)
    res = CliRunner().invoke(main, ["eval-masks", str(cpred), str(cats), "-o", str(cpred / "t1")])
    assert res.exit_code != 0 and "is the predictions' folder" in res.output + str(res.exception)
    assert sorted(p.name for p in (cpred / "t1").iterdir()) == ["s0.png", "s1.png", "s2.png", "s3.png"]


def test_eval_of_an_exported_model_records_and_warns_of_its_export_verdict(tmp_path, caplog):
    """hemseg eval of an export said nothing of a --no-verify model or of gates that do not cover the run (predict
    and the Python API warned): summary.json records the verdict and its gap, and an unchecked model is warned of."""
    from hemseg.train.evaluate import evaluate_model

    data = dataset(tmp_path / "d")
    folder = export_folder(tmp_path / "exp")
    for status, warned in (("passed", False), ("not verified", True)):
        write_export_report(folder, status)
        caplog.clear()
        with caplog.at_level("WARNING", logger="hemseg"):
            s = evaluate_model(folder / "model.onnx", data, tmp_path / status.replace(" ", "_"), backend="ort-cpu",
                               progress=False, n_overlays=0)
        assert s["export_verification"] == status and s["export_verification_gap"] is None
        assert ("parity gates never checked this model" in caplog.text) == warned


def test_logits_that_are_not_finite_stop_the_evaluation_naming_the_model_and_the_image(tmp_path):
    """hemseg eval stopped on a model's NaN logits naming the model only, not the image that made them (QA, stop 54);
    a model whose output overflows for bright images only."""
    pytest.importorskip("onnx")
    from tiny_models import mean_nan_copy

    data = dataset(tmp_path / "d")
    bright = np.full((64, 64), 220, np.uint8)
    cv2.imwrite(str(data / "images" / "zz_bright.png"), bright)
    cv2.imwrite(str(data / "masks" / "zz_bright.png"), np.zeros((64, 64), np.uint8))
    model = mean_nan_copy(tmp_path / "meannan.onnx")
    res = CliRunner().invoke(main, ["eval", str(model), str(data), "-o", str(tmp_path / "ev"), "--backend", "ort-cpu",
                                    "--no-progress"])
    assert res.exit_code == 1 and not (tmp_path / "ev" / "summary.json").exists()
    said = str(res.exception)
    assert said.startswith(f"{model}: ort-cpu produced 4096 non-finite logits") and "\n" not in said
    assert said.endswith(f"; on the image {data / 'images' / 'zz_bright.png'}")


def test_eval_masks_warns_of_predictions_holding_another_value_than_pred_label(tmp_path):
    """Predictions 0/1 beside 0/255 with --pred-label 1: the 0/255 ones read as empty (Dice 0.625 for a perfect
    set), and nothing was said (a QA finding of stop 55)."""
    from hemseg.train.evaluate import evaluate_masks

    data = dataset(tmp_path / "d")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for k in range(4):
        ref = cv2.imread(str(data / "masks" / f"s{k}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(mixed / f"s{k}.png"), ((ref > 0) * (1 if k < 2 else 255)).astype(np.uint8))
    s = evaluate_masks(mixed, data, tmp_path / "o", progress=False, n_overlays=0, pred_labels=[1])
    said = [w for w in s["warnings"] if "but not --pred-label 1" in w]
    assert said and "of 4 mask(s)" in said[0] and "(--pred-label 1 --pred-label 255)" in said[0]
