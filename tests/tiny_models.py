"""The tiny test model (logits = 10 * x[:, 0] at 64 px) and distinct files of it for ensembles."""

from __future__ import annotations

from pathlib import Path

TINY = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"


def other_copy(dst: Path) -> Path:
    """TINY with another doc_string (ModelProto field 6 appended: protobuf keeps the last), so another file than
    TINY to an ensemble, which refuses a member identical to another."""
    dst.write_bytes(TINY.read_bytes() + b"\x32\x0canother copy")
    return dst


def export_folder(folder: Path) -> Path:
    """``folder`` holding TINY as ``model.onnx`` (created), for :func:`write_export_report`."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY, folder / "model.onnx")
    return folder


def write_export_report(folder: Path, status: str) -> None:
    """An export_report.json beside ``folder/model.onnx`` (TINY) giving it ``status``, with its file's SHA-256."""
    import hashlib
    import json

    sha = hashlib.sha256(TINY.read_bytes()).hexdigest()
    (folder / "export_report.json").write_text(json.dumps(
        {"formats": {"onnx": {"files": ["model.onnx"], "status": status, "sha256": {"model.onnx": sha}}}}))
