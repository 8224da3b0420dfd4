"""One phantom image: pick a size and field of view, paint anatomy, mimics and lesions, render and acquire."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from hemseg.errors import UsageError
from hemseg.phantom.categories import REGIONS, parse_category
from hemseg.phantom.degrade import acquire
from hemseg.phantom.lesions import place_lesions
from hemseg.phantom.marrow import paint_mimics
from hemseg.phantom.render import render_signal

DEFAULT_SIZE_RANGE = (192, 512)
LESION_COUNT_P = (0.10, 0.50, 0.28, 0.12)      # P(0..3 lesions) for images not forced lesion-free
ASPECT = {"sagittal": (0.62, 1.05), "coronal": (0.7, 1.3), "axial": (0.8, 1.3)}   # width / height


@dataclass
class Scene:
    """Everything about one rendered case (``labels`` and ``signal`` are for tests and debugging)."""

    image: np.ndarray       # uint8 (H, W)
    mask: np.ndarray        # uint8 (H, W), 0/255
    labels: np.ndarray      # uint8 (H, W) tissue codes (hemseg.phantom.contrast)
    body: np.ndarray        # uint8 (H, W) vertebral body index (0 = not inside a vertebral body)
    signal: np.ndarray      # float32 (H, W) noise-free signal before the acquisition chain
    info: dict


def case_rng(seed: int, category: str, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``category``: independent of how many images are generated."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(category.encode()),
                                                         int(index)]))


def _as_rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (int, np.integer)) and not isinstance(rng_or_seed, bool):
        return np.random.default_rng(int(rng_or_seed))
    raise UsageError(f"expected a numpy Generator or an int seed, got {type(rng_or_seed).__name__}")


def pick_size(rng: np.random.Generator, plane: str, size_range: tuple[int, int]) -> tuple[int, int]:
    """A (height, width) in ``size_range`` with a plane-typical aspect ratio (usually not square)."""
    lo, hi = int(size_range[0]), int(size_range[1])
    if lo < 32 or hi < lo:
        raise UsageError(f"size_range must be (min, max) with 32 <= min <= max, got {size_range!r}")
    h = int(rng.integers(lo, hi + 1))
    a0, a1 = ASPECT[plane]
    w = int(np.clip(round(h * rng.uniform(a0, a1)), lo, hi))
    return h, w


def render_scene(category: str, rng_or_seed, *, size: tuple[int, int] | None = None,
                 size_range: tuple[int, int] = DEFAULT_SIZE_RANGE, n_lesions: int | None = None) -> Scene:
    """Render one case of ``category``. ``n_lesions`` None draws 0-3; an int asks for that many (fewer can fit)."""
    from hemseg.phantom.anatomy import build_anatomy

    spec = parse_category(category)
    rng = _as_rng(rng_or_seed)
    h, w = pick_size(rng, spec.plane, size_range) if size is None else (int(size[0]), int(size[1]))
    region = spec.region or REGIONS[int(rng.integers(len(REGIONS)))]
    if n_lesions is None:
        n_lesions = int(rng.choice(4, p=LESION_COUNT_P))
    canvas, posterior = build_anatomy(rng, spec.plane, region, h, w)
    paint_mimics(canvas, rng, spec.plane)
    lesions = place_lesions(canvas, rng, int(n_lesions), spec.plane)
    signal = render_signal(canvas, spec.sequence, rng, lesions)
    image = acquire(signal, canvas, rng, posterior)
    mask = lesions.mask.astype(np.uint8) * 255
    info = {
        "category": category, "plane": spec.plane, "sequence": spec.sequence, "region": region,
        "height": h, "width": w, "mm_per_px": round(float(canvas.mm_per_px), 4),
        "lesions": int(lesions.count), "lesion_area": int(lesions.mask.sum()),
    }
    return Scene(image, mask, canvas.labels, canvas.body, signal, info)


def render_case(category: str, rng_or_seed, *, size: tuple[int, int] | None = None,
                size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
                n_lesions: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one case in memory: ``(image uint8 (H, W), mask uint8 0/255 (H, W), info dict)``."""
    sc = render_scene(category, rng_or_seed, size=size, size_range=size_range, n_lesions=n_lesions)
    return sc.image, sc.mask, sc.info
