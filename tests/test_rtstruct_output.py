"""``hemseg predict --format dicom-rtstruct`` (``hemseg/runtime/io/rtstruct_writer.py``): an RT Structure Set per
DICOM input, read back with pydicom and with hemseg's own RTSTRUCT reader, checked against the NIfTI label map of
the same prediction, pixel for pixel. Model: tests/data/tiny_64.onnx (bright = lesion)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from dicom_series import mr_series, save_series  # noqa: E402

from hemseg.errors import InputError  # noqa: E402
from hemseg.runtime.io import read_image  # noqa: E402
from hemseg.runtime.io.rtstruct_mask import fill_polygon, read_rtstruct_mask_and_rois  # noqa: E402
from hemseg.runtime.io.rtstruct_writer import mask_polygons  # noqa: E402
from hemseg.runtime.predict import PredictOptions, run_predict  # noqa: E402

TINY = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"


def _area(polygon: np.ndarray) -> float:
    """Signed area (shoelace) of a (K, 2) polygon."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_polygons_give_back_random_masks_exactly():
    """Blobs with holes and islands, salt noise (single pixels, diagonal neighbours): the XOR of the polygons'
    fills, by the reader's rule, is the mask; the polygons run along pixel edges, so their areas (holes negative)
    add up to the mask's pixel count, what a planning system reports (contours through the boundary pixels' centres
    enclosed half a pixel less at every edge)."""
    rng = np.random.default_rng(0)
    for i in range(60):
        if i % 3:
            noise = cv2.GaussianBlur(rng.random((40, 52)).astype(np.float32), (0, 0), rng.uniform(0.6, 3.0))
            mask = (noise > rng.uniform(0.45, 0.55)).astype(np.uint8)
        else:
            mask = (rng.random((40, 52)) > 0.8).astype(np.uint8)
        got = np.zeros_like(mask)
        polygons = mask_polygons(mask)
        for polygon in polygons:
            assert len(polygon) >= 4 and np.all(polygon % 1 == 0.5)  # pixel corners
            got ^= fill_polygon(polygon, mask.shape)
        assert np.array_equal(got, mask), i
        assert sum(_area(p) for p in polygons) == pytest.approx(mask.sum()), i
    one = np.zeros((5, 5), np.uint8)
    one[2, 3] = 1
    [square] = mask_polygons(one)
    assert sorted(map(tuple, square.tolist())) == [(2.5, 1.5), (2.5, 2.5), (3.5, 1.5), (3.5, 2.5)]
    ring = np.zeros((30, 30), np.uint8)
    ring[5:25, 5:25] = 1
    ring[10:20, 10:20] = 0
    ring[14:16, 14:16] = 1  # an island in the hole
    assert len(mask_polygons(ring)) == 3


def test_predict_writes_a_structure_set_that_reads_back_as_the_mask(tmp_path):
    datasets = mr_series(5, dark=(0, 3))
    for ds in datasets:
        ds.PixelSpacing = [0.6, 0.9]  # anisotropic: a swapped row/column spacing would move the contours
    folder = save_series(datasets, tmp_path / "series", order=[2, 4, 0, 3, 1])
    res = run_predict(TINY, [str(folder)], PredictOptions(out_dir=tmp_path / "rt", fmt="dicom-rtstruct"))
    [report] = res.reports
    assert report.status == "ok", report.error
    assert report.outputs["mask"] == "series_rtstruct.dcm"
    rt = pydicom.dcmread(tmp_path / "rt" / "series_rtstruct.dcm")
    source = datasets[0]
    assert rt.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3" and rt.Modality == "RTSTRUCT"
    assert "OperatorsName" in rt and rt.OperatorsName == ""  # Type 2 of the RT Series Module: present, empty
    assert rt.StudyInstanceUID == source.StudyInstanceUID and rt.PatientID == source.PatientID
    assert rt.SeriesInstanceUID != source.SeriesInstanceUID
    [roi] = rt.StructureSetROISequence
    assert roi.ROIName == "hemangioma" and roi.ReferencedFrameOfReferenceUID == source.FrameOfReferenceUID
    refs = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in refs.ContourImageSequence} == {d.SOPInstanceUID for d in datasets}
    contoured = {c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in rt.ROIContourSequence[0].ContourSequence}
    assert contoured == {datasets[k].SOPInstanceUID for k in (1, 2, 4)}  # the black slices have no contour
    assert "model_sha256=" in rt.StructureSetDescription and "threshold=" in rt.StructureSetDescription
    assert "tta" not in rt.StructureSetDescription
    tta = run_predict(TINY, [str(folder)], PredictOptions(out_dir=tmp_path / "rt_tta", fmt="dicom-rtstruct", tta=True))
    assert tta.reports[0].status == "ok", tta.reports[0].error
    rt_tta = pydicom.dcmread(tmp_path / "rt_tta" / "series_rtstruct.dcm")
    assert "tta=flip" in rt_tta.StructureSetDescription  # a result of other settings says so, in a series of its own
    assert rt_tta.SeriesInstanceUID != rt.SeriesInstanceUID

    run_predict(TINY, [str(folder)], PredictOptions(out_dir=tmp_path / "nii", fmt="nifti"))
    nib = pytest.importorskip("nibabel")
    label = np.moveaxis(np.asarray(nib.load(tmp_path / "nii" / "series_mask.nii.gz").dataobj), 2, 0)
    assert label[[1, 2, 4]].sum() > 0
    back, rois = read_rtstruct_mask_and_rois(tmp_path / "rt" / "series_rtstruct.dcm", read_image(folder))
    assert rois.tolist() == [1]
    assert np.array_equal(back, label)  # pixel for pixel, in the reader's slice order
    # the contours' areas in mm (in each slice's plane) are the mask's: what a planning system reports
    by_uid = {d.SOPInstanceUID: d for d in datasets}
    areas: dict[str, float] = {}
    for c in rt.ROIContourSequence[0].ContourSequence:
        ds = by_uid[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
        rel = np.asarray(c.ContourData, float).reshape(-1, 3) - np.asarray(ds.ImagePositionPatient, float)
        iop = np.asarray(ds.ImageOrientationPatient, float)
        uid = ds.SOPInstanceUID
        areas[uid] = areas.get(uid, 0.0) + _area(np.stack([rel @ iop[:3], rel @ iop[3:]], axis=1))
    slice_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in read_image(folder).sources]
    expected = {slice_uids[k]: float(back[k].sum()) * 0.6 * 0.9 for k in range(len(back)) if back[k].any()}
    assert areas == pytest.approx(expected, rel=1e-4)


def test_the_patient_and_study_modules_are_copied_as_for_a_seg(tmp_path):
    """QA, stop 57: the structure set copied a fixed short list (name, ID, birth date, sex, study date ...): the
    issuer of the Patient ID, the de-identification flags, the age and weight, which the SEG keeps, were lost."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    datasets = mr_series(3)
    for ds in datasets:
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Müller^Jürgen"
        ds.IssuerOfPatientID, ds.PatientAge, ds.PatientWeight = "HÔPITAL_A", "045Y", 71.5
        ds.PatientIdentityRemoved, ds.DeidentificationMethod = "YES", "Basic Profile"
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID = "777", "Clinique Général", "TEXT"
        ds.OtherPatientIDsSequence = Sequence([other])
        ds.ClinicalTrialSubjectID = "S-01"
    folder = save_series(datasets, tmp_path / "series")
    [report] = run_predict(TINY, [str(folder)], PredictOptions(out_dir=tmp_path / "rt", fmt="dicom-rtstruct")).reports
    assert report.status == "ok", report.error
    rt = pydicom.dcmread(tmp_path / "rt" / "series_rtstruct.dcm")
    assert rt.IssuerOfPatientID == "HÔPITAL_A" and rt.PatientAge == "045Y" and float(rt.PatientWeight) == 71.5
    assert rt.PatientIdentityRemoved == "YES" and rt.DeidentificationMethod == "Basic Profile"
    assert rt.ClinicalTrialSubjectID == "S-01" and str(rt.PatientName) == "Müller^Jürgen"
    assert rt.OtherPatientIDsSequence[0].IssuerOfPatientID == "Clinique Général"  # decoded, written as UTF-8


def test_an_empty_prediction_gives_the_roi_without_contours(tmp_path):
    folder = save_series(mr_series(3, dark=(0, 1, 2)), tmp_path / "dark")
    [report] = run_predict(TINY, [str(folder)], PredictOptions(out_dir=tmp_path / "o", fmt="dicom-rtstruct")).reports
    assert report.status == "ok"
    rt = pydicom.dcmread(tmp_path / "o" / "dark_rtstruct.dcm")
    assert len(rt.StructureSetROISequence) == 1 and "ContourSequence" not in rt.ROIContourSequence[0]
    back, rois = read_rtstruct_mask_and_rois(tmp_path / "o" / "dark_rtstruct.dcm", read_image(folder))
    assert back.sum() == 0 and rois.tolist() == []


def test_non_dicom_inputs_are_refused_one_line(tmp_path):
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.full((64, 64), 200, np.uint8))
    res = run_predict(TINY, [str(png)], PredictOptions(out_dir=tmp_path / "o", fmt="dicom-rtstruct"))
    [report] = res.reports
    assert report.status == "error" and "--format dicom-rtstruct needs DICOM inputs" in report.error
    assert not list((tmp_path / "o").glob("*.dcm"))
    with pytest.raises(InputError):
        from hemseg.runtime.io.rtstruct_writer import build_rtstruct

        build_rtstruct(np.zeros((1, 64, 64), np.uint8), read_image(png), None)


def test_a_multiframe_input_references_frames(tmp_path):
    hd = pytest.importorskip("highdicom")
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(mr_series(4, dark=(1,)), series_instance_uid=hd.UID(),
                                                         series_number=5, sop_instance_uid=hd.UID(), instance_number=1)
    path = tmp_path / "enh.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    [report] = run_predict(TINY, [str(path)], PredictOptions(out_dir=tmp_path / "rt", fmt="dicom-rtstruct")).reports
    assert report.status == "ok", report.error
    rt = pydicom.dcmread(tmp_path / "rt" / "enh_rtstruct.dcm")
    frames = {int(c.ContourImageSequence[0].ReferencedFrameNumber) for c in rt.ROIContourSequence[0].ContourSequence}
    run_predict(TINY, [str(path)], PredictOptions(out_dir=tmp_path / "nii", fmt="nifti"))
    nib = pytest.importorskip("nibabel")
    label = np.moveaxis(np.asarray(nib.load(tmp_path / "nii" / "enh_mask.nii.gz").dataobj), 2, 0)
    assert len(frames) == 3 and frames == {k + 1 for k in range(4) if label[k].any()}  # one frame is black
    back, _ = read_rtstruct_mask_and_rois(tmp_path / "rt" / "enh_rtstruct.dcm", read_image(path))
    assert np.array_equal(back, label)
