"""ONNX Runtime backends ``ort-cpu`` and ``ort-cuda``: a loader that vets and opens the session, a runner that runs it.

No silent fallback: asking for ``ort-cuda`` when this onnxruntime build lacks ``CUDAExecutionProvider``, or when the
session ends up without it (no driver, no CUDA libraries: onnxruntime then quietly drops to CPU), raises
:class:`BackendUnavailable`. ``CPUExecutionProvider`` is still listed after CUDA for the rare node CUDA cannot run
(onnxruntime's node placement); the session's main provider is what :meth:`session.get_providers` reports first.

Timings: ``ort-cpu``: ``copy_in`` is the dtype cast, ``infer`` is ``session.run``, ``copy_out`` the cast back.
``ort-cuda``: inputs and outputs go through an IO binding, so ``copy_in`` is the host-to-device copy, ``infer`` the
run (onnxruntime synchronizes its outputs before returning) and ``copy_out`` the device-to-host copy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hemseg.errors import BackendUnavailable, DependencyError, ModelError, UsageError
from hemseg.runtime.backends.base import InferTimings, Runner, now_ms
from hemseg.runtime.cpu_features import check_engine_threads
from hemseg.runtime.model_file import (
    OnnxSignature,
    check_signature,
    ort_load_error,
    read_metadata,
    read_model_bytes,
    vet_onnx_bytes,
)

log = logging.getLogger(__name__)

PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}


def import_ort():
    """onnxruntime, imported the one way hemseg does: telemetry off and warnings below errors silenced.

    ONNX Runtime's official builds send usage telemetry by default, on Linux too since 2026; a scanner workstation
    must not (``ORT_TELEMETRY_DISABLED=1`` unless the environment says otherwise, before the library starts, and
    ``disable_telemetry_events()``). Its own warnings (a coloured line on stderr that ignores ``-q``, e.g. "Failed
    to persist telemetry device ID") are held below errors, as every session's are."""
    os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")
    try:
        import onnxruntime
    except ImportError as exc:
        raise DependencyError(f"onnxruntime is not installed ({exc}); `pip install onnxruntime`") from None
    for name, args in (("disable_telemetry_events", ()), ("set_default_logger_severity", (3,))):
        quiet = getattr(onnxruntime, name, None)
        if quiet is not None:
            quiet(*args)
    return onnxruntime


def provider_available(backend: str) -> bool:
    """Whether this onnxruntime build offers the execution provider of ``backend``."""
    return PROVIDERS[backend] in import_ort().get_available_providers()


def open_session(path: str | Path, backend: str, device: int = 0, threads: int = 0):
    """Vet ``path`` and open an InferenceSession on ``backend`` (``threads`` > 0: that many intra-op threads, else
    onnxruntime's default, the physical cores). Returns ``(session, metadata, signature)``."""
    check_engine_threads(threads)
    ort = import_ort()
    provider = PROVIDERS[backend]
    available = ort.get_available_providers()
    if provider not in available:
        raise BackendUnavailable(f"{backend}: onnxruntime {ort.__version__} has no {provider} (it has "
                                 f"{', '.join(available)}); install onnxruntime-gpu for CUDA, or use --backend ort-cpu")
    data = read_model_bytes(path)
    vet_onnx_bytes(data, path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: onnxruntime's warnings go to stderr, bypassing logging
    if threads > 0:
        opts.intra_op_num_threads = int(threads)
    providers = [(provider, {"device_id": int(device)}), "CPUExecutionProvider"] if backend == "ort-cuda" else [provider]
    try:
        session = ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as exc:
        if backend == "ort-cuda" and any(w in str(exc) for w in ("CUDA", "cuda", "cudnn", "cublas", "libcu")):
            raise BackendUnavailable(f"ort-cuda: the CUDA execution provider failed on device {device}: "
                                     f"{str(exc).strip().splitlines()[0]}") from None
        raise ort_load_error(path, exc) from None
    if session.get_providers()[0] != provider:
        raise BackendUnavailable(f"{backend}: onnxruntime opened the session with {session.get_providers()} instead "
                                 f"of {provider} (no usable GPU {device} / CUDA libraries?); not falling back to CPU")
    meta = read_metadata(session, path)
    return session, meta, check_signature(session, meta, path)


class OrtRunner(Runner):
    """Runs an onnxruntime session. Build it with :meth:`from_path`; ``metadata`` is the model's hemseg metadata."""

    def __init__(self, session, backend: str, device: int, signature: OnnxSignature, metadata, path: Path):
        super().__init__()
        self.session, self.name, self.device, self.sig, self.metadata, self.path = (
            session, backend, int(device), signature, metadata, Path(path))
        self.on_gpu = backend == "ort-cuda"
        self.input_dtype = signature.input_dtype

    #: ONNX Runtime computes the graph in its own types: the model's precision, named as OpenVINO's are
    #: (an FP16 graph on the CPU: in f32 where the CPU provider has no f16 kernel, through casts it inserts)
    COMPUTE = {"fp32": "f32", "fp16": "f16", "int8": "int8"}

    @property
    def precision(self) -> str | None:
        """The compute precision recorded in predict's summary (``backend_precision``) and a SEG's algorithm
        parameters: f32, f16 or int8, the graph's own (None for a model whose metadata names none)."""
        return self.COMPUTE.get(str(getattr(self.metadata, "precision", "") or ""))

    @classmethod
    def from_path(cls, path: str | Path, backend: str = "ort-cpu", device: int = 0, threads: int = 0) -> "OrtRunner":
        session, meta, sig = open_session(path, backend, device, threads)
        log.debug("%s: opened %s with providers %s", backend, path, session.get_providers())
        return cls(session, backend, device, sig, meta, Path(path))

    def _run(self, fn):
        """Call onnxruntime; its exceptions (out of memory, a kernel failure) become a one-line ModelError."""
        if self.session is None:
            raise BackendUnavailable(f"{self.name}: the runner for {self.path} is closed")
        try:
            return fn()
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(self.path, f"{self.name} inference failed: {text}") from None

    def _check_in(self, x) -> None:
        s = self.sig.size
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.sig.channels, s, s) or x.shape[0] < 1:
            raise UsageError(f"{self.name}: batch of shape {tuple(x.shape)}, expected (N, {self.sig.channels}, {s}, {s})")

    def _check_out(self, x, out) -> None:
        n, s = x.shape[0], self.sig.size
        if tuple(out.shape) != (n, 1, s, s):
            raise ModelError(self.path, f"produced logits of shape {tuple(out.shape)}, expected ({n}, 1, {s}, {s})")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        t0 = now_ms()
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        self._check_in(x)
        if self.on_gpu:
            ort = import_ort()
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.sig.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", self.device))
            binding.bind_output(self.sig.output_name, "cuda", self.device)
            t1 = now_ms()
            self._run(lambda: self.session.run_with_iobinding(binding))
            t2 = now_ms()
            y = binding.copy_outputs_to_cpu()[0]
        else:
            t1 = now_ms()
            y = self._run(lambda: self.session.run([self.sig.output_name], {self.sig.input_name: x})[0])
            t2 = now_ms()
        y = np.asarray(y, dtype=np.float32)
        self._check_out(x, y)
        self.last_timings = InferTimings(copy_in=t1 - t0, infer=t2 - t1, copy_out=now_ms() - t2)
        return y

    def infer_device(self, batch):
        """CuPy (N, C, S, S) in -> CuPy float32 (N, 1, S, S) out, bound in place (ort-cuda only; no host copies)."""
        if not self.on_gpu:
            return super().infer_device(batch)
        import cupy as cp

        t0 = now_ms()
        x = cp.ascontiguousarray(batch, dtype=self.input_dtype)
        self._check_in(x)
        out = cp.empty((x.shape[0], 1, self.sig.size, self.sig.size), dtype=self.sig.output_dtype)
        binding = self.session.io_binding()
        binding.bind_input(self.sig.input_name, "cuda", self.device, self.input_dtype.type, tuple(x.shape), x.data.ptr)
        binding.bind_output(self.sig.output_name, "cuda", self.device, self.sig.output_dtype.type, tuple(out.shape),
                            out.data.ptr)
        cp.cuda.get_current_stream().synchronize()  # onnxruntime runs on its own stream: inputs must be complete
        t1 = now_ms()
        self._run(lambda: self.session.run_with_iobinding(binding))
        t2 = now_ms()
        y = out.astype(cp.float32, copy=False)
        self.last_timings = InferTimings(copy_in=t1 - t0, infer=t2 - t1, copy_out=now_ms() - t2)
        return y

    def close(self) -> None:
        self.session = None
