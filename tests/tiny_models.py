"""The tiny test model (logits = 10 * x[:, 0] at 64 px) and distinct files of it for ensembles."""

from __future__ import annotations

from pathlib import Path

TINY = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"


def other_copy(dst: Path) -> Path:
    """TINY with another doc_string (ModelProto field 6 appended: protobuf keeps the last), so another file than
    TINY to an ensemble, which refuses a member identical to another."""
    dst.write_bytes(TINY.read_bytes() + b"\x32\x0canother copy")
    return dst
