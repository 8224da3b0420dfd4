"""DICOM RT Structure Sets as dataset masks: ``images/<stem>/`` (a series) + ``masks/<stem>.dcm`` (an RTSTRUCT of it).

The contours are made here from known pixel masks with the forward formula of PS3.3 C.7.6.2.1.1 (pixel (row, col)
lies at IPP + col * col_mm * row_dir + row * row_mm * col_dir), on sagittal slices with anisotropic pixel spacing and
non-square regions, so a swapped row/column or spacing in the reader changes the mask.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from click.testing import CliRunner  # noqa: E402
from dicom_series import mr_series, save_series  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from hemseg.cli import main  # noqa: E402
from hemseg.errors import InputError  # noqa: E402
from hemseg.runtime.dataset import check_dataset, discover, label_map_masks, load_pair  # noqa: E402
from hemseg.runtime.io import read_image  # noqa: E402
from hemseg.runtime.io.images import mask_label_values  # noqa: E402

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SPACING = (0.6, 0.9)  # (row_mm, col_mm): anisotropic


# ------------------------------------------------------------------------------------------------ builders
def series(root: Path, n: int = 4) -> tuple[list, Path]:
    """``n`` sagittal slices (slice order) saved in reverse order as ``root/images/case/``."""
    slices = mr_series(n)
    for ds in slices:
        ds.PixelSpacing = list(SPACING)
    return slices, save_series(slices, root / "images" / "case")


def patient_points(ipp, iop, spacing, rows, cols) -> np.ndarray:
    """Pixel (row, col) -> LPS mm, the forward formula."""
    ipp, iop = np.asarray(ipp, float), np.asarray(iop, float)
    rows, cols = np.asarray(rows, float), np.asarray(cols, float)
    return ipp + np.outer(cols * spacing[1], iop[:3]) + np.outer(rows * spacing[0], iop[3:])


def outlines(region: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) of the outer boundary pixels of each connected part of ``region``."""
    found, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [(c[:, 0, 1], c[:, 0, 0]) for c in found]


def contour(points: np.ndarray, sop=None, frame: int | None = None, kind: str = "CLOSED_PLANAR") -> Dataset:
    item = Dataset()
    item.ContourGeometricType = kind
    item.NumberOfContourPoints = len(points)
    item.ContourData = [round(float(v), 4) for v in points.reshape(-1)]
    if sop is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop.SOPClassUID
        ref.ReferencedSOPInstanceUID = sop.SOPInstanceUID
        if frame is not None:
            ref.ReferencedFrameNumber = frame
        item.ContourImageSequence = [ref]
    return item


def slice_contours(ds, region: np.ndarray, ref: bool = True, offset: float = 0.0) -> list[Dataset]:
    """Contours of ``region`` (H, W) on the single-frame slice ``ds``, ``offset`` mm off its plane."""
    iop = np.asarray(ds.ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return [contour(patient_points(ds.ImagePositionPatient, iop, SPACING, r, c) + offset * normal, ds if ref else None)
            for r, c in outlines(region)]


def rtstruct(path: Path, image, rois: dict[int, tuple[str, list[Dataset]]], frame_of_ref: str | None = None,
             series_uid: str | None = None) -> Path:
    """An RT Structure Set of ``image`` (a slice data set: study, series, frame of reference) with ``rois``:
    number -> (name, contours)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_CLASS
    ds.SOPClassUID = RTSTRUCT_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.PatientID = str(image.get("PatientID", "p"))
    ds.StudyInstanceUID = image.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "test"
    for_uid = frame_of_ref or image.FrameOfReferenceUID
    series_item = Dataset()
    series_item.SeriesInstanceUID = series_uid or image.SeriesInstanceUID
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = image.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series_item]
    frame = Dataset()
    frame.FrameOfReferenceUID = for_uid
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, contours) in rois.items():
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, for_uid
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber, item.ROIDisplayColor = number, [255, 0, 0]
        item.ContourSequence = contours
        ds.ROIContourSequence.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def two_rectangles(shape) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[1, 20:30, 10:26] = 1  # 10 rows x 16 columns
    mask[2, 40:46, 30:34] = 1  # 6 x 4
    return mask


def dataset_with_rtstruct(root: Path, ref: bool = True, offset: float = 0.0) -> tuple[Path, np.ndarray]:
    slices, folder = series(root)
    mask = two_rectangles((4, 64, 64))
    contours = [c for k in (1, 2) for c in slice_contours(slices[k], mask[k], ref=ref, offset=offset)]
    rtstruct(root / "masks" / "case.dcm", slices[0], {1: ("lesion", contours)})
    return folder, mask


# ------------------------------------------------------------------------------------------------- tests
def test_rectangles_by_reference_read_back_exactly(tmp_path):
    folder, mask = dataset_with_rtstruct(tmp_path)
    [sample] = discover(tmp_path).samples
    assert sample.image == folder and sample.mask.name == "case.dcm"
    _, got = load_pair(sample)
    assert got.dtype == np.uint8 and got.shape == mask.shape
    assert np.array_equal(got, mask)  # slice order (files are stored reversed), rows vs columns, spacing
    assert got[1].sum() == 160 and got[2].sum() == 24


def test_without_contour_image_sequence_slices_are_found_by_position(tmp_path):
    """No references: each contour goes to the slice nearest along the normal (here 0.4 mm off the plane; the
    tolerance is half the 3 mm slice step)."""
    _, mask = dataset_with_rtstruct(tmp_path, ref=False, offset=0.4)
    assert np.array_equal(load_pair(discover(tmp_path).samples[0])[1], mask)


def test_contours_along_pixel_edges_and_between_read_back_by_pixel_centres(tmp_path):
    """Planning systems draw along pixel edges or anywhere in between, not through pixel centres: a 10 x 16 px
    rectangle outlined along its pixel edges, and the 6 x 4 one 0.3 px outside its edges, give exactly those pixels
    (cv2.fillPoly took every pixel the polygon touched: 11 x 17 and 8 x 6)."""
    slices, _ = series(tmp_path)
    mask = two_rectangles((4, 64, 64))

    def box(ds, r0, r1, c0, c1, out):  # the rectangle of rows r0..r1, columns c0..c1, ``out`` px outside its edges
        rows = np.array([r0, r0, r1, r1]) + np.array([-1, -1, 1, 1]) * (0.5 + out)
        cols = np.array([c0, c1, c1, c0]) + np.array([-1, 1, 1, -1]) * (0.5 + out)
        return contour(patient_points(ds.ImagePositionPatient, ds.ImageOrientationPatient, SPACING, rows, cols), ds)

    rtstruct(tmp_path / "masks" / "case.dcm", slices[0],
             {1: ("lesion", [box(slices[1], 20, 29, 10, 25, 0.0), box(slices[2], 40, 45, 30, 33, 0.3)])})
    got = load_pair(discover(tmp_path).samples[0])[1]
    assert got[1].sum() == 160 and got[2].sum() == 24
    assert np.array_equal(got, mask)


def test_fill_polygon_takes_the_pixels_whose_centres_are_inside_or_on_it():
    """Random polygons (star-shaped, self-crossing ones too) against ray casting at each pixel centre (even-odd),
    pixel centres within 1/64 px of an edge left out of the comparison (inside-or-on there is the tolerance's)."""
    from hemseg.runtime.io.rtstruct_mask import fill_polygon

    def distance_to_edges(px, py, poly):
        a, b = poly, np.roll(poly, -1, axis=0)
        d = b - a
        t = np.clip(((px[..., None] - a[:, 0]) * d[:, 0] + (py[..., None] - a[:, 1]) * d[:, 1])
                    / np.maximum((d ** 2).sum(1), 1e-12), 0, 1)
        return np.hypot(px[..., None] - a[:, 0] - t * d[:, 0], py[..., None] - a[:, 1] - t * d[:, 1]).min(-1)

    rng = np.random.default_rng(3)
    py, px = np.mgrid[0:24, 0:30].astype(float)
    for i in range(200):
        k = int(rng.integers(3, 12))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k)) if i % 4 else rng.uniform(0, 2 * np.pi, k)
        radius = rng.uniform(1.0, 14.0, k)  # partly outside the 24 x 30 image at times
        cx, cy = (15.0, 12.0) if i % 2 else (14.6, 11.3)
        poly = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
        inside = np.zeros(px.shape, bool)
        for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
            if y0 != y1:
                hit = ((y0 <= py) & (py < y1)) | ((y1 <= py) & (py < y0))
                inside ^= hit & (px < x0 + (py - y0) / (y1 - y0) * (x1 - x0))
        near = distance_to_edges(px, py, poly)
        got = fill_polygon(poly, px.shape).astype(bool)
        clear = near > 1 / 64
        assert np.array_equal(got[clear], inside[clear]), i
    square = np.array([[1.3, 1.3], [2.7, 1.3], [2.7, 2.7], [1.3, 2.7]])
    assert np.argwhere(fill_polygon(square, (5, 5))).tolist() == [[2, 2]]
    through_centres = np.array([[1, 1], [3, 1], [3, 2], [1, 2]])  # centres on the contour are inside
    assert fill_polygon(through_centres, (5, 5)).sum() == 6
    diagonal = np.array([[0, 0], [4, 4], [0, 4]])  # on a slanted edge too: the lower triangle with its diagonal
    assert np.array_equal(fill_polygon(diagonal, (5, 5)), np.tril(np.ones((5, 5), np.uint8)))


def test_an_inner_contour_is_a_hole(tmp_path):
    """The hole's contour as cv2.findContours draws it: through the centres of the region's pixels around the hole
    (those pixels were XOR-ed away with the hole: a 4 x 4 hole read as 6 x 6 minus its corners)."""
    slices, _ = series(tmp_path)
    ring = np.zeros((64, 64), np.uint8)
    ring[20:40, 10:36] = 1
    ring[26:34, 16:28] = 0
    found, _ = cv2.findContours(ring, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    assert len(found) == 2  # the outer outline and the hole's, both through the ring's own pixels
    ds = slices[2]
    contours = [contour(patient_points(ds.ImagePositionPatient, ds.ImageOrientationPatient, SPACING,
                                       c[:, 0, 1], c[:, 0, 0]), ds) for c in found]
    rtstruct(tmp_path / "masks" / "case.dcm", slices[0], {1: ("ring", contours)})
    got = load_pair(discover(tmp_path).samples[0])[1]
    expected = np.zeros((4, 64, 64), np.uint8)
    expected[2] = ring
    assert np.array_equal(got, expected) and got.sum() == 20 * 26 - 8 * 12


def test_a_contour_through_centres_that_is_not_quite_axis_parallel_keeps_its_pixels():
    """On an oblique series the mm -> pixel projection tilts a horizontal edge by ~1e-4 px: only the one column where
    it crossed the row's height counted as on it, and most of the top and bottom rows were lost."""
    from hemseg.runtime.io.rtstruct_mask import fill_polygon

    box = np.array([[10.0, 10.0], [29.0, 10.0001], [29.0001, 29.0], [10.0, 28.9999]])  # a 20 x 20 px region
    got = fill_polygon(box, (40, 40))
    assert got.sum() == 400 and got[10, 10:30].all() and got[29, 10:30].all()


def test_rois_are_labels_and_open_contours_are_skipped(tmp_path, caplog):
    slices, _ = series(tmp_path)
    a = np.zeros((64, 64), np.uint8)
    a[5:15, 5:20] = 1
    b = np.zeros((64, 64), np.uint8)
    b[30:40, 30:36] = 1
    line = patient_points(slices[1].ImagePositionPatient, slices[1].ImageOrientationPatient, SPACING, [1, 5, 9],
                          [1, 5, 1])
    rtstruct(tmp_path / "masks" / "case.dcm", slices[0],
             {3: ("lesion", slice_contours(slices[0], a) + [contour(line, slices[1], kind="OPEN_PLANAR")]),
              7: ("cord", slice_contours(slices[3], b)),
              9: ("marker", [contour(line[:1], slices[1], kind="POINT")])})
    [sample] = discover(tmp_path).samples
    with caplog.at_level(logging.WARNING, logger="hemseg.runtime.io.rtstruct_mask"):
        both = load_pair(sample)[1]
    assert "skipped 2 contour(s) that are not closed" in caplog.text
    assert both[0].sum() == 150 and both[3].sum() == 60 and both[1:3].sum() == 0
    only7 = load_pair(sample, labels=[7])[1]
    assert only7[0].sum() == 0 and only7[3].sum() == 60
    assert load_pair(sample, labels=[9])[1].sum() == 0  # a point ROI: no area
    assert load_pair(sample, labels=[5])[1].sum() == 0  # no such ROI: nothing is lesion
    assert mask_label_values(sample.mask).tolist() == [3, 7]  # ROIs with a closed contour
    assert [(p.name, v.tolist()) for p, v in label_map_masks([sample])] == [("case.dcm", [3, 7])]
    assert [v for _, v in check_dataset(tmp_path).label_maps] == [[3, 7]]


@pytest.mark.parametrize("variant", ["reference", "series", "frame-of-reference"])
def test_an_rtstruct_of_another_series_is_refused(tmp_path, variant):
    slices, _ = series(tmp_path / "a")
    other, _ = series(tmp_path / "b")  # same study and frame of reference (MR_small's), new series and instances
    region = two_rectangles((4, 64, 64))[1]
    if variant == "reference":  # it names series b, but its contours lie on images of series a
        rtstruct(tmp_path / "b" / "masks" / "case.dcm", slices[0], {1: ("lesion", slice_contours(slices[1], region))},
                 series_uid=other[0].SeriesInstanceUID)
    else:  # no image references: the referenced series or the frame of reference tell
        contours = slice_contours(other[1], region, ref=False)
        kw = {"series_uid": slices[0].SeriesInstanceUID} if variant == "series" else {"frame_of_ref": generate_uid()}
        rtstruct(tmp_path / "b" / "masks" / "case.dcm", other[0], {1: ("lesion", contours)}, **kw)
    [sample] = discover(tmp_path / "b").samples
    with pytest.raises(InputError, match="belongs to another series|drawn on another series") as exc:
        load_pair(sample)
    assert exc.value.path == sample.mask
    assert ("references 1 instance(s) that are not images of" in exc.value.reason) == (variant == "reference")
    # it names series b, the image's: b's slices may be missing, or it was drawn on a
    assert ("although it names that series" in exc.value.reason) == (variant == "reference")


def test_a_contour_on_no_slice_or_across_slices_is_refused(tmp_path):
    slices, _ = series(tmp_path)
    region = two_rectangles((4, 64, 64))[1]
    far = slice_contours(slices[3], region, ref=False, offset=2.0)  # 2 mm past the last slice: step 3 mm
    path = rtstruct(tmp_path / "masks" / "case.dcm", slices[0], {4: ("tumour", far)})
    sample = discover(tmp_path).samples[0]
    with pytest.raises(InputError, match=r"ROI 4 \('tumour'\) contour 1 at LPS \(.* mm lies on no slice") as exc:
        load_pair(sample)
    assert exc.value.path == path
    assert load_pair(sample, labels=[1])[1].sum() == 0  # an unselected ROI is not drawn

    misplaced = slice_contours(slices[2], region, ref=False)[0]  # on slice 2, but naming slice 1
    misplaced.ContourImageSequence = slice_contours(slices[1], region)[0].ContourImageSequence
    rtstruct(path, slices[0], {4: ("tumour", [misplaced])})
    with pytest.raises(InputError, match=r"lies 3 mm from slice 1 of .* the image it references"):
        load_pair(sample)

    tilted = slice_contours(slices[1], region)[0]
    pts = np.array(tilted.ContourData, float).reshape(-1, 3)
    pts[:, 0] += np.linspace(0, 4, len(pts))  # x is the sagittal normal: the points leave the plane
    tilted.ContourData = [round(float(v), 4) for v in pts.reshape(-1)]
    rtstruct(path, slices[0], {4: ("tumour", [tilted])})
    with pytest.raises(InputError, match="not in a plane parallel to the slices"):
        load_pair(sample)


def test_a_multiframe_image_by_frame_number_and_by_position(tmp_path):
    hd = pytest.importorskip("highdicom")
    slices = mr_series(3)
    for ds in slices:
        ds.PixelSpacing = list(SPACING)
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(slices, series_instance_uid=hd.UID(), series_number=5,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    image = tmp_path / "images" / "case.dcm"
    image.parent.mkdir(parents=True)
    enhanced.save_as(image, enforce_file_format=True)
    vol = read_image(image)
    assert vol.n_slices == 3 and vol.sources == (image,)
    header = pydicom.dcmread(image, stop_before_pixels=True)
    shared = header.SharedFunctionalGroupsSequence[0]
    iop = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == list(SPACING)
    mask = two_rectangles((3, 64, 64))
    for ref in (True, False):
        contours = []
        for k in (1, 2):
            ipp = header.PerFrameFunctionalGroupsSequence[k].PlanePositionSequence[0].ImagePositionPatient
            contours += [contour(patient_points(ipp, iop, SPACING, r, c), header if ref else None,
                                 frame=k + 1 if ref else None) for r, c in outlines(mask[k])]
        rtstruct(tmp_path / "masks" / "case.dcm", header, {1: ("lesion", contours)})
        assert np.array_equal(load_pair(discover(tmp_path).samples[0])[1], mask), ref


def test_a_single_file_image(tmp_path):
    [ds] = mr_series(1)
    ds.PixelSpacing = list(SPACING)
    image = tmp_path / "images" / "case.dcm"
    image.parent.mkdir(parents=True)
    ds.save_as(image, enforce_file_format=True)
    mask = two_rectangles((4, 64, 64))[1:2]
    rtstruct(tmp_path / "masks" / "case.dcm", ds, {1: ("lesion", slice_contours(ds, mask[0], ref=False))})
    assert np.array_equal(load_pair(discover(tmp_path).samples[0])[1], mask)


def test_check_dataset_and_the_cli(tmp_path):
    dataset_with_rtstruct(tmp_path)
    report = check_dataset(tmp_path)
    assert report.usable and report.valid_pairs == 1
    assert report.totals().slices == 4 and report.totals().foreground_slices == 2
    assert report.label_maps == []  # one ROI
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "USABLE" in result.output


def test_a_png_image_gets_no_rtstruct_and_other_dicom_is_no_mask(tmp_path):
    dataset_with_rtstruct(tmp_path / "src")
    root = tmp_path / "png"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cv2.imwrite(str(root / "images" / "case.png"), np.zeros((64, 64), np.uint8))
    (root / "masks" / "case.dcm").write_bytes((tmp_path / "src" / "masks" / "case.dcm").read_bytes())
    with pytest.raises(InputError, match="RT Structure Set mask needs a DICOM image"):
        load_pair(discover(root).samples[0])
    image_file = sorted((tmp_path / "src" / "images" / "case").iterdir())[0]
    (tmp_path / "src" / "masks" / "case.dcm").write_bytes(image_file.read_bytes())
    with pytest.raises(InputError, match=r"must be a DICOM Segmentation \(SEG\) or RT Structure Set \(RTSTRUCT\); "
                                         "this is a DICOM MR object"):
        load_pair(discover(tmp_path / "src").samples[0])


def test_pydicoms_real_rtstruct_counts_closed_rois_only_and_is_refused_on_another_series(tmp_path):
    """pydicom's ``rtstruct.dcm`` (a planning system's file: ROI 1 'patient' as closed contours, ROIs 2 and 3
    isocentres as POINTs, drawn on a CT series that is not here)."""
    from pydicom.data import get_testdata_file

    from hemseg.runtime.io.rtstruct_mask import rtstruct_roi_numbers

    real = Path(get_testdata_file("rtstruct.dcm"))
    assert rtstruct_roi_numbers(real) == [1]
    series(tmp_path)
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "case.dcm").write_bytes(real.read_bytes())
    [sample] = discover(tmp_path).samples
    with pytest.raises(InputError, match="belongs to another series") as exc:
        load_pair(sample)
    assert exc.value.path == sample.mask


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6, 0.95])
def test_a_cut_short_rtstruct_is_an_error_not_an_empty_mask(tmp_path, fraction):
    """pydicom reads a truncated file without complaint, dropping what is missing: the required sequences (or ROI
    numbers) then lack, and that is an error naming the file, never an empty mask."""
    dataset_with_rtstruct(tmp_path)
    path = tmp_path / "masks" / "case.dcm"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InputError, match="truncated or|not a DICOM Segmentation") as exc:
        load_pair(discover(tmp_path).samples[0])
    assert exc.value.path == path


def test_an_rtstruct_cut_inside_its_last_reference_is_called_truncated(tmp_path):
    """Cut in the middle of its last contour's ReferencedSOPInstanceUID, a Structure Set was said to reference
    instances that are not images of the series ('slices missing from the folder?'): users looked for slices."""
    import pydicom

    dataset_with_rtstruct(tmp_path)
    path = tmp_path / "masks" / "case.dcm"
    data = path.read_bytes()
    ds = pydicom.dcmread(path)
    last = str(ds.ROIContourSequence[-1].ContourSequence[-1].ContourImageSequence[-1].ReferencedSOPInstanceUID)
    at = data.rfind(last.encode())
    path.write_bytes(data[: at + len(last) // 2])
    with pytest.raises(InputError, match="truncated or incomplete") as exc:
        load_pair(discover(tmp_path).samples[0])
    assert "slices missing" not in exc.value.reason


def test_an_empty_or_text_mask_file_says_what_it_is(tmp_path):
    dataset_with_rtstruct(tmp_path)
    path = tmp_path / "masks" / "case.dcm"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"file is empty \(0 bytes\)"):
        load_pair(discover(tmp_path).samples[0])
    path.write_text("hello, not DICOM")
    with pytest.raises(InputError, match="neither a SOP Class UID nor a Modality"):
        load_pair(discover(tmp_path).samples[0])
