"""The one preprocessing definition: spec round trip, step switches, and the reference chain."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hemseg.errors import UsageError
from hemseg.runtime.preprocess import (
    OPTIONAL_STEPS,
    PreprocessSpec,
    filter_uint8,
    normalize,
    preprocess,
    preprocess_batch,
    resize_mask,
)


def _image(h=90, w=70, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 60 + 100 * (xx / w) + rng.normal(0, 12, (h, w))
    cv2.circle(img, (w // 2, h // 2), 12, 230, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_defaults_are_the_papers():
    s = PreprocessSpec()
    assert (s.size, s.clahe_clip, s.clahe_tiles) == (256, 2.0, 8)
    assert (s.nlm_h, s.nlm_template, s.nlm_search) == (10.0, 7, 21)
    assert (s.bilateral_d, s.bilateral_sigma_color, s.bilateral_sigma_space) == (9, 75.0, 75.0)
    assert (s.mean, s.std, s.channels) == (0.5, 0.5, 3)
    assert s.enabled_steps == ("resize", "clahe", "nlm", "bilateral", "normalize")


def test_json_round_trip_and_frozen():
    s = PreprocessSpec(size=64, nlm=False, clahe_clip=3.0)
    again = PreprocessSpec.from_json(s.to_json())
    assert again == s
    assert PreprocessSpec.from_dict(s.to_dict()) == s
    with pytest.raises(Exception):
        s.size = 128  # frozen


@pytest.mark.parametrize("bad", ['{"size": 64, "bogus": 1}', '[1, 2]', 'not json', '{"version": 99}'])
def test_bad_spec_json_refused(bad):
    with pytest.raises(UsageError):
        PreprocessSpec.from_json(bad)


def test_invalid_parameters_refused():
    with pytest.raises(UsageError):
        PreprocessSpec(size=4)
    with pytest.raises(UsageError, match="<= 4096"):  # a corrupt model's size must not exhaust memory
        PreprocessSpec(size=100_000)
    assert PreprocessSpec(size=4096).size == 4096
    with pytest.raises(UsageError):
        PreprocessSpec(nlm_template=6)
    with pytest.raises(UsageError):
        PreprocessSpec(std=0)


def test_without_switches_steps_off():
    s = PreprocessSpec().without(["nlm"])
    assert not s.nlm and s.clahe and s.bilateral
    assert PreprocessSpec().without(["all"]).enabled_steps == ("resize", "normalize")
    with pytest.raises(UsageError):
        PreprocessSpec().without(["sharpen"])
    assert set(OPTIONAL_STEPS) == {"clahe", "nlm", "bilateral"}


def test_chain_matches_opencv_calls_in_order():
    img = _image()
    spec = PreprocessSpec(size=64)
    expected = cv2.resize(img, (64, 64), interpolation=cv2.INTER_LINEAR)
    expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(expected)
    expected = cv2.fastNlMeansDenoising(expected, None, h=10, templateWindowSize=7, searchWindowSize=21)
    expected = cv2.bilateralFilter(expected, 9, 75, 75)
    np.testing.assert_array_equal(filter_uint8(img, spec), expected)
    x = preprocess(img, spec)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], (expected / 255.0 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_array_equal(x[0], x[2])
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_each_step_changes_the_output():
    img = _image()
    full = filter_uint8(img, PreprocessSpec(size=64))
    for step in OPTIONAL_STEPS:
        assert not np.array_equal(filter_uint8(img, PreprocessSpec(size=64).without([step])), full), step


def test_no_filters_is_plain_resize():
    img = _image()
    out = filter_uint8(img, PreprocessSpec(size=32).without(["all"]))
    np.testing.assert_array_equal(out, cv2.resize(img, (32, 32), interpolation=cv2.INTER_LINEAR))


def test_normalize_custom_mean_std_and_one_channel():
    u8 = np.array([[0, 255]], np.uint8)
    x = normalize(u8, PreprocessSpec(size=8, mean=0.0, std=1.0, channels=1))
    np.testing.assert_allclose(x, [[[0.0, 1.0]]])


def test_input_validation():
    spec = PreprocessSpec(size=32)
    with pytest.raises(UsageError, match="uint8"):
        preprocess(np.zeros((10, 10), np.float32), spec)
    with pytest.raises(UsageError, match="2D"):
        preprocess(np.zeros((10, 10, 3), np.uint8), spec)
    with pytest.raises(UsageError, match="too small"):
        preprocess(np.zeros((1, 1), np.uint8), spec)


def test_batch_and_mask_resize():
    spec = PreprocessSpec(size=32).without(["nlm"])
    batch = preprocess_batch([_image(), _image(50, 120, seed=1)], spec)
    assert batch.shape == (2, 3, 32, 32)
    assert preprocess_batch([], spec).shape == (0, 3, 32, 32)
    m = np.zeros((90, 70), np.uint8)
    m[10:20, 10:30] = 1
    r = resize_mask(m, 32)
    assert r.shape == (32, 32) and set(np.unique(r)) <= {0, 1}
    assert resize_mask(r, (90, 70)).shape == (90, 70)
