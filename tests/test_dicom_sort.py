"""``hemseg data sort-dicom``: a mixed, nested DICOM export becomes one readable folder per series; the source is
left as it was, and an existing destination is never written into."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")

from dicom_series import mr_series, save_series  # noqa: E402

from hemseg.errors import HemsegError, InputError, UsageError  # noqa: E402
from hemseg.runtime.io import find_inputs, read_image  # noqa: E402
from hemseg.runtime.io.dicom_sort import SORT_LOCK, sort_dicom  # noqa: E402
from hemseg.runtime.io.lock import FolderLock  # noqa: E402

CLI = [sys.executable, "-c", "from hemseg.cli import entry; entry()", "data", "sort-dicom"]


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
    series could not be read. The short copy is skipped as cut short (its pixel data is incomplete) and the complete
    one sorted; the CLI counts copies apart from unreadable or incomplete files."""
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
    assert "skipped 1 unreadable or incomplete file(s); skipped 2 copies of instances already sorted" in ok.stdout


def test_a_missing_source_is_called_missing(tmp_path):
    """sort-dicom on a path that does not exist said 'not a folder'."""
    from hemseg.errors import InputError

    with pytest.raises(InputError, match="no such folder"):
        sort_dicom(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        sort_dicom(tmp_path / "file", tmp_path / "out")


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
    stale = Path(tempfile.mkdtemp(prefix=".sorting-", dir=tmp_path / "out"))  # what SIGKILL leaves: its temp folder
    (stale / ".hemseg-sort-temp").write_bytes(b"")  # with the sort's mark
    (stale / "x.dcm").write_bytes(b"x")
    (tmp_path / "out" / SORT_LOCK).write_text("")  # and its lock file (the lock itself ended with the process)
    manifest = sort_dicom(tmp_path / "src", tmp_path / "out")
    assert sorted(s["files"] for s in manifest["series"]) == [3, 4]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["003_MR_t1_sag", "004_MR_t2_stir_sag",
                                                                     "series.json"]


def _reasons(manifest: dict) -> dict[str, str]:
    """File name -> reason of each skipped entry."""
    return {Path(k["file"]).name: k["reason"] for k in manifest["skipped"]}


def test_a_refused_sort_removes_nothing(tmp_path):
    """The temporary folders of killed sorts (``.sorting-*``) were removed before the destination was checked: a
    refused sort (OUT the source itself, or a used OUT) had already deleted a user's ``.sorting-keep/`` or
    ``.sorting-backup/``. Every refusal comes first now, and only a sort's own temporary folder names count as
    what a killed sort leaves."""
    export(tmp_path / "src")
    keep = tmp_path / "src" / ".sorting-keep"
    keep.mkdir()
    (keep / "a.txt").write_text("mine")
    with pytest.raises(UsageError, match="inside the source folder"):
        sort_dicom(tmp_path / "src", tmp_path / "src")
    assert (keep / "a.txt").read_text() == "mine"
    used = tmp_path / "used"
    (used / ".sorting-backup").mkdir(parents=True)
    (used / ".sorting-backup" / "b.txt").write_text("mine")
    (used / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not an empty folder"):
        sort_dicom(tmp_path / "src", used)
    (used / "keep.txt").unlink()  # alone, a user's .sorting-backup/ is content too: no sort names its folder so
    with pytest.raises(UsageError, match="not an empty folder"):
        sort_dicom(tmp_path / "src", used)
    assert [p.name for p in used.iterdir()] == [".sorting-backup"]
    assert (used / ".sorting-backup" / "b.txt").read_text() == "mine"


def test_a_second_sort_into_the_same_destination_is_refused_and_the_first_completes(tmp_path, monkeypatch):
    """Two sorts into one OUT at once: the second deleted the first's temporary folder (a killed sort's, it took it
    for) and the first then failed, naming a temporary path. The first holds a lock on OUT: the second is refused
    at once, in one line, touching nothing, and the first completes."""
    export(tmp_path / "src")
    out = tmp_path / "out"
    real = shutil.copy2
    copying, go_on = threading.Event(), threading.Event()
    first: dict = {}

    def run_first() -> None:
        try:
            first["manifest"] = sort_dicom(tmp_path / "src", out)
        except BaseException as exc:  # reported by the assertion below
            first["error"] = exc

    thread = threading.Thread(target=run_first)

    def held_copy(src, dst, *args, **kwargs):
        if threading.current_thread() is thread:  # the first sort waits in its copying, its temp folder in OUT
            copying.set()
            assert go_on.wait(60)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copy2", held_copy)
    thread.start()
    try:
        assert copying.wait(60)
        during = sorted(p.name for p in out.iterdir())
        assert SORT_LOCK in during and any(n.startswith(".sorting-") for n in during)
        with pytest.raises(UsageError, match="another hemseg data sort-dicom is writing into this folder") as no:
            sort_dicom(tmp_path / "src", out)
        assert "\n" not in str(no.value)
        assert sorted(p.name for p in out.iterdir()) == during
    finally:
        go_on.set()
        thread.join(60)
    assert "error" not in first, first.get("error")
    assert sorted(s["files"] for s in first["manifest"]["series"]) == [3, 4]
    assert sorted(p.name for p in out.iterdir()) == ["003_MR_t1_sag", "004_MR_t2_stir_sag", "series.json"]


def test_a_held_lock_refuses_the_sort_and_keeps_the_temporary_folder_it_guards(tmp_path):
    """A temporary folder in OUT is a killed sort's only when no sort holds OUT's lock."""
    export(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    running = Path(tempfile.mkdtemp(prefix=".sorting-", dir=out))
    (running / ".hemseg-sort-temp").write_bytes(b"")
    lock = FolderLock(out, "held by the test", name=SORT_LOCK).acquire()
    try:
        with pytest.raises(UsageError, match="another hemseg data sort-dicom is writing into this folder"):
            sort_dicom(tmp_path / "src", out)
        assert running.is_dir()
    finally:
        lock.release()


def test_a_folder_that_cannot_be_listed_is_reported(tmp_path, monkeypatch, caplog):
    """os.walk passed over a sub-folder it could not list: its files were missing, without a word."""
    from click.testing import CliRunner

    from hemseg.cli import main

    export(tmp_path / "src")
    real = os.scandir
    closed = [tmp_path / "src" / "sub"]

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and Path(path) in closed:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level("WARNING", logger="hemseg"):
        manifest = sort_dicom(tmp_path / "src", tmp_path / "out")
    assert manifest["skipped"] == [{"file": str(closed[0]), "reason": "unreadable folder: Permission denied"}]
    assert sum(s["files"] for s in manifest["series"]) == 3  # those outside it
    assert any("sub: skipped (unreadable folder: Permission denied)" in r.getMessage() for r in caplog.records)
    result = CliRunner().invoke(main, ["data", "sort-dicom", str(tmp_path / "src"), str(tmp_path / "out2")])
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable folder(s)" in result.output
    closed.append(tmp_path / "src")  # the source itself: an error, not 'no DICOM files found'
    with pytest.raises(InputError, match=r"src: cannot read this folder \(Permission denied\)"):
        sort_dicom(tmp_path / "src", tmp_path / "out3")


def test_a_file_that_cannot_be_opened_is_reported_whatever_its_name(tmp_path, monkeypatch):
    """A file without a .dcm name that could not be opened was taken for 'not DICOM' and passed over; junk that
    can be read and is not DICOM still is."""
    import builtins

    export(tmp_path / "src")
    hidden_dicom = tmp_path / "src" / "IMG0001"  # DICOM without extension, as many exports name them
    hidden_dicom.write_bytes((tmp_path / "src" / "IM0001.dcm").read_bytes())
    real = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == hidden_dicom:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    manifest = sort_dicom(tmp_path / "src", tmp_path / "out")
    assert _reasons(manifest) == {"broken.dcm": _reasons(manifest)["broken.dcm"],
                                  "IMG0001": "unreadable: Permission denied"}  # notes.txt and DICOMDIR: not listed


def test_symbolic_links_to_folders_are_followed_each_folder_once(tmp_path):
    """os.walk did not follow a link to a folder: a series reached through one was left out, without a word.
    Links are followed; a loop, a second way into a folder already read, and a link into the destination are not
    read twice."""
    export(tmp_path / "src")
    save_series(_numbered(mr_series(2), 5, "elsewhere"), tmp_path / "elsewhere")
    out = tmp_path / "out"
    out.mkdir()
    left = Path(tempfile.mkdtemp(prefix=".sorting-", dir=out))  # a killed sort's, holding a DICOM file
    (left / ".hemseg-sort-temp").write_bytes(b"")
    shutil.copy(tmp_path / "src" / "IM0001.dcm", left / "IM0001.dcm")
    src = tmp_path / "src"
    (src / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (src / "sub" / "loop").symlink_to(src, target_is_directory=True)
    (src / "again").symlink_to(src / "sub", target_is_directory=True)
    (src / "to_out").symlink_to(out, target_is_directory=True)
    manifest = sort_dicom(src, out)
    assert sorted((s["folder"], s["files"]) for s in manifest["series"]) == [
        ("003_MR_t1_sag", 3), ("004_MR_t2_stir_sag", 4), ("005_MR_elsewhere", 2)]
    assert list(_reasons(manifest)) == ["broken.dcm"]


def _numbered(slices, number: int, description: str):
    for ds in slices:
        ds.SeriesNumber, ds.SeriesDescription = number, description
    return slices


def test_accented_series_descriptions_keep_their_letters_in_folder_names(tmp_path):
    """A Series Description in French or German named its folder with '_' for every accented letter
    ('007_MR_S_quence_axiale'); the base letters are kept now, other scripts still become '_'."""
    src = tmp_path / "src"
    src.mkdir()
    for number, text in ((7, "Séquence axiale T2"), (8, "Wirbelsäule 脊柱")):
        for i, ds in enumerate(_numbered(mr_series(2), number, text)):
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.save_as(src / f"s{number}_{i}.dcm", enforce_file_format=True)
    manifest = sort_dicom(src, tmp_path / "out")
    assert sorted(s["folder"] for s in manifest["series"]) == ["007_MR_Sequence_axiale_T2", "008_MR_Wirbelsaule"]


def test_a_series_mixing_patients_or_modalities_is_warned_of_at_the_sort(tmp_path, caplog):
    """One Series Instance UID over two patients' slices (or an MR and a CT file) was sorted without a word and
    counted as one MR series; data check, train and predict refused it later. The sort says so now, naming the
    files, in series.json and in the CLI's summary line."""
    src = tmp_path / "src"
    src.mkdir()
    slices = _numbered(mr_series(3), 5, "mixed")
    slices[2].PatientID = "OTHER"
    slices[1].Modality = "CT"
    for i, ds in enumerate(slices):
        ds.save_as(src / f"IM{i}.dcm", enforce_file_format=True)
    clean = _numbered(mr_series(2), 6, "clean")
    for i, ds in enumerate(clean):
        ds.save_as(src / f"C{i}.dcm", enforce_file_format=True)
    with caplog.at_level("WARNING", logger="hemseg"):
        manifest = sort_dicom(src, tmp_path / "out")
    by = {s["folder"]: s for s in manifest["series"]}
    assert "warnings" not in by["006_MR_clean"]
    [patients, modalities] = by["005_MR_mixed"]["warnings"]
    assert "2 patients (PatientID" in patients and f"OTHER in 1 (e.g. {src / 'IM2.dcm'})" in patients
    assert "2 modalities (Modality" in modalities and f"CT in 1 (e.g. {src / 'IM1.dcm'})" in modalities
    from pydicom.uid import generate_uid

    studies = tmp_path / "studies"
    studies.mkdir()
    for i, ds in enumerate(_numbered(mr_series(2), 7, "two studies")):
        ds.StudyInstanceUID = generate_uid() if i else ds.StudyInstanceUID
        ds.save_as(studies / f"IM{i}.dcm", enforce_file_format=True)
    [warning] = sort_dicom(studies, tmp_path / "out3")["series"][0]["warnings"]
    assert "name 2 studies (StudyInstanceUID" in warning
    assert sum("005_MR_mixed" in r.getMessage() and "not one volume" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(InputError, match="PatientID OTHER differs"):  # what the warning foretells
        read_image(tmp_path / "out" / "005_MR_mixed")
    ok = subprocess.run([*CLI, str(src), str(tmp_path / "out2")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "1 series mix patients, studies or modalities" in ok.stdout, ok.stdout


def test_a_text_file_named_dcm_gives_one_line_naming_it_not_pydicoms(tmp_path, caplog):
    """A text file named notes.dcm: pydicom logged 'VR lookup failed for the raw element with tag (6568,6C6C)',
    naming no file, before hemseg's own line naming the file and why it was skipped."""
    src = tmp_path / "src"
    export(src)
    (src / "notes.dcm").write_text("hello, these are notes about the patient " * 8)
    with caplog.at_level("WARNING"):
        manifest = sort_dicom(src, tmp_path / "out")
    assert "notes.dcm" in _reasons(manifest)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")] == []
    assert any("notes.dcm: skipped (unreadable" in r.getMessage() for r in caplog.records)
    # in a new process, where the file is the first DICOM read (pydicom's import reset its logger's level)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(src / "notes.dcm", alone / "0notes.dcm")  # read first
    shutil.copy(src / "IM0000.dcm", alone / "IM0000.dcm")
    ok = subprocess.run([*CLI, str(alone), str(tmp_path / "out2")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "VR lookup failed" not in ok.stderr, ok.stderr


def test_hidden_dicom_files_are_listed_as_skipped(tmp_path, caplog):
    """Hidden files and folders are not sorted (by design), but a hidden file that is DICOM was left out without
    a word; now series.json, the log and the CLI's summary say so. Hidden files that are not DICOM are not listed."""
    src = tmp_path / "src"
    export(src)
    [one] = _numbered(mr_series(1), 6, "hidden")
    one.save_as(src / ".IM9999.dcm", enforce_file_format=True)
    (src / ".cache").mkdir()
    one.save_as(src / ".cache" / "IM0001", enforce_file_format=True)  # DICM at byte 128, no extension
    (src / ".DS_Store").write_bytes(b"\0" * 300)
    with caplog.at_level("WARNING", logger="hemseg"):
        manifest = sort_dicom(src, tmp_path / "out")
    assert {k: v for k, v in _reasons(manifest).items() if k != "broken.dcm"} == {
        ".IM9999.dcm": "hidden file", "IM0001": "hidden file (in the hidden folder .cache)"}
    assert sorted(s["files"] for s in manifest["series"]) == [3, 4]
    assert any("2 file(s) skipped as hidden files" in r.getMessage() for r in caplog.records)
    ok = subprocess.run([*CLI, str(src), str(tmp_path / "out2")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "skipped 1 unreadable or incomplete file(s); skipped 2 hidden file(s)" in ok.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_under_the_source_does_not_block_the_sort(tmp_path):
    """A named pipe under the source blocked the sort forever (opened to look for 'DICM'). Files that are not
    regular are never opened; one with a DICOM name is listed, others are passed over like any non-DICOM file."""
    src = tmp_path / "src"
    export(src)
    os.mkfifo(src / "sub" / "stream.dcm")
    os.mkfifo(src / "pipe")
    ok = subprocess.run([*CLI, str(src), str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    reasons = _reasons(json.loads((tmp_path / "out" / "series.json").read_text()))
    assert sorted(reasons) == ["broken.dcm", "stream.dcm"] and reasons["stream.dcm"].startswith("not a regular file")
    assert "sorted 7 file(s)" in ok.stdout and "skipped 2 unreadable or incomplete file(s)" in ok.stdout


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])  # explicit, implicit VR LE
@pytest.mark.parametrize("cut", ["in the pixel data", "at the pixel data"])
def test_a_file_cut_short_in_its_pixel_data_is_skipped(tmp_path, caplog, syntax, cut):
    """The header was read without the pixel data, so a file cut short inside it was sorted as good and the series
    then failed in hemseg predict. The bytes its pixel data needs are checked against what the file holds."""
    series = mr_series(3)
    for ds in series:
        ds.file_meta.TransferSyntaxUID = syntax
    src = save_series(series, tmp_path / "src")
    short = src / "IM0001.dcm"
    whole = short.read_bytes()
    at = whole.index(b"\xe0\x7f\x10\x00")  # the Pixel Data tag, (7FE0,0010) little endian
    short.write_bytes(whole[:-500] if cut == "in the pixel data" else whole[:at + 2])
    with caplog.at_level("WARNING", logger="hemseg"):
        manifest = sort_dicom(src, tmp_path / "out")
    [entry] = manifest["series"]
    assert entry["files"] == 2 and read_image(tmp_path / "out" / entry["folder"]).n_slices == 2
    [skipped] = manifest["skipped"]
    assert skipped["file"] == str(short)
    held = int(skipped["reason"].split(": ")[1].split(" of ")[0])
    assert skipped["reason"] == f"pixel data cut short: {held} of 8192 bytes" and held < 8192
    assert held > 0 if cut == "in the pixel data" else held == 0
    assert any("IM0001.dcm: skipped (pixel data cut short" in r.getMessage() for r in caplog.records)


def test_two_complete_files_of_one_instance_with_different_content_keep_the_first(tmp_path, caplog):
    """Two files with one SOP Instance UID, neither cut short: the larger was sorted and the complete first one
    called 'cut short?'. The first found is sorted and the other listed as a conflicting copy, with a warning."""
    series = mr_series(3)
    first = save_series(series, tmp_path / "cd" / "a")
    series[1].ImageComments = "re-exported with a comment " * 10  # larger, complete, other content
    (tmp_path / "cd" / "b").mkdir()
    series[1].save_as(tmp_path / "cd" / "b" / "IM0001.dcm", enforce_file_format=True)
    with caplog.at_level("WARNING", logger="hemseg"):
        manifest = sort_dicom(tmp_path / "cd", tmp_path / "out")
    [entry] = manifest["series"]
    assert entry["files"] == 3
    copied = tmp_path / "out" / entry["folder"] / "IM0001.dcm"
    assert copied.read_bytes() == (first / "IM0001.dcm").read_bytes()
    reason = (f"conflicting copy: the same SOP Instance UID as {first / 'IM0001.dcm'} but other bytes (the file "
              "found first is sorted)")
    assert manifest["skipped"] == [{"file": str(tmp_path / "cd" / "b" / "IM0001.dcm"), "reason": reason}]
    assert any(reason in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_colliding_long_file_names_are_shortened_to_fit(tmp_path):
    """Two files named with 254 bytes collided: '_2' made the name too long for the file system and the whole sort
    stopped ('File name too long', naming a temporary path). The stem is shortened, in bytes, to fit."""
    name = "ж" * 125 + ".dcm"  # 254 bytes in UTF-8
    for k, ds in enumerate(mr_series(2)):
        (tmp_path / "src" / f"d{k}").mkdir(parents=True)
        ds.save_as(tmp_path / "src" / f"d{k}" / name, enforce_file_format=True)
    manifest = sort_dicom(tmp_path / "src", tmp_path / "out")
    [entry] = manifest["series"]
    names = sorted(p.name for p in (tmp_path / "out" / entry["folder"]).iterdir())
    assert name in names and len(names) == 2 and all(len(n.encode()) <= 255 for n in names)
    assert [n for n in names if n != name][0] == "ж" * 124 + "_2.dcm"
    assert read_image(tmp_path / "out" / entry["folder"]).n_slices == 2


def test_a_file_that_cannot_be_copied_is_named_with_the_reason(tmp_path, monkeypatch):
    """An OSError while copying (a full disk) named the temporary file it was written to; it names the source
    file and the reason, in one line, and leaves the destination empty."""
    export(tmp_path / "src")

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(shutil, "copy2", full)
    with pytest.raises(HemsegError) as err:
        sort_dicom(tmp_path / "src", tmp_path / "out")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'src'}{os.sep}") and ".dcm: " in message
    assert message.endswith("No space left on device") and ".sorting-" not in message and "\n" not in message
    assert list((tmp_path / "out").iterdir()) == []


def test_a_users_folder_named_like_a_temporary_one_is_content(tmp_path):
    """OUT/.sorting-20240101/ of the user's (named like tempfile's folders) was deleted with its files as a killed
    sort's leftover, and the sort went on into the non-empty folder."""
    export(tmp_path / "src")
    mine = tmp_path / "out" / ".sorting-20240101"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an empty folder"):
        sort_dicom(tmp_path / "src", tmp_path / "out")
    assert (mine / "notes.txt").read_text() == "mine"


def test_a_sort_killed_between_its_renames_leaves_nothing_taken_for_content(tmp_path, monkeypatch):
    """Killed after the first series folder was renamed into place: a complete-looking series folder stood under its
    final name without series.json, and the rerun was refused ('not an empty folder')."""
    import os

    import hemseg.runtime.io.dicom_sort as ds_mod

    export(tmp_path / "src")
    out = tmp_path / "out"
    real, calls = os.replace, []

    class Killed(BaseException):
        pass

    def killed_at_the_second_series(a, b, *args, **kwargs):
        if Path(b).parent == out and not Path(b).name.startswith("."):  # a rename into place (not the journal)
            calls.append(1)
            if len(calls) == 2:  # the first series folder, then the second: killed
                raise Killed
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(ds_mod.os, "replace", killed_at_the_second_series)
    monkeypatch.setattr(ds_mod.tempfile.TemporaryDirectory, "cleanup", lambda self: None)  # SIGKILL cleans nothing
    with pytest.raises(Killed):
        sort_dicom(tmp_path / "src", out)
    monkeypatch.undo()
    assert any(p.name == "003_MR_t1_sag" or p.name == "004_MR_t2_stir_sag" for p in out.iterdir())
    (out / ".series.json.k3j4h5.tmp").write_text("{")  # killed while writing series.json: its temporary file
    manifest = sort_dicom(tmp_path / "src", out)
    assert sorted(s["files"] for s in manifest["series"]) == [3, 4]
    assert sorted(p.name for p in out.iterdir()) == ["003_MR_t1_sag", "004_MR_t2_stir_sag", "series.json"]


def test_a_file_cut_in_its_header_or_not_dicom_is_called_so(tmp_path):
    """A .dcm cut after 300 bytes and a text file named .dcm were both 'no SeriesInstanceUID'."""
    src = tmp_path / "src"
    export(src)
    whole = (src / "IM0001.dcm").read_bytes()
    for n in (100, 300, 400, 1000):
        (src / f"cut{n}.dcm").write_bytes(whole[:n])
    (src / "README.dcm").write_text("hi\n")
    uid_at = whole.index(b"\x20\x00\x0e\x00")  # (0020,000E) SeriesInstanceUID
    (src / "cut_after_uid.dcm").write_bytes(whole[:uid_at + 80])  # a series, then the end: no image attributes
    reasons = _reasons(sort_dicom(src, tmp_path / "out"))
    for name in ("cut100.dcm", "cut300.dcm", "cut400.dcm", "cut1000.dcm", "README.dcm"):
        assert "(cut short in its header, or not a DICOM file)" in reasons[name], (name, reasons)
    assert reasons["cut_after_uid.dcm"].startswith("pixel data cut short: the file ends in its header"), reasons


def test_a_dicomdir_under_another_name_is_called_one_not_unreadable(tmp_path):
    """pydicom's DICOMDIR-bigEnd, -implicit, ... (a CD export's index by another name) were 'unreadable: cut short
    in its header, or not a DICOM file' (a QA finding of stop 52); said at INFO, counted apart."""
    from pydicom.data import get_testdata_file

    from hemseg.runtime.io.dicom_sort import DIRECTORY, skipped_counts

    src = tmp_path / "src"
    export(src)
    for name in ("DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-implicit"):
        shutil.copy(get_testdata_file(name), src / (name.replace("DICOMDIR", "index") + ".dcm"))
    summary = sort_dicom(src, tmp_path / "out")
    reasons = _reasons(summary)
    assert [reasons[n] for n in ("index.dcm", "index-bigEnd.dcm", "index-implicit.dcm")] == [DIRECTORY] * 3
    assert (3, "DICOMDIR index file(s)") in skipped_counts(summary["skipped"])


def test_objects_without_pixel_data_are_not_called_cut_short_and_prefix_copies_are(tmp_path):
    """After the header-cut check: an intact ECG waveform (any object outside hemseg's non-image list) was skipped
    as 'pixel data cut short'; a file cut inside Rows/Columns crashed the sort with a traceback; a header-cut copy of
    an RT Structure Set found before the original was sorted and the intact original dropped."""
    from pydicom.data import get_testdata_file

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(get_testdata_file("waveform_ecg.dcm"), src / "ecg.dcm")
    mr = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    (src / "cut_rows.dcm").write_bytes(mr[:1381])  # inside a US value of the image attributes
    rt = Path(get_testdata_file("rtstruct.dcm")).read_bytes()
    (src / "a_rt_copy.dcm").write_bytes(rt[:2147])  # found first, cut in its header
    (src / "m_rt_orig.dcm").write_bytes(rt)
    manifest = sort_dicom(src, tmp_path / "out")
    reasons = _reasons(manifest)
    assert "ecg.dcm" not in reasons
    assert "cut_rows.dcm" in reasons
    assert reasons["a_rt_copy.dcm"].startswith("cut short: a byte prefix of")
    sorted_files = {p.name for p in (tmp_path / "out").rglob("*.dcm")}
    assert "m_rt_orig.dcm" in sorted_files and "a_rt_copy.dcm" not in sorted_files


def test_an_empty_temporary_folder_is_a_killed_sorts_leftover(tmp_path):
    """Killed between the temporary folder's cleanup removing the mark and the folder: the rerun was refused."""
    export(tmp_path / "src")
    (tmp_path / "out" / ".sorting-ab12cd34").mkdir(parents=True)
    manifest = sort_dicom(tmp_path / "src", tmp_path / "out")
    assert sorted(s["files"] for s in manifest["series"]) == [3, 4]


def _segmented(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    """A 2-slice MR series and hemseg's own SEG (or RTSTRUCT) of it: (series folder, mask file)."""
    from hemseg.runtime.predict import PredictOptions, run_predict

    series = tmp_path / "series"
    save_series(mr_series(2), series)
    tiny = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"
    res = run_predict(tiny, [series], PredictOptions(out_dir=tmp_path / "m", backend="ort-cpu", fmt=fmt))
    return series, tmp_path / "m" / res.reports[0].outputs["mask"]


def test_a_mask_cut_anywhere_in_its_header_never_stops_the_sort(tmp_path):
    """A SEG cut inside a sequence or an image attribute crashed the whole sort (a traceback, or 'No tag to read at
    file position 8E8' naming no file); one cut before its pixel data was sorted, and paired as a training mask."""
    pytest.importorskip("highdicom")
    series, seg = _segmented(tmp_path, "dicom-seg")
    data = seg.read_bytes()
    end = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    for cut in range(2000, end, 37):
        src = tmp_path / f"src{cut}"
        shutil.copytree(series, src)
        (src / "seg_cut.dcm").write_bytes(data[:cut])
        manifest = sort_dicom(src, tmp_path / f"out{cut}")
        assert "seg_cut.dcm" in _reasons(manifest), cut
        assert [s["files"] for s in manifest["series"]] == [2], cut


def test_a_cut_copy_of_a_mask_found_first_does_not_lose_the_masks_references(tmp_path):
    """The cut copy first: the complete RT Structure Set was copied, but its series kept the cut header's missing
    references, so the mask was unpaired in --dataset (paired when the complete file came first)."""
    pytest.importorskip("highdicom")
    series, rt = _segmented(tmp_path, "dicom-rtstruct")
    data = rt.read_bytes()
    before_refs = data.index(b"\x06\x30\x10\x00") - 10  # before (3006,0010) Referenced Frame of Reference Sequence
    in_uid = data.index(b"\x20\x00\x0e\x00") + 20  # inside the SeriesInstanceUID: read as another, shorter UID
    for order, cut in (("cut_first", before_refs), ("complete_first", before_refs), ("uid_cut_first", in_uid)):
        src = tmp_path / order
        shutil.copytree(series, src)
        first = order != "complete_first"
        (src / ("a.dcm" if first else "b.dcm")).write_bytes(data[:cut])
        (src / ("b.dcm" if first else "a.dcm")).write_bytes(data)
        manifest = sort_dicom(src, tmp_path / f"out_{order}", dataset=True)
        assert not manifest["unpaired_masks"], (order, manifest["unpaired_masks"])
        assert any("mask" in s for s in manifest["series"]), order


@pytest.mark.parametrize("dataset, fails", [(False, "series.json"), (True, "series.json"),
                                            (True, "categories.csv")])
def test_a_sort_that_fails_writing_its_tables_leaves_no_series_folder(tmp_path, monkeypatch, dataset, fails):
    """series.json (or --dataset's categories.csv) written after the series folders had moved into place: a full
    disk there left folders that looked like the whole export (and predict segmented them), and no series.json.
    Everything is written first now, then moved in, series.json last; the error names the final file."""
    import hemseg.runtime.io.dicom_sort as dicom_sort

    export(tmp_path / "src")
    real = dicom_sort.atomic_write_bytes

    def full(path, data):
        if Path(path).name == fails:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(dicom_sort, "atomic_write_bytes", full)
    with pytest.raises(OSError) as exc:
        sort_dicom(tmp_path / "src", tmp_path / "out", dataset=dataset)
    assert exc.value.filename == str(tmp_path / "out" / fails)
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(dicom_sort, "atomic_write_bytes", real)
    manifest = sort_dicom(tmp_path / "src", tmp_path / "out", dataset=dataset)  # the rerun goes through
    assert (tmp_path / "out" / "series.json").is_file() and manifest["series"]


def test_a_copy_in_another_transfer_syntax_is_named_so(tmp_path):
    """The same instance saved in another transfer syntax (a PACS re-encoding) was 'a conflicting copy ... but
    different content', as if the image differed (a QA finding of stop 55): the two syntaxes are named."""
    from pydicom.uid import ImplicitVRLittleEndian

    series = mr_series(2)
    first = save_series(series, tmp_path / "cd" / "a")
    other = series[1]
    other.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    (tmp_path / "cd" / "b").mkdir()
    other.save_as(tmp_path / "cd" / "b" / "IM0001.dcm", implicit_vr=True, little_endian=True, enforce_file_format=True)
    manifest = sort_dicom(tmp_path / "cd", tmp_path / "out")
    [skipped] = manifest["skipped"]
    assert skipped["reason"].startswith(f"conflicting copy: the same SOP Instance UID as {first}")
    assert skipped["reason"].endswith(".dcm in another transfer syntax (Implicit VR Little Endian; that file's: "
                                      "Explicit VR Little Endian; a re-encoding, its content not compared; the "
                                      "file found first is sorted)")


def test_an_empty_or_binary_extensionless_file_beside_dicom_files_is_listed(tmp_path):
    """predict refuses a series folder holding one (a copy cut short); sort-dicom dropped it without a word (QA,
    stop 56). Listed as skipped beside DICOM files; a binary file in a folder without DICOM files is passed over."""
    export(tmp_path / "src")
    (tmp_path / "src" / "IM0008").write_bytes(b"")
    (tmp_path / "src" / "IM0009").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "src" / "README").write_text("Séquence T2\n", encoding="utf-8")  # text: no DICOM file
    (tmp_path / "src" / "tools").mkdir()
    (tmp_path / "src" / "tools" / "convert").write_bytes(b"\x7fELF" + bytes(range(256)) * 4)
    reasons = _reasons(sort_dicom(tmp_path / "src", tmp_path / "out"))
    assert "file is empty (0 bytes)" in reasons["IM0008"] and "not a DICOM file" in reasons["IM0009"]
    assert "README" not in reasons and "convert" not in reasons
