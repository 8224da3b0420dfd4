"""The one small backend interface every inference engine implements."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass

import numpy as np

from hemseg.errors import BackendUnavailable, NonFiniteLogits


@dataclass
class InferTimings:
    """Milliseconds spent in the last :meth:`Runner.infer` call, by stage."""

    copy_in: float = 0.0
    infer: float = 0.0
    copy_out: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"copy_in": self.copy_in, "infer": self.infer, "copy_out": self.copy_out}

    def __add__(self, other: "InferTimings") -> "InferTimings":
        """Stage by stage: the times of two inferences run one after the other (TTA views, ensemble members)."""
        return InferTimings(self.copy_in + other.copy_in, self.infer + other.infer, self.copy_out + other.copy_out)


class Runner(abc.ABC):
    """Runs a loaded model on a preprocessed batch.

    ``infer`` takes a float32 host batch (N, 3, S, S) and returns float32 host logits (N, 1, S, S), recording stage times
    in ``last_timings``. Runners that live on a GPU also implement ``infer_device`` taking and returning CuPy arrays, so
    GPU preprocessing can write straight into the engine's input with no host round trip.
    """

    #: short backend name, e.g. "ort-cpu", "ort-cuda", "trt"
    name: str = "runner"
    #: dtype the engine's input binding expects (float32, or float16 for an engine with an FP16 input)
    input_dtype: np.dtype = np.dtype(np.float32)
    #: True when inputs may be given as device arrays to ``infer_device``
    on_gpu: bool = False

    def __init__(self) -> None:
        self.last_timings = InferTimings()

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, S, S) host batch -> float32 (N, 1, S, S) host logits."""

    def infer_device(self, batch):
        """Device-array inference; only GPU runners support it."""
        raise BackendUnavailable(f"backend {self.name} takes host arrays only (no device-array input)")

    def close(self) -> None:
        """Release the engine's resources (idempotent)."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def now_ms() -> float:
    return time.perf_counter() * 1000.0


def finite_logits(runner: Runner, logits, xp=np, view: str = ""):
    """``logits`` (a host or, with ``xp`` cupy, a device array), refused with :class:`NonFiniteLogits` naming the
    model file when any is NaN or infinite. A NaN never passes the threshold, so a model with one NaN weight gave an
    empty mask for every input, exit 0 (a QA finding of stop 54); an infinite logit turns into NaN when resampled to
    the image's size. Checked on every batch by the pipeline, and on each member's (each view's) logits before an
    ensemble (flip TTA) averages them, where one member's infinity became a finite mean. (~0.1 ms per 256 px slice.)"""
    if bool(xp.isfinite(logits).all()):
        return logits
    nan = int(xp.count_nonzero(xp.isnan(logits)))
    inf = int(xp.count_nonzero(xp.isinf(logits)))
    on = f" on {view}" if view else ""  # flip TTA's mirrored view: without --tta the same input segments
    raise NonFiniteLogits(_model_of(runner), f"{getattr(runner, 'name', 'the engine')}{on} produced {nan + inf} "
                          f"non-finite logits ({nan} NaN, {inf} infinite) in a batch of {len(logits)} slice(s): no "
                          "mask can be made from them (a damaged model, e.g. NaN weights, or a numeric overflow, "
                          "e.g. an FP16 model on this input)")


def _model_of(runner) -> str:
    """The model file a Runner runs (an ONNX file, a TensorRT plan; through a test-time-augmentation wrapper), else
    its name (PyTorch)."""
    for attr in ("path", "plan_path"):
        if getattr(runner, attr, None):
            return str(getattr(runner, attr))
    inner = getattr(runner, "__dict__", {}).get("inner")
    return _model_of(inner) if inner is not None else str(getattr(runner, "name", "model"))
