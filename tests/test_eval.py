"""hemseg eval: the report files, native-resolution metrics, the stored threshold, --postprocess and refusals.

The checkpoint is a tiny untrained U-Net saved directly (no training needed to test the evaluation pipeline).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from hemseg.cli import main  # noqa: E402
from hemseg.errors import ModelError  # noqa: E402
from hemseg.runtime.preprocess import PreprocessSpec  # noqa: E402
from hemseg.train.checkpoint import save_checkpoint  # noqa: E402
from hemseg.train.evaluate import CLEANUP, evaluate_checkpoint  # noqa: E402
from hemseg.train.models import build_model  # noqa: E402

pytestmark = pytest.mark.torch

SUMMARY_KEYS = ("dice", "iou", "precision", "recall", "accuracy", "hd95", "per_category", "n_images", "threshold",
                "checkpoint", "model", "postprocess", "device")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from hemseg.phantom import generate

    root = tmp_path_factory.mktemp("phantom") / "data"
    # two per category: image 0 of each is lesion-free by design, so with one per category every truth mask would
    # be empty and a true positive could never be counted (nor miscounted)
    generate(root, per_category=2, seed=1, size_range=(48, 80), progress=False)
    return root


def with_lesion(samples) -> list:
    from hemseg.runtime.dataset import load_pair

    return [s for s in samples if load_pair(s)[1].any()]


@pytest.fixture(scope="module")
def checkpoint(phantom, tmp_path_factory) -> Path:
    """An untrained tiny U-Net whose head bias puts about 30% of the pixels above probability 0.5."""
    from hemseg.runtime.dataset import discover, load_pair
    from hemseg.runtime.preprocess import preprocess

    torch.manual_seed(0)
    model = build_model("unet", base=4, depth=2).eval()
    spec = PreprocessSpec(size=32).without(["nlm"])
    x = np.stack([preprocess(load_pair(s)[0][0], spec) for s in discover(phantom).samples[:4]])
    with torch.no_grad():
        model.head.bias.zero_()
        logits = model(torch.from_numpy(x)).flatten()
        scale = 3.0 / float(logits.std())  # logits of std 3: probabilities spread over (0, 1)
        model.head.weight.mul_(scale)
        model.head.bias.fill_(-scale * float(torch.quantile(logits, 0.7)))
    config = {"model": "unet", "model_kwargs": {"base": 4, "depth": 2}, "preprocess": spec.to_dict(),
              "image_size": 32, "threshold": 0.5, "labels": None, "data_fingerprint": None, "init": "random",
              "versions": {}, "epoch": 1, "metrics": {}, "hemseg_version": "test"}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", model, config)


@pytest.fixture(scope="module")
def report(phantom, checkpoint, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval") / "report"
    return out, evaluate_checkpoint(checkpoint, phantom, out, device="cpu", progress=False)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_files_and_keys(report):
    out, summary = report
    for name in ("summary.json", "per_image.csv", "per_category.md"):
        assert (out / name).is_file(), name
    written = json.loads((out / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in written, key
    assert written["n_images"] == 24 and len(written["per_category"]) == 12
    assert written["threshold"] == 0.5 and written["postprocess"] is None and written["resolution"] == "native"
    assert list((out / "overlays").glob("best_*.png")) and list((out / "overlays").glob("worst_*.png"))
    assert "| category |" in (out / "per_category.md").read_text()
    assert (out / "per_category.md").read_text().startswith(f"# {written['model']} {written['checkpoint']} on ")


def test_metrics_are_at_native_resolution(report, phantom, checkpoint):
    """Every per-image confusion count sums to the image's own pixel count, not to 32 x 32, and one row recomputed
    by hand (preprocess -> model -> logits resampled to the image's size -> threshold -> compute_metrics) agrees."""
    import cv2

    from hemseg.runtime.dataset import discover, load_pair
    from hemseg.runtime.metrics import compute_metrics
    from hemseg.runtime.preprocess import preprocess
    from hemseg.train.checkpoint import load_checkpoint

    out, _ = report
    rows = {r["stem"]: r for r in _rows(out / "per_image.csv")}
    samples = discover(phantom).samples
    model, config = load_checkpoint(checkpoint)
    spec = PreprocessSpec.from_dict(config["preprocess"])
    for sample in samples:
        image, gt = load_pair(sample)
        r = rows[sample.stem]
        assert sum(int(r[k]) for k in ("tp", "fp", "fn", "tn")) == image.shape[1] * image.shape[2]
    sample = with_lesion(samples)[0]
    image, gt = load_pair(sample)
    with torch.no_grad():
        logit = model(torch.from_numpy(preprocess(image[0], spec))[None])[0, 0].numpy()
    h, w = gt.shape[1:]
    assert (h, w) != logit.shape  # the phantom's slices are not 32 px: the resampling is exercised
    pred = (cv2.resize(logit, (w, h), interpolation=cv2.INTER_LINEAR) > 0).astype(np.uint8)
    expected = compute_metrics(pred, gt[0])
    assert expected["tp"] > 0  # a lesion the prediction overlaps: a count that can be wrong
    assert float(rows[sample.stem]["dice"]) == pytest.approx(expected["dice"], abs=1e-5)
    assert int(rows[sample.stem]["tp"]) == expected["tp"]


def test_postprocess_and_stored_threshold(phantom, checkpoint, tmp_path, report):
    s = evaluate_checkpoint(checkpoint, phantom, tmp_path / "pp", postprocess=True, device="cpu", progress=False)
    assert s["postprocess"] == {**CLEANUP.scaled(32).to_dict(), "threshold": 0.5}  # sizes scaled from 256 px
    # a checkpoint whose stored threshold is higher predicts fewer pixels
    payload = torch.load(checkpoint, weights_only=True)
    payload["config"]["threshold"] = 0.9
    high = tmp_path / "high.pt"
    torch.save(payload, high)
    s_high = evaluate_checkpoint(high, phantom, tmp_path / "high", device="cpu", progress=False)
    assert s_high["threshold"] == 0.9
    fg = lambda path: sum(int(r["tp"]) + int(r["fp"]) for r in _rows(path))  # noqa: E731
    assert 0 < fg(tmp_path / "high" / "per_image.csv") < fg(report[0] / "per_image.csv")
    assert fg(tmp_path / "pp" / "per_image.csv") != fg(report[0] / "per_image.csv")  # the cleanup changed masks


def _agrees_with_hand(phantom, checkpoint, out, prob, threshold: float) -> int:
    """The first rows of ``out/per_image.csv`` against ``prob(x) > threshold`` computed by hand (``x``: the
    preprocessed slice as a (1, C, S, S) tensor, ``prob`` its (S, S) probability map); returns how many pixels
    differ from the checkpoint alone at its own threshold 0.5, so a test can check that the option did something."""
    from hemseg.runtime.dataset import discover, load_pair
    from hemseg.runtime.metrics import compute_metrics
    from hemseg.runtime.postprocess import PostprocessConfig, postprocess
    from hemseg.runtime.preprocess import preprocess
    from hemseg.train.checkpoint import load_checkpoint

    rows = {r["stem"]: r for r in _rows(out / "per_image.csv")}
    model, config = load_checkpoint(checkpoint)
    spec = PreprocessSpec.from_dict(config["preprocess"])
    changed, tp = 0, 0
    for sample in with_lesion(discover(phantom).samples)[:4]:
        image, gt = load_pair(sample)
        x = torch.from_numpy(preprocess(image[0], spec))[None]
        with torch.no_grad():
            p, alone = prob(x), torch.sigmoid(model(x))[0, 0]
        pred = (p > threshold).numpy().astype(np.uint8)
        pd = p.double()
        logit = (torch.log(pd) - torch.log1p(-pd)).float().numpy()  # decided, as eval does, on resampled logits
        expected = compute_metrics(postprocess(logit, PostprocessConfig(threshold=threshold), logits=True,
                                               out_size=gt.shape[1:]), gt[0])
        assert int(rows[sample.stem]["tp"]) == expected["tp"] and int(rows[sample.stem]["fp"]) == expected["fp"]
        changed += int((pred != (alone > 0.5).numpy()).sum())
        tp += expected["tp"]
    assert tp > 0  # lesions the predictions overlap: true positives that could be miscounted
    return changed


def test_eval_tta_averages_each_slice_with_its_mirror(phantom, checkpoint, tmp_path):
    """``hemseg eval --tta``: rows recomputed by hand (mean of the probabilities of the preprocessed slice and of its
    left-right mirror, mirrored back) agree, and the summary records it."""
    from hemseg.train.checkpoint import load_checkpoint

    out = tmp_path / "tta"
    result = CliRunner().invoke(main, ["eval", str(checkpoint), str(phantom), "--out", str(out), "--device", "cpu",
                                       "--no-progress", "--tta"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((out / "summary.json").read_text())["tta"] == "flip"
    model, _ = load_checkpoint(checkpoint)

    def prob(x):
        return (torch.sigmoid(model(x))[0, 0] + torch.sigmoid(model(torch.flip(x, dims=[-1])))[0, 0].flip(-1)) / 2

    assert _agrees_with_hand(phantom, checkpoint, out, prob, 0.5) > 0  # the untrained model is not mirror-symmetric


def test_eval_ensemble_averages_members_at_their_mean_threshold(phantom, checkpoint, tmp_path):
    """``hemseg eval A --ensemble-with B``: rows recomputed by hand (mean probability of A and B against the mean of
    their thresholds) agree; a member with other preprocessing is a one-line error naming it."""
    from hemseg.train.checkpoint import load_checkpoint

    payload = torch.load(checkpoint, weights_only=True)
    torch.manual_seed(1)
    payload["state_dict"] = {k: v + 0.2 * torch.randn_like(v) if v.is_floating_point() else v
                             for k, v in payload["state_dict"].items()}
    payload["config"]["threshold"] = 0.3
    second = tmp_path / "second.pt"
    torch.save(payload, second)
    out = tmp_path / "ens"
    result = CliRunner().invoke(main, ["eval", str(checkpoint), str(phantom), "--out", str(out), "--device", "cpu",
                                       "--no-progress", "--ensemble-with", str(second)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    s = json.loads((out / "summary.json").read_text())
    assert s["threshold"] == pytest.approx(0.4) and s["ensemble_with"][0]["checkpoint"] == str(second.resolve())
    (m1, _), (m2, _) = load_checkpoint(checkpoint), load_checkpoint(second)

    def prob(x):
        return (torch.sigmoid(m1(x))[0, 0] + torch.sigmoid(m2(x))[0, 0]) / 2

    assert _agrees_with_hand(phantom, checkpoint, out, prob, 0.4) > 0  # not the first model alone

    payload["config"]["preprocess"] = {**payload["config"]["preprocess"], "size": 48}
    payload["config"]["image_size"] = 48
    third = tmp_path / "third.pt"
    torch.save(payload, third)
    result = CliRunner().invoke(main, ["eval", str(checkpoint), str(phantom), "--out", str(tmp_path / "bad"),
                                       "--device", "cpu", "--no-progress", "--ensemble-with", str(third)])
    assert result.exit_code != 0 and "third.pt" in str(result.exception) and "size" in str(result.exception)
    assert not (tmp_path / "bad" / "summary.json").exists()
    # a model ensembled with itself (or a copy) was averaged as two and recorded as a two-model ensemble, exit 0
    import shutil

    shutil.copyfile(checkpoint, tmp_path / "copy.pt")
    resaved = torch.load(checkpoint, weights_only=True)
    resaved["note"] = "saved again"  # other bytes, the same weights
    torch.save(resaved, tmp_path / "resaved.pt")
    for twin in (checkpoint, tmp_path / "copy.pt", tmp_path / "resaved.pt"):
        result = CliRunner().invoke(main, ["eval", str(checkpoint), str(phantom), "--out", str(tmp_path / "twice"),
                                           "--device", "cpu", "--no-progress", "--ensemble-with", str(twin)])
        assert result.exit_code != 0 and "the same model as" in str(result.exception), result.output
        assert not (tmp_path / "twice" / "summary.json").exists()
    run = tmp_path / "run"  # a training run's folder beside --ensemble-with was called 'an exported model'
    run.mkdir()
    shutil.copyfile(checkpoint, run / "best.pt")
    result = CliRunner().invoke(main, ["eval", str(run), str(phantom), "--out", str(tmp_path / "r"), "--device", "cpu",
                                       "--no-progress", "--ensemble-with", str(second)])
    assert result.exit_code != 0 and "a training run, not an export" in str(result.exception), result.output


def test_eval_of_a_checkpoint_whose_threshold_was_never_tuned_says_so(phantom, checkpoint, tmp_path):
    """An interrupted run's interim best.pt (no threshold_tuning) was warned of by hemseg-export only; hemseg eval
    scored it at its untuned threshold without a word. A tuned one is not warned of."""
    from hemseg.train.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(checkpoint)
    tuned = save_checkpoint(tmp_path / "tuned.pt", model, {**config, "threshold_tuning": {"metric": "pooled"}})
    s = evaluate_checkpoint(checkpoint, phantom, tmp_path / "ev", device="cpu", progress=False, n_overlays=0)
    assert any("records no threshold tuning" in w for w in s["warnings"])
    s = evaluate_checkpoint(tuned, phantom, tmp_path / "ev2", device="cpu", progress=False, n_overlays=0)
    assert not any("records no threshold tuning" in w for w in s["warnings"])
    skipped = save_checkpoint(tmp_path / "skipped.pt", model, {**config, "threshold_tuning": {
        "skipped": "the validation split has no lesion pixel", "metric": None}})  # said nothing: stop 52
    s = evaluate_checkpoint(skipped, phantom, tmp_path / "ev3", device="cpu", progress=False, n_overlays=0)
    assert any("was not tuned (the validation split has no lesion pixel)" in w for w in s["warnings"]), s["warnings"]


def test_an_ensemble_of_checkpoints_counts_the_training_images_of_every_member(phantom, checkpoint, tmp_path):
    """eval --ensemble-with compared the data with the first checkpoint's record only: the second member's
    training folder scored as held out (a QA finding of stop 51). Every member's slices count now, and a member
    that records none makes the count unknown (null), not 0, while what the others record is still said as a
    lower bound, naming the member that records none (the line named the first model)."""
    from hemseg.runtime.dataset import discover, image_pixel_digests
    from hemseg.train.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(checkpoint)
    samples = discover(phantom).samples
    half = len(samples) // 2
    first = sorted(set().union(*(image_pixel_digests(s.image) for s in samples[:half])))
    second = sorted(set().union(*(image_pixel_digests(s.image) for s in samples[half:])))
    a = save_checkpoint(tmp_path / "a.pt", model, {**config, "pixel_digests": first})
    model.head.bias.data += 0.01  # another model (ensembles of one model twice are refused)
    b = save_checkpoint(tmp_path / "b.pt", model, {**config, "pixel_digests": second})
    s = evaluate_checkpoint(a, phantom, tmp_path / "one", device="cpu", progress=False, n_overlays=0)
    assert s["training_images_in_data"] == half
    # which ones (one was named, as an example: a QA finding of stop 52), relative to the dataset
    assert s["training_images"] == [sm.image.relative_to(phantom).as_posix() for sm in samples[:half]]
    s = evaluate_checkpoint(a, phantom, tmp_path / "two", device="cpu", progress=False, n_overlays=0,
                            ensemble_with=[b])
    assert s["training_images_in_data"] == len(samples)
    assert any(f"{len(samples)} of the {len(samples)} images are, by their pixels" in w for w in s["warnings"])
    c = save_checkpoint(tmp_path / "c.pt", model, {k: v for k, v in config.items() if k != "pixel_digests"})
    s = evaluate_checkpoint(a, phantom, tmp_path / "three", device="cpu", progress=False, n_overlays=0,
                            ensemble_with=[c])
    assert s["training_images_in_data"] is None
    assert any(w.startswith(f"at least {half} of the {len(samples)} images are, by their pixels") and
               f"({c} records none)" in w for w in s["warnings"]), s["warnings"]


def test_training_slices_are_told_again_with_their_values_rescaled(phantom, checkpoint, tmp_path):
    """A slice's digest was of its exact values: the training set saved as 16-bit PNG (x257), the usual 8 -> 16 bit
    conversion, scored as held out (stop 52). Digests of the values' ranks tell it again. A model recording the
    exact-value digests of stop 51 still tells the slices with the same values (they were dropped at first)."""
    import shutil

    import cv2

    from hemseg.runtime.dataset import discover, exact_pixel_digests, image_pixel_digests
    from hemseg.runtime.io import read_image
    from hemseg.train.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(checkpoint)
    samples = discover(phantom).samples
    digests = sorted(set().union(*(image_pixel_digests(s.image) for s in samples)))
    trained = save_checkpoint(tmp_path / "a.pt", model, {**config, "pixel_digests": digests})
    copy = tmp_path / "sixteen"
    shutil.copytree(phantom, copy)
    for s in discover(copy).samples:
        img = cv2.imread(str(s.image), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8
        cv2.imwrite(str(s.image), img.astype(np.uint16) * 257)
    s = evaluate_checkpoint(trained, copy, tmp_path / "ev", device="cpu", progress=False, n_overlays=0)
    assert s["training_images_in_data"] == len(samples)
    exact = sorted({d for s in samples for d in exact_pixel_digests(read_image(s.image).data) if d})
    assert exact and not set(exact) & set(digests)
    legacy = save_checkpoint(tmp_path / "b.pt", model, {**config, "pixel_digests": exact})
    s = evaluate_checkpoint(legacy, phantom, tmp_path / "ev2", device="cpu", progress=False, n_overlays=0)
    assert s["training_images_in_data"] == len(samples)


def test_eval_cli(phantom, checkpoint, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["eval", str(checkpoint), str(phantom), "--out", str(out), "--device", "cpu",
                                       "--no-progress", "--batch-size", "3"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Dice" in result.output and (out / "summary.json").is_file()


def test_eval_refuses_a_non_hemseg_checkpoint(phantom, tmp_path):
    bad = tmp_path / "plain.pt"
    torch.save(build_model("unet", base=2).state_dict(), bad)
    with pytest.raises(ModelError, match="not a hemseg checkpoint"):
        evaluate_checkpoint(bad, phantom, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    proc = subprocess.run([sys.executable, "-c", "from hemseg.cli import entry; entry()", "eval", str(bad),
                           str(phantom), "--out", str(tmp_path / "out2"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("hemseg: error:") and "Traceback" not in proc.stderr


def test_eval_warns_about_label_map_masks_unless_a_label_is_chosen(phantom, checkpoint, tmp_path, caplog):
    """Scoring against every nonzero value of a label map would score against other structures too."""
    import shutil

    import cv2

    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    mask_path = sorted(p for p in data.rglob("*.png") if p.parent.name == "masks")[0]
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    lesion = 255
    mask[10:14, 10:14] = lesion
    mask[:2, :2] = 7  # a second structure
    cv2.imwrite(str(mask_path), mask)
    with caplog.at_level("WARNING", logger="hemseg.runtime.dataset"):
        summary = evaluate_checkpoint(checkpoint, data, tmp_path / "a", device="cpu", progress=False, n_overlays=0)
    assert f"e.g. {mask_path.name}: 7, {lesion}" in caplog.text
    # in the report too (it was only in the log), for eval and eval-masks alike
    assert any(f"e.g. {mask_path.name}: 7, {lesion}" in w for w in summary["warnings"])
    from hemseg.train.evaluate import evaluate_masks

    pred = tmp_path / "pred"  # the masks scored as themselves
    for category in (d for d in data.iterdir() if (d / "masks").is_dir()):
        shutil.copytree(category / "masks", pred / category.name)
    masks = evaluate_masks(pred, data, tmp_path / "m", progress=False, n_overlays=0)
    assert any(f"e.g. {mask_path.name}: 7, {lesion}" in w for w in masks["warnings"])
    caplog.clear()
    with caplog.at_level("WARNING", logger="hemseg.runtime.dataset"):
        summary = evaluate_checkpoint(checkpoint, data, tmp_path / "b", labels=[lesion], device="cpu",
                                      progress=False, n_overlays=0)
    assert "more than one nonzero value" not in caplog.text
    assert not any("more than one nonzero value" in w for w in summary["warnings"])


def test_a_training_label_no_mask_holds_is_named_as_the_models_not_the_commands(phantom, checkpoint, tmp_path):
    """No --label given, the checkpoint's own (trained with --label 5) held by no mask: the error said '--label 5'
    as if the user had typed it."""
    from hemseg.errors import DatasetError
    from hemseg.train.checkpoint import load_checkpoint

    model, config = load_checkpoint(checkpoint)
    labelled = save_checkpoint(tmp_path / "labelled.pt", model, {**config, "labels": [5]})
    with pytest.raises(DatasetError, match=r"no mask holds the model's training labels \(its --label\) 5"):
        evaluate_checkpoint(labelled, phantom, tmp_path / "a", device="cpu", progress=False)
    with pytest.raises(DatasetError, match="no mask holds --label 6;"):
        evaluate_checkpoint(labelled, phantom, tmp_path / "b", labels=[6], device="cpu", progress=False)


@pytest.mark.parametrize("edit, says", [({"image_size": 64}, "image_size 64 disagrees with its preprocessing size 32"),
                                        ({"threshold": 1.5}, "threshold must be in (0, 1), got 1.5"),
                                        ({"threshold": 0.0}, "threshold must be in (0, 1), got 0.0"),
                                        ({"image_size": None}, "image_size None disagrees"),  # a traceback (retest)
                                        ({"image_size": 32.7}, "image_size 32.7 disagrees")])
def test_eval_refuses_a_checkpoint_that_contradicts_itself_as_export_does(phantom, checkpoint, tmp_path, edit, says):
    """hemseg-export refused a checkpoint whose image_size and preprocessing size disagree; hemseg eval evaluated it
    at the preprocessing size without a word, and a threshold of 1.5 failed naming no file (QA, stop 56)."""
    from hemseg.train.checkpoint import load_checkpoint

    model, config = load_checkpoint(checkpoint)
    edited = save_checkpoint(tmp_path / "edited.pt", model, {**config, **edit})
    with pytest.raises(ModelError, match=re.escape(says)) as exc:
        evaluate_checkpoint(edited, phantom, tmp_path / "ev", device="cpu", progress=False, n_overlays=0)
    assert exc.value.path == edited and not (tmp_path / "ev").exists()
