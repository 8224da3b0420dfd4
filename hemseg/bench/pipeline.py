"""One measured path: preprocessing (OpenCV on the CPU, or CUDA) + a Runner + post-processing, timed by stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from hemseg.runtime.backends.base import Runner, now_ms
from hemseg.runtime.postprocess import resize_back
from hemseg.runtime.preprocess import PreprocessSpec, preprocess_batch

STAGES = ("preprocess", "copy_in", "infer", "copy_out", "postprocess")


@dataclass
class BenchPath:
    """A path ready to run: ``run(images)`` returns the masks at the original sizes and the stage times in ms."""

    name: str
    runner: Runner
    spec: PreprocessSpec
    threshold: float
    gpu_preprocessor: Any = None  # hemseg.runtime.cuda GpuPreprocessor when preprocessing runs on the GPU
    description: str = ""
    gpu_memory_mb: Callable[[], float | None] = field(default=lambda: None)

    def run(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], dict[str, float]]:
        stages = dict.fromkeys(STAGES, 0.0)
        t0 = now_ms()
        if self.gpu_preprocessor is not None:
            batch = self.gpu_preprocessor.run(images, dtype=self.runner.input_dtype)
            stages["preprocess"] = now_ms() - t0
            logits = self.runner.infer_device(batch)
            logits = logits.get() if hasattr(logits, "get") else logits  # device -> host once, for post-processing
        else:
            batch = preprocess_batch(images, self.spec)
            stages["preprocess"] = now_ms() - t0
            logits = self.runner.infer(batch)
        t = self.runner.last_timings
        stages["copy_in"], stages["infer"], stages["copy_out"] = t.copy_in, t.infer, t.copy_out
        t1 = now_ms()
        logit_threshold = float(np.log(self.threshold / (1.0 - self.threshold)))  # sigmoid(x) > t  <=>  x > logit(t)
        masks = [resize_back((logits[i, 0] > logit_threshold).astype(np.uint8), im.shape[:2])
                 for i, im in enumerate(images)]
        stages["postprocess"] = now_ms() - t1
        return masks, stages

    def close(self) -> None:
        self.runner.close()
