"""Paired training augmentation: geometry moves image and mask together, intensity touches the image only."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hemseg.runtime.preprocess import PreprocessSpec, preprocess  # noqa: E402
from hemseg.train.data import SliceDataset  # noqa: E402
from hemseg.train.slices import SliceItem  # noqa: E402
from hemseg.train.transforms import AugmentSpec, apply_pair, train_transform  # noqa: E402

pytestmark = pytest.mark.torch


def _pair(size: int = 64):
    img = torch.zeros(size, size, dtype=torch.uint8)
    img[10:30, 5:20] = 200  # a bright block: the "lesion"
    mask = (img > 0).to(torch.uint8)
    return img, mask


def test_output_types_and_mask_values():
    torch.manual_seed(0)
    t = train_transform()
    img, mask = _pair()
    for _ in range(10):
        a, m = apply_pair(t, img, mask)
        assert a.dtype == torch.uint8 and a.shape == (64, 64)
        assert m.dtype == torch.uint8 and set(m.unique().tolist()) <= {0, 1}


def test_geometry_moves_image_and_mask_together():
    """With intensity augmentation off, the mask stays exactly where the bright block went."""
    spec = AugmentSpec(brightness=0, contrast=0, gamma=0, hflip=0.5, vflip=0.5)
    t = train_transform(spec)
    img, mask = _pair()
    torch.manual_seed(1)
    for _ in range(20):
        a, m = apply_pair(t, img, mask)
        inside = a[m == 1].float()
        outside = a[m == 0].float()
        assert inside.mean() > 150 and outside.mean() < 30


def test_flip_only_is_exact():
    spec = AugmentSpec(hflip=1.0, degrees=0, translate=0, scale=0, brightness=0, contrast=0, gamma=0)
    img, mask = _pair()
    a, m = apply_pair(train_transform(spec), img, mask)
    assert torch.equal(a, img.flip(-1)) and torch.equal(m, mask.flip(-1))


def test_intensity_leaves_mask_alone():
    spec = AugmentSpec(hflip=0, degrees=0, translate=0, scale=0, brightness=0.3, contrast=0.3, log_gamma=0.5)
    img, mask = _pair()
    torch.manual_seed(2)
    a, m = apply_pair(train_transform(spec), img, mask)
    assert torch.equal(m, mask) and not torch.equal(a, img)


def test_seeded_augmentation_is_repeatable():
    img, mask = _pair()
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(apply_pair(train_transform(), img, mask))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_dataset_without_transform_matches_runtime_preprocess():
    """Training inputs are the runtime's preprocess() bit for bit (same filter_uint8 + normalize)."""
    from hemseg.runtime.preprocess import filter_uint8, resize_mask

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (80, 70), dtype=np.uint8)
    raw_mask = np.zeros((80, 70), np.uint8)
    raw_mask[20:40, 30:50] = 1
    spec = PreprocessSpec(size=64)
    item = SliceItem("x", "all", 0, 1, filter_uint8(raw, spec), resize_mask(raw_mask, 64))
    x, y = SliceDataset([item], spec)[0]
    assert x.dtype == torch.float32 and x.shape == (3, 64, 64) and y.shape == (1, 64, 64)
    assert np.array_equal(x.numpy(), preprocess(raw, spec))
    assert np.array_equal(y[0].numpy(), resize_mask(raw_mask, 64).astype(np.float32))
    torch.manual_seed(0)
    xa, ya = SliceDataset([item], spec, train_transform())[0]
    assert xa.shape == x.shape and set(ya.unique().tolist()) <= {0.0, 1.0}
