"""Parity gates: does an exported model compute what the checkpoint computes?

Gates (module constants, read when a :class:`Gates` is created, so tests and callers can override them):

- FP32 ``model.onnx`` on ONNX Runtime (CPU) against PyTorch, on the verification images:
  ``rel_l2_max`` < :data:`FP32_MAX_REL_L2` (the worst image's ``||onnx - torch||_2 / ||torch||_2`` over its logits)
  and ``dice_vs_pytorch`` >= :data:`FP32_MIN_DICE`.
- FP16 (ONNX Runtime CPU), INT8 (ONNX Runtime CPU) and the TensorRT engine against the FP32 ONNX model:
  ``dice_vs_fp32`` >= :data:`FP16_MIN_DICE` / :data:`INT8_MIN_DICE` / :data:`TRT_MIN_DICE`.
- Every ONNX file must also load in the hemseg runtime (``hemseg.runtime.backends.ort.open_session``: metadata,
  signature, self-containment): ``runtime_loads``.

Masks: ``sigmoid(logits) > threshold`` (the runtime's rule, threshold from the model metadata).
Dice convention: **pooled** Dice, all pixels of all verification images counted together
(``2|A∩B| / (|A| + |B|)``, 1.0 when both are empty), so an image where both masks are empty neither helps nor
hurts and one stray pixel on an empty image cannot sink the gate; the smallest per-image Dice is reported next to
it (``*_min_image``). Dice against the ground truth (``dice_vs_truth``) is reported for every format, and for
FP32 beside it (``dice_vs_truth_fp32``); it is not gated: an untrained checkpoint has a low one.

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

from hemseg.errors import HemsegError
from hemseg.runtime.metrics import dice_score
from hemseg.runtime.model_meta import INPUT_NAME, OUTPUT_NAME
from hemseg.runtime.postprocess import sigmoid

log = logging.getLogger(__name__)

FP32_MAX_REL_L2 = 1e-4
FP32_MIN_DICE = 0.999
FP16_MIN_DICE = 0.98
INT8_MIN_DICE = 0.98
TRT_MIN_DICE = 0.98
#: images per inference call while verifying
CHUNK = 8
#: logit distance to the threshold under which a foreground pixel counts as "near the threshold"
MARGIN_LOGIT = 0.5
#: a failed reduced-precision gate blames a low FP32 margin when more foreground than this is near the threshold
LOW_MARGIN_FRACTION = 0.5


@dataclass(frozen=True)
class Gates:
    """Gate thresholds; the defaults are the module constants at the time of creation."""

    fp32_max_rel_l2: float = field(default_factory=lambda: FP32_MAX_REL_L2)
    fp32_min_dice: float = field(default_factory=lambda: FP32_MIN_DICE)
    fp16_min_dice: float = field(default_factory=lambda: FP16_MIN_DICE)
    int8_min_dice: float = field(default_factory=lambda: INT8_MIN_DICE)
    trt_min_dice: float = field(default_factory=lambda: TRT_MIN_DICE)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Check:
    """One gate: ``value`` compared with ``limit`` by ``op`` (``"<"`` or ``">="``)."""

    name: str
    value: float | bool
    op: str
    limit: float | bool
    passed: bool

    def describe(self) -> str:
        value = self.value if isinstance(self.value, bool) else f"{self.value:.6g}"
        return f"{self.name} {value} (needs {self.op} {self.limit})"


@dataclass
class Parity:
    """The verification result of one format: ``metrics`` (reported) and ``checks`` (gated)."""

    reference: str
    n_images: int
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    runtime_error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        out = [c.describe() for c in self.checks if not c.passed and c.name != "runtime_loads"]
        if self.runtime_error:
            out.append(f"the hemseg runtime refuses the file: {self.runtime_error}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference, "n_images": self.n_images, "passed": self.passed,
            "metrics": {k: _finite(v) for k, v in self.metrics.items()},
            "gates": [{"name": c.name, "value": _finite(c.value), "op": c.op, "limit": c.limit, "passed": c.passed}
                      for c in self.checks],
            **({"runtime_error": self.runtime_error} if self.runtime_error else {}),
            **({"notes": list(self.notes)} if self.notes else {}),
        }


def _finite(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    return v


def at_most(name: str, value: float, limit: float) -> Check:
    return Check(name, float(value), "<", limit, bool(value < limit))


def at_least(name: str, value: float, limit: float) -> Check:
    return Check(name, float(value), ">=", limit, bool(value >= limit))


# ------------------------------------------------------------------------------------------------ running models
def run_torch(model, images: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """PyTorch logits (N, 1, S, S) float32 of a model in eval mode, on the CPU."""
    import torch

    if model.training or any(m.training for m in model.modules()):
        raise HemsegError("the reference PyTorch model is in training mode; parity needs eval mode")
    outs = []
    with torch.inference_mode():
        for i in range(0, len(images), chunk):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(images[i:i + chunk]))).float().numpy())
    return np.concatenate(outs).astype(np.float32, copy=False)


def run_onnx(path: str | Path, images: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """ONNX Runtime (CPUExecutionProvider) logits (N, 1, S, S) float32."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    outs = []
    for i in range(0, len(images), chunk):
        x = np.ascontiguousarray(images[i:i + chunk], dtype=np.float32)
        outs.append(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])
    return np.concatenate(outs).astype(np.float32, copy=False)


def run_plan(path: str | Path, images: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """TensorRT engine logits through the hemseg runtime's TensorRT runner (needs a GPU)."""
    from hemseg.runtime.backends.trt import TrtRunner

    with TrtRunner.from_path(path) as runner:
        return np.concatenate([runner.infer(images[i:i + chunk]) for i in range(0, len(images), chunk)])


def runtime_error(path: str | Path) -> str | None:
    """None when the hemseg runtime opens the ONNX file on ort-cpu, else its error message."""
    from hemseg.runtime.backends.ort import open_session

    try:
        open_session(path, "ort-cpu")
    except HemsegError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------------------ measures
def masks_of(logits: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean masks (N, S, S): ``sigmoid(logits) > threshold``."""
    return sigmoid(np.asarray(logits, np.float32)[:, 0]) > float(threshold)


def rel_l2_per_image(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    diff = (values - reference).reshape(len(values), -1).astype(np.float64)
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    return np.linalg.norm(diff, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)


def near_threshold_fraction(logits: np.ndarray, threshold: float, margin: float = MARGIN_LOGIT) -> float:
    """Fraction of the foreground pixels (``sigmoid(logit) > threshold``) whose logit is within ``margin`` of the
    threshold's logit; NaN without foreground."""
    x = np.asarray(logits, np.float32)[:, 0]
    t = float(threshold)
    t_logit = math.log(t / (1.0 - t)) if 0.0 < t < 1.0 else (math.inf if t >= 1.0 else -math.inf)
    fg = masks_of(logits, threshold)
    if not fg.any() or not math.isfinite(t_logit):
        return float("nan")
    return float(np.mean(np.abs(x[fg] - t_logit) < margin))


def dice_stats(masks: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(pooled Dice, smallest per-image Dice)."""
    per_image = [dice_score(m, r) for m, r in zip(masks, reference)]
    return dice_score(masks, reference), (min(per_image) if per_image else float("nan"))


def _warn_trivial(masks: np.ndarray) -> None:
    if not masks.any():
        log.warning("the FP32 model predicts no foreground on any verification image: mask Dice gates are trivial")


# ------------------------------------------------------------------------------------------------ gates
def verify_fp32(onnx_path: str | Path, model, images: np.ndarray, truth: np.ndarray, threshold: float,
                gates: Gates) -> tuple[Parity, np.ndarray]:
    """FP32 ONNX vs PyTorch. Returns the parity result and the ONNX logits (the reference for the other formats)."""
    ref = run_torch(model, images)
    got = run_onnx(onnx_path, images)
    rel = rel_l2_per_image(got, ref)
    m_ref, m_got = masks_of(ref, threshold), masks_of(got, threshold)
    _warn_trivial(m_got)
    dice, dice_min = dice_stats(m_got, m_ref)
    p = Parity(reference="pytorch", n_images=len(images))
    p.metrics = {
        "rel_l2_max": float(rel.max()), "rel_l2_mean": float(rel.mean()),
        "rel_l2_global": float(rel_l2_per_image(got.reshape(1, -1), ref.reshape(1, -1))[0]),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "dice_vs_pytorch": dice, "dice_vs_pytorch_min_image": dice_min,
        "mask_foreground_fraction": float(m_got.mean()),
        "dice_vs_truth": dice_score(m_got, truth), "dice_vs_truth_pytorch": dice_score(m_ref, truth),
    }
    p.checks = [at_most("rel_l2_max", p.metrics["rel_l2_max"], gates.fp32_max_rel_l2),
                at_least("dice_vs_pytorch", dice, gates.fp32_min_dice)]
    _runtime_gate(p, onnx_path)
    return p, got


def verify_vs_fp32(logits: np.ndarray, fp32_logits: np.ndarray, truth: np.ndarray, threshold: float,
                   min_dice: float, path: str | Path | None = None) -> Parity:
    """A reduced-precision model's logits against the FP32 ONNX model's; ``path`` (ONNX) also gets the runtime gate."""
    m_ref, m_got = masks_of(fp32_logits, threshold), masks_of(logits, threshold)
    dice, dice_min = dice_stats(m_got, m_ref)
    p = Parity(reference="model.onnx", n_images=len(logits))
    p.metrics = {
        "dice_vs_fp32": dice, "dice_vs_fp32_min_image": dice_min,
        "rel_l2_vs_fp32_global": float(rel_l2_per_image(logits.reshape(1, -1), fp32_logits.reshape(1, -1))[0]),
        "max_abs_diff_vs_fp32": float(np.abs(logits - fp32_logits).max()),
        "mask_foreground_fraction": float(m_got.mean()),
        "dice_vs_truth": dice_score(m_got, truth), "dice_vs_truth_fp32": dice_score(m_ref, truth),
        "fp32_foreground_near_threshold": near_threshold_fraction(fp32_logits, threshold),
    }
    p.checks = [at_least("dice_vs_fp32", dice, min_dice)]
    near = p.metrics["fp32_foreground_near_threshold"]
    if dice < min_dice and near > LOW_MARGIN_FRACTION:
        p.notes.append(f"low FP32 margin: {near:.0%} of the FP32 model's foreground pixels have a logit within "
                       f"{MARGIN_LOGIT} of the threshold, so small numeric changes flip them (an undertrained "
                       "model; train longer before quantizing)")
    if path is not None:
        _runtime_gate(p, path)
    return p


def _runtime_gate(p: Parity, path: str | Path) -> None:
    p.runtime_error = runtime_error(path)
    p.checks.append(Check("runtime_loads", p.runtime_error is None, "==", True, p.runtime_error is None))
