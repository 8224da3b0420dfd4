"""Saving, loading and checking the ONNX files hemseg writes.

Conventions every exported ONNX file follows (checked here, so each format step only has to call these):

- **Self-contained**: all weights live inside the one ``.onnx`` file. Tensors a source model keeps as external data
  are loaded and embedded on :func:`load_onnx`; a model whose serialized size is over protobuf's 2 GB limit is
  refused (hemseg never writes ``.onnx.data`` side files: the runtime refuses them).
- **Atomic**: the bytes go to a temporary file in the destination folder, then ``os.replace`` (no partial files).
- **Valid**: ``onnx.checker.check_model`` and ``onnx.shape_inference.infer_shapes(strict_mode=True)`` pass.
- **Signature**: one input ``image`` float32 ``(N, C, S, S)`` and one output ``logits`` float32 ``(N, 1, S, S)``
  with a symbolic (dynamic) batch dimension ``N`` on both; ``C`` and ``S`` come from the preprocessing spec.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from hemseg.errors import ModelError
from hemseg.runtime.io.writers import atomic_write_bytes
from hemseg.runtime.model_meta import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

#: protobuf cannot serialize a message of 2 GiB or more; hemseg keeps ONNX files below it (no external data)
MAX_ONNX_BYTES = (1 << 31) - 1


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file with any external data embedded; ModelError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "ONNX file not found")
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # DecodeError, missing external data file, ...
        raise ModelError(path, f"cannot be read as an ONNX model: {first_line(exc)}") from None


def external_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of the initializers still stored as external data (empty for a self-contained model)."""
    return [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Serialize ``model`` as one self-contained file, atomically. Refuses external data and models >= 2 GB."""
    path = Path(path)
    ext = external_tensors(model)
    if ext:
        raise ModelError(path, f"{len(ext)} tensor(s) ({', '.join(ext[:3])}) are still external data; load them first")
    size = model.ByteSize()
    if size > MAX_ONNX_BYTES:
        raise ModelError(path, f"the model would be {size / 1e9:.2f} GB, over the 2 GB limit of a single-file ONNX "
                               "model; hemseg does not write external-data ONNX files")
    atomic_write_bytes(path, model.SerializeToString())
    log.debug("wrote %s (%d bytes)", path, size)
    return path


def check_model(model: onnx.ModelProto, path: str | Path) -> None:
    """The ONNX checker and strict shape inference; ModelError naming ``path`` with the first failure."""
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(path, f"fails the ONNX checker: {first_line(exc)}") from None
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ModelError(path, f"fails strict ONNX shape inference: {first_line(exc)}") from None


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def check_signature(model: onnx.ModelProto, path: str | Path, size: int, channels: int) -> None:
    """Input ``image`` float32 (N, C, S, S) and output ``logits`` float32 (N, 1, S, S) with a dynamic N."""
    graph = model.graph
    names_in, names_out = [i.name for i in graph.input], [o.name for o in graph.output]
    if names_in != [INPUT_NAME] or names_out != [OUTPUT_NAME]:
        raise ModelError(path, f"expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got inputs {names_in} "
                               f"and outputs {names_out}")
    for info, want in ((graph.input[0], (channels, size, size)), (graph.output[0], (1, size, size))):
        elem = info.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            raise ModelError(path, f"{info.name!r} is {onnx.TensorProto.DataType.Name(elem)}, expected FLOAT (float32)")
        dims = _dims(info)
        if len(dims) != 4:
            raise ModelError(path, f"{info.name!r} has rank {len(dims)}, expected 4 (N, C, H, W)")
        if not isinstance(dims[0], str):
            raise ModelError(path, f"{info.name!r} has a fixed batch dimension {dims[0]}, expected a dynamic N")
        bad = [(d, w) for d, w in zip(dims[1:], want) if isinstance(d, int) and d != w]
        if bad:
            raise ModelError(path, f"{info.name!r} has shape {dims}, expected (N, {', '.join(map(str, want))})")


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ("" / "ai.onnx") operator set the model imports."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ValueError("the model imports no default-domain opset")


def op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
