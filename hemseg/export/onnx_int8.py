"""Step 3: the INT8 model ``model_int8.onnx`` from ``model.onnx`` (ONNX Runtime static quantization, for CPUs).

Recipe (ONNX Runtime's recommendation for CNNs on CPU): ``onnxruntime.quantization.shape_inference.
quant_pre_process`` (symbolic shape inference + graph optimization), then ``quantize_static`` with
``QuantFormat.QDQ`` (QuantizeLinear/DequantizeLinear pairs around each quantized op, which ONNX Runtime fuses into
integer kernels), ``per_channel=True`` (one weight scale per output channel), signed int8 ("S8S8": ``QInt8``
activations and weights, the default ONNX Runtime documents as the first choice) and a calibration method
(:data:`DEFAULT_METHOD`, MinMax: the range of each activation over the calibration images).

Weight range (``reduce_range``): ONNX Runtime's ``quantize_static`` docstring says 7-bit weights "may improve the
accuracy for some models running on non-VNNI machine, especially for per-channel mode" (x86 integer kernels without
VNNI sum uint8 x int8 pairs in int16, which saturates when weights use the full int8 range); they also cost one bit
of weight precision. Which matters more depends on the network. Measured here (AMD EPYC, AVX2, no VNNI):

- the 64 px test U-Net: 8-bit weights Dice vs FP32 0.975 (logit error 6.1 %), 7-bit 0.997 (1.0 %);
- FCN-ResNet50 (random init) at 256 px: 8-bit 0.958 (7.4 %), 7-bit 0.929 (10.6 %).

So by default (``reduce_range=None``) both are built (from one calibration pass where onnxruntime offers
``calibration_cache_path``: the activation ranges do not depend on the weight range) and the one whose logits are
closer to the FP32 model's on (up to :data:`SELECT_IMAGES` of) the *calibration* images is kept; the verification
images, on which the parity gate is judged, play no part in the choice. ``reduce_range=True``/``False`` forces one. The choice and both errors
are recorded in the file (``metadata_props`` key :data:`QUANT_KEY`, JSON) and in the log.

Nodes kept in floating point (``nodes_to_exclude``, :func:`float_nodes`): the first convolution (it sees the raw
normalized image, whose fine intensity steps are what CLAHE/NLM/bilateral produced) and the head, i.e. the last
convolution and every node between it and the output (the bilinear ``Resize`` to full resolution), so the logits
are not rounded to an 8-bit grid right before the threshold. Together they are well under 1 % of FCN-ResNet50's
multiply-adds. Measured on the trained 128 px quickstart FCN (16 verification images, mask Dice vs FP32):
everything quantized 0.773 (logit error 2.7 %), with these nodes kept in float 0.869 (1.9 %); percentile or entropy
calibration, U8 activations, QOperator format and quantizing only the convolutions all stayed between 0.79 and 0.88.

Calibration images are float32 ``(N, C, S, S)`` arrays that went through the real preprocessing (see
:mod:`hemseg.export.calib`); they are fed one image at a time by ``make_reader``.
"""

from __future__ import annotations

import errno
import inspect
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hemseg.errors import DependencyError, ModelError, UsageError
from hemseg.export import onnx_io
from hemseg.export.metadata import model_props, with_precision, write_props
from hemseg.runtime.model_meta import INPUT_NAME, ModelMetadata

log = logging.getLogger(__name__)

FILE_NAME = "model_int8.onnx"
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "minmax"
#: calibration images on which the weight range is chosen (the first ones)
SELECT_IMAGES = 16
#: metadata_props key recording how the file was quantized
QUANT_KEY = "hemseg.quantization"


def _quantization():
    try:
        from onnxruntime import quantization
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise DependencyError(f"onnxruntime.quantization is unavailable ({exc}); pip install onnxruntime") from None
    return quantization, quant_pre_process


def make_reader(images: np.ndarray):
    """A ``CalibrationDataReader`` yielding ``{"image": (1, C, S, S) float32}`` for each calibration image."""
    quantization, _ = _quantization()

    class ArrayCalibrationReader(quantization.CalibrationDataReader):
        def __init__(self, batch: np.ndarray) -> None:
            self.batch = np.ascontiguousarray(batch, dtype=np.float32)
            self.index = 0

        def get_next(self):
            if self.index >= len(self.batch):
                return None
            item = {INPUT_NAME: self.batch[self.index:self.index + 1]}
            self.index += 1
            return item

        def rewind(self) -> None:
            self.index = 0

    return ArrayCalibrationReader(images)


def qdq_counts(model) -> dict[str, int]:
    """How many QuantizeLinear and DequantizeLinear nodes the graph has."""
    types = [n.op_type for n in model.graph.node]
    return {"QuantizeLinear": types.count("QuantizeLinear"), "DequantizeLinear": types.count("DequantizeLinear")}


def float_nodes(model) -> list[str]:
    """Names of the nodes :func:`quantize_int8` keeps in floating point (module docstring): the first ``Conv`` that
    reads the graph input (directly, or through the ``Pad`` of a size that is no multiple of 32), and the last ``Conv`` on the way to the graph output with every node after it on that way.
    Nodes without a name cannot be excluded and are left out."""
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    graph_inputs = {i.name for i in model.graph.input}
    keep: list[str] = []
    def reads_input(node) -> bool:  # along the data inputs, through Pad/Cast/...: no Conv before the graph input
        while node is not None and node.input:
            if node.input[0] in graph_inputs:
                return True
            node = producer.get(node.input[0])
            if node is not None and node.op_type == "Conv":
                return False
        return False

    first = next((n for n in nodes if n.op_type == "Conv" and reads_input(n)), None)
    if first is not None:
        keep.append(first.name)
    # walk back from each output along the first (data) input until a Conv is reached
    for out in model.graph.output:
        node = producer.get(out.name)
        while node is not None:
            keep.append(node.name)
            if node.op_type == "Conv" or not node.input:
                break
            node = producer.get(node.input[0])
    return [name for name in dict.fromkeys(keep) if name]


def _quantize(quantization, pre: Path, out: Path, images: np.ndarray, method, reduce_range: bool,
              exclude: list[str]) -> Path:
    """One ``quantize_static`` run. Where this onnxruntime offers ``calibration_cache_path`` (1.2x+), the activation
    ranges are computed once and reused for the second weight range (calibration does not depend on it)."""
    cache = {}
    if "calibration_cache_path" in inspect.signature(quantization.quantize_static).parameters:
        cache["calibration_cache_path"] = str(pre.parent / "calibration_cache.json")
    try:
        quantization.quantize_static(
            str(pre), str(out), make_reader(images),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
            calibrate_method=method, reduce_range=reduce_range, nodes_to_exclude=exclude, **cache,
        )
    except Exception as exc:
        raise ModelError(pre, f"static quantization failed: {onnx_io.first_line(exc)}") from None
    return out


def _choose(fp32_path: Path, candidates: dict[bool, Path], images: np.ndarray) -> tuple[bool, dict[str, float]]:
    """The weight range whose INT8 logits are closest (relative L2) to the FP32 model's on ``images``."""
    from hemseg.export.parity import rel_l2_per_image, run_onnx

    ref = run_onnx(fp32_path, images).reshape(1, -1)
    try:
        errors = {rr: float(rel_l2_per_image(run_onnx(p, images).reshape(1, -1), ref)[0])
                  for rr, p in candidates.items()}
    except ModelError as exc:  # it named a temporary candidate file, gone by the time anyone reads the error
        raise ModelError(Path(FILE_NAME), f"the INT8 model being built: {exc.reason}") from None
    best = min(errors, key=lambda rr: (errors[rr], rr))
    return best, {f"rel_l2_{'7bit' if rr else '8bit'}": e for rr, e in errors.items()}


def quantize_int8(fp32_path: str | Path, calib_images: np.ndarray, meta: ModelMetadata, checkpoint_path: str | Path,
                  out_dir: str | Path, method: str = DEFAULT_METHOD, reduce_range: bool | None = None) -> Path:
    """Quantize ``fp32_path`` into ``out_dir/model_int8.onnx`` calibrated on ``calib_images``; returns the path.

    ``reduce_range=None`` chooses 7- or 8-bit weights on the calibration images (module docstring).
    """
    quantization, quant_pre_process = _quantization()
    fp32_path, path = Path(fp32_path), Path(out_dir) / FILE_NAME
    spec = meta.preprocess
    images = np.asarray(calib_images)
    if images.ndim != 4 or images.shape[1:] != (spec.channels, spec.size, spec.size) or len(images) == 0:
        raise UsageError(f"calibration images must be a non-empty (N, {spec.channels}, {spec.size}, {spec.size}) "
                         f"array, got shape {images.shape}")
    if method not in METHODS:
        raise UsageError(f"calibration method must be one of {METHODS}, got {method!r}")
    calibrate_method = {"minmax": quantization.CalibrationMethod.MinMax,
                        "entropy": quantization.CalibrationMethod.Entropy,
                        "percentile": quantization.CalibrationMethod.Percentile}[method]
    ranges = [False, True] if reduce_range is None else [bool(reduce_range)]
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("quantizing %s to INT8 (QDQ, per-channel, S8S8, %s calibration on %d image(s), weights %s)", fp32_path,
             method, len(images), "8- and 7-bit, keeping the better" if len(ranges) > 1 else f"{8 - ranges[0]}-bit")
    try:
        model, record = _build(quantization, quant_pre_process, fp32_path, path, images, calibrate_method, method,
                               ranges)
    except (ModelError, OSError) as exc:
        # onnxruntime's pre-processing and calibration write whole models into temporary files, some silently cut
        # short on a full disk: the error is then a parse error of the cut file. Say what it is when space is short.
        short = _short_of_space([path.parent, Path(tempfile.gettempdir())], 3 * fp32_path.stat().st_size)
        if short is None:
            raise
        folder, free = short
        raise OSError(errno.ENOSPC, f"No space left on device: INT8 quantization writes temporary models of about "
                                    f"{fp32_path.stat().st_size >> 20} MiB each, {free >> 20} MiB free in {folder} "
                                    f"({exc})", str(path)) from None
    counts = qdq_counts(model)
    if not counts["QuantizeLinear"] or not counts["DequantizeLinear"]:
        raise ModelError(path, f"quantization produced no QuantizeLinear/DequantizeLinear nodes ({counts})")
    log.info("int8: %d QuantizeLinear / %d DequantizeLinear nodes", counts["QuantizeLinear"], counts["DequantizeLinear"])
    int8_meta = with_precision(meta, "int8")
    model.doc_string = (model.doc_string or "").replace(
        "FP32", f"INT8 (QDQ, per-channel, {record['weight_bits']}-bit weights, {method} calibration)")
    write_props(model, {**model_props(int8_meta, checkpoint_path), QUANT_KEY: json.dumps(record, sort_keys=True)})
    onnx_io.check_signature(model, path, spec.size, spec.channels)
    onnx_io.check_model(model, path)
    return onnx_io.save_onnx(model, path)


def quantization_record(model) -> dict:
    """The :data:`QUANT_KEY` record of an INT8 model written by :func:`quantize_int8` (empty if absent)."""
    for prop in model.metadata_props:
        if prop.key == QUANT_KEY:
            return json.loads(prop.value)
    return {}


def _short_of_space(folders: list[Path], need: int) -> tuple[Path, int] | None:
    """The first of ``folders`` whose file system has less than ``need`` bytes free, with what it has; None."""
    for folder in folders:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < need:
            return folder, free
    return None


def _build(quantization, quant_pre_process, fp32_path: Path, path: Path, images: np.ndarray, calibrate_method,
           method: str, ranges: list[bool]):
    """:func:`quantize_int8`'s work in a temporary folder beside ``path``: (the quantized model, its record)."""
    with tempfile.TemporaryDirectory(prefix=".hemseg-int8-", dir=path.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre))
        except Exception as exc:
            raise ModelError(fp32_path, f"quantization pre-processing failed: {onnx_io.first_line(exc)}") from None
        exclude = float_nodes(onnx_io.load_onnx(pre))
        log.info("int8: kept in floating point: %s", ", ".join(exclude) or "nothing")
        built = {rr: _quantize(quantization, pre, Path(tmp) / f"quant_{int(rr)}.onnx", images, calibrate_method, rr,
                               exclude) for rr in ranges}
        record: dict = {"format": "QDQ", "per_channel": True, "activations": "QInt8", "weights": "QInt8",
                        "calibration": method, "calibration_images": int(len(images)), "float_nodes": exclude}
        if len(built) > 1:
            chosen, errors = _choose(fp32_path, built, images[:SELECT_IMAGES])
            record.update(errors, selection_images=int(min(len(images), SELECT_IMAGES)))
            log.info("int8: logit error vs FP32 on calibration images: 8-bit weights %.4f, 7-bit %.4f -> %d-bit",
                     errors["rel_l2_8bit"], errors["rel_l2_7bit"], 8 - chosen)
        else:
            chosen = ranges[0]
        record["weight_bits"] = 7 if chosen else 8
        return onnx_io.load_onnx(built[chosen]), record
