"""Step 1: the FP32 ONNX model ``model.onnx`` from a checkpoint's PyTorch model.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter, default and recommended since
PyTorch 2.9; it needs ``onnxscript``). The legacy TorchScript exporter is deprecated and slated for removal, so it is
not used. The batch dimension is made dynamic with ``dynamic_shapes`` (``torch.export.Dim("N")``); height and width
stay fixed at the preprocessing size, so the output shape is fully known: ``logits`` (N, 1, S, S).

Opset: :data:`DEFAULT_OPSET` (18) is the lowest opset the dynamo exporter implements natively and is read by
onnxruntime >= 1.14 and TensorRT 10. Lower opsets are refused (:func:`check_opset`): the exporter would have to run
a version converter, which fails on these graphs (e.g. "No Adapter From Version 16 for Identity") and then silently
keeps opset 18. A higher opset is accepted if the exporter really produces it (checked after the export).

BatchNorm: the model is exported in eval mode (running statistics, folded into the convolutions by the exporter's
optimizer). It is put in eval mode here, and the step fails if any sub-module is still (or again) in training mode
after the export, since a training-mode BatchNorm computes batch statistics and breaks parity.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from hemseg.errors import ModelError, UsageError
from hemseg.export import onnx_io
from hemseg.export.metadata import model_props, write_props
from hemseg.runtime.model_meta import INPUT_NAME, OUTPUT_NAME, ModelMetadata

log = logging.getLogger(__name__)

FILE_NAME = "model.onnx"
DEFAULT_OPSET = 18
#: upper bound of the dynamic batch dimension recorded by torch.export (the ONNX dimension itself is symbolic)
MAX_BATCH = 4096


def check_opset(opset: int) -> int:
    """UsageError for an opset the exporter cannot produce natively (below :data:`DEFAULT_OPSET`)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise UsageError(f"--opset {opset} is not supported: torch's ONNX exporter writes opset {DEFAULT_OPSET} or "
                         f"newer (use --opset {DEFAULT_OPSET}, read by onnxruntime >= 1.14 and TensorRT 10)")
    try:
        from onnx.defs import onnx_opset_version

        newest = int(onnx_opset_version())
    except ImportError:
        return opset  # the export step names the missing package
    if opset > newest:
        raise UsageError(f"--opset {opset} is newer than the installed onnx knows (up to {newest}); use --opset "
                         f"{DEFAULT_OPSET}")
    return opset


def _training_modules(model) -> list[str]:
    return [name or type(model).__name__ for name, m in model.named_modules() if m.training]


def export_fp32(model, meta: ModelMetadata, checkpoint_path: str | Path, out_dir: str | Path,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` (a hemseg network) to ``out_dir/model.onnx``; returns the path written.

    ``meta`` must have precision ``fp32``; it and ``hemseg.checkpoint_path`` go into ``metadata_props``.
    """
    import torch

    path = Path(out_dir) / FILE_NAME
    check_opset(opset)
    if meta.precision != "fp32":
        raise ModelError(path, f"the FP32 export needs fp32 metadata, got precision {meta.precision!r}")
    spec = meta.preprocess
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if n_bytes >= onnx_io.MAX_ONNX_BYTES:
        raise ModelError(checkpoint_path, f"{n_bytes / 1e9:.2f} GB of weights: over the 2 GB single-file ONNX limit")
    model = model.cpu().eval()
    example = torch.randn(2, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("N", min=1, max=MAX_BATCH)
    log.info("exporting %s (%d px, opset %d) to %s", meta.model, spec.size, opset, path)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), opset_version=int(opset), external_data=False, optimize=True,
                verbose=False,
            )
    except Exception as exc:
        interrupt = _interrupt_in(exc)
        if interrupt is not None:  # Ctrl-C or SIGTERM during the export, which torch wraps in its own error
            raise interrupt from None
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(checkpoint_path, f"torch.onnx.export failed: {text[:300]}") from None
    still_training = _training_modules(model)
    if still_training:
        raise ModelError(checkpoint_path, f"module(s) {still_training[:3]} are in training mode after the export; "
                                          "BatchNorm would use batch statistics")
    proto = program.model_proto
    got = onnx_io.default_opset(proto)
    if got != int(opset):
        raise ModelError(path, f"opset {opset} was requested but the exporter produced opset {got} (it could not "
                               f"convert the graph); use --opset {DEFAULT_OPSET} or newer")
    proto.doc_string = f"hemseg {meta.model} segmentation network, FP32 (exported from {Path(checkpoint_path).name})"
    write_props(proto, model_props(meta, checkpoint_path))
    onnx_io.check_signature(proto, path, spec.size, spec.channels)
    onnx_io.check_model(proto, path)
    return onnx_io.save_onnx(proto, path)


def _interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """A KeyboardInterrupt (Ctrl-C, or hemseg's SIGTERM) among ``exc``'s causes and contexts, else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
