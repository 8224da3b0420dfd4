"""One measured path: a Runner inside the runtime's one pipeline (:func:`hemseg.runtime.pipeline.run_batch`), timed
by stage. The post-processing is what ``hemseg predict`` runs by default
(:func:`hemseg.runtime.pipeline.deployment_postprocess`: the model's threshold and the clean-up), so the bench
measures exactly what a deployed model does, stage by stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from hemseg.runtime.backends.base import Runner
from hemseg.runtime.pipeline import STAGES, BatchResult, Pipeline, deployment_postprocess
from hemseg.runtime.postprocess import PostprocessConfig
from hemseg.runtime.preprocess import PreprocessSpec

__all__ = ["STAGES", "BenchPath"]


@dataclass
class BenchPath:
    """A path ready to run: ``run(images)`` returns the masks at the original sizes and the stage times in ms.

    ``postprocess`` defaults to ``hemseg predict``'s (clean-up scaled to ``spec.size``, at ``threshold``).
    """

    name: str
    runner: Runner
    spec: PreprocessSpec
    threshold: float
    gpu_preprocessor: Any = None  # hemseg.runtime.cuda GpuPreprocessor when preprocessing runs on the GPU
    description: str = ""
    #: the CPU threads the engine runs with, as resolved (an engine's default is not the OMP_NUM_THREADS that caps
    #: only torch: a 1-thread torch row beside a 2-thread ONNX Runtime one said neither; QA, stop 56)
    threads: str = ""
    gpu_memory_mb: Callable[[], float | None] = field(default=lambda: None)
    postprocess: PostprocessConfig | None = None

    def __post_init__(self) -> None:
        if self.postprocess is None:
            self.postprocess = deployment_postprocess(self.spec.size, self.threshold)
        self.pipeline = Pipeline(self.runner, self.spec, self.postprocess, self.gpu_preprocessor)

    def run_batch(self, images: list[np.ndarray]) -> BatchResult:
        """The pipeline's full result (masks, logits, stage times) for one batch."""
        return self.pipeline.run(images)

    def run(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], dict[str, float]]:
        result = self.pipeline.run(images)
        return result.masks, result.stages

    def close(self) -> None:
        self.runner.close()
