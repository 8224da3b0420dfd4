"""Case-level splits: ``DATA/cases.csv`` keeps the files of one case (patient) on one side of every split.

Slices of one patient stored as separate image files are near copies of each other; with one on each side of the
validation split the validation Dice (and the best checkpoint and threshold chosen by it) is optimistic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hemseg.cli import main
from hemseg.errors import DatasetError
from hemseg.runtime.dataset import case_groups, check_dataset, dataset_fingerprint, discover
from hemseg.runtime.io import write_mask_png, write_png
from hemseg.train.split import stratified_kfold, stratified_split

# 5 patients x 4 slices, two categories (patients 0-2: "a", 3-4: "b")
CASES = [f"p{i // 4}" for i in range(20)]
CATS = ["a" if i < 12 else "b" for i in range(20)]


def _sides(groups, train, val) -> set[str]:
    return {groups[i] for i in train} & {groups[i] for i in val}


@pytest.mark.parametrize("seed", range(6))
def test_split_keeps_every_case_on_one_side(seed):
    train, val = stratified_split(CATS, 0.4, seed=seed, groups=CASES)
    assert sorted(train + val) == list(range(20))
    assert not _sides(CASES, train, val)
    assert len({CASES[i] for i in val}) == 2  # round(5 cases * 0.4): the fraction is of cases
    assert {CATS[i] for i in val} == {"a", "b"}  # stratified over the cases' categories


def test_per_sample_split_mixes_cases_and_distinct_groups_change_nothing():
    # without groups the same call puts slices of one patient on both sides: what the feature prevents
    assert any(_sides(CASES, *stratified_split(CATS, 0.4, seed=s)) for s in range(6))
    own = [f"x{i}" for i in range(20)]
    for seed in range(4):
        assert stratified_split(CATS, 0.4, seed=seed, groups=own) == stratified_split(CATS, 0.4, seed=seed)
        assert stratified_kfold(CATS, 3, seed=seed, groups=own) == stratified_kfold(CATS, 3, seed=seed)


@pytest.mark.parametrize("seed", range(4))
def test_kfold_by_case(seed):
    folds = stratified_kfold(CATS, 3, seed=seed, groups=CASES)
    vals = [v for _, v in folds]
    assert sorted(i for v in vals for i in v) == list(range(20))  # each slice validated exactly once
    for train, val in folds:
        assert not _sides(CASES, train, val)
    assert sorted(len({CASES[i] for i in v}) for v in vals) == [1, 2, 2]
    with pytest.raises(DatasetError, match="at least 6 cases, got 5"):
        stratified_kfold(CATS, 6, seed=seed, groups=CASES)
    with pytest.raises(DatasetError, match="2 cases"):
        stratified_split(CATS, 0.2, groups=["p"] * 20)


def test_a_case_counts_under_its_most_frequent_category():
    cats = ["b", "a", "a"] + ["b"] * 3  # p0: two slices of "a", one of "b" (listed first)
    groups = ["p0", "p0", "p0", "p1", "p2", "p3"]
    for seed in range(8):
        # one of 4 cases goes to validation; "a" has a single case, which stays in training
        _, val = stratified_split(cats, 0.25, seed=seed, groups=groups)
        assert len(val) == 1 and val[0] >= 3


# -- the dataset file ---------------------------------------------------------------------------------------------
def flat_dataset(root: Path, cases: str | None = None, n: int = 8) -> Path:
    """``n`` 32 px PNG pairs ``s0`` ... with a square lesion each, and ``cases`` as ``cases.csv`` when given (also
    used by test_split_file.py and test_fold_ensemble.py)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        m = np.zeros((32, 32), np.uint8)
        m[8:14, 8:14] = 1
        write_png(root / "images" / f"s{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
        write_mask_png(root / "masks" / f"s{i}.png", m)
    if cases is not None:
        (root / "cases.csv").write_text(cases)
    return root


def _pairs(n: int = 8, per_case: int = 2) -> str:
    return "stem,case\n" + "".join(f"s{i},patient{i // per_case}\n" for i in range(n))


def test_discover_reads_cases_and_the_fingerprint_follows_them(tmp_path):
    index = discover(flat_dataset(tmp_path / "d", _pairs()))
    assert not index.problems
    assert {s.stem: s.case for s in index.samples}["s5"] == "patient2"
    assert case_groups(index.samples) == [s.case for s in index.samples]
    plain = discover(flat_dataset(tmp_path / "plain", None))
    assert case_groups(plain.samples) is None and all(s.case is None for s in plain.samples)
    other = flat_dataset(tmp_path / "other", _pairs(per_case=4))
    assert dataset_fingerprint(index) != dataset_fingerprint(discover(other))
    assert dataset_fingerprint(plain) != dataset_fingerprint(index)


def test_unlisted_stem_is_a_problem_and_extra_rows_a_warning(tmp_path):
    rows = "".join(f"s{i},p{i // 2}\n" for i in range(7)) + "ghost,p9\n"  # s7 missing, ghost has no files
    index = discover(flat_dataset(tmp_path / "d", rows))
    assert any("'s7' is not listed in cases.csv" in p for p in index.problems)
    assert any("ghost" in w for w in index.warnings)
    report = check_dataset(tmp_path / "d")
    assert not report.usable
    bad = discover(flat_dataset(tmp_path / "bad", "s0,p0,extra\n" + _pairs()[10:]))
    assert any("expected 'stem,case'" in p for p in bad.problems)


def test_data_check_reports_cases(tmp_path):
    data = flat_dataset(tmp_path / "d", _pairs())
    result = CliRunner().invoke(main, ["data", "check", str(data), "--json", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    assert "cases: 4 (from cases.csv" in result.output
    assert json.loads((tmp_path / "c.json").read_text())["cases"] == 4
    (data / "cases.csv").unlink()
    result = CliRunner().invoke(main, ["data", "check", str(data)])
    assert result.exit_code == 0 and "cases: 8 (every file is its own case); if files are slices" in result.output
    (data / "cases.csv").write_text(_pairs(n=7))
    result = CliRunner().invoke(main, ["data", "check", str(data)])
    assert result.exit_code != 0 and "'s7' is not listed in cases.csv" in result.output


def test_data_check_counts_only_valid_pairs_as_cases(tmp_path):
    """QA, stop 57: 'cases: 8' beside a mask of the wrong size (7 usable pairs): a broken pair is no case."""
    data = flat_dataset(tmp_path / "d")
    write_mask_png(data / "masks" / "s3.png", np.zeros((16, 16), np.uint8))
    result = CliRunner().invoke(main, ["data", "check", str(data), "--json", str(tmp_path / "c.json")])
    assert result.exit_code != 0 and "cases: 7 (every file is its own case)" in result.output, result.output
    assert json.loads((tmp_path / "c.json").read_text())["cases"] == 7
    (data / "cases.csv").write_text(_pairs(per_case=1))  # with a case list too (s3 its own case)
    result = CliRunner().invoke(main, ["data", "check", str(data), "--json", str(tmp_path / "c.json")])
    assert "cases: 7 (from cases.csv" in result.output, result.output
    assert json.loads((tmp_path / "c.json").read_text())["cases"] == 7
    for i in range(8):  # no usable pair: no case, and still said to come from the list
        write_mask_png(data / "masks" / f"s{i}.png", np.zeros((16, 16), np.uint8))
    CliRunner().invoke(main, ["data", "check", str(data), "--json", str(tmp_path / "c.json")])
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["cases"] == 0 and doc["cases_from"] == "cases.csv"


def test_data_check_counts_the_cases_of_volumes_without_a_case_list(tmp_path):
    """Volumes without cases.csv: no 'cases' line, and 'cases': null in the JSON, though README says data check
    prints the number of cases. A dangling link with no mask was called an unpaired image and counted as one."""
    import nibabel as nib

    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for stem in ("a", "b"):
        mask = np.zeros((16, 16, 3), np.uint8)
        mask[4:8, 4:8, 1] = 1
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 3)).astype(np.float32), np.eye(4)),
                 str(data / "images" / f"{stem}.nii.gz"))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(data / "masks" / f"{stem}.nii.gz"))
    (data / "images" / "gone.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    result = CliRunner().invoke(main, ["data", "check", str(data), "--json", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    assert "cases: 2 (every file is its own case" in result.output
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["cases"] == 2 and doc["cases_from"] == "files"
    assert "gone.nii.gz: a symbolic link to nothing (and no mask with its stem)" in result.output
    assert "unpaired image" not in result.output and doc["totals"]["images"] == 2 and doc["unpaired_images"] == []
    # each volume's slices with a lesion (the table only summed them per category)
    assert [(Path(p["image"]).name, p["slices"], p["foreground_slices"]) for p in doc["pairs"]] == [
        ("a.nii.gz", 3, 1), ("b.nii.gz", 3, 1)]
    assert "fg-slices per volume" in result.output
    assert any(line.split()[-3:] == ["1", "of", "3"] and "a.nii.gz" in line for line in result.output.splitlines())


# -- training and the report split --------------------------------------------------------------------------------
@pytest.mark.torch
def test_training_splits_by_case(tmp_path):
    from hemseg.train.trainer import run_training

    data = flat_dataset(tmp_path / "d", _pairs(n=10, per_case=5), n=10)  # two patients of five slices
    out = tmp_path / "run"
    run_training(data, out, model="unet", unet_base=8, image_size=32, batch_size=4, steps=2, val_every=2,
                 device="cpu", progress=False, weights="none", val_fraction=0.2, seed=0)
    config = json.loads((out / "config.json").read_text())
    assert config["split_unit"] == "case"
    split = config["splits"][0]
    case_of = config["cases"]
    assert {case_of[s] for s in split["train"]} & {case_of[s] for s in split["val"]} == set()
    assert len(split["val"]) == 5  # a whole patient, though 20 % of 10 slices is 2


@pytest.mark.torch
def test_report_test_split_by_case_and_passed_on(tmp_path):
    from hemseg.train.report import make_test_split

    data = flat_dataset(tmp_path / "d", _pairs(n=12, per_case=3), n=12)
    info = make_test_split(data, tmp_path / "splits", 0.25, seed=1)
    assert info["split_unit"] == "case"
    test, tv = discover(tmp_path / "splits/test"), discover(tmp_path / "splits/trainval")
    assert not test.problems and not tv.problems
    assert {s.case for s in test.samples} & {s.case for s in tv.samples} == set()
    assert len(test.samples) == 3  # one patient of four
    assert all(s.case is not None for s in tv.samples)  # the training inside the report splits by case too


# -- evaluation per case ------------------------------------------------------------------------------------------
def test_eval_reports_each_case_pooled(tmp_path):
    """Two patients of four slices; the prediction misses one slice of patient1: per case 1.0 and 216/252, their
    mean the patient-level Dice, distinct from the per-slice mean (7/8) and the pooled Dice of all pixels."""
    import csv
    import shutil

    from hemseg.train.evaluate import evaluate_masks

    data = flat_dataset(tmp_path / "d", _pairs(per_case=4))
    pred = tmp_path / "pred"
    shutil.copytree(data / "masks", pred)
    write_mask_png(pred / "s7.png", np.zeros((32, 32), np.uint8))
    s = evaluate_masks(pred, data, tmp_path / "ev", progress=False, n_overlays=0)
    assert s["n_cases"] == 2 and s["per_case"]["patient0"]["dice_global"] == pytest.approx(1.0)
    assert s["per_case"]["patient1"]["dice_global"] == pytest.approx(216 / 252)
    assert s["dice_per_case"] == pytest.approx((1 + 216 / 252) / 2)
    assert s["dice"] == pytest.approx(7 / 8) and s["dice_global"] == pytest.approx(504 / 540)
    with open(tmp_path / "ev" / "per_case.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["case"], r["n_slices"]) for r in rows] == [("patient0", "4"), ("patient1", "4")]
    assert "Per case (2 cases" in (tmp_path / "ev" / "per_category.md").read_text()

    (data / "cases.csv").unlink()  # 2D files without cases: a case is an image, nothing more to say
    s = evaluate_masks(pred, data, tmp_path / "ev", progress=False, n_overlays=0)
    assert "per_case" not in s and not (tmp_path / "ev" / "per_case.csv").exists()


def test_eval_reports_each_volume_as_a_case(tmp_path):
    from hemseg.train.evaluate import evaluate_masks

    for name in ("v0", "v1"):
        vol = np.zeros((3, 32, 32), np.uint8)
        vol[1, 8:14, 8:14] = 1
        for sub in ("images", "masks"):
            (tmp_path / "d" / sub).mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / "d" / sub / f"{name}.npy", vol * (200 if sub == "images" else 1))
    s = evaluate_masks(tmp_path / "d" / "masks", tmp_path / "d", tmp_path / "ev", progress=False, n_overlays=0)
    assert s["n_cases"] == 2 and {c: v["n"] for c, v in s["per_case"].items()} == {"v0": 3, "v1": 3}


def test_cases_csv_rows_may_name_category_and_stem(tmp_path):
    """Category folders sharing file names (a/000.png, b/000.png): a row '000' silently gave both the same case
    (with no word), and rows 'a/000' were refused as unknown stems."""
    data = tmp_path / "d"
    for cat in ("a", "b"):
        for i in range(3):
            img = np.full((32, 32), 40, np.uint8)
            img[8:16, 8:16] = 200
            write_png(data / cat / "images" / f"00{i}.png", img)
            write_mask_png(data / cat / "masks" / f"00{i}.png", (img > 100).astype(np.uint8))
    (data / "cases.csv").write_text("stem,case\na/000,P1\na/001,P1\na/002,P2\nb/000,P3\nb/001,P3\nb/002,P2\n")
    index = discover(data)
    assert not index.problems and not index.warnings, (index.problems, index.warnings)
    assert {f"{s.category}/{s.stem}": s.case for s in index.samples} == {
        "a/000": "P1", "a/001": "P1", "a/002": "P2", "b/000": "P3", "b/001": "P3", "b/002": "P2"}
    (data / "cases.csv").write_text("stem,case\n000,P1\n001,P1\n002,P2\n")
    index = discover(data)
    assert not index.problems and [s.case for s in index.samples] == ["P1", "P1", "P2"] * 2
    assert any("3 row(s) name a stem of several categories" in w and "a/000, b/000" in w for w in index.warnings)
    (data / "cases.csv").write_text("stem,case\na/000,P1\n000,P9\n001,P1\n002,P2\n")  # the qualified row wins
    cases = {f"{s.category}/{s.stem}": s.case for s in discover(data).samples}
    assert cases["a/000"] == "P1" and cases["b/000"] == "P9"


@pytest.mark.parametrize("header", ["stem,case", "image,patient", "# exported by the PACS\nFilename,Subject_ID",
                                    "Image Name,Patient ID", "File-Path,Patient  id"])
def test_a_header_row_naming_the_columns_is_read_as_one(tmp_path, header):
    """'image,patient' was read as a row for a file 'image' (QA, stop 55); a header may follow comment lines."""
    rows = header + "\n" + _pairs()[len("stem,case\n"):]
    index = discover(flat_dataset(tmp_path / "d", rows))
    assert not index.problems and not index.warnings, (index.problems, index.warnings)
    assert {s.stem: s.case for s in index.samples}["s5"] == "patient2"


def test_a_header_naming_the_columns_the_other_way_round_reads_them_so(tmp_path):
    """'case,stem' read every row backwards: one error per row about stems listed with two cases (QA, stop 55)."""
    rows = "case,stem\n" + "".join(f"patient{i // 2},s{i}\n" for i in range(8))
    index = discover(flat_dataset(tmp_path / "d", rows))
    assert not index.problems and {s.stem: s.case for s in index.samples}["s5"] == "patient2"
    # categories.csv the same way
    root = flat_dataset(tmp_path / "c", None)
    (root / "categories.csv").write_text("category,image\n" + "".join(f"{'t1' if i % 2 else 't2'},s{i}\n"
                                                                      for i in range(8)))
    assert {s.stem: s.category for s in discover(root).samples}["s3"] == "t1"


def test_rows_may_name_the_image_file_with_its_extension(tmp_path):
    """Rows 's00.png,p0' named nothing: 'stem s00 is not listed', and the rows 'have no files' (QA, stop 55)."""
    rows = "stem,case\n" + "".join(f"s{i}.png,patient{i // 2}\n" for i in range(8))
    index = discover(flat_dataset(tmp_path / "d", rows))
    assert not index.problems and not index.warnings and {s.stem: s.case for s in index.samples}["s5"] == "patient2"
    # a dot that is not an image extension stays part of the stem (a row naming no file stays a warning)
    index = discover(flat_dataset(tmp_path / "e", _pairs() + "s1.run2,patient9\n"))
    assert any("have no files: s1.run2" in w for w in index.warnings)
