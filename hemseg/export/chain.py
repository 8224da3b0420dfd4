"""Plumbing that chains the export steps (Polygraphy's loader style: each step returns the path it wrote).

- :func:`parse_formats`: ``"onnx-int8,trt"`` -> the ordered formats to build, dependencies first
  (``onnx-fp16``, ``onnx-int8`` and ``openvino-int8`` need ``model.onnx``; ``trt`` needs ``model_fp16.onnx``).
- :func:`check_out_dir`: refuse an output folder that is, or would overwrite, the checkpoint.
- :func:`require_tensorrt`: fail before anything is written when TensorRT is missing.
- :func:`run_step`: time one step, verify what it wrote, and remove the format's files when the step raises or a
  gate is missed (no partial or unverified-bad files are left behind).
- :func:`quiet_library_logs`: keep the exporter libraries' INFO chatter out of hemseg's log.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterator

from hemseg.errors import BackendUnavailable, DependencyError, HemsegError, UsageError
from hemseg.export.parity import Parity
from hemseg.export.report import FormatResult
from hemseg.runtime.io.hashing import sha256_file
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.writers import keep_mode

log = logging.getLogger(__name__)

FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "openvino-int8", "trt")
NEEDS = {"onnx": None, "onnx-fp16": "onnx", "onnx-int8": "onnx", "openvino-int8": "onnx", "trt": "onnx-fp16"}
FILES = {"onnx": ("model.onnx",), "onnx-fp16": ("model_fp16.onnx",), "onnx-int8": ("model_int8.onnx",),
         "openvino-int8": ("model_ov_int8.xml", "model_ov_int8.bin"), "trt": ("model.plan", "model.plan.json")}
#: formats calibrated on the calibration images
CALIBRATED = ("onnx-int8", "openvino-int8")
TRT_MISSING = "TensorRT is not installed (pip install 'hemseg[trt]' on a machine with an NVIDIA GPU)"
#: loggers of the libraries the steps call, held at WARNING while they run
NOISY_LOGGERS = ("onnxscript", "onnx_ir", "torch", "onnxruntime", "nncf")
#: held at ERROR: torch's "No CUDA runtime is found" when NNCF imports its torch backend (it concerns building CUDA
#: extensions, which no export does; a CPU machine has no CUDA runtime)
QUIET_LOGGERS = ("torch.utils.cpp_extension",)


def parse_formats(text: str) -> list[str]:
    """Comma-separated format names -> the formats to build, with their dependencies, in build order."""
    names = [p.strip().lower() for p in str(text).split(",") if p.strip()]
    if not names:
        raise UsageError(f"--format needs at least one of {', '.join(FORMATS)}")
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise UsageError(f"unknown --format {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    wanted = set(names)
    for name in names:
        dep = NEEDS[name]
        while dep is not None:
            wanted.add(dep)
            dep = NEEDS[dep]
    return [f for f in FORMATS if f in wanted]


def check_out_dir(out_dir: Path, checkpoint: Path, formats: list[str]) -> None:
    """UsageError when ``out_dir`` is the checkpoint or a file, or an output file would be the checkpoint."""
    ckpt = checkpoint.resolve()
    out = out_dir.resolve()
    if out == ckpt:
        raise UsageError(f"--out {out_dir} is the checkpoint file itself; give a folder for the exported models")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder for the exported models")
    targets = [out / name for f in FORMATS for name in FILES[f]] + [out / "export_report.json"]
    if ckpt in targets:  # a format built now would write it, one not built would be cleared as another's export
        raise UsageError(f"the checkpoint {checkpoint} is named like an export file in {out_dir}, which an export "
                         "there replaces or removes; rename it or choose another --out")
    check_no_foreign_models(out_dir)


def check_no_foreign_models(out_dir: Path) -> None:
    """UsageError when ``out_dir`` holds a file named like an export's output that hemseg did not write: a model
    that records no hemseg checkpoint (the user's own, a TensorRT engine without hemseg's sidecar), the second
    file of a format without its model (a weights .bin, an engine's .json), an export report that is not hemseg's.
    An export there would replace or remove it, and only hemseg's own exports are replaced."""
    report = out_dir / "export_report.json"
    ours = is_export_report(report)
    for fmt in FORMATS:
        present = [n for n in FILES[fmt] if (out_dir / n).exists()]
        first = out_dir / FILES[fmt][0]
        if present and (not first.is_file() or artifact_checkpoint(first) is None):
            listed = ours and present[0] in _listed_files(report)
            _foreign(out_dir / present[0], out_dir, why=(
                "its export_report.json lists it, but it reads as no hemseg model now: damaged or changed since "
                "that export" if listed else "no model of it records a checkpoint"))
    for name in ("export_report.json", "export_report.md"):
        if (out_dir / name).exists() and not ours:
            _foreign(out_dir / name, out_dir, why=_report_problem(report))


def _listed_files(report: Path) -> set[str]:
    """The file names an export report's formats list (empty when it cannot be read)."""
    import json

    try:
        formats = json.loads(read_regular_text(report)).get("formats") or {}
        return {str(n) for entry in formats.values() for n in (entry.get("files") or [])}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def _foreign(path: Path, out_dir: Path, why: str = "no model of it records a checkpoint") -> None:
    raise UsageError(f"{path} is not a hemseg export's ({why}), and an export into "
                     f"{out_dir} would replace or remove it: move it away or choose another --out")


def _report_problem(path: Path) -> str:
    """Why ``path`` is not taken for an export report: unreadable JSON (cut short, say) or another kind of file."""
    if not path.exists():
        return "its export_report.json is missing"
    try:
        json.loads(read_regular_text(path))
    except (OSError, UnicodeDecodeError) as exc:
        return f"export_report.json cannot be read: {getattr(exc, 'strerror', None) or exc}"
    except ValueError as exc:
        return f"export_report.json is not valid JSON (cut short?): {exc}"
    return "export_report.json was not written by hemseg-export"


def is_export_report(path: Path) -> bool:
    """Whether ``path`` is an export report hemseg-export wrote (a JSON object with its ``hemseg_version``)."""
    try:
        doc = json.loads(read_regular_text(path))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and "hemseg_version" in doc and "formats" in doc


def stale_files(out_dir: Path, formats: list[str]) -> list[str]:
    """Files of other formats already in ``out_dir`` (from an earlier export; not rebuilt by this one)."""
    return [name for f in FORMATS if f not in formats for name in FILES[f] if (out_dir / name).exists()]


def artifact_checkpoint(path: Path) -> str | None:
    """The ``checkpoint_sha256`` an exported model file records (ONNX metadata, OpenVINO IR rt_info, TensorRT
    sidecar), or None when it cannot be read."""
    from hemseg.runtime.model_file import recorded_checkpoint

    return recorded_checkpoint(path)


#: the statuses of a format whose build ran to its end this time: its result replaces (or, failed, removes) the
#: earlier files; after an error (a full disk, a crash of the quantizer) or a dependency's error it did not
REBUILT = ("passed", "not verified", "failed")


def rebuilt(results: dict) -> list[str]:
    """The formats of ``results`` whose build ran to its end (:data:`REBUILT`)."""
    return [fmt for fmt, r in results.items() if r.status in REBUILT]


def kept_formats(out_dir: Path, formats: list[str], sha256: str) -> list[str]:
    """The formats not built now whose files an earlier export of the same checkpoint left in ``out_dir``: they stay
    (:func:`clear_other_exports`), so the export report must speak for them too."""
    return [fmt for fmt in FORMATS if fmt not in formats and (out_dir / FILES[fmt][0]).exists()
            and artifact_checkpoint(out_dir / FILES[fmt][0]) == sha256]


def clear_other_exports(out_dir: Path, formats: list[str], sha256: str) -> None:
    """Remove the model files of the formats not built now that an export of ANOTHER checkpoint left in
    ``out_dir`` (or whose checkpoint cannot be read): ``hemseg predict`` / ``hemseg-bench`` would use them as this
    export's (an old ``model_int8.onnx`` benchmarked as the new model's INT8). Files of the same checkpoint stay
    (exporting one format after another is a normal workflow). Each removal is a warning."""
    for fmt in FORMATS:
        names = [n for n in FILES[fmt] if (out_dir / n).exists()]
        if fmt in formats or not names:
            continue
        if artifact_checkpoint(out_dir / FILES[fmt][0]) == sha256:
            log.info("%s keeps %s: an earlier export of this checkpoint", out_dir, ", ".join(names))
            continue
        remove_files(out_dir, names)
        log.warning("%s: removed %s, an earlier export of another checkpoint, which would have been used as this "
                    "one's", out_dir, ", ".join(names))


def publish(stage: Path, out_dir: Path, results: dict, sha256: str) -> None:
    """Move a finished export from ``stage`` into ``out_dir`` (renames): the formats of another checkpoint not
    rebuilt now go (:func:`clear_other_exports`), each format rebuilt now replaces its earlier files when it passed
    (or was not verified) and removes them when it failed its gates; a format whose build broke off (an error: a
    full disk) keeps an earlier export's files of this checkpoint, as the report says (they were removed), and the
    report comes last."""
    from hemseg.runtime.io.signals import signals_held

    with signals_held():  # a Ctrl-C between two renames left a new model beside the earlier report
        _publish(stage, out_dir, results, sha256)


def _publish(stage: Path, out_dir: Path, results: dict, sha256: str) -> None:
    import os

    clear_other_exports(out_dir, rebuilt(results), sha256)
    for fmt, result in results.items():
        names = FILES[fmt]
        if result.status in ("passed", "not verified") and all((stage / n).exists() for n in names):
            for name in names:
                keep_mode(out_dir / name, stage / name)  # an owner-only model stays so on a re-export
                os.replace(stage / name, out_dir / name)
            log.info("%s: %s in %s", fmt, ", ".join(names), out_dir)
        elif result.status == "failed":
            removed = remove_files(out_dir, list(names))  # an earlier export's, superseded by this failed one
            if removed:
                log.info("%s: removed the earlier %s", fmt, ", ".join(removed))
        elif any((out_dir / n).exists() for n in names):  # this checkpoint's: another's went above
            log.warning("%s: not rebuilt (%s); kept the earlier %s of this checkpoint", fmt, result.status,
                        ", ".join(n for n in names if (out_dir / n).exists()))
    for path in sorted(stage.iterdir()):
        if path.is_file() and path.name.startswith("export_report"):
            keep_mode(out_dir / path.name, path)
            os.replace(path, out_dir / path.name)


def clear_export_tree(path: Path, why: str) -> None:
    """Remove an export folder of an earlier run (a ``fold_<k>`` left by a K-fold export), if it holds only what
    hemseg-export writes and its models record a checkpoint (hemseg's exports); else only warn."""
    import shutil

    known = {n for names in FILES.values() for n in names} | {"export_report.json", "export_report.md"}
    if path.is_dir():
        files = list(path.iterdir())
        ours = all(p.is_file() and p.name in known for p in files) and all(
            artifact_checkpoint(path / FILES[f][0]) is not None for f in FORMATS if (path / FILES[f][0]).is_file())
        if ours:
            shutil.rmtree(path)
            log.warning("removed %s: %s", path, why)
        else:
            log.warning("%s: %s, but it holds other files too: remove it yourself", path, why)


def require_tensorrt() -> None:
    """DependencyError (before any file is written) when TensorRT cannot be used for the ``trt`` format."""
    if importlib.util.find_spec("tensorrt") is None:
        raise DependencyError(TRT_MISSING)
    from hemseg.runtime.backends.trt import tensorrt_available

    ok, reason = tensorrt_available()
    if not ok:
        raise DependencyError(reason)
    from hemseg.runtime.trt_sidecar import current_gpu

    try:  # the engine is built for the GPU it is built on (device 0): without CuPy or a device, none can be
        current_gpu(0)
    except BackendUnavailable as exc:
        raise DependencyError(f"the trt format is built on a CUDA GPU: {exc}") from None


def remove_files(out_dir: Path, names: tuple[str, ...] | list[str]) -> list[str]:
    removed = []
    for name in names:
        path = out_dir / name
        if path.exists():
            path.unlink()
            removed.append(name)
    return removed


@contextlib.contextmanager
def quiet_library_logs(level: int = logging.WARNING) -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in NOISY_LOGGERS + QUIET_LOGGERS}
    for name in saved:
        floor = logging.ERROR if name in QUIET_LOGGERS else level
        logging.getLogger(name).setLevel(max(floor, logging.getLogger(name).level))
    try:
        yield
    finally:
        for name, lvl in saved.items():
            logging.getLogger(name).setLevel(lvl)


def run_step(result: FormatResult, out_dir: Path, build: Callable[[], Path],
             verify: Callable[[Path], Parity] | None) -> Path | None:
    """Build one format, then verify it (``verify=None``: not verified).

    Returns the path written, or None when a gate was missed (the format's files are then removed and
    ``result.status`` is ``failed``). An exception in ``build`` or ``verify`` removes the files, sets
    ``result.status = "error"`` and propagates.
    """
    t0 = time.perf_counter()
    try:
        path = build()
        result.export_seconds = time.perf_counter() - t0
        result.size_bytes = sum((out_dir / n).stat().st_size for n in result.files if (out_dir / n).exists())
        result.sha256 = {n: sha256_file(out_dir / n) for n in result.files if (out_dir / n).is_file()}
        if verify is None:
            result.status = "not verified"
            log.info("%s: built %s (not verified)", result.format, path.name)  # (in the staging folder)
            return path
        t1 = time.perf_counter()
        parity = verify(path)
        result.verify_seconds = time.perf_counter() - t1
    except BaseException as exc:
        removed = remove_files(out_dir, result.files)
        result.details["removed_files"] = removed
        result.status = "error"
        result.error = str(exc) if isinstance(exc, HemsegError) else f"{type(exc).__name__}: {exc}"
        if removed:
            log.info("%s: removed %s after the error", result.format, ", ".join(removed))
        raise
    result.parity = parity.as_dict()
    if parity.passed:
        result.status = "passed"
        log.info("%s: built %s, parity passed", result.format, path.name)  # (the final paths follow)
        return path
    removed = remove_files(out_dir, result.files)
    result.details["removed_files"] = removed
    result.status = "failed"
    result.error = "missed parity gate(s): " + "; ".join(parity.failures() + parity.notes)
    log.info("%s: %s; removed %s", result.format, result.error, ", ".join(removed) or "nothing")
    return None
