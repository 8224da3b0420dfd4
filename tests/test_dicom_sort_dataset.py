"""``hemseg data sort-dicom --dataset``: a PACS export holding image series and the DICOM SEG / RT Structure Set
annotations drawn on them becomes a hemseg dataset (``images/<series>/`` + ``masks/<series>.dcm``), paired by what
each annotation references, never by name or position in the export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from dicom_series import mr_series, save_series  # noqa: E402
from test_rtstruct_masks import SPACING, rtstruct, slice_contours  # noqa: E402

from hemseg.runtime.dataset import check_dataset, discover, load_pair  # noqa: E402
from hemseg.runtime.io import read_image  # noqa: E402
from hemseg.runtime.io.dicom_seg import AlgorithmInfo, write_dicom_seg  # noqa: E402
from hemseg.runtime.io.dicom_sort import sort_dicom  # noqa: E402

INFO = AlgorithmInfo(model_name="m.onnx", model_sha256="0" * 64)


def _named(slices, number: int, description: str):
    for ds in slices:
        ds.SeriesNumber, ds.SeriesDescription = number, description
    return slices


def study(tmp: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """An export: series 3 (3 slices) with a SEG, series 4 (4 slices, anisotropic pixels) with an RTSTRUCT, series 5
    (2 slices) with two SEGs (ambiguous), all files mixed in one folder and a sub-folder. Returns the export and
    the expected masks of series 3 and 4."""
    a = _named(mr_series(3), 3, "t1 sag")
    b = _named(mr_series(4), 4, "t2 sag")
    for ds in b:
        ds.PixelSpacing = list(SPACING)
    c = _named(mr_series(2), 5, "stir sag")
    staged = {name: save_series(s, tmp / "staged" / name) for name, s in (("a", a), ("b", b), ("c", c))}
    export = tmp / "export"
    (export / "sub").mkdir(parents=True)
    for i, ds in enumerate(a + b + c):
        ds.save_as((export if i % 2 else export / "sub") / f"IM{i:04d}.dcm", enforce_file_format=True)

    vol_a = read_image(staged["a"])
    mask_a = np.zeros(vol_a.data.shape, np.uint8)
    mask_a[1, 10:20, 30:44] = 1
    write_dicom_seg(export / "sub" / "seg_a.dcm", mask_a, vol_a, INFO)

    region = np.zeros((64, 64), np.uint8)
    region[20:31, 8:40] = 1
    rtstruct(export / "rt_b.dcm", b[0], {7: ("lesion", slice_contours(b[2], region))})
    mask_b = np.zeros((4, 64, 64), np.uint8)
    mask_b[2] = region

    vol_c = read_image(staged["c"])
    for k in (1, 2):
        write_dicom_seg(export / f"seg_c{k}.dcm", np.ones(vol_c.data.shape, np.uint8), vol_c,
                        AlgorithmInfo(model_name=f"m{k}.onnx", model_sha256=str(k) * 64))
    return export, {"003_MR_t1_sag": mask_a, "004_MR_t2_sag": mask_b}


def test_dataset_pairs_each_annotation_with_the_series_it_references(tmp_path):
    export, expected = study(tmp_path)
    manifest = sort_dicom(export, tmp_path / "ds", dataset=True)
    ds = tmp_path / "ds"
    assert sorted(p.name for p in (ds / "images").iterdir()) == ["003_MR_t1_sag", "004_MR_t2_sag", "005_MR_stir_sag"]
    assert sorted(p.name for p in (ds / "masks").iterdir()) == ["003_MR_t1_sag.dcm", "004_MR_t2_sag.dcm"]
    # no temp folder; no cases.csv: every series is of the same patient
    assert sorted(p.name for p in ds.iterdir()) == ["categories.csv", "images", "masks", "series.json"]
    assert (ds / "categories.csv").read_text().splitlines() == [
        "stem,category", "003_MR_t1_sag,t1_sag", "004_MR_t2_sag,t2_sag", "005_MR_stir_sag,stir_sag"]
    kinds = {s["folder"]: (s["kind"], s.get("references")) for s in manifest["series"]}
    masks = {k: v for k, v in kinds.items() if v[0] == "mask"}
    assert sorted(refs[0] for _, refs in masks.values() if len(refs) == 1) == [
        "003_MR_t1_sag", "004_MR_t2_sag", "005_MR_stir_sag", "005_MR_stir_sag"]
    assert len(manifest["unpaired_masks"]) == 2
    assert all("one of 2 masks" in u["reason"] for u in manifest["unpaired_masks"])
    # masks are not copied as folders: each says where it is (its "folder" is in no destination), a paired one
    # where it went
    assert sorted(Path(f).name for u in manifest["unpaired_masks"] for f in u["source_files"]) == [
        "seg_c1.dcm", "seg_c2.dcm"]
    copied = {Path(s["source_files"][0]).name: s.get("copied_to") for s in manifest["series"] if s["kind"] == "mask"}
    assert copied == {"seg_a.dcm": "masks/003_MR_t1_sag.dcm", "rt_b.dcm": "masks/004_MR_t2_sag.dcm",
                      "seg_c1.dcm": None, "seg_c2.dcm": None}
    assert [s["folder"] for s in manifest["series"]] == sorted(s["folder"] for s in manifest["series"])
    assert json.loads((ds / "series.json").read_text()) == manifest

    report = check_dataset(ds)
    assert report.usable and report.valid_pairs == 2 and report.layout == "categories-csv"
    assert {c for c, n in report.categories.items() if n.valid} == {"t1_sag", "t2_sag"}  # per sequence
    assert [p.name for p in report.unpaired_images] == ["005_MR_stir_sag"]
    for sample in discover(ds).samples:
        _, got = load_pair(sample)
        assert np.array_equal(got, expected[sample.stem]), sample.stem  # by reference, in slice order


def test_plain_sort_lists_what_each_annotation_references(tmp_path):
    export, _ = study(tmp_path)
    manifest = sort_dicom(export, tmp_path / "out")
    by_folder = {s["folder"]: s for s in manifest["series"]}
    images = sorted(f for f, s in by_folder.items() if s["kind"] == "image")
    assert images == ["003_MR_t1_sag", "004_MR_t2_sag", "005_MR_stir_sag"]
    masks = [s for s in by_folder.values() if s["kind"] == "mask"]
    assert len(masks) == 4 and all(len(s["references"]) == 1 for s in masks)
    assert {s["modality"] for s in masks} == {"SEG", "RTSTRUCT"}
    assert all((tmp_path / "out" / f).is_dir() for f in by_folder)  # every series still gets its folder


def test_an_annotation_of_a_series_not_in_the_export_is_not_paired(tmp_path):
    a = _named(mr_series(3), 3, "t1 sag")
    staged = save_series(a, tmp_path / "staged")
    vol = read_image(staged)
    export = tmp_path / "export"
    export.mkdir()
    other = _named(mr_series(3), 6, "other")  # new UIDs: the SEG's images are not in the export
    for i, ds in enumerate(other):
        ds.save_as(export / f"IM{i}.dcm", enforce_file_format=True)
    write_dicom_seg(export / "seg.dcm", np.ones(vol.data.shape, np.uint8), vol, INFO)
    manifest = sort_dicom(export, tmp_path / "ds", dataset=True)
    assert [u["reason"] for u in manifest["unpaired_masks"]] == ["references no image series of this export"]
    assert not any((tmp_path / "ds" / "masks").iterdir())


def test_cli_dataset_summary(tmp_path):
    export, _ = study(tmp_path)
    cmd = [sys.executable, "-c", "from hemseg.cli import entry; entry()", "data", "sort-dicom", "--dataset"]
    ok = subprocess.run([*cmd, str(export), str(tmp_path / "ds")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "3 image series (3 MR), 2 with a mask, 2 mask(s) not paired" in ok.stdout
    assert "not used as a mask" in ok.stderr


def test_predict_of_a_dataset_folder_says_to_give_its_images(tmp_path):
    """hemseg predict MODEL DS on what sort-dicom --dataset wrote took DS/masks (SEG files) for a series, failed on
    it and advised sorting with sort-dicom; its images/ is what to give, and one line says so."""
    from hemseg.errors import InputError
    from hemseg.runtime.io import find_inputs

    export, _ = study(tmp_path)
    sort_dicom(export, tmp_path / "ds", dataset=True)
    with pytest.raises(InputError, match="a dataset .images/ . masks/.*hemseg predict MODEL .*images"):
        find_inputs([tmp_path / "ds"])
    assert [p.name for p in find_inputs([tmp_path / "ds" / "images"])] == [
        "003_MR_t1_sag", "004_MR_t2_sag", "005_MR_stir_sag"]


def test_an_annotation_naming_only_instances_is_paired_through_them(tmp_path):
    """An RTSTRUCT without its RT Referenced Series Sequence (some exporters leave it out): its contours' Contour
    Image Sequence names instances of the series, and that is enough."""
    b = _named(mr_series(3), 4, "t2 sag")
    for ds in b:
        ds.PixelSpacing = list(SPACING)
    export = tmp_path / "export"
    export.mkdir()
    for i, ds in enumerate(b):
        ds.save_as(export / f"IM{i}.dcm", enforce_file_format=True)
    region = np.zeros((64, 64), np.uint8)
    region[5:15, 5:25] = 1
    path = rtstruct(export / "rt.dcm", b[0], {1: ("lesion", slice_contours(b[1], region))})
    rt = pydicom.dcmread(path)
    del rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    rt.save_as(path, enforce_file_format=True)
    manifest = sort_dicom(export, tmp_path / "ds", dataset=True)
    assert manifest["unpaired_masks"] == []
    [sample] = discover(tmp_path / "ds").samples
    assert sample.mask.name == "004_MR_t2_sag.dcm"
    assert int(load_pair(sample)[1][1].sum()) == int(region.sum())


def _export_of(tmp_path: Path, series_info) -> Path:
    """An export of 2-slice series, each with a SEG: ``series_info`` = (number, description, PatientID, StudyUID)."""
    export = tmp_path / "export"
    export.mkdir()
    for number, desc, patient, study in series_info:
        series = _named(mr_series(2), number, desc)
        for i, ds in enumerate(series):
            ds.PatientID = patient
            ds.StudyInstanceUID = study
            ds.save_as(export / f"S{number}_{i}.dcm", enforce_file_format=True)
        vol = read_image(save_series(series, tmp_path / "staged" / str(number)))
        mask = np.zeros(vol.data.shape, np.uint8)
        mask[0, 10:20, 10:20] = 1
        write_dicom_seg(export / f"seg{number}.dcm", mask, vol, INFO)
    return export


def test_series_of_two_patients_get_cases_csv(tmp_path):
    """Series of several patients: cases.csv names each series' patient (Patient ID, else its study), so splits keep
    a patient's series together; the single-patient export above gets none (a split by patient is impossible)."""
    export = _export_of(tmp_path, [(3, "t1 sag", "P1", "1.2.1"), (4, "t2 sag", "P1", "1.2.1"),
                                   (5, "t1 sag", "P2", "1.2.2"), (6, "t2 sag", "", "1.2.3.4")])
    manifest = sort_dicom(export, tmp_path / "ds", dataset=True)
    assert manifest["cases"] == 3 and manifest["cases_by"] == "patient"
    assert (tmp_path / "ds" / "cases.csv").read_text().splitlines() == [
        "stem,case", "003_MR_t1_sag,P1", "004_MR_t2_sag,P1", "005_MR_t1_sag,P2", "006_MR_t2_sag,study:1.2.3.4"]
    index = discover(tmp_path / "ds")
    assert not index.problems and len(index.samples) == 4
    assert {s.stem: s.case for s in index.samples}["004_MR_t2_sag"] == "P1"
    assert check_dataset(tmp_path / "ds").cases == 3


def test_an_export_anonymized_to_one_patient_id_is_grouped_by_study(tmp_path):
    export = _export_of(tmp_path, [(3, "t1 sag", "ANON", "1.2.3"), (4, "t2 sag", "ANON", "1.2.3"),
                                   (5, "t1 sag", "ANON", "1.2.4")])
    manifest = sort_dicom(export, tmp_path / "ds", dataset=True)
    assert manifest["cases"] == 2 and manifest["cases_by"] == "study"
    assert (tmp_path / "ds" / "cases.csv").read_text().splitlines() == [
        "stem,case", "003_MR_t1_sag,study:1.2.3", "004_MR_t2_sag,study:1.2.3", "005_MR_t1_sag,study:1.2.4"]


def test_categories_keep_descriptions_of_any_script_apart(tmp_path):
    """Only a-z and 0-9 were kept: 'сагиттальная' and 'аксиальная' both became the category 'series', and
    'Т2 сагиттальная' became '2', so sequences were mixed in training and in hemseg eval's per-sequence report.
    Letters and digits of every script are kept; folder names stay ASCII."""
    export = tmp_path / "export"
    export.mkdir()
    for number, desc in ((3, "сагиттальная"), (4, "аксиальная"), (5, "Т2 сагиттальная")):
        for i, ds in enumerate(_named(mr_series(2), number, desc)):
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.save_as(export / f"S{number}_{i}.dcm", enforce_file_format=True)
    manifest = sort_dicom(export, tmp_path / "ds", dataset=True)
    folders = [s["folder"] for s in manifest["series"]]
    assert all(f.isascii() for f in folders) and len(set(folders)) == 3
    assert (tmp_path / "ds" / "categories.csv").read_text(encoding="utf-8").splitlines() == [
        "stem,category", f"{folders[0]},сагиттальная", f"{folders[1]},аксиальная", f"{folders[2]},т2_сагиттальная"]


def test_multi_valued_description_and_patient_id_are_written_as_dicom_writes_them(tmp_path):
    """A backslash-multivalued Series Description or Patient ID was written as a Python list, "['T2', 'SAG']", in
    series.json and cases.csv; it is written as DICOM does, T2\\SAG."""
    export = tmp_path / "export"
    export.mkdir()
    for number, desc, patient in ((3, ["T2", "SAG"], ["DOE", "JOHN"]), (4, "t1", "P2")):
        for i, ds in enumerate(_named(mr_series(2), number, desc)):
            ds.PatientID = patient
            ds.save_as(export / f"S{number}_{i}.dcm", enforce_file_format=True)
    manifest = sort_dicom(export, tmp_path / "ds", dataset=True)
    assert [(s["folder"], s["series_description"]) for s in manifest["series"]] == [
        ("003_MR_T2_SAG", "T2\\SAG"), ("004_MR_t1", "t1")]
    assert (tmp_path / "ds" / "cases.csv").read_text().splitlines() == [
        "stem,case", "003_MR_T2_SAG,DOE\\JOHN", "004_MR_t1,P2"]
    assert (tmp_path / "ds" / "categories.csv").read_text().splitlines() == [
        "stem,category", "003_MR_T2_SAG,t2_sag", "004_MR_t1,t1"]
    assert json.loads((tmp_path / "ds" / "series.json").read_text()) == manifest
