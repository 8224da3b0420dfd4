"""Device choice, mixed precision and determinism for training and evaluation.

- ``auto`` picks CUDA when ``torch.cuda.is_available()``, else the CPU. ``cuda`` without a usable GPU is an error,
  never a silent CPU run.
- On CUDA, training uses ``torch.autocast`` with bfloat16 when the GPU supports it (no loss scaling needed), else
  float16 with a ``GradScaler``; models and inputs use the channels-last memory format; cuDNN autotuning is on (so
  CUDA runs are fast but not bit-reproducible).
- On the CPU, training runs in float32 and is deterministic: seeded RNGs, ``torch.use_deterministic_algorithms(True,
  warn_only=True)`` for the duration of the run, and ``num_workers=0`` by default, so two runs with the same seed,
  data and thread count give identical weights and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from typing import Iterator

import torch

from hemseg.errors import UsageError

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch.device (see the module docstring)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            built = torch.version.cuda or "none"
            raise UsageError(f"--device {name}: CUDA is not available here (torch {torch.__version__}, built for CUDA "
                             f"{built}, {torch.cuda.device_count()} GPU(s) visible); use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
        return dev
    raise UsageError(f"unknown device {name!r}; choose from {', '.join(DEVICE_CHOICES)}")


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training on ``device``: bfloat16 / float16 on CUDA, ``None`` (float32) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def amp_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


@contextlib.contextmanager
def run_mode(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on the CPU, cuDNN autotuning on CUDA; the previous global settings come back after."""
    import torch.utils.deterministic as det

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = det.fill_uninitialized_memory
    prev_bench = torch.backends.cudnn.benchmark
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
            # NaN-filling every new empty tensor only helps to debug nondeterminism, and costs ~15% on the CPU
            det.fill_uninitialized_memory = False
        else:
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        det.fill_uninitialized_memory = prev_fill
        torch.backends.cudnn.benchmark = prev_bench


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


def versions() -> dict[str, str]:
    """Versions of the software that produced a model (stored in checkpoints)."""
    import cv2
    import numpy
    import torchvision

    import hemseg

    out = {"hemseg": hemseg.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
           "numpy": numpy.__version__, "cv2": cv2.__version__, "python": platform.python_version()}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    # plain str: torch.__version__ is a TorchVersion, which weights_only loading refuses
    return {k: str(v) for k, v in out.items()}
