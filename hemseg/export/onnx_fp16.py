"""Step 2: the mixed-precision model ``model_fp16.onnx`` from ``model.onnx``.

Conversion: ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)``: weights and activations
become float16, the graph input ``image`` and output ``logits`` stay float32 (Cast nodes at the edges), and the ops
of :data:`FP16_OP_BLOCK_LIST` stay in float32 with Casts around them. That list is the converter's default list
(which keeps e.g. ``Resize``, ``TopK``, ``Range``, ``CumSum``, ``Min``/``Max`` in float32) plus the numerically
sensitive ops :data:`SENSITIVE_OPS` (exponentials, logarithms, powers, reductions, normalizations, softmax), which
overflow float16's 65504 or lose too many bits. The hemseg networks consist of Conv / ConvTranspose / Relu /
MaxPool / Concat / Add / Mul / Sigmoid (BatchNorm is folded into the convolutions at export), which all run in
float16; FCN-ResNet50's final bilinear ``Resize`` of the 1-channel logits stays float32.

Weights are rounded to the nearest float16, with non-zero magnitudes clamped to [``MIN_POSITIVE``, ``MAX_FINITE``]
(the smallest float16 subnormal and the largest finite float16; zeros stay zero).

A converter quirk is repaired: when a float32-kept op produces the graph output, onnxconverter_common 1.16 leaves the
output typed float16; :func:`restore_float32_outputs` turns the final Cast back into a float32 Cast.

ONNX Runtime on the CPU has float16 kernels for few ops; for the others it inserts Casts and computes in float32
between float16 tensors, so the CPU parity check measures float16 storage and rounding at op boundaries, not
float16 arithmetic (TensorRT computes in float16 for real).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from hemseg.errors import DependencyError, ModelError
from hemseg.export import onnx_io
from hemseg.export.metadata import model_props, with_precision, write_props
from hemseg.runtime.model_meta import ModelMetadata

log = logging.getLogger(__name__)

FILE_NAME = "model_fp16.onnx"
SENSITIVE_OPS = (
    "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Softmax", "LogSoftmax", "Softplus",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd",
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "LpNormalization",
)
MIN_POSITIVE = 5.96e-08
MAX_FINITE = 65504.0


def _converter():
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise DependencyError("onnxconverter-common is needed for the FP16 export: pip install 'hemseg[train]'") from None
    return float16


def op_block_list() -> list[str]:
    """The ops kept in float32: the converter's default list plus :data:`SENSITIVE_OPS`."""
    return sorted(set(_converter().DEFAULT_OP_BLOCK_LIST) | set(SENSITIVE_OPS))


def fp16_initializers(model: onnx.ModelProto) -> tuple[int, int]:
    """``(float16 initializers, float16 + float32 initializers)`` of the main graph."""
    f16 = sum(1 for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16)
    f32 = sum(1 for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)
    return f16, f16 + f32


def require_fp16(model: onnx.ModelProto, path: str | Path) -> int:
    """Refuse a "FP16" model that stores no float16 weights (an FP32 model under another name). Returns the count."""
    f16, total = fp16_initializers(model)
    if f16 == 0:
        raise ModelError(path, f"not an FP16 model: none of its {total} floating-point initializers is float16")
    return f16


def kept_fp32_ops(model: onnx.ModelProto) -> list[str]:
    """The op types of the graph that the conversion kept in float32 (those of the block list)."""
    blocked = set(op_block_list())
    return sorted({n.op_type for n in model.graph.node if n.op_type in blocked})


def restore_float32_outputs(model: onnx.ModelProto) -> list[str]:
    """Make every float16 graph output float32 again; returns the names changed.

    If the output comes from a ``Cast(to=FLOAT16)`` that nothing else reads, that Cast becomes ``Cast(to=FLOAT)``
    (no extra rounding); otherwise a ``Cast(to=FLOAT)`` is appended.
    """
    graph = model.graph
    changed = []
    for out in graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        producer = next((n for n in graph.node if out.name in n.output), None)
        readers = [n for n in graph.node if out.name in n.input]
        to_attr = None
        if producer is not None and producer.op_type == "Cast" and not readers:
            to_attr = next((a for a in producer.attribute if a.name == "to"), None)
        if to_attr is not None and to_attr.i == TensorProto.FLOAT16:
            to_attr.i = TensorProto.FLOAT
        else:
            inner = out.name + "_fp16"
            for node in graph.node:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            graph.node.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT,
                                               name=out.name + "_cast_to_fp32"))
        out.type.tensor_type.elem_type = TensorProto.FLOAT
        changed.append(out.name)
    return changed


def convert_fp16(fp32_path: str | Path, meta: ModelMetadata, checkpoint_path: str | Path,
                 out_dir: str | Path) -> Path:
    """Convert ``fp32_path`` (``model.onnx``) to ``out_dir/model_fp16.onnx``; returns the path written."""
    float16 = _converter()
    path = Path(out_dir) / FILE_NAME
    model = onnx_io.load_onnx(fp32_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = float16.convert_float_to_float16(
                model, min_positive_val=MIN_POSITIVE, max_finite_val=MAX_FINITE, keep_io_types=True,
                op_block_list=op_block_list(),
            )
        except Exception as exc:
            raise ModelError(fp32_path, f"float16 conversion failed: {onnx_io.first_line(exc)}") from None
    clamped = sum(1 for w in caught if "truncated" in str(w.message))
    if clamped:
        log.info("float16: %d weight tensor(s) had values beyond the float16 range (0 < |w| < %g or |w| > %g), "
                 "clamped to it", clamped, MIN_POSITIVE, MAX_FINITE)
    fixed = restore_float32_outputs(model)
    if fixed:
        log.debug("float16: restored float32 outputs %s", fixed)
    n16 = require_fp16(model, path)
    log.info("float16: %d float16 initializers; ops kept in float32: %s", n16, kept_fp32_ops(model) or "none")
    fp16_meta = with_precision(meta, "fp16", extra_producers=("onnxconverter-common",))
    model.doc_string = (model.doc_string or "").replace("FP32", "FP16 mixed precision (float32 I/O)")
    write_props(model, model_props(fp16_meta, checkpoint_path))
    spec = meta.preprocess
    onnx_io.check_signature(model, path, spec.size, spec.channels)
    onnx_io.check_model(model, path)
    return onnx_io.save_onnx(model, path)
