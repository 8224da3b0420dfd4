"""Calibration and verification images for the exporter, passed through the real preprocessing.

Every image goes through :func:`hemseg.runtime.preprocess.preprocess` with the checkpoint's
:class:`PreprocessSpec` (the same code the runtime runs), and its ground-truth mask through
:func:`hemseg.runtime.preprocess.resize_mask` to the network resolution, so parity and Dice are measured on exactly
what a deployed model sees.

Three sources, in this order of preference:

- **dataset** (``--calib DATA``, a hemseg dataset): pairs found by :func:`hemseg.runtime.dataset.discover`, loaded
  with :func:`load_pair` (+ :func:`to_uint8`). The samples (files) are shuffled with a fixed seed, those whose mask
  holds a lesion first (so the mask gates can compare lesions); verification takes slices from the first samples,
  calibration from the samples after them, so no file feeds both (a volume gives evenly spaced slices). Labels of
  the model that no mask holds are refused (every mask would read as lesion-free). A dataset of one file is split by slices instead, and the set descriptions say so.
- **the model's own data** (no ``--calib``; :func:`training_split_sets`): the checkpoint records the dataset folder
  it was trained on (``config["data"]``) and its split (``train_stems``, ``val_stems``). When that folder is readable,
  verification takes slices of the **validation** samples, slices with lesion pixels first (so the mask gates can
  measure something), then lesion-free ones; calibration takes slices of the validation samples not used for
  verification, then of the training samples. No file feeds both sets. A folder whose content changed since
  training (another fingerprint) is still used, with a warning.
- **phantom** (the fallback when neither is available, with a warning that says why):
  :func:`hemseg.phantom.render_case`, cycling through the phantom categories. Calibration uses seeds ``0, 1, ...``;
  verification uses seeds from :data:`PHANTOM_VERIFY_SEED` on, so the two sets never share an image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hemseg.errors import DatasetError, HemsegError, UsageError
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
    """Images at their own size and preprocessed, with their ground truth.

    ``images``: float32 (N, C, S, S) network input (what calibration feeds the quantizer); ``masks``: uint8
    (N, S, S) in {0, 1} at the network resolution; ``slices``: the uint8 (H, W) images at their own sizes (what the
    parity gates feed the runtime's pipeline); ``truth``: their uint8 {0, 1} masks at the same sizes; ``ids``: one
    name per image (``phantom:<category>:<seed>`` or ``<stem>[<slice>]``); ``source``: ``"phantom"``,
    ``"dataset"``, ``"validation split"`` or ``"training data"``.
    """

    images: np.ndarray
    masks: np.ndarray
    ids: tuple[str, ...]
    source: str
    description: str
    slices: tuple[np.ndarray, ...] = ()
    truth: tuple[np.ndarray, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def summary(self) -> dict:
        return {"source": self.source, "description": self.description, "n_images": len(self),
                "foreground_images": int(np.count_nonzero(self.masks.reshape(len(self), -1).any(axis=1)))
                if len(self) else 0, "ids": list(self.ids)}


def _build(items: Iterable[tuple[str, np.ndarray, np.ndarray]], spec: PreprocessSpec, source: str,
           description: str) -> ImageSet:
    ids, images, masks, slices, truth = [], [], [], [], []
    for name, image_u8, mask in items:
        ids.append(name)
        u8 = np.ascontiguousarray(to_uint8(image_u8))
        full = (np.asarray(mask) != 0).astype(np.uint8)
        slices.append(u8)
        truth.append(full)
        images.append(preprocess(u8, spec))
        masks.append((resize_mask(full, spec.size) != 0).astype(np.uint8))
    if not ids:
        shape = (0, spec.channels, spec.size, spec.size)
        return ImageSet(np.zeros(shape, np.float32), np.zeros((0, spec.size, spec.size), np.uint8), (), source,
                        description)
    return ImageSet(np.stack(images), np.stack(masks), tuple(ids), source, description, tuple(slices), tuple(truth))


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
    from hemseg.runtime.dataset import discover, load_pair, warn_label_maps

    root = Path(root)
    if calib_count < 0 or verify_count < 0 or calib_count + verify_count == 0:
        raise UsageError(f"need calibration and/or verification images, got counts {calib_count} and {verify_count}")
    index = discover(root)
    for problem in index.problems:
        log.warning("%s", problem)
    samples = list(index.samples)
    if not samples:
        raise DatasetError(f"{root}: no image/mask pairs to calibrate or verify with")
    # labels no mask holds would read every mask as lesion-free: refused as hemseg eval refuses them
    warn_label_maps(root, samples, labels, require_labels=True, option="the model's training label")
    names = _named(samples)
    order = [samples[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(samples))]
    if len(order) > 1:  # files with a lesion verify first, so that the mask gates can compare lesions
        held = {id(s): _holds_lesion(s.mask, labels) for s in order}
        order = [s for s in order if held[id(s)]] + [s for s in order if not held[id(s)]]

    if len(order) == 1:
        sample = order[0]
        image, mask = load_pair(sample, labels)
        n = image.shape[0]
        need = verify_count + min(calib_count, 1)
        if n < need:
            raise DatasetError(f"{root}: {n} slice(s) in the only pair {names[sample]}; need at least {need} "
                               f"({verify_count} to verify, {min(calib_count, 1)} to calibrate)")
        v_idx = _spaced(n, verify_count)
        rest = [i for i in range(n) if i not in set(v_idx)]
        c_idx = [rest[j] for j in _spaced(len(rest), calib_count)]
        note = f" (split by slices of the only pair {names[sample]}: calibration and verification share a volume)"
        verify = _build(((f"{names[sample]}[{i}]", image[i], mask[i]) for i in v_idx), spec, "dataset",
                        f"{len(v_idx)} verification slice(s) from {root}{note}")
        calib = _build(((f"{names[sample]}[{i}]", image[i], mask[i]) for i in c_idx), spec, "dataset",
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
            target.append((f"{names[sample]}[{i}]" if n > 1 else names[sample], image[i], mask[i]))
    if len(v_items) < verify_count or (calib_count and not c_items):
        total = len(v_items) + len(c_items)
        raise DatasetError(f"{root}: {total} image(s) in {len(samples)} pair(s); need at least {verify_count} to verify"
                           + (" plus at least 1 other to calibrate" if calib_count else ""))
    if len(c_items) < calib_count:
        log.warning("%s: only %d calibration image(s) (asked for %d): the %d verification image(s) came from %d "
                    "whole file(s), held back from calibration so that no file feeds both, and the other %d file(s) "
                    "hold no more", root, len(c_items), calib_count, len(v_items), v_files, c_files)
    verify = _build(v_items, spec, "dataset", f"{len(v_items)} verification image(s) from {v_files} file(s) of {root}")
    calib = _build(c_items, spec, "dataset", f"{len(c_items)} calibration image(s) from {c_files} "
                                             + (f"other file(s) of {root} (disjoint from the verification files)"
                                                if v_items else f"file(s) of {root}"))
    return calib, verify


def _holds_lesion(mask: Path, labels: Sequence[int] | None) -> bool:
    from hemseg.runtime.io.images import mask_label_values

    values = mask_label_values(mask)
    return bool(len(values)) if not labels else bool(set(float(v) for v in values) & {float(v) for v in labels})


# ------------------------------------------------------------------------------------------------ training split
class SplitUnavailable(Exception):
    """The checkpoint's own data cannot be used (``reason`` says why); the caller falls back to the phantom."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _named(samples: list) -> dict:
    """Each sample's name in the reports (:func:`hemseg.runtime.dataset.sample_ids`: ``<category>/<stem>`` where
    category folders share file names; bare stems named two samples, and the sets looked as if they shared one)."""
    from hemseg.runtime.dataset import sample_ids

    return dict(zip(samples, sample_ids(samples)))


def _name(stem: str, i: int, n: int) -> str:
    return f"{stem}[{i}]" if n > 1 else stem


def _split_samples(config: dict) -> tuple[Path, list, list]:
    """(data folder, validation samples, training samples) recorded in a checkpoint config, or SplitUnavailable."""
    from hemseg.runtime.dataset import dataset_fingerprint, discover, sample_ids

    data, val_stems = config.get("data"), config.get("val_stems")
    if not data or not val_stems:
        raise SplitUnavailable("the checkpoint records no training data folder and validation split")
    root = Path(data)
    if not root.is_dir():
        raise SplitUnavailable(f"the training data folder {root} recorded in the checkpoint is not readable here")
    index = discover(root)
    if index.problems:
        raise SplitUnavailable(f"the training data folder {root} has a problem: {index.problems[0]}")
    val, train = set(val_stems), set(config.get("train_stems") or [])
    ambiguous = val & train  # a stem repeated across category folders, on both sides of an older run's split
    ids = sample_ids(index.samples)  # <category>/<stem> where categories share stems, as the trainer records them
    if not any(i in val for i in ids):  # a split recorded as bare stems before that (or of another layout)
        ids = [s.stem for s in index.samples]
    usable = val - ambiguous
    val_samples = [s for s, i in zip(index.samples, ids) if i in usable]
    train_samples = [s for s, i in zip(index.samples, ids) if i in train - ambiguous]
    if not val_samples:
        raise SplitUnavailable(f"none of the checkpoint's {len(val)} validation stem(s) is in {root}")
    missing = len(val - (usable & set(ids)))
    if missing:
        log.warning("%d of the checkpoint's %d validation stem(s) are not usable in %s", missing, len(val), root)
    recorded = config.get("data_fingerprint")
    if recorded and dataset_fingerprint(index) != recorded:
        log.warning("%s changed since the model was trained on it (another dataset fingerprint); using the "
                    "validation stems found there", root)
    rng = np.random.default_rng(SPLIT_SEED)
    shuffle = lambda xs: [xs[i] for i in rng.permutation(len(xs))]  # noqa: E731
    return root, shuffle(val_samples), shuffle(train_samples)


def _load(sample, labels):
    from hemseg.runtime.dataset import load_pair

    try:
        return load_pair(sample, labels)
    except HemsegError as exc:
        log.warning("skipping %s: %s", sample.image, exc)
        return None


def _readable(samples, labels, done):
    """``(sample, image, mask)`` of each sample that loads (the others are skipped with a warning), until ``done()``."""
    for sample in samples:
        if done():
            return
        pair = _load(sample, labels)
        if pair is not None:
            yield (sample, *pair)


def training_split_sets(config: dict, spec: PreprocessSpec, calib_count: int, verify_count: int = VERIFY_COUNT,
                        labels: Sequence[int] | None = None) -> tuple[ImageSet, ImageSet]:
    """``(calibration, verification)`` from the data a checkpoint was trained on (module docstring).

    Raises :class:`SplitUnavailable` when the checkpoint records no split, the folder is not readable here, or it
    yields no verification image (or, with ``calib_count > 0``, no calibration image).
    """
    root, val_samples, train_samples = _split_samples(config)
    names = _named(val_samples + train_samples)
    with_fg: list[tuple] = []
    without: list[tuple] = []
    for sample, image, mask in _readable(val_samples, labels, lambda: len(with_fg) >= verify_count):
        n = image.shape[0]
        has = mask.reshape(n, -1).any(axis=1)
        for target, rows in ((with_fg, [i for i in range(n) if has[i]]), (without, [i for i in range(n) if not has[i]])):
            room = verify_count - len(target)
            if rows and room > 0:
                target.extend((_name(names[sample], rows[j], n), image[rows[j]], mask[rows[j]], sample.image)
                              for j in _spaced(len(rows), room))
    chosen = (with_fg + without)[:verify_count]
    if verify_count and not chosen:
        raise SplitUnavailable(f"no validation image of {root} could be read")
    used = {item[3] for item in chosen}
    val_files = {s.image for s in val_samples}
    n_fg = min(len(with_fg), len(chosen))
    if verify_count and len(chosen) < verify_count:
        log.warning("%s: only %d validation slice(s) to verify on (asked for %d)", root, len(chosen), verify_count)
    verify = _build(((name, im, m) for name, im, m, _ in chosen), spec, "validation split",
                    f"{len(chosen)} verification slice(s) of the checkpoint's validation split in {root} "
                    f"({n_fg} with lesion pixels, taken first)")
    c_items: list[tuple] = []
    from_val = 0
    rest = [s for s in val_samples if s.image not in used] + train_samples
    for sample, image, mask in _readable(rest, labels, lambda: len(c_items) >= calib_count):
        n = image.shape[0]
        for i in _spaced(n, calib_count - len(c_items)):
            c_items.append((_name(names[sample], i, n), image[i], mask[i]))
            from_val += int(sample.image in val_files)
    if calib_count and not c_items:
        raise SplitUnavailable(f"no image of {root} is left to calibrate on after the {len(chosen)} verification "
                               "slice(s)")
    if len(c_items) < calib_count:
        log.warning("%s: only %d calibration slice(s) left after the %d verification slice(s) (asked for %d)",
                    root, len(c_items), len(chosen), calib_count)
    calib = _build(c_items, spec, "training data",
                   f"{len(c_items)} calibration slice(s) of {root}: {from_val} of the validation split, "
                   f"{len(c_items) - from_val} of the training split (none used for verification)")
    return calib, verify


def phantom_fallback_warning(reason: str, verify: bool, calibrate: bool) -> str:
    """The warning when the phantom stands in for the model's own data."""
    what = " and ".join(w for w, on in (("verifying", verify), ("calibrating", calibrate)) if on)
    return (f"{what} on rendered phantom images (hemseg.phantom), not on the model's own data: {reason}; "
            "give --calib DATA to use real images")
