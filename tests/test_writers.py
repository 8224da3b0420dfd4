"""Atomic writers: PNG masks, NIfTI label maps (layout and affine round trip), JSON; failures leave no file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from hemseg.errors import InputError
from hemseg.runtime.io import (
    ImageVolume,
    atomic_write_bytes,
    read_image,
    read_mask,
    write_json,
    write_mask_png,
    write_nifti_labels,
    write_png,
)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_bytes_creates_and_replaces(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert _listing(target.parent) == ["out.bin"]  # no temp files left
    umask = os.umask(0o022)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask  # not mkstemp's private 0o600


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="the umask is read at import without /proc")
def test_a_umask_set_after_import_is_the_one_new_files_get(tmp_path):
    """The umask was read once at import: a script that set a private one (0o077) afterwards got 0o644 files."""
    old = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "private.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "private.bin").stat().st_mode & 0o777 == 0o600


def test_atomic_write_takes_the_longest_legal_name_and_its_errors_name_the_target(tmp_path, monkeypatch):
    """A 250-byte name failed ('File name too long' for the hidden temporary name, 14 bytes longer); a full disk's
    error named no file and a read-only target's named the temporary file."""
    long = tmp_path / ("j" * 245 + ".json")
    atomic_write_bytes(long, b"{}")
    assert long.read_bytes() == b"{}" and _listing(tmp_path) == [long.name]
    target = tmp_path / "out.bin"

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as exc:
        atomic_write_bytes(target, b"data")
    assert exc.value.errno == 28 and exc.value.filename == str(target)
    assert _listing(tmp_path) == [long.name]


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"data")
    assert _listing(tmp_path) == []
    monkeypatch.undo()
    atomic_write_bytes(target, b"old")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and _listing(tmp_path) == ["out.bin"]


def test_write_png_and_mask_png(tmp_path):
    img = (np.arange(32 * 16) % 256).astype(np.uint8).reshape(32, 16)
    write_png(tmp_path / "a.png", img)
    assert np.array_equal(cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED), img)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 1
    write_mask_png(tmp_path / "m.png", mask)
    raw = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(raw)) == {0, 255} and (raw == 255).sum() == 16
    assert np.array_equal(read_mask(tmp_path / "m.png")[0], mask)
    write_mask_png(tmp_path / "b.png", mask.astype(bool))
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "m.png").read_bytes()
    with pytest.raises(ValueError):
        write_mask_png(tmp_path / "bad.png", mask * 3)
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", img.astype(np.float32))
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("zooms,axis", [((1.0, 1.0, 3.0), 2), ((3.0, 1.0, 1.0), 0), ((1.0, 3.0, 1.0), 1)])
def test_write_nifti_labels_round_trip(tmp_path, zooms, axis):
    rng = np.random.default_rng(0)
    data = rng.random((20, 24, 28)).astype(np.float32)
    affine = np.array([[0, 0, zooms[2], -5], [zooms[0], 0, 0, 7], [0, zooms[1], 0, 3], [0, 0, 0, 1]], float)
    src = nib.Nifti1Image(data, affine)
    src.header.set_qform(affine, code=1)
    src.header["descrip"] = b"source scan"
    nib.save(src, str(tmp_path / "scan.nii.gz"))
    # the slicing rule works from the affine's column norms: permuted zooms here
    vol = read_image(tmp_path / "scan.nii.gz")
    assert vol.slice_axis == axis
    labels = (vol.data > 0.7).astype(np.uint8)
    out = write_nifti_labels(tmp_path / "labels.nii.gz", labels, vol)
    back = nib.load(str(out))
    assert back.shape == data.shape and back.get_data_dtype() == np.uint8
    assert np.allclose(back.affine, affine)
    assert back.header.get_intent()[0] == "label"
    assert np.array_equal(np.asanyarray(back.dataobj), (data > 0.7).astype(np.uint8))
    assert np.array_equal(read_mask(out, image=vol), labels)
    write_nifti_labels(tmp_path / "plain.nii", labels, vol)
    assert np.allclose(nib.load(str(tmp_path / "plain.nii")).affine, affine)


def test_write_nifti_labels_refusals(tmp_path):
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.zeros((16, 16), np.uint8))
    vol = read_image(png)
    with pytest.raises(InputError, match="no spatial geometry"):
        write_nifti_labels(tmp_path / "x.nii.gz", np.zeros((1, 16, 16), np.uint8), vol)
    like = ImageVolume(path=tmp_path / "v.nii", data=np.zeros((2, 16, 16)), kind="nifti", spacing=(1, 1),
                       slice_axis=0, affine=np.eye(4), header=None)
    with pytest.raises(ValueError, match="do not match"):
        write_nifti_labels(tmp_path / "x.nii.gz", np.zeros((3, 16, 16), np.uint8), like)
    with pytest.raises(ValueError, match=".nii"):
        write_nifti_labels(tmp_path / "x.png", np.zeros((2, 16, 16), np.uint8), like)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_write_json(tmp_path):
    obj = {"a": np.float32(0.5), "b": np.arange(3), "p": Path("/x/y"), "n": np.int64(7)}
    write_json(tmp_path / "r.json", obj)
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text) == {"a": 0.5, "b": [0, 1, 2], "p": "/x/y", "n": 7}
    assert text.startswith('{\n  "a"') and text.endswith("\n")
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert _listing(tmp_path) == ["r.json"]
    write_json(tmp_path / "nan.json", {"x": float("nan"), "y": [np.float32("inf"), 1.5], "z": np.array([np.nan])})
    assert json.loads((tmp_path / "nan.json").read_text()) == {"x": None, "y": [None, 1.5], "z": [None]}
