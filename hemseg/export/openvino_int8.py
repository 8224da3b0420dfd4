"""Step ``openvino-int8``: ``model_ov_int8.xml`` + ``.bin``, NNCF post-training quantization of ``model.onnx`` for
OpenVINO's CPU plugin (INT8 kernels, fast on VNNI / AMX-INT8 CPUs, see :mod:`hemseg.runtime.cpu_features`).

Why OpenVINO IR and not a QDQ ONNX file: measured on this project's AVX2 CPU (the 64 px test U-Net, 8 phantom
verification images, logits' relative L2 error against FP32), OpenVINO 2026.4 runs QDQ ONNX files with a 14.6 %
error, both ONNX Runtime's ``model_int8.onnx`` (which ONNX Runtime itself runs at 0.9 %) and an NNCF-quantized QDQ
file (ONNX Runtime: 1.7 %), while NNCF's quantization of the OpenVINO model (``FakeQuantize`` nodes) runs at 0.9 %
(overflow fix on all layers) or 2.1 % (first layer only). So the file is OpenVINO's own format: ``model_ov_int8.xml``
(graph) and ``model_ov_int8.bin`` (weights), with hemseg's metadata (the same keys as ONNX ``metadata_props``,
``precision = int8``, plus a ``hemseg.quantization`` record) in the model's ``rt_info["hemseg"]``. The runtime's
OpenVINO backend opens it (``hemseg predict EXPORT/model_ov_int8.xml``); ONNX Runtime cannot.

Recipe, as close to ``onnx-int8`` as NNCF allows:

- the same calibration images (:mod:`hemseg.export.calib`: the real preprocessing, ``--calib DATA`` or the phantom),
  all of them used (``subset_size`` = their number);
- the same layers kept in floating point (the first convolution and the head: :func:`ov_float_nodes`, the OpenVINO
  graph's counterpart of :func:`hemseg.export.onnx_int8.float_nodes`), as NNCF's ``IgnoredScope``;
- NNCF's ``preset=PERFORMANCE`` (symmetric INT8, per-channel weights), MinMax ranges, fast bias correction,
  ``target_device=CPU``;
- overflow fix (NNCF's counterpart of onnx-int8's 7-bit weights: x86 INT8 kernels without VNNI sum pairs of
  products in int16, which saturates with full-range weights): by default both NNCF's default (``first_layer``) and
  ``enable`` (all layers) are built and the one whose logits are closer to the FP32 model's on (up to
  :data:`SELECT_IMAGES` of) the calibration images, as OpenVINO computes them on *this* CPU, is kept; the choice and
  both errors are recorded;
- the same gates as ``onnx-int8`` (:func:`hemseg.export.parity.verify_format`: mask Dice against the FP32 ONNX
  model >= ``INT8_MIN_DICE``, or the logit gate when the Dice is not measurable, plus ``runtime_loads``), on what the
  runtime's OpenVINO backend computes from the file through the runtime's one pipeline (:func:`openvino_runner`).

Needs the ``[nncf]`` extra (``nncf`` and ``openvino``) at export time only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hemseg.errors import DependencyError, ModelError, UsageError
from hemseg.export.metadata import model_props, with_precision
from hemseg.export.onnx_int8 import QUANT_KEY
from hemseg.runtime.backends.openvino import ov_core
from hemseg.runtime.model_meta import ModelMetadata

log = logging.getLogger(__name__)

FILE_NAME = "model_ov_int8.xml"
WEIGHTS_NAME = "model_ov_int8.bin"
INSTALL_HINT = "pip install 'hemseg[nncf]' (NNCF and OpenVINO)"
OVERFLOW_FIXES = ("first_layer", "enable")
#: calibration images on which the overflow fix is chosen (the first ones)
SELECT_IMAGES = 16
#: images per OpenVINO inference call while choosing the overflow fix
CHUNK = 8
#: rt_info section holding hemseg's metadata in an OpenVINO IR file (read back by the runtime)
RT_SECTION = "hemseg"


def require_nncf() -> None:
    """DependencyError (before anything is written) when NNCF or OpenVINO is missing."""
    missing = [m for m in ("nncf", "openvino") if importlib.util.find_spec(m) is None]
    if missing:
        raise DependencyError(f"--format openvino-int8 needs {' and '.join(missing)}: {INSTALL_HINT}")


@contextlib.contextmanager
def _progress_to_stderr() -> Iterator[None]:
    """NNCF draws its progress bars (rich) on stdout, where hemseg-export writes its table: send them to stderr,
    and nowhere when INFO is not logged (``-q``)."""
    sink = sys.stderr if log.isEnabledFor(logging.INFO) else io.StringIO()
    with contextlib.redirect_stdout(sink):
        yield


def _imports():
    require_nncf()
    try:
        import nncf
        import openvino
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    except Exception as exc:  # an install that fails to import
        raise DependencyError(f"NNCF / OpenVINO failed to import ({type(exc).__name__}: {exc}); {INSTALL_HINT}") from None
    if not log.isEnabledFor(logging.DEBUG):  # NNCF sets its own logger to INFO on import; its notes go to -vv only
        logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf, openvino, AdvancedQuantizationParameters, OverflowFix


def ov_float_nodes(model) -> list[str]:
    """Friendly names of the OpenVINO ops kept in floating point: the first ``Convolution`` reading the model input
    (with its bias ``Add``), and the last ``Convolution`` on the way to each output with every op after it on that
    way (the head, e.g. the bias and the bilinear ``Interpolate`` to full resolution)."""
    keep: list[str] = []
    inputs = {p.get_friendly_name() for p in model.get_parameters()}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Convolution":
            src = op.input_value(0).get_node()  # through Convert, Pad, ... (a size no multiple of 32 pads first)
            while src.get_type_name() not in ("Parameter", "Convolution", "Constant") and src.get_input_size():
                src = src.input_value(0).get_node()
            if src.get_friendly_name() in inputs:
                keep.append(op.get_friendly_name())
                for target in op.output(0).get_target_inputs():  # the bias Add of "conv/WithoutBiases"
                    if target.get_node().get_type_name() == "Add":
                        keep.append(target.get_node().get_friendly_name())
                break
    for result in model.get_results():
        node = result.input_value(0).get_node()
        while node is not None and node.get_type_name() not in ("Parameter", "Constant"):
            keep.append(node.get_friendly_name())
            if node.get_type_name() == "Convolution" or not node.get_input_size():
                break
            node = node.input_value(0).get_node()
    return list(dict.fromkeys(keep))


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-12))


def _infer(ov, model, images: np.ndarray) -> np.ndarray:
    compiled = ov_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.concatenate([np.asarray(compiled(images[i:i + CHUNK])[0], np.float32)
                           for i in range(0, len(images), CHUNK)])


def quantize_openvino_int8(fp32_path: str | Path, calib_images: np.ndarray, meta: ModelMetadata,
                           checkpoint_path: str | Path, out_dir: str | Path, overflow_fix: str | None = None) -> Path:
    """Quantize ``fp32_path`` with NNCF into ``out_dir/model_ov_int8.xml`` (+ ``.bin``), calibrated on
    ``calib_images``; ``overflow_fix=None`` chooses (module docstring). Returns the ``.xml`` path."""
    fp32_path, path = Path(fp32_path), Path(out_dir) / FILE_NAME
    spec = meta.preprocess
    images = np.ascontiguousarray(calib_images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (spec.channels, spec.size, spec.size) or len(images) == 0:
        raise UsageError(f"calibration images must be a non-empty (N, {spec.channels}, {spec.size}, {spec.size}) "
                         f"array, got shape {images.shape}")
    if overflow_fix is not None and overflow_fix not in OVERFLOW_FIXES:
        raise UsageError(f"overflow fix must be one of {OVERFLOW_FIXES}, got {overflow_fix!r}")
    nncf, ov, Advanced, OverflowFix = _imports()
    try:
        model = ov_core().read_model(str(fp32_path))
    except Exception as exc:
        raise ModelError(fp32_path, f"OpenVINO cannot read the FP32 model: {str(exc).strip().splitlines()[0]}") from None
    exclude = ov_float_nodes(model)
    fixes = list(OVERFLOW_FIXES) if overflow_fix is None else [overflow_fix]
    log.info("quantizing %s to INT8 for OpenVINO with NNCF %s (preset performance, CPU, %d calibration image(s), "
             "overflow fix %s); kept in floating point: %s", fp32_path, nncf.__version__, len(images),
             " and ".join(fixes) + (", keeping the better" if len(fixes) > 1 else ""), ", ".join(exclude) or "nothing")
    dataset = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    built = {}
    for fix in fixes:
        try:
            with _progress_to_stderr():
                built[fix] = nncf.quantize(
                    model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
                    subset_size=len(images), ignored_scope=nncf.IgnoredScope(names=exclude, validate=False),
                    advanced_parameters=Advanced(overflow_fix=OverflowFix.ENABLE if fix == "enable"
                                                 else OverflowFix.FIRST_LAYER))
        except Exception as exc:
            raise ModelError(fp32_path, f"NNCF quantization failed: {str(exc).strip().splitlines()[0]}") from None
    record: dict = {"tool": "nncf", "nncf": str(nncf.__version__), "openvino": str(ov.__version__).split("-")[0],
                    "format": "OpenVINO IR (FakeQuantize)", "preset": "performance", "target_device": "CPU",
                    "calibration": "minmax", "calibration_images": int(len(images)), "fast_bias_correction": True,
                    "float_nodes": exclude}
    if len(built) > 1:
        sel = images[:SELECT_IMAGES]
        ref = _infer(ov, model, sel)
        errors = {fix: _rel_l2(_infer(ov, q, sel), ref) for fix, q in built.items()}
        chosen = min(errors, key=lambda f: (errors[f], f))
        record.update({f"rel_l2_overflow_fix_{f}": e for f, e in errors.items()},
                      selection_images=int(len(sel)))
        log.info("openvino-int8: logit error vs FP32 on calibration images: overflow fix first_layer %.4f, "
                 "enable %.4f -> %s", errors["first_layer"], errors["enable"], chosen)
    else:
        chosen = fixes[0]
    record["overflow_fix"] = chosen
    quantized = built[chosen]
    fq = sum(1 for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize")
    if not fq:
        raise ModelError(path, "NNCF produced no FakeQuantize ops")
    record["fake_quantize_ops"] = fq
    props = {**model_props(with_precision(meta, "int8", extra_producers=("nncf", "openvino")), checkpoint_path),
             QUANT_KEY: json.dumps(record, sort_keys=True)}
    for key, value in props.items():
        quantized.set_rt_info(str(value), [RT_SECTION, key])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.xml")
    try:
        ov.save_model(quantized, str(tmp), compress_to_fp16=False)
        tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))
        tmp.replace(path)
    finally:
        for t in (tmp, tmp.with_suffix(".bin")):
            t.unlink(missing_ok=True)
    log.info("openvino-int8: %d FakeQuantize ops, overflow fix %s", fq, chosen)
    return path


def quantization_record_ir(path: str | Path) -> dict:
    """The ``hemseg.quantization`` record of an IR file written by :func:`quantize_openvino_int8` (empty if absent)."""
    from hemseg.runtime.backends.openvino import read_ir_props

    return json.loads(read_ir_props(path).get(QUANT_KEY, "{}"))


def openvino_runner(path: str | Path):
    """A model file (ONNX or IR) as the hemseg runtime's OpenVINO backend opens it, for the parity gates: precision
    auto (an INT8 file runs its quantized parts in INT8 and the rest in f32), no model cache."""
    from hemseg.runtime.backends.openvino import OpenVinoRunner

    return OpenVinoRunner.from_path(path, "auto", cache_dir=False)
