"""Calibration and verification images for the exporter, passed through the real preprocessing.

Every image goes through :func:`hemseg.runtime.preprocess.preprocess` with the checkpoint's
:class:`PreprocessSpec` (the same code the runtime runs), and its ground-truth mask through
:func:`hemseg.runtime.preprocess.resize_mask` to the network resolution, so parity and Dice are measured on exactly
what a deployed model sees.

Two sources:

- **phantom** (no ``--calib``): :func:`hemseg.phantom.render_case`, cycling through the phantom categories.
  Calibration uses seeds ``0, 1, ...``; verification uses seeds from :data:`PHANTOM_VERIFY_SEED` on, so the two
  sets never share an image.
- **dataset** (``--calib DATA``, a hemseg dataset): pairs found by :func:`hemseg.runtime.dataset.discover`, loaded
  with :func:`load_pair` (+ :func:`to_uint8`). The samples (files) are shuffled with a fixed seed; verification takes
  slices from the first samples, calibration from the samples after them, so no file feeds both (a volume gives
  evenly spaced slices). A dataset of one file is split by slices instead, and the set descriptions say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hemseg.errors import DatasetError, UsageError
from hemseg.runtime.io.intensity import to_uint8
from hemseg.runtime.preprocess import PreprocessSpec, preprocess, resize_mask

log = logging.getLogger(__name__)

#: verification images per format (the FP32 gate needs at least 8)
VERIFY_COUNT = 8
DEFAULT_CALIB_COUNT = 64
#: first phantom seed of the verification images (calibration seeds start at 0)
PHANTOM_VERIFY_SEED = 1_000_000
#: seed of the shuffle that splits a dataset into verification and calibration samples
SPLIT_SEED = 0


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed images with their ground truth at network resolution.

    ``images``: float32 (N, C, S, S) network input; ``masks``: uint8 (N, S, S) in {0, 1}; ``ids``: one name per
    image (``phantom:<category>:<seed>`` or ``<stem>[<slice>]``); ``source``: ``"phantom"`` or ``"dataset"``.
    """

    images: np.ndarray
    masks: np.ndarray
    ids: tuple[str, ...]
    source: str
    description: str

    def __len__(self) -> int:
        return len(self.ids)

    def summary(self) -> dict:
        return {"source": self.source, "description": self.description, "n_images": len(self),
                "foreground_images": int(np.count_nonzero(self.masks.reshape(len(self), -1).any(axis=1)))
                if len(self) else 0, "ids": list(self.ids)}


def _build(items: Iterable[tuple[str, np.ndarray, np.ndarray]], spec: PreprocessSpec, source: str,
           description: str) -> ImageSet:
    ids, images, masks = [], [], []
    for name, image_u8, mask in items:
        ids.append(name)
        images.append(preprocess(to_uint8(image_u8), spec))
        masks.append((resize_mask((np.asarray(mask) != 0).astype(np.uint8), spec.size) != 0).astype(np.uint8))
    if not ids:
        shape = (0, spec.channels, spec.size, spec.size)
        return ImageSet(np.zeros(shape, np.float32), np.zeros((0, spec.size, spec.size), np.uint8), (), source,
                        description)
    return ImageSet(np.stack(images), np.stack(masks), tuple(ids), source, description)


# ------------------------------------------------------------------------------------------------ phantom
def phantom_set(spec: PreprocessSpec, seeds: Sequence[int], role: str) -> ImageSet:
    """Phantom images for ``seeds``; image ``i`` is of category ``CATEGORIES[i % 12]``."""
    from hemseg.phantom import CATEGORIES, render_case

    def items():
        for i, seed in enumerate(seeds):
            category = CATEGORIES[i % len(CATEGORIES)]
            image, mask, _info = render_case(category, int(seed))
            yield f"phantom:{category}:{int(seed)}", image, mask

    first, last = (int(seeds[0]), int(seeds[-1])) if len(seeds) else (0, -1)
    return _build(items(), spec, "phantom",
                  f"{len(seeds)} phantom {role} image(s) rendered with hemseg.phantom.render_case, seeds "
                  f"{first}..{last}, cycling through the phantom categories")


def phantom_calibration(spec: PreprocessSpec, count: int) -> ImageSet:
    return phantom_set(spec, list(range(int(count))), "calibration")


def phantom_verification(spec: PreprocessSpec, count: int = VERIFY_COUNT) -> ImageSet:
    return phantom_set(spec, list(range(PHANTOM_VERIFY_SEED, PHANTOM_VERIFY_SEED + int(count))), "verification")


# ------------------------------------------------------------------------------------------------ dataset
def _spaced(n: int, k: int) -> list[int]:
    """``k`` evenly spaced indices of ``range(n)`` (all of them when ``k >= n``)."""
    if k >= n:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)})


def dataset_sets(root: str | Path, spec: PreprocessSpec, calib_count: int, verify_count: int = VERIFY_COUNT,
                 labels: Sequence[int] | None = None) -> tuple[ImageSet, ImageSet]:
    """``(calibration, verification)`` sets from a hemseg dataset; see the module docstring for the split.

    ``verify_count=0`` (nothing to verify) gives every image to calibration; ``calib_count=0`` (nothing to
    calibrate) returns an empty calibration set.
    """
    from hemseg.runtime.dataset import discover, load_pair

    root = Path(root)
    if calib_count < 0 or verify_count < 0 or calib_count + verify_count == 0:
        raise UsageError(f"need calibration and/or verification images, got counts {calib_count} and {verify_count}")
    index = discover(root)
    for problem in index.problems:
        log.warning("%s", problem)
    samples = list(index.samples)
    if not samples:
        raise DatasetError(f"{root}: no image/mask pairs to calibrate or verify with")
    order = [samples[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(samples))]

    if len(order) == 1:
        sample = order[0]
        image, mask = load_pair(sample, labels)
        n = image.shape[0]
        need = verify_count + min(calib_count, 1)
        if n < need:
            raise DatasetError(f"{root}: {n} slice(s) in the only pair {sample.stem}; need at least {need} "
                               f"({verify_count} to verify, {min(calib_count, 1)} to calibrate)")
        v_idx = _spaced(n, verify_count)
        rest = [i for i in range(n) if i not in set(v_idx)]
        c_idx = [rest[j] for j in _spaced(len(rest), calib_count)]
        note = f" (split by slices of the only pair {sample.stem}: calibration and verification share a volume)"
        verify = _build(((f"{sample.stem}[{i}]", image[i], mask[i]) for i in v_idx), spec, "dataset",
                        f"{len(v_idx)} verification slice(s) from {root}{note}")
        calib = _build(((f"{sample.stem}[{i}]", image[i], mask[i]) for i in c_idx), spec, "dataset",
                       f"{len(c_idx)} calibration slice(s) from {root}{note}")
        return calib, verify

    v_items: list[tuple[str, np.ndarray, np.ndarray]] = []
    c_items: list[tuple[str, np.ndarray, np.ndarray]] = []
    v_files = c_files = 0
    for sample in order:
        if len(v_items) < verify_count:
            target, want = v_items, verify_count
            v_files += 1
        elif len(c_items) < calib_count:
            target, want = c_items, calib_count
            c_files += 1
        else:
            break
        image, mask = load_pair(sample, labels)
        n = image.shape[0]
        for i in _spaced(n, want - len(target)):
            target.append((f"{sample.stem}[{i}]" if n > 1 else sample.stem, image[i], mask[i]))
    if len(v_items) < verify_count or (calib_count and not c_items):
        total = len(v_items) + len(c_items)
        raise DatasetError(f"{root}: {total} image(s) in {len(samples)} pair(s); need at least {verify_count} to verify"
                           + (" plus at least 1 other to calibrate" if calib_count else ""))
    if len(c_items) < calib_count:
        log.warning("%s: only %d calibration image(s) left after the %d verification image(s) (asked for %d)",
                    root, len(c_items), len(v_items), calib_count)
    verify = _build(v_items, spec, "dataset", f"{len(v_items)} verification image(s) from {v_files} file(s) of {root}")
    calib = _build(c_items, spec, "dataset", f"{len(c_items)} calibration image(s) from {c_files} other file(s) of "
                                             f"{root} (disjoint from the verification files)")
    return calib, verify
