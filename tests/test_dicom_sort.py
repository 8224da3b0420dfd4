"""``hemseg data sort-dicom``: a mixed, nested DICOM export becomes one readable folder per series; the source is
left as it was, and an existing destination is never written into."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")

from dicom_series import mr_series  # noqa: E402

from hemseg.errors import InputError, UsageError  # noqa: E402
from hemseg.runtime.io import find_inputs, read_image  # noqa: E402
from hemseg.runtime.io.dicom_sort import sort_dicom  # noqa: E402


def export(root: Path) -> dict[str, str]:
    """Two MR series (3 and 4 slices) mixed in one folder and a sub-folder, as a PACS export writes them, with
    clashing file names, a truncated file, a text file and a DICOMDIR; returns the sha256 of every file."""
    a, b = mr_series(3), mr_series(4)
    for ds in a:
        ds.SeriesNumber, ds.SeriesDescription = 3, "t1 sag"
    for ds in b:
        ds.SeriesNumber, ds.SeriesDescription = 4, "t2/stir sag"
    root.mkdir()
    (root / "sub").mkdir()
    for i, ds in enumerate(a + b):
        folder = root if i % 2 else root / "sub"
        ds.save_as(folder / f"IM{i // 2:04d}.dcm", enforce_file_format=True)  # names repeat across folders
    (root / "sub" / "broken.dcm").write_bytes((root / "IM0001.dcm").read_bytes()[:200])
    (root / "notes.txt").write_text("not dicom")
    (root / "DICOMDIR").write_bytes(b"\0" * 10)
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_sorts_a_mixed_nested_export_into_readable_series_folders(tmp_path):
    before = export(tmp_path / "src")
    # the mixed folder itself cannot be read as one series, and says what to do
    with pytest.raises(InputError, match="hemseg data sort-dicom"):
        read_image(tmp_path / "src")
    manifest = sort_dicom(tmp_path / "src", tmp_path / "out")
    names = [s["folder"] for s in manifest["series"]]
    assert sorted(names) == ["003_MR_t1_sag", "004_MR_t2_stir_sag"]
    for s in manifest["series"]:
        vol = read_image(tmp_path / "out" / s["folder"])  # a series folder the reader accepts
        assert vol.kind == "dicom-series" and vol.n_slices == s["files"]
    assert {s["files"] for s in manifest["series"]} == {3, 4}
    files = sorted(p.name for p in (tmp_path / "out").rglob("*.dcm"))
    assert len(files) == 7 and all(name.endswith(".dcm") for name in files)
    assert any(name.endswith("_2.dcm") for name in files)  # IM0000.dcm of both folders, one series
    assert [Path(k["file"]).name for k in manifest["skipped"]] == ["broken.dcm"]
    assert json.loads((tmp_path / "out" / "series.json").read_text()) == manifest
    # the sorted folder itself is a study: one input per series folder
    assert find_inputs([tmp_path / "out"]) == [tmp_path / "out" / n for n in sorted(names)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["003_MR_t1_sag", "004_MR_t2_stir_sag",
                                                                     "series.json"]  # no temporary folder left
    after = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "src").rglob("*")
             if p.is_file()}
    assert after == before  # the source is only read


def test_an_export_holding_a_study_twice_sorts_each_instance_once(tmp_path, caplog):
    """Two copies of the same files (a CD with the study in two folders): each SOP Instance once in its series
    folder, the copies listed as skipped; they made the series unreadable (two slices at every position)."""
    import shutil

    export(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "cd" / "copy1")
    shutil.copytree(tmp_path / "one", tmp_path / "cd" / "copy2")
    with caplog.at_level("WARNING", logger="hemseg"):
        manifest = sort_dicom(tmp_path / "cd", tmp_path / "out")
    assert sorted(s["files"] for s in manifest["series"]) == [3, 4]
    for s in manifest["series"]:
        assert read_image(tmp_path / "out" / s["folder"]).n_slices == s["files"]
    copies = [k for k in manifest["skipped"] if k["reason"].startswith("duplicate")]
    assert len(copies) == 7 and all("copy1" in k["reason"] and "copy2" in k["file"] for k in copies)
    assert any("7 file(s) skipped as copies" in r.getMessage() for r in caplog.records)


def test_of_two_copies_of_an_instance_the_complete_one_is_sorted(tmp_path):
    """The copy found first was cut short (a failed transfer): it was sorted and the complete one skipped, so the
    series could not be read. The larger copy is kept; the CLI counts copies apart from unreadable files."""
    series = mr_series(3)
    for name in ("a", "b"):
        (tmp_path / "cd" / name).mkdir(parents=True)
        for k, ds in enumerate(series):
            ds.save_as(tmp_path / "cd" / name / f"IM{k}.dcm", enforce_file_format=True)
    whole = (tmp_path / "cd" / "a" / "IM1.dcm").read_bytes()
    (tmp_path / "cd" / "a" / "IM1.dcm").write_bytes(whole[: len(whole) - 500])  # "a" sorts first
    manifest = sort_dicom(tmp_path / "cd", tmp_path / "out")
    [entry] = manifest["series"]
    assert read_image(tmp_path / "out" / entry["folder"]).n_slices == 3  # every slice whole
    short = [k for k in manifest["skipped"] if k["file"].endswith(str(Path("a") / "IM1.dcm"))]
    assert len(short) == 1 and "cut short" in short[0]["reason"]
    assert len(manifest["skipped"]) == 3
    cmd = [sys.executable, "-c", "from hemseg.cli import entry; entry()", "data", "sort-dicom"]
    ok = subprocess.run([*cmd, str(tmp_path / "cd"), str(tmp_path / "out2")], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "skipped 3 copies of instances already sorted" in ok.stdout and "unreadable" not in ok.stdout


def test_refuses_a_used_destination_or_one_inside_the_source(tmp_path):
    export(tmp_path / "src")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not an empty folder"):
        sort_dicom(tmp_path / "src", tmp_path / "used")
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["keep.txt"]
    with pytest.raises(UsageError, match="inside the source folder"):
        sort_dicom(tmp_path / "src", tmp_path / "src" / "sorted")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM files"):
        sort_dicom(tmp_path / "empty", tmp_path / "out")


def test_cli_one_line_summary_and_error(tmp_path):
    export(tmp_path / "src")
    cmd = [sys.executable, "-c", "from hemseg.cli import entry; entry()", "data", "sort-dicom"]
    ok = subprocess.run([*cmd, str(tmp_path / "src"), str(tmp_path / "out")], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "sorted 7 file(s) into 2 series folder(s) (2 MR)" in ok.stdout and "skipped 1 unreadable" in ok.stdout
    bad = subprocess.run([*cmd, str(tmp_path / "src"), str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("hemseg: error:") and "not an empty folder" in bad.stderr


def test_an_interrupted_sort_leaves_no_series_folder_and_a_killed_ones_temporary_folder_is_no_content(tmp_path,
                                                                                                         monkeypatch):
    """Stopped during the second series, a sort left the first series' complete folder (and no series.json): it
    looked like the whole export, and the rerun was refused ('not an empty folder'), as it was for the hidden
    temporary folder a killed sort leaves."""
    import shutil as sh

    export(tmp_path / "src")
    real, copies = sh.copy2, []

    def stop_late(src, dst, *args, **kwargs):
        copies.append(src)
        if len(copies) == 6:
            raise KeyboardInterrupt
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(sh, "copy2", stop_late)
    with pytest.raises(KeyboardInterrupt):
        sort_dicom(tmp_path / "src", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(sh, "copy2", real)
    (tmp_path / "out" / ".sorting-abc123").mkdir()  # what SIGKILL leaves
    (tmp_path / "out" / ".sorting-abc123" / "x.dcm").write_bytes(b"x")
    manifest = sort_dicom(tmp_path / "src", tmp_path / "out")
    assert sorted(s["files"] for s in manifest["series"]) == [3, 4]
    assert not list((tmp_path / "out").glob(".sorting-*"))
