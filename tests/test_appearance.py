"""GIN appearance augmentation (``--gin``): a random shallow network changes contrast and texture, never the mask."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hemseg.runtime.preprocess import PreprocessSpec, normalize, preprocess  # noqa: E402
from hemseg.train.appearance import random_appearance  # noqa: E402
from hemseg.train.data import SliceDataset  # noqa: E402
from hemseg.train.slices import SliceItem  # noqa: E402

pytestmark = pytest.mark.torch
SPEC = PreprocessSpec(size=32, clahe=False, nlm=False, bilateral=False)


def _ring_slice() -> np.ndarray:
    """A dark disc (the cord) inside a bright ring (cerebrospinal fluid on T2) on black air: uint8 (32, 32)."""
    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(yy - 16, xx - 16)
    img = np.zeros((32, 32), np.uint8)
    img[r < 11] = 220
    img[r < 6] = 90
    return img


def test_probability_zero_is_the_identity_and_one_always_changes():
    x = torch.from_numpy(normalize(_ring_slice(), SPEC))
    torch.manual_seed(0)
    assert random_appearance(x, 0.0) is x
    outs = [random_appearance(x, 1.0) for _ in range(10)]
    assert all(not torch.equal(o, x) for o in outs)
    with pytest.raises(ValueError, match="probability"):
        random_appearance(x, 1.5)


def test_output_keeps_shape_replicated_channels_and_the_input_energy():
    x = torch.from_numpy(normalize(_ring_slice(), SPEC))
    torch.manual_seed(1)
    for _ in range(10):
        y = random_appearance(x, 1.0)
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
        assert torch.equal(y[0], y[1]) and torch.equal(y[1], y[2])  # the runtime's three copies of one channel
        # Frobenius norm of one channel kept (GIN's output normalization)
        assert float(torch.linalg.vector_norm(y[0])) == pytest.approx(float(torch.linalg.vector_norm(x[0])), rel=1e-3)


def test_seeded_draws_repeat():
    x = torch.from_numpy(normalize(_ring_slice(), SPEC))
    torch.manual_seed(7)
    a = [random_appearance(x, 0.5) for _ in range(6)]
    torch.manual_seed(7)
    b = [random_appearance(x, 0.5) for _ in range(6)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_it_can_invert_the_contrast_of_disc_and_ring():
    """What a sequence with dark CSF looks like to a model trained on bright CSF: over some draws the disc ends up
    brighter than its ring at least once, and darker at least once (not a constant image either)."""
    img = _ring_slice()
    x = torch.from_numpy(normalize(img, SPEC))
    yy, xx = np.mgrid[:32, :32]
    r = torch.from_numpy(np.hypot(yy - 16, xx - 16))
    disc, ring = r < 4, (r > 7) & (r < 10)   # away from the edges the 3x3 kernels blur
    torch.manual_seed(2)
    inverted = kept = 0
    for _ in range(60):  # about one draw in five inverts (the blend with the slice keeps part of its contrast)
        y = random_appearance(x, 1.0)[0]
        d, g = float(y[disc].mean()), float(y[ring].mean())
        inverted += d > g + 0.05
        kept += d < g - 0.05
    assert inverted >= 3 and kept >= 3


def test_dataset_applies_it_to_the_image_only():
    img = _ring_slice()
    mask = (img == 90).astype(np.uint8)
    items = [SliceItem(stem="a", category="c", slice_index=0, n_slices=1, image=img, mask=mask)]
    plain = SliceDataset(items, SPEC, None)
    x0, y0 = plain[0]
    assert torch.equal(x0, torch.from_numpy(preprocess(img, SPEC)))
    torch.manual_seed(0)
    gin = SliceDataset(items, SPEC, None, gin=1.0)
    x1, y1 = gin[0]
    assert not torch.equal(x1, x0) and torch.equal(y1, y0)
    with pytest.raises(ValueError, match="gin"):
        SliceDataset(items, SPEC, None, gin=2.0)
