"""Paired training augmentation: geometry moves image and mask together, intensity touches the image only."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hemseg.runtime.preprocess import PreprocessSpec, preprocess  # noqa: E402
from hemseg.train.data import SliceDataset  # noqa: E402
from hemseg.train.slices import SliceItem  # noqa: E402
from hemseg.train.transforms import (  # noqa: E402
    AugmentSpec,
    RandomFieldOfView,
    RandomIntensityCurve,
    RandomInversion,
    RandomLowResolution,
    apply_pair,
    coarsen,
    invert_body,
    random_patch,
    train_transform,
)

pytestmark = pytest.mark.torch
#: every augmentation of the default spec switched off
NONE = dict(hflip=0, degrees=0, translate=0, scale=0, brightness=0, contrast=0, gamma=0)


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


def test_random_patch_is_an_unresampled_window_on_the_lesion():
    """A patch is a plain window of the slice (lesions keep their scale) and, when the slice has a lesion, shows it."""
    torch.manual_seed(0)
    img = torch.randint(0, 256, (64, 64), dtype=torch.uint8)  # every 16 x 16 window is unique
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[50:53, 3:6] = 1  # a small lesion near a corner
    # every window containing a lesion pixel is possible: many different placements over 50 draws
    placements = set()
    for _ in range(50):
        p, m = random_patch(img, mask, 16)
        hits = (img.unfold(0, 16, 1).unfold(1, 16, 1) == p).all(-1).all(-1).nonzero()
        top, left = (int(v) for v in hits[0])
        assert torch.equal(m, mask[top:top + 16, left:left + 16])
        assert m.any()  # the window shows the lesion
        placements.add((top, left))
    assert len(placements) > 10


def test_random_patch_without_lesion_and_at_full_size():
    torch.manual_seed(0)
    img = torch.randint(0, 255, (40, 40), dtype=torch.uint8)
    empty = torch.zeros(40, 40, dtype=torch.uint8)
    tops = set()
    for _ in range(30):
        p, m = random_patch(img, empty, 16)
        assert p.shape == (16, 16) and not m.any()
        tops.add(int((img.unfold(0, 16, 1).unfold(1, 16, 1) == p).all(-1).all(-1).nonzero()[0][0]))
    assert len(tops) > 5
    p, m = random_patch(img, empty, 40)
    assert p is img and m is empty


def test_dataset_patch_gives_patch_sized_training_items():
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.uint8)
    mask[30:34, 40:44] = 1
    item = SliceItem(stem="a", category="c", slice_index=0, n_slices=1,
                     image=rng.integers(0, 255, (64, 64), dtype=np.uint8), mask=mask)
    spec = PreprocessSpec(size=64).without(["all"])
    ds = SliceDataset([item], spec, train_transform(AugmentSpec(degrees=0, translate=0, scale=0)), patch=32)
    torch.manual_seed(0)
    on_lesion = [ds[(0, True)] for _ in range(20)]  # a forced foreground pick: the patch shows the lesion
    assert all(x.shape == (3, 32, 32) and y.shape == (1, 32, 32) and y.sum() > 0 for x, y in on_lesion)
    anywhere = [ds[(0, False)][1].sum() > 0 for _ in range(40)] + [ds[0][1].sum() > 0 for _ in range(40)]
    assert 0 < sum(anywhere) < len(anywhere)  # placed at random: sometimes on the lesion, sometimes not


def test_random_patch_can_ignore_the_lesion():
    torch.manual_seed(0)
    img = torch.randint(0, 256, (64, 64), dtype=torch.uint8)
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[40:50, 3:12] = 1
    shows = [bool(random_patch(img, mask, 16, on_lesion=False)[1].any()) for _ in range(60)]
    assert 0 < sum(shows) < 30  # a randomly placed 16 px window shows the lesion only now and then (p = 0.12)


def test_random_intensity_curve_keeps_air_black_can_swap_tissue_order_and_spares_the_mask():
    """The curve maps 0 to 0 and its maximum to 255, is a function of the grey level alone (a lookup table), leaves
    the mask alone, and over a few draws puts a bright tissue below a darker one at least once."""
    t = train_transform(AugmentSpec(**NONE, remap=1.0))
    img = torch.zeros(32, 32, dtype=torch.uint8)
    img[:, 8:16], img[:, 16:24], img[:, 24:] = 80, 160, 255   # air, dark, mid, bright tissue
    mask = (img == 160).to(torch.uint8)
    torch.manual_seed(3)
    swapped = 0
    for _ in range(20):
        a, m = apply_pair(t, img, mask)
        assert torch.equal(m, mask)
        assert int(a[:, :8].max()) == 0                       # air stays black
        for level in (80, 160, 255):                          # one grey level in, one grey level out
            assert a[img == level].unique().numel() == 1
        swapped += int(a[0, 16]) > int(a[0, 24])              # mid above bright: order swapped
    assert swapped >= 1
    lut = RandomIntensityCurve(1.0).make_params([])["lut"]
    assert int(lut[0]) == 0 and int(lut.max()) == 255                # air black, stretched to the full range


def test_random_intensity_curve_probability():
    img, mask = _pair()
    torch.manual_seed(4)
    assert all(torch.equal(apply_pair(RandomIntensityCurve(0.0), img, mask)[0], img) for _ in range(5))
    always = train_transform(AugmentSpec(**NONE, remap=1.0))
    assert sum(not torch.equal(apply_pair(always, img, mask)[0], img) for _ in range(10)) >= 9


def _body_slice() -> np.ndarray:
    """A noisy dark background (air) around a disc of tissue (80) with bright fluid (220) and a dark hole (15, an
    airway) inside it."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 12, (64, 64)).astype(np.uint8)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 24 ** 2
    img[disc] = 80
    img[28:36, 20:28] = 220
    img[28:36, 38:44] = 15
    return img, disc


def test_invert_body_reverses_the_body_fills_its_holes_and_keeps_the_air():
    img, disc = _body_slice()
    out = invert_body(img)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(out[~disc], img[~disc])          # air untouched
    assert np.array_equal(out[disc], 255 - img[disc])      # the whole body inverted, the dark hole included
    assert out[30, 24] < out[32, 32] < out[30, 40]         # fluid now darkest, the airway brightest
    flat = np.full((16, 16), 7, np.uint8)
    assert np.array_equal(invert_body(flat), flat)         # no body: nothing to invert


def test_random_inversion_probability_touches_the_image_only():
    img, _ = _body_slice()
    image, mask = torch.from_numpy(img), torch.from_numpy((img == 220).astype(np.uint8))
    torch.manual_seed(6)
    assert all(torch.equal(apply_pair(RandomInversion(0.0), image, mask)[0], image) for _ in range(5))
    t = train_transform(AugmentSpec(**NONE, invert=1.0))
    assert any(isinstance(x, RandomInversion) for x in t.transforms)
    a, m = apply_pair(t, image, mask)
    assert torch.equal(m, mask)
    assert np.array_equal(a.numpy(), invert_body(img))
    half = train_transform(AugmentSpec(**NONE, invert=0.5))
    flipped = sum(not torch.equal(apply_pair(half, image, mask)[0], image) for _ in range(200))
    assert 70 < flipped < 130
    assert not any(isinstance(x, RandomInversion) for x in train_transform(AugmentSpec()).transforms)


def test_coarsen_keeps_the_mean_and_size_and_removes_fine_detail():
    rng = np.random.default_rng(1)
    checker = (rng.integers(0, 2, (64, 64)) * 200 + 20).astype(np.uint8)  # 1 px texture
    out = coarsen(checker, 0.5)
    assert out.dtype == np.uint8 and out.shape == checker.shape
    assert abs(float(out.mean()) - float(checker.mean())) < 3           # the signal is averaged, not lost
    assert out.std() < 0.8 * checker.std()                               # the 1 px texture is gone
    smooth = np.tile(np.linspace(0, 250, 64), (64, 1)).astype(np.uint8)  # a ramp has no detail to lose
    assert np.abs(coarsen(smooth, 0.5).astype(int) - smooth).max() <= 2
    assert np.array_equal(coarsen(checker, 1.0), checker)                # zoom 1: unchanged
    assert coarsen(np.full((3, 5), 9, np.uint8), 0.1).shape == (3, 5)    # at least 1 px a side


def test_random_low_resolution_probability_touches_the_image_only():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (64, 64)).astype(np.uint8)
    image, mask = torch.from_numpy(img), torch.from_numpy((img > 200).astype(np.uint8))
    torch.manual_seed(3)
    assert all(torch.equal(apply_pair(RandomLowResolution(0.0), image, mask)[0], image) for _ in range(5))
    t = train_transform(AugmentSpec(**NONE, lowres=1.0))
    assert any(isinstance(x, RandomLowResolution) for x in t.transforms)
    a, m = apply_pair(t, image, mask)
    assert torch.equal(m, mask)                     # the anatomy did not move
    assert a.float().std() < image.float().std()    # noise texture smoothed by the coarser grid
    half = train_transform(AugmentSpec(**NONE, lowres=0.5))
    changed = sum(not torch.equal(apply_pair(half, image, mask)[0], image) for _ in range(200))
    assert 70 < changed < 130
    assert not any(isinstance(x, RandomLowResolution) for x in train_transform(AugmentSpec()).transforms)
    with pytest.raises(ValueError):
        RandomLowResolution(0.5, lo=0.0)


def test_random_field_of_view_blacks_out_image_and_mask_outside_one_box_around_a_lesion_pixel():
    t = train_transform(AugmentSpec(**NONE, fov=1.0, fov_shape="box"))
    assert any(isinstance(x, RandomFieldOfView) for x in t.transforms)
    img = torch.full((64, 64), 120, dtype=torch.uint8)
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[44:48, 50:54] = 1
    torch.manual_seed(5)
    shrunk = 0
    for _ in range(30):
        a, m = apply_pair(t, img, mask)
        inside = torch.nonzero(a)
        (top, left), (bottom, right) = inside.min(0).values.tolist(), inside.max(0).values.tolist()
        bh, bw = bottom - top + 1, right - left + 1
        assert 0.3 * 64 - 1 <= bh <= 64 and 0.3 * 64 - 1 <= bw <= 64
        box = torch.zeros(64, 64, dtype=torch.bool)
        box[top:bottom + 1, left:right + 1] = True
        assert bool((a[box] == 120).all()) and not a[~box].any()  # one box kept as it was, black outside
        assert torch.equal(m, mask * box)                                         # the mask cut by the same box
        assert m.any()                                                            # a lesion pixel is always inside
        shrunk += bh * bw < 64 * 64
    assert shrunk >= 25


def test_random_field_of_view_band_shrinks_one_side_and_keeps_the_other_whole():
    t = train_transform(AugmentSpec(**NONE, fov=1.0, fov_shape="band"))
    img = torch.full((64, 48), 120, dtype=torch.uint8)
    mask = torch.zeros(64, 48, dtype=torch.uint8)
    mask[44:48, 30:34] = 1
    torch.manual_seed(7)
    rows = cols = 0
    for _ in range(40):
        a, m = apply_pair(t, img, mask)
        inside = torch.nonzero(a)
        (top, left), (bottom, right) = inside.min(0).values.tolist(), inside.max(0).values.tolist()
        bh, bw = bottom - top + 1, right - left + 1
        assert bh == 64 or bw == 48                       # one side always whole: a band, never a box
        box = torch.zeros(64, 48, dtype=torch.bool)
        box[top:bottom + 1, left:right + 1] = True
        assert bool((a[box] == 120).all()) and not a[~box].any() and torch.equal(m, mask * box) and m.any()
        rows += bh < 64
        cols += bw < 48
    assert rows >= 10 and cols >= 10                      # both orientations occur
    with pytest.raises(ValueError):
        RandomFieldOfView(0.5, shape="circle")


def test_random_field_of_view_probability_and_no_lesion():
    img = torch.full((32, 32), 77, dtype=torch.uint8)
    empty = torch.zeros(32, 32, dtype=torch.uint8)
    torch.manual_seed(6)
    assert all(torch.equal(apply_pair(RandomFieldOfView(0.0), img, empty)[0], img) for _ in range(5))
    outs = [apply_pair(RandomFieldOfView(1.0), img, empty) for _ in range(10)]
    assert all(not m.any() for _, m in outs) and sum(int((a == 0).any()) for a, _ in outs) >= 9
    with pytest.raises(ValueError):
        RandomFieldOfView(1.5)
    with pytest.raises(ValueError):
        RandomFieldOfView(0.5, min_side=0.0)
