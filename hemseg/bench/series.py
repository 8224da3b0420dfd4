"""Series throughput: a series of slices (default 32) through the runtime's own :class:`Segmenter`, the code
``hemseg predict`` runs on a volume or DICOM series (with the path's post-processing, i.e. predict's clean-up),
once strictly sequential (``workers=0``) and once pipelined (preprocessing of the next batches on worker threads
while the engine infers the current one).

Reported per path (``series`` in the result JSON): slices/s of both runs (wall clock over the whole series,
post-processing included), their ratio, whether the masks are identical (they must be), the per-slice stage times
of the sequential run, and ``stage_bound_slices_per_s``: the rate of the slowest stage alone, i.e. what perfect
overlap could reach if the stages did not share CPU cores (on a machine with few cores they do, and the pipelined
rate stays below it).
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


def _run(seg: Segmenter, images: list[np.ndarray], repeats: int) -> tuple[float, list, list[np.ndarray]]:
    """Best wall time (s) of ``repeats`` runs, with the predictions and masks of the last."""
    best = float("inf")
    preds: list = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        preds = seg(images)
        best = min(best, time.perf_counter() - t0)
    return best, preds, [p.mask for p in preds]


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
    seq_s, preds, seq_masks = _run(seq, images, repeats)
    pipe_s, _, pipe_masks = _run(pipe, images, repeats)
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
        "pipelined_slices_per_s": slices / pipe_s,
        "pipelined_vs_sequential": seq_s / pipe_s,
        "sequential_wall_s": seq_s,
        "pipelined_wall_s": pipe_s,
        "identical_masks": all(np.array_equal(a, b) for a, b in zip(seq_masks, pipe_masks)),
        "stage_ms_per_slice": per_slice,
        "stage_bound_slices_per_s": 1000.0 / slowest if slowest > 0 else None,
        "repeats": max(1, repeats),
    }
