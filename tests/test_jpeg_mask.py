"""JPEG masks (hemseg.runtime.io.jpeg_mask): a two-level mask is recovered exactly from lossy compression; a label
map or a soft mask, which compression cannot keep, is refused naming the file; --label is refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hemseg.cli import main
from hemseg.errors import InputError
from hemseg.runtime.io.images import mask_label_values, read_mask


def _jpeg(path, arr, quality=95):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return path


def _lesions() -> np.ndarray:
    m = np.zeros((128, 128), np.uint8)
    m[40:70, 50:90] = 255
    m[100:103, 10:13] = 255  # a 3 x 3 lesion
    return m


@pytest.mark.parametrize("quality", [95, 75, 50, 30])
def test_a_two_level_mask_comes_back_exactly(tmp_path, quality):
    m = _lesions()
    path = _jpeg(tmp_path / "m.jpg", m, quality)
    stored = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert np.count_nonzero(stored) > np.count_nonzero(m)  # "any nonzero" would grow the lesions
    assert np.array_equal(read_mask(path)[0], (m > 0).astype(np.uint8))
    assert list(mask_label_values(path)) == [1]  # one class: no label-map warning downstream


def test_colored_and_empty_jpeg_masks(tmp_path):
    color = np.zeros((64, 64, 3), np.uint8)
    color[10:30, 10:30, 2] = 255  # a red annotation on black
    assert read_mask(_jpeg(tmp_path / "c.jpg", color)).sum() == 400
    assert read_mask(_jpeg(tmp_path / "z.jpg", np.zeros((64, 64), np.uint8))).sum() == 0


def test_label_maps_soft_masks_and_labels_are_refused(tmp_path):
    labels = np.zeros((128, 128), np.uint8)
    labels[10:60, 10:60], labels[70:120, 70:120], labels[10:40, 80:120] = 85, 170, 255
    with pytest.raises(InputError, match="lab.jpg: JPEG mask with several grey levels"):
        read_mask(_jpeg(tmp_path / "lab.jpg", labels))
    soft = cv2.GaussianBlur(_lesions(), (31, 31), 10)
    with pytest.raises(InputError, match="a label map or a soft mask"):
        read_mask(_jpeg(tmp_path / "soft.jpg", soft))
    with pytest.raises(InputError, match=r"label value \(--label, --pred-label\) cannot be selected in a JPEG mask"):
        read_mask(_jpeg(tmp_path / "m.jpg", _lesions()), labels=[255])


def test_tiff_masks_are_read_like_png(tmp_path):
    m = _lesions()
    path = tmp_path / "m.tif"
    assert cv2.imwrite(str(path), m)
    assert np.array_equal(read_mask(path)[0], (m > 0).astype(np.uint8))
    assert read_mask(path, labels=[255]).sum() == np.count_nonzero(m)


def test_data_check_accepts_a_jpeg_dataset_and_says_how_it_read_it(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        _jpeg(tmp_path / "d" / "images" / f"s{i}.jpg", rng.integers(0, 255, (128, 128), dtype=np.uint8))
        _jpeg(tmp_path / "d" / "masks" / f"s{i}.jpg", _lesions())
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "3 JPEG mask(s)" in result.output and "binarized at Otsu's threshold" in result.output
