"""Opening a model path: which artifact to use, and vetting an ONNX model before and after onnxruntime loads it.

A model path is one of:

- an ``.onnx`` file (FP32, FP16 or INT8 export),
- a TensorRT engine ``.plan`` (with its ``.plan.json`` sidecar next to it; see :mod:`hemseg.runtime.trt_sidecar`),
- an export directory: the onnxruntime backends use ``model.onnx`` in it, the TensorRT backend ``model.plan``;
- a folder of fold exports, ``fold_1/``, ``fold_2/`` ... each an export directory (``hemseg-export`` of a
  ``hemseg train --folds K`` run): :func:`fold_exports` lists them and ``hemseg predict`` / ``hemseg eval`` average
  them (:func:`hemseg.runtime.backends.ensemble.open_ensemble`), as nnU-Net predicts with all folds;
- an OpenVINO IR ``.xml`` (with its ``.bin``; ``model_ov_int8.xml`` of ``--format openvino-int8``): OpenVINO only.

ONNX vetting needs only onnxruntime (the ``onnx`` package is not a runtime dependency):

1. The file must be readable and non-empty; it is read once into memory and the session is created from those bytes,
   so the checked bytes are the bytes that run.
2. :mod:`hemseg.runtime.onnx_scan` walks the protobuf: not well-formed protobuf, or no graph -> "not an ONNX model";
   any tensor stored as external data -> refused (a deployable hemseg model is a single file; moreover onnxruntime
   resolves external data of a model loaded from bytes against the *current directory*, so it could pick up an
   unrelated file); nodes in a domain that is neither built into onnxruntime nor defined by a model-local function
   -> refused as a custom-op model (onnxruntime cannot load it without the plugin library).
3. Any other load failure of onnxruntime becomes a :class:`ModelError` quoting onnxruntime's first line.
4. Metadata: ``session.get_modelmeta().custom_metadata_map`` -> :meth:`ModelMetadata.from_props` (the OpenVINO
   backend reads the same ``metadata_props`` from the scan of step 2).
5. Signature: exactly one input named ``image`` of type float or float16 with shape ``(N, C, S, S)`` where ``C`` is
   the spec's channel count and ``S`` the spec's size (symbolic dimensions are accepted), and exactly one output
   ``logits`` of type float or float16 with shape ``(N, 1, S, S)``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemseg.errors import ModelError
from hemseg.runtime.io.regular import NOT_REGULAR, read_regular_bytes, read_regular_text
from hemseg.runtime.model_meta import INPUT_NAME, OUTPUT_NAME, PREFIX, ModelMetadata
from hemseg.runtime.onnx_scan import OnnxScan, ScanError, scan_onnx

log = logging.getLogger(__name__)

ONNX_SUFFIXES = (".onnx",)
PLAN_SUFFIXES = (".plan", ".engine")
IR_SUFFIXES = (".xml",)
EXPORT_ONNX = "model.onnx"
EXPORT_PLAN = "model.plan"
#: a fold's export folder inside a folder of fold exports
FOLD_DIR = re.compile(r"fold_(\d+)")
#: written by ``hemseg-export`` of a ``--folds K`` run before its first fold: the folds the export is made of
FOLDS_FILE = "folds.json"
_ORT_TYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model artifact: ``path`` is the file to load, ``kind`` is ``"onnx"`` or ``"plan"``."""

    path: Path
    kind: str
    given: Path


@dataclass(frozen=True)
class OnnxSignature:
    """What the runtime needs to feed and read an ONNX session."""

    input_name: str
    input_dtype: np.dtype
    output_name: str
    output_dtype: np.dtype
    size: int
    channels: int


def artifacts(path: str | Path) -> dict[str, Path]:
    """The artifacts a model path offers, by kind (``{"onnx": ..., "plan": ...}``, either may be missing)."""
    path = Path(path)
    if path.is_dir():
        found = {"onnx": path / EXPORT_ONNX, "plan": path / EXPORT_PLAN}
        return {k: p for k, p in found.items() if p.is_file()}
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return {"onnx": path}
    if suffix in PLAN_SUFFIXES:
        return {"plan": path}
    if suffix in IR_SUFFIXES:
        return {"ovir": path}
    return {}


def fold_dirs(path: str | Path) -> list[Path]:
    """The ``fold_<k>`` sub-folders of ``path``, by k ([] when ``path`` is not a folder): the layout of a
    ``hemseg train --folds K`` run and of ``hemseg-export`` of one."""
    path = Path(path)
    if not path.is_dir():
        return []
    folds = [(int(m.group(1)), d) for d in path.iterdir() if d.is_dir() and (m := FOLD_DIR.fullmatch(d.name))]
    return [d for _, d in sorted(folds)]


def read_fold_list(path: Path) -> dict | None:
    """The ``FOLDS_FILE`` hemseg-export wrote in ``path`` (a JSON object with a ``folds`` list, and each fold's
    ``checkpoint_sha256`` since stop 43), or None: no such file, or one that is not a fold list."""
    try:
        doc = json.loads(read_regular_text(Path(path) / FOLDS_FILE))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("folds"), list) else None


def _listed_folds(path: Path) -> list[str]:
    """The fold folder names ``FOLDS_FILE`` in ``path`` lists ([] without one, e.g. folds assembled by hand)."""
    listed = (read_fold_list(path) or {}).get("folds", [])
    return [str(n) for n in listed if isinstance(n, str) and FOLD_DIR.fullmatch(n)]


def fold_exports(path: str | Path) -> list[Path]:
    """The export folders ``fold_<k>`` (by k) of a folder that holds no model itself; [] for anything else.

    ModelError when some folds hold a model and others none (an export that failed a gate or was cut short):
    averaging the rest would silently be another ensemble than the one asked for."""
    if artifacts(path):
        return []
    folds = fold_dirs(path)
    with_model = [d for d in folds if artifacts(d)]
    missing = [d.name for d in folds if d not in with_model]
    expected = _listed_folds(Path(path))  # an export cut short before a fold's folder existed
    missing += [name for name in expected if name not in {d.name for d in folds}]
    if expected:  # the folds of the export that wrote the list, not those an earlier export left beside them
        with_model = [d for d in with_model if d.name in expected]
        missing = [name for name in missing if name in expected]
    if with_model and missing:
        raise ModelError(Path(path), f"{', '.join(missing)} hold(s) no exported model ({EXPORT_ONNX} or "
                                     f"{EXPORT_PLAN}) beside {len(with_model)} fold(s) that do: re-export the run, or "
                                     "move the incomplete fold folder(s) away to average the others")
    _check_fold_sources(Path(path), with_model)
    return with_model


def _check_fold_sources(path: Path, folds: list[Path]) -> None:
    """ModelError when a fold's model records another checkpoint than the one ``FOLDS_FILE`` lists for that fold:
    an export cut short while it replaced an earlier K-fold export leaves folds of two runs, whose mean is neither
    run's ensemble."""
    listed = (read_fold_list(path) or {}).get("checkpoint_sha256") or {}
    if not isinstance(listed, dict):
        return
    for fold in folds:
        want = listed.get(fold.name)
        if not isinstance(want, str):
            continue
        for model in artifacts(fold).values():
            got = recorded_checkpoint(model)
            if got and got != want:
                raise ModelError(model, f"an export of checkpoint {got[:12]}..., not of the {want[:12]}... that "
                                        f"{path / FOLDS_FILE} lists for {fold.name}: the folder mixes the folds of "
                                        "two runs (an export cut short?); export the run again")


def training_run_reason(folder: Path) -> str | None:
    """Why ``folder`` is no model to run, when it is a training run's folder (``hemseg train --out``) holding no
    export: what to export; None otherwise."""
    if not folder.is_dir() or artifacts(folder):
        return None
    fold_runs = sorted(folder.glob("fold_*/best.pt"))
    if fold_runs:
        return (f"a K-fold training run ({len(fold_runs)} folds' best.pt), not an export: `hemseg-export {folder} --out "
                "EXP` exports every fold, and hemseg predict / eval then average them")
    if (folder / "best.pt").is_file():
        return f"a training run, not an export: `hemseg-export {folder / 'best.pt'} --out EXP` first"
    return None


def resolve(path: str | Path, kind: str) -> ModelSource:
    """The artifact of ``kind`` (``"onnx"`` or ``"plan"``) that ``path`` designates; ModelError when there is none."""
    given = Path(path)
    if not given.exists():
        raise ModelError(given, "no such file or directory")
    found = artifacts(given)
    if kind in found:
        return ModelSource(path=found[kind], kind=kind, given=given)
    want = {"onnx": f"an ONNX model ({EXPORT_ONNX})", "plan": f"a TensorRT engine ({EXPORT_PLAN})",
            "ovir": "an OpenVINO IR model (.xml)"}[kind]
    folds = fold_exports(given)
    if folds:
        raise ModelError(given, f"holds the exports of {len(folds)} folds (fold_1/ ...), not one model: "
                                "hemseg predict and hemseg eval average them; open one fold's folder here")
    run = training_run_reason(given)
    if run:
        raise ModelError(given, run)
    if given.is_dir():
        odd = [p.name for p in (given / EXPORT_ONNX, given / EXPORT_PLAN) if p.exists() and not p.is_file()]
        if odd:
            raise ModelError(given / odd[0], "not a regular file (a folder, pipe, socket or device)")
        if not found:  # no model of any kind: not an export (it spoke of "this backend" under --backend auto)
            raise ModelError(given, "not an export folder: no model in it (model.onnx, model.plan or an OpenVINO "
                                    ".xml); hemseg-export CHECKPOINT --out DIR makes one")
        has = ", ".join(sorted(p.name for p in found.values()))
        raise ModelError(given, f"this backend needs {want}, but the export directory has {has}")
    if given.suffix.lower() in (".pt", ".pth", ".ckpt"):
        from hemseg.runtime.io.sniff import describe_content, read_head, torch_save_kind

        head = read_head(given) if given.is_file() else b""
        if torch_save_kind(head) is None:
            raise ModelError(given, f"named like a PyTorch checkpoint but not one ({describe_content(head)}); "
                                    "hemseg predict takes an exported model (hemseg-export CHECKPOINT --out DIR)")
        raise ModelError(given, "this is a PyTorch checkpoint; export it first: `hemseg-export CHECKPOINT --out DIR`")
    if found:
        raise ModelError(given, f"this backend needs {want}, not a {given.suffix} file")
    raise ModelError(given, "unknown model file type: expected a .onnx file, a .plan TensorRT engine, an OpenVINO "
                            ".xml or an export directory")


def read_model_bytes(path: str | Path) -> bytes:
    """Read a model file; ModelError when it is missing, unreadable or empty."""
    path = Path(path)
    try:
        data = read_regular_bytes(path)
    except IsADirectoryError:
        raise ModelError(path, "is a directory, not a model file") from None
    except OSError as exc:
        if exc.strerror == NOT_REGULAR:  # a named pipe: refused by the reader, never opened blocking
            raise ModelError(path, NOT_REGULAR) from None
        raise ModelError(path, f"cannot read the model file: {exc.strerror or exc}") from None
    if not data:
        raise ModelError(path, "model file is empty (0 bytes)")
    return data


def vet_onnx_bytes(data: bytes, path: str | Path) -> OnnxScan:
    """Step 2 of the module docstring: refuse non-ONNX bytes, external data and custom-op domains. Returns the scan
    (its ``metadata_props`` are the model's metadata)."""
    try:
        scan = scan_onnx(data)
    except ScanError as exc:
        raise ModelError(path, f"not an ONNX model (cannot parse it as ONNX protobuf: {exc})") from None
    if not scan.has_graph or scan.node_count == 0:
        raise ModelError(path, "not an ONNX model (no graph with nodes in it)")
    if scan.external_tensors:
        files = ", ".join(sorted(scan.external_files)) or "a side file"
        names = ", ".join(scan.external_tensors[:3]) + (" ..." if len(scan.external_tensors) > 3 else "")
        raise ModelError(path, f"the model keeps {len(scan.external_tensors)} tensor(s) ({names}) as external data in "
                               f"{files}; hemseg needs a self-contained ONNX file (re-export without external data)")
    if scan.custom_domains:
        raise ModelError(path, f"the model uses custom operators in domain(s) {sorted(scan.custom_domains)}, which "
                               f"onnxruntime cannot run without their plugin library; export with standard ONNX ops")
    return scan


def ort_load_error(path: str | Path, exc: BaseException) -> ModelError:
    """Turn an onnxruntime load exception into a one-line ModelError."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelError(path, f"onnxruntime cannot load the model: {text}")


def read_metadata(session, path: str | Path) -> ModelMetadata:
    """hemseg metadata from the session's ``custom_metadata_map``; ModelError when missing or malformed."""
    try:
        props = dict(session.get_modelmeta().custom_metadata_map)
    except Exception as exc:  # whatever a broken metadata map raises
        raise ModelError(path, f"no usable hemseg metadata ({exc}); export the model with hemseg-export") from None
    return metadata_from_props(props, path)


def metadata_from_props(props: dict[str, str], path: str | Path) -> ModelMetadata:
    """hemseg metadata from ONNX ``metadata_props`` (as onnxruntime or :func:`scan_onnx` read them); ModelError when
    missing or malformed."""
    try:
        return ModelMetadata.from_props(props)
    except Exception as exc:  # MetadataError, or whatever malformed values raise
        raise ModelError(path, f"no usable hemseg metadata ({exc}); export the model with hemseg-export") from None


def _dim_ok(dim, want: int) -> bool:
    return not isinstance(dim, int) or dim == want  # symbolic (str) or unknown (None) dimensions are accepted


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in shape) + ")"


def check_signature(session, meta: ModelMetadata, path: str | Path) -> OnnxSignature:
    """Step 5 of the module docstring."""
    size, channels = meta.image_size, meta.preprocess.channels
    inputs, outputs = session.get_inputs(), session.get_outputs()
    want_in = f"input '{INPUT_NAME}' float/float16 (N, {channels}, {size}, {size})"
    want_out = f"output '{OUTPUT_NAME}' float/float16 (N, 1, {size}, {size})"
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        got = ", ".join(f"'{i.name}' {_fmt(i.shape)}" for i in inputs)
        raise ModelError(path, f"expected one {want_in}; the model has input(s) {got}")
    if len(outputs) != 1 or outputs[0].name != OUTPUT_NAME:
        got = ", ".join(f"'{o.name}' {_fmt(o.shape)}" for o in outputs)
        raise ModelError(path, f"expected one {want_out}; the model has output(s) {got}")
    inp, out = inputs[0], outputs[0]
    shape_in, shape_out = list(inp.shape or []), list(out.shape or [])
    if inp.type not in _ORT_TYPES or len(shape_in) != 4 or not all(
            _dim_ok(d, w) for d, w in zip(shape_in[1:], (channels, size, size))):
        raise ModelError(path, f"expected {want_in}; the model's input is {inp.type} {_fmt(shape_in)}")
    if out.type not in _ORT_TYPES or len(shape_out) != 4 or not all(
            _dim_ok(d, w) for d, w in zip(shape_out[1:], (1, size, size))):
        raise ModelError(path, f"expected {want_out}; the model's output is {out.type} {_fmt(shape_out)}")
    return OnnxSignature(INPUT_NAME, _ORT_TYPES[inp.type], OUTPUT_NAME, _ORT_TYPES[out.type], size, channels)


def _file_sha256(path: Path) -> str:
    """The SHA-256 of ``path``, computed once per file version (an ensemble's folds are asked for more than once)."""
    from hemseg.runtime.io.hashing import cached_sha256

    return cached_sha256(path)


def model_digest(path: str | Path) -> str:
    """SHA-256 of a model file (an OpenVINO ``.xml`` with its ``.bin``: two folds share the network, not the
    weights), once per file version: what tells two models apart (an ensemble's members, the OpenVINO cache's
    subfolders)."""
    path = Path(path)
    digest = _file_sha256(path)
    weights = path.with_suffix(".bin")
    if path.suffix.lower() in IR_SUFFIXES and weights.is_file():
        digest += "+" + _file_sha256(weights)
    return digest


def recorded_checkpoint(path: Path) -> str | None:
    """The ``checkpoint_sha256`` a model file records (ONNX metadata, OpenVINO IR rt_info, a TensorRT engine's
    sidecar ``model.plan.json``), or None when it records none or cannot be read. Read once per file version:
    predict asks for every fold of an ensemble more than once, and an FCN-ResNet50 ONNX file is 130 MB."""
    if Path(path).suffix.lower() == ".plan":  # its sidecar, a small JSON file beside the engine, read each time
        from hemseg.runtime.trt_sidecar import read_sidecar

        try:
            return read_sidecar(path).metadata.get(f"{PREFIX}checkpoint_sha256") or None
        except Exception:  # noqa: BLE001 - unreadable: not known to belong to any checkpoint
            return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return _recorded_checkpoint(str(path), st.st_ino, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _recorded_checkpoint(path: str, inode: int, mtime_ns: int, size: int) -> str | None:
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".onnx":
            props = dict(scan_onnx(read_regular_bytes(Path(path))).metadata_props)
        elif suffix == ".xml":
            from hemseg.runtime.backends.openvino import read_ir_props

            props = read_ir_props(Path(path))
        else:
            return None
        return props.get(f"{PREFIX}checkpoint_sha256") or None
    except Exception:  # unreadable here: the loader has already judged the file
        return None


def export_gate_basis(model_path: str | Path) -> str | None:
    """The basis the parity gate of ``model_path`` was decided on, as its ``export_report.json`` records it
    (``"masks"`` or ``"logits"``: no verification image held foreground of the reference model, so the gate compared
    logits, never lesion masks), or None when there is no such record."""
    path = Path(model_path)
    try:
        report = json.loads(read_regular_text(path.parent / "export_report.json"))
        for entry in (report.get("formats") or {}).values():
            if path.name in (entry.get("files") or []):
                basis = (entry.get("parity") or {}).get("basis")
                return str(basis) if basis is not None else None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError):
        pass
    return None


def export_verification(model_path: str | Path, checkpoint_sha256: str | None = None) -> str | None:
    """The verification status hemseg-export recorded for ``model_path`` in the ``export_report.json`` beside it
    (``"passed"``, ``"not verified"`` for a --no-verify export, ``"unknown"`` for a model an earlier export left
    without a record, or one that is not the file the report describes: another size, another checkpoint, other
    bytes than the SHA-256 recorded when it was built, or a report that cannot be read; also for a "passed" file
    the report records no SHA-256 of, written before hemseg-export recorded them (December 2026), whose bytes cannot be told from
    a same-size file changed in place); None when there is no such report or it does not list the file.

    A model opened through a symbolic link (a deployment's ``current.onnx`` pointing into an export folder) gets the
    verdict of the file it points to where no report beside the link lists it (it was reported as unverified)."""
    path = Path(model_path)
    status = _verification_beside(path, checkpoint_sha256)
    if status is None and path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link, a loop: opening the model has said so
            return None
        if target != path:
            status = _verification_beside(target, checkpoint_sha256)
    return status


def _verification_beside(path: Path, checkpoint_sha256: str | None) -> str | None:
    """:func:`export_verification` from the ``export_report.json`` in ``path``'s own folder."""
    report_path = path.parent / "export_report.json"
    try:
        report = json.loads(read_regular_text(report_path))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # a report cut short: its verdicts cannot be read
        log.warning("%s: unreadable (%s): the verification of %s is unknown", report_path,
                    getattr(exc, "strerror", None) or exc, path.name)
        return "unknown"
    if not isinstance(report, dict) or not isinstance(report.get("formats"), dict):  # '[]', '{}': not a report
        log.warning("%s: not an export report (no formats): the verification of %s is unknown", report_path,
                    path.name)
        return "unknown"
    try:
        entries = [e for e in (report.get("formats") or {}).values() if path.name in (e.get("files") or [])]
        if not entries:
            return None
        entry = entries[0]
        recorded_sha = (report.get("checkpoint") or {}).get("sha256")
        own_sha = checkpoint_sha256 or recorded_checkpoint(path)
        # each "unknown" says why in the log (the three below gave no reason: a model damaged or replaced since its
        # export looked like one without a record; QA, stop 59)
        if own_sha and recorded_sha and own_sha != recorded_sha:  # this file was put there since
            log.warning("%s: made from checkpoint %s, not the %s its folder's export_report.json is about: its "
                        "verification is unknown", path, own_sha[:12], str(recorded_sha)[:12])
            return "unknown"
        files = [path.parent / f for f in entry.get("files") or []]
        if entry.get("size_bytes") is not None and all(f.is_file() for f in files) \
                and sum(f.stat().st_size for f in files) != entry["size_bytes"]:  # an IR's .xml and .bin together
            log.warning("%s: not the size export_report.json records (replaced since the export): its verification "
                        "is unknown", path)
            return "unknown"
        recorded = entry.get("sha256") or {}
        if isinstance(recorded, dict) and any(f.name in recorded and f.is_file() and _file_sha256(f) != recorded[f.name]
                                              for f in files):
            log.warning("%s: its SHA-256 is not the one export_report.json records (changed since the export): its "
                        "verification is unknown", path)
            return "unknown"
        status = entry.get("status")
        if status == "passed" and (not isinstance(recorded, dict) or any(f.name not in recorded for f in files)):
            log.warning("%s records no SHA-256 of %s (an export by an earlier hemseg): its verification is unknown; "
                        "re-export to record it", report_path, path.name)
            return "unknown"
        return str(status) if status is not None else None
    except (OSError, ValueError, AttributeError, TypeError):
        return None
