"""hemseg train: outputs, the three models, k-fold CV, resume, determinism, refusals and initial weights (CPU, small).

One FCN-ResNet50 run (2 phantom images per category, 64 px, 1 epoch) is shared by the tests of its outputs; the
other behaviours use a tiny U-Net (base 8), which trains in a second or two.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from hemseg.cli import main  # noqa: E402
from hemseg.errors import DatasetError, UsageError  # noqa: E402
from hemseg.train.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from hemseg.train.device import resolve_precision  # noqa: E402
from hemseg.train.trainer import run_training  # noqa: E402

pytestmark = pytest.mark.torch

METRIC_KEYS = ("dice", "iou", "precision", "recall", "accuracy", "epoch", "threshold", "wall_time_s", "images_per_s",
               "init", "device")
CONFIG_KEYS = ("model", "model_kwargs", "preprocess", "image_size", "threshold", "labels", "data_fingerprint", "init",
               "versions", "epoch", "metrics", "hemseg_version", "train_stems", "val_stems", "split_seed")
HISTORY_COLUMNS = ["step", "epoch", "train_loss", "val_loss", "val_dice", "val_dice_global", "val_iou",
                   "val_pred_fraction", "lr", "seconds", "precision"]
#: what ``--precision auto`` (the FCN run's default) picks on the CPU the tests run on: bf16 where it has AMX-BF16 or
#: AVX512-BF16, else fp32 (CI machines differ)
AUTO = resolve_precision("auto", torch.device("cpu")).name
TINY = dict(model="unet", unet_base=8, image_size=32, batch_size=8, device="cpu", progress=False, weights="none")


@pytest.fixture(scope="module")
def phantom(small_phantom) -> Path:
    return small_phantom  # conftest.py: 24 slices, 64-96 px, read only


@pytest.fixture(scope="module")
def fcn_run(phantom, tmp_path_factory) -> tuple[Path, dict]:
    """FCN-ResNet50, 1 epoch at 64 px, ``--weights auto`` with an empty torch hub cache (so: random init)."""
    out = tmp_path_factory.mktemp("fcn") / "run"
    hub = tmp_path_factory.mktemp("hub")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.hub, "get_dir", lambda: str(hub))
        metrics = run_training(phantom, out, model="fcn_resnet50", epochs=1, image_size=64, batch_size=8,
                               weights="auto", device="cpu", progress=False, seed=0)
    return out, metrics


@pytest.fixture(scope="module")
def tiny_run(phantom, tmp_path_factory) -> tuple[Path, dict]:
    """A U-Net (base 8) trained 1 epoch at 32 px without filters: the base of the resume/determinism/weights tests."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    return out, _tiny(phantom, out, no_preprocess=True)


def _history(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _crashing_at(step: int, real):
    """``real`` (fit's train_step) that raises KeyboardInterrupt on its ``step``-th call: a run stopped mid-way."""
    calls = []

    def train_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return train_step


def _tiny(phantom: Path, out: Path, **kw) -> dict:
    length = {} if {"steps", "minutes", "epochs"} & set(kw) else {"epochs": 1}
    return run_training(phantom, out, **{**TINY, **length, **kw})


# -- one FCN run: the files and their contents -------------------------------------------------------------------
def test_fcn_run_writes_the_run_folder(fcn_run):
    out, metrics = fcn_run
    for name in ("best.pt", "last.pt", "metrics.json", "history.csv", "config.json"):
        assert (out / name).is_file(), name
    written = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in written, key
    assert written["checkpoint"] == str((out / "best.pt").absolute())  # (it was as --out was given: stop 52)
    assert written["dice"] == pytest.approx(metrics["dice"]) and written["epochs_trained"] == 1
    assert written["recipe"] == "hemseg" and written["amp"] == AUTO and written["selection"] == "pooled"
    assert written["steps"] >= 1 and written["minutes_budget"] is None and written["seconds"] > 0
    assert 0.0 < written["threshold"] < 1.0
    assert written["init"] == "random" and written["device"].startswith("cpu")
    scale = written["object_scale"]  # the phantom's lesions measured at the training size (hemseg.train.object_scale)
    assert scale["image_size"] == 64 and scale["output_stride"] == 8 and scale["n_lesions"] > 0
    assert 0 < scale["p10_width_px"] <= scale["median_width_px"] < 64
    rows = _history(out / "history.csv")
    assert list(rows[0]) == HISTORY_COLUMNS and rows[-1]["step"] == str(written["steps"])
    assert float(rows[-1]["epoch"]) == 1 and rows[0]["precision"] == AUTO
    best = next(r for r in rows if r["step"] == str(written["step"]))
    assert float(best["val_dice_global"]) == pytest.approx(written["dice_global"], abs=1e-5)
    assert max(float(r["val_dice_global"]) for r in rows) == pytest.approx(written["dice_global"], abs=1e-5)
    # the selection's metrics are at the validations' threshold, said beside the tuned one (a script paired them)
    assert written["metrics_threshold"] == 0.5 and "threshold" in written


def test_fcn_best_checkpoint_follows_the_contract(fcn_run, phantom):
    out, metrics = fcn_run
    raw = torch.load(out / "best.pt", weights_only=True, map_location="cpu")
    assert raw["format"] == "hemseg-checkpoint" and raw["format_version"] == 1
    config = raw["config"]
    for key in CONFIG_KEYS:
        assert key in config, key
    json.dumps(config)  # JSON-able
    assert config["model"] == "fcn_resnet50" and config["model_kwargs"] == {}
    assert config["image_size"] == 64 and config["preprocess"]["size"] == 64
    assert config["preprocess"]["nlm"] and config["preprocess"]["clahe"] and config["preprocess"]["bilateral"]
    assert config["threshold"] == metrics["threshold"] and "threshold_tuning" in config
    assert config["init"] == "random" and {"torch", "torchvision", "hemseg", "numpy", "cv2"} <= set(config["versions"])
    assert len(config["train_stems"]) + len(config["val_stems"]) == 24 and not set(config["train_stems"]) & set(
        config["val_stems"])
    from hemseg.runtime.dataset import dataset_fingerprint, discover, image_pixel_digests

    assert config["data_fingerprint"] == dataset_fingerprint(discover(phantom))
    # the slices trained and validated on, by their pixels (an evaluation on copies of them is told)
    assert config["pixel_digests"] == sorted(set().union(*(image_pixel_digests(s.image)
                                                           for s in discover(phantom).samples)))
    assert len(config["pixel_digests"]) == 24
    # every file its own case, said as hemseg data check says it (null read as 'not known')
    run_config = json.loads((out / "config.json").read_text())
    assert run_config["split_unit"] == "sample" and run_config["cases_from"] == "files"
    model, _ = load_checkpoint(out / "best.pt")
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    last = read_checkpoint(out / "last.pt")
    assert {"optimizer_state", "train_state"} <= set(last) and last["train_state"]["step"] == metrics["steps"]
    assert config["recipe"] == "hemseg" and config["precision"] == AUTO and config["step"] == metrics["step"]


def test_refuses_to_overwrite_a_finished_run(fcn_run, phantom):
    out, _ = fcn_run
    before = (out / "best.pt").stat().st_mtime_ns
    with pytest.raises(UsageError, match="already holds a finished training run"):
        run_training(phantom, out, model="fcn_resnet50", epochs=1, image_size=64, device="cpu", progress=False)
    with pytest.raises(UsageError, match="other settings \\(lr \\(--lr\\): .*repeat the run's own options \\(its config"):
        run_training(phantom, out, model="fcn_resnet50", epochs=1, image_size=64, lr=5e-4, device="cpu",
                     progress=False, resume=True)
    with pytest.raises(UsageError, match="other settings.*recipe.name \\(--recipe\\): 'hemseg' -> 'paper'"):
        run_training(phantom, out, model="fcn_resnet50", epochs=1, image_size=64, recipe="paper", device="cpu",
                     progress=False, resume=True)
    with pytest.raises(UsageError, match="preprocess.size \\(--image-size\\): 64 -> 32"):  # named the config key only
        run_training(phantom, out, model="fcn_resnet50", epochs=1, image_size=32, device="cpu", progress=False,
                     resume=True)
    # resuming a finished run with no more epochs to train does nothing
    again = run_training(phantom, out, model="fcn_resnet50", epochs=1, image_size=64, device="cpu", progress=False,
                         resume=True)
    assert again["dice"] == pytest.approx(json.loads((out / "metrics.json").read_text())["dice"])
    assert (out / "best.pt").stat().st_mtime_ns == before


def test_cli_refusal_is_a_one_line_error(fcn_run, phantom):
    out, _ = fcn_run
    result = CliRunner().invoke(main, ["train", str(phantom), "--out", str(out), "--image-size", "64",
                                       "--device", "cpu", "--no-progress"])
    assert isinstance(result.exception, UsageError) and "--resume" in str(result.exception)


# -- the U-Nets, folds, resume, determinism ----------------------------------------------------------------------
@pytest.mark.parametrize("model", ["unet", "attention_unet"])
def test_unet_variants_train(phantom, tmp_path, model):
    metrics = _tiny(phantom, tmp_path / "run", model=model, skip=("nlm",))
    net, config = load_checkpoint(tmp_path / "run" / "best.pt")
    assert config["model"] == model and config["model_kwargs"] == {"base": 8}
    assert config["preprocess"]["nlm"] is False and config["preprocess"]["clahe"] is True
    assert metrics["model"] == model and 0.0 <= metrics["dice"] <= 1.0
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 32, 32)


def test_kfold_cross_validation_via_cli(phantom, tmp_path, monkeypatch):
    import hemseg.train.data as data_mod

    gin_calls = []
    real_gin = data_mod.random_appearance
    monkeypatch.setattr(data_mod, "random_appearance", lambda x, p: gin_calls.append(p) or real_gin(x, p))
    out = tmp_path / "cv"
    result = CliRunner().invoke(main, ["train", str(phantom), "--out", str(out), "--model", "unet", "--unet-base", "8",
                                       "--epochs", "1", "--image-size", "32", "--folds", "2", "--weights", "none",
                                       "--intensity-remap", "0.5", "--invert", "0.25", "--lowres", "0.2", "--gin", "0.5", "--fov", "0.3", "--fov-shape", "box",
                                       "--device", "cpu",
                                       "--no-preprocess",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["folds"]) == 2 and metrics["n_folds"] == 2
    for k in (1, 2):
        assert (out / f"fold_{k}" / "best.pt").is_file() and (out / f"fold_{k}" / "metrics.json").is_file()
    assert metrics["dice"] == pytest.approx(metrics["mean"]["dice"])
    assert metrics["mean"]["dice"] == pytest.approx((metrics["folds"][0]["dice"] + metrics["folds"][1]["dice"]) / 2)
    assert "dice" in metrics["std"] and "iou" in metrics["mean"]
    # each sample is validated in exactly one fold
    vals = [set(read_checkpoint(out / f"fold_{k}" / "best.pt")["config"]["val_stems"]) for k in (1, 2)]
    assert not vals[0] & vals[1] and len(vals[0] | vals[1]) == 24
    augment = json.loads((out / "config.json").read_text())["recipe"]["augment"]
    assert augment["remap"] == 0.5 and augment["gin"] == 0.5 and augment["fov"] == 0.3 and augment["invert"] == 0.25
    assert augment["lowres"] == 0.2
    assert augment["fov_shape"] == "box"
    assert gin_calls and set(gin_calls) == {0.5}  # --gin reached the training slices
    rows = _history(out / "history.csv")
    assert sorted(set(r["fold"] for r in rows)) == ["1", "2"] and rows[0]["step"] == "1"
    # the CV line gave the mean per slice alone, which an all-background model raises on lesion-free slices
    assert f"val Dice pooled {metrics['mean']['dice_global']:.4f}" in result.output and "2-fold CV (" in result.output


def test_validation_scores_the_masks_at_the_images_own_size_as_eval_does(phantom, tmp_path):
    """Validation (checkpoint choice, threshold tuning, metrics.json) scored the masks shrunk to the network's size:
    on real cord MRI at 64 px it read 0.90 where hemseg eval of the same checkpoint on the same images read 0.77 (a
    QA finding of stop 52). Now it scores at each image's own size (64-96 px here, the network 32 px) as eval does:
    the tuned Dice training reports is hemseg eval's on the validation images."""
    from hemseg.train.evaluate import evaluate_checkpoint
    from hemseg.train.models import build_model

    torch.manual_seed(0)  # a start that marks pixels (a few steps from the lesion prior mark none: 0 = 0 proves nothing)
    start = build_model("unet", base=8)
    torch.save(start.state_dict(), tmp_path / "start.pt")
    metrics = _tiny(phantom, tmp_path / "run", steps=2, precision="fp32", seed=3, weights=str(tmp_path / "start.pt"))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    val = tmp_path / "val"
    for sub in ("images", "masks"):
        (val / sub).mkdir(parents=True)
        for stem in config["splits"][0]["val"]:
            [src] = (phantom / stem.rsplit("_", 1)[0] / sub).glob(f"{stem}.*")
            shutil.copy(src, val / sub / src.name)
    s = evaluate_checkpoint(tmp_path / "run" / "best.pt", val, tmp_path / "ev", device="cpu", progress=False,
                            n_overlays=0)
    assert s["n_images"] == len(config["splits"][0]["val"]) and s["threshold"] == metrics["threshold"]
    assert s["n_pred_empty"] < s["n_images"] and 0 < s["dice_global"] < 1  # a prediction to score, not 0 = 0
    assert s["dice_global"] == pytest.approx(metrics["val_dice_tuned"], abs=1e-9)


def test_metrics_name_the_checkpoint_by_an_absolute_path(phantom, tmp_path, monkeypatch):
    """metrics.json's checkpoint was the path as --out was given ('run/best.pt'): relative to the shell's folder of
    that day, it named nothing when read from elsewhere (a QA finding of stop 52)."""
    monkeypatch.chdir(tmp_path)
    metrics = _tiny(phantom, Path("rel"), steps=2)
    assert metrics["checkpoint"] == str(tmp_path / "rel" / "best.pt")
    assert json.loads((tmp_path / "rel" / "metrics.json").read_text())["checkpoint"] == metrics["checkpoint"]


def test_two_runs_with_the_same_seed_agree(phantom, tiny_run, tmp_path):
    """CPU training is deterministic: same seed, same data -> same weights and metrics."""
    one_dir, one = tiny_run
    again = _tiny(phantom, tmp_path / "again", no_preprocess=True)
    for key in ("dice", "iou", "precision", "recall", "accuracy", "val_loss", "threshold"):
        assert one[key] == again[key], key
    sd1 = read_checkpoint(one_dir / "last.pt")["state_dict"]
    sd2 = read_checkpoint(tmp_path / "again" / "last.pt")["state_dict"]
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_paper_run_resumed_to_more_epochs_matches_an_uninterrupted_run(phantom, tmp_path):
    """paper recipe (constant learning rate): 1 epoch + --resume to 2 epochs == 2 epochs straight (CPU, same seed)."""
    _tiny(phantom, tmp_path / "resumed", recipe="paper", no_preprocess=True)
    _tiny(phantom, tmp_path / "resumed", recipe="paper", epochs=2, resume=True, no_preprocess=True)
    straight = _tiny(phantom, tmp_path / "straight", recipe="paper", epochs=2, no_preprocess=True)
    resumed_rows = _history(tmp_path / "resumed" / "history.csv")
    straight_rows = _history(tmp_path / "straight" / "history.csv")
    assert [r["epoch"] for r in resumed_rows] == ["1", "2"]  # the paper validates once per epoch
    for a, b in zip(resumed_rows, straight_rows):
        assert {k: a[k] for k in ("train_loss", "val_loss", "val_dice")} == \
            {k: b[k] for k in ("train_loss", "val_loss", "val_dice")}
    last = read_checkpoint(tmp_path / "resumed" / "last.pt")
    assert last["train_state"]["step"] == straight["steps"] and last["config"]["epoch"] == 2
    resumed_metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert resumed_metrics["epochs_trained"] == 2 and resumed_metrics["dice"] == straight["dice"]
    assert resumed_metrics["recipe"] == "paper" and resumed_metrics["selection"] == "mean"


def test_a_stopped_budget_run_names_the_length_its_resume_trains_to(phantom, tmp_path, monkeypatch, caplog):
    """A --minutes run re-plans after each validation, after last.pt is saved: stopped later, it said 'step 102 of
    170' and --resume went on to the 153 last.pt was saved with (a QA finding of stop 52). The stop names 153."""
    import hemseg.train.fit as fit_mod

    def planned(s, state, trained, criterion, make_train_ds, *args):
        state["total_steps"] = 6
        return None, make_train_ds(None)

    monkeypatch.setattr(fit_mod, "plan_budget", planned)
    monkeypatch.setattr(fit_mod, "replan", lambda s, step, total, *args: total + 2)  # 6 -> 8 -> 10 ...
    real = fit_mod.train_step
    monkeypatch.setattr(fit_mod, "train_step", _crashing_at(5, real))  # after the validation of step 4 (plan 8)
    kw = dict(minutes=5, val_every=2, no_preprocess=True)
    with pytest.raises(KeyboardInterrupt), caplog.at_level("WARNING", logger="hemseg.train"):
        _tiny(phantom, tmp_path / "run", **kw)
    saved = read_checkpoint(tmp_path / "run" / "last.pt")["train_state"]
    assert (saved["step"], saved["total_steps"]) == (4, 8)
    assert "stopped at step 4 of 8" in caplog.text  # not "of 10", the plan made after last.pt was saved
    monkeypatch.setattr(fit_mod, "train_step", real)
    assert _tiny(phantom, tmp_path / "run", resume=True, **kw)["steps"] == 8


def test_a_resumed_runs_config_names_every_sessions_precision(phantom, tmp_path, monkeypatch):
    """Resumed in another precision, config.json said the last session's only ("fp32") where metrics.json said
    "bf16+fp32" (a QA finding of stop 52): both say every session's."""
    import hemseg.train.fit as fit_mod

    kw = dict(steps=4, val_every=2, no_preprocess=True)
    real = fit_mod.train_step
    monkeypatch.setattr(fit_mod, "train_step", _crashing_at(3, real))
    with pytest.raises(KeyboardInterrupt):
        _tiny(phantom, tmp_path / "run", precision="fp32", **kw)
    monkeypatch.setattr(fit_mod, "train_step", real)
    monkeypatch.setenv("HEMSEG_CPU_FLAGS", "avx512_bf16")  # a CPU with bf16 (emulated where it has none: tiny)
    metrics = _tiny(phantom, tmp_path / "run", precision="bf16", resume=True, **kw)
    assert metrics["amp"] == "fp32+bf16"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "fp32+bf16"


def test_a_resume_removes_the_temporary_files_of_a_killed_run(phantom, tmp_path, monkeypatch):
    """A run killed while writing last.pt left .last.pt.<random>.tmp (372 MB for an FCN-ResNet50) through every
    --resume (a QA finding of stop 53): the resume removes such files of its own names; other files stay."""
    import hemseg.train.fit as fit_mod

    kw = dict(steps=4, val_every=2, no_preprocess=True)
    real = fit_mod.train_step
    monkeypatch.setattr(fit_mod, "train_step", _crashing_at(3, real))
    with pytest.raises(KeyboardInterrupt):
        _tiny(phantom, tmp_path / "run", **kw)
    monkeypatch.setattr(fit_mod, "train_step", real)
    run = tmp_path / "run"
    killed = [run / ".last.pt.k1ll3d.tmp", run / ".best.pt.x.tmp", run / ".history.csv.y.tmp"]
    for f in killed:
        f.write_bytes(b"half a checkpoint")
    mine = run / ".notes.txt.z.tmp"
    mine.write_text("not the run's")
    _tiny(phantom, run, resume=True, **kw)
    assert not any(f.exists() for f in killed) and mine.exists()


def test_interrupted_hemseg_run_resumes_to_the_weights_of_a_straight_run(phantom, tmp_path, monkeypatch, caplog):
    """A crash after a validation loses nothing: --resume continues the same schedule, batches and augmentations."""
    import hemseg.train.fit as fit_mod

    kw = dict(steps=6, val_every=2, no_preprocess=True, crop=0.5, ema=True, patch=16)
    straight = _tiny(phantom, tmp_path / "straight", **kw)
    real = fit_mod.train_step
    monkeypatch.setattr(fit_mod, "train_step", _crashing_at(5, real))
    with pytest.raises(KeyboardInterrupt), caplog.at_level("WARNING", logger="hemseg.train"):
        _tiny(phantom, tmp_path / "resumed", **kw)
    assert read_checkpoint(tmp_path / "resumed" / "last.pt")["train_state"]["step"] == 4
    # the stop is said with what it leaves: an interim best.pt at an untuned threshold (only 'aborted' before)
    assert "stopped at step 4 of 6" in caplog.text and "its threshold not tuned (0.5)" in caplog.text
    assert "--resume" in caplog.text
    monkeypatch.setattr(fit_mod, "train_step", real)
    resumed = _tiny(phantom, tmp_path / "resumed", resume=True, **kw)
    a = read_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "resumed" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_loss"] for r in _history(tmp_path / "resumed" / "history.csv")] == \
        [r["val_loss"] for r in _history(tmp_path / "straight" / "history.csv")]
    assert resumed["dice_global"] == straight["dice_global"] and resumed["steps"] == 6
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["patch"] == 16
    with pytest.raises(UsageError, match="patch"):  # a run trained on patches is not continued on whole slices
        _tiny(phantom, tmp_path / "resumed", resume=True, **{**kw, "steps": 8, "patch": None})


def test_a_run_stopped_before_its_first_validation_says_no_model_was_saved(phantom, tmp_path, monkeypatch, caplog):
    """It named a best.pt that did not exist ('... best.pt is the best model so far'). And it left config.json in
    a folder that existed before, which then read as 'an unfinished training run: pass --resume' (a QA finding of
    stop 51): nothing of a fresh run stopped before its first checkpoint is kept, the user's files are."""
    import hemseg.train.fit as fit_mod

    real = fit_mod.train_step
    monkeypatch.setattr(fit_mod, "train_step", _crashing_at(2, real))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt), caplog.at_level("WARNING", logger="hemseg.train"):
        _tiny(phantom, tmp_path / "r", steps=4, val_every=4, no_preprocess=True)
    assert "stopped at step 0 of 4, before the first validation: no model was saved" in caplog.text
    assert "nothing of this run is kept" in caplog.text and "--resume` with the same options" not in caplog.text
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["notes.txt"]
    monkeypatch.setattr(fit_mod, "train_step", _crashing_at(2, real))
    with pytest.raises(KeyboardInterrupt):
        _tiny(phantom, tmp_path / "new" / "r", steps=4, val_every=4, no_preprocess=True)
    assert not (tmp_path / "new").exists()  # the folders it made, removed
    monkeypatch.setattr(fit_mod, "train_step", real)
    _tiny(phantom, tmp_path / "r", steps=4, val_every=4, no_preprocess=True)  # a plain run again, no --resume


def test_a_blank_training_image_is_warned_of_as_data_check_does(phantom, tmp_path, caplog):
    """hemseg data check flags an image of one value throughout; hemseg train trained on it without a word (a QA
    finding of stop 51)."""
    import shutil

    import cv2
    import numpy as np

    data = tmp_path / "d"
    shutil.copytree(phantom, data)
    blank = sorted((data).rglob("images/*.png"))[3]
    img = cv2.imread(str(blank), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(blank), np.full_like(img, 77))
    with caplog.at_level("WARNING", logger="hemseg.train"):
        _tiny(data, tmp_path / "r", steps=2, val_every=2, no_preprocess=True)
    assert f"1 blank image(s) (every pixel one value; nothing to learn from, check the export): {blank}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hemseg.train"):
        _tiny(phantom, tmp_path / "r2", steps=2, val_every=2, no_preprocess=True)
    assert "blank image" not in caplog.text


def test_one_scored_fold_has_no_spread():
    """A K-fold run with one fold holding validation lesions gave '+/- 0.0000' and std 0: one value has no spread."""
    import math

    from hemseg.train.trainer import _fold_summary

    one = _fold_summary([{"dice": 0.5, "dice_global": 0.6}, {"dice": None, "dice_global": None}])
    assert one["n_scored"] == 1 and one["mean"]["dice_global"] == 0.6 and math.isnan(one["std"]["dice_global"])
    two = _fold_summary([{"dice": 0.5, "dice_global": 0.6}, {"dice": 0.7, "dice_global": 0.8}])
    assert two["std"]["dice_global"] == pytest.approx(0.1)


def test_resume_needs_a_run(phantom, tmp_path):
    with pytest.raises(UsageError, match="no run to resume"):
        _tiny(phantom, tmp_path / "nothing", resume=True)
    mine = tmp_path / "mine"  # a history.csv of the user's: it was replaced by the run's without a word
    mine.mkdir()
    (mine / "history.csv").write_text("my,own,data\n")
    with pytest.raises(UsageError, match="holds history.csv but no hemseg training run's config.json"):
        _tiny(phantom, mine)
    assert (mine / "history.csv").read_text() == "my,own,data\n"


def test_a_run_saved_before_an_augmentation_option_existed_resumes(tmp_path):
    """A config.json without a later AugmentSpec field (here ``gin``) ran with that option off: resuming it with the
    option off is allowed, with it on is refused."""
    from hemseg.train.recipes import get_recipe
    from hemseg.train.trainer import _compare_for_resume

    old = {"recipe": get_recipe("hemseg").to_dict()}
    del old["recipe"]["augment"]["gin"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    _compare_for_resume(tmp_path, {"recipe": get_recipe("hemseg").to_dict()})
    with pytest.raises(UsageError, match="other settings"):
        _compare_for_resume(tmp_path, {"recipe": get_recipe("hemseg", gin=0.5).to_dict()})
    # a run saved before --fov-shape existed cut boxes: it resumes as box, not as the band of today's default
    del old["recipe"]["augment"]["fov_shape"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    _compare_for_resume(tmp_path, {"recipe": get_recipe("hemseg", fov_shape="box").to_dict()})
    with pytest.raises(UsageError, match="fov_shape"):
        _compare_for_resume(tmp_path, {"recipe": get_recipe("hemseg").to_dict()})


def test_a_run_saved_before_a_recipe_field_existed_resumes(tmp_path):
    """A config.json without a later Recipe field (here ``zero_init_residual``) ran with its default (off)."""
    from hemseg.train.recipes import get_recipe
    from hemseg.train.trainer import _compare_for_resume

    old = {"recipe": get_recipe("hemseg").to_dict()}
    del old["recipe"]["zero_init_residual"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    _compare_for_resume(tmp_path, {"recipe": get_recipe("hemseg", zero_init_residual=False).to_dict()})
    with pytest.raises(UsageError, match="zero_init_residual"):
        _compare_for_resume(tmp_path, {"recipe": get_recipe("hemseg", zero_init_residual=True).to_dict()})


def test_weights_path_loads_and_is_recorded(phantom, tiny_run, tmp_path):
    src = (tiny_run[0] / "best.pt").resolve()
    metrics = _tiny(phantom, tmp_path / "dst", no_preprocess=True, weights=str(src), lr=1e-12)
    assert metrics["init"] == f"file:{src}"
    config = read_checkpoint(tmp_path / "dst" / "best.pt")["config"]
    assert config["init"] == f"file:{src}"
    # with a vanishing learning rate the weights stay (almost) those of the source
    a = read_checkpoint(src)["state_dict"]["head.weight"]
    b = read_checkpoint(tmp_path / "dst" / "best.pt")["state_dict"]["head.weight"]
    assert torch.allclose(a, b, atol=1e-6)


# -- collapse to background ---------------------------------------------------------------------------------------
def test_evaluate_reports_predicted_and_true_foreground_fractions():
    from hemseg.train.loop import evaluate

    class Constant(torch.nn.Module):
        def __init__(self, logit: float) -> None:
            super().__init__()
            self.logit = logit

        def forward(self, x):
            return torch.full((x.shape[0], 1, *x.shape[2:]), self.logit)

    y = torch.zeros(2, 1, 8, 8)
    y[0, 0, :2, :4] = 1  # 8 of 128 pixels
    loader = [(torch.zeros(2, 3, 8, 8), y)]
    empty = evaluate(Constant(-10.0), loader, None, torch.device("cpu"), progress=False)
    assert empty["pred_fraction"] == 0 and empty["true_fraction"] == pytest.approx(8 / 128)
    full = evaluate(Constant(10.0), loader, None, torch.device("cpu"), progress=False)
    assert full["pred_fraction"] == 1 and full["true_fraction"] == pytest.approx(8 / 128)


def test_collapsed_to_background_needs_consecutive_empty_epochs():
    from hemseg.train.fit import COLLAPSE_EPOCHS, collapsed_to_background

    empty = {"val_pred_fraction": 0.0, "val_true_fraction": 0.01}
    some = {"val_pred_fraction": 0.002, "val_true_fraction": 0.01}
    no_lesions = {"val_pred_fraction": 0.0, "val_true_fraction": 0.0}
    assert collapsed_to_background([some] + [empty] * COLLAPSE_EPOCHS)
    assert not collapsed_to_background([empty] * (COLLAPSE_EPOCHS - 1))
    assert not collapsed_to_background([empty] * (COLLAPSE_EPOCHS - 1) + [some])
    assert not collapsed_to_background([no_lesions] * COLLAPSE_EPOCHS)  # nothing to find: not a collapse
    assert not collapsed_to_background([{"val_dice": 0.3}] * COLLAPSE_EPOCHS)  # history of an older run


@pytest.mark.parametrize("recipe", ["hemseg", "paper"])
def test_fit_warns_once_when_validation_predictions_stay_empty(phantom, tmp_path, monkeypatch, caplog, recipe):
    import hemseg.train.fit as fit_mod

    real = fit_mod.evaluate

    def never_predicts(*args, **kwargs):
        out = real(*args, **kwargs)
        return {**out, "pred_fraction": 0.0}

    monkeypatch.setattr(fit_mod, "evaluate", never_predicts)
    with caplog.at_level("WARNING", logger="hemseg.train.fit"):
        _tiny(phantom, tmp_path / "run", no_preprocess=True, steps=fit_mod.COLLAPSE_EPOCHS + 2, val_every=1,
              recipe=recipe)
    warnings = [r.getMessage() for r in caplog.records if "collapsed to background" in r.getMessage()]
    assert len(warnings) == 1 and "--pos-weight" in warnings[0]
    # the advice names the hemseg recipe only to a paper run, never to a run that already uses it
    assert ("--recipe hemseg" in warnings[0]) == (recipe == "paper")
    rows = _history(tmp_path / "run" / "history.csv")
    assert [float(r["val_pred_fraction"]) for r in rows] == [0.0] * len(rows)


@pytest.mark.parametrize("few", [200, 5])
def test_a_budget_of_few_steps_is_warned_about(phantom, tmp_path, monkeypatch, caplog, few):
    """--minutes that buy fewer than FEW_STEPS steps from random weights get a warning with cheaper alternatives."""
    import hemseg.train.budget as budget_mod

    monkeypatch.setattr(budget_mod, "probe_seconds", lambda *a, **k: (0.2, 0.01))  # 0.2 s per step, as measured
    monkeypatch.setattr(budget_mod, "FEW_STEPS", few)
    with caplog.at_level("INFO", logger="hemseg.train"):
        _tiny(phantom, tmp_path / "run", no_preprocess=True, minutes=0.1, weights="none")
    plan = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("budget "))
    assert 10 <= int(plan.split("-> ")[1].split()[0]) < 30, plan  # about 6 s at 0.2 s per step
    warned = [r.getMessage() for r in caplog.records if "rarely learn anything" in r.getMessage()]
    assert (len(warned) == 1 and "--patch" in warned[0]) if few == 200 else not warned


def test_fit_does_not_warn_when_empty_epochs_are_interrupted(phantom, tmp_path, monkeypatch, caplog):
    import hemseg.train.fit as fit_mod

    real, calls = fit_mod.evaluate, []

    def every_other_epoch_empty(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        return {**out, "pred_fraction": 0.0 if len(calls) % 2 else 0.01}

    monkeypatch.setattr(fit_mod, "evaluate", every_other_epoch_empty)
    with caplog.at_level("WARNING", logger="hemseg.train.fit"):
        _tiny(phantom, tmp_path / "run", no_preprocess=True, steps=fit_mod.COLLAPSE_EPOCHS + 2, val_every=1)
    assert not [r for r in caplog.records if "collapsed to background" in r.getMessage()]
    rows = _history(tmp_path / "run" / "history.csv")
    assert [float(r["val_pred_fraction"]) for r in rows] == [0.0, 0.01, 0.0, 0.01, 0.0]


# -- refusals before any work ------------------------------------------------------------------------------------
def test_option_refusals(phantom, tmp_path):
    with pytest.raises(UsageError, match="exclude each other"):
        _tiny(phantom, tmp_path / "a", no_preprocess=True, skip=("nlm",))
    with pytest.raises(UsageError, match="--folds"):
        _tiny(phantom, tmp_path / "b", folds=1)
    with pytest.raises(UsageError, match="unknown model"):
        _tiny(phantom, tmp_path / "c", model="segformer")
    with pytest.raises(UsageError, match="unknown training option"):
        _tiny(phantom, tmp_path / "d", learning_rate=1)
    with pytest.raises(UsageError, match="val-fraction"):
        _tiny(phantom, tmp_path / "e", val_fraction=1.5)
    with pytest.raises(UsageError, match="--steps and --epochs exclude each other"):
        _tiny(phantom, tmp_path / "f", steps=10, epochs=2)
    with pytest.raises(UsageError, match="unknown recipe"):
        _tiny(phantom, tmp_path / "g", recipe="nnunet")
    with pytest.raises(UsageError, match="--crop"):
        _tiny(phantom, tmp_path / "h", crop=1.5)
    for bad in (24, 48):  # not a multiple of 16; larger than --image-size 32
        with pytest.raises(UsageError, match="--patch"):
            _tiny(phantom, tmp_path / "h", patch=bad)
    with pytest.raises(UsageError, match="too short"):
        _tiny(phantom, tmp_path / "i", minutes=0.001, no_preprocess=True)
    with pytest.raises(UsageError, match="--dice"):
        _tiny(phantom, tmp_path / "h", dice="focal")
    with pytest.raises(UsageError, match="--image-size must be <= 4096"):  # was OOM-killed at 100000
        _tiny(phantom, tmp_path / "h", image_size=100_000)
    with pytest.raises(UsageError, match="exclude each other"):
        _tiny(phantom, tmp_path / "h", dice="blob", dice_loss=True)
    assert not any((tmp_path / x).exists() and any((tmp_path / x).iterdir()) for x in "abcdefghi")
    assert not (tmp_path / "i").exists()  # a run refused after it made its folder removes the (empty) folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_is_an_error(phantom, tmp_path):
    with pytest.raises(UsageError, match="CUDA is not available"):
        _tiny(phantom, tmp_path / "run", device="cuda")


def test_empty_dataset_is_refused(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    with pytest.raises(DatasetError, match="no image/mask pairs"):
        _tiny(tmp_path / "data", tmp_path / "run")


def test_resume_of_a_run_without_its_last_checkpoint_is_refused(phantom, tiny_run, tmp_path):
    """A finished run whose last.pt is gone cannot be continued: started afresh it would overwrite best.pt."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    (out / "last.pt").unlink()
    before = (out / "best.pt").read_bytes()
    with pytest.raises(UsageError, match="last.pt is missing"):
        _tiny(phantom, out, resume=True, epochs=2, no_preprocess=True)
    assert (out / "best.pt").read_bytes() == before


def _lesion_free_validation_data(root: Path) -> tuple[Path, Path]:
    """Six 48 px PNG pairs: four with a bright disc (and its mask) for training, two lesion-free for validation."""
    import cv2
    import numpy as np

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        img = rng.integers(20, 60, (48, 48)).astype(np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        if i < 4:
            cv2.circle(mask, (24, 24), 8, 255, -1)
            img[mask > 0] = 220
        cv2.imwrite(str(root / "images" / f"s{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"s{i}.png"), mask)
    splits = root.parent / "splits.json"
    splits.write_text(json.dumps([{"train": ["s0", "s1", "s2", "s3"], "val": ["s4", "s5"]}]))
    return root, splits


def test_a_lesion_free_validation_split_keeps_the_last_model_and_reports_no_dice(tmp_path, caplog):
    """Dice cannot rank checkpoints on validation images without a lesion (predicting nothing scores 1): the last
    validated model is kept, the threshold stays 0.5, metrics.json has no Dice, and a warning says why."""
    data, splits = _lesion_free_validation_data(tmp_path / "d")
    with caplog.at_level("WARNING", logger="hemseg.train"):
        metrics = run_training(data, tmp_path / "run", **{**TINY, "batch_size": 2}, steps=4, val_every=2,
                               splits=splits, no_preprocess=True)
    assert metrics["val_has_lesion"] is False and metrics["dice"] is None and metrics["dice_global"] is None
    assert metrics["step"] == metrics["steps"] == 4 and metrics["threshold"] == 0.5
    assert metrics["val_dice_tuned"] is None and metrics["selection"] == "last"
    assert any("has no lesion pixel" in r.getMessage() for r in caplog.records)
    assert read_checkpoint(tmp_path / "run" / "best.pt")["config"]["step"] == 4
    # history.csv (and the log) showed val Dice 1.0 there, a perfect model on a plot: NaN, as metrics.json says null
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert len(rows) == 2 and all(r[k] == "nan" for r in rows for k in ("val_dice", "val_dice_global", "val_iou"))
    assert float(rows[-1]["val_loss"]) >= 0


def test_the_train_summary_line_names_the_tuned_dice_and_lesion_free_validation():
    from hemseg.cli.train_cmd import _summary_line

    run = {"step": 40, "steps": 50, "seconds": 12.0, "amp": "bf16", "threshold": 0.0597, "selection": "pooled"}
    line = _summary_line({**run, "dice": 0.2, "dice_global": 0.22, "val_dice_tuned": 0.414}, Path("R"))
    assert "pooled 0.2200" in line and "tuned threshold 0.0597: Dice (pooled) 0.4140" in line
    line = _summary_line({**run, "dice": None, "dice_global": None, "val_dice_tuned": None}, Path("R"))
    assert "no lesion in the validation split" in line and "0.0597" not in line
    folds = {"n_folds": 3, "n_scored": 2, "mean": {"dice": 0.5}, "std": {"dice": 0.1}, "folds": []}
    assert "over the 2 fold(s) with validation lesions" in _summary_line(folds, Path("R"))
    # the pooled Dice first, as for one split (a model predicting nothing showed only 'Dice 0.3333 +/- 0.1667')
    folds = {"n_folds": 2, "n_scored": 2, "mean": {"dice": 0.3333, "dice_global": 0.0},
             "std": {"dice": 0.1667, "dice_global": 0.0}, "folds": []}
    assert "2-fold validation Dice pooled 0.0000 +/- 0.0000, per slice 0.3333 +/- 0.1667;" in _summary_line(
        folds, Path("R"))


def test_training_on_masks_that_are_mostly_lesion_is_warned_about(tmp_path, caplog):
    """Inverted masks (the background marked) train without complaint otherwise: the lesion share is named."""
    import cv2
    import numpy as np

    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    for i in range(4):
        mask = np.full((32, 32), 255, np.uint8)
        mask[8:16, 8:16] = 0
        cv2.imwrite(str(tmp_path / "d" / "images" / f"s{i}.png"), (mask // 3).astype(np.uint8))
        cv2.imwrite(str(tmp_path / "d" / "masks" / f"s{i}.png"), mask)
    with caplog.at_level("WARNING", logger="hemseg"):
        run_training(tmp_path / "d", tmp_path / "run", **{**TINY, "batch_size": 2}, steps=1, no_preprocess=True)
    assert any("of all pixels as lesion" in r.getMessage() for r in caplog.records)


def test_unused_training_options_are_warned_about_and_folds_0_is_refused(phantom, tmp_path, caplog):
    """--val-fraction with --folds and --ema-decay without --ema were dropped silently; --folds 0 meant 'no
    cross-validation' while 1 and -1 were refused."""
    args = ["train", str(phantom), "--out", str(tmp_path / "r"), "--model", "unet", "--unet-base", "8",
            "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--no-progress", "--weights", "none",
            "--no-preprocess", "--steps", "1"]
    with caplog.at_level("WARNING", logger="hemseg"):
        res = CliRunner().invoke(main, args + ["--folds", "2", "--val-fraction", "0.5", "--ema-decay", "0.9"])
    assert res.exit_code == 0, res.output
    said = [r.getMessage() for r in caplog.records] + [res.output]  # the CLI's logging may not propagate
    assert any("--val-fraction is not used: --folds" in m for m in said), res.output
    assert any("--ema-decay is not used without --ema" in m for m in said)
    caplog.clear()
    fcn = ["train", str(phantom), "--out", str(tmp_path / "f"), "--model", "fcn_resnet50", "--unet-base", "8",
           "--image-size", "32", "--batch-size", "2", "--device", "cpu", "--no-progress", "--weights", "none",
           "--no-preprocess", "--steps", "1"]
    with caplog.at_level("WARNING", logger="hemseg"):
        res = CliRunner().invoke(main, fcn)
    assert res.exit_code == 0, res.output
    said = [r.getMessage() for r in caplog.records] + [res.output]
    assert any("--unet-base is not used" in m for m in said)  # was dropped without a word
    res = CliRunner().invoke(main, args[:3] + [str(tmp_path / "r0"), "--folds", "0"])
    assert res.exit_code == 2 and "--folds" in res.output


def test_an_ema_decay_without_ema_is_not_refused_after_being_called_unused():
    """--ema-decay 1.5 without --ema: 'not used without --ema', then refused for its value."""
    from hemseg.train.trainer import TrainOptions

    assert TrainOptions(ema=False, ema_decay=1.5).ema_decay == 1.5
    with pytest.raises(UsageError, match="--ema-decay must be between 0 and 1"):
        TrainOptions(ema=True, ema_decay=1.5)


def test_augmentation_options_with_no_augment_are_refused(phantom, tmp_path):
    """--no-augment --crop 1 (or --fov, --gin, --invert, ...) trained without them, bit for bit, while config.json
    recorded the crop probability: now refused, before anything is written."""
    args = ["train", str(phantom), "--out", str(tmp_path / "r"), "--model", "unet", "--unet-base", "8",
            "--image-size", "32", "--device", "cpu", "--no-progress", "--no-preprocess", "--steps", "1",
            "--no-augment"]
    for extra, named in ((["--crop", "1"], "--crop 1: an augmentation"), (["--fov", "1", "--gin", "0.5"], "--fov 1, --gin 0.5"),
                         (["--fov-shape", "box"], "--fov-shape box")):
        res = CliRunner().invoke(main, args + extra)
        said = res.output + str(res.exception)
        assert res.exit_code != 0 and named in said and "--no-augment turns augmentation off" in said, said
        assert not (tmp_path / "r").exists()
    res = CliRunner().invoke(main, args + ["--crop", "0"])  # a zero probability says the same as --no-augment
    assert res.exit_code == 0, res.output


def test_a_run_stopped_between_best_and_last_at_its_first_validation_resumes(phantom, tmp_path, monkeypatch):
    """Ctrl-C after best.pt and before last.pt at the first validation (a second's window with FCN-ResNet50's
    last.pt): --resume and hemseg report's rerun were refused for good ('last.pt is missing')."""
    import hemseg.train.fit as fit_mod

    kw = dict(steps=4, val_every=2, no_preprocess=True)
    straight = _tiny(phantom, tmp_path / "straight", **kw)
    real = fit_mod.save_checkpoint

    def stop_before_last(path, *args, **kwargs):
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(fit_mod, "save_checkpoint", stop_before_last)
    with pytest.raises(KeyboardInterrupt):
        _tiny(phantom, tmp_path / "cut", **kw)
    assert (tmp_path / "cut" / "best.pt").is_file() and not (tmp_path / "cut" / "last.pt").exists()
    monkeypatch.setattr(fit_mod, "save_checkpoint", real)
    resumed = _tiny(phantom, tmp_path / "cut", resume=True, **kw)
    assert resumed["dice_global"] == straight["dice_global"] and resumed["steps"] == 4
    a = read_checkpoint(tmp_path / "straight" / "best.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "cut" / "best.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_training_into_a_folder_in_use_is_refused(phantom, tmp_path):
    """Two trainings into one --out both exited 0, leaving one run's config.json beside the other's checkpoints."""
    from hemseg.runtime.io.lock import folder_lock

    out = tmp_path / "run"
    out.mkdir()
    with folder_lock(out, "hemseg train"):
        with pytest.raises(UsageError, match="another hemseg command is writing into this folder"):
            _tiny(phantom, out, steps=2, val_every=2, no_preprocess=True)
    assert list(out.iterdir()) == []


def test_the_resume_refusal_stays_readable_when_the_split_differs():
    """A --resume refused for another split printed both stem lists whole: one line of thousands of characters."""
    from hemseg.train.trainer import _difference

    old = [{"train": [f"case_{i:04d}" for i in range(500)], "val": ["a"]}]
    line = _difference("splits", old, [{"train": ["x"], "val": ["y"]}])
    assert line.startswith("splits (--splits, or the split --seed / --val-fraction / --folds draw): [{'train': "
                           "['case_0000'") and len(line) < 300 and "..." in line
    assert _difference("lr", 0.001, 0.01) == "lr (--lr): 0.001 -> 0.01"
    # each as the user types it (QA, stop 54): config keys were named, another recipe listed all its fields
    assert _difference("preprocess", {"size": 64, "nlm": True}, {"size": 64, "nlm": False}) == \
        "preprocess.nlm (--no-preprocess / --skip): True -> False"
    assert _difference("recipe", {"name": "hemseg", "lr": 1e-3, "augment": {"fov": 0.5}},
                       {"name": "paper", "lr": 1e-4, "augment": {"fov": 0.0}}) == \
        "recipe.name (--recipe): 'hemseg' -> 'paper'"
    assert _difference("recipe", {"name": "hemseg", "augment": {"fov": 0.5, "remap": 0.0}},
                       {"name": "hemseg", "augment": {"fov": 0.3, "remap": 0.3}}) == \
        "recipe.augment.fov (--fov): 0.5 -> 0.3; recipe.augment.remap (--intensity-remap): 0.0 -> 0.3"
    assert _difference("recipe", {"lr": 1, "augment": {"gin": 0.0, "fov": 0.5}}, {"lr": 1, "augment": {"gin": 0.5,
                       "fov": 0.5}}) == "recipe.augment.gin (--gin): 0.0 -> 0.5"


def test_a_resume_with_other_workers_says_it_will_not_match(tmp_path, caplog):
    """--workers may change on resume (a speed setting), but the augmentations are drawn in the workers: the resumed
    run then no longer ends with the weights of an uninterrupted one, which was said nowhere."""
    from hemseg.train.trainer import _compare_for_resume

    config = {"model": "unet", "seed": 0, "workers": 0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="hemseg"):
        _compare_for_resume(tmp_path, dict(config))
        assert not caplog.records
        _compare_for_resume(tmp_path, {**config, "workers": 2})
    assert "--resume with --workers 2 (the run was started with 0)" in caplog.text
    assert "will not end with the weights of an uninterrupted run" in caplog.text


def test_a_training_split_without_a_lesion_is_refused_before_training(tmp_path):
    """With the only lesion image in validation the run trained, exited 0 and advised a longer run."""
    import cv2
    import numpy as np

    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(tmp_path / "d" / "images" / f"s{i}.png"), rng.integers(0, 255, (32, 32), dtype=np.uint8))
        mask = np.zeros((32, 32), np.uint8)
        if i == 4:
            mask[10:20, 10:20] = 255
        cv2.imwrite(str(tmp_path / "d" / "masks" / f"s{i}.png"), mask)
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps([{"train": ["s0", "s1", "s2"], "val": ["s3", "s4"]}]))
    with pytest.raises(DatasetError, match="the training split .* has no lesion pixel: .*validation split \\(s4\\)"):
        run_training(tmp_path / "d", tmp_path / "run", model="unet", unet_base=8, image_size=32, steps=2,
                     device="cpu", splits=splits, progress=False)
    assert not (tmp_path / "run").exists()


def test_one_pair_is_refused_naming_the_data(tmp_path):
    import cv2
    import numpy as np

    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "d" / "images" / "a.png"), np.full((32, 32), 90, np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    mask[4:9, 4:9] = 255
    cv2.imwrite(str(tmp_path / "d" / "masks" / "a.png"), mask)
    with pytest.raises(DatasetError, match=f"{tmp_path / 'd'}: 1 image/mask pair; training needs at least 2"):
        run_training(tmp_path / "d", tmp_path / "run", **TINY, steps=1)
    # --folds larger than the samples: the dataset named too (it was, only where cases.csv grouped them)
    cv2.imwrite(str(tmp_path / "d" / "images" / "b.png"), np.full((32, 32), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "d" / "masks" / "b.png"), mask)
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'd'}: 5-fold cross-validation needs at least 5 samples"):
        run_training(tmp_path / "d", tmp_path / "run", **TINY, steps=1, folds=5)


def test_a_run_refused_at_once_leaves_none_of_the_folders_it_made(phantom, tmp_path):
    """-o runs/deep/x/y refused (a budget too short for one step) removed y and left runs/deep/x behind."""
    with pytest.raises(UsageError, match="too short"):
        run_training(phantom, tmp_path / "deep" / "x" / "y", **{**TINY, "minutes": 0.005})
    assert not (tmp_path / "deep").exists()


def test_an_empty_weights_value_is_refused_not_taken_as_random(phantom, tmp_path):
    """--weights "$UNSET" trained from random weights without a word (with FCN-ResNet50: no pretrained start)."""
    with pytest.raises(UsageError, match="--weights is empty"):
        run_training(phantom, tmp_path / "run", **{**TINY, "weights": "", "steps": 1})


def test_a_weights_file_that_is_not_there_is_refused_before_the_data_is_read(phantom, tmp_path, monkeypatch):
    """--weights /nonexistent.pt was refused only after the filter chain had run over the whole dataset."""
    import hemseg.train.slices as slices_mod

    def never(*a, **k):
        raise AssertionError("the data was prepared before the refusal")

    monkeypatch.setattr(slices_mod, "prepare_samples", never)
    for bad in (str(tmp_path / "nonexistent.pt"), "NONE"):
        with pytest.raises(UsageError, match="--weights must be none, auto or an existing file"):
            run_training(phantom, tmp_path / "run", **{**TINY, "weights": bad, "steps": 1})
    assert not (tmp_path / "run").exists()


def test_a_weights_file_that_does_not_load_is_refused_before_the_data_is_read(phantom, tmp_path, monkeypatch):
    """--weights naming an empty file, a text file, tensors of another network or a checkpoint of another U-Net
    width was refused only after the filter chain had run over the whole dataset."""
    import torch

    import hemseg.train.slices as slices_mod
    from hemseg.errors import ModelError
    from hemseg.train.models import build_model

    def never(*a, **k):
        raise AssertionError("the data was prepared before the refusal")

    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("not weights\n")
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    torch.save(build_model("unet", base=4).state_dict(), tmp_path / "narrow.pt")
    monkeypatch.setattr(slices_mod, "prepare_samples", never)
    for name, why in (("empty.pt", "empty"), ("notes.pt", "looks like text"), ("other.pt", "fit nothing"),
                      ("narrow.pt", "wrong shape")):
        with pytest.raises(ModelError, match=why) as err:
            run_training(phantom, tmp_path / "run", **{**TINY, "weights": str(tmp_path / name), "steps": 1})
        assert name in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_minutes_run_stopped_before_its_plan_resumes_under_its_own_budget(phantom, tmp_path, monkeypatch):
    """Stopped before it planned its steps (before the first validation, or a fold not begun): --resume crashed with
    a TypeError (no deadline on resume) and left a folder neither resumable nor reusable. A new --minutes on resume
    was ignored without a word and recorded as if it applied; a resume without a run length recorded the 10-minute
    default as the run's length."""
    import hemseg.train.fit as fit_mod

    real = fit_mod.plan_budget

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    calls = []

    def second_fold_stopped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    # a single run stopped there has nothing to resume: none of it is kept (its config.json alone made the folder
    # 'an unfinished run')
    monkeypatch.setattr(fit_mod, "plan_budget", stopped)
    with pytest.raises(KeyboardInterrupt):
        _tiny(phantom, tmp_path / "m1", minutes=0.1, no_preprocess=True)
    assert not (tmp_path / "m1").exists()
    # a fold not begun, after a finished one: resumable
    monkeypatch.setattr(fit_mod, "plan_budget", second_fold_stopped)
    with pytest.raises(KeyboardInterrupt):
        _tiny(phantom, tmp_path / "m", minutes=0.6, folds=2, no_preprocess=True)
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "fold_1" / "last.pt").is_file()
    assert not (tmp_path / "m" / "fold_2" / "last.pt").exists()
    monkeypatch.setattr(fit_mod, "plan_budget", real)
    with pytest.raises(UsageError, match=r"was started with --minutes 0.6.*resume without a run length"):
        _tiny(phantom, tmp_path / "m", minutes=0.02, folds=2, resume=True, no_preprocess=True)
    done = run_training(phantom, tmp_path / "m", **{**TINY, "folds": 2, "resume": True, "no_preprocess": True})
    assert done["minutes_budget"] == 0.6 and all(s >= 1 for s in done["steps_per_fold"])
    assert json.loads((tmp_path / "m" / "config.json").read_text())["run_length"] == {"minutes": 0.6}


def test_a_resumed_run_keeps_its_length_and_refuses_a_shorter_one(phantom, tmp_path, monkeypatch):
    """A resume without a run length recorded {'minutes': 10.0} (the default) for a 6-step run; --steps fewer than
    those trained went on as 'step 4 of 3' and finished at step 4."""
    import hemseg.train.fit as fit_mod

    real = fit_mod.train_step
    monkeypatch.setattr(fit_mod, "train_step", _crashing_at(5, real))
    with pytest.raises(KeyboardInterrupt):
        _tiny(phantom, tmp_path / "r", steps=6, val_every=2, no_preprocess=True)
    monkeypatch.setattr(fit_mod, "train_step", real)
    with pytest.raises(UsageError, match="has trained 4 steps; its new length is 3 steps"):
        _tiny(phantom, tmp_path / "r", steps=3, val_every=2, resume=True, no_preprocess=True)
    done = run_training(phantom, tmp_path / "r", **{**TINY, "val_every": 2, "resume": True, "no_preprocess": True})
    assert done["steps"] == 6 and done["minutes_budget"] is None
    assert json.loads((tmp_path / "r" / "config.json").read_text())["run_length"] == {"steps": 6}


def test_a_kfold_resume_stopped_before_training_keeps_the_finished_run(phantom, tmp_path, monkeypatch):
    """--resume of a finished cross-validation deleted its metrics.json before preparing the slices: a Ctrl-C there
    turned a finished run into an 'unfinished' one. And the run's metrics.json lacked steps, minutes_budget and
    seconds."""
    import hemseg.train.slices as slices_mod

    out = tmp_path / "cv"
    first = _tiny(phantom, out, folds=2, steps=2, val_every=2, no_preprocess=True)
    assert first["steps"] == 4 and first["minutes_budget"] is None and first["seconds"] > 0
    # the top level said neither each fold's steps nor the precision (the README's amp): fold_k/metrics.json only
    assert first["steps_per_fold"] == [2, 2] and first["amp"] == first["folds"][0]["amp"] and first["amp"]
    assert first["recipe"] == "hemseg" and first["batch_size"] == first["folds"][1]["batch_size"]

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(slices_mod, "prepare_samples", stopped)
    with pytest.raises(KeyboardInterrupt):
        _tiny(phantom, out, folds=2, steps=4, val_every=2, resume=True, no_preprocess=True)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


def test_the_precisions_of_a_resumed_run_are_all_recorded():
    """A run trained in bf16 and resumed in fp32 said amp 'fp32' alone (its best.pt was a bf16 one)."""
    from hemseg.train.fit import _precisions

    assert _precisions([{"precision": "bf16"}, {"precision": "bf16"}], "fp32") == "bf16+fp32"
    assert _precisions([{"precision": "fp32"}], "fp32") == "fp32" and _precisions([], "bf16") == "bf16"


def test_training_dataloader_workers_leave_sigterm_to_the_main_process(phantom, tmp_path, monkeypatch):
    """SIGTERM to the process group (timeout, Slurm) killed the workers too and torch printed tracebacks around
    'hemseg: terminated'. Every training loader starts its workers with ignore_sigterm."""
    import subprocess
    import sys

    import hemseg.train.budget as budget_mod
    import hemseg.train.fit as fit_mod
    from hemseg.train.workers import ignore_sigterm

    seen = []

    def recording(real):
        def loader(*args, **kwargs):
            seen.append(kwargs.get("worker_init_fn"))
            return real(*args, **{**kwargs, "num_workers": 0, "worker_init_fn": None, "prefetch_factor": None,
                                  "persistent_workers": False})
        return loader

    monkeypatch.setattr(fit_mod, "DataLoader", recording(fit_mod.DataLoader))
    monkeypatch.setattr(budget_mod, "DataLoader", recording(budget_mod.DataLoader))
    # the run's length does not matter here: fixed, so that a slow or loaded machine (CI beside other jobs: 0.56 s
    # per step left room for 1 step in 3 s) is not refused as too short
    monkeypatch.setattr(budget_mod, "steps_for_budget", lambda *args, **kwargs: 10)
    _tiny(phantom, tmp_path / "w", minutes=0.05, workers=1, no_preprocess=True)
    assert len(seen) >= 3 and all(f is ignore_sigterm for f in seen)  # the probe, validation and training loaders
    code = ("import os, signal; from hemseg.train.workers import ignore_sigterm; ignore_sigterm(0); "
            "os.kill(os.getpid(), signal.SIGTERM); print('alive')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "alive"


def test_a_run_folder_inside_its_dataset_or_holding_a_foreign_config_is_refused_before_training(tmp_path):
    """--out DATA/masks trained and wrote best.pt, last.pt, ... among the masks (every later check of the dataset
    then warned about them); a user's own config.json in --out was called 'an unfinished training run' with advice
    to --resume it; a cases.csv of one case gave an error naming neither the dataset nor the file."""

    from hemseg.errors import DatasetError, UsageError
    from hemseg.train.trainer import run_training

    data = _three_pairs(tmp_path / "data")
    before = sorted(p.name for p in (data / "masks").iterdir())
    for out in (data / "masks", data):
        with pytest.raises(UsageError, match="is inside the dataset"):
            run_training(data, out, steps=1, device="cpu", model="unet", image_size=64)
    assert sorted(p.name for p in (data / "masks").iterdir()) == before
    linked = tmp_path / "linked"  # its images/ and masks/ links to the real folders: a run went in among the images
    linked.mkdir()
    for sub in ("images", "masks"):
        (linked / sub).symlink_to(data / sub)
    with pytest.raises(UsageError, match="is inside the dataset"):
        run_training(linked, data / "images" / "run", steps=1, device="cpu", model="unet", image_size=64)
    assert not (data / "images" / "run").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text('{"my": "settings"}')
    with pytest.raises(UsageError, match="no hemseg training run's config.json") as exc:
        run_training(data, tmp_path / "mine", steps=1, device="cpu", model="unet", image_size=64)
    assert "--resume" not in str(exc.value)
    (tmp_path / "tool").mkdir()  # another tool's metrics.json, notes in a fold_ folder: also not a run, --resume or not
    (tmp_path / "tool" / "metrics.json").write_text('{"accuracy": 0.9}')
    (tmp_path / "tool" / "fold_notes").mkdir()
    for resume in (False, True):
        with pytest.raises(UsageError, match="no hemseg training run's config.json"):
            run_training(data, tmp_path / "tool", steps=1, device="cpu", model="unet", image_size=64, resume=resume)
    (data / "cases.csv").write_text("stem,case\na,P1\nb,P1\nc,P1\n")
    with pytest.raises(DatasetError, match=r"cases from .*cases.csv\): need at least 2 cases"):
        run_training(data, tmp_path / "run", steps=1, device="cpu", model="unet", image_size=64)


def test_a_dataset_replaced_while_its_slices_are_read_is_refused(tmp_path, monkeypatch):
    """hemseg data synth replacing DATA while hemseg train read it: the run recorded one version's fingerprint and
    trained on the other, so eval later called the wrong dataset 'the one it was trained on'."""
    import os

    import cv2
    import numpy as np

    import hemseg.train.slices as slices_mod
    from hemseg.errors import DatasetError
    from hemseg.train.trainer import run_training

    data = _three_pairs(tmp_path / "data")
    real = slices_mod.prepare_samples

    def replaced_meanwhile(*args, **kwargs):
        cv2.imwrite(str(tmp_path / "new.png"), np.full((64, 64), 7, np.uint8))
        os.replace(tmp_path / "new.png", data / "images" / "b.png")
        return real(*args, **kwargs)

    monkeypatch.setattr(slices_mod, "prepare_samples", replaced_meanwhile)
    with pytest.raises(DatasetError, match=r"changed while they were read \(e.g. .*b.png"):
        run_training(data, tmp_path / "run", steps=1, device="cpu", model="unet", image_size=64)


def _three_pairs(data):
    """DATA/images + DATA/masks with three 64 px pairs, each a 10 px square lesion."""
    import cv2
    import numpy as np

    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for stem in ("a", "b", "c"):
        mask = np.zeros((64, 64), np.uint8)
        mask[20:30, 20:30] = 255
        cv2.imwrite(str(data / "images" / f"{stem}.png"), mask // 2 + 10)
        cv2.imwrite(str(data / "masks" / f"{stem}.png"), mask)
    return data


def test_validation_copies_of_training_slices_and_lesions_lost_to_resizing_are_said(tmp_path, caplog):
    """Exact copies of training images in validation made its Dice (checkpoint, threshold) optimistic unsaid; a
    one-pixel lesion that the mask's resizing to --image-size drops trained as lesion-free unsaid (QA, stop 54)."""
    import cv2
    import numpy as np

    from hemseg.train.trainer import run_training

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    for stem in ("s0", "s1", "s3", "s4"):
        mask = np.zeros((64, 64), np.uint8)
        if stem == "s3":
            mask[11, 11] = 255  # odd row and column: 64 -> 32 px nearest neighbour keeps even ones only
        else:
            mask[20:36, 20:36] = 255
        cv2.imwrite(str(tmp_path / "d" / "images" / f"{stem}.png"), rng.integers(0, 255, (64, 64), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / "d" / "masks" / f"{stem}.png"), mask)
    for sub in ("images", "masks"):  # s2: a copy of s0
        (tmp_path / "d" / sub / "s2.png").write_bytes((tmp_path / "d" / sub / "s0.png").read_bytes())
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps([{"train": ["s0", "s1", "s3"], "val": ["s2", "s4"]}]))
    with caplog.at_level("WARNING", logger="hemseg.train"):
        run_training(tmp_path / "d", tmp_path / "run", **{**TINY, "batch_size": 2}, steps=1, splits=splits)
    said = [r.getMessage() for r in caplog.records]
    copies = [m for m in said if "exact copies of training slices" in m]
    assert len(copies) == 1 and "1 validation slice(s) are exact copies" in copies[0] and "(s2 = s0)" in copies[0]
    lost = [m for m in said if "lose every lesion pixel" in m]
    assert len(lost) == 1 and "1 slice(s)" in lost[0] and "(32 px, nearest neighbour)" in lost[0]
    assert lost[0].split("lesion-free: ")[1].startswith("s3;")


def test_masks_whose_every_lesion_vanishes_at_the_training_size_are_refused_naming_image_size(tmp_path):
    """Every lesion lost to the resizing was refused as 'no mask has a lesion pixel ... check --label and the
    masks', which blamed the masks (QA, stop 54)."""
    import cv2
    import numpy as np

    from hemseg.errors import DatasetError
    from hemseg.train.trainer import run_training

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    for k in range(3):
        mask = np.zeros((64, 64), np.uint8)
        mask[11 + 2 * k, 11] = 255  # odd column: 64 -> 32 px nearest neighbour keeps even ones only
        cv2.imwrite(str(tmp_path / "d" / "images" / f"s{k}.png"), rng.integers(0, 255, (64, 64), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / "d" / "masks" / f"s{k}.png"), mask)
    with pytest.raises(DatasetError, match="every lesion pixel of the 3 mask\\(s\\) with one is lost when they are "
                                           "resized to the training size \\(32 px.*a larger --image-size keeps them"):
        run_training(tmp_path / "d", tmp_path / "run", **TINY, steps=1)
    assert not (tmp_path / "run").exists()


def test_resume_refusal_names_only_options_train_has():
    """The --resume refusal's key-to-option table is written by hand: a renamed option would leave it naming one
    ``hemseg train`` no longer has (stop 54's review candidate)."""
    import re

    import click

    from hemseg.train.trainer import OPTION_OF, OPTION_UNDER, RESUME_KEYS

    train = main.get_command(click.Context(main), "train")
    declared = {o for p in train.params for o in (*p.opts, *p.secondary_opts)}
    named = {t for text in (*OPTION_OF.values(), *OPTION_UNDER.values()) for t in re.findall(r"--[a-z][a-z0-9-]*", text)}
    assert named and named <= declared, sorted(named - declared)
    # and each table key is a resume key (or an entry under one): a key no config holds is never looked up
    assert all(k.split(".")[0] in RESUME_KEYS for k in OPTION_OF), [k for k in OPTION_OF if k.split(".")[0] not in RESUME_KEYS]


def test_a_model_fine_tuned_from_a_checkpoint_counts_what_that_checkpoint_saw(tiny_run, tmp_path):
    """--weights from a run trained on other images: the new model has seen those too, and an evaluation on them
    must say so; a report fine-tuned from a checkpoint trained on its test images claimed independence (QA, stop 55)."""
    from hemseg.runtime.dataset import discover

    first, _ = tiny_run
    seen = set(read_checkpoint(first / "best.pt")["config"]["pixel_digests"])
    other = tmp_path / "other"  # four of the phantom's images, under other names
    for kind in ("images", "masks"):
        (other / kind).mkdir(parents=True)
    for k, sample in enumerate(discover(Path(read_checkpoint(first / "best.pt")["config"]["data"])).samples[:4]):
        shutil.copy(sample.image, other / "images" / f"x{k}{sample.image.suffix}")
        shutil.copy(sample.mask, other / "masks" / f"x{k}{sample.mask.suffix}")
    _tiny(other, tmp_path / "tuned", no_preprocess=True, steps=2, weights=str(first / "best.pt"))
    tuned = set(read_checkpoint(tmp_path / "tuned" / "best.pt")["config"]["pixel_digests"])
    assert seen and seen <= tuned
    _tiny(other, tmp_path / "fresh", no_preprocess=True, steps=2)
    assert not seen <= set(read_checkpoint(tmp_path / "fresh" / "best.pt")["config"]["pixel_digests"])
    # resumed with another --weights, its --weights file gone: the run's start and what it saw stay its own (the
    # resume rewrote config.json's weights and dropped the inherited slices from its checkpoints: QA, stop 56)
    start = shutil.copy(first / "best.pt", tmp_path / "start.pt")
    _tiny(other, tmp_path / "resumed", no_preprocess=True, steps=2, weights=str(start))
    Path(start).unlink()
    _tiny(other, tmp_path / "resumed", no_preprocess=True, steps=4, weights="none", resume=True)
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["weights"] == str(start)
    assert seen <= set(read_checkpoint(tmp_path / "resumed" / "last.pt")["config"]["pixel_digests"])
