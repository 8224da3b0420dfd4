"""``hemseg predict --format dicom-seg|auto``: binary DICOM SEGs read back with pydicom and highdicom, checked
against their sources (references, Frame of Reference, geometry, segment codes, algorithm, pixels).

Model: tests/data/tiny_64.onnx (bright = lesion). Sources: pydicom's MR_small*.dcm test files and small MR series
built in tmp_path (tests/dicom_series.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from click.testing import CliRunner  # noqa: E402
from dicom_series import MR_SMALL, SAGITTAL, mr_series, save_series  # noqa: E402

from hemseg.cli import main  # noqa: E402
from hemseg.errors import DependencyError, InputError  # noqa: E402
from hemseg.runtime.io import read_image  # noqa: E402
from hemseg.runtime.io.dicom_seg import AlgorithmInfo, build_dicom_seg, seg_series_uid  # noqa: E402
from hemseg.runtime.io.hashing import sha256_file  # noqa: E402
from hemseg.runtime.predict import PredictOptions, run_predict  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
TINY = DATA / "tiny_64.onnx"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def predict(inputs, out: Path, fmt: str = "dicom-seg", **kw):
    res = run_predict(TINY, [str(p) for p in inputs], PredictOptions(out_dir=out, fmt=fmt, **kw))
    return res


def seg_frames(seg) -> list[dict]:
    """Per SEG frame: referenced source SOP instance (+ frame number), position, segment number, pixels."""
    pixels = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    shared = seg.SharedFunctionalGroupsSequence[0]
    out = []
    for item, frame in zip(seg.PerFrameFunctionalGroupsSequence, pixels):
        src = item.DerivationImageSequence[0].SourceImageSequence[0]
        ident = item if "SegmentIdentificationSequence" in item else shared  # one segment: in the shared group
        out.append({
            "sop": src.ReferencedSOPInstanceUID,
            "frame": int(src.ReferencedFrameNumber) if "ReferencedFrameNumber" in src else None,
            "ipp": [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            "segment": int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
            "pixels": np.asarray(frame),
        })
    return out


def check_common(seg, source, model_sha):
    """What every SEG of one source series must say."""
    assert seg.SOPClassUID == SEG_STORAGE and seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.PatientID == source.PatientID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.Rows == source.Rows and seg.Columns == source.Columns
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == \
        pytest.approx([float(v) for v in source.PixelSpacing])
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
        pytest.approx([float(v) for v in source.ImageOrientationPatient])
    [segment] = seg.SegmentSequence
    assert segment.SegmentNumber == 1 and segment.SegmentLabel == "hemangioma"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    prop = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
    assert (prop.CodeValue, prop.CodingSchemeDesignator, prop.CodeMeaning) == ("400210000", "SCT", "Hemangioma")
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "hemseg" and algo.AlgorithmVersion
    assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert f"model_sha256={model_sha}" in algo.AlgorithmParameters
    assert "tiny_64.onnx" in algo.AlgorithmSource
    assert seg.Manufacturer == "hemseg" and seg.DeviceSerialNumber == model_sha[:16]


# -- a single MR file -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_single_mr_file_gives_a_seg_with_its_references_and_geometry(tmp_path, name):
    path = PYDICOM_FILES / name
    if not path.is_file():
        pytest.skip(f"pydicom test file {name} not installed")
    res = predict([path], tmp_path / "seg")
    [report] = res.reports
    if report.status != "ok" and "decoder" in (report.error or ""):
        pytest.skip(f"no decoder for {name} here")
    assert report.status == "ok", report.error
    stem = name[:-4]
    assert report.outputs["mask"] == f"{stem}_seg.dcm"
    source = pydicom.dcmread(path)
    seg = hd.seg.segread(tmp_path / "seg" / f"{stem}_seg.dcm")
    check_common(seg, source, sha256_file(TINY))
    assert str(seg.SOPInstanceUID) == report.stats["seg_sop_instance_uid"]
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == source.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence] == [source.SOPInstanceUID]
    [frame] = seg_frames(seg)
    assert frame["sop"] == source.SOPInstanceUID and frame["segment"] == 1
    assert frame["ipp"] == pytest.approx([float(v) for v in source.ImagePositionPatient])
    # the pixels are the mask `--format png` writes for the same input
    predict([path], tmp_path / "png", fmt="png")
    png = cv2.imread(str(tmp_path / "png" / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    assert png.any() and np.array_equal(frame["pixels"], (png > 0).astype(np.uint8))
    # highdicom's own reader maps it back to the source instance
    by_source = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    assert np.array_equal(by_source[0, :, :, 0], frame["pixels"])


def test_a_source_whose_anonymizer_deleted_type2_attributes_gets_a_seg_with_them_empty(tmp_path):
    """Anonymizers often delete Patient / Study attributes of Type 2 instead of emptying them, and some files lack
    SliceThickness: highdicom failed on each ("'FileDataset' object has no attribute 'PatientBirthDate'")."""
    ds = pydicom.dcmread(MR_SMALL)
    deleted = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyTime")
    for keyword in deleted:
        del ds[keyword]
    path = tmp_path / "anon.dcm"
    ds.save_as(path)
    before = path.read_bytes()
    [report] = predict([path], tmp_path / "seg").reports
    assert report.status == "ok", report.error
    seg = pydicom.dcmread(tmp_path / "seg" / "anon_seg.dcm")
    for keyword in deleted:
        assert keyword in seg and seg[keyword].value in ("", None), keyword
    assert path.read_bytes() == before  # the source is not touched
    hd.seg.segread(tmp_path / "seg" / "anon_seg.dcm")  # a SEG highdicom reads back


@pytest.mark.parametrize("attrs, expected", [
    ({"PatientSex": "U"}, {"PatientSex": ""}),
    ({"PatientSex": "female"}, {"PatientSex": "F"}),
    ({"StudyTime": "18:50:59"}, {"StudyTime": "185059"}),  # ACR-NEMA forms
    ({"PatientBirthDate": "1980-01-01"}, {"PatientBirthDate": "19800101"}),
    ({"StudyDate": "2004"}, {"StudyDate": ""}),
    ({"StudyDate": "2020.03.04"}, {"StudyDate": "20200304"}),  # pydicom's parser takes it, the standard does not
    ({"PatientName": ["A^B", "C^D"]}, {"PatientName": "A^B"}),
    ({"SpecificCharacterSet": ["", "ISO 2022 IR 87"], "PatientName": "Yamada^Tarou=山田^太郎"},
     {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "Yamada^Tarou=山田^太郎"}),
])
def test_patient_and_study_values_a_seg_cannot_carry_are_made_conformant(tmp_path, attrs, expected):
    """Values scanners and old archives write but the standard does not allow (highdicom refused each: exit 2, no
    mask at all under --format auto, and hemseg serve failed the series)."""
    ds = pydicom.dcmread(MR_SMALL)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    path = tmp_path / "odd.dcm"
    ds.save_as(path)
    for fmt, name in (("auto", "odd_seg.dcm"), ("dicom-rtstruct", "odd_rtstruct.dcm")):
        [report] = predict([path], tmp_path / fmt, fmt=fmt).reports
        assert report.status == "ok", report.error
        out = pydicom.dcmread(tmp_path / fmt / name)
        for keyword, value in expected.items():
            assert str(out.get(keyword) or "") == value, (fmt, keyword)


def test_an_anonymized_one_word_patient_name_gives_no_library_warning(tmp_path):
    """PatientName 'PAT1' (an anonymizer's): pydicom warned, in a long UserWarning naming no file, that it is
    'unlikely to represent the intended person name' as the SEG copied it; the name is kept, without the noise."""
    import warnings

    ds = pydicom.dcmread(MR_SMALL)
    ds.PatientName = "PAT1"
    ds.save_as(tmp_path / "anon.dcm")
    vol = read_image(tmp_path / "anon.dcm")
    mask = np.zeros(vol.data.shape, np.uint8)
    mask[0, 10:20, 10:20] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = build_dicom_seg(mask, vol, AlgorithmInfo(model_name="m.onnx", model_sha256="0" * 64))
    assert str(seg.PatientName) == "PAT1"
    assert not [w for w in caught if "person name" in str(w.message)], [str(w.message) for w in caught]


def test_values_over_their_vr_length_are_copied_as_they_are_with_one_warning_naming_the_source(tmp_path):
    """An anonymizer's 80-character Patient ID, a 30-character Accession Number: pydicom printed one unnamed
    'The value length (80) exceeds ...' line per value on reading (no file, nothing about what is done with it), and
    the SEG / RTSTRUCT carried them without a word. Now the command line keeps pydicom's checks to -v, and hemseg
    warns once per output, naming the source and the values, copied as they are (the SEG is filed with its source
    by them)."""
    ds = pydicom.dcmread(MR_SMALL)
    ds.PatientID = "X" * 80
    ds.AccessionNumber = "A" * 30
    ds.PatientName = "B" * 70  # a person name: 64 per component group, checked by pydicom in words of its own
    path = tmp_path / "long.dcm"
    ds.save_as(path)
    for fmt, name in (("dicom-seg", "long_seg.dcm"), ("dicom-rtstruct", "long_rtstruct.dcm"), ("png", None)):
        res = CliRunner().invoke(main, ["predict", str(TINY), str(path), "--out", str(tmp_path / fmt), "--format",
                                        fmt, "--workers", "0"])
        assert res.exit_code == 0, res.output
        assert "value length" not in res.output and "component length" not in res.output, res.output
        named = [line for line in res.output.splitlines() if "longer than the standard allows" in line]
        if name is None:  # nothing copied: nothing to say
            assert not named, res.output
            continue
        assert len(named) == 1 and str(path) in named[0], res.output
        assert "PatientID (LO) of 80 characters, 64 allowed" in named[0]
        assert "AccessionNumber (SH) of 30 characters, 16 allowed" in named[0]
        assert "PatientName (PN) of 70 characters, 64 allowed per component group" in named[0]
        out = pydicom.dcmread(tmp_path / fmt / name)
        assert (out.PatientID, out.AccessionNumber, out.PatientName) == (ds.PatientID, ds.AccessionNumber,
                                                                         ds.PatientName)
    res = CliRunner().invoke(main, ["-v", "predict", str(TINY), str(path), "--out", str(tmp_path / "v")])
    assert "The value length (80) exceeds the maximum length of 64 allowed for VR LO" in res.output


def test_frames_a_seg_cannot_place_get_a_plain_mask_under_auto(tmp_path):
    """A multi-frame file with two frames at one position (multi-echo), or a frame without a position: highdicom
    refused the SEG and --format auto failed the input instead of writing the mask it can carry."""
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(mr_series(3), series_instance_uid=hd.UID(), series_number=5,
                                                         sop_instance_uid=hd.UID(), instance_number=1)
    groups = enhanced.PerFrameFunctionalGroupsSequence
    groups[1].PlanePositionSequence[0].ImagePositionPatient = groups[0].PlanePositionSequence[0].ImagePositionPatient
    enhanced.save_as(tmp_path / "echoes.dcm", enforce_file_format=True)
    del groups[1].PlanePositionSequence
    enhanced.save_as(tmp_path / "unplaced.dcm", enforce_file_format=True)
    res = predict([tmp_path / "echoes.dcm", tmp_path / "unplaced.dcm"], tmp_path / "auto", fmt="auto")
    for report, why in zip(res.reports, ("Plane positions must not contain duplicates",
                                         "lacks ImagePositionPatient of frame 2")):
        assert report.status == "ok", report.error
        assert report.outputs["mask"].endswith("_mask.nii.gz") and why in report.stats["dicom_seg_skipped"]
    assert not list((tmp_path / "auto").glob("*_seg.dcm"))
    [report] = predict([tmp_path / "echoes.dcm"], tmp_path / "seg", fmt="dicom-seg").reports
    assert report.status == "error" and "Plane positions must not contain duplicates" in report.error


def test_a_single_slice_seg_states_no_spacing_between_slices_its_source_does_not(tmp_path):
    """highdicom gave a lone slice a SpacingBetweenSlices of 1.0 mm; MR_small states a thickness of 0.8 mm only."""
    [report] = predict([MR_SMALL], tmp_path / "seg").reports
    assert report.status == "ok", report.error
    measures = pydicom.dcmread(tmp_path / "seg" / "MR_small_seg.dcm").SharedFunctionalGroupsSequence[0]\
        .PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(float(pydicom.dcmread(MR_SMALL).SliceThickness))
    assert "SpacingBetweenSlices" not in measures
    ds = pydicom.dcmread(MR_SMALL)
    ds.SpacingBetweenSlices = "2.5"  # stated: kept
    ds.save_as(tmp_path / "spaced.dcm")
    predict([tmp_path / "spaced.dcm"], tmp_path / "seg2")
    measures = pydicom.dcmread(tmp_path / "seg2" / "spaced_seg.dcm").SharedFunctionalGroupsSequence[0]\
        .PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == 2.5
    seg = hd.seg.segread(tmp_path / "seg" / "MR_small_seg.dcm")  # still a SEG highdicom reads
    assert seg.number_of_segments == 1


@pytest.mark.parametrize("thickness", [None, ""])
def test_a_source_without_slice_thickness_gets_no_seg_highdicom_could_not_read(tmp_path, thickness):
    """A SEG made of it had Pixel Measures without SliceThickness, which highdicom's own reader refuses ("does not
    have the required attributes for a Pixel Measures Sequence"): predict wrote an unreadable SEG, exit 0. A
    series' SEG now records the spacing its positions give (readable); a single slice, which has none, gets none."""
    hd = pytest.importorskip("highdicom")
    datasets = mr_series(2)
    for ds in datasets:
        if thickness is None:
            del ds.SliceThickness
        else:
            ds.SliceThickness = thickness
    folder = save_series(datasets, tmp_path / "thin")
    [report] = predict([folder], tmp_path / "auto", fmt="auto").reports
    assert report.status == "ok" and report.outputs["mask"] == "thin_seg.dcm"
    assert hd.seg.segread(tmp_path / "auto" / "thin_seg.dcm").number_of_frames >= 1  # highdicom reads it
    single = save_series(datasets[:1], tmp_path / "single")
    [report] = predict([single], tmp_path / "auto1", fmt="auto").reports
    assert report.status == "ok" and report.outputs["mask"] == "single_mask.nii.gz"
    assert "SliceThickness" in report.stats["dicom_seg_skipped"]
    [report] = predict([single], tmp_path / "seg", fmt="dicom-seg").reports
    assert report.status == "error" and "lacks SliceThickness" in report.error
    [report] = predict([single], tmp_path / "rt", fmt="dicom-rtstruct").reports  # contours need no thickness
    assert report.status == "ok", report.error


def test_a_single_slice_without_thickness_has_an_area_but_no_volume(tmp_path):
    """The reader's 1 mm stand-in for a lone slice's extent made the volume equal the area, without a word."""
    ds = pydicom.dcmread(MR_SMALL)
    del ds.SliceThickness
    ds.save_as(tmp_path / "thin.dcm")
    [thin, thick] = predict([tmp_path / "thin.dcm", MR_SMALL], tmp_path / "o", fmt="nifti").reports
    assert thin.status == "ok" and thick.status == "ok"
    assert thin.stats["lesion_area_mm2"] > 0 and thin.stats["lesion_volume_mm3"] is None
    assert any("slice thickness is not given" in w for w in thin.stats["warnings"])
    thickness = float(pydicom.dcmread(MR_SMALL).SliceThickness)
    assert thick.stats["lesion_volume_mm3"] == pytest.approx(thick.stats["lesion_area_mm2"] * thickness)
    assert not thick.stats["warnings"]


def test_default_format_auto_gives_a_seg_for_dicom_and_png_for_png(tmp_path):
    png = tmp_path / "in" / "img.png"
    png.parent.mkdir()
    cv2.imwrite(str(png), cv2.circle(np.full((64, 64), 20, np.uint8), (32, 32), 10, 230, -1))
    res = CliRunner().invoke(main, ["predict", str(TINY), str(MR_SMALL), str(png), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "MR_small_seg.dcm").is_file() and (tmp_path / "o" / "img_mask.png").is_file()
    assert not (tmp_path / "o" / "MR_small_mask.png").exists()


def test_dicom_seg_refuses_non_dicom_inputs_one_line(tmp_path):
    png = tmp_path / "img.png"
    cv2.imwrite(str(png), np.full((32, 32), 100, np.uint8))
    res = predict([png, MR_SMALL], tmp_path / "o")
    bad, good = res.reports
    assert bad.status == "error" and "needs DICOM inputs" in bad.error and "\n" not in bad.error
    assert good.status == "ok" and (tmp_path / "o" / "MR_small_seg.dcm").is_file()
    assert res.exit_code == 2


# -- a multi-slice series ----------------------------------------------------------------------------------------
@pytest.fixture
def series(tmp_path):
    """5 sagittal slices, files named against slice order, slices 0 and 3 black (no lesion there)."""
    datasets = mr_series(5, dark=(0, 3))
    return save_series(datasets, tmp_path / "series", order=[2, 4, 0, 3, 1]), datasets


def test_series_seg_references_every_source_and_omits_empty_frames(tmp_path, series):
    folder, datasets = series
    res = predict([folder], tmp_path / "seg", save_prob=True)
    [report] = res.reports
    assert report.status == "ok", report.error
    seg = hd.seg.segread(tmp_path / "seg" / "series_seg.dcm")
    check_common(seg, datasets[0], sha256_file(TINY))
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert sorted(i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence) == \
        sorted(d.SOPInstanceUID for d in datasets)
    frames = seg_frames(seg)
    by_uid = {d.SOPInstanceUID: k for k, d in enumerate(datasets)}
    # empty slices (0 and 3) are not encoded; every other slice has one frame at its source's position
    assert sorted(by_uid[f["sop"]] for f in frames) == [1, 2, 4]
    for f in frames:
        src = datasets[by_uid[f["sop"]]]
        assert f["ipp"] == pytest.approx([float(v) for v in src.ImagePositionPatient])
    # pixels equal the NIfTI label map of the same series (slice k = array[..., k] in the reader's order)
    predict([folder], tmp_path / "nii", fmt="nifti")
    nib = pytest.importorskip("nibabel")
    label = np.asarray(nib.load(tmp_path / "nii" / "series_mask.nii.gz").dataobj)
    for f in frames:
        assert np.array_equal(f["pixels"], label[..., by_uid[f["sop"]]])
    assert label[..., 0].sum() == 0 and label[..., 3].sum() == 0
    # highdicom: missing frames are the empty ones
    stack = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in datasets], segment_numbers=[1],
                                              assert_missing_frames_are_empty=True)[..., 0]
    assert np.array_equal(stack, np.moveaxis(label, 2, 0))
    assert np.load(tmp_path / "seg" / "series_prob.npy").shape == (5, 64, 64)  # (N, H, W), slice order
    # the SEG's volume geometry (highdicom, LPS, axes slice/row/column) is the source series' (hemseg's reader,
    # RAS, axes row/column/slice): same row and column vectors, same slice positions
    ours = np.diag([-1.0, -1.0, 1.0, 1.0]) @ read_image(folder).affine
    geometry = seg.get_volume_geometry()
    assert geometry is not None
    theirs = np.asarray(geometry.affine)
    assert theirs[:3, 1] == pytest.approx(ours[:3, 0]) and theirs[:3, 2] == pytest.approx(ours[:3, 1])
    n = geometry.spatial_shape[0]  # from the first to the last encoded frame: slices 1..4
    positions = {tuple(np.round(theirs[:3, 3] + k * theirs[:3, 0], 3)) for k in range(n)}
    assert n == 4 and positions == {tuple(np.round(ours[:3, 3] + k * ours[:3, 2], 3)) for k in range(1, 5)}


def test_all_empty_series_keeps_every_frame(tmp_path):
    datasets = mr_series(3, dark=(0, 1, 2))
    folder = save_series(datasets, tmp_path / "dark")
    [report] = predict([folder], tmp_path / "o").reports
    assert report.status == "ok" and report.stats["lesion_area_px"] == 0
    seg = hd.seg.segread(tmp_path / "o" / "dark_seg.dcm")
    frames = seg_frames(seg)
    assert len(frames) == 3 and not any(f["pixels"].any() for f in frames)
    assert {f["sop"] for f in frames} == {d.SOPInstanceUID for d in datasets}


def test_multiframe_enhanced_source_references_frames(tmp_path):
    datasets = mr_series(3, dark=(1,), iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    for d in datasets:  # the legacy converter wants explicit VR data sets
        d.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(datasets, series_instance_uid=hd.UID(), series_number=7,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    [report] = predict([path], tmp_path / "o").reports
    assert report.status == "ok", report.error
    seg = hd.seg.segread(tmp_path / "o" / "enhanced_seg.dcm")
    frames = seg_frames(seg)
    assert {f["sop"] for f in frames} == {enhanced.SOPInstanceUID}
    assert sorted(f["frame"] for f in frames) == [1, 3]  # frame 2 is black: omitted
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID


def _enhanced(tmp_path, name="enhanced.dcm", per_frame=("PlaneOrientationSequence",), tilt_frame=None):
    """An enhanced MR of three frames with the given macros moved from the shared into the per-frame functional
    groups (as Philips scanners write them); ``tilt_frame``: that frame gets another orientation."""
    import copy

    datasets = mr_series(3, dark=(1,), iop=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))  # sagittal
    for d in datasets:
        d.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(datasets, series_instance_uid=hd.UID(), series_number=7,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    shared = enhanced.SharedFunctionalGroupsSequence[0]
    for macro in per_frame:
        for group in enhanced.PerFrameFunctionalGroupsSequence:
            setattr(group, macro, copy.deepcopy(shared[macro].value))
        delattr(shared, macro)
    if tilt_frame is not None:
        item = enhanced.PerFrameFunctionalGroupsSequence[tilt_frame].PlaneOrientationSequence[0]
        item.ImageOrientationPatient = [0.0, 0.9, 0.43589, 0.0, -0.43589, 0.9]
    path = tmp_path / name
    enhanced.save_as(path)
    return path, datasets


@pytest.mark.parametrize("per_frame", [("PlaneOrientationSequence",),
                                       ("PlaneOrientationSequence", "PixelMeasuresSequence")])
def test_enhanced_source_with_per_frame_geometry_gives_its_affine_and_a_seg(tmp_path, per_frame):
    """Orientation and pixel spacing given per frame (the standard allows either place) are the file's geometry:
    the NIfTI affine is the same as with the shared macros, and the SEG is built (highdicom wants them shared)."""
    nib = pytest.importorskip("nibabel")
    shared_path, datasets = _enhanced(tmp_path, "shared.dcm", per_frame=())
    path, _ = _enhanced(tmp_path, "perframe.dcm", per_frame=per_frame)
    expected = read_image(shared_path).affine
    assert expected is not None and np.allclose(read_image(path).affine, expected)
    assert read_image(path).spacing == read_image(shared_path).spacing
    res = predict([path], tmp_path / "o", fmt="auto")
    assert res.reports[0].status == "ok", res.reports[0].error
    seg = hd.seg.segread(tmp_path / "o" / "perframe_seg.dcm")
    iop = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose([float(v) for v in iop], datasets[0].ImageOrientationPatient)
    assert sorted(f["frame"] for f in seg_frames(seg)) == [1, 3]
    predict([path], tmp_path / "n", fmt="nifti")
    assert np.allclose(nib.load(tmp_path / "n" / "perframe_mask.nii.gz").affine, expected, atol=1e-4)


def test_enhanced_source_whose_frames_differ_in_orientation_is_refused_in_one_line(tmp_path):
    path, _ = _enhanced(tmp_path, tilt_frame=2)
    with pytest.raises(InputError) as exc:
        read_image(path)
    assert "frames differ in orientation" in exc.value.reason and "\n" not in str(exc.value)
    res = predict([path], tmp_path / "o", fmt="nifti")
    assert res.reports[0].status == "error" and "frames differ" in res.reports[0].error


@pytest.mark.parametrize("drop", ["PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient"])
def test_dicom_without_the_geometry_a_seg_copies_gets_a_plain_mask_under_auto(tmp_path, drop):
    """A SEG copies its source's geometry: without it ``auto`` writes a PNG mask (as for a missing Frame of
    Reference) and ``--format dicom-seg`` fails the input with a one-line reason naming the attribute."""
    ds = pydicom.dcmread(MR_SMALL)
    delattr(ds, drop)
    ds.save_as(tmp_path / "nogeo.dcm")
    res = predict([tmp_path / "nogeo.dcm"], tmp_path / "auto", fmt="auto")
    assert res.reports[0].status == "ok" and (tmp_path / "auto" / "nogeo_mask.png").is_file()
    assert f"lacks {drop}" in res.reports[0].stats["dicom_seg_skipped"]
    # an input with a warning, in its warnings and the totals, as the log says (it counted as none: stop 52)
    assert any(w.startswith("no DICOM SEG: the input lacks") and w.endswith("wrote nogeo_mask.png instead")
               for w in res.reports[0].stats["warnings"])
    totals = json.loads((tmp_path / "auto" / "summary.json").read_text())["totals"]
    assert totals["inputs_with_warning"] == 1
    res = predict([tmp_path / "nogeo.dcm"], tmp_path / "seg", fmt="dicom-seg")
    assert res.reports[0].status == "error" and f"lacks {drop}, which a DICOM SEG needs" in res.reports[0].error
    res = predict([tmp_path / "nogeo.dcm"], tmp_path / "rt", fmt="dicom-rtstruct")
    assert res.reports[0].status == "error" and f"lacks {drop}, which an RT Structure Set needs" in res.reports[0].error


def _unusable_geometry(tmp_path, case: str) -> Path:
    ds = pydicom.dcmread(MR_SMALL)
    if case == "one-value-spacing":
        ds.PixelSpacing = [0.3125]
    elif case == "zero-orientation":
        ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
    elif case == "scaled-orientation":
        ds.ImageOrientationPatient = [2, 0, 0, 0, 2, 0]
    elif case == "multiframe-top-level-geometry":  # positions only at the top level: no frame can be placed
        frame = ds.pixel_array
        ds.NumberOfFrames = 3
        ds.PixelData = np.stack([frame] * 3).tobytes()
    ds.save_as(tmp_path / f"{case}.dcm")
    return tmp_path / f"{case}.dcm"


@pytest.mark.parametrize("case, lacks", [("one-value-spacing", "PixelSpacing"),
                                         ("zero-orientation", "ImageOrientationPatient"),
                                         ("scaled-orientation", "ImageOrientationPatient"),
                                         ("multiframe-top-level-geometry", "PerFrameFunctionalGroupsSequence")])
def test_geometry_a_seg_cannot_use_gets_a_plain_mask_under_auto(tmp_path, case, lacks):
    """Attributes present but unusable: auto built the SEG anyway and failed the input after segmenting it ('DSfloat'
    object is not iterable; number of plane positions does not match), the mask lost; a zero or scaled orientation
    was copied into the SEG, and a scaled one made the voxel 16 times too large."""
    path = _unusable_geometry(tmp_path, case)
    res = predict([path], tmp_path / "auto", fmt="auto")
    report = res.reports[0]
    assert report.status == "ok", report.error
    assert f"lacks {lacks}" in report.stats["dicom_seg_skipped"]
    assert "absent, or holding a value that cannot be used" in report.stats["dicom_seg_skipped"]
    assert [p.name for p in (tmp_path / "auto").glob(f"{case}_mask.*")]
    res = predict([path], tmp_path / "seg", fmt="dicom-seg")
    assert res.reports[0].status == "error" and f"lacks {lacks}, which a DICOM SEG needs" in res.reports[0].error
    assert "absent, or holding a value that cannot be used" in res.reports[0].error  # an invalid value is 'lacked' too
    if "orientation" in case:  # no plane: no geometry, so no volume (it was 0.0, or 16 times too large)
        assert read_image(path).affine is None and report.stats["lesion_volume_mm3"] is None


# -- refusals and dependencies -----------------------------------------------------------------------------------
@pytest.mark.parametrize("drop, fragment", [(("FrameOfReferenceUID",), "lacks FrameOfReferenceUID"),
                                            (("StudyInstanceUID",), "lacks StudyInstanceUID"),
                                            ((), "cannot build a DICOM SEG")])
def test_dicom_lacking_what_a_seg_needs_is_a_one_line_input_error(tmp_path, drop, fragment, monkeypatch):
    if not drop:  # what highdicom refuses besides: its message, on one line
        def refuse(*args, **kwargs):
            raise AttributeError("'FileDataset' object has no attribute\n'Something'")

        monkeypatch.setattr(hd.seg, "Segmentation", refuse)
    ds = pydicom.dcmread(MR_SMALL)
    for keyword in drop:
        delattr(ds, keyword)
    ds.save_as(tmp_path / "lacking.dcm")
    vol = read_image(tmp_path / "lacking.dcm")
    info = AlgorithmInfo(model_name="m.onnx", model_sha256="0" * 64)
    with pytest.raises(InputError) as exc:
        build_dicom_seg(np.ones((1, 64, 64), np.uint8), vol, info)
    assert "\n" not in str(exc.value) and fragment in exc.value.reason


def test_auto_writes_a_plain_mask_for_dicom_a_seg_cannot_reference_and_dicom_seg_insists(tmp_path, caplog):
    """``--format auto`` chooses: an image without a Frame of Reference (secondary captures, anonymized exports)
    gets a PNG mask and a warning; ``--format dicom-seg`` asked for a SEG and fails that input."""
    ds = pydicom.dcmread(MR_SMALL)
    del ds.FrameOfReferenceUID
    ds.save_as(tmp_path / "nofor.dcm")
    with caplog.at_level("WARNING", logger="hemseg"):
        res = predict([tmp_path / "nofor.dcm", MR_SMALL], tmp_path / "auto", fmt="auto")
    lacking, good = res.reports
    assert res.exit_code == 0 and lacking.status == "ok" and good.status == "ok"
    assert (tmp_path / "auto" / "nofor_mask.png").is_file() and not (tmp_path / "auto" / "nofor_seg.dcm").exists()
    assert (tmp_path / "auto" / "MR_small_seg.dcm").is_file()
    assert "lacks FrameOfReferenceUID" in lacking.stats["dicom_seg_skipped"]
    assert any("no DICOM SEG" in r.getMessage() and "nofor" in r.getMessage() for r in caplog.records)
    res = predict([tmp_path / "nofor.dcm"], tmp_path / "seg", fmt="dicom-seg")
    assert res.exit_code == 2 and "lacks FrameOfReferenceUID" in res.reports[0].error
    assert not any((tmp_path / "seg").glob("nofor_*"))


def test_auto_reads_each_source_header_once_for_the_seg(tmp_path, series, monkeypatch):
    """``--format auto`` checks the references and builds the SEG from one header read per source file (the
    pixel reads of the volume itself are not header reads)."""
    folder, datasets = series
    header_reads = []
    real = pydicom.dcmread

    def counting(path, *args, **kwargs):
        if kwargs.get("stop_before_pixels"):
            header_reads.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    res = predict([folder], tmp_path / "auto", fmt="auto")
    assert res.exit_code == 0 and res.reports[0].outputs["mask"] == "series_seg.dcm"
    assert sorted(header_reads) == sorted(p.name for p in folder.glob("*.dcm"))


def test_a_seg_or_rtstruct_written_again_over_its_earlier_one_is_numbered_after_it(tmp_path):
    """Every re-segmentation of a series (a re-run into the same folder, hemseg serve segmenting a changed series
    again) was instance 1 of the same SEG series: a PACS held several SEGs numbered 1 and a viewer could not tell
    the latest. Now the new object takes the replaced one's InstanceNumber + 1; another model's or another input's
    earlier file does not count."""
    out = tmp_path / "o"
    for fmt, name in (("dicom-seg", "MR_small_seg.dcm"), ("dicom-rtstruct", "MR_small_rtstruct.dcm")):
        numbers, uids = [], set()
        for _ in range(3):
            [report] = predict([MR_SMALL], out, fmt=fmt).reports
            assert report.status == "ok", report.error
            ds = pydicom.dcmread(out / name)
            numbers.append(int(ds.InstanceNumber))
            uids.add((str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
        assert numbers == [1, 2, 3], fmt
        assert len({s for s, _ in uids}) == 1 and len(uids) == 3  # one series, three instances
    # an earlier object numbered at the top of IS's range: 1 again, said (it was silent)
    predict([MR_SMALL], out, fmt="dicom-seg")  # (the RTSTRUCT run removed the input's earlier SEG: superseded)
    ds = pydicom.dcmread(out / "MR_small_seg.dcm")
    ds.InstanceNumber = 2**31 - 1
    ds.save_as(out / "MR_small_seg.dcm")
    res = CliRunner().invoke(main, ["predict", str(TINY), str(MR_SMALL), "--out", str(out), "--format", "dicom-seg",
                                    "--workers", "0"])
    assert res.exit_code == 0 and "the largest InstanceNumber DICOM allows (2147483647): numbered 1" in res.output
    assert int(pydicom.dcmread(out / "MR_small_seg.dcm").InstanceNumber) == 1
    # another model (its own SEG series) over it: numbered 1 in its series
    [report] = predict([MR_SMALL], out, fmt="dicom-seg", tta=True).reports
    assert report.status == "ok" and int(pydicom.dcmread(out / "MR_small_seg.dcm").InstanceNumber) == 1


def test_seg_series_uid_is_stable_per_source_series_and_model():
    a = AlgorithmInfo(model_name="m.onnx", model_sha256="a" * 64)
    b = AlgorithmInfo(model_name="m.onnx", model_sha256="b" * 64)
    assert seg_series_uid("1.2.3", a) == seg_series_uid("1.2.3", a) != seg_series_uid("1.2.4", a)
    assert seg_series_uid("1.2.3", a) != seg_series_uid("1.2.3", b)


def test_seg_records_tta_postprocess_and_runtime_and_they_get_their_own_series(tmp_path):
    """Two SEGs of one series with one model but --tta / --no-postprocess differ in their masks: the SEG says which
    settings made it (and which runtime and precision computed it), and they land in series of their own."""
    folder = save_series(mr_series(3, dark=(0,)), tmp_path / "series")
    seen = {}
    for name, kw in {"plain": {}, "tta": {"tta": True}, "raw": {"postprocess": False}}.items():
        res = predict([folder], tmp_path / name, backend="ort-cpu", **kw)
        assert res.reports[0].status == "ok", res.reports[0].error
        seg = pydicom.dcmread(tmp_path / name / "series_seg.dcm")
        params = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
        seen[name] = (params, seg.SeriesInstanceUID)
    assert seen["plain"][0].endswith(",backend=ort-cpu/f32")  # ORT computes in the model file's own precision
    assert "tta" not in seen["plain"][0] and "postprocess" not in seen["plain"][0]
    assert "tta=flip" in seen["tta"][0] and "postprocess=off" in seen["raw"][0]
    assert len({uid for _, uid in seen.values()}) == 3
    # a default run keeps the series earlier versions gave it: derived from the source series and the model only
    from pydicom.uid import generate_uid
    source = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    assert seen["plain"][1] == str(generate_uid(entropy_srcs=["hemseg DICOM SEG", source, sha256_file(TINY)]))


def test_missing_highdicom_is_a_dependency_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    with pytest.raises(DependencyError, match=r"hemseg\[dicom\]"):
        predict([MR_SMALL], tmp_path / "o")
    # with --format auto only the DICOM input fails, with the same hint; other inputs go on
    png = tmp_path / "img.png"
    cv2.imwrite(str(png), np.full((32, 32), 100, np.uint8))
    res = predict([MR_SMALL, png], tmp_path / "auto", fmt="auto")
    dicom, other = res.reports
    assert dicom.status == "error" and "hemseg[dicom]" in dicom.error
    assert other.status == "ok"


def test_every_pydicom_test_file_is_segmented_or_refused_in_one_line(tmp_path):
    """pydicom's own test files (compressed transfer syntaxes, big-endian, colour, SEG, RT, SR, truncated, files
    without a Frame of Reference ...) in one ``hemseg predict`` run with the default format: each input is either
    segmented, with its mask or SEG written, or refused in one line naming it; no traceback reaches the terminal
    (pydicom logs one per failing JPEG decoder) and the run itself completes."""
    files = sorted(PYDICOM_FILES.glob("*.dcm"))
    assert len(files) > 40
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["predict", str(TINY), *map(str, files), "--out", str(out), "--workers", "0"])
    assert res.exit_code in (0, 2), res.output + repr(res.exception)
    assert "Traceback" not in res.output
    import json

    entries = json.loads((out / "summary.json").read_text())["inputs"]
    assert len(entries) == len(files)
    ok = [e for e in entries if e["status"] == "ok"]
    assert len(ok) >= 10  # MR_small*, CT_small, the JPEG/JPEG-LS/JPEG 2000/RLE gray files ...
    for e in entries:
        if e["status"] == "ok":
            assert all((out / name).is_file() for name in e["outputs"].values())
        else:
            assert e["error"] and "\n" not in e["error"]
    by_name = {Path(e["input"]).name: e for e in entries}
    assert by_name["693_J2KI.dcm"]["status"] == "ok" and "dicom_seg_skipped" in by_name["693_J2KI.dcm"]
    assert by_name["MR_small.dcm"]["outputs"]["mask"] == "MR_small_seg.dcm"


# -- folders: a series beside other files ------------------------------------------------------------------------
def test_a_series_folder_with_a_stray_image_stays_one_series(tmp_path, caplog):
    """A thumbnail beside a series' slices is segmented on its own (a warning); the slices stay one series input:
    split into single-file inputs each slice would be normalised alone. hemseg's own NIfTI mask of the series,
    written into its folder, is not an input the next time."""
    folder = save_series(mr_series(3, dark=(1,)), tmp_path / "ser")
    cv2.imwrite(str(folder / "thumb.png"), np.zeros((8, 8), np.uint8))
    with caplog.at_level("WARNING", logger="hemseg"):
        res = predict([folder], tmp_path / "o", fmt="auto")
    assert [(r.path.name, r.status) for r in res.reports] == [("ser", "ok"), ("thumb.png", "ok")]
    assert (tmp_path / "o" / "ser_seg.dcm").is_file() and not (tmp_path / "o" / "IM0000_seg.dcm").exists()
    assert any("other image file(s) beside it" in r.getMessage() for r in caplog.records)
    (folder / "thumb.png").unlink()
    predict([folder], folder, fmt="nifti")  # outputs into the series folder
    assert (folder / "ser_mask.nii.gz").is_file()
    res = predict([folder], tmp_path / "again", fmt="auto")
    assert [r.path.name for r in res.reports] == ["ser"] and res.reports[0].status == "ok"


def test_a_renamed_dicomdir_in_a_series_folder_is_skipped_and_shared_instance_uids_are_refused(tmp_path, caplog):
    """A DICOMDIR copied as DICOMDIR.dcm failed the whole series ('no pixel data'); two slices sharing a SOP Instance
    UID were read as two slices, and their SEG had two frames referencing one instance."""
    import shutil

    folder = save_series(mr_series(2), tmp_path / "ser")
    shutil.copy(PYDICOM_FILES / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR.dcm")
    vol = read_image(folder)
    assert vol.n_slices == 2 and "DICOMDIR.dcm (media directory (DICOMDIR))" in caplog.text
    datasets = mr_series(3)
    datasets[2].SOPInstanceUID = datasets[1].SOPInstanceUID
    folder = save_series(datasets, tmp_path / "dup", order=[0, 1, 2])
    assert read_image(folder).n_slices == 3  # read as slices, but no output may reference them
    for fmt in ("dicom-seg", "dicom-rtstruct"):
        [report] = predict([folder], tmp_path / fmt, fmt=fmt).reports
        assert report.status == "error" and "IM0002.dcm: has the SOP Instance UID of IM0001.dcm" in report.error
    [report] = predict([folder], tmp_path / "auto", fmt="auto").reports
    assert report.status == "ok" and report.outputs["mask"] == "dup_mask.nii.gz"
    assert "IM0001.dcm and IM0002.dcm share one" in report.stats["dicom_seg_skipped"]


def test_single_dicom_files_of_other_series_beside_images_stay_single_inputs(tmp_path):
    """DICOM files that are not two images of one series, beside other images, are inputs one by one (as before)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for k, ds in enumerate([mr_series(1)[0], mr_series(1)[0]]):  # two series of one slice each
        ds.save_as(folder / f"s{k}.dcm", enforce_file_format=True)
    cv2.imwrite(str(folder / "a.png"), np.zeros((64, 64), np.uint8))
    res = predict([folder], tmp_path / "o", fmt="auto")
    assert sorted(r.path.name for r in res.reports) == ["a.png", "s0.dcm", "s1.dcm"]


def test_a_study_that_received_its_segs_is_segmented_again_as_its_series(tmp_path, caplog):
    """``hemseg predict study -o study`` writes ``study/<series>_seg.dcm``; the next run on the study skips those
    SEGs (a warning) and segments the series in its sub-folders, where it failed on a folder of SEGs."""
    study = tmp_path / "study"
    save_series(mr_series(2), study / "s1")
    assert predict([study], study, fmt="auto").reports[0].status == "ok"
    assert (study / "s1_seg.dcm").is_file()
    with caplog.at_level("WARNING", logger="hemseg"):
        res = predict([study], tmp_path / "o", fmt="auto")
    assert [(r.path.name, r.status) for r in res.reports] == [("s1", "ok")]
    assert any("not images skipped" in r.getMessage() for r in caplog.records)


def test_a_sorted_study_skips_its_mask_series_folders(tmp_path, caplog):
    """hemseg data sort-dicom puts a study's SEG in a series folder of its own; hemseg predict on the study counted
    that folder as a failed input (exit 2). Named explicitly, it is still refused with the reason."""
    study = tmp_path / "study"
    save_series(mr_series(2), study / "001_MR_t2")
    assert predict([study / "001_MR_t2"], tmp_path / "segs", fmt="dicom-seg").reports[0].status == "ok"
    (study / "002_SEG").mkdir()
    (tmp_path / "segs" / "001_MR_t2_seg.dcm").rename(study / "002_SEG" / "seg.dcm")
    with caplog.at_level("WARNING", logger="hemseg"):
        res = predict([study], tmp_path / "o", fmt="auto")
    assert [(r.path.name, r.status) for r in res.reports] == [("001_MR_t2", "ok")] and res.exit_code == 0
    assert any("1 sub-folder(s) holding only DICOM objects that are not images skipped (e.g. 002_SEG" in r.getMessage()
               for r in caplog.records)
    res = predict([study / "002_SEG"], tmp_path / "o2", fmt="auto")
    assert res.exit_code == 2 and res.reports[0].status == "error"


def test_a_series_folder_beside_image_files_is_named_not_dropped(tmp_path, caplog):
    """A PNG and a DICOM series sub-folder in one folder: '1/1 input(s) segmented', exit 0, the series never
    mentioned."""
    save_series(mr_series(2), tmp_path / "mixed" / "series")
    cv2.imwrite(str(tmp_path / "mixed" / "a.png"), np.full((64, 64), 40, np.uint8))
    names, said = _inputs_and_warnings(tmp_path / "mixed", tmp_path / "o", caplog)
    assert names == ["a.png"] and "1 sub-folder(s) holding DICOM files not segmented (e.g. series)" in said


def _inputs_and_warnings(folder: Path, out: Path, caplog) -> tuple[list[str], str]:
    """hemseg predict on ``folder``: the names of the inputs it made of it, and its warnings, joined."""
    with caplog.at_level("WARNING", logger="hemseg"):
        res = predict([folder], out, fmt="auto")
    return [r.path.name for r in res.reports], "\n".join(r.getMessage() for r in caplog.records)


def test_a_study_folder_names_its_sub_folders_with_dicom_further_down(tmp_path, caplog):
    """An export with one series folder at the top and a patient's nested PATIENT/STUDY/SERIES tree beside it: the
    nested patient was left out with 'INFO: 1 sub-folder(s) without DICOM files skipped' and exit 0."""
    save_series(mr_series(2), tmp_path / "export" / "series4")
    save_series(mr_series(2, series_uid="1.2.3.4.5"), tmp_path / "export" / "DICOM" / "PT0" / "ST0" / "SE0")
    (tmp_path / "export" / "notes").mkdir()
    (tmp_path / "export" / "notes" / "readme.txt").write_text("nothing to see")
    names, said = _inputs_and_warnings(tmp_path / "export", tmp_path / "o", caplog)
    assert names == ["series4"]
    assert "1 sub-folder(s) hold DICOM files further down, not segmented (e.g. DICOM)" in said, said
    assert "hemseg data sort-dicom" in said and "notes" not in said
    cv2.imwrite(str(tmp_path / "export" / "a.png"), np.full((64, 64), 40, np.uint8))  # an image beside them: said too
    caplog.clear()
    names, said = _inputs_and_warnings(tmp_path / "export", tmp_path / "o2", caplog)
    assert names == ["a.png"] and "1 sub-folder(s) hold DICOM files further down, not segmented (e.g. DICOM)" in said


def test_a_series_whose_orientation_differs_in_the_last_decimal_gets_its_seg(tmp_path):
    """Slices whose ImageOrientationPatient was rounded differently (1e-4): the reader takes them as one plane, but
    highdicom refused the whole series ('Source images must have a shared orientation'): exit 2, no mask."""
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(MR_SMALL)
    th = np.deg2rad(17)
    normal = np.cross([1.0, 0, 0], [0, np.cos(th), np.sin(th)])
    uids = [generate_uid() for _ in range(3)]
    folder = tmp_path / "jitter"
    folder.mkdir()
    for i in range(4):
        ds = src.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = uids
        ds.InstanceNumber = i + 1
        j = 1e-4 * (i % 2)
        ds.ImageOrientationPatient = [f"{v:.4f}" for v in [1, 0, 0, 0, np.cos(th) + j, np.sin(th) - j]]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array([-80, -90, 5.0]) + i * 1.5 * normal]
        ds.save_as(folder / f"{i}.dcm")
    res = predict([folder], tmp_path / "o", fmt="auto")
    assert res.reports[0].status == "ok", res.reports[0].error
    seg = pydicom.dcmread(tmp_path / "o" / "jitter_seg.dcm")
    assert seg.Modality == "SEG" and len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 4


def test_a_series_whose_slices_have_another_pixel_spacing_is_not_one_volume(tmp_path):
    """Two slices at 0.9 x 0.8 mm and two at 1.5 x 1.5 mm: read as one grid at the first slice's spacing (areas at the
    wrong size) and, after the last-decimal fix, written into a SEG at 0.9 x 0.8 for every frame, exit 0."""
    folder = _axial_series(tmp_path / "mixed", [[0.9, 0.8], [0.9, 0.8], [1.5, 1.5], [1.5, 1.5]], name="im")
    with pytest.raises(InputError, match=r"pixel spacing \(PixelSpacing\) 1.5\\1.5 differs from the 0.9\\0.8"):
        read_image(folder)
    res = predict([folder], tmp_path / "o", fmt="auto")
    assert res.reports[0].status == "error" and not list((tmp_path / "o").glob("mixed_*"))


@pytest.mark.parametrize("how", ["empty", "deleted"])
def test_a_series_without_slice_thickness_gets_a_seg_with_its_slice_spacing(tmp_path, how):
    """SliceThickness is Type 2 (may be empty): such a series got an RT Structure Set but no SEG ('lacks
    SliceThickness'; hemseg serve answered every instance with success and then made nothing). The SEG records the
    spacing the slice positions give; a single slice, which has none, still cannot have a SEG."""
    series = mr_series(4, step=2.5)
    for ds in series:
        if how == "empty":
            ds.SliceThickness = None
        else:
            del ds.SliceThickness
    save_series(series, tmp_path / "thin")
    res = predict([tmp_path / "thin"], tmp_path / "o", fmt="dicom-seg")
    assert res.reports[0].status == "ok", res.reports[0].error
    seg = pydicom.dcmread(tmp_path / "o" / "thin_seg.dcm")
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(2.5)
    save_series(series[:1], tmp_path / "one")
    res = predict([tmp_path / "one"], tmp_path / "o1", fmt="dicom-seg")
    assert res.reports[0].status == "error" and "lacks SliceThickness" in res.reports[0].error


def test_a_seg_states_the_slice_spacing_of_its_positions_not_a_contradicting_tag(tmp_path, caplog):
    """A series 2.5 mm apart whose slices state SpacingBetweenSlices 10 (a gap, or a stale value) got a SEG stating
    10 mm beside frames 2.5 mm apart, which highdicom cannot make a volume again (a QA finding of stop 52). The SEG
    states the step of its positions, with a warning; a tag that agrees is kept as it is."""
    series = mr_series(4, step=2.5)
    for ds in series:
        ds.SpacingBetweenSlices = "10"
    save_series(series, tmp_path / "gap")
    with caplog.at_level("WARNING", logger="hemseg.runtime.io.dicom_seg"):
        res = predict([tmp_path / "gap"], tmp_path / "o", fmt="dicom-seg")
    assert res.reports[0].status == "ok", res.reports[0].error
    seg = pydicom.dcmread(tmp_path / "o" / "gap_seg.dcm")
    assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices) == 2.5
    assert "SpacingBetweenSlices 10 mm disagrees with its slice positions (2.5 mm apart)" in caplog.text
    # a rounded value over a long stack (0.25 % off, 20 slices): highdicom's get_volume refused it (QA, stop 52)
    long = mr_series(20, step=4.0)
    for ds in long:
        ds.SpacingBetweenSlices = "4.01"
    save_series(long, tmp_path / "long")
    predict([tmp_path / "long"], tmp_path / "o3", fmt="dicom-seg")
    seg = pydicom.dcmread(tmp_path / "o3" / "long_seg.dcm")
    assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices) == 4.0
    uneven = mr_series(5, step=4.0)  # positions 0, 4, 8, 14, 18 mm: no one spacing (QA, stop 53)
    for k, ds in enumerate(uneven):
        ds.ImagePositionPatient = [v + (2.0 * n if k >= 3 else 0.0) for v, n in
                                   zip(ds.ImagePositionPatient, np.cross(SAGITTAL[:3], SAGITTAL[3:]))]
        ds.SpacingBetweenSlices = "6"
    save_series(uneven, tmp_path / "uneven")
    caplog.clear()
    with caplog.at_level("WARNING", logger="hemseg.runtime.io.dicom_seg"):
        res = predict([tmp_path / "uneven"], tmp_path / "o4", fmt="dicom-seg")
    assert res.reports[0].status == "ok", res.reports[0].error
    seg = pydicom.dcmread(tmp_path / "o4" / "uneven_seg.dcm")
    groups = [*seg.SharedFunctionalGroupsSequence, *seg.PerFrameFunctionalGroupsSequence]
    assert not any("SpacingBetweenSlices" in m for g in groups for m in g.get("PixelMeasuresSequence") or ())
    assert "unevenly spaced, so the SEG states no SpacingBetweenSlices (the source's 6 mm" in caplog.text
    for ds in series:
        ds.SpacingBetweenSlices = "2.50"
    save_series(series, tmp_path / "same")
    predict([tmp_path / "same"], tmp_path / "o2", fmt="dicom-seg")
    seg = pydicom.dcmread(tmp_path / "o2" / "same_seg.dcm")
    assert str(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices) == "2.50"


def _other_value(keyword: str) -> str:
    from pydicom.uid import generate_uid

    return {"PatientID": "OTHERPATIENT", "Modality": "CT"}.get(keyword) or generate_uid()


@pytest.mark.parametrize("keyword", ["PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "Modality"])
def test_a_series_with_a_slice_of_another_patient_study_or_space_is_not_one_volume(tmp_path, keyword):
    """Slice 3 of a 4-slice series from another patient: segmented 'ok', the DICOM SEG / RTSTRUCT naming the first
    slice's patient while referencing the other patient's instance. Refused, naming the slice. So is a slice
    labelled CT in an MR series (Modality is a series attribute; hemseg serve segmented it without a word)."""
    series = mr_series(4)
    setattr(series[2], keyword, _other_value(keyword))
    series[3].PatientID = ""  # a value left out (anonymizers do) is not compared
    save_series(series, tmp_path / "mixed")
    with pytest.raises(InputError, match=rf"{keyword} .* differs from the .* of [23] of the 4 slices .* of this series"):
        read_image(tmp_path / "mixed")
    res = predict([tmp_path / "mixed"], tmp_path / "o", fmt="dicom-rtstruct")
    assert res.reports[0].status == "error" and not list((tmp_path / "o").glob("mixed_*"))
    tie = mr_series(2)
    setattr(tie[1], keyword, _other_value(keyword))
    save_series(tie, tmp_path / "tie")  # one against one: neither is the odd one out
    with pytest.raises(InputError, match=rf"{keyword} .* here and .* in IM000\d.dcm: the slices of this series "
                                         "disagree"):
        read_image(tmp_path / "tie")
    clean = mr_series(4)
    clean[3].PatientID = ""
    save_series(clean, tmp_path / "clean")
    assert read_image(tmp_path / "clean").data.shape[0] == 4


def test_series_folders_beside_dicom_files_are_named_too(tmp_path, caplog):
    """DICOM files and a series sub-folder in one folder: the sub-folder was dropped without a word."""
    save_series(mr_series(2), tmp_path / "mixed")
    save_series(mr_series(2), tmp_path / "mixed" / "ser2")
    names, said = _inputs_and_warnings(tmp_path / "mixed", tmp_path / "o", caplog)
    assert names == ["mixed"] and "1 sub-folder(s) holding DICOM files not segmented (e.g. ser2)" in said


def test_pixel_spacing_is_compared_even_when_the_first_slice_has_none(tmp_path):
    """The first slice without PixelSpacing: slices at 0.3125 and 0.5 mm were one volume."""
    folder = _axial_series(tmp_path / "fm", [None, ["0.3125", "0.3125"], ["0.5", "0.5"]])
    with pytest.raises(InputError, match=r"PixelSpacing\) 0.5\\0.5 differs from the 0.3125\\0.3125 of s1.dcm"):
        read_image(folder)


@pytest.mark.parametrize("missing", [0, 2])
def test_a_series_with_a_slice_without_pixel_spacing_has_no_spacing_whichever_slice(tmp_path, missing):
    """The first slice without it: no spacing; the last without it: the others' 0.5 mm silently lent to it."""
    folder = _axial_series(tmp_path / "part", [None if k == missing else [0.5, 0.5] for k in range(3)])
    vol = read_image(folder)
    assert vol.spacing is None and vol.affine is None
    # said where predict's summary.json carries a input's warnings, not only in the log
    name = f"s{missing}.dcm"
    assert vol.geometry_warnings[0] == f"1 of 3 slices lack PixelSpacing (e.g. {name}): the series' pixel size is " \
                                       "treated as unknown"
    from hemseg.runtime.segmenter import input_warnings
    assert vol.geometry_warnings[0] in input_warnings(vol)


def _axial_series(folder: Path, spacings: list, name: str = "s") -> Path:
    """An axial series of MR_small slices 5 mm apart, slice k with PixelSpacing ``spacings[k]`` (None: without)."""
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(MR_SMALL)
    folder.mkdir(parents=True)
    uid = generate_uid()
    for i, spacing in enumerate(spacings):
        ds = src.copy()
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber, ds.ImagePositionPatient, ds.ImageOrientationPatient = i + 1, [0, 0, 5.0 * i], [1, 0, 0, 0, 1, 0]
        if spacing is None:
            del ds.PixelSpacing
        else:
            ds.PixelSpacing = list(spacing)
        ds.save_as(folder / f"{name}{i}.dcm")
    return folder


def test_a_damaged_slice_in_a_series_folder_fails_the_series_naming_it(tmp_path, caplog):
    """An empty, cut or unreadable extensionless file beside a series' slices was passed over as 'not DICOM' and
    the series segmented without that slice, exit 0 (a QA finding of stop 56). Files of other formats and
    extensionless text files beside the slices are no slices: left alone."""
    import os

    folder = save_series(mr_series(3), tmp_path / "ser")
    for p in list(folder.iterdir()):
        p.rename(p.with_suffix(""))  # IM0000, as scanners name them (found by the 'DICM' marker)
    (folder / "notes.txt").write_text("acquired by the night shift\n")
    (folder / "VERSION").write_text("export tool 2.1\n")
    (folder / "README").write_text("Séquence T2 — Patientin Müller\n", encoding="utf-8")  # failed it (retest)
    (folder / "LIESMICH").write_text("Notizen zur Serie\n", encoding="utf-16")  # Notepad's, with its BOM
    (folder / "NOTIZ").write_text("Patientin Müller, Aufnahme wiederholt\n", encoding="cp1252")
    assert read_image(folder).n_slices == 3
    whole = (folder / "IM0001").read_bytes()
    for name, content, why in (("IM0003", b"", "file is empty"), ("IM0004", whole[:100], "not a DICOM file")):
        (folder / name).write_bytes(content)
        with pytest.raises(InputError, match=why) as exc:
            read_image(folder)
        assert exc.value.path == folder / name and "beside the 3 DICOM file(s)" in str(exc.value)
        [report] = predict([folder], tmp_path / f"o_{name}", fmt="dicom-seg").reports
        assert report.status == "error" and name in report.error
        (folder / name).unlink()
    (folder / ".IM0009").write_bytes(whole)  # a hidden slice: not read (by design), but said (it was not)
    with caplog.at_level("WARNING", logger="hemseg"):
        assert read_image(folder).n_slices == 3
    assert "1 hidden DICOM file(s) not read as slices of the series (e.g. .IM0009)" in caplog.text
    if os.geteuid() != 0:  # root reads a file of mode 000 all the same
        (folder / "IM0005").write_bytes(whole)
        (folder / "IM0005").chmod(0)
        with pytest.raises(InputError, match="cannot be read"):
            read_image(folder)


def test_a_bare_rt_structure_set_beside_a_series_is_skipped_like_one_with_a_preamble(tmp_path, caplog):
    """pydicom's rtstruct.dcm (no preamble) beside the slices failed the whole series ('is a DICOM RT Structure Set
    object, not an image to segment'; QA, stop 56); given alone it is still refused."""
    import shutil

    folder = save_series(mr_series(3), tmp_path / "ser")
    shutil.copy(PYDICOM_FILES / "rtstruct.dcm", folder / "rtstruct.dcm")
    assert read_image(folder).n_slices == 3 and "rtstruct.dcm (RT Structure Set)" in caplog.text
    with pytest.raises(InputError, match="RT Structure Set object, not an image"):
        read_image(folder / "rtstruct.dcm")


def test_one_instance_in_two_transfer_syntaxes_is_a_copy_and_other_pixels_are_named(tmp_path):
    """MR_small.dcm beside its RLE (or big-endian) copy was refused as 'other content (pixel data)' though the
    decoded pixels are equal (QA, stop 56): a re-encoding is a copy; other pixels name both syntaxes."""
    import shutil

    folder = tmp_path / "ser"
    folder.mkdir()
    shutil.copy(MR_SMALL, folder / "IM1")
    shutil.copy(PYDICOM_FILES / "MR_small_bigendian.dcm", folder / "IM1_be")
    vol = read_image(folder)
    assert vol.n_slices == 1 and any("in the same or another transfer syntax" in w for w in vol.geometry_warnings)
    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small_bigendian.dcm")
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    ds.save_as(folder / "IM1_be")
    with pytest.raises(InputError, match=r"other pixels, in another transfer syntax \(Explicit VR Big Endian"):
        read_image(folder)


def test_a_thumbnail_beside_two_series_does_not_split_them_into_single_slices(tmp_path, caplog):
    """Without the PNG the folder is refused ('holds 2 DICOM series'); with a thumbnail beside it every slice was
    segmented on its own, each normalised alone, exit 0 (QA, stop 56). Now the series input is refused alike and the
    thumbnail segmented on its own."""
    folder = save_series(mr_series(3), tmp_path / "mix")
    mr_series(1)[0].save_as(folder / "IMB.dcm", enforce_file_format=True)  # a slice of another series
    cv2.imwrite(str(folder / "thumb.png"), np.zeros((8, 8), np.uint8))
    res = predict([folder], tmp_path / "o", fmt="auto")
    assert [(r.path.name, r.status) for r in res.reports] == [("mix", "error"), ("thumb.png", "ok")]
    assert "holds 2 DICOM series" in res.reports[0].error
    assert not list((tmp_path / "o").glob("IM*"))
    single = tmp_path / "singles"  # one-slice DICOMs of other series beside a PNG: files of their own, as before
    single.mkdir()
    for k, ds in enumerate([mr_series(1)[0], mr_series(1)[0]]):
        ds.save_as(single / f"K{k}.dcm", enforce_file_format=True)
    cv2.imwrite(str(single / "thumb.png"), np.zeros((8, 8), np.uint8))
    res = predict([single], tmp_path / "o2", fmt="auto")
    assert sorted(r.path.name for r in res.reports) == ["K0.dcm", "K1.dcm", "thumb.png"]


def test_a_one_slice_series_folder_stays_one_input_beside_its_own_mask(tmp_path):
    """A one-slice series segmented into its own folder was read as the single file IM0000.dcm on the next run, a
    second mask beside the first (QA, stop 56)."""
    folder = save_series(mr_series(1), tmp_path / "s1")
    predict([folder], folder, fmt="nifti")
    assert (folder / "s1_mask.nii.gz").is_file()
    res = predict([folder], folder, fmt="nifti")
    assert [(r.path.name, r.status) for r in res.reports] == [("s1", "ok")]
    assert sorted(p.name for p in folder.glob("*_mask*")) == ["s1_mask.nii.gz"]
