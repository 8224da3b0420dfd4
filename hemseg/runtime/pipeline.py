"""The one inference pipeline: uint8 slices -> preprocessing -> a :class:`Runner` -> threshold and clean-up -> masks.

Every hemseg path that turns images into masks runs :func:`run_batch` (through :class:`Pipeline`): ``hemseg predict``
and :class:`hemseg.runtime.segmenter.Segmenter`, ``hemseg-bench`` (:class:`hemseg.bench.pipeline.BenchPath`), the
export's parity gates (:mod:`hemseg.export.parity`) and ``hemseg eval`` (:mod:`hemseg.train.evaluate`). The engines
differ only in their Runner: ONNX Runtime and TensorRT in :mod:`hemseg.runtime.backends`, PyTorch in
:mod:`hemseg.train.torch_runner` (outside the runtime, which never imports torch).

Steps of :func:`run_batch`, for a batch of uint8 ``(H, W)`` slices of any sizes (the CPU route's per-slice steps are
also callable on their own, :func:`preprocess_slice`, :func:`infer_host`, :func:`postprocess_slice`, so the
Segmenter can overlap them across batches without a second copy of the pipeline):

1. ``preprocess``: :func:`hemseg.runtime.preprocess.preprocess` per slice on the CPU (OpenCV, the reference), or a
   :class:`hemseg.runtime.cuda.gpu_preprocess.GpuPreprocessor` writing the batch on the GPU in the engine's input
   dtype (its upload is reported as ``copy_in``);
2. ``copy_in`` / ``infer`` / ``copy_out``: the Runner (``infer`` on host arrays, ``infer_device`` on device arrays;
   the device logits' download counts as ``copy_out``); logits that are not all finite are refused
   (:func:`hemseg.runtime.backends.base.finite_logits`: a NaN never passes a threshold, so a damaged model read as
   "no lesion");
3. ``postprocess``: per slice, :func:`hemseg.runtime.postprocess.postprocess` on the logits (threshold in the logit
   domain, :func:`~hemseg.runtime.postprocess.threshold_logits`, then the configured clean-up) on the logits
   resampled to the slice's size (bilinear; :func:`~hemseg.runtime.postprocess.resample_scores`), so boundaries are
   drawn at the image's resolution, not in steps of the network's grid; with ``return_prob`` also the probability
   map, the sigmoid of those resampled logits.

:data:`CLEANUP` is the clean-up ``hemseg predict`` applies by default; :func:`deployment_postprocess` gives the
config a deployed model runs with, so the bench measures exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from hemseg.runtime.backends.base import Runner, finite_logits, now_ms
from hemseg.runtime.postprocess import PostprocessConfig, at_size, postprocess, sigmoid
from hemseg.runtime.preprocess import PreprocessSpec, preprocess

STAGES = ("preprocess", "copy_in", "infer", "copy_out", "postprocess")

#: Mask clean-up of ``hemseg predict --postprocess`` (the default), at network resolution, in px of a 256 px network
#: (scaled to the model's size with :meth:`PostprocessConfig.scaled`): close 1 px gaps, drop specks under 8 px, fill
#: holes. The threshold always comes from the model. ``--no-postprocess`` thresholds only.
CLEANUP = PostprocessConfig(closing_radius=1, opening_radius=0, min_area=8, fill_holes=True)


def deployment_postprocess(image_size: int, threshold: float, cleanup: bool = True) -> PostprocessConfig:
    """The post-processing a deployed model runs with: :data:`CLEANUP` (or threshold only) scaled to its size, at
    its own threshold."""
    base = CLEANUP if cleanup else PostprocessConfig()
    return base.scaled(int(image_size)).replace(threshold=float(threshold))


@dataclass
class BatchResult:
    """What :func:`run_batch` returns for ``n`` slices.

    ``masks``: uint8 ``{0, 1}`` at each slice's size; ``logits``: float32 ``(n, 1, S, S)`` host array at the network
    resolution; ``probs``: float32 probability maps at each slice's size (``return_prob`` only); ``stages``: ms for
    the whole batch (:data:`STAGES`); ``preprocess_ms``/``postprocess_ms``: the part of those stages spent on each
    slice (the GPU route's preprocessing is shared evenly).
    """

    masks: list[np.ndarray]
    logits: np.ndarray
    stages: dict[str, float]
    preprocess_ms: list[float]
    postprocess_ms: list[float]
    probs: list[np.ndarray] | None = None

    @staticmethod
    def concat(parts: Sequence["BatchResult"]) -> "BatchResult":
        """Several batches' results as one (stage times summed)."""
        parts = list(parts)
        stages = {s: float(sum(p.stages[s] for p in parts)) for s in STAGES}
        probs = None if any(p.probs is None for p in parts) else [q for p in parts for q in p.probs]
        logits = np.concatenate([p.logits for p in parts]) if parts else np.zeros((0, 1, 0, 0), np.float32)
        return BatchResult([m for p in parts for m in p.masks], logits, stages,
                           [t for p in parts for t in p.preprocess_ms], [t for p in parts for t in p.postprocess_ms],
                           probs)


def run_batch(runner: Runner, spec: PreprocessSpec, config: PostprocessConfig, slices: Sequence[np.ndarray],
              gpu_preprocessor: Any = None, return_prob: bool = False) -> BatchResult:
    """The pipeline on one batch of uint8 ``(H, W)`` slices (module docstring)."""
    n = len(slices)
    stages = dict.fromkeys(STAGES, 0.0)
    if gpu_preprocessor is not None:
        t0 = now_ms()
        x = gpu_preprocessor.run(list(slices), dtype=runner.input_dtype)  # synchronizes at its end
        pre = now_ms() - t0
        upload = float(gpu_preprocessor.last_timings.get("upload", 0.0))
        pre_ms = [max(pre - upload, 0.0) / max(n, 1)] * n
        logits_dev = runner.infer_device(x)
        t1 = now_ms()
        logits = finite_logits(runner, np.asarray(logits_dev.get() if hasattr(logits_dev, "get") else logits_dev,
                                                  dtype=np.float32))
        copy_back = now_ms() - t1
        extra_in = upload
    else:
        done = [preprocess_slice(im, spec) for im in slices]
        pre_ms = [ms for _, ms in done]
        logits = infer_host(runner, [x for x, _ in done])
        copy_back = extra_in = 0.0
    t = runner.last_timings
    stages["preprocess"] = float(sum(pre_ms))
    stages["copy_in"] = t.copy_in + extra_in
    stages["infer"] = t.infer
    stages["copy_out"] = t.copy_out + copy_back
    masks, probs, post_ms = [], ([] if return_prob else None), []
    for im, logit in zip(slices, logits):
        mask, prob, ms = postprocess_slice(logit, config, im.shape[:2], return_prob)
        masks.append(mask)
        if probs is not None:
            probs.append(prob)
        post_ms.append(ms)
    stages["postprocess"] = float(sum(post_ms))
    return BatchResult(masks, logits, stages, pre_ms, post_ms, probs)


# -- the steps of run_batch, one slice at a time (the Segmenter's pipelined route runs them on worker threads) ------
def preprocess_slice(image: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, float]:
    """Step 1 on the CPU for one uint8 slice: ``(network input (C, S, S) float32, ms)``."""
    t0 = now_ms()
    x = preprocess(image, spec)
    return x, now_ms() - t0


def infer_host(runner: Runner, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Step 2 on host arrays: the preprocessed slices stacked into one batch -> float32 logits ``(N, 1, S, S)``; the
    Runner's ``last_timings`` hold its stage times."""
    return finite_logits(runner, np.asarray(runner.infer(np.stack(arrays)), dtype=np.float32))


def postprocess_slice(logit: np.ndarray, config: PostprocessConfig, size: tuple[int, int],
                      return_prob: bool = False) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Step 3 for one slice's logits ``(1, S, S)``: ``(mask at size (H, W), probability map or None, ms)``."""
    t0 = now_ms()
    h, w = size
    if return_prob:  # resample once for both the mask and the probability map
        scores, scaled = at_size(logit[0], config, (h, w))
        mask, prob = postprocess(scores, scaled, logits=True), sigmoid(scores)
    else:
        mask, prob = postprocess(logit[0], config, logits=True, out_size=(h, w)), None
    return mask, prob, now_ms() - t0


@dataclass
class Pipeline:
    """A Runner with its preprocessing spec and post-processing config; :meth:`run` is :func:`run_batch`."""

    runner: Runner
    spec: PreprocessSpec
    config: PostprocessConfig
    gpu_preprocessor: Any = None
    batch_size: int = 8

    def run(self, slices: Sequence[np.ndarray], return_prob: bool = False) -> BatchResult:
        """One batch (all ``slices`` at once)."""
        return run_batch(self.runner, self.spec, self.config, slices, self.gpu_preprocessor, return_prob)

    def run_all(self, slices: Sequence[np.ndarray], return_prob: bool = False) -> BatchResult:
        """Any number of slices, in batches of ``batch_size``."""
        slices = list(slices)
        return BatchResult.concat([self.run(slices[i:i + self.batch_size], return_prob)
                                   for i in range(0, len(slices), self.batch_size)])
