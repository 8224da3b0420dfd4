"""Build the TensorRT FP16 engine ``model.plan`` (and its sidecar ``model.plan.json``) from ``model_fp16.onnx``.

Precision lives in the ONNX graph, not in builder flags: TensorRT 11 removed ``BuilderFlag.FP16`` and weakly typed
networks, and TensorRT 10.12+ deprecates weak typing. So the network is created **strongly typed**
(``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)`` when the installed TensorRT has the flag - 10.x does,
11.x keeps it as an accepted no-op; a TensorRT >= 11 without it is strongly typed unconditionally, flags ``0``),
and ``BuilderFlag.FP16`` is never set. ``EXPLICIT_BATCH`` is not used (deprecated and ignored since TensorRT 10).
An "FP16" build from an ONNX file without a single float16 tensor would silently be FP32, so it is refused.

Steps of :func:`build_engine`: check the ONNX (exists, has float16 tensors) -> ``trt.Builder`` ->
``create_network(flags)`` -> ``trt.OnnxParser(network, logger).parse_from_file`` (every ``parser.get_error(i)`` for
``i < parser.num_errors`` is reported) -> check the single input ``image`` (N, C, H, W) against the metadata's
image size -> ``create_builder_config`` -> ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)`` -> one
optimization profile (``create_optimization_profile``, ``set_shape(name, min, opt, max)``,
``add_optimization_profile`` >= 0) -> timing cache (``create_timing_cache(bytes from file or b"")``,
``set_timing_cache(cache, ignore_mismatch=False)``) -> ``build_serialized_network`` (``None`` -> error) -> write
``model.plan`` atomically, save ``get_timing_cache().serialize()`` back to the cache file, write the sidecar.

The timing cache holds kernel timings keyed by layer and GPU; reusing it across builds on the same TensorRT and GPU
skips most autotuning. A cache TensorRT rejects (set_timing_cache False: made on another GPU, by NVIDIA's docs; another
version is likely the other cause) is an error naming the file: delete it. TensorRT 10 gets the STRONGLY_TYPED
network flag; TensorRT 11, whose networks are always strongly typed and which deprecates the flag, none. The input's
height and width must be fixed (the model's image size): only the batch is dynamic.

Implemented to the documented TensorRT Python API; NOT executed here (no TensorRT and no GPU where this was
written). The control flow is unit-tested with a fake ``tensorrt`` module. Doc pages relied on:

* https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-patterns.html
  and .../tensorrt-10x-to-11x-python-api-reference.html (FP16 flag removed; strong typing required)
* https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html and
  .../latest/_static/python-api/infer/Core/Builder.html (``NetworkDefinitionCreationFlag``: STRONGLY_TYPED, the
  deprecated EXPLICIT_BATCH; ``create_network``, ``create_builder_config``, ``create_optimization_profile``,
  ``build_serialized_network``)
* https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/index.html (IBuilderConfig:
  ``set_memory_pool_limit``, ``add_optimization_profile``, ``create_timing_cache``, ``set_timing_cache``,
  ``get_timing_cache``; ``MemoryPoolType``)
* https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Graph/Network.html
  (``num_inputs``/``get_input``, ``num_outputs``/``get_output``; ``ITensor.name``/``shape``)
* https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/TimingCache.html
  (``ITimingCache.serialize``)
* https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/parsers/Onnx/pyOnnx.html
  (``OnnxParser``: ``parse_from_file`` -> bool, ``num_errors``, ``get_error``; ``ParserError.code/desc/node``; the
  same API as in the 8.6 archive this was first written from)
* https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Logger.html
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import hemseg
from hemseg.errors import BackendUnavailable, DependencyError, InputError, ModelError, UsageError
from hemseg.export.batch_profile import BatchProfile
from hemseg.runtime.backends.trt import import_tensorrt, quote_errors, trt_logger
from hemseg.runtime.io.hashing import sha256_file
from hemseg.runtime.io.writers import atomic_write_bytes
from hemseg.runtime.model_meta import INPUT_NAME, OUTPUT_NAME, ModelMetadata
from hemseg.runtime.trt_sidecar import (
    TrtSidecar,
    current_gpu,
    utc_now_iso,
    version_tuple,
    write_sidecar,
)

log = logging.getLogger(__name__)

PLAN_NAME = "model.plan"
DEFAULT_WORKSPACE_MB = 2048
#: which ONNX file of an export folder each engine precision is built from
ONNX_FOR_PRECISION = {"fp16": "model_fp16.onnx"}


def select_onnx(export_dir: str | Path, precision: str = "fp16") -> Path:
    """The ONNX file in ``export_dir`` that an engine of ``precision`` is built from (it must exist)."""
    if precision not in ONNX_FOR_PRECISION:
        raise UsageError(
            f"TensorRT engines are built in {sorted(ONNX_FOR_PRECISION)} only, got precision {precision!r}"
        )
    path = Path(export_dir) / ONNX_FOR_PRECISION[precision]
    if not path.is_file():
        raise InputError(
            path,
            f"not found: the {precision} TensorRT engine is built from it; run "
            f"`hemseg-export CHECKPOINT --format onnx-{precision} --out {Path(export_dir)}` first",
        )
    return path


def count_float16_tensors(onnx_path: str | Path) -> int:
    """Number of float16 initializers, graph inputs/outputs/value_infos, Casts to fp16 and fp16 Constants."""
    try:
        import onnx
    except ImportError:
        raise DependencyError(
            "the onnx package is needed to check the FP16 model: pip install 'hemseg[train]'"
        ) from None
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends
        raise ModelError(onnx_path, f"not a readable ONNX model: {exc}") from None
    f16 = onnx.TensorProto.FLOAT16
    graph = model.graph
    count = sum(1 for t in graph.initializer if t.data_type == f16)
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type == f16:
            count += 1
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == f16:
                count += 1
            elif node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == f16:
                count += 1
    return count


def network_flags(trt: Any) -> tuple[int, str]:
    """``(flags for builder.create_network, description)``: strongly typed, never weakly typed. TensorRT 11's
    networks are always strongly typed and its STRONGLY_TYPED flag is deprecated ("retained for API compatibility
    but ignored"): no flag there; TensorRT 10 needs it."""
    if version_tuple(str(trt.__version__))[0] >= 11:
        return 0, "strongly typed (always, TensorRT >= 11)"
    flag_enum = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if flag_enum is not None and hasattr(flag_enum, "STRONGLY_TYPED"):
        return 1 << int(flag_enum.STRONGLY_TYPED), "STRONGLY_TYPED flag"
    raise BackendUnavailable(
        f"TensorRT {trt.__version__} has no strongly typed networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED); "
        "hemseg builds FP16 engines from the FP16 ONNX graph only: install TensorRT >= 10"
    )


def _parser_errors(parser: Any) -> list[str]:
    errors = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        errors.append(f"node {err.node()}: {err.desc()} ({err.code()})")
    return errors


def _input_shapes(network: Any, onnx_path: Path, profile: BatchProfile, image_size: int, channels: int):
    """Check the network's I/O and return ``(input name, (min, opt, max) NCHW shapes)``."""
    inputs = [network.get_input(i) for i in range(int(network.num_inputs))]
    outputs = [network.get_output(i) for i in range(int(network.num_outputs))]
    if [t.name for t in inputs] != [INPUT_NAME] or [t.name for t in outputs] != [OUTPUT_NAME]:
        raise ModelError(
            onnx_path,
            f"expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}, TensorRT parsed inputs "
            f"{[t.name for t in inputs]} and outputs {[t.name for t in outputs]}",
        )
    shape = tuple(int(d) for d in inputs[0].shape)
    if len(shape) != 4:
        raise ModelError(onnx_path, f"input {INPUT_NAME!r} has shape {shape}, expected (N, C, H, W)")
    n, c, h, w = shape
    if c != channels:
        raise ModelError(onnx_path, f"input {INPUT_NAME!r} has {c} channels, the preprocessing makes {channels}")
    for name, dim in (("height", h), ("width", w)):
        if dim != image_size:  # a dynamic one (-1) too: the runner runs the model's fixed size only
            raise ModelError(onnx_path, f"input {name} is {dim}, the model metadata says image size {image_size} "
                                        "(hemseg engines take a fixed height and width; only the batch is dynamic)")
    if n != -1 and not profile.min == profile.opt == profile.max == n:
        raise ModelError(
            onnx_path,
            f"the ONNX batch dimension is fixed at {n}, so --batch {profile} cannot apply: export with a dynamic batch",
        )
    return inputs[0].name, profile.shapes(channels, image_size, image_size)


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None:
        raise ModelError(path or "timing cache", "TensorRT could not create a timing cache from it: delete the file")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ModelError(
            path or "timing cache",
            "TensorRT rejected this timing cache (made on another GPU, or by another TensorRT version?): delete it to "
            "start a new one",
        )
    if blob:
        log.info("reusing TensorRT timing cache %s (%d bytes)", path, len(blob))
    return cache


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path,
    profile: BatchProfile,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: Path | None = None,
    metadata: ModelMetadata | None = None,
    precision: str = "fp16",
) -> Path:
    """Build ``out_dir/model.plan`` + ``model.plan.json`` from ``onnx_path``; returns the plan path.

    TensorRT builds on the current CUDA device (device 0 of ``CUDA_VISIBLE_DEVICES``); the sidecar records that
    GPU, queried with CuPy.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if metadata is None:
        raise UsageError("build_engine needs the model's ModelMetadata (preprocessing, threshold, ...)")
    if precision != "fp16":
        raise UsageError(f"TensorRT engines are built in fp16 only, got precision {precision!r}")
    if not isinstance(profile, BatchProfile):
        raise UsageError(f"profile must be a BatchProfile, got {type(profile).__name__}")
    if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb < 1:
        raise UsageError(f"workspace must be a positive number of MiB, got {workspace_mb!r}")
    if not onnx_path.is_file():
        raise InputError(onnx_path, "not found; run `hemseg-export CHECKPOINT --format onnx-fp16 --out DIR` first")
    n_f16 = count_float16_tensors(onnx_path)
    if n_f16 == 0:
        raise ModelError(
            onnx_path,
            "an fp16 engine was requested but this ONNX has no float16 tensors (it is an FP32 model); TensorRT "
            "would build FP32 from it. Build from model_fp16.onnx (`hemseg-export CHECKPOINT --format onnx-fp16`)",
        )
    timing_cache = Path(timing_cache) if timing_cache is not None else None
    meta = dataclasses.replace(metadata, precision="fp16")
    size, channels = meta.image_size, meta.preprocess.channels

    trt = import_tensorrt()
    gpu = current_gpu(0)
    logger = trt_logger(trt)
    logger.take_errors()
    flags, typing = network_flags(trt)
    log.info(
        "building TensorRT %s engine from %s (%d fp16 tensors, %s) on %s",
        trt.__version__,
        onnx_path,
        n_f16,
        typing,
        gpu.name,
    )

    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # no CUDA device / driver
        raise BackendUnavailable(f"TensorRT could not create a builder: {exc}{quote_errors(logger)}") from None
    network = builder.create_network(flags)
    if network is None:
        raise ModelError(onnx_path, f"TensorRT could not create a network definition{quote_errors(logger)}")
    parser = trt.OnnxParser(network, logger)  # keep it alive until the build: it owns the parsed weights
    parsed = parser.parse_from_file(str(onnx_path))
    errors = _parser_errors(parser)
    if not parsed or errors:
        detail = "\n  ".join(errors or ["(the parser recorded no error)"])
        raise ModelError(onnx_path, f"TensorRT's ONNX parser failed{quote_errors(logger)}\n  {detail}")
    input_name, (shape_min, shape_opt, shape_max) = _input_shapes(network, onnx_path, profile, size, channels)

    config = builder.create_builder_config()
    if config is None:
        raise ModelError(onnx_path, f"TensorRT could not create a builder config{quote_errors(logger)}")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb * (1 << 20))
    opt_profile = builder.create_optimization_profile()
    try:
        opt_profile.set_shape(input_name, shape_min, shape_opt, shape_max)
    except RuntimeError as exc:
        raise ModelError(
            onnx_path, f"TensorRT refused the profile {shape_min}/{shape_opt}/{shape_max}: {exc}"
        ) from None
    if config.add_optimization_profile(opt_profile) < 0:
        raise ModelError(onnx_path, f"TensorRT refused the optimization profile{quote_errors(logger)}")
    cache = _load_timing_cache(config, timing_cache)  # kept until the engine is built (set_timing_cache's contract)

    serialized = builder.build_serialized_network(network, config)
    del cache
    if serialized is None:
        raise ModelError(onnx_path, f"TensorRT failed to build the engine{quote_errors(logger)}")
    plan = bytes(memoryview(serialized))
    if not plan:
        raise ModelError(onnx_path, "TensorRT returned an empty engine")

    out_dir.mkdir(parents=True, exist_ok=True)
    plan_path = out_dir / PLAN_NAME
    atomic_write_bytes(plan_path, plan)
    if timing_cache is not None:
        cache = config.get_timing_cache()
        if cache is None:
            raise ModelError(timing_cache, f"TensorRT returned no timing cache to save{quote_errors(logger)}")
        cache_blob = bytes(memoryview(cache.serialize()))
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(timing_cache, cache_blob)
        log.info("saved TensorRT timing cache %s (%d bytes)", timing_cache, len(cache_blob))
    sidecar = TrtSidecar(
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        profile=profile.as_dict(),
        image_size=size,
        precision="fp16",
        source_onnx=onnx_path.name,
        source_onnx_sha256=sha256_file(onnx_path),
        preprocess=meta.preprocess.to_dict(),
        metadata=meta.to_props(),
        hemseg_version=hemseg.__version__,
        created=utc_now_iso(),
        plan_sha256=hashlib.sha256(plan).hexdigest(),
        extra={"workspace_mb": workspace_mb, "network_typing": typing, "fp16_tensors_in_onnx": n_f16},
    )
    write_sidecar(plan_path, sidecar)
    log.info("wrote %s (%.1f MiB) and its sidecar", plan_path, len(plan) / (1 << 20))
    return plan_path
