"""A NIfTI mask is paired with its image by the two files' geometry (hemseg/runtime/io/mask_geometry.py).

Every mask here is an asymmetric pattern (an L-shaped region off-centre, different on every slice), so pairing by
array order where the files' axes differ, or a wrong flip, changes the mask that is read.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from hemseg.cli import main
from hemseg.errors import InputError
from hemseg.runtime.dataset import check_dataset, discover, load_pair

SPACING = (0.7, 0.9, 3.0)


def pattern(shape3) -> np.ndarray:
    """An asymmetric label volume: on slice k (last axis) an L of two bars whose size depends on k."""
    m = np.zeros(shape3, np.uint8)
    for k in range(shape3[2]):
        m[2:9 + k, 3:6, k] = 1
        m[2:5, 3:12 - k, k] = 1
    return m


def oblique_affine() -> np.ndarray:
    """Voxel -> RAS with anisotropic voxels, a small rotation and an origin away from 0."""
    t = np.deg2rad(10.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(SPACING)
    a[:3, 3] = [-41.5, 12.25, 80.0]
    return a


def write_case(root: Path, mask_img: nib.Nifti1Image, image_data: np.ndarray, affine: np.ndarray) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image_data, affine), str(root / "images" / "case.nii.gz"))
    nib.save(mask_img, str(root / "masks" / "case.nii.gz"))
    return root


def image_data(shape3) -> np.ndarray:
    return (np.random.default_rng(0).random(shape3) * 200).astype(np.float32)


def expected_slices(mask3: np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
    """The image's slices of a mask on its grid: along the 3.0 mm axis, turned as a viewer shows them."""
    from hemseg.runtime.io.display import display_orientation

    slices = np.moveaxis(mask3, 2, 0)
    return slices if affine is None else display_orientation(affine, 2).apply(slices)


@pytest.mark.parametrize("target", [("R", "A", "S"), ("L", "P", "S"), ("S", "R", "A"), ("P", "I", "L")])
def test_a_mask_stored_in_another_axis_order_is_reoriented_exactly(tmp_path, target):
    shape3, affine = (16, 18, 5), oblique_affine()
    truth = pattern(shape3)
    stored = nib.Nifti1Image(truth, affine)
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(target))
    turned = stored.as_reoriented(transform)  # what a tool that reorients on saving writes
    if target != ("R", "A", "S"):
        assert turned.shape != truth.shape or not np.array_equal(np.asarray(turned.dataobj), truth)
    root = write_case(tmp_path / "d", turned, image_data(shape3), affine)
    _, mask = load_pair(discover(root).samples[0])
    assert np.array_equal(mask, expected_slices(truth, affine))


def test_a_dcm2niix_like_mask_of_a_dicom_series_is_reoriented(tmp_path):
    pytest.importorskip("pydicom")
    from dicom_series import mr_series, save_series

    from hemseg.runtime.io import read_image

    folder = save_series(mr_series(4), tmp_path / "d" / "images" / "case")
    vol = read_image(folder)  # (rows, columns, slices) with its RAS affine
    truth = pattern((vol.data.shape[1], vol.data.shape[2], vol.data.shape[0]))
    stored = nib.Nifti1Image(truth, vol.affine)
    turned = stored.as_reoriented(ornt_transform(io_orientation(vol.affine), axcodes2ornt(("L", "A", "S"))))
    assert turned.shape != truth.shape  # a sagittal series: the axes are permuted, not only flipped
    (tmp_path / "d" / "masks").mkdir()
    nib.save(turned, str(tmp_path / "d" / "masks" / "case.nii.gz"))
    _, mask = load_pair(discover(tmp_path / "d").samples[0])
    assert np.array_equal(mask, np.moveaxis(truth, 2, 0))


def test_float32_rounding_of_the_affine_is_the_same_grid(tmp_path):
    shape3, affine = (16, 18, 5), oblique_affine()
    truth = pattern(shape3)
    noisy = affine + np.random.default_rng(1).normal(0, 1e-5, (4, 4)) * np.r_[1, 1, 1, 0][:, None]
    root = write_case(tmp_path / "d", nib.Nifti1Image(truth, noisy), image_data(shape3), affine)
    _, mask = load_pair(discover(root).samples[0])
    assert np.array_equal(mask, expected_slices(truth, affine))


def test_a_mask_without_geometry_is_paired_by_array_order(tmp_path):
    shape3, affine = (16, 18, 5), oblique_affine()
    truth = pattern(shape3)
    bare = nib.Nifti1Image(truth, None)  # written from a bare array: qform and sform codes 0
    bare.header.set_zooms(SPACING)
    assert int(bare.header["qform_code"]) == 0 and int(bare.header["sform_code"]) == 0
    root = write_case(tmp_path / "d", bare, image_data(shape3), affine)
    _, mask = load_pair(discover(root).samples[0])
    assert np.array_equal(mask, expected_slices(truth, affine))  # the array order, turned like the image


@pytest.mark.parametrize("mask_axes, warned", [(("L", "P", "S"), True), (None, False)])
def test_an_image_without_geometry_and_a_mask_with_it_in_another_axis_order_is_a_warning(tmp_path, caplog, mask_axes,
                                                                                         warned):
    """Only the mask places its voxels, and it says they run LPS: paired by array order (nothing else can be
    known), the two arrays likely flipped against each other, which was not even logged."""
    shape3 = (16, 18, 5)
    truth = pattern(shape3)
    bare_image = nib.Nifti1Image(image_data(shape3), None)
    bare_image.header.set_zooms(SPACING)
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    nib.save(bare_image, str(root / "images" / "case.nii.gz"))
    default = nib.load(str(root / "images" / "case.nii.gz")).affine  # what the image's header implies
    stored = nib.Nifti1Image(truth, default)
    if mask_axes is not None:
        stored = stored.as_reoriented(ornt_transform(io_orientation(default), axcodes2ornt(mask_axes)))
    nib.save(stored, str(root / "masks" / "case.nii.gz"))
    with caplog.at_level("WARNING", logger="hemseg.runtime.io.mask_geometry"):
        for _ in range(3):  # read again (eval's overlays re-read a sample): said once, not once per read
            load_pair(discover(root).samples[0])
    assert ("records no geometry" in caplog.text and "LPS" in caplog.text) == warned, caplog.text
    assert caplog.text.count("records no geometry") == (1 if warned else 0)


@pytest.mark.parametrize("change, words", [
    ("shift", "origin 6 mm apart"),
    ("flip", "origin"),  # mirrored about the origin: the same axes, another place
    ("spacing", "voxel size (0.7, 0.9, 3) vs (0.7, 0.9, 2) mm"),
])
def test_a_mask_on_another_grid_is_refused_naming_the_mask_and_the_difference(tmp_path, change, words):
    shape3, affine = (16, 18, 5), oblique_affine()
    other = affine.copy()
    if change == "shift":
        other[:3, 3] += [0.0, 0.0, 6.0]
    elif change == "flip":
        other[:3, 0] *= -1
    else:
        affine = affine.copy()
        affine[:3, 2] *= 2.0 / 3.0
    root = write_case(tmp_path / "d", nib.Nifti1Image(pattern(shape3), other), image_data(shape3), affine)
    with pytest.raises(InputError, match="voxel grid differs from the image") as exc:
        load_pair(discover(root).samples[0])
    assert exc.value.path.name == "case.nii.gz" and exc.value.path.parent.name == "masks"
    assert words in exc.value.reason
    report = check_dataset(root)
    assert not report.usable and [p.name for p, _ in report.geometry_mismatches] == ["case.nii.gz"]
    assert report.unreadable == [] and report.to_dict()["geometry_mismatches"][0]["reason"] == exc.value.reason
    result = CliRunner().invoke(main, ["data", "check", str(root)])
    assert result.exit_code == 1 and "geometry mismatch: " in result.output and "Traceback" not in result.output


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "spine-generic-sub-unf01"


def test_real_oblique_volume_as_a_dicom_series_with_its_original_nifti_mask(tmp_path):
    """The real spine-generic T2w volume (oblique, 9 degrees) written as a DICOM series the way scanners store it
    (rows along the volume's second axis, columns along its first: the NIfTI's transpose), paired with the dataset's
    own manual cord mask, unchanged: hemseg reorients the mask onto the series, pixel for pixel."""
    image_path, mask_path = SHARED / "sub-unf01_T2w.nii.gz", SHARED / "sub-unf01_T2w_seg-manual.nii.gz"
    if not mask_path.is_file():
        pytest.skip(f"real data not found at {SHARED}")
    pydicom = pytest.importorskip("pydicom")
    import copy

    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    img = nib.load(str(image_path))
    volume = np.asarray(img.dataobj, dtype=np.float32)
    affine = img.affine
    truth = (np.asarray(nib.load(str(mask_path)).dataobj) > 0).astype(np.uint8)
    lps = np.diag([-1.0, -1.0, 1.0])
    row_dir = lps @ affine[:3, 0] / np.linalg.norm(affine[:3, 0])  # along a row: the column index, NIfTI axis 0
    col_dir = lps @ affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    spacing = [float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 0]))]  # (row, column) mm
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    scale = 4000.0 / float(volume.max())
    series_uid = generate_uid()
    folder = tmp_path / "d" / "images" / "case"
    folder.mkdir(parents=True)
    for k in range(volume.shape[2]):
        ds = copy.deepcopy(base)
        pixels = np.rint(volume[:, :, k].T * scale).astype(np.int16)  # (rows, columns) = (axis 1, axis 0)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        ds.PixelSpacing = spacing
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [round(float(v), 4) for v in lps @ (affine @ [0.0, 0.0, k, 1.0])[:3]]
        ds.SliceThickness = float(np.linalg.norm(affine[:3, 2]))
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"IM{volume.shape[2] - k:04d}.dcm", enforce_file_format=True)
    (tmp_path / "d" / "masks").mkdir()
    (tmp_path / "d" / "masks" / "case.nii.gz").write_bytes(mask_path.read_bytes())
    _, mask = load_pair(discover(tmp_path / "d").samples[0])
    expected = np.stack([truth[:, :, k].T for k in range(truth.shape[2])])
    assert mask.shape == expected.shape == (16, 141, 131)
    assert np.array_equal(mask, expected) and expected.sum() > 1000
