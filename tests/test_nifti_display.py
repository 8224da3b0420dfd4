"""A NIfTI slice reaches the model as a viewer displays it, so the same scan as DICOM and as NIfTI is one input
(hemseg/runtime/io/display.py).

The NIfTI files are made from a DICOM series the way converters store them: ``dcm2niix`` (DICOM columns first, rows
flipped) and a pipeline that reorients to RAS. Before, each was sliced in its array order: the model saw the series'
slices transposed or mirrored, and gave another mask for the same scan.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from hemseg.runtime.io import read_image, read_mask, write_nifti_labels

pytest.importorskip("pydicom")

AXIAL, SAGITTAL, CORONAL = (1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1)
OBLIQUE = (0.98480775, 0.17364818, 0, 0, 0, -1)  # a coronal slab turned 10 degrees


def _series(tmp_path, iop):
    from dicom_series import mr_series, save_series

    return read_image(save_series(mr_series(3, iop=iop), tmp_path / "dicom"))


def _dcm2niix_like(vol, path):
    """(rows, columns, slices) -> (columns, rows reversed, slices), with the affine that keeps every voxel's place."""
    rows = vol.data.shape[1]
    stored = np.moveaxis(vol.data, 0, 2).transpose(1, 0, 2)[:, ::-1, :]
    index = np.array([[0, -1, 0, rows - 1], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float64)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(stored), vol.affine @ index), str(path))
    return path


def _ras(vol, path):
    img = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(vol.data, 0, 2)), vol.affine)
    nib.save(img.as_reoriented(ornt_transform(io_orientation(vol.affine), axcodes2ornt("RAS"))), str(path))
    return path


@pytest.mark.parametrize("iop", [AXIAL, SAGITTAL, CORONAL, OBLIQUE], ids=["axial", "sagittal", "coronal", "oblique"])
def test_a_dicom_series_and_its_nifti_conversions_are_the_same_slices(tmp_path, iop):
    dicom = _series(tmp_path, iop)
    assert dicom.inplane.identity  # a DICOM series is shown in its own row and column order
    for make in (_dcm2niix_like, _ras):
        path = make(dicom, tmp_path / f"{make.__name__}.nii.gz")
        nifti = read_image(path)
        same_order = nifti.data if np.array_equal(nifti.data[0], dicom.data[0]) else nifti.data[::-1]
        assert np.array_equal(same_order, dicom.data), (make.__name__, nifti.inplane)
        assert nifti.spacing == pytest.approx(dicom.spacing)


def test_a_label_map_goes_back_onto_the_nifti_voxels_and_masks_turn_like_their_image(tmp_path):
    dicom = _series(tmp_path, SAGITTAL)
    path = _dcm2niix_like(dicom, tmp_path / "scan.nii.gz")
    image = read_image(path)
    assert not image.inplane.identity
    labels = np.zeros(image.data.shape, np.uint8)
    labels[1, 5:20, 30:34] = 1  # an asymmetric bar on the displayed middle slice
    write_nifti_labels(tmp_path / "scan_mask.nii.gz", labels, image)
    stored = np.asanyarray(nib.load(str(tmp_path / "scan_mask.nii.gz")).dataobj)
    expected = np.moveaxis(labels, 0, 2).transpose(1, 0, 2)[:, ::-1, :]  # the dcm2niix layout of the labels
    assert np.array_equal(stored, expected)
    assert np.array_equal(read_mask(tmp_path / "scan_mask.nii.gz", image=image), labels)
    bare = nib.Nifti1Image(stored, None)  # the same labels from a bare array (no geometry): as stored, then turned
    nib.save(bare, str(tmp_path / "bare_mask.nii"))
    assert np.array_equal(read_mask(tmp_path / "bare_mask.nii", image=image), labels)


def test_a_nifti_without_geometry_is_taken_as_stored(tmp_path):
    arr = np.arange(3 * 20 * 24, dtype=np.int16).reshape(20, 24, 3)
    nib.save(nib.Nifti1Image(arr, None), str(tmp_path / "bare.nii"))
    vol = read_image(tmp_path / "bare.nii")
    assert vol.inplane.identity and np.array_equal(vol.data, np.moveaxis(arr, 2, 0))


def test_a_png_mask_in_the_nifti_array_order_is_named_and_layout_warnings_reach_every_command(tmp_path, caplog):
    """A PNG / NPY mask saved in the NIfTI image's array order gave 'size mismatch' with no word of the turn; an NPY
    volume saved slices last was read as strips by data check, eval and train with no warning (predict said it)."""
    from hemseg.errors import InputError
    from hemseg.runtime.dataset import check_dataset, discover, load_pair

    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    arr = np.zeros((99, 123, 10), np.int16)
    arr[40:60, 50:70, :] = 300
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 3.0, 1.0])), str(data / "images" / "a.nii.gz"))
    np.save(data / "masks" / "a.npy", np.moveaxis((arr > 0).astype(np.uint8), -1, 0))  # (10, 99, 123): array order
    report = check_dataset(data)
    assert report.size_mismatches and any("fits the NIfTI image's array order" in w for w in report.warnings)
    with pytest.raises(InputError, match="fits the NIfTI image's array order"):
        load_pair(discover(data).samples[0])
    np.save(data / "masks" / "a.npy", (arr > 0).astype(np.uint8))  # the voxel array itself, (x, y, z)
    assert any("the NIfTI image's voxel array as stored" in w for w in check_dataset(data).warnings)
    npy = tmp_path / "n"
    (npy / "images").mkdir(parents=True)
    (npy / "masks").mkdir()
    np.save(npy / "images" / "v.npy", np.zeros((123, 99, 10), np.uint8))  # slices last
    np.save(npy / "masks" / "v.npy", np.zeros((123, 99, 10), np.uint8))
    assert any("np.moveaxis(a, -1, 0)" in w for w in check_dataset(npy).warnings)
    with caplog.at_level("WARNING"):
        load_pair(discover(npy).samples[0])
    assert "np.moveaxis(a, -1, 0)" in caplog.text


def test_an_evaluation_lists_the_readers_layout_warnings_once(tmp_path, caplog):
    """hemseg eval-masks logged that an NPY volume reads as strips, yet its summary.json said 'warnings: []' while
    its Dice was computed on the strips."""
    from hemseg.train.evaluate import evaluate_masks

    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    vol = np.zeros((96, 96, 12), np.uint8)
    vol[30:50, 30:50, :] = 200
    np.save(data / "images" / "v.npy", vol)
    np.save(data / "masks" / "v.npy", (vol > 0).astype(np.uint8))
    pred = tmp_path / "pred"
    pred.mkdir()
    np.save(pred / "v.npy", (vol > 0).astype(np.uint8))
    with caplog.at_level("WARNING"):
        s = evaluate_masks(pred, data, tmp_path / "e", progress=False, n_overlays=2)
    assert sum("np.moveaxis(a, -1, 0)" in w for w in s["warnings"]) == 1
    assert caplog.text.count("np.moveaxis(a, -1, 0)") == 1


def test_a_nifti_mask_with_a_geometry_beside_a_png_says_how_it_is_read(tmp_path):
    """A NIfTI mask saved from a PNG image's (H, W) array with an affine (nibabel's default sform code) is read as a
    viewer displays it, transposed: 'image and mask differ' said no more; for a square slice it scored Dice 0 without
    a word in any report. The size error says why; a square slice's report (eval-masks, data check) says which way
    it was read. ITK's way (the (W, H) array, an LPS affine) and hemseg predict's (codes 0) read right, unsaid."""
    import cv2

    from hemseg.errors import InputError
    from hemseg.runtime.dataset import check_dataset, discover, load_pair
    from hemseg.runtime.io.images import read_mask_and_values
    from hemseg.runtime.predict import nifti_like
    from hemseg.train.evaluate import evaluate_masks

    def dataset(root, img, mask_array, affine):
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        cv2.imwrite(str(root / "images" / "a.png"), img)
        nib.save(nib.Nifti1Image(mask_array, affine), str(root / "masks" / "a.nii.gz"))
        return root

    img = np.zeros((40, 52), np.uint8)
    img[10:20, 5:30] = 200
    fg = (img > 0).astype(np.uint8)
    flat = dataset(tmp_path / "d", img, fg, np.eye(4))
    with pytest.raises(InputError, match="the NIfTI mask's array as stored fits the image, but a NIfTI mask with a "
                                         "geometry"):
        load_pair(discover(flat).samples[0])
    assert any("array as stored fits the image" in w for w in check_dataset(flat).warnings)
    itk = dataset(tmp_path / "itk", img, fg.T[:, :, None].copy(), np.diag([-1.0, -1.0, 1.0, 1.0]))
    image, mask = load_pair(discover(itk).samples[0])
    assert np.array_equal(mask[0], fg) and not check_dataset(itk).warnings
    square = np.zeros((48, 48), np.uint8)
    square[5:12, 20:44] = 200
    sq = dataset(tmp_path / "sq", square, (square > 0).astype(np.uint8), np.eye(4))
    assert any("read as displayed, its array turned or flipped" in w for w in check_dataset(sq).warnings)
    pred = tmp_path / "pred"
    pred.mkdir()
    cv2.imwrite(str(pred / "a.png"), (square > 0).astype(np.uint8))
    for run in ("e1", "e2"):  # every report says it, not only the first of a process
        s = evaluate_masks(pred, sq, tmp_path / run, progress=False, n_overlays=0)
        assert any("read as displayed" in w for w in s["warnings"]) and s["dice_global"] < 0.5
    image = read_image(flat / "images" / "a.png")
    write_nifti_labels(tmp_path / "p.nii.gz", fg[None], nifti_like(image), geometry_known=False)
    mask, _ = read_mask_and_values(tmp_path / "p.nii.gz", image=image)
    assert np.array_equal(mask[0], fg)
