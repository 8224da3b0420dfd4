"""DICOM series whose slice positions an evenly spaced, unsheared NIfTI affine cannot hold: a missing slice (uneven
spacing) and sideways steps (a gantry tilt). The label map must not claim a geometry it does not have, the summary
must say so, and the lesion volume must use the slices' real spacing.

Sources: small MR series built from pydicom's MR_small.dcm (tests/dicom_series.py); model tests/data/tiny_64.onnx.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from dicom_series import mr_series, save_series  # noqa: E402

from hemseg.runtime.io import read_image  # noqa: E402
from hemseg.runtime.io.dicom import slice_geometry  # noqa: E402
from hemseg.runtime.io.writers import is_orthogonal, write_nifti_labels  # noqa: E402
from hemseg.runtime.predict import PredictOptions, lesion_volume_mm3, run_predict  # noqa: E402
from hemseg.runtime.segmenter import Prediction  # noqa: E402

TINY = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def gap_series(tmp_path: Path) -> Path:
    """Six axial slices 3 mm apart with the fifth missing: positions 0, 3, 6, 9, 15 mm."""
    slices = mr_series(6, iop=AXIAL, step=3.0)
    del slices[4]
    return save_series(slices, tmp_path / "gap", order=[3, 0, 4, 1, 2])


def tilted_series(tmp_path: Path) -> Path:
    """Four axial slices 3 mm apart along the normal that each also step 1 mm along y (a gantry tilt)."""
    slices = mr_series(4, iop=AXIAL, step=3.0)
    for k, ds in enumerate(slices):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 1.0 * k, z]
    return save_series(slices, tmp_path / "tilt")


def lps_of_voxel(affine: np.ndarray, k: int) -> np.ndarray:
    ras = (np.asarray(affine) @ [0, 0, k, 1])[:3]
    return ras * [-1, -1, 1]


def test_even_series_has_no_warning_and_a_qform():
    positions = np.array([[0, 0, 3.0 * k] for k in range(5)])
    assert slice_geometry(positions, np.array(AXIAL)) == ((), None, True)
    assert is_orthogonal(np.diag([0.5, 0.5, 3.0, 1.0]))


def test_missing_slice_is_said_and_each_slice_keeps_its_own_thickness(tmp_path):
    vol = read_image(gap_series(tmp_path))
    assert vol.n_slices == 5
    assert len(vol.geometry_warnings) == 1 and "uneven slice spacing (3 to 6 mm" in vol.geometry_warnings[0]
    assert "up to 2.25 mm" in vol.geometry_warnings[0]
    assert vol.slice_thickness_mm == pytest.approx((3.0, 3.0, 3.0, 4.5, 6.0))
    # volume: each slice's lesion area times its own thickness, not the affine's mean step (3.75 mm)
    mask = np.zeros(vol.data.shape, np.uint8)
    mask[0, :2, :5] = 1   # 10 px
    mask[4, :4, :5] = 1   # 20 px
    pred = Prediction(mask=mask, spacing=vol.spacing)
    px_area = vol.spacing[0] * vol.spacing[1]
    assert lesion_volume_mm3(pred, vol) == pytest.approx((10 * 3.0 + 20 * 6.0) * px_area)


def test_missing_slice_gives_a_warning_in_the_summary(tmp_path):
    res = run_predict(TINY, [str(gap_series(tmp_path))], PredictOptions(out_dir=tmp_path / "out", fmt="nifti"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    item = summary["inputs"][0]
    assert item["status"] == "ok" and any("uneven slice spacing" in w for w in item["warnings"])
    assert summary["totals"]["inputs_with_warning"] == 1
    assert res.reports[0].stats["warnings"] == item["warnings"]


def test_sheared_series_label_map_keeps_the_shear_in_the_sform_only(tmp_path):
    folder = tilted_series(tmp_path)
    vol = read_image(folder)
    assert any(w.startswith("sheared slices (each steps 1 mm sideways") for w in vol.geometry_warnings)
    assert vol.slice_thickness_mm is None  # the steps along the normal are even
    assert not is_orthogonal(vol.affine)
    out = write_nifti_labels(tmp_path / "tilt_mask.nii.gz", np.zeros(vol.data.shape, np.uint8), vol)
    header = nib.load(out).header
    assert int(header["qform_code"]) == 0 and int(header["sform_code"]) == 1
    sources = sorted((pydicom.dcmread(f) for f in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    for k, ds in enumerate(sources):
        assert np.allclose(lps_of_voxel(header.get_sform(), k), [float(v) for v in ds.ImagePositionPatient],
                           atol=1e-3)


def test_regular_series_label_map_keeps_qform_and_sform(tmp_path):
    vol = read_image(save_series(mr_series(3, iop=AXIAL, step=3.0), tmp_path / "even"))
    assert vol.geometry_warnings == () and vol.slice_thickness_mm is None
    out = write_nifti_labels(tmp_path / "even_mask.nii.gz", np.zeros(vol.data.shape, np.uint8), vol)
    header = nib.load(out).header
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    assert np.allclose(header.get_qform(), header.get_sform(), atol=1e-4)


def test_one_slice_displaced_within_its_plane_is_said():
    """Only the normal gaps and the mean sideways step were checked: a slice 6 mm off was placed without a word."""
    positions = np.array([[6.0 if k == 3 else 0.0, 0.0, float(k)] for k in range(6)])
    warnings, thickness, fits = slice_geometry(positions, np.array(AXIAL))
    assert fits and thickness is None
    assert len(warnings) == 1 and warnings[0].startswith("slices displaced within their plane (up to 6 mm")


@pytest.mark.parametrize("order", [[0, 2, 4, 1, 3, 5], [0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 2, 0]])
def test_frames_out_of_order_or_repeated_get_no_geometry(tmp_path, order):
    """A multi-frame file's frames at 0, 2, 4, 1, 3, 5 mm were taken as uneven spacing (volume doubled, frames
    misplaced in the NIfTI); two stacks at the same positions, or a first and last frame at one position, gave a
    library error about a singular affine."""
    import copy

    from dicom_series import MR_SMALL

    src = pydicom.dcmread(MR_SMALL)
    ds = copy.deepcopy(src)
    ds.NumberOfFrames = len(order)
    ds.PixelData = np.stack([src.pixel_array] * len(order)).tobytes()
    ds.GridFrameOffsetVector = [float(v) for v in order]
    ds.FrameIncrementPointer = pydicom.tag.Tag("GridFrameOffsetVector")
    path = tmp_path / "mf.dcm"
    ds.save_as(path)
    vol = read_image(path)
    assert vol.affine is None and vol.n_slices == len(order)
    assert any("not one stack in order along the slice normal" in w for w in vol.geometry_warnings)
    res = run_predict(TINY, [str(path)], PredictOptions(out_dir=tmp_path / "out", fmt="nifti"))
    item = res.reports[0]
    assert item.status == "ok" and item.stats["lesion_volume_mm3"] is None
    header = nib.load(tmp_path / "out" / item.outputs["mask"]).header
    assert int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0
