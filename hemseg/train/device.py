"""Device choice, mixed precision and determinism for training and evaluation.

- ``auto`` picks CUDA when ``torch.cuda.is_available()``, else the CPU. ``cuda`` without a usable GPU is an error,
  never a silent CPU run.
- Precision (:func:`resolve_precision`, ``--precision auto|fp32|bf16|fp16``): on CUDA, ``auto`` uses
  ``torch.autocast`` with bfloat16 when the GPU supports it, else float16 with a ``GradScaler``, and the
  channels-last memory format; cuDNN autotuning is on (so CUDA runs are fast but not bit-reproducible). On the CPU,
  ``auto`` uses bfloat16 autocast + channels-last on CPUs with AMX-BF16 or AVX512-BF16 and float32 elsewhere.
- On the CPU, training is deterministic: seeded RNGs, ``torch.use_deterministic_algorithms(True,
  warn_only=True)`` for the duration of the run, and ``num_workers=0`` by default, so two runs with the same seed,
  data and thread count give identical weights and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from dataclasses import dataclass
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


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    """How a run computes: ``name`` (fp32 | bf16 | fp16), the autocast dtype (None: float32), channels-last memory
    format, and whether float16 needs a gradient scaler. See :func:`resolve_precision`."""

    name: str
    autocast: torch.dtype | None
    channels_last: bool

    @property
    def scaler(self) -> bool:
        return self.autocast == torch.float16

    def autocast_context(self, device: torch.device):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)


def resolve_precision(name: str, device: torch.device, flags: frozenset[str] | None = None) -> Precision:
    """``auto`` | ``fp32`` | ``bf16`` | ``fp16`` on ``device`` -> a :class:`Precision`.

    ``auto``: on CUDA, bfloat16 autocast where the GPU supports it, else float16 with loss scaling; on the CPU,
    bfloat16 autocast + channels-last where the CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16, read at run
    time by :mod:`hemseg.runtime.cpu_features`; ``flags`` overrides for tests), else float32. A precision the device
    cannot honour is a :class:`UsageError`, never a silent float32 run.
    """
    from hemseg.runtime.cpu_features import BF16_FLAGS, cpu_flags, has_bf16

    name = (name or "auto").strip().lower()
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if name == "auto":
            name = "bf16" if bf16_ok else "fp16"
        if name == "bf16" and not bf16_ok:
            raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                             "use fp16 or fp32")
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        return Precision(name, dtype, channels_last=True)
    flags = cpu_flags() if flags is None else flags
    if name == "auto":
        name = "bf16" if has_bf16(flags) else "fp32"
    if name == "fp16":
        raise UsageError("--precision fp16 is for CUDA; on the CPU use bf16 (CPUs with AMX or AVX512-BF16) or fp32")
    if name == "bf16" and not has_bf16(flags):
        raise UsageError(f"--precision bf16: this CPU has neither {' nor '.join(BF16_FLAGS)} (bfloat16 would be "
                         "emulated, slower than float32); use --precision fp32 or auto")
    if name == "bf16":
        return Precision("bf16", torch.bfloat16, channels_last=True)
    return Precision("fp32", None, channels_last=False)


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
