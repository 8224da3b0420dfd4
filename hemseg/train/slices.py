"""Turn dataset samples into filtered 2D training slices, once (numpy + OpenCV; no torch).

Each slice of each sample becomes a :class:`SliceItem` holding the *filtered* uint8 image (resize, CLAHE, NLM,
bilateral: :func:`hemseg.runtime.preprocess.filter_uint8`, the runtime's own function) and the mask resized with
nearest neighbour (:func:`hemseg.runtime.preprocess.resize_mask`). Non-local means is slow (tens of ms per 256 px
slice), so a whole dataset is filtered once, up front, and kept in memory (``size * size * 2`` bytes per slice: 128 KiB
at 256 px); augmentation and normalization run afterwards, per batch.

This module is kept free of torch so that its worker function can run in a small process pool (``forkserver``
context: the workers import only numpy, OpenCV and hemseg.runtime).
"""

from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hemseg.runtime.preprocess import PreprocessSpec, filter_uint8, resize_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceItem:
    """One training slice: filtered uint8 image and {0,1} uint8 mask, both ``(size, size)``."""

    stem: str
    category: str
    slice_index: int
    n_slices: int
    image: np.ndarray
    mask: np.ndarray

    @property
    def name(self) -> str:
        """``stem`` for one-slice samples, ``stem_s<k>`` (3 digits) for a slice of a volume."""
        return self.stem if self.n_slices == 1 else f"{self.stem}_s{self.slice_index:03d}"


def _prepare_sample(args: tuple) -> list[SliceItem]:
    from hemseg.runtime.dataset import load_pair

    sample, spec, labels = args
    image, mask = load_pair(sample, labels=labels)
    n = image.shape[0]
    return [SliceItem(sample.stem, sample.category, i, n, filter_uint8(image[i], spec),
                      resize_mask(mask[i], spec.size)) for i in range(n)]


def _prepare_sample_in_pool(args: tuple) -> list[SliceItem] | tuple[str, str, str]:
    """Pool worker: hemseg errors do not pickle back intact (custom ``__init__``), so send their parts instead."""
    from hemseg.errors import HemsegError

    try:
        return _prepare_sample(args)
    except HemsegError as exc:
        return ("error", str(getattr(exc, "path", "")), getattr(exc, "reason", str(exc)))


def _raise_from_pool(err: tuple[str, str, str]) -> None:
    from hemseg.errors import DatasetError, InputError

    _, path, reason = err
    raise InputError(path, reason) if path else DatasetError(reason)


def prepare_samples(samples: Sequence, spec: PreprocessSpec, labels: Sequence[int] | None = None, workers: int = 0,
                    progress: bool = True, desc: str = "preprocessing") -> list[list[SliceItem]]:
    """Load and filter every slice of ``samples``: one list of slices per sample, in order.

    ``workers > 1`` filters in a process pool of that size (one sample per task).
    """
    from tqdm.auto import tqdm

    jobs = [(s, spec, list(labels) if labels is not None else None) for s in samples]
    out: list[list[SliceItem]] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="image", disable=not progress, leave=False)
    try:
        if workers > 1 and len(jobs) > 1:
            ctx = multiprocessing.get_context("forkserver")
            with ctx.Pool(min(workers, len(jobs))) as pool:
                for items in pool.imap(_prepare_sample_in_pool, jobs, chunksize=1):
                    if isinstance(items, tuple):
                        _raise_from_pool(items)
                    out.append(items)
                    bar.update(1)
        else:
            for job in jobs:
                out.append(_prepare_sample(job))
                bar.update(1)
    finally:
        bar.close()
    log.info("preprocessed %d slice(s) of %d sample(s) at %d px (%s)", sum(map(len, out)), len(jobs), spec.size,
             ", ".join(spec.enabled_steps))
    return out


def prepare_items(samples: Sequence, spec: PreprocessSpec, labels: Sequence[int] | None = None, workers: int = 0,
                  progress: bool = True, desc: str = "preprocessing") -> list[SliceItem]:
    """Like :func:`prepare_samples`, flattened: every slice of every sample, in order."""
    return [it for items in prepare_samples(samples, spec, labels, workers, progress, desc) for it in items]
