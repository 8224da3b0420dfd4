"""Parity gates: does an exported model compute what the checkpoint computes?

Each format is compared with a reference on the verification images: the FP32 ``model.onnx`` (ONNX Runtime, CPU)
with PyTorch; FP16, INT8 (ONNX Runtime, CPU) and the TensorRT engine with the FP32 ONNX model. Every model runs
through the runtime's one inference pipeline (:func:`hemseg.runtime.pipeline.run_batch`: the verification slices at
their own sizes -> preprocessing -> the engine's Runner -> threshold -> resize back), the PyTorch model as
:class:`hemseg.train.torch_runner.TorchRunner`, ONNX files as the runtime opens them
(``hemseg.runtime.backends.ort.OrtRunner.from_path``: metadata, signature, self-containment vetted; a file it refuses
fails the ``runtime_loads`` gate), engines as :class:`hemseg.runtime.backends.trt.TrtRunner`.

Masks: ``logits > logit(threshold)`` (:func:`hemseg.runtime.postprocess.threshold_logits`, the runtime's rule,
threshold from the model metadata), no clean-up (:func:`parity_config`), compared at the slices' own sizes; logit
figures at the network resolution.

**Mask agreement** follows :func:`hemseg.runtime.metrics.agreement`: pooled Dice over all pixels of all verification
images, the smallest per-image Dice (``*_min_image``) and the number of images where the two disagree on whether
there is any lesion. It is only **measurable** when the reference masks have foreground in at least
:data:`~hemseg.runtime.metrics.MIN_FOREGROUND_IMAGES` images and :data:`~hemseg.runtime.metrics.MIN_FOREGROUND_FRACTION`
of the pixels: a model that predicts (almost) nothing gives empty masks everywhere, whose Dice is 1.0 whatever the
exported file computes.

**Logit agreement** is always reported: relative L2 (``||x - ref||_2 / ||ref||_2``, per image and over all images),
the largest absolute difference, and the share of pixels whose side of the threshold flips
(``sign_flip_fraction``).

Gates (module constants, read when a :class:`Gates` is created, so tests and callers can override them):

- FP32 vs PyTorch: ``rel_l2_max`` < :data:`FP32_MAX_REL_L2` always, plus on the **mask Dice** basis
  ``dice_vs_pytorch`` >= :data:`FP32_MIN_DICE`, or, when that is not measurable, on the **logits** basis
  ``sign_flip_fraction`` <= :func:`max_flip_fraction` of :data:`FP32_MIN_DICE`.
- FP16 / INT8 / TRT vs FP32: on the mask Dice basis ``dice_vs_fp32`` >= :data:`FP16_MIN_DICE` /
  :data:`INT8_MIN_DICE` / :data:`TRT_MIN_DICE`; on the logits basis ``rel_l2_vs_fp32_global`` <=
  :data:`FP16_MAX_REL_L2` / :data:`INT8_MAX_REL_L2` / :data:`TRT_MAX_REL_L2` and ``sign_flip_fraction`` <=
  :func:`max_flip_fraction` of the Dice gate.

:func:`max_flip_fraction` allows as many flipped pixels as the Dice gate would allow on a reference with the smallest
measurable foreground: a Dice ``d`` over ``F`` reference pixels tolerates about ``2 (1 - d) F`` flips, so the limit
is ``2 (1 - d) MIN_FOREGROUND_FRACTION`` of all pixels (2e-5 for 0.98). :meth:`Parity.decision` states in one line
which basis decided and why.

Dice against the ground truth (``dice_vs_truth``) is reported for every format, and for the reference beside it;
it is not gated: an untrained checkpoint has a low one.

Margin (reported, not gated): ``fp32_foreground_near_threshold`` is the fraction of the FP32 model's foreground
pixels whose logit lies within :data:`MARGIN_LOGIT` of the threshold's logit. A model with most of its foreground
there (an undertrained one) changes its masks under any small numeric perturbation, so a reduced-precision gate can
fail for the model's sake rather than the converter's; a failed gate says so when that fraction exceeds
:data:`LOW_MARGIN_FRACTION`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hemseg.errors import HemsegError, ModelError
from hemseg.runtime import metrics
from hemseg.runtime.model_meta import INPUT_NAME, OUTPUT_NAME
from hemseg.runtime.pipeline import BatchResult, Pipeline
from hemseg.runtime.postprocess import PostprocessConfig, logit_threshold, threshold_logits
from hemseg.runtime.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

FP32_MAX_REL_L2 = 1e-4
FP32_MIN_DICE = 0.999
FP16_MIN_DICE = 0.98
INT8_MIN_DICE = 0.98
TRT_MIN_DICE = 0.98
#: logits basis (mask Dice not measurable): largest relative L2 of the logits over all images vs FP32
FP16_MAX_REL_L2 = 0.01
INT8_MAX_REL_L2 = 0.05
TRT_MAX_REL_L2 = 0.01
#: images per inference call while verifying
CHUNK = 8
#: logit distance to the threshold under which a foreground pixel counts as "near the threshold"
MARGIN_LOGIT = 0.5
#: a failed reduced-precision gate blames a low FP32 margin when more foreground than this is near the threshold
LOW_MARGIN_FRACTION = 0.5
MASK_BASIS = "mask Dice"
LOGIT_BASIS = "logits"


@dataclass(frozen=True)
class Gates:
    """Gate thresholds; the defaults are the module constants at the time of creation."""

    fp32_max_rel_l2: float = field(default_factory=lambda: FP32_MAX_REL_L2)
    fp32_min_dice: float = field(default_factory=lambda: FP32_MIN_DICE)
    fp16_min_dice: float = field(default_factory=lambda: FP16_MIN_DICE)
    int8_min_dice: float = field(default_factory=lambda: INT8_MIN_DICE)
    trt_min_dice: float = field(default_factory=lambda: TRT_MIN_DICE)
    fp16_max_rel_l2: float = field(default_factory=lambda: FP16_MAX_REL_L2)
    int8_max_rel_l2: float = field(default_factory=lambda: INT8_MAX_REL_L2)
    trt_max_rel_l2: float = field(default_factory=lambda: TRT_MAX_REL_L2)
    min_foreground_images: int = field(default_factory=lambda: metrics.MIN_FOREGROUND_IMAGES)
    min_foreground_fraction: float = field(default_factory=lambda: metrics.MIN_FOREGROUND_FRACTION)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def max_flip_fraction(self, min_dice: float) -> float:
        return max_flip_fraction(min_dice, self.min_foreground_fraction)


def max_flip_fraction(min_dice: float, min_foreground_fraction: float | None = None) -> float:
    """Share of pixels allowed to flip on the logits basis: what a Dice of ``min_dice`` tolerates on a reference
    with the smallest measurable foreground (module docstring)."""
    f = metrics.MIN_FOREGROUND_FRACTION if min_foreground_fraction is None else float(min_foreground_fraction)
    return 2.0 * (1.0 - float(min_dice)) * f


@dataclass
class Check:
    """One gate: ``value`` compared with ``limit`` by ``op`` (``"<"``, ``"<="``, ``">="`` or ``"=="``)."""

    name: str
    value: float | bool
    op: str
    limit: float | bool
    passed: bool

    def describe(self) -> str:
        value = self.value if isinstance(self.value, bool) else f"{self.value:.6g}"
        return f"{self.name} {value} (needs {self.op} {self.limit:.6g})" if not isinstance(self.limit, bool) \
            else f"{self.name} {value} (needs {self.op} {self.limit})"


@dataclass
class Parity:
    """The verification result of one format: ``metrics`` (reported), ``checks`` (gated), the ``basis`` the gate
    decided on (:data:`MASK_BASIS` or :data:`LOGIT_BASIS`) and the agreement figures behind it."""

    reference: str
    n_images: int
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    runtime_error: str | None = None
    notes: list[str] = field(default_factory=list)
    basis: str = MASK_BASIS
    agreement: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def measurable(self) -> bool:
        return bool(self.agreement.get("measurable", True))

    def failures(self) -> list[str]:
        out = [c.describe() for c in self.checks if not c.passed and c.name != "runtime_loads"]
        if self.runtime_error:
            out.append(f"the hemseg runtime refuses the file: {self.runtime_error}")
        return out

    def decision(self) -> str:
        """One line: passed or failed, on which basis, with the deciding figures (and why masks could not judge)."""
        verdict = "passed" if self.passed else "FAILED"
        gated = [c for c in self.checks if c.name != "runtime_loads"]
        figures = "; ".join(c.describe() for c in gated)
        ref = "PyTorch" if self.reference == "pytorch" else "FP32"
        masks = self.agreement.get("masks", {})
        line = f"{verdict} on {self.basis} vs {ref} ({figures}"
        if self.basis == MASK_BASIS and masks:
            line += f"; {masks.get('lesion_presence_disagreements', 0)} of {self.n_images} images disagree on " \
                    "whether there is a lesion"
        line += ")"
        if self.basis == LOGIT_BASIS:
            line += f"; mask Dice not measurable: {metrics.describe_unmeasurable(masks)}"
        if self.runtime_error:
            line += f"; the hemseg runtime refuses the file: {self.runtime_error}"
        return line

    def as_dict(self) -> dict[str, Any]:
        masks = self.agreement.get("masks", {})
        # a mask Dice that could not be measured (too little reference foreground) is null in ``metrics``, as in
        # the bench's JSON, not a bare 1.0 a script takes for perfect agreement; ``masks`` keeps the raw figures
        unmeasured = () if self.measurable else UNMEASURED_KEYS
        return {
            "reference": self.reference, "n_images": self.n_images, "passed": self.passed,
            "basis": self.basis, "decision": self.decision(), "measurable": self.measurable,
            "reference_foreground_fraction": _finite(masks.get("reference_foreground_fraction")),
            "images_with_foreground": masks.get("images_with_foreground"),
            "logits": {k: _finite(v) for k, v in self.agreement.get("logits", {}).items()},
            "masks": {k: _finite(v) for k, v in masks.items()},
            "metrics": {k: None if k in unmeasured else _finite(v) for k, v in self.metrics.items()},
            "gates": [{"name": c.name, "value": _finite(c.value), "op": c.op, "limit": c.limit, "passed": c.passed}
                      for c in self.checks],
            **({"runtime_error": self.runtime_error} if self.runtime_error else {}),
            **({"notes": list(self.notes)} if self.notes else {}),
        }


#: the ``metrics`` of a gate that are mask Dice between the model and its reference (null when not measurable)
UNMEASURED_KEYS = ("dice_vs_pytorch", "dice_vs_pytorch_min_image", "dice_vs_fp32", "dice_vs_fp32_min_image")


def _finite(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    return v


def at_most(name: str, value: float, limit: float) -> Check:
    return Check(name, float(value), "<", limit, bool(value < limit))


def no_more_than(name: str, value: float, limit: float) -> Check:
    return Check(name, float(value), "<=", limit, bool(value <= limit))


def at_least(name: str, value: float, limit: float) -> Check:
    return Check(name, float(value), ">=", limit, bool(value >= limit))


# ------------------------------------------------------------------------------------------------ running models
def parity_config(threshold: float) -> PostprocessConfig:
    """What the gates run the pipeline with: the model's threshold and no clean-up, so they judge the model's own
    decisions (a clean-up could hide differences)."""
    return PostprocessConfig(threshold=float(threshold))


def through_pipeline(runner, spec: PreprocessSpec, slices, threshold: float, chunk: int = CHUNK) -> BatchResult:
    """The verification slices (uint8, own sizes) through the runtime's one pipeline on ``runner``: masks at the
    slices' sizes and logits at the network resolution."""
    return Pipeline(runner, spec, parity_config(threshold), batch_size=chunk).run_all(list(slices))


def torch_runner(model):
    """The PyTorch reference as a Runner (eval mode, FP32, CPU)."""
    from hemseg.train.torch_runner import TorchRunner

    return TorchRunner(model, device="cpu")


def onnx_runner(path: str | Path):
    """An ONNX file as the hemseg runtime opens it on ort-cpu (metadata, signature, self-containment vetted)."""
    from hemseg.runtime.backends.ort import OrtRunner

    return OrtRunner.from_path(path, "ort-cpu")


def trt_runner(path: str | Path):
    """A TensorRT engine through the hemseg runtime's TensorRT runner (needs a GPU)."""
    from hemseg.runtime.backends.trt import TrtRunner

    return TrtRunner.from_path(path)


def run_onnx(path: str | Path, images: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Raw ONNX Runtime (CPU) logits (N, 1, S, S) of already preprocessed images, for comparing candidate files
    while building (the INT8 weight range, recipe studies). Not a mask pipeline: the gates use
    :func:`through_pipeline`."""
    from hemseg.runtime.backends.ort import import_ort

    ort = import_ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # e.g. an opset whose quantized kernels this onnxruntime does not have
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelError(path, f"onnxruntime {ort.__version__} cannot run it: {text}") from None
    outs = []
    for i in range(0, len(images), chunk):
        x = np.ascontiguousarray(images[i:i + chunk], dtype=np.float32)
        outs.append(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])
    return np.concatenate(outs).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------ measures
def dice_vs_truth(masks, truth) -> float | None:
    """The masks' pooled Dice against the reference masks; None when no reference holds a lesion pixel (any
    empty prediction would score 1 there, which says nothing)."""
    if truth is None or not any(np.any(t) for t in truth):  # a list of masks of their own sizes, or an array
        return None
    return metrics.agreement(masks, truth)["dice"]


def masks_of(logits: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean masks (N, S, S) of logits (N, 1, S, S): ``logits > logit(threshold)``."""
    return threshold_logits(np.asarray(logits, np.float32)[:, 0], threshold)


def rel_l2_per_image(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    diff = (values - reference).reshape(len(values), -1).astype(np.float64)
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    return np.linalg.norm(diff, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)


def near_threshold_fraction(logits: np.ndarray, threshold: float, margin: float = MARGIN_LOGIT) -> float:
    """Fraction of the foreground pixels (``logit > logit(threshold)``) whose logit is within ``margin`` of the
    threshold's logit; NaN without foreground."""
    x = np.asarray(logits, np.float32)[:, 0]
    t_logit = logit_threshold(threshold)
    fg = masks_of(logits, threshold)
    if not fg.any() or not math.isfinite(t_logit):
        return float("nan")
    return float(np.mean(np.abs(x[fg] - t_logit) < margin))


def dice_stats(masks: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(pooled Dice, smallest per-image Dice), the :func:`hemseg.runtime.metrics.agreement` convention."""
    a = metrics.agreement(masks, reference)
    return a["dice"], a["dice_min_image"]


def logit_figures(logits: np.ndarray, reference: np.ndarray, threshold: float) -> dict[str, float]:
    """Relative L2 (largest per image, mean, over all images), largest absolute difference and threshold flips."""
    logits, reference = np.asarray(logits, np.float32), np.asarray(reference, np.float32)
    rel = rel_l2_per_image(logits, reference)
    flips = int(np.count_nonzero(threshold_logits(logits, threshold) != threshold_logits(reference, threshold)))
    return {
        "rel_l2_max": float(rel.max()), "rel_l2_mean": float(rel.mean()),
        "rel_l2_global": float(rel_l2_per_image(logits.reshape(1, -1), reference.reshape(1, -1))[0]),
        "max_abs_diff": float(np.abs(logits - reference).max()),
        "sign_flips": flips, "sign_flip_fraction": flips / max(int(logits.size), 1), "n_pixels": int(logits.size),
    }


def compare(logits: np.ndarray, reference_logits: np.ndarray, masks, reference_masks, threshold: float,
            gates: Gates) -> dict[str, Any]:
    """``{"logits": logit_figures, "masks": agreement, "measurable": bool}`` of one model against a reference."""
    a = metrics.agreement(masks, reference_masks, gates.min_foreground_images, gates.min_foreground_fraction)
    return {"logits": logit_figures(logits, reference_logits, threshold), "masks": a, "measurable": a["measurable"]}


def _decide(p: Parity, fig: dict[str, Any], dice_name: str, min_dice: float, gates: Gates,
            rel_l2_name: str | None, max_rel_l2: float | None) -> None:
    """The mask-Dice gate when measurable, else the logit gates (relative L2 if given, and threshold flips)."""
    p.agreement = fig
    if fig["measurable"]:
        p.basis = MASK_BASIS
        p.checks.append(at_least(dice_name, fig["masks"]["dice"], min_dice))
        return
    p.basis = LOGIT_BASIS
    if rel_l2_name is not None:
        p.checks.append(no_more_than(rel_l2_name, fig["logits"]["rel_l2_global"], max_rel_l2))
    p.checks.append(no_more_than("sign_flip_fraction", fig["logits"]["sign_flip_fraction"],
                                 gates.max_flip_fraction(min_dice)))
    log.warning("mask Dice not measurable vs %s, judging on the logits: %s",
                "PyTorch" if p.reference == "pytorch" else "FP32", metrics.describe_unmeasurable(fig["masks"]))


# ------------------------------------------------------------------------------------------------ gates
def _fg_fraction(masks) -> float:
    masks = list(masks)
    total = sum(int(np.asarray(m).size) for m in masks)
    return sum(int(np.count_nonzero(m)) for m in masks) / total if total else 0.0


def _refused(reference: str, n: int, error: str) -> Parity:
    p = Parity(reference=reference, n_images=n, runtime_error=error)
    p.checks.append(Check("runtime_loads", False, "==", True, False))
    return p


def verify_fp32(onnx_path: str | Path, model, verify, spec: PreprocessSpec, threshold: float,
                gates: Gates) -> tuple[Parity, BatchResult | None]:
    """FP32 ONNX vs PyTorch on the verification set (an :class:`hemseg.export.calib.ImageSet`), both through the
    runtime's pipeline. Returns the parity result and the ONNX run (the reference for the other formats; None when
    the runtime refuses the file)."""
    ref = through_pipeline(torch_runner(model), spec, verify.slices, threshold)
    try:
        runner = onnx_runner(onnx_path)
    except HemsegError as exc:
        return _refused("pytorch", len(verify), str(exc)), None
    with runner:
        got = through_pipeline(runner, spec, verify.slices, threshold)
    fig = compare(got.logits, ref.logits, got.masks, ref.masks, threshold, gates)
    p = Parity(reference="pytorch", n_images=len(verify))
    lf, mf = fig["logits"], fig["masks"]
    p.metrics = {
        "rel_l2_max": lf["rel_l2_max"], "rel_l2_mean": lf["rel_l2_mean"], "rel_l2_global": lf["rel_l2_global"],
        "max_abs_diff": lf["max_abs_diff"], "sign_flip_fraction": lf["sign_flip_fraction"],
        "dice_vs_pytorch": mf["dice"], "dice_vs_pytorch_min_image": mf["dice_min_image"],
        "lesion_presence_disagreements": mf["lesion_presence_disagreements"],
        "mask_foreground_fraction": _fg_fraction(got.masks),
        "dice_vs_truth": dice_vs_truth(got.masks, verify.truth),
        "dice_vs_truth_pytorch": dice_vs_truth(ref.masks, verify.truth),
    }
    p.checks = [at_most("rel_l2_max", lf["rel_l2_max"], gates.fp32_max_rel_l2)]
    _decide(p, fig, "dice_vs_pytorch", gates.fp32_min_dice, gates, None, None)
    p.checks.append(Check("runtime_loads", True, "==", True, True))
    return p, got


def verify_format(open_runner, path: str | Path, fp32: BatchResult, verify, spec: PreprocessSpec, threshold: float,
                  min_dice: float, max_rel_l2: float, gates: Gates, runtime_gate: bool = True) -> Parity:
    """A reduced-precision file (FP16/INT8 ONNX, TensorRT engine) against the FP32 model's run ``fp32``, through the
    runtime's pipeline on ``open_runner(path)``. With ``runtime_gate`` a file the runtime refuses fails the
    ``runtime_loads`` gate (else the error propagates)."""
    try:
        runner = open_runner(path)
    except HemsegError as exc:
        if not runtime_gate:
            raise
        return _refused("model.onnx", len(verify), str(exc))
    with runner:
        got = through_pipeline(runner, spec, verify.slices, threshold)
    p = verify_vs_fp32(got.logits, fp32.logits, verify.truth, threshold, min_dice, masks=got.masks,
                       fp32_masks=fp32.masks, max_rel_l2=max_rel_l2, gates=gates)
    if runtime_gate:
        p.checks.append(Check("runtime_loads", True, "==", True, True))
    return p


def verify_vs_fp32(logits: np.ndarray, fp32_logits: np.ndarray, truth, threshold: float, min_dice: float, *,
                   masks=None, fp32_masks=None, max_rel_l2: float = INT8_MAX_REL_L2,
                   gates: Gates | None = None) -> Parity:
    """Judge a reduced-precision model's logits against the FP32 model's. ``masks``/``fp32_masks`` are the
    pipeline's masks (default: :func:`masks_of` the logits, at the network resolution, and ``truth`` likewise);
    ``max_rel_l2`` is the logit gate used when the mask Dice is not measurable."""
    gates = gates or Gates()
    m_ref = masks_of(fp32_logits, threshold) if fp32_masks is None else fp32_masks
    m_got = masks_of(logits, threshold) if masks is None else masks
    fig = compare(logits, fp32_logits, m_got, m_ref, threshold, gates)
    lf, mf = fig["logits"], fig["masks"]
    p = Parity(reference="model.onnx", n_images=len(logits))
    p.metrics = {
        "dice_vs_fp32": mf["dice"], "dice_vs_fp32_min_image": mf["dice_min_image"],
        "lesion_presence_disagreements": mf["lesion_presence_disagreements"],
        "rel_l2_vs_fp32_global": lf["rel_l2_global"], "rel_l2_vs_fp32_max": lf["rel_l2_max"],
        "max_abs_diff_vs_fp32": lf["max_abs_diff"], "sign_flip_fraction": lf["sign_flip_fraction"],
        "mask_foreground_fraction": _fg_fraction(m_got),
        "dice_vs_truth": dice_vs_truth(m_got, truth),
        "dice_vs_truth_fp32": dice_vs_truth(m_ref, truth),
        "fp32_foreground_near_threshold": near_threshold_fraction(fp32_logits, threshold),
    }
    _decide(p, fig, "dice_vs_fp32", min_dice, gates, "rel_l2_vs_fp32_global", max_rel_l2)
    near = p.metrics["fp32_foreground_near_threshold"]
    if not p.passed and near > LOW_MARGIN_FRACTION:
        p.notes.append(f"low FP32 margin: {near:.0%} of the FP32 model's foreground pixels have a logit within "
                       f"{MARGIN_LOGIT} of the threshold, so small numeric changes flip them (an undertrained "
                       "model; train longer before quantizing)")
    return p
