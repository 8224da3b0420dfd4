"""The synthetic spine-MRI phantom: layout, determinism, lesion statistics, sequence appearance, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hemseg.errors import HemsegError, UsageError
from hemseg.phantom import CATEGORIES, case_rng, generate, is_phantom_dir, render_case, render_scene
from hemseg.phantom import contrast as T

SMALL = (64, 112)          # small images keep the dataset tests fast
PER_CAT = 8
SEED = 11

EXPECTED = {
    "axial_t1_cervicothoracic", "axial_t1_thoracolumbar", "axial_t1c_cervicothoracic", "axial_t1c_thoracolumbar",
    "axial_t2_cervicothoracic", "axial_t2_thoracolumbar", "coronal_t2", "sagittal_stir", "sagittal_t1",
    "sagittal_t1c", "sagittal_t1c_fatsat", "sagittal_t2",
}


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "ds"
    generate(out, PER_CAT, seed=SEED, size_range=SMALL, preview=True)
    return out


def test_categories_are_the_twelve():
    assert len(CATEGORIES) == 12
    assert set(CATEGORIES) == EXPECTED


def test_layout_pairs_sizes_and_masks(dataset: Path):
    stems = set()
    shapes = set()
    for cat in CATEGORIES:
        imgs = sorted((dataset / cat / "images").glob("*.png"))
        masks = sorted((dataset / cat / "masks").glob("*.png"))
        assert len(imgs) == PER_CAT and [p.name for p in imgs] == [p.name for p in masks]
        for ip, mp in zip(imgs, masks):
            assert ip.stem not in stems
            stems.add(ip.stem)
            img, mask = _read(ip), _read(mp)
            assert img.dtype == np.uint8 and img.ndim == 2
            assert mask.dtype == np.uint8 and mask.shape == img.shape
            assert set(np.unique(mask)) <= {0, 255}
            h, w = img.shape
            assert SMALL[0] <= h <= SMALL[1] and SMALL[0] <= w <= SMALL[1]
            shapes.add((h, w))
            assert img.std() > 5            # not blank
    assert len(stems) == 12 * PER_CAT
    assert any(h != w for h, w in shapes)
    assert len(shapes) > 10                 # sizes vary, so resizing is exercised


def test_manifest_matches_files(dataset: Path):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["generator"]["name"] == "hemseg.phantom"
    assert manifest["generator"]["version"]
    assert manifest["seed"] == SEED and manifest["per_category"] == PER_CAT
    assert len(manifest["images"]) == 12 * PER_CAT
    for entry in manifest["images"]:
        for key in ("stem", "category", "plane", "sequence", "region", "height", "width", "lesions", "lesion_area"):
            assert key in entry
        assert entry["category"].startswith(entry["plane"])
        assert entry["region"] in ("cervicothoracic", "thoracolumbar")
        mask = _read(dataset / entry["mask"])
        assert mask.shape == (entry["height"], entry["width"])
        assert int((mask > 0).sum()) == entry["lesion_area"]
        assert (entry["lesions"] == 0) == (entry["lesion_area"] == 0)
        assert 0 <= entry["lesions"] <= 3


def test_lesion_free_fraction_and_lesion_counts(dataset: Path):
    manifest = json.loads((dataset / "manifest.json").read_text())
    counts = {c: [] for c in CATEGORIES}
    for e in manifest["images"]:
        counts[e["category"]].append(e["lesions"])
    for cat, n in counts.items():
        n = np.array(n)
        assert np.mean(n == 0) >= 0.15, cat
        assert n[0] == 0                     # image 0 is lesion-free by construction
    all_n = np.concatenate([np.array(v) for v in counts.values()])
    assert (all_n > 0).mean() > 0.4          # most images do carry lesions
    assert set(all_n.tolist()) >= {0, 1, 2}


def test_preview_is_a_colour_contact_sheet(dataset: Path):
    sheet = _read(dataset / "preview.png")
    assert sheet.ndim == 3 and sheet.shape[2] == 3
    assert sheet.shape[0] > 200 and sheet.shape[1] > 1000
    b, g, r = (sheet[..., i].astype(int) for i in range(3))
    assert ((r - g > 100) & (r - b > 100)).any()      # red mask outlines
    assert ((g - r > 60)).any()                        # green captions


def test_prefix_property_and_determinism(dataset: Path, tmp_path: Path):
    short = tmp_path / "short"
    generate(short, 3, seed=SEED, size_range=SMALL)
    for cat in CATEGORIES:
        for i in range(3):
            for kind in ("images", "masks"):
                a = (dataset / cat / kind / f"{cat}_{i:04d}.png").read_bytes()
                b = (short / cat / kind / f"{cat}_{i:04d}.png").read_bytes()
                assert a == b, (cat, i, kind)
    again = tmp_path / "again"
    generate(again, 3, seed=SEED, size_range=SMALL)
    assert (again / "manifest.json").read_bytes() == (short / "manifest.json").read_bytes()


def test_parallel_rendering_writes_the_same_bytes(dataset: Path, tmp_path: Path, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["hemseg.phantom.generate"], "CHUNK", 3)       # tasks that split categories, so the pool's ordering is exercised
    par = tmp_path / "par"
    generate(par, PER_CAT, seed=SEED, size_range=SMALL, preview=True, workers=3)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(par) for p in par.rglob("*") if p.is_file())
    for rel in files:
        assert (par / rel).read_bytes() == (dataset / rel).read_bytes(), rel
    with pytest.raises(UsageError):
        generate(tmp_path / "bad", 1, workers=0)


def test_different_seed_gives_different_images(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, 1, seed=1, size_range=SMALL)
    generate(b, 1, seed=2, size_range=SMALL)
    diff = [cat for cat in CATEGORIES
            if (a / cat / "images" / f"{cat}_0000.png").read_bytes() != (b / cat / "images" / f"{cat}_0000.png").read_bytes()]
    assert len(diff) == 12


def test_render_case_api():
    img, mask, info = render_case("sagittal_t2", 5, size=(200, 150), n_lesions=2)
    assert img.shape == (200, 150) and img.dtype == np.uint8
    assert mask.shape == (200, 150) and set(np.unique(mask)) <= {0, 255}
    assert info["plane"] == "sagittal" and info["sequence"] == "t2" and info["lesions"] >= 1
    assert info["lesion_area"] == int((mask > 0).sum())
    img2, mask2, _ = render_case("sagittal_t2", np.random.default_rng(5), size=(200, 150), n_lesions=2)
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    img0, mask0, info0 = render_case("axial_t1_thoracolumbar", 3, n_lesions=0)
    assert mask0.max() == 0 and info0["lesions"] == 0
    assert 192 <= img0.shape[0] <= 512 and 192 <= img0.shape[1] <= 512
    with pytest.raises(UsageError):
        render_case("sagittal_flair", 0)
    with pytest.raises(UsageError):
        render_case("sagittal_t1", "seed")


@pytest.mark.parametrize("category", ["sagittal_t1", "axial_t2_thoracolumbar", "coronal_t2"])
def test_mask_is_the_lesion_support_inside_vertebral_bodies(category: str):
    for i in range(3):
        sc = render_scene(category, case_rng(0, category, i), size=(180, 160), n_lesions=3)
        m = sc.mask > 0
        assert np.array_equal(m, sc.labels == T.LESION)
        assert sc.info["lesions"] >= 1
        assert (sc.body[m] > 0).all()          # clipped to the vertebral bodies
        assert not np.isin(sc.labels[sc.body > 0], (T.AIR, T.FAT, T.MUSCLE, T.CSF, T.CORD, T.LUNG)).any()


def _lesion_ratios(category: str, n: int = 6) -> np.ndarray:
    """Mean lesion intensity over the mean of the marrow in a ring around it, per rendered case."""
    out = []
    for i in range(n):
        sc = render_scene(category, case_rng(3, category, i), size=(220, 180), n_lesions=2)
        m = sc.mask > 0
        ring = cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        marrow = ring & ~m & np.isin(sc.labels, T.MARROW_CODES)
        if m.sum() >= 8 and marrow.sum() >= 8:
            out.append(sc.image[m].mean() / max(1.0, sc.image[marrow].mean()))
    assert len(out) >= n // 2
    return np.array(out)


@pytest.mark.parametrize("category", ["sagittal_t1", "sagittal_t2", "sagittal_stir", "sagittal_t1c"])
def test_lesions_are_bright_on_t1_t2_stir_and_t1c(category: str):
    r = _lesion_ratios(category)
    assert np.median(r) > 1.05, r


def test_lesions_enhance_on_fatsat_while_fatty_islands_stay_suppressed():
    """T1C fat-sat: the hemangioma's vascular part enhances (from about iso-intense to twice the suppressed
    marrow), while focal fat, its mimic on T1 and T2, stays dark: the one feature that tells them apart there."""
    r = _lesion_ratios("sagittal_t1c_fatsat")
    assert 1.1 < np.median(r) < 2.2, r
    assert r.min() > 0.8, r
    from hemseg.phantom.render import tissue_table

    rng = np.random.default_rng(0)
    tables = [tissue_table("t1c_fatsat", rng) for _ in range(50)]
    assert all(t[T.FAT_ISLAND] < t[T.MARROW] < t[T.LESION] * 1.15 for t in tables)


def test_no_single_threshold_separates_lesions():
    """Hard on purpose: in each image some non-lesion tissue is at least as bright as the median lesion pixel."""
    for category in ("sagittal_t1", "sagittal_t2", "sagittal_stir", "axial_t2_thoracolumbar"):
        sc = render_scene(category, case_rng(9, category, 1), size=(220, 180), n_lesions=2)
        m = sc.mask > 0
        assert m.any()
        thr = np.median(sc.image[m])
        assert (sc.image[~m] >= thr).sum() > m.sum(), category


def test_refuses_foreign_non_empty_directory(tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(UsageError):
        generate(out, 1, size_range=SMALL)
    assert (out / "notes.txt").read_text() == "precious"
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temp leftovers
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UsageError):
        generate(f, 1, size_range=SMALL)


def test_an_empty_folder_is_filled_in_place_not_replaced(tmp_path: Path, monkeypatch):
    """hemseg data synth into an empty mount point failed ("Device or resource busy"), into an empty writable folder
    of an unwritable parent "cannot write into" the parent, and a folder's own mode was lost: the folder was replaced
    by one staged beside it (QA findings of stop 53). An empty folder stays the same folder, its mode kept; what a
    killed run staged inside it is removed by the next run."""
    import os

    out = tmp_path / "mount"
    out.mkdir(mode=0o750)
    os.chmod(out, 0o750)
    before = out.stat()
    stale = out / ".mount.tmp-deadbeef0000"  # a killed run's staging inside it
    (stale / "sagittal_t1").mkdir(parents=True)
    generate(out, 1, size_range=SMALL)
    after = out.stat()
    assert (after.st_ino, after.st_mode & 0o777) == (before.st_ino, 0o750)
    assert is_phantom_dir(out) and not stale.exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mount"]  # nothing staged beside it
    generate(out, 1, size_range=SMALL, seed=1)  # a previous phantom replaced: its folder's mode stays (stop 53)
    assert out.stat().st_mode & 0o777 == 0o750
    # a mount point holding a phantom cannot be swapped whole: said before rendering ('Device or resource busy'
    # naming an internal rename after it, QA stop 53)
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out)
    with pytest.raises(UsageError, match="is a mount point holding an earlier phantom"):
        generate(out, 1, size_range=SMALL, seed=2)
    assert is_phantom_dir(out)


def test_replaces_previous_phantom_but_not_when_extra_files(tmp_path: Path):
    out = tmp_path / "ds"
    generate(out, 1, size_range=SMALL)
    generate(out, 2, seed=4, size_range=SMALL)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["per_category"] == 2 and manifest["seed"] == 4
    assert len(list((out / "coronal_t2" / "images").iterdir())) == 2
    (out / "my_labels.csv").write_text("stem,label\n")
    with pytest.raises(UsageError):
        generate(out, 1, size_range=SMALL)
    assert (out / "my_labels.csv").exists()


def test_a_write_protected_previous_phantom_is_refused_before_rendering(tmp_path: Path, monkeypatch, caplog):
    """QA, stop 57: a phantom whose folders were read-only was replaced (exit 0) and its old copy left, undeletable, in
    a hidden '.ds.old-*' folder beside it, one more per run. (Root ignores modes: os.access stands in for them.)"""
    import sys

    gen = sys.modules["hemseg.phantom.generate"]  # (the package's name `generate` is the function)

    out = tmp_path / "ds"
    generate(out, 1, size_range=SMALL)
    locked = out / "coronal_t2" / "images"
    real_access = os.access
    monkeypatch.setattr(gen.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(UsageError, match=r"coronal_t2/images: not writable, so the previous phantom"):
        generate(out, 1, seed=5, size_range=SMALL)
    assert json.loads((out / "manifest.json").read_text())["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    monkeypatch.undo()
    # what became unremovable meanwhile is said, not hidden
    import shutil

    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)
    with caplog.at_level("WARNING", logger="hemseg.phantom.generate"):
        generate(out, 1, seed=6, size_range=SMALL)
    assert "the previous phantom could not be removed (moved aside to" in caplog.text
    assert json.loads((out / "manifest.json").read_text())["seed"] == 6


def test_what_a_killed_replacement_left_is_removed_by_the_next_run(tmp_path: Path):
    """QA, stop 57: a run killed while deleting the phantom it had replaced left it in a hidden '.ds.old-*' folder
    for good, and one killed after moving its staging folder into place a '.ds.tmp-*.lock' file. The old phantom is
    now deleted from a staging folder of its own (which the next run removes once its lock is free), and a free lock
    without its folder is removed."""
    out = tmp_path / "ds"
    generate(out, 1, size_range=SMALL)
    left = tmp_path / ".ds.tmp-0123456789ab"          # the old phantom, half deleted, its lock freed by the kill
    (left / "sagittal_t1" / "images").mkdir(parents=True)
    (left / "sagittal_t1" / "images" / "sagittal_t1_0000.png").write_bytes(b"x")
    (tmp_path / ".ds.tmp-ba9876543210.lock").write_text("")  # a lock whose folder became the phantom
    generate(out, 1, seed=3, size_range=SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3


def test_a_second_synth_into_the_same_folder_is_refused(tmp_path: Path):
    """QA, stop 57: two syntheses into one folder both said "wrote", the last one's phantom kept (into an empty
    folder one failed with 'Directory not empty'). One synth holds the folder's lock; a second is refused at once."""
    from hemseg.runtime.io.lock import FolderLock

    out = tmp_path / "ds"
    generate(out, 1, size_range=SMALL)
    held = FolderLock(tmp_path, "held", name=".ds.tmp-synth.lock").acquire()  # as a running synth holds it
    try:
        with pytest.raises(UsageError, match="another hemseg data synth is writing this folder"):
            generate(out, 1, seed=8, size_range=SMALL)
    finally:
        held.release()
    assert json.loads((out / "manifest.json").read_text())["seed"] == 0
    generate(out, 1, seed=8, size_range=SMALL)  # free again; no lock file left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_bad_arguments():
    with pytest.raises(UsageError):
        generate("/nonexistent-never/x", 0)
    with pytest.raises(UsageError):
        generate("/nonexistent-never/x", 1, size_range=(300, 200))


def test_cli_synth(tmp_path: Path):
    from hemseg.cli import main

    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["data", "synth", str(out), "--per-category", "1", "--seed", "3", "--preview",
                                    "--min-size", "64", "--max-size", "96", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "wrote 12 images" in res.output
    assert (out / "preview.png").is_file() and (out / "manifest.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "a.txt").write_text("a")
    res = CliRunner().invoke(main, ["data", "synth", str(foreign), "--per-category", "1"])
    assert res.exit_code != 0 and isinstance(res.exception, HemsegError)
    res = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "z"), "--per-category", "0"])
    assert res.exit_code == 2
    res = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "z"), "--workers", "0"])
    assert res.exit_code == 2


def test_user_file_inside_a_previous_phantom_is_not_clobbered(tmp_path: Path):
    out = tmp_path / "ds"
    generate(out, 1, size_range=SMALL)
    mine = out / "sagittal_t1" / "images" / "my_case.dcm"
    mine.write_bytes(b"DICM")
    with pytest.raises(UsageError):
        generate(out, 1, size_range=SMALL)
    assert mine.read_bytes() == b"DICM"


def test_a_symlinked_out_is_written_through(tmp_path: Path):
    """OUT a link to a phantom: the link itself was swapped for a new folder (the target kept the old phantom) and a
    hidden '.link.old-*' link stayed; a link to an empty folder was 'Not a directory'; a dangling one is refused."""
    real = tmp_path / "real"
    generate(real, 1, size_range=SMALL)
    (tmp_path / "link").symlink_to(real)
    generate(tmp_path / "link", 1, seed=9, size_range=SMALL)
    assert (tmp_path / "link").is_symlink() and json.loads((real / "manifest.json").read_text())["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    (tmp_path / "e").mkdir()
    (tmp_path / "le").symlink_to(tmp_path / "e")
    generate(tmp_path / "le", 1, size_range=SMALL)
    assert (tmp_path / "e" / "manifest.json").is_file() and (tmp_path / "le").is_symlink()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="a symbolic link to nothing"):
        generate(tmp_path / "dangling", 1, size_range=SMALL)


def test_synth_write_errors_name_the_file_and_odd_folders_are_handled(tmp_path, monkeypatch):
    """A full disk said only 'No space left on device' (no file); a 245-byte folder name failed ('File name too
    long' for its staging folder); `hemseg data synth .` rendered everything, then failed with 'Invalid argument'."""
    import errno

    real = Path.write_bytes

    def full(self, data):
        if self.suffix == ".png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError) as exc:
        generate(tmp_path / "ph", per_category=1)
    assert exc.value.filename and exc.value.filename.startswith(str(tmp_path / "ph" / ""))
    assert ".tmp-" not in exc.value.filename and not (tmp_path / "ph").exists()
    assert not [p for p in tmp_path.iterdir()]  # no staging folder or lock left
    monkeypatch.setattr(Path, "write_bytes", real)
    long = tmp_path / ("p" * 245)
    generate(long, per_category=1)
    assert len(list((long / CATEGORIES[0] / "images").iterdir())) == 1
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(UsageError, match="is the current folder or holds it"):
        generate(".", per_category=1)


def test_synth_is_done_once_the_new_phantom_is_in_place_not_after_deleting_the_old(tmp_path: Path, monkeypatch):
    """A Ctrl-C while a replaced phantom was being deleted made a finished `hemseg data synth` exit 130 (QA, stop
    56): ``on_published`` (the command's done(), from which SIGINT/SIGTERM are ignored) is called with the new
    phantom in place and the old copy not yet deleted."""
    from click.testing import CliRunner

    from hemseg.cli import data_synth

    out = tmp_path / "ds"
    generate(out, 1, size_range=SMALL)
    seen = []

    def published():
        aside = [p for p in tmp_path.iterdir() if p.name.startswith(".ds.") and (p / "manifest.json").is_file()]
        seen.append((json.loads((out / "manifest.json").read_text())["seed"],
                     [json.loads((p / "manifest.json").read_text())["seed"] for p in aside]))

    generate(out, 1, seed=4, size_range=SMALL, on_published=published)
    assert seen == [(4, [0])]  # the new one in place, the old one moved aside and still there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    generate(tmp_path / "new", 1, size_range=SMALL, on_published=lambda: seen.append("new"))
    assert seen[-1] == "new"
    monkeypatch.setattr(data_synth, "done", published)  # the command's done() is the one called then
    res = CliRunner().invoke(data_synth.synth, [str(out), "-n", "1", "--seed", "5", "--min-size", str(SMALL[0]),
                                                "--max-size", str(SMALL[1])], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert seen[-1] == (5, [4])


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process groups, SIGINT and /proc")
def test_ctrl_c_in_a_terminal_while_the_workers_start_is_one_line_and_keeps_the_old_phantom(tmp_path: Path):
    """A terminal's Ctrl-C reaches the whole process group: with -j 2, workers still importing numpy printed a
    traceback each (40-80 lines before 'hemseg: aborted'; QA, stop 59). They ignore SIGINT now and the parent stops
    them; the earlier phantom stays whole and nothing is left beside it."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "ds"
    generate(out, 1, size_range=SMALL)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # SIGINT as in a terminal's foreground job (a background job, as CI runs, starts with it ignored)
    code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from hemseg.cli import entry; entry()"
    proc = subprocess.Popen([sys.executable, "-c", code, "data", "synth",
                             str(out), "-n", "40", "--min-size", "64", "--max-size", "96", "-j", "2", "--seed", "3"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:  # the workers (and spawn's tracker) started
            if len(_children_of(proc.pid)) >= 2:
                break
            time.sleep(0.01)
        time.sleep(0.1)  # while they import
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "hemseg: aborted", err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
