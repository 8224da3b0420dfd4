"""Phase 0: what the check runs on (nvidia-smi, lscpu, library versions, ``hemseg doctor``, the carried wheels)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from gpu_check.common import PhaseRecord

NVSMI_FIELDS = ("name", "driver_version", "memory.total", "clocks.max.sm", "clocks.max.memory", "power.limit",
                "pstate", "compute_cap")
LIBRARIES = ("torch", "torchvision", "cupy", "numpy", "cv2", "onnx", "onnxruntime", "onnxscript",
             "onnxconverter_common", "pydicom", "nibabel", "click", "tqdm", "pytest")


def _run(cmd: list[str], timeout: float = 30.0) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, f"{type(exc).__name__}: {exc}"
    return p.returncode, (p.stdout + p.stderr).strip()


def nvidia_smi(rec: PhaseRecord) -> dict | None:
    if shutil.which("nvidia-smi") is None:
        rec.skip("nvidia-smi", "not on PATH (no NVIDIA driver on this machine)")
        return None
    rc, text = _run(["nvidia-smi", f"--query-gpu={','.join(NVSMI_FIELDS)}", "--format=csv,noheader"])
    if rc != 0:
        rec.skip("nvidia-smi", f"exit {rc}: {text[:300]}")
        return None
    gpus = [dict(zip(NVSMI_FIELDS, (v.strip() for v in line.split(",")))) for line in text.splitlines() if line]
    return {"gpus": gpus}


def lscpu(rec: PhaseRecord) -> dict | None:
    if shutil.which("lscpu") is None:
        rec.skip("lscpu", "not on PATH")
        return None
    rc, text = _run(["lscpu"])
    keep = ("Model name", "Architecture", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)",
            "L3 cache", "CPU max MHz")
    info = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keep:
            info[key.strip()] = value.strip()
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("Flags")), [])
    info["isa"] = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return info


def versions() -> dict:
    import importlib

    out = {}
    for name in LIBRARIES:
        try:
            mod = importlib.import_module(name)
            out[name] = str(getattr(mod, "__version__", "unknown"))
        except Exception as exc:   # a missing or broken package is a finding, not a crash
            out[name] = f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    return out


def torch_cuda() -> dict:
    try:
        import torch
    except ImportError as exc:
        return {"available": False, "reason": f"torch not importable: {exc}"}
    info = {"available": bool(torch.cuda.is_available()), "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}
    if info["available"]:
        p = torch.cuda.get_device_properties(0)
        info.update({"name": p.name, "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
                     "memory_gib": round(p.total_memory / 2**30, 1)})
    return info


def run(rec: PhaseRecord, args) -> None:
    from hemseg.bench.machine import machine_info

    rec.doc["wheels"] = os.environ.get("GPU_CHECK_WHEELS", "not recorded")
    rec.doc["nvidia_smi"] = nvidia_smi(rec)
    rec.doc["lscpu"] = lscpu(rec)
    rec.doc["versions"] = versions()
    rec.doc["torch_cuda"] = torch_cuda()
    if not rec.doc["torch_cuda"]["available"]:
        rec.skip("torch CUDA", rec.doc["torch_cuda"].get("reason", "torch.cuda.is_available() is False"))
    rec.doc["machine"] = machine_info()
    rc, text = _run([sys.executable, "-m", "hemseg", "doctor"], timeout=60)
    rec.doc["doctor"] = {"exit": rc, "lines": text.splitlines()[-40:]}
    rec.finish()
