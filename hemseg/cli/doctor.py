"""``hemseg doctor``: what this installation can do, one line per component (for bug reports and site checks).

The ``openvino`` line recommends installing OpenVINO where the CPU has bf16 instructions (``auto`` then picks it).

Every probe is guarded: a missing or broken package gives its line ("not installed", or the import error) instead
of a traceback. torch is only looked up (``importlib.util.find_spec`` and the distribution metadata), never
imported, so the command stays cheap and works in a runtime-only install.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
from typing import Callable

import click

from hemseg.runtime.allocator import allocator_state
from hemseg.runtime.cpu_features import usable_cpus


def _version(module: str, attr: str = "__version__") -> str:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return "not installed"
    except Exception as exc:  # broken installs raise all sorts of things
        return f"broken ({type(exc).__name__}: {exc})"
    return str(getattr(mod, attr, "unknown version"))


def _onnxruntime() -> str:
    from hemseg.errors import DependencyError
    from hemseg.runtime.backends.ort import import_ort

    try:
        onnxruntime = import_ort()  # as the runtime imports it: telemetry off
    except DependencyError:
        return "not installed"
    except Exception as exc:
        return f"broken ({type(exc).__name__}: {exc})"
    return f"{onnxruntime.__version__} (providers: {', '.join(onnxruntime.get_available_providers())})"


def _cpu() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    usable = usable_cpus()
    return f"{model}, {os.cpu_count()} logical cores ({usable} usable by this process)"


def _cuda() -> str:
    try:
        import cupy
    except ImportError:
        return f"CuPy not installed (GPU preprocessing and TensorRT unavailable; {_ort_cuda()})"
    except Exception as exc:
        return f"CuPy broken ({type(exc).__name__}: {exc})"
    try:
        rt = cupy.cuda.runtime
        count = rt.getDeviceCount()
        parts = [f"CuPy {cupy.__version__}, CUDA runtime {rt.runtimeGetVersion()}, CUDA driver API "
                 f"{rt.driverGetVersion()}",
                 f"{count} device(s)"]
        for i in range(count):
            p = rt.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
            parts.append(f"#{i} {name} sm_{p['major']}{p['minor']} {p['totalGlobalMem'] / 2**30:.1f} GiB")
        return "; ".join(parts)
    except Exception as exc:  # no driver / no device
        return f"CuPy {cupy.__version__}, but CUDA is unusable: {exc}"


def _ort_cuda() -> str:
    """Whether ONNX Runtime here has its CUDA execution provider (onnxruntime-gpu): the GPU backend CuPy does not
    decide."""
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except Exception:  # not installed, or broken: its own doctor line says which
        return "ort-cuda unavailable (no usable onnxruntime)"
    if "CUDAExecutionProvider" in providers:
        return "ort-cuda available (onnxruntime has CUDAExecutionProvider)"
    return "ort-cuda unavailable too (onnxruntime has no CUDAExecutionProvider; pip install onnxruntime-gpu)"


def _cpu_flags() -> str:
    from hemseg.runtime import cpu_features

    env = os.environ.get(cpu_features.ENV)
    if env is not None and not cpu_features.cpu_flags():  # not "no flags line in /proc/cpuinfo"
        return f"none ({cpu_features.ENV} is set and empty, not read from this CPU)"
    said = cpu_features.describe()
    if env is not None:  # the override, not this CPU
        said += f" (set by {cpu_features.ENV}, not read from this CPU)"
    return said


def _openvino() -> str:
    """OpenVINO's version (looked up, not imported) and whether ``auto`` uses it; recommends installing it on a CPU
    with bf16 instructions, where it is the fastest CPU backend."""
    from hemseg.runtime import cpu_features
    from hemseg.runtime.backends.openvino import openvino_version

    version = openvino_version()
    flag = cpu_features.bf16_flag()
    if version is None:
        if flag is not None:
            return (f"not installed; RECOMMENDED: this CPU has {flag}, on which OpenVINO runs bf16 inference (several "
                    f"times ONNX Runtime FP32): pip install 'hemseg[openvino]', then --backend auto picks it")
        return ("not installed (optional: pip install 'hemseg[openvino]'; this CPU has no bf16 instructions, "
                "ONNX Runtime stays the auto CPU backend)")
    if flag is not None:
        return f"{version} (auto uses it: bf16 on this CPU's {flag})"
    return (f"{version} (installed; auto keeps ONNX Runtime on this CPU without bf16; --backend openvino runs it in "
            f"f32)")


def _tensorrt() -> str:
    try:
        from hemseg.runtime.backends.trt import tensorrt_available
    except Exception as exc:
        return f"cannot check ({type(exc).__name__}: {exc})"
    ok, info = tensorrt_available()
    if not ok:
        return f"unavailable: {info}"
    from hemseg.errors import BackendUnavailable
    from hemseg.runtime.trt_sidecar import current_gpu

    try:  # engines are built and run through CuPy on a CUDA device: importable alone is not usable (QA, stop 58)
        gpu = current_gpu(0)
    except BackendUnavailable as exc:
        return f"{info} importable, but unusable here: {exc}"
    return f"{info} importable, CUDA device {gpu.name} found (no engine built or loaded by this check)"


def _torch() -> str:
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return "not installed (runtime-only install)"
    try:
        from importlib.metadata import version

        return f"{version('torch')} (installed; the runtime does not use it)"
    except Exception:
        return "installed (version unknown; the runtime does not use it)"


def _dicom_extra() -> str:
    """highdicom (DICOM SEG output, --format auto's for DICOM inputs) and pynetdicom (hemseg serve), looked up only."""
    from importlib.metadata import PackageNotFoundError, version

    have = []
    for dist in ("highdicom", "pynetdicom"):
        try:
            have.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    if len(have) == 2:
        return ", ".join(have)
    return ((", ".join(have) + "; " if have else "") + "DICOM SEG output (predict's default for DICOM inputs) and "
            "hemseg serve need highdicom and pynetdicom: pip install 'hemseg[dicom]'")


#: what hemseg-export needs, by what it makes (distribution names; looked up, never imported)
EXPORT_NEEDS = (("onnx, onnx-fp16, onnx-int8", ("torch", "torchvision", "onnx", "onnxscript", "onnxconverter-common"),
                 "train"),
                ("openvino-int8", ("torch", "torchvision", "onnx", "onnxscript", "nncf", "openvino"), "train,nncf"))


def _export() -> str:
    """Which hemseg-export formats this installation can make, and what the others need (TensorRT: its own line)."""
    from importlib.metadata import PackageNotFoundError, version

    def missing(dists) -> list[str]:
        out = []
        for dist in dists:
            try:
                version(dist)
            except PackageNotFoundError:
                out.append(dist)
        return out

    can, cannot = [], []
    for formats, dists, extra in EXPORT_NEEDS:
        lacking = missing(dists)
        if lacking:
            cannot.append(f"{formats} need {', '.join(lacking)} (pip install 'hemseg[{extra}]')")
        else:
            can.append(formats)
    said = f"hemseg-export makes {', '.join(can)}" if can else "hemseg-export cannot run here"
    return said + (f"; {'; '.join(cannot)}" if cannot else "") + " (trt: see the tensorrt line)"


def _hemseg() -> str:
    from hemseg import __version__

    return f"{__version__} ({os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})"


PROBES: tuple[tuple[str, Callable[[], str]], ...] = (
    ("hemseg", _hemseg),
    ("python", lambda: f"{platform.python_version()} ({sys.executable})"),
    ("platform", platform.platform),
    ("numpy", lambda: _version("numpy")),
    ("opencv", lambda: _version("cv2")),
    ("onnxruntime", _onnxruntime),
    ("pydicom", lambda: _version("pydicom")),
    ("nibabel", lambda: _version("nibabel")),
    ("dicom extra", _dicom_extra),
    ("cpu", _cpu),
    ("cpu flags", _cpu_flags),
    ("allocator", allocator_state),
    ("openvino", _openvino),
    ("cuda", _cuda),
    ("tensorrt", _tensorrt),
    ("torch", _torch),
    ("export", _export),
)


def report_lines() -> list[str]:
    """One ``name: value`` line per probe; a probe that crashes reports its error on its line."""
    lines = []
    for name, probe in PROBES:
        try:
            value = probe()
        except Exception as exc:
            value = f"check failed ({type(exc).__name__}: {exc})"
        lines.append(f"{name + ':':<13}{value}")
    return lines


@click.command()
def doctor() -> None:
    """Print versions, CPU, CUDA/TensorRT availability: one line each."""
    for line in report_lines():
        click.echo(line)
