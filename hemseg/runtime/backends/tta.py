"""Flip test-time augmentation as a :class:`Runner` around any other Runner (``hemseg predict --tta``,
``hemseg eval --tta``).

:class:`FlipTTARunner` runs the wrapped engine twice, on the batch and on its left-right mirror, mirrors the
second output back and returns the logit of the mean of the two probabilities. That is nnU-Net's mirroring
test-time augmentation restricted to the one flip hemseg trains with (both recipes flip left-right with
probability 0.5; up-down flips are never trained, since the cranio-caudal order is anatomical). Averaging
probabilities rather than logits keeps the output a calibrated mean prediction, and returning it as a logit keeps
the rest of the pipeline (:func:`hemseg.runtime.pipeline.run_batch`: a threshold in the logit domain, the clean-up,
``--save-prob``) unchanged: the pipeline does not know that TTA is on.

Cost: two inferences per batch. The combination is exact in log space (no clipping of probabilities), on host
(NumPy) arrays for :meth:`~FlipTTARunner.infer` and on CuPy arrays for :meth:`~FlipTTARunner.infer_device`, so the
GPU route stays on the GPU.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from hemseg.runtime.backends.base import InferTimings, Runner, finite_logits


def _softplus(xp: Any, x):
    return xp.logaddexp(0.0, x)


def _log_mean_exp(xp: Any, terms: Sequence[Any]):
    """``log(mean(exp(t) for t in terms))``, elementwise and overflow-free."""
    top = terms[0]
    for t in terms[1:]:
        top = xp.maximum(top, t)
    total = sum(xp.exp(t - top) for t in terms)
    return xp.log(total / len(terms)) + top


def mean_probability_logits(logits: Sequence[Any], xp: Any = np):
    """The logit of the mean of ``sigmoid(z)`` over ``logits`` (arrays of one shape), computed in log space:
    ``log(mean p) - log(mean (1 - p))`` with ``log p = -softplus(-z)`` and ``log(1 - p) = -softplus(z)``."""
    if not logits:
        raise ValueError("nothing to average")
    log_p = _log_mean_exp(xp, [-_softplus(xp, -z) for z in logits])
    log_q = _log_mean_exp(xp, [-_softplus(xp, z) for z in logits])
    return (log_p - log_q).astype(xp.float32)


class FlipTTARunner(Runner):
    """``inner`` on the batch and on its left-right mirror; the logit of the mean probability (module docstring).
    Closing it closes ``inner``. ``last_timings`` are the two inferences' times summed."""

    def __init__(self, inner: Runner) -> None:
        super().__init__()
        if isinstance(inner, FlipTTARunner):
            raise ValueError("flip TTA is already on for this runner")
        self.inner = inner
        self.name = f"{inner.name}+flip-tta"
        self.input_dtype = inner.input_dtype
        self.on_gpu = inner.on_gpu

    def __getattr__(self, item: str) -> Any:  # precision, device, ... of the wrapped engine (read-only)
        if item == "inner":
            raise AttributeError(item)
        return getattr(self.inner, item)

    def _both(self, run, batch, xp: Any):
        plain = run(batch)
        first = InferTimings() + self.inner.last_timings  # a copy: some runners update their timings in place
        mirrored = run(xp.ascontiguousarray(batch[..., ::-1]))
        self.last_timings = first + self.inner.last_timings
        plain = finite_logits(self.inner, xp.asarray(plain, dtype=xp.float32), xp)  # each view's own counts
        mirrored = finite_logits(self.inner, xp.asarray(mirrored, dtype=xp.float32), xp,
                                 view="the left-right mirrored image (flip TTA)")
        return mean_probability_logits([plain, mirrored[..., ::-1]], xp)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._both(self.inner.infer, batch, np))

    def infer_device(self, batch):
        import cupy

        xp = cupy.get_array_module(batch)
        return xp.ascontiguousarray(self._both(self.inner.infer_device, batch, xp))

    def close(self) -> None:
        self.inner.close()
