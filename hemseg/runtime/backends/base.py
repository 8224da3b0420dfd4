"""The one small backend interface every inference engine implements."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass

import numpy as np

from hemseg.errors import BackendUnavailable


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
