"""Step ``openvino-int8``: ``model_ov_int8.onnx``, NNCF post-training quantization of ``model.onnx`` for OpenVINO.

Why a second INT8 file: ``model_int8.onnx`` is quantized by ONNX Runtime's tooling for ONNX Runtime's kernels, and
OpenVINO could not compile that QDQ file with its bf16 hint on an AMX CPU. NNCF (OpenVINO's quantization library)
places the quantizers where OpenVINO's CPU plugin has INT8 kernels (``target_device=CPU``; VNNI / AMX-INT8 make
them fast, see :mod:`hemseg.runtime.cpu_features`). The result is still a single self-contained ONNX file (QDQ
nodes), so the runtime's OpenVINO backend compiles it like the FP32 file and reads the same metadata; ONNX Runtime
can load it too.

Recipe, as close to ``onnx-int8`` as NNCF allows, so the two can be compared:

- calibration images: the same set (:mod:`hemseg.export.calib`: the real preprocessing, ``--calib DATA`` or the
  phantom), all of them used (``subset_size`` = their number);
- the same nodes kept in floating point (:func:`hemseg.export.onnx_int8.float_nodes`: the first convolution and the
  head), as NNCF's ``IgnoredScope``;
- NNCF's defaults otherwise: ``preset=PERFORMANCE`` (symmetric INT8 activations and weights, per-channel weights),
  MinMax range estimation, fast bias correction;
- the same gate: mask Dice against the FP32 ONNX model on the verification images >= ``INT8_MIN_DICE``
  (:func:`hemseg.export.parity.verify_vs_fp32`), judged on the logits OpenVINO computes from the file (OpenVINO
  FP32 hint, i.e. INT8 where quantized), plus the runtime gate (the hemseg runtime opens it).

The file records ``precision = int8`` and a ``hemseg.quantization`` record (tool, preset, calibration, float nodes)
in its metadata. Needs the ``[nncf]`` extra (``nncf`` and ``openvino``) at export time only.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np

from hemseg.errors import DependencyError, ModelError, UsageError
from hemseg.export import onnx_io
from hemseg.export.metadata import model_props, with_precision, write_props
from hemseg.export.onnx_int8 import QUANT_KEY, float_nodes, qdq_counts
from hemseg.runtime.model_meta import INPUT_NAME, ModelMetadata

log = logging.getLogger(__name__)

FILE_NAME = "model_ov_int8.onnx"
INSTALL_HINT = "pip install hemseg[nncf] (NNCF and OpenVINO)"
#: images per OpenVINO inference call while verifying
CHUNK = 8


def require_nncf() -> None:
    """DependencyError (before anything is written) when NNCF or OpenVINO is missing."""
    missing = [m for m in ("nncf", "openvino") if importlib.util.find_spec(m) is None]
    if missing:
        raise DependencyError(f"--format openvino-int8 needs {' and '.join(missing)}: {INSTALL_HINT}")


def _nncf():
    require_nncf()
    try:
        import nncf
    except Exception as exc:  # an install that fails to import
        raise DependencyError(f"NNCF failed to import ({type(exc).__name__}: {exc}); {INSTALL_HINT}") from None
    return nncf


def quantize_openvino_int8(fp32_path: str | Path, calib_images: np.ndarray, meta: ModelMetadata,
                           checkpoint_path: str | Path, out_dir: str | Path) -> Path:
    """Quantize ``fp32_path`` with NNCF into ``out_dir/model_ov_int8.onnx``, calibrated on ``calib_images``."""
    fp32_path, path = Path(fp32_path), Path(out_dir) / FILE_NAME
    spec = meta.preprocess
    images = np.asarray(calib_images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (spec.channels, spec.size, spec.size) or len(images) == 0:
        raise UsageError(f"calibration images must be a non-empty (N, {spec.channels}, {spec.size}, {spec.size}) "
                         f"array, got shape {images.shape}")
    nncf = _nncf()
    model = onnx_io.load_onnx(fp32_path)
    exclude = float_nodes(model)
    log.info("quantizing %s to INT8 for OpenVINO with NNCF %s (preset performance, CPU, %d calibration image(s)); "
             "kept in floating point: %s", fp32_path, nncf.__version__, len(images), ", ".join(exclude) or "nothing")
    dataset = nncf.Dataset([images[i:i + 1] for i in range(len(images))], lambda x: {INPUT_NAME: x})
    try:
        quantized = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE,
                                  target_device=nncf.TargetDevice.CPU, subset_size=len(images),
                                  ignored_scope=nncf.IgnoredScope(names=exclude, validate=False))
    except Exception as exc:
        raise ModelError(fp32_path, f"NNCF quantization failed: {onnx_io.first_line(exc)}") from None
    counts = qdq_counts(quantized)
    if not counts["QuantizeLinear"] or not counts["DequantizeLinear"]:
        raise ModelError(path, f"NNCF produced no QuantizeLinear/DequantizeLinear nodes ({counts})")
    record = {"tool": "nncf", "nncf": str(nncf.__version__), "preset": "performance", "target_device": "CPU",
              "calibration": "minmax", "calibration_images": int(len(images)), "fast_bias_correction": True,
              "float_nodes": exclude, "for": "openvino"}
    int8_meta = with_precision(meta, "int8", extra_producers=("nncf", "openvino"))
    quantized.doc_string = (model.doc_string or "").replace("FP32", "INT8 (NNCF, for OpenVINO)")
    write_props(quantized, {**model_props(int8_meta, checkpoint_path), QUANT_KEY: json.dumps(record, sort_keys=True)})
    onnx_io.check_signature(quantized, path, spec.size, spec.channels)
    onnx_io.check_model(quantized, path)
    log.info("openvino-int8: %d QuantizeLinear / %d DequantizeLinear nodes", counts["QuantizeLinear"],
             counts["DequantizeLinear"])
    return onnx_io.save_onnx(quantized, path)


def run_openvino(path: str | Path, images: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Logits (N, 1, S, S) float32 of an ONNX file through the hemseg runtime's OpenVINO runner (precision auto:
    an INT8 file runs its quantized parts in INT8 and the rest in f32), without the model cache."""
    from hemseg.runtime.backends.openvino import OpenVinoRunner

    with OpenVinoRunner.from_path(path, "auto", cache_dir=False) as runner:
        return np.concatenate([runner.infer(images[i:i + chunk]) for i in range(0, len(images), chunk)])
