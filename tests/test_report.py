"""Tests of ``hemseg report`` (hemseg.train.report, report_md, plots; hemseg.cli.report_cmd).

One tiny end-to-end report (phantom, 2 images per category at 64 px, 1 epoch, U-Net width 8, 2-fold CV of the U-Net)
is made once
per module; the other tests read its files back.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from hemseg.cli import main  # noqa: E402
from hemseg.errors import InputError, UsageError  # noqa: E402
from hemseg.runtime.io.writers import write_mask_png, write_png  # noqa: E402
from hemseg.train.report_md import SECTIONS, fmt_metric, fmt_num, render_report_md  # noqa: E402

PER_CATEGORY = 2
# the cross-validation runs on the (cheap) U-Net to keep the test short; the default is FCN-ResNet50, same code path
ARGS = ["--epochs", "1", "--folds", "2", "--cv-model", "unet", "--image-size", "64", "--batch-size", "8",
        "--device", "cpu", "--unet-base", "8", "--no-progress"]


def _phantom_dataset(root: Path, per_category: int = PER_CATEGORY) -> Path:
    """Category folders of phantom PNG pairs, sizes around 64 px (not square, to exercise native-size metrics)."""
    from hemseg.phantom.case import case_rng, render_case
    from hemseg.phantom.categories import CATEGORIES

    for cat in CATEGORIES:
        for i in range(per_category):
            image, mask, _ = render_case(cat, case_rng(7, cat, i), size=(64, 56 + 8 * i), n_lesions=2)
            write_png(root / cat / "images" / f"{cat}_{i}.png", image)
            write_mask_png(root / cat / "masks" / f"{cat}_{i}.png", mask > 0)
    return root


def _flat_dataset(root: Path, n: int = 6, csv_categories: list[str] | None = None) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (32, 40), dtype=np.uint8)
        m = np.zeros((32, 40), np.uint8)
        m[8:16, 10:20] = 1
        write_png(root / "images" / f"s{i}.png", img)
        write_mask_png(root / "masks" / f"s{i}.png", m)
    if csv_categories:
        (root / "categories.csv").write_text("".join(f"s{i},{csv_categories[i % len(csv_categories)]}\n"
                                                     for i in range(n)))
    return root


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    data = _phantom_dataset(base / "data")
    out = base / "out"
    t0 = time.perf_counter()
    result = CliRunner().invoke(main, ["report", str(data), "--out", str(out)] + ARGS)
    seconds = time.perf_counter() - t0
    if result.exit_code != 0:
        raise AssertionError(f"hemseg report failed: {result.output}\n{result.exception!r}") from result.exception
    report = json.loads((out / "report.json").read_text())
    return {"data": data, "out": out, "output": result.output, "report": report, "seconds": seconds,
            "md": (out / "REPORT.md").read_text()}


def _rows(md: str, section: str) -> list[list[str]]:
    """Table rows (cells) of one REPORT.md section, header and separator excluded."""
    body = md.split(section, 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in body.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def _header(md: str, section: str) -> list[str]:
    body = md.split(section, 1)[1].split("\n## ", 1)[0]
    line = next(ln for ln in body.splitlines() if ln.startswith("|"))
    return [c.strip() for c in line.strip("|").split("|")]


def _cell(md: str, section: str, row_label: str, column: str) -> str:
    head = _header(md, section)
    row = next(r for r in _rows(md, section) if r[0] == row_label)
    return row[head.index(column)]


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


# -- end to end -------------------------------------------------------------------------------------------------------
def test_report_runs_and_writes_everything(made):
    out = made["out"]
    for name in ("REPORT.md", "report.json", "curves.png", "metrics.png", "steps.json", "splits/split.json",
                 "runs/fcn_resnet50/best.pt", "runs/fcn_resnet50_nopre/best.pt", "runs/unet/best.pt",
                 "runs/attention_unet/best.pt", "evals/fcn_resnet50/summary.json",
                 "evals/fcn_resnet50_postprocess/summary.json", "kmeans/summary.json", "cv/unet/metrics.json"):
        assert (out / name).exists(), name
    assert "REPORT.md" in made["output"]
    # a finished step's resume state is not kept (396 MB per FCN-ResNet50 run: a QA finding of stop 52)
    assert not list(out.glob("runs/*/last.pt")) and not list(out.glob("cv/*/fold_*/last.pt"))
    assert list(out.glob("cv/*/fold_*/best.pt"))


def test_report_md_has_every_section_and_the_command(made):
    md = made["md"]
    # the HD95 mean leaves out every image with an empty mask, both empty included (it said only 'exactly one')
    assert "its mean is over the images where both the prediction and the ground truth have a lesion" in md
    positions = [md.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "hemseg report" in md and "--epochs 1" in md and "--folds 2" in md and "--cv-model unet" in md
    assert "2-fold cross-validation of U-Net" in md
    assert "Not run" not in md
    assert "random initialization" in md or "pretrained" in md
    assert "](curves.png)" in md and "](metrics.png)" in md


def test_recipe_comparison_numbers_equal_the_eval_json(made):
    md, out = made["md"], made["out"]
    sec = "## Recipe comparison"
    for recipe, run in (("paper", "fcn_resnet50"), ("hemseg", "fcn_resnet50_hemseg")):
        ev = _load(out / f"evals/{run}/summary.json")
        metrics = _load(out / f"runs/{run}/metrics.json")
        assert metrics["recipe"] == recipe
        assert _cell(md, sec, recipe, "Dice (mean)") == fmt_metric("dice", ev["dice"])
        assert _cell(md, sec, recipe, "Dice (pooled)") == fmt_metric("dice", ev["dice_global"])
        assert _cell(md, sec, recipe, "steps") == str(metrics["steps"])


def test_ablation_and_comparison_numbers_equal_the_eval_json(made):
    md, out = made["md"], made["out"]
    main_eval = _load(out / "evals/fcn_resnet50/summary.json")
    nopre_eval = _load(out / "evals/fcn_resnet50_nopre/summary.json")
    sec = "## Preprocessing ablation"
    for key, col in (("dice_global", "Dice (pooled)"), ("dice", "Dice (mean)"), ("iou", "IoU"), ("precision", "Precision"),
                     ("hd95", "HD95 (px)")):
        assert _cell(md, sec, "full (CLAHE + NLM + bilateral)", col) == fmt_metric(key, main_eval.get(key))
        assert _cell(md, sec, "none", col) == fmt_metric(key, nopre_eval.get(key))
    sec = "## Model comparison"
    for title, run in (("FCN-ResNet50", "fcn_resnet50"), ("U-Net", "unet"), ("Attention U-Net", "attention_unet")):
        ev = _load(out / f"evals/{run}/summary.json")
        assert _cell(md, sec, title, "Dice (mean)") == fmt_metric("dice", ev["dice"])
        assert _cell(md, sec, title, "Dice (pooled)") == fmt_metric("dice", ev["dice_global"])  # it was left out
        assert _cell(md, sec, title, "Recall") == fmt_metric("recall", ev["recall"])
        metrics = _load(out / f"runs/{run}/metrics.json")
        assert _cell(md, sec, title, "init") == metrics["init"]
    # each run against the main FCN-ResNet50 on the same test images: the difference of their mean Dice, with its
    # paired-bootstrap interval, in report.json and in the tables
    report = _load(out / "report.json")
    vs = report["runs"]["unet"]["vs_main"]["dice"]
    assert vs["difference"] == pytest.approx(_load(out / "evals/unet/summary.json")["dice"] - main_eval["dice"])
    assert vs["interval"][0] <= vs["difference"] <= vs["interval"][1]
    head = "mean Dice - FCN-ResNet50 [95 % CI]"
    assert _cell(md, sec, "U-Net", head).startswith(f"{vs['difference']:+.3f} [")
    pooled = report["runs"]["unet"]["vs_main"]["dice_global"]
    assert pooled["difference"] == pytest.approx(_load(out / "evals/unet/summary.json")["dice_global"]
                                                 - main_eval["dice_global"])
    assert _cell(md, sec, "U-Net", "pooled Dice - FCN-ResNet50 [95 % CI]").startswith(f"{pooled['difference']:+.3f} [")
    assert _cell(md, sec, "FCN-ResNet50", head) == "-"
    assert _cell(md, "## Preprocessing ablation", "none", head).startswith(
        f"{report['runs']['fcn_resnet50_nopre']['vs_main']['dice']['difference']:+.3f}")
    assert _cell(md, "## Recipe comparison", "hemseg", head) != "-"
    # parameters: the real model sizes, not a constant
    fcn_params = int(_cell(md, sec, "FCN-ResNet50", "params").replace(",", ""))
    unet_params = int(_cell(md, sec, "U-Net", "params").replace(",", ""))
    assert fcn_params > 30_000_000 and 1_000 < unet_params < fcn_params


def test_per_category_classical_and_cv_numbers_equal_their_json(made):
    md, out = made["md"], made["out"]
    main_eval = _load(out / "evals/fcn_resnet50/summary.json")
    rows = _rows(md, "## Per-category results")
    cats = {r[0]: r for r in rows}
    assert set(main_eval["per_category"]) | {"**total**"} == set(cats)
    head = _header(md, "## Per-category results")
    for cat, block in main_eval["per_category"].items():
        assert cats[cat][head.index("n")] == str(block["n"])
        assert cats[cat][head.index("Dice (mean)")] == fmt_metric("dice", block["dice"])
        assert cats[cat][head.index("Dice (pooled)")] == fmt_metric("dice", block["dice_global"])
    km = _load(out / "kmeans/summary.json")
    post = _load(out / "evals/fcn_resnet50_postprocess/summary.json")
    sec = "## Classical baseline and post-processing"
    assert _cell(md, sec, "K-Means (raw)", "Dice (mean)") == fmt_metric("dice", km["raw"]["dice"])
    assert _cell(md, sec, "K-Means + cleaning", "Dice (pooled)") == fmt_metric("dice", km["cleaned"]["dice_global"])
    assert _cell(md, sec, "K-Means + cleaning", "IoU") == fmt_metric("iou", km["cleaned"]["iou"])
    assert _cell(md, sec, "FCN-ResNet50 + post-processing", "Dice (mean)") == fmt_metric("dice", post["dice"])
    assert post["postprocess"] is not None and main_eval["postprocess"] is None
    cv = _load(out / "cv/unet/metrics.json")
    rows = _rows(md, "## Cross-validation")
    assert [r[0] for r in rows] == ["1", "2", "**mean ± std**"]
    head = _header(md, "## Cross-validation")
    mean_cell = rows[-1][head.index("Dice (mean)")]
    assert mean_cell == f"{fmt_num(cv['mean']['dice'])} ± {fmt_num(cv['std']['dice'])}"
    assert rows[0][head.index("Dice (mean)")] == fmt_num(cv["folds"][0]["dice"])


def test_pngs_exist_and_decode(made):
    for name in ("curves.png", "metrics.png"):
        img = cv2.imread(str(made["out"] / name), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 200, name
        assert img.std() > 5  # not a blank canvas


def test_report_json_keys_and_values(made):
    r, out = made["report"], made["out"]
    for key in ("command", "started", "finished", "total_wall_s", "machine", "versions", "settings", "split", "runs",
                "ablation", "per_category", "comparison", "classical", "cv", "bar_chart", "figures", "timings"):
        assert key in r, key
    assert set(r["runs"]) == {"fcn_resnet50", "fcn_resnet50_nopre", "unet", "attention_unet", "fcn_resnet50_hemseg"}
    assert r["runs"]["fcn_resnet50"]["recipe"] == "paper" and r["runs"]["fcn_resnet50_hemseg"]["recipe"] == "hemseg"
    assert r["runs"]["fcn_resnet50"]["steps"] == r["runs"]["fcn_resnet50_hemseg"]["steps"]  # the same budget
    for name, run in r["runs"].items():  # each test evaluation's warnings reach the report (and REPORT.md)
        evaluated = json.loads((out / run["files"]["eval"]).read_text())
        assert run["test_warnings"] == evaluated["warnings"], name
        assert run["test"]["dice_global"] == evaluated["dice_global"], name
    assert [e["recipe"] for e in r["recipes"]] == ["paper", "hemseg"]
    assert r["runs"]["fcn_resnet50"]["test"]["dice"] == _load(out / "evals/fcn_resnet50/summary.json")["dice"]
    assert r["runs"]["fcn_resnet50_nopre"]["preprocess"] is False
    nopre_spec = r["runs"]["fcn_resnet50_nopre"]["preprocess_spec"]
    assert not nopre_spec["clahe"] and not nopre_spec["nlm"] and not nopre_spec["bilateral"]
    assert r["cv"]["k"] == 2 and len(r["cv"]["folds"]) == 2 and r["cv"]["model"] == "unet"
    assert r["machine"]["cpu_count"] >= 1 and "torch" in r["versions"]
    for step in ("split", "train:fcn_resnet50", "train:fcn_resnet50_nopre", "eval:fcn_resnet50", "kmeans",
                 "cv:unet"):
        assert r["timings"][step]["wall_s"] >= 0 and r["timings"][step]["reused"] is False
    assert r["settings"]["epochs"] == 1 and r["settings"]["image_size"] == 64


def test_test_split_is_held_out_stratified_and_in_the_dataset_layout(made):
    from hemseg.runtime.dataset import discover

    out, data = made["out"], made["data"]
    split = _load(out / "splits/split.json")
    assert not set(split["test"]) & set(split["trainval"])
    assert len(split["test"]) + len(split["trainval"]) == len(discover(data).samples)
    test_idx, tv_idx = discover(out / "splits/test"), discover(out / "splits/trainval")
    assert test_idx.layout == tv_idx.layout == "category-folders"
    assert sorted(s.stem for s in test_idx.samples) == sorted(split["test"])
    for s in test_idx.samples:  # categories kept, files point at the inputs
        assert s.image.is_symlink() and s.image.resolve().parent.parent.name == s.category
    assert len(split["test"]) == round(0.2 * len(discover(data).samples))
    assert max(split["test_categories"].values()) == 1  # spread over categories
    # no training run saw a test image, for training or validation
    for run in ("fcn_resnet50", "fcn_resnet50_nopre", "unet", "attention_unet"):
        config = _load(out / f"runs/{run}/config.json")
        seen = {stem for sp in config["splits"] for part in sp.values() for stem in part}
        assert seen and not seen & set(split["test"]), run
    config = _load(out / "cv/unet/config.json")
    seen = {stem for sp in config["splits"] for part in sp.values() for stem in part}
    assert len(config["splits"]) == 2 and seen == set(split["trainval"])


def test_rerun_reuses_every_step(made):
    out = made["out"]
    before = {p: p.stat().st_mtime_ns for p in (out / "runs/fcn_resnet50/best.pt", out / "kmeans/summary.json")}
    t0 = time.perf_counter()
    result = CliRunner().invoke(main, ["report", str(made["data"]), "--out", str(out)] + ARGS)
    assert result.exit_code == 0, result.output
    seconds = time.perf_counter() - t0
    report = _load(out / "report.json")
    steps = {k: v for k, v in report["timings"].items() if k != "figures"}
    assert steps and all(v["reused"] for v in steps.values())
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert seconds < made["seconds"]
    md = (out / "REPORT.md").read_text()
    assert "reused from an earlier run" in md
    # the reused numbers are the same numbers
    assert report["runs"]["unet"]["test"] == made["report"]["runs"]["unet"]["test"]


def test_rerun_with_fewer_models_names_the_earlier_folders(made, tmp_path):
    """A rerun into the same --out with fewer --models (every step reused) wrote a report without them, while
    their runs/ and evals/ folders stayed beside it, in the paths REPORT.md cites, unmentioned."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(made["out"], out, symlinks=True)
    ran = sorted(d.name for d in (out / "runs").iterdir())
    assert "attention_unet" in ran and "not_in_this_report" in made["report"]
    assert made["report"]["not_in_this_report"] == []
    result = CliRunner().invoke(main, ["report", str(made["data"]), "--out", str(out), "--models",
                                       "fcn_resnet50,unet"] + ARGS)
    assert result.exit_code == 0, result.output
    report = _load(out / "report.json")
    assert report["not_in_this_report"] == ["runs/attention_unet", "evals/attention_unet"]
    assert (out / "runs" / "attention_unet" / "best.pt").is_file()  # kept: a trained model
    md = (out / "REPORT.md").read_text()
    warnings = md.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    assert "Not part of this report: `runs/attention_unet/`, `evals/attention_unet/`" in warnings


def test_rerun_with_other_settings_is_refused(made):
    out = made["out"]
    args = [a if a != "1" else "2" for a in ARGS]  # --epochs 2
    result = CliRunner().invoke(main, ["report", str(made["data"]), "--out", str(out)] + args)
    assert result.exit_code != 0
    assert isinstance(result.exception, UsageError)
    assert "other settings" in str(result.exception) and "epochs" in str(result.exception)


def test_rerun_with_another_fold_count_is_refused_before_any_step_runs(made, tmp_path):
    """--folds changed (the last step) while an earlier step is due again (its output gone): the earlier step ran,
    hours of training in a real report, before the changed one was refused."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(made["out"], out, symlinks=True)
    (out / "kmeans" / "summary.json").unlink()  # the K-Means step, before the cross-validation, is due again
    steps_before = (out / "steps.json").read_text()
    args = [a if a != "2" else "3" for a in ARGS]  # --folds 3
    result = CliRunner().invoke(main, ["report", str(made["data"]), "--out", str(out)] + args)
    assert isinstance(result.exception, UsageError) and "folds" in str(result.exception), result.output
    assert not (out / "kmeans" / "summary.json").exists()
    assert (out / "steps.json").read_text() == steps_before


def test_rerun_on_another_device_reuses_every_step_and_the_unet_width_is_no_fcn_setting(made, tmp_path):
    """--device auto after --device cpu (the same CPU), or another --unet-base, refused the whole report (device /
    unet_base were in every training step's key, FCN-ResNet50's included); keys written before still compare."""
    import shutil

    from hemseg.train.report import ReportSettings, Steps, _training_keys

    out = tmp_path / "out"
    shutil.copytree(made["out"], out, symlinks=True)
    args = [a if a != "cpu" else "auto" for a in ARGS]  # --device auto
    result = CliRunner().invoke(main, ["report", str(made["data"]), "--out", str(out)] + args)
    assert result.exit_code == 0, result.output
    steps = {k: v for k, v in _load(out / "report.json")["timings"].items() if k != "figures"}
    assert all(v["reused"] for v in steps.values())
    narrow, wide = (_training_keys(ReportSettings(unet_base=b, device=d, folds=2, cv_model="unet"), "fp")
                    for b, d in ((8, "cpu"), (16, "cuda")))
    assert narrow["train:fcn_resnet50"] == wide["train:fcn_resnet50"]
    assert narrow["train:unet"] != wide["train:unet"] and narrow["cv:unet"] != wide["cv:unet"]
    old = tmp_path / "old"  # a steps.json of an earlier version: device, progress and unet_base in every key
    old.mkdir()
    (old / "steps.json").write_text(json.dumps({"train:fcn_resnet50": {"key": {
        **narrow["train:fcn_resnet50"], "device": "cpu", "progress": None, "unet_base": 8}}}))
    assert Steps(old).check("train:fcn_resnet50", wide["train:fcn_resnet50"]) is not None


def test_an_out_folder_holding_other_files_is_refused_and_left_as_it_was(made, tmp_path):
    """report -o DIR into a folder of the user's replaced DIR/REPORT.md and deleted DIR/splits/test/* (exit 0)."""
    out = tmp_path / "mine"
    (out / "splits" / "test").mkdir(parents=True)
    (out / "splits" / "test" / "important.txt").write_text("my notes")
    (out / "REPORT.md").write_text("# My paper draft")
    result = CliRunner().invoke(main, ["report", str(made["data"]), "--out", str(out)] + ARGS)
    assert isinstance(result.exception, UsageError) and "holds other files and no hemseg report" in str(
        result.exception), result.output
    assert (out / "splits" / "test" / "important.txt").read_text() == "my notes"
    assert (out / "REPORT.md").read_text() == "# My paper draft"
    assert sorted(p.name for p in out.iterdir()) == ["REPORT.md", "splits"]
    # inside the dataset: its splits (copies of the data), runs and evals went in among the images, refused
    before = sorted(str(p.relative_to(made["data"])) for p in made["data"].rglob("*"))
    result = CliRunner().invoke(main, ["report", str(made["data"]), "--out", str(made["data"] / "rep")] + ARGS)
    assert isinstance(result.exception, UsageError) and "is inside the dataset" in str(result.exception)
    assert sorted(str(p.relative_to(made["data"])) for p in made["data"].rglob("*")) == before
    from hemseg.train.report import check_out_folder

    hidden = tmp_path / "browsed"  # a folder made in a file browser: only its .DS_Store
    hidden.mkdir()
    (hidden / ".DS_Store").write_bytes(b"\0")
    check_out_folder(hidden)
    check_out_folder(tmp_path / "new")
    (hidden / "steps.json").mkdir()  # not a report's steps.json
    with pytest.raises(UsageError, match="holds other files and no hemseg report .steps.json is not a file"):
        check_out_folder(hidden)
    from hemseg.train.report import Steps

    odd = tmp_path / "odd"
    odd.mkdir()
    for text in ("[]", '"x"', "5", '{"split": 5}'):  # valid JSON, not a step list: an AttributeError traceback
        (odd / "steps.json").write_text(text)
        with pytest.raises(UsageError, match="not a hemseg report's step list"):
            Steps(odd)


def test_report_md_says_a_split_by_case_and_a_fold_that_found_nothing(made):
    """REPORT.md said '12 of 48 sample(s) were held out' of a split by patients (cases.csv), and of a fold with
    pooled and mean Dice 0 that its mean 'counts only lesion-free slices it left empty'."""
    report = json.loads(json.dumps(made["report"]))
    report["split"].update(split_unit="case", cases_from="cases.csv", n_cases_test=2, n_cases_trainval=6)
    report["cv"]["folds"][0].update(dice_global=0.0, dice=0.0)
    md = render_report_md(report)
    split = md.split("## Held-out test split", 1)[1].split("\n## ", 1)[0]
    assert "2 of 8 cases (from cases.csv; every sample of a case on one side)" in split
    assert "per_case.csv" in split
    warned = md.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    assert "its mean per-slice Dice is 0.0000 too" in warned and "lesion-free" not in warned


def test_report_without_folds_says_cv_was_not_run(made):
    report = dict(made["report"], cv=None)
    md = render_report_md(report)
    body = md.split("## Cross-validation", 1)[1].split("\n## ", 1)[0]
    assert "Not run" in body and "--folds" in body and "|" not in body
    assert all(s in md for s in SECTIONS)


# -- pieces (no training) -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("categories", [None, ["a", "b"]])
def test_make_test_split_keeps_flat_and_csv_layouts(tmp_path, categories):
    from hemseg.runtime.dataset import discover
    from hemseg.train.report import make_test_split

    data = _flat_dataset(tmp_path / "data", n=10, csv_categories=categories)
    info = make_test_split(data, tmp_path / "splits", 0.2, seed=3)
    test, tv = discover(tmp_path / "splits/test"), discover(tmp_path / "splits/trainval")
    want = "categories-csv" if categories else "flat"
    assert test.layout == tv.layout == want == info["layout"]
    assert len(test.samples) == 2 and len(tv.samples) == 8
    if categories:
        assert sorted(s.category for s in test.samples) == ["a", "b"]
    again = make_test_split(data, tmp_path / "splits2", 0.2, seed=3)
    assert again["test"] == info["test"]
    other = make_test_split(data, tmp_path / "splits3", 0.2, seed=4)
    assert other["trainval"] != info["trainval"] or other["test"] != info["test"]


def test_make_test_split_keeps_the_nnunet_layout(tmp_path):
    """nnU-Net's image names carry _0000 and its mask names do not: copied into images/ + masks/, no pair was left
    and the report stopped at its first training."""
    nib = pytest.importorskip("nibabel")
    from hemseg.runtime.dataset import discover
    from hemseg.train.report import make_test_split

    root = tmp_path / "Dataset501_Spine"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for k in range(5):
        nib.save(nib.Nifti1Image(rng.random((24, 20, 2), dtype=np.float32), np.eye(4)),
                 str(root / "imagesTr" / f"spine_{k:03d}_0000.nii.gz"))
        label = np.zeros((24, 20, 2), np.uint8)
        label[5:9, 6:10, 1] = 1
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"spine_{k:03d}.nii.gz"))
    info = make_test_split(root, tmp_path / "splits", 0.2, seed=0)
    test, tv = discover(tmp_path / "splits/test"), discover(tmp_path / "splits/trainval")
    assert test.layout == tv.layout == "nnunet" == info["layout"]
    assert sorted(s.stem for s in tv.samples) == sorted(info["trainval"]) and len(tv.samples) == 4
    assert [s.stem for s in test.samples] == info["test"] and len(test.samples) == 1


def test_make_test_split_refuses_too_few_samples(tmp_path):
    from hemseg.errors import DatasetError
    from hemseg.train.report import make_test_split

    data = _flat_dataset(tmp_path / "data", n=2)
    with pytest.raises(DatasetError, match="at least 3"):
        make_test_split(data, tmp_path / "splits", 0.2, seed=0)


def test_settings_are_validated():
    from hemseg.train.report import ReportSettings, parse_models

    assert parse_models(" unet, fcn_resnet50 ,") == ("unet", "fcn_resnet50")
    with pytest.raises(UsageError, match="unknown model"):
        ReportSettings(models=("resnet",))
    with pytest.raises(UsageError, match="test-fraction"):
        ReportSettings(test_fraction=1.0)
    with pytest.raises(UsageError, match="twice"):
        ReportSettings(models=("unet", "unet"))
    s = ReportSettings(models=("unet",), folds=0)
    assert s.comparison_models() == ["fcn_resnet50", "unet"] and s.cv_folds is None
    with pytest.raises(UsageError, match="--folds 1: a cross-validation needs K >= 2"):  # was taken as "none"
        ReportSettings(folds=1)


def test_cli_refuses_bad_models_before_any_work(tmp_path):
    data = _flat_dataset(tmp_path / "data", n=4)
    result = CliRunner().invoke(main, ["report", str(data), "--out", str(tmp_path / "out"), "--models", "vgg"])
    assert isinstance(result.exception, UsageError)
    assert not (tmp_path / "out").exists()
    # a --weights file that is not there: refused after the split step had written steps.json and splits/
    result = CliRunner().invoke(main, ["report", str(data), "--out", str(tmp_path / "out"), "--weights",
                                       str(tmp_path / "nonexist.pt")])
    assert isinstance(result.exception, UsageError) and "--weights must be none, auto or an existing file" in str(
        result.exception)
    assert not (tmp_path / "out").exists()
    (tmp_path / "junk.pt").write_text("junk")  # there, but not weights: refused before the split step too
    result = CliRunner().invoke(main, ["report", str(data), "--out", str(tmp_path / "out"), "--weights",
                                       str(tmp_path / "junk.pt")])
    assert "junk.pt" in str(result.exception) and not (tmp_path / "out").exists()


def test_a_weights_file_goes_to_the_model_it_is_for(tmp_path):
    """--weights with the default --models (FCN-ResNet50, U-Net, Attention U-Net): an FCN file was given to the
    U-Nets too ('326 tensor(s) fit nothing'), and a U-Net checkpoint to the FCN, after hours of training."""
    import torch
    import torchvision

    from hemseg.train.report import ReportSettings

    path = tmp_path / "fcn.pth"
    torch.save(torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None).state_dict(), path)
    s = ReportSettings(weights=str(path))
    assert s.weights_for("fcn_resnet50") == str(path) and s.weights_for("unet") == "auto"


def test_read_history_rejects_non_histories(tmp_path):
    from hemseg.train.plots import read_history

    bad = tmp_path / "h.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a training history"):
        read_history(bad)
    with pytest.raises(InputError, match="cannot read"):
        read_history(tmp_path / "missing.csv")
    good = tmp_path / "history.csv"
    good.write_text("step,epoch,val_dice,precision\n2,0.5,0.25,fp32\n4,1.0,0.5,fp32\n")
    assert read_history(good) == {"step": [2.0, 4.0], "epoch": [0.5, 1.0], "val_dice": [0.25, 0.5]}
    good.write_text("step,epoch,val_dice,precision\n2,x,0.25,fp32\n")
    with pytest.raises(InputError, match="non-numeric"):
        read_history(good)


def test_training_curves_show_the_pooled_validation_dice_beside_the_mean(tmp_path, monkeypatch):
    """curves.png's one 'validation Dice' panel plotted the mean per slice: U-Nets that found nothing sat at 0.25
    (the lesion-free slices' 1s) where the pooled Dice, which hemseg runs select on, was 0 (a QA finding of stop
    52). Both are plotted now, each in its own titled panel."""
    from matplotlib.axes import Axes

    from hemseg.train.plots import plot_training_curves

    history = tmp_path / "history.csv"
    history.write_text("step,epoch,train_loss,val_loss,val_dice,val_dice_global,precision\n"
                       "2,0.5,1.0,0.9,0.25,0.0,fp32\n4,1.0,0.8,0.7,0.3,0.05,fp32\n")
    drawn = {}
    real_plot = Axes.plot

    def plot(self, x, y, *args, **kwargs):
        drawn.setdefault(id(self), []).append(list(y))
        return real_plot(self, x, y, *args, **kwargs)

    titles = []
    real_title = Axes.set_title
    monkeypatch.setattr(Axes, "plot", plot)
    monkeypatch.setattr(Axes, "set_title", lambda self, t, *a, **k: titles.append((id(self), t))
                        or real_title(self, t, *a, **k))
    assert plot_training_curves([("unet", history)], tmp_path / "c.png") == "c.png"
    by_title = {t: drawn[a] for a, t in titles}
    assert by_title["validation Dice (pooled)"] == [[0.0, 0.05]]
    assert by_title["validation Dice (mean per slice)"] == [[0.25, 0.3]]


def test_metric_bars_draw_missing_values_as_empty(tmp_path):
    from hemseg.train.plots import plot_metric_bars

    name = plot_metric_bars({"a": {"dice": 0.5, "iou": None, "precision": 0.7, "recall": float("nan")},
                             "b": {"dice": 0.9, "iou": 0.8, "precision": 0.9, "recall": 0.9}}, tmp_path / "m.png")
    assert name == "m.png" and cv2.imread(str(tmp_path / "m.png")) is not None


def test_metric_bars_lead_with_the_pooled_dice(tmp_path, monkeypatch):
    """metrics.png left out the pooled Dice REPORT.md leads with (stop 55's low item): it is the first group now."""
    from matplotlib.axes import Axes

    from hemseg.train.plots import plot_metric_bars

    drawn = []
    real_bar = Axes.bar
    monkeypatch.setattr(Axes, "bar", lambda self, xs, values, *a, **k: drawn.append(list(values))
                        or real_bar(self, xs, values, *a, **k))
    legends = []
    real_legend = Axes.legend
    monkeypatch.setattr(Axes, "legend", lambda self, *a, **k: legends.append(k.get("handles"))
                        or real_legend(self, *a, **k))
    plot_metric_bars({"a": {"dice_global": 0.31, "dice": 0.8, "iou": 0.7, "precision": 0.6, "recall": 0.5},
                      "b": {"dice_global": None, "dice": 0.2, "iou": 0.1, "precision": 0.1, "recall": 0.1}},
                     tmp_path / "m.png")
    assert drawn[0] == [0.31, 0.8, 0.7, 0.6, 0.5]
    # a method whose first bar (the pooled Dice) is missing keeps its colour in the legend (it was drawn empty)
    [handles] = legends
    assert [h.get_label() for h in handles] == ["a", "b"] and all(h.get_fill() for h in handles)


def test_number_formats():
    assert fmt_num(None) == "n/a" and fmt_num(float("nan")) == "n/a" and fmt_num(0.123456) == "0.1235"
    assert fmt_metric("hd95", 3.14159) == "3.14" and fmt_metric("dice", 1) == "1.0000"
    assert re.fullmatch(r"\d\.\d{4}", fmt_metric("iou", 0.5))


# -- the real-data experiment script (benchmarks/real_data/run_cord_lococ.py) -------------------------------------------
@pytest.mark.slow
def test_cord_lococ_script_runs_on_the_real_data(shared_data, tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "real_data" / "run_cord_lococ.py"
    spec = importlib.util.spec_from_file_location("run_cord_lococ", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "cord.json"
    rc = mod.main(["--data", str(shared_data), "--work", str(tmp_path / "work"), "--out", str(out), "--epochs", "1",
                   "--image-size", "32", "--models", "unet", "--unet-base", "4", "--contrasts", "T2w",
                   "--skip", "nlm", "--skip", "bilateral"])
    assert rc == 0
    r = json.loads(out.read_text())
    (fold,) = r["folds"]
    assert fold["held_out"] == "T2w" and fold["train_contrasts"] == ["T1w", "T2star"]
    unet = fold["models"]["unet (hemseg recipe, without nlm + bilateral)"]
    assert unet["recipe"] == "hemseg" and unet["steps"] >= 1
    # --skip reaches the trainer: the checkpoint's preprocessing has no NLM and no bilateral filter, but CLAHE
    spec = json.loads((Path(unet["run_dir"]) / "config.json").read_text())["preprocess"]
    assert (spec["clahe"], spec["nlm"], spec["bilateral"]) == (True, False, False)
    assert Path(unet["run_dir"]).parent.name == "unet_hemseg_no-nlm_no-bilateral"
    assert unet["test"]["n_images"] == 16 and unet["n_train_slices"] + unet["n_val_slices"] == 32
    assert set(unet["seen_training_volumes_optimistic"]) == {"T1w", "T2star"}
    assert fold["methods"]["location prior (control)"]["dice"] > 0.9  # identical masks across contrasts
    assert 0.0 <= fold["methods"]["kmeans (raw)"]["dice"] <= 1.0
    assert r["command"].startswith("python benchmarks/real_data/run_cord_lococ.py") and "--contrasts T2w" in r["command"]
    assert r["machine"]["cpu"] and "cpu_flags" in r["machine"]  # the CPU model and flags go with every result
    # the test split is the original files, symlinked
    test_image = tmp_path / "work" / "data" / "test_T2w" / "images" / "sub-unf01_T2w.nii.gz"
    assert test_image.is_symlink() and test_image.resolve() == (shared_data / "sub-unf01_T2w.nii.gz").resolve()


def test_report_md_puts_the_test_evaluations_warnings_first():
    """A model that predicts no lesion scores its Dice on lesion-free slices alone: REPORT.md says so before its
    tables (the evaluations' summary.json warned; the report did not)."""
    from hemseg.train.report_md import _warnings

    r = {"runs": {"fcn_resnet50": {"test_warnings": ["the model predicts no lesion on any of the 5 slices"]},
                  "unet": {"test_warnings": []}}}
    lines = _warnings(r)
    assert lines[0] == "## Warnings" and "- **fcn_resnet50** (test split): the model predicts no lesion" in lines[2]
    assert _warnings({"runs": {"unet": {}}}) == []


def test_report_md_shows_the_pooled_dice_of_cv_folds_and_warns_of_folds_that_found_nothing():
    """Two folds collapsed to background (pooled Dice 0) read as 'Dice 0.4000 ± 0.0000' in the CV table, the 0.4
    being the lesion-free validation slices left empty; the Warnings section listed only the test split."""
    from hemseg.train.report_md import _cv, _warnings

    fold = {"n_train_samples": 5, "n_val_samples": 5, "dice_global": 0.0, "dice": 0.4, "iou": 0.4,
            "precision": 0.4, "recall": 0.4, "accuracy": 0.99}
    cv = {"k": 2, "title": "U-Net", "model": "unet", "file": "cv/unet/metrics.json", "n_scored": 2,
          "folds": [{"fold": 1, "best_epoch": 1, **fold}, {"fold": 2, "best_epoch": 1, **fold, "dice_global": 0.61}],
          "mean": dict(fold, dice_global=0.305), "std": {k: 0.0 for k in fold}}
    text = "\n".join(_cv({"cv": cv}))
    head = next(line for line in text.splitlines() if line.startswith("| fold"))
    assert "| Dice (pooled) | Dice (mean) |" in head
    assert "| 1 | 5 | 5 | 1 | 0.0000 | 0.4000 |" in text and "| 0.3050 ± 0.0000 | 0.4000 ± 0.0000 |" in text
    lines = _warnings({"runs": {"unet": {}}, "cv": cv})
    assert lines[0] == "## Warnings" and len(lines) == 4  # fold 1 only
    assert "unet, cross-validation fold 1" in lines[2] and "pooled Dice 0" in lines[2] and "0.4000" in lines[2]
    old = {**cv, "folds": [{k: v for k, v in f.items() if k != "dice_global"} for f in cv["folds"]]}
    assert "| 1 | 5 | 5 | 1 | n/a | 0.4000 |" in "\n".join(_cv({"cv": old}))  # a report.json from before


def test_report_refuses_unusable_data_before_training_and_leaves_no_folder(tmp_path):
    """A corrupt mask stopped the report only after its first model had trained, and a refused dataset left an
    empty --out behind: the data is checked first."""
    import cv2
    import numpy as np

    from hemseg.errors import DatasetError
    from hemseg.train.report import ReportSettings, run_report

    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(tmp_path / "d" / "images" / f"s{i}.png"), np.zeros((32, 32), np.uint8))
        cv2.imwrite(str(tmp_path / "d" / "masks" / f"s{i}.png"), np.zeros((32, 32), np.uint8))
    (tmp_path / "d" / "masks" / "s3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # corrupt
    with pytest.raises(DatasetError, match="s3.png"):
        run_report(tmp_path / "d", tmp_path / "out", ReportSettings(epochs=1, image_size=32, device="cpu"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings, words", [
    ({"folds": 9}, "--folds 9: the training split of .* holds [0-9]+ sample"),  # failed after every model trained
    ({"test_fraction": 0.9}, "after holding out"),  # left an empty --out
])
def test_report_refuses_a_split_or_fold_count_the_data_cannot_give_before_anything(tmp_path, settings, words):
    from hemseg.errors import DatasetError
    from hemseg.train.report import ReportSettings, run_report

    data = _flat_dataset(tmp_path / "data", n=6)
    with pytest.raises(DatasetError, match=words):
        run_report(data, tmp_path / "out", ReportSettings(epochs=1, image_size=32, device="cpu", **settings))
    assert not (tmp_path / "out").exists()


def test_report_refuses_data_without_any_lesion_naming_the_data(tmp_path):
    """It failed on the report's own split folder (RB/splits/trainval) after writing splits/ and steps.json."""
    from hemseg.errors import DatasetError
    from hemseg.train.report import ReportSettings, run_report

    data = _flat_dataset(tmp_path / "data", n=6)
    for m in (data / "masks").iterdir():
        write_mask_png(m, np.zeros((32, 40), bool))
    with pytest.raises(DatasetError, match=f"{data}: no mask has a lesion pixel"):
        run_report(data, tmp_path / "out", ReportSettings(epochs=1, image_size=32, device="cpu"))
    assert not (tmp_path / "out").exists()


def test_report_md_names_the_selection_criterion_and_the_folds_a_cv_mean_covers():
    from hemseg.train.report_md import _cv, _val_dice

    assert _val_dice({"val_dice": 0.08, "selection": "pooled", "val_dice_selected": 0.027}) == "0.0270 (pooled)"
    assert _val_dice({"val_dice": 0.08, "selection": "mean", "val_dice_selected": 0.08}) == "0.0800 (mean)"
    assert _val_dice({"val_dice": 0.08}) == "0.0800"  # a report.json written before the selection was recorded
    fold = {"n_train_samples": 3, "n_val_samples": 1, "epoch": 1, "dice": 0.5, "iou": 0.3, "precision": 0.5,
            "recall": 0.5, "accuracy": 0.9}
    cv = {"k": 2, "title": "U-Net", "file": "cv/unet/metrics.json", "n_scored": 1,
          "folds": [{"fold": 1, "best_epoch": 1, **fold}, {"fold": 2, "best_epoch": 1, **fold, "dice": None}],
          "mean": dict(fold), "std": {k: 0.0 for k in fold}}
    text = "\n".join(_cv({"cv": cv}))
    assert "the 1 of 2 folds whose validation slices hold a lesion" in text
    cv["n_scored"] = 2
    assert "mean ± population std over folds." in "\n".join(_cv({"cv": cv}))


def test_planned_training_splits_are_the_ones_the_report_trained_on(made):
    """The pre-check replicates the trainings' splits: it must agree with what the report's runs drew."""
    from hemseg.train.report import ReportSettings, plan_test_split, planned_training_splits

    report = made["report"]
    s = ReportSettings(**{k: v for k, v in report["settings"].items()
                          if k in ReportSettings.__dataclass_fields__})
    plan = plan_test_split(made["data"], s.test_fraction, s.seed)
    samples = plan[1]
    planned = [([samples[i].stem for i in tr], [samples[i].stem for i in va])
               for tr, va in planned_training_splits(plan, s)]
    run = _load(made["out"] / "runs" / "fcn_resnet50" / "config.json")["splits"]
    cv = _load(made["out"] / "cv" / "unet" / "config.json")["splits"]
    assert [(sorted(x["train"]), sorted(x["val"])) for x in run + cv] == [(sorted(t), sorted(v)) for t, v in planned]


def test_a_split_that_leaves_a_training_without_lesions_is_refused_before_anything(tmp_path):
    """The test split or the validation part could take the only lesion samples: the training refused it after
    --out was made (naming the report's own split folder, advising --splits, which report does not have)."""
    from hemseg.errors import DatasetError
    from hemseg.train.report import ReportSettings, plan_test_split, planned_training_splits, run_report

    data = _flat_dataset(tmp_path / "data", n=8)
    for m in sorted((data / "masks").iterdir())[1:]:
        write_mask_png(m, np.zeros((32, 40), bool))  # only s0 has a lesion
    found = {}
    for seed in range(40):
        s = ReportSettings(epochs=1, image_size=32, device="cpu", seed=seed)
        plan = plan_test_split(data, s.test_fraction, s.seed)
        s0 = [x.stem for x in plan[1]].index("s0")
        if s0 in plan[4]:
            found.setdefault("test split holds every sample with a lesion at the training size", seed)
        elif s0 in planned_training_splits(plan, s)[0][1]:
            found.setdefault("each model's training would see no lesion: its validation part holds .*s0", seed)
    assert len(found) == 2, found
    for words, seed in found.items():
        with pytest.raises(DatasetError, match=words):
            run_report(data, tmp_path / f"out{seed}", ReportSettings(epochs=1, image_size=32, device="cpu",
                                                                    seed=seed))
        assert not (tmp_path / f"out{seed}").exists()


def test_lesions_that_vanish_at_the_training_size_are_refused_before_anything(tmp_path):
    """3 px lesions in 256 px images vanish at --image-size 32: the pre-check counted mask files, the trainings
    the resized masks, so the report failed after --out was made."""
    from hemseg.errors import DatasetError
    from hemseg.train.report import ReportSettings, run_report

    rng = np.random.default_rng(0)
    for i in range(8):
        write_png(tmp_path / "d" / "images" / f"s{i}.png", (rng.random((256, 256)) * 200).astype(np.uint8))
        m = np.zeros((256, 256), bool)
        m[1:4, 1:4] = i < 5
        write_mask_png(tmp_path / "d" / "masks" / f"s{i}.png", m)
    with pytest.raises(DatasetError, match="no mask shows a lesion pixel at the training size \\(--image-size 32\\)"):
        run_report(tmp_path / "d", tmp_path / "out", ReportSettings(epochs=1, image_size=32, device="cpu"))
    assert not (tmp_path / "out").exists()


def test_a_weights_checkpoint_that_fits_no_run_is_refused_before_anything(tmp_path):
    """A U-Net checkpoint of another width failed after the FCN-ResNet50 runs (hours on real data); one of a model
    the report does not train was ignored without a word (every run random, REPORT.md naming the file)."""
    import torch

    from hemseg.train.report import ReportSettings

    ckpt = tmp_path / "unet64.pt"
    torch.save({"format": "hemseg-checkpoint", "config": {"model": "unet", "model_kwargs": {"base": 64}}}, ckpt)
    with pytest.raises(UsageError, match=r"is a unet \{'base': 64\}, the report trains unet \{'base': 8\}"):
        ReportSettings(weights=str(ckpt), models=("fcn_resnet50", "unet"), unet_base=8).check_weights()
    with pytest.raises(UsageError, match="is for unet, which --models \\(fcn_resnet50\\) does not train"):
        ReportSettings(weights=str(ckpt), models=("fcn_resnet50",)).check_weights()
    from hemseg.errors import ModelError

    junk = tmp_path / "junk_sd.pt"  # loads, fits nothing: failed at the first training, after the split step
    torch.save({"a": torch.zeros(3)}, junk)
    with pytest.raises(ModelError, match="fit nothing"):
        ReportSettings(weights=str(junk)).check_weights()


def test_split_json_names_samples_of_category_folders_that_share_file_names(tmp_path):
    """Category folders each holding 000.png ... (t1/images/000.png, t2/images/000.png): split.json listed bare
    stems, so one name stood for two samples and the test list could not say which was held out."""
    from hemseg.train.report import make_test_split

    data = tmp_path / "data"
    for cat in ("t1", "t2"):
        for k in range(4):
            img = np.zeros((32, 32), np.uint8)
            img[8:16, 8:16] = 200
            write_png(data / cat / "images" / f"{k:03d}.png", img)
            write_mask_png(data / cat / "masks" / f"{k:03d}.png", img > 0)
    info = make_test_split(data, tmp_path / "splits", 0.25, 0)
    names = info["trainval"] + info["test"]
    assert len(names) == len(set(names)) == 8
    assert set(names) == {f"{c}/{k:03d}" for c in ("t1", "t2") for k in range(4)}
    assert json.loads((tmp_path / "splits" / "split.json").read_text())["test"] == info["test"]


def test_report_md_lists_the_baseline_rows_warnings_and_drops_the_independence_claim_when_a_model_saw_the_test(made):
    """The K-Means and post-processing rows' evaluation warnings were missing from REPORT.md's Warnings; a model
    fine-tuned (--weights) from a checkpoint trained on the test images left 'No model was trained ... on a test
    image' standing (QA findings of stop 55)."""
    from hemseg.train.report_md import _split, _warnings

    r = json.loads(json.dumps(made["report"]))  # a copy: the fixture is shared
    assert set(r["classical"]["warnings"]) == {"K-Means (raw)", "K-Means + cleaning", "FCN-ResNet50 + post-processing"}
    assert "No model was trained, selected or threshold-tuned on a test image." in "\n".join(_split(r))
    r["classical"]["warnings"] = {"K-Means (raw)": ["the K-Means baseline (raw) predicts lesion on 19 % of all pixels"]}
    assert "- **K-Means (raw)** (test split): the K-Means baseline (raw) predicts lesion on 19 %" in "\n".join(_warnings(r))
    name, other = list(r["runs"])[:2]
    r["runs"][name].update(test_images_seen_in_training=3, init="file:/runs/a/best.pt")
    r["runs"][other].update(test_images_seen_in_training=2, init="random")
    text = "\n".join(_split(r))
    assert "No model was trained" not in text
    assert (f"3 test image(s) were seen in training by {name} (through its `--weights` checkpoint, or copies of them "
            f"in the training split); 2 test image(s) were seen in training by {other} (copies of them in the "
            "training split); their numbers are optimistic") in text


def test_a_split_linking_into_a_moved_dataset_is_refused_naming_it(tmp_path):
    """The dataset moved, given again from its new place: its fingerprint matched, the split was reused, and the
    first training failed naming one of the report's own links as missing (a QA finding of stop 55)."""
    from hemseg.errors import UsageError
    from hemseg.train.report import _check_split_links

    old, new, splits = tmp_path / "old", tmp_path / "new", tmp_path / "out" / "splits"
    (old / "images").mkdir(parents=True)
    (old / "images" / "a.png").write_bytes(b"x")
    (splits / "trainval" / "images").mkdir(parents=True)
    (splits / "trainval" / "images" / "a.png").symlink_to(old / "images" / "a.png")
    (splits / "split.json").write_text(json.dumps({"data": str(old.resolve())}))
    _check_split_links(splits, old)  # its own dataset
    shutil.copytree(old, new)
    _check_split_links(splits, new)  # a copy while the original is there: the links still read
    shutil.rmtree(old)
    with pytest.raises(UsageError, match=r"split links into .*old, which no longer holds it .*the dataset moved\?"):
        _check_split_links(splits, new)


def test_an_interrupted_training_step_of_a_report_advises_rerunning_the_report(tmp_path, monkeypatch):
    """A report's user never typed `hemseg train`: the interrupt's advice names the report (stop 55's low item)."""
    import hemseg.train.fit as fit_mod
    import hemseg.train.trainer as trainer_mod
    from hemseg.train import report as report_mod

    seen = []

    def interrupted(data, run_dir, **options):
        seen.append(fit_mod.RESUME_ADVICE.get())
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod, "run_training", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report_mod._train(tmp_path / "data", tmp_path / "run", {})
    assert seen == ["rerunning the same `hemseg report` command"]
    assert "hemseg train ... --resume" in fit_mod.RESUME_ADVICE.get()  # reset for a training run after it
