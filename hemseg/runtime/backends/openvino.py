"""OpenVINO CPU backend: ``openvino`` (precision auto), ``openvino-f32``, ``openvino-bf16``.

It compiles the exported ONNX file itself (no conversion step, no second artifact), or an OpenVINO IR file
(``.xml`` + ``.bin``, as ``hemseg-export --format openvino-int8`` writes; its hemseg metadata live in the model's
``rt_info["hemseg"]``, read with :func:`read_ir_props`). The file is read and vetted
like for ONNX Runtime (:func:`hemseg.runtime.model_file.vet_onnx_bytes`: self-contained, no custom-op domains); its
hemseg metadata come from the same ``metadata_props`` (read by that scan, checked by the same
:func:`metadata_from_props`), and the compiled model's input/output ports go through the same
:func:`check_signature` as an onnxruntime session's. OpenVINO compiles the file from its path, which is what lets
its model cache skip reading the ONNX file on a second start (measured on the 126 MB FCN-ResNet50: reading the ONNX
file is ~1 s of a ~1.3 s cold start; from the cache the start takes ~0.25 s).

Precision (``inference_precision`` hint of the CPU plugin, always set explicitly: OpenVINO's own default is bf16
on AMX CPUs and f32 elsewhere):

- ``f32``: FP32 everywhere;
- ``bf16``: bf16 compute, FP32 in and out. Needs ``amx_bf16`` or ``avx512_bf16``
  (:mod:`hemseg.runtime.cpu_features`); on a CPU without them it is refused with :class:`BackendUnavailable` naming
  the missing flags (OpenVINO itself would silently compute in f32). After compiling, the precision OpenVINO reports
  is checked against the request, so a silent downgrade is refused too;
- ``auto``: bf16 where the CPU has one of those flags, else f32; INT8 (QDQ) models get f32 (their float parts:
  OpenVINO failed to compile a QDQ model with the bf16 hint on an AMX CPU). The choice and its reason are logged.

Model cache: compiled models are stored in a cache folder (OpenVINO's ``CACHE_DIR``), so the second start of the
same model file with the same settings imports the compiled blob instead of reading and compiling. OpenVINO keys a
blob by the model file's absolute path, size and modification time and by the compile options only: an IR whose
``.bin`` was replaced, or a file replaced by one of the same size and time (``cp -p``, rsync, tar), was served from
the cache with the old weights. So each model's blobs live in a subfolder named by a digest of the model's content
(:func:`hemseg.runtime.model_file.model_digest`: the ONNX file, or the IR's ``.xml`` and ``.bin``): other weights
meet another subfolder and are compiled anew. A subfolder's modification time is set each time its model is
opened (its last use); when a model is compiled anew into the cache, the other models' subfolders unused for
:data:`PRUNE_AFTER_DAYS` days are removed (only folders named like a subfolder: 16 hex digits), so a workstation
whose model is replaced now and then does not keep every old model's blobs (about the model's size each).
OpenVINO does not check a blob it imports: a blob damaged on disk, or changed by anyone who may write the cache, ran
and gave other masks with every status saying "passed". So each subfolder records the SHA-256 of the blobs compiled
into it (:data:`BLOB_RECORD`), and before a model is opened every blob there is checked against it: one that differs,
or that no record names, is removed (a warning for a mismatch) and the model compiled anew; where it cannot be
removed, the model is compiled without the cache. The record also keeps each blob's file version (device, inode,
size, modification and change time: :func:`hemseg.runtime.io.hashing.file_version`); a blob still at its recorded
version is not hashed again (0.13-0.21 s per start for a 124 MB FCN-ResNet50 blob on a 2-core EPYC): a write to it,
in place or by replacement, changes its change time, which no tool sets back.
The folder is ``cache_dir`` if
given, else ``$HEMSEG_OPENVINO_CACHE``, else ``$XDG_CACHE_HOME/hemseg/openvino`` (``~/.cache/hemseg/openvino``);
``cache_dir=False`` or ``HEMSEG_OPENVINO_CACHE=off`` disables it. A cache folder that cannot be created is reported
in a warning and compiling goes on without it.

Timings: ``copy_in`` is the dtype cast, ``infer`` the synchronous ``InferRequest.infer``, ``copy_out`` the copy of
the output out of OpenVINO's buffer. openvino is imported lazily (it is an optional extra: ``pip install
hemseg[openvino]``); torch is never needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemseg.errors import BackendUnavailable, ModelError, UsageError
from hemseg.runtime import cpu_features
from hemseg.runtime.backends.base import InferTimings, Runner, now_ms
from hemseg.runtime.model_file import (
    OnnxSignature,
    check_signature,
    metadata_from_props,
    model_digest,
    read_model_bytes,
    vet_onnx_bytes,
)
from hemseg.runtime.model_meta import ModelMetadata

log = logging.getLogger(__name__)

IR_SUFFIXES = (".xml",)
BACKEND_PRECISION = {"openvino": "auto", "openvino-f32": "f32", "openvino-bf16": "bf16"}
PRECISIONS = ("auto", "f32", "bf16")
INSTALL_HINT = "pip install 'hemseg[openvino]'"
CACHE_ENV = "HEMSEG_OPENVINO_CACHE"
DEVICE = "CPU"
_ORT_TYPE_NAMES = {"f32": "tensor(float)", "f16": "tensor(float16)"}


def import_openvino():
    """The ``openvino`` module, or :class:`BackendUnavailable` with the install hint."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(f"backend openvino: OpenVINO is not installed ({exc}); {INSTALL_HINT}") from None
    except Exception as exc:  # a broken install (missing shared library, ...)
        raise BackendUnavailable(f"backend openvino: OpenVINO failed to import ({type(exc).__name__}: {exc}); "
                                 f"{INSTALL_HINT}") from None
    return openvino


_CORE: list = []
_CORE_LOCK = threading.Lock()


def ov_core():
    """The process's one ``openvino.Core``, made on first use and kept. Each Core gets its own CPU plugin engine,
    which installs an alternate signal stack on the thread that made it and puts back the one it found when it is
    destroyed: two Cores destroyed in the order they were made left the first one's stack, already unmapped,
    installed on the main thread, and the next Ctrl-C (any signal Python handles) killed the process with SIGSEGV
    instead of 'aborted' (seen on a CPU with AVX512-BF16, the test suite's exit 139; stop 59). One Core, never
    destroyed before the process ends, installs one stack that stays valid (and compiles no slower)."""
    ov = import_openvino()
    with _CORE_LOCK:
        if not _CORE:
            _CORE.append(ov.Core())
        return _CORE[0]


def openvino_version() -> str | None:
    """The installed OpenVINO's version without importing it (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openvino")
    except PackageNotFoundError:
        return None


# -- precision ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "f32" or "bf16"
    reason: str


def choose_precision(requested: str, flags=None, model_precision: str = "fp32") -> PrecisionChoice:
    """The inference precision for ``requested`` (``auto``/``f32``/``bf16``) on a CPU with ``flags`` (default: this
    CPU's). ``bf16`` on a CPU without bf16 instructions raises :class:`BackendUnavailable` naming the missing flags."""
    if requested not in PRECISIONS:
        raise UsageError(f"unknown OpenVINO precision {requested!r}; choose from {', '.join(PRECISIONS)}")
    have = cpu_features.bf16_flag(flags)
    lacks = f"this CPU has neither {' nor '.join(cpu_features.BF16_FLAGS)}"
    if requested == "f32":
        return PrecisionChoice("f32", "requested")
    if requested == "bf16":
        if have is None:
            raise BackendUnavailable(f"backend openvino-bf16: {lacks} (the instructions bf16 inference needs); "
                                     f"use --backend openvino-f32 (or openvino, which chooses)")
        return PrecisionChoice("bf16", f"requested; the CPU has {have}")
    if model_precision == "int8":
        return PrecisionChoice("f32", "INT8 model: its float parts run in f32 (no bf16 hint on quantized models)")
    if have is not None:
        return PrecisionChoice("bf16", f"the CPU has {have}")
    return PrecisionChoice("f32", lacks)


# -- cache folder --------------------------------------------------------------------------------------------------
#: hex digits of the model's content digest naming its cache subfolder
CONTENT_CHARS = 16
#: another model's cache subfolder unused (not opened) for this many days is removed when a model is compiled anew
PRUNE_AFTER_DAYS = 30
#: the file in a model's cache subfolder that records the SHA-256 of each compiled blob hemseg made there
BLOB_RECORD = "hemseg-blobs.json"
_SUBFOLDER = re.compile(rf"[0-9a-f]{{{CONTENT_CHARS}}}")


def default_cache_dir() -> Path | None:
    """The cache folder used when none is given (module docstring); None when disabled by the environment."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env.lower() in ("off", "none", "0", "false"):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "hemseg" / "openvino"


def _usable_cache(cache_dir: str | Path | bool | None, content: str) -> Path | None:
    """The cache subfolder of the model whose content digest is ``content`` (:func:`hemseg.runtime.model_file.
    model_digest`; module docstring), made; None when the cache is off or cannot be made (a warning)."""
    if cache_dir is False:
        return None
    path = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir).expanduser()
    if path is None:
        return None
    path = path / hashlib.sha256(content.encode()).hexdigest()[:CONTENT_CHARS]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("openvino: cannot use the model cache folder %s (%s); compiling without a cache", path,
                    exc.strerror or exc)
        return None
    try:  # its last use (pruning); a read-only cache is still usable
        os.utime(path)
    except OSError:
        pass
    return path


#: a blob's entry in :data:`BLOB_RECORD`: its SHA-256 and the file version it was hashed at (None: not known)
BlobEntry = tuple[str, "list[int] | None"]


def _blob_record(sub: Path) -> dict[str, BlobEntry]:
    """:data:`BLOB_RECORD` of ``sub``: name -> (SHA-256, file version); {} when absent or unreadable. A record of the
    first form (name -> SHA-256) has no versions: its blobs are hashed."""
    from hemseg.runtime.io.regular import read_regular_text

    try:  # (a named pipe there is refused, not waited on)
        record = json.loads(read_regular_text(sub / BLOB_RECORD))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    entries: dict[str, BlobEntry] = {}
    for name, value in record.items():
        if isinstance(value, str):
            entries[str(name)] = (value, None)
        elif isinstance(value, dict) and isinstance(value.get("sha256"), str):
            version = value.get("version")
            ok = isinstance(version, list) and all(isinstance(v, int) for v in version)
            entries[str(name)] = (value["sha256"], version if ok else None)
    return entries


def _blob_digest(blob: Path, entry: BlobEntry | None) -> tuple[str, list[int]]:
    """``blob``'s SHA-256 and file version: the recorded digest when the file is still at the recorded version, else
    hashed (and its version taken before and after: a blob written meanwhile raises OSError, as unreadable)."""
    from hemseg.runtime.io.hashing import file_version, sha256_file

    version = list(file_version(blob))
    if entry is not None and entry[1] == version:
        return entry[0], version
    digest = sha256_file(blob)
    if list(file_version(blob)) != version:
        raise OSError(f"{blob} changed while it was read")
    return digest, version


def _write_blob_record(sub: Path, record: dict[str, BlobEntry]) -> None:
    from hemseg.runtime.io.writers import atomic_write_bytes

    data = {name: {"sha256": digest, "version": version} for name, (digest, version) in record.items()}
    try:
        atomic_write_bytes(sub / BLOB_RECORD, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:
        log.info("openvino: cannot record the compiled model's checksum in %s (%s)", sub, exc.strerror or exc)


def checked_cache(sub: Path | None) -> Path | None:
    """``sub`` once every compiled blob in it matches :data:`BLOB_RECORD` (module docstring): a blob that differs, or
    that the record does not name, that cannot be read or is not a regular file (a named pipe there hung OpenVINO's
    import, a folder there kept the cache from ever being filled) is removed first, with a warning; None (compile
    without the cache) when one cannot be removed. A blob at its recorded file version is not hashed; one hashed and
    found unchanged gets its new version recorded (a cache copied elsewhere, a record of the first form), and entries
    naming no blob are dropped."""
    if sub is None:
        return None
    kept_record = sub / BLOB_RECORD
    if os.path.lexists(kept_record) and not kept_record.is_file():  # a named pipe there hung every start (QA, stop
        try:  # 53); a folder there kept the record from ever being written, each start compiling anew
            kept_record.unlink()
        except OSError as exc:
            log.warning("openvino: the model cache's record %s is not a regular file and cannot be removed (%s): "
                        "compiling without the model cache", kept_record, exc.strerror or exc)
            return None
        log.warning("openvino: the model cache's record %s was not a regular file: removed", kept_record)
    record = _blob_record(sub)
    try:
        blobs = sorted(p for p in sub.iterdir() if p.suffix == ".blob")
    except OSError:
        return None
    kept: dict[str, BlobEntry] = {}
    for blob in blobs:
        entry = record.get(blob.name)
        if not blob.is_file():
            why = "is not a regular file"
        elif entry is None:
            why = "is not a compiled model hemseg recorded"
        else:
            try:
                digest, version = _blob_digest(blob, entry)
            except OSError as exc:
                why = f"cannot be read ({exc.strerror or exc})"
            else:
                if entry[0] == digest:
                    kept[blob.name] = (digest, version)
                    continue
                why = "differs from the one compiled there (damaged or changed on disk)"
        try:
            blob.unlink()
        except OSError as exc:
            log.warning("openvino: the cached compiled model %s %s and cannot be removed (%s): compiling without "
                        "the model cache", blob, why, exc.strerror or exc)
            return None
        log.warning("openvino: the cached compiled model %s %s: removed, compiling anew", blob, why)
    if record != kept:
        _write_blob_record(sub, kept)
    return sub


def record_blobs(sub: Path) -> None:
    """Write :data:`BLOB_RECORD` for the blobs now in ``sub`` (after a model was compiled into it): the ones
    :func:`checked_cache` checked keep their entries unhashed while still at their recorded version, new ones are
    hashed. A cache that cannot be written is left as it is (its blobs, unrecorded, are removed at the next start)."""
    old = _blob_record(sub)
    try:
        record = {p.name: _blob_digest(p, old.get(p.name)) for p in sorted(sub.iterdir())
                  if p.suffix == ".blob" and p.is_file()}
    except OSError as exc:
        log.info("openvino: cannot record the compiled model's checksum in %s (%s)", sub, exc.strerror or exc)
        return
    _write_blob_record(sub, record)


def prune_cache(own: Path, days: float = PRUNE_AFTER_DAYS, now: float | None = None) -> list[Path]:
    """Remove the subfolders beside ``own`` (a model's cache subfolder) that were not used for ``days`` days; only
    folders named like one (16 hex digits, not links) are touched. The removed folders are returned (logged)."""
    now = time.time() if now is None else now
    removed = []
    try:
        siblings = list(own.parent.iterdir())
    except OSError:
        return removed
    for sub in siblings:
        if sub.name == own.name or not _SUBFOLDER.fullmatch(sub.name) or sub.is_symlink() or not sub.is_dir():
            continue
        try:
            unused_days = (now - sub.stat().st_mtime) / 86400
        except OSError:
            continue
        if unused_days > days:
            shutil.rmtree(sub, ignore_errors=True)
            if not sub.exists():
                removed.append(sub)
                log.info("openvino: removed the model cache subfolder %s (unused for %.0f days)", sub, unused_days)
    return removed


# -- the compiled model's ports as onnxruntime-style views, for the shared signature check ----------------------
@dataclass(frozen=True)
class _Port:
    name: str
    type: str
    shape: list


class _OvPorts:
    """Shows an OpenVINO (compiled) model's ports through the part of onnxruntime's session API that
    :func:`check_signature` uses (``get_inputs``/``get_outputs`` with ``name``, ``type``, ``shape``)."""

    def __init__(self, model) -> None:
        self.model = model

    @staticmethod
    def _port(port) -> _Port:
        name = port.get_any_name() if port.get_names() else ""
        etype = port.get_element_type().get_type_name()
        pshape = port.get_partial_shape()
        shape = [int(d.get_length()) if d.is_static else None for d in pshape] if pshape.rank.is_static else []
        return _Port(name, _ORT_TYPE_NAMES.get(etype, f"tensor({etype})"), shape)

    def get_inputs(self) -> list[_Port]:
        return [self._port(p) for p in self.model.inputs]

    def get_outputs(self) -> list[_Port]:
        return [self._port(p) for p in self.model.outputs]


def _loaded_from_cache(compiled) -> bool:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except Exception:  # an OpenVINO without this property
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # OpenVINO's messages start with "Exception from src/...cpp:NN:" lines; the reason is usually the next line
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))] or lines
    if not useful:
        return type(exc).__name__
    # a line ending in ':' introduces the reason ("While validating node '...':"): the reason follows, joined
    text = useful[0]
    for more in useful[1:3]:
        if not text.endswith(":"):
            break
        text = f"{text} {more}"
    return text if len(text) <= 400 else text[:397] + "..."


# -- OpenVINO IR files --------------------------------------------------------------------------------------------
IR_SECTION = "hemseg"


def read_ir_props(path: str | Path) -> dict[str, str]:
    """hemseg's metadata of an OpenVINO IR file (``rt_info["hemseg"]``); ModelError when the file (or its ``.bin``)
    is missing or unreadable. Empty when the section is absent."""
    import_openvino()
    path = Path(path)
    for p in (path, path.with_suffix(".bin")):
        if not p.is_file() or p.stat().st_size == 0:
            raise ModelError(path, f"an OpenVINO IR model needs {p.name}, non-empty, next to it ({p} is missing or "
                                   f"empty)")
    try:
        model = ov_core().read_model(str(path))
    except Exception as exc:
        raise ModelError(path, f"OpenVINO cannot read the model: {_first_line(exc)}") from None
    rt = model.get_rt_info()
    if IR_SECTION not in list(rt.keys()):
        return {}
    section = rt[IR_SECTION]
    return {str(k): str(section[k].astype(str)) for k in list(section.keys())}


# -- the runner ----------------------------------------------------------------------------------------------------
class OpenVinoRunner(Runner):
    """Runs an ONNX model compiled by OpenVINO on the CPU. Build it with :meth:`from_path`."""

    on_gpu = False

    def __init__(self, compiled, signature: OnnxSignature, metadata: ModelMetadata, path: Path, precision: str,
                 precision_reason: str, cache_dir: Path | None, backend: str, compile_s: float) -> None:
        super().__init__()
        self.compiled, self.sig, self.metadata, self.path = compiled, signature, metadata, Path(path)
        self.precision, self.precision_reason, self.cache_dir = precision, precision_reason, cache_dir
        self.name = backend
        self.compile_s = compile_s
        #: True when OpenVINO imported the compiled model from the cache folder instead of compiling it
        self.from_cache = False
        self.input_dtype = signature.input_dtype
        # one infer request per calling thread: a request runs one inference at a time ("Infer Request is busy"
        # when two threads share it); the compiled model serves several requests at once
        self._local = threading.local()
        self._request = self._thread_request()

    @classmethod
    def from_path(cls, path: str | Path, precision: str = "auto", cache_dir: str | Path | bool | None = None,
                  flags=None, backend: str | None = None, threads: int = 0) -> "OpenVinoRunner":
        """Vet, read and compile ``path`` (an ONNX file). ``flags`` overrides the CPU flags (tests); ``threads`` > 0:
        that many inference threads (``INFERENCE_NUM_THREADS``), else OpenVINO's default."""
        if precision not in PRECISIONS:
            raise UsageError(f"unknown OpenVINO precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        backend = backend or {v: k for k, v in BACKEND_PRECISION.items()}[precision]
        cpu_features.check_engine_threads(threads)
        if precision == "bf16":  # refuse before reading anything
            choose_precision("bf16", flags)
        ov = import_openvino()
        path = Path(path)
        if path.suffix.lower() in IR_SUFFIXES:
            meta = metadata_from_props(read_ir_props(path), path)
        else:
            meta = metadata_from_props(vet_onnx_bytes(read_model_bytes(path), path).metadata_props, path)
        try:  # (hashed once per file version: hemseg predict's export verification asks again)
            content = model_digest(path)
        except OSError as exc:
            raise ModelError(path, f"cannot read the model: {exc.strerror or exc}") from None
        choice = choose_precision(precision, flags, meta.precision)
        cache = checked_cache(_usable_cache(cache_dir, content))
        config = {"INFERENCE_PRECISION_HINT": choice.precision, "PERFORMANCE_HINT": "LATENCY"}
        if cache is not None:
            config["CACHE_DIR"] = str(cache)
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        t0 = time.perf_counter()
        try:
            compiled = ov_core().compile_model(str(path), DEVICE, config)
        except Exception as exc:
            if choice.precision == "bf16" and meta.precision == "int8":
                # OpenVINO's CPU plugin has no bf16 kernels for some quantized (QDQ) graphs: say what runs it, not
                # its internals ("No suitable implementations. This may indicate that the provided memory
                # descriptors ...": at -v)
                log.debug("%s: OpenVINO: %s", path, _first_line(exc))
                raise ModelError(path, "OpenVINO's CPU plugin cannot run this INT8 (QDQ) model with inference "
                                       "precision bf16; --backend openvino runs it (its float parts in f32)") from None
            raise ModelError(path, f"OpenVINO cannot compile the model for the CPU with inference precision "
                                   f"{choice.precision}: {_first_line(exc)}") from None
        compile_s = time.perf_counter() - t0
        sig = check_signature(_OvPorts(compiled), meta, path)
        from_cache = _loaded_from_cache(compiled)
        if cache is not None and not from_cache:
            record_blobs(cache)
            prune_cache(cache)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        got = str(hint.get_type_name() if hasattr(hint, "get_type_name") else hint).lower()
        if got != choice.precision:
            raise BackendUnavailable(f"{backend}: OpenVINO compiled {path.name} with inference precision {got}, not "
                                     f"the {choice.precision} asked for; not running it at another precision")
        log.info("OpenVINO %s: %s %s in %.2f s, inference precision %s (%s), cache %s",
                 getattr(ov, "__version__", "?").split("-")[0], path,
                 "loaded from the model cache" if from_cache else "compiled for the CPU", compile_s, choice.precision,
                 choice.reason, cache if cache is not None else "off")
        runner = cls(compiled, sig, meta, path, choice.precision, choice.reason, cache, backend, compile_s)
        runner.from_cache = from_cache
        return runner

    def _check_in(self, x: np.ndarray) -> None:
        s = self.sig.size
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.sig.channels, s, s) or x.shape[0] < 1:
            raise UsageError(f"{self.name}: batch of shape {tuple(x.shape)}, expected (N, {self.sig.channels}, {s}, {s})")

    def _thread_request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._request is None or self.compiled is None:
            raise BackendUnavailable(f"{self.name}: the runner for {self.path} is closed")
        if not isinstance(batch, np.ndarray):
            raise UsageError(f"{self.name}: infer() takes a numpy array, got {type(batch).__name__}")
        t0 = now_ms()
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        self._check_in(x)
        t1 = now_ms()
        try:
            request = self._thread_request()
            request.infer({0: x}, share_inputs=True)
            out = request.get_output_tensor(0).data
        except Exception as exc:
            raise ModelError(self.path, f"{self.name} inference failed: {_first_line(exc)}") from None
        t2 = now_ms()
        y = np.array(out, dtype=np.float32, copy=True)
        n, s = x.shape[0], self.sig.size
        if y.shape != (n, 1, s, s):
            raise ModelError(self.path, f"produced logits of shape {tuple(y.shape)}, expected ({n}, 1, {s}, {s})")
        self.last_timings = InferTimings(copy_in=t1 - t0, infer=t2 - t1, copy_out=now_ms() - t2)
        return y

    def close(self) -> None:
        self._request = None
        self.compiled = None
