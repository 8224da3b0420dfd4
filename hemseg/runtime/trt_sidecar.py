"""The sidecar ``model.plan.json`` that travels with a TensorRT engine, and the rule for when an engine may run here.

A serialized TensorRT engine is a compiled artifact: it is tied to the TensorRT version and the GPU architecture
that built it, and it carries none of hemseg's metadata. So the builder writes, next to ``model.plan``, a JSON
sidecar with:

``format`` / ``format_version``, ``tensorrt_version``, ``gpu_name``, ``compute_capability`` (``"9.0"``),
``profile`` (``{"min", "opt", "max"}`` batch sizes), ``image_size``, ``precision`` (``"fp16"``), ``source_onnx``
(file name) and ``source_onnx_sha256``, ``plan_sha256``, ``preprocess`` (the :class:`PreprocessSpec` dict),
``metadata`` (the full :meth:`ModelMetadata.to_props` mapping), ``input_name`` / ``output_name``,
``hemseg_version``, ``created`` (ISO 8601, UTC) and ``extra`` (free-form build notes: workspace, network typing).

Compatibility rule (:func:`check_compatible`), checked before TensorRT is touched:

* TensorRT: NVIDIA documents that "by default, TensorRT engines are compatible only with the version of TensorRT
  used to build them" (we never build version-compatible engines). A different **major.minor** is refused. A
  different patch/build with the same major.minor is logged as a warning and left to TensorRT: if it cannot
  deserialize the plan, the runner raises a :class:`ModelError` with the same rebuild advice.
* GPU: engines are "not portable across different GPU architectures" without hardware-compatibility mode (which we
  do not use), so a different **compute capability** is refused. The same compute capability on a differently
  named GPU (e.g. H100 PCIe vs H100 SXM) is a warning only and left to TensorRT, which may still refuse the plan
  (the runner then raises the rebuild advice); tactics were timed on the other board, so latency numbers may not
  transfer.
* A missing or unreadable sidecar is refused: without it nothing says how the engine was built or how to
  preprocess its input.

Implemented to the documented APIs, not executed against a real TensorRT here (no TensorRT or GPU on the build
machine). Doc pages relied on:

* https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/advanced.html (Version Compatibility)
* https://docs.nvidia.com/deeplearning/tensorrt/11.1.0/inference-library/engine-compatibility.html
* https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/getting-started/support-matrix.html (Engine Portability)
* CuPy ``cupy.cuda.runtime.getDeviceProperties`` (returns a dict with ``name`` bytes, ``major``, ``minor``).

Pure Python (json, stdlib); CuPy is imported lazily by :func:`current_gpu` only.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hemseg.errors import BackendUnavailable, EngineNotPortable, ModelError, UsageError
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.writers import atomic_write_bytes
from hemseg.runtime.model_meta import INPUT_NAME, OUTPUT_NAME, MetadataError, ModelMetadata
from hemseg.runtime.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

FORMAT = "hemseg-trt-sidecar"
FORMAT_VERSION = 1
REBUILD_HINT = "rebuild with `hemseg-export CHECKPOINT --format trt --out DIR`"

_REQUIRED = (
    "tensorrt_version",
    "gpu_name",
    "compute_capability",
    "profile",
    "image_size",
    "precision",
    "source_onnx",
    "source_onnx_sha256",
    "preprocess",
    "metadata",
    "hemseg_version",
    "created",
)


@dataclass(frozen=True)
class TrtSidecar:
    """What ``model.plan.json`` records about the engine next to it (see the module docstring)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profile: dict[str, int]
    image_size: int
    precision: str
    source_onnx: str
    source_onnx_sha256: str
    preprocess: dict[str, Any]
    metadata: dict[str, str]
    hemseg_version: str
    created: str
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    #: sha256 of model.plan, so a sidecar left over from another build is not paired with a new engine
    plan_sha256: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrtSidecar":
        """Raises ``ValueError`` naming the problem (the reader wraps it into a :class:`ModelError`)."""
        if d.get("format") != FORMAT:
            raise ValueError(f"not a hemseg TensorRT sidecar (format {d.get('format')!r}, expected {FORMAT!r})")
        if int(d.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(
                f"sidecar format_version {d.get('format_version')} is newer than this hemseg understands "
                f"({FORMAT_VERSION}); upgrade hemseg"
            )
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ValueError(f"sidecar lacks {', '.join(missing)}")
        profile = {k: int(d["profile"][k]) for k in ("min", "opt", "max")}
        if not 1 <= profile["min"] <= profile["opt"] <= profile["max"]:
            raise ValueError(f"sidecar profile must satisfy 1 <= min <= opt <= max, got {profile}")
        if not isinstance(d["metadata"], Mapping) or not isinstance(d["preprocess"], Mapping):
            raise ValueError("sidecar 'metadata' and 'preprocess' must be JSON objects")
        return cls(
            tensorrt_version=str(d["tensorrt_version"]),
            gpu_name=str(d["gpu_name"]),
            compute_capability=str(d["compute_capability"]),
            profile=profile,
            image_size=int(d["image_size"]),
            precision=str(d["precision"]),
            source_onnx=str(d["source_onnx"]),
            source_onnx_sha256=str(d["source_onnx_sha256"]),
            preprocess=dict(d["preprocess"]),
            metadata={str(k): str(v) for k, v in d["metadata"].items()},
            hemseg_version=str(d["hemseg_version"]),
            created=str(d["created"]),
            input_name=str(d.get("input_name", INPUT_NAME)),
            output_name=str(d.get("output_name", OUTPUT_NAME)),
            plan_sha256=str(d.get("plan_sha256", "")),
            format=FORMAT,
            format_version=int(d.get("format_version", FORMAT_VERSION)),
            extra=dict(d.get("extra", {})),
        )

    def model_metadata(self) -> ModelMetadata:
        """The hemseg metadata; raises ``MetadataError`` when malformed or inconsistent with the sidecar."""
        meta = ModelMetadata.from_props(self.metadata)
        if meta.image_size != self.image_size:
            raise MetadataError(
                f"metadata image_size {meta.image_size} disagrees with sidecar image_size {self.image_size}"
            )
        try:
            spec = PreprocessSpec.from_dict(self.preprocess)
        except UsageError as exc:
            raise MetadataError(f"sidecar 'preprocess' is malformed: {exc}") from None
        if spec != meta.preprocess:
            raise MetadataError("sidecar 'preprocess' disagrees with the preprocessing spec in 'metadata'")
        return meta


def sidecar_path(plan_path: str | Path) -> Path:
    """``DIR/model.plan`` -> ``DIR/model.plan.json``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".json")


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_sidecar(plan_path: str | Path, sidecar: TrtSidecar) -> Path:
    """Write ``<plan>.json`` atomically; returns its path."""
    path = sidecar_path(plan_path)
    text = json.dumps(sidecar.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def read_sidecar(plan_path: str | Path) -> TrtSidecar:
    """Read the sidecar of ``plan_path``; :class:`ModelError` when it is missing or unusable."""
    plan_path = Path(plan_path)
    path = sidecar_path(plan_path)
    if not path.is_file():
        raise ModelError(
            plan_path,
            f"no sidecar {path.name} next to the engine: hemseg cannot tell which TensorRT/GPU built it or how to "
            f"preprocess its input; {REBUILD_HINT}",
        )
    try:
        data = json.loads(read_regular_text(path))
        if not isinstance(data, dict):
            raise ValueError("top level is not a JSON object")
        return TrtSidecar.from_dict(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelError(path, f"unusable TensorRT sidecar: {exc}; {REBUILD_HINT}") from None


def version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric release of a version string: ``"10.7.0.post1"`` -> ``(10, 7, 0)``."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", str(version))
    if not match:
        raise ValueError(f"cannot read a version number from {version!r}")
    return tuple(int(p) for p in match.group(1).split("."))


def _sm(compute_capability: str) -> str:
    return "sm_" + str(compute_capability).replace(".", "")


def check_compatible(
    sidecar: TrtSidecar,
    installed_trt_version: str,
    gpu_name: str,
    compute_capability: str,
    plan_path: str | Path = "model.plan",
) -> list[str]:
    """Apply the rule of the module docstring. Raises :class:`ModelError`; returns warnings to log."""
    built = f"built with TensorRT {sidecar.tensorrt_version} on {sidecar.gpu_name} ({_sm(sidecar.compute_capability)})"
    here = f"this machine has TensorRT {installed_trt_version} on {gpu_name} ({_sm(compute_capability)})"
    try:
        built_v, here_v = version_tuple(sidecar.tensorrt_version), version_tuple(installed_trt_version)
    except ValueError as exc:
        raise ModelError(plan_path, f"{exc}; {REBUILD_HINT}") from None
    problems = []
    if built_v[:2] != here_v[:2]:
        problems.append("TensorRT engines only load on the TensorRT major.minor that built them")
    if str(sidecar.compute_capability).strip() != str(compute_capability).strip():
        problems.append("TensorRT engines do not run on a different GPU architecture (compute capability)")
    if problems:
        raise EngineNotPortable(plan_path, f"engine {built}; {here}: {'; '.join(problems)}; {REBUILD_HINT}")
    warnings = []
    if built_v != here_v:
        warnings.append(
            f"{plan_path}: engine {built}; {here}: same major.minor, different patch; if TensorRT refuses the engine, "
            f"{REBUILD_HINT}"
        )
    if sidecar.gpu_name.strip() != str(gpu_name).strip():
        warnings.append(
            f"{plan_path}: engine {built}; {here}: same architecture, different GPU model: it will run, but its "
            f"tactics were timed on the other GPU, so latency may differ; {REBUILD_HINT} for a tuned engine"
        )
    return warnings


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"


def current_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device``, via CuPy (imported here, lazily)."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable(
            f"CuPy is needed to query the GPU ({exc}); install it with `pip install 'hemseg[gpu]'` (cupy-cuda12x)"
        ) from None
    try:
        props = cupy.cuda.runtime.getDeviceProperties(int(device))
    except Exception as exc:  # CUDARuntimeError: no device, bad ordinal, no driver
        raise BackendUnavailable(f"cannot query CUDA device {device}: {exc}") from None
    name = props["name"]
    if isinstance(name, bytes):
        name = name.decode("utf-8", errors="replace")
    return GpuInfo(
        name=str(name).rstrip("\x00").strip(), compute_capability=f"{int(props['major'])}.{int(props['minor'])}"
    )
