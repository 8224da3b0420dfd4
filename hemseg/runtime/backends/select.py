"""Choosing and opening an inference backend: ``auto`` | ``ort-cpu`` | ``ort-cuda`` | ``trt`` | ``openvino`` |
``openvino-f32`` | ``openvino-bf16``.

``auto`` decides by what the model path offers and what is installed, in this order, and logs its choice and why:

1. ``trt`` if the path is a ``.plan`` engine or an export directory with ``model.plan``, and TensorRT is importable;
2. ``ort-cuda`` if there is an ONNX model and onnxruntime offers ``CUDAExecutionProvider``;
3. ``openvino`` (precision auto, i.e. bf16) if there is an ONNX model, OpenVINO is installed (the ``[openvino]``
   extra) and the CPU can do bf16 (``amx_bf16`` or ``avx512_bf16``, see :mod:`hemseg.runtime.cpu_features`);
   and always for an OpenVINO IR ``.xml`` (``model_ov_int8.xml``), which only OpenVINO runs;
4. ``ort-cpu``.

If the chosen backend then cannot run here (:class:`BackendUnavailable`: TensorRT without CuPy or a GPU, an
onnxruntime-gpu whose CUDA provider finds no driver, a broken OpenVINO), ``auto`` says so in a warning and opens the
next one.

The ``openvino*`` names differ only in precision (:mod:`hemseg.runtime.backends.openvino`): ``openvino`` chooses
(bf16 where the CPU can, else f32), ``openvino-f32`` and ``openvino-bf16`` insist (bf16 on a CPU without bf16
instructions is refused).

A named backend is used or refused (:class:`BackendUnavailable` / :class:`ModelError`), never replaced.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from hemseg.errors import BackendUnavailable, EngineNotPortable, ModelError, UsageError
from hemseg.runtime.backends.base import Runner
from hemseg.runtime.model_file import artifacts, resolve
from hemseg.runtime.model_meta import ModelMetadata

log = logging.getLogger(__name__)

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "trt", "openvino", "openvino-f32", "openvino-bf16")


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str


@dataclass
class LoadedModel:
    """An open backend with what it runs: ``path`` is the artifact loaded (``.onnx`` or ``.plan``)."""

    runner: Runner
    metadata: ModelMetadata
    path: Path
    backend: str
    reason: str
    #: the other models of an ensemble (:func:`hemseg.runtime.backends.ensemble.open_ensemble`); ``path`` is the first
    members: tuple[Path, ...] = ()
    #: the export verification status of ``path`` and of each member (filled by hemseg predict's
    #: :func:`hemseg.runtime.predict.export_statuses`; empty until then)
    verification: tuple[str | None, ...] = ()
    #: why those statuses do not cover what this run computes, per model (None where they do; filled with them)
    verification_gaps: tuple[str | None, ...] = ()
    #: an ensemble's models' own metadata, ``path``'s first (``metadata`` is the ensemble's); empty for one model
    member_metadata: tuple[ModelMetadata, ...] = ()


def tensorrt_available() -> tuple[bool, str]:
    """``(True, version)`` when a usable TensorRT imports, else ``(False, reason)`` (asks the trt backend module)."""
    return importlib.import_module("hemseg.runtime.backends.trt").tensorrt_available()


def _ort_cuda_available() -> bool:
    from hemseg.runtime.backends.ort import provider_available

    return provider_available("ort-cuda")


def openvino_preferred() -> tuple[bool, str]:
    """``(True, why)`` when ``auto`` should try OpenVINO before ONNX Runtime on the CPU (step 3 of the module
    docstring), else ``(False, why not)``. Imports nothing."""
    from hemseg.runtime import cpu_features
    from hemseg.runtime.backends.openvino import openvino_version

    flag = cpu_features.bf16_flag()
    if flag is None:
        return False, f"the CPU has neither {' nor '.join(cpu_features.BF16_FLAGS)} (no bf16 for OpenVINO)"
    version = openvino_version()
    if version is None:
        return False, f"the CPU has {flag} but OpenVINO is not installed (pip install 'hemseg[openvino]' for bf16)"
    return True, f"OpenVINO {version} is installed and the CPU has {flag} (bf16 inference)"


def candidates(model: str | Path, backend: str = "auto") -> list[BackendChoice]:
    """The backends to try, in order (one for a named backend), per the module docstring; opens nothing."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend != "auto":
        return [BackendChoice(backend, "requested")]
    model = Path(model)
    if not model.exists():
        raise ModelError(model, "no such file or directory")
    found = artifacts(model)
    if "ovir" in found:
        return [BackendChoice("openvino", f"{model.name} is an OpenVINO IR model (only OpenVINO runs it)")]
    out: list[BackendChoice] = []
    prefix = ""
    if "plan" in found:
        trt_ok, trt_info = tensorrt_available()
        if trt_ok:
            out.append(BackendChoice("trt", f"{found['plan'].name} is a TensorRT engine and TensorRT {trt_info} "
                                            f"is installed"))
        elif "onnx" not in found:
            raise BackendUnavailable(f"{model} is a TensorRT engine, but {trt_info}; or pass an ONNX model")
        else:
            prefix = f"{found['plan'].name} present but TensorRT is unusable; "
    if "onnx" not in found:
        if out:
            return out
        resolve(model, "onnx")  # raises the ModelError explaining what the path is not
    if _ort_cuda_available():
        out.append(BackendChoice("ort-cuda", prefix + "onnxruntime offers CUDAExecutionProvider"))
    ov_ok, ov_why = openvino_preferred()
    if ov_ok:
        out.append(BackendChoice("openvino", prefix + ov_why))
    out.append(BackendChoice("ort-cpu", prefix + "onnxruntime offers no usable CUDAExecutionProvider"
                             + ("" if ov_ok else f"; {ov_why}")))
    return out


def choose_backend(model: str | Path, backend: str = "auto") -> BackendChoice:
    """The first backend :func:`candidates` would try."""
    return candidates(model, backend)[0]


def _open(model: Path, backend: str, device: int, threads: int = 0) -> tuple[Runner, ModelMetadata, Path]:
    if backend == "trt":
        source = resolve(model, "plan")
        trt = importlib.import_module("hemseg.runtime.backends.trt")
        runner = trt.TrtRunner.from_path(source.path, device)
    elif backend.startswith("openvino"):
        from hemseg.runtime.backends.openvino import BACKEND_PRECISION, OpenVinoRunner

        source = resolve(model, "ovir" if "ovir" in artifacts(model) else "onnx")
        runner = OpenVinoRunner.from_path(source.path, BACKEND_PRECISION[backend], backend=backend, threads=threads)
    else:
        from hemseg.runtime.backends.ort import OrtRunner

        source = resolve(model, "onnx")
        runner = OrtRunner.from_path(source.path, backend, device, threads=threads)
    return runner, runner.metadata, source.path


def check_model_path(model) -> Path:
    """``model`` as a Path; UsageError for anything else, or an empty path (``Path('')`` is the current folder: an
    unset shell variable loaded ./model.onnx)."""
    if not isinstance(model, (str, Path)) or not str(model).strip():
        raise UsageError(f"the model must be a path (str or Path) to an .onnx / .plan / .xml file or an export "
                         f"folder, got {model!r}")
    return Path(model)


def open_model(model: str | Path, backend: str = "auto", device: int = 0, threads: int = 0) -> LoadedModel:
    """Open the first backend of :func:`candidates` that works; logs the choice. ``threads`` > 0: that many
    inference threads for a CPU engine (ONNX Runtime intra-op, OpenVINO), else each engine's default (every core).

    Only ``auto`` moves on (with a warning), past :class:`BackendUnavailable`, and past a TensorRT engine that
    cannot run here (:class:`EngineNotPortable`: built by another TensorRT or for another GPU) when an ONNX model
    lies beside it; any other :class:`ModelError` (a bad model, a damaged engine or sidecar) stops.
    """
    model = check_model_path(model)
    options = candidates(model, backend)
    for i, choice in enumerate(options):
        try:
            runner, meta, path = _open(model, choice.backend, device, threads)
        except (BackendUnavailable, EngineNotPortable) as exc:
            if i + 1 == len(options):
                raise
            nxt = options[i + 1]
            log.warning("backend auto: %s is unusable (%s); trying %s", choice.backend, exc, nxt.backend)
            options[i + 1] = BackendChoice(nxt.backend, f"{choice.backend} unusable: {exc}")
            continue
        reason = choice.reason
        if getattr(runner, "precision_reason", None):  # OpenVINO: say which inference precision it runs at, and why
            reason += f"; inference precision {runner.precision} ({runner.precision_reason})"
        log.info("backend %s for %s (%s)", choice.backend, path, reason)
        if device and not getattr(runner, "on_gpu", False):  # (a GPU index given for a CPU backend was dropped silently)
            log.warning("device %s is not used: backend %s runs on the CPU", device, choice.backend)
        return LoadedModel(runner=runner, metadata=meta, path=path, backend=choice.backend, reason=reason)
    raise AssertionError("unreachable")  # candidates() never returns an empty list
