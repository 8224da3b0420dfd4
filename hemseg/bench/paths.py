"""The registry of benchmark paths. Each is built from an export directory, or skipped with the reason.

=====================  ===========================================================================
path                   what runs
=====================  ===========================================================================
torch                  the paper's: OpenCV CPU preprocessing + PyTorch eager FP32 on the CPU
ort                    OpenCV CPU preprocessing + ONNX Runtime CPU, ``model.onnx`` (FP32)
ort-fp16               same, ``model_fp16.onnx`` (mixed precision; mainly a parity check on CPU)
ort-int8               same, ``model_int8.onnx`` (QDQ static quantization)
openvino               OpenCV CPU preprocessing + OpenVINO CPU, ``model.onnx``, inference precision f32
openvino-bf16          same, inference precision bf16 (skipped on CPUs without amx_bf16 / avx512_bf16)
openvino-int8          same, ``model_ov_int8.xml`` (NNCF INT8, OpenVINO IR; ``hemseg-export --format openvino-int8``)
torch-bf16             OpenCV CPU preprocessing + PyTorch CPU bf16 autocast + channels_last (skipped without
                       amx_bf16 / avx512_bf16: PyTorch's best CPU mode, the honest comparison for OpenVINO bf16)
ort-cuda               OpenCV CPU preprocessing + ONNX Runtime CUDA provider, FP32
trt                    OpenCV CPU preprocessing + TensorRT FP16 engine ``model.plan``
trt-gpupre             CUDA preprocessing + TensorRT, no host round trip
torch-cuda             OpenCV CPU preprocessing + PyTorch CUDA FP32
torch-cuda-fp16        OpenCV CPU preprocessing + PyTorch CUDA FP16
torch-cuda-graph       PyTorch CUDA FP32 captured in a CUDA graph
torch-cuda-fp16-graph  PyTorch CUDA FP16 captured in a CUDA graph
torch-cuda-gpupre      CUDA preprocessing + PyTorch CUDA FP16 CUDA graph
=====================  ===========================================================================
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

from hemseg.bench.pipeline import BenchPath
from hemseg.errors import BackendUnavailable, DependencyError, EngineNotPortable
from hemseg.runtime.model_meta import ModelMetadata

log = logging.getLogger(__name__)

CPU_PATHS = ("torch", "ort", "ort-fp16", "ort-int8", "openvino", "openvino-bf16", "openvino-int8", "torch-bf16")
GPU_PATHS = ("ort-cuda", "trt", "trt-gpupre", "torch-cuda", "torch-cuda-fp16", "torch-cuda-graph",
             "torch-cuda-fp16-graph", "torch-cuda-gpupre")
ALL_PATHS = CPU_PATHS + GPU_PATHS


class Skip(Exception):
    """A path that cannot run on this machine (a library, an engine file or a GPU missing). A model file that is
    there but unusable is not a Skip: its ModelError ends the run, naming the file."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class BenchContext:
    export_dir: Path
    metadata: ModelMetadata
    checkpoint: Path | None
    inputs_description: str = "phantom slices"
    gflop_per_image: float | None = None
    threads: int = 0  # CPU threads of every engine (torch, ONNX Runtime intra-op, OpenVINO); 0: each one's default
    _torch_model: object = field(default=None, repr=False)
    #: each model file a path ran: its content digest and the export's verdict on it (:func:`_loaded`)
    files: dict = field(default_factory=dict)

    def model_info(self) -> dict:
        return {"export_dir": str(self.export_dir), "model": self.metadata.model, "image_size": self.metadata.image_size,
                "threshold": self.metadata.threshold, "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "gflop_per_image": self.gflop_per_image, "preprocess": self.metadata.preprocess.to_dict(),
                "files": dict(self.files)}

    def torch_model(self):
        """The checkpoint's model (loaded once), or Skip when torch or the checkpoint is missing."""
        if self._torch_model is None:
            if importlib.util.find_spec("torch") is None:
                raise Skip("torch is not installed (pip install 'hemseg[train]')")
            if self.checkpoint is None or not self.checkpoint.is_file():
                raise Skip(f"checkpoint not found ({self.checkpoint}); give --checkpoint")
            from hemseg.errors import UsageError
            from hemseg.train.checkpoint import load_checkpoint_hashed

            model, _, digest = load_checkpoint_hashed(self.checkpoint)
            want = self.metadata.checkpoint_sha256
            if want and digest != want:  # checked at the start; a training run may have saved a new best.pt since
                raise UsageError(f"{self.checkpoint}: is no longer the checkpoint {self.export_dir} was exported "
                                 "from (replaced while hemseg-bench ran?); run it again")
            self._torch_model = model
        return self._torch_model


def _cuda_ok() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        pass
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _need_file(ctx: BenchContext, name: str) -> Path:
    p = ctx.export_dir / name
    if not p.is_file():
        raise Skip(f"{name} not in {ctx.export_dir} (export it with hemseg-export)")
    return p


def _loaded(ctx: BenchContext, path: Path) -> None:
    """After a path's runner loaded ``path``: refuse a file of another export (:func:`_same_export`), then record
    the bytes it will time and whether the export's gates vouch for them (a model changed after its export, or a
    --no-verify export, was timed without a word: stop 52). Not before loading: a path skipped then (no CuPy, say)
    listed its file among those timed, with a warning about it (QA, stop 58)."""
    _same_export(ctx, path)
    if path.name not in ctx.files:
        from hemseg.runtime.model_file import export_verification, model_digest

        status = export_verification(path, ctx.metadata.checkpoint_sha256)
        ctx.files[path.name] = {"sha256": model_digest(path), "export_verification": status}
        if status != "passed":
            log.warning("%s: its export verification is %s: its accuracy columns are not vouched for by the "
                        "export's gates", path, status or "absent (no export report lists it)")


def _same_export(ctx: BenchContext, path: Path) -> None:
    """UsageError when the model file just loaded records another checkpoint than the export the benchmark started
    with: a re-export into the folder while hemseg-bench ran made one report of two models (torch the old one, the
    engines the new), exit 0. Checked after loading, so the file checked is never older than the one loaded."""
    from hemseg.errors import UsageError
    from hemseg.runtime.model_file import recorded_checkpoint

    want, got = ctx.metadata.checkpoint_sha256, recorded_checkpoint(path)
    if want and got and got != want:
        raise UsageError(f"{path}: records checkpoint {got[:12]}, not {want[:12]} of the export this benchmark "
                         "started with: a file of another export in the folder, or one re-exported while "
                         "hemseg-bench ran; export every format from one checkpoint and run it again")


def _gpu_pre(ctx: BenchContext):
    if importlib.util.find_spec("cupy") is None:
        raise Skip("CuPy is not installed (pip install 'hemseg[gpu]')")
    from hemseg.runtime.cuda.gpu_preprocess import GpuPreprocessor

    try:
        return GpuPreprocessor(ctx.metadata.preprocess)
    except (DependencyError, BackendUnavailable) as exc:  # no CUDA device, a kernel that does not compile here
        raise Skip(str(exc)) from None


def _torch_path(name: str, ctx: BenchContext) -> BenchPath:
    cuda = name.startswith("torch-cuda")
    cpu_bf16 = name == "torch-bf16"
    if cpu_bf16:
        from hemseg.runtime import cpu_features

        if cpu_features.bf16_flag() is None:
            raise Skip(f"this CPU has neither {' nor '.join(cpu_features.BF16_FLAGS)} (no native bf16)")
    model = ctx.torch_model()
    if cuda and not _cuda_ok():
        raise Skip("no CUDA GPU")
    from copy import deepcopy

    from hemseg.train.torch_runner import TorchRunner

    if cpu_bf16:
        runner = TorchRunner(deepcopy(model), device="cpu", cpu_bf16=True)
        return BenchPath(name, runner, ctx.metadata.preprocess, ctx.metadata.threshold,
                         description="OpenCV CPU preprocessing + PyTorch CPU bf16 autocast, channels_last, eager",
                         threads=_torch_threads())

    gpupre = name == "torch-cuda-gpupre"
    half = "fp16" in name or gpupre
    graph = "graph" in name or gpupre
    runner = TorchRunner(deepcopy(model), device="cuda" if cuda else "cpu", half=half, cuda_graph=graph)
    desc = ("CUDA preprocessing" if gpupre else "OpenCV CPU preprocessing") + f" + PyTorch {'CUDA' if cuda else 'CPU'} " \
        + ("FP16" if half else "FP32") + (" CUDA graph" if graph else " eager")
    return BenchPath(name, runner, ctx.metadata.preprocess, ctx.metadata.threshold,
                     gpu_preprocessor=_gpu_pre(ctx) if gpupre else None, description=desc,
                     gpu_memory_mb=runner.gpu_memory_mb, threads="GPU" if cuda else _torch_threads())


def _torch_threads() -> str:
    import torch

    return f"{torch.get_num_threads()} (torch intra-op)"


def _ort_path(name: str, ctx: BenchContext) -> BenchPath:
    from hemseg.runtime.backends.ort import OrtRunner

    file = {"ort": "model.onnx", "ort-fp16": "model_fp16.onnx", "ort-int8": "model_int8.onnx",
            "ort-cuda": "model.onnx"}[name]
    onnx_path = _need_file(ctx, file)
    backend = "ort-cuda" if name == "ort-cuda" else "ort-cpu"
    try:
        runner = OrtRunner.from_path(onnx_path, backend, threads=ctx.threads)
    except (DependencyError, BackendUnavailable) as exc:
        raise Skip(str(exc)) from None
    _loaded(ctx, onnx_path)
    threads = ("GPU" if backend == "ort-cuda" else f"{ctx.threads} (intra-op)" if ctx.threads else
               "ONNX Runtime's default (one intra-op thread per physical core)")
    return BenchPath(name, runner, ctx.metadata.preprocess, ctx.metadata.threshold,
                     description=f"OpenCV CPU preprocessing + ONNX Runtime {backend[4:].upper()} ({file})",
                     threads=threads)


def _openvino_path(name: str, ctx: BenchContext) -> BenchPath:
    if importlib.util.find_spec("openvino") is None:
        raise Skip("OpenVINO is not installed (pip install 'hemseg[openvino]')")
    from hemseg.runtime.backends.openvino import OpenVinoRunner

    file, precision = {"openvino": ("model.onnx", "f32"), "openvino-bf16": ("model.onnx", "bf16"),
                       "openvino-int8": ("model_ov_int8.xml", "auto")}[name]
    onnx_path = _need_file(ctx, file)
    backend = {"f32": "openvino-f32", "bf16": "openvino-bf16", "auto": "openvino"}[precision]
    try:
        runner = OpenVinoRunner.from_path(onnx_path, precision, backend=backend, threads=ctx.threads)
    except (DependencyError, BackendUnavailable) as exc:
        # the runtime's advice names predict's --backend; hemseg-bench picks engines with --paths
        raise Skip(str(exc).replace("use --backend openvino-f32 (or openvino, which chooses)",
                                    "--paths openvino measures it in f32")) from None
    _loaded(ctx, onnx_path)
    what = "INT8 (NNCF), float parts f32" if name == "openvino-int8" else f"inference precision {runner.precision}"
    try:  # what OpenVINO resolved its default to (LATENCY hint: the physical cores)
        threads = f"{int(runner.compiled.get_property('INFERENCE_NUM_THREADS'))} (OpenVINO inference)"
    except Exception:  # noqa: BLE001 - a property an older OpenVINO does not report
        threads = f"{ctx.threads} (OpenVINO inference)" if ctx.threads else "OpenVINO's default"
    return BenchPath(name, runner, ctx.metadata.preprocess, ctx.metadata.threshold,
                     description=f"OpenCV CPU preprocessing + OpenVINO CPU {what} ({file})", threads=threads)


def _trt_path(name: str, ctx: BenchContext) -> BenchPath:
    from hemseg.runtime.backends.trt import tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        raise Skip(f"TensorRT not available: {why}")
    plan = _need_file(ctx, "model.plan")
    from hemseg.runtime.backends.trt import TrtRunner

    try:  # TensorRT imports, but CuPy or a GPU is missing, or the engine was built by another TensorRT or for
        runner = TrtRunner.from_path(plan)  # another GPU (not portable): skipped like any path that cannot run here
    except (DependencyError, BackendUnavailable, EngineNotPortable) as exc:  # (QA, stop 58): its reason in the JSON;
        raise Skip(str(exc)) from None  # a damaged engine or sidecar stays an error, as a damaged ONNX file is
    _loaded(ctx, plan)
    gpupre = name == "trt-gpupre"
    return BenchPath(name, runner, ctx.metadata.preprocess, ctx.metadata.threshold,
                     gpu_preprocessor=_gpu_pre(ctx) if gpupre else None,
                     description=("CUDA" if gpupre else "OpenCV CPU") + " preprocessing + TensorRT FP16 engine",
                     threads="GPU")


def build_path(name: str, ctx: BenchContext) -> BenchPath:
    if name not in ALL_PATHS:
        raise Skip(f"unknown path; known: {', '.join(ALL_PATHS)}")
    if name.startswith("torch"):
        return _torch_path(name, ctx)
    if name.startswith("ort"):
        if name == "ort-cuda":
            from hemseg.runtime.backends.ort import import_ort

            if "CUDAExecutionProvider" not in import_ort().get_available_providers():
                raise Skip("onnxruntime has no CUDAExecutionProvider (the onnxruntime-gpu package is not installed)")
        return _ort_path(name, ctx)
    if name.startswith("openvino"):
        return _openvino_path(name, ctx)
    return _trt_path(name, ctx)
