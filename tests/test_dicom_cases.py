"""A dataset of DICOM images without ``cases.csv`` is split by patient as the headers say.

Single-slice DICOM files (one file per slice, as many PACS exports and annotation tools write them) of a few
patients are near copies of their neighbours; the Patient ID in each header says which belong together, so the
dataset reader groups them (or, in an export anonymized to one Patient ID, by study) and every split keeps a
patient on one side. ``cases.csv`` still decides when present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from dicom_series import mr_series, save_series

from hemseg.cli import main
from hemseg.runtime.dataset import case_groups, discover
from hemseg.runtime.io import write_mask_png
from hemseg.runtime.io.dicom_cases import DicomIdentity, case_key, case_of
from hemseg.train.split import stratified_split


def _dicom_slices(root: Path, patients: list[str], per_patient: int = 3, studies: list[str] | None = None) -> Path:
    """``images/<patient>_<k>.dcm`` (one slice per file) + PNG masks with a square lesion; patient ``i`` in
    study ``studies[i]`` (default: one study per patient)."""
    (root / "images").mkdir(parents=True)
    for i, patient in enumerate(patients):
        study = studies[i] if studies else f"1.2.826.0.1.3680043.8.498.{i + 1}"
        for k, ds in enumerate(mr_series(per_patient)):
            ds.PatientID, ds.StudyInstanceUID = patient, study
            stem = f"{patient}_{k}" if patients.count(patient) == 1 else f"{patient}_{i}_{k}"
            ds.save_as(root / "images" / f"{stem}.dcm", enforce_file_format=True)
            mask = np.zeros((64, 64), np.uint8)
            mask[20:30, 20:30] = 1
            write_mask_png(root / "masks" / f"{stem}.png", mask)
    return root


def test_the_key_is_the_first_that_tells_images_apart():
    a1, a2, b1 = DicomIdentity("A", "1"), DicomIdentity("A", "2"), DicomIdentity("B", "1")
    assert case_key([a1, a1, b1]) == "patient"
    assert case_key([a1, a2, a2]) == "study"  # anonymized to one Patient ID, two studies
    assert case_key([a1, a1, a1]) is None  # one patient, one study: nothing to keep together
    assert case_key([a1, None]) == "patient"  # an unreadable header is a case of its own
    assert case_of(a2, "patient") == "A" and case_of(a2, "study") == "study:2"
    assert case_of(DicomIdentity("", "7"), "patient") == "study:7" and case_of(DicomIdentity(), "study") is None


def test_single_slice_files_are_grouped_by_patient(tmp_path):
    index = discover(_dicom_slices(tmp_path / "d", ["P1", "P2", "P3"]))
    assert not index.problems and index.cases_from == "DICOM Patient ID"
    assert {s.stem: s.case for s in index.samples}["P2_1"] == "P2"
    groups = case_groups(index.samples)
    assert len(set(groups)) == 3
    train, val = stratified_split([s.category for s in index.samples], 0.2, 0, groups=groups)
    assert {groups[i] for i in train} & {groups[i] for i in val} == set()
    assert len(val) == 3  # one whole patient


def test_one_id_export_is_grouped_by_study_and_one_study_not_at_all(tmp_path):
    anon = discover(_dicom_slices(tmp_path / "anon", ["ANON", "ANON"], studies=["1.2.3", "1.2.4"]))
    assert anon.cases_from == "DICOM Study Instance UID"
    assert sorted({s.case for s in anon.samples}) == ["study:1.2.3", "study:1.2.4"]
    one = discover(_dicom_slices(tmp_path / "one", ["ANON", "ANON"], studies=["1.2.3", "1.2.3"]))
    assert one.cases_from is None and case_groups(one.samples) is None


def test_cases_csv_overrides_the_headers(tmp_path):
    data = _dicom_slices(tmp_path / "d", ["P1", "P2"])
    stems = sorted(p.stem for p in (data / "images").iterdir())
    (data / "cases.csv").write_text("stem,case\n" + "".join(f"{s},x{n % 2}\n" for n, s in enumerate(stems)))
    index = discover(data)
    assert index.cases_from == "cases.csv" and {s.case for s in index.samples} == {"x0", "x1"}


def test_series_folders_and_non_dicom_images(tmp_path):
    """A series folder stands for its first file's header; a PNG next to DICOM images is a case of its own."""
    data = tmp_path / "d"
    (data / "masks").mkdir(parents=True)
    for n, patient in enumerate(["P1", "P1", "P2"]):
        series = mr_series(2)
        for ds in series:
            ds.PatientID, ds.StudyInstanceUID = patient, f"1.2.{patient[-1]}"
        save_series(series, data / "images" / f"s{n}")
        np.save(data / "masks" / f"s{n}.npy", np.zeros((2, 64, 64), np.uint8))
    write_mask_png(data / "images" / "extra.png", np.zeros((64, 64), np.uint8))
    write_mask_png(data / "masks" / "extra.png", np.zeros((64, 64), np.uint8))
    index = discover(data)
    assert {s.stem: s.case for s in index.samples} == {"s0": "P1", "s1": "P1", "s2": "P2", "extra": None}
    assert case_groups(index.samples) is not None and sorted(set(case_groups(index.samples))) == \
        ["P1", "P2", "extra"]


def test_data_check_says_where_the_cases_come_from(tmp_path):
    data = _dicom_slices(tmp_path / "d", ["P1", "P2"])
    result = CliRunner().invoke(main, ["data", "check", str(data), "--json", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    assert "cases: 2 (from DICOM Patient ID" in result.output and "to override" in result.output
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["cases"] == 2 and report["cases_from"] == "DICOM Patient ID"


@pytest.mark.torch
def test_training_keeps_a_patient_on_one_side(tmp_path, caplog):
    from hemseg.train.trainer import run_training

    data = _dicom_slices(tmp_path / "d", ["P1", "P2", "P3"])
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="hemseg.train.trainer"):
        run_training(data, out, model="unet", unet_base=8, image_size=32, batch_size=2, steps=1, val_every=1,
                     device="cpu", progress=False, weights="none", val_fraction=0.2, seed=0)
    assert "splits by case: 3 case(s) of 9 sample(s) (from DICOM Patient ID)" in caplog.text
    assert "of the samples (--val-fraction" not in caplog.text  # one of three patients: no warning
    config = json.loads((out / "config.json").read_text())
    assert config["split_unit"] == "case" and config["cases_from"] == "DICOM Patient ID"
    split, case_of_stem = config["splits"][0], config["cases"]
    assert {case_of_stem[s] for s in split["train"]} & {case_of_stem[s] for s in split["val"]} == set()


def test_tables_hemseg_writes_read_back_patient_ids_with_commas_and_quotes(tmp_path):
    """cases.csv written by the report's split and sort-dicom (stem_table_text) quotes values as CSV: a Patient ID
    is free text (``DOE, JOHN``) and must come back as one case, not a malformed row."""
    from hemseg.runtime.dataset import stem_table_text

    data = _dicom_slices(tmp_path / "d", ['DOE, JOHN', 'O"BRIEN'])
    index = discover(data)
    assert {s.case for s in index.samples} == {"DOE, JOHN", 'O"BRIEN'}
    (data / "cases.csv").write_text(stem_table_text("case", [(s.stem, s.case) for s in index.samples]))
    again = discover(data)
    assert not again.problems and again.cases_from == "cases.csv"
    assert [s.case for s in again.samples] == [s.case for s in index.samples]


@pytest.mark.torch
def test_few_cases_make_a_large_validation_split_and_it_is_said(tmp_path, caplog):
    from hemseg.train.trainer import run_training

    data = _dicom_slices(tmp_path / "d", ["P1", "P2"])
    with caplog.at_level("INFO", logger="hemseg.train.trainer"):
        run_training(data, tmp_path / "run", model="unet", unet_base=8, image_size=32, batch_size=2, steps=1,
                     val_every=1, device="cpu", progress=False, weights="none", val_fraction=0.2, seed=0)
    assert "validation: 3 of 6 sample(s) (50 %), 1 of 2 case(s)" in caplog.text
    assert "holds 50 % of the samples (--val-fraction 0.20)" in caplog.text


@pytest.mark.torch
def test_training_says_when_every_file_is_its_own_case(tmp_path, caplog):
    """One Patient ID and one study: nothing tells the patients apart, so every file is its own case; the log said
    nothing of it, where hemseg data check says so (QA, stop 58)."""
    from hemseg.train.trainer import run_training

    data = _dicom_slices(tmp_path / "d", ["P1"])
    with caplog.at_level("INFO", logger="hemseg.train.trainer"):
        run_training(data, tmp_path / "run", model="unet", unet_base=8, image_size=32, batch_size=2, steps=1,
                     val_every=1, device="cpu", progress=False, weights="none", seed=0)
    assert "splits by file: every one of the 3 sample(s) is its own case" in caplog.text
    assert str(data / "cases.csv") in caplog.text
