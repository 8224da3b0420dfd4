"""TensorRT engine runner (backend ``"trt"``): a serialized FP16 engine, CuPy device buffers, one CUDA stream.

Loading (:meth:`TrtRunner.from_path`), in this order:

1. read the sidecar ``model.plan.json`` and its hemseg metadata (refused when missing or malformed);
2. import TensorRT and CuPy (lazily; :class:`BackendUnavailable` with the install hint when absent);
3. :func:`hemseg.runtime.trt_sidecar.check_compatible` against the installed TensorRT and the GPU, so a mismatched
   engine is refused with a rebuild command before TensorRT deserializes anything;
4. ``trt.Runtime(logger).deserialize_cuda_engine(bytes)`` (``None`` -> :class:`ModelError`), then I/O discovery with
   the name-based tensor API: ``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_dtype``,
   ``get_tensor_shape``; exactly one input ``image`` (N, C, S, S) and one output ``logits`` (N, 1, S, S), float32
   or float16;
5. ``create_execution_context()`` (``None`` -> :class:`ModelError`) and a non-blocking ``cupy.cuda.Stream``.

Inference: ``set_input_shape`` (bool), ``get_tensor_shape`` for the output, ``set_tensor_address`` (bool) for both
tensors with CuPy ``ndarray.data.ptr``, ``execute_async_v3(stream.ptr)`` (bool), then a stream synchronize. Batches
larger than the engine's profile maximum are run in chunks. Every ``False``/``None`` from TensorRT raises a
:class:`ModelError` that quotes the errors TensorRT logged (captured by :func:`trt_logger`).

Implemented to the documented TensorRT 10.x/11.x Python API; NOT executed here (no TensorRT and no GPU on the
machine this was written on): only the control flow is unit-tested, against fake ``tensorrt``/``cupy`` modules.
Doc pages relied on:

* https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Runtime.html
  (``deserialize_cuda_engine``: "The ICudaEngine, or None if it could not be deserialized")
* https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Engine.html
  (``TensorIOMode``, ``num_io_tensors``, ``get_tensor_name/mode/dtype/shape``, ``create_execution_context``)
* https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/_static/python-api/infer/Core/ExecutionContext.html and the
  C++ reference .../latest/_static/c-api/classnvinfer1_1_1_i_execution_context.html (``setInputShape``,
  ``setTensorAddress`` and ``enqueueV3`` return bool; ``getTensorShape`` after the input shape is set)
* https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/tensorrt-8x-to-10x-python-api-patterns.html
  (name-based I/O tensors, ``execute_async_v3``)
* https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Logger.html (``trt.ILogger``
  subclassing; the logger must outlive the objects created with it)
* https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/FoundationalTypes/DataType.html
  (``trt.nptype``)
* CuPy: ``cupy.cuda.Device``, ``cupy.cuda.Stream(non_blocking=True)`` (``.ptr``, ``.record``, ``.wait_event``,
  ``.synchronize``), ``cupy.cuda.get_current_stream``, ``cupy.asarray``/``cupy.asnumpy(stream=)``.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hemseg.errors import BackendUnavailable, EngineNotPortable, ModelError, UsageError
from hemseg.runtime.backends.base import InferTimings, Runner, now_ms
from hemseg.runtime.model_meta import MetadataError, ModelMetadata
from hemseg.runtime.trt_sidecar import (
    REBUILD_HINT,
    TrtSidecar,
    check_compatible,
    current_gpu,
    read_sidecar,
    sidecar_path,
    version_tuple,
)

log = logging.getLogger(__name__)

MIN_TRT_MAJOR = 10
INSTALL_HINT = (
    "install TensorRT >= 10 with `pip install 'hemseg[trt]'` (tensorrt-cu12) and CuPy with `pip install "
    "'hemseg[gpu]'` (cupy-cuda12x): both built for CUDA 12, on a machine with an NVIDIA GPU and driver"
)


# -- lazy imports ------------------------------------------------------------------------------------------------
def import_tensorrt() -> Any:
    """``import tensorrt`` (>= 10) or raise :class:`BackendUnavailable` with the install hint."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f"backend trt: TensorRT is not installed ({exc}); {INSTALL_HINT}") from None
    except Exception as exc:  # e.g. OSError when libnvinfer cannot be loaded
        raise BackendUnavailable(
            f"backend trt: TensorRT failed to import ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
        ) from None
    version = str(getattr(trt, "__version__", ""))
    try:
        major = version_tuple(version)[0]
    except ValueError:
        raise BackendUnavailable(f"backend trt: cannot read the TensorRT version {version!r}; {INSTALL_HINT}") from None
    if major < MIN_TRT_MAJOR:
        raise BackendUnavailable(
            f"backend trt: TensorRT {version} is too old; hemseg needs TensorRT >= {MIN_TRT_MAJOR} "
            f"(name-based I/O tensors, execute_async_v3); {INSTALL_HINT}"
        )
    return trt


def import_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable(f"backend trt: CuPy is not installed ({exc}); {INSTALL_HINT}") from None
    return cupy


def tensorrt_available() -> tuple[bool, str]:
    """``(True, version)`` when a usable TensorRT (>= 10) imports, else ``(False, reason with install hint)``."""
    try:
        trt = import_tensorrt()
    except BackendUnavailable as exc:
        return False, str(exc)
    return True, str(trt.__version__)


#: the alignment TensorRT requires of every tensor address given to set_tensor_address (bytes)
TENSOR_ALIGNMENT = 256


# -- logging -----------------------------------------------------------------------------------------------------
_LOGGER: tuple[Any, Any] | None = None  # (tensorrt module, logger instance)


def trt_logger(trt: Any) -> Any:
    """The process-wide ``trt.ILogger`` of hemseg (the logger a builder or runtime is made with serves every object
    made through it, and must outlive them all). Forwards messages to :mod:`logging` and keeps the last error
    messages; ``take_errors()`` returns and clears them so exceptions can quote what TensorRT said."""
    global _LOGGER
    if _LOGGER is None or _LOGGER[0] is not trt:
        _LOGGER = (trt, _make_logger(trt))
    return _LOGGER[1]


def _make_logger(trt: Any) -> Any:
    sev = trt.ILogger.Severity
    levels = {
        sev.INTERNAL_ERROR: logging.CRITICAL,
        sev.ERROR: logging.ERROR,
        sev.WARNING: logging.WARNING,
        sev.INFO: logging.INFO,
        sev.VERBOSE: logging.DEBUG,
    }

    class HemsegTrtLogger(trt.ILogger):
        """Thread-safe, as TensorRT requires of a logger (it may call it from its own threads)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: collections.deque[str] = collections.deque(maxlen=20)
            self._lock = threading.Lock()

        def log(self, severity, msg) -> None:
            level = levels.get(severity, logging.DEBUG)
            if level >= logging.ERROR:
                with self._lock:
                    self.errors.append(str(msg))
            if log.isEnabledFor(level):
                log.log(level, "TensorRT: %s", msg)

        def take_errors(self) -> list[str]:
            with self._lock:
                errors = list(self.errors)
                self.errors.clear()
            return errors

    return HemsegTrtLogger()


def quote_errors(logger: Any) -> str:
    """``": <last TensorRT errors>"`` or ``""``, for appending to an exception message."""
    errors = logger.take_errors()
    return (": TensorRT said: " + " | ".join(errors)) if errors else ""


# -- I/O discovery -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IoTensor:
    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 marks a dynamic dimension


def discover_io(engine: Any, trt: Any, plan_path: Path, input_name: str, output_name: str) -> tuple[IoTensor, IoTensor]:
    """The engine's single input and single output tensor, checked against the names and ranks hemseg expects."""
    tensors = []
    for index in range(int(engine.num_io_tensors)):
        name = str(engine.get_tensor_name(index))
        mode = engine.get_tensor_mode(name)
        if mode == trt.TensorIOMode.INPUT:
            is_input = True
        elif mode == trt.TensorIOMode.OUTPUT:
            is_input = False
        else:
            raise ModelError(plan_path, f"I/O tensor {name!r} is neither input nor output (mode {mode})")
        trt_dtype = engine.get_tensor_dtype(name)
        try:
            dtype = np.dtype(trt.nptype(trt_dtype))
        except (TypeError, KeyError) as exc:
            raise ModelError(
                plan_path, f"I/O tensor {name!r} has data type {trt_dtype} that hemseg cannot feed: {exc}"
            ) from None
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        tensors.append(IoTensor(name, is_input, dtype, shape))
    inputs = [t.name for t in tensors if t.is_input]
    outputs = [t.name for t in tensors if not t.is_input]
    if inputs != [input_name] or outputs != [output_name]:
        raise ModelError(
            plan_path,
            f"expected one input {input_name!r} and one output {output_name!r}, the engine has inputs {inputs} and "
            f"outputs {outputs}; {REBUILD_HINT}",
        )
    inp = next(t for t in tensors if t.is_input)
    out = next(t for t in tensors if not t.is_input)
    for t in (inp, out):
        if t.dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ModelError(plan_path, f"I/O tensor {t.name!r} is {t.dtype}, expected float32 or float16")
        if len(t.shape) != 4:
            raise ModelError(plan_path, f"I/O tensor {t.name!r} has shape {t.shape}, expected rank 4 (N, C, H, W)")
    return inp, out


# -- the runner --------------------------------------------------------------------------------------------------
class TrtRunner(Runner):
    """Runs a TensorRT engine built by ``hemseg-export --format trt``. Create with :meth:`from_path`."""

    name = "trt"
    on_gpu = True

    def __init__(
        self,
        *,
        plan_path: Path,
        sidecar: TrtSidecar,
        metadata: ModelMetadata,
        trt: Any,
        cp: Any,
        logger: Any,
        runtime: Any,
        engine: Any,
        context: Any,
        stream: Any,
        input_tensor: IoTensor,
        output_tensor: IoTensor,
        device: int,
    ) -> None:
        super().__init__()
        self.plan_path = plan_path
        self.sidecar = sidecar
        self.metadata = metadata
        self.device = device
        self.input_dtype = input_tensor.dtype
        self._trt, self._cp, self._logger = trt, cp, logger
        self._runtime, self._engine, self._context, self._stream = runtime, engine, context, stream
        self._in, self._out = input_tensor, output_tensor

    #: the sidecar's precision, named as ONNX Runtime's and OpenVINO's are (the network is strongly typed from the
    #: FP16 graph: TensorRT computes in its types)
    COMPUTE = {"fp16": "f16", "fp32": "f32"}

    @property
    def precision(self) -> str | None:
        """The compute precision recorded in predict's summary (``backend_precision``) and a SEG's algorithm
        parameters (it was None for TensorRT: QA, stop 58)."""
        return self.COMPUTE.get(str(self.sidecar.precision))

    # -- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_path(cls, plan_path: str | Path, device: int = 0) -> "TrtRunner":
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            raise ModelError(plan_path, f"TensorRT engine not found; {REBUILD_HINT}")
        sidecar = read_sidecar(plan_path)
        try:
            metadata = sidecar.model_metadata()
        except MetadataError as exc:
            raise ModelError(sidecar_path(plan_path), f"{exc}; {REBUILD_HINT}") from None
        plan = plan_path.read_bytes()
        if sidecar.plan_sha256 and hashlib.sha256(plan).hexdigest() != sidecar.plan_sha256:
            raise ModelError(
                plan_path,
                f"the engine does not match its sidecar {sidecar_path(plan_path).name} (sha256 differs); "
                f"{REBUILD_HINT}",
            )

        trt = import_tensorrt()
        cp = import_cupy()
        gpu = current_gpu(device)
        for warning in check_compatible(sidecar, str(trt.__version__), gpu.name, gpu.compute_capability, plan_path):
            log.warning("%s", warning)

        logger = trt_logger(trt)
        logger.take_errors()
        with cp.cuda.Device(device):
            try:
                runtime = trt.Runtime(logger)
            except Exception as exc:  # noqa: BLE001 - pybind11's "factory function returned nullptr" (no CUDA context)
                raise BackendUnavailable(f"backend trt: TensorRT {trt.__version__} could not create a runtime on CUDA "
                                         f"device {device} ({exc}){quote_errors(logger)}") from None
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:  # (its bytes are those the sidecar records: refused by this TensorRT or GPU)
                raise EngineNotPortable(
                    plan_path,
                    f"TensorRT {trt.__version__} could not deserialize the engine (built with TensorRT "
                    f"{sidecar.tensorrt_version} on {sidecar.gpu_name}){quote_errors(logger)}; {REBUILD_HINT}",
                )
            inp, out = discover_io(engine, trt, plan_path, sidecar.input_name, sidecar.output_name)
            size, channels = metadata.image_size, metadata.preprocess.channels
            if inp.shape[1:] != (channels, size, size) or out.shape[1:] != (1, size, size):
                raise ModelError(
                    plan_path,
                    f"engine input {inp.shape} / output {out.shape} do not match the model's "
                    f"(N, {channels}, {size}, {size}) -> (N, 1, {size}, {size}); {REBUILD_HINT}",
                )
            context = engine.create_execution_context()
            if context is None:
                raise ModelError(
                    plan_path,
                    f"TensorRT could not create an execution context (out of GPU memory?){quote_errors(logger)}",
                )
            stream = cp.cuda.Stream(non_blocking=True)
        log.info(
            "TensorRT %s engine %s loaded on %s: input %s %s, batch %s..%s",
            trt.__version__,
            plan_path,
            gpu.name,
            inp.dtype,
            inp.shape,
            sidecar.profile["min"],
            sidecar.profile["max"],
        )
        return cls(
            plan_path=plan_path,
            sidecar=sidecar,
            metadata=metadata,
            trt=trt,
            cp=cp,
            logger=logger,
            runtime=runtime,
            engine=engine,
            context=context,
            stream=stream,
            input_tensor=inp,
            output_tensor=out,
            device=device,
        )

    # -- properties ----------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.metadata.image_size

    @property
    def max_batch(self) -> int:
        return int(self.sidecar.profile["max"])

    @property
    def min_batch(self) -> int:
        return int(self.sidecar.profile["min"])

    # -- inference -----------------------------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 host (N, C, S, S) -> float32 host logits (N, 1, S, S)."""
        self._check_open()
        if not isinstance(batch, np.ndarray):
            raise UsageError(f"backend trt: infer() takes a numpy array, got {type(batch).__name__}")
        self._check_shape(batch.shape)
        cp = self._cp
        with cp.cuda.Device(self.device):
            t0 = now_ms()
            with self._stream:
                x = cp.asarray(np.ascontiguousarray(batch, dtype=self.input_dtype))
            self._stream.synchronize()
            t1 = now_ms()
            y = self._run(x)
            t2 = now_ms()
            host = cp.asnumpy(y, stream=self._stream)
            self._stream.synchronize()
            t3 = now_ms()
        self.last_timings = InferTimings(copy_in=t1 - t0, infer=t2 - t1, copy_out=t3 - t2)
        return host

    def infer_device(self, batch):
        """CuPy (N, C, S, S) on this runner's device -> CuPy float32 logits (N, 1, S, S), computed and synchronized.

        Work queued on the caller's current stream (e.g. GPU preprocessing that produced ``batch``) is waited for.
        """
        self._check_open()
        cp = self._cp
        if not isinstance(batch, cp.ndarray):
            raise UsageError(f"backend trt: infer_device() takes a CuPy array, got {type(batch).__name__}")
        self._check_shape(batch.shape)
        if int(batch.device.id) != int(self.device):
            raise UsageError(f"backend trt: the batch is on GPU {batch.device.id}, this engine runs on GPU {self.device}")
        with cp.cuda.Device(self.device):
            t0 = now_ms()
            self._stream.wait_event(cp.cuda.get_current_stream().record())
            y = self._run(batch)
            t1 = now_ms()
        self.last_timings = InferTimings(copy_in=0.0, infer=t1 - t0, copy_out=0.0)
        return y

    def _check_open(self) -> None:
        if self._context is None:
            raise BackendUnavailable(f"backend trt: the runner for {self.plan_path} is closed")

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        expected = (self.metadata.preprocess.channels, self.image_size, self.image_size)
        if len(shape) != 4 or tuple(shape[1:]) != expected or shape[0] < 1:
            raise UsageError(
                f"backend trt: expected a batch of shape (N, {', '.join(map(str, expected))}), got {tuple(shape)}"
            )

    def _run(self, x):
        """Device batch -> device float32 logits, in chunks of at most the profile maximum; synchronizes the stream.

        A chunk below the profile's minimum (the tail of a batch) is padded with zeros up to it and its outputs
        dropped (TensorRT refuses shapes outside the profile); a chunk whose address is not 256-byte aligned (a
        view into the batch, a caller's array) is copied (set_tensor_address wants that alignment). Every input
        buffer stays referenced until the stream has synchronized (execute_async_v3's contract)."""
        cp = self._cp
        keep = []
        with self._stream:
            x = cp.ascontiguousarray(x.astype(self.input_dtype, copy=False))
            parts = []
            for i in range(0, int(x.shape[0]), self.max_batch):
                chunk = x[i : i + self.max_batch]
                n = int(chunk.shape[0])
                if n < self.min_batch:
                    pad = cp.zeros((self.min_batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
                    chunk = cp.concatenate([chunk, pad], axis=0)
                elif int(chunk.data.ptr) % TENSOR_ALIGNMENT:
                    chunk = chunk.copy()
                keep.append(chunk)
                parts.append(self._enqueue(chunk)[:n])
            y = parts[0] if len(parts) == 1 else cp.concatenate(parts, axis=0)
            y = cp.ascontiguousarray(y.astype(cp.float32, copy=False))
        self._stream.synchronize()
        del keep
        return y

    def _enqueue(self, x):
        """Queue one chunk on the stream; returns its (not yet computed) output array."""
        cp, ctx = self._cp, self._context
        shape = tuple(int(d) for d in x.shape)
        if not ctx.set_input_shape(self._in.name, shape):
            raise ModelError(
                self.plan_path,
                f"TensorRT refused input shape {shape}; this engine takes batch {self.min_batch}..{self.max_batch} of "
                f"{self._in.shape[1:]}{quote_errors(self._logger)}",
            )
        out_shape = tuple(int(d) for d in ctx.get_tensor_shape(self._out.name))
        if out_shape != (shape[0], 1, shape[2], shape[3]):
            raise ModelError(self.plan_path, f"TensorRT reports output shape {out_shape} for input {shape}")
        y = cp.empty(out_shape, dtype=self._out.dtype)
        for name, array in ((self._in.name, x), (self._out.name, y)):
            if not ctx.set_tensor_address(name, int(array.data.ptr)):
                raise ModelError(
                    self.plan_path, f"TensorRT refused the address of tensor {name!r}{quote_errors(self._logger)}"
                )
        if not ctx.execute_async_v3(self._stream.ptr):
            raise ModelError(self.plan_path, f"TensorRT execute_async_v3 failed{quote_errors(self._logger)}")
        return y

    def close(self) -> None:
        """Release context, engine and runtime, in that order (idempotent)."""
        if self._stream is not None:
            self._stream.synchronize()
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
