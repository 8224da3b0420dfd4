"""Dataset discovery (three layouts), pair loading, check_dataset, fingerprints and `hemseg data check`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from hemseg.cli import main
from hemseg.errors import DatasetError, InputError
from hemseg.runtime.dataset import (
    Sample,
    check_dataset,
    dataset_fingerprint,
    discover,
    load_pair,
)
from hemseg.runtime.io import read_image, write_nifti_labels

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "spine-generic-sub-unf01"
REPO = Path(__file__).resolve().parents[1]


def put_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def put_pair(root: Path, stem: str, size=(32, 32), fg=True, category: str | None = None) -> None:
    base = root / category if category else root
    rng = np.random.default_rng(zlib.crc32(stem.encode()))
    put_png(base / "images" / f"{stem}.png", rng.integers(0, 256, size, dtype=np.uint8))
    mask = np.zeros(size, np.uint8)
    if fg:
        mask[4:10, 4:10] = 255
    put_png(base / "masks" / f"{stem}.png", mask)


# ---------------------------------------------------------------------------------------------------- layouts
def test_category_folders_beside_images_and_masks_are_named_as_ignored(tmp_path):
    """DATA/images + DATA/masks decide; 48 pairs in category folders beside them vanished without a word."""
    put_pair(tmp_path, "a")
    put_pair(tmp_path, "b", category="sagittal_t1")
    put_pair(tmp_path, "c", category="coronal_t2")
    index = discover(tmp_path)
    assert index.layout == "flat" and [s.stem for s in index.samples] == ["a"]
    assert any("ignored 2 category folder(s) with images/ and masks/ (coronal_t2, sagittal_t1)" in w
               for w in index.warnings), index.warnings
    nn = tmp_path / "nn"  # nnU-Net folders beside category folders: the nnU-Net ones decide, the others are named
    put_pair(nn, "c", category="sagittal_t1")
    put_png(nn / "imagesTr" / "x_0000.png", np.zeros((16, 16), np.uint8))
    put_png(nn / "labelsTr" / "x.png", np.zeros((16, 16), np.uint8))
    index = discover(nn)
    assert index.layout == "nnunet"
    assert any("ignored 1 category folder(s)" in w for w in index.warnings), index.warnings
    flat = tmp_path / "flat"  # nnU-Net folders beside DATA/images + DATA/masks
    put_pair(flat, "a")
    put_png(flat / "imagesTr" / "x_0000.png", np.zeros((16, 16), np.uint8))
    put_png(flat / "labelsTr" / "x.png", np.zeros((16, 16), np.uint8))
    assert any("ignored nnU-Net's imagesTr/ + labelsTr/" in w for w in discover(flat).warnings)
    put_png(nn / "imagesTs" / "t_0000.png", np.zeros((16, 16), np.uint8))  # the test cases: Tr decides, Ts is named
    said = [w for w in discover(nn).warnings if "imagesTs" in w]  # nnU-Net's usual unlabelled test images
    assert len(said) == 1 and "ignored nnU-Net's imagesTs/ (test images without labels" in said[0]
    assert "labelsTs" not in said[0].split("no labelsTs/")[0]  # it named a labelsTs/ that was not there
    put_png(nn / "labelsTs" / "t.png", np.zeros((16, 16), np.uint8))
    index = discover(nn)
    assert [s.stem for s in index.samples] == ["x"]
    assert any("ignored nnU-Net's imagesTs/ + labelsTs/" in w for w in index.warnings), index.warnings


def test_discover_flat(tmp_path):
    for stem in ("b", "a"):
        put_pair(tmp_path, stem)
    np.save(tmp_path / "images" / "c.npy", np.zeros((2, 16, 16), np.uint16))
    np.save(tmp_path / "masks" / "c.npy", np.zeros((2, 16, 16), np.uint8))
    put_png(tmp_path / "images" / "only_image.png", np.zeros((16, 16), np.uint8))
    put_png(tmp_path / "masks" / "only_mask.png", np.zeros((16, 16), np.uint8))
    (tmp_path / "images" / "notes.txt").write_text("x")
    index = discover(tmp_path)
    assert index.layout == "flat"
    assert [(s.stem, s.category) for s in index.samples] == [("a", "all"), ("b", "all"), ("c", "all")]
    assert index.samples[0] == Sample("a", "all", tmp_path / "images" / "a.png", tmp_path / "masks" / "a.png")
    assert [p.name for _, p in index.unpaired_images] == ["only_image.png"]
    assert [p.name for _, p in index.unpaired_masks] == ["only_mask.png"]
    assert any("notes.txt" in w for w in index.warnings) and not index.problems


def test_discover_category_folders(tmp_path):
    put_pair(tmp_path, "x1", category="typical")
    put_pair(tmp_path, "x2", category="typical")
    put_pair(tmp_path, "y1", category="aggressive")
    (tmp_path / "broken" / "images").mkdir(parents=True)
    index = discover(tmp_path)
    assert index.layout == "category-folders"
    assert [(s.category, s.stem) for s in index.samples] == [("aggressive", "y1"), ("typical", "x1"),
                                                             ("typical", "x2")]
    assert any("broken" in p for p in index.problems)
    assert not index.warnings
    # an empty category was dropped without a word (a QA finding of stop 51): a user expecting it is told
    (tmp_path / "stir" / "images").mkdir(parents=True)
    (tmp_path / "stir" / "masks").mkdir()
    index = discover(tmp_path)
    assert index.warnings == [f"{tmp_path / 'stir'}: category folder with no images or masks"]
    assert any("stir: category folder with no images" in w for w in check_dataset(tmp_path).warning_lines())


def test_discover_categories_csv(tmp_path):
    for stem in ("a", "b", "c"):
        put_pair(tmp_path, stem)
    (tmp_path / "categories.csv").write_text("stem,category\na,typical\nb,atypical\nc,typical\nzzz,typical\n")
    index = discover(tmp_path)
    assert index.layout == "categories-csv" and not index.problems
    assert {s.stem: s.category for s in index.samples} == {"a": "typical", "b": "atypical", "c": "typical"}
    assert any("zzz" in w for w in index.warnings)
    (tmp_path / "categories.csv").write_text("a,typical\nb\n")
    index = discover(tmp_path)
    problems = " | ".join(index.problems)
    assert "line 2" in problems and "'c' is not listed" in problems and "'b' is not listed" in problems


def test_discover_duplicates_and_errors(tmp_path):
    put_pair(tmp_path, "a")
    np.save(tmp_path / "images" / "a.npy", np.zeros((16, 16)))
    index = discover(tmp_path)
    assert not index.samples and "duplicate stem 'a'" in index.problems[0]
    with pytest.raises(InputError, match="no such file"):
        discover(tmp_path / "missing")
    (tmp_path / "lonely" / "images").mkdir(parents=True)
    with pytest.raises(InputError, match="no masks/ folder"):
        discover(tmp_path / "lonely")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="no dataset found"):
        discover(tmp_path / "nothing")


def test_dicom_series_folder_as_sample(tmp_path):
    series = tmp_path / "images" / "patient1"
    series.mkdir(parents=True)
    for i in range(2):
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.save_as(series / f"{i}.dcm")
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "masks" / "patient1.npy", np.ones((2, 64, 64), np.uint8))
    report = check_dataset(tmp_path)
    assert report.usable and report.totals().slices == 2
    # a label map written for the series by write_nifti_labels is a valid mask for it
    labels = np.zeros((2, 64, 64), np.uint8)
    labels[1, 5:9, 30:40] = 1
    (tmp_path / "masks" / "patient1.npy").unlink()
    write_nifti_labels(tmp_path / "masks" / "patient1.nii.gz", labels, read_image(series))
    img, mask = load_pair(discover(tmp_path).samples[0])
    assert img.shape == (2, 64, 64) and np.array_equal(mask, labels)


def test_data_check_counts_a_mask_paired_by_array_order_against_its_own_geometry(tmp_path):
    """An image without geometry (qform and sform codes 0) beside a mask whose file says its axes run LPS: paired in
    array order (perhaps mirrored), logged 'check the pairing', and the report said 0 warnings (a QA finding of stop
    52). Counted in the report now, in its text and JSON."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    arr = np.random.default_rng(0).integers(0, 200, (40, 48, 6)).astype(np.int16)
    img = nib.Nifti1Image(arr, np.eye(4))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, tmp_path / "images" / "b.nii.gz")
    mask = np.zeros((40, 48, 6), np.uint8)
    mask[10:20, 10:20, 2:4] = 1
    lps = nib.Nifti1Image(mask, np.diag([-1.0, -1.0, 1.0, 1.0]))
    lps.set_qform(lps.affine, code=1)
    lps.set_sform(lps.affine, code=1)
    nib.save(lps, tmp_path / "masks" / "b.nii.gz")
    report = check_dataset(tmp_path)
    said = [w for w in report.warning_lines() if "by array order" in w and "check the pairing" in w]
    assert len(said) == 1 and "LPS" in said[0], report.warning_lines()
    assert any("check the pairing" in w for w in json.loads(json.dumps(report.to_dict()))["warnings"])


def test_dangling_links_for_a_series_folder_or_a_slice_are_named(tmp_path):
    """A dangling link standing for a series folder was 'ignored (not an image file extension)' and its mask called
    unpaired (USABLE); one for a slice inside a series was skipped without a word (the series read a slice short)."""
    from dicom_series import mr_series, save_series

    series = save_series(mr_series(3), tmp_path / "images" / "s1")
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "masks" / "s1.npy", np.zeros((3, 64, 64), np.uint8))
    np.save(tmp_path / "masks" / "s3.npy", np.zeros((3, 64, 64), np.uint8))
    (tmp_path / "images" / "s3").symlink_to(tmp_path / "nowhere")
    report = check_dataset(tmp_path)
    assert [(p.name, r) for p, r in report.unreadable] == [("s3", "a symbolic link to nothing")], report.unreadable
    assert not report.unpaired_masks and not report.usable
    (tmp_path / "images" / "s3").unlink()
    (tmp_path / "masks" / "s3.npy").unlink()
    assert check_dataset(tmp_path).usable
    (series / "IM0009.dcm").symlink_to(tmp_path / "gone.dcm")
    with pytest.raises(InputError, match="a symbolic link to nothing in a series folder") as exc:
        read_image(series)
    assert exc.value.path.name == "IM0009.dcm"
    assert not check_dataset(tmp_path).usable


# ------------------------------------------------------------------------------------------------ load_pair
def test_load_pair_and_mismatch(tmp_path):
    put_pair(tmp_path, "a", size=(32, 40))
    sample = discover(tmp_path).samples[0]
    img, mask = load_pair(sample)
    assert img.shape == mask.shape == (1, 32, 40) and img.dtype == mask.dtype == np.uint8
    assert mask.sum() == 36
    put_png(tmp_path / "masks" / "a.png", np.zeros((32, 41), np.uint8))
    with pytest.raises(InputError, match="differ") as exc:
        load_pair(sample)
    assert "a.png" in str(exc.value) and str(tmp_path / "masks" / "a.png") in exc.value.reason


def test_load_pair_labels(tmp_path):
    put_png(tmp_path / "images" / "a.png", np.zeros((16, 16), np.uint8))
    m = np.zeros((16, 16), np.uint8)
    m[0:2, 0:2] = 1
    m[5:8, 5:8] = 2
    put_png(tmp_path / "masks" / "a.png", m)
    sample = discover(tmp_path).samples[0]
    assert load_pair(sample)[1].sum() == 13
    assert load_pair(sample, labels=[2])[1].sum() == 9


# ------------------------------------------------------------------------------------------------ check
def test_an_unreadable_mask_is_one_line_of_the_report(tmp_path, monkeypatch):
    """A mask the system will not let be read (chmod 000) stopped hemseg data check with 'Permission denied' and no
    report (an unreadable image got its line); it is listed as unreadable now, the other pairs checked. (Root reads
    anything: the refusal is simulated.)"""
    import hemseg.runtime.io.sniff as sniff

    put_pair(tmp_path, "a")
    put_pair(tmp_path, "b")
    real = sniff.read_regular_bytes

    def refuse(path, *args, **kwargs):
        if Path(path).parent.name == "masks" and Path(path).stem == "b":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sniff, "read_regular_bytes", refuse)
    report = check_dataset(tmp_path)
    assert [(p.name, why) for p, why in report.unreadable] == [("b.png", "cannot read: Permission denied")]
    assert report.valid_pairs == 1


def test_check_dataset_categories_and_problems(tmp_path):
    put_pair(tmp_path, "good", category="typical")
    put_pair(tmp_path, "empty", fg=False, category="typical")
    put_pair(tmp_path, "mism", category="aggressive")
    put_png(tmp_path / "aggressive" / "masks" / "mism.png", np.zeros((20, 20), np.uint8))
    put_pair(tmp_path, "broken", category="aggressive")
    data = (tmp_path / "aggressive" / "images" / "broken.png").read_bytes()
    (tmp_path / "aggressive" / "images" / "broken.png").write_bytes(data[:100])
    put_png(tmp_path / "aggressive" / "images" / "nomask.png", np.zeros((16, 16), np.uint8))
    report = check_dataset(tmp_path)
    assert not report.usable
    typ, agg = report.categories["typical"], report.categories["aggressive"]
    assert (typ.pairs, typ.valid, typ.empty_masks, typ.slices) == (2, 2, 1, 2)
    assert (agg.images, agg.masks, agg.pairs, agg.valid) == (3, 2, 2, 0)
    assert [p.name for p, _ in report.unreadable] == ["broken.png"]
    assert "truncated or corrupt" in report.unreadable[0][1]
    assert [(i.name, m.name) for i, m, _, _ in report.size_mismatches] == [("mism.png", "mism.png")]
    assert [p.name for p in report.empty_masks] == ["empty.png"]
    assert [p.name for p in report.unpaired_images] == ["nomask.png"]
    text = report.format_text()
    assert "typical" in text and "aggressive" in text and "NOT USABLE" in text
    assert "ERROR unreadable:" in text and "broken.png" in text and "WARN  empty mask" in text
    d = report.to_dict()
    assert json.loads(json.dumps(d))["usable"] is False and d["totals"]["pairs"] == 4


def test_check_usable_with_warnings_only(tmp_path):
    put_pair(tmp_path, "a")
    put_pair(tmp_path, "b", fg=False)
    put_png(tmp_path / "masks" / "orphan.png", np.zeros((16, 16), np.uint8))
    report = check_dataset(tmp_path)
    assert report.usable and report.valid_pairs == 2 and len(report.warning_lines()) == 2


def test_check_warns_about_blank_images(tmp_path):
    """An image of one value (a blank export) is usable but named: its mask cannot be learned from it."""
    put_pair(tmp_path, "a")
    put_png(tmp_path / "images" / "blank.png", np.full((16, 16), 7, np.uint8))
    m = np.zeros((16, 16), np.uint8)
    m[4:8, 4:8] = 255
    put_png(tmp_path / "masks" / "blank.png", m)
    report = check_dataset(tmp_path)
    assert report.usable and [(p.name, v) for p, v in report.blank_images] == [("blank.png", 7)]
    assert any("blank image (every pixel 7" in line and "blank.png" in line for line in report.warning_lines())
    assert report.to_dict()["blank_images"][0]["value"] == 7


def test_check_nothing_valid(tmp_path):
    put_png(tmp_path / "images" / "a.png", np.zeros((16, 16), np.uint8))
    (tmp_path / "masks").mkdir()
    report = check_dataset(tmp_path)
    assert not report.usable and "no valid image/mask pair" in report.error_lines()[-1]


# ------------------------------------------------------------------------------------------------ fingerprint
def test_fingerprint_content_based(tmp_path):
    put_pair(tmp_path / "d", "a")
    put_pair(tmp_path / "d", "b")
    fp = dataset_fingerprint(discover(tmp_path / "d"))
    assert len(fp) == 64 and fp == dataset_fingerprint(discover(tmp_path / "d"))
    shutil.copytree(tmp_path / "d", tmp_path / "copy")
    assert dataset_fingerprint(discover(tmp_path / "copy")) == fp
    put_png(tmp_path / "copy" / "masks" / "a.png", np.zeros((32, 32), np.uint8))
    assert dataset_fingerprint(discover(tmp_path / "copy")) != fp


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_data_check_ok_and_json(tmp_path):
    put_pair(tmp_path / "d", "a")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path / "d"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "USABLE" in result.output and "all" in result.output
    assert json.loads(out.read_text())["valid_pairs"] == 1
    again = CliRunner().invoke(main, ["data", "check", str(tmp_path / "d"), "--json", str(out)])
    assert again.exit_code == 0, again.output  # an earlier report is replaced
    mask = tmp_path / "d" / "masks" / "a.png"
    before = mask.read_bytes()
    refused = CliRunner().invoke(main, ["data", "check", str(tmp_path / "d"), "--json", str(mask)])
    assert refused.exit_code != 0 and "not an earlier hemseg data check report" in str(refused.exception)
    assert mask.read_bytes() == before  # a dataset's own mask was replaced by the report


def test_cli_data_check_labels(tmp_path):
    put_png(tmp_path / "images" / "a.png", np.zeros((16, 16), np.uint8))
    put_png(tmp_path / "masks" / "a.png", np.full((16, 16), 1, np.uint8))
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path), "--label", "2", "--label", "3"])
    # eval, eval-masks and baseline refuse labels no mask holds (every reference empty): so does the check
    assert result.exit_code != 0 and "empty mask" in result.output and "labels [2, 3]" in result.output
    assert "no mask holds --label 2, 3; the masks hold 1" in result.output
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path), "--label", "1"])
    assert result.exit_code == 0 and "lesion pixel" not in result.output


def test_cli_data_check_unusable(tmp_path):
    put_pair(tmp_path, "a")
    (tmp_path / "images" / "a.png").write_bytes(b"")
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, DatasetError)
    assert "ERROR unreadable:" in result.output and "file is empty" in result.output


def test_cli_data_check_subprocess_one_line_error(tmp_path):
    put_pair(tmp_path, "a")
    (tmp_path / "images" / "a.png").write_text("not a png")
    cmd = [sys.executable, "-c", "from hemseg.cli import entry; entry()", "data", "check", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hemseg: error: ")
    assert "not usable" in proc.stderr and "not a PNG file" in proc.stdout
    proc = subprocess.run(cmd[:-1] + [str(tmp_path / "missing")], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 1 and "no such file or directory" in proc.stderr


# --------------------------------------------------------------------------------------------- real data
def test_real_spine_generic_dataset(tmp_path):
    if not (SHARED / "sub-unf01_T1w.nii.gz").is_file():
        pytest.skip(f"real data not found at {SHARED}")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for contrast in ("T1w", "T2w", "T2star"):
        (tmp_path / "images" / f"sub-unf01_{contrast}.nii.gz").symlink_to(SHARED / f"sub-unf01_{contrast}.nii.gz")
        (tmp_path / "masks" / f"sub-unf01_{contrast}.nii.gz").symlink_to(
            SHARED / f"sub-unf01_{contrast}_seg-manual.nii.gz")
    report = check_dataset(tmp_path)
    assert report.usable, report.format_text()
    assert report.valid_pairs == 3 and report.totals().slices == 48 and report.totals().foreground_slices == 48
    index = discover(tmp_path)
    img, mask = load_pair(index.samples[0])
    assert img.shape == mask.shape == (16, 141, 131) and img.dtype == np.uint8  # RAS, shown LPS
    assert nib.load(str(index.samples[0].mask)).shape == (131, 141, 16)
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path)])
    assert result.exit_code == 0 and "USABLE" in result.output


def test_no_pairs_error_names_the_unpaired_files(tmp_path):
    """Masks pair with images by file name; when none does, the error says how many stayed alone on each side and
    shows one of each, so a renamed mask folder is found at once."""
    from hemseg.runtime.dataset import usable_index

    for sub, name in (("images", "case1.png"), ("images", "case2.png"), ("masks", "seg_case1.png")):
        (tmp_path / sub).mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / sub / name), np.zeros((16, 16), np.uint8))
    with pytest.raises(DatasetError, match=r"no image/mask pairs to train on: 2 image\(s\) \(e\.g\. case1\.png\) and "
                                           r"1 mask\(s\) \(e\.g\. seg_case1\.png\) without a counterpart"):
        usable_index(tmp_path)


def test_files_left_out_for_want_of_a_counterpart_are_named_in_a_warning(tmp_path, caplog):
    """Training and evaluation go on with the pairs they have, but say which files they left out."""
    from hemseg.runtime.dataset import usable_index

    put_pair(tmp_path, "a")
    put_pair(tmp_path, "b")
    put_png(tmp_path / "images" / "nomask.png", np.zeros((16, 16), np.uint8))
    put_png(tmp_path / "masks" / "orphan.png", np.zeros((16, 16), np.uint8))
    with caplog.at_level("WARNING", logger="hemseg.runtime.dataset"):
        index = usable_index(tmp_path)
    assert [s.stem for s in index.samples] == ["a", "b"]
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "1 image(s) without a mask of the same name left out (e.g. nomask.png)" in text
    assert "1 mask(s) without an image of the same name left out (e.g. orphan.png)" in text


def test_a_mask_with_several_nonzero_values_is_flagged_unless_a_label_is_chosen(tmp_path, caplog):
    """A label map (several structures) as a mask would train on all of them: data check and train say so."""
    from hemseg.runtime.dataset import label_map_masks, warn_label_maps

    put_pair(tmp_path, "binary")  # 0/255
    put_png(tmp_path / "images" / "multi.png", np.zeros((16, 16), np.uint8))
    m = np.zeros((16, 16), np.uint8)
    m[0:2, 0:2], m[5:8, 5:8] = 1, 2
    put_png(tmp_path / "masks" / "multi.png", m)
    samples = discover(tmp_path).samples
    assert [(p.name, v.tolist()) for p, v in label_map_masks(samples)] == [("multi.png", [1, 2])]
    report = check_dataset(tmp_path)
    assert [(p.name, v) for p, v in report.label_maps] == [("multi.png", [1, 2])]
    assert any("2 distinct nonzero values (1, 2)" in line and "multi.png" in line for line in report.warning_lines())
    assert report.to_dict()["label_maps"] == [{"mask": str(tmp_path / "masks" / "multi.png"), "values": [1, 2]}]
    assert check_dataset(tmp_path, labels=[2]).label_maps == []  # --label chose: nothing to flag
    with caplog.at_level("WARNING", logger="hemseg.runtime.dataset"):
        warn_label_maps(tmp_path, samples)
    assert "1 of 2 mask(s) hold more than one nonzero value (e.g. multi.png: 1, 2)" in caplog.text
    assert "choose the lesion's value(s) with --label" in caplog.text


def test_a_soft_mask_is_told_to_be_binarized_not_given_a_label(tmp_path):
    """Fractional mask values (an interpolated mask): "nonzero" enlarges the lesion by every partial pixel and
    --label cannot pick fractions, so the advice is to binarize."""
    put_png(tmp_path / "images" / "soft.png", np.zeros((16, 16), np.uint8))
    soft = np.zeros((16, 16), np.float32)
    soft[4:8, 4:8], soft[3, 4:8] = 1.0, 0.25
    (tmp_path / "masks").mkdir(exist_ok=True)
    np.save(tmp_path / "masks" / "soft.npy", soft)
    [line] = [x for x in check_dataset(tmp_path).warning_lines() if "soft.npy" in x]
    assert "not whole numbers" in line and "binarize it first" in line and "choose the lesion" not in line


def test_mask_values_are_shown_as_many_digits_as_tell_them_apart():
    """A soft mask's values that agree to 4 digits were listed as '0.5, 0.5, 0.5' (a QA finding of stop 50)."""
    from hemseg.runtime.dataset import format_values

    assert format_values([0.50001, 0.50002, 0.50003]) == "0.50001, 0.50002, 0.50003"
    assert format_values([1, 2, 255]) == "1, 2, 255"
    assert format_values([0.25, 0.003921568]) == "0.25, 0.003922"
    assert format_values(list(range(1, 9))) == "1, 2, 3, 4, 5, ..."


def test_a_soft_mask_with_a_label_is_warned_about_shrinking(tmp_path, caplog):
    """--label 1 on a soft mask keeps only the pixels exactly 1: said by data check and by training's warning."""
    from hemseg.runtime.dataset import discover, warn_label_maps

    put_png(tmp_path / "images" / "soft.png", np.zeros((16, 16), np.uint8))
    soft = np.zeros((16, 16), np.float32)
    soft[4:8, 4:8], soft[3, 4:8] = 1.0, 0.6
    (tmp_path / "masks").mkdir(exist_ok=True)
    np.save(tmp_path / "masks" / "soft.npy", soft)
    [line] = [x for x in check_dataset(tmp_path, labels=[1]).warning_lines() if "soft.npy" in x]
    assert "not whole numbers" in line and "keeps only the pixels exactly equal" in line
    with caplog.at_level("WARNING", logger="hemseg"):
        warn_label_maps(tmp_path, discover(tmp_path).samples, [1])
    assert any("keeps only the pixels exactly equal" in r.getMessage() for r in caplog.records)


def test_label_0_and_masks_that_are_mostly_lesion(tmp_path):
    """--label 0 (the background) is refused naming the mask; masks marking most pixels are flagged as inverted."""
    for i in range(2):
        put_pair(tmp_path / "ok", f"a{i}")
        inverted = np.full((32, 32), 255, np.uint8)
        inverted[4:10, 4:10] = 0
        put_png(tmp_path / "inv" / "images" / f"a{i}.png", np.zeros((32, 32), np.uint8))
        put_png(tmp_path / "inv" / "masks" / f"a{i}.png", inverted)
    report = check_dataset(tmp_path / "ok", labels=[0])
    assert not report.usable and "--label 0 selects this mask's background" in report.unreadable[0][1]
    assert not any("of all pixels as lesion" in x for x in check_dataset(tmp_path / "ok").warning_lines())
    [line] = [x for x in check_dataset(tmp_path / "inv").warning_lines() if "of all pixels as lesion" in x]
    assert "96.5 %" in line and "inverted" in line


def test_check_says_when_train_would_refuse_a_single_pair_or_a_single_case(tmp_path):
    """data check said USABLE, 0 warnings, for data that hemseg train refuses (it needs two samples or cases)."""
    put_pair(tmp_path / "one", "a")
    assert any("only one valid image/mask pair" in x for x in check_dataset(tmp_path / "one").warning_lines())
    for stem in ("a", "b"):
        put_pair(tmp_path / "case", stem)
    assert not any("hemseg train" in x for x in check_dataset(tmp_path / "case").warning_lines())
    (tmp_path / "case" / "cases.csv").write_text("stem,case\na,p1\nb,p1\n")
    [line] = [x for x in check_dataset(tmp_path / "case").warning_lines() if "one case" in x]
    assert "cases.csv" in line and "needs at least 2" in line


def _nifti(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def test_nnunet_raw_layout(tmp_path):
    """An nnU-Net raw dataset (imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz) trains as it is: cases pair
    by name without the channel suffix; another channel is left out with a warning, never paired by mistake."""
    root = tmp_path / "Dataset501_Spine"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for case in ("spine_001", "spine_002"):
        _nifti(root / "imagesTr" / f"{case}_0000.nii.gz", rng.random((24, 20, 3), dtype=np.float32))
        label = np.zeros((24, 20, 3), np.uint8)
        label[5:9, 6:10, 1] = 1
        _nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    _nifti(root / "imagesTr" / "spine_001_0001.nii.gz", rng.random((24, 20, 3), dtype=np.float32))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {"background": 0,
                                                   "hemangioma": 1}, "numTraining": 2, "file_ending": ".nii.gz"}))
    index = discover(root)
    assert index.layout == "nnunet" and not index.problems
    assert [(s.stem, s.image.name, s.mask.name) for s in index.samples] == [
        ("spine_001", "spine_001_0000.nii.gz", "spine_001.nii.gz"),
        ("spine_002", "spine_002_0000.nii.gz", "spine_002.nii.gz")]
    assert any("1 image(s) of nnU-Net channels other than 0000 (e.g. spine_001_0001.nii.gz)" in w
               for w in index.warnings)
    image, mask = load_pair(index.samples[0])
    assert image.shape == mask.shape and mask.sum() == 16
    report = check_dataset(root)
    assert report.usable and report.valid_pairs == 2
    # half a layout is an error naming the missing folder; a test split alone (imagesTs + labelsTs) is read too
    shutil.rmtree(root / "labelsTr")
    with pytest.raises(InputError, match="has imagesTr/ but no labelsTr/"):
        discover(root)
    (root / "imagesTr").rename(root / "imagesTs")
    (root / "labelsTs").mkdir()
    _nifti(root / "labelsTs" / "spine_002.nii.gz", np.zeros((24, 20, 3), np.uint8))
    index = discover(root)
    assert [s.stem for s in index.samples] == ["spine_002"]
    assert [p.name for _, p in index.unpaired_images] == ["spine_001_0000.nii.gz"]


def test_masks_named_with_a_mask_suffix_pair_with_their_image(tmp_path):
    """``a.png`` + ``a_mask.png`` (what hemseg predict writes, and many public datasets ship) form a pair, as do
    ``_seg`` / ``_rtstruct`` / ``_label`` / ``_gt`` / ``_segmentation`` names in any case; a mask of the exact stem wins, an
    image named like a mask pairs with the mask of its own name, and a suffix without its image stays unpaired."""
    img = np.zeros((16, 16), np.uint8)
    for stem in ("a", "b", "c", "d", "e", "f_mask", "g", "h"):
        put_png(tmp_path / "images" / f"{stem}.png", img)
    for name in ("a_mask", "b_SEG", "c_label", "d_gt", "e_segmentation", "f_mask", "g", "g_mask", "h_rtstruct",
                 "z_mask"):
        put_png(tmp_path / "masks" / f"{name}.png", img)
    index = discover(tmp_path)
    assert not index.problems
    assert [(s.stem, s.mask.name) for s in index.samples] == [
        ("a", "a_mask.png"), ("b", "b_SEG.png"), ("c", "c_label.png"), ("d", "d_gt.png"),
        ("e", "e_segmentation.png"), ("f_mask", "f_mask.png"), ("g", "g.png"), ("h", "h_rtstruct.png")]
    assert sorted(p.name for _, p in index.unpaired_masks) == ["g_mask.png", "z_mask.png"]
    assert not index.unpaired_images
    # hemseg predict's own output folder serves as the masks of its inputs (a NIfTI label map of a volume too)
    root = tmp_path / "vol"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _nifti(root / "images" / "scan.nii.gz", np.random.default_rng(0).random((12, 10, 2), dtype=np.float32))
    label = np.zeros((12, 10, 2), np.uint8)
    label[2:5, 3:6, 1] = 1
    _nifti(root / "masks" / "scan_mask.nii.gz", label)
    report = check_dataset(root)
    assert report.usable and report.valid_pairs == 1


def test_a_masks_folder_under_another_name_is_named_in_the_error(tmp_path):
    put_png(tmp_path / "images" / "a.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(InputError, match=r"has images/ but no masks/ folder$"):
        discover(tmp_path)
    put_png(tmp_path / "labels" / "a.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(InputError, match=r"no masks/ folder \(found labels/: hemseg reads DATA/masks/; rename or "
                                         r"link it\)"):
        discover(tmp_path)


def test_images_and_masks_side_by_side_are_named_in_the_error(tmp_path):
    """One folder per patient with a.tif + a_mask.tif (as some public datasets ship): the error says where and how
    to lay them out."""
    put_png(tmp_path / "patient1" / "s1.png", np.zeros((16, 16), np.uint8))
    put_png(tmp_path / "patient1" / "s1_mask.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(InputError, match=r"no dataset found: .*; .*patient1 holds images and masks side by side "
                                         r"\(e\.g\. s1_mask\.png\): move the images into DATA/images/"):
        discover(tmp_path)
    (tmp_path / "patient1" / "s1_mask.png").rename(tmp_path / "patient1" / "other.png")
    with pytest.raises(InputError, match=r"nnU-Net's DATA/imagesTr \+ DATA/labelsTr$"):
        discover(tmp_path)


def test_check_agrees_with_eval_on_labels_no_mask_holds_and_on_label_0(tmp_path):
    """data check --label 7 on masks holding 255 said USABLE (exit 0) while eval / eval-masks / baseline refuse it;
    those said of --label 0 'no mask holds --label 0' (every mask holds 0)."""
    from hemseg.errors import UsageError
    from hemseg.runtime.dataset import warn_label_maps

    put_pair(tmp_path, "a")
    put_pair(tmp_path, "b")
    report = check_dataset(tmp_path, labels=[7])
    assert not report.usable and report.label_problems == ["no mask holds --label 7; the masks hold 255"]
    assert not report.problems and report.to_dict()["label_problems"] == report.label_problems
    assert check_dataset(tmp_path, labels=[255]).usable
    res = CliRunner().invoke(main, ["data", "check", str(tmp_path), "--label", "7"])
    # a label problem, not a layout one: the one-line error said 'first: layout: no mask holds ...'
    assert res.exit_code != 0 and "first: labels: no mask holds --label 7" in str(res.exception)
    assert "ERROR labels: no mask holds" in res.output and "layout: no mask" not in res.output
    index = discover(tmp_path)
    with pytest.raises(UsageError, match="--label 0 selects the masks' background as the lesion"):
        warn_label_maps(tmp_path, index.samples, [0], require_labels=True)


def test_nnunet_categories_csv_is_read_and_jpeg_masks_are_told_by_content(tmp_path):
    """categories.csv beside imagesTr/labelsTr was ignored without a word; a PNG mask named .jpg was reported as a
    JPEG mask 'binarized at Otsu's threshold'."""
    rng = np.random.default_rng(0)
    for k in (1, 2, 3):
        put_png(tmp_path / "nn" / "imagesTr" / f"c{k}_0000.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
        mask = np.zeros((32, 32), np.uint8)
        mask[4:10, 4:10] = 1
        put_png(tmp_path / "nn" / "labelsTr" / f"c{k}.png", mask)
    (tmp_path / "nn" / "categories.csv").write_text("stem,category\nc1,ax\nc2,sag\nc3,sag\n")
    index = discover(tmp_path / "nn")
    assert index.layout == "nnunet" and {s.stem: s.category for s in index.samples} == {"c1": "ax", "c2": "sag",
                                                                                          "c3": "sag"}
    (tmp_path / "nn" / "categories.csv").write_text("stem,category\nc1,ax\n")
    assert any("'c2' is not listed in categories.csv" in p for p in discover(tmp_path / "nn").problems)
    put_pair(tmp_path / "j", "a")
    put_pair(tmp_path / "j", "b")
    (tmp_path / "j" / "masks" / "b.png").rename(tmp_path / "j" / "masks" / "b.jpg")  # PNG content
    report = check_dataset(tmp_path / "j")
    assert not any("JPEG mask" in w for w in report.warnings)


def test_check_does_not_advise_writing_a_cases_csv_that_is_there(tmp_path):
    put_pair(tmp_path, "s1")
    put_pair(tmp_path, "s2")
    (tmp_path / "cases.csv").write_text("stem,case\nS1,p1\nS2,p1\n")  # other spelling: lists none of the stems
    text = check_dataset(tmp_path).format_text()
    assert "is not listed in cases.csv" in text and "list them in" not in text


def test_bids_derivative_mask_names_pair_with_their_image(tmp_path):
    """spine-generic and the Spinal Cord Toolbox name a cord mask ``sub-01_T2w_seg-manual``; BIDS derivatives add
    ``_label-SC_mask``, ``_desc-x_dseg``. These were unpaired with no hint; a probability map (``_probseg``) is not a
    mask and stays unpaired, and two derivatives of one image are a duplicate, not a silent pick."""
    names = {"sub-01_T2w": "sub-01_T2w_seg-manual", "sub-02_T1w": "sub-02_T1w_label-SC_mask",
             "sub-03_T2w": "sub-03_T2w_desc-cord_dseg", "sub-04_T2w": "sub-04_T2w_dseg",
             "sub-05_T2w": "sub-05_T2w_probseg"}
    for image, mask in names.items():
        put_png(tmp_path / "images" / f"{image}.png", np.zeros((16, 16), np.uint8))
        put_png(tmp_path / "masks" / f"{mask}.png", np.full((16, 16), 255, np.uint8))
    index = discover(tmp_path)
    assert {s.stem: s.mask.name for s in index.samples} == {
        "sub-01_T2w": "sub-01_T2w_seg-manual.png", "sub-02_T1w": "sub-02_T1w_label-SC_mask.png",
        "sub-03_T2w": "sub-03_T2w_desc-cord_dseg.png", "sub-04_T2w": "sub-04_T2w_dseg.png"}
    assert [p.name for _, p in index.unpaired_masks] == ["sub-05_T2w_probseg.png"]
    put_png(tmp_path / "masks" / "sub-01_T2w_label-CSF_mask.png", np.full((16, 16), 255, np.uint8))
    assert any("duplicate stem 'sub-01_T2w'" in p for p in discover(tmp_path).problems)


def test_a_mask_named_after_its_image_with_another_suffix_gets_a_hint(tmp_path):
    """``a.png`` + ``a_manual.png``: both unpaired, and the error and the check said only 'without a counterpart
    of the same name'; now they name the mask, its image and the names that pair."""
    from hemseg.errors import DatasetError
    from hemseg.runtime.dataset import usable_index

    for stem in ("scan_1", "scan_10"):
        put_png(tmp_path / "images" / f"{stem}.png", np.zeros((16, 16), np.uint8))
        put_png(tmp_path / "masks" / f"{stem}_manual.png", np.full((16, 16), 255, np.uint8))
    # (the others counted: the hint named the first mask only, as if one file were misnamed)
    with pytest.raises(DatasetError, match=r"scan_10_manual.png looks like the mask of scan_10 \(so do 1 more "
                                           r"unpaired mask\(s\), e.g. scan_1_manual.png of scan_1\), .*_seg-manual.*"
                                           r"rename them, e.g. scan_10_mask.png"):
        usable_index(tmp_path)
    lines = check_dataset(tmp_path).warning_lines()
    assert any(line.startswith("scan_10_manual.png looks like the mask of scan_10 (so do 1 more") for line in lines)
    (tmp_path / "masks" / "scan_1_manual.png").rename(tmp_path / "masks" / "scan_1_mask.png")
    [line] = [x for x in check_dataset(tmp_path).warning_lines() if "looks like" in x]
    assert "more unpaired" not in line and line.endswith("rename it, e.g. scan_10_mask.png")


def test_pixel_digests_tell_slices_by_their_values_and_skip_slices_without_content():
    """A slice's digest is of its values whatever their type; a slice with too little in it gets none: a constant
    frame around zero padding is alike in unrelated volumes, and one such slice made a volume never trained on
    count as a training image (a QA finding of stop 51)."""
    from hemseg.runtime.dataset import MIN_DISTINCT_VALUES, pixel_digests

    rng = np.random.default_rng(0)
    img = rng.integers(0, 4000, (40, 48)).astype(np.uint16)
    same = [pixel_digests(img.astype(t))[0] for t in (np.uint16, np.int32, np.float32, np.float64)]
    assert same[0] is not None and len(set(same)) == 1
    # the same slice with its values mapped by an increasing function (exact values missed these: stop 52)
    mapped = [img.astype(np.int64) * 16 + 7, img.astype(np.float32) / 4000, np.sqrt(img.astype(np.float64)) - 3]
    assert [pixel_digests(m)[0] for m in mapped] == [same[0]] * 3
    swapped = img.copy()
    a, b = np.argwhere(img != img[0, 0])[0]
    swapped[0, 0], swapped[a, b] = img[a, b], img[0, 0]
    other = [img.T, 4000 - img, swapped, img // 64]  # another order, inverted, two pixels swapped, values merged
    assert len({pixel_digests(x)[0] for x in other} | {same[0]}) == 5
    frame = np.zeros((96, 96), np.int16)
    frame[:3], frame[-3:], frame[:, :3], frame[:, -3:] = 50, 50, 50, 50
    few = np.tile(np.arange(MIN_DISTINCT_VALUES - 1, dtype=np.uint8), (16, 4))  # 15 values
    enough = np.tile(np.arange(MIN_DISTINCT_VALUES * 4, dtype=np.uint8), (16, 1))  # 16 in every 4th column
    assert [pixel_digests(x)[0] for x in (np.zeros((64, 60)), frame, few)] == [None, None, None]
    assert pixel_digests(enough)[0] is not None


def test_masks_holding_another_value_than_label_are_warned_of(tmp_path, caplog):
    """Masks 0/1 beside masks 0/255 with --label 1: the 255 masks read as lesion-free; data check listed them as
    'empty mask' like a blank one and train said nothing (a QA finding of stop 55)."""
    from hemseg.runtime.dataset import warn_label_maps

    for i, value in enumerate((1, 1, 255, 255, 255)):
        put_png(tmp_path / "images" / f"a{i}.png", np.full((16, 16), 40 + i, np.uint8))
        mask = np.zeros((16, 16), np.uint8)
        mask[4:9, 4:9] = value
        put_png(tmp_path / "masks" / f"a{i}.png", mask)
    said = ("3 of 5 mask(s) hold nonzero values but not --label 1 (e.g. a2.png: 255): they read as lesion-free; "
            "binary masks in another encoding? give each lesion value (--label 1 --label 255)")
    report = check_dataset(tmp_path, labels=[1])
    assert said in report.warnings and report.usable
    with caplog.at_level("WARNING"):
        assert warn_label_maps(tmp_path, discover(tmp_path).samples, [1]) == [f"{tmp_path}: {said}"]
    assert said in caplog.text
    # every lesion value given, or no --label: nothing to say
    assert not any("not --label" in w for w in check_dataset(tmp_path, labels=[1, 255]).warnings)
    assert warn_label_maps(tmp_path, discover(tmp_path).samples, [1, 255]) == []
    # a label map whose lesion-free slices hold another structure (2) only: named, without the encoding guess
    for i in (2, 3, 4):
        mask = np.zeros((16, 16), np.uint8)
        mask[4:9, 4:9], mask[10:12, 10:12] = 2, 3 if i == 4 else 2
        put_png(tmp_path / "masks" / f"a{i}.png", mask)
    line = next(w for w in check_dataset(tmp_path, labels=[1]).warnings if "not --label 1" in w)
    assert "if they hold the lesion under another value, add it with --label" in line


def test_a_label_map_whose_lesion_free_slices_hold_another_structure_is_not_warned_of(tmp_path):
    """Cord 1 and lesion 2, --label 2: slices without a lesion hold the cord only. The warning told the user to add
    1 as a lesion value (QA, stop 55): a value held beside the label elsewhere is another structure."""
    from hemseg.runtime.dataset import other_label_warning, warn_label_maps

    for i in range(5):
        put_png(tmp_path / "images" / f"a{i}.png", np.full((16, 16), 40 + i, np.uint8))
        mask = np.zeros((16, 16), np.uint8)
        mask[2:14, 6:10] = 1
        if i < 2:
            mask[4:7, 6:9] = 2
        put_png(tmp_path / "masks" / f"a{i}.png", mask)
    assert not any("not --label" in w for w in check_dataset(tmp_path, labels=[2]).warnings)
    assert warn_label_maps(tmp_path, discover(tmp_path).samples, [2]) == []
    # the advice names the flag even when the labels come from elsewhere (eval: the model's training labels)
    said = other_label_warning([(Path("a.png"), [1]), (Path("b.png"), [255])], [1], "the model's training labels")
    assert said.endswith("give each lesion value (--label 1 --label 255)") and "not the model's training labels 1" in said


def test_nnunet_image_without_a_channel_suffix_pairs_with_its_mask(tmp_path):
    """imagesTr/plain.png beside labelsTr/plain.png: data check called it an unpaired image, its mask an unpaired
    mask and the image ignored, three contradicting lines (a QA finding of stop 55); it pairs by its own name."""
    root = tmp_path / "nn"
    for stem in ("c000", "c001"):
        put_png(root / "imagesTr" / f"{stem}_0000.png", np.full((16, 16), 60, np.uint8))
        put_png(root / "labelsTr" / f"{stem}.png", np.full((16, 16), 1, np.uint8))
    put_png(root / "imagesTr" / "plain.png", np.full((16, 16), 60, np.uint8))
    put_png(root / "labelsTr" / "plain.png", np.full((16, 16), 1, np.uint8))
    index = discover(root)
    assert sorted(s.stem for s in index.samples) == ["c000", "c001", "plain"]
    assert not index.unpaired_images and not index.unpaired_masks and not index.problems
    assert any("1 image(s) without nnU-Net's channel suffix (e.g. plain.png" in w for w in index.warnings)
    report = check_dataset(root)
    assert report.valid_pairs == 3 and not any("unpaired" in line for line in report.warning_lines())


def test_nnunet_labels_named_with_the_channel_suffix_are_explained(tmp_path):
    """imagesTr/hem_0000..0003.png with labelsTr/hem_0000..0003.png: the images read as case 'hem' (channels 0-3)
    and every file was 'unpaired' with no word why (QA, stop 55)."""
    root = tmp_path / "nn"
    for k in range(4):
        put_png(root / "imagesTr" / f"hem_{k:04d}.png", np.full((16, 16), 60, np.uint8))
        put_png(root / "labelsTr" / f"hem_{k:04d}.png", np.full((16, 16), 1, np.uint8))
    index = discover(root)
    said = [w for w in index.warnings if "named like an image with its channel suffix" in w]
    assert said and "4 label(s)" in said[0] and "case 'hem', channel 0000" in said[0] and "(hem.png)" in said[0]
