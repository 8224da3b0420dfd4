"""Machine and library information recorded with every benchmark result."""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import sys
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _gpu() -> dict | None:
    """GPU name, memory and CUDA versions via CuPy or torch, whichever is importable; None without a CUDA device.
    Neither gives the NVIDIA driver's own version (e.g. 580.x): CuPy the CUDA version the driver supports
    (``cuda_driver_api``, e.g. 12040), torch the CUDA toolkit it was built with (``cuda_toolkit``). Results before
    stop 58 called either ``driver``."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            return {"name": props["name"].decode(), "compute_capability": f"{props['major']}.{props['minor']}",
                    "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                    "cuda_driver_api": str(cupy.cuda.runtime.driverGetVersion()), "via": "cupy"}
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {"name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1), "cuda_toolkit": torch.version.cuda, "via": "torch"}
    except Exception:
        pass
    return None


#: environment variables that set library thread pools, recorded with every benchmark (they change its ratios)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _threads() -> dict:
    """The thread settings the measurement ran with: the environment variables, and torch's intra-op threads when
    torch is already imported (it is not imported for this)."""
    out: dict = {k: os.environ.get(k) for k in THREAD_VARS}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_intra_op"] = int(torch.get_num_threads())
    return out


def machine_info() -> dict:
    from hemseg.runtime import cpu_features
    from hemseg.runtime.allocator import allocator_state

    libs = {m: _version(m) for m in ("hemseg", "numpy", "cv2", "onnxruntime", "openvino", "torch", "torchvision", "cupy",
                                     "tensorrt")}
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": cpu_features.usable_cpus(),  # what taskset / a container allows this process
        "cpu_flags": cpu_features.notable_flags(),
        # set: the flags above are this override, not the CPU's (every bf16 / INT8 choice followed it)
        "cpu_flags_override": os.environ.get(cpu_features.ENV) or None,
        # and then the CPU's own, which the override hid from the record (QA, stop 59)
        "cpu_flags_hardware": (cpu_features.notable_flags(cpu_features.hardware_flags())
                               if os.environ.get(cpu_features.ENV) else None),
        "threads": _threads(),
        "gpu": _gpu(),
        "libraries": {k: v for k, v in libs.items() if v is not None},
        "allocator": allocator_state(),
    }


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS since the last :func:`reset_peak_rss`) in MB, from /proc/self/status (Linux)."""
    cur = peak = float("nan")
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return cur, peak


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter for this process (Linux ``clear_refs`` 5); False when not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
