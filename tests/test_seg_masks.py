"""DICOM SEG files as dataset masks: ``images/<stem>/`` (a series) + ``masks/<stem>.dcm`` (a SEG of it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from dicom_series import mr_series, save_series  # noqa: E402

from hemseg.errors import InputError  # noqa: E402
from hemseg.runtime.dataset import check_dataset, discover, label_map_masks, load_pair  # noqa: E402
from hemseg.runtime.io import read_image  # noqa: E402
from hemseg.runtime.io.dicom_seg import AlgorithmInfo, write_dicom_seg  # noqa: E402

INFO = AlgorithmInfo(model_name="m.onnx", model_sha256="0" * 64)


def lesion_mask(shape) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[1, 20:30, 10:18] = 1  # slice 1 only: the SEG omits the other frames
    mask[2, 40:44, 40:50] = 1
    return mask


def dataset_with_seg(root: Path, n: int = 4) -> tuple[Path, np.ndarray]:
    series = save_series(mr_series(n), root / "images" / "case")  # files written in reverse slice order
    vol = read_image(series)
    mask = lesion_mask(vol.data.shape)
    (root / "masks").mkdir(parents=True)
    write_dicom_seg(root / "masks" / "case.dcm", mask, vol, INFO)
    return series, mask


def two_segment_seg(vol, path: Path) -> None:
    """A SEG with segment 1 (slice 0) and segment 2 (slice 3), written with highdicom directly."""
    import highdicom as hd

    headers = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in vol.sources]
    arr = np.zeros((*vol.data.shape, 2), np.uint8)
    arr[0, 5:15, 5:15, 0] = 1
    arr[3, 30:40, 30:40, 1] = 1
    code = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
    segments = [hd.seg.SegmentDescription(segment_number=k, segment_label=f"s{k}", segmented_property_category=code,
                                          segmented_property_type=code,
                                          algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
                for k in (1, 2)]
    seg = hd.seg.Segmentation(source_images=headers, pixel_array=arr,
                              segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                              segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=2,
                              sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
                              manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    seg.save_as(path)


def test_a_seg_of_a_series_is_its_mask_slice_by_slice(tmp_path):
    series, mask = dataset_with_seg(tmp_path)
    [sample] = discover(tmp_path).samples
    assert sample.image == series and sample.mask.name == "case.dcm"
    image, got = load_pair(sample)
    assert got.dtype == np.uint8 and got.shape == mask.shape
    assert np.array_equal(got, mask)  # by reference: slice order, not file order; omitted frames empty
    report = check_dataset(tmp_path)
    assert report.usable and report.totals().foreground_slices == 2


def test_segments_are_labels(tmp_path):
    series = save_series(mr_series(4), tmp_path / "images" / "case")
    vol = read_image(series)
    (tmp_path / "masks").mkdir()
    two_segment_seg(vol, tmp_path / "masks" / "case.dcm")
    [sample] = discover(tmp_path).samples
    both = load_pair(sample)[1]
    assert both[0].sum() == 100 and both[3].sum() == 100 and both[1:3].sum() == 0
    only2 = load_pair(sample, labels=[2])[1]
    assert only2[0].sum() == 0 and only2[3].sum() == 100
    assert load_pair(sample, labels=[7])[1].sum() == 0  # no such segment: nothing is lesion
    assert [(p.name, v.tolist()) for p, v in label_map_masks([sample])] == [("case.dcm", [1, 2])]


def test_a_seg_of_another_series_is_refused_not_read_as_empty(tmp_path):
    dataset_with_seg(tmp_path / "a")
    other = save_series(mr_series(4), tmp_path / "b" / "images" / "case")  # same pixels, new UIDs
    (tmp_path / "b" / "masks").mkdir()
    (tmp_path / "b" / "masks" / "case.dcm").write_bytes((tmp_path / "a" / "masks" / "case.dcm").read_bytes())
    [sample] = discover(tmp_path / "b").samples
    assert sample.image == other
    with pytest.raises(InputError, match="not images of .* it belongs to another series") as exc:
        load_pair(sample)
    assert exc.value.path == sample.mask


def test_a_seg_of_a_series_missing_a_slice_says_so(tmp_path):
    """A slice the SEG references was deleted from (or never exported into) the series folder: the error says the
    SEG names this very series, not only that it "belongs to another series"."""
    series, _ = dataset_with_seg(tmp_path)
    lesion_slice = read_image(series).sources[1]  # a slice the SEG has a frame for
    lesion_slice.unlink()
    [sample] = discover(tmp_path).samples
    with pytest.raises(InputError, match="although it names that series: slices missing from the folder"):
        load_pair(sample)


def test_a_dicom_image_is_not_a_mask_and_a_png_image_gets_no_seg(tmp_path):
    import cv2

    series = save_series(mr_series(2), tmp_path / "images" / "case")
    (tmp_path / "masks").mkdir()
    image_file = sorted(series.iterdir())[0]
    (tmp_path / "masks" / "case.dcm").write_bytes(image_file.read_bytes())
    with pytest.raises(InputError, match="must be a DICOM Segmentation .* DICOM MR object"):
        load_pair(discover(tmp_path).samples[0])

    png_root = tmp_path / "png"
    dataset_with_seg(tmp_path / "src")
    (png_root / "images").mkdir(parents=True)
    (png_root / "masks").mkdir()
    cv2.imwrite(str(png_root / "images" / "case.png"), np.zeros((64, 64), np.uint8))
    (png_root / "masks" / "case.dcm").write_bytes((tmp_path / "src" / "masks" / "case.dcm").read_bytes())
    with pytest.raises(InputError, match="needs a DICOM image"):
        load_pair(discover(png_root).samples[0])


def test_a_multiframe_image_maps_frames_by_number(tmp_path):
    """One multi-frame file (a Legacy Converted Enhanced MR image, made by highdicom from a series): the SEG's frames
    name source frames 1..n of that one instance."""
    import highdicom as hd

    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(mr_series(3), series_instance_uid=hd.UID(), series_number=5,
                                                         sop_instance_uid=hd.UID(), instance_number=1)
    (tmp_path / "images").mkdir()
    path = tmp_path / "images" / "case.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    vol = read_image(path)
    assert vol.n_slices == 3 and vol.sources == (path,)
    mask = lesion_mask(vol.data.shape)
    (tmp_path / "masks").mkdir()
    write_dicom_seg(tmp_path / "masks" / "case.dcm", mask, vol, INFO)
    assert np.array_equal(load_pair(discover(tmp_path).samples[0])[1], mask)


def test_a_seg_without_a_required_element_says_which_is_missing(tmp_path):
    """highdicom's KeyError for a missing element gave 'not a readable DICOM SEG: (0062,000A)', a bare tag."""
    dataset_with_seg(tmp_path)
    path = tmp_path / "masks" / "case.dcm"
    ds = pydicom.dcmread(path)
    del ds.SharedFunctionalGroupsSequence[0][0x0062000A]  # the frames' Segment Identification Sequence
    ds.save_as(path)
    with pytest.raises(InputError, match="not a readable DICOM SEG") as exc:
        load_pair(discover(tmp_path).samples[0])
    assert exc.value.path == path and "(0062,000A) is missing" in exc.value.reason, exc.value.reason


@pytest.mark.parametrize("fraction", [0.3, 0.9, 0.99])
def test_a_cut_short_seg_is_an_error_naming_the_file(tmp_path, fraction):
    dataset_with_seg(tmp_path)
    path = tmp_path / "masks" / "case.dcm"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InputError, match="truncated|not a readable DICOM SEG") as exc:
        load_pair(discover(tmp_path).samples[0])
    assert exc.value.path == path
    if fraction > 0.5:  # the pixel data is what is cut: said in words, not as a numpy reshape error
        assert "the file is truncated" in str(exc.value)
