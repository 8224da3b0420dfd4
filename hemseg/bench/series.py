"""Series throughput: a series of slices (default 32) through the runtime's own :class:`Segmenter`, the code
``hemseg predict`` runs on a volume or DICOM series (with the path's post-processing, i.e. predict's clean-up),
once strictly sequential (``workers=0``) and once pipelined (preprocessing of the next batches on worker threads
while the engine infers the current one).

Reported per path (``series`` in the result JSON): slices/s of both runs (wall clock over the whole series,
post-processing included), their ratio, whether the masks are identical (they must be), the per-slice stage times
of the sequential run, and ``stage_bound_slices_per_s``: the rate of the slowest stage alone, i.e. what perfect
overlap could reach if the stages did not share CPU cores (on a machine with few cores they do, and the pipelined
rate stays below it).

Both runs are timed after one untimed pass (the first run of a batch shape builds kernels and caches, which made a
cold sequential run look slower than the pipelined one after it), and their repeats alternate, so neither run
profits from going second. With ``workers`` 0 there is no pipelined run: its fields are None (the table shows
"-"), never a ratio of two timings of the same code.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hemseg.bench.pipeline import BenchPath
from hemseg.runtime.backends.select import LoadedModel
from hemseg.runtime.model_meta import ModelMetadata
from hemseg.runtime.postprocess import PostprocessConfig
from hemseg.runtime.segmenter import Segmenter

SERIES_SLICES = 32
SERIES_BATCH = 8


def _timed(seg: Segmenter, images: list[np.ndarray]) -> tuple[float, list]:
    t0 = time.perf_counter()
    preds = seg(images)
    return time.perf_counter() - t0, preds


def measure_series(path: BenchPath, metadata: ModelMetadata, pool: list[np.ndarray], slices: int = SERIES_SLICES,
                   batch_size: int = SERIES_BATCH, workers: int | str = "auto", repeats: int = 1) -> dict:
    """Series throughput of ``path`` on ``slices`` slices cycled from ``pool`` (module docstring)."""
    images = [pool[i % len(pool)] for i in range(slices)]
    loaded = LoadedModel(runner=path.runner, metadata=metadata, path=Path(path.name), backend=path.name,
                         reason="hemseg-bench series")
    config = path.postprocess or PostprocessConfig(threshold=metadata.threshold)  # predict's clean-up, like the path
    gpu = path.gpu_preprocessor is not None
    # the Segmenters borrow the path's runner: they are not closed here (the path closes its runner)
    seq = Segmenter(loaded, config, gpu_preprocess=gpu, batch_size=batch_size, workers=0)
    pipe = Segmenter(loaded, config, gpu_preprocess=gpu, batch_size=batch_size, workers=workers)
    pipelined = pipe.workers > 0
    seq(images)  # untimed: the first pass of each batch shape is not the series' rate
    seq_s = pipe_s = float("inf")
    preds: list = []
    pipe_preds: list = []
    for _ in range(max(1, repeats)):  # alternating: neither run profits from going second
        t, preds = _timed(seq, images)
        seq_s = min(seq_s, t)
        if pipelined:
            t, pipe_preds = _timed(pipe, images)
            pipe_s = min(pipe_s, t)
    per_slice = {k: float(np.mean([p.timings[k] for p in preds]))
                 for k in ("preprocess", "copy_in", "infer", "copy_out", "postprocess")}
    engine = per_slice["copy_in"] + per_slice["infer"] + per_slice["copy_out"]
    slowest = max(per_slice["preprocess"], engine, per_slice["postprocess"])
    return {
        "path": path.name,
        "slices": slices,
        "batch_size": batch_size,
        "workers": pipe.workers,
        "sequential_slices_per_s": slices / seq_s,
        "pipelined_slices_per_s": slices / pipe_s if pipelined else None,
        "pipelined_vs_sequential": seq_s / pipe_s if pipelined else None,
        "sequential_wall_s": seq_s,
        "pipelined_wall_s": pipe_s if pipelined else None,
        "identical_masks": (all(np.array_equal(a.mask, b.mask) for a, b in zip(preds, pipe_preds))
                            if pipelined else None),
        "stage_ms_per_slice": per_slice,
        "stage_bound_slices_per_s": 1000.0 / slowest if slowest > 0 else None,
        "repeats": max(1, repeats),
    }
