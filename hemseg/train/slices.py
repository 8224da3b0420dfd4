"""Turn dataset samples into filtered 2D training slices, once (numpy + OpenCV; no torch).

Each slice of each sample becomes a :class:`SliceItem` holding the *filtered* uint8 image (resize, CLAHE, NLM,
bilateral: :func:`hemseg.runtime.preprocess.filter_uint8`, the runtime's own function) and the mask resized with
nearest neighbour (:func:`hemseg.runtime.preprocess.resize_mask`). Non-local means is slow (tens of ms per 256 px
slice), so a whole dataset is filtered once, up front, and kept in memory (``size * size * 2`` bytes per slice: 128 KiB
at 256 px); augmentation and normalization run afterwards, per batch.

The filtering runs in a thread pool, one sample per task, on every CPU this process may use: OpenCV releases the GIL
in its filters, so threads scale like processes without a process pool's start-up (workers importing numpy, OpenCV
and hemseg.runtime), and the result does not depend on the thread count (each sample is filtered on its own; the
order is kept). On a 16-core GPU machine the 2,400-slice phantom's filtering needed about 70 s in the two processes
used before (58.75 ms per slice measured there), inside a 4-minute ``--minutes`` budget
(``benchmarks/results/2026-12-04_h200_gpu-check_*.json``).
This module is kept free of torch.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hemseg.progress import shown
from hemseg.runtime.cpu_features import usable_cpus
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
    #: :func:`hemseg.runtime.dataset.pixel_digests` of the slice as read (None: too little in it to tell apart),
    #: recorded by the model
    digest: str | None = None
    #: the mask at the image's own size, as :func:`numpy.packbits` of its {0, 1} pixels (``native_shape``), None when
    #: that size is the network's (``mask`` is it): validation scores there, as ``hemseg eval`` and deployment do
    native: np.ndarray | None = None
    native_shape: tuple[int, int] | None = None

    def native_mask(self) -> np.ndarray | None:
        """The {0, 1} uint8 mask at the image's own size; None when it is ``mask`` (the network's size)."""
        if self.native is None or self.native_shape is None:
            return None
        h, w = self.native_shape
        return np.unpackbits(self.native, count=h * w).reshape(h, w)

    @property
    def name(self) -> str:
        """``stem`` for one-slice samples, ``stem_s<k>`` (3 digits) for a slice of a volume."""
        return self.stem if self.n_slices == 1 else f"{self.stem}_s{self.slice_index:03d}"


def _prepare_sample(args: tuple) -> list[SliceItem]:
    from hemseg.runtime.dataset import load_pair_digests

    sample, spec, labels = args
    image, mask, _, digests = load_pair_digests(sample, labels=labels)
    n = image.shape[0]
    same = tuple(mask.shape[1:]) == (spec.size, spec.size)
    return [SliceItem(sample.stem, sample.category, i, n, filter_uint8(image[i], spec),
                      resize_mask(mask[i], spec.size), digests[i],
                      None if same else np.packbits(mask[i] != 0), None if same else tuple(mask.shape[1:]))
            for i in range(n)]


#: upper bound of the default thread count: each thread holds one sample's raw image (a whole volume for a 3D
#: sample) while it filters it, so the peak memory grows with the thread count
MAX_FILTER_THREADS = 16


def prepare_samples(samples: Sequence, spec: PreprocessSpec, labels: Sequence[int] | None = None,
                    threads: int | None = None, progress: bool = True,
                    desc: str = "preprocessing") -> list[list[SliceItem]]:
    """Load and filter every slice of ``samples``: one list of slices per sample, in order.

    ``threads``: filtering threads (default :func:`usable_cpus`, at most :data:`MAX_FILTER_THREADS`; 0 or 1: in
    this thread). The result is the same for every value; the first error (in sample order) is raised.
    """
    from tqdm.auto import tqdm

    jobs = [(s, spec, list(labels) if labels is not None else None) for s in samples]
    if threads is None:
        threads = min(usable_cpus(), MAX_FILTER_THREADS)
    n = min(threads, len(jobs))
    out: list[list[SliceItem]] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="image", disable=not shown(progress), leave=False)
    try:
        if n > 1:
            with ThreadPoolExecutor(n, thread_name_prefix="hemseg-filter") as pool:
                futures = [pool.submit(_prepare_sample, job) for job in jobs]
                try:
                    for future in futures:
                        out.append(future.result())
                        bar.update(1)
                finally:
                    for future in futures:  # after an error: start no more samples
                        future.cancel()
        else:
            for job in jobs:
                out.append(_prepare_sample(job))
                bar.update(1)
    finally:
        bar.close()
    log.info("preprocessed %d slice(s) of %d sample(s) at %d px (%s) in %d thread(s)", sum(map(len, out)),
             len(jobs), spec.size, ", ".join(spec.enabled_steps), max(n, 1))
    return out


def prepare_items(samples: Sequence, spec: PreprocessSpec, labels: Sequence[int] | None = None,
                  threads: int | None = None, progress: bool = True, desc: str = "preprocessing") -> list[SliceItem]:
    """Like :func:`prepare_samples`, flattened: every slice of every sample, in order."""
    return [it for items in prepare_samples(samples, spec, labels, threads, progress, desc) for it in items]
