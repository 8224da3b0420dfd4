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


def mean_nan_copy(dst: Path) -> Path:
    """TINY whose logits are ``raw + log(-mean(raw))`` per slice (raw = 10 * x[:, 0]): finite for a dark image,
    all NaN for a bright one, as an overflow that depends on the input would be. Needs ``onnx``."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(TINY))
    conv = model.graph.node[0]
    out, conv.output[0] = conv.output[0], "raw"
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((1,), np.float32), "zero"))
    model.graph.node.extend([helper.make_node("ReduceMean", ["raw"], ["mu"], axes=[2, 3], keepdims=1),
                             helper.make_node("Sub", ["zero", "mu"], ["d"]), helper.make_node("Log", ["d"], ["l"]),
                             helper.make_node("Add", ["raw", "l"], [out])])
    onnx.save(model, str(dst))
    return dst


def constant_copy(dst: Path, value: float) -> Path:
    """TINY whose logits are all ``value`` (NaN, +inf, ...): its Conv's weights 0 and bias ``value``. Needs ``onnx``."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(TINY))
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        fill = value if init.name == "b" else 0.0
        init.CopyFrom(numpy_helper.from_array(np.full_like(arr, fill), init.name))
    onnx.save(model, str(dst))
    return dst
